//! What one plugin process may do, and making it so between fork and exec.
//!
//! The caller (the supervisor) decides a [`Plan`] — which user, which limits, which paths, which
//! system calls, which network — and hands it to [`prepare`], in the parent: it probes the kernel,
//! builds the Landlock ruleset ([`landlock`]) and the seccomp program ([`seccomp`]), clamps the
//! limits, and says in a [`Report`] what will be in force (`enforced`), what this kernel or host
//! cannot do (`degraded`, with the reason) and what was not asked for (`off`). [`before_exec`]
//! then registers the one hook that applies it in the child (the raw calls are `sys::PreExec`'s,
//! the only `unsafe`). A missing kernel feature never fails a spawn: it is reported.
//!
//! Order in the child, and why: a network namespace first (needs root); rlimits (lowering needs no
//! rights, raising `RLIMIT_NPROC` for another uid would be refused after the switch); groups, gid,
//! uid; the parent-death signal again (a uid change clears it); `PR_SET_NO_NEW_PRIVS` (Landlock and
//! seccomp need it without `CAP_SYS_ADMIN`); Landlock; seccomp last (it refuses `unshare`).
//! Registered after the cgroup join hook, which needs root's rights.
//!
//! Nothing here knows plugins, the config or the store; the supervisor maps those onto a `Plan`.

mod landlock;
mod seccomp;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::sys;

/// What one plugin process may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The user to run as; `None`: stay the host's user.
    pub user: Option<Ids>,
    pub rlimits: Rlimits,
    /// Which paths it may read, write or not see at all; `None`: Landlock not wanted.
    pub fs: Option<FsRules>,
    /// Which denied system calls it may use anyway; `None`: no seccomp filter.
    pub syscalls: Option<SyscallFilter>,
    /// Its own empty network namespace (`network = "none"`; only effective as root).
    pub new_netns: bool,
    /// The host's pid: the parent-death signal is cleared by a uid change and armed again.
    pub parent_pid: u32,
}

impl Plan {
    /// The confinement every process gets whatever else is decided: no new privileges, no core
    /// dumps and at most `open_files` descriptors; the host's user, no Landlock, no seccomp, the
    /// host's network.
    #[cfg(test)]
    pub(crate) fn minimal(open_files: u64) -> Plan {
        Plan {
            user: None,
            rlimits: Rlimits {
                open_files,
                processes: None,
                address_space: None,
            },
            fs: None,
            syscalls: None,
            new_netns: false,
            parent_pid: std::process::id(),
        }
    }
}

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty: none).
    pub groups: Vec<u32>,
}

/// Resource limits (soft = hard, never above the host's own hard limit). `RLIMIT_CORE` is always
/// 0 and `PR_SET_NO_NEW_PRIVS` always set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rlimits {
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC`; applied only when the process gets its own user (the limit counts every
    /// process of the uid, the host's included otherwise).
    pub processes: Option<u64>,
    /// `RLIMIT_AS` in bytes; `None`: left as the host's.
    pub address_space: Option<u64>,
}

/// The paths a plugin sees. Everything not under a `hidden` path is readable and executable, `/dev`
/// is read-write (device nodes), then the grants below apply (they may lie under hidden paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FsRules {
    /// No access at all (data dir, runtime dir, packages dir, plugin-data root, …).
    pub hidden: Vec<PathBuf>,
    /// Read and execute (its install folder).
    pub read_exec: Vec<PathBuf>,
    /// Full access (its data folder, its socket folder, /tmp, /dev/shm).
    pub read_write: Vec<PathBuf>,
}

/// System calls a plugin is refused unless its permissions lift them (names as in `man 2`).
pub(crate) const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "perf_event_open",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "quotactl",
    "syslog",
    "lookup_dcookie",
    "iopl",
    "ioperm",
];

/// The seccomp filter: [`DENIED`] minus `allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyscallFilter {
    /// Names from [`DENIED`] the plugin may call; other names are ignored (and reported).
    pub allow: Vec<String>,
}

/// Whether one protection is in force, with its detail or the reason it is not. Serialised as
/// `{"state": "enforced" | "degraded" | "off", "detail": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub(crate) enum Protection {
    /// In force; what exactly.
    Enforced(String),
    /// Wanted, but this host or kernel cannot do it (or only part of it); why.
    Degraded(String),
    /// Not wanted; why.
    Off(String),
}

/// What was in force for one spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Report {
    pub user: Protection,
    pub landlock: Protection,
    pub seccomp: Protection,
    pub network: Protection,
    pub rlimits: Protection,
    pub no_new_privs: Protection,
}

impl Report {
    /// Each protection by its name, in the order the Security panel shows them.
    pub(crate) fn entries(&self) -> [(&'static str, &Protection); 6] {
        [
            ("user", &self.user),
            ("landlock", &self.landlock),
            ("seccomp", &self.seccomp),
            ("network", &self.network),
            ("rlimits", &self.rlimits),
            ("no_new_privs", &self.no_new_privs),
        ]
    }

    /// `"landlock: <why>"` for each degraded protection.
    pub(crate) fn missing(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|(name, p)| match p {
                Protection::Degraded(why) => Some(format!("{name}: {why}")),
                _ => None,
            })
            .collect()
    }
}

/// A [`Plan`] made ready for the child: the Landlock ruleset open, the seccomp program built, the
/// limits clamped. Cheap to clone and re-usable: [`before_exec`] shares the prepared steps (an
/// `Arc`) with each command it is given, so a spawn retried after `ETXTBSY` uses the same ones.
/// The ruleset descriptor is close-on-exec and closed when the last clone and command are dropped.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    report: Report,
    steps: Arc<sys::PreExec>,
}

impl Prepared {
    /// What will be in force for a process started with it.
    pub(crate) fn report(&self) -> &Report {
        &self.report
    }
}

/// Make `plan` ready (see [`Prepared`]). Never fails: what the kernel or the host cannot do is
/// left out and reported `degraded` with the reason; a grant path that cannot be opened is
/// skipped and named in the Landlock detail.
pub(crate) fn prepare(plan: Plan) -> Prepared {
    let root = sys::effective_uid() == 0;
    let caps = effective_capabilities(root);
    let can_switch_user = caps & CAP_SETUID != 0 && caps & CAP_SETGID != 0;
    let can_unshare_net = caps & CAP_SYS_ADMIN != 0;
    let hard = sys::hard_limits();

    let (ids, user) = match (plan.user, can_switch_user) {
        (Some(ids), true) => {
            let detail = format!(
                "uid {}, gid {}, groups [{}]",
                ids.uid,
                ids.gid,
                ids.groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let ids = sys::PreExecIds {
                uid: ids.uid,
                gid: ids.gid,
                groups: ids.groups,
            };
            (Some(ids), Protection::Enforced(detail))
        }
        (Some(_), false) => (
            None,
            Protection::Degraded(lacking(root, "CAP_SETUID, CAP_SETGID")),
        ),
        (None, _) if !root => (None, Protection::Off(NOT_ROOT.to_string())),
        (None, _) => (None, Protection::Off("runs as the host's user".to_string())),
    };

    let open_files = clamp(plan.rlimits.open_files, hard.open_files);
    let processes = match (&ids, plan.rlimits.processes) {
        (Some(_), Some(n)) => Some(clamp(n, hard.processes)),
        _ => None,
    };
    let address_space = plan
        .rlimits
        .address_space
        .map(|bytes| clamp(bytes, hard.address_space));
    let mut limits = vec![format!("open files {}", shown(open_files))];
    if let Some(n) = processes {
        limits.push(format!("processes {}", shown(n)));
    }
    limits.push(format!(
        "address space {}",
        address_space.map_or("unlimited".to_string(), shown)
    ));
    limits.push("no core dumps".to_string());
    let rlimits = Protection::Enforced(limits.join(", "));

    let (ruleset, landlock) = match &plan.fs {
        None => (None, Protection::Off("not requested".to_string())),
        Some(rules) => {
            let built = landlock::build(rules);
            (built.ruleset, built.protection)
        }
    };

    let (program, seccomp) = match &plan.syscalls {
        None => (None, Protection::Off("not requested".to_string())),
        Some(_) if !sys::seccomp_filters_available() => (
            None,
            Protection::Degraded("the kernel does not offer seccomp filters".to_string()),
        ),
        Some(filter) => match seccomp::build(&filter.allow) {
            None => (
                None,
                Protection::Degraded("no seccomp filter for this architecture".to_string()),
            ),
            Some(f) => {
                let mut detail = format!("{} system calls refused", f.refused.len());
                if !f.lifted.is_empty() {
                    detail.push_str(&format!("; allowed by permission: {}", f.lifted.join(", ")));
                }
                if !f.unknown.is_empty() {
                    detail.push_str(&format!(
                        "; unknown names ignored: {}",
                        f.unknown.join(", ")
                    ));
                }
                (Some(f.program), Protection::Enforced(detail))
            }
        },
    };

    let (new_netns, network) = match (plan.new_netns, can_unshare_net) {
        (true, true) => (
            true,
            Protection::Enforced("its own empty network namespace".to_string()),
        ),
        (true, false) => (
            false,
            Protection::Degraded(format!(
                "no network namespace: {}",
                lacking(root, "CAP_SYS_ADMIN")
            )),
        ),
        (false, _) => (false, Protection::Off("the host's network".to_string())),
    };

    Prepared {
        report: Report {
            user,
            landlock,
            seccomp,
            network,
            rlimits,
            no_new_privs: Protection::Enforced(
                "exec grants no privileges (setuid bits, file capabilities)".to_string(),
            ),
        },
        steps: Arc::new(sys::PreExec {
            new_netns,
            open_files,
            processes,
            address_space,
            ids,
            parent_pid: plan.parent_pid,
            landlock: ruleset,
            seccomp: program,
        }),
    }
}

/// Register the hook that applies `prepared` in `cmd`'s child between fork and exec (the order is
/// in the module doc). Register it after the cgroup join hook. `prepared` is shared, not used up.
pub(crate) fn before_exec(cmd: &mut tokio::process::Command, prepared: &Prepared) {
    sys::confine_before_exec(cmd, Arc::clone(&prepared.steps));
}

const NOT_ROOT: &str = "the host does not run as root";

// Capability bits (linux/capability.h).
const CAP_SETGID: u64 = 1 << 6;
const CAP_SETUID: u64 = 1 << 7;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// The host's effective capabilities (`CapEff:` of `/proc/self/status`): a root host started with
/// a reduced capability set (a container, a systemd `CapabilityBoundingSet=`) gets a report that
/// says so instead of spawns that fail in the child. Unreadable: all for root, none otherwise.
fn effective_capabilities(root: bool) -> u64 {
    let all = if root { u64::MAX } else { 0 };
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return all;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(all)
}

/// Why a step needing `caps` cannot be done.
fn lacking(root: bool, caps: &str) -> String {
    if root {
        format!("the host lacks {caps}")
    } else {
        NOT_ROOT.to_string()
    }
}

/// `value` as an rlimit, never above `hard` (a limit above it would be refused without root).
fn clamp(value: u64, hard: libc::rlim_t) -> libc::rlim_t {
    libc::rlim_t::try_from(value)
        .unwrap_or(libc::RLIM_INFINITY)
        .min(hard)
}

fn shown(limit: libc::rlim_t) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        limit.to_string()
    }
}

#[cfg(test)]
mod tests;
