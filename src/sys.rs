//! The host's only `unsafe` code: thin, safe wrappers over the few Linux calls the standard
//! library does not offer. Each wrapper states the invariant that makes it sound; callers never
//! write `unsafe` themselves.
//!
//! Callers: `main` (password prompt without echo: the only public item), `supervisor::process` (plugin process group,
//! parent-death signal, signalling the group, joining a cgroup before exec), `confine` (the
//! confinement steps between fork and exec — network namespace, rlimits, user, no new privileges,
//! Landlock, seccomp — and the probes behind them: Landlock ABI, seccomp filters, euid, hard
//! limits), `supervisor::watch`
//! and `supervisor::cgroup` (inotify), `supervisor::subreaper` (child subreaper, reaping, signalling
//! and awaiting single processes), `auth::password` (the argon2 buffer: `PageBuffer`). Nothing here
//! keeps state, logs or touches the environment.
//!
//! Plain `libc` rather than a wrapper crate such as `rustix`: a dozen calls do not justify a new
//! dependency in the device binary, and `libc` is already in the tree through tokio.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

/// Make `cmd`'s child, between fork and exec, the leader of a new process group and arrange for
/// the kernel to SIGKILL it when its parent dies. If `parent` (the host's pid) is already gone by
/// then, the child exits with status 1 instead of running unsupervised.
pub(crate) fn own_group_dying_with_parent(cmd: &mut tokio::process::Command, parent: u32) {
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setpgid, prctl, getppid, _exit); it allocates nothing and takes no locks
    // (`io::Error::last_os_error` only reads errno).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Everything a plugin's child does to confine itself between fork and exec, computed in the
/// parent by `confine::prepare`: every value is final and every buffer allocated, so the child only
/// makes syscalls. See [`confine_before_exec`] for the order.
pub(crate) struct PreExec {
    /// `unshare(CLONE_NEWNET)` first (only set when the host is root).
    pub(crate) new_netns: bool,
    /// `RLIMIT_NOFILE`, soft and hard (already clamped to the host's hard limit).
    pub(crate) open_files: libc::rlim_t,
    /// `RLIMIT_NPROC`, soft and hard, when set.
    pub(crate) processes: Option<libc::rlim_t>,
    /// `RLIMIT_AS`, soft and hard, when set.
    pub(crate) address_space: Option<libc::rlim_t>,
    /// The user to become (groups, then gid, then uid), when set.
    pub(crate) ids: Option<PreExecIds>,
    /// The host's pid: after the user changes, the parent-death signal is armed again (a uid
    /// change clears it) and the child exits if its parent is no longer this pid.
    pub(crate) parent_pid: u32,
    /// A Landlock ruleset (`landlock_create_ruleset`'s descriptor, close-on-exec) to enforce.
    pub(crate) landlock: Option<OwnedFd>,
    /// A classic-BPF seccomp program to install last.
    pub(crate) seccomp: Option<Vec<libc::sock_filter>>,
}

/// The ids a plugin's child takes on.
#[derive(Debug)]
pub(crate) struct PreExecIds {
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
    /// Supplementary groups (may be empty: then the child keeps none).
    pub(crate) groups: Vec<libc::gid_t>,
}

impl std::fmt::Debug for PreExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreExec")
            .field("new_netns", &self.new_netns)
            .field("open_files", &self.open_files)
            .field("processes", &self.processes)
            .field("address_space", &self.address_space)
            .field("ids", &self.ids)
            .field("parent_pid", &self.parent_pid)
            .field("landlock", &self.landlock)
            .field("seccomp_instructions", &self.seccomp.as_ref().map(Vec::len))
            .finish()
    }
}

/// `setrlimit(resource, value, value)` in the child: returns the error from the enclosing function.
macro_rules! set_limit {
    ($resource:expr, $value:expr) => {{
        let limit = libc::rlimit {
            rlim_cur: $value,
            rlim_max: $value,
        };
        if libc::setrlimit($resource, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }};
}

impl PreExec {
    /// The steps, in the child.
    ///
    /// # Safety
    /// Only between fork and exec of a single-threaded child: calls only async-signal-safe
    /// functions on values prepared by the parent, allocates nothing, takes no locks
    /// (`io::Error::last_os_error` only reads errno).
    unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY: see the function's contract; every pointer passed below points into `self` or
        // the stack and outlives the call.
        unsafe {
            if self.new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            set_limit!(libc::RLIMIT_CORE, 0);
            set_limit!(libc::RLIMIT_NOFILE, self.open_files);
            if let Some(n) = self.processes {
                set_limit!(libc::RLIMIT_NPROC, n);
            }
            if let Some(bytes) = self.address_space {
                set_limit!(libc::RLIMIT_AS, bytes);
            }
            if let Some(ids) = &self.ids {
                // The libc wrappers rather than raw syscalls: on 32-bit ARM the raw `setresuid` is
                // the 16-bit one, and glibc/musl pick the right call. In a forked child there is
                // one thread, so glibc's all-threads broadcast has nobody to signal (std's own
                // `Command::uid` does the same between fork and exec).
                if libc::setgroups(ids.groups.len() as _, ids.groups.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setresgid(ids.gid, ids.gid, ids.gid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setresuid(ids.uid, ids.uid, ids.uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // A uid change clears the parent-death signal: arm it again, then make sure the parent
            // did not die before it was armed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != self.parent_pid {
                libc::_exit(1);
            }
            let on: libc::c_ulong = 1;
            let zero: libc::c_ulong = 0;
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, on, zero, zero, zero) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(ruleset) = &self.landlock {
                // syscall(2) is variadic: arguments go as the longs it reads.
                let fd = libc::c_long::from(ruleset.as_raw_fd());
                let no_flags: libc::c_long = 0;
                if libc::syscall(libc::SYS_landlock_restrict_self, fd, no_flags) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(program) = &self.seccomp {
                let fprog = libc::sock_fprog {
                    // At most a few dozen instructions (built by confine::seccomp).
                    len: program.len() as libc::c_ushort,
                    filter: program.as_ptr().cast_mut(),
                };
                let mode = libc::SECCOMP_MODE_FILTER as libc::c_ulong;
                let fprog_ptr: *const libc::sock_fprog = &fprog;
                if libc::prctl(libc::PR_SET_SECCOMP, mode, fprog_ptr) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// Confine `cmd`'s child between fork and exec, with ONE hook doing, in this order: its own
/// network namespace; rlimits (core 0, open files, processes, address space); groups, gid, uid;
/// the parent-death signal again (and exit if the parent is gone); `PR_SET_NO_NEW_PRIVS`; the
/// Landlock ruleset; the seccomp filter. Register it after [`join_cgroup_before_exec`]: joining a
/// cgroup needs the rights the uid change drops. `steps` is shared, not consumed: the same
/// prepared steps serve every attempt of a spawn that is retried.
pub(crate) fn confine_before_exec(cmd: &mut tokio::process::Command, steps: Arc<PreExec>) {
    // SAFETY: the closure runs in the forked child before exec; `PreExec::apply`'s contract holds
    // there (one thread, async-signal-safe calls only, nothing allocated). The Arc keeps the
    // prepared values alive as long as the command.
    unsafe {
        cmd.pre_exec(move || steps.apply());
    }
}

/// The running kernel's Landlock ABI version (`landlock_create_ruleset(NULL, 0, VERSION)`), or the
/// error that says why there is none: `ENOSYS` (not built in), `EOPNOTSUPP` (not enabled at boot).
pub(crate) fn landlock_abi() -> io::Result<libc::c_long> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    let null: libc::c_long = 0;
    // SAFETY: with the VERSION flag the kernel reads no attribute (NULL, size 0) and returns a
    // number, not a descriptor.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            null,
            null,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Whether this kernel (or emulator) installs seccomp filters: `PR_SET_SECCOMP` with a NULL
/// program fails with `EFAULT` where filters exist (the program is read first), `EINVAL` where
/// they do not — also under qemu-user, which refuses the call so that it keeps its own syscalls.
pub(crate) fn seccomp_filters_available() -> bool {
    let mode = libc::SECCOMP_MODE_FILTER as libc::c_ulong;
    let null: libc::c_ulong = 0;
    // SAFETY: a NULL program is never dereferenced: the kernel fails the copy with EFAULT.
    let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, mode, null) };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

/// The host's effective uid (0: root).
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The host's hard limits on open files, processes and address space (`RLIM_INFINITY` where
/// unlimited or unreadable): a child can lower its limits but, without root, not raise them.
pub(crate) fn hard_limits() -> HardLimits {
    fn hard(resource: Resource) -> libc::rlim_t {
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a live local.
        let r = unsafe {
            match resource {
                Resource::OpenFiles => libc::getrlimit(libc::RLIMIT_NOFILE, &mut now),
                Resource::Processes => libc::getrlimit(libc::RLIMIT_NPROC, &mut now),
                Resource::AddressSpace => libc::getrlimit(libc::RLIMIT_AS, &mut now),
            }
        };
        if r != 0 {
            libc::RLIM_INFINITY
        } else {
            now.rlim_max
        }
    }
    enum Resource {
        OpenFiles,
        Processes,
        AddressSpace,
    }
    HardLimits {
        open_files: hard(Resource::OpenFiles),
        processes: hard(Resource::Processes),
        address_space: hard(Resource::AddressSpace),
    }
}

/// See [`hard_limits`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct HardLimits {
    pub(crate) open_files: libc::rlim_t,
    pub(crate) processes: libc::rlim_t,
    pub(crate) address_space: libc::rlim_t,
}

/// Make `cmd`'s child, between fork and exec, move itself into the cgroup whose `cgroup.procs` is
/// open as `procs` (writing `0` there moves the writer). The child is in the cgroup before the
/// plugin's first instruction, so nothing it forks can start outside. The descriptor stays with the
/// command (close-on-exec: the plugin never holds it) and is closed when the command is dropped.
pub(crate) fn join_cgroup_before_exec(cmd: &mut tokio::process::Command, procs: OwnedFd) {
    // SAFETY: the closure runs in the forked child before exec and calls only write(2), which is
    // async-signal-safe; it allocates nothing (`io::Error::last_os_error` only reads errno). The
    // descriptor is owned by the closure, so it is open for as long as the command exists.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Let `SIGPIPE` end the process (the default Rust's runtime changes): for the command-line
/// tools, whose output may go to a pipe closed early. Never for the daemon.
pub fn sigpipe_default() {
    // SAFETY: signal() with SIG_DFL installs no handler code; it has no memory-safety
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Whether the host runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The host's effective uid and gid.
pub(crate) fn own_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Mark the calling process a child subreaper: orphaned descendants are reparented to it instead
/// of to init, so it sees (and must reap) them.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // prctl is variadic: the flag must be passed as the unsigned long the kernel reads.
    let on: libc::c_ulong = 1;
    // SAFETY: prctl with integer arguments only; it touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling process's session id and process group id.
pub(crate) fn own_session_and_group() -> (u32, u32) {
    // SAFETY: plain syscalls without pointers; getsid(0) addresses the caller and cannot fail.
    let (sid, pgid) = unsafe { (libc::getsid(0), libc::getpgrp()) };
    (
        u32::try_from(sid).unwrap_or(0),
        u32::try_from(pgid).unwrap_or(0),
    )
}

/// Reap the child `pid` if it has exited: `Ok(true)` when it was reaped, `Ok(false)` while it
/// runs, an error (`ECHILD`) when it is not our child.
pub(crate) fn reap(pid: u32) -> io::Result<bool> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from_raw_os_error(libc::ECHILD));
    };
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ECHILD));
    }
    let mut status = 0;
    // SAFETY: waitpid for one positive pid with WNOHANG, writing into a live local.
    match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
        0 => Ok(false),
        r if r == pid => Ok(true),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Send `sig` to the single process `pid`; whether it was delivered. Pids that would address a
/// group or every process (0, negative after conversion) are refused.
pub(crate) fn signal_process(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with a positive pid addresses one process; it touches no memory.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// A descriptor that becomes readable once process `pid` has exited (`pidfd_open`, Linux 5.3).
/// An error where the kernel (or an emulator) does not offer it.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    };
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // syscall(2) is variadic: arguments go as the longs it reads.
    let no_flags: libc::c_long = 0;
    // SAFETY: the pidfd_open syscall takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::c_long::from(pid), no_flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = libc::c_int::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `raw` was just returned by pidfd_open, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Take an exclusive POSIX record lock (`fcntl(F_SETLK)`) on all of `file`, without waiting:
/// `Ok(false)` when another process holds one. Unlike `flock`, such a lock belongs to the process,
/// not to the open file: a child forked but not yet exec'd does not hold it, so the lock goes the
/// moment its process dies. It also goes when the process closes *any* descriptor of the file.
pub(crate) fn try_lock_process(file: &File) -> io::Result<bool> {
    // SAFETY: `flock` is plain old data; all-zero is a valid value, then filled in below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    // l_start = 0, l_len = 0: the whole file, however long it grows.
    // SAFETY: a live descriptor (borrowed from `file`) and a pointer to a live, initialised flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Send `sig` to every process of the group `pgid`. A group that no longer exists is fine;
/// `pgid` 0 (which would mean "our own group") is refused and does nothing.
pub(crate) fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid addresses a process group; it touches no memory.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// A non-blocking, close-on-exec inotify descriptor.
pub(crate) fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant flags.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by inotify_init1, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Watch `dir` on the inotify descriptor `fd` for the events in `mask` (`libc::IN_*`).
pub(crate) fn inotify_add_watch(fd: BorrowedFd<'_>, dir: &Path, mask: u32) -> io::Result<()> {
    let dir_c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `fd` is a live descriptor (borrowed) and `dir_c` a NUL-terminated string that
    // outlives the call.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir_c.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Register an open file with the tokio reactor (read and write interest); reads go through
/// `&File`'s safe `Read`.
pub(crate) fn register_async(file: File) -> io::Result<tokio::io::unix::AsyncFd<File>> {
    // SAFETY: a `File` owns an open descriptor, closes it only when dropped, and its `as_raw_fd`
    // never changes; the AsyncFd owns it for its whole life.
    unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(io::Error::from)
}

/// Turn terminal echo on fd 0 off until the returned guard drops. `None` when stdin is not a
/// terminal (nothing to restore).
pub fn stdin_echo_off() -> Option<EchoOff> {
    // SAFETY: `termios` is plain old data; an all-zero value is valid and tcgetattr fills it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 and a pointer to a live, writable termios.
    if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
        return None;
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    // SAFETY: fd 0 and a pointer to a live termios read by the call.
    unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    Some(EchoOff { saved })
}

/// Restores the terminal settings of fd 0 when dropped.
pub struct EchoOff {
    saved: libc::termios,
}

impl std::fmt::Debug for EchoOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchoOff")
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: fd 0 and a pointer to the settings tcgetattr returned.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// The smallest page size of any Linux target: `mmap` returns addresses aligned at least to it.
const MIN_PAGE_BYTES: usize = 4096;

/// A large, short-lived buffer of `T`s in memory of its own: an anonymous private mapping,
/// returned to the OS (`munmap`) when dropped. Memory from the allocator may stay resident after
/// it is freed — glibc keeps a freed block in its arena when the block is below its (dynamically
/// raised) mmap and trim thresholds — so a buffer of many MiB that must be handed back when idle
/// lives here instead. One mapping, no allocator involved, on every libc.
pub(crate) struct PageBuffer<T: Copy> {
    /// Start of the mapping: page-aligned, `len` initialised values.
    ptr: NonNull<T>,
    len: usize,
    /// Length of the mapping.
    bytes: usize,
}

impl<T: Copy> PageBuffer<T> {
    /// Map room for `len` values and set each to `fill`. Fails if `len` is 0, the size overflows,
    /// `T` needs more than page alignment, or the kernel has no memory to give.
    pub(crate) fn new(len: usize, fill: T) -> io::Result<PageBuffer<T>> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let layout = std::alloc::Layout::array::<T>(len).map_err(|_| invalid("too large"))?;
        if layout.size() == 0 {
            return Err(invalid("an empty page buffer"));
        }
        if layout.align() > MIN_PAGE_BYTES {
            return Err(invalid("alignment over a page"));
        }
        // SAFETY: a new anonymous private mapping; no address hint and no file, so it overlaps
        // nothing we own. The result is checked before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
            return Err(invalid("mmap returned null"));
        };
        let buffer = PageBuffer {
            ptr,
            len,
            bytes: layout.size(),
        };
        for i in 0..len {
            // SAFETY: `i < len`, so the write lies inside the mapping of `layout.size()` writable
            // bytes, which is page-aligned and hence aligned for `T` (checked above). `write`
            // neither reads nor drops the uninitialised value it replaces.
            unsafe { buffer.ptr.as_ptr().add(i).write(fill) };
        }
        Ok(buffer)
    }

    /// The values.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: `len` initialised, aligned values in memory only this buffer owns; the `&mut
        // self` borrow makes the slice the only access while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// How many values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes mapped.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl<T: Copy> Drop for PageBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` made, unmapped once; no slice of it outlives `self`
        // (`as_mut_slice` borrows `self`). `T: Copy` has no drop glue to run first.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

impl<T: Copy> std::fmt::Debug for PageBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuffer({} values, {} bytes)", self.len, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values are filled, aligned and writable; bad sizes are refused.
    #[test]
    fn page_buffer_is_filled_and_unmapped_on_drop() {
        #[derive(Clone, Copy, PartialEq, Debug)]
        #[repr(align(64))]
        struct Wide([u64; 128]);
        let mut b = PageBuffer::new(1000, Wide([7; 128])).expect("map");
        assert_eq!(b.len(), 1000);
        assert!(b.bytes() >= 1000 * 1024);
        let addr = b.as_mut_slice().as_ptr() as usize;
        assert_eq!(addr % MIN_PAGE_BYTES, 0, "page-aligned");
        assert!(b.as_mut_slice().iter().all(|w| *w == Wide([7; 128])));
        b.as_mut_slice()[999].0[127] = 1;
        assert_eq!(b.as_mut_slice()[999].0[127], 1);
        drop(b);
        assert!(PageBuffer::new(0, 0u8).is_err(), "empty");
        assert!(PageBuffer::new(usize::MAX, 0u64).is_err(), "overflow");
    }

    #[test]
    fn group_zero_and_out_of_range_pids_are_refused() {
        // Would signal our own group (0) or wrap to a negative pid: both must do nothing.
        signal_group(0, 0);
        signal_group(u32::MAX, 0);
    }

    #[test]
    fn single_process_signals_refuse_zero_and_out_of_range_pids() {
        assert!(!signal_process(0, 0));
        assert!(!signal_process(u32::MAX, 0));
        assert!(signal_process(std::process::id(), 0), "we exist");
        assert!(reap(0).is_err() && reap(u32::MAX).is_err());
    }

    #[test]
    fn reap_tells_a_running_child_from_an_exited_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("sleep");
        assert!(!reap(child.id()).expect("our child"), "still running");
        child.kill().expect("kill");
        // Waiting for the exit without reaping it: the pidfd is readable once the child is a zombie.
        let Ok(fd) = pidfd_open(child.id()) else {
            // No pidfd here (an old kernel or an emulator): reap the std way.
            child.wait().expect("wait");
            return;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, infinite timeout: the child was killed, so it returns.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, -1) }, 1);
        assert!(reap(child.id()).expect("our child"), "reaped now");
        assert!(reap(child.id()).is_err(), "not our child any more");
        assert!(child.wait().is_err(), "std finds nothing left to wait for");
    }

    #[test]
    fn a_process_lock_is_refused_to_another_process_but_not_to_a_fork_before_exec() {
        let path = std::env::temp_dir().join(format!("toru-lock-{}", std::process::id()));
        let file = File::create(&path).expect("lock file");
        assert!(try_lock_process(&file).expect("lock"));
        // A child forked here does not share the lock (it would then be granted its own, as a
        // process is never refused by its own locks): it is refused like any other process.
        // SAFETY: fork in a test; the child only calls fcntl and _exit (async-signal-safe).
        let child = unsafe { libc::fork() };
        if child == 0 {
            let held = !matches!(try_lock_process(&file), Ok(true));
            // SAFETY: leaving the forked child without running the test harness's destructors.
            unsafe { libc::_exit(i32::from(held)) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked, into a live local.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert_eq!(
            libc::WEXITSTATUS(status),
            1,
            "the child saw our lock as another's"
        );
        drop(file);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn inotify_watch_of_a_missing_dir_is_an_error() {
        let fd = inotify_init().expect("inotify");
        let e = inotify_add_watch(
            std::os::fd::AsFd::as_fd(&fd),
            Path::new("/nonexistent/toru"),
            libc::IN_CREATE,
        )
        .expect_err("missing dir");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
