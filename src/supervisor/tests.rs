//! The supervisor in-process with real plugin processes: the Python example plugin (protocol 1.1,
//! through the Python SDK) and the 1.0 fixture `tests/plugins/legacy10.binary`, both started from
//! a temp plugins dir on a real store. Checks that `init` carries the stored settings and what
//! [`Supervisor::configure`] does for each kind of plugin and state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use toru_plugin_api::HttpRequest;

use super::{ConfigOutcome, PluginState, Supervisor, SupervisorError};
use crate::config::Config;
use crate::store::{Store, StoreOptions};

/// Bounds a failure only: every wait below ends on an event well before it.
const LIMIT: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp dir, removed on drop (short: sockets live below it).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("toru-sv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A supervisor whose plugins dir holds the Python example (with its SDK) and the 1.0 fixture.
fn supervisor(root: &Path) -> Supervisor {
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (from, to) in [
        (
            "plugins/hello-python/hello-python.binary",
            "hello-python.binary",
        ),
        ("toru-plugin-api/python/toru_plugin.py", "toru_plugin.py"),
        ("tests/plugins/legacy10.binary", "legacy10.binary"),
    ] {
        std::fs::copy(repo(from), plugins.join(to)).unwrap();
    }
    let config = Config {
        data_dir: root.join("data"),
        plugins_dir: plugins,
        runtime_dir: root.join("run"),
        ..Config::default()
    };
    let store = Store::open(&config.data_dir, StoreOptions::default()).unwrap();
    Supervisor::new(config, store)
}

async fn get(sup: &Supervisor, id: &str, path: &str) -> Value {
    let req = HttpRequest {
        method: "GET".into(),
        path: path.into(),
        headers: Default::default(),
        body: None,
        body_encoding: Default::default(),
    };
    let reply = sup.forward_http(id, req).await.unwrap();
    let (status, _, body) = reply.into_parts();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Wait (on the supervisor's change notifications) until `id` is in `state` with a process
/// other than `old_pid` (ready) or none (disabled); returns the pid.
async fn wait_for(sup: &Supervisor, id: &str, state: PluginState, old_pid: Option<u32>) -> u32 {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let changed = sup.inner.ctx.changed.clone();
        let notified = changed.notified();
        let view = sup.plugin(id).unwrap();
        let pid_ok = match state {
            PluginState::Ready => view.pid.is_some() && view.pid != old_pid,
            _ => view.pid.is_none(),
        };
        if view.state == state && pid_ok {
            return view.pid.unwrap_or(0);
        }
        assert!(
            tokio::time::timeout_at(deadline, notified).await.is_ok(),
            "{id} not {state:?}: {view:?}"
        );
    }
}

async fn ready_again(sup: &Supervisor, id: &str, old_pid: Option<u32>) -> u32 {
    wait_for(sup, id, PluginState::Ready, old_pid).await
}

fn host_log(sup: &Supervisor, id: &str) -> Vec<String> {
    let page = sup.logs(id, 1, 500, None).unwrap();
    page.lines.into_iter().map(|l| l.message).collect()
}

#[tokio::test]
async fn settings_reach_a_running_plugin_or_restart_it() {
    let dir = TempDir::new("cfg");
    tokio::task::LocalSet::new()
        .run_until(async {
            let sup = supervisor(&dir.0);
            let store = sup.inner.ctx.store.clone();
            // As the settings endpoint does: store them, then tell the supervisor.
            let save = |id: &'static str, v: Value| {
                let store = store.clone();
                async move { store.set_plugin_settings(id, v, None).await.unwrap() }
            };
            save("hello-python", json!({"greeting": "Bonjour"})).await;
            let report = sup.rescan().await;
            assert_eq!(report.added, ["hello-python", "legacy-ten"], "{report:?}");
            ready_again(&sup, "hello-python", None).await;
            let legacy_pid = ready_again(&sup, "legacy-ten", None).await;

            // Init carried the stored settings.
            let page = get(&sup, "hello-python", "/").await;
            assert_eq!(page["message"], "Bonjour from Hello World (Python)!");

            // 1.1, ready: the plugin applies them at once, no restart.
            let pid = sup.plugin("hello-python").unwrap().pid;
            save("hello-python", json!({"greeting": "Howdy"})).await;
            let applied = sup
                .configure("hello-python", json!({"greeting": "Howdy"}))
                .await
                .unwrap();
            assert_eq!(applied, ConfigOutcome::Applied);
            let page = get(&sup, "hello-python", "/").await;
            assert_eq!(page["message"], "Howdy from Hello World (Python)!");
            assert_eq!(sup.plugin("hello-python").unwrap().pid, pid);

            // Refused by the plugin: its sentence comes back, the previous settings stay.
            let refused = sup
                .configure("hello-python", json!({"greeting": " "}))
                .await
                .unwrap();
            assert_eq!(
                refused,
                ConfigOutcome::Rejected("greeting must be a non-empty string".into())
            );
            let page = get(&sup, "hello-python", "/").await;
            assert_eq!(page["message"], "Howdy from Hello World (Python)!");
            let log = host_log(&sup, "hello-python");
            assert!(log.iter().any(|l| l == "new settings applied"), "{log:?}");
            assert!(
                !log.iter().any(|l| l.contains("Howdy")),
                "settings values are never logged: {log:?}"
            );

            // 1.0: restarted (its next init carries the settings), not counted as a failure.
            let restarted = sup
                .configure("legacy-ten", json!({"greeting": "Howdy"}))
                .await
                .unwrap();
            assert_eq!(restarted, ConfigOutcome::Restarted);
            ready_again(&sup, "legacy-ten", Some(legacy_pid)).await;
            assert_eq!(sup.plugin("legacy-ten").unwrap().consecutive_failures, 0);

            // Not running: left alone, the settings apply at its next start.
            sup.disable("hello-python").await.unwrap();
            wait_for(&sup, "hello-python", PluginState::Disabled, None).await;
            save("hello-python", json!({"greeting": "Hi"})).await;
            let parked = sup
                .configure("hello-python", json!({"greeting": "Hi"}))
                .await
                .unwrap();
            assert_eq!(parked, ConfigOutcome::NotRunning);
            assert_eq!(
                sup.plugin("hello-python").unwrap().state,
                PluginState::Disabled
            );
            sup.enable("hello-python").await.unwrap();
            ready_again(&sup, "hello-python", None).await;
            let page = get(&sup, "hello-python", "/").await;
            assert_eq!(page["message"], "Hi from Hello World (Python)!");

            let missing = sup.configure("nope", json!({})).await;
            assert!(
                matches!(missing, Err(SupervisorError::NotFound(_))),
                "{missing:?}"
            );
            sup.shutdown().await;
        })
        .await;
}
