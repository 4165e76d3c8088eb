//! Plumbing every benchmark group shares: process guards that stop what they started (by PID or
//! process group; the peers' and the floors'), the probe socket, `/proc` memory readings,
//! statistics and the `wrk` runner. Temp dirs, signals and the HTTP client are the shared test
//! kit's (`toru_test_kit`), re-exported here.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use toru_test_kit::{HttpConn, TempDir, alive, kill, signal_group};

/// Errors are reported with their context and end the run (after every guard has stopped its
/// processes).
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Build an error from a message.
pub fn err(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}

/// Wall-clock now in nanoseconds since the epoch (the clock plugins and the host stamp with).
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A started process; stopped (SIGTERM to its process group, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: Child,
    stopped: bool,
}

impl Proc {
    /// Spawn `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Proc> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {name}: {e}")))?;
        Ok(Proc {
            child,
            stopped: false,
        })
    }

    /// The leader's pid (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM the group, wait up to 5 s for the leader, then SIGKILL the group.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pgid = self.pid();
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The datagram socket probes report their `main()` to. Kills every probe it heard of when
/// dropped (children a supervisor detached from our process groups, e.g. monit's).
#[derive(Debug)]
pub struct ProbeSock {
    sock: UnixDatagram,
    /// Where it is bound.
    pub path: PathBuf,
    /// Every probe pid reported so far.
    pub seen: Vec<u32>,
}

impl ProbeSock {
    /// Bind at `path`.
    pub fn bind(path: PathBuf) -> Result<ProbeSock> {
        let _ = std::fs::remove_file(&path);
        let sock =
            UnixDatagram::bind(&path).map_err(|e| err(format!("bind {}: {e}", path.display())))?;
        Ok(ProbeSock {
            sock,
            path,
            seen: Vec::new(),
        })
    }

    /// The next `main()` report: (pid, unix ns). `None` past `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<(u32, i128)> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self.sock.set_read_timeout(Some(left));
            let n = self.sock.recv(&mut buf).ok()?;
            let msg = String::from_utf8_lossy(&buf[..n]);
            let mut it = msg.split_whitespace();
            if it.next() != Some("main") {
                continue;
            }
            let pid = it.next().and_then(|p| p.parse::<u32>().ok());
            let ns = it.next().and_then(|p| p.parse::<i128>().ok());
            if let (Some(pid), Some(ns)) = (pid, ns) {
                self.seen.push(pid);
                return Some((pid, ns));
            }
        }
    }

    /// Wait for `n` reports (or `timeout`); returns them.
    pub fn recv_n(&mut self, n: usize, timeout: Duration) -> Vec<(u32, i128)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(r) => out.push(r),
                None => break,
            }
        }
        out
    }

    /// Drop reports already queued.
    pub fn drain(&mut self) {
        let _ = self.sock.set_nonblocking(true);
        let mut buf = [0u8; 256];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(pid) = msg.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                self.seen.push(pid);
            }
        }
        let _ = self.sock.set_nonblocking(false);
    }
}

impl Drop for ProbeSock {
    fn drop(&mut self) {
        self.drain();
        for &pid in &self.seen {
            let is_probe = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("toru-bench-probe"))
                .unwrap_or(false);
            let exe_probe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.to_string_lossy().contains("toru-bench-probe"))
                .unwrap_or(false);
            if alive(pid) && (is_probe || exe_probe) {
                kill(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// RSS and PSS in KiB of one process (`/proc/PID/smaps_rollup`).
pub fn rss_pss_kib(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| err(format!("smaps_rollup of {pid}: {e}")))?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("Rss:"), field("Pss:")))
}

/// Direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `pid` and its descendants, except those in `exclude` (and theirs).
pub fn tree(pid: u32, exclude: &[u32]) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        for c in children(out[i]) {
            if !exclude.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// Sum of RSS and PSS (KiB) over `pids`.
pub fn sum_mem(pids: &[u32]) -> Result<(u64, u64)> {
    let mut t = (0, 0);
    for &p in pids {
        let (r, s) = rss_pss_kib(p)?;
        t.0 += r;
        t.1 += s;
    }
    Ok(t)
}

/// The `p`-th percentile (0–100, nearest rank) of `v`.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The median.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A duration in µs, human: `67 µs`, `1.24 ms`, `1.01 s`.
pub fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "—".into()
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// KiB as MiB with two decimals.
pub fn fmt_mib(kib: f64) -> String {
    if kib.is_nan() {
        "—".into()
    } else {
        format!("{:.2} MiB", kib / 1024.0)
    }
}

/// A ratio `a/b` as `1.23×`.
pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "—".into()
    }
}

/// Per-round ratios joined for a table cell: `1.10 / 1.25 / 1.08`.
pub fn fmt_ratios(r: &[f64]) -> String {
    r.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A free loopback TCP port (bound and released; fine for a bench on a quiet loopback).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(err(format!("nothing listens on {addr}")))
}

/// Status and body of an answer.
pub type HttpAnswer = (u16, Vec<u8>);

/// One request on a fresh keep-alive connection (the kit's [`HttpConn`]).
pub fn http_once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
) -> Result<HttpAnswer> {
    let r = HttpConn::connect(addr)?.request(method, path, headers, body)?;
    Ok((r.status, r.body))
}

/// What `wrk --latency` reports.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Requests per second.
    pub rps: f64,
    /// Non-2xx/3xx answers plus socket errors.
    pub errors: u64,
}

fn wrk_time_us(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => f64::NAN,
    }
}

/// Run `wrk` (2 threads, `conns` connections, `secs` seconds) against `url`.
pub fn wrk(url: &str, conns: u32, secs: u32, extra: &[String]) -> Result<WrkResult> {
    let out = Command::new("wrk")
        .arg("-t2")
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency")
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("wrk: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut r = WrkResult {
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        rps: f64::NAN,
        errors: 0,
    };
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.as_slice() {
            ["50%", v] => r.p50_us = wrk_time_us(v),
            ["99%", v] => r.p99_us = wrk_time_us(v),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(f64::NAN),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().unwrap_or(0),
            _ if line.trim_start().starts_with("Socket errors:") => {
                r.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if r.rps.is_nan() {
        return Err(err(format!(
            "wrk {url}: no result\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(r)
}

/// Run a command, return stdout; an error carries stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| err(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// RSS (KiB) of `pid` by mapping: the path, `[heap]`, `[stack]`, or `[anon]`; biggest first.
pub fn smaps_breakdown(pid: u32) -> Vec<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in s.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line.split_whitespace().nth(5).unwrap_or("[anon]");
            current = name.rsplit('/').next().unwrap_or(name).to_string();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            *by.entry(current.clone()).or_default() += kib;
        }
    }
    let mut v: Vec<(String, u64)> = by.into_iter().filter(|(_, k)| *k > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}
