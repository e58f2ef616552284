//! Endpoint settings: the relay to use, LAN-only mode, what to bind.

use std::net::SocketAddr;

use p2pcall_proto::PeerId;
use p2pcall_transport::Identity;

/// How to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The relay's address (UDP and TCP share the port number).
    pub addr: SocketAddr,
    /// TCP port of the fallback, if not the same as UDP.
    pub tcp_addr: Option<SocketAddr>,
    /// Access token, if the relay needs one.
    pub token: Option<String>,
    /// Receive presence (snapshot plus incremental events).
    pub presence: bool,
    /// Skip UDP and use the TCP+TLS fallback at once (for networks known to block UDP).
    pub force_tcp: bool,
    /// Expected relay key; any key is accepted when `None`.
    pub relay_key: Option<PeerId>,
    /// Other relays of the same network (a cluster): at each (re)connect every known relay
    /// is probed at once and the first to answer (the lowest RTT) is used. The relays of
    /// the cluster the relay lists are added to these.
    pub alternates: Vec<RelayCandidate>,
    /// Park the relay session after this long with nothing on it (`None`: never): the
    /// relay keeps the registration without a connection (a few hundred bytes there instead
    /// of a QUIC connection's tens of KiB), relayed packets still arrive, and the session
    /// comes back by itself when there is something to send or the relay has something
    /// for us (a signal: within a round trip; presence changes: within seconds).
    pub park_after: Option<std::time::Duration>,
}

/// How long a relay session waits idle before it parks, by default.
pub const PARK_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Another relay of the same network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayCandidate {
    /// Where it is, `host:port`.
    pub addr: String,
    /// Its key, if known (from the cluster's list, a ticket, the settings); `None`: any.
    pub key: Option<PeerId>,
}

impl RelayConfig {
    /// The relay at `addr` over UDP (TCP fallback on the same port), no token, presence on,
    /// any relay key, parking after [`PARK_AFTER`].
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            tcp_addr: None,
            token: None,
            presence: true,
            force_tcp: false,
            relay_key: None,
            alternates: Vec::new(),
            park_after: Some(PARK_AFTER),
        }
    }
}

/// Endpoint settings.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Our key.
    pub identity: Identity,
    /// Display name sent to the relay and to peers.
    pub name: String,
    /// UDP bind address; `[::]:0` is dual-stack on any port.
    pub bind: SocketAddr,
    /// Relay to register with.
    pub relay: Option<RelayConfig>,
    /// Look for direct paths (announce candidates, answer probes). Off keeps every
    /// connection on the relay (privacy: peers do not learn our addresses; benchmarks).
    pub direct_paths: bool,
    /// Ask the gateway for a UDP port mapping (UPnP-IGD, NAT-PMP, PCP) and offer the mapped
    /// address as a candidate. No gateway, or one that refuses, is normal.
    pub port_mapping: bool,
    /// LAN-only mode: find peers by mDNS on the local network, with no relay (`relay` must
    /// be `None`).
    pub lan: Option<LanConfig>,
}

/// LAN-only mode settings.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// Interfaces to announce and browse on, by name; empty means every interface except
    /// loopback. Name `lo` to include loopback (two endpoints on one machine, tests).
    pub interfaces: Vec<String>,
    /// mDNS port (5353 on a real network).
    pub mdns_port: u16,
}

impl Default for LanConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mdns_port: mdns_sd::MDNS_PORT,
        }
    }
}
