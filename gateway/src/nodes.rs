//! The gateway's view of the storage nodes: the cluster map (cached), one gRPC channel per
//! node, which nodes failed recently, and verified shard I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lauscha_core::checksum::{
    BlockHash, SHARD_BLOCK_BYTES, block_len_bytes, covering_blocks, n_blocks, verify_block,
};
use lauscha_core::slice_proof;
use lauscha_core::{ClusterMap, NodeId, ShardDigest, ShardId};
use lauscha_proto::storage::shard_service_client::ShardServiceClient;
use lauscha_proto::storage::shard_service_server;
use lauscha_proto::storage::{self as pb, get_shard_reply, put_shard_request};
use lauscha_proto::{LocalRoles, RoleChannel};
use tracing::{debug, info, warn};

use crate::GatewayError;
use crate::block_cache::{BlockCache, BlockCacheStats, MissPlan};
use crate::meta_client::MetaClient;

/// How old a cached cluster map may be before the next request refreshes it (in the
/// background: that request and those after it go on with the map they have).
const MAP_MAX_AGE: Duration = Duration::from_secs(2);
/// A cached map this old is likely to miss changes (nodes added, drained): the request
/// that starts its refresh waits up to [`MAP_STALE_WAIT`] for it.
const MAP_STALE_WAIT_AFTER: Duration = Duration::from_secs(30);
/// See [`MAP_STALE_WAIT_AFTER`]; metadata that does not answer costs one request this
/// much, once per refresh attempt.
const MAP_STALE_WAIT: Duration = Duration::from_secs(1);
/// How long a node that failed a call is treated as suspect.
const SUSPECT_FOR: Duration = Duration::from_secs(3);
/// Bytes per PutShard message.
const PUT_CHUNK_BYTES: usize = 256 * 1024;

/// Why one shard operation failed. Not an S3 error: the data path decides what it means
/// (reconstruct, retry elsewhere, fail the request).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardIoError {
    /// The node could not be reached or timed out.
    #[error("node {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The node does not have the shard.
    #[error("shard {0} missing on node {1}")]
    NotFound(ShardId, NodeId),
    /// The shard's bytes failed verification (on the node or here).
    #[error("shard {0} on node {1} is corrupt: {2}")]
    Corrupt(ShardId, NodeId, String),
    /// The node is not in the cluster map.
    #[error("node {0} is not in the cluster map")]
    UnknownNode(NodeId),
    /// The node has a shard with this id already.
    #[error("shard {0} exists on node {1}")]
    AlreadyExists(ShardId, NodeId),
    /// The node's disk is full.
    #[error("node {0} is out of space: {1}")]
    Full(NodeId, String),
    /// Anything else the node answered.
    #[error("node {0}: {1}")]
    Failed(NodeId, String),
}

impl ShardIoError {
    fn from_status(status: tonic::Status, id: ShardId, node: NodeId) -> ShardIoError {
        match status.code() {
            tonic::Code::NotFound => ShardIoError::NotFound(id, node),
            tonic::Code::DataLoss => ShardIoError::Corrupt(id, node, status.message().into()),
            tonic::Code::ResourceExhausted => ShardIoError::Full(node, status.message().into()),
            tonic::Code::AlreadyExists => ShardIoError::AlreadyExists(id, node),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                ShardIoError::Unreachable(node, status.message().into())
            }
            _ => ShardIoError::Failed(node, format!("{}: {}", status.code(), status.message())),
        }
    }

    /// Whether the error says the node itself is in trouble (as opposed to one shard).
    pub fn is_node_failure(&self) -> bool {
        matches!(self, ShardIoError::Unreachable(..))
    }
}

/// The block hashes a node sent, checked against the shard's length and digest in the
/// stripe map.
fn checked_block_table(
    shard: &ShardRef<'_>,
    sent_len_bytes: u64,
    sent_hashes: &[u8],
) -> Result<Vec<BlockHash>, ShardIoError> {
    let corrupt = |what: &str| ShardIoError::Corrupt(shard.id, shard.node, what.to_string());
    if sent_len_bytes != shard.shard_len_bytes {
        return Err(corrupt("length differs from the stripe map"));
    }
    if sent_hashes.len() as u64 != 32 * n_blocks(shard.shard_len_bytes) {
        return Err(corrupt("block table has the wrong size"));
    }
    let hashes: Vec<BlockHash> = sent_hashes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    lauscha_core::checksum::verify_block_hashes(shard.shard_len_bytes, &hashes, shard.digest)
        .map_err(|_| corrupt("block table does not match the digest in metadata"))?;
    Ok(hashes)
}

/// Whether a read of shard bytes `[offset, offset + len_bytes)` may go as a verified
/// slice: it lies inside one block and is at most half of it.
fn slice_read_possible(shard: &ShardRef<'_>, offset: u64, len_bytes: u64) -> bool {
    let end = offset + len_bytes;
    len_bytes > 0
        && end <= shard.shard_len_bytes
        && offset / SHARD_BLOCK_BYTES == (end - 1) / SHARD_BLOCK_BYTES
        && len_bytes <= SHARD_BLOCK_BYTES / 2
}

/// One shard as the stripe map describes it: where it is and what it must hash to.
#[derive(Clone, Copy, Debug)]
pub struct ShardRef<'a> {
    /// The node holding it.
    pub node: NodeId,
    /// Its id.
    pub id: ShardId,
    /// Its digest from metadata.
    pub digest: &'a ShardDigest,
    /// Its length (from the stripe length and k).
    pub shard_len_bytes: u64,
}

/// What a node reports about itself.
#[derive(Clone, Debug)]
pub struct NodeUsage {
    /// Shards held.
    pub n_shards: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Free bytes on its filesystem.
    pub free_bytes: u64,
    /// Shards its scrubber verified since start.
    pub n_scrubbed: u64,
    /// Full scrub passes since start.
    pub n_scrub_passes: u64,
    /// Corrupt (or, by the scrubber, unreadable) shards moved out of service since start.
    pub n_corrupt_found: u64,
    /// Scrubber checks that failed with an error (a shard it could not read) since start.
    pub n_scrub_errors: u64,
    /// The most recent of those.
    pub recent_corrupt: Vec<ShardId>,
}

/// A shard a node holds.
#[derive(Clone, Copy, Debug)]
pub struct HeldShard {
    /// Its id.
    pub id: ShardId,
    /// When it was written, Unix seconds.
    pub modified_unix_s: u64,
}

struct CachedMap {
    map: Arc<ClusterMap>,
    fetched_at: Instant,
}

/// The cluster map as last fetched from metadata. Once one was fetched, no request waits
/// long for metadata to learn it again: a stale map is refreshed in the background and
/// used meanwhile. Nodes' addresses rarely change, and a request that meets a changed node
/// fails over as it would for a dead one; so reads of attached volumes go on while
/// metadata elects a leader or is unreachable (for as long as their lease allows:
/// `VolumeEngine::read`). The request that starts the refresh of a map older than
/// [`MAP_STALE_WAIT_AFTER`] (an idle gateway's) gives it [`MAP_STALE_WAIT`] first.
struct MapCache {
    meta: MetaClient,
    map: RwLock<Option<CachedMap>>,
    /// Serialises the fetch of a gateway that has no map yet, so a burst fetches it once.
    first_fetch: tokio::sync::Mutex<()>,
    /// A background refresh is running.
    refreshing: AtomicBool,
}

impl MapCache {
    /// The cached map and how long ago it was fetched.
    fn cached(&self) -> Option<(Arc<ClusterMap>, Duration)> {
        let guard = self.map.read().expect("map lock");
        guard
            .as_ref()
            .map(|c| (c.map.clone(), c.fetched_at.elapsed()))
    }

    /// Fetches the map and caches it, unless a fetch that ended meanwhile brought a newer
    /// one (a background refresh and an operator's fresh fetch may overlap): the map
    /// never goes back to an older epoch.
    async fn fetch(&self) -> Result<Arc<ClusterMap>, GatewayError> {
        let fetched = Arc::new(self.meta.cluster_map().await?);
        let mut cached = self.map.write().expect("map lock");
        if let Some(c) = cached.as_ref()
            && c.map.epoch > fetched.epoch
        {
            return Ok(c.map.clone());
        }
        *cached = Some(CachedMap {
            map: fetched.clone(),
            fetched_at: Instant::now(),
        });
        Ok(fetched)
    }
}

/// Clears [`MapCache::refreshing`] however the refresh task ends.
struct RefreshDone(Arc<MapCache>);

impl Drop for RefreshDone {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::SeqCst);
    }
}

/// Shared by all requests of a gateway.
pub struct NodePool {
    maps: Arc<MapCache>,
    channels: Mutex<HashMap<NodeId, (String, ShardServiceClient<RoleChannel>)>>,
    suspects: Mutex<HashMap<NodeId, Instant>>,
    full: Mutex<HashMap<NodeId, Instant>>,
    rpc_timeout: Duration,
    /// Source address of connections to the nodes (`gateway.source_ip`).
    source_ip: Option<IpAddr>,
    /// Verified blocks of small reads (`gateway.read_cache_bytes`; `None`: off).
    block_cache: Option<BlockCache>,
    /// Shard reads answered as verified slices (`lauscha_read_slices_total`).
    slice_reads: std::sync::atomic::AtomicU64,
    /// Storage nodes in this process, called without the network.
    local: LocalRoles,
}

/// How long a node that reported a full disk gets no new shards, unless it reports room
/// again sooner.
const FULL_FOR: Duration = Duration::from_secs(30);
/// Free space at which a node marked full takes shards again: room for many stripes' shards
/// (an extent's shard is 1 MiB, a journal copy at most 4 MiB).
const ROOM_AGAIN_BYTES: u64 = 64 << 20;

impl NodePool {
    /// A pool that learns the cluster map from `meta` and connects to nodes from
    /// `source_ip` (default: the kernel's choice), keeping up to `read_cache_bytes` of
    /// verified blocks for small reads.
    pub fn new(
        meta: MetaClient,
        rpc_timeout: Duration,
        source_ip: Option<IpAddr>,
        read_cache_bytes: u64,
        local: LocalRoles,
    ) -> NodePool {
        NodePool {
            maps: Arc::new(MapCache {
                meta,
                map: RwLock::new(None),
                first_fetch: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
            }),
            channels: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            full: Mutex::new(HashMap::new()),
            rpc_timeout,
            source_ip,
            block_cache: BlockCache::new(read_cache_bytes),
            slice_reads: std::sync::atomic::AtomicU64::new(0),
            local,
        }
    }

    /// How often the read cache answered (`None`: it is off).
    pub fn read_cache_stats(&self) -> Option<BlockCacheStats> {
        self.block_cache.as_ref().map(BlockCache::stats)
    }

    /// Shard reads answered as verified slices since start.
    pub fn slice_reads(&self) -> u64 {
        self.slice_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cluster map as metadata has it now (and cached), for answers to an operator
    /// that must show what they just changed; fails if metadata does not answer.
    pub async fn current_cluster_map(&self) -> Result<Arc<ClusterMap>, GatewayError> {
        self.maps.fetch().await
    }

    /// The cluster map: the cached one, refreshed in the background once it is older
    /// than [`MAP_MAX_AGE`] (see [`MapCache`]). Only a gateway that never fetched one
    /// waits for metadata, and fails if metadata does not answer.
    pub async fn cluster_map(&self) -> Result<Arc<ClusterMap>, GatewayError> {
        match self.maps.cached() {
            Some((map, age)) if age < MAP_MAX_AGE => Ok(map),
            Some((stale, age)) => {
                if !self.maps.refreshing.swap(true, Ordering::SeqCst) {
                    let done = RefreshDone(self.maps.clone());
                    let refresh = tokio::spawn(async move {
                        let fetched = done.0.fetch().await;
                        if let Err(e) = &fetched {
                            warn!(error = %e, "cluster map not refreshed; going on with the cached one");
                        }
                        drop(done);
                        fetched.ok()
                    });
                    if age >= MAP_STALE_WAIT_AFTER
                        && let Ok(Ok(Some(map))) =
                            tokio::time::timeout(MAP_STALE_WAIT, refresh).await
                    {
                        return Ok(map);
                    }
                }
                Ok(stale)
            }
            None => {
                let _guard = self.maps.first_fetch.lock().await;
                match self.maps.cached() {
                    Some((map, _)) => Ok(map),
                    None => self.maps.fetch().await,
                }
            }
        }
    }

    fn client(
        &self,
        node: NodeId,
        map: &ClusterMap,
    ) -> Result<ShardServiceClient<RoleChannel>, ShardIoError> {
        let addr = &map.node(node).ok_or(ShardIoError::UnknownNode(node))?.addr;
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some((known_addr, client)) = channels.get(&node)
            && known_addr == addr
        {
            return Ok(client.clone());
        }
        let channel = match self.local.channel(shard_service_server::SERVICE_NAME, addr) {
            Some(channel) => channel,
            None => lauscha_proto::role_endpoint(format!("http://{addr}"), self.source_ip)
                .map_err(|e| ShardIoError::Failed(node, format!("bad address {addr:?}: {e}")))?
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(16 << 20))
                .connect_lazy()
                .into(),
        };
        let client = ShardServiceClient::new(channel)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20);
        channels.insert(node, (addr.clone(), client.clone()));
        Ok(client)
    }

    /// Records that `node` failed a call.
    fn mark_suspect(&self, node: NodeId) {
        self.suspects
            .lock()
            .expect("suspects lock")
            .insert(node, Instant::now());
    }

    /// Records that a read from `node` was still running when a rebuild from parity had
    /// already answered: reads route around it for a few seconds instead of waiting for
    /// the hedge delay each time (a paused or overloaded node would otherwise add that
    /// delay to most GETs). Its next answer to any call clears the mark.
    pub fn mark_slow(&self, node: NodeId) {
        self.mark_suspect(node);
    }

    fn note<T>(&self, node: NodeId, result: &Result<T, ShardIoError>) {
        match result {
            Err(e) if e.is_node_failure() => self.mark_suspect(node),
            Err(ShardIoError::Full(..)) => {
                self.full
                    .lock()
                    .expect("full lock")
                    .insert(node, Instant::now());
            }
            Err(_) => {}
            // An answer proves the node is back: stop routing around it at once.
            Ok(_) => {
                self.suspects.lock().expect("suspects lock").remove(&node);
            }
        }
    }

    /// Nodes that reported a full disk recently.
    pub fn full_nodes(&self) -> std::collections::BTreeSet<NodeId> {
        let mut full = self.full.lock().expect("full lock");
        full.retain(|_, at| at.elapsed() < FULL_FOR);
        full.keys().copied().collect()
    }

    /// Whether `node` failed a call in the last few seconds.
    pub fn is_suspect(&self, node: NodeId) -> bool {
        let mut suspects = self.suspects.lock().expect("suspects lock");
        match suspects.get(&node) {
            Some(at) if at.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(&node);
                false
            }
            None => false,
        }
    }

    /// Streams a shard to `node`; returns once the node has it durably. `block_hashes`, the
    /// ones `digest` was computed from over `data`, spare a node in this process hashing
    /// the shard again; a node elsewhere always hashes what it receives.
    pub async fn put_shard(
        &self,
        map: &ClusterMap,
        node: NodeId,
        id: ShardId,
        data: Bytes,
        digest: ShardDigest,
        block_hashes: Option<Arc<[BlockHash]>>,
    ) -> Result<(), ShardIoError> {
        let header = pb::PutShardHeader {
            id: Some(id.into()),
            len_bytes: data.len() as u64,
            digest: digest.0.to_vec().into(),
        };
        let addr = &map.node(node).ok_or(ShardIoError::UnknownNode(node))?.addr;
        // A node of this process takes the buffer as it is (`LocalShardWrites`).
        let put = match self
            .local
            .put_shard(addr, header.clone(), data.clone(), block_hashes)
        {
            Some(local) => local.boxed(),
            None => {
                let mut client = self.client(node, map)?;
                let header = pb::PutShardRequest {
                    part: Some(put_shard_request::Part::Header(header)),
                };
                let n_chunks = data.len().div_ceil(PUT_CHUNK_BYTES);
                let chunks = (0..n_chunks).map(move |i| pb::PutShardRequest {
                    part: Some(put_shard_request::Part::Data(data.slice(
                        i * PUT_CHUNK_BYTES..((i + 1) * PUT_CHUNK_BYTES).min(data.len()),
                    ))),
                });
                let stream = futures::stream::iter(std::iter::once(header).chain(chunks));
                async move { client.put_shard(stream).await.map(|_| ()) }.boxed()
            }
        };
        let result = match tokio::time::timeout(self.rpc_timeout, put).await {
            Err(_) => Err(ShardIoError::Unreachable(node, "put timed out".into())),
            Ok(Err(status)) => Err(ShardIoError::from_status(status, id, node)),
            Ok(Ok(())) => Ok(()),
        };
        self.note(node, &result);
        result
    }

    /// Reads `[offset, offset + len_bytes)` of a shard, verifying the block hashes against
    /// its digest and every block against its hash. `len_bytes == 0` reads the whole shard.
    pub async fn read_shard(
        &self,
        map: &ClusterMap,
        shard: ShardRef<'_>,
        offset: u64,
        len_bytes: u64,
    ) -> Result<Bytes, ShardIoError> {
        let chunks = self
            .read_shard_chunks(map, shard, offset, len_bytes)
            .await?;
        Ok(crate::read::concat_bytes(chunks))
    }

    /// As [`NodePool::read_shard`], the bytes as the blocks they arrived in (a read of
    /// several blocks is not copied into one buffer).
    pub async fn read_shard_chunks(
        &self,
        map: &ClusterMap,
        shard: ShardRef<'_>,
        offset: u64,
        len_bytes: u64,
    ) -> Result<Vec<Bytes>, ShardIoError> {
        let node = shard.node;
        let whole = len_bytes == 0;
        let (start, len) = if whole {
            (0, shard.shard_len_bytes)
        } else {
            (offset, len_bytes)
        };
        let cache = self
            .block_cache
            .as_ref()
            .filter(|_| BlockCache::takes(&covering_blocks(start, len)));
        if let Some(bytes) = cache.and_then(|c| c.get(shard.digest, start, len)) {
            return Ok(vec![bytes]);
        }
        // Without a cache nothing would keep the rest of a block: a slice always pays.
        let plan = match cache {
            _ if whole || !slice_read_possible(&shard, start, len) => None,
            Some(cache) => Some(cache.miss_plan()),
            None => Some(MissPlan::Slice),
        };
        let read = async {
            if plan == Some(MissPlan::Slice)
                && let Some(bytes) = self.read_slice_inner(map, shard, start, len).await?
            {
                return Ok(vec![bytes]);
            }
            let keep = cache.map(|c| (c, plan == Some(MissPlan::Block)));
            self.read_shard_inner(map, shard, start, len, whole, keep)
                .await
        };
        let result = tokio::time::timeout(self.rpc_timeout, read)
            .await
            .unwrap_or_else(|_| Err(ShardIoError::Unreachable(node, "read timed out".into())));
        self.note(node, &result);
        result
    }

    /// Reads `[offset, offset + len_bytes)`, inside one block, as a verified slice (see
    /// `lauscha_core::slice_proof`); it is not cached. `None`: the node does not serve
    /// slices (an older version during an upgrade); the caller reads the block instead.
    async fn read_slice_inner(
        &self,
        map: &ClusterMap,
        shard: ShardRef<'_>,
        offset: u64,
        len_bytes: u64,
    ) -> Result<Option<Bytes>, ShardIoError> {
        let ShardRef {
            node,
            id,
            shard_len_bytes,
            ..
        } = shard;
        let corrupt = |what: &str| ShardIoError::Corrupt(id, node, what.to_string());
        let mut client = self.client(node, map)?;
        let request = pb::ReadShardSliceRequest {
            id: Some(id.into()),
            offset,
            len_bytes,
        };
        let reply = match client.read_shard_slice(request).await {
            Ok(reply) => reply.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(s) => return Err(ShardIoError::from_status(s, id, node)),
        };
        let hashes = checked_block_table(&shard, reply.shard_len_bytes, &reply.block_hashes)?;
        let block_idx = offset / SHARD_BLOCK_BYTES;
        let block_start = block_idx * SHARD_BLOCK_BYTES;
        let block_len = block_len_bytes(shard_len_bytes, block_idx);
        let within = slice_proof::widened(block_len, offset - block_start, len_bytes);
        if reply.proof.len() % 32 != 0 {
            return Err(corrupt("slice proof is not whole chaining values"));
        }
        let proof: Vec<slice_proof::ChainingValue> = reply
            .proof
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        if !slice_proof::verify(
            block_len,
            within.clone(),
            &reply.data,
            &proof,
            &hashes[block_idx as usize],
        ) {
            return Err(corrupt(&format!(
                "slice of block {block_idx} failed its hash"
            )));
        }
        self.slice_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = (offset - block_start - within.start) as usize;
        Ok(Some(reply.data.slice(start..start + len_bytes as usize)))
    }

    /// Reads the blocks covering `[offset, offset + len_bytes)` (the whole shard when
    /// `whole`), keeping them in `keep`'s cache; its flag says whether the slices not
    /// asked for count as prefetched (a [`MissPlan::Block`] read).
    async fn read_shard_inner(
        &self,
        map: &ClusterMap,
        shard: ShardRef<'_>,
        offset: u64,
        len_bytes: u64,
        whole: bool,
        keep: Option<(&BlockCache, bool)>,
    ) -> Result<Vec<Bytes>, ShardIoError> {
        let ShardRef {
            node, id, digest, ..
        } = shard;
        if len_bytes == 0 {
            return Ok(Vec::new());
        }
        let corrupt = |what: &str| ShardIoError::Corrupt(id, node, what.to_string());
        let mut client = self.client(node, map)?;
        let request = pb::GetShardRequest {
            id: Some(id.into()),
            // (0, 0) asks the node for the whole shard.
            offset,
            len_bytes: if whole { 0 } else { len_bytes },
        };
        let mut stream = client
            .get_shard(request)
            .await
            .map_err(|s| ShardIoError::from_status(s, id, node))?
            .into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::GetShardReply {
                part: Some(get_shard_reply::Part::Header(h)),
            })) => h,
            Some(Err(s)) => return Err(ShardIoError::from_status(s, id, node)),
            _ => return Err(ShardIoError::Failed(node, "GetShard sent no header".into())),
        };
        let hashes = checked_block_table(&shard, header.shard_len_bytes, &header.block_hashes)?;
        let blocks = covering_blocks(offset, len_bytes);
        if header.first_block_idx != blocks.start {
            return Err(ShardIoError::Failed(
                node,
                "GetShard started at the wrong block".into(),
            ));
        }
        let span_start = blocks.start * SHARD_BLOCK_BYTES;
        let mut received = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut block_idx = blocks.start;
        while let Some(message) = stream.next().await {
            let message = message.map_err(|s| ShardIoError::from_status(s, id, node))?;
            let Some(get_shard_reply::Part::Block(block)) = message.part else {
                return Err(ShardIoError::Failed(
                    node,
                    "GetShard sent a second header".into(),
                ));
            };
            if block_idx >= blocks.end {
                return Err(ShardIoError::Failed(
                    node,
                    "GetShard sent too many blocks".into(),
                ));
            }
            if !verify_block(&block, &hashes[block_idx as usize]) {
                return Err(corrupt(&format!("block {block_idx} failed its hash")));
            }
            if let Some((cache, prefetching)) = keep {
                let asked = prefetching.then(|| offset..offset + len_bytes);
                cache.insert(digest, block_idx, &block, asked);
            }
            received.push(block);
            block_idx += 1;
        }
        if block_idx != blocks.end {
            return Err(ShardIoError::Unreachable(
                node,
                "GetShard stream ended early".into(),
            ));
        }
        let start = (offset - span_start) as usize;
        crate::read::slice_chunks(received, start, len_bytes as usize).ok_or_else(|| {
            ShardIoError::Failed(node, "GetShard sent fewer bytes than asked for".into())
        })
    }

    /// Deletes a shard, logging (not returning) a failure: used to clean up after a write
    /// that will not be committed; what is missed is left to garbage collection.
    pub async fn delete_shard_best_effort(&self, map: &ClusterMap, node: NodeId, id: ShardId) {
        let result = match self.client(node, map) {
            Ok(mut client) => client
                .delete_shard(pb::DeleteShardRequest {
                    id: Some(id.into()),
                })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => debug!(shard_id = %id, node_id = %node, "uncommitted shard deleted"),
            Err(error) => {
                warn!(shard_id = %id, node_id = %node, %error, "could not delete uncommitted shard")
            }
        }
    }

    /// Usage of a node, as it reports it.
    pub async fn node_status(
        &self,
        map: &ClusterMap,
        node: NodeId,
    ) -> Result<NodeUsage, ShardIoError> {
        let mut client = self.client(node, map)?;
        let result = match tokio::time::timeout(
            Duration::from_secs(2),
            client.node_status(pb::NodeStatusRequest {}),
        )
        .await
        {
            Err(_) => Err(ShardIoError::Unreachable(node, "status timed out".into())),
            Ok(Err(s)) => Err(ShardIoError::Unreachable(node, s.message().to_string())),
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                // Space freed (by an operator, or garbage collection) ends the mark now,
                // not when it times out: until then repair cannot put the node's missing
                // shards back, so the cluster stays degraded for no reason.
                if reply.free_bytes >= ROOM_AGAIN_BYTES
                    && self.full.lock().expect("full lock").remove(&node).is_some()
                {
                    info!(node_id = %node, free_bytes = reply.free_bytes, "node has room again");
                }
                Ok(NodeUsage {
                    n_shards: reply.n_shards,
                    used_bytes: reply.used_bytes,
                    free_bytes: reply.free_bytes,
                    n_scrubbed: reply.n_scrubbed,
                    n_scrub_passes: reply.n_scrub_passes,
                    n_corrupt_found: reply.n_corrupt_found,
                    n_scrub_errors: reply.n_scrub_errors,
                    recent_corrupt: reply
                        .recent_corrupt
                        .into_iter()
                        .filter_map(|id| ShardId::try_from(id).ok())
                        .collect(),
                })
            }
        };
        self.note(node, &result);
        result
    }

    /// Every shard `node` holds, in id order.
    pub async fn list_all_shards(
        &self,
        map: &ClusterMap,
        node: NodeId,
    ) -> Result<Vec<HeldShard>, ShardIoError> {
        let mut client = self.client(node, map)?;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let request = pb::ListShardsRequest {
                after: after.map(Into::into),
                limit: 10_000,
            };
            let reply = tokio::time::timeout(self.rpc_timeout, client.list_shards(request))
                .await
                .map_err(|_| ShardIoError::Unreachable(node, "list timed out".into()))?
                .map_err(|s| ShardIoError::Unreachable(node, s.message().to_string()))?
                .into_inner();
            for entry in &reply.entries {
                let id = ShardId::try_from(entry.id.clone().unwrap_or_default())
                    .map_err(|e| ShardIoError::Failed(node, format!("bad shard id: {e}")))?;
                out.push(HeldShard {
                    id,
                    modified_unix_s: entry.modified_unix_s,
                });
                after = Some(id);
            }
            if !reply.more || reply.entries.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Asks `node` to verify a shard in full; a corrupt one is quarantined there. Returns
    /// whether the shard was good.
    pub async fn verify_shard(
        &self,
        map: &ClusterMap,
        node: NodeId,
        id: ShardId,
    ) -> Result<bool, ShardIoError> {
        let mut client = self.client(node, map)?;
        let reply = client
            .verify_shard(pb::VerifyShardRequest {
                id: Some(id.into()),
            })
            .await
            .map_err(|s| ShardIoError::from_status(s, id, node))?
            .into_inner();
        match pb::VerifyOutcome::try_from(reply.outcome) {
            Ok(pb::VerifyOutcome::Ok) => Ok(true),
            Ok(pb::VerifyOutcome::CorruptQuarantined) => Ok(false),
            Ok(pb::VerifyOutcome::NotFound) => Err(ShardIoError::NotFound(id, node)),
            Err(_) => Err(ShardIoError::Failed(node, "unknown verify outcome".into())),
        }
    }

    /// Deletes a shard; `Ok(false)` when it was not there.
    pub async fn delete_shard(
        &self,
        map: &ClusterMap,
        node: NodeId,
        id: ShardId,
    ) -> Result<bool, ShardIoError> {
        let mut client = self.client(node, map)?;
        let result = match tokio::time::timeout(
            self.rpc_timeout,
            client.delete_shard(pb::DeleteShardRequest {
                id: Some(id.into()),
            }),
        )
        .await
        {
            Err(_) => Err(ShardIoError::Unreachable(node, "delete timed out".into())),
            Ok(Err(s)) => Err(ShardIoError::from_status(s, id, node)),
            Ok(Ok(reply)) => Ok(reply.into_inner().existed),
        };
        self.note(node, &result);
        result
    }
}
