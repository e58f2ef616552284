//! Relay cluster heartbeats (from NATS, i.e. from any publisher the cluster admits): any
//! bytes either fail to decode or round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::cluster::Heartbeat;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Heartbeat::decode(data) {
        assert_eq!(Heartbeat::decode(&h.encode()).as_ref(), Ok(&h));
    }
});
