#!/usr/bin/env bash
# Benchmark, not a test: fio's nbd engine against a Lauscha volume (`lauscha dev`,
# release build) and, in the same run, against qemu-nbd serving a raw file on the same
# disk (`-f raw --cache=none --aio=io_uring`, falling back to native AIO where io_uring
# is not allowed). Prints `name=value` lines and the ratio of each Lauscha number to
# qemu-nbd's; then the bytes the storage layer wrote per client byte (/proc/PID/io
# write_bytes of the dev process, which runs every role) for 4 KiB random and 1 MiB
# sequential writes.
#
# Then the read cache's hits and misses, and 4 KiB random reads with the cache off.
#
# Then the cost of NBD over TLS (certificates made with openssl) as ratios to plain NBD.
#
# Noise on this kind of disk: shards are files, so write jobs create thousands of files.
# On ext4 without a journal (this machine's: `perf` shows ext4_fsync_nojournal), a new
# inode is not taken from those freed in the last 60 s, or 360 s while their inode table
# block is dirty, which a running write job keeps it: the allocator steps over each
# (`recently_deleted`). `perf` showed 29% of the server's CPU in inode allocation in 4 KiB
# random writes after `sync; sleep 70`, 46% right after other runs had removed their
# directories. Runs right after others (or after builds and tests that removed many
# files) are slower for it; compare binaries in alternating runs.
#
# Usage: benches/nbd.sh [SECONDS_PER_JOB]      Removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}"
RUNTIME="${1:-15}"
cargo build --release -q -p lauscha --bin lauscha
BIN="$CARGO_TARGET_DIR/release/lauscha"
DIR=$(mktemp -d /var/tmp/lauscha-nbd.XXXXXX)
pid="" qpid="" tpid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [[ -n $tpid ]] && kill "$tpid" 2>/dev/null && wait "$tpid" 2>/dev/null
    [[ -n $qpid ]] && kill "$qpid" 2>/dev/null && wait "$qpid" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT

: >"$DIR/dev.out" # tail -f below must find it even before the server starts
"$BIN" dev --data-dir "$DIR/data" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --nbd-listen 127.0.0.1:0 >"$DIR/dev.out" 2>"$DIR/dev.log" &
pid=$!
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/dev.out")
NBD=$(python3 -c "import json; print(json.load(open('$DIR/data/cluster.json'))['nbd_endpoint'])")
"$BIN" admin --data-dir "$DIR/data" volume create bench --size 1G >/dev/null
"$BIN" admin --data-dir "$DIR/data" volume create amp --size 1G >/dev/null

truncate -s 1G "$DIR/raw.img"
QPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
aio=io_uring
qemu-nbd --help | grep -q io_uring || aio=native
qemu-nbd -f raw --cache=none --aio=$aio -b 127.0.0.1 -p "$QPORT" -t "$DIR/raw.img" 2>"$DIR/qemu-nbd.log" &
qpid=$!
sleep 1
if ! kill -0 "$qpid" 2>/dev/null; then
    aio=native
    qemu-nbd -f raw --cache=none --aio=$aio -b 127.0.0.1 -p "$QPORT" -t "$DIR/raw.img" 2>"$DIR/qemu-nbd.log" &
    qpid=$!
fi
for _ in $(seq 50); do nbdinfo "nbd://127.0.0.1:$QPORT" >/dev/null 2>&1 && break; sleep 0.2; done
echo "qemu_nbd_aio=$aio"

job() { # URI NAME ARGS...; prints the IOPS or MB/s fio measured
    local uri=$1 name=$2
    shift 2
    fio --name="$name" --ioengine=nbd --uri="$uri" --time_based --runtime="$RUNTIME" \
        --size=512M --output-format=json "$@" >"$DIR/$name.json"
    python3 - "$DIR/$name.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]
side = "write" if j["write"]["io_bytes"] > 0 else "read"
print(f'{j[side]["iops"]:.0f} {j[side]["bw_bytes"] / 1e6:.1f}')
PY
}
fill() { fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=4M --size=512M >/dev/null; }
fill "$NBD/bench"
fill "nbd://127.0.0.1:$QPORT"
declare -A unit=([randread4k]=iops [randread4kuniform]=iops [randwrite4k]=iops [seqread1m]=MBps [seqwrite1m]=MBps [seqwrite1mflush]=MBps [writeflush4k]=iops)
for name in randread4k randread4kuniform randwrite4k seqread1m seqwrite1m seqwrite1mflush writeflush4k; do
    case $name in
        randread4k) args=(--rw=randread --bs=4k --iodepth=32) ;;
        # fio's default random map visits every block once per pass, 16 times per 64 KiB;
        # without it the offsets are uniform (some read twice, some not at all).
        randread4kuniform) args=(--rw=randread --bs=4k --iodepth=32 --norandommap) ;;
        randwrite4k) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
        seqread1m) args=(--rw=read --bs=1M --iodepth=4) ;;
        seqwrite1m) args=(--rw=write --bs=1M --iodepth=4) ;;
        # Not in the issue's table: the same with a FLUSH after every write. A Lauscha write
        # is durable on the nodes when it is acknowledged (each shard covered by an
        # fdatasync); qemu-nbd's is in the host's caches until a FLUSH. This row compares
        # the two at the same durability.
        seqwrite1mflush) args=(--rw=write --bs=1M --iodepth=4 --fsync=1) ;;
        writeflush4k) args=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1) ;;
    esac
    read -r l_iops l_mbps < <(job "$NBD/bench" "lauscha-$name" "${args[@]}")
    read -r q_iops q_mbps < <(job "nbd://127.0.0.1:$QPORT" "qemu-$name" "${args[@]}")
    if [[ ${unit[$name]} == iops ]]; then l=$l_iops q=$q_iops; else l=$l_mbps q=$q_mbps; fi
    [[ $name == randread4k ]] && randread_q=$q_iops
    echo "${name}_lauscha_${unit[$name]}=$l"
    echo "${name}_qemu_nbd_${unit[$name]}=$q"
    python3 -c "print(f'${name}_ratio={$l / $q:.2f}')"
done

# The read cache (gateway.read_cache_bytes, default 256 MiB, over a 512 MiB working set):
# its hits and misses in the jobs above, and the 4 KiB random reads again on a second
# server with the cache off, as a ratio to the same qemu-nbd number.
ADMIN=$(python3 -c "import json; print(json.load(open('$DIR/data/cluster.json'))['admin_endpoint'])")
curl -fsS "$ADMIN/metrics" | awk '/^lauscha_read_cache_(hits|misses)_total/ {print $1 "=" $2}'
: >"$DIR/nocache.out" # tail -f below must find it even before the server starts
"$BIN" dev --data-dir "$DIR/nocache" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --nbd-listen 127.0.0.1:0 --read-cache-bytes 0 >"$DIR/nocache.out" 2>"$DIR/nocache.log" &
tpid=$!
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/nocache.out")
NBD0=$(python3 -c "import json; print(json.load(open('$DIR/nocache/cluster.json'))['nbd_endpoint'])")
"$BIN" admin --data-dir "$DIR/nocache" volume create bench --size 1G >/dev/null
fill "$NBD0/bench"
read -r l_iops _ < <(job "$NBD0/bench" lauscha-randread4k-nocache --rw=randread --bs=4k --iodepth=32)
echo "randread4k_nocache_lauscha_iops=$l_iops"
python3 -c "print(f'randread4k_nocache_ratio={$l_iops / $randread_q:.2f}')"
kill "$tpid" && wait "$tpid" 2>/dev/null || true
tpid=""

# The cost of TLS (NBD_OPT_STARTTLS, client certificate CN=root): a second server with
# --nbd-tls-*, sequential copies over nbds:// as ratios to the same copies over nbd://.
openssl_ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
mkdir -p "$DIR/pki/client"
(
    cd "$DIR/pki"
    openssl_ec -x509 -keyout ca-key.pem -out ca-cert.pem -subj /CN=bench-ca -days 2 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
    for who in server client; do
        openssl_ec -keyout "$who-key.pem" -out "$who.csr" -subj "/CN=$([[ $who == client ]] && echo root || echo localhost)"
        eku=$([[ $who == client ]] && echo clientAuth || echo serverAuth)
        openssl x509 -req -in "$who.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
            -out "$who-cert.pem" -extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=%s\n' "$eku") 2>/dev/null
    done
    cp ca-cert.pem client-cert.pem client-key.pem client/
)
: >"$DIR/tls.out" # tail -f below must find it even before the server starts
"$BIN" dev --data-dir "$DIR/tls" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --nbd-listen 127.0.0.1:0 --nbd-tls-cert "$DIR/pki/server-cert.pem" \
    --nbd-tls-key "$DIR/pki/server-key.pem" --nbd-tls-client-ca "$DIR/pki/ca-cert.pem" \
    >"$DIR/tls.out" 2>"$DIR/tls.log" &
tpid=$!
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/tls.out")
NBDS=$(python3 -c "import json; print(json.load(open('$DIR/tls/cluster.json'))['nbd_endpoint'])")
"$BIN" admin --data-dir "$DIR/tls" volume create copy --size 256M >/dev/null
"$BIN" admin --data-dir "$DIR/data" volume create copy --size 256M >/dev/null
TLS_URI="$NBDS/copy?tls-certificates=$DIR/pki/client"
# fio's nbd engine cannot be used here: libnbd refuses certificate paths in a URI unless
# the program allows local files, which fio does not. nbdcopy does, so both sides of each
# ratio are nbdcopy (1 MiB requests, 4 in flight): TLS server over nbds:// against the
# plain server over nbd://, each on a fresh 256 MiB volume written with the same bytes.
head -c 256M /dev/urandom >"$DIR/random.img"
copy_mbps() { # SRC DST: MB/s of one nbdcopy
    local t0 t1
    t0=$(date +%s.%N)
    nbdcopy --request-size=1048576 --requests=4 --connections=1 "$1" "$2" || exit 1
    t1=$(date +%s.%N)
    python3 -c "print(f'{(256 << 20) / ($t1 - $t0) / 1e6:.1f}')"
}
plain_w=$(copy_mbps "$DIR/random.img" "$NBD/copy")
tls_w=$(copy_mbps "$DIR/random.img" "$TLS_URI")
plain_r=$(copy_mbps "$NBD/copy" null:)
tls_r=$(copy_mbps "$TLS_URI" null:)
echo "nbdcopy_write_plain_MBps=$plain_w nbdcopy_write_tls_MBps=$tls_w"
echo "nbdcopy_read_plain_MBps=$plain_r nbdcopy_read_tls_MBps=$tls_r"
python3 -c "print(f'nbdcopy_write_tls_to_plain_ratio={$tls_w / $plain_w:.2f}')"
python3 -c "print(f'nbdcopy_read_tls_to_plain_ratio={$tls_r / $plain_r:.2f}')"
kill "$tpid" && wait "$tpid" 2>/dev/null || true
tpid=""

written() { awk '/^write_bytes/ {print $2}' "/proc/$pid/io"; }
amp() { # NAME FIO_ARGS...
    local name=$1
    shift
    local before after
    before=$(written)
    fio --name="$name" --ioengine=nbd --uri="$NBD/amp" --size=64M "$@" >/dev/null
    # The server merges the journal when the client has gone: wait until it has written
    # nothing for 2 s (at most 120 s).
    local last=-1 quiet=0
    for _ in $(seq 240); do
        after=$(written)
        if [[ $after == "$last" ]]; then quiet=$((quiet + 1)); else quiet=0; fi
        ((quiet >= 4)) && break
        last=$after
        sleep 0.5
    done
    python3 -c "print(f'${name}_storage_bytes_per_client_byte={($after - $before) / (64 << 20):.1f}')"
}
amp amp_randwrite4k --rw=randwrite --bs=4k --iodepth=32
amp amp_seqwrite1m --rw=write --bs=1M --iodepth=4
