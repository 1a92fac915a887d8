//! Multipart upload through aws-sdk-s3: parts, listing, completion, the rules S3 sets
//! (part sizes, order, ETags), abort.

mod common;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use common::*;

const MIB: usize = 1 << 20;

async fn upload_part(s3: &Client, key: &str, id: &str, n: i32, body: &[u8]) -> CompletedPart {
    let out = s3
        .upload_part()
        .bucket("mpu")
        .key(key)
        .upload_id(id)
        .part_number(n)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("upload part {n}: {e:?}"));
    assert!(out.checksum_crc32().is_some());
    CompletedPart::builder()
        .part_number(n)
        .e_tag(out.e_tag().unwrap())
        .build()
}

fn completed(parts: &[CompletedPart]) -> CompletedMultipartUpload {
    CompletedMultipartUpload::builder()
        .set_parts(Some(parts.to_vec()))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_round_trips_and_follows_the_s3_rules() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "mpu").await;
    let start = |key: &'static str| {
        let s3 = s3.clone();
        async move {
            s3.create_multipart_upload()
                .bucket("mpu")
                .key(key)
                .content_type("application/x-backup")
                .metadata("town", "jena")
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_string()
        }
    };
    let id = start("big").await;
    let bodies = [
        payload(1, 5 * MIB),
        payload(2, 6 * MIB + 123),
        payload(3, 777),
    ];
    let mut parts = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        parts.push(upload_part(&s3, "big", &id, i as i32 + 1, body).await);
    }
    // Part 2 again, with other bytes: the later upload counts.
    let part2 = payload(22, 5 * MIB + 1);
    parts[1] = upload_part(&s3, "big", &id, 2, &part2).await;
    let listed = s3
        .list_parts()
        .bucket("mpu")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let numbers: Vec<i32> = listed
        .parts()
        .iter()
        .filter_map(|p| p.part_number())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(listed.parts()[1].size(), Some(part2.len() as i64));
    let uploads = s3
        .list_multipart_uploads()
        .bucket("mpu")
        .send()
        .await
        .unwrap();
    assert_eq!(uploads.uploads().len(), 1);
    assert_eq!(uploads.uploads()[0].upload_id(), Some(id.as_str()));

    // Out of order, a wrong ETag, an unknown part: refused, the upload stays.
    let (code, status) = error_of(
        s3.complete_multipart_upload()
            .bucket("mpu")
            .key("big")
            .upload_id(&id)
            .multipart_upload(completed(&[parts[1].clone(), parts[0].clone()]))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidPartOrder", 400));
    let wrong = CompletedPart::builder()
        .part_number(1)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    let (code, status) = error_of(
        s3.complete_multipart_upload()
            .bucket("mpu")
            .key("big")
            .upload_id(&id)
            .multipart_upload(completed(&[wrong]))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidPart", 400));

    // Conditional completion, decided in the state machine: "big" does not exist yet, so
    // If-Match fails; after another writer creates it, If-None-Match: * fails too; the
    // upload stays open through both.
    let (code, status) = error_of(
        s3.complete_multipart_upload()
            .bucket("mpu")
            .key("big")
            .upload_id(&id)
            .multipart_upload(completed(&parts))
            .if_match("\"0123456789abcdef0123456789abcdef\"")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    must_put(&s3, "mpu", "big", b"another writer was first").await;
    let (code, status) = error_of(
        s3.complete_multipart_upload()
            .bucket("mpu")
            .key("big")
            .upload_id(&id)
            .multipart_upload(completed(&parts))
            .if_none_match("*")
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    assert_eq!(
        must_get(&s3, "mpu", "big").await,
        b"another writer was first"
    );

    let done = s3
        .complete_multipart_upload()
        .bucket("mpu")
        .key("big")
        .upload_id(&id)
        .multipart_upload(completed(&parts))
        .send()
        .await
        .unwrap();
    // md5 of the parts' md5s, then -N.
    let mut md5s = Vec::new();
    for body in [&bodies[0], &part2, &bodies[2]] {
        md5s.extend(hex::decode(md5_hex(body)).unwrap());
    }
    let want = format!("\"{}-3\"", md5_hex(&md5s));
    assert_eq!(done.e_tag(), Some(want.as_str()));
    let whole: Vec<u8> = [&bodies[0][..], &part2[..], &bodies[2][..]].concat();
    assert!(
        must_get(&s3, "mpu", "big").await == whole,
        "completed object differs"
    );
    // A range across the part 1 / part 2 boundary.
    let at = 5 * MIB as u64;
    let got = must_get_range(
        &s3,
        "mpu",
        "big",
        &format!("bytes={}-{}", at - 100, at + 99),
    )
    .await;
    assert_eq!(got, whole[at as usize - 100..at as usize + 100]);
    let head = s3
        .head_object()
        .bucket("mpu")
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(whole.len() as i64));
    assert_eq!(head.content_type(), Some("application/x-backup"));
    assert_eq!(
        head.metadata().unwrap().get("town").map(String::as_str),
        Some("jena")
    );
    assert_eq!(head.e_tag(), Some(want.as_str()));
    let attrs = s3
        .get_object_attributes()
        .bucket("mpu")
        .key("big")
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::Etag)
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectSize)
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectParts)
        .send()
        .await
        .unwrap();
    assert_eq!(attrs.object_size(), Some(whole.len() as i64));
    assert_eq!(
        attrs.object_parts().and_then(|p| p.total_parts_count()),
        Some(3)
    );
    assert_eq!(
        attrs.e_tag().map(|e| e.trim_matches('"')),
        Some(want.trim_matches('"'))
    );
    // The upload is gone.
    let (code, status) = error_of(
        s3.list_parts()
            .bucket("mpu")
            .key("big")
            .upload_id(&id)
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchUpload", 404));
    assert!(
        s3.list_multipart_uploads()
            .bucket("mpu")
            .send()
            .await
            .unwrap()
            .uploads()
            .is_empty()
    );

    // UploadPartCopy: the same object assembled again from ranges of the first.
    let id = start("assembled").await;
    let mut copied = Vec::new();
    for (n, range) in [
        (1, format!("bytes=0-{}", 6 * MIB - 1)),
        (2, format!("bytes={}-{}", 6 * MIB, whole.len() - 1)),
    ] {
        let out = s3
            .upload_part_copy()
            .bucket("mpu")
            .key("assembled")
            .upload_id(&id)
            .part_number(n)
            .copy_source("mpu/big")
            .copy_source_range(range)
            .send()
            .await
            .unwrap();
        let etag = out.copy_part_result().unwrap().e_tag().unwrap().to_string();
        copied.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
    }
    let (code, status) = error_of(
        s3.upload_part_copy()
            .bucket("mpu")
            .key("assembled")
            .upload_id(&id)
            .part_number(3)
            .copy_source("mpu/big")
            .copy_source_range(format!("bytes=0-{}", whole.len()))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidRange", 416));
    s3.complete_multipart_upload()
        .bucket("mpu")
        .key("assembled")
        .upload_id(&id)
        .multipart_upload(completed(&copied))
        .send()
        .await
        .unwrap();
    assert!(
        must_get(&s3, "mpu", "assembled").await == whole,
        "assembled copy differs"
    );

    // A part under 5 MiB that is not the last: EntityTooSmall.
    let id = start("small-parts").await;
    let a = upload_part(&s3, "small-parts", &id, 1, &payload(5, MIB)).await;
    let b = upload_part(&s3, "small-parts", &id, 2, &payload(6, MIB)).await;
    let (code, status) = error_of(
        s3.complete_multipart_upload()
            .bucket("mpu")
            .key("small-parts")
            .upload_id(&id)
            .multipart_upload(completed(&[a, b]))
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("EntityTooSmall", 400));

    // Abort: the upload and its parts are gone; a second abort is NoSuchUpload; the bucket
    // could not be deleted while it was open.
    let (code, _) = error_of(s3.delete_bucket().bucket("mpu").send().await);
    assert_eq!(code, "BucketNotEmpty");
    s3.abort_multipart_upload()
        .bucket("mpu")
        .key("small-parts")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let (code, status) = error_of(
        s3.abort_multipart_upload()
            .bucket("mpu")
            .key("small-parts")
            .upload_id(&id)
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchUpload", 404));
    let (code, status) = error_of(
        s3.upload_part()
            .bucket("mpu")
            .key("small-parts")
            .upload_id(&id)
            .part_number(3)
            .body(b"late".to_vec().into())
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("NoSuchUpload", 404));
    let (code, _) = error_of(
        s3.head_object()
            .bucket("mpu")
            .key("small-parts")
            .send()
            .await,
    );
    assert_eq!(code, "NotFound");
    let (code, status) = error_of(
        s3.upload_part()
            .bucket("mpu")
            .key("big")
            .upload_id("nope")
            .part_number(10_001)
            .body(b"x".to_vec().into())
            .send()
            .await,
    );
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_object_carries_the_composite_of_its_part_checksums() {
    use aws_sdk_s3::types::{
        ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart,
    };
    use base64::Engine as _;
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "crc").await;
    let up = s3
        .create_multipart_upload()
        .bucket("crc")
        .key("k")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let chunks = [payload(1, 5 << 20), payload(2, 1000)];
    let mut done = Vec::new();
    let mut raw = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let n = i as i32 + 1;
        let part = s3
            .upload_part()
            .bucket("crc")
            .key("k")
            .upload_id(id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(chunk.clone().into())
            .send()
            .await
            .unwrap();
        let sha = part.checksum_sha256().unwrap().to_string();
        raw.extend(
            base64::engine::general_purpose::STANDARD
                .decode(&sha)
                .unwrap(),
        );
        done.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(part.e_tag().unwrap())
                .checksum_sha256(sha)
                .build(),
        );
    }
    // A listed part checksum that is not the stored one is refused.
    let mut wrong = done.clone();
    wrong[1] = CompletedPart::builder()
        .part_number(2)
        .e_tag(done[1].e_tag().unwrap())
        .checksum_sha256(base64::engine::general_purpose::STANDARD.encode([0u8; 32]))
        .build();
    let (code, _) = error_of(
        s3.complete_multipart_upload()
            .bucket("crc")
            .key("k")
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(wrong))
                    .build(),
            )
            .send()
            .await,
    );
    assert_eq!(code, "InvalidPart");
    s3.complete_multipart_upload()
        .bucket("crc")
        .key("k")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let want = format!(
        "{}-2",
        base64::engine::general_purpose::STANDARD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(&raw))
    );
    let head = s3
        .head_object()
        .bucket("crc")
        .key("k")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_sha256(), Some(want.as_str()));
    let mut all = chunks[0].clone();
    all.extend_from_slice(&chunks[1]);
    assert_eq!(must_get(&s3, "crc", "k").await, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_uploads_rolls_keys_up_at_the_delimiter() {
    let dev = Dev::start(&[]);
    let s3 = dev.client();
    must_create_bucket(&s3, "uploads").await;
    for key in ["a/1", "a/2", "b", "c/x/y"] {
        s3.create_multipart_upload()
            .bucket("uploads")
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let all = s3
        .list_multipart_uploads()
        .bucket("uploads")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = all.uploads().iter().filter_map(|u| u.key()).collect();
    let prefixes: Vec<&str> = all
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!((keys, prefixes), (vec!["b"], vec!["a/", "c/"]));
    // One entry per page: a/, then b, then c/.
    let mut seen = Vec::new();
    let (mut key_marker, mut upload_marker) = (None::<String>, None::<String>);
    loop {
        let page = s3
            .list_multipart_uploads()
            .bucket("uploads")
            .delimiter("/")
            .max_uploads(1)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(upload_marker.clone())
            .send()
            .await
            .unwrap();
        seen.extend(
            page.uploads()
                .iter()
                .filter_map(|u| u.key())
                .map(str::to_string),
        );
        seen.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(str::to_string),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        upload_marker = page.next_upload_id_marker().map(str::to_string);
    }
    assert_eq!(seen, ["a/", "b", "c/"]);
}
