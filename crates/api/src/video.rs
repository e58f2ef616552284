//! Call video for a front end in another process: after [`crate::Request::VideoFeed`] is
//! answered, that connection carries only these frames, engine to client (binary, not
//! JSON: a 640×360 picture is 345,600 bytes, 30 times a second).
//!
//! A frame is a 44-byte header and the picture in I420 (the Y plane, then U, then V, each
//! row after row):
//!
//! ```text
//! b"P2V" | which: u8 (0 what we send, 1 what a participant sends) | width: u16 LE
//!        | height: u16 LE | length: u32 LE (= width × height × 3 / 2)
//!        | participant: 32 bytes (its id; zeros for what we send)
//! ```

use crate::ApiError;

/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 44;
/// Largest width or height a frame may have.
pub const MAX_SIDE: u16 = 4096;
const MAGIC: &[u8; 3] = b"P2V";

/// Which side of a call a picture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What we send (the preview).
    Local,
    /// What a participant sends (its id).
    Remote([u8; 32]),
}

/// A frame's header: what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoHeader {
    /// Which picture.
    pub side: Side,
    /// Width in pixels (even).
    pub width: u16,
    /// Height in pixels (even).
    pub height: u16,
}

impl VideoHeader {
    /// Bytes of the I420 picture after the header.
    pub fn body_len(&self) -> usize {
        usize::from(self.width) * usize::from(self.height) * 3 / 2
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..3].copy_from_slice(MAGIC);
        b[3] = match self.side {
            Side::Local => 0,
            Side::Remote(id) => {
                b[12..44].copy_from_slice(&id);
                1
            }
        };
        b[4..6].copy_from_slice(&self.width.to_le_bytes());
        b[6..8].copy_from_slice(&self.height.to_le_bytes());
        b[8..12].copy_from_slice(&(self.body_len() as u32).to_le_bytes());
        b
    }

    /// Reads a header; anything else (another magic, odd or oversized sides, a length that
    /// does not match them) is refused, and the connection must end.
    pub fn decode(b: &[u8]) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::Malformed(format!("video frame header: {why}"));
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("too short"))?;
        if &b[..3] != MAGIC {
            return Err(bad("not a video frame"));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[12..44]);
        let side = match b[3] {
            0 if id == [0; 32] => Side::Local,
            1 => Side::Remote(id),
            n => return Err(bad(&format!("side {n}"))),
        };
        let width = u16::from_le_bytes([b[4], b[5]]);
        let height = u16::from_le_bytes([b[6], b[7]]);
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(bad(&format!("size {width}x{height}")));
        }
        if width % 2 == 1 || height % 2 == 1 {
            return Err(bad(&format!("odd size {width}x{height}")));
        }
        let h = Self {
            side,
            width,
            height,
        };
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        if len != h.body_len() {
            return Err(bad(&format!("{len} bytes for {width}x{height}")));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn headers_round_trip(remote in proptest::option::of(any::<[u8; 32]>()), w in 1u16..=2048, h in 1u16..=2048) {
            let hdr = VideoHeader {
                side: remote.map_or(Side::Local, Side::Remote),
                width: w * 2,
                height: h * 2,
            };
            prop_assert_eq!(VideoHeader::decode(&hdr.encode()).unwrap(), hdr);
        }

        #[test]
        fn any_bytes_decode_or_are_refused(b in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(h) = VideoHeader::decode(&b) {
                prop_assert_eq!(&h.encode()[..], &b[..HEADER_LEN]);
            }
        }
    }

    #[test]
    fn lying_headers_are_refused() {
        let good = VideoHeader {
            side: Side::Remote([7; 32]),
            width: 640,
            height: 360,
        }
        .encode();
        assert_eq!(u32::from_le_bytes(good[8..12].try_into().unwrap()), 345_600);
        let mut long = good;
        long[8] ^= 1;
        assert!(VideoHeader::decode(&long).is_err(), "length");
        let mut odd = good;
        odd[4] = 0x81;
        assert!(VideoHeader::decode(&odd).is_err(), "odd width");
        let mut huge = good;
        huge[6..8].copy_from_slice(&5000u16.to_le_bytes());
        assert!(VideoHeader::decode(&huge).is_err(), "oversized");
        assert!(VideoHeader::decode(&good[..11]).is_err(), "short");
        assert!(
            VideoHeader::decode(b"{\"jsonrpc\":\"2.0\"}").is_err(),
            "JSON"
        );
    }
}
