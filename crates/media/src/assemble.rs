//! Media packets → complete frames. Memory stays bounded whatever arrives: at most
//! [`MAX_PENDING`] partial frames, each at most [`MAX_FRAME_BYTES`]; the oldest partial frame
//! is dropped first; packets of frames already delivered or dropped are ignored.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use p2pcall_proto::media::MediaPacket;

/// Most partial frames kept.
pub const MAX_PENDING: usize = 64;
/// Largest frame accepted (a 1080p keyframe at high quality fits easily).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// A complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame number.
    pub frame: u32,
    /// Capture time in the stream's clock.
    pub timestamp: u32,
    /// Decodable alone.
    pub keyframe: bool,
    /// The encoded bytes.
    pub data: Bytes,
    /// When its last missing fragment arrived.
    pub completed: Instant,
}

#[derive(Debug)]
struct Partial {
    timestamp: u32,
    keyframe: bool,
    frags: Vec<Option<Bytes>>,
    got: usize,
    bytes: usize,
}

/// Why a packet was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its frame was already delivered (a duplicate or late retransmission).
    Old,
    /// It disagrees with earlier fragments of its frame (count, timestamp, keyframe flag).
    Inconsistent,
    /// Its frame would exceed [`MAX_FRAME_BYTES`].
    TooLarge,
}

/// Reassembles the frames of one stream.
#[derive(Debug, Default)]
pub struct FrameAssembler {
    pending: BTreeMap<u32, Partial>,
    /// Frames below this number are finished (delivered or given up).
    floor: u32,
    /// Recently completed frames at or above `floor` (duplicates of them are ignored).
    done: std::collections::BTreeSet<u32>,
    /// Partial frames evicted to stay within [`MAX_PENDING`].
    pub evicted: u64,
}

impl FrameAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a packet; returns the frame it completes.
    pub fn push(&mut self, now: Instant, p: MediaPacket) -> Result<Option<Frame>, Dropped> {
        if p.frame < self.floor || self.done.contains(&p.frame) {
            return Err(Dropped::Old);
        }
        let frags = usize::from(p.frags);
        let part = self.pending.entry(p.frame).or_insert_with(|| Partial {
            timestamp: p.timestamp,
            keyframe: p.keyframe,
            frags: vec![None; frags],
            got: 0,
            bytes: 0,
        });
        if part.frags.len() != frags || part.timestamp != p.timestamp || part.keyframe != p.keyframe
        {
            return Err(Dropped::Inconsistent);
        }
        let slot = &mut part.frags[usize::from(p.frag)];
        if slot.is_some() {
            return Ok(None);
        }
        if part.bytes + p.payload.len() > MAX_FRAME_BYTES {
            self.pending.remove(&p.frame);
            return Err(Dropped::TooLarge);
        }
        part.bytes += p.payload.len();
        *slot = Some(p.payload);
        part.got += 1;
        if part.got == frags {
            let part = self.pending.remove(&p.frame).ok_or(Dropped::Old)?;
            self.done.insert(p.frame);
            while self.done.len() > 4 * MAX_PENDING {
                if let Some(first) = self.done.pop_first() {
                    self.floor = self.floor.max(first + 1);
                }
            }
            let mut data = BytesMut::with_capacity(part.bytes);
            for f in part.frags.into_iter().flatten() {
                data.extend_from_slice(&f);
            }
            return Ok(Some(Frame {
                frame: p.frame,
                timestamp: part.timestamp,
                keyframe: part.keyframe,
                data: data.freeze(),
                completed: now,
            }));
        }
        while self.pending.len() > MAX_PENDING {
            if let Some((&oldest, _)) = self.pending.iter().next() {
                self.pending.remove(&oldest);
                self.evicted += 1;
                self.floor = self.floor.max(oldest + 1);
            }
        }
        Ok(None)
    }

    /// Forgets every partial frame below `frame` (the consumer gave up on them).
    pub fn discard_below(&mut self, frame: u32) {
        self.floor = self.floor.max(frame);
        self.pending = self.pending.split_off(&frame);
        self.done = self.done.split_off(&frame);
    }

    /// Partial frames held.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packetize::Packetizer;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    #[test]
    fn shuffled_and_duplicated_fragments_give_each_frame_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut p = Packetizer::new(1);
        let frames: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                (0..rng.random_range(1..20_000))
                    .map(|j| (i * 31 + j) as u8)
                    .collect()
            })
            .collect();
        let mut pkts: Vec<_> = frames
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                p.packetize(Bytes::from(f.clone()), i as u32 * 3000, i == 0, 1200)
                    .unwrap()
            })
            .collect();
        let dups: Vec<_> = pkts.iter().step_by(3).cloned().collect();
        pkts.extend(dups);
        pkts.shuffle(&mut rng);
        let mut a = FrameAssembler::new();
        let now = Instant::now();
        let mut got: Vec<Frame> = pkts
            .into_iter()
            .filter_map(|p| a.push(now, p).ok().flatten())
            .collect();
        got.sort_by_key(|f| f.frame);
        assert_eq!(got.len(), 20);
        for (f, want) in got.iter().zip(&frames) {
            assert_eq!(&f.data[..], &want[..]);
            assert_eq!(f.timestamp, f.frame * 3000);
            assert_eq!(f.keyframe, f.frame == 0);
        }
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn hostile_packets_cannot_grow_memory_or_corrupt_frames() {
        let mut a = FrameAssembler::new();
        let now = Instant::now();
        let pkt = |frame: u32, frag: u16, frags: u16, ts: u32| MediaPacket {
            stream: 0,
            keyframe: false,
            retransmit: false,
            tw: 0,
            seq: 0,
            timestamp: ts,
            frame,
            frag,
            frags,
            payload: Bytes::from(vec![1u8; 1000]),
        };
        // Endless first fragments of distinct frames: bounded.
        for f in 0..10_000 {
            assert_eq!(a.push(now, pkt(f, 0, 2, 0)), Ok(None));
        }
        assert!(a.pending() <= MAX_PENDING);
        assert!(a.evicted > 0);
        // A fragment that disagrees with its frame is refused.
        assert_eq!(a.push(now, pkt(20_000, 0, 3, 5)), Ok(None));
        assert_eq!(
            a.push(now, pkt(20_000, 1, 4, 5)),
            Err(Dropped::Inconsistent)
        );
        assert_eq!(
            a.push(now, pkt(20_000, 1, 3, 6)),
            Err(Dropped::Inconsistent)
        );
        // An oversized frame is dropped as soon as it exceeds the limit.
        let mut r = Ok(None);
        for i in 0..1024u16 {
            r = a.push(
                now,
                MediaPacket {
                    payload: Bytes::from(vec![0u8; 8000]),
                    ..pkt(30_000, i, 1024, 0)
                },
            );
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(Dropped::TooLarge));
        // Old frames are ignored.
        a.discard_below(40_000);
        assert_eq!(a.push(now, pkt(39_999, 0, 1, 0)), Err(Dropped::Old));
        assert_eq!(a.pending(), 0);
    }
}
