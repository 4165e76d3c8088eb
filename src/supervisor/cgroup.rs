//! One cgroup (v2) per plugin: every process a plugin starts, however it forks, `setsid`s or
//! daemonises, stays in its cgroup, so stopping the plugin kills the cgroup and nothing escapes;
//! and the plugin's memory, process and CPU limits, set on that cgroup, with a watch that tells
//! when the kernel enforced one.
//!
//! ## Layout
//! ```text
//! <base>/                       the host's own cgroup, or `[supervisor] cgroup`
//!   host/                       the host itself, when it had to leave <base> (below)
//!   toru-<instance-id>/         this host (the store's instance id: two hosts never share it);
//!     <plugin-id>/              one plugin, one generation at a time; holds processes, nothing else
//! ```
//! A plugin joins its cgroup between fork and exec (`sys::join_cgroup_before_exec`), so it is
//! inside before its first instruction. Its cgroup is killed (`cgroup.kill`, or on kernels before
//! 5.14 frozen, each process SIGKILLed, thawed) when its process has exited, and emptied and made
//! anew before the next generation starts in it (so its counters and peaks are that generation's).
//! The path of `toru-<instance-id>` is recorded in `<runtime-dir>/cgroup`: a host that starts
//! after a `kill -9` kills whatever the previous run left in it (read from the record, so a
//! changed instance id does not hide it) before any plugin starts. A clean stop removes the
//! plugin and instance cgroups and the record.
//!
//! ## Limits
//! The `memory`, `pids` and `cpu` controllers (those of them in `<base>/cgroup.controllers`) are
//! enabled in `<base>/cgroup.subtree_control` and `toru-<instance-id>/cgroup.subtree_control`
//! when the tree is made, so every `<plugin-id>` cgroup has `memory.max`, `pids.max`, `cpu.max`.
//! cgroup v2 lets a cgroup other than the root enable controllers for its children only while it
//! holds no process itself, so when `<base>` is the host's own cgroup (systemd's `Delegate=yes`)
//! and not the root cgroup, the host first moves itself — the whole process, every thread: it
//! writes `0` to `cgroup.procs` — into the leaf `<base>/host`. That leaf stays after a clean stop
//! (the host is in it until it exits; systemd removes it with the unit's cgroup). It is not a
//! `toru-` cgroup, so clearing leftovers never touches it. A controller that cannot be enabled
//! (absent from cgroup2 because a cgroup v1 hierarchy holds it, not delegated, refused) only
//! turns its limit off: [`LimitSupport`] says which and why; tracking descendants still works.
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

/// The controllers plugin limits use, in the order they are enabled.
const LIMIT_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The leaf of `<base>` the host moves itself into before enabling controllers there.
pub(crate) const HOST_LEAF: &str = "host";
/// `cpu.max`'s period when no quota is set (the kernel's default), in µs.
const CPU_PERIOD_DEFAULT_US: u64 = 100_000;

/// What one plugin's cgroup limits it to; `None`: unlimited (written as `max`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    /// `memory.max`, bytes (swap is always 0 for a limited cgroup: `memory.swap.max`).
    pub memory_max: Option<u64>,
    /// `pids.max`: processes and threads.
    pub pids_max: Option<u64>,
    /// `cpu.max`: (quota µs, period µs), the CPU time it may use in each period.
    pub cpu_max: Option<(u64, u64)>,
}

/// A limit the kernel enforced on a plugin's cgroup, with the figures of that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The OOM killer killed processes of it (`memory.events` `oom_kill` went up; with
    /// `memory.oom.group` the whole cgroup goes).
    Oom {
        /// `memory.max`; `None`: unlimited (the kill came from a limit above, or the system's).
        limit_bytes: Option<u64>,
        /// `memory.peak` (Linux 5.19+), else `None`.
        peak_bytes: Option<u64>,
        /// How many processes were killed since the watch last reported (at least 1).
        kills: u64,
    },
    /// A fork was refused at its `pids.max` (`pids.events` `max` went up).
    Pids {
        /// `pids.max` (only hits under a finite limit of its own are reported).
        limit: u64,
        /// `pids.peak` (Linux 6.1+), else `None`.
        peak: Option<u64>,
    },
}

/// Which limits the plugin cgroups can enforce, and, when one cannot, why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LimitSupport {
    /// `memory.max` (and `memory.swap.max`, `memory.oom.group`).
    pub memory: bool,
    /// `pids.max`.
    pub pids: bool,
    /// `cpu.max`.
    pub cpu: bool,
    /// Why some (or all) are off: "no cgroup: …", "the cpu controller is not in cgroup2 …";
    /// `None` when all three are on.
    pub reason: Option<String>,
}

impl LimitSupport {
    /// No limits at all, because of `why`.
    pub(crate) fn none(why: String) -> LimitSupport {
        LimitSupport {
            reason: Some(why),
            ..LimitSupport::default()
        }
    }

    fn from_enabled(enabled: &[String], reason: Option<String>) -> LimitSupport {
        let on = |c: &str| enabled.iter().any(|e| e == c);
        LimitSupport {
            memory: on("memory"),
            pids: on("pids"),
            cpu: on("cpu"),
            reason,
        }
    }
}

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
    limits: LimitSupport,
}

impl CgroupTree {
    /// Make (or reuse) `<base>/toru-<instance>`, check that processes can be moved into it, and
    /// enable the limit controllers for the plugin cgroups (see the module doc; not being able to
    /// is no error, [`CgroupTree::limit_support`] says why). `base`: the configured cgroup (made
    /// if missing, in an existing cgroup), else the host's own.
    pub(crate) fn create(base: Option<&Path>, instance: &str) -> Result<CgroupTree, CgroupError> {
        CgroupTree::create_with(base, instance, &LIMIT_CONTROLLERS)
    }

    /// [`CgroupTree::create`], enabling `controllers` (tests use one this machine has).
    fn create_with(
        base: Option<&Path>,
        instance: &str,
        controllers: &[&str],
    ) -> Result<CgroupTree, CgroupError> {
        let (base, own) = match base {
            Some(b) => (b.to_path_buf(), own_dir().is_ok_and(|o| o == b)),
            None => (own_dir()?, true),
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
        // host's own cgroup, or the host's leaf in it): opening them for writing checks both
        // without moving anything.
        for procs in [dir.join("cgroup.procs"), base.join("cgroup.procs")] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(io_at(&procs))?;
        }
        let (enabled, reason) = enable_controllers(&base, &dir, own, controllers);
        let limits = LimitSupport::from_enabled(&enabled, reason);
        Ok(CgroupTree { dir, limits })
    }

    /// Which limits the plugin cgroups enforce (decided when the tree was made).
    pub(crate) fn limit_support(&self) -> &LimitSupport {
        &self.limits
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

/// The controllers named in a `cgroup.controllers` or `cgroup.subtree_control` file.
fn controllers_in(file: &Path) -> io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(file)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// "the memory controller", "the memory and cpu controllers", "the memory, pids and cpu …".
fn controllers_phrase(names: &[&str]) -> String {
    match names {
        [one] => format!("the {one} controller"),
        [init @ .., last] => format!("the {} and {last} controllers", init.join(", ")),
        [] => "no controller".to_string(),
    }
}

/// Whether `dir` is the root of the cgroup2 hierarchy (the only cgroup that may hold processes
/// and enable controllers for its children at once; only it lacks `cgroup.type`).
fn is_root_cgroup(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

/// Enable `wanted` (those `base` offers) in `base`'s and `dir`'s `cgroup.subtree_control`,
/// moving the host out of `base` into `base/host` first when `own` (`base` is the host's own
/// cgroup) and it is not the root cgroup. Returns the controllers enabled in `dir`'s subtree, and
/// why any of `wanted` is not.
fn enable_controllers(
    base: &Path,
    dir: &Path,
    own: bool,
    wanted: &[&str],
) -> (Vec<String>, Option<String>) {
    let mut why: Vec<String> = Vec::new();
    let offered_file = base.join("cgroup.controllers");
    let offered = match controllers_in(&offered_file) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot read {}: {e}", offered_file.display());
            return (Vec::new(), Some(why));
        }
    };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !offered.iter().any(|o| o == w))
        .collect();
    if !missing.is_empty() {
        let one = missing.len() == 1;
        why.push(format!(
            "{} {} not in cgroup2 ({} has {}: a cgroup v1 hierarchy may hold {}, or {} not \
             delegated)",
            controllers_phrase(&missing),
            if one { "is" } else { "are" },
            offered_file.display(),
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(" ")
            },
            if one { "it" } else { "them" },
            if one { "it is" } else { "they are" },
        ));
    }
    let usable: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !missing.contains(w))
        .collect();
    let base_control = base.join("cgroup.subtree_control");
    let already = controllers_in(&base_control).unwrap_or_default();
    let to_enable: Vec<&str> = usable
        .iter()
        .copied()
        .filter(|u| !already.iter().any(|a| a == u))
        .collect();
    if !to_enable.is_empty() {
        let moved = own && !is_root_cgroup(base);
        if moved && let Err(e) = move_host_to_leaf(base) {
            why.push(e);
            return (Vec::new(), Some(why.join("; ")));
        }
        for c in &to_enable {
            if let Err(e) = std::fs::write(&base_control, format!("+{c}")) {
                why.push(format!(
                    "cannot enable the {c} controller in {}: {e}",
                    base_control.display()
                ));
            }
        }
        let now = controllers_in(&base_control).unwrap_or_default();
        if moved && !usable.iter().any(|u| now.iter().any(|n| n == u)) {
            // The move bought nothing: go back, leave no empty leaf behind.
            move_host_back(base);
        }
    }
    let base_now = controllers_in(&base_control).unwrap_or_default();
    let dir_control = dir.join("cgroup.subtree_control");
    let dir_already = controllers_in(&dir_control).unwrap_or_default();
    for c in &usable {
        if base_now.iter().any(|b| b == c)
            && !dir_already.iter().any(|d| d == c)
            && let Err(e) = std::fs::write(&dir_control, format!("+{c}"))
        {
            why.push(format!(
                "cannot enable the {c} controller in {}: {e}",
                dir_control.display()
            ));
        }
    }
    let enabled: Vec<String> = controllers_in(&dir_control)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| wanted.contains(&c.as_str()))
        .collect();
    let all_on = wanted.iter().all(|w| enabled.iter().any(|e| e == w));
    if !all_on && why.is_empty() {
        why.push(format!(
            "not all of {} are enabled in {}",
            wanted.join(" "),
            dir.display()
        ));
    }
    (enabled, (!all_on).then(|| why.join("; ")))
}

/// Move the whole host process (every thread) into `base/host`: writing `0` to a cgroup's
/// `cgroup.procs` moves the writer's thread group.
fn move_host_to_leaf(base: &Path) -> Result<(), String> {
    let leaf = base.join(HOST_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    let procs = leaf.join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(|e| {
        let _ = std::fs::remove_dir(&leaf);
        format!("cannot move the host into {}: {e}", leaf.display())
    })?;
    log::debug!(
        "the host moved into {} to enable controllers",
        leaf.display()
    );
    Ok(())
}

/// Undo [`move_host_to_leaf`] (best effort).
fn move_host_back(base: &Path) {
    let procs = base.join("cgroup.procs");
    if let Err(e) = std::fs::write(&procs, "0") {
        log::warn!("cannot move the host back into {}: {e}", base.display());
        return;
    }
    let _ = std::fs::remove_dir(base.join(HOST_LEAF));
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

    /// Write `limits` into it, for the controllers `support` says are enabled: `memory.max`,
    /// `memory.swap.max` 0 (where swap is accounted), `memory.oom.group` 1 (an OOM kill takes the
    /// whole plugin, not one random process of it), `pids.max`, `cpu.max`. `None` writes `max`
    /// (the cgroup may have held a limit before). An error names the file.
    pub(crate) fn set_limits(
        &self,
        limits: &CgroupLimits,
        support: &LimitSupport,
    ) -> io::Result<()> {
        let max = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |v| v.to_string());
        if support.memory {
            self.write("memory.max", &max(limits.memory_max))?;
            if self.dir.join("memory.swap.max").exists() {
                self.write("memory.swap.max", "0")?;
            }
            self.write("memory.oom.group", "1")?;
        }
        if support.pids {
            self.write("pids.max", &max(limits.pids_max))?;
        }
        if support.cpu {
            let value = match limits.cpu_max {
                Some((quota, period)) => format!("{quota} {period}"),
                None => format!("max {CPU_PERIOD_DEFAULT_US}"),
            };
            self.write("cpu.max", &value)?;
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write {value:?} to {}: {e}", path.display()),
            )
        })
    }

    /// A watch for the limits the kernel enforces on it (see [`LimitWatch`]).
    pub(crate) fn limit_watch(&self) -> io::Result<LimitWatch> {
        LimitWatch::new(&self.dir)
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

/// An inotify watch on `*.events` files of cgroups (the kernel reports their changes as
/// modifications).
struct EventsWatch {
    fd: AsyncFd<std::fs::File>,
}

impl EventsWatch {
    fn new(file: &Path) -> io::Result<EventsWatch> {
        EventsWatch::on(&[file])
    }

    /// One watch on several files: it resolves when any of them changes.
    fn on(files: &[&Path]) -> io::Result<EventsWatch> {
        let fd: OwnedFd = crate::sys::inotify_init()?;
        for file in files {
            crate::sys::inotify_add_watch(fd.as_fd(), file, libc::IN_MODIFY)?;
        }
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

/// Waits for the kernel to enforce a limit on one plugin cgroup: an OOM kill (`memory.events`
/// `oom_kill`) or a refused fork (`pids.events` `max`), counted from the values seen when the
/// watch was made. Woken by inotify on those files (no polling); watches only the files the
/// enabled controllers provide, and never resolves when there are none. Make it after the cgroup
/// is (re)made for a generation and before that generation's process starts.
pub(crate) struct LimitWatch {
    dir: PathBuf,
    /// `None`: neither file exists (no controller to watch).
    watch: Option<EventsWatch>,
    oom_kills: u64,
    fork_refusals: u64,
}

impl LimitWatch {
    fn new(dir: &Path) -> io::Result<LimitWatch> {
        let files: Vec<PathBuf> = ["memory.events", "pids.events"]
            .iter()
            .map(|f| dir.join(f))
            .filter(|f| f.is_file())
            .collect();
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        // The watch is set before the counters are read: a change in between wakes `next`.
        let watch = if refs.is_empty() {
            None
        } else {
            Some(EventsWatch::on(&refs)?)
        };
        let mut w = LimitWatch {
            dir: dir.to_path_buf(),
            watch,
            oom_kills: 0,
            fork_refusals: 0,
        };
        (w.oom_kills, w.fork_refusals) = w.counters();
        Ok(w)
    }

    /// The next limit the kernel enforced. Cancel safe: what it reports is taken as seen only
    /// when it returns.
    pub(crate) async fn next(&mut self) -> LimitHit {
        loop {
            if let Some(hit) = self.check() {
                return hit;
            }
            match &self.watch {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        }
    }

    /// (`oom_kill`, `max`) now; a missing file or line counts 0.
    fn counters(&self) -> (u64, u64) {
        let count = |file: &str, key: &str| {
            std::fs::read_to_string(self.dir.join(file))
                .ok()
                .and_then(|s| event_count(&s, key))
                .unwrap_or(0)
        };
        (
            count("memory.events", "oom_kill"),
            count("pids.events", "max"),
        )
    }

    /// A hit since the last look, if any (taken as seen).
    fn check(&mut self) -> Option<LimitHit> {
        let (oom_kills, fork_refusals) = self.counters();
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).ok();
        if oom_kills > self.oom_kills {
            let kills = oom_kills - self.oom_kills;
            self.oom_kills = oom_kills;
            return Some(LimitHit::Oom {
                limit_bytes: read("memory.max").and_then(|s| parse_limit(&s)).flatten(),
                peak_bytes: read("memory.peak").and_then(|s| s.trim().parse().ok()),
                kills,
            });
        }
        if fork_refusals > self.fork_refusals {
            self.fork_refusals = fork_refusals;
            // A refusal under an unlimited `pids.max` was a limit above this cgroup (the host's
            // own, e.g. systemd's TasksMax): not this plugin's limit, not reported.
            if let Some(limit) = read("pids.max").and_then(|s| parse_limit(&s)).flatten() {
                return Some(LimitHit::Pids {
                    limit,
                    peak: read("pids.peak").and_then(|s| s.trim().parse().ok()),
                });
            }
        }
        None
    }
}

impl std::fmt::Debug for LimitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitWatch")
            .field("dir", &self.dir)
            .field("oom_kills", &self.oom_kills)
            .field("fork_refusals", &self.fork_refusals)
            .finish_non_exhaustive()
    }
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`: `oom_kill 3`).
fn event_count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A `*.max` file's value: `Some(None)` for `max` (unlimited), `Some(Some(n))` for a number.
fn parse_limit(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
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

    #[test]
    fn flat_keyed_counters_and_max_files_parse() {
        let memory_events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(event_count(memory_events, "oom_kill"), Some(2));
        assert_eq!(event_count(memory_events, "oom"), Some(3));
        assert_eq!(event_count(memory_events, "max"), Some(12));
        assert_eq!(event_count("max 7\n", "max"), Some(7));
        assert_eq!(event_count("max.imposed 4\nmax 7\n", "max"), Some(7));
        assert_eq!(event_count("populated 1\n", "oom_kill"), None);
        assert_eq!(parse_limit("max\n"), Some(None));
        assert_eq!(parse_limit("268435456\n"), Some(Some(268_435_456)));
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn missing_controllers_are_named_in_the_reason() {
        assert_eq!(controllers_phrase(&["cpu"]), "the cpu controller");
        assert_eq!(
            controllers_phrase(&["memory", "pids", "cpu"]),
            "the memory, pids and cpu controllers"
        );
        // A base whose cgroup2 offers none of them (this machine's v1 hybrid): nothing is
        // written, nothing moves, and the reason says which and where.
        let base = toru_test_kit::TempDir::new("cgfake").unwrap();
        std::fs::write(base.join("cgroup.controllers"), "hugetlb\n").unwrap();
        std::fs::write(base.join("cgroup.subtree_control"), "").unwrap();
        let dir = base.join("toru-x");
        std::fs::create_dir(&dir).unwrap();
        let (enabled, why) = enable_controllers(&base.0, &dir, true, &LIMIT_CONTROLLERS);
        assert!(enabled.is_empty());
        let why = why.unwrap();
        assert!(
            why.starts_with("the memory, pids and cpu controllers are not in cgroup2")
                && why.contains("has hugetlb"),
            "{why}"
        );
        assert!(!base.join(HOST_LEAF).exists());
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            ""
        );
        let support = LimitSupport::from_enabled(&enabled, Some(why));
        assert!(!support.memory && !support.pids && !support.cpu);
    }

    #[test]
    fn limits_are_written_for_the_enabled_controllers_only() {
        let d = toru_test_kit::TempDir::new("cglim").unwrap();
        let cg = PluginCgroup { dir: d.0.clone() };
        std::fs::write(d.join("memory.swap.max"), "max\n").unwrap();
        let all = LimitSupport::from_enabled(&["memory".into(), "pids".into(), "cpu".into()], None);
        let limits = CgroupLimits {
            memory_max: Some(256 << 20),
            pids_max: Some(64),
            cpu_max: Some((50_000, 100_000)),
        };
        cg.set_limits(&limits, &all).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.max"), "50000 100000");
        // Unlimited is written as `max`: a limit of an earlier generation does not stay.
        cg.set_limits(&CgroupLimits::default(), &all).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("pids.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");

        // Only pids enabled; no swap accounting: nothing else is touched.
        let d = toru_test_kit::TempDir::new("cglim2").unwrap();
        let cg = PluginCgroup { dir: d.0.clone() };
        let pids = LimitSupport::from_enabled(&["pids".into()], Some("why".into()));
        cg.set_limits(&limits, &pids).unwrap();
        let names: Vec<String> = std::fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pids.max"]);

        // A file that cannot be written is an error naming it.
        let gone = PluginCgroup {
            dir: d.join("missing"),
        };
        let e = gone.set_limits(&limits, &all).unwrap_err();
        assert!(e.to_string().contains("missing/memory.max"), "{e}");
    }

    /// Resolve `w.next()` (bounded, so a missed wake-up fails instead of hanging).
    async fn next_hit(w: &mut LimitWatch) -> LimitHit {
        tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .expect("the watch was woken by the change")
    }

    /// Whether `w.next()` is still pending after one poll (nothing new to report).
    async fn pending(w: &mut LimitWatch) -> bool {
        tokio::select! {
            biased;
            _ = w.next() => false,
            _ = std::future::ready(()) => true,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_limit_watch_reports_new_oom_kills_and_refused_forks() {
        let d = toru_test_kit::TempDir::new("cgwatch").unwrap();
        let write = |f: &str, v: &str| std::fs::write(d.join(f), v).unwrap();
        write("memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
        write("memory.max", "268435456\n");
        write("memory.peak", "268435000\n");
        write("pids.events", "max 1\n");
        write("pids.max", "64\n");
        let mut w = PluginCgroup { dir: d.0.clone() }.limit_watch().unwrap();
        // What happened before the watch was made is not reported.
        assert!(pending(&mut w).await);
        write("memory.events", "low 0\nhigh 0\nmax 9\noom 3\noom_kill 5\n");
        assert_eq!(
            next_hit(&mut w).await,
            LimitHit::Oom {
                limit_bytes: Some(268_435_456),
                peak_bytes: Some(268_435_000),
                kills: 3
            }
        );
        assert!(pending(&mut w).await);
        write("pids.events", "max 2\n");
        // No `pids.peak` before Linux 6.1.
        assert_eq!(
            next_hit(&mut w).await,
            LimitHit::Pids {
                limit: 64,
                peak: None
            }
        );
        // A refusal with no limit of its own was a limit above it: not reported. No
        // `memory.peak` before 5.19, and an unlimited `memory.max`.
        write("pids.max", "max\n");
        write("pids.events", "max 3\n");
        assert!(pending(&mut w).await);
        std::fs::remove_file(d.join("memory.peak")).unwrap();
        write("memory.max", "max\n");
        write("memory.events", "oom_kill 6\n");
        assert_eq!(
            next_hit(&mut w).await,
            LimitHit::Oom {
                limit_bytes: None,
                peak_bytes: None,
                kills: 1
            }
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_limit_watch_without_controllers_never_resolves() {
        let d = toru_test_kit::TempDir::new("cgwatch0").unwrap();
        let mut w = PluginCgroup { dir: d.0.clone() }.limit_watch().unwrap();
        std::fs::write(d.join("pids.events"), "max 9\n").unwrap();
        assert!(pending(&mut w).await);
    }

    /// Set in the child process a real-cgroup test runs in: the base cgroup it moves into.
    const CHILD_BASE_ENV: &str = "TORU_CGTEST_BASE";
    /// Set with [`CHILD_BASE_ENV`]: the controllers the child enables (space-separated).
    const CHILD_CONTROLLERS_ENV: &str = "TORU_CGTEST_CONTROLLERS";

    /// Say that a test is skipped on the real stderr (the harness captures `eprintln!`).
    fn skip(msg: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: {msg}");
    }

    /// The cgroup2 mount and the controllers its root enables for children (of those a test can
    /// use), or why a real test cannot run here.
    fn real_cgroup2() -> Result<(PathBuf, Vec<String>), String> {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            return Err("not root".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (mount, _) = cgroup2_mount(&mountinfo).ok_or("no cgroup2 hierarchy is mounted")?;
        let control = mount.join("cgroup.subtree_control");
        let enabled =
            controllers_in(&control).map_err(|e| format!("{}: {e}", control.display()))?;
        let usable: Vec<String> = ["memory", "pids", "cpu", "hugetlb", "io"]
            .iter()
            .filter(|c| enabled.iter().any(|e| e == *c))
            .map(|c| c.to_string())
            .collect();
        if usable.is_empty() {
            let offered = controllers_in(&mount.join("cgroup.controllers")).unwrap_or_default();
            return Err(format!(
                "no controller is enabled in {} (cgroup2 offers: {}; memory, pids and cpu need \
                 a cgroup2-only host, as in the board's boot test)",
                control.display(),
                offered.join(" ")
            ));
        }
        Ok((mount, usable))
    }

    /// Kill everything in `dir` and remove it and the cgroups below it (best effort).
    fn remove_cgroup_tree(dir: &Path) {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&child.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }

    /// Run this test binary's test `name` in a child process moved into a fresh cgroup under
    /// the cgroup2 root, enabling `controllers`; its output when it passed.
    fn run_in_child_cgroup(name: &str, mount: &Path, controllers: &[String]) -> String {
        let base = mount.join(format!("toru-cgtest-{}", std::process::id()));
        remove_cgroup_tree(&base);
        std::fs::create_dir(&base).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_BASE_ENV, &base)
            .env(CHILD_CONTROLLERS_ENV, controllers.join(" "))
            .output()
            .unwrap();
        remove_cgroup_tree(&base);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the child failed:\n{text}"
        );
        assert!(!base.exists(), "{} is left", base.display());
        text
    }

    /// A host whose own cgroup is the base (as under systemd's `Delegate=yes`) moves, every
    /// thread of it, into `<base>/host` and enables the controllers for its plugins; clearing
    /// leftovers leaves it alone; and, where the kernel has them in cgroup2, a refused fork and
    /// an OOM kill in a plugin cgroup wake its limit watch with the figures.
    #[test]
    fn a_host_in_its_own_cgroup_moves_to_a_leaf_and_enables_the_limits() {
        const NAME: &str = "supervisor::cgroup::tests::a_host_in_its_own_cgroup_moves_to_a_leaf_and_enables_the_limits";
        if let Ok(base) = std::env::var(CHILD_BASE_ENV) {
            let controllers = std::env::var(CHILD_CONTROLLERS_ENV).unwrap();
            return in_child_cgroup(Path::new(&base), &controllers);
        }
        let (mount, controllers) = match real_cgroup2() {
            Ok(m) => m,
            Err(why) => return skip(&format!("the real cgroup2 part of {NAME}: {why}")),
        };
        let out = run_in_child_cgroup(NAME, &mount, &controllers);
        for part in out.lines().filter(|l| l.starts_with("skipped: ")) {
            skip(part.trim_start_matches("skipped: "));
        }
    }

    fn in_child_cgroup(base: &Path, controllers: &str) {
        let wanted: Vec<&str> = controllers.split_whitespace().collect();
        std::fs::write(base.join("cgroup.procs"), "0").unwrap();
        assert_eq!(own_dir().unwrap(), base);
        let tree = CgroupTree::create_with(None, "inst", &wanted).unwrap();
        // The whole process moved: every thread is in the leaf.
        let leaf = base.join(HOST_LEAF);
        assert_eq!(own_dir().unwrap(), leaf);
        let tasks: Vec<_> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .collect();
        assert!(
            tasks.len() > 1,
            "the test harness runs the test in a thread of its own"
        );
        for task in tasks {
            let cg = std::fs::read_to_string(task.path().join("cgroup")).unwrap();
            let rel = own_cgroup(&cg).unwrap();
            assert!(leaf.ends_with(rel.trim_start_matches('/')), "{rel}");
        }
        for c in &wanted {
            for dir in [base, tree.dir()] {
                let on = controllers_in(&dir.join("cgroup.subtree_control")).unwrap();
                assert!(
                    on.iter().any(|o| o == c),
                    "{c} in {}: {on:?}",
                    dir.display()
                );
            }
        }
        let support = tree.limit_support().clone();
        assert_eq!(support.reason, None, "everything asked for is enabled");
        let asked = |c: &str| wanted.contains(&c);
        assert_eq!(
            (support.memory, support.pids, support.cpu),
            (asked("memory"), asked("pids"), asked("cpu"))
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Clearing the instance cgroup (as at every start) does not touch the host's leaf.
        assert_eq!(
            rt.block_on(CgroupTree::clear(tree.dir(), true, Duration::from_secs(5))),
            0
        );
        assert_eq!(own_dir().unwrap(), leaf);

        // The limits, for real (needs the controllers in cgroup2).
        let run_in = |cg: &PluginCgroup, script: &str| {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.args(["-c", script]).stderr(std::process::Stdio::null());
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(cg.procs_path())
                .unwrap();
            crate::sys::join_cgroup_before_exec(&mut cmd, procs.into());
            let status = rt.block_on(async { cmd.spawn().unwrap().wait().await.unwrap() });
            assert!(!status.success(), "{script} was not stopped by the limit");
        };
        if support.pids {
            let cg = tree.plugin("forks");
            cg.create().unwrap();
            let limits = CgroupLimits {
                pids_max: Some(1),
                ..CgroupLimits::default()
            };
            cg.set_limits(&limits, &support).unwrap();
            let mut w = cg.limit_watch().unwrap();
            // The shell is the one process allowed; its fork is refused.
            run_in(&cg, "/bin/true & wait");
            let hit = rt.block_on(next_hit(&mut w));
            assert!(matches!(hit, LimitHit::Pids { limit: 1, .. }), "{hit:?}");
        } else {
            skip("real pids.max: the pids controller is not in cgroup2 here");
        }
        if support.memory {
            let cg = tree.plugin("eats");
            cg.create().unwrap();
            let limits = CgroupLimits {
                memory_max: Some(32 << 20),
                ..CgroupLimits::default()
            };
            cg.set_limits(&limits, &support).unwrap();
            assert_eq!(
                std::fs::read_to_string(cg.dir.join("memory.oom.group")).unwrap(),
                "1\n"
            );
            let mut w = cg.limit_watch().unwrap();
            // The shell keeps the whole 512 MiB of its command substitution in memory.
            run_in(
                &cg,
                "x=$(head -c 536870912 /dev/zero | tr '\\0' a); echo ${#x}",
            );
            match rt.block_on(next_hit(&mut w)) {
                LimitHit::Oom {
                    limit_bytes, kills, ..
                } => {
                    assert_eq!(limit_bytes, Some(32 << 20));
                    assert!(kills >= 1);
                }
                other => panic!("{other:?}"),
            }
        } else {
            skip("real memory.max: the memory controller is not in cgroup2 here");
        }
        if support.cpu {
            let cg = tree.plugin("spins");
            cg.create().unwrap();
            let limits = CgroupLimits {
                cpu_max: Some((50_000, 100_000)),
                ..CgroupLimits::default()
            };
            cg.set_limits(&limits, &support).unwrap();
            assert_eq!(
                std::fs::read_to_string(cg.dir.join("cpu.max")).unwrap(),
                "50000 100000\n"
            );
        } else {
            skip("real cpu.max: the cpu controller is not in cgroup2 here");
        }
        for id in ["forks", "eats", "spins"] {
            let cg = tree.plugin(id);
            if cg.dir.exists() {
                assert!(rt.block_on(cg.wait_empty(Duration::from_secs(5))));
                cg.remove();
            }
        }
        PluginCgroup {
            dir: tree.dir().to_path_buf(),
        }
        .remove();
    }
}
