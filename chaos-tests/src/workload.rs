//! The workload: S3 clients doing PUT/GET/DELETE/LIST over a few hundred keys with
//! self-verifying bodies, and an NBD client writing generation-stamped blocks with
//! periodic FLUSH. Every invocation and completion is recorded on one monotonic clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use lauscha_core::nbd;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::check::{ListOp, RegKind, RegOp};
use crate::payload::{self, BlockRead, ValueId};

/// The bucket the workload uses.
pub const BUCKET: &str = "chaos";
/// The volume the NBD client writes.
pub const VOLUME: &str = "chaos-vol";
/// Blocks of the volume (16 MiB).
pub const BLOCKS: u32 = 4096;

/// Nanoseconds since the run's clock started.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Now, in ns since the start.
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// An S3 client with one attempt per operation and a bound on each.
pub fn s3_client(endpoint: &str, access_key: &str, secret_key: &str) -> Client {
    let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(15))
        .build();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "chaos",
        ))
        .force_path_style(true)
        // One attempt: the history must record what the server answered, not a retry.
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1))
        .timeout_config(timeouts)
        .build();
    Client::from_conf(config)
}

/// The name of key `i`.
pub fn key_name(i: u32) -> String {
    format!("k/{i:04}")
}

/// What one S3 worker recorded.
#[derive(Default)]
pub struct S3Record {
    /// (key, op) in completion order.
    pub ops: Vec<(String, RegOp)>,
    /// LISTs that completed.
    pub lists: Vec<ListOp>,
    /// Reads whose body failed verification: (key, what was wrong).
    pub corrupt: Vec<(String, String)>,
    /// Completion times of successful operations.
    pub successes_ns: Vec<u64>,
    /// Operations sent.
    pub invoked: u64,
    /// Operations that failed (errors and timeouts).
    pub failed: u64,
}

/// Shape of the S3 workload.
#[derive(Clone, Copy, Debug)]
pub struct S3Shape {
    /// Keys.
    pub keys: u32,
    /// Concurrent clients.
    pub workers: u32,
}

/// One S3 worker: random operations until `stop`.
pub async fn s3_worker(
    client: Client,
    worker: u32,
    seed: u64,
    shape: S3Shape,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> S3Record {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(worker) << 48) ^ 0x5eed);
    let mut record = S3Record::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let failed_before = record.failed;
        let key = key_name(rng.random_range(0..shape.keys));
        let dice = rng.random_range(0..100);
        record.invoked += 1;
        let invoke_ns = clock.now_ns();
        if dice < 45 {
            seq += 1;
            let value = ValueId::new(worker, seq);
            let len = match rng.random_range(0..100) {
                0..70 => rng.random_range(100..4_000),
                70..95 => rng.random_range(16_384..262_144),
                _ => rng.random_range(1 << 20..3 << 20),
            };
            let body = payload::object_body(&key, value, seed, len);
            let result = client
                .put_object()
                .bucket(BUCKET)
                .key(&key)
                .body(ByteStream::from(body))
                .send()
                .await;
            let complete_ns = result.is_ok().then(|| clock.now_ns());
            if let Some(c) = complete_ns {
                record.successes_ns.push(c);
            } else {
                record.failed += 1;
            }
            record.ops.push((
                key,
                RegOp {
                    invoke_ns,
                    complete_ns,
                    kind: RegKind::Put(value),
                },
            ));
        } else if dice < 80 {
            match get(&client, &key).await {
                Ok(read) => {
                    let complete_ns = clock.now_ns();
                    record.successes_ns.push(complete_ns);
                    match read {
                        Ok(value) => record.ops.push((
                            key,
                            RegOp {
                                invoke_ns,
                                complete_ns: Some(complete_ns),
                                kind: RegKind::Get(value),
                            },
                        )),
                        Err(what) => record.corrupt.push((key, what)),
                    }
                }
                Err(_) => record.failed += 1,
            }
        } else if dice < 90 {
            let result = client.delete_object().bucket(BUCKET).key(&key).send().await;
            let complete_ns = result.is_ok().then(|| clock.now_ns());
            if let Some(c) = complete_ns {
                record.successes_ns.push(c);
            } else {
                record.failed += 1;
            }
            record.ops.push((
                key,
                RegOp {
                    invoke_ns,
                    complete_ns,
                    kind: RegKind::Delete,
                },
            ));
        } else {
            match list(&client).await {
                Ok(keys) => {
                    let complete_ns = clock.now_ns();
                    record.successes_ns.push(complete_ns);
                    record.lists.push(ListOp {
                        invoke_ns,
                        complete_ns,
                        keys,
                    });
                }
                Err(_) => record.failed += 1,
            }
        }
        if record.failed > failed_before {
            // Back off a little after a failure: an outage should not turn into tens of
            // thousands of refused requests (each a "maybe happened" write to check).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    record
}

/// GET: `Ok(Ok(value))` for a verified body or NoSuchKey (`None`), `Ok(Err(..))` for a
/// body that fails verification, `Err` when there was no answer.
pub async fn get(client: &Client, key: &str) -> anyhow::Result<Result<Option<ValueId>, String>> {
    match client.get_object().bucket(BUCKET).key(key).send().await {
        Ok(out) => {
            let body = tokio::time::timeout(Duration::from_secs(15), out.body.collect())
                .await
                .context("body timed out")?
                .context("read body")?
                .into_bytes();
            Ok(payload::verify_object(key, &body).map(Some))
        }
        Err(e) => {
            if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                Ok(Ok(None))
            } else {
                Err(anyhow::Error::new(e).context(format!("GET {key}")))
            }
        }
    }
}

/// Every key under `k/`, all pages.
async fn list(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    // 200 keys are 2 pages; a server that keeps saying "truncated" must not hold a
    // worker forever.
    for _ in 0..50 {
        let out = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix("k/")
            .max_keys(100)
            .set_continuation_token(token.clone())
            .send()
            .await?;
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => {
                if token.as_deref() == Some(t) {
                    bail!("LIST returned the same continuation token twice");
                }
                token = Some(t.to_string());
            }
            _ => return Ok(keys),
        }
    }
    bail!("LIST still truncated after 50 pages of 100 keys")
}

/// A minimal NBD client: fixed newstyle handshake with NBD_OPT_GO, then one request at a
/// time.
pub struct NbdClient {
    tcp: TcpStream,
    cookie: u64,
}

const NBD_TIMEOUT: Duration = Duration::from_secs(15);

impl NbdClient {
    /// Connects and attaches `export`. Fails while another holds the volume's lease.
    pub async fn connect(addr: &str, export: &str) -> anyhow::Result<NbdClient> {
        tokio::time::timeout(NBD_TIMEOUT, Self::handshake(addr, export))
            .await
            .context("NBD handshake timed out")?
    }

    async fn handshake(addr: &str, export: &str) -> anyhow::Result<NbdClient> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut hello = [0u8; 18];
        tcp.read_exact(&mut hello).await?;
        if hello[..8] != nbd::NBD_MAGIC.to_be_bytes() {
            bail!("not an NBD server");
        }
        tcp.write_all(&(nbd::CLIENT_FIXED_NEWSTYLE | nbd::CLIENT_NO_ZEROES).to_be_bytes())
            .await?;
        let mut payload = (export.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(export.as_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        let mut go = nbd::IHAVEOPT.to_be_bytes().to_vec();
        go.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
        go.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        go.extend_from_slice(&payload);
        tcp.write_all(&go).await?;
        loop {
            let mut header = [0u8; 20];
            tcp.read_exact(&mut header).await?;
            let reply = u32::from_be_bytes(header[12..16].try_into().expect("4"));
            let len = u32::from_be_bytes(header[16..20].try_into().expect("4"));
            let mut data = vec![0u8; len as usize];
            tcp.read_exact(&mut data).await?;
            match reply {
                nbd::REP_ACK => return Ok(NbdClient { tcp, cookie: 0 }),
                nbd::REP_INFO => continue,
                _ => bail!(
                    "NBD_OPT_GO refused ({reply:#x}): {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
    }

    async fn request(&mut self, command: u16, block: u32, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.cookie += 1;
        let request = nbd::Request {
            flags: 0,
            command,
            cookie: self.cookie,
            offset: u64::from(block) * payload::BLOCK_BYTES as u64,
            len: if command == nbd::CMD_FLUSH {
                0
            } else {
                payload::BLOCK_BYTES as u32
            },
        };
        let exchange = async {
            self.tcp.write_all(&nbd::encode_request(&request)).await?;
            self.tcp.write_all(data).await?;
            let mut reply = [0u8; 16];
            self.tcp.read_exact(&mut reply).await?;
            if reply[..4] != nbd::SIMPLE_REPLY_MAGIC.to_be_bytes()
                || reply[8..16] != self.cookie.to_be_bytes()
            {
                bail!("bad NBD reply");
            }
            let error = u32::from_be_bytes(reply[4..8].try_into().expect("4"));
            if error != 0 {
                bail!("NBD error {error}");
            }
            let mut buf = Vec::new();
            if command == nbd::CMD_READ {
                buf.resize(payload::BLOCK_BYTES, 0);
                self.tcp.read_exact(&mut buf).await?;
            }
            anyhow::Ok(buf)
        };
        tokio::time::timeout(NBD_TIMEOUT, exchange)
            .await
            .context("NBD request timed out")?
    }

    /// Writes one block.
    pub async fn write(&mut self, block: u32, data: &[u8]) -> anyhow::Result<()> {
        self.request(nbd::CMD_WRITE, block, data).await.map(drop)
    }

    /// Reads one block.
    pub async fn read(&mut self, block: u32) -> anyhow::Result<Vec<u8>> {
        self.request(nbd::CMD_READ, block, &[]).await
    }

    /// FLUSH.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.request(nbd::CMD_FLUSH, 0, &[]).await.map(drop)
    }
}

/// What the NBD writer recorded.
pub struct NbdRecord {
    /// Per block: the generation last acknowledged.
    pub acked: Vec<u32>,
    /// Per block: the generation covered by the last successful FLUSH.
    pub flushed: Vec<u32>,
    /// Completion times of acknowledged writes and flushes.
    pub successes_ns: Vec<u64>,
    /// Writes and flushes sent.
    pub invoked: u64,
    /// Writes and flushes that failed.
    pub failed: u64,
}

/// Connects, retrying while the server is down or the previous attachment's lease lives.
pub async fn nbd_connect_retrying(
    addr: &str,
    stop: Option<&AtomicBool>,
    give_up_after: Duration,
) -> anyhow::Result<NbdClient> {
    let deadline = Instant::now() + give_up_after;
    loop {
        match NbdClient::connect(addr, VOLUME).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                if Instant::now() > deadline || stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                    return Err(e.context(format!("attach {VOLUME} at {addr}")));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The NBD writer: stamped 4 KiB blocks in seeded order, a FLUSH every 32 writes,
/// reconnecting when the server goes away, until `stop`.
pub async fn nbd_writer(addr: String, seed: u64, clock: Clock, stop: Arc<AtomicBool>) -> NbdRecord {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_6264);
    let mut record = NbdRecord {
        acked: vec![0; BLOCKS as usize],
        flushed: vec![0; BLOCKS as usize],
        successes_ns: Vec::new(),
        invoked: 0,
        failed: 0,
    };
    let mut generation = 0u32;
    let mut client: Option<NbdClient> = None;
    let mut since_flush = 0;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            match nbd_connect_retrying(&addr, Some(&*stop), Duration::from_secs(3600)).await {
                Ok(c) => client = Some(c),
                Err(_) => break,
            }
        }
        let c = client.as_mut().expect("connected above");
        record.invoked += 1;
        let result = if since_flush >= 32 {
            let covered = record.acked.clone();
            let r = c.flush().await;
            if r.is_ok() {
                record.flushed = covered;
                since_flush = 0;
            }
            r
        } else {
            generation += 1;
            let block = rng.random_range(0..BLOCKS);
            let r = c
                .write(block, &payload::stamped_block(generation, block))
                .await;
            if r.is_ok() {
                record.acked[block as usize] = generation;
                since_flush += 1;
            }
            r
        };
        match result {
            Ok(()) => record.successes_ns.push(clock.now_ns()),
            Err(_) => {
                record.failed += 1;
                // The connection may be half-broken: start a new one.
                client = None;
            }
        }
    }
    record
}

/// Reads every block back (after the faults have healed).
pub async fn nbd_read_all(addr: &str) -> anyhow::Result<Vec<BlockRead>> {
    let mut client = nbd_connect_retrying(addr, None, Duration::from_secs(90)).await?;
    let mut out = Vec::with_capacity(BLOCKS as usize);
    for block in 0..BLOCKS {
        let data = client
            .read(block)
            .await
            .with_context(|| format!("read block {block}"))?;
        out.push(payload::read_stamp(&data, block));
    }
    Ok(out)
}
