//! The media of one call (sans-IO): encoded frames and received datagrams in, datagrams to
//! send, frames to decode and statistics out.
//!
//! ```text
//! send_audio / send_video ─▶ Packetizer ─▶ (video: RetransmitBuffer) ─▶ poll_transmit
//! handle_datagram ─┬─ Packet, audio ─▶ AudioJitterBuffer ─▶ pop_audio (device cadence)
//!                  ├─ Packet, video ─▶ NackTracker + FrameAssembler ─▶ FrameBuffer
//!                  │                   ─▶ ready queue ─▶ pop_video (in sync with audio)
//!                  ├─ Nack ─▶ RetransmitBuffer ─▶ poll_transmit
//!                  └─ KeyframeRequest ─▶ poll_event
//! handle_timeout ─▶ NACKs, given-up packets → keyframe requests (rate-limited)
//! ```
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
use p2pcall_proto::media::{MediaDatagram, MediaPacket};

use crate::MediaError;
use crate::assemble::{Frame, FrameAssembler};
use crate::audio::{AudioJitterBuffer, Output};
use crate::call::Negotiated;
use crate::nack::{KeyframeRequests, NackTracker};
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
/// Most extra delay audio takes on to wait for video.
pub const MAX_SYNC_DELAY: Duration = Duration::from_millis(400);
/// Frame intervals averaged for freeze detection.
const FREEZE_WINDOW: usize = 30;

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
    out: VecDeque<Bytes>,
    events: VecDeque<SessionEvent>,
    rtt: Duration,
    epoch: Option<Instant>,
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
            events: VecDeque::new(),
            rtt: Duration::from_millis(100),
            epoch: None,
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
        for p in pkts {
            s.stats.packets += 1;
            s.stats.bytes += p.payload.len() as u64;
            let mut buf =
                Vec::with_capacity(p2pcall_proto::media::MEDIA_HEADER_LEN + p.payload.len());
            let keep = s.kind != StreamKind::Audio;
            let d = MediaDatagram::Packet(p);
            d.encode(&mut buf);
            if keep && let MediaDatagram::Packet(p) = d {
                s.retransmit.sent(now, p);
            }
            self.out.push_back(Bytes::from(buf));
        }
        Ok(())
    }

    /// A datagram from the peer. Garbage is counted and dropped (the error says why).
    pub fn handle_datagram(&mut self, now: Instant, buf: &[u8]) -> Result<(), DecodeError> {
        self.epoch.get_or_insert(now);
        let d = MediaDatagram::decode(buf).inspect_err(|_| self.rejected += 1)?;
        match d {
            MediaDatagram::Packet(p) => self.on_packet(now, p),
            MediaDatagram::Nack { stream, seqs } => {
                if let Some(s) = self.senders.get_mut(&stream) {
                    let again = s.retransmit.nacked(now, &seqs);
                    s.stats.nack_missed = s.retransmit.missed;
                    for p in again {
                        s.stats.packets += 1;
                        s.stats.retransmitted += 1;
                        s.stats.bytes += p.payload.len() as u64;
                        let mut buf = Vec::new();
                        MediaDatagram::Packet(p).encode(&mut buf);
                        self.out.push_back(Bytes::from(buf));
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
            MediaDatagram::Padding { .. } | MediaDatagram::Feedback(_) => {}
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

    /// Advances NACK and keyframe timers; call at [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
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
                self.out.push_back(Bytes::from(buf));
            }
            v.stats.recovered = v.nack.recovered;
            // Drain what is decodable into the sync queue.
            while let Some(f) = v.buffer.pop(now, VIDEO_WAIT + rtt * 3) {
                v.assembler.discard_below(f.frame);
                if let Some(e) = self.epoch {
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
            if v.buffer.needs_keyframe() && !v.buffer.is_empty() && v.keyframes.request(now, rtt) {
                v.stats.keyframe_requests += 1;
                let mut buf = Vec::new();
                MediaDatagram::KeyframeRequest { stream: id }.encode(&mut buf);
                self.out.push_back(Bytes::from(buf));
            }
        }
    }

    /// Lip sync: audio waits as long as video usually takes to become decodable (≤
    /// [`MAX_SYNC_DELAY`] more than audio needs itself), so both play at one delay.
    fn sync_audio(&mut self) {
        let required = self.receivers.values().find_map(|r| match r {
            Receiver::Video(v) => v.required,
            Receiver::Audio(_) => None,
        });
        for r in self.receivers.values_mut() {
            if let Receiver::Audio(a) = r {
                let min = a.transit.iter().copied().fold(f64::INFINITY, f64::min);
                let floor = match required {
                    Some(v) if min.is_finite() => {
                        (v - min).clamp(0.0, MAX_SYNC_DELAY.as_secs_f64() * 1e3)
                    }
                    _ => 0.0,
                };
                a.jb.set_min_target(Duration::from_secs_f64(floor / 1e3));
            }
        }
    }

    /// The next audio frame of `stream` to decode and play (call at the device's cadence).
    pub fn pop_audio(&mut self, now: Instant, stream: u8) -> Option<Output> {
        self.sync_audio();
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

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next (NACK timers; video
    /// frames waiting to become decodable are checked at least every 10 ms).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut t: Option<Instant> = None;
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
