//! A real voter on RocksDB: every change through client_write and apply, state surviving a
//! restart, snapshots built and used.

use std::time::Duration;

use lauscha_core::model::ObjectData;
use lauscha_core::{BucketName, ObjectVersion, PlacementPolicy, TenantId};
use lauscha_metadata::{MetaCommand, MetaError, MetaNode, MetaNodeOptions, MetaResponse, query};

async fn must_start(dir: &std::path::Path) -> MetaNode {
    let node = MetaNode::start(MetaNodeOptions {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        advertise: "127.0.0.1:1".into(),
        source_ip: None,
        bootstrap: true,
        initial_voters: Vec::new(),
    })
    .await
    .expect("start voter");
    node.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("voter elects itself");
    node
}

fn inline(body: &[u8]) -> ObjectVersion {
    ObjectVersion {
        version_id: String::new(),
        size_bytes: body.len() as u64,
        etag: "etag".into(),
        last_modified_ms: 0,
        content_type: None,
        headers: Default::default(),
        user_metadata: Default::default(),
        checksums: Default::default(),
        data: ObjectData::Inline(body.to_vec()),
    }
}

async fn must_put(node: &MetaNode, key: &str, body: &[u8]) {
    let response = node
        .write(MetaCommand::PutObject {
            bucket: BucketName::parse("bkt").unwrap(),
            tenant: TenantId::parse("t").unwrap(),
            key: key.into(),
            version: Box::new(inline(body)),
            now_ms: 1,
            missing: Vec::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    assert!(matches!(response, MetaResponse::ObjectPut { .. }));
}

async fn must_get(node: &MetaNode, key: &str) -> Vec<u8> {
    let k = key.to_string();
    let version = node
        .read(move |kv| query::get_object(kv, &BucketName::parse("bkt").unwrap(), &k))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} missing"));
    match version.data {
        ObjectData::Inline(bytes) => bytes,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let node = must_start(dir.path()).await;
    node.write(MetaCommand::CreateTenant {
        id: TenantId::parse("t").unwrap(),
        now_ms: 1,
    })
    .await
    .unwrap();
    node.write(MetaCommand::CreateBucket {
        name: BucketName::parse("bkt").unwrap(),
        tenant: TenantId::parse("t").unwrap(),
        policy: PlacementPolicy::DEFAULT,
        now_ms: 1,
    })
    .await
    .unwrap();
    for i in 0..200 {
        must_put(&node, &format!("k{i:03}"), format!("v{i}").as_bytes()).await;
    }
    node.trigger_snapshot().await.unwrap();
    for i in 200..250 {
        must_put(&node, &format!("k{i:03}"), format!("v{i}").as_bytes()).await;
    }
    // A refused command is an error, and changes nothing.
    let err = node
        .write(MetaCommand::CreateTenant {
            id: TenantId::parse("t").unwrap(),
            now_ms: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(err, MetaError::TenantAlreadyExists("t".into()));
    node.shutdown().await.expect("RocksDB closed");
    drop(node);

    let node = must_start(dir.path()).await;
    for i in [0, 117, 199, 200, 249] {
        assert_eq!(
            must_get(&node, &format!("k{i:03}")).await,
            format!("v{i}").as_bytes()
        );
    }
    let listing = node
        .read(|kv| {
            query::list_objects(
                kv,
                &lauscha_core::model::ListObjectsQuery {
                    bucket: BucketName::parse("bkt").unwrap(),
                    prefix: "k1".into(),
                    delimiter: None,
                    start_after: None,
                    max_keys: 1000,
                },
            )
        })
        .await
        .unwrap();
    assert_eq!(listing.objects.len(), 100);
    // Writes continue after the restart.
    must_put(&node, "after", b"restart").await;
    assert_eq!(must_get(&node, "after").await, b"restart");
    node.shutdown().await.expect("RocksDB closed");
}

/// Concurrent proposals share log appends, and so fsyncs: openraft queues client writes and
/// the log store writes each queued batch with one synced RocksDB write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let node = must_start(dir.path()).await;
    node.write(MetaCommand::CreateTenant {
        id: TenantId::parse("t").unwrap(),
        now_ms: 1,
    })
    .await
    .unwrap();
    node.write(MetaCommand::CreateBucket {
        name: BucketName::parse("bkt").unwrap(),
        tenant: TenantId::parse("t").unwrap(),
        policy: PlacementPolicy::DEFAULT,
        now_ms: 1,
    })
    .await
    .unwrap();
    let before = node.status();
    let writes = (0..256).map(|i| {
        let node = node.clone();
        tokio::spawn(async move { must_put(&node, &format!("c{i}"), b"x").await })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    let after = node.status();
    let appends = after.n_log_appends - before.n_log_appends;
    let entries = after.n_log_entries - before.n_log_entries;
    assert!(entries >= 256, "{entries} entries");
    assert!(
        appends * 2 <= entries,
        "{entries} entries took {appends} appends: proposals are not batched"
    );
    node.shutdown().await.expect("RocksDB closed");
}

/// A write to a voter whose Raft has stopped is refused as unavailable at once. It used to
/// be tried again without a pause until the 10 s write deadline (the stopped Raft's last
/// metrics still named a leader, so waiting for one returned at once): every shutdown with
/// a volume detaching in the same process took 10 s longer, at full CPU, with millions of
/// lines logged.
#[tokio::test]
async fn a_write_to_a_stopped_voter_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = must_start(dir.path()).await;
    node.shutdown().await.expect("RocksDB closed");
    // Timed from outside the future: the old loop never yielded, so a tokio timeout
    // around it never fired.
    let started = std::time::Instant::now();
    let err = node
        .write(MetaCommand::CreateTenant {
            id: TenantId::parse("t").unwrap(),
            now_ms: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused after {:?}, not at once",
        started.elapsed()
    );
}
