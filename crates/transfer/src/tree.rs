//! BLAKE3 of a file from its chunks.
//!
//! A file of `size` bytes is cut into chunks of `chunk` bytes (a power of two ≥ 1 KiB; the
//! last chunk may be shorter). Each chunk is a complete subtree of the BLAKE3 tree, so its
//! chaining value can be computed and checked on its own, and the file's root hash is the
//! merge of those values in the tree's shape. A one-chunk file's "chaining value" is its root
//! hash; an empty file has no chunks and hashes to `blake3::hash(b"")`.

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

/// A 32-byte chaining value or hash.
pub type Cv = [u8; 32];

/// Number of chunks in a file.
pub fn chunk_count(size: u64, chunk: u32) -> u64 {
    size.div_ceil(u64::from(chunk.max(1)))
}

/// Length of chunk `index` (0 past the end).
pub fn chunk_len(size: u64, chunk: u32, index: u64) -> u32 {
    let start = index.saturating_mul(u64::from(chunk));
    size.saturating_sub(start).min(u64::from(chunk)) as u32
}

/// The value a receiver checks for chunk `index` of a file of `size` bytes.
pub fn chunk_cv(data: &[u8], index: u64, chunk: u32, size: u64) -> Cv {
    if chunk_count(size, chunk) <= 1 {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * u64::from(chunk));
    h.update(data);
    h.finalize_non_root()
}

/// The file's BLAKE3 from the values of all its chunks, in order. `cvs.len()` must be
/// [`chunk_count`]; an empty slice is the empty file.
pub fn file_hash(cvs: &[Cv]) -> Cv {
    match cvs {
        [] => *blake3::hash(b"").as_bytes(),
        [one] => *one,
        _ => merge(cvs, true),
    }
}

fn merge(cvs: &[Cv], root: bool) -> Cv {
    if let [one] = cvs {
        return *one;
    }
    // The left subtree holds the largest power of two of chunks that is < the total.
    let left = 1usize << (usize::BITS - 1 - (cvs.len() - 1).leading_zeros());
    let (l, r) = cvs.split_at(left);
    let (l, r) = (merge(l, false), merge(r, false));
    if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash_by_chunks(data: &[u8], chunk: u32) -> Cv {
        let size = data.len() as u64;
        let cvs: Vec<Cv> = data
            .chunks(chunk as usize)
            .enumerate()
            .map(|(i, c)| chunk_cv(c, i as u64, chunk, size))
            .collect();
        assert_eq!(cvs.len() as u64, chunk_count(size, chunk));
        file_hash(&cvs)
    }

    #[test]
    fn edges_match_blake3() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for chunk in [1024u32, 2048, 4096, 16384] {
            for len in [
                0usize,
                1,
                1023,
                1024,
                1025,
                2048,
                2049,
                4095,
                4096,
                4097,
                5 * 1024 + 3,
                64 * 1024,
                70_000,
            ] {
                assert_eq!(
                    hash_by_chunks(&data[..len], chunk),
                    *blake3::hash(&data[..len]).as_bytes(),
                    "len {len} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn chunk_lengths() {
        assert_eq!(chunk_count(0, 1024), 0);
        assert_eq!(chunk_count(1, 1024), 1);
        assert_eq!(chunk_count(2049, 1024), 3);
        assert_eq!(chunk_len(2049, 1024, 2), 1);
        assert_eq!(chunk_len(2049, 1024, 3), 0);
    }

    proptest! {
        #[test]
        fn any_file_any_chunk_size_matches_blake3(
            data in proptest::collection::vec(any::<u8>(), 0..40_000),
            shift in 10u32..=13,
        ) {
            prop_assert_eq!(hash_by_chunks(&data, 1 << shift), *blake3::hash(&data).as_bytes());
        }

        #[test]
        fn a_changed_byte_changes_its_chunk_value(
            data in proptest::collection::vec(any::<u8>(), 2049..8192),
            at in any::<prop::sample::Index>(),
        ) {
            let mut bad = data.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1;
            let k = i / 1024;
            let size = data.len() as u64;
            let good_cv = chunk_cv(&data[k * 1024..((k + 1) * 1024).min(data.len())], k as u64, 1024, size);
            let bad_cv = chunk_cv(&bad[k * 1024..((k + 1) * 1024).min(bad.len())], k as u64, 1024, size);
            prop_assert_ne!(good_cv, bad_cv);
        }
    }
}
