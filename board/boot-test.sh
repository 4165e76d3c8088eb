#!/usr/bin/env bash
# Boots a copy of a built image under QEMU and checks the appliance end to end:
#
#   board/boot-test.sh board/out/toru-<version>-rpi-arm64.img [virt|raspi3b]
#
# The copy is grown by 2 GiB (first boot must grow the data partition). virt boots through UEFI
# firmware and GRUB, as a UEFI board does (the slot GRUB's environment picks: A). The kernel command
# line carries `toru.testtoken` (virt: through GRUB's environment, TORU_EXTRA), which enables the test-only toru-boot-test.service inside the image; it
# writes TORU-TEST-* lines to the serial console (captured to a file here) and takes commands on a
# virtio serial port (`kill`: SIGKILL the host). The test completes first-boot setup over HTTP with
# the setup code it reads on the console. HTTP goes through a QEMU user-network forward bound
# to 127.0.0.1 only. Every wait polls with a deadline; the only fixed wait is the watchdog soak.
#
# Isolation (docs/ISOLATION.md), where systemd's cgroup delegation is real: the hook reports the
# host's and a plugin's cgroup files and /proc figures on request; the test checks them against
# `GET /api/plugins/{id}/security`, then installs two signed packages of the `hostile` test plugin
# (built here for the image's target, never part of the image) with manifest limits, has them
# attack over HTTP (`on_request`, so they pass their probation first) and checks the refusals, the
# `oom` and `limit` events and that the host and the other plugins carry on untouched.
#
# virt: the full check list. raspi3b: boot, HTTP, setup, token, plugins and data grow only (no
# virtio serial port there, so no kill test), and much slower. Neither runs the Pi's GPU firmware
# (bootcode.bin/start.elf).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/assemble.sh"

img=${1:?usage: $0 <image.img> [virt|raspi3b]}
machine=${2:-virt}
base=${img%.img}
# gcc-aarch64-linux-gnu: ring's C for the aarch64-musl build below (.cargo/config.toml [env]).
need_apt qemu-system-arm qemu-efi-aarch64 curl python3 util-linux mtools gcc-aarch64-linux-gnu

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
        for p in /api/plugins /api/system "${expected[@]/#//api/plugins/}" "${hostile_ids[@]/#//api/plugins/}"; do
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
# The rest of the last line that carries <key>= (values with spaces: file contents, log lines).
console_line() { tr -d '\r' < "$console" | sed -n "s/.*$1=//p" | tail -n1; }
api_pid() { curl -fs --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }

# Plugins the image must show as ready: what build-image.sh installed.
expected=(hello-rust)
[ -f "$REPO_DIR/plugins/hello-python/hello-python.binary" ] && expected+=(hello-python)
# The packages of the hostile test plugin installed on virt (see "Isolation" below).
hostile_ids=()

# Everything the test installs over HTTP is built and signed before QEMU starts (both compete for
# the same cores): the host's `toru` for `plugin pack` and `key generate`; `hostile` for the image's
# target, with build-image.sh's command (so nothing rebuilds) unless TORU_BOARD_BIN_DIR has one.
target=aarch64-unknown-linux-musl
(cd "$REPO_DIR" && cargo build -q -p toru)
host_toru="${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/toru"
if [ -n "${TORU_BOARD_BIN_DIR:-}" ] && [ -x "$TORU_BOARD_BIN_DIR/hostile" ]; then
    hostile_bin=$TORU_BOARD_BIN_DIR/hostile
else
    (cd "$REPO_DIR" && need_rust_target "$target" &&
        cargo build -q --release --locked --target "$target" -p toru -p hello-rust -p sysinfo-plugin -p hostile)
    hostile_bin="${CARGO_TARGET_DIR:-$REPO_DIR/target}/$target/release/hostile"
fi
(cd "$run" && "$host_toru" key generate boot >/dev/null) || { echo "toru key generate failed" >&2; exit 1; }
# hello-pkg: the Python example under another id (the image runs the example itself as an
# unpackaged plugin).
pkg="$run/hello-pkg"
mkdir -p "$pkg"
cp "$REPO_DIR/plugins/hello-python/toru_plugin.py" "$REPO_DIR/plugins/hello-python/bundle.js" "$pkg/"
sed 's/hello-python/hello-pkg/g' "$REPO_DIR/plugins/hello-python/hello-python.binary" > "$pkg/hello-pkg.binary"
chmod 755 "$pkg/hello-pkg.binary"
sed 's/hello-python/hello-pkg/g' "$REPO_DIR/plugins/hello-python/manifest.toml" > "$pkg/manifest.toml"
# hostile-<mode>: the hostile plugin attacking only when asked over HTTP (`on_request`), its mode
# the attack of `GET <route>/`, with the limits its manifest asks for.
hostile_pkg() {
    local mode=$1 limits=$2 dir="$run/hostile-$1"
    mkdir -p "$dir"
    install -m 0755 "$hostile_bin" "$dir/hostile"
    printf '{"id": "hostile-%s", "version": "0.1.0", "mode": "%s", "route": "/hostile-%s", "on_request": true, "other": "hello-rust", "other_install": "/usr/lib/toru/plugins"}\n' \
        "$mode" "$mode" "$mode" > "$dir/hostile.json"
    cat > "$dir/manifest.toml" <<TOML
id = "hostile-$mode"
name = "Hostile ($mode)"
version = "0.1.0"
author = "tests"
icon = "☠"
route = "/hostile-$mode"
protocol = "1.1"
min_host = ">=0.1"
files = ["hostile.json"]

[entry]
$target = "hostile"

[limits]
$limits
TOML
}
hostile_pkg alloc 'memory = "64M"'
hostile_pkg fork 'processes = 32'
for p in hello-pkg hostile-alloc hostile-fork; do
    # (Its note that the package has no entry for this machine, x86_64, is expected.)
    (cd "$run" && "$host_toru" plugin pack "$p" --key boot.key -o "$p.toru" >/dev/null 2>"$p.err") ||
        { echo "toru plugin pack $p failed: $(cat "$run/$p.err")" >&2; exit 1; }
done

copy="$run/disk.img"
cp --sparse=always "$img" "$copy"
data_part_bytes=$(( $(partx -g -o SECTORS -n 4 "$copy" | tr -d ' ') * 512 ))
port=$(free_port)
common=(-m 1024 -no-reboot -display none -monitor none -serial "file:$console")
case "$machine" in
    virt)
        # The real boot path of a UEFI board: firmware, GRUB from the boot partition, the slot its
        # environment picks. toru.testtoken reaches the kernel command line through that
        # environment's TORU_EXTRA, written into the copy's boot partition (FAT at 4 MiB).
        board_boot_env "$copy" TORU_EXTRA=toru.testtoken
        truncate -s +2G "$copy"
        ctl=$(free_port)
        qemu-system-aarch64 -M virt -cpu cortex-a53 -smp 2 "${common[@]}" \
            -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd \
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
        # The Pi's GPU firmware cannot run here: kernel, initrd and device tree are passed directly,
        # with slot A's command line.
        qemu-system-aarch64 -M raspi3b "${common[@]}" -kernel "$base.vmlinuz" -initrd "$base.initrd" \
            -dtb "$base.rpi3b.dtb" \
            -append "root=PARTUUID=$BOARD_DISK_ID-02 rw rauc.slot=A console=ttyAMA0 net.ifnames=0 panic=-1 toru.testtoken modprobe.blacklist=bcm2835_wdt" \
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
data_bytes=$(console_value TORU-TEST-DATA-BYTES)
[ "$data_bytes" -gt $((data_part_bytes + 1024 * 1024 * 1024)) ] ||
    fail "the data partition did not grow: $data_bytes bytes, partition was $data_part_bytes"
say "$machine: data filesystem grew from $data_part_bytes to $data_bytes bytes"
slot=$(console_value TORU-TEST-SLOT)
[ "$slot" = A ] || fail "booted root slot is '$slot', not A"
if [ "$machine" = virt ]; then
    # The update health gate: with no update pending it marks the booted slot good through RAUC
    # (the image's bootloader backend resets GRUB's try count on the boot partition). The gate
    # shows its state before RAUC has done it: wait for the slot's boot status.
    gate_done() {
        curl -fs --max-time 30 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/system/update" > "$run/update.json" || return 1
        python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
a = [s for s in d.get("slots") or [] if s["bootname"] == "A"]
# Done once slot A is marked good, or the gate gave up or reported a problem.
sys.exit(0 if d.get("gate_problem") or d["gate"]["state"] == "error" or (a and a[0]["boot_status"] == "good") else 1)' "$run/update.json"
    }
    wait_for 180 "the update health gate" gate_done
    python3 - "$run/update.json" <<'PY' || fail "update status after boot: $(cat "$run/update.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["enabled"] is True and d["compatible"] == "toru-rpi-arm64", d
assert d["booted"] == "A" and d["gate"]["state"] == "no-update" and not d.get("gate_problem"), d
a = [s for s in d["slots"] if s["bootname"] == "A"][0]
assert a["boot_status"] == "good", a
print("update status:", json.dumps({k: d[k] for k in ("booted", "boot_primary", "gate")}))
PY
    say "$machine: RAUC sees slot A booted and marked good (gate no-update)"
fi

if [ "$machine" != virt ]; then
    say "$machine: boot test passed in $(( $(now) - t0 )) s (soak and restart run on virt only)"
    exit 0
fi

# From here on the host must keep its PID (GET /api/system) for at least 75 s, more than two
# watchdog periods (WatchdogSec=30s): the packages and attacks below run inside that soak, and
# whatever of the 75 s is left is waited out at the end.
pid=$(api_pid) || fail "GET /api/system gave no pid"
soak_end=$(( $(now) + 75 ))
same_host() {
    local current
    current=$(api_pid) || fail "GET /api/system failed (host pid was $pid)"
    [ "$current" = "$pid" ] || fail "host restarted (pid $pid -> $current)"
}
api() { curl -s --max-time "${2:-30}" -H "Authorization: Bearer $token" "${@:3}" "http://127.0.0.1:$port$1"; }
# The control port (virtio serial): commands to the hook, answered on the console. The connection
# stays open to the end; QEMU delivers each line whenever the guest reads the port.
exec 3<>"/dev/tcp/127.0.0.1/$ctl"
hook() { printf '%s\n' "$*" >&3; }
# Field checks in Python: `check <what> <args>` (exit 1 with the reason on stderr when it fails).
cat > "$run/check.py" <<'PY'
import json, sys

def load(path):
    with open(path) as f:
        return json.load(f)

def security(path, uid_min, uid_max):
    """A plugin's security answer: isolation on, its uid in range, the protections in force.
    Prints "<uid> <landlock state>"."""
    s = load(path)
    assert s.get("isolation") == "on", f"isolation is {s.get('isolation')!r}: {s.get('reason')}"
    uid = s["user"]["uid"]
    assert uid_min <= uid <= uid_max, f"uid {uid} not in {uid_min}..{uid_max}"
    state = {p["name"]: p for p in s["protections"]}
    for name in ("user", "seccomp", "cgroup", "landlock"):
        assert name in state, f"no protection {name!r} listed"
        ok = ("enforced", "degraded") if name == "landlock" else ("enforced",)
        assert state[name]["state"] in ok, f"{name} is {state[name]['state']}: {state[name].get('detail')}"
    print(uid, state["landlock"]["state"], state["landlock"].get("detail", ""))

def limit(path, key):
    """The value of limits.<key> in a security answer ("null" for unlimited)."""
    print(json.dumps(load(path)["limits"][key]["value"]))

def attack(path, mode, *errnos):
    """The hostile plugin's answer to GET <route>/<mode>: refused with one of `errnos`."""
    r = load(path)
    o = r.get("outcome") or {}
    assert r.get("mode") == mode, f"answered mode {r.get('mode')!r}"
    assert o.get("refused") is True, f"not refused: {json.dumps(o)}"
    err = o.get("error") or ""
    if mode in ("write-other", "ptrace"):
        # Both targets/calls must have been refused, each for one of the reasons.
        parts = ("data", "install") if mode == "write-other" else ("attach", "traceme")
        for part in parts:
            e = o["detail"][part]["error"] if mode == "write-other" else o["detail"][part]
            assert e and e.split()[0] in errnos, f"{part}: {e!r} not one of {errnos}: {json.dumps(o)}"
    assert err.split()[0] in errnos, f"error {err!r} not one of {errnos}: {json.dumps(o)}"
    print(err)

def event(path, kind):
    """The newest event of `kind` in GET /api/plugins/{id}/events (exit 1 when there is none)."""
    evs = [e for e in load(path) if e.get("kind") == kind]
    if not evs:
        sys.exit(1)
    evs.sort(key=lambda e: e.get("seq", 0))
    print(json.dumps(evs[-1]))

def plugin(path, pid_before=None):
    """GET /api/plugins/{id}: exit 1 unless ready (and, given pid_before, with another pid).
    Prints its pid."""
    p = load(path)
    if p.get("state") != "ready" or (pid_before is not None and str(p.get("pid")) == pid_before):
        sys.exit(1)
    print(p["pid"])

def factory(path, pid):
    """GET /api/plugins/{id} of a package the image ships: ready, installed from the image's
    packages (in the data partition), signed. Prints "<version> <key id>"."""
    p = load(path)
    if p.get("state") != "ready" or not p.get("package"):
        sys.exit(1)
    assert p["binary"].startswith(f"/var/lib/toru/packages/{pid}/"), p["binary"]
    print(p["package"]["version"], p["package"].get("key_id"))

def sysinfo(path):
    """GET /api/plugins/route/sysinfo/: the device's own figures."""
    s = load(path)
    assert len(s["cpu"]["cores"]) >= 1, s["cpu"]
    assert s["memory"]["total_bytes"] > 0, s["memory"]
    assert any(d["mount"] == "/" for d in s["disks"]), s["disks"]
    assert any(n["name"] == "lo" for n in s["network"]), s["network"]
    print(f'{len(s["cpu"]["cores"])} cores, {s["memory"]["total_bytes"] // 2**20} MiB, '
          f'{len(s["disks"])} disks, pi {"available" if s["pi"]["available"] else "not available"}')

def note(path, title):
    """GET /api/plugins/route/notes/notes: the note titled `title` is listed."""
    notes = load(path)["notes"]
    assert any(n.get("title") == title for n in notes), notes

def pids(path, *ids):
    """GET /api/plugins: "id=pid/state" for each id."""
    by_id = {p.get("id"): p for p in load(path)}
    print(" ".join(f"{i}={by_id.get(i, {}).get('pid')}/{by_id.get(i, {}).get('state')}" for i in ids))

what, args = sys.argv[1], sys.argv[2:]
try:
    if what == "security":
        security(args[0], int(args[1]), int(args[2]))
    else:
        globals()[what](*args)
except (AssertionError, KeyError, TypeError, ValueError) as e:
    print(f"{what}: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
PY
check() { python3 "$run/check.py" "$@"; }
# has_words "<text>" word...: every word is one of the text's words.
has_words() {
    local text=" $1 " w
    shift
    for w in "$@"; do case "$text" in *" $w "*) ;; *) return 1 ;; esac; done
}

# Isolation 1: the host's cgroup (C = /sys/fs/cgroup/system.slice/toru.service). The host moved
# itself into the leaf C/host and enabled the memory, pids and cpu controllers for the plugins'
# cgroups in C and in its instance cgroup C/toru-<instance>.
hook cgroup
wait_for 60 "the hook's cgroup report (TORU-TEST-CG-END)" console_has TORU-TEST-CG-END
[ "$(console_value TORU-TEST-CG-END)" = "$pid" ] ||
    fail "the hook read the cgroup of pid $(console_value TORU-TEST-CG-END), the API says the host is $pid"
cg_host=$(console_line TORU-TEST-CG-HOST)
cg_subtree=$(console_line TORU-TEST-CG-SUBTREE)
cg_instance=$(console_line TORU-TEST-CG-INSTANCE)
cg_instance_subtree=$(console_line TORU-TEST-CG-INSTANCE-SUBTREE)
cg_log=$(console_line TORU-TEST-CG-LOG)
say "$machine: /proc/$pid/cgroup: $cg_host"
say "$machine: toru.service/cgroup.subtree_control: $cg_subtree"
say "$machine: ${cg_instance#/sys/fs/cgroup/system.slice/toru.service/}/cgroup.subtree_control: $cg_instance_subtree"
say "$machine: host log: $cg_log"
say "$machine: kernel LSMs: $(console_line TORU-TEST-CG-LSM)"
[ "$cg_host" = "0::/system.slice/toru.service/host" ] ||
    fail "the host is not in the leaf cgroup toru.service/host: /proc/$pid/cgroup says $cg_host"
has_words "$cg_subtree" cpu memory pids ||
    fail "toru.service/cgroup.subtree_control lacks cpu memory pids: $cg_subtree"
case "$cg_instance" in
    /sys/fs/cgroup/system.slice/toru.service/toru-*) ;;
    *) fail "the host's instance cgroup (/run/toru/cgroup) is not under toru.service: $cg_instance" ;;
esac
has_words "$cg_instance_subtree" cpu memory pids ||
    fail "$cg_instance/cgroup.subtree_control lacks cpu memory pids: $cg_instance_subtree"
case "$cg_log" in
    *"plugin descendants: a cgroup each under $cg_instance (limits: memory, pids, cpu)"*) ;;
    *) fail "the host's log line about plugin descendants is not the cgroup one with memory, pids and cpu limits: ${cg_log:-none}" ;;
esac

# Isolation 2: what GET /api/plugins/hello-rust/security says, checked against the kernel's view
# of its process: its own uid (70001..79999), Landlock, seccomp and the cgroup in force, and the
# limits in its cgroup's files.
api /api/plugins/hello-rust/security > "$run/sec.json"
say "$machine: GET /api/plugins/hello-rust/security: $(cat "$run/sec.json")"
read -r sec_uid landlock_state landlock_detail < <(check security "$run/sec.json" 70001 79999) ||
    fail "hello-rust's security answer (above)"
if [ "$landlock_state" != enforced ]; then
    say "$machine: WARNING: Landlock is $landlock_state for hello-rust: $landlock_detail"
fi
api /api/plugins/hello-rust > "$run/hello-rust.json"
hr_pid=$(check plugin "$run/hello-rust.json") || fail "hello-rust is not ready: $(cat "$run/hello-rust.json")"
# plugin_report <id> <pid>: the hook's view of one plugin process (values in plugin_<key>).
plugin_report() {
    local id=$1 p=$2
    hook plugin "$id" "$p"
    plugin_end() { [ "$(console_value "TORU-TEST-PLUGIN-$id-END")" = "$p" ]; }
    wait_for 60 "the hook's report on $id (pid $p)" plugin_end
    plugin_cgroup=$(console_line "TORU-TEST-PLUGIN-$id-CGROUP")
    plugin_uid=$(console_line "TORU-TEST-PLUGIN-$id-UID")
    plugin_memory_max=$(console_line "TORU-TEST-PLUGIN-$id-MEMORY-MAX")
    plugin_swap_max=$(console_line "TORU-TEST-PLUGIN-$id-SWAP-MAX")
    plugin_oom_group=$(console_line "TORU-TEST-PLUGIN-$id-OOM-GROUP")
    plugin_pids_max=$(console_line "TORU-TEST-PLUGIN-$id-PIDS-MAX")
    say "$machine: $id pid $p: cgroup $plugin_cgroup, Uid $plugin_uid, memory.max $plugin_memory_max, memory.swap.max $plugin_swap_max, memory.oom.group $plugin_oom_group, pids.max $plugin_pids_max"
    [ "$plugin_cgroup" = "${cg_instance#/sys/fs/cgroup}/$id" ] ||
        fail "$id (pid $p) is in cgroup $plugin_cgroup, not ${cg_instance#/sys/fs/cgroup}/$id"
    [ "$plugin_oom_group" = 1 ] || fail "$id: memory.oom.group is $plugin_oom_group, not 1"
    case "$plugin_swap_max" in 0|unreadable) ;; *) fail "$id: memory.swap.max is $plugin_swap_max, not 0" ;; esac
}
plugin_report hello-rust "$hr_pid"
[ "$plugin_uid" = "$sec_uid $sec_uid $sec_uid $sec_uid" ] ||
    fail "hello-rust (pid $hr_pid) runs with Uid $plugin_uid, its security answer says $sec_uid"
[ "$plugin_pids_max" = 256 ] || fail "hello-rust: pids.max is $plugin_pids_max, not 256 (the default processes)"
# memory.max is the default "50%" of the guest's memory, as the kernel keeps it: whole pages.
sec_memory=$(check limit "$run/sec.json" memory) || fail "no limits.memory in hello-rust's security answer"
[ "$sec_memory" != null ] && [ "$plugin_memory_max" = $(( sec_memory / 4096 * 4096 )) ] ||
    fail "hello-rust: memory.max is $plugin_memory_max, its security answer says $sec_memory"

# The packages the image ships (sysinfo, notes): installed at the first boot by
# toru-factory-packages.service through the host (trusting the image key), each through its
# probation, then used as an owner would: sysinfo's figures, a note written and listed.
t=$(now)
for id in sysinfo notes; do
    wait_for 600 "the image's package $id installed and ready" \
        sh -c "curl -fs --max-time 5 -H 'Authorization: Bearer $token' http://127.0.0.1:$port/api/plugins/$id > '$run/$id.factory.json' && python3 '$run/check.py' factory '$run/$id.factory.json' $id > '$run/$id.factory.txt'"
    say "$machine: $id $(cat "$run/$id.factory.txt"): installed from the image"
done
say "$machine: the image's packages were ready $(( $(now) - t )) s after the checks began"
api /api/plugins/route/sysinfo/ 30 > "$run/sysinfo.json"
figures=$(check sysinfo "$run/sysinfo.json") || fail "sysinfo's figures: $(cat "$run/sysinfo.json")"
say "$machine: sysinfo: $figures"
api /api/plugins/route/notes/notes 30 -X POST -H "Content-Type: application/json" \
    --data '{"kind": "note", "title": "from the boot test", "body": "written over HTTP"}' > "$run/note.json"
api /api/plugins/route/notes/notes 30 > "$run/notes.json"
check note "$run/notes.json" "from the boot test" || fail "notes: the note written is not listed: $(cat "$run/note.json") $(cat "$run/notes.json")"
say "$machine: notes: a note written and listed"
same_host

# Isolation 3 needs packages: a signed package installed over HTTP as the UI does it — trust a
# throwaway publisher key, upload (streamed, signature in X-Toru-Signature), confirm; it must pass
# its probation and run from the data partition (the plugins dir is read-only under
# ProtectSystem=strict).
pub=$(python3 -c 'import json,sys; print(json.dumps({"public_key": open(sys.argv[1]).read()}))' "$run/boot.pub")
api /api/trust 30 -X POST -H "Content-Type: application/json" --data "$pub" > "$run/trust.json"
grep -q key_id "$run/trust.json" || fail "POST /api/trust: $(cat "$run/trust.json")"
install_package() {
    local id=$1 t upload
    t=$(now)
    api /api/packages/upload 300 -X POST -H "Content-Type: application/octet-stream" \
        -H "X-Toru-Signature: $(base64 -w0 "$run/$id.toru.minisig")" \
        --data-binary "@$run/$id.toru" > "$run/upload.json"
    upload=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["upload"])' "$run/upload.json") ||
        fail "package $id: upload refused: $(cat "$run/upload.json")"
    api "/api/packages/upload/$upload/confirm" 600 -X POST -H "Content-Type: application/json" --data '{}' > "$run/confirm.json"
    grep -q '"installed"' "$run/confirm.json" || fail "package $id: install: $(cat "$run/confirm.json")"
    api "/api/plugins/$id" 30 > "$run/$id.plugin.json"
    python3 - "$run/$id.plugin.json" "$id" <<'PY' || fail "the installed package $id: $(cat "$run/$id.plugin.json")"
import json, sys
p, pid = json.load(open(sys.argv[1])), sys.argv[2]
assert p["state"] == "ready" and p["package"]["version"] == "0.1.0", p
assert p["binary"].startswith(f"/var/lib/toru/packages/{pid}/0.1.0/"), p["binary"]
PY
    say "$machine: signed package $id installed over HTTP and through its probation in $(( $(now) - t )) s"
}
api /api/plugins > "$run/plugins.json"
others_before=$(check pids "$run/plugins.json" "${expected[@]}")
install_package hello-pkg
hostile_ids=(hostile-alloc hostile-fork)
install_package hostile-alloc
install_package hostile-fork
same_host

# Isolation 3: the hostile plugin for real. First what only confinement refuses (the plugin stays
# ready): the store file, /etc/shadow, another plugin's folders, ptrace, mount, a user namespace.
attack_ok() {
    local mode=$1 err
    shift
    api "/api/plugins/route/hostile-fork/$mode" 60 > "$run/attack-$mode.json"
    err=$(check attack "$run/attack-$mode.json" "$mode" "$@") ||
        fail "hostile attack $mode was not refused with $*: $(cat "$run/attack-$mode.json")"
    say "$machine: hostile $mode: refused ($err)"
}
attack_ok read-store EACCES
attack_ok read-shadow EACCES
attack_ok write-other EACCES EROFS
attack_ok ptrace EPERM
attack_ok mount EPERM
attack_ok unshare EPERM
api /api/plugins/hostile-fork > "$run/hostile-fork.json"
check plugin "$run/hostile-fork.json" > /dev/null || fail "hostile-fork is not ready after the refused attacks: $(cat "$run/hostile-fork.json")"

# Then the limits its manifest asked for, as the kernel holds them: 64 MiB of memory
# (memory.max, the OOM killer takes the plugin: an `oom` event), 32 processes (pids.max: a
# `limit` event, the host stops it). Both count as a crash: the plugin is restarted.
# limit_attack <id> <mode> <event kind>: the event's JSON in $run/<id>.event.json.
limit_attack() {
    local id=$1 mode=$2 kind=$3 before t
    api "/api/plugins/$id" > "$run/$id.json"
    before=$(check plugin "$run/$id.json") || fail "$id is not ready: $(cat "$run/$id.json")"
    plugin_report "$id" "$before"
    t=$(now)
    # The plugin dies answering (or just after): whatever the host answers is not the point.
    api "/api/plugins/route/$id/$mode" 120 > "$run/attack-$mode.json" || true
    has_event() { api "/api/plugins/$id/events?limit=50" > "$run/$id.events.json" &&
        check event "$run/$id.events.json" "$kind" > "$run/$id.event.json"; }
    wait_for 60 "a $kind event for $id" has_event
    http_ok /api/health || fail "/api/health did not answer after $id's $kind"
    say "$machine: $id: $kind event $(( $(now) - t )) s after the attack: $(cat "$run/$id.event.json")"
    restarted_plugin() { api "/api/plugins/$id" > "$run/$id.json" && check plugin "$run/$id.json" "$before" > /dev/null; }
    wait_for 60 "$id restarted and ready (pid other than $before)" restarted_plugin
    say "$machine: $id restarted: pid $before -> $(check plugin "$run/$id.json")"
}
limit_attack hostile-alloc alloc oom
[ "$plugin_memory_max" = 67108864 ] || fail "hostile-alloc: memory.max was $plugin_memory_max, its manifest asks 64M"
python3 - "$run/hostile-alloc.event.json" <<'PY' || fail "the oom event: $(cat "$run/hostile-alloc.event.json")"
import json, sys
e = json.load(open(sys.argv[1]))
assert e["details"]["limit_bytes"] == 64 << 20, e
assert e["message"].startswith("out of memory: killed at its 64.0 MiB limit"), e
PY
limit_attack hostile-fork fork limit
[ "$plugin_pids_max" = 32 ] || fail "hostile-fork: pids.max was $plugin_pids_max, its manifest asks 32"
python3 - "$run/hostile-fork.event.json" <<'PY' || fail "the limit event: $(cat "$run/hostile-fork.event.json")"
import json, sys
e = json.load(open(sys.argv[1]))
assert e["details"]["limit"] == "processes" and e["details"]["value"] == 32, e
assert e["message"].startswith("process limit reached: 32 processes"), e
PY
# Nobody else noticed: the same host, the example plugins ready with the same processes.
same_host
http_ok /api/health || fail "/api/health did not answer after the attacks"
api /api/plugins > "$run/plugins.json"
others_after=$(check pids "$run/plugins.json" "${expected[@]}")
[ "$others_after" = "$others_before" ] ||
    fail "the example plugins changed during the attacks: before $others_before, after $others_after"
say "$machine: example plugins untouched by the attacks: $others_after"

# The rest of the soak.
while [ "$(now)" -lt "$soak_end" ]; do
    kill -0 "$qpid" 2>/dev/null || fail "QEMU exited during the soak"
    same_host
    sleep 5
done
say "$machine: host pid $pid unchanged for $(( $(now) - soak_end + 75 )) s (watchdog soak, packages and attacks inside it)"

# Kill the host inside the guest; systemd must restart it.
hook kill
wait_for 60 "TORU-TEST-KILLED on the console" console_has TORU-TEST-KILLED
[ "$(console_value TORU-TEST-KILLED)" = "$pid" ] || fail "the hook killed pid $(console_value TORU-TEST-KILLED), not $pid"
t_kill=$(now)
restarted() { local p; p=$(api_pid 2>/dev/null) && [ "$p" != "$pid" ] && http_ok /api/health; }
wait_for 120 "a restarted host (new pid, /api/health 200)" restarted
say "$machine: host restarted by systemd $(( $(now) - t_kill )) s after SIGKILL (pid $pid -> $(api_pid))"

# Safe mode (docs/RELIABILITY.md): the image's config keeps the default of 3 unclean exits in a row
# and keeps its own plugins (sysinfo, notes) running. Two more SIGKILLs make three: the host comes
# back in safe mode, the third-party example plugins held, sysinfo ready; leaving starts them again.
for _ in 1 2; do
    pid=$(api_pid) || fail "GET /api/system gave no pid"
    hook kill
    killed_now() { [ "$(console_value TORU-TEST-KILLED)" = "$pid" ]; }
    wait_for 60 "TORU-TEST-KILLED=$pid on the console" killed_now
    wait_for 120 "a restarted host (new pid, /api/health 200)" restarted
done
exec 3>&-
# The host answers before it has found its plugins: wait until it holds hello-rust.
holding() {
    api /api/system > "$run/system.json" || return 1
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["safe_mode"]; sys.exit(0 if s["active"] and "hello-rust" in s["held"] else 1)' "$run/system.json"
}
wait_for 120 "safe mode holding hello-rust after three unclean exits (GET /api/system)" holding
python3 - "$run/system.json" <<'PY' || fail "safe mode after three unclean exits: $(cat "$run/system.json")"
import json, sys
s = json.load(open(sys.argv[1]))["safe_mode"]
assert s["unclean_in_a_row"] >= 3 and "sysinfo" not in s["held"], s
print("safe mode:", json.dumps({k: s[k] for k in ("unclean_in_a_row", "likely_culprits", "held")}))
PY
plugin_state() { api "/api/plugins/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state"))'; }
is_state() { [ "$(plugin_state "$1")" = "$2" ]; }
wait_for 120 "sysinfo ready in safe mode" is_state sysinfo ready
is_state hello-rust held || fail "hello-rust is $(plugin_state hello-rust) in safe mode, not held"
status=$(api /api/system/safe-mode/leave 30 -o /dev/null -w '%{http_code}' -X POST -H "Origin: http://127.0.0.1:$port")
[ "$status" = 200 ] || fail "POST /api/system/safe-mode/leave answered $status"
wait_for 120 "hello-rust ready after leaving safe mode" is_state hello-rust ready
say "$machine: safe mode after 3 unclean exits (hello-rust held, sysinfo ready), left through the API"
say "$machine: boot test passed in $(( $(now) - t0 )) s"
