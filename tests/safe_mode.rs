//! Safe mode on the real host with real plugins (`hello-rust` third-party, `sysinfo` kept): after
//! the configured number of `kill -9`s of the host in a row, the next start holds the third-party
//! plugin (state `held`, its enabled flag unchanged), starts the kept one, names the plugin that
//! was running as the likely culprit, and says so in `/api/system`, the events, the metrics and
//! `toru system safe-mode`; leaving through the API starts the held plugin. A run in safe mode
//! that lasts `clean_secs` resets the count, and the next start, even after one more kill, leaves
//! safe mode; a clean stop (SIGTERM) never counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_util;
mod support;

use http_util::{bearer, create_token, setup_admin};
use serde_json::{Value, json};
use support::{Host, HostOpts, Resp, built, eventually};

fn opts(h: Option<&Host>, safe_mode: &str) -> HostOpts {
    HostOpts {
        root: h.map(|h| h.root.clone()),
        plugins: vec![built("hello-rust"), built("sysinfo")],
        config: Some(format!(
            "[supervisor]\nbackoff_base_ms = 50\n[safe_mode]\n{safe_mode}"
        )),
        ..Default::default()
    }
}

fn system(h: &Host, token: &str) -> Value {
    let r = bearer(h, "GET", "/api/system", token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The host's safe-mode status, as `/api/system` says it.
fn safe_mode(h: &Host, token: &str) -> Value {
    system(h, token)["safe_mode"].clone()
}

/// The host is not in safe mode and counts `unclean` unclean runs in a row; returns the status.
#[track_caller]
fn assert_not_in_safe_mode(h: &Host, token: &str, unclean: u64) -> Value {
    let s = safe_mode(h, token);
    assert_eq!(
        (s["active"].clone(), s["unclean_in_a_row"].clone()),
        (json!(false), json!(unclean)),
        "{s}"
    );
    s
}

/// `POST /api/system/safe-mode/leave` with `token`.
fn leave(h: &Host, token: &str) -> Resp {
    bearer(
        h,
        "POST",
        "/api/system/safe-mode/leave",
        token,
        Some(&json!({})),
    )
}

fn state(h: &Host, token: &str, id: &str) -> Value {
    let r = bearer(h, "GET", &format!("/api/plugins/{id}"), token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Wait until plugin `id` is in `want`.
fn wait_state(h: &Host, token: &str, id: &str, want: &str) -> Value {
    eventually(&format!("{id} to be {want}"), || {
        let p = state(h, token, id);
        (p["state"] == want).then_some(p)
    })
}

/// The host's events, newest first.
fn host_events(h: &Host, token: &str) -> Vec<Value> {
    let r = bearer(h, "GET", "/api/events?limit=200", token, None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["plugin"] == "host")
        .cloned()
        .collect()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

/// Both plugins up, then `kill -9` of the host and a start on the same dirs (the kit's restart
/// kills the host first).
fn kill_and_restart(h: &mut Host, token: &str, safe_mode: &str) {
    wait_state(h, token, "hello-rust", "ready");
    wait_state(h, token, "sysinfo", "ready");
    kill_and_restart_held(h, safe_mode);
}

/// `kill -9` of the host and a start on the same dirs, whatever its plugins are doing.
fn kill_and_restart_held(h: &mut Host, safe_mode: &str) {
    let o = opts(Some(h), safe_mode);
    h.restart(o);
}

#[test]
fn safe_mode_is_entered_after_the_configured_kills_and_left_through_the_api() {
    const SAFE: &str = "after_unclean = 2\nkeep = [\"sysinfo\"]\n";
    let mut h = Host::start(opts(None, SAFE));
    setup_admin(&h);
    let token = create_token(&h, "safe", "admin");
    let s = safe_mode(&h, &token);
    assert_eq!(s["active"], false, "{s}");
    assert_eq!(s["unclean_in_a_row"], 0, "{s}");
    assert_eq!(s["after_unclean"], 2, "{s}");
    assert_eq!(s["keep"], json!(["sysinfo"]), "{s}");

    // One kill: counted, named, not yet safe mode.
    kill_and_restart(&mut h, &token, SAFE);
    let s = assert_not_in_safe_mode(&h, &token, 1);
    assert_eq!(s["likely_culprits"], json!(["hello-rust"]), "{s}");
    wait_state(&h, &token, "hello-rust", "ready");
    let ev = host_events(&h, &token);
    assert_eq!(count(&ev, "unclean-exit"), 1, "{ev:?}");
    assert_eq!(count(&ev, "safe-mode"), 0, "{ev:?}");

    // Two in a row: safe mode. The third-party plugin is held, the kept one runs.
    kill_and_restart(&mut h, &token, SAFE);
    let s = safe_mode(&h, &token);
    assert_eq!(s["active"], true, "{s}");
    assert_eq!(s["unclean_in_a_row"], 2, "{s}");
    assert_eq!(s["likely_culprits"], json!(["hello-rust"]), "{s}");
    assert!(s["entered_at"].is_string(), "{s}");
    let newest = &s["culprits"][0];
    assert!(
        newest["plugins"]
            .as_array()
            .unwrap()
            .contains(&json!("hello-rust")),
        "{s}"
    );
    let held = state(&h, &token, "hello-rust");
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["enabled"], true, "the enabled flag is unchanged");
    assert_eq!(held["pid"], Value::Null, "{held}");
    assert_eq!(held["consecutive_failures"], 0, "{held}");
    wait_state(&h, &token, "sysinfo", "ready");
    let s = safe_mode(&h, &token);
    assert_eq!(s["held"], json!(["hello-rust"]), "{s}");
    let ev = host_events(&h, &token);
    assert_eq!(count(&ev, "unclean-exit"), 2, "{ev:?}");
    assert_eq!(count(&ev, "safe-mode"), 1, "{ev:?}");
    let entered = ev.iter().find(|e| e["kind"] == "safe-mode").unwrap();
    assert!(
        entered["message"]
            .as_str()
            .unwrap()
            .contains("likely culprit: hello-rust"),
        "{entered}"
    );
    let metrics = bearer(&h, "GET", "/metrics", &token, None).text();
    assert!(metrics.contains("\ntoru_safe_mode 1\n"), "{metrics}");
    assert!(metrics.contains("\ntoru_unclean_runs 2\n"), "{metrics}");
    assert!(
        metrics.contains("toru_plugin_state{plugin=\"hello-rust\",state=\"held\"} 1"),
        "{metrics}"
    );
    // The CLI through the daemon says the same.
    let o = h.cli(&["system", "safe-mode", "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cli["active"], true, "{cli}");
    assert_eq!(cli["held"], json!(["hello-rust"]), "{cli}");
    let o = h.cli(&["system", "safe-mode"], None);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("ACTIVE") && text.contains("hello-rust"),
        "{text}"
    );
    // Forwarded requests to a held plugin say why it does not answer.
    let r = bearer(&h, "GET", "/api/plugins/route/hello-rust/", &token, None);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "plugin_unavailable", "{}", r.text());
    assert!(r.text().contains("it is held"), "{}", r.text());
    // A viewer may not leave.
    let viewer = create_token(&h, "look", "viewer");
    let r = leave(&h, &viewer);
    assert_eq!(r.status, 403, "{}", r.text());

    // Leave: the held plugin starts, the count resets, the event says so.
    let r = leave(&h, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let left = r.json();
    assert_eq!(
        (left["active"].clone(), left["unclean_in_a_row"].clone()),
        (json!(false), json!(0)),
        "{left}"
    );
    wait_state(&h, &token, "hello-rust", "ready");
    let ev = host_events(&h, &token);
    assert_eq!(count(&ev, "safe-mode-left"), 1, "{ev:?}");
    let r = leave(&h, &token);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "not_in_safe_mode", "{}", r.text());
    let metrics = bearer(&h, "GET", "/metrics", &token, None).text();
    assert!(metrics.contains("\ntoru_safe_mode 0\n"), "{metrics}");

    // Left for good: the next start (after a kill, one below the threshold) runs everything.
    kill_and_restart(&mut h, &token, SAFE);
    assert_not_in_safe_mode(&h, &token, 1);
    wait_state(&h, &token, "hello-rust", "ready");
}

/// The test: safe mode entered after the configured number of forced crashes, and left by
/// a clean run — the count resets once the run in safe mode has lasted `clean_secs` (safe mode
/// lasts for that run), and the next start, even after one more `kill -9`, is not in safe mode.
#[test]
fn safe_mode_is_left_at_the_start_after_a_clean_run_and_one_more_kill_does_not_enter_it() {
    // A long clean run for the runs killed on purpose (a reset between them would spoil the
    // count), a second for the run in safe mode.
    const SLOW: &str = "after_unclean = 2\nclean_secs = 600\nkeep = [\"sysinfo\"]\n";
    const QUICK: &str = "after_unclean = 2\nclean_secs = 1\nkeep = [\"sysinfo\"]\n";
    let mut h = Host::start(opts(None, SLOW));
    setup_admin(&h);
    let token = create_token(&h, "safe", "admin");
    kill_and_restart(&mut h, &token, SLOW);
    kill_and_restart(&mut h, &token, QUICK);
    let s = safe_mode(&h, &token);
    assert_eq!(s["active"], true, "two in a row: {s}");
    assert_eq!(state(&h, &token, "hello-rust")["state"], "held");
    // The run lasts a second: the count goes back to nothing (seen through the API), safe mode
    // stays for this run, and still names why.
    let s = eventually("the clean run to reset the count", || {
        let s = safe_mode(&h, &token);
        (s["unclean_in_a_row"] == 0).then_some(s)
    });
    assert_eq!(s["active"], true, "not left in the middle of the run: {s}");
    assert_eq!(s["likely_culprits"], json!(["hello-rust"]), "{s}");
    assert_eq!(state(&h, &token, "hello-rust")["state"], "held");
    // One more kill -9: one in a row, below the threshold: the start leaves safe mode.
    kill_and_restart_held(&mut h, SLOW);
    assert_not_in_safe_mode(&h, &token, 1);
    wait_state(&h, &token, "hello-rust", "ready");
    let ev = host_events(&h, &token);
    let left = ev.iter().find(|e| e["kind"] == "safe-mode-left").unwrap();
    assert_eq!(left["details"]["reason"], "clean-run", "{left}");
    let newest = ev.iter().find(|e| e["kind"] == "unclean-exit").unwrap();
    assert_eq!(newest["details"]["unclean_in_a_row"], 1, "{newest}");
    assert_eq!(count(&ev, "safe-mode"), 1, "entered once: {ev:?}");
}

#[test]
fn a_clean_stop_never_counts() {
    const SAFE: &str = "after_unclean = 1\n";
    let mut h = Host::start(opts(None, SAFE));
    setup_admin(&h);
    let token = create_token(&h, "safe", "admin");
    for _ in 0..3 {
        wait_state(&h, &token, "hello-rust", "ready");
        assert!(h.stop().success(), "SIGTERM: a clean stop");
        h.restart(opts(Some(&h), SAFE));
        assert_not_in_safe_mode(&h, &token, 0);
    }
    assert_eq!(count(&host_events(&h, &token), "unclean-exit"), 0);
    // With the daemon stopped, the CLI reads the record: nothing counted.
    assert!(h.stop().success());
    let o = h.cli(&["system", "safe-mode", "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stored["unclean_in_a_row"], 0, "{stored}");
    // The same threshold reached by one kill: safe mode, so the count above was real.
    h.restart(opts(Some(&h), SAFE));
    kill_and_restart(&mut h, &token, SAFE);
    assert_eq!(safe_mode(&h, &token)["active"], true);
    assert_eq!(state(&h, &token, "hello-rust")["state"], "held");
    // Left with the daemon stopped: the next start starts normally.
    assert!(h.stop().success());
    let o = h.cli(&["system", "safe-mode", "--leave"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    h.restart(opts(Some(&h), SAFE));
    assert_eq!(safe_mode(&h, &token)["active"], false);
    wait_state(&h, &token, "hello-rust", "ready");
    let o = h.cli(&["system", "safe-mode", "--leave"], None);
    assert!(!o.status.success(), "not in safe mode");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not in safe mode"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
