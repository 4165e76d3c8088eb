//! What every plugin process is confined to, whoever runs the host (the first part of the
//! isolation issue; users, files, cgroups and seccomp come with it): no new privileges, no core
//! dumps, and an open-files limit (`[supervisor] max_open_files`). A plugin that opens files until
//! refused is contained: it gets `EMFILE` at the limit, the host and the other plugins carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Host, HostOpts, PluginSrc, eventually};

fn stress(mode: &str) -> PluginSrc {
    PluginSrc::Built {
        bin: "stress",
        as_name: format!("stress-{mode}"),
    }
}

fn read(h: &Host, file: &str) -> Option<String> {
    h.read_report(file)
}

/// `Max <what>` soft and hard from a `/proc/PID/limits` text.
fn limit(limits: &str, what: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in {limits}"));
    let mut cols = line[what.len()..].split_whitespace();
    (
        cols.next().unwrap().to_string(),
        cols.next().unwrap().to_string(),
    )
}

#[test]
fn plugins_gain_no_privileges_dump_no_core_and_open_at_most_their_files() {
    let h = Host::start(HostOpts {
        plugins: vec![stress("ok"), stress("open-files")],
        config: Some("[supervisor]\nmax_open_files = 200\n".into()),
        ..Default::default()
    });
    let confined = eventually("stress-ok.limits", || read(&h, "stress-ok.limits"));
    assert!(
        confined
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]),
        "{confined}"
    );
    assert_eq!(
        limit(&confined, "Max core file size"),
        ("0".into(), "0".into())
    );
    assert_eq!(
        limit(&confined, "Max open files"),
        ("200".into(), "200".into())
    );

    // The greedy one stops at the limit (some descriptors are already open: its socket, pipes,
    // and under qemu-user the emulator's own).
    let opened: usize = eventually("stress-open-files.opened", || {
        read(&h, "stress-open-files.opened").and_then(|s| s.parse().ok())
    });
    assert!((100..200).contains(&opened), "opened {opened}");
    // Contained: the host answers, both plugins are ready.
    assert_eq!(h.http("GET", "/api/health", &[], None).status, 200);
    for id in ["stress-ok", "stress-open-files"] {
        let out = h.cli(&["plugins", "--json"], None);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = all
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap();
        assert_eq!(p["state"], "ready", "{p}");
    }
}
