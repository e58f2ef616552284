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
use p2pcall_store::{Contact, now_ms};
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
        // Noted before anyone waiting for the snapshot wakes: a `flush` that follows
        // `wait` (a command about to exit) then covers these peers.
        if !peers.is_empty() {
            let seen = peers.iter().map(|p| (p.id, p.name.clone())).collect();
            // Fails only once the engine is gone.
            let _ = self.seen.send(Seen::Peers(seen));
        }
        if snapshot {
            self.ready.send_replace(true);
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

    /// Finds the peer a user means. Among the contacts the user chose: the user's name for
    /// one (any case), or a fingerprint prefix (4+ hex digits). Anyone else only by the full
    /// id or a fingerprint prefix of at least [`STRANGER_DIGITS`] hex digits: a name from
    /// the network never picks a peer (anyone can announce any name, and a 4-digit prefix
    /// takes seconds to grind).
    pub(crate) fn resolve(&self, query: &str) -> Result<Resolved, EngineError> {
        let known = self.ctx.store.contacts().unwrap_or_default();
        let contact = |id: &PeerId| known.iter().any(|c| c.peer == *id && c.chosen_ms.is_some());
        if let Ok(id) = query.parse::<PeerId>() {
            return Ok(Resolved {
                peer: id,
                contact: contact(&id),
            });
        }
        let chosen: Vec<&Contact> = known.iter().filter(|c| c.chosen_ms.is_some()).collect();
        let by_name: Vec<&Contact> = (chosen.iter().copied())
            .filter(|c| c.shown_name().to_lowercase() == query.trim().to_lowercase())
            .collect();
        let hits = if by_name.is_empty() {
            chosen
                .iter()
                .copied()
                .filter(|c| c.peer.matches(query))
                .collect()
        } else {
            by_name
        };
        match hits.as_slice() {
            [one] => {
                return Ok(Resolved {
                    peer: one.peer,
                    contact: true,
                });
            }
            [] => {}
            many => {
                return Err(ambiguous(
                    query,
                    many.iter()
                        .map(|c| (c.peer, c.shown_name(), true, c.verified_ms.is_some())),
                ));
            }
        }
        let online = self.online();
        let digits = query.chars().filter(char::is_ascii_hexdigit).count();
        let hex_only = query.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if hex_only && digits >= STRANGER_DIGITS {
            let mut strangers: Vec<(PeerId, &str)> = (online.iter())
                .filter(|p| p.id.matches(query))
                .map(|p| (p.id, p.name.as_str()))
                .collect();
            for c in known.iter().filter(|c| c.peer.matches(query)) {
                if !strangers.iter().any(|(id, _)| *id == c.peer) {
                    strangers.push((c.peer, c.name.as_str()));
                }
            }
            match strangers.as_slice() {
                [(id, _)] => {
                    return Ok(Resolved {
                        peer: *id,
                        contact: false,
                    });
                }
                [] => {}
                many => {
                    let verified = |id: &PeerId| {
                        known
                            .iter()
                            .any(|c| c.peer == *id && c.verified_ms.is_some())
                    };
                    return Err(ambiguous(
                        query,
                        many.iter().map(|(id, n)| (*id, *n, false, verified(id))),
                    ));
                }
            }
        }
        // Strangers online announcing that name: say how to reach them on purpose.
        let named: Vec<String> = (online.iter())
            .filter(|p| p.name.to_lowercase() == query.trim().to_lowercase() || p.id.matches(query))
            .map(|p| format!("{} ({})", p.name, p.id.fingerprint()))
            .collect();
        if !named.is_empty() {
            return Err(EngineError::NotAContact {
                query: query.to_string(),
                strangers: named.join(", "),
            });
        }
        Err(EngineError::PeerNotFound {
            query: query.to_string(),
            online: online.len(),
        })
    }
}

/// Hex digits of a fingerprint prefix that reach a peer who is not a contact.
pub const STRANGER_DIGITS: usize = 8;

/// The peer a user meant, and whether it is one of the user's contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The peer.
    pub peer: PeerId,
    /// A contact the user chose (else reached by its key alone).
    pub contact: bool,
}

/// Several peers match: each with its contact and verified marks.
fn ambiguous<'a>(
    query: &str,
    candidates: impl Iterator<Item = (PeerId, &'a str, bool, bool)>,
) -> EngineError {
    EngineError::Ambiguous {
        query: query.to_string(),
        candidates: candidates
            .map(|(id, name, contact, verified)| {
                let marks = match (contact, verified) {
                    (true, true) => "contact, verified",
                    (true, false) => "contact",
                    (false, true) => "not a contact, verified",
                    (false, false) => "not a contact",
                };
                format!("{name} ({}, {marks})", id.fingerprint())
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Records the peers seen as contacts, in the order seen; what queued up while a write ran
/// goes in the next one, one transaction (a burst of renames costs one disk sync).
async fn record_seen(ctx: Arc<Context>, mut rx: mpsc::UnboundedReceiver<Seen>) {
    while let Some(first) = rx.recv().await {
        let (seen, flushed) = gather(first, &mut rx).await;
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

/// Presence comes in bursts (a snapshot, renames, a crowd joining): what arrives within one
/// [`PRESENCE_BATCH`] after `first`, each peer once with its newest name, is written in one
/// transaction (one fsync) instead of one per event. A flush request ends the gathering.
async fn gather(
    first: Seen,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
) -> (
    std::collections::HashMap<PeerId, String>,
    Vec<oneshot::Sender<()>>,
) {
    let until = tokio::time::Instant::now() + PRESENCE_BATCH;
    let mut seen = std::collections::HashMap::new();
    let mut flushed = Vec::new();
    let mut next = Some(first);
    while let Some(m) = next.take() {
        match m {
            Seen::Peers(p) => seen.extend(p),
            Seen::Flush(done) => flushed.push(done),
        }
        next = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(_) if !flushed.is_empty() => None,
            Err(_) => tokio::time::timeout_at(until, rx.recv())
                .await
                .ok()
                .flatten(),
        };
    }
    (seen, flushed)
}

/// How long the contacts writer gathers presence before writing it.
const PRESENCE_BATCH: Duration = Duration::from_millis(250);

/// What the contacts writer is handed.
#[derive(Debug)]
enum Seen {
    /// Peers seen online (id, name).
    Peers(Vec<(PeerId, String)>),
    /// Answer once everything before is recorded.
    Flush(oneshot::Sender<()>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_presence_is_gathered_into_one_write() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let peer = |n: u8| PeerId::from_bytes([n; 32]);
        // A renamer (49 renames a second) and a crowd joining, over 200 ms.
        let feed = tokio::spawn(async move {
            for i in 0..10u8 {
                tx.send(Seen::Peers(vec![(peer(1), format!("name {i}"))]))
                    .unwrap();
                tx.send(Seen::Peers(vec![(peer(10 + i), "joined".into())]))
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx
        });
        let first = rx.recv().await.unwrap();
        let (seen, flushed) = gather(first, &mut rx).await;
        // One batch: every peer once, the renamer under its newest name.
        assert_eq!(seen.len(), 11);
        assert_eq!(seen[&peer(1)], "name 9");
        assert!(flushed.is_empty());
        // A flush ends the gathering at once.
        let tx = feed.await.unwrap();
        let (done, _wait) = oneshot::channel();
        tx.send(Seen::Peers(vec![(peer(2), "x".into())])).unwrap();
        tx.send(Seen::Flush(done)).unwrap();
        let t0 = tokio::time::Instant::now();
        let first = rx.recv().await.unwrap();
        let (seen, flushed) = gather(first, &mut rx).await;
        assert_eq!((seen.len(), flushed.len()), (1, 1));
        assert_eq!(tokio::time::Instant::now(), t0);
    }
}
