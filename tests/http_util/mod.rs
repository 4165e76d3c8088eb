//! Helpers shared by the `http_*` integration tests: first-start setup through the setup code,
//! logging in, and requests that carry the session cookie and pass the CSRF rules.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use crate::support::{Host, Resp, eventually};

/// The admin password the tests set.
pub const PASSWORD: &str = "correct horse battery";

/// The setup code the host wrote to `<data-dir>/setup-code` on start.
pub fn setup_code(h: &Host) -> String {
    let path = h.data_dir.join("setup-code");
    eventually("the setup code file", || {
        std::fs::read_to_string(&path).ok()
    })
    .trim()
    .to_string()
}

/// A state-changing JSON request as the UI sends it (same-origin `Origin`, JSON, CSRF header).
pub fn post(h: &Host, path: &str, cookie: Option<&str>, body: &Value) -> Resp {
    let cookie_header = cookie.map(|c| format!("toru_session={c}"));
    let mut headers = vec![
        ("Origin", "http://localhost"),
        ("Content-Type", "application/json"),
        ("X-Toru-Csrf", "1"),
    ];
    if let Some(c) = &cookie_header {
        headers.push(("Cookie", c.as_str()));
    }
    h.http("POST", path, &headers, Some(body.to_string().as_bytes()))
}

/// A GET with the session cookie.
pub fn get(h: &Host, path: &str, cookie: &str) -> Resp {
    h.http(
        "GET",
        path,
        &[("Cookie", &format!("toru_session={cookie}"))],
        None,
    )
}

/// A request with a bearer token.
pub fn bearer(h: &Host, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    h.http(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_deref().map(str::as_bytes),
    )
}

/// The session id from a response's `Set-Cookie`.
pub fn session_of(r: &Resp) -> String {
    let c = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie in {} {}", r.status, r.text()));
    let v = c.strip_prefix("toru_session=").expect("the session cookie");
    v.split(';').next().unwrap().to_string()
}

/// Complete first-start setup with [`PASSWORD`]; returns the session cookie value.
pub fn setup_admin(h: &Host) -> String {
    let code = setup_code(h);
    let r = post(
        h,
        "/api/auth/setup",
        None,
        &json!({"code": code, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "setup: {}", r.text());
    session_of(&r)
}

/// Log in; returns the session cookie value.
pub fn login(h: &Host, user: &str, password: &str) -> String {
    let r = post(
        h,
        "/api/auth/login",
        None,
        &json!({"username": user, "password": password}),
    );
    assert_eq!(r.status, 200, "login: {}", r.text());
    session_of(&r)
}

/// Wait until plugin `id` reports `state` through the API.
pub fn wait_state(h: &Host, cookie: &str, id: &str, state: &str) -> Value {
    eventually(&format!("{id} to be {state}"), || {
        let r = get(h, &format!("/api/plugins/{id}"), cookie);
        (r.status == 200 && r.json()["state"] == state).then(|| r.json())
    })
}

/// A protocol-1.0 plugin in Python (route `/broken`) that logs a few lines and answers every HTTP
/// request with a frame that is not JSON (→ 502), except `/ok` (200 `fine`) and `/bundle.js` (404).
pub fn broken_plugin() -> crate::support::PluginSrc {
    crate::support::PluginSrc::Script {
        name: "broken".into(),
        body: r#"#!/usr/bin/env python3
import json, os, socket, struct, sys
if "--metadata" in sys.argv:
    print(json.dumps({"id": "broken", "name": "Broken <b>plugin</b>", "version": "1.0",
                      "author": None, "icon": "X", "route": "/broken"}))
    sys.exit(0)
sys.stderr.write("error: the broken plugin always fails\n")
sys.stderr.write("warn: this is a warning\n")
sys.stdout.write("info: starting up\n")
sys.stdout.flush(); sys.stderr.flush()
path = os.environ["TORU_PLUGIN_SOCKET"]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(4)
def read_exact(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            return None
        b += chunk
    return b
def send(c, obj):
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    c.sendall(struct.pack(">I", len(data)) + data)
while True:
    c, _ = srv.accept()
    head = read_exact(c, 4)
    if head is None:
        c.close(); continue
    msg = json.loads(read_exact(c, struct.unpack(">I", head)[0]))
    if msg["type"] == "http":
        req = msg["payload"]["payload"]
        sys.stderr.write("error: request for " + req["path"] + "\n"); sys.stderr.flush()
        if req["path"] in ("/ok", "/bundle.js"):
            status = 200 if req["path"] == "/ok" else 404
            send(c, {"type": "http", "timestamp": "2025-01-01T00:00:00Z", "request_id": msg["request_id"],
                     "payload": {"status": status, "headers": {"Content-Type": "text/plain"}, "body": "fine"}})
        else:
            send(c, b"this is not json")
    elif msg["payload"].get("action") == "shutdown":
        sys.exit(0)
    c.close()
"#
        .into(),
    }
}

/// `toru token create NAME --role ROLE` against the running host; the token text.
pub fn create_token(h: &Host, name: &str, role: &str) -> String {
    let out = h.cli(&["token", "create", name, "--role", role], None);
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(text.starts_with("toru_"), "{text}");
    text
}
