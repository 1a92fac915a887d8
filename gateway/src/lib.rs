//! The gateway: the S3 API, the erasure-coded data path, and the admin API.
//!
//! Architecture Invariant: the gateway holds no state of its own beyond caches. It reaches
//! metadata and storage nodes only through their gRPC clients (`meta_client`, `nodes`), so
//! every role can run as its own process.
//!
//! Architecture Invariant: a PUT is acknowledged only after every shard of every stripe is
//! durable on its node and the version is committed through Raft; shards of a PUT that
//! fails before its commit are deleted; once the commit is sent, only a refusal deletes them
//! (unknown outcome or an abandoned request: left to GC, see `write::Uncommitted`).
//!
//! Architecture Invariant: no byte reaches a client unverified. Every block read from a
//! node is checked against the block hashes, which are checked against the shard digest in
//! metadata; a stripe that cannot be verified is rebuilt from parity or the read fails.

mod admin;
mod attachments;
mod auth;
mod block_cache;
mod cors;
mod error;
mod gateway;
mod http;
mod lifecycle;
mod log_throttle;
mod maintenance;
mod meta_client;
mod nbd;
mod nbd_tls;
mod nodes;
mod policy;
mod read;
mod s3;
mod versioned;
mod volume;
mod write;

use lauscha_proto::LocalRoles;
use std::future::Future;
use std::sync::Arc;

pub use error::GatewayError;
use lauscha_core::config::GatewayConfig;
pub use meta_client::MetaClient;
pub use nbd::NBD_DRAIN_TIMEOUT;
pub use nbd_tls::{MAX_UNAUTHENTICATED_CONNECTIONS, MAX_UNAUTHENTICATED_PER_ADDRESS, NbdTls};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// Largest request XML body, bytes.
const MAX_XML_BODY_BYTES: usize = 2 << 20;
/// Largest file of a browser (form POST) upload, bytes.
const MAX_POST_FILE_BYTES: u64 = 64 << 20;

/// A gateway: cheap to clone, shared by its servers.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<gateway::Inner>,
    maintenance: Arc<maintenance::Maintenance>,
}

impl Gateway {
    /// Validates `config` and prepares clients (they connect lazily).
    pub fn new(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        Gateway::with_local_roles(config, LocalRoles::default())
    }

    /// [`Gateway::new`] in a process that also runs the roles in `local`: calls to them
    /// skip the network (see `lauscha_proto::LocalRoles`).
    pub fn with_local_roles(
        config: GatewayConfig,
        local: LocalRoles,
    ) -> Result<Gateway, GatewayError> {
        let inner = Arc::new(gateway::Inner::new(config, local)?);
        Ok(Gateway {
            maintenance: Arc::new(maintenance::Maintenance::new(inner.clone())),
            inner,
        })
    }

    /// Runs background maintenance (repair, rebalance, drain, GC) until `stop`, if the
    /// config enables it on this gateway.
    pub async fn run_maintenance(&self, stop: tokio_util::sync::CancellationToken) {
        if self.inner.config.maintenance.enabled {
            self.maintenance.clone().run(stop).await;
        } else {
            stop.cancelled().await;
        }
    }

    /// The metadata client this gateway uses.
    pub fn meta(&self) -> &MetaClient {
        &self.inner.meta
    }

    /// Serves S3 on `listener` until `shutdown` resolves.
    pub async fn serve_s3(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut builder = S3ServiceBuilder::new(s3::S3Gateway {
            inner: self.inner.clone(),
        });
        builder.set_auth(auth::MetaAuth {
            inner: self.inner.clone(),
        });
        builder.set_access(auth::PolicyAccess);
        // Request XML (DeleteObjects with 1,000 keys of 1 KiB is the largest legitimate
        // body) is parsed whole: cap it. s3s holds a POST upload's file in memory: cap
        // it too; larger browser uploads go multipart.
        let mut config = s3s::config::S3Config::default();
        config.xml_max_body_size = MAX_XML_BODY_BYTES;
        config.post_object_max_file_size = MAX_POST_FILE_BYTES;
        builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
            config,
        ))));
        http::serve_s3(self.inner.clone(), builder.build(), listener, shutdown).await
    }

    /// Serves NBD (block volumes) on `listener` until `shutdown` resolves; with `tls`
    /// (see [`NbdTls::load`]), only over TLS and per tenant.
    pub async fn serve_nbd(
        &self,
        listener: TcpListener,
        tls: Option<Arc<NbdTls>>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        nbd::serve_nbd(
            nbd::Exports::new(self.inner.clone()),
            tls,
            listener,
            shutdown,
        )
        .await
    }

    /// Serves the admin API on `listener` until `shutdown` resolves.
    pub async fn serve_admin(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        http::serve_admin(
            self.inner.clone(),
            self.maintenance.clone(),
            listener,
            shutdown,
        )
        .await
    }
}
