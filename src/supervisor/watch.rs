//! Waiting for a plugin's socket to appear without polling: an inotify watch on the socket
//! directory, registered before the plugin is spawned so its `bind` cannot be missed, and
//! [`connect_when_bound`], the host's one way to make the first connection to a freshly spawned
//! plugin (the plugin task and `toru plugin check` both use it).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::time::Instant;

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

    /// Watch the folder of `socket` for it (`None` when the folder cannot be watched: the caller
    /// then retries on a timer alone).
    pub(crate) fn for_socket(socket: &Path) -> Option<SocketWatch> {
        socket
            .parent()
            .zip(socket.file_name())
            .and_then(|(dir, name)| SocketWatch::new(dir, name).ok())
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

/// Connect to `socket` as soon as it accepts, giving up after `timeout` (`None`). Wakes on the
/// inotify event of `watch` (made before the plugin was spawned); a short timer (doubling from
/// 1 ms to 10 ms) covers the gap between bind and listen, and systems without inotify. The only
/// wait in the host that retries.
pub(crate) async fn connect_when_bound(
    socket: &Path,
    watch: Option<SocketWatch>,
    timeout: Duration,
) -> Option<UnixStream> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let mut after_event = 0u32;
    let stream = loop {
        match UnixStream::connect(socket).await {
            Ok(s) => break Some(s),
            Err(_) if Instant::now() >= deadline => break None,
            Err(_) if after_event > 0 && after_event < 4 => {
                // Created but not yet listening: that gap is microseconds.
                after_event += 1;
                tokio::task::yield_now().await;
            }
            Err(_) => {
                let timer = tokio::time::sleep(pause.min(deadline - Instant::now()));
                match &watch {
                    Some(w) => tokio::select! {
                        r = w.created() => { if r.is_ok() { after_event = 1; } }
                        _ = timer => pause = (pause * 2).min(Duration::from_millis(10)),
                    },
                    None => {
                        timer.await;
                        pause = (pause * 2).min(Duration::from_millis(10));
                    }
                }
            }
        }
    };
    log::debug!(
        "{}: connect after {:?} (inotify event seen: {})",
        socket.display(),
        timeout.saturating_sub(deadline.saturating_duration_since(Instant::now())),
        after_event > 0
    );
    stream
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
