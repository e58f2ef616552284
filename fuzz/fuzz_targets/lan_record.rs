//! LAN announcements (mDNS TXT rdata): any bytes either fail to decode or round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use p2pcall_proto::lan::LanRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = LanRecord::from_txt(LanRecord::split_rdata(data)) {
        let again = LanRecord::from_txt(LanRecord::split_rdata(&r.to_rdata())).unwrap();
        assert_eq!(again, r);
    }
});
