//! Scenarios: a fault, a schedule derived from the seed alone (so `replay` repeats it),
//! the run against a fresh cluster, and the verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::check::{self, RegKind, RegOp};
use crate::cluster::{Cluster, PARITY_SHARDS, SLOW_DISK, STORAGE_NODES};
use crate::payload::ValueId;
use crate::topology::{Net, TopologyKind};
use crate::wan::{WanImpairment, WanLink};
use crate::workload::{self, Clock, S3Shape};

/// The faults the suite injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the metadata leader, restart it.
    LeaderKill,
    /// SIGSTOP a process (the leader or a storage node), then SIGCONT.
    GrayFailure,
    /// The leader's link down: every packet to and from it lost.
    LeaderIsolated,
    /// The leader cannot send to the other voters; they can send to it.
    AsymmetricPartition,
    /// SIGKILL m storage nodes, restart them.
    StorageKill,
    /// The router drops everything between site A and site B.
    SitePartition,
    /// Bits flipped in shard files on up to m nodes.
    BitRot,
    /// fsync and fdatasync fail with an error on one storage node (libfiu).
    FsyncError,
    /// SIGKILL the gateway (the NBD server) during block writes, restart it.
    NbdServerKill,
    /// Each voter restarted in turn, under load.
    RollingRestart,
    /// Power loss on a metadata voter: what it had not fsynced is gone.
    MetadataPowerLoss,
    /// The link between the sites delays every packet and loses some (a TUN device in the
    /// router, see [`crate::wan`]).
    WanDegraded,
    /// Power loss on m storage nodes at once: shards and journal entries they had not
    /// fsynced are gone, and files may be left empty or short.
    StoragePowerLoss,
    /// A storage node's filesystem full to the last block, then freed.
    DiskFull,
    /// A storage node's disk throttled to a crawl (blkio cgroup), then released.
    SlowDisk,
    /// A fourth voter added (learner, caught up, promoted) and a founding voter removed,
    /// under load.
    MembershipChange,
    /// Wall clocks skewed (a voter +2 h, a storage node -1 h, the gateway +4 min: inside
    /// the admin API's 5 min signing window) while
    /// the metadata leader is killed.
    ClockSkew,
}

impl Fault {
    /// What this fault needs that a user namespace of the harness's own does not give
    /// (`None`: it runs without root). Network namespaces, links, routes, rules, signals,
    /// libfiu and libfaketime all work there; loop devices and cgroups do not, and
    /// `/dev/net/tun` only where its mode lets everyone open it.
    pub fn needs_real_root(self) -> Option<&'static str> {
        match self {
            Fault::MetadataPowerLoss | Fault::StoragePowerLoss | Fault::DiskFull => {
                Some("an ext4 filesystem on a loop device")
            }
            Fault::SlowDisk => Some("a loop device throttled in a blkio cgroup"),
            Fault::WanDegraded => Some("/dev/net/tun"),
            _ => None,
        }
    }

    /// What this fault needs that the loopback topology does not give (`None`: it runs
    /// there). The network faults are the proxy's; a filesystem of a process's own needs
    /// the mount namespace each process gets in the namespace topology.
    pub fn needs_namespaces(self) -> Option<&'static str> {
        match self {
            Fault::MetadataPowerLoss | Fault::StoragePowerLoss | Fault::DiskFull => {
                Some("an ext4 filesystem on a loop device, in the process's own mount namespace")
            }
            Fault::SlowDisk => Some("a loop device throttled in a blkio cgroup"),
            _ => None,
        }
    }
}

/// A named scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Name in the report.
    pub name: &'static str,
    /// Its fault.
    pub fault: Fault,
}

/// The scenarios, in the order `ci` runs them; `replay --scenario N` counts from 1.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "leader-kill",
        fault: Fault::LeaderKill,
    },
    Scenario {
        name: "gray-failure",
        fault: Fault::GrayFailure,
    },
    Scenario {
        name: "leader-isolated",
        fault: Fault::LeaderIsolated,
    },
    Scenario {
        name: "asymmetric-partition",
        fault: Fault::AsymmetricPartition,
    },
    Scenario {
        name: "storage-kill-m",
        fault: Fault::StorageKill,
    },
    Scenario {
        name: "site-partition",
        fault: Fault::SitePartition,
    },
    Scenario {
        name: "bit-rot",
        fault: Fault::BitRot,
    },
    Scenario {
        name: "fsync-error",
        fault: Fault::FsyncError,
    },
    Scenario {
        name: "nbd-server-kill",
        fault: Fault::NbdServerKill,
    },
    Scenario {
        name: "rolling-restart",
        fault: Fault::RollingRestart,
    },
    Scenario {
        name: "metadata-power-loss",
        fault: Fault::MetadataPowerLoss,
    },
    Scenario {
        name: "disk-full",
        fault: Fault::DiskFull,
    },
    Scenario {
        name: "clock-skew",
        fault: Fault::ClockSkew,
    },
    Scenario {
        name: "membership-change",
        fault: Fault::MembershipChange,
    },
    Scenario {
        name: "slow-disk",
        fault: Fault::SlowDisk,
    },
    Scenario {
        name: "storage-power-loss",
        fault: Fault::StoragePowerLoss,
    },
    Scenario {
        name: "wan-delay-loss",
        fault: Fault::WanDegraded,
    },
];

/// When and on what a fault acts: a function of the scenario and the seed only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Workload before the fault, ms.
    pub fault_at_ms: u64,
    /// How long the fault lasts, ms.
    pub fault_for_ms: u64,
    /// Workload after the fault healed, ms.
    pub after_ms: u64,
    /// Storage nodes the fault acts on (ids), where it acts on nodes.
    pub nodes: Vec<u32>,
    /// For a gray failure: stop the leader (else `nodes[0]`).
    pub target_leader: bool,
    /// Bit flips per node, for bit rot.
    pub flips_per_node: u32,
    /// What the degraded link between the sites does.
    pub wan: WanImpairment,
}

impl Schedule {
    /// The schedule of `fault` under `seed`.
    pub fn of(fault: Fault, seed: u64) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a0_5000);
        let mut ids: Vec<u32> = (1..=STORAGE_NODES).collect();
        ids.shuffle(&mut rng);
        let n_nodes = match fault {
            Fault::StorageKill | Fault::BitRot | Fault::StoragePowerLoss => {
                usize::from(PARITY_SHARDS)
            }
            Fault::GrayFailure | Fault::FsyncError | Fault::DiskFull | Fault::SlowDisk => 1,
            _ => 0,
        };
        ids.truncate(n_nodes);
        ids.sort_unstable();
        Schedule {
            fault_at_ms: rng.random_range(3_000..6_000),
            fault_for_ms: match fault {
                // The server comes back quickly; the volume's lease (10 s) still has to lapse.
                Fault::NbdServerKill => rng.random_range(500..3_000),
                Fault::BitRot => 0,
                _ => rng.random_range(6_000..10_000),
            },
            after_ms: 6_000,
            nodes: ids,
            target_leader: rng.random_bool(0.5),
            flips_per_node: rng.random_range(5..30),
            // A long line between cities, then a bad one: 0.5 % to 3 % of packets lost.
            wan: WanImpairment {
                one_way_delay_ms: rng.random_range(10..40),
                loss_per_mille: rng.random_range(5..30),
            },
        }
    }

    /// One line for the report.
    pub fn describe(&self, fault: Fault) -> String {
        let nodes = self
            .nodes
            .iter()
            .map(|n| format!("s{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let what = match fault {
            Fault::LeaderKill => "kill -9 the metadata leader".to_string(),
            Fault::GrayFailure if self.target_leader => "SIGSTOP the metadata leader".into(),
            Fault::GrayFailure => format!("SIGSTOP {nodes}"),
            Fault::LeaderIsolated => "the leader's link down".into(),
            Fault::AsymmetricPartition => "the leader cannot send to the other voters".into(),
            Fault::StorageKill => format!("kill -9 {nodes}"),
            Fault::SitePartition => "site A and site B cut apart".into(),
            Fault::BitRot => format!(
                "{} bit flips in shard and segment files on {nodes}",
                self.flips_per_node
            ),
            Fault::FsyncError => format!("fsync/fdatasync fail on {nodes}"),
            Fault::NbdServerKill => "kill -9 the gateway (NBD server)".into(),
            Fault::RollingRestart => "each voter killed and restarted in turn".into(),
            Fault::MetadataPowerLoss if self.target_leader => {
                "power loss on the metadata leader".into()
            }
            Fault::MetadataPowerLoss => "power loss on a metadata follower".into(),
            Fault::StoragePowerLoss => format!("power loss on {nodes}"),
            Fault::WanDegraded => format!(
                "the link between the sites delays {} ms each way and loses {:.1} % of packets",
                self.wan.one_way_delay_ms,
                f64::from(self.wan.loss_per_mille) / 10.0
            ),
            Fault::DiskFull => format!("the filesystem of {nodes} full"),
            Fault::SlowDisk => {
                let l = SLOW_DISK;
                format!(
                    "the disk of {nodes} slowed to {} KiB/s and {} IOPS written, {} KiB/s and {} IOPS read",
                    l.write_bytes_per_s >> 10,
                    l.write_iops,
                    l.read_bytes_per_s >> 10,
                    l.read_iops
                )
            }
            Fault::MembershipChange if self.target_leader => {
                "voter 4 added and promoted, then the leader removed".into()
            }
            Fault::MembershipChange => "voter 4 added and promoted, then a follower removed".into(),
            Fault::ClockSkew => {
                "clocks skewed (m2 +2 h, s3 -1 h, gateway +4 min); kill -9 the leader".into()
            }
        };
        format!(
            "at {:.1} s for {:.1} s: {what}",
            self.fault_at_ms as f64 / 1e3,
            self.fault_for_ms as f64 / 1e3
        )
    }
}

/// What one scenario run found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// Its seed.
    pub seed: u64,
    /// The schedule, described.
    pub schedule: String,
    /// Operations sent (S3 and NBD).
    pub ops: u64,
    /// Operations acknowledged.
    pub acked: u64,
    /// Reads and lists that failed (they change nothing).
    pub failed: u64,
    /// Writes whose outcome is unknown.
    pub indeterminate: u64,
    /// Acknowledged writes lost (S3 and NBD).
    pub lost_acked: u64,
    /// Corrupt reads (S3 bodies, torn or foreign blocks).
    pub corrupt: u64,
    /// Keys whose history is not linearizable, and LIST violations.
    pub violations: u64,
    /// Longest time without a successful operation, s.
    pub max_unavailable_s: f64,
    /// From the fault's end to full redundancy, s; `None` if it never got there.
    pub heal_s: Option<f64>,
    /// The first problems found, for the report.
    pub details: Vec<String>,
    /// Error that stopped the run before it could check anything.
    pub error: Option<String>,
    /// Where its logs are.
    pub dir: PathBuf,
    /// Wall time of the whole scenario (cluster start to teardown), s.
    pub run_s: f64,
}

impl Outcome {
    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.lost_acked == 0
            && self.corrupt == 0
            && self.violations == 0
            && self.heal_s.is_some()
    }
}

/// What a run needs beyond the scenario.
pub struct RunEnv {
    /// The `lauscha` binary.
    pub lauscha: PathBuf,
    /// Where scenario directories go.
    pub work_dir: PathBuf,
    /// Keep the directories of passed scenarios too.
    pub keep: bool,
    /// Running as an unprivileged user, in a user namespace of its own (see
    /// [`Fault::needs_real_root`]).
    pub in_user_namespace: bool,
    /// Namespaces, or the proxy on 127.0.0.0/8 (see [`Fault::needs_namespaces`]).
    pub topology: TopologyKind,
}

impl RunEnv {
    /// Why `scenario` cannot run here (`None`: it can).
    pub fn cannot_run(&self, scenario: &Scenario) -> Option<String> {
        if self.topology == TopologyKind::Loopback {
            return scenario.fault.needs_namespaces().map(|what| {
                format!(
                    "needs the namespace topology ({what}): run as root, or where user \
                     namespaces are allowed"
                )
            });
        }
        if !self.in_user_namespace {
            return None;
        }
        let tun_opens = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .is_ok()
        };
        if scenario.fault == Fault::WanDegraded && tun_opens() {
            return None;
        }
        scenario
            .fault
            .needs_real_root()
            .map(|what| format!("needs root ({what})"))
    }
}

/// Runs one scenario against a fresh cluster. The cluster (processes, namespaces) is gone
/// when this returns, also on error; the directory with the logs stays.
pub async fn run(env: &RunEnv, scenario: &Scenario, seed: u64) -> Outcome {
    let schedule = Schedule::of(scenario.fault, seed);
    let dir = env.work_dir.join(format!("{}-{seed}", scenario.name));
    let _ = std::fs::remove_dir_all(&dir);
    let mut outcome = Outcome {
        name: scenario.name.to_string(),
        seed,
        schedule: schedule.describe(scenario.fault),
        dir: dir.clone(),
        ..Outcome::default()
    };
    let started = Instant::now();
    if let Err(e) = run_inner(env, scenario, seed, &schedule, &dir, &mut outcome).await {
        outcome.error = Some(format!("{e:#}"));
    }
    outcome.run_s = started.elapsed().as_secs_f64();
    outcome
}

async fn run_inner(
    env: &RunEnv,
    scenario: &Scenario,
    seed: u64,
    schedule: &Schedule,
    dir: &Path,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let fiu: Vec<String> = if scenario.fault == Fault::FsyncError {
        schedule.nodes.iter().map(|n| format!("s{n}")).collect()
    } else {
        Vec::new()
    };
    let fiu: Vec<&str> = fiu.iter().map(String::as_str).collect();
    // Every voter has a filesystem of its own in the power-loss scenario: which one loses
    // power is decided at run time (leader or follower).
    let disks: &[&str] = if scenario.fault == Fault::MetadataPowerLoss {
        &["m1", "m2", "m3"]
    } else {
        &[]
    };
    let node_disk: Vec<String> = if matches!(
        scenario.fault,
        Fault::DiskFull | Fault::SlowDisk | Fault::StoragePowerLoss
    ) {
        schedule.nodes.iter().map(|n| format!("s{n}")).collect()
    } else {
        Vec::new()
    };
    let disks: Vec<&str> = disks
        .iter()
        .copied()
        .chain(node_disk.iter().map(String::as_str))
        .collect();
    let skewed: &[(&str, &str)] = if scenario.fault == Fault::ClockSkew {
        &[("m2", "+2h"), ("s3", "-1h"), ("gw", "+4m")]
    } else {
        &[]
    };
    let mut cluster =
        Cluster::start(env.topology, dir, &env.lauscha, seed, &fiu, &disks, skewed).await?;
    let client = workload::s3_client(
        &cluster.s3_endpoint,
        &cluster.access_key,
        &cluster.secret_key,
    );
    retry("create the bucket", Duration::from_secs(60), || async {
        client
            .create_bucket()
            .bucket(workload::BUCKET)
            .send()
            .await?;
        Ok(())
    })
    .await?;
    retry("create the volume", Duration::from_secs(60), || async {
        cluster
            .admin(&["volume", "create", workload::VOLUME, "--size", "16M"])
            .await
            .map(drop)
    })
    .await?;

    let clock = Clock::start();
    let stop = Arc::new(AtomicBool::new(false));
    let shape = S3Shape {
        keys: 200,
        workers: 4,
    };
    let workers: Vec<_> = (0..shape.workers)
        .map(|w| {
            tokio::spawn(workload::s3_worker(
                client.clone(),
                w,
                seed,
                shape,
                clock,
                stop.clone(),
            ))
        })
        .collect();
    let nbd = tokio::spawn(workload::nbd_writer(
        cluster.nbd_addr.clone(),
        seed,
        clock,
        stop.clone(),
    ));

    tokio::time::sleep(Duration::from_millis(schedule.fault_at_ms)).await;
    let fault_result = inject(&mut cluster, scenario.fault, schedule).await;
    let fault_end = Instant::now();
    // Heal time: from the fault's end until a maintenance dry run finds nothing degraded,
    // watched while the workload goes on.
    let admin = cluster.admin_client();
    let heal = tokio::spawn(async move {
        loop {
            if let Ok(report) = admin.call(&["degraded"]).await
                && report["stripes_degraded"].as_u64() == Some(0)
            {
                return Some(fault_end.elapsed().as_secs_f64());
            }
            if fault_end.elapsed() > Duration::from_secs(120) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(schedule.after_ms)).await;
    stop.store(true, Ordering::SeqCst);
    let end_ns = clock.now_ns();
    let mut records = Vec::new();
    for w in workers {
        records.push(w.await.context("S3 worker panicked")?);
    }
    let nbd = nbd.await.context("NBD writer panicked")?;
    fault_result.context("inject the fault")?;
    cluster.net.ensure_working()?;

    outcome.heal_s = heal.await.context("heal watcher panicked")?;
    if outcome.heal_s.is_none() {
        outcome
            .details
            .push("still degraded 120 s after the fault ended".into());
    }

    // The histories.
    let mut histories: BTreeMap<String, Vec<RegOp>> = BTreeMap::new();
    let mut successes = nbd.successes_ns.clone();
    for r in &records {
        outcome.ops += r.invoked;
        successes.extend(&r.successes_ns);
        for (key, what) in &r.corrupt {
            outcome.corrupt += 1;
            outcome
                .details
                .push(format!("corrupt read of {key}: {what}"));
        }
        for (key, op) in &r.ops {
            histories.entry(key.clone()).or_default().push(op.clone());
            if op.complete_ns.is_none() {
                outcome.indeterminate += 1;
            }
        }
    }
    outcome.ops += nbd.invoked;
    outcome.acked = successes.len() as u64;
    // A failed read or LIST changed nothing; a failed write (or NBD write or FLUSH) may
    // have happened.
    let s3_failed: u64 = records.iter().map(|r| r.failed).sum();
    outcome.failed = s3_failed.saturating_sub(outcome.indeterminate);
    outcome.indeterminate += nbd.failed;
    outcome.max_unavailable_s = check::max_unavailability_ns(successes, 0, end_ns) as f64 / 1e9;

    // Final read-back of every key written, in rounds: each round tries every key not yet
    // read once, so one key that stays unreadable cannot use up the time of the others
    // (it did: one lost object made every key after it count as lost). One budget for
    // all of them, so that a cluster that stays down fails the scenario in minutes.
    let reads_deadline = Instant::now() + Duration::from_secs(120);
    let mut unread: BTreeMap<String, anyhow::Error> = histories
        .keys()
        .map(|k| {
            (
                k.clone(),
                anyhow::anyhow!("not tried: the final reads' 120 s budget was spent"),
            )
        })
        .collect();
    while !unread.is_empty() && Instant::now() < reads_deadline {
        let keys: Vec<String> = unread.keys().cloned().collect();
        for key in keys {
            if Instant::now() >= reads_deadline {
                break;
            }
            let invoke_ns = clock.now_ns();
            let read = match workload::get(&client, &key).await {
                Ok(read) => read,
                Err(e) => {
                    unread.insert(key, e);
                    continue;
                }
            };
            unread.remove(&key);
            let ops = histories.get_mut(&key).expect("a key of the histories");
            match read {
                Ok(value) => {
                    let lost = check::lost_acked_writes(ops, value);
                    outcome.lost_acked += lost.len() as u64;
                    outcome
                        .details
                        .extend(lost.into_iter().map(|l| format!("{key}: lost {l}")));
                    ops.push(RegOp {
                        invoke_ns,
                        complete_ns: Some(clock.now_ns()),
                        kind: RegKind::Get(value),
                    });
                }
                Err(what) => {
                    outcome.corrupt += 1;
                    outcome.details.push(format!("final read of {key}: {what}"));
                }
            }
        }
        if !unread.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for (key, e) in unread {
        let acked_writes = histories[&key]
            .iter()
            .filter(|o| o.complete_ns.is_some() && !matches!(o.kind, RegKind::Get(_)))
            .count();
        outcome.lost_acked += acked_writes as u64;
        outcome.details.push(format!(
            "{key} unreadable within the final reads' 120 s: {e:#}"
        ));
    }
    // The volume, block by block.
    let blocks = workload::nbd_read_all(&cluster.nbd_addr).await?;
    let verdict = check::check_blocks(&nbd.acked, &nbd.flushed, &blocks);
    outcome.lost_acked += verdict.lost_acked.len() as u64;
    outcome.corrupt += verdict.corrupt.len() as u64;
    outcome
        .details
        .extend(verdict.lost_acked.into_iter().map(|b| format!("NBD {b}")));
    outcome
        .details
        .extend(verdict.corrupt.into_iter().map(|b| format!("NBD {b}")));
    // A proxy that failed during the final reads would have made keys unreadable: that is
    // the harness's failure, not lost data.
    cluster.net.ensure_working()?;
    // Everything is read: the cluster can go before the slow checks, which run off the
    // runtime's threads so that SIGINT/SIGTERM still end the run at once.
    drop(cluster);
    let lists: Vec<_> = records.into_iter().flat_map(|r| r.lists).collect();
    let (violations, details) = tokio::task::spawn_blocking(move || {
        let mut details = Vec::new();
        for (key, ops) in &histories {
            if !check::linearizable(ops) {
                details.push(format!(
                    "{key}: not linearizable: {}",
                    describe_history(ops)
                ));
            }
        }
        for list in &lists {
            let problems = check::list_violations(list, &histories);
            details.extend(problems.into_iter().map(|p| format!("LIST: {p}")));
        }
        (details.len() as u64, details)
    })
    .await
    .context("checker panicked")?;
    outcome.violations += violations;
    outcome.details.extend(details);
    Ok(())
}

fn describe_history(ops: &[RegOp]) -> String {
    let mut ops: Vec<&RegOp> = ops.iter().collect();
    ops.sort_by_key(|o| o.invoke_ns);
    ops.iter()
        .map(|o| {
            let what = match o.kind {
                RegKind::Put(v) => format!("put {v}"),
                RegKind::Delete => "delete".into(),
                RegKind::Get(v) => format!(
                    "get={}",
                    v.map_or("none".into(), |v: ValueId| v.to_string())
                ),
            };
            let end = o
                .complete_ns
                .map_or("?".to_string(), |c| format!("{:.3}", c as f64 / 1e9));
            format!("[{:.3}..{end} {what}]", o.invoke_ns as f64 / 1e9)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Retries `f` until it succeeds or `within` has passed.
async fn retry<F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    retry_value(what, within, &mut f).await
}

async fn retry_value<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{what}: still failing after {within:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

async fn inject(cluster: &mut Cluster, fault: Fault, s: &Schedule) -> anyhow::Result<()> {
    let hold = Duration::from_millis(s.fault_for_ms);
    let nodes: Vec<String> = s.nodes.iter().map(|n| format!("s{n}")).collect();
    match fault {
        Fault::LeaderKill => {
            let leader = cluster.leader().await?;
            cluster.kill(&leader).await?;
            tokio::time::sleep(hold).await;
            cluster.start_proc(&leader).await?;
        }
        Fault::GrayFailure => {
            let target = if s.target_leader {
                cluster.leader().await?
            } else {
                nodes[0].clone()
            };
            cluster.signal(&target, Signal::SIGSTOP)?;
            tokio::time::sleep(hold).await;
            cluster.signal(&target, Signal::SIGCONT)?;
        }
        Fault::LeaderIsolated => {
            let leader = cluster.leader().await?;
            let held = cluster.net.held();
            cluster.net.set_isolated(&leader, true)?;
            tokio::time::sleep(hold).await;
            cluster.net.set_isolated(&leader, false)?;
            ensure_cut_held(&cluster.net, held)?;
        }
        Fault::AsymmetricPartition => {
            let leader = cluster.leader().await?;
            let others: Vec<String> = ["m1", "m2", "m3"]
                .iter()
                .filter(|m| **m != leader)
                .map(|m| m.to_string())
                .collect();
            let held = cluster.net.held();
            for o in &others {
                cluster.net.set_blocked(&leader, o, true)?;
            }
            tokio::time::sleep(hold).await;
            for o in &others {
                cluster.net.set_blocked(&leader, o, false)?;
            }
            ensure_cut_held(&cluster.net, held)?;
        }
        Fault::StorageKill => {
            for n in &nodes {
                cluster.kill(n).await?;
            }
            tokio::time::sleep(hold).await;
            for n in &nodes {
                cluster.start_proc(n).await?;
            }
        }
        Fault::SitePartition => {
            let held = cluster.net.held();
            cluster.net.set_sites_partitioned(true)?;
            tokio::time::sleep(hold).await;
            cluster.net.set_sites_partitioned(false)?;
            ensure_cut_held(&cluster.net, held)?;
        }
        Fault::BitRot => {
            let mut rng = StdRng::seed_from_u64(s.fault_at_ms ^ 0xb17);
            for n in &nodes {
                let dir = cluster.proc(n).data_dir.clone();
                let flipped = flip_bits(&dir, s.flips_per_node, &mut rng)?;
                anyhow::ensure!(flipped > 0, "no shard files on {n} to flip bits in");
            }
        }
        Fault::FsyncError => {
            let pid = cluster.proc(&nodes[0]).pid().context("node not running")?;
            fiu_ctrl(pid, "enable name=posix/io/sync/*")?;
            tokio::time::sleep(hold).await;
            fiu_ctrl(pid, "disable name=posix/io/sync/*")?;
        }
        Fault::NbdServerKill => {
            cluster.kill("gw").await?;
            tokio::time::sleep(hold).await;
            cluster.start_proc("gw").await?;
        }
        Fault::MetadataPowerLoss => {
            let leader = cluster.leader().await?;
            let target = if s.target_leader {
                leader
            } else {
                ["m1", "m2", "m3"]
                    .into_iter()
                    .find(|m| *m != leader)
                    .expect("three voters")
                    .to_string()
            };
            cluster.power_loss(&target).await?;
            tokio::time::sleep(hold).await;
            cluster.power_on(&target).await?;
        }
        Fault::WanDegraded => {
            let (counts, unit, lost_means) = match &cluster.net {
                Net::Namespaces(_) => {
                    let link = WanLink::start(s.wan, s.fault_at_ms ^ 0x3a4)?;
                    tokio::time::sleep(hold).await;
                    let counts = link.counts();
                    let failure = link.failure();
                    drop(link);
                    if let Some(failure) = failure {
                        anyhow::bail!("the degraded WAN link broke down: {failure}");
                    }
                    (counts, "packets", "dropped")
                }
                Net::Loopback(proxy) => {
                    let before = proxy.wan_counts();
                    proxy.set_wan(Some(s.wan));
                    tokio::time::sleep(hold).await;
                    proxy.set_wan(None);
                    let after = proxy.wan_counts();
                    let counts = crate::wan::WanCounts {
                        forwarded: after.forwarded - before.forwarded,
                        lost: after.lost - before.lost,
                    };
                    // The proxy cannot drop bytes; a lost chunk is held 200 ms longer, as
                    // TCP's retransmission would deliver it.
                    (counts, "chunks", "delayed as lost")
                }
            };
            // Gateway, voters and storage nodes sit on both sites, so a link that carried
            // nothing was not between them and the scenario proved nothing.
            anyhow::ensure!(
                counts.forwarded > 0,
                "the degraded WAN link carried no {unit}"
            );
            eprintln!(
                "lauscha-chaos: the degraded WAN link carried {} {unit}; {} of them {lost_means}",
                counts.forwarded, counts.lost
            );
        }
        Fault::StoragePowerLoss => {
            // Frozen together first, so that neither writes on while the other loses power.
            for n in &nodes {
                cluster.signal(n, Signal::SIGSTOP)?;
            }
            for n in &nodes {
                cluster.power_loss(n).await?;
            }
            tokio::time::sleep(hold).await;
            for n in &nodes {
                cluster.power_on(n).await?;
            }
        }
        Fault::MembershipChange => {
            cluster.start_proc("m4").await?;
            let address = cluster.voter_address("m4");
            cluster.admin(&["meta", "add", "4", &address]).await?;
            cluster.admin(&["meta", "promote", "4"]).await?;
            let leader = cluster.leader().await?;
            let target = if s.target_leader {
                leader
            } else {
                ["m1", "m2", "m3"]
                    .into_iter()
                    .find(|m| *m != leader)
                    .expect("three voters")
                    .to_string()
            };
            let id = target.trim_start_matches('m').to_string();
            cluster.admin(&["meta", "remove", &id]).await?;
            // Out of the group, it may as well be gone.
            cluster.kill(&target).await?;
            tokio::time::sleep(hold).await;
        }
        Fault::DiskFull => {
            cluster.set_disk_full(&nodes[0], true)?;
            tokio::time::sleep(hold).await;
            cluster.set_disk_full(&nodes[0], false)?;
        }
        Fault::SlowDisk => {
            cluster.set_disk_slow(&nodes[0], true)?;
            tokio::time::sleep(hold).await;
            cluster.set_disk_slow(&nodes[0], false)?;
            // Every stripe of the 4+2 policy has a shard on every node, so a throttle that
            // saw no writes was not in the I/O path and the scenario proved nothing.
            let written = cluster.throttled_write_bytes(&nodes[0])?;
            anyhow::ensure!(
                written > 0,
                "the slow-disk throttle on {} saw no writes",
                nodes[0]
            );
            eprintln!(
                "lauscha-chaos: {} wrote {} KiB through the slow-disk throttle",
                nodes[0],
                written >> 10
            );
        }
        Fault::ClockSkew => {
            let leader = cluster.leader().await?;
            cluster.kill(&leader).await?;
            tokio::time::sleep(hold).await;
            cluster.start_proc(&leader).await?;
        }
        Fault::RollingRestart => {
            let per_voter = hold / 3;
            for m in ["m1", "m2", "m3"] {
                cluster.kill(m).await?;
                tokio::time::sleep(per_voter / 2).await;
                cluster.start_proc(m).await?;
                tokio::time::sleep(per_voter / 2).await;
            }
        }
    }
    Ok(())
}

/// In the loopback topology, that a cut held something back: Raft's heartbeats cross
/// every cut the scenarios make, so a cut that held nothing never reached the cluster
/// and the scenario proved nothing. (`before` is `None` in namespaces.)
fn ensure_cut_held(net: &Net, before: Option<u64>) -> anyhow::Result<()> {
    if let (Some(before), Some(after)) = (before, net.held()) {
        anyhow::ensure!(
            after > before,
            "the proxy held nothing back during the cut: it never reached the cluster"
        );
        eprintln!(
            "lauscha-chaos: the proxy held back {} chunks and connections at the cut",
            after - before
        );
    }
    Ok(())
}

fn fiu_ctrl(pid: u32, command: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("fiu-ctrl")
        .args(["-c", command, &pid.to_string()])
        .output()
        .context("run fiu-ctrl (apt-get install fiu-utils)")?;
    anyhow::ensure!(
        out.status.success(),
        "fiu-ctrl -c {command:?} {pid}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Flips one bit in each of up to `flips` shard files and segment files (small shards)
/// under `dir`, in the second half of the file (where a shard file's data is; anywhere
/// in a segment's records).
fn flip_bits(dir: &Path, flips: u32, rng: &mut StdRng) -> anyhow::Result<usize> {
    fn walk(p: &Path, in_shards: bool, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(p) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                let shards = in_shards || e.file_name() == "shards" || e.file_name() == "segments";
                walk(&path, shards, out);
            } else if in_shards {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, false, &mut files);
    files.sort();
    files.shuffle(rng);
    files.truncate(flips as usize);
    for file in &files {
        let mut bytes = std::fs::read(file)?;
        if bytes.len() < 2 {
            continue;
        }
        let at = rng.random_range(bytes.len() / 2..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        std::fs::write(file, bytes)?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        for s in SCENARIOS {
            for seed in [0, 1, 42, u64::MAX] {
                assert_eq!(Schedule::of(s.fault, seed), Schedule::of(s.fault, seed));
            }
        }
        let kill = Schedule::of(Fault::StorageKill, 7);
        assert_eq!(kill.nodes.len(), usize::from(PARITY_SHARDS));
        assert!(kill.nodes.iter().all(|n| (1..=STORAGE_NODES).contains(n)));
        // Different seeds spread over the nodes.
        let picks: std::collections::BTreeSet<Vec<u32>> = (0..50)
            .map(|seed| Schedule::of(Fault::StorageKill, seed).nodes)
            .collect();
        assert!(picks.len() > 5);
    }
}
