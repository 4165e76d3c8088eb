//! The sysinfo plugin (`plugins/sysinfo`) as a device runs it: packed from its folder with
//! `toru plugin pack`, signed with a key the host trusts, installed into the real host and — when
//! the tests run as root, as on the image — confined (its own uid, Landlock, seccomp). Its figures
//! are read through the host's plugin route with an API token and must be plausible for this
//! machine; a mount the confined plugin may not reach is listed as unavailable; a settings
//! change through the REST API is followed by the history it keeps.
//!
//! Needs the built `sysinfo` binary beside `toru` (`cargo build --workspace`, as the test command
//! does first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::path::PathBuf;

use pkg_util::{Key, admin_token, api, cli_install_ok, wait_ready};
use serde_json::{Value, json};
use support::package::{HOST_TRIPLE, PackageDir, entry_only};
use support::{Bins, Host, TempDir, eventually, is_root};

/// `plugins/sysinfo` as a package for this machine: its manifest with only this triple's entry,
/// the built binary at that entry, its bundle; signed with `key`.
fn sysinfo_package(bins: &Bins, work: &TempDir, key: &Key) -> PathBuf {
    let src = bins.repo.join("plugins/sysinfo");
    let manifest = std::fs::read_to_string(src.join("manifest.toml")).unwrap();
    let entry = format!("bin/{HOST_TRIPLE}/sysinfo");
    assert!(
        manifest.contains(&format!("{HOST_TRIPLE} = \"{entry}\"")),
        "plugins/sysinfo/manifest.toml names {entry}"
    );
    let dir = PackageDir::new(&work.join("src"), &entry_only(&manifest, HOST_TRIPLE)).unwrap();
    dir.exe(&entry, &bins.get("sysinfo")).unwrap();
    dir.file("bundle.js", &std::fs::read(src.join("bundle.js")).unwrap())
        .unwrap();
    let out = work.join("sysinfo-0.1.0.toru");
    dir.pack_ok(bins, Some(&key.secret), &out).unwrap();
    out
}

fn get(h: &Host, token: &str, path: &str) -> Value {
    let r = api(h, token, "GET", path, None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

fn history(h: &Host, token: &str) -> Value {
    get(h, token, "/api/plugins/route/sysinfo/history")
}

fn put_settings(h: &Host, token: &str, body: &Value) -> support::Resp {
    api(h, token, "PUT", "/api/plugins/sysinfo/settings", Some(body))
}

/// The points of a history answer, checked on the way: never more than its capacity, oldest first.
fn points(hist: &Value) -> Vec<Value> {
    let pts = hist["points"].as_array().unwrap().clone();
    let cap = hist["capacity"].as_u64().unwrap();
    assert!(
        pts.len() as u64 <= cap,
        "more points than the capacity: {hist}"
    );
    let times: Vec<u64> = pts.iter().map(|p| p["t"].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    pts
}

/// A real (non-pseudo) filesystem mounted where only root may go: a read-only overlay on
/// `<dir>/private/ov`, `private` being `0700` root. Unmounted when dropped. `None` when it cannot be
/// mounted (not root, no overlayfs), said on stderr.
struct PrivateMount(PathBuf);

impl PrivateMount {
    fn new(dir: &std::path::Path) -> Option<PrivateMount> {
        use std::os::unix::fs::PermissionsExt;
        let private = dir.join("private");
        for d in ["l1", "l2", "ov"] {
            std::fs::create_dir_all(private.join(d)).unwrap();
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let ov = private.join("ov");
        // Without an upper layer overlayfs needs two lower ones.
        let lower = format!(
            "lowerdir={}:{}",
            private.join("l1").display(),
            private.join("l2").display()
        );
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &lower])
            .arg(&ov)
            .status();
        match st {
            Ok(s) if s.success() => Some(PrivateMount(ov)),
            other => {
                eprintln!("skipping the unreachable mount: mount -t overlay: {other:?}");
                None
            }
        }
    }
}

impl Drop for PrivateMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line in {status}"))
}

#[test]
fn sysinfo_reports_this_machine_and_follows_its_settings() {
    let bins = Bins::locate().unwrap();
    let work = TempDir::new("sysinfo").unwrap();
    let h = pkg_util::start(None, &pkg_util::config(""), &[]);
    let token = admin_token(&h);
    let key = Key::new(&bins, "publisher");
    key.trust(&h);
    let private = is_root().then(|| PrivateMount::new(&work.0)).flatten();
    cli_install_ok(&h, "install", &sysinfo_package(&bins, &work, &key));
    let plugin = wait_ready(&h, &token, "sysinfo");

    // Confined as a device runs it: its own uid, isolation on.
    let sec = get(&h, &token, "/api/plugins/sysinfo/security");
    if is_root() {
        assert_eq!(sec["isolation"], "on", "{sec}");
        assert_ne!(
            uid_of(pkg_util::pid_of(&plugin)),
            0,
            "the plugin runs as its own uid"
        );
    } else {
        eprintln!("not root: the plugin runs unconfined ({})", sec["reason"]);
    }
    assert_eq!(sec["network"], "local", "{sec}");

    // The figures, once the CPU load (a difference of two readings) is there.
    let cur = eventually("a CPU load figure", || {
        let r = api(&h, &token, "GET", "/api/plugins/route/sysinfo/", None);
        (r.status == 200 && r.json()["cpu"]["total_percent"].is_number()).then(|| r.json())
    });
    let cpu = &cur["cpu"];
    let cores = cpu["cores"].as_array().unwrap();
    assert!(!cores.is_empty(), "at least one core: {cpu}");
    let total = cpu["total_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&total), "{cpu}");
    for c in cores {
        let p = c["percent"].as_f64();
        assert!(p.is_none_or(|p| (0.0..=100.0).contains(&p)), "{c}");
    }

    let mem = &cur["memory"];
    assert!(mem["total_bytes"].as_u64().unwrap() > 0, "{mem}");
    assert!(mem["used_bytes"].as_u64().unwrap() <= mem["total_bytes"].as_u64().unwrap());
    assert!((0.0..=100.0).contains(&mem["used_percent"].as_f64().unwrap()));

    assert!(
        cur["uptime_secs"].as_f64().unwrap() > 0.0,
        "{}",
        cur["uptime_secs"]
    );

    let disks = cur["disks"].as_array().unwrap();
    assert!(!disks.is_empty(), "at least one mount: {cur}");
    for d in disks {
        let fstype = d["fstype"].as_str().unwrap();
        assert!(
            !["proc", "sysfs", "tmpfs", "cgroup2", "devtmpfs"].contains(&fstype),
            "{d}"
        );
        if d["available"] == true {
            assert!(d["total_bytes"].is_u64() && d["free_bytes"].is_u64(), "{d}");
            assert!(d["error"].is_null(), "{d}");
        } else {
            assert!(d["error"].is_string(), "an unavailable mount says why: {d}");
        }
    }
    assert!(
        disks.iter().any(|d| d["available"] == true),
        "the confined plugin can read at least one mount: {disks:?}"
    );
    // A mount its uid cannot reach: listed, unavailable, with the reason.
    if let Some(PrivateMount(ov)) = &private {
        let d = disks
            .iter()
            .find(|d| d["mount"] == ov.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} is listed: {disks:?}", ov.display()));
        assert_eq!(d["fstype"], "overlay", "{d}");
        assert_eq!(d["available"], false, "{d}");
        assert_eq!(d["error"], "permission denied", "{d}");
        assert!(d["total_bytes"].is_null(), "{d}");
    }

    let net = cur["network"].as_array().unwrap();
    let lo = net
        .iter()
        .find(|i| i["name"] == "lo")
        .unwrap_or_else(|| panic!("loopback is listed: {net:?}"));
    let lo_addrs: Vec<&str> = lo["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["address"].as_str().unwrap())
        .collect();
    assert!(lo_addrs.contains(&"127.0.0.1"), "{lo}");

    // Temperature: whatever this machine has; consistent with its zones.
    let temp = &cur["temperature"];
    assert_eq!(
        temp["celsius"].is_number(),
        temp["zone"].is_string(),
        "{temp}"
    );
    if std::fs::read_dir("/sys/class/thermal")
        .map(|d| {
            !d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        })
        .unwrap_or(true)
    {
        assert!(
            temp["celsius"].is_null() && temp["zones"] == json!([]),
            "{temp}"
        );
    }

    // Not a Raspberry Pi: its flags are "not available", not an error.
    let on_a_pi =
        std::path::Path::new("/sys/devices/platform/soc/soc:firmware/get_throttled").exists();
    if !on_a_pi {
        assert_eq!(cur["pi"]["available"], false, "{}", cur["pi"]);
        assert_eq!(cur["pi"]["flags"], json!([]));
        assert!(cur["pi"]["throttled"].is_null());
    }
    assert_eq!(cur["settings"], json!({"refresh_ms": 2000, "history": 60}));

    // The history with the defaults.
    let hist = history(&h, &token);
    assert_eq!(
        (hist["capacity"].as_u64(), hist["refresh_ms"].as_u64()),
        (Some(60), Some(2000))
    );
    assert!(!points(&hist).is_empty(), "{hist}");

    // Faster sampling and a short history: it fills up to exactly 10 points and stays there.
    let r = put_settings(&h, &token, &json!({"refresh_ms": 500, "history": 10}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["delivery"], "applied", "{}", r.text());
    let hist = history(&h, &token);
    assert_eq!(
        (hist["capacity"].as_u64(), hist["refresh_ms"].as_u64()),
        (Some(10), Some(500))
    );
    let full = eventually("10 points in the history", || {
        let hist = history(&h, &token);
        (points(&hist).len() == 10).then_some(hist)
    });
    let newest = |hist: &Value| points(hist).last().unwrap()["t"].as_u64().unwrap();
    let before = newest(&full);
    let later = eventually("a newer point", || {
        let hist = history(&h, &token);
        (newest(&hist) > before).then_some(hist)
    });
    assert_eq!(
        points(&later).len(),
        10,
        "the oldest point made room: {later}"
    );
    let p = &points(&later)[9];
    assert!(p["cpu"].is_number() && p["memory"].is_number(), "{p}");
    assert_eq!(
        get(&h, &token, "/api/plugins/route/sysinfo/")["settings"],
        json!({"refresh_ms": 500, "history": 10})
    );

    // A longer history grows to its new length; a shorter one drops the oldest points at once.
    let r = put_settings(&h, &token, &json!({"refresh_ms": 500, "history": 12}));
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("12 points in the history", || {
        (points(&history(&h, &token)).len() == 12).then_some(())
    });
    let r = put_settings(&h, &token, &json!({"refresh_ms": 500, "history": 10}));
    assert_eq!(r.json()["delivery"], "applied", "{}", r.text());
    let hist = history(&h, &token);
    assert_eq!(hist["capacity"], 10);
    assert_eq!(points(&hist).len(), 10, "shortened at once: {hist}");

    // Outside the schema's range: refused by the host, nothing changes.
    let r = put_settings(&h, &token, &json!({"refresh_ms": 100, "history": 5}));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_settings");
    assert_eq!(history(&h, &token)["capacity"], 10);

    // Its frontend, from the package.
    let r = api(&h, &token, "GET", "/api/plugins/sysinfo/bundle.js", None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("window.ToruPlugins[ID]"), "{}", r.text());
}
