//! Raft between voters over tonic: openraft's messages, encoded with `value::encode`.
//!
//! Snapshots are streamed: the sender reads its snapshot file in chunks, the receiver
//! writes them to a temporary file under a size cap and a deadline, verifies the file's
//! hash, and only then hands it to openraft.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lauscha_proto::meta::raft_service_client::RaftServiceClient;
use lauscha_proto::meta::raft_service_server::RaftService;
use lauscha_proto::meta::{RaftMessage, SnapshotChunk, snapshot_chunk};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::command::{MetaError, MetaResponse, Proposal};
use crate::node::VoteSilence;
use crate::raft_types::{Raft, Snapshot, SnapshotFile, SnapshotMeta, TypeConfig, Vote};
use crate::value;

/// Bytes per snapshot chunk on the wire.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest message on the Raft service (append batches of large object versions).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;

/// Creates clients to other voters.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    /// Deadline for a whole snapshot transfer.
    pub snapshot_timeout: Duration,
    /// Source address of connections to the other voters (`metadata.source_ip`).
    pub source_ip: Option<IpAddr>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> NetworkClient {
        let channel = lauscha_proto::role_endpoint(format!("http://{}", node.addr), self.source_ip)
            .map(|e| e.connect_lazy());
        NetworkClient {
            target,
            client: channel.ok().map(|ch| {
                RaftServiceClient::new(ch)
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            }),
            addr: node.addr.clone(),
            snapshot_timeout: self.snapshot_timeout,
        }
    }
}

/// A client to one voter.
pub struct NetworkClient {
    target: u64,
    addr: String,
    /// `None` when the node's address does not parse: every call is then unreachable.
    client: Option<RaftServiceClient<Channel>>,
    snapshot_timeout: Duration,
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

fn network_error(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(e.to_string()))
}

fn status_error(s: Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            RPCError::Unreachable(Unreachable::from_string(s.to_string()))
        }
        _ => network_error(s),
    }
}

impl NetworkClient {
    fn client(&self) -> RpcResult<RaftServiceClient<Channel>> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "voter {} has an invalid address {:?}",
                self.target, self.addr
            )))
        })
    }

    async fn call<Req, Resp, F, Fut>(&self, req: &Req, option: &RPCOption, f: F) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<Response<RaftMessage>, Status>>,
    {
        let message = RaftMessage {
            payload: value::encode(req).into(),
        };
        let reply = tokio::time::timeout(option.soft_ttl(), f(self.client()?, message))
            .await
            .map_err(|_| RPCError::Unreachable(Unreachable::from_string("timed out")))?
            .map_err(status_error)?;
        let result: Result<Resp, RaftError<TypeConfig>> =
            value::decode(&reply.into_inner().payload).map_err(network_error)?;
        // A remote fatal error (the peer's storage failed): back off as if unreachable.
        result.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e.to_string())))
    }
}

impl RaftNetworkV2<TypeConfig> for NetworkClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        self.call(&rpc, &option, |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.call(&rpc, &option, |mut c, m| async move { c.vote(m).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header = value::encode(&(vote, snapshot.meta.clone()));
        let mut file = snapshot.snapshot.file;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        // Read the file on a blocking thread, a chunk at a time: never the whole snapshot
        // in memory.
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.seek(SeekFrom::Start(0))?;
            let header = SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(header.into())),
            };
            if tx.blocking_send(header).is_err() {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let n = file.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = SnapshotChunk {
                    part: Some(snapshot_chunk::Part::Data(Bytes::from(buf))),
                };
                if tx.blocking_send(chunk).is_err() {
                    return Ok(());
                }
            }
        });
        let send = async {
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let reply =
                tokio::time::timeout(self.snapshot_timeout, client.install_snapshot(stream))
                    .await
                    .map_err(|_| {
                        RPCError::Unreachable(Unreachable::from_string("snapshot timed out"))
                    })?
                    .map_err(status_error)?;
            let result: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
                value::decode(&reply.into_inner().payload).map_err(network_error)?;
            result.map_err(|e| RPCError::Unreachable(Unreachable::from_string(e.to_string())))
        };
        let outcome = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(StreamingError::from),
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::from(network_error(e))),
            Err(e) => return Err(StreamingError::from(network_error(e))),
        }
        outcome
    }
}

/// The server side: hands requests from other voters to the local Raft.
#[derive(Clone)]
pub struct RaftServer {
    raft: Raft,
    vote_silence: VoteSilence,
    snapshot_dir: PathBuf,
    limits: Arc<SnapshotLimits>,
}

/// Bounds on a received snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotLimits {
    /// Largest snapshot accepted, bytes.
    pub max_bytes: u64,
    /// Deadline for receiving it.
    pub timeout: Duration,
}

impl RaftServer {
    /// A server for `raft`, receiving snapshots into `snapshot_dir`.
    pub(crate) fn new(
        raft: Raft,
        vote_silence: VoteSilence,
        snapshot_dir: PathBuf,
        limits: SnapshotLimits,
    ) -> RaftServer {
        RaftServer {
            raft,
            vote_silence,
            snapshot_dir,
            limits: Arc::new(limits),
        }
    }

    /// The tonic service.
    pub fn into_service(
        self,
    ) -> lauscha_proto::meta::raft_service_server::RaftServiceServer<RaftServer> {
        lauscha_proto::meta::raft_service_server::RaftServiceServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }

    async fn receive_snapshot(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<(Vote, SnapshotMeta, SnapshotFile), Status> {
        let header = match stream.message().await? {
            Some(SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "snapshot stream must start with a header",
                ));
            }
        };
        let (vote, meta): (Vote, SnapshotMeta) = value::decode(&header)
            .map_err(|e| Status::invalid_argument(format!("snapshot header: {e}")))?;
        let path = self
            .snapshot_dir
            .join(format!("recv-{:016x}.snap", rand::random::<u64>()));
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Status::internal(format!("create snapshot file: {e}")))?;
        let guard = RemoveOnDrop(Some(path.clone()));
        let mut n_bytes = 0u64;
        while let Some(chunk) = stream.message().await? {
            let Some(snapshot_chunk::Part::Data(data)) = chunk.part else {
                return Err(Status::invalid_argument("second snapshot header"));
            };
            n_bytes += data.len() as u64;
            if n_bytes > self.limits.max_bytes {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than the {}-byte limit",
                    self.limits.max_bytes
                )));
            }
            file.write_all(&data)
                .map_err(|e| Status::internal(format!("write snapshot file: {e}")))?;
        }
        file.sync_all()
            .map_err(|e| Status::internal(format!("sync snapshot file: {e}")))?;
        // Verify before openraft sees it: a damaged transfer is refused, not installed.
        let verified = tokio::task::spawn_blocking(move || {
            let result = crate::store::verify_snapshot_file(&mut file);
            (file, result)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (file, result) = verified;
        let file_meta = result.map_err(|e| Status::invalid_argument(format!("snapshot: {e}")))?;
        if file_meta != meta {
            return Err(Status::invalid_argument(
                "snapshot meta differs from its header",
            ));
        }
        let path = guard.keep();
        Ok((vote, meta, SnapshotFile { path, file }))
    }
}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sends a proposal to the leader's `Propose` and decodes its answer.
pub(crate) async fn forward_proposal(
    mut client: RaftServiceClient<Channel>,
    proposal: &Proposal,
) -> Result<MetaResponse, MetaError> {
    let message = RaftMessage {
        payload: value::encode(proposal).into(),
    };
    let reply = client
        .propose(message)
        .await
        .map_err(|s| MetaError::Unavailable(format!("forward to the leader: {}", s.message())))?;
    value::decode::<Result<MetaResponse, MetaError>>(&reply.into_inner().payload)
        .map_err(|e| MetaError::Internal(format!("leader's answer: {e}")))?
}

fn parse<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    value::decode(&request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage {
        payload: value::encode(v).into(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.vote_silence
            .check()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&self.raft.vote(parse(request)?).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        reply(&self.raft.append_entries(parse(request)?).await)
    }

    async fn propose(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        // Executed here only: a leader that lost its role answers NotLeader rather than
        // forwarding again, so forwards never loop.
        let proposal: Proposal = parse(request)?;
        reply(&crate::node::propose(&self.raft, proposal).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let (vote, meta, file) = tokio::time::timeout(
            self.limits.timeout,
            self.receive_snapshot(request.into_inner()),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("snapshot transfer timed out"))??;
        let result = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        reply(&result)
    }
}
