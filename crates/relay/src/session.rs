//! Registered sessions: one per online peer key, reached by key (signals, packets) or by
//! session tag (UDP data path).
//!
//! Session flow (same over QUIC and over the TCP+TLS fallback). The protocol decisions (hello,
//! token, timeouts, rate limits, refusals) are [`ServerSession`]'s; this module drives it and
//! owns the table:
//! 1. TLS proved the client's key. `Hello` must follow within the handshake timeout.
//! 2. Token and capacity checks; a session with the same key is replaced (it receives
//!    `Refused{Replaced}` and is closed).
//! 3. `Welcome`, then (if asked) the presence snapshot, then incremental presence events.
//!    Presence events are queued under the session table's write lock, and a snapshot is
//!    built under its read lock after discarding queued presence events, so a subscriber's
//!    view is always exact. A subscriber that falls behind (queue full) gets a fresh snapshot
//!    instead of an unbounded queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use p2pcall_proto::PeerId;
use p2pcall_proto::limits::TokenBucket;
use p2pcall_proto::relay::server::{
    CloseCause, Closure, ReadEnd, ServerSession, SessionConfig, SessionEvent,
};
use p2pcall_proto::relay::{
    MAX_FRAME, PeerInfo, RefuseReason, SNAPSHOT_CHUNK, ServerFrame, SignalFailure,
};
use p2pcall_tls::framed::{FrameReadError, FrameReader, write_all};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::metrics::{Close, DropReason};
use crate::socket::canonical;

/// Frames queued toward one peer before presence falls back to a snapshot and signals fail
/// with `QueueFull`.
const OUT_QUEUE: usize = 1024;

/// All registered sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<PeerId, Arc<Session>>,
    by_tag: HashMap<[u8; 16], Arc<Session>>,
}

impl Sessions {
    /// Session of a peer.
    pub fn by_id(&self, id: &PeerId) -> Option<&Arc<Session>> {
        self.by_id.get(id)
    }
    /// Session owning a data-path tag.
    pub fn by_tag(&self, tag: &[u8; 16]) -> Option<&Arc<Session>> {
        self.by_tag.get(tag)
    }
    /// Number of sessions.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
    /// Every session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_id.values().cloned().collect()
    }
    fn snapshot(&self) -> Vec<PeerInfo> {
        self.by_id.values().map(|s| s.info()).collect()
    }
    /// Queues `frame` to every presence subscriber but `except`. Called with the write lock
    /// held, right after the change it reports.
    fn broadcast(&self, shared: &Shared, frame: &ServerFrame, except: &PeerId) {
        for s in self.by_id.values() {
            if !s.presence || s.id == *except {
                continue;
            }
            if s.out.try_send(frame.clone()).is_ok() {
                shared
                    .metrics
                    .presence_events
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                s.resync.store(true, Ordering::Release);
                s.wake.notify_one();
            }
        }
    }
}

/// A UDP-capable session's binding to its QUIC connection.
#[derive(Debug)]
struct UdpBinding {
    addr: Mutex<SocketAddr>,
    conn: quinn::Connection,
}

/// One online peer.
#[derive(Debug)]
pub struct Session {
    /// The peer's key (proved in TLS).
    pub id: PeerId,
    tag: [u8; 16],
    name: Mutex<String>,
    since_ms: u64,
    presence: bool,
    udp: Option<UdpBinding>,
    out: mpsc::Sender<ServerFrame>,
    resync: AtomicBool,
    wake: Notify,
    data_limits: Mutex<(TokenBucket, TokenBucket)>,
    close: CancellationToken,
    close_reason: Mutex<Option<(RefuseReason, String)>>,
}

impl Session {
    fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.id,
            name: self.name.lock().clone(),
            online_since_ms: self.since_ms,
        }
    }

    /// Where to send UDP packets for this peer (`None`: TCP fallback session).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().map(|u| *u.addr.lock())
    }

    /// True if a data packet from `src` may belong to this session: its QUIC connection's
    /// address (followed through NAT rebinding).
    pub fn udp_source_ok(&self, src: SocketAddr) -> bool {
        let Some(u) = &self.udp else { return false };
        let mut addr = u.addr.lock();
        if *addr == src {
            return true;
        }
        let now = canonical(u.conn.remote_address());
        if now == src {
            *addr = now;
            return true;
        }
        false
    }

    /// Charges one packet of `len` bytes to the sender's data rate.
    pub fn allow_data(&self, now: Instant, len: usize) -> bool {
        let mut l = self.data_limits.lock();
        l.0.take(now, 1.0) && l.1.take(now, len as f64)
    }

    /// Queues a frame; false if the queue is full.
    pub fn try_queue(&self, f: ServerFrame) -> bool {
        self.out.try_send(f).is_ok()
    }

    /// Ends the session, telling the peer why.
    pub fn end(&self, reason: RefuseReason, detail: &str) {
        {
            let mut r = self.close_reason.lock();
            r.get_or_insert((reason, detail.to_string()));
        }
        self.close.cancel();
    }
}

impl Session {
    /// A new session (not yet in the table) and the receiving end of its queue.
    fn new(
        shared: &Shared,
        id: PeerId,
        name: String,
        presence: bool,
        udp: Option<quinn::Connection>,
        now: Instant,
    ) -> (Arc<Self>, mpsc::Receiver<ServerFrame>) {
        let cfg = &shared.cfg;
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let session = Arc::new(Self {
            id,
            tag: rand::random(),
            name: Mutex::new(name),
            since_ms: unix_ms(),
            presence,
            udp: udp.map(|conn| UdpBinding {
                addr: Mutex::new(canonical(conn.remote_address())),
                conn,
            }),
            out,
            resync: AtomicBool::new(presence),
            wake: Notify::new(),
            data_limits: Mutex::new((
                TokenBucket::new(now, cfg.packet_rate, cfg.packet_rate.max(1.0) / 10.0 + 64.0),
                TokenBucket::new(now, cfg.byte_rate, cfg.byte_rate / 10.0 + 65536.0),
            )),
            close: shared.cancel.child_token(),
            close_reason: Mutex::new(None),
        });
        (session, out_rx)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The relay settings one session's machine needs.
fn session_config(cfg: &crate::RelayConfig) -> SessionConfig {
    SessionConfig {
        token: cfg.token.clone(),
        handshake_timeout: cfg.handshake_timeout,
        idle_timeout: cfg.idle_timeout,
        control_rate: cfg.control_rate,
        signal_rate: cfg.signal_rate,
    }
}

/// Waits for the next frame until the machine's deadline and hands the outcome to it.
async fn step<R: AsyncRead + Unpin>(machine: &mut ServerSession, reader: &mut FrameReader<R>) {
    let read = reader.next();
    let result = match machine.poll_timeout() {
        Some(at) => tokio::time::timeout_at(at.into(), read).await,
        None => Ok(read.await),
    };
    let now = Instant::now();
    match result {
        Err(_) => machine.handle_timeout(now),
        Ok(Ok(raw)) => machine.handle_frame(now, raw),
        Ok(Err(FrameReadError::Closed)) => machine.handle_read_error(ReadEnd::Closed),
        Ok(Err(e)) => machine.handle_read_error(ReadEnd::Error(e.to_string())),
    }
}

/// Ends a session that never registered: counts it, tells the peer why if it said hello.
async fn end_unregistered<W: AsyncWrite + Unpin>(
    shared: &Shared,
    send: &mut W,
    c: Closure,
) -> (u32, String) {
    shared.metrics.close(c.cause);
    if c.tell_peer {
        let mut out = Vec::new();
        ServerFrame::Refused {
            reason: c.reason,
            detail: c.detail.clone(),
        }
        .encode(&mut out);
        let _ = write_all(send, &out).await;
    }
    (c.reason as u32, c.to_string())
}

/// Runs one session over a reader/writer pair until it ends.
pub(crate) async fn run<R, W>(
    shared: Arc<Shared>,
    id: PeerId,
    udp: Option<quinn::Connection>,
    observed: SocketAddr,
    recv: R,
    mut send: W,
) -> Option<(u32, String)>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    let mut machine = ServerSession::new(Instant::now(), session_config(&shared.cfg));
    let (name, presence) = loop {
        match machine.poll_event() {
            Some(SessionEvent::Login { name, presence }) => break (name, presence),
            Some(SessionEvent::Closed(c)) => {
                return Some(end_unregistered(&shared, &mut send, c).await);
            }
            Some(_) => {}
            None => step(&mut machine, &mut reader).await,
        }
    };
    let now = Instant::now();
    let (session, out_rx) = Session::new(&shared, id, name, presence, udp, now);
    if let Err((reason, detail, cause)) = register(&shared, &session) {
        machine.refuse(reason, detail, cause);
        let Some(SessionEvent::Closed(c)) = machine.poll_event() else {
            return None;
        };
        return Some(end_unregistered(&shared, &mut send, c).await);
    }
    machine.registered(now);
    shared
        .metrics
        .sessions_total
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(peer = %id.fingerprint(), "session registered");

    let mut welcome = Vec::new();
    ServerFrame::Welcome {
        session_tag: session.tag,
        observed: canonical(observed),
        reflect_ports: shared.reflect_ports.clone(),
    }
    .encode(&mut welcome);
    let writer = {
        let shared = shared.clone();
        let session = session.clone();
        let mut out_rx = out_rx;
        tokio::spawn(async move {
            if write_all(&mut send, &welcome).await.is_err() {
                return;
            }
            writer_loop(&shared, &session, &mut out_rx, &mut send).await;
        })
    };

    let end = serve(&shared, &session, &mut machine, &mut reader).await;
    shared.metrics.close(end.cause);
    session.end(end.reason, &end.detail);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    unregister(&shared, &session);
    let (reason, detail) = session
        .close_reason
        .lock()
        .clone()
        .unwrap_or((end.reason, end.detail));
    Some((reason as u32, format!("{reason}: {detail}")))
}

/// Why a registration was refused.
type Refusal = (RefuseReason, &'static str, CloseCause);

/// Adds a session to the table, replacing an older login with the same key; refused when
/// the relay is full or shutting down.
fn register(shared: &Shared, session: &Arc<Session>) -> Result<(), Refusal> {
    let mut sessions = shared.sessions.write();
    if shared.closing.load(Ordering::Acquire) {
        return Err((
            RefuseReason::ShuttingDown,
            "the relay is shutting down",
            CloseCause::ShuttingDown,
        ));
    }
    let replacing = sessions.by_id.contains_key(&session.id);
    if !replacing && sessions.by_id.len() >= shared.cfg.max_peers {
        return Err((
            RefuseReason::ServerFull,
            "too many peers online",
            CloseCause::ServerFull,
        ));
    }
    if let Some(old) = sessions.by_id.insert(session.id, session.clone()) {
        sessions.by_tag.remove(&old.tag);
        old.end(
            RefuseReason::Replaced,
            "a newer login with this key replaced this session",
        );
        shared.metrics.close(Close::Replaced);
    }
    sessions.by_tag.insert(session.tag, session.clone());
    shared
        .metrics
        .peers_online
        .store(sessions.len() as u64, Ordering::Relaxed);
    sessions.broadcast(shared, &ServerFrame::Joined(session.info()), &session.id);
    Ok(())
}

/// Removes a session from the table unless a newer login already took its place.
fn unregister(shared: &Shared, session: &Arc<Session>) {
    let mut sessions = shared.sessions.write();
    if sessions
        .by_id
        .get(&session.id)
        .is_some_and(|s| Arc::ptr_eq(s, session))
    {
        sessions.by_id.remove(&session.id);
        sessions.by_tag.remove(&session.tag);
        shared
            .metrics
            .peers_online
            .store(sessions.len() as u64, Ordering::Relaxed);
        sessions.broadcast(shared, &ServerFrame::Left(session.id), &session.id);
    }
}

/// Serves a registered session until its machine closes it.
async fn serve<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    machine: &mut ServerSession,
    reader: &mut FrameReader<R>,
) -> Closure {
    loop {
        while let Some(event) = machine.poll_event() {
            match event {
                SessionEvent::Closed(c) => return c,
                SessionEvent::Login { .. } => {}
                SessionEvent::Rename { name } => {
                    {
                        let mut n = session.name.lock();
                        *n = name;
                    }
                    {
                        let sessions = shared.sessions.write();
                        sessions.broadcast(
                            shared,
                            &ServerFrame::Updated(session.info()),
                            &session.id,
                        );
                    }
                }
                SessionEvent::Signal { to, payload } => signal(shared, session, to, payload),
                SessionEvent::Data { to, packet } => {
                    if session.allow_data(Instant::now(), packet.len()) {
                        shared.forward_from_tcp(session.id, to, &packet);
                    } else {
                        shared.metrics.dropped(DropReason::RateLimited);
                    }
                }
                SessionEvent::Send(frame) => {
                    if matches!(frame, ServerFrame::SignalFailed { .. }) {
                        shared
                            .metrics
                            .signals_failed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    session.try_queue(frame);
                }
            }
        }
        tokio::select! {
            _ = session.close.cancelled() => {
                machine.refuse(RefuseReason::ShuttingDown, "closing", CloseCause::ShuttingDown);
            }
            _ = step(machine, reader) => {}
        }
    }
}

/// Delivers a signal, or tells its sender why it could not be.
fn signal(shared: &Shared, session: &Session, to: PeerId, payload: bytes::Bytes) {
    let dst = shared.sessions.read().by_id(&to).cloned();
    let failure = match dst {
        None => Some(SignalFailure::Offline),
        Some(dst) => (!dst.try_queue(ServerFrame::Signal {
            from: session.id,
            payload,
        }))
        .then_some(SignalFailure::QueueFull),
    };
    match failure {
        None => {
            shared
                .metrics
                .signals_forwarded
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(reason) => {
            shared
                .metrics
                .signals_failed
                .fetch_add(1, Ordering::Relaxed);
            session.try_queue(ServerFrame::SignalFailed { to, reason });
        }
    }
}

fn is_presence(f: &ServerFrame) -> bool {
    matches!(
        f,
        ServerFrame::Joined(_) | ServerFrame::Left(_) | ServerFrame::Updated(_)
    )
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    out_rx: &mut mpsc::Receiver<ServerFrame>,
    send: &mut W,
) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
        if session.resync.swap(false, Ordering::AcqRel) {
            let mut keep = Vec::new();
            let peers = {
                let sessions = shared.sessions.read();
                while let Ok(f) = out_rx.try_recv() {
                    if !is_presence(&f) {
                        keep.push(f);
                    }
                }
                sessions.snapshot()
            };
            shared
                .metrics
                .presence_snapshots
                .fetch_add(1, Ordering::Relaxed);
            let chunks: Vec<_> = peers.chunks(SNAPSHOT_CHUNK).collect();
            if chunks.is_empty() {
                ServerFrame::Snapshot {
                    peers: Vec::new(),
                    last: true,
                }
                .encode(&mut buf);
            }
            for (i, c) in chunks.iter().enumerate() {
                ServerFrame::Snapshot {
                    peers: c.to_vec(),
                    last: i + 1 == chunks.len(),
                }
                .encode(&mut buf);
                if buf.len() > 64 * 1024 {
                    if write_all(send, &buf).await.is_err() {
                        return;
                    }
                    buf.clear();
                }
            }
            for f in keep {
                f.encode(&mut buf);
            }
        } else {
            tokio::select! {
                biased;
                _ = session.close.cancelled() => {
                    let why = session.close_reason.lock().clone();
                    if let Some((reason, detail)) = why {
                        ServerFrame::Refused { reason, detail }.encode(&mut buf);
                        let _ = write_all(send, &buf).await;
                    }
                    return;
                }
                _ = session.wake.notified() => continue,
                f = out_rx.recv() => match f {
                    Some(f) => {
                        f.encode(&mut buf);
                        while buf.len() < 64 * 1024 {
                            let Ok(f) = out_rx.try_recv() else { break };
                            f.encode(&mut buf);
                        }
                    }
                    None => return,
                },
            }
        }
        if !buf.is_empty() && write_all(send, &buf).await.is_err() {
            return;
        }
    }
}
