#!/usr/bin/env bash
# fmt and clippy, warnings are errors.
set -euo pipefail
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The MQTT bridge's TLS (cargo feature mqtt-tls, off in the device build; tested in stage cargo).
cargo clippy -p toru --all-targets --locked --features mqtt-tls -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
