//! Engine types to API messages and back.

use p2pcall_api as api;
use p2pcall_api::{ErrorKind, RpcError};
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::{EngineError, Message, MessageState, PeerId, PeerInfo};
use p2pcall_net::{Event, NetError, PresenceEvent};

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
    })
}

/// The API's view of an engine event (`None`: not one subscribers see yet).
pub(crate) fn event(e: &EngineEvent) -> Option<api::Event> {
    use p2pcall_core::chat::ChatEvent;
    Some(match e {
        EngineEvent::Chat(ChatEvent::Received(m)) => api::Event::MessageReceived(message(m)),
        EngineEvent::Chat(ChatEvent::State { peer, id, state }) => api::Event::MessageState {
            peer: peer.to_hex(),
            id: id.to_string(),
            state: state.as_str().into(),
        },
        EngineEvent::Net(Event::Presence(PresenceEvent::Joined(p) | PresenceEvent::Updated(p))) => {
            api::Event::PeerOnline(peer(p))
        }
        EngineEvent::Net(Event::Presence(PresenceEvent::Left(id))) => {
            api::Event::PeerOffline { id: id.to_hex() }
        }
        _ => return None,
    })
}

/// An engine error as the API reports it (its kind decides the CLI's exit code).
pub fn engine_error(e: &EngineError) -> RpcError {
    let kind = match e {
        EngineError::PeerNotFound { .. } => ErrorKind::PeerNotFound,
        EngineError::Ambiguous { .. } => ErrorKind::Ambiguous,
        EngineError::PeerOffline { .. } => ErrorKind::PeerOffline,
        EngineError::NoPresence(_) => ErrorKind::NoPresence,
        EngineError::Net(NetError::Timeout(_)) => ErrorKind::Timeout,
        _ => ErrorKind::Failure,
    };
    RpcError::new(kind, error_text(e))
}

/// Each cause once, as the CLI prints errors.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}
