//! Media datagrams: any bytes either fail to decode or round-trip exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::media::MediaDatagram;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = MediaDatagram::decode(data) {
        let mut out = Vec::new();
        d.encode(&mut out);
        assert_eq!(out.len(), d.encoded_len());
        assert_eq!(MediaDatagram::decode(&out).unwrap(), d);
    }
});
