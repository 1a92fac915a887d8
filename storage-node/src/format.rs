//! The shard file format, version 1.
//!
//! ```text
//! offset  size        field
//! 0       8           magic "LSHARD\0" followed by the format version byte (1)
//! 8       8           shard length in bytes, little-endian
//! 16      4           block size in bytes, little-endian (65536)
//! 20      4           reserved, zero
//! 24      32          shard digest (see lauscha_core::checksum)
//! 56      32 * n      blake3 of each block, n = ceil(length / block size)
//! 56+32n  length      the shard's bytes
//! ```
//! The header is fixed by the declared length, so a writer reserves it, streams the data
//! behind it, and fills it in last; a file is only linked into place once complete.

use lauscha_core::checksum::{BlockHash, SHARD_BLOCK_BYTES, n_blocks};
use lauscha_core::{ShardDigest, ShardId};

use crate::ShardError;

const MAGIC: [u8; 7] = *b"LSHARD\0";
const VERSION: u8 = 1;
const FIXED_HEADER_BYTES: u64 = 56;

/// Total header length for a shard of `shard_len_bytes`.
pub fn header_len_bytes(shard_len_bytes: u64) -> u64 {
    FIXED_HEADER_BYTES + 32 * n_blocks(shard_len_bytes)
}

/// Encodes the header.
pub fn encode_header(
    shard_len_bytes: u64,
    digest: &ShardDigest,
    block_hashes: &[BlockHash],
) -> Vec<u8> {
    assert_eq!(block_hashes.len() as u64, n_blocks(shard_len_bytes));
    let mut out = Vec::with_capacity(header_len_bytes(shard_len_bytes) as usize);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&shard_len_bytes.to_le_bytes());
    out.extend_from_slice(&(SHARD_BLOCK_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&digest.0);
    for hash in block_hashes {
        out.extend_from_slice(hash);
    }
    out
}

/// The fixed part of a header: length and digest. Everything here came from disk, so every
/// field is checked; a bad one is corruption, never a panic.
pub fn decode_fixed_header(id: ShardId, fixed: &[u8]) -> Result<(u64, ShardDigest), ShardError> {
    let corrupt = |what: &str| ShardError::Corrupt {
        id,
        what: what.to_string(),
    };
    if fixed.len() < FIXED_HEADER_BYTES as usize {
        return Err(corrupt("header truncated"));
    }
    if fixed[..7] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if fixed[7] != VERSION {
        return Err(corrupt("unknown format version"));
    }
    let len = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    let block = u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes"));
    if u64::from(block) != SHARD_BLOCK_BYTES {
        return Err(corrupt("unexpected block size"));
    }
    if len > crate::MAX_SHARD_BYTES {
        return Err(corrupt("length beyond the shard limit"));
    }
    let digest = ShardDigest(fixed[24..56].try_into().expect("32 bytes"));
    Ok((len, digest))
}

/// Splits the block-hash table and checks it against the digest.
pub fn decode_block_hashes(
    id: ShardId,
    shard_len_bytes: u64,
    digest: &ShardDigest,
    table: &[u8],
) -> Result<Vec<BlockHash>, ShardError> {
    let n = n_blocks(shard_len_bytes) as usize;
    if table.len() != n * 32 {
        return Err(ShardError::Corrupt {
            id,
            what: "block table truncated".into(),
        });
    }
    let hashes: Vec<BlockHash> = table
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    lauscha_core::checksum::verify_block_hashes(shard_len_bytes, &hashes, digest).map_err(
        |_| ShardError::Corrupt {
            id,
            what: "block table does not match the digest".into(),
        },
    )?;
    Ok(hashes)
}

/// Byte offset of the fixed header's end, where the block table starts.
pub const BLOCK_TABLE_OFFSET: u64 = FIXED_HEADER_BYTES;

#[cfg(test)]
mod tests {
    use super::*;
    use lauscha_core::{ShardHasher, StripeId};

    fn id() -> ShardId {
        ShardId {
            stripe_id: StripeId(1),
            shard_idx: 0,
        }
    }

    /// A v1 header written by this code, kept as a golden file: an upgrade must keep
    /// reading it.
    #[test]
    fn golden_v1_header_decodes() {
        let golden = include_bytes!("../testdata/shard-v1-header-70000-counting.bin");
        let (len, digest) = decode_fixed_header(id(), golden).unwrap();
        assert_eq!(len, 70_000);
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        assert_eq!(digest, ShardDigest::of(&data));
        let hashes = decode_block_hashes(id(), len, &digest, &golden[56..]).unwrap();
        assert_eq!(hashes.len(), 2);
    }

    #[test]
    fn encoding_matches_the_golden_file() {
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut hasher = ShardHasher::new();
        hasher.update(&data);
        let (digest, hashes) = hasher.finalize();
        let header = encode_header(70_000, &digest, &hashes);
        assert_eq!(header.len() as u64, header_len_bytes(70_000));
        let golden = include_bytes!("../testdata/shard-v1-header-70000-counting.bin");
        assert_eq!(&header[..], &golden[..]);
    }

    #[test]
    fn damaged_headers_are_corruption_not_panics() {
        let data = [9u8; 10];
        let digest = ShardDigest::of(&data);
        let mut hasher = ShardHasher::new();
        hasher.update(&data);
        let (_, hashes) = hasher.finalize();
        let good = encode_header(10, &digest, &hashes);
        for cut in 0..good.len() {
            let _ = decode_fixed_header(id(), &good[..cut]);
        }
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(decode_fixed_header(id(), &bad).is_err());
        let mut bad = good.clone();
        bad[60] ^= 1;
        let (len, digest) = decode_fixed_header(id(), &bad).unwrap();
        assert!(decode_block_hashes(id(), len, &digest, &bad[56..]).is_err());
        let mut bad = good;
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_fixed_header(id(), &bad).is_err());
    }
}
