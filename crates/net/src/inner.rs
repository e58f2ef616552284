//! The state an endpoint's tasks share (identity, sockets, relay and presence views, NAT
//! facts), and what we tell peers about reaching us.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use p2pcall_proto::PeerId;
use p2pcall_proto::packet::Control;
use p2pcall_proto::peer::{Mapping, Reach};
use p2pcall_proto::relay::ClientFrame;
use p2pcall_transport::Identity;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::NetError;
use crate::connection::{LiveConn, PeerConnection};
use crate::event::{Event, RelayTransport};
use crate::roster::Roster;
use crate::socket::{MagicSocket, canonical};

/// Most local candidates announced.
pub(crate) const MAX_LOCAL_CANDIDATES: usize = 16;

pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) name: Mutex<String>,
    pub(crate) socket: Arc<MagicSocket>,
    pub(crate) quinn: quinn::Endpoint,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) relay_cmd: mpsc::Sender<ClientFrame>,
    /// Beacons and `ParkGone` packets, for the relay client while its session is parked.
    pub(crate) park_packets: mpsc::Sender<crate::socket::ControlPacket>,
    /// Live connections per peer, oldest first (probes go to each; the newest steers the
    /// peer's route).
    pub(crate) conns: Mutex<HashMap<PeerId, Vec<LiveConn>>>,
    /// Random per endpoint, announced in every `Hello` (see [`PeerFrame::Hello`]).
    pub(crate) instance: u64,
    /// Serial of the next connection (never 0: 0 is "no owner" of a route).
    pub(crate) next_serial: std::sync::atomic::AtomicU64,
    pub(crate) observed: Mutex<Option<SocketAddr>>,
    /// The key of the relay this endpoint first had a session with: every later session
    /// (a reconnect, on another network) must present the same one.
    pub(crate) relay_key: Mutex<Option<PeerId>>,
    /// The relays of our relay's cluster, as it listed them (ours first).
    pub(crate) cluster_relays: Mutex<Vec<p2pcall_proto::relay::RelayEntry>>,
    /// The peers online, as presence reports them.
    pub(crate) roster: Roster,
    pub(crate) relay_up: tokio::sync::watch::Sender<Option<RelayTransport>>,
    pub(crate) reflections: Mutex<HashMap<[u8; 12], oneshot::Sender<SocketAddr>>>,
    /// The relay's reflection addresses (from its welcome).
    pub(crate) reflectors: Mutex<Vec<SocketAddr>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) direct_paths: bool,
    /// Our NAT's mapping behaviour; `None` while being measured.
    pub(crate) mapping: tokio::sync::watch::Sender<Option<Mapping>>,
    /// Bumped when the local interface addresses or the port mapping change.
    pub(crate) net_epoch: tokio::sync::watch::Sender<u64>,
    /// The gateway's port mapping client (keeps the mapping renewed while alive).
    pub(crate) port_mapper: Option<portmapper::Client>,
    /// The public address the gateway mapped for us.
    pub(crate) mapped: Mutex<Option<SocketAddr>>,
    /// Probes toward unvalidated addresses, all connections together (see
    /// [`UNVALIDATED_PROBES_PER_S`]).
    pub(crate) probe_budget: Mutex<p2pcall_proto::limits::TokenBucket>,
    /// Such probes dropped for want of budget.
    pub(crate) probes_dropped: std::sync::atomic::AtomicU64,
    /// Auxiliary (birthday) sockets open, all connections together (at most
    /// [`MAX_AUX_SOCKETS`]).
    pub(crate) aux_open: std::sync::atomic::AtomicUsize,
}

/// Probes per second toward addresses that have not answered, all connections together:
/// one birthday attempt (100/s) and the rounds of several connections fit; a few hostile
/// peers cannot make this endpoint a probe cannon.
pub(crate) const UNVALIDATED_PROBES_PER_S: f64 = 250.0;
/// Auxiliary sockets open at once, all connections together: two birthday attempts. The soft
/// file-descriptor limit is raised at start too (`raise_fd_limit`).
pub(crate) const MAX_AUX_SOCKETS: usize = 2 * p2pcall_nat::BIRTHDAY_SOCKETS as usize;

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

    pub(crate) async fn reflect(&self, server: SocketAddr) -> Result<SocketAddr, NetError> {
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

    pub(crate) async fn netcheck(&self) -> Result<p2pcall_nat::classify::NatReport, NetError> {
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
    pub(crate) fn reach(&self) -> Reach {
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

/// Local addresses a peer may reach us on: interface addresses with our port, the address
/// the relay observed, and the observed IP with our own port.
pub(crate) fn local_candidates(inner: &Inner) -> Vec<SocketAddr> {
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
