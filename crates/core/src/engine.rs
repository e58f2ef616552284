//! The engine: commands in (methods of [`EngineHandle`]), events out ([`EngineEvent`]).
//!
//! It owns the network endpoint, keeps one connection per peer (reused by every command),
//! and turns endpoint events into application events. The front ends (the CLI, the desktop
//! app) never touch sockets or protocol state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use p2pcall_net::{
    Endpoint, EndpointConfig, Event, NetError, Path, PeerConnection, PresenceEvent, RelayConfig,
    RelayTransport,
};
use p2pcall_proto::call::CallId;
use p2pcall_proto::relay::PeerInfo;
use p2pcall_proto::transfer::TransferId;
use p2pcall_proto::{PeerId, SafetyNumber};
use p2pcall_store::{Message, Store};
use p2pcall_transport::Identity;
use tokio::sync::mpsc;

use crate::call::{CallEvent, CallOptions, Calls, Cmd, VideoSource};
use crate::chat::{Chat, ChatEvent};
use crate::context::Context;
pub use crate::error::{EngineError, StreamError};
use crate::events::EventSink;
use crate::presence::Presence;
use crate::services::Services;
use crate::speedtest::SpeedReport;
use crate::transfer::{Decision, Summary, TransferEvent, Transfers};

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
    /// Received files keep the sender's execute bits (else none is executable).
    pub receive_executable: bool,
    /// The relay as the user named it ([`crate::settings::relay_name`]): without a
    /// `relay_key`, the key pinned under this name is required, and the key of the first
    /// session is pinned under it (trust on first use).
    pub relay_name: Option<String>,
}

pub use crate::settings::DEFAULT_PARTIAL_MAX_AGE;
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
            receive_executable: false,
            relay_name: None,
        }
    }
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
    Chat(ChatEvent),
    /// File transfers: offers, progress, outcomes.
    Transfer(TransferEvent),
    /// Calls: incoming, ringing, started, statistics, ended.
    Call(CallEvent),
}

impl crate::events::Event for EngineEvent {
    fn superseded_later(&self) -> bool {
        matches!(
            self,
            EngineEvent::Transfer(TransferEvent::Progress(_))
                | EngineEvent::Call(CallEvent::Stats(_))
        )
    }
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

/// Handle to a running engine (cheap to clone): every command of every service.
#[derive(Clone)]
pub struct EngineHandle {
    s: Arc<Services>,
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
        let mut cfg = cfg;
        let store = match cfg.store.take() {
            Some(s) => s,
            None => Arc::new(Store::open_in_memory()?),
        };
        // The relay's key: the one given, else the one pinned for its name.
        let pin_as = cfg.relay_name.clone().filter(|_| cfg.relay.is_some());
        if let (Some(name), Some(relay)) = (&pin_as, cfg.relay.as_mut()) {
            if relay.relay_key.is_none() {
                relay.relay_key = store.relay_key(name)?;
            }
            // Other relays to move to: the settings' (with the keys pinned for them), then
            // those the relay's cluster listed last time.
            for alt in &mut relay.alternates {
                if alt.key.is_none() {
                    alt.key = store.relay_key(&alt.addr)?;
                }
            }
            relay
                .alternates
                .extend(store.cluster_relays(name)?.into_iter().map(|r| {
                    p2pcall_net::RelayCandidate {
                        addr: r.addr,
                        key: Some(r.key),
                    }
                }));
        }
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
        let (sink, rx) = EventSink::new();
        let (ctx, adopted) = Context::new(endpoint, store);
        let ctx = Arc::new(ctx);
        let bulk = Arc::default();
        let s = Arc::new(Services {
            presence: Presence::new(ctx.clone()),
            chat: Chat::new(ctx.clone(), sink.emitter(EngineEvent::Chat)),
            transfers: Arc::new(Transfers::new(
                ctx.clone(),
                sink.emitter(EngineEvent::Transfer),
                Arc::clone(&bulk),
                cfg.receive_executable,
            )),
            calls: Arc::new(Calls::new(
                ctx.clone(),
                sink.emitter(EngineEvent::Call),
                bulk,
            )),
            ctx,
            auto_deliver: cfg.auto_deliver,
        });
        tokio::spawn(crate::services::serve_adopted(Arc::downgrade(&s), adopted));
        tokio::spawn(pump(s.clone(), sink, net_events, pin_as));
        if let Some(age) = cfg.partial_max_age {
            tokio::spawn(clean_partials(Arc::downgrade(&s.transfers), age));
        }
        Ok((EngineHandle { s }, rx))
    }
}

/// Turns endpoint events into engine events, in order, acting on them first.
async fn pump(
    s: Arc<Services>,
    sink: EventSink<EngineEvent>,
    mut net: mpsc::Receiver<Event>,
    mut pin_as: Option<String>,
) {
    let relay_name = pin_as.clone();
    while let Some(e) = net.recv().await {
        let ev = match e {
            // The first session's key is the relay's from now on (it passed the check
            // against a key given or pinned before, if there was one).
            // Only the configured relay's: another of its cluster is vouched for by it.
            Event::RelayConnected {
                relay,
                primary: true,
                ..
            } if pin_as.is_some() => {
                let name = pin_as.take().unwrap_or_default();
                let pinned = s
                    .ctx
                    .db(move |st| st.pin_relay_key(&name, &relay, p2pcall_store::now_ms()))
                    .await;
                if let Err(err) = pinned {
                    tracing::warn!("cannot pin the relay's key: {err}");
                }
                EngineEvent::Net(e)
            }
            Event::Incoming(conn) => {
                s.ctx.adopt(conn.clone());
                s.peer_reachable(conn.peer());
                EngineEvent::PeerConnected {
                    conn,
                    incoming: true,
                }
            }
            Event::Presence(PresenceEvent::Snapshot(ref peers)) => {
                s.presence.observe(peers, true);
                for p in peers {
                    s.peer_reachable(p.id);
                }
                EngineEvent::Net(e)
            }
            Event::Presence(PresenceEvent::Joined(ref p) | PresenceEvent::Updated(ref p)) => {
                s.presence.observe(std::slice::from_ref(p), false);
                s.peer_reachable(p.id);
                EngineEvent::Net(e)
            }
            Event::ConnectionClosed { peer, .. } => {
                s.ctx.forget_closed(&peer);
                EngineEvent::Net(e)
            }
            Event::RelaysListed(ref list) => {
                if let Some(name) = &relay_name {
                    remember_cluster(&s, name.clone(), list).await;
                }
                EngineEvent::Net(e)
            }
            e => EngineEvent::Net(e),
        };
        sink.emit(ev);
    }
}

/// Keeps the relays of our relay's cluster for the next start (when the relay itself may be
/// the one that cannot be reached).
async fn remember_cluster(s: &Services, relay: String, list: &[p2pcall_proto::relay::RelayEntry]) {
    let list: Vec<p2pcall_store::ClusterRelay> = (list.iter())
        .filter(|e| !e.addr.is_empty())
        .map(|e| p2pcall_store::ClusterRelay {
            addr: e.addr.clone(),
            key: e.key,
            region: e.region.clone(),
        })
        .collect();
    let kept = (s.ctx)
        .db(move |st| st.set_cluster_relays(&relay, &list, p2pcall_store::now_ms()))
        .await;
    if let Err(err) = kept {
        tracing::warn!("cannot remember the relay's cluster: {err}");
    }
}

/// Removes the partial files of abandoned incoming transfers now and every
/// [`PARTIAL_CLEAN_EVERY`] (never those being received).
async fn clean_partials(transfers: std::sync::Weak<Transfers>, age: Duration) {
    // Weak: this task must not keep a stopped engine alive.
    while let Some(t) = transfers.upgrade() {
        let r = tokio::task::spawn_blocking(move || t.clean_partials(age)).await;
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

impl EngineHandle {
    /// The local database (chat history, contacts, transfers).
    pub fn store(&self) -> &Arc<Store> {
        &self.s.ctx.store
    }

    /// Our identity.
    pub fn id(&self) -> PeerId {
        self.s.ctx.id()
    }

    /// The underlying endpoint (for lower-level tools: benchmarks, tests).
    pub fn endpoint(&self) -> &Endpoint {
        &self.s.ctx.endpoint
    }

    /// Waits for the relay session.
    pub async fn wait_relay(&self, timeout: Duration) -> Result<RelayTransport, EngineError> {
        Ok(self.endpoint().wait_relay(timeout).await?)
    }

    /// Sends a signaling message through the relay.
    pub async fn signal(&self, to: PeerId, payload: Bytes) -> Result<(), EngineError> {
        Ok(self.endpoint().signal(to, payload).await?)
    }

    /// The display name we announce.
    pub fn name(&self) -> String {
        self.endpoint().name()
    }

    /// Changes the display name.
    pub async fn set_name(&self, name: String) -> Result<(), EngineError> {
        Ok(self.endpoint().set_name(name).await?)
    }

    // Presence and contacts.

    /// Waits for the first presence snapshot and returns the peers online.
    pub async fn wait_presence(&self, timeout: Duration) -> Result<Vec<PeerInfo>, EngineError> {
        self.s.presence.wait(timeout).await
    }

    /// Peers online, sorted by name.
    pub fn online_peers(&self) -> Vec<PeerInfo> {
        self.s.presence.online()
    }

    /// Finds the peer a user means: a contact by the user's name for it or a fingerprint
    /// prefix; anyone else by the full id or 8+ hex digits of its fingerprint.
    pub fn resolve_peer(&self, query: &str) -> Result<PeerId, EngineError> {
        Ok(self.s.presence.resolve(query)?.peer)
    }

    /// [`EngineHandle::resolve_peer`], saying whether the peer is a contact.
    pub fn resolve(&self, query: &str) -> Result<crate::Resolved, EngineError> {
        self.s.presence.resolve(query)
    }

    /// How far the user trusts `peer` (contact, verified).
    pub async fn trust(&self, peer: PeerId) -> Result<p2pcall_store::Trust, EngineError> {
        self.s.ctx.db(move |s| s.trust(&peer)).await
    }

    /// Makes `peer` a contact, under `petname` (else the name it announces, or had); a
    /// contact's petname changes only when one is given.
    pub async fn add_contact(
        &self,
        peer: PeerId,
        petname: Option<String>,
    ) -> Result<(), EngineError> {
        let announced = self.peer_name(&peer);
        self.s
            .ctx
            .db(move |s| {
                s.choose_contact(
                    &peer,
                    petname.as_deref(),
                    &announced,
                    p2pcall_store::now_ms(),
                )
            })
            .await
    }

    /// Makes the peer of someone's ticket a contact and pins the ticket's relay key (see
    /// [`crate::invite::add_ticket`]).
    pub async fn add_ticket(
        &self,
        ticket: crate::invite::Ticket,
        petname: Option<String>,
    ) -> Result<crate::invite::Invited, EngineError> {
        let me = self.id();
        self.s
            .ctx
            .db(move |s| {
                crate::invite::add_ticket(
                    s,
                    &me,
                    &ticket,
                    petname.as_deref(),
                    p2pcall_store::now_ms(),
                )
            })
            .await
    }

    /// Message requests waiting: people who are not contacts wrote.
    pub async fn message_requests(
        &self,
    ) -> Result<Vec<p2pcall_store::MessageRequest>, EngineError> {
        self.s.ctx.db(|s| s.message_requests()).await
    }

    /// The sender of a message request, by its full id or 4+ hex digits of its fingerprint.
    pub async fn find_request(&self, query: &str) -> Result<PeerId, EngineError> {
        crate::requests::find(&self.message_requests().await?, query)
    }

    /// Accepts `peer`'s message request: it becomes a contact (under `petname`, else the name
    /// it announces) and its messages join the conversation. Returns how many joined.
    pub async fn accept_request(
        &self,
        peer: PeerId,
        petname: Option<String>,
    ) -> Result<usize, EngineError> {
        let announced = self.peer_name(&peer);
        self.s
            .ctx
            .db(move |s| {
                s.accept_request(
                    &peer,
                    petname.as_deref(),
                    &announced,
                    p2pcall_store::now_ms(),
                )
            })
            .await
    }

    /// Deletes `peer`'s message request. Returns how many messages went.
    pub async fn delete_request(&self, peer: PeerId) -> Result<usize, EngineError> {
        self.s.ctx.db(move |s| s.delete_request(&peer)).await
    }

    /// The name we know `peer` by (its fingerprint if none).
    pub fn peer_name(&self, peer: &PeerId) -> String {
        self.s.ctx.peer_name(peer)
    }

    /// Whether the relay reports `peer` offline now (see [`Endpoint::peer_offline`]).
    pub fn peer_offline(&self, peer: &PeerId) -> bool {
        self.endpoint().peer_offline(peer)
    }

    /// The safety number shared with `peer`.
    pub fn safety_number(&self, peer: &PeerId) -> SafetyNumber {
        SafetyNumber::new(&self.id(), peer)
    }

    // Connections.

    /// Whether a live connection to `peer` exists.
    pub fn has_connection(&self, peer: PeerId) -> bool {
        self.s.ctx.has_connection(peer)
    }

    /// The open connection to `peer`, or a new one. A connection made before the peer last
    /// registered with the relay is checked first (the peer may have restarted). A peer the
    /// relay reports offline fails at once with [`EngineError::PeerOffline`].
    pub async fn connect(&self, peer: PeerId) -> Result<PeerConnection, EngineError> {
        self.s.ctx.connect(peer).await
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

    /// Sends `bytes` to `peer` on a new stream and checks that every byte arrived.
    pub async fn speedtest(&self, peer: PeerId, bytes: u64) -> Result<SpeedReport, EngineError> {
        let conn = self.connect(peer).await?;
        crate::speedtest::speedtest(&conn, bytes).await
    }

    // Chat.

    /// Stores a message to `peer` (state queued) and tries to deliver it now. A peer that is
    /// offline gets it when both are online again. Returns the message as it stands after
    /// the attempt.
    /// Writing to someone makes them a contact (chosen by key: its id or fingerprint).
    pub async fn send_message(&self, peer: PeerId, text: &str) -> Result<Message, EngineError> {
        self.add_contact(peer, None).await?;
        self.s.chat.send(peer, text).await
    }

    /// Marks the conversation with `peer` as read and sends the read receipts (now, or when
    /// the peer is reachable). Returns how many messages were newly read.
    pub async fn mark_read(&self, peer: PeerId) -> Result<usize, EngineError> {
        self.s.chat.mark_read(peer).await
    }

    /// Delivers every queued message and read receipt to `peer` if it is online. Does
    /// nothing (and connects nowhere) when nothing waits.
    pub async fn flush_chat(&self, peer: PeerId) -> Result<(), EngineError> {
        self.s.chat.flush(peer).await
    }

    // File transfers.

    /// Sends files and folders to `peer`. Resumes an unfinished transfer of the same paths
    /// to the same peer. Progress arrives as [`TransferEvent::Progress`] events.
    pub async fn send_files(
        &self,
        peer: PeerId,
        paths: &[PathBuf],
    ) -> Result<Summary, EngineError> {
        self.add_contact(peer, None).await?;
        self.s.transfers.send(peer, paths).await
    }

    /// Accepts a pending offer into folder `dir` (created if missing).
    pub fn accept_offer(
        &self,
        peer: PeerId,
        id: TransferId,
        dir: PathBuf,
    ) -> Result<(), EngineError> {
        self.s.transfers.decide(peer, id, Decision::Accept(dir))
    }

    /// Declines a pending offer.
    pub fn reject_offer(
        &self,
        peer: PeerId,
        id: TransferId,
        reason: &str,
    ) -> Result<(), EngineError> {
        self.s
            .transfers
            .decide(peer, id, Decision::Reject(reason.to_string()))
    }

    /// Cancels a transfer in either direction; both sides are told, no half-written file
    /// stays in place, and the partial data is removed.
    pub fn cancel_transfer(&self, peer: PeerId, id: TransferId) -> bool {
        self.s.transfers.cancel(peer, id)
    }

    /// Interrupts a transfer in either direction (Ctrl-C on a `send`): both sides keep what
    /// was verified, and the same `send` resumes from there. Returns whether one was running.
    pub fn interrupt_transfer(&self, peer: PeerId, id: TransferId) -> bool {
        self.s.transfers.interrupt(peer, id)
    }

    /// Interrupts every running transfer and waits (a few seconds at most) until each has
    /// recorded its verified chunks and told the peer.
    pub async fn interrupt_transfers(&self) {
        self.s.transfers.interrupt_all().await
    }

    /// Whether an incoming transfer is being received by this engine now.
    pub fn is_receiving(&self, peer: PeerId, id: TransferId) -> bool {
        self.s.transfers.is_receiving(peer, id)
    }

    /// Continues every unfinished outgoing transfer to `peer` (called when it comes back).
    pub async fn resume_transfers(&self, peer: PeerId) {
        self.s.transfers.resume(peer).await
    }

    // Calls.

    /// Calls `peer`; the outcome arrives as [`EngineEvent::Call`] events.
    pub async fn call(&self, peer: PeerId, opts: CallOptions) -> Result<CallId, EngineError> {
        self.add_contact(peer, None).await?;
        self.s.calls.call(peer, opts).await
    }

    /// Starts a group call with `peers` (at most five: six participants with us); each is
    /// invited over its own connection, the outcome arrives as [`EngineEvent::Call`] events
    /// (`Joined` and `Left` per participant).
    pub async fn call_group(
        &self,
        peers: Vec<PeerId>,
        opts: CallOptions,
    ) -> Result<CallId, EngineError> {
        for p in &peers {
            self.add_contact(*p, None).await?;
        }
        Ok(self.s.calls.call_group(peers, opts)?)
    }

    /// Invites `peer` into the current call (a one-to-one call becomes a group call).
    pub async fn add_to_call(&self, peer: PeerId) -> Result<(), EngineError> {
        self.add_contact(peer, None).await?;
        self.s.calls.command(None, Cmd::Add(peer)).await
    }

    /// Accepts the ringing incoming call `call`.
    pub async fn answer(&self, call: CallId, opts: CallOptions) -> Result<(), EngineError> {
        self.s
            .calls
            .command(Some(call), Cmd::Answer(Box::new(opts)))
            .await
    }

    /// Declines the ringing incoming call `call`.
    pub async fn reject_call(&self, call: CallId) -> Result<(), EngineError> {
        self.s.calls.command(Some(call), Cmd::Reject).await
    }

    /// Hangs up the current call (or cancels the one ringing).
    pub async fn hangup(&self) -> Result<(), EngineError> {
        self.s.calls.command(None, Cmd::Hangup).await
    }

    /// Mutes or unmutes our audio in the current call.
    pub async fn set_muted(&self, muted: bool) -> Result<(), EngineError> {
        self.s.calls.command(None, Cmd::Mute(muted)).await
    }

    /// Switches the current call's video to another source (test pattern, file, camera).
    pub async fn set_video_source(&self, src: VideoSource) -> Result<(), EngineError> {
        self.s.calls.command(None, Cmd::Video(src)).await
    }

    /// Turns our video on or off in the current call.
    pub async fn set_camera(&self, on: bool) -> Result<(), EngineError> {
        self.s.calls.command(None, Cmd::Camera(on)).await
    }

    /// Interrupts the running transfers (each records its verified chunks and tells the
    /// peer, so that the same transfer resumes), then closes every connection and the relay
    /// session.
    pub async fn shutdown(&self) {
        self.interrupt_transfers().await;
        self.s.presence.flush().await;
        self.s.ctx.close_all("shutting down");
        self.endpoint().close().await;
    }
}
