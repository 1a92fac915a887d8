//! Shard checksums: a two-level blake3 digest that can verify any block-aligned part of a
//! shard end to end.
//!
//! A shard is cut into blocks of [`SHARD_BLOCK_BYTES`]; each block has a blake3 hash, and the
//! shard's digest is the blake3 of its length and the list of block hashes. The metadata
//! stores only the 32-byte digest. A reader that wants a range fetches the block-hash list
//! (32 bytes per 64 KiB, 512 bytes for a 1 MiB shard), checks it against the digest, and
//! checks each block it reads against its hash: no range read ever needs the whole shard,
//! and no byte reaches a client unverified.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Block size of the per-block hashes.
pub const SHARD_BLOCK_BYTES: u64 = 64 * 1024;

const DIGEST_DOMAIN: &[u8] = b"lauscha-shard-digest-v1";

/// A blake3 hash of one block.
pub type BlockHash = [u8; 32];

/// The digest of a whole shard (see the module docs for its construction).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardDigest(pub [u8; 32]);

impl ShardDigest {
    /// Computes the digest from a shard's length and its block hashes.
    pub fn from_block_hashes(shard_len_bytes: u64, block_hashes: &[BlockHash]) -> ShardDigest {
        debug_assert_eq!(block_hashes.len() as u64, n_blocks(shard_len_bytes));
        let mut hasher = blake3::Hasher::new();
        hasher.update(DIGEST_DOMAIN);
        hasher.update(&shard_len_bytes.to_le_bytes());
        for hash in block_hashes {
            hasher.update(hash);
        }
        ShardDigest(*hasher.finalize().as_bytes())
    }

    /// Digest of a shard held in memory.
    pub fn of(shard: &[u8]) -> ShardDigest {
        let mut hasher = ShardHasher::new();
        hasher.update(shard);
        hasher.finalize().0
    }

    /// From a byte slice; `None` unless it is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<ShardDigest> {
        bytes.try_into().ok().map(ShardDigest)
    }
}

impl fmt::Display for ShardDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ShardDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardDigest({})", &hex::encode(self.0)[..16])
    }
}

/// A shard's digest together with the block hashes it is made of, as the writer computed
/// them. The block hashes are shared (`Arc`): a storage node in the writer's own process
/// takes them instead of hashing the same buffer again
/// (`ShardStore::create_prehashed` in the storage node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHashes {
    /// The digest metadata records.
    pub digest: ShardDigest,
    /// The block hashes `digest` is computed from.
    pub block_hashes: Arc<[BlockHash]>,
}

impl ShardHashes {
    /// Digest and block hashes of a shard held in memory, in one pass over its bytes.
    pub fn of(shard: &[u8]) -> ShardHashes {
        let mut hasher = ShardHasher::new();
        hasher.update(shard);
        let (digest, block_hashes) = hasher.finalize();
        ShardHashes {
            digest,
            block_hashes: block_hashes.into(),
        }
    }
}

/// Number of hash blocks in a shard of `shard_len_bytes`.
pub fn n_blocks(shard_len_bytes: u64) -> u64 {
    shard_len_bytes.div_ceil(SHARD_BLOCK_BYTES)
}

/// Length of block `block_idx` of a shard of `shard_len_bytes` (the last may be short).
pub fn block_len_bytes(shard_len_bytes: u64, block_idx: u64) -> u64 {
    let start = block_idx * SHARD_BLOCK_BYTES;
    assert!(
        start < shard_len_bytes,
        "block {block_idx} is past the shard"
    );
    (shard_len_bytes - start).min(SHARD_BLOCK_BYTES)
}

/// The blocks covering shard bytes `[offset, offset + len)`, as a range of block indexes.
pub fn covering_blocks(offset: u64, len_bytes: u64) -> std::ops::Range<u64> {
    if len_bytes == 0 {
        return 0..0;
    }
    let first = offset / SHARD_BLOCK_BYTES;
    let last = (offset + len_bytes - 1) / SHARD_BLOCK_BYTES;
    first..last + 1
}

/// Checks a block against its hash.
pub fn verify_block(block: &[u8], expected: &BlockHash) -> bool {
    // Not secret data: a plain comparison is fine.
    blake3::hash(block).as_bytes() == expected
}

/// Checks a block-hash list against a shard digest.
pub fn verify_block_hashes(
    shard_len_bytes: u64,
    block_hashes: &[BlockHash],
    digest: &ShardDigest,
) -> Result<(), CoreError> {
    if block_hashes.len() as u64 != n_blocks(shard_len_bytes)
        || ShardDigest::from_block_hashes(shard_len_bytes, block_hashes) != *digest
    {
        return Err(CoreError::DigestMismatch);
    }
    Ok(())
}

/// Computes block hashes and the digest of a shard streamed in pieces of any size.
#[derive(Debug)]
pub struct ShardHasher {
    block: blake3::Hasher,
    block_fill_bytes: u64,
    total_bytes: u64,
    block_hashes: Vec<BlockHash>,
}

impl Default for ShardHasher {
    fn default() -> Self {
        ShardHasher::new()
    }
}

impl ShardHasher {
    /// An empty hasher.
    pub fn new() -> ShardHasher {
        ShardHasher {
            block: blake3::Hasher::new(),
            block_fill_bytes: 0,
            total_bytes: 0,
            block_hashes: Vec::new(),
        }
    }

    /// Feeds the next bytes of the shard.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (SHARD_BLOCK_BYTES - self.block_fill_bytes) as usize;
            let take = room.min(bytes.len());
            self.block.update(&bytes[..take]);
            self.block_fill_bytes += take as u64;
            self.total_bytes += take as u64;
            bytes = &bytes[take..];
            if self.block_fill_bytes == SHARD_BLOCK_BYTES {
                self.block_hashes.push(*self.block.finalize().as_bytes());
                self.block.reset();
                self.block_fill_bytes = 0;
            }
        }
    }

    /// Bytes fed so far.
    pub fn len_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The digest and the block hashes.
    pub fn finalize(mut self) -> (ShardDigest, Vec<BlockHash>) {
        if self.block_fill_bytes > 0 {
            self.block_hashes.push(*self.block.finalize().as_bytes());
        }
        let digest = ShardDigest::from_block_hashes(self.total_bytes, &self.block_hashes);
        (digest, self.block_hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shard_hashes_agree_with_the_digest() {
        for len in [0usize, 1, 65_536, 65_537, 300_000] {
            let shard: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let hashes = ShardHashes::of(&shard);
            assert_eq!(hashes.digest, ShardDigest::of(&shard), "len {len}");
            verify_block_hashes(len as u64, &hashes.block_hashes, &hashes.digest)
                .expect("the block hashes make the digest");
        }
    }

    #[test]
    fn block_arithmetic() {
        assert_eq!(n_blocks(0), 0);
        assert_eq!(n_blocks(1), 1);
        assert_eq!(n_blocks(SHARD_BLOCK_BYTES), 1);
        assert_eq!(n_blocks(SHARD_BLOCK_BYTES + 1), 2);
        assert_eq!(block_len_bytes(SHARD_BLOCK_BYTES + 1, 1), 1);
        assert_eq!(covering_blocks(0, 0), 0..0);
        assert_eq!(covering_blocks(SHARD_BLOCK_BYTES - 1, 2), 0..2);
        assert_eq!(covering_blocks(SHARD_BLOCK_BYTES, SHARD_BLOCK_BYTES), 1..2);
    }

    #[test]
    fn a_flipped_byte_fails_its_block_and_the_digest() {
        let shard: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut hasher = ShardHasher::new();
        hasher.update(&shard);
        let (digest, hashes) = hasher.finalize();
        verify_block_hashes(shard.len() as u64, &hashes, &digest).unwrap();
        let mut bad = shard.clone();
        bad[70_000] ^= 1;
        assert!(verify_block(&bad[..65536], &hashes[0]));
        assert!(!verify_block(&bad[65536..131072], &hashes[1]));
        assert_ne!(ShardDigest::of(&bad), digest);
        let mut bad_hashes = hashes.clone();
        bad_hashes[2][0] ^= 1;
        assert!(verify_block_hashes(shard.len() as u64, &bad_hashes, &digest).is_err());
    }

    #[test]
    fn digest_binds_the_length() {
        // A shard and the same shard with a trailing zero differ.
        assert_ne!(ShardDigest::of(&[0u8; 10]), ShardDigest::of(&[0u8; 11]));
        assert_ne!(ShardDigest::of(&[]), ShardDigest::of(&[0u8]));
    }

    /// Golden value: changing the digest construction would orphan every stored shard.
    #[test]
    fn golden_digest_v1() {
        let shard: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        assert_eq!(
            ShardDigest::of(&shard).to_string(),
            GOLDEN_DIGEST_OF_100000_COUNTING_BYTES
        );
    }
    const GOLDEN_DIGEST_OF_100000_COUNTING_BYTES: &str =
        "5761fcd4ea0966926280922fcfebcceaf7aee67166d736ed89a32386cd700185";

    proptest! {
        #[test]
        fn streaming_in_any_pieces_gives_the_same_digest(
            shard in prop::collection::vec(any::<u8>(), 0..300_000),
            cut in prop::collection::vec(1usize..100_000, 0..8),
        ) {
            let whole = ShardDigest::of(&shard);
            let mut hasher = ShardHasher::new();
            let mut rest = &shard[..];
            for c in cut {
                let take = c.min(rest.len());
                hasher.update(&rest[..take]);
                rest = &rest[take..];
            }
            hasher.update(rest);
            prop_assert_eq!(hasher.len_bytes(), shard.len() as u64);
            prop_assert_eq!(hasher.finalize().0, whole);
        }
    }
}
