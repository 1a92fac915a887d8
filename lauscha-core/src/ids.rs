//! Identifiers. Every id that crosses a crate boundary is a newtype, never a bare integer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// A storage node: one disk, one shard store, one process or task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A stripe: k data shards and m parity shards written together. Stripe ids are 128 random
/// bits chosen by the writer, fresh for every write: shards are never overwritten in place.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StripeId(pub u128);

impl StripeId {
    /// Big-endian bytes, the form used on the wire and in file names.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The inverse of [`StripeId::to_bytes`]; `None` when `bytes` is not 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<StripeId> {
        let array: [u8; 16] = bytes.try_into().ok()?;
        Some(StripeId(u128::from_be_bytes(array)))
    }
}

impl fmt::Display for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StripeId({self})")
    }
}

impl FromStr for StripeId {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 {
            return Err(CoreError::InvalidId(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(StripeId)
            .map_err(|_| CoreError::InvalidId(s.to_string()))
    }
}

/// One shard of a stripe: shard `shard_idx` < k is data, the rest are parity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId {
    /// The stripe this shard belongs to.
    pub stripe_id: StripeId,
    /// Position in the stripe, `0..k+m`.
    pub shard_idx: u8,
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.stripe_id, self.shard_idx)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardId({self})")
    }
}

impl FromStr for ShardId {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (stripe, idx) = s
            .split_once('.')
            .ok_or_else(|| CoreError::InvalidId(s.to_string()))?;
        let shard_idx = idx
            .parse::<u8>()
            .map_err(|_| CoreError::InvalidId(s.to_string()))?;
        // Reject non-canonical spellings ("01", "+1") so that a file name maps to one id.
        if shard_idx.to_string() != idx {
            return Err(CoreError::InvalidId(s.to_string()));
        }
        Ok(ShardId {
            stripe_id: stripe.parse()?,
            shard_idx,
        })
    }
}

/// A tenant: a town or district; owns buckets, keys and volumes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TenantId(pub String);

impl TenantId {
    /// Validates a tenant name: 1..=64 of `[a-z0-9-]`, starting with a letter or digit.
    pub fn parse(s: &str) -> Result<TenantId, CoreError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok {
            Ok(TenantId(s.to_string()))
        } else {
            Err(CoreError::InvalidTenant(s.to_string()))
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An access key id, the public half of a credential (e.g. `LKAB12...`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccessKeyId(pub String);

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_id_round_trips_through_its_file_name() {
        let id = ShardId {
            stripe_id: StripeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            shard_idx: 5,
        };
        let text = id.to_string();
        assert_eq!(text, "0123456789abcdef0011223344556677.5");
        assert_eq!(text.parse::<ShardId>().unwrap(), id);
    }

    #[test]
    fn shard_id_rejects_non_canonical_names() {
        for bad in [
            "0123456789abcdef0011223344556677.05",
            "0123456789abcdef0011223344556677.+5",
            "0123456789abcdef0011223344556677",
            "123.1",
            "0123456789abcdef001122334455667g.1",
        ] {
            assert!(bad.parse::<ShardId>().is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn tenant_names() {
        assert!(TenantId::parse("stadt-jena").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("Jena").is_err());
        assert!(TenantId::parse("-x").is_err());
    }
}
