//! gRPC contracts between Lauscha roles, and their conversions into core types.
//!
//! Architecture Invariant: this crate depends only on the core crate among ours. A handler
//! converts `pb` types into core types on its first line; no generated type travels deeper.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use lauscha_core::model::{ListObjectsQuery, ObjectListing, ObjectSummary};
use lauscha_core::{
    AccessKey, AccessKeyId, Bucket, BucketName, ChecksumAlgorithm, ClusterMap, ContentHeaders,
    MultipartUpload, NodeId, NodeInfo, NodeState, ObjectData, ObjectVersion, PlacementPolicy,
    ShardDigest, ShardId, ShardLocation, SpreadLevel, Stripe, StripeId, Tenant, TenantId,
    UploadPart,
};

/// Generated code of `lauscha/storage.proto`.
#[allow(missing_docs)] // generated
pub mod storage {
    tonic::include_proto!("lauscha.storage.v1");
}

/// Generated code of `lauscha/meta.proto`.
#[allow(missing_docs)] // generated
pub mod meta {
    tonic::include_proto!("lauscha.meta.v1");
}

mod local;
pub use local::{LocalRoles, LocalShardWrites, RoleChannel};

/// A message that does not convert into a core type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {reason}")]
pub struct ProtoError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ProtoError {
    fn new(field: &'static str, reason: impl fmt::Display) -> ProtoError {
        ProtoError {
            field,
            reason: reason.to_string(),
        }
    }
}

impl From<ProtoError> for tonic::Status {
    fn from(e: ProtoError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn missing(field: &'static str) -> ProtoError {
    ProtoError::new(field, "missing")
}

fn small<T: TryFrom<u32>>(field: &'static str, value: u32) -> Result<T, ProtoError> {
    T::try_from(value).map_err(|_| ProtoError::new(field, format!("{value} out of range")))
}

// ---- storage ----

impl From<ShardId> for storage::ShardId {
    fn from(id: ShardId) -> Self {
        storage::ShardId {
            stripe_id: id.stripe_id.to_bytes().to_vec().into(),
            shard_idx: u32::from(id.shard_idx),
        }
    }
}

impl TryFrom<storage::ShardId> for ShardId {
    type Error = ProtoError;

    fn try_from(pb: storage::ShardId) -> Result<Self, ProtoError> {
        Ok(ShardId {
            stripe_id: StripeId::from_slice(&pb.stripe_id)
                .ok_or_else(|| ProtoError::new("stripe_id", "not 16 bytes"))?,
            shard_idx: small("shard_idx", pb.shard_idx)?,
        })
    }
}

// ---- connections ----

/// How long a client waits for a TCP connection to another role.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The endpoint of a connection from one Lauscha role to another at `uri`
/// (`http://ip:port`), with what every such connection shares: connected within
/// [`CONNECT_TIMEOUT`], Nagle off (a request ends in a partial segment that would wait for
/// the peer's delayed ACK), and leaving from `source_ip` when the role's config sets one.
pub fn role_endpoint(
    uri: String,
    source_ip: Option<std::net::IpAddr>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .local_address(source_ip))
}

/// Converts an optional shard id, as every shard request carries one.
pub fn shard_id_from(pb: Option<storage::ShardId>) -> Result<ShardId, ProtoError> {
    pb.ok_or_else(|| missing("id"))?.try_into()
}

// ---- metadata: errors ----

/// gRPC header of a NotLeader status: the leader's advertised address, when known.
pub const LEADER_HEADER: &str = "lauscha-leader";
/// gRPC header carrying a write's request id (`<client hex>-<seq hex>`), kept across
/// retries so that the metadata service applies the write once.
pub const REQUEST_ID_HEADER: &str = "lauscha-request-id";

/// Format byte of payloads carried in `Encoded` messages (postcard after it).
const PAYLOAD_FORMAT_V1: u8 = 1;

/// Encodes a payload for an `Encoded` message.
pub fn encode_payload<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![PAYLOAD_FORMAT_V1];
    // Serialising our own types into a Vec cannot fail (postcard fails only on serde
    // features we do not use, or a full fixed buffer).
    postcard::to_io(value, &mut out).expect("postcard encodes our types");
    out
}

/// Decodes the payload of an `Encoded` message.
pub fn decode_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    match bytes.split_first() {
        Some((&PAYLOAD_FORMAT_V1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| ProtoError::new("body", format!("undecodable payload: {e}"))),
        Some((v, _)) => Err(ProtoError::new(
            "body",
            format!("unknown payload format {v}"),
        )),
        None => Err(ProtoError::new("body", "empty payload")),
    }
}

/// The stable names of metadata errors, carried in a gRPC status's details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaErrorKind {
    /// The bucket does not exist.
    NoSuchBucket,
    /// The object does not exist.
    NoSuchKey,
    /// Another tenant owns the bucket name.
    BucketAlreadyExists,
    /// The caller's tenant already owns the bucket.
    BucketAlreadyOwnedByYou,
    /// The bucket still holds objects.
    BucketNotEmpty,
    /// The bucket belongs to another tenant.
    AccessDenied,
    /// The tenant does not exist.
    NoSuchTenant,
    /// The tenant exists already.
    TenantAlreadyExists,
    /// The access key does not exist.
    NoSuchAccessKey,
    /// The access key id is taken.
    AccessKeyAlreadyExists,
    /// The request is malformed.
    InvalidArgument,
    /// A compare-and-set failed: the state changed under the caller.
    Conflict,
    /// This voter is not the leader; the message names the leader if known.
    NotLeader,
    /// No quorum or the service is shutting down; retry later.
    Unavailable,
    /// A bug or a storage failure on the metadata side.
    Internal,
    /// A conditional write's precondition does not hold.
    PreconditionFailed,
    /// No such multipart upload.
    NoSuchUpload,
    /// A listed part is missing or has another ETag.
    InvalidPart,
    /// Listed parts out of order.
    InvalidPartOrder,
    /// A part (not the last) under 5 MiB.
    EntityTooSmall,
    /// No such version of the key.
    NoSuchVersion,
    /// The bucket's state forbids the request.
    InvalidBucketState,
    /// Object Lock protects the version.
    ObjectLocked,
    /// The request names a delete marker.
    MethodNotAllowed,
    /// The bucket's configuration does not allow the request.
    InvalidRequest,
    /// No such volume.
    NoSuchVolume,
    /// The volume name is taken.
    VolumeExists,
    /// A write under a lease epoch that is no longer current.
    Fenced,
}

impl MetaErrorKind {
    /// Every kind, for round-trip tests.
    pub const ALL: [MetaErrorKind; 28] = [
        MetaErrorKind::NoSuchBucket,
        MetaErrorKind::NoSuchKey,
        MetaErrorKind::BucketAlreadyExists,
        MetaErrorKind::BucketAlreadyOwnedByYou,
        MetaErrorKind::BucketNotEmpty,
        MetaErrorKind::AccessDenied,
        MetaErrorKind::NoSuchTenant,
        MetaErrorKind::TenantAlreadyExists,
        MetaErrorKind::NoSuchAccessKey,
        MetaErrorKind::AccessKeyAlreadyExists,
        MetaErrorKind::InvalidArgument,
        MetaErrorKind::Conflict,
        MetaErrorKind::NotLeader,
        MetaErrorKind::Unavailable,
        MetaErrorKind::Internal,
        MetaErrorKind::PreconditionFailed,
        MetaErrorKind::NoSuchUpload,
        MetaErrorKind::InvalidPart,
        MetaErrorKind::InvalidPartOrder,
        MetaErrorKind::EntityTooSmall,
        MetaErrorKind::NoSuchVersion,
        MetaErrorKind::InvalidBucketState,
        MetaErrorKind::ObjectLocked,
        MetaErrorKind::MethodNotAllowed,
        MetaErrorKind::InvalidRequest,
        MetaErrorKind::NoSuchVolume,
        MetaErrorKind::VolumeExists,
        MetaErrorKind::Fenced,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaErrorKind::NoSuchBucket => "NoSuchBucket",
            MetaErrorKind::NoSuchKey => "NoSuchKey",
            MetaErrorKind::BucketAlreadyExists => "BucketAlreadyExists",
            MetaErrorKind::BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            MetaErrorKind::BucketNotEmpty => "BucketNotEmpty",
            MetaErrorKind::AccessDenied => "AccessDenied",
            MetaErrorKind::NoSuchTenant => "NoSuchTenant",
            MetaErrorKind::TenantAlreadyExists => "TenantAlreadyExists",
            MetaErrorKind::NoSuchAccessKey => "NoSuchAccessKey",
            MetaErrorKind::AccessKeyAlreadyExists => "AccessKeyAlreadyExists",
            MetaErrorKind::InvalidArgument => "InvalidArgument",
            MetaErrorKind::Conflict => "Conflict",
            MetaErrorKind::NotLeader => "NotLeader",
            MetaErrorKind::Unavailable => "Unavailable",
            MetaErrorKind::Internal => "Internal",
            MetaErrorKind::PreconditionFailed => "PreconditionFailed",
            MetaErrorKind::NoSuchUpload => "NoSuchUpload",
            MetaErrorKind::InvalidPart => "InvalidPart",
            MetaErrorKind::InvalidPartOrder => "InvalidPartOrder",
            MetaErrorKind::EntityTooSmall => "EntityTooSmall",
            MetaErrorKind::NoSuchVersion => "NoSuchVersion",
            MetaErrorKind::InvalidBucketState => "InvalidBucketState",
            MetaErrorKind::ObjectLocked => "ObjectLocked",
            MetaErrorKind::MethodNotAllowed => "MethodNotAllowed",
            MetaErrorKind::InvalidRequest => "InvalidRequest",
            MetaErrorKind::NoSuchVolume => "NoSuchVolume",
            MetaErrorKind::VolumeExists => "VolumeExists",
            MetaErrorKind::Fenced => "Fenced",
        }
    }

    /// The gRPC code a status of this kind carries.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            MetaErrorKind::NoSuchBucket
            | MetaErrorKind::NoSuchKey
            | MetaErrorKind::NoSuchTenant
            | MetaErrorKind::NoSuchAccessKey
            | MetaErrorKind::NoSuchUpload
            | MetaErrorKind::NoSuchVersion
            | MetaErrorKind::NoSuchVolume => tonic::Code::NotFound,
            MetaErrorKind::BucketAlreadyExists
            | MetaErrorKind::BucketAlreadyOwnedByYou
            | MetaErrorKind::TenantAlreadyExists
            | MetaErrorKind::AccessKeyAlreadyExists
            | MetaErrorKind::VolumeExists => tonic::Code::AlreadyExists,
            MetaErrorKind::BucketNotEmpty
            | MetaErrorKind::PreconditionFailed
            | MetaErrorKind::InvalidBucketState
            | MetaErrorKind::MethodNotAllowed
            | MetaErrorKind::Fenced => tonic::Code::FailedPrecondition,
            MetaErrorKind::AccessDenied | MetaErrorKind::ObjectLocked => {
                tonic::Code::PermissionDenied
            }
            MetaErrorKind::InvalidRequest
            | MetaErrorKind::InvalidArgument
            | MetaErrorKind::InvalidPart
            | MetaErrorKind::InvalidPartOrder
            | MetaErrorKind::EntityTooSmall => tonic::Code::InvalidArgument,
            MetaErrorKind::Conflict => tonic::Code::Aborted,
            MetaErrorKind::NotLeader | MetaErrorKind::Unavailable => tonic::Code::Unavailable,
            MetaErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// A status of this kind.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::with_details(
            self.grpc_code(),
            message,
            self.as_str().as_bytes().to_vec().into(),
        )
    }

    /// The kind a metadata service put into a status, if it did: `None` means the status
    /// came from the transport (a connection reset, a timeout), not from a voter's logic.
    pub fn from_details(status: &tonic::Status) -> Option<MetaErrorKind> {
        std::str::from_utf8(status.details())
            .ok()
            .and_then(|s| s.parse().ok())
    }

    /// Reads the kind back from a status; statuses without our details (transport
    /// failures, a peer of another version) map by their gRPC code.
    pub fn of_status(status: &tonic::Status) -> MetaErrorKind {
        if let Some(kind) = MetaErrorKind::from_details(status) {
            return kind;
        }
        match status.code() {
            tonic::Code::InvalidArgument => MetaErrorKind::InvalidArgument,
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted => MetaErrorKind::Unavailable,
            _ => MetaErrorKind::Internal,
        }
    }
}

impl FromStr for MetaErrorKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        MetaErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

// ---- metadata: model ----

impl From<SpreadLevel> for meta::SpreadLevel {
    fn from(level: SpreadLevel) -> Self {
        match level {
            SpreadLevel::Node => meta::SpreadLevel::Node,
            SpreadLevel::Host => meta::SpreadLevel::Host,
            SpreadLevel::Site => meta::SpreadLevel::Site,
        }
    }
}

impl From<meta::SpreadLevel> for SpreadLevel {
    fn from(level: meta::SpreadLevel) -> Self {
        match level {
            meta::SpreadLevel::Node => SpreadLevel::Node,
            meta::SpreadLevel::Host => SpreadLevel::Host,
            meta::SpreadLevel::Site => SpreadLevel::Site,
        }
    }
}

impl From<PlacementPolicy> for meta::PlacementPolicy {
    fn from(p: PlacementPolicy) -> Self {
        meta::PlacementPolicy {
            data_shards: u32::from(p.n_data_shards),
            parity_shards: u32::from(p.n_parity_shards),
            spread: meta::SpreadLevel::from(p.spread).into(),
        }
    }
}

impl TryFrom<meta::PlacementPolicy> for PlacementPolicy {
    type Error = ProtoError;

    fn try_from(pb: meta::PlacementPolicy) -> Result<Self, ProtoError> {
        let spread = meta::SpreadLevel::try_from(pb.spread)
            .map_err(|_| ProtoError::new("spread", pb.spread))?;
        let policy = PlacementPolicy {
            n_data_shards: small("data_shards", pb.data_shards)?,
            n_parity_shards: small("parity_shards", pb.parity_shards)?,
            spread: spread.into(),
        };
        policy
            .validate()
            .map_err(|e| ProtoError::new("policy", e))?;
        Ok(policy)
    }
}

impl From<Tenant> for meta::Tenant {
    fn from(t: Tenant) -> Self {
        meta::Tenant {
            id: t.id.0,
            created_ms: t.created_ms,
        }
    }
}

impl TryFrom<meta::Tenant> for Tenant {
    type Error = ProtoError;

    fn try_from(pb: meta::Tenant) -> Result<Self, ProtoError> {
        Ok(Tenant {
            id: TenantId::parse(&pb.id).map_err(|e| ProtoError::new("tenant", e))?,
            created_ms: pb.created_ms,
        })
    }
}

impl From<AccessKey> for meta::AccessKey {
    fn from(k: AccessKey) -> Self {
        meta::AccessKey {
            id: k.id.0,
            secret: k.secret,
            tenant: k.tenant.0,
            is_admin: k.is_admin,
            created_ms: k.created_ms,
        }
    }
}

impl TryFrom<meta::AccessKey> for AccessKey {
    type Error = ProtoError;

    fn try_from(pb: meta::AccessKey) -> Result<Self, ProtoError> {
        if pb.id.is_empty() || pb.id.len() > 128 {
            return Err(ProtoError::new("access_key.id", "must be 1 to 128 bytes"));
        }
        if pb.secret.len() < 8 {
            return Err(ProtoError::new("access_key.secret", "shorter than 8 bytes"));
        }
        Ok(AccessKey {
            id: AccessKeyId(pb.id),
            secret: pb.secret,
            tenant: TenantId::parse(&pb.tenant).map_err(|e| ProtoError::new("tenant", e))?,
            is_admin: pb.is_admin,
            created_ms: pb.created_ms,
        })
    }
}

impl From<Bucket> for meta::Bucket {
    fn from(b: Bucket) -> Self {
        meta::Bucket {
            name: b.name.to_string(),
            tenant: b.tenant.0,
            created_ms: b.created_ms,
            policy: Some(b.policy.into()),
        }
    }
}

impl TryFrom<meta::Bucket> for Bucket {
    type Error = ProtoError;

    fn try_from(pb: meta::Bucket) -> Result<Self, ProtoError> {
        Ok(Bucket {
            name: bucket_name(&pb.name)?,
            tenant: TenantId::parse(&pb.tenant).map_err(|e| ProtoError::new("tenant", e))?,
            created_ms: pb.created_ms,
            policy: pb.policy.ok_or_else(|| missing("policy"))?.try_into()?,
        })
    }
}

/// Parses a bucket name field.
pub fn bucket_name(name: &str) -> Result<BucketName, ProtoError> {
    BucketName::parse(name).map_err(|e| ProtoError::new("bucket", e))
}

impl From<Stripe> for meta::Stripe {
    fn from(s: Stripe) -> Self {
        meta::Stripe {
            id: s.id.to_bytes().to_vec().into(),
            len_bytes: s.len_bytes,
            shards: s
                .shards
                .into_iter()
                .map(|l| meta::ShardLocation {
                    node_id: l.node.0,
                    digest: l.digest.0.to_vec().into(),
                })
                .collect(),
        }
    }
}

impl TryFrom<meta::Stripe> for Stripe {
    type Error = ProtoError;

    fn try_from(pb: meta::Stripe) -> Result<Self, ProtoError> {
        Ok(Stripe {
            id: StripeId::from_slice(&pb.id)
                .ok_or_else(|| ProtoError::new("stripe.id", "not 16 bytes"))?,
            len_bytes: pb.len_bytes,
            shards: pb
                .shards
                .into_iter()
                .map(|l| {
                    Ok(ShardLocation {
                        node: NodeId(l.node_id),
                        digest: ShardDigest::from_slice(&l.digest)
                            .ok_or_else(|| ProtoError::new("shard.digest", "not 32 bytes"))?,
                    })
                })
                .collect::<Result<_, ProtoError>>()?,
        })
    }
}

impl From<ObjectVersion> for meta::ObjectVersion {
    fn from(v: ObjectVersion) -> Self {
        let data = match v.data {
            ObjectData::Inline(bytes) => meta::object_version::Data::Inline(bytes.into()),
            ObjectData::Striped {
                n_data_shards,
                n_parity_shards,
                stripes,
            } => meta::object_version::Data::Striped(meta::StripedData {
                data_shards: u32::from(n_data_shards),
                parity_shards: u32::from(n_parity_shards),
                stripes: stripes.into_iter().map(Into::into).collect(),
            }),
        };
        meta::ObjectVersion {
            version_id: v.version_id,
            size_bytes: v.size_bytes,
            etag: v.etag,
            last_modified_ms: v.last_modified_ms,
            content_type: v.content_type,
            headers: Some(meta::ContentHeaders {
                cache_control: v.headers.cache_control,
                content_disposition: v.headers.content_disposition,
                content_encoding: v.headers.content_encoding,
                content_language: v.headers.content_language,
                expires_unix_s: v.headers.expires_unix_s,
            }),
            user_metadata: v.user_metadata.into_iter().collect(),
            checksums: v
                .checksums
                .into_iter()
                .map(|(alg, value)| (alg.as_str().to_string(), value))
                .collect(),
            data: Some(data),
        }
    }
}

/// Parses the S3 name of a checksum algorithm.
pub fn checksum_algorithm(name: &str) -> Option<ChecksumAlgorithm> {
    [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ]
    .into_iter()
    .find(|a| a.as_str() == name)
}

impl From<MultipartUpload> for meta::Upload {
    fn from(u: MultipartUpload) -> Self {
        meta::Upload {
            upload_id: u.upload_id,
            key: u.key,
            tenant: u.tenant.0,
            initiated_ms: u.initiated_ms,
            template: Some(u.template.into()),
        }
    }
}

impl TryFrom<meta::Upload> for MultipartUpload {
    type Error = ProtoError;

    fn try_from(pb: meta::Upload) -> Result<Self, ProtoError> {
        Ok(MultipartUpload {
            upload_id: pb.upload_id,
            key: pb.key,
            tenant: TenantId(pb.tenant),
            initiated_ms: pb.initiated_ms,
            template: pb.template.ok_or_else(|| missing("template"))?.try_into()?,
        })
    }
}

impl From<UploadPart> for meta::Part {
    fn from(p: UploadPart) -> Self {
        meta::Part {
            part_number: p.part_number,
            version: Some(p.version.into()),
        }
    }
}

impl TryFrom<meta::Part> for UploadPart {
    type Error = ProtoError;

    fn try_from(pb: meta::Part) -> Result<Self, ProtoError> {
        Ok(UploadPart {
            part_number: pb.part_number,
            version: pb.version.ok_or_else(|| missing("version"))?.try_into()?,
        })
    }
}

impl TryFrom<meta::ObjectVersion> for ObjectVersion {
    type Error = ProtoError;

    fn try_from(pb: meta::ObjectVersion) -> Result<Self, ProtoError> {
        let data = match pb.data.ok_or_else(|| missing("data"))? {
            meta::object_version::Data::Inline(bytes) => ObjectData::Inline(bytes.to_vec()),
            meta::object_version::Data::Striped(s) => {
                let n_data_shards: u8 = small("data_shards", s.data_shards)?;
                let n_parity_shards: u8 = small("parity_shards", s.parity_shards)?;
                let stripes: Vec<Stripe> = s
                    .stripes
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<_, _>>()?;
                let n_shards = usize::from(n_data_shards) + usize::from(n_parity_shards);
                if n_data_shards == 0 || stripes.iter().any(|s| s.shards.len() != n_shards) {
                    return Err(ProtoError::new("stripes", "shard count differs from k + m"));
                }
                ObjectData::Striped {
                    n_data_shards,
                    n_parity_shards,
                    stripes,
                }
            }
        };
        let stored_bytes: u64 = match &data {
            ObjectData::Inline(bytes) => bytes.len() as u64,
            ObjectData::Striped { stripes, .. } => stripes.iter().map(|s| s.len_bytes).sum(),
        };
        if stored_bytes != pb.size_bytes {
            return Err(ProtoError::new(
                "size_bytes",
                format!("{} but the data holds {stored_bytes}", pb.size_bytes),
            ));
        }
        let checksums = pb
            .checksums
            .into_iter()
            .map(|(name, value)| {
                checksum_algorithm(&name)
                    .map(|alg| (alg, value))
                    .ok_or_else(|| {
                        ProtoError::new("checksums", format!("unknown algorithm {name}"))
                    })
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(ObjectVersion {
            version_id: pb.version_id,
            size_bytes: pb.size_bytes,
            etag: pb.etag,
            last_modified_ms: pb.last_modified_ms,
            content_type: pb.content_type,
            headers: pb
                .headers
                .map(|h| ContentHeaders {
                    cache_control: h.cache_control,
                    content_disposition: h.content_disposition,
                    content_encoding: h.content_encoding,
                    content_language: h.content_language,
                    expires_unix_s: h.expires_unix_s,
                })
                .unwrap_or_default(),
            user_metadata: pb.user_metadata.into_iter().collect(),
            checksums,
            data,
        })
    }
}

impl From<NodeState> for meta::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Up => meta::NodeState::Up,
            NodeState::Down => meta::NodeState::Down,
            NodeState::Draining => meta::NodeState::Draining,
            NodeState::Gone => meta::NodeState::Gone,
        }
    }
}

impl From<meta::NodeState> for NodeState {
    fn from(s: meta::NodeState) -> Self {
        match s {
            meta::NodeState::Up => NodeState::Up,
            meta::NodeState::Down => NodeState::Down,
            meta::NodeState::Draining => NodeState::Draining,
            meta::NodeState::Gone => NodeState::Gone,
        }
    }
}

impl From<NodeInfo> for meta::NodeInfo {
    fn from(n: NodeInfo) -> Self {
        meta::NodeInfo {
            id: n.id.0,
            site: n.site,
            host: n.host,
            addr: n.addr,
            capacity_bytes: n.capacity_bytes,
            state: meta::NodeState::from(n.state).into(),
        }
    }
}

impl TryFrom<meta::NodeInfo> for NodeInfo {
    type Error = ProtoError;

    fn try_from(pb: meta::NodeInfo) -> Result<Self, ProtoError> {
        if pb.id == 0 {
            return Err(ProtoError::new("node.id", "must be at least 1"));
        }
        if pb.site.is_empty() || pb.host.is_empty() || pb.addr.is_empty() {
            return Err(ProtoError::new("node", "site, host and addr are required"));
        }
        Ok(NodeInfo {
            id: NodeId(pb.id),
            site: pb.site,
            host: pb.host,
            addr: pb.addr,
            capacity_bytes: pb.capacity_bytes,
            state: meta::NodeState::try_from(pb.state)
                .map_err(|_| ProtoError::new("node.state", pb.state))?
                .into(),
        })
    }
}

impl From<ClusterMap> for meta::ClusterMap {
    fn from(m: ClusterMap) -> Self {
        meta::ClusterMap {
            epoch: m.epoch,
            nodes: m.nodes.into_values().map(Into::into).collect(),
        }
    }
}

impl TryFrom<meta::ClusterMap> for ClusterMap {
    type Error = ProtoError;

    fn try_from(pb: meta::ClusterMap) -> Result<Self, ProtoError> {
        let mut nodes = BTreeMap::new();
        for node in pb.nodes {
            let node = NodeInfo::try_from(node)?;
            nodes.insert(node.id, node);
        }
        Ok(ClusterMap {
            epoch: pb.epoch,
            nodes,
        })
    }
}

impl From<ListObjectsQuery> for meta::ListObjectsRequest {
    fn from(q: ListObjectsQuery) -> Self {
        meta::ListObjectsRequest {
            bucket: q.bucket.to_string(),
            prefix: q.prefix,
            delimiter: q.delimiter,
            start_after: q.start_after,
            max_keys: q.max_keys,
            // Set by the caller: the query itself does not know who asks.
            tenant: String::new(),
        }
    }
}

impl TryFrom<meta::ListObjectsRequest> for ListObjectsQuery {
    type Error = ProtoError;

    fn try_from(pb: meta::ListObjectsRequest) -> Result<Self, ProtoError> {
        Ok(ListObjectsQuery {
            bucket: bucket_name(&pb.bucket)?,
            prefix: pb.prefix,
            delimiter: pb.delimiter.filter(|d| !d.is_empty()),
            start_after: pb.start_after,
            max_keys: pb.max_keys,
        })
    }
}

impl From<ObjectListing> for meta::ListObjectsReply {
    fn from(l: ObjectListing) -> Self {
        meta::ListObjectsReply {
            objects: l
                .objects
                .into_iter()
                .map(|o| meta::ObjectSummary {
                    key: o.key,
                    size_bytes: o.size_bytes,
                    etag: o.etag,
                    last_modified_ms: o.last_modified_ms,
                })
                .collect(),
            common_prefixes: l.common_prefixes,
            is_truncated: l.is_truncated,
            next_marker: l.next_marker,
        }
    }
}

impl From<meta::ListObjectsReply> for ObjectListing {
    fn from(pb: meta::ListObjectsReply) -> Self {
        ObjectListing {
            objects: pb
                .objects
                .into_iter()
                .map(|o| ObjectSummary {
                    key: o.key,
                    size_bytes: o.size_bytes,
                    etag: o.etag,
                    last_modified_ms: o.last_modified_ms,
                })
                .collect(),
            common_prefixes: pb.common_prefixes,
            is_truncated: pb.is_truncated,
            next_marker: pb.next_marker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip_through_a_status() {
        for kind in MetaErrorKind::ALL {
            let status = kind.status("x");
            assert_eq!(MetaErrorKind::of_status(&status), kind);
        }
        assert_eq!(
            MetaErrorKind::of_status(&tonic::Status::unavailable("connection refused")),
            MetaErrorKind::Unavailable
        );
    }

    #[test]
    fn object_version_round_trips() {
        let version = ObjectVersion {
            version_id: "v1".into(),
            size_bytes: 10,
            etag: "abc".into(),
            last_modified_ms: 5,
            content_type: Some("text/plain".into()),
            headers: ContentHeaders {
                cache_control: Some("no-cache".into()),
                expires_unix_s: Some(1_700_000_000),
                ..Default::default()
            },
            user_metadata: [("a".to_string(), "b".to_string())].into(),
            checksums: [(ChecksumAlgorithm::Crc32c, "AAAAAA==".to_string())].into(),
            data: ObjectData::Striped {
                n_data_shards: 1,
                n_parity_shards: 1,
                stripes: vec![Stripe {
                    id: StripeId(7),
                    len_bytes: 10,
                    shards: vec![
                        ShardLocation {
                            node: NodeId(1),
                            digest: ShardDigest([1; 32]),
                        },
                        ShardLocation {
                            node: NodeId(2),
                            digest: ShardDigest([2; 32]),
                        },
                    ],
                }],
            },
        };
        let pb = meta::ObjectVersion::from(version.clone());
        assert_eq!(ObjectVersion::try_from(pb).unwrap(), version);
    }

    #[test]
    fn a_version_whose_size_disagrees_with_its_data_is_refused() {
        let pb = meta::ObjectVersion {
            size_bytes: 3,
            data: Some(meta::object_version::Data::Inline(vec![1u8, 2].into())),
            ..Default::default()
        };
        assert!(ObjectVersion::try_from(pb).is_err());
    }
}
