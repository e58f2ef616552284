//! A running call: its legs (one pairwise call per other participant), the roster of a group
//! call, and the local pipeline all legs share (each source captured and encoded once, its
//! frames sent on every leg). [`Driver`] handles each event; [`run`] only waits for the next.
//!
//! A group call is a full mesh: the inviter dials its invitee (the offer carries the roster
//! as the inviter knows it); between two members neither of which invited the other, the one
//! with the smaller key dials once it is in and knows of the other; a member that has not
//! answered yet holds the offers it gets until it does. Each member's [`GroupRoster`] says
//! who is in; a leg whose peer the roster removed is hung up, and a leg that ends takes its
//! peer out of the roster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_media::active::ActiveSpeaker;
use p2pcall_media::adapt::Ladder;
use p2pcall_media::call::{Call, CallEvent as SmEvent, EndReason};
use p2pcall_media::simulcast::{self, Layer, LayerChoice};
use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::call::{CallId, GroupJoin, HangupReason, RejectReason, StreamKind};
use p2pcall_proto::group::{GroupRoster, MAX_MEMBERS, Removal, RosterEvent, RosterMsg};
use p2pcall_transport::framed::FrameReader;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::leg::{self, FrameIn, FrameTx, Leg, Meter, Receive};
use super::media::{self, RenderStats};
use super::{
    AUDIO_STREAM, CALL, CallEvent, CallOptions, CallStats, Calls, Cmd, STATS_INTERVAL, VIDEO_STREAM,
};

/// Final statistics kept of participants that left (the first ones).
const MAX_DEPARTED: usize = 32;
/// How often a group call looks at who speaks.
const SPEAKER_EVERY: Duration = Duration::from_millis(100);
/// Datagrams go to QUIC only while its buffer has this much room (it holds at most a
/// couple of packets more than it can send).
const DATAGRAM_ROOM: usize = (64 << 10) - 2 * 1500;

/// How a leg reaches a running call.
pub(crate) enum NewLeg {
    /// A call stream we opened to `peer` (its kind byte written).
    Dialed {
        conn: PeerConnection,
        streams: (quinn::SendStream, quinn::RecvStream),
        join: Option<GroupJoin>,
    },
    /// We could not reach `peer`.
    DialFailed { peer: PeerId, error: String },
    /// A member's offer of its pairwise call in this group call.
    Incoming {
        conn: PeerConnection,
        send: quinn::SendStream,
        reader: FrameReader<quinn::RecvStream>,
        call: Box<Call>,
    },
}

/// How a call begins.
pub(crate) enum Setup {
    /// We called one peer (with the commands given while its connection came up).
    Dial(NewLeg, CallOptions, Vec<Cmd>),
    /// We start a group call with these invitees.
    Group(Vec<PeerId>, CallOptions),
    /// A peer calls us (`welcome`: it invites us to a group call with these members).
    Incoming {
        leg: NewLeg,
        welcome: Option<Vec<(PeerId, PeerId)>>,
    },
}

/// A call's inputs besides its legs' frames: commands, media datagrams, new legs.
pub(crate) struct Inputs {
    pub cmd: mpsc::Receiver<Cmd>,
    pub media: mpsc::Receiver<(PeerId, Instant, Bytes)>,
    pub legs: mpsc::Receiver<NewLeg>,
    /// For the call's own dials.
    pub legs_tx: mpsc::Sender<NewLeg>,
}

/// What we capture and encode, once for every leg.
struct Local {
    opts: CallOptions,
    epoch: Instant,
    captures: Vec<(u8, media::Capture)>,
    muted: bool,
    camera: bool,
    /// Echo canceller of the microphone, if the call uses one.
    voice: Option<media::Voice>,
    /// The speaker every participant's audio is mixed into.
    playback: media::SharedPlayback,
    /// Bitrate → size and frame rate of our video (None: no video sent).
    ladder: Option<Ladder>,
    /// The video capture was told to skip frames (a pacer is backed up).
    backlog: bool,
    /// The small layer's bitrate, while it is coded (a group call).
    small_bps: Option<u32>,
}

impl Local {
    /// The video capture, if the call sends video and its capture runs.
    fn video(&self) -> Option<&media::Capture> {
        (self.captures.iter())
            .find(|(s, _)| *s == VIDEO_STREAM)
            .map(|(_, c)| c)
    }

    /// A new receiver's choice of our layers (a group call).
    fn layer_choice(&self, now: Instant) -> LayerChoice {
        let o = &self.opts;
        let cap = o.bitrates().video_max;
        LayerChoice::new(
            now,
            simulcast::full_layer_need(o.width, o.height, o.fps, cap),
        )
    }
}

/// When the members we dial (the mesh) are dialed: at once, then, while a dial does not
/// bring the leg up, again 1, 2, 4, then every 8 s after the last attempt began.
#[derive(Debug, Default)]
struct Redials(BTreeMap<PeerId, (u32, Instant)>);

impl Redials {
    /// Whether `peer` may be dialed now.
    fn due(&self, now: Instant, peer: &PeerId) -> bool {
        self.0.get(peer).is_none_or(|(_, at)| now >= *at)
    }

    /// A dial of `peer` begins.
    fn dialed(&mut self, now: Instant, peer: PeerId) {
        let n = self.attempts(&peer);
        let wait = Duration::from_secs(1 << n.min(3));
        self.0.insert(peer, (n + 1, now + wait));
    }

    /// How many dials of `peer` began.
    fn attempts(&self, peer: &PeerId) -> u32 {
        self.0.get(peer).map_or(0, |(n, _)| *n)
    }

    /// `peer` left the roster: a new membership starts afresh.
    fn remove(&mut self, peer: &PeerId) {
        self.0.remove(peer);
    }
}

/// Runs one call until it ends.
pub(crate) async fn run(svc: Arc<Calls>, id: CallId, first: PeerId, setup: Setup, mut io: Inputs) {
    let (frames_tx, mut frames_rx) = mpsc::channel(64);
    let (enc_tx, mut enc_rx) = mpsc::channel::<media::Encoded>(8);
    let (err_tx, mut err_rx) = mpsc::channel::<media::CaptureFailed>(4);
    let mut d = Driver {
        me: svc.ctx.id(),
        svc,
        id,
        first,
        roster: None,
        welcome: None,
        legs: BTreeMap::new(),
        dialing: BTreeSet::new(),
        tried: Redials::default(),
        opts: None,
        answered: Instant::now(),
        local: None,
        early: (false, true),
        started: false,
        sending: None,
        rang: false,
        deadline: None,
        next_stats: Instant::now() + STATS_INTERVAL,
        ended: None,
        last_end: None,
        departed: Vec::new(),
        speaker: ActiveSpeaker::new(Instant::now()),
        next_speaker: Instant::now(),
        enc_tx,
        err_tx,
        frames_tx,
        legs_tx: io.legs_tx.clone(),
    };
    d.begin(setup);
    loop {
        let now = Instant::now();
        d.pump(now);
        if d.ended.is_some() {
            break;
        }
        d.send_media();
        let wake = d.next_wake(now);
        tokio::select! {
            c = io.cmd.recv() => d.handle_command(c),
            Some((peer, f)) = frames_rx.recv() => d.handle_frame(peer, f),
            Some((peer, at, dg)) = io.media.recv() => {
                d.handle_datagram(peer, at, dg);
                // Take whatever else is queued now (one wake-up per burst).
                while let Ok((peer, at, dg)) = io.media.try_recv() {
                    d.handle_datagram(peer, at, dg);
                }
            }
            Some(l) = io.legs.recv() => d.add_leg(l),
            Some(e) = enc_rx.recv() => d.handle_encoded(e),
            Some(f) = err_rx.recv() => d.capture_failed(f),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        d.handle_timeout(Instant::now());
    }
    d.finish(&mut frames_rx).await;
    d.report_end().await;
}

/// One running call.
struct Driver {
    svc: Arc<Calls>,
    id: CallId,
    me: PeerId,
    /// The peer called first, or that called us.
    first: PeerId,
    /// A group call's roster (from our answer on).
    roster: Option<GroupRoster>,
    /// An incoming group call's members, until we answer.
    welcome: Option<Vec<(PeerId, PeerId)>>,
    legs: BTreeMap<PeerId, Leg>,
    /// Peers being connected to.
    dialing: BTreeSet<PeerId>,
    /// Members we dial (the mesh) since they joined the roster.
    tried: Redials,
    /// Our media: set when we place or answer the call.
    opts: Option<CallOptions>,
    /// When we placed or answered the call.
    answered: Instant,
    local: Option<Local>,
    /// Muted and camera as the user set them before our captures started (ringing).
    early: (bool, bool),
    started: bool,
    /// What we last said we send (audio, video).
    sending: Option<(bool, bool)>,
    rang: bool,
    /// Hang up here (`--duration`).
    deadline: Option<Instant>,
    next_stats: Instant,
    ended: Option<EndReason>,
    /// How the last leg that ended ended.
    last_end: Option<EndReason>,
    /// Final statistics of participants that left.
    departed: Vec<CallStats>,
    /// A group call's active speaker, looked at every [`SPEAKER_EVERY`].
    speaker: ActiveSpeaker<PeerId>,
    next_speaker: Instant,
    enc_tx: mpsc::Sender<media::Encoded>,
    err_tx: mpsc::Sender<media::CaptureFailed>,
    frames_tx: FrameTx,
    legs_tx: mpsc::Sender<NewLeg>,
}

impl Driver {
    fn emit(&self, e: CallEvent) {
        self.svc.events.emit(e);
    }

    fn warn(&self, message: String) {
        self.emit(CallEvent::Warning {
            call: self.id,
            message,
        });
    }

    /// What the options' check left out, told once the call is placed or answered.
    fn note_options(&self, o: &CallOptions) {
        for n in &o.notes {
            self.warn(n.clone());
        }
    }

    fn is_group(&self) -> bool {
        self.roster.is_some() || self.welcome.is_some()
    }

    fn begin(&mut self, setup: Setup) {
        let now = Instant::now();
        match setup {
            Setup::Dial(leg, opts, early) => {
                self.note_options(&opts);
                self.opts = Some(opts);
                self.add_leg(leg);
                for c in early {
                    self.handle_command(Some(c));
                }
            }
            Setup::Group(peers, opts) => {
                self.note_options(&opts);
                self.opts = Some(opts);
                let mut r = GroupRoster::create(now, self.me);
                for p in peers {
                    if let Err(e) = r.invite(now, p) {
                        self.warn(format!("{}: {e}", p.fingerprint()));
                    }
                }
                self.roster = Some(r);
            }
            Setup::Incoming { leg, welcome } => {
                if let NewLeg::Incoming { conn, call, .. } = &leg {
                    let remote = call.remote();
                    let has = |audio: bool| {
                        remote
                            .is_some_and(|r| r.streams.iter().any(|s| s.codec.is_audio() == audio))
                    };
                    let members = (welcome.iter().flatten())
                        .map(|(m, _)| *m)
                        .filter(|m| *m != self.me && *m != conn.peer())
                        .collect();
                    self.emit(CallEvent::Incoming {
                        call: self.id,
                        peer: conn.peer(),
                        name: conn.remote_name(),
                        audio: has(true),
                        video: has(false),
                        members,
                    });
                }
                self.welcome = welcome;
                self.add_leg(leg);
            }
        }
    }

    /// Handles everything the legs and the roster said until nothing is left, hands the
    /// signaling frames to the writers, and decides whether the call is over.
    fn pump(&mut self, now: Instant) {
        for _ in 0..16 {
            let mut work = self.roster_io(now);
            work |= self.leg_events(now);
            work |= self.accept_held(now);
            work |= self.mesh_dials(now);
            if !work {
                break;
            }
        }
        for l in self.legs.values_mut() {
            l.flush();
        }
        if self.ended.is_none() {
            self.ended = self.call_over();
        }
        if self.ended.is_none() {
            let gone: Vec<PeerId> = (self.legs.iter())
                .filter(|(_, l)| l.call.is_ended())
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                self.drop_leg(now, p);
            }
        }
    }

    /// The roster's messages to members and its changes.
    fn roster_io(&mut self, now: Instant) -> bool {
        let Some(r) = &mut self.roster else {
            return false;
        };
        let sends: Vec<_> = std::iter::from_fn(|| r.poll_send()).collect();
        let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
        let work = !sends.is_empty() || !events.is_empty();
        for (to, msg) in sends {
            match (msg, self.legs.get_mut(&to)) {
                // A peer we are in a call with already learns it is in a group.
                (RosterMsg::Welcome { members }, Some(l)) => {
                    l.call.send_roster(now, RosterMsg::Welcome { members });
                }
                (RosterMsg::Welcome { members }, None) => {
                    self.dial(to, GroupJoin::Invite { members });
                }
                (msg, Some(l)) => l.call.send_roster(now, msg),
                // Not connected yet: it learns what matters once it is (see GroupRoster).
                (_, None) => {}
            }
        }
        for e in events {
            match e {
                RosterEvent::Removed { peer, why } => {
                    tracing::debug!(call = %self.id, %peer, ?why, "removed from the call");
                    self.tried.remove(&peer);
                    // A member that leaves hangs up itself right after saying so.
                    let grace = match why {
                        Removal::Left => leg::FLUSH,
                        _ => Duration::ZERO,
                    };
                    match self.legs.get_mut(&peer) {
                        // Not heard for VANISH: gone (nobody left to tell).
                        Some(l) if why == Removal::Vanished => l.call.stream_closed(now),
                        Some(l) => {
                            l.leaving = Some(now + grace);
                            l.handle_timeout(now);
                        }
                        None => {}
                    }
                }
                RosterEvent::Ignored { from, why } => {
                    tracing::info!(call = %self.id, %from, "roster message ignored: {why}");
                }
                RosterEvent::Invited { .. } | RosterEvent::Joined(_) => {}
            }
        }
        work
    }

    /// What each leg's signaling machine decided.
    fn leg_events(&mut self, now: Instant) -> bool {
        let mut evs = Vec::new();
        for (p, l) in &mut self.legs {
            evs.extend(std::iter::from_fn(|| l.call.poll_event()).map(|e| (*p, e)));
        }
        let work = !evs.is_empty();
        for (peer, e) in evs {
            match e {
                // Only the first ring of a call we place (a member's mesh call rings too).
                SmEvent::Ringing if !self.rang && !self.started => {
                    self.rang = true;
                    self.emit(CallEvent::Ringing { call: self.id });
                }
                SmEvent::Ringing => {}
                SmEvent::Accepted(n) => self.leg_up(now, peer, &n),
                SmEvent::Updated(n) => {
                    if let Some(l) = self.legs.get_mut(&peer) {
                        l.set_received(&n);
                    }
                    self.emit(CallEvent::Updated {
                        call: self.id,
                        peer,
                        streams: n,
                    });
                }
                SmEvent::Roster(m) => self.roster_msg(now, peer, m),
                SmEvent::Ended(r) => self.leg_ended(now, peer, r),
            }
        }
        work
    }

    /// A member said something about the roster on its leg. Our invitee has no say before it
    /// answers (it would count as joined, and could invite).
    fn roster_msg(&mut self, now: Instant, peer: PeerId, m: RosterMsg) {
        let invitee = self.roster.as_ref().is_some_and(|r| r.invited_by_me(&peer));
        if invitee && !self.legs.get(&peer).is_some_and(Leg::is_active) {
            tracing::debug!(call = %self.id, %peer, "roster message before the answer: ignored");
            return;
        }
        match (&mut self.roster, m) {
            (Some(r), m) => r.handle(now, peer, m),
            // The peer of a running one-to-one call added someone: a group call now (a
            // callee that has not answered has no say).
            (None, RosterMsg::Welcome { members })
                if self.opts.is_some() && self.legs.get(&peer).is_some_and(|l| l.rx.is_some()) =>
            {
                self.roster = Some(GroupRoster::welcomed(now, self.me, peer, &members));
                self.became_group(now);
            }
            (None, _) => tracing::debug!(call = %self.id, %peer, "roster message outside a group"),
        }
    }

    /// A leg ended: its peer is out of the roster (a leg that never came up: the invitation
    /// is withdrawn).
    fn leg_ended(&mut self, now: Instant, peer: PeerId, reason: EndReason) {
        tracing::debug!(call = %self.id, %peer, ?reason, "leg ended");
        let was_up = self.legs.get(&peer).is_some_and(|l| l.rx.is_some());
        // Only what was a participant, or our own invitation, is news to the front end (a
        // member's offer we held and never took is not).
        let mut news = was_up;
        if let Some(r) = &mut self.roster {
            news |= r.invited_by_me(&peer);
            if was_up && r.accepts(&peer) {
                r.handle(now, peer, RosterMsg::Leave);
            } else if !was_up {
                r.withdraw(peer);
            }
        }
        if !self.is_group() {
            self.last_end = Some(reason);
        } else if news {
            self.emit(CallEvent::Left {
                call: self.id,
                peer,
                reason: reason.clone(),
            });
            self.last_end = Some(reason);
        }
    }

    /// Whether the whole call is over, and why.
    fn call_over(&self) -> Option<EndReason> {
        let last = || self.last_end.clone().unwrap_or(EndReason::PeerVanished);
        match &self.roster {
            Some(r) if !r.is_live() => Some(last()),
            Some(_) => None,
            // One-to-one, or a group call we have not answered: its first leg.
            None => {
                let first = self.legs.get(&self.first);
                let over = first.is_none_or(|l| l.call.is_ended()) && self.dialing.is_empty();
                over.then(|| match first.map(|l| l.call.state()) {
                    Some(p2pcall_media::call::CallState::Ended(r)) => r.clone(),
                    _ => last(),
                })
            }
        }
    }

    /// Takes an ended leg out of the call (its final statistics are kept).
    fn drop_leg(&mut self, now: Instant, peer: PeerId) {
        let Some(mut l) = self.legs.remove(&peer) else {
            return;
        };
        l.close();
        if let Some(r) = &mut l.rx {
            r.meter = Meter::default();
        }
        // Bounded: members may come and go for hours.
        if let Some(s) = leg::stats(&mut l, now, self.answered)
            && self.departed.len() < MAX_DEPARTED
        {
            self.departed.push(s);
        }
        tokio::spawn(async move {
            if let Err(e) = l.stop_render().await {
                tracing::warn!(%peer, "{e}");
            }
        });
        self.sync_peers();
    }

    /// Offers on hold are accepted once we are in the call and know their peer as a member.
    fn accept_held(&mut self, now: Instant) -> bool {
        let (Some(r), Some(_)) = (&self.roster, &self.opts) else {
            return false;
        };
        let held: Vec<PeerId> = (self.legs.iter())
            .filter(|(p, l)| {
                *l.call.state() == p2pcall_media::call::CallState::Incoming && r.accepts(p)
            })
            .map(|(p, _)| *p)
            .collect();
        let desc = self.describe();
        for p in &held {
            if let Some(l) = self.legs.get_mut(p) {
                let _ = l.call.accept(now, desc.clone());
            }
        }
        !held.is_empty()
    }

    /// Members we connect to: those we did not invite and that did not invite us, with a
    /// greater key than ours (they connect to us otherwise). A dial that did not bring the
    /// leg up is tried again after 1, 2, 4, then every 8 s, while the member is in the call.
    fn mesh_dials(&mut self, now: Instant) -> bool {
        let (Some(r), Some(_)) = (&self.roster, &self.opts) else {
            return false;
        };
        let due: Vec<PeerId> = (r.members())
            .map(|(p, _)| *p)
            .filter(|p| {
                *p > self.me
                    && !r.invited_by_me(p)
                    && r.my_inviter() != *p
                    && !self.legs.contains_key(p)
                    && !self.dialing.contains(p)
                    && self.tried.due(now, p)
            })
            .collect();
        for p in &due {
            self.tried.dialed(now, *p);
            self.dial(*p, GroupJoin::Mesh);
        }
        !due.is_empty()
    }

    /// Connects to `peer` and opens a call stream (the leg arrives as [`NewLeg`]).
    fn dial(&mut self, peer: PeerId, join: GroupJoin) {
        if self.legs.contains_key(&peer) || !self.dialing.insert(peer) {
            return;
        }
        self.sync_peers();
        let svc = self.svc.clone();
        let tx = self.legs_tx.clone();
        tokio::spawn(async move {
            let leg = match open_call_stream(&svc, peer).await {
                Ok((conn, streams)) => NewLeg::Dialed {
                    conn,
                    streams,
                    join: Some(join),
                },
                Err(error) => NewLeg::DialFailed { peer, error },
            };
            let _ = tx.send(leg).await;
        });
    }

    /// Our description (what we send and can receive), as muted and camera are now.
    fn describe(&self) -> p2pcall_proto::call::SessionDesc {
        let o = self.opts.clone().unwrap_or_default();
        let (muted, camera) = (self.local.as_ref()).map_or(self.early, |l| (l.muted, l.camera));
        o.describe(!muted, camera)
    }

    /// A leg for the call: one we dialed, one we could not, or an offer from a member.
    fn add_leg(&mut self, l: NewLeg) {
        let now = Instant::now();
        match l {
            NewLeg::Dialed {
                conn,
                streams,
                join,
            } => {
                let peer = conn.peer();
                self.dialing.remove(&peer);
                if self.legs.contains_key(&peer) || self.ended.is_some() {
                    return;
                }
                let call = Call::dial(now, self.id, self.describe(), join);
                let gate = self.svc.bulk.of(peer);
                let leg = Leg::dialed(conn, call, streams, &self.frames_tx, gate);
                self.legs.insert(peer, leg);
            }
            NewLeg::DialFailed { peer, error } => {
                self.dialing.remove(&peer);
                // A mesh dial says so once; it is tried again.
                if self.tried.attempts(&peer) <= 1 {
                    self.warn(format!("{}: {error}", peer.fingerprint()));
                }
                self.leg_ended(now, peer, EndReason::Unreachable);
            }
            NewLeg::Incoming {
                conn,
                send,
                reader,
                call,
            } => {
                let peer = conn.peer();
                // Offers from peers our roster does not know (yet: a member's invitation
                // may still be on its way) are held apart, a few at most: they take no
                // member's place.
                let known = |p: &PeerId, l: &Leg| {
                    l.is_active() || self.roster.as_ref().is_none_or(|r| r.accepts(p))
                };
                let members = self.legs.iter().filter(|(p, l)| known(p, l)).count();
                let strangers = self.legs.len() - members;
                let full = if self.roster.as_ref().is_none_or(|r| r.accepts(&peer)) {
                    members >= MAX_MEMBERS - 1
                } else {
                    strangers >= MAX_MEMBERS
                };
                if self.legs.contains_key(&peer) || full || self.ended.is_some() {
                    tokio::spawn(super::refuse(send, RejectReason::Busy));
                    return;
                }
                let gate = self.svc.bulk.of(peer);
                let leg = Leg::new(conn, *call, send, reader, &self.frames_tx, gate);
                self.legs.insert(peer, leg);
            }
        }
        self.sync_peers();
    }

    /// Tells the datagram router which peers' media is ours.
    fn sync_peers(&self) {
        let peers: Vec<PeerId> = self.legs.keys().chain(&self.dialing).copied().collect();
        let mut g = self.svc.active.lock();
        if let Some(a) = g.as_mut().filter(|a| a.id == self.id) {
            a.peers = peers;
        }
    }

    /// A leg came up: our captures start with the first, the peer's media is rendered.
    fn leg_up(&mut self, now: Instant, peer: PeerId, n: &p2pcall_media::call::Negotiated) {
        tracing::debug!(call = %self.id, %peer, ?n, "leg up");
        if self.local.is_none() {
            let mut o = self.opts.clone().unwrap_or_default();
            if !self.is_group()
                && let Some(r) = self.legs.get(&peer).and_then(|l| l.call.remote())
            {
                o.fit_to(r);
            }
            self.deadline = o.duration.map(|d| now + d);
            match start_local(o, &self.enc_tx, &self.err_tx) {
                Ok(mut l) => {
                    (l.muted, l.camera) = self.early;
                    self.local = Some(l);
                }
                Err(e) => {
                    self.warn(e.to_string());
                    self.hang_up_all(now, HangupReason::Error, &e.to_string());
                    return;
                }
            }
        }
        let group = self.is_group();
        let (Some(local), Some(l)) = (&self.local, self.legs.get_mut(&peer)) else {
            return;
        };
        l.session.configure(n);
        l.session.set_bitrates(local.opts.bitrates());
        if group {
            l.layers = Some(local.layer_choice(now));
        }
        let sinks = if group {
            media::sinks_for(&local.opts.sinks, &peer)
        } else {
            local.opts.sinks.clone()
        };
        let sent = l.conn.quic().stats().udp_tx.bytes;
        match start_receive(sinks, local, n, sent, peer) {
            Ok(r) => {
                l.rx = Some(r);
                l.replay_early();
            }
            Err(e) => {
                l.call.hangup(now, HangupReason::Error, &e.to_string());
                self.warn(e.to_string());
                return;
            }
        }
        // The new participant decodes from a keyframe.
        self.keyframe(Layer::Full);
        if let Some(r) = &mut self.roster {
            r.heard(now, peer);
        }
        if !self.started {
            self.started = true;
            self.emit(CallEvent::Started {
                call: self.id,
                peer,
                streams: n.clone(),
            });
            if self.early == (false, true) {
                self.report_sending(false);
            } else {
                // Muted (or camera off) while it rang: the captures and the peer follow.
                self.set_active(None, None);
            }
        }
        if group {
            let name = self.legs.get(&peer).and_then(|l| l.conn.remote_name());
            self.emit(CallEvent::Joined {
                call: self.id,
                peer,
                name,
                streams: n.clone(),
            });
        }
    }

    /// Ends our part: a group's members are told we leave, every leg is hung up.
    fn hang_up_all(&mut self, now: Instant, reason: HangupReason, detail: &str) {
        if let Some(r) = &mut self.roster {
            r.leave();
            self.roster_io(now);
            self.ended = Some(EndReason::HungUp {
                remote: false,
                reason,
                detail: detail.to_string(),
            });
        }
        for l in self.legs.values_mut() {
            l.call.hangup(now, reason, detail);
        }
    }

    /// Media out, while QUIC takes it at once: what it cannot send yet waits in each
    /// session's pacer (audio first, late frames dropped whole), not in QUIC's buffer.
    fn send_media(&mut self) {
        let now = Instant::now();
        let mut keyframes = BTreeSet::new();
        for l in self.legs.values_mut().filter(|l| l.is_active()) {
            let quic = l.conn.quic();
            while quic.datagram_send_buffer_space() >= DATAGRAM_ROOM
                && let Some(d) = l.session.poll_transmit(now)
            {
                let _ = quic.send_datagram(d);
            }
            while let Some(p2pcall_media::session::SessionEvent::KeyframeRequested { .. }) =
                l.session.poll_event()
            {
                keyframes.insert(l.switching.unwrap_or(l.sending));
            }
        }
        for layer in keyframes {
            self.keyframe(layer);
        }
    }

    /// Asks the video capture for a keyframe of `layer`.
    fn keyframe(&self, layer: Layer) {
        if let Some(c) = self.local.as_ref().and_then(Local::video) {
            let _ = c.cmd.send(match layer {
                Layer::Full => media::CaptureCmd::Keyframe,
                Layer::Small => media::CaptureCmd::SmallKeyframe,
            });
        }
    }

    /// When something is due next (at least `now`).
    fn next_wake(&self, now: Instant) -> Instant {
        (self.legs.values())
            .filter_map(|l| l.poll_timeout(now))
            .chain(self.roster.as_ref().and_then(GroupRoster::poll_timeout))
            .chain([Some(self.next_stats), self.deadline].into_iter().flatten())
            .chain(self.is_group().then_some(self.next_speaker))
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .max(now)
    }

    /// A command from the front end (`None`: the engine dropped the call's handle).
    fn handle_command(&mut self, c: Option<Cmd>) {
        let now = Instant::now();
        match c {
            Some(Cmd::Answer(o)) => {
                if self.opts.is_some() {
                    return;
                }
                tracing::debug!(call = %self.id, "answering");
                self.note_options(&o);
                self.opts = Some(*o);
                self.answered = now;
                if let Some(w) = self.welcome.take() {
                    let r = GroupRoster::welcomed(now, self.me, self.first, &w);
                    self.roster = Some(r);
                }
                let desc = self.describe();
                if let Some(l) = self.legs.get_mut(&self.first) {
                    let _ = l.call.accept(now, desc);
                }
            }
            Some(Cmd::Reject) => {
                if let Some(l) = self.legs.get_mut(&self.first) {
                    let _ = l.call.reject(now, RejectReason::Declined);
                }
            }
            Some(Cmd::Hangup) | None => self.hang_up_all(now, HangupReason::Normal, ""),
            Some(Cmd::Mute(m)) => self.set_active(Some(m), None),
            Some(Cmd::Camera(on)) => self.set_active(None, Some(on)),
            Some(Cmd::Video(src)) => {
                if let Some(l) = &mut self.local
                    && let Err(e) = switch_video(l, src, &self.enc_tx, &self.err_tx)
                {
                    self.warn(e.to_string());
                }
                self.set_active(None, None);
            }
            Some(Cmd::Add(peer)) => self.add_member(now, peer),
        }
    }

    /// Invites one more participant (a one-to-one call becomes a group call).
    fn add_member(&mut self, now: Instant, peer: PeerId) {
        if self.opts.is_none() {
            self.warn("answer the call before adding anyone".into());
            return;
        }
        if self.roster.is_none() {
            let mut r = GroupRoster::create(now, self.me);
            // Our peer so far, told it is in a group now (on our call).
            let _ = r.invite(now, self.first);
            r.heard(now, self.first);
            self.roster = Some(r);
            self.became_group(now);
        }
        let Some(r) = &mut self.roster else { return };
        if let Err(e) = r.invite(now, peer) {
            self.warn(format!("cannot add {}: {e}", peer.fingerprint()));
        }
    }

    /// A one-to-one call became a group call: its peer is the first participant, and gets
    /// our layers' choice from now on.
    fn became_group(&mut self, now: Instant) {
        let mut joined = Vec::new();
        for (p, l) in self.legs.iter_mut().filter(|(_, l)| l.rx.is_some()) {
            // A leg is up only once our captures run.
            if let Some(local) = &self.local {
                l.layers.get_or_insert_with(|| local.layer_choice(now));
            }
            let n = l.call.negotiated().unwrap_or_default();
            joined.push((*p, l.conn.remote_name(), n));
        }
        for (peer, name, streams) in joined {
            self.emit(CallEvent::Joined {
                call: self.id,
                peer,
                name,
                streams,
            });
        }
    }

    /// Mute and camera: the captures stop or resume, every leg renegotiates. A track that
    /// nothing captures (no microphone, a camera gone) stays off, and the user is told why.
    fn set_active(&mut self, mute: Option<bool>, camera: Option<bool>) {
        let Some(local) = &mut self.local else {
            // Not started yet: the offer and the captures will say so.
            self.early = (mute.unwrap_or(self.early.0), camera.unwrap_or(self.early.1));
            return;
        };
        let has = |s| local.captures.iter().any(|(c, _)| *c == s);
        let (audio, video) = (has(AUDIO_STREAM), has(VIDEO_STREAM));
        let mut refused = None;
        match mute {
            Some(false) if !audio => {
                refused = Some("no audio to unmute: this call has no microphone (or it stopped)");
            }
            Some(m) => local.muted = m,
            None => {}
        }
        match camera {
            Some(true) if !video => {
                refused = Some(
                    "no video to turn on: this call has no camera (or it stopped); \
                     choose a source (`source SRC`, Share screen) to send video",
                );
            }
            Some(c) => local.camera = c,
            None => {}
        }
        for (s, c) in &local.captures {
            let on = if *s == AUDIO_STREAM {
                !local.muted
            } else {
                local.camera
            };
            let _ = c.cmd.send(media::CaptureCmd::Active(on));
        }
        let d = self.describe();
        for l in self.legs.values_mut().filter(|l| l.is_active()) {
            let _ = l.call.update(Instant::now(), d.clone());
        }
        if let Some(why) = refused {
            self.warn(why.into());
        }
        // Asked for: said even if nothing changed (the front end may have guessed otherwise).
        let asked = mute.is_some() || camera.is_some();
        self.report_sending(asked);
    }

    /// Tells the front end what we send, once the call started and whenever it changed
    /// (or `always`).
    fn report_sending(&mut self, always: bool) {
        let (Some(local), true) = (&self.local, self.started) else {
            return;
        };
        let has = |s| local.captures.iter().any(|(c, _)| *c == s);
        let now = (
            !local.muted && has(AUDIO_STREAM),
            local.camera && has(VIDEO_STREAM),
        );
        if always || self.sending != Some(now) {
            self.sending = Some(now);
            self.emit(CallEvent::Sending {
                call: self.id,
                audio: now.0,
                video: now.1,
            });
        }
    }

    /// What a leg's call stream brought: a frame, bytes that are none, or its end.
    fn handle_frame(&mut self, peer: PeerId, f: FrameIn) {
        let now = Instant::now();
        let Some(l) = self.legs.get_mut(&peer) else {
            return;
        };
        l.handle_frame(now, f);
        if l.is_active()
            && let Some(r) = &mut self.roster
        {
            r.heard(now, peer);
        }
    }

    /// A media datagram from `peer`, received at `at`.
    fn handle_datagram(&mut self, peer: PeerId, at: Instant, d: Bytes) {
        let Some(l) = self.legs.get_mut(&peer) else {
            return;
        };
        l.handle_datagram(at, d);
        if l.is_active()
            && let Some(r) = &mut self.roster
        {
            r.heard(at, peer);
        }
    }

    /// A frame one of our captures encoded: it goes to every leg that is up.
    fn handle_encoded(&mut self, e: media::Encoded) {
        let stream = if e.audio { AUDIO_STREAM } else { VIDEO_STREAM };
        // Not from a capture that was replaced or stopped.
        let current = self.local.as_ref().is_some_and(|p| {
            p.captures
                .iter()
                .any(|(s, c)| *s == stream && c.id == e.capture)
        });
        if !current {
            return;
        }
        let now = Instant::now();
        for l in self.legs.values_mut().filter(|l| l.is_active()) {
            if !e.audio {
                // A peer moves to another layer at that layer's keyframe (its decoder
                // starts there), and gets only its own layer's frames.
                if e.keyframe && l.switching == Some(e.layer) {
                    l.sending = e.layer;
                    l.switching = None;
                }
                if e.layer != l.sending {
                    continue;
                }
            }
            let max = l.conn.quic().max_datagram_size().unwrap_or(1200);
            if let Err(err) =
                l.session
                    .send_frame(now, stream, e.data.clone(), e.timestamp, e.keyframe, max)
            {
                tracing::debug!("media frame not sent: {err}");
            }
        }
    }

    /// A capture stopped (a camera unplugged, a microphone gone): that track is off, the
    /// call goes on, the user is told.
    fn capture_failed(&mut self, f: media::CaptureFailed) {
        let Some(local) = &mut self.local else { return };
        let Some(i) = local.captures.iter().position(|(_, c)| c.id == f.capture) else {
            return;
        };
        let (stream, _) = local.captures.remove(i);
        let what = if stream == AUDIO_STREAM {
            local.muted = true;
            "your audio stopped, so you are muted"
        } else {
            local.camera = false;
            "your video stopped, so your camera is off"
        };
        self.warn(format!("{what} (the call goes on): {}", f.message));
        self.set_active(None, None);
    }

    /// Time passed: timers, rate adaptation, play-out, statistics, the call's duration.
    fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = &mut self.roster {
            r.handle_timeout(now);
        }
        for l in self.legs.values_mut() {
            l.handle_timeout(now);
        }
        self.adapt(now);
        if now >= self.next_speaker {
            self.next_speaker = now + SPEAKER_EVERY;
            self.active_speaker(now);
        }
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            let failed = (self.local.as_ref()).and_then(|l| l.playback.lock().take_failure());
            if let Some(why) = failed {
                self.warn(format!(
                    "the speaker stopped, so you hear nothing (the call goes on): {why}"
                ));
            }
            if let Some(s) = self.stats(now) {
                self.emit(CallEvent::Stats(Box::new(s)));
            }
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.hang_up_all(now, HangupReason::Finished, "duration reached");
        }
    }

    /// A group call: who speaks, from the levels of what each participant's render thread
    /// played.
    fn active_speaker(&mut self, now: Instant) {
        if !self.is_group() {
            return;
        }
        let levels: Vec<(PeerId, f32)> = (self.legs.iter())
            .filter_map(|(p, l)| Some((*p, l.rx.as_ref()?.render_stats.lock().audio_level_db())))
            .collect();
        if let Some(peer) = self.speaker.update(now, &levels) {
            self.emit(CallEvent::Speaker {
                call: self.id,
                peer,
            });
        }
    }

    /// Follows the bandwidth estimates. In a group call each peer's estimate picks its layer
    /// (the small one is coded while someone gets it, at what the most constrained of them
    /// allows). The full layer gets the bitrate the most constrained of its receivers
    /// allows at once, and the size and frame rate the ladder picks, and skips frames while
    /// one of their pacers is backed up.
    fn adapt(&mut self, now: Instant) {
        let mut keyframes = BTreeSet::new();
        for l in self.legs.values_mut().filter(|l| l.is_active()) {
            let target = l.session.video_target_bps();
            if let Some(to) = l.layers.as_mut().and_then(|c| c.update(now, target)) {
                tracing::debug!(call = %self.id, peer = %l.peer, ?to, target, "layer");
                l.switching = (to != l.sending).then_some(to);
                keyframes.extend(l.switching);
            }
        }
        let Some(local) = &mut self.local else { return };
        // The captures' field alone: the ladder and the backlog flag change below.
        let Some((_, c)) = local.captures.iter().find(|(s, _)| *s == VIDEO_STREAM) else {
            return;
        };
        let gets = |layer: Layer| {
            let legs = self.legs.values().filter(|l| l.is_active());
            legs.filter(move |l| l.switching.unwrap_or(l.sending) == layer)
        };
        let small = (gets(Layer::Small))
            .map(|l| l.session.video_target_bps())
            .min()
            .map(|t| (t as u32).clamp(50_000, simulcast::SMALL_BPS));
        let moved = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => a.abs_diff(b) > b / 20,
            (a, b) => a.is_some() != b.is_some(),
        };
        if moved(small, local.small_bps) {
            local.small_bps = small;
            let _ = c.cmd.send(media::CaptureCmd::SmallLayer(small));
        }
        let up = || self.legs.values().filter(|l| l.is_active());
        let full = gets(Layer::Full)
            .map(|l| l.session.video_target_bps())
            .min();
        let Some(target) = full.or_else(|| up().map(|l| l.session.video_target_bps()).max()) else {
            return;
        };
        if let Some(q) = local.ladder.as_mut().and_then(|l| l.update(now, target)) {
            let _ = c.cmd.send(media::CaptureCmd::Quality {
                bitrate_bps: q.bitrate_bps,
                fps: q.fps,
                max_width: q.width,
                max_height: q.height,
            });
        }
        let backlog = gets(Layer::Full).any(|l| l.session.should_skip_frame());
        if backlog != local.backlog {
            local.backlog = backlog;
            let _ = c.cmd.send(media::CaptureCmd::Backlog(backlog));
        }
        for layer in keyframes {
            self.keyframe(layer);
        }
    }

    /// The call's statistics: the first participant's at the top (as in a one-to-one
    /// call), every participant's in `participants` in a group call.
    fn stats(&mut self, now: Instant) -> Option<CallStats> {
        let mut all: Vec<CallStats> = (self.legs.values_mut())
            .filter_map(|l| leg::stats(l, now, self.answered))
            .collect();
        let top = (all.iter())
            .position(|s| s.peer == Some(self.first.to_string()))
            .unwrap_or(0);
        let mut s = all.get(top).cloned()?;
        s.echo_erle_db = (self.local.as_ref())
            .and_then(|l| l.voice.as_ref())
            .and_then(|v| v.lock().echo_return_loss_enhancement_db());
        if self.is_group() {
            all.extend(self.departed.iter().cloned());
            s.participants = all;
        }
        Some(s)
    }

    /// The call is over: every leg tells its peer (a Hangup or Reject may still be queued)
    /// and lets it read our last frames before anything closes the connections (a process
    /// that exits right after a call must not look vanished to its peers; a peer finishes
    /// its side only after it has read them, so wait for that).
    async fn finish(&mut self, frames_rx: &mut mpsc::Receiver<(PeerId, FrameIn)>) {
        let now = Instant::now();
        for l in self.legs.values_mut() {
            l.call.hangup(now, HangupReason::Normal, "");
            l.close();
        }
        let _ = tokio::time::timeout(leg::FLUSH, async {
            while self.legs.values().any(|l| !l.closed) {
                match frames_rx.recv().await {
                    Some((peer, FrameIn::Closed | FrameIn::Malformed(_))) => {
                        if let Some(l) = self.legs.get_mut(&peer) {
                            l.closed = true;
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        })
        .await;
        let mut g = self.svc.active.lock();
        if g.as_ref().is_some_and(|c| c.id == self.id) {
            *g = None;
        }
    }

    /// Stops the pipeline and reports how the call ended, with its final statistics.
    async fn report_end(mut self) {
        let now = Instant::now();
        if let Some(l) = &mut self.local {
            l.captures.clear();
        }
        // Render counters are final only once the render threads are done; rates are
        // averages over the whole call (up to `now`).
        for l in self.legs.values_mut() {
            if let Err(e) = l.stop_render().await {
                self.svc.events.emit(CallEvent::Warning {
                    call: self.id,
                    message: e,
                });
            }
            if let Some(r) = &mut l.rx {
                r.meter = Meter::default();
            }
        }
        let final_stats = self.stats(now);
        let reason = self.ended.take().unwrap_or(EndReason::PeerVanished);
        self.emit(CallEvent::Ended {
            call: self.id,
            peer: self.first,
            reason,
            stats: final_stats.map(Box::new),
        });
    }
}

/// Connects to `peer` and opens a call stream on the connection.
async fn open_call_stream(
    svc: &Calls,
    peer: PeerId,
) -> Result<(PeerConnection, (quinn::SendStream, quinn::RecvStream)), String> {
    let conn = svc
        .ctx
        .connect(peer)
        .await
        .map_err(|e| crate::error::causes(&e))?;
    let (mut send, recv) = conn.quic().open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&[CALL]).await.map_err(|e| e.to_string())?;
    Ok((conn, (send, recv)))
}

/// Starts our captures: each stream we describe, encoded once for every leg.
fn start_local(
    opts: CallOptions,
    enc_tx: &mpsc::Sender<media::Encoded>,
    err_tx: &mpsc::Sender<media::CaptureFailed>,
) -> Result<Local, super::CallError> {
    let epoch = Instant::now();
    let mut captures = Vec::new();
    let voice = media::voice_for(&opts.audio);
    for s in opts.describe(true, true).streams {
        let c = match s.kind {
            StreamKind::Audio => media::start_audio(
                &opts.audio,
                epoch,
                voice.clone(),
                enc_tx.clone(),
                err_tx.clone(),
            )?,
            StreamKind::Camera | StreamKind::Screen => media::start_video(
                &opts.video,
                opts.video_params(),
                s.kind == StreamKind::Screen,
                epoch,
                enc_tx.clone(),
                err_tx.clone(),
                opts.sinks.tap.clone(),
            )?,
        };
        captures.push((s.id, c));
    }
    let ladder = (opts.video != super::VideoSource::None).then(|| ladder_for(&opts));
    let playback = media::open_playback(&opts.sinks.speaker, voice.clone())?;
    Ok(Local {
        playback,
        opts,
        epoch,
        captures,
        muted: false,
        camera: true,
        voice,
        ladder,
        backlog: false,
        small_bps: None,
    })
}

/// Starts rendering what one peer sends.
fn start_receive(
    sinks: media::Sinks,
    local: &Local,
    n: &p2pcall_media::call::Negotiated,
    sent_bytes: u64,
    peer: PeerId,
) -> Result<Receive, super::CallError> {
    let render_stats = Arc::new(Mutex::new(RenderStats::default()));
    let render = media::start_render(
        sinks,
        local.opts.fps,
        render_stats.clone(),
        local.playback.clone(),
        peer,
    )?;
    let (audio_rx, video_rx) = leg::received_streams(n);
    let epoch = Instant::now();
    Ok(Receive {
        render: Some(render),
        render_stats,
        next_audio: audio_rx.map(|_| epoch),
        audio_rx,
        video_rx,
        meter: Meter::default(),
        decode_errors: 0,
        epoch,
        sent_bytes,
    })
}

/// The quality ladder of a call's video: from the call's size and frame rate down.
fn ladder_for(o: &CallOptions) -> Ladder {
    Ladder::new(o.width, o.height, o.fps as f32, o.video.is_screen())
}

/// Replaces the video source of a running call (the new capture starts with a keyframe).
fn switch_video(
    p: &mut Local,
    src: super::VideoSource,
    enc_tx: &mpsc::Sender<media::Encoded>,
    err_tx: &mpsc::Sender<media::CaptureFailed>,
) -> Result<(), super::CallError> {
    use super::{CallError, VideoSource};
    if p.opts.video == VideoSource::None {
        return Err(CallError::Source(
            "this call has no video stream (it was placed with --video none)".into(),
        ));
    }
    if src == VideoSource::None {
        return Err(CallError::Source(
            "to stop video, turn the camera off".into(),
        ));
    }
    // Same clock as before: timestamps continue, the receiver sees a keyframe. The stream
    // becomes a screen stream or a camera stream with the source (the update says so).
    let c = media::start_video(
        &src,
        p.opts.video_params(),
        src.is_screen(),
        p.epoch,
        enc_tx.clone(),
        err_tx.clone(),
        p.opts.sinks.tap.clone(),
    )?;
    match p.captures.iter_mut().find(|(s, _)| *s == VIDEO_STREAM) {
        Some(slot) => slot.1 = c,
        // The capture had stopped (its device gone): the new source turns video back on.
        None => {
            p.captures.push((VIDEO_STREAM, c));
            p.camera = true;
        }
    }
    for (s, c) in &p.captures {
        if *s == VIDEO_STREAM {
            let _ = c.cmd.send(media::CaptureCmd::Active(p.camera));
        }
    }
    p.opts.video = src;
    // A new source climbs its own ladder (a screen keeps its size, a camera its rate).
    p.ladder = Some(ladder_for(&p.opts));
    p.backlog = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_dial_that_fails_is_tried_again_ever_less_often() {
        let t0 = Instant::now();
        let peer = PeerId::from_bytes([3; 32]);
        let mut r = Redials::default();
        assert!(r.due(t0, &peer), "the first dial goes at once");
        // Each failed attempt (it failed at once here) waits 1, 2, 4, 8, 8 s.
        let mut t = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            r.dialed(t, peer);
            let next = (1..=20)
                .map(|s| t + Duration::from_secs(s))
                .find(|at| r.due(*at, &peer))
                .unwrap();
            assert!(!r.due(next - Duration::from_millis(1), &peer));
            gaps.push((next - t).as_secs());
            t = next;
        }
        assert_eq!(gaps, [1, 2, 4, 8, 8, 8]);
        assert_eq!(r.attempts(&peer), 6);
        // A member that left and comes back starts afresh.
        r.remove(&peer);
        assert!(r.due(t, &peer));
        assert_eq!(r.attempts(&peer), 0);
    }
}
