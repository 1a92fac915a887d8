#!/usr/bin/env bash
# Installs what building Lauscha needs on Debian/Ubuntu, if it is missing:
# libclang-dev (RocksDB's bindgen), a C/C++ toolchain (RocksDB, the SIMD codec).
# With --nbd-clients also the NBD clients the tests drive (qemu-utils: qemu-img,
# qemu-io; libnbd-bin: nbdinfo, nbdcopy).
# Rust itself comes from rustup (https://rustup.rs); this script checks for it.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if [[ ${1:-} == --nbd-clients ]]; then
    command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
    command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
fi
if ((${#need[@]})); then
    echo "bootstrap: installing ${need[*]}" >&2
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "bootstrap: cargo not found. Install Rust 1.95 or newer with rustup: https://rustup.rs" >&2
    exit 1
fi
