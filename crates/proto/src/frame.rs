//! The frame envelope used on every reliable byte stream (relay control, peer control).
//!
//! ```text
//! +----------------+---------+------+-----------------+
//! | length: u32 BE | version | type | body            |
//! +----------------+---------+------+-----------------+
//!   length counts version + type + body
//! ```
//!
//! A reader first calls [`split`] on its buffered bytes: it either asks for more input, yields
//! one complete frame, or fails (oversized frame, wrong version) so the caller closes the
//! connection with the error as its reason.

use bytes::BufMut;

use crate::{DecodeError, PROTOCOL_VERSION};

/// Bytes of envelope before the body: length (4), version (1), type (1).
pub const HEADER_LEN: usize = 6;

/// A frame borrowed from a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// The frame type byte.
    pub ty: u8,
    /// The body bytes.
    pub body: &'a [u8],
}

/// Tries to take one frame from the front of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some((consumed, frame)))` for a complete
/// frame. Fails before the body arrives when the declared length exceeds `max_len` (so a peer
/// cannot make us buffer a huge frame) or the version is not ours.
pub fn split(buf: &[u8], max_len: usize) -> Result<Option<(usize, RawFrame<'_>)>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < 2 {
        return Err(DecodeError::Truncated {
            field: "frame header",
        });
    }
    if len > max_len {
        return Err(DecodeError::TooLong {
            field: "frame",
            len,
            max: max_len,
        });
    }
    if buf.len() >= 5 && buf[4] != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(buf[4]));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let frame = RawFrame {
        ty: buf[5],
        body: &buf[HEADER_LEN..4 + len],
    };
    Ok(Some((4 + len, frame)))
}

/// Appends an envelope for a frame of type `ty` whose body `write_body` appends.
pub fn write(out: &mut Vec<u8>, ty: u8, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(ty);
    write_body(out);
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_waits_then_yields() {
        let mut buf = Vec::new();
        write(&mut buf, 7, |b| b.extend_from_slice(b"hello"));
        for cut in 0..buf.len() {
            assert_eq!(split(&buf[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let (used, f) = split(&buf, 1024).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(
            f,
            RawFrame {
                ty: 7,
                body: b"hello"
            }
        );
    }

    #[test]
    fn oversized_and_wrong_version_fail_early() {
        let big = (1_000_000u32).to_be_bytes();
        assert!(matches!(
            split(&big, 1024),
            Err(DecodeError::TooLong { len: 1_000_000, .. })
        ));
        let bad_version = [0, 0, 0, 2, 99, 1];
        assert_eq!(
            split(&bad_version[..5], 1024),
            Err(DecodeError::UnsupportedVersion(99))
        );
        assert!(split(&[0, 0, 0, 1, 1], 1024).is_err());
    }
}
