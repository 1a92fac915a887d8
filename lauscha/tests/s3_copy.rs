//! CopyObject through aws-sdk-s3: bytes, metadata directive, copy-source conditions.

mod common;

use aws_sdk_s3::types::{ChecksumAlgorithm, MetadataDirective};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_object_copies_bytes_and_metadata_and_honours_conditions() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "src-bucket").await;
    must_create_bucket(&s3, "dst-bucket").await;
    let body = payload(11, 5_500_000);
    let put = s3
        .put_object()
        .bucket("src-bucket")
        .key("src")
        .content_type("application/x-test")
        .metadata("town", "jena")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(body.clone().into())
        .send()
        .await
        .unwrap();
    let src_etag = put.e_tag().unwrap().to_string();

    // COPY (the default): bytes, ETag, type, user metadata and checksum carried over.
    let out = s3
        .copy_object()
        .copy_source("src-bucket/src")
        .bucket("dst-bucket")
        .key("dst")
        .send()
        .await
        .unwrap();
    let result = out.copy_object_result().unwrap();
    assert_eq!(result.e_tag(), Some(src_etag.as_str()));
    assert_eq!(result.checksum_crc32(), put.checksum_crc32());
    assert_eq!(must_get(&s3, "dst-bucket", "dst").await, body);
    assert_eq!(
        must_get_range(&s3, "dst-bucket", "dst", "bytes=4194000-4194999").await,
        body[4_194_000..4_195_000]
    );
    let attrs = s3
        .get_object_attributes()
        .bucket("dst-bucket")
        .key("dst")
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::Checksum)
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectSize)
        .send()
        .await
        .unwrap();
    assert_eq!(attrs.object_size(), Some(body.len() as i64));
    assert_eq!(
        attrs.checksum().and_then(|c| c.checksum_crc32()),
        put.checksum_crc32()
    );
    assert!(attrs.object_parts().is_none(), "a single PUT has no parts");
    let head = s3
        .head_object()
        .bucket("dst-bucket")
        .key("dst")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/x-test"));
    assert_eq!(
        head.metadata().unwrap().get("town").map(String::as_str),
        Some("jena")
    );

    // REPLACE: metadata from the request.
    s3.copy_object()
        .copy_source("src-bucket/src")
        .bucket("dst-bucket")
        .key("replaced")
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/plain")
        .metadata("town", "gera")
        .send()
        .await
        .unwrap();
    let head = s3
        .head_object()
        .bucket("dst-bucket")
        .key("replaced")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    assert_eq!(
        head.metadata().unwrap().get("town").map(String::as_str),
        Some("gera")
    );
    assert_eq!(must_get(&s3, "dst-bucket", "replaced").await, body);

    // Onto itself: only with REPLACE.
    let (code, status) = error_of(
        s3.copy_object()
            .copy_source("src-bucket/src")
            .bucket("src-bucket")
            .key("src")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidRequest", 400));
    s3.copy_object()
        .copy_source("src-bucket/src")
        .bucket("src-bucket")
        .key("src")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("town", "weimar")
        .send()
        .await
        .unwrap();
    assert_eq!(must_get(&s3, "src-bucket", "src").await, body);

    // Copy-source conditions: every failure is 412 and copies nothing.
    let copy = || {
        s3.copy_object()
            .copy_source("src-bucket/src")
            .bucket("dst-bucket")
            .key("conditional")
    };
    let (code, status) = error_of(copy().copy_source_if_match("\"0000\"").send().await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    let (code, status) = error_of(copy().copy_source_if_none_match(&src_etag).send().await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    let (code, _) = error_of(
        s3.head_object()
            .bucket("dst-bucket")
            .key("conditional")
            .send()
            .await,
    );
    assert_eq!(code, "NotFound");
    copy().copy_source_if_match(&src_etag).send().await.unwrap();
    assert_eq!(must_get(&s3, "dst-bucket", "conditional").await, body);

    // Small (inline) objects, missing sources, missing buckets.
    must_put(&s3, "src-bucket", "tiny", b"tiny bytes").await;
    s3.copy_object()
        .copy_source("src-bucket/tiny")
        .bucket("dst-bucket")
        .key("tiny")
        .send()
        .await
        .unwrap();
    assert_eq!(must_get(&s3, "dst-bucket", "tiny").await, b"tiny bytes");
    let (code, status) = error_of(
        s3.copy_object()
            .copy_source("src-bucket/absent")
            .bucket("dst-bucket")
            .key("x")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    let (code, status) = error_of(
        s3.copy_object()
            .copy_source("nobucket/src")
            .bucket("dst-bucket")
            .key("x")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchBucket", 404));
}
