//! What plugin processes leave behind, through the real `toru` binary and real plugins.
//!
//! Found under fault injection (issue 10, defect 9): stale plugin sockets stayed in the runtime dir
//! after a stop, and a second host started with the same runtime dir (another data dir) took over
//! the first's control socket. Now sockets go with their plugin and at start, and the runtime dir
//! is locked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::{Host, HostOpts, KitError, PluginSrc, eventually};

/// Fast timings so stops take milliseconds.
const FAST: &str = "[supervisor]\nheartbeat_interval_ms = 200\nheartbeat_misses = 3\nbackoff_base_ms = 20\nshutdown_grace_ms = 1000\nterm_grace_ms = 500\n";

fn stress(mode: &str) -> PluginSrc {
    PluginSrc::Built {
        bin: "stress",
        as_name: format!("stress-{mode}"),
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

fn read_pid(h: &Host, file: &str) -> Option<u32> {
    std::fs::read_to_string(h.plugins_dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Defect 9: a second host with the same runtime dir (and its own data dir) refuses to start,
/// with exit code 3 and a sentence naming the runtime dir, before it touches a socket of the
/// first; the first keeps its control socket and its plugin's socket.
#[test]
fn a_second_host_on_the_same_runtime_dir_is_refused() {
    let first = Host::start(HostOpts {
        plugins: vec![stress("ok")],
        config: Some(FAST.into()),
        ..Default::default()
    });
    let plugin_pid = read_pid(&first, "stress-ok.pid").unwrap();
    let bins = support::Bins::locate().unwrap();
    let second = Host::try_start(
        &bins,
        &HostOpts {
            plugins: vec![stress("ok")],
            config: Some(FAST.into()),
            runtime_dir: Some(first.runtime_dir.clone()),
            ..Default::default()
        },
    );
    match second {
        Err(KitError::Exited { status, log }) => {
            assert_eq!(status.code(), Some(3), "{log}");
            assert!(
                log.contains("already running with the runtime dir")
                    && log.contains(first.runtime_dir.to_str().unwrap()),
                "{log}"
            );
        }
        Err(other) => panic!("{other}"),
        Ok(h) => panic!(
            "a second host started on the runtime dir {}; its log:\n{}",
            first.runtime_dir.display(),
            h.log()
        ),
    }
    // The first host still answers on its control socket, with its own plugin.
    let all = cli_json(&first, &["plugins"]);
    assert_eq!(all[0]["id"], "stress-ok", "{all}");
    assert_eq!(all[0]["pid"], plugin_pid, "{all}");
    assert!(first.runtime_dir.join("plugins/stress-ok.sock").exists());
}

/// Defect 9: a plugin's socket is removed when it stops, every socket when the host stops, and a
/// socket a previous run left is removed at start.
#[test]
fn plugin_sockets_go_when_plugins_stop_and_stale_ones_at_start() {
    let root = support::temp_dir("sock");
    let sockets = root.join("run/plugins");
    std::fs::create_dir_all(&sockets).unwrap();
    // A socket whose listener is gone, as a host killed with `kill -9` leaves it.
    drop(std::os::unix::net::UnixListener::bind(sockets.join("gone.sock")).unwrap());
    std::fs::write(sockets.join("notes.txt"), "not a socket").unwrap();
    let mut h = Host::start(HostOpts {
        plugins: vec![stress("ok"), support::built("hello-rust")],
        root: Some(root.clone()),
        config: Some(FAST.into()),
        ..Default::default()
    });
    assert!(!sockets.join("gone.sock").exists(), "stale socket kept");
    assert!(
        sockets.join("notes.txt").exists(),
        "only sockets are removed"
    );
    assert!(sockets.join("stress-ok.sock").exists());

    cli_json(&h, &["disable", "stress-ok"]);
    eventually("stress-ok's socket removed", || {
        (!sockets.join("stress-ok.sock").exists()).then_some(())
    });
    assert!(
        sockets.join("hello-rust.sock").exists(),
        "a running plugin's socket stays"
    );
    assert!(h.stop().success());
    let left: Vec<_> = std::fs::read_dir(&sockets)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".sock"))
        .collect();
    assert!(left.is_empty(), "sockets left after a stop: {left:?}");
}
