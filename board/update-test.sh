#!/usr/bin/env bash
# Whole-device updates under QEMU (virt, UEFI firmware + GRUB, the image's real boot path), end to end
# through the host's API as a device owner's browser would use it (board/README.md, "Updates"):
#
#   board/update-test.sh            # builds its own image and bundles (throwaway CAs), 35-55 min
#
# 1. refusals: a bundle signed by another CA, an unsigned one and one for another compatible string
#    are refused at upload (422, the reason named), nothing is written to slot B;
# 2. power cut: QEMU is killed while RAUC writes slot B; the device boots slot A again;
# 3. update A -> B: install, reboot; GRUB boots B, Toru marks it good once its plugins are ready
#    again, the last result is "ok", a KV value written before the update is read back;
# 4. a bundle whose `toru` cannot start, installed from B into A: A is tried 3 times (GRUB's
#    counter; each time toru.service fails and toru-slot-guard reboots), then B boots again and
#    reports the failed update with its reason.
# Each step's time is printed (and recorded in board/README.md by hand). Needs root, ~6 GB of disk.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/assemble.sh"
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root" >&2; exit 1; }
need_apt qemu-system-arm qemu-efi-aarch64 curl python3 util-linux mtools rauc squashfs-tools openssl e2fsprogs

run=$(mktemp -d "${TMPDIR:-/tmp}/toru-update.XXXXXX")
console="$run/console.log"
qpid=""
stop_vm() {
    if [ -n "$qpid" ]; then kill -9 "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; qpid=""; fi
}
cleanup() {
    stop_vm
    mkdir -p "$BOARD_OUT" && cp "$console" "$BOARD_OUT/update-test.console.log" 2>/dev/null || true
    rm -rf --one-file-system "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
now() { date +%s; }
T0=$(now)
step_t=$T0
step() { local t; t=$(now); say "[$((t - T0)) s, previous step $((t - step_t)) s] $*"; step_t=$t; }
fail() {
    echo "update test FAILED: $*" >&2
    echo "---- last lines of the serial console ----" >&2
    tail -n 60 "$console" 2>/dev/null | tr -d '\r' >&2 || true
    if [ -n "${token:-}" ]; then
        echo "---- GET /api/system/update ----" >&2
        curl -s --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/system/update" >&2 || true
        echo >&2
    fi
    exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {
    local limit=$1 what=$2 end=$(( $(now) + $1 ))
    shift 2
    until "$@"; do
        [ -n "$qpid" ] && { kill -0 "$qpid" 2>/dev/null || fail "QEMU exited while waiting for $what"; }
        [ "$(now)" -lt "$end" ] || fail "no $what within $limit s"
        sleep 2
    done
}
console_value() { tr -d '\r' < "$console" | sed -n "s/.*$1=\([^[:space:]]*\).*/\1/p" | tail -n1; }
http_ok() { curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$port$1"; }
api() { curl -s --max-time "${API_TIMEOUT:-30}" -H "Authorization: Bearer $token" "$@"; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# The GRUB line on the console tells which slot each boot took (lines so far: boot count).
boots() { tr -d '\r' < "$console" | grep -c "Toru: booting slot" || true; }
last_boot_slot() { tr -d '\r' < "$console" | sed -n 's/.*Toru: booting slot \([AB]\).*/\1/p' | tail -n1; }

port=$(free_port)
disk="$run/disk.img"
# start_vm: boots the disk; reboots stay inside the same QEMU (GRUB's counter runs as on a board).
start_vm() {
    qemu-system-aarch64 -M virt -cpu cortex-a53 -smp 2 -m 1024 -display none -monitor none \
        -serial "file:$console.$1" -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd \
        -drive "file=$disk,if=none,format=raw,id=hd" -device virtio-blk-device,drive=hd \
        -netdev "user,id=n,hostfwd=tcp:127.0.0.1:$port-:8080" -device virtio-net-device,netdev=n &
    qpid=$!
    ln -sf "$console.$1" "$console"
}

# --- keys, image and bundles -------------------------------------------------------------------
step "throwaway CAs: the one the test image trusts, and another"
board_make_ca "$run/ca" "Toru update test CA"
board_make_signer "$run/ca" "$run/signer" "Toru update test signer"
board_make_ca "$run/other-ca" "Someone else's CA"
board_make_signer "$run/other-ca" "$run/other-signer" "Someone else's signer"
export TORU_BUNDLE_CA="$run/ca.cert.pem" TORU_BUNDLE_CERT="$run/signer.cert.pem" TORU_BUNDLE_KEY="$run/signer.key.pem"
out="$run/out"
step "image trusting the test CA (board/build-image.sh --no-xz)"
TORU_BOARD_OUT="$out" "$BOARD_DIR/build-image.sh" --no-xz
img=$(ls "$out"/*.img)
version=$(board_version)
step "bundle $version-update (board/build-bundle.sh)"
good="$run/good.raucb"
TORU_BOARD_OUT="$out" TORU_BUNDLE_VERSION="$version-update" "$BOARD_DIR/build-bundle.sh" "$good"

# Variants from the good bundle's content (its squashfs, unpacked without mounting).
content="$run/content"
unsquashfs -q -n -d "$content" "$good" >/dev/null
rebundle() { # <manifest sed> <cert> <key> <out>
    local c="$run/c.$$"
    rm -rf "$c"; cp -a "$content" "$c"
    sed -i "$1" "$c/manifest.raucm"
    rauc bundle --cert="$2" --key="$3" "$c" "$4" >/dev/null 2>&1 || fail "rauc bundle $4"
    rm -rf "$c"
}
step "bundle variants: another CA, another compatible, unsigned, a toru that cannot start"
rebundle 's/^version=.*/version=other-ca/' "$run/other-signer.cert.pem" "$run/other-signer.key.pem" "$run/other-ca.raucb"
rebundle 's/^compatible=.*/compatible=some-other-device/' "$TORU_BUNDLE_CERT" "$TORU_BUNDLE_KEY" "$run/other-compatible.raucb"
# Unsigned: the bundle without its CMS signature (layout: image | signature | 8-byte size).
python3 - "$good" "$run/unsigned.raucb" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
size = struct.unpack(">Q", data[-8:])[0]
open(sys.argv[2], "wb").write(data[: len(data) - 8 - size])
PY
printf '#!/bin/sh\necho "this toru cannot start (update test)" >&2\nexit 1\n' > "$run/broken-toru"
debugfs -w -R "rm /usr/bin/toru" "$content/rootfs.ext4" >/dev/null 2>&1
debugfs -w -R "write $run/broken-toru /usr/bin/toru" "$content/rootfs.ext4" >/dev/null 2>&1
debugfs -w -R "sif /usr/bin/toru mode 0100755" "$content/rootfs.ext4" >/dev/null 2>&1
rebundle 's/^version=.*/version=broken/' "$TORU_BUNDLE_CERT" "$TORU_BUNDLE_KEY" "$run/broken.raucb"

# --- first boot ----------------------------------------------------------------------------
cp --sparse=always "$img" "$disk"
board_boot_env "$disk" TORU_EXTRA=toru.testtoken
truncate -s +1G "$disk"
step "first boot (slot A)"
start_vm 1
wait_for 600 "answer from GET /api/health" http_ok /api/health
[ "$(last_boot_slot)" = A ] || fail "first boot took slot '$(last_boot_slot)', not A"
wait_for 180 "the setup code on the console" grep -aq "Toru setup code: " "$console"
code=$(tr -d '\r' < "$console" | sed -n 's/.*Toru setup code: \([^[:space:]]*\).*/\1/p' | tail -n1)
body=$(python3 -c 'import json, secrets, sys; print(json.dumps({"code": sys.argv[1], "password": secrets.token_urlsafe(18)}))' "$code")
status=$(curl -s -o "$run/setup.json" -w '%{http_code}' --max-time 60 -X POST \
    -H "Origin: http://127.0.0.1:$port" -H "Content-Type: application/json" --data "$body" \
    "http://127.0.0.1:$port/api/auth/setup")
[ "$status" = 200 ] || fail "setup answered $status"
wait_for 300 "TORU-TEST-TOKEN on the console" grep -aq "TORU-TEST-TOKEN=" "$console"
token=$(console_value TORU-TEST-TOKEN)
[ -n "$token" ] || fail "empty token from the hook"
api -X POST -H "Content-Type: application/json" --data '{"action":"set","key":"before-update","value":"kept"}' \
    "http://127.0.0.1:$port/api/plugins/hello-rust/kv" > "$run/kv.json"
grep -q '"ok":true' "$run/kv.json" || fail "KV set: $(cat "$run/kv.json")"
update_state() { api "http://127.0.0.1:$port/api/system/update" > "$run/update.json" && cat "$run/update.json"; }
plugins_ready() {
    api "http://127.0.0.1:$port/api/plugins" > "$run/plugins.json" || return 1
    python3 -c 'import json,sys; ps=json.load(open(sys.argv[1])); sys.exit(0 if ps and all(p["state"]=="ready" for p in ps) else 1)' "$run/plugins.json"
}
wait_for 600 "every plugin ready (factory packages included)" plugins_ready
step "slot A up, plugins ready"

# --- 1. refusals ---------------------------------------------------------------------------
upload() { # <file>: prints the HTTP status; the answer in $run/upload.json
    API_TIMEOUT=900 api -o "$run/upload.json" -w '%{http_code}' -X POST \
        -H "Origin: http://127.0.0.1:$port" -H "Content-Type: application/octet-stream" \
        --data-binary "@$1" "http://127.0.0.1:$port/api/system/update/upload"
}
for bad in other-ca other-compatible unsigned; do
    s=$(upload "$run/$bad.raucb")
    [ "$s" = 422 ] || fail "$bad bundle: upload answered $s, not 422: $(cat "$run/upload.json")"
    say "$bad refused: $(cat "$run/upload.json")"
done
update_state > /dev/null
json "$run/update.json" '[s for s in d["slots"] if s["bootname"] == "B"][0].get("version")' | grep -qx None ||
    fail "slot B has a bundle after refusals: $(cat "$run/update.json")"
step "three bad bundles refused, slot B untouched"

# --- 2. power cut during install -----------------------------------------------------------
s=$(upload "$good")
[ "$s" = 201 ] || [ "$s" = 200 ] || fail "good bundle: upload answered $s: $(cat "$run/upload.json")"
tok=$(json "$run/upload.json" 'd["token"]')
api -X POST -H "Origin: http://127.0.0.1:$port" "http://127.0.0.1:$port/api/system/update/upload/$tok/install" > "$run/install.json"
install_field() { update_state > /dev/null; json "$run/update.json" "(d.get('install') or {}).get('$1')"; }
writing() { install_field message | grep -q "Copying image"; }
wait_for 600 "RAUC copying the image into slot B" writing
stop_vm
step "power cut while slot B was being written"
start_vm 2
wait_for 600 "answer from GET /api/health after the power cut" http_ok /api/health
[ "$(last_boot_slot)" = A ] || fail "after the power cut the device booted '$(last_boot_slot)', not A"
step "booted slot A after the power cut"

# --- 3. update A -> B ----------------------------------------------------------------------
wait_for 600 "plugins ready on A" plugins_ready
s=$(upload "$good")
[ "$s" = 201 ] || [ "$s" = 200 ] || fail "good bundle (again): upload answered $s: $(cat "$run/upload.json")"
tok=$(json "$run/upload.json" 'd["token"]')
api -X POST -H "Origin: http://127.0.0.1:$port" "http://127.0.0.1:$port/api/system/update/upload/$tok/install" > "$run/install.json"
installed() {
    local st
    st=$(install_field state)
    [ "$st" = failed ] && fail "install failed: $(cat "$run/update.json")"
    [ "$st" = done ]
}
wait_for 900 "the install to finish" installed
step "bundle installed into slot B"
n=$(boots)
api -X POST -H "Origin: http://127.0.0.1:$port" "http://127.0.0.1:$port/api/system/reboot" > /dev/null || true
rebooted() { [ "$(boots)" -gt "$n" ]; }
wait_for 300 "the reboot" rebooted
[ "$(last_boot_slot)" = B ] || fail "after the update the device booted '$(last_boot_slot)', not B"
result_is() { update_state > /dev/null; [ "$(json "$run/update.json" '(d.get("last_result") or {}).get("result")')" = "$1" ]; }
wait_for 900 "the update reported ok on B" result_is ok
json "$run/update.json" 'd["booted"]' | grep -qx B || fail "booted slot is not B: $(cat "$run/update.json")"
api -X POST -H "Content-Type: application/json" --data '{"action":"get","key":"before-update"}' \
    "http://127.0.0.1:$port/api/plugins/hello-rust/kv" > "$run/kv.json"
grep -q '"value":"kept"' "$run/kv.json" || fail "KV value lost across the update: $(cat "$run/kv.json")"
step "slot B booted, marked good, data kept"

# --- 4. a broken update falls back ---------------------------------------------------------
s=$(upload "$run/broken.raucb")
[ "$s" = 201 ] || [ "$s" = 200 ] || fail "broken bundle: upload answered $s: $(cat "$run/upload.json")"
tok=$(json "$run/upload.json" 'd["token"]')
api -X POST -H "Origin: http://127.0.0.1:$port" "http://127.0.0.1:$port/api/system/update/upload/$tok/install" > "$run/install.json"
wait_for 900 "the broken bundle's install to finish" installed
n=$(boots)
api -X POST -H "Origin: http://127.0.0.1:$port" "http://127.0.0.1:$port/api/system/reboot" > /dev/null || true
back_on_b() { [ "$(boots)" -ge $((n + 4)) ] && [ "$(last_boot_slot)" = B ] && http_ok /api/health; }
wait_for 2400 "three tries of slot A, then slot B again" back_on_b
tries=$(tr -d '\r' < "$console" | sed -n 's/.*Toru: booting slot \([AB]\).*/\1/p' | tail -n 4 | tr -d '\n')
[ "$tries" = AAAB ] || fail "boot sequence after the broken update: $tries, not AAAB"
wait_for 600 "the failed update reported on B" result_is failed
say "failed update reported: $(json "$run/update.json" 'd["last_result"]')"
step "broken update: A tried 3 times, B again, failure reported"
say "update test passed in $(( $(now) - T0 )) s"
