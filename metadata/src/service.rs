//! The metadata gRPC service. Each handler converts its `pb` request into core types on its
//! first lines, runs a write or a linearizable read, and converts back.

use std::time::{SystemTime, UNIX_EPOCH};

use lauscha_core::model::ListObjectsQuery;
use lauscha_core::{
    AccessKey, AccessKeyId, NodeInfo, Permission, PlacementPolicy, StripeId, TenantId, UploadPart,
    WriteCondition,
};
use lauscha_proto::meta::meta_service_server::{MetaService, MetaServiceServer};
use lauscha_proto::meta::{self as pb};
use lauscha_proto::{ProtoError, bucket_name};
use tonic::{Request, Response, Status};

use crate::command::{MetaCommand, MetaError, MetaResponse, RequestId};
use crate::node::MetaNode;
use crate::{apply, query, versions};
use lauscha_core::versioning::{
    MetaQuery, MetaQueryReply, ObjectCommand, VersionExtras, version_seq,
};

/// Serves `lauscha.meta.v1.MetaService` from a voter.
#[derive(Clone)]
pub struct MetaServer {
    node: MetaNode,
}

impl MetaServer {
    /// A server for `node`.
    pub fn new(node: MetaNode) -> MetaServer {
        MetaServer { node }
    }

    /// The tonic service; messages are large enough for the stripe map of a 5 GiB object.
    pub fn into_service(self) -> MetaServiceServer<MetaServer> {
        MetaServiceServer::new(self)
            .max_decoding_message_size(crate::network::MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(crate::network::MAX_RAFT_MESSAGE_BYTES)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn tenant(s: &str) -> Result<TenantId, MetaError> {
    TenantId::parse(s).map_err(|e| MetaError::InvalidArgument(e.to_string()))
}

fn key_grants_reply(grants: Option<Vec<(lauscha_core::BucketName, Permission)>>) -> pb::KeyGrants {
    pb::KeyGrants {
        limited: grants.is_some(),
        grants: grants
            .unwrap_or_default()
            .into_iter()
            .map(|(bucket, p)| pb::BucketGrant {
                bucket: bucket.to_string(),
                permission: p.as_str().to_string(),
            })
            .collect(),
    }
}

/// A write condition as the messages carry it.
fn write_condition(
    if_match: Option<String>,
    if_none_match_any: bool,
) -> Result<Option<WriteCondition>, MetaError> {
    match (if_match, if_none_match_any) {
        (Some(_), true) => Err(MetaError::InvalidArgument(
            "if_match and if_none_match_any together".into(),
        )),
        (Some(etag), false) => Ok(Some(WriteCondition::IfMatch(etag))),
        (None, true) => Ok(Some(WriteCondition::IfNoneMatchAny)),
        (None, false) => Ok(None),
    }
}

/// The parts of an upload reference, checked.
fn upload_ref(
    upload: Option<pb::UploadRef>,
) -> Result<(lauscha_core::BucketName, TenantId, String, String), MetaError> {
    let upload = upload.ok_or_else(|| MetaError::InvalidArgument("upload missing".into()))?;
    Ok((
        bucket_name(&upload.bucket).map_err(MetaError::from)?,
        tenant(&upload.tenant)?,
        upload.key,
        upload.upload_id,
    ))
}

/// The request id a client put in the `lauscha-request-id` header, if any.
fn request_id<T>(request: &Request<T>) -> Option<RequestId> {
    request
        .metadata()
        .get(lauscha_proto::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::from_header)
}

fn shard_ref(pb: Option<pb::ShardRef>) -> Result<(StripeId, u8), MetaError> {
    let pb = pb.ok_or_else(|| MetaError::InvalidArgument("shard missing".into()))?;
    let stripe = StripeId::from_slice(&pb.stripe_id)
        .ok_or_else(|| MetaError::InvalidArgument("stripe_id: not 16 bytes".into()))?;
    let idx = u8::try_from(pb.shard_idx)
        .map_err(|_| MetaError::InvalidArgument("shard_idx out of range".into()))?;
    Ok((stripe, idx))
}

/// Lock and tags as a request carries them (empty bytes: none).
/// Stripe ids as a request carries them, 16 bytes each.
fn stripe_ids(raw: &[impl AsRef<[u8]>]) -> Result<Vec<StripeId>, MetaError> {
    raw.iter()
        .map(|b| {
            StripeId::from_slice(b.as_ref())
                .ok_or_else(|| MetaError::InvalidArgument("stripe id: not 16 bytes".into()))
        })
        .collect()
}

fn extras(bytes: &[u8]) -> Result<VersionExtras, MetaError> {
    if bytes.is_empty() {
        return Ok(VersionExtras::default());
    }
    lauscha_proto::decode_payload(bytes).map_err(MetaError::from)
}

fn unexpected(response: MetaResponse) -> Status {
    MetaError::Internal(format!("unexpected response {response:?}")).into()
}

#[tonic::async_trait]
impl MetaService for MetaServer {
    async fn execute(
        &self,
        request: Request<pb::Encoded>,
    ) -> Result<Response<pb::Encoded>, Status> {
        let request_id = request_id(&request);
        let command: ObjectCommand =
            lauscha_proto::decode_payload(&request.into_inner().body).map_err(MetaError::from)?;
        let command = MetaCommand::Object {
            command,
            now_ms: now_ms(),
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::Object(reply) => Ok(Response::new(pb::Encoded {
                body: lauscha_proto::encode_payload(&reply).into(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn query(&self, request: Request<pb::Encoded>) -> Result<Response<pb::Encoded>, Status> {
        let q: MetaQuery =
            lauscha_proto::decode_payload(&request.into_inner().body).map_err(MetaError::from)?;
        let reply = self
            .node
            .read(move |kv| {
                Ok(match q {
                    MetaQuery::BucketSettings { bucket } => Ok(MetaQueryReply::BucketSettings(
                        query::bucket_settings(kv, &bucket)?,
                    )),
                    MetaQuery::Version {
                        bucket,
                        key,
                        version_id,
                    } => versions::details(kv, &bucket, &key, version_id.as_deref())?
                        .map(MetaQueryReply::Version),
                    MetaQuery::ListVersions(q) => {
                        Ok(MetaQueryReply::Versions(query::list_versions(kv, &q)?))
                    }
                    MetaQuery::LifecycleBuckets => Ok(MetaQueryReply::LifecycleBuckets(
                        query::lifecycle_buckets(kv)?,
                    )),
                    MetaQuery::VolumeState { name } => Ok(MetaQueryReply::VolumeState(
                        crate::volumes::state(kv, &name)?,
                    )),
                    MetaQuery::ListVolumes { tenant } => Ok(MetaQueryReply::Volumes(
                        crate::volumes::list(kv, tenant.as_ref())?,
                    )),
                })
            })
            .await??;
        Ok(Response::new(pb::Encoded {
            body: lauscha_proto::encode_payload(&reply).into(),
        }))
    }

    async fn get_access_key(
        &self,
        request: Request<pb::GetAccessKeyRequest>,
    ) -> Result<Response<pb::AccessKey>, Status> {
        let id = AccessKeyId(request.into_inner().id);
        let key_id = id.clone();
        let key = self
            .node
            .read(move |kv| query::get_access_key(kv, &key_id))
            .await?
            .ok_or_else(|| MetaError::NoSuchAccessKey(id.to_string()))?;
        Ok(Response::new(key.into()))
    }

    async fn get_key_grants(
        &self,
        request: Request<pb::GetAccessKeyRequest>,
    ) -> Result<Response<pb::KeyGrants>, Status> {
        let id = AccessKeyId(request.into_inner().id);
        let grants = self.node.read(move |kv| query::key_grants(kv, &id)).await?;
        Ok(Response::new(key_grants_reply(grants)))
    }

    async fn grant_key(
        &self,
        request: Request<pb::GrantKeyRequest>,
    ) -> Result<Response<pb::KeyGrants>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let key = AccessKeyId(request.key_id);
        let bucket = bucket_name(&request.bucket).map_err(MetaError::from)?;
        let permission = match request.permission.as_str() {
            "" => None,
            p => Some(Permission::parse(p).ok_or_else(|| {
                MetaError::InvalidArgument(format!("permission {p}: read, write or owner"))
            })?),
        };
        let command = MetaCommand::GrantKey {
            key: key.clone(),
            bucket,
            permission,
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::Granted => {}
            other => return Err(unexpected(other)),
        }
        let grants = self
            .node
            .read(move |kv| query::key_grants(kv, &key))
            .await?;
        Ok(Response::new(key_grants_reply(grants)))
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let request_id = request_id(&request);
        let id = tenant(&request.into_inner().id)?;
        match self
            .node
            .write_request(
                MetaCommand::CreateTenant {
                    id,
                    now_ms: now_ms(),
                },
                request_id,
            )
            .await?
        {
            MetaResponse::Tenant(t) => Ok(Response::new(t.into())),
            other => Err(unexpected(other)),
        }
    }

    async fn create_access_key(
        &self,
        request: Request<pb::CreateAccessKeyRequest>,
    ) -> Result<Response<pb::AccessKey>, Status> {
        let request_id = request_id(&request);
        let key: AccessKey = request
            .into_inner()
            .key
            .ok_or_else(|| MetaError::InvalidArgument("key missing".into()))?
            .try_into()
            .map_err(MetaError::from)?;
        match self
            .node
            .write_request(
                MetaCommand::CreateAccessKey {
                    key,
                    now_ms: now_ms(),
                },
                request_id,
            )
            .await?
        {
            MetaResponse::AccessKey(k) => Ok(Response::new(k.into())),
            other => Err(unexpected(other)),
        }
    }

    async fn create_bucket(
        &self,
        request: Request<pb::CreateBucketRequest>,
    ) -> Result<Response<pb::Bucket>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let name = bucket_name(&request.name).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        let policy: PlacementPolicy = request
            .policy
            .ok_or_else(|| MetaError::InvalidArgument("policy missing".into()))?
            .try_into()
            .map_err(MetaError::from)?;
        match self
            .node
            .write_request(
                MetaCommand::CreateBucketWith {
                    name,
                    tenant,
                    policy,
                    now_ms: now_ms(),
                    object_lock: request.object_lock,
                },
                request_id,
            )
            .await?
        {
            MetaResponse::Bucket(b) => Ok(Response::new(b.into())),
            other => Err(unexpected(other)),
        }
    }

    async fn get_bucket(
        &self,
        request: Request<pb::GetBucketRequest>,
    ) -> Result<Response<pb::Bucket>, Status> {
        let name = bucket_name(&request.into_inner().name).map_err(MetaError::from)?;
        let lookup = name.clone();
        let bucket = self
            .node
            .read(move |kv| query::get_bucket(kv, &lookup))
            .await?
            .ok_or_else(|| MetaError::NoSuchBucket(name.to_string()))?;
        Ok(Response::new(bucket.into()))
    }

    async fn delete_bucket(
        &self,
        request: Request<pb::DeleteBucketRequest>,
    ) -> Result<Response<pb::DeleteBucketReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let name = bucket_name(&request.name).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        match self
            .node
            .write_request(MetaCommand::DeleteBucket { name, tenant }, request_id)
            .await?
        {
            MetaResponse::BucketDeleted => Ok(Response::new(pb::DeleteBucketReply {})),
            other => Err(unexpected(other)),
        }
    }

    async fn list_buckets(
        &self,
        request: Request<pb::ListBucketsRequest>,
    ) -> Result<Response<pb::ListBucketsReply>, Status> {
        let tenant = tenant(&request.into_inner().tenant)?;
        let buckets = self
            .node
            .read(move |kv| query::list_buckets(kv, &tenant))
            .await?;
        Ok(Response::new(pb::ListBucketsReply {
            buckets: buckets.into_iter().map(Into::into).collect(),
        }))
    }

    async fn put_object(
        &self,
        request: Request<pb::PutObjectRequest>,
    ) -> Result<Response<pb::PutObjectReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let bucket = bucket_name(&request.bucket).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        let missing = request
            .missing
            .iter()
            .map(|m| {
                let stripe = lauscha_core::StripeId::from_slice(&m.stripe_id).ok_or_else(|| {
                    MetaError::InvalidArgument("missing.stripe_id: not 16 bytes".into())
                })?;
                let idx = u8::try_from(m.shard_idx).map_err(|_| {
                    MetaError::InvalidArgument("missing.shard_idx out of range".into())
                })?;
                Ok((stripe, idx))
            })
            .collect::<Result<Vec<_>, MetaError>>()?;
        let version = request
            .version
            .ok_or_else(|| MetaError::InvalidArgument("version missing".into()))?
            .try_into()
            .map_err(|e: ProtoError| MetaError::from(e))?;
        let condition = write_condition(request.if_match, request.if_none_match_any)?;
        let command = MetaCommand::PutObjectWith {
            bucket,
            tenant,
            key: request.key,
            version: Box::new(version),
            now_ms: now_ms(),
            missing,
            condition,
            extras: extras(&request.extras)?,
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::ObjectPut {
                version_id,
                last_modified_ms,
            } => Ok(Response::new(pb::PutObjectReply {
                version_id,
                last_modified_ms,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn create_upload(
        &self,
        request: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let bucket = bucket_name(&request.bucket).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        let template = request
            .template
            .ok_or_else(|| MetaError::InvalidArgument("template missing".into()))?
            .try_into()
            .map_err(|e: ProtoError| MetaError::from(e))?;
        let command = MetaCommand::CreateUploadWith {
            bucket,
            tenant,
            key: request.key,
            template: Box::new(template),
            now_ms: now_ms(),
            extras: extras(&request.extras)?,
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::UploadCreated { upload_id } => {
                Ok(Response::new(pb::CreateUploadReply { upload_id }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn put_part(
        &self,
        request: Request<pb::PutPartRequest>,
    ) -> Result<Response<pb::PutPartReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let (bucket, tenant, key, upload_id) = upload_ref(request.upload)?;
        let version = request
            .version
            .ok_or_else(|| MetaError::InvalidArgument("version missing".into()))?
            .try_into()
            .map_err(|e: ProtoError| MetaError::from(e))?;
        let command = MetaCommand::PutPart {
            bucket,
            tenant,
            key,
            upload_id,
            part: Box::new(UploadPart {
                part_number: request.part_number,
                version,
            }),
            now_ms: now_ms(),
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::PartPut { last_modified_ms } => {
                Ok(Response::new(pb::PutPartReply { last_modified_ms }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn complete_upload(
        &self,
        request: Request<pb::CompleteUploadRequest>,
    ) -> Result<Response<pb::PutObjectReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let (bucket, tenant, key, upload_id) = upload_ref(request.upload)?;
        let condition = write_condition(request.if_match, request.if_none_match_any)?;
        let checksums = if request.checksums.is_empty() {
            Default::default()
        } else {
            lauscha_proto::decode_payload(&request.checksums).map_err(MetaError::from)?
        };
        let command = MetaCommand::CompleteUploadWith {
            bucket,
            tenant,
            key,
            upload_id,
            parts: request
                .parts
                .into_iter()
                .map(|p| (p.part_number, p.etag))
                .collect(),
            etag: request.etag,
            now_ms: now_ms(),
            condition,
            checksums,
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::ObjectPut {
                version_id,
                last_modified_ms,
            } => Ok(Response::new(pb::PutObjectReply {
                version_id,
                last_modified_ms,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn abort_upload(
        &self,
        request: Request<pb::UploadRef>,
    ) -> Result<Response<pb::AbortUploadReply>, Status> {
        let request_id = request_id(&request);
        let (bucket, tenant, key, upload_id) = upload_ref(Some(request.into_inner()))?;
        let command = MetaCommand::AbortUpload {
            bucket,
            tenant,
            key,
            upload_id,
            now_ms: now_ms(),
        };
        match self.node.write_request(command, request_id).await? {
            MetaResponse::UploadAborted => Ok(Response::new(pb::AbortUploadReply {})),
            other => Err(unexpected(other)),
        }
    }

    async fn get_upload(
        &self,
        request: Request<pb::UploadRef>,
    ) -> Result<Response<pb::Upload>, Status> {
        let (bucket, tenant, key, upload_id) = upload_ref(Some(request.into_inner()))?;
        let found = self
            .node
            .read(move |kv| {
                if let Err(e) = apply::owned_bucket(kv, &bucket, &tenant)? {
                    return Ok(Err(e));
                }
                Ok(query::get_upload(kv, &bucket, &key, &upload_id)?
                    .ok_or(MetaError::NoSuchUpload(upload_id)))
            })
            .await??;
        Ok(Response::new(found.into()))
    }

    async fn list_parts(
        &self,
        request: Request<pb::ListPartsRequest>,
    ) -> Result<Response<pb::ListPartsReply>, Status> {
        let request = request.into_inner();
        let (bucket, tenant, key, upload_id) = upload_ref(request.upload)?;
        let (after, limit) = (request.after, request.limit.clamp(1, 1000) as usize);
        let (parts, truncated) = self
            .node
            .read(move |kv| {
                if let Err(e) = apply::owned_bucket(kv, &bucket, &tenant)? {
                    return Ok(Err(e));
                }
                if query::get_upload(kv, &bucket, &key, &upload_id)?.is_none() {
                    return Ok(Err(MetaError::NoSuchUpload(upload_id)));
                }
                Ok(Ok(query::list_parts(kv, &upload_id, after, limit)?))
            })
            .await??;
        Ok(Response::new(pb::ListPartsReply {
            parts: parts.into_iter().map(Into::into).collect(),
            truncated,
        }))
    }

    async fn list_uploads(
        &self,
        request: Request<pb::ListUploadsRequest>,
    ) -> Result<Response<pb::ListUploadsReply>, Status> {
        let request = request.into_inner();
        let bucket = bucket_name(&request.bucket).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        let limit = request.limit.clamp(1, 1000) as usize;
        let (uploads, truncated) = self
            .node
            .read(move |kv| {
                if let Err(e) = apply::owned_bucket(kv, &bucket, &tenant)? {
                    return Ok(Err(e));
                }
                let after = request
                    .after_key
                    .as_deref()
                    .map(|k| (k, request.after_upload_id.as_str()));
                Ok(Ok(query::list_uploads(
                    kv,
                    &bucket,
                    &request.prefix,
                    after,
                    limit,
                )?))
            })
            .await??;
        Ok(Response::new(pb::ListUploadsReply {
            uploads: uploads.into_iter().map(Into::into).collect(),
            truncated,
        }))
    }

    async fn list_stale_uploads(
        &self,
        request: Request<pb::ListStaleUploadsRequest>,
    ) -> Result<Response<pb::ListStaleUploadsReply>, Status> {
        let request = request.into_inner();
        let limit = request.limit.clamp(1, 1000) as usize;
        let found = self
            .node
            .read(move |kv| query::stale_uploads(kv, request.started_before_ms, limit))
            .await?;
        Ok(Response::new(pb::ListStaleUploadsReply {
            uploads: found
                .into_iter()
                .map(|(bucket, upload)| pb::StaleUpload {
                    bucket: bucket.to_string(),
                    upload: Some(upload.into()),
                })
                .collect(),
        }))
    }

    async fn get_object(
        &self,
        request: Request<pb::GetObjectRequest>,
    ) -> Result<Response<pb::ObjectVersion>, Status> {
        let request = request.into_inner();
        let bucket = bucket_name(&request.bucket).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        let key = request.key;
        let (b, k) = (bucket.clone(), key.clone());
        let found = self
            .node
            .read(move |kv| {
                if let Err(e) = apply::owned_bucket(kv, &b, &tenant)? {
                    return Ok(Err(e));
                }
                let Some(mut version) = query::get_object(kv, &b, &k)? else {
                    return Ok(Err(MetaError::NoSuchKey {
                        bucket: b.to_string(),
                        key: k,
                    }));
                };
                // Readers see the S3 form of the id (`null` for the null version).
                let history = versions::versioning(kv, &b)?;
                if let Some(seq) = version_seq(&version.version_id) {
                    version.version_id = history.s3_version_id(seq);
                }
                Ok(Ok(version))
            })
            .await??;
        Ok(Response::new(found.into()))
    }

    async fn delete_object(
        &self,
        request: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let bucket = bucket_name(&request.bucket).map_err(MetaError::from)?;
        let tenant = tenant(&request.tenant)?;
        match self
            .node
            .write_request(
                MetaCommand::DeleteObject {
                    bucket,
                    tenant,
                    key: request.key,
                    now_ms: now_ms(),
                },
                request_id,
            )
            .await?
        {
            MetaResponse::ObjectDeleted { existed } => {
                Ok(Response::new(pb::DeleteObjectReply { existed }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_objects(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsReply>, Status> {
        let request = request.into_inner();
        let tenant = tenant(&request.tenant)?;
        let q: ListObjectsQuery = request.try_into().map_err(MetaError::from)?;
        let listing = self
            .node
            .read(move |kv| {
                if let Err(e) = apply::owned_bucket(kv, &q.bucket, &tenant)? {
                    return Ok(Err(e));
                }
                query::list_objects(kv, &q).map(Ok)
            })
            .await??;
        Ok(Response::new(listing.into()))
    }

    async fn register_node(
        &self,
        request: Request<pb::NodeInfo>,
    ) -> Result<Response<pb::ClusterMap>, Status> {
        let request_id = request_id(&request);
        let node: NodeInfo = request.into_inner().try_into().map_err(MetaError::from)?;
        self.node
            .write_request(MetaCommand::UpsertNode { node }, request_id)
            .await?;
        let map = self.node.read(|kv| query::cluster_map(kv)).await?;
        Ok(Response::new(map.into()))
    }

    async fn get_cluster_map(
        &self,
        _request: Request<pb::GetClusterMapRequest>,
    ) -> Result<Response<pb::ClusterMap>, Status> {
        let map = self.node.read(|kv| query::cluster_map(kv)).await?;
        Ok(Response::new(map.into()))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let s = self.node.status();
        let members = s
            .members
            .iter()
            .map(|(id, addr)| pb::Member {
                node_id: *id,
                addr: addr.clone(),
                voter: s.voters.contains(id),
                matched_index: s.matched.iter().find(|(m, _)| m == id).map(|(_, i)| *i),
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            node_id: s.node_id,
            leader_id: s.leader_id,
            term: s.term,
            last_applied_index: s.last_applied_index,
            state: s.state,
            voters: s.voters,
            members,
            last_log_index: s.last_log_index,
            n_log_appends: s.n_log_appends,
            n_log_entries: s.n_log_entries,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
        }))
    }

    async fn list_stripes(
        &self,
        request: Request<pb::ListStripesRequest>,
    ) -> Result<Response<pb::ListStripesReply>, Status> {
        let request = request.into_inner();
        let after = if request.after.is_empty() {
            None
        } else {
            Some(
                StripeId::from_slice(&request.after)
                    .ok_or_else(|| MetaError::InvalidArgument("after: not 16 bytes".into()))?,
            )
        };
        let limit = (request.limit as usize).clamp(1, 10_000);
        let entries = self
            .node
            .read(move |kv| query::list_stripes(kv, after, limit + 1))
            .await?;
        let more = entries.len() > limit;
        Ok(Response::new(pb::ListStripesReply {
            stripes: entries
                .into_iter()
                .take(limit)
                .map(|e| pb::StripeInfo {
                    bucket: String::new(),
                    key: e.owner,
                    stripe: Some(e.stripe.into()),
                    policy: Some(e.policy.into()),
                })
                .collect(),
            more,
        }))
    }

    async fn list_repairs(
        &self,
        request: Request<pb::ListRepairsRequest>,
    ) -> Result<Response<pb::ListRepairsReply>, Status> {
        let limit = (request.into_inner().limit as usize).clamp(1, 10_000);
        let repairs = self
            .node
            .read(move |kv| query::list_repairs(kv, limit))
            .await?;
        Ok(Response::new(pb::ListRepairsReply {
            repairs: repairs
                .into_iter()
                .map(|(stripe, idx)| pb::ShardRef {
                    stripe_id: stripe.to_bytes().to_vec().into(),
                    shard_idx: u32::from(idx),
                })
                .collect(),
        }))
    }

    async fn list_garbage(
        &self,
        request: Request<pb::ListGarbageRequest>,
    ) -> Result<Response<pb::ListGarbageReply>, Status> {
        let request = request.into_inner();
        let limit = (request.limit as usize).clamp(1, 10_000);
        let older_than_ms = request.older_than_ms;
        let records = self
            .node
            .read(move |kv| query::garbage_before(kv, older_than_ms, limit))
            .await?;
        Ok(Response::new(pb::ListGarbageReply {
            entries: records
                .into_iter()
                .map(|(key, record)| pb::GarbageEntry {
                    key: key.into(),
                    origin: record.origin,
                    stripes: record.stripes.into_iter().map(Into::into).collect(),
                })
                .collect(),
        }))
    }

    async fn stripes_known(
        &self,
        request: Request<pb::StripesKnownRequest>,
    ) -> Result<Response<pb::StripesKnownReply>, Status> {
        let ids = stripe_ids(&request.into_inner().stripe_ids)?;
        let known = self
            .node
            .read(move |kv| query::stripes_known(kv, &ids))
            .await?;
        Ok(Response::new(pb::StripesKnownReply { known }))
    }

    async fn stripes_collectable(
        &self,
        request: Request<pb::StripesCollectableRequest>,
    ) -> Result<Response<pb::StripesCollectableReply>, Status> {
        let request = request.into_inner();
        let ids = stripe_ids(&request.stripe_ids)?;
        let garbage_key = request.garbage_key.to_vec();
        let collectable = self
            .node
            .read(move |kv| query::stripes_collectable(kv, &garbage_key, &ids))
            .await?;
        Ok(Response::new(pb::StripesCollectableReply { collectable }))
    }

    async fn move_shard(
        &self,
        request: Request<pb::MoveShardRequest>,
    ) -> Result<Response<pb::MaintenanceReply>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let (stripe_id, shard_idx) = shard_ref(request.shard)?;
        self.node
            .write_request(
                MetaCommand::MoveShard {
                    stripe_id,
                    shard_idx,
                    from: lauscha_core::NodeId(request.from_node),
                    to: lauscha_core::NodeId(request.to_node),
                },
                request_id,
            )
            .await?;
        Ok(Response::new(pb::MaintenanceReply {}))
    }

    async fn clear_repair(
        &self,
        request: Request<pb::ShardRef>,
    ) -> Result<Response<pb::MaintenanceReply>, Status> {
        let request_id = request_id(&request);
        let (stripe_id, shard_idx) = shard_ref(Some(request.into_inner()))?;
        self.node
            .write_request(
                MetaCommand::ClearRepair {
                    stripe_id,
                    shard_idx,
                },
                request_id,
            )
            .await?;
        Ok(Response::new(pb::MaintenanceReply {}))
    }

    async fn drop_garbage(
        &self,
        request: Request<pb::DropGarbageRequest>,
    ) -> Result<Response<pb::MaintenanceReply>, Status> {
        let request_id = request_id(&request);
        let key = request.into_inner().key.to_vec();
        self.node
            .write_request(MetaCommand::DropGarbage { key }, request_id)
            .await?;
        Ok(Response::new(pb::MaintenanceReply {}))
    }

    async fn set_node_state(
        &self,
        request: Request<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::ClusterMap>, Status> {
        let request_id = request_id(&request);
        let request = request.into_inner();
        let state = pb::NodeState::try_from(request.state)
            .map_err(|_| MetaError::InvalidArgument("unknown node state".into()))?
            .into();
        self.node
            .write_request(
                MetaCommand::SetNodeState {
                    node: lauscha_core::NodeId(request.node_id),
                    state,
                },
                request_id,
            )
            .await?;
        let map = self.node.read(|kv| query::cluster_map(kv)).await?;
        Ok(Response::new(map.into()))
    }

    async fn compact_log(
        &self,
        _request: Request<pb::CompactLogRequest>,
    ) -> Result<Response<pb::CompactLogReply>, Status> {
        let snapshot_index = self.node.compact_log().await?;
        Ok(Response::new(pb::CompactLogReply { snapshot_index }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let request = request.into_inner();
        if request.node_id == 0 || request.addr.is_empty() {
            return Err(MetaError::InvalidArgument("node_id and addr are required".into()).into());
        }
        self.node
            .add_learner(request.node_id, &request.addr)
            .await?;
        Ok(Response::new(pb::MembershipReply {}))
    }

    async fn promote(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        self.node.promote(request.into_inner().node_id).await?;
        Ok(Response::new(pb::MembershipReply {}))
    }

    async fn remove_member(
        &self,
        request: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        self.node.remove(request.into_inner().node_id).await?;
        Ok(Response::new(pb::MembershipReply {}))
    }
}
