//! Sender side of loss recovery: recent packets kept for retransmission, bounded in count
//! and age, each sent again at most [`MAX_RESENDS`] times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2pcall_proto::media::MediaPacket;

/// Packets kept.
pub const CAPACITY: usize = 4096;
/// Oldest packet kept (a retransmission later than this would arrive too late to play).
pub const MAX_AGE: Duration = Duration::from_millis(1000);
/// Retransmissions per packet.
pub const MAX_RESENDS: u8 = 3;

#[derive(Debug)]
struct Kept {
    sent: Instant,
    resends: u8,
    packet: MediaPacket,
}

/// Recently sent packets of one stream.
#[derive(Debug, Default)]
pub struct RetransmitBuffer {
    kept: VecDeque<Kept>,
    /// Packets sent again.
    pub resent: u64,
    /// NACKed packets no longer available.
    pub missed: u64,
}

impl RetransmitBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a packet just sent (packets must be added in increasing sequence order; gaps
    /// are fine).
    pub fn sent(&mut self, now: Instant, packet: MediaPacket) {
        self.kept.push_back(Kept {
            sent: now,
            resends: 0,
            packet,
        });
        while self.kept.len() > CAPACITY {
            self.kept.pop_front();
        }
    }

    /// The packets to send again for a NACK, marked as retransmissions.
    pub fn nacked(&mut self, now: Instant, seqs: &[u32]) -> Vec<MediaPacket> {
        while self.kept.front().is_some_and(|k| now > k.sent + MAX_AGE) {
            self.kept.pop_front();
        }
        let mut out = Vec::new();
        for &s in seqs {
            // Kept in sequence order, with gaps where the pacer dropped a late frame.
            let k = self
                .kept
                .binary_search_by_key(&s, |k| k.packet.seq)
                .ok()
                .and_then(|i| self.kept.get_mut(i));
            match k {
                Some(k) if k.resends < MAX_RESENDS => {
                    k.resends += 1;
                    let mut p = k.packet.clone();
                    p.retransmit = true;
                    out.push(p);
                }
                _ => self.missed += 1,
            }
        }
        self.resent += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(seq: u32) -> MediaPacket {
        MediaPacket {
            stream: 1,
            keyframe: false,
            retransmit: false,
            tw: 0,
            seq,
            timestamp: 0,
            frame: seq,
            frag: 0,
            frags: 1,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn resends_are_bounded_by_count_age_and_capacity() {
        let t0 = Instant::now();
        let mut b = RetransmitBuffer::new();
        for s in 0..10 {
            b.sent(t0, pkt(s));
        }
        let r = b.nacked(t0, &[3, 7, 99]);
        assert_eq!(r.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![3, 7]);
        assert!(r.iter().all(|p| p.retransmit));
        assert_eq!(b.missed, 1);
        for _ in 0..MAX_RESENDS {
            b.nacked(t0, &[5]);
        }
        assert!(b.nacked(t0, &[5]).is_empty());
        assert!(
            b.nacked(t0 + MAX_AGE + Duration::from_millis(1), &[3])
                .is_empty()
        );
        for s in 10..10 + CAPACITY as u32 * 2 {
            b.sent(t0, pkt(s));
        }
        assert!(b.nacked(t0, &[10]).is_empty());
        assert_eq!(b.nacked(t0, &[10 + CAPACITY as u32 * 2 - 1]).len(), 1);
    }
}
