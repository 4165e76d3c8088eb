//! Group 1, idle memory: RSS and PSS of the supervising process(es) with 3 children (children
//! excluded), and Toru with 1, 8 and 32 plugins for the host's cost per plugin.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::host::{Bins, PluginFile, Toru};
use crate::peers::{self, Peer};
use crate::util::{Result, fmt_mib, fmt_ratios, median, rss_pss_kib, smaps_breakdown, sum_mem};
use crate::{Budget, Opts, Report};

/// Let a freshly started tree settle (first heartbeats, lazy allocations) before reading memory.
const SETTLE: Duration = Duration::from_millis(1500);

/// `n` probe plugins named `<prefix><i>`.
pub fn probes(bins: &Bins, prefix: &str, n: usize) -> Vec<PluginFile> {
    (0..n)
        .map(|i| PluginFile {
            src: bins.get("toru-bench-probe"),
            name: format!("{prefix}{i}"),
        })
        .collect()
}

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    let sizes = [3usize, 1, 8, 32];
    let mut toru: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    let mut peer: BTreeMap<String, Vec<(u64, u64, usize)>> = BTreeMap::new();
    let mut breakdown = Vec::new();
    for round in 0..opts.rounds {
        eprintln!("memory: round {}/{}", round + 1, opts.rounds);
        for &n in &sizes {
            let t = Toru::start(bins, &probes(bins, "probe", n), None)?;
            std::thread::sleep(SETTLE);
            toru.entry(n).or_default().push(rss_pss_kib(t.pid())?);
            if n == 3 && round == 0 {
                breakdown = smaps_breakdown(t.pid());
            }
            if n == 3 {
                for kind in peers::ALL {
                    let mut p = Peer::start(kind, bins, 3)?;
                    std::thread::sleep(SETTLE);
                    let pids = p.supervisor_pids();
                    let (r, s) = sum_mem(&pids)?;
                    peer.entry(kind.to_string())
                        .or_default()
                        .push((r, s, pids.len()));
                }
            }
        }
    }
    let med = |v: &[(u64, u64)], pss: bool| {
        median(
            &v.iter()
                .map(|x| if pss { x.1 } else { x.0 } as f64)
                .collect::<Vec<_>>(),
        )
    };
    let t3 = toru.get(&3).cloned().unwrap_or_default();
    let (t3_rss, t3_pss) = (med(&t3, false), med(&t3, true));
    let mut s = String::new();
    s.push_str(
        "Supervising process(es) only, children excluded, 3 children each, idle 1.5 s after start. \
         Toru: the `toru` host process (x86_64 glibc release build). supervisord and monit with \
         their web UI / XML-RPC enabled; runit = `runsvdir` + 3 `runsv`; s6 = `s6-svscan` + 3 \
         `s6-supervise`. Ratio = peer ÷ Toru in the same round.\n\n",
    );
    s.push_str("| supervisor | processes | RSS (median) | PSS (median) | RSS ratio per round | PSS ratio per round |\n|---|---|---|---|---|---|\n");
    s.push_str(&format!(
        "| **Toru** (3 plugins) | 1 | {} | {} | 1 | 1 |\n",
        fmt_mib(t3_rss),
        fmt_mib(t3_pss)
    ));
    for kind in peers::ALL {
        let v = peer.get(&kind.to_string()).cloned().unwrap_or_default();
        let procs = v.first().map(|x| x.2).unwrap_or(0);
        let rr: Vec<f64> = v
            .iter()
            .zip(&t3)
            .map(|(p, t)| p.0 as f64 / t.0 as f64)
            .collect();
        let pr: Vec<f64> = v
            .iter()
            .zip(&t3)
            .map(|(p, t)| p.1 as f64 / t.1 as f64)
            .collect();
        let pairs: Vec<(u64, u64)> = v.iter().map(|x| (x.0, x.1)).collect();
        s.push_str(&format!(
            "| {kind} | {procs} | {} | {} | {} | {} |\n",
            fmt_mib(med(&pairs, false)),
            fmt_mib(med(&pairs, true)),
            fmt_ratios(&rr),
            fmt_ratios(&pr)
        ));
    }
    s.push_str(
        "\n**Toru host per plugin** (probe plugins; the plugin processes themselves excluded):\n\n",
    );
    s.push_str("| plugins | RSS (median) | PSS (median) | RSS per round |\n|---|---|---|---|\n");
    for n in [1usize, 3, 8, 32] {
        let v = toru.get(&n).cloned().unwrap_or_default();
        s.push_str(&format!(
            "| {n} | {} | {} | {} |\n",
            fmt_mib(med(&v, false)),
            fmt_mib(med(&v, true)),
            v.iter()
                .map(|x| format!("{:.2}", x.0 as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    let per = |a: usize, b: usize| -> Vec<f64> {
        let (va, vb) = (
            toru.get(&a).cloned().unwrap_or_default(),
            toru.get(&b).cloned().unwrap_or_default(),
        );
        va.iter()
            .zip(&vb)
            .map(|(x, y)| (y.0 as f64 - x.0 as f64) / (b - a) as f64)
            .collect()
    };
    let per32 = per(1, 32);
    let per8 = per(1, 8);
    let per_pss: Vec<f64> = {
        let (va, vb) = (
            toru.get(&1).cloned().unwrap_or_default(),
            toru.get(&32).cloned().unwrap_or_default(),
        );
        va.iter()
            .zip(&vb)
            .map(|(x, y)| (y.1 as f64 - x.1 as f64) / 31.0)
            .collect()
    };
    let per_kib = median(&per32);
    s.push_str(&format!(
        "\nCost per extra plugin: **{per_kib:.0} KiB RSS** ((32 − 1 plugins) ÷ 31, median; rounds {}), \
         {:.0} KiB PSS; from 1 → 8 plugins: {:.0} KiB RSS.\n",
        per32
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
        median(&per_pss),
        median(&per8)
    ));
    s.push_str("\nWhere the host's RSS is (3 plugins, round 1, `/proc/PID/smaps` by mapping):\n\n| mapping | RSS |\n|---|---|\n");
    for (name, kib) in breakdown.iter().take(8) {
        s.push_str(&format!("| `{name}` | {kib} KiB |\n"));
    }
    rep.section("1. Idle memory", s);
    let kib_of = |pred: &dyn Fn(&str) -> bool| -> u64 {
        breakdown
            .iter()
            .filter(|(n, _)| pred(n))
            .map(|(_, k)| *k)
            .sum()
    };
    let bin_kib = kib_of(&|n| n == "toru");
    let libs_kib = kib_of(&|n| n.contains(".so"));
    let heap_kib = kib_of(&|n| n.starts_with('[') && n != "[vdso]" && n != "[vvar]");
    let why = format!(
        "measured on the x86_64 glibc build, natively (the budget names the musl build; this \
         bench does not build `x86_64-unknown-linux-musl`, although `rustup target add` installs \
         it, and RSS under qemu-user would be qemu's). Of the \
         host's RSS, {bin_kib} KiB are pages of the `toru` binary itself (code and read-only data \
         touched since start), {libs_kib} KiB shared libraries (glibc, ld.so, libgcc_s: shared, \
         hence the lower PSS), {heap_kib} KiB heap, stacks and anonymous memory. A static musl \
         build drops the shared-library mappings but keeps the binary's pages; the heap is \
         already small. What it would take: a smaller, less-touched binary (see section 7: \
         redb, std and the host are most of it) — the binary's resident pages alone are \
         {:.1} MiB — and measuring the musl build on the device (`/proc/PID/smaps_rollup`) to \
         confirm.",
        bin_kib as f64 / 1024.0
    );
    rep.budget(Budget::new(
        "Host RSS with 3 plugins",
        "≤ 2.5 MiB",
        fmt_mib(t3_rss),
        t3_rss <= 2.5 * 1024.0,
        &why,
    ));
    rep.budget(Budget::new(
        "Host PSS with 3 plugins",
        "≤ 1.5 MiB",
        fmt_mib(t3_pss),
        t3_pss <= 1.5 * 1024.0,
        &why,
    ));
    rep.budget(Budget::new(
        "Host memory per extra plugin",
        "≤ 64 KiB",
        format!("{per_kib:.0} KiB RSS"),
        per_kib <= 64.0,
        "",
    ));
    rep.set("toru_rss3_kib", t3_rss);
    rep.set("toru_pss3_kib", t3_pss);
    rep.set("per_plugin_kib", per_kib);
    Ok(())
}
