//! Administrative commands find the running daemon through its data dir. A daemon started with a
//! custom `--runtime-dir` used to be unreachable by a command given only `--data-dir`: the CLI
//! looked for `/run/toru/control.sock`, found the store locked, and failed with "control socket
//! /run/toru/control.sock does not answer". The daemon now records its socket's path in
//! `<data-dir>/control.addr`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};

use support::{Host, HostOpts, built};

/// `toru <args> --data-dir DIR` with no runtime dir from flags or the environment.
fn toru_with_only_data_dir(h: &Host, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toru"))
        .args(args)
        .arg("--data-dir")
        .arg(&h.data_dir)
        .env_remove("TORU_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("TORU_CONFIG")
        .output()
        .unwrap()
}

fn start() -> Host {
    let root = support::temp_dir("cli");
    Host::start(HostOpts {
        plugins: vec![built("hello-rust")],
        runtime_dir: Some(root.join("elsewhere")),
        root: Some(root),
        ..Default::default()
    })
}

#[test]
fn a_command_given_only_the_data_dir_reaches_a_daemon_with_another_runtime_dir() {
    let mut h = start();
    let recorded = std::fs::read_to_string(h.data_dir.join("control.addr")).unwrap();
    assert_eq!(
        recorded.trim_end(),
        h.runtime_dir.join("control.sock").to_str().unwrap()
    );
    // Only the host's user may talk to the control socket (docs/SECURITY.md).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.runtime_dir.join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // `rescan` exists only in the daemon: success proves the command went over its socket.
    let out = toru_with_only_data_dir(&h, &["rescan", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugins = toru_with_only_data_dir(&h, &["plugins"]);
    assert!(
        String::from_utf8_lossy(&plugins.stdout).contains("hello-rust"),
        "{}",
        String::from_utf8_lossy(&plugins.stdout)
    );

    assert!(h.stop().success());
    assert!(
        !h.data_dir.join("control.addr").exists(),
        "a clean stop removes the record"
    );
    let out = toru_with_only_data_dir(&h, &["token", "list"]);
    assert!(
        out.status.success(),
        "with the daemon stopped the CLI opens the store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_record_left_by_a_killed_daemon_does_not_block_commands() {
    let mut h = start();
    assert!(support::kill(h.pid(), 9));
    h.child.wait().unwrap();
    assert!(h.data_dir.join("control.addr").exists(), "left behind");
    let out = toru_with_only_data_dir(&h, &["token", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
