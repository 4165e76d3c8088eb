//! Waiting for a plugin's socket to appear without polling: an inotify watch on the socket
//! directory, registered before the plugin is spawned so its `bind` cannot be missed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// An inotify watch for one file name appearing in one directory.
#[derive(Debug)]
pub struct SocketWatch {
    fd: AsyncFd<OwnedFd>,
    name: OsString,
}

impl SocketWatch {
    /// Watch `dir` for `name` being created (or moved in).
    pub fn new(dir: &Path, name: &OsStr) -> io::Result<SocketWatch> {
        // SAFETY: plain syscalls; the returned fd is owned right away and closed on drop.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir_c.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open inotify descriptor owned by the AsyncFd from here on; its raw
        // fd never changes and it is closed only when the AsyncFd drops.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(SocketWatch {
            fd,
            name: name.to_os_string(),
        })
    }

    /// Resolve once an event for the watched name arrives (events for other names are skipped).
    pub async fn created(&self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: reading into a local buffer from a non-blocking inotify fd.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(e);
            }
            if self.contains_name(&buf[..n as usize]) {
                return Ok(());
            }
        }
    }

    /// Whether a buffer of `inotify_event` records names the watched file.
    fn contains_name(&self, mut events: &[u8]) -> bool {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        while events.len() >= HEADER {
            // The name length is the last u32 of the fixed header.
            let len = u32::from_ne_bytes([
                events[HEADER - 4],
                events[HEADER - 3],
                events[HEADER - 2],
                events[HEADER - 1],
            ]) as usize;
            let end = (HEADER + len).min(events.len());
            let raw = &events[HEADER..end];
            let name = raw.split(|b| *b == 0).next().unwrap_or(&[]);
            if OsString::from_vec(name.to_vec()) == self.name {
                return true;
            }
            events = &events[end..];
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_the_file_appear_and_ignores_others() {
        let dir = std::env::temp_dir().join(format!("toru-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let w = SocketWatch::new(&dir, OsStr::new("p.sock")).unwrap();
        std::fs::write(dir.join("other"), "").unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.join("p.sock")).unwrap();
        w.created().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
