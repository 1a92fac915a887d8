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
}

/// Runs an admin command.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let target = target(&args)?;
    let (value, print): (Value, fn(&Value)) = match &args.command {
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
