//! The path-switching ("magic") UDP socket under quinn.
//!
//! One UDP socket per peer process carries three kinds of traffic:
//! * the QUIC connection to the relay (real address, passed through unchanged);
//! * peer-to-peer QUIC connections, which quinn addresses to a stable *virtual* address per
//!   peer (`240.0.0.0/4`, reserved and never routed). Each packet goes out on that peer's
//!   currently selected path: wrapped in a `RelaySend` header to the relay, or straight to a
//!   direct address. Incoming packets on either path are mapped back to the virtual address,
//!   so quinn never sees the path change and the connection survives every switch;
//! * p2pcall's own non-QUIC packets (probes, reflection answers), handed to the endpoint.
//!
//! Routing decisions come from the sans-IO [`p2pcall_nat::PathManager`] of the connection
//! that owns the peer's route (the newest one: see [`PeerRoute::claim`]); this module only
//! applies them. QUIC handshake packets (long header) always take the path of last resort
//! (the relay, or a LAN peer's announced address): a handshake is how a peer that restarted
//! on a new port comes back, so it must never follow a direct path learnt by an older
//! connection.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use p2pcall_nat::Path;
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::{self, Control, RelayRecv, RelaySend};
use parking_lot::{Mutex, RwLock};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

/// Most peers (virtual addresses) one endpoint tracks; packets from further unknown senders
/// are dropped.
pub const MAX_ROUTES: usize = 4096;
/// Direct addresses remembered per peer.
const MAX_DIRECT_PER_PEER: usize = 16;
/// GSO batches are capped so that, with a relay header on every segment, they stay below the
/// 64 KiB UDP limit.
const MAX_SEGMENTS: usize = 32;
/// Kernel socket buffer size requested (capped by `net.core.rmem_max`/`wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// Port of every virtual address (any fixed value works; quinn only needs stability).
const VIRTUAL_PORT: u16 = 7;

/// Where relayed packets go.
#[derive(Debug, Clone)]
pub(crate) enum RelayRoute {
    /// Not connected to a relay: relayed packets are dropped (as if lost).
    None,
    /// UDP data path: `RelaySend` packets to `addr`, bound to the session by `tag`.
    Udp { addr: SocketAddr, tag: [u8; 16] },
    /// TCP+TLS fallback: packets go to the relay client's writer task.
    Tcp { tx: mpsc::Sender<(PeerId, Vec<u8>)> },
}

/// A packet for quinn that arrived other than on the main socket.
#[derive(Debug)]
pub(crate) enum Queued {
    /// From the relay's TCP fallback, sent by this peer.
    Relayed(PeerId, Vec<u8>),
    /// On one of a connection's auxiliary (birthday) sockets, from a validated address.
    Direct(Arc<PeerRoute>, SocketAddr, Vec<u8>),
}

/// Per-peer routing state shared between the socket and the connection's path task.
#[derive(Debug)]
pub struct PeerRoute {
    /// The peer.
    pub id: PeerId,
    /// The stable address quinn uses for this peer.
    pub vaddr: SocketAddr,
    /// The selected path, and the auxiliary socket a direct path leaves on (if not the main
    /// socket).
    path: Mutex<(Path, Option<Arc<tokio::net::UdpSocket>>)>,
    /// The address mDNS announced for this peer (LAN-only mode): it replaces the relay as
    /// the path of last resort, before any probe and after a direct path dies.
    lan: Mutex<Option<SocketAddr>>,
    last_direct_rx: Mutex<Option<(SocketAddr, Instant)>>,
    /// Bytes sent via the relay / direct, and received via the relay / direct.
    pub counters: PathCounters,
    /// Live connections using this route; routes without any may be evicted.
    pub(crate) conns: std::sync::atomic::AtomicUsize,
    /// Serial of the connection whose path manager steers this route (0: none). A newer
    /// connection to the same peer takes it over; an older one may no longer change it.
    owner: tokio::sync::watch::Sender<u64>,
    /// The path packets take (what [`PeerRoute::path`] returns), for waiting on changes.
    path_tx: tokio::sync::watch::Sender<Path>,
    /// Every address mDNS announced for the peer (kept mapped when a connection's direct
    /// addresses are forgotten).
    lan_all: Mutex<Vec<SocketAddr>>,
}

/// Traffic counters per path.
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Bytes sent through the relay.
    pub tx_relay: AtomicU64,
    /// Bytes sent directly.
    pub tx_direct: AtomicU64,
    /// Bytes received through the relay.
    pub rx_relay: AtomicU64,
    /// Bytes received directly.
    pub rx_direct: AtomicU64,
}

impl PeerRoute {
    /// The path packets take now.
    pub fn path(&self) -> Path {
        self.path_and_socket().0
    }

    fn path_and_socket(&self) -> (Path, Option<Arc<tokio::net::UdpSocket>>) {
        let (p, sock) = {
            let g = self.path.lock();
            (g.0, g.1.clone())
        };
        match (p, self.lan()) {
            (Path::Relay, Some(a)) => (Path::Direct(a), None),
            _ => (p, sock),
        }
    }

    /// The path of last resort: the relay, or the peer's mDNS-announced address.
    fn fallback_path(&self) -> Path {
        self.lan().map_or(Path::Relay, Path::Direct)
    }

    /// The peer's mDNS-announced address, if it was found on the LAN.
    pub fn lan(&self) -> Option<SocketAddr> {
        *self.lan.lock()
    }

    /// The connection that steers this route now (0: none).
    pub(crate) fn owner(&self) -> u64 {
        *self.owner.borrow()
    }

    /// Follows ownership changes (a connection that gains the route applies its path).
    pub(crate) fn watch_owner(&self) -> tokio::sync::watch::Receiver<u64> {
        self.owner.subscribe()
    }

    /// Follows path changes.
    pub(crate) fn watch_path(&self) -> tokio::sync::watch::Receiver<Path> {
        self.path_tx.subscribe()
    }

    /// Connection `serial` takes the route over, on the relay path: a new connection (the
    /// newest one steers, and whatever older ones learnt, their direct path and their last
    /// direct packet, is forgotten at once), or the next one when the owner ended.
    pub(crate) fn claim(&self, serial: u64) {
        {
            let mut g = self.path.lock();
            self.owner.send_replace(serial);
            *g = (Path::Relay, None);
        }
        {
            let mut g = self.last_direct_rx.lock();
            *g = None;
        }
        self.path_tx.send_replace(self.path());
    }

    /// Connection `serial` ended: if it owned the route, `next` (another live connection to
    /// the peer, if any) takes it over; returns whether `serial` was the owner.
    pub(crate) fn release(&self, serial: u64, next: Option<u64>) -> bool {
        if self.owner() != serial {
            return false;
        }
        self.claim(next.unwrap_or(0));
        true
    }

    /// Selects `p` on behalf of connection `serial`, if it owns the route (returns whether
    /// it did); a direct path leaves on `sock` if given, else on the main socket.
    pub(crate) fn set_path(
        &self,
        serial: u64,
        p: Path,
        sock: Option<Arc<tokio::net::UdpSocket>>,
    ) -> bool {
        {
            let mut g = self.path.lock();
            // Checked under the path lock, so a claim cannot slip between check and write.
            if self.owner() != serial {
                return false;
            }
            *g = (p, sock);
        }
        self.path_tx.send_replace(self.path());
        true
    }

    /// Notes a direct QUIC packet from `src` (for the path manager's liveness tracking).
    fn note_direct_rx(&self, src: SocketAddr, now: Instant, len: usize) {
        {
            let mut g = self.last_direct_rx.lock();
            *g = Some((src, now));
        }
        self.counters
            .rx_direct
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Takes the time and source of the last direct QUIC packet, if any since the last call.
    pub(crate) fn take_direct_rx(&self) -> Option<(SocketAddr, Instant)> {
        self.last_direct_rx.lock().take()
    }
}

#[derive(Debug, Default)]
struct Routes {
    by_vaddr: HashMap<SocketAddr, Arc<PeerRoute>>,
    by_peer: HashMap<PeerId, Arc<PeerRoute>>,
    /// Validated direct addresses: the route their packets belong to, and the connection
    /// (serial) that validated them (0: announced by mDNS).
    by_direct: HashMap<SocketAddr, (Arc<PeerRoute>, u64)>,
    next_index: u32,
}

/// A non-QUIC packet received on the socket, for the endpoint's control task.
#[derive(Debug)]
pub(crate) struct ControlPacket {
    pub from: SocketAddr,
    pub at: Instant,
    pub packet: Control,
    /// The socket it arrived on ([`p2pcall_nat::MAIN_SOCKET`] or a connection's auxiliary).
    pub via: p2pcall_nat::Via,
}

/// The socket quinn runs on.
pub struct MagicSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    v6: bool,
    routes: RwLock<Routes>,
    relay: RwLock<RelayRoute>,
    relay_quic_addr: RwLock<Option<SocketAddr>>,
    control_tx: mpsc::Sender<ControlPacket>,
    queued: Mutex<mpsc::Receiver<Queued>>,
    queued_tx: mpsc::Sender<Queued>,
    /// Packets dropped because their source or destination was unknown.
    pub dropped: AtomicU64,
}

impl fmt::Debug for MagicSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MagicSocket")
            .field("local", &self.io.local_addr().ok())
            .finish_non_exhaustive()
    }
}

pub use p2pcall_transport::udp::canonical;

fn is_virtual(a: &SocketAddr) -> bool {
    matches!(a, SocketAddr::V4(v4) if v4.ip().octets()[0] >= 240 && v4.port() == VIRTUAL_PORT)
}

impl MagicSocket {
    /// Binds `addr` (use `[::]:port` for dual stack). Returns the socket and the receiver of
    /// non-QUIC control packets.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<(Arc<Self>, mpsc::Receiver<ControlPacket>)> {
        let std = p2pcall_transport::udp::bind(addr, SOCKET_BUFFER)?;
        let state = UdpSocketState::new((&std).into())?;
        let v6 = std.local_addr()?.is_ipv6();
        let io = tokio::net::UdpSocket::from_std(std)?;
        let (control_tx, control_rx) = mpsc::channel(1024);
        let (queued_tx, queued) = mpsc::channel(1024);
        Ok((
            Arc::new(Self {
                io,
                state,
                v6,
                routes: RwLock::default(),
                relay: RwLock::new(RelayRoute::None),
                relay_quic_addr: RwLock::new(None),
                control_tx,
                queued: Mutex::new(queued),
                queued_tx,
                dropped: AtomicU64::new(0),
            }),
            control_rx,
        ))
    }

    /// Address in the socket's own family (quinn compares addresses exactly).
    pub(crate) fn family(&self, a: SocketAddr) -> SocketAddr {
        p2pcall_transport::udp::in_family(self.v6, a)
    }

    /// Whether the socket is IPv6 (dual-stack); an IPv4 socket can reach no IPv6 address.
    pub(crate) fn is_v6(&self) -> bool {
        self.v6
    }

    /// The local port.
    pub fn local_port(&self) -> u16 {
        self.io.local_addr().map_or(0, |a| a.port())
    }

    pub(crate) fn set_relay_quic_addr(&self, a: Option<SocketAddr>) {
        {
            let mut g = self.relay_quic_addr.write();
            *g = a.map(canonical);
        }
    }

    pub(crate) fn set_relay_route(&self, r: RelayRoute) {
        {
            let mut g = self.relay.write();
            *g = r;
        }
    }

    /// Where packets for quinn that did not arrive on the main socket are queued.
    pub(crate) fn queue(&self) -> mpsc::Sender<Queued> {
        self.queued_tx.clone()
    }

    /// Whether QUIC packets from `addr` belong to `route` (a validated direct address).
    pub(crate) fn is_direct_of(&self, addr: SocketAddr, route: &Arc<PeerRoute>) -> bool {
        self.routes
            .read()
            .by_direct
            .get(&canonical(addr))
            .is_some_and(|d| Arc::ptr_eq(&d.0, route))
    }

    /// The route of `id`, created on first use. `None` when the table is full.
    pub fn route(&self, id: PeerId) -> Option<Arc<PeerRoute>> {
        if let Some(r) = self.routes.read().by_peer.get(&id) {
            return Some(r.clone());
        }
        let mut routes = self.routes.write();
        if let Some(r) = routes.by_peer.get(&id) {
            return Some(r.clone());
        }
        if routes.by_peer.len() >= MAX_ROUTES {
            // Full (a hostile relay could invent senders): forget a route no connection
            // uses, so legitimate peers are never locked out.
            let idle = routes
                .by_peer
                .values()
                .find(|r| r.conns.load(Ordering::Relaxed) == 0)
                .cloned()?;
            routes.by_peer.remove(&idle.id);
            routes.by_vaddr.remove(&idle.vaddr);
            routes.by_direct.retain(|_, v| !Arc::ptr_eq(&v.0, &idle));
        }
        routes.next_index += 1;
        let n = routes.next_index;
        let ip = Ipv4Addr::new(
            240 | ((n >> 24) as u8 & 0x0f),
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        );
        let r = Arc::new(PeerRoute {
            id,
            vaddr: SocketAddr::new(IpAddr::V4(ip), VIRTUAL_PORT),
            path: Mutex::new((Path::Relay, None)),
            lan: Mutex::new(None),
            last_direct_rx: Mutex::new(None),
            counters: PathCounters::default(),
            conns: std::sync::atomic::AtomicUsize::new(0),
            owner: tokio::sync::watch::Sender::new(0),
            path_tx: tokio::sync::watch::Sender::new(Path::Relay),
            lan_all: Mutex::new(Vec::new()),
        });
        routes.by_vaddr.insert(r.vaddr, r.clone());
        routes.by_peer.insert(id, r.clone());
        Some(r)
    }

    /// The route behind a virtual address quinn reports.
    pub fn route_by_vaddr(&self, a: SocketAddr) -> Option<Arc<PeerRoute>> {
        self.routes.read().by_vaddr.get(&canonical(a)).cloned()
    }

    /// Lets QUIC packets from `addr` be attributed to `route`: connection `serial` just
    /// validated it with an authenticated probe (0: mDNS announced it).
    pub(crate) fn map_direct(&self, addr: SocketAddr, route: &Arc<PeerRoute>, serial: u64) {
        let addr = canonical(addr);
        let mut routes = self.routes.write();
        let mine = routes
            .by_direct
            .values()
            .filter(|(r, _)| Arc::ptr_eq(r, route))
            .count();
        if mine < MAX_DIRECT_PER_PEER || routes.by_direct.contains_key(&addr) {
            routes.by_direct.insert(addr, (route.clone(), serial));
        }
    }

    /// Forgets the direct addresses of `route` that connection `keep` did not validate
    /// (mDNS-announced ones stay): those of a peer process that is gone, which must neither
    /// attract its packets nor fill the per-peer cap that a new process's addresses need.
    pub(crate) fn forget_direct(&self, route: &Arc<PeerRoute>, keep: u64) {
        let lan = route.lan_all.lock().clone();
        {
            let mut routes = self.routes.write();
            routes.by_direct.retain(|a, (r, serial)| {
                !Arc::ptr_eq(r, route) || *serial == keep || lan.contains(a)
            });
        }
    }

    /// Records the addresses mDNS announced for `route`'s peer: QUIC packets from any of them
    /// are attributed to it (the handshake then proves the key), and `preferred` becomes the
    /// path of last resort. The previous preferred address stops being attributed to the peer
    /// unless it is still announced.
    pub(crate) fn set_lan(
        &self,
        route: &Arc<PeerRoute>,
        preferred: SocketAddr,
        all: &[SocketAddr],
    ) {
        let old = route.lan.lock().replace(canonical(preferred));
        if let Some(old) = old
            && !all.contains(&old)
        {
            let mut routes = self.routes.write();
            if routes
                .by_direct
                .get(&old)
                .is_some_and(|(r, _)| Arc::ptr_eq(r, route))
            {
                routes.by_direct.remove(&old);
            }
        }
        {
            let mut l = route.lan_all.lock();
            *l = all.iter().copied().map(canonical).collect();
        }
        route.path_tx.send_replace(route.path());
        for a in all {
            self.map_direct(*a, route, 0);
        }
    }

    /// Sends one of our own (non-QUIC) packets; errors are logged, as for lost packets.
    pub(crate) fn send_control(&self, dst: SocketAddr, payload: &[u8]) {
        if let Err(e) = self.io.try_send_to(payload, self.family(dst)) {
            tracing::debug!(%dst, "control packet not sent: {e}");
        }
    }

    fn send_raw(&self, t: &Transmit<'_>) -> io::Result<()> {
        let r = self
            .io
            .try_io(Interest::WRITABLE, || self.state.send((&self.io).into(), t));
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                // Unreachable networks and the like: the packet is lost, QUIC recovers.
                tracing::trace!(dst = %t.destination, "send failed: {e}");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn send_relayed(&self, route: &PeerRoute, t: &Transmit<'_>) -> io::Result<()> {
        let relay = self.relay.read().clone();
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        match relay {
            RelayRoute::None => Ok(()),
            RelayRoute::Udp { addr, tag } => {
                let n = t.contents.len().div_ceil(seg);
                let mut buf = Vec::with_capacity(t.contents.len() + n * packet::RELAY_SEND_HEADER);
                for chunk in t.contents.chunks(seg) {
                    RelaySend::write_header(&mut buf, &tag, &route.id);
                    buf.extend_from_slice(chunk);
                }
                route
                    .counters
                    .tx_relay
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                self.send_raw(&Transmit {
                    destination: self.family(addr),
                    ecn: t.ecn,
                    contents: &buf,
                    segment_size: (n > 1).then_some(seg + packet::RELAY_SEND_HEADER),
                    src_ip: None,
                })
            }
            RelayRoute::Tcp { tx } => {
                for chunk in t.contents.chunks(seg) {
                    route
                        .counters
                        .tx_relay
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    // A full queue is congestion: drop, QUIC's congestion control reacts.
                    let _ = tx.try_send((route.id, chunk.to_vec()));
                }
                Ok(())
            }
        }
    }

    /// Rewrites received datagrams in place: keeps those for quinn (with their source mapped
    /// to virtual addresses), hands control packets to the endpoint, drops the rest. Returns
    /// how many entries remain, compacted at the front.
    fn process(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let now = Instant::now();
        let relay_addr = *self.relay_quic_addr.read();
        let mut kept = 0;
        for i in 0..n {
            let src = canonical(meta[i].addr);
            let len = meta[i].len;
            let buf = &mut bufs[i][..len];
            let Some(&first) = buf.first() else { continue };
            let keep = if packet::is_quic(first) {
                if Some(src) == relay_addr {
                    true
                } else {
                    let route = self.routes.read().by_direct.get(&src).map(|d| d.0.clone());
                    match route {
                        Some(r) => {
                            r.note_direct_rx(src, now, len);
                            meta[i].addr = self.family(r.vaddr);
                            true
                        }
                        None => {
                            tracing::trace!(%src, "QUIC packet from an address no route knows");
                            false
                        }
                    }
                }
            } else if first == packet::RELAY_RECV && Some(src) == relay_addr {
                self.unwrap_relayed(buf, &mut meta[i])
            } else {
                if let Ok(pkt) = Control::decode(buf) {
                    let _ = self.control_tx.try_send(ControlPacket {
                        from: src,
                        at: now,
                        packet: pkt,
                        via: p2pcall_nat::MAIN_SOCKET,
                    });
                }
                false
            };
            if keep {
                p2pcall_transport::udp::move_entry(bufs, meta, i, kept);
                kept += 1;
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        kept
    }

    /// Strips the relay header from every segment of a (possibly GRO-coalesced) buffer and
    /// maps the source to the sender's virtual address. Segments from a sender other than the
    /// first one's are dropped (rare; QUIC recovers them).
    fn unwrap_relayed(&self, buf: &mut [u8], meta: &mut RecvMeta) -> bool {
        let stride = meta.stride.max(1);
        let Ok(first) = RelayRecv::decode(&buf[..stride.min(buf.len())]) else {
            return false;
        };
        let from = first.from;
        let Some(route) = self.route(from) else {
            return false;
        };
        let mut out = 0;
        let mut off = 0;
        let mut new_stride = 0;
        while off < buf.len() {
            let end = (off + stride).min(buf.len());
            let seg_ok = buf[off] == packet::RELAY_RECV
                && end - off > packet::RELAY_RECV_HEADER
                && buf[off + 1..off + packet::RELAY_RECV_HEADER] == from.as_bytes()[..];
            if seg_ok {
                let payload = off + packet::RELAY_RECV_HEADER..end;
                let plen = payload.len();
                if new_stride == 0 {
                    new_stride = plen;
                }
                buf.copy_within(payload, out);
                out += plen;
            }
            off = end;
        }
        if out == 0 {
            return false;
        }
        route
            .counters
            .rx_relay
            .fetch_add(out as u64, Ordering::Relaxed);
        meta.len = out;
        meta.stride = new_stride;
        meta.addr = self.family(route.vaddr);
        true
    }

    fn poll_queued(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Option<usize> {
        let mut rx = self.queued.lock();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Poll::Ready(Some(q)) = rx.poll_recv(cx) else {
                break;
            };
            let (route, pkt) = match q {
                Queued::Relayed(from, pkt) => {
                    let Some(route) = self.route(from) else {
                        continue;
                    };
                    route
                        .counters
                        .rx_relay
                        .fetch_add(pkt.len() as u64, Ordering::Relaxed);
                    (route, pkt)
                }
                Queued::Direct(route, src, pkt) => {
                    route.note_direct_rx(src, Instant::now(), pkt.len());
                    (route, pkt)
                }
            };
            if pkt.is_empty() || pkt.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..pkt.len()].copy_from_slice(&pkt);
            meta[n] = RecvMeta {
                addr: self.family(route.vaddr),
                len: pkt.len(),
                stride: pkt.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        (n > 0).then_some(n)
    }
}

impl quinn::AsyncUdpSocket for MagicSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        p2pcall_transport::udp::writable_poller(self)
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let dst = canonical(t.destination);
        if !is_virtual(&dst) {
            return self.send_raw(t);
        }
        let Some(route) = self.route_by_vaddr(dst) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let (path, sock) = if packet::is_quic_long_header(t.contents.first().copied().unwrap_or(0))
        {
            (route.fallback_path(), None)
        } else {
            route.path_and_socket()
        };
        match (path, sock) {
            (Path::Direct(addr), sock) => {
                route
                    .counters
                    .tx_direct
                    .fetch_add(t.contents.len() as u64, Ordering::Relaxed);
                let destination = self.family(addr);
                match sock {
                    // An auxiliary socket (birthday path): rare and slow enough that plain
                    // sends per segment do; a full buffer is loss, QUIC recovers.
                    Some(s) => {
                        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
                        for chunk in t.contents.chunks(seg) {
                            let _ = s.try_send_to(chunk, destination);
                        }
                        Ok(())
                    }
                    // quinn remembers the local IP of the first packets it saw (on any
                    // path); the kernel must choose the source for this destination, or a
                    // switch from 127.0.0.1 to [fd00::2] fails with EINVAL.
                    None => self.send_raw(&Transmit {
                        destination,
                        src_ip: None,
                        ..*t
                    }),
                }
            }
            (Path::Relay, _) => self.send_relayed(&route, t),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if let Some(n) = self.poll_queued(cx, bufs, meta) {
            return Poll::Ready(Ok(n));
        }
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let res = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            });
            match res {
                Ok(n) => {
                    let kept = self.process(bufs, meta, n);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // ICMP errors surface here (port unreachable on a dead direct path);
                    // they must not stop the endpoint.
                    tracing::trace!("recv error: {e}");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_SEGMENTS)
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

impl p2pcall_transport::udp::TokioUdp for MagicSocket {
    fn tokio_udp(&self) -> &tokio::net::UdpSocket {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_route_table_evicts_an_unused_route() {
        let (s, _rx) = MagicSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let busy = s.route(PeerId::from_bytes([0; 32])).unwrap();
        busy.conns.fetch_add(1, Ordering::Relaxed);
        for i in 1..MAX_ROUTES as u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            s.route(PeerId::from_bytes(k)).unwrap();
        }
        assert_eq!(s.routes.read().by_peer.len(), MAX_ROUTES);
        let newcomer = s
            .route(PeerId::from_bytes([0xff; 32]))
            .expect("an idle route is evicted");
        let routes = s.routes.read();
        assert_eq!(routes.by_peer.len(), MAX_ROUTES);
        assert!(
            routes.by_peer.contains_key(&busy.id),
            "a route in use is never evicted"
        );
        assert!(routes.by_vaddr.contains_key(&newcomer.vaddr));
    }

    #[test]
    fn virtual_addresses_are_recognised_in_both_families() {
        let v: SocketAddr = "240.0.0.1:7".parse().unwrap();
        assert!(is_virtual(&v));
        let mapped: SocketAddr = "[::ffff:240.0.0.1]:7".parse().unwrap();
        assert_eq!(canonical(mapped), v);
        assert!(!is_virtual(&"10.0.0.1:7".parse().unwrap()));
        assert!(!is_virtual(&"240.0.0.1:8".parse().unwrap()));
    }
}
