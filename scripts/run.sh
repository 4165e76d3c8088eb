#!/usr/bin/env bash
# The run command: build the host and the example plugins, install the plugins into a local folder
# and serve the UI on http://127.0.0.1:8080 (data in .toru-dev/, nothing outside the checkout but a
# private socket folder if the checkout path is too long for Unix socket names).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.toru-dev"
cargo build --workspace --locked
mkdir -p "$root/plugins" "$root/data"
install -m 0755 target/debug/hello-rust "$root/plugins/hello-rust.binary"
if [ -f plugins/hello-python/hello-python.binary ] && command -v python3 >/dev/null; then
    install -m 0755 plugins/hello-python/hello-python.binary "$root/plugins/hello-python.binary"
    install -m 0644 toru-plugin-api/python/toru_plugin.py "$root/plugins/toru_plugin.py"
fi
run="$root/run"
# Unix socket paths are limited to 108 bytes: fall back to a private folder when ours is too long.
if [ ${#run} -gt 70 ]; then
    run="${XDG_RUNTIME_DIR:-/tmp}/toru-dev-$(id -u)"
fi
mkdir -p "$run" && chmod 0700 "$run"
echo "Toru: http://127.0.0.1:8080/  (data in $root/data; first start prints a setup code, also in $root/data/setup-code)" >&2
exec target/debug/toru --listen 127.0.0.1:8080 --data-dir "$root/data" \
    --plugins-dir "$root/plugins" --runtime-dir "$run" "$@"
