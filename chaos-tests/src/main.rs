//! `lauscha-chaos`: the chaos suite operators run before production and after upgrades.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lauscha_chaos::report;
use lauscha_chaos::scenario::{self, Outcome, RunEnv, SCENARIOS};
use lauscha_chaos::simulation::{self, SimSummary};
use lauscha_chaos::topology::TopologyKind;

/// Builds a two-site cluster of real lauscha processes (one network namespace each), runs a
/// self-checking S3 and NBD workload, injects faults on a seeded schedule and reports lost,
/// corrupt and non-linearizable results. Without root it runs in a user namespace of its
/// own, where the scenarios that need loop devices or cgroups are not run; where the kernel
/// allows no user namespace, on 127.0.0.0/8 with a fault-injecting proxy (--topology).
#[derive(Parser)]
#[command(name = "lauscha-chaos")]
struct Args {
    /// The lauscha binary (default: next to this one).
    #[arg(long, global = true)]
    lauscha: Option<PathBuf>,
    /// Where scenario directories (data, logs) go; a failed scenario's stays.
    #[arg(long, global = true, default_value = "/var/tmp/lauscha-chaos")]
    work_dir: PathBuf,
    /// Keep every scenario's directory (logs, data), not only the failed ones'.
    #[arg(long, global = true)]
    keep: bool,
    /// How the processes are connected: `auto` builds namespaces (as root, or in a user
    /// namespace of its own) and falls back to `loopback` where neither is possible;
    /// `loopback` puts every process on 127.0.0.0/8 behind a fault-injecting TCP proxy,
    /// as any user, without the scenarios that need a filesystem of their own.
    #[arg(long, global = true, value_enum, default_value_t = TopologyChoice::Auto)]
    topology: TopologyChoice,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TopologyChoice {
    Auto,
    Namespaces,
    Loopback,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every scenario once, each with a fresh seed (or --seed): what CI runs.
    Ci {
        /// Base seed; scenario N runs with seed + N, simulation seeds from seed on.
        #[arg(long)]
        seed: Option<u64>,
        /// Seeds of the metadata simulation tier (0: none).
        #[arg(long, default_value_t = 200)]
        sim_seeds: u64,
    },
    /// Only the metadata simulation tier (no root needed): seeds SEED..SEED+SEEDS.
    Sim {
        /// First seed (default: a fresh one).
        #[arg(long)]
        seed: Option<u64>,
        /// How many seeds.
        #[arg(long, default_value_t = 200)]
        seeds: u64,
    },
    /// Scenarios round after round with fresh seeds until the time is up.
    Soak {
        /// How long, hours (fractions allowed).
        #[arg(long)]
        hours: f64,
    },
    /// One scenario with one seed: the same fault schedule as the run that printed it.
    Replay {
        /// The seed from the report.
        #[arg(long)]
        seed: u64,
        /// The scenario number from the report (1-based).
        #[arg(long)]
        scenario: usize,
        /// Succeed only if the run reports lost acknowledged writes: the self-test against
        /// a deliberately broken build (`--features chaos-ack-before-durable`).
        #[arg(long)]
        expect_lost: bool,
    },
    /// The scenarios and their numbers.
    List,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Cmd::List = args.command {
        for (i, s) in SCENARIOS.iter().enumerate() {
            println!("{:>2} {}", i + 1, s.name);
        }
        return Ok(());
    }
    if let Cmd::Sim { seed, seeds } = args.command {
        let started = Instant::now();
        let summary = simulation::run_seeds(seed.unwrap_or_else(fresh_seed), seeds);
        print!(
            "{}",
            report::render(&[], &[], Some(&summary), started.elapsed().as_secs_f64())
        );
        if !summary.passed() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let in_user_namespace = std::env::var_os(IN_USER_NAMESPACE).is_some();
    let topology = if args.topology == TopologyChoice::Loopback {
        TopologyKind::Loopback
    } else if lauscha_chaos::topology::Network::available() || in_user_namespace {
        TopologyKind::Namespaces
    } else {
        match user_namespace_refused()? {
            None => return run_in_user_namespace(),
            Some(why) if args.topology == TopologyChoice::Auto => {
                eprintln!(
                    "lauscha-chaos: not root, and no user namespace allowed ({why}): running \
                     on 127.0.0.0/8 behind a fault-injecting proxy (--topology loopback); \
                     scenarios that need a filesystem of their own are not run"
                );
                TopologyKind::Loopback
            }
            Some(why) => bail!(
                "not root, and this kernel refuses an unprivileged user namespace ({why}): \
                 allow them (sysctl kernel.unprivileged_userns_clone=1, or the AppArmor \
                 profile that restricts them), run lauscha-chaos as root, or use \
                 --topology loopback"
            ),
        }
    };
    if in_user_namespace {
        prepare_user_namespace()?;
    }
    let lauscha = match args.lauscha {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("lauscha"),
    };
    if !lauscha.exists() {
        bail!(
            "no lauscha binary at {}: build it (cargo build -p lauscha) or pass --lauscha PATH",
            lauscha.display()
        );
    }
    // Namespaces and links are machine-wide and a run removes stale `lch*` ones: two
    // runs at once would tear down each other's clusters. (In a user namespace of its own
    // a run sees only its own.) Two loopback runs would want the same addresses.
    let lock = if in_user_namespace {
        None
    } else {
        let lock_path = std::env::temp_dir().join(match topology {
            TopologyKind::Namespaces => "lauscha-chaos.lock",
            TopologyKind::Loopback => "lauscha-chaos-loopback.lock",
        });
        // Another user's lock file is ours to lock, not to write.
        let lock = match std::fs::File::create(&lock_path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                std::fs::File::open(&lock_path)
            }
            other => other,
        }
        .with_context(|| format!("open {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "another lauscha-chaos run holds {}; wait for it to finish",
                lock_path.display()
            );
        }
        Some(lock)
    };
    let env = RunEnv {
        lauscha,
        work_dir: args.work_dir,
        keep: args.keep,
        in_user_namespace,
        topology,
    };
    let expect_lost = matches!(
        args.command,
        Cmd::Replay {
            expect_lost: true,
            ..
        }
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    // On SIGINT/SIGTERM the run is dropped, which kills the cluster's processes and
    // removes its namespaces, before the exit.
    let finished = runtime.block_on(async {
        tokio::select! {
            outcomes = run(&env, args.command) => Some(outcomes),
            _ = interrupted() => None,
        }
    });
    let Some(outcomes) = finished else {
        eprintln!("lauscha-chaos: interrupted; processes and namespaces removed");
        std::process::exit(130);
    };
    let (outcomes, not_run, sim) = outcomes?;
    drop(lock);
    print!(
        "{}",
        report::render(
            &outcomes,
            &not_run,
            sim.as_ref(),
            started.elapsed().as_secs_f64()
        )
    );
    if expect_lost {
        let lost: u64 = outcomes.iter().map(|(_, o)| o.lost_acked).sum();
        if lost > 0 {
            println!(
                "chaos self-test: the broken build lost {lost} acknowledged writes, and the suite saw it"
            );
            return Ok(());
        }
        println!("chaos self-test FAILED: no lost acknowledged writes reported");
        std::process::exit(1);
    }
    if outcomes.iter().all(|(_, o)| o.passed()) && sim.is_none_or(|s| s.passed()) {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// Set in the harness's environment when it runs in its own user namespace.
const IN_USER_NAMESPACE: &str = "LAUSCHA_CHAOS_IN_USER_NAMESPACE";

fn unshare(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--net", "--mount"])
        .args(args);
    cmd
}

/// Why this kernel refuses an unprivileged user namespace (`None`: it allows one).
fn user_namespace_refused() -> anyhow::Result<Option<String>> {
    let probe = unshare(&["true"])
        .output()
        .context("run unshare (apt-get install util-linux)")?;
    Ok(
        (!probe.status.success())
            .then(|| String::from_utf8_lossy(&probe.stderr).trim().to_string()),
    )
}

/// Runs this same command again as root of a user namespace of its own, with its own
/// network and mount namespaces (`unshare -Urnm`): namespaces, bridges, routes and rules
/// are then its own to make, and all of them vanish with it.
fn run_in_user_namespace() -> anyhow::Result<()> {
    eprintln!(
        "lauscha-chaos: not root: running in a user namespace of its own; \
         scenarios that need loop devices or cgroups are not run"
    );
    let status = unshare(&["--fork", "--"])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(IN_USER_NAMESPACE, "1")
        .status()
        .context("run unshare")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// In the user namespace: `ip netns` keeps its namespaces under /run/netns, which only
/// the real root may create; a tmpfs on /run, in this mount namespace only, is ours.
fn prepare_user_namespace() -> anyhow::Result<()> {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", "/run"])
        .output()
        .context("run mount")?;
    if !out.status.success() {
        bail!(
            "mount a tmpfs on /run in the user namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn fresh_seed() -> u64 {
    rand::random::<u64>() >> 1
}

async fn run_one(env: &RunEnv, index: usize, seed: u64) -> (usize, Outcome) {
    let s = &SCENARIOS[index];
    eprintln!(
        "lauscha-chaos: scenario {} {} seed {seed}: {}",
        index + 1,
        s.name,
        scenario::Schedule::of(s.fault, seed).describe(s.fault)
    );
    let outcome = scenario::run(env, s, seed).await;
    eprintln!(
        "lauscha-chaos: {} {}",
        s.name,
        if outcome.passed() { "passed" } else { "FAILED" }
    );
    if outcome.passed() && !env.keep {
        let _ = std::fs::remove_dir_all(&outcome.dir);
    }
    (index, outcome)
}

type Results = (
    Vec<(usize, Outcome)>,
    Vec<(&'static str, String)>,
    Option<SimSummary>,
);

async fn run(env: &RunEnv, command: Cmd) -> anyhow::Result<Results> {
    let mut outcomes = Vec::new();
    let not_run: Vec<(&'static str, String)> = SCENARIOS
        .iter()
        .filter_map(|s| env.cannot_run(s).map(|why| (s.name, why)))
        .collect();
    // Decided once above (it may open /dev/net/tun), not again per scenario and round.
    let runnable = |i: usize| !not_run.iter().any(|(name, _)| *name == SCENARIOS[i].name);
    let mut sim = None;
    match command {
        Cmd::Ci { seed, sim_seeds } => {
            let base = seed.unwrap_or_else(fresh_seed);
            for i in (0..SCENARIOS.len()).filter(|i| runnable(*i)) {
                outcomes.push(run_one(env, i, base.wrapping_add(i as u64)).await);
            }
            if sim_seeds > 0 {
                eprintln!("lauscha-chaos: metadata simulation, {sim_seeds} seeds from {base}");
                // turmoil runs each seed on runtimes of its own: on a plain thread, not ours.
                let thread = std::thread::spawn(move || simulation::run_seeds(base, sim_seeds));
                let summary = tokio::task::spawn_blocking(move || thread.join())
                    .await?
                    .map_err(|_| anyhow::anyhow!("the simulation panicked"))?;
                sim = Some(summary);
            }
        }
        Cmd::Soak { hours } => {
            let until = Instant::now() + Duration::from_secs_f64(hours * 3600.0);
            'rounds: loop {
                for i in (0..SCENARIOS.len()).filter(|i| runnable(*i)) {
                    if Instant::now() >= until {
                        break 'rounds;
                    }
                    outcomes.push(run_one(env, i, fresh_seed()).await);
                }
            }
        }
        Cmd::Replay { seed, scenario, .. } => {
            if scenario == 0 || scenario > SCENARIOS.len() {
                bail!(
                    "no scenario {scenario}: there are {} (lauscha-chaos list)",
                    SCENARIOS.len()
                );
            }
            if let Some(why) = env.cannot_run(&SCENARIOS[scenario - 1]) {
                bail!(
                    "scenario {scenario} ({}) cannot run here: it {why}",
                    SCENARIOS[scenario - 1].name
                );
            }
            outcomes.push(run_one(env, scenario - 1, seed).await);
            return Ok((outcomes, Vec::new(), sim));
        }
        Cmd::List | Cmd::Sim { .. } => unreachable!("handled before the runtime starts"),
    }
    Ok((outcomes, not_run, sim))
}
