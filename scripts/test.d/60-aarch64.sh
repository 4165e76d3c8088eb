#!/usr/bin/env bash
# The workspace on ARM: builds it for the device target (aarch64-unknown-linux-musl) and runs every
# test under qemu-user, integration tests included: they spawn the real ARM `toru` and real ARM
# plugin binaries, which the kernel hands to qemu through binfmt_misc
# (docs/decisions/0002-arm-tests-under-qemu-user.md). Also keeps the 32-bit glibc artefact
# (armv7-unknown-linux-gnueabihf, release) buildable. Linkers and runners: .cargo/config.toml.
set -euo pipefail
. "$(dirname "$0")/../../board/lib.sh"
cd "$REPO_DIR"

need_apt gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
    qemu-user-static binfmt-support arch-test file python3
board_need_binfmt

target=aarch64-unknown-linux-musl
need_rust_target "$target" armv7-unknown-linux-gnueabihf
# Build every binary first: integration tests find plugin executables in the target directory, and
# `cargo test` alone builds only what the test targets depend on.
cargo build --workspace --locked --target "$target"
# RUST_TEST_THREADS=2: one per core; emulated processes are ~5-10x slower, so do not oversubscribe.
# The kill loop restarts the host per round; 20 rounds under emulation (200 natively, stage cargo).
TORU_KILL_ROUNDS=${TORU_KILL_ROUNDS:-20} RUST_TEST_THREADS=${RUST_TEST_THREADS:-2} \
    cargo test --workspace --locked --target "$target"

# Binaries for the device target are static aarch64: no libc on the device to match.
tdir=${CARGO_TARGET_DIR:-target}
bin="$tdir/$target/debug/toru"
file -L "$bin" | grep -q 'ARM aarch64.*statically linked' || { file -L "$bin"; exit 1; }

cargo build --release --locked --target armv7-unknown-linux-gnueabihf -p toru
file -L "$tdir/armv7-unknown-linux-gnueabihf/release/toru" | grep -q 'ARM, EABI5'
