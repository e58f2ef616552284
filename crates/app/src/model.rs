//! What the window shows, built only from [`AppEvent`]s (no engine handles, nothing that
//! blocks): the UI renders it and turns clicks into commands.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use p2pcall_core::call::{CallEvent, CallStats, describe_end};
use p2pcall_core::transfer::{OfferInfo, Progress, Summary};
use p2pcall_core::{Message, MessageState, PeerId, PeerInfo};
use p2pcall_proto::call::CallId;
use p2pcall_proto::transfer::TransferId;

use crate::bridge::{AppEvent, Status};

/// Most messages kept per conversation in memory (older ones are paged in again).
pub const MAX_MESSAGES: usize = 2000;
/// How long a toast stays.
pub const TOAST_TIME: Duration = Duration::from_secs(6);

/// One peer in the list: online now, or known from an earlier conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRow {
    /// Its key.
    pub id: PeerId,
    /// Our user's name for a contact; anyone else's self-chosen name (the fingerprint is what
    /// identifies it).
    pub name: String,
    /// A contact announcing another name than ours for it: that name, shown apart (the
    /// network never renames a contact).
    pub announced: Option<String>,
    /// Not a contact, and wrote: a message request waits.
    pub request: bool,
    /// Online now.
    pub online: bool,
    /// Unread incoming messages.
    pub unread: u64,
    /// Our user verified this key (compared safety numbers).
    pub verified: bool,
    /// Not a contact, but goes by a name that looks like a contact's: maybe someone posing
    /// as them (or they have a new key). The contact's name.
    pub lookalike: Option<String>,
}

/// A conversation as loaded so far.
#[derive(Debug, Default, Clone)]
pub struct Conversation {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Older pages exist.
    pub more: bool,
    /// A page was asked for and has not arrived.
    pub loading: bool,
}

/// A transfer in flight or just ended.
#[derive(Debug, Clone)]
pub struct TransferRow {
    /// With whom.
    pub peer: PeerId,
    /// Which.
    pub id: TransferId,
    /// Latest progress.
    pub progress: Option<Progress>,
    /// What it carries (top-level names), if known.
    pub label: String,
    /// Ended: `Ok(where)` or `Err(why)`.
    pub outcome: Option<Result<Vec<PathBuf>, String>>,
}

/// A short notice at the corner of the window.
#[derive(Debug, Clone)]
pub struct Toast {
    /// What happened.
    pub text: String,
    /// An error (shown in red).
    pub error: bool,
    /// When it appeared.
    pub at: Instant,
}

/// Seconds of call statistics kept for the plots.
pub const STATS_HISTORY: usize = 300;

/// Where a call stands.
#[derive(Debug, Clone, PartialEq)]
pub enum CallPhase {
    /// They call us: accept or decline.
    Incoming {
        /// They offer video.
        video: bool,
        /// A group call: the others in it besides the caller.
        members: Vec<PeerId>,
    },
    /// We call them, no answer yet.
    Calling {
        /// Their device rings.
        ringing: bool,
    },
    /// Up since then.
    Active(Instant),
}

/// One second of a call, for the plots.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds into the call.
    pub t: f64,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// What we send, kbit/s (all streams).
    pub send_kbps: f64,
    /// What we receive, kbit/s.
    pub recv_kbps: f64,
    /// The bandwidth estimate, kbit/s.
    pub target_kbps: f64,
    /// Received packet loss, % (worst stream).
    pub loss_pct: f64,
    /// Audio jitter-buffer delay, ms.
    pub buffer_ms: f64,
    /// Received video frames per second.
    pub fps: f64,
}

/// The call in progress.
#[derive(Debug, Clone)]
pub struct CallView {
    /// Which call (None until the engine names our outgoing one).
    pub id: Option<CallId>,
    /// With whom.
    pub peer: PeerId,
    /// Where it stands.
    pub phase: CallPhase,
    /// Our audio is off.
    pub muted: bool,
    /// Our video is on.
    pub camera: bool,
    /// What we share instead of the camera (`screen:N`, `window:ID`).
    pub sharing: Option<String>,
    /// The latest statistics.
    pub stats: Option<CallStats>,
    /// The last seconds of statistics.
    pub history: VecDeque<Sample>,
    /// A group call: the others in it, in the order they joined.
    pub participants: Vec<Participant>,
    /// A group call: who speaks.
    pub speaker: Option<PeerId>,
    /// What the call warned of (a missing microphone, a camera that stopped), the last
    /// [`CALL_NOTES`], shown as long as the call lasts.
    pub notes: Vec<String>,
}

/// How many of a call's warnings its view keeps.
pub const CALL_NOTES: usize = 3;

/// One other participant of a group call, as its tile shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// Who.
    pub peer: PeerId,
    /// Their audio is off.
    pub muted: bool,
    /// They send video.
    pub camera: bool,
    /// `direct` or `relayed`, once statistics came.
    pub path: Option<String>,
    /// Round-trip time, ms.
    pub rtt_ms: Option<f64>,
}

impl Participant {
    fn new(peer: PeerId, streams: &p2pcall_core::call::Negotiated) -> Self {
        let mut p = Self {
            peer,
            muted: false,
            camera: false,
            path: None,
            rtt_ms: None,
        };
        p.set_streams(streams);
        p
    }

    fn set_streams(&mut self, n: &p2pcall_core::call::Negotiated) {
        use p2pcall_proto::call::StreamKind;
        let on = |audio: bool| {
            (n.receive.iter()).any(|s| s.active && (s.kind == StreamKind::Audio) == audio)
        };
        self.muted = !on(true);
        self.camera = on(false);
    }
}

impl CallView {
    /// Who else is in the call: the participants of a group call, else the peer.
    pub fn others(&self) -> Vec<PeerId> {
        if self.participants.is_empty() {
            vec![self.peer]
        } else {
            self.participants.iter().map(|p| p.peer).collect()
        }
    }

    /// No one more can be added (us and the others make [`MAX_MEMBERS`]).
    ///
    /// [`MAX_MEMBERS`]: p2pcall_proto::group::MAX_MEMBERS
    pub fn is_full(&self) -> bool {
        self.others().len() + 1 >= p2pcall_proto::group::MAX_MEMBERS
    }

    fn new(id: Option<CallId>, peer: PeerId, phase: CallPhase) -> Self {
        Self {
            id,
            peer,
            phase,
            muted: false,
            camera: true,
            sharing: None,
            stats: None,
            history: VecDeque::new(),
            participants: Vec::new(),
            speaker: None,
            notes: Vec::new(),
        }
    }
}

/// Everything the window shows.
#[derive(Debug)]
pub struct Model {
    /// Relay session.
    pub status: Status,
    /// Our key and name, once started.
    pub me: Option<(PeerId, String)>,
    /// Where accepted files go.
    pub downloads: Option<PathBuf>,
    /// The relay this app hosts (its UDP address).
    pub hosting: Option<std::net::SocketAddr>,
    /// The daemon whose engine the window shows (its process id); `None`: the app's own.
    pub daemon: Option<u32>,
    online: BTreeMap<PeerId, PeerInfo>,
    known: HashMap<PeerId, String>,
    verified: HashSet<PeerId>,
    /// Contacts our user chose.
    chosen: HashSet<PeerId>,
    unread: HashMap<PeerId, u64>,
    /// Conversations loaded.
    pub conversations: HashMap<PeerId, Conversation>,
    /// The conversation on screen.
    pub selected: Option<PeerId>,
    /// Offers waiting for an answer, oldest first.
    pub offers: Vec<OfferInfo>,
    /// Transfers, newest last.
    pub transfers: Vec<TransferRow>,
    /// Notices, oldest first.
    pub toasts: Vec<Toast>,
    /// Things to tell the desktop while the window is not focused (taken by the UI).
    pub notify: Vec<(String, String)>,
    /// The call, if one is ringing or running.
    pub call: Option<CallView>,
    /// Screens and windows to share, once listed.
    pub screens: Option<Result<Vec<(String, String)>, String>>,
    /// The settings as saved.
    pub settings: p2pcall_core::settings::Settings,
    /// Cameras, microphones, speakers, once listed.
    pub devices: Option<Devices>,
    /// Our invitation ticket, once made (or why it could not be).
    pub ticket: Option<Result<String, String>>,
    /// Message requests: senders who are not contacts, and how many messages wait.
    pub requests: HashMap<PeerId, u64>,
}

/// Device choices for the settings: (value, description) each, or why there are none.
#[derive(Debug, Clone)]
pub struct Devices {
    /// Cameras.
    pub cameras: Result<Vec<(String, String)>, String>,
    /// Microphones.
    pub microphones: Result<Vec<(String, String)>, String>,
    /// Speakers.
    pub speakers: Result<Vec<(String, String)>, String>,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            status: Status::Connecting("starting".into()),
            me: None,
            downloads: None,
            hosting: None,
            daemon: None,
            online: BTreeMap::new(),
            known: HashMap::new(),
            verified: HashSet::new(),
            chosen: HashSet::new(),
            unread: HashMap::new(),
            conversations: HashMap::new(),
            selected: None,
            offers: Vec::new(),
            transfers: Vec::new(),
            toasts: Vec::new(),
            notify: Vec::new(),
            call: None,
            screens: None,
            settings: Default::default(),
            devices: None,
            ticket: None,
            requests: HashMap::new(),
        }
    }
}

impl Model {
    /// Applies one event at `now`.
    pub fn apply(&mut self, now: Instant, e: AppEvent) {
        match e {
            AppEvent::Started {
                me,
                name,
                downloads,
                hosting,
                daemon,
            } => {
                self.me = Some((me, name));
                self.downloads = Some(downloads);
                self.hosting = hosting;
                self.daemon = daemon;
            }
            AppEvent::Status(s) => {
                match &s {
                    Status::Failed(why) => self.toast(now, why.clone(), true),
                    Status::DaemonStopped => {
                        // Its calls and transfers went with it.
                        self.call = None;
                        self.online.clear();
                        self.toast(now, "the p2pcall daemon stopped".into(), true);
                    }
                    _ => {}
                }
                self.status = s;
            }
            AppEvent::Online(peers) => {
                let me = self.me.as_ref().map(|m| m.0);
                self.online = peers
                    .into_iter()
                    .filter(|p| Some(p.id) != me)
                    .map(|p| (p.id, p))
                    .collect();
            }
            AppEvent::Contacts {
                known,
                chosen,
                unread,
            } => {
                self.verified = known.iter().filter(|k| k.2).map(|k| k.0).collect();
                self.chosen = chosen.into_iter().collect();
                self.known = known.into_iter().map(|(p, n, _)| (p, n)).collect();
                self.unread = unread;
                // What is on screen is read.
                if let Some(p) = self.selected {
                    self.unread.remove(&p);
                }
            }
            AppEvent::History {
                peer,
                messages,
                older,
                more,
            } => self.on_history(peer, messages, older, more),
            AppEvent::Message(m) => self.on_message(now, m),
            AppEvent::MessageState { peer, id, state } => {
                if let Some(m) = self
                    .conversations
                    .get_mut(&peer)
                    .and_then(|c| c.messages.iter_mut().find(|m| m.id == id))
                    && rank(state) > rank(m.state)
                {
                    m.state = state;
                }
            }
            AppEvent::Offer(o) => {
                let who = self.name_of(&o.peer);
                self.notify.push((
                    format!("{who} offers files"),
                    format!("{} ({})", o.tops.join(", "), bytes(o.total_bytes)),
                ));
                self.toast(now, format!("{who} offers {}", o.tops.join(", ")), false);
                self.offers.retain(|x| x.id != o.id);
                self.offers.push(o);
            }
            AppEvent::Progress(p) => {
                self.offers.retain(|o| o.id != p.id);
                let row = self.transfer(p.peer, p.id);
                row.progress = Some(p);
            }
            AppEvent::Finished(s) => self.on_finished(now, s),
            AppEvent::TransferFailed { peer, id, reason } => {
                self.offers.retain(|o| o.id != id);
                self.toast(now, format!("transfer stopped: {reason}"), true);
                self.transfer(peer, id).outcome = Some(Err(reason));
            }
            AppEvent::Settings(s) => self.settings = *s,
            AppEvent::Call(c) => self.on_call(now, c),
            AppEvent::CallFailed(why) => {
                self.call = None;
                self.toast(now, why, true);
            }
            AppEvent::Screens(s) => self.screens = Some(s),
            AppEvent::Devices {
                cameras,
                microphones,
                speakers,
            } => {
                self.devices = Some(Devices {
                    cameras,
                    microphones,
                    speakers,
                })
            }
            AppEvent::Ticket(t) => self.ticket = Some(t),
            AppEvent::Requests(r) => self.requests = r,
            AppEvent::Invited { name, warning } => {
                self.toast(now, format!("{name} is your contact"), false);
                if let Some(w) = warning {
                    self.toast(now, w, true);
                }
            }
            AppEvent::Error(e) => self.toast(now, e, true),
        }
    }

    /// A page of history: older messages go before those shown; the newest page replaces
    /// them, keeping what arrived meanwhile.
    fn on_history(&mut self, peer: PeerId, messages: Vec<Message>, older: bool, more: bool) {
        let c = self.conversations.entry(peer).or_default();
        c.loading = false;
        c.more = more;
        if older {
            let first = c.messages.first().map(|m| m.rowid);
            let mut page: Vec<Message> = messages
                .into_iter()
                .filter(|m| first.is_none_or(|f| m.rowid < f))
                .collect();
            page.append(&mut c.messages);
            c.messages = page;
        } else {
            // The newest page: what arrived meanwhile stays.
            let last = messages.last().map(|m| m.rowid);
            let newer: Vec<Message> = c
                .messages
                .drain(..)
                .filter(|m| last.is_some_and(|l| m.rowid > l))
                .collect();
            c.messages = messages;
            c.messages.extend(newer);
        }
        trim(c);
    }

    /// A new message, or a new state of one shown; a message from someone not on screen
    /// notifies.
    fn on_message(&mut self, now: Instant, m: Message) {
        let peer = m.peer;
        if !m.outgoing && self.selected != Some(peer) {
            let who = self.name_of(&peer);
            let what = if m.request {
                "Message request from"
            } else {
                "Message from"
            };
            self.notify.push((format!("{what} {who}"), m.text.clone()));
            self.toast(now, format!("{who}: {}", short(&m.text, 80)), false);
        }
        let c = self.conversations.entry(peer).or_default();
        match c.messages.iter_mut().find(|x| x.id == m.id) {
            Some(x) => *x = m,
            None => {
                let at = c.messages.partition_point(|x| x.rowid < m.rowid);
                c.messages.insert(at, m);
            }
        }
        trim(c);
    }

    /// A finished transfer: notified, and its row shows it done.
    fn on_finished(&mut self, now: Instant, s: Summary) {
        self.offers.retain(|o| o.id != s.id);
        let who = self.name_of(&s.peer);
        let text = if s.outgoing {
            format!(
                "{who} received {} files ({})",
                s.files,
                bytes(s.total_bytes)
            )
        } else {
            format!(
                "received {} files from {who} ({})",
                s.files,
                bytes(s.total_bytes)
            )
        };
        self.notify.push(("Transfer finished".into(), text.clone()));
        self.toast(now, text, false);
        let row = self.transfer(s.peer, s.id);
        // A transfer faster than its first progress report (or started by another program
        // of this identity) is shown complete all the same.
        let p = row.progress.get_or_insert(Progress {
            peer: s.peer,
            id: s.id,
            outgoing: s.outgoing,
            done_bytes: 0,
            total_bytes: s.total_bytes,
            files_done: 0,
            files: s.files,
            rate: None,
            eta: None,
        });
        p.done_bytes = p.total_bytes;
        p.files_done = p.files;
        if row.label.is_empty() {
            let mut tops: Vec<&str> = Vec::new();
            for (path, _) in &s.hashes {
                let top = path.split('/').next().unwrap_or(path);
                if !tops.contains(&top) {
                    tops.push(top);
                }
            }
            row.label = tops.join(", ");
        }
        row.outcome = Some(Ok(s.placed));
    }

    /// We dial `peer` (the UI sends the command).
    pub fn calling(&mut self, peer: PeerId) {
        self.call = Some(CallView::new(
            None,
            peer,
            CallPhase::Calling { ringing: false },
        ));
    }

    fn on_call(&mut self, now: Instant, e: CallEvent) {
        match e {
            CallEvent::Incoming {
                call,
                peer,
                name,
                video,
                members,
                ..
            } => {
                let who = name.unwrap_or_else(|| self.name_of(&peer));
                self.notify
                    .push(("Incoming call".into(), format!("{who} is calling")));
                self.call = Some(CallView::new(
                    Some(call),
                    peer,
                    CallPhase::Incoming { video, members },
                ));
            }
            CallEvent::Ringing { call } => {
                if let Some(c) = &mut self.call {
                    c.id = Some(call);
                    c.phase = CallPhase::Calling { ringing: true };
                }
            }
            CallEvent::Started { call, peer, .. } => {
                let c = self
                    .call
                    .get_or_insert_with(|| CallView::new(None, peer, CallPhase::Active(now)));
                c.id = Some(call);
                c.peer = peer;
                c.phase = CallPhase::Active(now);
            }
            CallEvent::Updated { peer, streams, .. } => {
                let c = self.call.as_mut();
                if let Some(p) = c.and_then(|c| c.participants.iter_mut().find(|p| p.peer == peer))
                {
                    p.set_streams(&streams);
                }
            }
            CallEvent::Joined {
                peer,
                name,
                streams,
                ..
            } => {
                let who = name.unwrap_or_else(|| self.name_of(&peer));
                self.toast(now, format!("{who} joined the call"), false);
                if let Some(c) = &mut self.call {
                    c.participants.retain(|p| p.peer != peer);
                    c.participants.push(Participant::new(peer, &streams));
                }
            }
            CallEvent::Left { peer, reason, .. } => {
                let (_, text) = describe_end(&reason);
                let who = self.name_of(&peer);
                self.toast(now, format!("{who} left the call: {text}"), false);
                if let Some(c) = &mut self.call {
                    c.participants.retain(|p| p.peer != peer);
                    if c.speaker == Some(peer) {
                        c.speaker = None;
                    }
                }
            }
            CallEvent::Speaker { peer, .. } => {
                if let Some(c) = &mut self.call {
                    c.speaker = Some(peer);
                }
            }
            CallEvent::Stats(st) => self.call_stats(*st),
            CallEvent::Sending { audio, video, .. } => {
                if let Some(c) = &mut self.call {
                    c.muted = !audio;
                    c.camera = video;
                }
            }
            CallEvent::Warning { message, .. } => {
                if let Some(c) = &mut self.call
                    && !c.notes.contains(&message)
                {
                    c.notes.push(message.clone());
                    if c.notes.len() > CALL_NOTES {
                        c.notes.remove(0);
                    }
                }
                self.toast(now, message, true);
            }
            CallEvent::Ended { peer, reason, .. } => {
                let (_, text) = describe_end(&reason);
                let who = self.name_of(&peer);
                self.toast(now, format!("call with {who} ended: {text}"), false);
                self.call = None;
            }
        }
    }

    /// A call's statistics of the second: the history the graphs show, the tiles' paths.
    fn call_stats(&mut self, st: CallStats) {
        if let Some(c) = &mut self.call {
            let sum = |v: &mut dyn Iterator<Item = f64>| v.sum::<f64>();
            let sample = Sample {
                t: st.elapsed_s,
                rtt_ms: st.rtt_ms,
                send_kbps: sum(&mut st.send.iter().map(|x| x.kbps)),
                recv_kbps: sum(&mut st.recv.iter().map(|x| x.kbps)),
                target_kbps: st.rate.target_kbps,
                loss_pct: st.recv.iter().map(|x| x.loss_pct).fold(0.0, f64::max),
                buffer_ms: st
                    .recv
                    .iter()
                    .find(|x| x.kind == "audio")
                    .map_or(0.0, |x| x.buffer_ms),
                fps: st
                    .recv
                    .iter()
                    .find(|x| x.kind != "audio")
                    .map_or(0.0, |x| x.fps),
            };
            for s in &st.participants {
                let peer = s.peer.as_deref().and_then(|p| p.parse::<PeerId>().ok());
                let tile = c.participants.iter_mut().find(|p| Some(p.peer) == peer);
                if let Some(p) = tile {
                    let direct = s.path.starts_with("direct");
                    p.path = Some(if direct { "direct" } else { "relayed" }.into());
                    p.rtt_ms = Some(s.rtt_ms);
                }
            }
            c.history.push_back(sample);
            while c.history.len() > STATS_HISTORY {
                c.history.pop_front();
            }
            c.stats = Some(st);
        }
    }

    /// Drops toasts older than [`TOAST_TIME`].
    pub fn expire(&mut self, now: Instant) {
        self.toasts
            .retain(|t| now.saturating_duration_since(t.at) < TOAST_TIME);
    }

    fn toast(&mut self, now: Instant, text: String, error: bool) {
        self.toasts.push(Toast {
            text,
            error,
            at: now,
        });
        if self.toasts.len() > 5 {
            self.toasts.remove(0);
        }
    }

    fn transfer(&mut self, peer: PeerId, id: TransferId) -> &mut TransferRow {
        let i = match self
            .transfers
            .iter()
            .position(|t| t.id == id && t.peer == peer)
        {
            Some(i) => i,
            None => {
                let label = self
                    .offers
                    .iter()
                    .find(|o| o.id == id)
                    .map(|o| o.tops.join(", "))
                    .unwrap_or_default();
                self.transfers.push(TransferRow {
                    peer,
                    id,
                    progress: None,
                    label,
                    outcome: None,
                });
                if self.transfers.len() > 50 {
                    self.transfers.remove(0);
                }
                self.transfers.len() - 1
            }
        };
        &mut self.transfers[i]
    }

    /// The name to show for a peer: our user's name for a contact; anyone else's online
    /// name, else the last one seen, else its fingerprint.
    pub fn name_of(&self, p: &PeerId) -> String {
        let petname = self.known.get(p).filter(|_| self.chosen.contains(p));
        (petname.or_else(|| self.online.get(p).map(|i| &i.name)))
            .or_else(|| self.known.get(p))
            .cloned()
            .unwrap_or_else(|| p.fingerprint().to_string())
    }

    /// What a contact announces now, when it is not the name our user gave it.
    pub fn announced(&self, p: &PeerId) -> Option<String> {
        let petname = self.known.get(p).filter(|_| self.chosen.contains(p))?;
        let online = &self.online.get(p)?.name;
        (online != petname).then(|| online.clone())
    }

    /// Whether our user verified this key.
    pub fn is_verified(&self, p: &PeerId) -> bool {
        self.verified.contains(p)
    }

    /// A key that is not a contact going by a name that looks like a contact's (compared by
    /// eye: invisible and bidi characters, case and confusable letters do not count): the
    /// contact's name. Names are self-chosen, so this is what a changed key, or someone
    /// posing as a known peer, looks like.
    pub fn lookalike(&self, p: &PeerId) -> Option<String> {
        if self.verified.contains(p) || self.chosen.contains(p) {
            return None;
        }
        let name = self.name_of(p);
        // Our name for each contact, and the name it announces.
        (self.chosen.iter().chain(&self.verified))
            .filter(|v| *v != p)
            .find(|v| {
                std::iter::once(self.name_of(v))
                    .chain(self.online.get(v).map(|i| i.name.clone()))
                    .any(|n| p2pcall_proto::text::looks_alike(&n, &name))
            })
            .map(|v| self.name_of(v))
    }

    /// Whether a peer is online now.
    pub fn is_online(&self, p: &PeerId) -> bool {
        self.online.contains_key(p)
    }

    /// The peer list: online first, then known ones; each group by name. `filter` matches
    /// names and fingerprints, case-insensitively.
    pub fn peers(&self, filter: &str) -> Vec<PeerRow> {
        let me = self.me.as_ref().map(|m| m.0);
        let f = filter.trim().to_lowercase();
        let mut ids: Vec<PeerId> = self.online.keys().copied().collect();
        ids.extend(self.known.keys().filter(|k| !self.online.contains_key(k)));
        let mut rows: Vec<PeerRow> = ids
            .into_iter()
            .filter(|id| Some(*id) != me)
            .map(|id| PeerRow {
                id,
                name: self.name_of(&id),
                announced: self.announced(&id),
                request: self.requests.contains_key(&id),
                online: self.online.contains_key(&id),
                unread: if self.selected == Some(id) {
                    0
                } else {
                    self.unread.get(&id).copied().unwrap_or(0)
                },
                verified: self.verified.contains(&id),
                lookalike: self.lookalike(&id),
            })
            .filter(|r| {
                f.is_empty()
                    || r.name.to_lowercase().contains(&f)
                    || r.id.fingerprint().to_string().contains(&f)
            })
            .collect();
        rows.sort_by(|a, b| {
            b.online
                .cmp(&a.online)
                .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
                .then_with(|| a.id.as_bytes().cmp(b.id.as_bytes()))
        });
        rows
    }

    /// Selects a conversation (the UI then asks for its history).
    pub fn select(&mut self, p: PeerId) {
        self.selected = Some(p);
        self.unread.remove(&p);
        self.conversations.entry(p).or_default().loading = true;
    }
}

/// Keeps the newest [`MAX_MESSAGES`].
fn trim(c: &mut Conversation) {
    if c.messages.len() > MAX_MESSAGES {
        let cut = c.messages.len() - MAX_MESSAGES;
        c.messages.drain(..cut);
        c.more = true;
    }
}

/// States only move forward (a late `Sent` does not undo `Delivered`).
fn rank(s: MessageState) -> u8 {
    match s {
        MessageState::Queued => 0,
        MessageState::Sent => 1,
        MessageState::Delivered => 2,
        MessageState::Read => 3,
        MessageState::Received => 4,
    }
}

fn short(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// `1.5 MB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_proto::chat::MessageId;
    use p2pcall_transport::Identity;

    fn peer() -> PeerId {
        Identity::generate().unwrap().id()
    }

    /// The engine started as `me`.
    fn started(m: &mut Model, now: Instant, me: PeerId) {
        m.apply(
            now,
            AppEvent::Started {
                me,
                name: "me".into(),
                downloads: PathBuf::from("/tmp"),
                hosting: None,
                daemon: None,
            },
        );
    }

    fn info(id: PeerId, name: &str) -> PeerInfo {
        PeerInfo {
            id,
            name: name.into(),
            online_since_ms: 0,
        }
    }

    fn msg(peer: PeerId, rowid: i64, outgoing: bool, text: &str) -> Message {
        Message {
            rowid,
            peer,
            outgoing,
            id: MessageId::from_bytes([rowid as u8; 16]),
            seq: rowid as u64,
            sent_ms: 0,
            received_ms: None,
            text: text.into(),
            state: if outgoing {
                MessageState::Queued
            } else {
                MessageState::Received
            },
            request: false,
        }
    }

    /// A history page of rows `rows` (outgoing, text "x").
    fn page(p: PeerId, rows: std::ops::RangeInclusive<i64>, older: bool, more: bool) -> AppEvent {
        AppEvent::History {
            peer: p,
            messages: rows.map(|i| msg(p, i, true, "x")).collect(),
            older,
            more,
        }
    }

    fn rows(m: &Model, p: &PeerId) -> Vec<i64> {
        m.conversations[p]
            .messages
            .iter()
            .map(|m| m.rowid)
            .collect()
    }

    #[test]
    fn pages_merge_in_order_and_live_messages_survive_a_reload() {
        let p = peer();
        let now = Instant::now();
        let mut m = Model::default();
        m.select(p);
        m.apply(now, page(p, 11..=20, false, true));
        m.apply(now, AppEvent::Message(msg(p, 21, false, "live")));
        // An older page goes in front; an overlapping row is not doubled.
        m.apply(now, page(p, 5..=11, true, false));
        assert_eq!(rows(&m, &p), (5..=21).collect::<Vec<_>>());
        assert!(!m.conversations[&p].more);
        // Reloading the newest page keeps what is newer than it.
        m.apply(now, page(p, 15..=20, false, true));
        assert_eq!(rows(&m, &p), (15..=21).collect::<Vec<_>>());
        // The selected conversation raises no notification.
        assert!(m.notify.is_empty());
    }

    #[test]
    fn states_only_advance_and_other_conversations_notify() {
        let (a, b) = (peer(), peer());
        let now = Instant::now();
        let mut m = Model::default();
        m.select(a);
        let mine = msg(a, 1, true, "hi");
        let id = mine.id;
        m.apply(now, AppEvent::Message(mine));
        for s in [
            MessageState::Delivered,
            MessageState::Sent,
            MessageState::Read,
        ] {
            m.apply(
                now,
                AppEvent::MessageState {
                    peer: a,
                    id,
                    state: s,
                },
            );
        }
        assert_eq!(m.conversations[&a].messages[0].state, MessageState::Read);
        m.apply(now, AppEvent::Message(msg(b, 2, false, "psst")));
        assert_eq!(m.notify.len(), 1);
        assert_eq!(m.toasts.len(), 1);
        m.expire(now + TOAST_TIME);
        assert!(m.toasts.is_empty());
    }

    #[test]
    fn the_list_puts_online_peers_first_filters_and_hides_us() {
        let (me, a, b, c) = (peer(), peer(), peer(), peer());
        let now = Instant::now();
        let mut m = Model::default();
        started(&mut m, now, me);
        m.apply(
            now,
            AppEvent::Online(vec![info(me, "me"), info(b, "Bob"), info(a, "alice")]),
        );
        m.apply(
            now,
            AppEvent::Contacts {
                known: vec![(c, "carol".into(), false), (a, "old alice".into(), false)],
                chosen: vec![c],
                unread: HashMap::from([(c, 3)]),
            },
        );
        let rows = m.peers("");
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["alice", "Bob", "carol"]);
        assert_eq!(rows[2].unread, 3);
        assert!(!rows[2].online);
        assert_eq!(m.peers("BO").len(), 1);
        let fp = c.fingerprint().to_string();
        assert_eq!(m.peers(&fp[..9])[0].id, c);
        m.select(c);
        assert_eq!(m.peers("carol")[0].unread, 0);
    }

    #[test]
    fn a_contact_keeps_our_name_and_its_announced_one_is_shown_apart() {
        let (me, bob, stranger) = (peer(), peer(), peer());
        let now = Instant::now();
        let mut m = Model::default();
        started(&mut m, now, me);
        m.apply(
            now,
            AppEvent::Contacts {
                known: vec![(bob, "Bobby".into(), false)],
                chosen: vec![bob],
                unread: HashMap::new(),
            },
        );
        // Bob renames himself "the boss"; a stranger takes the name Bob announced before.
        m.apply(
            now,
            AppEvent::Online(vec![info(bob, "the boss"), info(stranger, "Bobby")]),
        );
        let rows = m.peers("");
        let row = |id| rows.iter().find(|r| r.id == id).unwrap();
        assert_eq!(row(bob).name, "Bobby");
        assert_eq!(row(bob).announced.as_deref(), Some("the boss"));
        assert_eq!(m.name_of(&bob), "Bobby");
        assert_eq!(row(stranger).name, "Bobby");
        assert_eq!(row(stranger).announced, None);
        assert_eq!(row(stranger).lookalike.as_deref(), Some("Bobby"));
        // Someone announcing the contact's current name is flagged too.
        m.apply(
            now,
            AppEvent::Online(vec![info(bob, "the boss"), info(stranger, "The Boss")]),
        );
        assert_eq!(m.lookalike(&stranger).as_deref(), Some("Bobby"));
    }

    #[test]
    fn a_stranger_with_a_contacts_name_is_flagged_however_it_spells_it() {
        let (me, real, ann) = (peer(), peer(), peer());
        let fakes = [peer(), peer(), peer(), peer()];
        let other = peer();
        let now = Instant::now();
        let mut m = Model::default();
        started(&mut m, now, me);
        m.apply(
            now,
            AppEvent::Contacts {
                known: vec![(real, "Bob".into(), true), (ann, "ann".into(), false)],
                chosen: vec![real, ann],
                unread: HashMap::new(),
            },
        );
        m.apply(
            now,
            AppEvent::Online(vec![
                info(fakes[0], " bob "),
                info(fakes[1], "bob\u{200B}"),
                info(fakes[2], "b\u{043E}b"),
                // An unverified contact's name is a contact's name too.
                info(fakes[3], "Ann"),
                info(other, "carol"),
            ]),
        );
        let rows = m.peers("");
        let row = |id| rows.iter().find(|r| r.id == id).unwrap();
        for (f, want) in fakes.iter().zip(["Bob", "Bob", "Bob", "ann"]) {
            assert_eq!(
                row(*f).lookalike.as_deref(),
                Some(want),
                "{:?}",
                row(*f).name
            );
            assert!(!row(*f).verified);
        }
        assert!(row(real).verified && row(real).lookalike.is_none());
        assert!(row(ann).lookalike.is_none());
        assert!(row(other).lookalike.is_none());
    }

    #[test]
    fn a_call_that_fails_to_start_leaves_no_call_behind() {
        let now = Instant::now();
        let mut m = Model::default();
        m.calling(peer());
        assert!(m.call.is_some());
        m.apply(now, AppEvent::CallFailed("the call failed: offline".into()));
        assert!(m.call.is_none());
        assert!(m.toasts[0].error && m.toasts[0].text.contains("offline"));
    }

    #[test]
    fn a_group_call_names_who_is_in_it_and_fills_at_six() {
        let now = Instant::now();
        let mut m = Model::default();
        let call = CallId::from_bytes([7; 16]);
        let [bob, carol, dave, erin, frank] = [(); 5].map(|_| peer());
        let ev = |e| AppEvent::Call(e);
        m.apply(
            now,
            ev(CallEvent::Started {
                call,
                peer: bob,
                streams: Default::default(),
            }),
        );
        let c = m.call.as_ref().unwrap();
        assert_eq!((c.others(), c.is_full()), (vec![bob], false));
        let join = |m: &mut Model, peer| {
            let (name, streams) = (None, Default::default());
            m.apply(
                now,
                ev(CallEvent::Joined {
                    call,
                    peer,
                    name,
                    streams,
                }),
            );
        };
        for p in [bob, carol] {
            join(&mut m, p);
        }
        // The first peer leaves: the call is with carol alone, and bob could be added back.
        let reason = p2pcall_core::call::EndReason::HungUp {
            remote: true,
            reason: p2pcall_proto::call::HangupReason::Normal,
            detail: String::new(),
        };
        m.apply(
            now,
            ev(CallEvent::Left {
                call,
                peer: bob,
                reason,
            }),
        );
        assert_eq!(m.call.as_ref().unwrap().others(), vec![carol]);
        for p in [dave, erin, frank] {
            join(&mut m, p);
        }
        let c = m.call.as_ref().unwrap();
        assert!(!c.is_full(), "five of six");
        join(&mut m, bob);
        let c = m.call.as_ref().unwrap();
        assert_eq!(c.others(), vec![carol, dave, erin, frank, bob]);
        assert!(c.is_full());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
    }
}
