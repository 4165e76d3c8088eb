//! What one plugin gets (docs/ISOLATION.md): its user, groups, folders, network, limits and the
//! system calls lifted for it, worked out before each start from the config, the store (its
//! allocated uid, the admin's overrides) and its package's manifest; and its folders, made with
//! the right owner and modes. The plugin task (`supervisor::plugin`) turns a [`Security`] into a
//! `confine::Plan` and cgroup limits; the HTTP layer shows it.
//!
//! Root host: each plugin id has its own uid (= gid) from `[isolation] uid_min + 1 ..= uid_max`,
//! kept in the store; `uid_min` runs `--metadata`. Otherwise plugins run as the host's user and
//! isolation is reported off.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::Config;
use crate::limits::{self, Limits, Network, Permissions, Resolved};
use crate::store::{SecurityOverrides, Store};

/// Why isolation is off when the host is not root.
pub(crate) const NOT_ROOT: &str = "the host does not run as root";
/// Why isolation is off when the config turns it off.
pub(crate) const DISABLED: &str = "[isolation] enabled = false in the config";
/// Processes the `--metadata` user may have at once (every run at once shares it).
const METADATA_MAX_PROCESSES: u64 = 64;
/// Most entries a change of owner walks in a plugin's data folder.
const CHOWN_MAX_ENTRIES: usize = 100_000;

/// What the host knows once, at start, to work out any plugin's [`Security`].
#[derive(Debug, Clone)]
pub(crate) struct HostIsolation {
    /// The host runs as root: plugins get their own uids.
    pub(crate) root: bool,
    /// `[isolation] enabled`.
    pub(crate) enabled: bool,
    uid_min: u32,
    uid_max: u32,
    pub(crate) landlock: bool,
    pub(crate) seccomp: bool,
    defaults: Limits,
    memory_total: u64,
    pub(crate) data_dir: PathBuf,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) packages_dir: PathBuf,
    /// Uids handed out while the store refused writes.
    temp_uids: std::rc::Rc<std::cell::RefCell<std::collections::BTreeMap<String, u32>>>,
}

/// One plugin's confinement, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Security {
    /// Runs under its own uid.
    pub(crate) isolated: bool,
    /// Why not (`None` when it does).
    pub(crate) off: Option<String>,
    /// The uid and gid it runs as.
    pub(crate) uid: u32,
    /// See `uid`.
    pub(crate) gid: u32,
    /// Supplementary groups in force: name and gid (`None`: no such group here, skipped).
    pub(crate) groups: Vec<(String, Option<u32>)>,
    /// `TORU_PLUGIN_DATA`.
    pub(crate) data_dir: PathBuf,
    /// `TMPDIR`, inside `data_dir`.
    pub(crate) tmp_dir: PathBuf,
    /// The folder of its socket.
    pub(crate) socket_dir: PathBuf,
    /// The folder of its executable.
    pub(crate) install_dir: PathBuf,
    /// Its network.
    pub(crate) network: Network,
    /// Its limits.
    pub(crate) limits: Resolved,
    /// Denied system calls lifted for it.
    pub(crate) syscalls: Vec<String>,
    /// Its manifest's `[limits]` and `[permissions]`.
    pub(crate) requested: (Option<Value>, Option<Value>),
    /// The admin's overrides.
    pub(crate) granted: SecurityOverrides,
}

/// The socket folder of plugin `id`: `<runtime-dir>/plugins/<id>`.
pub(crate) fn socket_dir(runtime_dir: &Path, id: &str) -> PathBuf {
    runtime_dir.join("plugins").join(id)
}

/// The socket of plugin `id`.
pub(crate) fn socket_path(runtime_dir: &Path, id: &str) -> PathBuf {
    socket_dir(runtime_dir, id).join("plugin.sock")
}

/// Remove the sockets a previous run left in `<runtime-dir>/plugins/*/` (and in `plugins/` itself,
/// where older builds put them). Returns how many. At start only: no plugin runs yet.
pub(crate) fn remove_stale_sockets(runtime_dir: &Path) -> usize {
    let dir = runtime_dir.join("plugins");
    let mut removed = super::process::remove_sockets(&dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                removed += super::process::remove_sockets(&entry.path());
            }
        }
    }
    removed
}

/// The data folders' parent: `<data-dir>/plugin-data`.
pub(crate) fn data_root(data_dir: &Path) -> PathBuf {
    data_dir.join("plugin-data")
}

/// `MemTotal` of `/proc/meminfo` in bytes (0 if unknown).
fn memory_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The uids `/etc/passwd` names (never handed to a plugin).
fn system_uids() -> BTreeSet<u32> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

/// The gid of group `name` in `/etc/group`.
fn group_gid(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
}

impl HostIsolation {
    /// From the config, the host's euid and the machine's memory.
    pub(crate) fn new(config: &Config) -> HostIsolation {
        HostIsolation {
            root: crate::sys::is_root(),
            enabled: config.isolation.enabled,
            uid_min: config.isolation.uid_min,
            uid_max: config.isolation.uid_max,
            landlock: config.isolation.landlock,
            seccomp: config.isolation.seccomp,
            defaults: config.limits.clone(),
            memory_total: memory_total(),
            data_dir: config.data_dir.clone(),
            runtime_dir: config.runtime_dir.clone(),
            packages_dir: config.packages_dir(),
            temp_uids: Default::default(),
        }
    }

    /// The user `--metadata` runs as (root host only).
    pub(crate) fn metadata_uid(&self) -> Option<u32> {
        self.own_uids().then_some(self.uid_min)
    }

    /// Plugins get uids of their own.
    pub(crate) fn own_uids(&self) -> bool {
        self.root && self.enabled
    }

    /// Why isolation is off, or `None` when it is on.
    pub(crate) fn off_reason(&self) -> Option<&'static str> {
        if !self.enabled {
            Some(DISABLED)
        } else if !self.root {
            Some(NOT_ROOT)
        } else {
            None
        }
    }

    /// Work out what plugin `id` (running `binary`) gets. Allocates its uid on first use.
    pub(crate) async fn resolve(
        &self,
        store: &Store,
        id: &str,
        binary: &Path,
    ) -> Result<Security, String> {
        let package = store
            .package(id)
            .map_err(|e| format!("cannot read the package record: {e}"))?;
        let manifest = package
            .as_ref()
            .and_then(|p| p.active_version())
            .map(|v| v.manifest.clone());
        let requested_limits = manifest
            .as_ref()
            .and_then(|m| m.get("limits"))
            .filter(|v| !v.is_null())
            .cloned();
        let requested_permissions = manifest
            .as_ref()
            .and_then(|m| m.get("permissions"))
            .filter(|v| !v.is_null())
            .cloned();
        let asked_limits = requested_limits
            .as_ref()
            .map(Limits::from_json)
            .transpose()
            .map_err(|e| format!("its manifest's limits: {e}"))?
            .unwrap_or_default();
        let asked = requested_permissions
            .as_ref()
            .map(Permissions::from_json)
            .transpose()
            .map_err(|e| format!("its manifest's permissions: {e}"))?;
        let granted = store
            .security_overrides(id)
            .map_err(|e| format!("cannot read its security overrides: {e}"))?;
        let admin_limits = if granted.limits.is_null() {
            Limits::default()
        } else {
            // Overrides were checked when they were written; a row this build cannot read is
            // ignored rather than keeping the plugin from starting.
            Limits::from_json(&granted.limits).unwrap_or_default()
        };
        let resolved = limits::resolve(
            &self.defaults,
            &asked_limits,
            &admin_limits,
            self.memory_total,
        );
        // In force: what the admin granted, and for a package only what it asked for.
        let in_force = |granted: &BTreeSet<String>, asked: Option<&Vec<String>>| -> Vec<String> {
            granted
                .iter()
                .filter(|g| asked.is_none_or(|a| a.contains(g)))
                .cloned()
                .collect()
        };
        let groups = in_force(&granted.groups, asked.as_ref().map(|p| &p.groups));
        let syscalls = in_force(&granted.syscalls, asked.as_ref().map(|p| &p.syscalls));
        let data_dir = data_root(&self.data_dir).join(id);
        let socket_dir = socket_dir(&self.runtime_dir, id);
        let install_dir = binary.parent().map(Path::to_path_buf).unwrap_or_default();
        // Another uid must be able to reach its files: a checkout under a private home (/root is
        // 0700) cannot give plugins uids of their own; they run as the host's user, said so.
        let blocked = [binary, data_dir.as_path(), socket_dir.as_path()]
            .into_iter()
            .find_map(unreachable_by_others);
        let off = match (self.off_reason(), &blocked) {
            (Some(why), _) => Some(why.to_string()),
            (None, Some(dir)) => Some(format!(
                "{} is not reachable by other users (mode {:o}): plugins run as the host's user",
                dir.display(),
                std::fs::metadata(dir).map_or(0, |m| m.mode() & 0o777)
            )),
            (None, None) => None,
        };
        let (isolated, uid, gid) = if off.is_none() {
            let uid = match store
                .allocate_plugin_uid(id, self.uid_min + 1, self.uid_max, system_uids())
                .await
            {
                Ok(uid) => uid,
                Err(e) => self.uid_in_memory(store, id, &e),
            }
            .ok_or_else(|| {
                format!(
                    "no uid left in isolation.uid_min..uid_max ({}..{})",
                    self.uid_min, self.uid_max
                )
            })?;
            (true, uid, uid)
        } else {
            let (uid, gid) = crate::sys::own_ids();
            (false, uid, gid)
        };
        Ok(Security {
            isolated,
            off,
            uid,
            gid,
            groups: groups
                .into_iter()
                .map(|g| {
                    let gid = group_gid(&g);
                    (g, gid)
                })
                .collect(),
            tmp_dir: data_dir.join("tmp"),
            data_dir,
            socket_dir,
            install_dir,
            network: asked.as_ref().map_or(Network::Any, |p| p.network),
            limits: resolved,
            syscalls,
            requested: (requested_limits, requested_permissions),
            granted,
        })
    }

    /// A uid for `id` while the store refuses writes (degraded, disk full): the plugin still runs
    /// under a uid of its own, kept in memory until the store takes writes again.
    fn uid_in_memory(
        &self,
        store: &Store,
        id: &str,
        why: &crate::store::StoreError,
    ) -> Option<u32> {
        let mut temp = self.temp_uids.borrow_mut();
        if let Some(uid) = temp.get(id) {
            return Some(*uid);
        }
        let mut used = system_uids();
        used.extend(store.plugin_uids().unwrap_or_default().into_values());
        used.extend(temp.values().copied());
        let uid = (self.uid_min + 1..=self.uid_max).find(|u| !used.contains(u))?;
        log::warn!("plugin {id}: uid {uid} kept in memory only: the store refused it ({why})");
        temp.insert(id.to_string(), uid);
        Some(uid)
    }

    /// What no plugin may see: the data dir (store, setup code, other plugins' folders), the
    /// runtime dir (sockets, the control socket) and the packages folder.
    fn hidden(&self) -> Vec<PathBuf> {
        vec![
            self.data_dir.clone(),
            self.runtime_dir.clone(),
            self.packages_dir.clone(),
        ]
    }

    /// Shared scratch folders a plugin may write, unless one holds a hidden path (a data dir
    /// under `/tmp`, as in tests): granting it would uncover what it holds.
    fn scratch(&self, hidden: &[PathBuf]) -> Vec<PathBuf> {
        ["/tmp", "/dev/shm"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|s| {
                let s = s.canonicalize().unwrap_or_else(|_| s.clone());
                hidden.iter().all(|h| {
                    let h = h.canonicalize().unwrap_or_else(|_| h.clone());
                    !h.starts_with(&s)
                })
            })
            .collect()
    }

    /// The confinement of one start of the plugin `sec` describes. With `cgroup_pids` (its
    /// cgroup's `pids.max` is in force) there is no `RLIMIT_NPROC`: the kernel checks the rlimit
    /// first, so the cgroup would never see (nor record) the plugin reaching its limit.
    pub(crate) fn plan(&self, sec: &Security, cgroup_pids: bool) -> crate::confine::Plan {
        let on = self.enabled;
        let hidden = self.hidden();
        let mut read_write = vec![sec.data_dir.clone(), sec.socket_dir.clone()];
        read_write.extend(self.scratch(&hidden));
        crate::confine::Plan {
            user: sec.isolated.then(|| crate::confine::Ids {
                uid: sec.uid,
                gid: sec.gid,
                groups: sec.groups.iter().filter_map(|(_, gid)| *gid).collect(),
            }),
            rlimits: crate::confine::Rlimits {
                open_files: sec.limits.open_files,
                processes: if sec.isolated && !cgroup_pids {
                    sec.limits.processes
                } else {
                    None
                },
                address_space: sec.limits.address_space,
            },
            fs: (on && self.landlock).then(|| crate::confine::FsRules {
                hidden,
                read_exec: vec![sec.install_dir.clone()],
                read_write,
            }),
            syscalls: (on && self.seccomp).then(|| crate::confine::SyscallFilter {
                allow: sec.syscalls.clone(),
            }),
            new_netns: on && sec.network == Network::None,
            parent_pid: std::process::id(),
        }
    }

    /// The cgroup limits of `sec` (applied where the controllers are there).
    pub(crate) fn cgroup_limits(&self, sec: &Security) -> super::descendants::CgroupLimits {
        const PERIOD_US: u64 = 100_000;
        super::descendants::CgroupLimits {
            memory_max: sec.limits.memory,
            pids_max: sec.limits.processes,
            // The kernel takes a quota of at least 1 ms per period.
            cpu_max: sec
                .limits
                .cpu
                .map(|cores| (((cores * PERIOD_US as f64) as u64).max(1000), PERIOD_US)),
        }
    }

    /// The confinement of a `--metadata` run of `binary`: as root the `uid_min` user, no
    /// network; nothing writable but device nodes; the same hidden folders and system calls.
    pub(crate) fn metadata_plan(&self, binary: &Path) -> crate::confine::Plan {
        let on = self.enabled;
        // Like a plugin's start: a binary other users cannot reach runs as the host's user.
        let reachable = unreachable_by_others(binary).is_none();
        crate::confine::Plan {
            user: self
                .metadata_uid()
                .filter(|_| reachable)
                .map(|uid| crate::confine::Ids {
                    uid,
                    gid: uid,
                    groups: Vec::new(),
                }),
            rlimits: crate::confine::Rlimits {
                open_files: super::process::METADATA_MAX_OPEN_FILES,
                processes: self
                    .metadata_uid()
                    .filter(|_| reachable)
                    .map(|_| METADATA_MAX_PROCESSES),
                address_space: None,
            },
            fs: (on && self.landlock).then(|| crate::confine::FsRules {
                hidden: self.hidden(),
                read_exec: binary.parent().map(Path::to_path_buf).into_iter().collect(),
                read_write: Vec::new(),
            }),
            syscalls: (on && self.seccomp)
                .then(|| crate::confine::SyscallFilter { allow: Vec::new() }),
            new_netns: self.own_uids(),
            parent_pid: std::process::id(),
        }
    }

    /// Make the host's shared folders fit for plugins under other uids: the data dir, the runtime
    /// dir and its `plugins/` traversable (0711) but not listable; `plugin-data/` the same.
    /// Not root: all private (0700). Called once at start.
    pub(crate) fn prepare_host_dirs(&self) -> io::Result<()> {
        let mode = if self.own_uids() { 0o711 } else { 0o700 };
        let root = data_root(&self.data_dir);
        for dir in [&self.data_dir, &self.runtime_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        for dir in [root, self.runtime_dir.join("plugins")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        }
        if self.own_uids() {
            // Traversable folders: whatever sits in them by name must not be readable by others
            // (the store file was created under the host's umask).
            for dir in [&self.data_dir, &self.runtime_dir] {
                for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
                    let Ok(meta) = entry.path().symlink_metadata() else {
                        continue;
                    };
                    if meta.is_file() && meta.mode() & 0o077 != 0 {
                        std::fs::set_permissions(
                            entry.path(),
                            std::fs::Permissions::from_mode(0o600),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Make `sec`'s folders (data, tmp, socket): mode 0700, owned by its uid (root host). A data
    /// folder owned by another uid (the plugin's uid changed) is handed over, entries included.
    pub(crate) fn prepare_dirs(&self, sec: &Security) -> io::Result<()> {
        let shared = if self.own_uids() { 0o711 } else { 0o700 };
        for parent in [sec.data_dir.parent(), sec.socket_dir.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(shared)
                .create(parent)?;
        }
        for dir in [&sec.data_dir, &sec.tmp_dir, &sec.socket_dir] {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            if meta.mode() & 0o777 != 0o700 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            if sec.isolated && (meta.uid() != sec.uid || meta.gid() != sec.gid) {
                chown_tree(dir, sec.uid, sec.gid)?;
            }
        }
        Ok(())
    }
}

/// The first folder on the way to `path` (its ancestors, as far as they exist) that other users
/// cannot pass (no `o+x`), or `None`.
fn unreachable_by_others(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .find(|d| {
            std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 == 0)
                // The host's own folders are made traversable before plugins start.
                && !d.ends_with("plugin-data")
                && !d.ends_with("plugins")
        })
        .map(Path::to_path_buf)
}

/// Give `dir` and everything in it to `uid:gid`, never following a symlink, at most
/// [`CHOWN_MAX_ENTRIES`] entries.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > CHOWN_MAX_ENTRIES {
            return Err(io::Error::other(format!(
                "more than {CHOWN_MAX_ENTRIES} entries in {}",
                dir.display()
            )));
        }
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

impl Security {
    /// The API's form (docs/API.md, `GET /api/plugins/{id}/security`), with what was in force
    /// at its last start (`protections`, filled in by the caller).
    pub(crate) fn to_json(&self, protections: Value) -> Value {
        json!({
            "isolation": if self.isolated { "on" } else { "off" },
            "reason": self.off,
            "user": {
                "uid": self.uid,
                "gid": self.gid,
                "groups": self.groups.iter().map(|(g, _)| g.clone()).collect::<Vec<_>>(),
                "missing_groups": self.groups.iter().filter(|(_, gid)| gid.is_none())
                    .map(|(g, _)| g.clone()).collect::<Vec<_>>(),
            },
            "folders": {
                "data": self.data_dir,
                "install": self.install_dir,
                "socket": self.socket_dir.join("plugin.sock"),
            },
            "network": self.network.as_str(),
            "limits": self.limits.to_json(),
            "protections": protections,
            "requested": {"limits": self.requested.0, "permissions": self.requested.1},
            "granted": {"groups": self.granted.groups, "syscalls": self.granted.syscalls},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_changes_owner_without_following_links() {
        let d = std::env::temp_dir().join(format!("toru-chown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("a/link")).unwrap();
        let (uid, gid) = crate::sys::own_ids();
        chown_tree(&d, uid, gid).unwrap();
        let passwd = std::fs::metadata("/etc/passwd").unwrap();
        assert_eq!(passwd.uid(), 0, "the link's target is untouched");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sockets_live_in_their_plugins_folder() {
        assert_eq!(
            socket_path(Path::new("/run/toru"), "x"),
            Path::new("/run/toru/plugins/x/plugin.sock")
        );
    }
}
