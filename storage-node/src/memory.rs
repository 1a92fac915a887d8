//! Shards in memory: for tests of the layers above, and to keep the [`ShardStore`] contract
//! honest (the same suite runs against this and the disk store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lauscha_core::checksum::{BlockHash, SHARD_BLOCK_BYTES, block_len_bytes};
use lauscha_core::{ShardDigest, ShardHasher, ShardId};

use crate::{
    BlockReader, MAX_SHARD_BYTES, Ready, ShardEntry, ShardError, ShardHeader, ShardStore,
    ShardWriter, StoreUsage,
};

#[derive(Debug)]
struct StoredShard {
    data: Vec<u8>,
    block_hashes: Vec<BlockHash>,
}

type Shards = Arc<Mutex<HashMap<ShardId, Arc<StoredShard>>>>;

/// A [`ShardStore`] in memory.
#[derive(Clone, Debug, Default)]
pub struct MemShardStore {
    shards: Shards,
}

impl MemShardStore {
    /// An empty store.
    pub fn new() -> MemShardStore {
        MemShardStore::default()
    }

    fn open_reader(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
        checked: bool,
    ) -> Result<MemBlockReader, ShardError> {
        let shard = self.stored(id)?;
        let shard_len_bytes = shard.data.len() as u64;
        let blocks = crate::blocks_to_read(id, shard_len_bytes, offset, len_bytes)?;
        Ok(MemBlockReader {
            id,
            header: ShardHeader {
                shard_len_bytes,
                block_hashes: shard.block_hashes.clone(),
            },
            shard,
            first_block_idx: blocks.start,
            next_block_idx: blocks.start,
            end_block_idx: blocks.end,
            checked,
        })
    }

    fn stored(&self, id: ShardId) -> Result<Arc<StoredShard>, ShardError> {
        self.shards
            .lock()
            .expect("lock")
            .get(&id)
            .cloned()
            .ok_or(ShardError::NotFound(id))
    }

    /// Flips a bit of a stored shard, as bit rot would.
    pub fn corrupt(&self, id: ShardId, byte_offset: usize) {
        let mut shards = self.shards.lock().expect("lock");
        let shard = shards.get_mut(&id).expect("shard exists");
        let mut data = shard.data.clone();
        data[byte_offset] ^= 1;
        *shard = Arc::new(StoredShard {
            data,
            block_hashes: shard.block_hashes.clone(),
        });
    }
}

impl ShardStore for MemShardStore {
    type Writer = MemShardWriter;
    type Reader = MemBlockReader;

    async fn create(
        &self,
        id: ShardId,
        len_bytes: u64,
        digest: ShardDigest,
    ) -> Result<MemShardWriter, ShardError> {
        if len_bytes > MAX_SHARD_BYTES {
            return Err(ShardError::InvalidRequest(format!(
                "shard of {len_bytes} bytes exceeds the {MAX_SHARD_BYTES}-byte limit"
            )));
        }
        if self.shards.lock().expect("lock").contains_key(&id) {
            return Err(ShardError::AlreadyExists(id));
        }
        Ok(MemShardWriter {
            shards: self.shards.clone(),
            id,
            declared_len_bytes: len_bytes,
            declared_digest: digest,
            data: Vec::new(),
        })
    }

    async fn open(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> Result<MemBlockReader, ShardError> {
        self.open_reader(id, offset, len_bytes, true)
    }

    async fn open_unchecked(
        &self,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> Result<MemBlockReader, ShardError> {
        self.open_reader(id, offset, len_bytes, false)
    }

    async fn read_block_unchecked(
        &self,
        id: ShardId,
        block_idx: u64,
    ) -> Result<(ShardHeader, Bytes), ShardError> {
        let shard = self.stored(id)?;
        let shard_len_bytes = shard.data.len() as u64;
        if block_idx >= lauscha_core::checksum::n_blocks(shard_len_bytes) {
            return Err(ShardError::InvalidRequest(format!(
                "block {block_idx} outside shard {id} of {shard_len_bytes} bytes"
            )));
        }
        let start = block_idx * SHARD_BLOCK_BYTES;
        let end = start + block_len_bytes(shard_len_bytes, block_idx);
        Ok((
            ShardHeader {
                shard_len_bytes,
                block_hashes: shard.block_hashes.clone(),
            },
            Bytes::copy_from_slice(&shard.data[start as usize..end as usize]),
        ))
    }
    async fn delete(&self, id: ShardId) -> Result<bool, ShardError> {
        Ok(self.shards.lock().expect("lock").remove(&id).is_some())
    }

    fn usage(&self) -> StoreUsage {
        let shards = self.shards.lock().expect("lock");
        StoreUsage {
            n_shards: shards.len() as u64,
            used_bytes: shards.values().map(|s| s.data.len() as u64).sum(),
        }
    }

    async fn list(
        &self,
        after: Option<ShardId>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        let shards = self.shards.lock().expect("lock");
        let mut ids: Vec<(&ShardId, &Arc<StoredShard>)> = shards
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| **id > a))
            .collect();
        ids.sort_by_key(|(id, _)| **id);
        Ok(ids
            .into_iter()
            .take(limit)
            .map(|(id, s)| ShardEntry {
                id: *id,
                len_bytes: s.data.len() as u64,
                modified_unix_s: 0,
            })
            .collect())
    }

    async fn verify(&self, id: ShardId) -> Result<(), ShardError> {
        let mut reader = self.open(id, 0, 0).await?;
        while let Some(block) = reader.next_block().await {
            block?;
        }
        Ok(())
    }

    async fn quarantine(&self, id: ShardId) -> Result<bool, ShardError> {
        match self.verify(id).await {
            Err(ShardError::Corrupt { .. }) => {}
            Ok(()) | Err(ShardError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        Ok(self.shards.lock().expect("lock").remove(&id).is_some())
    }

    fn free_bytes(&self) -> u64 {
        u64::MAX
    }
}

/// See [`ShardWriter`].
pub struct MemShardWriter {
    shards: Shards,
    id: ShardId,
    declared_len_bytes: u64,
    declared_digest: ShardDigest,
    data: Vec<u8>,
}

impl ShardWriter for MemShardWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), ShardError> {
        if self.data.len() as u64 + bytes.len() as u64 > self.declared_len_bytes {
            return Err(ShardError::Rejected {
                id: self.id,
                reason: format!("more than the declared {} bytes", self.declared_len_bytes),
            });
        }
        self.data.extend_from_slice(&bytes);
        Ok(())
    }

    async fn commit(self) -> Result<(), ShardError> {
        if self.data.len() as u64 != self.declared_len_bytes {
            return Err(ShardError::Rejected {
                id: self.id,
                reason: format!(
                    "got {} bytes, {} declared",
                    self.data.len(),
                    self.declared_len_bytes
                ),
            });
        }
        let mut hasher = ShardHasher::new();
        hasher.update(&self.data);
        let (digest, block_hashes) = hasher.finalize();
        if digest != self.declared_digest {
            return Err(ShardError::Rejected {
                id: self.id,
                reason: "data does not match the declared digest".into(),
            });
        }
        let mut shards = self.shards.lock().expect("lock");
        if shards.contains_key(&self.id) {
            return Err(ShardError::AlreadyExists(self.id));
        }
        shards.insert(
            self.id,
            Arc::new(StoredShard {
                data: self.data,
                block_hashes,
            }),
        );
        Ok(())
    }
}

/// See [`BlockReader`].
pub struct MemBlockReader {
    id: ShardId,
    header: ShardHeader,
    shard: Arc<StoredShard>,
    first_block_idx: u64,
    next_block_idx: u64,
    end_block_idx: u64,
    /// Blocks are checked against their hashes (not when opened unchecked).
    checked: bool,
}

impl BlockReader for MemBlockReader {
    fn header(&self) -> &ShardHeader {
        &self.header
    }

    fn first_block_idx(&self) -> u64 {
        self.first_block_idx
    }

    async fn next_block(&mut self) -> Option<Result<Bytes, ShardError>> {
        match self.next_ready() {
            Ready::Block(block) => Some(block),
            Ready::End => None,
            Ready::NotYet => unreachable!("a memory store has every block at hand"),
        }
    }

    fn next_ready(&mut self) -> Ready {
        if self.next_block_idx >= self.end_block_idx {
            return Ready::End;
        }
        let block_idx = self.next_block_idx;
        self.next_block_idx += 1;
        let start = (block_idx * SHARD_BLOCK_BYTES) as usize;
        let len = block_len_bytes(self.header.shard_len_bytes, block_idx) as usize;
        let block = &self.shard.data[start..start + len];
        if self.checked
            && !lauscha_core::checksum::verify_block(
                block,
                &self.header.block_hashes[block_idx as usize],
            )
        {
            self.next_block_idx = self.end_block_idx;
            return Ready::Block(Err(ShardError::Corrupt {
                id: self.id,
                what: format!("block {block_idx}"),
            }));
        }
        Ready::Block(Ok(Bytes::copy_from_slice(block)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_shard_store, must_put};

    #[tokio::test]
    async fn memory_store_passes_the_shard_store_suite() {
        check_shard_store(&MemShardStore::new()).await;
    }

    #[tokio::test]
    async fn corruption_is_found() {
        let store = MemShardStore::new();
        let id = must_put(&store, 1, &[5u8; 1000]).await;
        store.corrupt(id, 999);
        let mut reader = store.open(id, 0, 0).await.unwrap();
        assert!(matches!(
            reader.next_block().await,
            Some(Err(ShardError::Corrupt { .. }))
        ));
    }
}
