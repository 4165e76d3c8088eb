//! Instance-bound licences on the real host with real signed packages: a package whose manifest
//! says `license = "required"` waits in `licence-needed` (no process, no restarts, no failures
//! counted) until a valid licence for this device is installed; each refused licence names why
//! (wrong instance, expired, not yet valid, bad signature, another publisher, another plugin) and
//! stores nothing; the plugin gets the verified claims in `init`; removing the licence stops it;
//! the licence survives a host restart; and a clock set back does not revive an expired licence
//! (libfaketime, as `tests/clock.rs`: the host's `last_seen` keeps the latest time it saw).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::path::{Path, PathBuf};

use pkg_util::{Key, admin_token, api, plugin, stderr, stdout};
use serde_json::Value;
use support::package::PackageDir;
use support::{Bins, Host, HostOpts, TempDir, eventually};

const CONFIG: &str = "[packages]\nprobation_secs = 1\n[supervisor]\nbackoff_base_ms = 50\n";

/// A stress package `id` (mode `ok`) signed by `key`; `required`: its manifest says
/// `license = "required"`.
fn package(bins: &Bins, work: &Path, key: &Key, id: &str, required: bool) -> PathBuf {
    let src = work.join(format!("src-{id}"));
    let p = PackageDir::stress(bins, &src, id, "1.0.0", "ok").unwrap();
    if required {
        let m = p
            .manifest()
            .unwrap()
            .replace("min_host", "license = \"required\"\nmin_host");
        p.file("manifest.toml", m.as_bytes()).unwrap();
    }
    let out = work.join(format!("{id}.toru"));
    p.pack_ok(bins, Some(&key.secret), &out).unwrap();
    out
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// `toru license issue` with `key` for `plugin` on `instance`, plus `extra` flags, into `out`.
fn issue(h: &Host, key: &Key, plugin: &str, instance: &str, extra: &[&str], out: &Path) {
    let _ = std::fs::remove_file(out);
    let mut args = vec![
        "license",
        "issue",
        "--key",
        key.secret.to_str().unwrap(),
        "--plugin",
        plugin,
        "--instance",
        instance,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&h.cli(&args, None));
}

/// `toru instance id --json`: the licensing id (the same as `/api/system` shows).
fn licensing_id(h: &Host) -> String {
    let v: Value = serde_json::from_str(&ok(&h.cli(&["instance", "id", "--json"], None))).unwrap();
    let id = v["licensing_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{v}");
    assert!(v["instance_id"].as_str().unwrap().len() == 36, "{v}");
    id
}

/// `POST /api/licenses` with the file's text (and `?plugin=`): status and JSON.
fn post_license(h: &Host, token: &str, text: &str, plugin: Option<&str>) -> (u16, Value) {
    let path = match plugin {
        Some(p) => format!("/api/licenses?plugin={p}"),
        None => "/api/licenses".into(),
    };
    let auth = format!("Bearer {token}");
    let r = h.http(
        "POST",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "text/plain"),
            ("X-Toru-Csrf", "1"),
        ],
        Some(text.as_bytes()),
    );
    (r.status, r.json())
}

fn wait_state(h: &Host, token: &str, id: &str, state: &str) -> Value {
    eventually(&format!("{id} to be {state}"), || {
        let p = plugin(h, token, id);
        (p["state"] == state).then_some(p)
    })
}

fn events(h: &Host, token: &str, id: &str) -> Vec<Value> {
    let r = api(h, token, "GET", &format!("/api/plugins/{id}/events"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v.as_array()
        .cloned()
        .or_else(|| v["events"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_licensed_package_waits_for_a_valid_licence_and_each_refusal_says_why() {
    let bins = Bins::locate().unwrap();
    let work = TempDir::new("lic").unwrap();
    let mut h = Host::start(HostOpts {
        config: Some(CONFIG.into()),
        ..Default::default()
    });
    let token = admin_token(&h);
    let alice = Key::new(&bins, "alice");
    let mallory = Key::new(&bins, "mallory");
    alice.trust(&h);
    mallory.trust(&h);

    // Installed without a licence: the install succeeds, the plugin waits (no process, no
    // restarts, no failures), and says why.
    let paid = package(&bins, &work.0, &alice, "paid", true);
    let free = package(&bins, &work.0, &alice, "free", false);
    ok(&pkg_util::cli_install(&h, "install", &paid, &[]));
    ok(&pkg_util::cli_install(&h, "install", &free, &[]));
    let p = wait_state(&h, &token, "paid", "licence-needed");
    assert!(p["pid"].is_null(), "{p}");
    assert_eq!(p["restarts"], 0, "{p}");
    assert_eq!(p["consecutive_failures"], 0, "{p}");
    assert!(
        p["license_needed"]
            .as_str()
            .unwrap()
            .contains("no licence is installed for paid"),
        "{p}"
    );
    assert!(
        events(&h, &token, "paid")
            .iter()
            .any(|e| e["kind"] == "licence-needed"),
        "a licence-needed event"
    );
    let listed = ok(&h.cli(&["plugins"], None));
    assert!(listed.contains("paid\tlicence-needed"), "{listed}");
    let metrics = api(&h, &token, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("toru_plugin_state{plugin=\"paid\",state=\"licence-needed\"} 1"),
        "{metrics}"
    );
    // The unlicensed package runs and gets no licence in init.
    pkg_util::wait_ready(&h, &token, "free");
    assert_eq!(h.read_report("free.license").as_deref(), Some("null"));

    let me = licensing_id(&h);
    let system = api(&h, &token, "GET", "/api/system", None).json();
    assert_eq!(system["licensing_id"], me.as_str());

    // Each refusal: 422 with its code, the reason in the message, nothing stored.
    let lic = work.join("l.license");
    let other = "ffffffffffffffffffffffffffffffff";
    let refused = |text: &str, plugin: Option<&str>, code: &str, says: &str| {
        let (status, v) = post_license(&h, &token, text, plugin);
        assert_eq!(status, 422, "{code}: {v}");
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{code}: {v}");
    };
    issue(&h, &alice, "paid", other, &[], &lic);
    refused(
        &std::fs::read_to_string(&lic).unwrap(),
        None,
        "wrong_instance",
        &format!("not this one ({me})"),
    );
    issue(
        &h,
        &alice,
        "paid",
        &me,
        &["--not-before", "2020-01-01", "--expires", "2021-01-01"],
        &lic,
    );
    refused(
        &std::fs::read_to_string(&lic).unwrap(),
        None,
        "expired",
        "expired at 2021-01-01",
    );
    issue(
        &h,
        &alice,
        "paid",
        &me,
        &["--not-before", "2099-01-01"],
        &lic,
    );
    refused(
        &std::fs::read_to_string(&lic).unwrap(),
        None,
        "not_yet_valid",
        "starts at 2099-01-01",
    );
    issue(&h, &mallory, "paid", &me, &[], &lic);
    refused(
        &std::fs::read_to_string(&lic).unwrap(),
        None,
        "other_publisher",
        &alice.id(),
    );
    issue(&h, &alice, "paid", &me, &["--feature", "pro"], &lic);
    let good = std::fs::read_to_string(&lic).unwrap();
    // One byte of the claims changed.
    refused(
        &good.replacen("\"pro\"", "\"prp\"", 1),
        None,
        "bad_signature",
        "does not match",
    );
    // A valid licence for paid, given for free.
    refused(
        &good,
        Some("free"),
        "other_plugin",
        "for plugin paid, not free",
    );
    refused("garbage", None, "malformed", "malformed");

    // Through the CLI too: refused with the reason, exit code non-zero.
    issue(&h, &alice, "paid", other, &[], &work.join("wrong.license"));
    let o = h.cli(
        &[
            "license",
            "install",
            work.join("wrong.license").to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not this one"), "{}", stderr(&o));

    // Nothing was stored, and the plugin never ran.
    let list: Value =
        serde_json::from_str(&ok(&h.cli(&["license", "list", "--json"], None))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["plugin"], "paid");
    assert_eq!(list[0]["state"], "missing");
    let p = plugin(&h, &token, "paid");
    assert_eq!(p["state"], "licence-needed");
    assert_eq!(p["restarts"], 0, "{p}");

    // A valid licence: it starts, and init carries the verified claims.
    ok(&h.cli(&["license", "install", lic.to_str().unwrap()], None));
    pkg_util::wait_ready(&h, &token, "paid");
    let got: Value = serde_json::from_str(&h.read_report("paid.license").unwrap()).unwrap();
    assert_eq!(got["plugin"], "paid");
    assert_eq!(got["instance"], me.as_str());
    assert_eq!(got["publisher"], alice.id().as_str());
    assert_eq!(got["features"], serde_json::json!(["pro"]));
    assert!(got["expires"].is_null(), "never expires: {got}");
    let p = plugin(&h, &token, "paid");
    assert_eq!(p["license"]["features"], serde_json::json!(["pro"]), "{p}");
    let list = api(&h, &token, "GET", "/api/licenses", None).json();
    assert_eq!(list[0]["state"], "valid", "{list}");
    assert_eq!(list[0]["required"], true, "{list}");

    // Removing it stops the plugin, saying why.
    ok(&h.cli(&["license", "remove", "paid"], None));
    let p = wait_state(&h, &token, "paid", "licence-needed");
    assert!(p["pid"].is_null(), "{p}");
    let ev = events(&h, &token, "paid");
    assert!(ev.iter().any(|e| e["kind"] == "license-removed"), "{ev:?}");
    let o = h.cli(&["license", "remove", "paid"], None);
    assert!(!o.status.success(), "nothing left to remove");

    // Through the API this time; then it survives a restart of the host.
    let (status, v) = post_license(&h, &token, &good, Some("paid"));
    assert_eq!(status, 201, "{v}");
    pkg_util::wait_ready(&h, &token, "paid");
    h.stop();
    h.restart(HostOpts {
        root: Some(h.root.clone()),
        config: Some(CONFIG.into()),
        ..Default::default()
    });
    let p = pkg_util::wait_ready(&h, &token, "paid");
    assert_eq!(p["restarts"], 0, "{p}");
    assert_eq!(
        licensing_id(&h),
        me,
        "the licensing id is kept in the store"
    );
}

/// The wall clock (`chrono::Utc::now` panics before 1970; the host's rule holds in tests too).
fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from(std::time::SystemTime::now())
}

/// Where Debian puts libfaketime (the thread-safe build), as `tests/clock.rs` finds it.
fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/arm-linux-gnueabihf/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The wall clock runs a licence past its expiry once (the host records the time it saw), then is
/// set back before the expiry: the licence stays expired.
#[test]
#[cfg_attr(
    target_env = "musl",
    ignore = "a static host cannot be preloaded with libfaketime"
)]
fn a_clock_set_back_does_not_revive_an_expired_licence() {
    let Some(faketime) = libfaketime() else {
        eprintln!("SKIPPED: libfaketime is missing (apt-get install faketime)");
        return;
    };
    let bins = Bins::locate().unwrap();
    let work = TempDir::new("lic-clock").unwrap();
    let opts = |env: Vec<(String, String)>, root: Option<PathBuf>| HostOpts {
        config: Some(CONFIG.into()),
        env,
        root,
        ..Default::default()
    };
    let mut h = Host::start(opts(vec![], None));
    let token = admin_token(&h);
    let alice = Key::new(&bins, "alice");
    alice.trust(&h);
    ok(&pkg_util::cli_install(
        &h,
        "install",
        &package(&bins, &work.0, &alice, "paid", true),
        &[],
    ));
    // Valid for one more year from the real date.
    let expires = (now() + chrono::Duration::days(365))
        .format("%Y-%m-%d")
        .to_string();
    let lic = work.join("paid.license");
    issue(
        &h,
        &alice,
        "paid",
        &licensing_id(&h),
        &["--expires", &expires],
        &lic,
    );
    ok(&h.cli(&["license", "install", lic.to_str().unwrap()], None));
    pkg_util::wait_ready(&h, &token, "paid");

    // Two years on: expired.
    h.stop();
    let time_file = work.join("faketime");
    let later = now() + chrono::Duration::days(730);
    std::fs::write(
        &time_file,
        format!("@{}\n", later.format("%Y-%m-%d %H:%M:%S")),
    )
    .unwrap();
    let faked = vec![
        ("LD_PRELOAD".to_string(), faketime.display().to_string()),
        (
            "FAKETIME_TIMESTAMP_FILE".to_string(),
            time_file.display().to_string(),
        ),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ];
    h.restart(opts(faked, Some(h.root.clone())));
    let p = wait_state(&h, &token, "paid", "licence-needed");
    assert!(
        p["license_needed"].as_str().unwrap().contains("expired"),
        "{p}"
    );

    // The clock back to the real date, before the expiry: still expired.
    h.stop();
    h.restart(opts(vec![], Some(h.root.clone())));
    let p = wait_state(&h, &token, "paid", "licence-needed");
    let why = p["license_needed"].as_str().unwrap();
    assert!(why.contains("expired"), "{p}");
    assert!(
        why.contains(&later.format("%Y-%m-%d").to_string()),
        "judged at the latest time seen: {why}"
    );
    assert_eq!(p["restarts"], 0, "{p}");
}
