#!/usr/bin/env bash
# Benchmark, not a test: ListObjectVersions over 100,000 versions (10,000 keys with 10
# versions each) on `lauscha dev` (release build), next to ListObjectsV2 over the same
# 10,000 current keys in the same run, both paged 1,000 at a time with boto3.
#
# Usage: benches/versions.sh      Prints `name=value` lines; removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}"
cargo build --release -q -p lauscha --bin lauscha
BIN="$CARGO_TARGET_DIR/release/lauscha"
DIR=$(mktemp -d /var/tmp/lauscha-versions.XXXXXX)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT

"$BIN" dev --data-dir "$DIR/data" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --nbd-listen 127.0.0.1:0 \
    >"$DIR/dev.out" 2>"$DIR/dev.log" &
pid=$!
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/dev.out")
python3 - "$DIR/data/credentials.json" <<'PY'
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

creds = json.load(open(sys.argv[1]))
def client():
    return boto3.session.Session().client(
        "s3", endpoint_url=creds["endpoint"], region_name="us-east-1",
        aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=64))
s3 = client()
s3.create_bucket(Bucket="versions")
s3.put_bucket_versioning(Bucket="versions", VersioningConfiguration={"Status": "Enabled"})
KEYS, VERSIONS = 10_000, 10
def writer(shard):
    c = client()
    for i in range(shard, KEYS, 32):
        for v in range(VERSIONS):
            c.put_object(Bucket="versions", Key=f"dir{i % 100:02d}/key{i:05d}", Body=b"v%d" % v)
t0 = time.time()
with ThreadPoolExecutor(32) as pool:
    list(pool.map(writer, range(32)))
print(f"put_versions={KEYS * VERSIONS}")
print(f"put_versions_per_s={KEYS * VERSIONS / (time.time() - t0):.0f}")

def timed(pages):
    best = None
    for _ in range(3):
        t0 = time.time()
        n = pages()
        dt = time.time() - t0
        best = dt if best is None else min(best, dt)
    return n, best
def versions():
    n, kw = 0, {}
    while True:
        r = s3.list_object_versions(Bucket="versions", MaxKeys=1000, **kw)
        n += len(r.get("Versions", [])) + len(r.get("DeleteMarkers", []))
        if not r["IsTruncated"]:
            return n
        kw = {"KeyMarker": r["NextKeyMarker"], "VersionIdMarker": r["NextVersionIdMarker"]}
def objects():
    n, kw = 0, {}
    while True:
        r = s3.list_objects_v2(Bucket="versions", MaxKeys=1000, **kw)
        n += r["KeyCount"]
        if not r["IsTruncated"]:
            return n
        kw = {"ContinuationToken": r["NextContinuationToken"]}
nv, tv = timed(versions)
no, to = timed(objects)
assert nv == KEYS * VERSIONS, nv
assert no == KEYS, no
print(f"list_object_versions_versions_per_s={nv / tv:.0f}")
print(f"list_object_versions_keys_per_s={KEYS / tv:.0f}")
print(f"list_objects_v2_keys_per_s={no / to:.0f}")
print(f"versions_vs_objects_per_entry={(nv / tv) / (no / to):.2f}")
PY
