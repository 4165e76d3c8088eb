#!/usr/bin/env bash
# Unit, integration and doc tests of the whole workspace on the build machine.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_apt python3 faketime # faketime: tests/clock.rs preloads libfaketime
cargo build --workspace --locked
cargo test --workspace --locked
