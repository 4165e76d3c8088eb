#!/usr/bin/env bash
# Unit, integration and doc tests of the whole workspace on the build machine.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_apt python3 faketime minisign # faketime: tests/clock.rs preloads libfaketime; minisign: src/package/interop_tests.rs
cargo build --workspace --locked
cargo test --workspace --locked
