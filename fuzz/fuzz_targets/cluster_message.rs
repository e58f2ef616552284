//! What relays of a cluster send each other through NATS besides heartbeats (presence
//! changes, inbox messages): any bytes either fail to decode or round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::cluster::{Deltas, RelayMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Deltas::decode(data) {
        assert_eq!(Deltas::decode(&d.encode()).as_ref(), Ok(&d));
    }
    if let Ok(m) = RelayMsg::decode(data) {
        assert_eq!(RelayMsg::decode(&m.encode()).as_ref(), Ok(&m));
    }
});
