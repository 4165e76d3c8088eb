//! The request-path profile: the host built with the release profile but symbols kept (a separate
//! target dir, so the device build is untouched) runs under `valgrind --tool=callgrind` with
//! instrumentation off until the bench has warmed the path; then N forwarded requests
//! (`GET /api/plugins/route/p/`, keep-alive, Bearer) are counted and dumped. Instruction counts
//! per request are stable on a noisy machine.

use std::process::Command;
use std::time::Duration;

use crate::host::{Bins, Toru, install};
use crate::memory::probes;
use crate::util::{HttpConn, Result, TempDir, err, run_cmd};
use crate::{Opts, Report};

/// Requests counted.
const N: usize = 1000;
/// Requests before counting starts.
const WARMUP: usize = 100;

/// Run the group.
pub fn run(bins: &Bins, _opts: &Opts, rep: &mut Report) -> Result<()> {
    let target_dir = bins.repo.join("target").join("bench-profile");
    eprintln!(
        "profile: building toru with symbols into {}",
        target_dir.display()
    );
    run_cmd(
        Command::new("cargo")
            .current_dir(&bins.repo)
            .args(["build", "--release", "-p", "toru", "--target-dir"])
            .arg(&target_dir)
            .env("CARGO_PROFILE_RELEASE_STRIP", "false")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only"),
    )?;
    let pbins = Bins {
        dir: target_dir.join("release"),
        repo: bins.repo.clone(),
    };
    let root = TempDir::new("cg")?;
    let mut plugins = probes(bins, "p", 1);
    plugins[0].name = "p".into();
    install(&toru_test_kit::plugins_dir(&root.0), &plugins)?;
    let out = root.join("cg.out");
    let wrapper = vec![
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        "--instr-atstart=no".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let mut t = Toru::start_in(&pbins, root, None, &wrapper, true)?;
    t.login()?;
    let headers = t.auth_headers();
    let mut c = HttpConn::connect(t.addr)?;
    for _ in 0..WARMUP {
        c.request("GET", "/api/plugins/route/p/", &headers, b"")?;
    }
    let pid = t.pid().to_string();
    run_cmd(Command::new("callgrind_control").args(["-i", "on", &pid]))?;
    // Instrumentation on costs one pass through the code; warm again, then zero and count.
    for _ in 0..WARMUP {
        c.request("GET", "/api/plugins/route/p/", &headers, b"")?;
    }
    run_cmd(Command::new("callgrind_control").args(["-z", &pid]))?;
    for _ in 0..N {
        let st = c
            .request("GET", "/api/plugins/route/p/", &headers, b"")?
            .status;
        if st != 200 {
            return Err(err(format!("forwarded request under callgrind: {st}")));
        }
    }
    run_cmd(Command::new("callgrind_control").args(["-d", &pid]))?;
    std::thread::sleep(Duration::from_millis(500));
    let dump = std::fs::read_dir(&t.root.0)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cg.out."))
        })
        .max()
        .ok_or_else(|| err("no callgrind dump"))?;
    let ann = run_cmd(
        Command::new("callgrind_annotate")
            .arg("--inclusive=no")
            .arg("--auto=no")
            .arg("--threshold=100")
            .arg(&dump),
    )?;
    let ann_incl = run_cmd(
        Command::new("callgrind_annotate")
            .arg("--inclusive=yes")
            .arg("--auto=no")
            .arg("--threshold=99")
            .arg(&dump),
    )?;
    let saved = bins.repo.join("target").join("bench-callgrind.out");
    let _ = std::fs::copy(&dump, &saved);
    let total: f64 = ann
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    let self_rows = parse_annotate(&ann);
    let incl_rows = parse_annotate(&ann_incl);
    let mut by_crate: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for r in &self_rows {
        *by_crate.entry(r.krate.clone()).or_default() += r.ir;
    }
    let mut by_crate: Vec<(String, f64)> = by_crate.into_iter().collect();
    by_crate.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut s = format!(
        "`valgrind --tool=callgrind` on the release build with symbols (`target/bench-profile`, same \
         opt-level z + LTO), instrumentation switched on after {WARMUP} warm-up requests, then {N} \
         forwarded `GET /api/plugins/route/p/` on one keep-alive connection (Bearer token); the \
         plugin process is not instrumented and kernel time is not counted. **{:.0} instructions \
         per forwarded request** in the host (everything it executed in that window, heartbeats \
         included). The dump is kept at `target/bench-callgrind.out` \
         (`callgrind_annotate target/bench-callgrind.out`).\n\nSelf cost by crate (file of the \
         code, so inlined code counts where it was inlined):\n\n| crate | Ir per request | share |\n|---|---|---|\n",
        total / N as f64
    );
    for (k, v) in by_crate.iter().take(12) {
        s.push_str(&format!(
            "| {k} | {:.0} | {:.1}% |\n",
            v / N as f64,
            100.0 * v / total
        ));
    }
    s.push_str("\nTop self cost:\n\n| Ir per request | share | function |\n|---|---|---|\n");
    for r in self_rows.iter().take(15) {
        s.push_str(&format!(
            "| {:.0} | {:.1}% | `{}` |\n",
            r.ir / N as f64,
            100.0 * r.ir / total,
            short(&r.function)
        ));
    }
    s.push_str("\nTop inclusive cost below the runtime's poll loop (share < 90%):\n\n| Ir per request | share | function |\n|---|---|---|\n");
    for r in incl_rows.iter().filter(|r| r.ir / total < 0.9).take(20) {
        s.push_str(&format!(
            "| {:.0} | {:.1}% | `{}` |\n",
            r.ir / N as f64,
            100.0 * r.ir / total,
            short(&r.function)
        ));
    }
    rep.set("ir_per_request", total / N as f64);
    rep.section("Request-path profile (callgrind)", s);
    Ok(())
}

/// One line of `callgrind_annotate`.
struct Row {
    ir: f64,
    function: String,
    krate: String,
}

/// A function name cut to a table-friendly length.
fn short(name: &str) -> String {
    const MAX: usize = 120;
    match name.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

/// Which crate a cost line belongs to, from its source file (or the function's path when the
/// file is unknown).
fn crate_of(file: &str, function: &str, object: &str) -> String {
    if let Some(rest) = file.split("/registry/src/").nth(1) {
        let dir = rest.split('/').nth(1).unwrap_or("?");
        return dir
            .rsplit_once('-')
            .map_or(dir, |(name, _)| name)
            .to_string();
    }
    if file.starts_with("/rustc/") {
        return "std / core / alloc".into();
    }
    if file.contains("toru-plugin-api/") {
        return "toru-plugin-api".into();
    }
    if file.starts_with("src/") || file.starts_with("/work/main/src/") {
        return "toru (src/, with what was inlined there)".into();
    }
    if object.contains("libc.so") {
        return if file.contains("malloc") {
            "glibc malloc/free".into()
        } else {
            "glibc (other)".into()
        };
    }
    if object.contains("ld-linux") {
        return "ld.so".into();
    }
    let head = function.trim_start_matches('<');
    let first = head.split("::").next().unwrap_or("?");
    match first {
        "alloc" | "core" | "std" | "__rustc" => "std / core / alloc".into(),
        "" => "?".into(),
        other => other.to_string(),
    }
}

/// Parse the cost lines of `callgrind_annotate` (`1,234 ( 5.6%)  file:function [object]`).
fn parse_annotate(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (num, rest) = l.split_once(' ')?;
            let ir: f64 = num.replace(',', "").parse().ok()?;
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('(')?.split_once(')')?.1.trim();
            if rest.contains("PROGRAM TOTALS") {
                return None;
            }
            let (loc, object) = match rest.rsplit_once(" [") {
                Some((a, b)) => (a, b.trim_end_matches(']')),
                None => (rest, ""),
            };
            let (file, function) = loc.split_once(':').unwrap_or(("???", loc));
            Some(Row {
                ir,
                function: function.to_string(),
                krate: crate_of(file, function, object),
            })
        })
        .collect()
}
