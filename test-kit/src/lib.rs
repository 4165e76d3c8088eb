//! The one way the integration tests (`tests/`) and the benchmarks (`bench/`) start a real `toru`
//! host: temp dirs, plugin binaries installed as `*.binary`, a `NOTIFY_SOCKET` the kit binds (the
//! host's `READY=1` is the event waited for, and it carries the bound address as
//! `X_TORU_LISTEN=ip:port`: the host listens on port 0 and nothing is read from a file), the admin
//! CLI against the same dirs, stopping, a small HTTP/1.1 client, and plugin packages to install
//! ([`package`]: real ones packed by `toru plugin pack`, broken ones written entry by entry).
//!
//! It never links the host library: it runs the binaries cargo built, found beside the running test
//! or bench executable ([`Bins::locate`]). Fallible calls return [`KitError`] (the bench reports
//! them and stops what it started); the test conveniences ([`Host::start`], [`Host::cli`],
//! [`http()`]) panic with the host's log instead, which is what a failing test should do.

#![deny(unsafe_code)] // Only `raw_kill` may: it says `allow`.

mod host;
mod http;
pub mod package;
mod tmpfs;

pub use host::{
    Host, HostOpts, PluginSrc, SAFE_MODE_OFF, built, config_text, install, plugins_dir, try_install,
};
pub use http::{HttpConn, Resp, http, parse_response, try_http};
pub use tmpfs::{Tmpfs, free_bytes};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deadline for anything a test waits for. Generous: tests may run under qemu-user.
pub const WAIT: Duration = Duration::from_secs(60);

/// Why a kit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// A file, socket or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host exited before it was ready.
    #[error("toru exited ({status}) before READY=1; log:\n{log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log so far.
        log: String,
    },
    /// The host sent no `READY=1` in time.
    #[error("toru sent no READY=1 within {} s; log:\n{log}", WAIT.as_secs())]
    NotReady {
        /// Its log so far.
        log: String,
    },
    /// `READY=1` came without a usable `X_TORU_LISTEN=`.
    #[error("READY=1 without a usable X_TORU_LISTEN address: {0:?}")]
    NoAddress(String),
    /// An HTTP answer could not be parsed.
    #[error("bad HTTP response: {0}")]
    Http(String),
    /// The built binaries are not where cargo puts them.
    #[error("cannot locate the built binaries beside {0}")]
    Bins(PathBuf),
}

/// Wrap an I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
    let what = what.into();
    move |source| KitError::Io { what, source }
}

/// Where the built binaries (`toru`, `hello-rust`, `stress`, `toru-bench-probe`, …) and the
/// repository are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The cargo output dir (`target/debug`, `target/release`, `target/<triple>/debug`).
    pub dir: PathBuf,
    /// The repository root.
    pub repo: PathBuf,
}

impl Bins {
    /// The binaries beside the running executable: cargo puts test executables in `<dir>/deps` and
    /// binaries in `<dir>`.
    pub fn locate() -> Result<Bins, KitError> {
        let exe = std::env::current_exe().map_err(io("locating the running executable"))?;
        let mut dir = exe
            .parent()
            .ok_or_else(|| KitError::Bins(exe.clone()))?
            .to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Ok(Bins {
            dir,
            repo: repo_root(),
        })
    }

    /// A binary in [`Bins::dir`].
    pub fn get(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The repository root (this crate lives in `<repo>/test-kit`).
pub fn repo_root() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent().unwrap_or(kit).to_path_buf()
}

/// A fresh short dir `/tmp/tt-<tag>-<pid>-<n>` (Unix socket paths are limited to 108 bytes). It is
/// left behind for a look after a failure; see [`TempDir`] for one removed on drop.
pub fn try_temp_dir(tag: &str) -> Result<PathBuf, KitError> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = PathBuf::from(format!("/tmp/tt-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(io(format!("mkdir {}", d.display())))?;
    Ok(d)
}

/// [`try_temp_dir`] for tests (panics).
pub fn temp_dir(tag: &str) -> PathBuf {
    try_temp_dir(tag).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh short temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create one (see [`try_temp_dir`]).
    pub fn new(tag: &str) -> Result<TempDir, KitError> {
        try_temp_dir(tag).map(TempDir)
    }

    /// A path inside.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Send `sig` to process `pid`; whether it was delivered.
pub fn kill(pid: u32, sig: i32) -> bool {
    libc::pid_t::try_from(pid).is_ok_and(|pid| pid > 0 && raw_kill(pid, sig))
}

/// Send `sig` to every process of the group `pgid`. Missing groups are fine.
pub fn signal_group(pgid: u32, sig: i32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid)
        && pgid > 0
    {
        raw_kill(-pgid, sig);
    }
}

/// The kit's only `unsafe`: kill(2) touches no memory; `pid` was checked by the callers (never 0
/// or -1, which would address our own group or every process).
#[allow(unsafe_code)]
fn raw_kill(pid: libc::pid_t, sig: i32) -> bool {
    // SAFETY: a plain syscall with integer arguments.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether a process exists and is not a zombie.
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

/// The cgroup2 path of process `pid` (the `0::` line of `/proc/<pid>/cgroup`).
pub fn cgroup_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Where the cgroup2 hierarchy is mounted, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
}

/// Whether the tests run as root (effective uid 0, as `/proc/self` is owned): a host started by
/// them then runs with isolation on. Tests of what only a root host does skip otherwise, saying so.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

/// Why the host's cgroup mode cannot run here (it needs root and a cgroup2 hierarchy where the
/// test's own cgroup can get a child), or `None` when it can. Tests of that mode skip, saying so.
pub fn cgroup_mode_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    let Some(mount) = cgroup2_mount() else {
        return Some("no cgroup2 hierarchy is mounted".into());
    };
    let own = cgroup_of(std::process::id()).unwrap_or_default();
    let probe = mount
        .join(own.trim_start_matches('/'))
        .join(format!("toru-kit-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
        Err(e) => Some(format!("cannot create {}: {e}", probe.display())),
    }
}

/// Kill whatever is left in a host's cgroup `dir` (the `toru-<instance>` cgroup it recorded), and
/// remove it: what a host killed by a test leaves (its plugins' cgroups, and any descendant that
/// outlived them). Waits up to [`WAIT`] for the processes to go; never panics.
pub fn remove_host_cgroups(dir: &Path) {
    let is_toru = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("toru-"));
    if !is_toru || !dir.join("cgroup.procs").is_file() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + WAIT;
    let populated = || {
        std::fs::read_to_string(dir.join("cgroup.events"))
            .is_ok_and(|s| s.lines().any(|l| l == "populated 1"))
    };
    while populated() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for leaf in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if leaf.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(leaf.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Poll `f` until it returns `Some`, up to [`WAIT`]; panics past it. For state that has no event to
/// wait on from outside the process (e.g. a plugin's state seen through the API); each poll is a
/// real request, and the deadline only bounds a failure.
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
