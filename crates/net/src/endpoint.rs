//! The endpoint API: commands in (methods), events out (a channel).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::peer::Mapping;
use p2pcall_proto::relay::{ClientFrame, PeerInfo};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::NetError;
use crate::config::EndpointConfig;
use crate::connection::{CLOSE_KEY_MISMATCH, CLOSE_NORMAL, CLOSE_PROTOCOL, PeerConnection};
use crate::event::{Event, RelayTransport};
use crate::inner::{Inner, local_candidates};
use crate::paths::start_connection;
use crate::relay_client;
use crate::roster::Roster;
use crate::socket::{ControlPacket, MagicSocket};

/// How long a dial may take before we give up (relay path, so several RTTs plus the relay).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accepting side waits for the dialer to open the control stream.
const CONTROL_STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive for peer connections: well under common NAT UDP timeouts (~30 s).
const PEER_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Peer connections with no packet for this long are dead.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the local interface addresses are checked for changes.
const INTERFACE_POLL: Duration = Duration::from_secs(2);

/// A running endpoint. Cheap to clone; [`Endpoint::close`] stops everything.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    /// The mDNS responder and browser (LAN-only mode).
    lan: Option<Arc<crate::lan::Lan>>,
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
    let mut t = p2pcall_transport::transport_config(PEER_KEEP_ALIVE, PEER_IDLE_TIMEOUT);
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
        let fds = p2pcall_transport::udp::raise_fd_limit();
        tracing::debug!("open-file limit: {fds}");
        let (socket, control_rx) =
            MagicSocket::bind(cfg.bind).map_err(|source| NetError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let server = p2pcall_transport::quinn_server_config(
            &cfg.identity,
            p2pcall_transport::ALPN_PEER,
            peer_transport(),
        )?;
        let quinn = quinn::Endpoint::new_with_abstract_socket(
            p2pcall_transport::endpoint_config(),
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
        let (park_packets, park_rx) = mpsc::channel(16);
        let inner = Arc::new(Inner {
            park_packets,
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
            relay_key: Mutex::new(None),
            cluster_relays: Mutex::new(Vec::new()),
            roster: Roster::default(),
            relay_up: tokio::sync::watch::Sender::new(None),
            reflections: Mutex::default(),
            reflectors: Mutex::default(),
            cancel: CancellationToken::new(),
            direct_paths: cfg.direct_paths,
            mapping: tokio::sync::watch::Sender::new(None),
            net_epoch: tokio::sync::watch::Sender::new(0),
            port_mapper,
            mapped: Mutex::new(None),
            probe_budget: Mutex::new(p2pcall_proto::limits::TokenBucket::new(
                std::time::Instant::now(),
                crate::inner::UNVALIDATED_PROBES_PER_S,
                crate::inner::UNVALIDATED_PROBES_PER_S * 2.0,
            )),
            probes_dropped: std::sync::atomic::AtomicU64::new(0),
            aux_open: std::sync::atomic::AtomicUsize::new(0),
        });
        let lan = match &cfg.lan {
            Some(lan) => {
                let (handle, browse) = crate::lan::start(&inner, lan)?;
                let handle = Arc::new(handle);
                tokio::spawn(crate::lan::run(inner.clone(), handle.clone(), browse));
                Some(handle)
            }
            None => None,
        };
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
            tokio::spawn(relay_client::run(
                inner.clone(),
                relay,
                relay_cmd_rx,
                park_rx,
            ));
        }
        Ok((Self { inner, lan }, events_rx))
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
        self.inner.roster.list()
    }

    /// Whether the relay reports `peer` offline: our relay session is up, its presence list
    /// is complete, and `peer` is not in it. `false` when we cannot know (no relay session,
    /// presence not asked for, LAN-only mode).
    pub fn peer_offline(&self, peer: &PeerId) -> bool {
        self.inner.roster.is_offline(peer)
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

    /// The display name we announce.
    pub fn name(&self) -> String {
        self.inner.name.lock().clone()
    }

    /// Changes the display name (relay or LAN presence, and future peer hellos).
    pub async fn set_name(&self, name: String) -> Result<(), NetError> {
        {
            let mut n = self.inner.name.lock();
            n.clone_from(&name);
        }
        if let Some(lan) = self.lan.as_ref() {
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
        let cfg = p2pcall_transport::quinn_client_config(
            &inner.identity,
            Some(peer),
            p2pcall_transport::ALPN_PEER,
            peer_transport(),
        )?;
        let connecting = inner.quinn.connect_with(
            cfg,
            inner.socket.family(route.vaddr),
            p2pcall_transport::PEER_SERVER_NAME,
        )?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(NetError::Timeout("connecting to the peer")),
            Ok(Err(e)) => {
                // Someone else answered for this peer (a relay or network routing us
                // elsewhere): say so, with the key it proved.
                return Err(match p2pcall_transport::presented_key(&e.to_string()) {
                    Some(got) => NetError::PeerKeyMismatch {
                        expected: peer,
                        got: Some(got),
                    },
                    None => e.into(),
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let got = p2pcall_transport::peer_id(&conn);
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
        self.lan.as_ref().is_some()
    }

    /// Stops the relay client (or the LAN announcement) and every connection.
    pub async fn close(&self) {
        if let Some(lan) = self.lan.as_ref() {
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
            let got = p2pcall_transport::peer_id(&conn);
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
            Control::Beacon { .. } | Control::ParkGone { .. } => {
                let _ = inner.park_packets.try_send(pkt);
            }
            Control::ReflectReq { .. } | Control::ParkAlive { .. } => {}
        }
    }
}
