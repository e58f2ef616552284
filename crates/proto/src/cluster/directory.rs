//! The peers registered with the other relays of a cluster, as one relay knows them (sans-IO).
//!
//! Every relay numbers the changes to its own peers (1, 2, … within an epoch drawn at start)
//! and publishes them in [`Deltas`]. A relay applies another's changes in order; when one is
//! missing (a gap in the numbers, or a heartbeat announcing a number it has not seen a
//! heartbeat later) it asks that relay for a snapshot, keeps the changes that arrive
//! meanwhile, installs the snapshot and applies what follows it. A snapshot replaces what the
//! directory held of that relay by difference, so subscribers see only real changes.
//!
//! A peer may be registered with two relays for a moment (it moved); it is online while any
//! holds it, and the newest registration is where its packets and signals go.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::wire::{Change, Deltas, RemotePeer};
use super::{Heartbeat, Hop, MAX_MEMBERS};
use crate::PeerId;
use crate::relay::PeerInfo;

/// Most peers kept for one relay (a hostile or broken relay cannot make us hold more).
pub const MAX_PEERS_PER_RELAY: usize = 1 << 20;
/// Most out-of-order [`Deltas`] messages kept per relay while a snapshot is awaited.
pub const MAX_PENDING: usize = 256;
/// A snapshot not received this long after it was asked for is asked for again.
pub const SNAPSHOT_RETRY: Duration = Duration::from_secs(2);

/// What the directory tells its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// A peer is online at another relay (it was not online at any other relay before).
    Joined(PeerInfo),
    /// What is known of an online peer changed (its name, or where it is newest).
    Updated(PeerInfo),
    /// A peer is no longer online at any other relay.
    Left(PeerId),
    /// Ask this relay for a snapshot of its peers; its parts carry `request` back.
    RequestSnapshot {
        /// The relay to ask.
        relay: PeerId,
        /// Names this request (parts of an earlier one are ignored).
        request: u64,
    },
}

/// Where a peer registered with another relay is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Its home relay.
    pub relay: PeerId,
    /// Its session's route number there.
    pub route: u64,
    /// Where that relay takes packets (none announced: packets cannot cross to it).
    pub hop: Option<Hop>,
    /// When it registered there, Unix milliseconds (that relay's clock).
    pub online_since_ms: u64,
}

/// Most parts a snapshot may come in (a relay's peers at most, 1,024 a part).
pub const MAX_PARTS: u32 = (MAX_PEERS_PER_RELAY / 1024 + 1) as u32;

#[derive(Debug)]
struct Incoming {
    seq: u64,
    /// Which parts arrived.
    got: Vec<bool>,
    received: u32,
    peers: HashMap<PeerId, RemotePeer>,
}

/// A snapshot asked for: which request, and when it last made progress.
#[derive(Debug, Clone, Copy)]
struct Asked {
    request: u64,
    at: Instant,
}

#[derive(Debug)]
struct RelayView {
    epoch: u64,
    /// The last change applied (`None`: no snapshot yet).
    applied: Option<u64>,
    /// The `seq` its previous heartbeat announced.
    announced: u64,
    hop: Option<Hop>,
    peers: HashMap<PeerId, RemotePeer>,
    /// Changes waiting for a snapshot or for the changes before them, by first number.
    pending: BTreeMap<u64, Deltas>,
    incoming: Option<Incoming>,
    asked: Option<Asked>,
}

impl RelayView {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            applied: None,
            announced: 0,
            hop: None,
            peers: HashMap::new(),
            pending: BTreeMap::new(),
            incoming: None,
            asked: None,
        }
    }
}

/// The other relays' peers (see the module documentation).
#[derive(Debug)]
pub struct Directory {
    me: PeerId,
    relays: HashMap<PeerId, RelayView>,
    /// For each peer, the relays it is registered with.
    homes: HashMap<PeerId, Vec<PeerId>>,
    events: VecDeque<DirectoryEvent>,
    next_request: u64,
}

/// True if `view` may ask for a snapshot at `now` (nothing asked, or no progress for
/// [`SNAPSHOT_RETRY`]).
fn may_ask(view: &RelayView, now: Instant) -> bool {
    view.asked
        .is_none_or(|a| now.saturating_duration_since(a.at) >= SNAPSHOT_RETRY)
}

/// Asks `relay` (whose view is `view`) for a snapshot: a new request, what arrived of an
/// earlier one dropped.
fn ask(
    view: &mut RelayView,
    next_request: &mut u64,
    events: &mut VecDeque<DirectoryEvent>,
    relay: PeerId,
    now: Instant,
) {
    *next_request += 1;
    let request = *next_request;
    view.asked = Some(Asked { request, at: now });
    view.incoming = None;
    events.push_back(DirectoryEvent::RequestSnapshot { relay, request });
}

impl Directory {
    /// The directory of relay `me`.
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            relays: HashMap::new(),
            homes: HashMap::new(),
            events: VecDeque::new(),
            next_request: 0,
        }
    }

    /// The next thing to tell the relay.
    pub fn poll_event(&mut self) -> Option<DirectoryEvent> {
        self.events.pop_front()
    }

    /// Peers online at other relays.
    pub fn len(&self) -> usize {
        self.homes.len()
    }

    /// True when no other relay has peers.
    pub fn is_empty(&self) -> bool {
        self.homes.is_empty()
    }

    /// True once a snapshot of `relay`'s peers is installed.
    pub fn synced(&self, relay: &PeerId) -> bool {
        self.relays.get(relay).is_some_and(|v| v.applied.is_some())
    }

    /// Where `peer` is reached, if it is online at another relay.
    pub fn locate(&self, peer: &PeerId) -> Option<Located> {
        let relay = self.best_home(peer)?;
        let view = self.relays.get(&relay)?;
        let p = view.peers.get(peer)?;
        Some(Located {
            relay,
            route: p.route,
            hop: view.hop,
            online_since_ms: p.info.online_since_ms,
        })
    }

    /// What is known of `peer`, if it is online at another relay.
    pub fn info(&self, peer: &PeerId) -> Option<&PeerInfo> {
        let relay = self.best_home(peer)?;
        Some(&self.relays.get(&relay)?.peers.get(peer)?.info)
    }

    /// Every peer online at another relay.
    pub fn all(&self) -> impl Iterator<Item = &PeerInfo> {
        self.homes.keys().filter_map(|p| self.info(p))
    }

    /// The relay where `peer` registered last.
    fn best_home(&self, peer: &PeerId) -> Option<PeerId> {
        let homes = self.homes.get(peer)?;
        homes
            .iter()
            .filter_map(|r| {
                let since = self.relays.get(r)?.peers.get(peer)?.info.online_since_ms;
                Some((since, *r))
            })
            .max()
            .map(|(_, r)| r)
    }

    /// A (not leaving) heartbeat from another relay arrived at `now`.
    pub fn heartbeat(&mut self, now: Instant, hb: &Heartbeat) {
        if hb.relay == self.me || hb.leaving {
            return;
        }
        if !self.relays.contains_key(&hb.relay) && self.relays.len() >= MAX_MEMBERS {
            return;
        }
        let view = (self.relays)
            .entry(hb.relay)
            .or_insert_with(|| RelayView::new(hb.epoch));
        view.hop = hb.hop;
        if view.epoch != hb.epoch {
            // It restarted: its numbering starts again. What we hold of it stays until its
            // snapshot replaces it (peers that came back at once do not flap).
            view.epoch = hb.epoch;
            view.applied = None;
            view.announced = 0;
            view.pending.clear();
            view.incoming = None;
            view.asked = None;
        }
        // Behind what it announced a heartbeat ago: a change was lost on the way.
        let behind = view.applied.is_none_or(|a| a < view.announced);
        view.announced = hb.seq;
        if behind && may_ask(view, now) {
            ask(
                view,
                &mut self.next_request,
                &mut self.events,
                hb.relay,
                now,
            );
        }
    }

    /// A relay left the cluster (said so, or went silent): its peers are gone with it.
    pub fn relay_gone(&mut self, relay: &PeerId) {
        let Some(ids) =
            (self.relays.get(relay)).map(|v| v.peers.keys().copied().collect::<Vec<_>>())
        else {
            return;
        };
        for id in &ids {
            let before = self.best_info(id);
            self.unhome(id, relay);
            self.changed(id, before);
        }
        self.relays.remove(relay);
    }

    /// Another relay's changes arrived.
    pub fn deltas(&mut self, now: Instant, d: Deltas) {
        let relay = d.relay;
        let Some(view) = self.relays.get_mut(&relay) else {
            return; // not a member (yet): its first heartbeat asks for a snapshot
        };
        if d.epoch != view.epoch || d.changes.is_empty() {
            return;
        }
        match view.applied {
            Some(a) if d.last_seq() <= a => {} // seen
            Some(a) if d.first_seq <= a + 1 => {
                self.apply(relay, d);
                self.drain(relay);
            }
            applied => {
                if view.pending.len() >= MAX_PENDING {
                    view.pending.pop_first();
                }
                view.pending.insert(d.first_seq, d);
                // A gap after a snapshot: ask again (before the first one, the heartbeat asks).
                if applied.is_some() && may_ask(view, now) {
                    ask(view, &mut self.next_request, &mut self.events, relay, now);
                }
            }
        }
    }

    /// Part `part` of `parts` of the snapshot another relay sent for our request `request`:
    /// its peers as of its change `seq`. Installed once every part arrived.
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot_part(
        &mut self,
        now: Instant,
        relay: PeerId,
        epoch: u64,
        seq: u64,
        request: u64,
        (part, parts): (u32, u32),
        peers: Vec<RemotePeer>,
    ) {
        let Some(view) = self.relays.get_mut(&relay) else {
            return;
        };
        let Some(asked) = &mut view.asked else {
            return; // not asked for
        };
        if asked.request != request || epoch != view.epoch || parts == 0 || parts > MAX_PARTS {
            return; // an older request's, or an older epoch's, or broken
        }
        if part >= parts {
            return;
        }
        asked.at = now;
        let incoming = match &mut view.incoming {
            Some(i) if i.seq == seq && i.got.len() == parts as usize => i,
            slot => slot.insert(Incoming {
                seq,
                got: vec![false; parts as usize],
                received: 0,
                peers: HashMap::new(),
            }),
        };
        if std::mem::replace(&mut incoming.got[part as usize], true) {
            return; // seen
        }
        incoming.received += 1;
        for p in peers {
            if incoming.peers.len() >= MAX_PEERS_PER_RELAY {
                break;
            }
            incoming.peers.insert(p.info.id, p);
        }
        if incoming.received < parts {
            return;
        }
        view.asked = None;
        if view.applied.is_some_and(|a| a >= seq) {
            view.incoming = None;
            return; // older than what we hold
        }
        let Some(Incoming {
            seq, peers: new, ..
        }) = view.incoming.take()
        else {
            return;
        };
        view.applied = Some(seq);
        let gone: Vec<PeerId> = (view.peers.keys())
            .filter(|id| !new.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            let before = self.best_info(&id);
            self.unhome(&id, &relay);
            self.changed(&id, before);
        }
        for (id, p) in new {
            let before = self.best_info(&id);
            self.home(relay, p);
            self.changed(&id, before);
        }
        self.drain(relay);
    }

    /// Applies the changes of `d` not applied yet (`d` starts at most one after the last).
    fn apply(&mut self, relay: PeerId, d: Deltas) {
        let Some(applied) = self.relays.get(&relay).and_then(|v| v.applied) else {
            return;
        };
        let skip = (applied + 1).saturating_sub(d.first_seq) as usize;
        let last = d.last_seq();
        for change in d.changes.into_iter().skip(skip) {
            let id = match &change {
                Change::Joined(p) => p.info.id,
                Change::Updated(info) => info.id,
                Change::Left(id) => *id,
            };
            let before = self.best_info(&id);
            match change {
                Change::Joined(p) => self.home(relay, p),
                Change::Updated(info) => {
                    if let Some(p) =
                        (self.relays.get_mut(&relay)).and_then(|v| v.peers.get_mut(&id))
                    {
                        p.info = info;
                    }
                }
                Change::Left(id) => self.unhome(&id, &relay),
            }
            self.changed(&id, before);
        }
        if let Some(v) = self.relays.get_mut(&relay) {
            v.applied = Some(last);
        }
    }

    /// Applies the pending changes that now follow on.
    fn drain(&mut self, relay: PeerId) {
        loop {
            let Some(view) = self.relays.get_mut(&relay) else {
                return;
            };
            let Some(applied) = view.applied else { return };
            // Whatever is already covered goes.
            while let Some(e) = view.pending.first_entry() {
                if e.get().last_seq() > applied {
                    break;
                }
                e.remove();
            }
            let next = match view.pending.first_entry() {
                Some(e) if e.get().first_seq <= applied + 1 => e.remove(),
                _ => return,
            };
            self.apply(relay, next);
        }
    }

    /// Records `p` as registered with `relay`.
    fn home(&mut self, relay: PeerId, p: RemotePeer) {
        let id = p.info.id;
        let Some(view) = self.relays.get_mut(&relay) else {
            return;
        };
        if !view.peers.contains_key(&id) && view.peers.len() >= MAX_PEERS_PER_RELAY {
            return;
        }
        view.peers.insert(id, p);
        let homes = self.homes.entry(id).or_default();
        if !homes.contains(&relay) {
            homes.push(relay);
        }
    }

    /// Forgets that `id` is registered with `relay`.
    fn unhome(&mut self, id: &PeerId, relay: &PeerId) {
        if let Some(v) = self.relays.get_mut(relay) {
            v.peers.remove(id);
        }
        if let Some(homes) = self.homes.get_mut(id) {
            homes.retain(|r| r != relay);
            if homes.is_empty() {
                self.homes.remove(id);
            }
        }
    }

    fn best_info(&self, id: &PeerId) -> Option<PeerInfo> {
        self.info(id).cloned()
    }

    /// Tells what changed for `id`, given what was known before.
    fn changed(&mut self, id: &PeerId, before: Option<PeerInfo>) {
        let after = self.best_info(id);
        let event = match (before, after) {
            (None, Some(a)) => DirectoryEvent::Joined(a),
            (Some(_), None) => DirectoryEvent::Left(*id),
            (Some(b), Some(a)) if a != b => DirectoryEvent::Updated(a),
            _ => return,
        };
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn peer(n: u8, name: &str, since: u64) -> RemotePeer {
        RemotePeer {
            info: PeerInfo {
                id: id(n),
                name: name.into(),
                online_since_ms: since,
            },
            route: u64::from(n) * 1000 + since,
        }
    }

    fn hb(relay: u8, epoch: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            relay: id(relay),
            region: String::new(),
            public_addr: String::new(),
            peers: 0,
            leaving: false,
            epoch,
            seq,
            hop: Some(Hop {
                addr: SocketAddr::from(([192, 0, 2, relay], 7700)),
                token: [relay; 8],
            }),
        }
    }

    fn deltas(relay: u8, epoch: u64, first_seq: u64, changes: Vec<Change>) -> Deltas {
        Deltas {
            relay: id(relay),
            epoch,
            first_seq,
            changes,
        }
    }

    fn events(d: &mut Directory) -> Vec<DirectoryEvent> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    /// The relays asked for a snapshot among `events`.
    fn asked(events: &[DirectoryEvent]) -> Vec<PeerId> {
        (events.iter())
            .filter_map(|e| match e {
                DirectoryEvent::RequestSnapshot { relay, .. } => Some(*relay),
                _ => None,
            })
            .collect()
    }

    /// A whole snapshot from `relay` answering the directory's last request, in one part.
    fn snapshot(d: &mut Directory, relay: u8, epoch: u64, seq: u64, peers: Vec<RemotePeer>) {
        let request = d.next_request;
        d.snapshot_part(
            Instant::now(),
            id(relay),
            epoch,
            seq,
            request,
            (0, 1),
            peers,
        );
    }

    #[test]
    fn a_new_relay_is_asked_for_a_snapshot_then_followed_change_by_change() {
        let t0 = Instant::now();
        let mut d = Directory::new(id(1));
        d.heartbeat(t0, &hb(1, 1, 0));
        assert!(events(&mut d).is_empty(), "our own heartbeat");
        d.heartbeat(t0, &hb(2, 9, 4));
        assert_eq!(asked(&events(&mut d)), vec![id(2)]);
        // A change that arrives before the snapshot waits for it.
        d.deltas(
            t0,
            deltas(2, 9, 5, vec![Change::Joined(peer(12, "carol", 5))]),
        );
        assert!(events(&mut d).is_empty() && d.is_empty());
        let req = d.next_request;
        // Parts of another request are not ours; a part seen twice counts once.
        d.snapshot_part(t0, id(2), 9, 4, req + 7, (0, 2), vec![peer(13, "x", 1)]);
        d.snapshot_part(t0, id(2), 9, 4, req, (1, 2), vec![peer(10, "alice", 1)]);
        d.snapshot_part(t0, id(2), 9, 4, req, (1, 2), vec![peer(10, "alice", 1)]);
        assert!(d.is_empty(), "not installed before every part arrived");
        d.snapshot_part(t0, id(2), 9, 4, req, (0, 2), vec![peer(11, "bob", 2)]);
        let mut got = events(&mut d);
        got.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(d.synced(&id(2)) && d.len() == 3);
        let at = d.locate(&id(12)).unwrap();
        assert_eq!((at.relay, at.route), (id(2), 12 * 1000 + 5));
        assert_eq!(at.hop.unwrap().token, [2; 8]);
        // In order: applied at once; seen again: ignored.
        let rename = PeerInfo {
            name: "bobby".into(),
            ..peer(11, "", 2).info
        };
        d.deltas(
            t0,
            deltas(
                2,
                9,
                6,
                vec![Change::Updated(rename.clone()), Change::Left(id(10))],
            ),
        );
        d.deltas(
            t0,
            deltas(
                2,
                9,
                6,
                vec![Change::Updated(rename.clone()), Change::Left(id(10))],
            ),
        );
        assert_eq!(
            events(&mut d),
            vec![
                DirectoryEvent::Updated(rename),
                DirectoryEvent::Left(id(10))
            ]
        );
        assert!(d.locate(&id(10)).is_none());
        // Another epoch's stragglers are ignored.
        d.deltas(t0, deltas(2, 8, 8, vec![Change::Left(id(11))]));
        assert!(events(&mut d).is_empty() && d.len() == 2);
    }

    #[test]
    fn a_lost_change_is_found_by_its_gap_or_by_the_heartbeat_and_a_snapshot_mends_it() {
        let t0 = Instant::now();
        let mut d = Directory::new(id(1));
        d.heartbeat(t0, &hb(2, 1, 0));
        snapshot(&mut d, 2, 1, 0, Vec::new());
        events(&mut d);
        // Change 1 lost, change 2 arrives: a gap.
        d.deltas(t0, deltas(2, 1, 2, vec![Change::Joined(peer(11, "b", 2))]));
        assert_eq!(asked(&events(&mut d)), vec![id(2)]);
        // Asked once per SNAPSHOT_RETRY, however many gaps.
        d.deltas(t0, deltas(2, 1, 3, vec![Change::Joined(peer(12, "c", 3))]));
        assert!(events(&mut d).is_empty());
        // The snapshot is as of change 2; change 3 waited and follows it.
        snapshot(&mut d, 2, 1, 2, vec![peer(10, "a", 1), peer(11, "b", 2)]);
        assert_eq!(d.len(), 3);
        assert_eq!(events(&mut d).len(), 3);

        // The last change of a burst is lost: no gap shows, the heartbeats tell.
        let t1 = t0 + SNAPSHOT_RETRY;
        d.heartbeat(t1, &hb(2, 1, 4)); // change 4 was published but never arrived
        assert!(events(&mut d).is_empty(), "it may still be on its way");
        d.heartbeat(t1 + HEARTBEAT, &hb(2, 1, 4));
        assert_eq!(asked(&events(&mut d)), vec![id(2)]);
        // The snapshot replaces by difference: only real changes come out.
        snapshot(&mut d, 2, 1, 4, vec![peer(10, "a", 1), peer(11, "b", 2)]);
        assert_eq!(events(&mut d), vec![DirectoryEvent::Left(id(12))]);
    }

    const HEARTBEAT: Duration = Duration::from_secs(1);

    #[test]
    fn a_peer_on_two_relays_is_online_until_both_let_it_go_and_the_newest_is_where_it_is() {
        let t0 = Instant::now();
        let mut d = Directory::new(id(1));
        for r in [2, 3] {
            d.heartbeat(t0, &hb(r, 1, 0));
            snapshot(&mut d, r, 1, 0, Vec::new());
        }
        events(&mut d);
        d.deltas(
            t0,
            deltas(2, 1, 1, vec![Change::Joined(peer(10, "a", 100))]),
        );
        // It moved: it registered with relay 3 later.
        d.deltas(
            t0,
            deltas(3, 1, 1, vec![Change::Joined(peer(10, "a", 200))]),
        );
        let got = events(&mut d);
        assert!(
            matches!(&got[..], [DirectoryEvent::Joined(_), DirectoryEvent::Updated(i)] if i.online_since_ms == 200)
        );
        assert_eq!(d.locate(&id(10)).unwrap().relay, id(3));
        d.deltas(t0, deltas(2, 1, 2, vec![Change::Left(id(10))]));
        assert!(events(&mut d).is_empty(), "still online at relay 3");
        assert_eq!(d.locate(&id(10)).unwrap().relay, id(3));
        // Relay 3 goes away: its peers with it.
        d.relay_gone(&id(3));
        assert_eq!(events(&mut d), vec![DirectoryEvent::Left(id(10))]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_restarted_relay_is_resynchronised_without_flapping_its_returning_peers() {
        let t0 = Instant::now();
        let mut d = Directory::new(id(1));
        d.heartbeat(t0, &hb(2, 1, 0));
        snapshot(&mut d, 2, 1, 0, vec![peer(10, "a", 1), peer(11, "b", 1)]);
        events(&mut d);
        // A new epoch: asked at once.
        d.heartbeat(t0 + HEARTBEAT, &hb(2, 2, 0));
        assert_eq!(asked(&events(&mut d)), vec![id(2)]);
        assert!(!d.synced(&id(2)));
        // Peer 10 came back (a new session: new route), 11 did not.
        snapshot(&mut d, 2, 2, 1, vec![peer(10, "a", 1)]);
        assert_eq!(events(&mut d), vec![DirectoryEvent::Left(id(11))]);
        assert_eq!(d.locate(&id(10)).unwrap().route, 10_001);
    }

    #[test]
    fn what_strangers_send_is_ignored_and_what_is_kept_is_bounded() {
        let t0 = Instant::now();
        let mut d = Directory::new(id(1));
        d.deltas(t0, deltas(5, 1, 1, vec![Change::Joined(peer(10, "x", 1))]));
        d.snapshot_part(t0, id(5), 1, 1, 1, (0, 1), vec![peer(11, "y", 1)]);
        assert!(d.is_empty(), "relay 5 never sent a heartbeat");
        d.heartbeat(t0, &hb(2, 1, 0));
        for i in 0..(MAX_PENDING as u64 + 40) {
            d.deltas(t0, deltas(2, 1, 10 + i, vec![Change::Left(id(9))]));
        }
        assert_eq!(d.relays[&id(2)].pending.len(), MAX_PENDING);
    }

    /// A relay's peers as the relay itself holds them, and the changes it publishes.
    #[derive(Default)]
    struct Source {
        seq: u64,
        peers: HashMap<PeerId, RemotePeer>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Rename(u8),
        Leave(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..20).prop_map(Op::Join),
            (0u8..20).prop_map(Op::Rename),
            (0u8..20).prop_map(Op::Leave),
        ]
    }

    proptest! {
        /// Whatever is lost, duplicated or reordered on the way, once heartbeats flow the
        /// directory holds exactly the peers the other relay holds.
        #[test]
        fn the_directory_converges_to_the_relays_peers(
            ops in proptest::collection::vec((op(), 0u8..10), 1..120),
        ) {
            let mut t = Instant::now();
            let mut src = Source::default();
            let mut d = Directory::new(id(1));
            let mut held_back: Vec<Deltas> = Vec::new();
            d.heartbeat(t, &hb(2, 7, 0));
            for (op, fate) in ops {
                let change = match op {
                    Op::Join(n) => {
                        let p = peer(n, "p", src.seq);
                        src.peers.insert(p.info.id, p.clone());
                        Change::Joined(p)
                    }
                    Op::Rename(n) => match src.peers.get_mut(&id(n)) {
                        Some(p) => {
                            p.info.name.push('x');
                            Change::Updated(p.info.clone())
                        }
                        None => continue,
                    },
                    Op::Leave(n) => match src.peers.remove(&id(n)) {
                        Some(_) => Change::Left(id(n)),
                        None => continue,
                    },
                };
                src.seq += 1;
                let msg = deltas(2, 7, src.seq, vec![change]);
                match fate {
                    0 => {}                                       // lost
                    1 => held_back.push(msg),                     // late
                    2 => { d.deltas(t, msg.clone()); d.deltas(t, msg) } // twice
                    _ => d.deltas(t, msg),
                }
                if fate == 9 {
                    for m in held_back.drain(..).rev() {
                        d.deltas(t, m);
                    }
                }
                t += Duration::from_millis(300);
                if fate >= 5 {
                    d.heartbeat(t, &hb(2, 7, src.seq));
                }
                answer(&mut d, &src);
            }
            for _ in 0..4 {
                t += HEARTBEAT + SNAPSHOT_RETRY;
                d.heartbeat(t, &hb(2, 7, src.seq));
                answer(&mut d, &src);
            }
            let mut want: Vec<_> = src.peers.values().map(|p| p.info.clone()).collect();
            let mut got: Vec<_> = d.all().cloned().collect();
            want.sort_by_key(|i| i.id);
            got.sort_by_key(|i| i.id);
            prop_assert_eq!(got, want);
        }
    }

    /// Answers the directory's snapshot requests from the source, in parts of two.
    fn answer(d: &mut Directory, src: &Source) {
        let mut request = None;
        while let Some(e) = d.poll_event() {
            if let DirectoryEvent::RequestSnapshot { request: r, .. } = e {
                request = Some(r);
            }
        }
        if let Some(request) = request {
            let all: Vec<_> = src.peers.values().cloned().collect();
            let parts: Vec<_> = all.chunks(2).collect();
            let n = parts.len().max(1) as u32;
            // The parts arrive in reverse order.
            for i in (0..n).rev() {
                let p = parts.get(i as usize).map_or_else(Vec::new, |p| p.to_vec());
                d.snapshot_part(Instant::now(), id(2), 7, src.seq, request, (i, n), p);
            }
        }
    }
}
