//! A metadata voter: RocksDB, openraft, and the two entry points every request uses,
//! [`MetaNode::write`] (through the log) and [`MetaNode::read`] (linearizable).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lauscha_proto::meta::raft_service_client::RaftServiceClient;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use tonic::transport::Channel;
use tracing::info;

use crate::command::{MetaCommand, MetaError, MetaResponse, Proposal, RequestId};
use crate::kv::KvError;
use crate::network::{NetworkFactory, RaftServer, SnapshotLimits};
use crate::raft_types::{Raft, TypeConfig};
use crate::store::{AppendCounters, Db, DbClosed, LogStore, RocksKv, StateMachineStore, open_db};

/// How long a write or read waits for Raft before answering Unavailable.
const RAFT_DEADLINE: Duration = Duration::from_secs(10);

/// The longest election timeout, ms; also openraft's leader lease (a leader answers
/// lease reads while a quorum acknowledged it within this time).
pub(crate) const ELECTION_TIMEOUT_MAX_MS: u64 = 1000;

/// How long shutdown waits for the last storage task to let go of RocksDB.
const DB_CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// Start-up options of a voter.
#[derive(Clone, Debug)]
pub struct MetaNodeOptions {
    /// Raft node id.
    pub node_id: u64,
    /// Where RocksDB and snapshots live.
    pub data_dir: PathBuf,
    /// The gRPC address other voters and clients use.
    pub advertise: String,
    /// Source address of connections to the other voters; `None`: the kernel's choice.
    pub source_ip: Option<std::net::IpAddr>,
    /// Initialise a new cluster if this voter has never been initialised.
    pub bootstrap: bool,
    /// With `bootstrap`: the other voters of the new cluster (id, address); empty for a
    /// single voter.
    pub initial_voters: Vec<(u64, String)>,
}

/// A running voter. Cheap to clone.
#[derive(Clone)]
pub struct MetaNode {
    node_id: u64,
    pub(crate) raft: Raft,
    /// Raft's log store and state machine own the database; the voter only borrows it for
    /// reads, so that it closes once Raft has stopped (see [`MetaNode::shutdown`]).
    db: Weak<Db>,
    db_closed: DbClosed,
    snapshot_dir: PathBuf,
    appends: Arc<AppendCounters>,
    /// Set when this voter started on an existing Raft state; see [`VoteSilence`].
    vote_silence: VoteSilence,
    forward_clients: Arc<Mutex<HashMap<String, RaftServiceClient<Channel>>>>,
    /// Source address of the connections that forward proposals to the leader.
    source_ip: Option<std::net::IpAddr>,
}

/// What `status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaStatus {
    /// This voter.
    pub node_id: u64,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub last_applied_index: u64,
    /// Leader, follower, candidate, learner or shutdown.
    pub state: String,
    /// Voter ids of the current membership.
    pub voters: Vec<u64>,
    /// Every member (voters and learners) with its address.
    pub members: Vec<(u64, String)>,
    /// On the leader: the last log index each member has matched.
    pub matched: Vec<(u64, u64)>,
    /// The last log index this voter has.
    pub last_log_index: u64,
    /// Log appends (each one fsync) since start.
    pub n_log_appends: u64,
    /// Entries those appends wrote; more entries than appends means shared fsyncs.
    pub n_log_entries: u64,
    /// Last index of the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Last purged log index.
    pub purged_index: Option<u64>,
}

impl MetaNode {
    /// Opens the voter's storage and starts Raft, talking to the other voters over gRPC.
    pub async fn start(options: MetaNodeOptions) -> Result<MetaNode, MetaError> {
        let network = NetworkFactory {
            snapshot_timeout: Duration::from_secs(600),
            source_ip: options.source_ip,
        };
        Self::start_with_network(options, network).await
    }

    /// Like [`MetaNode::start`] with another Raft transport (the simulation's).
    pub(crate) async fn start_with_network<N>(
        options: MetaNodeOptions,
        network: N,
    ) -> Result<MetaNode, MetaError>
    where
        N: openraft::network::RaftNetworkFactory<TypeConfig>,
        N::Network: openraft::network::NetSnapshot<
                TypeConfig,
                SnapshotData = crate::raft_types::SnapshotFile,
            >,
    {
        let internal =
            |what: &str, e: &dyn std::fmt::Display| MetaError::Internal(format!("{what}: {e}"));
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| internal("create metadata directory", &e))?;
        let db = open_db(&options.data_dir.join("db")).map_err(|e| internal("open RocksDB", &e))?;
        let snapshot_dir = options.data_dir.join("snapshots");
        let sm = StateMachineStore::open(db.clone(), &snapshot_dir)
            .map_err(|e| internal("open state machine", &e))?;
        let config = openraft::Config {
            cluster_name: "lauscha-metadata".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            install_snapshot_timeout: 600_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| internal("raft config", &e))?;
        let log_store = LogStore::new(db.clone());
        let appends = log_store.counters();
        let raft = Raft::new(options.node_id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| internal("start raft", &e))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| internal("read raft state", &e))?;
        if options.bootstrap && !initialized {
            let mut members =
                BTreeMap::from([(options.node_id, BasicNode::new(options.advertise.clone()))]);
            for (id, addr) in &options.initial_voters {
                members.insert(*id, BasicNode::new(addr.clone()));
            }
            raft.initialize(members)
                .await
                .map_err(|e| internal("initialise raft", &e))?;
            info!(node_id = options.node_id, "metadata cluster initialised");
        }
        Ok(MetaNode {
            node_id: options.node_id,
            raft,
            db_closed: db.closed(),
            db: Arc::downgrade(&db),
            snapshot_dir,
            appends,
            vote_silence: VoteSilence::after_start(initialized),
            forward_clients: Arc::default(),
            source_ip: options.source_ip,
        })
    }

    /// Waits until some voter is leader (this one, with a single voter).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, MetaError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| MetaError::Unavailable(format!("no metadata leader: {e}")))?;
        Ok(metrics.current_leader.expect("waited for a leader"))
    }

    /// Whether this voter's Raft has stopped: shut down, or ended by a fatal error.
    fn raft_stopped(&self) -> bool {
        use futures::FutureExt;
        let mut metrics = self.raft.metrics();
        let reported = {
            let m = metrics.borrow_and_update();
            m.running_state.is_err() || m.state == openraft::ServerState::Shutdown
        };
        // A core that panicked reports neither, but the sender of its metrics is gone:
        // with the newest value seen, waiting for a change fails at once.
        reported || matches!(metrics.changed().now_or_never(), Some(Err(_)))
    }

    /// Proposes `cmd` and returns what applying it answered; a refusal is an error.
    pub async fn write(&self, cmd: MetaCommand) -> Result<MetaResponse, MetaError> {
        self.write_request(cmd, None).await
    }

    /// Like [`MetaNode::write`], for a client request that may be retried under the same
    /// id: it is applied once, and a retry gets the first response.
    pub async fn write_request(
        &self,
        cmd: MetaCommand,
        request_id: Option<RequestId>,
    ) -> Result<MetaResponse, MetaError> {
        let proposal = Proposal {
            request_id,
            now_ms: now_ms(),
            command: cmd,
        };
        let deadline = tokio::time::Instant::now() + RAFT_DEADLINE;
        loop {
            let result = match propose(&self.raft, proposal.clone()).await {
                // A follower forwards to the leader, so that callers inside the cluster
                // (root credentials at start-up, a node registering) need not find it.
                Err(MetaError::NotLeader {
                    leader: Some(leader),
                }) => self.forward(&leader, &proposal).await,
                other => other,
            };
            match result {
                // No leader known (an election is running): wait for one, then again.
                Err(e @ (MetaError::NotLeader { leader: None } | MetaError::Unavailable(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    // A Raft that stopped (shut down, or ended by a fatal storage error)
                    // answers at once and never gets a leader; its last metrics may still
                    // name one. Asking again would spin until the deadline, each try
                    // logged by openraft.
                    if self.raft_stopped() {
                        return Err(e);
                    }
                    let left = deadline - tokio::time::Instant::now();
                    let waited = self
                        .raft
                        .wait(Some(left))
                        .metrics(|m| m.current_leader.is_some(), "a leader")
                        .await;
                    if let Err(openraft::metrics::WaitError::ShuttingDown) = waited {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    async fn forward(&self, leader: &str, proposal: &Proposal) -> Result<MetaResponse, MetaError> {
        let client = {
            let mut clients = self.forward_clients.lock().expect("forward clients lock");
            match clients.get(leader) {
                Some(c) => c.clone(),
                None => {
                    let channel =
                        lauscha_proto::role_endpoint(format!("http://{leader}"), self.source_ip)
                            .map_err(|e| {
                                MetaError::Internal(format!("leader address {leader:?}: {e}"))
                            })?
                            .connect_lazy();
                    let c = RaftServiceClient::new(channel)
                        .max_decoding_message_size(crate::network::MAX_RAFT_MESSAGE_BYTES)
                        .max_encoding_message_size(crate::network::MAX_RAFT_MESSAGE_BYTES);
                    clients.insert(leader.to_string(), c.clone());
                    c
                }
            }
        };
        crate::network::forward_proposal(client, proposal).await
    }

    /// Runs `query` against the state after every write committed before this call.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&RocksKv<'_>) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, MetaError> {
        ensure_linearizable(&self.raft).await?;
        let db = self.db()?;
        tokio::task::spawn_blocking(move || query(&RocksKv::new(&db)))
            .await
            .map_err(|e| MetaError::Internal(e.to_string()))?
            .map_err(|e| MetaError::Internal(e.to_string()))
    }

    /// Makes sure the root tenant and the given administrator key exist (at bootstrap, from
    /// config or the environment). A key id that exists with another secret is an error:
    /// the operator changed the secret, and silently keeping the old one would lock them out.
    pub async fn ensure_root_credentials(
        &self,
        access_key: &str,
        secret_key: &str,
        now_ms: u64,
    ) -> Result<(), MetaError> {
        let tenant = lauscha_core::config::root_tenant();
        match self
            .write(MetaCommand::CreateTenant {
                id: tenant.clone(),
                now_ms,
            })
            .await
        {
            Ok(_) | Err(MetaError::TenantAlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        let key = lauscha_core::AccessKey {
            id: lauscha_core::AccessKeyId(access_key.to_string()),
            secret: secret_key.to_string(),
            tenant,
            is_admin: true,
            created_ms: now_ms,
        };
        match self
            .write(MetaCommand::CreateAccessKey {
                key: key.clone(),
                now_ms,
            })
            .await
        {
            Ok(_) => {
                info!(access_key, "root credentials created");
                Ok(())
            }
            Err(MetaError::AccessKeyAlreadyExists(_)) => {
                let id = key.id.clone();
                let existing = self
                    .read(move |kv| crate::query::get_access_key(kv, &id))
                    .await?;
                match existing {
                    Some(existing) if existing.secret == key.secret && existing.is_admin => Ok(()),
                    _ => Err(MetaError::InvalidArgument(format!(
                        "access key {access_key} exists with another secret or without admin rights"
                    ))),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Adds a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, node_id: u64, addr: &str) -> Result<(), MetaError> {
        self.raft
            .add_learner(node_id, BasicNode::new(addr), true)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// Turns a learner into a voter.
    pub async fn promote(&self, node_id: u64) -> Result<(), MetaError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// Removes a voter (or learner) from the membership.
    pub async fn remove(&self, node_id: u64) -> Result<(), MetaError> {
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let is_voter = membership.membership().voter_ids().any(|id| id == node_id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// Raft state for operators.
    pub fn status(&self) -> MetaStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log_id)| (*id, log_id.as_ref().map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        MetaStatus {
            node_id: self.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_string(),
            voters: m.membership_config.membership().voter_ids().collect(),
            members,
            matched,
            last_log_index: m.last_log_index.unwrap_or(0),
            n_log_appends: self.appends.n_appends.load(Ordering::Relaxed),
            n_log_entries: self.appends.n_entries.load(Ordering::Relaxed),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
        }
    }

    /// The Raft service other voters call.
    pub fn raft_server(&self) -> RaftServer {
        RaftServer::new(
            self.raft.clone(),
            self.vote_silence,
            self.snapshot_dir.clone(),
            SnapshotLimits {
                max_bytes: 64 << 30,
                timeout: Duration::from_secs(600),
            },
        )
    }

    /// Asks Raft to build a snapshot now (tests and operators).
    pub async fn trigger_snapshot(&self) -> Result<(), MetaError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| MetaError::Internal(e.to_string()))
    }

    /// Builds a snapshot of everything applied so far, waits for it, and purges the log it
    /// covers; returns the snapshot's last index. A voter that later needs purged entries
    /// gets the snapshot instead.
    pub async fn compact_log(&self) -> Result<u64, MetaError> {
        let applied = applied_index(&self.raft);
        self.trigger_snapshot().await?;
        let metrics = self
            .raft
            .wait(Some(RAFT_DEADLINE))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| MetaError::Unavailable(format!("snapshot not built: {e}")))?;
        let snapshot_index = metrics.snapshot.map_or(0, |s| s.index);
        self.raft
            .trigger()
            .purge_log(snapshot_index)
            .await
            .map_err(|e| MetaError::Internal(e.to_string()))?;
        self.raft
            .wait(Some(RAFT_DEADLINE))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= snapshot_index),
                "log purged",
            )
            .await
            .map_err(|e| MetaError::Unavailable(format!("log not purged: {e}")))?;
        info!(
            node_id = self.node_id,
            raft_index = snapshot_index,
            "log compacted"
        );
        Ok(snapshot_index)
    }

    /// The database, while Raft runs.
    pub(crate) fn db(&self) -> Result<Arc<Db>, MetaError> {
        self.db
            .upgrade()
            .ok_or_else(|| MetaError::Unavailable("metadata voter has shut down".into()))
    }

    /// Stops Raft and returns once RocksDB is closed, so the same directory can be opened
    /// again; pending and later requests fail with Unavailable. An error says RocksDB was
    /// still open after [`DB_CLOSE_DEADLINE`] (a storage task still running: reopening the
    /// directory in this process would fail on its lock).
    pub async fn shutdown(&self) -> Result<(), MetaError> {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node_id = self.node_id, error = %e, "raft shutdown");
        }
        // openraft's state machine worker and our blocking storage tasks end after the Raft
        // core does, each holding the database until then.
        let closed = self.db_closed.clone().wait();
        tokio::time::timeout(DB_CLOSE_DEADLINE, closed)
            .await
            .map_err(|_| {
                MetaError::Unavailable(format!(
                    "RocksDB still open {DB_CLOSE_DEADLINE:?} after raft shutdown"
                ))
            })
    }
}

/// Returns once `raft` may answer reads from its local state linearizably: every write
/// committed before this call is applied there. NotLeader on a follower.
pub(crate) async fn ensure_linearizable<SM: RaftStateMachine<TypeConfig>>(
    raft: &openraft::Raft<TypeConfig, SM>,
) -> Result<(), MetaError> {
    // The leader lease first: a quorum acknowledged this leader within the lease, so
    // no other leader can exist and the local state is current (monotonic clocks, as
    // every lease read assumes). When the lease is stale (a leader that was paused, a
    // quiet cluster) fall back to a read index, which asks a quorum now.
    let lease = raft.ensure_linearizable(ReadPolicy::LeaseRead).await;
    let result = match lease {
        Ok(read) => Ok(Ok(read)),
        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
            return Err(MetaError::NotLeader {
                leader: leader_address(&f),
            });
        }
        Err(_) => {
            tokio::time::timeout(
                RAFT_DEADLINE,
                raft.ensure_linearizable(ReadPolicy::ReadIndex),
            )
            .await
        }
    };
    let result = result.map_err(|_| MetaError::Unavailable("metadata read timed out".into()))?;
    if let Err(e) = result {
        return Err(read_error(e));
    }
    Ok(())
}

/// Whether this voter may answer vote requests yet.
///
/// A leader serves lease reads while a quorum acknowledged it within the lease, because a
/// voter that acknowledged it refuses to vote for anyone else until the lease has run
/// out. That memory is not persisted: openraft starts a restarted voter with an expired
/// lease (its `storage/helper.rs` says the restarted node must wait before serving). A
/// voter that restarts within the lease could then help elect a second leader while the
/// first still answers reads from its lease: stale reads. So a restarted voter answers no
/// vote requests (pre-votes included, they share the RPC) for one leader lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VoteSilence {
    until: Option<tokio::time::Instant>,
}

impl VoteSilence {
    /// Silence for a voter starting now: one lease if it has Raft state from before.
    pub(crate) fn after_start(restarted: bool) -> VoteSilence {
        VoteSilence {
            until: restarted.then(|| {
                tokio::time::Instant::now() + Duration::from_millis(ELECTION_TIMEOUT_MAX_MS)
            }),
        }
    }

    /// Unavailable while the silence lasts.
    pub(crate) fn check(&self) -> Result<(), MetaError> {
        match self.until {
            Some(until) if tokio::time::Instant::now() < until => Err(MetaError::Unavailable(
                "restarted less than a leader lease ago: answering no vote requests yet".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The index of the last entry `raft` has applied (0: none), as its metrics say.
pub(crate) fn applied_index<SM: RaftStateMachine<TypeConfig>>(
    raft: &openraft::Raft<TypeConfig, SM>,
) -> u64 {
    raft.metrics()
        .borrow_watched()
        .last_applied
        .map_or(0, |l| l.index)
}

/// Proposes on this voter's Raft; NotLeader if it is not the leader.
pub(crate) async fn propose<SM: RaftStateMachine<TypeConfig>>(
    raft: &openraft::Raft<TypeConfig, SM>,
    proposal: Proposal,
) -> Result<MetaResponse, MetaError> {
    let result = tokio::time::timeout(RAFT_DEADLINE, raft.client_write(proposal))
        .await
        .map_err(|_| MetaError::Unavailable("metadata write timed out".into()))?;
    match result {
        Ok(response) => match response.data {
            MetaResponse::Refused(e) => Err(e),
            other => Ok(other),
        },
        Err(e) => Err(write_error(e)),
    }
}

fn membership_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            MetaError::InvalidArgument(format!("membership change refused: {c}"))
        }
        other => write_error(other),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn leader_address(forward: &openraft::errors::ForwardToLeader<TypeConfig>) -> Option<String> {
    forward.leader_node.as_ref().map(|n| n.addr.clone())
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> MetaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MetaError::NotLeader {
            leader: leader_address(&f),
        },
        // The entry may or may not commit under the new leader: the caller cannot know,
        // so it must treat the outcome as unknown (a retry is safe for our idempotent
        // clients; exactly-once request ids arrive with the replicated cluster).
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            MetaError::Unavailable(format!(
                "leader changed, outcome unknown (new leader {:?})",
                leader_address(&f)
            ))
        }
        RaftError::APIError(other) => MetaError::Internal(other.to_string()),
        RaftError::Fatal(fatal) => MetaError::Unavailable(format!("raft stopped: {fatal}")),
    }
}

fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> MetaError {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => MetaError::NotLeader {
            leader: leader_address(&f),
        },
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => {
            MetaError::Unavailable(format!("no quorum: {q}"))
        }
        RaftError::Fatal(fatal) => MetaError::Unavailable(format!("raft stopped: {fatal}")),
    }
}
