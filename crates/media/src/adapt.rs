//! From a bitrate to what the encoder makes of it (sans-IO): bitrate at once, frame size
//! and frame rate in steps, with hysteresis.
//!
//! A ladder of rungs runs from the source's full size and rate down. Each rung needs a
//! minimum bitrate, `pixels × fps × bits per pixel`: camera video keeps its frame rate and
//! gives up size first (motion wants frames); screen content keeps its size (text must stay
//! legible) and gives up frame rate first. The ladder steps down, straight to the rung the
//! target fits, when the target stays below the current rung's need for [`DOWN_AFTER`]
//! (a new size costs a keyframe, the worst thing to send into congestion), and up
//! when the target stays above 1.3 × the next rung's need for [`UP_AFTER`] (down only below
//! 0.8 × the current need; a size holds [`MIN_DWELL`] before it climbs again): a target
//! wobbling around one threshold changes neither size nor rate.

use std::time::{Duration, Instant};

/// A target below the current rung's need this long steps down.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);
/// A target above the next rung's need (with margin) this long steps up.
pub const UP_AFTER: Duration = Duration::from_secs(3);
/// A new size holds at least this long (each change costs a keyframe).
pub const MIN_DWELL: Duration = Duration::from_secs(4);
/// Down when the target is below the current need × this.
const DOWN_MARGIN: f64 = 0.8;
/// Bits per pixel a camera frame needs to look acceptable in H264.
const CAMERA_BPP: f64 = 0.05;
/// Screen content (flat areas, text) compresses far better.
const SCREEN_BPP: f64 = 0.012;
/// Headroom to climb: the next rung's need × this.
const UP_MARGIN: f64 = 1.3;
/// A bitrate change smaller than this fraction waits (unless a second passed).
const MIN_CHANGE: f64 = 0.05;

/// What the encoder should produce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Bitrate, bit/s.
    pub bitrate_bps: u32,
    /// Frames per second.
    pub fps: f32,
    /// Largest frame width (even).
    pub width: usize,
    /// Largest frame height (even).
    pub height: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rung {
    width: usize,
    height: usize,
    fps: f32,
}

impl Rung {
    fn need(&self, bpp: f64) -> f64 {
        self.width as f64 * self.height as f64 * f64::from(self.fps) * bpp
    }
}

/// The ladder of one video stream.
#[derive(Debug)]
pub struct Ladder {
    rungs: Vec<Rung>,
    bpp: f64,
    at: usize,
    below_since: Option<Instant>,
    above_since: Option<Instant>,
    changed_at: Option<Instant>,
    last: Option<(Instant, Quality)>,
}

fn even(v: f64) -> usize {
    ((v as usize) & !1).max(16)
}

impl Ladder {
    /// A ladder for a source of `width × height` at `fps`; `screen` for screen content.
    pub fn new(width: usize, height: usize, fps: f32, screen: bool) -> Self {
        let fps = fps.max(1.0);
        let mut rungs = Vec::new();
        let sized = |s: f64, fps: f32| Rung {
            width: even(width as f64 * s),
            height: even(height as f64 * s),
            fps,
        };
        if screen {
            // Size stays; the rate halves down to ~4 fps; then size, as a last resort.
            let mut f = fps;
            while f >= 4.0 {
                rungs.push(sized(1.0, f));
                f = (f / 2.0).round();
            }
            let low = rungs.last().map_or(fps, |r| r.fps);
            for s in [0.75, 0.5] {
                rungs.push(sized(s, low));
            }
        } else {
            for s in [1.0, 0.75, 0.5, 0.375, 0.25] {
                rungs.push(sized(s, fps));
            }
            if fps > 10.0 {
                rungs.push(sized(0.25, (fps / 2.0).round()));
            }
        }
        rungs.dedup();
        Self {
            rungs,
            bpp: if screen { SCREEN_BPP } else { CAMERA_BPP },
            at: 0,
            below_since: None,
            above_since: None,
            changed_at: None,
            last: None,
        }
    }

    /// The current quality for `target_bps`, and whether it differs from what was last
    /// returned enough to tell the encoder (call often: every feedback, or every 100 ms).
    pub fn update(&mut self, now: Instant, target_bps: u64) -> Option<Quality> {
        let t = target_bps as f64;
        let need = self.rungs[self.at].need(self.bpp) * DOWN_MARGIN;
        let settled = self
            .changed_at
            .is_none_or(|c| now.saturating_duration_since(c) >= MIN_DWELL);
        if t < need && self.at + 1 < self.rungs.len() {
            let since = *self.below_since.get_or_insert(now);
            // Not at once: a new size is a keyframe, and a sudden drop is congestion,
            // the worst time for one. The bitrate follows at once meanwhile.
            if now.saturating_duration_since(since) >= DOWN_AFTER {
                // Straight to the best rung the target fits (one new size, one keyframe).
                while self.at + 1 < self.rungs.len()
                    && t < self.rungs[self.at].need(self.bpp) * DOWN_MARGIN
                {
                    self.at += 1;
                }
                self.changed_at = Some(now);
                self.below_since = None;
                self.above_since = None;
            }
        } else {
            self.below_since = None;
        }
        // Up: the better rung must fit with margin, for a while.
        if self.at > 0 && t >= self.rungs[self.at - 1].need(self.bpp) * UP_MARGIN {
            let since = *self.above_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= UP_AFTER && settled {
                self.at -= 1;
                self.above_since = None;
                self.changed_at = Some(now);
            }
        } else {
            self.above_since = None;
        }
        let r = self.rungs[self.at];
        let q = Quality {
            bitrate_bps: target_bps.min(u64::from(u32::MAX)) as u32,
            fps: r.fps,
            width: r.width,
            height: r.height,
        };
        let changed = match self.last {
            None => true,
            Some((at, l)) => {
                (l.width, l.height, l.fps) != (q.width, q.height, q.fps)
                    || (f64::from(q.bitrate_bps) - f64::from(l.bitrate_bps)).abs()
                        > f64::from(l.bitrate_bps) * MIN_CHANGE
                    || (q.bitrate_bps != l.bitrate_bps
                        && now.saturating_duration_since(at) >= Duration::from_secs(1))
            }
        };
        if changed {
            self.last = Some((now, q));
            Some(q)
        } else {
            None
        }
    }

    /// The quality last returned.
    pub fn current(&self) -> Option<Quality> {
        self.last.map(|(_, q)| q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(l: &mut Ladder, t0: Instant, from_s: f64, to_s: f64, bps: u64) -> Quality {
        let mut s = from_s;
        while s < to_s {
            l.update(t0 + Duration::from_secs_f64(s), bps);
            s += 0.05;
        }
        l.current().unwrap()
    }

    #[test]
    fn camera_gives_up_size_and_screen_gives_up_frame_rate() {
        let t0 = Instant::now();
        let mut cam = Ladder::new(1280, 720, 30.0, false);
        let q = run(&mut cam, t0, 0.0, 5.0, 3_000_000);
        assert_eq!((q.width, q.height, q.fps), (1280, 720, 30.0));
        let q = run(&mut cam, t0, 5.0, 10.0, 500_000);
        assert!(q.width < 1280 && q.fps == 30.0, "{q:?}");
        assert_eq!(q.bitrate_bps, 500_000);
        let mut scr = Ladder::new(1920, 1080, 60.0, true);
        let q = run(&mut scr, t0, 0.0, 5.0, 4_000_000);
        assert_eq!((q.width, q.fps), (1920, 60.0));
        let q = run(&mut scr, t0, 5.0, 10.0, 800_000);
        assert_eq!(q.width, 1920, "{q:?}");
        assert!(q.fps < 60.0, "{q:?}");
    }

    #[test]
    fn a_target_wobbling_around_a_threshold_changes_no_size() {
        let t0 = Instant::now();
        let mut cam = Ladder::new(640, 360, 30.0, false);
        let need = 640.0 * 360.0 * 30.0 * CAMERA_BPP;
        let mut sizes = std::collections::HashSet::new();
        for i in 0..400 {
            // ±10 % around the full size's need, flipping every 300 ms.
            let bps = if (i / 6) % 2 == 0 {
                need * 1.1
            } else {
                need * 0.9
            };
            let q = run(
                &mut cam,
                t0,
                f64::from(i) * 0.05,
                f64::from(i + 1) * 0.05,
                bps as u64,
            );
            sizes.insert(q.width);
        }
        assert_eq!(sizes.len(), 1, "{sizes:?}");
    }

    #[test]
    fn steps_back_up_after_the_target_recovers() {
        let t0 = Instant::now();
        let mut cam = Ladder::new(640, 360, 30.0, false);
        run(&mut cam, t0, 0.0, 2.0, 1_000_000);
        let low = run(&mut cam, t0, 2.0, 6.0, 80_000);
        assert!(low.width <= 320, "{low:?}");
        let back = run(&mut cam, t0, 6.0, 20.0, 1_000_000);
        assert_eq!((back.width, back.height, back.fps), (640, 360, 30.0));
        // A collapse cuts the bitrate at once, the size a second later, straight to the
        // rung that fits (not one rung per second).
        let t = t0 + Duration::from_secs(20);
        let q = cam.update(t, 40_000).unwrap();
        assert_eq!((q.bitrate_bps, q.width), (40_000, 640));
        let q = run(&mut cam, t, 0.05, 1.2, 40_000);
        assert!(q.width <= 240, "{q:?}");
    }
}
