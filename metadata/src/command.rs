//! What goes through Raft: commands in the log and the responses `apply` gives.
//!
//! Commands carry everything `apply` needs, including the time (stamped by the voter that
//! proposes them), so that applying the same log gives the same state on every voter.

use std::fmt;

use lauscha_core::versioning::{
    CompositeChecksums, ObjectCommand, ObjectCommandReply, VersionExtras,
};
use lauscha_core::{
    AccessKey, AccessKeyId, Bucket, BucketName, NodeId, NodeInfo, NodeState, ObjectVersion,
    Permission, PlacementPolicy, StripeId, Tenant, TenantId, UploadPart, WriteCondition,
};
use serde::{Deserialize, Serialize};

/// Identifies one logical client request across retries: a client that retries a write
/// after a failover sends the same id, and the state machine applies it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Random per client process.
    pub client: u64,
    /// Increasing per request of that client.
    pub seq: u64,
}

impl RequestId {
    /// The text form carried in the `lauscha-request-id` gRPC header.
    pub fn to_header(self) -> String {
        format!("{:016x}-{:016x}", self.client, self.seq)
    }

    /// Parses the header form.
    pub fn from_header(s: &str) -> Option<RequestId> {
        let (client, seq) = s.split_once('-')?;
        Some(RequestId {
            client: u64::from_str_radix(client, 16).ok()?,
            seq: u64::from_str_radix(seq, 16).ok()?,
        })
    }
}

/// One entry of the Raft log: a command, who asked (for exactly-once), and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Set when the client may retry: the response is remembered for a while.
    pub request_id: Option<RequestId>,
    /// Proposal time on the proposing voter, Unix ms (drives the retention of request ids).
    pub now_ms: u64,
    /// The change.
    pub command: MetaCommand,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.request_id {
            Some(id) => write!(f, "{} [{}]", self.command, id.to_header()),
            None => write!(f, "{}", self.command),
        }
    }
}

/// A state change. New variants go at the end: the log stores the variant index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create a tenant.
    CreateTenant {
        /// Its id.
        id: TenantId,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// Create an access key (its `created_ms` is set from `now_ms`).
    CreateAccessKey {
        /// The key.
        key: AccessKey,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// Create a bucket.
    CreateBucket {
        /// Its name.
        name: BucketName,
        /// The owning tenant.
        tenant: TenantId,
        /// Its placement policy.
        policy: PlacementPolicy,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// Delete an empty bucket.
    DeleteBucket {
        /// Its name.
        name: BucketName,
        /// The tenant asking; must own it.
        tenant: TenantId,
    },
    /// Make a version current. Its shards are already durable.
    PutObject {
        /// The bucket.
        bucket: BucketName,
        /// The tenant writing; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The version; `version_id` and `last_modified_ms` are assigned by `apply`.
        version: Box<ObjectVersion>,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Shards a degraded write could not store: queued for repair at once.
        missing: Vec<(StripeId, u8)>,
    },
    /// Remove an object.
    DeleteObject {
        /// The bucket.
        bucket: BucketName,
        /// The tenant deleting; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// Add or update a storage node in the cluster map.
    UpsertNode {
        /// The node.
        node: NodeInfo,
    },
    /// Point a shard at its new node after repair or a move; refused unless the stripe is
    /// still current and the shard is still where the mover found it (compare and set).
    MoveShard {
        /// The stripe.
        stripe_id: StripeId,
        /// The shard.
        shard_idx: u8,
        /// Where the map had it.
        from: NodeId,
        /// Where it is now, durably.
        to: NodeId,
    },
    /// A queued repair is done (or moot).
    ClearRepair {
        /// The stripe.
        stripe_id: StripeId,
        /// The shard.
        shard_idx: u8,
    },
    /// Forget a garbage record whose shards are deleted.
    DropGarbage {
        /// The record's key.
        key: Vec<u8>,
    },
    /// Set a node's lifecycle state.
    SetNodeState {
        /// The node.
        node: NodeId,
        /// Its new state.
        state: NodeState,
    },
    /// `PutObject` that applies only if `condition` holds for the current version.
    PutObjectIf {
        /// The bucket.
        bucket: BucketName,
        /// The tenant writing; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The version; `version_id` and `last_modified_ms` are assigned by `apply`.
        version: Box<ObjectVersion>,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Shards a degraded write could not store: queued for repair at once.
        missing: Vec<(StripeId, u8)>,
        /// What must hold.
        condition: WriteCondition,
    },
    /// Start a multipart upload.
    CreateUpload {
        /// The bucket.
        bucket: BucketName,
        /// The tenant; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// Headers and metadata of the object to be.
        template: Box<ObjectVersion>,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// Record an uploaded part (its shards are durable); replaces a part with its number.
    PutPart {
        /// The bucket.
        bucket: BucketName,
        /// The tenant; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The upload.
        upload_id: String,
        /// The part.
        part: Box<UploadPart>,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// Make the listed parts, in order, the object's current version.
    CompleteUpload {
        /// The bucket.
        bucket: BucketName,
        /// The tenant; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The upload.
        upload_id: String,
        /// (part number, ETag) as the client listed them.
        parts: Vec<(u32, String)>,
        /// The object's ETag (MD5 of the parts' MD5s, `-N`), computed from the listed ETags.
        etag: String,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Conditional completion (If-None-Match: *, If-Match), as for PutObjectIf.
        condition: Option<WriteCondition>,
    },
    /// Give an access key a permission on a bucket of its tenant, or take it away.
    GrantKey {
        /// The key.
        key: AccessKeyId,
        /// The bucket.
        bucket: BucketName,
        /// The permission; `None` revokes.
        permission: Option<Permission>,
    },
    /// Drop an upload and its parts.
    AbortUpload {
        /// The bucket.
        bucket: BucketName,
        /// The tenant; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The upload.
        upload_id: String,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// A command of the versioned object model (settings, versioned deletes, version
    /// attributes).
    Object {
        /// The command.
        command: ObjectCommand,
        /// Proposal time, Unix ms.
        now_ms: u64,
    },
    /// `PutObject` with its lock and tags, and an optional condition.
    PutObjectWith {
        /// The bucket.
        bucket: BucketName,
        /// The tenant writing; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The version; `version_id` and `last_modified_ms` are assigned by `apply`.
        version: Box<ObjectVersion>,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Shards a degraded write could not store: queued for repair at once.
        missing: Vec<(StripeId, u8)>,
        /// What must hold, if anything.
        condition: Option<WriteCondition>,
        /// Lock and tags of the new version.
        extras: VersionExtras,
    },
    /// `CreateUpload` with the lock and tags the completed object gets.
    CreateUploadWith {
        /// The bucket.
        bucket: BucketName,
        /// The tenant; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// Headers and metadata of the object to be.
        template: Box<ObjectVersion>,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Lock and tags of the object to be.
        extras: VersionExtras,
    },
    /// `CompleteUpload` with the composite checksums of the parts.
    CompleteUploadWith {
        /// The bucket.
        bucket: BucketName,
        /// The tenant; must own the bucket.
        tenant: TenantId,
        /// The object key.
        key: String,
        /// The upload.
        upload_id: String,
        /// (part number, ETag) as the client listed them.
        parts: Vec<(u32, String)>,
        /// The object's ETag.
        etag: String,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Conditional completion.
        condition: Option<WriteCondition>,
        /// Composite checksums and the part checksums they come from.
        checksums: CompositeChecksums,
    },
    /// `CreateBucket` with Object Lock (and so versioning) enabled from the start.
    CreateBucketWith {
        /// Its name.
        name: BucketName,
        /// The owning tenant.
        tenant: TenantId,
        /// Its placement policy.
        policy: PlacementPolicy,
        /// Proposal time, Unix ms.
        now_ms: u64,
        /// Enable Object Lock.
        object_lock: bool,
    },
}

impl fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaCommand::CreateTenant { id, .. } => write!(f, "create-tenant {id}"),
            MetaCommand::CreateAccessKey { key, .. } => write!(f, "create-key {}", key.id),
            MetaCommand::CreateBucket { name, .. } => write!(f, "create-bucket {name}"),
            MetaCommand::DeleteBucket { name, .. } => write!(f, "delete-bucket {name}"),
            MetaCommand::PutObject { bucket, key, .. } => write!(f, "put {bucket}/{key}"),
            MetaCommand::PutObjectIf { bucket, key, .. } => write!(f, "put-if {bucket}/{key}"),
            MetaCommand::PutObjectWith { bucket, key, .. } => write!(f, "put {bucket}/{key}"),
            MetaCommand::CreateUploadWith { bucket, key, .. } => {
                write!(f, "create-upload {bucket}/{key}")
            }
            MetaCommand::CreateBucketWith { name, .. } => write!(f, "create-bucket {name}"),
            MetaCommand::Object { command, .. } => match command {
                ObjectCommand::PutBucketSetting { bucket, .. } => write!(f, "set {bucket}"),
                ObjectCommand::DeleteBucketSetting { bucket, .. } => write!(f, "unset {bucket}"),
                ObjectCommand::Delete {
                    bucket,
                    key,
                    version_id,
                    ..
                } => write!(f, "delete {bucket}/{key} {version_id:?}"),
                ObjectCommand::SetVersionAttr { bucket, key, .. } => {
                    write!(f, "set-attr {bucket}/{key}")
                }
                ObjectCommand::Volume(v) => write!(f, "volume {}", v.volume()),
            },
            MetaCommand::CreateUpload { bucket, key, .. } => {
                write!(f, "create-upload {bucket}/{key}")
            }
            MetaCommand::PutPart {
                upload_id, part, ..
            } => write!(f, "put-part {upload_id}#{}", part.part_number),
            MetaCommand::CompleteUpload { upload_id, .. }
            | MetaCommand::CompleteUploadWith { upload_id, .. } => {
                write!(f, "complete-upload {upload_id}")
            }
            MetaCommand::AbortUpload { upload_id, .. } => write!(f, "abort-upload {upload_id}"),
            MetaCommand::GrantKey { key, bucket, .. } => write!(f, "grant {key} {bucket}"),
            MetaCommand::DeleteObject { bucket, key, .. } => write!(f, "delete {bucket}/{key}"),
            MetaCommand::UpsertNode { node } => write!(f, "upsert-node {}", node.id),
            MetaCommand::MoveShard {
                stripe_id,
                shard_idx,
                from,
                to,
            } => write!(f, "move-shard {stripe_id}.{shard_idx} {from}->{to}"),
            MetaCommand::ClearRepair {
                stripe_id,
                shard_idx,
            } => write!(f, "clear-repair {stripe_id}.{shard_idx}"),
            MetaCommand::DropGarbage { .. } => write!(f, "drop-garbage"),
            MetaCommand::SetNodeState { node, state } => {
                write!(f, "node-state {node} {}", state.as_str())
            }
        }
    }
}

/// What `apply` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Blank and membership entries.
    #[default]
    Done,
    /// The tenant created.
    Tenant(Tenant),
    /// The key created.
    AccessKey(AccessKey),
    /// The bucket created.
    Bucket(Bucket),
    /// The bucket deleted.
    BucketDeleted,
    /// The version committed.
    ObjectPut {
        /// Its id.
        version_id: String,
        /// Its time, Unix ms.
        last_modified_ms: u64,
    },
    /// The object removed (or it was absent).
    ObjectDeleted {
        /// Whether it existed.
        existed: bool,
    },
    /// The cluster map's new epoch.
    NodeUpserted {
        /// The epoch after the change.
        epoch: u64,
    },
    /// A maintenance command took effect.
    Maintained,
    /// The command was refused; the state is unchanged.
    Refused(MetaError),
    /// A multipart upload started.
    UploadCreated {
        /// Its id.
        upload_id: String,
    },
    /// A part recorded.
    PartPut {
        /// Its time, Unix ms.
        last_modified_ms: u64,
    },
    /// An upload dropped.
    UploadAborted,
    /// A grant given or taken.
    Granted,
    /// What a versioned-model command answers.
    Object(ObjectCommandReply),
}

/// Errors of the metadata service, as its clients see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    /// No such bucket.
    #[error("bucket {0} does not exist")]
    NoSuchBucket(String),
    /// No such object.
    #[error("object {key} does not exist in bucket {bucket}")]
    NoSuchKey {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Another tenant owns the name.
    #[error("bucket name {0} is taken")]
    BucketAlreadyExists(String),
    /// The caller owns it already.
    #[error("bucket {0} exists and is yours")]
    BucketAlreadyOwnedByYou(String),
    /// The bucket holds objects.
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    /// The bucket belongs to another tenant.
    #[error("access to bucket {0} denied")]
    AccessDenied(String),
    /// No such tenant.
    #[error("tenant {0} does not exist")]
    NoSuchTenant(String),
    /// The tenant exists.
    #[error("tenant {0} exists already")]
    TenantAlreadyExists(String),
    /// No such access key.
    #[error("access key {0} does not exist")]
    NoSuchAccessKey(String),
    /// The access key id is taken.
    #[error("access key {0} exists already")]
    AccessKeyAlreadyExists(String),
    /// A malformed request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A compare-and-set found something else (the object changed, the shard moved).
    #[error("conflict: {0}")]
    Conflict(String),
    /// This voter cannot serve the request; `leader` is where to go, if known.
    #[error("not the metadata leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's advertised address.
        leader: Option<String>,
    },
    /// No quorum, shutting down, or a timeout.
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
    /// Storage failure or a bug.
    #[error("metadata internal error: {0}")]
    Internal(String),
    /// A conditional write found the object in another state.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// No such multipart upload (never started, completed or aborted).
    #[error("multipart upload {0} does not exist")]
    NoSuchUpload(String),
    /// A listed part was not uploaded, or its ETag differs.
    #[error("invalid part: {0}")]
    InvalidPart(String),
    /// Listed parts are not in ascending order.
    #[error("invalid part order: {0}")]
    InvalidPartOrder(String),
    /// A part other than the last is smaller than 5 MiB.
    #[error("part too small: {0}")]
    EntityTooSmall(String),
    /// No such version of the key.
    #[error("no such version: {0}")]
    NoSuchVersion(String),
    /// The bucket's state forbids the request (suspending versioning under Object Lock).
    #[error("invalid bucket state: {0}")]
    InvalidBucketState(String),
    /// Object Lock protects the version.
    #[error("object locked: {0}")]
    ObjectLocked(String),
    /// The request names a delete marker where an object is needed.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// A request the bucket's configuration does not allow (Object Lock headers on a
    /// bucket without Object Lock).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such volume.
    #[error("volume {0} does not exist")]
    NoSuchVolume(String),
    /// The volume name is taken.
    #[error("volume {0} exists already")]
    VolumeExists(String),
    /// A write under a lease epoch that is no longer current.
    #[error("fenced: {0}")]
    Fenced(String),
}

impl MetaError {
    /// The stable kind carried across gRPC.
    pub fn kind(&self) -> lauscha_proto::MetaErrorKind {
        use lauscha_proto::MetaErrorKind as K;
        match self {
            MetaError::NoSuchBucket(_) => K::NoSuchBucket,
            MetaError::NoSuchKey { .. } => K::NoSuchKey,
            MetaError::BucketAlreadyExists(_) => K::BucketAlreadyExists,
            MetaError::BucketAlreadyOwnedByYou(_) => K::BucketAlreadyOwnedByYou,
            MetaError::BucketNotEmpty(_) => K::BucketNotEmpty,
            MetaError::AccessDenied(_) => K::AccessDenied,
            MetaError::NoSuchTenant(_) => K::NoSuchTenant,
            MetaError::TenantAlreadyExists(_) => K::TenantAlreadyExists,
            MetaError::NoSuchAccessKey(_) => K::NoSuchAccessKey,
            MetaError::AccessKeyAlreadyExists(_) => K::AccessKeyAlreadyExists,
            MetaError::InvalidArgument(_) => K::InvalidArgument,
            MetaError::Conflict(_) => K::Conflict,
            MetaError::PreconditionFailed(_) => K::PreconditionFailed,
            MetaError::NoSuchUpload(_) => K::NoSuchUpload,
            MetaError::InvalidPart(_) => K::InvalidPart,
            MetaError::InvalidPartOrder(_) => K::InvalidPartOrder,
            MetaError::EntityTooSmall(_) => K::EntityTooSmall,
            MetaError::NoSuchVersion(_) => K::NoSuchVersion,
            MetaError::InvalidBucketState(_) => K::InvalidBucketState,
            MetaError::ObjectLocked(_) => K::ObjectLocked,
            MetaError::MethodNotAllowed(_) => K::MethodNotAllowed,
            MetaError::InvalidRequest(_) => K::InvalidRequest,
            MetaError::NoSuchVolume(_) => K::NoSuchVolume,
            MetaError::VolumeExists(_) => K::VolumeExists,
            MetaError::Fenced(_) => K::Fenced,
            MetaError::NotLeader { .. } => K::NotLeader,
            MetaError::Unavailable(_) => K::Unavailable,
            MetaError::Internal(_) => K::Internal,
        }
    }
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> tonic::Status {
        let mut status = e.kind().status(e.to_string());
        if let MetaError::NotLeader { leader: Some(addr) } = &e
            && let Ok(value) = addr.parse()
        {
            status
                .metadata_mut()
                .insert(lauscha_proto::LEADER_HEADER, value);
        }
        status
    }
}

impl From<lauscha_proto::ProtoError> for MetaError {
    fn from(e: lauscha_proto::ProtoError) -> Self {
        MetaError::InvalidArgument(e.to_string())
    }
}
