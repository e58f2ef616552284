//! The media of one call (sans-IO): encoded frames and received datagrams in, datagrams to
//! send, frames to decode and statistics out.
//!
//! ```text
//! send_frame ─▶ Packetizer ─┬─ audio ─────────────▶ urgent ─┐
//!                            └─ video ─▶ Pacer ───────────────┼─▶ poll_transmit: Bwe numbers
//! handle_datagram ─┬─ Packet, audio ─▶ AudioJitterBuffer ─▶ pop_audio (device cadence)
//!   (every Packet  ├─ Packet, video ─▶ NackTracker + FrameAssembler ─▶ FrameBuffer
//!    and Padding   │                   ─▶ ready queue ─▶ pop_video (in sync with audio)
//!    ─▶ Feedback-  ├─ Nack ─▶ RetransmitBuffer ─▶ Pacer (ahead of new video)
//!    Builder)      ├─ Feedback ─▶ Bwe ─▶ target ─▶ pacing rate, video/bulk allocation
//!                  └─ KeyframeRequest ─▶ poll_event
//! handle_timeout ─▶ NACKs, given-up packets → keyframe requests (rate-limited), probes
//! ```
//!
//! Every media and padding datagram carries a transport-wide number the moment it leaves
//! ([`poll_transmit`](MediaSession::poll_transmit)); the receiver reports their arrival
//! times ([`crate::bwe`]) and the estimate sets how fast video is paced and how much of
//! the connection the driver leaves to bulk streams ([`MediaSession::bulk_allowance_bps`]).
//!
//! Audio and video timestamps come from one sender clock (48 kHz and 90 kHz ticks of the
//! same capture instant), so a video frame is released when the audio that was captured
//! with it plays: at `capture + (audio playout time − audio capture)`. A frame that becomes
//! decodable later than that is released at once (it lags). Audio never waits for video.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_proto::DecodeError;
use p2pcall_proto::call::StreamKind;
use p2pcall_proto::media::{MEDIA_HEADER_LEN, MediaDatagram, MediaPacket};

use crate::MediaError;
use crate::assemble::{Frame, FrameAssembler};
use crate::audio::{AudioJitterBuffer, Output};
use crate::bwe::{Bwe, BweStats, FeedbackBuilder};
use crate::call::Negotiated;
use crate::nack::{KeyframeRequests, NackTracker};
use crate::pacer::{Paced, Pacer, PacerStats};
use crate::packetize::Packetizer;
use crate::retransmit::RetransmitBuffer;
use crate::video::FrameBuffer;

/// Video clock rate.
pub const VIDEO_CLOCK: u32 = 90_000;
/// A missing video frame is waited for this long plus three RTTs (two NACK rounds) after a
/// later one completed, then skipped (a keyframe is requested).
pub const VIDEO_WAIT: Duration = Duration::from_millis(40);
/// A decodable frame is never held longer than this for lip sync.
pub const MAX_SYNC_HOLD: Duration = Duration::from_millis(500);
/// Video frames whose completion delay sizes the video playout delay (10 s at 30 fps).
const VIDEO_DELAY_WINDOW: usize = 300;
/// Audio packets whose transit gives the audio's smallest delay (10 s).
const AUDIO_TRANSIT_WINDOW: usize = 500;
/// How fast lip sync may raise audio's delay (stretching covers up to 100 ms/s).
const SYNC_RISE_MS_PER_S: f64 = 40.0;
/// Most extra delay audio takes on to wait for video.
pub const MAX_SYNC_DELAY: Duration = Duration::from_millis(400);
/// Frame intervals averaged for freeze detection.
const FREEZE_WINDOW: usize = 30;
/// Bytes a datagram costs on the wire beyond its payload (QUIC short header, DATAGRAM frame,
/// AEAD tag, UDP and IPv4 headers), for the estimator's accounting.
pub const WIRE_OVERHEAD: usize = 50;
/// The estimate never goes below this, bit/s.
pub const MIN_BITRATE: u64 = 60_000;
/// The estimate's ceiling while bulk streams share the connection, bit/s.
pub const BULK_MAX_BITRATE: u64 = 1_000_000_000;
/// Bulk streams always get at least this share of the estimate (a call must not stall a
/// transfer completely).
pub const BULK_MIN_SHARE: f64 = 0.05;
/// The encoder skips frames while the pacer holds more than this.
pub const SKIP_BACKLOG: Duration = Duration::from_millis(100);
/// Bulk streams get this share of the estimate, less what media sends.
const BULK_HEADROOM: f64 = 0.9;
/// Media send rate window.
const SEND_RATE_WINDOW: Duration = Duration::from_millis(500);

/// What the call may use: the driver sets it from the negotiated streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bitrates {
    /// Audio's bitrate (kept before anything else), bit/s.
    pub audio: u64,
    /// Video never asks for less than this, bit/s.
    pub video_min: u64,
    /// Video never gets more than this, bit/s.
    pub video_max: u64,
    /// Where the estimate starts, bit/s.
    pub start: u64,
}

impl Default for Bitrates {
    fn default() -> Self {
        Self {
            audio: 32_000,
            video_min: 100_000,
            video_max: 2_500_000,
            start: 600_000,
        }
    }
}

/// The estimator's view, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateStats {
    /// Estimator state.
    pub bwe: BweStats,
    /// What video is allowed now, bit/s.
    pub video_target_bps: u64,
    /// What bulk streams may use now, bit/s (None: unlimited, no media needs the link).
    pub bulk_bps: Option<u64>,
    /// What media sent over the last half second, bit/s (padding included).
    pub media_send_bps: u64,
    /// Pacer counters.
    pub pacer: PacerStats,
    /// Pacer queue delay now, ms.
    pub pacer_delay_ms: f64,
    /// Bytes waiting in the pacer.
    pub pacer_bytes: usize,
    /// Pacing rate, bit/s.
    pub pacing_bps: u64,
}

/// Something leaving at once.
#[derive(Debug)]
enum Urgent {
    /// An audio packet (numbered when it leaves).
    Media(MediaPacket),
    /// NACK, keyframe request, feedback: not numbered.
    Control(Bytes),
}

/// Events for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The peer cannot decode our `stream` until a keyframe: encode one.
    KeyframeRequested {
        /// Our stream.
        stream: u8,
    },
}

/// Counters of one stream we send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// Frames sent.
    pub frames: u64,
    /// Packets sent (retransmissions included).
    pub packets: u64,
    /// Payload bytes sent (retransmissions included).
    pub bytes: u64,
    /// Packets sent again after a NACK.
    pub retransmitted: u64,
    /// NACKed packets no longer kept.
    pub nack_missed: u64,
    /// Keyframe requests received.
    pub keyframe_requests: u64,
}

/// Counters of one stream we receive.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RecvStats {
    /// Packets received (duplicates and retransmissions included).
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Sequence numbers expected so far (highest − first + 1).
    pub expected: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// NACKed sequence numbers (video).
    pub nacks: u64,
    /// Packets recovered by retransmission (video).
    pub recovered: u64,
    /// Keyframe requests sent (video).
    pub keyframe_requests: u64,
    /// Frames released for decoding (video) or played from a packet (audio).
    pub frames: u64,
    /// Video: freezes (W3C: a gap ≥ max(3 × mean interval, mean + 150 ms)).
    pub freezes: u64,
    /// Video: total time frozen, ms.
    pub freeze_ms: f64,
    /// Video: latest A/V skew, ms (> 0: video later than its audio).
    pub skew_ms: Option<f64>,
    /// Audio: frames concealed.
    pub concealed: u64,
    /// Audio: frames rebuilt from FEC.
    pub fec: u64,
    /// Audio: frames of all kinds played (the base of `concealed`).
    pub playouts: u64,
    /// Audio: jitter buffer delay at the last playout, ms.
    pub buffer_ms: f64,
    /// Audio: jitter buffer target, ms.
    pub target_ms: f64,
}

impl RecvStats {
    /// Fraction of expected packets that never arrived.
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            1.0 - (self.unique.min(self.expected) as f64 / self.expected as f64)
        }
    }
}

#[derive(Debug)]
struct Sender {
    kind: StreamKind,
    packetizer: Packetizer,
    retransmit: RetransmitBuffer,
    stats: SendStats,
}

#[derive(Debug, Default)]
struct Arrivals {
    first: Option<u32>,
    highest: Option<u32>,
    seen: std::collections::BTreeSet<u32>,
    last: Option<(Instant, u32)>,
}

impl Arrivals {
    /// Counts an arrival; `clock` in Hz for the jitter estimate.
    fn note(&mut self, now: Instant, p: &MediaPacket, clock: u32, stats: &mut RecvStats) {
        stats.packets += 1;
        stats.bytes += p.payload.len() as u64;
        let first = *self.first.get_or_insert(p.seq);
        if self.highest.is_none_or(|h| p.seq > h) {
            self.highest = Some(p.seq);
        }
        if p.seq >= first && self.seen.insert(p.seq) {
            stats.unique += 1;
        }
        // Only a window of sequence numbers is remembered (duplicates older than it count
        // again; the bound keeps memory flat for hour-long calls).
        while self.seen.len() > 4096 {
            self.seen.pop_first();
        }
        stats.expected = u64::from(self.highest.unwrap_or(first).wrapping_sub(first)) + 1;
        if !p.retransmit {
            if let Some((t, ts)) = self.last {
                let arrival = now.saturating_duration_since(t).as_secs_f64() * 1e3;
                let sent = f64::from(p.timestamp.wrapping_sub(ts) as i32) * 1e3 / f64::from(clock);
                let d = (arrival - sent).abs();
                stats.jitter_ms += (d - stats.jitter_ms) / 16.0;
            }
            self.last = Some((now, p.timestamp));
        }
    }
}

#[derive(Debug)]
enum Receiver {
    Audio(Box<AudioReceiver>),
    Video(Box<VideoReceiver>),
}

#[derive(Debug)]
struct AudioReceiver {
    jb: AudioJitterBuffer,
    /// Arrival − capture (ms, session clock) of recent packets.
    transit: VecDeque<f64>,
    /// The lip-sync floor given to the jitter buffer, ms.
    sync_floor: f64,
    arrivals: Arrivals,
    stats: RecvStats,
}

#[derive(Debug)]
struct VideoReceiver {
    assembler: FrameAssembler,
    nack: NackTracker,
    buffer: FrameBuffer,
    keyframes: KeyframeRequests,
    ready: VecDeque<Frame>,
    /// Completion − capture (ms, session clock) of recent frames.
    completion: VecDeque<f64>,
    /// The 98th percentile of `completion`: when a frame is usually decodable.
    required: Option<f64>,
    arrivals: Arrivals,
    intervals: VecDeque<f64>,
    last_render: Option<Instant>,
    stats: RecvStats,
}

/// The media state of one call.
#[derive(Debug)]
pub struct MediaSession {
    senders: BTreeMap<u8, Sender>,
    receivers: BTreeMap<u8, Receiver>,
    out: VecDeque<Urgent>,
    pacer: Pacer,
    bwe: Bwe,
    feedback: FeedbackBuilder,
    bitrates: Bitrates,
    bulk: bool,
    rx_bytes: u64,
    max_datagram: usize,
    /// Media bytes sent recently: (when, wire bytes).
    sent: VecDeque<(Instant, usize)>,
    sent_bytes: usize,
    events: VecDeque<SessionEvent>,
    rtt: Duration,
    epoch: Option<Instant>,
    /// When lip sync last moved audio's floor.
    sync_at: Option<Instant>,
    /// Audio playout offset: local ms since `epoch` minus the capture ms being played.
    av_offset: Option<f64>,
    /// Datagrams that did not decode, or were for streams not negotiated.
    pub rejected: u64,
}

impl Default for MediaSession {
    fn default() -> Self {
        Self::new()
    }
}

impl MediaSession {
    /// A session with no streams.
    pub fn new() -> Self {
        Self {
            senders: BTreeMap::new(),
            receivers: BTreeMap::new(),
            out: VecDeque::new(),
            pacer: Pacer::new(),
            bwe: {
                let b = Bitrates::default();
                Bwe::new(b.start, MIN_BITRATE, b.audio + b.video_max)
            },
            feedback: FeedbackBuilder::new(),
            bitrates: Bitrates::default(),
            bulk: false,
            rx_bytes: 0,
            max_datagram: 1200,
            sent: VecDeque::new(),
            sent_bytes: 0,
            events: VecDeque::new(),
            rtt: Duration::from_millis(100),
            epoch: None,
            sync_at: None,
            av_offset: None,
            rejected: 0,
        }
    }

    /// Applies a negotiation: streams appear and disappear; existing ones keep their state
    /// (a mute keeps the numbering going).
    pub fn configure(&mut self, n: &Negotiated) {
        self.senders
            .retain(|id, _| n.send.iter().any(|s| s.id == *id));
        for s in &n.send {
            self.senders.entry(s.id).or_insert_with(|| Sender {
                kind: s.kind,
                packetizer: Packetizer::new(s.id),
                retransmit: RetransmitBuffer::new(),
                stats: SendStats::default(),
            });
        }
        self.receivers
            .retain(|id, _| n.receive.iter().any(|s| s.id == *id));
        for s in &n.receive {
            self.receivers.entry(s.id).or_insert_with(|| match s.kind {
                StreamKind::Audio => Receiver::Audio(Box::new(AudioReceiver {
                    jb: AudioJitterBuffer::new(),
                    transit: VecDeque::new(),
                    sync_floor: 0.0,
                    arrivals: Arrivals::default(),
                    stats: RecvStats::default(),
                })),
                StreamKind::Camera | StreamKind::Screen => {
                    Receiver::Video(Box::new(VideoReceiver {
                        assembler: FrameAssembler::new(),
                        // Streams start at sequence 0: a lost first packet is asked for.
                        nack: NackTracker::starting_at(0),
                        buffer: FrameBuffer::new(),
                        keyframes: KeyframeRequests::default(),
                        ready: VecDeque::new(),
                        completion: VecDeque::new(),
                        required: None,
                        arrivals: Arrivals::default(),
                        intervals: VecDeque::new(),
                        last_render: None,
                        stats: RecvStats::default(),
                    }))
                }
            });
        }
    }

    /// The connection's current round-trip time.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt.max(Duration::from_millis(1));
        self.bwe.set_rtt(self.rtt);
    }

    /// What the call may use. The estimate restarts at `start` only on the first call.
    pub fn set_bitrates(&mut self, b: Bitrates) {
        if self.sent.is_empty() && self.bwe.stats().feedbacks == 0 {
            self.bwe = Bwe::new(b.start, MIN_BITRATE, b.audio + b.video_max);
            self.bwe.set_rtt(self.rtt);
        }
        self.bitrates = b;
        self.update_bounds();
    }

    /// Bulk streams (file transfers) share the connection now: the estimate may grow past
    /// what media needs, and [`bulk_allowance_bps`](Self::bulk_allowance_bps) says how
    /// much of it they may use.
    pub fn set_bulk_active(&mut self, active: bool) {
        if self.bulk != active {
            self.bulk = active;
            self.update_bounds();
        }
    }

    /// Everything the connection has received so far (UDP payload bytes, all streams):
    /// reported to the peer so its estimate sees what bulk streams deliver too.
    pub fn set_connection_rx_bytes(&mut self, bytes: u64) {
        self.rx_bytes = bytes;
    }

    fn update_bounds(&mut self) {
        let media = self.bitrates.audio + self.bitrates.video_max;
        let max = if self.bulk { BULK_MAX_BITRATE } else { media };
        self.bwe.set_bounds(MIN_BITRATE, max);
        self.pacer.set_video_target(self.video_target_bps());
    }

    /// What video may send now, bit/s: the estimate less audio and packet overhead, within
    /// the video bounds.
    pub fn video_target_bps(&self) -> u64 {
        let b = self.bitrates;
        // ~50 audio packets a second carry a header and the wire overhead.
        let audio = b.audio + 50 * 8 * (MEDIA_HEADER_LEN + WIRE_OVERHEAD) as u64;
        let t = self.bwe.target_bps().saturating_sub(audio);
        // Headers and overhead of video packets (~1200 bytes each).
        let t = t - t * (MEDIA_HEADER_LEN + WIRE_OVERHEAD) as u64 / 1200;
        t.clamp(b.video_min, b.video_max.max(b.video_min))
    }

    /// What bulk streams may send now, bit/s: the estimate less what media sends (at least
    /// [`BULK_MIN_SHARE`] of it). None while no call media flows: no limit.
    pub fn bulk_allowance_bps(&self, now: Instant) -> Option<u64> {
        if self.senders.is_empty() {
            return None;
        }
        let target = self.bwe.target_bps() as f64;
        let audio = self.bitrates.audio as f64;
        let media = (self.media_send_bps(now) as f64).max(audio);
        // Some headroom: QUIC retransmits lost stream data on top of what the gate lets
        // through, and the media rate is measured, so it lags a rising encoder.
        Some((BULK_HEADROOM * target - media).max(BULK_MIN_SHARE * target) as u64)
    }

    fn media_send_bps(&self, now: Instant) -> u64 {
        match self.sent.front() {
            Some(&(t, _)) if now > t => {
                let span = now
                    .saturating_duration_since(t)
                    .max(SEND_RATE_WINDOW / 2)
                    .as_secs_f64();
                (self.sent_bytes as f64 * 8.0 / span) as u64
            }
            _ => 0,
        }
    }

    /// The encoder should skip the next video frame: what waits in the pacer already takes
    /// longer than [`SKIP_BACKLOG`] to leave. Skipping before encoding keeps the stream
    /// decodable; dropping after would cost a keyframe.
    pub fn should_skip_frame(&self) -> bool {
        self.pacer.drain_time() > SKIP_BACKLOG
    }

    /// Estimator, allocation and pacer state.
    pub fn rate_stats(&self, now: Instant) -> RateStats {
        RateStats {
            bwe: self.bwe.stats(),
            video_target_bps: self.video_target_bps(),
            bulk_bps: self.bulk_allowance_bps(now),
            media_send_bps: self.media_send_bps(now),
            pacer: self.pacer.stats,
            pacer_delay_ms: self.pacer.queue_delay(now).as_secs_f64() * 1e3,
            pacer_bytes: self.pacer.queued_bytes(),
            pacing_bps: self.pacer.rate() as u64,
        }
    }

    /// Sends one encoded frame on our `stream` (`timestamp` in the stream's clock).
    pub fn send_frame(
        &mut self,
        now: Instant,
        stream: u8,
        data: Bytes,
        timestamp: u32,
        keyframe: bool,
        max_datagram: usize,
    ) -> Result<(), MediaError> {
        let Some(s) = self.senders.get_mut(&stream) else {
            return Err(MediaError::UnknownStream(stream));
        };
        let pkts = s
            .packetizer
            .packetize(data, timestamp, keyframe, max_datagram)?;
        s.stats.frames += 1;
        self.max_datagram = max_datagram;
        for p in pkts {
            s.stats.packets += 1;
            s.stats.bytes += p.payload.len() as u64;
            if s.kind == StreamKind::Audio {
                self.out.push_back(Urgent::Media(p));
            } else {
                self.pacer.push_video(now, p);
            }
        }
        Ok(())
    }

    /// A datagram from the peer. Garbage is counted and dropped (the error says why).
    pub fn handle_datagram(&mut self, now: Instant, buf: &[u8]) -> Result<(), DecodeError> {
        self.epoch.get_or_insert(now);
        let d = MediaDatagram::decode(buf).inspect_err(|_| self.rejected += 1)?;
        match d {
            MediaDatagram::Packet(p) => {
                self.feedback.on_arrival(now, p.tw, self.rx_bytes as u32);
                self.on_packet(now, p);
            }
            MediaDatagram::Nack { stream, seqs } => {
                if let Some(s) = self.senders.get_mut(&stream) {
                    let again = s.retransmit.nacked(now, &seqs);
                    s.stats.nack_missed = s.retransmit.missed;
                    for p in again {
                        s.stats.packets += 1;
                        s.stats.retransmitted += 1;
                        s.stats.bytes += p.payload.len() as u64;
                        self.pacer.push_resend(now, p);
                    }
                } else {
                    self.rejected += 1;
                }
            }
            MediaDatagram::KeyframeRequest { stream } => {
                if let Some(s) = self.senders.get_mut(&stream) {
                    s.stats.keyframe_requests += 1;
                    self.events
                        .push_back(SessionEvent::KeyframeRequested { stream });
                } else {
                    self.rejected += 1;
                }
            }
            MediaDatagram::Padding { tw, .. } => {
                self.feedback.on_arrival(now, tw, self.rx_bytes as u32);
            }
            MediaDatagram::Feedback(f) => {
                self.bwe.on_feedback(now, &f);
                self.pacer.set_video_target(self.video_target_bps());
            }
        }
        Ok(())
    }

    fn on_packet(&mut self, now: Instant, p: MediaPacket) {
        match self.receivers.get_mut(&p.stream) {
            Some(Receiver::Audio(a)) => {
                a.arrivals.note(now, &p, crate::audio::CLOCK, &mut a.stats);
                if let Some(e) = self.epoch {
                    let local = now.saturating_duration_since(e).as_secs_f64() * 1e3;
                    a.transit.push_back(
                        local - f64::from(p.timestamp) * 1e3 / f64::from(crate::audio::CLOCK),
                    );
                    if a.transit.len() > AUDIO_TRANSIT_WINDOW {
                        a.transit.pop_front();
                    }
                }
                a.jb.push(now, p.seq, p.timestamp, p.payload);
            }
            Some(Receiver::Video(v)) => {
                v.arrivals.note(now, &p, VIDEO_CLOCK, &mut v.stats);
                v.nack.on_packet(now, p.seq, p.retransmit);
                if let Ok(Some(f)) = v.assembler.push(now, p) {
                    v.buffer.push(f);
                }
            }
            None => self.rejected += 1,
        }
    }

    /// Advances NACK, keyframe, feedback and probe timers; call at
    /// [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        for f in self.feedback.poll(now) {
            let mut buf = Vec::new();
            MediaDatagram::Feedback(f).encode(&mut buf);
            self.out.push_back(Urgent::Control(Bytes::from(buf)));
        }
        if self.wants_probes()
            && !self.pacer.probing()
            && let Some(c) = self.bwe.poll_probe(now)
        {
            self.pacer.start_probe(now, c);
        }
        for stream in self.pacer.take_dropped() {
            self.events
                .push_back(SessionEvent::KeyframeRequested { stream });
        }
        let rtt = self.rtt;
        for (&id, r) in &mut self.receivers {
            let Receiver::Video(v) = r else { continue };
            let poll = v.nack.poll(now, rtt);
            if !poll.nack.is_empty() {
                v.stats.nacks += poll.nack.len() as u64;
                let mut buf = Vec::new();
                MediaDatagram::Nack {
                    stream: id,
                    seqs: poll.nack,
                }
                .encode(&mut buf);
                self.out.push_back(Urgent::Control(Bytes::from(buf)));
            }
            v.stats.recovered = v.nack.recovered;
            // Drain what is decodable into the sync queue.
            while let Some(f) = v.buffer.pop(now, VIDEO_WAIT + rtt * 3) {
                v.assembler.discard_below(f.frame);
                // Keyframes are several frames large and take longer to arrive: syncing
                // audio to them would delay every frame for the rare big one.
                if let Some(e) = self.epoch.filter(|_| !f.keyframe) {
                    let done = f.completed.saturating_duration_since(e).as_secs_f64() * 1e3;
                    v.completion
                        .push_back(done - f64::from(f.timestamp) * 1e3 / f64::from(VIDEO_CLOCK));
                    if v.completion.len() > VIDEO_DELAY_WINDOW {
                        v.completion.pop_front();
                    }
                    let mut c: Vec<f64> = v.completion.iter().copied().collect();
                    c.sort_by(f64::total_cmp);
                    v.required = c.get((c.len() - 1) * 98 / 100).copied();
                }
                v.ready.push_back(f);
                if v.ready.len() > crate::video::MAX_FRAMES {
                    v.ready.pop_front();
                }
            }
            // Only once complete frames are stuck behind a missing keyframe (not while the first
            // keyframe is still arriving).
            // (Paced, a keyframe's last packets may arrive a little after the next frame.)
            let stuck = v
                .buffer
                .oldest_wait(now)
                .is_some_and(|w| w >= VIDEO_WAIT + rtt);
            if v.buffer.needs_keyframe() && stuck && v.keyframes.request(now, rtt) {
                v.stats.keyframe_requests += 1;
                let mut buf = Vec::new();
                MediaDatagram::KeyframeRequest { stream: id }.encode(&mut buf);
                self.out.push_back(Urgent::Control(Bytes::from(buf)));
            }
        }
    }

    /// The decoder could not use what `stream` delivered (its picture is broken until the
    /// next keyframe): asks the sender for one, at most once per max(2 RTT, 300 ms).
    /// Returns whether a request was queued.
    pub fn request_keyframe(&mut self, now: Instant, stream: u8) -> bool {
        let rtt = self.rtt;
        let Some(Receiver::Video(v)) = self.receivers.get_mut(&stream) else {
            return false;
        };
        if !v.keyframes.request(now, rtt) {
            return false;
        }
        v.stats.keyframe_requests += 1;
        let mut buf = Vec::new();
        MediaDatagram::KeyframeRequest { stream }.encode(&mut buf);
        self.out.push_back(Urgent::Control(Bytes::from(buf)));
        true
    }

    /// Lip sync: audio waits as long as video usually takes to become decodable (≤
    /// [`MAX_SYNC_DELAY`] more than audio needs itself), so both play at one delay.
    fn sync_audio(&mut self, now: Instant) {
        let dt = self
            .sync_at
            .replace(now)
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let required = self.receivers.values().find_map(|r| match r {
            Receiver::Video(v) => v.required,
            Receiver::Audio(_) => None,
        });
        for r in self.receivers.values_mut() {
            if let Receiver::Audio(a) = r {
                let min = a.transit.iter().copied().fold(f64::INFINITY, f64::min);
                let want = match required {
                    Some(v) if min.is_finite() => {
                        (v - min).clamp(0.0, MAX_SYNC_DELAY.as_secs_f64() * 1e3)
                    }
                    _ => 0.0,
                };
                // Rise slowly enough that the jitter buffer grows by stretching audio, not
                // by inserting concealed frames; fall at once.
                let floor = want.min(a.sync_floor + SYNC_RISE_MS_PER_S * dt);
                a.sync_floor = floor;
                a.jb.set_min_target(Duration::from_secs_f64(floor / 1e3));
            }
        }
    }

    /// The next audio frame of `stream` to decode and play (call at the device's cadence).
    pub fn pop_audio(&mut self, now: Instant, stream: u8) -> Option<Output> {
        self.sync_audio(now);
        let Some(Receiver::Audio(a)) = self.receivers.get_mut(&stream) else {
            return None;
        };
        let (jb, stats) = (&mut a.jb, &mut a.stats);
        let o = jb.pop(now);
        let js = jb.stats;
        stats.frames = js.played;
        stats.concealed = js.concealed;
        stats.fec = js.fec;
        stats.playouts = js.played + js.concealed + js.fec;
        stats.buffer_ms = jb.delay().as_secs_f64() * 1e3;
        stats.target_ms = jb.target().as_secs_f64() * 1e3;
        if let (Some(epoch), Some(cap)) = (self.epoch, jb.playout_capture_ms()) {
            let local = now.saturating_duration_since(epoch).as_secs_f64() * 1e3;
            self.av_offset = Some(local - cap);
        }
        Some(o)
    }

    /// The next video frame of `stream` to decode now, if one is due: decodable, and its
    /// audio is playing (or there is no audio).
    pub fn pop_video(&mut self, now: Instant, stream: u8) -> Option<Frame> {
        let epoch = self.epoch?;
        let offset = self.av_offset;
        let Some(Receiver::Video(v)) = self.receivers.get_mut(&stream) else {
            return None;
        };
        let head = v.ready.front()?;
        let local = now.saturating_duration_since(epoch).as_secs_f64() * 1e3;
        let capture = f64::from(head.timestamp) * 1e3 / f64::from(VIDEO_CLOCK);
        // With audio: when its audio plays; without: at the video's own usual delay.
        if let Some(off) = offset.or(v.required) {
            let due = capture + off;
            let held = now.saturating_duration_since(head.completed);
            if local < due && held < MAX_SYNC_HOLD {
                return None;
            }
            v.stats.skew_ms = Some(local - due);
        }
        let f = v.ready.pop_front()?;
        v.stats.frames += 1;
        if let Some(last) = v.last_render {
            let gap = now.saturating_duration_since(last).as_secs_f64() * 1e3;
            if v.intervals.len() >= 5 {
                let mean = v.intervals.iter().sum::<f64>() / v.intervals.len() as f64;
                if gap >= (3.0 * mean).max(mean + 150.0) {
                    v.stats.freezes += 1;
                    v.stats.freeze_ms += gap;
                }
            }
            v.intervals.push_back(gap);
            if v.intervals.len() > FREEZE_WINDOW {
                v.intervals.pop_front();
            }
        }
        v.last_render = Some(now);
        Some(f)
    }

    /// When the next video frame of `stream` is due for [`pop_video`](Self::pop_video).
    pub fn video_due(&self, stream: u8) -> Option<Instant> {
        let epoch = self.epoch?;
        let Some(Receiver::Video(v)) = self.receivers.get(&stream) else {
            return None;
        };
        let head = v.ready.front()?;
        let Some(off) = self.av_offset.or(v.required) else {
            return Some(epoch);
        };
        let capture = f64::from(head.timestamp) * 1e3 / f64::from(VIDEO_CLOCK);
        let due = epoch + Duration::from_secs_f64(((capture + off) / 1e3).max(0.0));
        Some(due.min(head.completed + MAX_SYNC_HOLD))
    }

    /// Probing is worth its padding while video or bulk streams could use more.
    fn wants_probes(&self) -> bool {
        self.bulk || self.senders.values().any(|s| s.kind != StreamKind::Audio)
    }

    /// The next datagram to send now: audio and control first, then paced video and probe
    /// padding. Media leaves numbered for the estimator, so send it right away.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let (packet, probe) = match self.out.pop_front() {
            Some(Urgent::Control(b)) => return Some(b),
            Some(Urgent::Media(p)) => (p, None),
            None => match self.pacer.poll(now, self.max_datagram.saturating_sub(8))? {
                Paced::Packet(p, probe) => (p, probe),
                Paced::Padding(n, id) => {
                    let len = n.saturating_sub(p2pcall_proto::media::PADDING_HEADER_LEN);
                    let len = u16::try_from(len).unwrap_or(u16::MAX);
                    let wire = p2pcall_proto::media::PADDING_HEADER_LEN + usize::from(len);
                    let tw = self.bwe.on_send(now, wire + WIRE_OVERHEAD, Some(id));
                    self.note_sent(now, wire);
                    let mut buf = Vec::with_capacity(wire);
                    MediaDatagram::Padding { tw, len }.encode(&mut buf);
                    return Some(Bytes::from(buf));
                }
            },
        };
        let mut p = packet;
        let wire = MEDIA_HEADER_LEN + p.payload.len();
        p.tw = self.bwe.on_send(now, wire + WIRE_OVERHEAD, probe);
        self.note_sent(now, wire);
        let mut buf = Vec::with_capacity(wire);
        let d = MediaDatagram::Packet(p);
        d.encode(&mut buf);
        if let MediaDatagram::Packet(p) = d
            && !p.retransmit
            && let Some(s) = self.senders.get_mut(&p.stream)
            && s.kind != StreamKind::Audio
        {
            s.retransmit.sent(now, p);
        }
        Some(Bytes::from(buf))
    }

    fn note_sent(&mut self, now: Instant, wire: usize) {
        let bytes = wire + WIRE_OVERHEAD;
        self.sent.push_back((now, bytes));
        self.sent_bytes += bytes;
        while self
            .sent
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > SEND_RATE_WINDOW)
        {
            if let Some((_, b)) = self.sent.pop_front() {
                self.sent_bytes -= b;
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next (NACK timers; video
    /// frames waiting to become decodable are checked at least every 10 ms).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if !self.out.is_empty() {
            return Some(now);
        }
        let probe = if self.wants_probes() && !self.pacer.probing() {
            self.bwe.next_probe().or(Some(now))
        } else {
            None
        };
        let mut t: Option<Instant> = [
            self.pacer.poll_timeout(now),
            self.feedback.poll_timeout(),
            probe,
        ]
        .into_iter()
        .flatten()
        .min();
        for r in self.receivers.values() {
            if let Receiver::Video(v) = r {
                let n = v.nack.next_timeout(self.rtt);
                let b = (!v.buffer.is_empty()).then(|| now + Duration::from_millis(10));
                t = [t, n, b].into_iter().flatten().min();
            }
        }
        t
    }

    /// Our streams' counters.
    pub fn send_stats(&self) -> Vec<(u8, StreamKind, SendStats)> {
        self.senders
            .iter()
            .map(|(&id, s)| (id, s.kind, s.stats))
            .collect()
    }

    /// The peer's streams' counters.
    pub fn recv_stats(&self) -> Vec<(u8, RecvStats)> {
        self.receivers
            .iter()
            .map(|(&id, r)| {
                (
                    id,
                    match r {
                        Receiver::Audio(a) => a.stats,
                        Receiver::Video(v) => v.stats,
                    },
                )
            })
            .collect()
    }
}
