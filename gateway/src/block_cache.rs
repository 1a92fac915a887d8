//! Verified shard blocks kept in memory for small reads (`gateway.read_cache_bytes`).
//!
//! A 4 KiB read of a volume or an object range costs a shard RPC that carries a whole
//! 64 KiB block (the unit the block hashes cover), hashed on the node and again here. The
//! block is kept, so that the next small read of the same block costs neither.
//!
//! Architecture Invariant: an entry can never be stale. It is keyed by its shard's digest
//! (metadata's blake3 over the shard's block table) and its block index, so it is
//! content-addressed: stripes are never rewritten in place, and a block enters the cache
//! only after it matched its hash in a block table that matched that digest.
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
use lru::LruCache;

/// Reads covering at most this many blocks use the cache (256 KiB).
pub const CACHED_READ_BLOCKS: u64 = 4;

/// Verified shard blocks, least recently used evicted first.
pub struct BlockCache {
    blocks: Mutex<LruCache<(ShardDigest, u64), Bytes>>,
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
    /// A cache of at most `capacity_bytes` of blocks; `None` when that is less than one
    /// block (the cache is off).
    pub fn new(capacity_bytes: u64) -> Option<BlockCache> {
        let n_blocks = NonZeroUsize::new((capacity_bytes / SHARD_BLOCK_BYTES) as usize)?;
        Some(BlockCache {
            blocks: Mutex::new(LruCache::new(n_blocks)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Whether a read of `blocks` uses the cache.
    pub fn takes(blocks: &Range<u64>) -> bool {
        blocks.end - blocks.start <= CACHED_READ_BLOCKS
    }

    /// Bytes `[offset, offset + len_bytes)` of the shard with `digest`, if every block
    /// they touch is cached.
    pub fn get(&self, digest: &ShardDigest, offset: u64, len_bytes: u64) -> Option<Bytes> {
        let blocks = lauscha_core::checksum::covering_blocks(offset, len_bytes);
        debug_assert!(Self::takes(&blocks));
        let found: Option<Vec<Bytes>> = {
            let mut cache = self.blocks.lock().expect("block cache lock");
            blocks
                .clone()
                .map(|idx| cache.get(&(*digest, idx)).cloned())
                .collect()
        };
        let start = (offset - blocks.start * SHARD_BLOCK_BYTES) as usize;
        let end = start + len_bytes as usize;
        let answer = found.and_then(|found| {
            if let [block] = found.as_slice() {
                // The common case (a 4 KiB read): no copy.
                return (end <= block.len()).then(|| block.slice(start..end));
            }
            let mut joined = BytesMut::with_capacity(found.iter().map(Bytes::len).sum());
            for block in &found {
                joined.extend_from_slice(block);
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

    /// Keeps a block that matched its hash, in a block table that matched `digest`. It is
    /// copied, so that the cache holds exactly its bytes and not the message they came in.
    pub fn insert(&self, digest: &ShardDigest, block_idx: u64, verified_block: &[u8]) {
        debug_assert!(verified_block.len() as u64 <= SHARD_BLOCK_BYTES);
        let block = Bytes::copy_from_slice(verified_block);
        self.blocks
            .lock()
            .expect("block cache lock")
            .put((*digest, block_idx), block);
    }

    /// Hits and misses since start.
    pub fn stats(&self) -> BlockCacheStats {
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = SHARD_BLOCK_BYTES;

    fn block(fill: u8, len: u64) -> Vec<u8> {
        (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn a_read_is_answered_only_when_every_block_it_touches_is_cached() {
        let cache = BlockCache::new(16 * B).expect("on");
        let digest = ShardDigest([1; 32]);
        let (b0, b1) = (block(0, B), block(7, B));
        cache.insert(&digest, 0, &b0);
        assert_eq!(
            cache.get(&digest, 100, 4096).as_deref(),
            Some(&b0[100..4196])
        );
        // Spans blocks 0 and 1; block 1 is missing.
        assert_eq!(cache.get(&digest, B - 10, 20), None);
        cache.insert(&digest, 1, &b1);
        let mut want = b0[(B - 10) as usize..].to_vec();
        want.extend_from_slice(&b1[..10]);
        assert_eq!(cache.get(&digest, B - 10, 20).as_deref(), Some(&want[..]));
        assert_eq!(cache.stats(), BlockCacheStats { hits: 2, misses: 1 });
    }

    #[test]
    fn another_shard_never_answers_and_a_short_last_block_is_not_overread() {
        let cache = BlockCache::new(16 * B).expect("on");
        cache.insert(&ShardDigest([1; 32]), 0, &block(0, B));
        assert_eq!(cache.get(&ShardDigest([2; 32]), 0, 4096), None);
        // A shard whose last block is 5000 bytes: a read past its end is not answered.
        let short = ShardDigest([3; 32]);
        cache.insert(&short, 2, &block(9, 5000));
        assert!(cache.get(&short, 2 * B, 5000).is_some());
        assert_eq!(cache.get(&short, 2 * B + 4096, 4096), None);
        assert_eq!(cache.stats(), BlockCacheStats { hits: 1, misses: 2 });
    }

    #[test]
    fn the_least_recently_used_block_goes_first_and_zero_means_off() {
        assert!(BlockCache::new(B - 1).is_none());
        let cache = BlockCache::new(2 * B).expect("on");
        let d = ShardDigest([4; 32]);
        cache.insert(&d, 0, &block(0, B));
        cache.insert(&d, 1, &block(1, B));
        assert!(cache.get(&d, 0, 1).is_some()); // block 0 used: block 1 is the oldest
        cache.insert(&d, 2, &block(2, B));
        assert!(cache.get(&d, 0, 1).is_some());
        assert!(cache.get(&d, B, 1).is_none());
        assert!(cache.get(&d, 2 * B, 1).is_some());
    }

    #[test]
    fn only_small_reads_take_the_cache() {
        assert!(BlockCache::takes(&(0..1)));
        assert!(BlockCache::takes(&(3..3 + CACHED_READ_BLOCKS)));
        assert!(!BlockCache::takes(&(0..CACHED_READ_BLOCKS + 1)));
    }
}
