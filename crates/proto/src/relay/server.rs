//! The relay's side of one session, as a sans-IO state machine.
//!
//! The driver reads frames from the peer's control stream (QUIC or TCP+TLS) and hands them to
//! [`ServerSession::handle_frame`], reports the stream's end with
//! [`ServerSession::handle_read_error`], calls [`ServerSession::handle_timeout`] at
//! [`ServerSession::poll_timeout`], and carries out what [`ServerSession::poll_event`] asks:
//! register the peer, rename it, route a signal or a packet, answer a ping, or close the
//! session with the reason it gives. The session table (who is online, presence fan-out) and
//! the socket are the driver's; this machine decides everything that concerns one session:
//!
//! ```text
//!  AwaitingHello --Hello, token ok--> Registering --registered()--> Open --(end)--> Closed
//!        |  no hello in time, bad first frame, bad token      |  refuse() (server full)
//!        +----------------------------------------------------+-----------------> Closed
//!                                           Open --Park--> Parking --peer closes--> Closed
//! ```
//!
//! `Park` asks the relay to keep the session without its connection ([`SessionEvent::Park`]:
//! the driver moves it to a parked entry of its table and queues `Parked`); the peer then
//! closes the connection, which ends the session with [`CloseCause::Parked`] (after
//! [`PARKING_GRACE`] at the latest). A frame after `Park` is a protocol violation: the peer
//! waits for `Parked` and sends nothing more.
//!
//! In `Open`: every frame restarts the idle timer; control frames (everything but `Data`) are
//! rate limited (`Data` is charged to the data rate by the driver, which shares it with the
//! UDP path), and a peer over twice the burst is closed as abusive; signals have their own,
//! lower rate, above which they fail with `RateLimited` and the session stays up; a second
//! `Hello` or an undecodable frame is a protocol violation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientFrame, RefuseReason, ServerFrame, SignalFailure};
use crate::PeerId;
use crate::frame::RawFrame;
use crate::limits::TokenBucket;

/// How long a parking peer has to close its connection after `Park`.
pub const PARKING_GRACE: Duration = Duration::from_secs(2);

/// What a session's machine needs to know of the relay's settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Shared access token required in `Hello` (`None`: anyone may register).
    pub token: Option<String>,
    /// Time allowed from connection to `Hello`.
    pub handshake_timeout: Duration,
    /// A session with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// Control frames per second; a burst above twice this closes the session.
    pub control_rate: f64,
    /// Signals per second; above it signals fail with `RateLimited`.
    pub signal_rate: f64,
    /// A name change reaches the other peers at most this often: renames in between are
    /// coalesced, and the last one goes out when the interval ends (every rename costs the
    /// relay one `Updated` frame per subscriber, and every subscriber a write).
    pub rename_every: Duration,
}

/// Why a session closed, in the words of the relay's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCause {
    /// Wrong or missing token.
    BadToken,
    /// The relay is full.
    ServerFull,
    /// A newer login with the same key replaced the session.
    Replaced,
    /// A protocol violation (bad frame, wrong order).
    Protocol,
    /// Control frames above the rate limit.
    RateLimited,
    /// No hello in time, or idle.
    Timeout,
    /// The peer closed its stream or the connection was lost.
    Disconnected,
    /// The relay is shutting down.
    ShuttingDown,
    /// The peer parked the session (it stays registered without its connection).
    Parked,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// The reason sent to the peer (in `Refused`, and as the connection's close code).
    pub reason: RefuseReason,
    /// Human-readable detail.
    pub detail: String,
    /// The cause as the metrics count it.
    pub cause: CloseCause,
    /// Whether the peer should get a `Refused` frame before the connection closes (false
    /// when it never said hello: nothing it could read would help).
    pub tell_peer: bool,
}

impl std::fmt::Display for Closure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The peer said hello with the right token: register it (replacing an older session of
    /// the same key, or refusing with [`ServerSession::refuse`] when the relay is full), then
    /// call [`ServerSession::registered`].
    Login {
        /// Display name.
        name: String,
        /// Whether it wants presence (snapshot and events).
        presence: bool,
    },
    /// The peer renamed itself.
    Rename {
        /// New display name.
        name: String,
    },
    /// Deliver a signal from this peer to `to`; if it cannot, send the peer
    /// `SignalFailed` (`Offline` or `QueueFull`).
    Signal {
        /// Recipient.
        to: PeerId,
        /// Opaque payload.
        payload: Bytes,
    },
    /// Forward a packet (TCP fallback) after charging it to the peer's data rate.
    Data {
        /// Recipient.
        to: PeerId,
        /// Opaque QUIC packet.
        packet: Bytes,
    },
    /// Tell `to` (if online) the address this peer's UDP session comes from
    /// (`Vouched { from: this peer, observed }`); nothing for a session without UDP.
    Vouch {
        /// The peer to tell.
        to: PeerId,
    },
    /// Queue this frame to the peer (`Pong`, `SignalFailed`).
    Send(ServerFrame),
    /// The peer asks to park: keep it registered without the connection (a parked entry
    /// with its tag, address and presence) and queue `Parked` as the connection's last frame;
    /// or, if it cannot be parked (no UDP), [`ServerSession::refuse`] it.
    Park,
    /// The session is over: unregister it and close the connection.
    Closed(Closure),
}

#[derive(Debug)]
enum Phase {
    AwaitingHello {
        deadline: Instant,
    },
    Registering,
    Open {
        idle_deadline: Instant,
        control: TokenBucket,
        signals: TokenBucket,
        renames: Renames,
    },
    /// Asked to park; waits for the peer to close.
    Parking {
        deadline: Instant,
    },
    Closed,
}

/// Name changes, coalesced to one per [`SessionConfig::rename_every`].
#[derive(Debug, Default)]
struct Renames {
    /// When the last one was reported.
    last: Option<Instant>,
    /// The newest name not reported yet.
    pending: Option<String>,
}

impl Renames {
    /// When the pending name is due.
    fn due(&self, every: Duration) -> Option<Instant> {
        self.pending.as_ref()?;
        self.last.map(|t| t + every)
    }
}

/// One peer's session, relay side.
#[derive(Debug)]
pub struct ServerSession {
    cfg: SessionConfig,
    phase: Phase,
    events: VecDeque<SessionEvent>,
    closure: Option<Closure>,
}

/// How the peer's control stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// Closed cleanly between frames.
    Closed,
    /// Failed or carried a malformed frame envelope.
    Error(String),
}

impl ServerSession {
    /// A session whose connection (and key proof) completed at `now`.
    pub fn new(now: Instant, cfg: SessionConfig) -> Self {
        let deadline = now + cfg.handshake_timeout;
        Self {
            cfg,
            phase: Phase::AwaitingHello { deadline },
            events: VecDeque::new(),
            closure: None,
        }
    }

    /// How the session ended, once it has.
    pub fn closure(&self) -> Option<&Closure> {
        self.closure.as_ref()
    }

    /// True once the session is open (registered).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// When [`ServerSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::AwaitingHello { deadline } => Some(*deadline),
            Phase::Open {
                idle_deadline,
                renames,
                ..
            } => Some(match renames.due(self.cfg.rename_every) {
                Some(due) => due.min(*idle_deadline),
                None => *idle_deadline,
            }),
            Phase::Parking { deadline } => Some(*deadline),
            Phase::Registering | Phase::Closed => None,
        }
    }

    /// The next thing to do.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let every = self.cfg.rename_every;
        if let Phase::Open { renames, .. } = &mut self.phase
            && renames.due(every).is_some_and(|due| now >= due)
            && let Some(name) = renames.pending.take()
        {
            renames.last = Some(now);
            self.events.push_back(SessionEvent::Rename { name });
        }
        match &self.phase {
            Phase::AwaitingHello { deadline } if now >= *deadline => {
                self.close_quietly(
                    RefuseReason::Timeout,
                    "no hello in time",
                    CloseCause::Timeout,
                );
            }
            Phase::Open { idle_deadline, .. } if now >= *idle_deadline => {
                self.close(RefuseReason::Timeout, "idle", CloseCause::Timeout);
            }
            Phase::Parking { deadline } if now >= *deadline => {
                self.close_quietly(RefuseReason::Timeout, "parked", CloseCause::Parked);
            }
            _ => {}
        }
    }

    /// The peer's stream ended or failed.
    pub fn handle_read_error(&mut self, end: ReadEnd) {
        match (&self.phase, end) {
            (Phase::AwaitingHello { .. }, ReadEnd::Closed) => self.close_quietly(
                RefuseReason::Protocol,
                "reading hello: the stream was closed",
                CloseCause::Protocol,
            ),
            (Phase::AwaitingHello { .. }, ReadEnd::Error(e)) => self.close_quietly(
                RefuseReason::Protocol,
                &format!("reading hello: {e}"),
                CloseCause::Protocol,
            ),
            (Phase::Parking { .. }, _) => {
                self.close_quietly(RefuseReason::Timeout, "parked", CloseCause::Parked);
            }
            (_, ReadEnd::Closed) => {
                self.close(
                    RefuseReason::Protocol,
                    "closed by peer",
                    CloseCause::Disconnected,
                );
            }
            (_, ReadEnd::Error(e)) => self.close(RefuseReason::Protocol, &e, CloseCause::Protocol),
        }
    }

    /// A frame from the peer.
    pub fn handle_frame(&mut self, now: Instant, raw: RawFrame<'_>) {
        let frame = ClientFrame::decode(raw);
        match &mut self.phase {
            Phase::Closed => {}
            Phase::AwaitingHello { .. } => match frame {
                Ok(ClientFrame::Hello {
                    name,
                    token,
                    presence,
                }) => {
                    if let Some(want) = &self.cfg.token
                        && token.as_deref() != Some(want.as_str())
                    {
                        self.close(
                            RefuseReason::BadToken,
                            "access token missing or wrong",
                            CloseCause::BadToken,
                        );
                        return;
                    }
                    self.phase = Phase::Registering;
                    self.events
                        .push_back(SessionEvent::Login { name, presence });
                }
                Ok(_) | Err(_) => self.close(
                    RefuseReason::Protocol,
                    "the first frame must be hello",
                    CloseCause::Protocol,
                ),
            },
            // The driver registers synchronously after `Login`; a frame here is a driver bug,
            // not the peer's: keep it for after registration would need a queue, so refuse.
            Phase::Registering => self.close(
                RefuseReason::Protocol,
                "frame before registration completed",
                CloseCause::Protocol,
            ),
            Phase::Parking { .. } => self.close_quietly(
                RefuseReason::Protocol,
                "a frame after park",
                CloseCause::Protocol,
            ),
            Phase::Open {
                idle_deadline,
                control,
                signals,
                renames,
            } => {
                *idle_deadline = now + self.cfg.idle_timeout;
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        self.close(RefuseReason::Protocol, &e.to_string(), CloseCause::Protocol);
                        return;
                    }
                };
                if let ClientFrame::Data { to, packet } = frame {
                    self.events.push_back(SessionEvent::Data { to, packet });
                    return;
                }
                if !control.take(now, 1.0) {
                    self.close(
                        RefuseReason::RateLimited,
                        "too many control frames",
                        CloseCause::RateLimited,
                    );
                    return;
                }
                let event = match frame {
                    ClientFrame::Hello { .. } => {
                        self.close(RefuseReason::Protocol, "second hello", CloseCause::Protocol);
                        return;
                    }
                    ClientFrame::SetName { name } => {
                        if renames
                            .last
                            .is_some_and(|t| now < t + self.cfg.rename_every)
                        {
                            // Reported when the interval ends, if no newer name replaces it.
                            renames.pending = Some(name);
                            return;
                        }
                        renames.last = Some(now);
                        renames.pending = None;
                        SessionEvent::Rename { name }
                    }
                    ClientFrame::Signal { to, .. } if !signals.take(now, 1.0) => {
                        SessionEvent::Send(ServerFrame::SignalFailed {
                            to,
                            reason: SignalFailure::RateLimited,
                        })
                    }
                    ClientFrame::Signal { to, payload } => SessionEvent::Signal { to, payload },
                    // Vouches share the signals' budget (each makes the relay send a frame).
                    ClientFrame::Vouch { .. } if !signals.take(now, 1.0) => return,
                    ClientFrame::Vouch { to } => SessionEvent::Vouch { to },
                    ClientFrame::Ping { nonce } => SessionEvent::Send(ServerFrame::Pong { nonce }),
                    ClientFrame::Data { .. } => return,
                    ClientFrame::Park => {
                        // A rename still waiting for its interval goes out first.
                        if let Some(name) = renames.pending.take() {
                            self.events.push_back(SessionEvent::Rename { name });
                        }
                        self.phase = Phase::Parking {
                            deadline: now + PARKING_GRACE,
                        };
                        SessionEvent::Park
                    }
                };
                self.events.push_back(event);
            }
        }
    }

    /// The driver registered the session after [`SessionEvent::Login`].
    pub fn registered(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Registering) {
            self.phase = Phase::Open {
                idle_deadline: now + self.cfg.idle_timeout,
                control: TokenBucket::new(now, self.cfg.control_rate, self.cfg.control_rate * 2.0),
                signals: TokenBucket::new(now, self.cfg.signal_rate, self.cfg.signal_rate * 2.0),
                renames: Renames::default(),
            };
        }
    }

    /// Ends the session for a reason found outside it (the relay is full, a newer login
    /// replaced it, the relay shuts down). The first reason given wins.
    pub fn refuse(&mut self, reason: RefuseReason, detail: &str, cause: CloseCause) {
        self.close(reason, detail, cause);
    }

    fn close(&mut self, reason: RefuseReason, detail: &str, cause: CloseCause) {
        self.end(reason, detail, cause, true);
    }

    fn close_quietly(&mut self, reason: RefuseReason, detail: &str, cause: CloseCause) {
        self.end(reason, detail, cause, false);
    }

    fn end(&mut self, reason: RefuseReason, detail: &str, cause: CloseCause, tell_peer: bool) {
        if self.closure.is_some() {
            return;
        }
        self.phase = Phase::Closed;
        let closure = Closure {
            reason,
            detail: detail.to_string(),
            cause,
            tell_peer,
        };
        self.closure = Some(closure.clone());
        self.events.push_back(SessionEvent::Closed(closure));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>) -> SessionConfig {
        SessionConfig {
            token: token.map(str::to_string),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(40),
            control_rate: 50.0,
            signal_rate: 20.0,
            rename_every: Duration::from_secs(1),
        }
    }

    fn feed(s: &mut ServerSession, now: Instant, f: &ClientFrame) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (_, raw) = crate::frame::split(&buf, super::super::MAX_FRAME)
            .expect("valid envelope")
            .expect("whole frame");
        s.handle_frame(now, raw);
    }

    fn hello(token: Option<&str>) -> ClientFrame {
        ClientFrame::Hello {
            name: "alice".into(),
            token: token.map(str::to_string),
            presence: true,
        }
    }

    fn events(s: &mut ServerSession) -> Vec<SessionEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn closed(s: &mut ServerSession) -> Closure {
        match events(s).pop() {
            Some(SessionEvent::Closed(c)) => c,
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    fn open(t0: Instant) -> ServerSession {
        let mut s = ServerSession::new(t0, cfg(None));
        feed(&mut s, t0, &hello(None));
        assert_eq!(
            events(&mut s),
            vec![SessionEvent::Login {
                name: "alice".into(),
                presence: true
            }]
        );
        s.registered(t0);
        assert!(s.is_open());
        s
    }

    fn peer(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    #[test]
    fn hello_must_come_within_the_handshake_timeout() {
        let t0 = Instant::now();
        let mut s = ServerSession::new(t0, cfg(None));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        s.handle_timeout(t0 + Duration::from_millis(4999));
        assert!(s.poll_event().is_none());
        s.handle_timeout(t0 + Duration::from_secs(5));
        let c = closed(&mut s);
        assert_eq!(
            (c.reason, c.cause, c.tell_peer),
            (RefuseReason::Timeout, CloseCause::Timeout, false)
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn the_first_frame_must_be_hello() {
        let t0 = Instant::now();
        let mut s = ServerSession::new(t0, cfg(None));
        feed(&mut s, t0, &ClientFrame::Ping { nonce: 1 });
        let c = closed(&mut s);
        assert_eq!((c.reason, c.tell_peer), (RefuseReason::Protocol, true));
        assert_eq!(c.detail, "the first frame must be hello");
        // Nothing after the end.
        feed(&mut s, t0, &hello(None));
        assert!(s.poll_event().is_none());
    }

    #[test]
    fn a_wrong_or_missing_token_is_refused() {
        let t0 = Instant::now();
        for token in [None, Some("guess")] {
            let mut s = ServerSession::new(t0, cfg(Some("secret")));
            feed(&mut s, t0, &hello(token));
            let c = closed(&mut s);
            assert_eq!(
                (c.reason, c.cause, c.tell_peer),
                (RefuseReason::BadToken, CloseCause::BadToken, true)
            );
        }
        let mut s = ServerSession::new(t0, cfg(Some("secret")));
        feed(&mut s, t0, &hello(Some("secret")));
        assert!(matches!(s.poll_event(), Some(SessionEvent::Login { .. })));
    }

    #[test]
    fn a_stream_closed_before_hello_ends_quietly() {
        let t0 = Instant::now();
        let mut s = ServerSession::new(t0, cfg(None));
        s.handle_read_error(ReadEnd::Error("malformed frame".into()));
        let c = closed(&mut s);
        assert_eq!((c.reason, c.tell_peer), (RefuseReason::Protocol, false));
        assert_eq!(c.detail, "reading hello: malformed frame");
    }

    #[test]
    fn a_full_relay_refuses_at_registration() {
        let t0 = Instant::now();
        let mut s = ServerSession::new(t0, cfg(None));
        feed(&mut s, t0, &hello(None));
        assert!(matches!(s.poll_event(), Some(SessionEvent::Login { .. })));
        assert_eq!(s.poll_timeout(), None);
        s.refuse(
            RefuseReason::ServerFull,
            "too many peers online",
            CloseCause::ServerFull,
        );
        let c = closed(&mut s);
        assert_eq!(c.to_string(), "the relay is full: too many peers online");
        // A late registration does not reopen it.
        s.registered(t0);
        assert!(!s.is_open());
    }

    #[test]
    fn every_frame_restarts_the_idle_timer() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let idle = Duration::from_secs(40);
        assert_eq!(s.poll_timeout(), Some(t0 + idle));
        let t1 = t0 + Duration::from_secs(30);
        feed(
            &mut s,
            t1,
            &ClientFrame::Data {
                to: peer(2),
                packet: Bytes::from_static(b"quic"),
            },
        );
        assert_eq!(s.poll_timeout(), Some(t1 + idle));
        s.handle_timeout(t0 + idle);
        assert!(matches!(s.poll_event(), Some(SessionEvent::Data { .. })));
        assert!(s.poll_event().is_none());
        s.handle_timeout(t1 + idle);
        let c = closed(&mut s);
        assert_eq!(
            (c.reason, c.detail.as_str()),
            (RefuseReason::Timeout, "idle")
        );
    }

    #[test]
    fn pings_are_answered_and_renames_reported() {
        let t0 = Instant::now();
        let mut s = open(t0);
        feed(&mut s, t0, &ClientFrame::Ping { nonce: 7 });
        feed(&mut s, t0, &ClientFrame::SetName { name: "al".into() });
        assert_eq!(
            events(&mut s),
            vec![
                SessionEvent::Send(ServerFrame::Pong { nonce: 7 }),
                SessionEvent::Rename { name: "al".into() }
            ]
        );
    }

    #[test]
    fn renames_reach_others_at_most_once_per_interval_and_the_last_one_wins() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let every = cfg(None).rename_every;
        // 49 renames within the first second (just under the control-frame limit).
        for i in 0..49u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 20);
            feed(
                &mut s,
                at,
                &ClientFrame::SetName {
                    name: format!("n{i}"),
                },
            );
        }
        // The first went out at once; the others wait for the interval and coalesce.
        assert_eq!(
            events(&mut s),
            vec![SessionEvent::Rename { name: "n0".into() }]
        );
        let due = s.poll_timeout().unwrap();
        assert_eq!(due, t0 + every);
        s.handle_timeout(due - Duration::from_millis(1));
        assert!(events(&mut s).is_empty(), "not before it is due");
        s.handle_timeout(due);
        assert_eq!(
            events(&mut s),
            vec![SessionEvent::Rename { name: "n48".into() }]
        );
        // Nothing pending: the session waits for its idle deadline only.
        assert_eq!(
            s.poll_timeout(),
            Some(t0 + Duration::from_millis(48 * 20) + cfg(None).idle_timeout)
        );
        // A rename long after the last goes out at once.
        let later = due + every * 2;
        feed(
            &mut s,
            later,
            &ClientFrame::SetName {
                name: "calm".into(),
            },
        );
        assert_eq!(
            events(&mut s),
            vec![SessionEvent::Rename {
                name: "calm".into()
            }]
        );
    }

    #[test]
    fn oversize_data_is_a_protocol_violation() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let mut body = vec![2u8; 32];
        let len = super::super::MAX_DATA + 1;
        body.extend((len as u16).to_be_bytes());
        body.resize(body.len() + len, 0);
        s.handle_frame(
            t0,
            RawFrame {
                ty: 0x05,
                body: &body,
            },
        );
        let c = closed(&mut s);
        assert_eq!(
            (c.reason, c.cause),
            (RefuseReason::Protocol, CloseCause::Protocol)
        );
    }

    #[test]
    fn signals_above_their_rate_fail_without_closing() {
        let t0 = Instant::now();
        let mut s = open(t0);
        let signal = ClientFrame::Signal {
            to: peer(2),
            payload: Bytes::from_static(b"offer"),
        };
        // Burst: twice the rate (40), then refused.
        for _ in 0..40 {
            feed(&mut s, t0, &signal);
            assert!(matches!(s.poll_event(), Some(SessionEvent::Signal { .. })));
        }
        feed(&mut s, t0, &signal);
        assert_eq!(
            s.poll_event(),
            Some(SessionEvent::Send(ServerFrame::SignalFailed {
                to: peer(2),
                reason: SignalFailure::RateLimited
            }))
        );
        assert!(s.is_open());
        // The rate refills: 50 ms later one more signal goes through.
        feed(&mut s, t0 + Duration::from_millis(50), &signal);
        assert!(matches!(s.poll_event(), Some(SessionEvent::Signal { .. })));
        // Vouches draw on the same budget: spent, they are dropped (nobody is told).
        let vouch = ClientFrame::Vouch { to: peer(2) };
        feed(&mut s, t0 + Duration::from_millis(50), &vouch);
        assert_eq!(s.poll_event(), None);
        feed(&mut s, t0 + Duration::from_millis(100), &vouch);
        assert_eq!(s.poll_event(), Some(SessionEvent::Vouch { to: peer(2) }));
        assert!(s.is_open());
    }

    #[test]
    fn a_control_flood_closes_the_session_but_data_is_not_counted() {
        let t0 = Instant::now();
        let mut s = open(t0);
        for _ in 0..1000 {
            feed(
                &mut s,
                t0,
                &ClientFrame::Data {
                    to: peer(2),
                    packet: Bytes::from_static(b"x"),
                },
            );
        }
        assert_eq!(events(&mut s).len(), 1000);
        // The burst is twice the rate: 100 control frames pass, the 101st closes.
        for n in 0..101 {
            feed(&mut s, t0, &ClientFrame::Ping { nonce: n });
        }
        let all = events(&mut s);
        assert_eq!(all.len(), 101, "100 pongs, then the close");
        let Some(SessionEvent::Closed(c)) = all.last() else {
            panic!("expected a close, got {all:?}");
        };
        assert_eq!(
            (c.reason, c.cause),
            (RefuseReason::RateLimited, CloseCause::RateLimited)
        );
    }

    #[test]
    fn a_second_hello_or_garbage_is_a_protocol_error() {
        let t0 = Instant::now();
        let mut s = open(t0);
        feed(&mut s, t0, &hello(None));
        assert_eq!(closed(&mut s).detail, "second hello");

        let mut s = open(t0);
        s.handle_frame(
            t0,
            RawFrame {
                ty: 0x7f,
                body: &[],
            },
        );
        assert_eq!(closed(&mut s).reason, RefuseReason::Protocol);
    }

    #[test]
    fn the_first_reason_wins() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.refuse(
            RefuseReason::Replaced,
            "a newer login with this key replaced this session",
            CloseCause::Replaced,
        );
        s.handle_read_error(ReadEnd::Closed);
        s.handle_timeout(t0 + Duration::from_secs(3600));
        let all = events(&mut s);
        assert_eq!(all.len(), 1);
        assert_eq!(s.closure().map(|c| c.reason), Some(RefuseReason::Replaced));
    }

    #[test]
    fn a_parking_peer_closes_its_connection_and_a_frame_after_park_is_a_violation() {
        let t0 = Instant::now();
        let mut s = open(t0);
        feed(&mut s, t0, &ClientFrame::SetName { name: "a".into() });
        feed(&mut s, t0, &ClientFrame::SetName { name: "b".into() });
        feed(&mut s, t0, &ClientFrame::Park);
        assert_eq!(
            events(&mut s),
            vec![
                SessionEvent::Rename { name: "a".into() },
                SessionEvent::Rename { name: "b".into() },
                SessionEvent::Park
            ],
            "the coalesced rename goes out before the session parks"
        );
        assert_eq!(s.poll_timeout(), Some(t0 + PARKING_GRACE));
        s.handle_read_error(ReadEnd::Closed);
        let c = closed(&mut s);
        assert_eq!((c.cause, c.tell_peer), (CloseCause::Parked, false));

        // It must not send anything after `Park`; and a peer that never closes is let go.
        let mut s = open(t0);
        feed(&mut s, t0, &ClientFrame::Park);
        feed(&mut s, t0, &ClientFrame::Ping { nonce: 1 });
        assert_eq!(closed(&mut s).cause, CloseCause::Protocol);
        let mut s = open(t0);
        feed(&mut s, t0, &ClientFrame::Park);
        s.handle_timeout(t0 + PARKING_GRACE);
        assert_eq!(closed(&mut s).cause, CloseCause::Parked);
    }

    #[test]
    fn a_peer_closing_its_stream_is_a_disconnect() {
        let t0 = Instant::now();
        let mut s = open(t0);
        s.handle_read_error(ReadEnd::Closed);
        let c = closed(&mut s);
        assert_eq!(
            (c.cause, c.detail.as_str()),
            (CloseCause::Disconnected, "closed by peer")
        );
    }
}
