//! Group 7, size: stripped release binaries of `toru` and the example plugin for the device
//! targets (aarch64 musl, armv7 glibc), built with the workspace's release profile (opt-level z,
//! LTO, one codegen unit, panic=abort, strip).

use std::process::Command;

use crate::host::Bins;
use crate::util::{Result, err, run_cmd};
use crate::{Budget, Opts, Report};

/// The device targets.
const TARGETS: [&str; 2] = [
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-gnueabihf",
];
/// The binaries measured.
const BINARIES: [&str; 2] = ["toru", "hello-rust"];

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB ({bytes} B)", bytes as f64 / 1024.0)
}

/// Run the group.
pub fn run(bins: &Bins, _opts: &Opts, rep: &mut Report) -> Result<()> {
    let mut s = String::from(
        "`cargo build --release --target T -p toru -p hello-rust` (the profile strips); size after \
         `llvm-strip --strip-all` on a copy shown too (equal when the profile already stripped \
         everything).\n\n| target | binary | file size | after llvm-strip |\n|---|---|---|---|\n",
    );
    let mut toru_aarch64 = None;
    for target in TARGETS {
        eprintln!("size: building for {target}");
        run_cmd(
            Command::new("cargo")
                .current_dir(&bins.repo)
                .args(["build", "--release", "--target", target])
                .args(BINARIES.iter().flat_map(|b| ["-p", b])),
        )?;
        for b in BINARIES {
            let path = bins
                .repo
                .join("target")
                .join(target)
                .join("release")
                .join(b);
            let size = std::fs::metadata(&path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?
                .len();
            let copy = std::env::temp_dir().join(format!("tb-strip-{}-{b}", std::process::id()));
            std::fs::copy(&path, &copy)?;
            let stripped = run_cmd(Command::new("llvm-strip").arg("--strip-all").arg(&copy))
                .ok()
                .and_then(|_| std::fs::metadata(&copy).ok())
                .map(|m| kib(m.len()))
                .unwrap_or_else(|| "—".into());
            let _ = std::fs::remove_file(&copy);
            if b == "toru" && target.starts_with("aarch64") {
                toru_aarch64 = Some(size);
            }
            s.push_str(&format!(
                "| `{target}` | `{b}` | {} | {stripped} |\n",
                kib(size)
            ));
        }
    }
    let host = bins.get("toru");
    if let Ok(m) = std::fs::metadata(&host) {
        s.push_str(&format!(
            "| `x86_64-unknown-linux-gnu` (this machine) | `toru` | {} | |\n",
            kib(m.len())
        ));
    }
    s.push_str(&symbol_breakdown(bins));
    rep.section("7. Size", s);
    let t = toru_aarch64.unwrap_or(u64::MAX);
    rep.set("size_aarch64", t as f64);
    rep.budget(Budget::new(
        "`toru` stripped, aarch64-musl",
        "≤ 4 MiB",
        format!("{:.2} MiB", t as f64 / 1048576.0),
        t <= 4 * 1024 * 1024,
        &format!(
            "{:.0} KiB over. See the by-crate table in section 7: redb is the largest single \
             crate, then std and the host itself; `toml` + `toml_parser` and std's backtrace \
             symbolizer (`gimli`, `rustc_demangle`, `addr2line`, kept although panics abort) are \
             the cheapest to remove. What it would take: a small parser for the flat config file \
             instead of `toml`, and/or building std with `panic_immediate_abort` \
             (`-Zbuild-std`, nightly) for the device artefact.",
            (t as f64 - 4096.0 * 1024.0) / 1024.0
        ),
    ));
    Ok(())
}

/// Code size by crate, from the symbols of the profiling build (x86_64, same profile but not
/// stripped; built by the `profile` group). A proxy for where the ARM bytes go.
fn symbol_breakdown(bins: &Bins) -> String {
    let bin = bins
        .repo
        .join("target")
        .join("bench-profile")
        .join("release")
        .join("toru");
    let Ok(out) = run_cmd(
        Command::new("nm")
            .args(["-S", "-C", "--defined-only"])
            .arg(&bin),
    ) else {
        return "\n(No symbol breakdown: run the `profile` group first, it builds the host with symbols.)\n".into();
    };
    let mut by: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut total = 0u64;
    for line in out.lines() {
        let mut it = line.splitn(4, ' ');
        let (_, Some(size), Some(kind), Some(name)) = (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "r" | "R" | "W" | "w") {
            continue;
        }
        let Ok(size) = u64::from_str_radix(size, 16) else {
            continue;
        };
        let head = name.trim_start_matches(['<', '&', '*', ' ']);
        let head = head.strip_prefix("impl ").unwrap_or(head);
        let head = head.strip_prefix("mut ").unwrap_or(head);
        let krate = head
            .split([':', '<', ' ', '>'])
            .next()
            .filter(|k| !k.is_empty())
            .unwrap_or("?");
        let krate = match krate {
            "core" | "alloc" | "std" | "__rustc" => "std / core / alloc",
            k if k.len() == 1 => "(generic impls `<T as …>`)",
            k if k.starts_with('_') || k.starts_with('.') => "(C / runtime / unnamed)",
            k => k,
        };
        *by.entry(krate.to_string()).or_default() += size;
        total += size;
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    let mut s = format!(
        "\nWhere the bytes go: code and read-only data by crate, from the symbols of the x86_64 \
         build with symbols (`target/bench-profile`, same profile; {:.0} KiB in sized symbols). A \
         generic instantiated for a host type is counted under the crate that defines the generic.\n\n\
         | crate | KiB | share |\n|---|---|---|\n",
        total as f64 / 1024.0
    );
    for (k, b) in v.iter().take(14) {
        s.push_str(&format!(
            "| {k} | {:.0} | {:.1}% |\n",
            *b as f64 / 1024.0,
            100.0 * *b as f64 / total.max(1) as f64
        ));
    }
    s
}
