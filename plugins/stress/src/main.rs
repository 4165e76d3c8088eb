//! `stress`: a protocol 1.1 plugin that misbehaves on purpose, for the host's integration tests.
//!
//! The host starts plugins with an empty environment, so the mode comes from the executable's name:
//! `stress-<mode>[-<n>].binary`. The metadata id is the file stem, so several modes can run at once.
//!
//! In a package the executable's name is fixed, so a `stress.json` beside the executable overrides
//! what the name says: `{"id": "s1", "version": "0.2.0", "mode": "crash-start", "route": "/s1"}`
//! (every field optional; `route` defaults to `/<id>`, `version` to `0.0.0`, `mode` to the name's).
//! The files below are then named after the id instead of the stem.
//! It speaks the protocol with blocking std I/O and the SDK's codec, not the SDK runner, because it
//! needs to write frames the runner never would.
//!
//! | mode | behaviour |
//! |---|---|
//! | `ok` | well behaved; `GET /` answers, KV via `/kv/<key>` |
//! | `crash-start` | exits 3 before binding its socket |
//! | `crash-after-<n>` | exits 4 while handling its n-th HTTP request |
//! | `hang` | becomes ready, then blocks: stops answering heartbeats |
//! | `no-ready` | binds its socket and reads init, but never answers `ready` |
//! | `open-files` | after `ready`, opens `/dev/null` until refused (at most 100 000), keeps them, writes the count to `<stem>.opened` |
//! | `ignore-term` | ignores SIGTERM and shutdown, forks a grandchild that does too |
//! | `setsid` | well behaved itself, but forks a grandchild that calls `setsid()` (leaving the plugin's process group and session) and ignores SIGTERM |
//! | `garbage` | answers each HTTP request with a frame that is not JSON, then a valid reply |
//! | `oversized` | right after `ready`, writes a length prefix of ~4 GiB |
//! | `log-flood` | writes stderr lines as fast as it can (bounded count) |
//! | `slow-<ms>` | answers HTTP after `<ms>` ms, heartbeats promptly |
//! | `big-<kib>` | answers every HTTP request with `200` and a `text/plain` body of `<kib>` KiB of `x` |
//! | `bad-metadata` | prints metadata with an invalid id |
//! | `mqtt` | after `ready`, through the host's MQTT bridge: subscribes to `cmd/#`, publishes `hi` on `hello` (retained), then tries a publish to `../escape` and a subscribe to `#` (both refused); each answer is a line of `<stem>.mqtt` (`<request id> ok` or `<request id> error <code>`); every message delivered on `cmd/<x>` is a line `message <topic> <payload>` and is published back on `echo/<x>` |
//! | `kvloop` | writes KV keys in a loop; appends each acknowledged key to `kvloop.acked` (fsync'd); if `kvloop.verify` exists, instead lists every key into `kvloop.present` |
//!
//! Every mode answers a `config` message (new settings) with `error`/`unsupported`, as a 1.1
//! plugin written before that message existed does; the host restarts it to apply them.
//!
//! Every mode writes its environment to `<stem>.env`, its `NoNewPrivs` line and resource limits
//! (`/proc/self/limits`) to `<stem>.limits` and its pid to `<stem>.pid`, and every mode that
//! answers `init` the settings it got there to `<stem>.config` and the licence to `<stem>.license`
//! (`null` without one) (before `ready`), so tests can check
//! what the host passed. Those files and every other one named above (`.opened`, `.grandchild`,
//! `kvloop.*`) are in its private data folder, `$TORU_PLUGIN_DATA`, when the host gives one (a
//! confined plugin may not write its install folder), else in its working directory (the host runs
//! plugins in their executable's folder).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use toru_plugin_api::codec::{MAX_FRAME_LEN, read_frame, write_frame};
use toru_plugin_api::protocol::{
    ErrorCode, ErrorReply, Frame, HostMessage, HttpResponse, KvPayload, KvReply, KvRequest,
    MqttRequest, PluginMessage, decode_host_frame,
};

type Writer = Arc<Mutex<UnixStream>>;
type Waiters = Arc<Mutex<HashMap<String, std::sync::mpsc::Sender<KvPayload>>>>;

/// Where the report files go: `$TORU_PLUGIN_DATA`, else the working directory.
fn report(file: &str) -> std::path::PathBuf {
    std::env::var_os("TORU_PLUGIN_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_default()
        .join(file)
}

fn stem() -> String {
    let arg0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&arg0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".binary").unwrap_or(&name).to_string()
}

/// Who this run is: from the executable's name, overridden by a `stress.json` beside it.
struct Identity {
    /// Prefix of the files this run writes (`<name>.pid`, …): the stem, or the id from the file.
    name: String,
    id: String,
    version: String,
    mode: String,
    route: String,
}

fn identity() -> Identity {
    let stem = stem();
    let mut me = Identity {
        mode: stem.strip_prefix("stress-").unwrap_or("ok").to_string(),
        id: stem.clone(),
        version: "0.0.0".into(),
        route: format!("/{stem}"),
        name: stem,
    };
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("stress.json")));
    let Some(cfg) = beside
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return me;
    };
    let text = |k: &str| cfg.get(k).and_then(|v| v.as_str()).map(str::to_string);
    if let Some(id) = text("id") {
        me.route = format!("/{id}");
        me.name = id.clone();
        me.id = id;
    }
    if let Some(v) = text("version") {
        me.version = v;
    }
    if let Some(m) = text("mode") {
        me.mode = m;
    }
    if let Some(r) = text("route") {
        me.route = r;
    }
    me
}

fn send(w: &Writer, id: Option<String>, msg: PluginMessage) {
    let body = Frame::new(id, msg).encode();
    if let Ok(mut s) = w.lock() {
        let _ = write_frame(&mut *s, &body, MAX_FRAME_LEN);
    }
}

fn main() -> ExitCode {
    let me = identity();
    let (stem, mode) = (me.name.clone(), me.mode.clone());
    if std::env::args().nth(1).as_deref() == Some("--metadata") {
        let id = if mode == "bad-metadata" {
            "Bad Id!".to_string()
        } else {
            me.id.clone()
        };
        let meta = json!({
            "id": id, "name": format!("Stress ({mode})"), "version": me.version,
            "author": "tests", "icon": "🧪", "route": me.route, "protocol": "1.1",
        });
        println!("{meta}");
        return ExitCode::SUCCESS;
    }
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = std::fs::write(report(&format!("{stem}.env")), env.join("\n"));
    let _ = std::fs::write(
        report(&format!("{stem}.pid")),
        std::process::id().to_string(),
    );
    // What the host confined this process to: `NoNewPrivs` and the resource limits.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let confined: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("NoNewPrivs"))
        .chain(limits.lines())
        .collect();
    let _ = std::fs::write(report(&format!("{stem}.limits")), confined.join("\n"));
    eprintln!("stress plugin starting in mode {mode}");
    if mode == "crash-start" {
        eprintln!("crashing at start on purpose");
        return ExitCode::from(3);
    }
    if mode == "ignore-term" {
        // SAFETY: plain signal disposition and fork; the child only sleeps.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            let pid = libc::fork();
            if pid == 0 {
                loop {
                    libc::sleep(1000);
                }
            }
            let _ = std::fs::write(report(&format!("{stem}.grandchild")), pid.to_string());
        }
    }
    if mode == "setsid" {
        // SAFETY: plain fork of a process that has no other thread yet, so the child may use std.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: setsid and a signal disposition; no memory is touched.
            unsafe {
                libc::setsid();
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            }
            // Written by the grandchild once it has left the session (renamed into place, so a
            // reader never sees half a pid): a test reading it knows the escape has happened.
            let me = std::process::id().to_string();
            let tmp = report(&format!("{stem}.grandchild.tmp"));
            if std::fs::write(&tmp, me).is_ok() {
                let _ = std::fs::rename(&tmp, report(&format!("{stem}.grandchild")));
            }
            loop {
                std::thread::sleep(Duration::from_secs(1000));
            }
        }
    }
    if mode == "log-flood" {
        std::thread::spawn(|| {
            let mut err = std::io::stderr();
            for i in 0..2_000_000u64 {
                if writeln!(
                    err,
                    "flood line {i} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                )
                .is_err()
                {
                    break;
                }
            }
        });
    }
    let Some(path) = std::env::var_os("TORU_PLUGIN_SOCKET") else {
        eprintln!("TORU_PLUGIN_SOCKET not set");
        return ExitCode::FAILURE;
    };
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok((stream, _)) = listener.accept() else {
        return ExitCode::FAILURE;
    };
    let Ok(write_half) = stream.try_clone() else {
        return ExitCode::FAILURE;
    };
    let writer: Writer = Arc::new(Mutex::new(write_half));
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    serve(stream, writer, waiters, &mode, &stem)
}

fn serve(
    mut stream: UnixStream,
    writer: Writer,
    waiters: Waiters,
    mode: &str,
    stem: &str,
) -> ExitCode {
    let mut requests = 0u64;
    let mut next_kv = 0u64;
    loop {
        let body = match read_frame(&mut stream, MAX_FRAME_LEN) {
            Ok(Some(b)) => b,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("read: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Ok(frame) = decode_host_frame(&body) else {
            continue;
        };
        let id = frame.request_id;
        match frame.message {
            HostMessage::Init(_) if mode == "no-ready" => {
                eprintln!("never answering init on purpose");
            }
            HostMessage::Init(init) => {
                let _ = std::fs::write(report(&format!("{stem}.config")), init.config.to_string());
                // The licence the host verified (`null`: none), for the licence tests.
                let license = serde_json::to_string(&init.license).unwrap_or_default();
                let _ = std::fs::write(report(&format!("{stem}.license")), license);
                send(&writer, id, PluginMessage::Ready);
                match mode {
                    "hang" => {
                        eprintln!("hanging on purpose");
                        loop {
                            std::thread::sleep(Duration::from_secs(1000));
                        }
                    }
                    "oversized" => {
                        if let Ok(mut s) = writer.lock() {
                            let _ = s.write_all(&0xFFFF_FFF0u32.to_be_bytes());
                            let _ = s.write_all(b"{\"type\":\"http\"");
                        }
                    }
                    "open-files" => {
                        // Hold as many descriptors as the host lets it open (at most 100 000).
                        let mut held = Vec::new();
                        let mut why = String::from("none refused");
                        while held.len() < 100_000 {
                            match std::fs::File::open("/dev/null") {
                                Ok(f) => held.push(f),
                                Err(e) => {
                                    why = e.to_string();
                                    break;
                                }
                            }
                        }
                        let opened = held.len();
                        // Give a few back: writing the report needs descriptors too.
                        held.truncate(opened.saturating_sub(8));
                        eprintln!("opened {opened} files; then: {why}");
                        let _ =
                            std::fs::write(report(&format!("{stem}.opened")), opened.to_string());
                        std::mem::forget(held);
                    }
                    "kvloop" => {
                        let (w, wt) = (writer.clone(), waiters.clone());
                        let stem = stem.to_string();
                        std::thread::spawn(move || kvloop(&w, &wt, &stem));
                    }
                    "mqtt" => {
                        let sub = |f: &str| MqttRequest::Subscribe { filter: f.into() };
                        let publish = |t: &str, p: &str, retain| MqttRequest::Publish {
                            topic: t.into(),
                            payload: p.into(),
                            retain,
                            qos: None,
                        };
                        for (rid, req) in [
                            ("m1", sub("cmd/#")),
                            ("m2", publish("hello", "hi", true)),
                            ("m3", publish("../escape", "x", false)),
                            ("m4", sub("#")),
                        ] {
                            send(&writer, Some(rid.into()), PluginMessage::Mqtt(req));
                        }
                    }
                    _ => {}
                }
            }
            HostMessage::MqttOk => note_mqtt(stem, &format!("{} ok", id.unwrap_or_default())),
            HostMessage::MqttMessage(m) => {
                note_mqtt(stem, &format!("message {} {}", m.topic, m.payload));
                if let Some(rest) = m.topic.strip_prefix("cmd/") {
                    let req = MqttRequest::Publish {
                        topic: format!("echo/{rest}"),
                        payload: m.payload,
                        retain: false,
                        qos: Some(1),
                    };
                    send(&writer, Some(format!("e-{rest}")), PluginMessage::Mqtt(req));
                }
            }
            HostMessage::Ping { seq } => send(&writer, id, PluginMessage::Pong { seq }),
            HostMessage::Shutdown => {
                if mode == "ignore-term" {
                    eprintln!("ignoring shutdown on purpose");
                    continue;
                }
                send(&writer, id, PluginMessage::ShutdownAck);
                return ExitCode::SUCCESS;
            }
            HostMessage::Kv(payload) => {
                if let Some(tx) = id.as_ref().and_then(|i| waiters.lock().ok()?.remove(i)) {
                    let _ = tx.send(payload);
                }
            }
            HostMessage::Error(e) => {
                eprintln!("host error: {e}");
                if mode == "mqtt" {
                    let rid = id.clone().unwrap_or_default();
                    note_mqtt(stem, &format!("{rid} error {}", e.code.as_str()));
                }
                if let Some(tx) = id.as_ref().and_then(|i| waiters.lock().ok()?.remove(i)) {
                    drop(tx);
                }
            }
            HostMessage::Config(_) => {
                let e = ErrorReply::new(ErrorCode::Unsupported, "unsupported message type config");
                send(&writer, id, PluginMessage::Error(e));
            }
            HostMessage::Http(req) => {
                requests += 1;
                if let Some(n) = mode
                    .strip_prefix("crash-after-")
                    .and_then(|n| n.parse::<u64>().ok())
                    && requests >= n
                {
                    eprintln!("crashing after {requests} requests on purpose");
                    std::process::exit(4);
                }
                if mode == "garbage"
                    && let Ok(mut s) = writer.lock()
                {
                    let _ = write_frame(&mut *s, b"this is not json", MAX_FRAME_LEN);
                }
                let w = writer.clone();
                let delay = mode
                    .strip_prefix("slow-")
                    .and_then(|m| m.parse::<u64>().ok());
                let big_kib = mode
                    .strip_prefix("big-")
                    .and_then(|k| k.parse::<usize>().ok());
                let wt = waiters.clone();
                next_kv += 1;
                let kv_base = next_kv * 1000;
                std::thread::spawn(move || {
                    if let Some(ms) = delay {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    let reply = match big_kib {
                        Some(kib) => HttpResponse::text(200, "text/plain", "x".repeat(kib * 1024)),
                        None => handle(&req, &w, &wt, kv_base),
                    };
                    send(&w, id, PluginMessage::HttpReply(reply));
                });
            }
        }
    }
}

/// One line appended to `<stem>.mqtt` (mode `mqtt`).
fn note_mqtt(stem: &str, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report(&format!("{stem}.mqtt")))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// KV through the host from a worker thread: request, then wait for the reader to hand the reply.
fn kv(w: &Writer, waiters: &Waiters, id: String, req: KvRequest) -> Option<KvReply> {
    let (tx, rx) = std::sync::mpsc::channel();
    waiters.lock().ok()?.insert(id.clone(), tx);
    send(w, Some(id), PluginMessage::Kv(req));
    rx.recv_timeout(Duration::from_secs(30))
        .ok()?
        .into_reply()
        .ok()
}

fn handle(
    req: &toru_plugin_api::HttpRequest,
    w: &Writer,
    waiters: &Waiters,
    kv_base: u64,
) -> HttpResponse {
    let path = req.path_only();
    if let Some(key) = path.strip_prefix("/kv/") {
        let id = format!("p{kv_base}");
        let r = if req.method == "PUT" {
            kv(
                w,
                waiters,
                id,
                KvRequest::Set {
                    key: key.into(),
                    value: req.body.clone().unwrap_or_default(),
                },
            )
        } else {
            kv(w, waiters, id, KvRequest::Get { key: key.into() })
        };
        return match r {
            Some(KvReply::Get { value, .. }) => HttpResponse::json(200, &json!({ "value": value })),
            Some(_) => HttpResponse::json(200, &json!({ "ok": true })),
            None => HttpResponse::json(500, &json!({ "error": "kv failed" })),
        };
    }
    HttpResponse::json(200, &json!({ "stress": true, "path": req.path }))
}

fn kvloop(w: &Writer, waiters: &Waiters, stem: &str) {
    if report(&format!("{stem}.verify")).exists() {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for round in 0..1000u64 {
            let req = KvRequest::List {
                prefix: String::new(),
                start_after: after.clone(),
                limit: Some(1000),
            };
            let Some(KvReply::List { keys, truncated }) = kv(w, waiters, format!("l{round}"), req)
            else {
                eprintln!("list failed");
                return;
            };
            after = keys.last().cloned();
            all.extend(keys);
            if !truncated {
                break;
            }
        }
        let _ = std::fs::write(report(&format!("{stem}.present")), all.join("\n") + "\n");
        return;
    }
    let Ok(mut acked) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report(&format!("{stem}.acked")))
    else {
        return;
    };
    // Keys are unique per process, so writes of a restarted plugin never overwrite earlier ones.
    let pid = std::process::id();
    for i in 0..100_000u64 {
        let key = format!("k{pid}-{i:06}");
        let req = KvRequest::Set {
            key: key.clone(),
            value: format!("v{i}"),
        };
        match kv(w, waiters, format!("s{i}"), req) {
            Some(KvReply::Set { .. }) => {
                // One write call per line: a kill between `key` and `\n` would glue two lines.
                let _ = acked.write_all(format!("{key}\n").as_bytes());
                let _ = acked.sync_data();
            }
            _ => return,
        }
    }
}
