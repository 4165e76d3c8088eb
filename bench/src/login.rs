//! Group 9, login memory: the host's RSS while and after it runs argon2id for logins (19 MiB per
//! run). Per round a fresh host with no plugins and an admin password (set with `toru passwd`,
//! itself a hash in the host), then: idle RSS; one login over HTTP with the host's peak RSS
//! (`VmHWM`, reset through `/proc/PID/clear_refs` just before); six more logins one after another;
//! eight logins at once from eight loopback addresses (eight clients to the throttle, so eight
//! argon2id runs queue up); a burst of parallel wrong logins from one address (the throttle lets
//! the free ones through); the peak of each burst and the RSS a moment after each step, once the
//! host is idle again.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::host::Toru;
use crate::util::{Result, err, fmt_mib, http_once, median, run_cmd};
use crate::{Budget, Opts, Report};

/// Let the host go idle after a step (the KDF hands its memory back when no run is queued).
const SETTLE: Duration = Duration::from_millis(1500);
/// Logins after the first, one after another.
const SEQUENTIAL_LOGINS: usize = 6;
/// Logins at once, each from its own loopback address (so the throttle sees separate clients).
const CLIENTS: usize = 8;
/// Parallel wrong logins from one address.
const BURST: usize = 20;
/// The password `Toru::login` sets.
const PASSWORD: &str = "bench-password-1234";
/// What a login peak may add to the idle host: one 19 MiB argon2id buffer and change.
const PEAK_ABOVE_IDLE_KIB: f64 = 20.0 * 1024.0;
/// What the host may keep once idle again after logins.
const KEPT_AFTER_IDLE_KIB: f64 = 1024.0;

/// One field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err(format!("no {field} in /proc/{pid}/status")))
}

/// Reset the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| err(format!("reset the peak RSS of {pid}: {e}")))
}

/// `POST /api/auth/login`; the status.
fn login(addr: SocketAddr, password: &str) -> Result<u16> {
    let headers = [
        "Origin: http://localhost".to_string(),
        "Content-Type: application/json".to_string(),
        "X-Toru-Csrf: 1".to_string(),
    ];
    let body = json!({"username": "admin", "password": password}).to_string();
    Ok(http_once(addr, "POST", "/api/auth/login", &headers, body.as_bytes())?.0)
}

/// `n` logins at once with `password`, from 127.0.0.2, 127.0.0.3 …: one client each for the
/// throttle. Python's `http.client`, because std cannot bind a client socket before connecting
/// (python3 is among the bench's tools already). The statuses.
fn logins_from_many(addr: SocketAddr, n: usize, password: &str) -> Result<Vec<u16>> {
    const SCRIPT: &str = r#"
import http.client, json, sys, threading
port, n, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
statuses = [0] * n
def login(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                   source_address=("127.0.0.%d" % (i + 2), 0))
    c.request("POST", "/api/auth/login",
              body=json.dumps({"username": "admin", "password": password}),
              headers={"Origin": "http://127.0.0.1:%d" % port,
                       "Content-Type": "application/json", "X-Toru-Csrf": "1"})
    statuses[i] = c.getresponse().status
threads = [threading.Thread(target=login, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(map(str, statuses)))
"#;
    let out = run_cmd(std::process::Command::new("python3").args([
        "-c",
        SCRIPT,
        &addr.port().to_string(),
        &n.to_string(),
        password,
    ]))?;
    out.split_whitespace()
        .map(|s| s.parse().map_err(|_| err(format!("odd status {s:?}"))))
        .collect()
}

/// Which C library the process at `pid` runs on: glibc if it maps `libc.so.6`, else a static build
/// (the device's musl).
fn libc_of(pid: u32) -> &'static str {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if maps.contains("libc.so") {
        "glibc"
    } else {
        "static (musl)"
    }
}

/// One figure of a [`Round`].
type Field = fn(&Round) -> u64;

/// What one round measured, KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    libc: &'static str,
    idle: u64,
    one_peak: u64,
    one_after: u64,
    seq_after: u64,
    many_peak: u64,
    many_after: u64,
    burst_peak: u64,
    burst_after: u64,
    burst_hashed: usize,
}

fn round(bins: &crate::host::Bins) -> Result<Round> {
    let mut t = Toru::start(bins, &[], None)?;
    t.login()?;
    let pid = t.pid();
    std::thread::sleep(SETTLE);
    let mut r = Round {
        libc: libc_of(pid),
        idle: status_kib(pid, "VmRSS")?,
        ..Round::default()
    };

    reset_peak(pid)?;
    let status = login(t.addr, PASSWORD)?;
    if status != 200 {
        return Err(err(format!("login answered {status}")));
    }
    r.one_peak = status_kib(pid, "VmHWM")?;
    std::thread::sleep(SETTLE);
    r.one_after = status_kib(pid, "VmRSS")?;

    for _ in 0..SEQUENTIAL_LOGINS {
        let status = login(t.addr, PASSWORD)?;
        if status != 200 {
            return Err(err(format!("login answered {status}")));
        }
    }
    std::thread::sleep(SETTLE);
    r.seq_after = status_kib(pid, "VmRSS")?;

    reset_peak(pid)?;
    let statuses = logins_from_many(t.addr, CLIENTS, PASSWORD)?;
    if statuses.len() != CLIENTS || statuses.iter().any(|&s| s != 200) {
        return Err(err(format!(
            "logins from {CLIENTS} addresses: {statuses:?}"
        )));
    }
    r.many_peak = status_kib(pid, "VmHWM")?;
    std::thread::sleep(SETTLE);
    r.many_after = status_kib(pid, "VmRSS")?;

    reset_peak(pid)?;
    let addr = t.addr;
    let statuses: Vec<std::result::Result<u16, String>> = std::thread::scope(|s| {
        let burst: Vec<_> = (0..BURST)
            .map(|_| s.spawn(move || login(addr, "wrong password").map_err(|e| e.to_string())))
            .collect();
        burst
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("login thread panicked".into()))
            })
            .collect()
    });
    for s in &statuses {
        match s {
            Ok(401) | Ok(429) => {}
            Ok(other) => return Err(err(format!("wrong login answered {other}"))),
            Err(e) => return Err(err(format!("wrong login: {e}"))),
        }
    }
    r.burst_hashed = statuses.iter().filter(|s| matches!(s, Ok(401))).count();
    r.burst_peak = status_kib(pid, "VmHWM")?;
    std::thread::sleep(SETTLE);
    r.burst_after = status_kib(pid, "VmRSS")?;
    Ok(r)
}

/// Run the group.
pub fn run(bins: &crate::host::Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    let mut rounds = Vec::new();
    for i in 0..opts.rounds {
        eprintln!("login: round {}/{}", i + 1, opts.rounds);
        rounds.push(round(bins)?);
    }
    let med = |f: Field| median(&rounds.iter().map(|r| f(r) as f64).collect::<Vec<_>>());
    let per_round = |f: Field| {
        rounds
            .iter()
            .map(|r| format!("{:.2}", f(r) as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let idle = med(|r| r.idle);
    let one_peak = med(|r| r.one_peak);
    let kept = [
        med(|r| r.one_after),
        med(|r| r.seq_after),
        med(|r| r.many_after),
        med(|r| r.burst_after),
    ]
    .into_iter()
    .fold(0.0, f64::max);
    let hashed = rounds
        .iter()
        .map(|r| r.burst_hashed.to_string())
        .collect::<Vec<_>>()
        .join(" / ");
    let libc = rounds.first().map_or("?", |r| r.libc);
    let mut s = format!(
        "The `toru` host process (x86_64 {libc} release build, no plugins) on a fresh data dir \
         with an admin password set by `toru passwd`; RSS from `/proc/PID/status`, the peak as \
         `VmHWM` reset just before the step. Every login runs argon2id with 19 MiB and 2 passes \
         (OWASP); wrong logins beyond the throttle's free attempts answer 429 without hashing. \
         Each \"after\" is read 1.5 s later, the host idle.\n\n",
    );
    s.push_str("| step | RSS (median) | per round (MiB) |\n|---|---|---|\n");
    let rows: [(&str, Field); 8] = [
        ("idle, password set", |r| r.idle),
        ("**peak during one login**", |r| r.one_peak),
        ("after that login", |r| r.one_after),
        ("after 6 more logins, one after another", |r| r.seq_after),
        ("peak during 8 logins at once, from 8 addresses", |r| {
            r.many_peak
        }),
        ("after them", |r| r.many_after),
        ("peak during 20 parallel wrong logins", |r| r.burst_peak),
        ("after them", |r| r.burst_after),
    ];
    for (name, f) in rows {
        s.push_str(&format!(
            "| {name} | {} | {} |\n",
            fmt_mib(med(f)),
            per_round(f)
        ));
    }
    s.push_str(&format!(
        "\nOf the 20 parallel wrong logins, {hashed} (per round) reached the password check; the \
         rest were throttled.\n"
    ));
    s.push_str(&format!(
        "\n**What a Pi Zero 2 (512 MB) can afford.** While it checks a password the host needs its \
         idle memory plus one argon2id buffer of 19 MiB, however many clients log in at once: \
         {} at peak here, under {:.0} % of the board's 512 MB (of which the firmware keeps some \
         for the GPU and the OS takes its share). The host runs argon2id on one thread of its \
         own, in one buffer that it unmaps as soon as no run is queued, so between logins that \
         memory is the plugins'. What the board could not afford is memory that grows with \
         logins: a buffer per thread that the allocator keeps (glibc keeps up to 8 arenas per \
         core, 32 on the Pi's four cores: 32 × 19 MiB = 608 MiB, more than the board has), or \
         runs side by side (19 MiB each). Hence one run at a time, queued behind the login \
         throttle.\n",
        fmt_mib(one_peak),
        (one_peak / 1024.0 / 512.0 * 100.0).ceil()
    ));
    rep.section("9. Login memory", s);
    rep.budget(Budget::new(
        "Peak host RSS during one login (argon2)",
        "≤ idle + 20 MiB",
        format!("{} (idle {})", fmt_mib(one_peak), fmt_mib(idle)),
        one_peak - idle <= PEAK_ABOVE_IDLE_KIB,
        "more than one argon2id buffer was resident at once.",
    ));
    rep.budget(Budget::new(
        "Host RSS once idle again after logins",
        "≤ idle + 1 MiB",
        format!("{} (idle {})", fmt_mib(kept), fmt_mib(idle)),
        kept - idle <= KEPT_AFTER_IDLE_KIB,
        "the argon2id memory of finished logins stays resident.",
    ));
    rep.set("login_peak_kib", one_peak);
    rep.set("login_kept_kib", kept);
    Ok(())
}
