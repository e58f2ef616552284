//! The share of a peer connection that file transfers may use while a call runs on it.
//!
//! The call's driver sets the allowance from its bandwidth estimate (what the estimate
//! leaves after media, [`MediaSession::bulk_allowance_bps`]); transfer writers take bytes
//! from a token bucket at that rate ([`p2pcall_media::gate::RateGate`]). Without a call
//! there is no limit and transfers run at QUIC's (BBR's) pace. The call learns from the
//! writer count that bulk shares the connection, so its estimate may grow past what media
//! alone needs.
//!
//! [`MediaSession::bulk_allowance_bps`]: p2pcall_media::session::MediaSession::bulk_allowance_bps

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use p2pcall_media::gate::RateGate;
use p2pcall_proto::PeerId;

/// Most bytes one gated write takes at once.
pub const GATED_WRITE: usize = 16 * 1024;

/// The gate of one peer connection.
#[derive(Debug, Default)]
pub struct BulkGate {
    state: Mutex<(RateGate, Option<u64>)>,
    writers: AtomicUsize,
}

impl BulkGate {
    /// Sets the allowance, bit/s (None: no limit).
    pub fn set_allowance(&self, bps: Option<u64>) {
        {
            let mut s = self.state.lock();
            s.1 = bps;
        }
    }

    /// Transfers writing through this gate now.
    pub fn writers(&self) -> usize {
        self.writers.load(Ordering::Relaxed)
    }

    /// Counts a writer while the guard lives.
    pub fn writer(self: &Arc<Self>) -> WriterGuard {
        self.writers.fetch_add(1, Ordering::Relaxed);
        WriterGuard(self.clone())
    }

    /// Waits until up to `want` bytes may be written; returns how many (≥ 1).
    pub async fn acquire(&self, want: usize) -> usize {
        let want = want.max(1);
        loop {
            let wait = {
                let mut s = self.state.lock();
                let (gate, bps) = &mut *s;
                let bps = *bps;
                // tokio's clock (it can be paused in tests).
                let n = gate
                    .available(tokio::time::Instant::now().into_std(), bps)
                    .min(want);
                if n > 0 {
                    if bps.is_some() {
                        gate.consume(n);
                    }
                    return n;
                }
                gate.wait(want.min(GATED_WRITE), bps)
            };
            tokio::time::sleep(wait.clamp(Duration::from_millis(1), Duration::from_millis(50)))
                .await;
        }
    }
}

/// Keeps a writer counted.
#[derive(Debug)]
pub struct WriterGuard(Arc<BulkGate>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gates of every peer.
#[derive(Debug, Default)]
pub(crate) struct Gates(Mutex<HashMap<PeerId, Arc<BulkGate>>>);

impl Gates {
    /// The gate of `peer` (created on first use).
    pub(crate) fn of(&self, peer: PeerId) -> Arc<BulkGate> {
        self.0.lock().entry(peer).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_follow_the_allowance_and_none_means_no_limit() {
        let g = Arc::new(BulkGate::default());
        assert_eq!(g.acquire(1 << 20).await, 1 << 20);
        g.set_allowance(Some(800_000)); // 100 kB/s
        let _w = g.writer();
        assert_eq!(g.writers(), 1);
        let t0 = tokio::time::Instant::now();
        let mut got = 0;
        while got < 200_000 {
            got += g.acquire(GATED_WRITE).await;
        }
        let took = t0.elapsed();
        // 200 kB at ~95 kB/s of stream bytes: about two seconds of (virtual) time.
        assert!(
            (Duration::from_millis(1900)..Duration::from_millis(2400)).contains(&took),
            "{took:?}"
        );
        drop(_w);
        assert_eq!(g.writers(), 0);
    }
}
