//! Byte readers and writers shared by every wire format of this crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes};

use crate::PeerId;

/// Why a frame or packet could not be decoded. Every variant names one cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the field `field` was complete.
    #[error("truncated input while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The frame declares a protocol version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks version {v})", v = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),
    /// The frame type byte is not one defined for this channel.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// The packet type byte is not one defined for UDP packets.
    #[error("unknown packet type 0x{0:02x}")]
    UnknownPacketType(u8),
    /// A length prefix exceeds the limit for this field or frame.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// The field whose length is too large.
        field: &'static str,
        /// Declared length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The offending field.
        field: &'static str,
    },
    /// An enumerated field holds a value that is not defined.
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// The offending field.
        field: &'static str,
        /// The raw value.
        value: u64,
    },
    /// Bytes remain after the frame body was fully decoded.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
}

/// A cursor over untrusted input.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless everything was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads a boolean encoded as 0 or 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::InvalidValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// Reads a u16-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// Reads a u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str16(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let raw = self.bytes16(field, max)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Reads a u8-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str8(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u8(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        std::str::from_utf8(self.take(len, field)?)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Reads a peer id (32 raw bytes).
    pub fn peer_id(&mut self, field: &'static str) -> Result<PeerId, DecodeError> {
        Ok(PeerId::from_bytes(self.array(field)?))
    }

    /// Reads a socket address: family byte (4 or 6), address, port.
    pub fn socket_addr(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8(field)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)),
            v => {
                return Err(DecodeError::InvalidValue {
                    field,
                    value: u64::from(v),
                });
            }
        };
        Ok(SocketAddr::new(ip, self.u16(field)?))
    }

    /// Reads a u16 count of items, refusing counts above `max`.
    pub fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        Ok(len)
    }

    /// Reads a u32 count of items, refusing counts above `max` and counts that could not fit
    /// in the rest of the input at `min_item` bytes each (so a count never drives a large
    /// allocation the input cannot back).
    pub fn count32(
        &mut self,
        field: &'static str,
        max: usize,
        min_item: usize,
    ) -> Result<usize, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        if len.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(len)
    }
}

/// Writes the fields read by [`Reader`].
pub trait WriteExt: BufMut {
    /// Writes a u16-length-prefixed byte string. Callers guarantee `len <= u16::MAX`.
    fn put_bytes16(&mut self, b: &[u8]) {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.put_u16(len);
        self.put_slice(&b[..usize::from(len)]);
    }
    /// Writes a u16-length-prefixed string (truncated at a char boundary to fit).
    fn put_str16(&mut self, s: &str) {
        self.put_bytes16(s.as_bytes());
    }
    /// Writes a peer id.
    fn put_peer_id(&mut self, id: &PeerId) {
        self.put_slice(id.as_bytes());
    }
    /// Writes a socket address (see [`Reader::socket_addr`]).
    fn put_socket_addr(&mut self, addr: &SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.put_u8(4);
                self.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.put_u8(6);
                self.put_slice(&ip.octets());
            }
        }
        self.put_u16(addr.port());
    }
    /// Writes a boolean.
    fn put_bool(&mut self, b: bool) {
        self.put_u8(u8::from(b));
    }
}

impl<T: BufMut + ?Sized> WriteExt for T {}

/// Encoded length of a socket address.
pub fn socket_addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Returns `s` cut to at most `max` bytes on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Copies a slice into owned bytes.
pub fn owned(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}
