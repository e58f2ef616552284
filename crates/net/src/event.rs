//! What an endpoint reports, in order: relay session, presence, signals, connections, paths.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::connection::PeerConnection;
use bytes::Bytes;
use p2pcall_nat::Path;
use p2pcall_proto::PeerId;
use p2pcall_proto::relay::{PeerInfo, RefuseReason, SignalFailure};

/// Which transport the relay session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTransport {
    /// QUIC control connection and the UDP data path.
    Udp,
    /// TCP+TLS fallback carrying control and data.
    Tcp,
}

/// Something that happened, in order.
#[derive(Debug)]
pub enum Event {
    /// Registered with the relay.
    RelayConnected {
        /// Our address as the relay sees it.
        observed: SocketAddr,
        /// Transport in use.
        transport: RelayTransport,
        /// The relay's key.
        relay: PeerId,
        /// Its address.
        addr: SocketAddr,
        /// It is the configured relay (not another of its cluster).
        primary: bool,
    },
    /// The relay we are registered with is one of a cluster: these are its relays (itself
    /// first), reported when the list changes. Any of them can stand in for it.
    RelaysListed(Vec<p2pcall_proto::relay::RelayEntry>),
    /// The relay session ended; it is retried after `retry_in`.
    RelayDisconnected {
        /// Why.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// Nothing listens at the relay's address: UDP answered "port unreachable" and TCP
    /// "connection refused" (wrong address or port, or the relay is not running). Attempts
    /// go on (a `RelayDisconnected` follows); one-shot commands give up at once.
    RelayUnreachable {
        /// The address tried.
        addr: SocketAddr,
        /// What each transport answered.
        detail: String,
    },
    /// The relay refused us for a reason retrying cannot fix; no more attempts.
    RelayRefused {
        /// Cause.
        reason: RefuseReason,
        /// Detail.
        detail: String,
    },
    /// The relay at `addr` presented another key than the one pinned for it (a different
    /// server answers there, or its operator changed its key): nothing was sent to it, and
    /// no more attempts are made.
    RelayKeyMismatch {
        /// The address.
        addr: SocketAddr,
        /// The key pinned for it.
        pinned: PeerId,
        /// The key it presented.
        presented: PeerId,
    },
    /// Presence change.
    Presence(PresenceEvent),
    /// A signaling message from another peer (authenticated by the relay).
    Signal {
        /// Sender.
        from: PeerId,
        /// Opaque payload.
        payload: Bytes,
    },
    /// A signal we sent could not be delivered.
    SignalFailed {
        /// Recipient.
        to: PeerId,
        /// Why.
        reason: SignalFailure,
    },
    /// Another peer connected to us.
    Incoming(PeerConnection),
    /// A connection's path changed.
    PathChanged {
        /// The peer.
        peer: PeerId,
        /// New path.
        path: Path,
        /// RTT of the new direct path, if measured.
        rtt: Option<Duration>,
        /// When the change happened.
        at: Instant,
    },
    /// A connection ended.
    ConnectionClosed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
}

/// Presence changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The complete list (after registering, or after a resync).
    Snapshot(Vec<PeerInfo>),
    /// A peer came online.
    Joined(PeerInfo),
    /// A peer went offline.
    Left(PeerId),
    /// A peer changed its name.
    Updated(PeerInfo),
}
