#!/usr/bin/env bash
# Client compatibility suites: runs real S3 clients (aws cli, boto3, restic,
# rclone, s3cmd) against a fresh `lauscha dev` and checks the bytes that come
# back, not just exit codes.
#
# Environment (all optional):
#   LAUSCHA_BIN             binary (default ${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}/release/lauscha)
#   LAUSCHA_S3_PORT         S3 port to use; default: first free port from 19000 up
#   LAUSCHA_CLIENTS         suites to run, in order (default "awscli boto3 restic rclone s3cmd nbd")
#   LAUSCHA_CLIENT_TIMEOUT  seconds any single client command may take (default 900)
#   LAUSCHA_CI_TMPDIR       where the scratch dir goes (default ${TMPDIR:-/var/tmp})
#   LAUSCHA_CI_KEEP=1       keep the scratch dir (data dir, log, client files)
#
# Needs: bash, coreutils, diff, python3 with boto3, aws (awscli), restic,
# rclone, s3cmd. Debian 12 ships restic 0.14 and rclone 1.60: no newer flags.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAUSCHA_BIN="${LAUSCHA_BIN:-${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}/release/lauscha}"
CLIENTS="${LAUSCHA_CLIENTS:-awscli boto3 restic rclone s3cmd nbd}"
CLIENT_TIMEOUT="${LAUSCHA_CLIENT_TIMEOUT:-900}"
READY_TIMEOUT=60

# Fixed root credentials, forced into `lauscha dev` through its environment.
# The secret has '/' and '+' like real AWS secrets do.
ACCESS_KEY="LAUSCHACIACCESSKEY01"
SECRET_KEY="lauscha/ci+Secret0123456789abcdefghijklm"
REGION="us-east-1"

log() { printf '%s\n' "$*"; }
die() { printf 'clients: ERROR: %s\n' "$*" >&2; exit 1; }

# Run an external client command with a time limit, so that a hung client
# (e.g. one retrying forever against a broken server) fails the run instead of
# eating the whole CI budget.
t() { timeout --kill-after=10 "$CLIENT_TIMEOUT" "$@"; }

rand_file() { head -c "$2" /dev/urandom >"$1"; }

json_field() { # FILE KEY
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# ---------------------------------------------------------------- preflight

for suite in $CLIENTS; do
    case $suite in
        awscli) command -v aws >/dev/null || die "aws not found (pip install awscli)"
            command -v curl >/dev/null || die "curl not found (apt-get install curl)" ;;
        boto3) python3 -c 'import boto3' 2>/dev/null || die "python3 cannot import boto3 (pip install boto3)" ;;
        restic) command -v restic >/dev/null || die "restic not found (apt-get install restic)"
            command -v aws >/dev/null || die "aws not found (pip install awscli): the restic suite makes its Object Lock bucket with it" ;;
        rclone) command -v rclone >/dev/null || die "rclone not found (apt-get install rclone)" ;;
        s3cmd) command -v s3cmd >/dev/null || die "s3cmd not found (apt-get install s3cmd)" ;;
        nbd) command -v fio >/dev/null || die "fio not found (apt-get install fio)"
            fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"
            command -v nbdcopy >/dev/null || die "nbdcopy not found (apt-get install libnbd-bin)" ;;
        *) die "unknown suite '$suite' in LAUSCHA_CLIENTS" ;;
    esac
done
for tool in python3 timeout cmp md5sum diff awk; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $LAUSCHA_BIN ]] || die "lauscha binary not found or not executable: $LAUSCHA_BIN"

# Keep the clients away from whatever AWS settings the machine has: a
# profile, a config file or env vars could change addressing, endpoints or
# the checksum defaults these suites rely on.
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN \
    AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_CA_BUNDLE \
    AWS_REQUEST_CHECKSUM_CALCULATION AWS_RESPONSE_CHECKSUM_VALIDATION \
    AWS_USE_FIPS_ENDPOINT AWS_USE_DUALSTACK_ENDPOINT AWS_S3_US_EAST_1_REGIONAL_ENDPOINT \
    RCLONE_CONFIG S3CMD_CONFIG
export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
export NO_PROXY="$no_proxy"

port_is_free() { # PORT; SO_REUSEADDR like Rust's listeners, so TIME_WAIT does not count
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

if [[ -n ${LAUSCHA_S3_PORT:-} ]]; then
    PORT=$LAUSCHA_S3_PORT
    port_is_free "$PORT" || die "LAUSCHA_S3_PORT=$PORT is already in use"
else
    PORT=""
    for ((p = 19000; p < 19100; p++)); do
        if port_is_free "$p"; then PORT=$p; break; fi
    done
    [[ -n $PORT ]] || die "no free port in 19000..19099"
fi

# ---------------------------------------------------------------- lauscha

WORK="$(mktemp -d "${LAUSCHA_CI_TMPDIR:-${TMPDIR:-/var/tmp}}/lauscha-clients.XXXXXX")"
DATA="$WORK/data"
LOG="$WORK/lauscha.log"
mkdir -p "$DATA"

LAUSCHA_PID=""
CURRENT_SUITE="startup"
PASSED=0
LOG_SHOWN=0 # set once the log has been printed, so the trap does not repeat it

# True while the lauscha process we started exists and is not a zombie.
lauscha_alive() {
    local state
    [[ -n $LAUSCHA_PID ]] || return 1
    state=$(awk '{print $3}' "/proc/$LAUSCHA_PID/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# SIGTERM the one pid we started (lauscha dev stops its own children), give it
# 15 s, then SIGKILL that pid.
stop_lauscha() {
    [[ -n $LAUSCHA_PID ]] || return 0
    if lauscha_alive; then
        kill -TERM "$LAUSCHA_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 150; i++)); do
            lauscha_alive || break
            sleep 0.1
        done
        if lauscha_alive; then
            log "clients: WARNING: lauscha (pid $LAUSCHA_PID) ignored SIGTERM for 15 s; sending SIGKILL" >&2
            kill -KILL "$LAUSCHA_PID" 2>/dev/null || true
        fi
    fi
    wait "$LAUSCHA_PID" 2>/dev/null || true
    LAUSCHA_PID=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then
        log "== $CURRENT_SUITE: FAILED (exit $rc)" >&2
        if [[ -f $LOG && $LOG_SHOWN == 0 ]]; then
            log "---- last 200 lines of the lauscha log ($LOG) ----" >&2
            tail -n 200 "$LOG" >&2
            log "---- end of lauscha log ----" >&2
        fi
        log "clients: $PASSED passed, 1 failed"
    fi
    stop_lauscha
    if [[ ${LAUSCHA_CI_KEEP:-0} == 1 ]]; then
        log "clients: kept scratch dir $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "clients: starting $LAUSCHA_BIN dev on 127.0.0.1:$PORT (data dir $DATA)"
LAUSCHA_ACCESS_KEY="$ACCESS_KEY" LAUSCHA_SECRET_KEY="$SECRET_KEY" LAUSCHA__GATEWAY__ALLOW_SIGV2=true \
    "$LAUSCHA_BIN" dev --data-dir "$DATA" --s3-listen "127.0.0.1:$PORT" --admin-listen 127.0.0.1:0 --nbd-listen 127.0.0.1:0 \
    </dev/null >"$LOG" 2>&1 &
LAUSCHA_PID=$!

# cluster.json is renamed into place only once every process listens, so its
# existence is the readiness signal. credentials.json is written at the same
# time; wait until both parse, in case it is not written atomically.
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
    if [[ -f $DATA/cluster.json && -f $DATA/credentials.json ]] &&
        python3 -c 'import json, sys; [json.load(open(f)) for f in sys.argv[1:]]' \
            "$DATA/cluster.json" "$DATA/credentials.json" 2>/dev/null; then
        break
    fi
    if ! lauscha_alive; then
        rc=0
        wait "$LAUSCHA_PID" || rc=$?
        LAUSCHA_PID=""
        log "clients: lauscha exited with status $rc before it was ready; its log:" >&2
        tail -n 500 "$LOG" >&2
        LOG_SHOWN=1
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        log "clients: lauscha not ready after ${READY_TIMEOUT}s (no parseable cluster.json and credentials.json); data dir:" >&2
        ls -la "$DATA" >&2
        log "its log:" >&2
        tail -n 500 "$LOG" >&2
        LOG_SHOWN=1
        exit 1
    fi
    sleep 0.2
done

ENDPOINT="$(json_field "$DATA/cluster.json" s3_endpoint)"
[[ $ENDPOINT == "http://127.0.0.1:$PORT" ]] ||
    die "cluster.json s3_endpoint is '$ENDPOINT', expected http://127.0.0.1:$PORT"
[[ $(json_field "$DATA/credentials.json" access_key_id) == "$ACCESS_KEY" ]] ||
    die "credentials.json access_key_id does not match LAUSCHA_ACCESS_KEY"
[[ $(json_field "$DATA/credentials.json" secret_access_key) == "$SECRET_KEY" ]] ||
    die "credentials.json secret_access_key does not match LAUSCHA_SECRET_KEY"
[[ $(json_field "$DATA/credentials.json" region) == "$REGION" ]] ||
    die "credentials.json region is not $REGION"
log "clients: lauscha ready at $ENDPOINT after ${SECONDS}s"

# Common client environment. AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE
# point at files that do not exist, i.e. SDK defaults everywhere; the awscli
# suite writes its own config.
export LAUSCHA_ENDPOINT="$ENDPOINT"
export AWS_ACCESS_KEY_ID="$ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="$SECRET_KEY"
export AWS_DEFAULT_REGION="$REGION"
export AWS_CONFIG_FILE="$WORK/no-aws-config"
export AWS_SHARED_CREDENTIALS_FILE="$WORK/no-aws-credentials"
export AWS_EC2_METADATA_DISABLED=true

# ---------------------------------------------------------------- suites
# Each suite runs in a subshell ( ... ) so its exports and cd stay local;
# set -e is inherited, and a failure exits the subshell, then the script.

suite_awscli() (
    local dir="$WORK/awscli"
    mkdir -p "$dir/up" "$dir/down"
    export AWS_CONFIG_FILE="$dir/config"
    aws configure set default.s3.addressing_style path
    # With any s3 setting in the config file, `aws s3 presign` falls back to SigV2 URLs,
    # which Lauscha refuses: ask for SigV4, as a user of Lauscha has to.
    aws configure set default.s3.signature_version s3v4
    # Files up to 64 MB go as a single PUT (their ETag is checked as the body's MD5),
    # larger ones as multipart uploads in 8 MiB parts, 10 at a time.
    aws configure set default.s3.multipart_threshold 64MB
    aws configure set default.s3.multipart_chunksize 8MB
    aws configure set default.s3.max_concurrent_requests 10

    local bucket=awscli-ci
    rand_file "$dir/up/small.bin" 1024
    rand_file "$dir/up/big.bin" $((7 * 1024 * 1024))

    t aws --endpoint-url "$ENDPOINT" s3 mb "s3://$bucket"
    local f
    for f in small.bin big.bin; do
        t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "$dir/up/$f" "s3://$bucket/$f"
    done

    # Listing: exactly the two keys, with their sizes (output: date time size key).
    t aws --endpoint-url "$ENDPOINT" s3 ls "s3://$bucket/" >"$dir/ls.txt"
    awk '{print $3, $4}' "$dir/ls.txt" >"$dir/ls.got"
    printf '%s\n' "$((7 * 1024 * 1024)) big.bin" "1024 small.bin" >"$dir/ls.want"
    if ! diff -u "$dir/ls.want" "$dir/ls.got"; then
        cat "$dir/ls.txt"
        die "aws s3 ls: listing differs (want size+key above)"
    fi

    for f in small.bin big.bin; do
        # A single PUT's ETag is the quoted MD5 of the body; this also shows
        # that no multipart upload happened.
        local etag want
        etag=$(t aws --endpoint-url "$ENDPOINT" s3api head-object --bucket "$bucket" --key "$f" \
            --query ETag --output text)
        want="\"$(md5sum <"$dir/up/$f" | awk '{print $1}')\""
        [[ $etag == "$want" ]] || die "aws s3api head-object $f: ETag $etag, want $want"

        t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "s3://$bucket/$f" "$dir/down/$f"
        cmp "$dir/up/$f" "$dir/down/$f" || die "aws s3 cp: downloaded $f differs from the upload"
    done

    # Server-side copy, then a presigned GET of the copy (curl, no credentials); a URL
    # claiming more than a week of validity is refused before its signature is looked at.
    t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "s3://$bucket/big.bin" "s3://$bucket/copy.bin"
    local url
    url=$(t aws --endpoint-url "$ENDPOINT" s3 presign "s3://$bucket/copy.bin" --expires-in 600)
    t curl -sSf -o "$dir/down/presigned.bin" "$url" || die "curl of a presigned URL failed"
    cmp "$dir/up/big.bin" "$dir/down/presigned.bin" || die "presigned GET of the copy differs from big.bin"
    local status
    status=$(t curl -s -o "$dir/long.xml" -w '%{http_code}' "${url/X-Amz-Expires=600/X-Amz-Expires=604801}")
    [[ $status == 400 ]] && grep -q AuthorizationQueryParametersError "$dir/long.xml" ||
        { cat "$dir/long.xml"; die "a presigned URL valid for more than 7 days got $status"; }
    t aws --endpoint-url "$ENDPOINT" s3 rm --only-show-errors "s3://$bucket/copy.bin"

    # 300 MiB up and down as multipart uploads (38 parts); the ETag says so.
    rand_file "$dir/up/huge.bin" $((300 * 1024 * 1024))
    t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "$dir/up/huge.bin" "s3://$bucket/huge.bin"
    local huge_etag
    huge_etag=$(t aws --endpoint-url "$ENDPOINT" s3api head-object --bucket "$bucket" --key huge.bin \
        --query ETag --output text)
    [[ $huge_etag == *-38\" ]] || die "aws s3 cp of 300 MiB: ETag $huge_etag, want a 38-part multipart ETag"
    t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "s3://$bucket/huge.bin" "$dir/down/huge.bin"
    cmp "$dir/up/huge.bin" "$dir/down/huge.bin" || die "aws s3 cp: downloaded huge.bin differs from the upload"
    # A server-side copy this large is a multipart copy (UploadPartCopy).
    t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "s3://$bucket/huge.bin" "s3://$bucket/huge-copy.bin"
    t aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "s3://$bucket/huge-copy.bin" "$dir/down/huge.bin"
    cmp "$dir/up/huge.bin" "$dir/down/huge.bin" || die "aws s3 cp: the multipart copy of huge.bin differs"
    rm -f "$dir/up/huge.bin" "$dir/down/huge.bin"
    local open_uploads
    open_uploads=$(t aws --endpoint-url "$ENDPOINT" s3api list-multipart-uploads --bucket "$bucket" \
        --query 'length(Uploads || `[]`)' --output text)
    [[ $open_uploads == 0 ]] || die "multipart uploads left open: $open_uploads"

    for f in small.bin big.bin huge.bin huge-copy.bin; do
        t aws --endpoint-url "$ENDPOINT" s3 rm --only-show-errors "s3://$bucket/$f"
    done
    # No --force: this fails if the two deletes left anything behind.
    t aws --endpoint-url "$ENDPOINT" s3 rb "s3://$bucket"

    # Object Lock with s3api: a bucket created with it, a default retention, a COMPLIANCE
    # retention on one version, and that version's delete refused (also with the
    # governance bypass) while its bytes stay readable.
    local vault=awscli-vault
    t aws --endpoint-url "$ENDPOINT" s3api create-bucket --bucket "$vault" --object-lock-enabled-for-bucket >/dev/null
    t aws --endpoint-url "$ENDPOINT" s3api put-object-lock-configuration --bucket "$vault" \
        --object-lock-configuration '{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"GOVERNANCE","Days":1}}}'
    local mode
    mode=$(t aws --endpoint-url "$ENDPOINT" s3api get-object-lock-configuration --bucket "$vault" \
        --query ObjectLockConfiguration.Rule.DefaultRetention.Mode --output text)
    [[ $mode == GOVERNANCE ]] || die "get-object-lock-configuration: default mode $mode"
    local vid
    vid=$(t aws --endpoint-url "$ENDPOINT" s3api put-object --bucket "$vault" --key backup.bin \
        --body "$dir/up/big.bin" --query VersionId --output text)
    [[ -n $vid && $vid != None ]] || die "put-object into a locked bucket returned no version id"
    local until
    until=$(date -u -d '+2 days' +%Y-%m-%dT%H:%M:%SZ)
    t aws --endpoint-url "$ENDPOINT" s3api put-object-retention --bucket "$vault" --key backup.bin \
        --version-id "$vid" --retention "{\"Mode\":\"COMPLIANCE\",\"RetainUntilDate\":\"$until\"}"
    mode=$(t aws --endpoint-url "$ENDPOINT" s3api get-object-retention --bucket "$vault" --key backup.bin \
        --version-id "$vid" --query Retention.Mode --output text)
    [[ $mode == COMPLIANCE ]] || die "get-object-retention: mode $mode, want COMPLIANCE"
    local bypass
    for bypass in "" --bypass-governance-retention; do
        if aws --endpoint-url "$ENDPOINT" s3api delete-object --bucket "$vault" --key backup.bin \
            --version-id "$vid" $bypass >"$dir/locked.txt" 2>&1; then
            die "delete-object of a COMPLIANCE-locked version succeeded ($bypass)"
        fi
        grep -q AccessDenied "$dir/locked.txt" || { cat "$dir/locked.txt"; die "locked delete: not AccessDenied"; }
    done
    t aws --endpoint-url "$ENDPOINT" s3api get-object --bucket "$vault" --key backup.bin \
        --version-id "$vid" "$dir/down/locked.bin" >/dev/null
    cmp "$dir/up/big.bin" "$dir/down/locked.bin" || die "the locked version reads back different"
    local versions
    versions=$(t aws --endpoint-url "$ENDPOINT" s3api list-object-versions --bucket "$vault" \
        --query 'length(Versions)' --output text)
    [[ $versions == 1 ]] || die "list-object-versions: $versions versions, want 1"
)

suite_boto3() (
    t python3 "$HERE/clients_boto3.py"
)

# ~201 MiB in 371 files of 0 B .. 20 MiB with random content (sizes are fixed,
# content is not), plus an empty directory.
make_restic_tree() {
    local root=$1 i mib
    mkdir -p "$root/empty-dir" "$root/medium" "$root/large/nested"
    for ((i = 0; i < 10; i++)); do mkdir -p "$root/small/d$i"; done
    # 300 files of 0 B .. 64 KiB (f0 is empty): ~9 MiB
    for ((i = 0; i < 300; i++)); do
        rand_file "$root/small/d$((i % 10))/f$i" $(((i * 7919) % 65537))
    done
    # 60 files of 64 KiB .. ~2 MiB: ~64 MiB
    for ((i = 0; i < 60; i++)); do
        rand_file "$root/medium/m$i" $((65536 + (i * 104729) % 2097152))
    done
    # 11 files of 3 .. 20 MiB (l0 exactly 20 MiB, the others not MiB-aligned): ~128 MiB
    i=0
    for mib in 20 20 17 15 13 11 9 8 7 5 3; do
        rand_file "$root/large/nested/l$i" $((mib * 1048576 - i * 4099))
        i=$((i + 1))
    done
}

suite_restic() (
    local dir="$WORK/restic"
    local src="$dir/src" restore="$dir/restore"
    mkdir -p "$src" "$restore"
    make_restic_tree "$src"
    log "restic: source tree $(du -sh "$src" | awk '{print $1}') in $(find "$src" -type f | wc -l) files"

    # No bucket is created beforehand: restic creates it. No -o s3.region
    # either, so restic (minio-go) asks for the bucket location like a
    # default setup does. Over plain HTTP minio-go uploads with aws-chunked
    # streaming signatures (STREAMING-AWS4-HMAC-SHA256-PAYLOAD).
    export RESTIC_REPOSITORY="s3:$ENDPOINT/restic-ci"
    export RESTIC_PASSWORD="lauscha-ci-restic-password"
    export RESTIC_CACHE_DIR="$dir/cache"

    t restic init
    t restic backup --host lauscha-ci "$src"
    # --read-data downloads and verifies every pack, not just the index.
    t restic check --read-data
    t restic restore latest --target "$restore"
    # restic restores absolute paths under the target.
    diff -r "$src" "$restore$src" || die "restic: restored tree differs from the source"

    # The ransomware-safe setup: a repository in a versioned bucket with Object Lock
    # and a default retention. Every pack restic writes is a locked version; restic's
    # own deletes (lock files) only add delete markers.
    t aws --endpoint-url "$ENDPOINT" s3api create-bucket --bucket restic-locked \
        --object-lock-enabled-for-bucket >/dev/null
    t aws --endpoint-url "$ENDPOINT" s3api put-object-lock-configuration --bucket restic-locked \
        --object-lock-configuration '{"ObjectLockEnabled":"Enabled","Rule":{"DefaultRetention":{"Mode":"COMPLIANCE","Days":1}}}'
    export RESTIC_REPOSITORY="s3:$ENDPOINT/restic-locked"
    rm -rf "$restore"
    mkdir -p "$restore"
    t restic init
    t restic backup --host lauscha-ci "$src"
    t restic backup --host lauscha-ci "$src"
    t restic check --read-data
    t restic restore latest --target "$restore"
    diff -r "$src" "$restore$src" || die "restic: tree restored from the locked bucket differs"
    # A pack cannot be destroyed: deleting its version is refused.
    local pack vid
    pack=$(t aws --endpoint-url "$ENDPOINT" s3api list-objects-v2 --bucket restic-locked \
        --prefix data/ --query 'Contents[0].Key' --output text)
    vid=$(t aws --endpoint-url "$ENDPOINT" s3api head-object --bucket restic-locked --key "$pack" \
        --query VersionId --output text)
    if aws --endpoint-url "$ENDPOINT" s3api delete-object --bucket restic-locked --key "$pack" \
        --version-id "$vid" >"$dir/del.txt" 2>&1; then
        die "restic: a locked pack version was deleted"
    fi
    grep -q AccessDenied "$dir/del.txt" || { cat "$dir/del.txt"; die "restic: locked delete not AccessDenied"; }
)

suite_rclone() (
    local dir="$WORK/rclone"
    local src="$dir/src" back="$dir/back"
    mkdir -p "$src" "$back"

    # Remote "lauscha" defined entirely by environment; an empty config file
    # so that no user config is read.
    export RCLONE_CONFIG="$dir/rclone.conf"
    : >"$RCLONE_CONFIG"
    export RCLONE_CONFIG_LAUSCHA_TYPE=s3
    export RCLONE_CONFIG_LAUSCHA_PROVIDER=Other
    export RCLONE_CONFIG_LAUSCHA_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"
    export RCLONE_CONFIG_LAUSCHA_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
    export RCLONE_CONFIG_LAUSCHA_ENDPOINT="$ENDPOINT"
    export RCLONE_CONFIG_LAUSCHA_REGION="$REGION"
    export RCLONE_CONFIG_LAUSCHA_FORCE_PATH_STYLE=true
    # Single PUTs only (multipart is not there yet); one try each, so that a
    # server error fails the suite instead of being retried away.
    local -a opts=(--checkers 8 --transfers 8 --s3-upload-cutoff 64M
        --retries 1 --low-level-retries 1)

    # 500 files of 1..4 KiB in 10 directories. A few names need escaping in
    # SigV4 canonical URIs and in listings (space, '+', '%', '&', '=', ';',
    # non-ASCII), as real file names do.
    local -a special=("space name.bin" "plus+sign.bin" "percent%41.bin"
        "amp&eq=semi;.bin" "umlaut-äöü-ß.bin" "paren (1) [x].bin")
    local i name
    for ((i = 0; i < 10; i++)); do mkdir -p "$src/d$i"; done
    for ((i = 0; i < 500; i++)); do
        if ((i < ${#special[@]})); then name=${special[i]}; else name="f$i.bin"; fi
        rand_file "$src/d$((i % 10))/$name" $((1024 + (i * 389) % 3073))
    done

    local remote=lauscha:rclone-ci
    t rclone "${opts[@]}" mkdir "$remote"
    t rclone "${opts[@]}" sync "$src" "$remote/data"
    # Compares sizes and MD5s (ETags of single PUTs).
    t rclone "${opts[@]}" check "$src" "$remote/data"
    t rclone "${opts[@]}" sync "$remote/data" "$back"
    diff -r "$src" "$back" || die "rclone: downloaded tree differs from the source"

    rm "$src/d3/f123.bin"
    t rclone "${opts[@]}" sync "$src" "$remote/data"
    t rclone "${opts[@]}" check "$src" "$remote/data"
    t rclone lsf -R --files-only "$remote/data" >"$dir/remote.lst"
    local n
    n=$(wc -l <"$dir/remote.lst")
    ((n == 499)) || die "rclone: remote has $n files after deleting one of 500, want 499"
    if grep -qxF "d3/f123.bin" "$dir/remote.lst"; then
        die "rclone: d3/f123.bin still listed remotely after sync"
    fi
)

suite_s3cmd() (
    local dir="$WORK/s3cmd"
    mkdir -p "$dir"
    local cfg="$dir/s3cfg"
    # host_bucket without %(bucket)s means path-style requests.
    cat >"$cfg" <<EOF
[default]
access_key = $AWS_ACCESS_KEY_ID
secret_key = $AWS_SECRET_ACCESS_KEY
host_base = 127.0.0.1:$PORT
host_bucket = 127.0.0.1:$PORT
use_https = False
signature_v2 = False
bucket_location = $REGION
enable_multipart = False
multipart_chunk_size_mb = 1024
EOF
    local -a s3cmd=(s3cmd -c "$cfg" --no-progress)
    local bucket=s3cmd-ci size=$((3 * 1024 * 1024))
    rand_file "$dir/up.bin" "$size"

    t "${s3cmd[@]}" mb "s3://$bucket"
    t "${s3cmd[@]}" put "$dir/up.bin" "s3://$bucket/three.bin"
    t "${s3cmd[@]}" get "s3://$bucket/three.bin" "$dir/down.bin"
    cmp "$dir/up.bin" "$dir/down.bin" || die "s3cmd: downloaded object differs from the upload"

    # ls lines: date time size uri
    t "${s3cmd[@]}" ls "s3://$bucket" >"$dir/ls.txt"
    if ! awk -v size="$size" -v uri="s3://$bucket/three.bin" \
        '$3 == size && $4 == uri { found = 1 } END { exit !found }' "$dir/ls.txt"; then
        cat "$dir/ls.txt"
        die "s3cmd ls: s3://$bucket/three.bin ($size bytes) not listed"
    fi

    # Old clients that sign with SigV2 work where the operator allows it (this run's
    # gateway has gateway.allow_sigv2 = true; it is off by default).
    t "${s3cmd[@]}" --signature-v2 get --force "s3://$bucket/three.bin" "$dir/down.bin"
    cmp "$dir/up.bin" "$dir/down.bin" || die "s3cmd --signature-v2: downloaded object differs"

    t "${s3cmd[@]}" del "s3://$bucket/three.bin"
    t "${s3cmd[@]}" rb "s3://$bucket"

    # A named placement policy, as README.md shows it; an unknown one is refused.
    t "${s3cmd[@]}" mb --add-header=x-lauscha-policy:site-redundant "s3://$bucket-sites"
    t "${s3cmd[@]}" put "$dir/up.bin" "s3://$bucket-sites/three.bin"
    t "${s3cmd[@]}" get --force "s3://$bucket-sites/three.bin" "$dir/down.bin"
    cmp "$dir/up.bin" "$dir/down.bin" || die "s3cmd: object in the site-redundant bucket differs"
    t "${s3cmd[@]}" del "s3://$bucket-sites/three.bin"
    t "${s3cmd[@]}" rb "s3://$bucket-sites"
    # s3cmd retries a 400 with a SigV2 signature (refused: AccessDenied) and reports that
    # last answer; the first answer, in its debug output, must be the InvalidArgument.
    if "${s3cmd[@]}" --debug mb --add-header=x-lauscha-policy:platinum "s3://$bucket-nosuch" >"$dir/err.txt" 2>&1; then
        die "s3cmd: a bucket with an unknown placement policy was created"
    fi
    grep -q "<Code>InvalidArgument" "$dir/err.txt" || { tail -40 "$dir/err.txt"; die "s3cmd: unknown policy not refused with InvalidArgument"; }
    if t "${s3cmd[@]}" ls "s3://$bucket-nosuch" >/dev/null 2>&1; then
        die "s3cmd: the bucket with an unknown placement policy exists"
    fi
)

suite_nbd() (
    local dir="$WORK/nbd"
    mkdir -p "$dir"
    local nbd
    nbd="$(json_field "$DATA/cluster.json" nbd_endpoint)"
    local -a admin=("$LAUSCHA_BIN" admin --data-dir "$DATA")
    t "${admin[@]}" volume create fio-ci --size 512M
    t "${admin[@]}" volume create copy-ci --size 64M
    # fio writes every block of 512 MiB in random order (64 KiB), then reads all back
    # and checks each block's checksum; then 4 KiB random writes at queue depth 32.
    local job
    for job in "--bs=64k --size=512M --iodepth=16" "--bs=4k --size=32M --iodepth=32"; do
        # shellcheck disable=SC2086
        t fio --name=verify --ioengine=nbd --uri="$nbd/fio-ci" --rw=randwrite $job \
            --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --output="$dir/fio.txt"
        grep -q "err= 0" "$dir/fio.txt" || { cat "$dir/fio.txt"; die "fio reported errors ($job)"; }
    done
    # nbdcopy in and out of a volume.
    rand_file "$dir/in.raw" $((64 * 1024 * 1024))
    t nbdcopy "$dir/in.raw" "$nbd/copy-ci"
    t nbdcopy "$nbd/copy-ci" "$dir/out.raw"
    cmp "$dir/in.raw" "$dir/out.raw" || die "nbdcopy: the volume reads back other bytes"
    # The server detaches once nbdcopy has gone and the journal is merged; until then
    # the volume is attached and deleting it is refused.
    local i
    for ((i = 0; i < 60; i++)); do
        "${admin[@]}" volume delete copy-ci >/dev/null 2>&1 && break
        sleep 0.5
    done
    ((i < 60)) || die "volume copy-ci still attached 30 s after nbdcopy ended"
)

# ---------------------------------------------------------------- run

for suite in $CLIENTS; do
    CURRENT_SUITE=$suite
    log "== $suite: running"
    started=$SECONDS
    "suite_$suite"
    log "$suite: took $((SECONDS - started))s"
    log "== $suite: ok"
    PASSED=$((PASSED + 1))
done
CURRENT_SUITE="shutdown"

stop_lauscha
log "clients: $PASSED passed, 0 failed"
