//! Test support: start the real `toru` binary with temp dirs and real plugin binaries, wait for it
//! through a fake `NOTIFY_SOCKET` (READY=1 is the event; no sleeps), talk plain HTTP/1.1 to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Deadline for anything a test waits for. Generous: tests may run under qemu-user.
pub const WAIT: Duration = Duration::from_secs(60);

/// The directory holding the built binaries (`toru`, `hello-rust`, `stress`, …).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_toru"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh short temp dir (Unix socket paths are limited to 108 bytes).
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = PathBuf::from(format!("/tmp/tt-{}-{}-{}", tag, std::process::id(), n));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Which plugins to install into the plugins dir.
#[derive(Clone, Debug)]
pub enum PluginSrc {
    /// A workspace binary (`hello-rust`, `stress`, …) installed as `<as_name>.binary`.
    Built { bin: &'static str, as_name: String },
    /// A file from the repository (e.g. `plugins/hello-python/hello-python.binary`), with siblings
    /// to copy next to it (e.g. `toru_plugin.py`).
    RepoFile {
        path: &'static str,
        siblings: Vec<&'static str>,
    },
    /// A script written as `<name>.binary`.
    Script { name: String, body: String },
}

pub fn built(bin: &'static str) -> PluginSrc {
    PluginSrc::Built {
        bin,
        as_name: bin.to_string(),
    }
}

/// Install a plugin into `dir`.
pub fn install(dir: &Path, p: &PluginSrc) {
    use std::os::unix::fs::PermissionsExt;
    let (dest, perms_from) = match p {
        PluginSrc::Built { bin, as_name } => {
            let dest = dir.join(format!("{as_name}.binary"));
            std::fs::copy(bin_dir().join(bin), &dest).unwrap_or_else(|e| {
                panic!("copy {bin}: {e} (run `cargo build --workspace` first)")
            });
            (dest, None)
        }
        PluginSrc::RepoFile { path, siblings } => {
            let src = repo().join(path);
            let dest = dir.join(src.file_name().unwrap());
            std::fs::copy(&src, &dest).unwrap();
            for s in siblings {
                let s = repo().join(s);
                std::fs::copy(&s, dir.join(s.file_name().unwrap())).unwrap();
            }
            (dest, None)
        }
        PluginSrc::Script { name, body } => {
            let dest = dir.join(format!("{name}.binary"));
            std::fs::write(&dest, body).unwrap();
            (dest, Some(0o755))
        }
    };
    let mode = perms_from.unwrap_or(0o755);
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A running host.
pub struct Host {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub addr: SocketAddr,
    pub child: Child,
    pub notify: UnixDatagram,
    pub notify_path: PathBuf,
    /// Extra environment for the host process.
    pub env: Vec<(String, String)>,
}

/// How to start a host.
#[derive(Clone, Debug, Default)]
pub struct HostOpts {
    pub plugins: Vec<PluginSrc>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Reuse this root (data/plugins/runtime dirs inside it) instead of a fresh one.
    pub root: Option<PathBuf>,
    /// Config file contents (written to `<root>/toru.toml` and passed with `--config`).
    pub config: Option<String>,
}

impl Host {
    /// Start `toru` and wait for READY=1.
    pub fn start(opts: HostOpts) -> Host {
        let root = opts.root.clone().unwrap_or_else(|| temp_dir("h"));
        let data_dir = root.join("data");
        let plugins_dir = root.join("plugins");
        let runtime_dir = root.join("run");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        for p in &opts.plugins {
            install(&plugins_dir, p);
        }
        let notify_path = root.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(WAIT)).unwrap();
        let mut h = Host {
            root: root.clone(),
            data_dir,
            plugins_dir,
            runtime_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Command::new("true").spawn().unwrap(),
            notify,
            notify_path,
            env: opts.env.clone(),
        };
        let _ = h.child.wait();
        h.child = h.spawn(&opts);
        h.wait_ready();
        h
    }

    /// `toru` pointed at this host's data, plugins and runtime dirs.
    fn toru(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_toru"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--plugins-dir")
            .arg(&self.plugins_dir)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir);
        cmd
    }

    fn spawn(&self, opts: &HostOpts) -> Child {
        let mut cmd = self.toru();
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--log-level")
            .arg("debug");
        if let Some(cfg) = &opts.config {
            let path = self.root.join("toru.toml");
            std::fs::write(&path, cfg).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(&opts.args)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.root.join("host.log"))
                    .unwrap(),
            ));
        cmd.spawn().unwrap()
    }

    /// Restart the host on the same dirs (after it exited or was killed).
    pub fn restart(&mut self, opts: HostOpts) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Drop notifications left over from the previous run.
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while self.notify.recv(&mut buf).is_ok() {}
        self.notify.set_nonblocking(false).unwrap();
        self.child = self.spawn(&opts);
        self.wait_ready();
    }

    /// Receive notify datagrams until one contains `READY=1`; then read the bound address.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let msg = self.recv_notify(deadline);
            if msg.lines().any(|l| l == "READY=1") {
                break;
            }
        }
        let addr = std::fs::read_to_string(self.runtime_dir.join("http.addr"))
            .expect("host writes <runtime-dir>/http.addr before READY=1");
        self.addr = addr.trim().parse().unwrap();
    }

    /// Next notify datagram (panics past the deadline or if the host exits).
    pub fn recv_notify(&mut self, deadline: Instant) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("toru exited ({status}) — log:\n{}", self.log());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notify message in time — log:\n{}",
                self.log()
            );
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .unwrap();
            match self.notify.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                // EINTR: a recv with SO_RCVTIMEO fails so when the test process is stopped and
                // resumed (SIGSTOP/SIGCONT, a frozen cgroup), even with no signal handler.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("notify recv: {e}"),
            }
        }
    }

    /// Notify datagrams until one contains `STOPPING=1` (the host may exit meanwhile).
    pub fn recv_notify_until_exit(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        let mut all = String::new();
        self.notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                all.push_str(&String::from_utf8_lossy(&buf[..n]));
                all.push('\n');
                if all.contains("STOPPING=1") {
                    break;
                }
            }
        }
        all
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("host.log")).unwrap_or_default()
    }

    /// Run `toru <args>` against this host's dirs (admin subcommands).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut cmd = self.toru();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        self.child.wait().unwrap()
    }

    /// A plain HTTP request (Connection: close).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        http(self.addr, method, path, headers, body)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Send a signal to a process.
pub fn kill(pid: u32, sig: i32) -> bool {
    unsafe { libc_kill(pid as i32, sig) == 0 }
}

/// Whether a process exists (and is not a zombie we could see).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 request with `Connection: close`; `Host` defaults to `localhost`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or(b"");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// Parse a whole HTTP/1.1 response (Content-Length or chunked or until close).
pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&b[..eol]);
        let size =
            usize::from_str_radix(size_field.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Poll `f` until it returns `Some`, up to the deadline. For state that has no event to wait on
/// from outside the process (e.g. a plugin's state seen through the API); each poll is a real
/// request, and the deadline only bounds a failure.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
