use p2pcall_proto::PeerId;
use p2pcall_proto::relay::RefuseReason;

/// Errors of the peer endpoint.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("could not bind the UDP socket on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS or QUIC configuration failed.
    #[error(transparent)]
    Tls(#[from] p2pcall_transport::TlsError),
    /// quinn refused to start the connection.
    #[error("could not start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer presented a key other than the expected one.
    #[error(
        "someone else answered for {expected}: it proved the key {}, not that peer's. The relay or the network may be routing you to an impostor; nothing was sent to it",
        got.map_or_else(|| "(none)".to_string(), |k| k.to_hex())
    )]
    PeerKeyMismatch {
        /// Key we dialed or the relay vouched for.
        expected: PeerId,
        /// Key the TLS handshake proved (if any).
        got: Option<PeerId>,
    },
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// Too many peers are tracked by this endpoint.
    #[error(
        "too many peers: the endpoint tracks at most {} peers",
        crate::socket::MAX_ROUTES
    )]
    TooManyPeers,
    /// The peer control stream broke or carried invalid frames.
    #[error("peer control stream: {0}")]
    ControlStream(String),
    /// The relay refused the session.
    #[error("the relay refused us: {reason} ({detail})")]
    Refused {
        /// Cause.
        reason: RefuseReason,
        /// Relay's detail text.
        detail: String,
    },
    /// No relay connection is available.
    #[error("not connected to a relay")]
    NoRelay,
    /// LAN-only mode (mDNS) could not start.
    #[error(
        "LAN discovery (mDNS) failed: {0}; check that the network allows multicast, or use a relay"
    )]
    Lan(String),
    /// Both a relay and LAN-only mode were asked for.
    #[error("LAN-only mode runs without a relay: configure one or the other")]
    LanAndRelay,
    /// The endpoint is shutting down.
    #[error("the endpoint is closed")]
    Closed,
    /// Sending a datagram failed.
    #[error("datagram: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
}
