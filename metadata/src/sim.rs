//! The simulation tier: a whole metadata Raft group in one process, on virtual time, with
//! a seeded network that partitions, isolates, drops and delays messages.
//!
//! Each voter is a real [`MetaNode`] (RocksDB log store and state machine, the real
//! `apply`); only the transport is replaced: an RPC is a direct call into the target's
//! Raft through a [`Router`] that consults the fault state on the way there and on the
//! way back (a reply can be lost after the request took effect). Clients use the
//! storage-node register of the cluster map as a key-value register: a write is
//! `UpsertNode` with a unique capacity, a read is a linearizable [`MetaNode::read`].
//!
//! Checked during and after the run:
//! - at most one leader per term (sampled every 10 ms of virtual time);
//! - committed entries never change: every entry up to a voter's last applied index is
//!   compared, byte for byte, with what any voter had at that index at any earlier
//!   sample;
//! - the client history, returned for the caller's per-key linearizability checker.
//!
//! Run it on a current-thread runtime with paused time (`tokio::runtime::Builder::
//! new_current_thread().enable_all().start_paused(true)`): timers then cost nothing and
//! a 20 s run takes a fraction of that. The fault schedule and the workload are functions
//! of the seed; openraft's own election jitter and RocksDB's threads are not, so a seed
//! repeats its faults, not every interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lauscha_core::{NodeId, NodeInfo, NodeState};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogReader;
use openraft::{BasicNode, OptionalSend, ServerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::command::{MetaCommand, MetaError, Proposal};
use crate::node::{MetaNode, MetaNodeOptions, propose};
use crate::raft_types::{Raft, Snapshot, SnapshotFile, TypeConfig, Vote};
use crate::store::LogStore;

/// What a simulation run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the fault schedule and the workload.
    pub seed: u64,
    /// Voters (3 or 5).
    pub voters: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Registers (keys).
    pub keys: u64,
    /// Virtual time with faults.
    pub faulty_for: Duration,
    /// A deliberately wrong client, to prove the checkers fail: reads the voter's local
    /// state without asking Raft whether it is current.
    pub stale_reads: bool,
}

impl SimConfig {
    /// The configuration the chaos suite runs: 3 voters, 3 clients, 4 keys, 6 s of
    /// faults (about 8 fault changes).
    pub fn standard(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            voters: 3,
            clients: 3,
            keys: 4,
            faulty_for: Duration::from_secs(6),
            stale_reads: false,
        }
    }
}

/// One client operation on a register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOp {
    /// The register.
    pub key: u64,
    /// Virtual ns since the run started.
    pub invoke_ns: u64,
    /// `None`: no answer (a write that may or may not have happened).
    pub complete_ns: Option<u64>,
    /// What it did.
    pub kind: SimOpKind,
}

/// A register operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimOpKind {
    /// Wrote this value.
    Write(u64),
    /// Read this value (`None`: never written).
    Read(Option<u64>),
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct SimOutcome {
    /// The client history (operations refused before they could take effect are left out).
    pub ops: Vec<SimOp>,
    /// Safety violations seen by the run itself (two leaders in a term, a committed entry
    /// that changed).
    pub violations: Vec<String>,
    /// Faults injected.
    pub faults: u64,
    /// Terms in which a leader was seen.
    pub terms_with_leader: u64,
    /// Entries committed (the highest applied index at the end).
    pub committed: u64,
}

#[derive(Default)]
struct FaultState {
    /// Directed links that lose everything.
    blocked: BTreeSet<(u64, u64)>,
    /// Percent of messages lost on every link.
    loss_percent: u32,
    /// Largest one-way delay.
    max_delay_ms: u64,
}

/// Routes RPCs between the simulated voters, through the fault state.
#[derive(Clone)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, Raft>>>,
    faults: Arc<Mutex<FaultState>>,
    rng: Arc<Mutex<StdRng>>,
}

impl Router {
    /// One hop `from -> to`: delayed, and lost when the link is down or the dice say so.
    async fn hop(&self, from: u64, to: u64) -> Result<(), RPCError<TypeConfig>> {
        let (lost, delay_ms) = {
            let faults = self.faults.lock().expect("fault state");
            let mut rng = self.rng.lock().expect("rng");
            let lost = faults.blocked.contains(&(from, to))
                || rng.random_range(0..100) < faults.loss_percent;
            (lost, rng.random_range(0..=faults.max_delay_ms))
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if lost {
            // A lost message looks like silence, then a timeout.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "simulated loss {from} -> {to}"
            ))));
        }
        Ok(())
    }

    fn raft(&self, id: u64) -> Result<Raft, RPCError<TypeConfig>> {
        self.nodes
            .lock()
            .expect("nodes")
            .get(&id)
            .cloned()
            .ok_or_else(|| RPCError::Unreachable(Unreachable::from_string("not started")))
    }
}

struct SimNetwork {
    router: Router,
    from: u64,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimClient {
        SimClient {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

struct SimClient {
    router: Router,
    from: u64,
    to: u64,
}

fn remote(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

impl RaftNetworkV2<TypeConfig> for SimClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.router.hop(self.from, self.to).await?;
        let reply = self
            .router
            .raft(self.to)?
            .append_entries(rpc)
            .await
            .map_err(remote)?;
        self.router.hop(self.to, self.from).await?;
        Ok(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.router.hop(self.from, self.to).await?;
        let reply = self.router.raft(self.to)?.vote(rpc).await.map_err(remote)?;
        self.router.hop(self.to, self.from).await?;
        Ok(reply)
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // A run writes far fewer entries than the snapshot threshold (20,000), so no log
        // is ever purged and a follower always catches up by appends.
        Err(StreamingError::from(remote(
            "the simulation transfers no snapshots (none is taken)",
        )))
    }
}

fn register_write(key: u64, value: u64) -> MetaCommand {
    MetaCommand::UpsertNode {
        node: NodeInfo {
            id: NodeId(key as u32),
            site: "sim".into(),
            host: format!("host-{key}"),
            addr: format!("sim-{key}:1"),
            capacity_bytes: value,
            state: NodeState::Up,
        },
    }
}

fn voter_of(addr: &str) -> Option<u64> {
    addr.strip_prefix("sim-")?.parse().ok()
}

/// Runs one seed with voters' data under `dir` (tmpfs is best). See the module docs for
/// the runtime it needs.
pub async fn run(config: &SimConfig, dir: &Path) -> Result<SimOutcome, MetaError> {
    let start = Instant::now();
    let now_ns = move || start.elapsed().as_nanos() as u64;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let router = Router {
        nodes: Arc::default(),
        faults: Arc::default(),
        rng: Arc::new(Mutex::new(StdRng::seed_from_u64(config.seed ^ 0x0e7))),
    };
    let mut nodes = BTreeMap::new();
    for id in (2..=config.voters).chain([1]) {
        let options = MetaNodeOptions {
            node_id: id,
            data_dir: dir.join(format!("voter-{id}")),
            advertise: format!("sim-{id}"),
            bootstrap: id == 1,
            initial_voters: (2..=config.voters)
                .map(|i| (i, format!("sim-{i}")))
                .collect(),
        };
        let network = SimNetwork {
            router: router.clone(),
            from: id,
        };
        let node = MetaNode::start_with_network(options, network).await?;
        router
            .nodes
            .lock()
            .expect("nodes")
            .insert(id, node.raft.clone());
        nodes.insert(id, node);
    }
    let nodes = Arc::new(nodes);
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Leaders per term, sampled.
    let leaders = {
        let (nodes, violations, done) = (nodes.clone(), violations.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for (id, node) in nodes.iter() {
                    let m = node.raft.metrics().borrow_watched().clone();
                    if m.state == ServerState::Leader {
                        let first = *seen.entry(m.current_term).or_insert(*id);
                        if first != *id {
                            violations.lock().expect("violations").push(format!(
                                "two leaders in term {}: {first} and {id}",
                                m.current_term
                            ));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen.len() as u64
        })
    };

    // Committed entries, compared across voters and over time.
    let committed: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let check_committed = {
        let (nodes, committed, violations) = (nodes.clone(), committed.clone(), violations.clone());
        move || {
            let (nodes, committed, violations) =
                (nodes.clone(), committed.clone(), violations.clone());
            async move {
                for (id, node) in nodes.iter() {
                    let applied = node
                        .raft
                        .metrics()
                        .borrow_watched()
                        .last_applied
                        .map_or(0, |l| l.index);
                    if applied == 0 {
                        continue;
                    }
                    let mut reader = LogStore::new(node.db()?);
                    let entries = reader
                        .try_get_log_entries(1..=applied)
                        .await
                        .map_err(|e| MetaError::Internal(e.to_string()))?;
                    let mut committed = committed.lock().expect("committed");
                    for entry in entries {
                        let bytes = crate::value::encode(&entry);
                        let index = entry.log_id.index;
                        match committed.get(&index) {
                            Some(earlier) if *earlier != bytes => {
                                violations
                                    .lock()
                                    .expect("violations")
                                    .push(format!("committed entry {index} differs on voter {id}"));
                            }
                            Some(_) => {}
                            None => {
                                committed.insert(index, bytes);
                            }
                        }
                    }
                }
                Ok::<(), MetaError>(())
            }
        }
    };
    let sampler = {
        let (check, done) = (check_committed.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                check().await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok::<(), MetaError>(())
        })
    };

    // Faults, on a schedule from the seed.
    let fault_seed = rng.random::<u64>();
    let faults_task = {
        let router = router.clone();
        let voters = config.voters;
        let until = start + config.faulty_for;
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(fault_seed);
            let mut n = 0u64;
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
                let mut f = router.faults.lock().expect("fault state");
                n += 1;
                match rng.random_range(0..6) {
                    0 => f.blocked.clear(),
                    1 => {
                        let victim = rng.random_range(1..=voters);
                        for other in (1..=voters).filter(|o| *o != victim) {
                            f.blocked.insert((victim, other));
                            f.blocked.insert((other, victim));
                        }
                    }
                    2 => {
                        let from = rng.random_range(1..=voters);
                        let to = rng.random_range(1..=voters);
                        if from != to {
                            f.blocked.insert((from, to));
                        }
                    }
                    3 => f.loss_percent = [0, 5, 20, 50][rng.random_range(0..4)],
                    4 => f.max_delay_ms = [0, 5, 50, 300][rng.random_range(0..4)],
                    _ => {
                        // A split: one side against the rest.
                        f.blocked.clear();
                        let cut = rng.random_range(1..voters);
                        for a in 1..=cut {
                            for b in cut + 1..=voters {
                                f.blocked.insert((a, b));
                                f.blocked.insert((b, a));
                            }
                        }
                    }
                }
            }
            *router.faults.lock().expect("fault state") = FaultState::default();
            n
        })
    };

    // Clients.
    let mut client_tasks = Vec::new();
    for client in 0..config.clients {
        let nodes = nodes.clone();
        let keys = config.keys;
        let voters = config.voters;
        let until = start + config.faulty_for;
        let stale_reads = config.stale_reads;
        let mut rng = StdRng::seed_from_u64(rng.random());
        client_tasks.push(tokio::spawn(async move {
            let mut ops = Vec::new();
            let mut target = 1 + u64::from(client) % voters;
            let mut seq = 0u64;
            while Instant::now() < until {
                let key = rng.random_range(1..=keys);
                let node = &nodes[&target];
                let invoke_ns = now_ns();
                if rng.random_bool(0.5) {
                    seq += 1;
                    let value = (u64::from(client) + 1) << 32 | seq;
                    let proposal = Proposal {
                        request_id: None,
                        now_ms: 0,
                        command: register_write(key, value),
                    };
                    let result = propose(&node.raft, proposal).await;
                    let complete_ns = match result {
                        Ok(_) => Some(now_ns()),
                        // Refused before it was appended: it never happened.
                        Err(MetaError::NotLeader { leader }) => {
                            target = leader
                                .as_deref()
                                .and_then(voter_of)
                                .unwrap_or_else(|| rng.random_range(1..=voters));
                            continue;
                        }
                        Err(_) => None,
                    };
                    ops.push(SimOp {
                        key,
                        invoke_ns,
                        complete_ns,
                        kind: SimOpKind::Write(value),
                    });
                    if complete_ns.is_none() {
                        target = rng.random_range(1..=voters);
                    }
                } else {
                    let query = move |kv: &crate::store::RocksKv<'_>| {
                        Ok::<_, crate::kv::KvError>(
                            crate::query::cluster_map(kv)?
                                .node(NodeId(key as u32))
                                .map(|n| n.capacity_bytes),
                        )
                    };
                    let read: Result<Option<u64>, MetaError> = if stale_reads {
                        node.db().and_then(|db| {
                            query(&crate::store::RocksKv::new(&db))
                                .map_err(|e| MetaError::Internal(e.to_string()))
                        })
                    } else {
                        node.read(query).await
                    };
                    match read {
                        Ok(value) => ops.push(SimOp {
                            key,
                            invoke_ns,
                            complete_ns: Some(now_ns()),
                            kind: SimOpKind::Read(value),
                        }),
                        Err(MetaError::NotLeader { leader }) => {
                            target = leader
                                .as_deref()
                                .and_then(voter_of)
                                .unwrap_or_else(|| rng.random_range(1..=voters));
                        }
                        Err(_) => target = rng.random_range(1..=voters),
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
            ops
        }));
    }

    let mut outcome = SimOutcome::default();
    for task in client_tasks {
        outcome
            .ops
            .extend(task.await.map_err(|e| MetaError::Internal(e.to_string()))?);
    }
    outcome.faults = faults_task
        .await
        .map_err(|e| MetaError::Internal(e.to_string()))?;

    // Healed: every voter must catch up, and a final read of every key goes in the
    // history.
    let deadline = Instant::now() + Duration::from_secs(30);
    for key in 1..=config.keys {
        loop {
            // Asked each time: leadership may still move right after the faults clear.
            let leader = nodes[&1].wait_for_leader(Duration::from_secs(30)).await?;
            let invoke_ns = now_ns();
            let read = nodes[&leader]
                .read(move |kv| {
                    Ok(crate::query::cluster_map(kv)?
                        .node(NodeId(key as u32))
                        .map(|n| n.capacity_bytes))
                })
                .await;
            match read {
                Ok(value) => {
                    outcome.ops.push(SimOp {
                        key,
                        invoke_ns,
                        complete_ns: Some(now_ns()),
                        kind: SimOpKind::Read(value),
                    });
                    break;
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let leader = nodes[&1].wait_for_leader(Duration::from_secs(30)).await?;
    let last = nodes[&leader]
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map_or(0, |l| l.index);
    for node in nodes.values() {
        node.raft
            .wait(Some(Duration::from_secs(30)))
            .applied_index_at_least(Some(last), "catch up after healing")
            .await
            .map_err(|e| MetaError::Unavailable(format!("a voter did not catch up: {e}")))?;
    }
    check_committed().await?;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler
        .await
        .map_err(|e| MetaError::Internal(e.to_string()))??;
    outcome.terms_with_leader = leaders
        .await
        .map_err(|e| MetaError::Internal(e.to_string()))?;
    outcome.committed = last;
    outcome.violations = violations.lock().expect("violations").clone();
    for node in nodes.values() {
        let _ = node.raft.shutdown().await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_seed(seed: u64) -> SimOutcome {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let config = SimConfig {
            faulty_for: Duration::from_secs(5),
            ..SimConfig::standard(seed)
        };
        runtime.block_on(run(&config, dir.path())).unwrap()
    }

    #[test]
    fn a_few_seeds_commit_and_stay_safe() {
        for seed in 0..3 {
            let outcome = run_seed(seed);
            assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
            assert!(outcome.committed > 3, "seed {seed}: nothing committed");
            assert!(outcome.ops.iter().any(|o| o.complete_ns.is_some()));
        }
    }
}
