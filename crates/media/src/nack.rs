//! Receiver side of loss recovery: detects missing sequence numbers, asks for them again
//! with RTT-aware timing, gives up in bounded time, and rate-limits keyframe requests.
//!
//! A gap is not reported at once (reordering is common on the Internet): the first NACK for a
//! sequence number leaves after the reordering delay observed on this stream (a slowly
//! decaying maximum of how late gap-filling packets arrived unasked, at least
//! [`REORDER_WAIT`], at most half an RTT) after the gap is seen; it is repeated when no
//! retransmission came within 1.25 RTT (at least [`MIN_RETRY`]); after [`MAX_TRIES`] requests
//! or [`MAX_AGE`] the packet is given up, which tells the caller that the frame it belonged
//! to cannot be completed (ask for a keyframe).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Wait before the first NACK of a gap.
pub const REORDER_WAIT: Duration = Duration::from_millis(10);
/// Shortest wait between two NACKs of one packet.
pub const MIN_RETRY: Duration = Duration::from_millis(20);
/// Requests per packet before giving up.
pub const MAX_TRIES: u8 = 5;
/// Age after which a missing packet is given up.
pub const MAX_AGE: Duration = Duration::from_millis(1000);
/// Most missing packets tracked; a larger gap resets the tracker (keyframe needed).
pub const MAX_MISSING: usize = 1000;

#[derive(Debug, Clone, Copy)]
struct Missing {
    seen: Instant,
    last_nack: Option<Instant>,
    tries: u8,
}

/// What [`NackTracker::poll`] decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NackPoll {
    /// Sequence numbers to request now (ascending).
    pub nack: Vec<u32>,
    /// Sequence numbers given up on.
    pub lost: Vec<u32>,
}

/// Missing packets of one stream.
#[derive(Debug, Default)]
pub struct NackTracker {
    highest: Option<u32>,
    start: Option<u32>,
    /// Observed reordering delay (decaying maximum).
    reorder: Duration,
    missing: BTreeMap<u32, Missing>,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// Packets recovered by retransmission.
    pub recovered: u64,
    /// NACKed packets whose original arrived after all (reordered, not lost).
    pub spurious: u64,
    /// Packets given up.
    pub lost: u64,
    /// Times a gap larger than [`MAX_MISSING`] reset the tracker.
    pub resets: u64,
}

impl NackTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker for a stream known to start at `first` (call setup says so): losses before
    /// the first arrival are requested too (a lost start of a keyframe would otherwise need a
    /// new keyframe).
    pub fn starting_at(first: u32) -> Self {
        Self {
            start: Some(first),
            ..Self::default()
        }
    }

    /// Records an arrival (`retransmit`: the header's flag); returns `true` if it filled a
    /// gap. An original that fills a gap late teaches the reordering delay, even when it was
    /// NACKed already (its NACK was spurious).
    pub fn on_packet(&mut self, now: Instant, seq: u32, retransmit: bool) -> bool {
        let Some(high) = self.highest else {
            match self.start.take() {
                Some(first) if seq > first => {
                    self.highest = Some(first);
                    self.missing.insert(
                        first,
                        Missing {
                            seen: now,
                            last_nack: None,
                            tries: 0,
                        },
                    );
                    return self.on_packet(now, seq, retransmit);
                }
                _ => self.highest = Some(seq),
            }
            return false;
        };
        if seq > high {
            let gap = (seq - high - 1) as usize;
            if gap > MAX_MISSING {
                self.missing.clear();
                self.resets += 1;
            } else {
                for s in high + 1..seq {
                    self.missing.insert(
                        s,
                        Missing {
                            seen: now,
                            last_nack: None,
                            tries: 0,
                        },
                    );
                }
                while self.missing.len() > MAX_MISSING {
                    if let Some((&s, _)) = self.missing.iter().next() {
                        self.missing.remove(&s);
                        self.lost += 1;
                    }
                }
            }
            self.highest = Some(seq);
            return false;
        }
        match self.missing.remove(&seq) {
            Some(m) => {
                if retransmit {
                    self.recovered += 1;
                } else {
                    let late = now.saturating_duration_since(m.seen);
                    self.reorder = self.reorder.max(late);
                    if m.tries > 0 {
                        self.spurious += 1;
                    }
                }
                true
            }
            None => false,
        }
    }

    fn retry_after(rtt: Duration) -> Duration {
        (rtt * 5 / 4).max(MIN_RETRY)
    }

    fn first_wait(&self, rtt: Duration) -> Duration {
        self.reorder
            .clamp(REORDER_WAIT, (rtt / 2).max(REORDER_WAIT))
    }

    /// Decides what to request at `now` given the connection's `rtt`.
    pub fn poll(&mut self, now: Instant, rtt: Duration) -> NackPoll {
        let mut out = NackPoll::default();
        let retry = Self::retry_after(rtt);
        let wait = self.first_wait(rtt);
        // The observed reordering decays (halves every ~7 s of polls at 5 ms).
        self.reorder = self.reorder.mul_f64(0.9999);
        self.missing.retain(|&seq, m| {
            let due = match m.last_nack {
                None => now >= m.seen + wait,
                Some(t) => now >= t + retry,
            };
            if now >= m.seen + MAX_AGE || (due && m.tries >= MAX_TRIES) {
                out.lost.push(seq);
                return false;
            }
            if due && out.nack.len() < p2pcall_proto::media::MAX_NACKS {
                m.last_nack = Some(now);
                m.tries += 1;
                out.nack.push(seq);
            }
            true
        });
        self.nacks_sent += out.nack.len() as u64;
        self.lost += out.lost.len() as u64;
        out
    }

    /// When [`poll`](Self::poll) next has something to do.
    pub fn next_timeout(&self, rtt: Duration) -> Option<Instant> {
        let retry = Self::retry_after(rtt);
        let wait = self.first_wait(rtt);
        self.missing
            .values()
            .map(|m| match m.last_nack {
                None => m.seen + wait,
                Some(t) => (t + retry).min(m.seen + MAX_AGE),
            })
            .min()
    }

    /// The reordering delay the first NACK of a gap currently waits for.
    pub fn reorder_wait(&self, rtt: Duration) -> Duration {
        self.first_wait(rtt)
    }

    /// Packets currently missing.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }
}

/// Keyframe requests at most once per `max(2 RTT, MIN_KEYFRAME_INTERVAL)`.
#[derive(Debug, Default)]
pub struct KeyframeRequests {
    last: Option<Instant>,
    /// Requests sent.
    pub sent: u64,
}

/// Shortest interval between two keyframe requests.
pub const MIN_KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

impl KeyframeRequests {
    /// Whether a request may go out now (and records it if so).
    pub fn request(&mut self, now: Instant, rtt: Duration) -> bool {
        let gap = (rtt * 2).max(MIN_KEYFRAME_INTERVAL);
        if self.last.is_some_and(|t| now < t + gap) {
            return false;
        }
        self.last = Some(now);
        self.sent += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    #[test]
    fn reordering_within_the_wait_is_never_nacked() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.on_packet(t0, 0, false);
        n.on_packet(t0, 2, false);
        assert_eq!(
            n.poll(t0 + Duration::from_millis(5), RTT).nack,
            Vec::<u32>::new()
        );
        assert!(n.on_packet(t0 + Duration::from_millis(6), 1, false));
        assert_eq!(
            n.poll(t0 + Duration::from_millis(50), RTT),
            NackPoll::default()
        );
        assert_eq!(n.nacks_sent, 0);
    }

    #[test]
    fn nacks_repeat_every_one_and_a_quarter_rtt_then_give_up() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.on_packet(t0, 0, false);
        n.on_packet(t0, 3, false);
        let ms = |m| t0 + Duration::from_millis(m);
        assert_eq!(n.next_timeout(RTT), Some(ms(10)));
        assert_eq!(n.poll(ms(10), RTT).nack, vec![1, 2]);
        assert_eq!(n.poll(ms(100), RTT).nack, Vec::<u32>::new());
        assert_eq!(n.next_timeout(RTT), Some(ms(135)));
        assert_eq!(n.poll(ms(135), RTT).nack, vec![1, 2]);
        assert!(n.on_packet(ms(200), 1, true));
        assert_eq!(n.recovered, 1);
        let mut t = 135;
        let mut lost = Vec::new();
        while lost.is_empty() {
            t += 125;
            let p = n.poll(ms(t), RTT);
            lost = p.lost;
        }
        assert_eq!(lost, vec![2]);
        assert_eq!(n.nacks_sent, 2 + 2 + 3);
        assert!(t <= 1000, "given up within MAX_AGE: {t}");
        assert_eq!(n.missing(), 0);
    }

    #[test]
    fn observed_reordering_delays_the_first_nack() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut n = NackTracker::new();
        n.on_packet(ms(0), 0, false);
        n.on_packet(ms(0), 2, false);
        // Packet 1 comes 30 ms late, unasked: gaps now wait ~30 ms before a NACK.
        n.on_packet(ms(30), 1, false);
        n.on_packet(ms(40), 4, false);
        assert!(n.poll(ms(50), RTT).nack.is_empty());
        assert_eq!(n.poll(ms(71), RTT).nack, vec![3]);
    }

    #[test]
    fn a_known_start_makes_a_lost_first_packet_recoverable() {
        let t0 = Instant::now();
        let mut n = NackTracker::starting_at(0);
        n.on_packet(t0, 3, false);
        assert_eq!(n.poll(t0 + REORDER_WAIT, RTT).nack, vec![0, 1, 2]);
        let mut plain = NackTracker::new();
        plain.on_packet(t0, 3, false);
        assert!(plain.poll(t0 + REORDER_WAIT, RTT).nack.is_empty());
    }

    #[test]
    fn a_huge_gap_resets_instead_of_allocating() {
        let t0 = Instant::now();
        let mut n = NackTracker::new();
        n.on_packet(t0, 0, false);
        n.on_packet(t0, u32::MAX, false);
        assert_eq!(n.missing(), 0);
        assert_eq!(n.resets, 1);
        let mut n = NackTracker::new();
        for s in (0..100_000).step_by(2) {
            n.on_packet(t0, s, false);
        }
        assert!(n.missing() <= MAX_MISSING);
    }

    #[test]
    fn keyframe_requests_are_rate_limited() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::default();
        assert!(k.request(t0, RTT));
        assert!(!k.request(t0 + Duration::from_millis(299), RTT));
        assert!(k.request(t0 + Duration::from_millis(300), RTT));
        assert!(!k.request(t0 + Duration::from_millis(500), Duration::from_millis(400)));
        assert!(k.request(t0 + Duration::from_millis(1100), Duration::from_millis(400)));
        assert_eq!(k.sent, 3);
    }
}
