//! A peer's side of its relay session, as a sans-IO state machine, and the reconnect policy.
//!
//! The driver opens the control stream (QUIC, or TCP+TLS when UDP is blocked), writes what
//! [`ClientSession::poll_transmit`] hands out, feeds every frame it reads to
//! [`ClientSession::handle_frame`], calls [`ClientSession::handle_timeout`] at
//! [`ClientSession::poll_timeout`], and acts on [`ClientSession::poll_event`]:
//!
//! ```text
//!  AwaitingWelcome --Welcome--> Open --Refused / bad frame / stream end--> Ended
//!        | no welcome in time, Refused, bad frame                            ^
//!        +-------------------------------------------------------------------+
//!                   Open --idle for park_after: Park--> Parking --Parked--> (parked)
//! ```
//!
//! With `park_after` set (UDP sessions), a session with nothing on it but pings for that long
//! asks the relay to park it: the relay keeps the registration (presence, session tag, the
//! data path) without the connection, and the driver closes the connection and runs a
//! [`ParkedSession`] (keep-alives; the relay's beacons) until something wakes it. Frames the
//! relay sent before `Parked` are still handled; the driver sends nothing after `Park`.
//!
//! In `Open` the machine pings the relay every `ping_interval` (RTT, and the TCP fallback's
//! NAT mapping). Once the relay lists other relays of its cluster (there is somewhere to
//! go), it watches the relay: a ping after [`CLUSTER_PING_INTERVAL`] of silence, and the
//! session ends after [`CLUSTER_SILENCE`] without a frame. It assembles the chunked presence snapshot (bounded), drops presence about
//! ourselves, and turns every way a session ends into a [`SessionEnd`]: retry after
//! [`Backoff`], or stop for good (a wrong token cannot be fixed by retrying, and two processes
//! with one key would replace each other forever).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientFrame, PeerInfo, RefuseReason, ServerFrame, SignalFailure};
use crate::PeerId;
use crate::frame::RawFrame;

/// Silence after which a relay of a cluster is pinged.
pub const CLUSTER_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which a relay of a cluster is given up (its peers move to another relay).
pub const CLUSTER_SILENCE: Duration = Duration::from_secs(3);

/// How long the relay has to answer `Park`.
pub const PARK_ANSWER: Duration = Duration::from_secs(5);

/// Peers accepted in one presence snapshot; a relay that sends more is broken or hostile.
pub const MAX_SNAPSHOT_PEERS: usize = 256 * 1024;

/// What the client tells the relay when it logs in.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Display name.
    pub name: String,
    /// Access token, if the relay needs one.
    pub token: Option<String>,
    /// Whether to receive presence.
    pub presence: bool,
    /// How long the relay has to answer `Hello`.
    pub welcome_timeout: Duration,
    /// Ping period once open.
    pub ping_interval: Duration,
    /// Park the session after this long with nothing on it but pings (`None`: never; the TCP
    /// fallback cannot park).
    pub park_after: Option<Duration>,
}

/// A change in who is online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The complete list (replaces what was known).
    Snapshot(Vec<PeerInfo>),
    /// A peer came online (possibly a restarted process of a known peer).
    Joined(PeerInfo),
    /// A peer changed its name.
    Updated(PeerInfo),
    /// A peer went offline.
    Left(PeerId),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Try again after the backoff.
    Retry(String),
    /// Do not try again.
    Fatal(RefuseReason, String),
}

impl SessionEnd {
    /// The end a refusal means (from a `Refused` frame, or from the close code of a relay
    /// that closed before its frame was read).
    pub fn refused(reason: RefuseReason, detail: String) -> Self {
        match reason {
            RefuseReason::BadToken | RefuseReason::Replaced => Self::Fatal(reason, detail),
            _ => Self::Retry(format!("{reason}: {detail}")),
        }
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The relay registered us.
    Welcome {
        /// Binds our UDP relay packets to this session.
        session_tag: [u8; 16],
        /// Our address as the relay sees it.
        observed: SocketAddr,
        /// The relay's address-reflection ports.
        reflect_ports: Vec<u16>,
    },
    /// Presence changed.
    Presence(PresenceChange),
    /// A signal from another peer.
    Signal {
        /// Sender, as authenticated by the relay.
        from: PeerId,
        /// Opaque payload.
        payload: Bytes,
    },
    /// A signal we sent was not delivered.
    SignalFailed {
        /// The addressed peer.
        to: PeerId,
        /// Why.
        reason: SignalFailure,
    },
    /// A relayed packet (TCP fallback).
    Data {
        /// Sender.
        from: PeerId,
        /// Opaque QUIC packet.
        packet: Bytes,
    },
    /// The relay vouches for another peer's address (that peer asked it to).
    Vouched {
        /// The peer, as authenticated by the relay.
        from: PeerId,
        /// Its UDP address as the relay sees it.
        observed: SocketAddr,
    },
    /// The relays of the relay's cluster (it is first).
    Relays(Vec<crate::relay::RelayEntry>),
    /// The relay parked the session: close the connection and run a [`ParkedSession`].
    Parked(Parking),
    /// The session is over.
    Ended(SessionEnd),
}

/// What the relay said when it parked the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parking {
    /// Its beacons carry this.
    pub secret: [u8; 16],
    /// How often to send `ParkAlive`.
    pub keepalive: Duration,
    /// How often it sends a beacon (`None`: it does not; a relay alone).
    pub beacon: Option<Duration>,
}

#[derive(Debug)]
enum Phase {
    AwaitingWelcome {
        deadline: Instant,
    },
    Open {
        next_ping: Instant,
        /// When the last frame arrived.
        heard: Instant,
    },
    /// `Park` sent; waiting for `Parked`.
    Parking {
        deadline: Instant,
    },
    Ended,
}

/// One relay session, peer side.
#[derive(Debug)]
pub struct ClientSession {
    me: PeerId,
    ping_interval: Duration,
    park_after: Option<Duration>,
    /// When a frame other than a ping or a pong last went either way.
    active: Instant,
    /// The relay refused `Park` as a protocol violation (a relay that does not park refuses
    /// the frame it does not know).
    park_refused: bool,
    /// The relay has other relays to move to: silence ends the session.
    watched: bool,
    phase: Phase,
    transmit: Vec<u8>,
    snapshot: Vec<PeerInfo>,
    nonce: u64,
    events: VecDeque<ClientEvent>,
}

impl ClientSession {
    /// A session whose stream to the relay opened at `now`; `Hello` is queued.
    pub fn new(now: Instant, me: PeerId, cfg: ClientConfig) -> Self {
        let mut transmit = Vec::new();
        ClientFrame::Hello {
            name: cfg.name,
            token: cfg.token,
            presence: cfg.presence,
        }
        .encode(&mut transmit);
        Self {
            me,
            ping_interval: cfg.ping_interval,
            park_after: cfg.park_after,
            active: now,
            park_refused: false,
            watched: false,
            phase: Phase::AwaitingWelcome {
                deadline: now + cfg.welcome_timeout,
            },
            transmit,
            snapshot: Vec::new(),
            nonce: 0,
            events: VecDeque::new(),
        }
    }

    /// True once the relay has welcomed us and until the session ends.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Queues a frame to the relay (a rename, a signal, a relayed packet) at `now`. Ignored
    /// unless the session is open (after `Park` nothing more may be sent).
    pub fn send(&mut self, now: Instant, frame: &ClientFrame) {
        if self.is_open() {
            self.active = now;
            frame.encode(&mut self.transmit);
        }
    }

    /// Bytes queued toward the relay and not yet handed out.
    pub fn pending(&self) -> usize {
        self.transmit.len()
    }

    /// Bytes to write to the relay, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.transmit.is_empty()).then(|| std::mem::take(&mut self.transmit))
    }

    /// When [`ClientSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let park = self.park_after.map(|after| self.active + after);
        match self.phase {
            Phase::AwaitingWelcome { deadline } | Phase::Parking { deadline } => Some(deadline),
            Phase::Open { next_ping, heard } => {
                let mut at = next_ping;
                if self.watched {
                    at = at.min(heard + CLUSTER_SILENCE);
                }
                Some(park.map_or(at, |p| at.min(p)))
            }
            Phase::Ended => None,
        }
    }

    /// The next thing to do.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::AwaitingWelcome { deadline } if now >= *deadline => {
                self.end(SessionEnd::Retry(
                    "the relay did not answer our hello".into(),
                ));
            }
            Phase::Parking { deadline } if now >= *deadline => {
                self.end(SessionEnd::Retry("the relay did not answer park".into()));
            }
            Phase::Open { heard, .. } if self.watched && now >= *heard + CLUSTER_SILENCE => {
                self.end(SessionEnd::Retry(format!(
                    "the relay went silent for {} s",
                    CLUSTER_SILENCE.as_secs()
                )));
            }
            Phase::Open { .. } if self.park_after.is_some_and(|a| now >= self.active + a) => {
                self.phase = Phase::Parking {
                    deadline: now + PARK_ANSWER,
                };
                ClientFrame::Park.encode(&mut self.transmit);
            }
            Phase::Open { next_ping, .. } if now >= *next_ping => {
                *next_ping = now + self.ping_interval;
                self.nonce += 1;
                ClientFrame::Ping { nonce: self.nonce }.encode(&mut self.transmit);
            }
            _ => {}
        }
    }

    /// The stream to the relay ended or failed.
    pub fn handle_read_error(&mut self, error: &str) {
        let what = match self.phase {
            Phase::AwaitingWelcome { .. } => "reading welcome",
            _ => "relay connection",
        };
        self.end(SessionEnd::Retry(format!("{what}: {error}")));
    }

    /// A frame from the relay.
    pub fn handle_frame(&mut self, now: Instant, raw: RawFrame<'_>) {
        let frame = ServerFrame::decode(raw);
        match self.phase {
            Phase::Ended => {}
            Phase::AwaitingWelcome { .. } => match frame {
                Ok(ServerFrame::Welcome {
                    session_tag,
                    observed,
                    reflect_ports,
                }) => {
                    self.phase = Phase::Open {
                        next_ping: now + self.ping_interval,
                        heard: now,
                    };
                    self.nonce += 1;
                    ClientFrame::Ping { nonce: self.nonce }.encode(&mut self.transmit);
                    self.events.push_back(ClientEvent::Welcome {
                        session_tag,
                        observed,
                        reflect_ports,
                    });
                }
                Ok(ServerFrame::Refused { reason, detail }) => {
                    self.end(SessionEnd::refused(reason, detail));
                }
                Ok(other) => self.end(SessionEnd::Retry(format!(
                    "expected welcome, got {}",
                    frame_name(&other)
                ))),
                Err(e) => self.end(SessionEnd::Retry(format!("bad welcome: {e}"))),
            },
            Phase::Open {
                ref mut heard,
                ref mut next_ping,
            } => match frame {
                Ok(f) => {
                    *heard = now;
                    if self.watched {
                        *next_ping = now + self.ping_interval;
                    }
                    if !matches!(f, ServerFrame::Pong { .. }) {
                        self.active = now;
                    }
                    self.handle_open(now, f)
                }
                Err(e) => self.end(SessionEnd::Retry(format!("relay sent a bad frame: {e}"))),
            },
            // What the relay sent before it saw `Park` still counts.
            Phase::Parking { .. } => match frame {
                Ok(ServerFrame::Parked {
                    secret,
                    keepalive_ms,
                    beacon_ms,
                }) => {
                    self.phase = Phase::Ended;
                    self.events.push_back(ClientEvent::Parked(Parking {
                        secret,
                        keepalive: Duration::from_millis(u64::from(keepalive_ms.max(1000))),
                        beacon: (beacon_ms > 0)
                            .then(|| Duration::from_millis(u64::from(beacon_ms.max(100)))),
                    }));
                }
                Ok(f) => self.handle_open(now, f),
                Err(e) => self.end(SessionEnd::Retry(format!("relay sent a bad frame: {e}"))),
            },
        }
    }

    fn handle_open(&mut self, now: Instant, frame: ServerFrame) {
        let event = match frame {
            ServerFrame::Snapshot { peers, last } => {
                let me = self.me;
                self.snapshot
                    .extend(peers.into_iter().filter(|p| p.id != me));
                if self.snapshot.len() > MAX_SNAPSHOT_PEERS {
                    self.end(SessionEnd::Retry(format!(
                        "the relay's presence snapshot exceeds {MAX_SNAPSHOT_PEERS} peers"
                    )));
                    return;
                }
                if !last {
                    return;
                }
                ClientEvent::Presence(PresenceChange::Snapshot(std::mem::take(&mut self.snapshot)))
            }
            ServerFrame::Joined(info) | ServerFrame::Updated(info) if info.id == self.me => {
                return;
            }
            ServerFrame::Joined(info) => ClientEvent::Presence(PresenceChange::Joined(info)),
            ServerFrame::Updated(info) => ClientEvent::Presence(PresenceChange::Updated(info)),
            ServerFrame::Left(id) => ClientEvent::Presence(PresenceChange::Left(id)),
            ServerFrame::Signal { from, payload } => ClientEvent::Signal { from, payload },
            ServerFrame::SignalFailed { to, reason } => ClientEvent::SignalFailed { to, reason },
            ServerFrame::Pong { .. } => return,
            ServerFrame::Data { from, packet } => ClientEvent::Data { from, packet },
            ServerFrame::Vouched { from, observed } => ClientEvent::Vouched { from, observed },
            ServerFrame::Relays(list) => {
                if list.len() > 1 && !self.watched {
                    self.watched = true;
                    self.ping_interval = self.ping_interval.min(CLUSTER_PING_INTERVAL);
                    if let Phase::Open { next_ping, .. } = &mut self.phase {
                        *next_ping = now + self.ping_interval;
                    }
                }
                ClientEvent::Relays(list)
            }
            ServerFrame::Refused { reason, detail } => {
                self.park_refused =
                    matches!(self.phase, Phase::Parking { .. }) && reason == RefuseReason::Protocol;
                self.end(SessionEnd::refused(reason, detail));
                return;
            }
            ServerFrame::Welcome { .. } => {
                self.end(SessionEnd::Retry("the relay sent a second welcome".into()));
                return;
            }
            ServerFrame::Parked { .. } => {
                self.end(SessionEnd::Retry("the relay parked us unasked".into()));
                return;
            }
        };
        self.events.push_back(event);
    }

    /// Whether the relay refused `Park` (it does not park sessions: better not ask it again).
    pub fn park_refused(&self) -> bool {
        self.park_refused
    }

    fn end(&mut self, end: SessionEnd) {
        if matches!(self.phase, Phase::Ended) {
            return;
        }
        self.phase = Phase::Ended;
        self.snapshot = Vec::new();
        self.transmit.clear();
        self.events.push_back(ClientEvent::Ended(end));
    }
}

fn frame_name(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Snapshot { .. } => "a presence snapshot",
        ServerFrame::Joined(_) => "a join",
        ServerFrame::Left(_) => "a leave",
        ServerFrame::Updated(_) => "an update",
        ServerFrame::Signal { .. } => "a signal",
        ServerFrame::SignalFailed { .. } => "a signal failure",
        ServerFrame::Pong { .. } => "a pong",
        ServerFrame::Data { .. } => "a data frame",
        ServerFrame::Vouched { .. } => "a vouched address",
        ServerFrame::Relays(_) => "a list of relays",
        ServerFrame::Parked { .. } => "parked",
        ServerFrame::Refused { .. } => "a refusal",
    }
}

/// A parked session, peer side: keep-alives to the relay, and what its beacons say.
///
/// The driver sends what [`ParkedSession::poll_transmit`] hands out to the relay's UDP
/// address, feeds every packet from that address to [`ParkedSession::handle_packet`], calls
/// [`ParkedSession::handle_timeout`] at [`ParkedSession::poll_timeout`], and reconnects when
/// either returns [`Unpark`]. A relay that beacons and goes silent for
/// [`ParkedSession::silence`] is taken for dead (its peers move to another relay of the
/// cluster).
#[derive(Debug)]
pub struct ParkedSession {
    tag: [u8; 16],
    parking: Parking,
    next_alive: Instant,
    heard: Instant,
    transmit: Option<crate::packet::Control>,
}

/// Why a parked session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpark {
    /// The relay has something for us: reconnect to it.
    Wake,
    /// The relay's beacons stopped: it is gone; look for another.
    Silent,
    /// The relay answered that it holds no such session (it restarted).
    Gone,
}

impl ParkedSession {
    /// A session parked at `now` (its tag from `Welcome`, the rest from `Parked`).
    pub fn new(now: Instant, tag: [u8; 16], parking: Parking) -> Self {
        Self {
            tag,
            parking,
            next_alive: now + parking.keepalive,
            heard: now,
            transmit: None,
        }
    }

    /// Silence after which a beaconing relay is taken for dead: two beacons lost, and a
    /// third of a period for jitter.
    pub fn silence(&self) -> Option<Duration> {
        self.parking.beacon.map(|b| b * 2 + b / 3)
    }

    /// A packet to send to the relay, if one is due.
    pub fn poll_transmit(&mut self) -> Option<crate::packet::Control> {
        self.transmit.take()
    }

    /// When [`ParkedSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.silence() {
            Some(s) => self.next_alive.min(self.heard + s),
            None => self.next_alive,
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Unpark> {
        if self.silence().is_some_and(|s| now >= self.heard + s) {
            return Some(Unpark::Silent);
        }
        if now >= self.next_alive {
            self.next_alive = now + self.parking.keepalive;
            self.transmit = Some(crate::packet::Control::ParkAlive { tag: self.tag });
        }
        None
    }

    /// A packet arrived from the relay's address: a beacon (one without our secret is
    /// ignored), or `ParkGone` for our tag (the relay lost the session: register again).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        packet: &crate::packet::Control,
    ) -> Option<Unpark> {
        use crate::packet::Control;
        match packet {
            Control::Beacon { secret, wake } if *secret == self.parking.secret => {
                self.heard = now;
                wake.then_some(Unpark::Wake)
            }
            Control::ParkGone { tag } if *tag == self.tag => Some(Unpark::Gone),
            _ => None,
        }
    }
}

/// How long a TCP fallback that worked when UDP did not stays the first choice.
pub const PREFER_TCP_FOR: Duration = Duration::from_secs(300);

/// Which transport a reconnect tries first. UDP (QUIC) normally; the TCP+TLS fallback when
/// forced, or for [`PREFER_TCP_FOR`] after UDP failed and TCP worked (on a network that
/// blocks UDP, every reconnect would otherwise wait out the UDP attempt first). A TCP
/// attempt that fails gives UDP the first try again.
#[derive(Debug, Clone)]
pub struct TransportChoice {
    force_tcp: bool,
    tcp_worked_at: Option<Instant>,
}

impl TransportChoice {
    /// `force_tcp`: the user asked for TCP only.
    pub fn new(force_tcp: bool) -> Self {
        Self {
            force_tcp,
            tcp_worked_at: None,
        }
    }

    /// Whether to start with TCP at `now`.
    pub fn tcp_first(&self, now: Instant) -> bool {
        self.force_tcp
            || self
                .tcp_worked_at
                .is_some_and(|t| now.saturating_duration_since(t) < PREFER_TCP_FOR)
    }

    /// UDP failed and a TCP session was then welcomed at `now`.
    pub fn tcp_worked(&mut self, now: Instant) {
        self.tcp_worked_at = Some(now);
    }

    /// A TCP attempt failed before the relay welcomed us.
    pub fn tcp_failed(&mut self) {
        self.tcp_worked_at = None;
    }
}

/// Exponential reconnect backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    stable: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`; a session that lasted `stable` resets it.
    pub fn new(min: Duration, max: Duration, stable: Duration) -> Self {
        Self {
            min,
            max,
            stable,
            next: min,
        }
    }

    /// How long to wait before the next attempt, after a session that lasted `lasted`;
    /// `jitter` in `[0, 1)` (random, from the driver) adds up to 25 % so that many peers do
    /// not reconnect in lockstep.
    pub fn session_ended(&mut self, lasted: Duration, jitter: f64) -> Duration {
        if lasted >= self.stable {
            self.next = self.min;
        }
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base + base.mul_f64(jitter.clamp(0.0, 1.0) * 0.25)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerId {
        PeerId::from_bytes([1; 32])
    }
    fn peer(b: u8) -> PeerInfo {
        PeerInfo {
            id: PeerId::from_bytes([b; 32]),
            name: format!("p{b}"),
            online_since_ms: 5,
        }
    }

    fn session(t0: Instant) -> ClientSession {
        ClientSession::new(
            t0,
            me(),
            ClientConfig {
                name: "me".into(),
                token: Some("t".into()),
                presence: true,
                welcome_timeout: Duration::from_secs(5),
                ping_interval: Duration::from_secs(10),
                park_after: None,
            },
        )
    }

    fn feed(s: &mut ClientSession, now: Instant, f: &ServerFrame) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (_, raw) = crate::frame::split(&buf, super::super::MAX_FRAME)
            .expect("envelope")
            .expect("whole");
        s.handle_frame(now, raw);
    }

    fn sent(s: &mut ClientSession) -> Vec<ClientFrame> {
        let bytes = s.poll_transmit().unwrap_or_default();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some((used, raw)) =
            crate::frame::split(&bytes[at..], super::super::MAX_FRAME).expect("envelope")
        {
            out.push(ClientFrame::decode(raw).expect("frame"));
            at += used;
        }
        out
    }

    fn events(s: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn welcome() -> ServerFrame {
        ServerFrame::Welcome {
            session_tag: [9; 16],
            observed: "192.0.2.1:4000".parse().expect("addr"),
            reflect_ports: vec![7700, 7701],
        }
    }

    fn open(t0: Instant) -> ClientSession {
        let mut s = session(t0);
        assert!(matches!(sent(&mut s)[..], [ClientFrame::Hello { .. }]));
        feed(&mut s, t0, &welcome());
        assert!(matches!(events(&mut s)[..], [ClientEvent::Welcome { .. }]));
        assert_eq!(sent(&mut s), vec![ClientFrame::Ping { nonce: 1 }]);
        s
    }

    #[test]
    fn hello_goes_first_with_name_token_and_presence() {
        let mut s = session(Instant::now());
        assert_eq!(
            sent(&mut s),
            vec![ClientFrame::Hello {
                name: "me".into(),
                token: Some("t".into()),
                presence: true
            }]
        );
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn no_welcome_in_time_retries() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.handle_timeout(t0 + Duration::from_secs(4));
        assert!(s.poll_event().is_none());
        s.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Ended(SessionEnd::Retry(
                "the relay did not answer our hello".into()
            ))]
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn refusals_that_retrying_cannot_fix_are_fatal() {
        let t0 = Instant::now();
        for (reason, fatal) in [
            (RefuseReason::BadToken, true),
            (RefuseReason::Replaced, true),
            (RefuseReason::ServerFull, false),
            (RefuseReason::ShuttingDown, false),
            (RefuseReason::Timeout, false),
        ] {
            let mut s = session(t0);
            feed(
                &mut s,
                t0,
                &ServerFrame::Refused {
                    reason,
                    detail: "why".into(),
                },
            );
            let ev = events(&mut s);
            let [ClientEvent::Ended(end)] = &ev[..] else {
                panic!("{ev:?}");
            };
            assert_eq!(matches!(end, SessionEnd::Fatal(..)), fatal, "{reason:?}");
        }
    }

    #[test]
    fn anything_but_welcome_first_is_an_error() {
        let t0 = Instant::now();
        let mut s = session(t0);
        feed(&mut s, t0, &ServerFrame::Pong { nonce: 1 });
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Ended(SessionEnd::Retry(
                "expected welcome, got a pong".into()
            ))]
        );
        // Nothing is sent or reported after the end.
        s.send(t0, &ClientFrame::SetName { name: "x".into() });
        assert!(s.poll_transmit().is_none());
        feed(&mut s, t0, &welcome());
        assert!(s.poll_event().is_none());
    }

    /// A session that parks after 30 s of nothing but pings, welcomed at `t0`.
    fn parking(t0: Instant) -> ClientSession {
        let mut s = session(t0);
        s.park_after = Some(Duration::from_secs(30));
        sent(&mut s);
        feed(&mut s, t0, &welcome());
        events(&mut s);
        sent(&mut s);
        s
    }

    #[test]
    fn an_idle_session_parks_and_pings_do_not_keep_it_awake() {
        let t0 = Instant::now();
        let mut s = parking(t0);
        let sec = |n: u64| t0 + Duration::from_secs(n);
        // Pings and pongs are not activity; a signal sent and a presence change received are.
        s.handle_timeout(sec(10));
        assert_eq!(sent(&mut s), vec![ClientFrame::Ping { nonce: 2 }]);
        feed(&mut s, sec(10), &ServerFrame::Pong { nonce: 2 });
        let signal = ClientFrame::Signal {
            to: PeerId::from_bytes([2; 32]),
            payload: Bytes::from_static(b"x"),
        };
        s.send(sec(12), &signal);
        feed(
            &mut s,
            sec(20),
            &ServerFrame::Left(PeerId::from_bytes([3; 32])),
        );
        assert!(matches!(
            events(&mut s)[..],
            [ClientEvent::Presence(PresenceChange::Left(_))]
        ));
        assert_eq!(s.poll_timeout(), Some(sec(20)), "the next ping");
        s.handle_timeout(sec(20));
        s.handle_timeout(sec(30));
        assert_eq!(s.poll_timeout(), Some(sec(40)));
        assert_eq!(sent(&mut s).len(), 3, "{signal:?} and two pings");
        s.handle_timeout(sec(49));
        assert!(!sent(&mut s).contains(&ClientFrame::Park));
        s.handle_timeout(sec(50));
        assert_eq!(sent(&mut s), vec![ClientFrame::Park]);
        assert!(!s.is_open(), "nothing more is sent after park");
        s.send(sec(50), &signal);
        assert!(s.poll_transmit().is_none());

        // A signal the relay sent before it saw `Park` still arrives; then `Parked`.
        let from = PeerId::from_bytes([4; 32]);
        let early = ServerFrame::Signal {
            from,
            payload: Bytes::from_static(b"hi"),
        };
        feed(&mut s, sec(50), &early);
        let parked = ServerFrame::Parked {
            secret: [7; 16],
            keepalive_ms: 15_000,
            beacon_ms: 1_500,
        };
        feed(&mut s, sec(50), &parked);
        assert_eq!(
            events(&mut s),
            vec![
                ClientEvent::Signal {
                    from,
                    payload: Bytes::from_static(b"hi")
                },
                ClientEvent::Parked(Parking {
                    secret: [7; 16],
                    keepalive: Duration::from_secs(15),
                    beacon: Some(Duration::from_millis(1_500)),
                })
            ]
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_relay_that_does_not_answer_park_or_parks_us_unasked_is_left() {
        let t0 = Instant::now();
        let mut s = parking(t0);
        s.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(sent(&mut s), vec![ClientFrame::Park]);
        s.handle_timeout(t0 + Duration::from_secs(30) + PARK_ANSWER);
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Ended(SessionEnd::Retry(
                "the relay did not answer park".into()
            ))]
        );
        assert!(!s.park_refused(), "a relay that went silent did not refuse");
        // An older relay refuses the frame it does not know: not asked to park again.
        let mut s = parking(t0);
        s.handle_timeout(t0 + Duration::from_secs(30));
        feed(
            &mut s,
            t0 + Duration::from_secs(30),
            &ServerFrame::Refused {
                reason: RefuseReason::Protocol,
                detail: "unknown frame type 0x07".into(),
            },
        );
        assert!(s.park_refused());
        assert!(!parking(t0).park_refused());
        let mut s = open(t0);
        feed(
            &mut s,
            t0,
            &ServerFrame::Parked {
                secret: [0; 16],
                keepalive_ms: 1,
                beacon_ms: 0,
            },
        );
        assert!(matches!(
            events(&mut s)[..],
            [ClientEvent::Ended(SessionEnd::Retry(_))]
        ));
    }

    fn beacon(secret: [u8; 16], wake: bool) -> crate::packet::Control {
        crate::packet::Control::Beacon { secret, wake }
    }

    #[test]
    fn a_parked_session_keeps_alive_and_wakes_or_gives_a_silent_relay_up() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let parking = Parking {
            secret: [7; 16],
            keepalive: Duration::from_secs(15),
            beacon: Some(Duration::from_millis(1_500)),
        };
        let mut p = ParkedSession::new(t0, [9; 16], parking);
        assert_eq!(p.silence(), Some(Duration::from_millis(3_500)));
        // Beacons (ours) keep it; one with another secret does not, nor wakes it.
        assert_eq!(p.handle_packet(ms(1_500), &beacon([7; 16], false)), None);
        assert_eq!(p.handle_packet(ms(4_000), &beacon([8; 16], true)), None);
        assert_eq!(p.poll_timeout(), ms(5_000));
        assert_eq!(p.handle_timeout(ms(4_999)), None);
        assert_eq!(p.handle_timeout(ms(5_000)), Some(Unpark::Silent));

        let mut p = ParkedSession::new(t0, [9; 16], parking);
        for n in 1..=10 {
            assert_eq!(
                p.handle_packet(ms(1_500 * n), &beacon([7; 16], false)),
                None
            );
        }
        assert_eq!(p.poll_timeout(), ms(15_000), "the keep-alive is due first");
        assert_eq!(p.handle_timeout(ms(15_000)), None);
        assert_eq!(
            p.poll_transmit(),
            Some(crate::packet::Control::ParkAlive { tag: [9; 16] })
        );
        assert_eq!(p.poll_transmit(), None);
        assert_eq!(
            p.handle_packet(ms(16_000), &beacon([7; 16], true)),
            Some(Unpark::Wake)
        );
        // A relay that lost the session says so for our tag (another tag is not ours).
        let gone = |tag| crate::packet::Control::ParkGone { tag };
        assert_eq!(p.handle_packet(ms(16_000), &gone([8; 16])), None);
        assert_eq!(
            p.handle_packet(ms(16_000), &gone([9; 16])),
            Some(Unpark::Gone)
        );

        // A relay alone sends no beacons: only the keep-alives, for as long as it takes.
        let alone = Parking {
            beacon: None,
            ..parking
        };
        let mut p = ParkedSession::new(t0, [9; 16], alone);
        assert_eq!(p.silence(), None);
        assert_eq!(p.handle_timeout(ms(600_000)), None);
        assert!(p.poll_transmit().is_some());
        assert_eq!(p.poll_timeout(), ms(615_000));
    }

    #[test]
    fn pings_every_interval_once_open() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(s.poll_timeout(), Some(t1));
        s.handle_timeout(t1 - Duration::from_millis(1));
        assert!(s.poll_transmit().is_none());
        s.handle_timeout(t1);
        assert_eq!(sent(&mut s), vec![ClientFrame::Ping { nonce: 2 }]);
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn a_relay_with_others_to_move_to_is_pinged_when_silent_and_left_after_3_s() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let entry = |n: u8| crate::relay::RelayEntry {
            key: PeerId::from_bytes([n; 32]),
            addr: format!("192.0.2.{n}:7700"),
            region: String::new(),
            peers: 0,
        };
        // A list of itself alone changes nothing.
        feed(&mut s, t0, &ServerFrame::Relays(vec![entry(1)]));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        feed(&mut s, t0, &ServerFrame::Relays(vec![entry(1), entry(2)]));
        assert!(
            matches!(&events(&mut s)[..], [ClientEvent::Relays(_), ClientEvent::Relays(l)] if l.len() == 2)
        );
        // Silent for a second: a ping. Any frame counts as heard.
        let t1 = t0 + CLUSTER_PING_INTERVAL;
        assert_eq!(s.poll_timeout(), Some(t1));
        s.handle_timeout(t1);
        assert_eq!(sent(&mut s), vec![ClientFrame::Ping { nonce: 2 }]);
        let t2 = t1 + Duration::from_millis(500);
        feed(&mut s, t2, &ServerFrame::Pong { nonce: 2 });
        assert_eq!(s.poll_timeout(), Some(t2 + CLUSTER_PING_INTERVAL));
        // Then nothing: pings, and at 3 s of silence the session ends (to move elsewhere).
        s.handle_timeout(t2 + CLUSTER_PING_INTERVAL);
        s.handle_timeout(t2 + 2 * CLUSTER_PING_INTERVAL);
        assert_eq!(sent(&mut s).len(), 2);
        assert!(events(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), Some(t2 + CLUSTER_SILENCE));
        s.handle_timeout(t2 + CLUSTER_SILENCE);
        assert!(matches!(
            &events(&mut s)[..],
            [ClientEvent::Ended(SessionEnd::Retry(why))] if why.contains("silent")
        ));
    }

    #[test]
    fn a_chunked_snapshot_is_reported_once_whole_without_ourselves() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let mine = PeerInfo {
            id: me(),
            ..peer(1)
        };
        feed(
            &mut s,
            t0,
            &ServerFrame::Snapshot {
                peers: vec![peer(2), mine.clone()],
                last: false,
            },
        );
        assert!(s.poll_event().is_none());
        feed(
            &mut s,
            t0,
            &ServerFrame::Snapshot {
                peers: vec![peer(3)],
                last: true,
            },
        );
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Presence(PresenceChange::Snapshot(vec![
                peer(2),
                peer(3)
            ]))]
        );
        // Our own join and rename are not news.
        feed(&mut s, t0, &ServerFrame::Joined(mine.clone()));
        feed(&mut s, t0, &ServerFrame::Updated(mine));
        feed(&mut s, t0, &ServerFrame::Left(peer(2).id));
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Presence(PresenceChange::Left(peer(2).id))]
        );
    }

    #[test]
    fn an_endless_snapshot_ends_the_session() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let chunk: Vec<PeerInfo> = (0..=255u8).map(peer).collect();
        let frame = ServerFrame::Snapshot {
            peers: chunk,
            last: false,
        };
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        let (_, raw) = crate::frame::split(&buf, super::super::MAX_FRAME)
            .expect("envelope")
            .expect("whole");
        // 255 peers a chunk (one is ourselves): one chunk more than the cap allows.
        for _ in 0..=(MAX_SNAPSHOT_PEERS / 255) {
            s.handle_frame(t0, raw);
        }
        let ev = events(&mut s);
        assert!(
            matches!(&ev[..], [ClientEvent::Ended(SessionEnd::Retry(r))] if r.contains("snapshot")),
            "{ev:?}"
        );
    }

    #[test]
    fn signals_data_and_failures_are_passed_on() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let from = peer(4).id;
        feed(
            &mut s,
            t0,
            &ServerFrame::Signal {
                from,
                payload: Bytes::from_static(b"sig"),
            },
        );
        feed(
            &mut s,
            t0,
            &ServerFrame::SignalFailed {
                to: from,
                reason: SignalFailure::Offline,
            },
        );
        feed(
            &mut s,
            t0,
            &ServerFrame::Data {
                from,
                packet: Bytes::from_static(b"pkt"),
            },
        );
        feed(&mut s, t0, &ServerFrame::Pong { nonce: 1 });
        assert_eq!(
            events(&mut s),
            vec![
                ClientEvent::Signal {
                    from,
                    payload: Bytes::from_static(b"sig")
                },
                ClientEvent::SignalFailed {
                    to: from,
                    reason: SignalFailure::Offline
                },
                ClientEvent::Data {
                    from,
                    packet: Bytes::from_static(b"pkt")
                },
            ]
        );
    }

    #[test]
    fn a_second_welcome_or_a_bad_frame_retries() {
        let t0 = Instant::now();
        let mut s = open(t0);
        feed(&mut s, t0, &welcome());
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Ended(SessionEnd::Retry(
                "the relay sent a second welcome".into()
            ))]
        );
        let mut s = open(t0);
        s.handle_frame(
            t0,
            RawFrame {
                ty: 0x01,
                body: &[],
            },
        );
        assert!(matches!(
            &events(&mut s)[..],
            [ClientEvent::Ended(SessionEnd::Retry(r))] if r.starts_with("relay sent a bad frame")
        ));
        let mut s = open(t0);
        s.handle_read_error("the stream was closed");
        assert_eq!(
            events(&mut s),
            vec![ClientEvent::Ended(SessionEnd::Retry(
                "relay connection: the stream was closed".into()
            ))]
        );
    }

    #[test]
    fn a_tcp_fallback_that_worked_is_tried_first_for_a_while() {
        let t0 = Instant::now();
        let mut c = TransportChoice::new(false);
        assert!(!c.tcp_first(t0));
        c.tcp_worked(t0);
        assert!(c.tcp_first(t0 + Duration::from_secs(299)));
        assert!(!c.tcp_first(t0 + PREFER_TCP_FOR), "UDP gets another chance");
        c.tcp_worked(t0);
        c.tcp_failed();
        assert!(!c.tcp_first(t0));
        let mut forced = TransportChoice::new(true);
        forced.tcp_failed();
        assert!(forced.tcp_first(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_resets_after_a_stable_session() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(250), Duration::from_secs(10), Duration::from_secs(10));
        let waits: Vec<_> = (0..8).map(|_| b.session_ended(ms(10), 0.0)).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000].map(ms)
        );
        assert_eq!(b.session_ended(ms(10), 1.0), ms(12_500));
        assert_eq!(
            b.session_ended(Duration::from_secs(10), 0.5),
            ms(281) + Duration::from_micros(250)
        );
        assert_eq!(b.session_ended(ms(10), 0.0), ms(500));
    }
}
