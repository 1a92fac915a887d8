//! The Raft log and the state machine in memory, behind the same openraft storage traits
//! as the RocksDB ones: the simulation tier's store.
//!
//! A voter's [`MemDisk`] is what survives its crash: the vote, the log, the committed id
//! and the current snapshot. Every write to it is durable at once, as if fsync'd. The
//! state machine itself is volatile: a voter that starts again begins from its snapshot
//! (or from nothing) and openraft re-applies the log from there, which is the recovery
//! path the RocksDB store takes after a crash loses unsynced state-machine writes.
//!
//! Entries are applied by the same pure step as in RocksDB ([`apply_entry`]), so the
//! simulation runs the real command logic.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, TryStreamExt};
use openraft::OptionalSend;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine,
};

use super::decode_err;
use super::state_machine::{AppliedState, apply_entry};
use crate::kv::MemKv;
use crate::raft_types::{
    Entry, LogId, MemSnapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};
use crate::value;

/// What a voter keeps across a crash.
#[derive(Debug, Default)]
pub struct MemDiskState {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
    /// The current snapshot: its meta and the encoded key-value pairs.
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

impl MemDiskState {
    /// The entries with indexes in `range` that are still in the log (not purged).
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        self.log.range(range).map(|(_, e)| e.clone()).collect()
    }

    /// Makes `meta`'s snapshot the current one, unless a newer one is already kept (a
    /// snapshot built while a newer one was installed, or the other way round).
    fn keep_snapshot(&mut self, meta: &SnapshotMeta, bytes: Vec<u8>) {
        let newer_kept = self
            .snapshot
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id);
        if !newer_kept {
            self.snapshot = Some((meta.clone(), bytes));
        }
    }
}

/// A voter's disk, shared by its log store, its state machine and the simulation's
/// checkers; it outlives the voter.
#[derive(Clone, Debug, Default)]
pub struct MemDisk(Arc<Mutex<MemDiskState>>);

impl MemDisk {
    /// Locks the disk's state.
    pub fn lock(&self) -> MutexGuard<'_, MemDiskState> {
        // A panic while holding it is a bug in this module; the state is still whole, as
        // every change below is a single assignment or insert.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The log store on a [`MemDisk`].
#[derive(Clone, Debug)]
pub struct MemLogStore {
    disk: MemDisk,
}

impl MemLogStore {
    /// The log store of `disk`.
    pub fn new(disk: MemDisk) -> MemLogStore {
        MemLogStore { disk }
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.disk.lock().entries(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.disk.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let disk = self.disk.lock();
        let last = disk.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: disk.last_purged,
            last_log_id: last.or(disk.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> MemLogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.disk.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.disk.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.disk.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut disk = self.disk.lock();
            for entry in entries {
                disk.log.insert(entry.log_id.index, entry);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut disk = self.disk.lock();
        disk.log.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut disk = self.disk.lock();
        disk.last_purged = Some(log_id);
        disk.log = disk.log.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// The state machine's volatile state: the key-value pairs and how far they go.
#[derive(Debug, Default)]
pub struct MemState {
    /// The pairs, as `query` reads them.
    pub kv: MemKv,
    applied: AppliedState,
}

impl MemState {
    /// The index of the last entry applied to these pairs (0: none).
    pub fn applied_index(&self) -> u64 {
        self.applied.last_applied.map_or(0, |l| l.index)
    }
}

/// The in-memory state machine. Its state is shared with the voter's readers through
/// [`MemStateMachine::state`].
#[derive(Debug)]
pub struct MemStateMachine {
    disk: MemDisk,
    state: Arc<Mutex<MemState>>,
}

fn lock_state(state: &Mutex<MemState>) -> MutexGuard<'_, MemState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn decode_pairs(bytes: &[u8]) -> io::Result<MemKv> {
    Ok(MemKv {
        map: value::decode(bytes).map_err(decode_err)?,
    })
}

impl MemStateMachine {
    /// A state machine starting from `disk`'s current snapshot, or from nothing.
    pub fn open(disk: MemDisk) -> io::Result<MemStateMachine> {
        let state = match &disk.lock().snapshot {
            Some((meta, bytes)) => MemState {
                kv: decode_pairs(bytes)?,
                applied: AppliedState {
                    last_applied: meta.last_log_id,
                    last_membership: meta.last_membership.clone(),
                },
            },
            None => MemState::default(),
        };
        Ok(MemStateMachine {
            disk,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The state, for reads.
    pub fn state(&self) -> Arc<Mutex<MemState>> {
        self.state.clone()
    }
}

/// Hands out a snapshot taken when openraft asked for a builder.
pub struct MemSnapshotBuilder {
    disk: MemDisk,
    meta: SnapshotMeta,
    bytes: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for MemSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<MemSnapshot, io::Error> {
        self.disk
            .lock()
            .keep_snapshot(&self.meta, self.bytes.clone());
        Ok(MemSnapshot {
            meta: self.meta.clone(),
            snapshot: self.bytes.clone(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = MemSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = lock_state(&self.state);
        Ok((
            state.applied.last_applied,
            state.applied.last_membership.clone(),
        ))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut state = lock_state(&self.state);
                let (applied, response, mutations) =
                    apply_entry(&state.kv, &state.applied, &entry)?;
                state.kv.write(mutations);
                state.applied = applied;
                response
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> MemSnapshotBuilder {
        let state = lock_state(&self.state);
        MemSnapshotBuilder {
            disk: self.disk.clone(),
            meta: SnapshotMeta {
                last_log_id: state.applied.last_applied,
                last_membership: state.applied.last_membership.clone(),
            },
            bytes: value::encode(&state.kv.map),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        // Decoded before anything changes: a damaged snapshot leaves the state as it was.
        let kv = decode_pairs(&snapshot)?;
        self.disk.lock().keep_snapshot(meta, snapshot);
        *lock_state(&self.state) = MemState {
            kv,
            applied: AppliedState {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
            },
        };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<MemSnapshot>, io::Error> {
        Ok(self
            .disk
            .lock()
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| MemSnapshot {
                meta: meta.clone(),
                snapshot: bytes.clone(),
            }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine, ()> for Builder {
        async fn build(
            &self,
        ) -> Result<((), MemLogStore, MemStateMachine), StorageError<TypeConfig>> {
            let disk = MemDisk::default();
            let sm = MemStateMachine::open(disk.clone())
                .map_err(|e| StorageError::read(TypeConfig::err_from_string(e.to_string())))?;
            Ok(((), MemLogStore::new(disk), sm))
        }
    }

    /// openraft's own storage test suite against the in-memory store: the simulation's
    /// voters must keep the same contract as the RocksDB ones.
    #[tokio::test]
    async fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).await.expect("storage suite");
    }

    /// A restarted state machine starts from the snapshot, not from what it had applied:
    /// openraft must re-apply the log, as after a crash of a RocksDB voter.
    #[tokio::test]
    async fn restart_starts_from_the_snapshot() {
        let disk = MemDisk::default();
        let mut sm = MemStateMachine::open(disk.clone()).unwrap();
        lock_state(&sm.state())
            .kv
            .write(vec![crate::kv::Mutation::Put(b"k".to_vec(), b"v".to_vec())]);
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        lock_state(&sm.state())
            .kv
            .write(vec![crate::kv::Mutation::Put(
                b"later".to_vec(),
                b"x".to_vec(),
            )]);
        let reopened = MemStateMachine::open(disk).unwrap();
        let state = reopened.state();
        let state = lock_state(&state);
        assert_eq!(state.kv.map.get(b"k".as_slice()), Some(&b"v".to_vec()));
        assert!(!state.kv.map.contains_key(b"later".as_slice()));
    }
}
