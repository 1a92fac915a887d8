#!/usr/bin/env bash
# Benchmark, not a test: what failures cost on a `lauscha dev --cluster` (six storage
# nodes, 4+2) on this machine, each number next to a reference measured in the same run.
#
#   1. raw disk write (dd, 1 GiB, fsync'd): the reference for repair;
#   2. 1 GiB in 16 objects of 64 MiB; GET MB/s healthy, then with one node killed
#      (every stripe rebuilt from parity on the fly): degraded / healthy;
#   3. the killed node's disk wiped and the node replaced: repair MB/s (bytes of
#      rebuilt shards written / wall time of `lauscha admin node replace --wait`);
#   4. 2,000 objects of 256 KiB; GET p50/p99 with every node healthy, then with one node
#      paused by SIGSTOP (hedged reads), then resumed.
#
# Usage: benches/durability.sh            (builds the release binaries first)
# Prints `name=value` lines; keeps nothing (the data dir is removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}"
cargo build --release -q -p lauscha -p lauscha-benches --bin lauscha --bin lauscha-load
BIN="$CARGO_TARGET_DIR/release/lauscha"
LOAD="$CARGO_TARGET_DIR/release/lauscha-load"

DIR=$(mktemp -d /var/tmp/lauscha-durability.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

step() { printf '\n# %s\n' "$*" >&2; }
node_field() { # node_field ID FIELD: a field of storage node ID in cluster.json
    python3 -c "import json,sys; p=[p for p in json.load(open('$DIR/data/cluster.json'))['processes'] if p['role']=='storage' and p['id']==$1][0]; v=p['$2']; print(' '.join(v) if isinstance(v, list) else v)"
}
stat_of() { "$BIN" admin --data-dir "$DIR/data" --json maintenance | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

step "reference: raw disk write"
dd_line=$(dd if=/dev/zero of="$DIR/dd" bs=1M count=1024 conv=fsync 2>&1 | tail -1)
rm -f "$DIR/dd"
echo "dd_write_MBps=$(echo "$dd_line" | awk '{print $(NF-1)}')"

step "lauscha dev --cluster"
"$BIN" dev --cluster --data-dir "$DIR/data" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --nbd-listen 127.0.0.1:0 \
    >"$DIR/dev.out" 2>"$DIR/dev.log" &
pids+=($!)
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/dev.out")

step "1 GiB as 16 x 64 MiB"
"$LOAD" --data-dir "$DIR/data" fill --bucket big --keys 16 --size 67108864 --concurrency 2 | grep puts_per_s
"$LOAD" --data-dir "$DIR/data" get --bucket big --keys 16 --concurrency 4 --seconds 20 --label healthy_get

step "node 1 killed: every GET rebuilds"
kill -KILL "$(node_field 1 pid)"
"$LOAD" --data-dir "$DIR/data" get --bucket big --keys 16 --concurrency 4 --seconds 20 --label degraded_get

step "node 1 wiped and replaced: repair"
node_dir=$(node_field 1 data_dir)
rm -rf "$node_dir" && mkdir -p "$node_dir"
read -r -a argv <<<"$(node_field 1 argv)"
"${argv[@]}" </dev/null >"$DIR/node1.out" 2>"$DIR/node1.log" &
pids+=($!)
timeout 60 grep -m1 -q listen <(tail -f "$DIR/node1.out")
before=$(stat_of bytes_rebuilt)
t0=$(date +%s.%N)
"$BIN" admin --data-dir "$DIR/data" --json node replace 1 --wait >/dev/null
t1=$(date +%s.%N)
after=$(stat_of bytes_rebuilt)
python3 -c "b=$after-$before; s=$t1-$t0; print(f'repair_bytes={b}'); print(f'repair_seconds={s:.1f}'); print(f'repair_MBps={b/s/1e6:.1f}')"

step "2,000 x 256 KiB: GET latency healthy, then with node 2 paused"
"$LOAD" --data-dir "$DIR/data" fill --bucket small --keys 2000 --size 262144 --concurrency 16 | grep puts_per_s
"$LOAD" --data-dir "$DIR/data" get --bucket small --keys 2000 --concurrency 8 --seconds 20 --label healthy_small
paused=$(node_field 2 pid)
kill -STOP "$paused"
"$LOAD" --data-dir "$DIR/data" get --bucket small --keys 2000 --concurrency 8 --seconds 20 --label paused_small
kill -CONT "$paused"
