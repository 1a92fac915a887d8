//! The erasure codec: Reed-Solomon over GF(2^8) (reed-solomon-erasure with its SIMD C
//! kernels), wrapped so that callers deal in stripes and shards, not matrices.

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::CoreError;
use crate::layout::{data_shard_span, shard_len_bytes};

/// Most shards a stripe may have (GF(2^8) allows 256; shard indexes are a `u8`).
pub const MAX_SHARDS: usize = 255;

/// Encodes and reconstructs stripes of k data and m parity shards.
#[derive(Debug)]
pub struct ErasureCodec {
    n_data_shards: usize,
    n_parity_shards: usize,
    /// `None` when m = 0: the library refuses zero parity, and there is nothing to compute.
    rs: Option<ReedSolomon>,
}

impl ErasureCodec {
    /// A codec for k data and m parity shards.
    pub fn new(n_data_shards: usize, n_parity_shards: usize) -> Result<ErasureCodec, CoreError> {
        if n_data_shards == 0 || n_data_shards + n_parity_shards > MAX_SHARDS {
            return Err(CoreError::InvalidCodec {
                n_data_shards,
                n_parity_shards,
            });
        }
        let rs = if n_parity_shards == 0 {
            None
        } else {
            Some(
                ReedSolomon::new(n_data_shards, n_parity_shards).map_err(|_| {
                    CoreError::InvalidCodec {
                        n_data_shards,
                        n_parity_shards,
                    }
                })?,
            )
        };
        Ok(ErasureCodec {
            n_data_shards,
            n_parity_shards,
            rs,
        })
    }

    /// k.
    pub fn n_data_shards(&self) -> usize {
        self.n_data_shards
    }

    /// m.
    pub fn n_parity_shards(&self) -> usize {
        self.n_parity_shards
    }

    /// Cuts a stripe into k data shards, padding the tail with zeros, and computes the m
    /// parity shards. Returns all k + m shards in shard order, each
    /// `shard_len_bytes(stripe.len(), k)` long.
    pub fn encode_stripe(&self, stripe: &[u8]) -> Vec<Vec<u8>> {
        let k = self.n_data_shards;
        let shard_len = shard_len_bytes(stripe.len() as u64, k) as usize;
        let mut shards: Vec<Vec<u8>> = (0..k)
            .map(|idx| {
                let span = data_shard_span(stripe.len() as u64, k, idx);
                let mut shard = vec![0u8; shard_len];
                let bytes = &stripe[span.start as usize..span.end as usize];
                shard[..bytes.len()].copy_from_slice(bytes);
                shard
            })
            .collect();
        shards.extend((0..self.n_parity_shards).map(|_| vec![0u8; shard_len]));
        if shard_len > 0
            && let Some(rs) = &self.rs
        {
            rs.encode(&mut shards)
                .expect("shard count and lengths are consistent by construction");
        }
        shards
    }

    /// Computes the m parity shards for k equally long data shards.
    pub fn encode_parity(&self, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, CoreError> {
        if data.len() != self.n_data_shards {
            return Err(CoreError::ShardCount {
                expected: self.n_data_shards,
                got: data.len(),
            });
        }
        let shard_len = data.first().map_or(0, |s| s.len());
        if data.iter().any(|s| s.len() != shard_len) {
            return Err(CoreError::ShardLengthMismatch);
        }
        let mut parity: Vec<Vec<u8>> = (0..self.n_parity_shards)
            .map(|_| vec![0u8; shard_len])
            .collect();
        if shard_len > 0
            && let Some(rs) = &self.rs
        {
            rs.encode_sep(data, &mut parity)
                .expect("shard count and lengths checked above");
        }
        Ok(parity)
    }

    /// Fills in the missing data shards (`None` entries among the first k) from any k
    /// present shards. Parity shards that are missing stay missing unless `with_parity`.
    /// All present shards must have the same length.
    pub fn reconstruct(
        &self,
        shards: &mut [Option<Vec<u8>>],
        with_parity: bool,
    ) -> Result<(), CoreError> {
        let n = self.n_data_shards + self.n_parity_shards;
        if shards.len() != n {
            return Err(CoreError::ShardCount {
                expected: n,
                got: shards.len(),
            });
        }
        let n_present = shards.iter().filter(|s| s.is_some()).count();
        if n_present < self.n_data_shards {
            return Err(CoreError::TooFewShards {
                needed: self.n_data_shards,
                present: n_present,
            });
        }
        let mut lens = shards.iter().flatten().map(Vec::len);
        let first_len = lens.next().unwrap_or(0);
        if lens.any(|len| len != first_len) {
            return Err(CoreError::ShardLengthMismatch);
        }
        if shards.iter().all(Option::is_some) {
            return Ok(());
        }
        match &self.rs {
            // m = 0 and n_present >= k means nothing is missing: handled above.
            None => unreachable!("no parity, yet a shard is missing with k present"),
            // Zero-length shards: nothing to compute, the missing ones are empty too.
            Some(_) if first_len == 0 => {
                for shard in shards.iter_mut() {
                    shard.get_or_insert_with(Vec::new);
                }
                Ok(())
            }
            Some(rs) => {
                let result = if with_parity {
                    rs.reconstruct(shards)
                } else {
                    rs.reconstruct_data(shards)
                };
                result.map_err(|e| CoreError::Reconstruct(format!("{e:?}")))
            }
        }
    }

    /// Joins k data shards back into the first `stripe_len` bytes of the stripe.
    pub fn join_stripe(&self, data: &[&[u8]], stripe_len: u64) -> Vec<u8> {
        assert_eq!(data.len(), self.n_data_shards, "need exactly k data shards");
        let mut out = Vec::with_capacity(stripe_len as usize);
        for (idx, shard) in data.iter().enumerate() {
            let span = data_shard_span(stripe_len, self.n_data_shards, idx);
            out.extend_from_slice(&shard[..(span.end - span.start) as usize]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn four_plus_two_survives_two_losses() {
        let codec = ErasureCodec::new(4, 2).unwrap();
        let stripe: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let shards = codec.encode_stripe(&stripe);
        assert_eq!(shards.len(), 6);
        assert!(shards.iter().all(|s| s.len() == 250));
        let mut partial: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
        partial[0] = None;
        partial[3] = None;
        codec.reconstruct(&mut partial, false).unwrap();
        let data: Vec<&[u8]> = partial[..4].iter().map(|s| s.as_deref().unwrap()).collect();
        assert_eq!(codec.join_stripe(&data, 1000), stripe);
    }

    #[test]
    fn three_losses_of_four_plus_two_is_an_error() {
        let codec = ErasureCodec::new(4, 2).unwrap();
        let shards = codec.encode_stripe(&[7u8; 64]);
        let mut partial: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
        partial[0] = None;
        partial[1] = None;
        partial[5] = None;
        assert_eq!(
            codec.reconstruct(&mut partial, false),
            Err(CoreError::TooFewShards {
                needed: 4,
                present: 3
            })
        );
    }

    #[test]
    fn invalid_shapes_are_refused() {
        assert!(ErasureCodec::new(0, 2).is_err());
        assert!(ErasureCodec::new(200, 56).is_err());
        assert!(ErasureCodec::new(1, 0).is_ok());
    }

    #[test]
    fn mismatched_lengths_are_an_error_not_a_panic() {
        let codec = ErasureCodec::new(2, 1).unwrap();
        let mut shards = vec![Some(vec![1u8; 4]), None, Some(vec![1u8; 5])];
        assert_eq!(
            codec.reconstruct(&mut shards, false),
            Err(CoreError::ShardLengthMismatch)
        );
    }

    proptest! {
        #[test]
        fn any_m_losses_are_recovered(
            k in 1usize..10,
            m in 0usize..5,
            stripe in prop::collection::vec(any::<u8>(), 0..3000),
            loss_seed in any::<u64>(),
        ) {
            let codec = ErasureCodec::new(k, m).unwrap();
            let shards = codec.encode_stripe(&stripe);
            let n = k + m;
            // Choose m distinct shards to lose, from the seed.
            let mut order: Vec<usize> = (0..n).collect();
            let mut state = loss_seed | 1;
            for i in (1..n).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut partial: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
            for &lost in &order[..m] {
                partial[lost] = None;
            }
            codec.reconstruct(&mut partial, true).unwrap();
            for (got, want) in partial.iter().zip(&shards) {
                prop_assert_eq!(got.as_ref().unwrap(), want);
            }
            let data: Vec<&[u8]> = partial[..k].iter().map(|s| s.as_deref().unwrap()).collect();
            prop_assert_eq!(codec.join_stripe(&data, stripe.len() as u64), stripe);
        }
    }
}
