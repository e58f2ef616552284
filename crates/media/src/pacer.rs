//! The sender's pacer (sans-IO): what leaves when, in priority order.
//!
//! ```text
//! audio, NACKs, feedback ─▶ urgent (always sent at once: small, and late audio is useless)
//! retransmissions        ─▶ ahead of new video, up to 20 ms of budget in advance; one that
//!                           waited 100 ms is dropped (too late to help, and under loss a
//!                           backlog of them starved new video for a second)
//! video packets          ─▶ paced at PACING_FACTOR × the video target (never faster: an
//!                           encoder that overshoots loses frames here, not audio at the
//!                           bottleneck); a frame whose packets
//!                           waited longer than MAX_QUEUE_DELAY is dropped whole (it would
//!                           play late; the encoder is asked for a keyframe instead)
//! probe clusters         ─▶ padding at the cluster's rate, where media does not fill it
//! ```
//!
//! The budget grows with time at the pacing rate and may bank at most one
//! [`BURST`](BURST) of it, so a keyframe goes out over a few milliseconds, not at line rate
//! into the bottleneck's queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2pcall_proto::media::MediaPacket;

use crate::bwe::ProbeCluster;

/// Video leaves at this multiple of its target (libwebrtc's factor): bursts spread, the
/// average still follows the encoder.
pub const PACING_FACTOR: f64 = 2.5;
/// A video frame that waited longer than this in the pacer is dropped.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(500);
/// A retransmission waits at most this long.
pub const MAX_RESEND_DELAY: Duration = Duration::from_millis(100);
/// Retransmissions may put the budget this far into debt.
const RESEND_DEBT: Duration = Duration::from_millis(20);
/// Most budget banked while idle.
const BURST: Duration = Duration::from_millis(5);
/// Padding datagrams are this large (or the path's limit, if smaller).
pub const PADDING_SIZE: usize = 1000;
/// The lowest pacing rate, bit/s (a start-up estimate must not stall keyframes).
const MIN_RATE: f64 = 100_000.0;

/// What the pacer hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paced {
    /// A media packet (retransmission or new), with the probe cluster it belongs to.
    Packet(MediaPacket, Option<u32>),
    /// Padding of this many bytes for a probe cluster.
    Padding(usize, u32),
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    packet: MediaPacket,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    cluster: ProbeCluster,
    sent: usize,
    started: Instant,
}

impl Probe {
    /// When the cluster's next padding is due: what it sent so far (media included), at
    /// the cluster's own rate. The pacer's budget may run faster (2.5× the video target
    /// while frames wait); padding must not, or a probe meant for 1.2× the estimate goes
    /// out at twice it and fills the bottleneck's queue.
    fn padding_due(&self) -> Instant {
        let rate = self.cluster.rate_bps.max(1) as f64;
        self.started + Duration::from_secs_f64(self.sent as f64 * 8.0 / rate)
    }
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PacerStats {
    /// Video frames dropped because they waited too long.
    pub dropped_frames: u64,
    /// Packets of those frames.
    pub dropped_packets: u64,
    /// Padding bytes sent for probes.
    pub padding_bytes: u64,
}

/// The pacer of one call.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    /// Bytes that may leave now (negative: in debt).
    budget: f64,
    last: Option<Instant>,
    resend: VecDeque<Queued>,
    video: VecDeque<Queued>,
    probe: Option<Probe>,
    queued_bytes: usize,
    /// Streams whose frames were dropped since the last [`take_dropped`](Self::take_dropped).
    dropped: Vec<u8>,
    /// Streams waiting for a keyframe after a drop.
    broken: Vec<u8>,
    /// Counters.
    pub stats: PacerStats,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// An idle pacer.
    pub fn new() -> Self {
        Self {
            rate: MIN_RATE,
            budget: 0.0,
            last: None,
            resend: VecDeque::new(),
            video: VecDeque::new(),
            probe: None,
            queued_bytes: 0,
            dropped: Vec::new(),
            broken: Vec::new(),
            stats: PacerStats::default(),
        }
    }

    /// Sets the pacing rate from the video target, bit/s.
    pub fn set_video_target(&mut self, bps: u64) {
        self.rate = (bps as f64 * PACING_FACTOR).max(MIN_RATE);
    }

    /// The pacing rate, bit/s.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Queues a new video packet.
    pub fn push_video(&mut self, now: Instant, packet: MediaPacket) {
        if packet.keyframe {
            self.broken.retain(|s| *s != packet.stream);
        } else if self.broken.contains(&packet.stream) {
            self.stats.dropped_packets += 1;
            return; // undecodable until the keyframe the encoder was asked for
        }
        self.queued_bytes += packet.payload.len();
        self.video.push_back(Queued { at: now, packet });
    }

    /// Queues a retransmission (sent before new video).
    pub fn push_resend(&mut self, now: Instant, packet: MediaPacket) {
        self.queued_bytes += packet.payload.len();
        self.resend.push_back(Queued { at: now, packet });
    }

    /// Starts a probe cluster (replaces an unfinished one).
    pub fn start_probe(&mut self, now: Instant, cluster: ProbeCluster) {
        self.probe = Some(Probe {
            cluster,
            sent: 0,
            started: now,
        });
    }

    /// A probe is running.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Payload bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// How long the oldest waiting packet has waited.
    pub fn queue_delay(&self, now: Instant) -> Duration {
        [self.resend.front(), self.video.front()]
            .into_iter()
            .flatten()
            .map(|q| now.saturating_duration_since(q.at))
            .max()
            .unwrap_or_default()
    }

    /// Streams that lost a frame in the pacer since the last call (ask their encoders for
    /// a keyframe).
    pub fn take_dropped(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.dropped)
    }

    /// The rate now: the pacing rate, or a running probe's.
    fn current_rate(&self) -> f64 {
        let probe = self.probe.map_or(0.0, |p| p.cluster.rate_bps as f64);
        self.rate.max(probe)
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.current_rate();
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            let cap = rate / 8.0 * BURST.as_secs_f64();
            self.budget = (self.budget + rate / 8.0 * dt).min(cap.max(self.budget));
        }
        self.last = Some(now);
    }

    /// Drops late frames whole. A late P-frame takes every later P-frame of its stream
    /// with it up to the next keyframe (they could not be decoded), and the stream stays
    /// broken (new P-frames are discarded) until a keyframe comes. Keyframes are never
    /// dropped: another one would only be bigger news.
    fn drop_late(&mut self, now: Instant) {
        while let Some(q) = self.video.front() {
            if now.saturating_duration_since(q.at) <= MAX_QUEUE_DELAY || q.packet.keyframe {
                break;
            }
            let stream = q.packet.stream;
            let before = self.video.len();
            let mut frames = std::collections::BTreeSet::new();
            let mut keyframe_follows = false;
            let queued = &mut self.queued_bytes;
            self.video.retain(|q| {
                if q.packet.stream != stream || keyframe_follows {
                    return true;
                }
                if q.packet.keyframe {
                    keyframe_follows = true;
                    return true;
                }
                frames.insert(q.packet.frame);
                *queued -= q.packet.payload.len();
                false
            });
            if !keyframe_follows && !self.broken.contains(&stream) {
                self.broken.push(stream);
            }
            self.stats.dropped_frames += frames.len() as u64;
            self.stats.dropped_packets += (before - self.video.len()) as u64;
            if !self.dropped.contains(&stream) {
                self.dropped.push(stream);
            }
        }
        // A retransmission that cannot leave soon is too late to help (the receiver gives
        // up and asks for a keyframe), and under loss a backlog of them starves new video.
        while self
            .resend
            .front()
            .is_some_and(|q| now.saturating_duration_since(q.at) > MAX_RESEND_DELAY)
        {
            if let Some(q) = self.resend.pop_front() {
                self.queued_bytes -= q.packet.payload.len();
            }
        }
    }

    /// How long what is queued takes to leave at the pacing rate.
    pub fn drain_time(&self) -> Duration {
        Duration::from_secs_f64(self.queued_bytes as f64 * 8.0 / self.rate)
    }

    /// The next thing to send now, if the budget allows; `max_padding` bounds a padding
    /// datagram (the path's datagram limit).
    pub fn poll(&mut self, now: Instant, max_padding: usize) -> Option<Paced> {
        self.refill(now);
        self.drop_late(now);
        // Retransmissions may run a little into debt (a frame is stuck on them), no more:
        // under heavy loss they would otherwise starve new video for seconds.
        let debt = self.current_rate() / 8.0 * RESEND_DEBT.as_secs_f64();
        let resend = !self.resend.is_empty() && self.budget > -debt;
        if self.budget <= 0.0 && !resend {
            return None;
        }
        let probe_id = self.probe.map(|p| p.cluster.id);
        let next = self.resend.pop_front().or_else(|| self.video.pop_front());
        let (out, bytes) = match next {
            Some(q) => {
                let n = q.packet.payload.len();
                self.queued_bytes -= n;
                (Paced::Packet(q.packet, probe_id), n)
            }
            None => {
                let p = self.probe.filter(|p| now >= p.padding_due())?;
                let n = PADDING_SIZE.min(max_padding).max(1);
                self.stats.padding_bytes += n as u64;
                (Paced::Padding(n, p.cluster.id), n)
            }
        };
        self.budget -= bytes as f64;
        if let Some(p) = self.probe.as_mut() {
            p.sent += bytes;
            // Done when its bytes are out, or after twice its intended time.
            let long = Duration::from_secs_f64(
                2.0 * p.cluster.bytes as f64 * 8.0 / (p.cluster.rate_bps.max(1) as f64),
            );
            if p.sent >= p.cluster.bytes || now > p.started + long {
                self.probe = None;
            }
        }
        Some(out)
    }

    /// When [`poll`](Self::poll) may hand out something next (None: nothing waits).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.resend.is_empty() && self.video.is_empty() && self.probe.is_none() {
            return None;
        }
        let debt = self.current_rate() / 8.0 * RESEND_DEBT.as_secs_f64();
        let media = !self.resend.is_empty() || !self.video.is_empty();
        // Only padding waits: it leaves when the budget allows and the cluster is due.
        let padding_due = self
            .probe
            .filter(|_| !media)
            .map_or(now, |p| p.padding_due());
        if (self.budget > 0.0 && padding_due <= now)
            || (!self.resend.is_empty() && self.budget > -debt)
        {
            return Some(now);
        }
        let rate = self.current_rate();
        let wait = Duration::from_secs_f64((-self.budget.min(0.0) + 1.0) * 8.0 / rate);
        let t = (self.last.unwrap_or(now) + wait).max(padding_due);
        // Also wake to drop a frame that becomes too old.
        let late = self.video.front().map(|q| q.at + MAX_QUEUE_DELAY);
        Some(late.map_or(t, |l| l.min(t)).max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(frame: u32, seq: u32, len: usize) -> MediaPacket {
        MediaPacket {
            stream: 1,
            keyframe: false,
            retransmit: false,
            tw: 0,
            seq,
            timestamp: frame * 3000,
            frame,
            frag: 0,
            frags: 1,
            payload: Bytes::from(vec![0; len]),
        }
    }

    /// Runs the pacer on a virtual clock, returning (time, bytes) of what left.
    fn drain(p: &mut Pacer, t0: Instant, until: Duration) -> Vec<(Duration, usize)> {
        let mut now = t0;
        let mut out = Vec::new();
        while now < t0 + until {
            while let Some(x) = p.poll(now, 1200) {
                let n = match x {
                    Paced::Packet(p, _) => p.payload.len(),
                    Paced::Padding(n, _) => n,
                };
                out.push((now - t0, n));
            }
            match p.poll_timeout(now) {
                Some(t) => now = t.max(now + Duration::from_micros(100)),
                None => break,
            }
        }
        out
    }

    #[test]
    fn a_keyframe_leaves_at_the_pacing_rate_not_at_once() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        p.set_video_target(400_000); // paced at 1 Mbit/s
        for i in 0..10 {
            p.push_video(t0, pkt(0, i, 1000)); // a 10 kB frame
        }
        let out = drain(&mut p, t0, Duration::from_secs(2));
        assert_eq!(out.len(), 10);
        let last = out.last().map(|x| x.0).unwrap_or_default();
        // 80 kbit at 1 Mbit/s ≈ 80 ms (the banked burst is a few ms).
        assert!(
            (Duration::from_millis(70)..Duration::from_millis(85)).contains(&last),
            "{last:?}"
        );
        // A 70 kB keyframe takes 560 ms at that rate: late, but never dropped (the P-frame
        // queued behind it is).
        for i in 10..80 {
            let mut k = pkt(1, i, 1000);
            k.keyframe = true;
            p.push_video(t0 + Duration::from_secs(2), k);
        }
        p.push_video(t0 + Duration::from_secs(2), pkt(2, 80, 1000));
        let out = drain(&mut p, t0 + Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!((out.len(), p.stats.dropped_frames), (70, 1));
    }

    #[test]
    fn late_frames_are_dropped_whole_and_reported() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        p.set_video_target(40_000); // the 100 kbit/s floor
        for f in 0..10 {
            for i in 0..5 {
                p.push_video(
                    t0 + Duration::from_millis(u64::from(f) * 33),
                    pkt(f, f * 5 + i, 1000),
                );
            }
        }
        let out = drain(&mut p, t0, Duration::from_secs(3));
        // 100 kbit/s moves ~12.5 kB/s: most frames are too old before their turn.
        assert!(p.stats.dropped_frames > 0);
        assert_eq!(
            out.len() as u64 + p.stats.dropped_packets,
            50,
            "every packet either left or was dropped"
        );
        assert_eq!(p.take_dropped(), vec![1]);
        assert_eq!(p.queued_bytes(), 0);
        // After a drop the stream is broken: P-frames are discarded until a keyframe.
        p.push_video(t0 + Duration::from_secs(4), pkt(20, 100, 500));
        assert_eq!(p.queued_bytes(), 0);
        let mut key = pkt(21, 101, 500);
        key.keyframe = true;
        p.push_video(t0 + Duration::from_secs(4), key);
        p.push_video(t0 + Duration::from_secs(4), pkt(22, 102, 500));
        assert_eq!(p.queued_bytes(), 1000);
    }

    #[test]
    fn a_probe_pads_at_its_own_rate_not_the_pacing_rate() {
        // Video of 900 kbit/s paced at 2.25 Mbit/s, a probe for 1.08 Mbit/s (1.2×): padding
        // fills up to the probe's rate, never beyond it (media is never held for a probe).
        let t0 = Instant::now();
        let mut p = Pacer::new();
        p.set_video_target(900_000);
        p.start_probe(
            t0,
            ProbeCluster {
                id: 1,
                rate_bps: 1_080_000,
                bytes: 10_000,
            },
        );
        // (time, bytes, padding) of what left.
        let mut out: Vec<(Duration, usize, bool)> = Vec::new();
        let mut now = t0;
        let mut next_frame = 0u32;
        while now < t0 + Duration::from_millis(200) {
            if now >= t0 + Duration::from_millis(u64::from(next_frame) * 33) {
                for i in 0..4 {
                    p.push_video(now, pkt(next_frame, next_frame * 4 + i, 940));
                }
                next_frame += 1;
            }
            while let Some(x) = p.poll(now, 1200) {
                out.push(match x {
                    Paced::Packet(p, _) => (now - t0, p.payload.len(), false),
                    Paced::Padding(n, _) => (now - t0, n, true),
                });
            }
            let frame = t0 + Duration::from_millis(u64::from(next_frame) * 33);
            now = p
                .poll_timeout(now)
                .map_or(frame, |t| t.min(frame))
                .max(now + Duration::from_micros(100));
        }
        let mut before = 0;
        let mut padding = 0;
        for &(t, n, pad) in &out {
            if pad {
                // What left before this padding is within the probe's schedule.
                let schedule = 1_080_000.0 / 8.0 * t.as_secs_f64();
                assert!(
                    before as f64 <= schedule + 1.0,
                    "padding at {t:?} after {before} B (schedule {schedule:.0} B)"
                );
                padding += n;
            }
            before += n;
        }
        assert!(padding > 0, "the probe padded");
        assert!(!p.probing(), "the probe's bytes are out");
    }

    #[test]
    fn resends_go_first_and_probes_pad_up_to_their_size() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        p.set_video_target(1_000_000);
        p.push_video(t0, pkt(1, 10, 500));
        p.push_resend(t0, pkt(0, 3, 500));
        p.start_probe(
            t0,
            ProbeCluster {
                id: 7,
                rate_bps: 4_000_000,
                bytes: 20_000,
            },
        );
        let mut now = t0 + Duration::from_millis(1);
        let mut seen = Vec::new();
        let mut padding = 0;
        for _ in 0..1000 {
            while let Some(x) = p.poll(now, 1200) {
                match x {
                    Paced::Packet(q, probe) => seen.push((q.seq, probe)),
                    Paced::Padding(n, id) => {
                        assert_eq!(id, 7);
                        padding += n;
                    }
                }
            }
            let Some(t) = p.poll_timeout(now) else { break };
            now = t.max(now + Duration::from_micros(100));
        }
        assert_eq!(seen, vec![(3, Some(7)), (10, Some(7))]);
        assert_eq!(padding + 1000, 20_000);
        assert!(!p.probing());
        // 20 kB at 4 Mbit/s: about 40 ms.
        let took = now - t0;
        assert!(took < Duration::from_millis(60), "{took:?}");
    }
}
