#!/usr/bin/env bash
# One fio job (nbd engine) against a fresh `lauscha dev` (release build), for profiling
# and A/B comparisons; benches/nbd.sh is the full benchmark against qemu-nbd.
#
#   benches/nbd-job.sh NAME FIO-ARGS...    e.g. benches/nbd-job.sh rw --rw=randwrite --bs=4k --iodepth=32
#
# Environment: FILL=0 skips writing 512 MiB first (default 1); SECS (default 10); PERF=1
# records a CPU profile of the dev process to $OUT/NAME.data (perf record, PERFARGS);
# DEVARGS are extra `lauscha dev` flags; OUT (default /var/tmp/lauscha-nbd-job) keeps
# the fio JSON. Prints read/write IOPS, MB/s, mean latency, the bytes the dev process
# wrote to storage per client byte (/proc/PID/io write_bytes), the CPU time the dev
# process spent per request (/proc/PID/stat utime + stime), the share of the machine's
# CPU time busy during the job (/proc/stat: below 1.00 the job waits on something other
# than CPU), and the read cache's counters since the start (the fill included).
# Noise on this kind of disk: shards are files, so write jobs create thousands of files.
# On ext4 without a journal (this machine's: `perf` shows ext4_fsync_nojournal), a new
# inode is not taken from those freed in the last 60 s, or 360 s while their inode table
# block is dirty, which a running write job keeps it: the allocator steps over each
# (`recently_deleted`). `perf` showed 29% of the server's CPU in inode allocation in 4 KiB
# random writes after `sync; sleep 70`, 46% right after other runs had removed their
# directories. Runs right after others (or after builds and tests that removed many
# files) are slower for it; compare binaries in alternating runs.
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}/release/lauscha}
OUT=${OUT:-/var/tmp/lauscha-nbd-job}
name=$1; shift
mkdir -p "$OUT"
DIR=$(mktemp -d "$OUT/dev.XXXX")
touch "$DIR/dev.out"
# shellcheck disable=SC2086
"$BIN" dev --data-dir "$DIR/data" --s3-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --nbd-listen 127.0.0.1:0 ${DEVARGS:-} >"$DIR/dev.out" 2>"$DIR/dev.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$DIR"' EXIT
timeout 120 grep -m1 -q "Lauscha dev is running" <(tail -f "$DIR/dev.out")
NBD=$(python3 -c "import json; print(json.load(open('$DIR/data/cluster.json'))['nbd_endpoint'])")
"$BIN" admin --data-dir "$DIR/data" volume create bench --size 1G >/dev/null
if [[ ${FILL:-1} == 1 ]]; then
    fio --name=fill --ioengine=nbd --uri="$NBD/bench" --rw=write --bs=4M --size=512M >/dev/null
fi
read -r w0 < <(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; } # utime + stime
c0=$(cpu_ticks)
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat; } # busy, idle + iowait
read -r mb0 mi0 < <(machine_ticks)
if [[ ${PERF:-0} == 1 ]]; then
    # shellcheck disable=SC2086
    perf record -F 999 ${PERFARGS:-} -p "$pid" -o "$OUT/$name.data" -- sleep "${SECS:-10}" 2>/dev/null &
    perf_pid=$!
fi
fio --name="$name" --ioengine=nbd --uri="$NBD/bench" --time_based --runtime="${SECS:-10}" \
    --size=512M --output-format=json "$@" >"$OUT/$name.json"
if [[ ${PERF:-0} == 1 ]]; then wait "$perf_pid"; fi
read -r w1 < <(awk '/^write_bytes/ {print $2}' "/proc/$pid/io")
c1=$(cpu_ticks)
read -r mb1 mi1 < <(machine_ticks)
python3 - "$OUT/$name.json" "$w0" "$w1" "$((c1 - c0))" "$(getconf CLK_TCK)" "$((mb1 - mb0))" "$((mi1 - mi0))" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
for side in ("read", "write"):
    if j[side]["io_bytes"] > 0:
        amp = (int(sys.argv[3]) - int(sys.argv[2])) / max(1, j[side]["io_bytes"])
        ops = j["read"]["total_ios"] + j["write"]["total_ios"]
        cpu_us = int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / max(1, ops)
        print(side, f'iops={j[side]["iops"]:.0f} MBps={j[side]["bw_bytes"] / 1e6:.1f}',
              f'lat_mean_us={j[side]["lat_ns"]["mean"] / 1e3:.0f} amp={amp:.2f}',
              f'server_cpu_us_per_op={cpu_us:.0f}',
              f'machine_busy={int(sys.argv[6]) / max(1, int(sys.argv[6]) + int(sys.argv[7])):.2f}')
PY
ADMIN=$(python3 -c "import json; print(json.load(open('$DIR/data/cluster.json'))['admin_endpoint'])")
curl -fsS "$ADMIN/metrics" | awk '/^lauscha_read_(cache_hits|cache_misses|slices)_total/ {printf "%s=%s ", $1, $2} END {print ""}'
