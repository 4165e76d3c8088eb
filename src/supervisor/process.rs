//! Starting and signalling plugin processes, listing plugin files and spawning their
//! `--metadata` runs (which `discovery` drives).
//!
//! A plugin runs with a cleared environment (only `PATH`, `LANG`, `TORU_PLUGIN_SOCKET` and what the
//! caller adds, such as `TORU_PLUGIN_DATA`: no `NOTIFY_SOCKET` or `WATCHDOG_*` leak), stdin
//! `/dev/null`, stdout and stderr piped, in its own process group, with `PR_SET_PDEATHSIG` so it
//! dies with the host, and confined as the caller's `confine::Prepared` says (applied last before
//! exec, after the cgroup join). The group is signalled as a
//! whole, so grandchildren go with it; descendants that leave the group are found by
//! `supervisor::descendants`, which may hand [`spawn`] a cgroup to join before exec.
//!
//! Also the plugin sockets' hygiene: a socket is removed when its plugin stops, and stale ones at
//! the host's start ([`remove_socket`], [`remove_sockets`]).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use toru_plugin_api::protocol::{PluginMetadata, ProtocolVersion};

/// Largest `--metadata` output accepted.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// `PATH` given to plugins.
const PLUGIN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Attempts at exec when the binary is "text file busy" (it was being written, or another process
/// briefly inherited a write descriptor to it): a plugin copied in place just before a rescan.
const BUSY_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Open files a `--metadata` run may have (it prints a few lines and exits; an interpreter such as
/// Python needs a few dozen).
pub(crate) const METADATA_MAX_OPEN_FILES: u64 = 256;

fn is_busy(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETXTBSY)
}

/// Spawn a plugin binary listening on `socket`, with the extra environment `env`, confined as
/// `prepared` says, retrying briefly while the file is busy (each attempt re-uses `prepared`).
/// With `cgroup_procs` (a cgroup's `cgroup.procs`), the process joins that cgroup before exec.
pub(crate) async fn spawn(
    binary: &Path,
    socket: &Path,
    cgroup_procs: Option<&Path>,
    env: &[(&str, &OsStr)],
    prepared: crate::confine::Prepared,
) -> std::io::Result<Child> {
    log::debug!("{} confined: {:?}", binary.display(), prepared.report());
    let mut attempt = 1;
    loop {
        match spawn_once(binary, socket, cgroup_procs, env, &prepared) {
            Err(e) if is_busy(&e) && attempt < BUSY_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
            }
            other => return other,
        }
    }
}

fn spawn_once(
    binary: &Path,
    socket: &Path,
    cgroup_procs: Option<&Path>,
    env: &[(&str, &OsStr)],
    prepared: &crate::confine::Prepared,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", PLUGIN_PATH)
        .env("LANG", "C.UTF-8")
        .env(toru_plugin_api::protocol::SOCKET_ENV, socket)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = binary.parent() {
        cmd.current_dir(dir);
    }
    crate::sys::own_group_dying_with_parent(&mut cmd, std::process::id());
    if let Some(procs) = cgroup_procs {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(procs)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot join {}: {e}", procs.display()))
            })?;
        crate::sys::join_cgroup_before_exec(&mut cmd, procs.into());
    }
    // Last: joining the cgroup needs the rights the confinement drops.
    crate::confine::before_exec(&mut cmd, prepared);
    cmd.spawn()
}

/// Remove `path` if it is a socket (a plugin's, gone or about to be replaced); anything else there
/// is left alone.
pub(crate) fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove the socket {}: {e}", path.display());
    }
}

/// Remove every socket in `dir` (the plugin sockets of a previous run, at start: no plugin runs
/// yet and the runtime dir is this host's alone). Returns how many.
pub(crate) fn remove_sockets(dir: &Path) -> usize {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_type().is_ok_and(|t| t.is_socket()) {
            remove_socket(&entry.path());
            removed += 1;
        }
    }
    removed
}

/// Send `sig` to the process group `pgid` (the plugin's pid). Missing groups are fine.
pub fn signal_group(pgid: u32, sig: libc::c_int) {
    crate::sys::signal_group(pgid, sig);
}

/// Describe an exit status: `exit code 3` or `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: &std::process::ExitStatus) -> (String, Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        (format!("exited with code {code}"), Some(code), None)
    } else if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGINT => " (SIGINT)",
            _ => "",
        };
        (format!("killed by signal {sig}{name}"), None, Some(sig))
    } else {
        ("exited".to_string(), None, None)
    }
}

/// A plugin found by discovery.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The executable.
    pub binary: PathBuf,
    /// Its metadata.
    pub metadata: PluginMetadata,
    /// The protocol to drive it with.
    pub protocol: ProtocolVersion,
}

/// Every executable `*.binary` in `dir`, sorted by name.
pub fn list_binaries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("binary") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Spawn `binary --metadata` the way discovery runs it: the plugins' clean environment (no
/// socket), stdin `/dev/null`, stdout piped, stderr discarded, in its own process group that dies
/// with the host, so that the caller can kill the run with everything it started
/// ([`signal_group`] with the child's pid), confined as `prepared` says. Retried briefly while the
/// file is busy (each attempt re-uses `prepared`).
pub(crate) async fn spawn_metadata(
    binary: &Path,
    prepared: crate::confine::Prepared,
) -> std::io::Result<Child> {
    let mut attempt = 1;
    loop {
        let mut cmd = Command::new(binary);
        cmd.arg("--metadata")
            .env_clear()
            .env("PATH", PLUGIN_PATH)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        crate::sys::own_group_dying_with_parent(&mut cmd, std::process::id());
        crate::confine::before_exec(&mut cmd, &prepared);
        match cmd.spawn() {
            Err(e) if is_busy(&e) && attempt < BUSY_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
            }
            other => return other,
        }
    }
}
