#!/usr/bin/env bash
# Benchmark helper, not a test: how a 1 GiB single PUT and single GET through
# a running Lauscha compare with writing the same amount straight to disk.
#
# Usage: LAUSCHA_ENDPOINT=http://127.0.0.1:19000 AWS_ACCESS_KEY_ID=... \
#        AWS_SECRET_ACCESS_KEY=... .ci/big-transfer.sh DIR
#
# DIR should be on the same disk as Lauscha's data dir; the scratch files go
# in a temp dir below it and are removed at the end.
#
# Environment:
#   LAUSCHA_ENDPOINT      S3 endpoint of a running `lauscha dev` (required)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (required), AWS_DEFAULT_REGION (default us-east-1)
#   BIG_TRANSFER_MIB      size in MiB (default 1024; at most 5120, Lauscha's
#                         largest single PUT is 5 GiB)
#   BIG_TRANSFER_BUCKET   bucket to use (default big-transfer; created and
#                         removed again if it does not exist)
#
# Prints lines like (MB = 10^6 bytes, as dd reports):
#   dd_write_MBps=...  put_1GiB_MBps=...  get_1GiB_MBps=...
# The aws cli times include its start-up (~0.5 s) and, over plain http, its
# SHA-256 of the whole body for the signature: the client's CPU is part of
# the PUT number.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
die() { printf 'big-transfer: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && $1 != -h && $1 != --help ]] || { usage >&2; exit 2; }
DIR=$1
[[ -d $DIR ]] || die "not a directory: $DIR"
: "${LAUSCHA_ENDPOINT:?set LAUSCHA_ENDPOINT (e.g. http://127.0.0.1:19000)}"
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
command -v aws >/dev/null || die "aws not found (pip install awscli)"

SIZE_MIB="${BIG_TRANSFER_MIB:-1024}"
BUCKET="${BIG_TRANSFER_BUCKET:-big-transfer}"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "BIG_TRANSFER_MIB must be a positive integer"
((SIZE_MIB <= 5120)) || die "BIG_TRANSFER_MIB=$SIZE_MIB: a single PUT is at most 5 GiB (5120 MiB)"
BYTES=$((SIZE_MIB * 1024 * 1024))
if ((SIZE_MIB % 1024 == 0)); then LABEL="$((SIZE_MIB / 1024))GiB"; else LABEL="${SIZE_MIB}MiB"; fi

# Source and download copies live side by side (the dd file is removed before).
avail_kib=$(df -Pk "$DIR" | awk 'NR == 2 {print $4}')
need_kib=$((2 * SIZE_MIB * 1024 + 256 * 1024))
((avail_kib >= need_kib)) ||
    die "$DIR has $((avail_kib / 1024)) MiB free, need at least $((need_kib / 1024)) MiB (plus what Lauscha stores)"

WORK="$(mktemp -d "$DIR/big-transfer.XXXXXX")"
CREATED_BUCKET=0
KEY="big-transfer-$$.bin"

cleanup() {
    local rc=$?
    set +e
    if [[ -n ${AWS_CONFIG_FILE:-} && -f ${AWS_CONFIG_FILE:-} ]]; then
        aws --endpoint-url "$LAUSCHA_ENDPOINT" s3 rm --only-show-errors "s3://$BUCKET/$KEY" >/dev/null 2>&1
        if ((CREATED_BUCKET)); then
            aws --endpoint-url "$LAUSCHA_ENDPOINT" s3 rb "s3://$BUCKET" >/dev/null 2>&1
        fi
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Our own aws config: path-style addressing, and a multipart threshold above
# the largest allowed size so that the upload is one PUT and the download one
# GET (above the threshold the aws cli also splits downloads into ranges).
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3
export AWS_CONFIG_FILE="$WORK/aws-config"
export AWS_SHARED_CREDENTIALS_FILE="$WORK/no-aws-credentials"
export AWS_EC2_METADATA_DISABLED=true
aws configure set default.s3.addressing_style path
aws configure set default.s3.multipart_threshold 6GB # aws cli: GB = GiB

now_ns() { date +%s%N; }
mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.1f", (b / 1e6) / (ns / 1e9) }'; }
secs() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }

echo "big-transfer: $SIZE_MIB MiB, endpoint $LAUSCHA_ENDPOINT, bucket $BUCKET, scratch $WORK" >&2

# 1. The disk alone: write and fdatasync the same amount.
t0=$(now_ns)
dd if=/dev/zero of="$WORK/dd.bin" bs=1M count="$SIZE_MIB" conv=fdatasync status=none
t1=$(now_ns)
rm -f "$WORK/dd.bin"
echo "dd_write_seconds=$(secs $((t1 - t0)))"
echo "dd_write_MBps=$(mbps "$BYTES" $((t1 - t0)))"

# 2. Random source (incompressible), flushed so that its writeback does not
#    compete with the PUT.
head -c "$BYTES" /dev/urandom >"$WORK/src.bin"
sync "$WORK/src.bin"

if ! aws --endpoint-url "$LAUSCHA_ENDPOINT" s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
    aws --endpoint-url "$LAUSCHA_ENDPOINT" s3 mb "s3://$BUCKET" >/dev/null
    CREATED_BUCKET=1
fi

t0=$(now_ns)
aws --endpoint-url "$LAUSCHA_ENDPOINT" s3 cp --only-show-errors "$WORK/src.bin" "s3://$BUCKET/$KEY"
t1=$(now_ns)
echo "put_${LABEL}_seconds=$(secs $((t1 - t0)))"
echo "put_${LABEL}_MBps=$(mbps "$BYTES" $((t1 - t0)))"

# The download lands in the page cache (no fsync), like a normal client's.
t0=$(now_ns)
aws --endpoint-url "$LAUSCHA_ENDPOINT" s3 cp --only-show-errors "s3://$BUCKET/$KEY" "$WORK/dst.bin"
t1=$(now_ns)
echo "get_${LABEL}_seconds=$(secs $((t1 - t0)))"
echo "get_${LABEL}_MBps=$(mbps "$BYTES" $((t1 - t0)))"

cmp "$WORK/src.bin" "$WORK/dst.bin" || die "downloaded object differs from the upload"
echo "big-transfer: downloaded bytes match" >&2
