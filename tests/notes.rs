//! The notes plugin (`plugins/notes`, Python, SDK `toru_plugin`) on the real host, installed as a
//! signed package packed from its folder as it is in the repository, driven through HTTP with an
//! admin token: notes and checklists created, ticked, edited, paged through and deleted, each one a
//! key in the host's KV store; clear errors for bad input; the data and the settings still there
//! after the plugin restarts; a settings change applied without a restart (the `config` message);
//! its log lines in the host's log. When the tests run as root the host confines the plugin (its
//! own uid, Landlock, seccomp), so this also shows a Python plugin working confined.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pkg_util;
mod support;

use std::collections::BTreeSet;

use pkg_util::{Key, admin_token, api, cli_install_ok, pid_of, wait_ready};
use serde_json::{Value, json};
use support::package::PackageDir;
use support::{Bins, Host, Resp, TempDir, eventually, is_root};

/// Where the notes plugin answers.
const ROUTE: &str = "/api/plugins/route/notes";

/// A host with `notes` installed from `plugins/notes` (packed with `toru plugin pack`, signed by a
/// key the host trusts) and ready; the host, an admin token and the dir holding key and package.
fn install_notes(tag: &str) -> (Host, String, TempDir) {
    let bins = Bins::locate().unwrap();
    let work = TempDir::new(tag).unwrap();
    let h = pkg_util::start(None, &pkg_util::config(""), &[]);
    let token = admin_token(&h);
    let key = Key::new(&bins, "notes-pub");
    key.trust(&h);
    let pkg = work.join("notes-0.1.0.toru");
    PackageDir {
        dir: bins.repo.join("plugins/notes"),
    }
    .pack_ok(&bins, Some(&key.secret), &pkg)
    .unwrap();
    cli_install_ok(&h, "install", &pkg);
    let p = wait_ready(&h, &token, "notes");
    assert_eq!(p["package"]["version"], "0.1.0", "{p}");
    assert_eq!(p["protocol"], "1.1", "{p}");
    (h, token, work)
}

/// A request to the plugin with a JSON body.
fn call(h: &Host, token: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
    api(h, token, method, &format!("{ROUTE}{path}"), body)
}

/// A request to the plugin with raw body bytes.
fn call_raw(h: &Host, token: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    let auth = format!("Bearer {token}");
    h.http(
        method,
        &format!("{ROUTE}{path}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
}

/// [`call`] that must answer `status`; the JSON answer.
fn ok(h: &Host, token: &str, method: &str, path: &str, body: Option<&Value>, status: u16) -> Value {
    let r = call(h, token, method, path, body);
    assert_eq!(r.status, status, "{method} {path}: {}", r.text());
    r.json()
}

/// Every note, page after page of `limit`; the ids in the order given, and how many pages.
fn all_ids(h: &Host, token: &str, limit: usize) -> (Vec<String>, usize) {
    let (mut ids, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = ok(
            h,
            token,
            "GET",
            &format!("/notes?limit={limit}&cursor={cursor}"),
            None,
            200,
        );
        let notes = page["notes"].as_array().unwrap();
        assert!(notes.len() <= limit, "{page}");
        ids.extend(notes.iter().map(|n| n["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return (ids, pages),
        }
        assert!(pages < 100, "the pages never end");
    }
}

/// The host's KV keys of the plugin under `prefix` (through the admin API, not the plugin).
fn kv_keys(h: &Host, token: &str, prefix: &str) -> Vec<String> {
    let r = api(
        h,
        token,
        "POST",
        "/api/plugins/notes/kv",
        Some(&json!({"action": "list", "prefix": prefix})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// The messages of the plugin's log lines (newest page).
fn log_messages(h: &Host, token: &str) -> Vec<(String, String)> {
    let r = api(
        h,
        token,
        "GET",
        "/api/plugins/notes/logs?page_size=1000",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["stream"].as_str().unwrap_or_default().to_string(),
                l["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Wait for a log line sent with the protocol (`ctx.log`) that contains `text`.
fn wait_log(h: &Host, token: &str, text: &str) {
    eventually(&format!("a log line with {text:?}"), || {
        log_messages(h, token)
            .iter()
            .any(|(stream, m)| stream == "protocol" && m.contains(text))
            .then_some(())
    });
}

/// The real uid of process `pid`.
fn uid_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn notes_and_checklists_live_in_the_kv_store_page_and_survive_a_restart() {
    let (h, token, _work) = install_notes("notes");
    let p = pkg_util::plugin(&h, &token, "notes");
    if is_root() {
        // Confined: its own uid, as the Security page says.
        let sec = api(&h, &token, "GET", "/api/plugins/notes/security", None).json();
        assert_eq!(sec["isolation"], "on", "{sec}");
        let uid = uid_of(pid_of(&p));
        assert_ne!(uid, 0);
        assert_eq!(sec["user"]["uid"].as_u64(), Some(uid), "{sec}");
    }
    wait_log(&h, &token, "notes ready: 0 notes in the store, 20 a page");
    let info = ok(&h, &token, "GET", "/", None, 200);
    assert_eq!(
        (info["title"].as_str(), info["page_size"].as_u64()),
        (Some("Notes"), Some(20))
    );

    // A note and a checklist.
    let note = ok(
        &h,
        &token,
        "POST",
        "/notes",
        Some(&json!({"kind": "note", "title": "Groceries", "body": "milk\neggs"})),
        201,
    );
    let id = note["id"].as_str().unwrap().to_string();
    assert_eq!(note["body"], "milk\neggs");
    let list = ok(
        &h,
        &token,
        "POST",
        "/notes",
        Some(&json!({"kind": "checklist", "title": "Trip", "items": ["tent", "stove", "map"]})),
        201,
    );
    let cid = list["id"].as_str().unwrap().to_string();
    assert_eq!(
        list["items"][1],
        json!({"id": 2, "text": "stove", "done": false})
    );

    // Tick, untick, tick: the reply and a fresh read agree.
    let items = format!("/notes/{cid}/items");
    let t = ok(
        &h,
        &token,
        "PATCH",
        &format!("{items}/2"),
        Some(&json!({"done": true})),
        200,
    );
    assert_eq!(t["items"][1]["done"], true, "{t}");
    let t = ok(
        &h,
        &token,
        "PATCH",
        &format!("{items}/3"),
        Some(&json!({"done": true})),
        200,
    );
    assert_eq!(t["items"][2]["done"], true, "{t}");
    ok(
        &h,
        &token,
        "PATCH",
        &format!("{items}/2"),
        Some(&json!({"done": false})),
        200,
    );
    let got = ok(&h, &token, "GET", &format!("/notes/{cid}"), None, 200);
    let done: Vec<bool> = got["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["done"].as_bool().unwrap())
        .collect();
    assert_eq!(done, [false, false, true]);
    // Add an item, edit the note's title.
    let added = ok(
        &h,
        &token,
        "POST",
        &items,
        Some(&json!({"text": "rope"})),
        201,
    );
    assert_eq!(
        added["items"][3],
        json!({"id": 4, "text": "rope", "done": false})
    );
    let edited = ok(
        &h,
        &token,
        "PATCH",
        &format!("/notes/{id}"),
        Some(&json!({"title": "Shopping list"})),
        200,
    );
    assert_eq!(
        (edited["title"].as_str(), edited["body"].as_str()),
        (Some("Shopping list"), Some("milk\neggs"))
    );

    // Each note is one key in the host's KV store, its value the note as JSON.
    assert_eq!(
        kv_keys(&h, &token, ""),
        [format!("note/{cid}"), format!("note/{id}")],
        "newest first, one key each"
    );
    let stored = pkg_util::kv_get(&h, &token, "notes", &format!("note/{cid}")).unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["items"][2]["done"], true, "{stored}");

    // More notes than a page: paged through without gaps or repeats, newest first.
    let mut made = vec![id.clone(), cid.clone()];
    for i in 0..23 {
        let n = ok(
            &h,
            &token,
            "POST",
            "/notes",
            Some(&json!({"title": format!("note {i}")})),
            201,
        );
        made.push(n["id"].as_str().unwrap().to_string());
    }
    made.reverse();
    let (ids, pages) = all_ids(&h, &token, 10);
    assert_eq!((ids.as_slice(), pages), (made.as_slice(), 3));
    let first = ok(&h, &token, "GET", "/notes", None, 200);
    assert_eq!(
        first["notes"].as_array().unwrap().len(),
        20,
        "the page size"
    );
    assert!(first["next_cursor"].is_string(), "{first}");
    let head = call(&h, &token, "HEAD", "/notes", None);
    assert_eq!((head.status, head.body.len()), (200, 0));

    // Delete: gone from the plugin and from the store.
    let gone = ok(&h, &token, "DELETE", &format!("/notes/{id}"), None, 200);
    assert_eq!(gone, json!({"deleted": id}));
    ok(&h, &token, "GET", &format!("/notes/{id}"), None, 404);
    ok(&h, &token, "DELETE", &format!("/notes/{id}"), None, 404);
    made.retain(|m| *m != id);
    assert_eq!(kv_keys(&h, &token, "note/").len(), 24);

    // A settings change takes effect at once, through the `config` message.
    let r = api(
        &h,
        &token,
        "PUT",
        "/api/plugins/notes/settings",
        Some(&json!({"title": "Shopping", "page_size": 5})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["delivery"], "applied", "{}", r.text());
    let pid = pid_of(&pkg_util::plugin(&h, &token, "notes"));
    assert_eq!(pid, pid_of(&p), "applied without a restart");
    wait_log(
        &h,
        &token,
        "settings applied: 5 notes a page, title 'Shopping'",
    );
    let info = ok(&h, &token, "GET", "/", None, 200);
    assert_eq!(
        (info["title"].as_str(), info["page_size"].as_u64()),
        (Some("Shopping"), Some(5))
    );
    let page = ok(&h, &token, "GET", "/notes", None, 200);
    assert_eq!(page["notes"].as_array().unwrap().len(), 5, "{page}");
    // Settings the plugin refuses (a blank title passes the schema's minLength): 422, kept.
    let r = api(
        &h,
        &token,
        "PUT",
        "/api/plugins/notes/settings",
        Some(&json!({"title": "   ", "page_size": 7})),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"], "settings_rejected", "{}", r.text());
    assert!(r.text().contains("title must not be blank"), "{}", r.text());
    assert_eq!(ok(&h, &token, "GET", "/", None, 200)["page_size"], 5);

    // Restart the plugin: the notes are still there (KV), the settings too (in `init`).
    let r = api(
        &h,
        &token,
        "POST",
        "/api/plugins/notes/restart",
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("notes to run again as a new process", || {
        let p = pkg_util::plugin(&h, &token, "notes");
        (p["state"] == "ready" && p["pid"].is_u64() && pid_of(&p) != pid).then_some(())
    });
    wait_log(&h, &token, "notes ready: 24 notes in the store, 5 a page");
    let (ids, pages) = all_ids(&h, &token, 100);
    assert_eq!((ids, pages), (made.clone(), 1));
    let got = ok(&h, &token, "GET", &format!("/notes/{cid}"), None, 200);
    assert_eq!(got["items"][2]["done"], true, "{got}");
    let info = ok(&h, &token, "GET", "/", None, 200);
    assert_eq!(
        (info["title"].as_str(), info["page_size"].as_u64()),
        (Some("Shopping"), Some(5))
    );
    let ids: BTreeSet<String> = made.into_iter().collect();
    assert_eq!(ids.len(), 24);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (h, token, _work) = install_notes("notes-bad");
    let list = ok(
        &h,
        &token,
        "POST",
        "/notes",
        Some(&json!({"kind": "checklist", "title": "Trip", "items": ["tent"]})),
        201,
    );
    let cid = list["id"].as_str().unwrap().to_string();
    let before = pkg_util::kv_get(&h, &token, "notes", &format!("note/{cid}")).unwrap();
    let unknown = "0123456789abcdef0123";
    let long = "x".repeat(201);
    let huge: Vec<String> = (0..90).map(|_| "😀".repeat(200)).collect();
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/notes".into(),
            Some(json!({"title": ""})),
            400,
            "title must not be empty",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"title": "  "})),
            400,
            "title must not be empty",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"body": "no title"})),
            400,
            "title must be text",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"title": long})),
            400,
            "title is too long: 201 characters, at most 200",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"title": "a", "kind": "poem"})),
            400,
            "kind must be",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"title": "a", "colour": 1})),
            400,
            "unknown field 'colour'",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"title": "a", "items": ["x"]})),
            400,
            "a note has no items",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"kind": "checklist", "title": "a", "items": ["ok", " "]})),
            400,
            "items[1] must not be empty",
        ),
        (
            "POST",
            "/notes".into(),
            Some(json!({"kind": "checklist", "title": "a", "items": huge})),
            413,
            "more than the 65536",
        ),
        (
            "GET",
            format!("/notes/{unknown}"),
            None,
            404,
            "no note 0123456789abcdef0123",
        ),
        (
            "GET",
            "/notes/not-an-id".into(),
            None,
            404,
            "a note id is 20 hex digits",
        ),
        (
            "PATCH",
            format!("/notes/{unknown}"),
            Some(json!({"title": "a"})),
            404,
            "no note",
        ),
        ("DELETE", format!("/notes/{unknown}"), None, 404, "no note"),
        (
            "PATCH",
            format!("/notes/{cid}"),
            Some(json!({})),
            400,
            "nothing to change",
        ),
        (
            "PATCH",
            format!("/notes/{cid}"),
            Some(json!({"title": ""})),
            400,
            "title must not be empty",
        ),
        (
            "PATCH",
            format!("/notes/{cid}"),
            Some(json!({"body": "b"})),
            400,
            "a checklist has no body",
        ),
        (
            "PATCH",
            format!("/notes/{cid}/items/9"),
            Some(json!({"done": true})),
            404,
            "has no item 9",
        ),
        (
            "PATCH",
            format!("/notes/{cid}/items/1"),
            Some(json!({"done": "yes"})),
            400,
            "done must be true or false",
        ),
        (
            "PATCH",
            format!("/notes/{unknown}/items/1"),
            Some(json!({"done": true})),
            404,
            "no note",
        ),
        (
            "POST",
            format!("/notes/{cid}/items"),
            Some(json!({"text": ""})),
            400,
            "text must not be empty",
        ),
        (
            "GET",
            "/notes?limit=0".into(),
            None,
            400,
            "limit must be a whole number from 1 to 100",
        ),
        (
            "GET",
            "/notes?limit=lots".into(),
            None,
            400,
            "limit must be",
        ),
        (
            "PUT",
            "/notes".into(),
            Some(json!({})),
            405,
            "PUT is not allowed here; use GET, HEAD, POST",
        ),
        (
            "GET",
            "/nowhere".into(),
            None,
            404,
            "no such path: /nowhere",
        ),
    ];
    for (method, path, body, status, words) in &cases {
        let r = call(&h, &token, method, path, body.as_ref());
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        let e = r.json();
        assert!(e["error"].is_string(), "{method} {path}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(words),
            "{method} {path}: {message:?} lacks {words:?}"
        );
    }
    // Bodies that are not JSON objects.
    for (body, words) in [
        (&b"{\"title\": "[..], "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b"", "expected a JSON object"),
        (b"\xff\xfe{}", "the body is not UTF-8"),
    ] {
        let r = call_raw(&h, &token, "POST", "/notes", body);
        assert_eq!(r.status, 400, "{:?}: {}", body, r.text());
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(words), "{message:?} lacks {words:?}");
    }
    // Nothing was stored or changed by the refused requests.
    assert_eq!(kv_keys(&h, &token, ""), [format!("note/{cid}")]);
    assert_eq!(
        pkg_util::kv_get(&h, &token, "notes", &format!("note/{cid}")).unwrap(),
        before
    );
    // The plugin is still the same process, ready.
    let p = wait_ready(&h, &token, "notes");
    assert_eq!(p["restarts"], 0, "{p}");
}
