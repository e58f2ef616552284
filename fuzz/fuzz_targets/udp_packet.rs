//! Non-QUIC UDP packets (relay headers, reflection, probes): decode, round-trip, and the
//! relay's in-place header rewrite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::PeerId;
use p2pcall_proto::packet::{Control, RelayHop, RelayRecv, RelaySend};

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
        // The same packet crossing to another relay, then delivered there.
        let mut buf = data.to_vec();
        RelaySend::rewrite_to_hop(&mut buf, &[3; 8], 42, &from);
        let hop = RelayHop::decode(&buf).unwrap();
        assert_eq!((hop.token, hop.route, hop.from), ([3; 8], 42, from));
        assert_eq!(hop.payload, &payload[..]);
        let start = RelayHop::rewrite_in_place(&mut buf);
        let got = RelayRecv::decode(&buf[start..]).unwrap();
        assert_eq!((got.from, got.payload), (from, &payload[..]));
    }
    if let Ok(h) = RelayHop::decode(data) {
        let mut out = Vec::new();
        RelayHop::write_header(&mut out, &h.token, h.route, &h.from);
        out.extend_from_slice(h.payload);
        assert_eq!(out, data);
    }
    let _ = RelayRecv::decode(data);
});
