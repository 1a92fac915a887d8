//! The Raft log in RocksDB.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CF_LOG, CF_RAFT_META, Db, blocking, decode_err, io_err, sync_write};
use crate::raft_types::{Entry, LogId, TypeConfig, Vote};
use crate::value;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// How many appends (each one fsync) carried how many entries: entries per append above 1
/// means concurrent proposals shared an fsync.
#[derive(Debug, Default)]
pub struct AppendCounters {
    /// Append calls, one fsync each.
    pub n_appends: AtomicU64,
    /// Entries written by them.
    pub n_entries: AtomicU64,
}

/// The log store; cheap to clone (readers share the database).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Db>,
    counters: Arc<AppendCounters>,
}

impl LogStore {
    /// A log store on an open database.
    pub fn new(db: Arc<Db>) -> LogStore {
        LogStore {
            db,
            counters: Arc::default(),
        }
    }

    /// The append counters (shared by clones).
    pub fn counters(&self) -> Arc<AppendCounters> {
        self.counters.clone()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = self
            .db
            .cf_handle(CF_RAFT_META)
            .expect("column family exists");
        match self.db.get_cf(cf, key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => value::decode(&bytes).map(Some).map_err(decode_err),
        }
    }

    async fn put_meta_sync<T: Serialize>(&self, key: &'static [u8], v: &T) -> io::Result<()> {
        let bytes = value::encode(v);
        let db = self.db.clone();
        blocking(move || {
            let cf = db.cf_handle(CF_RAFT_META).expect("column family exists");
            let mut batch = WriteBatch::default();
            batch.put_cf(cf, key, bytes);
            db.write_opt(batch, &sync_write()).map_err(io_err)
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf_handle(CF_LOG).expect("column family exists");
        let mut entries = Vec::new();
        let start_key = index_key(start);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start_key, Direction::Forward))
        {
            let (key, bytes) = item.map_err(io_err)?;
            let index =
                u64::from_be_bytes(key[..].try_into().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "log key not 8 bytes")
                })?);
            if !range.contains(&index) {
                break;
            }
            entries.push(value::decode::<Entry>(&bytes).map_err(decode_err)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let cf = self.db.cf_handle(CF_LOG).expect("column family exists");
        let last = match self.db.iterator_cf(cf, IteratorMode::End).next() {
            Some(item) => {
                let (_, bytes) = item.map_err(io_err)?;
                Some(value::decode::<Entry>(&bytes).map_err(decode_err)?.log_id)
            }
            None => None,
        };
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = match (last, &last_purged_log_id) {
            (Some(last), _) => Some(last),
            (None, purged) => *purged,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta_sync(KEY_VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsync'd: a lost committed id only means openraft re-learns it from the leader
        // (or, alone, from a quorum of one) before applying further.
        let cf = self
            .db
            .cf_handle(CF_RAFT_META)
            .expect("column family exists");
        self.db
            .put_cf(cf, KEY_COMMITTED, value::encode(&committed))
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
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
        let cf = self.db.cf_handle(CF_LOG).expect("column family exists");
        let mut batch = WriteBatch::default();
        let mut n_entries = 0;
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), value::encode(&entry));
            n_entries += 1;
        }
        self.counters.n_appends.fetch_add(1, Ordering::Relaxed);
        self.counters
            .n_entries
            .fetch_add(n_entries, Ordering::Relaxed);
        let db = self.db.clone();
        // One fsync for the whole batch: entries proposed together share it.
        blocking(move || db.write_opt(batch, &sync_write()).map_err(io_err)).await?;
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let db = self.db.clone();
        blocking(move || {
            let cf = db.cf_handle(CF_LOG).expect("column family exists");
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, index_key(from), index_key(u64::MAX));
            batch.delete_cf(cf, index_key(u64::MAX));
            db.write_opt(batch, &sync_write()).map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let db = self.db.clone();
        let purged = value::encode(&log_id);
        blocking(move || {
            // The marker and the deletion in one batch: the log never has a hole.
            let mut batch = WriteBatch::default();
            batch.put_cf(
                db.cf_handle(CF_RAFT_META).expect("column family exists"),
                KEY_PURGED,
                purged,
            );
            batch.delete_range_cf(
                db.cf_handle(CF_LOG).expect("column family exists"),
                index_key(0),
                index_key(log_id.index + 1),
            );
            db.write_opt(batch, &sync_write()).map_err(io_err)
        })
        .await
    }
}
