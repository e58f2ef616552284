//! Invitation tickets (text a user pastes): any input either fails to decode or round-trips,
//! and a decoded ticket's name and relay address are ones a ticket may hold.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::ticket::{Ticket, valid_name, valid_relay_addr};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for candidate in [text.to_string(), format!("p2pcall:{text}")] {
        if let Ok(t) = Ticket::decode(&candidate) {
            assert!(valid_name(&t.name));
            assert!(t.relay.as_ref().is_none_or(|r| valid_relay_addr(&r.addr)));
            assert_eq!(Ticket::decode(&t.encode()).as_ref(), Ok(&t));
        }
    }
});
