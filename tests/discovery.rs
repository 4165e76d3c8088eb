//! Discovery against the real binary: which file a plugin id belongs to, `--metadata` runs that
//! hang or leave children behind, discovery while the host serves and while it is asked to stop,
//! and a binary replaced in place.
//!
//! The failures these pin down (issue 10, defects 5, 6 and part of 9):
//! - a `aaa-steal.binary` whose metadata claimed `hello-rust` sorted first and, after a restart,
//!   ran as `hello-rust` with its KV, while the real one was skipped as a "duplicate";
//! - a `--metadata` run killed at its timeout left its children running (in the host's own
//!   process group), more with every rescan;
//! - discovery ran one binary after another before the HTTP server started (six hanging binaries
//!   kept `/api/health` silent for 30 s) and inside the event loop (a SIGTERM during a rescan took
//!   29 s to act);
//! - a binary replaced under the same name kept its old metadata until the host restarted.
//!
//! The hanging `--metadata` scripts block on a FIFO the test writes to, so the hang lasts until the
//! test releases it (the host's timeout is set to a day): nothing here depends on how long a step
//! takes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_util;
mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Bins, Host, HostOpts, PluginSrc, alive, built, eventually, install, temp_dir};

/// A `--metadata` timeout of a day: a hang lasts until the test releases it.
/// The scripts below record pids and marks in a folder of the test from their `--metadata` run
/// (a confined `--metadata` run may write nowhere, docs/ISOLATION.md) or exec a binary of the
/// build folder: these tests of process handling and rescans run without confinement
/// (`tests/isolation.rs` covers it).
const UNCONFINED: &str = "[isolation]\nenabled = false\n";
const NO_METADATA_TIMEOUT: &str =
    "[supervisor]\nmetadata_timeout_ms = 86400000\n[isolation]\nenabled = false\n";

fn opts(plugins: Vec<PluginSrc>) -> HostOpts {
    HostOpts {
        plugins,
        ..Default::default()
    }
}

fn cli_json(h: &Host, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = h.cli(&a, None);
    assert!(
        out.status.success(),
        "toru {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn plugins(h: &Host) -> Vec<Value> {
    cli_json(h, &["plugins"]).as_array().unwrap().clone()
}

fn plugin(h: &Host, id: &str) -> Option<Value> {
    plugins(h).into_iter().find(|p| p["id"] == id)
}

/// The events of `name` (a plugin id, or the file name of a skipped binary), oldest first.
fn events(h: &Host, name: &str) -> Vec<Value> {
    let mut v = cli_json(h, &["events", name, "--limit", "500"])
        .as_array()
        .unwrap()
        .clone();
    v.reverse();
    v
}

/// The file plugin `id` runs from (its file name), or `None` when no plugin has that id.
fn runs_from(h: &Host, id: &str) -> Option<String> {
    plugin(h, id).map(|p| {
        let binary = PathBuf::from(p["binary"].as_str().unwrap());
        binary.file_name().unwrap().to_string_lossy().into_owned()
    })
}

/// The newest event of the skipped binary `file` is `metadata-invalid` and mentions `needle`.
fn assert_refused(h: &Host, file: &str, needle: &str) {
    let evs = events(h, file);
    let last = evs.last().unwrap_or_else(|| panic!("no event for {file}"));
    assert_eq!(last["kind"], "metadata-invalid", "{file}: {evs:?}");
    let msg = last["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{file}: {msg:?} lacks {needle:?}");
}

/// `toru rescan` (answers once the scan is done).
fn rescan(h: &Host) -> Value {
    cli_json(h, &["rescan"])
}

/// A script whose `--metadata` claims `id` at `route` with `version`, and which otherwise runs
/// the real hello-rust plugin: accepted, it would serve as `id`.
fn claimant(name: &str, id: &str, route: &str, version: &str) -> PluginSrc {
    let hello = Bins::locate().unwrap().get("hello-rust");
    PluginSrc::Script {
        name: name.into(),
        body: format!(
            "#!/bin/sh\n\
             if [ \"$1\" = --metadata ]; then\n\
             echo '{{\"id\":\"{id}\",\"name\":\"Claimant\",\"version\":\"{version}\",\"icon\":\"x\",\"route\":\"{route}\",\"protocol\":\"1.1\"}}'\n\
             exit 0\n\
             fi\n\
             exec {} \"$@\"\n",
            hello.display()
        ),
    }
}

/// A script whose `--metadata` starts a child (`<marks>/<name>.child` holds its pid), records its
/// own pid in `<marks>/<name>.pid` (written whole: renamed into place), waits for a line on the
/// FIFO `<marks>/<name>.release`, then prints something that is not JSON.
fn hanging(marks: &Path, name: &str) -> PluginSrc {
    let m = marks.display();
    let fifo = marks.join(format!("{name}.release"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", fifo.display());
    PluginSrc::Script {
        name: name.into(),
        body: format!(
            "#!/bin/sh\n\
             [ \"$1\" = --metadata ] || exit 1\n\
             sleep 100000 >/dev/null 2>&1 &\n\
             echo $! > {m}/{name}.child\n\
             echo $$ > {m}/{name}.tmp && mv {m}/{name}.tmp {m}/{name}.pid\n\
             read line < {m}/{name}.release\n\
             echo 'not json'\n"
        ),
    }
}

/// The pid in `<marks>/<file>`, once the file exists.
fn pid_in(marks: &Path, file: &str) -> u32 {
    let path = marks.join(file);
    eventually(&format!("{} to be written", path.display()), || {
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
}

/// Wait until none of `pids` runs (a SIGKILL is delivered, not executed, by kill(2)).
fn assert_all_gone(what: &str, pids: &[u32]) {
    eventually(what, || pids.iter().all(|p| !alive(*p)).then_some(()));
}

/// A fresh root with a `marks` dir for the scripts to write into.
fn root_with_marks(tag: &str) -> (PathBuf, PathBuf) {
    let root = temp_dir(tag);
    let marks = root.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    (root, marks)
}

/// Defect 5: an id belongs to the file it was first bound to. A claimant that sorts first, at the
/// first start, after a restart and at a rescan, is refused with an event naming that file.
#[test]
fn a_plugin_cannot_take_over_another_plugins_id_whatever_the_order() {
    // First start, both new: the file named after the id wins although the claimant sorts first.
    let mut h = Host::start(opts(vec![
        built("hello-rust"),
        claimant("aaa-steal", "hello-rust", "/steal", "6.6.6"),
    ]));
    assert_eq!(
        runs_from(&h, "hello-rust").as_deref(),
        Some("hello-rust.binary")
    );
    assert_refused(&h, "aaa-steal.binary", "hello-rust.binary");

    // A restart: the claimant still sorts first; the id stays with the file it is bound to.
    assert!(h.stop().success());
    h.restart(opts(vec![]));
    assert_eq!(
        runs_from(&h, "hello-rust").as_deref(),
        Some("hello-rust.binary")
    );
    assert_ne!(plugin(&h, "hello-rust").unwrap()["version"], "6.6.6");
    assert_refused(&h, "aaa-steal.binary", "hello-rust.binary");

    // A rescan: the same for a claimant that sorts after it, and for one taking its route.
    install(
        &h.plugins_dir,
        &claimant("zzz-steal", "hello-rust", "/zzz", "6.6.6"),
    );
    install(
        &h.plugins_dir,
        &claimant("route-steal", "route-steal", "/hello-rust", "1"),
    );
    let report = rescan(&h);
    assert_eq!(report["added"], json!([]), "{report}");
    assert_eq!(
        runs_from(&h, "hello-rust").as_deref(),
        Some("hello-rust.binary")
    );
    assert_refused(&h, "zzz-steal.binary", "hello-rust.binary");
    assert_refused(&h, "route-steal.binary", "hello-rust");
    assert!(plugin(&h, "route-steal").is_none());

    // Several new claimants of one id, none named after it: none of them gets it.
    install(&h.plugins_dir, &claimant("one", "fresh-id", "/one", "1"));
    install(&h.plugins_dir, &claimant("two", "fresh-id", "/two", "1"));
    rescan(&h);
    assert!(plugin(&h, "fresh-id").is_none());
    assert_refused(&h, "one.binary", "two.binary");
    assert_refused(&h, "two.binary", "one.binary");
}

/// Defect 5, the legitimate case: the owner renames a plugin's file. The id is not handed to the
/// new file by itself; `toru plugins unbind ID` does it, and the plugin keeps its data.
#[test]
fn a_renamed_plugin_keeps_its_id_and_data_once_an_admin_unbinds_it() {
    let mut h = Host::start(opts(vec![built("hello-rust")]));
    let cookie = http_util::setup_admin(&h);
    let kv = |body: Value| http_util::post(&h, "/api/plugins/hello-rust/kv", Some(&cookie), &body);
    assert_eq!(
        kv(json!({"action": "set", "key": "k", "value": "kept"})).status,
        200
    );

    // While its bound file runs it, the id cannot be unbound.
    let out = h.cli(&["plugins", "unbind", "hello-rust"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hello-rust.binary"), "{err}");

    std::fs::rename(
        h.plugins_dir.join("hello-rust.binary"),
        h.plugins_dir.join("hello-renamed.binary"),
    )
    .unwrap();
    let report = rescan(&h);
    assert_eq!(report["removed"], json!(["hello-rust"]), "{report}");
    assert!(runs_from(&h, "hello-rust").is_none());
    assert_refused(&h, "hello-renamed.binary", "toru plugins unbind hello-rust");

    let out = h.cli(&["plugins", "unbind", "hello-rust"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = events(&h, "hello-rust");
    assert_eq!(evs.last().unwrap()["kind"], "unbound", "{evs:?}");
    let report = rescan(&h);
    assert_eq!(report["added"], json!(["hello-rust"]), "{report}");
    assert_eq!(
        runs_from(&h, "hello-rust").as_deref(),
        Some("hello-renamed.binary")
    );
    assert_eq!(
        kv(json!({"action": "get", "key": "k"})).json()["value"],
        "kept"
    );

    // With the daemon stopped, the command works on the store; the next start binds the id to
    // the file that claims it then.
    assert!(h.stop().success());
    std::fs::rename(
        h.plugins_dir.join("hello-renamed.binary"),
        h.plugins_dir.join("hello-back.binary"),
    )
    .unwrap();
    let out = h.cli(&["plugins", "unbind", "hello-rust"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.restart(opts(vec![]));
    assert_eq!(
        runs_from(&h, "hello-rust").as_deref(),
        Some("hello-back.binary")
    );
}

/// Defect 6: a `--metadata` run that outlives its timeout is killed with its whole process group,
/// and one that exits leaves nothing behind either; at start and at every rescan.
#[test]
fn a_metadata_run_leaves_no_process_behind() {
    let (root, marks) = root_with_marks("meta");
    let m = marks.display();
    let stuck = PluginSrc::Script {
        name: "stuck".into(),
        body: format!(
            "#!/bin/sh\n\
             sleep 100000 >/dev/null 2>&1 &\n\
             echo $! > {m}/stuck.child\n\
             echo $$ > {m}/stuck.pid\n\
             exec sleep 100000\n"
        ),
    };
    let leaves = PluginSrc::Script {
        name: "leaves".into(),
        body: format!(
            "#!/bin/sh\n\
             sleep 100000 >/dev/null 2>&1 &\n\
             echo $! > {m}/leaves.child\n\
             echo '{{\"id\":\"Bad Id!\",\"name\":\"x\",\"version\":\"1\",\"icon\":\"x\",\"route\":\"/leaves\"}}'\n"
        ),
    };
    // READY=1 comes once discovery is over, so past the timeout of `stuck`.
    let h = Host::start(HostOpts {
        plugins: vec![stuck, leaves],
        root: Some(root),
        config: Some(format!(
            "[supervisor]\nmetadata_timeout_ms = 1000\n{UNCONFINED}"
        )),
        ..Default::default()
    });
    assert_refused(&h, "stuck.binary", "did not finish");
    assert_refused(&h, "leaves.binary", "invalid id");
    let first = ["stuck.pid", "stuck.child", "leaves.child"].map(|f| pid_in(&marks, f));
    assert_all_gone("the first metadata runs and their children", &first);

    for f in ["stuck.pid", "stuck.child", "leaves.child"] {
        std::fs::remove_file(marks.join(f)).unwrap();
    }
    rescan(&h);
    let second = ["stuck.pid", "stuck.child", "leaves.child"].map(|f| pid_in(&marks, f));
    assert_all_gone("the rescan's metadata runs and their children", &second);
}

/// Defect 6: every `--metadata` runs at once, the HTTP server answers meanwhile, and READY=1 waits
/// until discovery is over.
#[test]
fn discovery_runs_in_parallel_while_the_host_serves_and_ready_follows_it() {
    let (root, marks) = root_with_marks("par");
    let names = ["hang-1", "hang-2", "hang-3"];
    let mut h = Host::start_serving(HostOpts {
        plugins: names.iter().map(|n| hanging(&marks, n)).collect(),
        root: Some(root),
        config: Some(NO_METADATA_TIMEOUT.into()),
        ..Default::default()
    });
    // All three hang at the same time: one after another, only the first would ever start.
    let leaders: Vec<u32> = names
        .iter()
        .map(|n| pid_in(&marks, &format!("{n}.pid")))
        .collect();
    let r = h.http("GET", "/api/health", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(leaders.iter().all(|p| alive(*p)), "still hanging");

    for n in names {
        std::fs::write(marks.join(format!("{n}.release")), "go\n").unwrap();
    }
    h.wait_ready();
    let children: Vec<u32> = names
        .iter()
        .map(|n| pid_in(&marks, &format!("{n}.child")))
        .collect();
    for n in names {
        assert_refused(&h, &format!("{n}.binary"), "not valid JSON");
    }
    assert_all_gone("the children of the finished metadata runs", &children);
}

/// Defect 6: SIGTERM stops the host while a `--metadata` hangs, during a rescan and during the
/// discovery at start, and the hanging run goes with its group.
#[test]
fn sigterm_during_discovery_stops_the_host_and_its_metadata_runs() {
    let (root, marks) = root_with_marks("term");
    let mut h = Host::start(HostOpts {
        root: Some(root.clone()),
        config: Some(NO_METADATA_TIMEOUT.into()),
        ..Default::default()
    });
    install(&h.plugins_dir, &hanging(&marks, "hang"));
    assert!(support::kill(h.pid(), libc::SIGHUP));
    let leader = pid_in(&marks, "hang.pid");
    let child = pid_in(&marks, "hang.child");
    assert!(support::kill(h.pid(), libc::SIGTERM));
    let status = eventually("the host to exit", || h.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}\n{}", h.log());
    assert_all_gone("the rescan's metadata run and its child", &[leader, child]);

    // The same during the discovery at start (READY=1 never comes: the script still hangs).
    for f in ["hang.pid", "hang.child"] {
        std::fs::remove_file(marks.join(f)).unwrap();
    }
    let mut h = Host::start_serving(HostOpts {
        root: Some(root),
        config: Some(NO_METADATA_TIMEOUT.into()),
        ..Default::default()
    });
    let leader = pid_in(&marks, "hang.pid");
    let child = pid_in(&marks, "hang.child");
    assert!(support::kill(h.pid(), libc::SIGTERM));
    let status = eventually("the host to exit", || h.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}\n{}", h.log());
    assert_all_gone(
        "the first discovery's metadata run and its child",
        &[leader, child],
    );
}

/// Part of defect 9: a binary replaced under the same name is read again at the next rescan; new
/// metadata restarts the plugin with it, the same metadata leaves it running.
#[test]
fn a_replaced_binary_is_read_again_at_the_next_rescan() {
    // The claimant execs hello-rust from the build folder, which a plugin's own uid may not pass
    // (a checkout in a private folder): this test of rescans runs unconfined.
    let h = Host::start(HostOpts {
        config: Some(UNCONFINED.into()),
        ..opts(vec![claimant("swap", "swap", "/swap", "1")])
    });
    let ready_pid = |h: &Host, not: &Value| {
        eventually("swap ready with a new process", || {
            let p = plugin(h, "swap")?;
            (p["state"] == "ready" && p["pid"] != *not).then_some(p)
        })
    };
    let first = ready_pid(&h, &Value::Null);
    assert_eq!(first["version"], "1");

    // Replaced the way installers do: written beside it, renamed over it.
    let replace = |src: PluginSrc| {
        let PluginSrc::Script { body, .. } = src else {
            unreachable!()
        };
        let tmp = h.plugins_dir.join("swap.new");
        std::fs::write(&tmp, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, h.plugins_dir.join("swap.binary")).unwrap();
    };
    replace(claimant("swap", "swap", "/swap", "2"));
    let report = rescan(&h);
    assert_eq!(report["replaced"], json!(["swap"]), "{report}");
    let second = ready_pid(&h, &first["pid"]);
    assert_eq!(second["version"], "2");

    // Same metadata, new file: nothing to restart for.
    let PluginSrc::Script { body, .. } = claimant("swap", "swap", "/swap", "2") else {
        unreachable!()
    };
    replace(PluginSrc::Script {
        name: "swap".into(),
        body: format!("{body}# rebuilt\n"),
    });
    let report = rescan(&h);
    assert_eq!(report["replaced"], json!([]), "{report}");
    let third = plugin(&h, "swap").unwrap();
    assert_eq!(
        (&third["version"], &third["pid"]),
        (&json!("2"), &second["pid"])
    );
}

/// Found on the board image under QEMU: hello-python's `--metadata` took longer than the timeout
/// while the device was still booting, and the plugin stayed "invalid" until someone rescanned. A
/// binary skipped only because its `--metadata` timed out is asked again later by itself.
#[test]
fn a_metadata_run_that_timed_out_is_retried_without_a_rescan() {
    let (root, marks) = root_with_marks("retry");
    let hello = Bins::locate().unwrap().get("hello-rust");
    let m = marks.display();
    let fifo = marks.join("never");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // The first `--metadata` run hangs (until it is killed at the timeout); later ones answer.
    let slow = PluginSrc::Script {
        name: "slowmeta".into(),
        body: format!(
            "#!/bin/sh\n\
             if [ \"$1\" = --metadata ]; then\n\
             if [ ! -e {m}/once ]; then touch {m}/once; read line < {m}/never; fi\n\
             echo '{{\"id\":\"slowmeta\",\"name\":\"Slow\",\"version\":\"1\",\"icon\":\"x\",\"route\":\"/slowmeta\",\"protocol\":\"1.1\"}}'\n\
             exit 0\n\
             fi\n\
             exec {} \"$@\"\n",
            hello.display()
        ),
    };
    let h = Host::start(HostOpts {
        root: Some(root),
        plugins: vec![slow],
        config: Some(format!(
            "[supervisor]\nmetadata_timeout_ms = 300\n{UNCONFINED}"
        )),
        ..Default::default()
    });
    assert!(marks.join("once").exists(), "the first run happened");
    let state = eventually("slowmeta to be found and ready without a rescan", || {
        plugin(&h, "slowmeta")
            .and_then(|p| p["state"].as_str().map(String::from))
            .filter(|s| s == "ready")
    });
    assert_eq!(state, "ready");
}
