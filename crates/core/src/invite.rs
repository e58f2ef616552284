//! Invitations: the ticket that tells others how to reach this identity, and contacts added
//! from someone else's ticket (with the relay it names, pinned).

use p2pcall_proto::PeerId;
pub use p2pcall_proto::ticket::{Ticket, TicketError, TicketRelay, valid_relay_addr};
use p2pcall_store::Store;

use crate::EngineError;
use crate::settings::relay_name;

/// What adding a ticket did about the relay it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPin {
    /// The ticket names no relay (a LAN-only identity).
    NoRelay,
    /// The relay's key is pinned now: it was not before.
    Pinned {
        /// The relay, `host:port`.
        relay: String,
        /// Its key.
        key: PeerId,
    },
    /// The same key was pinned for this relay already.
    AlreadyPinned {
        /// The relay, `host:port`.
        relay: String,
        /// Its key.
        key: PeerId,
    },
    /// Another key is pinned for this relay: it stays pinned (a ticket alone never replaces a
    /// pinned key; `--accept-relay-key` does).
    Conflict {
        /// The relay, `host:port`.
        relay: String,
        /// The key the ticket names.
        key: PeerId,
        /// The key pinned, which stays.
        pinned: PeerId,
    },
}

/// The outcome of [`add_ticket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invited {
    /// The new contact.
    pub peer: PeerId,
    /// What became of the ticket's relay.
    pub relay: RelayPin,
}

/// Makes the ticket's peer a contact (under `petname`, else the name the ticket suggests; a
/// contact already known keeps the name the user gave it) and pins the ticket's relay key
/// unless another key is pinned for that relay.
pub fn add_ticket(
    store: &Store,
    me: &PeerId,
    ticket: &Ticket,
    petname: Option<&str>,
    now_ms: u64,
) -> Result<Invited, EngineError> {
    if ticket.peer == *me {
        return Err(EngineError::OwnTicket);
    }
    let relay = match &ticket.relay {
        None => RelayPin::NoRelay,
        Some(r) => {
            let relay = relay_name(&r.addr);
            match store.relay_key(&relay)? {
                Some(pinned) if pinned == r.key => RelayPin::AlreadyPinned { relay, key: r.key },
                Some(pinned) => RelayPin::Conflict {
                    relay,
                    key: r.key,
                    pinned,
                },
                None => {
                    store.pin_relay_key(&relay, &r.key, now_ms)?;
                    RelayPin::Pinned { relay, key: r.key }
                }
            }
        }
    };
    store.choose_contact(&ticket.peer, petname, &ticket.name, now_ms)?;
    Ok(Invited {
        peer: ticket.peer,
        relay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(peer: u8, name: &str, relay: Option<(&str, u8)>) -> Ticket {
        Ticket {
            peer: PeerId::from_bytes([peer; 32]),
            name: name.into(),
            relay: relay.map(|(addr, key)| TicketRelay {
                addr: addr.into(),
                key: PeerId::from_bytes([key; 32]),
            }),
        }
    }

    fn contact(store: &Store, peer: &PeerId) -> p2pcall_store::Contact {
        store
            .contacts()
            .unwrap()
            .into_iter()
            .find(|c| c.peer == *peer)
            .unwrap()
    }

    #[test]
    fn a_ticket_adds_a_contact_and_pins_its_relay_once() {
        let store = Store::open_in_memory().unwrap();
        let me = PeerId::from_bytes([1; 32]);
        let bob = ticket(2, "Bob", Some(("relay.example.org:7700", 9)));
        let added = add_ticket(&store, &me, &bob, None, 1).unwrap();
        assert_eq!(
            added.relay,
            RelayPin::Pinned {
                relay: "relay.example.org:7700".into(),
                key: PeerId::from_bytes([9; 32]),
            }
        );
        let c = contact(&store, &bob.peer);
        assert_eq!(c.shown_name(), "Bob");
        assert_eq!(
            store.trust(&bob.peer).unwrap(),
            p2pcall_store::Trust::Contact
        );
        assert_eq!(
            store.relay_key("relay.example.org:7700").unwrap(),
            Some(PeerId::from_bytes([9; 32]))
        );

        // Bob again, renamed by the user; a second ticket keeps that name.
        add_ticket(&store, &me, &bob, Some("Bob (work)"), 2).unwrap();
        let again = add_ticket(&store, &me, &ticket(2, "Robert", None), None, 3).unwrap();
        assert_eq!(again.relay, RelayPin::NoRelay);
        let c = contact(&store, &bob.peer);
        assert_eq!(c.shown_name(), "Bob (work)");

        // Someone else's ticket naming the same relay with another key changes no pin.
        let carol = ticket(3, "Carol", Some(("relay.example.org", 8)));
        let added = add_ticket(&store, &me, &carol, None, 4).unwrap();
        assert_eq!(
            added.relay,
            RelayPin::Conflict {
                relay: "relay.example.org:7700".into(),
                key: PeerId::from_bytes([8; 32]),
                pinned: PeerId::from_bytes([9; 32]),
            }
        );
        assert_eq!(
            store.relay_key("relay.example.org:7700").unwrap(),
            Some(PeerId::from_bytes([9; 32]))
        );
        let same = ticket(4, "Dave", Some(("relay.example.org:7700", 9)));
        assert!(matches!(
            add_ticket(&store, &me, &same, None, 5).unwrap().relay,
            RelayPin::AlreadyPinned { .. }
        ));

        // One's own ticket is not a contact.
        assert!(matches!(
            add_ticket(&store, &me, &ticket(1, "me", None), None, 6),
            Err(EngineError::OwnTicket)
        ));
    }
}
