//! The relay's settings.

use std::net::SocketAddr;
use std::time::Duration;

/// Relay settings. [`RelayConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address: QUIC control plane, data path and first reflection port.
    pub listen: SocketAddr,
    /// TCP+TLS fallback address (`None`: disabled).
    pub tcp_listen: Option<SocketAddr>,
    /// Second UDP reflection address (`None`: disabled).
    pub reflect_listen: Option<SocketAddr>,
    /// Prometheus metrics address (`None`: disabled).
    pub metrics_listen: Option<SocketAddr>,
    /// Shared access token required in `Hello`.
    pub token: Option<String>,
    /// Most sessions at once.
    pub max_peers: usize,
    /// Relayed packets per second per peer.
    pub packet_rate: f64,
    /// Relayed bytes per second per peer.
    pub byte_rate: f64,
    /// Control frames (signals, renames, pings) per second per peer; a peer above twice
    /// this burst is disconnected as abusive.
    pub control_rate: f64,
    /// Signals per second per peer; above it, signals fail with `RateLimited` (the session
    /// stays up).
    pub signal_rate: f64,
    /// Time allowed from connection to `Hello`.
    pub handshake_timeout: Duration,
    /// A session with no control frame for this long is closed (clients ping every 10 s).
    pub idle_timeout: Duration,
    /// QUIC handshakes in progress at once (bounds half-open connections).
    pub max_incoming: usize,
    /// A peer's name change reaches the others at most this often (renames in between are
    /// coalesced; the last one goes out when the interval ends).
    pub rename_every: Duration,
    /// Most sessions from one source IP address (one client cannot take every slot; a
    /// carrier-grade NAT still fits many users).
    pub max_per_address: usize,
    /// QUIC handshakes in progress above which new ones must first prove their address
    /// (a stateless QUIC Retry); `0`: always.
    pub retry_above: usize,
}

impl RelayConfig {
    /// Defaults for a relay on `listen`: TCP fallback on the same port number, second
    /// reflection port one above, no metrics.
    pub fn new(listen: SocketAddr) -> Self {
        let mut reflect = listen;
        reflect.set_port(if listen.port() == 0 {
            0
        } else {
            listen.port().wrapping_add(1)
        });
        Self {
            listen,
            tcp_listen: Some(listen),
            reflect_listen: Some(reflect),
            metrics_listen: None,
            token: None,
            max_peers: 50_000,
            // ~100 Mbit/s of 1200-byte packets per peer, more than one HD call needs.
            packet_rate: 10_000.0,
            byte_rate: 12.5e6,
            control_rate: 50.0,
            // Call setup and path coordination need a handful; 20/s is generous.
            signal_rate: 20.0,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(40),
            max_incoming: 4096,
            rename_every: Duration::from_secs(1),
            max_per_address: 256,
            retry_above: 64,
        }
    }
}
