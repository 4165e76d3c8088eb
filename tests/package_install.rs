//! Installing, updating, rolling back and removing real packages on the real host, through the CLI
//! (streamed over the control socket) and through HTTP: the packages are built from the `stress`
//! plugin (a `stress.json` gives it an id, a version and a way to misbehave) and from the
//! examples, signed with a key made by `toru key generate`.
//!
//! The heart of it: an update that does not come up healthy — it crashes at start, never answers
//! `ready`, or hangs after it did — undoes itself, with the plugin's KV data as it was before the
//! update, the old version running again, and an `update-rolled-back` event that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::package::{Example, PackageDir, generate_key, pack_example};
use support::{Bins, Host, HostOpts, TempDir, eventually};

/// A host with a short probation and quick heartbeats, so that a hang shows within seconds: three
/// pings missed 500 ms apart (1.5 s, not so tight that a busy machine or qemu misses them by
/// accident) within a probation of 4 s.
fn start(tag: &str) -> (Host, TempDir) {
    let work = TempDir::new(tag).unwrap();
    let h = Host::start(HostOpts {
        config: Some(
            "[packages]\nprobation_secs = 4\n[supervisor]\nheartbeat_interval_ms = 500\n\
             heartbeat_misses = 3\nbackoff_base_ms = 50\n"
                .into(),
        ),
        ..Default::default()
    });
    (h, work)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn token(h: &Host) -> String {
    ok(&h.cli(&["passwd"], Some("correct horse battery\n")));
    ok(&h.cli(&["token", "create", "tests"], None))
        .trim()
        .to_string()
}

/// A signing key in `work`, trusted by the host.
fn trusted_key(h: &Host, work: &TempDir, name: &str) -> PathBuf {
    let bins = Bins::locate().unwrap();
    let (key, public) = generate_key(&bins, &work.0, name).unwrap();
    ok(&h.cli(&["trust", "add", public.to_str().unwrap()], None));
    key
}

/// A signed stress package `id`-`version` misbehaving in `mode`.
fn stress(work: &TempDir, key: &Path, id: &str, version: &str, mode: &str) -> PathBuf {
    let bins = Bins::locate().unwrap();
    let signer = key.file_stem().unwrap().to_string_lossy();
    let dir = work.join(format!("src-{id}-{version}-{mode}-{signer}"));
    let out = work.join(format!("{id}-{version}-{mode}-{signer}.toru"));
    PackageDir::stress(&bins, &dir, id, version, mode)
        .unwrap()
        .pack_ok(&bins, Some(key), &out)
        .unwrap();
    out
}

fn get(h: &Host, tok: &str, path: &str) -> support::Resp {
    h.http(
        "GET",
        path,
        &[("Authorization", &format!("Bearer {tok}"))],
        None,
    )
}

fn send(h: &Host, tok: &str, method: &str, path: &str, body: &Value) -> support::Resp {
    let body = body.to_string();
    h.http(
        method,
        path,
        &[
            ("Authorization", &format!("Bearer {tok}")),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
}

fn kv_set(h: &Host, tok: &str, id: &str, key: &str, value: &str) {
    let r = send(
        h,
        tok,
        "POST",
        &format!("/api/plugins/{id}/kv"),
        &json!({"action": "set", "key": key, "value": value}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn kv_keys(h: &Host, tok: &str, id: &str) -> Vec<(String, Option<String>)> {
    let r = send(
        h,
        tok,
        "POST",
        &format!("/api/plugins/{id}/kv"),
        &json!({"action": "list", "prefix": ""}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let k = k.as_str().unwrap().to_string();
            let v = send(
                h,
                tok,
                "POST",
                &format!("/api/plugins/{id}/kv"),
                &json!({"action": "get", "key": k}),
            )
            .json()["value"]
                .as_str()
                .map(str::to_string);
            (k, v)
        })
        .collect()
}

fn plugin(h: &Host, tok: &str, id: &str) -> Value {
    let r = get(h, tok, &format!("/api/plugins/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Wait until `id` runs `version` and is ready; its pid. (While a transaction holds it down
/// between two versions the plugin is not listed.)
fn ready(h: &Host, tok: &str, id: &str, version: &str) -> u64 {
    eventually(&format!("{id} {version} ready"), || {
        let r = get(h, tok, &format!("/api/plugins/{id}"));
        if r.status == 404 {
            return None;
        }
        let p = r.json();
        (p["version"] == version && p["state"] == "ready")
            .then(|| p["pid"].as_u64())
            .flatten()
    })
}

fn events(h: &Host, tok: &str, id: &str) -> Vec<Value> {
    get(h, tok, &format!("/api/plugins/{id}/events"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn version_dirs(h: &Host, id: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(h.data_dir.join("packages").join(id))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn staging_is_empty(h: &Host) -> bool {
    std::fs::read_dir(h.data_dir.join("packages/.staging")).map_or(true, |mut d| d.next().is_none())
}

/// One bad update of a running v1.0.0 in `mode`: the CLI fails and names the cause, v1.0.0 runs
/// again with the KV data it had, and an `update-rolled-back` event says why — the cause and the
/// last line the bad version wrote to stderr (`stderr_line`, printed by the stress plugin).
fn bad_update_rolls_back(mode: &str, cause: &str, stderr_line: &str) {
    let (h, work) = start(&format!("pkg-{mode}"));
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    let v1 = stress(&work, &key, "demo", "1.0.0", "ok");
    let out = ok(&h.cli(&["plugin", "install", v1.to_str().unwrap()], None));
    assert!(out.contains("installed"), "{out}");
    ready(&h, &tok, "demo", "1.0.0");
    // KV written before the update, by the API and by the plugin itself.
    kv_set(&h, &tok, "demo", "a", "1");
    let r = h.http(
        "PUT",
        "/api/plugins/route/demo/kv/b",
        &[("Authorization", &format!("Bearer {tok}"))],
        Some(b"2"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let before = kv_keys(&h, &tok, "demo");
    assert_eq!(before.len(), 2);

    let v2 = stress(&work, &key, "demo", "2.0.0", mode);
    let out = h.cli(&["plugin", "update", v2.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the update must fail: {stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    assert!(stderr.contains(cause), "expected {cause:?} in: {stderr}");

    let pid = ready(&h, &tok, "demo", "1.0.0");
    let exe = pkg_util::exe_of(pid as u32);
    assert!(
        exe.starts_with(
            h.data_dir
                .join("packages/demo/1.0.0")
                .canonicalize()
                .unwrap()
        ),
        "{}",
        exe.display()
    );
    assert_eq!(kv_keys(&h, &tok, "demo"), before);
    let p = plugin(&h, &tok, "demo");
    assert_eq!(p["package"]["version"], "1.0.0");
    assert_eq!(p["package"]["last_update"]["result"], "rolled-back");
    let ev = events(&h, &tok, "demo");
    let rolled = ev
        .iter()
        .find(|e| e["kind"] == "update-rolled-back")
        .expect("an update-rolled-back event");
    let reason = rolled["details"]["reason"].as_str().unwrap();
    assert!(
        rolled["message"].as_str().unwrap().ends_with(reason),
        "{rolled}"
    );
    assert!(reason.contains(cause), "{rolled}");
    // The reason quotes the bad version's last stderr lines — its own alone: they used to begin
    // with the lines the version before it wrote — in the event and to the CLI.
    let quoted = reason
        .split_once("; last stderr: ")
        .map(|(_, lines)| lines)
        .unwrap_or_else(|| panic!("no stderr lines in the reason: {rolled}"));
    assert_eq!(
        quoted,
        format!("stress plugin starting in mode {mode} | {stderr_line}"),
        "{rolled}"
    );
    assert!(stderr.contains(stderr_line), "{stderr}");
    assert_eq!(version_dirs(&h, "demo"), ["1.0.0"]);
    assert!(staging_is_empty(&h));
    let versions = ok(&h.cli(&["plugin", "versions", "demo"], None));
    assert!(versions.contains("* 1.0.0"), "{versions}");
    assert!(versions.contains("rolled-back"), "{versions}");
}

#[test]
fn an_update_that_crashes_at_start_rolls_back() {
    bad_update_rolls_back("crash-start", "exit", "crashing at start on purpose");
}

#[test]
fn an_update_that_never_becomes_ready_rolls_back() {
    bad_update_rolls_back("no-ready", "ready", "never answering init on purpose");
}

#[test]
fn an_update_that_hangs_after_ready_rolls_back() {
    bad_update_rolls_back("hang", "heartbeats", "hanging on purpose");
}

/// KV written by the new version during its probation goes with it when it is rolled back; what
/// was acknowledged before the update stays, changed values come back.
#[test]
fn a_rollback_discards_what_the_new_version_wrote_during_probation() {
    let (h, work) = start("pkg-kvprobation");
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    let v1 = stress(&work, &key, "demo", "1.0.0", "ok");
    ok(&h.cli(&["plugin", "install", v1.to_str().unwrap()], None));
    ready(&h, &tok, "demo", "1.0.0");
    kv_set(&h, &tok, "demo", "a", "1");

    // v2 serves one request (which writes KV) and crashes at the second.
    let v2 = stress(&work, &key, "demo", "2.0.0", "crash-after-2");
    let bins = Bins::locate().unwrap();
    let (data, plugins, run) = (
        h.data_dir.clone(),
        h.plugins_dir.clone(),
        h.runtime_dir.clone(),
    );
    let update = std::thread::spawn(move || {
        std::process::Command::new(bins.get("toru"))
            .args(["plugin", "update"])
            .arg(&v2)
            .arg("--data-dir")
            .arg(&data)
            .arg("--plugins-dir")
            .arg(&plugins)
            .arg("--runtime-dir")
            .arg(&run)
            .output()
            .unwrap()
    });
    ready(&h, &tok, "demo", "2.0.0");
    let auth = format!("Bearer {tok}");
    let r = h.http(
        "PUT",
        "/api/plugins/route/demo/kv/a",
        &[("Authorization", &auth)],
        Some(b"changed by 2.0.0"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = h.http(
        "GET",
        "/api/plugins/route/demo/x",
        &[("Authorization", &auth)],
        None,
    );
    let out = update.join().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ready(&h, &tok, "demo", "1.0.0");
    assert_eq!(
        kv_keys(&h, &tok, "demo"),
        vec![("a".to_string(), Some("1".to_string()))]
    );
}

/// A good update keeps its data, keeps the version before on disk, and an admin can go back to it
/// (through the same probation); the third version drops the oldest.
#[test]
fn updates_keep_two_versions_and_rollback_goes_back_one() {
    let (h, work) = start("pkg-versions");
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    for (i, v) in ["1.0.0", "1.1.0", "2.0.0"].iter().enumerate() {
        let p = stress(&work, &key, "demo", v, "ok");
        let verb = if i == 0 { "install" } else { "update" };
        let out = ok(&h.cli(&["plugin", verb, p.to_str().unwrap()], None));
        assert!(
            out.contains(if i == 0 { "installed" } else { "updated" }),
            "{out}"
        );
        ready(&h, &tok, "demo", v);
        kv_set(&h, &tok, "demo", &format!("k{i}"), v);
    }
    assert_eq!(version_dirs(&h, "demo"), ["1.1.0", "2.0.0"]);
    let v = get(&h, &tok, "/api/plugins/demo/versions").json();
    assert_eq!(v["active"], "2.0.0");
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert_eq!(v["last_update"]["result"], "updated");

    // Through HTTP this time.
    let r = send(&h, &tok, "POST", "/api/plugins/demo/rollback", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "1.1.0");
    ready(&h, &tok, "demo", "1.1.0");
    assert_eq!(kv_keys(&h, &tok, "demo").len(), 3, "data is kept");
    let ev = events(&h, &tok, "demo");
    assert!(
        ev.iter().any(|e| e["kind"] == "updated"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("rolled back from 2.0.0")),
        "{ev:?}"
    );
    // Installing what is installed is refused; so is an older version unless allowed.
    let same = stress(&work, &key, "demo", "1.1.0", "ok");
    let out = h.cli(&["plugin", "update", same.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("installed version already"));
    let old = stress(&work, &key, "demo", "1.0.0", "ok");
    let out = h.cli(&["plugin", "update", old.to_str().unwrap()], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-downgrade"));
    ok(&h.cli(
        &[
            "plugin",
            "update",
            old.to_str().unwrap(),
            "--allow-downgrade",
        ],
        None,
    ));
    ready(&h, &tok, "demo", "1.0.0");
    // `install` refuses an installed id; `update` one that is not installed.
    let other = stress(&work, &key, "other", "1.0.0", "ok");
    let out = h.cli(&["plugin", "update", other.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not installed"));
    let out = h.cli(&["plugin", "install", old.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("installed already"));
}

/// Remove keeps the data for the same publisher unless asked to purge it; another publisher gets
/// the id only after a purge.
#[test]
fn remove_keeps_data_for_the_same_publisher_and_purge_frees_the_id() {
    let (h, work) = start("pkg-remove");
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    let other_key = trusted_key(&h, &work, "other");
    let v1 = stress(&work, &key, "demo", "1.0.0", "ok");
    ok(&h.cli(&["plugin", "install", v1.to_str().unwrap()], None));
    let pid = ready(&h, &tok, "demo", "1.0.0");
    kv_set(&h, &tok, "demo", "a", "1");

    let r = send(
        &h,
        &tok,
        "POST",
        "/api/plugins/demo/remove",
        &json!({"purge_data": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("the plugin gone", || {
        (get(&h, &tok, "/api/plugins/demo").status == 404).then_some(())
    });
    assert!(!support::alive(pid as u32));
    assert!(!h.data_dir.join("packages/demo").exists());

    // Another publisher is refused, naming the way out.
    let theirs = stress(&work, &other_key, "demo", "1.0.0", "ok");
    let out = h.cli(&["plugin", "install", theirs.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--purge-data"), "{stderr}");

    // The same publisher gets its data back.
    ok(&h.cli(&["plugin", "install", v1.to_str().unwrap()], None));
    ready(&h, &tok, "demo", "1.0.0");
    assert_eq!(
        kv_keys(&h, &tok, "demo"),
        vec![("a".to_string(), Some("1".to_string()))]
    );
    ok(&h.cli(&["plugin", "remove", "demo", "--purge-data"], None));
    ok(&h.cli(&["plugin", "install", theirs.to_str().unwrap()], None));
    ready(&h, &tok, "demo", "1.0.0");
    assert!(kv_keys(&h, &tok, "demo").is_empty(), "purged");
    assert!(
        events(&h, &tok, "demo")
            .iter()
            .any(|e| e["kind"] == "installed")
    );
}

/// The two-step HTTP install the UI uses: upload (streamed, signature in a header) → preview →
/// confirm; the example's frontend bundle is served from the package; settings round-trip with a
/// field error naming its path.
#[test]
fn http_upload_preview_confirm_and_settings() {
    let (h, work) = start("pkg-http");
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    let bins = Bins::locate().unwrap();
    let pkg = work.join("hello.toru");
    pack_example(
        &bins,
        Example::HelloRust,
        &work.join("src"),
        Some(&key),
        &pkg,
    )
    .unwrap();
    let sig = std::fs::read(work.join("hello.toru.minisig")).unwrap();
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.encode(sig);
    let body = std::fs::read(&pkg).unwrap();
    let auth = format!("Bearer {tok}");
    let r = h.http(
        "POST",
        "/api/packages/upload",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
            ("X-Toru-Signature", &sig),
        ],
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let preview = r.json();
    assert_eq!(preview["action"], "install");
    assert_eq!(preview["manifest"]["id"], "hello-rust");
    assert_eq!(preview["signature"]["state"], "trusted");
    let token_ = preview["upload"].as_str().unwrap();
    assert!(
        get(&h, &tok, "/api/plugins/hello-rust").status == 404,
        "not before confirm"
    );
    let r = send(
        &h,
        &tok,
        "POST",
        &format!("/api/packages/upload/{token_}/confirm"),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "installed");
    let p = plugin(&h, &tok, "hello-rust");
    assert_eq!(p["state"], "ready");
    assert_eq!(p["package"]["unsigned"], false);
    let bundle = get(&h, &tok, "/api/plugins/hello-rust/bundle.js");
    assert_eq!(bundle.status, 200);
    // A used upload token is gone.
    let r = send(
        &h,
        &tok,
        "POST",
        &format!("/api/packages/upload/{token_}/confirm"),
        &json!({}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // Settings: the example's schema, its defaults, a change the plugin shows, a refusal by path.
    let s = get(&h, &tok, "/api/plugins/hello-rust/settings").json();
    assert_eq!(s["values"]["greeting"], "Hello", "{s}");
    let r = send(
        &h,
        &tok,
        "PUT",
        "/api/plugins/hello-rust/settings",
        &json!({"greeting": "Ahoy"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["delivery"], "applied");
    let page = get(&h, &tok, "/api/plugins/route/hello-rust/").text();
    assert!(page.contains("Ahoy"), "{page}");
    let r = send(
        &h,
        &tok,
        "PUT",
        "/api/plugins/hello-rust/settings",
        &json!({"greeting": 7, "nope": true}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let errors = r.json()["errors"].clone();
    let paths: Vec<&str> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["greeting", "nope"], "{errors}");
    assert_eq!(
        get(&h, &tok, "/api/plugins/hello-rust/settings").json()["values"]["greeting"],
        "Ahoy",
        "a refused save changes nothing"
    );
    // Trusted keys over HTTP: listed, and removing one keeps the plugin running.
    let keys = get(&h, &tok, "/api/trust").json();
    let key_id = keys[0]["key_id"].as_str().unwrap().to_string();
    let r = h.http(
        "DELETE",
        &format!("/api/trust/{key_id}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        get(&h, &tok, "/api/trust")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(plugin(&h, &tok, "hello-rust")["state"], "ready");
}

/// A client that goes away during the confirmation (a closed page) does not stop the transaction
/// half-way: it used to be dropped with the request, leaving the plugin held down (stopped, not
/// listed) until the host restarted.
#[test]
fn a_client_that_leaves_during_the_probation_does_not_stop_the_update() {
    use std::io::Write;
    let (h, work) = start("pkg-leave");
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    let v1 = stress(&work, &key, "demo", "1.0.0", "ok");
    ok(&h.cli(&["plugin", "install", v1.to_str().unwrap()], None));
    ready(&h, &tok, "demo", "1.0.0");
    let v2 = stress(&work, &key, "demo", "2.0.0", "ok");
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(format!("{}.minisig", v2.display())).unwrap());
    let auth = format!("Bearer {tok}");
    let r = h.http(
        "POST",
        "/api/packages/upload",
        &[("Authorization", &auth), ("X-Toru-Signature", &sig)],
        Some(&std::fs::read(&v2).unwrap()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let upload = r.json()["upload"].as_str().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(h.addr).unwrap();
    write!(
        s,
        "POST /api/packages/upload/{upload}/confirm HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .unwrap();
    // Gone as soon as the update is under way (the old version stopped).
    // One answer read for both conditions: the plugin may go between two requests.
    eventually("the update under way", || {
        let r = get(&h, &tok, "/api/plugins/demo");
        (r.status == 404 || (r.status == 200 && r.json()["version"] == "2.0.0")).then_some(())
    });
    drop(s);
    ready(&h, &tok, "demo", "2.0.0");
    let v = eventually("the update's result", || {
        let v = get(&h, &tok, "/api/plugins/demo/versions").json();
        v["pending"].is_null().then_some(v)
    });
    assert_eq!(v["last_update"]["result"], "updated", "{v}");
    assert_eq!(v["active"], "2.0.0");
}

/// Secret settings (`format: "secret"`) are write-only: the plugin gets them, but they appear in no
/// API answer (a save's, a refused save's, a read's, the plugin lists', the versions'), in no event
/// (the `settings-changed` events name the fields, not their values), in the plugin's log ring and
/// in nothing the host logs — at its most verbose level. The versions' answer used to hold them
/// while an update was on probation: it showed the pending update whole, the settings kept for a
/// rollback included.
#[test]
fn secret_settings_reach_the_plugin_and_nothing_else() {
    const PASSWORD: &str = "pw-7c1f0e9a-never-shown";
    const API_KEY: &str = "key-b2d4e6-never-shown";
    const REFUSED: &str = "Refused-Key-3e8a";
    const SCHEMA: &str = "[settings]\ntype = \"object\"\n\
        [settings.properties.name]\ntype = \"string\"\ndefault = \"vault\"\n\
        [settings.properties.api_key]\ntype = \"string\"\nformat = \"secret\"\n\
        pattern = \"^[a-z0-9-]+$\"\nmaxLength = 40\n\
        [settings.properties.mqtt]\ntype = \"object\"\n\
        [settings.properties.mqtt.properties.host]\ntype = \"string\"\ndefault = \"localhost\"\n\
        [settings.properties.mqtt.properties.password]\ntype = \"string\"\nformat = \"secret\"\n";
    let work = TempDir::new("pkg-secret").unwrap();
    let h = Host::start(HostOpts {
        config: Some("[packages]\nprobation_secs = 3\n".into()),
        log_level: Some("trace".into()),
        ..Default::default()
    });
    let tok = token(&h);
    let key = trusted_key(&h, &work, "pub");
    let bins = Bins::locate().unwrap();
    let vault = |version: &str| {
        let src = work.join(format!("src-vault-{version}"));
        let p = PackageDir::stress(&bins, &src, "vault", version, "ok").unwrap();
        let manifest = format!("{}\n{SCHEMA}", p.manifest().unwrap());
        p.file("manifest.toml", manifest.as_bytes()).unwrap();
        let pkg = work.join(format!("vault-{version}.toru"));
        p.pack_ok(&bins, Some(&key), &pkg).unwrap();
        pkg
    };
    let pkg = vault("1.0.0");
    ok(&h.cli(&["plugin", "install", pkg.to_str().unwrap()], None));
    let pid = ready(&h, &tok, "vault", "1.0.0");

    let secrets = [PASSWORD, API_KEY, REFUSED];
    let clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows the secret {s}: {text}");
        }
    };
    let url = "/api/plugins/vault/settings";

    // A save with both secrets: the answer names them as set, and shows neither.
    let r = send(
        &h,
        &tok,
        "PUT",
        url,
        &json!({"name": "first", "api_key": API_KEY, "mqtt": {"host": "broker", "password": PASSWORD}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    clean("the save's answer", &r.text());
    let saved = r.json();
    assert_eq!(
        saved["secrets_set"],
        json!(["api_key", "mqtt.password"]),
        "{saved}"
    );
    assert_eq!(saved["values"]["api_key"], Value::Null, "{saved}");
    assert_eq!(saved["values"]["mqtt"]["password"], Value::Null, "{saved}");
    // The plugin (a 1.1 plugin that does not take `config`) was restarted with them in `init`.
    assert_eq!(saved["delivery"], "restarted", "{saved}");
    let new_pid = eventually("the plugin restarted with its settings", || {
        let p = ready(&h, &tok, "vault", "1.0.0");
        (p != pid).then_some(p)
    });
    let got: Value = serde_json::from_str(&h.read_report("vault.config").unwrap()).unwrap();
    assert_eq!(got["api_key"], API_KEY, "{got}");
    assert_eq!(got["mqtt"]["password"], PASSWORD, "{got}");

    // A refused save (a secret against its pattern, a wrong type) shows neither the refused value
    // nor the stored ones, and changes nothing.
    let r = send(
        &h,
        &tok,
        "PUT",
        url,
        &json!({"name": 7, "api_key": REFUSED}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    clean("the refusal", &r.text());
    let refusal = r.json();
    let paths: Vec<&str> = refusal["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["api_key", "name"], "{}", r.text());

    // A save that leaves the secrets out keeps them.
    let r = send(
        &h,
        &tok,
        "PUT",
        url,
        &json!({"name": "second", "api_key": null, "mqtt": {"host": "broker"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    clean("the second save's answer", &r.text());
    assert_eq!(r.json()["secrets_set"], json!(["api_key", "mqtt.password"]));
    eventually("the plugin restarted again", || {
        let p = ready(&h, &tok, "vault", "1.0.0");
        (p != new_pid).then_some(p)
    });
    let got: Value = serde_json::from_str(&h.read_report("vault.config").unwrap()).unwrap();
    assert_eq!(
        (&got["name"], &got["api_key"], &got["mqtt"]["password"]),
        (&json!("second"), &json!(API_KEY), &json!(PASSWORD)),
        "{got}"
    );

    // Reads: the settings, the plugin, the plugin list.
    let s = get(&h, &tok, url);
    clean("GET settings", &s.text());
    assert_eq!(s.json()["values"]["name"], "second");
    assert_eq!(s.json()["secrets_set"], json!(["api_key", "mqtt.password"]));
    clean("GET plugin", &get(&h, &tok, "/api/plugins/vault").text());
    clean("GET plugins", &get(&h, &tok, "/api/plugins").text());

    // An update on probation: what the versions' answer and the CLI show of it.
    let v2 = vault("2.0.0");
    let mut cli = h.toru();
    cli.args(["plugin", "update"]).arg(&v2);
    let update = std::thread::spawn(move || cli.output().unwrap());
    let pending = eventually("the update on probation", || {
        let r = get(&h, &tok, "/api/plugins/vault/versions");
        (r.status == 200 && r.json()["pending"]["to"] == "2.0.0").then_some(r)
    });
    clean("the versions during the probation", &pending.text());
    assert_eq!(
        pending.json()["pending"]["from"],
        "1.0.0",
        "{}",
        pending.text()
    );
    clean(
        "toru plugin versions --json during the probation",
        &ok(&h.cli(&["plugin", "versions", "vault", "--json"], None)),
    );
    let out = update.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ready(&h, &tok, "vault", "2.0.0");
    let s = get(&h, &tok, url);
    clean("GET settings after the update", &s.text());
    assert_eq!(s.json()["secrets_set"], json!(["api_key", "mqtt.password"]));
    let got: Value = serde_json::from_str(&h.read_report("vault.config").unwrap()).unwrap();
    assert_eq!(got["api_key"], API_KEY, "{got}");

    // Events: a `settings-changed` per save, naming fields only.
    let evs = get(&h, &tok, "/api/plugins/vault/events?limit=200");
    clean("the plugin's events", &evs.text());
    clean("all events", &get(&h, &tok, "/api/events?limit=200").text());
    let changed: Vec<Value> = evs
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "settings-changed")
        .cloned()
        .collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    // Newest first: the second save changed `name` alone (its secrets were kept).
    assert_eq!(
        changed[0]["message"], "settings changed: name",
        "{changed:?}"
    );
    assert_eq!(
        changed[1]["message"], "settings changed: api_key, mqtt, name",
        "{changed:?}"
    );
    let cli_events = ok(&h.cli(&["events", "vault"], None));
    assert!(cli_events.contains("settings-changed"), "{cli_events}");
    clean("toru events", &cli_events);

    // Logs: the plugin's ring and everything the host wrote.
    clean(
        "the plugin's log",
        &get(&h, &tok, "/api/plugins/vault/logs?page_size=1000").text(),
    );
    let log = h.log();
    assert!(
        log.contains("vault"),
        "the host's log says nothing of the plugin: {log}"
    );
    clean("the host's log", &log);
}

/// The trust and rollback commands through the CLI against a running host — `toru trust list`
/// (text and `--json`), `toru plugin rollback ID`, `toru trust remove KEYID` (no test ran them
/// before) — and a plain `*.binary` beside a package, shown unpackaged (`package: null`, which
/// the UI shows as "unpackaged") and refused by the package commands.
#[test]
fn trust_and_rollback_commands_through_the_cli_and_an_unpackaged_plugin() {
    let work = TempDir::new("pkg-cli").unwrap();
    let h = Host::start(HostOpts {
        plugins: vec![support::PluginSrc::Built {
            bin: "stress",
            as_name: "stress-ok".into(),
        }],
        config: Some("[packages]\nprobation_secs = 1\n".into()),
        ..Default::default()
    });
    let tok = token(&h);
    let bins = Bins::locate().unwrap();
    let publisher = pkg_util::Key::new(&bins, "publisher");
    let other = pkg_util::Key::new(&bins, "other");
    let (pub_id, other_id) = (publisher.id(), other.id());
    ok(&h.cli(
        &[
            "trust",
            "add",
            publisher.public.to_str().unwrap(),
            "--comment",
            "the publisher",
        ],
        None,
    ));
    other.trust(&h);

    // `toru trust list`: one line per key, `KEYID<TAB>ADDED_AT<TAB>COMMENT`.
    let listed = ok(&h.cli(&["trust", "list"], None));
    let mut rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    rows.sort();
    let mut want = vec![pub_id.as_str(), other_id.as_str()];
    want.sort_unstable();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        want,
        "{listed}"
    );
    let row = rows.iter().find(|r| r[0] == pub_id).unwrap();
    assert_eq!(row.len(), 3, "{listed}");
    assert!(
        row[1].parse::<chrono::DateTime<chrono::Utc>>().is_ok(),
        "{listed}"
    );
    assert_eq!(row[2], "the publisher", "{listed}");
    // `--json`: the same keys, with their public key lines.
    let json_list: Value =
        serde_json::from_str(&ok(&h.cli(&["trust", "list", "--json"], None))).unwrap();
    let keys = json_list.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{json_list}");
    let mine = keys
        .iter()
        .find(|k| k["key_id"] == pub_id.as_str())
        .unwrap();
    assert_eq!(mine["comment"], "the publisher", "{json_list}");
    let pub_line = std::fs::read_to_string(&publisher.public).unwrap();
    assert_eq!(
        Some(mine["public_key"].as_str().unwrap()),
        pub_line.lines().nth(1),
        "{json_list}"
    );

    // `toru plugin rollback ID`: back to the version before, through the probation, data kept.
    let v1 = stress(&work, &publisher.secret, "demo", "1.0.0", "ok");
    let v2 = stress(&work, &publisher.secret, "demo", "2.0.0", "ok");
    ok(&h.cli(&["plugin", "install", v1.to_str().unwrap()], None));
    ready(&h, &tok, "demo", "1.0.0");
    kv_set(&h, &tok, "demo", "k", "before the update");
    ok(&h.cli(&["plugin", "update", v2.to_str().unwrap()], None));
    let pid2 = ready(&h, &tok, "demo", "2.0.0");
    let out = ok(&h.cli(&["plugin", "rollback", "demo"], None));
    assert_eq!(out.trim(), "demo 1.0.0: rolled-back", "{out}");
    let pid1 = ready(&h, &tok, "demo", "1.0.0");
    assert_ne!(pid1, pid2);
    assert!(!support::alive(pid2 as u32), "2.0.0 still runs");
    assert_eq!(
        kv_keys(&h, &tok, "demo"),
        vec![("k".to_string(), Some("before the update".to_string()))]
    );
    let versions = ok(&h.cli(&["plugin", "versions", "demo"], None));
    assert!(versions.contains("* 1.0.0\t"), "{versions}");
    assert!(versions.contains("  2.0.0\t"), "{versions}");
    assert!(
        versions.contains("last update: updated 2.0.0 -> 1.0.0"),
        "{versions}"
    );
    assert!(
        events(&h, &tok, "demo")
            .iter()
            .any(|e| e["kind"] == "updated" && e["message"] == "rolled back from 2.0.0 to 1.0.0"),
        "no event for the rollback"
    );
    // Refused: an id that is not installed, an unpackaged plugin.
    let o = h.cli(&["plugin", "rollback", "nope"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"), "{o:?}");

    // `toru trust remove KEYID`: the key is gone from the list; a second removal is refused.
    let o = h.cli(&["trust", "remove", &other_id], None);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("Key {other_id} is no longer trusted")),
        "{o:?}"
    );
    let listed = ok(&h.cli(&["trust", "list"], None));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&format!("{pub_id}\t")), "{listed}");
    let o = h.cli(&["trust", "remove", &other_id], None);
    assert!(!o.status.success(), "removed twice: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("the key {other_id} is not trusted")),
        "{o:?}"
    );
    // Removing the installed package's publisher keeps it running, but refuses its updates.
    ok(&h.cli(&["trust", "remove", &pub_id], None));
    assert!(ok(&h.cli(&["trust", "list"], None)).trim().is_empty());
    assert_eq!(plugin(&h, &tok, "demo")["state"], "ready");
    let v3 = stress(&work, &publisher.secret, "demo", "3.0.0", "ok");
    let o = h.cli(&["plugin", "update", v3.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "signed by key {pub_id}, which this device does not trust"
        )),
        "{o:?}"
    );
    ready(&h, &tok, "demo", "1.0.0");

    // The plain `*.binary`: `package` is null (not absent) in its view and in the list, where
    // the package has its summary; the package commands refuse it by name.
    let p = plugin(&h, &tok, "stress-ok");
    assert!(
        p.as_object().unwrap().get("package") == Some(&Value::Null),
        "{p}"
    );
    let all = get(&h, &tok, "/api/plugins").json();
    let by_id = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {all}"))
            .clone()
    };
    assert_eq!(by_id("stress-ok")["package"], Value::Null, "{all}");
    assert_eq!(by_id("demo")["package"]["version"], "1.0.0", "{all}");
    for args in [
        ["plugin", "versions", "stress-ok"],
        ["plugin", "rollback", "stress-ok"],
    ] {
        let o = h.cli(&args, None);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("stress-ok is an unpackaged plugin"),
            "{args:?}: {o:?}"
        );
    }
    assert_eq!(plugin(&h, &tok, "stress-ok")["state"], "ready");
}
