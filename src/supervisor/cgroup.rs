//! One cgroup (v2) per plugin: every process a plugin starts, however it forks, `setsid`s or
//! daemonises, stays in its cgroup, so stopping the plugin kills the cgroup and nothing escapes.
//!
//! ## Layout
//! ```text
//! <base>/                       the host's own cgroup, or `[supervisor] cgroup`
//!   toru-<instance-id>/         this host (the store's instance id: two hosts never share it);
//!     <plugin-id>/              one plugin, all generations; holds processes, nothing else
//! ```
//! A plugin joins its cgroup between fork and exec (`sys::join_cgroup_before_exec`), so it is
//! inside before its first instruction. Its cgroup is killed (`cgroup.kill`, or on kernels before
//! 5.14 frozen, each process SIGKILLed, thawed) when its process has exited, and emptied before the
//! next generation starts in it. The path of `toru-<instance-id>` is recorded in
//! `<runtime-dir>/cgroup`: a host that starts after a `kill -9` kills whatever the previous run
//! left in it (read from the record, so a changed instance id does not hide it) before any plugin
//! starts. A clean stop removes the cgroups and the record.
//!
//! Limits (the isolation work) go into the same `<plugin-id>` cgroups: only leaves hold
//! processes, so `toru-<instance-id>` may enable controllers in its `cgroup.subtree_control`; the
//! base must enable them too, which (cgroup v2's "no internal processes" rule) means the host then
//! moves itself out of the base into a leaf of its own, unless the base is the root cgroup.
//!
//! Usable where the host may create cgroups in the cgroup2 hierarchy: as root, or in a cgroup
//! delegated to its user (systemd `Delegate=yes`). Callers: `supervisor::descendants`.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// The file in the runtime dir that names the instance cgroup while the host runs.
pub(crate) const RECORD: &str = "cgroup";
/// Prefix of an instance cgroup's name; a recorded path without it is never touched.
const INSTANCE_PREFIX: &str = "toru-";

/// Why no cgroup could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system is mounted")]
    NoHierarchy,
    /// The host's own cgroup is not known (no `0::` line in `/proc/self/cgroup`, or outside the
    /// mount).
    #[error("the host's own cgroup2 cgroup cannot be found")]
    NoOwnCgroup,
    /// The configured base is not a cgroup2 directory.
    #[error("{0} is not a directory of the cgroup2 hierarchy")]
    NotCgroup(PathBuf),
    /// A cgroup could not be created or used.
    #[error("cannot use the cgroup {path}")]
    Io {
        /// The cgroup directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup2 mount point and the root of the hierarchy it shows, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let mount = f.next()?;
        Some((PathBuf::from(unescape(mount)), unescape(root)))
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup2 path from `/proc/self/cgroup` (the `0::` line).
fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The directory of the host's own cgroup.
fn own_dir() -> Result<PathBuf, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (mount, root) = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoHierarchy)?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own = own_cgroup(&cgroups).ok_or(CgroupError::NoOwnCgroup)?;
    // The mount shows the hierarchy from `root` down; our path is relative to the hierarchy's root.
    let rel = if root == "/" {
        own
    } else {
        own.strip_prefix(root.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or(CgroupError::NoOwnCgroup)?
    };
    Ok(mount.join(rel.trim_start_matches('/')))
}

fn is_cgroup_dir(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file()
}

/// This host's cgroup, `<base>/toru-<instance-id>`, holding one cgroup per plugin.
#[derive(Debug)]
pub(crate) struct CgroupTree {
    dir: PathBuf,
}

impl CgroupTree {
    /// Make (or reuse) `<base>/toru-<instance>` and check that processes can be moved into it.
    /// `base`: the configured cgroup (made if missing, in an existing cgroup), else the host's own.
    pub(crate) fn create(base: Option<&Path>, instance: &str) -> Result<CgroupTree, CgroupError> {
        let base = match base {
            Some(b) => b.to_path_buf(),
            None => own_dir()?,
        };
        if !base.exists() && base.parent().is_some_and(is_cgroup_dir) {
            std::fs::create_dir(&base).map_err(io_at(&base))?;
        }
        if !is_cgroup_dir(&base) {
            return Err(CgroupError::NotCgroup(base));
        }
        let dir = base.join(format!("{INSTANCE_PREFIX}{instance}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(&dir)(e)),
        }
        // Moving a spawned plugin from the host's cgroup into its own needs write access to
        // `cgroup.procs` of the destination and of the common ancestor (the base, when it is the
        // host's own cgroup): opening them for writing checks both without moving anything.
        for procs in [dir.join("cgroup.procs"), base.join("cgroup.procs")] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(io_at(&procs))?;
        }
        Ok(CgroupTree { dir })
    }

    /// The instance cgroup's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup of plugin `id` (see [`PluginCgroup::create`]).
    pub(crate) fn plugin(&self, id: &str) -> PluginCgroup {
        PluginCgroup {
            dir: self.dir.join(id),
        }
    }

    /// Record this tree's path in `runtime_dir`, after reading what a previous run recorded there
    /// (see [`recorded`]) unless it is this tree.
    pub(crate) fn record(&self, runtime_dir: &Path) -> Option<PathBuf> {
        let previous = recorded(runtime_dir, Some(&self.dir));
        let file = runtime_dir.join(RECORD);
        let line = [self.dir.as_os_str().as_encoded_bytes(), b"\n"].concat();
        if let Err(e) = std::fs::write(&file, line) {
            log::warn!("cannot write {}: {e}", file.display());
        }
        previous
    }

    /// Kill every process in `dir` (an instance cgroup, this one or a previous run's) and its
    /// plugin cgroups, wait up to `limit` for them to go, and remove the plugin cgroups (and
    /// `dir` itself unless `keep_dir`). Returns how many processes were found.
    pub(crate) async fn clear(dir: &Path, keep_dir: bool, limit: Duration) -> usize {
        let leaves: Vec<PluginCgroup> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| PluginCgroup { dir: e.path() })
            .collect();
        let whole = PluginCgroup {
            dir: dir.to_path_buf(),
        };
        let found = leaves.iter().map(|l| l.pids().len()).sum::<usize>() + whole.pids().len();
        if found > 0 {
            whole.kill();
            if !whole.wait_empty(limit).await {
                log::warn!(
                    "processes in {} survived SIGKILL for {} ms",
                    dir.display(),
                    limit.as_millis()
                );
            }
        }
        for leaf in &leaves {
            leaf.remove();
        }
        if !keep_dir {
            whole.remove();
        }
        found
    }
}

/// The instance cgroup recorded in `runtime_dir`, if the record names one that looks like it (an
/// absolute `toru-…` directory of a cgroup hierarchy) and is not `except`.
pub(crate) fn recorded(runtime_dir: &Path, except: Option<&Path>) -> Option<PathBuf> {
    std::fs::read_to_string(runtime_dir.join(RECORD))
        .ok()
        .map(|s| PathBuf::from(s.trim_end_matches('\n')))
        .filter(|p| {
            p.is_absolute()
                && Some(p.as_path()) != except
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(INSTANCE_PREFIX))
                && is_cgroup_dir(p)
        })
}

/// One plugin's cgroup.
#[derive(Debug, Clone)]
pub(crate) struct PluginCgroup {
    dir: PathBuf,
}

impl PluginCgroup {
    /// Create it if it does not exist yet.
    pub(crate) fn create(&self) -> io::Result<()> {
        match std::fs::create_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Its `cgroup.procs`, for a spawn to join (`sys::join_cgroup_before_exec`).
    pub(crate) fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The processes in it (and, for an instance cgroup, none of its children's).
    pub(crate) fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.procs_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether a process is in it or in a cgroup below it (`cgroup.events`: `populated 1`).
    pub(crate) fn is_populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Send `sig` to every process in it.
    pub(crate) fn signal(&self, sig: libc::c_int) {
        for pid in self.pids() {
            crate::sys::signal_process(pid, sig);
        }
    }

    /// SIGKILL everything in it and below: `cgroup.kill` (Linux 5.14), else freeze, kill each
    /// process listed, thaw (a frozen process cannot fork meanwhile; a fatal signal still ends it).
    pub(crate) fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let freeze = self.dir.join("cgroup.freeze");
        let frozen = std::fs::write(&freeze, "1").is_ok();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let cg = PluginCgroup { dir };
            cg.signal(libc::SIGKILL);
            stack.extend(
                std::fs::read_dir(&cg.dir)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        if frozen {
            let _ = std::fs::write(&freeze, "0");
        }
    }

    /// Wait until no process is left in it, up to `limit`; whether it is empty. Woken by
    /// `cgroup.events`, whose change the kernel reports as a modification (inotify); where no watch
    /// can be set, rechecked on a short doubling timer.
    pub(crate) async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let watch = EventsWatch::new(&self.dir.join("cgroup.events")).ok();
        let mut pause = Duration::from_millis(1);
        loop {
            if !self.is_populated() {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            match &watch {
                Some(w) => {
                    if tokio::time::timeout_at(deadline, w.changed())
                        .await
                        .is_err()
                    {
                        return !self.is_populated();
                    }
                }
                None => {
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Remove it (it must be empty; a cgroup still populated stays, and is reused or cleared by
    /// the next start).
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("cannot remove the cgroup {}: {e}", self.dir.display());
        }
    }
}

/// An inotify watch on one `cgroup.events` file.
struct EventsWatch {
    fd: AsyncFd<std::fs::File>,
}

impl EventsWatch {
    fn new(file: &Path) -> io::Result<EventsWatch> {
        let fd: OwnedFd = crate::sys::inotify_init()?;
        crate::sys::inotify_add_watch(fd.as_fd(), file, libc::IN_MODIFY)?;
        Ok(EventsWatch {
            fd: crate::sys::register_async(std::fs::File::from(fd))?,
        })
    }

    /// Resolve at the next modification (events are drained; their content does not matter).
    async fn changed(&self) {
        let mut buf = [0u8; 1024];
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            match self.fd.get_ref().read(&mut buf) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return std::future::pending().await,
            }
        }
    }
}

impl std::fmt::Debug for EventsWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventsWatch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let hybrid = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_string()))
        );
        let spaced = "26 25 0:24 /sub /mnt/my\\040cgroups rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mount(spaced),
            Some((PathBuf::from("/mnt/my cgroups"), "/sub".to_string()))
        );
        assert_eq!(cgroup2_mount("27 25 0:25 / /x rw - cgroup cgroup rw"), None);
    }

    #[test]
    fn the_own_cgroup_is_the_unified_line() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/toru.service\n";
        assert_eq!(own_cgroup(hybrid), Some("/system.slice/toru.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }
}
