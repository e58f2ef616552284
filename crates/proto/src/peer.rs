//! The control channel between two peers, inside their end-to-end encrypted QUIC connection.
//!
//! The dialing peer opens the first bidirectional stream and both sides send [`PeerFrame`]s on
//! it (same envelope as the relay control plane). `Hello` goes first in each direction and
//! carries the direct-path candidates; later `Candidates` frames update them. Unreliable
//! [`Datagram`]s (QUIC datagrams, RFC 9221) carry latency probes now and media later.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes};

use crate::DecodeError;
use crate::codec::{Reader, WriteExt, owned, socket_addr_len, truncate_utf8};
use crate::frame::{self, RawFrame};
use crate::relay::MAX_NAME;

/// Largest frame accepted on the peer control stream.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most candidates a peer may announce.
pub const MAX_CANDIDATES: usize = 32;
/// Largest application payload on a `Ping`/`Pong` datagram.
pub const MAX_PING_PAD: usize = 1024;

/// Frames on the peer-to-peer control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame {
    /// First frame in each direction.
    Hello {
        /// The sender's display name.
        name: String,
        /// Addresses at which the sender may be reachable directly.
        candidates: Vec<SocketAddr>,
    },
    /// Replaces the sender's candidate list (after a network change).
    Candidates {
        /// The new list.
        candidates: Vec<SocketAddr>,
    },
}

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const CANDIDATES: u8 = 0x02;
}

fn write_candidates(b: &mut Vec<u8>, c: &[SocketAddr]) {
    let c = &c[..c.len().min(MAX_CANDIDATES)];
    b.put_u16(c.len() as u16);
    for a in c {
        b.put_socket_addr(a);
    }
}

fn read_candidates(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let n = r.count("candidates", MAX_CANDIDATES)?;
    (0..n).map(|_| r.socket_addr("candidate")).collect()
}

fn candidates_len(c: &[SocketAddr]) -> usize {
    2 + c
        .iter()
        .take(MAX_CANDIDATES)
        .map(socket_addr_len)
        .sum::<usize>()
}

impl PeerFrame {
    /// Appends the enveloped frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello { name, candidates } => frame::write(out, ty::HELLO, |b| {
                b.put_str16(truncate_utf8(name, MAX_NAME));
                write_candidates(b, candidates);
            }),
            Self::Candidates { candidates } => {
                frame::write(out, ty::CANDIDATES, |b| write_candidates(b, candidates))
            }
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Hello { name, candidates } => {
                    2 + name.len().min(MAX_NAME) + candidates_len(candidates)
                }
                Self::Candidates { candidates } => candidates_len(candidates),
            }
    }

    /// Decodes a frame taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::HELLO => Self::Hello {
                name: r.str16("name", MAX_NAME)?,
                candidates: read_candidates(&mut r)?,
            },
            ty::CANDIDATES => Self::Candidates {
                candidates: read_candidates(&mut r)?,
            },
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

/// Unreliable messages carried in QUIC datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// Latency probe; the receiver answers with `Pong` carrying the same sequence and padding.
    Ping {
        /// Sequence number.
        seq: u32,
        /// Optional padding (to measure with larger packets).
        pad: Bytes,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's sequence number.
        seq: u32,
        /// The ping's padding, echoed.
        pad: Bytes,
    },
}

mod dty {
    pub const PING: u8 = 0x01;
    pub const PONG: u8 = 0x02;
}

impl Datagram {
    /// Serialises the datagram (version byte, type byte, body).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(crate::PROTOCOL_VERSION);
        let (t, seq, pad) = match self {
            Self::Ping { seq, pad } => (dty::PING, seq, pad),
            Self::Pong { seq, pad } => (dty::PONG, seq, pad),
        };
        out.put_u8(t);
        out.put_u32(*seq);
        out.put_bytes16(&pad[..pad.len().min(MAX_PING_PAD)]);
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Ping { pad, .. } | Self::Pong { pad, .. } => {
                2 + 4 + 2 + pad.len().min(MAX_PING_PAD)
            }
        }
    }

    /// Parses a received datagram.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let v = r.u8("version")?;
        if v != crate::PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let t = r.u8("datagram type")?;
        let seq = r.u32("seq")?;
        let pad = owned(r.bytes16("pad", MAX_PING_PAD)?);
        let d = match t {
            dty::PING => Self::Ping { seq, pad },
            dty::PONG => Self::Pong { seq, pad },
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split;
    use crate::relay::tests::{name, payload, socket_addr};
    use proptest::prelude::*;

    fn peer_frame() -> impl Strategy<Value = PeerFrame> {
        let cands = || proptest::collection::vec(socket_addr(), 0..=MAX_CANDIDATES);
        prop_oneof![
            (name(), cands()).prop_map(|(name, candidates)| PeerFrame::Hello { name, candidates }),
            cands().prop_map(|candidates| PeerFrame::Candidates { candidates }),
        ]
    }

    fn datagram() -> impl Strategy<Value = Datagram> {
        prop_oneof![
            (any::<u32>(), payload(MAX_PING_PAD))
                .prop_map(|(seq, pad)| Datagram::Ping { seq, pad }),
            (any::<u32>(), payload(MAX_PING_PAD))
                .prop_map(|(seq, pad)| Datagram::Pong { seq, pad }),
        ]
    }

    proptest! {
        #[test]
        fn peer_frames_round_trip(f in peer_frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            let (used, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(PeerFrame::decode(raw).unwrap(), f);
        }

        #[test]
        fn datagrams_round_trip(d in datagram()) {
            let mut buf = Vec::new();
            d.encode(&mut buf);
            prop_assert_eq!(buf.len(), d.encoded_len());
            prop_assert_eq!(Datagram::decode(&buf).unwrap(), d);
        }

        #[test]
        fn decoders_never_panic(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = PeerFrame::decode(RawFrame { ty, body: &body });
            let _ = Datagram::decode(&body);
        }
    }
}
