//! A two-site cluster of real `lauscha server` processes, one per network namespace (or
//! per loopback address, see [`TopologyKind`]): three metadata voters (two in site A), six
//! storage nodes (three per site) and a gateway serving S3, the admin API and NBD.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use lauscha_core::config::{
    GatewayConfig, MetadataConfig, PolicyConfig, ServerConfig, StorageNodeConfig, VoterAddress,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::proxy::{FaultProxy, ProxiedHost};
use crate::topology::{Host, Net, Network, Site, TopologyKind};

/// A process's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A metadata voter.
    Metadata,
    /// A storage node.
    Storage,
    /// The gateway (S3, admin, NBD).
    Gateway,
}

const META_PORT: u16 = 7000;
/// Debian's libfaketime (package faketime).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const STORAGE_PORT: u16 = 7100;
/// Storage nodes, three per site.
pub const STORAGE_NODES: u32 = 6;
/// Parity shards of the default policy (4+2): the number of storage nodes that may die.
pub const PARITY_SHARDS: u8 = 2;

/// One process of the cluster.
pub struct Proc {
    /// Host name, e.g. `m1`, `s4`, `gw`.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Metadata node id or storage node id; 0 for the gateway.
    pub id: u64,
    /// Where it runs.
    pub host: Host,
    /// Its data directory.
    pub data_dir: PathBuf,
    first_config: PathBuf,
    restart_config: PathBuf,
    started_once: bool,
    child: Option<Child>,
    // Held so that the child never writes into a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
    log: PathBuf,
    /// Run under `fiu-run -x`, so that POSIX calls can be made to fail at run time.
    pub under_fiu: bool,
    /// libfaketime's `FAKETIME` for this process (wall clock only; monotonic time is
    /// left alone, as a skewed NTP client would).
    pub faketime: Option<String>,
    /// Its own ext4 filesystem on a loop device (for power loss), mounted here.
    pub disk: Option<PathBuf>,
}

impl Proc {
    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether it was started and not killed.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// The cluster of one scenario. Dropping it kills every process, then removes the
/// network.
pub struct Cluster {
    /// Where configs, data and logs live.
    pub dir: PathBuf,
    /// Every process.
    pub procs: Vec<Proc>,
    /// The network: namespaces or the proxy (dropped after the processes).
    pub net: Net,
    /// Root access key id.
    pub access_key: String,
    /// Root secret.
    pub secret_key: String,
    /// `http://10.77.1.30:9000` (the gateway's listen address).
    pub s3_endpoint: String,
    /// `http://10.77.1.30:9001`.
    pub admin_endpoint: String,
    /// `10.77.1.30:10809`.
    pub nbd_addr: String,
    lauscha: PathBuf,
}

fn hosts(topology: TopologyKind) -> Vec<(Host, Role, u64)> {
    let host = |name: &str, site: Site, last: u8| {
        let (ip, listen_ip) = topology.addresses(site, last);
        Host {
            name: name.to_string(),
            site,
            ip,
            listen_ip,
        }
    };
    let mut all = vec![
        (host("m1", Site::A, 11), Role::Metadata, 1),
        (host("m2", Site::B, 12), Role::Metadata, 2),
        (host("m3", Site::A, 13), Role::Metadata, 3),
        // A spare voter: its namespace and config exist, the process starts only when a
        // scenario adds it to the group.
        (host("m4", Site::B, 14), Role::Metadata, 4),
    ];
    for id in 1..=STORAGE_NODES {
        let site = if id <= STORAGE_NODES / 2 {
            Site::A
        } else {
            Site::B
        };
        all.push((
            host(&format!("s{id}"), site, 20 + id as u8),
            Role::Storage,
            u64::from(id),
        ));
    }
    all.push((host("gw", Site::A, 30), Role::Gateway, 0));
    all
}

fn write_config(path: &Path, config: &ServerConfig) -> anyhow::Result<()> {
    std::fs::write(path, toml::to_string_pretty(config)?)
        .with_context(|| format!("write {}", path.display()))
}

impl Cluster {
    /// Writes the configs, builds the network and starts every process; returns once the
    /// gateway serves. `fiu_hosts` run under libfiu, `disk_hosts` on a filesystem of
    /// their own (namespaces only), `skewed` with a wall clock off by the given libfaketime
    /// offset.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        topology: TopologyKind,
        dir: &Path,
        lauscha: &Path,
        seed: u64,
        fiu_hosts: &[&str],
        disk_hosts: &[&str],
        skewed: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        unmount_under(&dir);
        remove_stale_cgroups();
        let layout = hosts(topology);
        if topology == TopologyKind::Loopback && !disk_hosts.is_empty() {
            bail!("a filesystem of a process's own needs the namespace topology");
        }
        let net = match topology {
            TopologyKind::Namespaces => Net::Namespaces(Network::create(
                layout.iter().map(|(h, _, _)| h.clone()).collect(),
            )?),
            TopologyKind::Loopback => {
                let proxied = layout
                    .iter()
                    .map(|(h, role, _)| ProxiedHost {
                        name: h.name.clone(),
                        site: h.site,
                        front: h.ip,
                        real: h.listen_ip,
                        // No role connects to the gateway (the harness does, directly),
                        // but its connections go through the proxy like everyone's.
                        ports: match role {
                            Role::Metadata => vec![META_PORT],
                            Role::Storage => vec![STORAGE_PORT],
                            Role::Gateway => Vec::new(),
                        },
                    })
                    .collect();
                Net::Loopback(FaultProxy::start(proxied, seed).await?)
            }
        };
        // Where each process listens, and, in the loopback topology, where it is known to
        // the others (the proxy) and what its connections come from.
        let source_ip = |h: &Host| {
            (topology == TopologyKind::Loopback).then_some(std::net::IpAddr::V4(h.listen_ip))
        };
        let advertise =
            |h: &Host, port: u16| (h.ip != h.listen_ip).then(|| format!("{}:{port}", h.ip));
        let voter_ips: Vec<(u64, Ipv4Addr)> = layout
            .iter()
            .filter(|(_, r, _)| *r == Role::Metadata)
            .map(|(h, _, id)| (*id, h.ip))
            .collect();
        let meta_addr = |id: u64| {
            let (_, ip) = voter_ips.iter().find(|(i, _)| *i == id).expect("voter");
            format!("{ip}:{META_PORT}")
        };
        let meta_endpoints: Vec<String> = (1..=3)
            .map(|id| format!("http://{}", meta_addr(id)))
            .collect();
        let access_key = format!("LKCHAOS{:013}", seed % 10_000_000_000_000);
        let secret_key = format!(
            "chaos-secret-{seed:020}-{:08x}",
            seed.rotate_left(17) as u32
        );
        // The harness reaches the gateway directly, in either topology.
        let gw_ip = layout
            .iter()
            .find(|(_, r, _)| *r == Role::Gateway)
            .expect("gateway")
            .0
            .listen_ip;
        let mut procs = Vec::new();
        for (host, role, id) in layout {
            let mut data_dir = dir.join(&host.name);
            let mut disk = None;
            if disk_hosts.contains(&host.name.as_str()) {
                let mount = dir.join(format!("{}-disk", host.name));
                make_disk(&mount.with_extension("img"), &mount)?;
                data_dir = mount.join("data");
                disk = Some(mount);
            }
            std::fs::create_dir_all(&data_dir)?;
            let (first, restart) = match role {
                Role::Metadata => {
                    let base = MetadataConfig {
                        node_id: id,
                        data_dir: data_dir.display().to_string(),
                        listen: format!("{}:{META_PORT}", host.listen_ip),
                        advertise: advertise(&host, META_PORT),
                        source_ip: source_ip(&host),
                        bootstrap: false,
                        root_access_key: None,
                        root_secret_key: None,
                        initial_voters: Vec::new(),
                    };
                    let mut first = base.clone();
                    if id == 1 {
                        first.bootstrap = true;
                        first.root_access_key = Some(access_key.clone());
                        first.root_secret_key = Some(secret_key.clone());
                        first.initial_voters = (2..=3)
                            .map(|node_id| VoterAddress {
                                node_id,
                                addr: meta_addr(node_id),
                            })
                            .collect();
                    }
                    let wrap = |m: MetadataConfig| ServerConfig {
                        metadata: Some(m),
                        ..Default::default()
                    };
                    (wrap(first), wrap(base))
                }
                Role::Storage => {
                    let config = ServerConfig {
                        storage: vec![StorageNodeConfig {
                            node_id: id as u32,
                            data_dir: data_dir.display().to_string(),
                            listen: format!("{}:{STORAGE_PORT}", host.listen_ip),
                            advertise: advertise(&host, STORAGE_PORT),
                            source_ip: source_ip(&host),
                            site: host.site.name().into(),
                            host: Some(format!("host-{}", host.name)),
                            capacity_bytes: 1 << 40,
                            metadata_endpoints: meta_endpoints.clone(),
                            scrub_bytes_per_s: 50_000_000,
                            scrub_interval_s: 86_400,
                            small_shard_segments: true,
                        }],
                        ..Default::default()
                    };
                    (config.clone(), config)
                }
                Role::Gateway => {
                    let mut gateway = GatewayConfig::with_metadata(meta_endpoints.clone());
                    gateway.source_ip = source_ip(&host);
                    gateway.s3_listen = format!("{gw_ip}:9000");
                    gateway.admin_listen = format!("{gw_ip}:9001");
                    gateway.nbd_listen = Some(format!("{gw_ip}:10809"));
                    gateway.default_policy = PolicyConfig {
                        data_shards: 4,
                        parity_shards: PARITY_SHARDS,
                        ..PolicyConfig::default()
                    };
                    // Repair within seconds of a fault ending, so heal time is measured.
                    gateway.maintenance.interval_s = 2;
                    let config = ServerConfig {
                        gateway: Some(gateway),
                        ..Default::default()
                    };
                    (config.clone(), config)
                }
            };
            let first_config = dir.join(format!("{}.toml", host.name));
            let restart_config = dir.join(format!("{}.restart.toml", host.name));
            write_config(&first_config, &first)?;
            write_config(&restart_config, &restart)?;
            procs.push(Proc {
                under_fiu: fiu_hosts.contains(&host.name.as_str()),
                faketime: skewed
                    .iter()
                    .find(|(h, _)| *h == host.name)
                    .map(|(_, offset)| offset.to_string()),
                disk,
                name: host.name.clone(),
                log: dir.join(format!("{}.log", host.name)),
                role,
                id,
                host,
                data_dir,
                first_config,
                restart_config,
                started_once: false,
                child: None,
                _stdout: None,
            });
        }
        let cluster = Cluster {
            s3_endpoint: format!("http://{gw_ip}:9000"),
            admin_endpoint: format!("http://{gw_ip}:9001"),
            nbd_addr: format!("{gw_ip}:10809"),
            dir,
            procs,
            net,
            access_key,
            secret_key,
            lauscha: lauscha.to_path_buf(),
        };
        // Voters 2 and 3 first, so that voter 1 can found the group with them; then the
        // nodes, then the gateway.
        let mut cluster = cluster;
        let order = ["m2", "m3", "m1", "s1", "s2", "s3", "s4", "s5", "s6", "gw"];
        for name in order {
            cluster.start_proc(name).await?;
        }
        Ok(cluster)
    }

    /// The process called `name`.
    pub fn proc(&self, name: &str) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Starts (or restarts) a process and waits until it reports ready.
    pub async fn start_proc(&mut self, name: &str) -> anyhow::Result<()> {
        let lauscha = self.lauscha.clone();
        let in_namespace = matches!(self.net, Net::Namespaces(_));
        let p = self.proc_mut(name);
        assert!(p.child.is_none(), "{name} already runs");
        let config = if p.started_once {
            p.restart_config.clone()
        } else {
            p.first_config.clone()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)?;
        // The command line: what wraps the process (its namespace, its mount, libfiu),
        // then lauscha itself.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if in_namespace {
            argv.extend(["ip", "netns", "exec"].map(Into::into));
            argv.push(p.host.netns().into());
        }
        if let Some(mount) = &p.disk {
            // Mounted inside the process's own mount namespace (`ip netns exec` made it), so
            // that when the process dies nothing else holds the filesystem and the next
            // mount replays its journal. Other processes' namespaces would otherwise keep
            // the shut-down instance alive.
            let image = mount.with_extension("img");
            argv.extend(
                [
                    "sh",
                    "-c",
                    "mount -o loop \"$1\" \"$2\" && mkdir -p \"$2/data\" && shift 2 && exec \"$@\"",
                    "sh",
                ]
                .map(Into::into),
            );
            argv.push(image.into());
            argv.push(mount.as_os_str().to_owned());
        }
        if p.under_fiu {
            argv.extend(["fiu-run", "-x"].map(Into::into));
        }
        argv.extend([
            lauscha.clone().into(),
            "server".into(),
            "--config".into(),
            config.into(),
        ]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if let Some(offset) = &p.faketime {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", offset)
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {name} ({})", lauscha.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let ready =
            tokio::time::timeout(Duration::from_secs(90), stdout.read_line(&mut line)).await;
        match ready {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                let _ = child.kill().await;
                bail!(
                    "{name} did not report ready within 90 s; see {}",
                    p.log.display()
                );
            }
        }
        p.started_once = true;
        p.child = Some(child);
        p._stdout = Some(stdout);
        Ok(())
    }

    /// Sends `signal` to a running process.
    pub fn signal(&self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .proc(name)
            .pid()
            .with_context(|| format!("{name} is not running"))?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("signal {signal} to {name}"))
    }

    /// SIGKILL, and wait until the process is gone (its port and files are free).
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let p = self.proc_mut(name);
        let Some(mut child) = p.child.take() else {
            return Ok(());
        };
        p._stdout = None;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Power loss: the process is frozen, its filesystem shut down without flushing its
    /// journal (what was not fsynced is gone, as when the power fails), and the process
    /// killed, which unmounts the filesystem with its mount namespace. [`Cluster::power_on`]
    /// brings it back.
    pub async fn power_loss(&mut self, name: &str) -> anyhow::Result<()> {
        let mount = self
            .proc(name)
            .disk
            .clone()
            .with_context(|| format!("{name} has no disk of its own"))?;
        let pid = self.proc(name).pid().context("not running")?;
        self.signal(name, Signal::SIGSTOP)?;
        run(
            "nsenter",
            &[
                "-t",
                &pid.to_string(),
                "-m",
                "xfs_io",
                "-x",
                "-c",
                "shutdown",
                &mount.display().to_string(),
            ],
        )
        .context("shut the filesystem down (apt-get install xfsprogs)")?;
        self.kill(name).await
    }

    /// Starts the process again once its old filesystem instance is gone (the journal is
    /// replayed at mount).
    pub async fn power_on(&mut self, name: &str) -> anyhow::Result<()> {
        let mount = self.proc(name).disk.clone().context("no disk")?;
        let image = mount.with_extension("img");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while attached_loop_device(&image)?.is_some() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} still attached to a loop device 30 s after the kill",
                    image.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.start_proc(name).await
    }

    /// Fills the process's own filesystem to the last block (a ballast file), or frees
    /// it again.
    pub fn set_disk_full(&self, name: &str, full: bool) -> anyhow::Result<()> {
        let p = self.proc(name);
        let mount = p.disk.clone().context("no disk of its own")?;
        let pid = p.pid().context("not running")?.to_string();
        let script = if full {
            // dd stops at ENOSPC, which is the point.
            "dd if=/dev/zero of=\"$1/ballast\" bs=1M 2>/dev/null; sync; test -s \"$1/ballast\""
        } else {
            "rm -f \"$1/ballast\""
        };
        run(
            "nsenter",
            &[
                "-t",
                &pid,
                "-m",
                "sh",
                "-c",
                script,
                "sh",
                &mount.display().to_string(),
            ],
        )
    }

    /// Slows the process's own disk (its loop device) to [`SLOW_DISK`], through a blkio
    /// cgroup the process is moved into, or lifts the limits again. The cgroup is removed
    /// when the cluster goes.
    pub fn set_disk_slow(&self, name: &str, slow: bool) -> anyhow::Result<()> {
        let (cgroup, dir, device) = self.slow_disk_cgroup(name)?;
        if slow {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("create the cgroup {}", dir.display()))?;
            cgroup.set_limits(&dir, &device, Some(SLOW_DISK))?;
            let pid = self.proc(name).pid().context("not running")?;
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        } else {
            cgroup.set_limits(&dir, &device, None)?;
        }
        Ok(())
    }

    /// Bytes the process wrote to its own disk through the slow-disk cgroup: proof that
    /// the throttle was in the I/O path.
    pub fn throttled_write_bytes(&self, name: &str) -> anyhow::Result<u64> {
        let (cgroup, dir, device) = self.slow_disk_cgroup(name)?;
        cgroup.written_bytes(&dir, &device)
    }

    /// The blkio controller, the slow-disk cgroup directory of `name` and the `MAJ:MIN`
    /// of its own loop device.
    fn slow_disk_cgroup(&self, name: &str) -> anyhow::Result<(BlkioCgroup, PathBuf, String)> {
        let mount = self.proc(name).disk.clone().context("no disk of its own")?;
        let image = mount.with_extension("img");
        let loop_dev = attached_loop_device(&image)?
            .with_context(|| format!("{} is not attached to a loop device", image.display()))?;
        let numbers = std::fs::read_to_string(format!("/sys/block/{loop_dev}/dev"))
            .with_context(|| format!("read /sys/block/{loop_dev}/dev"))?;
        let cgroup = BlkioCgroup::find()?;
        let dir = cgroup.dir(name);
        Ok((cgroup, dir, numbers.trim().to_string()))
    }

    /// Runs `lauscha admin --json ARGS` against the cluster and parses its output.
    pub async fn admin(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.admin_client().call(args).await
    }

    /// A handle for admin calls that outlives borrows of the cluster.
    pub fn admin_client(&self) -> Admin {
        Admin {
            lauscha: self.lauscha.clone(),
            endpoint: self.admin_endpoint.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }

    /// The metadata leader most voters name, as a host name (`m1`..`m3`).
    pub async fn leader(&self) -> anyhow::Result<String> {
        let status = self.admin(&["status"]).await?;
        let mut votes = std::collections::BTreeMap::<u64, usize>::new();
        for voter in status["metadata"].as_array().into_iter().flatten() {
            if let Some(id) = voter["leader_id"].as_u64() {
                *votes.entry(id).or_default() += 1;
            }
        }
        let (id, _) = votes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .context("no voter knows a leader")?;
        Ok(format!("m{id}"))
    }

    /// The address a voter is known by (the one to add it to the group with).
    pub fn voter_address(&self, name: &str) -> String {
        format!("{}:{META_PORT}", self.proc(name).host.ip)
    }

    /// Storage data directories, for bit flips.
    pub fn storage_dirs(&self) -> Vec<(String, PathBuf)> {
        self.procs
            .iter()
            .filter(|p| p.role == Role::Storage)
            .map(|p| (p.name.clone(), p.data_dir.clone()))
            .collect()
    }
}

/// The admin API, through `lauscha admin --json`.
#[derive(Clone)]
pub struct Admin {
    lauscha: PathBuf,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl Admin {
    /// Runs `lauscha admin --json ARGS` against the cluster and parses its output.
    pub async fn call(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            Command::new(&self.lauscha)
                .arg("admin")
                .arg("--json")
                .args(args)
                .env("LAUSCHA_ADMIN_ENDPOINT", &self.endpoint)
                .env("LAUSCHA_ACCESS_KEY", &self.access_key)
                .env("LAUSCHA_SECRET_KEY", &self.secret_key)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("lauscha admin {} timed out", args.join(" ")))??;
        if !out.status.success() {
            bail!(
                "lauscha admin {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parse the output of lauscha admin {}", args.join(" ")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(child) = &mut p.child {
                let _ = child.start_kill();
            }
        }
        // Reap synchronously: the namespaces are removed right after, and a process
        // still inside one would keep it alive.
        for p in &mut self.procs {
            if let Some(pid) = p.child.as_ref().and_then(Child::id) {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
            }
        }
        unmount_under(&self.dir);
        remove_stale_cgroups();
    }
}

/// Limits of the slow-disk scenario, per device.
#[derive(Clone, Copy, Debug)]
pub struct DiskLimits {
    /// Bytes per second read.
    pub read_bytes_per_s: u64,
    /// Bytes per second written.
    pub write_bytes_per_s: u64,
    /// Read requests per second.
    pub read_iops: u64,
    /// Write requests per second (every fsync is at least one).
    pub write_iops: u64,
}

/// A disk like a failing one: a few hundred KiB/s and a few dozen requests per second.
pub const SLOW_DISK: DiskLimits = DiskLimits {
    read_bytes_per_s: 2 << 20,
    write_bytes_per_s: 512 << 10,
    read_iops: 50,
    write_iops: 20,
};

/// Prefix of the cgroups the harness makes (removed by [`remove_stale_cgroups`]).
const CGROUP_PREFIX: &str = "lch-slow-";

/// The blkio controller: cgroup v1's `blkio` hierarchy where it is mounted (limits in
/// `blkio.throttle.*`), else cgroup v2's `io` controller (limits in `io.max`).
enum BlkioCgroup {
    V1(PathBuf),
    V2(PathBuf),
}

impl BlkioCgroup {
    fn find() -> anyhow::Result<BlkioCgroup> {
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        if v1.join("blkio.throttle.write_bps_device").exists() {
            return Ok(BlkioCgroup::V1(v1.to_path_buf()));
        }
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers =
            std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "io") {
            // Children get the io controller only when the root hands it down.
            write_file(&v2.join("cgroup.subtree_control"), "+io")?;
            return Ok(BlkioCgroup::V2(v2.to_path_buf()));
        }
        bail!(
            "no blkio cgroup controller (neither /sys/fs/cgroup/blkio nor the io controller \
             of cgroup v2): the slow-disk scenario needs one"
        )
    }

    fn dir(&self, name: &str) -> PathBuf {
        match self {
            BlkioCgroup::V1(root) | BlkioCgroup::V2(root) => {
                root.join(format!("{CGROUP_PREFIX}{name}"))
            }
        }
    }

    /// Sets `limits` on `device` (`MAJ:MIN`) for the cgroup at `dir`; `None` lifts them.
    fn set_limits(
        &self,
        dir: &Path,
        device: &str,
        limits: Option<DiskLimits>,
    ) -> anyhow::Result<()> {
        match self {
            BlkioCgroup::V1(_) => {
                // 0 removes a v1 rule.
                let l = limits.unwrap_or(DiskLimits {
                    read_bytes_per_s: 0,
                    write_bytes_per_s: 0,
                    read_iops: 0,
                    write_iops: 0,
                });
                for (file, value) in [
                    ("blkio.throttle.read_bps_device", l.read_bytes_per_s),
                    ("blkio.throttle.write_bps_device", l.write_bytes_per_s),
                    ("blkio.throttle.read_iops_device", l.read_iops),
                    ("blkio.throttle.write_iops_device", l.write_iops),
                ] {
                    write_file(&dir.join(file), &format!("{device} {value}"))?;
                }
            }
            BlkioCgroup::V2(_) => {
                let line = match limits {
                    Some(l) => format!(
                        "{device} rbps={} wbps={} riops={} wiops={}",
                        l.read_bytes_per_s, l.write_bytes_per_s, l.read_iops, l.write_iops
                    ),
                    None => format!("{device} rbps=max wbps=max riops=max wiops=max"),
                };
                write_file(&dir.join("io.max"), &line)?;
            }
        }
        Ok(())
    }

    fn written_bytes(&self, dir: &Path, device: &str) -> anyhow::Result<u64> {
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .with_context(|| format!("read {}", dir.join(file).display()))
        };
        let found = match self {
            // "7:3 Write 8388608"
            BlkioCgroup::V1(_) => read("blkio.throttle.io_service_bytes")?
                .lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some(device) && f.next() == Some("Write"))
                        .then(|| f.next()?.parse().ok())
                        .flatten()
                }),
            // "7:3 rbytes=.. wbytes=8388608 ..."
            BlkioCgroup::V2(_) => read("io.stat")?.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                if f.next() != Some(device) {
                    return None;
                }
                f.find_map(|kv| kv.strip_prefix("wbytes=")?.parse().ok())
            }),
        };
        Ok(found.unwrap_or(0))
    }
}

/// Removes the harness's cgroups (they must be empty: their processes are gone).
pub fn remove_stale_cgroups() {
    for root in ["/sys/fs/cgroup/blkio", "/sys/fs/cgroup"] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(CGROUP_PREFIX) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// The loop device (`loop3`) `image` is attached to, if any.
fn attached_loop_device(image: &Path) -> anyhow::Result<Option<String>> {
    let out = std::process::Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .context("run losetup")?;
    // "/dev/loop3: []: (/var/tmp/.../s2-disk.img)", or nothing when not attached.
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout
        .split(':')
        .next()
        .and_then(|d| d.trim().strip_prefix("/dev/"))
        .filter(|d| !d.is_empty())
        .map(str::to_string))
}

fn write_file(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A 512 MiB sparse image with ext4, to be mounted at `mount` by the process's start.
fn make_disk(image: &Path, mount: &Path) -> anyhow::Result<()> {
    std::fs::File::create(image)?.set_len(512 << 20)?;
    run("mkfs.ext4", &["-q", "-F", &image.display().to_string()])
        .context("make the power-loss filesystem (apt-get install e2fsprogs)")?;
    std::fs::create_dir_all(mount)?;
    Ok(())
}

/// Unmounts whatever is mounted under `dir` (ours, also from a crashed run).
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    for line in mounts.lines() {
        if let Some(point) = line.split_whitespace().nth(1)
            && point.starts_with(&prefix)
        {
            let _ = std::process::Command::new("umount").arg(point).output();
        }
    }
}
