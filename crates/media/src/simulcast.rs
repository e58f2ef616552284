//! Two layers of video per sender in a group call, and which one each receiver gets
//! (sans-IO).
//!
//! A sender in a group call encodes each frame twice: the full layer (the call's size,
//! following the [`crate::adapt::Ladder`] of the receivers that get it) and a small one (half
//! the width and height, at what its most constrained receiver allows, up to [`SMALL_BPS`]).
//! Each pair's own bandwidth estimate picks its layer: one constrained receiver gets the
//! small layer instead of dragging everyone's picture down to what its link carries. The full
//! layer needs what [`full_layer_need`] says for the call's size and frame rate: below it for
//! [`DOWN_AFTER`] the pair steps down, above it with margin for [`UP_AFTER`] it steps back
//! up, and a layer holds at least [`MIN_DWELL`] before climbing again (each switch costs a
//! keyframe). The need is relative, not a fixed rate: a small call (320×240 at 15 fps) sends
//! little, and its estimate, which follows what is sent, must not push it down a layer.

use std::time::{Duration, Instant};

/// The small layer's most bitrate, bit/s: it takes what its most constrained receiver's
/// estimate allows up to this, just under what the full layer needs (a moving 320×180 test
/// pattern at 30 fps needs ~360 kbit/s; at 200 kbit/s the encoder skipped every other
/// frame).
pub const SMALL_BPS: u32 = 450_000;
/// Bits per pixel the full layer needs to look better than the small one (1.5 × what the
/// ladder asks of a camera picture, `crate::adapt`).
const FULL_BPP: f64 = 0.075;

/// The video estimate, bit/s, below which the full layer of `width × height` at `fps`
/// looks worse than the small one (640×360 at 30 fps: 518 kbit/s), within what the call's
/// video may send at most (`video_max_bps`): a pair whose estimate reaches that cap keeps,
/// or climbs back to, the full layer. Without the cap a 1280×720 call at the default
/// 1 Mbit/s (need 2.07 Mbit/s) put every receiver on the small layer for good.
pub fn full_layer_need(width: usize, height: usize, fps: u32, video_max_bps: u64) -> u64 {
    let need = (width as f64 * height as f64 * f64::from(fps) * FULL_BPP) as u64;
    need.min((video_max_bps as f64 / UP_MARGIN) as u64)
}

/// An estimate below the full layer's need this long steps down (a new connection's estimate
/// climbs from its start value within about a second).
pub const DOWN_AFTER: Duration = Duration::from_secs(2);
/// An estimate above the full layer's need × 1.3 this long steps up.
pub const UP_AFTER: Duration = Duration::from_secs(3);
/// A layer holds at least this long.
pub const MIN_DWELL: Duration = Duration::from_secs(4);
/// Headroom to climb.
const UP_MARGIN: f64 = 1.3;

/// A video layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// The call's size.
    Full,
    /// Half the width and height.
    Small,
}

impl Layer {
    /// `full` or `small`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Small => "small",
        }
    }
}

/// The size of the small layer for a full layer of `width × height` (even sizes).
pub fn small_size(width: usize, height: usize) -> (usize, usize) {
    ((width / 2).max(2) & !1, (height / 2).max(2) & !1)
}

/// Which layer one receiver gets.
#[derive(Debug, Clone)]
pub struct LayerChoice {
    layer: Layer,
    /// What the full layer needs, bit/s.
    need: u64,
    /// Since when the estimate argues for the other layer.
    since: Option<Instant>,
    changed: Instant,
}

impl LayerChoice {
    /// A new receiver starts on the full layer (its estimate is still climbing); `need`:
    /// [`full_layer_need`] of the call.
    pub fn new(now: Instant, need: u64) -> Self {
        Self {
            layer: Layer::Full,
            need,
            since: None,
            changed: now,
        }
    }

    /// The layer now.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The pair's video estimate now; the new layer when it changes.
    pub fn update(&mut self, now: Instant, video_target_bps: u64) -> Option<Layer> {
        let t = video_target_bps as f64;
        let other = match self.layer {
            Layer::Full if t < self.need as f64 => Some((Layer::Small, DOWN_AFTER)),
            Layer::Small if t >= self.need as f64 * UP_MARGIN => Some((Layer::Full, UP_AFTER)),
            _ => None,
        };
        let Some((to, after)) = other else {
            self.since = None;
            return None;
        };
        let since = *self.since.get_or_insert(now);
        let dwelt = now.saturating_duration_since(self.changed) >= MIN_DWELL;
        if now.saturating_duration_since(since) >= after && (dwelt || to == Layer::Small) {
            self.layer = to;
            self.since = None;
            self.changed = now;
            return Some(to);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bps` every 50 ms from `from` to `to` seconds; the layer at the end.
    fn run(c: &mut LayerChoice, t0: Instant, from: f64, to: f64, bps: u64) -> Layer {
        let mut s = from;
        while s < to {
            c.update(t0 + Duration::from_secs_f64(s), bps);
            s += 0.05;
        }
        c.layer()
    }

    #[test]
    fn a_constrained_pair_steps_down_and_back_up_with_hysteresis() {
        let t0 = Instant::now();
        let mut c = LayerChoice::new(t0, 600_000);
        // A new connection's estimate climbing from 570 kbit/s within a second: no switch.
        assert_eq!(run(&mut c, t0, 0.0, 1.0, 570_000), Layer::Full);
        assert_eq!(run(&mut c, t0, 1.0, 5.0, 2_000_000), Layer::Full);
        // A 500 kbit/s link: down after 2 s.
        assert_eq!(run(&mut c, t0, 5.0, 6.9, 420_000), Layer::Full);
        assert_eq!(run(&mut c, t0, 6.9, 7.2, 420_000), Layer::Small);
        // Just above the threshold is not enough to climb; 1.3 × for 3 s is.
        assert_eq!(run(&mut c, t0, 7.2, 20.0, 700_000), Layer::Small);
        assert_eq!(run(&mut c, t0, 20.0, 22.9, 800_000), Layer::Small);
        assert_eq!(run(&mut c, t0, 22.9, 23.2, 800_000), Layer::Full);
    }

    #[test]
    fn an_estimate_wobbling_around_the_threshold_changes_nothing() {
        let t0 = Instant::now();
        let mut c = LayerChoice::new(t0, 600_000);
        let mut layers = std::collections::HashSet::new();
        for i in 0..200 {
            // ±15 % around the threshold, flipping every 500 ms.
            let bps = if (i / 10) % 2 == 0 { 690_000 } else { 510_000 };
            let s = f64::from(i) * 0.05;
            layers.insert(run(&mut c, t0, s, s + 0.05, bps));
        }
        assert_eq!(layers.len(), 1, "{layers:?}");
        assert_eq!(small_size(640, 360), (320, 180));
        assert_eq!(small_size(1366, 766), (682, 382));
        assert_eq!(full_layer_need(640, 360, 30, 1_000_000), 518_400);
    }

    #[test]
    fn a_call_above_its_bitrate_cap_keeps_the_full_layer_at_the_cap() {
        // 1280x720 at 30 fps would need 2.07 Mbit/s; the call sends at most 1 Mbit/s.
        let need = full_layer_need(1280, 720, 30, 1_000_000);
        assert_eq!(need, 769_230);
        let t0 = Instant::now();
        let mut c = LayerChoice::new(t0, need);
        // A pair at the cap stays on the full layer.
        assert_eq!(run(&mut c, t0, 0.0, 10.0, 1_000_000), Layer::Full);
        // A constrained one steps down, and climbs back once its estimate reaches the cap.
        assert_eq!(run(&mut c, t0, 10.0, 13.0, 500_000), Layer::Small);
        assert_eq!(run(&mut c, t0, 13.0, 20.0, 1_000_000), Layer::Full);
    }
}
