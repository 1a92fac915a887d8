//! A metadata voter: RocksDB, openraft, and the two entry points every request uses,
//! [`MetaNode::write`] (through the log) and [`MetaNode::read`] (linearizable).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{BasicNode, ReadPolicy, ServerState, SnapshotPolicy};
use rocksdb::DB;
use tracing::info;

use crate::command::{MetaCommand, MetaError, MetaResponse};
use crate::kv::KvError;
use crate::network::{NetworkFactory, RaftServer, SnapshotLimits};
use crate::raft_types::{Raft, TypeConfig};
use crate::store::{LogStore, RocksKv, StateMachineStore, open_db};

/// How long a write or read waits for Raft before answering Unavailable.
const RAFT_DEADLINE: Duration = Duration::from_secs(10);

/// Start-up options of a voter.
#[derive(Clone, Debug)]
pub struct MetaNodeOptions {
    /// Raft node id.
    pub node_id: u64,
    /// Where RocksDB and snapshots live.
    pub data_dir: PathBuf,
    /// The gRPC address other voters and clients use.
    pub advertise: String,
    /// Initialise a single-voter cluster if this voter has never been initialised.
    pub bootstrap: bool,
}

/// A running voter. Cheap to clone.
#[derive(Clone)]
pub struct MetaNode {
    node_id: u64,
    raft: Raft,
    db: Arc<DB>,
    snapshot_dir: PathBuf,
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
}

impl MetaNode {
    /// Opens the voter's storage and starts Raft.
    pub async fn start(options: MetaNodeOptions) -> Result<MetaNode, MetaError> {
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
            election_timeout_max: 1000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            install_snapshot_timeout: 600_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| internal("raft config", &e))?;
        let network = NetworkFactory {
            snapshot_timeout: Duration::from_secs(600),
        };
        let raft = Raft::new(
            options.node_id,
            Arc::new(config),
            network,
            LogStore::new(db.clone()),
            sm,
        )
        .await
        .map_err(|e| internal("start raft", &e))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| internal("read raft state", &e))?;
        if options.bootstrap && !initialized {
            let members =
                BTreeMap::from([(options.node_id, BasicNode::new(options.advertise.clone()))]);
            raft.initialize(members)
                .await
                .map_err(|e| internal("initialise raft", &e))?;
            info!(node_id = options.node_id, "metadata cluster initialised");
        }
        Ok(MetaNode {
            node_id: options.node_id,
            raft,
            db,
            snapshot_dir,
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

    /// Proposes `cmd` and returns what applying it answered; a refusal is an error.
    pub async fn write(&self, cmd: MetaCommand) -> Result<MetaResponse, MetaError> {
        let result = tokio::time::timeout(RAFT_DEADLINE, self.raft.client_write(cmd))
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

    /// Runs `query` against the state after every write committed before this call.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&RocksKv<'_>) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let result = tokio::time::timeout(
            RAFT_DEADLINE,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| MetaError::Unavailable("metadata read timed out".into()))?;
        if let Err(e) = result {
            return Err(read_error(e));
        }
        let db = self.db.clone();
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

    /// Raft state for operators.
    pub fn status(&self) -> MetaStatus {
        let m = self.raft.metrics().borrow_watched().clone();
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
        }
    }

    /// The Raft service other voters call.
    pub fn raft_server(&self) -> RaftServer {
        RaftServer::new(
            self.raft.clone(),
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

    /// Stops Raft; pending requests fail with Unavailable.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
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
