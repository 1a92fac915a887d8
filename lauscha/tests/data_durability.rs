//! Data that survives and heals, with real processes from `lauscha dev --cluster`: storage
//! nodes killed under load, flipped bytes, a wiped disk, a lost site, a node added and one
//! drained, space given back after deletes, a full disk.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use common::*;
use serde_json::Value;

/// Maintenance settings that let a test see garbage collected within seconds.
const FAST_GC: &[(&str, &str)] = &[("LAUSCHA__GATEWAY__MAINTENANCE__GC_GRACE_S", "1")];

fn pid(process: &Value) -> u64 {
    process["pid"].as_u64().unwrap()
}

fn data_dir_of(process: &Value) -> PathBuf {
    PathBuf::from(process["data_dir"].as_str().unwrap())
}

/// Every committed shard file under a storage node's directory.
fn shard_files(node_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(prefixes) = std::fs::read_dir(node_dir.join("shards")) else {
        return out;
    };
    for prefix in prefixes {
        for file in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            out.push(file.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Bytes of shard files under every storage node's directory.
fn shard_bytes(dev: &Dev) -> u64 {
    dev.processes("storage")
        .iter()
        .flat_map(|p| shard_files(&data_dir_of(p)))
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Flips one byte in the data region of a shard file (behind the header of block hashes).
fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let shard_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let header = 56 + 32 * shard_len.div_ceil(65536);
    let at = (header + shard_len / 2) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

/// Puts `n` objects of assorted sizes (inline, one partial stripe, several stripes).
async fn put_objects(
    s3: &Client,
    bucket: &str,
    n: usize,
    sizes: &[usize],
) -> Vec<(String, u64, usize)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (key, seed, size) = (format!("obj-{i:04}"), i as u64, sizes[i % sizes.len()]);
        must_put(s3, bucket, &key, &payload(seed, size)).await;
        out.push((key, seed, size));
    }
    out
}

async fn assert_all_readable(
    s3: &Client,
    bucket: &str,
    objects: &[(String, u64, usize)],
    when: &str,
) {
    for (key, seed, size) in objects {
        let got = must_get(s3, bucket, key).await;
        assert!(
            got == payload(*seed, *size),
            "{bucket}/{key} has wrong bytes {when}"
        );
    }
}

/// Runs maintenance until every stripe is at full redundancy and asserts that nothing is
/// degraded afterwards.
fn repair_and_check(dev: &Dev) -> Value {
    let report = dev.admin(&["repair", "--wait"]);
    let degraded = dev.admin(&["degraded"]);
    assert_eq!(degraded["stripes_degraded"], 0, "after repair: {degraded}");
    assert_eq!(
        degraded["stripes_unrecoverable"], 0,
        "after repair: {degraded}"
    );
    report
}

fn node_list(dev: &Dev) -> Vec<Value> {
    dev.admin(&["node", "list"])["nodes"]
        .as_array()
        .cloned()
        .unwrap()
}

fn referenced_shards(dev: &Dev, node: u64) -> u64 {
    dev.admin(&["node", "shards", &node.to_string()])["referenced_shards"]
        .as_u64()
        .unwrap()
}

// Issue 4, point 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_m_nodes_under_load_fails_nothing_and_repair_restores_redundancy() {
    let _lock = cluster_lock().await;
    let dev = Dev::start(&["--cluster", "--storage-nodes", "8"]);
    let s3 = dev.client();
    must_create_bucket(&s3, "load").await;
    let sizes = [300, 60_000, 1_500_000, 9_000_000];
    let objects = Arc::new(put_objects(&s3, "load", 16, &sizes).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (n_puts, n_gets) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (s3, stop, n_puts) = (s3.clone(), stop.clone(), n_puts.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (key, seed, size) = (format!("load-{i:05}"), 1000 + i as u64, sizes[i % 3]);
                let result = s3
                    .put_object()
                    .bucket("load")
                    .key(&key)
                    .body(payload(seed, size).into())
                    .send()
                    .await;
                match result {
                    Ok(_) => acked.push((key, seed, size)),
                    Err(e) => failed.push(format!("{key}: {e:?}")),
                }
                n_puts.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            (acked, failed)
        })
    };
    let reader = {
        let (s3, stop, n_gets, objects) =
            (s3.clone(), stop.clone(), n_gets.clone(), objects.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (key, seed, size) = &objects[i % objects.len()];
                match s3.get_object().bucket("load").key(key).send().await {
                    Ok(out) => match out.body.collect().await {
                        Ok(body) => {
                            if body.into_bytes().as_ref() != payload(*seed, *size) {
                                failed.push(format!("{key}: WRONG BYTES"));
                            }
                        }
                        Err(e) => failed.push(format!("{key}: body: {e:?}")),
                    },
                    Err(e) => failed.push(format!("{key}: {e:?}")),
                }
                n_gets.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            failed
        })
    };
    let progressed = async |puts: u64, gets: u64| {
        eventually(Duration::from_secs(120), async || {
            n_puts.load(Ordering::Relaxed) >= puts && n_gets.load(Ordering::Relaxed) >= gets
        })
        .await
    };
    assert!(progressed(5, 20).await, "load did not start");

    // m = 2 nodes die, one in each site, while the load runs.
    let storage = dev.processes("storage");
    let victims = [storage[0].clone(), storage[5].clone()];
    for v in &victims {
        kill_pid(pid(v));
    }
    let (puts_at_kill, gets_at_kill) = (
        n_puts.load(Ordering::Relaxed),
        n_gets.load(Ordering::Relaxed),
    );
    assert!(
        progressed(puts_at_kill + 30, gets_at_kill + 60).await,
        "load stalled with two nodes down"
    );
    // They come back, and the load goes on while they do.
    let _restarted: Vec<Restarted> = victims.iter().map(restart).collect();
    let (puts_at_return, gets_at_return) = (
        n_puts.load(Ordering::Relaxed),
        n_gets.load(Ordering::Relaxed),
    );
    assert!(progressed(puts_at_return + 10, gets_at_return + 20).await);
    stop.store(true, Ordering::Relaxed);
    let (acked, failed_puts) = writer.await.unwrap();
    let failed_gets = reader.await.unwrap();
    assert!(failed_gets.is_empty(), "failed GETs: {failed_gets:#?}");
    assert!(failed_puts.is_empty(), "failed PUTs: {failed_puts:#?}");
    eprintln!(
        "load: {} PUTs, {} GETs, 0 failed",
        n_puts.load(Ordering::Relaxed),
        n_gets.load(Ordering::Relaxed)
    );

    let report = repair_and_check(&dev);
    eprintln!("repair done: {report}");
    assert_all_readable(&s3, "load", &objects, "after repair").await;
    assert_all_readable(&s3, "load", &acked, "after repair").await;
    // Full redundancy is real: any other two nodes can go now.
    kill_pid(pid(&storage[2]));
    kill_pid(pid(&storage[6]));
    assert_all_readable(&s3, "load", &acked, "with two other nodes down").await;
}

// Issue 4, point 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_found_by_the_scrubber_read_around_and_repaired() {
    let _lock = cluster_lock().await;
    let dev = Dev::start_env(
        &["--cluster"],
        &[
            ("LAUSCHA__STORAGE__0__SCRUB_INTERVAL_S", "1"),
            ("LAUSCHA__STORAGE__0__SCRUB_BYTES_PER_S", "200000000"),
        ],
    );
    let s3 = dev.client();
    must_create_bucket(&s3, "flip").await;
    let objects = put_objects(&s3, "flip", 12, &[50_000, 700_000, 5_000_000]).await;
    let storage = dev.processes("storage");

    // Three shards on each of two nodes.
    let mut flipped: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for node in [&storage[1], &storage[4]] {
        let files = shard_files(&data_dir_of(node));
        assert!(
            files.len() >= 3,
            "node {} holds {} shards",
            node["id"],
            files.len()
        );
        for file in files.iter().step_by(files.len() / 3).take(3) {
            flip_a_byte(file);
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            flipped
                .entry(node["id"].as_u64().unwrap())
                .or_default()
                .push(name);
        }
    }
    // Small ranges first, one every 32 KiB, so that each meets every shard block: a
    // flipped block is found by its node while it computes a verified slice (the first
    // read of a block) or sends the block (the second), and the range comes from parity.
    for (key, seed, size) in &objects {
        let want = payload(*seed, *size);
        for start in (1000..*size).step_by(32 << 10) {
            let end = (start + 4096).min(*size);
            let got = must_get_range(&s3, "flip", key, &format!("bytes={start}-{}", end - 1)).await;
            assert!(
                got == want[start..end],
                "flip/{key} bytes {start}.. are wrong"
            );
        }
    }
    // Every GET returns the right bytes, whichever shards it meets.
    assert_all_readable(&s3, "flip", &objects, "with flipped bytes").await;
    // Each node reports every flipped shard it holds as corrupt (found by its scrubber
    // or by a read that met it) and has quarantined it.
    let found_all = eventually(Duration::from_secs(60), async || {
        node_list(&dev).iter().all(|n| {
            let Some(expected) = flipped.get(&n["id"].as_u64().unwrap()) else {
                return true;
            };
            let recent: Vec<&str> = n["recent_corrupt"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            expected.iter().all(|e| recent.contains(&e.as_str()))
        })
    })
    .await;
    assert!(
        found_all,
        "not every flipped shard found: {:#?}",
        node_list(&dev)
    );
    for (node, names) in &flipped {
        let dir = data_dir_of(&dev.process("storage", *node));
        let quarantined: Vec<String> = std::fs::read_dir(dir.join("quarantine"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            assert!(
                quarantined
                    .iter()
                    .any(|q| q.starts_with(&format!("{name}."))),
                "{name} not quarantined on node {node}: {quarantined:?}"
            );
        }
    }
    let report = repair_and_check(&dev);
    eprintln!("repair done: {report}");
    // The rebuilt shards are in place again, and intact: read with any two nodes down.
    for (node, names) in &flipped {
        let files = shard_files(&data_dir_of(&dev.process("storage", *node)));
        for name in names {
            assert!(
                files
                    .iter()
                    .any(|f| f.file_name().unwrap().to_string_lossy() == *name),
                "{name} not rebuilt on node {node}"
            );
        }
    }
    kill_pid(pid(&storage[0]));
    kill_pid(pid(&storage[3]));
    assert_all_readable(&s3, "flip", &objects, "after repair, two other nodes down").await;
}

// Issue 4, point 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_comes_back_empty_and_is_refilled() {
    let _lock = cluster_lock().await;
    let dev = Dev::start(&["--cluster"]);
    let s3 = dev.client();
    must_create_bucket(&s3, "wipe").await;
    let objects = put_objects(&s3, "wipe", 12, &[2_000, 80_000, 3_000_000, 6_000_000]).await;
    let storage = dev.processes("storage");
    let victim = &storage[2];
    let dir = data_dir_of(victim);
    let before = shard_files(&dir).len();
    assert!(before > 0);

    // The disk dies and is replaced by an empty one.
    kill_pid(pid(victim));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let _replacement = restart(victim);
    assert_all_readable(&s3, "wipe", &objects, "with the node empty").await;
    let report = dev.admin(&["node", "replace", &victim["id"].to_string(), "--wait"]);
    eprintln!("refilled: {report}");
    let degraded = dev.admin(&["degraded"]);
    assert_eq!(degraded["stripes_degraded"], 0, "{degraded}");
    assert_eq!(
        shard_files(&dir).len(),
        before,
        "the node holds what it held before"
    );
    // What it holds now carries the data: two other nodes can die.
    kill_pid(pid(&storage[0]));
    kill_pid(pid(&storage[4]));
    assert_all_readable(
        &s3,
        "wipe",
        &objects,
        "from the refilled node and three others",
    )
    .await;
}

// Issue 4, point 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_redundant_bucket_survives_the_loss_of_a_site() {
    let _lock = cluster_lock().await;
    let dev = Dev::start(&["--cluster"]);
    let s3 = dev.client();
    let create = |bucket: &'static str, policy: &'static str| {
        s3.create_bucket()
            .bucket(bucket)
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-lauscha-policy", policy);
            })
            .send()
    };
    create("sites", "site-redundant").await.unwrap();
    let (code, status) = error_of(create("nosuch", "platinum").await);
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400));
    let objects = put_objects(&s3, "sites", 12, &[1_000, 90_000, 2_500_000, 7_000_000]).await;

    // Every process of site-b dies at once.
    let site_b: Vec<Value> = ["metadata", "gateway", "storage"]
        .iter()
        .flat_map(|role| dev.processes(role))
        .filter(|p| p["site"] == "site-b")
        .collect();
    assert_eq!(
        site_b.len(),
        3,
        "the dev layout puts three storage nodes in site-b"
    );
    for p in &site_b {
        kill_pid(pid(p));
    }
    assert_all_readable(&s3, "sites", &objects, "with site-b gone").await;
}

// Issue 4, point 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_fills_up_and_a_drained_node_is_removed_without_loss() {
    let _lock = cluster_lock().await;
    let dev = Dev::start_env(&["--cluster"], FAST_GC);
    let s3 = dev.client();
    must_create_bucket(&s3, "grow").await;
    // 300 single-stripe objects: 1,800 shards, enough to see the balance.
    let objects = put_objects(&s3, "grow", 300, &[8_000, 20_000, 40_000]).await;

    let meta = dev.processes("metadata")[0]["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let extra = dev.data_dir.join("extra");
    let toml = format!(
        "[[storage]]\nnode_id = 7\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nsite = \"site-b\"\nhost = \"host-7\"\ncapacity_bytes = 1099511627776\nmetadata_endpoints = [\"http://{meta}\"]\n",
        extra.join("storage-7").display()
    );
    let (_node7, _) = start_server(&extra, "storage-7", &toml);
    let before: Vec<u64> = (1..=6).map(|n| referenced_shards(&dev, n)).collect();
    repair_and_check(&dev);
    let stats = dev.admin(&["maintenance"]);
    let counts: Vec<u64> = (1..=7).map(|n| referenced_shards(&dev, n)).collect();
    let total: u64 = counts.iter().sum();
    assert_eq!(
        total,
        before.iter().sum::<u64>(),
        "shards were added or lost: {counts:?}"
    );
    let mean = total as f64 / 7.0;
    eprintln!("after adding node 7: {counts:?} (mean {mean:.1}), {stats}");
    // The stated tolerance: every node within 25% of the mean (four standard deviations
    // of a random placement of this many shards).
    for (i, n) in counts.iter().enumerate() {
        let ratio = *n as f64 / mean;
        assert!(
            (0.75..=1.25).contains(&ratio),
            "node {} holds {n} shards, {ratio:.2} of the mean: {counts:?}",
            i + 1
        );
    }
    // Placement fills failure domains evenly first (three shards of every stripe in each
    // site), then nodes within a site: within a site, every node is within 15% of the
    // site's mean.
    for site in [&counts[0..3], &counts[3..7]] {
        let site_mean = site.iter().sum::<u64>() as f64 / site.len() as f64;
        for n in site {
            let ratio = *n as f64 / site_mean;
            assert!(
                (0.85..=1.15).contains(&ratio),
                "{counts:?}: {n} is {ratio:.2} of its site's mean"
            );
        }
    }
    // Only what placement sends to the new node moved.
    assert_eq!(
        stats["shards_moved"].as_u64().unwrap(),
        counts[6],
        "{stats}"
    );

    // Drain node 3; then it holds nothing, and removing it loses nothing.
    dev.admin(&["node", "drain", "3", "--wait"]);
    assert_eq!(referenced_shards(&dev, 3), 0);
    repair_and_check(&dev);
    let node3 = dev.process("storage", 3);
    assert!(
        eventually(Duration::from_secs(30), async || {
            dev.admin(&["repair"]);
            shard_files(&data_dir_of(&node3)).is_empty()
        })
        .await,
        "node 3 still holds shard files after the grace period"
    );
    dev.admin(&["node", "remove", "3"]);
    kill_pid(pid(&node3));
    let ids: Vec<u64> = node_list(&dev)
        .iter()
        .filter(|n| n["state"] != "gone")
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&3), "{ids:?}");
    assert_all_readable(
        &s3,
        "grow",
        &objects,
        "after node 3 was drained and removed",
    )
    .await;
    let degraded = dev.admin(&["degraded"]);
    assert_eq!(degraded["stripes_degraded"], 0, "{degraded}");
}

// Issue 4, point 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_gib_gives_its_disk_space_back() {
    let _lock = cluster_lock().await;
    let dev = Dev::start_env(&["--cluster"], FAST_GC);
    let s3 = dev.client();
    must_create_bucket(&s3, "space").await;
    must_put(&s3, "space", "keep", &payload(7, 3_000_000)).await;
    const OBJECT: usize = 64 << 20;
    const N: usize = 16; // 1 GiB
    let body = payload(8, OBJECT);
    for i in 0..N {
        must_put(&s3, "space", &format!("big-{i:02}"), &body).await;
    }
    let full = shard_bytes(&dev);
    for i in 0..N {
        s3.delete_object()
            .bucket("space")
            .key(format!("big-{i:02}"))
            .send()
            .await
            .unwrap();
    }
    let expected = (1u64 << 30) as f64 * 6.0 / 4.0;
    let freed_enough = eventually(Duration::from_secs(120), async || {
        dev.admin(&["repair"]);
        (full - shard_bytes(&dev)) as f64 >= expected * 0.95
    })
    .await;
    let freed = (full - shard_bytes(&dev)) as f64;
    eprintln!(
        "freed {freed} bytes of {expected} expected ({:.3})",
        freed / expected
    );
    assert!(freed_enough, "freed {freed} bytes, expected {expected}");
    assert!(
        freed <= expected * 1.05,
        "freed {freed} bytes, more than the {expected} deleted"
    );
    assert_eq!(must_get(&s3, "space", "keep").await, payload(7, 3_000_000));
}

// Issue 4, point 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_sends_shards_elsewhere_and_never_leaves_a_partial_object() {
    let _lock = cluster_lock().await;
    let dev = Dev::start(&["--cluster", "--storage-nodes", "7"]);
    let s3 = dev.client();
    must_create_bucket(&s3, "full").await;
    let storage = dev.processes("storage");
    // Before any data is written, node 2's disk becomes a 4 MiB filesystem (a tmpfs with
    // what the node had written to its directory), which the writes fill.
    let victim = &storage[1];
    let dir = data_dir_of(victim);
    kill_pid(pid(victim));
    let saved = dev.data_dir.join("node-2-saved");
    std::fs::rename(&dir, &saved).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let mount = TmpfsMount::new(&dir, "4m");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(saved.join("."))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let _node2 = restart(victim);

    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..40 {
        let (key, seed) = (format!("obj-{i:02}"), 500 + i as u64);
        let result = s3
            .put_object()
            .bucket("full")
            .key(&key)
            .body(payload(seed, 2_000_000).into())
            .send()
            .await;
        match result {
            Ok(_) => acked.push((key, seed, 2_000_000)),
            Err(e) => {
                // A clean failure is a 503 S3 error, and nothing of the object is visible.
                let (code, status) = error_of::<_, ()>(Err(e));
                assert_eq!(
                    (code.as_str(), status),
                    ("ServiceUnavailable", 503),
                    "{key}"
                );
                let (code, _) = error_of(s3.head_object().bucket("full").key(&key).send().await);
                assert_eq!(code, "NotFound", "{key} partly visible");
                failed += 1;
            }
        }
    }
    let node2 = node_list(&dev).into_iter().find(|n| n["id"] == 2).unwrap();
    eprintln!(
        "{} PUTs acknowledged, {failed} failed cleanly; node 2: {node2}",
        acked.len()
    );
    assert!(
        node2["free_bytes"].as_u64().unwrap() < 1 << 20,
        "node 2's disk did not fill up: {node2}"
    );
    // With six other nodes for 4+2, every PUT finds room.
    assert_eq!(failed, 0);
    assert_all_readable(&s3, "full", &acked, "with node 2 full").await;
    drop(mount);
}

/// A tmpfs mounted over a directory for the length of a test.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(dir: &Path, size: &str) -> TmpfsMount {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {} (the test needs root)",
            dir.display()
        );
        TmpfsMount(dir.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// Issue 4: degraded and hedged I/O with a node that neither answers nor fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_fails_no_request_and_is_caught_up_after() {
    let _lock = cluster_lock().await;
    let dev = Dev::start(&["--cluster"]);
    let s3 = dev.client();
    must_create_bucket(&s3, "pause").await;
    let objects = put_objects(&s3, "pause", 12, &[3_000, 200_000, 4_500_000]).await;
    let paused = pid(&dev.processes("storage")[2]);
    signal(paused, "STOP");
    assert_all_readable(&s3, "pause", &objects, "with node 3 paused").await;
    let mut written = Vec::new();
    for i in 0..12 {
        let (key, seed, size) = (format!("paused-{i:02}"), 300 + i as u64, 200_000 * (i + 1));
        must_put(&s3, "pause", &key, &payload(seed, size)).await;
        written.push((key, seed, size));
    }
    assert_all_readable(&s3, "pause", &written, "written with node 3 paused").await;
    signal(paused, "CONT");
    repair_and_check(&dev);
    // Node 3 holds its part of what was written while it was paused: any two others can go.
    let storage = dev.processes("storage");
    kill_pid(pid(&storage[0]));
    kill_pid(pid(&storage[4]));
    assert_all_readable(&s3, "pause", &written, "after repair, nodes 1 and 5 down").await;
    assert_all_readable(&s3, "pause", &objects, "after repair, nodes 1 and 5 down").await;
}

// Issue 4: a node that stays away is marked down and its shards are rebuilt elsewhere;
// when it answers again it is back up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_too_long_is_marked_down_and_rebuilt_elsewhere() {
    let _lock = cluster_lock().await;
    let dev = Dev::start_env(
        &["--cluster", "--storage-nodes", "7"],
        &[("LAUSCHA__GATEWAY__MAINTENANCE__NODE_OUT_AFTER_S", "1")],
    );
    let s3 = dev.client();
    must_create_bucket(&s3, "out").await;
    let objects = put_objects(&s3, "out", 12, &[20_000, 900_000, 5_000_000]).await;
    let storage = dev.processes("storage");
    let victim = &storage[1];
    assert!(referenced_shards(&dev, 2) > 0);
    kill_pid(pid(victim));
    let state_of = |dev: &Dev| {
        node_list(dev)
            .into_iter()
            .find(|n| n["id"] == 2)
            .map(|n| n["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    // Passes see it unreachable, then (after a second) lost.
    assert!(
        eventually(Duration::from_secs(60), async || {
            dev.admin(&["repair"]);
            state_of(&dev) == "down" && referenced_shards(&dev, 2) == 0
        })
        .await,
        "node 2 not marked down and emptied: {:#?}",
        node_list(&dev)
    );
    let degraded = dev.admin(&["degraded"]);
    assert_eq!(degraded["stripes_degraded"], 0, "{degraded}");
    // Node 2 returns and is up again once a pass has seen it answer.
    let _back = restart(victim);
    assert!(
        eventually(Duration::from_secs(30), async || {
            dev.admin(&["repair"]);
            state_of(&dev) == "up"
        })
        .await
    );
    // The other six nodes hold every stripe in full: two of them can go.
    kill_pid(pid(&storage[0]));
    kill_pid(pid(&storage[5]));
    assert_all_readable(
        &s3,
        "out",
        &objects,
        "rebuilt away from node 2, two others down",
    )
    .await;
}

// Issue 4/5: an abandoned multipart upload is aborted after `abort_uploads_after_s` and
// its parts' space comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_multipart_upload_is_aborted_and_its_space_collected() {
    let _lock = cluster_lock().await;
    let dev = Dev::start_env(
        &["--cluster"],
        &[
            ("LAUSCHA__GATEWAY__MAINTENANCE__GC_GRACE_S", "1"),
            ("LAUSCHA__GATEWAY__MAINTENANCE__ABORT_UPLOADS_AFTER_S", "2"),
        ],
    );
    let s3 = dev.client();
    must_create_bucket(&s3, "abandon").await;
    let empty = shard_bytes(&dev);
    let upload = s3
        .create_multipart_upload()
        .bucket("abandon")
        .key("never-finished")
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    s3.upload_part()
        .bucket("abandon")
        .key("never-finished")
        .upload_id(id)
        .part_number(1)
        .body(payload(3, 6 << 20).into())
        .send()
        .await
        .unwrap();
    assert!(shard_bytes(&dev) > empty + (6 << 20));
    let collected = eventually(Duration::from_secs(60), async || {
        dev.admin(&["repair"]);
        let open = s3
            .list_multipart_uploads()
            .bucket("abandon")
            .send()
            .await
            .unwrap();
        open.uploads().is_empty() && shard_bytes(&dev) == empty
    })
    .await;
    assert!(collected, "upload still open or its parts still on disk");
    let (code, _) = error_of(
        s3.list_parts()
            .bucket("abandon")
            .key("never-finished")
            .upload_id(id)
            .send()
            .await,
    );
    assert_eq!(code, "NoSuchUpload");
}
