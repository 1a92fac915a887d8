//! Tenants and keys made with `lauscha admin`, and isolation between tenants: every S3
//! operation one tenant attempts on another's bucket or object is refused, and nothing
//! changes.

mod common;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use common::*;

fn key_for(dev: &Dev, tenant: &str) -> aws_sdk_s3::Client {
    dev.admin(&["tenant", "create", tenant]);
    let key = dev.admin(&["key", "create", "--tenant", tenant]);
    assert_eq!(key["tenant"], tenant);
    client(
        &dev.endpoint(),
        key["access_key_id"].as_str().unwrap(),
        key["secret_access_key"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_see_or_touch_another_tenants_data() {
    let dev = Dev::start(&[]);
    let jena = key_for(&dev, "jena");
    let gera = key_for(&dev, "gera");
    must_create_bucket(&jena, "jena-files").await;
    must_create_bucket(&gera, "gera-files").await;
    let body = payload(1, 300_000);
    must_put(&jena, "jena-files", "doc", &body).await;
    must_put(&gera, "gera-files", "own", b"gera's").await;

    let denied = |(code, status): (String, u16), what: &str| {
        assert_eq!((code.as_str(), status), ("AccessDenied", 403), "{what}");
    };
    let listed = gera.list_buckets().send().await.unwrap();
    let names: Vec<&str> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["gera-files"], "gera lists only its own buckets");
    let head = gera.head_bucket().bucket("jena-files").send().await;
    assert_eq!(error_of(head).1, 403, "head_bucket");
    denied(
        error_of(gera.get_bucket_location().bucket("jena-files").send().await),
        "location",
    );
    denied(
        error_of(gera.list_objects_v2().bucket("jena-files").send().await),
        "list v2",
    );
    denied(
        error_of(gera.list_objects().bucket("jena-files").send().await),
        "list v1",
    );
    denied(
        error_of(
            gera.get_object()
                .bucket("jena-files")
                .key("doc")
                .send()
                .await,
        ),
        "get",
    );
    let head = gera
        .head_object()
        .bucket("jena-files")
        .key("doc")
        .send()
        .await;
    assert_eq!(error_of(head).1, 403, "head_object");
    denied(
        error_of(
            gera.put_object()
                .bucket("jena-files")
                .key("doc")
                .body(b"overwritten".to_vec().into())
                .send()
                .await,
        ),
        "put",
    );
    denied(
        error_of(
            gera.delete_object()
                .bucket("jena-files")
                .key("doc")
                .send()
                .await,
        ),
        "delete",
    );
    let batch = Delete::builder()
        .objects(ObjectIdentifier::builder().key("doc").build().unwrap())
        .build()
        .unwrap();
    denied(
        error_of(
            gera.delete_objects()
                .bucket("jena-files")
                .delete(batch)
                .send()
                .await,
        ),
        "delete_objects",
    );
    denied(
        error_of(
            gera.copy_object()
                .copy_source("jena-files/doc")
                .bucket("gera-files")
                .key("stolen")
                .send()
                .await,
        ),
        "copy out of another tenant's bucket",
    );
    denied(
        error_of(
            gera.copy_object()
                .copy_source("gera-files/own")
                .bucket("jena-files")
                .key("planted")
                .send()
                .await,
        ),
        "copy into another tenant's bucket",
    );
    denied(
        error_of(gera.delete_bucket().bucket("jena-files").send().await),
        "delete bucket",
    );
    let (code, status) = error_of(gera.create_bucket().bucket("jena-files").send().await);
    assert_eq!((code.as_str(), status), ("BucketAlreadyExists", 409));

    // Nothing changed.
    assert_eq!(must_get(&jena, "jena-files", "doc").await, body);
    let keys = jena
        .list_objects_v2()
        .bucket("jena-files")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = keys.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["doc"]);
    let keys = gera
        .list_objects_v2()
        .bucket("gera-files")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = keys.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        ["own"],
        "no copy of jena's object landed in gera's bucket"
    );

    // Keys that do not exist, and a key for a tenant that does not exist.
    let stranger = client(&dev.endpoint(), "LKNOSUCHKEY000000000", "secret");
    let (code, status) = error_of(stranger.list_buckets().send().await);
    assert_eq!((code.as_str(), status), ("InvalidAccessKeyId", 403));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lauscha"))
        .args(["admin", "--data-dir"])
        .arg(&dev.data_dir)
        .args(["key", "create", "--tenant", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lauscha"))
        .args(["admin", "--data-dir"])
        .arg(&dev.data_dir)
        .args(["tenant", "create", "jena"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tenant created twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_by_grants_may_do_what_they_say_and_no_more() {
    let dev = Dev::start(&[]);
    let owner = key_for(&dev, "weimar");
    must_create_bucket(&owner, "weimar-backups").await;
    must_create_bucket(&owner, "weimar-private").await;
    must_put(&owner, "weimar-backups", "old", b"old backup").await;
    must_put(&owner, "weimar-private", "secret", b"secret").await;

    // A second key of the same tenant, limited to reading the backups bucket.
    let key = dev.admin(&["key", "create", "--tenant", "weimar"]);
    let key_id = key["access_key_id"].as_str().unwrap().to_string();
    let limited = client(
        &dev.endpoint(),
        &key_id,
        key["secret_access_key"].as_str().unwrap(),
    );
    let grants = dev.admin(&[
        "key",
        "grant",
        &key_id,
        "--bucket",
        "weimar-backups",
        "--permission",
        "read",
    ]);
    assert_eq!(grants["grants"]["weimar-backups"], "read");
    let denied = |(code, status): (String, u16), what: &str| {
        assert_eq!((code.as_str(), status), ("AccessDenied", 403), "{what}");
    };
    assert_eq!(
        must_get(&limited, "weimar-backups", "old").await,
        b"old backup"
    );
    let listed = limited.list_buckets().send().await.unwrap();
    let names: Vec<&str> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["weimar-backups"]);
    let put = |c: &aws_sdk_s3::Client, bucket: &'static str| {
        c.put_object()
            .bucket(bucket)
            .key("new")
            .body(b"new".to_vec().into())
            .send()
    };
    denied(
        error_of(put(&limited, "weimar-backups").await),
        "put with read",
    );
    denied(
        error_of(
            limited
                .delete_object()
                .bucket("weimar-backups")
                .key("old")
                .send()
                .await,
        ),
        "delete with read",
    );
    denied(
        error_of(
            limited
                .get_object()
                .bucket("weimar-private")
                .key("secret")
                .send()
                .await,
        ),
        "a bucket not granted",
    );
    denied(
        error_of(limited.create_bucket().bucket("weimar-new").send().await),
        "create bucket",
    );

    // Write: objects yes, the bucket itself no.
    dev.admin(&[
        "key",
        "grant",
        &key_id,
        "--bucket",
        "weimar-backups",
        "--permission",
        "write",
    ]);
    put(&limited, "weimar-backups").await.unwrap();
    denied(
        error_of(
            limited
                .delete_bucket()
                .bucket("weimar-backups")
                .send()
                .await,
        ),
        "delete bucket with write",
    );
    // Revoked: the key is still limited, now to no bucket at all.
    let grants = dev.admin(&[
        "key",
        "grant",
        &key_id,
        "--bucket",
        "weimar-backups",
        "--permission",
        "none",
    ]);
    assert!(grants["grants"].as_object().unwrap().is_empty());
    denied(
        error_of(
            limited
                .get_object()
                .bucket("weimar-backups")
                .key("old")
                .send()
                .await,
        ),
        "read after revoke",
    );
    denied(
        error_of(
            limited
                .get_object()
                .bucket("weimar-private")
                .key("secret")
                .send()
                .await,
        ),
        "a key with every grant revoked",
    );
    let listed = limited.list_buckets().send().await.unwrap();
    assert!(listed.buckets().is_empty());
    // The tenant's first key was never limited.
    assert_eq!(must_get(&owner, "weimar-backups", "new").await, b"new");

    // A grant on another tenant's bucket is refused.
    key_for(&dev, "erfurt");
    let other = dev.admin(&["key", "create", "--tenant", "erfurt"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lauscha"))
        .args(["admin", "--data-dir"])
        .arg(&dev.data_dir)
        .args([
            "key",
            "grant",
            other["access_key_id"].as_str().unwrap(),
            "--bucket",
            "weimar-backups",
            "--permission",
            "read",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a grant across tenants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_locks_tags_and_bucket_settings_are_isolated_too() {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, BucketVersioningStatus, CorsConfiguration, CorsRule,
        ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
        ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockRetention,
        ObjectLockRetentionMode, Tag, Tagging, VersioningConfiguration,
    };
    let dev = Dev::start(&[]);
    let jena = key_for(&dev, "jena");
    let gera = key_for(&dev, "gera");
    jena.create_bucket()
        .bucket("jena-vault")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let v = jena
        .put_object()
        .bucket("jena-vault")
        .key("doc")
        .body(b"kept".to_vec().into())
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    let denied = |(code, status): (String, u16), what: &str| {
        assert_eq!((code.as_str(), status), ("AccessDenied", 403), "{what}");
    };
    let b = "jena-vault";
    denied(
        error_of(gera.list_object_versions().bucket(b).send().await),
        "list versions",
    );
    denied(
        error_of(
            gera.get_object()
                .bucket(b)
                .key("doc")
                .version_id(&v)
                .send()
                .await,
        ),
        "get a version",
    );
    denied(
        error_of(
            gera.delete_object()
                .bucket(b)
                .key("doc")
                .version_id(&v)
                .send()
                .await,
        ),
        "delete a version",
    );
    denied(
        error_of(
            gera.put_bucket_versioning()
                .bucket(b)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Suspended)
                        .build(),
                )
                .send()
                .await,
        ),
        "versioning",
    );
    denied(
        error_of(gera.get_bucket_versioning().bucket(b).send().await),
        "get versioning",
    );
    denied(
        error_of(gera.get_object_lock_configuration().bucket(b).send().await),
        "get lock configuration",
    );
    denied(
        error_of(
            gera.put_object_retention()
                .bucket(b)
                .key("doc")
                .retention(
                    ObjectLockRetention::builder()
                        .mode(ObjectLockRetentionMode::Compliance)
                        .retain_until_date(aws_smithy_types::DateTime::from_secs(4_000_000_000))
                        .build(),
                )
                .send()
                .await,
        ),
        "retention",
    );
    denied(
        error_of(
            gera.put_object_legal_hold()
                .bucket(b)
                .key("doc")
                .legal_hold(
                    ObjectLockLegalHold::builder()
                        .status(ObjectLockLegalHoldStatus::On)
                        .build(),
                )
                .send()
                .await,
        ),
        "legal hold",
    );
    let tagging = Tagging::builder()
        .tag_set(Tag::builder().key("a").value("b").build().unwrap())
        .build()
        .unwrap();
    denied(
        error_of(
            gera.put_object_tagging()
                .bucket(b)
                .key("doc")
                .tagging(tagging.clone())
                .send()
                .await,
        ),
        "object tags",
    );
    denied(
        error_of(gera.get_object_tagging().bucket(b).key("doc").send().await),
        "get object tags",
    );
    denied(
        error_of(
            gera.put_bucket_tagging()
                .bucket(b)
                .tagging(tagging)
                .send()
                .await,
        ),
        "bucket tags",
    );
    denied(
        error_of(
            gera.put_bucket_policy()
                .bucket(b)
                .policy(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::jena-vault/*"}]}"#)
                .send()
                .await,
        ),
        "policy",
    );
    denied(
        error_of(
            gera.put_bucket_cors()
                .bucket(b)
                .cors_configuration(
                    CorsConfiguration::builder()
                        .cors_rules(
                            CorsRule::builder()
                                .allowed_origins("*")
                                .allowed_methods("GET")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .send()
                .await,
        ),
        "cors",
    );
    denied(
        error_of(
            gera.put_bucket_lifecycle_configuration()
                .bucket(b)
                .lifecycle_configuration(
                    BucketLifecycleConfiguration::builder()
                        .rules(
                            LifecycleRule::builder()
                                .status(ExpirationStatus::Enabled)
                                .filter(LifecycleRuleFilter::builder().prefix("").build())
                                .expiration(LifecycleExpiration::builder().days(1).build())
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .send()
                .await,
        ),
        "lifecycle",
    );

    // Nothing changed.
    let versions = jena.list_object_versions().bucket(b).send().await.unwrap();
    assert_eq!(versions.versions().len(), 1);
    assert!(versions.delete_markers().is_empty());
    let status = jena.get_bucket_versioning().bucket(b).send().await.unwrap();
    assert_eq!(status.status(), Some(&BucketVersioningStatus::Enabled));
    let tags = jena
        .get_object_tagging()
        .bucket(b)
        .key("doc")
        .send()
        .await
        .unwrap();
    assert!(tags.tag_set().is_empty());
    let (code, _) = error_of(
        jena.get_object_retention()
            .bucket(b)
            .key("doc")
            .send()
            .await,
    );
    assert_eq!(code, "NoSuchObjectLockConfiguration");
    for missing in [
        error_of(jena.get_bucket_policy().bucket(b).send().await).0,
        error_of(jena.get_bucket_cors().bucket(b).send().await).0,
        error_of(
            jena.get_bucket_lifecycle_configuration()
                .bucket(b)
                .send()
                .await,
        )
        .0,
        error_of(jena.get_bucket_tagging().bucket(b).send().await).0,
    ] {
        assert!(missing.starts_with("NoSuch"), "{missing}");
    }
}
