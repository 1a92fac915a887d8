//! Starting roles: each binds its listener, serves, and reports where it listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use lauscha_core::config::{GatewayConfig, MetadataConfig, StorageNodeConfig};
use lauscha_core::{NodeInfo, NodeState};
use lauscha_gateway::{Gateway, GatewayError, MetaClient, NbdTls};
use lauscha_metadata::{MetaNode, MetaNodeOptions, MetaServer};
use lauscha_proto::LocalRoles;
use lauscha_storage_node::{
    DiskOptions, DiskShardStore, ScrubConfig, ScrubStats, Scrubber, ShardServer,
};

use crate::signals::StopSignals;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where a started role listens.
#[derive(Clone, Debug, Serialize)]
pub struct RoleInfo {
    /// `metadata`, `storage` or `gateway`.
    pub role: &'static str,
    /// Node id (1 for the gateway).
    pub id: u64,
    /// The main listen address.
    pub listen: SocketAddr,
    /// The gateway's admin API address.
    pub admin_listen: Option<SocketAddr>,
    /// The gateway's NBD address, if it serves block volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd_listen: Option<SocketAddr>,
    /// Storage nodes: failure domain.
    pub site: Option<String>,
    /// Storage nodes: host.
    pub host: Option<String>,
    /// Where its data lives.
    pub data_dir: Option<PathBuf>,
}

/// The roles running in this process.
///
/// They stop in two steps: the gateway's servers first (S3, admin, NBD, maintenance),
/// then metadata and the storage nodes. The gateway's NBD sessions end by merging their
/// journals and giving their leases back, which needs the other roles of the process
/// still serving.
pub struct Roles {
    /// Metadata voters, storage nodes, scrubbers.
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    /// The gateway's servers and maintenance.
    gateway_tasks: JoinSet<anyhow::Result<()>>,
    gateway_shutdown: CancellationToken,
    meta_nodes: Vec<MetaNode>,
    /// The gRPC services started here, which the gateway calls without the network.
    local: LocalRoles,
    /// Where each listens, in start order.
    pub started: Vec<RoleInfo>,
}

impl Roles {
    /// No roles yet.
    pub fn new() -> Roles {
        Roles {
            tasks: JoinSet::new(),
            shutdown: CancellationToken::new(),
            gateway_tasks: JoinSet::new(),
            gateway_shutdown: CancellationToken::new(),
            meta_nodes: Vec::new(),
            local: LocalRoles::default(),
            started: Vec::new(),
        }
    }

    /// Runs until a stop signal, until `stop` resolves, or until a role fails, then stops
    /// every role; a signal during that stop kills the process
    /// ([`StopSignals::exit_on_next`]), whichever way the stop began.
    pub async fn run_until(
        mut self,
        mut signals: StopSignals,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let ended = |result: Result<anyhow::Result<()>, tokio::task::JoinError>| match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("a role stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a role panicked: {e}")),
        };
        let outcome = tokio::select! {
            () = signals.next() => Ok(()),
            () = stop => Ok(()),
            Some(result) = self.tasks.join_next() => ended(result),
            Some(result) = self.gateway_tasks.join_next() => ended(result),
        };
        signals.exit_on_next();
        info!("shutting down");
        for (tasks, shutdown) in [
            (&mut self.gateway_tasks, &self.gateway_shutdown),
            (&mut self.tasks, &self.shutdown),
        ] {
            shutdown.cancel();
            while let Some(result) = tasks.join_next().await {
                if let Ok(Err(e)) = result {
                    warn!(error = %e, "role ended with an error during shutdown");
                }
            }
        }
        for node in &self.meta_nodes {
            if let Err(e) = node.shutdown().await {
                warn!(error = %e, "metadata voter shutdown");
            }
        }
        outcome
    }

    /// Starts a metadata voter.
    pub async fn start_metadata(
        &mut self,
        config: &MetadataConfig,
        root_credentials: Option<(String, String)>,
    ) -> anyhow::Result<RoleInfo> {
        let data_dir = PathBuf::from(&config.data_dir);
        let listener = bind_persistent(&config.listen, &data_dir).await?;
        let listen = listener.local_addr()?;
        let advertise = match &config.advertise {
            Some(a) => a.clone(),
            None => listen.to_string(),
        };
        let node = MetaNode::start(MetaNodeOptions {
            node_id: config.node_id,
            data_dir: data_dir.clone(),
            advertise: advertise.clone(),
            source_ip: config.source_ip,
            bootstrap: config.bootstrap,
            initial_voters: config
                .initial_voters
                .iter()
                .map(|v| (v.node_id, v.addr.clone()))
                .collect(),
        })
        .await
        .context("start metadata voter")?;
        let meta_service = MetaServer::new(node.clone()).into_service();
        self.local
            .register(&[&advertise, &listen.to_string()], meta_service.clone());
        let server = tonic::transport::Server::builder()
            .add_service(meta_service)
            .add_service(node.raft_server().into_service());
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            server
                .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
                .await
                .context("metadata gRPC server")
        });
        self.meta_nodes.push(node.clone());
        if config.bootstrap {
            node.wait_for_leader(Duration::from_secs(30))
                .await
                .context("wait for the metadata voter to become leader")?;
        }
        let credentials = root_credentials.or_else(|| {
            config
                .root_access_key
                .clone()
                .zip(config.root_secret_key.clone())
        });
        // Only the voter that founds the cluster writes them (a follower could not).
        if let Some((access_key, secret_key)) = credentials.filter(|_| config.bootstrap) {
            node.ensure_root_credentials(&access_key, &secret_key, now_ms())
                .await
                .context("create root credentials")?;
        }
        info!(node_id = config.node_id, %listen, "metadata voter serving");
        let info = RoleInfo {
            role: "metadata",
            id: config.node_id,
            listen,
            admin_listen: None,
            nbd_listen: None,
            site: None,
            host: None,
            data_dir: Some(data_dir),
        };
        self.started.push(info.clone());
        Ok(info)
    }

    /// Starts a storage node and registers it with metadata.
    pub async fn start_storage(&mut self, config: &StorageNodeConfig) -> anyhow::Result<RoleInfo> {
        let data_dir = PathBuf::from(&config.data_dir);
        let options = DiskOptions {
            small_shard_segments: config.small_shard_segments,
        };
        let store = DiskShardStore::open_with_options(&data_dir, config.id(), options)
            .await
            .with_context(|| format!("open shard store of node {}", config.node_id))?;
        let listener = bind_persistent(&config.listen, &data_dir).await?;
        let listen = listener.local_addr()?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| listen.to_string());
        let scrub_stats = Arc::new(ScrubStats::default());
        let scrubber = Scrubber::new(
            config.id(),
            store.clone(),
            ScrubConfig {
                bytes_per_s: config.scrub_bytes_per_s,
                pass_interval: Duration::from_secs(config.scrub_interval_s),
            },
            scrub_stats.clone(),
        );
        let scrub_stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            scrubber.run(scrub_stop).await;
            Ok(())
        });
        let server = ShardServer::new(config.id(), config.capacity_bytes, store, scrub_stats);
        let service = server.clone().into_service();
        self.local
            .register(&[&advertise, &listen.to_string()], service.clone());
        self.local
            .register_shard_writes(&[&advertise, &listen.to_string()], Arc::new(server));
        let shutdown = self.shutdown.clone();
        let node_id = config.node_id;
        self.tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
                .await
                .with_context(|| format!("storage node {node_id} gRPC server"))
        });
        let node = NodeInfo {
            id: config.id(),
            site: config.site.clone(),
            host: config.host_name(),
            addr: advertise,
            capacity_bytes: config.capacity_bytes,
            state: NodeState::Up,
        };
        if !config.metadata_endpoints.is_empty() {
            let local = self.local.clone();
            register(
                &config.metadata_endpoints,
                config.source_ip,
                local,
                node.clone(),
            )
            .await?;
        }
        info!(node_id, %listen, site = %config.site, "storage node serving");
        let info = RoleInfo {
            role: "storage",
            id: u64::from(config.node_id),
            listen,
            admin_listen: None,
            nbd_listen: None,
            site: Some(config.site.clone()),
            host: Some(config.host_name()),
            data_dir: Some(data_dir),
        };
        self.started.push(info.clone());
        Ok(info)
    }

    /// Starts the gateway's S3 and admin servers.
    pub async fn start_gateway(&mut self, config: &GatewayConfig) -> anyhow::Result<RoleInfo> {
        let gateway = Gateway::with_local_roles(config.clone(), self.local.clone())
            .context("configure gateway")?;
        let s3 = TcpListener::bind(&config.s3_listen)
            .await
            .with_context(|| format!("listen for S3 on {}", config.s3_listen))?;
        let admin = TcpListener::bind(&config.admin_listen)
            .await
            .with_context(|| format!("listen for the admin API on {}", config.admin_listen))?;
        let (listen, admin_listen) = (s3.local_addr()?, admin.local_addr()?);
        let (g, shutdown) = (gateway.clone(), self.gateway_shutdown.clone());
        self.gateway_tasks.spawn(async move {
            g.serve_s3(s3, shutdown.cancelled_owned())
                .await
                .context("S3 server")
        });
        let (g, shutdown) = (gateway.clone(), self.gateway_shutdown.clone());
        self.gateway_tasks.spawn(async move {
            g.serve_admin(admin, shutdown.cancelled_owned())
                .await
                .context("admin server")
        });
        let mut nbd_listen = None;
        if let Some(addr) = &config.nbd_listen {
            let tls = match &config.nbd_tls {
                Some(tls) => Some(Arc::new(NbdTls::load(tls)?)),
                None => None,
            };
            let nbd = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen for NBD on {addr}"))?;
            nbd_listen = Some(nbd.local_addr()?);
            let (g, shutdown) = (gateway.clone(), self.gateway_shutdown.clone());
            self.gateway_tasks.spawn(async move {
                g.serve_nbd(nbd, tls, shutdown.cancelled_owned())
                    .await
                    .context("NBD server")
            });
        }
        let (g, shutdown) = (gateway, self.gateway_shutdown.clone());
        self.gateway_tasks.spawn(async move {
            g.run_maintenance(shutdown).await;
            Ok(())
        });
        info!(%listen, %admin_listen, region = %config.region, "gateway serving");
        let info = RoleInfo {
            role: "gateway",
            id: 1,
            listen,
            admin_listen: Some(admin_listen),
            nbd_listen,
            site: None,
            host: None,
            data_dir: None,
        };
        self.started.push(info.clone());
        Ok(info)
    }
}

/// Accepted gRPC connections with Nagle off: replies end in a partial segment that would
/// otherwise wait for the peer's delayed ACK (40 ms per listing page, measured).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// Registers a storage node, retrying while metadata is not reachable yet (processes of a
/// cluster start in any order).
async fn register(
    endpoints: &[String],
    source_ip: Option<std::net::IpAddr>,
    local: LocalRoles,
    node: NodeInfo,
) -> anyhow::Result<()> {
    let client =
        MetaClient::with_local_roles(endpoints, source_ip, local).context("metadata endpoints")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(50);
    loop {
        match client.register_node(node.clone()).await {
            Ok(map) => {
                info!(node_id = %node.id, map_epoch = map.epoch, "registered with metadata");
                return Ok(());
            }
            Err(e @ GatewayError::Meta { .. }) if tokio::time::Instant::now() < deadline => {
                warn!(node_id = %node.id, error = %e, "metadata not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => bail!(
                "register node {} with metadata at {endpoints:?}: {e}",
                node.id
            ),
        }
    }
}

/// Binds `listen`. Port 0 picks a free port the first time and keeps it for this data
/// directory (in `listen.addr`), so that a restarted process comes back where the rest of
/// the cluster expects it.
async fn bind_persistent(listen: &str, data_dir: &Path) -> anyhow::Result<TcpListener> {
    let requested: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen:?}"))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("create data directory {}", data_dir.display()))?;
    let remembered = data_dir.join("listen.addr");
    let addr = if requested.port() == 0 {
        match std::fs::read_to_string(&remembered) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{} holds no address", remembered.display()))?,
            Err(_) => requested,
        }
    } else {
        requested
    };
    let listener = bind_when_free(addr).await?;
    if requested.port() == 0 {
        std::fs::write(&remembered, listener.local_addr()?.to_string())
            .with_context(|| format!("write {}", remembered.display()))?;
    }
    Ok(listener)
}

/// How long a restarting role waits for its address to be released.
const BIND_PATIENCE: Duration = Duration::from_secs(30);

/// Binds `addr`, waiting while it is in use: a role restarted on its old port may find
/// that port taken for a moment, by the socket of its previous life or by another
/// process's outgoing connection that the kernel gave the (then free) port as its source.
async fn bind_when_free(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    let mut warned = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                if !warned {
                    warn!(%addr, "address in use; waiting for it to be released");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "listen on {addr} (still in use after {} s? another process may own it)",
                    BIND_PATIENCE.as_secs()
                )));
            }
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
