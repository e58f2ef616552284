//! Registered sessions: one per online peer key, reached by key (signals, packets) or by
//! session tag (UDP data path). Registering and leaving are announced to the presence
//! subscribers under the table's write lock, right after the change.
//!
//! A session is live (its connection's writer takes its frames) or parked (no connection:
//! its address, tag and presence stay; frames for it wait, bounded, for its next connection,
//! and the parking task wakes it). A peer that comes back while parked continues the same
//! registration: same tag and route, nothing announced unless its name changed, and what
//! waited is delivered first.

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
/// Bytes held for a parked peer (signals, vouches); more fail with `QueueFull`.
const PARKED_BYTES: usize = 32 << 10;
/// Bytes of presence changes held for a parked subscriber; past that it gets a snapshot
/// when it comes back instead.
const PARKED_PRESENCE_BYTES: usize = 4 << 10;

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
    /// The parked sessions (the parking task's round).
    pub(crate) parked: HashMap<PeerId, Arc<Session>>,
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
            parked: HashMap::new(),
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

/// A UDP-capable session's address, and its QUIC connection unless parked.
#[derive(Debug)]
struct UdpBinding {
    addr: Mutex<SocketAddr>,
    conn: Option<quinn::Connection>,
}

/// Where frames for a peer go.
#[derive(Debug)]
enum Outlet {
    /// To its connection's writer.
    Live {
        out: mpsc::Sender<ServerFrame>,
        /// Bytes of the frames in `out` (at most [`OUT_QUEUE_BYTES`]).
        queued: std::sync::atomic::AtomicUsize,
    },
    /// Kept for its next connection.
    Parked(Parked),
}

/// A parked session's state.
#[derive(Debug)]
pub(crate) struct Parked {
    /// What its beacons carry.
    pub(crate) secret: [u8; 16],
    pub(crate) state: Mutex<ParkedState>,
    /// The parking task, told when a frame that cannot wait arrives.
    waker: mpsc::Sender<PeerId>,
}

impl ParkedState {
    /// Parked at `now` (its keep-alive just heard), the first alive beacon at `next_beacon`.
    pub(crate) fn new(now: Instant, next_beacon: Instant) -> Self {
        Self {
            frames: Vec::new(),
            bytes: 0,
            heard: now,
            urgent: false,
            presence: false,
            wake_at: None,
            next_beacon,
        }
    }

    /// A signal or a vouch now waits: a wake already planned for presence changes (up to the
    /// spread away) gives way to one now.
    pub(crate) fn mark_urgent(&mut self) {
        if !self.urgent {
            self.urgent = true;
            self.wake_at = None;
        }
    }
}

/// What a parked session holds and when it is due for what.
#[derive(Debug)]
pub(crate) struct ParkedState {
    frames: Vec<ServerFrame>,
    bytes: usize,
    /// Its last keep-alive.
    pub(crate) heard: Instant,
    /// A signal or a vouch waits: wake it now.
    pub(crate) urgent: bool,
    /// Presence changes wait: wake it within the spread.
    pub(crate) presence: bool,
    /// When to send the next wake beacon (set once a wake is wanted).
    pub(crate) wake_at: Option<Instant>,
    /// When to send the next alive beacon (in a cluster).
    pub(crate) next_beacon: Instant,
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
    outlet: Outlet,
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
    /// address (followed through NAT rebinding), or a parked session's (its keep-alives').
    pub fn udp_source_ok(&self, src: SocketAddr) -> bool {
        let Some(u) = &self.udp else { return false };
        let mut addr = u.addr.lock();
        if *addr == src {
            return true;
        }
        let Some(conn) = &u.conn else { return false };
        let now = canonical(conn.remote_address());
        if now == src {
            *addr = now;
            return true;
        }
        false
    }

    /// Whether the peer asked for presence.
    pub(crate) fn wants_presence(&self) -> bool {
        self.presence
    }

    /// The parked state, if the session is parked.
    pub(crate) fn parked(&self) -> Option<&Parked> {
        match &self.outlet {
            Outlet::Parked(p) => Some(p),
            Outlet::Live { .. } => None,
        }
    }

    /// A parked session's keep-alive came from `src` at `now`: that is its address now.
    pub(crate) fn keep_parked(&self, now: Instant, src: SocketAddr) -> bool {
        let (Some(p), Some(u)) = (self.parked(), &self.udp) else {
            return false;
        };
        p.state.lock().heard = now;
        *u.addr.lock() = src;
        true
    }

    /// Charges one packet of `len` bytes to the sender's data rate.
    pub fn allow_data(&self, now: Instant, len: usize) -> bool {
        let mut l = self.data_limits.lock();
        l.0.take(now, 1.0) && l.1.take(now, len as f64)
    }

    /// Queues a frame (or, parked, holds it for the next connection); false if the queue is
    /// full (in frames or in bytes).
    pub fn try_queue(&self, f: ServerFrame) -> bool {
        let (out, queued) = match &self.outlet {
            Outlet::Live { out, queued } => (out, queued),
            Outlet::Parked(p) => return self.hold(p, f),
        };
        let len = f.encoded_len();
        let before = queued.fetch_add(len, Ordering::AcqRel);
        if before + len > OUT_QUEUE_BYTES || out.try_send(f).is_err() {
            queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Holds a frame for a parked session: presence changes (bounded; past the bound it gets
    /// a snapshot when it comes back) wake it within the parking task's spread, the latest
    /// list of relays waits without waking it, signals and vouches (bounded) wake it now.
    fn hold(&self, p: &Parked, f: ServerFrame) -> bool {
        let len = f.encoded_len();
        let mut st = p.state.lock();
        match f {
            f if is_presence(&f) => {
                if !self.resync.load(Ordering::Acquire) {
                    if st.bytes + len <= PARKED_PRESENCE_BYTES {
                        st.bytes += len;
                        st.frames.push(f);
                    } else {
                        self.resync.store(true, Ordering::Release);
                        st.frames.retain(|f| !is_presence(f));
                        st.bytes = st.frames.iter().map(ServerFrame::encoded_len).sum();
                    }
                }
                st.presence = true;
                true
            }
            ServerFrame::Relays(_) => {
                st.frames.retain(|f| !matches!(f, ServerFrame::Relays(_)));
                st.frames.push(f);
                st.bytes = st.frames.iter().map(ServerFrame::encoded_len).sum();
                true
            }
            // Only a TCP-fallback session takes packets in frames, and it does not park.
            ServerFrame::Data { .. } => false,
            f => {
                if st.bytes + len > PARKED_BYTES {
                    return false;
                }
                st.bytes += len;
                st.frames.push(f);
                st.mark_urgent();
                drop(st);
                let _ = p.waker.try_send(self.id);
                true
            }
        }
    }

    /// Continues the parked session `old` of the same peer: what waited for the peer is
    /// queued (after the welcome), and a subscriber whose presence changes all fitted gets
    /// them instead of a snapshot.
    fn take_over(&self, old: &Session) {
        let Some(p) = old.parked() else { return };
        let frames = std::mem::take(&mut p.state.lock().frames);
        let changes_kept = old.presence && !old.resync.load(Ordering::Acquire);
        if self.presence && changes_kept {
            self.resync.store(false, Ordering::Release);
        }
        for f in frames {
            if is_presence(&f) && self.resync.load(Ordering::Acquire) {
                continue;
            }
            self.try_queue(f);
        }
    }

    /// The writer took `f` off the queue.
    pub(crate) fn dequeued(&self, f: &ServerFrame) {
        if let Outlet::Live { queued, .. } = &self.outlet {
            queued.fetch_sub(f.encoded_len(), Ordering::AcqRel);
        }
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

/// What a peer coming back to its parked session keeps: the same registration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume {
    tag: [u8; 16],
    route: u64,
    since_ms: u64,
}

impl Session {
    /// A new session (not yet in the table) and the receiving end of its queue; it closes
    /// when `parent` is cancelled. `resume`: the peer's parked session, which it continues.
    pub(crate) fn new(
        cfg: &RelayConfig,
        parent: &CancellationToken,
        id: PeerId,
        login: Login,
        udp: Option<quinn::Connection>,
        now: Instant,
        resume: Option<Resume>,
    ) -> (Arc<Self>, mpsc::Receiver<ServerFrame>) {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let session = Arc::new(Self {
            id,
            tag: resume.map_or_else(rand::random, |r| r.tag),
            route: resume.map_or_else(rand::random, |r| r.route),
            name: Mutex::new(login.name),
            since_ms: resume.map_or_else(unix_ms, |r| r.since_ms),
            presence: login.presence,
            source: canonical(SocketAddr::new(login.source, 0)).ip(),
            udp: udp.map(|conn| UdpBinding {
                addr: Mutex::new(canonical(conn.remote_address())),
                conn: Some(conn),
            }),
            outlet: Outlet::Live {
                out,
                queued: std::sync::atomic::AtomicUsize::new(0),
            },
            resync: AtomicBool::new(login.presence),
            wake: Notify::new(),
            data_limits: data_limits(cfg, now),
            close: parent.child_token(),
            close_reason: Mutex::new(None),
        });
        (session, out_rx)
    }

    /// The parked twin of a live UDP session (same registration, no connection); `None` for
    /// a session without UDP.
    pub(crate) fn parked_twin(
        &self,
        cfg: &RelayConfig,
        parent: &CancellationToken,
        waker: mpsc::Sender<PeerId>,
        now: Instant,
    ) -> Option<Arc<Self>> {
        let addr = self.udp_addr()?;
        Some(self.parked_at(addr, cfg, parent, waker, now))
    }

    /// The parked twin, reached at `addr`.
    fn parked_at(
        &self,
        addr: SocketAddr,
        cfg: &RelayConfig,
        parent: &CancellationToken,
        waker: mpsc::Sender<PeerId>,
        now: Instant,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: self.id,
            tag: self.tag,
            route: self.route,
            name: Mutex::new(self.name.lock().clone()),
            since_ms: self.since_ms,
            presence: self.presence,
            source: self.source,
            udp: Some(UdpBinding {
                addr: Mutex::new(addr),
                conn: None,
            }),
            outlet: Outlet::Parked(Parked {
                secret: rand::random(),
                state: Mutex::new(ParkedState::new(now, now + cfg.park_beacon)),
                waker,
            }),
            resync: AtomicBool::new(self.resync.load(Ordering::Acquire)),
            wake: Notify::new(),
            data_limits: data_limits(cfg, now),
            close: parent.child_token(),
            close_reason: Mutex::new(None),
        })
    }

    /// What a peer coming back to this (parked) session continues.
    pub(crate) fn resume(&self) -> Option<Resume> {
        self.parked().map(|_| Resume {
            tag: self.tag,
            route: self.route,
            since_ms: self.since_ms,
        })
    }
}

/// A session's relayed-data budget (packets, bytes): a tenth of a second's worth of burst,
/// then the configured rates.
fn data_limits(cfg: &RelayConfig, now: Instant) -> Mutex<(TokenBucket, TokenBucket)> {
    Mutex::new((
        TokenBucket::new(now, cfg.packet_rate, cfg.packet_rate.max(1.0) / 10.0 + 64.0),
        TokenBucket::new(now, cfg.byte_rate, cfg.byte_rate / 10.0 + 65536.0),
    ))
}

/// Whether `f` reports presence (a snapshot replaces any number of these).
pub(crate) fn is_presence(f: &ServerFrame) -> bool {
    matches!(
        f,
        ServerFrame::Joined(_) | ServerFrame::Left(_) | ServerFrame::Updated(_)
    )
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
        let mut resumed = None;
        if let Some(old) = self.by_id.insert(session.id, session.clone()) {
            self.left_address(old.source);
            self.by_tag.remove(&old.tag);
            self.by_route.remove(&old.route);
            self.subscribers.remove(&old.id);
            if self.parked.remove(&old.id).is_some() {
                metrics.unparks.fetch_add(1, Ordering::Relaxed);
                resumed = Some(old.info());
                session.take_over(&old);
            } else {
                old.end(
                    RefuseReason::Replaced,
                    "a newer login with this key replaced this session",
                );
                metrics.close(CloseCause::Replaced);
            }
        }
        self.by_tag.insert(session.tag, session.clone());
        self.by_route.insert(session.route, session.clone());
        if session.presence {
            self.subscribers.insert(session.id, session.clone());
        }
        self.count(metrics);
        let info = session.info();
        let frame = match resumed {
            // Back from parking: the same registration; news only if its name changed.
            Some(before) if before == info => return Ok(()),
            Some(_) => {
                self.publish(Change::Updated(info.clone()));
                ServerFrame::Updated(info)
            }
            None => {
                self.publish(Change::Joined(RemotePeer {
                    info: info.clone(),
                    route: session.route,
                }));
                // Online at another relay already (it is moving here): only its details.
                if self.remote.info(&session.id).is_some() {
                    ServerFrame::Updated(info)
                } else {
                    ServerFrame::Joined(info)
                }
            }
        };
        self.broadcast(metrics, &frame, Some(&session.id));
        Ok(())
    }

    /// Replaces the live session `live` with its parked twin (unless a newer login already
    /// took its place): the same registration, nothing announced.
    pub(crate) fn park(
        &mut self,
        live: &Arc<Session>,
        twin: Arc<Session>,
        metrics: &Metrics,
    ) -> bool {
        if !self
            .by_id
            .get(&live.id)
            .is_some_and(|s| Arc::ptr_eq(s, live))
        {
            return false;
        }
        self.by_id.insert(twin.id, twin.clone());
        self.by_tag.insert(twin.tag, twin.clone());
        self.by_route.insert(twin.route, twin.clone());
        if twin.presence {
            self.subscribers.insert(twin.id, twin.clone());
        }
        self.parked.insert(twin.id, twin);
        metrics.parks.fetch_add(1, Ordering::Relaxed);
        self.count(metrics);
        true
    }

    fn count(&self, metrics: &Metrics) {
        metrics
            .peers_online
            .store(self.len() as u64, Ordering::Relaxed);
        metrics
            .peers_parked
            .store(self.parked.len() as u64, Ordering::Relaxed);
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
            self.parked.remove(&session.id);
            self.left_address(session.source);
            self.count(metrics);
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
        Session::new(&cfg(), root, peer(n), login, None, now, None)
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
            Session::new(&cfg(), &root, peer(n), login, None, Instant::now(), None).0
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
        let Outlet::Live { queued, .. } = &s.outlet else {
            panic!("live")
        };
        assert!(queued.load(Relaxed) <= OUT_QUEUE_BYTES);
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
                None,
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
        let (s, _rx) = Session::new(
            &c,
            &CancellationToken::new(),
            peer(1),
            login(1),
            None,
            t0,
            None,
        );
        // A burst of a tenth of a second's worth plus 64 packets, then the rate.
        let burst = (0..1000).take_while(|_| s.allow_data(t0, 1200)).count();
        assert_eq!(burst, 74);
        assert!(!s.allow_data(t0, 1200));
        let later = t0 + Duration::from_millis(250);
        let refilled = (0..1000).take_while(|_| s.allow_data(later, 1200)).count();
        assert_eq!(refilled, 25);
    }

    #[test]
    fn a_parked_session_holds_what_waits_and_its_peer_continues_it() {
        let (root, m, mut t) = (
            CancellationToken::new(),
            Metrics::default(),
            Sessions::default(),
        );
        let (sub, mut sub_rx) = session(&root, 1, true);
        let (bob, _bob_rx) = session(&root, 2, false);
        t.register(&sub, 10, &m).unwrap();
        t.register(&bob, 10, &m).unwrap();
        while sub_rx.try_recv().is_ok() {}
        sub.resync.store(false, Relaxed);

        // Alice parks: nothing announced; she is still online, reached by tag and route.
        let (alice, _rx) = session(&root, 3, true);
        t.register(&alice, 10, &m).unwrap();
        while sub_rx.try_recv().is_ok() {}
        alice.resync.store(false, Relaxed);
        let (waker, mut wakes) = mpsc::channel(8);
        let addr = SocketAddr::from(([192, 0, 2, 3], 4000));
        let twin = alice.parked_at(addr, &cfg(), &root, waker, Instant::now());
        assert!(t.park(&alice, twin.clone(), &m));
        assert!(sub_rx.try_recv().is_err(), "parking is not news");
        assert_eq!(t.len(), 3);
        assert!(t.by_tag(&alice.tag).is_some_and(|s| Arc::ptr_eq(s, &twin)));
        assert!(
            t.by_route(alice.route)
                .is_some_and(|s| Arc::ptr_eq(s, &twin))
        );
        assert_eq!(m.peers_parked.load(Relaxed), 1);
        assert!(
            !t.park(&alice, twin.clone(), &m),
            "only the current session parks"
        );

        // A signal waits and wakes her at once; a presence change waits for the round.
        let signal = ServerFrame::Signal {
            from: peer(2),
            payload: bytes::Bytes::from_static(b"hi"),
        };
        assert!(twin.try_queue(signal.clone()));
        assert_eq!(wakes.try_recv().ok(), Some(peer(3)));
        t.unregister(&bob, &m);
        assert!(matches!(sub_rx.try_recv(), Ok(ServerFrame::Left(_))));
        assert!(wakes.try_recv().is_err());
        let st = twin.parked().map(|p| {
            let st = p.state.lock();
            (st.urgent, st.presence)
        });
        assert_eq!(st, Some((true, true)));
        // Signals are bounded (a full hold fails like a full queue).
        let big = ServerFrame::Signal {
            from: peer(2),
            payload: bytes::Bytes::from(vec![0u8; p2pcall_proto::relay::MAX_SIGNAL]),
        };
        let held = (0..10).take_while(|_| twin.try_queue(big.clone())).count();
        assert_eq!(
            held, 1,
            "32 KiB: the small signal, the leave and one 16 KiB signal"
        );

        // She comes back: the same tag, route and since, nothing announced, and what waited
        // arrives in order, the leave instead of a snapshot.
        let resume = t.by_id(&peer(3)).and_then(|s| s.resume());
        assert!(resume.is_some());
        let login = Login {
            name: "p3".into(),
            presence: true,
            source: IpAddr::from([192, 0, 2, 3]),
        };
        let (back, mut back_rx) =
            Session::new(&cfg(), &root, peer(3), login, None, Instant::now(), resume);
        assert_eq!(
            (back.tag, back.route, back.since_ms),
            (alice.tag, alice.route, alice.since_ms)
        );
        t.register(&back, 10, &m).unwrap();
        assert!(sub_rx.try_recv().is_err(), "coming back is not news");
        assert!(
            !back.resync.load(Relaxed),
            "the changes fitted: no snapshot"
        );
        assert_eq!(back_rx.try_recv().ok(), Some(signal));
        assert!(matches!(back_rx.try_recv(), Ok(ServerFrame::Left(id)) if id == peer(2)));
        assert!(matches!(back_rx.try_recv(), Ok(ServerFrame::Signal { .. })));
        assert_eq!(
            (m.unparks.load(Relaxed), m.peers_parked.load(Relaxed)),
            (1, 0)
        );
        assert_eq!(
            m.closes(CloseCause::Replaced),
            0,
            "not counted as a replaced login"
        );
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
