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
    /// Metadata leader and the storage nodes with their state and usage.
    Status,
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

/// Runs an admin command.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let target = target(&args)?;
    match args.command {
        AdminCommand::Status => {
            let status = call(&target, "GET", "/v1/status", Vec::new()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            let meta = &status["metadata"];
            println!(
                "metadata: voter {} is {}, leader {}, term {}, applied index {}",
                meta["node_id"],
                meta["state"].as_str().unwrap_or("?"),
                meta["leader_id"],
                meta["term"],
                meta["last_applied_index"]
            );
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
            Ok(())
        }
    }
}
