//! Local API lines: any bytes, split into lines, either fail to decode or round-trip exactly;
//! the same bytes as a video frame header decode only to a header that encodes back to them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_api::video::{HEADER_LEN, VideoHeader};
use p2pcall_api::{Frame, Lines};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = VideoHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..HEADER_LEN]);
    }
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
