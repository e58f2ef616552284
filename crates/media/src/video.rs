//! Video frame buffer: releases complete frames only when the decoder can decode them —
//! in order after the last released frame, or a keyframe. When the next frame cannot arrive
//! (its packets were given up, or it is overdue), frames up to the next keyframe are dropped
//! and a keyframe is needed (the caller asks through `nack::KeyframeRequests`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::assemble::Frame;

/// Complete frames held at most (2 s at 60 fps).
pub const MAX_FRAMES: usize = 120;

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VideoStats {
    /// Frames released to the decoder.
    pub released: u64,
    /// Complete frames dropped because they could not be decoded.
    pub dropped: u64,
    /// Times the stream had to wait for a keyframe.
    pub keyframe_waits: u64,
}

/// The decodable-frame buffer of one video stream.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    frames: BTreeMap<u32, Frame>,
    last: Option<u32>,
    need_keyframe: bool,
    /// Counters.
    pub stats: VideoStats,
}

impl FrameBuffer {
    /// An empty buffer: it waits for a keyframe first.
    pub fn new() -> Self {
        Self {
            need_keyframe: true,
            ..Self::default()
        }
    }

    /// Whether the stream is stuck until a keyframe arrives (ask the sender for one).
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// How long the oldest complete frame held has waited (None: none held).
    pub fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        self.frames
            .values()
            .next()
            .map(|f| now.saturating_duration_since(f.completed))
    }

    /// Whether no complete frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Adds a complete frame.
    pub fn push(&mut self, f: Frame) {
        if self.last.is_some_and(|l| f.frame <= l) {
            return;
        }
        self.frames.insert(f.frame, f);
        while self.frames.len() > MAX_FRAMES {
            self.frames.pop_first();
            self.stats.dropped += 1;
        }
    }

    /// The frames of `frame` and everything before it will never complete (packets given
    /// up): the next decodable frame is a keyframe after it.
    pub fn lost(&mut self, frame: u32) {
        if self.last.is_none_or(|l| frame > l) && !self.need_keyframe {
            self.need_keyframe = true;
            self.stats.keyframe_waits += 1;
        }
    }

    /// The next frame to decode, if any. A missing next frame is waited for `max_wait` after
    /// a later frame completed (about one retransmission round trip), then given up.
    pub fn pop(&mut self, now: Instant, max_wait: Duration) -> Option<Frame> {
        if !self.need_keyframe {
            let next = self.last.map_or(0, |l| l + 1);
            if let Some(f) = self.frames.remove(&next) {
                return Some(self.release(f));
            }
            let overdue = self
                .frames
                .values()
                .next()
                .is_some_and(|f| now >= f.completed + max_wait);
            if !overdue {
                return None;
            }
            self.need_keyframe = true;
            self.stats.keyframe_waits += 1;
        }
        // Waiting for a keyframe: the newest complete keyframe wins, older frames go.
        let key = self
            .frames
            .iter()
            .rev()
            .find(|(_, f)| f.keyframe)
            .map(|(&n, _)| n)?;
        let mut later = self.frames.split_off(&key);
        self.stats.dropped += self.frames.len() as u64;
        self.frames.clear();
        let f = later.pop_first().map(|(_, f)| f)?;
        self.frames = later;
        self.need_keyframe = false;
        Some(self.release(f))
    }

    fn release(&mut self, f: Frame) -> Frame {
        self.last = Some(f.frame);
        self.stats.released += 1;
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: u32, key: bool, at: Instant) -> Frame {
        Frame {
            frame: n,
            timestamp: n * 3000,
            keyframe: key,
            data: Bytes::new(),
            completed: at,
        }
    }

    #[test]
    fn frames_come_out_in_order_only_when_decodable() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut b = FrameBuffer::new();
        // Delta frames before any keyframe are not decodable.
        b.push(frame(1, false, t0));
        assert!(b.pop(t0, w).is_none());
        assert!(b.needs_keyframe());
        b.push(frame(0, true, t0));
        b.push(frame(2, false, t0));
        let order: Vec<u32> = std::iter::from_fn(|| b.pop(t0, w))
            .map(|f| f.frame)
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
        // Frame 3 missing: 4 waits for it, within the wait.
        b.push(frame(4, false, t0));
        assert!(b.pop(t0 + Duration::from_millis(50), w).is_none());
        b.push(frame(3, false, t0 + Duration::from_millis(60)));
        let order: Vec<u32> = std::iter::from_fn(|| b.pop(t0 + Duration::from_millis(60), w))
            .map(|f| f.frame)
            .collect();
        assert_eq!(order, vec![3, 4]);
    }

    #[test]
    fn an_unrecoverable_frame_waits_for_the_next_keyframe() {
        let t0 = Instant::now();
        let w = Duration::from_millis(100);
        let mut b = FrameBuffer::new();
        b.push(frame(0, true, t0));
        assert_eq!(b.pop(t0, w).unwrap().frame, 0);
        // Frame 1 never arrives; 2 and 3 are useless without it.
        b.push(frame(2, false, t0));
        b.push(frame(3, false, t0));
        assert!(b.pop(t0 + Duration::from_millis(99), w).is_none());
        assert!(b.pop(t0 + Duration::from_millis(100), w).is_none());
        assert!(b.needs_keyframe());
        b.push(frame(4, false, t0));
        b.push(frame(5, true, t0));
        b.push(frame(6, false, t0));
        let order: Vec<u32> = std::iter::from_fn(|| b.pop(t0 + Duration::from_millis(120), w))
            .map(|f| f.frame)
            .collect();
        assert_eq!(order, vec![5, 6]);
        assert_eq!(b.stats.dropped, 3);
        assert_eq!(b.stats.keyframe_waits, 1);
        // Reported losses switch to keyframe wait at once.
        b.lost(7);
        assert!(b.needs_keyframe());
        b.push(frame(8, false, t0));
        assert!(b.pop(t0, w).is_none());
    }
}
