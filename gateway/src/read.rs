//! The GET data path: the pieces of the data shards a range needs, read in parallel and
//! verified; a stripe whose pieces cannot all be read is rebuilt from any k shards.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
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

/// The bytes of one stripe's part of a range, as the blocks they arrived in.
type StripeChunks = Result<Vec<Bytes>, std::io::Error>;

/// The bytes of an object range, as a stream the HTTP layer can send: the stripes' blocks
/// one by one, as they arrived (never copied into one buffer per stripe).
pub struct ObjectStream {
    stripes: ReceiverStream<StripeChunks>,
    ready: std::collections::VecDeque<Bytes>,
}

impl ObjectStream {
    fn new(stripes: mpsc::Receiver<StripeChunks>) -> ObjectStream {
        ObjectStream {
            stripes: ReceiverStream::new(stripes),
            ready: Default::default(),
        }
    }
}

impl futures::Stream for ObjectStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return std::task::Poll::Ready(Some(Ok(chunk)));
            }
            match std::task::ready!(std::pin::Pin::new(&mut self.stripes).poll_next(cx)) {
                Some(Ok(chunks)) => self.ready.extend(chunks),
                Some(Err(e)) => return std::task::Poll::Ready(Some(Err(e))),
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

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
            tx.try_send(Ok(vec![slice]))
                .expect("empty channel has room");
            return Ok(ObjectStream::new(rx));
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
    let rest: Vec<StripeRead> = plan.collect();
    if rest.is_empty() {
        // One stripe (every small read): no task for the rest. Dropping `tx` ends the
        // stream after the stripe already in it.
        return Ok(ObjectStream::new(rx));
    }
    let inner = inner.clone();
    let stripes = Arc::new(stripes);
    tokio::spawn(async move {
        // Several stripes are read at once, delivered in order.
        let mut reads = futures::stream::iter(rest)
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
    Ok(ObjectStream::new(rx))
}

/// Reads what `read` needs from one stripe. The data-shard pieces are read in parallel;
/// pieces that fail, or that have not arrived within the hedge delay, are rebuilt from the
/// same byte range of any k other shards (Reed-Solomon works byte by byte, so a range of
/// each shard is enough), racing the slow reads.
async fn read_stripe(
    inner: &Inner,
    map: &ClusterMap,
    policy: PlacementPolicy,
    stripe: &Stripe,
    read: &StripeRead,
) -> Result<Vec<Bytes>, GatewayError> {
    let k = usize::from(policy.n_data_shards);
    let shard_len = shard_len_bytes(stripe.len_bytes, k);
    let hedge = Duration::from_millis(inner.config.hedge_delay_ms);
    let n_pieces = read.pieces.len();
    let mut got: Vec<Option<Vec<Bytes>>> = vec![None; n_pieces];
    let mut failed: BTreeSet<usize> = BTreeSet::new();
    // Pieces on nodes that failed or were slow a moment ago: rebuilt from the others, but
    // their shards stay eligible for the rebuild when too few others remain.
    let mut skipped: BTreeSet<usize> = BTreeSet::new();
    let mut pending = FuturesUnordered::new();
    for (i, piece) in read.pieces.iter().enumerate() {
        let loc = &stripe.shards[piece.shard_idx];
        if inner.nodes.is_suspect(loc.node) {
            skipped.insert(i);
            continue;
        }
        let shard = shard_ref(stripe, piece.shard_idx, shard_len);
        pending.push(async move {
            (
                i,
                inner
                    .nodes
                    .read_shard_chunks(map, shard, piece.offset_in_shard, piece.len_bytes)
                    .await,
            )
        });
    }
    let deadline = tokio::time::sleep(hedge);
    tokio::pin!(deadline);
    while !pending.is_empty() {
        tokio::select! {
            Some((i, result)) = pending.next() => match result {
                Ok(bytes) => got[i] = Some(bytes),
                Err(e) => {
                    report_bad_shard(inner, map, stripe, read.pieces[i].shard_idx, &e);
                    failed.insert(i);
                }
            },
            () = &mut deadline => break,
        }
    }
    // Still pending after the hedge delay (or after a failure): slow.
    let slow: Vec<usize> = (0..n_pieces)
        .filter(|i| got[*i].is_none() && !failed.contains(i) && !skipped.contains(i))
        .collect();
    if failed.is_empty() && slow.is_empty() && skipped.is_empty() {
        return Ok(concat(got));
    }
    let rebuild: Vec<usize> = failed
        .iter()
        .chain(skipped.iter())
        .chain(slow.iter())
        .copied()
        .collect();
    // The rebuild avoids the failed shards and, when enough others remain, the slow ones.
    let mut avoid: BTreeSet<usize> = failed.iter().map(|i| read.pieces[*i].shard_idx).collect();
    let slow_shards: BTreeSet<usize> = slow.iter().map(|i| read.pieces[*i].shard_idx).collect();
    if stripe.shards.len() - avoid.len() - slow_shards.len() >= k {
        avoid.extend(slow_shards);
    }
    let rebuilt = rebuild_pieces(
        inner, map, policy, stripe, read, &rebuild, &avoid, shard_len,
    );
    // The slow reads may still win the race; the rebuild may fail where they succeed.
    tokio::pin!(rebuilt);
    let mut rebuilt_result = None;
    loop {
        tokio::select! {
            result = &mut rebuilt, if rebuilt_result.is_none() => {
                match result {
                    Ok(pieces) => {
                        for &i in &slow {
                            if got[i].is_none() {
                                let node = stripe.shards[read.pieces[i].shard_idx].node;
                                inner.nodes.mark_slow(node);
                            }
                        }
                        for (i, bytes) in pieces {
                            got[i] = Some(vec![bytes]);
                        }
                        return Ok(concat(got));
                    }
                    Err(e) => rebuilt_result = Some(e),
                }
            }
            Some((i, result)) = pending.next() => match result {
                Ok(bytes) => got[i] = Some(bytes),
                Err(e) => report_bad_shard(inner, map, stripe, read.pieces[i].shard_idx, &e),
            },
            else => break,
        }
        if got.iter().all(Option::is_some) {
            return Ok(concat(got));
        }
        if rebuilt_result.is_some() && pending.is_empty() {
            break;
        }
    }
    Err(rebuilt_result.unwrap_or_else(|| {
        GatewayError::StripeUnreadable(format!("stripe {}: pieces missing", stripe.id))
    }))
}

fn concat(pieces: Vec<Option<Vec<Bytes>>>) -> Vec<Bytes> {
    pieces
        .into_iter()
        .flat_map(|p| p.expect("every piece present"))
        .collect()
}

/// `len` bytes from `start` of the bytes of `chunks` in order, as slices of them (no copy);
/// `None` if the chunks hold fewer than `start + len` bytes.
pub(crate) fn slice_chunks(chunks: Vec<Bytes>, start: usize, len: usize) -> Option<Vec<Bytes>> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    if start.checked_add(len).is_none_or(|end| end > total) {
        return None;
    }
    let (mut skip, mut left) = (start, len);
    let mut out = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        if left == 0 {
            break;
        }
        if skip >= chunk.len() {
            skip -= chunk.len();
            continue;
        }
        let n = (chunk.len() - skip).min(left);
        out.push(chunk.slice(skip..skip + n));
        (skip, left) = (0, left - n);
    }
    debug_assert_eq!(left, 0, "the chunks hold the range");
    Some(out)
}

/// The bytes of `pieces` in order; a single piece (most small reads) is not copied.
pub(crate) fn concat_bytes(mut pieces: Vec<Bytes>) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().expect("one piece");
    }
    let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in &pieces {
        out.extend_from_slice(piece);
    }
    out.freeze()
}

fn shard_ref(stripe: &Stripe, shard_idx: usize, shard_len: u64) -> ShardRef<'_> {
    let loc = &stripe.shards[shard_idx];
    ShardRef {
        node: loc.node,
        id: ShardId {
            stripe_id: stripe.id,
            shard_idx: shard_idx as u8,
        },
        digest: &loc.digest,
        shard_len_bytes: shard_len,
    }
}

/// Logs an unreadable shard; a corrupt one is handed back to its node to verify and
/// quarantine, so that repair rebuilds it.
fn report_bad_shard(
    inner: &Inner,
    map: &ClusterMap,
    stripe: &Stripe,
    shard_idx: usize,
    error: &ShardIoError,
) {
    let node = stripe.shards[shard_idx].node;
    warn!(
        stripe_id = %stripe.id,
        shard_idx,
        node_id = %node,
        %error,
        "shard unreadable; reading parity instead"
    );
    if matches!(error, ShardIoError::Corrupt(..)) {
        let id = ShardId {
            stripe_id: stripe.id,
            shard_idx: shard_idx as u8,
        };
        let (nodes, map) = (inner.nodes.clone(), map.clone());
        tokio::spawn(async move {
            match nodes.verify_shard(&map, node, id).await {
                Ok(false) => {
                    warn!(shard_id = %id, node_id = %node, "node confirmed the corruption and quarantined the shard")
                }
                Ok(true) => {
                    warn!(shard_id = %id, node_id = %node, "node found the shard intact: the corruption was on the way")
                }
                Err(e) => {
                    warn!(shard_id = %id, node_id = %node, error = %e, "could not have the shard verified")
                }
            }
        });
    }
}

/// Rebuilds the pieces `which` (indexes into `read.pieces`) from the same shard byte
/// range of k shards not in `avoid`.
#[allow(clippy::too_many_arguments)]
async fn rebuild_pieces(
    inner: &Inner,
    map: &ClusterMap,
    policy: PlacementPolicy,
    stripe: &Stripe,
    read: &StripeRead,
    which: &[usize],
    avoid: &BTreeSet<usize>,
    shard_len: u64,
) -> Result<Vec<(usize, Bytes)>, GatewayError> {
    let k = usize::from(policy.n_data_shards);
    let lo = which
        .iter()
        .map(|i| read.pieces[*i].offset_in_shard)
        .min()
        .expect("pieces");
    let hi = which
        .iter()
        .map(|i| read.pieces[*i].offset_in_shard + read.pieces[*i].len_bytes)
        .max()
        .expect("pieces");
    // Every other shard may help; the first k to answer are used. Nodes that failed or
    // were slow a moment ago are left out only while enough others remain: under load a
    // slow answer beats a failed read.
    let candidates: Vec<usize> = (0..stripe.shards.len())
        .filter(|i| !avoid.contains(i))
        .collect();
    let trusted: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|i| !inner.nodes.is_suspect(stripe.shards[*i].node))
        .collect();
    let chosen = if trusted.len() >= k {
        trusted
    } else {
        candidates
    };
    let mut reads = FuturesUnordered::new();
    for idx in chosen {
        let shard = shard_ref(stripe, idx, shard_len);
        reads.push(async move { (idx, inner.nodes.read_shard(map, shard, lo, hi - lo).await) });
    }
    let mut ranges: Vec<Option<Vec<u8>>> = vec![None; stripe.shards.len()];
    let (mut n_ok, mut n_corrupt) = (0usize, 0usize);
    while let Some((idx, result)) = reads.next().await {
        match result {
            Ok(bytes) => {
                ranges[idx] = Some(bytes.to_vec());
                n_ok += 1;
                if n_ok == k {
                    break;
                }
            }
            Err(e) => {
                if matches!(e, ShardIoError::Corrupt(..)) {
                    n_corrupt += 1;
                }
                report_bad_shard(inner, map, stripe, idx, &e);
            }
        }
    }
    if n_ok < k {
        let what = format!(
            "stripe {}: {n_ok} of {} shards readable ({n_corrupt} corrupt), {k} needed",
            stripe.id,
            stripe.shards.len()
        );
        return Err(if n_corrupt > 0 {
            GatewayError::StripeCorrupt(what)
        } else {
            GatewayError::StripeUnreadable(what)
        });
    }
    let codec = inner.codec(policy)?;
    let pieces: Vec<(usize, usize, u64, u64)> = which
        .iter()
        .map(|i| {
            let p = &read.pieces[*i];
            (*i, p.shard_idx, p.offset_in_shard, p.len_bytes)
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        codec
            .reconstruct(&mut ranges, false)
            .map_err(|e| GatewayError::Internal(format!("reconstruct: {e}")))?;
        Ok(pieces
            .into_iter()
            .map(|(i, shard_idx, offset, len)| {
                let range = ranges[shard_idx].as_ref().expect("reconstructed");
                let start = (offset - lo) as usize;
                (
                    i,
                    Bytes::copy_from_slice(&range[start..start + len as usize]),
                )
            })
            .collect())
    })
    .await
    .map_err(|e| GatewayError::Internal(format!("reconstruct task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sliced_chunks_hold_the_same_bytes_as_a_slice_of_their_concatenation(
            lens in proptest::collection::vec(0usize..60, 0..10),
            start in 0usize..100,
            len in 0usize..100,
        ) {
            let mut next = 0u8;
            let chunks: Vec<Bytes> = lens
                .iter()
                .map(|n| {
                    Bytes::from((0..*n).map(|_| { next = next.wrapping_add(1); next }).collect::<Vec<u8>>())
                })
                .collect();
            let whole = concat_bytes(chunks.clone());
            match slice_chunks(chunks, start, len) {
                Some(sliced) => {
                    prop_assert!(start + len <= whole.len());
                    prop_assert!(sliced.iter().all(|c| !c.is_empty()));
                    prop_assert_eq!(&concat_bytes(sliced)[..], &whole[start..start + len]);
                }
                None => prop_assert!(start + len > whole.len()),
            }
        }
    }
}
