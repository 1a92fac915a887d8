//! The network the cluster runs in: one network namespace per process, two sites, and
//! the root namespace as the router between them.
//!
//! ```text
//!   site A: bridge lchbr-a 10.77.1.1/24        site B: bridge lchbr-b 10.77.2.1/24
//!     lch-m1 10.77.1.11   lch-s1 10.77.1.21      lch-m2 10.77.2.12  lch-s4 10.77.2.24
//!     lch-m3 10.77.1.13   ...                    ...
//!     lch-gw 10.77.1.30
//!                 \_________ root namespace: routes between the sites,
//!                            runs the harness and its clients _________/
//! ```
//!
//! Without namespaces (no root, no user namespace), [`TopologyKind::Loopback`] puts every
//! host on addresses of its own in 127.0.0.0/8 with a fault-injecting TCP proxy between
//! them ([`crate::proxy`]); [`Net`] makes the same faults in either.
//!
//! In the namespace topology, faults are made with the kernel's own tools, so they are
//! real: a host's link set down
//! (every packet to and from it silently lost), a blackhole route in one namespace (that
//! host cannot send to another: an asymmetric partition; both ways: symmetric), and
//! policy rules in the router dropping everything between the sites. Everything made is
//! named `lch*`; [`Network::create`] first removes what a crashed run left, and dropping
//! the [`Network`] removes it all.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

/// A site of the two-site topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Site A (10.77.1.0/24).
    A,
    /// Site B (10.77.2.0/24).
    B,
}

impl Site {
    /// The site's subnet, as `ip` writes it.
    pub fn subnet(self) -> &'static str {
        match self {
            Site::A => "10.77.1.0/24",
            Site::B => "10.77.2.0/24",
        }
    }

    fn octet(self) -> u8 {
        match self {
            Site::A => 1,
            Site::B => 2,
        }
    }

    /// The site's bridge in the root namespace (the router's interface to it).
    pub(crate) fn bridge(self) -> &'static str {
        match self {
            Site::A => "lchbr-a",
            Site::B => "lchbr-b",
        }
    }

    /// The name storage nodes report as their site.
    pub fn name(self) -> &'static str {
        match self {
            Site::A => "site-a",
            Site::B => "site-b",
        }
    }
}

/// How the hosts are connected, and so how network faults are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyKind {
    /// One network namespace per host, two site bridges and a router: real packets lost
    /// (needs root, or a user namespace of the harness's own).
    Namespaces,
    /// Every host on 127.0.0.0/8 with a fault-injecting TCP proxy between them: runs as
    /// any user, faults act on byte streams ([`crate::proxy`]).
    Loopback,
}

impl TopologyKind {
    /// Where the others reach the host with this site and last octet, and where it listens.
    pub fn addresses(self, site: Site, last: u8) -> (Ipv4Addr, Ipv4Addr) {
        match self {
            TopologyKind::Namespaces => {
                let ip = Ipv4Addr::new(10, 77, site.octet(), last);
                (ip, ip)
            }
            TopologyKind::Loopback => (
                Ipv4Addr::new(127, 77, site.octet(), last),
                Ipv4Addr::new(127, 78, site.octet(), last),
            ),
        }
    }
}

/// One host (network namespace) of the topology.
#[derive(Clone, Debug)]
pub struct Host {
    /// Short name, e.g. `m1`, `s4`, `gw`.
    pub name: String,
    /// Its site.
    pub site: Site,
    /// Its address, as the others reach it.
    pub ip: Ipv4Addr,
    /// The address it listens on and connects from: `ip`, except in the loopback
    /// topology, where `ip` is the proxy's.
    pub listen_ip: Ipv4Addr,
}

impl Host {
    /// The namespace name.
    pub fn netns(&self) -> String {
        format!("lch-{}", self.name)
    }

    fn veth(&self) -> String {
        format!("lchv-{}", self.name)
    }
}

/// Runs `ip` with `args`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip` inside a namespace.
fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["netns", "exec", netns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Priority of the router's partition rules (below the main table's 32766).
const RULE_PRIORITY: &str = "100";

/// The network of one run, either kind; dropping it removes what it made.
pub enum Net {
    /// Namespaces, bridges and the router.
    Namespaces(Network),
    /// The proxy on 127.0.0.0/8.
    Loopback(crate::proxy::FaultProxy),
}

impl Net {
    /// Cuts a host off completely, or heals it.
    pub fn set_isolated(&self, name: &str, isolated: bool) -> anyhow::Result<()> {
        match self {
            Net::Namespaces(n) => n.set_isolated(name, isolated),
            Net::Loopback(p) => {
                p.set_isolated(name, isolated);
                Ok(())
            }
        }
    }

    /// `from` can no longer send to `to` (or can again).
    pub fn set_blocked(&self, from: &str, to: &str, blocked: bool) -> anyhow::Result<()> {
        match self {
            Net::Namespaces(n) => n.set_blocked(from, to, blocked),
            Net::Loopback(p) => {
                p.set_blocked(from, to, blocked);
                Ok(())
            }
        }
    }

    /// Cuts the two sites apart, or heals that.
    pub fn set_sites_partitioned(&self, partitioned: bool) -> anyhow::Result<()> {
        match self {
            Net::Namespaces(n) => n.set_sites_partitioned(partitioned),
            Net::Loopback(p) => {
                p.set_sites_partitioned(partitioned);
                Ok(())
            }
        }
    }

    /// In the loopback topology, how many chunks and connections the proxy has held back
    /// at cuts so far (`None` in namespaces, where the kernel drops packets).
    pub fn held(&self) -> Option<u64> {
        match self {
            Net::Namespaces(_) => None,
            Net::Loopback(p) => Some(p.held()),
        }
    }

    /// Fails if the network stopped working as built (the proxy's failures): the run's
    /// results would then be the harness's fault, not the cluster's.
    pub fn ensure_working(&self) -> anyhow::Result<()> {
        match self {
            Net::Namespaces(_) => Ok(()),
            Net::Loopback(p) => match p.failure() {
                Some(failure) => bail!("the network did not work as built: {failure}"),
                None => Ok(()),
            },
        }
    }
}

/// The namespaces, links and bridges of one run. Dropping it removes them.
pub struct Network {
    hosts: Vec<Host>,
    forward_before: String,
}

impl Network {
    /// Whether this process may build namespaces (it must be root).
    pub fn available() -> bool {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the effective user.
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    /// Builds the two sites and one namespace per host.
    pub fn create(hosts: Vec<Host>) -> anyhow::Result<Network> {
        if !Self::available() {
            bail!(
                "the chaos suite needs root to build its network namespaces \
                 (run it with sudo, or as root in a VM or container)"
            );
        }
        cleanup_stale();
        let forward_before = std::fs::read_to_string(FORWARD)
            .context("read ip_forward")?
            .trim()
            .to_string();
        let network = Network {
            hosts,
            forward_before,
        };
        std::fs::write(FORWARD, "1").context("enable ip_forward (the router)")?;
        for site in [Site::A, Site::B] {
            ip(&["link", "add", site.bridge(), "type", "bridge"])?;
            ip(&[
                "addr",
                "add",
                &format!("10.77.{}.1/24", site.octet()),
                "dev",
                site.bridge(),
            ])?;
            ip(&["link", "set", site.bridge(), "up"])?;
        }
        for host in &network.hosts {
            let ns = host.netns();
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link",
                "add",
                &host.veth(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&["link", "set", &host.veth(), "master", host.site.bridge()])?;
            ip(&["link", "set", &host.veth(), "up"])?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            ip_in(
                &ns,
                &["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"],
            )?;
            ip_in(&ns, &["link", "set", "eth0", "up"])?;
            ip_in(
                &ns,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.77.{}.1", host.site.octet()),
                ],
            )?;
        }
        Ok(network)
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Cuts a host off completely (its link down: packets silently lost), or heals it.
    pub fn set_isolated(&self, name: &str, isolated: bool) -> anyhow::Result<()> {
        let state = if isolated { "down" } else { "up" };
        ip(&["link", "set", &self.host(name).veth(), state])
    }

    /// `from` can no longer send to `to` (or can again): a blackhole route in `from`.
    pub fn set_blocked(&self, from: &str, to: &str, blocked: bool) -> anyhow::Result<()> {
        let verb = if blocked { "add" } else { "del" };
        let target = format!("{}/32", self.host(to).ip);
        ip_in(
            &self.host(from).netns(),
            &["route", verb, "blackhole", &target],
        )
    }

    /// Drops everything the router would carry between the two sites (or heals that).
    pub fn set_sites_partitioned(&self, partitioned: bool) -> anyhow::Result<()> {
        let verb = if partitioned { "add" } else { "del" };
        for (from, to) in [(Site::A, Site::B), (Site::B, Site::A)] {
            ip(&[
                "rule",
                verb,
                "priority",
                RULE_PRIORITY,
                "from",
                from.subnet(),
                "to",
                to.subnet(),
                "blackhole",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        cleanup_stale();
        let _ = std::fs::write(FORWARD, &self.forward_before);
    }
}

/// Removes every `lch*` namespace, link, bridge and router rule. Best effort: what does
/// not exist is fine.
pub fn cleanup_stale() {
    let quiet = |args: &[&str]| {
        let _ = Command::new("ip").args(args).output();
    };
    for _ in 0..4 {
        quiet(&["rule", "del", "priority", RULE_PRIORITY]);
    }
    crate::wan::remove_wan_rules();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("lch-") {
                quiet(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "7: lchv-m1@if2: <...>"
            let name = line
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or(""))
                .unwrap_or("");
            if name.starts_with("lchv-") || name.starts_with("lchbr-") {
                quiet(&["link", "del", name]);
            }
        }
    }
}
