//! `toru system update FILE [--yes] [--reboot]`, `toru system update --status` and `toru system
//! reboot`: the command line of whole-device updates (docs/UPDATES.md). Everything goes through
//! the running daemon's control socket (`admin`): the bundle is streamed to it and checked by RAUC
//! there, the install runs there, and this command follows its progress by asking for the status
//! now and then (what `GET /api/system/update` answers). Called by `main`; prints for people, or
//! the daemon's JSON with `--json`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::admin::{self, AdminError, Request};
use crate::config::Config;
use crate::error_chain::error_chain;

/// How often the progress of an install is asked for.
const PROGRESS_PERIOD: Duration = Duration::from_millis(500);

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateCommand {
    /// Upload `file`, show what it is, install it (after a confirmation unless `yes`), follow the
    /// install; then reboot when `reboot`.
    Install {
        /// The `.raucb` bundle.
        file: PathBuf,
        /// Do not ask before installing.
        yes: bool,
        /// Reboot into the new system once it is installed.
        reboot: bool,
    },
    /// Show the slots, the pending update, the last result.
    Status,
    /// Run the reboot command.
    Reboot,
}

/// Run `cmd` against the daemon `config` names; the exit code (0 done, 1 refused or failed).
/// Must run inside a `LocalSet`.
pub async fn run(config: &Config, cmd: UpdateCommand, json: bool) -> ExitCode {
    match run_inner(config, cmd, json).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("toru: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(
    config: &Config,
    cmd: UpdateCommand,
    json: bool,
) -> Result<ExitCode, AdminError> {
    match cmd {
        UpdateCommand::Status => {
            let v = admin::run_cli(config, Request::UpdateStatus).await?;
            if json {
                println!("{v}");
            } else {
                print_status(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        UpdateCommand::Reboot => {
            admin::run_cli(config, Request::Reboot).await?;
            eprintln!("Rebooting.");
            Ok(ExitCode::SUCCESS)
        }
        UpdateCommand::Install { file, yes, reboot } => {
            let preview = admin::run_update_upload(config, &file).await?;
            let token = preview["token"].as_str().unwrap_or_default().to_string();
            if !json {
                eprintln!(
                    "{}: version {} for {}, signed by {}",
                    file.display(),
                    text(&preview["version"]),
                    text(&preview["compatible"]),
                    preview["signer"].as_str().unwrap_or("(unknown)")
                );
            }
            if !yes && !confirm("Install it into the other slot?") {
                admin::run_cli(config, Request::UpdateCancel { token }).await?;
                eprintln!("Not installed.");
                return Ok(ExitCode::FAILURE);
            }
            admin::run_cli(
                config,
                Request::UpdateInstall {
                    token: token.clone(),
                },
            )
            .await?;
            let status = follow(config, &token, json).await?;
            let install = &status["install"];
            if json {
                println!("{status}");
            }
            if install["state"] != "done" {
                eprintln!(
                    "toru: the install failed: {}",
                    install["error"].as_str().unwrap_or("no reason given")
                );
                return Ok(ExitCode::FAILURE);
            }
            let to = status["pending"]["to_slot"]
                .as_str()
                .unwrap_or("the other slot");
            if reboot {
                eprintln!(
                    "Installed {} into slot {to}; rebooting into it.",
                    text(&install["version"])
                );
                admin::run_cli(config, Request::Reboot).await?;
            } else {
                eprintln!(
                    "Installed {} into slot {to}. Reboot to switch to it (toru system reboot); it \
                     is kept once Toru and its plugins are healthy there.",
                    text(&install["version"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follow the install of `token` until it ends, printing RAUC's progress lines; the last status.
async fn follow(config: &Config, token: &str, json: bool) -> Result<Value, AdminError> {
    let mut shown = String::new();
    loop {
        let status = admin::run_cli(config, Request::UpdateStatus).await?;
        let install = &status["install"];
        if install["token"] != token {
            return Err(AdminError::Refused(
                "the install is no longer the one started (another one replaced it)".into(),
            ));
        }
        let line = format!(
            "{:>3}% {}",
            install["percent"].as_u64().unwrap_or(0),
            text(&install["message"])
        );
        if !json && line != shown {
            eprintln!("{line}");
            shown = line;
        }
        if install["state"] != "running" {
            return Ok(status);
        }
        tokio::time::sleep(PROGRESS_PERIOD).await;
    }
}

/// Ask `question` on the terminal; `true` for yes. Without a terminal, the answer is no.
fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("{question} Not on a terminal: give --yes to install without asking.");
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The status for people: the slots, what the health gate found, the pending update and the last
/// result (a failed one with its reason first).
pub fn print_status(v: &Value) {
    if v["enabled"] != true {
        println!("Updates are not available on this device ([update] enabled is false).");
    } else if let Some(e) = v["status_error"].as_str() {
        println!("RAUC status: {e}");
    } else {
        println!(
            "booted slot {}, next boot {} (compatible {})",
            text(&v["booted"]),
            text(&v["boot_primary"]),
            text(&v["compatible"])
        );
        for s in v["slots"].as_array().into_iter().flatten() {
            if s["bootname"].is_null() {
                continue;
            }
            println!(
                "  slot {}\t{}\t{}\tversion {}\tinstalled {}",
                text(&s["bootname"]),
                text(&s["state"]),
                text(&s["boot_status"]),
                text(&s["version"]),
                text(&s["installed_at"])
            );
        }
        let gate = &v["gate"];
        let mut line = format!("check after boot: {}", text(&gate["state"]));
        if let Some(r) = gate["reason"].as_str() {
            line.push_str(&format!(" — {r}"));
        }
        if let Some(w) = gate["waiting_for"].as_object() {
            let list: Vec<String> = w
                .iter()
                .map(|(id, s)| format!("{id} ({})", text(s)))
                .collect();
            line.push_str(&format!(" — waiting for {}", list.join(", ")));
        }
        println!("{line}");
        if let Some(p) = v["gate_problem"].as_str() {
            println!("problem: {p}");
        }
    }
    let p = &v["pending"];
    if p.is_object() {
        let state = if p["installed_at"].is_null() {
            "being installed"
        } else {
            "installed"
        };
        println!(
            "pending: {} {state}, slot {} → slot {}",
            text(&p["version"]),
            text(&p["from_slot"]),
            text(&p["to_slot"])
        );
    }
    let r = &v["last_result"];
    if r.is_object() {
        match r["result"].as_str() {
            Some("failed") => println!(
                "last update: {} FAILED: {}",
                text(&r["version"]),
                text(&r["reason"])
            ),
            _ => println!(
                "last update: {} ok (slot {}, {})",
                text(&r["version"]),
                text(&r["to_slot"]),
                text(&r["at"])
            ),
        }
    }
    let i = &v["install"];
    if i["state"] == "running" {
        println!(
            "installing {}: {}% {}",
            text(&i["version"]),
            text(&i["percent"]),
            text(&i["message"])
        );
    }
}
