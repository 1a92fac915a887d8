//! The loopback topology, for a run that may build no namespaces (not root, and no user
//! namespace allowed): every process on addresses of its own in 127.0.0.0/8, and a
//! fault-injecting TCP proxy in the harness between them.
//!
//! ```text
//!   m1 listens on 127.78.1.11:7000, connects out from 127.78.1.11 (its `source_ip`)
//!   m1 is known to the others (advertised) as 127.77.1.11:7000, where the proxy listens
//!
//!   s4 ──from 127.78.2.24──> proxy at 127.77.1.11:7000 ──> m1 at 127.78.1.11:7000
//!                            (who: s4, by the source address; where: m1, by the address)
//! ```
//!
//! Faults hold bytes back, per direction, on every connection between two hosts:
//! - `from` cut from `to`: nothing `from` sends reaches `to`; it waits in the proxy and in
//!   the sender's socket buffer, as TCP keeps retransmitting over a dead link, and flows
//!   again when the cut heals. The other direction carries on. A new connection between
//!   them is accepted but carried onwards only once both directions carry (a handshake
//!   needs both); after a connect timeout's worth of waiting it is reset.
//! - an isolated host: every direction to and from it cut; a site partition: every
//!   direction between the sites.
//! - a degraded WAN: bytes between the sites are held for the one-way delay, in order;
//!   a chunk "lost" is held a retransmission timeout longer, which is what TCP makes of a
//!   lost segment, with the head-of-line blocking behind it.
//!
//! These are faults of byte streams, not of packets: the kernel's TCP between a process
//! and the proxy stays healthy, so a peer's silence is never noticed sooner than by the
//! process's own timeouts, as on a real dead link. The harness's own clients reach the
//! gateway directly, not through the proxy. A connection from an address that is no
//! host's (a role that ignores `source_ip`) would escape every fault: the proxy refuses
//! it and reports a failure, which fails the scenario.
//!
//! Differences from the namespace topology, by design: loss is per chunk, not per
//! packet; under a one-way cut the other direction keeps flowing (over a blackhole route
//! its ACKs would be lost too); a connection across a cut is reset after a connect
//! timeout instead of failing at once.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::topology::Site;
use crate::wan::{WanCounts, WanImpairment};

/// Linux's minimum TCP retransmission timeout: what a lost segment costs.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(200);
/// How long a connection opened across a cut waits for it to heal before it is reset:
/// the connect timeout of Lauscha's clients (`lauscha_proto::role_endpoint`).
const HANDSHAKE_GIVE_UP: Duration = Duration::from_secs(1);
/// Largest chunk read and forwarded at once.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks read ahead per direction while earlier ones wait out a delay or a cut.
const CHUNKS_IN_FLIGHT: usize = 16;

/// One host behind the proxy.
#[derive(Clone, Debug)]
pub struct ProxiedHost {
    /// Host name, e.g. `m1`.
    pub name: String,
    /// Its site.
    pub site: Site,
    /// Where the others reach it: the proxy listens here.
    pub front: Ipv4Addr,
    /// Where it listens and what its connections come from.
    pub real: Ipv4Addr,
    /// The ports it serves on (the same on both addresses).
    pub ports: Vec<u16>,
}

/// One end of a proxied connection: a host's name and site.
type End<'a> = (&'a str, Site);

/// The network faults in force. Pure: what the proxy does with a chunk follows from
/// [`LinkFaults::carries`] and [`LinkFaults::wan_between`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Hosts cut off from everyone.
    pub isolated: BTreeSet<String>,
    /// `(from, to)`: `from` cannot send to `to`.
    pub blocked: BTreeSet<(String, String)>,
    /// Nothing crosses between the sites.
    pub sites_partitioned: bool,
    /// The link between the sites is slow and lossy.
    pub wan: Option<WanImpairment>,
}

impl LinkFaults {
    /// Whether bytes sent by `from` reach `to` now.
    pub fn carries(&self, (from, from_site): End<'_>, (to, to_site): End<'_>) -> bool {
        let isolated = self.isolated.contains(from) || self.isolated.contains(to);
        let across_the_partition = self.sites_partitioned && from_site != to_site;
        let blocked = self.blocked.contains(&(from.to_string(), to.to_string()));
        !isolated && !across_the_partition && !blocked
    }

    /// Whether a connection between the two can be set up and used: a handshake needs
    /// both directions.
    pub fn connects(&self, a: End<'_>, b: End<'_>) -> bool {
        self.carries(a, b) && self.carries(b, a)
    }

    /// The impairment bytes from `from` to `to` suffer, if they cross between the sites
    /// while the WAN is degraded.
    pub fn wan_between(
        &self,
        (_, from_site): End<'_>,
        (_, to_site): End<'_>,
    ) -> Option<WanImpairment> {
        self.wan.filter(|_| from_site != to_site)
    }
}

/// What the proxy's tasks share.
struct Shared {
    hosts: Vec<ProxiedHost>,
    faults: watch::Receiver<LinkFaults>,
    rng: Mutex<StdRng>,
    /// Chunks carried between the sites while the WAN was degraded (the lost included:
    /// they are only held longer).
    wan_forwarded: AtomicU64,
    /// Of those, chunks held back as lost.
    wan_lost: AtomicU64,
    /// Chunks and new connections that found their direction cut: proof that a cut
    /// reached the cluster.
    held: AtomicU64,
    /// The first thing that went wrong, if anything did.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn end_of(&self, index: usize) -> End<'_> {
        (self.hosts[index].name.as_str(), self.hosts[index].site)
    }

    fn fail(&self, what: String) {
        self.failure
            .lock()
            .expect("failure lock")
            .get_or_insert(what);
    }
}

/// The running proxy. Dropping it aborts its listeners (they close when their tasks next
/// run: [`FaultProxy::start`] waits out one still bound) and releases every connection
/// held at a cut (their tasks end with the fault state's sender).
pub struct FaultProxy {
    faults: watch::Sender<LinkFaults>,
    shared: Arc<Shared>,
    listeners: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on every host's front address and port. Must run inside a tokio runtime.
    pub async fn start(hosts: Vec<ProxiedHost>, seed: u64) -> anyhow::Result<FaultProxy> {
        let (faults, faults_rx) = watch::channel(LinkFaults::default());
        let shared = Arc::new(Shared {
            hosts,
            faults: faults_rx,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            wan_forwarded: AtomicU64::new(0),
            wan_lost: AtomicU64::new(0),
            held: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
        let mut proxy = FaultProxy {
            faults,
            shared: shared.clone(),
            listeners: Vec::new(),
        };
        for (to, host) in shared.hosts.iter().enumerate() {
            for &port in &host.ports {
                let front = SocketAddr::from((host.front, port));
                let listener = bind(front)
                    .await
                    .with_context(|| format!("proxy: listen on {front} for {}", host.name))?;
                let upstream = SocketAddr::from((host.real, port));
                proxy.listeners.push(tokio::spawn(accept_loop(
                    shared.clone(),
                    listener,
                    to,
                    upstream,
                )));
            }
        }
        Ok(proxy)
    }

    fn update(&self, change: impl FnOnce(&mut LinkFaults)) {
        self.faults.send_modify(change);
    }

    /// Cuts a host off from everyone, or heals it.
    pub fn set_isolated(&self, name: &str, isolated: bool) {
        self.update(|f| {
            if isolated {
                f.isolated.insert(name.to_string());
            } else {
                f.isolated.remove(name);
            }
        });
    }

    /// `from` can no longer send to `to` (or can again).
    pub fn set_blocked(&self, from: &str, to: &str, blocked: bool) {
        let pair = (from.to_string(), to.to_string());
        self.update(|f| {
            if blocked {
                f.blocked.insert(pair);
            } else {
                f.blocked.remove(&pair);
            }
        });
    }

    /// Cuts the sites apart, or heals that.
    pub fn set_sites_partitioned(&self, partitioned: bool) {
        self.update(|f| f.sites_partitioned = partitioned);
    }

    /// Degrades the link between the sites, or restores it.
    pub fn set_wan(&self, wan: Option<WanImpairment>) {
        self.update(|f| f.wan = wan);
    }

    /// Chunks carried and held back as lost between the sites while the WAN was degraded.
    pub fn wan_counts(&self) -> WanCounts {
        WanCounts {
            forwarded: self.shared.wan_forwarded.load(Ordering::Relaxed),
            lost: self.shared.wan_lost.load(Ordering::Relaxed),
        }
    }

    /// Chunks and new connections held back at a cut so far.
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// What went wrong in the proxy, if anything did: a listener that failed, or a
    /// connection from an address that is no host's.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().expect("failure lock").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

/// Binds a listener, waiting out one of the previous proxy whose aborted task has not
/// run yet to close it.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, to: usize, upstream: SocketAddr) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // The client gave up before it was accepted.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                // Out of file descriptors, say: the scenario fails, but the proxy goes on
                // (as a server backs off), so that it fails for this reason and not for
                // connections refused afterwards.
                shared.fail(format!("accept for {}: {e}", shared.hosts[to].name));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(from) = shared
            .hosts
            .iter()
            .position(|h| std::net::IpAddr::V4(h.real) == peer.ip())
        else {
            shared.fail(format!(
                "a connection to {} from {peer}, which is no host's address: a role that \
                 does not connect from its source_ip would escape every fault",
                shared.hosts[to].name
            ));
            continue;
        };
        tokio::spawn(carry(shared.clone(), client, from, to, upstream));
    }
}

/// One connection from host `from` to host `to` (indexes into the hosts).
async fn carry(
    shared: Arc<Shared>,
    client: TcpStream,
    from: usize,
    to: usize,
    upstream: SocketAddr,
) {
    let mut faults = shared.faults.clone();
    let (a, b) = (shared.end_of(from), shared.end_of(to));
    if !faults.borrow_and_update().connects(a, b) {
        shared.held.fetch_add(1, Ordering::Relaxed);
    }
    // Across a dead link the handshake never completes and the client gives up after its
    // connect timeout; here the proxy has already accepted, so it resets the connection
    // then instead, unless the cut heals first.
    let both_ways = faults.wait_for(|f| f.connects(a, b));
    match tokio::time::timeout(HANDSHAKE_GIVE_UP, both_ways).await {
        Ok(Ok(_)) => {}
        // The proxy is gone.
        Ok(Err(_)) => return,
        Err(_) => {
            let _ = client.set_zero_linger();
            return;
        }
    }
    // Refused (the host is down), or not accepted in time (frozen by SIGSTOP with a
    // full backlog): dropping the client's socket tells it so.
    let Ok(Ok(server)) =
        tokio::time::timeout(HANDSHAKE_GIVE_UP, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    tokio::join!(
        pump(&shared, client_rd, server_wr, from, to),
        pump(&shared, server_rd, client_wr, to, from),
    );
}

/// Carries one direction until either side closes: reads ahead into a bounded queue, and
/// writes each chunk once the direction carries and its delay is over.
async fn pump(
    shared: &Arc<Shared>,
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    from: usize,
    to: usize,
) {
    let (chunks_tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if chunks_tx
                        .send((Instant::now(), buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let mut faults = shared.faults.clone();
    let (a, b) = (shared.end_of(from), shared.end_of(to));
    let mut last_due = Instant::now();
    while let Some((read_at, chunk)) = chunks.recv().await {
        if !faults.borrow_and_update().carries(a, b) {
            shared.held.fetch_add(1, Ordering::Relaxed);
        }
        let wan = match faults.wait_for(|f| f.carries(a, b)).await {
            Ok(f) => f.wan_between(a, b),
            Err(_) => break,
        };
        if let Some(wan) = wan {
            let mut due = read_at + Duration::from_millis(wan.one_way_delay_ms);
            let lost = shared
                .rng
                .lock()
                .expect("rng lock")
                .random_bool(f64::from(wan.loss_per_mille) / 1000.0);
            if lost {
                due += RETRANSMIT_AFTER;
                shared.wan_lost.fetch_add(1, Ordering::Relaxed);
            }
            shared.wan_forwarded.fetch_add(1, Ordering::Relaxed);
            // In order: a chunk never overtakes one held longer before it.
            last_due = last_due.max(due);
            tokio::time::sleep_until(last_due).await;
        }
        if wr.write_all(&chunk).await.is_err() {
            break;
        }
    }
    // The sender closed (or the receiver is gone): pass the close on.
    let _ = wr.shutdown().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: End<'static> = ("m1", Site::A);
    const M2: End<'static> = ("m2", Site::B);
    const M3: End<'static> = ("m3", Site::A);

    #[test]
    fn faults_cut_what_they_name_and_nothing_else() {
        let mut f = LinkFaults::default();
        assert!(f.carries(M1, M2) && f.carries(M2, M1));

        f.blocked.insert(("m1".into(), "m2".into()));
        assert!(!f.carries(M1, M2), "the blocked direction");
        assert!(f.carries(M2, M1), "the other direction carries on");
        assert!(f.carries(M1, M3) && f.carries(M3, M2));

        let mut f = LinkFaults::default();
        f.isolated.insert("m1".into());
        assert!(!f.carries(M1, M3) && !f.carries(M3, M1) && !f.carries(M2, M1));
        assert!(f.carries(M2, M3));

        let f = LinkFaults {
            sites_partitioned: true,
            ..LinkFaults::default()
        };
        assert!(!f.carries(M1, M2) && !f.carries(M2, M1));
        assert!(f.carries(M1, M3), "inside a site");
    }

    #[test]
    fn only_traffic_between_the_sites_crosses_the_wan() {
        let wan = WanImpairment {
            one_way_delay_ms: 40,
            loss_per_mille: 10,
        };
        let f = LinkFaults {
            wan: Some(wan),
            ..LinkFaults::default()
        };
        assert_eq!(f.wan_between(M1, M2), Some(wan));
        assert_eq!(f.wan_between(M2, M1), Some(wan));
        assert_eq!(f.wan_between(M1, M3), None);
    }

    /// An echo server (host `e`, site A) behind the proxy, and a client connecting from
    /// host `c`'s address (site B).
    async fn echo_through_proxy() -> (FaultProxy, TcpStream) {
        let (proxy, port) = echo_behind_proxy().await;
        (proxy, connect_from_c(port).await)
    }

    async fn connect_from_c(port: u16) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.78.9.2:0".parse().unwrap()).unwrap();
        socket
            .connect(SocketAddr::from(([127, 77, 9, 1], port)))
            .await
            .unwrap()
    }

    async fn echo_behind_proxy() -> (FaultProxy, u16) {
        let server = TcpListener::bind("127.78.9.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((conn, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut rd, mut wr) = conn.into_split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                });
            }
        });
        let host = |name: &str, site, last| ProxiedHost {
            name: name.into(),
            site,
            front: Ipv4Addr::new(127, 77, 9, last),
            real: Ipv4Addr::new(127, 78, 9, last),
            ports: if last == 1 { vec![port] } else { Vec::new() },
        };
        let proxy = FaultProxy::start(vec![host("e", Site::A, 1), host("c", Site::B, 2)], 7)
            .await
            .unwrap();
        (proxy, port)
    }

    async fn round_trip(client: &mut TcpStream, byte: u8) -> std::io::Result<u8> {
        client.write_all(&[byte]).await?;
        let mut back = [0u8];
        client.read_exact(&mut back).await?;
        Ok(back[0])
    }

    /// Long enough that a proxy forwarding through a cut would have echoed by then.
    const SILENCE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_cut_holds_bytes_back_until_it_heals() {
        let (proxy, mut client) = echo_through_proxy().await;
        assert_eq!(round_trip(&mut client, 1).await.unwrap(), 1);

        proxy.set_blocked("e", "c", true);
        let held = tokio::time::timeout(SILENCE, round_trip(&mut client, 2)).await;
        assert!(held.is_err(), "the echo crossed a cut: {held:?}");
        proxy.set_blocked("e", "c", false);
        let mut back = [0u8];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back[0], 2, "held, not lost");

        proxy.set_sites_partitioned(true);
        let held = tokio::time::timeout(SILENCE, round_trip(&mut client, 3)).await;
        assert!(held.is_err(), "the echo crossed the site partition");
        proxy.set_sites_partitioned(false);
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back[0], 3);
        assert!(proxy.held() >= 2, "held {}", proxy.held());
        assert_eq!(proxy.failure(), None);
    }

    #[tokio::test]
    async fn a_connection_from_no_hosts_address_is_refused_and_reported() {
        let (proxy, port) = echo_behind_proxy().await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.78.9.99:0".parse().unwrap()).unwrap();
        let mut client = socket
            .connect(SocketAddr::from(([127, 77, 9, 1], port)))
            .await
            .unwrap();
        let mut buf = [0u8];
        let read = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
            .await
            .expect("the proxy neither closed nor carried the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "carried: {read:?}");
        let failure = proxy.failure().expect("a failure reported");
        assert!(failure.contains("no host's address"), "{failure}");
    }

    #[tokio::test]
    async fn a_connection_opened_across_a_cut_is_reset_unless_it_heals() {
        let (proxy, port) = echo_behind_proxy().await;
        proxy.set_sites_partitioned(true);
        let mut client = connect_from_c(port).await;
        let outcome = tokio::time::timeout(Duration::from_secs(30), round_trip(&mut client, 4))
            .await
            .expect("the proxy neither reset nor carried the connection");
        assert!(outcome.is_err(), "carried across the cut: {outcome:?}");

        // Healed while the connection waits: it is carried.
        let mut client = connect_from_c(port).await;
        let wait = tokio::spawn(async move { round_trip(&mut client, 5).await });
        proxy.set_sites_partitioned(false);
        assert_eq!(wait.await.unwrap().unwrap(), 5);
    }

    #[tokio::test]
    async fn a_degraded_wan_delays_every_chunk_between_the_sites() {
        let (proxy, mut client) = echo_through_proxy().await;
        proxy.set_wan(Some(WanImpairment {
            one_way_delay_ms: 100,
            loss_per_mille: 0,
        }));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut client, 9).await.unwrap(), 9);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "a round trip over the WAN took {:?}, less than two one-way delays",
            started.elapsed()
        );
        assert_eq!(proxy.wan_counts().forwarded, 2);
    }
}
