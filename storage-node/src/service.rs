//! The gRPC face of a [`ShardStore`].

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use lauscha_core::checksum::{BlockHash, SHARD_BLOCK_BYTES};
use lauscha_core::slice_proof;
use lauscha_core::{NodeId, ShardDigest};
use lauscha_proto::storage::shard_service_server::ShardService;
use lauscha_proto::storage::{
    self as pb, DeleteShardReply, DeleteShardRequest, GetShardReply, GetShardRequest,
    NodeStatusReply, NodeStatusRequest, PutShardReply, PutShardRequest, get_shard_reply,
    put_shard_request,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lauscha_core::ShardId;

use crate::scrub::{ScrubStats, check_shard};
use crate::{BlockReader, Ready, ShardError, ShardStore, ShardWriter};

/// Blocks read ahead of the client per GetShard stream.
const READ_AHEAD_BLOCKS: usize = 16;

/// Serves a [`ShardStore`] as `lauscha.storage.v1.ShardService`.
#[derive(Clone, Debug)]
pub struct ShardServer<S> {
    node_id: NodeId,
    capacity_bytes: u64,
    store: S,
    scrub: Arc<ScrubStats>,
}

impl<S: ShardStore> ShardServer<S> {
    /// `PutShard` from its header and data messages: the gRPC handler's, and a gateway's
    /// in this process (`LocalShardWrites`).
    /// `block_hashes` only from this process (see `LocalShardWrites::put_shard`).
    async fn put_parts(
        &self,
        header: pb::PutShardHeader,
        data: impl Stream<Item = Result<Bytes, Status>>,
        block_hashes: Option<Arc<[BlockHash]>>,
    ) -> Result<(), Status> {
        let id = lauscha_proto::shard_id_from(header.id)?;
        let digest = ShardDigest::from_slice(&header.digest)
            .ok_or_else(|| Status::invalid_argument("digest must be 32 bytes"))?;
        let mut writer = match block_hashes {
            Some(hashes) => {
                self.store
                    .create_prehashed(id, header.len_bytes, digest, hashes)
                    .await?
            }
            None => self.store.create(id, header.len_bytes, digest).await?,
        };
        // An error from the client's stream (it went away) drops the writer: nothing lands.
        let mut data = std::pin::pin!(data);
        while let Some(bytes) = data.next().await {
            writer.write(bytes?).await?;
        }
        writer.commit().await?;
        Ok(())
    }
}

impl<S: ShardStore + Clone + 'static> lauscha_proto::LocalShardWrites for ShardServer<S> {
    fn put_shard(
        &self,
        header: pb::PutShardHeader,
        data: Bytes,
        block_hashes: Option<Arc<[BlockHash]>>,
    ) -> futures::future::BoxFuture<'static, Result<(), Status>> {
        let server = self.clone();
        // As the gRPC client sends it: no data message for an empty shard.
        let parts = futures::stream::iter((!data.is_empty()).then_some(Ok(data)));
        Box::pin(async move { server.put_parts(header, parts, block_hashes).await })
    }
}

impl<S> ShardServer<S> {
    fn read_failed(&self, id: ShardId, e: ShardError) -> Status {
        read_failed(self.node_id, &self.scrub, id, e)
    }
}

/// The answer to a read of `id` that failed with `e`. A shard the disk could not give
/// back is handed to the scrubber, which checks it next and takes it out of service if
/// it stays unreadable, so that repair rebuilds it.
fn read_failed(node_id: NodeId, scrub: &ScrubStats, id: ShardId, e: ShardError) -> Status {
    if e.is_unreadable() {
        warn!(node_id = %node_id, shard_id = %id, error = %e, "shard read failed: the disk did not give it back; the scrubber checks it next");
        scrub.report_unreadable(id);
    } else if matches!(e, ShardError::NotFound(_) | ShardError::InvalidRequest(_)) {
        // The reader's to handle (another copy, a bad range).
        debug!(node_id = %node_id, shard_id = %id, error = %e, "shard read failed");
    } else {
        warn!(node_id = %node_id, shard_id = %id, error = %e, "shard read failed");
    }
    Status::from(e)
}

/// Most entries one ListShards page returns.
const MAX_LIST_PAGE: usize = 10_000;

impl<S: ShardStore + Clone> ShardServer<S> {
    /// A server for `store`, reporting `capacity_bytes` and the scrubber's `scrub` numbers
    /// in its status.
    pub fn new(
        node_id: NodeId,
        capacity_bytes: u64,
        store: S,
        scrub: Arc<ScrubStats>,
    ) -> ShardServer<S> {
        ShardServer {
            node_id,
            capacity_bytes,
            store,
            scrub,
        }
    }

    /// The tonic service, with message limits raised to fit a block plus framing.
    pub fn into_service(self) -> pb::shard_service_server::ShardServiceServer<Self> {
        pb::shard_service_server::ShardServiceServer::new(self)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
    }
}

type GetShardStream = Pin<Box<dyn Stream<Item = Result<GetShardReply, Status>> + Send>>;

#[tonic::async_trait]
impl<S: ShardStore + Clone> ShardService for ShardServer<S> {
    async fn put_shard(
        &self,
        request: Request<Streaming<PutShardRequest>>,
    ) -> Result<Response<PutShardReply>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(PutShardRequest {
                part: Some(put_shard_request::Part::Header(header)),
            }) => header,
            _ => {
                return Err(Status::invalid_argument(
                    "PutShard must start with a header",
                ));
            }
        };
        let data = futures::stream::unfold(stream, |mut stream| async move {
            let part = match stream.message().await {
                Ok(Some(PutShardRequest {
                    part: Some(put_shard_request::Part::Data(bytes)),
                })) => Ok(bytes),
                Ok(None) => return None,
                Ok(Some(_)) => Err(Status::invalid_argument("PutShard sent a second header")),
                Err(e) => Err(e),
            };
            Some((part, stream))
        });
        // Over the network: the node hashes every byte it is sent.
        self.put_parts(header, data, None).await?;
        Ok(Response::new(PutShardReply {}))
    }

    type GetShardStream = GetShardStream;

    async fn get_shard(
        &self,
        request: Request<GetShardRequest>,
    ) -> Result<Response<Self::GetShardStream>, Status> {
        let request = request.into_inner();
        let id = lauscha_proto::shard_id_from(request.id)?;
        // Unchecked: the reader checks every block against the block table in the header
        // below, and that table against the digest in metadata (`ShardStore::open_unchecked`).
        let mut reader = self
            .store
            .open_unchecked(id, request.offset, request.len_bytes)
            .await
            .map_err(|e| self.read_failed(id, e))?;
        let header = GetShardReply {
            part: Some(get_shard_reply::Part::Header(pb::GetShardHeader {
                shard_len_bytes: reader.header().shard_len_bytes,
                block_hashes: reader.header().block_hashes.concat().into(),
                first_block_idx: reader.first_block_idx(),
            })),
        };
        // What the reader has already (all of a small read, read ahead when it was
        // opened) is answered as it is, without a task and a channel: their wake-ups
        // were a visible part of a 4 KiB read's cost.
        let mut replies = vec![Ok(header)];
        let block_reply = |bytes| GetShardReply {
            part: Some(get_shard_reply::Part::Block(bytes)),
        };
        let answered = loop {
            if replies.len() > READ_AHEAD_BLOCKS {
                break false;
            }
            match reader.next_ready() {
                Ready::Block(Ok(bytes)) => replies.push(Ok(block_reply(bytes))),
                Ready::Block(Err(e)) => {
                    replies.push(Err(self.read_failed(id, e)));
                    break true;
                }
                Ready::End => break true,
                Ready::NotYet => break false,
            }
        };
        if answered {
            return Ok(Response::new(Box::pin(futures::stream::iter(replies))));
        }
        // The rest is read by a task that runs ahead of the network by a few blocks, no
        // further: a slow client holds at most READ_AHEAD_BLOCKS more blocks of memory.
        let (tx, rx) = mpsc::channel::<Result<GetShardReply, Status>>(READ_AHEAD_BLOCKS);
        let (node_id, scrub) = (self.node_id, self.scrub.clone());
        tokio::spawn(async move {
            while let Some(block) = reader.next_block().await {
                let reply = block
                    .map(block_reply)
                    .map_err(|e| read_failed(node_id, &scrub, id, e));
                let last = reply.is_err();
                if tx.send(reply).await.is_err() || last {
                    return;
                }
            }
        });
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(
            futures::stream::iter(replies).chain(rest),
        )))
    }

    async fn read_shard_slice(
        &self,
        request: Request<pb::ReadShardSliceRequest>,
    ) -> Result<Response<pb::ReadShardSliceReply>, Status> {
        let request = request.into_inner();
        let id = lauscha_proto::shard_id_from(request.id)?;
        let (offset, len_bytes) = (request.offset, request.len_bytes);
        let block_idx = offset / SHARD_BLOCK_BYTES;
        let end = offset
            .checked_add(len_bytes)
            .filter(|end| len_bytes > 0 && (end - 1) / SHARD_BLOCK_BYTES == block_idx);
        let Some(end) = end else {
            return Err(Status::invalid_argument(format!(
                "a slice must lie inside one block: [{offset}, +{len_bytes})"
            )));
        };
        let (header, block) = self
            .store
            .read_block_unchecked(id, block_idx)
            .await
            .map_err(|e| self.read_failed(id, e))?;
        let block_start = block_idx * SHARD_BLOCK_BYTES;
        if end > block_start + block.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "[{offset}, +{len_bytes}) is past the shard's end"
            )));
        }
        let within = slice_proof::widened(block.len() as u64, offset - block_start, len_bytes);
        // The block is checked against its hash here, in the pass that computes the proof.
        let Some(proof) = slice_proof::checked_proof(
            &block,
            within.clone(),
            &header.block_hashes[block_idx as usize],
        ) else {
            let e = ShardError::Corrupt {
                id,
                what: format!("block {block_idx}"),
            };
            return Err(self.read_failed(id, e));
        };
        Ok(Response::new(pb::ReadShardSliceReply {
            shard_len_bytes: header.shard_len_bytes,
            block_hashes: header.block_hashes.concat().into(),
            data: block.slice(within.start as usize..within.end as usize),
            proof: proof.concat().into(),
        }))
    }

    async fn delete_shard(
        &self,
        request: Request<DeleteShardRequest>,
    ) -> Result<Response<DeleteShardReply>, Status> {
        let id = lauscha_proto::shard_id_from(request.into_inner().id)?;
        let existed = self.store.delete(id).await?;
        Ok(Response::new(DeleteShardReply { existed }))
    }

    async fn node_status(
        &self,
        _request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusReply>, Status> {
        let usage = self.store.usage();
        // statvfs can hang with its file system; on the blocking pool it keeps no worker
        // of the caller's runtime (a gateway in this process calls this on its own task),
        // and the caller's timeout still fires.
        let store = self.store.clone();
        let free_bytes = tokio::task::spawn_blocking(move || store.free_bytes())
            .await
            .map_err(|e| Status::internal(format!("free space query failed: {e}")))?;
        Ok(Response::new(NodeStatusReply {
            node_id: self.node_id.0,
            n_shards: usage.n_shards,
            used_bytes: usage.used_bytes,
            capacity_bytes: self.capacity_bytes,
            n_scrubbed: self.scrub.n_scrubbed.load(Ordering::Relaxed),
            n_scrub_passes: self.scrub.n_passes.load(Ordering::Relaxed),
            n_corrupt_found: self.scrub.n_corrupt_found.load(Ordering::Relaxed),
            n_scrub_errors: self.scrub.n_check_errors.load(Ordering::Relaxed),
            recent_corrupt: self
                .scrub
                .recent_corrupt()
                .into_iter()
                .map(Into::into)
                .collect(),
            free_bytes,
        }))
    }

    async fn list_shards(
        &self,
        request: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsReply>, Status> {
        let request = request.into_inner();
        let after = request.after.map(ShardId::try_from).transpose()?;
        let limit = (request.limit as usize).clamp(1, MAX_LIST_PAGE);
        let entries = self.store.list(after, limit + 1).await?;
        let more = entries.len() > limit;
        Ok(Response::new(pb::ListShardsReply {
            entries: entries
                .into_iter()
                .take(limit)
                .map(|e| pb::ShardEntry {
                    id: Some(e.id.into()),
                    len_bytes: e.len_bytes,
                    modified_unix_s: e.modified_unix_s,
                })
                .collect(),
            more,
        }))
    }

    async fn verify_shard(
        &self,
        request: Request<pb::VerifyShardRequest>,
    ) -> Result<Response<pb::VerifyShardReply>, Status> {
        let id = lauscha_proto::shard_id_from(request.into_inner().id)?;
        let outcome = match check_shard(&self.store, &self.scrub, self.node_id, id).await {
            Ok(true) => pb::VerifyOutcome::Ok,
            Ok(false) => pb::VerifyOutcome::CorruptQuarantined,
            Err(ShardError::NotFound(_)) => pb::VerifyOutcome::NotFound,
            Err(e) => {
                // The scrubber decides whether an unreadable shard goes out of service.
                if e.is_unreadable() {
                    self.scrub.report_unreadable(id);
                }
                return Err(e.into());
            }
        };
        Ok(Response::new(pb::VerifyShardReply {
            outcome: outcome.into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemShardStore;
    use crate::testing::{must_put, must_read};
    use lauscha_core::checksum::{BlockHash, verify_block_hashes};

    fn server(store: MemShardStore) -> ShardServer<MemShardStore> {
        ShardServer::new(NodeId(1), 1 << 30, store, Arc::new(ScrubStats::default()))
    }

    async fn slice(
        server: &ShardServer<MemShardStore>,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> Result<pb::ReadShardSliceReply, Status> {
        let request = pb::ReadShardSliceRequest {
            id: Some(id.into()),
            offset,
            len_bytes,
        };
        server
            .read_shard_slice(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn a_slice_verifies_against_the_digest_and_bad_requests_are_refused() {
        let store = MemShardStore::new();
        // Two full blocks and a short third one.
        let data: Vec<u8> = (0..2 * SHARD_BLOCK_BYTES + 5000)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let id = must_put(&store, 1, &data).await;
        let server = server(store.clone());
        let digest = ShardDigest::of(&data);
        for (offset, len) in [
            (SHARD_BLOCK_BYTES + 4096, 4096),
            (100, 10),
            (2 * SHARD_BLOCK_BYTES + 4000, 1000),
        ] {
            let reply = slice(&server, id, offset, len).await.expect("slice");
            let hashes: Vec<BlockHash> = reply
                .block_hashes
                .chunks_exact(32)
                .map(|c| c.try_into().unwrap())
                .collect();
            verify_block_hashes(reply.shard_len_bytes, &hashes, &digest).expect("table");
            let block_idx = offset / SHARD_BLOCK_BYTES;
            let block_start = block_idx * SHARD_BLOCK_BYTES;
            let block_len = lauscha_core::checksum::block_len_bytes(data.len() as u64, block_idx);
            let within = slice_proof::widened(block_len, offset - block_start, len);
            let proof: Vec<slice_proof::ChainingValue> = reply
                .proof
                .chunks_exact(32)
                .map(|c| c.try_into().unwrap())
                .collect();
            assert!(slice_proof::verify(
                block_len,
                within.clone(),
                &reply.data,
                &proof,
                &hashes[block_idx as usize]
            ));
            let at = (block_start + within.start) as usize;
            assert_eq!(&reply.data[..], &data[at..at + reply.data.len()]);
        }
        let code = |r: Result<_, Status>| r.map(|_| ()).unwrap_err().code();
        // Across two blocks, empty, past the end.
        assert_eq!(
            code(slice(&server, id, SHARD_BLOCK_BYTES - 1, 2).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(slice(&server, id, 0, 0).await),
            tonic::Code::InvalidArgument
        );
        // Lengths that would wrap past u64::MAX.
        assert_eq!(
            code(slice(&server, id, u64::MAX, 1).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(slice(&server, id, 4100, u64::MAX - 4).await),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(slice(&server, id, 2 * SHARD_BLOCK_BYTES + 4000, 2000).await),
            tonic::Code::InvalidArgument
        );
        // Bit rot in the block is found by the node, not sent.
        store.corrupt(id, (SHARD_BLOCK_BYTES + 60_000) as usize);
        assert_eq!(
            code(slice(&server, id, SHARD_BLOCK_BYTES, 4096).await),
            tonic::Code::DataLoss
        );
    }

    /// Reads `[offset, +len_bytes)` through `GetShard`: the first block index and the bytes
    /// of the blocks sent, after checking that the header comes first and once.
    async fn get_blocks<S: ShardStore + Clone>(
        server: &ShardServer<S>,
        id: ShardId,
        offset: u64,
        len_bytes: u64,
    ) -> (u64, Vec<u8>) {
        let request = pb::GetShardRequest {
            id: Some(id.into()),
            offset,
            len_bytes,
        };
        let mut replies = server
            .get_shard(Request::new(request))
            .await
            .expect("get")
            .into_inner();
        let Some(Ok(GetShardReply {
            part: Some(get_shard_reply::Part::Header(header)),
        })) = replies.next().await
        else {
            panic!("GetShard did not start with its header");
        };
        let mut read = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.expect("block").part {
                Some(get_shard_reply::Part::Block(block)) => read.extend_from_slice(&block),
                other => panic!("not a block: {other:?}"),
            }
        }
        (header.first_block_idx, read)
    }

    /// A read the store has whole when it opens it is answered from what it read ahead;
    /// a longer one streams the rest from a task. Either way every block arrives once,
    /// in order, for both stores.
    #[tokio::test]
    async fn get_shard_answers_what_was_read_ahead_and_streams_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::DiskShardStore::open(dir.path(), NodeId(1))
            .await
            .unwrap();
        let memory = MemShardStore::new();
        let block = SHARD_BLOCK_BYTES as usize;
        let data: Vec<u8> = (0..40 * block + 123)
            .map(|i| (i * 29 % 253) as u8)
            .collect();
        let disk_id = must_put(&disk, 61, &data).await;
        let memory_id = must_put(&memory, 61, &data).await;
        let (disk, memory) = (
            ShardServer::new(NodeId(1), 1 << 30, disk, Arc::new(ScrubStats::default())),
            server(memory),
        );
        let b = SHARD_BLOCK_BYTES;
        for (offset, len) in [
            (0, 0),
            (5, 100),
            (3 * b - 1, 2),
            (17 * b, 4 * b),
            (b, 30 * b),
        ] {
            let first = offset / b;
            let end = if len == 0 {
                data.len()
            } else {
                (((offset + len).div_ceil(b)) as usize * block).min(data.len())
            };
            let expected = &data[first as usize * block..end];
            for (got_first, got) in [
                get_blocks(&disk, disk_id, offset, len).await,
                get_blocks(&memory, memory_id, offset, len).await,
            ] {
                assert_eq!(got_first, first, "[{offset}, +{len})");
                assert!(got == expected, "[{offset}, +{len}): other bytes");
            }
        }
    }

    /// A generated client over `RoleChannel::Local` (how a gateway reaches the storage
    /// nodes of its own process) streams both ways and gets the handler's errors as a
    /// client over TCP would.
    #[tokio::test]
    async fn a_client_in_the_same_process_puts_and_gets_a_shard_without_the_network() {
        use lauscha_proto::LocalRoles;
        use lauscha_proto::storage::shard_service_client::ShardServiceClient;
        use lauscha_proto::storage::shard_service_server::SERVICE_NAME;

        let store = MemShardStore::new();
        let local = LocalRoles::default();
        local.register(&["127.0.0.1:7001"], server(store.clone()).into_service());
        assert!(local.channel(SERVICE_NAME, "127.0.0.1:7002").is_none());
        let channel = local
            .channel(SERVICE_NAME, "http://127.0.0.1:7001")
            .expect("registered under its address, found with or without the scheme");
        let mut client = ShardServiceClient::new(channel);

        let data: Vec<u8> = (0..3 * SHARD_BLOCK_BYTES + 10)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let id = ShardId {
            stripe_id: lauscha_core::StripeId(9),
            shard_idx: 2,
        };
        let mut messages = vec![PutShardRequest {
            part: Some(put_shard_request::Part::Header(pb::PutShardHeader {
                id: Some(id.into()),
                len_bytes: data.len() as u64,
                digest: ShardDigest::of(&data).0.to_vec().into(),
            })),
        }];
        for piece in data.chunks(100_000) {
            messages.push(PutShardRequest {
                part: Some(put_shard_request::Part::Data(
                    bytes::Bytes::copy_from_slice(piece),
                )),
            });
        }
        client
            .put_shard(futures::stream::iter(messages))
            .await
            .expect("put over the local channel");

        let mut replies = client
            .get_shard(pb::GetShardRequest {
                id: Some(id.into()),
                offset: 0,
                len_bytes: 0,
            })
            .await
            .expect("get over the local channel")
            .into_inner();
        let mut read = Vec::new();
        let mut saw_header = false;
        while let Some(reply) = replies.message().await.expect("reply") {
            match reply.part {
                Some(get_shard_reply::Part::Header(header)) => {
                    assert_eq!(header.shard_len_bytes, data.len() as u64);
                    saw_header = true;
                }
                Some(get_shard_reply::Part::Block(block)) => read.extend_from_slice(&block),
                None => panic!("empty reply"),
            }
        }
        assert!(saw_header);
        assert!(read == data, "the shard read back is the one written");

        let missing = ShardId {
            stripe_id: lauscha_core::StripeId(10),
            shard_idx: 0,
        };
        let status = client
            .get_shard(pb::GetShardRequest {
                id: Some(missing.into()),
                offset: 0,
                len_bytes: 0,
            })
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    /// `PutShard` without gRPC (`LocalShardWrites`, what a gateway of the same process
    /// calls) lands the same shard and answers errors with the same status as the
    /// handler over gRPC.
    #[tokio::test]
    async fn a_local_shard_write_lands_and_fails_as_the_grpc_handler_does() {
        use lauscha_proto::LocalRoles;
        use lauscha_proto::storage::shard_service_client::ShardServiceClient;
        use lauscha_proto::storage::shard_service_server::SERVICE_NAME;

        let store = MemShardStore::new();
        let local = LocalRoles::default();
        let node = server(store.clone());
        local.register(&["127.0.0.1:7001"], node.clone().into_service());
        local.register_shard_writes(&["127.0.0.1:7001"], Arc::new(node));
        let mut client =
            ShardServiceClient::new(local.channel(SERVICE_NAME, "127.0.0.1:7001").unwrap());
        let header = |n: u128, data: &[u8], digest_of: &[u8]| pb::PutShardHeader {
            id: Some(
                ShardId {
                    stripe_id: lauscha_core::StripeId(n),
                    shard_idx: 1,
                }
                .into(),
            ),
            len_bytes: data.len() as u64,
            digest: ShardDigest::of(digest_of).0.to_vec().into(),
        };
        let grpc = |header: pb::PutShardHeader, data: &[u8]| {
            let mut messages = vec![PutShardRequest {
                part: Some(put_shard_request::Part::Header(header)),
            }];
            if !data.is_empty() {
                messages.push(PutShardRequest {
                    part: Some(put_shard_request::Part::Data(Bytes::copy_from_slice(data))),
                });
            }
            futures::stream::iter(messages)
        };
        assert!(
            local
                .put_shard("127.0.0.1:7002", header(1, b"x", b"x"), Bytes::new(), None)
                .is_none(),
            "another address is reached over gRPC"
        );

        let data: Vec<u8> = (0..2 * SHARD_BLOCK_BYTES + 5).map(|i| i as u8).collect();
        local
            .put_shard(
                "http://127.0.0.1:7001",
                header(1, &data, &data),
                Bytes::from(data.clone()),
                Some(lauscha_core::ShardHashes::of(&data).block_hashes),
            )
            .expect("registered")
            .await
            .expect("put in process");
        let id = lauscha_proto::shard_id_from(header(1, &data, &data).id).unwrap();
        let (_, read) = must_read(&store, id, 0, 0).await;
        assert!(read == data);
        local
            .put_shard("127.0.0.1:7001", header(2, b"", b""), Bytes::new(), None)
            .unwrap()
            .await
            .expect("an empty shard");

        // The same refusals, with the same codes, by both paths.
        for (n, data, digest_of) in [
            (1, &b"again"[..], &b"again"[..]), // the id exists
            (3, b"abcd", b"abce"),             // wrong digest
        ] {
            let in_process = local
                .put_shard(
                    "127.0.0.1:7001",
                    header(n, data, digest_of),
                    Bytes::copy_from_slice(data),
                    None,
                )
                .unwrap()
                .await
                .unwrap_err();
            let over_grpc = client
                .put_shard(grpc(header(n, data, digest_of), data))
                .await
                .unwrap_err();
            assert_eq!(in_process.code(), over_grpc.code(), "shard {n}");
            assert_ne!(in_process.code(), tonic::Code::Ok);
        }
        assert_eq!(store.usage().n_shards, 2);
    }
}
