//! Registered sessions: one per online peer key, reached by key (signals, packets) or by
//! session tag (UDP data path). Registering and leaving are announced to the presence
//! subscribers under the table's write lock, right after the change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use p2pcall_proto::PeerId;
use p2pcall_proto::cluster::{Change, Directory, DirectoryEvent, RelayMsg, RemotePeer};
use p2pcall_proto::limits::TokenBucket;
use p2pcall_proto::relay::server::CloseCause;
use p2pcall_proto::relay::{PeerInfo, RefuseReason, ServerFrame};
use p2pcall_transport::udp::canonical;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::metrics::Metrics;

/// Frames queued toward one peer before presence falls back to a snapshot and signals fail
/// with `QueueFull`.
const OUT_QUEUE: usize = 1024;
/// Bytes queued toward one peer, likewise (a stalled peer holds at most this much; with
/// frames alone as the bound it could hold 1,024 signals of 16 KiB).
pub(crate) const OUT_QUEUE_BYTES: usize = 256 << 10;

/// Changes to our peers waiting to be published to the cluster.
pub(crate) const CHANGES_QUEUE: usize = 65_536;
/// Messages waiting to go to other relays' inboxes.
pub(crate) const INBOX_QUEUE: usize = 8_192;

/// This relay's link to its cluster, as the session table sees it.
#[derive(Debug)]
pub(crate) struct Link {
    /// The last change numbered (within the epoch our heartbeats announce).
    pub(crate) seq: u64,
    /// Numbered changes, to the publisher (in order: queued under the table's write lock).
    pub(crate) changes: mpsc::Sender<(u64, Change)>,
    /// Messages for other relays' inboxes.
    pub(crate) inbox: mpsc::Sender<(PeerId, RelayMsg)>,
    /// What packets from other relays must carry.
    pub(crate) hop_token: [u8; 8],
    /// The relays of the cluster, this one first (what clients are told).
    pub(crate) relays: Vec<p2pcall_proto::relay::RelayEntry>,
}

/// Where a peer is reached from this relay.
#[derive(Debug)]
pub(crate) enum Route<'a> {
    /// Registered here.
    Local(&'a Arc<Session>),
    /// Registered with another relay of the cluster (more recently than here, if here too).
    Remote(p2pcall_proto::cluster::Located),
    /// Online nowhere this relay knows of.
    Nowhere,
}

/// All registered sessions, and the peers of the other relays of the cluster.
#[derive(Debug)]
pub struct Sessions {
    by_id: HashMap<PeerId, Arc<Session>>,
    by_tag: HashMap<[u8; 16], Arc<Session>>,
    by_route: HashMap<u64, Arc<Session>>,
    /// The sessions that asked for presence (a change is told to these, not to every session).
    subscribers: HashMap<PeerId, Arc<Session>>,
    /// Sessions per source IP address.
    per_address: HashMap<IpAddr, usize>,
    /// Most sessions from one address.
    pub(crate) max_per_address: usize,
    /// The other relays' peers (empty for a relay alone).
    pub(crate) remote: Directory,
    /// The cluster, if the relay joined one.
    pub(crate) link: Option<Link>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            by_tag: HashMap::new(),
            by_route: HashMap::new(),
            subscribers: HashMap::new(),
            per_address: HashMap::new(),
            max_per_address: usize::MAX,
            remote: Directory::new(PeerId::from_bytes([0; 32])),
            link: None,
        }
    }
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
    /// Where `peer` is reached: its newest registration, here or at another relay of the
    /// cluster (a peer that moved may still hold a session here until it times out).
    pub(crate) fn route(&self, peer: &PeerId) -> Route<'_> {
        match (self.by_id.get(peer), self.remote.locate(peer)) {
            (Some(l), Some(at)) if at.online_since_ms > l.since_ms => Route::Remote(at),
            (Some(l), _) => Route::Local(l),
            (None, Some(at)) => Route::Remote(at),
            (None, None) => Route::Nowhere,
        }
    }

    /// Session of a route number (named by packets from other relays).
    pub(crate) fn by_route(&self, route: u64) -> Option<&Arc<Session>> {
        self.by_route.get(&route)
    }
    /// The token packets from other relays must carry (none outside a cluster).
    pub(crate) fn hop_token(&self) -> Option<&[u8; 8]> {
        self.link.as_ref().map(|l| &l.hop_token)
    }
    /// Number of sessions.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
    /// Every session.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_id.values().cloned().collect()
    }
    /// Every peer online in the cluster: ours, then the other relays' that are not ours.
    pub(crate) fn snapshot(&self) -> Vec<PeerInfo> {
        let mut all: Vec<PeerInfo> = self.by_id.values().map(|s| s.info()).collect();
        all.extend(
            (self.remote.all())
                .filter(|p| !self.by_id.contains_key(&p.id))
                .cloned(),
        );
        all
    }

    /// Our peers as the cluster sees them, and the last change that snapshot includes.
    pub(crate) fn cluster_snapshot(&self) -> (u64, Vec<RemotePeer>) {
        let seq = self.link.as_ref().map_or(0, |l| l.seq);
        let peers = (self.by_id.values())
            .map(|s| RemotePeer {
                info: s.info(),
                route: s.route,
            })
            .collect();
        (seq, peers)
    }

    /// The relays of the cluster to tell a client, if the relay is in one.
    pub(crate) fn relays_frame(&self) -> Option<ServerFrame> {
        let list = &self.link.as_ref()?.relays;
        (!list.is_empty()).then(|| ServerFrame::Relays(list.clone()))
    }

    /// Numbers a change to our peers and hands it to the cluster's publisher. One that does
    /// not fit still takes its number: the others see the gap and ask for a snapshot.
    pub(crate) fn publish(&mut self, change: Change) {
        if let Some(link) = &mut self.link {
            link.seq += 1;
            let _ = link.changes.try_send((link.seq, change));
        }
    }

    /// Passes on what the directory found (changes of other relays' peers go to our presence
    /// subscribers unless the peer is also ours: ours speaks for it) and returns the
    /// snapshots to ask for (relay, request).
    pub(crate) fn remote_events(&mut self, metrics: &Metrics) -> Vec<(PeerId, u64)> {
        let mut ask = Vec::new();
        while let Some(e) = self.remote.poll_event() {
            let frame = match e {
                DirectoryEvent::RequestSnapshot { relay, request } => {
                    ask.push((relay, request));
                    continue;
                }
                DirectoryEvent::Joined(p) if !self.by_id.contains_key(&p.id) => {
                    ServerFrame::Joined(p)
                }
                DirectoryEvent::Updated(p) if !self.by_id.contains_key(&p.id) => {
                    ServerFrame::Updated(p)
                }
                DirectoryEvent::Left(id) if !self.by_id.contains_key(&id) => ServerFrame::Left(id),
                _ => continue,
            };
            self.broadcast(metrics, &frame, None);
        }
        metrics
            .cluster_peers
            .store(self.remote.len() as u64, Ordering::Relaxed);
        ask
    }

    /// Queues `frame` to every presence subscriber but `except` (the peer it is about, if it
    /// is ours). Called with the write lock held, right after the change it reports.
    pub(crate) fn broadcast(
        &self,
        metrics: &Metrics,
        frame: &ServerFrame,
        except: Option<&PeerId>,
    ) {
        for s in self.subscribers.values() {
            if Some(&s.id) == except {
                continue;
            }
            if s.try_queue(frame.clone()) {
                metrics.presence_events.fetch_add(1, Ordering::Relaxed);
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
    pub(crate) tag: [u8; 16],
    /// What other relays of the cluster call this session in their packets.
    pub(crate) route: u64,
    pub(crate) name: Mutex<String>,
    since_ms: u64,
    presence: bool,
    /// The IP address the session comes from (counted per address).
    source: IpAddr,
    udp: Option<UdpBinding>,
    out: mpsc::Sender<ServerFrame>,
    /// Bytes of the frames in `out` (at most [`OUT_QUEUE_BYTES`]).
    queued: std::sync::atomic::AtomicUsize,
    pub(crate) resync: AtomicBool,
    pub(crate) wake: Notify,
    data_limits: Mutex<(TokenBucket, TokenBucket)>,
    pub(crate) close: CancellationToken,
    pub(crate) close_reason: Mutex<Option<(RefuseReason, String)>>,
}

impl Session {
    pub(crate) fn info(&self) -> PeerInfo {
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

    /// Queues a frame; false if the queue is full (in frames or in bytes).
    pub fn try_queue(&self, f: ServerFrame) -> bool {
        let len = f.encoded_len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > OUT_QUEUE_BYTES || self.out.try_send(f).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The writer took `f` off the queue.
    pub(crate) fn dequeued(&self, f: &ServerFrame) {
        self.queued.fetch_sub(f.encoded_len(), Ordering::AcqRel);
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
    /// A new session (not yet in the table) and the receiving end of its queue; it closes
    /// when `parent` is cancelled.
    pub(crate) fn new(
        cfg: &RelayConfig,
        parent: &CancellationToken,
        id: PeerId,
        login: Login,
        udp: Option<quinn::Connection>,
        now: Instant,
    ) -> (Arc<Self>, mpsc::Receiver<ServerFrame>) {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let session = Arc::new(Self {
            id,
            tag: rand::random(),
            route: rand::random(),
            name: Mutex::new(login.name),
            since_ms: unix_ms(),
            presence: login.presence,
            source: canonical(SocketAddr::new(login.source, 0)).ip(),
            queued: std::sync::atomic::AtomicUsize::new(0),
            udp: udp.map(|conn| UdpBinding {
                addr: Mutex::new(canonical(conn.remote_address())),
                conn,
            }),
            out,
            resync: AtomicBool::new(login.presence),
            wake: Notify::new(),
            data_limits: Mutex::new((
                TokenBucket::new(now, cfg.packet_rate, cfg.packet_rate.max(1.0) / 10.0 + 64.0),
                TokenBucket::new(now, cfg.byte_rate, cfg.byte_rate / 10.0 + 65536.0),
            )),
            close: parent.child_token(),
            close_reason: Mutex::new(None),
        });
        (session, out_rx)
    }
}

/// What a session said when it logged in, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    /// Display name.
    pub(crate) name: String,
    /// It wants presence.
    pub(crate) presence: bool,
    /// Its source IP address.
    pub(crate) source: IpAddr,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a registration was refused.
pub(crate) type Refusal = (RefuseReason, &'static str, CloseCause);

impl Sessions {
    /// Adds a session, replacing an older login with the same key; refused when `max_peers`
    /// are online. Joiners are announced to the presence subscribers.
    pub(crate) fn register(
        &mut self,
        session: &Arc<Session>,
        max_peers: usize,
        metrics: &Metrics,
    ) -> Result<(), Refusal> {
        let replacing = self.by_id.get(&session.id).map(|o| o.source);
        if replacing.is_none() && self.by_id.len() >= max_peers {
            return Err((
                RefuseReason::ServerFull,
                "too many peers online",
                CloseCause::ServerFull,
            ));
        }
        let from_here = self.per_address.get(&session.source).copied().unwrap_or(0);
        if replacing != Some(session.source) && from_here >= self.max_per_address {
            return Err((
                RefuseReason::ServerFull,
                "too many sessions from your address",
                CloseCause::ServerFull,
            ));
        }
        *self.per_address.entry(session.source).or_default() += 1;
        if let Some(old) = self.by_id.insert(session.id, session.clone()) {
            self.left_address(old.source);
            self.by_tag.remove(&old.tag);
            self.by_route.remove(&old.route);
            self.subscribers.remove(&old.id);
            old.end(
                RefuseReason::Replaced,
                "a newer login with this key replaced this session",
            );
            metrics.close(CloseCause::Replaced);
        }
        self.by_tag.insert(session.tag, session.clone());
        self.by_route.insert(session.route, session.clone());
        if session.presence {
            self.subscribers.insert(session.id, session.clone());
        }
        metrics
            .peers_online
            .store(self.len() as u64, Ordering::Relaxed);
        let info = session.info();
        self.publish(Change::Joined(RemotePeer {
            info: info.clone(),
            route: session.route,
        }));
        // Online at another relay already (it is moving here): not news, only its details.
        let frame = if self.remote.info(&session.id).is_some() {
            ServerFrame::Updated(info)
        } else {
            ServerFrame::Joined(info)
        };
        self.broadcast(metrics, &frame, Some(&session.id));
        Ok(())
    }

    fn left_address(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
    }

    /// Removes a session unless a newer login already took its place.
    pub(crate) fn unregister(&mut self, session: &Arc<Session>, metrics: &Metrics) {
        if self
            .by_id
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            self.by_id.remove(&session.id);
            self.by_tag.remove(&session.tag);
            self.by_route.remove(&session.route);
            self.subscribers.remove(&session.id);
            self.left_address(session.source);
            metrics
                .peers_online
                .store(self.len() as u64, Ordering::Relaxed);
            self.publish(Change::Left(session.id));
            // Still online at another relay (it moved there): only its details change.
            let frame = match self.remote.info(&session.id) {
                Some(elsewhere) => ServerFrame::Updated(elsewhere.clone()),
                None => ServerFrame::Left(session.id),
            };
            self.broadcast(metrics, &frame, Some(&session.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    fn cfg() -> RelayConfig {
        RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 32])
    }

    fn login(n: usize) -> Login {
        Login {
            name: String::new(),
            presence: false,
            source: IpAddr::from((n as u32).to_be_bytes()),
        }
    }

    fn numbered(n: u64) -> PeerId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        PeerId::from_bytes(b)
    }

    fn session(
        root: &CancellationToken,
        n: u8,
        presence: bool,
    ) -> (Arc<Session>, mpsc::Receiver<ServerFrame>) {
        let now = Instant::now();
        let login = Login {
            name: format!("p{n}"),
            presence,
            source: IpAddr::from([192, 0, 2, n]),
        };
        Session::new(&cfg(), root, peer(n), login, None, now)
    }

    #[test]
    fn joining_and_leaving_are_announced_to_the_other_presence_subscribers_only() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        let (a, mut a_rx) = session(&root, 1, true);
        let (b, mut b_rx) = session(&root, 2, false);
        t.register(&a, 10, &m).unwrap();
        t.register(&b, 10, &m).unwrap();
        assert!(matches!(a_rx.try_recv(), Ok(ServerFrame::Joined(p)) if p.id == peer(2)));
        assert!(a_rx.try_recv().is_err(), "nobody hears of their own login");
        assert!(b_rx.try_recv().is_err(), "b did not ask for presence");
        assert_eq!(m.peers_online.load(Relaxed), 2);
        assert_eq!(m.presence_events.load(Relaxed), 1);
        assert!(t.by_tag(&b.tag).is_some_and(|s| s.id == peer(2)));
        assert_eq!(t.snapshot().len(), 2);

        t.unregister(&b, &m);
        assert!(matches!(a_rx.try_recv(), Ok(ServerFrame::Left(id)) if id == peer(2)));
        assert!(t.by_id(&peer(2)).is_none() && t.by_tag(&b.tag).is_none());
        assert_eq!(m.peers_online.load(Relaxed), 1);
    }

    /// A directory in which relay 9 holds `peer` registered at `since_ms`, route 5.
    fn elsewhere(peer_id: PeerId, since_ms: u64) -> Directory {
        use p2pcall_proto::cluster::{Heartbeat, Hop};
        let now = Instant::now();
        let mut d = Directory::new(peer(7));
        d.heartbeat(
            now,
            &Heartbeat {
                relay: peer(9),
                region: String::new(),
                public_addr: String::new(),
                peers: 1,
                leaving: false,
                epoch: 1,
                seq: 0,
                hop: Some(Hop {
                    addr: SocketAddr::from(([192, 0, 2, 9], 7700)),
                    token: [9; 8],
                }),
            },
        );
        let info = PeerInfo {
            id: peer_id,
            name: "moved".into(),
            online_since_ms: since_ms,
        };
        let remote = vec![RemotePeer { info, route: 5 }];
        d.snapshot_part(now, peer(9), 1, 0, 1, (0, 1), remote);
        d
    }

    #[test]
    fn a_peer_is_routed_to_its_newest_registration_here_or_at_another_relay() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        let (s, _rx) = session(&root, 1, false);
        t.register(&s, 10, &m).unwrap();
        assert!(matches!(t.route(&peer(1)), Route::Local(_)));
        assert!(matches!(t.route(&peer(2)), Route::Nowhere));
        // It registered at relay 9 since (it moved; its session here has not timed out yet).
        t.remote = elsewhere(peer(1), s.since_ms + 1000);
        assert!(
            matches!(t.route(&peer(1)), Route::Remote(at) if at.route == 5 && at.relay == peer(9))
        );
        // An older registration elsewhere: the one here is where it is.
        t.remote = elsewhere(peer(1), s.since_ms.saturating_sub(1000));
        assert!(matches!(t.route(&peer(1)), Route::Local(_)));
        // Only elsewhere.
        t.remote = elsewhere(peer(3), 1);
        assert!(matches!(t.route(&peer(3)), Route::Remote(_)));
    }

    #[test]
    fn a_second_login_replaces_the_first_which_is_told_why() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        let (old, _old_rx) = session(&root, 1, false);
        let (new, _new_rx) = session(&root, 1, false);
        t.register(&old, 10, &m).unwrap();
        t.register(&new, 10, &m).unwrap();
        assert!(old.close.is_cancelled() && !new.close.is_cancelled());
        let why = old.close_reason.lock().as_ref().map(|r| r.0);
        assert_eq!(why, Some(RefuseReason::Replaced));
        assert!(t.by_id(&peer(1)).is_some_and(|s| Arc::ptr_eq(s, &new)));
        assert!(t.by_tag(&old.tag).is_none());
        assert_eq!(m.closes(CloseCause::Replaced), 1);
        // The replaced session ending later does not take its successor with it.
        t.unregister(&old, &m);
        assert!(t.by_id(&peer(1)).is_some_and(|s| Arc::ptr_eq(s, &new)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_relay_refuses_newcomers_but_takes_a_returning_key() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        for n in [1, 2] {
            t.register(&session(&root, n, false).0, 2, &m).unwrap();
        }
        let refused = t.register(&session(&root, 3, false).0, 2, &m);
        assert!(matches!(
            refused,
            Err((RefuseReason::ServerFull, _, CloseCause::ServerFull))
        ));
        assert!(t.by_id(&peer(3)).is_none());
        t.register(&session(&root, 1, false).0, 2, &m).unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn sessions_per_address_are_capped_and_a_returning_key_keeps_its_slot() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        t.max_per_address = 2;
        let at = |n: u8, ip: [u8; 4]| {
            let login = Login {
                name: String::new(),
                presence: false,
                source: IpAddr::from(ip),
            };
            Session::new(&cfg(), &root, peer(n), login, None, Instant::now()).0
        };
        let home = [198, 51, 100, 1];
        t.register(&at(1, home), 100, &m).unwrap();
        let second = at(2, home);
        t.register(&second, 100, &m).unwrap();
        let refused = t.register(&at(3, home), 100, &m);
        assert!(
            matches!(refused, Err((RefuseReason::ServerFull, why, _)) if why.contains("address"))
        );
        // Elsewhere, fine; the same key logging in again from home keeps its slot.
        t.register(&at(3, [203, 0, 113, 5]), 100, &m).unwrap();
        t.register(&at(1, home), 100, &m).unwrap();
        // A key moving home from elsewhere needs a free slot there.
        assert!(t.register(&at(3, home), 100, &m).is_err());
        t.unregister(&second, &m);
        t.register(&at(3, home), 100, &m).unwrap();
        assert_eq!(t.per_address.get(&IpAddr::from(home)), Some(&2));
        assert_eq!(t.per_address.len(), 1, "the other address is forgotten");
    }

    #[test]
    fn a_stalled_peer_holds_a_bounded_number_of_bytes() {
        let root = CancellationToken::new();
        let (s, mut rx) = session(&root, 1, false);
        let big = ServerFrame::Signal {
            from: peer(2),
            payload: bytes::Bytes::from(vec![0u8; p2pcall_proto::relay::MAX_SIGNAL]),
        };
        let fit = (0..1000).take_while(|_| s.try_queue(big.clone())).count();
        // 16 KiB signals: about 256 KiB, not the 1,024 frames (16 MiB) the count allows.
        assert_eq!(fit, OUT_QUEUE_BYTES / big.encoded_len());
        assert!(!s.try_queue(big.clone()));
        // The writer takes one off: room for one more.
        let f = rx.try_recv().unwrap();
        s.dequeued(&f);
        assert!(s.try_queue(big.clone()));
        assert!(!s.try_queue(big));
        assert!(s.queued.load(Relaxed) <= OUT_QUEUE_BYTES);
    }

    #[test]
    fn a_subscriber_whose_queue_is_full_gets_a_snapshot_instead() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        let (a, _a_rx) = session(&root, 0, true);
        t.register(&a, usize::MAX, &m).unwrap();
        // Its first snapshot was sent: only incremental events from here on.
        a.resync.store(false, Relaxed);
        let mut keep = Vec::new();
        for i in 0..=OUT_QUEUE {
            let (s, rx) = Session::new(
                &cfg(),
                &root,
                numbered(i as u64 + 1),
                login(i),
                None,
                Instant::now(),
            );
            t.register(&s, usize::MAX, &m).unwrap();
            keep.push((s, rx));
        }
        assert_eq!(m.presence_events.load(Relaxed), OUT_QUEUE as u64);
        assert!(
            a.resync.load(Relaxed),
            "the event that did not fit asks for a resync"
        );
    }

    #[test]
    fn relayed_data_is_limited_per_session_on_the_callers_clock() {
        let mut c = cfg();
        c.packet_rate = 100.0;
        let t0 = Instant::now();
        let (s, _rx) = Session::new(&c, &CancellationToken::new(), peer(1), login(1), None, t0);
        // A burst of a tenth of a second's worth plus 64 packets, then the rate.
        let burst = (0..1000).take_while(|_| s.allow_data(t0, 1200)).count();
        assert_eq!(burst, 74);
        assert!(!s.allow_data(t0, 1200));
        let later = t0 + Duration::from_millis(250);
        let refilled = (0..1000).take_while(|_| s.allow_data(later, 1200)).count();
        assert_eq!(refilled, 25);
    }

    #[test]
    fn a_session_ends_with_its_first_reason_and_with_the_relay() {
        let root = CancellationToken::new();
        let (s, _rx) = session(&root, 1, false);
        s.end(RefuseReason::RateLimited, "too fast");
        s.end(RefuseReason::Protocol, "later");
        let why = s.close_reason.lock().clone();
        assert_eq!(why, Some((RefuseReason::RateLimited, "too fast".into())));
        let (t, _rx) = session(&root, 2, false);
        root.cancel();
        assert!(
            t.close.is_cancelled(),
            "shutting the relay down ends every session"
        );
    }
}
