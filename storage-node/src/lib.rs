//! The storage node: one disk's shards, kept durable and checked, served over gRPC.
//!
//! Architecture Invariant: a shard is immutable and never visible half-written. A large
//! one is streamed into a temporary file, checked against the digest the writer declared,
//! fsync'd, linked into place (which fails if the id exists) and the directory fsync'd; a
//! small one (up to 256 KiB, with segments on) is checked in memory and appended as one
//! record to a segment file, synced with the records committed alongside (segment.rs).
//! Only then is the write acknowledged. Every read verifies each block it returns against its blake3,
//! except the two a reader checks itself on the way (`GetShard` streams, which the gateway
//! checks block by block against the block table, and that table against metadata's
//! digest; verified slices, whose proof is computed in the pass that checks the block):
//! hashing every byte twice was a tenth of the CPU of a large read. A reader that finds
//! a bad block asks the node to `verify` the shard, which quarantines it.
//!
//! Architecture Invariant: the node knows nothing of objects, buckets or other nodes. It is
//! called; it calls nobody (except to register itself with metadata at start-up, which the
//! binary does).

mod disk;
mod error;
mod format;
mod memory;
mod scrub;
mod segment;
mod service;
pub mod testing;

use std::future::Future;

use bytes::Bytes;
use lauscha_core::ShardId;
use lauscha_core::checksum::BlockHash;

pub use disk::{DiskOptions, DiskShardStore};
pub use error::ShardError;
pub use memory::MemShardStore;
pub use scrub::{ScrubConfig, ScrubStats, Scrubber};
pub use service::ShardServer;

/// Largest shard a node accepts, in bytes. Stripes use 1 MiB shards by default; this bound
/// only keeps a broken or hostile writer from filling the disk through one request.
pub const MAX_SHARD_BYTES: u64 = 64 << 20;

/// A shard's header as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// Length of the shard.
    pub shard_len_bytes: u64,
    /// blake3 of every block, in order.
    pub block_hashes: Vec<BlockHash>,
}

/// The blocks an open of `[offset, offset + len_bytes)` of a shard of `shard_len_bytes`
/// reads (`0, 0`: the whole shard), or the error every store gives for a range outside it.
pub(crate) fn blocks_to_read(
    id: lauscha_core::ShardId,
    shard_len_bytes: u64,
    offset: u64,
    len_bytes: u64,
) -> Result<std::ops::Range<u64>, ShardError> {
    if offset == 0 && len_bytes == 0 {
        return Ok(0..lauscha_core::checksum::n_blocks(shard_len_bytes));
    }
    if offset
        .checked_add(len_bytes)
        .is_none_or(|end| end > shard_len_bytes)
    {
        return Err(ShardError::InvalidRequest(format!(
            "range {offset}+{len_bytes} outside shard {id} of {shard_len_bytes} bytes"
        )));
    }
    Ok(lauscha_core::checksum::covering_blocks(offset, len_bytes))
}

/// Usage numbers of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Shards held.
    pub n_shards: u64,
    /// Bytes of shard data held (headers not counted).
    pub used_bytes: u64,
}

/// Where shards live. One test suite ([`testing::check_shard_store`]) runs against every
/// implementation.
pub trait ShardStore: Send + Sync + 'static {
    /// The writer a [`ShardStore::create`] returns.
    type Writer: ShardWriter;
    /// The reader a [`ShardStore::open`] returns.
    type Reader: BlockReader;

    /// Starts writing a shard of `len_bytes` whose content must hash to `digest`.
    /// Fails with `AlreadyExists` if the id is taken: shards are never overwritten.
    fn create(
        &self,
        id: ShardId,
        len_bytes: u64,
        digest: lauscha_core::ShardDigest,
    ) -> impl Future<Output = Result<Self::Writer, ShardError>> + Send;

    /// As [`ShardStore::create`], with the block hashes `digest` was computed from, which
    /// the writer computed from the very buffer it hands over, in this process
    /// (`LocalShardWrites`). A store may take them instead of hashing the bytes again,
    /// once they check out against `digest` (`InvalidRequest` if not). Every read still
    /// checks each block against its hash, so bytes that do not match them are never
    /// served. By default the store hashes the bytes as `create` does.
    fn create_prehashed(
        &self,
        id: ShardId,
        len_bytes: u64,
        digest: lauscha_core::ShardDigest,
        block_hashes: std::sync::Arc<[lauscha_core::checksum::BlockHash]>,
    ) -> impl Future<Output = Result<Self::Writer, ShardError>> + Send {
        let _ = block_hashes;
        self.create(id, len_bytes, digest)
    }

    /// Opens the blocks covering `[offset, offset + len_bytes)` of a shard for reading;
    /// `len_bytes == 0` with `offset == 0` means the whole shard.
    fn open(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> impl Future<Output = Result<Self::Reader, ShardError>> + Send;

    /// As [`ShardStore::open`], but the blocks are *not checked against their hashes*
    /// (the header's block table is, against the digest). Only for a reader that checks
    /// every block itself: the gateway does, against the block table it checks against
    /// metadata's digest.
    fn open_unchecked(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> impl Future<Output = Result<Self::Reader, ShardError>> + Send;
    /// Reads block `block_idx` of a shard *without checking it against its hash*, with
    /// the shard's header (its block table checked against the digest). Only for a
    /// caller that hashes the block itself on the way: a verified slice checks the block
    /// in the pass that computes its proof, instead of hashing it twice.
    fn read_block_unchecked(
        &self,
        id: ShardId,
        block_idx: u64,
    ) -> impl Future<Output = Result<(ShardHeader, Bytes), ShardError>> + Send;

    /// Deletes a shard; returns whether it existed.
    fn delete(&self, id: ShardId) -> impl Future<Output = Result<bool, ShardError>> + Send;

    /// How much the store holds.
    fn usage(&self) -> StoreUsage;

    /// Up to `limit` shards after `after` (or from the first), in id order.
    fn list(
        &self,
        after: Option<ShardId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ShardEntry>, ShardError>> + Send;

    /// Reads the whole shard and checks every block against the digest.
    fn verify(&self, id: ShardId) -> impl Future<Output = Result<(), ShardError>> + Send;

    /// Moves a corrupt shard out of service (kept aside for inspection, never served
    /// again); returns whether it did. A shard that checks out is left in service: callers
    /// quarantine what they found corrupt a moment ago, and the shard may have been
    /// deleted and rebuilt since (repair answering another reader's report), a good copy
    /// that must not be taken out in its place. Both kinds are taken out exactly: a
    /// segment record by its position, a shard file by the inode that was checked.
    fn quarantine(&self, id: ShardId) -> impl Future<Output = Result<bool, ShardError>> + Send;

    /// As [`ShardStore::quarantine`], for a shard the caller could not read: it is moved
    /// out also when the store's own read of it fails again as unreadable
    /// ([`ShardError::is_unreadable`]), not only when it is corrupt. Only for a caller
    /// whose policy limits what a passing fault of the whole disk can take out (the
    /// scrubber's), since a disk that fails every read for a minute would otherwise
    /// empty itself. By default the same as `quarantine`.
    fn quarantine_unreadable(
        &self,
        id: ShardId,
    ) -> impl Future<Output = Result<bool, ShardError>> + Send {
        self.quarantine(id)
    }

    /// Free bytes on the store's filesystem (`u64::MAX` when it has no such limit).
    fn free_bytes(&self) -> u64;
}

/// A shard in a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    /// Its id.
    pub id: ShardId,
    /// Bytes it takes (file size, header included).
    pub len_bytes: u64,
    /// When it was written, Unix seconds.
    pub modified_unix_s: u64,
}

/// Receives a shard's bytes. Dropping a writer without [`ShardWriter::commit`] abandons the
/// shard: nothing becomes visible.
pub trait ShardWriter: Send + 'static {
    /// Appends bytes.
    fn write(&mut self, bytes: Bytes) -> impl Future<Output = Result<(), ShardError>> + Send;

    /// Checks length and digest, makes the shard durable and visible.
    fn commit(self) -> impl Future<Output = Result<(), ShardError>> + Send;
}

/// Yields blocks of a shard, verified unless opened with [`ShardStore::open_unchecked`].
pub trait BlockReader: Send + 'static {
    /// The shard's header.
    fn header(&self) -> &ShardHeader;

    /// Index of the first block [`BlockReader::next_block`] returns.
    fn first_block_idx(&self) -> u64;

    /// The next block (verified, unless opened unchecked); `None` past the last block of
    /// the requested range.
    fn next_block(&mut self) -> impl Future<Output = Option<Result<Bytes, ShardError>>> + Send;

    /// The next block, or the end, if either is known without reading the disk (a block
    /// read ahead, as a small read's are when it is opened); otherwise
    /// [`Ready::NotYet`], and only [`BlockReader::next_block`] can tell. What it returns
    /// is taken from the reader as `next_block` would have returned it.
    fn next_ready(&mut self) -> Ready {
        Ready::NotYet
    }
}

/// What [`BlockReader::next_ready`] has without reading the disk.
#[derive(Debug)]
pub enum Ready {
    /// The next block (or the error that ends the reader).
    Block(Result<Bytes, ShardError>),
    /// Past the last block of the range.
    End,
    /// The next block must be read: call [`BlockReader::next_block`].
    NotYet,
}
