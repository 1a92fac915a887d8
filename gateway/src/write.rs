//! The PUT data path: a body stream cut into stripes, each encoded k+m, hashed, and
//! written to k+m nodes in parallel. Nothing is committed here; the caller commits the
//! returned stripes through metadata only after every check passed.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use lauscha_core::layout::StripeLayout;
use lauscha_core::model::{ObjectData, ShardLocation, Stripe};
use lauscha_core::{
    ClusterMap, ErasureCodec, NodeId, PlacementPolicy, ShardHashes, ShardId, StripeId,
    place_avoiding,
};
use lauscha_proto::MetaErrorKind;
use md5::Digest as _;
use s3s::checksum::ChecksumHasher;
use s3s::dto::StreamingBlob;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::GatewayError;
use crate::gateway::Inner;
use crate::nodes::ShardIoError;

/// Stripes being written at once per PUT: one being filled from the client, two on the
/// wire, so that network and nodes are kept busy without unbounded memory.
const MAX_STRIPES_IN_FLIGHT: usize = 2;

/// A written stripe and the indexes of the shards it could not store.
type StripeResult = Result<(Stripe, Vec<u8>), GatewayError>;

/// What a finished body turned into.
pub struct WrittenBody {
    /// Bytes received.
    pub size_bytes: u64,
    /// MD5 of the body (the ETag of an object); `None` for `Storage::Volume`, whose
    /// bytes have no ETag and would pay for the hash on every merge.
    pub md5: Option<[u8; 16]>,
    /// The checksums the client asked for, computed over the body (base64).
    pub checksums: s3s::dto::Checksum,
    /// Inline bytes or durable stripes.
    pub data: ObjectData,
    /// Shards a degraded write could not store (their repair is queued with the commit).
    pub missing: Vec<(StripeId, u8)>,
}

/// Stripes written but not yet committed: deleted if the write fails before its commit,
/// or when metadata refuses the commit.
///
/// Architecture Invariant: once the commit that references the stripes has been sent, they
/// are never deleted unless metadata answered with a definite refusal. A commit whose
/// outcome is unknown (metadata unavailable mid-commit, a reply lost) may have been
/// applied, and so may one whose caller went away while it was in flight: a client that
/// disconnects drops the request's future, and with it this value. Deleting then would
/// leave a committed version whose shards are gone (seen in the chaos site-partition
/// scenario: a PUT that timed out on the client left an object unreadable on every node).
/// Such stripes are left to the orphan GC, which deletes them only if no stripe map
/// points at them.
pub struct Uncommitted {
    inner: Arc<Inner>,
    stripes: Vec<Stripe>,
    /// The commit has been sent and not answered with a refusal.
    commit_sent: bool,
}

/// What becomes of written stripes after their commit returned `result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterCommit {
    /// Referenced (committed) or perhaps referenced (outcome unknown): kept.
    Keep,
    /// Metadata refused: nothing references them.
    Delete,
}

fn after_commit<T>(result: &Result<T, GatewayError>) -> AfterCommit {
    match result {
        Ok(_) => AfterCommit::Keep,
        Err(GatewayError::Meta { kind, .. })
            if !matches!(
                kind,
                MetaErrorKind::Unavailable | MetaErrorKind::Internal | MetaErrorKind::NotLeader
            ) =>
        {
            AfterCommit::Delete
        }
        // Unavailable or internal on the metadata side, or an error here after sending
        // (a reply that does not decode): the command may have been applied.
        Err(_) => AfterCommit::Keep,
    }
}

/// Whether a metadata command that returned `result` may have been applied although it
/// did not say so: it failed, and not with a refusal of metadata's own (which changes
/// nothing).
pub(crate) fn outcome_unknown<T>(result: &Result<T, GatewayError>) -> bool {
    result.is_err() && after_commit(result) == AfterCommit::Keep
}

impl Uncommitted {
    /// Nothing written yet.
    pub fn none(inner: Arc<Inner>) -> Uncommitted {
        Uncommitted {
            inner,
            stripes: Vec::new(),
            commit_sent: false,
        }
    }

    /// Takes on `other`'s stripes, to settle them with one commit.
    pub fn absorb(&mut self, mut other: Uncommitted) {
        self.stripes.append(&mut other.stripes);
    }

    /// Awaits `commit`, the metadata command that makes something reference these
    /// stripes, and settles them by its answer: kept when it committed or when its outcome
    /// is unknown (GC reclaims them if it did not commit), deleted when metadata refused.
    /// If this future is dropped while the command is in flight, they are kept as well.
    pub async fn settle<T>(
        mut self,
        commit: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        self.commit_sent = true;
        let result = commit.await;
        match after_commit(&result) {
            AfterCommit::Keep => {
                if let Err(e) = &result {
                    debug!(n_stripes = self.stripes.len(), error = %e, "commit outcome unknown; stripes left to GC");
                }
                self.stripes.clear();
            }
            AfterCommit::Delete => self.commit_sent = false,
        }
        result
    }
}

impl Drop for Uncommitted {
    fn drop(&mut self) {
        if self.stripes.is_empty() {
            return;
        }
        if self.commit_sent {
            info!(
                n_stripes = self.stripes.len(),
                "write abandoned while its commit was in flight; stripes left to GC"
            );
            return;
        }
        let stripes = std::mem::take(&mut self.stripes);
        let inner = self.inner.clone();
        tokio::spawn(async move { delete_stripes(&inner, &stripes).await });
    }
}

async fn delete_stripes(inner: &Inner, stripes: &[Stripe]) {
    let Ok(map) = inner.nodes.cluster_map().await else {
        warn!(
            n_stripes = stripes.len(),
            "no cluster map; uncommitted stripes left to GC"
        );
        return;
    };
    let deletes = stripes.iter().flat_map(|stripe| {
        stripe.shards.iter().enumerate().map(|(idx, loc)| {
            let id = ShardId {
                stripe_id: stripe.id,
                shard_idx: idx as u8,
            };
            let map = map.clone();
            async move {
                inner
                    .nodes
                    .delete_shard_best_effort(&map, loc.node, id)
                    .await
            }
        })
    });
    futures::future::join_all(deletes).await;
}

/// Turns an error from the body stream into the S3 error it means.
fn body_error(e: s3s::StdError) -> GatewayError {
    let text = e.to_string();
    if text.contains("SignatureMismatch") {
        GatewayError::SignatureDoesNotMatch
    } else if text.contains("Sha256Mismatch") {
        GatewayError::BadDigest("the body does not match x-amz-content-sha256".into())
    } else {
        GatewayError::IncompleteBody(text)
    }
}

/// How a body may be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Small bodies inline in metadata, the rest erasure-coded (objects).
    InlineWhenSmall,
    /// Always erasure-coded (parts of multipart uploads, which must concatenate).
    Striped,
    /// Always erasure-coded, no MD5: block volume extents and journal entries.
    Volume,
}

/// Streams `body` into the store under `policy`. `declared_len_bytes`, when known, must be
/// matched exactly; more than `max_bytes` is refused as soon as it is seen.
pub async fn write_body(
    inner: &Arc<Inner>,
    policy: PlacementPolicy,
    mut body: StreamingBlob,
    declared_len_bytes: Option<u64>,
    mut checksum: ChecksumHasher,
    storage: Storage,
) -> Result<(WrittenBody, Uncommitted), GatewayError> {
    let max_bytes = inner.config.max_object_bytes;
    if let Some(declared) = declared_len_bytes
        && declared > max_bytes
    {
        return Err(GatewayError::EntityTooLarge {
            size_bytes: declared,
            max_bytes,
        });
    }
    let layout = StripeLayout {
        n_data_shards: policy.n_data_shards,
        shard_size_bytes: inner.config.shard_size_bytes,
    };
    let capacity = layout.stripe_capacity_bytes() as usize;
    let mut uncommitted = Uncommitted::none(inner.clone());
    let mut in_flight: FuturesOrdered<JoinHandle<StripeResult>> = FuturesOrdered::new();
    let mut md5 = (storage != Storage::Volume).then(md5::Md5::new);
    let mut missing = Vec::new();
    let mut buf = BytesMut::new();
    let mut total_bytes = 0u64;

    // On any error below, `in_flight` and `uncommitted` are dropped: finished stripes are
    // deleted by `uncommitted`, running ones by `finish_in_flight` in the error path.
    let result: Result<(), GatewayError> = async {
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(body_error)?;
            total_bytes += chunk.len() as u64;
            if total_bytes > max_bytes {
                return Err(GatewayError::EntityTooLarge {
                    size_bytes: total_bytes,
                    max_bytes,
                });
            }
            if declared_len_bytes.is_some_and(|d| total_bytes > d) {
                return Err(GatewayError::IncompleteBody(
                    "more bytes than Content-Length declared".into(),
                ));
            }
            if let Some(md5) = &mut md5 {
                md5.update(&chunk);
            }
            checksum.update(&chunk);
            while chunk.has_remaining() {
                let take = (capacity - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk[..take]);
                chunk.advance(take);
                if buf.len() == capacity {
                    while in_flight.len() >= MAX_STRIPES_IN_FLIGHT {
                        let (stripe, lost) = next_finished(&mut in_flight).await?;
                        missing.extend(lost.into_iter().map(|idx| (stripe.id, idx)));
                        uncommitted.stripes.push(stripe);
                    }
                    let stripe = buf.split().freeze();
                    in_flight.push_back(spawn_stripe_write(inner, policy, stripe).await?);
                }
            }
        }
        if let Some(declared) = declared_len_bytes
            && total_bytes != declared
        {
            return Err(GatewayError::IncompleteBody(format!(
                "got {total_bytes} bytes, Content-Length declared {declared}"
            )));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        finish_in_flight(in_flight, &mut uncommitted).await;
        return Err(e);
    }

    let is_inline = storage == Storage::InlineWhenSmall
        && total_bytes <= inner.config.inline_max_bytes
        && in_flight.is_empty();
    let data = if is_inline {
        debug_assert!(uncommitted.stripes.is_empty());
        ObjectData::Inline(buf.to_vec())
    } else {
        if !buf.is_empty() {
            match spawn_stripe_write(inner, policy, buf.split().freeze()).await {
                Ok(handle) => in_flight.push_back(handle),
                Err(e) => {
                    finish_in_flight(in_flight, &mut uncommitted).await;
                    return Err(e);
                }
            }
        }
        while !in_flight.is_empty() {
            match next_finished(&mut in_flight).await {
                Ok((stripe, lost)) => {
                    missing.extend(lost.into_iter().map(|idx| (stripe.id, idx)));
                    uncommitted.stripes.push(stripe);
                }
                Err(e) => {
                    finish_in_flight(in_flight, &mut uncommitted).await;
                    return Err(e);
                }
            }
        }
        ObjectData::Striped {
            n_data_shards: policy.n_data_shards,
            n_parity_shards: policy.n_parity_shards,
            stripes: uncommitted.stripes.clone(),
        }
    };
    let written = WrittenBody {
        size_bytes: total_bytes,
        md5: md5.map(|m| m.finalize().into()),
        checksums: checksum.finalize(),
        data,
        missing,
    };
    Ok((written, uncommitted))
}

async fn next_finished(in_flight: &mut FuturesOrdered<JoinHandle<StripeResult>>) -> StripeResult {
    match in_flight.next().await {
        Some(Ok(result)) => result,
        Some(Err(join_error)) => Err(GatewayError::Internal(format!(
            "stripe writer failed: {join_error}"
        ))),
        None => unreachable!("called with stripes in flight"),
    }
}

/// Waits for running stripe writes and hands the ones that succeeded to `uncommitted`, so
/// that a failed PUT deletes everything it wrote.
async fn finish_in_flight(
    mut in_flight: FuturesOrdered<JoinHandle<StripeResult>>,
    uncommitted: &mut Uncommitted,
) {
    while let Some(result) = in_flight.next().await {
        if let Ok(Ok((stripe, _))) = result {
            uncommitted.stripes.push(stripe);
        }
    }
}

/// Reserves memory for one stripe (data and parity), then writes it on its own task.
async fn spawn_stripe_write(
    inner: &Arc<Inner>,
    policy: PlacementPolicy,
    stripe: Bytes,
) -> Result<JoinHandle<StripeResult>, GatewayError> {
    let permit = inner.reserve_stripe_memory(stripe.len(), policy).await?;
    let map = inner.nodes.cluster_map().await?;
    let inner = inner.clone();
    Ok(tokio::spawn(async move {
        write_stripe(&inner, &map, policy, stripe, permit).await
    }))
}

/// How often one stripe is placed and written before a PUT fails with 503. Each attempt
/// avoids the nodes that failed the ones before, so two attempts suffice when m nodes die
/// at once; the third covers a death during the second.
const STRIPE_WRITE_ATTEMPTS: usize = 3;

/// Encodes one stripe and writes its k+m shards in parallel. At least the write quorum
/// (k+1 by default) must become durable; shards whose node is known to be failing are not
/// attempted, and shards that could not be stored are returned as missing, for the commit
/// to queue their repair. Below the quorum every shard that did land is deleted again.
async fn write_stripe(
    inner: &Inner,
    map: &ClusterMap,
    policy: PlacementPolicy,
    stripe: Bytes,
    _permit: OwnedSemaphorePermit,
) -> Result<(Stripe, Vec<u8>), GatewayError> {
    // An attempt can miss its quorum because nodes died since the last request. The next
    // attempt (a fresh stripe id) places around every node that failed an earlier one:
    // explicitly, not through the pool's suspect marks, which any concurrent answer from
    // a node (sent just before it died) clears again.
    let mut failed_nodes = BTreeSet::new();
    let mut attempt = 1;
    loop {
        match write_stripe_once(inner, map, policy, stripe.clone(), &mut failed_nodes).await {
            Err(e @ GatewayError::BelowWriteQuorum { .. }) if attempt < STRIPE_WRITE_ATTEMPTS => {
                debug!(attempt, failed_nodes = ?failed_nodes, error = %e, "stripe write below quorum; placing around the failed nodes");
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn write_stripe_once(
    inner: &Inner,
    map: &ClusterMap,
    policy: PlacementPolicy,
    stripe: Bytes,
    failed_nodes: &mut BTreeSet<NodeId>,
) -> Result<(Stripe, Vec<u8>), GatewayError> {
    let stripe_id = StripeId(rand::random());
    // Nodes that just failed or reported a full disk get shards only when there are not
    // enough others; those shards are then skipped and repaired later.
    let mut avoid = inner.nodes.full_nodes();
    avoid.extend(
        map.nodes
            .keys()
            .copied()
            .filter(|n| inner.nodes.is_suspect(*n)),
    );
    let placement = if failed_nodes.is_empty() {
        place_avoiding(stripe_id, &policy, map, &avoid)?
    } else {
        let mut around_failed = avoid.clone();
        around_failed.extend(failed_nodes.iter().copied());
        // Avoiding outranks spreading in placement: with many nodes avoided, a host or
        // site policy may not be met; then place as the first attempt did.
        place_avoiding(stripe_id, &policy, map, &around_failed)
            .or_else(|_| place_avoiding(stripe_id, &policy, map, &avoid))?
    };
    let codec = inner.codec(policy)?;
    let len_bytes = stripe.len() as u64;
    let (shards, hashes) = tokio::task::spawn_blocking(move || encode(&codec, stripe))
        .await
        .map_err(|e| GatewayError::Internal(format!("encoder failed: {e}")))??;
    let writes = placement
        .nodes
        .iter()
        .zip(shards)
        .zip(&hashes)
        .enumerate()
        .map(|(shard_idx, ((&node, shard), hashes))| {
            let id = ShardId {
                stripe_id,
                shard_idx: shard_idx as u8,
            };
            async move {
                if inner.nodes.is_suspect(node) || inner.nodes.full_nodes().contains(&node) {
                    return Err(ShardIoError::Unreachable(node, "recently failed".into()));
                }
                // The block hashes go along: a node in this process takes them rather
                // than hashing the shard again.
                let block_hashes = Some(hashes.block_hashes.clone());
                inner
                    .nodes
                    .put_shard(map, node, id, shard, hashes.digest, block_hashes)
                    .await
            }
        });
    let results = await_writes(inner, &placement.nodes, writes, inner.write_quorum(policy)).await;
    let missing: Vec<u8> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(idx, _)| idx as u8)
        .collect();
    // Every node that failed, except for answers about this stripe's id alone, which a
    // fresh id does not meet again.
    failed_nodes.extend(
        results
            .iter()
            .zip(&placement.nodes)
            .filter(|(r, _)| {
                r.as_ref().is_err_and(|e| {
                    !matches!(
                        e,
                        ShardIoError::AlreadyExists(..) | ShardIoError::NotFound(..)
                    )
                })
            })
            .map(|(_, &node)| node),
    );
    let n_durable = results.len() - missing.len();
    let quorum = inner.write_quorum(policy);
    if n_durable < quorum {
        let reasons: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        debug!(stripe_id = %stripe_id, n_durable, quorum, "stripe below write quorum; removing its shards");
        // Delete every shard of the stripe: the ones that landed must not linger, and
        // deleting one that never arrived is a no-op.
        let cleanup = placement.nodes.iter().enumerate().map(|(idx, &node)| {
            let id = ShardId {
                stripe_id,
                shard_idx: idx as u8,
            };
            async move { inner.nodes.delete_shard_best_effort(map, node, id).await }
        });
        futures::future::join_all(cleanup).await;
        return Err(GatewayError::BelowWriteQuorum {
            stripe_id,
            n_durable,
            quorum,
            reasons: reasons.join("; "),
        });
    }
    if !missing.is_empty() {
        warn!(stripe_id = %stripe_id, n_durable, missing = ?missing, "degraded stripe write; missing shards queued for repair");
    }
    debug!(stripe_id = %stripe_id, n_bytes = len_bytes, "stripe written");
    let stripe = Stripe {
        id: stripe_id,
        len_bytes,
        shards: placement
            .nodes
            .iter()
            .zip(hashes)
            .map(|(&node, hashes)| ShardLocation {
                node,
                digest: hashes.digest,
            })
            .collect(),
    };
    Ok((stripe, missing))
}

/// Waits for the shard writes, in shard order. Once the write quorum is durable, the
/// others get a little longer (four times what reaching the quorum took, at least
/// `STRAGGLER_MIN`); a write still running then is abandoned (the node discards a shard
/// whose stream ends early) and counted as missing, so that one paused or overloaded node
/// costs a PUT a short wait and a repair, not the whole RPC timeout.
async fn await_writes<F>(
    inner: &Inner,
    nodes: &[NodeId],
    writes: impl Iterator<Item = F>,
    quorum: usize,
) -> Vec<Result<(), ShardIoError>>
where
    F: std::future::Future<Output = Result<(), ShardIoError>>,
{
    let started = std::time::Instant::now();
    let mut pending: FuturesUnordered<_> = writes
        .enumerate()
        .map(|(idx, write)| async move { (idx, write.await) })
        .collect();
    let mut results: Vec<Option<Result<(), ShardIoError>>> = vec![None; nodes.len()];
    let mut n_ok = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            None => pending.next().await,
            Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((idx, result)) = next else { break };
        n_ok += usize::from(result.is_ok());
        results[idx] = Some(result);
        if n_ok >= quorum && deadline.is_none() {
            let wait = (started.elapsed() * 4).max(STRAGGLER_MIN);
            deadline = Some(tokio::time::Instant::now() + wait);
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(idx, r)| {
            r.unwrap_or_else(|| {
                inner.nodes.mark_slow(nodes[idx]);
                Err(ShardIoError::Unreachable(
                    nodes[idx],
                    "still writing when the rest of the stripe was durable".into(),
                ))
            })
        })
        .collect()
}

/// The shortest wait for the shards still being written once the quorum is durable.
const STRAGGLER_MIN: Duration = Duration::from_millis(200);

/// The k+m shards of a stripe and their digests, with the block hashes each is made of. A full stripe's data shards are slices of
/// the stripe itself (no copy); a short stripe is copied once into padded shards.
fn encode(
    codec: &ErasureCodec,
    stripe: Bytes,
) -> Result<(Vec<Bytes>, Vec<ShardHashes>), GatewayError> {
    let k = codec.n_data_shards();
    let shards: Vec<Bytes> = if !stripe.is_empty() && stripe.len().is_multiple_of(k) {
        let shard_len = stripe.len() / k;
        let data: Vec<Bytes> = (0..k)
            .map(|i| stripe.slice(i * shard_len..(i + 1) * shard_len))
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(|b| b.as_ref()).collect();
        let parity = codec
            .encode_parity(&refs)
            .map_err(|e| GatewayError::Internal(format!("encode: {e}")))?;
        data.into_iter()
            .chain(parity.into_iter().map(Bytes::from))
            .collect()
    } else {
        codec
            .encode_stripe(&stripe)
            .into_iter()
            .map(Bytes::from)
            .collect()
    };
    let hashes = shards.iter().map(|s| ShardHashes::of(s)).collect();
    Ok((shards, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: MetaErrorKind) -> Result<(), GatewayError> {
        Err(GatewayError::Meta {
            kind,
            message: String::new(),
        })
    }

    /// Stripes are deleted only on a definite refusal from metadata; every answer that
    /// leaves the commit's outcome open keeps them for GC.
    #[test]
    fn only_a_refusal_deletes_written_stripes() {
        assert_eq!(after_commit(&Ok(())), AfterCommit::Keep);
        for unknown in [
            MetaErrorKind::Unavailable,
            MetaErrorKind::Internal,
            MetaErrorKind::NotLeader,
        ] {
            assert_eq!(
                after_commit(&meta(unknown)),
                AfterCommit::Keep,
                "{unknown:?}"
            );
        }
        assert_eq!(
            after_commit::<()>(&Err(GatewayError::Internal("reply did not decode".into()))),
            AfterCommit::Keep
        );
        for refused in [
            MetaErrorKind::Conflict,
            MetaErrorKind::PreconditionFailed,
            MetaErrorKind::Fenced,
            MetaErrorKind::NoSuchBucket,
            MetaErrorKind::ObjectLocked,
        ] {
            assert_eq!(
                after_commit(&meta(refused)),
                AfterCommit::Delete,
                "{refused:?}"
            );
        }
    }
}
