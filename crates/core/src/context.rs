//! The bottom of the engine, shared by every service: the network endpoint, the local
//! database, and the one connection kept per peer.
//!
//! A connection made here (dialed by a service, or accepted by the engine) is *adopted*:
//! recorded for reuse and handed, through a channel, to the engine, which serves the
//! streams and datagrams the peer opens on it. The channel keeps this module free of any
//! knowledge of the services above it.

use std::collections::HashMap;
use std::sync::Arc;

use p2pcall_net::{Endpoint, PeerConnection};
use p2pcall_proto::PeerId;
use p2pcall_store::Store;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::EngineError;

/// What every service reaches: the endpoint, the store, the peer connections.
#[derive(Debug)]
pub(crate) struct Context {
    /// The network endpoint (relay session, presence, direct paths).
    pub(crate) endpoint: Endpoint,
    /// Chat history, contacts and transfer state.
    pub(crate) store: Arc<Store>,
    connections: Mutex<HashMap<PeerId, PeerConnection>>,
    adopted: mpsc::UnboundedSender<PeerConnection>,
}

impl Context {
    /// A context, and the receiver of the connections to serve.
    pub(crate) fn new(
        endpoint: Endpoint,
        store: Arc<Store>,
    ) -> (Self, mpsc::UnboundedReceiver<PeerConnection>) {
        let (adopted, rx) = mpsc::unbounded_channel();
        let ctx = Self {
            endpoint,
            store,
            connections: Mutex::default(),
            adopted,
        };
        (ctx, rx)
    }

    /// Runs `f` on the store on a blocking thread. SQLite syncs every commit to disk, and
    /// the store's one connection is behind a mutex that a syncing caller holds: neither may
    /// stall the runtime's workers, so async code reaches the store only through here.
    pub(crate) async fn db<T, E>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, EngineError>
    where
        T: Send + 'static,
        E: Into<EngineError> + Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(Into::into),
            Err(e) => Err(EngineError::Blocking(e)),
        }
    }

    /// Our identity.
    pub(crate) fn id(&self) -> PeerId {
        self.endpoint.id()
    }

    /// Records `conn` as the connection to its peer and has the engine serve it.
    pub(crate) fn adopt(&self, conn: PeerConnection) {
        self.connections.lock().insert(conn.peer(), conn.clone());
        // Fails only once the engine is gone, when nothing is served any more.
        let _ = self.adopted.send(conn);
    }

    /// Forgets the connection to `peer` if it is closed (a newer one stays).
    pub(crate) fn forget_closed(&self, peer: &PeerId) {
        let mut c = self.connections.lock();
        if c.get(peer)
            .is_some_and(|c| c.quic().close_reason().is_some())
        {
            c.remove(peer);
        }
    }

    /// Whether a live connection to `peer` exists.
    pub(crate) fn has_connection(&self, peer: PeerId) -> bool {
        self.connections
            .lock()
            .get(&peer)
            .is_some_and(|c| c.quic().close_reason().is_none())
    }

    /// Whether `peer` is online now, or connected to us.
    pub(crate) fn reachable(&self, peer: PeerId) -> bool {
        self.endpoint.online_peers().iter().any(|p| p.id == peer) || self.has_connection(peer)
    }

    /// The name we know `peer` by (its fingerprint if none).
    pub(crate) fn peer_name(&self, peer: &PeerId) -> String {
        self.endpoint
            .online_peers()
            .into_iter()
            .find(|p| p.id == *peer)
            .map(|p| p.name)
            .or_else(|| self.store.contact_name(peer).ok().flatten())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| peer.fingerprint().to_string())
    }

    /// The open connection to `peer`, or a new one. A connection made before the peer last
    /// registered with the relay is checked first (the peer may have restarted, leaving it
    /// dead until its idle timeout). A peer the relay reports offline fails at once with
    /// [`EngineError::PeerOffline`].
    pub(crate) async fn connect(&self, peer: PeerId) -> Result<PeerConnection, EngineError> {
        let existing = self.connections.lock().get(&peer).cloned();
        if let Some(c) = existing
            && c.quic().close_reason().is_none()
            && (!c.is_suspect() || c.check_alive().await)
        {
            return Ok(c);
        }
        if self.endpoint.peer_offline(&peer) {
            return Err(EngineError::PeerOffline {
                peer,
                name: self.peer_name(&peer),
                fingerprint: peer.fingerprint().to_string(),
            });
        }
        let conn = self.endpoint.connect(peer).await?;
        self.adopt(conn.clone());
        Ok(conn)
    }

    /// Closes every peer connection with `reason`.
    pub(crate) fn close_all(&self, reason: &str) {
        let conns: Vec<_> = self.connections.lock().drain().map(|(_, v)| v).collect();
        for c in conns {
            c.close(reason);
        }
    }
}
