//! Mixing what several participants say into one speaker (sans-IO).
//!
//! Each participant's decoded audio arrives at its own jitter buffer's pace, 20 ms at a
//! time, at its own phase. [`Mix`] adds each participant's samples at that participant's own
//! write position on a common timeline and hands out the samples every participant has
//! written (summed, clipped to 16 bits). A participant that falls more than [`MAX_SKEW`]
//! behind the one furthest ahead does not hold the others back: what is older than that goes
//! out anyway, and the laggard's next samples land at the head. With one participant every
//! sample goes out as it arrives.

use std::collections::VecDeque;

/// How far, in 48 kHz samples, the furthest participant may be ahead of the others before
/// its audio goes out without theirs (60 ms).
pub const MAX_SKEW: usize = 2880;

/// The mix of one call's participants.
#[derive(Debug)]
pub struct Mix<K> {
    /// Summed samples not handed out yet; index 0 plays next.
    buf: VecDeque<i32>,
    /// Each participant's write position in `buf`.
    cursors: Vec<(K, usize)>,
}

impl<K: Copy + PartialEq> Default for Mix<K> {
    fn default() -> Self {
        Self {
            buf: VecDeque::new(),
            cursors: Vec::new(),
        }
    }
}

impl<K: Copy + PartialEq> Mix<K> {
    /// Adds `pcm` from `who` (a participant not seen before joins at the head).
    pub fn push(&mut self, who: K, pcm: &[i16]) {
        let i = match self.cursors.iter().position(|(k, _)| *k == who) {
            Some(i) => i,
            None => {
                self.cursors.push((who, 0));
                self.cursors.len() - 1
            }
        };
        let at = self.cursors[i].1;
        if self.buf.len() < at + pcm.len() {
            self.buf.resize(at + pcm.len(), 0);
        }
        for (j, s) in pcm.iter().enumerate() {
            self.buf[at + j] += i32::from(*s);
        }
        self.cursors[i].1 = at + pcm.len();
    }

    /// `who` is gone: the mix no longer waits for it.
    pub fn leave(&mut self, who: K) {
        self.cursors.retain(|(k, _)| *k != who);
    }

    /// The samples ready to play: what every participant has written, and what is older
    /// than [`MAX_SKEW`] behind the furthest one.
    pub fn take(&mut self) -> Vec<i16> {
        let furthest = self.cursors.iter().map(|c| c.1).max().unwrap_or(0);
        let all = self.cursors.iter().map(|c| c.1).min().unwrap_or(0);
        let n = all
            .max(furthest.saturating_sub(MAX_SKEW))
            .min(self.buf.len());
        for c in &mut self.cursors {
            c.1 = c.1.saturating_sub(n);
        }
        (self.buf.drain(..n))
            .map(|s| s.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_voices_sum_and_one_that_stops_does_not_hold_the_other_back() {
        let mut m = Mix::default();
        // One participant: out as it comes.
        m.push(1, &[100; 960]);
        assert_eq!(m.take(), vec![100; 960]);
        // A second one, 10 ms out of phase: the overlap is summed, the rest waits for it.
        m.push(2, &[10; 480]);
        m.push(1, &[100; 960]);
        assert_eq!(m.take(), vec![110; 480]);
        m.push(2, &[10; 960]);
        let out = m.take();
        assert_eq!(out, vec![110; 480]);
        m.push(1, &[30_000; 960]);
        m.push(2, &[30_000; 960]);
        let out = m.take();
        assert!(
            out.iter().all(|s| *s == i16::MAX || *s == 30_010),
            "clipped"
        );
        // Participant 2 stalls: 1 goes on, at most 60 ms ahead.
        let mut played = 0;
        for _ in 0..10 {
            m.push(1, &[5; 960]);
            played += m.take().len();
        }
        assert!(played >= 960 * 10 - MAX_SKEW - 960, "{played}");
        m.leave(2);
        m.push(1, &[5; 960]);
        assert!(!m.take().is_empty());
        assert!(m.buf.is_empty(), "everything out once only one is left");
    }
}
