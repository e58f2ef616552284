//! Which chunks of a file the receiver holds verified.
//!
//! The receiver checks every chunk against the chaining value the sender announced with it
//! and records it; after an interruption it re-checks the recorded chunks against its
//! partial file and tells the sender what it holds, so a retried transfer sends only the
//! rest. The file's hash is merged from the recorded values and compared with the sender's.
//! Memory grows only with chunks actually received, whatever size an offer claims.

use std::collections::BTreeMap;

use crate::tree::{Cv, chunk_count, chunk_cv, chunk_len, file_hash};

/// Why a chunk or a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk index lies past the end of the file.
    #[error("chunk {index} is past the end of the file ({count} chunks)")]
    OutOfRange {
        /// Index received.
        index: u64,
        /// Chunks in the file.
        count: u64,
    },
    /// The chunk's length is not what the file's size implies.
    #[error("chunk {index} has {got} bytes, expected {expected}")]
    WrongLength {
        /// Index received.
        index: u64,
        /// Bytes expected.
        expected: u32,
        /// Bytes received.
        got: u32,
    },
    /// The chunk's data does not match its announced value.
    #[error("chunk {index} does not match its hash")]
    Mismatch {
        /// Index received.
        index: u64,
    },
    /// The file ended with chunks missing.
    #[error("{missing} chunks are missing at the end of the file")]
    Incomplete {
        /// How many.
        missing: u64,
    },
    /// The merged hash differs from the sender's.
    #[error("the file's BLAKE3 does not match the sender's")]
    HashMismatch,
}

/// Verified chunks of one file.
#[derive(Debug, Clone)]
pub struct FileProgress {
    size: u64,
    chunk: u32,
    count: u64,
    cvs: BTreeMap<u64, Cv>,
    bytes: u64,
}

impl FileProgress {
    /// Nothing verified yet.
    pub fn new(size: u64, chunk: u32) -> Self {
        Self {
            size,
            chunk,
            count: chunk_count(size, chunk),
            cvs: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// File size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of chunks.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Length of chunk `index`.
    pub fn len_of(&self, index: u64) -> u32 {
        chunk_len(self.size, self.chunk, index)
    }

    /// Byte offset of chunk `index`.
    pub fn offset_of(&self, index: u64) -> u64 {
        index * u64::from(self.chunk)
    }

    /// Checks that chunk `index` may hold `len` bytes.
    pub fn check_header(&self, index: u64, len: u32) -> Result<(), ChunkError> {
        if index >= self.count {
            return Err(ChunkError::OutOfRange {
                index,
                count: self.count,
            });
        }
        let expected = self.len_of(index);
        if len != expected {
            return Err(ChunkError::WrongLength {
                index,
                expected,
                got: len,
            });
        }
        Ok(())
    }

    /// Hashes `data` as chunk `index`, compares it with `claimed` and records it.
    pub fn verify(&mut self, index: u64, data: &[u8], claimed: &Cv) -> Result<(), ChunkError> {
        self.check_header(index, u32::try_from(data.len()).unwrap_or(u32::MAX))?;
        let cv = chunk_cv(data, index, self.chunk, self.size);
        if cv != *claimed {
            return Err(ChunkError::Mismatch { index });
        }
        self.record(index, cv);
        Ok(())
    }

    /// Records a chunk verified earlier (restored from storage, re-checked by the caller).
    pub fn record(&mut self, index: u64, cv: Cv) {
        if index < self.count && self.cvs.insert(index, cv).is_none() {
            self.bytes += u64::from(self.len_of(index));
        }
    }

    /// Forgets a chunk (its data on disk turned out to be bad).
    pub fn forget(&mut self, index: u64) {
        if self.cvs.remove(&index).is_some() {
            self.bytes -= u64::from(self.len_of(index));
        }
    }

    /// Whether chunk `index` is verified.
    pub fn has(&self, index: u64) -> bool {
        self.cvs.contains_key(&index)
    }

    /// Verified chunks and their values.
    pub fn verified(&self) -> impl Iterator<Item = (u64, &Cv)> {
        self.cvs.iter().map(|(i, cv)| (*i, cv))
    }

    /// Bytes in verified chunks.
    pub fn verified_bytes(&self) -> u64 {
        self.bytes
    }

    /// All chunks verified.
    pub fn is_complete(&self) -> bool {
        self.cvs.len() as u64 == self.count
    }

    /// The file's hash, once every chunk is verified and it equals the sender's `claimed`.
    pub fn finish(&self, claimed: &Cv) -> Result<Cv, ChunkError> {
        if !self.is_complete() {
            return Err(ChunkError::Incomplete {
                missing: self.count - self.cvs.len() as u64,
            });
        }
        let cvs: Vec<Cv> = self.cvs.values().copied().collect();
        let root = file_hash(&cvs);
        if root != *claimed {
            return Err(ChunkError::HashMismatch);
        }
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u32 = 1024;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn cvs(d: &[u8]) -> Vec<Cv> {
        d.chunks(C as usize)
            .enumerate()
            .map(|(i, c)| chunk_cv(c, i as u64, C, d.len() as u64))
            .collect()
    }

    #[test]
    fn out_of_order_chunks_verify_and_merge_to_the_file_hash() {
        let d = data(5000);
        let v = cvs(&d);
        let mut p = FileProgress::new(5000, C);
        for i in [4u64, 0, 2, 1, 3] {
            let s = (i as usize) * 1024;
            p.verify(i, &d[s..(s + 1024).min(5000)], &v[i as usize])
                .unwrap();
        }
        assert!(p.is_complete());
        assert_eq!(p.verified_bytes(), 5000);
        assert_eq!(
            p.finish(blake3::hash(&d).as_bytes()).unwrap(),
            *blake3::hash(&d).as_bytes()
        );
    }

    #[test]
    fn bad_chunks_are_refused_with_their_cause() {
        let d = data(3000);
        let v = cvs(&d);
        let mut p = FileProgress::new(3000, C);
        assert_eq!(
            p.verify(3, &d[..10], &v[0]),
            Err(ChunkError::OutOfRange { index: 3, count: 3 })
        );
        assert_eq!(
            p.verify(2, &d[..1024], &v[2]),
            Err(ChunkError::WrongLength {
                index: 2,
                expected: 952,
                got: 1024
            })
        );
        let mut bad = d[..1024].to_vec();
        bad[7] ^= 0x80;
        assert_eq!(
            p.verify(0, &bad, &v[0]),
            Err(ChunkError::Mismatch { index: 0 })
        );
        // A chunk moved to another index does not verify either (the offset is hashed in).
        assert_eq!(
            p.verify(1, &d[..1024], &v[0]),
            Err(ChunkError::Mismatch { index: 1 })
        );
        p.verify(0, &d[..1024], &v[0]).unwrap();
        assert_eq!(
            p.finish(&[0; 32]),
            Err(ChunkError::Incomplete { missing: 2 })
        );
        p.verify(1, &d[1024..2048], &v[1]).unwrap();
        p.verify(2, &d[2048..], &v[2]).unwrap();
        assert_eq!(p.finish(&[0; 32]), Err(ChunkError::HashMismatch));
    }

    #[test]
    fn forgotten_and_restored_chunks_keep_the_byte_count() {
        let mut p = FileProgress::new(2500, C);
        p.record(0, [1; 32]);
        p.record(0, [1; 32]);
        p.record(2, [2; 32]);
        p.record(9, [9; 32]);
        assert_eq!(p.verified_bytes(), 1024 + 452);
        p.forget(2);
        assert_eq!(p.verified_bytes(), 1024);
        assert!(p.has(0) && !p.has(2));
    }

    #[test]
    fn a_huge_claimed_size_costs_no_memory() {
        let p = FileProgress::new(u64::MAX, 64 << 10);
        assert_eq!(p.count(), u64::MAX.div_ceil(64 << 10));
        assert_eq!(p.verified_bytes(), 0);
    }
}
