//! One client's session, driven from its first frame to its end.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use p2pcall_proto::PeerId;
use p2pcall_proto::cluster::{Change, RelayMsg};
use p2pcall_proto::relay::server::{
    CloseCause, Closure, ReadEnd, ServerSession, SessionConfig, SessionEvent,
};
use p2pcall_proto::relay::{MAX_FRAME, RefuseReason, SNAPSHOT_CHUNK, ServerFrame, SignalFailure};
use p2pcall_transport::framed::{FrameReadError, FrameReader, write_all};
use p2pcall_transport::udp::canonical;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::config::RelayConfig;
use crate::metrics::DropReason;
use crate::registry::{Refusal, Route, Session, is_presence};
use crate::state::Shared;

/// The relay settings one session's machine needs.
fn session_config(cfg: &RelayConfig) -> SessionConfig {
    SessionConfig {
        token: cfg.token.clone(),
        handshake_timeout: cfg.handshake_timeout,
        idle_timeout: cfg.idle_timeout,
        control_rate: cfg.control_rate,
        signal_rate: cfg.signal_rate,
        rename_every: cfg.rename_every,
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
    let login = crate::registry::Login {
        name,
        presence,
        source: observed.ip(),
    };
    // A peer coming back to its parked session continues it.
    let resume = (shared.sessions.read().by_id(&id)).and_then(|s| s.resume());
    let (session, out_rx) = Session::new(&shared.cfg, &shared.cancel, id, login, udp, now, resume);
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
    if end.cause != CloseCause::Parked {
        session.end(end.reason, &end.detail);
    }
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        // Parked without its writer seeing `Parked` (its queue was full): nothing ends it.
        writer.abort();
    }
    shared
        .sessions
        .write()
        .unregister(&session, &shared.metrics);
    let (reason, detail) = session
        .close_reason
        .lock()
        .clone()
        .unwrap_or((end.reason, end.detail));
    Some((reason as u32, format!("{reason}: {detail}")))
}

/// Adds the session to the table; refused once shutdown began (a session that registered
/// then would be welcomed by a relay about to go away), or when the relay is full.
fn register(shared: &Shared, session: &Arc<Session>) -> Result<(), Refusal> {
    let mut sessions = shared.sessions.write();
    if shared.closing.load(Ordering::Acquire) {
        return Err((
            RefuseReason::ShuttingDown,
            "the relay is shutting down",
            CloseCause::ShuttingDown,
        ));
    }
    sessions.register(session, shared.cfg.max_peers, &shared.metrics)?;
    // In a cluster: the other relays it may move to (after the welcome, which goes first).
    if let Some(frame) = sessions.relays_frame() {
        session.try_queue(frame);
    }
    Ok(())
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
                        let mut sessions = shared.sessions.write();
                        let info = session.info();
                        sessions.publish(Change::Updated(info.clone()));
                        sessions.broadcast(
                            &shared.metrics,
                            &ServerFrame::Updated(info),
                            Some(&session.id),
                        );
                    }
                }
                SessionEvent::Signal { to, payload } => signal(shared, session, to, payload),
                SessionEvent::Vouch { to } => vouch(shared, session, to),
                SessionEvent::Data { to, packet } => {
                    if session.allow_data(Instant::now(), packet.len()) {
                        shared.forward_from_tcp(session.id, to, &packet);
                    } else {
                        shared.metrics.dropped(DropReason::RateLimited);
                    }
                }
                SessionEvent::Park => park(shared, session, machine),
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

/// Parks the session (its peer asked): its parked twin takes its place in the table, and
/// `Parked` is the last frame its writer sends. The peer then closes the connection.
fn park(shared: &Shared, session: &Arc<Session>, machine: &mut ServerSession) {
    let now = Instant::now();
    let Some(twin) = session.parked_twin(&shared.cfg, &shared.cancel, shared.waker.clone(), now)
    else {
        machine.refuse(
            RefuseReason::Protocol,
            "only a session over UDP can park",
            CloseCause::Protocol,
        );
        return;
    };
    let secret = twin.parked().map_or([0; 16], |p| p.secret);
    if !(shared.sessions.write()).park(session, twin, &shared.metrics) {
        return; // a newer login replaced it: that ends this session
    }
    let clustered = shared.cfg.cluster.is_some();
    session.try_queue(ServerFrame::Parked {
        secret,
        keepalive_ms: shared.cfg.park_keepalive.as_millis() as u32,
        beacon_ms: if clustered {
            shared.cfg.park_beacon.as_millis() as u32
        } else {
            0
        },
    });
    tracing::debug!(peer = %session.id.fingerprint(), "session parked");
}

/// Delivers a signal (here, or through the cluster to the relay the recipient is registered
/// with), or tells its sender why it could not be.
fn signal(shared: &Shared, session: &Session, to: PeerId, payload: bytes::Bytes) {
    let failure = {
        let sessions = shared.sessions.read();
        match (sessions.route(&to), &sessions.link) {
            (Route::Local(dst), _) => (!dst.try_queue(ServerFrame::Signal {
                from: session.id,
                payload,
            }))
            .then_some(SignalFailure::QueueFull),
            (Route::Remote(at), Some(link)) => {
                let msg = RelayMsg::Signal {
                    origin: shared.id,
                    from: session.id,
                    to,
                    payload,
                };
                link.inbox
                    .try_send((at.relay, msg))
                    .is_err()
                    .then_some(SignalFailure::QueueFull)
            }
            _ => Some(SignalFailure::Offline),
        }
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

/// Tells `to` where this session's UDP packets come from (the session asked: it is
/// connecting to `to`). A session on the TCP fallback has no UDP address to vouch for.
fn vouch(shared: &Shared, session: &Session, to: PeerId) {
    let Some(observed) = session.udp_addr() else {
        return;
    };
    let sessions = shared.sessions.read();
    match (sessions.route(&to), &sessions.link) {
        (Route::Local(dst), _) => {
            dst.try_queue(ServerFrame::Vouched {
                from: session.id,
                observed,
            });
        }
        (Route::Remote(at), Some(link)) => {
            let msg = RelayMsg::Vouch {
                from: session.id,
                to,
                observed,
            };
            let _ = link.inbox.try_send((at.relay, msg));
        }
        _ => {}
    }
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
                    session.dequeued(&f);
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
            let last = keep.iter().any(|f| matches!(f, ServerFrame::Parked { .. }));
            for f in keep {
                f.encode(&mut buf);
            }
            // `Parked` is the connection's last frame.
            if last {
                let _ = write_all(send, &buf).await;
                return;
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
                        let mut last = matches!(f, ServerFrame::Parked { .. });
                        session.dequeued(&f);
                        f.encode(&mut buf);
                        while buf.len() < 64 * 1024 && !last {
                            let Ok(f) = out_rx.try_recv() else { break };
                            last = matches!(f, ServerFrame::Parked { .. });
                            session.dequeued(&f);
                            f.encode(&mut buf);
                        }
                        // `Parked` is the connection's last frame.
                        if last {
                            let _ = write_all(send, &buf).await;
                            return;
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
