//! Shared body of the frame fuzz targets.

/// Splits `data` into frames; each one either fails to decode or round-trips exactly.
#[macro_export]
macro_rules! frames_round_trip {
    ($data:expr, $ty:ty, $max:expr) => {{
        let mut rest: &[u8] = $data;
        while let Ok(Some((used, raw))) = p2pcall_proto::frame::split(rest, $max) {
            if let Ok(f) = <$ty>::decode(raw) {
                let mut out = Vec::new();
                f.encode(&mut out);
                assert_eq!(out.len(), f.encoded_len());
                let (_, again) = p2pcall_proto::frame::split(&out, $max).unwrap().unwrap();
                assert_eq!(<$ty>::decode(again).unwrap(), f);
            }
            rest = &rest[used..];
        }
    }};
}
