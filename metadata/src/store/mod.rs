//! RocksDB storage of the Raft log and the state machine.
//!
//! One RocksDB instance per voter, with column families:
//! - `raft_log`: entries by index (u64 big-endian);
//! - `raft_meta`: vote, last purged log id, committed log id;
//! - `sm`: the state machine's keys (see `keys`);
//! - `sm_meta`: the applied log id and membership, written in the same batch as the
//!   mutations of the entry they describe, so no entry is applied twice or half.
//!
//! Log appends and votes are fsync'd before Raft is told they are durable. State machine
//! writes are not: the log holds every applied entry, and after a crash openraft re-applies
//! from the applied id that was persisted with the data.

mod log_store;
#[cfg(any(test, feature = "sim"))]
mod mem;
mod snapshot;
mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteOptions};
use tokio::sync::watch;

pub use log_store::{AppendCounters, LogStore};
#[cfg(any(test, feature = "sim"))]
pub use mem::{MemDisk, MemLogStore, MemState, MemStateMachine};
pub use state_machine::{RocksKv, StateMachineStore};

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// The voter's RocksDB, shared by the log store, the state machine and readers.
///
/// RocksDB closes when the last handle drops, and until then its directory stays locked:
/// a voter reopened in the same process fails with "lock hold by current process". The
/// last handle is often not the voter's own but one in a blocking task or in openraft's
/// state machine worker, which outlive `Raft::shutdown`. [`DbClosed`] lets shutdown wait
/// for the close itself instead of guessing when it happens.
pub struct Db {
    // Declared before `closed`, so it is dropped (RocksDB closed, LOCK released) first.
    db: DB,
    closed: watch::Sender<()>,
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        &self.db
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.db.path()).finish()
    }
}

impl Db {
    /// Resolves once this database has been closed.
    pub fn closed(&self) -> DbClosed {
        DbClosed(self.closed.subscribe())
    }
}

/// A database's close, to wait for; see [`Db`].
#[derive(Clone, Debug)]
pub struct DbClosed(watch::Receiver<()>);

impl DbClosed {
    /// Waits until the last handle to the database has dropped and RocksDB has closed.
    pub async fn wait(mut self) {
        // Nothing is ever sent: `changed` fails exactly when the sender, dropped after the
        // DB, is gone.
        while self.0.changed().await.is_ok() {}
    }
}

/// Opens (or creates) the voter's database.
pub fn open_db(path: &Path) -> Result<Arc<Db>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Few, large files; metadata is small next to the data it describes.
    opts.set_max_background_jobs(2);
    let cf = |name: &str| {
        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        ColumnFamilyDescriptor::new(name, cf_opts)
    };
    let cfs = [CF_LOG, CF_RAFT_META, CF_SM, CF_SM_META].map(cf);
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    Ok(Arc::new(Db {
        db,
        closed: watch::Sender::new(()),
    }))
}

pub(crate) fn io_err(e: rocksdb::Error) -> io::Error {
    io::Error::other(e)
}

pub(crate) fn decode_err(e: crate::value::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

pub(crate) fn sync_write() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Runs blocking storage work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Checks a snapshot file end to end; returns its meta.
pub fn verify_snapshot_file(
    file: &mut std::fs::File,
) -> io::Result<crate::raft_types::SnapshotMeta> {
    snapshot::read_records(file, &mut |_, _| Ok(())).map(|(meta, _)| meta)
}
