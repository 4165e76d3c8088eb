//! Tests of the store through its public API, each on its own temp data dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Duration;
use tokio::task::LocalSet;

use super::*;

/// A data dir under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("toru-store-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The data dir (a subdirectory, so that `open` has to create it).
    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn open(dir: &TempDir) -> Store {
    Store::open(&dir.data(), StoreOptions::default()).expect("open store")
}

fn open_with(dir: &TempDir, opts: StoreOptions) -> Store {
    Store::open(&dir.data(), opts).expect("open store")
}

fn event(kind: &str) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        message: format!("the plugin {kind}"),
        details: serde_json::json!({ "n": kind.len() }),
    }
}

fn enabled(on: bool) -> PluginRecord {
    PluginRecord {
        enabled: on,
        auto_disabled: None,
    }
}

#[test]
fn store_and_its_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let dir = TempDir::new();
    let store = open(&dir);
    send_sync(&store);
    send(store.kv_set("p", "k", "v"));
    send(store.set_plugin("p", enabled(true), None));
}

#[tokio::test]
async fn new_store_is_healthy_and_creates_its_data_dir_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let store = open(&dir);
    assert_eq!(store.health(), StoreHealth::Ok);
    let mode = std::fs::metadata(dir.data())
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(store.file_bytes() > 0);
    assert_eq!(store.commits(), 0);
    assert!(uuid::Uuid::parse_str(&store.instance_id()).is_ok());
}

#[tokio::test]
async fn kv_round_trip() {
    let dir = TempDir::new();
    let store = open(&dir);
    assert_eq!(store.kv_get("p", "k").expect("get"), None);
    store.kv_set("p", "k", "v1").await.expect("set");
    assert_eq!(store.kv_get("p", "k").expect("get").as_deref(), Some("v1"));
    store.kv_set("p", "k", "v2").await.expect("overwrite");
    assert_eq!(store.kv_get("p", "k").expect("get").as_deref(), Some("v2"));
    assert!(store.kv_delete("p", "k").await.expect("delete"));
    assert!(!store.kv_delete("p", "k").await.expect("delete again"));
    assert_eq!(store.kv_get("p", "k").expect("get"), None);
    assert_eq!(store.kv_usage("p").expect("usage"), 0);
}

#[tokio::test]
async fn kv_key_and_value_limits() {
    let dir = TempDir::new();
    let store = open(&dir);
    let key_256 = "k".repeat(MAX_KV_KEY_LEN);
    let key_257 = "k".repeat(MAX_KV_KEY_LEN + 1);
    let value_max = "v".repeat(MAX_KV_VALUE_LEN);
    let value_over = "v".repeat(MAX_KV_VALUE_LEN + 1);

    assert!(matches!(
        store.kv_set("p", "", "v").await,
        Err(StoreError::EmptyKey)
    ));
    assert!(matches!(
        store.kv_set("p", &key_257, "v").await,
        Err(StoreError::KeyTooLong(257))
    ));
    assert!(matches!(
        store.kv_get("p", &key_257),
        Err(StoreError::KeyTooLong(257))
    ));
    assert!(matches!(
        store.kv_delete("p", "").await,
        Err(StoreError::EmptyKey)
    ));
    assert!(matches!(
        store.kv_set("p", "k", &value_over).await,
        Err(StoreError::ValueTooLarge(65537))
    ));
    store
        .kv_set("p", &key_256, &value_max)
        .await
        .expect("largest key and value fit");
    assert_eq!(
        store.kv_get("p", &key_256).expect("get").map(|v| v.len()),
        Some(MAX_KV_VALUE_LEN)
    );
    // A key is bytes, not chars: 86 three-byte chars are 258 bytes.
    let wide = "€".repeat(86);
    assert!(matches!(
        store.kv_set("p", &wide, "v").await,
        Err(StoreError::KeyTooLong(258))
    ));
}

#[tokio::test]
async fn kv_quota_counts_keys_values_and_overwrite_delta() {
    let dir = TempDir::new();
    let store = open_with(
        &dir,
        StoreOptions {
            kv_quota_bytes: 100,
            ..StoreOptions::default()
        },
    );
    store
        .kv_set("p", "a", &"x".repeat(49))
        .await
        .expect("50 bytes");
    assert_eq!(store.kv_usage("p").expect("usage"), 50);
    store
        .kv_set("p", "b", &"x".repeat(49))
        .await
        .expect("100 bytes: exactly the quota");
    assert_eq!(store.kv_usage("p").expect("usage"), 100);

    match store.kv_set("p", "c", "").await {
        Err(StoreError::QuotaExceeded {
            quota,
            used,
            needed,
        }) => {
            assert_eq!((quota, used, needed), (100, 100, 1));
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    // Overwriting counts only the difference: growing "a" by one byte is refused...
    match store.kv_set("p", "a", &"x".repeat(50)).await {
        Err(StoreError::QuotaExceeded { needed, .. }) => assert_eq!(needed, 1),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    // ...same size is fine, shrinking frees room, and the freed room can be used.
    store
        .kv_set("p", "a", &"y".repeat(49))
        .await
        .expect("same size");
    store
        .kv_set("p", "a", &"y".repeat(9))
        .await
        .expect("shrink");
    assert_eq!(store.kv_usage("p").expect("usage"), 60);
    store
        .kv_set("p", "c", &"z".repeat(39))
        .await
        .expect("40 bytes more");
    assert_eq!(store.kv_usage("p").expect("usage"), 100);
    assert!(store.kv_delete("p", "b").await.expect("delete"));
    assert_eq!(store.kv_usage("p").expect("usage"), 50);
    // The refused writes changed nothing.
    assert_eq!(store.kv_get("p", "a").expect("get"), Some("y".repeat(9)));
    // Another plugin has its own quota.
    store
        .kv_set("q", "a", &"x".repeat(99))
        .await
        .expect("q's own 100 bytes");
}

#[tokio::test]
async fn kv_namespaces_are_isolated() {
    let dir = TempDir::new();
    let store = open(&dir);
    store.kv_set("a", "k", "from a").await.expect("set");
    store.kv_set("ab", "k", "from ab").await.expect("set");
    store.kv_set("b", "k2", "from b").await.expect("set");
    assert_eq!(
        store.kv_get("a", "k").expect("get").as_deref(),
        Some("from a")
    );
    assert_eq!(
        store.kv_get("ab", "k").expect("get").as_deref(),
        Some("from ab")
    );
    assert_eq!(store.kv_get("a", "k2").expect("get"), None);
    assert_eq!(
        store.kv_list("a", "", None, 100).expect("list"),
        (vec!["k".to_owned()], false)
    );
    assert_eq!(
        store.kv_list("c", "", None, 100).expect("list"),
        (vec![], false)
    );
    assert!(!store.kv_delete("a", "k2").await.expect("delete"));
    assert_eq!(
        store.kv_get("b", "k2").expect("get").as_deref(),
        Some("from b")
    );
    assert_eq!(store.kv_usage("a").expect("usage"), 7);
    assert_eq!(store.kv_usage("ab").expect("usage"), 8);
}

#[tokio::test]
async fn kv_list_prefix_start_after_limit_truncated() {
    let dir = TempDir::new();
    let store = open(&dir);
    for key in ["a", "b/1", "b/2", "b/3", "b0", "c", "b/10"] {
        store.kv_set("p", key, "v").await.expect("set");
    }
    store.kv_set("o", "b/0", "other plugin").await.expect("set");
    let keys = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    assert_eq!(
        store.kv_list("p", "", None, 100).expect("list"),
        (keys(&["a", "b/1", "b/10", "b/2", "b/3", "b0", "c"]), false)
    );
    assert_eq!(
        store.kv_list("p", "b/", None, 100).expect("list"),
        (keys(&["b/1", "b/10", "b/2", "b/3"]), false)
    );
    assert_eq!(
        store.kv_list("p", "b/", None, 2).expect("list"),
        (keys(&["b/1", "b/10"]), true)
    );
    assert_eq!(
        store.kv_list("p", "b/", Some("b/10"), 2).expect("list"),
        (keys(&["b/2", "b/3"]), false)
    );
    // Exactly `limit` left: not truncated.
    assert_eq!(
        store.kv_list("p", "b/", Some("b/1"), 3).expect("list"),
        (keys(&["b/10", "b/2", "b/3"]), false)
    );
    // start_after before the prefix starts at the prefix; after every match, nothing.
    assert_eq!(
        store.kv_list("p", "b/", Some("a"), 1).expect("list"),
        (keys(&["b/1"]), true)
    );
    assert_eq!(
        store.kv_list("p", "b/", Some("b/9"), 10).expect("list"),
        (vec![], false)
    );
    assert_eq!(
        store.kv_list("p", "zz", None, 10).expect("list"),
        (vec![], false)
    );
    assert_eq!(
        store.kv_list("p", "", None, 0).expect("list"),
        (vec![], true)
    );
}

#[tokio::test]
async fn kv_list_limit_is_capped() {
    let dir = TempDir::new();
    let store = open(&dir);
    let local = LocalSet::new();
    local
        .run_until(async {
            let tasks: Vec<_> = (0..MAX_KV_LIST_LIMIT + 5)
                .map(|i| {
                    let store = store.clone();
                    tokio::task::spawn_local(async move {
                        store
                            .kv_set("p", &format!("k{i:05}"), "")
                            .await
                            .expect("set");
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        })
        .await;
    let (keys, truncated) = store.kv_list("p", "", None, usize::MAX).expect("list");
    assert_eq!(keys.len(), MAX_KV_LIST_LIMIT);
    assert!(truncated);
}

#[tokio::test]
async fn events_are_newest_first_and_retention_is_per_plugin() {
    let dir = TempDir::new();
    let store = open_with(
        &dir,
        StoreOptions {
            events_per_plugin: 3,
            ..StoreOptions::default()
        },
    );
    for i in 0..5 {
        store
            .record_event("a", event(&format!("a{i}")))
            .await
            .expect("record");
    }
    let b = store.record_event("b", event("b0")).await.expect("record");
    assert_eq!(b.plugin, "b");
    assert_eq!(b.kind, "b0");
    assert_eq!(b.seq, 6);

    let kinds = |events: Vec<Event>| events.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(store.events(Some("a"), 10).expect("events")),
        ["a4", "a3", "a2"]
    );
    assert_eq!(
        kinds(store.events(Some("a"), 2).expect("events")),
        ["a4", "a3"]
    );
    assert_eq!(kinds(store.events(Some("b"), 10).expect("events")), ["b0"]);
    assert_eq!(
        kinds(store.events(None, 10).expect("events")),
        ["b0", "a4", "a3", "a2"]
    );
    assert_eq!(kinds(store.events(None, 1).expect("events")), ["b0"]);
    assert!(store.events(Some("nobody"), 10).expect("events").is_empty());

    let seqs: Vec<u64> = store
        .events(None, 10)
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [6, 5, 4, 3]);
    let stored = &store.events(Some("b"), 1).expect("events")[0];
    assert_eq!(stored, &b);
}

#[tokio::test]
async fn the_live_feed_sees_committed_events_in_order_and_a_lagging_receiver_is_told_its_loss() {
    let dir = TempDir::new();
    let store = open(&dir);
    let mut feed = store.subscribe_events();
    let a = store.record_event("a", event("a0")).await.expect("record");
    store
        .set_plugin(
            "b",
            PluginRecord {
                enabled: false,
                auto_disabled: None,
            },
            Some(event("disabled")),
        )
        .await
        .expect("set_plugin");
    assert_eq!(feed.recv().await.expect("first"), a);
    let b = feed.recv().await.expect("second");
    assert_eq!(
        (b.plugin.as_str(), b.kind.to_string()),
        ("b", "disabled".into())
    );
    assert!(feed.try_recv().is_err(), "nothing else was stored");

    // A refused write appends nothing; a receiver that falls behind loses the oldest, counted.
    let _ = store.kv_set("a", "", "v").await.expect_err("empty key");
    for i in 0..EVENT_FEED_LEN + 5 {
        store
            .record_event("a", event(&format!("x{i}")))
            .await
            .expect("record");
    }
    match feed.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
        other => panic!("expected a lag, got {other:?}"),
    }
    assert_eq!(feed.recv().await.expect("oldest kept").kind, "x5");
}

#[tokio::test]
async fn oversized_event_is_kept_with_its_details_omitted() {
    let dir = TempDir::new();
    let store = open(&dir);
    let big = NewEvent {
        kind: "crashed".into(),
        message: "é".repeat(MAX_EVENT_BYTES),
        details: serde_json::json!({ "stderr_tail": "x".repeat(MAX_EVENT_BYTES) }),
    };
    let stored = store.record_event("p", big).await.expect("record");
    assert_eq!(stored.kind, "crashed");
    assert!(stored.message.len() <= MAX_EVENT_MESSAGE_BYTES);
    assert!(stored.details.get("omitted").is_some());
    assert!(serde_json::to_vec(&stored).expect("json").len() < MAX_EVENT_BYTES);
}

#[tokio::test]
async fn set_plugin_writes_record_and_event_in_one_commit() {
    let dir = TempDir::new();
    let store = open(&dir);
    let before = store.commits();
    let record = PluginRecord {
        enabled: false,
        auto_disabled: Some("crashed 5 times in 60 s".into()),
    };
    store
        .set_plugin("p", record.clone(), Some(event("disabled")))
        .await
        .expect("set_plugin");
    assert_eq!(store.commits(), before + 1);
    assert_eq!(
        store.plugin_records().expect("records").get("p"),
        Some(&record)
    );
    let events = store.events(Some("p"), 10).expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "disabled");

    store
        .set_plugin("p", enabled(true), None)
        .await
        .expect("set_plugin");
    assert_eq!(
        store.plugin_records().expect("records").get("p"),
        Some(&enabled(true))
    );
    assert_eq!(store.events(Some("p"), 10).expect("events").len(), 1);
}

#[tokio::test]
async fn users_tokens_and_sessions() {
    let dir = TempDir::new();
    let store = open(&dir);
    let admin = UserRecord {
        name: "admin".into(),
        password_hash: "$argon2id$v=19$...".into(),
        role: Role::Admin,
        generation: 1,
    };
    assert_eq!(store.user("admin").expect("user"), None);
    store.put_user(admin.clone()).await.expect("put_user");
    assert_eq!(store.user("admin").expect("user"), Some(admin.clone()));
    let admin2 = UserRecord {
        generation: 2,
        ..admin
    };
    store.put_user(admin2.clone()).await.expect("put_user");
    assert_eq!(store.user("admin").expect("user"), Some(admin2));

    let now = crate::clock::now();
    let token = |name: &str| TokenRecord {
        name: name.into(),
        role: Role::Viewer,
        created: now,
    };
    store.put_token("h1", token("ci")).await.expect("put_token");
    store
        .put_token("h2", token("grafana"))
        .await
        .expect("put_token");
    assert!(matches!(
        store.put_token("h3", token("ci")).await,
        Err(StoreError::NameTaken(name)) if name == "ci"
    ));
    assert_eq!(store.token("h3").expect("token"), None);
    assert_eq!(store.token("h1").expect("token"), Some(token("ci")));
    let names = |tokens: Vec<TokenRecord>| tokens.into_iter().map(|t| t.name).collect::<Vec<_>>();
    assert_eq!(names(store.tokens().expect("tokens")), ["ci", "grafana"]);
    // The same hash under a new name gives up the old name.
    store.put_token("h1", token("ci-2")).await.expect("rename");
    assert_eq!(names(store.tokens().expect("tokens")), ["ci-2", "grafana"]);
    store
        .put_token("h3", token("ci"))
        .await
        .expect("the old name is free again");
    assert!(store.revoke_token("grafana").await.expect("revoke"));
    assert!(!store.revoke_token("grafana").await.expect("revoke again"));
    assert_eq!(store.token("h2").expect("token"), None);
    assert_eq!(names(store.tokens().expect("tokens")), ["ci", "ci-2"]);

    let session = |user: &str, age_h: i64| SessionRecord {
        user: user.into(),
        generation: 2,
        created: now - Duration::hours(age_h),
    };
    store
        .put_session("s1", session("admin", 0))
        .await
        .expect("put_session");
    store
        .put_session("s2", session("admin", 30))
        .await
        .expect("put_session");
    store
        .put_session("s3", session("viewer", 30))
        .await
        .expect("put_session");
    store
        .put_session("s4", session("viewer", 0))
        .await
        .expect("put_session");
    // Created "in the future": the wall clock has gone back since.
    store
        .put_session("s5", session("viewer", -30))
        .await
        .expect("put_session");
    assert_eq!(
        store.session("s1").expect("session"),
        Some(session("admin", 0))
    );
    assert!(store.delete_session("s1").await.expect("delete"));
    assert!(!store.delete_session("s1").await.expect("delete again"));
    assert_eq!(store.session("s1").expect("session"), None);
    assert_eq!(
        store
            .delete_sessions_of("admin")
            .await
            .expect("logout everywhere"),
        1
    );
    assert_eq!(store.session("s2").expect("session"), None);
    assert_eq!(store.delete_sessions_of("admin").await.expect("again"), 0);
    assert_eq!(
        store
            .delete_sessions_created_outside(now - Duration::hours(24), now + Duration::hours(1))
            .await
            .expect("expire"),
        2
    );
    assert_eq!(store.session("s3").expect("session"), None);
    assert_eq!(store.session("s5").expect("session"), None);
    assert_eq!(
        store.session("s4").expect("session"),
        Some(session("viewer", 0))
    );
    // A session hash reused for another user moves between users' indexes.
    store
        .put_session("s4", session("admin", 0))
        .await
        .expect("put_session");
    assert_eq!(
        store.delete_sessions_of("viewer").await.expect("none left"),
        0
    );
    assert_eq!(store.delete_sessions_of("admin").await.expect("one"), 1);
}

#[test]
fn second_open_of_the_same_dir_is_locked() {
    let dir = TempDir::new();
    let store = open(&dir);
    match Store::open(&dir.data(), StoreOptions::default()) {
        Err(OpenError::Locked(path)) => assert_eq!(path, dir.data()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    let _again = open(&dir);
}

#[test]
fn lock_released_only_when_the_last_clone_drops() {
    let dir = TempDir::new();
    let store = open(&dir);
    let clone = store.clone();
    drop(store);
    assert!(matches!(
        Store::open(&dir.data(), StoreOptions::default()),
        Err(OpenError::Locked(_))
    ));
    drop(clone);
    let _again = open(&dir);
}

#[test]
fn unusable_data_dir_is_an_open_error() {
    let dir = TempDir::new();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    assert!(matches!(
        Store::open(&file.join("data"), StoreOptions::default()),
        Err(OpenError::DataDir { .. })
    ));
}

#[tokio::test]
async fn instance_id_is_stable_across_reopen() {
    let dir = TempDir::new();
    let id = open(&dir).instance_id();
    let again = open(&dir);
    assert_eq!(again.instance_id(), id);
    again.kv_set("p", "k", "v").await.expect("set");
    drop(again);
    assert_eq!(open(&dir).instance_id(), id);
}

#[tokio::test]
async fn every_acknowledged_write_survives_reopen() {
    let dir = TempDir::new();
    let store = open(&dir);
    let local = LocalSet::new();
    local
        .run_until(async {
            let tasks: Vec<_> = (0..40)
                .map(|i| {
                    let store = store.clone();
                    tokio::task::spawn_local(async move {
                        store
                            .kv_set(&format!("p{}", i % 4), &format!("k{i}"), &format!("v{i}"))
                            .await
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("set");
            }
        })
        .await;
    store
        .set_plugin("p0", enabled(false), Some(event("disabled")))
        .await
        .expect("set_plugin");
    let now = crate::clock::now();
    store
        .put_token(
            "h",
            TokenRecord {
                name: "t".into(),
                role: Role::Admin,
                created: now,
            },
        )
        .await
        .expect("put_token");
    drop(store);

    let store = open(&dir);
    for i in 0..40 {
        assert_eq!(
            store
                .kv_get(&format!("p{}", i % 4), &format!("k{i}"))
                .expect("get"),
            Some(format!("v{i}"))
        );
    }
    assert_eq!(
        store.kv_usage("p0").expect("usage"),
        (0..40)
            .step_by(4)
            .map(|i: u64| 2 * (i.to_string().len() as u64 + 1))
            .sum::<u64>()
    );
    assert_eq!(
        store.plugin_records().expect("records").get("p0"),
        Some(&enabled(false))
    );
    assert_eq!(
        store.events(Some("p0"), 10).expect("events")[0].kind,
        "disabled"
    );
    assert_eq!(
        store.token("h").expect("token").map(|t| t.name).as_deref(),
        Some("t")
    );
    // The seq continues after a reopen.
    assert_eq!(
        store
            .record_event("p0", event("enabled"))
            .await
            .expect("record")
            .seq,
        2
    );
}

fn binding(file: &str) -> PluginBinding {
    PluginBinding {
        file: file.into(),
        since: crate::clock::now(),
        key_id: None,
    }
}

/// The binding and the policy's flags share one row but are written independently: neither
/// write loses the other's field, and a row written before bindings existed reads without one.
#[tokio::test]
async fn bindings_and_plugin_state_share_a_row_without_overwriting_each_other() {
    let old: PluginRow =
        serde_json::from_str(r#"{"enabled": false, "auto_disabled": "crashed"}"#).expect("old row");
    assert_eq!(old.binding, None);
    assert!(!old.record.enabled);

    let dir = TempDir::new();
    let store = open(&dir);
    let b = binding("hello.binary");
    let before = store
        .bind_plugin("hello", Some(b.clone()), None)
        .await
        .expect("bind");
    assert_eq!(before, None);
    assert_eq!(
        store.plugin_records().expect("records").get("hello"),
        Some(&enabled(true))
    );
    store
        .set_plugin("hello", enabled(false), Some(event("disabled")))
        .await
        .expect("set_plugin");
    assert_eq!(
        store.plugin_bindings().expect("bindings").get("hello"),
        Some(&b)
    );

    let released = store
        .bind_plugin("hello", None, Some(event("unbound")))
        .await
        .expect("unbind");
    assert_eq!(released, Some(b));
    assert!(store.plugin_bindings().expect("bindings").is_empty());
    assert_eq!(
        store.plugin_records().expect("records").get("hello"),
        Some(&enabled(false))
    );
    let kinds: Vec<_> = store
        .events(Some("hello"), 10)
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Unbound, EventKind::Disabled]);

    // Releasing an id the store never saw creates no row.
    assert_eq!(
        store
            .bind_plugin("ghost", None, None)
            .await
            .expect("unbind"),
        None
    );
    assert!(
        !store
            .plugin_records()
            .expect("records")
            .contains_key("ghost")
    );
}

#[tokio::test]
async fn legacy_config_is_imported_once() {
    let dir = TempDir::new();
    let legacy = dir.path().join("config.json");
    std::fs::write(&legacy, r#"{"plugins": {"hello": true, "weather": false}}"#).expect("write");
    let opts = StoreOptions {
        legacy_config: Some(legacy.clone()),
        ..StoreOptions::default()
    };
    let store = open_with(&dir, opts.clone());
    let records = store.plugin_records().expect("records");
    assert_eq!(records.get("hello"), Some(&enabled(true)));
    assert_eq!(records.get("weather"), Some(&enabled(false)));
    store
        .set_plugin("hello", enabled(false), None)
        .await
        .expect("set_plugin");
    drop(store);

    std::fs::write(&legacy, r#"{"plugins": {"hello": true, "new": true}}"#).expect("write");
    let store = open_with(&dir, opts);
    let records = store.plugin_records().expect("records");
    assert_eq!(
        records.get("hello"),
        Some(&enabled(false)),
        "not imported again"
    );
    assert_eq!(records.get("new"), None);
}

#[test]
fn bad_or_missing_legacy_config_is_ignored() {
    for content in [
        Some("{not json"),
        Some(r#"{"plugins": {"x": "yes"}}"#),
        None,
    ] {
        let dir = TempDir::new();
        let legacy = dir.path().join("config.json");
        if let Some(content) = content {
            std::fs::write(&legacy, content).expect("write");
        }
        let store = open_with(
            &dir,
            StoreOptions {
                legacy_config: Some(legacy),
                ..StoreOptions::default()
            },
        );
        assert_eq!(store.health(), StoreHealth::Ok);
        assert!(store.plugin_records().expect("records").is_empty());
    }
}

/// The files in `dir` whose name starts with `toru.redb.corrupt-`.
fn moved_aside(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("toru.redb.corrupt-"))
        })
        .collect();
    found.sort();
    found
}

/// Found under fault injection: a corrupt file was moved aside, the host ran in memory and
/// acknowledged writes (setup, tokens) that could not survive, and the next start created an empty
/// store as if the device were new. Now the file stays where it is, untouched, and the store is
/// degraded — refusing every write — on every start until an admin decides.
#[tokio::test]
async fn garbage_file_is_left_in_place_and_every_write_is_refused_on_every_start() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.data()).expect("mkdir");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let path = dir.data().join("toru.redb");
    std::fs::write(&path, &garbage).expect("write");

    for start in 0..2 {
        let store = open(&dir);
        match store.health() {
            StoreHealth::Degraded { cause, reason } => {
                assert_eq!(cause, DegradedCause::FileUnusable, "start {start}");
                assert!(reason.contains("toru.redb"), "{reason}");
                assert!(reason.contains("toru store reset"), "{reason}");
            }
            StoreHealth::Ok => panic!("start {start}: expected degraded"),
        }
        assert_eq!(store.file_bytes(), 0);
        // Every write is refused: nothing told "done" now could survive a restart.
        assert!(matches!(
            store.kv_set("p", "k", "v").await,
            Err(StoreError::Degraded)
        ));
        assert!(matches!(
            store
                .set_plugin("hello", enabled(false), Some(event("disabled")))
                .await,
            Err(StoreError::Degraded)
        ));
        assert!(matches!(
            store
                .put_user(UserRecord {
                    name: "admin".into(),
                    password_hash: "h".into(),
                    role: Role::Admin,
                    generation: 1,
                })
                .await,
            Err(StoreError::Degraded)
        ));
        assert!(matches!(
            store.record_event("p", event("started")).await,
            Err(StoreError::Degraded)
        ));
        // Reads answer (from the empty stand-in).
        assert_eq!(store.kv_get("p", "k").expect("get"), None);
        assert_eq!(store.user("admin").expect("user"), None);
        drop(store);
        assert!(moved_aside(&dir.data()).is_empty(), "nothing is moved");
        assert!(
            std::fs::read(&path).expect("read") == garbage,
            "the file is kept byte for byte"
        );
    }
}

/// An empty `toru.redb` used to be taken for a new store without a word. A new store is created
/// under another name and renamed into place, so an empty one was truncated: it degrades.
#[tokio::test]
async fn an_empty_store_file_is_damage_not_a_new_store() {
    let dir = TempDir::new();
    let store = open(&dir);
    store.kv_set("p", "k", "v").await.expect("set");
    drop(store);
    assert!(!dir.data().join("toru.redb.new").exists());
    std::fs::write(dir.data().join("toru.redb"), b"").expect("truncate");
    let store = open(&dir);
    match store.health() {
        StoreHealth::Degraded { cause, reason } => {
            assert_eq!(cause, DegradedCause::FileUnusable);
            assert!(reason.contains("empty"), "{reason}");
        }
        StoreHealth::Ok => panic!("expected degraded"),
    }
    assert!(matches!(
        store.kv_set("p", "k", "v").await,
        Err(StoreError::Degraded)
    ));
}

/// A first start that died before its new store was renamed into place leaves `toru.redb.new`
/// and no `toru.redb`: the next start creates the store afresh.
#[tokio::test]
async fn an_interrupted_first_start_is_finished_by_the_next() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.data()).expect("mkdir");
    std::fs::write(dir.data().join("toru.redb.new"), b"half").expect("write");
    let store = open(&dir);
    assert_eq!(store.health(), StoreHealth::Ok);
    store.kv_set("p", "k", "v").await.expect("set");
    assert!(!dir.data().join("toru.redb.new").exists());
    assert!(dir.data().join("toru.redb").exists());
}

#[tokio::test]
async fn damaged_store_file_is_left_in_place() {
    let dir = TempDir::new();
    let store = open(&dir);
    for i in 0..50 {
        store
            .kv_set("p", &format!("k{i}"), &"v".repeat(1000))
            .await
            .expect("set");
    }
    drop(store);
    let path = dir.data().join("toru.redb");
    let mut bytes = std::fs::read(&path).expect("read");
    // Flip bits through the middle of the file: the data pages, not only the header.
    let len = bytes.len();
    for b in &mut bytes[len / 4..len / 2] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("write");

    let store = open(&dir);
    assert!(
        matches!(
            store.health(),
            StoreHealth::Degraded {
                cause: DegradedCause::FileUnusable,
                ..
            }
        ),
        "{:?}",
        store.health()
    );
    drop(store);
    assert!(
        std::fs::read(&path).expect("read") == bytes,
        "kept byte for byte"
    );
}

#[tokio::test]
async fn newer_schema_is_left_in_place_and_degrades() {
    let dir = TempDir::new();
    let store = open(&dir);
    store.kv_set("p", "k", "v").await.expect("set");
    drop(store);
    // Pretend a newer toru wrote the file.
    {
        let db = redb::Database::create(dir.data().join("toru.redb")).expect("open raw");
        let txn = db.begin_write().expect("txn");
        txn.open_table(tables::META)
            .expect("meta")
            .insert(tables::META_SCHEMA_VERSION, "2")
            .expect("insert");
        txn.commit().expect("commit");
    }

    let store = open(&dir);
    match store.health() {
        StoreHealth::Degraded { reason, cause } => {
            assert_eq!(cause, DegradedCause::NewerSchema);
            assert!(
                reason.contains("newer toru") && reason.contains("version 2"),
                "{reason}"
            );
        }
        StoreHealth::Ok => panic!("expected degraded"),
    }
    drop(store);
    assert!(moved_aside(&dir.data()).is_empty());
    // Left in place with its rows unchanged (redb itself may rewrite its allocator state).
    let db = redb::Database::create(dir.data().join("toru.redb")).expect("open raw");
    let txn = redb::ReadableDatabase::begin_read(&db).expect("txn");
    let meta = txn.open_table(tables::META).expect("meta");
    let version = meta
        .get(tables::META_SCHEMA_VERSION)
        .expect("get")
        .map(|v| v.value().to_owned());
    assert_eq!(version.as_deref(), Some("2"));
    let tables = txn.list_tables().expect("tables").count();
    assert_eq!(tables, 11, "no table added or dropped");
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_writes_share_commits() {
    let dir = TempDir::new();
    let store = open(&dir);
    let local = LocalSet::new();
    local
        .run_until(async {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let store = store.clone();
                    tokio::task::spawn_local(async move {
                        store
                            .kv_set(&format!("p{}", i % 5), &format!("k{i}"), "v")
                            .await
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("set");
            }
        })
        .await;
    assert!(
        store.commits() < 50,
        "50 writes took {} commits",
        store.commits()
    );
    assert_eq!(
        store.kv_list("p0", "", None, 100).expect("list").0.len(),
        10
    );
}

/// Blocks the writer thread inside a transaction until the returned sender is dropped or sent
/// to, so that a test can queue writes behind it deterministically.
fn hold_writer(
    store: &Store,
) -> (
    std::sync::mpsc::Sender<()>,
    impl Future<Output = Result<(), StoreError>> + use<>,
) {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let store = store.clone();
    let held = async move {
        store
            .inner
            .writer
            .submit(0, move |_, _| {
                let _ = gate.lock().expect("gate").recv();
                Ok(())
            })
            .await
    };
    (release, held)
}

#[tokio::test(flavor = "current_thread")]
async fn queued_writes_commit_together_and_a_refused_one_fails_alone() {
    let dir = TempDir::new();
    let store = open_with(
        &dir,
        StoreOptions {
            kv_quota_bytes: 10,
            ..StoreOptions::default()
        },
    );
    let local = LocalSet::new();
    local
        .run_until(async {
            let (release, held) = hold_writer(&store);
            let held = tokio::task::spawn_local(held);
            tokio::task::yield_now().await;
            let writes: Vec<_> = (0..50)
                .map(|i| {
                    let store = store.clone();
                    tokio::task::spawn_local(async move {
                        // Write 25 is over the quota; the others fit.
                        let value = if i == 25 { "x".repeat(20) } else { "v".into() };
                        store.kv_set(&format!("p{i}"), "k", &value).await
                    })
                })
                .collect();
            // Let every task queue its write behind the held one.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            release.send(()).expect("release");
            held.await.expect("task").expect("held write");
            for (i, write) in writes.into_iter().enumerate() {
                let result = write.await.expect("task");
                if i == 25 {
                    assert!(
                        matches!(result, Err(StoreError::QuotaExceeded { .. })),
                        "{result:?}"
                    );
                } else {
                    result.expect("set");
                }
            }
        })
        .await;
    assert!(
        store.commits() <= 2,
        "the held batch and one more, got {}",
        store.commits()
    );
    assert_eq!(store.kv_get("p49", "k").expect("get").as_deref(), Some("v"));
    assert_eq!(store.kv_get("p25", "k").expect("get"), None);
    assert_eq!(store.kv_usage("p25").expect("usage"), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn close_commits_queued_writes_then_refuses_new_ones() {
    let dir = TempDir::new();
    let store = open(&dir);
    let local = LocalSet::new();
    local
        .run_until(async {
            let (release, held) = hold_writer(&store);
            let held = tokio::task::spawn_local(held);
            tokio::task::yield_now().await;
            let queued = {
                let store = store.clone();
                tokio::task::spawn_local(async move { store.kv_set("p", "k", "queued").await })
            };
            tokio::task::yield_now().await;
            // Close from another thread while the writer is held, then release it.
            let closer = {
                let store = store.clone();
                std::thread::spawn(move || store.close())
            };
            std::thread::sleep(std::time::Duration::from_millis(20));
            release.send(()).expect("release");
            closer.join().expect("close");
            held.await.expect("task").expect("held write");
            queued
                .await
                .expect("task")
                .expect("queued before close: committed");
        })
        .await;
    assert!(matches!(
        store.kv_set("p", "k2", "late").await,
        Err(StoreError::Closed)
    ));
    assert_eq!(
        store.kv_get("p", "k").expect("reads still work").as_deref(),
        Some("queued")
    );
    store.close();
}

#[test]
fn store_error_names_its_cause() {
    let failure = StorageFailure::new(
        "committing a write transaction",
        std::io::Error::other("No space left on device"),
    );
    let e = StoreError::from(failure);
    assert_eq!(
        e.to_string(),
        "storage failed while committing a write transaction"
    );
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("No space left on device"));
}

/// Opening a damaged file must never panic (a panic aborts the release build): each damage below
/// yields either a healthy store (the damage hit free space) or a degraded one with the file
/// left in place.
#[tokio::test]
async fn no_damage_pattern_panics_on_open() {
    let pristine = {
        let dir = TempDir::new();
        let store = open(&dir);
        for i in 0..30 {
            store
                .kv_set("p", &format!("k{i}"), &"v".repeat(2000))
                .await
                .expect("set");
            store
                .record_event("p", event("started"))
                .await
                .expect("record");
        }
        store
            .put_user(UserRecord {
                name: "admin".into(),
                password_hash: "h".into(),
                role: Role::Admin,
                generation: 1,
            })
            .await
            .expect("put_user");
        drop(store);
        std::fs::read(dir.data().join("toru.redb")).expect("read")
    };
    let len = pristine.len();
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let mut damages: Vec<(String, Damage)> = vec![
        ("empty".into(), Box::new(|b| b.clear())),
        (
            "truncated to 100 bytes".into(),
            Box::new(|b| b.truncate(100)),
        ),
        (
            "truncated to half".into(),
            Box::new(move |b| b.truncate(len / 2)),
        ),
        (
            "last page cut".into(),
            Box::new(move |b| b.truncate(len - 4096)),
        ),
        ("header zeroed".into(), Box::new(|b| b[..512].fill(0))),
        ("all zero".into(), Box::new(|b| b.fill(0))),
    ];
    for offset in (0..len).step_by(len / 40) {
        damages.push((
            format!("byte flipped at {offset}"),
            Box::new(move |b| b[offset] ^= 0xff),
        ));
        damages.push((
            format!("page zeroed at {offset}"),
            Box::new(move |b| {
                let end = (offset + 4096).min(b.len());
                b[offset..end].fill(0);
            }),
        ));
    }
    let mut outcomes = BTreeMap::<String, usize>::new();
    for (name, damage) in &damages {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.data()).expect("mkdir");
        let mut bytes = pristine.clone();
        damage(&mut bytes);
        std::fs::write(dir.data().join("toru.redb"), &bytes).expect("write");
        let data = dir.data();
        let opened = std::panic::catch_unwind(move || Store::open(&data, StoreOptions::default()));
        let store = match opened {
            Ok(store) => store.expect("open"),
            Err(_) => panic!("opening a file with damage {name:?} panicked"),
        };
        let outcome = match store.health() {
            StoreHealth::Ok => {
                // Whatever opened must also read without panicking.
                let _ = store.kv_list("p", "", None, 100);
                let _ = store.events(None, 100);
                "ok".to_owned()
            }
            StoreHealth::Degraded { cause, reason } => {
                assert_eq!(cause, DegradedCause::FileUnusable, "{name}: {reason}");
                drop(store);
                assert!(
                    std::fs::read(dir.data().join("toru.redb")).expect("read") == bytes,
                    "{name}: the file is left as it was"
                );
                "degraded".to_owned()
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!(
        "damage outcomes over {} patterns: {outcomes:?}",
        damages.len()
    );
}

/// Prints commit latency and group-commit throughput on this machine's disk. Run it on the device:
/// `cargo test --release --lib store::tests::measure_commits -- --ignored --nocapture`
/// (`TORU_STORE_BENCH_DIR` picks the disk; the default is the system temp dir).
#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement, not a check"]
async fn measure_commits() {
    use std::time::Instant;
    let dir = TempDir::new();
    let data = std::env::var_os("TORU_STORE_BENCH_DIR").map_or_else(
        || dir.data(),
        |d| PathBuf::from(d).join(format!("toru-bench-{}", std::process::id())),
    );
    let store = Store::open(
        &data,
        StoreOptions {
            kv_quota_bytes: u64::MAX,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    const N: usize = 200;
    let value = "v".repeat(100);

    let start = Instant::now();
    for i in 0..N {
        store
            .kv_set("seq", &format!("k{i}"), &value)
            .await
            .expect("set");
    }
    let sequential = start.elapsed();
    let commits_before = store.commits();

    let local = LocalSet::new();
    let start = Instant::now();
    local
        .run_until(async {
            let tasks: Vec<_> = (0..N)
                .map(|i| {
                    let (store, value) = (store.clone(), value.clone());
                    tokio::task::spawn_local(async move {
                        store
                            .kv_set(&format!("p{}", i % 10), &format!("k{i}"), &value)
                            .await
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("set");
            }
        })
        .await;
    let concurrent = start.elapsed();
    let concurrent_commits = store.commits() - commits_before;
    eprintln!(
        "sequential: {N} writes, {N} commits, {:.2} ms per durable write ({:.0} writes/s)",
        sequential.as_secs_f64() * 1000.0 / N as f64,
        N as f64 / sequential.as_secs_f64()
    );
    eprintln!(
        "concurrent: {N} writes in {concurrent_commits} commits, {:.1} ms total ({:.0} writes/s)",
        concurrent.as_secs_f64() * 1000.0,
        N as f64 / concurrent.as_secs_f64()
    );
    eprintln!("file: {} bytes", store.file_bytes());
    drop(store);
    let _ = std::fs::remove_dir_all(&data);
}

/// A small deterministic PRNG (xorshift64*), so the model test needs no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Random KV writes, submitted concurrently in groups so that they share batches, checked one by
/// one against a BTreeMap model of namespaces and quotas; then the whole state is compared.
#[tokio::test(flavor = "current_thread")]
async fn kv_matches_a_reference_model() {
    const QUOTA: u64 = 120;
    const PLUGINS: [&str; 3] = ["a", "ab", "b"];
    const KEYS: [&str; 6] = ["x", "x/1", "x/2", "y", "yy", "z"];
    let dir = TempDir::new();
    let store = open_with(
        &dir,
        StoreOptions {
            kv_quota_bytes: QUOTA,
            ..StoreOptions::default()
        },
    );
    let mut model = BTreeMap::<(String, String), String>::new();
    let usage = |model: &BTreeMap<(String, String), String>, p: &str| -> u64 {
        model
            .iter()
            .filter(|((mp, _), _)| mp == p)
            .map(|((_, k), v)| (k.len() + v.len()) as u64)
            .sum()
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let local = LocalSet::new();
    let mut refused = 0;
    for _round in 0..20 {
        // (plugin, key, Some(value) = set / None = delete)
        let ops: Vec<(String, String, Option<String>)> = (0..30)
            .map(|_| {
                let plugin = PLUGINS[rng.below(3) as usize].to_owned();
                let key = KEYS[rng.below(6) as usize].to_owned();
                let value = (rng.below(4) != 0).then(|| "v".repeat(rng.below(60) as usize));
                (plugin, key, value)
            })
            .collect();
        let results: Vec<Result<bool, StoreError>> = local
            .run_until(async {
                let tasks: Vec<_> = ops
                    .iter()
                    .cloned()
                    .map(|(plugin, key, value)| {
                        let store = store.clone();
                        tokio::task::spawn_local(async move {
                            match value {
                                Some(value) => {
                                    store.kv_set(&plugin, &key, &value).await.map(|()| true)
                                }
                                None => store.kv_delete(&plugin, &key).await,
                            }
                        })
                    })
                    .collect();
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.expect("task"));
                }
                results
            })
            .await;
        for ((plugin, key, value), result) in ops.into_iter().zip(results) {
            let entry = (plugin.clone(), key.clone());
            match value {
                Some(value) => {
                    let used = usage(&model, &plugin);
                    let old = model
                        .get(&entry)
                        .map_or(0, |v| (key.len() + v.len()) as u64);
                    let new = (key.len() + value.len()) as u64;
                    if new > old && used - old + new > QUOTA {
                        assert!(
                            matches!(result, Err(StoreError::QuotaExceeded { used: u, needed: n, .. }) if u == used && n == new - old),
                            "{plugin}/{key}: {result:?}"
                        );
                        refused += 1;
                    } else {
                        assert!(result.is_ok(), "{plugin}/{key}: {result:?}");
                        model.insert(entry, value);
                    }
                }
                None => {
                    let existed = model.remove(&entry).is_some();
                    assert_eq!(result.expect("delete"), existed, "{plugin}/{key}");
                }
            }
        }
    }
    assert!(refused > 0, "the model run should hit the quota");
    assert!(
        store.commits() < 600,
        "{} commits for 600 writes",
        store.commits()
    );
    for plugin in PLUGINS {
        assert_eq!(
            store.kv_usage(plugin).expect("usage"),
            usage(&model, plugin),
            "{plugin}"
        );
        let expected: Vec<String> = model
            .keys()
            .filter(|(p, _)| p == plugin)
            .map(|(_, k)| k.clone())
            .collect();
        assert_eq!(
            store.kv_list(plugin, "", None, 100).expect("list").0,
            expected
        );
        for key in KEYS {
            assert_eq!(
                store.kv_get(plugin, key).expect("get"),
                model.get(&(plugin.to_owned(), key.to_owned())).cloned()
            );
        }
    }
}

/// The environment variable that turns [`crash_child`] into the writer killed by
/// [`acknowledged_writes_survive_sigkill`].
const CRASH_DIR_ENV: &str = "TORU_STORE_CRASH_CHILD_DIR";

/// Not a test on its own: with [`CRASH_DIR_ENV`] set, writes from 8 concurrent tasks forever and
/// prints `acked <plugin> <key>` after each acknowledged write, until it is killed.
#[tokio::test(flavor = "current_thread")]
#[ignore = "run by acknowledged_writes_survive_sigkill"]
async fn crash_child() {
    use std::io::Write;
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir), StoreOptions::default()).expect("open");
    let local = LocalSet::new();
    local
        .run_until(async {
            let writers: Vec<_> = (0..8)
                .map(|w| {
                    let store = store.clone();
                    tokio::task::spawn_local(async move {
                        for i in 0.. {
                            let key = format!("k{i}");
                            store
                                .kv_set(&format!("w{w}"), &key, &format!("value {w} {i}"))
                                .await
                                .expect("set");
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "acked w{w} {key}").expect("stdout");
                            out.flush().expect("stdout");
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.await.expect("writer");
            }
        })
        .await;
}

/// Kills a process that is writing (SIGKILL, mid-commit in all likelihood), then reopens its
/// store: every write it had acknowledged must be there, and the file must open healthy.
#[test]
fn acknowledged_writes_survive_sigkill() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = TempDir::new();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "store::tests::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.data())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if let Some(rest) = line.strip_prefix("acked ") {
            let (plugin, key) = rest.split_once(' ').expect("acked <plugin> <key>");
            acked.push((plugin.to_owned(), key.to_owned()));
            if acked.len() == 300 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert_eq!(acked.len(), 300, "the writer stopped early");

    let store = open(&dir);
    assert_eq!(store.health(), StoreHealth::Ok);
    for (plugin, key) in &acked {
        let i = key.trim_start_matches('k');
        let w = plugin.trim_start_matches('w');
        assert_eq!(
            store.kv_get(plugin, key).expect("get"),
            Some(format!("value {w} {i}")),
            "{plugin}/{key} was acknowledged"
        );
    }
}

/// `toru store repair`: a store whose pages fail their checksums (one value's bytes changed on
/// disk) is refused on open; repair salvages every readable row into a new store, keeps the
/// instance id, the users and the KV, keeps the damaged file, and the result opens healthy.
#[tokio::test]
async fn repair_salvages_readable_rows_and_keeps_the_damaged_file() {
    let dir = TempDir::new();
    let store = open(&dir);
    let id = store.instance_id();
    for i in 0..50 {
        store
            .kv_set(
                "p",
                &format!("k{i:02}"),
                &format!("SALVAGE{i:02}").repeat(40),
            )
            .await
            .expect("set");
    }
    store
        .put_user(UserRecord {
            name: "admin".into(),
            password_hash: "h".into(),
            role: Role::Admin,
            generation: 1,
        })
        .await
        .expect("put_user");
    store
        .put_token(
            "hash1",
            TokenRecord {
                name: "t1".into(),
                role: Role::Viewer,
                created: crate::clock::now(),
            },
        )
        .await
        .expect("put_token");
    drop(store);

    let path = dir.data().join("toru.redb");
    let mut bytes = std::fs::read(&path).expect("read");
    let needle = b"SALVAGE17";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the value is on disk");
    bytes[at] = b'X';
    std::fs::write(&path, &bytes).expect("write");
    assert!(
        matches!(open(&dir).health(), StoreHealth::Degraded { .. }),
        "a changed page must fail its checksum"
    );
    assert!(matches!(
        status(&dir.data(), &StoreOptions::default()),
        Ok(StoreHealth::Degraded { .. })
    ));

    let outcome = repair(&dir.data(), &StoreOptions::default()).expect("repair");
    let RepairOutcome::Salvaged { kept_as, report } = outcome else {
        panic!("expected a salvage, got {outcome:?}");
    };
    assert_eq!(
        std::fs::read(&kept_as).expect("kept"),
        bytes,
        "kept byte for byte"
    );
    assert_eq!(report.copied.get("kv"), Some(&50), "{report:?}");
    assert!(report.incomplete.is_empty(), "{report:?}");

    let store = open(&dir);
    assert_eq!(store.health(), StoreHealth::Ok);
    assert_eq!(store.instance_id(), id);
    assert_eq!(
        store.user("admin").expect("user").map(|u| u.role),
        Some(Role::Admin)
    );
    assert_eq!(store.tokens().expect("tokens").len(), 1);
    let (keys, _) = store.kv_list("p", "", None, 100).expect("list");
    assert_eq!(keys.len(), 50);
    assert_eq!(
        store.kv_usage("p").expect("usage"),
        (0..50)
            .map(|i| format!("k{i:02}").len() as u64 + 9 * 40)
            .sum::<u64>()
    );
    // And the store keeps working.
    store
        .kv_set("p", "new", "v")
        .await
        .expect("set after repair");
    drop(store);
    assert!(matches!(
        repair(&dir.data(), &StoreOptions::default()),
        Ok(RepairOutcome::Healthy)
    ));
}

#[tokio::test]
async fn reset_keeps_the_file_aside_and_the_next_start_is_new() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.data()).expect("mkdir");
    std::fs::write(dir.data().join("toru.redb"), b"garbage").expect("write");
    let held = open(&dir);
    assert!(
        matches!(
            reset(&dir.data()),
            Err(MaintenanceError::Open(OpenError::Locked(_)))
        ),
        "refused while a store is open on the dir"
    );
    drop(held);
    let kept = reset(&dir.data()).expect("reset");
    assert_eq!(std::fs::read(&kept).expect("kept"), b"garbage");
    assert_eq!(moved_aside(&dir.data()), vec![kept]);
    let store = open(&dir);
    assert_eq!(store.health(), StoreHealth::Ok);
    assert_eq!(store.user("admin").expect("user"), None);
}

#[test]
fn event_kinds_are_stored_as_the_strings_the_api_shows() {
    let known = [
        (EventKind::Started, "started"),
        (EventKind::Ready, "ready"),
        (EventKind::Stopped, "stopped"),
        (EventKind::Crashed, "crashed"),
        (EventKind::Restarted, "restarted"),
        (EventKind::Hung, "hung"),
        (EventKind::Enabled, "enabled"),
        (EventKind::Disabled, "disabled"),
        (EventKind::MetadataInvalid, "metadata-invalid"),
    ];
    for (kind, text) in known {
        let json = serde_json::to_string(&kind).expect("serialise");
        assert_eq!(json, format!("\"{text}\""));
        let back: EventKind = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, kind);
    }
    // A kind written by a newer build reads back unchanged.
    let other: EventKind = serde_json::from_str("\"upgraded\"").expect("deserialise");
    assert_eq!(other, EventKind::Other("upgraded".into()));
    assert_eq!(
        serde_json::to_string(&other).expect("serialise"),
        "\"upgraded\""
    );
}
