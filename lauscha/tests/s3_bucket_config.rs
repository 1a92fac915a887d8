//! Bucket configuration that acts on its own: lifecycle rules run by maintenance, CORS
//! preflight and response headers, bucket policies (anonymous and cross-tenant access,
//! explicit deny), and the refusal of signature version 2 unless configured.

mod common;

use std::time::Duration;

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketVersioningStatus,
    CorsConfiguration, CorsRule, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter, NoncurrentVersionExpiration, VersioningConfiguration,
};
use common::*;

/// A lifecycle "day" of one second, so that rules act within a test.
const FAST_DAYS: &[(&str, &str)] = &[("LAUSCHA__GATEWAY__MAINTENANCE__LIFECYCLE_DAY_S", "1")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_rules_expire_versions_markers_and_uploads() {
    let dev = Dev::start_env(&[], FAST_DAYS);
    let s3 = dev.client();
    must_create_bucket(&s3, "aging").await;
    s3.put_bucket_versioning()
        .bucket("aging")
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    s3.put_bucket_lifecycle_configuration()
        .bucket("aging")
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(
                    LifecycleRule::builder()
                        .id("tmp")
                        .status(ExpirationStatus::Enabled)
                        .filter(LifecycleRuleFilter::builder().prefix("tmp/").build())
                        .expiration(LifecycleExpiration::builder().days(2).build())
                        .abort_incomplete_multipart_upload(
                            AbortIncompleteMultipartUpload::builder()
                                .days_after_initiation(2)
                                .build(),
                        )
                        .build()
                        .unwrap(),
                )
                .rules(
                    LifecycleRule::builder()
                        .id("old-versions")
                        .status(ExpirationStatus::Enabled)
                        .filter(LifecycleRuleFilter::builder().prefix("").build())
                        .noncurrent_version_expiration(
                            NoncurrentVersionExpiration::builder()
                                .noncurrent_days(2)
                                .build(),
                        )
                        .expiration(
                            LifecycleExpiration::builder()
                                .expired_object_delete_marker(true)
                                .build(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let got = s3
        .get_bucket_lifecycle_configuration()
        .bucket("aging")
        .send()
        .await
        .unwrap();
    assert_eq!(got.rules().len(), 2);

    must_put(&s3, "aging", "tmp/scratch", b"goes").await;
    must_put(&s3, "aging", "keep/doc", b"v1").await;
    must_put(&s3, "aging", "keep/doc", b"v2").await;
    must_put(&s3, "aging", "gone", b"x").await;
    s3.delete_object()
        .bucket("aging")
        .key("gone")
        .send()
        .await
        .unwrap();
    let upload = s3
        .create_multipart_upload()
        .bucket("aging")
        .key("tmp/big")
        .send()
        .await
        .unwrap();
    assert!(upload.upload_id().is_some());

    // Maintenance passes act once two lifecycle days (2 s) have passed: the current
    // tmp/ object gets a delete marker, noncurrent versions go, the upload is aborted.
    let state = async || {
        let versions = s3
            .list_object_versions()
            .bucket("aging")
            .send()
            .await
            .unwrap();
        let v: Vec<(String, bool)> = versions
            .versions()
            .iter()
            .map(|v| (v.key().unwrap().to_string(), v.is_latest().unwrap()))
            .collect();
        let m: Vec<String> = versions
            .delete_markers()
            .iter()
            .map(|m| m.key().unwrap().to_string())
            .collect();
        let uploads = s3
            .list_multipart_uploads()
            .bucket("aging")
            .send()
            .await
            .unwrap()
            .uploads()
            .len();
        (v, m, uploads)
    };
    let done = eventually(Duration::from_secs(60), async || {
        dev.admin(&["repair"]);
        // The marker of tmp/scratch hides a version until that version has been
        // noncurrent for two days; then both go (the marker on a later pass).
        state().await == (vec![("keep/doc".to_string(), true)], vec![], 0)
    })
    .await;
    assert!(
        done,
        "lifecycle did not reach the expected state: {:?}",
        state().await
    );
    assert_eq!(must_get(&s3, "aging", "keep/doc").await, b"v2");

    s3.delete_bucket_lifecycle()
        .bucket("aging")
        .send()
        .await
        .unwrap();
    let (code, status) = error_of(
        s3.get_bucket_lifecycle_configuration()
            .bucket("aging")
            .send()
            .await,
    );
    assert_eq!(
        (code.as_str(), status),
        ("NoSuchLifecycleConfiguration", 404)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_response_headers() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "web").await;
    must_put(&s3, "web", "page", b"hello").await;
    let endpoint = dev.endpoint();
    let preflight = |origin: &str, method: &str| {
        raw_http(
            &endpoint,
            "OPTIONS",
            "/web/page",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", "content-type, x-amz-date"),
            ],
            b"",
        )
    };
    let (status, _, _) = preflight("https://app.example", "GET");
    assert_eq!(status, 403, "no CORS configuration: preflight refused");

    s3.put_bucket_cors()
        .bucket("web")
        .cors_configuration(
            CorsConfiguration::builder()
                .cors_rules(
                    CorsRule::builder()
                        .allowed_origins("https://app.example")
                        .allowed_methods("GET")
                        .allowed_methods("PUT")
                        .allowed_headers("content-type")
                        .allowed_headers("x-amz-*")
                        .expose_headers("ETag")
                        .max_age_seconds(600)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let got = s3.get_bucket_cors().bucket("web").send().await.unwrap();
    assert_eq!(got.cors_rules().len(), 1);

    let (status, headers, _) = preflight("https://app.example", "PUT");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&headers, "access-control-allow-methods"),
        Some("PUT")
    );
    assert_eq!(header(&headers, "access-control-max-age"), Some("600"));
    let (status, _, _) = preflight("https://evil.example", "GET");
    assert_eq!(status, 403, "another origin");
    let (status, _, _) = preflight("https://app.example", "DELETE");
    assert_eq!(status, 403, "a method the rule does not allow");

    // An actual request from the origin gets the headers (its signature is checked as
    // always; here it is anonymous and refused, and still carries them for the browser).
    let (status, headers, _) = raw_http(
        &endpoint,
        "GET",
        "/web/page",
        &[("Origin", "https://app.example")],
        b"",
    );
    assert_eq!(status, 403);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&headers, "access-control-expose-headers"),
        Some("ETag")
    );

    s3.delete_bucket_cors().bucket("web").send().await.unwrap();
    let (code, status) = error_of(s3.get_bucket_cors().bucket("web").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchCORSConfiguration", 404));
    let (status, _, _) = preflight("https://app.example", "GET");
    assert_eq!(status, 403, "configuration removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_policies_grant_and_deny() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    dev.admin(&["tenant", "create", "gera"]);
    let key = dev.admin(&["key", "create", "--tenant", "gera"]);
    let gera_id = key["access_key_id"].as_str().unwrap().to_string();
    let gera = client(
        &dev.endpoint(),
        &gera_id,
        key["secret_access_key"].as_str().unwrap(),
    );
    must_create_bucket(&s3, "pub").await;
    must_put(&s3, "pub", "public/notice", b"open to all").await;
    must_put(&s3, "pub", "private/ledger", b"secret").await;
    let endpoint = dev.endpoint();
    let anonymous_get = |path: &str| raw_http(&endpoint, "GET", path, &[], b"");

    // Anonymous access is off without a policy.
    assert_eq!(anonymous_get("/pub/public/notice").0, 403);
    let (code, status) = error_of(
        gera.get_object()
            .bucket("pub")
            .key("public/notice")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("AccessDenied", 403));

    let (code, status) = error_of(
        s3.put_bucket_policy()
            .bucket("pub")
            .policy(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::other/*"}]}"#)
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("MalformedPolicy", 400));

    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::pub/public/*"}},
            {{"Effect":"Allow","Principal":{{"AWS":["{gera_id}"]}},"Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::pub","arn:aws:s3:::pub/*"]}},
            {{"Effect":"Deny","Principal":"*","Action":"s3:DeleteObject","Resource":"arn:aws:s3:::pub/private/*"}}
        ]}}"#
    );
    s3.put_bucket_policy()
        .bucket("pub")
        .policy(&policy)
        .send()
        .await
        .unwrap();
    let got = s3.get_bucket_policy().bucket("pub").send().await.unwrap();
    assert_eq!(got.policy(), Some(policy.as_str()));

    let (status, _, body) = anonymous_get("/pub/public/notice");
    assert_eq!((status, body.as_slice()), (200, b"open to all".as_slice()));
    assert_eq!(anonymous_get("/pub/private/ledger").0, 403);
    let (status, _, _) = raw_http(&endpoint, "PUT", "/pub/public/new", &[], b"x");
    assert_eq!(status, 403, "anonymous writes are not granted");

    // Another tenant's key reads and lists what the policy grants, and nothing else.
    assert_eq!(must_get(&gera, "pub", "private/ledger").await, b"secret");
    let listed = gera.list_objects_v2().bucket("pub").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(2));
    let (code, _) = error_of(
        gera.put_object()
            .bucket("pub")
            .key("public/notice")
            .body(b"defaced".to_vec().into())
            .send()
            .await,
    );
    assert_eq!(code, "AccessDenied");
    let (code, _) = error_of(gera.get_bucket_policy().bucket("pub").send().await);
    assert_eq!(code, "AccessDenied");

    // An explicit Deny holds against the owner too.
    let (code, _) = error_of(
        s3.delete_object()
            .bucket("pub")
            .key("private/ledger")
            .send()
            .await,
    );
    assert_eq!(code, "AccessDenied");
    assert_eq!(must_get(&s3, "pub", "private/ledger").await, b"secret");

    s3.delete_bucket_policy()
        .bucket("pub")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_get("/pub/public/notice").0, 403);
    let (code, status) = error_of(s3.get_bucket_policy().bucket("pub").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchBucketPolicy", 404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_version_2_is_refused_unless_configured() {
    let dev = Dev::start(&[]);
    must_create_bucket(&dev.client(), "sig-v2").await;
    let (status, _, body) = raw_http(
        &dev.endpoint(),
        "GET",
        "/sig-v2/",
        &[
            ("Date", "Thu, 26 Nov 2026 10:00:00 GMT"),
            ("Authorization", &format!("AWS {ACCESS_KEY}:c2lnbmF0dXJl")),
        ],
        b"",
    );
    assert_eq!(status, 403);
    assert!(
        String::from_utf8_lossy(&body).contains("signature version 2"),
        "the refusal says why"
    );
}
