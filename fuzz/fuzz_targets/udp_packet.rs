//! Non-QUIC UDP packets (relay headers, reflection, probes): decode, round-trip, and the
//! relay's in-place header rewrite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::{Control, RelayRecv, RelaySend};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Control::decode(data) {
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(out.len(), c.encoded_len());
        assert_eq!(Control::decode(&out).unwrap(), c);
        let _ = c.verify(&[0u8; 32]);
    }
    if let Ok(r) = RelaySend::decode(data) {
        let payload = r.payload.to_vec();
        let mut buf = data.to_vec();
        let from = PeerId::from_bytes([7; 32]);
        let start = RelaySend::rewrite_in_place(&mut buf, &from);
        let got = RelayRecv::decode(&buf[start..]).unwrap();
        assert_eq!(got.from, from);
        assert_eq!(got.payload, &payload[..]);
    }
    let _ = RelayRecv::decode(data);
});
