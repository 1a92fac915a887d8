//! Versioning, Object Lock and tagging through aws-sdk-s3: every version kept and
//! readable by id, delete markers, null versions, locked versions that nobody (the
//! administrator's key included) can remove before their date, and the exact errors.

mod common;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::types::{
    BucketVersioningStatus, DefaultRetention, Delete, ObjectIdentifier, ObjectLockConfiguration,
    ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode, ObjectLockRule, Tag, Tagging,
    VersioningConfiguration,
};
use aws_smithy_types::DateTime;
use common::*;

async fn set_versioning(s3: &aws_sdk_s3::Client, bucket: &str, status: BucketVersioningStatus) {
    s3.put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(VersioningConfiguration::builder().status(status).build())
        .send()
        .await
        .unwrap();
}

async fn get_version(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, id: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .version_id(id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}@{id}: {e:?}"));
    assert_eq!(out.version_id(), Some(id));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

fn in_future(d: Duration) -> DateTime {
    DateTime::from(SystemTime::now() + d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_delete_markers_and_null_versions() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "ver").await;
    let status = s3
        .get_bucket_versioning()
        .bucket("ver")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), None, "a new bucket was never versioned");
    // Written before versioning: the null version.
    must_put(&s3, "ver", "k", b"zero").await;
    set_versioning(&s3, "ver", BucketVersioningStatus::Enabled).await;
    let status = s3
        .get_bucket_versioning()
        .bucket("ver")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), Some(&BucketVersioningStatus::Enabled));

    let body1 = payload(1, 300_000);
    let v1 = s3
        .put_object()
        .bucket("ver")
        .key("k")
        .body(body1.clone().into())
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    let v2 = s3
        .put_object()
        .bucket("ver")
        .key("k")
        .body(b"two".to_vec().into())
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    assert_eq!(must_get(&s3, "ver", "k").await, b"two");
    assert_eq!(get_version(&s3, "ver", "k", &v1).await, body1);
    let null = s3
        .get_object()
        .bucket("ver")
        .key("k")
        .version_id("null")
        .send()
        .await
        .unwrap();
    assert_eq!(
        null.body.collect().await.unwrap().into_bytes().as_ref(),
        b"zero"
    );

    // A delete adds a marker; the key is gone, its versions are not.
    let deleted = s3
        .delete_object()
        .bucket("ver")
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.delete_marker(), Some(true));
    let marker = deleted.version_id().unwrap().to_string();
    let (code, status) = error_of(s3.get_object().bucket("ver").key("k").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    let (_, status) = error_of(
        s3.get_object()
            .bucket("ver")
            .key("k")
            .version_id(&marker)
            .send()
            .await,
    );
    assert_eq!(
        status, 405,
        "GET of a delete marker by id is MethodNotAllowed"
    );
    assert_eq!(get_version(&s3, "ver", "k", &v2).await, b"two");
    let listed = s3.list_objects_v2().bucket("ver").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0), "a deleted key is not listed");

    let versions = s3
        .list_object_versions()
        .bucket("ver")
        .send()
        .await
        .unwrap();
    let ids: Vec<(&str, bool)> = versions
        .versions()
        .iter()
        .map(|v| (v.version_id().unwrap(), v.is_latest().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [(v2.as_str(), false), (v1.as_str(), false), ("null", false)]
    );
    let markers: Vec<(&str, bool)> = versions
        .delete_markers()
        .iter()
        .map(|m| (m.version_id().unwrap(), m.is_latest().unwrap()))
        .collect();
    assert_eq!(markers, [(marker.as_str(), true)]);

    // Deleting the marker by id brings the object back.
    s3.delete_object()
        .bucket("ver")
        .key("k")
        .version_id(&marker)
        .send()
        .await
        .unwrap();
    assert_eq!(must_get(&s3, "ver", "k").await, b"two");
    // Deleting a version by id removes it for good.
    s3.delete_object()
        .bucket("ver")
        .key("k")
        .version_id(&v1)
        .send()
        .await
        .unwrap();
    let (code, status) = error_of(
        s3.get_object()
            .bucket("ver")
            .key("k")
            .version_id(&v1)
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchVersion", 404));
    let (code, status) = error_of(
        s3.get_object()
            .bucket("ver")
            .key("k")
            .version_id("not-an-id")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400));

    // Suspended: writes replace the null version, older versions stay.
    set_versioning(&s3, "ver", BucketVersioningStatus::Suspended).await;
    must_put(&s3, "ver", "k", b"s1").await;
    must_put(&s3, "ver", "k", b"s2").await;
    let versions = s3
        .list_object_versions()
        .bucket("ver")
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = versions
        .versions()
        .iter()
        .map(|v| v.version_id().unwrap())
        .collect();
    assert_eq!(ids, ["null", v2.as_str()]);
    assert_eq!(must_get(&s3, "ver", "k").await, b"s2");

    // DeleteObjects with and without version ids.
    let out = s3
        .delete_objects()
        .bucket("ver")
        .delete(
            Delete::builder()
                .objects(
                    ObjectIdentifier::builder()
                        .key("k")
                        .version_id(&v2)
                        .build()
                        .unwrap(),
                )
                .objects(ObjectIdentifier::builder().key("k").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(out.errors().is_empty(), "{:?}", out.errors());
    let versions = s3
        .list_object_versions()
        .bucket("ver")
        .send()
        .await
        .unwrap();
    assert!(versions.versions().is_empty(), "{versions:?}");
    assert_eq!(versions.delete_markers().len(), 1, "a null delete marker");
    // A bucket with versions (a marker counts) is not empty.
    let (code, _) = error_of(s3.delete_bucket().bucket("ver").send().await);
    assert_eq!(code, "BucketNotEmpty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_lock_protects_versions_from_everyone() {
    let dev = Dev::start(&[]);
    // The dev key is the administrator's: Object Lock holds against it too.
    let s3 = dev.client();
    s3.create_bucket()
        .bucket("vault")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let status = s3
        .get_bucket_versioning()
        .bucket("vault")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), Some(&BucketVersioningStatus::Enabled));
    let (code, status) = error_of(
        s3.put_bucket_versioning()
            .bucket("vault")
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Suspended)
                    .build(),
            )
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidBucketState", 409));

    let until = in_future(Duration::from_secs(3600));
    let locked = s3
        .put_object()
        .bucket("vault")
        .key("backup")
        .body(payload(2, 100_000).into())
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(until)
        .send()
        .await
        .unwrap();
    let v = locked.version_id().unwrap().to_string();
    let head = s3
        .head_object()
        .bucket("vault")
        .key("backup")
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let denied = |(code, status): (String, u16), what: &str| {
        assert_eq!((code.as_str(), status), ("AccessDenied", 403), "{what}");
    };
    for bypass in [false, true] {
        denied(
            error_of(
                s3.delete_object()
                    .bucket("vault")
                    .key("backup")
                    .version_id(&v)
                    .bypass_governance_retention(bypass)
                    .send()
                    .await,
            ),
            "delete a COMPLIANCE version",
        );
    }
    let retention = |mode: ObjectLockRetentionMode, until: DateTime| {
        ObjectLockRetention::builder()
            .mode(mode)
            .retain_until_date(until)
            .build()
    };
    denied(
        error_of(
            s3.put_object_retention()
                .bucket("vault")
                .key("backup")
                .version_id(&v)
                .bypass_governance_retention(true)
                .retention(retention(
                    ObjectLockRetentionMode::Compliance,
                    in_future(Duration::from_secs(60)),
                ))
                .send()
                .await,
        ),
        "shorten COMPLIANCE",
    );
    denied(
        error_of(
            s3.put_object_retention()
                .bucket("vault")
                .key("backup")
                .version_id(&v)
                .retention(retention(
                    ObjectLockRetentionMode::Governance,
                    in_future(Duration::from_secs(7200)),
                ))
                .send()
                .await,
        ),
        "weaken COMPLIANCE to GOVERNANCE",
    );
    let later = in_future(Duration::from_secs(7200));
    s3.put_object_retention()
        .bucket("vault")
        .key("backup")
        .version_id(&v)
        .retention(retention(ObjectLockRetentionMode::Compliance, later))
        .send()
        .await
        .expect("extending is allowed");
    let got = s3
        .get_object_retention()
        .bucket("vault")
        .key("backup")
        .version_id(&v)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.retention().unwrap().mode(),
        Some(&ObjectLockRetentionMode::Compliance)
    );
    assert_eq!(
        got.retention().unwrap().retain_until_date().unwrap().secs(),
        later.secs()
    );
    // A plain delete only hides it; overwriting keeps it.
    s3.delete_object()
        .bucket("vault")
        .key("backup")
        .send()
        .await
        .unwrap();
    must_put(&s3, "vault", "backup", b"newer").await;
    assert_eq!(
        get_version(&s3, "vault", "backup", &v).await,
        payload(2, 100_000)
    );
    let (code, _) = error_of(s3.delete_bucket().bucket("vault").send().await);
    assert_eq!(code, "BucketNotEmpty");

    // GOVERNANCE yields to the bypass header; a legal hold to nothing.
    let gov = s3
        .put_object()
        .bucket("vault")
        .key("gov")
        .body(b"g".to_vec().into())
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(in_future(Duration::from_secs(3600)))
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    let hold = s3
        .get_object_legal_hold()
        .bucket("vault")
        .key("gov")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hold.legal_hold().unwrap().status(),
        Some(&ObjectLockLegalHoldStatus::On)
    );
    denied(
        error_of(
            s3.delete_object()
                .bucket("vault")
                .key("gov")
                .version_id(&gov)
                .bypass_governance_retention(true)
                .send()
                .await,
        ),
        "legal hold",
    );
    s3.put_object_legal_hold()
        .bucket("vault")
        .key("gov")
        .legal_hold(
            ObjectLockLegalHold::builder()
                .status(ObjectLockLegalHoldStatus::Off)
                .build(),
        )
        .send()
        .await
        .unwrap();
    denied(
        error_of(
            s3.delete_object()
                .bucket("vault")
                .key("gov")
                .version_id(&gov)
                .send()
                .await,
        ),
        "GOVERNANCE without bypass",
    );
    s3.delete_object()
        .bucket("vault")
        .key("gov")
        .version_id(&gov)
        .bypass_governance_retention(true)
        .send()
        .await
        .expect("GOVERNANCE with bypass");

    // Default retention applies to versions written without lock headers.
    s3.put_object_lock_configuration()
        .bucket("vault")
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Governance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let config = s3
        .get_object_lock_configuration()
        .bucket("vault")
        .send()
        .await
        .unwrap();
    let rule = config.object_lock_configuration().unwrap().rule().unwrap();
    assert_eq!(rule.default_retention().unwrap().days(), Some(1));
    let d = s3
        .put_object()
        .bucket("vault")
        .key("defaulted")
        .body(b"d".to_vec().into())
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_string();
    let got = s3
        .get_object_retention()
        .bucket("vault")
        .key("defaulted")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.retention().unwrap().mode(),
        Some(&ObjectLockRetentionMode::Governance)
    );
    denied(
        error_of(
            s3.delete_object()
                .bucket("vault")
                .key("defaulted")
                .version_id(&d)
                .send()
                .await,
        ),
        "default retention",
    );

    // Lock headers on a bucket without Object Lock are refused, nothing stored.
    must_create_bucket(&s3, "plain").await;
    let (code, status) = error_of(
        s3.put_object()
            .bucket("plain")
            .key("x")
            .body(b"x".to_vec().into())
            .object_lock_mode(ObjectLockMode::Governance)
            .object_lock_retain_until_date(in_future(Duration::from_secs(60)))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidRequest", 400));
    let (code, _) = error_of(s3.head_object().bucket("plain").key("x").send().await);
    assert_eq!(code, "NotFound");
    let (code, status) = error_of(
        s3.get_object_lock_configuration()
            .bucket("plain")
            .send()
            .await,
    );
    assert_eq!(
        (code.as_str(), status),
        ("ObjectLockConfigurationNotFoundError", 404)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_and_bucket_tags() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "tags").await;
    s3.put_object()
        .bucket("tags")
        .key("k")
        .body(b"x".to_vec().into())
        .tagging("project=backup&town=Jena%20Nord")
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object_tagging()
        .bucket("tags")
        .key("k")
        .send()
        .await
        .unwrap();
    let tags: Vec<(&str, &str)> = got.tag_set().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags, [("project", "backup"), ("town", "Jena Nord")]);
    let obj = s3
        .get_object()
        .bucket("tags")
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(
        obj.tag_count(),
        None,
        "GET without a version id takes the fast path"
    );
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    s3.put_object_tagging()
        .bucket("tags")
        .key("k")
        .tagging(Tagging::builder().tag_set(tag("a", "1")).build().unwrap())
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object_tagging()
        .bucket("tags")
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(got.tag_set().len(), 1);
    let eleven: Vec<Tag> = (0..11).map(|i| tag(&format!("k{i}"), "v")).collect();
    let (code, status) = error_of(
        s3.put_object_tagging()
            .bucket("tags")
            .key("k")
            .tagging(
                Tagging::builder()
                    .set_tag_set(Some(eleven))
                    .build()
                    .unwrap(),
            )
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidTag", 400));
    s3.delete_object_tagging()
        .bucket("tags")
        .key("k")
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object_tagging()
        .bucket("tags")
        .key("k")
        .send()
        .await
        .unwrap();
    assert!(got.tag_set().is_empty());

    let (code, status) = error_of(s3.get_bucket_tagging().bucket("tags").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchTagSet", 404));
    s3.put_bucket_tagging()
        .bucket("tags")
        .tagging(
            Tagging::builder()
                .tag_set(tag("cost-centre", "42"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let got = s3.get_bucket_tagging().bucket("tags").send().await.unwrap();
    assert_eq!(got.tag_set()[0].value(), "42");
    s3.delete_bucket_tagging()
        .bucket("tags")
        .send()
        .await
        .unwrap();
    let (code, _) = error_of(s3.get_bucket_tagging().bucket("tags").send().await);
    assert_eq!(code, "NoSuchTagSet");
}
