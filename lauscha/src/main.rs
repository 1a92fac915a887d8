//! `lauscha`: one binary, every role. This crate parses commands, loads config and wires
//! the library crates together; it has no logic of its own.

mod admin_cli;
mod config;
mod dev;
mod roles;
mod signals;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::io::AsyncReadExt;
use tracing_subscriber::EnvFilter;

/// Lauscha: S3-compatible object storage and block volumes on erasure-coded nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this machine for trying it out and for tests.
    Dev(dev::DevArgs),
    /// Run the roles a config file names (the deployment path).
    Server {
        /// TOML config; see deploy/ for examples of each role.
        #[arg(long)]
        config: PathBuf,
        /// Stop when standard input closes (used by `lauscha dev --cluster` so that children
        /// never outlive their supervisor).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// Administer a running cluster through its admin API.
    Admin(admin_cli::AdminArgs),
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("LAUSCHA_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,openraft=warn,s3s=off")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("LAUSCHA_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn server(path: PathBuf, exit_on_stdin_eof: bool) -> anyhow::Result<()> {
    // Before the roles start: a signal during start-up is acted on once they run.
    let signals = signals::StopSignals::install()?;
    let config = config::load(&path)?;
    let root_credentials = std::env::var("LAUSCHA_ACCESS_KEY")
        .ok()
        .zip(std::env::var("LAUSCHA_SECRET_KEY").ok());
    let mut roles = roles::Roles::new();
    let report = |info: &roles::RoleInfo| -> anyhow::Result<()> {
        // One line per role on stdout: the readiness signal `lauscha dev --cluster` waits for.
        println!("{}", serde_json::to_string(info)?);
        Ok(())
    };
    if let Some(meta) = &config.metadata {
        let info = roles.start_metadata(meta, root_credentials).await?;
        report(&info)?;
    }
    for storage in &config.storage {
        let info = roles.start_storage(storage).await?;
        report(&info)?;
    }
    if let Some(gateway) = &config.gateway {
        let info = roles.start_gateway(gateway).await?;
        report(&info)?;
    }
    roles
        .run_until(signals, async move {
            if exit_on_stdin_eof {
                stdin_closed().await;
            } else {
                std::future::pending::<()>().await;
            }
        })
        .await
}

/// Raises the soft limit on open files to the hard one: a storage node keeps each of its
/// segment files open (64 MiB of small shards each) and a gateway a socket per client,
/// while the usual soft default (1024, kept low for programs that use `select`) would stop
/// both long before the hard limit does.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    if !matches!(cli.command, Command::Admin(_)) {
        raise_open_file_limit();
    }
    match cli.command {
        Command::Dev(args) => dev::run(args).await.context("lauscha dev"),
        Command::Server {
            config,
            exit_on_stdin_eof,
        } => server(config, exit_on_stdin_eof)
            .await
            .context("lauscha server"),
        Command::Admin(args) => admin_cli::run(args).await,
    }
}
