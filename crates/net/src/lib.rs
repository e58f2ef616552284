//! The peer endpoint: one UDP socket, one quinn endpoint, a relay client, and end-to-end
//! encrypted peer-to-peer connections that switch between the relay and direct paths without
//! reconnecting.
//!
//! Data flow of a peer-to-peer packet:
//!
//! ```text
//! quinn Connection --(virtual addr 240.x.y.z:7)--> MagicSocket::try_send
//!     route.path == Relay     -> RelaySend header -> relay UDP port (or TCP+TLS Data frame)
//!     route.path == Direct(a) -> straight to a
//! relay/direct packet -> MagicSocket::poll_recv -> source rewritten to the virtual addr -> quinn
//! ```
//!
//! Each connection has a task running its sans-IO [`p2pcall_nat::PathManager`]: it exchanges
//! candidates over the connection's control stream, sends and answers MAC-authenticated
//! probes, and sets the route's path.
//!
//! In LAN-only mode there is no relay: presence comes from mDNS (`lan`), and a peer's
//! announced address stands in for the relay as its path of last resort.
#![forbid(unsafe_code)]

mod config;
mod connection;
mod endpoint;
mod error;
mod event;
mod inner;
mod lan;
mod paths;
mod relay_client;
mod relays;
mod roster;
pub mod socket;

pub use config::{EndpointConfig, LanConfig, PARK_AFTER, RelayCandidate, RelayConfig};
pub use connection::{ConnectionStats, PING_TIMEOUT, PeerConnection};
pub use endpoint::Endpoint;
pub use error::NetError;
pub use event::{Event, PresenceEvent, RelayTransport};
pub use lan::LAN_SETTLE;
pub use p2pcall_nat::Path;
pub use p2pcall_transport::Identity;
