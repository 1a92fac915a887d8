//! Verified slices: a reader checks a few KiB of a shard block against the block's hash
//! without fetching the rest of the block.
//!
//! A blake3 hash is the root of a binary tree over 1 KiB chunks; the left subtree of n
//! bytes holds the largest power-of-two number of chunks that leaves at least one byte
//! for the right ([`blake3::hazmat::left_subtree_len`]). A node that holds a block sends
//! the bytes a reader asked for, widened to [`SLICE_BYTES`] boundaries ([`widened`]), and
//! the chaining values of the largest subtrees lying wholly outside them, left to right
//! ([`checked_proof`]): at most two per tree level, 8 for a 4 KiB-aligned range of a
//! 64 KiB block. The reader hashes the bytes it got, merges them up the tree with those
//! chaining values and compares the root with the block hash it checked against the
//! shard digest ([`verify`]). Other bytes or
//! other chaining values that pass would be a blake3 collision: this is Bao's verified
//! streaming, over one block.
//!
//! A 4 KiB read then moves 4 KiB, at most 256 bytes of proof and the shard's block
//! table (512 bytes per MiB of shard) instead of a 64 KiB block, and the reader hashes
//! 4 KiB and the table instead of 64 KiB and the table.

use std::ops::Range;

use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::checksum::BlockHash;

/// The unit a slice is widened to: four blake3 chunks, one guest page.
pub const SLICE_BYTES: u64 = 4096;

/// A blake3 chaining value: the non-root hash of a subtree.
pub type ChainingValue = blake3::hazmat::ChainingValue;

const CHUNK_BYTES: u64 = blake3::CHUNK_LEN as u64;

/// The bytes a node sends for a read of `[offset, offset + len_bytes)` of a block of
/// `block_len_bytes`: the read widened to [`SLICE_BYTES`] boundaries, ending at the block's
/// end at the latest. Offsets are within the block.
pub fn widened(block_len_bytes: u64, offset: u64, len_bytes: u64) -> Range<u64> {
    assert!(
        len_bytes > 0 && offset + len_bytes <= block_len_bytes,
        "read [{offset}, +{len_bytes}) is not inside a block of {block_len_bytes} bytes"
    );
    let start = offset / SLICE_BYTES * SLICE_BYTES;
    let end = (offset + len_bytes).div_ceil(SLICE_BYTES) * SLICE_BYTES;
    start..end.min(block_len_bytes)
}

/// Where the subtree `[lo, hi)` of a block lies relative to the slice `within`.
enum Overlap {
    Outside,
    Inside,
    Split(u64),
}

fn overlap(subtree: &Range<u64>, within: &Range<u64>) -> Overlap {
    if subtree.end <= within.start || subtree.start >= within.end {
        Overlap::Outside
    } else if within.start <= subtree.start && subtree.end <= within.end {
        Overlap::Inside
    } else {
        let len = subtree.end - subtree.start;
        // `within` starts and ends on chunk boundaries (or the block's end), so a single
        // chunk is always wholly inside or wholly outside it.
        assert!(len > CHUNK_BYTES, "slice {within:?} splits a chunk");
        Overlap::Split(subtree.start + left_subtree_len(len))
    }
}

fn subtree_cv(bytes: &[u8], offset: u64) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(bytes)
        .finalize_non_root()
}

fn checked_slice(block_len_bytes: u64, within: &Range<u64>) {
    assert!(
        within.start < within.end
            && within.end <= block_len_bytes
            && within.start.is_multiple_of(SLICE_BYTES)
            && (within.end.is_multiple_of(SLICE_BYTES) || within.end == block_len_bytes),
        "{within:?} is not a slice of a block of {block_len_bytes} bytes"
    );
}

/// The chaining values a reader of `block[within]` needs to check it against the block's
/// hash: those of the largest subtrees wholly outside `within`, left to right. `within`
/// comes from [`widened`]. `None` if the block does not hash to `block_hash` (it rotted):
/// the holder checks its block in the same pass that computes the proof.
pub fn checked_proof(
    block: &[u8],
    within: Range<u64>,
    block_hash: &BlockHash,
) -> Option<Vec<ChainingValue>> {
    let block_len = block.len() as u64;
    checked_slice(block_len, &within);
    let mut outside = Vec::new();
    let root = match overlap(&(0..block_len), &within) {
        Overlap::Inside => *blake3::hash(block).as_bytes(),
        Overlap::Split(mid) => {
            let left = cv_noting_outside(block, 0..mid, &within, &mut outside);
            let right = cv_noting_outside(block, mid..block_len, &within, &mut outside);
            *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
        }
        Overlap::Outside => unreachable!("a non-empty slice of the block overlaps it"),
    };
    (root == *block_hash).then_some(outside)
}

/// The chaining value of a subtree, noting those of its parts outside `within`.
fn cv_noting_outside(
    block: &[u8],
    subtree: Range<u64>,
    within: &Range<u64>,
    outside: &mut Vec<ChainingValue>,
) -> ChainingValue {
    let bytes = &block[subtree.start as usize..subtree.end as usize];
    match overlap(&subtree, within) {
        Overlap::Outside => {
            let cv = subtree_cv(bytes, subtree.start);
            outside.push(cv);
            cv
        }
        Overlap::Inside => subtree_cv(bytes, subtree.start),
        Overlap::Split(mid) => {
            let left = cv_noting_outside(block, subtree.start..mid, within, outside);
            let right = cv_noting_outside(block, mid..subtree.end, within, outside);
            merge_subtrees_non_root(&left, &right, Mode::Hash)
        }
    }
}

/// Whether `slice`, claimed to be bytes `within` of a block of `block_len_bytes`, hashes
/// with `proof` to `block_hash`. `within` comes from [`widened`]; a proof with a value
/// too many or too few fails.
pub fn verify(
    block_len_bytes: u64,
    within: Range<u64>,
    slice: &[u8],
    proof: &[ChainingValue],
    block_hash: &BlockHash,
) -> bool {
    checked_slice(block_len_bytes, &within);
    if slice.len() as u64 != within.end - within.start {
        return false;
    }
    let whole = 0..block_len_bytes;
    let mut proof = proof.iter();
    let root = match overlap(&whole, &within) {
        // The whole block was sent: its root is an ordinary hash.
        Overlap::Inside => *blake3::hash(slice).as_bytes(),
        Overlap::Split(mid) => {
            let left = subtree_root_cv(0..mid, &within, slice, &mut proof);
            let right = subtree_root_cv(mid..block_len_bytes, &within, slice, &mut proof);
            match (left, right) {
                (Some(left), Some(right)) => {
                    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
                }
                _ => return false,
            }
        }
        Overlap::Outside => unreachable!("a non-empty slice of the block overlaps it"),
    };
    proof.next().is_none() && root == *block_hash
}

fn subtree_root_cv(
    subtree: Range<u64>,
    within: &Range<u64>,
    slice: &[u8],
    proof: &mut std::slice::Iter<'_, ChainingValue>,
) -> Option<ChainingValue> {
    match overlap(&subtree, within) {
        Overlap::Outside => proof.next().copied(),
        Overlap::Inside => Some(subtree_cv(
            &slice[(subtree.start - within.start) as usize..(subtree.end - within.start) as usize],
            subtree.start,
        )),
        Overlap::Split(mid) => {
            let left = subtree_root_cv(subtree.start..mid, within, slice, proof)?;
            let right = subtree_root_cv(mid..subtree.end, within, slice, proof)?;
            Some(merge_subtrees_non_root(&left, &right, Mode::Hash))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::SHARD_BLOCK_BYTES;
    use proptest::prelude::*;

    fn block(len: u64, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn a_4k_read_of_a_full_block_needs_four_values_and_passes() {
        let b = block(SHARD_BLOCK_BYTES, 1);
        let hash = *blake3::hash(&b).as_bytes();
        let within = widened(SHARD_BLOCK_BYTES, 5 * SLICE_BYTES, SLICE_BYTES);
        assert_eq!(within, 5 * SLICE_BYTES..6 * SLICE_BYTES);
        let cvs = checked_proof(&b, within.clone(), &hash).expect("the block's own hash");
        // One sibling per level above the slice: 8, 4, 2 and 1 slices.
        assert_eq!(cvs.len(), 4);
        let slice = &b[within.start as usize..within.end as usize];
        assert!(verify(
            SHARD_BLOCK_BYTES,
            within.clone(),
            slice,
            &cvs,
            &hash
        ));
        // Any other byte, value, order or count fails.
        let mut bad = slice.to_vec();
        bad[100] ^= 1;
        assert!(!verify(
            SHARD_BLOCK_BYTES,
            within.clone(),
            &bad,
            &cvs,
            &hash
        ));
        let mut swapped = cvs.clone();
        swapped.swap(0, 1);
        assert!(!verify(
            SHARD_BLOCK_BYTES,
            within.clone(),
            slice,
            &swapped,
            &hash
        ));
        assert!(!verify(
            SHARD_BLOCK_BYTES,
            within.clone(),
            slice,
            &cvs[..3],
            &hash
        ));
        let mut longer = cvs.clone();
        longer.push([0; 32]);
        assert!(!verify(SHARD_BLOCK_BYTES, within, slice, &longer, &hash));
    }

    #[test]
    fn a_read_is_widened_to_slices_and_ends_at_the_block() {
        assert_eq!(widened(SHARD_BLOCK_BYTES, 100, 10), 0..SLICE_BYTES);
        assert_eq!(
            widened(SHARD_BLOCK_BYTES, SLICE_BYTES - 1, 2),
            0..2 * SLICE_BYTES
        );
        assert_eq!(widened(5000, 4500, 500), SLICE_BYTES..5000);
    }

    proptest! {
        #[test]
        fn every_slice_of_every_block_verifies_and_nothing_else_does(
            block_len in 1u64..=SHARD_BLOCK_BYTES,
            seed in any::<u8>(),
            a in any::<u64>(),
            b in any::<u64>(),
            flip in any::<u64>(),
        ) {
            let data = block(block_len, seed);
            let hash = *blake3::hash(&data).as_bytes();
            let (x, y) = (a % block_len, b % block_len);
            let (offset, len) = (x.min(y), x.max(y) - x.min(y) + 1);
            let within = widened(block_len, offset, len);
            prop_assert!(within.start <= offset && offset + len <= within.end);
            let cvs = checked_proof(&data, within.clone(), &hash).expect("the block's own hash");
            prop_assert!(cvs.len() <= 14);
            let slice = &data[within.start as usize..within.end as usize];
            prop_assert!(verify(block_len, within.clone(), slice, &cvs, &hash));
            // Against another block's hash, or with one bit changed anywhere, it fails.
            let other = *blake3::hash(&block(block_len, seed.wrapping_add(1))).as_bytes();
            prop_assert!(!verify(block_len, within.clone(), slice, &cvs, &other));
            // The holder finds a block that no longer matches its hash.
            prop_assert!(checked_proof(&data, within.clone(), &other).is_none());
            let mut bad = slice.to_vec();
            let at = (flip % bad.len() as u64) as usize;
            bad[at] ^= 1 << (flip % 8);
            prop_assert!(!verify(block_len, within.clone(), &bad, &cvs, &hash));
            if !cvs.is_empty() {
                let mut bad_cvs = cvs.clone();
                let i = (flip % cvs.len() as u64) as usize;
                bad_cvs[i][(flip % 32) as usize] ^= 1;
                prop_assert!(!verify(block_len, within, slice, &bad_cvs, &hash));
            }
        }
    }
}
