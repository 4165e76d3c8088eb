//! `hostile`: a protocol 1.1 plugin that attacks its own confinement on purpose, for the host's
//! isolation tests (`tests/isolation.rs`, issue 12). Never shipped.
//!
//! Like `stress`, the mode comes from the executable's name, `hostile-<mode>.binary` (the host
//! starts plugins with a clean environment), and the metadata id is the file stem. A `hostile.json`
//! beside the executable overrides it (in a package the executable's name is fixed):
//! `{"id": "h1", "version": "0.2.0", "mode": "connect", "route": "/h1", "port": 4711,
//! "other": "hostile-ok", "other_install": "/path", "on_request": false}` (every field optional;
//! `route` defaults to `/<id>`, `version` to `0.0.0`). Files are then named after the id instead of
//! the stem.
//!
//! After answering `ready` it performs ONE attack, writes what happened as JSON to
//! `<stem>.outcome` in `$TORU_PLUGIN_DATA` (its working directory when that is not set), fsync'd
//! and renamed into place so a reader never sees half of it:
//! `{"mode": "read-store", "refused": true, "error": "EACCES Permission denied (os error 13)",
//! "detail": {…}}`. `refused` says only that the attack did not fully succeed; `error` (the errno's
//! name first, `null` when nothing failed) says why, so a test can tell a confinement's refusal
//! (`EACCES`, `EPERM`, `EAGAIN`, …) from an attack that missed its target (`ENOENT`). Then it
//! stays ready, answering heartbeats, until the host stops it — unless the attack killed it.
//!
//! With `"on_request": true` it attacks nothing at start: each HTTP request performs the attack
//! its path names (`GET <route>/read-store`; the path `/` means `mode`), writes the outcome file as
//! above and answers with the outcome. A package installed this way passes its probation, and its
//! attacks happen when a test asks, one after the other in the same process (the board's QEMU boot
//! test uses this: `board/boot-test.sh`).
//!
//! | mode | attack |
//! |---|---|
//! | `ok` | none: well behaved; the outcome's `detail` holds its uid, gid, groups and its `Seccomp` and `NoNewPrivs` figures (`/proc/self/status`), its environment, whether its data folder and `TMPDIR` are writable, and whether it can list the host's data dir |
//! | `read-store` | reads `<data-dir>/toru.redb` (`<data-dir>` is the parent of the parent of `$TORU_PLUGIN_DATA`) |
//! | `write-other` | creates a file in `<data-dir>/plugin-data/<other>` (`other` from `hostile.json`, default `hostile-ok`) and in the other plugin's install folder (`other_install`, default its own executable's folder, where unpackaged plugins all live) |
//! | `read-shadow` | reads `/etc/shadow` |
//! | `fork` | forks up to 10 000 children that sleep (each dies with it: `PR_SET_PDEATHSIG`); `detail.forked` |
//! | `alloc` | maps and touches 1 GiB in 16 MiB steps, then gives it back; `detail.bytes` is how far it got |
//! | `open-files` | opens `/dev/null` up to 100 000 times and keeps them; `detail.opened` |
//! | `connect[-<port>]` | TCP connect to `127.0.0.1:<port>` (the name's port, else `hostile.json`'s `port`) |
//! | `ptrace` | `PTRACE_ATTACH` to its parent (the host; detached at once if it worked), then `PTRACE_TRACEME` |
//! | `mount` | mounts a tmpfs on `$TORU_PLUGIN_DATA/mnt` (unmounted at once if it worked) |
//! | `unshare` | `unshare(CLONE_NEWUSER)` |
//!
//! It stays single-threaded (HTTP requests are answered inline): `unshare(CLONE_NEWUSER)` is refused
//! to a multi-threaded process whatever the confinement, and a fork counts processes, not threads.
//! Every HTTP request is answered with `200` and the outcome so far. It speaks the protocol with
//! blocking std I/O and the SDK's codec, not the SDK runner.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use toru_plugin_api::codec::{MAX_FRAME_LEN, read_frame, write_frame};
use toru_plugin_api::protocol::{
    ErrorCode, ErrorReply, Frame, HostMessage, HttpResponse, PluginMessage, decode_host_frame,
};

/// What `fork` aims for.
const FORK_TARGET: u64 = 10_000;
/// What `alloc` aims for, and its step.
const ALLOC_TARGET_BYTES: usize = 1 << 30;
const ALLOC_STEP_BYTES: usize = 16 << 20;
/// What `open-files` aims for.
const OPEN_TARGET: usize = 100_000;
/// How long `connect` waits for an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who this run is: from the executable's name, overridden by a `hostile.json` beside it.
struct Identity {
    /// Prefix of the outcome file: the stem, or the id from the file.
    name: String,
    id: String,
    version: String,
    mode: String,
    route: String,
    /// Attack only when an HTTP request asks (`on_request`), not after `init`.
    on_request: bool,
    /// The rest of `hostile.json` (`port`, `other`, `other_install`).
    cfg: Value,
}

fn stem() -> String {
    let arg0 = std::env::args().next().unwrap_or_default();
    let name = Path::new(&arg0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".binary").unwrap_or(&name).to_string()
}

/// The executable's folder (its install folder).
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
}

fn identity() -> Identity {
    let stem = stem();
    let cfg = exe_dir()
        .and_then(|d| std::fs::read(d.join("hostile.json")).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let text = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_string);
    let id = text("id").unwrap_or_else(|| stem.clone());
    Identity {
        name: id.clone(),
        route: text("route").unwrap_or_else(|| format!("/{id}")),
        version: text("version").unwrap_or_else(|| "0.0.0".into()),
        mode: text("mode").unwrap_or_else(|| stem.strip_prefix("hostile-").unwrap_or("ok").into()),
        on_request: cfg.get("on_request").and_then(Value::as_bool) == Some(true),
        id,
        cfg,
    }
}

/// The errno's name (`EACCES`) and the error's text, for the outcome's `error`.
fn describe(e: &std::io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ESRCH) => "ESRCH",
        Some(libc::EIO) => "EIO",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EROFS) => "EROFS",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EUSERS) => "EUSERS",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::ENETDOWN) => "ENETDOWN",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(n) => return format!("E{n} {e}"),
        None if e.kind() == std::io::ErrorKind::TimedOut => "ETIMEDOUT",
        None => return format!("? {e}"),
    };
    format!("{name} {e}")
}

/// `Ok` of a raw call's return value, or `Err` with its errno.
fn check(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What one attack did.
struct Outcome {
    refused: bool,
    error: Option<String>,
    detail: Value,
}

impl Outcome {
    fn of<T>(r: std::io::Result<T>, detail: Value) -> Outcome {
        match r {
            Ok(_) => Outcome {
                refused: false,
                error: None,
                detail,
            },
            Err(e) => Outcome {
                refused: true,
                error: Some(describe(&e)),
                detail,
            },
        }
    }
}

/// Where the outcome goes: `$TORU_PLUGIN_DATA`, else the working directory.
fn report_dir() -> PathBuf {
    std::env::var_os("TORU_PLUGIN_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `<data-dir>`: the parent of the parent of `$TORU_PLUGIN_DATA` (`<data-dir>/plugin-data/<id>`).
fn data_dir() -> Option<PathBuf> {
    let own = PathBuf::from(std::env::var_os("TORU_PLUGIN_DATA")?);
    Some(own.parent()?.parent()?.to_path_buf())
}

/// Write `<name>.outcome` in [`report_dir`]: to a temporary name, fsync'd, then renamed.
fn write_outcome(name: &str, mode: &str, o: &Outcome) {
    let body = json!({ "mode": mode, "refused": o.refused, "error": o.error, "detail": o.detail });
    let dir = report_dir();
    let tmp = dir.join(format!("{name}.outcome.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(body.to_string().as_bytes())?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, dir.join(format!("{name}.outcome")))) {
        Ok(()) => eprintln!("hostile {mode}: {body}"),
        Err(e) => eprintln!("hostile {mode}: cannot write the outcome ({e}): {body}"),
    }
}

fn attack(me: &Identity, mode: &str) -> Outcome {
    match mode {
        "ok" => well_behaved(),
        "read-store" => match data_dir() {
            Some(d) => read_file(&d.join("toru.redb")),
            None => missing_data_var(),
        },
        "read-shadow" => read_file(Path::new("/etc/shadow")),
        "write-other" => write_other(me),
        "fork" => fork_many(),
        "alloc" => alloc(),
        "open-files" => open_files(),
        "ptrace" => ptrace(),
        "mount" => mount(),
        "unshare" => {
            // SAFETY: a plain syscall; the process is single-threaded.
            let r = check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into());
            Outcome::of(r, json!({ "call": "unshare(CLONE_NEWUSER)" }))
        }
        m if m == "connect" || m.starts_with("connect-") => {
            let port = m
                .strip_prefix("connect-")
                .and_then(|p| p.parse::<u16>().ok())
                .or_else(|| {
                    me.cfg
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                });
            match port {
                Some(port) => connect(port),
                None => Outcome {
                    refused: false,
                    error: Some("no port: name the mode connect-<port> or set port".into()),
                    detail: Value::Null,
                },
            }
        }
        other => Outcome {
            refused: false,
            error: Some(format!("unknown mode {other:?}")),
            detail: Value::Null,
        },
    }
}

fn missing_data_var() -> Outcome {
    Outcome {
        refused: false,
        error: Some("TORU_PLUGIN_DATA is not set".into()),
        detail: Value::Null,
    }
}

fn read_file(path: &Path) -> Outcome {
    let r = std::fs::read(path);
    let bytes = r.as_ref().map(Vec::len).ok();
    Outcome::of(r, json!({ "path": path, "bytes": bytes }))
}

/// Create `hostile-was-here-<pid>` in `dir`; the attempt as JSON.
fn plant(dir: &Path) -> (std::io::Result<()>, Value) {
    let path = dir.join(format!("hostile-was-here-{}", std::process::id()));
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"hostile\n"));
    let v = json!({ "path": path, "error": r.as_ref().err().map(describe) });
    (r, v)
}

fn write_other(me: &Identity) -> Outcome {
    let Some(data) = data_dir() else {
        return missing_data_var();
    };
    let other = me
        .cfg
        .get("other")
        .and_then(Value::as_str)
        .unwrap_or("hostile-ok");
    let install = me
        .cfg
        .get("other_install")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .or_else(exe_dir)
        .unwrap_or_else(|| PathBuf::from("."));
    let (in_data, data_v) = plant(&data.join("plugin-data").join(other));
    let (in_install, install_v) = plant(&install);
    let detail = json!({ "data": data_v, "install": install_v });
    match (in_data, in_install) {
        (Ok(()), Ok(())) => Outcome::of(Ok(()), detail),
        // Refused only if both were; the first refusal names the error.
        (Err(e), Err(_)) => Outcome::of::<()>(Err(e), detail),
        (Ok(()), Err(_)) | (Err(_), Ok(())) => Outcome {
            refused: false,
            error: Some("one of the two writes succeeded".into()),
            detail,
        },
    }
}

fn well_behaved() -> Outcome {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ids = |key: &str| -> Vec<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let writable = |dir: Option<PathBuf>| {
        dir.map(|d| {
            let p = d.join(format!("hostile-ok-{}", std::process::id()));
            let ok = std::fs::write(&p, b"ok").is_ok();
            let _ = std::fs::remove_file(&p);
            ok
        })
    };
    Outcome {
        refused: false,
        error: None,
        detail: json!({
            // Real, effective, saved, filesystem ids as the status file lists them.
            "uid": ids("Uid:"),
            "gid": ids("Gid:"),
            "groups": ids("Groups:"),
            // What the kernel says is in force: 2 = a seccomp filter; 1 = no new privileges.
            "seccomp": field("Seccomp:"),
            "no_new_privs": field("NoNewPrivs:"),
            "env": env,
            "data_writable": writable(std::env::var_os("TORU_PLUGIN_DATA").map(PathBuf::from)),
            "tmp_writable": writable(std::env::var_os("TMPDIR").map(PathBuf::from)),
            // Whether it can list the host's data dir (a probe, not an attack: it reads nothing).
            "data_dir_listable": data_dir().map(|d| std::fs::read_dir(d).is_ok()),
        }),
    }
}

fn fork_many() -> Outcome {
    // SAFETY: getpid takes no arguments.
    let me = unsafe { libc::getpid() };
    let mut forked = 0u64;
    let mut refusal = None;
    while forked < FORK_TARGET {
        // SAFETY: the process is single-threaded; the child makes only async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => {
                refusal = Some(std::io::Error::last_os_error());
                break;
            }
            0 => {
                // SAFETY: async-signal-safe calls only; the child never returns.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != me {
                        libc::_exit(0);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            _ => forked += 1,
        }
    }
    let detail = json!({ "forked": forked, "target": FORK_TARGET });
    match refusal {
        Some(e) => Outcome::of::<()>(Err(e), detail),
        None => Outcome::of(Ok(()), detail),
    }
}

fn alloc() -> Outcome {
    let mut maps: Vec<*mut libc::c_void> = Vec::new();
    let mut bytes = 0usize;
    let mut refusal = None;
    // SAFETY: sysconf takes an integer.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    while bytes < ALLOC_TARGET_BYTES {
        // SAFETY: an anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ALLOC_STEP_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            refusal = Some(std::io::Error::last_os_error());
            break;
        }
        // Touch every page so the memory is really taken (a cgroup's memory.max counts it).
        for off in (0..ALLOC_STEP_BYTES).step_by(page.max(1)) {
            // SAFETY: `off` is inside the mapping just made, which is writable.
            unsafe { p.cast::<u8>().add(off).write_volatile(1) };
        }
        maps.push(p);
        bytes += ALLOC_STEP_BYTES;
    }
    for p in maps {
        // SAFETY: each is a whole mapping made above, unmapped once.
        unsafe { libc::munmap(p, ALLOC_STEP_BYTES) };
    }
    let detail = json!({ "bytes": bytes, "target": ALLOC_TARGET_BYTES });
    match refusal {
        Some(e) => Outcome::of::<()>(Err(e), detail),
        None => Outcome::of(Ok(()), detail),
    }
}

fn open_files() -> Outcome {
    let mut held = Vec::new();
    let mut refusal = None;
    while held.len() < OPEN_TARGET {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let opened = held.len();
    // Give a few back: writing the outcome needs descriptors too. The rest stay open.
    held.truncate(opened.saturating_sub(8));
    std::mem::forget(held);
    let detail = json!({ "opened": opened, "target": OPEN_TARGET });
    match refusal {
        Some(e) => Outcome::of::<()>(Err(e), detail),
        None => Outcome::of(Ok(()), detail),
    }
}

fn ptrace() -> Outcome {
    // SAFETY: getppid takes no arguments.
    let host = unsafe { libc::getppid() };
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace with integer arguments and null pointers.
    let attach = check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, host, null, null) });
    if attach.is_ok() {
        // It worked: wait for the host's stop, then let it go at once.
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        unsafe {
            libc::waitpid(host, &mut status, libc::__WALL);
            libc::ptrace(libc::PTRACE_DETACH, host, null, null);
        }
    }
    // SAFETY: as above.
    let traceme = check(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, null, null) });
    let detail = json!({
        "parent": host,
        "attach": attach.as_ref().err().map(describe),
        "traceme": traceme.as_ref().err().map(describe),
    });
    match (attach, traceme) {
        (Err(e), Err(_)) => Outcome::of::<()>(Err(e), detail),
        (Ok(_), Ok(_)) => Outcome::of(Ok(()), detail),
        _ => Outcome {
            refused: false,
            error: Some("one of the two calls succeeded".into()),
            detail,
        },
    }
}

fn mount() -> Outcome {
    use std::os::unix::ffi::OsStrExt;
    let target = report_dir().join("mnt");
    let _ = std::fs::create_dir_all(&target);
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
        return Outcome::of::<()>(Err(std::io::Error::other("NUL in path")), Value::Null);
    };
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let r = check(
        unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                path.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        }
        .into(),
    );
    if r.is_ok() {
        // SAFETY: as above.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    Outcome::of(r, json!({ "target": target }))
}

fn connect(port: u16) -> Outcome {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let r = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
    Outcome::of(r, json!({ "addr": addr.to_string() }))
}

/// Perform the attack `mode`, write its outcome file, and return the outcome as JSON.
fn attack_and_report(me: &Identity, mode: &str) -> Value {
    let o = attack(me, mode);
    write_outcome(&me.name, mode, &o);
    json!({ "refused": o.refused, "error": o.error, "detail": o.detail })
}

fn send(w: &mut UnixStream, id: Option<String>, msg: PluginMessage) {
    let body = Frame::new(id, msg).encode();
    let _ = write_frame(w, &body, MAX_FRAME_LEN);
}

fn main() -> ExitCode {
    let me = identity();
    if std::env::args().nth(1).as_deref() == Some("--metadata") {
        let meta = json!({
            "id": me.id, "name": format!("Hostile ({})", me.mode), "version": me.version,
            "author": "tests", "icon": "☠", "route": me.route, "protocol": "1.1",
        });
        println!("{meta}");
        return ExitCode::SUCCESS;
    }
    if me.on_request {
        eprintln!("hostile plugin starting: attacks on request");
    } else {
        eprintln!("hostile plugin starting in mode {}", me.mode);
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
    drop(listener);
    serve(stream, &me)
}

fn serve(mut stream: UnixStream, me: &Identity) -> ExitCode {
    let mut outcome = Value::Null;
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
            HostMessage::Init(_) => {
                send(&mut stream, id, PluginMessage::Ready);
                if outcome.is_null() && !me.on_request {
                    outcome = attack_and_report(me, &me.mode);
                }
            }
            HostMessage::Ping { seq } => send(&mut stream, id, PluginMessage::Pong { seq }),
            HostMessage::Shutdown => {
                send(&mut stream, id, PluginMessage::ShutdownAck);
                return ExitCode::SUCCESS;
            }
            HostMessage::Config(_) => {
                let e = ErrorReply::new(ErrorCode::Unsupported, "unsupported message type config");
                send(&mut stream, id, PluginMessage::Error(e));
            }
            HostMessage::Http(req) => {
                let mode = if me.on_request {
                    let asked = req.path_only().trim_matches('/');
                    let mode = if asked.is_empty() {
                        me.mode.clone()
                    } else {
                        asked.to_string()
                    };
                    outcome = attack_and_report(me, &mode);
                    mode
                } else {
                    me.mode.clone()
                };
                let reply = HttpResponse::json(200, &json!({ "mode": mode, "outcome": outcome }));
                send(&mut stream, id, PluginMessage::HttpReply(reply));
            }
            HostMessage::Kv(_)
            | HostMessage::Error(_)
            | HostMessage::MqttOk
            | HostMessage::MqttMessage(_) => {}
        }
    }
}
