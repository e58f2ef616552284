//! Relay counters, rendered in the Prometheus text format, and the small HTTP endpoint that
//! serves them (`/metrics`, `/healthz`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Why a relayed packet or frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session tag matched no session.
    UnknownSession,
    /// The tag matched but the packet came from another address.
    AddressMismatch,
    /// The destination is not online.
    UnknownDestination,
    /// The sender exceeded its packet or byte rate.
    RateLimited,
    /// The packet or frame exceeded the size limit.
    Oversize,
    /// The destination's queue (TCP fallback) was full.
    QueueFull,
    /// The kernel refused to send it.
    SendError,
    /// The packet was not any p2pcall or QUIC packet.
    Malformed,
    /// A packet from another relay carried a wrong hop token.
    BadHopToken,
    /// A packet from another relay named a session that is gone.
    UnknownRoute,
}

const DROPS: [(DropReason, &str); 10] = [
    (DropReason::UnknownSession, "unknown_session"),
    (DropReason::AddressMismatch, "address_mismatch"),
    (DropReason::UnknownDestination, "unknown_destination"),
    (DropReason::RateLimited, "rate_limited"),
    (DropReason::Oversize, "oversize"),
    (DropReason::QueueFull, "queue_full"),
    (DropReason::SendError, "send_error"),
    (DropReason::Malformed, "malformed"),
    (DropReason::BadHopToken, "bad_hop_token"),
    (DropReason::UnknownRoute, "unknown_route"),
];

/// Why a session was refused or closed: the session machine's causes (a shutdown is not
/// counted).
pub use p2pcall_proto::relay::server::CloseCause as Close;

const CLOSES: [(Close, &str); 8] = [
    (Close::BadToken, "bad_token"),
    (Close::ServerFull, "server_full"),
    (Close::Replaced, "replaced"),
    (Close::Protocol, "protocol"),
    (Close::RateLimited, "rate_limited"),
    (Close::Timeout, "timeout"),
    (Close::Disconnected, "disconnected"),
    (Close::Parked, "parked"),
];

/// All relay counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sessions registered now.
    pub peers_online: AtomicU64,
    /// Sessions registered since start.
    pub sessions_total: AtomicU64,
    /// Sessions parked now (registered, no connection).
    pub peers_parked: AtomicU64,
    /// Sessions parked since start.
    pub parks: AtomicU64,
    /// Parked sessions their peer came back to since start.
    pub unparks: AtomicU64,
    /// Wake beacons sent to parked peers.
    pub wakes: AtomicU64,
    /// Packets forwarded.
    pub packets_relayed: AtomicU64,
    /// Payload bytes forwarded.
    pub bytes_relayed: AtomicU64,
    /// Signals forwarded.
    pub signals_forwarded: AtomicU64,
    /// Signals not delivered (offline, rate, queue).
    pub signals_failed: AtomicU64,
    /// Presence events queued to subscribers.
    pub presence_events: AtomicU64,
    /// Presence snapshots sent because a subscriber's queue overflowed (or on login).
    pub presence_snapshots: AtomicU64,
    /// Reflection requests answered.
    pub reflections: AtomicU64,
    /// QUIC handshakes in progress.
    pub handshakes: AtomicU64,
    /// QUIC Retry packets sent (handshakes asked to prove their address first).
    pub retries: AtomicU64,
    /// 1 when the relay is configured to join a cluster.
    pub cluster_configured: AtomicU64,
    /// 1 while its NATS connection is up.
    pub cluster_connected: AtomicU64,
    /// Other relays of the cluster heard from recently.
    pub cluster_members: AtomicU64,
    /// Peers registered with the other relays of the cluster.
    pub cluster_peers: AtomicU64,
    /// Packets sent on to another relay of the cluster.
    pub hops_out: AtomicU64,
    /// Packets from another relay of the cluster delivered here.
    pub hops_in: AtomicU64,
    /// Messages published to the cluster (presence changes, signals, snapshots).
    pub cluster_published: AtomicU64,
    /// Messages received from the cluster.
    pub cluster_received: AtomicU64,
    drops: [AtomicU64; 10],
    closes: [AtomicU64; 8],
}

impl Metrics {
    /// Counts a drop.
    pub fn dropped(&self, why: DropReason) {
        if let Some(i) = DROPS.iter().position(|(d, _)| *d == why) {
            self.drops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refused or closed session (a shutdown is not counted).
    pub fn close(&self, why: Close) {
        if let Some(i) = CLOSES.iter().position(|(c, _)| *c == why) {
            self.closes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops counted for `why`.
    pub fn drops(&self, why: DropReason) -> u64 {
        DROPS
            .iter()
            .position(|(d, _)| *d == why)
            .map_or(0, |i| self.drops[i].load(Ordering::Relaxed))
    }

    /// Closes counted for `why`.
    pub fn closes(&self, why: Close) -> u64 {
        CLOSES
            .iter()
            .position(|(c, _)| *c == why)
            .map_or(0, |i| self.closes[i].load(Ordering::Relaxed))
    }

    /// The metrics with one value each: name, type, help, value, shown.
    #[allow(clippy::type_complexity)]
    fn plain(&self) -> [(&'static str, &'static str, &'static str, &AtomicU64, bool); 15] {
        [
            (
                "p2pcall_relay_peers_online",
                "gauge",
                "Sessions registered now.",
                &self.peers_online,
                true,
            ),
            (
                "p2pcall_relay_sessions_total",
                "counter",
                "Sessions registered since start.",
                &self.sessions_total,
                true,
            ),
            (
                "p2pcall_relay_peers_parked",
                "gauge",
                "Sessions parked now (registered without a connection; counted in peers_online).",
                &self.peers_parked,
                true,
            ),
            (
                "p2pcall_relay_parks_total",
                "counter",
                "Sessions parked since start.",
                &self.parks,
                true,
            ),
            (
                "p2pcall_relay_unparks_total",
                "counter",
                "Parked sessions their peer came back to.",
                &self.unparks,
                true,
            ),
            (
                "p2pcall_relay_wakes_total",
                "counter",
                "Wake beacons sent to parked peers (a signal or presence waited for them).",
                &self.wakes,
                true,
            ),
            (
                "p2pcall_relay_packets_relayed_total",
                "counter",
                "Peer-to-peer packets forwarded.",
                &self.packets_relayed,
                true,
            ),
            (
                "p2pcall_relay_bytes_relayed_total",
                "counter",
                "Peer-to-peer payload bytes forwarded.",
                &self.bytes_relayed,
                true,
            ),
            (
                "p2pcall_relay_signals_forwarded_total",
                "counter",
                "Signaling messages forwarded.",
                &self.signals_forwarded,
                true,
            ),
            (
                "p2pcall_relay_signals_failed_total",
                "counter",
                "Signaling messages not delivered.",
                &self.signals_failed,
                true,
            ),
            (
                "p2pcall_relay_handshakes",
                "gauge",
                "QUIC handshakes in progress.",
                &self.handshakes,
                true,
            ),
            (
                "p2pcall_relay_retries_total",
                "counter",
                "QUIC Retry packets sent because handshakes spiked.",
                &self.retries,
                true,
            ),
            (
                "p2pcall_relay_presence_events_total",
                "counter",
                "Incremental presence events queued.",
                &self.presence_events,
                true,
            ),
            (
                "p2pcall_relay_presence_snapshots_total",
                "counter",
                "Full presence snapshots sent.",
                &self.presence_snapshots,
                true,
            ),
            (
                "p2pcall_relay_reflections_total",
                "counter",
                "Address reflection requests answered.",
                &self.reflections,
                true,
            ),
        ]
    }

    /// The cluster's metrics, the same way (shown when the relay is configured to join one).
    #[allow(clippy::type_complexity)]
    fn cluster(&self) -> [(&'static str, &'static str, &'static str, &AtomicU64, bool); 7] {
        let cluster = self.cluster_configured.load(Ordering::Relaxed) == 1;
        [
            (
                "p2pcall_relay_cluster_connected",
                "gauge",
                "1 while the relay's NATS connection is up (0: degraded, serving its own peers).",
                &self.cluster_connected,
                cluster,
            ),
            (
                "p2pcall_relay_cluster_members",
                "gauge",
                "Other relays of the cluster heard from in the last 3 s.",
                &self.cluster_members,
                cluster,
            ),
            (
                "p2pcall_relay_cluster_peers",
                "gauge",
                "Peers registered with the other relays of the cluster.",
                &self.cluster_peers,
                cluster,
            ),
            (
                "p2pcall_relay_hops_out_total",
                "counter",
                "Packets sent on to another relay of the cluster (their recipient is there).",
                &self.hops_out,
                cluster,
            ),
            (
                "p2pcall_relay_hops_in_total",
                "counter",
                "Packets from another relay of the cluster delivered to a peer here.",
                &self.hops_in,
                cluster,
            ),
            (
                "p2pcall_relay_cluster_published_total",
                "counter",
                "NATS messages published (presence changes, inbox messages, heartbeats).",
                &self.cluster_published,
                cluster,
            ),
            (
                "p2pcall_relay_cluster_received_total",
                "counter",
                "NATS messages received.",
                &self.cluster_received,
                cluster,
            ),
        ]
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let (plain, cluster) = (self.plain(), self.cluster());
        for (name, kind, help, v, shown) in plain.into_iter().chain(cluster) {
            if shown {
                let _ = writeln!(
                    s,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP p2pcall_relay_drops_total Packets or frames dropped, by reason.\n# TYPE p2pcall_relay_drops_total counter"
        );
        for (i, (_, name)) in DROPS.iter().enumerate() {
            let _ = writeln!(
                s,
                "p2pcall_relay_drops_total{{reason=\"{name}\"}} {}",
                self.drops[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP p2pcall_relay_sessions_closed_total Sessions refused or closed, by reason.\n# TYPE p2pcall_relay_sessions_closed_total counter"
        );
        for (i, (_, name)) in CLOSES.iter().enumerate() {
            let _ = writeln!(
                s,
                "p2pcall_relay_sessions_closed_total{{reason=\"{name}\"}} {}",
                self.closes[i].load(Ordering::Relaxed)
            );
        }
        s
    }
}

/// `/healthz`: "ok", or what is degraded (the relay still serves its own peers: 200 all
/// the same, so that a load balancer keeps sending them).
fn health(metrics: &Metrics) -> String {
    if metrics.cluster_configured.load(Ordering::Relaxed) == 1
        && metrics.cluster_connected.load(Ordering::Relaxed) == 0
    {
        "degraded: the cluster (NATS) is unreachable; serving the peers registered here\n".into()
    } else {
        "ok\n".into()
    }
}

/// Longest HTTP request head we read.
const MAX_REQUEST: usize = 8 * 1024;
/// Slow clients are cut off after this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent metrics connections.
const MAX_HTTP_CONNECTIONS: usize = 64;

/// Serves `/metrics` and `/healthz` until cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // overloaded: drop the connection
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(HTTP_TIMEOUT, answer(stream, &metrics)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        (b"GET", b"/healthz") => ("200 OK", "text/plain", health(metrics)),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
