//! Group 8, under stress: `/api/health` latency with `wrk` while one plugin floods its log
//! (`stress-log-flood`, 2 M lines as fast as it can) and another crash-loops (`stress-crash-start`
//! with `backoff_base_ms = 20`; re-enabled whenever ten failures in a row disable it), against a
//! calm host running only the probe plugin. Calm and stressed alternate within each round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::host::{Bins, PluginFile, Toru};
use crate::util::{Result, WrkResult, fmt_ratios, fmt_us, median, wrk};
use crate::{Opts, Report};

/// Upper bound of the re-enabler thread (the wrk run is shorter).
const ENABLER_LIMIT: Duration = Duration::from_secs(60);

fn plugin(bins: &Bins, bin: &str, name: &str) -> PluginFile {
    PluginFile {
        src: bins.get(bin),
        name: name.into(),
    }
}

/// Run the group.
pub fn run(bins: &Bins, opts: &Opts, rep: &mut Report) -> Result<()> {
    let mut calm: Vec<WrkResult> = Vec::new();
    let mut hot: Vec<WrkResult> = Vec::new();
    let mut detail = Vec::new();
    for round in 0..opts.http_rounds {
        eprintln!("stress: round {}/{}", round + 1, opts.http_rounds);
        {
            let t = Toru::start(bins, &[plugin(bins, "toru-bench-probe", "p")], None)?;
            calm.push(wrk(
                &format!("http://{}/api/health", t.addr),
                4,
                opts.http_secs,
                &[],
            )?);
        }
        let mut t = Toru::start_lenient(
            bins,
            &[
                plugin(bins, "toru-bench-probe", "p"),
                plugin(bins, "stress", "stress-log-flood"),
                plugin(bins, "stress", "stress-crash-start"),
            ],
            Some("[supervisor]\nbackoff_base_ms = 20\n"),
        )?;
        t.login()?;
        let stop = Arc::new(AtomicBool::new(false));
        let enables = Arc::new(AtomicU64::new(0));
        let refloods = Arc::new(AtomicU64::new(0));
        let checker = {
            let (addr, headers) = (t.addr, t.auth_headers());
            let (stop, enables, refloods) = (stop.clone(), enables.clone(), refloods.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + ENABLER_LIMIT;
                let get = |path: &str| {
                    crate::util::http_once(addr, "GET", path, &headers, b"")
                        .ok()
                        .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
                };
                let mut last_dropped = None;
                let mut tick = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    tick += 1;
                    // The flood is bounded (2 M lines); once its drop counter stands still, the
                    // burst is over: restart the plugin for a new one.
                    if tick.is_multiple_of(5) {
                        let dropped =
                            get("/api/plugins/stress-log-flood").map(|v| v["log_dropped"].clone());
                        if dropped.is_some() && dropped == last_dropped {
                            let _ = crate::util::http_once(
                                addr,
                                "POST",
                                "/api/plugins/stress-log-flood/restart",
                                &headers,
                                b"{}",
                            );
                            refloods.fetch_add(1, Ordering::Relaxed);
                        }
                        last_dropped = dropped;
                    }
                    let state = get("/api/plugins/stress-crash-start")
                        .and_then(|v| v["state"].as_str().map(str::to_string));
                    if state.as_deref() == Some("disabled") {
                        let _ = crate::util::http_once(
                            addr,
                            "POST",
                            "/api/plugins/stress-crash-start/enable",
                            &headers,
                            json!({}).to_string().as_bytes(),
                        );
                        enables.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let before = t.get("/api/plugins/stress-crash-start")?["restarts"]
            .as_u64()
            .unwrap_or(0);
        let r = wrk(
            &format!("http://{}/api/health", t.addr),
            4,
            opts.http_secs,
            &[],
        );
        stop.store(true, Ordering::Relaxed);
        let _ = checker.join();
        let r = r?;
        let crash = t.get("/api/plugins/stress-crash-start")?;
        let flood = t.get("/api/plugins/stress-log-flood")?;
        let restarts = crash["restarts"].as_u64().unwrap_or(0) - before;
        detail.push(format!(
            "round {}: crash-loop restarts during the run {restarts}, re-enabled {} times; \
             log-flood restarted {} times for a new burst, lines dropped by the rate limit \
             (as reported at the end) {}",
            round + 1,
            enables.load(Ordering::Relaxed),
            refloods.load(Ordering::Relaxed),
            flood["log_dropped"]
        ));
        hot.push(r);
    }
    let col =
        |v: &[WrkResult], f: fn(&WrkResult) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let ratio: Vec<f64> = hot
        .iter()
        .zip(&calm)
        .map(|(h, c)| h.p99_us / c.p99_us)
        .collect();
    let mut s = format!(
        "`wrk -t2 -c4 -d{}s --latency` on `/api/health`, {} rounds; calm host (probe plugin only) \
         and stressed host alternate. Stressed: `stress-log-flood` writes 2 M stderr lines as fast \
         as it can, restarted for a new burst whenever one ends (the host keeps 200 lines/s, counts \
         the rest as dropped) and `stress-crash-start` \
         exits at start over and over (backoff unit 20 ms; re-enabled whenever 10 failures in a \
         row disable it).\n\n",
        opts.http_secs, opts.http_rounds
    );
    s.push_str(
        "| host | p50 | p99 | req/s | p99 stressed ÷ calm per round |\n|---|---|---|---|---|\n",
    );
    s.push_str(&format!(
        "| calm | {} | {} | {:.0} | |\n",
        fmt_us(col(&calm, |r| r.p50_us)),
        fmt_us(col(&calm, |r| r.p99_us)),
        col(&calm, |r| r.rps)
    ));
    s.push_str(&format!(
        "| log flood + crash loop | {} | {} | {:.0} | {} |\n\n",
        fmt_us(col(&hot, |r| r.p50_us)),
        fmt_us(col(&hot, |r| r.p99_us)),
        col(&hot, |r| r.rps),
        fmt_ratios(&ratio)
    ));
    for d in detail {
        s.push_str(&format!("- {d}\n"));
    }
    rep.set("stress_p99_us", col(&hot, |r| r.p99_us));
    rep.set("calm_p99_us", col(&calm, |r| r.p99_us));
    rep.section("8. Under stress", s);
    Ok(())
}
