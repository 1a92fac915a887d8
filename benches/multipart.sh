#!/usr/bin/env bash
# Benchmark, not a test: a 1 GiB upload with the aws cli as a multipart upload (8 MiB
# parts, 10 at a time) against the same file as one single-stream PUT, on `lauscha dev`
# (release build), next to a raw disk write of the same size measured in the same run.
#
# Usage: benches/multipart.sh      Prints `name=value` lines; removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}"
cargo build --release -q -p lauscha --bin lauscha
BIN="$CARGO_TARGET_DIR/release/lauscha"
DIR=$(mktemp -d /var/tmp/lauscha-multipart.XXXXXX)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT

dd_line=$(dd if=/dev/zero of="$DIR/dd" bs=1M count=1024 conv=fsync 2>&1 | tail -1)
rm -f "$DIR/dd"
echo "dd_write_MBps=$(echo "$dd_line" | awk '{print $(NF-1)}')"

"$BIN" dev --data-dir "$DIR/data" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --nbd-listen 127.0.0.1:0 \
    >"$DIR/dev.out" 2>"$DIR/dev.log" &
pid=$!
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/dev.out")
creds() { python3 -c "import json; print(json.load(open('$DIR/data/credentials.json'))['$1'])"; }
export AWS_ACCESS_KEY_ID=$(creds access_key_id) AWS_SECRET_ACCESS_KEY=$(creds secret_access_key)
export AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE="$DIR/aws-config"
ENDPOINT=$(creds endpoint)
aws configure set default.s3.addressing_style path
aws configure set default.s3.signature_version s3v4
aws configure set default.s3.multipart_chunksize 8MB
aws configure set default.s3.max_concurrent_requests 10
aws --endpoint-url "$ENDPOINT" s3 mb s3://bench >/dev/null
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$DIR/1GiB"

upload() { # upload NAME THRESHOLD
    aws configure set default.s3.multipart_threshold "$2"
    local t0 t1
    t0=$(date +%s.%N)
    aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "$DIR/1GiB" "s3://bench/$1"
    t1=$(date +%s.%N)
    python3 -c "print(f'$1_MBps={1073741824 / ($t1 - $t0) / 1e6:.1f}')"
}
upload multipart_put 64MB
upload single_put 5GB
aws --endpoint-url "$ENDPOINT" s3api head-object --bucket bench --key multipart_put \
    --query ETag --output text | sed 's/^/multipart_etag=/'
