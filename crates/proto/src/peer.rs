//! The control channel between two peers, inside their end-to-end encrypted QUIC connection.
//!
//! The dialing peer opens the first bidirectional stream and both sides send [`PeerFrame`]s on
//! it (same envelope as the relay control plane). `Hello` goes first in each direction and
//! carries how the sender may be reached directly ([`Reach`]); later `Candidates` frames
//! update it. The dialer starts each hole-punching round with `Punch` (the coordinated
//! simultaneous open: it starts half an RTT after sending, the other side on receipt). Unreliable
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

/// How the sender's NAT maps one local socket to public addresses (RFC 4787), as its
/// reflection through the relay's two ports showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// No NAT: the relay sees our own address.
    None,
    /// One public address for every destination ("cone").
    EndpointIndependent,
    /// A different public address per destination ("symmetric").
    EndpointDependent,
    /// Not measured, or only one reflection answered.
    Unknown,
}

impl Mapping {
    fn code(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::None => 1,
            Self::EndpointIndependent => 2,
            Self::EndpointDependent => 3,
        }
    }

    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            0 => Self::Unknown,
            1 => Self::None,
            2 => Self::EndpointIndependent,
            3 => Self::EndpointDependent,
            v => {
                return Err(DecodeError::InvalidValue {
                    field: "mapping",
                    value: u64::from(v),
                });
            }
        })
    }
}

/// How a peer may be reached directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Addresses at which the sender may be reachable.
    pub candidates: Vec<SocketAddr>,
    /// The sender's NAT mapping behaviour.
    pub mapping: Mapping,
    /// The sender's public address as the relay saw it.
    pub observed: Option<SocketAddr>,
}

/// Frames on the peer-to-peer control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame {
    /// First frame in each direction.
    Hello {
        /// The sender's display name.
        name: String,
        /// Random per process of the sender (its endpoint's lifetime): a connection whose
        /// peer announces another instance than an older connection's means the peer
        /// restarted, and the older connection is dead.
        instance: u64,
        /// Where the sender may be reached.
        reach: Reach,
    },
    /// Replaces the sender's reachability (after a network change).
    Candidates(Reach),
    /// Start hole-punching round `round` now (sent by the dialer, which starts RTT/2 later).
    Punch {
        /// Round number, increasing.
        round: u32,
    },
}

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const CANDIDATES: u8 = 0x02;
    pub const PUNCH: u8 = 0x03;
}

fn write_reach(b: &mut Vec<u8>, r: &Reach) {
    write_candidates(b, &r.candidates);
    b.put_u8(r.mapping.code());
    match &r.observed {
        Some(a) => {
            b.put_u8(1);
            b.put_socket_addr(a);
        }
        None => b.put_u8(0),
    }
}

fn read_reach(r: &mut Reader<'_>) -> Result<Reach, DecodeError> {
    let candidates = read_candidates(r)?;
    let mapping = Mapping::from_code(r.u8("mapping")?)?;
    let observed = match r.u8("observed flag")? {
        0 => None,
        1 => Some(r.socket_addr("observed")?),
        v => {
            return Err(DecodeError::InvalidValue {
                field: "observed flag",
                value: u64::from(v),
            });
        }
    };
    Ok(Reach {
        candidates,
        mapping,
        observed,
    })
}

fn reach_len(r: &Reach) -> usize {
    candidates_len(&r.candidates) + 2 + r.observed.as_ref().map_or(0, socket_addr_len)
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
            Self::Hello {
                name,
                instance,
                reach,
            } => frame::write(out, ty::HELLO, |b| {
                b.put_str16(truncate_utf8(name, MAX_NAME));
                b.put_u64(*instance);
                write_reach(b, reach);
            }),
            Self::Candidates(reach) => frame::write(out, ty::CANDIDATES, |b| write_reach(b, reach)),
            Self::Punch { round } => frame::write(out, ty::PUNCH, |b| b.put_u32(*round)),
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Hello { name, reach, .. } => {
                    2 + name.len().min(MAX_NAME) + 8 + reach_len(reach)
                }
                Self::Candidates(reach) => reach_len(reach),
                Self::Punch { .. } => 4,
            }
    }

    /// Decodes a frame taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::HELLO => Self::Hello {
                name: r.str16("name", MAX_NAME)?,
                instance: r.u64("instance")?,
                reach: read_reach(&mut r)?,
            },
            ty::CANDIDATES => Self::Candidates(read_reach(&mut r)?),
            ty::PUNCH => Self::Punch {
                round: r.u32("round")?,
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
        let reach = || {
            (
                proptest::collection::vec(socket_addr(), 0..=MAX_CANDIDATES),
                prop_oneof![
                    Just(Mapping::None),
                    Just(Mapping::EndpointIndependent),
                    Just(Mapping::EndpointDependent),
                    Just(Mapping::Unknown),
                ],
                proptest::option::of(socket_addr()),
            )
                .prop_map(|(candidates, mapping, observed)| Reach {
                    candidates,
                    mapping,
                    observed,
                })
        };
        prop_oneof![
            (name(), any::<u64>(), reach()).prop_map(|(name, instance, reach)| {
                PeerFrame::Hello {
                    name,
                    instance,
                    reach,
                }
            }),
            reach().prop_map(PeerFrame::Candidates),
            any::<u32>().prop_map(|round| PeerFrame::Punch { round }),
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
