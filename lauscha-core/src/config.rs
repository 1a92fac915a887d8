//! Configuration types, one per role, as read from TOML (`lauscha server --config FILE`).
//!
//! Every field says its unit and default. `validate` turns raw values into checked ones at
//! start-up so that a bad config fails before anything listens.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{CoreError, NodeId, PlacementPolicy, SpreadLevel, TenantId};

/// The whole file: each section present runs that role in this process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The metadata voter, if this process runs one.
    pub metadata: Option<MetadataConfig>,
    /// Storage nodes (one per disk) this process runs.
    #[serde(default)]
    pub storage: Vec<StorageNodeConfig>,
    /// The gateway, if this process runs one.
    pub gateway: Option<GatewayConfig>,
}

impl ServerConfig {
    /// Checks every section; a config that runs no role is an error.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.metadata.is_none() && self.storage.is_empty() && self.gateway.is_none() {
            return Err(CoreError::Config(
                "the config names no role: add a [metadata], [[storage]] or [gateway] section"
                    .into(),
            ));
        }
        if let Some(meta) = &self.metadata {
            meta.validate()?;
        }
        for storage in &self.storage {
            storage.validate()?;
        }
        if let Some(gateway) = &self.gateway {
            gateway.validate()?;
        }
        Ok(())
    }
}

/// A metadata voter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// Raft node id, unique among voters. No default.
    pub node_id: u64,
    /// Directory for the RocksDB log and state machine. No default.
    pub data_dir: String,
    /// gRPC listen address (Raft and the metadata API), `ip:port`. No default.
    pub listen: String,
    /// Address other roles use to reach this voter; default: `listen`.
    pub advertise: Option<String>,
    /// Source address of the connections this role opens to other roles. Set it on a
    /// host with several addresses, so that peers and firewalls see the one they expect
    /// (the chaos suite's loopback topology tells processes apart by it). Default: the
    /// kernel chooses.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// Initialise a new cluster when the data directory is empty. Set on one voter of a new
    /// cluster, once. Default false.
    #[serde(default)]
    pub bootstrap: bool,
    /// With `bootstrap`: the other voters of the new cluster. Default: none (one voter).
    #[serde(default)]
    pub initial_voters: Vec<VoterAddress>,
    /// Root credential created at bootstrap (env LAUSCHA_ACCESS_KEY overrides). Default: none.
    pub root_access_key: Option<String>,
    /// Secret of the root credential (env LAUSCHA_SECRET_KEY overrides). Default: none.
    pub root_secret_key: Option<String>,
}

/// A voter by id and address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoterAddress {
    /// Its Raft node id.
    pub node_id: u64,
    /// Its advertised gRPC address, `host:port`.
    pub addr: String,
}

impl MetadataConfig {
    /// Checks the addresses.
    pub fn validate(&self) -> Result<(), CoreError> {
        check_socket_addr("metadata.listen", &self.listen)?;
        if self.node_id == 0 {
            return Err(CoreError::Config(
                "metadata.node_id must be at least 1".into(),
            ));
        }
        if !self.initial_voters.is_empty() && !self.bootstrap {
            return Err(CoreError::Config(
                "metadata.initial_voters only applies with bootstrap = true".into(),
            ));
        }
        if self
            .initial_voters
            .iter()
            .any(|v| v.node_id == self.node_id || v.node_id == 0)
        {
            return Err(CoreError::Config(
                "metadata.initial_voters lists the other voters, with ids of at least 1".into(),
            ));
        }
        if self.bootstrap && (self.root_access_key.is_none() != self.root_secret_key.is_none()) {
            return Err(CoreError::Config(
                "metadata.root_access_key and metadata.root_secret_key go together".into(),
            ));
        }
        Ok(())
    }

    /// Where other roles reach this voter.
    pub fn advertised(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }
}

/// One storage node (one disk).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageNodeConfig {
    /// Node id, unique in the cluster. No default.
    pub node_id: u32,
    /// Directory on the node's disk for shards. No default.
    pub data_dir: String,
    /// gRPC listen address, `ip:port`. No default.
    pub listen: String,
    /// Address gateways use to reach it; default: `listen`.
    pub advertise: Option<String>,
    /// Source address of the connections this role opens to other roles. Set it on a
    /// host with several addresses, so that peers and firewalls see the one they expect
    /// (the chaos suite's loopback topology tells processes apart by it). Default: the
    /// kernel chooses.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// Failure domain: site. No default.
    pub site: String,
    /// Failure domain: host. Default: the node id as `node-<id>`.
    pub host: Option<String>,
    /// Capacity in bytes used as placement weight. Default: 1 TiB.
    #[serde(default = "default_capacity_bytes")]
    pub capacity_bytes: u64,
    /// Metadata endpoints (`http://ip:port`) to register with at start. Default: none.
    #[serde(default)]
    pub metadata_endpoints: Vec<String>,
    /// Scrub read rate, bytes per second. Default 50 MB/s.
    #[serde(default = "default_scrub_bytes_per_s")]
    pub scrub_bytes_per_s: u64,
    /// Pause between two full scrub passes, seconds. Default 86400 (one pass a day).
    #[serde(default = "default_scrub_interval_s")]
    pub scrub_interval_s: u64,
    /// New shards of at most 256 KiB (those of small volume writes and small objects) are
    /// appended to segment files under the data directory (one `fdatasync` per group of
    /// concurrent commits) instead of each being a file with its own fsyncs; false writes
    /// a file per shard. Segments are read whatever this says, so changing it loses
    /// nothing. Default true.
    #[serde(default = "default_small_shard_segments")]
    pub small_shard_segments: bool,
}

fn default_capacity_bytes() -> u64 {
    1 << 40
}
fn default_scrub_bytes_per_s() -> u64 {
    50_000_000
}
fn default_scrub_interval_s() -> u64 {
    86_400
}
fn default_small_shard_segments() -> bool {
    true
}

impl StorageNodeConfig {
    /// Checks the addresses and the site.
    pub fn validate(&self) -> Result<(), CoreError> {
        check_socket_addr("storage.listen", &self.listen)?;
        if self.site.is_empty() {
            return Err(CoreError::Config("storage.site must not be empty".into()));
        }
        if self.node_id == 0 {
            return Err(CoreError::Config(
                "storage.node_id must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The node id.
    pub fn id(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// Where gateways reach this node.
    pub fn advertised(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// The host failure domain.
    pub fn host_name(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.node_id))
    }
}

/// The S3 gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// S3 listen address, `ip:port`. Default `127.0.0.1:9000`.
    #[serde(default = "default_s3_listen")]
    pub s3_listen: String,
    /// Admin API listen address, `ip:port`. Default `127.0.0.1:9001`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// The S3 region requests must be signed for. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Metadata endpoints, `http://ip:port`. No default.
    pub metadata_endpoints: Vec<String>,
    /// Source address of the connections this role opens to other roles. Set it on a
    /// host with several addresses, so that peers and firewalls see the one they expect
    /// (the chaos suite's loopback topology tells processes apart by it). Default: the
    /// kernel chooses.
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// Largest object a single PUT may carry, bytes. Default 5 GiB (as S3).
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Objects up to this size are stored inline in metadata, bytes. Default 4096.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: u64,
    /// Size of one shard of a full stripe, bytes. Default 1 MiB.
    #[serde(default = "default_shard_size_bytes")]
    pub shard_size_bytes: u32,
    /// Placement policy for new buckets. Default 4+2 over nodes.
    #[serde(default)]
    pub default_policy: PolicyConfig,
    /// Named placement policies (storage classes) a bucket can be created with, chosen by
    /// the `x-lauscha-policy` header of CreateBucket. The name `default` always means
    /// `default_policy`. Default: none.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Requests served at once before new ones wait. Default 256.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Time allowed for one shard RPC to a storage node, milliseconds. Default 10000.
    #[serde(default = "default_shard_rpc_timeout_ms")]
    pub shard_rpc_timeout_ms: u64,
    /// A PUT succeeds when k plus this many shards of each stripe are durable (the rest
    /// are repaired at once); at most m. Default 1.
    #[serde(default = "default_write_quorum_extra")]
    pub write_quorum_extra: u8,
    /// A data-shard read slower than this is raced by parity reads, milliseconds.
    /// Default 100.
    #[serde(default = "default_hedge_delay_ms")]
    pub hedge_delay_ms: u64,
    /// Memory for verified shard blocks of small reads (a 4 KiB NBD read, a small S3
    /// range), bytes; 0 turns the cache off. Blocks are content-addressed, so the cache
    /// is never stale. Default 256 MiB.
    #[serde(default = "default_read_cache_bytes")]
    pub read_cache_bytes: u64,
    /// A block volume extent is merged (rewritten with its journal folded in) at the
    /// latest when its oldest unmerged write is this old, milliseconds. Longer means fewer
    /// whole-extent rewrites for small random writes, and more journal bytes held in the
    /// gateway's memory (up to 256 MiB per attached volume) and read at an attach after a
    /// crash. Default 10,000.
    #[serde(default = "default_volume_merge_age_ms")]
    pub volume_merge_age_ms: u64,
    /// Background repair, rebalance and garbage collection.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Accept AWS Signature Version 2 (old backup software that cannot sign with V4).
    /// SigV2 uses SHA-1 and signs less of the request; leave it off unless a client
    /// needs it. Default false.
    #[serde(default)]
    pub allow_sigv2: bool,
    /// NBD listen address for block volumes, `ip:port` (NBD has no authentication: bind
    /// it to the VM hosts' storage network only). Default: no NBD server.
    #[serde(default)]
    pub nbd_listen: Option<String>,
    /// NBD over TLS (NBD_OPT_STARTTLS) with client certificates. When set, the NBD server
    /// refuses every export until the client has started TLS with a certificate signed by
    /// `client_ca`, and serves only the volumes of the tenant named by that certificate's
    /// subject common name. Default: plain NBD, every volume to every client.
    #[serde(default)]
    pub nbd_tls: Option<NbdTlsConfig>,
}

/// Certificates for NBD over TLS; PEM files, read when the gateway starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdTlsConfig {
    /// The server's certificate chain (its own certificate first).
    pub cert: PathBuf,
    /// The server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The certificate authorities whose client certificates are accepted; a client
    /// certificate's subject CN names its tenant (`CN=stadt-jena`).
    pub client_ca: PathBuf,
    /// Certificate revocation lists, PEM: one from every CA that issues client
    /// certificates. A client certificate listed there is refused, and so is one whose
    /// issuer has no CRL in the file. Only the client's own certificate is checked (not
    /// intermediate CAs), and a CRL past its next update is still used. Read again when
    /// the file changes (modification time, length or inode; checked at each handshake); a
    /// changed file that cannot be used, or a file gone, leaves the last good lists in
    /// force and is logged. Default: no revocation check.
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
}

/// Background maintenance run by a gateway: repair, rebalance, drain, garbage collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Whether this gateway runs it. Run it on one or two gateways: every change it makes
    /// is a compare-and-set, so two never corrupt each other, they only duplicate work.
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Pause between passes, seconds. Default 60.
    #[serde(default = "default_maintenance_interval_s")]
    pub interval_s: u64,
    /// Shards of deleted and overwritten objects are deleted this long after they stopped
    /// being referenced, seconds. In-flight reads of an old version are safe for this
    /// long. Default 3600.
    #[serde(default = "default_gc_grace_s")]
    pub gc_grace_s: u64,
    /// Shards no stripe references (uploads that never committed, copies a crash left
    /// behind) are deleted once their file is this old, seconds. A PUT that has been
    /// running for half of it is refused before its commit (RequestTimeout), so an upload
    /// in progress never loses its first stripes. Default 86400.
    #[serde(default = "default_orphan_grace_s")]
    pub orphan_grace_s: u64,
    /// Multipart uploads neither completed nor aborted this long after they started are
    /// aborted, and their parts collected, seconds. Default 604800 (7 days).
    #[serde(default = "default_abort_uploads_after_s")]
    pub abort_uploads_after_s: u64,
    /// A node unreachable this long is treated as lost: its shards are rebuilt elsewhere,
    /// seconds. Default 900.
    #[serde(default = "default_node_out_after_s")]
    pub node_out_after_s: u64,
    /// Shard rebuilds and moves at once. Default 4.
    #[serde(default = "default_maintenance_concurrency")]
    pub concurrency: usize,
    /// Most rebalance moves per pass (repairs and drains are not limited). Default 2000.
    #[serde(default = "default_rebalance_moves_per_pass")]
    pub rebalance_moves_per_pass: usize,
    /// How long a lifecycle "day" is, seconds. Default 86400; shorter only to watch
    /// lifecycle rules act in tests and demonstrations.
    #[serde(default = "default_lifecycle_day_s")]
    pub lifecycle_day_s: u64,
}

fn default_lifecycle_day_s() -> u64 {
    86_400
}

fn yes() -> bool {
    true
}
fn default_maintenance_interval_s() -> u64 {
    60
}
fn default_gc_grace_s() -> u64 {
    3600
}
fn default_abort_uploads_after_s() -> u64 {
    7 * 24 * 3600
}
fn default_orphan_grace_s() -> u64 {
    86_400
}
fn default_node_out_after_s() -> u64 {
    900
}
fn default_maintenance_concurrency() -> usize {
    4
}
fn default_rebalance_moves_per_pass() -> usize {
    2000
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: yes(),
            interval_s: default_maintenance_interval_s(),
            gc_grace_s: default_gc_grace_s(),
            orphan_grace_s: default_orphan_grace_s(),
            abort_uploads_after_s: default_abort_uploads_after_s(),
            node_out_after_s: default_node_out_after_s(),
            concurrency: default_maintenance_concurrency(),
            rebalance_moves_per_pass: default_rebalance_moves_per_pass(),
            lifecycle_day_s: default_lifecycle_day_s(),
        }
    }
}

fn default_write_quorum_extra() -> u8 {
    1
}
fn default_hedge_delay_ms() -> u64 {
    100
}
fn default_read_cache_bytes() -> u64 {
    256 << 20
}
fn default_volume_merge_age_ms() -> u64 {
    10_000
}

fn default_s3_listen() -> String {
    "127.0.0.1:9000".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9001".into()
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_max_object_bytes() -> u64 {
    5 << 30
}
fn default_inline_max_bytes() -> u64 {
    4096
}
fn default_shard_size_bytes() -> u32 {
    1 << 20
}
fn default_max_concurrent_requests() -> usize {
    256
}
fn default_shard_rpc_timeout_ms() -> u64 {
    10_000
}

impl GatewayConfig {
    /// A gateway with every default, talking to `metadata_endpoints`.
    pub fn with_metadata(metadata_endpoints: Vec<String>) -> GatewayConfig {
        GatewayConfig {
            s3_listen: default_s3_listen(),
            admin_listen: default_admin_listen(),
            region: default_region(),
            metadata_endpoints,
            source_ip: None,
            max_object_bytes: default_max_object_bytes(),
            inline_max_bytes: default_inline_max_bytes(),
            shard_size_bytes: default_shard_size_bytes(),
            default_policy: PolicyConfig::default(),
            policies: BTreeMap::new(),
            max_concurrent_requests: default_max_concurrent_requests(),
            shard_rpc_timeout_ms: default_shard_rpc_timeout_ms(),
            write_quorum_extra: default_write_quorum_extra(),
            hedge_delay_ms: default_hedge_delay_ms(),
            read_cache_bytes: default_read_cache_bytes(),
            volume_merge_age_ms: default_volume_merge_age_ms(),
            maintenance: MaintenanceConfig::default(),
            allow_sigv2: false,
            nbd_listen: None,
            nbd_tls: None,
        }
    }

    /// Checks addresses, sizes and the policy.
    pub fn validate(&self) -> Result<(), CoreError> {
        check_socket_addr("gateway.s3_listen", &self.s3_listen)?;
        check_socket_addr("gateway.admin_listen", &self.admin_listen)?;
        if let Some(nbd) = &self.nbd_listen {
            check_socket_addr("gateway.nbd_listen", nbd)?;
        }
        if self.nbd_tls.is_some() && self.nbd_listen.is_none() {
            return Err(CoreError::Config(
                "gateway.nbd_tls is set but gateway.nbd_listen is not: set the NBD address too"
                    .into(),
            ));
        }
        if self.metadata_endpoints.is_empty() {
            return Err(CoreError::Config(
                "gateway.metadata_endpoints must name at least one metadata voter".into(),
            ));
        }
        if self.shard_size_bytes < 4096 || self.shard_size_bytes > 16 << 20 {
            return Err(CoreError::Config(
                "gateway.shard_size_bytes must be between 4096 and 16 MiB".into(),
            ));
        }
        if self.inline_max_bytes > 64 * 1024 {
            return Err(CoreError::Config(
                "gateway.inline_max_bytes must be at most 64 KiB: inline bytes travel through Raft"
                    .into(),
            ));
        }
        if self.volume_merge_age_ms == 0 {
            return Err(CoreError::Config(
                "gateway.volume_merge_age_ms must be at least 1 (10000 is the default)".into(),
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(CoreError::Config(
                "gateway.max_concurrent_requests must be at least 1".into(),
            ));
        }
        if self.maintenance.lifecycle_day_s == 0 {
            return Err(CoreError::Config(
                "gateway.maintenance.lifecycle_day_s must be at least 1 (86400 in production)"
                    .into(),
            ));
        }
        for (name, policy) in &self.policies {
            if name == DEFAULT_POLICY_NAME
                || name.is_empty()
                || name.len() > 63
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(CoreError::Config(format!(
                    "gateway.policies.{name}: a policy name is 1 to 63 of a-z, 0-9 and '-', and not {DEFAULT_POLICY_NAME:?}"
                )));
            }
            policy
                .to_policy()
                .map_err(|e| CoreError::Config(format!("gateway.policies.{name}: {e}")))?;
        }
        let policy = self.default_policy.to_policy()?;
        if self.write_quorum_extra > policy.n_parity_shards && policy.n_parity_shards > 0 {
            return Err(CoreError::Config(format!(
                "gateway.write_quorum_extra = {} exceeds the default policy's {} parity shards",
                self.write_quorum_extra, policy.n_parity_shards
            )));
        }
        if self.maintenance.concurrency == 0 {
            return Err(CoreError::Config(
                "gateway.maintenance.concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The policy name that always means `gateway.default_policy`.
pub const DEFAULT_POLICY_NAME: &str = "default";

impl GatewayConfig {
    /// The policy a bucket created with policy name `name` gets; `None` when no such
    /// policy is configured.
    pub fn named_policy(&self, name: &str) -> Option<PlacementPolicy> {
        let config = if name == DEFAULT_POLICY_NAME {
            self.default_policy
        } else {
            *self.policies.get(name)?
        };
        config.to_policy().ok()
    }

    /// Every policy name a bucket can be created with.
    pub fn policy_names(&self) -> Vec<&str> {
        std::iter::once(DEFAULT_POLICY_NAME)
            .chain(self.policies.keys().map(String::as_str))
            .collect()
    }
}

/// A placement policy as written in config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// k. Default 4.
    pub data_shards: u8,
    /// m. Default 2.
    pub parity_shards: u8,
    /// `node`, `host` or `site`. Default `node`.
    pub spread: SpreadLevel,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let p = PlacementPolicy::DEFAULT;
        PolicyConfig {
            data_shards: p.n_data_shards,
            parity_shards: p.n_parity_shards,
            spread: p.spread,
        }
    }
}

impl PolicyConfig {
    /// The checked policy.
    pub fn to_policy(self) -> Result<PlacementPolicy, CoreError> {
        let policy = PlacementPolicy {
            n_data_shards: self.data_shards,
            n_parity_shards: self.parity_shards,
            spread: self.spread,
        };
        policy
            .validate()
            .map_err(|e| CoreError::Config(format!("default_policy: {e}")))?;
        Ok(policy)
    }
}

/// The tenant that root credentials belong to.
pub fn root_tenant() -> TenantId {
    TenantId("root".into())
}

fn check_socket_addr(field: &str, value: &str) -> Result<(), CoreError> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| CoreError::Config(format!("{field} = {value:?} is not an ip:port address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_and_validates() {
        // The core crate has no TOML parser; the binary's tests parse real files. The serde
        // shape is the same through JSON.
        let value = serde_json::json!({
            "metadata": {"node_id": 1, "data_dir": "/m", "listen": "10.0.0.1:7100", "bootstrap": true},
            "storage": [{"node_id": 1, "data_dir": "/d", "listen": "10.0.0.1:7201", "site": "site-a",
                          "metadata_endpoints": ["http://10.0.0.1:7100"]}],
            "gateway": {"metadata_endpoints": ["http://10.0.0.1:7100"],
                        "default_policy": {"data_shards": 2, "parity_shards": 2, "spread": "site"}}
        });
        let config: ServerConfig = serde_json::from_value(value).unwrap();
        config.validate().unwrap();
        let gateway = config.gateway.unwrap();
        assert_eq!(gateway.s3_listen, "127.0.0.1:9000");
        assert_eq!(
            gateway.default_policy.to_policy().unwrap().spread,
            SpreadLevel::Site
        );
        assert_eq!(config.storage[0].host_name(), "node-1");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let value = serde_json::json!({"gateway": {"metadata_endpoints": [], "s3_lissten": "x"}});
        assert!(serde_json::from_value::<ServerConfig>(value).is_err());
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let mut gateway = GatewayConfig::with_metadata(vec![]);
        let err = gateway.validate().unwrap_err().to_string();
        assert!(err.contains("metadata_endpoints"), "{err}");
        gateway.metadata_endpoints = vec!["http://127.0.0.1:1".into()];
        gateway.s3_listen = "localhost".into();
        let err = gateway.validate().unwrap_err().to_string();
        assert!(err.contains("s3_listen"), "{err}");
        assert!(ServerConfig::default().validate().is_err());
    }

    #[test]
    fn named_policies_are_checked_and_found() {
        let mut gateway = GatewayConfig::with_metadata(vec!["http://127.0.0.1:1".into()]);
        let site = PolicyConfig {
            data_shards: 2,
            parity_shards: 2,
            spread: SpreadLevel::Site,
        };
        gateway.policies.insert("site-redundant".into(), site);
        gateway.validate().unwrap();
        assert_eq!(
            gateway.named_policy("site-redundant"),
            Some(site.to_policy().unwrap())
        );
        assert_eq!(
            gateway.named_policy("default"),
            Some(PlacementPolicy::DEFAULT)
        );
        assert_eq!(gateway.named_policy("gold"), None);
        assert_eq!(gateway.policy_names(), ["default", "site-redundant"]);
        for bad in ["default", "Site", "", "a b"] {
            let mut g = gateway.clone();
            g.policies.insert(bad.into(), site);
            let err = g.validate().unwrap_err().to_string();
            assert!(err.contains("policy name"), "{bad:?}: {err}");
        }
        let mut g = gateway.clone();
        g.policies.insert(
            "broken".into(),
            PolicyConfig {
                data_shards: 0,
                ..site
            },
        );
        let err = g.validate().unwrap_err().to_string();
        assert!(err.contains("gateway.policies.broken"), "{err}");
    }
}
