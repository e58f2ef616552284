//! Call frames: any bytes either fail to decode or round-trip exactly.
#![no_main]
#[path = "common.rs"]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    frames_round_trip!(data, p2pcall_proto::call::CallFrame, p2pcall_proto::call::MAX_FRAME);
});
