//! The peers online as presence reports them (relay or LAN), and whether that list is
//! complete: only a complete list says that a peer missing from it is offline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use p2pcall_proto::PeerId;
use p2pcall_proto::relay::PeerInfo;
use parking_lot::Mutex;

/// The presence list of an endpoint.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    peers: Mutex<BTreeMap<PeerId, PeerInfo>>,
    /// The relay session is up, presence was asked for, and its snapshot arrived.
    complete: AtomicBool,
}

impl Roster {
    /// Replaces the list with a complete snapshot.
    pub(crate) fn replace(&self, list: &[PeerInfo]) {
        {
            let mut p = self.peers.lock();
            p.clear();
            p.extend(list.iter().map(|i| (i.id, i.clone())));
        }
        self.complete.store(true, Ordering::Release);
    }

    /// Empties the list until the next snapshot (a new relay session).
    pub(crate) fn clear(&self) {
        self.peers.lock().clear();
        self.complete.store(false, Ordering::Release);
    }

    /// The list stops being complete (the relay session ended); what it holds stays.
    pub(crate) fn mark_incomplete(&self) {
        self.complete.store(false, Ordering::Release);
    }

    /// Adds or updates a peer.
    pub(crate) fn upsert(&self, info: PeerInfo) {
        self.peers.lock().insert(info.id, info);
    }

    /// Removes a peer; returns what the list held for it.
    pub(crate) fn remove(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.peers.lock().remove(peer)
    }

    /// Several changes under one lock (the caller must not block in `f`).
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut BTreeMap<PeerId, PeerInfo>) -> R) -> R {
        f(&mut self.peers.lock())
    }

    /// The peers online.
    pub(crate) fn list(&self) -> Vec<PeerInfo> {
        self.peers.lock().values().cloned().collect()
    }

    /// Whether the list is complete and `peer` is not in it.
    pub(crate) fn is_offline(&self, peer: &PeerId) -> bool {
        self.complete.load(Ordering::Acquire) && !self.peers.lock().contains_key(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(n: u8) -> PeerInfo {
        PeerInfo {
            id: PeerId::from_bytes([n; 32]),
            name: format!("p{n}"),
            online_since_ms: 0,
        }
    }

    #[test]
    fn only_a_complete_list_says_offline() {
        let r = Roster::default();
        let (a, b) = (info(1), info(2));
        assert!(!r.is_offline(&a.id), "nothing known yet");
        r.replace(std::slice::from_ref(&a));
        assert!(!r.is_offline(&a.id));
        assert!(r.is_offline(&b.id));
        r.upsert(b.clone());
        assert!(!r.is_offline(&b.id));
        assert_eq!(r.remove(&b.id).map(|i| i.name), Some("p2".into()));
        r.mark_incomplete();
        assert!(
            !r.is_offline(&b.id),
            "the session ended: unknown, not offline"
        );
        assert_eq!(r.list().len(), 1);
        r.clear();
        assert!(r.list().is_empty());
        assert!(!r.is_offline(&a.id));
    }
}
