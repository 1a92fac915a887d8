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
mod snapshot;
mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteOptions};

pub use log_store::{AppendCounters, LogStore};
pub use state_machine::{RocksKv, StateMachineStore};

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// Opens (or creates) the voter's database.
pub fn open_db(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
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
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
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
