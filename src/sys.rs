//! The host's only `unsafe` code: thin, safe wrappers over the few Linux calls the standard
//! library does not offer. Each wrapper states the invariant that makes it sound; callers never
//! write `unsafe` themselves.
//!
//! Callers: `main` (password prompt without echo: the only public item), `supervisor::process` (plugin process group,
//! parent-death signal, signalling the group), `supervisor::watch` (inotify). Nothing here keeps
//! state, logs or touches the environment.
//!
//! Plain `libc` rather than a wrapper crate such as `rustix`: five calls do not justify a new
//! dependency in the device binary, and `libc` is already in the tree through tokio.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_zero_and_out_of_range_pids_are_refused() {
        // Would signal our own group (0) or wrap to a negative pid: both must do nothing.
        signal_group(0, 0);
        signal_group(u32::MAX, 0);
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
