//! The simulation tier: the metadata Raft group under turmoil, on simulated time and a
//! simulated network, with voters that crash and start again.
//!
//! Each voter is a turmoil host running openraft with the real command logic (`apply`)
//! on the in-memory store ([`MemLogStore`], [`MemStateMachine`]: the same storage traits
//! as RocksDB). Voters and clients talk over turmoil's TCP with length-prefixed messages,
//! one connection per request, so a message lost to a fault is a timeout, as on a real
//! network. A seeded schedule partitions (whole voters, one direction, one side against
//! the other), makes links flap and slow, and crashes voters: a crash drops everything
//! the voter had in memory except its [`MemDisk`], and the voter starts again from there
//! (silent to vote requests for one leader lease, as a real voter: `VoteSilence`).
//!
//! Clients use the storage-node register of the cluster map as a key-value register: a
//! write is `UpsertNode` with a unique capacity, a read asks Raft whether the voter may
//! answer (leader lease, else read index) and then reads its state.
//!
//! Checked during and after the run:
//! - at most one leader per term (after every 1 ms step);
//! - committed entries never change: every entry up to a voter's last applied index is
//!   compared, byte for byte, with what any voter had at that index before;
//! - state machines agree: a voter's state after applying index i is compared, byte for
//!   byte, with any voter's state after i seen before (every 100 ms and at the end);
//! - every voter catches up once the faults end;
//! - nothing inside a voter panics (turmoil would swallow a panic of a spawned task);
//! - the client history, returned for the caller's per-key linearizability checker.
//!
//! The fault schedule, the workload and turmoil's network are functions of the seed;
//! openraft draws its election timeouts from its own random source, so a seed repeats
//! its faults, not every interleaving.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lauscha_core::{NodeId, NodeInfo, NodeState};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, ServerState, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use crate::command::{MetaCommand, MetaError, Proposal};
use crate::node::{VoteSilence, applied_index, ensure_linearizable, propose};
use crate::raft_types::{MemSnapshot, SnapshotMeta, TypeConfig, Vote};
use crate::store::{MemDisk, MemLogStore, MemState, MemStateMachine};
use crate::value;

/// What a simulation run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the fault schedule, the workload and the network.
    pub seed: u64,
    /// Voters (3 or 5).
    pub voters: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Registers (keys).
    pub keys: u64,
    /// Simulated time with faults.
    pub faulty_for: Duration,
    /// A deliberately wrong server, to prove the checkers fail: answers reads from its
    /// local state without asking Raft whether it is current.
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
    /// Simulated ns since the run started.
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
    /// that changed, a voter that never caught up).
    pub violations: Vec<String>,
    /// Faults injected.
    pub faults: u64,
    /// Voter crashes among them.
    pub crashes: u64,
    /// Terms in which a leader was seen.
    pub terms_with_leader: u64,
    /// Entries committed (the highest applied index at the end).
    pub committed: u64,
    /// Snapshots installed from a leader (a voter too far behind for the log).
    pub snapshots_installed: u64,
}

/// The port every voter listens on.
const PORT: u16 = 7000;

/// How long a client waits for an answer before counting its operation as unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message; a snapshot of this group is a few KiB.
const MAX_MESSAGE_BYTES: u32 = 16 << 20;

/// How long, after the faults end, voters have to catch up and the final reads to finish.
const HEAL_WITHIN: Duration = Duration::from_secs(40);

type MemRaft = openraft::Raft<TypeConfig, MemStateMachine>;

fn host_name(voter: u64) -> String {
    format!("voter-{voter}")
}

fn voter_of(addr: &str) -> Option<u64> {
    addr.strip_prefix("voter-")?.parse().ok()
}

/// A message to a voter.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    Write {
        key: u64,
        value: u64,
    },
    Read {
        key: u64,
    },
}

/// A voter's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    Written,
    Read(Option<u64>),
    /// Refused before it took effect; the leader, if known.
    NotLeader(Option<u64>),
    /// Failed; for a write, it may or may not have happened.
    Failed(String),
}

async fn send_message<T: Serialize>(stream: &mut TcpStream, message: &T) -> std::io::Result<()> {
    let bytes = value::encode(message);
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l <= MAX_MESSAGE_BYTES)
        .ok_or_else(|| std::io::Error::other("message too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    stream.flush().await
}

async fn receive_message<T: serde::de::DeserializeOwned>(
    stream: &mut TcpStream,
) -> std::io::Result<T> {
    let len = stream.read_u32().await?;
    if len > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::other(format!("message of {len} bytes")));
    }
    let mut bytes = vec![0; len as usize];
    stream.read_exact(&mut bytes).await?;
    value::decode(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// One request and its answer on a new connection, within `timeout`.
async fn call(to: u64, request: &Request, timeout: Duration) -> Result<Reply, String> {
    let exchange = async {
        let mut stream = TcpStream::connect((host_name(to), PORT))
            .await
            .map_err(|e| format!("connect to voter {to}: {e}"))?;
        send_message(&mut stream, request)
            .await
            .map_err(|e| format!("send to voter {to}: {e}"))?;
        receive_message::<Reply>(&mut stream)
            .await
            .map_err(|e| format!("answer of voter {to}: {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer from voter {to} within {timeout:?}"))?
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

struct SimNetwork;

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimClient {
        SimClient { to: target }
    }
}

struct SimClient {
    to: u64,
}

impl SimClient {
    async fn rpc(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<TypeConfig>> {
        match call(self.to, &request, option.hard_ttl()).await {
            Ok(Reply::Failed(e)) => Err(unreachable(format!("voter {}: {e}", self.to))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unreachable(e)),
        }
    }
}

fn unexpected(reply: Reply) -> RPCError<TypeConfig> {
    unreachable(format!("unexpected reply {reply:?}"))
}

impl RaftNetworkV2<TypeConfig> for SimClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: MemSnapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        match self.rpc(request, &option).await? {
            Reply::Snapshot(r) => Ok(r),
            other => Err(unexpected(other).into()),
        }
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

fn register_read(state: &Mutex<MemState>, key: u64) -> Result<Option<u64>, String> {
    let state = state.lock().map_err(|e| e.to_string())?;
    Ok(crate::query::cluster_map(&state.kv)
        .map_err(|e| e.to_string())?
        .node(NodeId(key as u32))
        .map(|n| n.capacity_bytes))
}

/// A running voter as the checkers see it.
#[derive(Clone)]
struct Running {
    raft: MemRaft,
    disk: MemDisk,
    state: Arc<Mutex<MemState>>,
}

/// The voters that are up, by id; a voter registers itself when its software starts and
/// the driver removes it when it crashes.
type Registry = Arc<Mutex<BTreeMap<u64, Running>>>;

/// A voter's software: Raft on its disk, and a listener for Raft and client requests.
async fn voter(
    id: u64,
    voters: u64,
    disk: MemDisk,
    registry: Registry,
    stale_reads: bool,
    installs: Arc<std::sync::atomic::AtomicU64>,
) -> turmoil::Result {
    let config = openraft::Config {
        cluster_name: "lauscha-metadata-sim".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // Small, so that runs take snapshots, purge logs and send snapshots to voters
        // that were away for long.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(64),
        max_in_snapshot_log_to_keep: 8,
        purge_batch_size: 1,
        ..Default::default()
    }
    .validate()?;
    let sm = MemStateMachine::open(disk.clone())?;
    let state = sm.state();
    let raft = MemRaft::new(
        id,
        Arc::new(config),
        SimNetwork,
        MemLogStore::new(disk.clone()),
        sm,
    )
    .await?;
    let restarted = raft.is_initialized().await?;
    if id == 1 && !restarted {
        let members: BTreeMap<u64, BasicNode> = (1..=voters)
            .map(|v| (v, BasicNode::new(host_name(v))))
            .collect();
        raft.initialize(members).await?;
    }
    let vote_silence = VoteSilence::after_start(restarted);
    registry.lock().expect("registry").insert(
        id,
        Running {
            raft: raft.clone(),
            disk,
            state: state.clone(),
        },
    );
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    let mut handlers = tokio::task::JoinSet::new();
    // turmoil reports a panic only of the host's own task (unless tokio_unstable), so
    // Raft's and the handlers' are looked for here: an assertion inside openraft must fail
    // the run, not leave a silent voter.
    let mut health = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, _) = accepted?;
                let (raft, state, installs) = (raft.clone(), state.clone(), installs.clone());
                handlers.spawn(async move {
                    let Ok(request) = receive_message::<Request>(&mut stream).await else {
                        return;
                    };
                    let reply =
                        serve(&raft, &state, request, stale_reads, vote_silence, &installs).await;
                    // The caller may have given up; nothing to do about a failed send.
                    let _ = send_message(&mut stream, &reply).await;
                });
            }
            Some(done) = handlers.join_next() => {
                if let Err(e) = done && e.is_panic() {
                    return Err(format!("voter {id}: a request handler panicked: {e}").into());
                }
            }
            _ = health.tick() => {
                raft.with_raft_state(|_| ())
                    .await
                    .map_err(|e| format!("voter {id}: Raft stopped: {e}"))?;
            }
        }
    }
}

async fn serve(
    raft: &MemRaft,
    state: &Mutex<MemState>,
    request: Request,
    stale_reads: bool,
    vote_silence: VoteSilence,
    installs: &std::sync::atomic::AtomicU64,
) -> Reply {
    let failed = |e: &dyn std::fmt::Display| Reply::Failed(e.to_string());
    let refused = |e: MetaError| match e {
        MetaError::NotLeader { leader } => Reply::NotLeader(leader.as_deref().and_then(voter_of)),
        other => Reply::Failed(other.to_string()),
    };
    match request {
        Request::AppendEntries(rpc) => raft
            .append_entries(rpc)
            .await
            .map_or_else(|e| failed(&e), Reply::AppendEntries),
        Request::Vote(rpc) => match vote_silence.check() {
            Ok(()) => raft
                .vote(rpc)
                .await
                .map_or_else(|e| failed(&e), Reply::Vote),
            Err(e) => failed(&e),
        },
        Request::Snapshot { vote, meta, data } => {
            let snapshot = MemSnapshot {
                meta,
                snapshot: data,
            };
            match raft.install_full_snapshot(vote, snapshot).await {
                Ok(r) => {
                    installs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Reply::Snapshot(r)
                }
                Err(e) => failed(&e),
            }
        }
        Request::Write { key, value } => {
            let proposal = Proposal {
                request_id: None,
                now_ms: 0,
                command: register_write(key, value),
            };
            match propose(raft, proposal).await {
                Ok(_) => Reply::Written,
                Err(e) => refused(e),
            }
        }
        Request::Read { key } => {
            if !stale_reads && let Err(e) = ensure_linearizable(raft).await {
                return refused(e);
            }
            register_read(state, key).map_or_else(|e| failed(&e), Reply::Read)
        }
    }
}

fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

/// A client: random reads and writes until `until`, following the leader.
async fn client(
    client: u32,
    config: SimConfig,
    seed: u64,
    history: Arc<Mutex<Vec<SimOp>>>,
    // Dropped when this client is done: the final reads wait for every client's.
    _running: tokio::sync::mpsc::Sender<()>,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut target = 1 + u64::from(client) % config.voters;
    let mut seq = 0u64;
    while turmoil::sim_elapsed().unwrap_or_default() < config.faulty_for {
        let key = rng.random_range(1..=config.keys);
        let invoke_ns = now_ns();
        let (request, write) = if rng.random_bool(0.5) {
            seq += 1;
            let value = (u64::from(client) + 1) << 32 | seq;
            (Request::Write { key, value }, Some(value))
        } else {
            (Request::Read { key }, None)
        };
        let reply = call(target, &request, CLIENT_TIMEOUT).await;
        let complete_ns = now_ns();
        let op = |complete_ns, kind| SimOp {
            key,
            invoke_ns,
            complete_ns,
            kind,
        };
        match (reply, write) {
            (Ok(Reply::Written), Some(value)) => {
                history
                    .lock()
                    .expect("history")
                    .push(op(Some(complete_ns), SimOpKind::Write(value)));
            }
            (Ok(Reply::Read(value)), None) => {
                history
                    .lock()
                    .expect("history")
                    .push(op(Some(complete_ns), SimOpKind::Read(value)));
            }
            // Refused before it was appended: it never happened.
            (Ok(Reply::NotLeader(leader)), _) => {
                target = leader.unwrap_or_else(|| rng.random_range(1..=config.voters));
            }
            (other, write) => {
                if let Some(value) = write {
                    // No answer, or a failure after the proposal was made: unknown.
                    history
                        .lock()
                        .expect("history")
                        .push(op(None, SimOpKind::Write(value)));
                }
                if let Ok(reply) = other
                    && !matches!(reply, Reply::Failed(_))
                {
                    return Err(format!("unexpected reply {reply:?}").into());
                }
                target = rng.random_range(1..=config.voters);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
    Ok(())
}

/// After the faults: one read of every key, from whichever voter leads, into the history.
async fn final_reads(
    config: SimConfig,
    history: Arc<Mutex<Vec<SimOp>>>,
    mut clients_running: tokio::sync::mpsc::Receiver<()>,
) -> turmoil::Result {
    // After the clients' last operations, so the reads see a quiet group: every sender
    // is gone once every client has finished.
    while clients_running.recv().await.is_some() {}
    let give_up = config.faulty_for + CLIENT_TIMEOUT + HEAL_WITHIN;
    let mut target = 1;
    for key in 1..=config.keys {
        loop {
            if turmoil::sim_elapsed().unwrap_or_default() > give_up {
                return Err(format!("no read of register {key} after healing").into());
            }
            let invoke_ns = now_ns();
            match call(target, &Request::Read { key }, CLIENT_TIMEOUT).await {
                Ok(Reply::Read(value)) => {
                    history.lock().expect("history").push(SimOp {
                        key,
                        invoke_ns,
                        complete_ns: Some(now_ns()),
                        kind: SimOpKind::Read(value),
                    });
                    break;
                }
                Ok(Reply::NotLeader(Some(leader))) => target = leader,
                _ => {
                    target = target % config.voters + 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

/// Tracks what the checkers saw across steps.
#[derive(Default)]
struct Checks {
    /// The first leader seen in each term.
    leaders: BTreeMap<u64, u64>,
    /// Each committed index's entry, encoded, as first seen.
    committed: BTreeMap<u64, Vec<u8>>,
    /// The state machine's pairs, encoded, after applying up to an index, as first seen.
    states: BTreeMap<u64, Vec<u8>>,
    violations: Vec<String>,
}

impl Checks {
    /// Records a violation once, however many samples see it.
    fn violation(&mut self, what: String) {
        if !self.violations.contains(&what) {
            self.violations.push(what);
        }
    }

    fn one_leader_per_term(&mut self, registry: &Registry) {
        for (id, running) in registry.lock().expect("registry").iter() {
            let m = running.raft.metrics().borrow_watched().clone();
            if m.state == ServerState::Leader {
                let first = *self.leaders.entry(m.current_term).or_insert(*id);
                if first != *id {
                    self.violation(format!(
                        "two leaders in term {}: {first} and {id}",
                        m.current_term
                    ));
                }
            }
        }
    }

    fn entries_and_states_agree(&mut self, registry: &Registry) {
        for (id, running) in registry.lock().expect("registry").iter() {
            let applied = applied_index(&running.raft);
            let (index, bytes) = {
                let state = running.state.lock().expect("state");
                (state.applied_index(), value::encode(&state.kv.map))
            };
            if !first_or_same(&mut self.states, index, bytes) {
                self.violation(format!(
                    "voter {id}'s state after applying {index} entries differs from another's \
                     (or its own earlier) state there"
                ));
            }
            for entry in running.disk.lock().entries(..=applied) {
                let index = entry.log_id.index;
                if !first_or_same(&mut self.committed, index, value::encode(&entry)) {
                    self.violation(format!("committed entry {index} differs on voter {id}"));
                }
            }
        }
    }
}

/// Records `bytes` as what `index` holds if nothing was seen there yet; whether it is the
/// same as what was seen.
fn first_or_same(seen: &mut BTreeMap<u64, Vec<u8>>, index: u64, bytes: Vec<u8>) -> bool {
    match seen.get(&index) {
        Some(earlier) => *earlier == bytes,
        None => {
            seen.insert(index, bytes);
            true
        }
    }
}

fn highest_applied(registry: &Registry) -> (u64, u64) {
    let registry = registry.lock().expect("registry");
    let applied: Vec<u64> = registry.values().map(|r| applied_index(&r.raft)).collect();
    (
        applied.iter().copied().max().unwrap_or(0),
        applied.iter().copied().min().unwrap_or(0),
    )
}

/// Cuts every link between a voter of `a` and another voter of `b`, both ways.
fn cut(sim: &turmoil::Sim<'_>, a: &[u64], b: &[u64]) {
    for x in a {
        for y in b.iter().filter(|y| *y != x) {
            sim.partition(host_name(*x), host_name(*y));
        }
    }
}

/// Mends every link between voters (one-way cuts too).
fn repair_all(sim: &turmoil::Sim<'_>, voters: &[u64]) {
    for x in voters {
        for y in voters.iter().filter(|y| *y > x) {
            sim.repair(host_name(*x), host_name(*y));
        }
    }
}

/// Runs one seed to its end. Synchronous: turmoil runs every host on its own
/// current-thread runtime, stepping simulated time 1 ms at a time.
pub fn run(config: &SimConfig) -> Result<SimOutcome, MetaError> {
    let internal = |e: &dyn std::fmt::Display| MetaError::Internal(e.to_string());
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.random())
        .simulation_duration(config.faulty_for + CLIENT_TIMEOUT + HEAL_WITHIN * 2)
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(2))
        .fail_rate(0.0)
        .repair_rate(0.02)
        .build();
    let registry: Registry = Arc::default();
    let history: Arc<Mutex<Vec<SimOp>>> = Arc::default();
    let installs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let disks: BTreeMap<u64, MemDisk> = (1..=config.voters)
        .map(|v| (v, MemDisk::default()))
        .collect();
    for (&id, disk) in &disks {
        let (voters, stale_reads) = (config.voters, config.stale_reads);
        let (disk, registry, installs) = (disk.clone(), registry.clone(), installs.clone());
        sim.host(host_name(id), move || {
            voter(
                id,
                voters,
                disk.clone(),
                registry.clone(),
                stale_reads,
                installs.clone(),
            )
        });
    }
    let (running, clients_running) = tokio::sync::mpsc::channel(1);
    for c in 0..config.clients {
        let seed = rng.random();
        sim.client(
            format!("client-{c}"),
            client(c, config.clone(), seed, history.clone(), running.clone()),
        );
    }
    drop(running);
    sim.client(
        "final-reads",
        final_reads(config.clone(), history.clone(), clients_running),
    );

    let all: Vec<u64> = (1..=config.voters).collect();
    let mut fault_rng = StdRng::seed_from_u64(rng.random());
    let mut next_fault = Duration::from_millis(fault_rng.random_range(200..1500));
    let mut crashed: Option<(u64, Duration)> = None;
    let mut outcome = SimOutcome::default();
    let mut checks = Checks::default();
    let mut next_committed_check = Duration::ZERO;
    let mut healed = false;
    loop {
        let finished = sim.step().map_err(|e| internal(&e))?;
        let now = sim.elapsed();
        checks.one_leader_per_term(&registry);
        if now >= next_committed_check {
            checks.entries_and_states_agree(&registry);
            next_committed_check = now + Duration::from_millis(100);
        }
        if let Some((id, until)) = crashed
            && now >= until
        {
            sim.bounce(host_name(id));
            crashed = None;
        }
        if now < config.faulty_for {
            if now >= next_fault {
                outcome.faults += 1;
                next_fault = now + Duration::from_millis(fault_rng.random_range(200..1500));
                let v = |rng: &mut StdRng| rng.random_range(1..=config.voters);
                match fault_rng.random_range(0..7) {
                    0 => {
                        repair_all(&sim, &all);
                        sim.set_fail_rate(0.0);
                    }
                    1 => cut(&sim, &[v(&mut fault_rng)], &all),
                    2 => {
                        let (from, to) = (v(&mut fault_rng), v(&mut fault_rng));
                        if from != to {
                            sim.partition_oneway(host_name(from), host_name(to));
                        }
                    }
                    3 => sim.set_fail_rate([0.0, 0.001, 0.005][fault_rng.random_range(0..3)]),
                    4 => sim.set_max_message_latency(Duration::from_millis(
                        [2, 10, 50, 300][fault_rng.random_range(0..4)],
                    )),
                    5 => {
                        // A split: one side against the rest.
                        repair_all(&sim, &all);
                        let at = fault_rng.random_range(1..config.voters) as usize;
                        cut(&sim, &all[..at], &all[at..]);
                    }
                    _ => {
                        if crashed.is_none() {
                            let id = v(&mut fault_rng);
                            registry.lock().expect("registry").remove(&id);
                            sim.crash(host_name(id));
                            outcome.crashes += 1;
                            let down = Duration::from_millis(fault_rng.random_range(300..3000));
                            crashed = Some((id, now + down));
                        }
                    }
                }
            }
        } else if !healed {
            repair_all(&sim, &all);
            sim.set_fail_rate(0.0);
            sim.set_max_message_latency(Duration::from_millis(2));
            if let Some((id, _)) = crashed.take() {
                sim.bounce(host_name(id));
            }
            healed = true;
        }
        if finished {
            break;
        }
    }

    // Every voter catches up with the highest applied index.
    let (target, _) = highest_applied(&registry);
    let catch_up_until = sim.elapsed() + HEAL_WITHIN;
    loop {
        let (_, lowest) = highest_applied(&registry);
        if lowest >= target && registry.lock().expect("registry").len() as u64 == config.voters {
            break;
        }
        if sim.elapsed() > catch_up_until {
            checks.violations.push(format!(
                "voters did not catch up to index {target} within {HEAL_WITHIN:?} of healing"
            ));
            break;
        }
        sim.step().map_err(|e| internal(&e))?;
        checks.one_leader_per_term(&registry);
    }
    checks.entries_and_states_agree(&registry);

    outcome.ops = std::mem::take(&mut *history.lock().expect("history"));
    outcome.terms_with_leader = checks.leaders.len() as u64;
    outcome.committed = target;
    outcome.violations = checks.violations;
    outcome.snapshots_installed = installs.load(std::sync::atomic::Ordering::Relaxed);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_seeds_commit_and_stay_safe() {
        for seed in 0..3 {
            let outcome = run(&SimConfig::standard(seed)).unwrap();
            assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
            assert!(outcome.committed > 3, "seed {seed}: nothing committed");
            assert!(outcome.ops.iter().any(|o| o.complete_ns.is_some()));
        }
    }
}
