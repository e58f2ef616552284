//! Progress, rate and ETA of a transfer on a caller-supplied clock.

use std::time::{Duration, Instant};

/// Rate is averaged over windows of this length.
const WINDOW: Duration = Duration::from_millis(500);
/// Weight of the newest window in the moving average.
const ALPHA: f64 = 0.3;

/// Tracks bytes done against a total.
#[derive(Debug, Clone)]
pub struct Meter {
    total: u64,
    done: u64,
    start: Instant,
    window_start: Instant,
    window_done: u64,
    rate: Option<f64>,
}

impl Meter {
    /// A meter for `total` bytes, of which `already` were done before `now` (resumed).
    pub fn new(now: Instant, total: u64, already: u64) -> Self {
        Self {
            total,
            done: already.min(total),
            start: now,
            window_start: now,
            window_done: already.min(total),
            rate: None,
        }
    }

    /// Records `n` more bytes done at `now`.
    pub fn add(&mut self, now: Instant, n: u64) {
        self.done = self.done.saturating_add(n).min(self.total);
        let dt = now.saturating_duration_since(self.window_start);
        if dt >= WINDOW {
            let r = (self.done - self.window_done) as f64 / dt.as_secs_f64();
            self.rate = Some(match self.rate {
                Some(old) => old + ALPHA * (r - old),
                None => r,
            });
            self.window_start = now;
            self.window_done = self.done;
        }
    }

    /// Bytes done.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Smoothed bytes per second (`None` until the first window has passed).
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Average bytes per second since the start, counting only bytes done after it.
    pub fn average(&self, now: Instant, already: u64) -> f64 {
        let dt = now.saturating_duration_since(self.start).as_secs_f64();
        (self.done.saturating_sub(already)) as f64 / dt.max(1e-9)
    }

    /// Time left at the current rate.
    pub fn eta(&self) -> Option<Duration> {
        let r = self.rate.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64((self.total - self.done) as f64 / r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_a_steady_flow() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0, 10_000_000, 0);
        assert_eq!(m.rate(), None);
        assert_eq!(m.eta(), None);
        for i in 1..=20 {
            // 1 MB/s: 100 kB every 100 ms.
            m.add(t0 + Duration::from_millis(100 * i), 100_000);
        }
        let r = m.rate().unwrap();
        assert!((r - 1e6).abs() < 1.0, "{r}");
        assert_eq!(m.eta().unwrap().as_secs(), 8);
        assert_eq!(m.done(), 2_000_000);
    }

    #[test]
    fn a_resumed_meter_starts_at_what_was_done_and_never_passes_the_total() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0, 100, 40);
        assert_eq!(m.done(), 40);
        m.add(t0 + Duration::from_secs(1), 1000);
        assert_eq!(m.done(), 100);
        assert_eq!(m.eta(), Some(Duration::ZERO));
        assert_eq!(m.average(t0 + Duration::from_secs(1), 40), 60.0);
    }
}
