//! Starting, restarting and stopping a real `toru` process on temp dirs, installing plugins into
//! its plugins dir, reading its notify socket, and running its admin CLI on the same dirs.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::http::{Resp, http};
use crate::{Bins, KitError, WAIT, io, try_temp_dir};

/// A plugin to install into the plugins dir.
#[derive(Clone, Debug)]
pub enum PluginSrc {
    /// A workspace binary (`hello-rust`, `stress`, …) installed as `<as_name>.binary`.
    Built {
        /// The binary's name in [`Bins::dir`].
        bin: &'static str,
        /// The file stem in the plugins dir.
        as_name: String,
    },
    /// A file from the repository (e.g. `plugins/hello-python/hello-python.binary`), with siblings
    /// to copy next to it (e.g. `toru_plugin.py`).
    RepoFile {
        /// Path from the repository root.
        path: &'static str,
        /// Other repository files copied beside it.
        siblings: Vec<&'static str>,
    },
    /// A script written as `<name>.binary`.
    Script {
        /// The file stem.
        name: String,
        /// The whole file, `#!` line included.
        body: String,
    },
    /// Any executable, installed as `<name>.binary`.
    File {
        /// The executable.
        src: PathBuf,
        /// The file stem.
        name: String,
    },
}

/// A workspace binary installed under its own name.
pub fn built(bin: &'static str) -> PluginSrc {
    PluginSrc::Built {
        bin,
        as_name: bin.to_string(),
    }
}

/// Install `p` into `dir` (executable, `0755`).
pub fn try_install(bins: &Bins, dir: &Path, p: &PluginSrc) -> Result<(), KitError> {
    use std::os::unix::fs::PermissionsExt;
    let copy = |src: &Path, dest: &Path| {
        std::fs::copy(src, dest).map(|_| ()).map_err(io(format!(
            "copy {} → {}",
            src.display(),
            dest.display()
        )))
    };
    let dest = match p {
        PluginSrc::Built { bin, as_name } => {
            let dest = dir.join(format!("{as_name}.binary"));
            copy(&bins.get(bin), &dest)?;
            dest
        }
        PluginSrc::File { src, name } => {
            let dest = dir.join(format!("{name}.binary"));
            copy(src, &dest)?;
            dest
        }
        PluginSrc::RepoFile { path, siblings } => {
            let src = bins.repo.join(path);
            let dest = dir.join(src.file_name().unwrap_or(src.as_os_str()));
            copy(&src, &dest)?;
            for s in siblings {
                let s = bins.repo.join(s);
                copy(&s, &dir.join(s.file_name().unwrap_or(s.as_os_str())))?;
            }
            dest
        }
        PluginSrc::Script { name, body } => {
            let dest = dir.join(format!("{name}.binary"));
            std::fs::write(&dest, body).map_err(io(format!("write {}", dest.display())))?;
            dest
        }
    };
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", dest.display())))
}

/// [`try_install`] with the binaries beside the test (panics; run `cargo build --workspace`
/// first).
pub fn install(dir: &Path, p: &PluginSrc) {
    let bins = Bins::locate().unwrap_or_else(|e| panic!("{e}"));
    try_install(&bins, dir, p)
        .unwrap_or_else(|e| panic!("{e} (run `cargo build --workspace` first)"));
}

/// The plugins dir of a host started on `root` (to install plugins before the start).
pub fn plugins_dir(root: &Path) -> PathBuf {
    root.join("plugins")
}

/// How to start a host.
#[derive(Clone, Debug, Default)]
pub struct HostOpts {
    /// Installed into the plugins dir before the start.
    pub plugins: Vec<PluginSrc>,
    /// Extra environment for the host process.
    pub env: Vec<(String, String)>,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Reuse this root (`data/`, `plugins/`, `run/` inside it) instead of a fresh one.
    pub root: Option<PathBuf>,
    /// Config file contents (written to `<root>/toru.toml` and passed with `--config`). Unless
    /// it has a `[safe_mode]` table of its own, `[safe_mode] after_unclean = 0` is appended (see
    /// [`config_text`]): tests kill hosts on purpose.
    pub config: Option<String>,
    /// `--log-level` (default `debug`).
    pub log_level: Option<String>,
    /// A command the host runs under (e.g. `valgrind --tool=callgrind`).
    pub wrapper: Vec<String>,
    /// `--runtime-dir` (default `<root>/run`).
    pub runtime_dir: Option<PathBuf>,
}

/// What a start waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Until {
    /// `READY=1`.
    Ready,
    /// The first notify message with the address (the HTTP server runs).
    Serving,
}

/// A running host. Killed (SIGKILL; its plugins follow through their parent-death signal, and
/// what is left in its cgroups is killed and the cgroups removed) when dropped; [`Host::stop`]
/// stops it the way systemd does.
#[derive(Debug)]
pub struct Host {
    /// The temp root holding the dirs, the config file, `host.log` and the notify socket.
    pub root: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--plugins-dir`.
    pub plugins_dir: PathBuf,
    /// `--runtime-dir`.
    pub runtime_dir: PathBuf,
    /// The bound HTTP address (from `X_TORU_LISTEN` in `READY=1`).
    pub addr: SocketAddr,
    /// The host process.
    pub child: Child,
    /// The socket the host notifies (`NOTIFY_SOCKET`).
    pub notify: UnixDatagram,
    /// Where it is bound.
    pub notify_path: PathBuf,
    /// The `STATUS=` of the last `READY=1`.
    pub ready_status: String,
    /// From spawn to `READY=1`, last start.
    pub start_to_ready: Duration,
    /// The binaries it runs.
    pub bins: Bins,
    /// The cgroup holding its plugins' cgroups, as it recorded it (`<runtime-dir>/cgroup`) by its
    /// last start; what is left in it is killed and removed when the `Host` is dropped.
    pub cgroup: Option<PathBuf>,
}

impl Host {
    /// Start `toru` with the binaries beside the test and wait for `READY=1` (panics with the log).
    pub fn start(opts: HostOpts) -> Host {
        let bins = Bins::locate().unwrap_or_else(|e| panic!("{e}"));
        Host::try_start(&bins, &opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start `toru` and return as soon as it serves HTTP, before `READY=1`: the host announces its
    /// address (`X_TORU_LISTEN=`, with `STATUS=`) once its HTTP server runs, while the plugins found
    /// at start may still be discovered. [`Host::wait_ready`] then waits for `READY=1`. Panics with
    /// the log.
    pub fn start_serving(opts: HostOpts) -> Host {
        let bins = Bins::locate().unwrap_or_else(|e| panic!("{e}"));
        Host::try_start_until(&bins, &opts, Until::Serving).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait for `READY=1` (after [`Host::start_serving`]); panics with the log.
    pub fn wait_ready(&mut self) {
        let t0 = Instant::now();
        self.try_wait(t0, Until::Ready)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Start `toru` from `bins` and wait for `READY=1`.
    pub fn try_start(bins: &Bins, opts: &HostOpts) -> Result<Host, KitError> {
        Host::try_start_until(bins, opts, Until::Ready)
    }

    fn try_start_until(bins: &Bins, opts: &HostOpts, until: Until) -> Result<Host, KitError> {
        let root = match &opts.root {
            Some(r) => r.clone(),
            None => try_temp_dir("h")?,
        };
        let data_dir = root.join("data");
        let plugins_dir = plugins_dir(&root);
        let runtime_dir = opts.runtime_dir.clone().unwrap_or_else(|| root.join("run"));
        std::fs::create_dir_all(&plugins_dir)
            .map_err(io(format!("mkdir {}", plugins_dir.display())))?;
        for p in &opts.plugins {
            try_install(bins, &plugins_dir, p)?;
        }
        let notify_path = root.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .map_err(io(format!("bind {}", notify_path.display())))?;
        let t0 = Instant::now();
        let child = spawn(bins, &root, &data_dir, &plugins_dir, &runtime_dir, opts)?;
        let mut h = Host {
            root,
            data_dir,
            plugins_dir,
            runtime_dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            notify,
            notify_path,
            ready_status: String::new(),
            start_to_ready: Duration::ZERO,
            bins: bins.clone(),
            cgroup: None,
        };
        h.try_wait(t0, until)?;
        Ok(h)
    }

    /// Restart the host on the same dirs (after it exited or was killed); panics on failure.
    pub fn restart(&mut self, opts: HostOpts) {
        self.try_restart(&opts).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Kill the host if it still runs, then start it again on the same dirs.
    pub fn try_restart(&mut self, opts: &HostOpts) -> Result<(), KitError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Drop notifications left over from the previous run.
        self.notify
            .set_nonblocking(true)
            .map_err(io("notify socket"))?;
        let mut buf = [0u8; 4096];
        while self.notify.recv(&mut buf).is_ok() {}
        self.notify
            .set_nonblocking(false)
            .map_err(io("notify socket"))?;
        let t0 = Instant::now();
        self.child = spawn(
            &self.bins,
            &self.root,
            &self.data_dir,
            &self.plugins_dir,
            &self.runtime_dir,
            opts,
        )?;
        self.try_wait(t0, Until::Ready)
    }

    /// Receive notify datagrams until one says `READY=1` (or, for [`Until::Serving`], carries the
    /// address); take the address from it.
    fn try_wait(&mut self, t0: Instant, until: Until) -> Result<(), KitError> {
        let deadline = t0 + WAIT;
        let msg = loop {
            let msg = self.try_recv_notify(deadline)?;
            let done = match until {
                Until::Ready => msg.lines().any(|l| l == "READY=1"),
                Until::Serving => msg.lines().any(|l| l.starts_with("X_TORU_LISTEN=")),
            };
            if done {
                break msg;
            }
        };
        let field = |name: &str| {
            msg.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_string)
        };
        if until == Until::Ready {
            self.start_to_ready = t0.elapsed();
            self.ready_status = field("STATUS=").unwrap_or_default();
        }
        self.addr = field("X_TORU_LISTEN=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| KitError::NoAddress(msg.clone()))?;
        // Read only once this host serves (it records its cgroup before it does): the record is its
        // own then (a host refused on a runtime dir in use never gets here, so it never claims the
        // running host's cgroup).
        self.cgroup = std::fs::read_to_string(self.runtime_dir.join("cgroup"))
            .ok()
            .map(|s| PathBuf::from(s.trim_end()));
        Ok(())
    }

    /// The next notify datagram (panics past `deadline` or if the host exits).
    pub fn recv_notify(&mut self, deadline: Instant) -> String {
        self.try_recv_notify(deadline)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next notify datagram; an error past `deadline` or if the host exits.
    pub fn try_recv_notify(&mut self, deadline: Instant) -> Result<String, KitError> {
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("waiting for toru"))? {
                return Err(KitError::Exited {
                    status,
                    log: self.log(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KitError::NotReady { log: self.log() });
            }
            // Bounded so an exit is noticed; the datagram itself wakes the recv at once.
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(500))))
                .map_err(io("notify socket"))?;
            match self.notify.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                // EINTR: a signal (e.g. a child's SIGCHLD) interrupted the wait; wait again.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io("notify recv")(e)),
            }
        }
    }

    /// Notify datagrams until one contains `STOPPING=1` (the host may exit meanwhile).
    pub fn recv_notify_until_exit(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        let mut all = String::new();
        let _ = self
            .notify
            .set_read_timeout(Some(Duration::from_millis(200)));
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

    /// The host's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("host.log")).unwrap_or_default()
    }

    /// `<data-dir>/plugin-data/<id>`: plugin `id`'s private folder, its `TORU_PLUGIN_DATA` (the host
    /// creates it before each spawn).
    pub fn plugin_data(&self, id: &str) -> PathBuf {
        self.data_dir.join("plugin-data").join(id)
    }

    /// Where plugin `id` (`stress`, `hostile`) writes its report files: its data folder when the
    /// host made one, else the plugins dir (its working directory, where a host that gives no
    /// `TORU_PLUGIN_DATA` has it write them).
    pub fn report_dir(&self, id: &str) -> PathBuf {
        let own = self.plugin_data(id);
        if own.is_dir() {
            own
        } else {
            self.plugins_dir.clone()
        }
    }

    /// The report file `file`, named `<id>.<what>` (`stress-ok.pid`, `hostile-fork.outcome`):
    /// in plugin `<id>`'s data folder if it is there, else in the plugins dir.
    pub fn report_path(&self, file: &str) -> PathBuf {
        let id = file.split('.').next().unwrap_or(file);
        let own = self.plugin_data(id).join(file);
        if own.exists() {
            own
        } else {
            self.plugins_dir.join(file)
        }
    }

    /// The text of [`Host::report_path`], if it can be read.
    pub fn read_report(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.report_path(file)).ok()
    }

    /// The host's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `toru` pointed at this host's data, plugins and runtime dirs.
    pub fn toru(&self) -> Command {
        toru_command(
            &self.bins,
            &self.data_dir,
            &self.plugins_dir,
            &self.runtime_dir,
        )
    }

    /// Run `toru <args>` against this host's dirs (admin subcommands), `stdin` piped in; panics if
    /// it cannot be run.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.try_cli(args, stdin).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `toru <args>` against this host's dirs.
    pub fn try_cli(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, KitError> {
        let mut cmd = self.toru();
        cmd.args(args);
        run_with_stdin(cmd, stdin)
    }

    /// Send SIGTERM (as systemd does) and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.try_stop().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn try_stop(&mut self) -> Result<ExitStatus, KitError> {
        crate::kill(self.child.id(), libc::SIGTERM);
        self.child.wait().map_err(io("waiting for toru"))
    }

    /// A plain HTTP request (`Connection: close`), panicking on I/O errors.
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
        if let Some(cg) = self.cgroup.take() {
            crate::remove_host_cgroups(&cg);
        }
        // A passing test's dirs go (each holds copies of the plugin binaries: tens of MB); a
        // failing test's stay for a look. Only the kit's own temp dirs (`/tmp/tt-…`) are removed:
        // a root the caller made elsewhere is the caller's.
        if !std::thread::panicking() && self.root.starts_with(TEMP_BASE) && is_kit_temp(&self.root)
        {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Whether `dir` is one of [`crate::try_temp_dir`]'s (`/tmp/tt-<tag>-<pid>-<n>`).
fn is_kit_temp(dir: &Path) -> bool {
    dir.parent() == Some(Path::new(TEMP_BASE))
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tt-"))
}

/// Where the kit's temp dirs live.
const TEMP_BASE: &str = "/tmp";

/// `toru --data-dir … --plugins-dir … --runtime-dir …` from `bins`.
fn toru_command(bins: &Bins, data: &Path, plugins: &Path, run: &Path) -> Command {
    let mut cmd = Command::new(bins.get("toru"));
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--plugins-dir")
        .arg(plugins)
        .arg("--runtime-dir")
        .arg(run);
    cmd
}

/// Run `cmd` with `stdin` piped in; stdout and stderr captured.
pub(crate) fn run_with_stdin(mut cmd: Command, stdin: Option<&str>) -> Result<Output, KitError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io(format!("run {cmd:?}")))?;
    // Dropped at the end of the statement: the child sees EOF after `stdin`.
    if let (Some(mut input), Some(s)) = (child.stdin.take(), stdin) {
        input.write_all(s.as_bytes()).map_err(io("write stdin"))?;
    }
    child.wait_with_output().map_err(io(format!("run {cmd:?}")))
}

/// Safe mode off, as every host the kit starts has it unless its test says otherwise.
pub const SAFE_MODE_OFF: &str = "[safe_mode]\nafter_unclean = 0\n";

/// The config file a host gets for `config`: the text as given, with [`SAFE_MODE_OFF`] appended
/// unless it has a `[safe_mode]` table. Tests and the bench kill hosts with SIGKILL on purpose
/// (and [`Host`]'s drop does); counted as unclean exits, a few in a row would start the next host
/// on the same dirs in safe mode, every plugin held. A test of safe mode sets the table itself.
pub fn config_text(config: Option<&str>) -> String {
    let own = config.into_iter().flat_map(str::lines).any(|l| {
        let head = l.split('#').next().unwrap_or("").trim();
        head.strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .is_some_and(|t| t.trim() == "safe_mode")
    });
    match config {
        Some(c) if own => c.to_string(),
        Some(c) if c.is_empty() || c.ends_with('\n') => format!("{c}{SAFE_MODE_OFF}"),
        Some(c) => format!("{c}\n{SAFE_MODE_OFF}"),
        None => SAFE_MODE_OFF.to_string(),
    }
}

/// Spawn the host on port 0 with `NOTIFY_SOCKET` at `<root>/notify.sock` and stderr appended to
/// `<root>/host.log`.
fn spawn(
    bins: &Bins,
    root: &Path,
    data: &Path,
    plugins: &Path,
    run: &Path,
    opts: &HostOpts,
) -> Result<Child, KitError> {
    let toru = toru_command(bins, data, plugins, run);
    let mut cmd = match opts.wrapper.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(toru.get_program()).args(toru.get_args());
            c
        }
        None => toru,
    };
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--log-level")
        .arg(opts.log_level.as_deref().unwrap_or("debug"));
    let path = root.join("toru.toml");
    std::fs::write(&path, config_text(opts.config.as_deref()))
        .map_err(io(format!("write {}", path.display())))?;
    cmd.arg("--config").arg(path);
    let log_path = root.join("host.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    cmd.args(&opts.args)
        .env("NOTIFY_SOCKET", root.join("notify.sock"))
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd.spawn().map_err(io(format!("start {cmd:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_mode_is_off_unless_the_config_has_its_own_table() {
        assert_eq!(config_text(None), SAFE_MODE_OFF);
        assert_eq!(config_text(Some("")), SAFE_MODE_OFF);
        assert_eq!(
            config_text(Some("[http]\nmax_connections = 5")),
            format!("[http]\nmax_connections = 5\n{SAFE_MODE_OFF}")
        );
        let own = "[safe_mode] # on\nafter_unclean = 2\n";
        assert_eq!(config_text(Some(own)), own);
        assert_eq!(config_text(Some(" [ safe_mode ]\n")), " [ safe_mode ]\n");
    }
}
