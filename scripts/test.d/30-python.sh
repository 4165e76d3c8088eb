#!/usr/bin/env bash
# Python SDK unit tests, then the interop driver (tests/interop/driver.py), written from
# PROTOCOL.md without any SDK: as a host against the example plugins and the legacy 1.0 fixture
# (the same checks for the Python and the Rust example), and as plugins against the real host
# (tests/interop/against_host.py).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/../lib.sh"
need_apt python3
cd "$(toru_root)"

drive() { python3 tests/interop/driver.py "$@"; }
hello_py=plugins/hello-python/hello-python.binary

say "python SDK unit tests"
(cd toru-plugin-api/python && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest test_toru_plugin)
(cd plugins/notes && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest test_notes)

say "interop: hello-python (1.1, and under a legacy 1.0 host)"
drive --mode 1.1 "$hello_py"
drive --mode legacy-host "$hello_py"

say "interop: legacy 1.0 plugin"
drive --mode 1.0 tests/plugins/legacy10.binary

say "interop: plugins played against the real host (PROTOCOL.md, point by point)"
cargo build -p toru --locked
drive --mode host "${CARGO_TARGET_DIR:-target}/debug/toru"

if [ -f plugins/hello-rust/Cargo.toml ]; then
    cargo build -p hello-rust --locked
fi
if [ -x target/debug/hello-rust ]; then
    say "interop: hello-rust (1.1, and under a legacy 1.0 host)"
    drive --mode 1.1 target/debug/hello-rust
    drive --mode legacy-host target/debug/hello-rust
else
    say "interop: target/debug/hello-rust not built, skipped"
fi
