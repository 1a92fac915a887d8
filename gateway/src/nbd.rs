//! The NBD server: fixed newstyle negotiation, then pipelined transmission with simple
//! replies matched by cookie. Every byte read goes through `lauscha_core::nbd`'s parsers;
//! a malformed request gets an error reply (or, when the stream is out of step, the
//! connection is closed), never a panic, and never holds up other connections.
//!
//! Trust model. Plain NBD has no authentication: the export name is the volume name, and
//! whoever can reach the NBD address can attach any volume, so without TLS serve it only
//! on the VM hosts' storage network (`gateway.nbd_listen`), never on a tenant network.
//! With `gateway.nbd_tls`, every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused
//! (NBD_REP_ERR_TLS_REQD) until the client has completed TLS with a certificate from the
//! configured client CA; the certificate's subject CN names a tenant, and the connection
//! then lists, inspects and attaches that tenant's volumes only (`nbd_tls.rs`).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use lauscha_core::TenantId;
use lauscha_core::nbd::{self, ExportInfo, Request};
use lauscha_core::versioning::{MetaQuery, MetaQueryReply};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::GatewayError;
use crate::attachments::Attachments;
use crate::gateway::Inner;
use crate::nbd_tls::{NbdTls, NoPlace, UnauthenticatedPlace, UnauthenticatedPlaces};
use crate::volume::{VolumeEngine, VolumeError, VolumeIdentity};

/// Largest READ or WRITE payload, bytes.
const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Smallest request granularity advertised, bytes. The engine works in bytes (journal
/// entries of any length, merges byte by byte), so 512-byte sectors cost nothing extra;
/// and the Linux kernel's NBD client does not read the advertised minimum: with a
/// 512-byte block device (nbd-client's default) it sends 512-byte I/O (XFS log writes,
/// O_DIRECT), which a 4096 minimum answered with EINVAL. Volume sizes stay multiples
/// of 4096.
const MIN_REQUEST_BYTES: u32 = 512;
/// With TLS required: how long a client may negotiate before it has started TLS.
const UNAUTHENTICATED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Requests of one connection in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// Bytes of READ replies and WRITE payloads one connection holds at once, from when the
/// request is taken until its reply is written: 64 reads of 32 MiB from a client that
/// reads its replies slowly would hold 2 GiB (more with the replies queued for writing).
const MAX_IN_FLIGHT_BYTES: u32 = 128 << 20;
/// At shutdown: how long sessions get to end (requests in flight answered, journals
/// merged, leases given back) before the server stops waiting for them. What is cut off
/// then loses nothing: the journal is durable and the lease runs out by itself.
pub const NBD_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A volume name and which volume of that name it denoted when it was attached.
type AttachedKey = (String, VolumeIdentity);

/// Attached volumes, shared by the connections that use them.
pub struct Exports {
    inner: Arc<Inner>,
    /// This server's lease holder id.
    holder: String,
    /// (Volume name, which volume of that name) -> its engine and the connections using
    /// it. The identity is part of the key so that a name deleted and created again (by
    /// another tenant, say) is never served by the engine of the volume it replaced.
    attached: Attachments<AttachedKey, VolumeEngine>,
}

impl Exports {
    /// Exports of this gateway.
    pub fn new(inner: Arc<Inner>) -> Arc<Exports> {
        Arc::new(Exports {
            inner,
            holder: format!("gateway-{:016x}", rand::random::<u64>()),
            attached: Attachments::new(),
        })
    }

    /// The engine of `name`, which must still be the volume `identity` describes (the one
    /// the connection was allowed to see).
    async fn attach(
        &self,
        name: &str,
        identity: &VolumeIdentity,
    ) -> Result<Arc<VolumeEngine>, GatewayError> {
        let key = (name.to_string(), identity.clone());
        self.attached
            .attach(
                key,
                |engine| !engine.is_fenced(),
                || VolumeEngine::attach(self.inner.clone(), name, identity, &self.holder),
            )
            .await
    }

    /// One connection using `engine` is done with it; the last one gives the lease back.
    async fn detach(&self, name: &str, identity: &VolumeIdentity, engine: &Arc<VolumeEngine>) {
        let key = (name.to_string(), identity.clone());
        self.attached
            .detach(&key, engine, |engine| async move { engine.detach().await })
            .await;
    }

    /// The export `name` as `client` may see it: `None` when there is no such volume or
    /// it belongs to another tenant (the two answers are the same, so a client learns
    /// nothing about other tenants' volumes).
    async fn export_info(
        &self,
        client: &Client,
        name: &str,
    ) -> Result<Option<(ExportInfo, VolumeIdentity)>, GatewayError> {
        match self
            .inner
            .meta
            .query(&MetaQuery::VolumeState {
                name: name.to_string(),
            })
            .await?
        {
            MetaQueryReply::VolumeState(Some(s)) if client.may_see(&s.volume.tenant) => {
                let mut info = info_of(s.volume.size_bytes);
                if s.volume.read_only {
                    info.flags |= nbd::TFLAG_READ_ONLY;
                }
                Ok(Some((info, VolumeIdentity::of(&s.volume))))
            }
            MetaQueryReply::VolumeState(_) => Ok(None),
            other => Err(GatewayError::Internal(format!(
                "metadata answered {other:?}"
            ))),
        }
    }

    async fn names(&self, client: &Client) -> Result<Vec<String>, GatewayError> {
        let tenant = match client {
            Client::Trusted => None,
            Client::Tenant(t) => Some(t.clone()),
            // Not reached: `negotiate` refuses such a client before it asks.
            Client::Unauthenticated | Client::Refused(_) => return Ok(Vec::new()),
        };
        match self
            .inner
            .meta
            .query(&MetaQuery::ListVolumes { tenant })
            .await?
        {
            MetaQueryReply::Volumes(v) => Ok(v.into_iter().map(|v| v.name).collect()),
            other => Err(GatewayError::Internal(format!(
                "metadata answered {other:?}"
            ))),
        }
    }
}

/// Who is at the other end of a connection, as far as volumes are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Client {
    /// Plain NBD (no `gateway.nbd_tls`): the network is the boundary; every volume.
    Trusted,
    /// TLS is required and not yet started: no volume.
    Unauthenticated,
    /// TLS with a certificate naming this tenant: its volumes only.
    Tenant(TenantId),
    /// TLS with a valid certificate that names no tenant: no volume, and this reason.
    Refused(String),
}

impl Client {
    /// The server requires TLS (it was configured with `gateway.nbd_tls`).
    fn tls_required(&self) -> bool {
        !matches!(self, Client::Trusted)
    }

    /// The TLS handshake is done.
    fn tls_active(&self) -> bool {
        matches!(self, Client::Tenant(_) | Client::Refused(_))
    }

    fn may_see(&self, owner: &TenantId) -> bool {
        match self {
            Client::Trusted => true,
            Client::Tenant(t) => t == owner,
            Client::Unauthenticated | Client::Refused(_) => false,
        }
    }
}

fn info_of(size_bytes: u64) -> ExportInfo {
    ExportInfo {
        size_bytes,
        flags: nbd::TFLAG_HAS_FLAGS
            | nbd::TFLAG_SEND_FLUSH
            | nbd::TFLAG_SEND_FUA
            | nbd::TFLAG_SEND_TRIM
            | nbd::TFLAG_SEND_WRITE_ZEROES
            // Zeros are a journal entry without bytes, always faster than writing them.
            | nbd::TFLAG_SEND_FAST_ZERO,
        min_block: MIN_REQUEST_BYTES,
        preferred_block: 1 << 20,
        max_block: MAX_REQUEST_BYTES,
    }
}

/// Serves NBD on `listener` until `shutdown` resolves; with `tls`, only over TLS and only
/// the volumes of the tenant each client certificate names.
///
/// Then it stops accepting and ends every session as a client's disconnect would (every
/// request received whole carried out and answered, then the detach: journal merged,
/// lease given back), and returns when they have ended or after `NBD_DRAIN_TIMEOUT`. The
/// caller keeps metadata and the storage nodes serving until then: a restarted server,
/// or another host, attaches at once instead of waiting for a lease to run out.
pub async fn serve_nbd(
    exports: Arc<Exports>,
    tls: Option<Arc<NbdTls>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // Connections, so that shutdown can wait for them; told to end through `stopping`.
    let sessions = TaskTracker::new();
    let stopping = CancellationToken::new();
    let unauthenticated = Arc::new(UnauthenticatedPlaces::default());
    // Whether the last connection was refused for a limit: warn once per episode, not
    // once per connection of a flood.
    let mut at_limit = false;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "NBD accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let place = match &tls {
            None => None,
            Some(_) => match unauthenticated.take(peer.ip()) {
                Ok(place) => {
                    at_limit = false;
                    Some(place)
                }
                Err(no_place) => {
                    if !at_limit {
                        let limit = match no_place {
                            NoPlace::InAll => "in all",
                            NoPlace::FromThisAddress => "from this address",
                        };
                        warn!(
                            %peer,
                            limit,
                            "NBD connections without TLS yet at the limit: closing new ones until some finish"
                        );
                        at_limit = true;
                    }
                    drop(tcp);
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (exports, tls, stopping) = (exports.clone(), tls.clone(), stopping.clone());
        sessions.spawn(async move {
            match connection(exports, tls, tcp, place, stopping).await {
                Ok(()) => debug!(%peer, "NBD connection closed"),
                Err(e) => debug!(%peer, error = %e, "NBD connection ended"),
            }
        });
    }
    drop(listener);
    stopping.cancel();
    sessions.close();
    let n_connections = sessions.len();
    if n_connections > 0 {
        info!(n_connections, "NBD: ending connections");
    }
    if tokio::time::timeout(NBD_DRAIN_TIMEOUT, sessions.wait())
        .await
        .is_err()
    {
        warn!(
            n_connections = sessions.len(),
            timeout_s = NBD_DRAIN_TIMEOUT.as_secs(),
            "NBD: connections still open at the drain timeout; volumes they attached replay their journal at the next attach"
        );
    }
    Ok(())
}

/// A byte stream NBD runs over: TCP, or TLS on TCP after NBD_OPT_STARTTLS.
trait NbdStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> NbdStream for T {}

/// The connection during negotiation: reads buffered, writes straight through.
type Stream = BufReader<Box<dyn NbdStream>>;

/// What negotiation ended with.
enum Negotiated {
    /// Transmission on this volume.
    Go(String, VolumeIdentity, ExportInfo, Arc<VolumeEngine>),
    /// The client asked for TLS and was answered with NBD_REP_ACK: the handshake is next.
    StartTls,
    /// The client left (NBD_OPT_ABORT or hang-up), or must be cut off.
    Done,
}

/// One client. `unauthenticated` (with TLS required) is its place among the connections
/// that have not finished the TLS handshake, given back once it has.
async fn connection(
    exports: Arc<Exports>,
    tls: Option<Arc<NbdTls>>,
    tcp: TcpStream,
    mut unauthenticated: Option<UnauthenticatedPlace>,
    stopping: CancellationToken,
) -> std::io::Result<()> {
    // A port that may face tenant networks: a client that does not authenticate in time
    // is dropped instead of holding a connection (and a place under the cap) open.
    let tls_deadline = tokio::time::Instant::now() + UNAUTHENTICATED_TIMEOUT;
    let no_tls_in_time = |_| std::io::Error::other("no TLS handshake in time");
    let mut stream: Stream = BufReader::new(Box::new(tcp));
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&nbd::NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&nbd::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(nbd::FLAG_FIXED_NEWSTYLE | nbd::FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&hello).await?;
    let flags = async {
        if tls.is_some() {
            tokio::time::timeout_at(tls_deadline, stream.read_u32())
                .await
                .map_err(no_tls_in_time)?
        } else {
            stream.read_u32().await
        }
    };
    let Some(client_flags) = stopping.run_until_cancelled(flags).await else {
        return Ok(());
    };
    let client_flags = client_flags?;
    if client_flags & !(nbd::CLIENT_FIXED_NEWSTYLE | nbd::CLIENT_NO_ZEROES) != 0 {
        return Err(std::io::Error::other("unknown client flags"));
    }
    if tls.is_some() && client_flags & nbd::CLIENT_FIXED_NEWSTYLE == 0 {
        // proto.md: a server that requires TLS must drop a client that cannot negotiate it.
        return Err(std::io::Error::other(
            "client does not speak fixed newstyle, so it cannot start TLS",
        ));
    }
    let no_zeroes = client_flags & nbd::CLIENT_NO_ZEROES != 0;
    let mut client = match tls {
        Some(_) => Client::Unauthenticated,
        None => Client::Trusted,
    };
    let (name, identity, info, engine) = loop {
        let negotiated = negotiate(&exports, &mut stream, &client, no_zeroes, &stopping);
        // A certificate that names no tenant authenticates nobody: such a client keeps
        // the deadline (it can list nothing and attach nothing anyway).
        let negotiated = if matches!(client, Client::Unauthenticated | Client::Refused(_)) {
            tokio::time::timeout_at(tls_deadline, negotiated)
                .await
                .map_err(no_tls_in_time)?
        } else {
            negotiated.await
        };
        match negotiated? {
            Negotiated::Go(name, identity, info, engine) => break (name, identity, info, engine),
            Negotiated::Done => return Ok(()),
            Negotiated::StartTls => {
                let Some(tls) = &tls else {
                    unreachable!("tls_gate answers StartTls only with TLS configured")
                };
                // The client waits for our ACK before its ClientHello, so nothing may be
                // buffered; bytes here would be plaintext spliced into the TLS stream.
                if !stream.buffer().is_empty() {
                    return Err(std::io::Error::other(
                        "client sent data after NBD_OPT_STARTTLS before the TLS handshake",
                    ));
                }
                let (tls_stream, tenant) = tls.accept(stream.into_inner()).await?;
                drop(unauthenticated.take());
                client = match tenant {
                    Ok(t) => {
                        debug!(tenant = %t, "NBD client authenticated by certificate");
                        Client::Tenant(t)
                    }
                    Err(reason) => {
                        warn!(%reason, "NBD client certificate names no tenant");
                        Client::Refused(reason)
                    }
                };
                stream = BufReader::new(Box::new(tls_stream));
            }
        }
    };
    let tenant = match &client {
        Client::Tenant(t) => t.to_string(),
        _ => String::new(),
    };
    info!(volume = %name, %tenant, epoch = engine.epoch(), "NBD client attached");
    let (rd, wr) = tokio::io::split(stream);
    let result = transmission(engine.clone(), info, rd, wr, &stopping).await;
    exports.detach(&name, &identity, &engine).await;
    result
}

/// Writes one negotiation reply and pushes it out (TLS buffers until flushed).
async fn reply(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn negotiate(
    exports: &Exports,
    stream: &mut Stream,
    client: &Client,
    no_zeroes: bool,
    stopping: &CancellationToken,
) -> std::io::Result<Negotiated> {
    loop {
        let mut header = [0u8; 16];
        // Shutdown ends a negotiation only between options, never inside an attach.
        let Some(read) = stopping
            .run_until_cancelled(stream.read_exact(&mut header))
            .await
        else {
            return Ok(Negotiated::Done);
        };
        read?;
        let opt = nbd::parse_option(&header)
            .map_err(|e| std::io::Error::other(format!("option: {e}")))?;
        let mut data = vec![0u8; opt.len as usize];
        stream.read_exact(&mut data).await?;
        match nbd::tls_gate(
            opt.option,
            opt.len,
            client.tls_required(),
            client.tls_active(),
        ) {
            nbd::TlsGate::Proceed => {}
            nbd::TlsGate::StartTls => {
                reply(stream, &nbd::option_reply(opt.option, nbd::REP_ACK, &[])).await?;
                return Ok(Negotiated::StartTls);
            }
            nbd::TlsGate::Refuse(error) => {
                let msg = match error {
                    nbd::REP_ERR_TLS_REQD => "this server requires TLS: send NBD_OPT_STARTTLS",
                    nbd::REP_ERR_UNSUP => "TLS is not configured on this server",
                    _ => "NBD_OPT_STARTTLS takes no data and is accepted once",
                };
                reply(stream, &nbd::option_error(opt.option, error, msg)).await?;
                continue;
            }
            nbd::TlsGate::Close => return Ok(Negotiated::Done),
        }
        if let Client::Refused(reason) = client
            && opt.option != nbd::OPT_ABORT
        {
            if opt.option == nbd::OPT_EXPORT_NAME {
                return Ok(Negotiated::Done);
            }
            reply(
                stream,
                &nbd::option_error(opt.option, nbd::REP_ERR_POLICY, reason),
            )
            .await?;
            continue;
        }
        match opt.option {
            nbd::OPT_ABORT => {
                reply(stream, &nbd::option_reply(opt.option, nbd::REP_ACK, &[])).await?;
                return Ok(Negotiated::Done);
            }
            nbd::OPT_LIST if !data.is_empty() => {
                let msg = "NBD_OPT_LIST takes no data";
                reply(
                    stream,
                    &nbd::option_error(opt.option, nbd::REP_ERR_INVALID, msg),
                )
                .await?;
            }
            nbd::OPT_LIST => {
                let mut out = Vec::new();
                match exports.names(client).await {
                    Ok(names) => {
                        for n in names {
                            let mut d = (n.len() as u32).to_be_bytes().to_vec();
                            d.extend_from_slice(n.as_bytes());
                            out.extend(nbd::option_reply(opt.option, nbd::REP_SERVER, &d));
                        }
                        out.extend(nbd::option_reply(opt.option, nbd::REP_ACK, &[]));
                    }
                    Err(e) => out.extend(nbd::option_error(
                        opt.option,
                        nbd::REP_ERR_PLATFORM,
                        &e.to_string(),
                    )),
                }
                reply(stream, &out).await?;
            }
            nbd::OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).to_string();
                // No error reply exists for EXPORT_NAME: a refusal closes the connection.
                let (info, identity) = match exports.export_info(client, &name).await {
                    Ok(Some(found)) => found,
                    _ => return Ok(Negotiated::Done),
                };
                let engine = match exports.attach(&name, &identity).await {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(volume = %name, error = %e, "attach refused");
                        return Ok(Negotiated::Done);
                    }
                };
                let mut out = info.size_bytes.to_be_bytes().to_vec();
                out.extend_from_slice(&info.flags.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                if let Err(e) = reply(stream, &out).await {
                    exports.detach(&name, &identity, &engine).await;
                    return Err(e);
                }
                return Ok(Negotiated::Go(name, identity, info, engine));
            }
            nbd::OPT_INFO | nbd::OPT_GO => {
                let request = match nbd::parse_info_request(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(
                            stream,
                            &nbd::option_error(opt.option, nbd::REP_ERR_INVALID, &e.to_string()),
                        )
                        .await?;
                        continue;
                    }
                };
                let (info, identity) = match exports.export_info(client, &request.name).await {
                    Ok(Some(found)) => found,
                    Ok(None) => {
                        let msg = match client {
                            Client::Tenant(t) => {
                                format!("no volume {:?} for tenant {t}", request.name)
                            }
                            _ => format!("no volume {:?}", request.name),
                        };
                        reply(
                            stream,
                            &nbd::option_error(opt.option, nbd::REP_ERR_UNKNOWN, &msg),
                        )
                        .await?;
                        continue;
                    }
                    Err(e) => {
                        reply(
                            stream,
                            &nbd::option_error(opt.option, nbd::REP_ERR_PLATFORM, &e.to_string()),
                        )
                        .await?;
                        continue;
                    }
                };
                let answer = nbd::info_replies(opt.option, &request.name, &info, &request.requests);
                if opt.option == nbd::OPT_INFO {
                    reply(stream, &answer).await?;
                    continue;
                }
                match exports.attach(&request.name, &identity).await {
                    Ok(engine) => {
                        // Attached means leased and counted: a client gone before the
                        // reply must not keep the volume attached on this gateway.
                        if let Err(e) = reply(stream, &answer).await {
                            exports.detach(&request.name, &identity, &engine).await;
                            return Err(e);
                        }
                        return Ok(Negotiated::Go(request.name, identity, info, engine));
                    }
                    Err(e) => {
                        // Attached elsewhere (a live lease) or metadata down.
                        reply(
                            stream,
                            &nbd::option_error(opt.option, nbd::REP_ERR_POLICY, &e.to_string()),
                        )
                        .await?;
                    }
                }
            }
            other => {
                let msg = format!("option {other} is not supported");
                reply(stream, &nbd::option_error(other, nbd::REP_ERR_UNSUP, &msg)).await?;
            }
        }
    }
}

fn errno(e: &VolumeError) -> u32 {
    match e {
        VolumeError::Fenced | VolumeError::ReadOnly => nbd::EPERM,
        VolumeError::Io(GatewayError::EntityTooLarge { .. }) => nbd::ENOSPC,
        VolumeError::Io(_) => nbd::EIO,
    }
}

/// A request's share of its connection's limits, given back once its reply is written
/// (or can no longer be).
struct InFlight {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _bytes: tokio::sync::OwnedSemaphorePermit,
}

/// A reply for the writer task: error, cookie, data, and what the request holds.
type Reply = (u32, u64, Option<Vec<Bytes>>, Option<InFlight>);

async fn transmission(
    engine: Arc<VolumeEngine>,
    info: ExportInfo,
    mut rd: ReadHalf<Stream>,
    mut wr: WriteHalf<Stream>,
    stopping: &CancellationToken,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        // After a failed write the rest is received and dropped, not left in the channel:
        // a reply sent just as the receiver went would stay there, holding its request's
        // slot, and the session would wait for that slot for good.
        let mut failed = None;
        while let Some((error, cookie, data, in_flight)) = rx.recv().await {
            if failed.is_none() {
                let header = nbd::simple_reply(error, cookie);
                let mut written =
                    write_reply(&mut wr, &header, data.as_deref().unwrap_or_default()).await;
                if written.is_ok() && rx.is_empty() {
                    // Replies queued behind this one go out with it; TLS needs the flush.
                    written = wr.flush().await;
                }
                failed = written.err();
            }
            drop((data, in_flight));
        }
        match failed {
            Some(e) => Err(e),
            None => wr.shutdown().await,
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes_budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES as usize));
    // A client gone in the middle of a write's payload ends the session like one gone
    // between requests: what it had in flight finishes before the caller detaches, so
    // no request of this session runs after the engine was detached and its lease given
    // back. Only the error to report differs.
    let mut gone_mid_request: Option<std::io::Error> = None;
    'requests: loop {
        let mut header = [0u8; 28];
        // Shutdown ends the session between requests, as NBD_CMD_DISC would. A header
        // (or, below, a payload) read in part is dropped with the connection: its
        // request was never received, so a reconnecting client sends it again.
        let Some(Ok(_)) = stopping
            .run_until_cancelled(rd.read_exact(&mut header))
            .await
        else {
            break;
        };
        let request = match nbd::parse_request(&header) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "NBD request out of step; closing");
                break;
            }
        };
        let mut payload = None;
        if request.command == nbd::CMD_WRITE {
            if request.len > MAX_REQUEST_BYTES {
                // Its payload cannot be skipped safely at this size: refuse and close.
                let _ = tx.send((nbd::EINVAL, request.cookie, None, None)).await;
                break;
            }
            // Read into memory not zeroed first: a 1 MiB write would be written twice.
            // The limit keeps a read from taking the next request's header should the
            // buffer have more room than asked for.
            let len = request.len as usize;
            let mut buf = bytes::BytesMut::with_capacity(len);
            while buf.len() < len {
                let left = len - buf.len();
                let mut rest = bytes::BufMut::limit(&mut buf, left);
                // A client stalled in the middle of a payload must not hold up shutdown:
                // its request is not received whole, so it is neither run nor answered.
                let Some(read) = stopping.run_until_cancelled(rd.read_buf(&mut rest)).await else {
                    break 'requests;
                };
                match read {
                    Ok(0) => {
                        gone_mid_request = Some(std::io::ErrorKind::UnexpectedEof.into());
                        break 'requests;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        gone_mid_request = Some(e);
                        break 'requests;
                    }
                }
            }
            assert_eq!(buf.len(), len, "a payload is read to its end, no further");
            payload = Some(buf.freeze());
        }
        if request.command == nbd::CMD_DISC {
            break;
        }
        // A payload or a reply's data; at most the whole budget (a READ over the largest
        // size is refused when it runs, and must not wait for more than there is).
        let n_bytes = match request.command {
            nbd::CMD_READ | nbd::CMD_WRITE => request.len.clamp(1, MAX_IN_FLIGHT_BYTES),
            _ => 1,
        };
        let in_flight = InFlight {
            _slot: slots.clone().acquire_owned().await.expect("semaphore open"),
            _bytes: (bytes_budget.clone().acquire_many_owned(n_bytes).await)
                .expect("semaphore open"),
        };
        let (engine, tx) = (engine.clone(), tx.clone());
        tokio::spawn(async move {
            // A deliberately broken build, for the chaos suite's proof that it notices:
            // a write-back cache that acknowledges a write at once and makes it durable
            // 50 ms later.
            #[cfg(feature = "chaos-ack-before-durable")]
            if request.command == nbd::CMD_WRITE {
                let _ = tx.send((0, request.cookie, None, None)).await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let _ = execute(&engine, &info, &request, payload).await;
                drop(in_flight);
                return;
            }
            let reply = execute(&engine, &info, &request, payload).await;
            let (error, data) = match reply {
                Ok(data) => (0, data),
                Err(e) => (e, None),
            };
            let _ = tx
                .send((error, request.cookie, data, Some(in_flight)))
                .await;
        });
    }
    // Finish what is in flight (every request answered: its slot comes back once its
    // reply is written, or dropped by a writer that failed), then close.
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let written = writer.await.map_err(std::io::Error::other)?;
    match gone_mid_request {
        Some(e) => Err(e),
        None => written,
    }
}

/// Writes a reply header and its data with as few system calls as the stream takes
/// (vectored: a 4 KiB read's reply is one write, not two).
async fn write_reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    header: &[u8],
    data: &[Bytes],
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = std::iter::once(std::io::IoSlice::new(header))
        .chain(data.iter().map(|d| std::io::IoSlice::new(d)))
        .collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        let n = wr.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

async fn execute(
    engine: &Arc<VolumeEngine>,
    info: &ExportInfo,
    r: &Request,
    payload: Option<Bytes>,
) -> Result<Option<Vec<Bytes>>, u32> {
    let fua = r.flags & nbd::CMD_FLAG_FUA != 0;
    match r.command {
        nbd::CMD_READ | nbd::CMD_WRITE | nbd::CMD_TRIM | nbd::CMD_WRITE_ZEROES => {
            nbd::check_flags(r)?;
            nbd::check_range(r, info)?;
            if r.len == 0 {
                // Nothing to read or change: answered without a journal command (FUA
                // asks that this request's data be durable; it has none), but a write
                // to a snapshot is refused whatever its length.
                if r.command != nbd::CMD_READ && engine.volume.read_only {
                    return Err(errno(&VolumeError::ReadOnly));
                }
                return Ok((r.command == nbd::CMD_READ).then(Vec::new));
            }
        }
        nbd::CMD_FLUSH => nbd::check_flags(r)?,
        _ => return Err(nbd::EINVAL),
    }
    let len = u64::from(r.len);
    let result = match r.command {
        nbd::CMD_READ => engine.read(r.offset, len).await.map(Some),
        nbd::CMD_WRITE => engine
            .write(r.offset, len, payload, fua)
            .await
            .map(|()| None),
        nbd::CMD_TRIM | nbd::CMD_WRITE_ZEROES => {
            engine.write(r.offset, len, None, fua).await.map(|()| None)
        }
        _ => engine.flush().await.map(|()| None),
    };
    result.map_err(|e| {
        let admitted = engine
            .failed_request_log
            .lock()
            .expect("log throttle lock")
            .admit(std::time::Instant::now());
        if let Some(held_back) = admitted {
            warn!(
                volume = %engine.volume.name,
                command = r.command,
                offset = r.offset,
                error = %e,
                failed_since_last_logged = held_back,
                "NBD request failed"
            );
        }
        errno(&e)
    })
}
