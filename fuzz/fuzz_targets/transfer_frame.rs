//! Transfer control frames and data-record headers: any bytes either fail to decode or
//! round-trip exactly.
#![no_main]
#[path = "common.rs"]
mod common;
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::transfer::{DATA_HEADER_LEN, DataHeader};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..DATA_HEADER_LEN) {
        if let Ok(h) = <[u8; DATA_HEADER_LEN]>::try_from(h) {
            if let Ok(d) = DataHeader::decode(&h) {
                assert_eq!(DataHeader::decode(&d.encode()), Ok(d));
            }
        }
    }
    frames_round_trip!(
        data,
        p2pcall_proto::transfer::TransferFrame,
        p2pcall_proto::transfer::MAX_FRAME
    );
});
