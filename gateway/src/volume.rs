//! A block volume served by this process: reads, journaled writes, zeroing, flush, and
//! the background merge of journal entries into erasure-coded extents.
//!
//! Write path: a small write (up to 64 KiB, inside one extent) joins a queue, and one task
//! journals everything waiting with one metadata command (group commit): several writes
//! of 64 KiB or more as one stripe set on the storage nodes (`AppendBatch`, each entry a
//! slice of it), fewer inside the command itself. Other writes of up to 64 KiB per extent
//! travel inside the metadata command, so Raft replicates them; larger ones go
//! to storage nodes as a stripe at the volume's own policy (k+m, through the same
//! `write_body` as objects, acknowledged by the write quorum k+1), or as three copies
//! (1 data + 2 parity shards) when that policy cannot be placed or written now. Then one
//! metadata command records the entries under the lease epoch. Only then is the write
//! acknowledged: it survives a crash of this process (the journal is in metadata and on
//! the nodes) and, once every shard is durable (checked by FLUSH and FUA), the loss of
//! any m storage nodes.
//!
//! Read path: an extent's merged bytes (erasure-coded, read through `read::open_range`),
//! with the unmerged journal entries laid over them in sequence order. Journal bytes are
//! kept in memory until merged, so reads never wait for the journal's stripes.
//!
//! Merge (a task of its own, woken by the write that makes an extent due): an extent with
//! journal entries gets a new version made of its old bytes plus the entries, written at
//! full redundancy (k+m shards) or not at all (or, when the entries' own stripes tile it,
//! those stripes adopted as they are), and swapped in with one metadata command
//! that also drops the entries, under the lease epoch. `MERGE_LIMITS` say when: an extent
//! whose entries cover it whole (a sequential writer: the merge reads nothing), that has
//! many or old entries, and, while the volume's journal is over a soft limit, those with
//! the most journal bytes. Before that, while the inline journal is over its soft limit,
//! its oldest entries are spilled: moved into one stripe set on the nodes, keeping their
//! place in the journal (`spill_inline`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use lauscha_core::versioning::{MetaQuery, MetaQueryReply, ObjectCommand, ObjectCommandReply};
use lauscha_core::volume::{
    BatchedWrite, ExtentJournal, JOURNAL_COPIES_POLICY, JournalEntry, MergeLimits, SpilledEntry,
    VOLUME_BLOCK_BYTES, Volume, VolumeCommand, VolumeReply, VolumeState, covers, extents_of,
    plan_merges, tiling,
};
use lauscha_core::{ObjectData, ObjectVersion, PlacementPolicy, StripeId, TenantId};
use s3s::checksum::ChecksumHasher;
use s3s::dto::StreamingBlob;
use tracing::{info, warn};

use crate::GatewayError;
use crate::gateway::Inner;
use crate::{read, write};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// Metadata times a lease by the wall clock of the voter that applies it, and another
/// server's attach is checked by another voter's clock: reads stop this much before the
/// lease's end as seen here, for clock skew between voters.
const LEASE_CLOCK_MARGIN: Duration = Duration::from_secs(2);
/// The pause before a renewal that metadata did not answer is sent again.
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// How a lease renewal went.
enum Renewal {
    /// Metadata granted it.
    Granted,
    /// No answer, or a refusal of an epoch this engine left itself: tried again soon.
    NotAnswered,
    /// Another server holds the lease: renewal ends.
    Fenced,
}
/// When extents are merged (`lauscha_core::volume::plan_merges`); the age limit comes
/// from `gateway.volume_merge_age_ms`. The journal is allowed to grow, because a merge
/// rewrites the whole extent however little it absorbs: for random small writes, the
/// bytes written per client byte fall as the journal grows.
const MERGE_LIMITS: MergeLimits = MergeLimits {
    max_age_ms: 10_000,
    max_entries: 1024,
    soft_bytes: 128 << 20,
    soft_inline_bytes: 16 << 20,
};
/// Unmerged journal bytes of one volume that make writers wait for merges.
const MAX_PENDING_BYTES: u64 = 256 << 20;
/// Unmerged journal bytes of one volume carried inline in metadata that make writers wait
/// for merges: the whole journal is one metadata message at attach, and those are at most
/// 64 MiB.
const MAX_INLINE_PENDING_BYTES: u64 = 24 << 20;
/// How long a merge waits, in all, for the gaps in the journal's sequence numbers below
/// its entries to close (`EngineState::seqs_known_below`) before it reads the volume
/// again: more than the metadata client's deadline for one command (15 s).
const GAP_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often at most a failed extent read makes the engine read the volume's stripe lists
/// again (`VolumeEngine::refresh_extents`).
const EXTENTS_REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How often the merger looks for extents whose journal got old, when no write woke it.
const MERGE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Writes up to this size are small: they go through the batch queue (`BatchQueue`), or
/// inside the metadata entry (replicated by Raft) if they are not part of a batch.
const INLINE_JOURNAL_BYTES: u64 = 64 * 1024;
/// The most spills one merge pass makes (each up to `BATCH_MAX_BYTES`) before it turns to
/// the merge plan: enough to bring the inline journal from its hard limit to three
/// quarters of its soft one.
const MAX_SPILLS_AT_ONCE: usize = 16;
/// After a spill could not be stored at full redundancy, how long merges alone relieve
/// the inline journal.
const SPILL_RETRY_AFTER: Duration = Duration::from_secs(10);
/// A batch of small writes of at least this many bytes is written as one journal stripe
/// set on storage nodes (`AppendBatch`); a smaller one travels inline in one `Append`.
/// Inline entries are cheaper for a lone writer (one Raft commit, no shard files) but are
/// bounded tightly (`MAX_INLINE_PENDING_BYTES`); batches keep the journal on the nodes,
/// where it may grow, so that merges of random writes absorb more.
const BATCH_STRIPE_MIN_BYTES: u64 = 64 * 1024;
/// The most bytes one batch takes from the queue, and never more than one shard's size
/// (`gateway.shard_size_bytes`: one stripe even as three copies). Every entry of a batch
/// carries the batch's stripe list in its metadata record, and the whole journal is one
/// message at attach (at most 64 MiB): a batch of one stripe keeps an entry's record near
/// 300 bytes, so even 65,536 entries (the 256 MiB limit, each entry counted as 4 KiB at
/// least: `Pending::counted_bytes`) stay far below it.
const BATCH_MAX_BYTES: u64 = 1 << 20;
/// Journal commands of small-write batches in flight at once per volume: one batch's
/// command waits for its Raft commit while the next is proposed (the metadata log syncs
/// both with one fsync), and the store of a third overlaps them.
const BATCH_COMMITS_IN_FLIGHT: usize = 2;

/// One unmerged write, as it applies to one extent.
#[derive(Clone, Debug)]
struct Pending {
    seq: u64,
    /// Offset within the extent.
    within: u64,
    len: u64,
    /// The bytes; `None` for zeros.
    data: Option<Bytes>,
    /// Every shard (k+m, or all three copies) is durable.
    replicated: bool,
    /// Carried inline in the metadata entry.
    inline: bool,
    /// A slice of a batch's stripes (settled by merging its extent, not one by one).
    sliced: bool,
    /// Its stripes on storage nodes, when it has some of its own (a journal entry stored
    /// as one piece of one extent): a merge may adopt them as the extent's bytes.
    stripes: Option<ObjectData>,
    /// When it was written (old entries get merged).
    since: Instant,
}

impl Pending {
    /// What the journal's limits count for it: its bytes, which stay in memory until it
    /// is merged, and never less than one 4 KiB block; zeros (TRIM, WRITE_ZEROES), which
    /// keep none, count one block.
    /// The limit on bytes is also the limit on entries: at most 65,536 (256 MiB over
    /// 4 KiB), so that the journal fits the one message an attach reads it in (each
    /// record about 300 bytes). Counted at their length, 512-byte writes (the NBD
    /// minimum) would allow eight times as many, and zeros would make a whole-disk
    /// discard (`mkfs`, `blkdiscard`, a copy tool zeroing its target: up to 4 GiB a
    /// request) put the journal far over its limit, so that the writes after it waited
    /// until merges of every extent it touched had committed, one metadata command each.
    fn counted_bytes(&self) -> u64 {
        counted_journal_bytes(self.len, self.data.is_some())
    }
}

/// What the journal's limits count for an entry of `len` bytes (`holds_bytes`: not zeros):
/// see `Pending::counted_bytes`. Every change to `pending_bytes` and
/// `inline_pending_bytes` adds or takes off exactly this.
fn counted_journal_bytes(len: u64, holds_bytes: bool) -> u64 {
    let block = u64::from(VOLUME_BLOCK_BYTES);
    if holds_bytes { len.max(block) } else { block }
}

#[derive(Default)]
struct EngineState {
    extents: HashMap<u64, ObjectData>,
    pending: BTreeMap<u64, Vec<Pending>>,
    pending_bytes: u64,
    inline_pending_bytes: u64,
    /// Metadata commands of this engine whose outcome it does not know (a journal write
    /// answered with an error may have landed anyway, a merge may have been applied),
    /// counted, and how many of them a new epoch has caught up with (`sealed`, see
    /// `seal`).
    unknown_outcomes: u64,
    sealed: u64,
    /// Reasons to read the volume again from metadata (unknown outcomes, and refusals
    /// that show metadata's journal is not this engine's), counted, and how many of them
    /// a reload has caught up with (`resynced`, see `resync`).
    resync_wanted: u64,
    resynced: u64,
    /// Every journal sequence number below this one is known to this engine: its entry
    /// is in `pending` or merged (only this engine's commands take sequence numbers while
    /// it holds the lease). Those known above it are in `seqs_known_above`. A gap is a
    /// command committed and not answered yet, or one of unknown outcome (or answered
    /// with something unexpected) until `resync` fills it. A merge takes only entries
    /// below it: an entry unknown to the engine below those it merges would stay in the
    /// journal and be replayed over them at the next attach.
    seqs_known_below: u64,
    seqs_known_above: std::collections::BTreeSet<u64>,
    /// When `refresh_extents` last read the stripe lists from metadata.
    extents_refreshed: Option<Instant>,
}

impl EngineState {
    /// Extent `idx`'s journal, for the merge planner.
    fn extent_journal(&self, idx: u64, extent_len: u64) -> Option<ExtentJournal> {
        let ps = self.pending.get(&idx).filter(|ps| !ps.is_empty())?;
        let oldest = ps.iter().map(|p| p.since).min()?;
        Some(ExtentJournal {
            extent: idx,
            entries: ps.len(),
            bytes: ps.iter().map(Pending::counted_bytes).sum(),
            inline_bytes: ps
                .iter()
                .filter(|p| p.inline)
                .map(Pending::counted_bytes)
                .sum(),
            covered: covers(extent_len, ps.iter().map(|p| (p.within, p.len))),
            oldest_age_ms: oldest.elapsed().as_millis() as u64,
        })
    }

    /// Whether journal entry `seq`, just answered as committed, was taken from metadata by
    /// a `resync` already (and is in `pending`, or merged since).
    fn known_already(&self, seq: u64) -> bool {
        seq < self.seqs_known_below || self.seqs_known_above.contains(&seq)
    }

    /// Records sequence numbers `seqs` as known (their entries are in `pending`).
    fn learn_seqs(&mut self, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            if seq >= self.seqs_known_below {
                self.seqs_known_above.insert(seq);
            }
        }
        self.advance_known_mark();
    }

    /// Records every sequence number below `next_seq` as known (the journal was just read
    /// from metadata whole).
    fn learn_seqs_below(&mut self, next_seq: u64) {
        self.seqs_known_below = self.seqs_known_below.max(next_seq);
        let below = self.seqs_known_below;
        self.seqs_known_above.retain(|seq| *seq >= below);
        self.advance_known_mark();
    }

    /// Moves `seqs_known_below` over the known sequence numbers that now follow it.
    fn advance_known_mark(&mut self) {
        while self.seqs_known_above.remove(&self.seqs_known_below) {
            self.seqs_known_below += 1;
        }
    }

    /// The extents as `state` (read from metadata) has them.
    fn set_extents(&mut self, state: &VolumeState) {
        self.extents = state
            .extents
            .iter()
            .map(|(idx, e)| (*idx, e.data.clone()))
            .collect();
    }

    /// Drops the pending entries of extents `idxs` that `gone` picks (merged, or gone from
    /// metadata), and their bytes from the journal's totals; returns how many it dropped.
    fn drop_pending(
        &mut self,
        idxs: impl IntoIterator<Item = u64>,
        gone: impl Fn(&Pending) -> bool,
    ) -> usize {
        let (mut freed, mut freed_inline, mut n_dropped) = (0, 0, 0);
        for idx in idxs {
            let Some(ps) = self.pending.get_mut(&idx) else {
                continue;
            };
            ps.retain(|p| {
                let drop = gone(p);
                if drop {
                    freed += p.counted_bytes();
                    if p.inline {
                        freed_inline += p.counted_bytes();
                    }
                    n_dropped += 1;
                }
                !drop
            });
            if ps.is_empty() {
                self.pending.remove(&idx);
            }
        }
        // Every change takes off what was added (`counted_journal_bytes`).
        debug_assert!(self.pending_bytes >= freed && self.inline_pending_bytes >= freed_inline);
        self.pending_bytes = self.pending_bytes.saturating_sub(freed);
        self.inline_pending_bytes = self.inline_pending_bytes.saturating_sub(freed_inline);
        n_dropped
    }

    /// Whether the merger should look now: `extent` became due, or the volume's journal
    /// went over a soft limit.
    fn merge_wanted(&self, extent: Option<ExtentJournal>, limits: &MergeLimits) -> bool {
        self.pending_bytes > limits.soft_bytes
            || self.inline_pending_bytes > limits.soft_inline_bytes
            || extent.is_some_and(|j| j.is_due(limits))
    }
}

/// Why a volume operation failed, as NBD reports it.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The lease moved to another server: this one may not write any more.
    #[error("fenced: the volume's lease moved elsewhere")]
    Fenced,
    /// A snapshot: read-only.
    #[error("the volume is a snapshot: read-only")]
    ReadOnly,
    /// Storage or metadata failed.
    #[error("{0}")]
    Io(#[from] GatewayError),
}

/// A volume attached to this process under a lease.
pub struct VolumeEngine {
    inner: Arc<Inner>,
    /// The volume as it was when attached (size may only grow; a resize needs a re-attach).
    pub volume: Volume,
    /// The lease epoch (moves on when this engine seals unknown outcomes: `seal`).
    epoch: AtomicU64,
    /// This server's lease holder id.
    holder: String,
    /// The epoch a `seal` is moving away from (`NO_SEAL` when none is in flight): a
    /// refusal of a command sent under it is the engine's own doing, not a takeover.
    sealing_from: AtomicU64,
    /// One `seal` at a time; the request id of one whose answer was lost, sent again.
    sealing: tokio::sync::Mutex<Option<PendingSeal>>,
    state: Mutex<EngineState>,
    fenced: AtomicBool,
    /// When the last lease command that metadata granted (`Acquire`, `Renew`,
    /// `NewEpoch`) was sent: the lease runs at least until [`LEASE_TTL`] after it. Reads
    /// are refused after that (`check_lease_for_reads`): another server may have taken the
    /// volume over and written, and this one would serve what it overwrote.
    lease_sent_at: Mutex<Instant>,
    merging: tokio::sync::Mutex<()>,
    /// Wakes the merger: a write made an extent due.
    merge_wanted: Arc<tokio::sync::Notify>,
    /// Wakes merges waiting for a gap in the known sequence numbers to close
    /// (`EngineState::seqs_known_below`): a journal command was answered, or its outcome
    /// became unknown.
    commits_answered: tokio::sync::Notify,
    /// Small writes waiting for the next journal batch.
    batch: Mutex<BatchQueue>,
    /// [`MERGE_LIMITS`] with the configured age limit.
    merge_limits: MergeLimits,
    /// No spill before this: the last one could not be stored at full redundancy (nodes
    /// missing), and merges are tried meanwhile.
    spill_retry_at: Mutex<Option<Instant>>,
    /// Failed NBD requests of this volume, logged once per
    /// [`crate::log_throttle::FAILED_REQUEST_LOG_EVERY`] while they keep failing.
    pub(crate) failed_request_log: Mutex<crate::log_throttle::LogThrottle>,
}

/// A journal command sent: if it is dropped before `answered` (while its commit is
/// awaited: a panic in there, or the runtime shutting down), its outcome counts as
/// unknown, so that the gap it may leave in the known sequence numbers is filled by
/// `resync` instead of holding merges up.
struct CommandInFlight<'a> {
    engine: &'a VolumeEngine,
    answered: bool,
}

impl Drop for CommandInFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.engine.note_unknown_outcome();
        }
    }
}

/// No `seal` in flight (`VolumeEngine::sealing_from`).
const NO_SEAL: u64 = u64::MAX;

/// A `NewEpoch` command sent and not answered: sent again under the same request id, so
/// that it is applied once and its answer learned.
struct PendingSeal {
    from_epoch: u64,
    request_id: String,
    /// When it was first sent: a repeat's answer may be the stored answer of that first
    /// send, and the lease it granted runs from there.
    first_sent_at: Instant,
}

/// Group commit of small writes: while one batch is being written, the writes that arrive
/// wait here, and go together in the next.
#[derive(Default)]
struct BatchQueue {
    waiting: Vec<QueuedWrite>,
    /// A task is writing batches (it takes what waits until nothing does).
    writing: bool,
}

/// Resets the queue if its writer task ends other than by finding it empty (a panic):
/// the writes waiting get an error instead of waiting for ever, and the next small write
/// starts a new writer.
struct BatchWriterGuard<'a> {
    queue: &'a Mutex<BatchQueue>,
    finished: bool,
}

impl Drop for BatchWriterGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue.writing = false;
            // Dropping their answer channels tells their writers.
            queue.waiting.clear();
        }
    }
}

struct QueuedWrite {
    offset: u64,
    bytes: Bytes,
    /// Answered when the write is journaled: whether it survives m losses already.
    done: tokio::sync::oneshot::Sender<Result<bool, VolumeError>>,
}

fn meta_err(e: GatewayError) -> VolumeError {
    match e {
        // Gone (deleted after this server's lease lapsed) is fenced too: never writable
        // again through this engine.
        GatewayError::Meta {
            kind: lauscha_proto::MetaErrorKind::Fenced | lauscha_proto::MetaErrorKind::NoSuchVolume,
            ..
        } => VolumeError::Fenced,
        other => VolumeError::Io(other),
    }
}

/// Reads `range` of stored bytes (an extent or a journal entry).
async fn read_data(
    inner: &Arc<Inner>,
    data: &ObjectData,
    size: u64,
    range: std::ops::Range<u64>,
) -> Result<Bytes, GatewayError> {
    Ok(read::concat_bytes(
        read_data_chunks(inner, data, size, range).await?,
    ))
}

/// As [`read_data`], the bytes as the blocks they arrived in (not copied into one buffer:
/// an NBD reply sends them as they are).
async fn read_data_chunks(
    inner: &Arc<Inner>,
    data: &ObjectData,
    size: u64,
    range: std::ops::Range<u64>,
) -> Result<Vec<Bytes>, GatewayError> {
    let version = ObjectVersion {
        version_id: String::new(),
        size_bytes: size,
        etag: String::new(),
        last_modified_ms: 0,
        content_type: None,
        headers: Default::default(),
        user_metadata: Default::default(),
        checksums: Default::default(),
        data: data.clone(),
    };
    let mut stream = read::open_range(inner, &version, range.clone()).await?;
    let mut chunks = Vec::with_capacity(1);
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.map_err(|e| GatewayError::Internal(e.to_string()))?);
    }
    let n_bytes: usize = chunks.iter().map(Bytes::len).sum();
    if n_bytes as u64 != range.end - range.start {
        return Err(GatewayError::Internal(format!(
            "short read: {n_bytes} of {} bytes",
            range.end - range.start
        )));
    }
    Ok(chunks)
}

/// Writes `bytes` under `policy`; returns the stripes and whether every shard is durable.
async fn store(
    inner: &Arc<Inner>,
    policy: PlacementPolicy,
    bytes: Bytes,
) -> Result<(ObjectData, bool, write::Uncommitted), GatewayError> {
    let len = bytes.len() as u64;
    let body = StreamingBlob::wrap(futures::stream::once(async move {
        Ok::<_, std::io::Error>(bytes)
    }));
    let (written, uncommitted) = write::write_body(
        inner,
        policy,
        body,
        Some(len),
        ChecksumHasher::default(),
        write::Storage::Volume,
    )
    .await?;
    Ok((written.data, written.missing.is_empty(), uncommitted))
}

/// Stores journal bytes at the volume's own policy (k+m erasure-coded, (k+m)/k bytes
/// per byte instead of three copies), or as three copies where that policy cannot be
/// placed or written now (nodes down: a degraded cluster still takes writes, as it did
/// before). Tries again (the node pool then avoids the nodes that just failed) while
/// not every shard is durable: a FLUSH needs them all, and settling a short entry later
/// would mean a merge at full erasure-coded redundancy.
///
/// The flag returned says whether the bytes survive the loss of any m nodes (m of the
/// volume's policy): every shard durable, and as much parity as the volume's. Three
/// copies of a volume with m = 3 are not enough; FLUSH then merges the extent.
async fn store_journal(
    inner: &Arc<Inner>,
    policy: PlacementPolicy,
    bytes: Bytes,
) -> Result<(ObjectData, bool, write::Uncommitted), GatewayError> {
    let volume_parity = policy.n_parity_shards;
    let (policy, mut attempt) = match store(inner, policy, bytes.clone()).await {
        Ok(stored) => (policy, stored),
        Err(e @ (GatewayError::Placement(_) | GatewayError::BelowWriteQuorum { .. }))
            if policy != JOURNAL_COPIES_POLICY =>
        {
            warn!(error = %e, "journal write at the volume's policy failed; three copies instead");
            (
                JOURNAL_COPIES_POLICY,
                store(inner, JOURNAL_COPIES_POLICY, bytes.clone()).await?,
            )
        }
        Err(e) => return Err(e),
    };
    for _ in 0..2 {
        if attempt.1 {
            break;
        }
        match store(inner, policy, bytes.clone()).await {
            // The short copy's `Uncommitted` is dropped here: its shards are deleted.
            Ok(next) => attempt = next,
            Err(e) => {
                warn!(error = %e, "journal write retry failed; keeping the short copy");
                break;
            }
        }
    }
    attempt.1 &= policy.n_parity_shards >= volume_parity;
    Ok(attempt)
}

/// Which volume a name denoted when a client was allowed to use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VolumeIdentity {
    /// The owner.
    pub tenant: TenantId,
    /// Its creation time, Unix ms: tells a volume from a later one of the same name.
    pub created_ms: u64,
}

impl VolumeIdentity {
    /// The identity of `volume`.
    pub fn of(volume: &Volume) -> VolumeIdentity {
        VolumeIdentity {
            tenant: volume.tenant.clone(),
            created_ms: volume.created_ms,
        }
    }

    /// Refuses a volume that is not this one.
    pub fn check(&self, volume: &Volume) -> Result<(), GatewayError> {
        if VolumeIdentity::of(volume) == *self {
            Ok(())
        } else {
            Err(GatewayError::AccessDenied(format!(
                "volume {} was replaced since it was looked up; connect again",
                volume.name
            )))
        }
    }
}

impl VolumeEngine {
    /// Attaches `name`: takes the lease (refused while another server holds it), replays
    /// the journal left by an earlier holder into memory, and starts lease renewal and
    /// merging. The returned engine is shared by every connection to the volume.
    ///
    /// `identity` is the volume the caller checked (its owner and creation time): if the
    /// name now denotes another volume (deleted and created again, perhaps by another
    /// tenant), the attach is refused rather than handing that volume to the caller.
    pub async fn attach(
        inner: Arc<Inner>,
        name: &str,
        identity: &VolumeIdentity,
        holder: &str,
    ) -> Result<Arc<VolumeEngine>, GatewayError> {
        let state = volume_state(&inner, name).await?;
        identity.check(&state.volume)?;
        if state.volume.read_only {
            // A snapshot never changes: no lease, no merges, any number of readers.
            let engine = Arc::new(VolumeEngine::new(
                inner.clone(),
                state.volume.clone(),
                0,
                holder,
                Instant::now(),
            ));
            engine.load(&state).await?;
            return Ok(engine);
        }
        let acquire_sent_at = Instant::now();
        let reply = inner
            .meta
            .execute(&ObjectCommand::Volume(VolumeCommand::Acquire {
                name: name.to_string(),
                // The checked owner: metadata refuses the lease if the name changed hands.
                tenant: identity.tenant.clone(),
                holder: holder.to_string(),
                ttl_ms: LEASE_TTL.as_millis() as u64,
            }))
            .await?;
        let ObjectCommandReply::Volume(VolumeReply::Leased { epoch }) = reply else {
            return Err(GatewayError::Internal(format!(
                "acquire answered {reply:?}"
            )));
        };
        // Read the state again under the new epoch: nothing can change it any more.
        let state = volume_state(&inner, name).await?;
        identity.check(&state.volume)?;
        let engine = Arc::new(VolumeEngine::new(
            inner.clone(),
            state.volume.clone(),
            epoch,
            holder,
            acquire_sent_at,
        ));
        // Renewal and merging are separate tasks, so that a long merge never lets the
        // lease lapse; renewal starts before the journal is loaded, which may take long.
        // The next renewal is due a third of the lease after the last granted one was
        // sent; one not granted (metadata away) is tried again soon.
        let weak = Arc::downgrade(&engine);
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(engine) = weak.upgrade() else { return };
                    *engine.lease_sent_at.lock().expect("lease lock") + LEASE_TTL / 3
                };
                tokio::time::sleep_until(next.into()).await;
                let Some(engine) = weak.upgrade() else { return };
                match engine.renew().await {
                    Renewal::Fenced => return,
                    Renewal::Granted => {}
                    Renewal::NotAnswered => {
                        drop(engine);
                        tokio::time::sleep(RENEW_RETRY).await;
                    }
                }
            }
        });
        engine.load(&state).await?;
        info!(volume = %name, epoch, journal_entries = state.journal.len(), "volume attached");
        let (weak, wanted) = (Arc::downgrade(&engine), engine.merge_wanted.clone());
        tokio::spawn(async move {
            loop {
                let all_merged = {
                    let Some(engine) = weak.upgrade() else { return };
                    if engine.is_fenced() {
                        return;
                    }
                    match engine.merge_due(false).await {
                        Ok(all_merged) => all_merged,
                        Err(e) => {
                            warn!(volume = %engine.volume.name, error = %e, "merge failed; retried later");
                            false
                        }
                    }
                };
                if !all_merged {
                    // Nodes are missing: writes keep waking the merger, but trying again
                    // at once would write and delete whole extents in a loop.
                    tokio::time::sleep(MERGE_CHECK_EVERY).await;
                }
                // A wake-up while merging left a permit: nothing is missed.
                tokio::select! {
                    () = wanted.notified() => {}
                    () = tokio::time::sleep(MERGE_CHECK_EVERY) => {}
                }
            }
        });
        Ok(engine)
    }

    /// An engine for `volume` under lease `epoch` (0: a snapshot, no lease), with nothing
    /// loaded yet.
    fn new(
        inner: Arc<Inner>,
        volume: Volume,
        epoch: u64,
        holder: &str,
        lease_sent_at: Instant,
    ) -> VolumeEngine {
        let inner_merge_age_ms = inner.config.volume_merge_age_ms;
        VolumeEngine {
            inner,
            volume,
            epoch: AtomicU64::new(epoch),
            holder: holder.to_string(),
            sealing_from: AtomicU64::new(NO_SEAL),
            sealing: tokio::sync::Mutex::new(None),
            state: Mutex::new(EngineState::default()),
            fenced: AtomicBool::new(false),
            lease_sent_at: Mutex::new(lease_sent_at),
            merging: tokio::sync::Mutex::new(()),
            merge_wanted: Arc::new(tokio::sync::Notify::new()),
            commits_answered: tokio::sync::Notify::new(),
            batch: Mutex::new(BatchQueue::default()),
            merge_limits: MergeLimits {
                max_age_ms: inner_merge_age_ms,
                ..MERGE_LIMITS
            },
            spill_retry_at: Mutex::new(None),
            failed_request_log: Mutex::new(crate::log_throttle::LogThrottle::new(
                crate::log_throttle::FAILED_REQUEST_LOG_EVERY,
            )),
        }
    }

    async fn load(&self, state: &VolumeState) -> Result<(), GatewayError> {
        let loaded = self.read_journal(state, |_| true).await?;
        let mut st = self.state.lock().expect("volume state lock");
        st.set_extents(state);
        for entry in loaded {
            entry.insert(&mut st, self.volume.extent_bytes);
        }
        st.learn_seqs_below(state.volume.next_seq);
        Ok(())
    }

    /// Reads the bytes of the journal entries of `state` that `wanted` picks, in order.
    async fn read_journal(
        &self,
        state: &VolumeState,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<Vec<LoadedEntry>, GatewayError> {
        let slices: HashMap<u64, u64> = state.slices.iter().copied().collect();
        let settled: std::collections::HashSet<u64> = state.settled.iter().copied().collect();
        // A batch most of whose bytes are still journal is read once, whole; of one that
        // is mostly merged, only the entries left.
        let mut needed: HashMap<StripeId, u64> = HashMap::new();
        for (seq, entry) in &state.journal {
            if let (Some(d), true) = (&entry.data, slices.contains_key(seq))
                && wanted(*seq)
                && let Some(first) = d.stripes().first()
            {
                *needed.entry(first.id).or_default() += entry.len;
            }
        }
        let mut batches: HashMap<StripeId, Bytes> = HashMap::new();
        let mut loaded = Vec::new();
        for (seq, entry) in state.journal.iter().filter(|(seq, _)| wanted(*seq)) {
            let at = slices.get(seq).copied();
            let data = match (&entry.data, at) {
                (Some(d), Some(at)) => {
                    let batch_len: u64 = d.stripes().iter().map(|s| s.len_bytes).sum();
                    let end = at.checked_add(entry.len).filter(|e| *e <= batch_len);
                    let Some(end) = end else {
                        return Err(GatewayError::Internal(format!(
                            "volume {}: journal entry {seq} is outside its batch",
                            self.volume.name
                        )));
                    };
                    let first = d.stripes().first().map(|s| s.id);
                    let whole = match first {
                        Some(id) if needed.get(&id).is_some_and(|n| n * 2 >= batch_len) => {
                            if let Some(bytes) = batches.get(&id) {
                                Some(bytes.clone())
                            } else {
                                let bytes =
                                    read_data(&self.inner, d, batch_len, 0..batch_len).await?;
                                batches.insert(id, bytes.clone());
                                Some(bytes)
                            }
                        }
                        _ => None,
                    };
                    // Copied out: a pending entry must not keep a whole batch in memory.
                    Some(match whole {
                        Some(b) => Bytes::copy_from_slice(&b[at as usize..end as usize]),
                        None => Bytes::copy_from_slice(
                            &read_data(&self.inner, d, batch_len, at..end).await?,
                        ),
                    })
                }
                (Some(d), None) => Some(read_data(&self.inner, d, entry.len, 0..entry.len).await?),
                (None, _) => None,
            };
            loaded.push(LoadedEntry {
                seq: *seq,
                offset: entry.offset,
                len: entry.len,
                data,
                stored: Stored::of(&entry.data, at.is_some()),
                settled: settled.contains(seq),
            });
        }
        Ok(loaded)
    }

    async fn renew(&self) -> Renewal {
        if self.sealing_from.load(Ordering::SeqCst) != NO_SEAL {
            // A new epoch went unanswered: it may have landed, and then the old one
            // renews nothing. Learn its answer first (the same request id).
            let _ = self.seal().await;
        }
        let epoch = self.epoch();
        let sent_at = Instant::now();
        let result = self
            .inner
            .meta
            .execute(&ObjectCommand::Volume(VolumeCommand::Renew {
                name: self.volume.name.clone(),
                epoch,
                ttl_ms: LEASE_TTL.as_millis() as u64,
            }))
            .await;
        match result {
            Ok(_) => {
                self.lease_granted(sent_at);
                Renewal::Granted
            }
            Err(e) => {
                if matches!(self.command_error(e, epoch), VolumeError::Fenced) {
                    warn!(volume = %self.volume.name, epoch, "lease lost: fenced");
                    return Renewal::Fenced;
                }
                // Metadata unreachable, or this engine moved to a new epoch meanwhile:
                // keep renewing; writes fail on their own while metadata is away.
                Renewal::NotAnswered
            }
        }
    }

    /// Records that metadata granted a lease command sent at `sent_at`.
    fn lease_granted(&self, sent_at: Instant) {
        let mut at = self.lease_sent_at.lock().expect("lease lock");
        *at = (*at).max(sent_at);
    }

    /// Refuses reads once the lease may have run out: metadata has not granted a lease
    /// command sent in the last [`LEASE_TTL`] less [`LEASE_CLOCK_MARGIN`]. A snapshot has
    /// no lease and never changes; a fenced engine knows another server holds it.
    fn check_lease_for_reads(&self) -> Result<(), VolumeError> {
        if self.volume.read_only {
            return Ok(());
        }
        if self.is_fenced() {
            return Err(VolumeError::Fenced);
        }
        let since = self.lease_sent_at.lock().expect("lease lock").elapsed();
        if since >= LEASE_TTL.saturating_sub(LEASE_CLOCK_MARGIN) {
            return Err(VolumeError::Io(GatewayError::Internal(format!(
                "volume {}: lease not renewed for {} s (metadata unreachable); reads wait \
                 for the next renewal, as another server may have taken the volume over",
                self.volume.name,
                since.as_secs()
            ))));
        }
        Ok(())
    }

    /// The lease epoch this engine writes under now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The error of a metadata command sent under `epoch`. Fenced means another server
    /// took the volume over, and marks the engine fenced so that later writes fail at
    /// once, unless this engine itself left `epoch` behind (`seal`): then the command was
    /// refused, nothing changed, and the engine goes on under its new epoch.
    fn command_error(&self, e: GatewayError, epoch: u64) -> VolumeError {
        let e = meta_err(e);
        if matches!(e, VolumeError::Fenced) {
            if epoch < self.epoch() || self.sealing_from.load(Ordering::SeqCst) == epoch {
                return VolumeError::Io(GatewayError::Internal(format!(
                    "volume {}: refused under epoch {epoch}, which this server left for a \
                     new one after a command whose outcome it did not learn",
                    self.volume.name
                )));
            }
            self.fenced.store(true, Ordering::SeqCst);
        }
        e
    }

    /// The result of a metadata command sent under `epoch`. An unknown outcome is counted:
    /// no later write commits before the engine took a new epoch (`seal`), and no merge
    /// runs before it read the journal again (`resync`).
    fn commit_result<T>(
        &self,
        result: Result<T, GatewayError>,
        epoch: u64,
    ) -> Result<T, VolumeError> {
        if write::outcome_unknown(&result) {
            self.note_unknown_outcome();
        }
        result.map_err(|e| self.command_error(e, epoch))
    }

    /// Sends a journal command (`Append`, `AppendBatch` or their settled variants) under
    /// `epoch` and settles the stripes it references by its answer; returns the first
    /// sequence number it took.
    /// An unknown outcome, or an answer other than `Appended`, leaves a gap in the
    /// sequence numbers this engine knows, and is counted for `seal` and `resync`.
    async fn commit_journal(
        &self,
        command: ObjectCommand,
        uncommitted: Option<write::Uncommitted>,
        epoch: u64,
    ) -> Result<u64, VolumeError> {
        let mut in_flight = CommandInFlight {
            engine: self,
            answered: false,
        };
        let commit = self.inner.meta.execute(&command);
        let result = match uncommitted {
            Some(u) => u.settle(commit).await,
            None => commit.await,
        };
        in_flight.answered = true;
        match self.commit_result(result, epoch)? {
            ObjectCommandReply::Volume(VolumeReply::Appended { first_seq }) => Ok(first_seq),
            reply => {
                // It committed: the sequence numbers it took are unknown to this engine.
                self.note_unknown_outcome();
                Err(GatewayError::Internal(format!("append answered {reply:?}")).into())
            }
        }
    }

    /// Records that metadata may hold what this engine does not know.
    fn note_unknown_outcome(&self) {
        let stats = &self.inner.volume_stats;
        stats.unknown_outcomes.fetch_add(1, Ordering::Relaxed);
        // Also called from a drop guard while unwinding: a poisoned lock is still usable.
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.unknown_outcomes += 1;
        st.resync_wanted += 1;
        warn!(volume = %self.volume.name, unknown_outcomes = st.unknown_outcomes, "a volume command's outcome is unknown");
        drop(st);
        // A merge waiting for the gap this command may leave resyncs instead.
        self.commits_answered.notify_waiters();
    }

    /// Records that metadata's journal may not be what this engine holds (a refusal said
    /// so, or a gap in the sequence numbers outlived every answer): the next merge reads
    /// the volume again first.
    fn note_diverged(&self) {
        self.state.lock().expect("volume state lock").resync_wanted += 1;
    }

    /// Moves the lease to a new epoch if a command's outcome is unknown since the last
    /// time (`NewEpoch`). A journal write answered with an error may still be on its way
    /// through metadata; under the new epoch it is refused if it comes later, so it can
    /// never land above a write the client sent after it saw the error. Called before
    /// every journal write (`Append`, `AppendBatch` and their settled variants), by
    /// `resync`, and by lease renewal while a new epoch is unanswered; fails (the write with it) while metadata does not
    /// answer. Commands of other writes sent under the old epoch meanwhile are refused
    /// and answered EIO (nothing of them was applied).
    ///
    /// The request id is kept across retries while metadata keeps request records (ten
    /// minutes): a retry later than that is applied again, refused as a stale epoch, and
    /// the engine fences itself (fail-stop; a new attach reads everything afresh).
    async fn seal(&self) -> Result<(), VolumeError> {
        let target = {
            let st = self.state.lock().expect("volume state lock");
            if st.sealed >= st.unknown_outcomes {
                return Ok(());
            }
            st.unknown_outcomes
        };
        let mut pending = self.sealing.lock().await;
        if self.state.lock().expect("volume state lock").sealed >= target {
            return Ok(()); // another writer sealed while this one waited
        }
        let from = self.epoch();
        let (request_id, first_sent_at) = match &*pending {
            Some(p) if p.from_epoch == from => (p.request_id.clone(), p.first_sent_at),
            _ => {
                let id = self.inner.meta.new_request_id();
                let first_sent_at = Instant::now();
                *pending = Some(PendingSeal {
                    from_epoch: from,
                    request_id: id.clone(),
                    first_sent_at,
                });
                (id, first_sent_at)
            }
        };
        self.sealing_from.store(from, Ordering::SeqCst);
        let command = ObjectCommand::Volume(VolumeCommand::NewEpoch {
            name: self.volume.name.clone(),
            epoch: from,
            ttl_ms: LEASE_TTL.as_millis() as u64,
        });
        // The same request id every time: applied once, however often it is sent.
        let result = self.inner.meta.execute_as(&request_id, &command).await;
        if write::outcome_unknown(&result) {
            // Sent again, under the same id, by the next write.
            let e = result.expect_err("an unknown outcome is an error");
            warn!(volume = %self.volume.name, epoch = from, error = %e, "new epoch not answered");
            return Err(VolumeError::Io(e));
        }
        *pending = None;
        match result {
            Ok(ObjectCommandReply::Volume(VolumeReply::Leased { epoch })) => {
                // The new epoch first: a refusal of a command under `from` handled in
                // between must still be seen as this engine's own doing.
                self.epoch.store(epoch, Ordering::SeqCst);
                self.lease_granted(first_sent_at);
                self.sealing_from.store(NO_SEAL, Ordering::SeqCst);
                self.inner
                    .volume_stats
                    .new_epochs
                    .fetch_add(1, Ordering::Relaxed);
                let mut st = self.state.lock().expect("volume state lock");
                st.sealed = st.sealed.max(target);
                info!(volume = %self.volume.name, from_epoch = from, epoch, "moved to a new epoch after an unknown outcome");
                Ok(())
            }
            Ok(other) => {
                self.sealing_from.store(NO_SEAL, Ordering::SeqCst);
                Err(GatewayError::Internal(format!("new epoch answered {other:?}")).into())
            }
            Err(e) => {
                // Refused: `from` is not the current lease (another server took the
                // volume over), or the volume is gone.
                self.sealing_from.store(NO_SEAL, Ordering::SeqCst);
                Err(self.command_error(e, from))
            }
        }
    }

    /// Reads the volume again from metadata after a command's outcome was unknown, or a
    /// refusal showed that metadata's journal is not this engine's (under the merge lock,
    /// after `seal`): the extents as they are, journal entries this engine does not know
    /// added (a write answered with an error that landed anyway), and those metadata no
    /// longer has dropped (a merge whose answer was lost); every sequence number below
    /// metadata's next one is known then. Without it, a merge would leave such an entry
    /// below a later write in the journal, and a later attach would replay it over that
    /// write.
    async fn resync(&self) -> Result<(), VolumeError> {
        let target = self.state.lock().expect("volume state lock").resync_wanted;
        self.seal().await?;
        let epoch_before = self.epoch();
        let state = volume_state(&self.inner, &self.volume.name).await?;
        self.check_still_mine(&state, epoch_before)?;
        let known: std::collections::HashSet<u64> = {
            let st = self.state.lock().expect("volume state lock");
            st.pending.values().flatten().map(|p| p.seq).collect()
        };
        let found = self
            .read_journal(&state, |seq| !known.contains(&seq))
            .await?;
        let data_now: HashMap<u64, &Option<ObjectData>> = state
            .journal
            .iter()
            .map(|(seq, entry)| (*seq, &entry.data))
            .collect();
        let mut st = self.state.lock().expect("volume state lock");
        st.set_extents(&state);
        // Entries committed after the read above are newer than `next_seq`: kept.
        let idxs: Vec<u64> = st.pending.keys().copied().collect();
        let n_gone = st.drop_pending(idxs, |p| {
            p.seq < state.volume.next_seq && !data_now.contains_key(&p.seq)
        });
        // An entry's own stripes as metadata has them (a rewrite whose answer was lost
        // replaced them): a merge that adopts them must name the live ones.
        let slices: std::collections::HashSet<u64> =
            state.slices.iter().map(|(seq, _)| *seq).collect();
        let mut spilled = 0u64;
        for p in st.pending.values_mut().flatten() {
            if let (Some(_), Some(data)) = (&p.stripes, data_now.get(&p.seq)) {
                p.stripes = match Stored::of(data, slices.contains(&p.seq)) {
                    Stored::Own(d) => Some(d),
                    _ => None,
                };
            }
            // Inline here, a slice there: a spill whose answer was lost.
            if p.inline
                && let Some(data) = data_now.get(&p.seq)
                && !matches!(data, Some(ObjectData::Inline(_)))
            {
                p.inline = false;
                p.sliced = slices.contains(&p.seq);
                spilled += p.counted_bytes();
            }
        }
        debug_assert!(st.inline_pending_bytes >= spilled);
        st.inline_pending_bytes = st.inline_pending_bytes.saturating_sub(spilled);
        let mut n_found = 0u64;
        for entry in found {
            // One whose answer came while the volume was being read is in already.
            if !st.known_already(entry.seq) {
                entry.insert(&mut st, self.volume.extent_bytes);
                n_found += 1;
            }
        }
        let stats = &self.inner.volume_stats;
        stats.entries_found.fetch_add(n_found, Ordering::Relaxed);
        st.learn_seqs_below(state.volume.next_seq);
        st.resynced = st.resynced.max(target);
        info!(volume = %self.volume.name, n_found, n_gone, "journal read again from metadata");
        Ok(())
    }

    /// Whether another server took the volume over.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// The part of extent `idx` inside the volume (the last extent may be shorter).
    fn extent_len(&self, idx: u64) -> u64 {
        let ext = self.volume.extent_bytes;
        ext.min(self.volume.size_bytes.saturating_sub(idx * ext))
    }

    /// Gives the lease up (after the last connection closed).
    pub async fn detach(&self) {
        if self.is_fenced() || self.volume.read_only {
            return;
        }
        // Neither failure loses a write: the journal is durable and the next attach
        // replays it; an unreleased lease runs out by itself. Both delay the next attach,
        // which is what an operator reading the log wants to know.
        match self.merge_due(true).await {
            Ok(true) => {}
            Ok(false) => warn!(
                volume = %self.volume.name,
                epoch = self.epoch(),
                "detach: some extents could not be merged at full redundancy; the next attach replays their journal"
            ),
            Err(e) => warn!(
                volume = %self.volume.name,
                epoch = self.epoch(),
                error = %e,
                "detach: merging the journal failed; the next attach replays it"
            ),
        }
        let released = self
            .inner
            .meta
            .execute(&ObjectCommand::Volume(VolumeCommand::Release {
                name: self.volume.name.clone(),
                epoch: self.epoch(),
            }))
            .await;
        if let Err(e) = released {
            warn!(
                volume = %self.volume.name,
                epoch = self.epoch(),
                error = %e,
                "detach: releasing the lease failed; another attach waits until it runs out"
            );
            return;
        }
        info!(volume = %self.volume.name, epoch = self.epoch(), "volume detached");
    }

    /// Reads `len` bytes at `offset`, as chunks to be sent in order (the blocks they were
    /// read in: copying them into one buffer was a tenth of a large read's CPU).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<Bytes>, VolumeError> {
        self.check_lease_for_reads()?;
        let ext = self.volume.extent_bytes;
        let mut pieces = Vec::with_capacity(1);
        for (idx, within, n) in extents_of(offset, len, ext) {
            let mut refreshed = false;
            let piece = loop {
                let (base, pending) = {
                    let st = self.state.lock().expect("volume state lock");
                    let overlapping: Vec<Pending> = st
                        .pending
                        .get(&idx)
                        .into_iter()
                        .flatten()
                        .filter(|p| p.within < within + n && within < p.within + p.len)
                        .cloned()
                        .collect();
                    (st.extents.get(&idx).cloned(), overlapping)
                };
                let stored = match base {
                    Some(data) => {
                        match read_data_chunks(&self.inner, &data, ext, within..within + n).await {
                            Ok(bytes) => bytes,
                            Err(e) if !refreshed => {
                                let _guard = self.merging.lock().await;
                                if self.refresh_extents(idx, &e).await?.as_ref() == Some(&data) {
                                    return Err(e.into());
                                }
                                // Moved, or merged meanwhile: the extent and its entries
                                // again, as one view.
                                refreshed = true;
                                continue;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    None => vec![Bytes::from(vec![0u8; n as usize])],
                };
                if pending.is_empty() {
                    break stored;
                }
                let mut buf = BytesMut::with_capacity(n as usize);
                for chunk in &stored {
                    buf.extend_from_slice(chunk);
                }
                for p in &pending {
                    overlay(&mut buf, within, p);
                }
                break vec![buf.freeze()];
            };
            pieces.extend(piece);
        }
        Ok(pieces)
    }

    /// Takes the extents' stripe lists from metadata after a read of extent `idx` failed
    /// with `error`, and returns that extent's as it is now. Repair, drain and rebalance
    /// move shards (`edit_stripe`) without telling this engine: after more than m moves
    /// in one stripe, the list it holds names too few shards where they are. The caller
    /// holds the merge lock, so no merge of this engine changes the extents meanwhile.
    async fn refresh_extents(
        &self,
        idx: u64,
        error: &GatewayError,
    ) -> Result<Option<ObjectData>, VolumeError> {
        {
            let mut st = self.state.lock().expect("volume state lock");
            if st
                .extents_refreshed
                .is_some_and(|at| at.elapsed() < EXTENTS_REFRESH_EVERY)
            {
                // Nodes are down rather than moved: reads that fail together must not
                // each fetch the whole volume from metadata (nor each wait for it while
                // metadata does not answer).
                return Ok(st.extents.get(&idx).cloned());
            }
            st.extents_refreshed = Some(Instant::now());
        }
        warn!(volume = %self.volume.name, extent = idx, %error, "extent read failed; reading the stripe lists again");
        let epoch_before = self.epoch();
        let state = match volume_state(&self.inner, &self.volume.name).await {
            Ok(state) => state,
            Err(meta) => {
                warn!(volume = %self.volume.name, error = %meta, "stripe lists not read");
                return Ok(self
                    .state
                    .lock()
                    .expect("volume state lock")
                    .extents
                    .get(&idx)
                    .cloned());
            }
        };
        self.check_still_mine(&state, epoch_before)?;
        let mut st = self.state.lock().expect("volume state lock");
        st.set_extents(&state);
        Ok(st.extents.get(&idx).cloned())
    }

    /// Refuses volume state read from metadata that is not this engine's to take in: the
    /// name now denotes another volume (a snapshot deleted and made again), or another
    /// server holds the lease (this engine is fenced, and must not lay its journal over
    /// that server's extents).
    ///
    /// `epoch_before` is this engine's epoch from before `state` was read: a `seal` may
    /// move it on meanwhile, and the lease read may be at either.
    fn check_still_mine(&self, state: &VolumeState, epoch_before: u64) -> Result<(), VolumeError> {
        if VolumeIdentity::of(&state.volume) != VolumeIdentity::of(&self.volume) {
            self.fenced.store(true, Ordering::SeqCst);
            return Err(GatewayError::AccessDenied(format!(
                "volume {} was replaced since it was attached; connect again",
                self.volume.name
            ))
            .into());
        }
        if self.volume.read_only {
            return Ok(());
        }
        // The sealing mark first: a seal that ends between the two loads has stored its
        // new epoch before it cleared the mark, so `epoch` then covers it.
        let sealing_from = self.sealing_from.load(Ordering::SeqCst);
        let epoch = self.epoch();
        let newest = if sealing_from == epoch {
            epoch + 1
        } else {
            epoch
        };
        let mine =
            state.volume.lease.as_ref().is_some_and(|l| {
                l.holder == self.holder && (epoch_before..=newest).contains(&l.epoch)
            });
        if !mine {
            warn!(volume = %self.volume.name, epoch, "another server holds the lease: fenced");
            self.fenced.store(true, Ordering::SeqCst);
            return Err(VolumeError::Fenced);
        }
        Ok(())
    }

    /// Writes `data` at `offset` (`None`: zeros). With `fua`, returns only once the
    /// write survives the loss of any m storage nodes.
    pub async fn write(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        data: Option<Bytes>,
        fua: bool,
    ) -> Result<(), VolumeError> {
        if self.volume.read_only {
            return Err(VolumeError::ReadOnly);
        }
        if self.is_fenced() {
            return Err(VolumeError::Fenced);
        }
        self.wait_for_room().await?;
        // One journal entry per extent the write touches, each with its own stripes, so
        // that merging one extent drops exactly its entries and nothing another extent
        // still needs.
        let pieces = extents_of(offset, len, self.volume.extent_bytes);
        if let (Some(bytes), [(idx, _, _)]) = (&data, &pieces[..])
            && len <= INLINE_JOURNAL_BYTES
        {
            let replicated = self.write_batched(offset, bytes.clone()).await?;
            if fua && !replicated {
                self.settle(&[*idx]).await?;
            }
            return Ok(());
        }
        let mut at = 0u64;
        let stores = pieces.iter().map(|(idx, within, n)| {
            let piece = data
                .as_ref()
                .map(|d| d.slice(at as usize..(at + n) as usize));
            at += n;
            let inner = self.inner.clone();
            let policy = self.volume.policy;
            let piece_offset = idx * self.volume.extent_bytes + within;
            let n = *n;
            async move {
                match piece {
                    // Small writes travel in the Raft entry itself: replicated and fsync'd
                    // on a majority of metadata voters with the commit, one shared fsync
                    // for many concurrent writes instead of three shard files each.
                    Some(bytes) if n <= INLINE_JOURNAL_BYTES => Ok((
                        piece_offset,
                        n,
                        Some(bytes.clone()),
                        Some(ObjectData::Inline(bytes.to_vec())),
                        true,
                        None,
                    )),
                    Some(bytes) => {
                        let (stored, replicated, uncommitted) =
                            store_journal(&inner, policy, bytes.clone()).await?;
                        Ok::<_, GatewayError>((
                            piece_offset,
                            n,
                            Some(bytes),
                            Some(stored),
                            replicated,
                            Some(uncommitted),
                        ))
                    }
                    None => Ok((piece_offset, n, None, None, true, None)),
                }
            }
        });
        let mut stored: Vec<_> = futures::future::try_join_all(stores).await?;
        let mut uncommitted = write::Uncommitted::none(self.inner.clone());
        for piece in &mut stored {
            if let Some(u) = piece.5.take() {
                uncommitted.absorb(u);
            }
        }
        self.seal().await?;
        let epoch = self.epoch();
        let entries = stored
            .iter()
            .map(|(o, n, _, d, _, _)| JournalEntry {
                epoch,
                offset: *o,
                len: *n,
                data: d.clone(),
            })
            .collect();
        let replicated = stored.iter().all(|s| s.4);
        let name = self.volume.name.clone();
        // Settled entries are trusted by a holder attaching after a crash.
        let append = ObjectCommand::Volume(if replicated {
            VolumeCommand::AppendSettled {
                name,
                epoch,
                entries,
            }
        } else {
            VolumeCommand::Append {
                name,
                epoch,
                entries,
            }
        });
        let first_seq = self
            .commit_journal(append, Some(uncommitted), epoch)
            .await?;
        let mut extents_touched = Vec::with_capacity(stored.len());
        let merge_now = {
            let mut st = self.state.lock().expect("volume state lock");
            let seqs = first_seq..first_seq + stored.len() as u64;
            for (i, (o, n, bytes, data, piece_replicated, _)) in stored.iter().enumerate() {
                extents_touched.push(o / self.volume.extent_bytes);
                if st.known_already(first_seq + i as u64) {
                    continue;
                }
                insert_pending(
                    &mut st,
                    self.volume.extent_bytes,
                    (first_seq + i as u64, *o, *n),
                    bytes.clone(),
                    Stored::of(data, false),
                    *piece_replicated,
                );
            }
            st.learn_seqs(seqs);
            extents_touched.iter().any(|idx| {
                st.merge_wanted(
                    st.extent_journal(*idx, self.extent_len(*idx)),
                    &self.merge_limits,
                )
            })
        };
        self.commits_answered.notify_waiters();
        if merge_now {
            self.merge_wanted.notify_one();
        }
        if fua && !replicated {
            self.settle(&extents_touched).await?;
        }
        Ok(())
    }

    /// Queues a small write (inside one extent) for the next batch and waits until it is
    /// journaled; answers whether it survives m losses already.
    async fn write_batched(
        self: &Arc<Self>,
        offset: u64,
        bytes: Bytes,
    ) -> Result<bool, VolumeError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let start_writer = {
            let mut queue = self.batch.lock().expect("batch lock");
            queue.waiting.push(QueuedWrite {
                offset,
                bytes,
                done,
            });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            // A task of its own: a client that goes away must not strand the queue.
            let engine = self.clone();
            tokio::spawn(async move { engine.write_batches().await });
        }
        answer.await.map_err(|_| {
            VolumeError::Io(GatewayError::Internal("the batch writer went away".into()))
        })?
    }

    /// Writes batches while writes wait, each with everything that waited when it began.
    /// A batch's bytes are stored on the nodes while the journal commands of the batches
    /// before it are committed, and up to `BATCH_COMMITS_IN_FLIGHT` commands are in
    /// flight at once. Metadata may then apply (and answer) them in another order than
    /// they were taken, as it may two large writes in flight: the engine takes answers in
    /// any order (`insert_pending` keeps sequence order, `seqs_known_above`), and NBD
    /// orders nothing between writes in flight together. A write the client sends after
    /// an answer is taken into a batch after that answer, so its command is sent after the
    /// answered one committed; after an unknown outcome, it goes under a new epoch
    /// (`seal`).
    async fn write_batches(&self) {
        let mut guard = BatchWriterGuard {
            queue: &self.batch,
            finished: false,
        };
        let mut committing = futures::stream::FuturesUnordered::new();
        loop {
            let batch: Option<Vec<QueuedWrite>> = {
                let mut queue = self.batch.lock().expect("batch lock");
                if queue.waiting.is_empty() {
                    if committing.is_empty() {
                        queue.writing = false;
                        guard.finished = true;
                        return;
                    }
                    None
                } else {
                    let max_bytes =
                        BATCH_MAX_BYTES.min(u64::from(self.inner.config.shard_size_bytes));
                    let mut n_bytes = 0u64;
                    let n = queue
                        .waiting
                        .iter()
                        .take_while(|w| {
                            n_bytes += w.bytes.len() as u64;
                            n_bytes <= max_bytes
                        })
                        .count()
                        .max(1);
                    Some(queue.waiting.drain(..n).collect())
                }
            };
            let Some(batch) = batch else {
                // Writes that arrive meanwhile find the writer running: look again after.
                committing.next().await;
                continue;
            };
            let stored = {
                let store = self.store_batch_or_inline(&batch);
                tokio::pin!(store);
                loop {
                    tokio::select! {
                        stored = &mut store => break stored,
                        Some(()) = committing.next(), if !committing.is_empty() => {}
                    }
                }
            };
            while committing.len() >= BATCH_COMMITS_IN_FLIGHT {
                committing.next().await;
            }
            let commit: futures::future::BoxFuture<'_, ()> = Box::pin(async move {
                let result = match stored {
                    Ok(stripes) => self.commit_batch(&batch, stripes).await,
                    Err(e) => Err(e),
                };
                self.answer_batch(batch, result);
            });
            committing.push(commit);
        }
    }

    /// Answers the writes of a batch with the outcome of its journal command.
    fn answer_batch(&self, batch: Vec<QueuedWrite>, result: Result<bool, VolumeError>) {
        match result {
            Ok(replicated) => {
                for w in batch {
                    let _ = w.done.send(Ok(replicated));
                }
            }
            Err(e) => {
                warn!(volume = %self.volume.name, n_writes = batch.len(), error = %e, "journal batch failed");
                for w in batch {
                    let _ = w.done.send(Err(match &e {
                        VolumeError::Fenced => VolumeError::Fenced,
                        VolumeError::ReadOnly => VolumeError::ReadOnly,
                        VolumeError::Io(io) => {
                            VolumeError::Io(GatewayError::Internal(io.to_string()))
                        }
                    }));
                }
            }
        }
    }

    /// Stores the bytes of `batch`, one after another, as one journal stripe set.
    async fn store_batch(
        &self,
        batch: &[QueuedWrite],
    ) -> Result<(ObjectData, bool, write::Uncommitted), GatewayError> {
        let n_bytes: usize = batch.iter().map(|w| w.bytes.len()).sum();
        let mut buf = BytesMut::with_capacity(n_bytes);
        for w in batch {
            buf.extend_from_slice(&w.bytes);
        }
        store_journal(&self.inner, self.volume.policy, buf.freeze()).await
    }

    /// Whether `batch`, inline, stays within the inline journal's limit.
    fn inline_room(&self, batch: &[QueuedWrite]) -> bool {
        let n_counted: u64 = batch
            .iter()
            .map(|w| counted_journal_bytes(w.bytes.len() as u64, true))
            .sum();
        let st = self.state.lock().expect("volume state lock");
        st.inline_pending_bytes + n_counted <= MAX_INLINE_PENDING_BYTES
    }

    /// The first half of journaling `batch`: stores it as one stripe set when it has
    /// several writes and is big enough (`Some`: the stripes, whether every shard is
    /// durable, and what deletes them if no command references them), otherwise it goes
    /// inline (`None`).
    async fn store_batch_or_inline(
        &self,
        batch: &[QueuedWrite],
    ) -> Result<Option<(ObjectData, bool, write::Uncommitted)>, VolumeError> {
        if self.is_fenced() {
            return Err(VolumeError::Fenced);
        }
        let n_bytes: u64 = batch.iter().map(|w| w.bytes.len() as u64).sum();
        if batch.len() < 2 || n_bytes < BATCH_STRIPE_MIN_BYTES {
            return Ok(None);
        }
        match self.store_batch(batch).await {
            Ok(stored) => Ok(Some(stored)),
            // Nodes missing: inline entries do not need them, while the inline journal has
            // room (it keeps the volume attachable). The batches committing meanwhile
            // may take room too: the limit can be passed by `BATCH_COMMITS_IN_FLIGHT`
            // batches (1 MiB each).
            Err(e) if self.inline_room(batch) => {
                warn!(volume = %self.volume.name, error = %e, "journal batch could not be stored; inline instead");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The second half: journals `batch` with one metadata command, `AppendBatch` of the
    /// stripes `store_batch_or_inline` stored or an inline `Append`. Answers whether it
    /// survives m losses already.
    async fn commit_batch(
        &self,
        batch: &[QueuedWrite],
        stripes: Option<(ObjectData, bool, write::Uncommitted)>,
    ) -> Result<bool, VolumeError> {
        // Fenced while the batch before was committing: metadata would refuse the stale
        // epoch anyway.
        if self.is_fenced() {
            return Err(VolumeError::Fenced);
        }
        self.seal().await?;
        let epoch = self.epoch();
        let (command, stored, replicated, uncommitted) =
            if let Some((data, replicated, uncommitted)) = stripes {
                let mut writes = Vec::with_capacity(batch.len());
                let mut at = 0u64;
                for w in batch {
                    let len = w.bytes.len() as u64;
                    writes.push(BatchedWrite {
                        offset: w.offset,
                        len,
                        at,
                    });
                    at += len;
                }
                let stats = &self.inner.volume_stats;
                stats.journal_batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .journal_batched_writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let name = self.volume.name.clone();
                let command = if replicated {
                    VolumeCommand::AppendSettledBatch {
                        name,
                        epoch,
                        data,
                        writes,
                    }
                } else {
                    VolumeCommand::AppendBatch {
                        name,
                        epoch,
                        data,
                        writes,
                    }
                };
                (command, Stored::Slice, replicated, Some(uncommitted))
            } else {
                let entries = batch
                    .iter()
                    .map(|w| JournalEntry {
                        epoch,
                        offset: w.offset,
                        len: w.bytes.len() as u64,
                        data: Some(ObjectData::Inline(w.bytes.to_vec())),
                    })
                    .collect();
                let command = VolumeCommand::Append {
                    name: self.volume.name.clone(),
                    epoch,
                    entries,
                };
                (command, Stored::Inline, true, None)
            };
        let first_seq = self
            .commit_journal(ObjectCommand::Volume(command), uncommitted, epoch)
            .await?;
        let merge_now = {
            let mut st = self.state.lock().expect("volume state lock");
            let mut due = false;
            for (i, w) in batch.iter().enumerate() {
                let len = w.bytes.len() as u64;
                if st.known_already(first_seq + i as u64) {
                    continue;
                }
                insert_pending(
                    &mut st,
                    self.volume.extent_bytes,
                    (first_seq + i as u64, w.offset, len),
                    Some(w.bytes.clone()),
                    stored.clone(),
                    replicated,
                );
                let idx = w.offset / self.volume.extent_bytes;
                due |= st.merge_wanted(
                    st.extent_journal(idx, self.extent_len(idx)),
                    &self.merge_limits,
                );
            }
            st.learn_seqs(first_seq..first_seq + batch.len() as u64);
            due
        };
        self.commits_answered.notify_waiters();
        if merge_now {
            self.merge_wanted.notify_one();
        }
        Ok(replicated)
    }

    /// Makes every acknowledged write survive the loss of any m storage nodes: journal
    /// entries short of that are written again (`settle`), or their extents merged.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        if self.volume.read_only {
            return Ok(());
        }
        if self.is_fenced() {
            return Err(VolumeError::Fenced);
        }
        let unreplicated: Vec<u64> = {
            let st = self.state.lock().expect("volume state lock");
            st.pending
                .iter()
                .filter(|(_, ps)| ps.iter().any(|p| !p.replicated))
                .map(|(i, _)| *i)
                .collect()
        };
        if unreplicated.is_empty() {
            // Every entry is already safe: no need to wait for a merge in progress.
            return Ok(());
        }
        self.settle(&unreplicated).await
    }

    /// Brings every journal entry of `extents` to all its shards durable: an entry short
    /// of one (a node failed during its write; an entry replayed at attach that is not
    /// settled in metadata) is written again and its stripes swapped in place, keeping
    /// its order in the journal. When that cannot be had, or the entry is a slice of a batch, the
    /// extent is merged at full erasure-coded redundancy instead, or the call fails.
    async fn settle(&self, extents: &[u64]) -> Result<(), VolumeError> {
        for idx in extents {
            // One extent at a time, like merges: writers waiting for room and the merger
            // get their turn between extents.
            let _guard = self.merging.lock().await;
            let short: Vec<Pending> = {
                let st = self.state.lock().expect("volume state lock");
                st.pending
                    .get(idx)
                    .map(|ps| ps.iter().filter(|p| !p.replicated).cloned().collect())
                    .unwrap_or_default()
            };
            let mut all_settled = true;
            for p in short {
                let Some(bytes) = p.data.clone() else {
                    self.mark_replicated(*idx, p.seq, None);
                    continue;
                };
                if p.sliced {
                    // Batched writes are many and small: one merge of the extent settles
                    // them all, where rewriting each would cost a stripe and a commit.
                    all_settled = false;
                    continue;
                }
                let (data, replicated, uncommitted) = match store_journal(
                    &self.inner,
                    self.volume.policy,
                    bytes,
                )
                .await
                {
                    Ok(stored) => stored,
                    Err(e) => {
                        warn!(volume = %self.volume.name, extent = idx, error = %e, "journal rewrite failed; merging the extent instead");
                        all_settled = false;
                        continue;
                    }
                };
                if !replicated {
                    all_settled = false;
                    continue;
                }
                let epoch = self.epoch();
                let rewrite = ObjectCommand::Volume(VolumeCommand::Rewrite {
                    name: self.volume.name.clone(),
                    epoch,
                    seq: p.seq,
                    data: data.clone(),
                });
                let result = uncommitted.settle(self.inner.meta.execute(&rewrite)).await;
                match self.commit_result(result, epoch) {
                    // The old stripes are garbage now: a merge must adopt the new ones.
                    Ok(_) => self.mark_replicated(*idx, p.seq, Some(data)),
                    // The entry is gone from metadata, though this engine (holding the
                    // merge lock) did not merge it: a merge's answer was lost. The merge
                    // below reads the volume again first.
                    Err(VolumeError::Io(GatewayError::Meta {
                        kind: lauscha_proto::MetaErrorKind::Conflict,
                        ..
                    })) => {
                        self.note_diverged();
                        all_settled = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !all_settled && !self.merge_extent(*idx).await? {
                return Err(GatewayError::NotFullyRedundant(format!(
                    "volume {} extent {idx}",
                    self.volume.name
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Marks a journal entry as surviving m losses; `rewritten` are its new stripes.
    fn mark_replicated(&self, idx: u64, seq: u64, rewritten: Option<ObjectData>) {
        let mut st = self.state.lock().expect("volume state lock");
        if let Some(p) = st
            .pending
            .get_mut(&idx)
            .and_then(|ps| ps.iter_mut().find(|p| p.seq == seq))
        {
            p.replicated = true;
            if let Some(data) = rewritten {
                // A rewrite's stripes are the entry's own, and metadata dropped any slice.
                p.stripes = match Stored::of(&Some(data), false) {
                    Stored::Own(d) => Some(d),
                    _ => None,
                };
            }
        }
    }

    /// Waits while the journal is over a hard limit, merging (above the hard limits means
    /// over the soft ones, so the plan brings it under). Fails when merges make no room:
    /// the inline limit keeps the volume attachable, so it is passed by no more than the
    /// writes already past this check (batches in flight, `BATCH_COMMITS_IN_FLIGHT` of
    /// at most 1 MiB each, or 8 MiB as counted when a batch of 512-byte writes that could
    /// not be stored goes inline, and the large writes waiting for their commands).
    async fn wait_for_room(&self) -> Result<(), VolumeError> {
        let journal_bytes = || {
            let st = self.state.lock().expect("volume state lock");
            (st.pending_bytes, st.inline_pending_bytes)
        };
        loop {
            let before = journal_bytes();
            if before.0 <= MAX_PENDING_BYTES && before.1 <= MAX_INLINE_PENDING_BYTES {
                return Ok(());
            }
            let all_merged = self.merge_due(false).await?;
            let after = journal_bytes();
            if !all_merged && after.0 >= before.0 && after.1 >= before.1 {
                return Err(GatewayError::NotFullyRedundant(format!(
                    "volume {}: the journal is full and its extents cannot be merged at full \
                     redundancy now",
                    self.volume.name
                ))
                .into());
            }
        }
    }

    /// Merges the extents that are due (or all with `everything`), one at a time under the
    /// merge lock, so that a FLUSH waits for one merge, not a whole plan. Returns false
    /// when a merge could not write at full redundancy (the rest of the plan is left for
    /// later: nodes are missing, and the others would fail alike).
    pub async fn merge_due(&self, everything: bool) -> Result<bool, VolumeError> {
        if !everything && self.inline_over_soft_limit() {
            // Moving inline entries to the nodes costs their bytes once; merging them out
            // costs a whole extent each. Merges take over when spilling cannot be done.
            // The merge lock is taken per spill, so that FLUSH and merges get their turn.
            for _ in 0..MAX_SPILLS_AT_ONCE {
                let spilled = {
                    let _guard = self.merging.lock().await;
                    self.spill_once().await
                };
                match spilled {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(VolumeError::Fenced) => return Err(VolumeError::Fenced),
                    Err(e) => {
                        warn!(volume = %self.volume.name, error = %e, "spill failed; merging instead");
                        break;
                    }
                }
            }
        }
        let due: Vec<u64> = {
            let st = self.state.lock().expect("volume state lock");
            if everything {
                st.pending.keys().copied().collect()
            } else {
                let journal: Vec<ExtentJournal> = st
                    .pending
                    .keys()
                    .filter_map(|idx| st.extent_journal(*idx, self.extent_len(*idx)))
                    .collect();
                plan_merges(&journal, &self.merge_limits)
            }
        };
        for idx in due {
            if self.is_fenced() {
                return Err(VolumeError::Fenced);
            }
            let _guard = self.merging.lock().await;
            if !self.merge_extent(idx).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the inline journal is over its soft limit.
    fn inline_over_soft_limit(&self) -> bool {
        let st = self.state.lock().expect("volume state lock");
        st.inline_pending_bytes > self.merge_limits.soft_inline_bytes
    }

    /// One spill (under the merge lock): moves the oldest inline journal entries, up to one
    /// batch's bytes, into one stripe set on the storage nodes (`VolumeCommand::Spill`).
    /// The entries keep their sequence numbers and stay in the journal, as slices (like a
    /// batch's), so nothing is merged for them. Answers whether more is to be spilled:
    /// false once the inline journal is at three quarters of its soft limit, or when this
    /// spill could not be had.
    ///
    /// It cannot be had when the bytes cannot be stored with every shard durable (an
    /// inline entry survives m losses, so a spilled one must too; the stripes are deleted,
    /// and no spill is tried for [`SPILL_RETRY_AFTER`]), or when metadata's journal is not
    /// this engine's (a lost answer: `resync` before the next merge). Merges relieve the
    /// inline limit then, as without spills.
    async fn spill_once(&self) -> Result<bool, VolumeError> {
        let target = self.merge_limits.soft_inline_bytes / 4 * 3;
        let max_bytes = BATCH_MAX_BYTES.min(u64::from(self.inner.config.shard_size_bytes));
        if self
            .spill_retry_at
            .lock()
            .expect("spill retry lock")
            .is_some_and(|at| Instant::now() < at)
        {
            return Ok(false);
        }
        // (extent, sequence number, bytes) of the oldest inline entries.
        let chosen: Vec<(u64, u64, Bytes)> = {
            let st = self.state.lock().expect("volume state lock");
            if st.inline_pending_bytes <= target || st.resynced < st.resync_wanted {
                return Ok(false);
            }
            let mut inline: Vec<(u64, u64, Bytes)> = st
                .pending
                .iter()
                .flat_map(|(idx, ps)| ps.iter().map(move |p| (*idx, p)))
                .filter_map(|(idx, p)| match (&p.data, p.inline) {
                    (Some(d), true) => Some((idx, p.seq, d.clone())),
                    _ => None,
                })
                .collect();
            inline.sort_unstable_by_key(|(_, seq, _)| *seq);
            let mut n_bytes = 0u64;
            let n = inline
                .iter()
                .take_while(|(_, _, d)| {
                    n_bytes += d.len() as u64;
                    n_bytes <= max_bytes
                })
                .count()
                .max(1);
            inline.truncate(n);
            inline
        };
        if chosen.is_empty() {
            return Ok(false);
        }
        let n_bytes: usize = chosen.iter().map(|(_, _, d)| d.len()).sum();
        let mut buf = BytesMut::with_capacity(n_bytes);
        let mut entries = Vec::with_capacity(chosen.len());
        for (_, seq, d) in &chosen {
            entries.push(SpilledEntry {
                seq: *seq,
                at: buf.len() as u64,
            });
            buf.extend_from_slice(d);
        }
        let stored = store_journal(&self.inner, self.volume.policy, buf.freeze()).await;
        let (data, uncommitted) = match stored {
            Ok((data, true, uncommitted)) => (data, uncommitted),
            // Dropping the `Uncommitted` of a short copy deletes what was written.
            Ok((_, false, _)) | Err(_) => {
                warn!(volume = %self.volume.name, n_entries = chosen.len(), error = ?stored.err(), "inline journal entries could not be spilled at full redundancy; merging instead");
                *self.spill_retry_at.lock().expect("spill retry lock") =
                    Some(Instant::now() + SPILL_RETRY_AFTER);
                return Ok(false);
            }
        };
        let epoch = self.epoch();
        let spill = ObjectCommand::Volume(VolumeCommand::Spill {
            name: self.volume.name.clone(),
            epoch,
            data,
            entries,
        });
        let mut in_flight = CommandInFlight {
            engine: self,
            answered: false,
        };
        let result = uncommitted.settle(self.inner.meta.execute(&spill)).await;
        in_flight.answered = true;
        match self.commit_result(result, epoch) {
            Ok(_) => {}
            Err(VolumeError::Io(GatewayError::Meta {
                kind: lauscha_proto::MetaErrorKind::Conflict,
                message,
            })) => {
                // An entry merged or spilled by a command whose answer was lost.
                warn!(volume = %self.volume.name, %message, "spill refused; reading the volume again");
                self.note_diverged();
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let stats = &self.inner.volume_stats;
        stats.journal_spills.fetch_add(1, Ordering::Relaxed);
        stats
            .journal_spilled_entries
            .fetch_add(chosen.len() as u64, Ordering::Relaxed);
        let mut st = self.state.lock().expect("volume state lock");
        let mut moved = 0u64;
        for (idx, seq, _) in &chosen {
            // Under the merge lock nothing dropped them since they were chosen.
            if let Some(p) = st
                .pending
                .get_mut(idx)
                .and_then(|ps| ps.iter_mut().find(|p| p.seq == *seq))
                .filter(|p| p.inline)
            {
                p.inline = false;
                p.sliced = true;
                // What it counted when it came in: a 512-byte entry counted 4 KiB.
                moved += p.counted_bytes();
            }
        }
        debug_assert!(st.inline_pending_bytes >= moved);
        st.inline_pending_bytes = st.inline_pending_bytes.saturating_sub(moved);
        Ok(st.inline_pending_bytes > target)
    }

    /// The stripes of the journal entries that tile extent `idx` (`tiling`), as its new
    /// version, when each is stored at the volume's own policy and survives m losses, and
    /// the extent is whole (a shorter last extent is padded when it is rewritten, and a
    /// resize may lengthen it later).
    fn adoptable(&self, pending: &[Pending], extent_len: u64) -> Option<ObjectData> {
        let policy = self.volume.policy;
        if extent_len != self.volume.extent_bytes {
            return None;
        }
        let ranges: Vec<(u64, u64)> = pending.iter().map(|p| (p.within, p.len)).collect();
        let mut stripes = Vec::new();
        for i in tiling(extent_len, &ranges)? {
            match (&pending[i].stripes, pending[i].replicated) {
                (
                    Some(ObjectData::Striped {
                        n_data_shards,
                        n_parity_shards,
                        stripes: own,
                    }),
                    true,
                ) if *n_data_shards == policy.n_data_shards
                    && *n_parity_shards == policy.n_parity_shards =>
                {
                    stripes.extend(own.iter().cloned());
                }
                _ => return None,
            }
        }
        Some(ObjectData::Striped {
            n_data_shards: policy.n_data_shards,
            n_parity_shards: policy.n_parity_shards,
            stripes,
        })
    }

    /// Folds an extent's journal entries into a new extent version (under the merge
    /// lock). Returns false when the new version could not be written at full redundancy
    /// (nothing changed then).
    async fn merge_extent(&self, idx: u64) -> Result<bool, VolumeError> {
        match self.merge_extent_once(idx).await {
            Err(VolumeError::Io(GatewayError::Meta {
                kind: lauscha_proto::MetaErrorKind::Conflict,
                message,
            })) => {
                // Metadata's journal is not what this engine holds (an entry merged is
                // gone): a merge's answer was lost. Read the volume again and try once more.
                warn!(volume = %self.volume.name, extent = idx, %message, "merge refused; reading the volume again");
                self.note_diverged();
                self.merge_extent_once(idx).await
            }
            other => other,
        }
    }

    async fn merge_extent_once(&self, idx: u64) -> Result<bool, VolumeError> {
        let ext = self.volume.extent_bytes;
        // The entries merged must be all that metadata has for the extent below the
        // newest of them: one left behind would be replayed over them at the next attach.
        // So the merge takes only entries below `seqs_known_below`, and first waits until
        // that passes the newest entry there is now: the gaps below it are commands
        // committed and not yet answered (each answered, or of unknown outcome, within
        // the metadata client's deadline) or of unknown outcome (`resync` fills them).
        let newest = {
            let st = self.state.lock().expect("volume state lock");
            st.pending.get(&idx).and_then(|ps| ps.last()).map(|p| p.seq)
        };
        let Some(newest) = newest else {
            return Ok(true);
        };
        let mut deadline = tokio::time::Instant::now() + GAP_WAIT_MAX;
        let (base, pending) = loop {
            let answered = self.commits_answered.notified();
            tokio::pin!(answered);
            // Registered before the check: an answer after it still wakes this loop.
            answered.as_mut().enable();
            let resync = {
                let st = self.state.lock().expect("volume state lock");
                if st.resynced < st.resync_wanted {
                    true
                } else if st.seqs_known_below > newest {
                    let below = st.seqs_known_below;
                    let entries: Option<Vec<Pending>> = st
                        .pending
                        .get(&idx)
                        .map(|ps| ps.iter().filter(|p| p.seq < below).cloned().collect());
                    break (st.extents.get(&idx).cloned(), entries);
                } else {
                    false
                }
            };
            if resync {
                self.resync().await?;
                deadline = tokio::time::Instant::now() + GAP_WAIT_MAX;
            } else if tokio::time::timeout_at(deadline, answered).await.is_err() {
                // Every command is answered or fails within the metadata client's
                // deadline; a gap that outlives that is read from metadata instead.
                warn!(volume = %self.volume.name, extent = idx, newest, "a journal gap did not close; reading the volume again");
                self.note_diverged();
            }
        };
        let Some(pending) = pending.filter(|p| !p.is_empty()) else {
            return Ok(true);
        };
        let extent_len = self.extent_len(idx);
        let (adopted, data, uncommitted) =
            if let Some(stripes) = self.adoptable(&pending, extent_len) {
                // Nothing to write: the journal's own stripes become the extent.
                (true, Some(stripes), None)
            } else {
                // Entries that cover the extent whole replace every byte of it: nothing to read.
                let covered = covers(extent_len, pending.iter().map(|p| (p.within, p.len)));
                let mut buf = match &base {
                    Some(data) if !covered => {
                        let bytes = match read_data(&self.inner, data, ext, 0..extent_len).await {
                            Ok(bytes) => bytes,
                            // The merge lock is held: no merge changed the extent since the
                            // entries were taken, so they lay over a moved copy of the
                            // same version (or one a lost-answer merge made of them).
                            Err(e) => match self.refresh_extents(idx, &e).await? {
                                Some(now) if now != *data => {
                                    read_data(&self.inner, &now, ext, 0..extent_len).await?
                                }
                                Some(_) => return Err(e.into()),
                                None => Bytes::from(vec![0u8; extent_len as usize]),
                            },
                        };
                        BytesMut::from(&bytes[..])
                    }
                    _ => BytesMut::zeroed(extent_len as usize),
                };
                for p in &pending {
                    overlay(&mut buf, 0, p);
                }
                buf.resize(ext as usize, 0);
                if buf.iter().all(|b| *b == 0) {
                    (false, None, None)
                } else {
                    let (data, complete, uncommitted) =
                        store(&self.inner, self.volume.policy, buf.freeze()).await?;
                    if !complete {
                        // Dropping `uncommitted` deletes what was written; the journal stays.
                        return Ok(false);
                    }
                    (false, Some(data), Some(uncommitted))
                }
            };
        let merged: Vec<u64> = {
            let mut seqs: Vec<u64> = pending.iter().map(|p| p.seq).collect();
            seqs.dedup();
            seqs
        };
        let epoch = self.epoch();
        let merge = ObjectCommand::Volume(VolumeCommand::Merge {
            name: self.volume.name.clone(),
            epoch,
            extent: idx,
            data: data.clone(),
            merged: merged.clone(),
        });
        let commit = self.inner.meta.execute(&merge);
        let result = match uncommitted {
            Some(u) => u.settle(commit).await,
            None => commit.await,
        };
        self.commit_result(result, epoch)?;
        let stats = &self.inner.volume_stats;
        let counter = if adopted {
            &stats.merges_adopted
        } else {
            &stats.merges_rewritten
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("volume state lock");
        match data {
            Some(d) => {
                st.extents.insert(idx, d);
            }
            None => {
                st.extents.remove(&idx);
            }
        }
        st.drop_pending([idx], |p| merged.contains(&p.seq));
        Ok(true)
    }
}

async fn volume_state(inner: &Inner, name: &str) -> Result<VolumeState, GatewayError> {
    match inner
        .meta
        .query(&MetaQuery::VolumeState {
            name: name.to_string(),
        })
        .await?
    {
        MetaQueryReply::VolumeState(Some(s)) => Ok(s),
        MetaQueryReply::VolumeState(None) => Err(GatewayError::Meta {
            kind: lauscha_proto::MetaErrorKind::NoSuchVolume,
            message: format!("volume {name} does not exist"),
        }),
        other => Err(GatewayError::Internal(format!(
            "metadata answered {other:?}"
        ))),
    }
}

/// How a journal entry's bytes are kept, as far as the journal limits and merges care.
#[derive(Clone, Debug)]
enum Stored {
    /// In its metadata record (counts against the inline limit).
    Inline,
    /// Stripes of its own, all of them its bytes: a merge may adopt them.
    Own(ObjectData),
    /// A slice of a batch's stripes (shared with the batch's other entries).
    Slice,
    /// Zeros: nothing stored.
    Zeros,
}

impl Stored {
    /// How an entry with `data` is kept; `sliced`: it has a slice record (a batch).
    fn of(data: &Option<ObjectData>, sliced: bool) -> Stored {
        match data {
            Some(ObjectData::Inline(_)) => Stored::Inline,
            Some(ObjectData::Striped { .. }) if sliced => Stored::Slice,
            Some(d @ ObjectData::Striped { .. }) => Stored::Own(d.clone()),
            None => Stored::Zeros,
        }
    }
}

/// A journal entry read back from metadata (and the nodes) by this engine.
struct LoadedEntry {
    seq: u64,
    offset: u64,
    len: u64,
    data: Option<Bytes>,
    stored: Stored,
    /// Recorded as settled (`VolumeState::settled`).
    settled: bool,
}

impl LoadedEntry {
    /// Adds it to the pending lists. An inline entry is in Raft, committed on a majority
    /// of voters; a settled one had every shard durable when it was recorded, as its
    /// writer knew then. Whether every shard of another stored one was ever durable is
    /// unknown: it counts as short, so that the next FLUSH or merge settles it.
    fn insert(self, st: &mut EngineState, extent_bytes: u64) {
        let replicated = self.settled || matches!(self.stored, Stored::Inline);
        insert_pending(
            st,
            extent_bytes,
            (self.seq, self.offset, self.len),
            self.data,
            self.stored,
            replicated,
        );
    }
}

/// Records journal entry `(seq, offset, len)` in the per-extent pending lists: its bytes
/// (`None`: zeros), how it is stored, and whether that survives m losses.
fn insert_pending(
    st: &mut EngineState,
    extent_bytes: u64,
    (seq, offset, len): (u64, u64, u64),
    data: Option<Bytes>,
    stored: Stored,
    replicated: bool,
) {
    let inline = matches!(stored, Stored::Inline);
    let sliced = matches!(stored, Stored::Slice);
    let pieces = extents_of(offset, len, extent_bytes);
    // Stripes belong to a piece only when the entry is that one piece (as the write path
    // makes them); an entry across extents could not be adopted by one of them.
    let stripes = match stored {
        Stored::Own(d) if pieces.len() == 1 => Some(d),
        _ => None,
    };
    let mut consumed = 0u64;
    for (idx, within, n) in pieces {
        let slice = data
            .as_ref()
            .map(|d| d.slice(consumed as usize..(consumed + n) as usize));
        consumed += n;
        // In sequence order, as the journal is replayed at attach and copied by snapshots:
        // two overlapping writes in flight at once may be answered in the other order.
        let list = st.pending.entry(idx).or_default();
        let at = list.partition_point(|p| p.seq < seq);
        if list.get(at).is_some_and(|p| p.seq == seq) {
            // Never expected: the write paths skip what `resync` took
            // (`EngineState::known_already`), and each entry is inserted once. Counting it
            // twice would skew the journal's limits.
            debug_assert!(false, "journal entry {seq} inserted twice");
            continue;
        }
        let pending = Pending {
            seq,
            within,
            len: n,
            data: slice,
            replicated,
            inline,
            sliced,
            stripes: stripes.clone(),
            since: Instant::now(),
        };
        st.pending_bytes += pending.counted_bytes();
        if inline {
            st.inline_pending_bytes += pending.counted_bytes();
        }
        list.insert(at, pending);
    }
}

/// Lays a pending write over `buf`, which holds the extent's bytes from `buf_start`.
fn overlay(buf: &mut BytesMut, buf_start: u64, p: &Pending) {
    let buf_end = buf_start + buf.len() as u64;
    let (start, end) = (p.within.max(buf_start), (p.within + p.len).min(buf_end));
    if start >= end {
        return;
    }
    let dst = &mut buf[(start - buf_start) as usize..(end - buf_start) as usize];
    match &p.data {
        Some(d) => dst.copy_from_slice(&d[(start - p.within) as usize..(end - p.within) as usize]),
        None => dst.fill(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64, within: u64, data: Option<&[u8]>, len: u64) -> Pending {
        Pending {
            seq,
            within,
            len,
            data: data.map(Bytes::copy_from_slice),
            replicated: true,
            inline: true,
            sliced: false,
            stripes: None,
            since: Instant::now(),
        }
    }

    #[test]
    fn later_entries_win_and_zeros_clear() {
        let mut buf = BytesMut::from(&[9u8; 8][..]);
        overlay(&mut buf, 4, &pending(1, 2, Some(b"abcd"), 4)); // covers 4..6 of buf's 4..12
        assert_eq!(&buf[..], b"cd\x09\x09\x09\x09\x09\x09");
        overlay(&mut buf, 4, &pending(2, 5, None, 2));
        assert_eq!(&buf[..], b"c\0\0\x09\x09\x09\x09\x09");
        overlay(&mut buf, 4, &pending(3, 100, Some(b"zz"), 2));
        assert_eq!(&buf[..], b"c\0\0\x09\x09\x09\x09\x09", "outside: untouched");
    }

    proptest::proptest! {
        /// Commands answered in any order, some only found by a resync: the mark is
        /// always the first sequence number not known, and nothing below it is unknown.
        #[test]
        fn the_known_mark_is_the_first_gap(
            order in proptest::collection::vec(0u64..64, 0..64),
            resync_at in proptest::option::of((0usize..64, 0u64..64)),
        ) {
            let mut st = EngineState::default();
            st.learn_seqs_below(1); // attach: an empty journal, next_seq 1
            let mut known = std::collections::BTreeSet::new();
            for (i, seq) in order.iter().map(|s| s + 1).enumerate() {
                if let Some((at, next_seq)) = resync_at
                    && at == i
                {
                    st.learn_seqs_below(next_seq + 1);
                    known.extend(1..next_seq + 1);
                }
                st.learn_seqs(seq..seq + 1);
                known.insert(seq);
                let first_gap = (1..).find(|s| !known.contains(s)).unwrap();
                proptest::prop_assert_eq!(st.seqs_known_below, first_gap);
                for s in 1..80 {
                    proptest::prop_assert_eq!(st.known_already(s), known.contains(&s), "seq {}", s);
                }
            }
        }
    }

    #[test]
    fn a_write_across_extents_is_split_in_order() {
        let mut st = EngineState::default();
        insert_pending(
            &mut st,
            8,
            (7, 6, 4),
            Some(Bytes::from_static(b"WXYZ")),
            Stored::Inline,
            true,
        );
        assert_eq!(st.pending[&0][0].within, 6);
        assert_eq!(st.pending[&0][0].data.as_deref(), Some(&b"WX"[..]));
        assert_eq!(st.pending[&1][0].within, 0);
        assert_eq!(st.pending[&1][0].data.as_deref(), Some(&b"YZ"[..]));
        // Two entries, each counted as a block at least.
        let block = u64::from(VOLUME_BLOCK_BYTES);
        assert_eq!(st.pending_bytes, 2 * block);
        assert_eq!(st.inline_pending_bytes, 2 * block);
    }

    /// Zeros keep no bytes in memory, so the journal's limits count a block for each (an
    /// entry per extent), not their length: a whole-disk discard must not make the writes
    /// after it wait for merges. Writes smaller than a block count a block too, so that
    /// neither can pile up entries beyond what an attach reads in one message.
    #[test]
    fn every_entry_counts_one_block_at_least_against_the_journal_limits() {
        let mut st = EngineState::default();
        let extent_bytes = 4 << 20;
        insert_pending(
            &mut st,
            extent_bytes,
            (1, 0, 1 << 30),
            None,
            Stored::Zeros,
            true,
        );
        insert_pending(
            &mut st,
            extent_bytes,
            (2, 4096, 512),
            Some(Bytes::from(vec![7; 512])),
            Stored::Inline,
            true,
        );
        insert_pending(
            &mut st,
            extent_bytes,
            (3, 8192, 8192),
            Some(Bytes::from(vec![8; 8192])),
            Stored::Inline,
            true,
        );
        assert_eq!(st.pending.len(), 256);
        let block = u64::from(VOLUME_BLOCK_BYTES);
        assert_eq!(st.pending_bytes, 256 * block + block + 8192);
        assert_eq!(st.inline_pending_bytes, block + 8192);
        assert_eq!(
            st.extent_journal(0, extent_bytes).unwrap().bytes,
            block + block + 8192
        );
        assert_eq!(st.extent_journal(1, extent_bytes).unwrap().bytes, block);
        st.drop_pending(0..256, |_| true);
        assert_eq!(st.pending_bytes, 0);
        assert_eq!(st.inline_pending_bytes, 0);
    }
}
