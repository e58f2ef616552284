//! Message requests: people who are not contacts wrote; their messages wait apart until the
//! user accepts them (they become a contact) or deletes them.

use p2pcall_proto::PeerId;
pub use p2pcall_store::{MAX_REQUEST_MESSAGES_PER_PEER, MAX_REQUEST_PEERS, MessageRequest};

use crate::EngineError;

/// The sender among `requests` that `query` names: its full id or a fingerprint prefix of 4+
/// hex digits (the list is the user's to see: no name a stranger chose finds it).
pub fn find(requests: &[MessageRequest], query: &str) -> Result<PeerId, EngineError> {
    let found: Vec<&MessageRequest> = requests.iter().filter(|r| r.peer.matches(query)).collect();
    match found.as_slice() {
        [one] => Ok(one.peer),
        [] => Err(EngineError::NoSuchRequest(query.to_string())),
        many => Err(EngineError::Ambiguous {
            query: query.to_string(),
            candidates: (many.iter())
                .map(|r| format!("{} ({}, not a contact)", r.name, r.peer.fingerprint()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_found_by_fingerprint_never_by_name() {
        let req = |b: u8, name: &str| MessageRequest {
            peer: PeerId::from_bytes([b; 32]),
            name: name.into(),
            messages: 1,
            first_ms: 0,
            last_text: String::new(),
        };
        let list = [req(1, "bob"), req(2, "eve")];
        let fp = list[0].peer.fingerprint().to_string();
        assert_eq!(find(&list, &fp[..4]).unwrap(), list[0].peer);
        assert_eq!(find(&list, &list[1].peer.to_hex()).unwrap(), list[1].peer);
        assert!(matches!(
            find(&list, "bob"),
            Err(EngineError::NoSuchRequest(_))
        ));
        assert!(matches!(
            find(&list, "12"),
            Err(EngineError::NoSuchRequest(_))
        ));
    }
}
