//! The S3 API through aws-sdk-s3 against a real `lauscha dev`.

mod common;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, Delete, ObjectIdentifier};
use common::*;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_every_size_round_trip_with_ranges_and_heads() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "sizes").await;
    // Around the inline limit (4096), the stripe size (4 MiB for 4+2 of 1 MiB shards),
    // a stripe that does not divide by k, and several stripes.
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        4097,
        100_000,
        (4 << 20) - 1,
        4 << 20,
        (4 << 20) + 1,
        9 * 1024 * 1024 + 7,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let body = payload(i as u64, size);
        let key = format!("obj-{size}");
        let etag = must_put(&s3, "sizes", &key, &body).await;
        assert_eq!(
            etag,
            format!("\"{}\"", md5_hex(&body)),
            "ETag of {size} bytes"
        );
        assert_eq!(
            must_get(&s3, "sizes", &key).await,
            body,
            "GET of {size} bytes"
        );
        let head = s3
            .head_object()
            .bucket("sizes")
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(size as i64));
        assert_eq!(head.e_tag(), Some(etag.as_str()));
        if size == 0 {
            continue;
        }
        let n = size as u64;
        let mut ranges = vec![
            (0, 0),
            (n - 1, n - 1),
            (0, n - 1),
            (n / 2, n - 1),
            (n / 3, (2 * n / 3).max(n / 3)),
        ];
        for boundary in [4096u64, 1 << 20, 4 << 20, 8 << 20] {
            if boundary + 1 < n {
                ranges.push((boundary - 1, boundary + 1));
            }
        }
        for (a, b) in ranges {
            let got = must_get_range(&s3, "sizes", &key, &format!("bytes={a}-{b}")).await;
            assert_eq!(
                got,
                body[a as usize..=b as usize],
                "range {a}-{b} of {size}"
            );
        }
        let suffix = must_get_range(&s3, "sizes", &key, "bytes=-10").await;
        assert_eq!(suffix, body[size.saturating_sub(10)..], "suffix of {size}");
        let open = must_get_range(&s3, "sizes", &key, &format!("bytes={}-", n - 1)).await;
        assert_eq!(open, body[size - 1..]);
        // A last byte past the end is clamped, as RFC 9110 says.
        let clamped = must_get_range(&s3, "sizes", &key, &format!("bytes=0-{}", n + 100)).await;
        assert_eq!(clamped, body);
    }
    // Stored headers and user metadata come back on GET and HEAD.
    s3.put_object()
        .bucket("sizes")
        .key("with-headers")
        .content_type("text/plain; charset=utf-8")
        .cache_control("max-age=60")
        .content_disposition("attachment; filename=\"a.txt\"")
        .content_language("de")
        .metadata("stadt", "Jena")
        .body(b"hallo".to_vec().into())
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket("sizes")
        .key("with-headers")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(got.cache_control(), Some("max-age=60"));
    assert_eq!(
        got.content_disposition(),
        Some("attachment; filename=\"a.txt\"")
    );
    assert_eq!(got.content_language(), Some("de"));
    assert_eq!(
        got.metadata().unwrap().get("stadt").map(String::as_str),
        Some("Jena")
    );
    let head = s3
        .head_object()
        .bucket("sizes")
        .key("with-headers")
        .send()
        .await
        .unwrap();
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(
        head.metadata().unwrap().get("stadt").map(String::as_str),
        Some("Jena")
    );

    // Overwrite replaces.
    must_put(&s3, "sizes", "obj-1", b"replaced").await;
    assert_eq!(must_get(&s3, "sizes", "obj-1").await, b"replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_exact_s3_answers() {
    let dev = Dev::start(&["--max-object-bytes", "100000"]);
    let s3 = dev.client();
    must_create_bucket(&s3, "errs").await;
    must_put(&s3, "errs", "present", b"0123456789").await;

    let (code, status) = error_of(s3.get_object().bucket("errs").key("absent").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    let (code, status) = error_of(s3.get_object().bucket("nobucket").key("k").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchBucket", 404));
    let (code, status) = error_of(s3.list_objects_v2().bucket("nobucket").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchBucket", 404));
    let (_, status) = error_of(s3.head_object().bucket("errs").key("absent").send().await);
    assert_eq!(status, 404);
    let (_, status) = error_of(s3.head_bucket().bucket("nobucket").send().await);
    assert_eq!(status, 404);
    let (code, status) = error_of(
        s3.get_object()
            .bucket("errs")
            .key("present")
            .range("bytes=10-20")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidRange", 416));
    let (code, status) = error_of(s3.delete_bucket().bucket("errs").send().await);
    assert_eq!((code.as_str(), status), ("BucketNotEmpty", 409));
    let (code, status) = error_of(s3.create_bucket().bucket("Bad_Name").send().await);
    assert_eq!((code.as_str(), status), ("InvalidBucketName", 400));
    let (code, status) = error_of(s3.create_bucket().bucket("errs").send().await);
    assert_eq!((code.as_str(), status), ("BucketAlreadyOwnedByYou", 409));

    // Over the size limit, with the length declared up front...
    let big = payload(1, 100_001);
    let (code, status) = error_of(
        s3.put_object()
            .bucket("errs")
            .key("big")
            .body(big.clone().into())
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("EntityTooLarge", 400));
    // ... and nothing partial is visible. (A fresh client: the gateway answered before
    // reading the body and closed that connection, as S3 does.)
    let s3 = dev.client();
    let (code, _) = error_of(s3.head_object().bucket("errs").key("big").send().await);
    assert_eq!(code, "NotFound");
    let exactly = payload(2, 100_000);
    must_put(&s3, "errs", "exactly", &exactly).await;
    assert_eq!(must_get(&s3, "errs", "exactly").await, exactly);

    // Wrong secret, unknown key.
    let wrong_secret = client(
        &dev.endpoint(),
        ACCESS_KEY,
        "not-the-secret-at-all-0000000000000000",
    );
    let (code, status) = error_of(wrong_secret.list_buckets().send().await);
    assert_eq!((code.as_str(), status), ("SignatureDoesNotMatch", 403));
    let unknown = client(&dev.endpoint(), "LKNOSUCHKEY000000000", SECRET_KEY);
    let (code, status) = error_of(unknown.list_buckets().send().await);
    assert_eq!((code.as_str(), status), ("InvalidAccessKeyId", 403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_verified_and_a_mismatch_stores_nothing() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "sums").await;
    let body = payload(3, 300_000);
    for algorithm in [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Crc64Nvme,
    ] {
        let key = format!("with-{}", algorithm.as_str());
        // The SDK computes the checksum and sends it (as a trailer of an aws-chunked
        // body when it streams); the gateway must verify it and echo it.
        let out = s3
            .put_object()
            .bucket("sums")
            .key(&key)
            .checksum_algorithm(algorithm.clone())
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put with {algorithm:?}: {e:?}"));
        let echoed = [
            out.checksum_crc32(),
            out.checksum_crc32_c(),
            out.checksum_sha256(),
            out.checksum_sha1(),
            out.checksum_crc64_nvme(),
        ];
        assert!(
            echoed.iter().any(Option::is_some),
            "{algorithm:?} not echoed"
        );
        assert_eq!(must_get(&s3, "sums", &key).await, body);
    }
    // A streamed body (from a file) goes as aws-chunked with the checksum in a trailer.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, &body).unwrap();
    let out = s3
        .put_object()
        .bucket("sums")
        .key("streamed")
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .body(ByteStream::from_path(&path).await.unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("streamed put: {e:?}"));
    assert!(out.checksum_crc32_c().is_some());
    assert_eq!(must_get(&s3, "sums", "streamed").await, body);

    // A wrong checksum in a header: BadDigest, and the key stays absent.
    let (code, status) = error_of(
        s3.put_object()
            .bucket("sums")
            .key("bad-crc")
            .checksum_crc32("AAAAAA==")
            .body(ByteStream::from(body.clone()))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("BadDigest", 400));
    let (code, _) = error_of(s3.head_object().bucket("sums").key("bad-crc").send().await);
    assert_eq!(code, "NotFound");
    // A wrong Content-MD5, over a version that exists: it stays the old one.
    must_put(&s3, "sums", "kept", b"old").await;
    let (code, status) = error_of(
        s3.put_object()
            .bucket("sums")
            .key("kept")
            .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==")
            .body(ByteStream::from(body.clone()))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("BadDigest", 400));
    assert_eq!(must_get(&s3, "sums", "kept").await, b"old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_2000_keys_with_prefix_delimiter_pagination_and_bulk_delete() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "many").await;
    let mut keys: Vec<String> = (0..20)
        .flat_map(|d| (0..100).map(move |f| format!("dir{d:02}/file{f:03}")))
        .collect();
    keys.push("top-level".into());
    let puts = futures::stream::iter(keys.clone())
        .map(|key| {
            let s3 = s3.clone();
            async move {
                must_put(&s3, "many", &key, key.as_bytes()).await;
            }
        })
        .buffer_unordered(32);
    puts.collect::<Vec<()>>().await;
    keys.sort();

    // Everything, in order, over the default page size of 1000.
    let mut listed = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket("many")
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        listed.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        assert_eq!(
            out.key_count(),
            Some(out.contents().len() as i32),
            "KeyCount"
        );
        if out.is_truncated() != Some(true) {
            break;
        }
        token = out.next_continuation_token().map(str::to_string);
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, keys);

    // Delimiter: 20 common prefixes and the one top-level key.
    let out = s3
        .list_objects_v2()
        .bucket("many")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<&str> = out
        .common_prefixes()
        .iter()
        .map(|p| p.prefix().unwrap())
        .collect();
    assert_eq!(prefixes.len(), 20);
    assert_eq!(prefixes[0], "dir00/");
    assert_eq!(out.contents().len(), 1);

    // Prefix, small pages, start-after.
    let mut paged = Vec::new();
    let mut token = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket("many")
            .prefix("dir07/")
            .max_keys(7)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        assert!(out.contents().len() <= 7);
        paged.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        if out.is_truncated() != Some(true) {
            break;
        }
        token = out.next_continuation_token().map(str::to_string);
    }
    let want: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with("dir07/"))
        .cloned()
        .collect();
    assert_eq!(paged, want);
    let out = s3
        .list_objects_v2()
        .bucket("many")
        .start_after("dir19/file097")
        .send()
        .await
        .unwrap();
    let rest: Vec<&str> = out.contents().iter().map(|o| o.key().unwrap()).collect();
    assert_eq!(rest, ["dir19/file098", "dir19/file099", "top-level"]);

    // Paging over common prefixes with a delimiter visits each prefix once.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket("many")
            .delimiter("/")
            .max_keys(3)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        seen.extend(
            out.common_prefixes()
                .iter()
                .map(|p| p.prefix().unwrap().to_string()),
        );
        seen.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        if out.is_truncated() != Some(true) {
            break;
        }
        token = out.next_continuation_token().map(str::to_string);
    }
    assert_eq!(seen.len(), 21);

    // ListObjects v1 with markers.
    let mut v1 = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = s3
            .list_objects()
            .bucket("many")
            .max_keys(500)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        v1.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = out
            .next_marker()
            .map(str::to_string)
            .or_else(|| v1.last().cloned());
    }
    assert_eq!(v1, keys);

    // DeleteObjects: the first 1000 keys at once, one of them absent.
    let mut ids: Vec<ObjectIdentifier> = keys[..999]
        .iter()
        .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
        .collect();
    ids.push(
        ObjectIdentifier::builder()
            .key("never-existed")
            .build()
            .unwrap(),
    );
    let out = s3
        .delete_objects()
        .bucket("many")
        .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.deleted().len(), 1000);
    assert!(out.errors().is_empty());
    let mut remaining = 0;
    let mut token = None;
    loop {
        let out = s3
            .list_objects_v2()
            .bucket("many")
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        remaining += out.contents().len();
        if out.is_truncated() != Some(true) {
            break;
        }
        token = out.next_continuation_token().map(str::to_string);
    }
    assert_eq!(remaining, keys.len() - 999);
}
