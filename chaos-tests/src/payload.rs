//! Self-verifying object payloads and generation-stamped NBD blocks.
//!
//! An object body is a one-line header naming the key, the writer, its sequence number,
//! the run's seed and the length of what follows; then that many bytes derived from the
//! header (blake3 in XOF mode, so nothing has to be stored to check them); then the blake3
//! of everything before. A read tells which write it came from, and whether it is intact
//! and belongs to the key it was read from.

use std::fmt;

/// Identifies one write: the writer (worker index) in the high 24 bits, its sequence
/// number in the low 40. Unique within a run, so a read names exactly one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u64);

impl ValueId {
    /// The value written by `writer` as its `seq`-th write.
    pub fn new(writer: u32, seq: u64) -> ValueId {
        assert!(writer < (1 << 24), "writer {writer} out of range");
        assert!(seq < (1 << 40), "seq {seq} out of range");
        ValueId((u64::from(writer) << 40) | seq)
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}#{}", self.0 >> 40, self.0 & ((1 << 40) - 1))
    }
}

const MAGIC: &str = "lauscha-chaos/1";
const HASH_BYTES: usize = 32;

/// The body written as `value` of `key`, with `len_bytes` seeded bytes after the header.
pub fn object_body(key: &str, value: ValueId, seed: u64, len_bytes: usize) -> Vec<u8> {
    let header = format!(
        "{MAGIC} key={key} writer={} seq={} seed={seed} len={len_bytes}\n",
        value.0 >> 40,
        value.0 & ((1 << 40) - 1)
    );
    let mut body = Vec::with_capacity(header.len() + len_bytes + HASH_BYTES);
    body.extend_from_slice(header.as_bytes());
    let start = body.len();
    body.resize(start + len_bytes, 0);
    blake3::Hasher::new()
        .update(header.as_bytes())
        .finalize_xof()
        .fill(&mut body[start..]);
    let digest = blake3::hash(&body);
    body.extend_from_slice(digest.as_bytes());
    body
}

/// Checks a body read from `key`: the value it carries, or what is wrong with it.
pub fn verify_object(key: &str, body: &[u8]) -> Result<ValueId, String> {
    let newline = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("no header line in {} bytes", body.len()))?;
    let header = std::str::from_utf8(&body[..=newline]).map_err(|_| "header is not UTF-8")?;
    let mut fields = header.trim_end().split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(format!("bad magic in header {header:?}"));
    }
    let mut get = |name: &str| -> Result<&str, String> {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("header {header:?} lacks {name}"))
    };
    let read_key = get("key")?;
    let writer: u32 = get("writer")?.parse().map_err(|_| "bad writer")?;
    let seq: u64 = get("seq")?.parse().map_err(|_| "bad seq")?;
    let _seed: u64 = get("seed")?.parse().map_err(|_| "bad seed")?;
    let len: usize = get("len")?.parse().map_err(|_| "bad len")?;
    if read_key != key {
        return Err(format!("read from {key} but written to {read_key}"));
    }
    let expected_len = newline + 1 + len + HASH_BYTES;
    if body.len() != expected_len {
        return Err(format!("{} bytes, header says {expected_len}", body.len()));
    }
    let (content, digest) = body.split_at(body.len() - HASH_BYTES);
    if blake3::hash(content).as_bytes() != digest {
        return Err("blake3 of the body does not match its trailer".into());
    }
    let mut expected = vec![0u8; len];
    blake3::Hasher::new()
        .update(&body[..=newline])
        .finalize_xof()
        .fill(&mut expected);
    if content[newline + 1..] != expected[..] {
        return Err("seeded bytes differ (a consistent but foreign body)".into());
    }
    Ok(ValueId::new(writer, seq))
}

/// NBD block size the workload writes, bytes.
pub const BLOCK_BYTES: usize = 4096;

/// A 4 KiB block stamped with its generation and index in every 8-byte word, so that a
/// read tells which write it came from and whether it is torn.
pub fn stamped_block(generation: u32, block: u32) -> Vec<u8> {
    let word = (u64::from(generation) << 32) | u64::from(block);
    (0..BLOCK_BYTES / 8)
        .flat_map(|_| word.to_be_bytes())
        .collect()
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockRead {
    /// Never written (zeros).
    Zero,
    /// Written with this generation.
    Generation(u32),
    /// Words from different writes: a torn block.
    Torn,
    /// Another block's data.
    Foreign,
}

/// Decodes a block read back from index `block`.
pub fn read_stamp(data: &[u8], block: u32) -> BlockRead {
    if data.len() != BLOCK_BYTES {
        return BlockRead::Torn;
    }
    let word = |i: usize| u64::from_be_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let first = word(0);
    if (1..BLOCK_BYTES / 8).any(|i| word(i) != first) {
        return BlockRead::Torn;
    }
    if first == 0 {
        return BlockRead::Zero;
    }
    if first & 0xffff_ffff != u64::from(block) {
        return BlockRead::Foreign;
    }
    BlockRead::Generation((first >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bodies_verify_and_every_flipped_bit_is_caught(
            len in 0usize..3000, writer in 0u32..1000, seq in 0u64..1_000_000,
            seed: u64, flip: usize,
        ) {
            let value = ValueId::new(writer, seq);
            let mut body = object_body("k/1", value, seed, len);
            prop_assert_eq!(verify_object("k/1", &body), Ok(value));
            prop_assert!(verify_object("k/2", &body).is_err());
            let bit = flip % (body.len() * 8);
            body[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_object("k/1", &body).is_err());
        }

        #[test]
        fn blocks_decode(generation in 1u32.., block: u32, other: u32, word in 0usize..512) {
            let data = stamped_block(generation, block);
            prop_assert_eq!(read_stamp(&data, block), BlockRead::Generation(generation));
            if other != block {
                prop_assert_eq!(read_stamp(&data, other), BlockRead::Foreign);
            }
            let mut torn = data.clone();
            torn[word * 8..word * 8 + 8].copy_from_slice(&stamped_block(generation ^ 1, block)[..8]);
            prop_assert_eq!(read_stamp(&torn, block), BlockRead::Torn);
        }
    }

    #[test]
    fn truncated_and_zero_bodies_are_errors() {
        let body = object_body("k", ValueId::new(1, 2), 3, 100);
        assert!(verify_object("k", &body[..body.len() - 1]).is_err());
        assert!(verify_object("k", &[]).is_err());
        assert_eq!(read_stamp(&[0; BLOCK_BYTES], 7), BlockRead::Zero);
    }
}
