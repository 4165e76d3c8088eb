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
/// again with the KV data it had, and an `update-rolled-back` event says why.
fn bad_update_rolls_back(mode: &str, cause: &str) {
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
    assert!(
        rolled["message"].as_str().unwrap().contains(cause),
        "{rolled}"
    );
    assert_eq!(version_dirs(&h, "demo"), ["1.0.0"]);
    assert!(staging_is_empty(&h));
    let versions = ok(&h.cli(&["plugin", "versions", "demo"], None));
    assert!(versions.contains("* 1.0.0"), "{versions}");
    assert!(versions.contains("rolled-back"), "{versions}");
}

#[test]
fn an_update_that_crashes_at_start_rolls_back() {
    bad_update_rolls_back("crash-start", "exit");
}

#[test]
fn an_update_that_never_becomes_ready_rolls_back() {
    bad_update_rolls_back("no-ready", "ready");
}

#[test]
fn an_update_that_hangs_after_ready_rolls_back() {
    bad_update_rolls_back("hang", "heartbeats");
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
