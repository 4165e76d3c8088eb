//! The safe-mode policy: a state machine without I/O. Its inputs are the previous run's record
//! (read at start), the end of a clean run and an admin's request to leave; its outputs are the
//! record to write, the host events to record, and which plugins are held.
//!
//! Rules (`[safe_mode]`, docs/RELIABILITY.md#safe-mode):
//! - A start that finds the record still `running` counts an unclean exit: `unclean_in_a_row`
//!   grows by one and a [`Culprit`] entry names the plugins that were starting or running then.
//!   The *likely* culprit is the first of them (most recently started first) that was still
//!   starting and is not kept, else the first not kept, else the first starting, else the first.
//! - `unclean_in_a_row >= after_unclean` at a start: the run is in safe mode; every plugin not in
//!   `keep` is held. `after_unclean = 0` turns safe mode off (exits are still counted, nothing is
//!   held, no culprit or event is recorded).
//! - A run that lasts `clean_secs` resets the count (and the culprits) to nothing. Safe mode is
//!   not left in the middle of that run: the next start, finding the count below the threshold,
//!   starts normally and records `safe-mode-left`.
//! - An admin leaves safe mode at once ([`SafeMode::leave`]): the count resets and the held
//!   plugins start.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::config::SafeModeConfig;
use crate::store::{Culprit, EventKind, NewEvent, RunRecord};

/// Most culprit entries kept (newest first): the row stays small whatever the count.
pub(crate) const MAX_CULPRITS: usize = 16;

/// The settings the policy applies (`[safe_mode]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Unclean exits in a row that start the host in safe mode; 0: off.
    pub after_unclean: u32,
    /// A run this long resets the count.
    pub clean_after: Duration,
    /// Plugin ids that start in safe mode too.
    pub keep: BTreeSet<String>,
}

impl Rules {
    /// The rules `[safe_mode]` gives.
    pub(crate) fn from_config(c: &SafeModeConfig) -> Rules {
        Rules {
            after_unclean: c.after_unclean,
            clean_after: c.clean_after,
            keep: c.keep.iter().cloned().collect(),
        }
    }

    /// Safe mode is on (`after_unclean > 0`).
    pub(crate) fn on(&self) -> bool {
        self.after_unclean > 0
    }

    /// The culprit entry for the unclean end of the run `prev` records, found at `now`.
    fn culprit(&self, prev: &RunRecord, now: DateTime<Utc>) -> Culprit {
        let third_party = |id: &str| !self.keep.contains(id);
        let p = &prev.plugins;
        let likely = p
            .iter()
            .find(|x| x.starting && third_party(&x.id))
            .or_else(|| p.iter().find(|x| third_party(&x.id)))
            .or_else(|| p.iter().find(|x| x.starting))
            .or_else(|| p.first())
            .map(|x| x.id.clone());
        Culprit {
            at: now,
            run_started_at: prev.started_at,
            plugins: p.iter().map(|x| x.id.clone()).collect(),
            starting: p
                .iter()
                .filter(|x| x.starting)
                .map(|x| x.id.clone())
                .collect(),
            likely,
        }
    }
}

/// Safe mode as the running host sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SafeMode {
    rules: Rules,
    active: bool,
    entered_at: Option<DateTime<Utc>>,
    unclean_in_a_row: u32,
    /// The current streak's entries, newest first (stored).
    culprits: Vec<Culprit>,
    /// What put this run in safe mode (kept to show while it lasts, after a clean run cleared
    /// the streak).
    cause: Vec<Culprit>,
}

/// What a start decided: the policy for this run, the record to write before any plugin starts,
/// and the host events to record with it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Start {
    /// The policy for this run.
    pub safe_mode: SafeMode,
    /// The record of this run (`running`, no plugins yet).
    pub record: RunRecord,
    /// `unclean-exit`, `safe-mode`, `safe-mode-left`, as they apply.
    pub events: Vec<NewEvent>,
}

/// [`SafeMode::leave`] while the host is not in safe mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host is not in safe mode")]
pub(crate) struct NotActive;

/// What the API, the CLI and the metrics show (`safe_mode` of `GET /api/system`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Status {
    /// The host runs in safe mode.
    pub active: bool,
    /// Unclean exits in a row.
    pub unclean_in_a_row: u32,
    /// The threshold (`after_unclean`; 0: safe mode is off).
    pub after_unclean: u32,
    /// How long a run must last to reset the count.
    pub clean_secs: u64,
    /// When safe mode was entered (while active).
    pub entered_at: Option<DateTime<Utc>>,
    /// While active: the entries that put the host in safe mode; else the current streak's.
    /// Newest first.
    pub culprits: Vec<Culprit>,
    /// The likely culprit of each entry, once each, newest first.
    pub likely_culprits: Vec<String>,
    /// The plugins that start in safe mode too.
    pub keep: Vec<String>,
    /// The plugins held now (filled in by the running host; empty otherwise).
    pub held: Vec<String>,
}

impl SafeMode {
    /// Not in safe mode, nothing counted (before [`SafeMode::start`] judged the record).
    pub(crate) fn idle(rules: Rules) -> SafeMode {
        SafeMode {
            rules,
            active: false,
            entered_at: None,
            unclean_in_a_row: 0,
            culprits: Vec::new(),
            cause: Vec::new(),
        }
    }

    /// Safe mode as `rec` records it, without judging it (the CLI while the daemon is stopped).
    pub(crate) fn recorded(rules: Rules, rec: &RunRecord) -> SafeMode {
        SafeMode {
            active: rec.safe_mode,
            entered_at: rec.entered_at,
            unclean_in_a_row: rec.unclean_in_a_row,
            culprits: rec.culprits.clone(),
            cause: if rec.safe_mode {
                rec.culprits.clone()
            } else {
                Vec::new()
            },
            rules,
        }
    }

    /// Judge the previous run's record `prev` (`None`: the first start) at a start at `now`.
    pub(crate) fn start(rules: Rules, prev: Option<&RunRecord>, now: DateTime<Utc>) -> Start {
        let prev = prev.cloned().unwrap_or_default();
        let mut events = Vec::new();
        let mut count = prev.unclean_in_a_row;
        let mut culprits = prev.culprits.clone();
        if prev.running {
            count = count.saturating_add(1);
            if rules.on() {
                let culprit = rules.culprit(&prev, now);
                let named = match &culprit.likely {
                    Some(id) => format!("likely culprit: {id}"),
                    None => "no plugin was starting or running".into(),
                };
                events.push(NewEvent {
                    kind: EventKind::UncleanExit,
                    message: format!(
                        "the previous run ended without a clean stop (killed, crashed, a \
                         watchdog reset or a power cut): {count} in a row; {named}"
                    ),
                    details: json!({
                        "unclean_in_a_row": count,
                        "after_unclean": rules.after_unclean,
                        "culprit": culprit,
                    }),
                });
                culprits.insert(0, culprit);
                culprits.truncate(MAX_CULPRITS);
            }
        }
        if !rules.on() {
            culprits.clear();
        }
        let active = rules.on() && count >= rules.after_unclean;
        let entered_at = match (active, prev.safe_mode) {
            (false, _) => None,
            (true, true) => prev.entered_at.or(Some(now)),
            (true, false) => Some(now),
        };
        if active && !prev.safe_mode {
            let likely = likely(&culprits);
            events.push(NewEvent {
                kind: EventKind::SafeMode,
                message: format!(
                    "safe mode: {count} unclean exits in a row (after_unclean = {}); plugins \
                     not in safe_mode.keep are held{}",
                    rules.after_unclean,
                    if likely.is_empty() {
                        String::new()
                    } else {
                        format!("; likely culprit: {}", likely.join(", "))
                    }
                ),
                details: json!({
                    "unclean_in_a_row": count,
                    "after_unclean": rules.after_unclean,
                    "culprits": culprits,
                    "likely_culprits": likely,
                    "keep": rules.keep,
                }),
            });
        }
        if !active && prev.safe_mode {
            let why = if rules.on() {
                "a clean run reset the count of unclean exits"
            } else {
                "safe mode is off (after_unclean = 0)"
            };
            events.push(NewEvent {
                kind: EventKind::SafeModeLeft,
                message: format!("safe mode left at this start: {why}"),
                details: json!({ "reason": if rules.on() { "clean-run" } else { "off" } }),
            });
        }
        let record = RunRecord {
            running: true,
            started_at: Some(now),
            unclean_in_a_row: count,
            culprits: culprits.clone(),
            safe_mode: active,
            entered_at,
            plugins: Vec::new(),
        };
        let cause = if active { culprits.clone() } else { Vec::new() };
        Start {
            safe_mode: SafeMode {
                rules,
                active,
                entered_at,
                unclean_in_a_row: count,
                culprits,
                cause,
            },
            record,
            events,
        }
    }

    /// The host runs in safe mode.
    #[cfg(test)]
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// The rules in force.
    pub(crate) fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Whether plugin `id` is held now: in safe mode, every plugin not kept.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.active && !self.rules.keep.contains(id)
    }

    /// This run has lasted `clean_secs`: the count and the streak's culprits reset (safe mode
    /// itself lasts until the next start or an admin leaves it). `false`: nothing to change.
    pub(crate) fn clean_run(&mut self) -> bool {
        if self.unclean_in_a_row == 0 && self.culprits.is_empty() {
            return false;
        }
        self.unclean_in_a_row = 0;
        self.culprits.clear();
        true
    }

    /// An admin leaves safe mode now: the count resets, nothing is held any more. Returns the
    /// `safe-mode-left` event to record.
    pub(crate) fn leave(&mut self) -> Result<NewEvent, NotActive> {
        if !self.active {
            return Err(NotActive);
        }
        let was = likely(&self.cause);
        self.active = false;
        self.entered_at = None;
        self.unclean_in_a_row = 0;
        self.culprits.clear();
        self.cause.clear();
        Ok(NewEvent {
            kind: EventKind::SafeModeLeft,
            message: "safe mode left by an admin: the held plugins start".into(),
            details: json!({ "reason": "request", "likely_culprits": was }),
        })
    }

    /// Write the fields this policy owns into `rec` (the record's `running`, `started_at` and
    /// plugins belong to the run and the supervisor).
    pub(crate) fn write_into(&self, rec: &mut RunRecord) {
        rec.unclean_in_a_row = self.unclean_in_a_row;
        rec.culprits = self.culprits.clone();
        rec.safe_mode = self.active;
        rec.entered_at = self.entered_at;
    }

    /// What to show (with `held` empty: the running host fills it in).
    pub(crate) fn status(&self) -> Status {
        let culprits = if self.active {
            self.cause.clone()
        } else {
            self.culprits.clone()
        };
        Status {
            active: self.active,
            unclean_in_a_row: self.unclean_in_a_row,
            after_unclean: self.rules.after_unclean,
            clean_secs: self.rules.clean_after.as_secs(),
            entered_at: self.entered_at,
            likely_culprits: likely(&culprits),
            culprits,
            keep: self.rules.keep.iter().cloned().collect(),
            held: Vec::new(),
        }
    }
}

/// The likely culprit of each entry, once each, in the entries' order.
fn likely(culprits: &[Culprit]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in culprits.iter().filter_map(|c| c.likely.as_ref()) {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
