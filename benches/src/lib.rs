//! Shared helpers of the benchmarks (and, later, the S3/NBD load generator).

/// `len` bytes of a seeded xorshift stream: incompressible, reproducible, cheap to make.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(
            super::pseudo_random_bytes(7, 100),
            super::pseudo_random_bytes(7, 100)
        );
        assert_ne!(
            super::pseudo_random_bytes(7, 100),
            super::pseudo_random_bytes(8, 100)
        );
        assert_eq!(super::pseudo_random_bytes(7, 13).len(), 13);
    }
}
