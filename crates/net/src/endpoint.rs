//! The endpoint API: commands in (methods), events out (a channel).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_nat::{MAIN_SOCKET, Path, PathEvent, PathManager, Via};
use p2pcall_proto::packet::Control;
use p2pcall_proto::peer::{Datagram, Mapping, PeerFrame, Reach};
use p2pcall_proto::relay::{ClientFrame, PeerInfo, RefuseReason, SignalFailure};
use p2pcall_proto::{PeerId, SafetyNumber};
use p2pcall_tls::{Identity, framed::FrameReader};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::NetError;
use crate::relay_client;
use crate::socket::{ControlPacket, MagicSocket, PeerRoute, canonical};

/// Label of the TLS exporter that yields the probe MAC key of a connection.
const PROBE_KEY_LABEL: &[u8] = b"p2pcall probe key v1";
/// How long a dial may take before we give up (relay path, so several RTTs plus the relay).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accepting side waits for the dialer to open the control stream.
const CONTROL_STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive for peer connections: well under common NAT UDP timeouts (~30 s).
const PEER_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Peer connections with no packet for this long are dead.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// A `ping` without answer for this long counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings of a connection whose peer re-registered are sent this far apart, and each may
/// take three times as long (a relayed path across continents has ~300 ms RTT).
const ALIVE_CHECK_EVERY: Duration = Duration::from_millis(300);
/// Most local candidates announced.
const MAX_LOCAL_CANDIDATES: usize = 16;
/// How often the local interface addresses are checked for changes.
const INTERFACE_POLL: Duration = Duration::from_secs(2);
/// Kernel buffer of each auxiliary (birthday) socket.
const AUX_SOCKET_BUFFER: usize = 256 << 10;
/// Application close code for "key does not match".
const CLOSE_KEY_MISMATCH: u32 = 0x101;
/// Application close code for protocol violations on the control stream.
const CLOSE_PROTOCOL: u32 = 0x102;
/// Application close code for a normal hang-up.
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code for a connection whose peer process is gone: a newer connection
/// from the same key announced another instance (the peer restarted).
const CLOSE_PEER_RESTARTED: u32 = 0x103;

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
}

impl RelayConfig {
    /// The relay at `addr` over UDP (TCP fallback on the same port), no token, presence on,
    /// any relay key.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            tcp_addr: None,
            token: None,
            presence: true,
            force_tcp: false,
            relay_key: None,
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
    pub lan: Option<crate::LanConfig>,
}

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
    },
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

pub(crate) struct Inner {
    pub identity: Identity,
    pub name: Mutex<String>,
    pub socket: Arc<MagicSocket>,
    pub quinn: quinn::Endpoint,
    pub events: mpsc::Sender<Event>,
    pub relay_cmd: mpsc::Sender<ClientFrame>,
    /// Live connections per peer, oldest first (probes go to each; the newest steers the
    /// peer's route).
    pub conns: Mutex<HashMap<PeerId, Vec<LiveConn>>>,
    /// Random per endpoint, announced in every `Hello` (see [`PeerFrame::Hello`]).
    pub instance: u64,
    /// Serial of the next connection (never 0: 0 is "no owner" of a route).
    pub next_serial: std::sync::atomic::AtomicU64,
    pub observed: Mutex<Option<SocketAddr>>,
    pub presence: Mutex<BTreeMap<PeerId, PeerInfo>>,
    /// Whether `presence` is complete: the relay session is up, presence was asked for, and
    /// its snapshot arrived. Only then does a peer missing from it count as offline.
    pub presence_known: std::sync::atomic::AtomicBool,
    pub relay_up: tokio::sync::watch::Sender<Option<RelayTransport>>,
    pub reflections: Mutex<HashMap<[u8; 12], oneshot::Sender<SocketAddr>>>,
    /// The relay's reflection addresses (from its welcome).
    pub reflectors: Mutex<Vec<SocketAddr>>,
    pub cancel: CancellationToken,
    pub direct_paths: bool,
    /// Our NAT's mapping behaviour; `None` while being measured.
    pub mapping: tokio::sync::watch::Sender<Option<Mapping>>,
    /// Bumped when the local interface addresses or the port mapping change.
    pub net_epoch: tokio::sync::watch::Sender<u64>,
    /// The gateway's port mapping client (keeps the mapping renewed while alive).
    pub port_mapper: Option<portmapper::Client>,
    /// The public address the gateway mapped for us.
    pub mapped: Mutex<Option<SocketAddr>>,
    /// The mDNS responder and browser (LAN-only mode).
    pub lan: std::sync::OnceLock<crate::lan::Lan>,
}

impl Inner {
    pub(crate) async fn emit(&self, e: Event) {
        let _ = self.events.send(e).await;
    }

    /// Marks every live connection to `peer` suspect (see [`PeerConnection::is_suspect`])
    /// and checks each in the background: one whose peer restarted is closed within about
    /// a second, so that what runs on it (a transfer, a call) fails at once instead of
    /// after the idle timeout.
    pub(crate) fn mark_suspect(&self, peer: &PeerId) {
        let conns: Vec<PeerConnection> = self
            .conns
            .lock()
            .get(peer)
            .into_iter()
            .flatten()
            .map(|c| PeerConnection {
                shared: c.shared.clone(),
            })
            .collect();
        for c in conns {
            c.shared.suspect.store(true, Ordering::Release);
            tokio::spawn(async move {
                if !c.check_alive().await {
                    tracing::info!(peer = %c.peer(), "closed a connection whose peer registered again and did not answer");
                }
            });
        }
    }

    async fn reflect(&self, server: SocketAddr) -> Result<SocketAddr, NetError> {
        for _ in 0..3 {
            let txid: [u8; 12] = rand::random();
            let (tx, rx) = oneshot::channel();
            {
                let mut m = self.reflections.lock();
                if m.len() > 64 {
                    m.clear();
                }
                m.insert(txid, tx);
            }
            let mut pkt = Vec::new();
            Control::ReflectReq { txid }.encode(&mut pkt);
            self.socket.send_control(server, &pkt);
            if let Ok(Ok(addr)) = tokio::time::timeout(Duration::from_millis(700), rx).await {
                return Ok(addr);
            }
        }
        Err(NetError::Timeout("address reflection"))
    }

    async fn netcheck(&self) -> Result<p2pcall_nat::classify::NatReport, NetError> {
        let reflectors = self.reflectors.lock().clone();
        if reflectors.is_empty() {
            return Err(NetError::NoRelay);
        }
        let mut observed = Vec::new();
        for r in &reflectors {
            observed.push(self.reflect(*r).await.ok().map(canonical));
        }
        let port = self.socket.local_port();
        let locals: Vec<SocketAddr> = if_addrs::get_if_addrs()
            .map(|l| l.iter().map(|i| SocketAddr::new(i.ip(), port)).collect())
            .unwrap_or_default();
        Ok(p2pcall_nat::classify::classify(&locals, port, &observed))
    }

    /// Measures our NAT's mapping behaviour for the punching logic (after each relay
    /// registration and network change).
    pub(crate) async fn measure_nat(self: Arc<Self>) {
        self.mapping.send_replace(None);
        let m = match self.netcheck().await {
            Ok(r) => r.mapping,
            Err(_) => Mapping::Unknown,
        };
        tracing::debug!(?m, "NAT mapping measured");
        self.mapping.send_replace(Some(m));
    }

    /// What we tell peers about reaching us.
    fn reach(&self) -> Reach {
        if !self.direct_paths {
            return Reach {
                candidates: Vec::new(),
                mapping: Mapping::Unknown,
                observed: None,
            };
        }
        Reach {
            candidates: local_candidates(self),
            mapping: (*self.mapping.borrow()).unwrap_or(Mapping::Unknown),
            observed: (*self.observed.lock()).map(canonical),
        }
    }
}

/// A running endpoint. Cheap to clone; [`Endpoint::close`] stops everything.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.inner.identity.id())
            .finish_non_exhaustive()
    }
}

/// Flow-control windows of peer connections. quinn's defaults (1.25 MB per stream) are
/// sized for 100 Mbit/s at 100 ms; a file transfer reads whole 1 MiB chunks, so a stream
/// window close to the chunk size stalls the sender every chunk. These also bound what a
/// hostile peer can make us buffer per connection.
pub const PEER_STREAM_WINDOW: u32 = 8 << 20;
/// See [`PEER_STREAM_WINDOW`].
pub const PEER_CONNECTION_WINDOW: u32 = 32 << 20;

fn peer_transport() -> quinn::TransportConfig {
    let mut t = p2pcall_tls::transport_config(PEER_KEEP_ALIVE, PEER_IDLE_TIMEOUT);
    t.stream_receive_window(PEER_STREAM_WINDOW.into());
    t.receive_window(PEER_CONNECTION_WINDOW.into());
    t.send_window(u64::from(PEER_CONNECTION_WINDOW));
    t
}

impl Endpoint {
    /// Binds the socket, starts the relay client (if configured) and the accept loop. The
    /// caller must keep draining the returned event receiver.
    pub async fn bind(cfg: EndpointConfig) -> Result<(Self, mpsc::Receiver<Event>), NetError> {
        if cfg.lan.is_some() && cfg.relay.is_some() {
            return Err(NetError::LanAndRelay);
        }
        let (socket, control_rx) =
            MagicSocket::bind(cfg.bind).map_err(|source| NetError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let server = p2pcall_tls::quinn_server_config(
            &cfg.identity,
            p2pcall_tls::ALPN_PEER,
            peer_transport(),
        )?;
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            p2pcall_tls::endpoint_config(),
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let port_mapper = (cfg.port_mapping && cfg.direct_paths)
            .then(|| std::num::NonZeroU16::new(socket.local_port()))
            .flatten()
            .map(|port| {
                let c = portmapper::Client::new(portmapper::Config::default());
                c.update_local_port(port);
                c.procure_mapping();
                c
            });
        let (events, events_rx) = mpsc::channel(1024);
        let (relay_cmd, relay_cmd_rx) = mpsc::channel(256);
        let inner = Arc::new(Inner {
            identity: cfg.identity,
            name: Mutex::new(cfg.name),
            socket,
            quinn,
            events,
            relay_cmd,
            conns: Mutex::default(),
            instance: rand::random(),
            next_serial: std::sync::atomic::AtomicU64::new(1),
            observed: Mutex::new(None),
            presence: Mutex::default(),
            presence_known: std::sync::atomic::AtomicBool::new(false),
            relay_up: tokio::sync::watch::Sender::new(None),
            reflections: Mutex::default(),
            reflectors: Mutex::default(),
            cancel: CancellationToken::new(),
            direct_paths: cfg.direct_paths,
            mapping: tokio::sync::watch::Sender::new(None),
            net_epoch: tokio::sync::watch::Sender::new(0),
            port_mapper,
            mapped: Mutex::new(None),
            lan: std::sync::OnceLock::new(),
        });
        if let Some(lan) = &cfg.lan {
            let (handle, browse) = crate::lan::start(&inner, lan)?;
            let _ = inner.lan.set(handle);
            tokio::spawn(crate::lan::run(inner.clone(), browse));
        }
        if let Some(pm) = &inner.port_mapper {
            tokio::spawn(watch_port_mapping(
                inner.clone(),
                pm.watch_external_address(),
            ));
        }
        tokio::spawn(control_dispatch(inner.clone(), control_rx));
        tokio::spawn(watch_interfaces(inner.clone()));
        tokio::spawn(accept_loop(inner.clone()));
        if let Some(relay) = cfg.relay {
            tokio::spawn(relay_client::run(inner.clone(), relay, relay_cmd_rx));
        }
        Ok((Self { inner }, events_rx))
    }

    /// Our identity.
    pub fn id(&self) -> PeerId {
        self.inner.identity.id()
    }

    /// The local UDP port.
    pub fn local_port(&self) -> u16 {
        self.inner.socket.local_port()
    }

    /// Our address as the relay last saw it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *self.inner.observed.lock()
    }

    /// Peers online on the relay, as last known.
    pub fn online_peers(&self) -> Vec<PeerInfo> {
        self.inner.presence.lock().values().cloned().collect()
    }

    /// Whether the relay reports `peer` offline: our relay session is up, its presence list
    /// is complete, and `peer` is not in it. `false` when we cannot know (no relay session,
    /// presence not asked for, LAN-only mode).
    pub fn peer_offline(&self, peer: &PeerId) -> bool {
        self.inner.presence_known.load(Ordering::Acquire)
            && !self.inner.presence.lock().contains_key(peer)
    }

    /// Waits until the relay session is up (or `timeout` passes).
    pub async fn wait_relay(&self, timeout: Duration) -> Result<RelayTransport, NetError> {
        let mut rx = self.inner.relay_up.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match r {
            Ok(Ok(v)) => (*v).ok_or(NetError::NoRelay),
            Ok(Err(_)) => Err(NetError::Closed),
            Err(_) => Err(NetError::Timeout("waiting for the relay")),
        }
    }

    /// Sends an opaque signal to `to` through the relay.
    pub async fn signal(&self, to: PeerId, payload: Bytes) -> Result<(), NetError> {
        self.inner
            .relay_cmd
            .send(ClientFrame::Signal { to, payload })
            .await
            .map_err(|_| NetError::NoRelay)
    }

    /// Changes the display name (relay or LAN presence, and future peer hellos).
    pub async fn set_name(&self, name: String) -> Result<(), NetError> {
        {
            let mut n = self.inner.name.lock();
            n.clone_from(&name);
        }
        if let Some(lan) = self.inner.lan.get() {
            lan.name.send_replace(name);
            return Ok(());
        }
        self.inner
            .relay_cmd
            .send(ClientFrame::SetName { name })
            .await
            .map_err(|_| NetError::NoRelay)
    }

    /// Asks `server` (a relay's reflection port) which address it sees for our socket.
    pub async fn reflect(&self, server: SocketAddr) -> Result<SocketAddr, NetError> {
        self.inner.reflect(server).await
    }

    /// Our NAT's mapping behaviour as last measured through the relay (`None` until the
    /// first measurement after registering finished).
    pub fn nat_mapping(&self) -> Option<Mapping> {
        *self.inner.mapping.borrow()
    }

    /// Addresses a peer may reach us on directly (what we announce).
    pub fn local_candidates(&self) -> Vec<SocketAddr> {
        local_candidates(&self.inner)
    }

    /// Measures our NAT through the relay's reflection ports (UDP, whatever transport the
    /// relay session uses). Needs a relay session (for the list of reflection ports).
    pub async fn netcheck(&self) -> Result<p2pcall_nat::classify::NatReport, NetError> {
        self.inner.netcheck().await
    }

    /// Whether this host has a global IPv6 address (not loopback, link-local or ULA).
    pub fn has_global_ipv6(&self) -> bool {
        if_addrs::get_if_addrs().is_ok_and(|l| {
            l.iter().any(|i| match i.ip() {
                IpAddr::V6(v6) => {
                    !v6.is_loopback()
                        && !v6.is_unicast_link_local()
                        && !v6.is_unique_local()
                        && !v6.is_unspecified()
                }
                IpAddr::V4(_) => false,
            })
        })
    }

    /// Opens an end-to-end encrypted connection to `peer`, starting on the relay path.
    pub async fn connect(&self, peer: PeerId) -> Result<PeerConnection, NetError> {
        let inner = &self.inner;
        let route = inner.socket.route(peer).ok_or(NetError::TooManyPeers)?;
        let cfg = p2pcall_tls::quinn_client_config(
            &inner.identity,
            Some(peer),
            p2pcall_tls::ALPN_PEER,
            peer_transport(),
        )?;
        let connecting = inner.quinn.connect_with(
            cfg,
            inner.socket.family(route.vaddr),
            p2pcall_tls::PEER_SERVER_NAME,
        )?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| NetError::Timeout("connecting to the peer"))??;
        let got = p2pcall_tls::peer_id(&conn);
        if got != Some(peer) {
            conn.close(CLOSE_KEY_MISMATCH.into(), b"key mismatch");
            return Err(NetError::PeerKeyMismatch {
                expected: peer,
                got,
            });
        }
        let (send, recv) = conn.open_bi().await?;
        Ok(start_connection(
            inner.clone(),
            conn,
            route,
            send,
            recv,
            true,
        ))
    }

    /// Whether this endpoint runs in LAN-only mode (mDNS presence, no relay).
    pub fn is_lan(&self) -> bool {
        self.inner.lan.get().is_some()
    }

    /// Stops the relay client (or the LAN announcement) and every connection.
    pub async fn close(&self) {
        if let Some(lan) = self.inner.lan.get() {
            lan.close().await;
        }
        // Close the connections while the relay session still carries their close frames,
        // so peers learn at once instead of after their idle timeout.
        self.inner
            .quinn
            .close(CLOSE_NORMAL.into(), b"endpoint closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.quinn.wait_idle()).await;
        self.inner.cancel.cancel();
    }
}

/// Live numbers of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionStats {
    /// Current path.
    pub path: Path,
    /// QUIC's smoothed RTT.
    pub rtt: Duration,
    /// Bytes sent via relay / direct; received via relay / direct.
    pub tx_relay: u64,
    /// Bytes sent directly.
    pub tx_direct: u64,
    /// Bytes received through the relay.
    pub rx_relay: u64,
    /// Bytes received directly.
    pub rx_direct: u64,
    /// Packets QUIC declared lost.
    pub lost_packets: u64,
    /// Path probes sent so far (hole punching and liveness).
    pub probes_sent: u64,
}

/// A live connection, as the endpoint tracks it.
pub(crate) struct LiveConn {
    serial: u64,
    probe_tx: mpsc::Sender<ControlPacket>,
    shared: Arc<ConnShared>,
}

struct ConnShared {
    me: PeerId,
    peer: PeerId,
    /// This connection's number within the endpoint (order of establishment).
    serial: u64,
    /// The peer's instance, from its `Hello`.
    remote_instance: Mutex<Option<u64>>,
    /// Set when the peer registered with the relay again while this connection was up: it
    /// may have restarted (this connection is then dead) or only lost its relay session.
    /// [`PeerConnection::check_alive`] tells which.
    suspect: std::sync::atomic::AtomicBool,
    conn: quinn::Connection,
    route: Arc<PeerRoute>,
    pings: Mutex<HashMap<u32, oneshot::Sender<Instant>>>,
    remote_name: Mutex<Option<String>>,
    path_rx: tokio::sync::watch::Receiver<Path>,
    datagrams: Mutex<Option<mpsc::Receiver<Bytes>>>,
    probes_sent: std::sync::atomic::AtomicU64,
}

/// An end-to-end encrypted connection to one peer.
#[derive(Clone)]
pub struct PeerConnection {
    shared: Arc<ConnShared>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("peer", &self.shared.peer)
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl PeerConnection {
    /// The authenticated peer.
    pub fn peer(&self) -> PeerId {
        self.shared.peer
    }

    /// The name the peer announced (a hint).
    pub fn remote_name(&self) -> Option<String> {
        self.shared.remote_name.lock().clone()
    }

    /// The safety number of this pair of identities.
    pub fn safety_number(&self) -> SafetyNumber {
        SafetyNumber::new(&self.shared.me, &self.shared.peer)
    }

    /// The path packets take now.
    pub fn path(&self) -> Path {
        self.shared.route.path()
    }

    /// Waits until the path satisfies `f` (or the timeout passes); returns the path.
    pub async fn wait_path(&self, timeout: Duration, f: impl Fn(&Path) -> bool) -> Option<Path> {
        let mut rx = self.shared.path_rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| f(p)))
            .await
            .ok()?
            .ok()
            .map(|p| *p)
    }

    /// The underlying QUIC connection: open streams, send datagrams.
    pub fn quic(&self) -> &quinn::Connection {
        &self.shared.conn
    }

    /// Datagrams that are not pings, for the application (taken once).
    pub fn take_datagrams(&self) -> Option<mpsc::Receiver<Bytes>> {
        self.shared.datagrams.lock().take()
    }

    /// Whether the peer re-registered with the relay since this connection came up (it may
    /// have restarted): check with [`check_alive`](Self::check_alive) before relying on it.
    pub fn is_suspect(&self) -> bool {
        self.shared.suspect.load(Ordering::Acquire)
    }

    /// Whether the peer still answers on this connection: up to three pings, one every
    /// [`ALIVE_CHECK_EVERY`] (so one lost packet does not condemn a live connection). A
    /// connection that does not answer is closed; one that does is no longer suspect.
    pub async fn check_alive(&self) -> bool {
        let (tx, mut rx) = mpsc::channel(3);
        for i in 0..3u32 {
            let seq = rand::random::<u32>();
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ALIVE_CHECK_EVERY * i).await;
                let _ = tx
                    .send(me.ping_within(seq, 0, ALIVE_CHECK_EVERY * 3).await.is_ok())
                    .await;
            });
        }
        drop(tx);
        while let Some(ok) = rx.recv().await {
            if ok {
                self.shared.suspect.store(false, Ordering::Release);
                return true;
            }
        }
        self.shared.conn.close(
            CLOSE_PEER_RESTARTED.into(),
            b"no answer after the peer registered again",
        );
        false
    }

    /// Sends a ping datagram of `pad` extra bytes and waits for its pong.
    pub async fn ping(&self, seq: u32, pad: usize) -> Result<Duration, NetError> {
        self.ping_within(seq, pad, PING_TIMEOUT).await
    }

    async fn ping_within(
        &self,
        seq: u32,
        pad: usize,
        wait: Duration,
    ) -> Result<Duration, NetError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut m = self.shared.pings.lock();
            if m.len() > 1024 {
                m.clear();
            }
            m.insert(seq, tx);
        }
        let mut buf = Vec::new();
        Datagram::Ping {
            seq,
            pad: Bytes::from(vec![0u8; pad.min(p2pcall_proto::peer::MAX_PING_PAD)]),
        }
        .encode(&mut buf);
        let sent = Instant::now();
        tracing::trace!(serial = self.shared.serial, seq, "ping sent");
        self.shared.conn.send_datagram(Bytes::from(buf))?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(at)) => Ok(at.saturating_duration_since(sent)),
            _ => {
                {
                    let mut m = self.shared.pings.lock();
                    m.remove(&seq);
                }
                Err(NetError::Timeout("ping"))
            }
        }
    }

    /// Live statistics.
    pub fn stats(&self) -> ConnectionStats {
        let c = &self.shared.route.counters;
        let q = self.shared.conn.stats();
        ConnectionStats {
            path: self.path(),
            rtt: self.shared.conn.rtt(),
            tx_relay: c.tx_relay.load(Ordering::Relaxed),
            tx_direct: c.tx_direct.load(Ordering::Relaxed),
            rx_relay: c.rx_relay.load(Ordering::Relaxed),
            rx_direct: c.rx_direct.load(Ordering::Relaxed),
            lost_packets: q.path.lost_packets,
            probes_sent: self.shared.probes_sent.load(Ordering::Relaxed),
        }
    }

    /// Closes the connection.
    pub fn close(&self, reason: &str) {
        self.shared
            .conn
            .close(CLOSE_NORMAL.into(), reason.as_bytes());
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.shared.conn.closed().await
    }
}

fn start_connection(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    route: Arc<PeerRoute>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dialer: bool,
) -> PeerConnection {
    route.conns.fetch_add(1, Ordering::Relaxed);
    // The newest connection to a peer steers its route, starting on the relay path: a
    // direct path of an earlier connection (often a dead process's port) is not trusted
    // until probed again. With no other connection alive, what earlier ones validated is
    // forgotten now; otherwise when the peer's `Hello` shows they were another instance
    // (a second connection from the same process keeps them: its traffic is in flight).
    let serial = inner.next_serial.fetch_add(1, Ordering::Relaxed);
    let alone = inner.conns.lock().get(&route.id).is_none_or(Vec::is_empty);
    if alone {
        inner.socket.forget_direct(&route, serial);
    }
    route.claim(serial);
    let path_rx = route.watch_path();
    let (dg_tx, dg_rx) = mpsc::channel(256);
    let shared = Arc::new(ConnShared {
        me: inner.identity.id(),
        peer: route.id,
        serial,
        remote_instance: Mutex::new(None),
        suspect: std::sync::atomic::AtomicBool::new(false),
        conn,
        route,
        pings: Mutex::default(),
        remote_name: Mutex::new(None),
        path_rx,
        datagrams: Mutex::new(Some(dg_rx)),
        probes_sent: std::sync::atomic::AtomicU64::new(0),
    });
    let (probe_tx, probe_rx) = mpsc::channel(1024);
    {
        let mut c = inner.conns.lock();
        c.entry(shared.peer).or_default().push(LiveConn {
            serial,
            probe_tx: probe_tx.clone(),
            shared: shared.clone(),
        });
    }
    let pc = PeerConnection {
        shared: shared.clone(),
    };
    let aux = AuxSockets::new(inner.clone(), shared.route.clone(), probe_tx.clone());
    tokio::spawn(drive_connection(
        inner,
        shared,
        (send, recv),
        probe_rx,
        dg_tx,
        (dialer, aux),
    ));
    pc
}

/// Local addresses a peer may reach us on: interface addresses with our port, the address
/// the relay observed, and the observed IP with our own port.
fn local_candidates(inner: &Inner) -> Vec<SocketAddr> {
    let port = inner.socket.local_port();
    let mut out = Vec::new();
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        for i in ifs {
            let ip = i.ip();
            let usable = match ip {
                IpAddr::V4(_) => true,
                // Link-local IPv6 needs a scope id the other side cannot use.
                IpAddr::V6(v6) => !v6.is_unicast_link_local() && inner.socket.is_v6(),
            };
            if usable {
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    let mapped = *inner.mapped.lock();
    if let Some(m) = mapped {
        out.push(m);
    }
    let observed = (*inner.observed.lock()).map(canonical);
    if let Some(o) = observed {
        out.push(o);
        // A port-preserving NAT maps our port to the same public port toward the peer.
        out.push(SocketAddr::new(o.ip(), port));
    }
    out.sort_by_key(|a| (!a.ip().is_loopback(), a.is_ipv6()));
    out.dedup();
    out.truncate(MAX_LOCAL_CANDIDATES);
    out
}

/// A connection's auxiliary sockets for the birthday technique (opened on first use, closed
/// when the attempt ends, except the one a selected path uses).
struct AuxSockets {
    inner: Arc<Inner>,
    route: Arc<PeerRoute>,
    probe_tx: mpsc::Sender<ControlPacket>,
    socks: HashMap<Via, (Arc<tokio::net::UdpSocket>, tokio::task::JoinHandle<()>)>,
}

impl AuxSockets {
    fn new(
        inner: Arc<Inner>,
        route: Arc<PeerRoute>,
        probe_tx: mpsc::Sender<ControlPacket>,
    ) -> Self {
        Self {
            inner,
            route,
            probe_tx,
            socks: HashMap::new(),
        }
    }

    /// Socket `via`, opened now if needed. `None` for the main socket or if binding failed.
    fn get(&mut self, via: Via) -> Option<Arc<tokio::net::UdpSocket>> {
        if via == MAIN_SOCKET {
            return None;
        }
        if let Some((s, _)) = self.socks.get(&via) {
            return Some(s.clone());
        }
        let any = if self
            .inner
            .socket
            .family(SocketAddr::from(([0, 0, 0, 0], 0)))
            .is_ipv6()
        {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let sock = p2pcall_tls::udp::bind(any, AUX_SOCKET_BUFFER)
            .and_then(tokio::net::UdpSocket::from_std)
            .map_err(|e| tracing::debug!("auxiliary socket: {e}"))
            .ok()?;
        let sock = Arc::new(sock);
        let task = tokio::spawn(aux_recv(
            sock.clone(),
            via,
            self.inner.clone(),
            self.route.clone(),
            self.probe_tx.clone(),
        ));
        self.socks.insert(via, (sock.clone(), task));
        Some(sock)
    }

    fn send(&mut self, via: Via, dst: SocketAddr, payload: &[u8]) {
        match self.get(via) {
            Some(s) => {
                let _ = s.try_send_to(payload, self.inner.socket.family(dst));
            }
            None => self.inner.socket.send_control(dst, payload),
        }
    }

    fn release(&mut self, keep: Option<Via>) {
        self.socks.retain(|via, (_, task)| {
            let keep = Some(*via) == keep;
            if !keep {
                task.abort();
            }
            keep
        });
    }
}

impl Drop for AuxSockets {
    fn drop(&mut self) {
        self.release(None);
    }
}

/// Receives on one auxiliary socket: probes go to the connection's path manager, QUIC
/// packets from a validated address of this peer to quinn.
async fn aux_recv(
    sock: Arc<tokio::net::UdpSocket>,
    via: Via,
    inner: Arc<Inner>,
    route: Arc<PeerRoute>,
    probe_tx: mpsc::Sender<ControlPacket>,
) {
    let queue = inner.socket.queue();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            // ICMP errors surface here; keep going.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let from = canonical(from);
        let pkt = &buf[..n];
        let Some(&first) = pkt.first() else { continue };
        if p2pcall_proto::packet::is_quic(first) {
            if inner.socket.is_direct_of(from, &route) {
                let _ = queue.try_send(crate::socket::Queued::Direct(
                    route.clone(),
                    from,
                    pkt.to_vec(),
                ));
            }
        } else if let Ok(packet) = Control::decode(pkt) {
            let _ = probe_tx.try_send(ControlPacket {
                from,
                at: Instant::now(),
                packet,
                via,
            });
        }
    }
}

async fn send_frame(send: &mut quinn::SendStream, f: &PeerFrame, peer: PeerId) {
    let mut buf = Vec::with_capacity(f.encoded_len());
    f.encode(&mut buf);
    if let Err(e) = p2pcall_tls::framed::write_all(send, &buf).await {
        tracing::debug!(%peer, "control frame not sent: {e}");
    }
}

/// Closes older connections to the same peer whose peer process was another instance than
/// `instance` (the peer restarted: they are dead, and would only hold streams until their
/// idle timeout), and forgets the direct addresses they validated.
fn close_restarted(inner: &Inner, shared: &ConnShared, instance: u64) {
    let stale: Vec<quinn::Connection> = inner
        .conns
        .lock()
        .get(&shared.peer)
        .into_iter()
        .flatten()
        .filter(|o| o.serial < shared.serial)
        .filter(|o| {
            o.shared
                .remote_instance
                .lock()
                .is_some_and(|i| i != instance)
        })
        .map(|o| o.shared.conn.clone())
        .collect();
    if !stale.is_empty() {
        inner.socket.forget_direct(&shared.route, shared.serial);
    }
    for c in stale {
        tracing::debug!(peer = %shared.peer, "closing a connection to the peer's previous instance");
        c.close(CLOSE_PEER_RESTARTED.into(), b"the peer restarted");
    }
}

async fn drive_connection(
    inner: Arc<Inner>,
    shared: Arc<ConnShared>,
    (mut send, recv): (quinn::SendStream, quinn::RecvStream),
    mut probe_rx: mpsc::Receiver<ControlPacket>,
    dg_tx: mpsc::Sender<Bytes>,
    (dialer, mut aux): (bool, AuxSockets),
) {
    let conn = shared.conn.clone();
    let peer = shared.peer;
    let serial = shared.serial;
    let mut owner_rx = shared.route.watch_owner();
    let mut owned = shared.route.owner() == serial;
    let mut key = [0u8; 32];
    if conn
        .export_keying_material(&mut key, PROBE_KEY_LABEL, b"")
        .is_err()
    {
        conn.close(CLOSE_PROTOCOL.into(), b"no keying material");
    }
    let mut pm = PathManager::new(inner.identity.id(), key, dialer);
    let mut mapping_rx = inner.mapping.subscribe();
    let mut epoch_rx = inner.net_epoch.subscribe();
    let reach = inner.reach();
    pm.set_local_mapping(reach.mapping);
    let name = inner.name.lock().clone();
    let hello = PeerFrame::Hello {
        name,
        instance: inner.instance,
        reach,
    };
    send_frame(&mut send, &hello, peer).await;
    let mut reader = FrameReader::new(recv, p2pcall_proto::peer::MAX_FRAME);
    let mut control_open = true;
    let reason = loop {
        let timeout = pm
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut announce = false;
        tokio::select! {
                    _ = inner.cancel.cancelled() => break "endpoint closed".to_string(),
                    e = conn.closed() => break e.to_string(),
                    f = reader.next(), if control_open => match f {
                        Ok(raw) => match PeerFrame::decode(raw) {
                            Ok(PeerFrame::Hello { name, instance, reach }) => {
                                {
        let mut n = shared.remote_name.lock();
                                    *n = Some(name);
                                }
                                {
        let mut i = shared.remote_instance.lock();
                                    *i = Some(instance);
                                }
                                close_restarted(&inner, &shared, instance);
                                if inner.direct_paths {
                                    pm.set_remote_nat(reach.mapping, reach.observed);
                                    pm.add_remote_candidates(Instant::now(), &reach.candidates);
                                    pm.request_round(Instant::now());
                                }
                            }
                            Ok(PeerFrame::Candidates(reach)) => {
                                if inner.direct_paths {
                                    pm.set_remote_nat(reach.mapping, reach.observed);
                                    pm.add_remote_candidates(Instant::now(), &reach.candidates);
                                    pm.request_round(Instant::now());
                                }
                            }
                            Ok(PeerFrame::Punch { .. }) => {
                                if inner.direct_paths && !dialer {
                                    pm.start_round(Instant::now());
                                }
                            }
                            Err(e) => {
                                conn.close(CLOSE_PROTOCOL.into(), format!("bad control frame: {e}").as_bytes());
                                break format!("peer sent a bad control frame: {e}");
                            }
                        },
                        Err(p2pcall_tls::framed::FrameReadError::Closed) => control_open = false,
                        Err(e) => {
                            conn.close(CLOSE_PROTOCOL.into(), format!("control stream: {e}").as_bytes());
                            break format!("control stream: {e}");
                        }
                    },
                    Some(pkt) = probe_rx.recv() => {
                        if inner.direct_paths && pm.handle_control(pkt.at, pkt.from, pkt.via, &pkt.packet) {
                            inner.socket.map_direct(pkt.from, &shared.route, serial);
                        }
                    }
                    Ok(()) = mapping_rx.changed() => {
                        let m = *mapping_rx.borrow_and_update();
                        if let Some(m) = m {
                            pm.set_local_mapping(m);
                            announce = true;
                        }
                    }
                    Ok(()) = epoch_rx.changed() => {
                        epoch_rx.borrow_and_update();
                        // New interface addresses: tell the peer, and punch again.
                        pm.reprobe(Instant::now());
                        announce = true;
                    }
                    Ok(()) = owner_rx.changed() => {}
                    d = conn.read_datagram() => match d {
                        Ok(d) => handle_datagram(&shared, &dg_tx, d),
                        Err(e) => break e.to_string(),
                    },
                    _ = tokio::time::sleep_until(timeout.into()) => {}
                }
        if announce && inner.direct_paths {
            send_frame(&mut send, &PeerFrame::Candidates(inner.reach()), peer).await;
            pm.request_round(Instant::now());
        }
        let now = Instant::now();
        pm.set_relay_rtt(conn.rtt());
        let owns = shared.route.owner() == serial;
        if owns && !owned {
            // An older connection ended and this one steers the route now: apply what its
            // path manager knows.
            for a in pm.validated() {
                inner.socket.map_direct(a, &shared.route, serial);
            }
            if let Path::Direct(_) = pm.selected() {
                shared
                    .route
                    .set_path(serial, pm.selected(), aux.get(pm.selected_via()));
            }
        }
        owned = owns;
        if owns && let Some((addr, at)) = shared.route.take_direct_rx() {
            pm.note_rx(at, addr);
        }
        pm.handle_timeout(now);
        while let Some(t) = pm.poll_transmit() {
            aux.send(t.via, t.dst, &t.payload);
        }
        shared
            .probes_sent
            .store(pm.probes_sent(), Ordering::Relaxed);
        while let Some(e) = pm.poll_event() {
            match e {
                PathEvent::Selected { path, via, rtt } => {
                    if !shared.route.set_path(serial, path, aux.get(via)) {
                        tracing::debug!(%peer, ?path, "path of a connection that no longer steers the route");
                        continue;
                    }
                    // For a LAN peer "the relay" is its announced address.
                    let path = shared.route.path();
                    tracing::info!(%peer, ?path, via, ?rtt, "path changed");
                    inner
                        .emit(crate::Event::PathChanged {
                            peer,
                            path,
                            rtt,
                            at: now,
                        })
                        .await;
                }
                PathEvent::SendPunch { round } => {
                    send_frame(&mut send, &PeerFrame::Punch { round }, peer).await;
                }
                PathEvent::ReleaseAux { keep } => aux.release(keep),
            }
        }
    };
    drop(aux);
    // If this connection steered the route, the newest other one to the peer takes over.
    let next = (|| {
        let mut c = inner.conns.lock();
        let list = c.get_mut(&peer)?;
        list.retain(|o| o.serial != serial);
        let next = list.last().map(|o| o.serial);
        if list.is_empty() {
            c.remove(&peer);
        }
        next
    })();
    shared.route.release(serial, next);
    shared.route.conns.fetch_sub(1, Ordering::Relaxed);
    inner
        .emit(crate::Event::ConnectionClosed { peer, reason })
        .await;
}

/// Follows the gateway's port mapping: a new mapped address is announced to every
/// connection's peer (through `net_epoch`).
async fn watch_port_mapping(
    inner: Arc<Inner>,
    mut rx: tokio::sync::watch::Receiver<Option<std::net::SocketAddrV4>>,
) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let mapped = (*rx.borrow_and_update()).map(SocketAddr::V4);
        tracing::info!(?mapped, "gateway port mapping");
        {
            let mut m = inner.mapped.lock();
            *m = mapped;
        }
        inner.net_epoch.send_modify(|e| *e += 1);
    }
}

/// Watches the local interface addresses; a change bumps `net_epoch` (connections announce
/// new candidates and punch again) and re-measures the NAT.
async fn watch_interfaces(inner: Arc<Inner>) {
    let snapshot = || {
        let mut v: Vec<IpAddr> = if_addrs::get_if_addrs()
            .map(|l| l.iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut last = snapshot();
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(INTERFACE_POLL) => {}
        }
        let now = snapshot();
        if now != last {
            tracing::info!(?now, "local addresses changed");
            last = now;
            inner.net_epoch.send_modify(|e| *e += 1);
            if inner.relay_up.borrow().is_some() {
                tokio::spawn(inner.clone().measure_nat());
            }
        }
    }
}

fn handle_datagram(shared: &ConnShared, app: &mpsc::Sender<Bytes>, d: Bytes) {
    match Datagram::decode(&d) {
        Ok(Datagram::Ping { seq, pad }) => {
            tracing::trace!(serial = shared.serial, seq, "ping datagram");
            let mut buf = Vec::new();
            Datagram::Pong { seq, pad }.encode(&mut buf);
            let _ = shared.conn.send_datagram(Bytes::from(buf));
        }
        Ok(Datagram::Pong { seq, .. }) => {
            tracing::trace!(serial = shared.serial, seq, "pong datagram");
            let now = Instant::now();
            let tx = shared.pings.lock().remove(&seq);
            if let Some(tx) = tx {
                let _ = tx.send(now);
            }
        }
        Err(_) => {
            // Not ours: the application's (media later). Drop when it does not keep up.
            let _ = app.try_send(d);
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            i = inner.quinn.accept() => match i { Some(i) => i, None => return },
        };
        let Some(route) = inner.socket.route_by_vaddr(incoming.remote_address()) else {
            // Only peers reached through the relay or a validated direct path may connect.
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %route.id, "incoming handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let got = p2pcall_tls::peer_id(&conn);
            if got != Some(route.id) {
                tracing::warn!(expected = %route.id, ?got, "peer key does not match the relay-authenticated sender");
                conn.close(CLOSE_KEY_MISMATCH.into(), b"key does not match the sender");
                return;
            }
            let streams = tokio::time::timeout(CONTROL_STREAM_TIMEOUT, conn.accept_bi()).await;
            let Ok(Ok((send, recv))) = streams else {
                conn.close(CLOSE_PROTOCOL.into(), b"no control stream");
                return;
            };
            let pc = start_connection(inner.clone(), conn, route, send, recv, false);
            tracing::trace!(serial = pc.shared.serial, "accepted");
            inner.emit(crate::Event::Incoming(pc)).await;
        });
    }
}

async fn control_dispatch(inner: Arc<Inner>, mut rx: mpsc::Receiver<ControlPacket>) {
    loop {
        let pkt = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        match &pkt.packet {
            Control::ReflectResp { txid, observed } => {
                let tx = inner.reflections.lock().remove(txid);
                if let Some(tx) = tx {
                    let _ = tx.send(*observed);
                }
            }
            Control::ProbePing { from, .. } | Control::ProbePong { from, .. } => {
                // Every connection to that peer (usually one) checks the probe's MAC with
                // its own key; the others ignore it.
                let handlers: Vec<_> = inner
                    .conns
                    .lock()
                    .get(from)
                    .map(|l| l.iter().map(|c| c.probe_tx.clone()).collect())
                    .unwrap_or_default();
                if let Some((last, rest)) = handlers.split_last() {
                    for h in rest {
                        let _ = h.try_send(ControlPacket {
                            from: pkt.from,
                            at: pkt.at,
                            packet: pkt.packet.clone(),
                            via: pkt.via,
                        });
                    }
                    let _ = last.try_send(pkt);
                }
            }
            Control::ReflectReq { .. } => {}
        }
    }
}
