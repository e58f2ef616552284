//! Setting up and driving each peer connection: the control stream (hello, candidates),
//! the sans-IO path manager (probes, hole punching, path switches), auxiliary sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_nat::{MAIN_SOCKET, Path, PathEvent, PathManager, Via};
use p2pcall_proto::PeerId;
use p2pcall_proto::frame::RawFrame;
use p2pcall_proto::packet::Control;
use p2pcall_proto::peer::{Datagram, PeerFrame};
use p2pcall_transport::framed::FrameReader;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::connection::{
    CLOSE_PEER_RESTARTED, CLOSE_PROTOCOL, ConnShared, LiveConn, PeerConnection,
};
use crate::inner::Inner;
use crate::socket::{ControlPacket, PeerRoute, canonical};

/// Label of the TLS exporter that yields the probe MAC key of a connection.
pub(crate) const PROBE_KEY_LABEL: &[u8] = b"p2pcall probe key v1";
/// Kernel buffer of each auxiliary (birthday) socket.
pub(crate) const AUX_SOCKET_BUFFER: usize = 256 << 10;

pub(crate) fn start_connection(
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
        vouched: tokio::sync::watch::Sender::new(None),
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
        // One cap across every connection: a few hostile peers claiming symmetric NATs
        // cannot exhaust the process's file descriptors.
        let open = &self.inner.aux_open;
        if open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < crate::inner::MAX_AUX_SOCKETS).then_some(n + 1)
            })
            .is_err()
        {
            return None;
        }
        let sock = match p2pcall_transport::udp::bind(any, AUX_SOCKET_BUFFER)
            .and_then(tokio::net::UdpSocket::from_std)
        {
            Ok(s) => s,
            Err(e) => {
                open.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!("auxiliary socket: {e}");
                return None;
            }
        };
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

    /// Sends from socket `via`; nothing when an auxiliary socket cannot be had (the endpoint's
    /// cap, or binding failed): from the main socket the probe would open no new mapping.
    fn send(&mut self, via: Via, dst: SocketAddr, payload: &[u8]) {
        if via == MAIN_SOCKET {
            self.inner.socket.send_control(dst, payload);
        } else if let Some(s) = self.get(via) {
            let _ = s.try_send_to(payload, self.inner.socket.family(dst));
        }
    }

    fn release(&mut self, keep: Option<Via>) {
        let before = self.socks.len();
        self.socks.retain(|via, (_, task)| {
            let keep = Some(*via) == keep;
            if !keep {
                task.abort();
            }
            keep
        });
        let closed = before - self.socks.len();
        self.inner.aux_open.fetch_sub(closed, Ordering::AcqRel);
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
    if let Err(e) = p2pcall_transport::framed::write_all(send, &buf).await {
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

/// Drives one connection's control stream and path manager until the connection ends.
async fn drive_connection(
    inner: Arc<Inner>,
    shared: Arc<ConnShared>,
    (mut send, recv): (quinn::SendStream, quinn::RecvStream),
    mut probe_rx: mpsc::Receiver<ControlPacket>,
    dg_tx: mpsc::Sender<Bytes>,
    (dialer, aux): (bool, AuxSockets),
) {
    let conn = shared.conn.clone();
    let mut owner_rx = shared.route.watch_owner();
    let mut mapping_rx = inner.mapping.subscribe();
    let mut epoch_rx = inner.net_epoch.subscribe();
    let mut vouched_rx = shared.vouched.subscribe();
    let mut d = ConnDriver::new(inner.clone(), shared.clone(), dialer, aux);
    let hello = d.hello();
    send_frame(&mut send, &hello, d.peer).await;
    let mut reader = FrameReader::new(recv, p2pcall_proto::peer::MAX_FRAME);
    let mut control_open = true;
    let reason = loop {
        let timeout =
            d.pm.poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut announce = false;
        tokio::select! {
            _ = inner.cancel.cancelled() => break "endpoint closed".to_string(),
            e = conn.closed() => break e.to_string(),
            f = reader.next(), if control_open => match f {
                Ok(raw) => if let Err(why) = d.control_frame(raw) {
                    break why;
                },
                Err(p2pcall_transport::framed::FrameReadError::Closed) => control_open = false,
                Err(e) => {
                    conn.close(CLOSE_PROTOCOL.into(), format!("control stream: {e}").as_bytes());
                    break format!("control stream: {e}");
                }
            },
            Some(pkt) = probe_rx.recv() => d.probe(pkt),
            Ok(()) = mapping_rx.changed() => {
                let m = *mapping_rx.borrow_and_update();
                if let Some(m) = m {
                    d.pm.set_local_mapping(m);
                    announce = true;
                }
            }
            Ok(()) = epoch_rx.changed() => {
                epoch_rx.borrow_and_update();
                // New interface addresses: tell the peer, and punch again.
                d.pm.reprobe(Instant::now());
                announce = true;
            }
            Ok(()) = owner_rx.changed() => {}
            Ok(()) = vouched_rx.changed() => {
                let vouched = *vouched_rx.borrow_and_update();
                if let Some(a) = vouched.filter(|_| inner.direct_paths) {
                    d.pm.set_remote_vouched(a);
                    d.pm.request_round(Instant::now());
                }
            }
            dg = conn.read_datagram() => match dg {
                Ok(dg) => handle_datagram(&shared, &dg_tx, dg),
                Err(e) => break e.to_string(),
            },
            _ = tokio::time::sleep_until(timeout.into()) => {}
        }
        if announce && inner.direct_paths {
            send_frame(&mut send, &PeerFrame::Candidates(inner.reach()), d.peer).await;
            d.pm.request_round(Instant::now());
        }
        for frame in d.step(Instant::now()).await {
            send_frame(&mut send, &frame, d.peer).await;
        }
    };
    d.finish(reason).await;
}

/// One connection's path state: its sans-IO path manager, whether it steers the peer's
/// route, and its auxiliary sockets.
struct ConnDriver {
    inner: Arc<Inner>,
    shared: Arc<ConnShared>,
    peer: PeerId,
    serial: u64,
    dialer: bool,
    pm: PathManager,
    /// This connection steered the peer's route at the last step.
    owned: bool,
    aux: AuxSockets,
}

impl ConnDriver {
    fn new(inner: Arc<Inner>, shared: Arc<ConnShared>, dialer: bool, aux: AuxSockets) -> Self {
        let mut key = [0u8; 32];
        if shared
            .conn
            .export_keying_material(&mut key, PROBE_KEY_LABEL, b"")
            .is_err()
        {
            shared
                .conn
                .close(CLOSE_PROTOCOL.into(), b"no keying material");
        }
        let pm = PathManager::new(inner.identity.id(), key, dialer);
        Self {
            peer: shared.peer,
            serial: shared.serial,
            owned: shared.route.owner() == shared.serial,
            inner,
            shared,
            dialer,
            pm,
            aux,
        }
    }

    /// Our `Hello`: name, instance, and how to reach us.
    fn hello(&mut self) -> PeerFrame {
        let reach = self.inner.reach();
        self.pm.set_local_mapping(reach.mapping);
        PeerFrame::Hello {
            name: self.inner.name.lock().clone(),
            instance: self.inner.instance,
            reach,
        }
    }

    /// A frame from the peer's control stream; `Err` closes the connection.
    fn control_frame(&mut self, raw: RawFrame<'_>) -> Result<(), String> {
        let reach = match PeerFrame::decode(raw) {
            Ok(PeerFrame::Hello {
                name,
                instance,
                reach,
            }) => {
                *self.shared.remote_name.lock() = Some(name);
                *self.shared.remote_instance.lock() = Some(instance);
                close_restarted(&self.inner, &self.shared, instance);
                // The peer's connection exists now: ask the relay to tell it our address
                // (the one thing its birthday technique may aim at).
                if self.inner.direct_paths {
                    let vouch = p2pcall_proto::relay::ClientFrame::Vouch { to: self.peer };
                    let _ = self.inner.relay_cmd.try_send(vouch);
                }
                reach
            }
            Ok(PeerFrame::Candidates(reach)) => reach,
            Ok(PeerFrame::Punch { .. }) => {
                if self.inner.direct_paths && !self.dialer {
                    self.pm.start_round(Instant::now());
                }
                return Ok(());
            }
            Err(e) => {
                let msg = format!("bad control frame: {e}");
                self.shared
                    .conn
                    .close(CLOSE_PROTOCOL.into(), msg.as_bytes());
                return Err(format!("peer sent a {msg}"));
            }
        };
        if self.inner.direct_paths {
            self.pm.set_remote_nat(reach.mapping);
            self.pm
                .add_remote_candidates(Instant::now(), &reach.candidates);
            self.pm.request_round(Instant::now());
        }
        Ok(())
    }

    /// A probe or probe answer for this connection.
    fn probe(&mut self, pkt: ControlPacket) {
        if self.inner.direct_paths
            && self
                .pm
                .handle_control(pkt.at, pkt.from, pkt.via, &pkt.packet)
        {
            self.inner
                .socket
                .map_direct(pkt.from, &self.shared.route, self.serial);
        }
    }

    /// Runs the path manager up to `now`: takes over the route if this connection came to
    /// steer it, sends its probes, and applies its path changes. Returns the control frames
    /// to send the peer.
    async fn step(&mut self, now: Instant) -> Vec<PeerFrame> {
        let (route, serial) = (&self.shared.route, self.serial);
        self.pm.set_relay_rtt(self.shared.conn.rtt());
        let owns = route.owner() == serial;
        if owns && !self.owned {
            // An older connection ended and this one steers the route now: apply what its
            // path manager knows.
            for a in self.pm.validated() {
                self.inner.socket.map_direct(a, route, serial);
            }
            if let Path::Direct(_) = self.pm.selected() {
                let via = self.aux.get(self.pm.selected_via());
                route.set_path(serial, self.pm.selected(), via);
            }
        }
        self.owned = owns;
        if owns && let Some((addr, at)) = route.take_direct_rx() {
            self.pm.note_rx(at, addr);
        }
        self.pm.handle_timeout(now);
        while let Some(t) = self.pm.poll_transmit() {
            if t.unvalidated && !self.inner.probe_budget.lock().take(now, 1.0) {
                self.inner.probes_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.aux.send(t.via, t.dst, &t.payload);
        }
        self.shared
            .probes_sent
            .store(self.pm.probes_sent(), Ordering::Relaxed);
        let mut frames = Vec::new();
        while let Some(e) = self.pm.poll_event() {
            match e {
                PathEvent::Selected { path, via, rtt } => {
                    let peer = self.peer;
                    if !route.set_path(serial, path, self.aux.get(via)) {
                        tracing::debug!(%peer, ?path, "path of a connection that no longer steers the route");
                        continue;
                    }
                    // For a LAN peer "the relay" is its announced address.
                    let path = route.path();
                    tracing::info!(%peer, ?path, via, ?rtt, "path changed");
                    let at = now;
                    let e = crate::Event::PathChanged {
                        peer,
                        path,
                        rtt,
                        at,
                    };
                    self.inner.emit(e).await;
                }
                PathEvent::SendPunch { round } => frames.push(PeerFrame::Punch { round }),
                PathEvent::ReleaseAux { keep } => self.aux.release(keep),
            }
        }
        frames
    }

    /// The connection ended: the newest other connection to the peer takes over the route
    /// if this one steered it, and the end is reported.
    async fn finish(self, reason: String) {
        let Self {
            inner,
            shared,
            peer,
            serial,
            aux,
            ..
        } = self;
        drop(aux);
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
