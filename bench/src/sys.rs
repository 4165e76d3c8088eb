//! The bench's only `unsafe` (besides the probe binary's fork): CPU affinity for the protocol
//! group, a fifo and a bounded `poll` for the s6 event fifodir. Safe wrappers; each states why it
//! is sound. Callers: `protocol` and `peers`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

/// The CPU the calling thread runs on now (0 if the kernel does not say).
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0)
}

/// Pin thread or process `pid` (0 = the calling thread) to `cpu`.
pub fn pin(pid: u32, cpu: usize) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (it checks
    // `cpu` against the set's size); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The calling thread's CPU mask, restored when dropped.
#[derive(Debug)]
pub struct SavedAffinity(libc::cpu_set_t);

impl SavedAffinity {
    /// Read the calling thread's mask.
    pub fn save() -> SavedAffinity {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pointer to a live cpu_set_t of the size passed.
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        SavedAffinity(set)
    }
}

impl Drop for SavedAffinity {
    fn drop(&mut self) {
        // SAFETY: restores the mask read by `save`, from a live cpu_set_t.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// Create a fifo at `path` with `mode`.
pub fn mkfifo(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait up to `timeout` (at most a second per call) for `fd` to be readable.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(1000) as libc::c_int;
    // SAFETY: one live pollfd, count 1.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}
