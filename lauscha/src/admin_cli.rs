//! `lauscha admin ...`: the admin API's command line client.

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lauscha_core::admin_auth;
use serde_json::Value;

use crate::dev::{ClusterFile, Credentials};
use crate::roles::now_ms;

/// Options shared by every admin command.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Admin API URL, e.g. http://127.0.0.1:9001.
    #[arg(long, env = "LAUSCHA_ADMIN_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// A local `lauscha dev` data directory: endpoint and root credentials are read from it.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin commands.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Metadata voters and the storage nodes with their state and usage.
    Status,
    /// The metadata Raft group: status and membership changes, one at a time.
    Meta {
        /// What to do.
        #[command(subcommand)]
        command: MetaCommand,
    },
    /// Storage nodes: list, add, drain, remove, replace.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Run a maintenance pass now (repair, rebalance, drain, GC); with --wait, pass after
    /// pass until every stripe is at full redundancy.
    Repair {
        /// Keep going until nothing is degraded and nothing is left to do.
        #[arg(long)]
        wait: bool,
    },
    /// Stripes with fewer than k+m healthy shards right now.
    Degraded,
    /// Maintenance totals since the gateway started (rebuilt, moved, collected) and the
    /// last pass.
    Maintenance,
    /// Tenants: a town or district, owning its buckets and keys.
    Tenant {
        /// What to do.
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// S3 access keys.
    Key {
        /// What to do.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Block volumes, served over NBD (the export name is the volume name).
    Volume {
        /// What to do.
        #[command(subcommand)]
        command: VolumeCommand,
    },
}

/// `lauscha admin volume ...`
#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (it reads as zeros and uses no space until written).
    Create {
        /// Its name: 1 to 63 of a-z, 0-9, '-', '.', '_'.
        name: String,
        /// Size with an optional K, M, G or T (powers of 1024), a multiple of 4 KiB.
        #[arg(long)]
        size: String,
        /// Owning tenant.
        #[arg(long, default_value = "root")]
        tenant: String,
        /// Placement policy of its extents (a name from the gateway's config).
        #[arg(long)]
        policy: Option<String>,
    },
    /// The volumes of a tenant (all tenants without --tenant).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Grow a volume (attached clients see the new size when they reconnect).
    Resize {
        /// Its name.
        name: String,
        /// The new size (K, M, G, T).
        #[arg(long)]
        size: String,
        /// Owning tenant.
        #[arg(long, default_value = "root")]
        tenant: String,
    },
    /// Delete a volume (or a snapshot, VOLUME@SNAP) that no server has attached; what no
    /// snapshot or clone still shares is freed.
    Delete {
        /// Its name.
        name: String,
        /// Owning tenant.
        #[arg(long, default_value = "root")]
        tenant: String,
    },
    /// Freeze a volume's current contents, instantly and crash-consistently, as the
    /// read-only volume VOLUME@SNAP (served over NBD under that name).
    Snapshot {
        /// The volume.
        name: String,
        /// The snapshot's name.
        snapshot: String,
        /// Owning tenant.
        #[arg(long, default_value = "root")]
        tenant: String,
    },
    /// A new writable volume from a snapshot (copy-on-write: the snapshot is unchanged).
    Clone {
        /// The snapshot, VOLUME@SNAP.
        snapshot: String,
        /// The new volume.
        name: String,
        /// Owning tenant.
        #[arg(long, default_value = "root")]
        tenant: String,
    },
}

/// `lauscha admin tenant ...`
#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Its id: 1 to 63 of a-z, 0-9 and '-'.
        id: String,
    },
}

/// `lauscha admin key ...`
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create an access key for a tenant; the secret is shown once.
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// The key may also use the admin API.
        #[arg(long)]
        admin: bool,
    },
    /// Limit a key to the buckets it is granted: read, write (objects) or owner (also
    /// the bucket itself); `none` revokes. A key without grants may do everything in its
    /// tenant's buckets.
    Grant {
        /// The access key id.
        key_id: String,
        /// A bucket of the key's tenant.
        #[arg(long)]
        bucket: String,
        /// read, write, owner or none.
        #[arg(long)]
        permission: String,
    },
}

/// `lauscha admin node ...`
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Every storage node with state, reachability, usage and scrub results.
    List,
    /// Add a node to the map (storage nodes also register themselves when they start).
    Add {
        /// Node id.
        node_id: u32,
        /// Site (failure domain).
        #[arg(long)]
        site: String,
        /// Host (failure domain).
        #[arg(long)]
        host: String,
        /// gRPC address, host:port.
        #[arg(long)]
        addr: String,
        /// Capacity in bytes (placement weight).
        #[arg(long, default_value_t = 1 << 40)]
        capacity_bytes: u64,
    },
    /// Stop placing shards on a node and move all of its shards away.
    Drain {
        /// Node id.
        node_id: u32,
        /// Wait, showing progress, until the node holds nothing the cluster needs.
        #[arg(long)]
        wait: bool,
    },
    /// Take a draining node back into service.
    Undrain {
        /// Node id.
        node_id: u32,
    },
    /// A node whose disk was replaced (empty, same id): take it into service and refill it.
    Replace {
        /// Node id.
        node_id: u32,
        /// Wait, showing progress, until every stripe is at full redundancy again.
        #[arg(long)]
        wait: bool,
    },
    /// How many shards of current stripes the map places on a node.
    Shards {
        /// Node id.
        node_id: u32,
    },
    /// Remove a node for good; refused while the cluster still needs shards on it.
    Remove {
        /// Node id.
        node_id: u32,
    },
}

/// `lauscha admin meta ...`
#[derive(Debug, clap::Subcommand)]
pub enum MetaCommand {
    /// Every voter's view: role, term, log position, members and how far each has matched.
    Status,
    /// Add a voter-to-be as a learner; returns once it has caught up with the log.
    Add {
        /// Its Raft node id (never reuse the id of a removed voter).
        node_id: u64,
        /// Its advertised gRPC address, host:port.
        addr: String,
    },
    /// Promote a caught-up learner to voter.
    Promote {
        /// Its Raft node id.
        node_id: u64,
    },
    /// Remove a voter or learner from the group.
    Remove {
        /// Its Raft node id.
        node_id: u64,
    },
    /// Snapshot every voter now and purge the log the snapshot covers.
    Compact,
}

struct Target {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

fn target(args: &AdminArgs) -> anyhow::Result<Target> {
    let from_dir = match &args.data_dir {
        Some(dir) => {
            let cluster: ClusterFile = serde_json::from_slice(
                &std::fs::read(dir.join("cluster.json")).with_context(|| {
                    format!(
                        "read {}/cluster.json: is `lauscha dev --data-dir {}` running?",
                        dir.display(),
                        dir.display()
                    )
                })?,
            )?;
            let creds: Credentials =
                serde_json::from_slice(&std::fs::read(dir.join("credentials.json"))?)?;
            Some((cluster.admin_endpoint, creds))
        }
        None => None,
    };
    let endpoint = match (&args.endpoint, &from_dir) {
        (Some(e), _) => e.clone(),
        (None, Some((e, _))) => e.clone(),
        (None, None) => bail!(
            "no admin endpoint: pass --endpoint URL (or set LAUSCHA_ADMIN_ENDPOINT), or --data-dir DIR of a running `lauscha dev`"
        ),
    };
    let (access_key, secret_key) = match (
        std::env::var("LAUSCHA_ACCESS_KEY").ok(),
        std::env::var("LAUSCHA_SECRET_KEY").ok(),
        &from_dir,
    ) {
        (Some(a), Some(s), _) => (a, s),
        (_, _, Some((_, creds))) => (creds.access_key_id.clone(), creds.secret_access_key.clone()),
        _ => bail!(
            "no credentials: set LAUSCHA_ACCESS_KEY and LAUSCHA_SECRET_KEY to an administrator key, or pass --data-dir"
        ),
    };
    Ok(Target {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        access_key,
        secret_key,
    })
}

async fn call(target: &Target, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
    let date = now_ms() / 1000;
    let authorization = admin_auth::authorization(
        &target.access_key,
        &target.secret_key,
        method,
        path,
        date,
        &body,
    );
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", target.endpoint))
        .header(http::header::AUTHORIZATION, authorization)
        .header(admin_auth::DATE_HEADER, date.to_string())
        .body(Full::new(Bytes::from(body)))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("reach the admin API at {}", target.endpoint))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("admin API answered {status} with a non-JSON body"))?;
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("unknown error");
        bail!("admin API refused ({status}): {message}");
    }
    Ok(value)
}

fn print_voters(status: &Value) {
    println!(
        "{:<24}  {:>5}  {:<10}  {:>6}  {:>5}  {:>9}  {:>9}  members",
        "metadata voter", "id", "role", "leader", "term", "log", "applied"
    );
    for voter in status["metadata"].as_array().into_iter().flatten() {
        let text = |k: &str| {
            voter[k]
                .as_u64()
                .map(|n| n.to_string())
                .or_else(|| voter[k].as_str().map(str::to_string))
                .unwrap_or_else(|| "-".into())
        };
        let members: Vec<String> = voter["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let kind = if m["voter"] == true { "" } else { " (learner)" };
                match m["matched_index"].as_u64() {
                    Some(i) => format!("{}@{i}{kind}", m["node_id"]),
                    None => format!("{}{kind}", m["node_id"]),
                }
            })
            .collect();
        let role = if voter["reachable"] == true {
            text("state")
        } else {
            "unreachable".into()
        };
        println!(
            "{:<24}  {:>5}  {:<10}  {:>6}  {:>5}  {:>9}  {:>9}  {}",
            voter["endpoint"].as_str().unwrap_or(""),
            text("node_id"),
            role,
            text("leader_id"),
            text("term"),
            text("last_log_index"),
            text("last_applied_index"),
            members.join(" ")
        );
    }
}

fn print_nodes(status: &Value) {
    println!(
        "\n{:>4}  {:<8}  {:<8}  {:<21}  {:<9}  {:>9}  {:>10}",
        "node", "site", "host", "address", "state", "shards", "used"
    );
    for node in status["nodes"].as_array().into_iter().flatten() {
        let reachable = node["reachable"].as_bool().unwrap_or(false);
        let state = if reachable {
            node["state"].as_str().unwrap_or("?").to_string()
        } else {
            format!("{}!", node["state"].as_str().unwrap_or("?"))
        };
        println!(
            "{:>4}  {:<8}  {:<8}  {:<21}  {:<9}  {:>9}  {:>10}",
            node["id"].as_u64().map_or("?".into(), |id| id.to_string()),
            node["site"].as_str().unwrap_or(""),
            node["host"].as_str().unwrap_or(""),
            node["addr"].as_str().unwrap_or(""),
            state,
            node["n_shards"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
            node["used_bytes"]
                .as_u64()
                .map_or("-".into(), |n| format!("{:.1} MiB", n as f64 / 1048576.0)),
        );
    }
    if status["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.iter().any(|n| n["reachable"] == false))
    {
        println!("\n! = not reachable now");
    }
    // What the scrubbers found: worth a line only when it is not nothing.
    for node in status["nodes"].as_array().into_iter().flatten() {
        let corrupt = node["n_corrupt_found"].as_u64().unwrap_or(0);
        let errors = node["n_scrub_errors"].as_u64().unwrap_or(0);
        if corrupt > 0 || errors > 0 {
            println!(
                "node {}: {corrupt} corrupt or unreadable shards moved out of service (repair rebuilds them), \
                 {errors} scrubber checks that failed since the node started; see its log",
                node["id"].as_u64().map_or("?".into(), |id| id.to_string()),
            );
        }
    }
}

fn print_report(report: &Value) {
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    println!(
        "stripes checked {}, degraded {}, unrecoverable {}; rebuilt {} shards ({} bytes), moved {} ({} bytes); garbage shards deleted {}, orphans deleted {}; errors {}; {} ms",
        n("stripes_checked"),
        n("stripes_degraded"),
        n("stripes_unrecoverable"),
        n("shards_rebuilt"),
        n("bytes_rebuilt"),
        n("shards_moved"),
        n("bytes_moved"),
        n("garbage_shards_deleted"),
        n("orphans_deleted"),
        n("errors"),
        n("elapsed_ms")
    );
    for example in report["examples"].as_array().into_iter().flatten().take(20) {
        println!("  {}", example.as_str().unwrap_or(""));
    }
}

/// Runs an admin command.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let target = target(&args)?;
    let (value, print): (Value, fn(&Value)) = match &args.command {
        AdminCommand::Node { command } => run_node(&target, command, args.json).await?,
        AdminCommand::Repair { wait } => {
            let report = if *wait {
                repair_until_done(&target, args.json).await?
            } else {
                call(&target, "POST", "/v1/maintenance/run", Vec::new()).await?
            };
            (report, print_report)
        }
        AdminCommand::Degraded => (
            call(&target, "GET", "/v1/stripes/degraded", Vec::new()).await?,
            print_report,
        ),
        AdminCommand::Volume { command } => {
            let size = |text: &str| {
                lauscha_core::volume::parse_size(text).map_err(|e| anyhow::anyhow!("--size: {e}"))
            };
            let (method, path, body): (&str, String, Vec<u8>) = match &command {
                VolumeCommand::Create {
                    name,
                    size: s,
                    tenant,
                    policy,
                } => (
                    "POST",
                    "/v1/volumes".into(),
                    serde_json::to_vec(&serde_json::json!({
                        "name": name, "tenant": tenant, "size_bytes": size(s)?, "policy": policy,
                    }))?,
                ),
                VolumeCommand::List { .. } => ("GET", "/v1/volumes".into(), Vec::new()),
                VolumeCommand::Resize {
                    name,
                    size: s,
                    tenant,
                } => (
                    "POST",
                    "/v1/volumes/resize".into(),
                    serde_json::to_vec(&serde_json::json!({
                        "name": name, "tenant": tenant, "size_bytes": size(s)?,
                    }))?,
                ),
                VolumeCommand::Delete { name, tenant } => (
                    "POST",
                    "/v1/volumes/delete".into(),
                    serde_json::to_vec(&serde_json::json!({"name": name, "tenant": tenant}))?,
                ),
                VolumeCommand::Snapshot {
                    name,
                    snapshot,
                    tenant,
                } => (
                    "POST",
                    "/v1/volumes/snapshot".into(),
                    serde_json::to_vec(
                        &serde_json::json!({"name": name, "tenant": tenant, "snapshot": snapshot}),
                    )?,
                ),
                VolumeCommand::Clone {
                    snapshot,
                    name,
                    tenant,
                } => (
                    "POST",
                    "/v1/volumes/clone".into(),
                    serde_json::to_vec(
                        &serde_json::json!({"name": name, "tenant": tenant, "snapshot": snapshot}),
                    )?,
                ),
            };
            let mut value = call(&target, method, &path, body).await?;
            if let (VolumeCommand::List { tenant: Some(t) }, Some(list)) =
                (&command, value["volumes"].as_array_mut())
            {
                list.retain(|vol| vol["tenant"] == t.as_str());
            }
            (value, |v| match v["volumes"].as_array() {
                Some(list) => {
                    for vol in list {
                        println!(
                            "{:<24} {:>14} bytes  tenant {:<12} {} {}",
                            vol["name"].as_str().unwrap_or("?"),
                            vol["size_bytes"],
                            vol["tenant"].as_str().unwrap_or("?"),
                            vol["policy"].as_str().unwrap_or("?"),
                            if vol["attached"] == true {
                                "attached"
                            } else {
                                ""
                            }
                        );
                    }
                }
                None => println!("volume {}: done", v["volume"].as_str().unwrap_or("?")),
            })
        }
        AdminCommand::Tenant {
            command: TenantCommand::Create { id },
        } => (
            call(
                &target,
                "POST",
                "/v1/tenants",
                serde_json::to_vec(&serde_json::json!({ "id": id }))?,
            )
            .await?,
            |v| println!("tenant {} created", v["tenant"].as_str().unwrap_or("?")),
        ),
        AdminCommand::Key {
            command: KeyCommand::Create { tenant, admin },
        } => (
            call(
                &target,
                "POST",
                "/v1/keys",
                serde_json::to_vec(&serde_json::json!({ "tenant": tenant, "admin": admin }))?,
            )
            .await?,
            |v| {
                println!(
                    "access key for tenant {} (the secret is not shown again):",
                    v["tenant"].as_str().unwrap_or("?")
                );
                println!(
                    "  export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={}",
                    v["access_key_id"].as_str().unwrap_or("?"),
                    v["secret_access_key"].as_str().unwrap_or("?")
                );
            },
        ),
        AdminCommand::Key {
            command:
                KeyCommand::Grant {
                    key_id,
                    bucket,
                    permission,
                },
        } => (
            call(
                &target,
                "POST",
                &format!("/v1/keys/{key_id}/grants"),
                serde_json::to_vec(
                    &serde_json::json!({ "bucket": bucket, "permission": permission }),
                )?,
            )
            .await?,
            |v| println!("grants of {}: {}", v["access_key_id"], v["grants"]),
        ),
        AdminCommand::Maintenance => (
            call(&target, "GET", "/v1/maintenance", Vec::new()).await?,
            |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        ),
        AdminCommand::Status => (call(&target, "GET", "/v1/status", Vec::new()).await?, |s| {
            print_voters(s);
            print_nodes(s);
        }),
        AdminCommand::Meta { command } => match command {
            MetaCommand::Status => (
                call(&target, "GET", "/v1/meta/status", Vec::new()).await?,
                print_voters,
            ),
            MetaCommand::Add { node_id, addr } => {
                let body =
                    serde_json::to_vec(&serde_json::json!({"node_id": node_id, "addr": addr}))?;
                (
                    call(&target, "POST", "/v1/meta/learners", body).await?,
                    |_| {
                        println!(
                            "learner added and caught up; promote it with `lauscha admin meta promote ID`"
                        )
                    },
                )
            }
            MetaCommand::Promote { node_id } => (
                call(
                    &target,
                    "POST",
                    &format!("/v1/meta/voters/{node_id}"),
                    Vec::new(),
                )
                .await?,
                |_| println!("promoted to voter"),
            ),
            MetaCommand::Compact => (
                call(&target, "POST", "/v1/meta/compact", Vec::new()).await?,
                |v| {
                    for voter in v.as_array().into_iter().flatten() {
                        match voter["snapshot_index"].as_u64() {
                            Some(i) => println!(
                                "{}: snapshot at index {i}, log purged",
                                voter["endpoint"].as_str().unwrap_or("?")
                            ),
                            None => println!(
                                "{}: {}",
                                voter["endpoint"].as_str().unwrap_or("?"),
                                voter["error"].as_str().unwrap_or("failed")
                            ),
                        }
                    }
                },
            ),
            MetaCommand::Remove { node_id } => (
                call(
                    &target,
                    "DELETE",
                    &format!("/v1/meta/members/{node_id}"),
                    Vec::new(),
                )
                .await?,
                |_| println!("removed from the metadata group"),
            ),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print(&value);
    }
    Ok(())
}

/// Runs maintenance passes until nothing is degraded and a pass finds nothing to do,
/// showing the degraded stripes left.
async fn repair_until_done(target: &Target, json: bool) -> anyhow::Result<Value> {
    let bar = (!json).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "repair {bar:40} {pos}/{len} stripes at full redundancy {msg}",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut worst = 0u64;
    for _ in 0..1000 {
        let report = call(target, "POST", "/v1/maintenance/run", Vec::new()).await?;
        let degraded = report["stripes_degraded"].as_u64().unwrap_or(0);
        let checked = report["stripes_checked"].as_u64().unwrap_or(0);
        let work = [
            "shards_rebuilt",
            "shards_moved",
            "orphans_deleted",
            "garbage_shards_deleted",
            "uploads_aborted",
        ]
        .iter()
        .map(|k| report[*k].as_u64().unwrap_or(0))
        .sum::<u64>();
        worst = worst.max(degraded);
        if let Some(bar) = &bar {
            bar.set_length(checked);
            bar.set_position(checked - degraded);
            bar.set_message(format!(
                "(rebuilt {}, moved {}, errors {})",
                report["shards_rebuilt"], report["shards_moved"], report["errors"]
            ));
        }
        if degraded == 0 && work == 0 && report["errors"].as_u64() == Some(0) {
            if let Some(bar) = bar {
                bar.finish_with_message("done");
            }
            return Ok(report);
        }
        if report["stripes_unrecoverable"].as_u64().unwrap_or(0) > 0 && work == 0 {
            bail!(
                "{} stripes have fewer than k healthy shards: bring their nodes back",
                report["stripes_unrecoverable"]
            );
        }
    }
    bail!("still degraded after 1000 passes (worst: {worst} stripes)")
}

async fn run_node(
    target: &Target,
    command: &NodeCommand,
    json: bool,
) -> anyhow::Result<(Value, fn(&Value))> {
    Ok(match command {
        NodeCommand::List => (
            call(target, "GET", "/v1/status", Vec::new()).await?,
            print_nodes,
        ),
        NodeCommand::Add {
            node_id,
            site,
            host,
            addr,
            capacity_bytes,
        } => {
            let body = serde_json::to_vec(&serde_json::json!({
                "node_id": node_id, "site": site, "host": host, "addr": addr,
                "capacity_bytes": capacity_bytes,
            }))?;
            (call(target, "POST", "/v1/nodes", body).await?, |_| {
                println!("node added; maintenance moves its share of the data to it")
            })
        }
        NodeCommand::Drain { node_id, wait } => {
            let value = call(
                target,
                "POST",
                &format!("/v1/nodes/{node_id}/drain"),
                Vec::new(),
            )
            .await?;
            if *wait {
                let path = format!("/v1/nodes/{node_id}/shards");
                let first = call(target, "GET", &path, Vec::new()).await?["referenced_shards"]
                    .as_u64()
                    .unwrap_or(0);
                let bar = (!json).then(|| {
                    let bar = indicatif::ProgressBar::new(first);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "drain {bar:40} {pos}/{len} shards moved",
                        )
                        .expect("valid template"),
                    );
                    bar
                });
                loop {
                    let left = call(target, "GET", &path, Vec::new()).await?["referenced_shards"]
                        .as_u64()
                        .unwrap_or(0);
                    if let Some(bar) = &bar {
                        bar.set_position(first.saturating_sub(left));
                    }
                    if left == 0 {
                        break;
                    }
                    let report = call(target, "POST", "/v1/maintenance/run", Vec::new()).await?;
                    // The gateway's own background pass may have done the work just before
                    // this one: only a pass that did nothing while shards stayed put is
                    // a lack of progress.
                    let still = call(target, "GET", &path, Vec::new()).await?["referenced_shards"]
                        .as_u64()
                        .unwrap_or(0);
                    if still == left
                        && report["shards_moved"].as_u64() == Some(0)
                        && report["shards_rebuilt"].as_u64() == Some(0)
                    {
                        bail!(
                            "drain makes no progress: {} shards left; see `lauscha admin degraded`",
                            left
                        );
                    }
                }
                if let Some(bar) = bar {
                    bar.finish();
                }
                return Ok((serde_json::json!({"ok": true, "drained": node_id}), |_| {
                    println!(
                        "drained: the node holds nothing the cluster needs; remove it with `lauscha admin node remove ID`"
                    )
                }));
            }
            (value, |_| {
                println!("draining; follow with `lauscha admin node list` or use --wait")
            })
        }
        NodeCommand::Undrain { node_id } => (
            call(
                target,
                "POST",
                &format!("/v1/nodes/{node_id}/undrain"),
                Vec::new(),
            )
            .await?,
            |_| println!("back in service"),
        ),
        NodeCommand::Replace { node_id, wait } => {
            let value = call(
                target,
                "POST",
                &format!("/v1/nodes/{node_id}/replace"),
                Vec::new(),
            )
            .await?;
            if *wait {
                return Ok((repair_until_done(target, json).await?, |_| {
                    println!("refilled")
                }));
            }
            (value, |_| {
                println!(
                    "in service; maintenance refills it (`lauscha admin repair --wait` to watch)"
                )
            })
        }
        NodeCommand::Shards { node_id } => (
            call(
                target,
                "GET",
                &format!("/v1/nodes/{node_id}/shards"),
                Vec::new(),
            )
            .await?,
            |v| println!("{} shards", v["referenced_shards"]),
        ),
        NodeCommand::Remove { node_id } => (
            call(
                target,
                "DELETE",
                &format!("/v1/nodes/{node_id}"),
                Vec::new(),
            )
            .await?,
            |_| println!("removed"),
        ),
    })
}
