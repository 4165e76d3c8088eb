//! Whole-device updates with the real RAUC (Debian's `rauc`), the real `toru` and real plugins:
//! each test runs its own system D-Bus (`dbus-daemon` on a socket in its temp dir) and its own
//! `rauc service` on a test `system.conf` — two slots that are plain 16 MiB files, a custom
//! bootloader backend (a shell script keeping its state in a file, as GRUB's environment would),
//! a throwaway CA made with `openssl` as the keyring. A "reboot" is: stop toru, write a new boot
//! id into the file `[update] boot_id_file` names, restart `rauc service` with
//! `--override-boot-slot` set to the slot the bootloader would start, start toru again.
//!
//! 1. a bundle signed by the test CA is uploaded and installed (slot B's file holds its image,
//!    the pending update is recorded); after the reboot into B the plugins come up, B is marked
//!    good (RAUC says so), the result is ok and a KV value written before is still there;
//! 2. an unsigned bundle, one signed by another CA, one for another compatible string and one
//!    over the size limit are refused with the reason; slot B's file is unchanged;
//! 3. a plugin that was ready before crashes at start on B: after the health timeout B is marked
//!    bad, the reboot command runs and the reason is recorded; back on A the update has failed
//!    with that reason;
//! 4. the device falls back to A without toru on B ever reporting: failed, "never became
//!    healthy" — driven by the CLI: `toru system update FILE [--yes]`, `--status [--json]`,
//!    `toru system reboot`; the metric says it failed.
//!
//! Installing a plain bundle mounts it on a loop device: the tests need root, and say so and
//! pass without it. Stage `cargo` of `scripts/test.sh` installs `rauc`, `dbus`,
//! `squashfs-tools` and `openssl`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use pkg_util::{admin_token, api, stderr, stdout, wait_ready};
use serde_json::{Value, json};
use support::{Host, HostOpts, PluginSrc, TempDir, built, eventually, is_root};

/// The device's compatible string in the test `system.conf`.
const COMPATIBLE: &str = "toru-test";
/// Size of each slot file.
const SLOT_BYTES: u64 = 16 * 1024 * 1024;
/// Size of the image in a bundle (random bytes: RAUC refuses an image that squashes to nothing).
const IMAGE_BYTES: usize = 256 * 1024;

/// The custom bootloader backend: `ORDER` (slots in boot order) and `<slot>_OK` in a file, as
/// GRUB's environment in the image. `set-primary` puts the slot first and makes it bootable, as
/// GRUB's backend does; `get-primary` is the first bootable slot in the order.
const BOOT_SH: &str = r#"#!/bin/sh
f=$(dirname "$0")/bootstate
[ -f "$f" ] || printf 'ORDER=A B\nA_OK=1\nB_OK=1\n' > "$f"
get() { sed -n "s/^$1=//p" "$f"; }
case "$1" in
 get-primary) for s in $(get ORDER); do [ "$(get ${s}_OK)" = 1 ] && { echo $s; exit 0; }; done; exit 1;;
 set-primary) o="$2"; for s in $(get ORDER); do [ "$s" = "$2" ] || o="$o $s"; done
              sed -i "s/^ORDER=.*/ORDER=$o/; s/^${2}_OK=.*/${2}_OK=1/" "$f";;
 get-state) [ "$(get ${2}_OK)" = 1 ] && echo good || echo bad;;
 set-state) v=0; [ "$3" = good ] && v=1; sed -i "s/^${2}_OK=.*/${2}_OK=$v/" "$f";;
 get-current) get ORDER | cut -d' ' -f1;;
 *) exit 1;;
esac
"#;

/// Run `cmd`; panic with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Whether `program` can be run (it is installed).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A certificate and its key, signed by a CA.
struct Signer {
    cert: PathBuf,
    key: PathBuf,
}

/// The RAUC side of one test: a bus, a `rauc service`, slots, CAs and bundles, in one temp dir.
/// Its processes are killed when it is dropped.
struct Rig {
    dir: TempDir,
    bus: Child,
    bus_addr: String,
    service: Option<Child>,
    /// Signed by the CA in the keyring.
    signer: Signer,
    /// Signed by another CA.
    stranger: Signer,
}

impl Rig {
    /// A rig, or `None` (said on stderr) when the tests cannot run here.
    fn new(test: &str) -> Option<Rig> {
        if !is_root() {
            eprintln!("{test}: skipped: installing a RAUC bundle needs root (loop devices)");
            return None;
        }
        for tool in ["rauc", "dbus-daemon", "dbus-send", "mksquashfs", "openssl"] {
            assert!(
                have(tool),
                "{tool} is missing: apt-get install rauc dbus squashfs-tools openssl \
                 (scripts/test.d/20-cargo.sh does)"
            );
        }
        let dir = TempDir::new("up").unwrap();
        let d = &dir.0;
        let ca = make_ca(d, "ca", "Toru test CA");
        let signer = make_signer(d, &ca, "dev", "Toru test signer");
        let other = make_ca(d, "other-ca", "Another CA");
        let stranger = make_signer(d, &other, "other", "Stranger");
        std::fs::write(d.join("boot.sh"), BOOT_SH).unwrap();
        chmod_x(&d.join("boot.sh"));
        for slot in ["slotA.img", "slotB.img"] {
            let f = std::fs::File::create(d.join(slot)).unwrap();
            f.set_len(SLOT_BYTES).unwrap();
        }
        std::fs::create_dir_all(d.join("mnt")).unwrap();
        let p = |n: &str| d.join(n).display().to_string();
        std::fs::write(
            d.join("system.conf"),
            format!(
                "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nstatusfile={}\n\
                 mountprefix={}\n[handlers]\nbootloader-custom-backend={}\n[keyring]\npath={}\n\
                 [slot.rootfs.0]\ndevice={}\ntype=ext4\nbootname=A\n\
                 [slot.rootfs.1]\ndevice={}\ntype=ext4\nbootname=B\n",
                p("rauc.status"),
                p("mnt"),
                p("boot.sh"),
                ca.display(),
                p("slotA.img"),
                p("slotB.img"),
            ),
        )
        .unwrap();
        // What the host runs as `rauc`: the real one, on this test's system.conf.
        std::fs::write(
            d.join("rauc"),
            format!("#!/bin/sh\nexec rauc --conf={} \"$@\"\n", p("system.conf")),
        )
        .unwrap();
        chmod_x(&d.join("rauc"));
        std::fs::write(
            d.join("bus.conf"),
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
                 <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
                p("bus.sock")
            ),
        )
        .unwrap();
        let mut bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", p("bus.conf")))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dbus-daemon");
        // The address is printed once the bus listens: the event to wait for.
        let mut line = String::new();
        std::io::BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bus_addr = line.trim().to_string();
        assert!(bus_addr.starts_with("unix:"), "dbus-daemon said {line:?}");
        let mut rig = Rig {
            dir,
            bus,
            bus_addr,
            service: None,
            signer,
            stranger,
        };
        rig.boot("boot-1");
        rig.start_service("A");
        Some(rig)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Write a new boot id (what a reboot does to the kernel's).
    fn boot(&self, id: &str) {
        std::fs::write(self.path("boot_id"), format!("{id}\n")).unwrap();
    }

    /// (Re)start `rauc service` as the system booted from `slot` would run it, and wait until it
    /// owns its bus name.
    fn start_service(&mut self, slot: &str) {
        if let Some(mut old) = self.service.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("service.log"))
            .unwrap();
        let child = Command::new("rauc")
            .arg(format!("--conf={}", self.path("system.conf").display()))
            .arg("service")
            .arg(format!("--override-boot-slot={slot}"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_addr)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start rauc service");
        let pid = child.id();
        self.service = Some(child);
        // The bus tells which process owns the name: this one, not the one just killed.
        eventually("rauc service to own its bus name", || {
            let o = Command::new("dbus-send")
                .args([
                    "--system",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.GetConnectionUnixProcessID",
                    "string:de.pengutronix.rauc",
                ])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_addr)
                .output()
                .ok()?;
            stdout(&o).contains(&format!("uint32 {pid}")).then_some(())
        });
    }

    /// `rauc ARGS` on this rig's bus and system.conf.
    fn rauc(&self, args: &[&str]) -> String {
        run(Command::new(self.path("rauc"))
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_addr))
    }

    /// `boot_status` of the slot with bootname `slot`, as RAUC reports it.
    fn boot_status(&self, slot: &str) -> String {
        let s: Value =
            serde_json::from_str(&self.rauc(&["status", "--detailed", "--output-format=json"]))
                .unwrap();
        s["slots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_object()?.values().next().cloned())
            .find(|v| v["bootname"] == slot)
            .map(|v| v["boot_status"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no slot {slot} in {s}"))
    }

    /// A bundle `name.raucb` for `compatible`, version `version`, with an image of `image_bytes`
    /// random bytes, signed by `signer` (`None`: a squashfs without a signature). Returns the
    /// bundle and its image.
    fn bundle(
        &self,
        name: &str,
        compatible: &str,
        version: &str,
        signer: Option<&Signer>,
        image_bytes: usize,
    ) -> (PathBuf, Vec<u8>) {
        let content = self.path(&format!("content-{name}"));
        std::fs::create_dir_all(&content).unwrap();
        let image = noise(image_bytes, name.len() as u64 * 7919 + 1);
        std::fs::write(content.join("rootfs.ext4"), &image).unwrap();
        std::fs::write(
            content.join("manifest.raucm"),
            format!(
                "[update]\ncompatible={compatible}\nversion={version}\n[bundle]\nformat=plain\n\
                 [image.rootfs]\nfilename=rootfs.ext4\n"
            ),
        )
        .unwrap();
        let out = self.path(&format!("{name}.raucb"));
        match signer {
            Some(s) => run(Command::new("rauc")
                .arg("bundle")
                .arg(format!("--cert={}", s.cert.display()))
                .arg(format!("--key={}", s.key.display()))
                .arg(&content)
                .arg(&out)),
            None => run(Command::new("mksquashfs").arg(&content).arg(&out).args([
                "-all-root",
                "-noappend",
                "-quiet",
            ])),
        };
        (out, image)
    }

    /// The host's `[update]` config on this rig (and short supervisor timings).
    fn config(&self, health_timeout_ms: u64, extra: &str) -> String {
        format!(
            "[update]\nenabled = true\nrauc = \"{}\"\nhealth_timeout_ms = {health_timeout_ms}\n\
             reboot_command = [\"/bin/sh\", \"-c\", \"echo reboot >> {}\"]\nboot_id_file = \"{}\"\n\
             {extra}\n[supervisor]\nbackoff_base_ms = 100\n",
            self.path("rauc").display(),
            self.path("rebooted").display(),
            self.path("boot_id").display(),
        )
    }

    /// Host options: `plugins`, this rig's bus, `config`.
    fn host_opts(&self, plugins: Vec<PluginSrc>, config: String) -> HostOpts {
        HostOpts {
            plugins,
            env: vec![("DBUS_SYSTEM_BUS_ADDRESS".into(), self.bus_addr.clone())],
            config: Some(config),
            ..HostOpts::default()
        }
    }

    /// The first `n` bytes of slot `slot`'s file.
    fn slot_head(&self, slot: &str, n: usize) -> Vec<u8> {
        let all = std::fs::read(self.path(&format!("slot{slot}.img"))).unwrap();
        all[..n].to_vec()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

fn chmod_x(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A self-signed CA `<name>.cert.pem` / `<name>.key.pem` in `dir`; the certificate.
fn make_ca(dir: &Path, name: &str, cn: &str) -> PathBuf {
    let cert = dir.join(format!("{name}.cert.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key.pem")))
        .arg("-out")
        .arg(&cert)
        .arg("-subj")
        .arg(format!("/CN={cn}")));
    cert
}

/// A signing certificate for `cn` issued by the CA `ca` (its key beside it): no CA, digital
/// signatures, and no extended key usage (RAUC refuses `codeSigning`-only certificates).
fn make_signer(dir: &Path, ca: &Path, name: &str, cn: &str) -> Signer {
    let key = dir.join(format!("{name}.key.pem"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.cert.pem"));
    let ext = dir.join("signer.cnf");
    std::fs::write(
        &ext,
        "[v3]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .arg("-subj")
        .arg(format!("/CN={cn}")));
    let ca_key = ca.to_str().unwrap().replace(".cert.pem", ".key.pem");
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "3650", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(ca)
        .arg("-CAkey")
        .arg(ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext)
        .args(["-extensions", "v3"]));
    Signer { cert, key }
}

/// `n` bytes that do not compress (xorshift64*, seeded).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    pkg_util::noise(n, seed)
}

/// `POST /api/system/update/upload` with `bytes`.
fn upload(h: &Host, token: &str, bytes: &[u8]) -> support::Resp {
    let auth = format!("Bearer {token}");
    h.http(
        "POST",
        "/api/system/update/upload",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
            ("X-Toru-Csrf", "1"),
        ],
        Some(bytes),
    )
}

/// `GET /api/system/update`.
fn update_status(h: &Host, token: &str) -> Value {
    let r = api(h, token, "GET", "/api/system/update", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Wait until `GET /api/system/update` satisfies `f` (each poll a real request; the deadline
/// only bounds a failure); the status then.
fn wait_status(h: &Host, token: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let s = update_status(h, token);
        if f(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: last status {s:#}\nlog:\n{}",
            h.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Upload and install `bundle` through the API, wait for the install to end; the status then.
fn install(h: &Host, token: &str, bundle: &Path) -> Value {
    let r = upload(h, token, &std::fs::read(bundle).unwrap());
    assert_eq!(r.status, 201, "upload: {}\nlog:\n{}", r.text(), h.log());
    let preview = r.json();
    assert_eq!(preview["compatible"], COMPATIBLE, "{preview}");
    assert_eq!(preview["signer"], "CN = Toru test signer", "{preview}");
    let t = preview["token"].as_str().unwrap();
    let r = api(
        h,
        token,
        "POST",
        &format!("/api/system/update/upload/{t}/install"),
        None,
    );
    assert_eq!(r.status, 202, "install: {}", r.text());
    assert_eq!(r.json()["state"], "running", "{}", r.text());
    wait_status(h, token, "the install to end", |s| {
        s["install"]["state"] != "running"
    })
}

/// The kinds of the host's events, newest first.
fn host_events(h: &Host, token: &str) -> Vec<Value> {
    let r = api(h, token, "GET", "/api/events?limit=200", None);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["plugin"] == "host")
        .cloned()
        .collect()
}

fn has_event(events: &[Value], kind: &str) -> bool {
    events.iter().any(|e| e["kind"] == kind)
}

#[test]
fn an_update_signed_by_the_device_ca_boots_b_and_b_is_marked_good() {
    let Some(mut rig) = Rig::new("an_update_signed_by_the_device_ca_boots_b_and_b_is_marked_good")
    else {
        return;
    };
    let opts = rig.host_opts(
        vec![built("hello-rust"), built("sysinfo")],
        rig.config(60_000, ""),
    );
    let mut h = Host::start(opts.clone());
    let token = admin_token(&h);
    let s = wait_status(&h, &token, "the gate to mark A good", |s| {
        s["gate"]["state"] == "no-update"
    });
    assert_eq!(s["booted"], "A", "{s}");
    assert_eq!(s["compatible"], COMPATIBLE, "{s}");
    assert_eq!(rig.boot_status("A"), "good");
    wait_ready(&h, &token, "hello-rust");
    wait_ready(&h, &token, "sysinfo");
    let kv = |h: &Host, action: Value| {
        let r = api(
            h,
            &token,
            "POST",
            "/api/plugins/hello-rust/kv",
            Some(&action),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    kv(
        &h,
        json!({"action": "set", "key": "kept", "value": "written on A"}),
    );

    let (bundle, image) = rig.bundle("good", COMPATIBLE, "2.0.0", Some(&rig.signer), IMAGE_BYTES);
    let s = install(&h, &token, &bundle);
    assert_eq!(s["install"]["state"], "done", "{s:#}\nlog:\n{}", h.log());
    assert_eq!(s["install"]["percent"], 100, "{s:#}");
    assert_eq!(
        rig.slot_head("B", IMAGE_BYTES),
        image,
        "slot B holds the image"
    );
    let p = &s["pending"];
    assert_eq!(
        (&p["from_slot"], &p["to_slot"], &p["version"]),
        (&json!("A"), &json!("B"), &json!("2.0.0")),
        "{s:#}"
    );
    assert_eq!(p["boot_id"], "boot-1");
    assert!(p["installed_at"].is_string(), "{s:#}");
    let mut watched: Vec<&str> = p["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    watched.sort_unstable();
    assert_eq!(watched, ["hello-rust", "sysinfo"]);
    assert_eq!(s["gate"]["state"], "awaiting-reboot", "{s:#}");
    assert_eq!(s["boot_primary"], "B", "{s:#}");
    assert!(
        std::fs::read_dir(h.data_dir.join("updates"))
            .unwrap()
            .next()
            .is_none(),
        "the bundle is removed after the install"
    );
    assert!(has_event(&host_events(&h, &token), "update-installed"));

    // Reboot into B.
    assert!(h.stop().success());
    rig.boot("boot-2");
    rig.start_service("B");
    h.restart(opts);
    let s = wait_status(&h, &token, "the update to succeed", |s| {
        s["last_result"]["result"] == "ok"
    });
    assert_eq!(s["booted"], "B", "{s:#}");
    assert!(s["pending"].is_null(), "{s:#}");
    assert_eq!(s["gate"]["state"], "succeeded", "{s:#}");
    assert_eq!(s["last_result"]["version"], "2.0.0");
    assert_eq!(rig.boot_status("B"), "good", "RAUC: B is marked good");
    assert_eq!(
        kv(&h, json!({"action": "get", "key": "kept"}))["value"],
        "written on A",
        "the data partition survives the update"
    );
    assert!(has_event(&host_events(&h, &token), "update-succeeded"));
    assert!(!rig.path("rebooted").exists(), "no reboot on success");
}

#[test]
fn a_new_system_whose_plugin_never_gets_ready_is_marked_bad_and_the_old_one_reports_why() {
    let Some(mut rig) = Rig::new("a_new_system_whose_plugin_never_gets_ready_is_marked_bad") else {
        return;
    };
    let stress = PluginSrc::Built {
        bin: "stress",
        as_name: "stress-ok".into(),
    };
    let opts = rig.host_opts(vec![built("hello-rust"), stress], rig.config(3_000, ""));
    let mut h = Host::start(opts.clone());
    let token = admin_token(&h);
    wait_ready(&h, &token, "hello-rust");
    wait_ready(&h, &token, "stress-ok");
    wait_status(&h, &token, "the gate to mark A good", |s| {
        s["gate"]["state"] == "no-update"
    });
    let (bundle, _) = rig.bundle("good", COMPATIBLE, "2.0.0", Some(&rig.signer), IMAGE_BYTES);
    let s = install(&h, &token, &bundle);
    assert_eq!(s["install"]["state"], "done", "{s:#}");

    // B's copy of the plugin crashes at start.
    assert!(h.stop().success());
    std::fs::write(
        h.plugins_dir.join("stress.json"),
        r#"{"id": "stress-ok", "mode": "crash-start"}"#,
    )
    .unwrap();
    rig.boot("boot-2");
    rig.start_service("B");
    h.restart(opts.clone());
    // The gate shows `gave-up` before the attempt is recorded (seen under qemu-user): wait for both.
    let s = wait_status(&h, &token, "the new system to give up", |s| {
        s["gate"]["state"] == "gave-up"
            && s["pending"]["attempts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    });
    let reason = s["gate"]["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("plugin stress-ok (") && reason.ends_with(") not ready after 3 s"),
        "{reason}"
    );
    eventually("the reboot command to run", || {
        rig.path("rebooted").exists().then_some(())
    });
    assert_eq!(rig.boot_status("B"), "bad", "RAUC: B is marked bad");
    let attempts = &s["pending"]["attempts"];
    assert_eq!(attempts[0]["reason"], reason.as_str(), "{s:#}");
    assert_eq!(attempts[0]["slot"], "B");
    assert!(has_event(&host_events(&h, &token), "update-failed"));

    // The bootloader falls back to A, whose plugin is fine.
    assert!(h.stop().success());
    std::fs::remove_file(h.plugins_dir.join("stress.json")).unwrap();
    rig.boot("boot-3");
    rig.start_service("A");
    h.restart(opts);
    let s = wait_status(&h, &token, "the old system to report the failure", |s| {
        s["last_result"]["result"] == "failed"
    });
    let failed = s["last_result"]["reason"].as_str().unwrap();
    assert!(
        failed.starts_with(&reason) && failed.contains("back on slot A"),
        "{failed}"
    );
    assert!(s["pending"].is_null(), "{s:#}");
    assert_eq!(s["gate"]["state"], "fell-back", "{s:#}");
    assert_eq!(s["booted"], "A");
    assert_eq!(rig.boot_status("A"), "good");
    wait_status(&h, &token, "A to boot next", |s| s["boot_primary"] == "A");
}

#[test]
fn bundles_rauc_refuses_or_for_another_device_are_refused_with_the_reason_and_b_is_untouched() {
    let Some(rig) = Rig::new("bundles_rauc_refuses_are_refused_with_the_reason") else {
        return;
    };
    // The smallest limit the config takes; the good bundles here are well under it.
    let opts = rig.host_opts(
        vec![built("hello-rust")],
        rig.config(60_000, "max_bundle_bytes = 1048576"),
    );
    let h = Host::start(opts);
    let token = admin_token(&h);
    wait_status(&h, &token, "the gate to mark A good", |s| {
        s["gate"]["state"] == "no-update"
    });
    let slot_b = std::fs::read(rig.path("slotB.img")).unwrap();
    let refused = |bundle: &Path, status: u16, code: &str, needle: &str| {
        let r = upload(&h, &token, &std::fs::read(bundle).unwrap());
        assert_eq!(r.status, status, "{}: {}", bundle.display(), r.text());
        let e = r.json();
        assert_eq!(e["error"], code, "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(needle), "{}: {message}", bundle.display());
    };
    let (unsigned, _) = rig.bundle("unsigned", COMPATIBLE, "2.0.0", None, IMAGE_BYTES);
    refused(&unsigned, 422, "unsigned", "Signature size is 0");
    let (other_ca, _) = rig.bundle(
        "other-ca",
        COMPATIBLE,
        "2.0.0",
        Some(&rig.stranger),
        IMAGE_BYTES,
    );
    refused(
        &other_ca,
        422,
        "untrusted_signer",
        "signature verification failed",
    );
    let (other_device, _) = rig.bundle(
        "other-device",
        "other-device",
        "2.0.0",
        Some(&rig.signer),
        IMAGE_BYTES,
    );
    refused(
        &other_device,
        422,
        "wrong_compatible",
        "this bundle is for \"other-device\", this device is \"toru-test\"",
    );
    let (large, _) = rig.bundle("large", COMPATIBLE, "2.0.0", Some(&rig.signer), 2 << 20);
    refused(&large, 413, "too_large", "1048576");
    let r = api(
        &h,
        &token,
        "POST",
        "/api/system/update/upload/nope/install",
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());

    assert!(
        std::fs::read(rig.path("slotB.img")).unwrap() == slot_b,
        "nothing was written to slot B"
    );
    let s = update_status(&h, &token);
    assert!(s["pending"].is_null() && s["staged"].is_null(), "{s:#}");
    assert!(
        s["last_result"].is_null(),
        "a refused upload is no update: {s:#}"
    );
    assert!(
        std::fs::read_dir(h.data_dir.join("updates"))
            .unwrap()
            .next()
            .is_none(),
        "refused bundles are removed"
    );
    assert_eq!(
        rig.boot_status("B"),
        "good",
        "B untouched in RAUC's status too"
    );
}

#[test]
fn a_fall_back_without_a_report_from_the_new_slot_fails_and_the_cli_drives_the_update() {
    let Some(mut rig) = Rig::new("a_fall_back_without_a_report_from_the_new_slot_fails") else {
        return;
    };
    let opts = rig.host_opts(vec![built("hello-rust")], rig.config(60_000, ""));
    let mut h = Host::start(opts.clone());
    let token = admin_token(&h);
    wait_status(&h, &token, "the gate to mark A good", |s| {
        s["gate"]["state"] == "no-update"
    });
    let (bundle, image) = rig.bundle("good", COMPATIBLE, "2.0.0", Some(&rig.signer), IMAGE_BYTES);
    let file = bundle.to_str().unwrap();

    // Not on a terminal and without --yes: shown, not installed.
    let o = h.cli(&["system", "update", file], None);
    assert!(!o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("version 2.0.0 for toru-test, signed by CN = Toru test signer")
            && err.contains("--yes"),
        "{err}"
    );
    let s = update_status(&h, &token);
    assert!(s["staged"].is_null() && s["pending"].is_null(), "{s:#}");

    let o = h.cli(&["system", "update", file, "--yes"], None);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}\nlog:\n{}", h.log());
    assert!(err.contains("100% Installing done."), "{err}");
    assert!(err.contains("Installed 2.0.0 into slot B"), "{err}");
    assert_eq!(rig.slot_head("B", IMAGE_BYTES), image);
    let o = h.cli(&["system", "update", "--status", "--json"], None);
    let s: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["pending"]["to_slot"], "B", "{s:#}");
    assert_eq!(s["gate"]["state"], "awaiting-reboot", "{s:#}");
    let o = h.cli(&["system", "update", "--status"], None);
    assert!(
        stdout(&o).contains("pending: 2.0.0 installed, slot A → slot B"),
        "{}",
        stdout(&o)
    );
    let o = h.cli(&["system", "reboot"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(rig.path("rebooted")).unwrap(),
        "reboot\n",
        "the reboot command ran once"
    );

    // B boots, but Toru on it never reports; the boot counter runs out and A boots again.
    assert!(h.stop().success());
    rig.boot("boot-2");
    rig.start_service("B");
    rig.boot("boot-3");
    rig.start_service("A");
    h.restart(opts);
    let s = wait_status(&h, &token, "the old system to report the failure", |s| {
        s["last_result"]["result"] == "failed"
    });
    assert_eq!(
        s["last_result"]["reason"],
        "slot B never became healthy (Toru on it did not report); the device is back on slot A",
        "{s:#}"
    );
    assert!(s["pending"].is_null(), "{s:#}");
    assert_eq!(rig.boot_status("A"), "good");
    // The failure is recorded first, then A is made the slot to boot next.
    wait_status(
        &h,
        &token,
        "A to boot next (the failed slot not tried again)",
        |s| s["boot_primary"] == "A",
    );
    let o = h.cli(&["system", "update", "--status"], None);
    assert!(
        stdout(&o).contains("last update: 2.0.0 FAILED: slot B never became healthy"),
        "{}",
        stdout(&o)
    );
    let metrics = api(&h, &token, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("toru_update_last_result{version=\"2.0.0\"} 0"),
        "{metrics}"
    );
}
