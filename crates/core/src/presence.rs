//! Presence and contacts: who is online (as the relay or the LAN reports it), what we call
//! them, and which peer a user means when they type a name or a fingerprint prefix.
//!
//! Every peer presence reports is remembered as a contact (its name, when last seen) in one
//! transaction per report, on a blocking thread ([`Context::db`]).

use std::sync::Arc;
use std::time::Duration;

use p2pcall_proto::PeerId;
use p2pcall_proto::relay::PeerInfo;
use p2pcall_store::now_ms;
use tokio::sync::watch;

use crate::context::Context;
use crate::error::EngineError;

/// The presence service.
#[derive(Debug)]
pub(crate) struct Presence {
    ctx: Arc<Context>,
    /// Whether the first presence snapshot arrived.
    ready: watch::Sender<bool>,
}

impl Presence {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            ready: watch::Sender::new(false),
        }
    }

    /// Records peers presence reported: a whole snapshot, or one peer that joined or changed.
    pub(crate) async fn observe(&self, peers: &[PeerInfo], snapshot: bool) {
        if snapshot {
            self.ready.send_replace(true);
        }
        if peers.is_empty() {
            return;
        }
        let seen: Vec<(PeerId, String)> = peers.iter().map(|p| (p.id, p.name.clone())).collect();
        let r = (self.ctx)
            .db(move |s| {
                let refs: Vec<(PeerId, &str)> =
                    seen.iter().map(|(p, n)| (*p, n.as_str())).collect();
                s.touch_contacts(&refs, now_ms())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!("recording the peers seen online: {e}");
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

/// The entries whose fingerprint starts with `query`, or else those named exactly `query`.
fn matching<'a, T>(all: &'a [T], query: &str, key: impl Fn(&T) -> (PeerId, &str)) -> Vec<&'a T> {
    let by_fp: Vec<&T> = all.iter().filter(|x| key(x).0.matches(query)).collect();
    if by_fp.is_empty() {
        all.iter().filter(|x| key(x).1 == query).collect()
    } else {
        by_fp
    }
}
