//! The pure core of Lauscha: what every role shares and what needs no I/O.
//!
//! Architecture Invariant: this crate does no I/O. No tokio, tonic, rocksdb or `std::fs`;
//! time and randomness come in as arguments. Everything here is testable without a cluster.

pub mod admin_auth;
pub mod checksum;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod ids;
pub mod layout;
pub mod model;
pub mod names;
pub mod nbd;
pub mod placement;
pub mod slice_proof;
pub mod versioning;
pub mod volume;

pub use checksum::{ShardDigest, ShardHasher, ShardHashes};
pub use cluster::{ClusterMap, NodeInfo, NodeState};
pub use codec::ErasureCodec;
pub use ids::{AccessKeyId, NodeId, ShardId, StripeId, TenantId};
pub use model::{
    AccessKey, Bucket, ChecksumAlgorithm, ContentHeaders, MultipartUpload, ObjectData,
    ObjectVersion, Permission, ShardLocation, Stripe, Tenant, UploadPart, WriteCondition,
};
pub use names::BucketName;
pub use placement::{
    Placement, PlacementError, PlacementPolicy, ShardMove, SpreadLevel, place, place_avoiding,
    place_with, rebalance_moves,
};

/// Errors of the core crate: invalid input to a pure function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// Not a well-formed id.
    #[error("invalid id {0:?}")]
    InvalidId(String),
    /// Breaks the S3 bucket naming rules.
    #[error("invalid bucket name {0:?}")]
    InvalidBucketName(String),
    /// Empty, too long or containing NUL.
    #[error("invalid object key {0:?}")]
    InvalidObjectKey(String),
    /// Not a valid tenant name.
    #[error("invalid tenant name {0:?}: use 1 to 64 of a-z, 0-9 and '-'")]
    InvalidTenant(String),
    /// k = 0 or k + m too large.
    #[error("invalid codec shape {n_data_shards}+{n_parity_shards}")]
    InvalidCodec {
        /// k.
        n_data_shards: usize,
        /// m.
        n_parity_shards: usize,
    },
    /// A call got the wrong number of shards.
    #[error("expected {expected} shards, got {got}")]
    ShardCount {
        /// What the codec needs.
        expected: usize,
        /// What it got.
        got: usize,
    },
    /// Shards of one stripe differ in length.
    #[error("shards of one stripe differ in length")]
    ShardLengthMismatch,
    /// More than m shards are missing.
    #[error("only {present} shards present, {needed} needed to reconstruct")]
    TooFewShards {
        /// k.
        needed: usize,
        /// Shards available.
        present: usize,
    },
    /// The library failed to reconstruct (should not happen with k shards present).
    #[error("reconstruction failed: {0}")]
    Reconstruct(String),
    /// A block-hash list does not match the shard digest.
    #[error("block hashes do not match the shard digest")]
    DigestMismatch,
    /// A configuration value is invalid; the message says which and why.
    #[error("invalid configuration: {0}")]
    Config(String),
}
