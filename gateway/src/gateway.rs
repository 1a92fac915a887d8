//! The gateway's shared state.

use lauscha_proto::LocalRoles;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lauscha_core::config::GatewayConfig;
use lauscha_core::{AccessKey, AccessKeyId, ErasureCodec, PlacementPolicy};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::GatewayError;
use crate::meta_client::MetaClient;
use crate::nodes::NodePool;

/// Bytes of stripe buffers (data + parity) all PUTs together may hold.
const STRIPE_MEMORY_BUDGET_BYTES: usize = 1 << 30;
/// Unit of the memory semaphore.
const MEMORY_UNIT_BYTES: usize = 64 * 1024;
/// How long an access key is trusted from cache before metadata is asked again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(10);
/// How long a bucket's owner and settings (CORS, policy) are trusted from cache: a change
/// made through another gateway takes effect here within this time.
const SETTINGS_CACHE_TTL: Duration = Duration::from_secs(5);

/// A bucket's owner and settings, as the request path needs them for CORS and policies.
#[derive(Clone, Debug)]
pub struct BucketView {
    /// The bucket.
    pub bucket: lauscha_core::Bucket,
    /// Its settings.
    pub settings: Arc<lauscha_core::versioning::BucketSettings>,
}

/// State shared by every request.
pub struct Inner {
    /// Validated configuration.
    pub config: GatewayConfig,
    /// The metadata service.
    pub meta: MetaClient,
    /// The storage nodes.
    pub nodes: Arc<NodePool>,
    codecs: Mutex<HashMap<(u8, u8), Arc<ErasureCodec>>>,
    stripe_memory: Arc<Semaphore>,
    keys: Mutex<HashMap<AccessKeyId, (KeyEntry, Instant)>>,
    buckets: Mutex<HashMap<lauscha_core::BucketName, (BucketView, Instant)>>,
    /// Block volume journal and merge counts of this process (for `/metrics`).
    pub volume_stats: VolumeStats,
}

/// Counts of block volume journal batches and merges (`volume::VolumeEngine`).
#[derive(Debug, Default)]
pub struct VolumeStats {
    /// Merges that adopted the journal's own stripes as the extent: nothing written.
    pub merges_adopted: std::sync::atomic::AtomicU64,
    /// Merges that wrote the extent again (or removed it, all zeros).
    pub merges_rewritten: std::sync::atomic::AtomicU64,
    /// Batches of small writes journaled as one stripe set (`AppendBatch`,
    /// `AppendSettledBatch`).
    pub journal_batches: std::sync::atomic::AtomicU64,
    /// Small writes journaled in those batches.
    pub journal_batched_writes: std::sync::atomic::AtomicU64,
    /// Spills: inline journal entries moved into one stripe set (`VolumeCommand::Spill`).
    pub journal_spills: std::sync::atomic::AtomicU64,
    /// Journal entries moved by those spills.
    pub journal_spilled_entries: std::sync::atomic::AtomicU64,
    /// Volume commands whose outcome was not learned (metadata did not answer in time).
    pub unknown_outcomes: std::sync::atomic::AtomicU64,
    /// New lease epochs taken to fence those (`VolumeCommand::NewEpoch`).
    pub new_epochs: std::sync::atomic::AtomicU64,
    /// Journal entries found in metadata that the engine did not know of, taken into its
    /// journal by a resync: writes answered with an error that landed anyway (and now
    /// and then one whose answer was still on its way).
    pub entries_found: std::sync::atomic::AtomicU64,
}

/// An access key and what it may do (`grants: None`: everything in its tenant).
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// The key.
    pub key: AccessKey,
    /// Its grants by bucket, if it is restricted.
    pub grants:
        Option<std::collections::BTreeMap<lauscha_core::BucketName, lauscha_core::Permission>>,
}

impl Inner {
    /// Builds the shared state; connects lazily.
    pub fn new(config: GatewayConfig, local: LocalRoles) -> Result<Inner, GatewayError> {
        config
            .validate()
            .map_err(|e| GatewayError::InvalidArgument(e.to_string()))?;
        let meta = MetaClient::with_local_roles(
            &config.metadata_endpoints,
            config.source_ip,
            local.clone(),
        )?;
        let nodes = Arc::new(NodePool::new(
            meta.clone(),
            Duration::from_millis(config.shard_rpc_timeout_ms),
            config.source_ip,
            config.read_cache_bytes,
            local,
        ));
        Ok(Inner {
            config,
            meta,
            nodes,
            codecs: Mutex::new(HashMap::new()),
            volume_stats: VolumeStats::default(),
            stripe_memory: Arc::new(Semaphore::new(
                STRIPE_MEMORY_BUDGET_BYTES / MEMORY_UNIT_BYTES,
            )),
            keys: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Shards of a stripe that must be durable before a PUT may succeed: k plus the
    /// configured extra, at most k + m.
    pub fn write_quorum(&self, policy: PlacementPolicy) -> usize {
        (usize::from(policy.n_data_shards) + usize::from(self.config.write_quorum_extra))
            .min(policy.n_shards())
    }

    /// The codec for a policy's k and m (built once, shared).
    pub fn codec(&self, policy: PlacementPolicy) -> Result<Arc<ErasureCodec>, GatewayError> {
        let key = (policy.n_data_shards, policy.n_parity_shards);
        let mut codecs = self.codecs.lock().expect("codec lock");
        if let Some(codec) = codecs.get(&key) {
            return Ok(codec.clone());
        }
        let codec = Arc::new(
            ErasureCodec::new(usize::from(key.0), usize::from(key.1))
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
        );
        codecs.insert(key, codec.clone());
        Ok(codec)
    }

    /// Waits until the memory for one stripe of `stripe_len` bytes (plus its parity) is
    /// free. This is the PUT path's back-pressure: when it waits, the body is not read and
    /// TCP slows the client down.
    pub async fn reserve_stripe_memory(
        &self,
        stripe_len: usize,
        policy: PlacementPolicy,
    ) -> Result<OwnedSemaphorePermit, GatewayError> {
        let k = usize::from(policy.n_data_shards);
        let total = stripe_len + stripe_len.div_ceil(k) * usize::from(policy.n_parity_shards);
        let units = total.div_ceil(MEMORY_UNIT_BYTES).max(1) as u32;
        self.stripe_memory
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| GatewayError::Internal("memory semaphore closed".into()))
    }

    /// An access key, from a short-lived cache or from metadata.
    pub async fn access_key(&self, id: &AccessKeyId) -> Result<AccessKey, GatewayError> {
        Ok(self.key_entry(id).await?.key)
    }

    /// An access key with its grants, from a short-lived cache or from metadata. A grant
    /// changed through another gateway takes effect here within `KEY_CACHE_TTL`.
    pub async fn key_entry(&self, id: &AccessKeyId) -> Result<KeyEntry, GatewayError> {
        if let Some((entry, at)) = self.keys.lock().expect("key cache lock").get(id)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(entry.clone());
        }
        let key = self.meta.get_access_key(id).await?;
        let grants = self.meta.get_key_grants(id).await?;
        let entry = KeyEntry { key, grants };
        self.keys
            .lock()
            .expect("key cache lock")
            .insert(id.clone(), (entry.clone(), Instant::now()));
        Ok(entry)
    }

    /// A bucket's owner and settings, from a short-lived cache or from metadata.
    pub async fn bucket_view(
        &self,
        name: &lauscha_core::BucketName,
    ) -> Result<BucketView, GatewayError> {
        if let Some((view, at)) = self.buckets.lock().expect("bucket cache lock").get(name)
            && at.elapsed() < SETTINGS_CACHE_TTL
        {
            return Ok(view.clone());
        }
        let bucket = self.meta.get_bucket(name).await?;
        let settings = Arc::new(self.meta.bucket_settings(name).await?);
        let view = BucketView { bucket, settings };
        let mut cache = self.buckets.lock().expect("bucket cache lock");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(name.clone(), (view.clone(), Instant::now()));
        Ok(view)
    }

    /// Drops a bucket from the cache (its settings changed through this gateway).
    pub fn forget_settings(&self, name: &lauscha_core::BucketName) {
        self.buckets.lock().expect("bucket cache lock").remove(name);
    }

    /// Drops a key from the cache (its grants changed through this gateway).
    pub fn forget_key(&self, id: &AccessKeyId) {
        self.keys.lock().expect("key cache lock").remove(id);
    }
}
