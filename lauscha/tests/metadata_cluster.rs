//! The replicated metadata service with real processes: `lauscha dev --cluster --meta 3`,
//! voters killed with SIGKILL, paused with SIGSTOP, wiped, added and removed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;

fn cluster() -> Dev {
    Dev::start(&["--cluster", "--meta", "3", "--storage-nodes", "3"])
}

/// Waits until some voter other than `not` leads; returns its id.
async fn new_leader(dev: &Dev, not: Option<u64>) -> u64 {
    let mut found = None;
    assert!(
        eventually(Duration::from_secs(30), async || {
            found = dev.leader().filter(|l| Some(*l) != not);
            found.is_some()
        })
        .await,
        "no new leader"
    );
    found.unwrap()
}

/// Waits until voter `id` has applied at least `index`.
async fn applied_at_least(dev: &Dev, id: u64, index: u64) {
    assert!(
        eventually(Duration::from_secs(60), async || {
            dev.voters().iter().any(|v| {
                v["node_id"].as_u64() == Some(id)
                    && v["last_applied_index"].as_u64().unwrap_or(0) >= index
            })
        })
        .await,
        "voter {id} did not reach index {index}"
    );
}

fn leader_applied(dev: &Dev) -> u64 {
    dev.voters()
        .iter()
        .find(|v| v["state"] == "leader")
        .and_then(|v| v["last_applied_index"].as_u64())
        .expect("a leader")
}

async fn put_many(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| {
            let s3 = s3.clone();
            let key = format!("{prefix}{i:05}");
            async move {
                must_put(&s3, bucket, &key, key.as_bytes()).await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

async fn check_many(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let key = format!("{prefix}{i:05}");
        assert_eq!(must_get(s3, bucket, &key).await, key.as_bytes(), "{key}");
    }
}

/// Kills and restarts leaders other than `want` until `want` leads (each election is a
/// coin flip between the live voters). `restarted` holds the processes this test started.
async fn make_leader(dev: &Dev, want: u64, restarted: &mut Vec<(u64, Restarted)>) {
    for _ in 0..10 {
        let leader = new_leader(dev, None).await;
        if leader == want {
            return;
        }
        match restarted.iter().position(|(id, _)| *id == leader) {
            // Dropping a Restarted SIGKILLs it.
            Some(i) => drop(restarted.remove(i)),
            None => signal(
                dev.process("metadata", leader)["pid"].as_u64().unwrap(),
                "KILL",
            ),
        }
        new_leader(dev, Some(leader)).await;
        restarted.push((leader, restart(&dev.process("metadata", leader))));
    }
    panic!("voter {want} never became leader");
}

/// 1. kill -9 the leader under a PUT/GET load from 8 clients: writes resume; every
///    acknowledged PUT reads back. Prints the longest gap between successful PUTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_under_load() {
    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "failover").await;
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (s3, acked, stop) = (s3.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n_failed = 0;
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("c{c}-{i:05}");
                    let put = s3
                        .put_object()
                        .bucket("failover")
                        .key(&key)
                        .body(key.as_bytes().to_vec().into())
                        .send()
                        .await;
                    match put {
                        Ok(_) => {
                            acked.lock().unwrap().push((key.clone(), Instant::now()));
                            // Read-after-write through the same gateway.
                            assert_eq!(must_get(&s3, "failover", &key).await, key.as_bytes());
                        }
                        Err(_) => n_failed += 1,
                    }
                }
                n_failed
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(60), async || acked
            .lock()
            .unwrap()
            .len()
            >= 200)
        .await,
        "no progress before the kill"
    );
    let leader = new_leader(&dev, None).await;
    let killed_at = Instant::now();
    signal(
        dev.process("metadata", leader)["pid"].as_u64().unwrap(),
        "KILL",
    );
    let n_before = acked.lock().unwrap().len();
    assert!(
        eventually(Duration::from_secs(60), async || acked
            .lock()
            .unwrap()
            .len()
            >= n_before + 200)
        .await,
        "writes did not resume after the leader died"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut n_failed = 0;
    for c in clients {
        n_failed += c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut times: Vec<Instant> = acked.iter().map(|(_, t)| *t).collect();
    times.sort();
    let gap = times
        .windows(2)
        .filter(|w| w[1] >= killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    eprintln!(
        "leader failover: longest gap between acknowledged PUTs {:.2} s; {} acked, {n_failed} failed (unacknowledged)",
        gap.as_secs_f64(),
        acked.len()
    );
    assert!(gap < Duration::from_secs(10), "failover gap {gap:?}");
    for (key, _) in &acked {
        assert_eq!(
            must_get(&s3, "failover", key).await,
            key.as_bytes(),
            "{key}"
        );
    }
}

/// 2. kill -9 a follower, write 1,000 objects, restart it: it catches up, and can lead
///    with all 1,000 objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_and_can_lead() {
    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "lag").await;
    let leader = new_leader(&dev, None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let process = dev.process("metadata", follower);
    signal(process["pid"].as_u64().unwrap(), "KILL");
    put_many(&s3, "lag", "k", 1000).await;
    let mut restarted = vec![(follower, restart(&process))];
    applied_at_least(&dev, follower, leader_applied(&dev)).await;
    make_leader(&dev, follower, &mut restarted).await;
    check_many(&s3, "lag", "k", 1000).await;
}

/// 3. Wipe a voter's data directory: it rejoins through a snapshot, because the log it
///    would need has been purged everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_voter_rejoins_through_a_snapshot() {
    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "wipe").await;
    put_many(&s3, "wipe", "before", 300).await;
    let leader = new_leader(&dev, None).await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let process = dev.process("metadata", victim);
    signal(process["pid"].as_u64().unwrap(), "KILL");
    std::fs::remove_dir_all(process["data_dir"].as_str().unwrap()).unwrap();
    put_many(&s3, "wipe", "after", 300).await;
    // Snapshot and purge on the live voters, so that only a snapshot can catch it up.
    let compacted = dev.admin(&["meta", "compact"]);
    let purged: Vec<u64> = compacted
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["snapshot_index"].as_u64())
        .collect();
    assert_eq!(purged.len(), 2, "{compacted}");
    let mut restarted = vec![(victim, restart(&process))];
    applied_at_least(&dev, victim, leader_applied(&dev)).await;
    let status = dev
        .voters()
        .into_iter()
        .find(|v| v["node_id"].as_u64() == Some(victim))
        .unwrap();
    assert!(
        status["snapshot_index"].as_u64().unwrap_or(0) >= *purged.iter().min().unwrap(),
        "the wiped voter caught up without a snapshot: {status}"
    );
    make_leader(&dev, victim, &mut restarted).await;
    check_many(&s3, "wipe", "before", 300).await;
    check_many(&s3, "wipe", "after", 300).await;
}

/// 4. Add a fourth and fifth voter, then remove two, while PUTs run: no error, no lost
///    write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load() {
    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "members").await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|c| {
            let (s3, acked, failed, stop) =
                (s3.clone(), acked.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{c}-{i:05}");
                    let put = s3
                        .put_object()
                        .bucket("members")
                        .key(&key)
                        .body(key.as_bytes().to_vec().into())
                        .send()
                        .await;
                    match put {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(e) => failed.lock().unwrap().push(format!("{key}: {e:?}")),
                    }
                }
            })
        })
        .collect();
    let extra = dev.data_dir.join("extra");
    let mut new_voters = Vec::new();
    for id in [4u64, 5] {
        let toml = format!(
            "[metadata]\nnode_id = {id}\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
            extra.join(format!("metadata-{id}")).display()
        );
        let (child, ready) = start_server(&extra, &format!("metadata-{id}"), &toml);
        let addr = ready["listen"].as_str().unwrap().to_string();
        dev.admin(&["meta", "add", &id.to_string(), &addr]);
        dev.admin(&["meta", "promote", &id.to_string()]);
        new_voters.push(child);
    }
    let voters: Vec<u64> = dev.voters()[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, [1, 2, 3, 4, 5]);
    for id in [2u64, 3] {
        dev.admin(&["meta", "remove", &id.to_string()]);
        signal(dev.process("metadata", id)["pid"].as_u64().unwrap(), "KILL");
    }
    let n = acked.lock().unwrap().len();
    assert!(
        eventually(Duration::from_secs(60), async || acked
            .lock()
            .unwrap()
            .len()
            >= n + 100)
        .await,
        "writes stalled after the membership changes"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "failed PUTs: {failed:?}");
    let voters: Vec<u64> = dev
        .voters()
        .iter()
        .find(|v| v["state"] == "leader")
        .unwrap()["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, [1, 4, 5]);
    let acked = acked.lock().unwrap().clone();
    for key in &acked {
        assert_eq!(must_get(&s3, "members", key).await, key.as_bytes(), "{key}");
    }
}

/// 5. A voter paused with SIGSTOP while the others elect a leader and take a newer write,
///    then resumed: a gateway pinned to it never returns the old version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_voter_serves_no_stale_read() {
    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "stale").await;
    must_put(&s3, "stale", "k", b"old").await;
    let leader = new_leader(&dev, None).await;
    let leader_process = dev.process("metadata", leader);
    // A second gateway that only knows the (soon deposed) leader.
    let extra = dev.data_dir.join("pinned");
    let toml = format!(
        "[gateway]\ns3_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmetadata_endpoints = [\"http://{}\"]\n",
        leader_process["listen"].as_str().unwrap()
    );
    let (_pinned, ready) = start_server(&extra, "pinned-gateway", &toml);
    let pinned = client(
        &format!("http://{}", ready["listen"].as_str().unwrap()),
        ACCESS_KEY,
        SECRET_KEY,
    );
    assert_eq!(must_get(&pinned, "stale", "k").await, b"old");
    let pid = leader_process["pid"].as_u64().unwrap();
    signal(pid, "STOP");
    new_leader(&dev, Some(leader)).await;
    must_put(&s3, "stale", "k", b"new").await;
    tokio::time::sleep(Duration::from_secs(10)).await; // the pause the scenario asks for
    signal(pid, "CONT");
    let mut n_new = 0;
    for _ in 0..50 {
        // An error is allowed (the voter is finding out it lost); the old bytes are not.
        if let Ok(out) = pinned.get_object().bucket("stale").key("k").send().await {
            let body = out.body.collect().await.unwrap().into_bytes();
            assert_eq!(&body[..], b"new", "stale read from the deposed leader");
            n_new += 1;
        }
    }
    assert!(
        n_new > 0,
        "the pinned gateway never answered after the voter resumed"
    );
}

/// 6. kill -9 every voter and start them all again: everything acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_voters_restart_together() {
    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "restart").await;
    put_many(&s3, "restart", "k", 300).await;
    let voters = dev.processes("metadata");
    for p in &voters {
        signal(p["pid"].as_u64().unwrap(), "KILL");
    }
    let _restarted: Vec<Restarted> = voters.iter().map(restart).collect();
    new_leader(&dev, None).await;
    check_many(&s3, "restart", "k", 300).await;
    must_put(&s3, "restart", "after", b"ok").await;
}

/// 7. A corrupted Raft message or snapshot stream is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_raft_input_is_refused() {
    use lauscha_proto::meta::raft_service_client::RaftServiceClient;
    use lauscha_proto::meta::{RaftMessage, SnapshotChunk, snapshot_chunk};

    let _serial = cluster_lock().await;
    let dev = cluster();
    let s3 = dev.client();
    must_create_bucket(&s3, "raft").await;
    put_many(&s3, "raft", "k", 50).await;
    let leader = new_leader(&dev, None).await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let addr = format!(
        "http://{}",
        dev.process("metadata", target)["listen"].as_str().unwrap()
    );
    let mut client = RaftServiceClient::connect(addr).await.unwrap();
    let garbage = RaftMessage {
        payload: vec![1u8, 0xff, 0xfe, 0x00, 0x13, 0x37].into(),
    };
    let status = client.append_entries(garbage.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = client.vote(garbage.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = client.propose(garbage).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // A snapshot stream with a garbage header, and one with a garbage body.
    let chunks = vec![SnapshotChunk {
        part: Some(snapshot_chunk::Part::Header(vec![9u8; 40].into())),
    }];
    let status = client
        .install_snapshot(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Everything still works and nothing changed.
    check_many(&s3, "raft", "k", 50).await;
    must_put(&s3, "raft", "after", b"ok").await;
    assert!(dev.voters().iter().all(|v| v["reachable"] == true));
}
