//! A rate gate for bulk streams that share a connection with a call (sans-IO): a token
//! bucket whose rate the call's bandwidth estimate sets
//! ([`MediaSession::bulk_allowance_bps`](crate::session::MediaSession::bulk_allowance_bps)).
//!
//! QUIC's own congestion controller would fill the bottleneck's queue for a file transfer
//! and starve the call's delay budget; gated here, the transfer gets what the call leaves
//! and the queue stays short for both.

use std::time::{Duration, Instant};

/// Most a gate lets through at once: this long at its rate.
const BURST: Duration = Duration::from_millis(20);
/// The smallest burst, bytes (a few QUIC packets).
const MIN_BURST: f64 = 4.0 * 1200.0;
/// The least the gate lets through at once, bytes (about one full QUIC packet).
pub const MIN_WRITE: usize = 1200;
/// Stream bytes per wire byte (QUIC, UDP and IP headers take the rest).
const PAYLOAD_SHARE: f64 = 0.95;

/// A token bucket for stream bytes.
#[derive(Debug, Default)]
pub struct RateGate {
    tokens: f64,
    last: Option<Instant>,
}

impl RateGate {
    /// A gate with nothing banked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stream bytes that may be written now when the wire rate is `bps` (None: no limit).
    pub fn available(&mut self, now: Instant, bps: Option<u64>) -> usize {
        let Some(bps) = bps else {
            // No limit: nothing banked, no debt, for when a limit comes.
            self.last = Some(now);
            self.tokens = 0.0;
            return usize::MAX;
        };
        let rate = bps as f64 / 8.0 * PAYLOAD_SHARE;
        let cap = (rate * BURST.as_secs_f64()).max(MIN_BURST);
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + rate * dt).min(cap);
        }
        self.last = Some(now);
        // Whole packets only: a trickle of tiny writes would each leave as its own small
        // packet, mostly headers (seen: 78-byte packets on average, 6 % of them payload).
        if self.tokens < MIN_WRITE as f64 {
            return 0;
        }
        self.tokens as usize
    }

    /// `n` bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// How long until `want` bytes are available at `bps` (zero when they are now).
    pub fn wait(&self, want: usize, bps: Option<u64>) -> Duration {
        let Some(bps) = bps else {
            return Duration::ZERO;
        };
        let rate = (bps as f64 / 8.0 * PAYLOAD_SHARE).max(1.0);
        let missing = want as f64 - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_through_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut g = RateGate::new();
        let mut sent = 0usize;
        let mut now = t0;
        g.available(now, Some(1_000_000));
        while now < t0 + Duration::from_secs(10) {
            let n = g.available(now, Some(1_000_000)).min(4000);
            assert!(n == 0 || n >= MIN_WRITE, "{n}");
            g.consume(n);
            sent += n;
            now += if n == 0 {
                g.wait(1200, Some(1_000_000))
                    .max(Duration::from_micros(100))
            } else {
                Duration::ZERO
            };
        }
        let bps = sent as f64 * 8.0 / 10.0;
        assert!((930_000.0..960_000.0).contains(&bps), "{bps}");
        assert_eq!(g.available(now, None), usize::MAX);
        assert_eq!(g.wait(1 << 20, None), Duration::ZERO);
    }
}
