//! `lauscha dev`: the whole system on one machine, in one process or (with `--cluster`) as
//! one process per role under a supervisor.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use lauscha_core::SpreadLevel;
use lauscha_core::config::{
    GatewayConfig, MetadataConfig, NbdTlsConfig, PolicyConfig, ServerConfig, StorageNodeConfig,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tracing::{info, warn};

use crate::roles::{RoleInfo, Roles};
use crate::signals::StopSignals;

/// Options of `lauscha dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where all data lives; created if missing, reused if present.
    #[arg(long, default_value = "lauscha-data")]
    pub data_dir: PathBuf,
    /// S3 listen address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub s3_listen: String,
    /// Admin API listen address.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub admin_listen: String,
    /// NBD listen address for block volumes (no authentication: keep it on loopback or
    /// the VM hosts' network).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: String,
    /// Serve NBD only over TLS (NBD_OPT_STARTTLS): the server's certificate chain, PEM.
    /// Needs --nbd-tls-key and --nbd-tls-client-ca.
    #[arg(long, requires_all = ["nbd_tls_key", "nbd_tls_client_ca"])]
    pub nbd_tls_cert: Option<PathBuf>,
    /// The private key of --nbd-tls-cert, PEM.
    #[arg(long, requires = "nbd_tls_cert")]
    pub nbd_tls_key: Option<PathBuf>,
    /// The CA whose client certificates are accepted, PEM; a client certificate's subject
    /// CN names the tenant whose volumes it may attach.
    #[arg(long, requires = "nbd_tls_cert")]
    pub nbd_tls_client_ca: Option<PathBuf>,
    /// Revoked client certificates: CRLs in PEM from every CA that issues them. Read
    /// again when the file changes.
    #[arg(long, requires = "nbd_tls_cert")]
    pub nbd_tls_client_crl: Option<PathBuf>,
    /// The region clients sign for.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Storage nodes, split over two sites.
    #[arg(long, default_value_t = 6)]
    pub storage_nodes: u32,
    /// Run every role as its own OS process (metadata, storage nodes, gateway).
    #[arg(long)]
    pub cluster: bool,
    /// Metadata voters (with --cluster): 1, 3 or 5 processes.
    #[arg(long, default_value_t = 1)]
    pub meta: u64,
    /// Largest object a single PUT may carry, bytes.
    #[arg(long, default_value_t = 5 << 30)]
    pub max_object_bytes: u64,
    /// The gateway's cache of verified shard blocks for small reads, bytes; 0 turns it off.
    #[arg(long, default_value_t = 256 << 20)]
    pub read_cache_bytes: u64,
    /// A volume extent is merged at the latest when its oldest unmerged write is this
    /// old, seconds (`gateway.volume_merge_age_ms`).
    #[arg(long, default_value_t = 10)]
    pub volume_merge_age_s: u64,
    /// Storage nodes append shards of at most 256 KiB to segment files; `false` writes a
    /// file per shard (`storage.small_shard_segments`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub small_shard_segments: bool,
}

/// Root credentials, as written to `DATA_DIR/credentials.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret.
    pub secret_access_key: String,
    /// Region.
    pub region: String,
    /// S3 endpoint URL.
    pub endpoint: String,
}

/// One process of the dev system, as written to `DATA_DIR/cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// Role.
    pub role: String,
    /// Node id.
    pub id: u64,
    /// OS process id.
    pub pid: u32,
    /// Main listen address.
    pub listen: String,
    /// Admin API (gateway only).
    pub admin_listen: Option<String>,
    /// Site (storage only).
    pub site: Option<String>,
    /// Host (storage only).
    pub host: Option<String>,
    /// Data directory.
    pub data_dir: Option<String>,
    /// Command line that (re)starts this process (`--cluster` only).
    pub argv: Vec<String>,
}

/// `DATA_DIR/cluster.json`: what runs where. Written once everything is ready.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    /// `dev` or `cluster`.
    pub mode: String,
    /// S3 endpoint URL.
    pub s3_endpoint: String,
    /// Admin API URL.
    pub admin_endpoint: String,
    /// NBD address (`nbd://host:port`, `nbds://` with TLS), if block volumes are served.
    pub nbd_endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Every process.
    pub processes: Vec<ProcessEntry>,
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect()
}

/// The root credentials: from LAUSCHA_ACCESS_KEY / LAUSCHA_SECRET_KEY when set, else the
/// ones generated on the first start and kept in the data directory.
fn credentials(data_dir: &Path, region: &str, endpoint: &str) -> anyhow::Result<Credentials> {
    let path = data_dir.join("credentials.json");
    let env = (
        std::env::var("LAUSCHA_ACCESS_KEY").ok(),
        std::env::var("LAUSCHA_SECRET_KEY").ok(),
    );
    let (access_key_id, secret_access_key) = match env {
        (Some(a), Some(s)) => (a, s),
        (Some(_), None) | (None, Some(_)) => {
            bail!("set both LAUSCHA_ACCESS_KEY and LAUSCHA_SECRET_KEY, or neither")
        }
        (None, None) => match std::fs::read(&path) {
            Ok(bytes) => {
                let existing: Credentials = serde_json::from_slice(&bytes)
                    .with_context(|| format!("read {}", path.display()))?;
                (existing.access_key_id, existing.secret_access_key)
            }
            Err(_) => (
                format!(
                    "LK{}",
                    random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 18)
                ),
                random_string(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                    40,
                ),
            ),
        },
    };
    let credentials = Credentials {
        access_key_id,
        secret_access_key,
        region: region.to_string(),
        endpoint: endpoint.to_string(),
    };
    write_atomically(&path, &serde_json::to_vec_pretty(&credentials)?)?;
    Ok(credentials)
}

/// Writes a file so that readers see the old or the new content, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn metadata_config(data_dir: &Path, node_id: u64) -> MetadataConfig {
    // Voter 1 keeps the plain name, so a single-voter data directory looks as before.
    let dir = if node_id == 1 {
        "metadata".to_string()
    } else {
        format!("metadata-{node_id}")
    };
    MetadataConfig {
        node_id,
        data_dir: data_dir.join(dir).display().to_string(),
        listen: "127.0.0.1:0".into(),
        advertise: None,
        source_ip: None,
        bootstrap: true,
        root_access_key: None,
        root_secret_key: None,
        initial_voters: Vec::new(),
    }
}

fn endpoints(meta: &[SocketAddr]) -> Vec<String> {
    meta.iter().map(|a| format!("http://{a}")).collect()
}

fn storage_config(
    data_dir: &Path,
    node_id: u32,
    n_nodes: u32,
    meta: &[SocketAddr],
) -> StorageNodeConfig {
    // First half in site-a, second half in site-b; one host per node.
    let site = if node_id <= n_nodes.div_ceil(2) {
        "site-a"
    } else {
        "site-b"
    };
    StorageNodeConfig {
        node_id,
        data_dir: data_dir
            .join(format!("node-{node_id}"))
            .display()
            .to_string(),
        listen: "127.0.0.1:0".into(),
        advertise: None,
        source_ip: None,
        site: site.into(),
        host: Some(format!("host-{node_id}")),
        capacity_bytes: 1 << 40,
        metadata_endpoints: endpoints(meta),
        scrub_bytes_per_s: 50_000_000,
        scrub_interval_s: 86_400,
        small_shard_segments: true,
    }
}

fn gateway_config(args: &DevArgs, meta: &[SocketAddr]) -> GatewayConfig {
    let mut config = GatewayConfig::with_metadata(endpoints(meta));
    config.s3_listen = args.s3_listen.clone();
    config.admin_listen = args.admin_listen.clone();
    config.nbd_listen = Some(args.nbd_listen.clone());
    if let (Some(cert), Some(key), Some(client_ca)) = (
        &args.nbd_tls_cert,
        &args.nbd_tls_key,
        &args.nbd_tls_client_ca,
    ) {
        // Absolute, since --cluster hands the config to processes in other directories.
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        config.nbd_tls = Some(NbdTlsConfig {
            cert: abs(cert),
            key: abs(key),
            client_ca: abs(client_ca),
            client_crl: args.nbd_tls_client_crl.as_ref().map(abs),
        });
    }
    config.region = args.region.clone();
    config.max_object_bytes = args.max_object_bytes;
    config.read_cache_bytes = args.read_cache_bytes;
    config.volume_merge_age_ms = args.volume_merge_age_s.saturating_mul(1000);
    if args.storage_nodes < 6 {
        // Fewer nodes than 4+2 needs: the best protection the nodes allow.
        let m = u8::from(args.storage_nodes >= 2).max((args.storage_nodes / 3) as u8);
        config.default_policy.data_shards = (args.storage_nodes as u8 - m).max(1);
        config.default_policy.parity_shards = m;
    }
    if args.storage_nodes >= 4 {
        // Two shards in each of the two sites: any one site can be lost.
        config.policies.insert(
            "site-redundant".into(),
            PolicyConfig {
                data_shards: 2,
                parity_shards: 2,
                spread: SpreadLevel::Site,
            },
        );
    }
    config
}

fn entry(info: &RoleInfo, pid: u32, argv: Vec<String>) -> ProcessEntry {
    ProcessEntry {
        role: info.role.to_string(),
        id: info.id,
        pid,
        listen: info.listen.to_string(),
        admin_listen: info.admin_listen.map(|a| a.to_string()),
        site: info.site.clone(),
        host: info.host.clone(),
        data_dir: info.data_dir.as_ref().map(|d| d.display().to_string()),
        argv,
    }
}

fn print_banner(cluster: &ClusterFile, credentials: &Credentials, data_dir: &Path) {
    let endpoint = &cluster.s3_endpoint;
    println!(
        "\nLauscha dev is running ({} storage nodes, {} mode).\n\
         \n  S3 endpoint:  {endpoint}   (region {})\
         \n  Admin API:    {}\
         \n  NBD:          {}\
         \n  Access key:   {}\
         \n  Secret key:   {}\
         \n  Data:         {}\n\
         \nTry it with the aws cli:\n\
         \n  export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_DEFAULT_REGION={}\
         \n  aws --endpoint-url {endpoint} s3 mb s3://demo\
         \n  aws --endpoint-url {endpoint} s3 cp README.md s3://demo/\
         \n  aws --endpoint-url {endpoint} s3 ls s3://demo\n\
         \nCtrl-C stops it gracefully (attached volumes are detached, up to 30 s); a second\
         \nCtrl-C stops it at once, losing nothing acknowledged.\n",
        cluster
            .processes
            .iter()
            .filter(|p| p.role == "storage")
            .count(),
        cluster.mode,
        cluster.region,
        cluster.admin_endpoint,
        cluster.nbd_endpoint.as_deref().unwrap_or("off"),
        credentials.access_key_id,
        credentials.secret_access_key,
        data_dir.display(),
        credentials.access_key_id,
        credentials.secret_access_key,
        cluster.region,
    );
    let _ = std::io::stdout().flush();
}

/// Runs `lauscha dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.storage_nodes == 0 {
        bail!("--storage-nodes must be at least 1");
    }
    if !matches!(args.meta, 1 | 3 | 5) {
        bail!("--meta must be 1, 3 or 5: a Raft group needs an odd number of voters");
    }
    if args.meta > 1 && !args.cluster {
        bail!(
            "--meta {} needs --cluster: each voter runs as its own process",
            args.meta
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data directory {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    // A stale cluster.json would tell waiting tools we are ready before we are.
    let _ = std::fs::remove_file(data_dir.join("cluster.json"));
    if args.cluster {
        run_cluster(args, &data_dir).await
    } else {
        run_in_process(args, &data_dir).await
    }
}

async fn run_in_process(args: DevArgs, data_dir: &Path) -> anyhow::Result<()> {
    let mut roles = Roles::new();
    let mut meta_config = metadata_config(data_dir, 1);
    let placeholder = format!("http://{}", args.s3_listen);
    let creds = credentials(data_dir, &args.region, &placeholder)?;
    meta_config.root_access_key = Some(creds.access_key_id.clone());
    meta_config.root_secret_key = Some(creds.secret_access_key.clone());
    let meta = roles.start_metadata(&meta_config, None).await?;
    let meta_addrs = [meta.listen];
    for node_id in 1..=args.storage_nodes {
        roles
            .start_storage(&StorageNodeConfig {
                small_shard_segments: args.small_shard_segments,
                ..storage_config(data_dir, node_id, args.storage_nodes, &meta_addrs)
            })
            .await?;
    }
    let gateway_config =
        crate::config::override_section("gateway", gateway_config(&args, &meta_addrs))?;
    let gateway = roles.start_gateway(&gateway_config).await?;
    let s3_endpoint = format!("http://{}", gateway.listen);
    let creds = Credentials {
        endpoint: s3_endpoint.clone(),
        ..creds
    };
    write_atomically(
        &data_dir.join("credentials.json"),
        &serde_json::to_vec_pretty(&creds)?,
    )?;
    let pid = std::process::id();
    let cluster = ClusterFile {
        mode: "dev".into(),
        s3_endpoint,
        admin_endpoint: format!(
            "http://{}",
            gateway.admin_listen.expect("gateway has admin")
        ),
        nbd_endpoint: gateway.nbd_listen.map(|a| nbd_endpoint(&args, a)),
        region: args.region.clone(),
        processes: roles
            .started
            .iter()
            .map(|r| entry(r, pid, Vec::new()))
            .collect(),
    };
    write_atomically(
        &data_dir.join("cluster.json"),
        &serde_json::to_vec_pretty(&cluster)?,
    )?;
    let signals = StopSignals::install()?;
    print_banner(&cluster, &creds, data_dir);
    roles.run_until(signals, std::future::pending()).await
}

/// A child process of `--cluster` and the pipe whose closing tells it to stop.
struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    info: RoleInfo,
    argv: Vec<String>,
}

/// A role's "ready" report on the child's stdout (see `server`).
#[derive(Deserialize)]
struct ReadyLine {
    role: String,
    id: u64,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    #[serde(default)]
    nbd_listen: Option<SocketAddr>,
    site: Option<String>,
    host: Option<String>,
    data_dir: Option<PathBuf>,
}

async fn spawn_role(
    data_dir: &Path,
    name: &str,
    config: &ServerConfig,
) -> anyhow::Result<Supervised> {
    let supervised = spawn_role_once(data_dir, name, config).await?;
    // A restart must come back at the same address and must never bootstrap again (a
    // voter whose data directory was wiped rejoins; it must not found a second cluster).
    let mut settled = config.clone();
    if let Some(meta) = &mut settled.metadata {
        meta.listen = supervised.info.listen.to_string();
        meta.bootstrap = false;
        meta.initial_voters.clear();
        meta.root_access_key = None;
        meta.root_secret_key = None;
    }
    for storage in &mut settled.storage {
        storage.listen = supervised.info.listen.to_string();
    }
    let config_path = data_dir.join("config").join(format!("{name}.toml"));
    write_atomically(&config_path, toml::to_string_pretty(&settled)?.as_bytes())?;
    Ok(supervised)
}

async fn spawn_role_once(
    data_dir: &Path,
    name: &str,
    config: &ServerConfig,
) -> anyhow::Result<Supervised> {
    let config_dir = data_dir.join("config");
    let log_dir = data_dir.join("logs");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(&log_dir)?;
    let config_path = config_dir.join(format!("{name}.toml"));
    write_atomically(&config_path, toml::to_string_pretty(config)?.as_bytes())?;
    let exe = std::env::current_exe().context("find the lauscha executable")?;
    let argv = vec![
        exe.display().to_string(),
        "server".to_string(),
        "--config".to_string(),
        config_path.display().to_string(),
    ];
    let log_path = log_dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    // A process group of its own: Ctrl-C in a terminal reaches the whole foreground
    // group, and would stop every role at once instead of in `stop_children`'s order.
    // A child whose supervisor dies still stops: its stdin ends.
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .arg("--exit-on-stdin-eof")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    // The child prints one JSON line once its role serves.
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .with_context(|| format!("read readiness of {name}"))?;
    let ready: ReadyLine = serde_json::from_str(line.trim()).with_context(|| {
        format!(
            "{name} exited before it was ready; see {}",
            log_path.display()
        )
    })?;
    let role = match ready.role.as_str() {
        "metadata" => "metadata",
        "storage" => "storage",
        "gateway" => "gateway",
        other => bail!("{name} reported unknown role {other}"),
    };
    Ok(Supervised {
        child,
        stdin,
        info: RoleInfo {
            role,
            id: ready.id,
            listen: ready.listen,
            admin_listen: ready.admin_listen,
            nbd_listen: ready.nbd_listen,
            site: ready.site,
            host: ready.host,
            data_dir: ready.data_dir,
        },
        argv,
    })
}

async fn run_cluster(args: DevArgs, data_dir: &Path) -> anyhow::Result<()> {
    let placeholder = format!("http://{}", args.s3_listen);
    let creds = credentials(data_dir, &args.region, &placeholder)?;
    let mut children: Vec<Supervised> = Vec::new();
    let result = async {
        // Voters 2..N first, so that voter 1 can found the cluster with all of them.
        let mut others = Vec::new();
        for node_id in 2..=args.meta {
            let mut voter = metadata_config(data_dir, node_id);
            voter.bootstrap = false;
            let config = ServerConfig {
                metadata: Some(voter),
                ..Default::default()
            };
            let child = spawn_role(data_dir, &format!("metadata-{node_id}"), &config).await?;
            others.push(lauscha_core::config::VoterAddress {
                node_id,
                addr: child.info.listen.to_string(),
            });
            children.push(child);
        }
        let mut first = metadata_config(data_dir, 1);
        first.root_access_key = Some(creds.access_key_id.clone());
        first.root_secret_key = Some(creds.secret_access_key.clone());
        first.initial_voters = others;
        let config = ServerConfig {
            metadata: Some(first),
            ..Default::default()
        };
        children.insert(0, spawn_role(data_dir, "metadata-1", &config).await?);
        let meta_addrs: Vec<SocketAddr> = children.iter().map(|c| c.info.listen).collect();
        for node_id in 1..=args.storage_nodes {
            let config = ServerConfig {
                storage: vec![StorageNodeConfig {
                    small_shard_segments: args.small_shard_segments,
                    ..storage_config(data_dir, node_id, args.storage_nodes, &meta_addrs)
                }],
                ..Default::default()
            };
            children.push(spawn_role(data_dir, &format!("storage-{node_id}"), &config).await?);
        }
        let config = ServerConfig {
            gateway: Some(gateway_config(&args, &meta_addrs)),
            ..Default::default()
        };
        children.push(spawn_role(data_dir, "gateway", &config).await?);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        stop_children(&mut children).await;
        return Err(e);
    }
    let gateway = children.last().expect("gateway started").info.clone();
    let s3_endpoint = format!("http://{}", gateway.listen);
    let creds = Credentials {
        endpoint: s3_endpoint.clone(),
        ..creds
    };
    write_atomically(
        &data_dir.join("credentials.json"),
        &serde_json::to_vec_pretty(&creds)?,
    )?;
    let cluster = ClusterFile {
        mode: "cluster".into(),
        s3_endpoint,
        admin_endpoint: format!(
            "http://{}",
            gateway.admin_listen.expect("gateway has admin")
        ),
        nbd_endpoint: gateway.nbd_listen.map(|a| nbd_endpoint(&args, a)),
        region: args.region.clone(),
        processes: children
            .iter()
            .map(|c| entry(&c.info, c.child.id().unwrap_or(0), c.argv.clone()))
            .collect(),
    };
    write_atomically(
        &data_dir.join("cluster.json"),
        &serde_json::to_vec_pretty(&cluster)?,
    )?;
    let mut signals = StopSignals::install()?;
    print_banner(&cluster, &creds, data_dir);
    // Children that die (a test killed one) are left dead: whoever killed it restarts it
    // with the argv in cluster.json. The supervisor only ends them all on shutdown.
    signals.next().await;
    let forced = tokio::select! {
        () = stop_children(&mut children) => false,
        () = signals.next() => true,
    };
    if forced {
        warn!("second stop signal: killing the children without waiting for them");
        for child in &mut children {
            let _ = child.child.start_kill();
        }
        for child in &mut children {
            let _ = child.child.wait().await;
        }
        bail!(
            "stopped by a second signal: the children were killed (nothing acknowledged is lost; leases of attached volumes expire in 10 s)"
        );
    }
    Ok(())
}

/// Stops the children one at a time, the last started first (the gateway, then the
/// storage nodes, then the metadata voters, the bootstrap voter last), so that the
/// gateway ends its NBD sessions (journals merged, leases given back) while the roles it
/// needs still serve. Each is asked by closing its stdin and killed if it has not stopped
/// in time: the gateway gets its NBD drain (`NBD_DRAIN_TIMEOUT`) and 10 s more, the
/// others 10 s.
async fn stop_children(children: &mut [Supervised]) {
    info!("stopping the children, the last started first");
    for child in children.iter_mut().rev() {
        drop(child.stdin.take());
        let patience = if child.info.role == "gateway" {
            lauscha_gateway::NBD_DRAIN_TIMEOUT + Duration::from_secs(10)
        } else {
            Duration::from_secs(10)
        };
        if tokio::time::timeout(patience, child.child.wait())
            .await
            .is_err()
        {
            warn!(
                role = child.info.role,
                patience_s = patience.as_secs(),
                "child did not stop in time; killing it"
            );
            let _ = child.child.kill().await;
        }
    }
    info!("all children stopped");
}

/// The NBD URI clients use: `nbds://` when only TLS is served (libnbd's scheme for it).
fn nbd_endpoint(args: &DevArgs, addr: SocketAddr) -> String {
    let scheme = if args.nbd_tls_cert.is_some() {
        "nbds"
    } else {
        "nbd"
    };
    format!("{scheme}://{addr}")
}
