//! `toru-bench`: measures the Toru host side by side with supervisord, monit, runit and s6 and
//! rewrites `docs/BENCHMARKS.md` (budget table first, then one section per measurement group, the
//! machine and the date).
//!
//! ```text
//! toru-bench all                      # every group; rewrites docs/BENCHMARKS.md
//! toru-bench memory http …            # some groups; prints the Markdown to stdout
//! options: --rounds N (3) --kill-rounds N (5) --http-secs S (10) --http-rounds N (3)
//!          --out FILE  --no-build
//! ```
//! Groups: memory, login, restart, http, protocol, kv, start, size, stress, packages, isolation,
//! profile, mqtt.
//! `scripts/bench.sh` installs the peers first. Every load loop is bounded in count and time;
//! everything started is stopped by PID or process group (guards in `util`), also on errors.

#![deny(unsafe_code)] // Only `sys` may: it says `allow`.

mod host;
mod http;
mod isolation;
mod kv;
mod login;
mod memory;
mod mqtt;
mod packages;
mod peers;
mod profile;
mod protocol;
mod restart;
mod size;
mod start;
mod stress;
mod sys;
mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::host::Bins;
use crate::util::{Result, err, run_cmd};

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Rounds of the interleaved A/B groups.
    pub rounds: usize,
    /// Kills per supervisor in the restart group.
    pub kill_rounds: usize,
    /// Seconds per wrk run.
    pub http_secs: u32,
    /// wrk rounds.
    pub http_rounds: usize,
}

/// One row of the budget table.
#[derive(Debug, Clone)]
pub struct Budget {
    item: String,
    target: String,
    measured: String,
    pass: bool,
    why_miss: String,
}

impl Budget {
    /// A row; `why_miss` is printed only when it misses.
    pub fn new(
        item: &str,
        target: &str,
        measured: impl Into<String>,
        pass: bool,
        why_miss: &str,
    ) -> Budget {
        Budget {
            item: item.into(),
            target: target.into(),
            measured: measured.into(),
            pass,
            why_miss: why_miss.into(),
        }
    }
}

/// What the groups produce.
#[derive(Debug, Default)]
pub struct Report {
    sections: Vec<(String, String)>,
    budget: Vec<Budget>,
    values: BTreeMap<String, f64>,
}

impl Report {
    /// Add a section.
    pub fn section(&mut self, title: &str, body: String) {
        self.sections.push((title.into(), body));
    }
    /// Add a budget row.
    pub fn budget(&mut self, b: Budget) {
        self.budget.push(b);
    }
    /// Keep a headline figure (printed at the end).
    pub fn set(&mut self, k: &str, v: f64) {
        self.values.insert(k.into(), v);
    }
}

type Group = fn(&Bins, &Opts, &mut Report) -> Result<()>;

const GROUPS: [(&str, Group); 13] = [
    ("memory", memory::run),
    ("login", login::run),
    ("restart", restart::run),
    ("http", http::run),
    ("protocol", protocol::run),
    ("kv", kv::run),
    ("start", start::run),
    ("stress", stress::run),
    ("packages", packages::run),
    ("isolation", isolation::run),
    ("profile", profile::run),
    ("mqtt", mqtt::run),
    // After `profile`: it reads the symbols of the build `profile` makes.
    ("size", size::run),
];

fn sh(cmd: &str) -> String {
    run_cmd(Command::new("sh").arg("-c").arg(cmd))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn machine() -> String {
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let disk = sh(
        "src=$(findmnt -no SOURCE -T /tmp); fs=$(findmnt -no FSTYPE -T /tmp); \
         dev=$(basename \"$src\"); rot=$(cat /sys/block/$dev/queue/rotational 2>/dev/null || echo ?); \
         echo \"$src ($fs, rotational=$rot)\"",
    );
    let versions = sh(
        "printf 'supervisord %s, ' \"$(python3 -c 'import supervisor.options as o; print(o.VERSION)' 2>/dev/null)\"; \
         printf 'monit %s, ' \"$(dpkg-query -W -f='${Version}' monit)\"; \
         printf 'runit %s, ' \"$(dpkg-query -W -f='${Version}' runit)\"; \
         printf 's6 %s, ' \"$(dpkg-query -W -f='${Version}' s6)\"; \
         printf 'wrk %s, ' \"$(dpkg-query -W -f='${Version}' wrk)\"; \
         printf 'valgrind %s' \"$(dpkg-query -W -f='${Version}' valgrind)\"",
    );
    format!(
        "- CPU: {} × {cpu} (`nproc` = {}); shared with other builds while measuring, hence \
         interleaved rounds and per-round ratios\n- Kernel: {}\n- Memory: {}\n- Disk (temp dirs, \
         data dirs and the fsync floor): {disk}\n- OS: {}\n- Rust: {}\n- Peers: {versions}\n",
        sh("nproc"),
        sh("nproc"),
        sh("uname -srm"),
        sh("free -h | awk '/Mem:/ {print $2}'"),
        sh(". /etc/os-release; echo $PRETTY_NAME"),
        sh("rustc --version"),
    )
}

fn render(rep: &Report, opts: &Opts, elapsed: f64, failed: &[String]) -> String {
    let mut s = String::from(
        "# Benchmarks\n\n<!-- Generated by `scripts/bench.sh` (toru-bench all). Do not edit by hand: rerun it. -->\n\n",
    );
    s.push_str(&format!(
        "Measured {} on the machine described at the end; whole run {:.0} s. Toru = the `toru` \
         release build (opt-level z, LTO) for x86_64 on this machine. Each group alternates Toru, the \
         peers and the floor within every round (A B A B …); tables give medians and the per-round \
         ratios, because absolute times drift on this shared machine. Loopback only.\n\n",
        chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).format("%Y-%m-%d %H:%M UTC"),
        elapsed
    ));
    s.push_str("## Budget\n\n| budget | target | measured | result |\n|---|---|---|---|\n");
    for b in &rep.budget {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            b.item,
            b.target,
            b.measured,
            if b.pass { "pass" } else { "**miss**" }
        ));
    }
    let misses: Vec<&Budget> = rep.budget.iter().filter(|b| !b.pass).collect();
    if !misses.is_empty() {
        s.push_str("\n### Why the misses miss, and what it would take\n\n");
        for b in misses {
            s.push_str(&format!(
                "- **{}** ({}): {}\n",
                b.item, b.measured, b.why_miss
            ));
        }
    }
    for f in failed {
        s.push_str(&format!("\n> group failed: {f}\n"));
    }
    // Numbered groups in their number order, then the rest.
    let mut sections: Vec<&(String, String)> = rep.sections.iter().collect();
    sections.sort_by_key(|(t, _)| {
        t.split('.')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    for (title, body) in sections {
        s.push_str(&format!("\n## {title}\n\n{body}"));
    }
    s.push_str(&format!(
        "\n## How to run\n\n```sh\n./scripts/bench.sh            # installs the peers if missing, builds, runs all, rewrites this file\n\
         ./scripts/bench.sh memory http # some groups; prints Markdown instead\n```\n\n\
         This run: `--rounds {} --kill-rounds {} --http-secs {} --http-rounds {}`.\n\n## Machine\n\n{}",
        opts.rounds,
        opts.kill_rounds,
        opts.http_secs,
        opts.http_rounds,
        machine()
    ));
    s
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("floor-http") {
        let port: u16 = args
            .get(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| err("floor-http PORT"))?;
        return http::serve_floor(port);
    }
    let mut opts = Opts {
        rounds: 3,
        kill_rounds: 5,
        http_secs: 10,
        http_rounds: 3,
    };
    let mut out: Option<PathBuf> = None;
    let mut build = true;
    let mut groups: Vec<String> = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| err(format!("{name} needs a number")))
        };
        match a.as_str() {
            "--rounds" => opts.rounds = num("--rounds")?.max(1),
            "--kill-rounds" => opts.kill_rounds = num("--kill-rounds")?.max(1),
            "--http-secs" => opts.http_secs = num("--http-secs")?.max(1) as u32,
            "--http-rounds" => opts.http_rounds = num("--http-rounds")?.max(1),
            "--out" => out = it.next().map(PathBuf::from),
            "--no-build" => build = false,
            "all" => groups.extend(GROUPS.iter().map(|(n, _)| n.to_string())),
            g if GROUPS.iter().any(|(n, _)| *n == g) => groups.push(g.to_string()),
            other => {
                return Err(err(format!(
                    "unknown argument {other:?}; groups: all {}",
                    GROUPS.map(|(n, _)| n).join(" ")
                )));
            }
        }
    }
    if groups.is_empty() {
        return Err(err(format!(
            "usage: toru-bench all | GROUP… [--rounds N] [--kill-rounds N] [--http-secs S] \
             [--http-rounds N] [--out FILE] [--no-build]; groups: {}",
            GROUPS.map(|(n, _)| n).join(" ")
        )));
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| err("no repo root"))?
        .to_path_buf();
    let exe = std::env::current_exe()?;
    let bins = Bins {
        dir: exe.parent().ok_or_else(|| err("no exe dir"))?.to_path_buf(),
        repo: repo.clone(),
    };
    if build {
        eprintln!("building toru, hello-rust, stress (release)");
        run_cmd(Command::new("cargo").current_dir(&repo).args([
            "build",
            "--release",
            "-p",
            "toru",
            "-p",
            "hello-rust",
            "-p",
            "stress",
            "-p",
            "toru-bench",
        ]))?;
    }
    // The tools the chosen groups need: the peers and wrk for the comparisons, the broker and its
    // client for `mqtt` alone.
    let mut tools: Vec<&str> = Vec::new();
    for g in &groups {
        let need: &[&str] = if g == "mqtt" {
            &["mosquitto", "mosquitto_sub"]
        } else {
            &[
                "wrk",
                "monit",
                "runsvdir",
                "s6-svscan",
                "valgrind",
                "python3",
            ]
        };
        for t in need {
            if !tools.contains(t) {
                tools.push(t);
            }
        }
    }
    for tool in tools {
        if run_cmd(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}")),
        )
        .is_err()
        {
            return Err(err(format!(
                "{tool} is missing: run scripts/bench.sh (it installs the peers)"
            )));
        }
    }
    let all = groups.len() == GROUPS.len();
    let started = Instant::now();
    let mut rep = Report::default();
    let mut failed = Vec::new();
    for g in &groups {
        let Some((_, f)) = GROUPS.iter().find(|(n, _)| n == g) else {
            continue;
        };
        let t = Instant::now();
        eprintln!("== {g}");
        if let Err(e) = f(&bins, &opts, &mut rep) {
            eprintln!("group {g} failed: {e}");
            failed.push(format!("{g}: {e}"));
        }
        eprintln!("== {g} done in {:.0} s", t.elapsed().as_secs_f64());
    }
    let md = render(&rep, &opts, started.elapsed().as_secs_f64(), &failed);
    let out = out.or_else(|| all.then(|| repo.join("docs").join("BENCHMARKS.md")));
    match out {
        Some(path) => {
            std::fs::write(&path, &md)?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{md}"),
    }
    for (k, v) in &rep.values {
        eprintln!("{k} = {v:.1}");
    }
    if !failed.is_empty() {
        return Err(err(format!("{} group(s) failed", failed.len())));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toru-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
