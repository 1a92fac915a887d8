//! Stripe layout arithmetic: how an object's bytes map onto stripes and shards.
//!
//! An object is cut into stripes of at most `k * shard_size_bytes` bytes. Within a stripe of
//! `stripe_len` bytes every shard is `shard_len = ceil(stripe_len / k)` bytes long; data shard
//! `i` holds the stripe's bytes `[i * shard_len, (i + 1) * shard_len)`, zero-padded past the
//! stripe's end. Contiguous shards (rather than interleaved bytes) let a Range read touch
//! only the shards that cover it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// How a writer cuts a body into stripes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeLayout {
    /// k.
    pub n_data_shards: u8,
    /// The largest shard a full stripe has.
    pub shard_size_bytes: u32,
}

impl StripeLayout {
    /// Bytes of object data in a full stripe: k * shard size.
    pub fn stripe_capacity_bytes(&self) -> u64 {
        u64::from(self.n_data_shards) * u64::from(self.shard_size_bytes)
    }
}

/// Length of every shard (data and parity) of a stripe holding `stripe_len` bytes.
pub fn shard_len_bytes(stripe_len: u64, n_data_shards: usize) -> u64 {
    assert!(n_data_shards > 0, "k must be positive");
    stripe_len.div_ceil(n_data_shards as u64)
}

/// The part of a stripe that data shard `shard_idx` holds, as a range of stripe offsets;
/// empty when the stripe is too short to reach that shard.
pub fn data_shard_span(stripe_len: u64, n_data_shards: usize, shard_idx: usize) -> Range<u64> {
    assert!(shard_idx < n_data_shards, "not a data shard");
    let shard_len = shard_len_bytes(stripe_len, n_data_shards);
    let start = (shard_idx as u64 * shard_len).min(stripe_len);
    let end = (start + shard_len).min(stripe_len);
    start..end
}

/// A contiguous piece of one data shard that a read needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPiece {
    /// Which data shard.
    pub shard_idx: usize,
    /// Offset within the shard.
    pub offset_in_shard: u64,
    /// Bytes to take.
    pub len_bytes: u64,
}

/// What a read needs from one stripe, in output order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeRead {
    /// Index into the object's stripe list.
    pub stripe_idx: usize,
    /// The wanted bytes as offsets within the stripe.
    pub stripe_range: Range<u64>,
    /// The shard pieces that together are `stripe_range`, in order.
    pub pieces: Vec<ShardPiece>,
}

/// Plans the read of `range` (object offsets, end exclusive) from an object whose stripes
/// hold `stripe_lens` bytes each. Stripes the range does not touch are not in the plan.
///
/// Panics if `range` reaches past the object: callers resolve S3 ranges first.
pub fn plan_range_read(
    stripe_lens: &[u64],
    n_data_shards: usize,
    range: Range<u64>,
) -> Vec<StripeRead> {
    let object_len: u64 = stripe_lens.iter().sum();
    assert!(
        range.start <= range.end && range.end <= object_len,
        "range {range:?} outside object of {object_len} bytes"
    );
    let mut plan = Vec::new();
    let mut stripe_start = 0u64;
    for (stripe_idx, &stripe_len) in stripe_lens.iter().enumerate() {
        let stripe_end = stripe_start + stripe_len;
        let lo = range.start.max(stripe_start);
        let hi = range.end.min(stripe_end);
        if lo < hi {
            let stripe_range = (lo - stripe_start)..(hi - stripe_start);
            let mut pieces = Vec::new();
            for shard_idx in 0..n_data_shards {
                let span = data_shard_span(stripe_len, n_data_shards, shard_idx);
                let a = stripe_range.start.max(span.start);
                let b = stripe_range.end.min(span.end);
                if a < b {
                    pieces.push(ShardPiece {
                        shard_idx,
                        offset_in_shard: a - span.start,
                        len_bytes: b - a,
                    });
                }
            }
            plan.push(StripeRead {
                stripe_idx,
                stripe_range,
                pieces,
            });
        }
        stripe_start = stripe_end;
    }
    plan
}

/// An HTTP byte range as a client asks for it (`bytes=a-b`, `bytes=a-`, `bytes=-n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedRange {
    /// `bytes=first-last`, `last` inclusive; `None` means to the end.
    FromTo {
        /// First byte.
        first: u64,
        /// Last byte, inclusive, if given.
        last: Option<u64>,
    },
    /// `bytes=-n`: the last n bytes.
    Suffix {
        /// How many bytes from the end.
        len_bytes: u64,
    },
}

impl RequestedRange {
    /// Resolves against an object of `object_len` bytes into offsets (end exclusive), as
    /// RFC 9110 says: a `last` past the end is clamped, a suffix longer than the object is
    /// the whole object; `None` (unsatisfiable, S3's InvalidRange) when the first byte is at or
    /// past the end, or a suffix of zero bytes.
    pub fn resolve(self, object_len: u64) -> Option<Range<u64>> {
        match self {
            RequestedRange::FromTo { first, last } => {
                if first >= object_len {
                    return None;
                }
                let end = match last {
                    Some(last) if last < first => return None,
                    Some(last) => last.saturating_add(1).min(object_len),
                    None => object_len,
                };
                Some(first..end)
            }
            RequestedRange::Suffix { len_bytes } => {
                if len_bytes == 0 {
                    return None;
                }
                Some(object_len.saturating_sub(len_bytes)..object_len)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads `range` from `object` by following the plan through simulated shards.
    fn read_through_plan(
        object: &[u8],
        stripe_lens: &[u64],
        k: usize,
        range: Range<u64>,
    ) -> Vec<u8> {
        let mut stripe_starts = vec![0u64];
        for len in stripe_lens {
            stripe_starts.push(stripe_starts.last().unwrap() + len);
        }
        let mut out = Vec::new();
        for read in plan_range_read(stripe_lens, k, range) {
            let stripe_len = stripe_lens[read.stripe_idx];
            let stripe = &object[stripe_starts[read.stripe_idx] as usize..][..stripe_len as usize];
            let shard_len = shard_len_bytes(stripe_len, k) as usize;
            for piece in read.pieces {
                // Build the padded shard as the writer would.
                let mut shard = vec![0u8; shard_len];
                let span = data_shard_span(stripe_len, k, piece.shard_idx);
                shard[..(span.end - span.start) as usize]
                    .copy_from_slice(&stripe[span.start as usize..span.end as usize]);
                let a = piece.offset_in_shard as usize;
                out.extend_from_slice(&shard[a..a + piece.len_bytes as usize]);
            }
        }
        out
    }

    #[test]
    fn boundaries_of_a_three_stripe_object() {
        // k = 4, shard 4 bytes: stripes of 16, 16 and 5 bytes.
        let object: Vec<u8> = (0..37u8).collect();
        let lens = [16, 16, 5];
        for (a, b) in [
            (0, 37),
            (0, 1),
            (3, 5),
            (15, 16),
            (15, 17),
            (16, 32),
            (31, 33),
            (32, 37),
            (36, 37),
            (4, 8),
            (5, 5),
        ] {
            assert_eq!(
                read_through_plan(&object, &lens, 4, a..b),
                object[a as usize..b as usize],
                "range {a}..{b}"
            );
        }
    }

    #[test]
    fn a_tiny_stripe_leaves_trailing_shards_empty() {
        // 5 bytes over k = 4: shard_len 2, shards hold 2, 2, 1, 0 bytes.
        assert_eq!(shard_len_bytes(5, 4), 2);
        assert_eq!(data_shard_span(5, 4, 2), 4..5);
        assert_eq!(data_shard_span(5, 4, 3), 5..5);
        let plan = plan_range_read(&[5], 4, 0..5);
        assert_eq!(plan[0].pieces.len(), 3);
    }

    #[test]
    fn an_empty_range_needs_nothing() {
        assert!(plan_range_read(&[16], 4, 7..7).is_empty());
        assert!(plan_range_read(&[], 4, 0..0).is_empty());
    }

    #[test]
    fn range_resolution_follows_rfc_9110() {
        let from_to = |first, last| RequestedRange::FromTo { first, last };
        assert_eq!(from_to(0, Some(9)).resolve(100), Some(0..10));
        assert_eq!(from_to(90, Some(200)).resolve(100), Some(90..100));
        assert_eq!(from_to(99, None).resolve(100), Some(99..100));
        assert_eq!(from_to(100, None).resolve(100), None);
        assert_eq!(from_to(5, Some(4)).resolve(100), None);
        assert_eq!(from_to(0, Some(0)).resolve(0), None);
        let suffix = |len_bytes| RequestedRange::Suffix { len_bytes };
        assert_eq!(suffix(10).resolve(100), Some(90..100));
        assert_eq!(suffix(500).resolve(100), Some(0..100));
        assert_eq!(suffix(0).resolve(100), None);
    }

    proptest! {
        #[test]
        fn any_range_reads_back_exactly(
            k in 1usize..9,
            shard_size in 1u64..50,
            object_len in 0u64..2000,
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let object: Vec<u8> = (0..object_len).map(|i| (i * 7 + 3) as u8).collect();
            let capacity = k as u64 * shard_size;
            let mut lens = Vec::new();
            let mut left = object_len;
            while left > 0 {
                let len = left.min(capacity);
                lens.push(len);
                left -= len;
            }
            let (mut a, mut b) = if object_len == 0 { (0, 0) } else { (a % (object_len + 1), b % (object_len + 1)) };
            if a > b { std::mem::swap(&mut a, &mut b); }
            let got = read_through_plan(&object, &lens, k, a..b);
            prop_assert_eq!(&got[..], &object[a as usize..b as usize]);
            // Every piece is non-empty and inside its shard.
            for read in plan_range_read(&lens, k, a..b) {
                let shard_len = shard_len_bytes(lens[read.stripe_idx], k);
                for piece in read.pieces {
                    prop_assert!(piece.len_bytes > 0);
                    prop_assert!(piece.offset_in_shard + piece.len_bytes <= shard_len);
                }
            }
        }
    }
}
