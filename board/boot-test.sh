#!/usr/bin/env bash
# Boots a copy of a built image under QEMU and checks the appliance end to end:
#
#   board/boot-test.sh board/out/toru-<version>-rpi-arm64.img [virt|raspi3b]
#
# The copy is grown by 2 GiB (first boot must grow the root partition). The kernel command line
# carries `toru.testtoken`, which enables the test-only toru-boot-test.service inside the image; it
# writes TORU-TEST-* lines to the serial console (captured to a file here) and takes commands on a
# virtio serial port (`kill`: SIGKILL the host). The test completes first-boot setup over HTTP with
# the setup code it reads on the console. HTTP goes through a QEMU user-network forward bound
# to 127.0.0.1 only. Every wait polls with a deadline; the only fixed wait is the watchdog soak.
#
# virt: the full check list. raspi3b: boot, HTTP, setup, token, plugins and root grow only (no
# virtio serial port there, so no kill test), and much slower. Neither runs the Pi's GPU firmware
# (bootcode.bin/start.elf).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

img=${1:?usage: $0 <image.img> [virt|raspi3b]}
machine=${2:-virt}
base=${img%.img}
need_apt qemu-system-arm qemu-efi-aarch64 curl python3 util-linux

run=$(mktemp -d "${TMPDIR:-/tmp}/toru-boot.XXXXXX")
console="$run/console.log"
qpid=""
cleanup() {
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
    # Keep the serial console log for whoever investigates (board/out is git-ignored).
    mkdir -p "$BOARD_OUT" && cp "$console" "$BOARD_OUT/boot-test-$machine.console.log" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "boot test FAILED ($machine): $*" >&2
    echo "---- last lines of the serial console ----" >&2
    tail -n 80 "$console" 2>/dev/null | tr -d '\r' >&2 || true
    # What the host itself says, when it answers and a token exists: plugins, system, plugin logs.
    if [ -n "${token:-}" ] && [ -n "${port:-}" ]; then
        local p
        for p in /api/plugins /api/system "${expected[@]/#//api/plugins/}"; do
            case "$p" in /api/plugins/*) p="$p/logs?limit=40" ;; esac
            echo "---- GET $p ----" >&2
            curl -s --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$port$p" >&2 || true
            echo >&2
        done
    fi
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s; }
# wait_for <seconds> <what> <command...>: poll the command once a second until it succeeds.
wait_for() {
    local limit=$1 what=$2 end=$(( $(now) + $1 ))
    shift 2
    until "$@"; do
        kill -0 "$qpid" 2>/dev/null || fail "QEMU exited while waiting for $what"
        [ "$(now)" -lt "$end" ] || fail "no $what within $limit s"
        sleep 1
    done
}
http_ok() { curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$port$1"; }
console_value() { tr -d '\r' < "$console" | sed -n "s/.*$1=\([^[:space:]]*\).*/\1/p" | tail -n1; }
console_has() { [ -n "$(console_value "$1")" ]; }
api_pid() { curl -fs --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }

# Plugins the image must show as ready: what build-image.sh installed.
expected=(hello-rust)
[ -f "$REPO_DIR/plugins/hello-python/hello-python.binary" ] && expected+=(hello-python)

copy="$run/disk.img"
cp --sparse=always "$img" "$copy"
root_part_bytes=$(( $(partx -g -o SECTORS -n 2 "$copy" | tr -d ' ') * 512 ))
port=$(free_port)
common=(-m 1024 -no-reboot -display none -monitor none -serial "file:$console"
        -kernel "$base.vmlinuz" -initrd "$base.initrd")
cmdline="root=LABEL=RASPIROOT rw console=ttyAMA0 net.ifnames=0 panic=-1 toru.testtoken"
case "$machine" in
    virt)
        truncate -s +2G "$copy"
        ctl=$(free_port)
        qemu-system-aarch64 -M virt -cpu cortex-a53 -smp 2 "${common[@]}" -append "$cmdline" \
            -drive "file=$copy,if=none,format=raw,id=hd" -device virtio-blk-device,drive=hd \
            -netdev "user,id=n,hostfwd=tcp:127.0.0.1:$port-:8080" -device virtio-net-device,netdev=n \
            -device virtio-serial-device \
            -chardev "socket,id=ctl,host=127.0.0.1,port=$ctl,server=on,wait=off" \
            -device virtserialport,chardev=ctl,name=toru.test &
        ;;
    raspi3b)
        # The SD card model wants a power-of-two size.
        truncate -s 4G "$copy"
        # QEMU's bcm2835 power manager resets the machine as soon as the watchdog is armed (that is
        # how Linux reboots a Pi), so systemd's RuntimeWatchdogSec would end the run: no driver.
        qemu-system-aarch64 -M raspi3b "${common[@]}" -dtb "$base.rpi3b.dtb" \
            -append "$cmdline modprobe.blacklist=bcm2835_wdt" \
            -drive "file=$copy,if=sd,format=raw" \
            -netdev "user,id=n,hostfwd=tcp:127.0.0.1:$port-:8080" -device usb-net,netdev=n &
        ;;
    *) fail "unknown machine $machine" ;;
esac
qpid=$!
t0=$(now)

wait_for 420 "answer from GET /api/health" http_ok /api/health
t_http=$(now)
say "$machine: /api/health answered $((t_http - t0)) s after QEMU started"
http_ok / || fail "GET / (the UI) did not answer 200"

# First-boot setup as a person does it: read the code on the console (toru-setup-code.service put it
# there and on the boot partition), enter it with a new admin password in the web UI. Then the host
# removes the code and the service the copy; the hook reports both, then creates an API token.
wait_for 120 "the setup code on the console" grep -aq "Toru setup code: " "$console"
code=$(tr -d '\r' < "$console" | sed -n 's/.*Toru setup code: \([^[:space:]]*\).*/\1/p' | tail -n1)
wait_for 120 "TORU-TEST-SETUP-CODE-FAT on the console" grep -aq "TORU-TEST-SETUP-CODE-FAT=" "$console"
[ "$(console_value TORU-TEST-SETUP-CODE-FAT)" = present ] ||
    fail "no toru-setup-code.txt on the boot partition while the setup code existed"
setup_body=$(python3 -c 'import json, secrets, sys; print(json.dumps({"code": sys.argv[1], "password": secrets.token_urlsafe(18)}))' "$code")
# What a browser sends: same-origin Origin and a JSON body (the host's CSRF check wants both).
status=$(curl -s -o "$run/setup.json" -w '%{http_code}' --max-time 60 -X POST \
    -H "Origin: http://127.0.0.1:$port" -H "Content-Type: application/json" \
    --data "$setup_body" "http://127.0.0.1:$port/api/auth/setup")
[ "$status" = 200 ] || fail "POST /api/auth/setup with the console's code answered $status: $(cat "$run/setup.json")"
wait_for 120 "TORU-TEST-SETUP-DONE on the console" grep -aq "TORU-TEST-SETUP-DONE=" "$console"
[ "$(console_value TORU-TEST-SETUP-DONE)" = removed ] ||
    fail "toru-setup-code.txt stayed on the boot partition after setup was completed"
wait_for 120 "TORU-TEST-TOKEN on the console" grep -aq "TORU-TEST-TOKEN=" "$console"
token=$(console_value TORU-TEST-TOKEN)
[ -n "$token" ] || fail "the test hook printed an empty token: \`toru token create\` failed (its error is on the console)"

plugins_ready() {
    curl -fs --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/plugins" \
        > "$run/plugins.json" || return 1
    python3 - "$run/plugins.json" "${expected[@]}" <<'PY'
import json, sys
plugins = json.load(open(sys.argv[1]))
assert isinstance(plugins, list), "GET /api/plugins is not a JSON array"
# A plugin is known by its id (the file name without .binary); "name" is for people.
state = {p.get("id", p.get("name")): p.get("state") for p in plugins}
sys.exit(0 if all(state.get(n) == "ready" for n in sys.argv[2:]) else 1)
PY
}
wait_for 120 "plugins ${expected[*]} in state ready (GET /api/plugins)" plugins_ready
states=$(python3 -c 'import json, sys; print(" ".join("%s=%s" % (p.get("id"), p.get("state")) for p in json.load(open(sys.argv[1]))))' "$run/plugins.json")
say "$machine: plugins ready $(( $(now) - t0 )) s after start: $states"

# The hook prints its report lines in order; the failed-units line comes last.
wait_for 180 "the test hook's report on the console" console_has TORU-TEST-FAILED-UNITS
failed=$(console_value TORU-TEST-FAILED-UNITS)
[ "$failed" = none ] || fail "failed units in the guest: $failed"
root_bytes=$(console_value TORU-TEST-ROOT-BYTES)
[ "$root_bytes" -gt $((root_part_bytes + 1024 * 1024 * 1024)) ] ||
    fail "root filesystem did not grow: $root_bytes bytes, partition was $root_part_bytes"
say "$machine: root filesystem grew from $root_part_bytes to $root_bytes bytes"

if [ "$machine" != virt ]; then
    say "$machine: boot test passed in $(( $(now) - t0 )) s (soak and restart run on virt only)"
    exit 0
fi

# Soak for more than two watchdog periods (WatchdogSec=30s): the host must keep its PID.
pid=$(api_pid) || fail "GET /api/system gave no pid"
soak_end=$(( $(now) + 75 ))
while [ "$(now)" -lt "$soak_end" ]; do
    kill -0 "$qpid" 2>/dev/null || fail "QEMU exited during the soak"
    current=$(api_pid) || fail "GET /api/system failed during the soak"
    [ "$current" = "$pid" ] || fail "host restarted during the soak (pid $pid -> $current)"
    sleep 5
done
say "$machine: host pid $pid unchanged after a 75 s soak"

# A signed package installed over HTTP as the UI does it: trust a throwaway publisher key, upload
# (streamed, signature in X-Toru-Signature), confirm; it must pass its probation and run from the
# data partition (the plugins dir is read-only under ProtectSystem=strict). The package is the
# Python example under another id (the image runs the example itself as an unpackaged plugin).
pkg="$run/pkg"
mkdir -p "$pkg"
cp "$REPO_DIR/plugins/hello-python/toru_plugin.py" "$REPO_DIR/plugins/hello-python/bundle.js" "$pkg/"
sed 's/hello-python/hello-pkg/g' "$REPO_DIR/plugins/hello-python/hello-python.binary" > "$pkg/hello-pkg.binary"
chmod 755 "$pkg/hello-pkg.binary"
sed 's/hello-python/hello-pkg/g; s/"hello-pkg.binary"/"hello-pkg.binary"/' \
    "$REPO_DIR/plugins/hello-python/manifest.toml" > "$pkg/manifest.toml"
(cd "$REPO_DIR" && cargo build -q -p toru)
host_toru="$REPO_DIR/target/debug/toru"
(cd "$run" && "$host_toru" key generate boot >/dev/null && "$host_toru" plugin pack "$pkg" --key boot.key -o hello-pkg.toru >/dev/null) ||
    fail "toru plugin pack of the test package failed"
api() { curl -s --max-time "${2:-30}" -H "Authorization: Bearer $token" "${@:3}" "http://127.0.0.1:$port$1"; }
pub=$(python3 -c 'import json,sys; print(json.dumps({"public_key": open(sys.argv[1]).read()}))' "$run/boot.pub")
api /api/trust 30 -X POST -H "Content-Type: application/json" --data "$pub" > "$run/trust.json"
grep -q key_id "$run/trust.json" || fail "POST /api/trust: $(cat "$run/trust.json")"
t_pkg=$(now)
api /api/packages/upload 300 -X POST -H "Content-Type: application/octet-stream" \
    -H "X-Toru-Signature: $(base64 -w0 "$run/hello-pkg.toru.minisig")" \
    --data-binary "@$run/hello-pkg.toru" > "$run/upload.json"
upload=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["upload"])' "$run/upload.json") ||
    fail "package upload refused: $(cat "$run/upload.json")"
api "/api/packages/upload/$upload/confirm" 600 -X POST -H "Content-Type: application/json" --data '{}' > "$run/confirm.json"
grep -q '"installed"' "$run/confirm.json" || fail "package install: $(cat "$run/confirm.json")"
api /api/plugins/hello-pkg 30 > "$run/pkg-plugin.json"
python3 - "$run/pkg-plugin.json" <<'PY' || fail "the installed package: $(cat "$run/pkg-plugin.json")"
import json, sys
p = json.load(open(sys.argv[1]))
assert p["state"] == "ready" and p["package"]["version"] == "0.1.0", p
assert p["binary"].startswith("/var/lib/toru/packages/hello-pkg/0.1.0/"), p["binary"]
PY
say "$machine: signed package installed over HTTP and through its probation in $(( $(now) - t_pkg )) s"

# Kill the host inside the guest; systemd must restart it. The connection stays open until the
# hook reports, so QEMU delivers the command whenever the guest reads the port.
exec 3<>"/dev/tcp/127.0.0.1/$ctl"
printf 'kill\n' >&3
wait_for 60 "TORU-TEST-KILLED on the console" console_has TORU-TEST-KILLED
exec 3>&-
[ "$(console_value TORU-TEST-KILLED)" = "$pid" ] || fail "the hook killed pid $(console_value TORU-TEST-KILLED), not $pid"
t_kill=$(now)
restarted() { local p; p=$(api_pid 2>/dev/null) && [ "$p" != "$pid" ] && http_ok /api/health; }
wait_for 120 "a restarted host (new pid, /api/health 200)" restarted
say "$machine: host restarted by systemd $(( $(now) - t_kill )) s after SIGKILL (pid $pid -> $(api_pid))"
say "$machine: boot test passed in $(( $(now) - t0 )) s"
