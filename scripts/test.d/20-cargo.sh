#!/usr/bin/env bash
# Unit, integration and doc tests of the whole workspace on the build machine.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_apt python3 faketime minisign curl # faketime: tests/clock.rs preloads libfaketime; minisign: src/package/interop_tests.rs; curl: tests/guide.rs (docs/PLUGINS.md)
# tests/update.rs: the real RAUC with its own system bus, bundles (squashfs) and a throwaway CA
need_apt rauc dbus squashfs-tools openssl
# tests/mqtt.rs: a real broker started by each test on loopback, and its command-line clients
need_apt mosquitto mosquitto-clients
# With the MQTT bridge's TLS (cargo feature mqtt-tls, off by default to keep the device binary in
# its budget), so tests/mqtt.rs's TLS case runs.
cargo build --workspace --locked --features toru/mqtt-tls
cargo test --workspace --locked --features toru/mqtt-tls
