//! `kill -9` of the host at every step of a package update leaves, after a restart, exactly one
//! version running — the old one while the update had not finished, the new one once its finish
//! was committed — with every KV write that was acknowledged before the update and the settings
//! that go with the version that runs, nothing left in `.staging` or in the packages dir that no
//! record names, and a device that takes the same update afterwards.
//!
//! The debug build aborts (no destructors, no flush: what `kill -9` does) when a transaction
//! reaches the step `TORU_FAULT_PACKAGE_STEP` names (`moved`, `held`, `switched`, `probation`,
//! `finished`, `rolling-back`; see `src/install/mod.rs`). Each test installs v1.0.0 of a stress
//! package (with a settings schema) on a host started without the variable, writes KV through the
//! API and through the plugin and saves its settings, restarts the host with the variable, runs
//! `toru plugin update` of v2.0.0 — whose schema the saved settings do not fit, so the switch
//! changes them — (which fails because the host died), restarts without it and checks what runs,
//! what the store holds and what is on disk. Two more: a first install killed during its
//! probation is forgotten (no plugin, no files, the same install works), and a host killed (plain
//! SIGKILL) while an upload arrives leaves a staging folder that its next start removes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use pkg_util::*;
use support::{Bins, Host, TempDir, eventually};

/// The plugin id (and route) of the package under test.
const ID: &str = "pf";

/// KV written before the update, acknowledged: (key, value, written through the plugin).
const KV: [(&str, &str, bool); 4] = [
    ("api-1", "written through the API", false),
    ("api-2", "ünïcode value", false),
    ("plugin-1", "written by the plugin", true),
    ("plugin-2", "also by the plugin", true),
];

/// The settings schema of v1 (and 1.1.0): a string, an integer up to 10, a secret.
const V1_SETTINGS: &str = "[settings]\ntype = \"object\"\n\
    [settings.properties.greeting]\ntype = \"string\"\ndefault = \"hello\"\n\
    [settings.properties.level]\ntype = \"integer\"\nminimum = 0\nmaximum = 10\ndefault = 1\n\
    [settings.properties.token]\ntype = \"string\"\nformat = \"secret\"\n";

/// The settings schema of v2: `level` at most 5 (default 2), no `token`. The settings saved under
/// v1 do not fit it: the switch stores them fitted ([`V2_FITTED`]), a rollback must bring v1's back.
const V2_SETTINGS: &str = "[settings]\ntype = \"object\"\n\
    [settings.properties.greeting]\ntype = \"string\"\ndefault = \"hello\"\n\
    [settings.properties.level]\ntype = \"integer\"\nminimum = 0\nmaximum = 5\ndefault = 2\n";

/// The settings saved under v1 before the update.
fn v1_saved() -> serde_json::Value {
    serde_json::json!({"greeting": "saved under 1.0.0", "level": 8, "token": "tok-1"})
}

/// What `GET …/settings` shows of [`v1_saved`] under v1 (the secret redacted, but set).
fn v1_shown() -> (serde_json::Value, serde_json::Value) {
    (
        serde_json::json!({"greeting": "saved under 1.0.0", "level": 8, "token": null}),
        serde_json::json!(["token"]),
    )
}

/// [`v1_saved`] fitted to [`V2_SETTINGS`]: the unknown secret dropped, the level out of range reset.
const V2_FITTED: &str = r#"{"greeting": "saved under 1.0.0", "level": 2}"#;

/// Plugin `ID`'s settings as the API shows them: (values, secrets set).
fn shown_settings(h: &Host, token: &str) -> (serde_json::Value, serde_json::Value) {
    let s = settings(h, token, ID);
    (s["values"].clone(), s["secrets_set"].clone())
}

/// Package `ID` `version` in `mode` with the schema of its version (v2 for 2.x).
fn pf_package(bins: &Bins, dir: &Path, version: &str, mode: &str, key: &Key) -> PathBuf {
    let schema = if version.starts_with("2.") {
        V2_SETTINGS
    } else {
        V1_SETTINGS
    };
    stress_with(bins, dir, ID, version, mode, Some(key), schema)
}

/// Install v1 on a fresh host (with `cfg`), trust `key`, write [`KV`] and save [`v1_saved`]; the
/// host and its admin token.
fn v1_with_data(bins: &Bins, dir: &Path, key: &Key, cfg: &str) -> (Host, String) {
    let v1 = pf_package(bins, dir, "1.0.0", "ok", key);
    let h = start(None, cfg, &[]);
    key.trust(&h);
    let token = admin_token(&h);
    cli_install_ok(&h, "install", &v1);
    wait_ready(&h, &token, ID);
    for (k, v, through_plugin) in KV {
        if through_plugin {
            plugin_kv_set(&h, &token, ID, k, v);
        } else {
            kv_set(&h, &token, ID, k, v);
        }
    }
    set_settings(&h, &token, ID, &v1_saved());
    assert_eq!(shown_settings(&h, &token), v1_shown());
    wait_ready(&h, &token, ID);
    (h, token)
}

/// Restart `h` with the fault armed at `step`, run `toru plugin update PKG` (it fails: the host
/// aborts at `step`) and check that the host stopped there.
fn update_killed_at(h: &mut Host, token: &str, cfg: &str, step: &str, pkg: &Path) {
    // Killed (SIGKILL) and started again with the fault armed.
    h.restart(opts(None, cfg, &[("TORU_FAULT_PACKAGE_STEP", step)]));
    wait_ready(h, token, ID);
    let o = cli_install(h, "update", pkg, &[]);
    assert!(
        !o.status.success(),
        "the update at step {step} succeeded: {}",
        stdout(&o)
    );
    let status = eventually("the host to exit", || h.child.try_wait().unwrap());
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(
        h.log()
            .contains(&format!("fault injection: aborting at package step {step}")),
        "the host did not stop at {step}: {}",
        h.log()
    );
    let err = stderr(&o);
    assert!(err.contains("closed the control connection"), "{err}");
}

/// After a restart: plugin `ID` runs `version` from its folder, and it is the only plugin process
/// from the packages dir (never a mix); no update pending. Returns the plugin object.
fn runs_alone(h: &Host, token: &str, version: &str) -> serde_json::Value {
    let p = wait_ready(h, token, ID);
    assert_eq!(p["version"], version, "{p}");
    assert_eq!(p["package"]["version"], version, "{p}");
    assert!(
        p["package"]["update"].is_null(),
        "an update is pending: {p}"
    );
    let pid = pid_of(&p);
    let exe = packages_dir(h).join(ID).join(version).join("stress");
    assert_eq!(exe_of(pid), exe.canonicalize().unwrap());
    // A plugin of the killed host dies by its parent-death signal, a moment after the host.
    let plugins = packages_dir(h).canonicalize().unwrap();
    let procs = eventually("one plugin process from the packages dir", || {
        let p = processes_under(&plugins);
        (p.len() == 1).then_some(p)
    });
    assert_eq!(procs[0].0, pid, "{procs:?}");
    p
}

/// Every KV write of [`KV`] is there.
fn kv_intact(h: &Host, token: &str) {
    for (k, v, _) in KV {
        assert_eq!(kv_get(h, token, ID, k).as_deref(), Some(v), "KV {k} lost");
    }
}

/// Processes whose executable lies under `dir` (their pid and executable).
fn processes_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if !support::alive(pid) {
            continue;
        }
        if let Some(exe) = try_exe_of(pid)
            && exe.starts_with(dir)
        {
            found.push((pid, exe));
        }
    }
    found
}

/// What must hold after the restart that follows a kill before the finish: v1 alone runs, the KV
/// data and the settings are as they were, nothing is left over. Returns the plugin's pid.
fn assert_v1_alone(h: &Host, token: &str, rolled_back: bool) -> u32 {
    let p = runs_alone(h, token, "1.0.0");
    assert_eq!(
        p["package"]["versions"],
        serde_json::json!(["1.0.0"]),
        "{p}"
    );
    let pid = pid_of(&p);

    let o = h.cli(&["plugin", "versions", ID], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let listed: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("last update"))
        .collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert!(listed[0].starts_with("* 1.0.0\t"), "{out}");

    kv_intact(h, token);
    // The settings of v1 — the secret included — whatever the switch had stored for v2.
    assert_eq!(
        shown_settings(h, token),
        v1_shown(),
        "settings not restored"
    );
    assert_eq!(staging(h), Vec::<String>::new(), ".staging is not empty");
    assert_eq!(packages_on_disk(h), [ID]);
    assert_eq!(versions_on_disk(h, ID), ["1.0.0"]);

    let rolled: Vec<serde_json::Value> = events(h, token, ID)
        .into_iter()
        .filter(|e| e["kind"] == "update-rolled-back")
        .collect();
    if rolled_back {
        assert_eq!(rolled.len(), 1, "{rolled:?}");
        let msg = rolled[0]["message"].as_str().unwrap();
        assert!(
            msg.contains("the host stopped during the probation"),
            "{msg}"
        );
        assert!(msg.contains("2.0.0"), "{msg}");
        assert!(
            out.contains("last update: rolled-back 1.0.0 -> 2.0.0: the host stopped during"),
            "{out}"
        );
    } else {
        assert!(rolled.is_empty(), "nothing was switched, yet: {rolled:?}");
    }
    pid
}

/// The whole scenario for one step before the finish (see the module doc).
fn kill_at(step: &str) {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pf").unwrap();
    let key = Key::new(&bins, "publisher");
    let v2_ok = pf_package(&bins, &t.0, "2.0.0", "ok", &key);
    let v2 = if step == "rolling-back" {
        // Only a failed probation rolls back by itself.
        pf_package(&bins, &t.0, "2.0.0", "crash-start", &key)
    } else {
        v2_ok.clone()
    };
    let cfg = config("");
    let (mut h, token) = v1_with_data(&bins, &t.0, &key, &cfg);
    update_killed_at(&mut h, &token, &cfg, step, &v2);

    h.restart(opts(None, &cfg, &[]));
    let rolled_back = matches!(step, "switched" | "probation" | "rolling-back");
    let old_pid = assert_v1_alone(&h, &token, rolled_back);

    // The device is not stuck: the update goes through now, the data with it.
    cli_install_ok(&h, "update", &v2_ok);
    let p = wait_ready(&h, &token, ID);
    assert_eq!(p["version"], "2.0.0", "{p}");
    let pid = pid_of(&p);
    assert_ne!(pid, old_pid);
    let v2_exe = packages_dir(&h).join(ID).join("2.0.0").join("stress");
    assert_eq!(exe_of(pid), v2_exe.canonicalize().unwrap());
    kv_intact(&h, &token);
    assert_eq!(
        shown_settings(&h, &token),
        (
            serde_json::from_str(V2_FITTED).unwrap(),
            serde_json::json!([])
        )
    );
    assert_eq!(versions_on_disk(&h, ID), ["1.0.0", "2.0.0"]);
    assert_eq!(staging(&h), Vec::<String>::new());
}

#[test]
fn killed_after_the_files_moved_the_old_version_runs() {
    kill_at("moved");
}

#[test]
fn killed_with_the_old_version_held_down_it_runs_again() {
    kill_at("held");
}

#[test]
fn killed_right_after_the_switch_the_update_is_rolled_back() {
    kill_at("switched");
}

#[test]
fn killed_at_the_end_of_the_probation_the_update_is_rolled_back() {
    kill_at("probation");
}

#[test]
fn killed_while_rolling_back_the_rollback_completes_at_start() {
    kill_at("rolling-back");
}

/// Killed right after the finish commit, before the version it pruned was deleted: the new
/// version runs after the restart, with the KV data and its fitted settings; the pruned folder
/// goes at the start; the outcome is `updated`, never rolled back. (The kill points used to stop
/// before the finish, so a host that lost the finish's aftermath was never tried.)
#[test]
fn killed_after_the_finish_the_new_version_runs_with_its_data() {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pf").unwrap();
    let key = Key::new(&bins, "publisher");
    let cfg = config("");
    let (mut h, token) = v1_with_data(&bins, &t.0, &key, &cfg);
    // A version in between, so that the finish of 2.0.0 prunes 1.0.0.
    cli_install_ok(&h, "update", &pf_package(&bins, &t.0, "1.1.0", "ok", &key));
    wait_ready(&h, &token, ID);
    assert_eq!(versions_on_disk(&h, ID), ["1.0.0", "1.1.0"]);
    let v2 = pf_package(&bins, &t.0, "2.0.0", "ok", &key);
    update_killed_at(&mut h, &token, &cfg, "finished", &v2);
    // The finish was committed; the folder it pruned is still there.
    assert_eq!(versions_on_disk(&h, ID), ["1.0.0", "1.1.0", "2.0.0"]);

    h.restart(opts(None, &cfg, &[]));
    let p = runs_alone(&h, &token, "2.0.0");
    assert_eq!(
        p["package"]["versions"],
        serde_json::json!(["2.0.0", "1.1.0"]),
        "{p}"
    );
    assert_eq!(p["package"]["last_update"]["result"], "updated", "{p}");
    kv_intact(&h, &token);
    assert_eq!(
        shown_settings(&h, &token),
        (
            serde_json::from_str(V2_FITTED).unwrap(),
            serde_json::json!([])
        )
    );
    assert_eq!(staging(&h), Vec::<String>::new(), ".staging is not empty");
    assert_eq!(packages_on_disk(&h), [ID]);
    assert_eq!(versions_on_disk(&h, ID), ["1.1.0", "2.0.0"]);
    let evs = events(&h, &token, ID);
    assert!(
        !evs.iter().any(|e| e["kind"] == "update-rolled-back"),
        "{evs:?}"
    );
    let updated: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| {
            e["kind"] == "updated"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("from 1.1.0 to 2.0.0"))
        })
        .collect();
    assert_eq!(updated.len(), 1, "{evs:?}");
    let o = h.cli(&["plugin", "versions", ID], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("* 2.0.0\t"), "{out}");
    assert!(out.contains("last update: updated 1.1.0 -> 2.0.0"), "{out}");

    // And it stays: another restart changes nothing.
    let pid = pid_of(&p);
    h.restart(opts(None, &cfg, &[]));
    let p = runs_alone(&h, &token, "2.0.0");
    assert_ne!(pid_of(&p), pid);
    kv_intact(&h, &token);
}

/// A first install (no version before it) killed after its switch is forgotten at the next start:
/// no plugin, no files, no binding that would refuse the same package later.
#[test]
fn a_first_install_killed_during_its_probation_is_forgotten() {
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pf").unwrap();
    let key = Key::new(&bins, "publisher");
    let v1 = stress(&bins, &t.0, ID, "1.0.0", "ok", Some(&key));
    let cfg = config("");
    let mut h = start(None, &cfg, &[("TORU_FAULT_PACKAGE_STEP", "probation")]);
    key.trust(&h);
    let token = admin_token(&h);
    let o = cli_install(&h, "install", &v1, &[]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let status = eventually("the host to exit", || h.child.try_wait().unwrap());
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");

    h.restart(opts(None, &cfg, &[]));
    let r = api(&h, &token, "GET", &format!("/api/plugins/{ID}"), None);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(packages_on_disk(&h), Vec::<String>::new());
    assert_eq!(staging(&h), Vec::<String>::new());
    // Nothing runs from the packages dir (or its parent, where the store is).
    assert_eq!(
        processes_under(&h.data_dir.canonicalize().unwrap()),
        Vec::new()
    );
    let undone = api(&h, &token, "GET", "/api/events?limit=200", None).json();
    let undone: Vec<&serde_json::Value> = undone
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["plugin"] == ID && e["kind"] == "update-rolled-back")
        .collect();
    assert_eq!(undone.len(), 1, "{undone:?}");
    let msg = undone[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("the host stopped during the probation"),
        "{msg}"
    );

    cli_install_ok(&h, "install", &v1);
    let p = wait_ready(&h, &token, ID);
    assert_eq!(p["version"], "1.0.0", "{p}");
}

/// A host killed (SIGKILL, no hook) while a package is still arriving leaves its staging folder
/// behind; the next start removes it, and the installed version runs on.
#[test]
fn a_host_killed_mid_upload_leaves_no_staging_behind() {
    use std::io::Write;
    let bins = Bins::locate().unwrap();
    let t = TempDir::new("pf").unwrap();
    let key = Key::new(&bins, "publisher");
    let v1 = stress(&bins, &t.0, ID, "1.0.0", "ok", Some(&key));
    let v2 = stress(&bins, &t.0, ID, "2.0.0", "ok", Some(&key));
    let cfg = config("");
    let mut h = start(None, &cfg, &[]);
    key.trust(&h);
    let token = admin_token(&h);
    cli_install_ok(&h, "install", &v1);
    wait_ready(&h, &token, ID);
    kv_set(&h, &token, ID, "before", "the upload");

    let bytes = std::fs::read(&v2).unwrap();
    let sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(signature_of(&v2))
    };
    let mut s = std::net::TcpStream::connect(h.addr).unwrap();
    let head = format!(
        "POST /api/packages/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Toru-Csrf: 1\r\nContent-Type: application/octet-stream\r\nX-Toru-Signature: {sig}\r\n\
         Content-Length: {}\r\n\r\n",
        bytes.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let staged = eventually("the upload to reach .staging", || {
        let dirs = staging(&h);
        let file = packages_dir(&h)
            .join(".staging")
            .join(dirs.first()?)
            .join("package.toru");
        (std::fs::metadata(&file).ok()?.len() > 0).then_some(dirs)
    });
    assert_eq!(staged.len(), 1, "{staged:?}");

    h.restart(opts(None, &cfg, &[]));
    drop(s);
    assert_eq!(staging(&h), Vec::<String>::new());
    let p = wait_ready(&h, &token, ID);
    assert_eq!(p["version"], "1.0.0", "{p}");
    assert_eq!(versions_on_disk(&h, ID), ["1.0.0"]);
    assert_eq!(packages_on_disk(&h), [ID]);
    cli_install_ok(&h, "update", &v2);
    let p = wait_ready(&h, &token, ID);
    assert_eq!(p["version"], "2.0.0", "{p}");
    assert_eq!(
        kv_get(&h, &token, ID, "before").as_deref(),
        Some("the upload")
    );
}
