//! Starting the real `toru` binary for a benchmark: temp dirs, plugins copied in as `*.binary`,
//! a `NOTIFY_SOCKET` we bind (READY=1 is the event we wait for, no polling), an admin password and
//! an API token through the CLI, and JSON helpers for the API.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{ProbeSock, Proc, Result, TempDir, err, http_once};

/// How long a host gets to become ready.
const READY_WAIT: Duration = Duration::from_secs(60);

/// Where the built binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `target/release`.
    pub dir: PathBuf,
    /// The repository root.
    pub repo: PathBuf,
}

impl Bins {
    /// A binary in the release dir.
    pub fn get(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A plugin to install: the binary and the name it gets (`<name>.binary`).
#[derive(Debug, Clone)]
pub struct PluginFile {
    /// Built binary.
    pub src: PathBuf,
    /// File stem in the plugins dir.
    pub name: String,
}

/// A running host. Stopped (SIGTERM, then SIGKILL) when dropped; its temp dir goes with it.
#[derive(Debug)]
pub struct Toru {
    /// The host process (fields drop in order: process, probe socket, then the dirs).
    pub proc: Proc,
    /// Probe reports of the plugins it runs (`<plugins-dir>/probe.sock`).
    pub probe: ProbeSock,
    /// The bound HTTP address.
    pub addr: SocketAddr,
    /// Bearer token (admin), once [`Toru::login`] ran.
    pub token: Option<String>,
    /// How long from spawn to READY=1.
    pub start_to_ready: Duration,
    bin: PathBuf,
    _notify: UnixDatagram,
    /// Data dir.
    pub data: PathBuf,
    /// Plugins dir.
    pub plugins: PathBuf,
    /// Runtime dir.
    pub run: PathBuf,
    /// Root temp dir (removed last).
    pub root: TempDir,
}

/// Install `plugins` into `dir`.
pub fn install(dir: &Path, plugins: &[PluginFile]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    for p in plugins {
        let dest = dir.join(format!("{}.binary", p.name));
        std::fs::copy(&p.src, &dest).map_err(|e| {
            err(format!(
                "copy {} → {}: {e}",
                p.src.display(),
                dest.display()
            ))
        })?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

impl Toru {
    /// Start a host with `plugins` and an optional config file; returns once READY=1 arrived.
    pub fn start(bins: &Bins, plugins: &[PluginFile], config: Option<&str>) -> Result<Toru> {
        let root = TempDir::new("toru")?;
        install(&root.join("p"), plugins)?;
        Toru::start_in(bins, root, config, &[], true)
    }

    /// Like [`Toru::start`], but READY=1 with some plugins not ready is fine (crash-looping ones).
    pub fn start_lenient(
        bins: &Bins,
        plugins: &[PluginFile],
        config: Option<&str>,
    ) -> Result<Toru> {
        let root = TempDir::new("toru")?;
        install(&root.join("p"), plugins)?;
        Toru::start_in(bins, root, config, &[], false)
    }

    /// Start a host on the dirs in `root` (reused: second starts), with `wrapper` prepended to the
    /// command (e.g. valgrind).
    pub fn start_in(
        bins: &Bins,
        root: TempDir,
        config: Option<&str>,
        wrapper: &[String],
        require_ready: bool,
    ) -> Result<Toru> {
        let (data, plugins, run) = (root.join("d"), root.join("p"), root.join("r"));
        std::fs::create_dir_all(&plugins)?;
        let probe = ProbeSock::bind(plugins.join("probe.sock"))?;
        let notify_path = root.join("n.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        let _ = std::fs::remove_file(run.join("http.addr"));
        let bin = bins.get("toru");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data)
            .arg("--plugins-dir")
            .arg(&plugins)
            .arg("--runtime-dir")
            .arg(&run)
            .arg("--log-level")
            .arg("warn");
        if let Some(cfg) = config {
            let path = root.join("toru.toml");
            std::fs::write(&path, cfg)?;
            cmd.arg("--config").arg(path);
        }
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(root.join("host.log"))?,
            ));
        let t0 = Instant::now();
        let mut proc = Proc::spawn(&mut cmd, "toru")?;
        let deadline = t0 + READY_WAIT;
        let mut buf = [0u8; 4096];
        let (start_to_ready, ready_msg) = loop {
            if !proc.running() {
                let log = std::fs::read_to_string(root.join("host.log")).unwrap_or_default();
                return Err(err(format!("toru exited before READY=1; log:\n{log}")));
            }
            if Instant::now() > deadline {
                return Err(err("toru: no READY=1 within 60 s"));
            }
            notify.set_read_timeout(Some(Duration::from_millis(200)))?;
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == "READY=1") {
                    break (t0.elapsed(), msg);
                }
            }
        };
        let addr = std::fs::read_to_string(run.join("http.addr"))
            .map_err(|e| err(format!("http.addr: {e}")))?
            .trim()
            .parse()
            .map_err(|e| err(format!("http.addr: {e}")))?;
        // STATUS=… says how many plugins are ready: "N plugins: N ready, …".
        let status = ready_msg
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or("")
            .to_string();
        let n_plugins = install_count(&plugins);
        if require_ready && n_plugins > 0 && !status.contains(&format!("{n_plugins} ready")) {
            return Err(err(format!(
                "toru READY but not every plugin is ready: {status}"
            )));
        }
        Ok(Toru {
            proc,
            probe,
            addr,
            token: None,
            start_to_ready,
            bin,
            _notify: notify,
            data,
            plugins,
            run,
            root,
        })
    }

    /// Stop the host and hand back its dirs (for a second start on the same store).
    pub fn into_root(self) -> TempDir {
        let Toru { mut proc, root, .. } = self;
        proc.stop();
        root
    }

    /// Run `toru <args>` against this host's dirs.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--plugins-dir")
            .arg(&self.plugins)
            .arg("--runtime-dir")
            .arg(&self.run)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(err(format!(
                "toru {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Set the admin password and create an admin API token.
    pub fn login(&mut self) -> Result<()> {
        self.cli(&["passwd"], "bench-password-1234\n")?;
        let out = self.cli(&["token", "create", "bench", "--role", "admin"], "")?;
        let token = out
            .split_whitespace()
            .find(|w| w.starts_with("toru_"))
            .ok_or_else(|| err(format!("no token in {out:?}")))?;
        self.token = Some(token.to_string());
        Ok(())
    }

    /// `Authorization` and CSRF header lines for API requests.
    pub fn auth_headers(&self) -> Vec<String> {
        let mut h = vec![
            "X-Toru-Csrf: 1".to_string(),
            "Content-Type: application/json".to_string(),
        ];
        if let Some(t) = &self.token {
            h.push(format!("Authorization: Bearer {t}"));
        }
        h
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = http_once(self.addr, "GET", path, &self.auth_headers(), b"")?;
        if status != 200 {
            return Err(err(format!(
                "GET {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// The plugin's current pid and state.
    pub fn plugin(&self, id: &str) -> Result<(Option<u32>, String, u64)> {
        let v = self.get(&format!("/api/plugins/{id}"))?;
        Ok((
            v["pid"].as_u64().map(|p| p as u32),
            v["state"].as_str().unwrap_or("").to_string(),
            v["restarts"].as_u64().unwrap_or(0),
        ))
    }

    /// Wait until every plugin in `ids` is ready.
    pub fn wait_ready(&self, ids: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for id in ids {
            loop {
                if self.plugin(id)?.1 == "ready" {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(err(format!("plugin {id} not ready in time")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// Plugins installed in `dir`.
fn install_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".binary"))
                .count()
        })
        .unwrap_or(0)
}

/// An RFC 3339 timestamp as unix ns.
pub fn parse_at(at: &str) -> Option<i128> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map(i128::from)
}
