//! Waiting for a plugin's socket to appear without polling: an inotify watch on the socket
//! directory, registered before the plugin is spawned so its `bind` cannot be missed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// An inotify watch for one file name appearing in one directory.
#[derive(Debug)]
pub struct SocketWatch {
    fd: AsyncFd<File>,
    name: OsString,
}

impl SocketWatch {
    /// Watch `dir` for `name` being created (or moved in).
    pub fn new(dir: &Path, name: &OsStr) -> io::Result<SocketWatch> {
        let fd = crate::sys::inotify_init()?;
        crate::sys::inotify_add_watch(fd.as_fd(), dir, libc::IN_CREATE | libc::IN_MOVED_TO)?;
        let fd = crate::sys::register_async(File::from(fd))?;
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
            let n = match self.fd.get_ref().read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.contains_name(&buf[..n]) {
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
