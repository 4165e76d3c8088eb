//! Group 11, isolation (issue 12): what confining a plugin costs. Spawn → ready of the probe plugin
//! with isolation on and off (`[isolation] enabled = false`), timed over manual restarts; the same
//! for a signed package with `network = "any"` and with `network = "none"` (a new network namespace
//! per start); and the host's memory per plugin with isolation on and off.
//!
//! Isolation is on only when the host runs as root (its own uid per plugin, Landlock, seccomp, the
//! network namespace); off, plugins run as the host's user, and rlimits and cgroup limits stay. The
//! group checks `GET /api/plugins/{id}/security` says what each host is meant to run before it
//! times anything, and refuses to run when not root (both hosts would be "off").
//!
//! One restart is `POST /api/plugins/{id}/restart`; its stages are the host's event stamps
//! (`GET /api/plugins/{id}/events`) from the wall clock just before the request: `stopped`,
//! `restarted` (recorded just before the spawn: resolving the plugin's limits, its folders, its
//! cgroup, the Landlock ruleset and seccomp program, fork, the confinement steps, exec), `started`
//! (the spawn returned), `ready`; and the probe's `main()` report (unpackaged probes only: a
//! package runs from its install folder, away from the probe socket). Every series restarts in
//! turn within each round (A B C A B C …), so the shared machine's drift hits them alike.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use toru_test_kit::package::{HOST_TRIPLE, PackageDir, generate_key};

use crate::host::{Bins, Toru, first_at};
use crate::memory::probes;
use crate::util::{
    Result, TempDir, err, fmt_mib, fmt_ratio, fmt_ratios, fmt_us, http_once, median, now_ns, pct,
    rss_pss_kib,
};
use crate::{Opts, Report};

/// The host's (RSS, PSS) in KiB, per round, for each (isolation, plugin count).
type Memory = Vec<((Mode, usize), Vec<(u64, u64)>)>;

/// Restarts of every series per round.
const RESTARTS_PER_ROUND: usize = 30;
/// Longest one restart may take before the run counts as failed.
const RESTART_WAIT: Duration = Duration::from_secs(5);
/// Let a restart run before reading the events back (the polling would compete with it for the
/// host's thread).
const FIRST_LOOK: Duration = Duration::from_millis(80);
/// Between two reads of the events.
const POLL: Duration = Duration::from_millis(10);
/// Let a freshly started host settle before reading its memory (as group 1).
const SETTLE: Duration = Duration::from_millis(1500);
/// The plugin counts of the memory figure.
const FEW: usize = 1;
const MANY: usize = 9;
/// Config lines both hosts share: no probation, so a package install ends when it is ready.
const COMMON: &str = "[packages]\nprobation_secs = 0\n";
/// The config line that turns isolation off.
const OFF: &str = "[isolation]\nenabled = false\n";

/// Isolation on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    Off,
}

impl Mode {
    fn config(self) -> String {
        match self {
            Mode::On => COMMON.to_string(),
            Mode::Off => format!("{COMMON}{OFF}"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::Off => "off",
        }
    }
}

/// One restarted plugin: which host, which id, what it is.
#[derive(Debug, Clone)]
struct Series {
    mode: Mode,
    id: &'static str,
    what: &'static str,
    /// An unpackaged probe: its `main()` reaches the probe socket.
    probe: bool,
    /// What `security.network` must say.
    network: &'static str,
}

const SERIES: [Series; 5] = [
    Series {
        mode: Mode::Off,
        id: "p0",
        what: "probe, unpackaged",
        probe: true,
        network: "any",
    },
    Series {
        mode: Mode::On,
        id: "p0",
        what: "probe, unpackaged",
        probe: true,
        network: "any",
    },
    Series {
        mode: Mode::Off,
        id: "pkg-any",
        what: "probe package, `network = \"any\"`",
        probe: false,
        network: "any",
    },
    Series {
        mode: Mode::On,
        id: "pkg-any",
        what: "probe package, `network = \"any\"`",
        probe: false,
        network: "any",
    },
    Series {
        mode: Mode::On,
        id: "pkg-none",
        what: "probe package, `network = \"none\"`",
        probe: false,
        network: "none",
    },
];

/// µs from the request to each stage of one restart.
#[derive(Debug, Clone, Copy)]
struct Stages {
    stopped: f64,
    restarted: f64,
    started: f64,
    main: Option<f64>,
    ready: f64,
}

impl Stages {
    /// Spawn → ready: from the host's decision to spawn (`restarted`) to `ready`.
    fn spawn_ready(&self) -> f64 {
        self.ready - self.restarted
    }
}

/// A signed package of the probe binary claiming `id` (the binary's file name gives the probe its
/// id), with `network` in its `[permissions]`.
fn probe_package(bins: &Bins, dir: &Path, key: &Path, id: &str, network: &str) -> Result<PathBuf> {
    let manifest = format!(
        "id = \"{id}\"\nname = \"Bench probe {id}\"\nversion = \"{}\"\nauthor = \"toru-bench\"\n\
         icon = \"⏱\"\nroute = \"/{id}\"\nprotocol = \"1.1\"\nmin_host = \"*\"\n\n[entry]\n{HOST_TRIPLE} = \"{id}\"\n\n\
         [permissions]\nnetwork = \"{network}\"\n",
        env!("CARGO_PKG_VERSION")
    );
    let p = PackageDir::new(&dir.join(format!("src-{id}")), &manifest)?;
    p.exe(id, &bins.get("toru-bench-probe"))?;
    let out = dir.join(format!("{id}.toru"));
    p.pack_ok(bins, Some(key), &out)?;
    Ok(out)
}

/// A host in `mode` with the unpackaged probe `p0` and the packages `pkgs` installed, logged in;
/// checks its security view says `mode` for each series it runs.
fn host(bins: &Bins, mode: Mode, public: &Path, pkgs: &[&Path]) -> Result<Toru> {
    let mut t = Toru::start(bins, &probes(bins, "p", 1), Some(&mode.config()))?;
    // The probe runs as its own uid when isolation is on: let it reach the socket it reports to.
    std::fs::set_permissions(&t.probe.path, std::fs::Permissions::from_mode(0o666))?;
    t.cli(&["trust", "add", &public.to_string_lossy()], "")?;
    t.login()?;
    for pkg in pkgs {
        t.cli(&["plugin", "install", &pkg.to_string_lossy()], "")?;
    }
    for s in SERIES.iter().filter(|s| s.mode == mode) {
        check_security(&t, s)?;
    }
    Ok(t)
}

/// Refuse to time a series whose host does not run it as meant.
fn check_security(t: &Toru, s: &Series) -> Result<()> {
    let v = t.get(&format!("/api/plugins/{}/security", s.id))?;
    let iso = v["isolation"].as_str().unwrap_or("?");
    let net = v["network"].as_str().unwrap_or("?");
    if iso != s.mode.name() || net != s.network {
        return Err(err(format!(
            "{} (isolation {}): the host says isolation {iso}, network {net}",
            s.id,
            s.mode.name()
        )));
    }
    if s.mode == Mode::On && s.network == "none" {
        let enforced = v["protections"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "network" && p["state"] == "enforced")
        });
        if !enforced {
            return Err(err(format!(
                "{}: network = \"none\" is not enforced: {}",
                s.id, v["protections"]
            )));
        }
    }
    Ok(())
}

/// Restart `s.id` on `t` and read its stages back.
fn restart(t: &mut Toru, s: &Series) -> Result<Stages> {
    let (old, state, _) = t.plugin(s.id)?;
    if state != "ready" {
        return Err(err(format!("{} is {state}, not ready", s.id)));
    }
    t.probe.drain();
    let t0 = now_ns();
    let (status, body) = http_once(
        t.addr,
        "POST",
        &format!("/api/plugins/{}/restart", s.id),
        &t.auth_headers(),
        b"{}",
    )?;
    if status != 200 {
        return Err(err(format!(
            "restart {}: {status} {}",
            s.id,
            String::from_utf8_lossy(&body)
        )));
    }
    let main_ns = if s.probe {
        loop {
            match t.probe.recv(RESTART_WAIT) {
                Some((p, ns)) if Some(p) != old => break Some(ns),
                Some(_) => continue,
                None => return Err(err(format!("{}: no new main() within 5 s", s.id))),
            }
        }
    } else {
        None
    };
    std::thread::sleep(FIRST_LOOK);
    let deadline = Instant::now() + RESTART_WAIT;
    loop {
        let list = t.events(s.id)?;
        let at = |kind: &str| first_at(&list, kind, t0);
        if let (Some(st), Some(rs), Some(sd), Some(r)) =
            (at("stopped"), at("restarted"), at("started"), at("ready"))
        {
            let us = |ns: i128| (ns - t0) as f64 / 1000.0;
            return Ok(Stages {
                stopped: us(st),
                restarted: us(rs),
                started: us(sd),
                main: main_ns.map(us),
                ready: us(r),
            });
        }
        if Instant::now() > deadline {
            return Err(err(format!("{}: no ready event after the restart", s.id)));
        }
        std::thread::sleep(POLL);
    }
}

/// The host's (RSS, PSS) in KiB with `n` probe plugins in `mode`, idle.
fn host_memory(bins: &Bins, mode: Mode, n: usize) -> Result<(u64, u64)> {
    let t = Toru::start(bins, &probes(bins, "m", n), Some(&mode.config()))?;
    std::thread::sleep(SETTLE);
    rss_pss_kib(t.pid())
}

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    if !is_root() {
        return Err(err(
            "the isolation group needs a root host (isolation is off without root): run it as root",
        ));
    }
    let dir = TempDir::new("iso")?;
    let (key, public) = generate_key(bins, &dir.0, "bench")?;
    let pkg_any = probe_package(bins, &dir.0, &key, "pkg-any", "any")?;
    let pkg_none = probe_package(bins, &dir.0, &key, "pkg-none", "none")?;

    let mut samples: Vec<Vec<Stages>> = vec![Vec::new(); SERIES.len()];
    // Per round: median spawn → ready and request → ready of each series.
    let mut rounds_spawn: Vec<Vec<f64>> = vec![Vec::new(); SERIES.len()];
    let mut rounds_req: Vec<Vec<f64>> = vec![Vec::new(); SERIES.len()];
    let mut notes = Vec::new();
    let started = Instant::now();
    for round in 0..opts.rounds {
        eprintln!("isolation: restarts, round {}/{}", round + 1, opts.rounds);
        let mut off = host(bins, Mode::Off, &public, &[&pkg_any])?;
        let mut on = host(bins, Mode::On, &public, &[&pkg_any, &pkg_none])?;
        let ids: Vec<String> = SERIES.iter().map(|s| s.id.to_string()).collect();
        off.wait_ready(&ids[..1], RESTART_WAIT)?;
        on.wait_ready(&ids[..1], RESTART_WAIT)?;
        let mut this: Vec<Vec<Stages>> = vec![Vec::new(); SERIES.len()];
        for i in 0..RESTARTS_PER_ROUND {
            // Rotate who goes first.
            for k in 0..SERIES.len() {
                let j = (i + k) % SERIES.len();
                let s = &SERIES[j];
                let t = match s.mode {
                    Mode::On => &mut on,
                    Mode::Off => &mut off,
                };
                match restart(t, s) {
                    Ok(st) => this[j].push(st),
                    Err(e) => notes.push(format!(
                        "round {}: {} ({}): {e}",
                        round + 1,
                        s.what,
                        s.mode.name()
                    )),
                }
            }
        }
        for (j, v) in this.into_iter().enumerate() {
            rounds_spawn[j].push(median(
                &v.iter().map(Stages::spawn_ready).collect::<Vec<_>>(),
            ));
            rounds_req[j].push(median(&v.iter().map(|s| s.ready).collect::<Vec<_>>()));
            samples[j].extend(v);
        }
    }
    let restarts_secs = started.elapsed().as_secs_f64();

    // Memory, on and off alternating, fresh hosts.
    let mut mem: Memory = Vec::new();
    for round in 0..opts.rounds {
        eprintln!("isolation: memory, round {}/{}", round + 1, opts.rounds);
        for mode in [Mode::Off, Mode::On] {
            for n in [FEW, MANY] {
                let m = host_memory(bins, mode, n)?;
                match mem.iter_mut().find(|(k, _)| *k == (mode, n)) {
                    Some((_, v)) => v.push(m),
                    None => mem.push(((mode, n), vec![m])),
                }
            }
        }
    }

    let s = render(
        opts,
        &samples,
        &rounds_spawn,
        &rounds_req,
        &mem,
        &notes,
        restarts_secs,
    );
    let on_off = |j_on: usize, j_off: usize| {
        median(
            &samples[j_on]
                .iter()
                .map(Stages::spawn_ready)
                .collect::<Vec<_>>(),
        ) / median(
            &samples[j_off]
                .iter()
                .map(Stages::spawn_ready)
                .collect::<Vec<_>>(),
        )
    };
    rep.set("iso_spawn_ready_on_off", on_off(1, 0));
    rep.set(
        "iso_spawn_ready_on_us",
        median(
            &samples[1]
                .iter()
                .map(Stages::spawn_ready)
                .collect::<Vec<_>>(),
        ),
    );
    rep.section("11. Isolation", s);
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// The section's Markdown.
fn render(
    opts: &Opts,
    samples: &[Vec<Stages>],
    rounds_spawn: &[Vec<f64>],
    rounds_req: &[Vec<f64>],
    mem: &Memory,
    notes: &[String],
    restarts_secs: f64,
) -> String {
    let col = |j: usize, f: &dyn Fn(&Stages) -> Option<f64>| -> Vec<f64> {
        samples[j].iter().filter_map(f).collect()
    };
    let p50 = |v: &[f64]| fmt_us(median(v));
    let p90 = |v: &[f64]| fmt_us(pct(v, 90.0));
    let mut s = format!(
        "What confining a plugin costs. Two hosts side by side, both as root: one with isolation \
         on (the default as root: the plugin's own uid, its folders, Landlock, seccomp, a network \
         namespace for `network = \"none\"`), one with `[isolation] enabled = false` (the host's \
         user, no Landlock, seccomp or namespace; rlimits and cgroup limits stay). Each plugin is \
         restarted with `POST /api/plugins/{{id}}/restart`, {RESTARTS_PER_ROUND} times per round, \
         {} rounds (fresh hosts each), every series in turn; {} restarts in {restarts_secs:.0} s. \
         *Spawn → ready* = the host's `restarted` event stamp (taken just before it resolves the \
         plugin's limits, prepares its folders and cgroup, builds the Landlock ruleset and the \
         seccomp program, forks, confines and execs) to its `ready` stamp (the plugin answered \
         `ready`); *request → ready* adds the stop of the old process from the wall clock just \
         before the request. The probe plugin (SDK, tokio) as in the other groups; the package \
         is the same binary signed and installed, whose manifest asks for the network.\n\n",
        opts.rounds,
        samples.iter().map(Vec::len).sum::<usize>()
    );
    s.push_str(
        "| plugin | isolation | spawn → ready p50 | p90 | request → ready p50 | p90 | n | spawn → ready per round |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (j, ser) in SERIES.iter().enumerate() {
        let sr = col(j, &|x| Some(x.spawn_ready()));
        let rr = col(j, &|x| Some(x.ready));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            ser.what,
            if ser.mode == Mode::On {
                "**on**"
            } else {
                "off"
            },
            p50(&sr),
            p90(&sr),
            p50(&rr),
            p90(&rr),
            sr.len(),
            rounds_spawn[j]
                .iter()
                .map(|x| fmt_us(*x))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    let ratio = |a: usize, b: usize, v: &[Vec<f64>]| -> (f64, Vec<f64>) {
        let per: Vec<f64> = v[a].iter().zip(&v[b]).map(|(x, y)| x / y).collect();
        (median(&per), per)
    };
    let (r_probe, per_probe) = ratio(1, 0, rounds_spawn);
    let (r_pkg, per_pkg) = ratio(3, 2, rounds_spawn);
    let (r_net, per_net) = ratio(4, 3, rounds_spawn);
    let (r_req, per_req) = ratio(1, 0, rounds_req);
    s.push_str(&format!(
        "\nOn ÷ off, spawn → ready (median of the per-round ratios): unpackaged probe **{}** \
         ({}); package {} ({}). Request → ready, unpackaged: {} ({}). `network = \"none\"` ÷ \
         `\"any\"`, both on: {} ({}).\n",
        fmt_ratio(r_probe),
        fmt_ratios(&per_probe),
        fmt_ratio(r_pkg),
        fmt_ratios(&per_pkg),
        fmt_ratio(r_req),
        fmt_ratios(&per_req),
        fmt_ratio(r_net),
        fmt_ratios(&per_net),
    ));
    s.push_str(
        "\nStages, p50 from the request (event stamps of the host; `main()` from the probe, \
         unpackaged only):\n\n\
         | plugin | isolation | `stopped` | `restarted` | `started` | `main()` | `ready` | `restarted` → `started` | `started` → `ready` |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (j, ser) in SERIES.iter().enumerate() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            ser.what,
            ser.mode.name(),
            p50(&col(j, &|x| Some(x.stopped))),
            p50(&col(j, &|x| Some(x.restarted))),
            p50(&col(j, &|x| Some(x.started))),
            p50(&col(j, &|x| x.main)),
            p50(&col(j, &|x| Some(x.ready))),
            p50(&col(j, &|x| Some(x.started - x.restarted))),
            p50(&col(j, &|x| Some(x.ready - x.started))),
        ));
    }
    let diff = |on: usize, off: usize, f: &dyn Fn(&Stages) -> Option<f64>| {
        let d = median(&col(on, f)) - median(&col(off, f));
        if d < 0.0 {
            format!("−{}", fmt_us(-d))
        } else {
            format!("+{}", fmt_us(d))
        }
    };
    let host_side = |x: &Stages| Some(x.started - x.restarted);
    let plugin_side = |x: &Stages| Some(x.ready - x.started);
    s.push_str(&format!(
        "\nOn − off, p50: `restarted` → `started` (the host's side of the spawn) unpackaged {}, \
         package {}; `started` → `ready` (the plugin starting confined, and the init → ready round \
         trip) unpackaged {}, package {}.\n",
        diff(1, 0, &host_side),
        diff(3, 2, &host_side),
        diff(1, 0, &plugin_side),
        diff(3, 2, &plugin_side),
    ));
    let get = |mode: Mode, n: usize| -> Vec<(u64, u64)> {
        mem.iter()
            .find(|(k, _)| *k == (mode, n))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    s.push_str(&format!(
        "\n**Host memory per plugin** (the `toru` process alone, probe plugins excluded, idle \
         {:.1} s after `READY=1`, fresh hosts, on and off alternating; {} rounds):\n\n\
         | isolation | plugins | RSS (median) | PSS (median) | RSS per round |\n|---|---|---|---|---|\n",
        SETTLE.as_secs_f64(),
        opts.rounds
    ));
    let med = |v: &[(u64, u64)], pss: bool| {
        median(
            &v.iter()
                .map(|x| if pss { x.1 } else { x.0 } as f64)
                .collect::<Vec<_>>(),
        )
    };
    let mut per = Vec::new();
    for mode in [Mode::Off, Mode::On] {
        for n in [FEW, MANY] {
            let v = get(mode, n);
            s.push_str(&format!(
                "| {} | {n} | {} | {} | {} |\n",
                mode.name(),
                fmt_mib(med(&v, false)),
                fmt_mib(med(&v, true)),
                v.iter()
                    .map(|x| format!("{:.2}", x.0 as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
        }
        let (few, many) = (get(mode, FEW), get(mode, MANY));
        let extra = (MANY - FEW) as f64;
        let rss: Vec<f64> = few
            .iter()
            .zip(&many)
            .map(|(a, b)| (b.0 as f64 - a.0 as f64) / extra)
            .collect();
        let pss: Vec<f64> = few
            .iter()
            .zip(&many)
            .map(|(a, b)| (b.1 as f64 - a.1 as f64) / extra)
            .collect();
        per.push((mode, rss, pss));
    }
    s.push('\n');
    for (mode, rss, pss) in &per {
        s.push_str(&format!(
            "- Per extra plugin, isolation {}: **{:.0} KiB RSS** (({MANY} − {FEW}) ÷ {}, median; \
             rounds {}), {:.0} KiB PSS.\n",
            mode.name(),
            median(rss),
            MANY - FEW,
            rss.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            median(pss),
        ));
    }
    for n in notes {
        s.push_str(&format!("\n- {n}"));
    }
    if !notes.is_empty() {
        s.push('\n');
    }
    s
}
