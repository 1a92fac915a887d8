//! Verified shard bytes kept in memory for small reads (`gateway.read_cache_bytes`).
//!
//! A small read that misses costs a shard RPC: a verified slice (4 KiB and a proof, see
//! `lauscha_core::slice_proof`) when nothing of its 64 KiB block (the unit the block
//! hashes cover) is cached, the whole block when something is (the block is read again:
//! sequential reads, or random ones with locality, then hit for the rest of it) or when
//! the read spans more. What came is kept in 4 KiB slices, so that the next small read of
//! the same bytes costs nothing.
//!
//! Architecture Invariant: an entry can never be stale. It is keyed by its shard's digest
//! (metadata's blake3 over the shard's block table) and its slice index, so it is
//! content-addressed: stripes are never rewritten in place, and bytes enter the cache
//! only after they matched a block hash in a block table that matched that digest.
//!
//! Only reads of at most [`CACHED_READ_BLOCKS`] blocks look here and fill it: a large read
//! streams past, so that one big GET or a sequential scan does not evict what small
//! readers share.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use lauscha_core::ShardDigest;
use lauscha_core::checksum::SHARD_BLOCK_BYTES;
use lauscha_core::slice_proof::SLICE_BYTES;
use lru::LruCache;

/// Reads covering at most this many blocks use the cache (256 KiB).
pub const CACHED_READ_BLOCKS: u64 = 4;

/// Verified 4 KiB slices of shards, least recently used evicted first.
pub struct BlockCache {
    slices: Mutex<LruCache<(ShardDigest, u64), Bytes>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// How often the cache answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to a node.
    pub misses: u64,
}

impl BlockCache {
    /// A cache of at most `capacity_bytes` of slices; `None` when that is less than one
    /// slice (the cache is off).
    pub fn new(capacity_bytes: u64) -> Option<BlockCache> {
        let n_slices = NonZeroUsize::new((capacity_bytes / SLICE_BYTES) as usize)?;
        Some(BlockCache {
            slices: Mutex::new(LruCache::new(n_slices)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Whether a read of `blocks` (shard blocks) uses the cache.
    pub fn takes(blocks: &Range<u64>) -> bool {
        blocks.end - blocks.start <= CACHED_READ_BLOCKS
    }

    /// Bytes `[offset, offset + len_bytes)` of the shard with `digest`, if every slice
    /// they touch is cached.
    pub fn get(&self, digest: &ShardDigest, offset: u64, len_bytes: u64) -> Option<Bytes> {
        debug_assert!(Self::takes(&lauscha_core::checksum::covering_blocks(
            offset, len_bytes
        )));
        let slices = covering_slices(offset, len_bytes);
        let found: Option<Vec<Bytes>> = {
            let mut cache = self.slices.lock().expect("block cache lock");
            slices
                .clone()
                .map(|idx| cache.get(&(*digest, idx)).cloned())
                .collect()
        };
        let start = (offset - slices.start * SLICE_BYTES) as usize;
        let end = start + len_bytes as usize;
        let answer = found.and_then(|found| {
            if let [slice] = found.as_slice() {
                // The common case (an aligned 4 KiB read): no copy.
                return (end <= slice.len()).then(|| slice.slice(start..end));
            }
            // Only the shard's last slice may be short, and only at the end of a read.
            let whole = |s: &Bytes| s.len() as u64 == SLICE_BYTES;
            if !found[..found.len() - 1].iter().all(whole) {
                return None;
            }
            let mut joined = BytesMut::with_capacity(found.iter().map(Bytes::len).sum());
            for slice in &found {
                joined.extend_from_slice(slice);
            }
            (end <= joined.len()).then(|| joined.freeze().slice(start..end))
        });
        let counter = if answer.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// Whether any slice of shard block `block_idx` is cached (does not count as a use):
    /// the block is being read again.
    pub fn holds_part_of_block(&self, digest: &ShardDigest, block_idx: u64) -> bool {
        let per_block = SHARD_BLOCK_BYTES / SLICE_BYTES;
        let cache = self.slices.lock().expect("block cache lock");
        (block_idx * per_block..(block_idx + 1) * per_block).any(|i| cache.contains(&(*digest, i)))
    }

    /// Keeps verified bytes of the shard with `digest` that start at shard byte `offset`,
    /// a slice boundary: bytes that matched a block hash, in a block table that matched
    /// `digest`. Each slice is copied, so that the cache holds exactly its bytes and not
    /// the message they came in.
    pub fn insert(&self, digest: &ShardDigest, offset: u64, verified: &[u8]) {
        assert_eq!(offset % SLICE_BYTES, 0, "cached bytes start on a slice");
        let mut cache = self.slices.lock().expect("block cache lock");
        for (i, slice) in verified.chunks(SLICE_BYTES as usize).enumerate() {
            cache.put(
                (*digest, offset / SLICE_BYTES + i as u64),
                Bytes::copy_from_slice(slice),
            );
        }
    }

    /// Hits and misses since start.
    pub fn stats(&self) -> BlockCacheStats {
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// The slices covering shard bytes `[offset, offset + len_bytes)`.
fn covering_slices(offset: u64, len_bytes: u64) -> Range<u64> {
    debug_assert!(len_bytes > 0);
    offset / SLICE_BYTES..(offset + len_bytes).div_ceil(SLICE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = SHARD_BLOCK_BYTES;
    const S: u64 = SLICE_BYTES;

    fn block(fill: u8, len: u64) -> Vec<u8> {
        (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn a_read_is_answered_only_when_every_slice_it_touches_is_cached() {
        let cache = BlockCache::new(64 * B).expect("on");
        let digest = ShardDigest([1; 32]);
        let (b0, b1) = (block(0, B), block(7, B));
        cache.insert(&digest, 0, &b0);
        assert_eq!(
            cache.get(&digest, 100, 4096).as_deref(),
            Some(&b0[100..4196])
        );
        // Spans blocks 0 and 1; block 1 is missing.
        assert_eq!(cache.get(&digest, B - 10, 20), None);
        cache.insert(&digest, B, &b1);
        let mut want = b0[(B - 10) as usize..].to_vec();
        want.extend_from_slice(&b1[..10]);
        assert_eq!(cache.get(&digest, B - 10, 20).as_deref(), Some(&want[..]));
        assert_eq!(cache.stats(), BlockCacheStats { hits: 2, misses: 1 });
    }

    #[test]
    fn a_verified_slice_answers_for_itself_only() {
        let cache = BlockCache::new(64 * B).expect("on");
        let digest = ShardDigest([5; 32]);
        let slice = block(3, S);
        cache.insert(&digest, B + 5 * S, &slice);
        assert_eq!(
            cache.get(&digest, B + 5 * S, S).as_deref(),
            Some(&slice[..])
        );
        assert_eq!(cache.get(&digest, B + 5 * S - 1, 2), None);
        assert_eq!(cache.get(&digest, B + 6 * S, 1), None);
    }

    #[test]
    fn another_shard_never_answers_and_a_short_last_block_is_not_overread() {
        let cache = BlockCache::new(64 * B).expect("on");
        cache.insert(&ShardDigest([1; 32]), 0, &block(0, B));
        assert_eq!(cache.get(&ShardDigest([2; 32]), 0, 4096), None);
        // A shard whose last block is 5000 bytes: a read past its end is not answered.
        let short = ShardDigest([3; 32]);
        cache.insert(&short, 2 * B, &block(9, 5000));
        assert!(cache.get(&short, 2 * B, 5000).is_some());
        assert_eq!(cache.get(&short, 2 * B + 4096, 4096), None);
        assert_eq!(cache.stats(), BlockCacheStats { hits: 1, misses: 2 });
    }

    #[test]
    fn the_least_recently_used_slice_goes_first_and_zero_means_off() {
        assert!(BlockCache::new(S - 1).is_none());
        let cache = BlockCache::new(2 * S).expect("on");
        let d = ShardDigest([4; 32]);
        cache.insert(&d, 0, &block(0, S));
        cache.insert(&d, S, &block(1, S));
        assert!(cache.get(&d, 0, 1).is_some()); // slice 0 used: slice 1 is the oldest
        cache.insert(&d, 2 * S, &block(2, S));
        assert!(cache.get(&d, 0, 1).is_some());
        assert!(cache.get(&d, S, 1).is_none());
        assert!(cache.get(&d, 2 * S, 1).is_some());
    }

    #[test]
    fn a_block_counts_as_held_when_any_of_its_slices_is() {
        let cache = BlockCache::new(B).expect("on");
        let (d, e) = (ShardDigest([6; 32]), ShardDigest([7; 32]));
        assert!(!cache.holds_part_of_block(&d, 1));
        cache.insert(&d, B + 15 * S, &block(0, S));
        assert!(cache.holds_part_of_block(&d, 1));
        assert!(!cache.holds_part_of_block(&d, 0));
        assert!(!cache.holds_part_of_block(&d, 2));
        assert!(!cache.holds_part_of_block(&e, 1));
        // Looking does not count as a use.
        assert_eq!(cache.stats(), BlockCacheStats { hits: 0, misses: 0 });
    }

    #[test]
    fn only_small_reads_take_the_cache() {
        assert!(BlockCache::takes(&(0..1)));
        assert!(BlockCache::takes(&(3..3 + CACHED_READ_BLOCKS)));
        assert!(!BlockCache::takes(&(0..CACHED_READ_BLOCKS + 1)));
    }
}
