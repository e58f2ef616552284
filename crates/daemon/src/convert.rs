//! Engine types to API messages and back.

use p2pcall_api as api;
use p2pcall_api::{ErrorKind, RpcError};
use p2pcall_core::engine::EngineEvent;
use std::path::PathBuf;
use std::time::Duration;

use p2pcall_core::call::CallError;
use p2pcall_core::transfer::{OfferInfo, Progress, Summary, TransferEvent};
use p2pcall_core::{EngineError, Message, MessageState, PeerId, PeerInfo};
use p2pcall_net::{Event, NetError, PresenceEvent};
use p2pcall_proto::transfer::AbortCode;

/// A peer for the API.
pub(crate) fn peer(p: &PeerInfo) -> api::Peer {
    api::Peer {
        id: p.id.to_hex(),
        name: p.name.clone(),
        online_since_ms: p.online_since_ms,
    }
}

/// A peer from the API.
pub fn peer_from_api(p: &api::Peer) -> Option<PeerInfo> {
    Some(PeerInfo {
        id: p.id.parse().ok()?,
        name: p.name.clone(),
        online_since_ms: p.online_since_ms,
    })
}

/// A contact for the API.
pub fn contact(c: &p2pcall_core::Contact) -> api::Contact {
    api::Contact {
        id: c.peer.to_hex(),
        name: c.shown_name().to_string(),
        announced: c.name.clone(),
        verified: c.verified_ms.is_some(),
        last_seen_ms: c.last_seen_ms,
    }
}

/// What became of a ticket's relay, for the API.
pub fn relay_pin(pin: &p2pcall_core::invite::RelayPin) -> Option<api::RelayPin> {
    use p2pcall_core::invite::RelayPin as Pin;
    let (relay, key, new, conflict) = match pin {
        Pin::NoRelay => return None,
        Pin::Pinned { relay, key } => (relay, key, true, None),
        Pin::AlreadyPinned { relay, key } => (relay, key, false, None),
        Pin::Conflict { relay, key, pinned } => (relay, key, false, Some(pinned.to_hex())),
    };
    Some(api::RelayPin {
        relay: relay.clone(),
        key: key.to_hex(),
        new,
        conflict,
    })
}

/// An offer for the API.
pub(crate) fn offer(o: &OfferInfo, name: Option<String>) -> api::Offer {
    api::Offer {
        id: o.id.to_string(),
        peer: o.peer.to_hex(),
        name,
        files: o.files,
        dirs: o.dirs,
        total_bytes: o.total_bytes,
        tops: o.tops.clone(),
        sample: o.sample.clone(),
    }
}

/// An offer from the API.
pub fn offer_from_api(o: &api::Offer) -> Option<OfferInfo> {
    Some(OfferInfo {
        peer: o.peer.parse().ok()?,
        id: o.id.parse().ok()?,
        files: o.files,
        dirs: o.dirs,
        total_bytes: o.total_bytes,
        tops: o.tops.clone(),
        sample: o.sample.clone(),
    })
}

/// A transfer's progress for the API.
pub(crate) fn progress(p: &Progress) -> api::TransferProgress {
    api::TransferProgress {
        peer: p.peer.to_hex(),
        id: p.id.to_string(),
        outgoing: p.outgoing,
        done_bytes: p.done_bytes,
        total_bytes: p.total_bytes,
        files_done: p.files_done,
        files: p.files,
        rate_bps: p.rate.map(|r| r as u64),
        eta_ms: p.eta.map(|d| d.as_millis() as u64),
    }
}

/// A transfer's progress from the API.
pub fn progress_from_api(p: &api::TransferProgress) -> Option<Progress> {
    Some(Progress {
        peer: p.peer.parse().ok()?,
        id: p.id.parse().ok()?,
        outgoing: p.outgoing,
        done_bytes: p.done_bytes,
        total_bytes: p.total_bytes,
        files_done: p.files_done,
        files: p.files,
        rate: p.rate_bps.map(|r| r as f64),
        eta: p.eta_ms.map(Duration::from_millis),
    })
}

/// A finished transfer for the API.
pub(crate) fn summary(s: &Summary) -> api::TransferSummary {
    let paths = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect();
    api::TransferSummary {
        peer: s.peer.to_hex(),
        id: s.id.to_string(),
        outgoing: s.outgoing,
        files: s.files,
        dirs: s.dirs,
        total_bytes: s.total_bytes,
        resumed_bytes: s.resumed_bytes,
        elapsed_ms: s.elapsed.as_millis() as u64,
        placed: paths(&s.placed),
        skipped: paths(&s.skipped),
        hashes: (s.hashes.iter())
            .map(|(p, h)| (p.clone(), p2pcall_proto::id::hex(h)))
            .collect(),
    }
}

/// A finished transfer from the API.
pub fn summary_from_api(s: &api::TransferSummary) -> Option<Summary> {
    let paths = |v: &[String]| v.iter().map(PathBuf::from).collect();
    Some(Summary {
        peer: s.peer.parse().ok()?,
        id: s.id.parse().ok()?,
        outgoing: s.outgoing,
        files: s.files,
        dirs: s.dirs,
        total_bytes: s.total_bytes,
        resumed_bytes: s.resumed_bytes,
        elapsed: Duration::from_millis(s.elapsed_ms),
        placed: paths(&s.placed),
        skipped: paths(&s.skipped),
        hashes: (s.hashes.iter())
            .map(|(p, h)| Some((p.clone(), p2pcall_proto::id::parse_hex(h)?)))
            .collect::<Option<_>>()?,
    })
}

/// A message for the API.
pub(crate) fn message(m: &Message) -> api::Message {
    api::Message {
        n: m.rowid,
        peer: m.peer.to_hex(),
        outgoing: m.outgoing,
        id: m.id.to_string(),
        seq: m.seq,
        sent_ms: m.sent_ms,
        received_ms: m.received_ms,
        text: m.text.clone(),
        state: m.state.as_str().into(),
        request: m.request,
    }
}

/// A message request for the API.
pub fn message_request(r: &p2pcall_core::MessageRequest) -> api::MessageRequest {
    api::MessageRequest {
        peer: r.peer.to_hex(),
        name: r.name.clone(),
        messages: r.messages,
        first_ms: r.first_ms,
        last_text: r.last_text.clone(),
    }
}

/// A message from the API.
pub fn message_from_api(m: &api::Message) -> Option<Message> {
    Some(Message {
        rowid: m.n,
        peer: m.peer.parse::<PeerId>().ok()?,
        outgoing: m.outgoing,
        id: m.id.parse().ok()?,
        seq: m.seq,
        sent_ms: m.sent_ms,
        received_ms: m.received_ms,
        text: m.text.clone(),
        state: MessageState::parse(&m.state)?,
        request: m.request,
    })
}

/// The API's view of an engine event (`None`: not one subscribers see yet).
pub(crate) fn event(e: &EngineEvent) -> Option<api::Event> {
    use p2pcall_core::chat::ChatEvent;
    Some(match e {
        EngineEvent::Chat(ChatEvent::Received(m)) => api::Event::MessageReceived(message(m)),
        EngineEvent::Chat(ChatEvent::Queued(m)) => api::Event::MessageQueued(message(m)),
        EngineEvent::Chat(ChatEvent::State { peer, id, state }) => api::Event::MessageState {
            peer: peer.to_hex(),
            id: id.to_string(),
            state: state.as_str().into(),
        },
        EngineEvent::Net(Event::Presence(PresenceEvent::Joined(p))) => {
            api::Event::PeerJoined(peer(p))
        }
        EngineEvent::Net(Event::Presence(PresenceEvent::Snapshot(list))) => {
            api::Event::PeersOnline {
                peers: list.iter().map(peer).collect(),
            }
        }
        EngineEvent::Transfer(TransferEvent::Offered(o)) => {
            api::Event::OfferReceived(offer(o, None))
        }
        EngineEvent::Transfer(TransferEvent::Progress(p)) => {
            api::Event::TransferProgress(progress(p))
        }
        EngineEvent::Transfer(TransferEvent::Resumed(o)) => {
            api::Event::TransferResumed(offer(o, None))
        }
        EngineEvent::Transfer(TransferEvent::Finished(s)) => api::Event::TransferDone(summary(s)),
        EngineEvent::Transfer(TransferEvent::Failed {
            peer,
            id,
            outgoing,
            reason,
            resumable,
        }) => api::Event::TransferFailed {
            peer: peer.to_hex(),
            id: id.to_string(),
            outgoing: *outgoing,
            reason: reason.clone(),
            resumable: *resumable,
        },
        EngineEvent::Net(Event::Presence(PresenceEvent::Updated(p))) => {
            api::Event::PeerUpdated(peer(p))
        }
        EngineEvent::Net(Event::Presence(PresenceEvent::Left(id))) => {
            api::Event::PeerLeft { id: id.to_hex() }
        }
        EngineEvent::Call(c) => api::Event::Call(crate::callconv::call_note(c)),
        EngineEvent::Net(Event::RelayConnected { transport, .. }) => api::Event::RelayConnected {
            transport: crate::tools::transport(*transport).into(),
        },
        EngineEvent::Net(Event::RelayDisconnected { reason, retry_in }) => {
            api::Event::RelayDisconnected {
                reason: reason.clone(),
                retry_in_ms: retry_in.as_millis() as u64,
            }
        }
        EngineEvent::Net(Event::RelayRefused { reason, detail }) => api::Event::RelayRefused {
            reason: reason.to_string(),
            detail: detail.clone(),
        },
        EngineEvent::Net(Event::PathChanged {
            peer, path, rtt, ..
        }) => crate::callconv::path_changed(peer, path, *rtt),
        _ => return None,
    })
}

/// The engine event an API event stands for (`None` for [`api::Event::Lagged`], or for
/// anything unreadable), so that a client prints what the engine's own front end would.
pub fn event_from_api(e: &api::Event) -> Option<EngineEvent> {
    use p2pcall_core::chat::ChatEvent;
    let presence = |p| EngineEvent::Net(Event::Presence(p));
    Some(match e {
        api::Event::MessageReceived(m) => {
            EngineEvent::Chat(ChatEvent::Received(message_from_api(m)?))
        }
        api::Event::MessageQueued(m) => EngineEvent::Chat(ChatEvent::Queued(message_from_api(m)?)),
        api::Event::MessageState { peer, id, state } => EngineEvent::Chat(ChatEvent::State {
            peer: peer.parse().ok()?,
            id: id.parse().ok()?,
            state: MessageState::parse(state)?,
        }),
        api::Event::PeersOnline { peers } => presence(PresenceEvent::Snapshot(
            peers.iter().map(peer_from_api).collect::<Option<_>>()?,
        )),
        api::Event::PeerJoined(p) => presence(PresenceEvent::Joined(peer_from_api(p)?)),
        api::Event::PeerUpdated(p) => presence(PresenceEvent::Updated(peer_from_api(p)?)),
        api::Event::PeerLeft { id } => presence(PresenceEvent::Left(id.parse().ok()?)),
        api::Event::TransferProgress(p) => {
            EngineEvent::Transfer(TransferEvent::Progress(progress_from_api(p)?))
        }
        api::Event::Call(n) => EngineEvent::Call(crate::callconv::call_event_from_api(n)?),
        api::Event::PathChanged { peer, path, rtt_us } => {
            EngineEvent::Net(crate::callconv::path_changed_from_api(peer, path, *rtt_us)?)
        }
        api::Event::OfferReceived(o) => {
            EngineEvent::Transfer(TransferEvent::Offered(offer_from_api(o)?))
        }
        api::Event::TransferResumed(o) => {
            EngineEvent::Transfer(TransferEvent::Resumed(offer_from_api(o)?))
        }
        api::Event::TransferDone(s) => {
            EngineEvent::Transfer(TransferEvent::Finished(summary_from_api(s)?))
        }
        api::Event::TransferFailed {
            peer,
            id,
            outgoing,
            reason,
            resumable,
        } => EngineEvent::Transfer(TransferEvent::Failed {
            peer: peer.parse().ok()?,
            id: id.parse().ok()?,
            outgoing: *outgoing,
            reason: reason.clone(),
            resumable: *resumable,
        }),
        // The relay's own facts (its key, our observed address) do not cross the API.
        api::Event::Lagged { .. }
        | api::Event::RelayConnected { .. }
        | api::Event::RelayDisconnected { .. }
        | api::Event::RelayRefused { .. } => return None,
    })
}

/// An engine error as the API reports it (its kind decides the CLI's exit code).
pub fn engine_error(e: &EngineError) -> RpcError {
    let kind = match e {
        EngineError::PeerNotFound { .. }
        | EngineError::NotAContact { .. }
        | EngineError::NoSuchRequest(_) => ErrorKind::PeerNotFound,
        EngineError::Ambiguous { .. } => ErrorKind::Ambiguous,
        EngineError::PeerOffline { .. } => ErrorKind::PeerOffline,
        EngineError::NoPresence(_) => ErrorKind::NoPresence,
        EngineError::NoSuchOffer(_) => ErrorKind::NoSuchOffer,
        EngineError::Ticket(_) | EngineError::OwnTicket => ErrorKind::BadRequest,
        EngineError::Rejected(_) => ErrorKind::Declined,
        EngineError::Aborted {
            code: AbortCode::Interrupted | AbortCode::Io,
            ..
        }
        | EngineError::Stream(_)
        | EngineError::Net(NetError::Connection(_)) => ErrorKind::Interrupted,
        EngineError::Net(NetError::Timeout(_)) => ErrorKind::Timeout,
        EngineError::Net(NetError::PeerKeyMismatch { .. }) => ErrorKind::WrongPeerKey,
        EngineError::Call(CallError::NoSuchCall) => ErrorKind::NoSuchCall,
        EngineError::Call(
            CallError::Source(_)
            | CallError::Sink(_)
            | CallError::File { .. }
            | CallError::Device(_),
        ) => ErrorKind::BadMedia,
        _ => ErrorKind::Failure,
    };
    RpcError::new(kind, p2pcall_core::causes(e))
}
