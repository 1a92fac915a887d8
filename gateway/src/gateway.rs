//! The gateway's shared state.

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
    keys: Mutex<HashMap<AccessKeyId, (AccessKey, Instant)>>,
}

impl Inner {
    /// Builds the shared state; connects lazily.
    pub fn new(config: GatewayConfig) -> Result<Inner, GatewayError> {
        config
            .validate()
            .map_err(|e| GatewayError::InvalidArgument(e.to_string()))?;
        let meta = MetaClient::new(&config.metadata_endpoints)?;
        let nodes = Arc::new(NodePool::new(
            meta.clone(),
            Duration::from_millis(config.shard_rpc_timeout_ms),
        ));
        Ok(Inner {
            config,
            meta,
            nodes,
            codecs: Mutex::new(HashMap::new()),
            stripe_memory: Arc::new(Semaphore::new(
                STRIPE_MEMORY_BUDGET_BYTES / MEMORY_UNIT_BYTES,
            )),
            keys: Mutex::new(HashMap::new()),
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
        if let Some((key, at)) = self.keys.lock().expect("key cache lock").get(id)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(key.clone());
        }
        let key = self.meta.get_access_key(id).await?;
        self.keys
            .lock()
            .expect("key cache lock")
            .insert(id.clone(), (key.clone(), Instant::now()));
        Ok(key)
    }
}
