#!/usr/bin/env bash
# Runs the whole Rust test suite: unit and property tests, the storage contract suites,
# and the integration tests that start `lauscha dev` (in-process and as separate
# processes) and talk to it with aws-sdk-s3 and, for block volumes, with qemu-img,
# qemu-io, nbdinfo and nbdcopy (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --nbd-clients
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lauscha-target}"
exec cargo test --workspace "$@"
