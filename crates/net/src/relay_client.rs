//! The relay session: register, keep presence, carry signals, and (on the TCP+TLS fallback)
//! carry relayed packets. Reconnects with exponential backoff; peer connections on a direct
//! path are not affected while it is down. An idle UDP session parks (no connection; the
//! registration and the data path stay) and comes back to the same relay when there is
//! something to send or the relay wakes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pcall_proto::PeerId;
use p2pcall_proto::relay::client::{
    self as proto_client, Backoff, ClientConfig, ClientEvent, ClientSession, ParkedSession,
    Parking, PresenceChange, TransportChoice, Unpark,
};
use p2pcall_proto::relay::{ClientFrame, MAX_FRAME, RefuseReason};
use p2pcall_transport::framed::{FrameReader, write_all};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::config::RelayConfig;
use crate::event::{Event, PresenceEvent, RelayTransport};
use crate::inner::Inner;
use crate::relays::{self, Target};
use crate::socket::{ControlPacket, RelayRoute};

/// How long to wait for the QUIC handshake with the relay before trying TCP. UDP that is
/// blocked shows up as silence, so this bounds the extra start-up delay on such networks.
const UDP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the relay has to answer our `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Relay pings measure RTT and keep the TCP fallback's NAT mapping alive.
const RELAY_PING_INTERVAL: Duration = Duration::from_secs(10);
/// QUIC keep-alive of the relay connection (keeps the UDP mapping the data path uses).
const RELAY_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The relay connection is dead after this long without packets.
const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Packets queued toward the TCP fallback before drops (congestion, as on UDP).
const TCP_DATA_QUEUE: usize = 1024;

enum SessionEnd {
    /// Retry after backoff.
    Retry(String),
    /// The TCP connection was refused (nothing listens there); retry after backoff.
    TcpRefused(String),
    /// Do not retry.
    Fatal(RefuseReason, String),
    /// The relay presented another key than the one pinned for it: do not retry (and the
    /// token was never sent).
    WrongKey(PeerId),
    /// The endpoint is closing.
    Shutdown,
    /// The relay parked the session (the tag it had, what the relay said).
    Parked([u8; 16], Parking),
}

/// How a parked session ended.
enum Unparked {
    /// Back to the same relay, with the command that woke us, if one did.
    Back(Option<ClientFrame>),
    /// The relay's beacons stopped.
    Silent,
    /// The endpoint is closing.
    Shutdown,
}

/// A session's state across reconnects, as the driver keeps it.
struct Attempt<'a> {
    cmd_rx: &'a mut mpsc::Receiver<ClientFrame>,
    /// Set once the relay registered us.
    welcomed: bool,
    /// Coming back from parking: the registration continues (no new roster, no event).
    resumed: bool,
    /// A command taken while parked, sent once welcomed.
    carry: Option<ClientFrame>,
    /// Do not ask this relay to park (it ended a session that asked).
    no_park: bool,
    /// The relay refused `Park`.
    park_failed: bool,
}

impl From<proto_client::SessionEnd> for SessionEnd {
    fn from(end: proto_client::SessionEnd) -> Self {
        match end {
            proto_client::SessionEnd::Retry(r) => Self::Retry(r),
            proto_client::SessionEnd::Fatal(reason, detail) => Self::Fatal(reason, detail),
        }
    }
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    mut cfg: RelayConfig,
    mut cmd_rx: mpsc::Receiver<ClientFrame>,
    mut park_rx: mpsc::Receiver<ControlPacket>,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF, STABLE_SESSION);
    let mut choice = TransportChoice::new(cfg.force_tcp);
    // Relays of the cluster that presented another key than the cluster said: not again.
    let mut shunned: Vec<SocketAddr> = Vec::new();
    // Coming back from parking: to the same relay, without probing the others.
    let mut back_to: Option<Target> = None;
    let mut carry: Option<ClientFrame> = None;
    // Relays that refused to park a session (an older relay does not know the frame).
    let mut no_park: Vec<SocketAddr> = Vec::new();
    loop {
        // Trust on first use holds for reconnects too: once a relay welcomed us, only its
        // key is accepted at that address (a café network's impostor is not).
        if cfg.relay_key.is_none() {
            cfg.relay_key = *inner.relay_key.lock();
        }
        let mut others = relays::candidates(&cfg, &inner.cluster_relays.lock());
        others.retain(|c| !c.addr.parse().is_ok_and(|a| shunned.contains(&a)));
        let primary = Target {
            addr: cfg.addr,
            key: cfg.relay_key,
            primary: true,
        };
        let resumed = back_to.is_some();
        let target = match back_to.take() {
            Some(t) => t,
            None if others.is_empty() => primary,
            None => relays::choose(primary, &others).await.0,
        };
        let tcfg = RelayConfig {
            addr: target.addr,
            relay_key: target.key,
            tcp_addr: cfg.tcp_addr.filter(|_| target.primary),
            ..cfg.clone()
        };
        inner.socket.set_relay_quic_addr(Some(target.addr));
        let started = Instant::now();
        let mut attempt = Attempt {
            cmd_rx: &mut cmd_rx,
            welcomed: false,
            resumed,
            carry: carry.take(),
            no_park: no_park.contains(&target.addr),
            park_failed: false,
        };
        let mut end = connect_and_serve(&inner, &tcfg, target, &mut choice, &mut attempt).await;
        let welcomed = attempt.welcomed;
        carry = attempt.carry.take();
        if attempt.park_failed {
            tracing::info!(relay = %target.addr, "the relay refused to park our session; not asking it again");
            no_park.push(target.addr);
        }
        if let SessionEnd::Parked(tag, parking) = end {
            match parked(&inner, target.addr, tag, parking, &mut cmd_rx, &mut park_rx).await {
                Unparked::Shutdown => return,
                Unparked::Back(cmd) => {
                    carry = cmd;
                    back_to = Some(target);
                    continue;
                }
                Unparked::Silent => {
                    end = SessionEnd::Retry("the relay went silent while parked".into());
                }
            }
        }
        inner.socket.set_relay_route(RelayRoute::None);
        inner.roster.mark_incomplete();
        inner.relay_up.send_replace(None);
        match end {
            SessionEnd::Shutdown => return,
            // Handled above.
            SessionEnd::Parked(..) => {}
            SessionEnd::Fatal(reason, detail) => {
                inner.emit(Event::RelayRefused { reason, detail }).await;
                return;
            }
            SessionEnd::WrongKey(presented) if !target.primary => {
                tracing::warn!(addr = %target.addr, %presented, "a relay of the cluster presented another key than the cluster gave; not using it");
                shunned.push(target.addr);
            }
            SessionEnd::WrongKey(presented) => {
                let pinned = tcfg.relay_key.unwrap_or(presented);
                tracing::warn!(%pinned, %presented, "the relay presented another key than the pinned one");
                inner
                    .emit(Event::RelayKeyMismatch {
                        addr: tcfg.addr,
                        pinned,
                        presented,
                    })
                    .await;
                return;
            }
            SessionEnd::Retry(reason) | SessionEnd::TcpRefused(reason) => {
                let mut wait = backoff.session_ended(started.elapsed(), rand::random::<f64>());
                // Listed by the relay just lost, or configured: there is another relay.
                let clustered = !relays::candidates(&cfg, &inner.cluster_relays.lock()).is_empty();
                if clustered && welcomed {
                    // The next attempt probes every relay of the cluster: move at once.
                    wait = wait.min(MIN_BACKOFF);
                }
                tracing::info!("relay session ended: {reason}; retrying in {wait:?}");
                inner
                    .emit(Event::RelayDisconnected {
                        reason,
                        retry_in: wait,
                    })
                    .await;
                tokio::select! {
                    _ = inner.cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// One attempt at a session with `target` (UDP first unless TCP worked better lately), served
/// until it ends. `welcomed` is set once the relay registered us.
async fn connect_and_serve(
    inner: &Arc<Inner>,
    cfg: &RelayConfig,
    target: Target,
    choice: &mut TransportChoice,
    attempt: &mut Attempt<'_>,
) -> SessionEnd {
    let started = Instant::now();
    if choice.tcp_first(started) {
        let end = match tcp_session(inner, cfg, target.primary, attempt).await {
            SessionEnd::TcpRefused(tcp) => {
                unreachable(inner, cfg, tcp.clone()).await;
                SessionEnd::Retry(tcp)
            }
            end => end,
        };
        if !attempt.welcomed {
            choice.tcp_failed();
        }
        return end;
    }
    let connected = quic_connect(inner, cfg).await;
    let wrong_key = (connected.as_ref().err()).and_then(|e| p2pcall_transport::presented_key(e));
    match (connected, wrong_key) {
        (_, Some(presented)) => SessionEnd::WrongKey(presented),
        (Ok(conn), None) => quic_session(inner, cfg, target.primary, conn, attempt).await,
        (Err(e), None) => {
            tracing::info!("relay over UDP failed ({e}); trying TCP+TLS");
            let end = match tcp_session(inner, cfg, target.primary, attempt).await {
                SessionEnd::TcpRefused(tcp) => {
                    if e == UDP_REFUSED {
                        unreachable(inner, cfg, format!("UDP: {e}; {tcp}")).await;
                    }
                    SessionEnd::Retry(format!("UDP: {e}; {tcp}"))
                }
                SessionEnd::Retry(tcp) if !attempt.welcomed => {
                    SessionEnd::Retry(format!("UDP: {e}; {tcp}"))
                }
                end => end,
            };
            if attempt.welcomed {
                choice.tcp_worked(Instant::now());
            }
            end
        }
    }
}

/// Tells the front end that nothing listens at the relay's address.
async fn unreachable(inner: &Inner, cfg: &RelayConfig, detail: String) {
    inner
        .emit(Event::RelayUnreachable {
            addr: cfg.addr,
            detail,
        })
        .await;
}

/// What [`quic_connect`] says when the relay's host answered "port unreachable".
const UDP_REFUSED: &str = "nothing listens on that UDP port (ICMP port unreachable)";

/// Whether the relay's host answers "port unreachable" to a UDP packet (three requests
/// 500 ms apart). An answer or silence is `false`.
async fn udp_port_unreachable(addr: SocketAddr) -> bool {
    relays::reflect(addr, 3, Duration::from_millis(500)).await == relays::Reflected::Refused
}

async fn quic_connect(inner: &Inner, cfg: &RelayConfig) -> Result<quinn::Connection, String> {
    let client = p2pcall_transport::quinn_client_config(
        &inner.identity,
        cfg.relay_key,
        p2pcall_transport::ALPN_RELAY,
        p2pcall_transport::transport_config(RELAY_KEEP_ALIVE, RELAY_IDLE_TIMEOUT),
    )
    .map_err(|e| e.to_string())?;
    let connecting = inner
        .quinn
        .connect_with(
            client,
            inner.socket.family(cfg.addr),
            p2pcall_transport::RELAY_SERVER_NAME,
        )
        .map_err(|e| e.to_string())?;
    // A relay that is not running answers with ICMP at once: do not wait for the handshake
    // to time out then.
    let refused = async {
        if !udp_port_unreachable(cfg.addr).await {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout(UDP_CONNECT_TIMEOUT, connecting) => match r {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer over UDP".into()),
        },
        () = refused => Err(UDP_REFUSED.into()),
    }
}

async fn quic_session(
    inner: &Arc<Inner>,
    cfg: &RelayConfig,
    primary: bool,
    conn: quinn::Connection,
    attempt: &mut Attempt<'_>,
) -> SessionEnd {
    let relay = p2pcall_transport::peer_id(&conn);
    let (send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return SessionEnd::Retry(e.to_string()),
    };
    let (_unused_tx, mut no_data) = mpsc::channel(1);
    let end = session(
        inner,
        cfg,
        primary,
        relay,
        RelayTransport::Udp,
        (send, recv),
        attempt,
        &mut no_data,
    )
    .await;
    conn.close(0u32.into(), b"bye");
    // A refusal may arrive only as the close code (the relay closed before the frame).
    if let (SessionEnd::Retry(_), Some(quinn::ConnectionError::ApplicationClosed(c))) =
        (&end, conn.close_reason())
        && let Some(reason) = RefuseReason::from_code(c.error_code.into_inner())
    {
        return proto_client::SessionEnd::refused(
            reason,
            String::from_utf8_lossy(&c.reason).into_owned(),
        )
        .into();
    }
    end
}

/// A session over the TCP+TLS fallback; `welcomed` is set once the relay registered us.
async fn tcp_session(
    inner: &Arc<Inner>,
    cfg: &RelayConfig,
    primary: bool,
    attempt: &mut Attempt<'_>,
) -> SessionEnd {
    let addr = cfg.tcp_addr.unwrap_or(cfg.addr);
    let tcp = match tokio::time::timeout(UDP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return SessionEnd::TcpRefused(format!("TCP connect to {addr}: {e}"));
        }
        Ok(Err(e)) => return SessionEnd::Retry(format!("TCP connect to {addr}: {e}")),
        Err(_) => return SessionEnd::Retry(format!("TCP connect to {addr} timed out")),
    };
    let _ = tcp.set_nodelay(true);
    let tls = match p2pcall_transport::rustls_client_config(
        &inner.identity,
        cfg.relay_key,
        p2pcall_transport::ALPN_RELAY,
    ) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Fatal(RefuseReason::Protocol, e.to_string()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let Ok(name) = rustls::pki_types::ServerName::try_from(p2pcall_transport::RELAY_SERVER_NAME)
    else {
        return SessionEnd::Fatal(RefuseReason::Protocol, "bad server name".into());
    };
    let stream = match tokio::time::timeout(WELCOME_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return match p2pcall_transport::presented_key(&e.to_string()) {
                Some(presented) => SessionEnd::WrongKey(presented),
                None => SessionEnd::Retry(format!("TLS handshake with the relay: {e}")),
            };
        }
        Err(_) => return SessionEnd::Retry("TLS handshake with the relay timed out".into()),
    };
    let relay = p2pcall_transport::peer_id_of_tls(stream.get_ref().1.peer_certificates());
    let (r, w) = tokio::io::split(stream);
    let (data_tx, mut data_rx) = mpsc::channel(TCP_DATA_QUEUE);
    inner
        .socket
        .set_relay_route(RelayRoute::Tcp { tx: data_tx });
    session(
        inner,
        cfg,
        primary,
        relay,
        RelayTransport::Tcp,
        (w, r),
        attempt,
        &mut data_rx,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn session<W, R>(
    inner: &Arc<Inner>,
    cfg: &RelayConfig,
    primary: bool,
    relay: Option<PeerId>,
    transport: RelayTransport,
    (mut send, recv): (W, R),
    attempt: &mut Attempt<'_>,
    data_rx: &mut mpsc::Receiver<(PeerId, Vec<u8>)>,
) -> SessionEnd
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let Some(relay) = relay else {
        return SessionEnd::Retry("the relay presented no key".into());
    };
    let mut machine = ClientSession::new(
        Instant::now(),
        inner.identity.id(),
        ClientConfig {
            name: inner.name.lock().clone(),
            token: cfg.token.clone(),
            presence: cfg.presence,
            welcome_timeout: WELCOME_TIMEOUT,
            ping_interval: RELAY_PING_INTERVAL,
            park_after: (cfg.park_after)
                .filter(|_| transport == RelayTransport::Udp && !attempt.no_park),
        },
    );
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    let mut tag = [0; 16];
    loop {
        while let Some(event) = machine.poll_event() {
            match &event {
                ClientEvent::Welcome { session_tag, .. } => {
                    attempt.welcomed = true;
                    tag = *session_tag;
                }
                ClientEvent::Parked(parking) => return SessionEnd::Parked(tag, *parking),
                ClientEvent::Ended(_) => attempt.park_failed = machine.park_refused(),
                _ => {}
            }
            let welcome = matches!(event, ClientEvent::Welcome { .. });
            let how = Welcomed {
                primary,
                relay,
                transport,
                resumed: attempt.resumed,
            };
            if let Some(end) = handle_event(inner, cfg, how, event).await {
                return end;
            }
            if welcome && let Some(c) = attempt.carry.take() {
                machine.send(Instant::now(), &c);
            }
        }
        if let Some(out) = machine.poll_transmit()
            && let Err(e) = write_all(&mut send, &out).await
        {
            return SessionEnd::Retry(format!("writing to the relay: {e}"));
        }
        let deadline = machine
            .poll_timeout()
            .map_or_else(far_future, tokio::time::Instant::from_std);
        // Commands and relayed packets wait until the relay has welcomed us.
        let open = machine.is_open();
        tokio::select! {
            _ = inner.cancel.cancelled() => return SessionEnd::Shutdown,
            () = tokio::time::sleep_until(deadline) => machine.handle_timeout(Instant::now()),
            f = reader.next() => match f {
                Ok(raw) => machine.handle_frame(Instant::now(), raw),
                Err(e) => machine.handle_read_error(&e.to_string()),
            },
            c = attempt.cmd_rx.recv(), if open => match c {
                Some(c) => machine.send(Instant::now(), &c),
                None => return SessionEnd::Shutdown,
            },
            Some((to, packet)) = data_rx.recv(), if open => {
                let now = Instant::now();
                machine.send(now, &ClientFrame::Data { to, packet: packet.into() });
                // Batch whatever else is ready into the same write.
                while machine.pending() < 64 * 1024 {
                    let Ok((to, packet)) = data_rx.try_recv() else { break };
                    machine.send(now, &ClientFrame::Data { to, packet: packet.into() });
                }
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// Whom a session is with, and how.
#[derive(Debug, Clone, Copy)]
struct Welcomed {
    /// The configured relay (not another of its cluster).
    primary: bool,
    /// Its key.
    relay: PeerId,
    transport: RelayTransport,
    /// Back from parking: the registration continues.
    resumed: bool,
}

/// Carries out what the session's machine decided; `Some` once the session is over.
async fn handle_event(
    inner: &Arc<Inner>,
    cfg: &RelayConfig,
    how: Welcomed,
    event: ClientEvent,
) -> Option<SessionEnd> {
    match event {
        ClientEvent::Welcome {
            session_tag,
            observed,
            reflect_ports,
        } => {
            welcomed(inner, cfg, how, (session_tag, observed), &reflect_ports).await;
        }
        ClientEvent::Presence(change) => presence(inner, change).await,
        ClientEvent::Signal { from, payload } => {
            inner.emit(Event::Signal { from, payload }).await;
        }
        ClientEvent::SignalFailed { to, reason } => {
            inner.emit(Event::SignalFailed { to, reason }).await;
        }
        ClientEvent::Data { from, packet } => {
            let _ = inner
                .socket
                .queue()
                .try_send(crate::socket::Queued::Relayed(from, packet.to_vec()));
        }
        ClientEvent::Vouched { from, observed } => {
            let observed = crate::socket::canonical(observed);
            for c in inner.conns.lock().get(&from).into_iter().flatten() {
                c.shared.vouched.send_replace(Some(observed));
            }
        }
        ClientEvent::Relays(list) => {
            tracing::debug!(relays = list.len(), "the relay's cluster");
            let changed = {
                let mut known = inner.cluster_relays.lock();
                let addrs = |l: &[p2pcall_proto::relay::RelayEntry]| {
                    l.iter()
                        .map(|e| (e.key, e.addr.clone()))
                        .collect::<Vec<_>>()
                };
                let changed = addrs(&known) != addrs(&list);
                *known = list.clone();
                changed
            };
            if changed {
                inner.emit(Event::RelaysListed(list)).await;
            }
        }
        ClientEvent::Ended(end) => return Some(end.into()),
        // The caller ends the session on it.
        ClientEvent::Parked(_) => {}
    }
    None
}

/// Keeps a parked session (keep-alives, the relay's beacons) until something brings it
/// back: a command to send, a wake, a relay that lost it; or until the relay goes silent.
async fn parked(
    inner: &Inner,
    addr: SocketAddr,
    tag: [u8; 16],
    parking: Parking,
    cmd_rx: &mut mpsc::Receiver<ClientFrame>,
    packets: &mut mpsc::Receiver<ControlPacket>,
) -> Unparked {
    tracing::debug!(relay = %addr, "relay session parked");
    let relay = crate::socket::canonical(addr);
    // What arrived while the session was live is about an earlier parking.
    while packets.try_recv().is_ok() {}
    let mut session = ParkedSession::new(Instant::now(), tag, parking);
    loop {
        if let Some(pkt) = session.poll_transmit() {
            let mut buf = Vec::with_capacity(pkt.encoded_len());
            pkt.encode(&mut buf);
            inner.socket.send_control(addr, &buf);
        }
        let at = tokio::time::Instant::from_std(session.poll_timeout());
        let unpark = tokio::select! {
            _ = inner.cancel.cancelled() => return Unparked::Shutdown,
            c = cmd_rx.recv() => return match c {
                Some(c) => {
                    tracing::debug!(relay = %addr, "back from parking to send");
                    Unparked::Back(Some(c))
                }
                None => Unparked::Shutdown,
            },
            p = packets.recv() => match p {
                Some(p) if crate::socket::canonical(p.from) == relay => {
                    session.handle_packet(p.at, &p.packet)
                }
                Some(_) => None,
                None => return Unparked::Shutdown,
            },
            () = tokio::time::sleep_until(at) => session.handle_timeout(Instant::now()),
        };
        match unpark {
            Some(u @ (Unpark::Wake | Unpark::Gone)) => {
                tracing::debug!(relay = %addr, why = ?u, "back from parking");
                return Unparked::Back(None);
            }
            Some(Unpark::Silent) => return Unparked::Silent,
            None => {}
        }
    }
}

/// The relay registered us: install the relay route and what it told us. Back from
/// parking, the registration continues: the presence list stays (the relay sends what
/// changed meanwhile, or a snapshot) and nothing is reported.
async fn welcomed(
    inner: &Arc<Inner>,
    cfg: &RelayConfig,
    how: Welcomed,
    (tag, observed): ([u8; 16], SocketAddr),
    reflect_ports: &[u16],
) {
    let Welcomed {
        primary,
        relay,
        transport,
        resumed,
    } = how;
    {
        let mut r = inner.reflectors.lock();
        *r = reflect_ports
            .iter()
            .map(|p| std::net::SocketAddr::new(cfg.addr.ip(), *p))
            .collect();
    }
    if transport == RelayTransport::Udp {
        inner.socket.set_relay_route(RelayRoute::Udp {
            addr: cfg.addr,
            tag,
        });
    }
    {
        let mut o = inner.observed.lock();
        *o = Some(observed);
    }
    inner.relay_up.send_replace(Some(transport));
    if resumed {
        return;
    }
    inner.roster.clear();
    if primary {
        let mut k = inner.relay_key.lock();
        k.get_or_insert(relay);
    }
    if transport == RelayTransport::Udp {
        tokio::spawn(inner.clone().measure_nat());
    } else {
        inner
            .mapping
            .send_replace(Some(p2pcall_proto::peer::Mapping::Unknown));
    }
    inner
        .emit(Event::RelayConnected {
            observed,
            transport,
            relay,
            addr: cfg.addr,
            primary,
        })
        .await;
}

/// Applies a presence change to the endpoint's list and reports it.
async fn presence(inner: &Arc<Inner>, change: PresenceChange) {
    let event = match change {
        PresenceChange::Snapshot(list) => {
            inner.roster.replace(&list);
            PresenceEvent::Snapshot(list)
        }
        PresenceChange::Joined(info) => {
            inner.roster.upsert(info.clone());
            // A new relay session of a peer we have connections to: it may have restarted.
            inner.mark_suspect(&info.id);
            PresenceEvent::Joined(info)
        }
        PresenceChange::Updated(info) => {
            inner.roster.upsert(info.clone());
            PresenceEvent::Updated(info)
        }
        PresenceChange::Left(id) => {
            inner.roster.remove(&id);
            PresenceEvent::Left(id)
        }
    };
    inner.emit(Event::Presence(event)).await;
}
