//! Shards as files on a local disk.
//!
//! ```text
//! <root>/node.json            which node id owns this directory (refuses a swapped disk)
//! <root>/tmp/                 shards being written; emptied at start-up
//! <root>/shards/<ab>/<id>     committed shards, <ab> = first byte of the stripe id in hex
//! <root>/segments/            small shards as records in segment files (segment.rs), when
//!                             enabled; read whenever the directory exists
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use lauscha_core::checksum::{BlockHash, SHARD_BLOCK_BYTES, block_len_bytes, n_blocks};
use lauscha_core::{NodeId, ShardDigest, ShardHasher, ShardId};
use tracing::{debug, info, warn};

use crate::format::{self, BLOCK_TABLE_OFFSET};
use crate::segment::{SEGMENT_SHARD_MAX_BYTES, SegmentLog};
use crate::{
    BlockReader, MAX_SHARD_BYTES, Ready, ShardEntry, ShardError, ShardHeader, ShardStore,
    ShardWriter, StoreUsage,
};

const NODE_FILE: &str = "node.json";
/// Blocks read from disk at once (1 MiB): a whole default-size shard in one read.
const READ_BATCH_BLOCKS: u64 = 16;

/// Choices of a [`DiskShardStore`]. The default is a file per shard; a server's storage
/// node uses segments unless configured not to (`StorageNodeConfig::small_shard_segments`).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskOptions {
    /// New shards of at most 256 KiB are appended to segment files (one `fdatasync` per
    /// group of concurrent commits, no file per shard) instead of being files of their
    /// own. Segments written before are read either way.
    pub small_shard_segments: bool,
}

/// A [`ShardStore`] on a local directory.
#[derive(Clone, Debug)]
pub struct DiskShardStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    node_id: NodeId,
    n_shards: AtomicU64,
    used_bytes: AtomicU64,
    /// Cleared when the kernel or file system turns out not to offer reads that fail
    /// instead of waiting for the disk: then every read goes to the blocking pool.
    cached_reads: AtomicBool,
    /// Small shards in segment files (`None`: no segments directory, none enabled).
    segments: Option<SegmentLog>,
    /// New small shards go to `segments`.
    small_to_segments: bool,
}

impl Inner {
    /// Counts a shard of `len_bytes` (header and data) in.
    fn count(&self, len_bytes: u64) {
        self.n_shards.fetch_add(1, Ordering::Relaxed);
        self.used_bytes.fetch_add(len_bytes, Ordering::Relaxed);
    }

    /// Counts a shard of `len_bytes` (header and data) out.
    fn uncount(&self, len_bytes: u64) {
        self.n_shards.fetch_sub(1, Ordering::Relaxed);
        self.used_bytes.fetch_sub(len_bytes, Ordering::Relaxed);
    }
}

impl DiskShardStore {
    /// Opens (or initialises) the store at `root` for `node_id`: checks that the directory
    /// belongs to this node, removes temporary files of interrupted writes, and counts what
    /// it holds.
    pub async fn open(root: impl Into<PathBuf>, node_id: NodeId) -> Result<Self, ShardError> {
        Self::open_with_options(root, node_id, DiskOptions::default()).await
    }

    /// As [`DiskShardStore::open`], with `options`.
    pub async fn open_with_options(
        root: impl Into<PathBuf>,
        node_id: NodeId,
        options: DiskOptions,
    ) -> Result<Self, ShardError> {
        let root = root.into();
        let inner = tokio::task::spawn_blocking(move || open_blocking(root, node_id, options))
            .await
            .map_err(|e| ShardError::Io(std::io::Error::other(e)))??;
        Ok(DiskShardStore {
            inner: Arc::new(inner),
        })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Opens the blocks covering `[offset, offset + len_bytes)` of a shard; `checked`:
    /// each block is checked against its hash as it is read.
    async fn open_reader(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
        checked: bool,
    ) -> Result<DiskBlockReader, ShardError> {
        let inner = self.inner.clone();
        let read = move |wait: Wait| {
            let (
                file,
                ShardHeader {
                    shard_len_bytes,
                    block_hashes,
                },
            ) = open_with_header(&inner, id, wait)?;
            let blocks = crate::blocks_to_read(id, shard_len_bytes, offset, len_bytes)?;
            let data_offset = file.base + format::header_len_bytes(shard_len_bytes);
            // A range of one batch (every small read) is read here, in the same trip to
            // the blocking pool as the header.
            let (ready, prefetch_error, next_block_idx) =
                if blocks.end - blocks.start <= READ_BATCH_BLOCKS {
                    let expected = &block_hashes[blocks.start as usize..blocks.end as usize];
                    match read_blocks(
                        &file,
                        id,
                        data_offset,
                        shard_len_bytes,
                        blocks.clone(),
                        checked.then_some(expected),
                        wait,
                    ) {
                        Ok(read) => (read.into(), None, blocks.end),
                        // Not an answer: the pool reads it again, waiting for the disk.
                        Err(e) if wait == Wait::CachedOnly => return Err(e),
                        Err(e) => (Default::default(), Some(e), blocks.end),
                    }
                } else {
                    (Default::default(), None, blocks.start)
                };
            Ok(DiskBlockReader {
                id,
                file,
                data_offset,
                header: ShardHeader {
                    shard_len_bytes,
                    block_hashes,
                },
                next_block_idx,
                first_block_idx: blocks.start,
                end_block_idx: blocks.end,
                ready,
                prefetch_error,
                failed: false,
                checked,
            })
        };
        if (1..=CACHED_READ_MAX_BYTES).contains(&len_bytes) {
            cached_or_blocking(&self.inner, read).await
        } else {
            blocking(move || read(Wait::Disk)).await
        }
    }

    /// Path of a committed shard's file (for tests and tools that damage shards on purpose;
    /// a shard in a segment has none).
    pub fn shard_path(&self, id: ShardId) -> PathBuf {
        shard_path(&self.inner.root, id)
    }
}

fn shard_dir(root: &Path, id: ShardId) -> PathBuf {
    let prefix = &id.stripe_id.to_string()[..2];
    root.join("shards").join(prefix)
}

fn shard_path(root: &Path, id: ShardId) -> PathBuf {
    shard_dir(root, id).join(id.to_string())
}

/// Makes a directory's entries durable (a created, renamed or removed name).
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_blocking(
    root: PathBuf,
    node_id: NodeId,
    options: DiskOptions,
) -> Result<Inner, ShardError> {
    fs::create_dir_all(root.join("tmp"))?;
    fs::create_dir_all(root.join("shards"))?;
    let node_file = root.join(NODE_FILE);
    match fs::read(&node_file) {
        Ok(bytes) => {
            let found = serde_json_node_id(&bytes).ok_or_else(|| {
                ShardError::InvalidRequest(format!(
                    "{} is not a node file; move it away if the disk is new",
                    node_file.display()
                ))
            })?;
            if found != node_id.0 {
                return Err(ShardError::WrongNode {
                    dir: root.display().to_string(),
                    found,
                    expected: node_id.0,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = root.join("node.json.tmp");
            let mut file = File::create(&tmp)?;
            file.write_all(format!("{{\"node_id\": {}, \"format\": 1}}\n", node_id.0).as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &node_file)?;
            fsync_dir(&root)?;
        }
        Err(e) => return Err(e.into()),
    }
    for byte in 0..=255u8 {
        fs::create_dir_all(root.join("shards").join(format!("{byte:02x}")))?;
    }
    fsync_dir(&root.join("shards"))?;

    let mut n_removed = 0;
    for entry in fs::read_dir(root.join("tmp"))? {
        fs::remove_file(entry?.path())?;
        n_removed += 1;
    }
    if n_removed > 0 {
        info!(node_id = %node_id, n_removed, "removed temporary files of interrupted writes");
    }

    let (mut n_shards, mut used_bytes) = (0u64, 0u64);
    for dir in fs::read_dir(root.join("shards"))? {
        for entry in fs::read_dir(dir?.path())? {
            let entry = entry?;
            n_shards += 1;
            used_bytes += entry.metadata()?.len();
        }
    }
    let segments = SegmentLog::open(&root, node_id, options.small_shard_segments)?.map(|opened| {
        n_shards += opened.n_shards;
        used_bytes += opened.used_bytes;
        opened.log
    });
    info!(node_id = %node_id, n_shards, used_bytes, root = %root.display(), "shard store open");
    Ok(Inner {
        root,
        node_id,
        n_shards: AtomicU64::new(n_shards),
        used_bytes: AtomicU64::new(used_bytes),
        cached_reads: AtomicBool::new(true),
        small_to_segments: options.small_shard_segments && segments.is_some(),
        segments,
    })
}

/// Reads `"node_id": N` from the node file without a JSON dependency: the file is ours and
/// has one field that matters.
fn serde_json_node_id(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?;
    let after = text.split("\"node_id\"").nth(1)?;
    let digits: String = after
        .trim_start_matches([' ', ':'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ShardError> + Send + 'static,
) -> Result<T, ShardError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShardError::Io(std::io::Error::other(e)))?
}

/// Where a read may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// In the blocking pool: opens and reads wait for the disk as long as it takes.
    Disk,
    /// On an async worker thread, which must not wait for the disk: the path must be in
    /// the kernel's dentry cache (`openat2` with `RESOLVE_CACHED`) and the bytes in its
    /// page cache (`preadv2` with `RWF_NOWAIT`); anything else fails at once. Opened with
    /// `O_NOATIME`: an access-time update (the first read after a commit, under
    /// `relatime`) is an inode write that may wait for the file system's journal.
    /// Closing the file is left to the thread too: it waits for nothing unless the shard
    /// was deleted meanwhile and this was its last open file (then it frees the inode).
    CachedOnly,
}

/// The largest read tried on the async worker thread first (bytes; four blocks' worth, the
/// most a gateway's block cache asks for, which may touch five blocks when not aligned):
/// it copies from the page cache, and a copy much longer would hold up the other tasks of
/// that thread.
const CACHED_READ_MAX_BYTES: u64 = 4 * SHARD_BLOCK_BYTES;

/// Runs `read` on this thread with [`Wait::CachedOnly`] and, if that failed in any way,
/// in the blocking pool with [`Wait::Disk`], whose answer (an error too) stands. A small
/// read of a shard the kernel has cached, the common case on a node with memory to spare,
/// then costs no trip to the pool (two thread wake-ups): a fifth less server CPU per
/// 4 KiB random read through the NBD server, and a third more of them (ARCHITECTURE.md,
/// storage-node). Reading twice is safe because shards never change once committed.
/// A working set larger than the page cache pays a failed attempt (an open and a header
/// read, microseconds) on every miss before the pool; nothing counts those yet.
async fn cached_or_blocking<T: Send + 'static>(
    inner: &Inner,
    read: impl Fn(Wait) -> Result<T, ShardError> + Send + 'static,
) -> Result<T, ShardError> {
    if inner.cached_reads.load(Ordering::Relaxed) {
        match read(Wait::CachedOnly) {
            Ok(done) => return Ok(done),
            Err(ShardError::Io(e)) if cached_reads_unsupported(&e) => {
                if inner.cached_reads.swap(false, Ordering::Relaxed) {
                    info!(
                        node_id = %inner.node_id, error = %e,
                        "no reads that fail instead of waiting for the disk here (Linux 5.12 \
                         or later and a file system that has them); every read goes to the \
                         blocking pool"
                    );
                }
            }
            Err(_) => {}
        }
    }
    blocking(move || read(Wait::Disk)).await
}

/// Whether `e`, from `openat2(RESOLVE_CACHED | O_NOATIME)` or `preadv2(RWF_NOWAIT)`,
/// says that they cannot be had here at all, rather than that this read would have waited:
/// a kernel before 5.6 (ENOSYS) or 5.12 (EINVAL, for `RESOLVE_CACHED`), a file system
/// without `RWF_NOWAIT` (EOPNOTSUPP), or a node that does not own its files or runs under
/// a seccomp profile that refuses `openat2` (EPERM).
fn cached_reads_unsupported(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::ENOSYS,
            Errno::EINVAL,
            Errno::EOPNOTSUPP,
            Errno::EPERM,
        ]
        .contains(&Errno::from_raw(n))
    })
}

/// Bad spots for tests: reads of a range of a file (by inode) that fail with EIO, as a
/// disk's media error would. Only the reads that judge and serve shards look here.
#[cfg(test)]
pub(crate) mod read_faults {
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    static BAD: Mutex<Vec<(u64, u64, u64, u64)>> = Mutex::new(Vec::new());

    fn inode(file: &File) -> Option<(u64, u64)> {
        let meta = file.metadata().ok()?;
        Some((meta.dev(), meta.ino()))
    }

    /// Reads of `file` that touch `[from, to)` fail until the guard is dropped (which
    /// must come before the file is deleted: its inode number may be reused).
    #[must_use]
    pub(crate) fn add(file: &File, from: u64, to: u64) -> BadSpot {
        let (dev, ino) = inode(file).expect("fstat");
        let spot = (dev, ino, from, to);
        BAD.lock().unwrap_or_else(|e| e.into_inner()).push(spot);
        BadSpot(spot)
    }

    /// A bad spot, there until dropped.
    pub(crate) struct BadSpot((u64, u64, u64, u64));

    impl Drop for BadSpot {
        fn drop(&mut self) {
            let mut bad = BAD.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = bad.iter().position(|s| *s == self.0) {
                bad.remove(i);
            }
        }
    }

    pub(crate) fn check(file: &File, offset: u64, len: usize) -> std::io::Result<()> {
        if BAD.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Ok(());
        }
        let Some((dev, ino)) = inode(file) else {
            return Ok(());
        };
        let bad = BAD.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset + len as u64;
        if bad
            .iter()
            .any(|&(d, i, from, to)| (d, i) == (dev, ino) && offset < to && from < end)
        {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EIO));
        }
        Ok(())
    }
}

/// A bad spot of the tests' (`read_faults`) under `[offset, +len)` of `file`; nothing
/// outside tests.
#[inline]
pub(crate) fn read_fault(_file: &File, _offset: u64, _len: usize) -> std::io::Result<()> {
    #[cfg(test)]
    read_faults::check(_file, _offset, _len)?;
    Ok(())
}

/// Fills `buf` from `offset` with bytes the page cache holds; fails with
/// `ErrorKind::WouldBlock` where the disk would have to be read (or the file ends first:
/// [`Wait::Disk`] tells which).
fn read_cached_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), ShardError> {
    read_fault(file, offset, buf.len())?;
    let n = rustix::io::preadv2(
        file,
        &mut [std::io::IoSliceMut::new(buf)],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .map_err(std::io::Error::from)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(ShardError::Io(std::io::ErrorKind::WouldBlock.into()))
    }
}

impl ShardStore for DiskShardStore {
    type Writer = DiskShardWriter;
    type Reader = DiskBlockReader;

    async fn create(
        &self,
        id: ShardId,
        len_bytes: u64,
        digest: ShardDigest,
    ) -> Result<DiskShardWriter, ShardError> {
        if len_bytes > MAX_SHARD_BYTES {
            return Err(ShardError::InvalidRequest(format!(
                "shard of {len_bytes} bytes exceeds the {MAX_SHARD_BYTES}-byte limit"
            )));
        }
        if self.inner.segments.as_ref().is_some_and(|s| s.contains(id)) {
            return Err(ShardError::AlreadyExists(id));
        }
        if self.inner.small_to_segments && len_bytes <= SEGMENT_SHARD_MAX_BYTES {
            // A shard file of this id (written before segments were enabled) takes it
            // too; the commit checks again.
            let exists = match shard_file_exists_cached(&self.inner.root, id) {
                Some(exists) => exists,
                None => {
                    let path = shard_path(&self.inner.root, id);
                    blocking(move || Ok(path.exists())).await?
                }
            };
            if exists {
                return Err(ShardError::AlreadyExists(id));
            }
            // Kept in memory until the commit, which writes it in one go.
            return Ok(DiskShardWriter {
                inner: self.inner.clone(),
                id,
                declared_len_bytes: len_bytes,
                declared_digest: digest,
                given_block_hashes: None,
                destination: Destination::Segment(SegmentBytes::Empty),
            });
        }
        let inner = self.inner.clone();
        blocking(move || {
            let final_path = shard_path(&inner.root, id);
            if final_path.exists() {
                return Err(ShardError::AlreadyExists(id));
            }
            let tmp_path = inner
                .root
                .join("tmp")
                .join(format!("{id}.{:016x}", rand::random::<u64>()));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_path)?;
            let header_len = format::header_len_bytes(len_bytes);
            file.set_len(header_len)?;
            Ok(DiskShardWriter {
                inner,
                id,
                declared_len_bytes: len_bytes,
                declared_digest: digest,
                given_block_hashes: None,
                destination: Destination::File {
                    state: Some(Box::new(WriteState {
                        file,
                        hashing: Hashing::Hash(ShardHasher::new()),
                        offset: header_len,
                    })),
                    tmp_path: Some(tmp_path),
                },
            })
        })
        .await
    }

    async fn create_prehashed(
        &self,
        id: ShardId,
        len_bytes: u64,
        digest: ShardDigest,
        block_hashes: Arc<[BlockHash]>,
    ) -> Result<DiskShardWriter, ShardError> {
        lauscha_core::checksum::verify_block_hashes(len_bytes, &block_hashes, &digest).map_err(
            |_| {
                ShardError::InvalidRequest(format!(
                    "the block hashes given for shard {id} do not make its digest"
                ))
            },
        )?;
        let mut writer = self.create(id, len_bytes, digest).await?;
        if let Destination::File {
            state: Some(state), ..
        } = &mut writer.destination
        {
            state.hashing = Hashing::Given {
                block_hashes: block_hashes.clone(),
                len_bytes: 0,
            };
        }
        writer.given_block_hashes = Some(block_hashes);
        Ok(writer)
    }

    async fn open(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> Result<DiskBlockReader, ShardError> {
        self.open_reader(id, offset, len_bytes, true).await
    }

    async fn open_unchecked(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> Result<DiskBlockReader, ShardError> {
        self.open_reader(id, offset, len_bytes, false).await
    }

    async fn read_block_unchecked(
        &self,
        id: ShardId,
        block_idx: u64,
    ) -> Result<(ShardHeader, Bytes), ShardError> {
        let inner = self.inner.clone();
        cached_or_blocking(&self.inner, move |wait| {
            let (file, header) = open_with_header(&inner, id, wait)?;
            if block_idx >= n_blocks(header.shard_len_bytes) {
                return Err(ShardError::InvalidRequest(format!(
                    "block {block_idx} outside shard {id} of {} bytes",
                    header.shard_len_bytes
                )));
            }
            let block = read_new_at(
                &file,
                id,
                block_len_bytes(header.shard_len_bytes, block_idx) as usize,
                file.base
                    + format::header_len_bytes(header.shard_len_bytes)
                    + block_idx * SHARD_BLOCK_BYTES,
                wait,
            )?;
            Ok((header, Bytes::from(block)))
        })
        .await
    }

    async fn delete(&self, id: ShardId) -> Result<bool, ShardError> {
        let inner = self.inner.clone();
        blocking(move || {
            if let Some(len) = match &inner.segments {
                Some(segments) => segments.delete(id)?,
                None => None,
            } {
                inner.uncount(len);
                debug!(node_id = %inner.node_id, shard_id = %id, "shard deleted from its segment");
                return Ok(true);
            }
            let path = shard_path(&inner.root, id);
            let len = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            fsync_dir(&shard_dir(&inner.root, id))?;
            inner.uncount(len);
            debug!(node_id = %inner.node_id, shard_id = %id, "shard deleted");
            Ok(true)
        })
        .await
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            n_shards: self.inner.n_shards.load(Ordering::Relaxed),
            used_bytes: self.inner.used_bytes.load(Ordering::Relaxed),
        }
    }

    async fn list(
        &self,
        after: Option<ShardId>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        let inner = self.inner.clone();
        let mut in_files = blocking(move || {
            let mut out = Vec::new();
            let first_dir = after.map_or(0, |a| a.stripe_id.to_bytes()[0]);
            for dir_byte in first_dir..=255u8 {
                let dir = inner.root.join("shards").join(format!("{dir_byte:02x}"));
                let mut entries: Vec<ShardEntry> = Vec::new();
                for entry in fs::read_dir(&dir)? {
                    let entry = entry?;
                    // Names that are not shard ids are not ours to list (or delete).
                    let Some(id) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<ShardId>().ok())
                    else {
                        continue;
                    };
                    if after.is_some_and(|a| id <= a) {
                        continue;
                    }
                    entries.extend(listed_shard_file(inner.node_id, id, entry.metadata()));
                }
                entries.sort_by_key(|e| e.id);
                for entry in entries {
                    out.push(entry);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
        .await?;
        if let Some(segments) = &self.inner.segments {
            // Both lists are in id order: the first `limit` of the two together.
            in_files.extend(segments.list(after, limit));
            in_files.sort_by_key(|e| e.id);
            in_files.truncate(limit);
        }
        Ok(in_files)
    }

    async fn verify(&self, id: ShardId) -> Result<(), ShardError> {
        let mut reader = self.open(id, 0, 0).await?;
        while let Some(block) = reader.next_block().await {
            block?;
        }
        Ok(())
    }

    async fn quarantine(&self, id: ShardId) -> Result<bool, ShardError> {
        self.take_out(id, false).await
    }

    async fn quarantine_unreadable(&self, id: ShardId) -> Result<bool, ShardError> {
        self.take_out(id, true).await
    }

    fn free_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.inner.root)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(u64::MAX)
    }
}

/// Now, in seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The listing of shard file `id`, from its `stat`. `None` if it was deleted since the
/// directory was read. A `stat` that fails otherwise (an inode the disk cannot give
/// back) still lists it, with length 0 and written now (age unknown: orphan collection
/// must give it its grace, as it may be a write in progress): failing the listing would
/// end every scrub pass at the same page and make maintenance treat the whole node as
/// unreachable, pass after pass. Listed, the scrubber tries it and counts the error.
fn listed_shard_file(
    node_id: NodeId,
    id: ShardId,
    stat: std::io::Result<std::fs::Metadata>,
) -> Option<ShardEntry> {
    match stat {
        Ok(meta) => Some(ShardEntry {
            id,
            len_bytes: meta.len(),
            modified_unix_s: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(node_id = %node_id, shard_id = %id, error = %e, "shard file cannot be stat'ed: listed with length 0, as written now");
            Some(ShardEntry {
                id,
                len_bytes: 0,
                modified_unix_s: unix_now_s(),
            })
        }
    }
}

impl DiskShardStore {
    /// `ShardStore::quarantine`, and with `unreadable_too` `quarantine_unreadable`.
    async fn take_out(&self, id: ShardId, unreadable_too: bool) -> Result<bool, ShardError> {
        let inner = self.inner.clone();
        blocking(move || {
            let in_segment = inner
                .segments
                .as_ref()
                .is_some_and(|segments| segments.contains(id));
            let quarantine = inner.root.join("quarantine");
            // Unique: two quarantines of one id in the same second (scrub and a reader's
            // VerifyShard) must not overwrite each other's kept copy.
            let stamp = format!("{}.{:08x}", unix_now_s(), rand::random::<u32>());
            if let Some(segments) = &inner.segments
                && let Some(taken) =
                    take_out_of_segment(&inner, segments, id, unreadable_too, &quarantine, &stamp)?
            {
                return Ok(taken);
            }
            if in_segment {
                return Ok(false); // deleted meanwhile
            }
            // A shard file is judged through one open file and moved only if the file
            // moved is that one (same inode); another that took its place in between (a
            // rebuilt copy) is linked back.
            let path = shard_path(&inner.root, id);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            match shard_file_checks_out(id, &file) {
                Ok(true) => {
                    info!(node_id = %inner.node_id, shard_id = %id, "shard to quarantine checks out (written again since it was found corrupt): left in service");
                    return Ok(false);
                }
                Ok(false) => {}
                // The disk cannot give it back: out of service too, so that repair
                // rebuilds it (kept aside as it is, in case it can be read later).
                Err(e) if unreadable_too && e.is_unreadable() => {
                    warn!(node_id = %inner.node_id, shard_id = %id, error = %e, "shard to quarantine cannot be read: moved out of service");
                }
                Err(e) => return Err(e),
            }
            let judged = file.metadata()?;
            fs::create_dir_all(&quarantine)?;
            let kept = quarantine.join(format!("{id}.{stamp}"));
            match fs::rename(&path, &kept) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            let moved = fs::metadata(&kept)?;
            if (moved.dev(), moved.ino()) != (judged.dev(), judged.ino()) {
                match fs::hard_link(&kept, &path) {
                    Ok(()) => {}
                    // Yet another copy is there: the one moved is not needed.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        inner.uncount(moved.len());
                    }
                    Err(e) => return Err(e.into()),
                }
                fs::remove_file(&kept)?;
                fsync_dir(&shard_dir(&inner.root, id))?;
                info!(node_id = %inner.node_id, shard_id = %id, "shard written again while being quarantined: the new copy left in service");
                return Ok(false);
            }
            // Out of service from the rename on, whatever the syncs say (they can fail on a
            // failing disk; a restart counts the shards again anyway).
            inner.uncount(judged.len());
            if let Err(e) =
                fsync_dir(&shard_dir(&inner.root, id)).and_then(|()| fsync_dir(&quarantine))
            {
                warn!(node_id = %inner.node_id, shard_id = %id, error = %e, "quarantine moved the shard, but syncing its directories failed: it may be back in service after a crash");
            }
            warn!(node_id = %inner.node_id, shard_id = %id, "corrupt shard quarantined");
            Ok(true)
        })
        .await
    }
}

/// `DiskShardStore::take_out` for a shard in a segment; `None` if it is in none.
fn take_out_of_segment(
    inner: &Inner,
    segments: &SegmentLog,
    id: ShardId,
    unreadable_too: bool,
    quarantine: &Path,
    stamp: &str,
) -> Result<Option<bool>, ShardError> {
    let pos_before = segments.position(id);
    let found = match segments.read_image(id) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        // Its bytes cannot be kept aside: the record is taken out where it is (a
        // tombstone), if it is still the one looked up before the read failed (one
        // written since, a rebuilt copy, stays). Its bytes stay in the segment file until
        // compaction, for an operator to try again.
        Err(e) if unreadable_too && e.is_unreadable() => {
            let Some(pos) = pos_before else {
                return Err(e);
            };
            let Some(len) = segments.delete_if_at(id, pos)? else {
                info!(node_id = %inner.node_id, shard_id = %id, "shard written again while being taken out: the new copy left in service");
                return Ok(Some(false));
            };
            inner.uncount(len);
            warn!(node_id = %inner.node_id, shard_id = %id, position = ?pos, error = %e, "unreadable shard taken out of its segment (its bytes could not be kept aside)");
            return Ok(Some(true));
        }
        Err(e) => return Err(e),
    };
    if found.checks_out {
        info!(node_id = %inner.node_id, shard_id = %id, "shard to quarantine checks out (written again since it was found corrupt): left in service");
        return Ok(Some(false));
    }
    // Kept aside as the shard file it would have been, then deleted: that record only,
    // not a copy written since.
    fs::create_dir_all(quarantine)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(quarantine.join(format!("{id}.{stamp}")))?;
    file.write_all(&found.image)?;
    file.sync_all()?;
    fsync_dir(quarantine)?;
    let Some(len) = segments.delete_if_at(id, found.pos)? else {
        info!(node_id = %inner.node_id, shard_id = %id, "shard written again while being quarantined: the new copy left in service");
        return Ok(Some(false));
    };
    inner.uncount(len);
    warn!(node_id = %inner.node_id, shard_id = %id, "corrupt shard quarantined from its segment");
    Ok(Some(true))
}

/// Where a shard's bytes are: its header at `base` of `file`, its data right behind.
#[derive(Clone)]
struct ShardFile {
    file: Arc<File>,
    base: u64,
    /// A segment file, which readers share: reads must not use its cursor.
    shared: bool,
}

/// Opens a shard (its segment, or its file) and reads its header, checking the block table
/// against the digest.
fn open_with_header(
    inner: &Inner,
    id: ShardId,
    wait: Wait,
) -> Result<(ShardFile, ShardHeader), ShardError> {
    let shard = match inner.segments.as_ref().and_then(|s| s.locate(id)) {
        Some((file, base)) => ShardFile {
            file,
            base,
            shared: true,
        },
        None => ShardFile {
            file: Arc::new(open_shard_file(&inner.root, id, wait)?),
            base: 0,
            shared: false,
        },
    };
    let mut fixed = [0u8; BLOCK_TABLE_OFFSET as usize];
    read_exact_at_or_corrupt(&shard.file, id, &mut fixed, shard.base, "header", wait)?;
    let (shard_len_bytes, digest) = format::decode_fixed_header(id, &fixed)?;
    let table_len = format::header_len_bytes(shard_len_bytes) - BLOCK_TABLE_OFFSET;
    let mut table = vec![0u8; table_len as usize];
    read_exact_at_or_corrupt(
        &shard.file,
        id,
        &mut table,
        shard.base + BLOCK_TABLE_OFFSET,
        "block table",
        wait,
    )?;
    let block_hashes = format::decode_block_hashes(id, shard_len_bytes, &digest, &table)?;
    Ok((
        shard,
        ShardHeader {
            shard_len_bytes,
            block_hashes,
        },
    ))
}

/// Whether a shard file exists, if the kernel can tell without reading the disk (a cached
/// entry, or a cached "no such entry"); `None`: it would have to read it.
fn shard_file_exists_cached(root: &Path, id: ShardId) -> Option<bool> {
    match rustix::fs::openat2(
        rustix::fs::CWD,
        shard_path(root, id),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::CACHED,
    ) {
        Ok(_) => Some(true),
        Err(rustix::io::Errno::NOENT) => Some(false),
        Err(_) => None,
    }
}

fn open_shard_file(root: &Path, id: ShardId, wait: Wait) -> Result<File, ShardError> {
    let path = shard_path(root, id);
    let opened = match wait {
        Wait::Disk => File::open(path),
        Wait::CachedOnly => rustix::fs::openat2(
            rustix::fs::CWD,
            &path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOATIME,
            rustix::fs::Mode::empty(),
            rustix::fs::ResolveFlags::CACHED,
        )
        .map(File::from)
        .map_err(std::io::Error::from),
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ShardError::NotFound(id));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(file)
}

fn read_exact_at_or_corrupt(
    file: &File,
    id: ShardId,
    buf: &mut [u8],
    offset: u64,
    what: &str,
    wait: Wait,
) -> Result<(), ShardError> {
    read_fault(file, offset, buf.len())?;
    if wait == Wait::CachedOnly {
        return read_cached_at(file, buf, offset);
    }
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ShardError::Corrupt {
            id,
            what: format!("{what} truncated"),
        }),
        Err(e) => Err(e.into()),
    }
}

struct WriteState {
    file: File,
    hashing: Hashing,
    offset: u64,
}

/// Where a writer's block hashes come from.
#[expect(
    clippy::large_enum_variant,
    reason = "lives in the boxed WriteState, or for a moment on a blocking task's stack"
)]
enum Hashing {
    /// It hashes the bytes as they arrive.
    Hash(ShardHasher),
    /// The writer in this process gave them (`create_prehashed`), checked against the
    /// declared length and digest at create; only the bytes are counted.
    Given {
        block_hashes: Arc<[BlockHash]>,
        len_bytes: u64,
    },
}

impl Hashing {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hashing::Hash(hasher) => hasher.update(bytes),
            Hashing::Given { len_bytes, .. } => *len_bytes += bytes.len() as u64,
        }
    }

    fn len_bytes(&self) -> u64 {
        match self {
            Hashing::Hash(hasher) => hasher.len_bytes(),
            Hashing::Given { len_bytes, .. } => *len_bytes,
        }
    }
}

/// Writes one shard into a temporary file; see [`ShardWriter`].
pub struct DiskShardWriter {
    inner: Arc<Inner>,
    id: ShardId,
    declared_len_bytes: u64,
    declared_digest: ShardDigest,
    /// From `create_prehashed`: the block hashes, checked against the declared digest.
    given_block_hashes: Option<Arc<[BlockHash]>>,
    destination: Destination,
}

/// Where a shard being written goes.
enum Destination {
    /// A small shard bound for a segment: its bytes so far, appended at the commit (no
    /// temporary file).
    Segment(SegmentBytes),
    /// A shard file, written to a temporary file first.
    File {
        /// Moved into blocking tasks and back; `None` only while one runs or after a
        /// failure. Boxed: the hasher is 2 KB.
        state: Option<Box<WriteState>>,
        /// Removed on drop unless the commit took it (`None` from then on).
        tmp_path: Option<PathBuf>,
    },
}

/// The bytes received so far of a shard bound for a segment. A shard that arrives in one
/// message (gateways send up to 256 KiB per message, so every segment shard of theirs) is
/// kept as that message's buffer and written from it: one copy of the data fewer, which
/// was about 3% of the CPU of 1 MiB sequential volume writes.
enum SegmentBytes {
    Empty,
    One(Bytes),
    Joined(Vec<u8>),
}

impl SegmentBytes {
    fn len_bytes(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn push(&mut self, bytes: Bytes) {
        *self = match std::mem::replace(self, SegmentBytes::Empty) {
            SegmentBytes::Empty => SegmentBytes::One(bytes),
            SegmentBytes::One(first) => {
                let mut joined = Vec::with_capacity(first.len() + bytes.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&bytes);
                SegmentBytes::Joined(joined)
            }
            SegmentBytes::Joined(mut joined) => {
                joined.extend_from_slice(&bytes);
                SegmentBytes::Joined(joined)
            }
        };
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            SegmentBytes::Empty => &[],
            SegmentBytes::One(bytes) => bytes,
            SegmentBytes::Joined(joined) => joined,
        }
    }
}

impl Drop for DiskShardWriter {
    fn drop(&mut self) {
        if let Destination::File { tmp_path, .. } = &mut self.destination
            && let Some(path) = tmp_path.take()
        {
            remove_abandoned(self.inner.node_id, self.id, &path);
        }
    }
}

/// Removes the temporary file of a write that did not commit; one already gone is fine.
fn remove_abandoned(node_id: NodeId, id: ShardId, tmp_path: &Path) {
    if let Err(e) = fs::remove_file(tmp_path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(node_id = %node_id, shard_id = %id, error = %e, "failed to remove abandoned temporary shard");
    }
}

impl ShardWriter for DiskShardWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), ShardError> {
        let slot = match &mut self.destination {
            Destination::Segment(buf) => {
                if buf.len_bytes() + bytes.len() as u64 > self.declared_len_bytes {
                    return Err(ShardError::Rejected {
                        id: self.id,
                        reason: format!("more than the declared {} bytes", self.declared_len_bytes),
                    });
                }
                buf.push(bytes);
                return Ok(());
            }
            Destination::File { state, .. } => state,
        };
        let mut state = slot
            .take()
            .ok_or_else(|| ShardError::InvalidRequest("write after a failed write".into()))?;
        let written = state.hashing.len_bytes();
        if written + bytes.len() as u64 > self.declared_len_bytes {
            return Err(ShardError::Rejected {
                id: self.id,
                reason: format!("more than the declared {} bytes", self.declared_len_bytes),
            });
        }
        let state = blocking(move || {
            state.file.write_all_at(&bytes, state.offset)?;
            state.offset += bytes.len() as u64;
            state.hashing.update(&bytes);
            Ok(state)
        })
        .await?;
        *slot = Some(state);
        Ok(())
    }

    async fn commit(mut self) -> Result<(), ShardError> {
        let (state, tmp_path) = match &mut self.destination {
            Destination::Segment(data) => {
                let data = std::mem::replace(data, SegmentBytes::Empty);
                return self.commit_segment_shard(data).await;
            }
            // From here on the blocking task owns the temporary file. A caller that
            // stops waiting (a client gone, a cancelled call: its future is dropped) used
            // to remove it from `Drop` while the task was still linking it into place, so
            // a shard could land while the counters skipped it (and a later delete took
            // them below zero). Now the task finishes the commit, or removes the file
            // itself. After a failed write, `Drop` still removes it.
            Destination::File { state, tmp_path } => {
                let state = state.take().ok_or_else(|| {
                    ShardError::InvalidRequest("commit after a failed write".into())
                })?;
                (state, tmp_path.take().expect("set until commit"))
            }
        };
        let (id, inner) = (self.id, self.inner.clone());
        let (declared_len, declared_digest) = (self.declared_len_bytes, self.declared_digest);
        blocking(move || {
            let result =
                commit_blocking(&inner, id, *state, &tmp_path, declared_len, declared_digest);
            if result.is_err() {
                remove_abandoned(inner.node_id, id, &tmp_path);
            }
            result
        })
        .await?;
        debug!(node_id = %self.inner.node_id, shard_id = %self.id, n_bytes = self.declared_len_bytes, "shard written");
        Ok(())
    }
}

impl DiskShardWriter {
    /// The commit of a shard bound for a segment: appended (durably) in one go.
    async fn commit_segment_shard(&self, data: SegmentBytes) -> Result<(), ShardError> {
        let (id, inner) = (self.id, self.inner.clone());
        let (declared_len, declared_digest) = (self.declared_len_bytes, self.declared_digest);
        let given = self.given_block_hashes.clone();
        // As for a shard file, a caller that stops waiting does not stop the commit
        // half-way: the blocking task finishes it.
        blocking(move || {
            let data = data.as_slice();
            let hashing = match given {
                Some(block_hashes) => Hashing::Given {
                    block_hashes,
                    len_bytes: data.len() as u64,
                },
                None => {
                    let mut hasher = ShardHasher::new();
                    hasher.update(data);
                    Hashing::Hash(hasher)
                }
            };
            commit_to_segment(&inner, id, data, hashing, declared_len, declared_digest)
        })
        .await?;
        debug!(node_id = %self.inner.node_id, shard_id = %self.id, n_bytes = self.declared_len_bytes, "shard written to a segment");
        Ok(())
    }
}

/// The digest and block hashes of what was written, once its length and digest are what
/// the writer declared.
fn check_declared(
    id: ShardId,
    hashing: Hashing,
    declared_len: u64,
    declared_digest: ShardDigest,
) -> Result<(ShardDigest, Vec<BlockHash>), ShardError> {
    let written = hashing.len_bytes();
    if written != declared_len {
        return Err(ShardError::Rejected {
            id,
            reason: format!("got {written} bytes, {declared_len} declared"),
        });
    }
    let (digest, block_hashes) = match hashing {
        Hashing::Hash(hasher) => hasher.finalize(),
        // Checked against the declared length and digest when the writer was created.
        Hashing::Given { block_hashes, .. } => (declared_digest, block_hashes.to_vec()),
    };
    if digest != declared_digest {
        return Err(ShardError::Rejected {
            id,
            reason: "data does not match the declared digest".into(),
        });
    }
    Ok((digest, block_hashes))
}

/// Whether the shard file open as `file` checks out whole: its header, its block table
/// against its digest, and every block against its hash (what `verify` checks, read
/// through this one open file).
fn shard_file_checks_out(id: ShardId, file: &File) -> Result<bool, ShardError> {
    let read = |buf: &mut [u8], at: u64| match file.read_exact_at(buf, at) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ShardError::from(e)),
    };
    let mut fixed = [0u8; BLOCK_TABLE_OFFSET as usize];
    if !read(&mut fixed, 0)? {
        return Ok(false);
    }
    let Ok((shard_len_bytes, digest)) = format::decode_fixed_header(id, &fixed) else {
        return Ok(false);
    };
    let header_len = format::header_len_bytes(shard_len_bytes);
    let mut table = vec![0u8; (header_len - BLOCK_TABLE_OFFSET) as usize];
    if !read(&mut table, BLOCK_TABLE_OFFSET)? {
        return Ok(false);
    }
    let Ok(hashes) = format::decode_block_hashes(id, shard_len_bytes, &digest, &table) else {
        return Ok(false);
    };
    Ok(blocks_check_out(
        file,
        header_len,
        shard_len_bytes,
        &hashes,
    )?)
}

/// Positional reads of stored bytes: a file, or a part of one already read ([`BytesAt`]),
/// so that the bytes a check passed are the bytes then used.
pub(crate) trait ReadBytesAt {
    /// Fills `buf` from `offset`; `UnexpectedEof` where the bytes end first.
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadBytesAt for File {
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_fault(self, offset, buf.len())?;
        self.read_exact_at(buf, offset)
    }
}

/// `bytes`, read from `offset` of a file, read again as that file's part.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BytesAt<'a> {
    /// Where `bytes` start in the file.
    pub(crate) offset: u64,
    /// What was read there.
    pub(crate) bytes: &'a [u8],
}

impl ReadBytesAt for BytesAt<'_> {
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = offset
            .checked_sub(self.offset)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| {
                s.checked_add(buf.len())
                    .is_some_and(|end| end <= self.bytes.len())
            })
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "read outside the bytes read before",
                )
            })?;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
}

/// Whether the `shard_len_bytes` of data at `data_offset` of `file` match `hashes`, one per
/// block (a shard file's data, or a segment record's); a file that ends early does not.
pub(crate) fn blocks_check_out(
    file: &impl ReadBytesAt,
    data_offset: u64,
    shard_len_bytes: u64,
    hashes: &[BlockHash],
) -> std::io::Result<bool> {
    if hashes.len() as u64 != n_blocks(shard_len_bytes) {
        return Ok(false);
    }
    let mut block = vec![0u8; SHARD_BLOCK_BYTES.min(shard_len_bytes) as usize];
    for (idx, hash) in (0u64..).zip(hashes) {
        let block = &mut block[..block_len_bytes(shard_len_bytes, idx) as usize];
        match file.read_bytes_at(block, data_offset + idx * SHARD_BLOCK_BYTES) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        if !lauscha_core::checksum::verify_block(block, hash) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The blocking part of [`DiskShardWriter::commit`] for a shard bound for a segment: checks
/// length and digest, appends it (durably) and counts it.
fn commit_to_segment(
    inner: &Inner,
    id: ShardId,
    data: &[u8],
    hashing: Hashing,
    declared_len: u64,
    declared_digest: ShardDigest,
) -> Result<(), ShardError> {
    let (digest, block_hashes) = check_declared(id, hashing, declared_len, declared_digest)?;
    // A shard file of the same id (written before segments were enabled) counts too.
    if shard_path(&inner.root, id).exists() {
        return Err(ShardError::AlreadyExists(id));
    }
    let segments = inner.segments.as_ref().expect("enabled, so open");
    let header = format::encode_header(declared_len, &digest, &block_hashes);
    segments.append_shard(id, &header, data)?;
    inner.count(format::header_len_bytes(declared_len) + declared_len);
    Ok(())
}

/// The blocking part of [`DiskShardWriter::commit`]: checks length and digest, writes the
/// header, syncs, links the file into place and counts it.
fn commit_blocking(
    inner: &Inner,
    id: ShardId,
    state: WriteState,
    tmp_path: &Path,
    declared_len: u64,
    declared_digest: ShardDigest,
) -> Result<(), ShardError> {
    let (digest, block_hashes) = check_declared(id, state.hashing, declared_len, declared_digest)?;
    state.file.write_all_at(
        &format::encode_header(declared_len, &digest, &block_hashes),
        0,
    )?;
    state.file.sync_all()?;
    // A small shard of this id in a segment (its create raced this one's) takes it too.
    if inner.segments.as_ref().is_some_and(|s| s.contains(id)) {
        return Err(ShardError::AlreadyExists(id));
    }
    let final_path = shard_path(&inner.root, id);
    // A hard link never replaces an existing file: two writers of one id cannot
    // both win, and the loser learns it.
    match fs::hard_link(tmp_path, &final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ShardError::AlreadyExists(id));
        }
        Err(e) => return Err(e.into()),
    }
    // Linked: the shard is there whatever fails below, so it is counted now.
    inner.count(format::header_len_bytes(declared_len) + declared_len);
    fsync_dir(&shard_dir(&inner.root, id))?;
    fs::remove_file(tmp_path)?;
    Ok(())
}

/// Reads verified blocks from a shard file; see [`BlockReader`].
pub struct DiskBlockReader {
    id: ShardId,
    file: ShardFile,
    /// Where block 0 starts in `file`.
    data_offset: u64,
    header: ShardHeader,
    first_block_idx: u64,
    next_block_idx: u64,
    end_block_idx: u64,
    /// Verified blocks of the current batch not handed out yet.
    ready: std::collections::VecDeque<Bytes>,
    /// The failure of the batch read at open (none of its blocks are handed out), given
    /// as the first block, as a read after the header would have failed.
    prefetch_error: Option<ShardError>,
    failed: bool,
    /// Blocks are checked against their hashes (not when opened unchecked).
    checked: bool,
}

/// Reads blocks `first..end` of a shard and checks each against its hash in `expected`
/// (`None`: unchecked, for a reader that checks them itself).
fn read_blocks(
    file: &ShardFile,
    id: ShardId,
    data_offset: u64,
    shard_len: u64,
    blocks: std::ops::Range<u64>,
    expected: Option<&[BlockHash]>,
    wait: Wait,
) -> Result<Vec<Bytes>, ShardError> {
    let first = blocks.start;
    let len: u64 = blocks.clone().map(|b| block_len_bytes(shard_len, b)).sum();
    let buf = Bytes::from(read_new_at(
        file,
        id,
        len as usize,
        data_offset + first * SHARD_BLOCK_BYTES,
        wait,
    )?);
    let n_blocks = (blocks.end - blocks.start) as usize;
    let mut out = Vec::with_capacity(n_blocks);
    for i in 0..n_blocks {
        let start = i * SHARD_BLOCK_BYTES as usize;
        let block = buf.slice(start..(start + SHARD_BLOCK_BYTES as usize).min(buf.len()));
        if let Some(expected) = expected
            && !lauscha_core::checksum::verify_block(&block, &expected[i])
        {
            return Err(ShardError::Corrupt {
                id,
                what: format!("block {}", first + i as u64),
            });
        }
        out.push(block);
    }
    Ok(out)
}

/// Reads `len` bytes of shard data at `offset` into a new buffer without zeroing it first
/// (a large read would otherwise write every byte twice). Uses the file's cursor, so only
/// for a shard file (each reader opens its own); a segment, which readers share, is read
/// into a zeroed buffer (its shards are small).
fn read_new_at(
    file: &ShardFile,
    id: ShardId,
    len: usize,
    offset: u64,
    wait: Wait,
) -> Result<Vec<u8>, ShardError> {
    if wait == Wait::CachedOnly || file.shared {
        // Zeroed: a read that must not wait is at most five blocks, a segment's shards are
        // small.
        let mut buf = vec![0; len];
        read_exact_at_or_corrupt(&file.file, id, &mut buf, offset, "data", wait)?;
        return Ok(buf);
    }
    let mut cursor: &File = &file.file;
    cursor.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    cursor.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(ShardError::Corrupt {
            id,
            what: "data truncated".into(),
        });
    }
    Ok(buf)
}

impl BlockReader for DiskBlockReader {
    fn header(&self) -> &ShardHeader {
        &self.header
    }

    fn first_block_idx(&self) -> u64 {
        self.first_block_idx
    }

    fn next_ready(&mut self) -> Ready {
        if let Some(block) = self.ready.pop_front() {
            return Ready::Block(Ok(block));
        }
        if let Some(e) = self.prefetch_error.take() {
            self.failed = true;
            return Ready::Block(Err(e));
        }
        if self.failed || self.next_block_idx >= self.end_block_idx {
            return Ready::End;
        }
        Ready::NotYet
    }

    async fn next_block(&mut self) -> Option<Result<Bytes, ShardError>> {
        match self.next_ready() {
            Ready::Block(block) => return Some(block),
            Ready::End => return None,
            Ready::NotYet => {}
        }
        // One read and one trip to the blocking pool per batch of blocks, not per block.
        let first = self.next_block_idx;
        let end = (first + READ_BATCH_BLOCKS).min(self.end_block_idx);
        self.next_block_idx = end;
        let shard_len = self.header.shard_len_bytes;
        let expected: Option<Vec<BlockHash>> = self
            .checked
            .then(|| self.header.block_hashes[first as usize..end as usize].to_vec());
        let (file, id, data_offset) = (self.file.clone(), self.id, self.data_offset);
        let result = blocking(move || {
            let expected = expected.as_deref();
            read_blocks(
                &file,
                id,
                data_offset,
                shard_len,
                first..end,
                expected,
                Wait::Disk,
            )
        })
        .await;
        match result {
            Ok(blocks) => {
                self.ready.extend(blocks);
                self.ready.pop_front().map(Ok)
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_shard_store;

    #[test]
    fn bytes_read_before_answer_only_for_their_own_range() {
        let read = BytesAt {
            offset: 100,
            bytes: b"abcdef",
        };
        let mut buf = [0u8; 3];
        read.read_bytes_at(&mut buf, 102).unwrap();
        assert_eq!(&buf, b"cde");
        read.read_bytes_at(&mut buf, 103).unwrap();
        assert_eq!(&buf, b"def");
        for outside in [99, 104, u64::MAX] {
            let e = read.read_bytes_at(&mut buf, outside).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "at {outside}");
        }
    }

    /// A shard file whose `stat` fails for another reason than being gone is listed
    /// (with length and age 0), so that a bad inode cannot end every listing.
    #[test]
    fn a_shard_file_that_cannot_be_stated_is_listed_and_one_deleted_is_not() {
        let id: ShardId = "00112233445566778899aabbccddeeff.3".parse().unwrap();
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(listed_shard_file(NodeId(1), id, Err(gone)).is_none());
        let eio = std::io::Error::from_raw_os_error(nix::libc::EIO);
        let before = unix_now_s();
        let listed = listed_shard_file(NodeId(1), id, Err(eio)).expect("listed");
        assert_eq!((listed.id, listed.len_bytes), (id, 0));
        assert!(
            listed.modified_unix_s >= before,
            "age unknown: as written now"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"12345").unwrap();
        let listed = listed_shard_file(NodeId(1), id, fs::metadata(&path)).expect("listed");
        assert_eq!(listed.len_bytes, 5);
        assert!(listed.modified_unix_s > 0);
    }

    #[tokio::test]
    async fn disk_store_passes_the_shard_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        check_shard_store(&store).await;
    }

    async fn open_with_segments(dir: &Path) -> DiskShardStore {
        let options = DiskOptions {
            small_shard_segments: true,
        };
        DiskShardStore::open_with_options(dir, NodeId(1), options)
            .await
            .unwrap()
    }

    /// The suite's shards of up to 256 KiB go to segments, the one larger to a file; all
    /// of it is there after a restart, without the option too (segments are always read).
    #[tokio::test]
    async fn disk_store_with_segments_passes_the_suite_and_keeps_it_all_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_segments(dir.path()).await;
        check_shard_store(&store).await;
        let in_files = fs::read_dir(dir.path().join("shards"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum::<usize>();
        assert_eq!(in_files, 1, "only the 300,000-byte shard is a file");
        let usage = store.usage();
        let listed = store.list(None, 1000).await.unwrap();
        assert_eq!(listed.len() as u64, usage.n_shards);
        drop(store);
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        assert_eq!(store.usage(), usage);
        assert_eq!(store.list(None, 1000).await.unwrap(), listed);
        for entry in &listed {
            store.verify(entry.id).await.unwrap();
        }
    }

    async fn put_prehashed(
        store: &DiskShardStore,
        id: ShardId,
        declared_len: usize,
        data: &[u8],
        hashes: lauscha_core::ShardHashes,
    ) -> Result<(), ShardError> {
        let mut writer = store
            .create_prehashed(id, declared_len as u64, hashes.digest, hashes.block_hashes)
            .await?;
        for piece in data.chunks(100_000) {
            writer.write(Bytes::copy_from_slice(piece)).await?;
        }
        writer.commit().await
    }

    /// Block hashes given by a writer in this process are taken once they make the
    /// digest, in a segment and in a shard file; reads still check every block, so bytes
    /// that do not match them are never served.
    #[tokio::test]
    async fn given_block_hashes_are_checked_against_the_digest_and_reads_check_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_segments(dir.path()).await;
        for (n, len) in [(1u128, 1_000usize), (2, 300_000)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + n as usize) as u8).collect();
            let id = ShardId {
                stripe_id: lauscha_core::StripeId(n),
                shard_idx: 0,
            };
            put_prehashed(&store, id, len, &data, lauscha_core::ShardHashes::of(&data))
                .await
                .unwrap();
            store.verify(id).await.unwrap();
            let (_, read) = crate::testing::must_read(&store, id, 0, 0).await;
            assert_eq!(read, data, "len {len}");

            // Hashes that do not make the digest: refused before anything is written.
            let other = ShardId {
                stripe_id: lauscha_core::StripeId(n + 10),
                shard_idx: 0,
            };
            let mut mismatched = lauscha_core::ShardHashes::of(&data);
            mismatched.digest = ShardDigest::of(b"something else");
            assert!(matches!(
                put_prehashed(&store, other, len, &data, mismatched).await,
                Err(ShardError::InvalidRequest(_))
            ));
            assert!(
                matches!(store.open(other, 0, 0).await, Err(ShardError::NotFound(_))),
                "len {len}"
            );

            // A caller whose bytes are not the ones it hashed: the store takes its word
            // (that is the trust given to this process), and every read catches it.
            let lied = ShardId {
                stripe_id: lauscha_core::StripeId(n + 20),
                shard_idx: 0,
            };
            let mut bad = data.clone();
            bad[len / 2] ^= 1;
            put_prehashed(
                &store,
                lied,
                len,
                &bad,
                lauscha_core::ShardHashes::of(&data),
            )
            .await
            .unwrap();
            assert!(
                matches!(store.verify(lied).await, Err(ShardError::Corrupt { .. })),
                "len {len}"
            );
            let read = async {
                let mut reader = store.open(lied, 0, 0).await?;
                while let Some(block) = reader.next_block().await {
                    block?;
                }
                Ok::<_, ShardError>(())
            };
            assert!(
                matches!(read.await, Err(ShardError::Corrupt { .. })),
                "len {len}"
            );

            // Fewer bytes than declared still fail the commit.
            let short = ShardId {
                stripe_id: lauscha_core::StripeId(n + 30),
                shard_idx: 0,
            };
            assert!(matches!(
                put_prehashed(
                    &store,
                    short,
                    len,
                    &data[..len - 1],
                    lauscha_core::ShardHashes::of(&data)
                )
                .await,
                Err(ShardError::Rejected { .. })
            ));
        }
    }

    #[tokio::test]
    async fn a_flipped_bit_in_a_segment_is_found_and_the_shard_quarantined_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_segments(dir.path()).await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31) as u8).collect();
        let id = crate::testing::must_put(&store, 42, &data).await;
        assert!(!store.shard_path(id).exists(), "in a segment");
        flip_last_byte_of_segment_shard(&store, id, data.len() as u64);
        assert!(matches!(
            store.verify(id).await,
            Err(ShardError::Corrupt { .. })
        ));
        assert!(store.quarantine(id).await.unwrap());
        assert!(matches!(
            store.open(id, 0, 0).await.err(),
            Some(ShardError::NotFound(_))
        ));
        assert_eq!(store.usage().n_shards, 0);
        // Kept aside as the shard file it would have been, bad byte and all.
        let kept = fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>();
        assert_eq!(kept.len(), 1);
        let kept = fs::read(&kept[0]).unwrap();
        let header_len = format::header_len_bytes(data.len() as u64) as usize;
        assert_eq!(kept.len(), header_len + data.len());
        assert!(kept[header_len..kept.len() - 1] == data[..data.len() - 1]);
        // The id is free for a rebuilt copy, and the delete holds after a restart.
        crate::testing::must_put(&store, 42, &data).await;
        drop(store);
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        let (_, read) = crate::testing::must_read(&store, id, 0, 0).await;
        assert!(read == data);
        assert_eq!(store.usage().n_shards, 1);
    }

    /// A segment record the disk cannot give back is not moved by a reader's report
    /// (plain `quarantine`), and the scrubber's `quarantine_unreadable` takes it out of
    /// service where it is, as its bytes cannot be kept aside: the shards around it
    /// stay, the id is free for a rebuilt copy, and the delete holds after a restart.
    #[tokio::test]
    async fn an_unreadable_segment_record_is_taken_out_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_segments(dir.path()).await;
        let data = |n: u8| vec![n; 100_000];
        let ids = [
            crate::testing::must_put(&store, 1, &data(1)).await,
            crate::testing::must_put(&store, 2, &data(2)).await,
            crate::testing::must_put(&store, 3, &data(3)).await,
        ];
        let (file, header_at) = store
            .inner
            .segments
            .as_ref()
            .unwrap()
            .locate(ids[1])
            .unwrap();
        let last = header_at + format::header_len_bytes(100_000) + 100_000 - 1;
        let spot = read_faults::add(&file, last, last + 1);
        assert!(store.verify(ids[1]).await.unwrap_err().is_unreadable());
        assert!(store.quarantine(ids[1]).await.unwrap_err().is_unreadable());
        assert_eq!(store.usage().n_shards, 3, "a reader's report moves nothing");
        assert!(store.quarantine_unreadable(ids[1]).await.unwrap());
        assert!(matches!(
            store.open(ids[1], 0, 0).await.err(),
            Some(ShardError::NotFound(_))
        ));
        assert_eq!(store.usage().n_shards, 2);
        assert!(
            !dir.path().join("quarantine").exists(),
            "nothing to keep aside"
        );
        for (n, id) in [(1, ids[0]), (3, ids[2])] {
            let (_, read) = crate::testing::must_read(&store, id, 0, 0).await;
            assert!(read == data(n));
        }
        crate::testing::must_put(&store, 2, &data(2)).await;
        // The bad spot is still there at the restart: the start-up scan of the segment
        // (the active one, so read whole) skips that record only, not those behind it.
        drop(store);
        let store = open_with_segments(dir.path()).await;
        for (n, id) in [(1, ids[0]), (2, ids[1]), (3, ids[2])] {
            let (_, read) = crate::testing::must_read(&store, id, 0, 0).await;
            assert!(read == data(n), "shard {n} after a restart");
        }
        assert_eq!(store.usage().n_shards, 3);
        drop(store);
        drop((spot, file));
    }

    /// Flips a bit in the last byte of segment shard `id` (`len_bytes` long). Not the
    /// file's last byte: direct appends pad a segment with zeros to a block boundary.
    fn flip_last_byte_of_segment_shard(store: &DiskShardStore, id: ShardId, len_bytes: u64) {
        let (file, header_at) = store.inner.segments.as_ref().unwrap().locate(id).unwrap();
        let last = header_at + format::header_len_bytes(len_bytes) + len_bytes - 1;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, last).unwrap();
        byte[0] ^= 0x10;
        file.write_all_at(&byte, last).unwrap();
    }

    /// Found corrupt, then deleted and rebuilt (repair answering another reader) before
    /// the quarantine runs: the good copy stays, in a segment and in a file alike.
    #[tokio::test]
    async fn quarantine_leaves_a_copy_rebuilt_since_the_damage_was_found() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for segments in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = if segments {
                open_with_segments(dir.path()).await
            } else {
                DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap()
            };
            let id = crate::testing::must_put(&store, 7, &data).await;
            if segments {
                flip_last_byte_of_segment_shard(&store, id, data.len() as u64);
            } else {
                let path = store.shard_path(id);
                let mut bytes = fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0x10;
                fs::write(&path, &bytes).unwrap();
            }
            assert!(matches!(
                store.verify(id).await,
                Err(ShardError::Corrupt { .. })
            ));
            assert!(store.delete(id).await.unwrap());
            crate::testing::must_put(&store, 7, &data).await;
            assert!(!store.quarantine(id).await.unwrap(), "segments: {segments}");
            store.verify(id).await.unwrap();
            let (_, read) = crate::testing::must_read(&store, id, 0, 0).await;
            assert!(read == data);
            assert_eq!(store.usage().n_shards, 1);
        }
    }

    #[tokio::test]
    async fn a_flipped_bit_on_disk_is_found_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31) as u8).collect();
        let id = crate::testing::must_put(&store, 42, &data).await;
        let path = store.shard_path(id);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        // The first block is fine, the last one is not.
        let mut reader = store.open(id, 0, 10).await.unwrap();
        assert!(reader.next_block().await.unwrap().is_ok());
        let mut reader = store.open(id, 0, 0).await.unwrap();
        let mut saw_corrupt = false;
        while let Some(block) = reader.next_block().await {
            if matches!(block, Err(ShardError::Corrupt { .. })) {
                saw_corrupt = true;
            }
        }
        assert!(saw_corrupt);
        // Unchecked, the same read hands the bad block on: its reader checks it.
        let mut reader = store.open_unchecked(id, 0, 0).await.unwrap();
        let mut read = Vec::new();
        while let Some(block) = reader.next_block().await {
            read.extend_from_slice(&block.unwrap());
        }
        assert_eq!(read.len(), data.len());
        assert_eq!(read[..read.len() - 1], data[..data.len() - 1]);
        assert_eq!(read[read.len() - 1], data[data.len() - 1] ^ 0x10);
    }

    /// A small read of a shard whose pages the kernel holds is answered on the calling
    /// thread, without the blocking pool; one whose pages are not cached fails at once in
    /// that mode (it must not wait for the disk on an async worker thread), and the store
    /// still answers it, from the pool.
    #[tokio::test]
    async fn small_reads_of_cached_shards_stay_on_the_thread_and_others_go_to_the_pool() {
        // On a disk (a tmpfs /tmp has no page cache to drop, nor always RWF_NOWAIT).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let id = crate::testing::must_put(&store, 43, &data).await;

        // Just written, so cached: the whole small read works without waiting.
        let (file, header) = open_with_header(&store.inner, id, Wait::CachedOnly).unwrap();
        let data_offset = format::header_len_bytes(header.shard_len_bytes);
        let blocks = read_blocks(
            &file,
            id,
            data_offset,
            header.shard_len_bytes,
            1..3,
            Some(&header.block_hashes[1..3]),
            Wait::CachedOnly,
        )
        .unwrap();
        let block_bytes = SHARD_BLOCK_BYTES as usize;
        assert!(blocks.concat() == data[block_bytes..3 * block_bytes]);

        // Dropped from the page cache (the file is clean: the commit synced it).
        nix::fcntl::posix_fadvise(
            &file.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let mut buf = vec![0; 4096];
        match read_cached_at(&file.file, &mut buf, data_offset + 2 * SHARD_BLOCK_BYTES) {
            Err(ShardError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an uncached read did not fail at once: {other:?}"),
        }
        let (_, block) = store.read_block_unchecked(id, 2).await.unwrap();
        assert!(block == data[2 * block_bytes..3 * block_bytes]);
        nix::fcntl::posix_fadvise(
            &file.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        let (first, read) = crate::testing::must_read(&store, id, 5, 100).await;
        assert_eq!(first, 0);
        assert!(read == data[..block_bytes]);

        // A read that would wait is no sign that the calls are missing here; these are.
        assert!(!cached_reads_unsupported(
            &std::io::ErrorKind::WouldBlock.into()
        ));
        for errno in [nix::errno::Errno::EOPNOTSUPP, nix::errno::Errno::ENOSYS] {
            assert!(cached_reads_unsupported(
                &std::io::Error::from_raw_os_error(errno as i32)
            ));
        }

        // A shard that is not there is answered as before (by the pool, which decides).
        let missing = ShardId {
            stripe_id: lauscha_core::StripeId(9_999),
            shard_idx: 0,
        };
        assert!(matches!(
            store.read_block_unchecked(missing, 0).await,
            Err(ShardError::NotFound(_))
        ));
    }

    /// A caller that stops waiting for a commit (its client went away) does not undo it
    /// halfway: the shard lands whole and is counted, or not at all. Before, `Drop` removed
    /// the temporary file while the blocking task was linking it into place.
    #[tokio::test]
    async fn a_commit_whose_caller_stops_waiting_lands_whole_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let id = ShardId {
            stripe_id: lauscha_core::StripeId(77),
            shard_idx: 1,
        };
        let mut writer = store
            .create(id, data.len() as u64, ShardDigest::of(&data))
            .await
            .unwrap();
        writer.write(Bytes::from(data.clone())).await.unwrap();
        let mut commit = Box::pin(writer.commit());
        // One poll hands the commit to the blocking pool; then the caller gives up.
        if let std::task::Poll::Ready(result) = futures::poll!(&mut commit) {
            result.unwrap();
        }
        drop(commit);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::read_dir(dir.path().join("tmp")).unwrap().count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit neither finished nor cleaned up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.usage().n_shards, 1, "the shard landed and is counted");
        assert_eq!(
            store.usage().used_bytes,
            fs::metadata(store.shard_path(id)).unwrap().len()
        );
        let (_, read) = crate::testing::must_read(&store, id, 0, data.len() as u64).await;
        assert!(read == data);
    }

    #[tokio::test]
    async fn another_nodes_directory_is_refused_and_temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        let writer = store
            .create(
                ShardId {
                    stripe_id: lauscha_core::StripeId(5),
                    shard_idx: 0,
                },
                10,
                ShardDigest::of(&[0; 10]),
            )
            .await
            .unwrap();
        // Simulate a crash: the temporary file stays behind.
        std::mem::forget(writer);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        drop(store);
        assert!(matches!(
            DiskShardStore::open(dir.path(), NodeId(2)).await,
            Err(ShardError::WrongNode { found: 1, .. })
        ));
        let _store = DiskShardStore::open(dir.path(), NodeId(1)).await.unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
