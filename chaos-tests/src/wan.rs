//! A bad link between the sites: real packets delayed and lost, without `tc netem` or
//! iptables.
//!
//! The router (the root namespace) sends every packet between site A and site B into a
//! TUN device, `lchtun`: policy rules `iif lchbr-a to <site B>` and the reverse look up
//! table [`WAN_TABLE`], whose only route is that device. This process reads each packet
//! from the device, drops a seeded share of them, holds the rest for the one-way delay
//! (in order: a constant delay never reorders) and writes them back into the device; they
//! then arrive on `lchtun`, which no rule diverts, and the main table forwards them to the
//! other site. TCP sees what it would see on a long, lossy line: RTTs, retransmissions,
//! shrinking windows. Traffic of the harness itself (the clients in the root namespace)
//! is not diverted.
//!
//! Dropping the [`WanLink`] removes the rules first, so the sites talk directly again,
//! then closes the device, which the kernel then removes with its routes. A crashed run
//! leaves no device (it goes with the process's file descriptor); its rules are removed by
//! [`crate::topology::cleanup_stale`]. It does leave `net.ipv4.conf.all.rp_filter` at 0
//! if it had to switch strict reverse-path filtering off (see [`WanLink::start`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::topology::{Site, ip};

/// The TUN device.
const DEVICE: &str = "lchtun";
/// The routing table whose only route leads into the device.
pub const WAN_TABLE: &str = "177";
/// Priority of the rules that divert inter-site packets (after the partition rules).
pub const WAN_RULE_PRIORITY: &str = "101";
/// Larger than any packet the device can carry (its MTU is 1500).
const MAX_PACKET_BYTES: usize = 65_536;

/// What the link does to each packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WanImpairment {
    /// Every packet is held this long, each way.
    pub one_way_delay_ms: u64,
    /// Of every thousand packets, this many are lost (each independently).
    pub loss_per_mille: u32,
}

/// The impaired link, while it exists.
pub struct WanLink {
    forwarded: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    /// Why the link stopped carrying packets, if it did: with the rules still in place,
    /// that would be a site partition, not a slow line.
    failure: Arc<Mutex<Option<String>>>,
    tasks: Vec<JoinHandle<()>>,
    rp_filter_before: Option<String>,
}

/// What the link carried and lost: packets through the TUN device (lost ones are dropped
/// and not in `forwarded`), or the proxy's chunks (lost ones are only held longer, and
/// counted in both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WanCounts {
    /// Written back towards the other site.
    pub forwarded: u64,
    /// Dropped on purpose.
    pub lost: u64,
}

const RP_FILTER_ALL: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

impl WanLink {
    /// Diverts the traffic between the sites (built by [`crate::topology::Network`])
    /// through the impaired link. Must run inside a tokio runtime.
    pub fn start(impairment: WanImpairment, seed: u64) -> anyhow::Result<WanLink> {
        let mut config = tun::Configuration::default();
        config.tun_name(DEVICE).mtu(1500);
        let device = tun::create_as_async(&config)
            .context("create the TUN device of the WAN link (needs /dev/net/tun and root)")?;
        let device = Arc::new(device);
        // Up with IPv6, the kernel would send its own solicitations into the device; only
        // the sites' packets belong there. (No IPv6 in this kernel: nothing to switch off.)
        match std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{DEVICE}/disable_ipv6"),
            "1",
        ) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context("switch IPv6 off on the WAN device");
            }
            _ => {}
        }
        ip(&["link", "set", DEVICE, "up"])?;
        let mut link = WanLink {
            forwarded: Arc::default(),
            lost: Arc::default(),
            failure: Arc::default(),
            tasks: Vec::new(),
            rp_filter_before: None,
        };
        // Packets come back out of the device with the other site's source address, which
        // strict reverse-path filtering (1) would drop; the kernel applies the larger of
        // `all` and the device's own setting.
        let before = std::fs::read_to_string(RP_FILTER_ALL)
            .context("read rp_filter")?
            .trim()
            .to_string();
        if before != "0" {
            std::fs::write(RP_FILTER_ALL, "0").context("switch rp_filter off")?;
            link.rp_filter_before = Some(before);
        }
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{DEVICE}/rp_filter"), "0")
            .context("switch rp_filter off on the WAN device")?;

        let (to_writer, mut from_reader) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let delay = Duration::from_millis(impairment.one_way_delay_ms);
        let loss = f64::from(impairment.loss_per_mille) / 1000.0;
        let reader = {
            let device = device.clone();
            let lost = link.lost.clone();
            let failure = link.failure.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut buf = vec![0u8; MAX_PACKET_BYTES];
                loop {
                    let n = match device.recv(&mut buf).await {
                        Ok(n) => n,
                        Err(e) => {
                            *failure.lock().expect("failure lock") =
                                Some(format!("read from {DEVICE}: {e}"));
                            return;
                        }
                    };
                    if !is_inter_site(&buf[..n]) {
                        continue;
                    }
                    if rng.random_bool(loss) {
                        lost.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if to_writer
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let writer = {
            let forwarded = link.forwarded.clone();
            let failure = link.failure.clone();
            tokio::spawn(async move {
                while let Some((due, packet)) = from_reader.recv().await {
                    // The delay is the emulated line itself, not a wait for some event.
                    tokio::time::sleep_until(due).await;
                    if let Err(e) = device.send(&packet).await {
                        *failure.lock().expect("failure lock") =
                            Some(format!("write to {DEVICE}: {e}"));
                        return;
                    }
                    forwarded.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        link.tasks = vec![reader, writer];

        ip(&[
            "route",
            "add",
            "10.77.0.0/16",
            "dev",
            DEVICE,
            "table",
            WAN_TABLE,
        ])?;
        for (from, to) in [(Site::A, Site::B), (Site::B, Site::A)] {
            ip(&[
                "rule",
                "add",
                "priority",
                WAN_RULE_PRIORITY,
                "iif",
                from.bridge(),
                "to",
                to.subnet(),
                "lookup",
                WAN_TABLE,
            ])?;
        }
        Ok(link)
    }

    /// Why the link stopped carrying packets, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// What the link has done so far.
    pub fn counts(&self) -> WanCounts {
        WanCounts {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        remove_wan_rules();
        for task in &self.tasks {
            task.abort();
        }
        if let Some(before) = &self.rp_filter_before {
            let _ = std::fs::write(RP_FILTER_ALL, before);
        }
    }
}

/// Whether `packet` is IPv4 from one site to the other (10.77.1.0/24 and 10.77.2.0/24):
/// what the rules divert, and all the link carries.
fn is_inter_site(packet: &[u8]) -> bool {
    packet.len() >= 20
        && packet[0] >> 4 == 4
        && packet[12..14] == [10, 77]
        && packet[16..18] == [10, 77]
        && packet[14] != packet[18]
}

/// Removes the diverting rules (those of a crashed run too). Best effort.
pub fn remove_wan_rules() {
    for _ in 0..4 {
        let _ = std::process::Command::new("ip")
            .args(["rule", "del", "priority", WAN_RULE_PRIORITY])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn only_ipv4_between_the_sites_is_carried() {
        assert!(is_inter_site(&ipv4([10, 77, 1, 11], [10, 77, 2, 24])));
        assert!(is_inter_site(&ipv4([10, 77, 2, 12], [10, 77, 1, 30])));
        assert!(!is_inter_site(&ipv4([10, 77, 1, 11], [10, 77, 1, 13])));
        assert!(!is_inter_site(&ipv4([192, 168, 1, 1], [10, 77, 2, 24])));
        let mut v6 = ipv4([10, 77, 1, 11], [10, 77, 2, 24]);
        v6[0] = 0x60;
        assert!(!is_inter_site(&v6));
        assert!(!is_inter_site(&[0x45; 12]));
    }
}
