//! `toru plugin check FILE [--json] [--config FILE]`: the plugin author's conformance checker. It
//! runs a plugin executable or package through what the host does to it — `--metadata` and its
//! rules, a package's manifest, the spawn, the socket, `init`, `ready`, heartbeats, a forwarded
//! `GET /`, the plugin's own KV requests, new settings, `shutdown` and the exit — with the host's
//! timeouts (the default config, or `--config FILE`'s), in 1.0 or 1.1 as the plugin announces,
//! and prints one line per step: `PASS`, `FAIL` with what was expected, or `SKIP` with why.
//! Exit status 0 only if no step failed. `docs/CHECK.md` is the author's guide to it.
//!
//! Layout: `steps` is the checklist (the order, what is skipped after a failure; no I/O),
//! `driver` does each step with the host's own code (see its doc), `sandbox` owns what must be
//! cleaned up: the temporary folder and the plugin's process group, removed and killed when
//! dropped — also when Ctrl-C (or SIGTERM) drops the check half-way. This module runs the
//! checklist and prints the report. The plugin runs unconfined, as the current user: the
//! confinement a device adds (docs/ISOLATION.md) is not part of the check. Called by `main`;
//! nothing else imports it.

mod driver;
mod sandbox;
mod steps;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::config::Config;
use driver::{Check, Target, Verdict, secs};
use sandbox::Sandbox;
use steps::{Checklist, Outcome, Status, Step};

/// Exit status when a step failed.
const EXIT_FAILED: u8 = 1;
/// Exit status when the check could not be set up (no temporary folder, no store).
const EXIT_SETUP: u8 = 2;
/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

/// Check the plugin executable or package `file` against the host `config` describes, printing
/// the report on stdout (JSON with `json`). Builds its own single-threaded runtime.
pub fn run(config: &Config, file: &Path, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("toru: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("toru: cannot handle signals");
            return ExitCode::from(EXIT_SETUP);
        };
        tokio::select! {
            code = check(config, file, json) => code,
            // Dropping the check kills the plugin's group and removes the temporary folder.
            _ = int.recv() => interrupted(),
            _ = term.recv() => interrupted(),
        }
    });
    // The connection's tasks (and their store handles) go with the local set.
    drop(local);
    code
}

fn interrupted() -> ExitCode {
    eprintln!("toru: interrupted; the plugin was stopped and its temporary folder removed");
    ExitCode::from(EXIT_INTERRUPTED)
}

async fn check(config: &Config, file: &Path, json: bool) -> ExitCode {
    let target = Target::new(file);
    let sandbox = match Sandbox::create() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("toru: cannot create a temporary folder: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let mut check = match Check::new(config, target.clone(), sandbox) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("toru: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    if !json {
        say(&header(config, &target.shown));
    }
    let mut list = Checklist::new();
    let mut shown = 0;
    let mut show = |list: &Checklist| {
        if !json {
            for o in &list.outcomes()[shown..] {
                say(&line(o));
            }
        }
        shown = list.outcomes().len();
    };
    while let Some(step) = list.next() {
        show(&list);
        let before = check.rejected_frames();
        let verdict = check.step(step).await;
        let verdict = if step >= Step::Ready {
            check.with_rejected_frames(verdict, before)
        } else {
            verdict
        };
        match verdict {
            Verdict::Pass(d) => list.record(Status::Pass, d),
            Verdict::Fail(d) => list.record(Status::Fail, d),
            Verdict::Skip(d) => list.record(Status::Skip, d),
            Verdict::Ended(d) => {
                list.record(Status::Fail, d);
                list.process_gone();
            }
        }
        show(&list);
    }
    // The steps skipped after the last one that ran.
    show(&list);
    let protocol = check.protocol();
    check.finish().await;
    let passed = list.passed();
    if json {
        let report = json!({
            "file": target.shown,
            "protocol": protocol.map(|p| p.as_str()),
            "passed": passed,
            "unconfined": true,
            "steps": list.outcomes(),
        });
        say(&report.to_string());
    } else {
        say(&summary(&list));
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Print a line on stdout now. A closed stdout (piped into `head`) is ignored: the check goes on
/// to its end, so that it stops the plugin and removes its folder.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The first line: what runs, as whom, with which timeouts.
fn header(config: &Config, shown: &str) -> String {
    let (uid, _) = crate::sys::own_ids();
    let s = &config.supervisor;
    format!(
        "checking {shown}, run unconfined as uid {uid} (a device adds its own user, Landlock, \
         seccomp and limits), with the host's timeouts: metadata {}, socket {}, ready {}, \
         heartbeat every {} ({} misses), request {}, shutdown {} then SIGTERM {}",
        secs(s.metadata_timeout),
        secs(s.socket_timeout),
        secs(s.ready_timeout),
        secs(s.heartbeat_interval),
        s.heartbeat_misses,
        secs(config.http.plugin_timeout),
        secs(s.shutdown_grace),
        secs(s.term_grace)
    )
}

/// One step's line: `PASS  socket     …`.
fn line(o: &Outcome) -> String {
    format!("{}  {:<9}  {}", o.status.word(), o.step.name(), o.detail)
}

/// The last line: `passed (9 PASS, 4 SKIP)` or `FAILED at socket (…)`.
fn summary(list: &Checklist) -> String {
    let count = |s: Status| list.outcomes().iter().filter(|o| o.status == s).count();
    let counts = format!(
        "{} PASS, {} FAIL, {} SKIP",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skip)
    );
    let failed: Vec<&str> = list
        .outcomes()
        .iter()
        .filter(|o| o.status == Status::Fail)
        .map(|o| o.step.name())
        .collect();
    if failed.is_empty() {
        format!("passed ({counts})")
    } else {
        format!("FAILED at {} ({counts})", failed.join(", "))
    }
}
