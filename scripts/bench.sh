#!/usr/bin/env bash
# Benchmarks (issue 6): Toru side by side with supervisord, monit, runit and s6, then rewrite
# docs/BENCHMARKS.md. Installs the peers if missing (Debian packages and supervisor from PyPI),
# builds the release binaries, and runs `toru-bench` with the arguments given (default: all).
#   ./scripts/bench.sh                 # every group, ~15 min, rewrites docs/BENCHMARKS.md
#   ./scripts/bench.sh memory http     # some groups, Markdown to stdout
# Loopback only; everything the bench starts is stopped by PID / process group, also on errors.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(toru_root)"

say "peers and tools"
# Cross linkers for the size group (aarch64-musl links with rust-lld; armv7 glibc needs the cross gcc)
# and the C compiler aarch64-musl builds ring with (the MQTT bridge's TLS; .cargo/config.toml [env]).
need_apt monit runit s6 wrk valgrind llvm gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
    gcc-aarch64-linux-gnu
# The mqtt group: a real broker of the bench's own on loopback, and its subscriber.
need_apt mosquitto mosquitto-clients
# The size group builds for the device targets (bench/src/size.rs).
case " ${*:-all} " in
    *" all "* | *" size "*) need_rust_target aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf ;;
esac
if ! python3 -c 'import supervisor' 2>/dev/null; then
    say "installing supervisor (pip)"
    python3 -m pip install --quiet supervisor >&2
fi

say "building"
cargo build --release -p toru -p hello-rust -p stress -p toru-bench >&2

say "running toru-bench ${*:-all}"
exec target/release/toru-bench "${@:-all}" --no-build
