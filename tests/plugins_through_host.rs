//! Plugins of every kind answering through the real host over HTTP: a 1.0-only plugin written from
//! the spec (both reply forms of the recorded vectors), the Python and Rust 1.1 examples with host
//! KV, a slow plugin (504 while it keeps running), a log flood (host stays responsive, drops are
//! counted), and rescans on SIGHUP that add and retire plugins without restarting the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::{Host, HostOpts, PluginSrc, alive, built, eventually};

/// Finish setup with `toru passwd` (no default password: until then only setup answers), then
/// create an API token with `toru token create`.
fn token(h: &Host) -> String {
    let out = h.cli(&["passwd"], Some("correct horse battery\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = h.cli(&["token", "create", "tests"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn get(h: &Host, tok: &str, path: &str) -> support::Resp {
    let auth = format!("Bearer {tok}");
    h.http("GET", path, &[("Authorization", &auth)], None)
}

fn send(h: &Host, tok: &str, method: &str, path: &str, body: &[u8]) -> support::Resp {
    let auth = format!("Bearer {tok}");
    h.http(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("X-Toru-Csrf", "1"),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
}

fn legacy() -> PluginSrc {
    PluginSrc::RepoFile {
        path: "tests/plugins/legacy10.binary",
        siblings: vec![],
    }
}

fn hello_python() -> PluginSrc {
    PluginSrc::RepoFile {
        path: "plugins/hello-python/hello-python.binary",
        siblings: vec!["toru-plugin-api/python/toru_plugin.py"],
    }
}

fn states(h: &Host, tok: &str) -> Vec<(String, String)> {
    get(h, tok, "/api/plugins")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn legacy_1_0_plugin_answers_in_both_reply_forms() {
    let h = Host::start(HostOpts {
        plugins: vec![legacy()],
        ..Default::default()
    });
    let tok = token(&h);
    let p = get(&h, &tok, "/api/plugins/legacy-ten").json();
    assert_eq!(p["protocol"], "1.0");
    assert_eq!(p["state"], "ready");

    // Documented reply form.
    let r = get(&h, &tok, "/api/plugins/route/legacy/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"], "Hello from legacy 1.0!");
    // Legacy Rust SDK form: the reply's body is a JSON string holding {status, headers, body}.
    let r = get(&h, &tok, "/api/plugins/route/legacy/legacy-form");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("legacy"), "{}", r.text());
    // The query string stays in the path, as the original host sent it.
    let r = get(&h, &tok, "/api/plugins/route/legacy/echo?q=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/echo?q=1");
    // Several requests in a row: one connection per message, none lost.
    for i in 0..5 {
        let r = get(&h, &tok, &format!("/api/plugins/route/legacy/echo?i={i}"));
        assert_eq!(r.json()["path"], format!("/echo?i={i}"));
    }
}

#[test]
fn python_and_rust_examples_use_the_host_kv_store() {
    let mut h = Host::start(HostOpts {
        plugins: vec![hello_python(), built("hello-rust")],
        ..Default::default()
    });
    let tok = token(&h);
    assert_eq!(
        states(&h, &tok),
        [
            ("hello-python".into(), "ready".into()),
            ("hello-rust".into(), "ready".into())
        ]
    );
    let instance = get(&h, &tok, "/api/system").json()["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    for route in ["hello-python", "hello-rust"] {
        let r = get(&h, &tok, &format!("/api/plugins/route/{route}/"));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["instance_id"], instance.as_str());
        let r = send(
            &h,
            &tok,
            "PUT",
            &format!("/api/plugins/route/{route}/kv/colour"),
            format!("blue-{route}").as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        for _ in 0..3 {
            let r = send(
                &h,
                &tok,
                "POST",
                &format!("/api/plugins/route/{route}/counter"),
                b"",
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    // Namespaces are separate: each plugin sees its own value.
    for route in ["hello-python", "hello-rust"] {
        let r = get(&h, &tok, &format!("/api/plugins/route/{route}/kv/colour"));
        assert_eq!(r.json()["value"], format!("blue-{route}"));
    }
    // Durable across a host restart.
    assert!(h.stop().success());
    h.restart(HostOpts::default());
    for route in ["hello-python", "hello-rust"] {
        let r = get(&h, &tok, &format!("/api/plugins/route/{route}/counter"));
        assert_eq!(r.json()["counter"], 3, "{route}");
    }
}

#[test]
fn slow_plugin_gets_504_and_keeps_running() {
    let h = Host::start(HostOpts {
        plugins: vec![PluginSrc::Built {
            bin: "stress",
            as_name: "stress-slow-3000".into(),
        }],
        config: Some("[http]\nplugin_timeout_secs = 1\n".into()),
        ..Default::default()
    });
    let tok = token(&h);
    let pid = get(&h, &tok, "/api/plugins/stress-slow-3000").json()["pid"]
        .as_u64()
        .unwrap();
    let r = get(&h, &tok, "/api/plugins/route/stress-slow-3000/");
    assert_eq!(r.status, 504, "{}", r.text());
    let p = get(&h, &tok, "/api/plugins/stress-slow-3000").json();
    assert_eq!(p["state"], "ready");
    assert_eq!(
        p["pid"].as_u64(),
        Some(pid),
        "a slow plugin is not restarted"
    );
}

#[test]
fn log_flood_is_rate_limited_and_the_host_stays_responsive() {
    let h = Host::start(HostOpts {
        plugins: vec![
            PluginSrc::Built {
                bin: "stress",
                as_name: "stress-log-flood".into(),
            },
            built("hello-rust"),
        ],
        ..Default::default()
    });
    let tok = token(&h);
    let dropped = eventually("dropped log lines", || {
        let p = get(&h, &tok, "/api/plugins/stress-log-flood").json();
        let d = p["log_dropped"].as_u64()?;
        (d > 0).then_some(d)
    });
    assert!(dropped > 0);
    assert_eq!(h.http("GET", "/api/health", &[], None).status, 200);
    assert_eq!(get(&h, &tok, "/api/plugins/route/hello-rust/").status, 200);
    let logs = get(
        &h,
        &tok,
        "/api/plugins/stress-log-flood/logs?page=1&page_size=10",
    )
    .json();
    assert!(logs.to_string().contains("flood line"), "{logs}");
}

#[test]
fn sighup_rescan_adds_and_retires_plugins_without_touching_the_others() {
    let h = Host::start(HostOpts {
        plugins: vec![built("hello-rust")],
        ..Default::default()
    });
    let tok = token(&h);
    let hello_pid = get(&h, &tok, "/api/plugins/hello-rust").json()["pid"]
        .as_u64()
        .unwrap();
    support::install(
        &h.plugins_dir,
        &PluginSrc::Built {
            bin: "stress",
            as_name: "stress-ok".into(),
        },
    );
    eventually("new plugin ready", || {
        // Rescans are idempotent: signal again until the new plugin shows up.
        assert!(support::kill(h.child.id(), libc_sighup()));
        states(&h, &tok)
            .contains(&("stress-ok".into(), "ready".into()))
            .then_some(())
    });
    let stress_pid = get(&h, &tok, "/api/plugins/stress-ok").json()["pid"]
        .as_u64()
        .unwrap() as u32;
    std::fs::remove_file(h.plugins_dir.join("stress-ok.binary")).unwrap();
    assert!(support::kill(h.child.id(), libc_sighup()));
    eventually("plugin retired", || {
        let ids: Vec<String> = states(&h, &tok).into_iter().map(|(id, _)| id).collect();
        (ids == ["hello-rust"]).then_some(())
    });
    assert!(!alive(stress_pid), "retired plugin's process still runs");
    let p: Value = get(&h, &tok, "/api/plugins/hello-rust").json();
    assert_eq!(
        p["pid"].as_u64(),
        Some(hello_pid),
        "other plugins were not restarted"
    );
}

fn libc_sighup() -> i32 {
    1
}

#[test]
fn garbage_frames_are_logged_and_the_plugin_keeps_serving() {
    let h = Host::start(HostOpts {
        plugins: vec![PluginSrc::Built {
            bin: "stress",
            as_name: "stress-garbage".into(),
        }],
        ..Default::default()
    });
    let tok = token(&h);
    let pid = get(&h, &tok, "/api/plugins/stress-garbage").json()["pid"].as_u64();
    for _ in 0..3 {
        let r = get(&h, &tok, "/api/plugins/route/stress-garbage/x");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let p = get(&h, &tok, "/api/plugins/stress-garbage").json();
    assert_eq!(p["state"], "ready");
    assert_eq!(p["pid"].as_u64(), pid, "not restarted for a garbage frame");
    let logs = get(
        &h,
        &tok,
        "/api/plugins/stress-garbage/logs?page=1&page_size=50",
    )
    .json();
    assert!(
        logs.to_string().contains("rejected frame from plugin"),
        "{logs}"
    );
}
