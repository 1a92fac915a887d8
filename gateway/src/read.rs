//! The GET data path: the pieces of the data shards a range needs, read in parallel and
//! verified; a stripe whose pieces cannot all be read is rebuilt from any k shards.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use lauscha_core::layout::{StripeRead, plan_range_read, shard_len_bytes};
use lauscha_core::model::{ObjectData, Stripe};
use lauscha_core::{ClusterMap, ObjectVersion, PlacementPolicy, ShardId, SpreadLevel};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::GatewayError;
use crate::gateway::Inner;
use crate::nodes::{ShardIoError, ShardRef};

/// Stripes read ahead of the client.
const READ_AHEAD_STRIPES: usize = 3;

/// The bytes of an object range, as a stream the HTTP layer can send.
pub type ObjectStream = ReceiverStream<Result<Bytes, std::io::Error>>;

/// Opens `range` of `version` for reading. The first stripe is read before this returns,
/// and every stripe is checked to have k shards on nodes not known to be failing, so that
/// a read that cannot succeed fails with an S3 error before any byte is sent. A stripe that
/// fails later (a node dying mid-transfer) ends the stream with an error: the client sees a
/// truncated body, never wrong bytes.
pub async fn open_range(
    inner: &Arc<Inner>,
    version: &ObjectVersion,
    range: Range<u64>,
) -> Result<ObjectStream, GatewayError> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_STRIPES);
    let (n_data_shards, n_parity_shards, stripes) = match &version.data {
        ObjectData::Inline(bytes) => {
            let slice = Bytes::copy_from_slice(&bytes[range.start as usize..range.end as usize]);
            tx.try_send(Ok(slice)).expect("empty channel has room");
            return Ok(ReceiverStream::new(rx));
        }
        ObjectData::Striped {
            n_data_shards,
            n_parity_shards,
            stripes,
        } => (*n_data_shards, *n_parity_shards, stripes.clone()),
    };
    let k = usize::from(n_data_shards);
    let policy = PlacementPolicy {
        n_data_shards,
        n_parity_shards,
        spread: SpreadLevel::Node,
    };
    let lens: Vec<u64> = stripes.iter().map(|s| s.len_bytes).collect();
    let plan = plan_range_read(&lens, k, range);
    let map = inner.nodes.cluster_map().await?;
    for read in &plan {
        let stripe = &stripes[read.stripe_idx];
        let usable = |stripe: &Stripe| {
            stripe
                .shards
                .iter()
                .filter(|loc| map.node(loc.node).is_some() && !inner.nodes.is_suspect(loc.node))
                .count()
        };
        let mut n_usable = usable(stripe);
        if n_usable < k {
            // Nodes that failed a moment ago may be back: ask them before giving up.
            let probes = stripe
                .shards
                .iter()
                .filter(|loc| inner.nodes.is_suspect(loc.node))
                .map(|loc| inner.nodes.node_status(&map, loc.node));
            futures::future::join_all(probes).await;
            n_usable = usable(stripe);
        }
        if n_usable < k {
            return Err(GatewayError::StripeUnreadable(format!(
                "stripe {} has {n_usable} of {} shards on reachable nodes, {k} needed",
                stripe.id,
                stripe.shards.len()
            )));
        }
    }
    let mut plan = plan.into_iter();
    if let Some(first) = plan.next() {
        let bytes = read_stripe(inner, &map, policy, &stripes[first.stripe_idx], &first).await?;
        tx.try_send(Ok(bytes)).expect("empty channel has room");
    }
    let inner = inner.clone();
    let stripes = Arc::new(stripes);
    tokio::spawn(async move {
        // Several stripes are read at once, delivered in order.
        let mut reads = futures::stream::iter(plan)
            .map(|read| {
                let (inner, map, stripes) = (inner.clone(), map.clone(), stripes.clone());
                async move {
                    let stripe = &stripes[read.stripe_idx];
                    let result = read_stripe(&inner, &map, policy, stripe, &read).await;
                    if let Err(e) = &result {
                        warn!(stripe_id = %stripe.id, error = %e, "object read failed mid-stream");
                    }
                    result.map_err(|e| std::io::Error::other(e.to_string()))
                }
            })
            .buffered(READ_AHEAD_STRIPES);
        while let Some(result) = reads.next().await {
            let failed = result.is_err();
            // A closed channel means the client went away: stop reading.
            if tx.send(result).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Reads what `read` needs from one stripe.
async fn read_stripe(
    inner: &Inner,
    map: &ClusterMap,
    policy: PlacementPolicy,
    stripe: &Stripe,
    read: &StripeRead,
) -> Result<Bytes, GatewayError> {
    let k = usize::from(policy.n_data_shards);
    let shard_len = shard_len_bytes(stripe.len_bytes, k);
    let shard_id = |idx: usize| ShardId {
        stripe_id: stripe.id,
        shard_idx: idx as u8,
    };
    // Pieces on nodes known to be failing go straight to reconstruction.
    let any_suspect = read
        .pieces
        .iter()
        .any(|p| inner.nodes.is_suspect(stripe.shards[p.shard_idx].node));
    if !any_suspect {
        let reads = read.pieces.iter().map(|piece| {
            let loc = &stripe.shards[piece.shard_idx];
            inner.nodes.read_shard(
                map,
                ShardRef {
                    node: loc.node,
                    id: shard_id(piece.shard_idx),
                    digest: &loc.digest,
                    shard_len_bytes: shard_len,
                },
                piece.offset_in_shard,
                piece.len_bytes,
            )
        });
        let results = futures::future::join_all(reads).await;
        if results.iter().all(Result::is_ok) {
            let mut out =
                BytesMut::with_capacity((read.stripe_range.end - read.stripe_range.start) as usize);
            for bytes in results.into_iter().flatten() {
                out.extend_from_slice(&bytes);
            }
            return Ok(out.freeze());
        }
        for (piece, result) in read.pieces.iter().zip(&results) {
            if let Err(e) = result {
                report_bad_shard(stripe, piece.shard_idx, e);
            }
        }
    }
    reconstruct(inner, map, policy, stripe, read, shard_len).await
}

fn report_bad_shard(stripe: &Stripe, shard_idx: usize, error: &ShardIoError) {
    warn!(
        stripe_id = %stripe.id,
        shard_idx,
        node_id = %stripe.shards[shard_idx].node,
        %error,
        "shard unreadable; reading parity instead"
    );
}

/// Reads whole shards from every node that may have a good copy, rebuilds the data shards
/// from any k of them, and returns the wanted part of the stripe.
async fn reconstruct(
    inner: &Inner,
    map: &ClusterMap,
    policy: PlacementPolicy,
    stripe: &Stripe,
    read: &StripeRead,
    shard_len: u64,
) -> Result<Bytes, GatewayError> {
    let k = usize::from(policy.n_data_shards);
    let reads = stripe
        .shards
        .iter()
        .enumerate()
        .map(|(idx, loc)| async move {
            if inner.nodes.is_suspect(loc.node) {
                return Err(ShardIoError::Unreachable(
                    loc.node,
                    "recently failed".into(),
                ));
            }
            let id = ShardId {
                stripe_id: stripe.id,
                shard_idx: idx as u8,
            };
            let shard = ShardRef {
                node: loc.node,
                id,
                digest: &loc.digest,
                shard_len_bytes: shard_len,
            };
            inner.nodes.read_shard(map, shard, 0, 0).await
        });
    let results = futures::future::join_all(reads).await;
    let mut n_corrupt = 0;
    let mut shards: Vec<Option<Vec<u8>>> = Vec::with_capacity(results.len());
    for (idx, result) in results.into_iter().enumerate() {
        match result {
            Ok(bytes) => shards.push(Some(bytes.to_vec())),
            Err(e) => {
                if matches!(e, ShardIoError::Corrupt(..)) {
                    n_corrupt += 1;
                }
                report_bad_shard(stripe, idx, &e);
                shards.push(None);
            }
        }
    }
    let n_present = shards.iter().filter(|s| s.is_some()).count();
    if n_present < k {
        let what = format!(
            "stripe {}: {n_present} of {} shards readable ({n_corrupt} corrupt), {k} needed",
            stripe.id,
            shards.len()
        );
        return Err(if n_corrupt > 0 {
            GatewayError::StripeCorrupt(what)
        } else {
            GatewayError::StripeUnreadable(what)
        });
    }
    let codec = inner.codec(policy)?;
    let stripe_len = stripe.len_bytes;
    let wanted = read.stripe_range.clone();
    tokio::task::spawn_blocking(move || {
        codec
            .reconstruct(&mut shards, false)
            .map_err(|e| GatewayError::Internal(format!("reconstruct: {e}")))?;
        let data: Vec<&[u8]> = shards[..k]
            .iter()
            .map(|s| s.as_deref().expect("reconstructed"))
            .collect();
        let joined = codec.join_stripe(&data, stripe_len);
        Ok(Bytes::from(joined).slice(wanted.start as usize..wanted.end as usize))
    })
    .await
    .map_err(|e| GatewayError::Internal(format!("reconstruct task: {e}")))?
}
