//! Local API lines: any bytes, split into lines, either fail to decode or round-trip exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_api::{Frame, Lines};

fuzz_target!(|data: &[u8]| {
    let mut lines = Lines::default();
    lines.push(data);
    while let Ok(Some(line)) = lines.next_line() {
        if let Ok(f) = Frame::decode(&line) {
            let out = f.encode();
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(Frame::decode(&out[..out.len() - 1]).unwrap(), f);
        }
    }
});
