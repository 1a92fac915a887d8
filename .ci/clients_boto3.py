#!/usr/bin/env python3
"""boto3 compatibility suite for Lauscha (run by .ci/clients.sh).

Environment:
  LAUSCHA_ENDPOINT        e.g. http://127.0.0.1:19000 (required)
  AWS_ACCESS_KEY_ID       (required)
  AWS_SECRET_ACCESS_KEY   (required)
  AWS_DEFAULT_REGION      default us-east-1
  LAUSCHA_BOTO3_BUCKET    default boto3-ci (must not exist yet)

The SDK's checksum defaults are left alone (botocore >= 1.36 computes a
CRC32 for every PUT and validates response checksums). Note that over plain
http botocore sends that CRC32 as an x-amz-checksum-crc32 header with a
signed payload; it only switches to aws-chunked bodies with a trailer over
https.

Exits 1 with a message on the first mismatch.
"""

import base64
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zlib

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError


def fail(msg):
    print(f"boto3: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def step(msg):
    print(f"boto3: {msg}", flush=True)


def quoted_md5(data):
    # S3 returns ETags with the double quotes; for a single PUT it is the MD5.
    return '"' + hashlib.md5(data).hexdigest() + '"'


def status(resp):
    return resp["ResponseMetadata"]["HTTPStatusCode"]


def expect_error(what, code, http_status, fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        got = e.response.get("Error", {}).get("Code")
        got_status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        check(got == code, f"{what}: error code {got!r}, want {code!r} ({e})")
        check(got_status == http_status, f"{what}: HTTP status {got_status}, want {http_status}")
        return
    fail(f"{what}: succeeded, want error {code}")


def list_all_v2(s3, bucket, **kwargs):
    keys = []
    token = None
    while True:
        args = dict(Bucket=bucket, **kwargs)
        if token:
            args["ContinuationToken"] = token
        resp = s3.list_objects_v2(**args)
        keys += [o["Key"] for o in resp.get("Contents", [])]
        if not resp.get("IsTruncated"):
            return keys
        token = resp.get("NextContinuationToken")
        check(token, "list_objects_v2: IsTruncated without NextContinuationToken")


def main():
    endpoint = os.environ.get("LAUSCHA_ENDPOINT")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    bucket = os.environ.get("LAUSCHA_BOTO3_BUCKET", "boto3-ci")
    if not (endpoint and access_key and secret_key):
        fail("LAUSCHA_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set")

    step(f"boto3 {boto3.__version__}, botocore {botocore.__version__}, endpoint {endpoint}")
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            # One attempt per call: a 5xx must fail the suite, not be retried away.
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=120,
        ),
    )

    # ---- buckets
    expect_error("head_bucket before create", "404", 404, s3.head_bucket, Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    s3.head_bucket(Bucket=bucket)
    names = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    check(bucket in names, f"list_buckets: {bucket} missing from {names}")
    step("create_bucket / head_bucket / list_buckets ok")

    # ---- put / get / head of various sizes
    payloads = {
        "obj/empty": b"",
        "obj/one": os.urandom(1),
        "obj/100k": os.urandom(100 * 1024),
        "obj/5m": os.urandom(5 * 1024 * 1024),
    }
    for key, data in payloads.items():
        resp = s3.put_object(Bucket=bucket, Key=key, Body=data)
        check(resp.get("ETag") == quoted_md5(data),
              f"put_object {key}: ETag {resp.get('ETag')}, want {quoted_md5(data)}")
    for key, data in payloads.items():
        resp = s3.get_object(Bucket=bucket, Key=key)
        body = resp["Body"].read()
        check(body == data, f"get_object {key}: {len(body)} bytes back, want the {len(data)} put "
              f"(sha256 {hashlib.sha256(body).hexdigest()} vs {hashlib.sha256(data).hexdigest()})")
        check(resp["ContentLength"] == len(data),
              f"get_object {key}: ContentLength {resp['ContentLength']}, want {len(data)}")
        check(resp.get("ETag") == quoted_md5(data), f"get_object {key}: ETag {resp.get('ETag')}")

        head = s3.head_object(Bucket=bucket, Key=key)
        check(head["ContentLength"] == len(data),
              f"head_object {key}: ContentLength {head['ContentLength']}, want {len(data)}")
        check(head.get("ETag") == quoted_md5(data),
              f"head_object {key}: ETag {head.get('ETag')}, want {quoted_md5(data)}")
        check("LastModified" in head, f"head_object {key}: no Last-Modified")
    step("put_object / get_object / head_object of 0 B, 1 B, 100 KiB, 5 MiB ok")

    # ---- range get
    data = payloads["obj/100k"]
    resp = s3.get_object(Bucket=bucket, Key="obj/100k", Range="bytes=10-99")
    body = resp["Body"].read()
    check(status(resp) == 206, f"ranged get_object: HTTP {status(resp)}, want 206")
    check(body == data[10:100], f"ranged get_object: got {len(body)} bytes, want bytes 10..99")
    check(resp["ContentLength"] == 90, f"ranged get_object: ContentLength {resp['ContentLength']}")
    want_range = f"bytes 10-99/{len(data)}"
    check(resp.get("ContentRange") == want_range,
          f"ranged get_object: ContentRange {resp.get('ContentRange')!r}, want {want_range!r}")
    step("get_object Range=bytes=10-99 ok")

    # ---- prefix / delimiter listing
    for key in ["ls/a/1", "ls/a/2", "ls/b/1", "ls/c"]:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="ls/", Delimiter="/")
    prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
    keys = [o["Key"] for o in resp.get("Contents", [])]
    check(prefixes == ["ls/a/", "ls/b/"], f"list Prefix=ls/ Delimiter=/: CommonPrefixes {prefixes}")
    check(keys == ["ls/c"], f"list Prefix=ls/ Delimiter=/: Contents {keys}")
    check(resp.get("KeyCount") == 3, f"list Prefix=ls/ Delimiter=/: KeyCount {resp.get('KeyCount')}, want 3")
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="ls/a/", Delimiter="/")
    keys = [o["Key"] for o in resp.get("Contents", [])]
    check(keys == ["ls/a/1", "ls/a/2"], f"list Prefix=ls/a/ Delimiter=/: Contents {keys}")
    check(not resp.get("CommonPrefixes"), f"list Prefix=ls/a/: CommonPrefixes {resp.get('CommonPrefixes')}")
    keys = list_all_v2(s3, bucket, Prefix="ls/")
    check(keys == ["ls/a/1", "ls/a/2", "ls/b/1", "ls/c"], f"list Prefix=ls/: {keys}")
    # V1 listing too (rclone's "Other" provider and s3cmd use it).
    resp = s3.list_objects(Bucket=bucket, Prefix="ls/", Delimiter="/")
    prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
    keys = [o["Key"] for o in resp.get("Contents", [])]
    check(prefixes == ["ls/a/", "ls/b/"] and keys == ["ls/c"],
          f"list_objects (v1) Prefix=ls/ Delimiter=/: CommonPrefixes {prefixes}, Contents {keys}")
    step("list_objects_v2 / list_objects with Prefix and Delimiter ok")

    # ---- pagination: 7 keys, MaxKeys=2, byte order (digits < upper < lower)
    page_keys = ["page/b/c", "page/10", "page/A", "page/01", "page/a", "page/2", "page/1"]
    for key in page_keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"p")
    want = sorted(page_keys)
    got, token, pages = [], None, 0
    while True:
        args = dict(Bucket=bucket, Prefix="page/", MaxKeys=2)
        if token:
            args["ContinuationToken"] = token
        resp = s3.list_objects_v2(**args)
        pages += 1
        check(pages <= 10, "list_objects_v2 MaxKeys=2: more than 10 pages for 7 keys")
        batch = [o["Key"] for o in resp.get("Contents", [])]
        check(len(batch) <= 2, f"list_objects_v2 MaxKeys=2: page of {len(batch)} keys")
        got += batch
        if not resp.get("IsTruncated"):
            break
        check(len(batch) == 2, f"list_objects_v2 MaxKeys=2: truncated page with {len(batch)} keys")
        token = resp.get("NextContinuationToken")
        check(token, "list_objects_v2: IsTruncated without NextContinuationToken")
    check(got == want, f"list_objects_v2 MaxKeys=2 pages: {got}, want {want}")
    check(pages == 4, f"list_objects_v2 MaxKeys=2: {pages} pages for 7 keys, want 4")
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="page/", StartAfter="page/A")
    keys = [o["Key"] for o in resp.get("Contents", [])]
    check(keys == want[want.index("page/A") + 1:], f"list_objects_v2 StartAfter=page/A: {keys}")
    # V1 pagination: without a delimiter the client continues from the last key.
    got, marker = [], ""
    for _ in range(10):
        args = dict(Bucket=bucket, Prefix="page/", MaxKeys=2)
        if marker:
            args["Marker"] = marker
        resp = s3.list_objects(**args)
        batch = [o["Key"] for o in resp.get("Contents", [])]
        check(len(batch) <= 2, f"list_objects (v1) MaxKeys=2: page of {len(batch)} keys")
        got += batch
        if not resp.get("IsTruncated"):
            break
        check(batch, "list_objects (v1): empty truncated page")
        marker = resp.get("NextMarker") or batch[-1]
    check(got == want, f"list_objects (v1) MaxKeys=2 pages: {got}, want {want}")
    step("pagination (MaxKeys=2, StartAfter, v1 Marker) ok")

    # ---- a key that needs escaping in the canonical URI and in listings
    # (boto3 lists with EncodingType=url and URL-decodes the keys it gets).
    odd = "odd/sp ace+plus%25pct&amp=eq;semi,comma(paren)~tilde-ümlaut-€.txt"
    odd_data = os.urandom(333)
    s3.put_object(Bucket=bucket, Key=odd, Body=odd_data)
    body = s3.get_object(Bucket=bucket, Key=odd)["Body"].read()
    check(body == odd_data, f"get_object {odd!r}: body differs")
    keys = list_all_v2(s3, bucket, Prefix="odd/")
    check(keys == [odd], f"list_objects_v2 Prefix=odd/: {keys!r}, want {[odd]!r}")
    step("special-character key ok")

    # ---- errors
    expect_error("get_object of a missing key", "NoSuchKey", 404,
                 s3.get_object, Bucket=bucket, Key="no/such/key")
    # HEAD responses have no body, so botocore reports the status code as the error code.
    expect_error("head_object of a missing key", "404", 404,
                 s3.head_object, Bucket=bucket, Key="no/such/key")
    missing = bucket + "-missing"
    expect_error("head_bucket of a missing bucket", "404", 404, s3.head_bucket, Bucket=missing)
    expect_error("get_object in a missing bucket", "NoSuchBucket", 404,
                 s3.get_object, Bucket=missing, Key="x")
    expect_error("list_objects_v2 of a missing bucket", "NoSuchBucket", 404,
                 s3.list_objects_v2, Bucket=missing)
    expect_error("delete_bucket of a non-empty bucket", "BucketNotEmpty", 409,
                 s3.delete_bucket, Bucket=bucket)
    step("NoSuchKey / 404 / NoSuchBucket / BucketNotEmpty errors ok")

    # ---- delete_objects (botocore sends a CRC32 checksum header, not Content-MD5)
    all_keys = list_all_v2(s3, bucket)
    want_all = sorted(list(payloads) + ["ls/a/1", "ls/a/2", "ls/b/1", "ls/c"] + page_keys + [odd])
    check(all_keys == want_all, f"list of the whole bucket: {all_keys!r}, want {want_all!r}")
    # S3 reports deleting a key that does not exist as a success.
    to_delete = all_keys + ["never/existed"]
    resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in to_delete]})
    check(not resp.get("Errors"), f"delete_objects: Errors {resp.get('Errors')}")
    deleted = sorted(d["Key"] for d in resp.get("Deleted", []))
    check(deleted == sorted(to_delete), f"delete_objects: Deleted {deleted!r}, want {sorted(to_delete)!r}")
    resp = s3.list_objects_v2(Bucket=bucket)
    check(resp.get("KeyCount") == 0 and not resp.get("Contents"),
          f"bucket not empty after delete_objects: {resp.get('Contents')}")
    expect_error("get_object after delete_objects", "NoSuchKey", 404,
                 s3.get_object, Bucket=bucket, Key="obj/100k")
    step("delete_objects ok")

    s3.delete_bucket(Bucket=bucket)
    expect_error("head_bucket after delete_bucket", "404", 404, s3.head_bucket, Bucket=bucket)
    step("delete_bucket ok")

    # Multipart with the SDK's defaults (CRC32 per part): upload_file and download_file
    # of 20 MiB in 8 MiB parts.
    import tempfile
    from boto3.s3.transfer import TransferConfig
    mp_bucket = bucket + "-mpu"
    s3.create_bucket(Bucket=mp_bucket)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "up.bin"), os.path.join(tmp, "down.bin")
        data = os.urandom(20 * 1024 * 1024 + 12345)
        with open(src, "wb") as f:
            f.write(data)
        transfer = TransferConfig(multipart_threshold=8 * 1024 * 1024,
                                  multipart_chunksize=8 * 1024 * 1024)
        s3.upload_file(src, mp_bucket, "mp.bin", Config=transfer)
        etag = s3.head_object(Bucket=mp_bucket, Key="mp.bin")["ETag"]
        check(etag.endswith('-3"'), f"multipart ETag {etag!r}, want 3 parts")
        s3.download_file(mp_bucket, "mp.bin", dst, Config=transfer)
        with open(dst, "rb") as f:
            check(f.read() == data, "multipart object differs after download")
    s3.delete_object(Bucket=mp_bucket, Key="mp.bin")
    s3.delete_bucket(Bucket=mp_bucket)
    step("multipart upload_file/download_file ok")

    # Multipart with explicit CRC32 checksums per part: each part's checksum is verified
    # on upload, the completed object carries the composite checksum S3 defines
    # (CRC32 of the parts' CRC32s, then "-<parts>"), returned with ChecksumMode.
    mp_bucket = bucket + "-crc"
    s3.create_bucket(Bucket=mp_bucket)
    up = s3.create_multipart_upload(Bucket=mp_bucket, Key="crc.bin", ChecksumAlgorithm="CRC32")
    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    done = []
    for n, chunk in enumerate(parts_data, start=1):
        r = s3.upload_part(Bucket=mp_bucket, Key="crc.bin", UploadId=up["UploadId"], PartNumber=n,
                           Body=chunk, ChecksumAlgorithm="CRC32")
        want = base64.b64encode(zlib.crc32(chunk).to_bytes(4, "big")).decode()
        check(r.get("ChecksumCRC32") == want, f"upload_part {n}: ChecksumCRC32 {r.get('ChecksumCRC32')}, want {want}")
        done.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=mp_bucket, Key="crc.bin", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": done})
    raw = b"".join(base64.b64decode(p["ChecksumCRC32"]) for p in done)
    composite = base64.b64encode(zlib.crc32(raw).to_bytes(4, "big")).decode() + f"-{len(done)}"
    head = s3.head_object(Bucket=mp_bucket, Key="crc.bin", ChecksumMode="ENABLED")
    check(head.get("ChecksumCRC32") == composite,
          f"head_object: ChecksumCRC32 {head.get('ChecksumCRC32')}, want composite {composite}")
    got = s3.get_object(Bucket=mp_bucket, Key="crc.bin")["Body"].read()
    check(got == b"".join(parts_data), "multipart CRC32 object differs")
    # A part whose checksum does not match its bytes is refused and not stored.
    up = s3.create_multipart_upload(Bucket=mp_bucket, Key="bad.bin", ChecksumAlgorithm="CRC32")
    expect_error("upload_part with a wrong CRC32", "BadDigest", 400, s3.upload_part,
                 Bucket=mp_bucket, Key="bad.bin", UploadId=up["UploadId"], PartNumber=1,
                 Body=b"x" * 1000, ChecksumCRC32=base64.b64encode(b"\0\0\0\0").decode())
    parts = s3.list_parts(Bucket=mp_bucket, Key="bad.bin", UploadId=up["UploadId"]).get("Parts", [])
    check(parts == [], f"a refused part was stored: {parts}")
    s3.abort_multipart_upload(Bucket=mp_bucket, Key="bad.bin", UploadId=up["UploadId"])
    step("multipart with CRC32 checksums (composite) ok")

    # Browser upload: an HTML form POST with a SigV4 policy, as generate_presigned_post
    # makes it; a file larger than the policy allows is refused.
    post = s3.generate_presigned_post(mp_bucket, "form/hello.bin",
                                      Conditions=[["content-length-range", 1, 1000]],
                                      ExpiresIn=600)
    def form_post(filename, content):
        boundary = "----lauscha" + os.urandom(8).hex()
        body = b""
        for name, value in post["fields"].items():
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                     f"{value}\r\n").encode()
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        body += content + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(post["url"], data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    content = os.urandom(700)
    code = form_post("hello.bin", content)
    check(code in (200, 204), f"POST upload answered {code}")
    check(s3.get_object(Bucket=mp_bucket, Key="form/hello.bin")["Body"].read() == content,
          "POST-uploaded object differs")
    s3.delete_object(Bucket=mp_bucket, Key="form/hello.bin")
    code = form_post("hello.bin", os.urandom(5000))
    check(code == 400, f"POST upload over the policy's size range answered {code}, want 400")
    expect_error("head of the refused POST upload", "404", 404, s3.head_object,
                 Bucket=mp_bucket, Key="form/hello.bin")
    s3.delete_object(Bucket=mp_bucket, Key="crc.bin")
    s3.delete_bucket(Bucket=mp_bucket)
    step("POST upload with a policy ok")

    # A bucket with a named placement policy, as README.md shows it.
    policy_bucket = bucket + "-sites"
    def with_policy(request, **_):
        request.headers.add_header("x-lauscha-policy", "site-redundant")
    s3.meta.events.register("before-sign.s3.CreateBucket", with_policy)
    s3.create_bucket(Bucket=policy_bucket)
    s3.meta.events.unregister("before-sign.s3.CreateBucket", with_policy)
    head = s3.head_bucket(Bucket=policy_bucket)
    got = head["ResponseMetadata"]["HTTPHeaders"].get("x-lauscha-policy")
    check(got == "2+2/site", f"head_bucket: x-lauscha-policy {got!r}, want '2+2/site'")
    body = os.urandom(300_000)
    s3.put_object(Bucket=policy_bucket, Key="k", Body=body)
    check(s3.get_object(Bucket=policy_bucket, Key="k")["Body"].read() == body,
          "site-redundant bucket: object differs")
    s3.delete_object(Bucket=policy_bucket, Key="k")
    s3.delete_bucket(Bucket=policy_bucket)
    step("bucket with a placement policy ok")
    step("all checks passed")


if __name__ == "__main__":
    main()
