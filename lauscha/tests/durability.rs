//! Acknowledged writes survive crashes of the whole dev process and the loss of m storage
//! nodes; losing more fails reads with an S3 error, never wrong bytes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Sizes that cover inline data, one stripe, a short stripe and several stripes.
const SIZES: [usize; 6] = [10, 5_000, 100_000, 1 << 20, (4 << 20) + 3, 9 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_every_acknowledged_object() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start_in(&data, &[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "crash").await;

    // A writer that keeps putting until the process dies under it.
    let acked: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let writer = {
        let (s3, acked) = (s3.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0u64.. {
                let size = SIZES[i as usize % SIZES.len()];
                let key = format!("obj-{i:05}");
                let body = payload(i, size);
                let result = s3
                    .put_object()
                    .bucket("crash")
                    .key(&key)
                    .body(body.into())
                    .send()
                    .await;
                match result {
                    Ok(_) => acked.lock().unwrap().push((key, i, size)),
                    Err(_) => return i,
                }
            }
            unreachable!()
        })
    };
    // Let it write a while; then crash the whole system mid-write.
    assert!(
        eventually(Duration::from_secs(60), async || acked
            .lock()
            .unwrap()
            .len()
            >= 24)
        .await,
        "writer made no progress"
    );
    dev.kill();
    let failed_at = writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() as u64 <= failed_at);

    let dev = Dev::start_in(&data, &[]);
    let s3 = dev.client();
    for (key, seed, size) in &acked {
        assert_eq!(
            must_get(&s3, "crash", key).await,
            payload(*seed, *size),
            "{key} after restart"
        );
    }
    let listed = s3.list_objects_v2().bucket("crash").send().await.unwrap();
    let keys: Vec<&str> = listed.contents().iter().map(|o| o.key().unwrap()).collect();
    for (key, ..) in &acked {
        assert!(
            keys.contains(&key.as_str()),
            "{key} missing from the listing"
        );
    }
    // The system takes writes again.
    must_put(&s3, "crash", "after-restart", b"ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_m_node_kills_and_fails_cleanly_beyond() {
    // What the nodes can serve, so without the gateway's read cache: it would answer the
    // blocks read with two nodes down again with three down (the right bytes, verified
    // when they were read, but not what this test is about).
    let dev = Dev::start(&["--cluster", "--read-cache-bytes", "0"]);
    let s3 = dev.client();
    must_create_bucket(&s3, "nodes").await;
    for (i, size) in SIZES.iter().enumerate() {
        must_put(&s3, "nodes", &format!("obj-{i}"), &payload(i as u64, *size)).await;
    }
    let storage = dev.processes("storage");
    assert_eq!(storage.len(), 6);

    // Kill m = 2 nodes, one in each site.
    let pid = |p: &serde_json::Value| p["pid"].as_u64().unwrap();
    kill_pid(pid(&storage[0]));
    kill_pid(pid(&storage[3]));
    for (i, size) in SIZES.iter().enumerate() {
        let key = format!("obj-{i}");
        assert_eq!(
            must_get(&s3, "nodes", &key).await,
            payload(i as u64, *size),
            "{key} with 2 nodes down"
        );
        if *size > 100 {
            let got = must_get_range(&s3, "nodes", &key, "bytes=50-99").await;
            assert_eq!(got, payload(i as u64, *size)[50..100]);
        }
    }
    // A write needs k + 1 = 5 shards on distinct live nodes; with 4 nodes up it fails
    // cleanly and nothing is visible.
    let (code, status) = error_of(
        s3.put_object()
            .bucket("nodes")
            .key("while-degraded")
            .body(payload(99, 200_000).into())
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("ServiceUnavailable", 503));
    let (code, _) = error_of(
        s3.head_object()
            .bucket("nodes")
            .key("while-degraded")
            .send()
            .await,
    );
    assert_eq!(code, "NotFound");

    // A third node: erasure-coded objects cannot be read; inline ones still can.
    kill_pid(pid(&storage[1]));
    for (i, size) in SIZES.iter().enumerate() {
        let key = format!("obj-{i}");
        let result = s3.get_object().bucket("nodes").key(&key).send().await;
        if *size <= 4096 {
            let body = result.unwrap().body.collect().await.unwrap().into_bytes();
            assert_eq!(body.to_vec(), payload(i as u64, *size));
            continue;
        }
        let (code, status) = error_of(result);
        assert!(
            (code == "ServiceUnavailable" && status == 503)
                || (code == "InternalError" && status == 500),
            "{key} with 3 nodes down: {code} {status}"
        );
    }

    // Bring them back (same addresses, same data): everything reads again, writes work.
    let _restarted: Vec<_> = [0, 1, 3].iter().map(|&i| restart(&storage[i])).collect();
    let s3_ref = &s3;
    assert!(
        eventually(Duration::from_secs(30), async || {
            s3_ref
                .put_object()
                .bucket("nodes")
                .key("after-return")
                .body(payload(7, 300_000).into())
                .send()
                .await
                .is_ok()
        })
        .await,
        "writes did not resume after the nodes returned"
    );
    for (i, size) in SIZES.iter().enumerate() {
        assert_eq!(
            must_get(&s3, "nodes", &format!("obj-{i}")).await,
            payload(i as u64, *size)
        );
    }
    assert_eq!(
        must_get(&s3, "nodes", "after-return").await,
        payload(7, 300_000)
    );
}
