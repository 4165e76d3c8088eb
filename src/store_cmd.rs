//! `toru store status|repair|reset`: what an admin does about a store the host found unusable
//! (see `store::maintenance` for what each does to the files). They run with the daemon stopped,
//! because they change the file it would use; the daemon's log and `/api/system` name them when
//! the store is degraded.
//!
//! `repair` reads a damaged file, which can make the storage engine panic; it therefore runs in a
//! child process (this same executable, marked by [`REPAIR_CHILD_ENV`]), so that a crash is
//! reported with what to do next instead of leaving the admin with nothing.

use std::process::ExitCode;

use serde_json::json;

use crate::config::Config;
use crate::store::{self, MaintenanceError, OpenError, RepairOutcome, StoreHealth, StoreOptions};

/// Set in the environment of the child that does the repair.
pub const REPAIR_CHILD_ENV: &str = "TORU_STORE_REPAIR_CHILD";

/// One `toru store …` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCommand {
    /// Say whether the store file opens, and if not why.
    Status,
    /// Try redb's repair, then salvage what can be read into a new store.
    Repair,
    /// Keep the file aside and let the next start create a new store.
    Reset,
}

fn options(config: &Config) -> StoreOptions {
    StoreOptions {
        kv_quota_bytes: config.kv_quota_bytes,
        events_per_plugin: config.events_per_plugin,
        ..StoreOptions::default()
    }
}

fn explain(e: &MaintenanceError) -> String {
    match e {
        MaintenanceError::Open(OpenError::Locked(dir)) => format!(
            "toru is running on {}; stop it first (e.g. `systemctl stop toru`), then run this again",
            dir.display()
        ),
        e => crate::error_chain::error_chain(e),
    }
}

/// Run `cmd` on `config`'s data dir, printing the outcome (as JSON with `json`).
pub fn run(config: &Config, cmd: StoreCommand, json_out: bool) -> ExitCode {
    let dir = &config.data_dir;
    match cmd {
        StoreCommand::Status => match store::status(dir, &options(config)) {
            Ok(health) => {
                if json_out {
                    println!("{}", json!(health));
                } else {
                    match &health {
                        StoreHealth::Ok => println!("ok"),
                        StoreHealth::Degraded { reason, .. } => println!("degraded: {reason}"),
                    }
                }
                if health == StoreHealth::Ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => fail(&e),
        },
        StoreCommand::Reset => match store::reset(dir) {
            Ok(kept) => {
                if json_out {
                    println!("{}", json!({"kept_as": kept}));
                } else {
                    println!(
                        "The store file is kept as {}.\nThe next start creates a new, empty store \
                         and asks for setup again.",
                        kept.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        StoreCommand::Repair if std::env::var_os(REPAIR_CHILD_ENV).is_some() => {
            match store::repair(dir, &options(config)) {
                Ok(outcome) => {
                    if json_out {
                        println!("{}", json!(outcome));
                    } else {
                        match outcome {
                            RepairOutcome::Healthy => {
                                println!(
                                    "The store file opens and passes its integrity check: nothing to repair."
                                );
                            }
                            RepairOutcome::Salvaged { kept_as, report } => {
                                println!("Salvaged into a new store file:");
                                for (table, rows) in &report.copied {
                                    println!("  {table}: {rows} rows");
                                }
                                for (table, why) in &report.incomplete {
                                    println!(
                                        "  {table}: rows after a damaged page were lost ({why})"
                                    );
                                }
                                println!("The damaged file is kept as {}.", kept_as.display());
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        StoreCommand::Repair => repair_in_child(),
    }
}

fn fail(e: &MaintenanceError) -> ExitCode {
    eprintln!("toru: {}", explain(e));
    ExitCode::FAILURE
}

/// Run this same command again in a child process (see the module doc).
fn repair_in_child() -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("toru: cannot find this executable to run the repair: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(REPAIR_CHILD_ENV, "1")
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => match s.signal() {
            Some(sig) => {
                eprintln!(
                    "toru: the storage engine crashed (signal {sig}) while reading the damaged \
                     file, so nothing could be salvaged; the file was not changed. Restore a \
                     backup or run `toru store reset` to keep it aside and start a new store."
                );
                ExitCode::FAILURE
            }
            None => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        },
        Err(e) => {
            eprintln!("toru: cannot run the repair: {e}");
            ExitCode::FAILURE
        }
    }
}
