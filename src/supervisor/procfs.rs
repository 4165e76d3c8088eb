//! Reading `/proc`: a process's parent, process group, session and start time, and one variable
//! of its environment. What the subreaper (`supervisor::subreaper`) needs to tell whose a process
//! is. Reads only, keeps no state, never signals.
//!
//! The host never reads its own entry: under qemu-user `/proc/self/stat` describes the emulator's
//! view, not the kernel's; the host's own session and group come from `sys` instead.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// What `/proc/<pid>/stat` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    /// The process.
    pub pid: u32,
    /// Its parent (after any reparenting).
    pub ppid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its session.
    pub sid: u32,
    /// When it started, in clock ticks since boot: with the pid, names one process for good
    /// (a pid is reused only by a process that starts later).
    pub start: u64,
    /// Exited, waiting to be reaped by its parent.
    pub zombie: bool,
}

/// Parse the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcInfo> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields 3 (state), 4 (ppid), 5 (pgrp), 6 (session) … 22 (starttime), counted from 1.
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcInfo {
        pid,
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        sid: field(6)?.parse().ok()?,
        start: field(22)?.parse().ok()?,
        zombie: field(3)? == "Z",
    })
}

/// One process, or `None` when it is gone (or its entry cannot be read).
pub(crate) fn read(pid: u32) -> Option<ProcInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Every process but the caller, as far as it can be read (processes come and go meanwhile).
pub(crate) fn all() -> Vec<ProcInfo> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(read)
        .collect()
}

/// Whether `pid` still names the process that started at `start` and has not exited.
pub(crate) fn is_running(pid: u32, start: u64) -> bool {
    read(pid).is_some_and(|p| p.start == start && !p.zombie)
}

/// The value of `name` in the environment `pid` was started with (`/proc/<pid>/environ`: what
/// it was given at exec, not later changes). `None` when unset or unreadable.
pub(crate) fn env_var(pid: u32, name: &str) -> Option<OsString> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    find_var(&raw, name)
}

fn find_var(environ: &[u8], name: &str) -> Option<OsString> {
    environ.split(|b| *b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(OsString::from_vec(value.to_vec()))
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): pids and start times recorded under another
/// boot name nothing running now.
pub(crate) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (a) b (c)) S 1 4242 4240 0 -1 4194560 99 0 0 0 1 2 0 0 20 0 1 0 777 1 2";
        assert_eq!(
            parse_stat(text),
            Some(ProcInfo {
                pid: 4242,
                ppid: 1,
                pgid: 4242,
                sid: 4240,
                start: 777,
                zombie: false,
            })
        );
        let zombie = "7 (z) Z 6 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert!(parse_stat(zombie).unwrap().zombie);
        assert_eq!(parse_stat("7 (cut) S 1 2"), None);
    }

    #[test]
    fn our_parent_is_readable_and_running() {
        let parent = std::os::unix::process::parent_id();
        let p = read(parent).expect("our parent's entry");
        assert!(is_running(parent, p.start));
        assert!(
            !is_running(parent, p.start + 1),
            "another start is another process"
        );
    }

    #[test]
    fn environment_variables_are_found_by_exact_name() {
        let env = b"PATH=/bin\0TORU_PLUGIN_SOCKET=/run/toru/plugins/a.sock\0TORU=x\0";
        assert_eq!(
            find_var(env, "TORU_PLUGIN_SOCKET"),
            Some("/run/toru/plugins/a.sock".into())
        );
        assert_eq!(find_var(env, "TORU"), Some("x".into()));
        assert_eq!(find_var(env, "TORU_PLUGIN"), None);
    }
}
