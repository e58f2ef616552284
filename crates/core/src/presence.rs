//! Presence and contacts: who is online (as the relay or the LAN reports it), what we call
//! them, and which peer a user means when they type a name or a fingerprint prefix.
//!
//! Every peer presence reports is remembered as a contact (its name, when last seen) by one
//! writer task, in order, a transaction per batch, on a blocking thread ([`Context::db`]),
//! behind the event: presence events never wait for the disk.

use std::sync::Arc;
use std::time::Duration;

use p2pcall_proto::PeerId;
use p2pcall_proto::relay::PeerInfo;
use p2pcall_store::now_ms;
use tokio::sync::{mpsc, oneshot, watch};

use crate::context::Context;
use crate::error::EngineError;

/// The presence service.
#[derive(Debug)]
pub(crate) struct Presence {
    ctx: Arc<Context>,
    /// Whether the first presence snapshot arrived.
    ready: watch::Sender<bool>,
    /// Peers seen, to record as contacts (in order, by one writer task).
    seen: mpsc::UnboundedSender<Seen>,
}

impl Presence {
    /// The service, and its contacts writer (on the runtime: call from within it).
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        let (seen, rx) = mpsc::unbounded_channel();
        tokio::spawn(record_seen(ctx.clone(), rx));
        Self {
            ctx,
            ready: watch::Sender::new(false),
            seen,
        }
    }

    /// Notes peers presence reported: a whole snapshot, or one peer that joined or changed.
    /// They are recorded as contacts behind the event, not before it: a presence event
    /// never waits for the disk.
    pub(crate) fn observe(&self, peers: &[PeerInfo], snapshot: bool) {
        if snapshot {
            self.ready.send_replace(true);
        }
        if !peers.is_empty() {
            let seen = peers.iter().map(|p| (p.id, p.name.clone())).collect();
            // Fails only once the engine is gone.
            let _ = self.seen.send(Seen::Peers(seen));
        }
    }

    /// Waits until every peer noted so far is recorded (before the engine stops).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.seen.send(Seen::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits for the first presence snapshot and returns the peers online.
    pub(crate) async fn wait(&self, timeout: Duration) -> Result<Vec<PeerInfo>, EngineError> {
        let mut rx = self.ready.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(self.online()),
            _ => Err(EngineError::NoPresence(timeout)),
        }
    }

    /// Peers online, sorted by name.
    pub(crate) fn online(&self) -> Vec<PeerInfo> {
        let mut v = self.ctx.endpoint.online_peers();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Finds the peer a user means: a full id, a fingerprint prefix, or an exact display
    /// name, among the peers online first and then among the contacts.
    pub(crate) fn resolve(&self, query: &str) -> Result<PeerId, EngineError> {
        if let Ok(id) = query.parse::<PeerId>() {
            return Ok(id);
        }
        let online = self.online();
        let hits = matching(&online, query, |p| (p.id, p.name.as_str()));
        if hits.is_empty() {
            let contacts = self.ctx.store.contacts().unwrap_or_default();
            if let [one] = matching(&contacts, query, |c| (c.peer, c.name.as_str())).as_slice() {
                return Ok(one.peer);
            }
        }
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
}

/// Records the peers seen as contacts, in the order seen; what queued up while a write ran
/// goes in the next one, one transaction (a burst of renames costs one disk sync).
async fn record_seen(ctx: Arc<Context>, mut rx: mpsc::UnboundedReceiver<Seen>) {
    while let Some(first) = rx.recv().await {
        let mut seen = Vec::new();
        let mut flushed = Vec::new();
        for m in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match m {
                Seen::Peers(p) => seen.extend(p),
                Seen::Flush(done) => flushed.push(done),
            }
        }
        if seen.is_empty() {
            for f in flushed {
                let _ = f.send(());
            }
            continue;
        }
        let r = (ctx)
            .db(move |s| {
                let refs: Vec<(PeerId, &str)> =
                    seen.iter().map(|(p, n)| (*p, n.as_str())).collect();
                s.touch_contacts(&refs, now_ms())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!("recording the peers seen online: {e}");
        }
        for f in flushed {
            let _ = f.send(());
        }
    }
}

/// What the contacts writer is handed.
#[derive(Debug)]
enum Seen {
    /// Peers seen online (id, name).
    Peers(Vec<(PeerId, String)>),
    /// Answer once everything before is recorded.
    Flush(oneshot::Sender<()>),
}

/// The entries whose fingerprint starts with `query`, or else those named exactly `query`.
fn matching<'a, T>(all: &'a [T], query: &str, key: impl Fn(&T) -> (PeerId, &str)) -> Vec<&'a T> {
    let by_fp: Vec<&T> = all.iter().filter(|x| key(x).0.matches(query)).collect();
    if by_fp.is_empty() {
        all.iter().filter(|x| key(x).1 == query).collect()
    } else {
        by_fp
    }
}
