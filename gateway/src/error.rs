//! The gateway's errors, and their one mapping to S3 error codes.

use lauscha_core::{NodeId, PlacementError, ShardId};
use lauscha_proto::MetaErrorKind;
use s3s::{S3Error, S3ErrorCode};

/// Everything that can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The metadata service refused or failed.
    #[error("metadata: {message}")]
    Meta {
        /// The stable kind.
        kind: MetaErrorKind,
        /// Its message.
        message: String,
    },
    /// The caller may not do this.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The body is larger than allowed.
    #[error("object of {size_bytes} bytes exceeds the {max_bytes}-byte limit")]
    EntityTooLarge {
        /// How large it is (or would have grown).
        size_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// A checksum or Content-MD5 did not match the body.
    #[error("{0}")]
    BadDigest(String),
    /// A Content-MD5 that is not base64 of 16 bytes.
    #[error("the Content-MD5 you specified is not valid")]
    InvalidDigest,
    /// The body ended early, carried more than declared, or its transfer failed.
    #[error("incomplete body: {0}")]
    IncompleteBody(String),
    /// The request signature over the payload failed while streaming.
    #[error("payload signature does not match")]
    SignatureDoesNotMatch,
    /// A malformed argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request the gateway does not implement.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// The object's stripes cannot be placed with the current cluster map.
    #[error("cannot place data: {0}")]
    Placement(#[from] PlacementError),
    /// A shard write failed; the PUT is not acknowledged.
    #[error("write of shard {shard_id} to node {node_id} failed: {reason}")]
    ShardWrite {
        /// The shard.
        shard_id: ShardId,
        /// The node.
        node_id: NodeId,
        /// Why.
        reason: String,
    },
    /// Fewer shards of a stripe became durable than the write quorum asks.
    #[error("stripe {stripe_id}: {n_durable} shards durable, write quorum {quorum}: {reasons}")]
    BelowWriteQuorum {
        /// The stripe.
        stripe_id: lauscha_core::StripeId,
        /// Shards that landed.
        n_durable: usize,
        /// Shards needed.
        quorum: usize,
        /// What went wrong with the others.
        reasons: String,
    },
    /// Too few intact shards of a stripe could be read.
    #[error("stripe unreadable: {0}")]
    StripeUnreadable(String),
    /// Shards were read but too many failed their checksums: data loss beyond parity.
    #[error("stripe corrupt beyond repair: {0}")]
    StripeCorrupt(String),
    /// Overloaded: too many requests or too little memory budget.
    #[error("slow down: {0}")]
    SlowDown(String),
    /// Too few storage nodes to store something at full redundancy, where a write must
    /// be (a block volume's FLUSH).
    #[error("not enough storage nodes for full redundancy: {0}")]
    NotFullyRedundant(String),
    /// The NBD TLS settings cannot be used (unreadable or mismatched PEM files).
    #[error("NBD TLS: {0}")]
    NbdTls(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// Builds a metadata error from a gRPC status.
    pub fn from_meta_status(status: &tonic::Status) -> GatewayError {
        GatewayError::Meta {
            kind: MetaErrorKind::of_status(status),
            message: status.message().to_string(),
        }
    }
}

fn meta_code(kind: MetaErrorKind) -> S3ErrorCode {
    match kind {
        MetaErrorKind::NoSuchBucket => S3ErrorCode::NoSuchBucket,
        MetaErrorKind::NoSuchKey => S3ErrorCode::NoSuchKey,
        MetaErrorKind::BucketAlreadyExists => S3ErrorCode::BucketAlreadyExists,
        MetaErrorKind::BucketAlreadyOwnedByYou => S3ErrorCode::BucketAlreadyOwnedByYou,
        MetaErrorKind::BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
        MetaErrorKind::AccessDenied => S3ErrorCode::AccessDenied,
        // A key whose tenant is gone, or a missing key record: the credential is unusable.
        MetaErrorKind::NoSuchTenant | MetaErrorKind::NoSuchAccessKey => {
            S3ErrorCode::InvalidAccessKeyId
        }
        MetaErrorKind::TenantAlreadyExists | MetaErrorKind::AccessKeyAlreadyExists => {
            S3ErrorCode::InvalidRequest
        }
        MetaErrorKind::InvalidArgument => S3ErrorCode::InvalidArgument,
        MetaErrorKind::Conflict => S3ErrorCode::OperationAborted,
        MetaErrorKind::NotLeader | MetaErrorKind::Unavailable => S3ErrorCode::ServiceUnavailable,
        MetaErrorKind::Internal => S3ErrorCode::InternalError,
        MetaErrorKind::PreconditionFailed => S3ErrorCode::PreconditionFailed,
        MetaErrorKind::NoSuchUpload => S3ErrorCode::NoSuchUpload,
        MetaErrorKind::InvalidPart => S3ErrorCode::InvalidPart,
        MetaErrorKind::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        MetaErrorKind::EntityTooSmall => S3ErrorCode::EntityTooSmall,
        MetaErrorKind::NoSuchVersion => S3ErrorCode::NoSuchVersion,
        MetaErrorKind::InvalidBucketState => S3ErrorCode::InvalidBucketState,
        // S3 refuses a locked version's removal with AccessDenied.
        MetaErrorKind::ObjectLocked => S3ErrorCode::AccessDenied,
        MetaErrorKind::MethodNotAllowed => S3ErrorCode::MethodNotAllowed,
        MetaErrorKind::InvalidRequest => S3ErrorCode::InvalidRequest,
        // Volume errors do not reach S3 clients; the admin API and NBD map them.
        MetaErrorKind::NoSuchVolume => S3ErrorCode::InvalidArgument,
        MetaErrorKind::VolumeExists => S3ErrorCode::InvalidArgument,
        MetaErrorKind::Fenced => S3ErrorCode::OperationAborted,
    }
}

impl From<GatewayError> for S3Error {
    fn from(e: GatewayError) -> S3Error {
        let code = match &e {
            GatewayError::Meta { kind, .. } => meta_code(*kind),
            GatewayError::AccessDenied(_) => S3ErrorCode::AccessDenied,
            GatewayError::EntityTooLarge { .. } => S3ErrorCode::EntityTooLarge,
            GatewayError::BadDigest(_) => S3ErrorCode::BadDigest,
            GatewayError::InvalidDigest => S3ErrorCode::InvalidDigest,
            GatewayError::IncompleteBody(_) => S3ErrorCode::IncompleteBody,
            GatewayError::SignatureDoesNotMatch => S3ErrorCode::SignatureDoesNotMatch,
            GatewayError::InvalidArgument(_) => S3ErrorCode::InvalidArgument,
            GatewayError::NotImplemented(_) => S3ErrorCode::NotImplemented,
            // The map cannot place the stripe now; nodes may come back.
            GatewayError::Placement(_) => S3ErrorCode::ServiceUnavailable,
            GatewayError::ShardWrite { .. } => S3ErrorCode::ServiceUnavailable,
            GatewayError::BelowWriteQuorum { .. } => S3ErrorCode::ServiceUnavailable,
            GatewayError::StripeUnreadable(_) => S3ErrorCode::ServiceUnavailable,
            GatewayError::StripeCorrupt(_) => S3ErrorCode::InternalError,
            GatewayError::SlowDown(_) => S3ErrorCode::SlowDown,
            GatewayError::NotFullyRedundant(_) => S3ErrorCode::ServiceUnavailable,
            GatewayError::Internal(_) | GatewayError::NbdTls(_) => S3ErrorCode::InternalError,
        };
        S3Error::with_message(code, e.to_string())
    }
}
