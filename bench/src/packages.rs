//! Group 10, packages: how long `toru plugin install|update` of a 2 MB package takes, and the
//! host's peak RSS above idle while it installs a 20 MB one.
//!
//! Packages are the stress plugin (the release build) plus a file of random bytes named in the
//! manifest's `files` (so it does not compress), signed with a key from `toru key generate` that
//! the host trusts; `[packages] probation_secs = 0`, so a transaction ends when the new version is
//! ready: upload over the control socket, signature, extraction, the entry's `--metadata`, the
//! switch commit, the old version stopped, the new one started and ready, the finish commit.
//! Times run from the CLI's start to its exit. Peak RSS is `VmHWM` of the host process, reset
//! (`/proc/PID/clear_refs`) just before the install, minus `VmRSS` just before it; a sampler reads
//! `/proc/PID/smaps` every few ms meanwhile to say which mappings the peak is in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use toru_test_kit::package::{PackageDir, generate_key};

use crate::host::{Bins, Toru};
use crate::util::{Result, TempDir, err, fmt_mib, fmt_us, http_once, median, smaps_breakdown};
use crate::{Budget, Opts, Report};

/// The package id (and route).
const ID: &str = "bench-pkg";
/// The size the "2 MB package" is padded to, in bytes.
const SMALL_BYTES: u64 = 2_000_000;
/// The random file of the "20 MB package", in bytes.
const BIG_PAD_BYTES: usize = 20 * 1024 * 1024;
/// Updates timed per round after the install.
const UPDATES: usize = 5;
/// Updates through the HTTP API per round (upload and confirm timed apart).
const HTTP_UPDATES: usize = 2;
/// Let a fresh host settle before its idle RSS is read.
const SETTLE: Duration = Duration::from_millis(1500);
/// How often the sampler reads `/proc/PID/smaps` during an install.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// The goal: the package streams through the host.
const PEAK_ABOVE_IDLE_KIB: f64 = 1024.0;
/// The host's config: no probation.
const CONFIG: &str = "[packages]\nprobation_secs = 0\n";

/// `n` random bytes (`/dev/urandom`): they do not compress.
fn random(n: usize) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    std::fs::File::open("/dev/urandom")?
        .take(n as u64)
        .read_to_end(&mut v)?;
    Ok(v)
}

/// A signed stress package `version` with a random `pad.bin` of `pad` bytes; its path.
fn pack(bins: &Bins, dir: &Path, key: &Path, version: &str, pad: &[u8]) -> Result<PathBuf> {
    let p = PackageDir::stress(bins, &dir.join(format!("src-{version}")), ID, version, "ok")?;
    let manifest = p.manifest()?.replace(
        "files = [\"stress.json\"]",
        "files = [\"stress.json\", \"pad.bin\"]",
    );
    p.file("manifest.toml", manifest.as_bytes())?;
    p.file("pad.bin", pad)?;
    let out = dir.join(format!("{ID}-{version}.toru"));
    p.pack_ok(bins, Some(key), &out)?;
    std::fs::remove_dir_all(&p.dir)?;
    Ok(out)
}

fn size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)?.len())
}

/// A host with `public` trusted and an admin token.
fn host(bins: &Bins, public: &Path) -> Result<Toru> {
    let mut t = Toru::start(bins, &[], Some(CONFIG))?;
    t.cli(&["trust", "add", &public.to_string_lossy()], "")?;
    t.login()?;
    Ok(t)
}

/// `toru plugin VERB PKG`, timed from start to exit.
fn cli_install(t: &Toru, verb: &str, pkg: &Path) -> Result<f64> {
    let t0 = Instant::now();
    t.cli(&["plugin", verb, &pkg.to_string_lossy()], "")?;
    Ok(t0.elapsed().as_secs_f64() * 1e6)
}

/// Upload then confirm through the API; (upload → 201, confirm → 200) in µs.
fn http_install(t: &Toru, pkg: &Path) -> Result<(f64, f64)> {
    let bytes = std::fs::read(pkg)?;
    let mut sig = pkg.as_os_str().to_owned();
    sig.push(".minisig");
    let sig = std::fs::read(PathBuf::from(sig))?;
    let mut headers = t.auth_headers();
    headers.retain(|h| !h.starts_with("Content-Type"));
    headers.push("Content-Type: application/octet-stream".into());
    headers.push(format!(
        "X-Toru-Signature: {}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    ));
    let t0 = Instant::now();
    let (status, body) = http_once(t.addr, "POST", "/api/packages/upload", &headers, &bytes)?;
    let upload = t0.elapsed().as_secs_f64() * 1e6;
    if status != 201 {
        return Err(err(format!(
            "upload: {status} {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let token = v["upload"].as_str().ok_or("no upload token")?;
    let t1 = Instant::now();
    let (status, body) = http_once(
        t.addr,
        "POST",
        &format!("/api/packages/upload/{token}/confirm"),
        &t.auth_headers(),
        b"{}",
    )?;
    let confirm = t1.elapsed().as_secs_f64() * 1e6;
    if status != 200 {
        return Err(err(format!(
            "confirm: {status} {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok((upload, confirm))
}

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

/// The host's memory around one install.
#[derive(Debug, Clone, Default)]
struct Peak {
    /// `VmRSS` just before, KiB.
    before: u64,
    /// `VmHWM` right after, KiB.
    peak: u64,
    /// `VmRSS` once idle again, KiB.
    after: u64,
    /// The largest smaps sample during the install: its mappings that grew over the one before
    /// the install (name, KiB).
    grew: Vec<(String, i64)>,
}

/// Run `install` while sampling the host's mappings; the peak and where it was.
fn measure(pid: u32, install: impl FnOnce() -> Result<f64>) -> Result<(Peak, f64)> {
    let base = smaps_breakdown(pid);
    let before = status_kib(pid, "VmRSS")?;
    reset_peak(pid)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (took, largest) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut best: Vec<(String, u64)> = Vec::new();
            let mut best_total = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = smaps_breakdown(pid);
                let total: u64 = now.iter().map(|(_, k)| k).sum();
                if total > best_total {
                    best_total = total;
                    best = now;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            best
        });
        let took = install();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (took, sampler.join().unwrap_or_default())
    });
    let took = took?;
    let peak = status_kib(pid, "VmHWM")?;
    std::thread::sleep(SETTLE);
    let after = status_kib(pid, "VmRSS")?;
    let mut grew: Vec<(String, i64)> = largest
        .iter()
        .map(|(name, kib)| {
            let was = base.iter().find(|(n, _)| n == name).map_or(0, |(_, k)| *k);
            (name.clone(), *kib as i64 - was as i64)
        })
        .filter(|(_, d)| *d != 0)
        .collect();
    grew.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    Ok((
        Peak {
            before,
            peak,
            after,
            grew,
        },
        took,
    ))
}

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    let dir = TempDir::new("pkgs")?;
    let (key, public) = generate_key(bins, &dir.0, "bench")?;

    // The 2 MB packages: the plain package's size tells how much padding makes 2 MB.
    let probe = pack(bins, &dir.0, &key, "0.0.1", &[])?;
    let pad = random(SMALL_BYTES.saturating_sub(size(&probe)?) as usize)?;
    let versions: Vec<String> = (0..=(UPDATES + HTTP_UPDATES))
        .map(|i| format!("1.0.{i}"))
        .collect();
    let mut small = Vec::new();
    for v in &versions {
        small.push(pack(bins, &dir.0, &key, v, &pad)?);
    }
    let small_bytes = size(&small[0])?;
    let big_pad = random(BIG_PAD_BYTES)?;
    let big = [
        pack(bins, &dir.0, &key, "2.0.0", &big_pad)?,
        pack(bins, &dir.0, &key, "2.0.1", &big_pad)?,
    ];
    let big_bytes = size(&big[0])?;

    let mut installs = Vec::new();
    let mut updates = Vec::new();
    let mut uploads = Vec::new();
    let mut confirms = Vec::new();
    let mut small_peaks: Vec<Peak> = Vec::new();
    let mut cli_peaks: Vec<Peak> = Vec::new();
    let mut http_peaks: Vec<Peak> = Vec::new();
    let mut warm_peaks: Vec<Peak> = Vec::new();
    for round in 0..opts.rounds {
        eprintln!("packages: round {}/{}", round + 1, opts.rounds);
        // Times.
        let t = host(bins, &public)?;
        installs.push(cli_install(&t, "install", &small[0])?);
        for pkg in &small[1..=UPDATES] {
            updates.push(cli_install(&t, "update", pkg)?);
        }
        for pkg in &small[UPDATES + 1..] {
            let (u, c) = http_install(&t, pkg)?;
            uploads.push(u);
            confirms.push(c);
        }
        drop(t);

        // Memory, each first install on a fresh idle host: 20 MB through the CLI (then a second
        // one, warm), 20 MB through the API, 2 MB through the CLI.
        let t = host(bins, &public)?;
        let pid = t.pid();
        std::thread::sleep(SETTLE);
        let (p, _) = measure(pid, || cli_install(&t, "install", &big[0]))?;
        cli_peaks.push(p);
        let (p, _) = measure(pid, || cli_install(&t, "update", &big[1]))?;
        warm_peaks.push(p);
        drop(t);
        let t = host(bins, &public)?;
        let pid = t.pid();
        std::thread::sleep(SETTLE);
        let (p, _) = measure(pid, || http_install(&t, &big[0]).map(|(u, c)| u + c))?;
        http_peaks.push(p);
        drop(t);
        let t = host(bins, &public)?;
        let pid = t.pid();
        std::thread::sleep(SETTLE);
        let (p, _) = measure(pid, || cli_install(&t, "install", &small[0]))?;
        small_peaks.push(p);
    }

    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{} | {} | {}", fmt_us(lo), fmt_us(hi), v.len())
    };
    let mut s = format!(
        "The stress plugin (release build) plus a file of random bytes named in `files`, signed, \
         packed by `toru plugin pack`; the host trusts the key; `probation_secs = 0`, so each \
         time is the transaction alone: the package streamed over the control socket (64 KiB \
         frames) or the HTTP body into `.staging`, the signature checked, the archive extracted, \
         the entry's `--metadata` run, the switch committed, the old version stopped, the new one \
         started and ready, the finish committed. From the CLI's start to its exit; {} rounds, a \
         fresh host each.\n\n",
        opts.rounds
    );
    s.push_str("| what | p50 | min | max | n |\n|---|---|---|---|---|\n");
    let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
    s.push_str(&format!(
        "| `toru plugin install` of a {} package (first install) | {} | {} |\n",
        mb(small_bytes),
        fmt_us(median(&installs)),
        spread(&installs)
    ));
    s.push_str(&format!(
        "| `toru plugin update` of a {} package (old version stopped, new one ready) | {} | {} |\n",
        mb(small_bytes),
        fmt_us(median(&updates)),
        spread(&updates)
    ));
    s.push_str(&format!(
        "| … through the API: `POST /api/packages/upload` (stream, signature, extraction, `--metadata`) | {} | {} |\n",
        fmt_us(median(&uploads)),
        spread(&uploads)
    ));
    s.push_str(&format!(
        "| … then `POST …/confirm` (switch, stop, start, ready, finish) | {} | {} |\n",
        fmt_us(median(&confirms)),
        spread(&confirms)
    ));

    let kib = |v: &[Peak], f: fn(&Peak) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let above = |p: &Peak| p.peak as f64 - p.before as f64;
    let kept = |p: &Peak| p.after as f64 - p.before as f64;
    s.push_str(&format!(
        "\nThe host's memory while it installs, each on a fresh host idle for 1.5 s, no plugin yet \
         (`VmHWM` reset just before; \"above idle\" = peak − `VmRSS` just before; \"kept\" = \
         `VmRSS` 1.5 s after − before). Medians of {} rounds.\n\n",
        opts.rounds
    ));
    s.push_str(
        "| install | RSS before | peak | **peak above idle** | kept after | above idle per round |\n|---|---|---|---|---|---|\n",
    );
    let rows: [(String, &Vec<Peak>); 4] = [
        (
            format!("{} package, CLI, first install", mb(big_bytes)),
            &cli_peaks,
        ),
        (
            format!(
                "{} package, HTTP upload + confirm, first install",
                mb(big_bytes)
            ),
            &http_peaks,
        ),
        (
            format!("{} package, CLI, first install", mb(small_bytes)),
            &small_peaks,
        ),
        (
            format!(
                "{} package, CLI, the update after the first (warm host)",
                mb(big_bytes)
            ),
            &warm_peaks,
        ),
    ];
    for (name, v) in &rows {
        s.push_str(&format!(
            "| {name} | {} | {} | {:.0} KiB | {:.0} KiB | {} |\n",
            fmt_mib(kib(v, |p| p.before as f64)),
            fmt_mib(kib(v, |p| p.peak as f64)),
            kib(v, above),
            kib(v, kept),
            v.iter()
                .map(|p| format!("{:.0}", above(p)))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    s.push_str(
        "\nWhere the largest sample of each install (round 1, `/proc/PID/smaps` every 5 ms) had \
         grown over the host before it (KiB; `[anon]` includes the arenas and stacks of the \
         blocking threads):\n\n| install | mappings that grew |\n|---|---|\n",
    );
    for (name, v) in &rows {
        let grew = v.first().map_or_else(String::new, |p| {
            p.grew
                .iter()
                .take(5)
                .map(|(n, d)| format!("`{n}` {d:+}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        s.push_str(&format!("| {name} | {grew} |\n"));
    }
    let big_above = kib(&cli_peaks, above).max(kib(&http_peaks, above));
    let small_above = kib(&small_peaks, above);
    let warm_above = kib(&warm_peaks, above);
    let cli_above = kib(&cli_peaks, above);
    let http_above = kib(&http_peaks, above);
    s.push_str(&format!(
        "\nThe package streams: through the CLI a first install peaks {cli_above:.0} KiB above idle \
         with {} and {small_above:.0} KiB with {}, so the peak does not follow the package's \
         size (rounds differ by a few 4 KiB pages to 64 KiB). It is what a host's first \
         transaction touches once: the blocking thread that checks and extracts (its stack, and \
         the malloc arena glibc gives a new thread: `[anon]`), code pages of the binary and of \
         libc run for the first time; those stay (\"kept\"), and the blocking thread lingers idle \
         a few seconds. Through HTTP ({http_above:.0} KiB) more of the binary runs for the first \
         time (the upload path). A warm host's next install of the same 20 MB adds \
         {warm_above:.0} KiB, in `[heap]`: the runtime thread's buffer for a 64 KiB control-socket \
         frame, which glibc keeps at the top of the heap.\n",
        mb(big_bytes),
        mb(small_bytes)
    ));
    rep.section("10. Packages", s);
    rep.budget(Budget::new(
        "Peak host RSS above idle while installing a 20 MB package",
        "≤ 1 MiB",
        format!(
            "{big_above:.0} KiB (CLI {:.0}, HTTP {:.0}; a 2 MB package: {small_above:.0})",
            kib(&cli_peaks, above),
            kib(&http_peaks, above)
        ),
        big_above <= PEAK_ABOVE_IDLE_KIB,
        "compare the 2 MB row of section 10: if the 20 MB install peaks higher, part of the \
         package is held in memory on its way (upload frames, the decompressor, the copy); if \
         not, the fixed cost of a first transaction (the blocking thread's arena and stack) grew.",
    ));
    rep.set("pkg_install_2mb_us", median(&installs));
    rep.set("pkg_update_2mb_us", median(&updates));
    rep.set("pkg_peak_above_idle_20mb_kib", big_above);
    Ok(())
}
