#!/usr/bin/env bash
# Unit, integration and doc tests of the whole workspace on the build machine.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_apt python3 faketime minisign curl # faketime: tests/clock.rs preloads libfaketime; minisign: src/package/interop_tests.rs; curl: tests/guide.rs (docs/PLUGINS.md)
# tests/update.rs: the real RAUC with its own system bus, bundles (squashfs) and a throwaway CA
need_apt rauc dbus squashfs-tools openssl
# tests/mqtt.rs: a real broker started by each test on loopback, and its command-line clients
need_apt mosquitto mosquitto-clients
cargo build --workspace --locked
cargo test --workspace --locked
