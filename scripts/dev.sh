#!/usr/bin/env bash
# Builds and runs `lauscha dev`: every role on this machine, S3 on 127.0.0.1:9000.
# Extra arguments go to `lauscha dev` (see `lauscha dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}"
exec cargo run --release -p lauscha -- dev "$@"
