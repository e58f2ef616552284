//! The relay's UDP port: forwards `RelaySend` packets and answers reflection requests right
//! in the receive path (lookup, in-place header rewrite, no task hop), and hands QUIC packets
//! (the control plane) to quinn. Forwarded packets of one receive batch that go to the same
//! destination leave in one GSO send (one copy each into the batch buffer).
//!
//! The port has a socket per core (`SO_REUSEPORT`; the kernel spreads the flows over them by
//! their addresses; a duplicate descriptor of one socket instead, all woken for every
//! datagram, measured no faster than one): quinn's ([`RelaySocket`], whose receive path runs
//! in quinn's endpoint task) and the others ([`serve_port`], a task each), so forwarding runs
//! on every core. The others queue the QUIC packets they receive for quinn's socket, which
//! hands them to quinn with its own.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::RwLock;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use p2pcall_proto::PeerId;
use p2pcall_proto::cluster::Hop;
use p2pcall_proto::packet::{self, Control, RelayHop, RelayRecv, RelaySend};
use p2pcall_proto::relay::{MAX_DATA, ServerFrame};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::metrics::{DropReason, Metrics};
use crate::registry::{Route, Session, Sessions};

use p2pcall_transport::udp::canonical;

/// A socket on the relay's UDP port, and what it needs to forward.
pub struct Port {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    v6: bool,
    sessions: Arc<RwLock<Sessions>>,
    metrics: Arc<Metrics>,
    max_batch: usize,
}

/// Most bytes in one GSO send (the UDP length limit, with room for headers).
const MAX_GSO_BYTES: usize = 60_000;

/// Forwarded packets waiting to go to one destination in a single GSO send.
#[derive(Debug, Default)]
struct Batch {
    dst: Option<SocketAddr>,
    buf: Vec<u8>,
    seg: usize,
    count: usize,
    payload_bytes: u64,
    /// A short segment ended the batch.
    closed: bool,
}

/// quinn's socket on the relay port, with the QUIC packets the port's other sockets received.
pub struct RelaySocket {
    port: Port,
    others: parking_lot::Mutex<mpsc::Receiver<Received>>,
}

/// QUIC packets (one buffer: one datagram, or GRO segments of `stride`) another socket of the
/// port received.
#[derive(Debug)]
pub(crate) struct Received {
    meta: RecvMeta,
    data: Vec<u8>,
}

/// QUIC packets waiting from the port's other sockets; more are lost (as the kernel's own
/// buffer would lose them).
const OTHERS_QUEUE: usize = 4096;

impl std::ops::Deref for RelaySocket {
    type Target = Port;
    fn deref(&self) -> &Port {
        &self.port
    }
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket").finish_non_exhaustive()
    }
}

impl RelaySocket {
    /// quinn's socket on the port, and where the other sockets queue QUIC packets for it.
    pub(crate) fn new(port: Port) -> (Self, mpsc::Sender<Received>) {
        let (tx, rx) = mpsc::channel(OTHERS_QUEUE);
        let s = Self {
            port,
            others: parking_lot::Mutex::new(rx),
        };
        (s, tx)
    }

    /// Moves queued packets of the other sockets into quinn's buffers; how many.
    fn take_others(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let mut others = self.others.lock();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Poll::Ready(Some(r)) = others.poll_recv(cx) else {
                break;
            };
            if r.data.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..r.data.len()].copy_from_slice(&r.data);
            meta[n] = RecvMeta {
                len: r.data.len(),
                ..r.meta
            };
            n += 1;
        }
        n
    }
}

/// Runs one of the port's other sockets: forwards what it receives and queues the QUIC
/// packets for quinn's socket, until `cancel`.
pub(crate) async fn serve_port(
    port: Port,
    quic: mpsc::Sender<Received>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let batch = quinn::udp::BATCH_SIZE.max(1);
    let size = 64 * 1024;
    let mut storage = vec![0u8; size * batch];
    let mut meta = vec![RecvMeta::default(); batch];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = port.io.readable() => if r.is_err() { return },
        }
        let mut bufs: Vec<IoSliceMut<'_>> = storage.chunks_mut(size).map(IoSliceMut::new).collect();
        let n = match port.io.try_io(Interest::READABLE, || {
            port.state.recv((&port.io).into(), &mut bufs, &mut meta)
        }) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let now = Instant::now();
        let mut out = Batch::default();
        for i in 0..n {
            let kept = port.process(now, &mut bufs[i], &mut meta[i], &mut out);
            if kept > 0 {
                let data = bufs[i][..kept].to_vec();
                let _ = quic.try_send(Received {
                    meta: meta[i],
                    data,
                });
            }
        }
        port.flush(&mut out);
    }
}

impl Port {
    /// The port's socket `std` (bound, non-blocking), forwarding by `sessions`.
    pub(crate) fn new(
        std: std::net::UdpSocket,
        sessions: Arc<RwLock<Sessions>>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let state = UdpSocketState::new((&std).into())?;
        let v6 = std.local_addr()?.is_ipv6();
        let max_batch = state.max_gso_segments().max(1);
        Ok(Self {
            max_batch,
            io: tokio::net::UdpSocket::from_std(std)?,
            state,
            v6,
            sessions,
            metrics,
        })
    }

    fn family(&self, a: SocketAddr) -> SocketAddr {
        p2pcall_transport::udp::in_family(self.v6, a)
    }

    /// Sends `contents` (GSO segments of `segment_size` if given) without waiting.
    fn send_now(&self, dst: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> bool {
        let t = Transmit {
            destination: self.family(dst),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        self.io
            .try_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), &t)
            })
            .is_ok()
    }

    /// Sends one of the relay's own small packets (a beacon); a full socket loses it, as the
    /// network could.
    pub(crate) fn send_control(&self, dst: SocketAddr, payload: &[u8]) {
        self.send_now(dst, payload, None);
    }

    /// Delivers a packet from `from` (a TCP-fallback sender) to a UDP recipient.
    pub(crate) fn send_relayed(&self, dst: SocketAddr, from: &PeerId, payload: &[u8]) -> bool {
        let mut buf = Vec::with_capacity(packet::RELAY_RECV_HEADER + payload.len());
        RelayRecv::write_header(&mut buf, from);
        buf.extend_from_slice(payload);
        self.send_now(dst, &buf, None)
    }

    /// Sends a packet from `from` (a TCP-fallback sender) on to another relay of the cluster.
    pub(crate) fn send_hop(&self, hop: &Hop, route: u64, from: &PeerId, payload: &[u8]) -> bool {
        let mut buf = Vec::with_capacity(packet::RELAY_HOP_HEADER + payload.len());
        RelayHop::write_header(&mut buf, &hop.token, route, from);
        buf.extend_from_slice(payload);
        self.send_now(hop.addr, &buf, None)
    }

    /// Sends a batch of equal-size forwarded packets to one destination with one GSO call.
    fn flush(&self, batch: &mut Batch) {
        let Some(dst) = batch.dst.take() else { return };
        let segment_size = (batch.count > 1).then_some(batch.seg);
        if self.send_now(dst, &batch.buf, segment_size) {
            self.metrics
                .packets_relayed
                .fetch_add(batch.count as u64, Ordering::Relaxed);
            self.metrics
                .bytes_relayed
                .fetch_add(batch.payload_bytes, Ordering::Relaxed);
        } else {
            for _ in 0..batch.count {
                self.metrics.dropped(DropReason::SendError);
            }
        }
        batch.buf.clear();
        batch.count = 0;
        batch.payload_bytes = 0;
        batch.closed = false;
    }

    /// Queues a forwarded packet, flushing the batch when it cannot join it.
    fn enqueue(&self, batch: &mut Batch, dst: SocketAddr, pkt: &[u8], header: usize) {
        let joins = batch.dst == Some(dst)
            && !batch.closed
            && pkt.len() <= batch.seg
            && batch.count < self.max_batch
            && batch.buf.len() + pkt.len() <= MAX_GSO_BYTES;
        if !joins {
            self.flush(batch);
            batch.dst = Some(dst);
            batch.seg = pkt.len();
        }
        batch.buf.extend_from_slice(pkt);
        batch.count += 1;
        batch.payload_bytes += (pkt.len() - header) as u64;
        // A shorter packet can only be the last segment of a GSO batch.
        batch.closed = pkt.len() < batch.seg;
    }

    /// Forwards one `RelaySend` datagram held in `seg` (rewritten in place).
    fn forward(&self, now: Instant, src: SocketAddr, seg: &mut [u8], batch: &mut Batch) {
        let Ok(pkt) = RelaySend::decode(seg) else {
            self.metrics.dropped(DropReason::Malformed);
            return;
        };
        let plen = pkt.payload.len();
        if plen > MAX_DATA {
            self.metrics.dropped(DropReason::Oversize);
            return;
        }
        let (tag, to) = (pkt.session_tag, pkt.to);
        let sessions = self.sessions.read();
        let Some(sender) = sessions.by_tag(&tag) else {
            self.metrics.dropped(DropReason::UnknownSession);
            return;
        };
        if !sender.udp_source_ok(src) {
            self.metrics.dropped(DropReason::AddressMismatch);
            return;
        }
        if !sender.allow_data(now, plen) {
            self.metrics.dropped(DropReason::RateLimited);
            return;
        }
        let from = sender.id;
        match sessions.route(&to) {
            Route::Local(dst) => {
                let start = RelaySend::rewrite_in_place(seg, &from);
                self.deliver(dst, &mut seg[start..], batch);
            }
            // Registered with another relay of the cluster: the packet crosses to it.
            Route::Remote(at) => match at.hop {
                Some(hop) => {
                    RelaySend::rewrite_to_hop(seg, &hop.token, at.route, &from);
                    self.enqueue(batch, hop.addr, seg, packet::RELAY_HOP_HEADER);
                    self.metrics.hops_out.fetch_add(1, Ordering::Relaxed);
                }
                None => self.metrics.dropped(DropReason::UnknownDestination),
            },
            Route::Nowhere => self.metrics.dropped(DropReason::UnknownDestination),
        }
    }

    /// Delivers a `RelayRecv` packet (held in `pkt`) to a session of ours.
    fn deliver(&self, dst: &Session, pkt: &mut [u8], batch: &mut Batch) {
        match dst.udp_addr() {
            // Counted as relayed when the batch is sent.
            Some(addr) => self.enqueue(batch, addr, pkt, packet::RELAY_RECV_HEADER),
            None => {
                let Ok(recv) = RelayRecv::decode(pkt) else {
                    return;
                };
                let frame = ServerFrame::Data {
                    from: recv.from,
                    packet: Bytes::copy_from_slice(recv.payload),
                };
                if dst.try_queue(frame) {
                    self.metrics.packets_relayed.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .bytes_relayed
                        .fetch_add(recv.payload.len() as u64, Ordering::Relaxed);
                } else {
                    self.metrics.dropped(DropReason::QueueFull);
                }
            }
        }
    }

    /// Delivers a packet another relay of the cluster sent on for a peer of ours.
    fn hop_in(&self, seg: &mut [u8], batch: &mut Batch) {
        let Ok(hop) = RelayHop::decode(seg) else {
            self.metrics.dropped(DropReason::Malformed);
            return;
        };
        if hop.payload.len() > MAX_DATA {
            self.metrics.dropped(DropReason::Oversize);
            return;
        }
        let route = hop.route;
        let sessions = self.sessions.read();
        let token_ok = sessions.hop_token().is_some_and(|t| {
            // Compared without an early exit.
            t.iter()
                .zip(hop.token)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        });
        if !token_ok {
            self.metrics.dropped(DropReason::BadHopToken);
            return;
        }
        let Some(dst) = sessions.by_route(route) else {
            self.metrics.dropped(DropReason::UnknownRoute);
            return;
        };
        self.metrics.hops_in.fetch_add(1, Ordering::Relaxed);
        let start = RelayHop::rewrite_in_place(seg);
        self.deliver(dst, &mut seg[start..], batch);
    }

    /// A parked session's keep-alive: its address is where it came from. One for a session
    /// this relay does not hold (it restarted, or forgot the session) is answered
    /// `ParkGone`, no bigger than the keep-alive, so that the peer registers again.
    fn park_alive(&self, now: Instant, src: SocketAddr, seg: &[u8]) {
        let Ok(Control::ParkAlive { tag }) = Control::decode(seg) else {
            self.metrics.dropped(DropReason::Malformed);
            return;
        };
        let known = (self.sessions.read().by_tag(&tag)).is_some_and(|s| {
            // A live session's keep-alive is a late one from before it came back: ignored.
            s.parked().is_none() || s.keep_parked(now, src)
        });
        if !known {
            self.metrics.dropped(DropReason::UnknownSession);
            let mut out = Vec::with_capacity(17);
            Control::ParkGone { tag }.encode(&mut out);
            self.send_now(src, &out, None);
        }
    }

    fn reflect(&self, src: SocketAddr, seg: &[u8]) {
        match Control::decode(seg) {
            Ok(Control::ReflectReq { txid }) => {
                let mut out = Vec::with_capacity(32);
                Control::ReflectResp {
                    txid,
                    observed: src,
                }
                .encode(&mut out);
                self.send_now(src, &out, None);
                self.metrics.reflections.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.metrics.dropped(DropReason::Malformed),
        }
    }

    /// Handles our own packets of a received buffer and compacts the QUIC ones to its front.
    /// Returns the QUIC bytes kept (0 if none).
    fn process(
        &self,
        now: Instant,
        buf: &mut [u8],
        meta: &mut RecvMeta,
        batch: &mut Batch,
    ) -> usize {
        let src = canonical(meta.addr);
        let stride = meta.stride.max(1);
        let len = meta.len.min(buf.len());
        let mut kept = 0;
        let mut off = 0;
        while off < len {
            let end = (off + stride).min(len);
            let first = buf[off];
            if packet::is_quic(first) {
                buf.copy_within(off..end, kept);
                kept += end - off;
            } else if first == packet::RELAY_SEND {
                self.forward(now, src, &mut buf[off..end], batch);
            } else if first == packet::RELAY_HOP {
                self.hop_in(&mut buf[off..end], batch);
            } else if first == packet::REFLECT_REQ {
                self.reflect(src, &buf[off..end]);
            } else if first == packet::PARK_ALIVE {
                self.park_alive(now, src, &buf[off..end]);
            } else {
                self.metrics.dropped(DropReason::Malformed);
            }
            off = end;
        }
        meta.len = kept;
        kept
    }
}

impl quinn::AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        p2pcall_transport::udp::writable_poller(self)
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        match self
            .io
            .try_io(Interest::WRITABLE, || self.state.send((&self.io).into(), t))
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = self.take_others(cx, bufs, meta);
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let res = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            });
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    tracing::trace!("relay recv error: {e}");
                    continue;
                }
            };
            let now = Instant::now();
            let mut kept = 0;
            let mut batch = Batch::default();
            for i in 0..n {
                if self.process(now, &mut bufs[i], &mut meta[i], &mut batch) == 0 {
                    continue;
                }
                p2pcall_transport::udp::move_entry(bufs, meta, i, kept);
                kept += 1;
            }
            self.flush(&mut batch);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

impl p2pcall_transport::udp::TokioUdp for RelaySocket {
    fn tokio_udp(&self) -> &tokio::net::UdpSocket {
        &self.io
    }
}
