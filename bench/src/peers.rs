//! The supervisors Toru is compared with, each set up in its own temp dir running N copies of the
//! probe: supervisord (Python, web UI + XML-RPC), monit (C, web UI, 1 s cycle), runit
//! (`runsvdir` + one `runsv` per service) and s6 (`s6-svscan` + one `s6-supervise` per service,
//! readiness through `notification-fd`). Every one runs in its own process group and is stopped
//! by it; probes a supervisor detached (monit's daemons) are killed by pid through [`ProbeSock`].

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::host::Bins;
use crate::util::{
    ProbeSock, Proc, Result, TempDir, alive, err, free_port, now_ns, run_cmd, tree, wait_tcp,
};

/// Which supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// supervisord 4 (pip).
    Supervisord,
    /// monit 5 (Debian).
    Monit,
    /// runit (Debian).
    Runit,
    /// s6 (Debian).
    S6,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Supervisord => "supervisord",
            Kind::Monit => "monit",
            Kind::Runit => "runit",
            Kind::S6 => "s6",
        })
    }
}

/// Every peer, in the order tables list them.
pub const ALL: [Kind; 4] = [Kind::Supervisord, Kind::Monit, Kind::Runit, Kind::S6];

/// A running supervisor with its probes.
#[derive(Debug)]
pub struct Peer {
    /// Which one.
    pub kind: Kind,
    /// The supervisor (its process group). Dropped first.
    pub proc: Proc,
    /// Probe reports.
    pub probe: ProbeSock,
    /// The web UI / XML-RPC port (supervisord, monit).
    pub http_port: Option<u16>,
    /// s6: the readiness event fifo of service 0 (read end, and a write end keeping it open).
    fifo: Option<(std::fs::File, std::fs::File)>,
    dir: TempDir,
}

/// The Python interpreter that has `supervisor` installed.
fn python() -> Result<String> {
    let out = run_cmd(
        Command::new("python3").args(["-c", "import sys, supervisor; print(sys.executable)"]),
    )
    .map_err(|e| {
        err(format!(
            "supervisor is not installed (pip install supervisor): {e}"
        ))
    })?;
    Ok(out.trim().to_string())
}

impl Peer {
    /// Start `kind` with `n` probes and wait until each reported its `main()`.
    pub fn start(kind: Kind, bins: &Bins, n: usize) -> Result<Peer> {
        let dir = TempDir::new(&kind.to_string())?;
        let probe_bin = bins.get("toru-bench-probe");
        let mut probe = ProbeSock::bind(dir.join("probe.sock"))?;
        let sock = probe.path.clone();
        let mut http_port = None;
        let mut cmd;
        match kind {
            Kind::Runit | Kind::S6 => {
                let scan = dir.join("scan");
                for i in 0..n {
                    let svc = scan.join(format!("probe{i}"));
                    std::fs::create_dir_all(&svc)?;
                    // `run` is the probe itself: no shell between the supervisor and main().
                    std::os::unix::fs::symlink(&probe_bin, svc.join("run"))?;
                    if kind == Kind::S6 {
                        std::fs::write(svc.join("notification-fd"), "3\n")?;
                    }
                }
                if kind == Kind::Runit {
                    cmd = Command::new("runsvdir");
                } else {
                    cmd = Command::new("s6-svscan");
                    cmd.env("TORU_BENCH_NOTIFY_FD", "3");
                }
                cmd.arg(&scan).env("TORU_BENCH_PROBE", &sock);
            }
            Kind::Supervisord => {
                let port = free_port()?;
                http_port = Some(port);
                let d = dir.0.display();
                let mut conf = format!(
                    "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
                     childlogdir={d}\nloglevel=warn\n\n[inet_http_server]\nport=127.0.0.1:{port}\n\n\
                     [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
                );
                for i in 0..n {
                    conf.push_str(&format!(
                        "[program:probe{i}]\ncommand={} --probe-socket {}\nautorestart=true\nstartsecs=1\n\
                         startretries=1000\nstdout_logfile=NONE\nstderr_logfile=NONE\n\n",
                        probe_bin.display(),
                        sock.display()
                    ));
                }
                let path = dir.join("supervisord.conf");
                std::fs::write(&path, conf)?;
                cmd = Command::new(python()?);
                cmd.args(["-m", "supervisor.supervisord", "-n", "-c"])
                    .arg(&path);
            }
            Kind::Monit => {
                let port = free_port()?;
                http_port = Some(port);
                let d = dir.0.display();
                let mut conf = format!(
                    "set daemon 1\nset logfile {d}/monit.log\nset idfile {d}/monit.id\n\
                     set statefile {d}/monit.state\nset pidfile {d}/monit.pid\n\
                     set httpd port {port} and use address 127.0.0.1\n    allow 127.0.0.1\n\n"
                );
                for i in 0..n {
                    conf.push_str(&format!(
                        "check process probe{i} with pidfile {d}/probe{i}.pid\n    start program = \"{} --daemonize --probe-socket {} --pidfile {d}/probe{i}.pid\"\n\n",
                        probe_bin.display(),
                        sock.display()
                    ));
                }
                let path = dir.join("monitrc");
                std::fs::write(&path, conf)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                cmd = Command::new("monit");
                cmd.arg("-I").arg("-c").arg(&path);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log"))?));
        let proc = Proc::spawn(&mut cmd, &kind.to_string())?;
        let got = probe.recv_n(n, Duration::from_secs(20));
        if got.len() < n {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            return Err(err(format!(
                "{kind}: only {} of {n} children started; stderr:\n{log}",
                got.len()
            )));
        }
        if let Some(p) = http_port {
            wait_tcp(([127, 0, 0, 1], p).into(), Duration::from_secs(10))?;
        }
        let mut peer = Peer {
            kind,
            proc,
            probe,
            http_port,
            fifo: None,
            dir,
        };
        if kind == Kind::S6 {
            peer.fifo = Some(peer.open_event_fifo()?);
        }
        Ok(peer)
    }

    /// The supervising processes (the supervisor's tree without the probes).
    pub fn supervisor_pids(&mut self) -> Vec<u32> {
        self.probe.drain();
        tree(self.proc.pid(), &self.probe.seen)
    }

    /// A live probe (the newest reported).
    pub fn a_child(&mut self) -> Option<u32> {
        self.probe.drain();
        self.probe.seen.iter().rev().copied().find(|&p| alive(p))
    }

    /// Subscribe to service 0's s6 event fifodir: a fifo named like ftrigr's own (`ftrig1:@` + 24 hex
    /// digits + `:` + 6 characters; s6-supervise ignores other names) that s6-supervise writes
    /// one character per state change to (`u` up, `U` ready, `d` down, …).
    fn open_event_fifo(&self) -> Result<(std::fs::File, std::fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let path: PathBuf = self
            .dir
            .join("scan/probe0/event/ftrig1:@400000006b05f36d2e4e3af6:bench0");
        crate::sys::mkfifo(&path, 0o622)
            .map_err(|e| err(format!("mkfifo {}: {e}", path.display())))?;
        let r = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)?;
        let w = std::fs::OpenOptions::new().write(true).open(&path)?;
        Ok((r, w))
    }

    /// s6: drop queued events.
    pub fn drain_events(&mut self) {
        use std::io::Read;
        if let Some((r, _)) = self.fifo.as_mut() {
            let mut b = [0u8; 256];
            while matches!(r.read(&mut b), Ok(n) if n > 0) {}
        }
    }

    /// s6: watch the event fifo from a thread (so events are stamped when they arrive, while
    /// the caller waits for the probe) until `U` (up and ready) or `timeout`. The thread returns
    /// the arrival times (unix ns) of the first `d` (the death noticed) and of `U`.
    pub fn watch_events(
        &mut self,
        timeout: Duration,
    ) -> Option<std::thread::JoinHandle<(Option<i128>, Option<i128>)>> {
        use std::io::Read;
        use std::os::fd::AsFd;
        let (r, _) = self.fifo.as_mut()?;
        let mut r = r.try_clone().ok()?;
        Some(std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + timeout;
            let (mut down, mut ready) = (None, None);
            while ready.is_none() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                crate::sys::poll_readable(r.as_fd(), left);
                let mut b = [0u8; 64];
                if let Ok(n) = r.read(&mut b) {
                    let now = now_ns();
                    if down.is_none() && b[..n].contains(&b'd') {
                        down = Some(now);
                    }
                    if b[..n].contains(&b'U') {
                        ready = Some(now);
                    }
                }
            }
            (down, ready)
        }))
    }

    /// The base URL of its web UI.
    pub fn url(&self) -> Option<String> {
        self.http_port.map(|p| format!("http://127.0.0.1:{p}"))
    }
}
