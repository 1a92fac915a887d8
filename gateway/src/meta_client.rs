//! The gateway's client of the metadata service: core types in, core types out.

use std::time::Duration;

use lauscha_core::model::{ListObjectsQuery, ObjectListing};
use lauscha_core::{
    AccessKey, AccessKeyId, Bucket, BucketName, ClusterMap, NodeInfo, ObjectVersion,
    PlacementPolicy, Tenant, TenantId,
};
use lauscha_proto::meta::meta_service_client::MetaServiceClient;
use lauscha_proto::meta::{self as pb};
use tonic::transport::{Channel, Endpoint};

use crate::GatewayError;

/// Largest metadata message (a 5 GiB object's stripe map is well below).
const MAX_META_MESSAGE_BYTES: usize = 64 << 20;

/// A connection to the metadata service.
#[derive(Clone, Debug)]
pub struct MetaClient {
    client: MetaServiceClient<Channel>,
}

fn to_gateway(status: tonic::Status) -> GatewayError {
    GatewayError::from_meta_status(&status)
}

fn invalid_reply(e: lauscha_proto::ProtoError) -> GatewayError {
    GatewayError::Internal(format!("metadata sent an invalid reply: {e}"))
}

impl MetaClient {
    /// A client of the metadata service at `endpoint` (`http://ip:port`). Connects lazily:
    /// a voter that is not up yet is retried on each call.
    pub fn new(endpoint: &str) -> Result<MetaClient, GatewayError> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| {
                GatewayError::InvalidArgument(format!("metadata endpoint {endpoint:?}: {e}"))
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(MetaClient {
            client: MetaServiceClient::new(channel)
                .max_decoding_message_size(MAX_META_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_META_MESSAGE_BYTES),
        })
    }

    fn c(&self) -> MetaServiceClient<Channel> {
        self.client.clone()
    }

    /// An access key by id.
    pub async fn get_access_key(&self, id: &AccessKeyId) -> Result<AccessKey, GatewayError> {
        let reply = self
            .c()
            .get_access_key(pb::GetAccessKeyRequest { id: id.0.clone() })
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, id: &TenantId) -> Result<Tenant, GatewayError> {
        let reply = self
            .c()
            .create_tenant(pb::CreateTenantRequest { id: id.0.clone() })
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// Creates an access key.
    pub async fn create_access_key(&self, key: AccessKey) -> Result<AccessKey, GatewayError> {
        let reply = self
            .c()
            .create_access_key(pb::CreateAccessKeyRequest {
                key: Some(key.into()),
            })
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// Creates a bucket for `tenant`.
    pub async fn create_bucket(
        &self,
        name: &BucketName,
        tenant: &TenantId,
        policy: PlacementPolicy,
    ) -> Result<Bucket, GatewayError> {
        let reply = self
            .c()
            .create_bucket(pb::CreateBucketRequest {
                name: name.to_string(),
                tenant: tenant.0.clone(),
                policy: Some(policy.into()),
            })
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// A bucket by name.
    pub async fn get_bucket(&self, name: &BucketName) -> Result<Bucket, GatewayError> {
        let reply = self
            .c()
            .get_bucket(pb::GetBucketRequest {
                name: name.to_string(),
            })
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// Deletes an empty bucket of `tenant`.
    pub async fn delete_bucket(
        &self,
        name: &BucketName,
        tenant: &TenantId,
    ) -> Result<(), GatewayError> {
        self.c()
            .delete_bucket(pb::DeleteBucketRequest {
                name: name.to_string(),
                tenant: tenant.0.clone(),
            })
            .await
            .map_err(to_gateway)?;
        Ok(())
    }

    /// The buckets of `tenant`.
    pub async fn list_buckets(&self, tenant: &TenantId) -> Result<Vec<Bucket>, GatewayError> {
        let reply = self
            .c()
            .list_buckets(pb::ListBucketsRequest {
                tenant: tenant.0.clone(),
            })
            .await
            .map_err(to_gateway)?;
        reply
            .into_inner()
            .buckets
            .into_iter()
            .map(|b| b.try_into().map_err(invalid_reply))
            .collect()
    }

    /// Commits a version whose shards are durable; returns (version id, mtime ms).
    pub async fn put_object(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        key: &str,
        version: ObjectVersion,
    ) -> Result<(String, u64), GatewayError> {
        let reply = self
            .c()
            .put_object(pb::PutObjectRequest {
                bucket: bucket.to_string(),
                key: key.to_string(),
                tenant: tenant.0.clone(),
                version: Some(version.into()),
            })
            .await
            .map_err(to_gateway)?
            .into_inner();
        Ok((reply.version_id, reply.last_modified_ms))
    }

    /// The current version of an object.
    pub async fn get_object(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        key: &str,
    ) -> Result<ObjectVersion, GatewayError> {
        let reply = self
            .c()
            .get_object(pb::GetObjectRequest {
                bucket: bucket.to_string(),
                key: key.to_string(),
                tenant: tenant.0.clone(),
            })
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// Deletes an object; returns whether it existed.
    pub async fn delete_object(
        &self,
        bucket: &BucketName,
        tenant: &TenantId,
        key: &str,
    ) -> Result<bool, GatewayError> {
        let reply = self
            .c()
            .delete_object(pb::DeleteObjectRequest {
                bucket: bucket.to_string(),
                key: key.to_string(),
                tenant: tenant.0.clone(),
            })
            .await
            .map_err(to_gateway)?;
        Ok(reply.into_inner().existed)
    }

    /// One page of a listing.
    pub async fn list_objects(
        &self,
        tenant: &TenantId,
        query: ListObjectsQuery,
    ) -> Result<ObjectListing, GatewayError> {
        let mut request = pb::ListObjectsRequest::from(query);
        request.tenant = tenant.0.clone();
        let reply = self.c().list_objects(request).await.map_err(to_gateway)?;
        Ok(reply.into_inner().into())
    }

    /// Adds or updates a storage node; returns the new map.
    pub async fn register_node(&self, node: NodeInfo) -> Result<ClusterMap, GatewayError> {
        let reply = self
            .c()
            .register_node(pb::NodeInfo::from(node))
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// The cluster map.
    pub async fn cluster_map(&self) -> Result<ClusterMap, GatewayError> {
        let reply = self
            .c()
            .get_cluster_map(pb::GetClusterMapRequest {})
            .await
            .map_err(to_gateway)?;
        reply.into_inner().try_into().map_err(invalid_reply)
    }

    /// Raft status of the voter this client talks to.
    pub async fn status(&self) -> Result<crate::admin::MetadataStatus, GatewayError> {
        let s = self
            .c()
            .status(pb::StatusRequest {})
            .await
            .map_err(to_gateway)?
            .into_inner();
        Ok(crate::admin::MetadataStatus {
            node_id: s.node_id,
            leader_id: s.leader_id,
            term: s.term,
            last_applied_index: s.last_applied_index,
            state: s.state,
            voters: s.voters,
        })
    }
}
