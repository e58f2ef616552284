//! The call state machine of one side (sans-IO): signaling frames and `now` in; frames to
//! send, events and the next timeout out.
//!
//! ```text
//! caller                                   callee
//! dial ── Offer ──────────────────────────▶ incoming (Incoming: the user is asked)
//! Offering ◀────────────────────── Ringing
//! Ringing                                    accept / reject / RING_TIMEOUT (NoAnswer)
//! Active ◀──────────── Accept | Reject ──── Active | Ended
//! either side: Update (renegotiate), Hangup, Alive every ALIVE_INTERVAL when idle;
//! nothing heard for DEAD_AFTER, or the stream gone → Ended(PeerVanished)
//! ```
//!
//! Codec negotiation ([`negotiate`]): each side sends only the streams whose codec the other
//! side can decode, and decodes only the streams it listed codecs for.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2pcall_proto::call::{
    CallFrame, CallId, GroupJoin, HangupReason, RejectReason, SessionDesc, StreamDesc,
};
use p2pcall_proto::group::RosterMsg;

/// The callee's user has this long to answer before the call ends as unanswered.
pub const RING_TIMEOUT: Duration = Duration::from_secs(45);
/// The callee's software must answer `Ringing` within this (it runs no UI for that).
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// A side that has sent nothing for this long sends `Alive`.
pub const ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Nothing heard from the peer (frames or media) for this long: it is gone. Five missed
/// `Alive`s: long enough for a path switch (≤ 2 s) and a burst of loss.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// Most `Update`s and `Roster` frames a peer may send within one second (a person toggling
/// mute, or inviting, is far below; more is a flood that would make us renegotiate and
/// notify the UI without end).
pub const MAX_UPDATES_PER_SEC: usize = 20;

/// Which side of the call this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialed.
    Caller,
    /// They dialed.
    Callee,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// A side hung up (`remote`: the peer did).
    HungUp {
        /// The peer hung up.
        remote: bool,
        /// Its reason.
        reason: HangupReason,
        /// Details.
        detail: String,
    },
    /// The call was not accepted (`remote`: the peer rejected it).
    Rejected {
        /// The peer rejected.
        remote: bool,
        /// Why.
        reason: RejectReason,
    },
    /// The callee's software did not respond to the offer.
    Unreachable,
    /// The peer stopped responding, or its stream closed.
    PeerVanished,
    /// The peer broke the protocol.
    Protocol(String),
}

/// States.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallState {
    /// Caller: offer sent, waiting for `Ringing`.
    Offering,
    /// Caller: the callee is ringing.
    Ringing,
    /// Callee: the user is asked.
    Incoming,
    /// Media flows.
    Active,
    /// Over.
    Ended(EndReason),
}

/// Streams each way after negotiation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Our streams the peer can decode (send these).
    pub send: Vec<StreamDesc>,
    /// The peer's streams we can decode (expect these).
    pub receive: Vec<StreamDesc>,
}

/// Events for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// Caller: the callee is ringing.
    Ringing,
    /// The call is up.
    Accepted(Negotiated),
    /// The peer changed its description (mute, camera, source).
    Updated(Negotiated),
    /// A group call's member said something about the roster (for the group's roster).
    Roster(RosterMsg),
    /// The call is over.
    Ended(EndReason),
}

/// A command not allowed in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The operation needs another state.
    #[error("cannot {op} a call that is {state}")]
    InvalidState {
        /// What was attempted.
        op: &'static str,
        /// The state it is in.
        state: &'static str,
    },
    /// The first frame of an incoming call stream was not an offer.
    #[error("an incoming call must start with an offer, not {0}")]
    NotAnOffer(&'static str),
}

fn frame_name(f: &CallFrame) -> &'static str {
    match f {
        CallFrame::Offer { .. } => "Offer",
        CallFrame::Ringing => "Ringing",
        CallFrame::Accept { .. } => "Accept",
        CallFrame::Reject { .. } => "Reject",
        CallFrame::Update { .. } => "Update",
        CallFrame::Hangup { .. } => "Hangup",
        CallFrame::Alive => "Alive",
        CallFrame::Roster(_) => "Roster",
    }
}

impl CallState {
    fn name(&self) -> &'static str {
        match self {
            Self::Offering => "offering",
            Self::Ringing => "ringing",
            Self::Incoming => "incoming",
            Self::Active => "active",
            Self::Ended(_) => "ended",
        }
    }
}

/// What each side sends and decodes, given both descriptions.
pub fn negotiate(local: &SessionDesc, remote: &SessionDesc) -> Negotiated {
    Negotiated {
        send: local
            .streams
            .iter()
            .filter(|s| remote.receive.contains(&s.codec))
            .copied()
            .collect(),
        receive: remote
            .streams
            .iter()
            .filter(|s| local.receive.contains(&s.codec))
            .copied()
            .collect(),
    }
}

/// One side of one call.
#[derive(Debug)]
pub struct Call {
    id: CallId,
    role: Role,
    state: CallState,
    local: SessionDesc,
    remote: Option<SessionDesc>,
    /// When the current wait (offer, ringing) ends.
    deadline: Option<Instant>,
    last_sent: Instant,
    last_heard: Instant,
    out: VecDeque<CallFrame>,
    events: VecDeque<CallEvent>,
    /// Arrival times of the peer's recent updates.
    updates: VecDeque<Instant>,
    /// When the call became active.
    pub started: Option<Instant>,
}

impl Call {
    /// Places a call (`group`: one pair's call of group call `id`): the offer is queued.
    pub fn dial(now: Instant, id: CallId, local: SessionDesc, group: Option<GroupJoin>) -> Self {
        let mut c = Self::new(now, id, Role::Caller, CallState::Offering, local.clone());
        c.deadline = Some(now + OFFER_TIMEOUT);
        let session = local;
        c.send(now, CallFrame::Offer { id, session, group });
        c
    }

    /// A call stream's first frame arrived: it must be an offer. `Ringing` is queued; the
    /// application asks its user and calls [`accept`](Self::accept) or
    /// [`reject`](Self::reject).
    pub fn incoming(now: Instant, first: CallFrame) -> Result<(Self, SessionDesc), CallError> {
        let CallFrame::Offer { id, session, .. } = first else {
            return Err(CallError::NotAnOffer(frame_name(&first)));
        };
        let mut c = Self::new(
            now,
            id,
            Role::Callee,
            CallState::Incoming,
            SessionDesc {
                receive: Vec::new(),
                max_width: 0,
                max_height: 0,
                max_fps: 0,
                max_kbps: 0,
                streams: Vec::new(),
            },
        );
        c.remote = Some(session.clone());
        c.deadline = Some(now + RING_TIMEOUT);
        c.send(now, CallFrame::Ringing);
        Ok((c, session))
    }

    fn new(now: Instant, id: CallId, role: Role, state: CallState, local: SessionDesc) -> Self {
        Self {
            id,
            role,
            state,
            local,
            remote: None,
            deadline: None,
            last_sent: now,
            last_heard: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
            updates: VecDeque::new(),
            started: None,
        }
    }

    /// The call id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> &CallState {
        &self.state
    }

    /// Whether the call is over.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, CallState::Ended(_))
    }

    /// The streams each way, once both descriptions are known.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.remote.as_ref().map(|r| negotiate(&self.local, r))
    }

    /// The peer's description (its offer or answer, or its last update).
    pub fn remote(&self) -> Option<&SessionDesc> {
        self.remote.as_ref()
    }

    fn send(&mut self, now: Instant, f: CallFrame) {
        self.last_sent = now;
        self.out.push_back(f);
    }

    fn end(&mut self, reason: EndReason) {
        if !self.is_ended() {
            self.state = CallState::Ended(reason.clone());
            self.deadline = None;
            self.events.push_back(CallEvent::Ended(reason));
        }
    }

    fn activate(&mut self, now: Instant) {
        self.state = CallState::Active;
        self.deadline = None;
        self.started = Some(now);
        let n = self.negotiated().unwrap_or_default();
        self.events.push_back(CallEvent::Accepted(n));
    }

    fn invalid(&self, op: &'static str) -> CallError {
        CallError::InvalidState {
            op,
            state: self.state.name(),
        }
    }

    /// Callee: the user accepted, with our description.
    pub fn accept(&mut self, now: Instant, local: SessionDesc) -> Result<(), CallError> {
        if self.state != CallState::Incoming {
            return Err(self.invalid("accept"));
        }
        self.local = local.clone();
        self.send(now, CallFrame::Accept { session: local });
        self.activate(now);
        Ok(())
    }

    /// Callee: not accepted.
    pub fn reject(&mut self, now: Instant, reason: RejectReason) -> Result<(), CallError> {
        if self.state != CallState::Incoming {
            return Err(self.invalid("reject"));
        }
        self.send(now, CallFrame::Reject { reason });
        self.end(EndReason::Rejected {
            remote: false,
            reason,
        });
        Ok(())
    }

    /// Either side, any time before the end (a caller cancelling before the answer too).
    pub fn hangup(&mut self, now: Instant, reason: HangupReason, detail: &str) {
        if self.is_ended() {
            return;
        }
        if self.state == CallState::Incoming {
            // Hanging up a ringing call declines it.
            let _ = self.reject(now, RejectReason::Declined);
            return;
        }
        self.send(
            now,
            CallFrame::Hangup {
                reason,
                detail: detail.to_string(),
            },
        );
        self.end(EndReason::HungUp {
            remote: false,
            reason,
            detail: detail.to_string(),
        });
    }

    /// Renegotiates: our new description (mute, camera on/off, a new source).
    pub fn update(&mut self, now: Instant, local: SessionDesc) -> Result<Negotiated, CallError> {
        if self.state != CallState::Active {
            return Err(self.invalid("update"));
        }
        self.local = local.clone();
        self.send(now, CallFrame::Update { session: local });
        Ok(self.negotiated().unwrap_or_default())
    }

    /// Tells the peer something about a group call's roster (until the call ends).
    pub fn send_roster(&mut self, now: Instant, msg: RosterMsg) {
        if !self.is_ended() {
            self.send(now, CallFrame::Roster(msg));
        }
    }

    /// Counts a frame that makes work for us (an update, a roster message); false and a
    /// protocol error past [`MAX_UPDATES_PER_SEC`].
    fn within_rate(&mut self, now: Instant) -> bool {
        self.updates.push_back(now);
        while self
            .updates
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
        {
            self.updates.pop_front();
        }
        if self.updates.len() > MAX_UPDATES_PER_SEC {
            let why = format!("more than {MAX_UPDATES_PER_SEC} updates in one second");
            self.protocol_error(now, why);
            return false;
        }
        true
    }

    /// A media datagram of this call arrived: the peer is alive.
    pub fn handle_media(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// The call stream closed or failed (connection lost, peer process gone).
    pub fn stream_closed(&mut self, _now: Instant) {
        self.end(EndReason::PeerVanished);
    }

    /// Bytes on the call stream that are no frame (`why`): the call ends with a protocol
    /// error, and the peer is told.
    pub fn malformed(&mut self, now: Instant, why: &str) {
        if !self.is_ended() {
            self.protocol_error(now, format!("an unreadable frame: {why}"));
        }
    }

    /// A frame from the peer.
    pub fn handle_frame(&mut self, now: Instant, f: CallFrame) {
        if self.is_ended() {
            return;
        }
        self.last_heard = self.last_heard.max(now);
        match (&self.state, f) {
            (_, CallFrame::Alive) => {}
            (CallState::Offering, CallFrame::Ringing) => {
                self.state = CallState::Ringing;
                // The callee's own RING_TIMEOUT ends it; ours is a little longer, for when
                // its Reject gets lost with its process.
                self.deadline = Some(now + RING_TIMEOUT + OFFER_TIMEOUT);
                self.events.push_back(CallEvent::Ringing);
            }
            (CallState::Offering | CallState::Ringing, CallFrame::Accept { session })
                if self.role == Role::Caller =>
            {
                self.remote = Some(session);
                self.activate(now);
            }
            (CallState::Offering | CallState::Ringing, CallFrame::Reject { reason }) => {
                self.end(EndReason::Rejected {
                    remote: true,
                    reason,
                });
            }
            (_, CallFrame::Roster(m)) => {
                if self.within_rate(now) {
                    self.events.push_back(CallEvent::Roster(m));
                }
            }
            (CallState::Active, CallFrame::Update { session }) => {
                if !self.within_rate(now) {
                    return;
                }
                self.remote = Some(session);
                let n = self.negotiated().unwrap_or_default();
                self.events.push_back(CallEvent::Updated(n));
            }
            (_, CallFrame::Hangup { reason, detail }) => {
                self.end(EndReason::HungUp {
                    remote: true,
                    reason,
                    detail,
                });
            }
            (state, f) => {
                let why = format!("unexpected {} while {}", frame_name(&f), state.name());
                self.protocol_error(now, why);
            }
        }
    }

    /// The peer broke the protocol: tell it why, and end.
    fn protocol_error(&mut self, now: Instant, why: String) {
        self.send(
            now,
            CallFrame::Hangup {
                reason: HangupReason::Error,
                detail: why.clone(),
            },
        );
        self.end(EndReason::Protocol(why));
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            match self.state {
                CallState::Incoming => {
                    self.send(
                        now,
                        CallFrame::Reject {
                            reason: RejectReason::NoAnswer,
                        },
                    );
                    self.end(EndReason::Rejected {
                        remote: false,
                        reason: RejectReason::NoAnswer,
                    });
                }
                CallState::Offering => {
                    self.send(
                        now,
                        CallFrame::Hangup {
                            reason: HangupReason::Normal,
                            detail: "no response".into(),
                        },
                    );
                    self.end(EndReason::Unreachable);
                }
                _ => {
                    self.send(
                        now,
                        CallFrame::Hangup {
                            reason: HangupReason::Normal,
                            detail: "no answer".into(),
                        },
                    );
                    self.end(EndReason::Rejected {
                        remote: true,
                        reason: RejectReason::NoAnswer,
                    });
                }
            }
            return;
        }
        // Liveness: only once both sides know of the call (a caller's offer may sit in a
        // slow relay path; OFFER_TIMEOUT covers that).
        if self.state != CallState::Offering && now >= self.last_heard + DEAD_AFTER {
            self.end(EndReason::PeerVanished);
            return;
        }
        if now >= self.last_sent + ALIVE_INTERVAL {
            self.send(now, CallFrame::Alive);
        }
    }

    /// The next frame to write on the call stream.
    pub fn poll_transmit(&mut self) -> Option<CallFrame> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_ended() {
            return None;
        }
        let mut t = self.last_sent + ALIVE_INTERVAL;
        if self.state != CallState::Offering {
            t = t.min(self.last_heard + DEAD_AFTER);
        }
        Some(self.deadline.map_or(t, |d| d.min(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_proto::call::{Codec, StreamKind};

    fn desc(receive: &[Codec], send: &[(u8, StreamKind, Codec)]) -> SessionDesc {
        SessionDesc {
            receive: receive.to_vec(),
            max_width: 1280,
            max_height: 720,
            max_fps: 30,
            max_kbps: 2500,
            streams: send
                .iter()
                .map(|&(id, kind, codec)| StreamDesc {
                    id,
                    kind,
                    codec,
                    active: true,
                })
                .collect(),
        }
    }

    fn av() -> SessionDesc {
        desc(
            &[Codec::Opus, Codec::H264],
            &[
                (0, StreamKind::Audio, Codec::Opus),
                (1, StreamKind::Camera, Codec::H264),
            ],
        )
    }

    /// Two sides and a virtual clock; frames take `latency` one way.
    struct Pair {
        now: Instant,
        latency: Duration,
        a: Call,
        b: Option<Call>,
        in_flight: Vec<(Instant, bool, CallFrame)>,
        /// Drop everything from b (b's process vanished).
        b_dead: bool,
        events_a: Vec<CallEvent>,
        events_b: Vec<CallEvent>,
    }

    impl Pair {
        fn new(latency: Duration) -> Self {
            let now = Instant::now();
            Self {
                now,
                latency,
                a: Call::dial(now, CallId::from_bytes([7; 16]), av(), None),
                b: None,
                in_flight: Vec::new(),
                b_dead: false,
                events_a: Vec::new(),
                events_b: Vec::new(),
            }
        }

        fn drain(&mut self) {
            while let Some(f) = self.a.poll_transmit() {
                self.in_flight.push((self.now + self.latency, true, f));
            }
            while let Some(e) = self.a.poll_event() {
                self.events_a.push(e);
            }
            if let Some(b) = &mut self.b {
                while let Some(f) = b.poll_transmit() {
                    if !self.b_dead {
                        self.in_flight.push((self.now + self.latency, false, f));
                    }
                }
                while let Some(e) = b.poll_event() {
                    self.events_b.push(e);
                }
            }
        }

        /// Runs until `until`, jumping from one wake-up to the next.
        fn run(&mut self, until: Instant) {
            loop {
                self.drain();
                let next = [
                    self.in_flight.iter().map(|f| f.0).min(),
                    self.a.poll_timeout(),
                    self.b
                        .as_ref()
                        .filter(|_| !self.b_dead)
                        .and_then(|b| b.poll_timeout()),
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(next) = next.filter(|n| *n <= until) else {
                    self.now = until;
                    return;
                };
                self.now = self.now.max(next);
                let now = self.now;
                let (due, rest): (Vec<_>, Vec<_>) =
                    self.in_flight.drain(..).partition(|f| f.0 <= now);
                self.in_flight = rest;
                for (_, to_b, f) in due {
                    if to_b {
                        match &mut self.b {
                            Some(b) => b.handle_frame(now, f),
                            None => self.b = Some(Call::incoming(now, f).unwrap().0),
                        }
                    } else {
                        self.a.handle_frame(now, f);
                    }
                }
                self.a.handle_timeout(now);
                if let Some(b) = &mut self.b
                    && !self.b_dead
                {
                    b.handle_timeout(now);
                }
            }
        }

        fn after(&self, d: Duration) -> Instant {
            self.now + d
        }
    }

    const RTT: Duration = Duration::from_millis(100);

    /// A callee that received an audio + video offer.
    fn incoming_av(now: Instant) -> Call {
        let offer = CallFrame::Offer {
            id: CallId::from_bytes([1; 16]),
            session: av(),
            group: None,
        };
        Call::incoming(now, offer).unwrap().0
    }

    #[test]
    fn roster_frames_reach_the_application_and_a_flood_of_them_ends_the_call() {
        let now = Instant::now();
        let mut b = incoming_av(now);
        b.accept(now, av()).unwrap();
        while b.poll_event().is_some() {}
        b.handle_frame(now, CallFrame::Roster(RosterMsg::Leave));
        assert_eq!(b.poll_event(), Some(CallEvent::Roster(RosterMsg::Leave)));
        for _ in 0..MAX_UPDATES_PER_SEC {
            b.handle_frame(now, CallFrame::Roster(RosterMsg::Leave));
        }
        assert!(
            matches!(b.state(), CallState::Ended(EndReason::Protocol(_))),
            "{:?}",
            b.state()
        );
    }

    #[test]
    fn an_unreadable_frame_ends_the_call_and_tells_the_peer_why() {
        let now = Instant::now();
        let mut b = incoming_av(now);
        b.accept(now, av()).unwrap();
        while b.poll_transmit().is_some() {}
        b.malformed(now, "unknown frame type 99");
        let CallState::Ended(EndReason::Protocol(why)) = b.state() else {
            panic!("{:?}", b.state());
        };
        assert!(why.contains("unknown frame type 99"), "{why}");
        let sent: Vec<CallFrame> = std::iter::from_fn(|| b.poll_transmit()).collect();
        assert!(
            sent.iter().any(|f| matches!(f, CallFrame::Hangup { reason: HangupReason::Error, detail } if detail.contains("unreadable"))),
            "{sent:?}"
        );
    }

    #[test]
    fn offer_ring_accept_update_hangup() {
        let mut p = Pair::new(RTT / 2);
        p.run(p.after(Duration::from_millis(200)));
        assert_eq!(p.a.state(), &CallState::Ringing);
        assert_eq!(p.events_a, vec![CallEvent::Ringing]);
        let b = p.b.as_mut().unwrap();
        assert_eq!(b.state(), &CallState::Incoming);
        // The callee sends audio only and cannot decode video.
        let audio_only = desc(&[Codec::Opus], &[(0, StreamKind::Audio, Codec::Opus)]);
        b.accept(p.now, audio_only).unwrap();
        let t_accept = p.now;
        p.run(p.after(Duration::from_secs(3)));
        assert_eq!(p.a.state(), &CallState::Active);
        // Active one-way latency after the accept.
        assert_eq!(p.a.started, Some(t_accept + RTT / 2));
        let CallEvent::Accepted(n) = &p.events_a[1] else {
            panic!("{:?}", p.events_a)
        };
        // The caller must not send video the callee cannot decode.
        assert_eq!(n.send.len(), 1);
        assert_eq!(n.send[0].codec, Codec::Opus);
        assert_eq!(n.receive.len(), 1);
        // Idle for 3 s: Alive frames keep both sides up.
        assert!(p.b.as_ref().unwrap().state() == &CallState::Active);
        // Mute on the callee: an update reaches the caller.
        let mut muted = desc(&[Codec::Opus], &[(0, StreamKind::Audio, Codec::Opus)]);
        muted.streams[0].active = false;
        p.b.as_mut().unwrap().update(p.now, muted).unwrap();
        p.run(p.after(Duration::from_millis(100)));
        assert!(matches!(
            p.events_a.last(),
            Some(CallEvent::Updated(n)) if !n.receive[0].active
        ));
        p.a.hangup(p.now, HangupReason::Normal, "bye");
        p.run(p.after(Duration::from_millis(100)));
        assert_eq!(
            p.b.as_ref().unwrap().state(),
            &CallState::Ended(EndReason::HungUp {
                remote: true,
                reason: HangupReason::Normal,
                detail: "bye".into()
            })
        );
        assert!(p.a.is_ended());
        // Nothing more to do on either side.
        assert_eq!(p.a.poll_timeout(), None);
        assert!(p.b.as_mut().unwrap().accept(p.now, av()).is_err());
    }

    #[test]
    fn reject_busy_and_unanswered() {
        let mut p = Pair::new(RTT / 2);
        p.run(p.after(Duration::from_millis(200)));
        p.b.as_mut()
            .unwrap()
            .reject(p.now, RejectReason::Busy)
            .unwrap();
        p.run(p.after(Duration::from_millis(100)));
        assert_eq!(
            p.a.state(),
            &CallState::Ended(EndReason::Rejected {
                remote: true,
                reason: RejectReason::Busy
            })
        );

        // Nobody answers: the callee gives up after RING_TIMEOUT and says so.
        let mut p = Pair::new(RTT / 2);
        let t0 = p.now;
        p.run(p.after(Duration::from_secs(60)));
        assert_eq!(
            p.a.state(),
            &CallState::Ended(EndReason::Rejected {
                remote: true,
                reason: RejectReason::NoAnswer
            })
        );
        let CallState::Ended(_) = p.b.as_ref().unwrap().state() else {
            panic!()
        };
        assert!(matches!(p.events_a.last(), Some(CallEvent::Ended(_))));
        // Ended at the callee's deadline plus the one-way latency.
        assert!(p.now > t0 + RING_TIMEOUT);
    }

    #[test]
    fn an_offer_nobody_answers_is_unreachable() {
        let now = Instant::now();
        let mut a = Call::dial(now, CallId::from_bytes([1; 16]), av(), None);
        let mut t = now;
        while let Some(next) = a.poll_timeout() {
            t = next;
            a.handle_timeout(t);
        }
        assert_eq!(a.state(), &CallState::Ended(EndReason::Unreachable));
        assert_eq!(t, now + OFFER_TIMEOUT);
        let sent: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        // The offer, Alive once a second, and a final Hangup.
        assert!(matches!(sent[0], CallFrame::Offer { .. }));
        assert!(matches!(sent.last(), Some(CallFrame::Hangup { .. })));
    }

    #[test]
    fn a_peer_that_vanishes_mid_call_is_noticed() {
        let mut p = Pair::new(RTT / 2);
        p.run(p.after(Duration::from_millis(200)));
        p.b.as_mut().unwrap().accept(p.now, av()).unwrap();
        p.run(p.after(Duration::from_secs(2)));
        assert_eq!(p.a.state(), &CallState::Active);
        p.b_dead = true;
        let cut = p.now;
        // The last Alive came at most one interval before the cut: still up until
        // DEAD_AFTER after it, over right after.
        p.run(cut + DEAD_AFTER - ALIVE_INTERVAL - Duration::from_millis(100));
        assert_eq!(p.a.state(), &CallState::Active);
        p.run(cut + DEAD_AFTER + ALIVE_INTERVAL);
        assert_eq!(p.a.state(), &CallState::Ended(EndReason::PeerVanished));
        let CallEvent::Ended(_) = p.events_a.last().unwrap() else {
            panic!()
        };
        assert!(p.a.poll_timeout().is_none());
        // Media alone keeps a call alive.
        let now = Instant::now();
        let mut b = incoming_av(now);
        b.accept(now, av()).unwrap();
        for i in 1..=100u64 {
            let t = now + Duration::from_millis(100 * i);
            b.handle_media(t);
            b.handle_timeout(t);
        }
        assert_eq!(b.state(), &CallState::Active);
        b.stream_closed(now + Duration::from_secs(11));
        assert_eq!(b.state(), &CallState::Ended(EndReason::PeerVanished));
    }

    #[test]
    fn protocol_violations_end_the_call_with_a_reason() {
        let now = Instant::now();
        assert_eq!(
            Call::incoming(now, CallFrame::Ringing).unwrap_err(),
            CallError::NotAnOffer("Ringing")
        );
        let mut a = Call::dial(now, CallId::from_bytes([1; 16]), av(), None);
        // An Update before the call is up.
        a.handle_frame(now, CallFrame::Update { session: av() });
        assert!(
            matches!(a.state(), CallState::Ended(EndReason::Protocol(w)) if w.contains("Update while offering"))
        );
        let sent: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert!(matches!(
            sent.last(),
            Some(CallFrame::Hangup {
                reason: HangupReason::Error,
                ..
            })
        ));
        // A callee never accepts an Accept.
        let mut b = incoming_av(now);
        b.handle_frame(now, CallFrame::Accept { session: av() });
        assert!(matches!(
            b.state(),
            CallState::Ended(EndReason::Protocol(_))
        ));
        assert_eq!(
            b.update(now, av()),
            Err(CallError::InvalidState {
                op: "update",
                state: "ended"
            })
        );
    }

    #[test]
    fn an_update_flood_ends_the_call() {
        let now = Instant::now();
        let mut b = incoming_av(now);
        b.accept(now, av()).unwrap();
        // Toggling at 10/s for 3 s is fine.
        for i in 0..30u64 {
            b.handle_frame(
                now + Duration::from_millis(100 * i),
                CallFrame::Update { session: av() },
            );
        }
        assert_eq!(b.state(), &CallState::Active);
        // 21 within a second is not.
        let t = now + Duration::from_secs(5);
        for i in 0..21u64 {
            b.handle_frame(
                t + Duration::from_millis(i),
                CallFrame::Update { session: av() },
            );
        }
        assert!(
            matches!(b.state(), CallState::Ended(EndReason::Protocol(w)) if w.contains("updates"))
        );
    }

    #[test]
    fn cancelling_before_the_answer_reaches_the_callee() {
        let mut p = Pair::new(RTT / 2);
        p.run(p.after(Duration::from_millis(200)));
        p.a.hangup(p.now, HangupReason::Normal, "");
        p.run(p.after(Duration::from_millis(100)));
        assert!(matches!(
            p.b.as_ref().unwrap().state(),
            CallState::Ended(EndReason::HungUp { remote: true, .. })
        ));
    }
}
