//! The engine: commands in (methods of [`EngineHandle`]), events out ([`EngineEvent`]).
//!
//! It owns the network endpoint, keeps one connection per peer (reused by every command),
//! and turns endpoint events into application events. The front ends (the CLI, the desktop
//! app) never touch sockets or protocol state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use p2pcall_net::{
    Endpoint, EndpointConfig, Event, NetError, Path, PeerConnection, PresenceEvent, RelayConfig,
    RelayTransport,
};
use p2pcall_proto::relay::PeerInfo;
use p2pcall_proto::{PeerId, SafetyNumber};
use p2pcall_store::{Store, StoreError, now_ms};
use p2pcall_tls::Identity;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our key.
    pub identity: Identity,
    /// Display name.
    pub name: String,
    /// Relay to use.
    pub relay: Option<RelayConfig>,
    /// UDP bind address.
    pub bind: SocketAddr,
    /// Look for direct paths.
    pub direct_paths: bool,
    /// Ask the gateway for a port mapping (UPnP-IGD, NAT-PMP, PCP).
    pub port_mapping: bool,
    /// LAN-only mode: peers found by mDNS, no relay (`relay` must be `None`).
    pub lan: Option<p2pcall_net::LanConfig>,
    /// Chat history, contacts and transfer state (in memory when `None`).
    pub store: Option<Arc<Store>>,
    /// Deliver queued messages and resume unfinished outgoing transfers whenever a peer
    /// comes online (long-running front ends: `listen`, the GUI). One-shot commands turn it
    /// off so they do only what they were asked.
    pub auto_deliver: bool,
    /// Partial files of incoming transfers untouched for this long are removed (the
    /// transfer is given up), at start and every [`PARTIAL_CLEAN_EVERY`]; `None` keeps them.
    pub partial_max_age: Option<Duration>,
}

/// Partial files older than this are removed by default (the `partial_max_age_days`
/// setting changes it).
pub const DEFAULT_PARTIAL_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a running engine looks for abandoned partial files.
pub const PARTIAL_CLEAN_EVERY: Duration = Duration::from_secs(3600);

impl EngineConfig {
    /// Defaults: dual-stack any port, direct paths on.
    pub fn new(identity: Identity, name: String, relay: Option<RelayConfig>) -> Self {
        Self {
            identity,
            name,
            relay,
            bind: SocketAddr::from(([0u16; 8], 0)),
            direct_paths: true,
            port_mapping: true,
            lan: None,
            store: None,
            auto_deliver: true,
            partial_max_age: Some(DEFAULT_PARTIAL_MAX_AGE),
        }
    }
}

/// Engine errors, each telling the user what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Network failure.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer query matched nobody online.
    #[error(
        "no online peer matches {query:?} ({online} peers online); run `p2pcall peers` to list them, or pass the full 64-digit id"
    )]
    PeerNotFound {
        /// What the user typed.
        query: String,
        /// How many peers are online.
        online: usize,
    },
    /// The peer query matched several peers.
    #[error("{query:?} matches several peers: {candidates}; type more of the fingerprint")]
    Ambiguous {
        /// What the user typed.
        query: String,
        /// Who matched.
        candidates: String,
    },
    /// The relay reports the peer offline (it has no session with that key).
    #[error(
        "{name} is offline: the relay does not see {fingerprint} now; try again once {name} is online"
    )]
    PeerOffline {
        /// The peer.
        peer: PeerId,
        /// Its name as we know it (the fingerprint if we know none).
        name: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A stream to the peer failed.
    #[error("the stream to the peer failed: {0}")]
    Stream(String),
    /// The relay did not deliver the presence list in time.
    #[error("the relay did not send the peer list within {0:?}")]
    NoPresence(Duration),
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A chat message is longer than the protocol allows.
    #[error("the message is {len} bytes; the limit is {max} bytes: split it, or send it as a file")]
    MessageTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file or folder to send cannot be read.
    #[error("cannot read {path}: {source}")]
    Source {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to send.
    #[error("nothing to send: {0}")]
    NothingToSend(String),
    /// The peer refused the offer.
    #[error("the peer declined the transfer: {0}")]
    Rejected(String),
    /// The transfer stopped.
    #[error("the transfer stopped ({code}): {reason}")]
    Aborted {
        /// Typed cause.
        code: p2pcall_proto::transfer::AbortCode,
        /// Details.
        reason: String,
    },
    /// The other side broke the chat or transfer protocol.
    #[error("protocol error from the peer: {0}")]
    Protocol(String),
    /// A call failed.
    #[error(transparent)]
    Call(#[from] crate::call::CallError),
    /// No pending offer with that id.
    #[error("no pending offer {0}")]
    NoSuchOffer(String),
}

/// Application events.
#[derive(Debug)]
pub enum EngineEvent {
    /// Relay session, presence, signaling, path and connection-closed events, as the
    /// endpoint reports them (never [`Event::Incoming`]: that becomes `PeerConnected`).
    Net(Event),
    /// A peer-to-peer connection is up (dialed by us, or accepted).
    PeerConnected {
        /// The connection.
        conn: PeerConnection,
        /// Whether the other side dialed.
        incoming: bool,
    },
    /// Chat: a new message, or a state change of one.
    Chat(crate::chat::ChatEvent),
    /// File transfers: offers, progress, outcomes.
    Transfer(crate::transfer::TransferEvent),
    /// Calls: incoming, ringing, started, statistics, ended.
    Call(crate::call::CallEvent),
}

/// Result of one ping.
#[derive(Debug, Clone)]
pub struct PingReport {
    /// Sequence number.
    pub seq: u32,
    /// Round-trip time, `None` if lost.
    pub rtt: Option<Duration>,
    /// Path used when the ping was sent.
    pub path: Path,
}

pub(crate) struct Shared {
    pub(crate) endpoint: Endpoint,
    connections: Mutex<HashMap<PeerId, PeerConnection>>,
    presence_ready: watch::Sender<bool>,
    pub(crate) store: Arc<Store>,
    pub(crate) events: crate::events::EventSink,
    pub(crate) chat: crate::chat::ChatState,
    pub(crate) transfers: crate::transfer::Registry,
    /// Per peer: how much of the connection file transfers may use during a call.
    pub(crate) bulk: crate::bulk::Gates,
    pub(crate) call: Mutex<Option<crate::call::ActiveCall>>,
    auto_deliver: bool,
}

/// Handle to a running engine (cheap to clone).
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Starts engines.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Starts the endpoint and the event task. Drain the returned receiver.
    pub async fn start(
        cfg: EngineConfig,
    ) -> Result<(EngineHandle, mpsc::Receiver<EngineEvent>), EngineError> {
        let (endpoint, net_events) = Endpoint::bind(EndpointConfig {
            identity: cfg.identity,
            name: cfg.name,
            bind: cfg.bind,
            relay: cfg.relay,
            direct_paths: cfg.direct_paths,
            port_mapping: cfg.port_mapping,
            lan: cfg.lan,
        })
        .await?;
        let store = match cfg.store {
            Some(s) => s,
            None => Arc::new(Store::open_in_memory()?),
        };
        let (sink, rx) = crate::events::EventSink::new();
        let shared = Arc::new(Shared {
            endpoint,
            connections: Mutex::default(),
            presence_ready: watch::Sender::new(false),
            store,
            events: sink,
            chat: Default::default(),
            transfers: Default::default(),
            bulk: Default::default(),
            call: Mutex::default(),
            auto_deliver: cfg.auto_deliver,
        });
        tokio::spawn(pump(shared.clone(), net_events));
        let handle = EngineHandle { shared };
        if let Some(age) = cfg.partial_max_age {
            tokio::spawn(clean_partials(Arc::downgrade(&handle.shared), age));
        }
        Ok((handle, rx))
    }
}

async fn pump(shared: Arc<Shared>, mut net: mpsc::Receiver<Event>) {
    while let Some(e) = net.recv().await {
        let ev = match e {
            Event::Incoming(conn) => {
                {
                    let mut c = shared.connections.lock();
                    c.insert(conn.peer(), conn.clone());
                }
                tokio::spawn(crate::streams::serve(shared.clone(), conn.clone()));
                tokio::spawn(crate::call::route_datagrams(shared.clone(), conn.clone()));
                peer_reachable(&shared, conn.peer());
                EngineEvent::PeerConnected {
                    conn,
                    incoming: true,
                }
            }
            Event::Presence(PresenceEvent::Snapshot(ref peers)) => {
                shared.presence_ready.send_replace(true);
                remember_seen(&shared, peers).await;
                for p in peers {
                    peer_reachable(&shared, p.id);
                }
                EngineEvent::Net(e)
            }
            Event::Presence(PresenceEvent::Joined(ref p) | PresenceEvent::Updated(ref p)) => {
                remember_seen(&shared, std::slice::from_ref(p)).await;
                peer_reachable(&shared, p.id);
                EngineEvent::Net(e)
            }
            Event::ConnectionClosed { peer, .. } => {
                let mut c = shared.connections.lock();
                if c.get(&peer)
                    .is_some_and(|c| c.quic().close_reason().is_some())
                {
                    c.remove(&peer);
                }
                EngineEvent::Net(e)
            }
            e => EngineEvent::Net(e),
        };
        shared.emit(ev);
    }
}

/// Records the peers presence reports (their names, when seen) in one transaction, on a
/// blocking thread: SQLite syncs to disk, which must not stall the runtime's workers.
async fn remember_seen(shared: &Arc<Shared>, peers: &[PeerInfo]) {
    if peers.is_empty() {
        return;
    }
    let store = shared.store.clone();
    let seen: Vec<(PeerId, String)> = peers.iter().map(|p| (p.id, p.name.clone())).collect();
    let r = tokio::task::spawn_blocking(move || {
        let refs: Vec<(PeerId, &str)> = seen.iter().map(|(p, n)| (*p, n.as_str())).collect();
        store.touch_contacts(&refs, now_ms())
    })
    .await;
    if let Ok(Err(e)) = r {
        tracing::warn!("recording the peers seen online: {e}");
    }
}

/// Removes the partial files of abandoned incoming transfers now and every
/// [`PARTIAL_CLEAN_EVERY`] (never those being received).
async fn clean_partials(shared: std::sync::Weak<Shared>, age: Duration) {
    // Weak: this task must not keep a stopped engine alive.
    while let Some(shared) = shared.upgrade() {
        let h = EngineHandle { shared };
        let store = h.store().clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::transfer::partials::clean_older_than(&store, age, |r| {
                h.is_receiving(r.peer, r.id)
            })
        })
        .await;
        match r {
            Ok(Ok(c)) if c.transfers > 0 => tracing::info!(
                transfers = c.transfers,
                files = c.files,
                bytes = c.bytes,
                "removed the partial files of abandoned transfers"
            ),
            Ok(Err(e)) => tracing::warn!("cleaning abandoned partial files: {e}"),
            _ => {}
        }
        tokio::time::sleep(PARTIAL_CLEAN_EVERY).await;
    }
}

/// A peer came online or connected: deliver what waits for it (queued messages, read
/// receipts, unfinished outgoing transfers).
fn peer_reachable(shared: &Arc<Shared>, peer: PeerId) {
    if !shared.auto_deliver {
        return;
    }
    let handle = EngineHandle {
        shared: shared.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = handle.flush_chat(peer).await {
            tracing::debug!(%peer, "chat delivery postponed: {e}");
        }
        handle.resume_transfers(peer).await;
    });
}

impl Shared {
    /// Sends an event to the front end behind every earlier one, never blocking the caller
    /// (see [`crate::events`]).
    pub(crate) fn emit(&self, ev: EngineEvent) {
        self.events.emit(ev);
    }
}

impl EngineHandle {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The local database (chat history, contacts, transfers).
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// Our identity.
    pub fn id(&self) -> PeerId {
        self.shared.endpoint.id()
    }

    /// The underlying endpoint (for lower-level tools: benchmarks, tests).
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Waits for the relay session.
    pub async fn wait_relay(&self, timeout: Duration) -> Result<RelayTransport, EngineError> {
        Ok(self.shared.endpoint.wait_relay(timeout).await?)
    }

    /// Waits for the first presence snapshot and returns the peers online.
    pub async fn wait_presence(&self, timeout: Duration) -> Result<Vec<PeerInfo>, EngineError> {
        let mut rx = self.shared.presence_ready.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(self.online_peers()),
            _ => Err(EngineError::NoPresence(timeout)),
        }
    }

    /// Peers online, sorted by name.
    pub fn online_peers(&self) -> Vec<PeerInfo> {
        let mut v = self.shared.endpoint.online_peers();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Finds the peer a user means: a full id, a fingerprint (prefix, ≥ 4 hex digits), or an
    /// exact display name among the peers online.
    pub fn resolve_peer(&self, query: &str) -> Result<PeerId, EngineError> {
        if let Ok(id) = query.parse::<PeerId>() {
            return Ok(id);
        }
        let online = self.online_peers();
        let by_fp: Vec<_> = online.iter().filter(|p| p.id.matches(query)).collect();
        let hits = if by_fp.is_empty() {
            online.iter().filter(|p| p.name == query).collect()
        } else {
            by_fp
        };
        let contacts;
        let hits = if hits.is_empty() {
            contacts = self.shared.store.contacts().unwrap_or_default();
            let by_fp: Vec<_> = contacts.iter().filter(|c| c.peer.matches(query)).collect();
            let found: Vec<PeerId> = if by_fp.is_empty() {
                contacts
                    .iter()
                    .filter(|c| c.name == query)
                    .map(|c| c.peer)
                    .collect()
            } else {
                by_fp.iter().map(|c| c.peer).collect()
            };
            if let [one] = found.as_slice() {
                return Ok(*one);
            }
            hits
        } else {
            hits
        };
        match hits.as_slice() {
            [one] => Ok(one.id),
            [] => Err(EngineError::PeerNotFound {
                query: query.to_string(),
                online: online.len(),
            }),
            many => Err(EngineError::Ambiguous {
                query: query.to_string(),
                candidates: many
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.id.fingerprint()))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Whether a live connection to `peer` exists.
    pub fn has_connection(&self, peer: PeerId) -> bool {
        self.shared
            .connections
            .lock()
            .get(&peer)
            .is_some_and(|c| c.quic().close_reason().is_none())
    }

    /// The name we know `peer` by (its fingerprint if none).
    pub fn peer_name(&self, peer: &PeerId) -> String {
        self.online_peers()
            .into_iter()
            .find(|p| p.id == *peer)
            .map(|p| p.name)
            .or_else(|| self.shared.store.contact_name(peer).ok().flatten())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| peer.fingerprint().to_string())
    }

    /// Whether the relay reports `peer` offline now (see [`Endpoint::peer_offline`]).
    pub fn peer_offline(&self, peer: &PeerId) -> bool {
        self.shared.endpoint.peer_offline(peer)
    }

    /// The open connection to `peer`, or a new one. A connection made before the peer last
    /// registered with the relay is checked first (the peer may have restarted, leaving it
    /// dead until its idle timeout). A peer the relay reports offline fails at once with
    /// [`EngineError::PeerOffline`].
    pub async fn connect(&self, peer: PeerId) -> Result<PeerConnection, EngineError> {
        let existing = self.shared.connections.lock().get(&peer).cloned();
        if let Some(c) = existing
            && c.quic().close_reason().is_none()
            && (!c.is_suspect() || c.check_alive().await)
        {
            return Ok(c);
        }
        if self.peer_offline(&peer) {
            return Err(EngineError::PeerOffline {
                peer,
                name: self.peer_name(&peer),
                fingerprint: peer.fingerprint().to_string(),
            });
        }
        let conn = self.shared.endpoint.connect(peer).await?;
        {
            let mut c = self.shared.connections.lock();
            c.insert(peer, conn.clone());
        }
        tokio::spawn(crate::streams::serve(self.shared.clone(), conn.clone()));
        tokio::spawn(crate::call::route_datagrams(
            self.shared.clone(),
            conn.clone(),
        ));
        Ok(conn)
    }

    /// Calls `peer`; the outcome arrives as [`EngineEvent::Call`] events.
    pub async fn call(
        &self,
        peer: PeerId,
        opts: crate::call::CallOptions,
    ) -> Result<p2pcall_proto::call::CallId, EngineError> {
        let conn = self.connect(peer).await?;
        Ok(crate::call::dial(self.shared.clone(), conn, opts).await?)
    }

    /// Accepts the ringing incoming call `call`.
    pub async fn answer(
        &self,
        call: p2pcall_proto::call::CallId,
        opts: crate::call::CallOptions,
    ) -> Result<(), EngineError> {
        use crate::call::{Cmd, command};
        Ok(command(&self.shared, Some(call), Cmd::Answer(Box::new(opts))).await?)
    }

    /// Declines the ringing incoming call `call`.
    pub async fn reject_call(&self, call: p2pcall_proto::call::CallId) -> Result<(), EngineError> {
        use crate::call::{Cmd, command};
        Ok(command(&self.shared, Some(call), Cmd::Reject).await?)
    }

    /// Hangs up the current call (or cancels the one ringing).
    pub async fn hangup(&self) -> Result<(), EngineError> {
        use crate::call::{Cmd, command};
        Ok(command(&self.shared, None, Cmd::Hangup).await?)
    }

    /// Mutes or unmutes our audio in the current call.
    pub async fn set_muted(&self, muted: bool) -> Result<(), EngineError> {
        use crate::call::{Cmd, command};
        Ok(command(&self.shared, None, Cmd::Mute(muted)).await?)
    }

    /// Switches the current call's video to another source (test pattern, file, camera).
    pub async fn set_video_source(&self, src: crate::call::VideoSource) -> Result<(), EngineError> {
        use crate::call::{Cmd, command};
        Ok(command(&self.shared, None, Cmd::Video(src)).await?)
    }

    /// Turns our video on or off in the current call.
    pub async fn set_camera(&self, on: bool) -> Result<(), EngineError> {
        use crate::call::{Cmd, command};
        Ok(command(&self.shared, None, Cmd::Camera(on)).await?)
    }

    /// Sends `bytes` to `peer` on a new stream and checks that every byte arrived.
    pub async fn speedtest(
        &self,
        peer: PeerId,
        bytes: u64,
    ) -> Result<crate::streams::SpeedReport, EngineError> {
        let conn = self.connect(peer).await?;
        crate::streams::speedtest(&conn, bytes).await
    }

    /// Pings `peer` once over its connection.
    pub async fn ping(&self, peer: PeerId, seq: u32) -> Result<PingReport, EngineError> {
        let conn = self.connect(peer).await?;
        let path = conn.path();
        let rtt = match conn.ping(seq, 0).await {
            Ok(rtt) => Some(rtt),
            Err(NetError::Timeout(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(PingReport { seq, rtt, path })
    }

    /// The safety number shared with `peer`.
    pub fn safety_number(&self, peer: &PeerId) -> SafetyNumber {
        SafetyNumber::new(&self.id(), peer)
    }

    /// Sends a signaling message through the relay.
    pub async fn signal(&self, to: PeerId, payload: Bytes) -> Result<(), EngineError> {
        Ok(self.shared.endpoint.signal(to, payload).await?)
    }

    /// Changes the display name.
    pub async fn set_name(&self, name: String) -> Result<(), EngineError> {
        Ok(self.shared.endpoint.set_name(name).await?)
    }

    /// Interrupts the running transfers (each records its verified chunks and tells the
    /// peer, so that the same transfer resumes), then closes every connection and the relay
    /// session.
    pub async fn shutdown(&self) {
        self.interrupt_transfers().await;
        let conns: Vec<_> = self
            .shared
            .connections
            .lock()
            .drain()
            .map(|(_, v)| v)
            .collect();
        for c in conns {
            c.close("shutting down");
        }
        self.shared.endpoint.close().await;
    }
}
