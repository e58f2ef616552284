//! Chat between two peers, inside their end-to-end encrypted QUIC connection.
//!
//! A peer with something to deliver (queued messages, read receipts) opens a bidirectional
//! stream whose first byte is the chat stream kind, then sends [`ChatFrame`]s in the usual
//! envelope. Messages go in the sender's sequence order; the receiver answers every frame
//! once it is stored durably: `Message` with `Delivered`, `Read` with `ReadStored`. A message
//! id is chosen by its sender at random (128 bits), so a retried message is recognised and
//! stored once.

use bytes::BufMut;

use crate::DecodeError;
use crate::codec::{Reader, WriteExt};
use crate::frame::{self, RawFrame};

/// Largest message text in bytes (UTF-8).
pub const MAX_TEXT: usize = 16 * 1024;
/// Most message ids in one `Read` frame.
pub const MAX_READ_IDS: usize = 1024;
/// Largest frame on a chat stream.
pub const MAX_FRAME: usize = 2 + MAX_TEXT + 64 + MAX_READ_IDS * 16;

pub use crate::id::MessageId;

/// Frames on a chat stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFrame {
    /// A message from the stream's opener.
    Message {
        /// Sender-chosen id (deduplication key).
        id: MessageId,
        /// The sender's sequence number in this conversation (1, 2, 3 …).
        seq: u64,
        /// The sender's clock when the message was written, ms since the Unix epoch.
        sent_ms: u64,
        /// The text.
        text: String,
    },
    /// The receiver stored the message.
    Delivered {
        /// Which message.
        id: MessageId,
    },
    /// The opener's user has seen these messages of the other side.
    Read {
        /// Ids of messages the other side sent.
        ids: Vec<MessageId>,
    },
    /// The receiver stored a `Read` frame.
    ReadStored {
        /// How many ids it held.
        count: u32,
    },
}

mod ty {
    pub const MESSAGE: u8 = 0x01;
    pub const DELIVERED: u8 = 0x02;
    pub const READ: u8 = 0x03;
    pub const READ_STORED: u8 = 0x04;
}

impl ChatFrame {
    /// Appends the enveloped frame to `out`. Callers keep `text` within [`MAX_TEXT`] and
    /// `ids` within [`MAX_READ_IDS`] (longer values are cut).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Message {
                id,
                seq,
                sent_ms,
                text,
            } => frame::write(out, ty::MESSAGE, |b| {
                b.put_slice(id.as_bytes());
                b.put_u64(*seq);
                b.put_u64(*sent_ms);
                b.put_str16(crate::codec::truncate_utf8(text, MAX_TEXT));
            }),
            Self::Delivered { id } => {
                frame::write(out, ty::DELIVERED, |b| b.put_slice(id.as_bytes()))
            }
            Self::Read { ids } => frame::write(out, ty::READ, |b| {
                let ids = &ids[..ids.len().min(MAX_READ_IDS)];
                b.put_u16(ids.len() as u16);
                for id in ids {
                    b.put_slice(id.as_bytes());
                }
            }),
            Self::ReadStored { count } => frame::write(out, ty::READ_STORED, |b| b.put_u32(*count)),
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Message { text, .. } => 16 + 8 + 8 + 2 + text.len().min(MAX_TEXT),
                Self::Delivered { .. } => 16,
                Self::Read { ids } => 2 + 16 * ids.len().min(MAX_READ_IDS),
                Self::ReadStored { .. } => 4,
            }
    }

    /// Decodes a frame taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::MESSAGE => Self::Message {
                id: r.array("message id").map(MessageId::from_bytes)?,
                seq: r.u64("seq")?,
                sent_ms: r.u64("sent_ms")?,
                text: r.str16("text", MAX_TEXT)?,
            },
            ty::DELIVERED => Self::Delivered {
                id: r.array("message id").map(MessageId::from_bytes)?,
            },
            ty::READ => {
                let n = r.count("read ids", MAX_READ_IDS)?;
                Self::Read {
                    ids: (0..n)
                        .map(|_| r.array("message id").map(MessageId::from_bytes))
                        .collect::<Result<_, _>>()?,
                }
            }
            ty::READ_STORED => Self::ReadStored {
                count: r.u32("count")?,
            },
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split;
    use proptest::prelude::*;

    fn chat_frame() -> impl Strategy<Value = ChatFrame> {
        prop_oneof![
            (any::<[u8; 16]>(), any::<u64>(), any::<u64>(), "\\PC{0,200}").prop_map(
                |(id, seq, sent_ms, text)| ChatFrame::Message {
                    id: MessageId::from_bytes(id),
                    seq,
                    sent_ms,
                    text
                }
            ),
            any::<[u8; 16]>().prop_map(|id| ChatFrame::Delivered {
                id: MessageId::from_bytes(id)
            }),
            proptest::collection::vec(any::<[u8; 16]>(), 0..50).prop_map(|ids| ChatFrame::Read {
                ids: ids.into_iter().map(MessageId::from_bytes).collect(),
            }),
            any::<u32>().prop_map(|count| ChatFrame::ReadStored { count }),
        ]
    }

    proptest! {
        #[test]
        fn chat_frames_round_trip(f in chat_frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            let (used, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(ChatFrame::decode(raw).unwrap(), f);
        }

        #[test]
        fn chat_decoder_never_panics(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ChatFrame::decode(RawFrame { ty, body: &body });
        }
    }

    #[test]
    fn longest_message_fits_the_frame_limit() {
        let f = ChatFrame::Message {
            id: MessageId::from_bytes([0; 16]),
            seq: 1,
            sent_ms: 1,
            text: "é".repeat(MAX_TEXT),
        };
        let mut buf = Vec::new();
        f.encode(&mut buf);
        assert!(buf.len() <= MAX_FRAME + 4);
        let (_, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
        match ChatFrame::decode(raw).unwrap() {
            ChatFrame::Message { text, .. } => assert_eq!(text.len(), MAX_TEXT),
            other => panic!("{other:?}"),
        }
    }
}
