//! QUIC's congestion controller, made to live with a call's own rate control.
//!
//! A peer connection carries real-time media (datagrams, rate set by the call's delay-based
//! estimator) and bulk streams (file transfers). QUIC's controller (BBR) is right for bulk,
//! but during a call it would control media a second time: a burst of bottleneck losses (a
//! capacity drop) collapses its window to a couple of packets, and media that the call's
//! estimator already sized to the path waits behind it — in the RFC 8867 simulation the
//! pacer backed up for 1.5 s after the 2.5 → 0.6 Mbit/s step while the link sat idle.
//!
//! [`MediaAware`] wraps BBR and keeps its window at least at a floor the call sets (twice
//! its target × RTT): the call's estimator is the controller for media, BBR stays the
//! controller for bulk, which the call gates to what it leaves free. With no call the
//! floor is 0 and the window is BBR's own.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};

/// The window floor of one connection, in bytes (shared by the controller and the call).
#[derive(Debug, Default, Clone)]
pub struct WindowFloor(Arc<AtomicU64>);

impl WindowFloor {
    /// Sets the floor: the window never goes below `bytes`.
    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    /// The floor for a media rate of `bps` over a path with round-trip time `rtt`: two
    /// bandwidth-delay products (never less than 50 ms worth).
    pub fn set_for_rate(&self, bps: u64, rtt: std::time::Duration) {
        let rtt = rtt.max(std::time::Duration::from_millis(50)).as_secs_f64();
        self.set((bps as f64 / 8.0 * rtt * 2.0) as u64);
    }

    /// The current floor, bytes.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The floor of the connection whose controller is `c` (None: not a [`MediaAware`]).
    pub fn of(c: &dyn Controller) -> Option<WindowFloor> {
        c.clone_box()
            .into_any()
            .downcast::<MediaAware>()
            .ok()
            .map(|m| m.floor.clone())
    }
}

/// BBR with a window floor a call sets.
pub struct MediaAware {
    inner: Box<dyn Controller>,
    floor: WindowFloor,
}

impl std::fmt::Debug for MediaAware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaAware")
            .field("window", &self.inner.window())
            .field("floor", &self.floor.get())
            .finish()
    }
}

impl Controller for MediaAware {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor.get())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            floor: self.floor.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`MediaAware`] BBR for each connection.
#[derive(Debug, Default)]
pub struct MediaAwareConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for MediaAwareConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(MediaAware {
            inner: self.bbr.clone().build(now, current_mtu),
            floor: WindowFloor::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_holds_the_window_up_and_is_shared_by_clones() {
        let f = Arc::new(MediaAwareConfig::default());
        let mut c = f.build(Instant::now(), 1200);
        let initial = c.window();
        // Persistent congestion collapses BBR's window…
        c.on_congestion_event(Instant::now(), Instant::now(), true, 100_000);
        let collapsed = c.window();
        assert!(collapsed <= initial, "{collapsed} vs {initial}");
        // …a floor set through any clone holds it up; 0 gives BBR its own window back.
        let floor = WindowFloor::of(c.as_ref()).unwrap();
        floor.set_for_rate(2_000_000, std::time::Duration::from_millis(100));
        assert_eq!(c.window(), 50_000.max(collapsed));
        floor.set(0);
        assert_eq!(c.window(), collapsed);
    }
}
