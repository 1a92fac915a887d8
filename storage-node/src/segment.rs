//! Small shards as records in append-only segment files (`small_shard_segments` in the
//! storage node's configuration, on by default).
//!
//! A shard file costs an inode, an fsync of the file and one of its directory; for the
//! shards of small volume writes (a batch of at most 1 MiB, so shards of at most
//! 256 KiB) that was most of a write's CPU on this project's test machine
//! (ARCHITECTURE.md, storage-node). Here a small shard is appended to the one active
//! segment file, and concurrent commits share one `fdatasync` (group commit).
//!
//! ```text
//! <root>/segments/<seq>.seg   seq: 16 hex digits, increasing; the highest is active
//!
//! record  offset  size  field
//!         0       8     magic "LSEGREC" and version 1
//!         8       1     kind: 1 shard, 2 tombstone
//!         9       7     zero
//!         16      16    stripe id (big-endian)
//!         32      1     shard index
//!         33      7     zero
//!         40      8     shard length in bytes (tombstone: 0)
//!         48      8     shard written at, unix seconds (tombstone: 0)
//!         56      8     zero
//!         64      16    blake3 of the record's own position (segment seq, offset: 8 + 8
//!                       bytes, little-endian), bytes 0..64 and the meta below; first 16
//!                       bytes (so a record's bytes found elsewhere, such as inside a
//!                       shard that holds a copy of a segment, are not a record there)
//!         80      meta  shard: the shard file header (format.rs: length, digest, block
//!                       hashes); tombstone: the position it was first written at
//!                       (seq, offset) and the segment of the record it deleted (seq);
//!                       8 bytes each, little-endian
//!         80+meta data  shard only: the shard's bytes
//! ```
//! A shard record's header and data are exactly a shard file's bytes, so reads, checks and
//! quarantine treat both alike. Appends are direct writes of whole 4 KiB blocks where the
//! file system takes them (`DirectAppends`), so a segment may end in zeros up to the
//! next block boundary after its last record: no record, to the scan.
//!
//! Architecture Invariant: a record's position (segment seq, offset) orders it against
//! every other. A tombstone removes every record of its shard positioned before the place
//! it was *first* written (copies made by compaction keep that place), so a shard written
//! again after a delete survives, and a compaction copy racing a delete dies.
//!
//! Architecture Invariant: a commit is acknowledged only after its record is covered by
//! an `fdatasync` of its segment. Records are written one at a time in position order,
//! so after a crash a segment is valid records, then at most one torn one at the end of
//! the active segment (cut at start-up). A failed `fdatasync` fails every commit whose
//! record it was to cover, and every record written before it and not yet synced, for
//! good: a later successful sync proves nothing for them (the kernel may have dropped
//! the pages it failed to write and marked them clean). The segment is then sealed, and
//! new records go to a new one.
//!
//! Space: a sealed segment is removed once nothing in it is live and none of its
//! tombstones is still needed (an older segment that may hold what it deletes); one whose
//! live records are under half its bytes is compacted (live records and needed
//! tombstones copied to the active segment, then removed).
//!
//! Lock order: `sync_lock`, then `appender`, then `state`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lauscha_core::{NodeId, ShardId, StripeId};
use tracing::{debug, info, warn};

use crate::disk::{BytesAt, ReadBytesAt, blocks_check_out, fsync_dir, unix_now_s};
use crate::format;
use crate::{ShardEntry, ShardError};

/// Shards up to this length (bytes) go to segments when they are enabled: a 1 MiB batch
/// of small volume writes over 4 data shards.
pub(crate) const SEGMENT_SHARD_MAX_BYTES: u64 = 256 << 10;
/// A segment is sealed and a new one started once it reaches this length (bytes).
/// (Small in unit tests, so that they see segments sealed, removed and compacted.)
const SEGMENT_TARGET_BYTES: u64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };
const RECORD_MAGIC: [u8; 8] = *b"LSEGREC\x01";
const PREFIX_BYTES: u64 = 80;
const CHECKSUM_AT: usize = 64;
const KIND_SHARD: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const TOMBSTONE_META_BYTES: u64 = 24;
const SEGMENTS_DIR: &str = "segments";

/// A record's place in the log: records are ordered by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    seq: u64,
    offset: u64,
}

/// A shard record as quarantine reads it; see [`SegmentLog::read_image`].
pub(crate) struct ShardImage {
    /// Its header and data: the bytes its shard file would hold.
    pub image: Vec<u8>,
    /// Where its record is.
    pub pos: Pos,
    /// The record checks out whole.
    pub checks_out: bool,
}

/// Where a live shard record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    pos: Pos,
    shard_len_bytes: u64,
    created_unix_s: u64,
}

impl Loc {
    fn record_bytes(&self) -> u64 {
        PREFIX_BYTES + image_len_bytes(self.shard_len_bytes)
    }
}

/// A shard file's length (header and data) for a shard of `shard_len_bytes`.
fn image_len_bytes(shard_len_bytes: u64) -> u64 {
    format::header_len_bytes(shard_len_bytes) + shard_len_bytes
}

/// A decoded record, as the start-up scan sees it.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Shard {
        id: ShardId,
        shard_len_bytes: u64,
        created_unix_s: u64,
    },
    Tombstone(Tombstone),
}

/// A tombstone: it deletes every record of `id` positioned before `first_written_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tombstone {
    id: ShardId,
    first_written_at: Pos,
    /// The segment of the record it deleted: while that exists, so must the tombstone.
    victim_seq: u64,
}

/// A record's prefix with its checksum left zero: [`set_checksum`] fills it in once the
/// record (prefix, then meta) is whole and its position known.
fn encode_prefix(kind: u8, id: ShardId, len: u64, created_unix_s: u64, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity.max(PREFIX_BYTES as usize));
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(kind);
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&id.stripe_id.to_bytes());
    out.push(id.shard_idx);
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&created_unix_s.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&[0; 16]);
    out
}

/// Fills in the checksum of `record` (prefix, `meta_len` bytes of meta, anything after)
/// for position `pos`.
fn set_checksum(record: &mut [u8], meta_len: usize, pos: Pos) {
    let meta_end = PREFIX_BYTES as usize + meta_len;
    let checksum = prefix_checksum(
        &record[..CHECKSUM_AT],
        &record[PREFIX_BYTES as usize..meta_end],
        pos,
    );
    record[CHECKSUM_AT..PREFIX_BYTES as usize].copy_from_slice(&checksum);
}

fn prefix_checksum(fields: &[u8], meta: &[u8], pos: Pos) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&pos.seq.to_le_bytes());
    hasher.update(&pos.offset.to_le_bytes());
    hasher.update(&fields[..CHECKSUM_AT]);
    hasher.update(meta);
    hasher.finalize().as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

/// The fields of a prefix that passes its structural checks: (kind, id, length, created,
/// meta length). The checksum needs the meta and is checked by the caller.
fn decode_prefix_fields(prefix: &[u8]) -> Option<(u8, ShardId, u64, u64, u64)> {
    if prefix.len() < PREFIX_BYTES as usize || prefix[..8] != RECORD_MAGIC {
        return None;
    }
    let zero = |r: std::ops::Range<usize>| prefix[r].iter().all(|b| *b == 0);
    if !zero(9..16) || !zero(33..40) || !zero(56..64) {
        return None;
    }
    let id = ShardId {
        stripe_id: StripeId::from_slice(&prefix[16..32])?,
        shard_idx: prefix[32],
    };
    let len = u64::from_le_bytes(prefix[40..48].try_into().expect("8 bytes"));
    let created = u64::from_le_bytes(prefix[48..56].try_into().expect("8 bytes"));
    let meta_len = match prefix[8] {
        KIND_SHARD if len <= SEGMENT_SHARD_MAX_BYTES => format::header_len_bytes(len),
        KIND_TOMBSTONE if len == 0 && created == 0 => TOMBSTONE_META_BYTES,
        _ => return None,
    };
    Some((prefix[8], id, len, created, meta_len))
}

/// Reads and checks the record at `offset` of segment `seq`, `file_len` bytes long; with
/// `check_data`, a shard's blocks are checked against its block hashes too. `None`: no
/// valid record there. `file` may be the record already read whole ([`BytesAt`]).
fn read_record_at(
    file: &impl ReadBytesAt,
    seq: u64,
    offset: u64,
    file_len: u64,
    check_data: bool,
) -> std::io::Result<Option<(Record, u64)>> {
    if offset + PREFIX_BYTES > file_len {
        return Ok(None);
    }
    let mut prefix = [0u8; PREFIX_BYTES as usize];
    file.read_bytes_at(&mut prefix, offset)?;
    let Some((kind, id, len, created, meta_len)) = decode_prefix_fields(&prefix) else {
        return Ok(None);
    };
    let data_len = if kind == KIND_SHARD { len } else { 0 };
    let record_len = PREFIX_BYTES + meta_len + data_len;
    if offset + record_len > file_len {
        return Ok(None);
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_bytes_at(&mut meta, offset + PREFIX_BYTES)?;
    if prefix[CHECKSUM_AT..] != prefix_checksum(&prefix, &meta, Pos { seq, offset }) {
        return Ok(None);
    }
    let record = if kind == KIND_SHARD {
        let Ok((shard_len, digest)) = format::decode_fixed_header(id, &meta) else {
            return Ok(None);
        };
        let Ok(hashes) = format::decode_block_hashes(
            id,
            shard_len,
            &digest,
            &meta[format::BLOCK_TABLE_OFFSET as usize..],
        ) else {
            return Ok(None);
        };
        if shard_len != len {
            return Ok(None);
        }
        if check_data && !blocks_check_out(file, offset + PREFIX_BYTES + meta_len, len, &hashes)? {
            return Ok(None);
        }
        Record::Shard {
            id,
            shard_len_bytes: len,
            created_unix_s: created,
        }
    } else {
        let field = |i: usize| u64::from_le_bytes(meta[8 * i..8 * i + 8].try_into().expect("8"));
        Record::Tombstone(Tombstone {
            id,
            first_written_at: Pos {
                seq: field(0),
                offset: field(1),
            },
            victim_seq: field(2),
        })
    };
    Ok(Some((record, record_len)))
}

/// Reads the record at `loc` once and judges it from the bytes read: whether it is shard
/// `id`'s, of `loc`'s length, and checks out whole (prefix checksum, header, and every
/// block against its hash). Compaction copies, and quarantine hands out, exactly the bytes
/// judged.
fn read_and_judge(file: &File, id: ShardId, loc: &Loc) -> std::io::Result<(Vec<u8>, bool)> {
    let mut record = vec![0u8; loc.record_bytes() as usize];
    crate::disk::read_fault(file, loc.pos.offset, record.len())?;
    file.read_exact_at(&mut record, loc.pos.offset)?;
    let read = BytesAt {
        offset: loc.pos.offset,
        bytes: &record,
    };
    let end = loc.pos.offset + loc.record_bytes();
    // A record of another shard or length at this position cannot be this one's.
    let checks_out = matches!(
        read_record_at(&read, loc.pos.seq, loc.pos.offset, end, true)?,
        Some((Record::Shard { id: found, .. }, record_len))
            if found == id && record_len == loc.record_bytes()
    );
    Ok((record, checks_out))
}

/// The offset of the next valid record after `from`, found by its magic (after a damaged
/// record: what follows it is still read).
fn find_next_record(
    file: &File,
    seq: u64,
    from: u64,
    file_len: u64,
) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let mut at = from;
    while at < file_len {
        let n = CHUNK.min(file_len - at) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, at)?;
        for (i, w) in buf.windows(RECORD_MAGIC.len()).enumerate() {
            let candidate = at + i as u64;
            if w == RECORD_MAGIC && read_record_at(file, seq, candidate, file_len, false)?.is_some()
            {
                return Ok(Some(candidate));
            }
        }
        // Overlap so that a magic across two chunks is seen.
        at += (n as u64)
            .saturating_sub(RECORD_MAGIC.len() as u64 - 1)
            .max(1);
    }
    Ok(None)
}

/// The shard records of segment `seq` (`file`), in file order, read as the start-up scan
/// of a sealed segment reads them (prefix and header checked; a damaged record skipped
/// to the next valid one).
fn shard_records_in(file: &File, seq: u64) -> std::io::Result<Vec<(ShardId, Pos)>> {
    let file_len = file.metadata()?.len();
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < file_len {
        match read_record_at(file, seq, offset, file_len, false)? {
            Some((record, record_len)) => {
                if let Record::Shard { id, .. } = record {
                    out.push((id, Pos { seq, offset }));
                }
                offset += record_len;
            }
            None => match find_next_record(file, seq, offset + 1, file_len)? {
                Some(next) => offset = next,
                None => break,
            },
        }
    }
    Ok(out)
}

/// Writes `bufs` one after the other at `offset` with `pwritev` (one system call for a
/// record's head and its data, without joining them in one buffer first), going on after
/// a short write.
fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n_bytes = rustix::io::pwritev(file, left, offset)?;
        if n_bytes == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n_bytes as u64;
        IoSlice::advance_slices(&mut left, n_bytes);
    }
    Ok(())
}

/// Alignment of the active segment's direct writes: file offset, length and memory. 4 KiB
/// suits devices with 512-byte and with 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;

/// The active segment's appends, written with `O_DIRECT`: a shard's bytes go from memory
/// to the device, not through the page cache. Buffered, the kernel's copy into the page
/// cache was 39% of the server's CPU under 1 MiB sequential volume writes on this
/// project's test machine (ARCHITECTURE.md). A direct write covers whole blocks, so the
/// last partial block of the segment is kept here and written again, the same bytes,
/// in front of the next record; the file ends in zeros up to the block boundary, which
/// the start-up scan cuts like a torn tail (or, in a sealed segment, finds no record
/// in). Reads stay buffered, through the segment's other file: the kernel drops cached
/// pages of a range a direct write covers.
struct DirectAppends {
    /// The active segment, opened write-only with `O_DIRECT`.
    file: File,
    /// The segment's bytes from the last block boundary at or below its end to its end.
    tail: Vec<u8>,
    /// Reused for every write: holds a `DIRECT_ALIGN`-aligned window of the write.
    scratch: Vec<u8>,
}

impl DirectAppends {
    /// Opens `path` (a new, empty segment) for direct appends; `None` where the file
    /// system does not take `O_DIRECT` (tmpfs before Linux 6.6, for one), and appends
    /// stay buffered.
    fn open(path: &Path, node_id: NodeId) -> Option<DirectAppends> {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Some(DirectAppends {
                file,
                tail: Vec::with_capacity(DIRECT_ALIGN),
                scratch: Vec::new(),
            }),
            Err(e) => {
                debug!(node_id = %node_id, path = %path.display(), error = %e, "segment appends buffered: O_DIRECT not taken");
                None
            }
        }
    }

    /// Writes `bufs`, one after the other, at `end`, the segment's end. On error `tail`
    /// still describes the bytes before `end`, but on disk the block holding them may
    /// now be damaged (a device error while it was written again): the caller fails the
    /// records not yet synced (`Appender::write_failed`). `EINVAL` (misaligned for this
    /// device) is refused before anything is written.
    fn write_at_end(&mut self, end: u64, bufs: &[&[u8]]) -> std::io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        let block_start = end - end % align;
        assert_eq!(
            self.tail.len() as u64,
            end - block_start,
            "the kept tail is the segment's last partial block"
        );
        let n_bytes = self.tail.len() + bufs.iter().map(|b| b.len()).sum::<usize>();
        let n_padded = n_bytes.next_multiple_of(DIRECT_ALIGN);
        if self.scratch.len() < n_padded + DIRECT_ALIGN {
            self.scratch = vec![0; n_padded + DIRECT_ALIGN];
        }
        let at = self.scratch.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(at < DIRECT_ALIGN, "a byte buffer can always be aligned");
        let window = &mut self.scratch[at..at + n_padded];
        let mut filled = 0;
        for b in std::iter::once(&self.tail[..]).chain(bufs.iter().copied()) {
            window[filled..filled + b.len()].copy_from_slice(b);
            filled += b.len();
        }
        window[filled..].fill(0);
        // A direct write cut short (a full disk) stops at a block boundary: the rest is
        // written again, so that the error that cut it (ENOSPC) is what the caller sees.
        let mut n_written = 0;
        while n_written < n_padded {
            let n = rustix::io::pwrite(
                &self.file,
                &window[n_written..],
                block_start + n_written as u64,
            )?;
            n_written += n;
            if n == 0 || !n_written.is_multiple_of(DIRECT_ALIGN) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("direct segment write cut short: {n_written} of {n_padded} bytes"),
                ));
            }
        }
        let tail_len = ((end + (n_bytes - self.tail.len()) as u64) % align) as usize;
        let tail = &window[n_bytes - tail_len..n_bytes];
        self.tail.clear();
        self.tail.extend_from_slice(tail);
        Ok(())
    }
}

impl std::fmt::Debug for DirectAppends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectAppends")
            .field("tail_len", &self.tail.len())
            .finish()
    }
}

/// Why records were failed after a direct write failed (`Appender::write_failed`): of the
/// kind that write failed with, so that on a full disk every record failed with it reads
/// as `DiskFull` (a gateway then counts the node as full and places shards elsewhere).
fn direct_write_failed((kind, cause): &(std::io::ErrorKind, String)) -> std::io::Error {
    std::io::Error::new(
        *kind,
        format!("a direct write to its segment failed after it was written: {cause}"),
    )
}

/// Whether `[from, to)` of `file` is what direct appends leave after the last record:
/// zeros up to the next block boundary.
fn is_block_padding(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    if to != from.next_multiple_of(DIRECT_ALIGN as u64) {
        return Ok(false);
    }
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut bytes, from)?;
    Ok(bytes.iter().all(|b| *b == 0))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

/// One segment file and what is live in it.
#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    len_bytes: u64,
    /// Bytes of the live shard records in it.
    live_bytes: u64,
    n_live: u64,
    /// Records appended whose shards are not in the index yet (their commits wait for
    /// the sync): such a segment is neither compacted nor removed.
    n_pending: u64,
    /// Tombstones in it.
    tombstones: Vec<Tombstone>,
    /// Its start-up scan stopped at a read error: records behind that point are not
    /// counted, so it is never removed or compacted (until a restart reads it whole).
    incomplete: bool,
    /// Compaction found this shard corrupt in it: not compacted again until that shard is
    /// deleted (as the scrubber's quarantine does).
    stuck_on: Option<ShardId>,
}

#[derive(Debug, Default)]
struct LogState {
    index: BTreeMap<ShardId, Loc>,
    /// Shards being committed: their ids are taken.
    pending: HashSet<ShardId>,
    segments: BTreeMap<u64, Segment>,
}

impl LogState {
    fn add_live(&mut self, id: ShardId, loc: Loc) {
        if let Some(old) = self.index.insert(id, loc) {
            self.drop_live(old);
        }
        let seg = self
            .segments
            .get_mut(&loc.pos.seq)
            .expect("segment of a record");
        seg.n_live += 1;
        seg.live_bytes += loc.record_bytes();
    }

    fn drop_live(&mut self, loc: Loc) {
        if let Some(seg) = self.segments.get_mut(&loc.pos.seq) {
            seg.n_live -= 1;
            seg.live_bytes -= loc.record_bytes();
        }
    }

    fn remove(&mut self, id: ShardId) -> Option<Loc> {
        let loc = self.index.remove(&id)?;
        self.drop_live(loc);
        Some(loc)
    }

    /// Whether a tombstone held in segment `holder` may still delete a record: the
    /// segment of the record it deleted is another and still there. (Another copy of that
    /// shard, older than the one deleted, may outlive it: the original a compaction copied
    /// from, while that segment waits for removal, or a copy made after the delete chose
    /// its victim. After a restart such a copy is an unreferenced shard again, which
    /// garbage collection deletes.)
    fn tombstone_needed(&self, holder: u64, tombstone: &Tombstone) -> bool {
        tombstone.victim_seq != holder && self.segments.contains_key(&tombstone.victim_seq)
    }
}

/// Records failed for good by a failed segment write or `fdatasync`.
#[derive(Debug)]
struct Poisoned {
    /// Their generations.
    gens: std::ops::RangeInclusive<u64>,
    /// The kind of error that failed them (a full disk: `DiskFull` for each).
    kind: std::io::ErrorKind,
    /// What that error said.
    cause: String,
}

#[derive(Debug)]
struct Appender {
    seq: u64,
    file: Arc<File>,
    /// The same segment for direct writes, where the file system takes them.
    direct: Option<DirectAppends>,
    /// A direct write failed since the last sync. It wrote again the block that holds the
    /// end of the records before it, which the device may have left damaged, and a later
    /// `fdatasync` would not say so (a failed direct write is not recorded on the file
    /// as a failed writeback is): the next sync poisons every record not yet synced
    /// instead, and the segment is sealed (`rotate` is set with it). The kind of error it
    /// failed with, and what it said.
    write_failed: Option<(std::io::ErrorKind, String)>,
    end: u64,
    /// Records written so far (never reset): a commit waits until `synced_gen` reaches
    /// the count at its own record.
    gen_written: u64,
    rotate: bool,
}

/// The segment files of one store; every method blocks (call it from the blocking pool).
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    node_id: NodeId,
    state: Mutex<LogState>,
    appender: Mutex<Appender>,
    /// Held across every `fdatasync` (of a commit, or of a segment being sealed).
    sync_lock: Mutex<()>,
    /// Every record up to this generation was covered by a successful `fdatasync`...
    synced_gen: AtomicU64,
    /// ... except these, which were to be covered by a failed one.
    poisoned: Mutex<Vec<Poisoned>>,
    /// The highest generation in `poisoned` (0: none), to skip its lock.
    poisoned_max: AtomicU64,
    compacting: AtomicBool,
    /// Compactions that walked the whole index to find a segment's live records, because
    /// reading the segment did not find them all (a read error, or a bug: tests expect 0).
    n_index_walks: AtomicU64,
    /// A direct write was refused as misaligned: later segments are not opened for
    /// direct writes either.
    direct_refused: AtomicBool,
}

/// What a store learns when its segments are opened.
pub(crate) struct Opened {
    pub(crate) log: SegmentLog,
    pub(crate) n_shards: u64,
    /// Header and data bytes of the shards, as for shard files.
    pub(crate) used_bytes: u64,
}

impl SegmentLog {
    /// Opens the segments under `root` (creating the directory with `create`; `None` when
    /// there is none and it is not to be created): reads every record, cuts a torn tail of
    /// the last segment, starts a new active segment and removes segments nothing needs.
    pub(crate) fn open(
        root: &Path,
        node_id: NodeId,
        create: bool,
    ) -> Result<Option<Opened>, ShardError> {
        let dir = root.join(SEGMENTS_DIR);
        if !dir.exists() {
            if !create {
                return Ok(None);
            }
            fs::create_dir_all(&dir)?;
            fsync_dir(root)?;
        }
        let mut seqs: Vec<u64> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            seqs.push(seq);
        }
        seqs.sort_unstable();
        let mut state = LogState::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = dir.join(segment_name(seq));
            let file = OpenOptions::new().read(true).write(last).open(&path)?;
            let scanned = scan_segment(&file, seq, last, node_id, &mut state)?;
            let len_bytes = scanned.valid_end;
            let file_len = file.metadata()?.len();
            if last && !scanned.io_error && len_bytes < file_len {
                if is_block_padding(&file, len_bytes, file_len).unwrap_or(false) {
                    debug!(node_id = %node_id, segment = seq, valid_bytes = len_bytes, "cut the block padding of the last segment");
                } else {
                    info!(node_id = %node_id, segment = seq, valid_bytes = len_bytes, "cut the torn tail of the last segment");
                }
                file.set_len(len_bytes)?;
                file.sync_all()?;
            }
            let seg = state.segments.get_mut(&seq).expect("scan adds the segment");
            seg.len_bytes = len_bytes;
            seg.incomplete = scanned.io_error;
        }
        let seq = seqs.last().map_or(1, |s| s + 1);
        let file = Arc::new(create_segment(&dir, seq)?);
        state.segments.insert(seq, Segment::new(file.clone()));
        let (n_shards, used_bytes) = (
            state.index.len() as u64,
            state
                .index
                .values()
                .map(|l| image_len_bytes(l.shard_len_bytes))
                .sum(),
        );
        let direct = DirectAppends::open(&dir.join(segment_name(seq)), node_id);
        let log = SegmentLog {
            dir,
            node_id,
            state: Mutex::new(state),
            appender: Mutex::new(Appender {
                seq,
                file,
                direct,
                write_failed: None,
                end: 0,
                gen_written: 0,
                rotate: false,
            }),
            sync_lock: Mutex::new(()),
            synced_gen: AtomicU64::new(0),
            poisoned: Mutex::new(Vec::new()),
            poisoned_max: AtomicU64::new(0),
            compacting: AtomicBool::new(false),
            n_index_walks: AtomicU64::new(0),
            direct_refused: AtomicBool::new(false),
        };
        if let Err(e) = log.maintain() {
            warn!(node_id = %node_id, error = %e, "segment clean-up at start-up failed; tried again at the next delete");
        }
        info!(node_id = %node_id, n_shards, n_segments = seqs.len() + 1, "segments open");
        Ok(Some(Opened {
            log,
            n_shards,
            used_bytes,
        }))
    }

    /// Whether the id is taken here (committed, or being committed).
    pub(crate) fn contains(&self, id: ShardId) -> bool {
        let st = self.state.lock().expect("segment state lock");
        st.index.contains_key(&id) || st.pending.contains(&id)
    }

    /// Where a shard's live record is.
    pub(crate) fn position(&self, id: ShardId) -> Option<Pos> {
        let st = self.state.lock().expect("segment state lock");
        st.index.get(&id).map(|loc| loc.pos)
    }

    /// The segment file holding a shard and the offset of its header there.
    pub(crate) fn locate(&self, id: ShardId) -> Option<(Arc<File>, u64)> {
        let st = self.state.lock().expect("segment state lock");
        let loc = st.index.get(&id)?;
        let seg = st
            .segments
            .get(&loc.pos.seq)
            .expect("segment of a live record");
        Some((seg.file.clone(), loc.pos.offset + PREFIX_BYTES))
    }

    /// Appends a checked shard (`header`: its shard file header) and returns once it is
    /// durable. Fails with `AlreadyExists` if the id is taken.
    pub(crate) fn append_shard(
        &self,
        id: ShardId,
        header: &[u8],
        data: &[u8],
    ) -> Result<(), ShardError> {
        let shard_len_bytes = data.len() as u64;
        debug_assert!(shard_len_bytes <= SEGMENT_SHARD_MAX_BYTES);
        {
            let mut st = self.state.lock().expect("segment state lock");
            if st.index.contains_key(&id) || !st.pending.insert(id) {
                return Err(ShardError::AlreadyExists(id));
            }
        }
        let created_unix_s = unix_now_s();
        // Prefix and header; the data is written after them from the caller's buffer.
        let mut head = encode_prefix(
            KIND_SHARD,
            id,
            shard_len_bytes,
            created_unix_s,
            PREFIX_BYTES as usize + header.len(),
        );
        head.extend_from_slice(header);
        let appended = self.append(data, |pos| {
            set_checksum(&mut head, header.len(), pos);
            Some((head, Appended::Shard))
        });
        let (pos, gen_written) = match appended {
            Ok(a) => a.expect("always built"),
            Err(e) => {
                self.state
                    .lock()
                    .expect("segment state lock")
                    .pending
                    .remove(&id);
                return Err(e);
            }
        };
        let durable = self.make_durable(gen_written);
        let mut st = self.state.lock().expect("segment state lock");
        st.pending.remove(&id);
        st.segments
            .get_mut(&pos.seq)
            .expect("a segment with a pending record stays")
            .n_pending -= 1;
        // On failure the record may still be on disk, and a restart then finds the shard
        // (as a shard file linked before a failed directory sync): unreferenced, it is
        // garbage like any shard of a failed write.
        durable?;
        st.add_live(
            id,
            Loc {
                pos,
                shard_len_bytes,
                created_unix_s,
            },
        );
        Ok(())
    }

    /// Deletes a shard: `Some(bytes of its header and data)` if it was here.
    pub(crate) fn delete(&self, id: ShardId) -> Result<Option<u64>, ShardError> {
        self.delete_where(id, |_| true)
    }

    /// Deletes a shard if its live record is still the one at `pos` (quarantine: a copy
    /// written since is another record, and stays).
    pub(crate) fn delete_if_at(&self, id: ShardId, pos: Pos) -> Result<Option<u64>, ShardError> {
        self.delete_where(id, |loc| loc.pos == pos)
    }

    fn delete_where(
        &self,
        id: ShardId,
        matches: impl FnOnce(&Loc) -> bool,
    ) -> Result<Option<u64>, ShardError> {
        let loc = {
            let mut st = self.state.lock().expect("segment state lock");
            if !st.index.get(&id).is_some_and(matches) {
                return Ok(None);
            }
            let loc = st.remove(id).expect("just found");
            // Until the tombstone is durable: the id stays taken (a shard written again
            // meanwhile would sit before the tombstone and die with it at a restart), and
            // the segment stays (the shard may have to be put back).
            st.pending.insert(id);
            let seg = st
                .segments
                .get_mut(&loc.pos.seq)
                .expect("segment of a live record");
            seg.n_pending += 1;
            if seg.stuck_on == Some(id) {
                seg.stuck_on = None;
            }
            loc
        };
        let written = self
            .append(&[], |pos| {
                let tombstone = Tombstone {
                    id,
                    first_written_at: pos,
                    victim_seq: loc.pos.seq,
                };
                Some((
                    encode_tombstone(&tombstone, pos),
                    Appended::Tombstone(tombstone),
                ))
            })
            .and_then(|a| self.make_durable(a.expect("always built").1));
        {
            let mut st = self.state.lock().expect("segment state lock");
            st.pending.remove(&id);
            st.segments
                .get_mut(&loc.pos.seq)
                .expect("pinned by the delete")
                .n_pending -= 1;
            match written {
                Ok(()) => {}
                // A full disk must still free space. Without its tombstone the shard comes
                // back at a restart (unless its segment is removed first), as an
                // unreferenced shard that garbage collection deletes again; what is
                // written again after a delete is positioned after it and wins either way.
                Err(ShardError::DiskFull) => {
                    warn!(node_id = %self.node_id, shard_id = %id, "disk full: shard deleted without a tombstone (a restart may bring it back as garbage)");
                }
                Err(e) => {
                    // Not known to be deleted (the tombstone may or may not be on disk,
                    // and a restart may or may not find it): keep serving the shard.
                    st.add_live(id, loc);
                    return Err(e);
                }
            }
        }
        // The delete stands whatever this finds.
        if let Err(e) = self.maintain() {
            warn!(node_id = %self.node_id, error = %e, "segment clean-up failed; tried again at the next delete");
        }
        Ok(Some(image_len_bytes(loc.shard_len_bytes)))
    }

    /// Up to `limit` shards after `after`, in id order.
    pub(crate) fn list(&self, after: Option<ShardId>, limit: usize) -> Vec<ShardEntry> {
        use std::ops::Bound;
        let st = self.state.lock().expect("segment state lock");
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        st.index
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(id, loc)| ShardEntry {
                id: *id,
                len_bytes: image_len_bytes(loc.shard_len_bytes),
                modified_unix_s: loc.created_unix_s,
            })
            .collect()
    }

    /// A shard's header and data (a shard file's bytes), if it is here, with where its
    /// record is and whether that record checks out whole (prefix checksum, header, and
    /// every block against its hash): what quarantine needs to take out exactly the
    /// record it judged.
    pub(crate) fn read_image(&self, id: ShardId) -> Result<Option<ShardImage>, ShardError> {
        let Some((file, loc)) = ({
            let st = self.state.lock().expect("segment state lock");
            st.index
                .get(&id)
                .map(|loc| (st.segments[&loc.pos.seq].file.clone(), *loc))
        }) else {
            return Ok(None);
        };
        // Judged from the bytes read: the image handed out is the one judged.
        let (mut record, checks_out) = read_and_judge(&file, id, &loc)?;
        record.drain(..PREFIX_BYTES as usize);
        Ok(Some(ShardImage {
            image: record,
            pos: loc.pos,
            checks_out,
        }))
    }

    /// Writes one record built for its position by `build` (`None`: nothing to write) at
    /// the end of the active segment; returns its position and generation.
    fn append(
        &self,
        tail: &[u8],
        build: impl FnOnce(Pos) -> Option<(Vec<u8>, Appended)>,
    ) -> Result<Option<(Pos, u64)>, ShardError> {
        let mut ap = self.appender.lock().expect("segment appender lock");
        while ap.rotate {
            // Sealing syncs, which takes `sync_lock` first.
            drop(ap);
            self.rotate()?;
            ap = self.appender.lock().expect("segment appender lock");
        }
        let pos = Pos {
            seq: ap.seq,
            offset: ap.end,
        };
        let Some((record, appended)) = build(pos) else {
            return Ok(None);
        };
        // On failure part of it may be there; the end does not move, so the next record
        // overwrites it (and a scan after a crash stops at it, at the end of the log).
        let ap = &mut *ap;
        match &mut ap.direct {
            Some(direct) => match direct.write_at_end(pos.offset, &[&record, tail]) {
                Ok(()) => {}
                // Alignment refused (a device with bigger blocks): nothing was written.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    warn!(node_id = %self.node_id, segment = pos.seq, error = %e, "direct segment write refused; appends buffered from now on");
                    self.direct_refused.store(true, Ordering::Relaxed);
                    ap.direct = None;
                    write_all_vectored_at(&ap.file, &[&record, tail], pos.offset)?;
                }
                Err(e) => {
                    warn!(node_id = %self.node_id, segment = pos.seq, error = %e, "direct segment write failed: the records not yet synced fail with it, and the segment is sealed");
                    ap.write_failed = Some((e.kind(), e.to_string()));
                    ap.rotate = true;
                    return Err(e.into());
                }
            },
            None => write_all_vectored_at(&ap.file, &[&record, tail], pos.offset)?,
        }
        ap.end += (record.len() + tail.len()) as u64;
        ap.gen_written += 1;
        if ap.end >= SEGMENT_TARGET_BYTES {
            ap.rotate = true;
        }
        let mut st = self.state.lock().expect("segment state lock");
        let seg = st.segments.get_mut(&pos.seq).expect("active segment");
        seg.len_bytes = ap.end;
        match appended {
            Appended::Shard => seg.n_pending += 1,
            Appended::Tombstone(tombstone) => seg.tombstones.push(tombstone),
            Appended::Copy => {}
        }
        Ok(Some((pos, ap.gen_written)))
    }

    /// Seals the active segment (synced whole, or its unsynced records poisoned) and
    /// starts the next.
    fn rotate(&self) -> Result<(), ShardError> {
        let _one_sync_at_a_time = self.sync_lock.lock().expect("segment sync lock");
        let mut ap = self.appender.lock().expect("segment appender lock");
        if !ap.rotate {
            return Ok(());
        }
        match (ap.file.sync_data(), ap.write_failed.take()) {
            (Ok(()), None) => {
                self.synced_gen.fetch_max(ap.gen_written, Ordering::AcqRel);
            }
            (Ok(()), Some(failed)) => self.poison(ap.gen_written, &direct_write_failed(&failed)),
            (Err(e), _) => self.poison(ap.gen_written, &e),
        }
        let seq = ap.seq + 1;
        let file = Arc::new(create_segment(&self.dir, seq)?);
        self.state
            .lock()
            .expect("segment state lock")
            .segments
            .insert(seq, Segment::new(file.clone()));
        ap.seq = seq;
        ap.file = file;
        ap.direct = if self.direct_refused.load(Ordering::Relaxed) {
            None
        } else {
            DirectAppends::open(&self.dir.join(segment_name(seq)), self.node_id)
        };
        ap.end = 0;
        ap.rotate = false;
        Ok(())
    }

    /// Returns once the record of generation `gen_written` is on disk: one `fdatasync`
    /// covers every record written before it started (group commit). Fails if the sync
    /// meant to cover it failed.
    fn make_durable(&self, gen_written: u64) -> Result<(), ShardError> {
        if let Some(settled) = self.settled(gen_written) {
            return settled;
        }
        let _one_sync_at_a_time = self.sync_lock.lock().expect("segment sync lock");
        // Another commit's sync, or the sealing of its segment, may have covered it.
        if let Some(settled) = self.settled(gen_written) {
            return settled;
        }
        let (target, file) = {
            let mut ap = self.appender.lock().expect("segment appender lock");
            if let Some(failed) = ap.write_failed.take() {
                // Nothing is appended to this segment any more (`rotate` is set).
                self.poison(ap.gen_written, &direct_write_failed(&failed));
                return self
                    .settled(gen_written)
                    .expect("poisoned or synced before");
            }
            (ap.gen_written, ap.file.clone())
        };
        // Not covered yet, so in the active segment: sealing needs `sync_lock`.
        match file.sync_data() {
            Ok(()) => {
                self.synced_gen.fetch_max(target, Ordering::AcqRel);
            }
            Err(e) => {
                let mut ap = self.appender.lock().expect("segment appender lock");
                self.poison(ap.gen_written, &e);
                ap.rotate = true;
            }
        }
        self.settled(gen_written)
            .expect("the sync just made covers it")
    }

    /// What a sync made of the record of generation `gen_written`: `None` while no sync
    /// has covered it.
    fn settled(&self, gen_written: u64) -> Option<Result<(), ShardError>> {
        // `synced_gen` first: a failed sync poisons before any later sync raises it (both
        // under `sync_lock`), so a raise seen here brings the poison that came before.
        let synced = self.synced_gen.load(Ordering::Acquire) >= gen_written;
        if gen_written <= self.poisoned_max.load(Ordering::Acquire)
            && let Some(p) = self
                .poisoned
                .lock()
                .expect("segment poison lock")
                .iter()
                .find(|p| p.gens.contains(&gen_written))
        {
            // Of the kind of the failure (a full disk is `DiskFull`).
            return Some(Err(ShardError::from(std::io::Error::new(
                p.kind,
                format!("its segment's write or fdatasync failed: {}", p.cause),
            ))));
        }
        synced.then_some(Ok(()))
    }

    /// Marks every record written and not covered by a successful sync as failed. Called
    /// with `sync_lock` held, so `synced_gen` stands still.
    fn poison(&self, gen_written: u64, e: &std::io::Error) {
        let lo = self.synced_gen.load(Ordering::Acquire) + 1;
        if lo <= gen_written {
            self.poisoned
                .lock()
                .expect("segment poison lock")
                .push(Poisoned {
                    gens: lo..=gen_written,
                    kind: e.kind(),
                    cause: e.to_string(),
                });
            self.poisoned_max.fetch_max(gen_written, Ordering::AcqRel);
        }
        warn!(node_id = %self.node_id, error = %e, n_records = gen_written + 1 - lo.min(gen_written + 1), "a segment write or fdatasync failed: its unsynced records failed their commits; the segment is sealed");
    }

    /// Removes sealed segments nothing needs, and compacts one that is mostly dead.
    fn maintain(&self) -> Result<(), ShardError> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.maintain_once();
        self.compacting.store(false, Ordering::Release);
        result
    }

    fn maintain_once(&self) -> Result<(), ShardError> {
        let active = self.appender.lock().expect("segment appender lock").seq;
        let mut to_compact = None;
        let removable: Vec<u64> = {
            let st = self.state.lock().expect("segment state lock");
            let mut out = Vec::new();
            for (seq, seg) in st.segments.range(..active) {
                if seg.n_pending > 0 || seg.incomplete {
                    continue;
                }
                let needed = seg.tombstones.iter().any(|t| st.tombstone_needed(*seq, t));
                if seg.n_live == 0 && !needed {
                    out.push(*seq);
                } else if to_compact.is_none()
                    && seg.stuck_on.is_none()
                    && seg.live_bytes * 2 < seg.len_bytes
                {
                    to_compact = Some(*seq);
                }
            }
            out
        };
        for seq in removable {
            self.remove_segment(seq)?;
        }
        if let Some(seq) = to_compact {
            self.compact(seq)?;
        }
        Ok(())
    }

    /// Copies a sealed segment's live records and needed tombstones to the active segment
    /// and removes it.
    fn compact(&self, seq: u64) -> Result<(), ShardError> {
        let Some((file, nothing_live)) = self
            .state
            .lock()
            .expect("segment state lock")
            .segments
            .get(&seq)
            .map(|seg| (seg.file.clone(), seg.n_live == 0 && seg.n_pending == 0))
        else {
            return Ok(());
        };
        // The shard records in the file, found by reading it (outside the lock): walking
        // the whole index for the few in this segment held the state lock, and with it
        // every read and write of the node, for a time that grew with the node's shards.
        // A segment kept only for its tombstones has none to find: it is not read. (Sealed,
        // with no commit or delete pending, it gains none.)
        let in_file = if nothing_live {
            Ok(Vec::new())
        } else {
            shard_records_in(&file, seq)
        };
        let (file, live, tombstones) = {
            let st = self.state.lock().expect("segment state lock");
            let Some(seg) = st.segments.get(&seq) else {
                return Ok(());
            };
            let mut live: Vec<(ShardId, Loc)> = Vec::new();
            if let Ok(in_file) = &in_file {
                live.extend(in_file.iter().filter_map(|&(id, pos)| {
                    st.index
                        .get(&id)
                        .filter(|loc| loc.pos == pos)
                        .map(|loc| (id, *loc))
                }));
            }
            // A live record the reading did not find (a read error, a record it could not
            // make out) would stay uncopied, and the segment with it, at every try: then
            // the index is walked after all.
            if live.len() as u64 != seg.n_live {
                warn!(node_id = %self.node_id, segment = seq, n_found = live.len(), n_live = seg.n_live, read_error = in_file.as_ref().err().map(|e| e.to_string()), "compaction did not find every live record by reading the segment; walking the index");
                self.n_index_walks.fetch_add(1, Ordering::Relaxed);
                live = st
                    .index
                    .iter()
                    .filter(|(_, l)| l.pos.seq == seq)
                    .map(|(id, l)| (*id, *l))
                    .collect();
            }
            let tombstones: Vec<Tombstone> = seg
                .tombstones
                .iter()
                .filter(|t| st.tombstone_needed(seq, t))
                .copied()
                .collect();
            (seg.file.clone(), live, tombstones)
        };
        // Every live record read once and checked whole before anything is copied, and
        // the copy made of the bytes checked: it gets a fresh record checksum, which must
        // not cover bytes that rotted here. A corrupt one (or one cut short) leaves the
        // segment as it is until the scrubber quarantines it.
        let mut records = Vec::with_capacity(live.len());
        for (id, old) in live {
            let (mut record, checks_out) = match read_and_judge(&file, id, &old) {
                Ok(read) => read,
                // Cut short, or a bad spot: the segment waits for the scrubber as for a
                // corrupt record (rather than every compaction failing on it, first).
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof
                        || crate::error::io_is_unreadable(&e) =>
                {
                    (Vec::new(), false)
                }
                Err(e) => return Err(e.into()),
            };
            if !checks_out {
                warn!(node_id = %self.node_id, shard_id = %id, segment = seq, "corrupt or unreadable shard found by compaction; the segment waits for the scrubber");
                if let Some(seg) = self
                    .state
                    .lock()
                    .expect("segment state lock")
                    .segments
                    .get_mut(&seq)
                {
                    seg.stuck_on = Some(id);
                }
                return Ok(());
            }
            // The checksum is set for the new position when it is appended.
            let prefix = encode_prefix(
                KIND_SHARD,
                id,
                old.shard_len_bytes,
                old.created_unix_s,
                PREFIX_BYTES as usize,
            );
            record[..PREFIX_BYTES as usize].copy_from_slice(&prefix);
            records.push((id, old, record));
        }
        let mut moved = Vec::new();
        let mut gens = Vec::new();
        for (id, old, mut record) in records {
            let header_len = format::header_len_bytes(old.shard_len_bytes) as usize;
            // The check and the position are taken together under the appender lock: a
            // delete after it writes its tombstone later, which then removes the copy.
            let appended = self.append(&[], |pos| {
                let still = self
                    .state
                    .lock()
                    .expect("segment state lock")
                    .index
                    .get(&id)
                    == Some(&old);
                still.then(|| {
                    set_checksum(&mut record, header_len, pos);
                    (record, Appended::Copy)
                })
            })?;
            if let Some((pos, gen_written)) = appended {
                moved.push((id, old, Loc { pos, ..old }, gen_written));
            }
        }
        for tombstone in &tombstones {
            let (_, gen_written) = self
                .append(&[], |pos| {
                    Some((
                        encode_tombstone(tombstone, pos),
                        Appended::Tombstone(*tombstone),
                    ))
                })?
                .expect("always built");
            gens.push(gen_written);
        }
        // Each record settled on its own: one sync covers them all unless it failed, and a
        // failed one poisons some while a later one (in the next segment) succeeds.
        let mut failed = None;
        for gen_written in gens.iter().chain(moved.iter().map(|m| &m.3)) {
            if let Err(e) = self.make_durable(*gen_written) {
                failed = Some(e);
            }
        }
        {
            let mut st = self.state.lock().expect("segment state lock");
            for (id, old, new, gen_written) in &moved {
                if st.index.get(id) == Some(old)
                    && matches!(self.settled(*gen_written), Some(Ok(())))
                {
                    st.add_live(*id, *new);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            // A delete in flight (it may put its shard back): the segment stays until a
            // later pass.
            let seg = &st.segments[&seq];
            if seg.n_live > 0 || seg.n_pending > 0 {
                return Ok(());
            }
        }
        info!(node_id = %self.node_id, segment = seq, n_moved = moved.len(), n_tombstones = tombstones.len(), "segment compacted");
        self.remove_segment(seq)
    }

    fn remove_segment(&self, seq: u64) -> Result<(), ShardError> {
        match fs::remove_file(self.dir.join(segment_name(seq))) {
            Ok(()) => {}
            // Removed by an earlier try whose directory sync failed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Durably gone before anything relies on it being gone (tombstones dropped).
        fsync_dir(&self.dir)?;
        self.state
            .lock()
            .expect("segment state lock")
            .segments
            .remove(&seq);
        Ok(())
    }
}

/// What an append adds to its segment's accounting.
enum Appended {
    /// A new shard, pending until durable.
    Shard,
    /// A compaction copy of a live shard, counted when the copy is durable.
    Copy,
    /// A tombstone.
    Tombstone(Tombstone),
}

/// A tombstone's record at `pos`.
fn encode_tombstone(tombstone: &Tombstone, pos: Pos) -> Vec<u8> {
    let len = (PREFIX_BYTES + TOMBSTONE_META_BYTES) as usize;
    let mut record = encode_prefix(KIND_TOMBSTONE, tombstone.id, 0, 0, len);
    record.extend_from_slice(&tombstone.first_written_at.seq.to_le_bytes());
    record.extend_from_slice(&tombstone.first_written_at.offset.to_le_bytes());
    record.extend_from_slice(&tombstone.victim_seq.to_le_bytes());
    set_checksum(&mut record, TOMBSTONE_META_BYTES as usize, pos);
    record
}

impl Segment {
    fn new(file: Arc<File>) -> Segment {
        Segment {
            file,
            len_bytes: 0,
            live_bytes: 0,
            n_live: 0,
            n_pending: 0,
            tombstones: Vec::new(),
            incomplete: false,
            stuck_on: None,
        }
    }
}

/// Creates segment `seq` (durably: its directory entry synced). An empty file of that
/// name is left by an earlier try whose directory sync failed (segments are only ever
/// created past the highest there is) and is taken; one with data is refused.
fn create_segment(dir: &Path, seq: u64) -> Result<File, ShardError> {
    let path = dir.join(segment_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if file.metadata()?.len() > 0 {
        return Err(ShardError::Io(std::io::Error::other(format!(
            "new segment {} already holds data",
            path.display()
        ))));
    }
    fsync_dir(dir)?;
    Ok(file)
}

/// How the scan of a segment ended.
struct Scanned {
    /// Where its valid records end.
    valid_end: u64,
    /// A read failed: what follows was not looked at, and must not be cut.
    io_error: bool,
}

/// Reads every valid record of one segment into `state`.
///
/// A record that is not valid (torn by a crash, or rotted) is skipped to the next valid one
/// (found by its magic and checksum); what follows the last valid record is cut off the
/// last segment. `last`: the segment was active when the node stopped, so its records are
/// checked whole (data too), and the records skipped in it are made invalid for good
/// (magic zeroed, synced): sealed at the next start, where only prefixes and headers are
/// checked, a torn record must not pass for a shard. A shard record that replaces another
/// of the same id (a compaction's copy) is checked whole in any segment: a torn copy (in a
/// segment sealed after a failed sync) must not replace a good original.
fn scan_segment(
    file: &File,
    seq: u64,
    last: bool,
    node_id: NodeId,
    state: &mut LogState,
) -> Result<Scanned, ShardError> {
    let file_len = file.metadata()?.len();
    state
        .segments
        .insert(seq, Segment::new(Arc::new(file.try_clone()?)));
    let mut offset = 0;
    let mut valid_end = 0;
    let io_error = |e: std::io::Error, offset: u64| {
        warn!(node_id = %node_id, segment = seq, offset, error = %e, "segment unreadable from here; the shards behind are missing until repaired");
    };
    while offset < file_len {
        let read = match read_record_at(file, seq, offset, file_len, last) {
            Ok(read) => read,
            Err(e) => {
                // A record whose prefix and header check out but whose data the disk
                // cannot give back (a bad spot): that record is skipped, not the records
                // behind it.
                if last
                    && let Ok(Some((_, record_len))) =
                        read_record_at(file, seq, offset, file_len, false)
                {
                    warn!(node_id = %node_id, segment = seq, offset, error = %e, "segment record unreadable: skipped, its shard is missing until repaired");
                    offset += record_len;
                    valid_end = offset;
                    continue;
                }
                io_error(e, offset);
                return Ok(Scanned {
                    valid_end,
                    io_error: true,
                });
            }
        };
        let Some((record, record_len)) = read else {
            match find_next_record(file, seq, offset + 1, file_len) {
                Ok(Some(next)) => {
                    warn!(node_id = %node_id, segment = seq, offset, next, "damaged segment record skipped; the shards in it are missing until repaired");
                    if last
                        && let Err(e) = file
                            .write_all_at(&[0; RECORD_MAGIC.len()], offset)
                            .and_then(|()| file.sync_data())
                    {
                        warn!(node_id = %node_id, segment = seq, offset, error = %e, "could not mark a skipped record invalid; the next start may take it for a shard (its data is checked on every read)");
                    }
                    offset = next;
                    continue;
                }
                Ok(None) => break,
                Err(e) => {
                    io_error(e, offset);
                    return Ok(Scanned {
                        valid_end,
                        io_error: true,
                    });
                }
            }
        };
        let pos = Pos { seq, offset };
        match record {
            Record::Shard {
                id,
                shard_len_bytes,
                created_unix_s,
            } => {
                let whole = last
                    || !state.index.contains_key(&id)
                    || matches!(
                        read_record_at(file, seq, offset, file_len, true),
                        Ok(Some(_))
                    );
                if whole {
                    state.add_live(
                        id,
                        Loc {
                            pos,
                            shard_len_bytes,
                            created_unix_s,
                        },
                    );
                } else {
                    warn!(node_id = %node_id, shard_id = %id, segment = seq, offset, "damaged copy of a shard ignored; the earlier copy stays");
                }
            }
            Record::Tombstone(tombstone) => {
                if state
                    .index
                    .get(&tombstone.id)
                    .is_some_and(|l| l.pos < tombstone.first_written_at)
                {
                    state.remove(tombstone.id);
                }
                state
                    .segments
                    .get_mut(&seq)
                    .expect("inserted above")
                    .tombstones
                    .push(tombstone);
            }
        }
        offset += record_len;
        valid_end = offset;
    }
    Ok(Scanned {
        valid_end,
        io_error: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lauscha_core::ShardHasher;

    fn id(n: u128) -> ShardId {
        ShardId {
            stripe_id: StripeId(n),
            shard_idx: (n % 6) as u8,
        }
    }

    fn header_of(data: &[u8]) -> Vec<u8> {
        let mut hasher = ShardHasher::new();
        hasher.update(data);
        let (digest, hashes) = hasher.finalize();
        format::encode_header(data.len() as u64, &digest, &hashes)
    }

    fn put(log: &SegmentLog, n: u128, data: &[u8]) {
        log.append_shard(id(n), &header_of(data), data).unwrap();
    }

    fn data_of(log: &SegmentLog, n: u128) -> Option<Vec<u8>> {
        let image = log.read_image(id(n)).unwrap()?.image;
        let (len, _) = format::decode_fixed_header(id(n), &image).unwrap();
        Some(image[format::header_len_bytes(len) as usize..].to_vec())
    }

    fn open(dir: &Path) -> SegmentLog {
        SegmentLog::open(dir, NodeId(1), true).unwrap().unwrap().log
    }

    #[test]
    fn shards_and_deletes_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            put(&log, 1, b"one");
            put(&log, 2, &[2u8; 100_000]);
            put(&log, 3, b"three");
            assert!(matches!(
                log.append_shard(id(1), &header_of(b"x"), b"x"),
                Err(ShardError::AlreadyExists(_))
            ));
            assert_eq!(log.delete(id(2)).unwrap(), Some(image_len_bytes(100_000)));
            assert_eq!(log.delete(id(2)).unwrap(), None);
            // Deleted, then written again: the new one stays.
            log.delete(id(3)).unwrap();
            put(&log, 3, b"three again");
        }
        let opened = SegmentLog::open(dir.path(), NodeId(1), false)
            .unwrap()
            .unwrap();
        assert_eq!(opened.n_shards, 2);
        let log = opened.log;
        assert_eq!(data_of(&log, 1).unwrap(), b"one");
        assert_eq!(data_of(&log, 2), None);
        assert_eq!(data_of(&log, 3).unwrap(), b"three again");
        let listed: Vec<ShardId> = log.list(None, 10).iter().map(|e| e.id).collect();
        assert_eq!(listed, vec![id(1), id(3)]);
        assert_eq!(
            log.list(Some(id(1)), 10)
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            vec![id(3)]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_came_before_stays() {
        // Under /var/tmp, so that the appends are direct (and the file padded).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (seg_path, len);
        {
            let log = open(dir.path());
            put(&log, 1, &[1u8; 5000]);
            put(&log, 2, &[2u8; 70_000]);
            let ap = log.appender.lock().unwrap();
            assert!(ap.direct.is_some(), "appends are direct here");
            seg_path = log.dir.join(segment_name(ap.seq));
            // Where the records end: a direct append pads the file to a block boundary.
            len = ap.end;
        }
        // The last record torn: its data ends early, then zeros where a write stopped.
        let file = OpenOptions::new().write(true).open(&seg_path).unwrap();
        file.set_len(len - 1000).unwrap();
        file.set_len(len).unwrap();
        drop(file);
        let log = open(dir.path());
        assert_eq!(data_of(&log, 1).unwrap(), vec![1u8; 5000]);
        assert_eq!(data_of(&log, 2), None, "a torn record is not a shard");
        assert!(fs::metadata(&seg_path).unwrap().len() < len, "cut");
        // And the log goes on.
        put(&log, 2, &[2u8; 70_000]);
        drop(log);
        let log = open(dir.path());
        assert_eq!(data_of(&log, 2).unwrap(), vec![2u8; 70_000]);
    }

    /// Shards 1, 2 and 3 (3,000 bytes of their number each) in a closed log; the path of
    /// their segment.
    fn three_shards_in_one_segment(dir: &Path) -> PathBuf {
        let log = open(dir);
        for n in 1..=3 {
            put(&log, n, &[n as u8; 3000]);
        }
        let seq = log.appender.lock().unwrap().seq;
        log.dir.join(segment_name(seq))
    }

    #[test]
    fn a_damaged_record_in_a_sealed_segment_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let seg_path = three_shards_in_one_segment(dir.path());
        // Opened again, the segment is sealed (a new one is active).
        drop(open(dir.path()));
        let mut bytes = fs::read(&seg_path).unwrap();
        let second = (PREFIX_BYTES + image_len_bytes(3000)) as usize;
        bytes[second + 41] ^= 0x10; // its length field
        fs::write(&seg_path, bytes).unwrap();
        let log = open(dir.path());
        assert_eq!(data_of(&log, 1).unwrap(), vec![1u8; 3000]);
        assert_eq!(data_of(&log, 2), None);
        assert_eq!(data_of(&log, 3).unwrap(), vec![3u8; 3000]);
    }

    /// A torn record in the middle of the active segment (pages written out of order
    /// before a crash) is skipped and made invalid for good: at the next start, sealed and
    /// checked less, it must not pass for a shard.
    #[test]
    fn a_torn_record_in_the_last_segment_is_skipped_and_stays_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let seg_path = three_shards_in_one_segment(dir.path());
        let mut bytes = fs::read(&seg_path).unwrap();
        let record_len = (PREFIX_BYTES + image_len_bytes(3000)) as usize;
        bytes[2 * record_len - 1] ^= 0x10; // a data page of the second that did not make it
        fs::write(&seg_path, bytes).unwrap();
        for _ in 0..2 {
            let log = open(dir.path());
            assert_eq!(data_of(&log, 1).unwrap(), vec![1u8; 3000]);
            assert_eq!(data_of(&log, 2), None);
            assert_eq!(data_of(&log, 3).unwrap(), vec![3u8; 3000]);
        }
        let bytes = fs::read(&seg_path).unwrap();
        assert_eq!(bytes[record_len..record_len + 8], [0u8; 8], "magic zeroed");
    }

    #[test]
    fn dead_segments_are_removed_and_mostly_dead_ones_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let big = vec![7u8; 4096];
        let per_segment =
            SEGMENT_TARGET_BYTES / (PREFIX_BYTES + image_len_bytes(big.len() as u64)) + 1;
        // Three segments' worth, then one more record to seal the third.
        let n = 3 * per_segment;
        for i in 0..=n {
            put(&log, i as u128, &big);
        }
        let n_segments = || log.state.lock().unwrap().segments.len();
        assert_eq!(n_segments(), 4);
        // All of the first segment dead: removed.
        for i in 0..per_segment {
            log.delete(id(i as u128)).unwrap();
        }
        assert_eq!(n_segments(), 3);
        // Most of the second dead: compacted into the active one.
        for i in per_segment..(2 * per_segment - 3) {
            log.delete(id(i as u128)).unwrap();
        }
        assert_eq!(n_segments(), 2);
        assert_eq!(
            log.n_index_walks.load(Ordering::Relaxed),
            0,
            "the live records found by reading the segment"
        );
        for i in (2 * per_segment - 3)..=n {
            assert_eq!(data_of(&log, i as u128).unwrap(), big, "shard {i}");
        }
        drop(log);
        // The deletes hold after a restart: the tombstones that were still needed moved.
        let log = open(dir.path());
        assert_eq!(data_of(&log, 0), None);
        assert_eq!(data_of(&log, (per_segment + 1) as u128), None);
        assert_eq!(
            log.list(None, usize::MAX).len() as u64,
            n + 1 - (2 * per_segment - 3)
        );
    }

    /// Compaction copies nothing from a segment holding a corrupt shard (a fresh
    /// checksum must not cover rot), and goes on once that shard is deleted, as the
    /// scrubber's quarantine does.
    #[test]
    fn a_corrupt_shard_holds_compaction_back_until_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let big = vec![7u8; 4096];
        let record_len = PREFIX_BYTES + image_len_bytes(big.len() as u64);
        let per_segment = SEGMENT_TARGET_BYTES / record_len + 1;
        for i in 0..=per_segment {
            put(&log, i as u128, &big);
        }
        let first = log.dir.join(segment_name(1));
        let mut bytes = fs::read(&first).unwrap();
        bytes[record_len as usize - 1] ^= 1; // shard 0's last byte
        fs::write(&first, bytes).unwrap();
        for i in 1..per_segment - 3 {
            log.delete(id(i as u128)).unwrap();
        }
        let n_segments = || log.state.lock().unwrap().segments.len();
        assert_eq!(n_segments(), 2, "not compacted");
        assert_eq!(log.state.lock().unwrap().segments[&1].stuck_on, Some(id(0)));
        assert_eq!(data_of(&log, (per_segment - 2) as u128).unwrap(), big);
        log.delete(id(0)).unwrap();
        assert_eq!(n_segments(), 1, "compacted once the corrupt shard was gone");
        for i in per_segment - 3..=per_segment {
            assert_eq!(data_of(&log, i as u128).unwrap(), big, "shard {i}");
        }
    }

    #[test]
    fn concurrent_commits_share_syncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open(dir.path()));
        std::thread::scope(|s| {
            for t in 0..8u128 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..50u128 {
                        put(&log, t * 1000 + i, &[(t + i) as u8; 4096]);
                    }
                });
            }
        });
        drop(log);
        let log = open(dir.path());
        for t in 0..8u128 {
            for i in 0..50u128 {
                assert_eq!(
                    data_of(&log, t * 1000 + i).unwrap(),
                    vec![(t + i) as u8; 4096]
                );
            }
        }
    }

    /// Quarantine deletes the record it judged, never a copy written since.
    #[test]
    fn delete_if_at_spares_a_record_written_since() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, 1, b"first copy");
        let judged = log.read_image(id(1)).unwrap().unwrap();
        assert!(judged.checks_out);
        log.delete(id(1)).unwrap().unwrap();
        put(&log, 1, b"rebuilt copy");
        assert_eq!(log.delete_if_at(id(1), judged.pos).unwrap(), None);
        assert_eq!(data_of(&log, 1).as_deref(), Some(&b"rebuilt copy"[..]));
        let now = log.read_image(id(1)).unwrap().unwrap();
        assert!(log.delete_if_at(id(1), now.pos).unwrap().is_some());
        assert_eq!(data_of(&log, 1), None);
    }

    /// What `make_durable` does when `fdatasync` fails, driven by hand: the records it
    /// was to cover fail for good, later records are made durable by later syncs.
    #[test]
    fn a_failed_sync_fails_the_records_it_covered_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        put(&log, 1, b"synced before");
        let unsynced = || {
            let tombstone = Tombstone {
                id: id(99),
                first_written_at: Pos { seq: 1, offset: 0 },
                victim_seq: 1,
            };
            log.append(&[], |pos| {
                Some((encode_tombstone(&tombstone, pos), Appended::Copy))
            })
            .unwrap()
            .unwrap()
            .1
        };
        let (a, b) = (unsynced(), unsynced());
        {
            let _sync = log.sync_lock.lock().unwrap();
            let mut ap = log.appender.lock().unwrap();
            log.poison(ap.gen_written, &std::io::Error::other("injected"));
            ap.rotate = true;
        }
        assert!(matches!(log.make_durable(a), Err(ShardError::Io(_))));
        assert!(matches!(log.make_durable(b), Err(ShardError::Io(_))));
        assert!(matches!(log.make_durable(1), Ok(())));
        let segments_before = log.state.lock().unwrap().segments.len();
        put(&log, 2, b"after");
        assert_eq!(
            log.state.lock().unwrap().segments.len(),
            segments_before + 1,
            "the segment of the failed sync is sealed"
        );
        // A later successful sync covers them by number, and changes nothing.
        assert!(log.synced_gen.load(Ordering::Acquire) > b);
        assert!(matches!(log.make_durable(b), Err(ShardError::Io(_))));
        assert_eq!(data_of(&log, 2).unwrap(), b"after");
    }

    /// A direct write that failed (marked by hand, as `append` marks it) fails the records
    /// not yet synced, even though a later `fdatasync` would succeed, and seals the
    /// segment; records synced before stay, and so do later ones in the next segment.
    /// They fail as the write did: on a full disk, as `DiskFull` (a gateway then counts
    /// the node as full and places shards elsewhere; an I/O error tells it nothing).
    #[test]
    fn a_failed_direct_write_fails_the_unsynced_records_for_good() {
        use std::io::ErrorKind;
        let cases = [false, true].into_iter().flat_map(|seal_first| {
            [ErrorKind::Other, ErrorKind::StorageFull].map(|kind| (seal_first, kind))
        });
        for (seal_first, kind) in cases {
            let failed_as_the_write = |r: Result<(), ShardError>| match kind {
                ErrorKind::StorageFull => matches!(r, Err(ShardError::DiskFull)),
                _ => matches!(r, Err(ShardError::Io(e)) if e.kind() == kind),
            };
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path());
            put(&log, 1, b"synced before");
            let unsynced = log
                .append(&[], |pos| {
                    let tombstone = Tombstone {
                        id: id(99),
                        first_written_at: pos,
                        victim_seq: pos.seq,
                    };
                    Some((encode_tombstone(&tombstone, pos), Appended::Copy))
                })
                .unwrap()
                .unwrap()
                .1;
            {
                let mut ap = log.appender.lock().unwrap();
                ap.write_failed = Some((kind, "injected".to_string()));
                ap.rotate = true;
            }
            let segments_before = log.state.lock().unwrap().segments.len();
            if seal_first {
                // The next append seals the segment before its own record.
                put(&log, 2, b"after");
            }
            assert!(
                failed_as_the_write(log.make_durable(unsynced)),
                "seal first: {seal_first}, {kind}"
            );
            assert!(matches!(log.make_durable(1), Ok(())));
            if !seal_first {
                put(&log, 2, b"after");
            }
            assert_eq!(
                log.state.lock().unwrap().segments.len(),
                segments_before + 1
            );
            assert!(failed_as_the_write(log.make_durable(unsynced)));
            assert_eq!(data_of(&log, 1).unwrap(), b"synced before");
            assert_eq!(data_of(&log, 2).unwrap(), b"after");
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put { n: u128, len: usize },
        Delete { n: u128 },
        Restart,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..24u128, prop::sample::select(vec![0usize, 1, 700, 4096, 65_537, 200_000]))
                .prop_map(|(n, len)| Op::Put { n, len }),
            4 => (0..24u128).prop_map(|n| Op::Delete { n }),
            1 => Just(Op::Restart),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Direct appends of any lengths leave the file holding exactly what was appended,
        /// then zeros to the next block boundary, and keep the last partial block.
        #[test]
        fn direct_appends_write_what_was_appended(
            appends in proptest::collection::vec((0usize..3 * DIRECT_ALIGN + 7, 0usize..300, proptest::prelude::any::<u8>()), 1..24),
        ) {
            // Under /var/tmp: a disk file system takes O_DIRECT, where /tmp may be tmpfs.
            let dir = tempfile::tempdir_in("/var/tmp").unwrap();
            let path = dir.path().join("direct.seg");
            let file = File::create(&path).unwrap();
            let mut direct = DirectAppends::open(&path, NodeId(1))
                .expect("the test needs a file system under /var/tmp that takes O_DIRECT");
            let mut model: Vec<u8> = Vec::new();
            for (len, second_len, byte) in appends {
                let first = vec![byte; len];
                let second = vec![byte.wrapping_add(1); second_len];
                direct.write_at_end(model.len() as u64, &[&first, &second]).unwrap();
                model.extend_from_slice(&first);
                model.extend_from_slice(&second);
                let mut padded = model.clone();
                padded.resize(model.len().next_multiple_of(DIRECT_ALIGN), 0);
                proptest::prop_assert_eq!(fs::read(&path).unwrap(), padded);
                proptest::prop_assert_eq!(&direct.tail[..], &model[model.len() - model.len() % DIRECT_ALIGN..]);
            }
            drop(file);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Against a map: every shard written and not deleted reads back, every deleted
        /// one is gone, through rotations, removals, compactions and restarts (a restart
        /// is a crash too: every acknowledged record was synced).
        #[test]
        fn the_log_matches_a_map_through_restarts(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path());
            let mut model: BTreeMap<u128, Vec<u8>> = BTreeMap::new();
            for (version, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Put { n, len } => {
                        let data: Vec<u8> = (0..len).map(|i| (i + version * 7) as u8).collect();
                        let result = log.append_shard(id(n), &header_of(&data), &data);
                        match model.entry(n) {
                            std::collections::btree_map::Entry::Occupied(_) => {
                                proptest::prop_assert!(matches!(result, Err(ShardError::AlreadyExists(_))));
                            }
                            std::collections::btree_map::Entry::Vacant(slot) => {
                                result.unwrap();
                                slot.insert(data);
                            }
                        }
                    }
                    Op::Delete { n } => {
                        let deleted = log.delete(id(n)).unwrap();
                        proptest::prop_assert_eq!(deleted.is_some(), model.remove(&n).is_some());
                    }
                    Op::Restart => {
                        proptest::prop_assert_eq!(log.n_index_walks.load(Ordering::Relaxed), 0);
                        drop(log);
                        log = open(dir.path());
                    }
                }
            }
            proptest::prop_assert_eq!(log.n_index_walks.load(Ordering::Relaxed), 0);
            drop(log);
            let log = open(dir.path());
            let listed: Vec<ShardId> = log.list(None, usize::MAX).iter().map(|e| e.id).collect();
            let mut want: Vec<ShardId> = model.keys().map(|n| id(*n)).collect();
            want.sort();
            proptest::prop_assert_eq!(listed, want);
            for (n, data) in &model {
                proptest::prop_assert_eq!(data_of(&log, *n), Some(data.clone()));
            }
        }
    }

    /// Puts and deletes from several threads (each on ids of its own, so each keeps its
    /// own model) while deletes run removals and compactions: after a restart the log
    /// holds exactly what the models hold.
    #[test]
    fn concurrent_puts_deletes_and_compactions_agree_with_the_models() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(open(dir.path()));
        let models: Vec<BTreeMap<u128, Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u128)
                .map(|t| {
                    let log = log.clone();
                    s.spawn(move || {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                        let mut model = BTreeMap::new();
                        for step in 0..600usize {
                            let n = t * 1000 + rng.random_range(0..30u128);
                            if rng.random_bool(0.55) {
                                let len = rng.random_range(0..20_000usize);
                                let data: Vec<u8> = (0..len).map(|i| (i + step) as u8).collect();
                                match log.append_shard(id(n), &header_of(&data), &data) {
                                    Ok(()) => assert!(model.insert(n, data).is_none()),
                                    Err(ShardError::AlreadyExists(_)) => {
                                        assert!(model.contains_key(&n))
                                    }
                                    Err(e) => panic!("put {n}: {e}"),
                                }
                            } else {
                                let deleted = log.delete(id(n)).unwrap();
                                assert_eq!(deleted.is_some(), model.remove(&n).is_some());
                            }
                        }
                        model
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(log.n_index_walks.load(Ordering::Relaxed), 0);
        drop(log);
        let log = open(dir.path());
        let mut want: Vec<ShardId> = models
            .iter()
            .flat_map(|m| m.keys().map(|n| id(*n)))
            .collect();
        want.sort();
        let listed: Vec<ShardId> = log.list(None, usize::MAX).iter().map(|e| e.id).collect();
        assert_eq!(listed, want);
        for model in &models {
            for (n, data) in model {
                assert_eq!(data_of(&log, *n).as_ref(), Some(data), "shard {n}");
            }
        }
    }

    #[test]
    fn a_prefix_from_disk_never_panics() {
        let tombstone = Tombstone {
            id: id(9),
            first_written_at: Pos { seq: 3, offset: 7 },
            victim_seq: 2,
        };
        let good = encode_tombstone(&tombstone, Pos { seq: 3, offset: 7 });
        for cut in 0..good.len() {
            let _ = decode_prefix_fields(&good[..cut]);
        }
        for i in 0..PREFIX_BYTES as usize {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = decode_prefix_fields(&bad);
        }
    }
}
