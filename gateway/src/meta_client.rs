//! The client of the metadata service: core types in, core types out. It finds the leader
//! (following NotLeader redirects, trying the other voters when one is unreachable) and
//! retries writes under one request id, so that a write retried across a failover is
//! applied once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lauscha_core::model::Stripe;
use lauscha_core::model::{ListObjectsQuery, ObjectListing};
use lauscha_core::versioning::{
    BucketSettings, CompositeChecksums, MetaQuery, MetaQueryReply, ObjectCommand,
    ObjectCommandReply, VersionDetails, VersionExtras,
};
use lauscha_core::{
    AccessKey, AccessKeyId, Bucket, BucketName, ClusterMap, MultipartUpload, NodeId, NodeInfo,
    NodeState, ObjectVersion, Permission, PlacementPolicy, StripeId, Tenant, TenantId, UploadPart,
    WriteCondition,
};
use lauscha_proto::meta::meta_service_client::MetaServiceClient;
use lauscha_proto::meta::meta_service_server;
use lauscha_proto::meta::{self as pb};
use lauscha_proto::{LEADER_HEADER, MetaErrorKind, REQUEST_ID_HEADER};
use lauscha_proto::{LocalRoles, RoleChannel};
use tonic::transport::Endpoint;
use tracing::debug;

use crate::GatewayError;

/// Largest metadata message (a 5 GiB object's stripe map is well below).
const MAX_META_MESSAGE_BYTES: usize = 64 << 20;
/// How long a call keeps looking for a leader before it gives up with Unavailable.
const LEADER_SEARCH: Duration = Duration::from_secs(15);
/// How long one attempt waits for a voter: a paused voter accepts connections but never
/// answers, and must not hold a request for longer than a failover takes.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Adding a learner returns once it has caught up, which may take a while.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// A current stripe, as maintenance sees it.
#[derive(Clone, Debug)]
pub struct MaintainedStripe {
    /// What holds it, for logs (`bucket/key`, `volume NAME extent N`).
    pub owner: String,
    /// The stripe and where its shards are.
    pub stripe: Stripe,
    /// The policy it is kept at.
    pub policy: PlacementPolicy,
}

/// Stripes waiting for garbage collection.
#[derive(Clone, Debug)]
pub struct GarbageRecord {
    /// The record's key (to drop it once done).
    pub key: Vec<u8>,
    /// Where it came from (bucket/key), for logs.
    pub origin: String,
    /// The stripes and their shard locations.
    pub stripes: Vec<Stripe>,
}

/// A connection to the metadata voters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MetaClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    /// The configured voters, `http://ip:port`.
    endpoints: Vec<String>,
    /// Channels by endpoint, including leaders learnt from redirects.
    channels: Mutex<HashMap<String, MetaServiceClient<RoleChannel>>>,
    /// The endpoint that answered last: probably the leader.
    preferred: Mutex<String>,
    /// Random per process, the first half of every request id.
    client_id: u64,
    next_seq: AtomicU64,
    /// Source address of connections to the voters.
    source_ip: Option<IpAddr>,
    /// Voters in this process, called without the network.
    local: LocalRoles,
}

fn shard_ref(stripe: StripeId, shard_idx: u8) -> pb::ShardRef {
    pb::ShardRef {
        stripe_id: stripe.to_bytes().to_vec().into(),
        shard_idx: u32::from(shard_idx),
    }
}

/// Lock and tags for a request: empty bytes when there are none.
fn encode_extras(extras: &VersionExtras) -> bytes::Bytes {
    if *extras == VersionExtras::default() {
        bytes::Bytes::new()
    } else {
        lauscha_proto::encode_payload(extras).into()
    }
}

fn invalid_reply(e: lauscha_proto::ProtoError) -> GatewayError {
    GatewayError::Internal(format!("metadata sent an invalid reply: {e}"))
}

/// What to do after a failed attempt.
enum Next {
    /// Go to this endpoint now.
    Redirect(String),
    /// Try another voter after a pause.
    Retry,
    /// The answer is final.
    Fail,
}

fn next_step(status: &tonic::Status) -> Next {
    let Some(kind) = MetaErrorKind::from_details(status) else {
        // Not an answer from a voter but from the transport (reset, refused, timed out):
        // the voter may be gone. Writes carry a request id, so trying again is safe.
        return match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::Unimplemented => Next::Fail,
            _ => Next::Retry,
        };
    };
    match kind {
        MetaErrorKind::NotLeader => match status
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(leader) => Next::Redirect(format!("http://{leader}")),
            None => Next::Retry,
        },
        MetaErrorKind::Unavailable => Next::Retry,
        MetaErrorKind::NoSuchBucket
        | MetaErrorKind::NoSuchKey
        | MetaErrorKind::BucketAlreadyExists
        | MetaErrorKind::BucketAlreadyOwnedByYou
        | MetaErrorKind::BucketNotEmpty
        | MetaErrorKind::AccessDenied
        | MetaErrorKind::NoSuchTenant
        | MetaErrorKind::TenantAlreadyExists
        | MetaErrorKind::NoSuchAccessKey
        | MetaErrorKind::AccessKeyAlreadyExists
        | MetaErrorKind::InvalidArgument
        | MetaErrorKind::Conflict
        | MetaErrorKind::PreconditionFailed
        | MetaErrorKind::NoSuchUpload
        | MetaErrorKind::InvalidPart
        | MetaErrorKind::InvalidPartOrder
        | MetaErrorKind::EntityTooSmall
        | MetaErrorKind::NoSuchVersion
        | MetaErrorKind::InvalidBucketState
        | MetaErrorKind::ObjectLocked
        | MetaErrorKind::MethodNotAllowed
        | MetaErrorKind::InvalidRequest
        | MetaErrorKind::NoSuchVolume
        | MetaErrorKind::VolumeExists
        | MetaErrorKind::Fenced
        | MetaErrorKind::Internal => Next::Fail,
    }
}

fn grants_of(
    reply: pb::KeyGrants,
) -> Result<Option<BTreeMap<BucketName, Permission>>, GatewayError> {
    if !reply.limited {
        return Ok(None);
    }
    reply
        .grants
        .into_iter()
        .map(|g| {
            let bucket = BucketName::parse(&g.bucket)
                .map_err(|e| GatewayError::Internal(format!("metadata sent a bad grant: {e}")))?;
            let p = Permission::parse(&g.permission).ok_or_else(|| {
                GatewayError::Internal(format!("metadata sent permission {}", g.permission))
            })?;
            Ok((bucket, p))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// A multipart upload as S3 requests name it.
#[derive(Clone, Copy, Debug)]
pub struct UploadName<'a> {
    /// The bucket.
    pub bucket: &'a BucketName,
    /// The tenant asking.
    pub tenant: &'a TenantId,
    /// The object key.
    pub key: &'a str,
    /// The upload id.
    pub upload_id: &'a str,
}

impl UploadName<'_> {
    fn to_pb(self) -> pb::UploadRef {
        pb::UploadRef {
            bucket: self.bucket.to_string(),
            key: self.key.to_string(),
            tenant: self.tenant.0.clone(),
            upload_id: self.upload_id.to_string(),
        }
    }
}

impl MetaClient {
    /// A client of the voters at `endpoints` (`http://ip:port`), connecting from
    /// `source_ip` (default: the kernel's choice). Connects lazily: voters that are not up
    /// yet are tried on each call.
    pub fn new(
        endpoints: &[String],
        source_ip: Option<IpAddr>,
    ) -> Result<MetaClient, GatewayError> {
        MetaClient::with_local_roles(endpoints, source_ip, LocalRoles::default())
    }

    /// [`MetaClient::new`], calling the voters among `local` (this process's roles)
    /// without the network.
    pub fn with_local_roles(
        endpoints: &[String],
        source_ip: Option<IpAddr>,
        local: LocalRoles,
    ) -> Result<MetaClient, GatewayError> {
        let first = endpoints.first().ok_or_else(|| {
            GatewayError::InvalidArgument("no metadata endpoint configured".into())
        })?;
        for endpoint in endpoints {
            Endpoint::from_shared(endpoint.clone()).map_err(|e| {
                GatewayError::InvalidArgument(format!("metadata endpoint {endpoint:?}: {e}"))
            })?;
        }
        Ok(MetaClient {
            inner: Arc::new(ClientInner {
                endpoints: endpoints.to_vec(),
                channels: Mutex::new(HashMap::new()),
                preferred: Mutex::new(first.clone()),
                client_id: rand::random(),
                next_seq: AtomicU64::new(1),
                source_ip,
                local,
            }),
        })
    }

    fn client(&self, endpoint: &str) -> Result<MetaServiceClient<RoleChannel>, GatewayError> {
        let mut channels = self.inner.channels.lock().expect("channels lock");
        if let Some(client) = channels.get(endpoint) {
            return Ok(client.clone());
        }
        let local = self
            .inner
            .local
            .channel(meta_service_server::SERVICE_NAME, endpoint);
        let channel = match local {
            Some(channel) => channel,
            None => lauscha_proto::role_endpoint(endpoint.to_string(), self.inner.source_ip)
                .map_err(|e| {
                    GatewayError::Internal(format!("metadata endpoint {endpoint:?}: {e}"))
                })?
                .connect_lazy()
                .into(),
        };
        let client = MetaServiceClient::new(channel)
            .max_decoding_message_size(MAX_META_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_META_MESSAGE_BYTES);
        channels.insert(endpoint.to_string(), client.clone());
        Ok(client)
    }

    /// The configured endpoint after `current` (round robin), for when a voter is down.
    fn next_endpoint(&self, current: &str) -> String {
        let endpoints = &self.inner.endpoints;
        let idx = endpoints.iter().position(|e| e == current);
        match idx {
            Some(i) => endpoints[(i + 1) % endpoints.len()].clone(),
            None => endpoints[0].clone(),
        }
    }

    /// Runs one RPC against the leader. `write` calls carry a request id that stays the
    /// same across every retry of this call.
    async fn call<M, T, F, Fut>(&self, write: bool, message: M, rpc: F) -> Result<T, GatewayError>
    where
        M: Clone,
        F: Fn(MetaServiceClient<RoleChannel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let request_id = write.then(|| self.new_request_id());
        self.call_with_timeout(request_id, ATTEMPT_TIMEOUT, message, rpc)
            .await
    }

    /// A request id no other call of this client carries: a command sent again under the
    /// same id is applied at most once, and answered as it was the first time (for as
    /// long as metadata keeps request records, `REQUEST_RETENTION_MS`).
    pub fn new_request_id(&self) -> String {
        format!(
            "{:016x}-{:016x}",
            self.inner.client_id,
            self.inner.next_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn call_with_timeout<M, T, F, Fut>(
        &self,
        request_id: Option<String>,
        attempt_timeout: Duration,
        message: M,
        rpc: F,
    ) -> Result<T, GatewayError>
    where
        M: Clone,
        F: Fn(MetaServiceClient<RoleChannel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH;
        let mut endpoint = self.inner.preferred.lock().expect("preferred lock").clone();
        let mut backoff = Duration::from_millis(20);
        loop {
            let mut request = tonic::Request::new(message.clone());
            if let Some(id) = &request_id
                && let Ok(value) = id.parse()
            {
                request.metadata_mut().insert(REQUEST_ID_HEADER, value);
            }
            let attempt =
                tokio::time::timeout(attempt_timeout, rpc(self.client(&endpoint)?, request));
            let result = attempt.await.unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "no answer from {endpoint} within {attempt_timeout:?}"
                )))
            });
            let status = match result {
                Ok(response) => {
                    *self.inner.preferred.lock().expect("preferred lock") = endpoint;
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(GatewayError::from_meta_status(&status));
            }
            match next_step(&status) {
                Next::Fail => return Err(GatewayError::from_meta_status(&status)),
                Next::Redirect(leader) if leader != endpoint => {
                    debug!(from = %endpoint, to = %leader, "metadata redirect to the leader");
                    endpoint = leader;
                }
                Next::Redirect(_) | Next::Retry => {
                    debug!(%endpoint, error = %status.message(), "metadata unavailable; trying another voter");
                    endpoint = self.next_endpoint(&endpoint);
                    // An election takes a second or so: back off instead of spinning.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Runs a command of the versioned object model (settings, versioned deletes, version
    /// attributes), exactly once across retries.
    pub async fn execute(
        &self,
        command: &ObjectCommand,
    ) -> Result<ObjectCommandReply, GatewayError> {
        let message = pb::Encoded {
            body: lauscha_proto::encode_payload(command).into(),
        };
        let reply = self
            .call(true, message, |mut c, r| async move { c.execute(r).await })
            .await?;
        lauscha_proto::decode_payload(&reply.body).map_err(invalid_reply)
    }

    /// `execute` under a request id the caller keeps (`new_request_id`): calling again
    /// with the same id after an unknown outcome learns what became of the first call,
    /// and never applies the command twice.
    pub async fn execute_as(
        &self,
        request_id: &str,
        command: &ObjectCommand,
    ) -> Result<ObjectCommandReply, GatewayError> {
        let message = pb::Encoded {
            body: lauscha_proto::encode_payload(command).into(),
        };
        let reply = self
            .call_with_timeout(
                Some(request_id.to_string()),
                ATTEMPT_TIMEOUT,
                message,
                |mut c, r| async move { c.execute(r).await },
            )
            .await?;
        lauscha_proto::decode_payload(&reply.body).map_err(invalid_reply)
    }

    /// A linearizable read of the versioned object model.
    pub async fn query(&self, query: &MetaQuery) -> Result<MetaQueryReply, GatewayError> {
        let message = pb::Encoded {
            body: lauscha_proto::encode_payload(query).into(),
        };
        let reply = self
            .call(false, message, |mut c, r| async move { c.query(r).await })
            .await?;
        lauscha_proto::decode_payload(&reply.body).map_err(invalid_reply)
    }

    /// Every setting of a bucket.
    pub async fn bucket_settings(
        &self,
        bucket: &BucketName,
    ) -> Result<BucketSettings, GatewayError> {
        match self
            .query(&MetaQuery::BucketSettings {
                bucket: bucket.clone(),
            })
            .await?
        {
            MetaQueryReply::BucketSettings(s) => Ok(s),
            other => Err(GatewayError::Internal(format!(
                "metadata answered {other:?}"
            ))),
        }
    }

    /// One version with its lock and tags (`None` version id: the newest version).
    pub async fn version(
        &self,
        bucket: &BucketName,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<VersionDetails>, GatewayError> {
        match self
            .query(&MetaQuery::Version {
                bucket: bucket.clone(),
                key: key.to_string(),
                version_id: version_id.map(str::to_string),
            })
            .await?
        {
            MetaQueryReply::Version(v) => Ok(v),
            other => Err(GatewayError::Internal(format!(
                "metadata answered {other:?}"
            ))),
        }
    }

    /// An access key by id.
    pub async fn get_access_key(&self, id: &AccessKeyId) -> Result<AccessKey, GatewayError> {
        let reply = self
            .call(
                false,
                pb::GetAccessKeyRequest { id: id.0.clone() },
                |mut c, r| async move { c.get_access_key(r).await },
            )
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, id: &TenantId) -> Result<Tenant, GatewayError> {
        let reply = self
            .call(
                true,
                pb::CreateTenantRequest { id: id.0.clone() },
                |mut c, r| async move { c.create_tenant(r).await },
            )
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// A key's grants by bucket; `None` when the key is unrestricted (it has none).
    pub async fn get_key_grants(
        &self,
        id: &AccessKeyId,
    ) -> Result<Option<BTreeMap<BucketName, Permission>>, GatewayError> {
        let reply = self
            .call(
                false,
                pb::GetAccessKeyRequest { id: id.0.clone() },
                |mut c, r| async move { c.get_key_grants(r).await },
            )
            .await?;
        grants_of(reply)
    }

    /// Gives a key a permission on a bucket of its tenant (`None` revokes); returns the
    /// key's grants afterwards.
    pub async fn grant_key(
        &self,
        id: &AccessKeyId,
        bucket: &BucketName,
        permission: Option<Permission>,
    ) -> Result<Option<BTreeMap<BucketName, Permission>>, GatewayError> {
        let message = pb::GrantKeyRequest {
            key_id: id.0.clone(),
            bucket: bucket.to_string(),
            permission: permission
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
        };
        let reply = self
            .call(
                true,
                message,
                |mut c, r| async move { c.grant_key(r).await },
            )
            .await?;
        grants_of(reply)
    }

    /// Creates an access key.
    pub async fn create_access_key(&self, key: AccessKey) -> Result<AccessKey, GatewayError> {
        let message = pb::CreateAccessKeyRequest {
            key: Some(key.into()),
        };
        let reply = self
            .call(true, message, |mut c, r| async move {
                c.create_access_key(r).await
            })
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Creates a bucket for `tenant`.
    pub async fn create_bucket(
        &self,
        name: &BucketName,
        tenant: &TenantId,
        policy: PlacementPolicy,
        object_lock: bool,
    ) -> Result<Bucket, GatewayError> {
        let message = pb::CreateBucketRequest {
            name: name.to_string(),
            tenant: tenant.0.clone(),
            policy: Some(policy.into()),
            object_lock,
        };
        let reply = self
            .call(
                true,
                message,
                |mut c, r| async move { c.create_bucket(r).await },
            )
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// A bucket by name.
    pub async fn get_bucket(&self, name: &BucketName) -> Result<Bucket, GatewayError> {
        let message = pb::GetBucketRequest {
            name: name.to_string(),
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.get_bucket(r).await },
            )
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Deletes an empty bucket of `tenant`.
    pub async fn delete_bucket(
        &self,
        name: &BucketName,
        tenant: &TenantId,
    ) -> Result<(), GatewayError> {
        let message = pb::DeleteBucketRequest {
            name: name.to_string(),
            tenant: tenant.0.clone(),
        };
        self.call(
            true,
            message,
            |mut c, r| async move { c.delete_bucket(r).await },
        )
        .await?;
        Ok(())
    }

    /// The buckets of `tenant`.
    pub async fn list_buckets(&self, tenant: &TenantId) -> Result<Vec<Bucket>, GatewayError> {
        let message = pb::ListBucketsRequest {
            tenant: tenant.0.clone(),
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.list_buckets(r).await },
            )
            .await?;
        reply
            .buckets
            .into_iter()
            .map(|b| b.try_into().map_err(invalid_reply))
            .collect()
    }

    /// Commits a version whose shards are durable (but for `missing`, which are queued for
    /// repair); returns (version id, mtime ms).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_object(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        key: &str,
        version: ObjectVersion,
        missing: &[(StripeId, u8)],
        condition: Option<&WriteCondition>,
        extras: &VersionExtras,
    ) -> Result<(String, u64), GatewayError> {
        let message = pb::PutObjectRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            tenant: tenant.0.clone(),
            version: Some(version.into()),
            missing: missing.iter().map(|(s, i)| shard_ref(*s, *i)).collect(),
            if_match: match condition {
                Some(WriteCondition::IfMatch(etag)) => Some(etag.clone()),
                _ => None,
            },
            if_none_match_any: condition == Some(&WriteCondition::IfNoneMatchAny),
            extras: encode_extras(extras),
        };
        let reply = self
            .call(
                true,
                message,
                |mut c, r| async move { c.put_object(r).await },
            )
            .await?;
        Ok((reply.version_id, reply.last_modified_ms))
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_upload(
        &self,
        upload: &UploadName<'_>,
        template: ObjectVersion,
        extras: &VersionExtras,
    ) -> Result<String, GatewayError> {
        let message = pb::CreateUploadRequest {
            bucket: upload.bucket.to_string(),
            key: upload.key.to_string(),
            tenant: upload.tenant.0.clone(),
            template: Some(template.into()),
            extras: encode_extras(extras),
        };
        let reply = self
            .call(
                true,
                message,
                |mut c, r| async move { c.create_upload(r).await },
            )
            .await?;
        Ok(reply.upload_id)
    }

    /// Records a part whose shards are durable; returns its time, Unix ms.
    pub async fn put_part(
        &self,
        upload: &UploadName<'_>,
        part: UploadPart,
    ) -> Result<u64, GatewayError> {
        let message = pb::PutPartRequest {
            upload: Some(upload.to_pb()),
            part_number: part.part_number,
            version: Some(part.version.into()),
        };
        let reply = self
            .call(true, message, |mut c, r| async move { c.put_part(r).await })
            .await?;
        Ok(reply.last_modified_ms)
    }

    /// Completes an upload from the listed (part number, ETag); returns the version's id
    /// and time.
    pub async fn complete_upload(
        &self,
        upload: &UploadName<'_>,
        parts: &[(u32, String)],
        etag: &str,
        condition: Option<&WriteCondition>,
        checksums: &CompositeChecksums,
    ) -> Result<(String, u64), GatewayError> {
        let message = pb::CompleteUploadRequest {
            upload: Some(upload.to_pb()),
            parts: parts
                .iter()
                .map(|(n, e)| pb::CompletedPart {
                    part_number: *n,
                    etag: e.clone(),
                })
                .collect(),
            etag: etag.to_string(),
            if_match: match condition {
                Some(WriteCondition::IfMatch(etag)) => Some(etag.clone()),
                _ => None,
            },
            if_none_match_any: condition == Some(&WriteCondition::IfNoneMatchAny),
            checksums: if checksums.composite.is_empty() {
                bytes::Bytes::new()
            } else {
                lauscha_proto::encode_payload(checksums).into()
            },
        };
        let reply = self
            .call(true, message, |mut c, r| async move {
                c.complete_upload(r).await
            })
            .await?;
        Ok((reply.version_id, reply.last_modified_ms))
    }

    /// Drops an upload and its parts.
    pub async fn abort_upload(&self, upload: &UploadName<'_>) -> Result<(), GatewayError> {
        self.call(true, upload.to_pb(), |mut c, r| async move {
            c.abort_upload(r).await
        })
        .await?;
        Ok(())
    }

    /// An upload in progress.
    pub async fn get_upload(
        &self,
        upload: &UploadName<'_>,
    ) -> Result<MultipartUpload, GatewayError> {
        let reply = self
            .call(false, upload.to_pb(), |mut c, r| async move {
                c.get_upload(r).await
            })
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Up to `limit` parts numbered above `after`, and whether more follow.
    pub async fn list_parts(
        &self,
        upload: &UploadName<'_>,
        after: u32,
        limit: u32,
    ) -> Result<(Vec<UploadPart>, bool), GatewayError> {
        let message = pb::ListPartsRequest {
            upload: Some(upload.to_pb()),
            after,
            limit,
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.list_parts(r).await },
            )
            .await?;
        let parts = reply
            .parts
            .into_iter()
            .map(|p| p.try_into().map_err(invalid_reply))
            .collect::<Result<_, _>>()?;
        Ok((parts, reply.truncated))
    }

    /// Up to `limit` uploads in progress under `prefix`, after (key, upload id).
    pub async fn list_uploads(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        prefix: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<(Vec<MultipartUpload>, bool), GatewayError> {
        let message = pb::ListUploadsRequest {
            bucket: bucket.to_string(),
            tenant: tenant.0.clone(),
            prefix: prefix.to_string(),
            after_key: after.map(|(k, _)| k.to_string()),
            after_upload_id: after.map(|(_, u)| u.to_string()).unwrap_or_default(),
            limit,
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.list_uploads(r).await },
            )
            .await?;
        let uploads = reply
            .uploads
            .into_iter()
            .map(|u| u.try_into().map_err(invalid_reply))
            .collect::<Result<_, _>>()?;
        Ok((uploads, reply.truncated))
    }

    /// Up to `limit` uploads of any bucket started before `started_before_ms`.
    pub async fn list_stale_uploads(
        &self,
        started_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<(BucketName, MultipartUpload)>, GatewayError> {
        let message = pb::ListStaleUploadsRequest {
            started_before_ms,
            limit,
        };
        let reply = self
            .call(false, message, |mut c, r| async move {
                c.list_stale_uploads(r).await
            })
            .await?;
        reply
            .uploads
            .into_iter()
            .map(|s| {
                let bucket = BucketName::parse(&s.bucket).map_err(|e| {
                    GatewayError::Internal(format!("metadata sent an invalid bucket: {e}"))
                })?;
                let upload = s
                    .upload
                    .ok_or_else(|| GatewayError::Internal("metadata sent no upload".into()))?
                    .try_into()
                    .map_err(invalid_reply)?;
                Ok((bucket, upload))
            })
            .collect()
    }

    /// The current version of an object.
    pub async fn get_object(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        key: &str,
    ) -> Result<ObjectVersion, GatewayError> {
        let message = pb::GetObjectRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            tenant: tenant.0.clone(),
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.get_object(r).await },
            )
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Deletes an object; returns whether it existed.
    pub async fn delete_object(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        key: &str,
    ) -> Result<bool, GatewayError> {
        let message = pb::DeleteObjectRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            tenant: tenant.0.clone(),
        };
        let reply = self
            .call(
                true,
                message,
                |mut c, r| async move { c.delete_object(r).await },
            )
            .await?;
        Ok(reply.existed)
    }

    /// One page of a listing.
    pub async fn list_objects(
        &self,
        tenant: &TenantId,
        query: ListObjectsQuery,
    ) -> Result<ObjectListing, GatewayError> {
        let mut message = pb::ListObjectsRequest::from(query);
        message.tenant = tenant.0.clone();
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.list_objects(r).await },
            )
            .await?;
        Ok(reply.into())
    }

    /// Adds or updates a storage node; returns the new map.
    pub async fn register_node(&self, node: NodeInfo) -> Result<ClusterMap, GatewayError> {
        let reply = self
            .call(true, pb::NodeInfo::from(node), |mut c, r| async move {
                c.register_node(r).await
            })
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// The cluster map.
    pub async fn cluster_map(&self) -> Result<ClusterMap, GatewayError> {
        let reply = self
            .call(false, pb::GetClusterMapRequest {}, |mut c, r| async move {
                c.get_cluster_map(r).await
            })
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Up to `limit` current stripes after `after`, with owners and policies.
    pub async fn list_stripes(
        &self,
        after: Option<StripeId>,
        limit: u32,
    ) -> Result<(Vec<MaintainedStripe>, bool), GatewayError> {
        let message = pb::ListStripesRequest {
            after: after
                .map(|s| s.to_bytes().to_vec().into())
                .unwrap_or_default(),
            limit,
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.list_stripes(r).await },
            )
            .await?;
        let stripes = reply
            .stripes
            .into_iter()
            .map(|s| {
                Ok(MaintainedStripe {
                    owner: if s.bucket.is_empty() {
                        s.key
                    } else {
                        format!("{}/{}", s.bucket, s.key)
                    },
                    stripe: s
                        .stripe
                        .ok_or_else(|| GatewayError::Internal("stripe missing".into()))?
                        .try_into()
                        .map_err(invalid_reply)?,
                    policy: s
                        .policy
                        .ok_or_else(|| GatewayError::Internal("policy missing".into()))?
                        .try_into()
                        .map_err(invalid_reply)?,
                })
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        Ok((stripes, reply.more))
    }

    /// Queued repairs.
    pub async fn list_repairs(&self, limit: u32) -> Result<Vec<(StripeId, u8)>, GatewayError> {
        let reply = self
            .call(
                false,
                pb::ListRepairsRequest { limit },
                |mut c, r| async move { c.list_repairs(r).await },
            )
            .await?;
        reply
            .repairs
            .into_iter()
            .map(|r| {
                let stripe = StripeId::from_slice(&r.stripe_id)
                    .ok_or_else(|| GatewayError::Internal("bad stripe id".into()))?;
                Ok((stripe, r.shard_idx as u8))
            })
            .collect()
    }

    /// Garbage records created before `older_than_ms`.
    pub async fn list_garbage(
        &self,
        older_than_ms: u64,
        limit: u32,
    ) -> Result<Vec<GarbageRecord>, GatewayError> {
        let message = pb::ListGarbageRequest {
            older_than_ms,
            limit,
        };
        let reply = self
            .call(
                false,
                message,
                |mut c, r| async move { c.list_garbage(r).await },
            )
            .await?;
        reply
            .entries
            .into_iter()
            .map(|e| {
                Ok(GarbageRecord {
                    key: e.key.to_vec(),
                    origin: e.origin,
                    stripes: e
                        .stripes
                        .into_iter()
                        .map(|s| s.try_into().map_err(invalid_reply))
                        .collect::<Result<Vec<Stripe>, GatewayError>>()?,
                })
            })
            .collect()
    }

    /// Whether each stripe is referenced (by a current version or a pending garbage record).
    pub async fn stripes_known(&self, ids: &[StripeId]) -> Result<Vec<bool>, GatewayError> {
        let message = pb::StripesKnownRequest {
            stripe_ids: ids.iter().map(|s| s.to_bytes().to_vec().into()).collect(),
        };
        let reply = self
            .call(false, message, |mut c, r| async move {
                c.stripes_known(r).await
            })
            .await?;
        if reply.known.len() != ids.len() {
            return Err(GatewayError::Internal(
                "stripes_known answered a different count".into(),
            ));
        }
        Ok(reply.known)
    }

    /// Whether the shards of each stripe may be deleted for the garbage record
    /// `garbage_key`: nothing keeps the stripe, and no newer record lists it.
    pub async fn stripes_collectable(
        &self,
        garbage_key: &[u8],
        ids: &[StripeId],
    ) -> Result<Vec<bool>, GatewayError> {
        let message = pb::StripesCollectableRequest {
            garbage_key: garbage_key.to_vec().into(),
            stripe_ids: ids.iter().map(|s| s.to_bytes().to_vec().into()).collect(),
        };
        let reply = self
            .call(false, message, |mut c, r| async move {
                c.stripes_collectable(r).await
            })
            .await?;
        if reply.collectable.len() != ids.len() {
            return Err(GatewayError::Internal(
                "stripes_collectable answered a different count".into(),
            ));
        }
        Ok(reply.collectable)
    }

    /// Points a shard at its new node (compare and set on the old one).
    pub async fn move_shard(
        &self,
        stripe: StripeId,
        shard_idx: u8,
        from: NodeId,
        to: NodeId,
    ) -> Result<(), GatewayError> {
        let message = pb::MoveShardRequest {
            shard: Some(shard_ref(stripe, shard_idx)),
            from_node: from.0,
            to_node: to.0,
        };
        self.call(
            true,
            message,
            |mut c, r| async move { c.move_shard(r).await },
        )
        .await?;
        Ok(())
    }

    /// Removes a queued repair.
    pub async fn clear_repair(&self, stripe: StripeId, shard_idx: u8) -> Result<(), GatewayError> {
        self.call(true, shard_ref(stripe, shard_idx), |mut c, r| async move {
            c.clear_repair(r).await
        })
        .await?;
        Ok(())
    }

    /// Forgets a garbage record whose shards are deleted.
    pub async fn drop_garbage(&self, key: Vec<u8>) -> Result<(), GatewayError> {
        let message = pb::DropGarbageRequest { key: key.into() };
        self.call(
            true,
            message,
            |mut c, r| async move { c.drop_garbage(r).await },
        )
        .await?;
        Ok(())
    }

    /// Sets a node's lifecycle state; returns the new map.
    pub async fn set_node_state(
        &self,
        node: NodeId,
        state: NodeState,
    ) -> Result<ClusterMap, GatewayError> {
        let message = pb::SetNodeStateRequest {
            node_id: node.0,
            state: pb::NodeState::from(state).into(),
        };
        let reply = self
            .call(true, message, |mut c, r| async move {
                c.set_node_state(r).await
            })
            .await?;
        reply.try_into().map_err(invalid_reply)
    }

    /// Raft status of every configured voter that answers (unreachable ones are listed
    /// with `reachable: false`).
    pub async fn voter_status(&self) -> Vec<crate::admin::VoterStatus> {
        let probes = self.inner.endpoints.iter().map(|endpoint| async move {
            let reply = match self.client(endpoint) {
                Ok(mut c) => {
                    tokio::time::timeout(Duration::from_secs(2), c.status(pb::StatusRequest {}))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(tonic::Response::into_inner)
                }
                Err(_) => None,
            };
            crate::admin::VoterStatus::from_reply(endpoint, reply)
        });
        futures::future::join_all(probes).await
    }

    /// Snapshots and purges the log on every configured voter that answers; returns
    /// (endpoint, snapshot index or error) per voter.
    pub async fn compact_logs(&self) -> Vec<(String, Result<u64, String>)> {
        let calls = self.inner.endpoints.iter().map(|endpoint| async move {
            let result = match self.client(endpoint) {
                Ok(mut c) => c
                    .compact_log(pb::CompactLogRequest {})
                    .await
                    .map(|r| r.into_inner().snapshot_index)
                    .map_err(|s| s.message().to_string()),
                Err(e) => Err(e.to_string()),
            };
            (endpoint.clone(), result)
        });
        futures::future::join_all(calls).await
    }

    /// Adds a learner voter-to-be (returns once it has caught up).
    pub async fn add_learner(&self, node_id: u64, addr: &str) -> Result<(), GatewayError> {
        let message = pb::AddLearnerRequest {
            node_id,
            addr: addr.to_string(),
        };
        let request_id = Some(self.new_request_id());
        self.call_with_timeout(
            request_id,
            CATCH_UP_TIMEOUT,
            message,
            |mut c, r| async move { c.add_learner(r).await },
        )
        .await?;
        Ok(())
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, node_id: u64) -> Result<(), GatewayError> {
        self.call(true, pb::MemberRequest { node_id }, |mut c, r| async move {
            c.promote(r).await
        })
        .await?;
        Ok(())
    }

    /// Removes a member.
    pub async fn remove_member(&self, node_id: u64) -> Result<(), GatewayError> {
        self.call(true, pb::MemberRequest { node_id }, |mut c, r| async move {
            c.remove_member(r).await
        })
        .await?;
        Ok(())
    }
}
