#!/usr/bin/env bash
# The run command: build the host and the plugins, pack the plugins as signed packages with a
# development key, and serve the UI on http://127.0.0.1:8080 with them installed (data in
# .toru-dev/, nothing outside the checkout but a private socket folder if the checkout path is too
# long for Unix socket names).
#
# On first use it creates the key .toru-dev/keys/dev.key (+ dev.pub) and trusts it on this local
# instance only. Each run packs hello-rust, hello-python, sysinfo and notes, starts the host, and
# installs every package that is new or was rebuilt since the last run (a rebuilt one with the same
# version replaces the installed one; its KV data and settings are kept). Ctrl-C stops the host.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/.toru-dev"
cargo build --workspace --locked
toru="$PWD/target/debug/toru"
triple=$(rustc -vV | sed -n 's/^host: //p')
mkdir -p "$root/plugins" "$root/data" "$root/keys" "$root/packages" "$root/installed"
run="$root/run"
# Unix socket paths are limited to 108 bytes: fall back to a private folder when ours is too long.
if [ ${#run} -gt 70 ]; then
    run="${XDG_RUNTIME_DIR:-/tmp}/toru-dev-$(id -u)"
fi
mkdir -p "$run" && chmod 0700 "$run"
# The development config: a short package probation (the device's default is 30 s), so the
# packages below are up and confirmed within seconds. Written once; yours to edit.
if [ ! -f "$root/toru.toml" ]; then
    cat >"$root/toru.toml" <<'CONF'
# Config of the run command's host (scripts/run.sh); every key: README.md, "Running the host".
[packages]
# How long a freshly installed or updated package must stay ready before it is confirmed.
probation_secs = 5
CONF
fi
dirs=(--config "$root/toru.toml" --data-dir "$root/data" --plugins-dir "$root/plugins" --runtime-dir "$run")

# Earlier versions of this command copied the examples in as plain executables: packages replace them.
for old in hello-rust hello-python; do
    if [ -e "$root/plugins/$old.binary" ]; then
        rm -f "$root/plugins/$old.binary"
        "$toru" "${dirs[@]}" plugins unbind "$old" >/dev/null 2>&1 || true
    fi
done
rm -f "$root/plugins/toru_plugin.py"

# The development key: created once, trusted on this instance (trusting it again changes nothing).
if [ ! -f "$root/keys/dev.key" ]; then
    (cd "$root/keys" && "$toru" key generate dev >&2)
fi
"$toru" "${dirs[@]}" trust add "$root/keys/dev.pub" --comment "development key of scripts/run.sh" >/dev/null

# Pack each plugin for this machine.
packages=()
pack() { # ID [TRIPLE=EXECUTABLE]
    local id=$1
    shift
    scripts/pack-plugin.sh "plugins/$id" "$root/keys/dev.key" "$root/packages/$id.toru" "$@" 2>/dev/null
    packages+=("$id")
}
pack hello-rust "$triple=target/debug/hello-rust"
pack sysinfo "$triple=target/debug/sysinfo"
if command -v python3 >/dev/null; then
    pack hello-python
    pack notes
else
    echo "run: python3 not found: hello-python and notes are left out" >&2
fi

"$toru" --listen 127.0.0.1:8080 "${dirs[@]}" "$@" &
host=$!
trap 'kill -TERM $host 2>/dev/null || true; wait $host 2>/dev/null || true' INT TERM
# The control socket answers once the host runs.
for _ in $(seq 1 300); do
    "$toru" "${dirs[@]}" plugins >/dev/null 2>&1 && break
    kill -0 $host 2>/dev/null || { wait $host; exit $?; }
    sleep 0.1
done
echo "Toru: http://127.0.0.1:8080/  (data in $root/data; first start prints a setup code, also in $root/data/setup-code)" >&2

# Install what is new or rebuilt, all at once (each waits for its probation); the UI is up meanwhile.
install_one() { # ID
    local id=$1 file="$root/packages/$1.toru" sum
    sum=$(sha256sum "$file" | cut -d' ' -f1)
    [ "$(cat "$root/installed/$id.sha256" 2>/dev/null)" = "$sum" ] && return 0
    if "$toru" "${dirs[@]}" plugin versions "$id" >/dev/null 2>&1; then
        "$toru" "${dirs[@]}" plugin remove "$id" >/dev/null
    fi
    if "$toru" "${dirs[@]}" plugin install "$file" >&2; then
        echo "$sum" >"$root/installed/$id.sha256"
    else
        echo "run: $id was not installed (above: why)" >&2
    fi
}
for id in "${packages[@]}"; do
    install_one "$id" &
done
wait $host
