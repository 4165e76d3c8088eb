//! What `toru plugin check` creates and must clean up, whatever happens: a private temporary
//! folder (the store, the plugin's data and socket folders, an unpacked package) and the plugin's
//! process group. [`Sandbox`] removes the folder and kills the group when dropped — at the end of a
//! check, on an error, and when Ctrl-C drops the check half-way. [`Proc`] is the running plugin:
//! its exit is awaited once and remembered, its output is copied into a log ring.

use std::cell::Cell;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::Duration;

use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::supervisor::logs::LogRing;
use crate::supervisor::plugin::pipe_lines;
use crate::supervisor::process;
use crate::supervisor::view::LogStream;

/// Longest wait for the plugin's output pipes to close once its group is killed: only a process
/// that left the group can hold them open, and the report must not wait on it.
const PIPES_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Stderr lines quoted when a plugin ends where it should not.
const STDERR_LINES_QUOTED: usize = 3;
/// Longest Unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;
/// What follows the sandbox's path in the longest socket path: `/plugins/<63-byte id>/plugin.sock`
/// (the runtime dir is the sandbox itself).
const SOCKET_PATH_TAIL_BYTES: usize = "/plugins/".len() + 63 + "/plugin.sock".len();
/// Names tried before giving up (a name is taken only by another check's folder).
const NAME_ATTEMPTS: usize = 8;

/// A private temporary folder and the process group living in it; both go when dropped.
#[derive(Debug)]
pub(crate) struct Sandbox {
    root: PathBuf,
    group: Cell<Option<u32>>,
}

impl Sandbox {
    /// A new folder `toru-check-<random>` (mode 0700) in the system's temporary folder, or in
    /// `/tmp` when the system's would make a plugin's socket path too long.
    pub(crate) fn create() -> std::io::Result<Sandbox> {
        let mut parent = std::env::temp_dir();
        let name_len = "/toru-check-".len() + 6;
        if parent.as_os_str().len() + name_len + SOCKET_PATH_TAIL_BYTES > MAX_SOCKET_PATH_BYTES {
            parent = PathBuf::from("/tmp");
        }
        let mut last = None;
        for _ in 0..NAME_ATTEMPTS {
            let random = uuid::Uuid::new_v4().simple().to_string();
            let root = parent.join(format!("toru-check-{}", &random[..6]));
            match std::fs::DirBuilder::new().mode(0o700).create(&root) {
                Ok(()) => {
                    return Ok(Sandbox {
                        root,
                        group: Cell::new(None),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
    }

    /// The host's data dir inside (the store, `plugin-data/<id>`).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The host's runtime dir: the sandbox itself, so that socket paths stay short
    /// (`plugins/<id>/plugin.sock`).
    pub(crate) fn runtime_dir(&self) -> PathBuf {
        self.root.clone()
    }

    /// Where a package is unpacked.
    pub(crate) fn package_dir(&self) -> PathBuf {
        self.root.join("package")
    }

    /// The process group to kill when the sandbox goes (the plugin's pid).
    pub(crate) fn hold_group(&self, pgid: u32) {
        self.group.set(Some(pgid));
    }

    /// Kill the process group now (it may be gone already).
    pub(crate) fn kill_group(&self) {
        if let Some(pgid) = self.group.get() {
            process::signal_group(pgid, libc::SIGKILL);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_group();
        if let Err(e) = std::fs::remove_dir_all(&self.root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("toru: cannot remove {}: {e}", self.root.display());
        }
    }
}

/// How the plugin's process ended.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    /// `exited with code 3`, `killed by signal 9 (SIGKILL)`.
    pub(crate) how: String,
    /// Its exit code, if it exited.
    pub(crate) code: Option<i32>,
}

/// The plugin's running process.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    /// Its pid, which is also its process group.
    pub(crate) pid: u32,
    ended: Option<Ended>,
    pipes: Vec<JoinHandle<()>>,
    ring: Rc<LogRing>,
}

impl Proc {
    /// Take over a spawned plugin: its stdout and stderr go into `ring`, line by line.
    pub(crate) fn new(mut child: Child, ring: Rc<LogRing>) -> Proc {
        let pid = child.id().unwrap_or(0);
        let mut pipes = Vec::new();
        if let Some(out) = child.stdout.take() {
            pipes.push(tokio::task::spawn_local(pipe_lines(
                out,
                LogStream::Stdout,
                ring.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            pipes.push(tokio::task::spawn_local(pipe_lines(
                err,
                LogStream::Stderr,
                ring.clone(),
            )));
        }
        Proc {
            child,
            pid,
            ended: None,
            pipes,
            ring,
        }
    }

    /// Wait until the process has ended (at once if it has). Cancel-safe.
    pub(crate) async fn ended(&mut self) -> Ended {
        if let Some(e) = &self.ended {
            return e.clone();
        }
        let ended = match self.child.wait().await {
            Ok(status) => describe(&status),
            Err(e) => Ended {
                how: format!("could not be waited for ({e})"),
                code: None,
            },
        };
        self.ended = Some(ended.clone());
        ended
    }

    /// Once it has ended: kill what it left in its group (so nothing holds its output open), let
    /// its output be read to the end, and quote its last stderr lines: ` (last stderr: a | b)`, or
    /// ` (it wrote nothing to stderr)`.
    pub(crate) async fn last_words(&mut self) -> String {
        process::signal_group(self.pid, libc::SIGKILL);
        for pipe in &mut self.pipes {
            let _ = tokio::time::timeout(PIPES_CLOSE_TIMEOUT, pipe).await;
        }
        self.pipes.clear();
        let tail = self.ring.stderr_tail(STDERR_LINES_QUOTED);
        if tail.is_empty() {
            " (it wrote nothing to stderr)".to_string()
        } else {
            format!(" (last stderr: {})", tail.join(" | "))
        }
    }
}

fn describe(status: &ExitStatus) -> Ended {
    let (how, code, _) = process::describe_exit(status);
    Ended { how, code }
}
