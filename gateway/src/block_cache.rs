//! Verified shard blocks kept in memory for small reads (`gateway.read_cache_bytes`).
//!
//! A small read that misses costs a shard RPC: a verified slice (4 KiB and a proof, see
//! `lauscha_core::slice_proof`), or its whole 64 KiB block (the unit the block hashes
//! cover), which is kept here in case the rest of it is read next.
//!
//! Which of the two pays depends on the readers: a sequential reader, or a random one
//! whose working set the cache nearly holds, reads much of a kept block; a random reader
//! of a large volume reads almost none of it before it is evicted. The cache measures it
//! as blocks leave: how many 4 KiB slices of a block were read that its block read had
//! not asked for ([`BlockCache::miss_plan`]). While that yield is at least
//! [`PREFETCH_PAYS`] (and until enough blocks have left to tell), misses read blocks;
//! below it they read slices (not kept: their readers rarely come back), and one miss in
//! [`EXPLORE_EVERY`] reads a block still, so that a change of readers is noticed.
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
use lauscha_core::slice_proof::SLICE_BYTES;
use lru::LruCache;

/// Reads covering at most this many blocks use the cache (256 KiB).
pub const CACHED_READ_BLOCKS: u64 = 4;

/// Slices read per block read, beyond those it was read for, at which reading blocks
/// pays: a block read costs about 1.5 slice reads (`benches/nbd-job.sh`, server CPU per
/// 4 KiB read with the cache off: 210 to 250 us by blocks, 140 by slices).
pub const PREFETCH_PAYS: f64 = 0.5;

/// While slices are read, one miss in this many reads its block to measure the yield.
pub const EXPLORE_EVERY: u64 = 8;

/// The yield is measured over about this many blocks that left the cache most recently
/// (older ones are halved away); until this many have left, misses read blocks.
const YIELD_WINDOW_BLOCKS: u64 = 256;

/// Verified shard blocks, least recently used evicted first.
pub struct BlockCache {
    state: Mutex<CacheState>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct CacheState {
    blocks: LruCache<(ShardDigest, u64), CachedBlock>,
    /// Blocks that left the cache that a [`MissPlan::Block`] read had brought, recent ones
    /// weighing more.
    measured_blocks: u64,
    /// Their slices read that their block read had not asked for.
    prefetched_read: u64,
    /// Misses while slices are preferred, for [`EXPLORE_EVERY`].
    slice_misses: u64,
}

struct CachedBlock {
    bytes: Bytes,
    /// Slices (bit i: bytes `[i * 4 KiB, (i + 1) * 4 KiB)`) read, or asked for by the
    /// block read.
    read: u16,
    /// Brought by a [`MissPlan::Block`] read: measured when it leaves.
    measured: bool,
    /// Slices read that the block read had not asked for.
    prefetched_read: u32,
}

/// Bits of the slices of a block that `[start, end)` (bytes within the block) touches.
fn slice_bits(start: u64, end: u64) -> u16 {
    debug_assert!(start < end && end <= SHARD_BLOCK_BYTES);
    let (first, last) = (start / SLICE_BYTES, (end - 1) / SLICE_BYTES);
    ((u32::MAX >> (31 - last)) & (u32::MAX << first)) as u16
}

/// How a small read that missed the cache goes to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissPlan {
    /// The whole block, kept.
    Block,
    /// A verified slice, not kept.
    Slice,
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
            state: Mutex::new(CacheState {
                blocks: LruCache::new(n_blocks),
                measured_blocks: 0,
                prefetched_read: 0,
                slice_misses: 0,
            }),
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
            let mut guard = self.state.lock().expect("block cache lock");
            let state = &mut *guard;
            // Every block is looked up before any slice is marked read: a partial hit is
            // a miss.
            if blocks
                .clone()
                .all(|idx| state.blocks.contains(&(*digest, idx)))
            {
                let found = blocks
                    .clone()
                    .map(|idx| {
                        let block = state
                            .blocks
                            .get_mut(&(*digest, idx))
                            .expect("looked up under the same lock");
                        let block_start = idx * SHARD_BLOCK_BYTES;
                        let start = offset.max(block_start) - block_start;
                        // A read past a short last block is refused below: nothing counts.
                        let end = ((offset + len_bytes).min(block_start + SHARD_BLOCK_BYTES)
                            - block_start)
                            .min(block.bytes.len() as u64);
                        if start < end {
                            let bits = slice_bits(start, end);
                            block.prefetched_read += (bits & !block.read).count_ones();
                            block.read |= bits;
                        }
                        block.bytes.clone()
                    })
                    .collect();
                Some(found)
            } else {
                None
            }
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

    /// How a small read inside one block that missed goes to its node.
    pub fn miss_plan(&self) -> MissPlan {
        let mut state = self.state.lock().expect("block cache lock");
        let pays = state.measured_blocks < YIELD_WINDOW_BLOCKS
            || state.prefetched_read as f64 >= PREFETCH_PAYS * state.measured_blocks as f64;
        if pays {
            return MissPlan::Block;
        }
        state.slice_misses += 1;
        if state.slice_misses.is_multiple_of(EXPLORE_EVERY) {
            MissPlan::Block
        } else {
            MissPlan::Slice
        }
    }

    /// Keeps a block that matched its hash, in a block table that matched `digest`.
    /// `asked` is the range of shard bytes its read was for, when that read was a
    /// [`MissPlan::Block`]: the block's other slices count as prefetched. It is copied,
    /// so that the cache holds exactly its bytes and not the message they came in.
    pub fn insert(
        &self,
        digest: &ShardDigest,
        block_idx: u64,
        verified_block: &[u8],
        asked: Option<Range<u64>>,
    ) {
        debug_assert!(verified_block.len() as u64 <= SHARD_BLOCK_BYTES);
        let block_start = block_idx * SHARD_BLOCK_BYTES;
        let measured = asked.is_some();
        let read = match asked {
            Some(asked)
                if asked.start < block_start + SHARD_BLOCK_BYTES && asked.end > block_start =>
            {
                slice_bits(
                    asked.start.max(block_start) - block_start,
                    asked.end.min(block_start + SHARD_BLOCK_BYTES) - block_start,
                )
            }
            Some(_) => 0,
            None => u16::MAX,
        };
        let block = CachedBlock {
            bytes: Bytes::copy_from_slice(verified_block),
            read,
            measured,
            prefetched_read: 0,
        };
        let mut state = self.state.lock().expect("block cache lock");
        // Concurrent misses of one block each read it: the first copy stays, and what
        // the others asked for counts as read, not as prefetched.
        if let Some(kept) = state.blocks.get_mut(&(*digest, block_idx)) {
            kept.read |= block.read;
            return;
        }
        // The evicted block leaves now: its yield is known.
        if let Some((_, gone)) = state.blocks.push((*digest, block_idx), block)
            && gone.measured
        {
            state.measured_blocks += 1;
            state.prefetched_read += u64::from(gone.prefetched_read);
            if state.measured_blocks >= 2 * YIELD_WINDOW_BLOCKS {
                state.measured_blocks /= 2;
                state.prefetched_read /= 2;
            }
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
        cache.insert(&digest, 0, &b0, None);
        assert_eq!(
            cache.get(&digest, 100, 4096).as_deref(),
            Some(&b0[100..4196])
        );
        // Spans blocks 0 and 1; block 1 is missing.
        assert_eq!(cache.get(&digest, B - 10, 20), None);
        cache.insert(&digest, 1, &b1, None);
        let mut want = b0[(B - 10) as usize..].to_vec();
        want.extend_from_slice(&b1[..10]);
        assert_eq!(cache.get(&digest, B - 10, 20).as_deref(), Some(&want[..]));
        assert_eq!(cache.stats(), BlockCacheStats { hits: 2, misses: 1 });
    }

    #[test]
    fn another_shard_never_answers_and_a_short_last_block_is_not_overread() {
        let cache = BlockCache::new(16 * B).expect("on");
        cache.insert(&ShardDigest([1; 32]), 0, &block(0, B), None);
        assert_eq!(cache.get(&ShardDigest([2; 32]), 0, 4096), None);
        // A shard whose last block is 5000 bytes: a read past its end is not answered.
        let short = ShardDigest([3; 32]);
        cache.insert(&short, 2, &block(9, 5000), None);
        assert!(cache.get(&short, 2 * B, 5000).is_some());
        assert_eq!(cache.get(&short, 2 * B + 4096, 4096), None);
        assert_eq!(cache.stats(), BlockCacheStats { hits: 1, misses: 2 });
    }

    #[test]
    fn the_least_recently_used_block_goes_first_and_zero_means_off() {
        assert!(BlockCache::new(B - 1).is_none());
        let cache = BlockCache::new(2 * B).expect("on");
        let d = ShardDigest([4; 32]);
        cache.insert(&d, 0, &block(0, B), None);
        cache.insert(&d, 1, &block(1, B), None);
        assert!(cache.get(&d, 0, 1).is_some()); // block 0 used: block 1 is the oldest
        cache.insert(&d, 2, &block(2, B), None);
        assert!(cache.get(&d, 0, 1).is_some());
        assert!(cache.get(&d, B, 1).is_none());
        assert!(cache.get(&d, 2 * B, 1).is_some());
    }

    const S: u64 = SLICE_BYTES;

    #[test]
    fn slice_bits_cover_the_slices_a_range_touches() {
        assert_eq!(slice_bits(0, S), 0b1);
        assert_eq!(slice_bits(S - 1, S + 1), 0b11);
        assert_eq!(slice_bits(15 * S, 16 * S), 1 << 15);
        assert_eq!(slice_bits(0, B), u16::MAX);
        assert_eq!(slice_bits(2 * S + 5, 3 * S), 0b100);
    }

    /// A small read as `NodePool::read_shard` does it: the cache, else the plan's read,
    /// a block kept. Returns the plan of a miss, `None` for a hit.
    fn read(cache: &BlockCache, d: &ShardDigest, offset: u64) -> Option<MissPlan> {
        if cache.get(d, offset, S).is_some() {
            return None;
        }
        let plan = cache.miss_plan();
        if plan == MissPlan::Block {
            cache.insert(d, offset / B, &block(1, B), Some(offset..offset + S));
        }
        Some(plan)
    }

    /// A deterministic stream of slice offsets spread over `n_blocks` blocks.
    fn scattered(n_blocks: u64) -> impl Iterator<Item = u64> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (n_blocks * (B / S)) * S
        })
    }

    #[test]
    fn concurrent_reads_of_one_block_count_once_and_as_asked() {
        let cache = BlockCache::new(B).expect("on"); // one block
        let d = ShardDigest([12; 32]);
        // Sixteen misses of one block, all in flight before the first block arrives.
        for i in 0..16 {
            cache.insert(&d, 0, &block(1, B), Some(i * S..(i + 1) * S));
        }
        // Nothing was prefetched: every slice was asked for by a read of its own.
        for i in 0..16 {
            assert!(cache.get(&d, i * S, S).is_some());
        }
        // Evicting it measures one block that yielded nothing.
        cache.insert(&d, 1, &block(2, B), Some(0..S));
        let state = cache.state.lock().unwrap();
        assert_eq!((state.measured_blocks, state.prefetched_read), (1, 0));
    }

    #[test]
    fn a_sequential_reader_reads_blocks_and_hits_the_rest() {
        let cache = BlockCache::new(64 * B).expect("on");
        let d = ShardDigest([8; 32]);
        let plans: Vec<_> = (0..40 * B / S)
            .filter_map(|i| read(&cache, &d, i * S))
            .collect();
        assert_eq!(plans.len(), 40, "one miss per block");
        assert!(plans.iter().all(|p| *p == MissPlan::Block));
    }

    #[test]
    fn random_reads_of_far_more_than_the_cache_read_slices_and_still_sample_blocks() {
        let cache = BlockCache::new(8 * B).expect("on");
        let d = ShardDigest([9; 32]);
        let plans: Vec<_> = scattered(100_000)
            .take(4000)
            .filter_map(|o| read(&cache, &d, o))
            .collect();
        // The first reads are blocks, until prefetching is seen not to pay.
        assert!(
            plans[..YIELD_WINDOW_BLOCKS as usize]
                .iter()
                .all(|p| *p == MissPlan::Block)
        );
        let late = &plans[plans.len() - 800..];
        let blocks = late.iter().filter(|p| **p == MissPlan::Block).count() as u64;
        assert_eq!(
            blocks,
            800 / EXPLORE_EVERY,
            "one block read in {EXPLORE_EVERY}"
        );
    }

    #[test]
    fn readers_turning_sequential_turn_block_reads_back_on() {
        let cache = BlockCache::new(16 * B).expect("on");
        let d = ShardDigest([10; 32]);
        for o in scattered(100_000).take(4000) {
            read(&cache, &d, o);
        }
        assert_eq!(cache.miss_plan(), MissPlan::Slice);
        // Sequential now, over another shard: the sampled block reads are read through.
        let e = ShardDigest([11; 32]);
        let plans: Vec<_> = (0..400 * B / S)
            .filter_map(|i| read(&cache, &e, i * S))
            .collect();
        let first_block_run = plans
            .windows(20)
            .position(|w| w.iter().all(|p| *p == MissPlan::Block))
            .expect("blocks again");
        assert!(
            plans[first_block_run..]
                .iter()
                .all(|p| *p == MissPlan::Block),
            "and they stay: {plans:?}"
        );
    }

    #[test]
    fn only_small_reads_take_the_cache() {
        assert!(BlockCache::takes(&(0..1)));
        assert!(BlockCache::takes(&(3..3 + CACHED_READ_BLOCKS)));
        assert!(!BlockCache::takes(&(0..CACHED_READ_BLOCKS + 1)));
    }
}
