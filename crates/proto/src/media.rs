//! Media on QUIC datagrams (RFC 9221): a small RTP-like header per packet, and receiver
//! feedback (NACK, keyframe request).
//!
//! ```text
//! media packet:  version | 0x10 | stream u8 | flags u8 | tw u16 | seq u32 | timestamp u32 |
//!                frame u32 | frag u16 | frags u16 | payload ...
//! nack:          version | 0x11 | stream u8 | count u8 | seq u32 × count
//! keyframe req:  version | 0x12 | stream u8
//! padding:       version | 0x13 | tw u16 | zero bytes ...
//! feedback:      version | 0x14 | base tw u16 | count u16 | reference u32 | rx bytes u32 |
//!                delta i16 × count
//! ```
//!
//! `tw` is the transport-wide sequence number: it counts every media and padding datagram a
//! side sends, across streams, in the order they leave (a retransmission gets a new one), so
//! the receiver's feedback tells the sender's bandwidth estimator when each one arrived.
//! Feedback covers `count` consecutive numbers from `base`: `reference` is the arrival time
//! of the first received one in 250 µs ticks of the receiver's clock, each delta the arrival
//! time after the previous received one (250 µs ticks), [`NOT_RECEIVED`] for a missing one;
//! `rx bytes` is the receiver's count of all bytes its connection received (mod 2³²), so the
//! sender can also see what its streams delivered.
//!
//! `seq` counts packets of one stream (retransmissions keep their original number);
//! `timestamp` is the capture time in the stream's clock (48 kHz audio, 90 kHz video);
//! `frame` numbers encoded frames; a frame larger than one datagram is cut into `frags`
//! fragments, `frag` = 0..frags. The first byte is the protocol version, as for every
//! datagram of a peer connection; type bytes 0x10.. never collide with `Ping`/`Pong`.

use bytes::{BufMut, Bytes};

use crate::DecodeError;
use crate::codec::{Reader, owned};

/// Bytes of the media packet header (version and type included).
pub const MEDIA_HEADER_LEN: usize = 2 + 1 + 1 + 2 + 4 + 4 + 4 + 2 + 2;
/// Offset of the transport-wide sequence number in a media packet (patched when it leaves).
pub const TW_OFFSET: usize = 4;
/// Bytes of a padding datagram before its zeros.
pub const PADDING_HEADER_LEN: usize = 4;
/// Most packets one feedback datagram reports.
pub const MAX_FEEDBACK: usize = 256;
/// Feedback delta of a packet that did not arrive.
pub const NOT_RECEIVED: i16 = i16::MIN;
/// Feedback time unit.
pub const FEEDBACK_TICK_US: u64 = 250;
/// Most sequence numbers in one NACK.
pub const MAX_NACKS: usize = 64;
/// Most fragments of one frame.
pub const MAX_FRAGS: u16 = 1024;

mod ty {
    pub const MEDIA: u8 = 0x10;
    pub const NACK: u8 = 0x11;
    pub const KEYFRAME_REQUEST: u8 = 0x12;
    pub const PADDING: u8 = 0x13;
    pub const FEEDBACK: u8 = 0x14;
}

const FLAG_KEYFRAME: u8 = 0x01;
const FLAG_RETRANSMIT: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_KEYFRAME | FLAG_RETRANSMIT;

/// One media packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPacket {
    /// Stream number within the call (audio, camera, screen …).
    pub stream: u8,
    /// The frame is a keyframe (decodable alone).
    pub keyframe: bool,
    /// Sent again after a NACK.
    pub retransmit: bool,
    /// Transport-wide sequence number (set when the packet leaves).
    pub tw: u16,
    /// Packet sequence number of this stream.
    pub seq: u32,
    /// Capture time in the stream's clock.
    pub timestamp: u32,
    /// Frame number.
    pub frame: u32,
    /// Fragment index.
    pub frag: u16,
    /// Number of fragments of the frame (≥ 1).
    pub frags: u16,
    /// Encoded data.
    pub payload: Bytes,
}

/// Datagrams of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaDatagram {
    /// Media data.
    Packet(MediaPacket),
    /// The receiver misses these packets of `stream`.
    Nack {
        /// Stream.
        stream: u8,
        /// Missing sequence numbers.
        seqs: Vec<u32>,
    },
    /// The receiver cannot decode `stream` until the next keyframe.
    KeyframeRequest {
        /// Stream.
        stream: u8,
    },
    /// Bandwidth probe: counted by feedback, otherwise ignored.
    Padding {
        /// Transport-wide sequence number.
        tw: u16,
        /// Zero bytes after the header.
        len: u16,
    },
    /// When the peer received our recent datagrams.
    Feedback(Feedback),
}

/// Arrival times of consecutive transport-wide sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// First sequence number reported.
    pub base: u16,
    /// Arrival of the first received packet, receiver clock, [`FEEDBACK_TICK_US`] ticks.
    pub reference: u32,
    /// All bytes the receiver's connection had received when the last packet reported here
    /// arrived, mod 2³² (so the sender can pair it with that packet's arrival time).
    pub rx_bytes: u32,
    /// Per packet from `base`: ticks after the previous received packet (the first received
    /// one: after `reference`, so 0), or [`NOT_RECEIVED`]. At most [`MAX_FEEDBACK`].
    pub deltas: Vec<i16>,
}

impl MediaDatagram {
    /// Whether `buf` is a media datagram (not a ping), judged by its type byte.
    pub fn is_media(buf: &[u8]) -> bool {
        matches!(buf.get(1), Some(0x10..=0x14))
    }

    /// Serialises the datagram. Callers keep `frags` within [`MAX_FRAGS`] and NACK lists
    /// within [`MAX_NACKS`] (longer lists are cut).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(crate::PROTOCOL_VERSION);
        match self {
            Self::Packet(p) => {
                out.put_u8(ty::MEDIA);
                out.put_u8(p.stream);
                out.put_u8(
                    if p.keyframe { FLAG_KEYFRAME } else { 0 }
                        | if p.retransmit { FLAG_RETRANSMIT } else { 0 },
                );
                out.put_u16(p.tw);
                out.put_u32(p.seq);
                out.put_u32(p.timestamp);
                out.put_u32(p.frame);
                out.put_u16(p.frag);
                out.put_u16(p.frags);
                out.put_slice(&p.payload);
            }
            Self::Nack { stream, seqs } => {
                out.put_u8(ty::NACK);
                out.put_u8(*stream);
                let seqs = &seqs[..seqs.len().min(MAX_NACKS)];
                out.put_u8(seqs.len() as u8);
                for s in seqs {
                    out.put_u32(*s);
                }
            }
            Self::KeyframeRequest { stream } => {
                out.put_u8(ty::KEYFRAME_REQUEST);
                out.put_u8(*stream);
            }
            Self::Padding { tw, len } => {
                out.put_u8(ty::PADDING);
                out.put_u16(*tw);
                out.put_bytes(0, usize::from(*len));
            }
            Self::Feedback(f) => {
                out.put_u8(ty::FEEDBACK);
                out.put_u16(f.base);
                let deltas = &f.deltas[..f.deltas.len().min(MAX_FEEDBACK)];
                out.put_u16(deltas.len() as u16);
                out.put_u32(f.reference);
                out.put_u32(f.rx_bytes);
                for d in deltas {
                    out.put_i16(*d);
                }
            }
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Packet(p) => MEDIA_HEADER_LEN + p.payload.len(),
            Self::Nack { seqs, .. } => 4 + 4 * seqs.len().min(MAX_NACKS),
            Self::KeyframeRequest { .. } => 3,
            Self::Padding { len, .. } => PADDING_HEADER_LEN + usize::from(*len),
            Self::Feedback(f) => 14 + 2 * f.deltas.len().min(MAX_FEEDBACK),
        }
    }

    /// Parses a received datagram.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let v = r.u8("version")?;
        if v != crate::PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let d = match r.u8("media type")? {
            ty::MEDIA => {
                let stream = r.u8("stream")?;
                let flags = r.u8("flags")?;
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(DecodeError::InvalidValue {
                        field: "media flags",
                        value: u64::from(flags),
                    });
                }
                let tw = r.u16("tw")?;
                let seq = r.u32("seq")?;
                let timestamp = r.u32("timestamp")?;
                let frame = r.u32("frame")?;
                let frag = r.u16("frag")?;
                let frags = r.u16("frags")?;
                if frags == 0 || frags > MAX_FRAGS || frag >= frags {
                    return Err(DecodeError::InvalidValue {
                        field: "fragment",
                        value: u64::from(frag) << 16 | u64::from(frags),
                    });
                }
                Self::Packet(MediaPacket {
                    stream,
                    keyframe: flags & FLAG_KEYFRAME != 0,
                    retransmit: flags & FLAG_RETRANSMIT != 0,
                    tw,
                    seq,
                    timestamp,
                    frame,
                    frag,
                    frags,
                    payload: owned(r.rest()),
                })
            }
            ty::NACK => {
                let stream = r.u8("stream")?;
                let n = usize::from(r.u8("nack count")?);
                if n > MAX_NACKS {
                    return Err(DecodeError::TooLong {
                        field: "nack",
                        len: n,
                        max: MAX_NACKS,
                    });
                }
                let seqs = (0..n)
                    .map(|_| r.u32("nack seq"))
                    .collect::<Result<_, _>>()?;
                Self::Nack { stream, seqs }
            }
            ty::KEYFRAME_REQUEST => Self::KeyframeRequest {
                stream: r.u8("stream")?,
            },
            ty::PADDING => {
                let tw = r.u16("tw")?;
                let zeros = r.rest();
                if zeros.iter().any(|b| *b != 0) {
                    return Err(DecodeError::InvalidValue {
                        field: "padding",
                        value: zeros.len() as u64,
                    });
                }
                let len = u16::try_from(zeros.len()).map_err(|_| DecodeError::TooLong {
                    field: "padding",
                    len: zeros.len(),
                    max: usize::from(u16::MAX),
                })?;
                Self::Padding { tw, len }
            }
            ty::FEEDBACK => {
                let base = r.u16("feedback base")?;
                let n = usize::from(r.u16("feedback count")?);
                if n > MAX_FEEDBACK {
                    return Err(DecodeError::TooLong {
                        field: "feedback",
                        len: n,
                        max: MAX_FEEDBACK,
                    });
                }
                let reference = r.u32("feedback reference")?;
                let rx_bytes = r.u32("rx bytes")?;
                let deltas = (0..n)
                    .map(|_| r.u16("feedback delta").map(|d| d as i16))
                    .collect::<Result<_, _>>()?;
                Self::Feedback(Feedback {
                    base,
                    reference,
                    rx_bytes,
                    deltas,
                })
            }
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::tests::payload;
    use proptest::prelude::*;

    fn datagram() -> impl Strategy<Value = MediaDatagram> {
        prop_oneof![
            (
                any::<u8>(),
                any::<bool>(),
                any::<bool>(),
                (any::<u16>(), any::<u32>()),
                any::<u32>(),
                any::<u32>(),
                (1u16..=MAX_FRAGS).prop_flat_map(|n| (0..n, Just(n))),
                payload(1200),
            )
                .prop_map(
                    |(
                        stream,
                        keyframe,
                        retransmit,
                        (tw, seq),
                        timestamp,
                        frame,
                        (frag, frags),
                        payload,
                    )| {
                        MediaDatagram::Packet(MediaPacket {
                            stream,
                            keyframe,
                            retransmit,
                            tw,
                            seq,
                            timestamp,
                            frame,
                            frag,
                            frags,
                            payload,
                        })
                    }
                ),
            (
                any::<u8>(),
                proptest::collection::vec(any::<u32>(), 0..=MAX_NACKS)
            )
                .prop_map(|(stream, seqs)| MediaDatagram::Nack { stream, seqs }),
            any::<u8>().prop_map(|stream| MediaDatagram::KeyframeRequest { stream }),
            (any::<u16>(), 0u16..1400).prop_map(|(tw, len)| MediaDatagram::Padding { tw, len }),
            (
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<i16>(), 0..=MAX_FEEDBACK)
            )
                .prop_map(|(base, reference, rx_bytes, deltas)| {
                    MediaDatagram::Feedback(Feedback {
                        base,
                        reference,
                        rx_bytes,
                        deltas,
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn media_datagrams_round_trip(d in datagram()) {
            let mut buf = Vec::new();
            d.encode(&mut buf);
            prop_assert_eq!(buf.len(), d.encoded_len());
            prop_assert!(MediaDatagram::is_media(&buf));
            prop_assert_eq!(MediaDatagram::decode(&buf).unwrap(), d);
        }

        #[test]
        fn media_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = MediaDatagram::decode(&body);
        }
    }

    #[test]
    fn bad_fragments_and_flags_are_refused() {
        let p = |frag: u16, frags: u16, flags: u8| {
            let mut b = vec![crate::PROTOCOL_VERSION, ty::MEDIA, 0, flags];
            b.extend_from_slice(&[0; 14]);
            b.extend_from_slice(&frag.to_be_bytes());
            b.extend_from_slice(&frags.to_be_bytes());
            MediaDatagram::decode(&b)
        };
        assert!(p(0, 1, 0).is_ok());
        for (frag, frags) in [(0, 0), (1, 1), (5, 3), (0, MAX_FRAGS + 1)] {
            assert!(matches!(
                p(frag, frags, 0),
                Err(DecodeError::InvalidValue {
                    field: "fragment",
                    ..
                })
            ));
        }
        assert!(matches!(
            p(0, 1, 0x80),
            Err(DecodeError::InvalidValue {
                field: "media flags",
                ..
            })
        ));
        let mut pad = vec![crate::PROTOCOL_VERSION, ty::PADDING, 0, 7, 0, 0];
        assert_eq!(
            MediaDatagram::decode(&pad),
            Ok(MediaDatagram::Padding { tw: 7, len: 2 })
        );
        pad.push(1);
        assert!(matches!(
            MediaDatagram::decode(&pad),
            Err(DecodeError::InvalidValue {
                field: "padding",
                ..
            })
        ));
        let mut fb = vec![crate::PROTOCOL_VERSION, ty::FEEDBACK, 0, 0, 1, 1];
        fb.extend_from_slice(&[0; 8]);
        assert!(matches!(
            MediaDatagram::decode(&fb),
            Err(DecodeError::TooLong {
                field: "feedback",
                ..
            })
        ));
        let ping = crate::peer::Datagram::Ping {
            seq: 1,
            pad: Bytes::new(),
        };
        let mut b = Vec::new();
        ping.encode(&mut b);
        assert!(!MediaDatagram::is_media(&b));
    }
}
