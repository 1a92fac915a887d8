//! Maintenance: the background work that keeps every stripe at full redundancy and every
//! disk free of what nothing references.
//!
//! A pass probes every node, lists what each holds, and walks every current stripe in
//! stripe-id order, classifying each shard:
//! - healthy: its node answers and holds it;
//! - missing: its node answers but does not hold it (a degraded write, a quarantined
//!   corrupt shard, a replaced disk) -> rebuilt in place;
//! - lost: its node is gone, or unreachable for longer than `node_out_after_s` -> rebuilt
//!   on another node that keeps the policy's spread;
//! - unavailable: its node is unreachable but not yet lost -> left alone (it may return);
//! - leaving: healthy on a draining node -> copied to another node.
//!
//! Stripes with every shard healthy are rebalanced towards where placement puts them with
//! today's map (so an added node fills up), a bounded number of moves per pass. Every
//! change of a stripe's map is a compare-and-set in metadata (`MoveShard`), so a pass that
//! races a delete or another pass changes nothing it should not; the copy it made is
//! deleted again. Garbage (stripes of deleted and overwritten versions) is deleted after
//! the grace period, and so are shards no stripe map points at (uploads that never
//! committed, stale copies left by a failed move).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use lauscha_core::layout::shard_len_bytes;
use lauscha_core::{
    ClusterMap, NodeId, NodeState, PlacementPolicy, ShardId, StripeId, place_with, rebalance_moves,
};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::GatewayError;
use crate::gateway::Inner;
use crate::meta_client::MaintainedStripe;
use crate::nodes::{ShardIoError, ShardRef};

/// Stripes fetched from metadata per page.
const STRIPE_PAGE: u32 = 1000;
/// How often the loop looks at the repair queue between full passes.
const QUEUE_POLL: Duration = Duration::from_secs(2);
/// Examples a degraded report lists.
const EXAMPLES: usize = 100;

/// The health of one shard, as a pass sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShardHealth {
    Healthy,
    Missing,
    Lost,
    Unavailable,
}

/// What one pass found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassReport {
    /// Whether this was a dry run (counting only).
    pub dry_run: bool,
    /// Stripes looked at.
    pub stripes_checked: u64,
    /// Stripes with fewer than k+m healthy shards when the pass looked.
    pub stripes_degraded: u64,
    /// Stripes with fewer than k healthy shards: unreadable until nodes return.
    pub stripes_unrecoverable: u64,
    /// Shards rebuilt from the others.
    pub shards_rebuilt: u64,
    /// Shards copied to another node (drain, rebalance).
    pub shards_moved: u64,
    /// Bytes written by rebuilds.
    pub bytes_rebuilt: u64,
    /// Bytes written by moves.
    pub bytes_moved: u64,
    /// Rebalance moves skipped because of the per-pass limit.
    pub moves_deferred: u64,
    /// Garbage records fully deleted.
    pub garbage_records_collected: u64,
    /// Shards deleted for garbage records.
    pub garbage_shards_deleted: u64,
    /// Shards deleted because no stripe map points at them.
    pub orphans_deleted: u64,
    /// Multipart uploads aborted because they were left open too long (or a lifecycle
    /// rule said so).
    pub uploads_aborted: u64,
    /// Versions expired or removed by lifecycle rules.
    pub lifecycle_actions: u64,
    /// Tasks that failed (retried next pass).
    pub errors: u64,
    /// Nodes that did not answer.
    pub unreachable_nodes: Vec<u32>,
    /// Nodes treated as lost.
    pub lost_nodes: Vec<u32>,
    /// Some degraded stripes, as `stripe_id: shard states`.
    pub examples: Vec<String>,
    /// How long the pass took.
    pub elapsed_ms: u64,
}

/// Counters since start, for the admin API and metrics.
#[derive(Debug, Default)]
pub struct MaintenanceStats {
    /// Passes completed.
    pub passes: AtomicU64,
    /// Shards rebuilt.
    pub shards_rebuilt: AtomicU64,
    /// Bytes rebuilt.
    pub bytes_rebuilt: AtomicU64,
    /// Shards moved.
    pub shards_moved: AtomicU64,
    /// Bytes moved.
    pub bytes_moved: AtomicU64,
    /// Garbage shards deleted.
    pub garbage_shards_deleted: AtomicU64,
    /// Orphans deleted.
    pub orphans_deleted: AtomicU64,
    /// Tasks of the running pass, and how many are done.
    pub tasks_total: AtomicU64,
    /// Done tasks of the running pass.
    pub tasks_done: AtomicU64,
    /// Stripes degraded at the last pass.
    pub last_degraded: AtomicU64,
    last_report: Mutex<Option<PassReport>>,
}

impl MaintenanceStats {
    /// The report of the last completed pass.
    pub fn last_report(&self) -> Option<PassReport> {
        self.last_report.lock().expect("report lock").clone()
    }
}

/// One stripe's work.
struct StripeTask {
    stripe: MaintainedStripe,
    /// (shard index, target node): rebuild from the healthy shards.
    rebuilds: Vec<(usize, NodeId)>,
    /// Copy a healthy shard elsewhere.
    moves: Vec<(usize, NodeId, NodeId)>,
    /// Shard indexes usable as sources.
    healthy: Vec<usize>,
}

/// The maintenance worker of a gateway.
pub struct Maintenance {
    inner: Arc<Inner>,
    /// Since when each node has not answered.
    unreachable_since: Mutex<HashMap<NodeId, Instant>>,
    /// One pass at a time.
    running: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Counters.
    pub stats: MaintenanceStats,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Maintenance {
    /// A worker for the gateway's state.
    pub fn new(inner: Arc<Inner>) -> Maintenance {
        Maintenance {
            inner,
            unreachable_since: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            stats: MaintenanceStats::default(),
        }
    }

    /// Asks the loop to run a pass soon.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Forgets that a node was unreachable (an operator replaced its disk and wants it
    /// refilled, not emptied).
    pub fn forgive(&self, node: NodeId) {
        self.unreachable_since
            .lock()
            .expect("unreachable lock")
            .remove(&node);
    }

    /// Runs passes until `stop`: every `interval_s`, and sooner when repairs are queued.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let interval = Duration::from_secs(self.inner.config.maintenance.interval_s);
        let mut last_pass = Instant::now();
        loop {
            let queued = self
                .inner
                .meta
                .list_repairs(1)
                .await
                .map(|r| !r.is_empty())
                .unwrap_or(false);
            if queued || last_pass.elapsed() >= interval {
                // Shutdown does not wait for a pass: one cut off loses nothing (each
                // repair, move and deletion is committed by one metadata command, and a
                // shard written for an uncommitted one is an orphan, collected later),
                // while a long pass would hold up the NBD sessions' orderly end.
                let Some(pass) = stop.run_until_cancelled(self.pass(false)).await else {
                    return;
                };
                match pass {
                    Ok(report) => {
                        if report.shards_rebuilt
                            + report.shards_moved
                            + report.garbage_shards_deleted
                            + report.orphans_deleted
                            > 0
                            || report.stripes_degraded > 0
                        {
                            info!(
                                stripes_degraded = report.stripes_degraded,
                                shards_rebuilt = report.shards_rebuilt,
                                shards_moved = report.shards_moved,
                                garbage_shards_deleted = report.garbage_shards_deleted,
                                orphans_deleted = report.orphans_deleted,
                                errors = report.errors,
                                elapsed_ms = report.elapsed_ms,
                                "maintenance pass"
                            );
                        }
                    }
                    Err(e) => warn!(error = %e, "maintenance pass failed"),
                }
                last_pass = Instant::now();
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => last_pass = Instant::now() - interval,
                () = tokio::time::sleep(QUEUE_POLL) => {}
            }
        }
    }

    /// One pass; with `dry_run` it only counts.
    pub async fn pass(&self, dry_run: bool) -> Result<PassReport, GatewayError> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let config = &self.inner.config.maintenance;
        let mut report = PassReport {
            dry_run,
            ..PassReport::default()
        };
        let map = Arc::new(self.inner.meta.cluster_map().await?);

        // Which nodes answer, and which are lost.
        let probes = map
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Gone)
            .map(|n| {
                let map = map.clone();
                async move { (n.id, self.inner.nodes.node_status(&map, n.id).await.is_ok()) }
            });
        let answers = futures::future::join_all(probes).await;
        let mut reachable: BTreeSet<NodeId> = BTreeSet::new();
        let mut lost: BTreeSet<NodeId> = BTreeSet::new();
        {
            let mut since = self.unreachable_since.lock().expect("unreachable lock");
            for (node, ok) in answers {
                if ok {
                    since.remove(&node);
                    reachable.insert(node);
                } else {
                    let first = *since.entry(node).or_insert_with(Instant::now);
                    report.unreachable_nodes.push(node.0);
                    if first.elapsed() >= Duration::from_secs(config.node_out_after_s) {
                        lost.insert(node);
                    }
                }
            }
        }
        for node in map.nodes.values().filter(|n| n.state == NodeState::Gone) {
            lost.insert(node.id);
        }
        // The map says which nodes are out, so that every gateway stops placing shards on
        // them (not only the ones that noticed): a lost node is marked down, and a down
        // node that answers again is back up.
        if !dry_run {
            for info in map.nodes.values() {
                let new_state = match info.state {
                    NodeState::Up if lost.contains(&info.id) => NodeState::Down,
                    NodeState::Down if reachable.contains(&info.id) => NodeState::Up,
                    _ => continue,
                };
                match self.inner.meta.set_node_state(info.id, new_state).await {
                    Ok(_) => {
                        warn!(node_id = %info.id, state = new_state.as_str(), "node state changed by maintenance")
                    }
                    Err(e) => {
                        warn!(node_id = %info.id, error = %e, "could not record the node's state")
                    }
                }
            }
        }
        report.lost_nodes = lost.iter().map(|n| n.0).collect();

        // What every reachable node holds.
        let listings = reachable.iter().map(|node| {
            let map = map.clone();
            async move { (*node, self.inner.nodes.list_all_shards(&map, *node).await) }
        });
        let mut held: HashMap<NodeId, HashMap<ShardId, u64>> = HashMap::new();
        for (node, listing) in futures::future::join_all(listings).await {
            match listing {
                Ok(shards) => {
                    held.insert(
                        node,
                        shards
                            .into_iter()
                            .map(|s| (s.id, s.modified_unix_s))
                            .collect(),
                    );
                }
                Err(e) => {
                    // Without its inventory, treat the node as unavailable for this pass.
                    warn!(node_id = %node, error = %e, "could not list a node's shards");
                    reachable.remove(&node);
                }
            }
        }

        // Walk every current stripe.
        let mut current: HashMap<StripeId, Vec<NodeId>> = HashMap::new();
        let mut tasks: Vec<StripeTask> = Vec::new();
        let mut moves_budget = config.rebalance_moves_per_pass;
        let full = self.inner.nodes.full_nodes();
        let mut after = None;
        loop {
            let (page, more) = self.inner.meta.list_stripes(after, STRIPE_PAGE).await?;
            after = page.last().map(|s| s.stripe.id);
            for ms in page {
                report.stripes_checked += 1;
                current.insert(
                    ms.stripe.id,
                    ms.stripe.shards.iter().map(|s| s.node).collect(),
                );
                let health: Vec<ShardHealth> = ms
                    .stripe
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(idx, loc)| {
                        let id = ShardId {
                            stripe_id: ms.stripe.id,
                            shard_idx: idx as u8,
                        };
                        if lost.contains(&loc.node) || map.node(loc.node).is_none() {
                            ShardHealth::Lost
                        } else if !reachable.contains(&loc.node) {
                            ShardHealth::Unavailable
                        } else if held.get(&loc.node).is_some_and(|h| h.contains_key(&id)) {
                            ShardHealth::Healthy
                        } else {
                            ShardHealth::Missing
                        }
                    })
                    .collect();
                let healthy: Vec<usize> = (0..health.len())
                    .filter(|i| health[*i] == ShardHealth::Healthy)
                    .collect();
                let k = usize::from(ms.policy.n_data_shards);
                if healthy.len() < health.len() {
                    report.stripes_degraded += 1;
                    if report.examples.len() < EXAMPLES {
                        report
                            .examples
                            .push(format!("{}: {health:?}", ms.stripe.id));
                    }
                }
                if healthy.len() < k {
                    report.stripes_unrecoverable += 1;
                    continue;
                }
                if let Some(task) = plan_stripe(
                    &ms,
                    &health,
                    &healthy,
                    &map,
                    &reachable,
                    &lost,
                    &full,
                    &mut moves_budget,
                    &mut report,
                ) {
                    tasks.push(task);
                }
            }
            if !more {
                break;
            }
        }
        self.stats
            .last_degraded
            .store(report.stripes_degraded, Ordering::Relaxed);

        if !dry_run {
            // Do the work, a few stripes at a time.
            self.stats
                .tasks_total
                .store(tasks.len() as u64, Ordering::Relaxed);
            self.stats.tasks_done.store(0, Ordering::Relaxed);
            let concurrency = config.concurrency;
            let results: Vec<Result<TaskOutcome, GatewayError>> = futures::stream::iter(tasks)
                .map(|task| {
                    let map = map.clone();
                    async move {
                        let result = self.execute(&map, task).await;
                        self.stats.tasks_done.fetch_add(1, Ordering::Relaxed);
                        result
                    }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(outcome) => {
                        report.shards_rebuilt += outcome.rebuilt;
                        report.bytes_rebuilt += outcome.rebuilt_bytes;
                        report.shards_moved += outcome.moved;
                        report.bytes_moved += outcome.moved_bytes;
                        report.errors += outcome.errors;
                        for (stripe, moved) in outcome.new_locations {
                            current.insert(stripe, moved);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "stripe maintenance failed; retried next pass");
                        report.errors += 1;
                    }
                }
            }
            self.abort_stale_uploads(&mut report).await?;
            self.run_lifecycle(&mut report).await?;
            self.collect_garbage(&map, &reachable, &lost, &mut report)
                .await?;
            self.delete_orphans(&map, &held, &current, &mut report)
                .await?;
            self.clear_done_repairs(&map, &held, &current).await;
        }

        report.elapsed_ms = started.elapsed().as_millis() as u64;
        if !dry_run {
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            self.stats
                .shards_rebuilt
                .fetch_add(report.shards_rebuilt, Ordering::Relaxed);
            self.stats
                .bytes_rebuilt
                .fetch_add(report.bytes_rebuilt, Ordering::Relaxed);
            self.stats
                .shards_moved
                .fetch_add(report.shards_moved, Ordering::Relaxed);
            self.stats
                .bytes_moved
                .fetch_add(report.bytes_moved, Ordering::Relaxed);
            self.stats
                .garbage_shards_deleted
                .fetch_add(report.garbage_shards_deleted, Ordering::Relaxed);
            self.stats
                .orphans_deleted
                .fetch_add(report.orphans_deleted, Ordering::Relaxed);
            *self.stats.last_report.lock().expect("report lock") = Some(report.clone());
        }
        Ok(report)
    }

    async fn execute(
        &self,
        map: &ClusterMap,
        task: StripeTask,
    ) -> Result<TaskOutcome, GatewayError> {
        let mut outcome = TaskOutcome::default();
        let stripe = &task.stripe.stripe;
        let policy = task.stripe.policy;
        let k = usize::from(policy.n_data_shards);
        let shard_len = shard_len_bytes(stripe.len_bytes, k);
        let mut nodes: Vec<NodeId> = stripe.shards.iter().map(|s| s.node).collect();
        if !task.rebuilds.is_empty() {
            let shards = self.rebuild_shards(map, &task, shard_len).await?;
            for (idx, target) in &task.rebuilds {
                let bytes = shards[*idx].clone();
                let from = stripe.shards[*idx].node;
                match self
                    .place_copy(
                        map,
                        stripe.id,
                        *idx,
                        from,
                        *target,
                        bytes.clone(),
                        stripe.shards[*idx].digest,
                    )
                    .await
                {
                    Ok(()) => {
                        outcome.rebuilt += 1;
                        outcome.rebuilt_bytes += bytes.len() as u64;
                        nodes[*idx] = *target;
                        if *target == from {
                            let _ = self.inner.meta.clear_repair(stripe.id, *idx as u8).await;
                        }
                    }
                    Err(e) => {
                        warn!(stripe_id = %stripe.id, shard_idx = idx, node_id = %target, error = %e, "rebuild failed");
                        outcome.errors += 1;
                    }
                }
            }
        }
        for (idx, from, to) in &task.moves {
            let loc = &stripe.shards[*idx];
            let shard = ShardRef {
                node: *from,
                id: ShardId {
                    stripe_id: stripe.id,
                    shard_idx: *idx as u8,
                },
                digest: &loc.digest,
                shard_len_bytes: shard_len,
            };
            let result = match self.inner.nodes.read_shard(map, shard, 0, 0).await {
                Ok(bytes) => self
                    .place_copy(map, stripe.id, *idx, *from, *to, bytes.clone(), loc.digest)
                    .await
                    .map(|()| bytes.len()),
                Err(e) => Err(GatewayError::Internal(format!("read shard to move: {e}"))),
            };
            match result {
                Ok(n_bytes) => {
                    outcome.moved += 1;
                    outcome.moved_bytes += n_bytes as u64;
                    nodes[*idx] = *to;
                }
                Err(e) => {
                    warn!(stripe_id = %stripe.id, shard_idx = idx, from_node = %from, to_node = %to, error = %e, "move failed");
                    outcome.errors += 1;
                }
            }
        }
        outcome.new_locations.push((stripe.id, nodes));
        Ok(outcome)
    }

    /// Reads k healthy shards whole (verified) and returns all k+m shards.
    async fn rebuild_shards(
        &self,
        map: &ClusterMap,
        task: &StripeTask,
        shard_len: u64,
    ) -> Result<Vec<Bytes>, GatewayError> {
        let stripe = &task.stripe.stripe;
        let policy = task.stripe.policy;
        let k = usize::from(policy.n_data_shards);
        let mut reads = futures::stream::iter(task.healthy.iter().copied())
            .map(|idx| {
                let loc = &stripe.shards[idx];
                let shard = ShardRef {
                    node: loc.node,
                    id: ShardId {
                        stripe_id: stripe.id,
                        shard_idx: idx as u8,
                    },
                    digest: &loc.digest,
                    shard_len_bytes: shard_len,
                };
                async move { (idx, self.inner.nodes.read_shard(map, shard, 0, 0).await) }
            })
            .buffer_unordered(task.healthy.len().max(1));
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; stripe.shards.len()];
        let mut n_ok = 0;
        while let Some((idx, result)) = reads.next().await {
            match result {
                Ok(bytes) => {
                    shards[idx] = Some(bytes.to_vec());
                    n_ok += 1;
                    if n_ok == k {
                        break;
                    }
                }
                Err(e) => {
                    warn!(stripe_id = %stripe.id, shard_idx = idx, error = %e, "repair source unreadable")
                }
            }
        }
        drop(reads);
        if n_ok < k {
            return Err(GatewayError::StripeUnreadable(format!(
                "stripe {}: {n_ok} sources readable, {k} needed to rebuild",
                stripe.id
            )));
        }
        let codec = self.inner.codec(policy)?;
        tokio::task::spawn_blocking(move || {
            codec
                .reconstruct(&mut shards, true)
                .map_err(|e| GatewayError::Internal(format!("reconstruct: {e}")))?;
            Ok(shards
                .into_iter()
                .map(|s| Bytes::from(s.expect("reconstructed")))
                .collect())
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("reconstruct task: {e}")))?
    }

    /// Writes a shard to `to`; if `to` is not where the map has it (`from`), points the
    /// map at `to` (compare and set) and deletes the old copy, or deletes the new copy
    /// when the map changed meanwhile.
    #[allow(clippy::too_many_arguments)] // one copy: stripe, shard, both ends, bytes, digest
    async fn place_copy(
        &self,
        map: &ClusterMap,
        stripe_id: StripeId,
        shard_idx: usize,
        from: NodeId,
        to: NodeId,
        bytes: Bytes,
        digest: lauscha_core::ShardDigest,
    ) -> Result<(), GatewayError> {
        let id = ShardId {
            stripe_id,
            shard_idx: shard_idx as u8,
        };
        match self
            .inner
            .nodes
            .put_shard(map, to, id, bytes.clone(), digest, None)
            .await
        {
            Ok(()) => {}
            // Already there: a previous pass wrote it, then failed to record it, or a write
            // whose commit failed left it (a segment record whose sync failed can be
            // found again at a restart, unchecked). It counts once the node has checked
            // it whole; a corrupt one is quarantined by that check and written again.
            Err(ShardIoError::AlreadyExists(..)) => {
                let whole = match self.inner.nodes.verify_shard(map, to, id).await {
                    Ok(whole) => whole,
                    Err(ShardIoError::NotFound(..)) => false,
                    Err(e) => {
                        return Err(GatewayError::Internal(format!("check existing shard: {e}")));
                    }
                };
                if !whole {
                    self.inner
                        .nodes
                        .put_shard(map, to, id, bytes, digest, None)
                        .await
                        .map_err(|e| GatewayError::Internal(format!("write rebuilt shard: {e}")))?;
                }
            }
            Err(e) => return Err(GatewayError::Internal(format!("write rebuilt shard: {e}"))),
        }
        if to == from {
            return Ok(());
        }
        if let Err(e) = self
            .inner
            .meta
            .move_shard(stripe_id, shard_idx as u8, from, to)
            .await
        {
            // The object changed (deleted, overwritten) or another pass moved the shard:
            // this copy is not referenced.
            let _ = self.inner.nodes.delete_shard(map, to, id).await;
            return Err(e);
        }
        // The old copy, if its node answers, is no longer referenced.
        if map.node(from).is_some() {
            let _ = self.inner.nodes.delete_shard(map, from, id).await;
        }
        Ok(())
    }

    async fn collect_garbage(
        &self,
        map: &ClusterMap,
        reachable: &BTreeSet<NodeId>,
        lost: &BTreeSet<NodeId>,
        report: &mut PassReport,
    ) -> Result<(), GatewayError> {
        let grace_ms = self.inner.config.maintenance.gc_grace_s * 1000;
        let records = self
            .inner
            .meta
            .list_garbage(now_ms().saturating_sub(grace_ms), 1000)
            .await?;
        for record in records {
            // Architecture Invariant: garbage collection never deletes the shards of a
            // stripe something references, nor those of one a newer garbage record lists
            // (before its grace period is over). Commands never reference a stripe again
            // once it went to garbage (metadata refuses them); should one have all the
            // same (a bug, or state written before that refusal existed), its shards stay.
            let ids: Vec<StripeId> = record.stripes.iter().map(|s| s.id).collect();
            let mut kept = HashSet::new();
            for chunk in ids.chunks(1000) {
                let answers = self
                    .inner
                    .meta
                    .stripes_collectable(&record.key, chunk)
                    .await?;
                kept.extend(
                    chunk
                        .iter()
                        .zip(answers)
                        .filter(|(_, collectable)| !*collectable)
                        .map(|(s, _)| *s),
                );
            }
            let mut complete = true;
            for stripe in &record.stripes {
                if kept.contains(&stripe.id) {
                    error!(stripe_id = %stripe.id, origin = %record.origin, "a garbage record lists a stripe that is referenced again or listed by a newer record: its shards are kept");
                    continue;
                }
                for (idx, loc) in stripe.shards.iter().enumerate() {
                    if lost.contains(&loc.node) || map.node(loc.node).is_none() {
                        continue;
                    }
                    if !reachable.contains(&loc.node) {
                        complete = false;
                        continue;
                    }
                    let id = ShardId {
                        stripe_id: stripe.id,
                        shard_idx: idx as u8,
                    };
                    match self.inner.nodes.delete_shard(map, loc.node, id).await {
                        Ok(true) => report.garbage_shards_deleted += 1,
                        Ok(false) => {}
                        Err(_) => complete = false,
                    }
                }
            }
            if complete {
                self.inner.meta.drop_garbage(record.key.clone()).await?;
                report.garbage_records_collected += 1;
            }
        }
        Ok(())
    }

    /// Aborts multipart uploads started more than `abort_uploads_after_s` ago: a client
    /// that crashed mid-upload would otherwise keep its parts' space forever. Their parts
    /// become garbage, collected after the grace period like any other.
    /// Runs every bucket's lifecycle rules once over all its versions and uploads.
    async fn run_lifecycle(&self, report: &mut PassReport) -> Result<(), GatewayError> {
        use lauscha_core::versioning::{
            ListVersionsQuery, MetaQuery, MetaQueryReply, ObjectCommand, VersionView,
        };
        let MetaQueryReply::LifecycleBuckets(buckets) =
            self.inner.meta.query(&MetaQuery::LifecycleBuckets).await?
        else {
            return Err(GatewayError::Internal(
                "LifecycleBuckets answered otherwise".into(),
            ));
        };
        let day_ms = self.inner.config.maintenance.lifecycle_day_s * 1000;
        for (bucket, tenant, rules) in buckets {
            let now = now_ms();
            let mut markers: (Option<String>, Option<String>) = (None, None);
            let mut pending: Vec<VersionView> = Vec::new();
            let mut actions = Vec::new();
            loop {
                let query = MetaQuery::ListVersions(ListVersionsQuery {
                    bucket: bucket.clone(),
                    prefix: String::new(),
                    delimiter: None,
                    key_marker: markers.0.clone(),
                    version_id_marker: markers.1.clone(),
                    max_keys: 1000,
                });
                let MetaQueryReply::Versions(page) = self.inner.meta.query(&query).await? else {
                    return Err(GatewayError::Internal(
                        "ListVersions answered otherwise".into(),
                    ));
                };
                for v in page.versions {
                    if pending.first().is_some_and(|p| p.key != v.key) {
                        actions.extend(crate::lifecycle::plan_key(&rules, &pending, now, day_ms));
                        pending.clear();
                    }
                    pending.push(v);
                }
                if !page.is_truncated {
                    break;
                }
                markers = (page.next_key_marker, page.next_version_id_marker);
            }
            actions.extend(crate::lifecycle::plan_key(&rules, &pending, now, day_ms));
            for action in actions {
                let command = match &action {
                    crate::lifecycle::LifecycleAction::ExpireCurrent { key, if_current } => {
                        ObjectCommand::Delete {
                            bucket: bucket.clone(),
                            tenant: tenant.clone(),
                            key: key.clone(),
                            version_id: None,
                            bypass_governance: false,
                            if_current: Some(if_current.clone()),
                        }
                    }
                    crate::lifecycle::LifecycleAction::RemoveVersion { key, version_id } => {
                        ObjectCommand::Delete {
                            bucket: bucket.clone(),
                            tenant: tenant.clone(),
                            key: key.clone(),
                            version_id: Some(version_id.clone()),
                            bypass_governance: false,
                            if_current: None,
                        }
                    }
                };
                match self.inner.meta.execute(&command).await {
                    Ok(_) => {
                        info!(bucket = %bucket, action = ?action, "lifecycle rule applied");
                        report.lifecycle_actions += 1;
                    }
                    // Changed meanwhile, or protected by Object Lock: not ours to remove.
                    Err(GatewayError::Meta {
                        kind:
                            lauscha_proto::MetaErrorKind::Conflict
                            | lauscha_proto::MetaErrorKind::ObjectLocked,
                        ..
                    }) => {}
                    Err(e) => {
                        warn!(bucket = %bucket, action = ?action, error = %e, "lifecycle action failed");
                        report.errors += 1;
                    }
                }
            }
            self.abort_uploads_by_rules(&bucket, &tenant, &rules, day_ms, report)
                .await?;
        }
        Ok(())
    }

    /// Aborts uploads that lifecycle rules with `AbortIncompleteMultipartUpload` cover.
    async fn abort_uploads_by_rules(
        &self,
        bucket: &lauscha_core::BucketName,
        tenant: &lauscha_core::TenantId,
        rules: &[lauscha_core::versioning::LifecycleRule],
        day_ms: u64,
        report: &mut PassReport,
    ) -> Result<(), GatewayError> {
        let now = now_ms();
        let mut after: Option<(String, String)> = None;
        loop {
            let (uploads, truncated) = self
                .inner
                .meta
                .list_uploads(
                    bucket,
                    tenant,
                    "",
                    after.as_ref().map(|(k, u)| (k.as_str(), u.as_str())),
                    1000,
                )
                .await?;
            for upload in &uploads {
                let due = rules.iter().any(|r| {
                    r.enabled
                        && upload.key.starts_with(&r.prefix)
                        && r.abort_incomplete_upload_days
                            .is_some_and(|d| upload.initiated_ms + u64::from(d) * day_ms <= now)
                });
                if !due {
                    continue;
                }
                let name = crate::meta_client::UploadName {
                    bucket,
                    tenant,
                    key: &upload.key,
                    upload_id: &upload.upload_id,
                };
                self.abort_upload(&name, "a lifecycle rule", report).await;
            }
            match uploads.last() {
                Some(last) if truncated => {
                    after = Some((last.key.clone(), last.upload_id.clone()));
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Aborts one upload for `why`, counting it; one completed or aborted by its client
    /// meanwhile is fine.
    async fn abort_upload(
        &self,
        name: &crate::meta_client::UploadName<'_>,
        why: &str,
        report: &mut PassReport,
    ) {
        match self.inner.meta.abort_upload(name).await {
            Ok(()) => {
                info!(bucket = %name.bucket, key = %name.key, upload_id = %name.upload_id, why, "multipart upload aborted");
                report.uploads_aborted += 1;
            }
            Err(GatewayError::Meta {
                kind: lauscha_proto::MetaErrorKind::NoSuchUpload,
                ..
            }) => {}
            Err(e) => {
                warn!(bucket = %name.bucket, upload_id = %name.upload_id, why, error = %e, "could not abort an upload");
                report.errors += 1;
            }
        }
    }

    async fn abort_stale_uploads(&self, report: &mut PassReport) -> Result<(), GatewayError> {
        let after_ms = self.inner.config.maintenance.abort_uploads_after_s * 1000;
        let stale = self
            .inner
            .meta
            .list_stale_uploads(now_ms().saturating_sub(after_ms), 1000)
            .await?;
        for (bucket, upload) in stale {
            let name = crate::meta_client::UploadName {
                bucket: &bucket,
                tenant: &upload.tenant,
                key: &upload.key,
                upload_id: &upload.upload_id,
            };
            self.abort_upload(&name, "it was left open too long", report)
                .await;
        }
        Ok(())
    }

    /// Deletes shards no stripe map points at, once older than the orphan grace period:
    /// uploads that never committed, and copies left behind by moves that did not finish.
    async fn delete_orphans(
        &self,
        map: &ClusterMap,
        held: &HashMap<NodeId, HashMap<ShardId, u64>>,
        current: &HashMap<StripeId, Vec<NodeId>>,
        report: &mut PassReport,
    ) -> Result<(), GatewayError> {
        let cutoff_s =
            now_ms().saturating_sub(self.inner.config.maintenance.orphan_grace_s * 1000) / 1000;
        let mut candidates: Vec<(NodeId, ShardId)> = Vec::new();
        for (node, shards) in held {
            for (id, modified_s) in shards {
                if *modified_s > cutoff_s {
                    continue;
                }
                match current.get(&id.stripe_id) {
                    Some(nodes) if nodes.get(usize::from(id.shard_idx)) == Some(node) => {}
                    _ => candidates.push((*node, *id)),
                }
            }
        }
        // A stripe not in this pass's list may be garbage waiting for its grace period,
        // or committed since the list was read: ask metadata before deleting.
        let unknown: Vec<StripeId> = candidates
            .iter()
            .filter(|(_, id)| !current.contains_key(&id.stripe_id))
            .map(|(_, id)| id.stripe_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut known: HashSet<StripeId> = HashSet::new();
        for chunk in unknown.chunks(1000) {
            let answers = self.inner.meta.stripes_known(chunk).await?;
            known.extend(
                chunk
                    .iter()
                    .zip(answers)
                    .filter(|(_, k)| *k)
                    .map(|(s, _)| *s),
            );
        }
        for (node, id) in candidates {
            if known.contains(&id.stripe_id) && !current.contains_key(&id.stripe_id) {
                continue;
            }
            if let Ok(true) = self.inner.nodes.delete_shard(map, node, id).await {
                report.orphans_deleted += 1;
            }
        }
        Ok(())
    }

    /// Clears queued repairs whose shard is where the map says and present.
    async fn clear_done_repairs(
        &self,
        map: &ClusterMap,
        held: &HashMap<NodeId, HashMap<ShardId, u64>>,
        current: &HashMap<StripeId, Vec<NodeId>>,
    ) {
        let Ok(queued) = self.inner.meta.list_repairs(10_000).await else {
            return;
        };
        for (stripe, idx) in queued {
            let id = ShardId {
                stripe_id: stripe,
                shard_idx: idx,
            };
            let done = match current.get(&stripe).and_then(|n| n.get(usize::from(idx))) {
                // Stripe no longer current: nothing to repair.
                None => true,
                Some(node) => {
                    held.get(node).is_some_and(|h| h.contains_key(&id))
                        || self
                            .inner
                            .nodes
                            .verify_shard(map, *node, id)
                            .await
                            .unwrap_or(false)
                }
            };
            if done {
                let _ = self.inner.meta.clear_repair(stripe, idx).await;
            }
        }
    }
}

#[derive(Default)]
struct TaskOutcome {
    rebuilt: u64,
    rebuilt_bytes: u64,
    moved: u64,
    moved_bytes: u64,
    errors: u64,
    new_locations: Vec<(StripeId, Vec<NodeId>)>,
}

/// Decides what a stripe needs; pure over what the pass observed.
#[allow(clippy::too_many_arguments)] // the pass's whole view, passed explicitly
fn plan_stripe(
    ms: &MaintainedStripe,
    health: &[ShardHealth],
    healthy: &[usize],
    map: &ClusterMap,
    reachable: &BTreeSet<NodeId>,
    lost: &BTreeSet<NodeId>,
    full: &BTreeSet<NodeId>,
    moves_budget: &mut usize,
    report: &mut PassReport,
) -> Option<StripeTask> {
    let stripe = &ms.stripe;
    let policy: PlacementPolicy = ms.policy;
    let node_of = |i: usize| stripe.shards[i].node;
    let accepts = |n: NodeId| {
        map.node(n)
            .is_some_and(|info| info.state.accepts_new_shards())
    };
    let mut rebuilds = Vec::new();
    let mut moves = Vec::new();
    // Shards that need a node other than their own: lost ones, missing ones whose node no
    // longer takes shards, healthy ones on a draining node.
    let mut fixed: Vec<Option<NodeId>> = (0..health.len()).map(|i| Some(node_of(i))).collect();
    let mut relocate = Vec::new();
    for (i, h) in health.iter().enumerate() {
        match h {
            ShardHealth::Missing if accepts(node_of(i)) && !full.contains(&node_of(i)) => {
                rebuilds.push((i, node_of(i)))
            }
            ShardHealth::Missing | ShardHealth::Lost => {
                fixed[i] = None;
                relocate.push((i, false));
            }
            ShardHealth::Healthy if !accepts(node_of(i)) => {
                fixed[i] = None;
                relocate.push((i, true));
            }
            ShardHealth::Healthy | ShardHealth::Unavailable => {}
        }
    }
    if !relocate.is_empty() {
        let unreachable: BTreeSet<NodeId> = map
            .nodes
            .keys()
            .copied()
            .filter(|n| !reachable.contains(n) || lost.contains(n) || full.contains(n))
            .collect();
        match place_with(stripe.id, &policy, map, &fixed, &unreachable) {
            Ok(placement) => {
                for (i, is_move) in relocate {
                    let to = placement.nodes[i];
                    if is_move {
                        moves.push((i, node_of(i), to));
                    } else {
                        rebuilds.push((i, to));
                    }
                }
            }
            Err(e) => {
                warn!(stripe_id = %stripe.id, error = %e, "no node to rebuild or move shards onto");
                report.errors += 1;
            }
        }
    } else if rebuilds.is_empty()
        && health.iter().all(|h| *h == ShardHealth::Healthy)
        && *moves_budget > 0
    {
        // A healthy stripe: bring it to where placement puts it (a new node fills up).
        let current: Vec<NodeId> = (0..health.len()).map(node_of).collect();
        if let Ok(planned) = rebalance_moves(stripe.id, &policy, map, &current) {
            for mv in planned {
                if !reachable.contains(&mv.to) || full.contains(&mv.to) {
                    continue;
                }
                if *moves_budget == 0 {
                    report.moves_deferred += 1;
                    continue;
                }
                *moves_budget -= 1;
                moves.push((mv.shard_idx, mv.from, mv.to));
            }
        }
    }
    if rebuilds.is_empty() && moves.is_empty() {
        return None;
    }
    Some(StripeTask {
        stripe: ms.clone(),
        rebuilds,
        moves,
        healthy: healthy.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use lauscha_core::model::{ShardLocation, Stripe};
    use lauscha_core::{NodeInfo, ShardDigest, SpreadLevel};

    use super::*;

    /// Six nodes in two sites (1-3 in a, 4-6 in b) plus `extra` more in site b.
    fn map(extra: u32) -> ClusterMap {
        let mut map = ClusterMap::default();
        for id in 1..=6 + extra {
            map.upsert(NodeInfo {
                id: NodeId(id),
                site: if id <= 3 { "a" } else { "b" }.into(),
                host: format!("h{id}"),
                addr: format!("127.0.0.1:{id}"),
                capacity_bytes: 1 << 40,
                state: NodeState::Up,
            });
        }
        map
    }

    fn stripe_on(nodes: &[u32]) -> MaintainedStripe {
        MaintainedStripe {
            owner: "bucket/k".into(),
            stripe: Stripe {
                id: StripeId(7),
                len_bytes: 4096,
                shards: nodes
                    .iter()
                    .map(|n| ShardLocation {
                        node: NodeId(*n),
                        digest: ShardDigest([0; 32]),
                    })
                    .collect(),
            },
            policy: PlacementPolicy {
                n_data_shards: 4,
                n_parity_shards: 2,
                spread: SpreadLevel::Node,
            },
        }
    }

    fn plan(
        ms: &MaintainedStripe,
        health: &[ShardHealth],
        map: &ClusterMap,
        full: &[u32],
    ) -> Option<StripeTask> {
        let healthy: Vec<usize> = (0..health.len())
            .filter(|i| health[*i] == ShardHealth::Healthy)
            .collect();
        // As a pass sees it: the nodes of lost shards are lost and do not answer.
        let lost: BTreeSet<NodeId> = (0..health.len())
            .filter(|i| health[*i] == ShardHealth::Lost)
            .map(|i| ms.stripe.shards[i].node)
            .collect();
        let reachable: BTreeSet<NodeId> = map
            .nodes
            .keys()
            .copied()
            .filter(|n| !lost.contains(n))
            .collect();
        let full: BTreeSet<NodeId> = full.iter().map(|n| NodeId(*n)).collect();
        plan_stripe(
            ms,
            health,
            &healthy,
            map,
            &reachable,
            &lost,
            &full,
            &mut 10,
            &mut PassReport::default(),
        )
    }

    use ShardHealth::{Healthy, Lost, Missing, Unavailable};

    #[test]
    fn a_missing_shard_is_rebuilt_where_it_belongs() {
        let map = map(0);
        let ms = stripe_on(&[1, 2, 3, 4, 5, 6]);
        let health = [Healthy, Missing, Healthy, Healthy, Healthy, Healthy];
        let task = plan(&ms, &health, &map, &[]).unwrap();
        assert_eq!(task.rebuilds, [(1, NodeId(2))]);
        assert!(task.moves.is_empty());
    }

    #[test]
    fn a_missing_shard_of_a_full_node_goes_to_another_node() {
        let map = map(1);
        let ms = stripe_on(&[1, 2, 3, 4, 5, 6]);
        let health = [Healthy, Missing, Healthy, Healthy, Healthy, Healthy];
        let task = plan(&ms, &health, &map, &[2]).unwrap();
        assert_eq!(task.rebuilds, [(1, NodeId(7))]);
    }

    #[test]
    fn lost_shards_are_rebuilt_on_nodes_outside_the_stripe() {
        let map = map(2);
        let ms = stripe_on(&[1, 2, 3, 4, 5, 6]);
        let health = [Lost, Healthy, Healthy, Healthy, Lost, Healthy];
        let task = plan(&ms, &health, &map, &[]).unwrap();
        let targets: BTreeSet<NodeId> = task.rebuilds.iter().map(|(_, n)| *n).collect();
        assert_eq!(task.rebuilds.len(), 2);
        assert_eq!(targets, BTreeSet::from([NodeId(7), NodeId(8)]));
        assert_eq!(task.healthy, [1, 2, 3, 5]);
    }

    #[test]
    fn an_unavailable_shard_is_left_alone() {
        let map = map(1);
        let ms = stripe_on(&[1, 2, 3, 4, 5, 6]);
        let health = [Unavailable, Healthy, Healthy, Healthy, Healthy, Healthy];
        assert!(plan(&ms, &health, &map, &[]).is_none());
    }

    #[test]
    fn a_draining_node_has_its_shard_copied_away() {
        let mut map = map(1);
        let mut node = map.node(NodeId(3)).unwrap().clone();
        node.state = NodeState::Draining;
        map.upsert(node);
        let ms = stripe_on(&[1, 2, 3, 4, 5, 6]);
        let task = plan(&ms, &[Healthy; 6], &map, &[]).unwrap();
        assert_eq!(task.moves, [(2, NodeId(3), NodeId(7))]);
        assert!(task.rebuilds.is_empty());
    }

    #[test]
    fn a_healthy_stripe_where_placement_puts_it_needs_nothing() {
        let map = map(0);
        let placed = lauscha_core::place(StripeId(7), &stripe_on(&[]).policy, &map).unwrap();
        let nodes: Vec<u32> = placed.nodes.iter().map(|n| n.0).collect();
        let ms = stripe_on(&nodes);
        assert!(plan(&ms, &[Healthy; 6], &map, &[]).is_none());
    }
}
