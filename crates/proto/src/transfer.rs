//! File and folder-tree transfer between two peers, inside their end-to-end QUIC connection.
//!
//! The sender opens a control stream (kind byte, then [`TransferFrame`]s in the usual
//! envelope) and offers a manifest; the receiver sanitises it, asks its user, and answers
//! `Accept` (listing the chunks it already holds verified from an earlier attempt: resume) or
//! `Reject`. File data then flows on several unidirectional data streams, each starting with
//! the kind byte and the transfer id, followed by records with a fixed [`DataHeader`]:
//!
//! ```text
//! +------+-----------+-----------+---------+-----------+-------------------+
//! | type | entry u32 | index u32 | len u32 | hash [32] | len bytes (CHUNK) |
//! +------+-----------+-----------+---------+-----------+-------------------+
//! ```
//!
//! `CHUNK` carries chunk `index` of manifest entry `entry` and its BLAKE3 chaining value;
//! `ZERO` stands for a chunk of zeros (sparse files) without payload; `END` closes a file with
//! its BLAKE3 hash (`index` = number of chunks). The receiver answers on the control stream
//! with `FileDone` once a file is verified and in place, `Complete` at the end, and either
//! side may `Abort` with a typed reason.

use bytes::BufMut;

use crate::DecodeError;
use crate::codec::{Reader, WriteExt};
use crate::frame::{self, RawFrame};

/// Largest frame on a transfer control stream (a manifest of many files, or a long list of
/// verified chunks).
pub const MAX_FRAME: usize = 16 << 20;
/// Most entries in one manifest.
pub const MAX_ENTRIES: usize = 200_000;
/// Longest relative path in a manifest, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest reason text.
pub const MAX_REASON: usize = 1024;
/// Most chunk records in one `Accept`.
pub const MAX_HAVE: usize = 400_000;
/// Smallest and largest chunk size a sender may choose (powers of two).
pub const MIN_CHUNK: u32 = 64 << 10;
/// See [`MIN_CHUNK`].
pub const MAX_CHUNK: u32 = 16 << 20;
/// Bytes of a [`DataHeader`].
pub const DATA_HEADER_LEN: usize = 1 + 4 + 4 + 4 + 32;

pub use crate::id::TransferId;

/// One manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, components separated by `/` (sanitised by the receiver).
    pub path: String,
    /// Folder or file.
    pub kind: EntryKind,
    /// Unix permission bits (the receiver keeps only the rwx bits it allows).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A folder (sent so that empty folders arrive too).
    Dir,
    /// A regular file of `size` bytes.
    File {
        /// Size in bytes.
        size: u64,
    },
}

/// A chunk the receiver already holds, verified, from an earlier attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaveChunk {
    /// Manifest entry.
    pub entry: u32,
    /// Chunk index in the file.
    pub index: u32,
    /// Its BLAKE3 chaining value (or root hash for a one-chunk file).
    pub cv: [u8; 32],
}

/// Why a transfer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCode {
    /// A user cancelled.
    Cancelled,
    /// The receiver's disk is full.
    DiskFull,
    /// The receiver may not write there (or the sender may not read a file).
    Permission,
    /// Another I/O error.
    Io,
    /// The other side broke the protocol.
    Protocol,
    /// The other side stopped for now (Ctrl-C, shutting down): its verified chunks are
    /// kept, and the same transfer resumes from them when the sender offers it again.
    Interrupted,
}

impl std::fmt::Display for AbortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cancelled => "cancelled",
            Self::DiskFull => "disk full",
            Self::Permission => "permission denied",
            Self::Io => "I/O error",
            Self::Protocol => "protocol error",
            Self::Interrupted => "interrupted",
        })
    }
}

impl AbortCode {
    fn code(self) -> u8 {
        match self {
            Self::Cancelled => 1,
            Self::DiskFull => 2,
            Self::Permission => 3,
            Self::Io => 4,
            Self::Protocol => 5,
            Self::Interrupted => 6,
        }
    }

    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            1 => Self::Cancelled,
            2 => Self::DiskFull,
            3 => Self::Permission,
            4 => Self::Io,
            5 => Self::Protocol,
            6 => Self::Interrupted,
            v => {
                return Err(DecodeError::InvalidValue {
                    field: "abort code",
                    value: u64::from(v),
                });
            }
        })
    }
}

/// Frames on a transfer control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferFrame {
    /// Sender → receiver: what would be sent.
    Offer {
        /// Transfer id (the same when the transfer is retried).
        id: TransferId,
        /// Chunk size in bytes (a power of two within [`MIN_CHUNK`]..=[`MAX_CHUNK`]).
        chunk_size: u32,
        /// Folders and files, parents before children.
        entries: Vec<Entry>,
    },
    /// Receiver → sender: go ahead; skip these chunks.
    Accept {
        /// Chunks already held and verified.
        have: Vec<HaveChunk>,
    },
    /// Receiver → sender: no.
    Reject {
        /// Why, for the sender's user.
        reason: String,
    },
    /// Receiver → sender: this file is verified and in place.
    FileDone {
        /// Manifest entry.
        entry: u32,
    },
    /// Receiver → sender: every file is in place.
    Complete,
    /// Either side: the transfer stops.
    Abort {
        /// Typed cause.
        code: AbortCode,
        /// Details for the user.
        reason: String,
    },
}

mod ty {
    pub const OFFER: u8 = 0x01;
    pub const ACCEPT: u8 = 0x02;
    pub const REJECT: u8 = 0x03;
    pub const FILE_DONE: u8 = 0x04;
    pub const COMPLETE: u8 = 0x05;
    pub const ABORT: u8 = 0x06;
}

const ENTRY_DIR: u8 = 0;
const ENTRY_FILE: u8 = 1;
/// Smallest encoded entry: empty path (2) + kind (1) + mode (4) + mtime (8).
const MIN_ENTRY_LEN: usize = 2 + 1 + 4 + 8;
const HAVE_LEN: usize = 4 + 4 + 32;

fn entry_len(e: &Entry) -> usize {
    MIN_ENTRY_LEN
        + e.path.len().min(MAX_PATH)
        + match e.kind {
            EntryKind::Dir => 0,
            EntryKind::File { .. } => 8,
        }
}

impl TransferFrame {
    /// Appends the enveloped frame to `out`. Callers keep lists and texts within the limits
    /// above (longer ones are cut).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Offer {
                id,
                chunk_size,
                entries,
            } => frame::write(out, ty::OFFER, |b| {
                b.put_slice(id.as_bytes());
                b.put_u32(*chunk_size);
                let entries = &entries[..entries.len().min(MAX_ENTRIES)];
                b.put_u32(entries.len() as u32);
                for e in entries {
                    b.put_str16(crate::codec::truncate_utf8(&e.path, MAX_PATH));
                    match e.kind {
                        EntryKind::Dir => b.put_u8(ENTRY_DIR),
                        EntryKind::File { size } => {
                            b.put_u8(ENTRY_FILE);
                            b.put_u64(size);
                        }
                    }
                    b.put_u32(e.mode);
                    b.put_i64(e.mtime);
                }
            }),
            Self::Accept { have } => frame::write(out, ty::ACCEPT, |b| {
                let have = &have[..have.len().min(MAX_HAVE)];
                b.put_u32(have.len() as u32);
                for h in have {
                    b.put_u32(h.entry);
                    b.put_u32(h.index);
                    b.put_slice(&h.cv);
                }
            }),
            Self::Reject { reason } => frame::write(out, ty::REJECT, |b| {
                b.put_str16(crate::codec::truncate_utf8(reason, MAX_REASON));
            }),
            Self::FileDone { entry } => frame::write(out, ty::FILE_DONE, |b| b.put_u32(*entry)),
            Self::Complete => frame::write(out, ty::COMPLETE, |_| {}),
            Self::Abort { code, reason } => frame::write(out, ty::ABORT, |b| {
                b.put_u8(code.code());
                b.put_str16(crate::codec::truncate_utf8(reason, MAX_REASON));
            }),
        }
    }

    /// Exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        frame::HEADER_LEN
            + match self {
                Self::Offer { entries, .. } => {
                    16 + 4
                        + 4
                        + entries
                            .iter()
                            .take(MAX_ENTRIES)
                            .map(entry_len)
                            .sum::<usize>()
                }
                Self::Accept { have } => 4 + HAVE_LEN * have.len().min(MAX_HAVE),
                Self::Reject { reason } => 2 + reason.len().min(MAX_REASON),
                Self::FileDone { .. } => 4,
                Self::Complete => 0,
                Self::Abort { reason, .. } => 1 + 2 + reason.len().min(MAX_REASON),
            }
    }

    /// Decodes a frame taken by [`frame::split`].
    pub fn decode(f: RawFrame<'_>) -> Result<Self, DecodeError> {
        let mut r = Reader::new(f.body);
        let frame = match f.ty {
            ty::OFFER => {
                let id = r.array("transfer id").map(TransferId::from_bytes)?;
                let chunk_size = r.u32("chunk size")?;
                if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
                    return Err(DecodeError::InvalidValue {
                        field: "chunk size",
                        value: u64::from(chunk_size),
                    });
                }
                let n = r.count32("entries", MAX_ENTRIES, MIN_ENTRY_LEN)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let path = r.str16("path", MAX_PATH)?;
                    let kind = match r.u8("entry kind")? {
                        ENTRY_DIR => EntryKind::Dir,
                        ENTRY_FILE => EntryKind::File {
                            size: r.u64("size")?,
                        },
                        v => {
                            return Err(DecodeError::InvalidValue {
                                field: "entry kind",
                                value: u64::from(v),
                            });
                        }
                    };
                    let mode = r.u32("mode")?;
                    let mtime = r.u64("mtime")? as i64;
                    entries.push(Entry {
                        path,
                        kind,
                        mode,
                        mtime,
                    });
                }
                Self::Offer {
                    id,
                    chunk_size,
                    entries,
                }
            }
            ty::ACCEPT => {
                let n = r.count32("have", MAX_HAVE, HAVE_LEN)?;
                let mut have = Vec::with_capacity(n);
                for _ in 0..n {
                    have.push(HaveChunk {
                        entry: r.u32("entry")?,
                        index: r.u32("chunk index")?,
                        cv: r.array("chaining value")?,
                    });
                }
                Self::Accept { have }
            }
            ty::REJECT => Self::Reject {
                reason: r.str16("reason", MAX_REASON)?,
            },
            ty::FILE_DONE => Self::FileDone {
                entry: r.u32("entry")?,
            },
            ty::COMPLETE => Self::Complete,
            ty::ABORT => Self::Abort {
                code: AbortCode::from_code(r.u8("abort code")?)?,
                reason: r.str16("reason", MAX_REASON)?,
            },
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

/// Record types on a data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// `len` payload bytes follow.
    Chunk,
    /// A chunk of `len` zero bytes, no payload.
    Zero,
    /// End of a file: `index` chunks, `hash` is the file's BLAKE3.
    End,
}

/// The fixed header of a data-stream record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Record type.
    pub kind: DataKind,
    /// Manifest entry.
    pub entry: u32,
    /// Chunk index (chunk count for `End`).
    pub index: u32,
    /// Chunk length (0 for `End`).
    pub len: u32,
    /// Chaining value of the chunk, or the file hash for `End`.
    pub hash: [u8; 32],
}

impl DataHeader {
    /// Serialises the header.
    pub fn encode(&self) -> [u8; DATA_HEADER_LEN] {
        let mut out = [0u8; DATA_HEADER_LEN];
        out[0] = match self.kind {
            DataKind::Chunk => 1,
            DataKind::Zero => 2,
            DataKind::End => 3,
        };
        out[1..5].copy_from_slice(&self.entry.to_be_bytes());
        out[5..9].copy_from_slice(&self.index.to_be_bytes());
        out[9..13].copy_from_slice(&self.len.to_be_bytes());
        out[13..].copy_from_slice(&self.hash);
        out
    }

    /// Parses a header; `End` records must have `len` 0.
    pub fn decode(buf: &[u8; DATA_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let kind = match r.u8("data record type")? {
            1 => DataKind::Chunk,
            2 => DataKind::Zero,
            3 => DataKind::End,
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        let h = Self {
            kind,
            entry: r.u32("entry")?,
            index: r.u32("chunk index")?,
            len: r.u32("chunk length")?,
            hash: r.array("hash")?,
        };
        if h.kind == DataKind::End && h.len != 0 {
            return Err(DecodeError::InvalidValue {
                field: "end record length",
                value: u64::from(h.len),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = Entry> {
        (
            "\\PC{0,40}",
            proptest::option::of(any::<u64>()),
            any::<u32>(),
            any::<i64>(),
        )
            .prop_map(|(path, size, mode, mtime)| Entry {
                path,
                kind: size.map_or(EntryKind::Dir, |size| EntryKind::File { size }),
                mode,
                mtime,
            })
    }

    fn abort_code() -> impl Strategy<Value = AbortCode> {
        prop_oneof![
            Just(AbortCode::Cancelled),
            Just(AbortCode::DiskFull),
            Just(AbortCode::Permission),
            Just(AbortCode::Io),
            Just(AbortCode::Protocol),
            Just(AbortCode::Interrupted),
        ]
    }

    fn transfer_frame() -> impl Strategy<Value = TransferFrame> {
        prop_oneof![
            (
                any::<[u8; 16]>(),
                16u32..=24,
                proptest::collection::vec(entry(), 0..20)
            )
                .prop_map(|(id, shift, entries)| TransferFrame::Offer {
                    id: TransferId::from_bytes(id),
                    chunk_size: 1 << shift,
                    entries
                }),
            proptest::collection::vec(
                (any::<u32>(), any::<u32>(), any::<[u8; 32]>())
                    .prop_map(|(entry, index, cv)| HaveChunk { entry, index, cv }),
                0..20
            )
            .prop_map(|have| TransferFrame::Accept { have }),
            "\\PC{0,100}".prop_map(|reason| TransferFrame::Reject { reason }),
            any::<u32>().prop_map(|entry| TransferFrame::FileDone { entry }),
            Just(TransferFrame::Complete),
            (abort_code(), "\\PC{0,100}")
                .prop_map(|(code, reason)| TransferFrame::Abort { code, reason }),
        ]
    }

    fn data_header() -> impl Strategy<Value = DataHeader> {
        (
            prop_oneof![
                Just(DataKind::Chunk),
                Just(DataKind::Zero),
                Just(DataKind::End)
            ],
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(kind, entry, index, len, hash)| DataHeader {
                kind,
                entry,
                index,
                len: if kind == DataKind::End { 0 } else { len },
                hash,
            })
    }

    proptest! {
        #[test]
        fn transfer_frames_round_trip(f in transfer_frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.encoded_len());
            let (used, raw) = split(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(TransferFrame::decode(raw).unwrap(), f);
        }

        #[test]
        fn data_headers_round_trip(h in data_header()) {
            prop_assert_eq!(DataHeader::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn transfer_decoders_never_panic(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TransferFrame::decode(RawFrame { ty, body: &body });
            if let Ok(h) = <[u8; DATA_HEADER_LEN]>::try_from(&body[..body.len().min(DATA_HEADER_LEN)]) {
                let _ = DataHeader::decode(&h);
            }
        }
    }

    #[test]
    fn a_huge_entry_count_is_refused_before_allocating() {
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&(1u32 << 20).to_be_bytes());
        body.extend_from_slice(&(MAX_ENTRIES as u32).to_be_bytes());
        let r = TransferFrame::decode(RawFrame {
            ty: ty::OFFER,
            body: &body,
        });
        assert_eq!(r, Err(DecodeError::Truncated { field: "entries" }));
    }

    #[test]
    fn odd_chunk_sizes_are_refused() {
        for bad in [0u32, 1000, MIN_CHUNK / 2, MAX_CHUNK * 2, MIN_CHUNK + 1] {
            let mut body = vec![0u8; 16];
            body.extend_from_slice(&bad.to_be_bytes());
            body.extend_from_slice(&0u32.to_be_bytes());
            assert!(matches!(
                TransferFrame::decode(RawFrame {
                    ty: ty::OFFER,
                    body: &body
                }),
                Err(DecodeError::InvalidValue {
                    field: "chunk size",
                    ..
                })
            ));
        }
    }
}
