//! The p2pcall relay: presence, signaling, address reflection and an opaque packet relay.
//!
//! It authenticates every peer by its key (TLS 1.3 raw public keys) and forwards only
//! end-to-end encrypted QUIC packets between them: it holds no key that could decrypt them.
//!
//! ```text
//! UDP :7700   QUIC control connections (ALPN p2pcall-relay/1)  -> session tasks
//!             RelaySend packets  -> rewritten to RelayRecv -> recipient (in the receive path)
//!             ReflectReq         -> ReflectResp (observed address)
//! UDP :7701   ReflectReq only (second port: tells endpoint-dependent NAT mappings apart)
//! TCP :7700   TLS 1.3, same control protocol plus Data frames (fallback when UDP is blocked)
//! HTTP        /metrics (Prometheus text), /healthz
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cluster;
mod config;
pub mod metrics;
mod parking;
mod registry;
mod session;
mod socket;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::relay::RefuseReason;
use p2pcall_transport::Identity;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{RelayConfig, RelayFile, RelayFileError};
pub use metrics::Metrics;
pub use p2pcall_proto::limits::TokenBucket;
use registry::Sessions;
use socket::RelaySocket;
use state::Shared;

/// Errors starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A listening socket could not be opened.
    #[error("could not listen on {what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] p2pcall_transport::TlsError),
}

/// A running relay.
pub struct Relay {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
    /// Bound UDP address.
    pub udp_addr: SocketAddr,
    /// Bound TCP fallback address.
    pub tcp_addr: Option<SocketAddr>,
    /// Bound second reflection address.
    pub reflect_addr: Option<SocketAddr>,
    /// Bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// The relay's own key.
    pub id: PeerId,
    cluster: Option<Arc<cluster::Cluster>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("udp_addr", &self.udp_addr)
            .finish_non_exhaustive()
    }
}

/// Kernel socket buffers requested for relay sockets.
const SOCKET_BUFFER: usize = 8 << 20;

fn bind_udp(addr: SocketAddr, what: &'static str) -> Result<std::net::UdpSocket, RelayError> {
    p2pcall_transport::udp::bind(addr, SOCKET_BUFFER).map_err(|source| RelayError::Bind {
        what,
        addr,
        source,
    })
}

/// The relay's UDP port.
struct UdpPort {
    /// Its address.
    addr: SocketAddr,
    /// quinn's socket.
    quinns: RelaySocket,
    /// `cfg.udp_sockets - 1` more on the same address (their tasks start with the relay).
    more: Vec<socket::Port>,
    /// Where they queue QUIC packets for quinn's.
    others: tokio::sync::mpsc::Sender<socket::Received>,
}

/// Binds the relay's UDP port.
fn bind_port(
    cfg: &RelayConfig,
    sessions: &Arc<RwLock<Sessions>>,
    metrics: &Arc<Metrics>,
) -> Result<UdpPort, RelayError> {
    let err = |addr| {
        move |source| RelayError::Bind {
            what: "UDP",
            addr,
            source,
        }
    };
    let port = |std| socket::Port::new(std, sessions.clone(), metrics.clone());
    let mut all = if cfg.udp_sockets > 1 {
        p2pcall_transport::udp::bind_shared(cfg.listen, SOCKET_BUFFER, cfg.udp_sockets)
    } else {
        p2pcall_transport::udp::bind(cfg.listen, SOCKET_BUFFER).map(|s| vec![s])
    }
    .map_err(err(cfg.listen))?;
    let main = all.remove(0);
    let addr = main.local_addr().map_err(err(cfg.listen))?;
    let more = (all.into_iter())
        .map(|std| port(std).map_err(err(addr)))
        .collect::<Result<Vec<_>, _>>()?;
    let (quinns, others) = RelaySocket::new(port(main).map_err(err(addr))?);
    Ok(UdpPort {
        addr,
        quinns,
        more,
        others,
    })
}

/// The relay's QUIC endpoint on `socket`: one bidirectional stream per session.
fn quic_endpoint(
    identity: &Identity,
    cfg: &RelayConfig,
    socket: Arc<RelaySocket>,
) -> Result<quinn::Endpoint, RelayError> {
    let mut transport =
        p2pcall_transport::transport_config(Duration::from_secs(15), cfg.idle_timeout);
    // A session uses one bidirectional stream. quinn reserves per-stream state for every
    // stream a peer may open (~7 KiB per connection at the defaults of 100 + 100).
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let mut server =
        p2pcall_transport::quinn_server_config(identity, p2pcall_transport::ALPN_RELAY, transport)?;
    server.max_incoming(cfg.max_incoming);
    quinn::Endpoint::new_with_abstract_socket(
        p2pcall_transport::endpoint_config(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| RelayError::Bind {
        what: "UDP",
        addr: cfg.listen,
        source,
    })
}

/// The UDP port and the TCP fallback's listener, on the UDP port's number unless configured
/// otherwise. With a port chosen by the system (0), a number whose TCP side is taken (by
/// anything: an outgoing connection's port too) is given back and another one tried.
async fn bind_udp_and_tcp(
    cfg: &RelayConfig,
    sessions: &Arc<RwLock<Sessions>>,
    metrics: &Arc<Metrics>,
) -> Result<(UdpPort, Option<tokio::net::TcpListener>), RelayError> {
    let mut attempts = 0;
    loop {
        let port = bind_port(cfg, sessions, metrics)?;
        let Some(mut a) = cfg.tcp_listen else {
            return Ok((port, None));
        };
        let same = a.port() == 0 && a.ip() == cfg.listen.ip();
        if same {
            a.set_port(port.addr.port());
        }
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => return Ok((port, Some(l))),
            Err(e)
                if same
                    && cfg.listen.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < 16 =>
            {
                attempts += 1;
                tracing::debug!(
                    port = a.port(),
                    "TCP side of the chosen port is taken: another"
                );
            }
            Err(source) => {
                return Err(RelayError::Bind {
                    what: "TCP",
                    addr: a,
                    source,
                });
            }
        }
    }
}

impl Relay {
    /// Binds every listener and starts serving.
    pub async fn start(identity: &Identity, cfg: RelayConfig) -> Result<Self, RelayError> {
        let fds = p2pcall_transport::udp::raise_fd_limit();
        tracing::debug!("open-file limit: {fds}");
        let metrics = Arc::new(Metrics::default());
        let mut sessions = Sessions::default();
        sessions.max_per_address = cfg.max_per_address;
        let sessions = Arc::new(RwLock::new(sessions));
        let (
            UdpPort {
                addr: udp_addr,
                quinns,
                more: more_sockets,
                others,
            },
            tcp,
        ) = bind_udp_and_tcp(&cfg, &sessions, &metrics).await?;
        let socket = Arc::new(quinns);
        let endpoint = quic_endpoint(identity, &cfg, socket.clone())?;
        let reflect = match cfg.reflect_listen {
            Some(a) => Some(
                tokio::net::UdpSocket::from_std(bind_udp(a, "reflection UDP")?).map_err(
                    |source| RelayError::Bind {
                        what: "reflection UDP",
                        addr: a,
                        source,
                    },
                )?,
            ),
            None => None,
        };
        let metrics_listener =
            match cfg.metrics_listen {
                Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|source| {
                    RelayError::Bind {
                        what: "metrics TCP",
                        addr: a,
                        source,
                    }
                })?),
                None => None,
            };
        let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let reflect_addr = reflect.as_ref().and_then(|s| s.local_addr().ok());
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut reflect_ports = vec![udp_addr.port()];
        reflect_ports.extend(reflect_addr.map(|a| a.port()));

        let (waker, wakes) = tokio::sync::mpsc::channel(parking::WAKER_QUEUE);
        let shared = Arc::new(Shared {
            waker,
            id: identity.id(),
            cfg,
            metrics: metrics.clone(),
            sessions,
            socket,
            cancel: CancellationToken::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            reflect_ports,
        });
        let mut tasks = JoinSet::new();
        let cluster = (shared.cfg.cluster.clone())
            .map(|c| cluster::start(c, identity.id(), udp_addr, &shared, &mut tasks));
        tasks.spawn(accept_quic(shared.clone(), endpoint.clone()));
        tasks.spawn(parking::run(shared.clone(), wakes));
        for port in more_sockets {
            tasks.spawn(socket::serve_port(
                port,
                others.clone(),
                shared.cancel.clone(),
            ));
        }
        if let Some(l) = tcp {
            let tls =
                p2pcall_transport::rustls_server_config(identity, p2pcall_transport::ALPN_RELAY)?;
            tasks.spawn(accept_tcp(shared.clone(), l, Arc::new(tls)));
        }
        if let Some(s) = reflect {
            tasks.spawn(serve_reflect(shared.clone(), s));
        }
        if let Some(l) = metrics_listener {
            tasks.spawn(metrics::serve(l, metrics, shared.cancel.clone()));
        }
        Ok(Self {
            shared,
            endpoint,
            tasks,
            udp_addr,
            tcp_addr,
            reflect_addr,
            metrics_addr,
            id: identity.id(),
            cluster,
        })
    }

    /// The other relays of its cluster heard from recently (none for a relay alone).
    pub fn cluster_members(&self) -> Vec<cluster::ClusterMember> {
        self.cluster.as_ref().map_or_else(Vec::new, |c| c.members())
    }

    /// (benchmarks) Registers `id` as a peer without a connection: announced to the presence
    /// subscribers and the cluster like any login, never reading what it is sent. False if
    /// the relay refused it (full).
    #[doc(hidden)]
    pub fn simulate_login(&self, id: PeerId, name: &str) -> bool {
        let login = registry::Login {
            name: name.to_string(),
            presence: false,
            source: std::net::IpAddr::from([10, 0, 0, 1]),
        };
        let (session, _never_read) = registry::Session::new(
            &self.shared.cfg,
            &self.shared.cancel,
            id,
            login,
            None,
            std::time::Instant::now(),
            None,
        );
        let mut sessions = self.shared.sessions.write();
        (sessions.register(&session, self.shared.cfg.max_peers, &self.shared.metrics)).is_ok()
    }

    /// (benchmarks) Ends the session of `id`, as if it logged out.
    #[doc(hidden)]
    pub fn simulate_logout(&self, id: &PeerId) {
        let session = self.shared.sessions.read().by_id(id).cloned();
        if let Some(s) = session {
            self.shared
                .sessions
                .write()
                .unregister(&s, &self.shared.metrics);
        }
    }

    /// The relay's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Sessions registered now.
    pub fn online(&self) -> usize {
        self.shared.sessions.read().len()
    }

    /// Tells every peer the relay is going away, closes all connections and stops.
    pub async fn shutdown(mut self) {
        let all: Vec<_> = {
            // Under the table's lock: every registration after this sees the flag.
            let sessions = self.shared.sessions.write();
            self.shared
                .closing
                .store(true, std::sync::atomic::Ordering::Release);
            sessions.all()
        };
        for s in all {
            s.end(RefuseReason::ShuttingDown, "the relay is shutting down");
        }
        parking::wake_all(&self.shared);
        // Let writers flush their Refused frames.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.shared.cancel.cancel();
        self.endpoint.close(
            quinn::VarInt::from_u32(RefuseReason::ShuttingDown as u32),
            b"relay shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // What stops on its own does (the cluster says this relay leaves); then the rest.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_quic(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        // Handshakes spiking (a flood of Initials, perhaps from spoofed addresses): a new one
        // first proves it receives at its address (a stateless QUIC Retry, no state kept).
        use std::sync::atomic::Ordering::Relaxed;
        let busy = shared.metrics.handshakes.load(Relaxed) as usize;
        if busy >= shared.cfg.retry_above && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                shared.metrics.retries.fetch_add(1, Relaxed);
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        shared.metrics.handshakes.fetch_add(1, Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            let timeout = shared.cfg.handshake_timeout;
            let done = tokio::time::timeout(timeout, incoming).await;
            shared.metrics.handshakes.fetch_sub(1, Relaxed);
            let conn = match done {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!("relay handshake failed: {e}");
                    shared.metrics.close(metrics::Close::Protocol);
                    return;
                }
                Err(_) => {
                    shared.metrics.close(metrics::Close::Timeout);
                    return;
                }
            };
            let Some(id) = p2pcall_transport::peer_id(&conn) else {
                shared.metrics.close(metrics::Close::Protocol);
                conn.close((RefuseReason::Protocol as u32).into(), b"no client key");
                return;
            };
            let (send, recv) = match tokio::time::timeout(timeout, conn.accept_bi()).await {
                Ok(Ok(s)) => s,
                _ => {
                    shared.metrics.close(metrics::Close::Timeout);
                    conn.close((RefuseReason::Timeout as u32).into(), b"no control stream");
                    return;
                }
            };
            let observed = conn.remote_address();
            let end = session::run(shared, id, Some(conn.clone()), observed, recv, send).await;
            if let Some((code, text)) = end {
                // Give the peer a moment to read the Refused frame and hang up itself; the
                // close code carries the reason too if it does not.
                let _ = tokio::time::timeout(REFUSAL_GRACE, conn.closed()).await;
                conn.close(code.into(), text.as_bytes());
            }
        });
    }
}

/// How long a refused or ended session's connection stays open for the final frame.
const REFUSAL_GRACE: Duration = Duration::from_millis(300);

/// TLS handshakes in progress on the TCP fallback at once.
const MAX_TCP_HANDSHAKES: usize = 1024;

async fn accept_tcp(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_HANDSHAKES));
    loop {
        let (tcp, observed) = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.metrics.close(metrics::Close::ServerFull);
            continue;
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let hs = tokio::time::timeout(shared.cfg.handshake_timeout, acceptor.accept(tcp)).await;
            drop(permit);
            let stream = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => {
                    shared.metrics.close(metrics::Close::Protocol);
                    return;
                }
                Err(_) => {
                    shared.metrics.close(metrics::Close::Timeout);
                    return;
                }
            };
            let Some(id) =
                p2pcall_transport::peer_id_of_tls(stream.get_ref().1.peer_certificates())
            else {
                shared.metrics.close(metrics::Close::Protocol);
                return;
            };
            let (r, w) = tokio::io::split(stream);
            let _ = session::run(shared, id, None, observed, r, w).await;
        });
    }
}

async fn serve_reflect(shared: Arc<Shared>, sock: tokio::net::UdpSocket) {
    use std::sync::atomic::Ordering;
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
        };
        if let Ok(Control::ReflectReq { txid }) = Control::decode(&buf[..n]) {
            let mut out = Vec::with_capacity(32);
            Control::ReflectResp {
                txid,
                observed: p2pcall_transport::udp::canonical(from),
            }
            .encode(&mut out);
            let _ = sock.send_to(&out, from).await;
            shared.metrics.reflections.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.metrics.dropped(metrics::DropReason::Malformed);
        }
    }
}
