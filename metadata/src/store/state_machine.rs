//! The state machine in RocksDB: applies entries through the pure `apply`, builds and
//! installs snapshots.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::snapshot::{SnapshotWriter, read_meta, read_records};
use super::{CF_SM, CF_SM_META, Db, blocking, decode_err, io_err, sync_write};
use crate::command::MetaResponse;
use crate::kv::{KvError, KvRead, Mutation};
use crate::raft_types::{
    Entry, LogId, Snapshot, SnapshotFile, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::{apply, value};

const KEY_APPLIED: &[u8] = b"applied";
const CURRENT_SNAPSHOT: &str = "current.snap";

/// The applied position and membership, persisted in one value with the data they cover.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
}

/// What applying `entry` to the state `kv` (at `applied`) answers and changes: the pure
/// step both state machines (RocksDB and the simulation's in-memory one) take.
pub(crate) fn apply_entry(
    kv: &impl KvRead,
    applied: &AppliedState,
    entry: &Entry,
) -> io::Result<(AppliedState, MetaResponse, Vec<Mutation>)> {
    let mut applied = applied.clone();
    applied.last_applied = Some(entry.log_id);
    let (response, mutations) = match &entry.payload {
        EntryPayload::Blank => (MetaResponse::Done, Vec::new()),
        EntryPayload::Membership(membership) => {
            applied.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
            (MetaResponse::Done, Vec::new())
        }
        EntryPayload::Normal(proposal) => apply::apply_proposal(kv, proposal, entry.log_id.index)
            .map_err(|e| io::Error::other(e.to_string()))?,
    };
    Ok((applied, response, mutations))
}

/// Reads of the `sm` column family, for `apply` and the queries.
pub struct RocksKv<'a> {
    db: &'a DB,
}

impl<'a> RocksKv<'a> {
    /// Reads through `db`.
    pub fn new(db: &'a DB) -> RocksKv<'a> {
        RocksKv { db }
    }
}

impl KvRead for RocksKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let cf = self.db.cf_handle(CF_SM).expect("column family exists");
        self.db.get_cf(cf, key).map_err(|e| KvError(e.to_string()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        if start >= end {
            return Ok(());
        }
        let cf = self.db.cf_handle(CF_SM).expect("column family exists");
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        for item in self
            .db
            .iterator_cf_opt(cf, opts, IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| KvError(e.to_string()))?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

/// The state machine; openraft owns it, reads go to the database directly.
pub struct StateMachineStore {
    db: Arc<Db>,
    snapshot_dir: PathBuf,
    applied: AppliedState,
    /// Serialises replacing `current.snap` between the builder task and installs.
    snapshot_lock: Arc<Mutex<()>>,
}

impl StateMachineStore {
    /// Opens the state machine on `db`, keeping snapshots in `snapshot_dir`.
    pub fn open(db: Arc<Db>, snapshot_dir: &Path) -> io::Result<StateMachineStore> {
        fs::create_dir_all(snapshot_dir)?;
        // Leftovers of interrupted builds or transfers.
        for entry in fs::read_dir(snapshot_dir)? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()) != Some(CURRENT_SNAPSHOT) {
                if path.is_dir() {
                    fs::remove_dir_all(&path)?;
                } else {
                    fs::remove_file(&path)?;
                }
            }
        }
        let cf = db.cf_handle(CF_SM_META).expect("column family exists");
        let applied = match db.get_cf(cf, KEY_APPLIED).map_err(io_err)? {
            Some(bytes) => value::decode(&bytes).map_err(decode_err)?,
            None => AppliedState::default(),
        };
        Ok(StateMachineStore {
            db,
            snapshot_dir: snapshot_dir.to_path_buf(),
            applied,
            snapshot_lock: Arc::new(Mutex::new(())),
        })
    }

    fn write_entry(&self, mutations: Vec<Mutation>, applied: &AppliedState) -> io::Result<()> {
        let sm = self.db.cf_handle(CF_SM).expect("column family exists");
        let sm_meta = self.db.cf_handle(CF_SM_META).expect("column family exists");
        let mut batch = WriteBatch::default();
        for m in mutations {
            match m {
                Mutation::Put(k, v) => batch.put_cf(sm, k, v),
                Mutation::Delete(k) => batch.delete_cf(sm, k),
            }
        }
        batch.put_cf(sm_meta, KEY_APPLIED, value::encode(applied));
        self.db.write(batch).map_err(io_err)
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_SNAPSHOT)
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `path` the current snapshot unless the current one is newer.
fn promote_snapshot(
    lock: &Mutex<()>,
    snapshot_dir: &Path,
    path: &Path,
    meta: &SnapshotMeta,
) -> io::Result<bool> {
    let _guard = lock.lock().expect("snapshot lock");
    let current = snapshot_dir.join(CURRENT_SNAPSHOT);
    if let Ok(mut file) = File::open(&current)
        && let Ok(existing) = read_meta(&mut file)
        && existing.last_log_id > meta.last_log_id
    {
        return Ok(false);
    }
    if path != current {
        fs::rename(path, &current)?;
        fsync_dir(snapshot_dir)?;
    }
    Ok(true)
}

/// Builds a snapshot from a RocksDB checkpoint taken on the state machine's task, so that
/// applying goes on while the file is written.
pub struct SnapshotBuilder {
    checkpoint_dir: PathBuf,
    snapshot_dir: PathBuf,
    meta: SnapshotMeta,
    snapshot_lock: Arc<Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let checkpoint_dir = self.checkpoint_dir.clone();
        let snapshot_dir = self.snapshot_dir.clone();
        let meta = self.meta.clone();
        let lock = self.snapshot_lock.clone();
        let (meta, path, n_records) = blocking(move || {
            let tmp = snapshot_dir.join(format!("build-{:016x}.snap", rand_suffix()));
            let n_records = {
                let db = DB::open_cf_for_read_only(
                    &rocksdb::Options::default(),
                    &checkpoint_dir,
                    [super::CF_LOG, super::CF_RAFT_META, CF_SM, CF_SM_META],
                    false,
                )
                .map_err(io_err)?;
                let cf = db.cf_handle(CF_SM).expect("column family exists");
                let mut writer = SnapshotWriter::create(&tmp, &meta)?;
                for item in db.iterator_cf(cf, IteratorMode::Start) {
                    let (k, v) = item.map_err(io_err)?;
                    writer.record(&k, &v)?;
                }
                writer.finish()?
            };
            fs::remove_dir_all(&checkpoint_dir)?;
            let path = if promote_snapshot(&lock, &snapshot_dir, &tmp, &meta)? {
                snapshot_dir.join(CURRENT_SNAPSHOT)
            } else {
                // A newer snapshot was installed meanwhile; hand out this one anyway, as
                // openraft asked for it, from its temporary file.
                tmp
            };
            Ok((meta, path, n_records))
        })
        .await?;
        info!(raft_index = ?meta.last_log_id.as_ref().map(|l| l.index), n_records, "snapshot built");
        let file = File::open(&path)?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path, file },
        })
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    // Unique enough for a temporary name within one directory we clean at start-up.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((
            self.applied.last_applied,
            self.applied.last_membership.clone(),
        ))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let (applied, response, mutations) =
                apply_entry(&RocksKv::new(&self.db), &self.applied, &entry)?;
            self.write_entry(mutations, &applied)?;
            self.applied = applied;
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let checkpoint_dir = self
            .snapshot_dir
            .join(format!("checkpoint-{:016x}", rand_suffix()));
        // Taken here, on the state machine's task, so it matches `applied` exactly.
        if let Err(e) = rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&checkpoint_dir))
        {
            // build_snapshot will fail opening it and report the error to openraft.
            warn!(error = %e, "failed to create checkpoint for snapshot");
        }
        SnapshotBuilder {
            checkpoint_dir,
            snapshot_dir: self.snapshot_dir.clone(),
            meta: SnapshotMeta {
                last_log_id: self.applied.last_applied,
                last_membership: self.applied.last_membership.clone(),
            },
            snapshot_lock: self.snapshot_lock.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let snapshot_dir = self.snapshot_dir.clone();
        let lock = self.snapshot_lock.clone();
        let meta_owned = meta.clone();
        blocking(move || {
            let SnapshotFile { path, mut file } = snapshot;
            // Verify the whole file before touching the state.
            let (file_meta, _) = read_records(&mut file, &mut |_, _| Ok(()))?;
            if file_meta != meta_owned {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file meta differs from the announced meta",
                ));
            }
            // A received snapshot is a temporary file of ours and moves into place; any
            // other file (another store's snapshot, in tests) is copied, never taken away.
            let ours = path.parent() == Some(snapshot_dir.as_path())
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("recv-"));
            let path = if ours {
                path
            } else {
                let copy = snapshot_dir.join(format!("recv-{:016x}.snap", rand_suffix()));
                fs::copy(&path, &copy)?;
                File::open(&copy)?.sync_all()?;
                copy
            };
            promote_snapshot(&lock, &snapshot_dir, &path, &meta_owned)?;
            let sm = db.cf_handle(CF_SM).expect("column family exists");
            let sm_meta = db.cf_handle(CF_SM_META).expect("column family exists");
            // Mark the state invalid first: a crash mid-load leaves no applied id, and
            // openraft installs the (now current) snapshot again at start-up.
            let mut batch = WriteBatch::default();
            batch.put_cf(
                sm_meta,
                KEY_APPLIED,
                value::encode(&AppliedState::default()),
            );
            batch.delete_range_cf(sm, [].as_slice(), [0xFFu8; 16].as_slice());
            db.write_opt(batch, &sync_write()).map_err(io_err)?;
            let mut batch = WriteBatch::default();
            read_records(&mut file, &mut |k, v| {
                batch.put_cf(sm, k, v);
                if batch.size_in_bytes() > 4 << 20 {
                    db.write(std::mem::take(&mut batch)).map_err(io_err)?;
                }
                Ok(())
            })?;
            batch.put_cf(
                sm_meta,
                KEY_APPLIED,
                value::encode(&AppliedState {
                    last_applied: meta_owned.last_log_id,
                    last_membership: meta_owned.last_membership.clone(),
                }),
            );
            db.write_opt(batch, &sync_write()).map_err(io_err)?;
            Ok(())
        })
        .await?;
        self.applied = AppliedState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        info!(raft_index = ?meta.last_log_id.as_ref().map(|l| l.index), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let path = self.current_snapshot_path();
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = read_meta(&mut file)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotFile { path, file },
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::store::{LogStore, open_db};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>>
        {
            let err = |e: &dyn std::error::Error| {
                StorageError::read(TypeConfig::err_from_string(e.to_string()))
            };
            let dir = tempfile::tempdir().map_err(|e| err(&e))?;
            let db = open_db(&dir.path().join("db")).map_err(|e| err(&e))?;
            let sm = StateMachineStore::open(db.clone(), &dir.path().join("snapshots"))
                .map_err(|e| err(&e))?;
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// openraft's own storage test suite against the RocksDB log store and state machine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).await.expect("storage suite");
    }
}
