//! Joining a cluster of relays through NATS (`proto::cluster` holds the formats and the
//! subject design): this relay's heartbeat every second and the members it hears; the changes
//! to its peers, numbered, and the other relays' (kept in the session table's directory);
//! signals, vouches and snapshots through the relays' inboxes. When NATS cannot be reached
//! the relay keeps serving the peers registered with it and says so (`/healthz`,
//! `p2pcall_relay_cluster_connected`); the other relays' peers leave its view when their
//! heartbeats stop, and come back with a snapshot when NATS does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use p2pcall_proto::cluster::wire::{
    MAX_CHANGES, PRESENCE_WILDCARD, SNAPSHOT_PART, inbox_subject, presence_subject,
};
use p2pcall_proto::cluster::{
    ALIVE_SUBJECT, Change, Deltas, Directory, HEARTBEAT_EVERY, Heartbeat, Hop, MemberChange,
    Membership, RelayMsg,
};
use p2pcall_proto::relay::{RelayEntry, ServerFrame, SignalFailure};
use p2pcall_proto::{DecodeError, PeerId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::{CHANGES_QUEUE, INBOX_QUEUE, Link, Sessions};

pub use crate::config::ClusterConfig;

/// The cluster as this relay sees it.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) membership: Mutex<Membership>,
}

/// What [`crate::Relay::cluster_members`] reports of another relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its key.
    pub relay: PeerId,
    /// Its region.
    pub region: String,
    /// Where clients reach it.
    pub public_addr: String,
    /// Peers registered with it.
    pub peers: u32,
}

impl Cluster {
    pub(crate) fn members(&self) -> Vec<ClusterMember> {
        (self.membership.lock().members())
            .map(|m| ClusterMember {
                relay: m.heartbeat.relay,
                region: m.heartbeat.region.clone(),
                public_addr: m.heartbeat.public_addr.clone(),
                peers: m.heartbeat.peers,
            })
            .collect()
    }
}

/// Joins the cluster in the background (a task of the relay's set). `udp_addr` is the
/// relay's bound UDP address: where other relays send packets when `public_addr` does not
/// say.
pub(crate) fn start(
    cfg: ClusterConfig,
    me: PeerId,
    udp_addr: SocketAddr,
    shared: &crate::state::Shared,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Arc<Cluster> {
    let cluster = Arc::new(Cluster {
        membership: Mutex::new(Membership::new(me)),
    });
    let (changes, changes_rx) = mpsc::channel(CHANGES_QUEUE);
    let (inbox, inbox_rx) = mpsc::channel(INBOX_QUEUE);
    let epoch = rand::random();
    let hop_token = rand::random();
    {
        let mut sessions = shared.sessions.write();
        sessions.remote = Directory::new(me);
        sessions.link = Some(Link {
            seq: 0,
            changes,
            inbox,
            hop_token,
            relays: Vec::new(),
        });
    }
    let node = Node {
        me,
        public_addr: cfg.public_addr.clone(),
        epoch,
        hop_token,
        cfg,
        cluster: cluster.clone(),
        sessions: shared.sessions.clone(),
        metrics: shared.metrics.clone(),
    };
    tasks.spawn(run(
        node,
        udp_addr,
        changes_rx,
        inbox_rx,
        shared.cancel.clone(),
    ));
    cluster
}

/// What the cluster task works with.
struct Node {
    me: PeerId,
    /// Where clients reach this relay (`--public-addr`, else the hop address).
    public_addr: String,
    epoch: u64,
    hop_token: [u8; 8],
    cfg: ClusterConfig,
    cluster: Arc<Cluster>,
    sessions: Arc<RwLock<Sessions>>,
    metrics: Arc<Metrics>,
}

/// How long one publish may wait (NATS away: the message is dropped; the other relays notice
/// the gap in our numbering and ask for a snapshot once NATS is back).
const PUBLISH_WAIT: Duration = Duration::from_millis(200);

/// Where other relays send packets for our peers: `public_addr` (resolved once), else our UDP
/// address if it is a specific one.
async fn hop_address(public_addr: &str, udp_addr: SocketAddr) -> Option<SocketAddr> {
    if let Ok(a) = public_addr.parse() {
        return Some(a);
    }
    if !public_addr.is_empty() {
        let found = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host(public_addr.to_string()),
        )
        .await;
        if let Ok(Ok(mut addrs)) = found
            && let Some(a) = addrs.next()
        {
            return Some(a);
        }
    }
    (!udp_addr.ip().is_unspecified()).then_some(udp_addr)
}

/// Connects to NATS (retrying in the background until it answers: the relay serves its own
/// peers meanwhile) and takes part in the cluster until `cancel`; then says it leaves.
async fn run(
    node: Node,
    udp_addr: SocketAddr,
    mut changes: mpsc::Receiver<(u64, Change)>,
    mut outbox: mpsc::Receiver<(PeerId, RelayMsg)>,
    cancel: CancellationToken,
) {
    node.metrics.cluster_configured.store(1, Ordering::Relaxed);
    let hop = hop_address(&node.cfg.public_addr, udp_addr)
        .await
        .map(|addr| Hop {
            addr,
            token: node.hop_token,
        });
    // Where clients reach us: as configured, else where other relays do.
    let public_addr = match (&node.cfg.public_addr, hop) {
        (a, Some(h)) if a.is_empty() => h.addr.to_string(),
        (a, _) => a.clone(),
    };
    let node = Node {
        public_addr,
        ..node
    };
    node.update_relays();
    if hop.is_none() {
        tracing::warn!(
            "no --public-addr this relay can be reached at: peers of other relays cannot send \
             packets to the peers registered here"
        );
    }
    let Some(client) = connect(&node, &cancel).await else {
        return;
    };
    let subscribed = tokio::try_join!(
        client.subscribe(ALIVE_SUBJECT),
        client.subscribe(PRESENCE_WILDCARD),
        client.subscribe(inbox_subject(&node.me)),
    );
    let (mut alive, mut presence, mut inbox) = match subscribed {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot subscribe to the cluster's subjects: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            m = alive.next() => match m {
                Some(m) => node.on_heartbeat(&client, &m.payload).await,
                None => break,
            },
            m = presence.next() => match m {
                Some(m) => node.on_deltas(&client, &m.payload).await,
                None => break,
            },
            m = inbox.next() => match m {
                Some(m) => node.on_inbox(&client, &m.payload).await,
                None => break,
            },
            Some(first) = changes.recv() => {
                let mut carry = node.publish_changes(&client, first, &mut changes).await;
                while let Some(next) = carry.take() {
                    carry = node.publish_changes(&client, next, &mut changes).await;
                }
            }
            Some((relay, msg)) = outbox.recv() => {
                node.publish(&client, inbox_subject(&relay), msg.encode()).await;
            }
            _ = tick.tick() => node.tick(&client, hop).await,
        }
    }
    let leaving = node.heartbeat(hop, true);
    node.publish(&client, ALIVE_SUBJECT.to_string(), leaving.encode())
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
}

async fn connect(node: &Node, cancel: &CancellationToken) -> Option<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = (node.cfg.servers.iter())
        .filter_map(|s| {
            s.parse()
                .inspect_err(|e| tracing::warn!("cluster server {s:?}: {e}"))
                .ok()
        })
        .collect();
    let options = async_nats::ConnectOptions::new()
        .name(format!("p2pcall-relay {}", node.me.fingerprint()))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        // Reconnect at once, then every 250 ms: a lost NATS node costs well under the 3 s a
        // member lives without heartbeats.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(if attempts <= 1 { 0 } else { 250 })
        })
        .max_reconnects(None)
        // What this relay publishes is not delivered back to it (its own changes, heartbeats).
        .no_echo()
        // The connection's state as it changes (`connect` returns before the first connection
        // is up: it retries in the background).
        .event_callback({
            let metrics = node.metrics.clone();
            move |event| {
                let metrics = metrics.clone();
                async move {
                    let up = match event {
                        async_nats::Event::Connected => 1,
                        async_nats::Event::Disconnected => 0,
                        _ => return,
                    };
                    metrics.cluster_connected.store(up, Ordering::Relaxed);
                }
            }
        });
    tokio::select! {
        _ = cancel.cancelled() => None,
        c = options.connect(servers) => c
            .inspect_err(|e| tracing::warn!("cannot join the relay cluster: {e}"))
            .ok(),
    }
}

impl Node {
    async fn publish(&self, client: &async_nats::Client, subject: String, payload: Vec<u8>) {
        let sent =
            tokio::time::timeout(PUBLISH_WAIT, client.publish(subject, payload.into())).await;
        if matches!(sent, Ok(Ok(()))) {
            self.metrics
                .cluster_published
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn heartbeat(&self, hop: Option<Hop>, leaving: bool) -> Heartbeat {
        let (peers, seq) = {
            let s = self.sessions.read();
            (s.len(), s.link.as_ref().map_or(0, |l| l.seq))
        };
        Heartbeat {
            relay: self.me,
            region: self.cfg.region.clone(),
            public_addr: self.public_addr.clone(),
            peers: u32::try_from(peers).unwrap_or(u32::MAX),
            leaving,
            epoch: self.epoch,
            seq,
            hop,
        }
    }

    /// Every second: our heartbeat, and the members gone silent leave (their peers too).
    async fn tick(&self, client: &async_nats::Client, hop: Option<Hop>) {
        let hb = self.heartbeat(hop, false);
        self.publish(client, ALIVE_SUBJECT.to_string(), hb.encode())
            .await;
        let (gone, n) = {
            let mut membership = self.cluster.membership.lock();
            let gone = membership.expire(Instant::now());
            (gone, membership.members().count())
        };
        self.metrics
            .cluster_members
            .store(n as u64, Ordering::Relaxed);
        if !gone.is_empty() {
            self.update_relays();
        }
        for change in gone {
            tracing::info!(?change, "cluster membership");
            if let MemberChange::Left(relay) = change {
                self.directory(client, |d| d.relay_gone(&relay)).await;
            }
        }
    }

    /// The relays clients are told of changed (one joined or left): every client hears.
    fn update_relays(&self) {
        let mut list = vec![RelayEntry {
            key: self.me,
            addr: self.public_addr.clone(),
            region: self.cfg.region.clone(),
            peers: 0,
        }];
        {
            let membership = self.cluster.membership.lock();
            list.extend(
                (membership.members())
                    .filter(|m| !m.heartbeat.public_addr.is_empty())
                    .map(|m| RelayEntry {
                        key: m.heartbeat.relay,
                        addr: m.heartbeat.public_addr.clone(),
                        region: m.heartbeat.region.clone(),
                        peers: m.heartbeat.peers,
                    }),
            );
        }
        list.truncate(p2pcall_proto::relay::MAX_RELAYS);
        let mut sessions = self.sessions.write();
        list[0].peers = u32::try_from(sessions.len()).unwrap_or(u32::MAX);
        if let Some(link) = &mut sessions.link {
            link.relays = list.clone();
        }
        let frame = ServerFrame::Relays(list);
        for s in sessions.all() {
            s.try_queue(frame.clone());
        }
    }

    /// Applies `f` to the directory of the other relays' peers (under the session table's
    /// lock: what changes reaches our presence subscribers in order), then asks for the
    /// snapshots it wants.
    async fn directory(&self, client: &async_nats::Client, f: impl FnOnce(&mut Directory)) {
        let asks = {
            let mut s = self.sessions.write();
            f(&mut s.remote);
            s.remote_events(&self.metrics)
        };
        self.ask_snapshots(client, asks).await;
    }

    async fn ask_snapshots(&self, client: &async_nats::Client, asks: Vec<(PeerId, u64)>) {
        for (relay, request) in asks {
            let msg = RelayMsg::SnapshotRequest {
                relay: self.me,
                request,
            };
            self.publish(client, inbox_subject(&relay), msg.encode())
                .await;
        }
    }

    /// Counts a message received from NATS and hands out what it decoded to, if anything.
    fn received<T>(&self, what: &str, decoded: Result<T, DecodeError>) -> Option<T> {
        self.metrics
            .cluster_received
            .fetch_add(1, Ordering::Relaxed);
        decoded
            .inspect_err(|e| tracing::debug!("{what} that does not decode: {e}"))
            .ok()
    }

    async fn on_heartbeat(&self, client: &async_nats::Client, payload: &[u8]) {
        let Some(hb) = self.received("a heartbeat", Heartbeat::decode(payload)) else {
            return;
        };
        let now = Instant::now();
        let change = self.cluster.membership.lock().heard(now, hb.clone());
        if let Some(change) = change {
            tracing::info!(?change, "cluster membership");
            self.update_relays();
        }
        self.directory(client, |d| {
            if hb.leaving {
                d.relay_gone(&hb.relay);
            } else {
                d.heartbeat(now, &hb);
            }
        })
        .await;
    }

    async fn on_deltas(&self, client: &async_nats::Client, payload: &[u8]) {
        let Some(d) = self.received("presence changes", Deltas::decode(payload)) else {
            return;
        };
        if d.relay == self.me {
            return;
        }
        self.directory(client, |dir| dir.deltas(Instant::now(), d))
            .await;
    }

    /// Publishes `first` and the changes queued after it that follow on, in one message;
    /// returns a change that does not follow on (one was dropped before it), if any.
    async fn publish_changes(
        &self,
        client: &async_nats::Client,
        first: (u64, Change),
        queue: &mut mpsc::Receiver<(u64, Change)>,
    ) -> Option<(u64, Change)> {
        let (first_seq, change) = first;
        let mut d = Deltas {
            relay: self.me,
            epoch: self.epoch,
            first_seq,
            changes: vec![change],
        };
        let mut carry = None;
        while d.changes.len() < MAX_CHANGES {
            let Ok((seq, change)) = queue.try_recv() else {
                break;
            };
            if seq != d.last_seq() + 1 {
                carry = Some((seq, change));
                break;
            }
            d.changes.push(change);
        }
        self.publish(client, presence_subject(&self.me), d.encode())
            .await;
        carry
    }

    async fn on_inbox(&self, client: &async_nats::Client, payload: &[u8]) {
        let Some(msg) = self.received("an inbox message", RelayMsg::decode(payload)) else {
            return;
        };
        match msg {
            RelayMsg::Signal {
                origin,
                from,
                to,
                payload,
            } => {
                let delivered = match self.sessions.read().by_id(&to) {
                    Some(dst) => dst
                        .try_queue(ServerFrame::Signal { from, payload })
                        .then_some(())
                        .ok_or(SignalFailure::QueueFull),
                    None => Err(SignalFailure::Offline),
                };
                if let Err(reason) = delivered {
                    let back = RelayMsg::SignalFailed { from, to, reason };
                    self.publish(client, inbox_subject(&origin), back.encode())
                        .await;
                }
            }
            RelayMsg::SignalFailed { from, to, reason } => {
                if let Some(s) = self.sessions.read().by_id(&from) {
                    self.metrics.signals_failed.fetch_add(1, Ordering::Relaxed);
                    s.try_queue(ServerFrame::SignalFailed { to, reason });
                }
            }
            RelayMsg::Vouch { from, to, observed } => {
                if let Some(s) = self.sessions.read().by_id(&to) {
                    s.try_queue(ServerFrame::Vouched { from, observed });
                }
            }
            RelayMsg::SnapshotRequest { relay, request } => {
                self.send_snapshot(client, relay, request).await;
            }
            RelayMsg::SnapshotPart {
                relay,
                epoch,
                seq,
                request,
                part,
                parts,
                peers,
            } => {
                let now = Instant::now();
                self.directory(client, |d| {
                    d.snapshot_part(now, relay, epoch, seq, request, (part, parts), peers);
                })
                .await;
            }
        }
    }

    /// Sends our peers to `relay` (its request `request`), in numbered parts.
    async fn send_snapshot(&self, client: &async_nats::Client, relay: PeerId, request: u64) {
        let (seq, peers) = self.sessions.read().cluster_snapshot();
        let chunks: Vec<_> = peers.chunks(SNAPSHOT_PART).collect();
        let parts = chunks.len().max(1);
        for i in 0..parts {
            let msg = RelayMsg::SnapshotPart {
                relay: self.me,
                epoch: self.epoch,
                seq,
                request,
                part: i as u32,
                parts: parts as u32,
                peers: chunks.get(i).map_or_else(Vec::new, |p| p.to_vec()),
            };
            self.publish(client, inbox_subject(&relay), msg.encode())
                .await;
        }
    }
}
