//! The start-up health gate of a whole-device update as a state machine: what the host found at
//! start ([`Facts`]) and later what its plugins are doing go in, [`Action`]s come out. No I/O, no
//! clock: the caller (`update::gate`) runs `rauc`, the store and the timer, and feeds the results
//! back. Tested without processes below.
//!
//! ```text
//! start ─┬─ no pending update ───────────────────────────────▶ NoUpdate      [MarkGood]
//!        ├─ booted == to_slot (the new system) ──────────────▶ Checking
//!        │     every watched plugin ready, disabled or gone ─▶ Succeeded     [MarkGood, Finish ok]
//!        │     health timeout first ─────────────────────────▶ GaveUp        [RecordAttempt, MarkBad, Reboot]
//!        ├─ booted != to_slot, same boot as the install
//!        │     installed ────────────────────────────────────▶ AwaitingReboot
//!        │     install never finished (host restarted) ──────▶ Failed        [Finish failed, MarkGood, MarkActive]
//!        └─ booted != to_slot, another boot (fell back) ─────▶ FellBack      [Finish failed, MarkGood, MarkActive]
//! ```
//!
//! After a failed update the booted (old) slot is made the bootloader's first choice again
//! (`MarkActive`), so that the next reboot does not try the failed one again.
//!
//! The plugins watched are the ones enabled and ready when the update was installed
//! ([`PendingSystemUpdate::plugins`]); a plugin an admin disabled or removed since no longer
//! holds the update up, one that crashes, hangs, is missing or was disabled after failures does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::store::{PendingSystemUpdate, SystemUpdateOutcome};

/// What the host knows when the gate starts (after READY, with the store open).
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// The booted slot's bootname (`rauc status`: `booted`).
    pub booted: String,
    /// This boot's id.
    pub boot_id: String,
    /// The update under way, if any.
    pub pending: Option<PendingSystemUpdate>,
}

/// How one watched plugin is doing, as the caller sees it in the supervisor and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PluginHealth {
    /// Ready.
    Ready,
    /// An admin disabled it: it no longer counts.
    Disabled,
    /// It is gone (removed with its data): it no longer counts.
    Removed,
    /// Anything else; the state in a word or two (`backoff`, `missing`, `starting`).
    NotReady(String),
}

impl PluginHealth {
    fn holds_up(&self) -> Option<&str> {
        match self {
            PluginHealth::NotReady(state) => Some(state),
            PluginHealth::Ready | PluginHealth::Disabled | PluginHealth::Removed => None,
        }
    }
}

/// Where the gate is. Serialised for the API as `{"state": "checking", …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// No update under way; the booted slot was marked good.
    NoUpdate,
    /// The update is installed in the other slot; the device has not rebooted since.
    AwaitingReboot,
    /// This is the new system: waiting for the watched plugins (id → what each is doing).
    Checking {
        /// The plugins not ready yet, with their state.
        waiting_for: BTreeMap<String, String>,
    },
    /// The new system is healthy: its slot is marked good, the update succeeded.
    Succeeded,
    /// The new system did not become healthy in time: its slot is marked bad and the device
    /// reboots into the old one.
    GaveUp {
        /// Why.
        reason: String,
    },
    /// The device is back on the old slot: the update failed.
    FellBack {
        /// Why (what the new slot reported, or that it never did).
        reason: String,
    },
    /// The install did not finish (the host restarted while `rauc install` ran).
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the caller must do, in order. A failed `MarkGood` or `MarkBad` stops the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// `rauc status mark-good booted`.
    MarkGood,
    /// `rauc status mark-bad booted`.
    MarkBad,
    /// `rauc status mark-active booted`: the bootloader starts the booted slot next.
    MarkActive,
    /// Run the reboot command.
    Reboot,
    /// Record this boot's report in the pending update (which stays), with an `update-failed`
    /// event.
    RecordAttempt {
        /// Why this boot gave up.
        reason: String,
    },
    /// End the update: forget the pending record, keep the result, record the event
    /// (`update-succeeded` / `update-failed`).
    Finish {
        /// How it ended.
        outcome: SystemUpdateOutcome,
        /// Why it failed.
        reason: Option<String>,
    },
}

/// The gate of one start.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    phase: Phase,
    pending: Option<PendingSystemUpdate>,
    health_timeout: Duration,
}

impl Gate {
    /// Decide from the facts at start; the actions to take at once. In [`Phase::Checking`] the
    /// caller then reports the plugins ([`Gate::plugins`]) and arms a timer of `health_timeout`
    /// ([`Gate::timed_out`]).
    pub(crate) fn start(facts: Facts, health_timeout: Duration) -> (Gate, Vec<Action>) {
        let mut gate = Gate {
            phase: Phase::NoUpdate,
            pending: None,
            health_timeout,
        };
        let Some(p) = facts.pending else {
            return (gate, vec![Action::MarkGood]);
        };
        let (phase, actions) = if facts.booted == p.to_slot {
            let waiting_for = p
                .plugins
                .iter()
                .map(|id| (id.clone(), "not reported yet".to_string()))
                .collect();
            (Phase::Checking { waiting_for }, Vec::new())
        } else if facts.boot_id == p.boot_id {
            if p.installed_at.is_some() {
                (Phase::AwaitingReboot, Vec::new())
            } else {
                let reason =
                    "the install did not finish: Toru restarted while rauc install ran".to_string();
                (
                    Phase::Failed {
                        reason: reason.clone(),
                    },
                    failed(reason),
                )
            }
        } else {
            let reason = fell_back_reason(&p, &facts.booted);
            (
                Phase::FellBack {
                    reason: reason.clone(),
                },
                failed(reason),
            )
        };
        gate.phase = phase;
        gate.pending = Some(p);
        (gate, actions)
    }

    /// Where the gate is.
    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The update this start found.
    pub(crate) fn pending(&self) -> Option<&PendingSystemUpdate> {
        self.pending.as_ref()
    }

    /// The plugins to report on in [`Gate::plugins`] (none outside [`Phase::Checking`]).
    pub(crate) fn watched(&self) -> Vec<String> {
        match (&self.phase, &self.pending) {
            (Phase::Checking { .. }, Some(p)) => p.plugins.clone(),
            _ => Vec::new(),
        }
    }

    /// How the watched plugins are doing now (an id missing from `health` counts as not
    /// reported). Once none holds the update up: succeeded.
    pub(crate) fn plugins(&mut self, health: &BTreeMap<String, PluginHealth>) -> Vec<Action> {
        let Phase::Checking { .. } = self.phase else {
            return Vec::new();
        };
        let waiting_for: BTreeMap<String, String> = self
            .watched()
            .into_iter()
            .filter_map(|id| match health.get(&id) {
                Some(h) => h.holds_up().map(|s| (id, s.to_string())),
                None => Some((id, "not reported yet".to_string())),
            })
            .collect();
        if waiting_for.is_empty() {
            self.phase = Phase::Succeeded;
            return vec![
                Action::MarkGood,
                Action::Finish {
                    outcome: SystemUpdateOutcome::Ok,
                    reason: None,
                },
            ];
        }
        self.phase = Phase::Checking { waiting_for };
        Vec::new()
    }

    /// The health timeout passed (counted from the gate's start). While checking: give up.
    pub(crate) fn timed_out(&mut self) -> Vec<Action> {
        let Phase::Checking { waiting_for } = &self.phase else {
            return Vec::new();
        };
        let list = waiting_for
            .iter()
            .map(|(id, state)| format!("{id} ({state})"))
            .collect::<Vec<_>>()
            .join(", ");
        let noun = if waiting_for.len() == 1 {
            "plugin"
        } else {
            "plugins"
        };
        let secs = self.health_timeout.as_secs_f64();
        let reason = format!("{noun} {list} not ready after {} s", trim_secs(secs));
        self.phase = Phase::GaveUp {
            reason: reason.clone(),
        };
        vec![
            Action::RecordAttempt { reason },
            Action::MarkBad,
            Action::Reboot,
        ]
    }
}

/// `300`, `1.5`: seconds without a trailing `.0`.
fn trim_secs(secs: f64) -> String {
    let s = format!("{secs:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn failed(reason: String) -> Vec<Action> {
    vec![
        Action::Finish {
            outcome: SystemUpdateOutcome::Failed,
            reason: Some(reason),
        },
        Action::MarkGood,
        Action::MarkActive,
    ]
}

/// Why an update failed when the device is back on `booted`, the old slot.
fn fell_back_reason(p: &PendingSystemUpdate, booted: &str) -> String {
    let to = &p.to_slot;
    match p.attempts.last() {
        Some(last) if p.attempts.len() > 1 => format!(
            "{} (slot {to} was tried {} times; the device is back on slot {booted})",
            last.reason,
            p.attempts.len()
        ),
        Some(last) => format!(
            "{} (slot {to}; the device is back on slot {booted})",
            last.reason
        ),
        None if p.installed_at.is_none() => format!(
            "the install did not finish: the device restarted while rauc install ran (it is \
             back on slot {booted})"
        ),
        None => format!(
            "slot {to} never became healthy (Toru on it did not report); the device is back on \
             slot {booted}"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::UpdateAttempt;

    const TIMEOUT: Duration = Duration::from_secs(300);

    fn pending(plugins: &[&str]) -> PendingSystemUpdate {
        PendingSystemUpdate {
            token: "t".into(),
            version: "2.0.0".into(),
            compatible: "toru-test".into(),
            signer: None,
            from_slot: "A".into(),
            to_slot: "B".into(),
            boot_id: "boot-install".into(),
            plugins: plugins.iter().map(|s| s.to_string()).collect(),
            started_at: crate::clock::now(),
            installed_at: Some(crate::clock::now()),
            attempts: Vec::new(),
        }
    }

    fn facts(booted: &str, boot_id: &str, pending: Option<PendingSystemUpdate>) -> Facts {
        Facts {
            booted: booted.into(),
            boot_id: boot_id.into(),
            pending,
        }
    }

    fn health(pairs: &[(&str, PluginHealth)]) -> BTreeMap<String, PluginHealth> {
        pairs
            .iter()
            .map(|(id, h)| (id.to_string(), h.clone()))
            .collect()
    }

    fn failed_with(actions: &[Action]) -> String {
        match actions {
            [
                Action::Finish {
                    outcome: SystemUpdateOutcome::Failed,
                    reason: Some(r),
                },
                Action::MarkGood,
                Action::MarkActive,
            ] => r.clone(),
            other => panic!("not a failure then mark-good and mark-active: {other:?}"),
        }
    }

    #[test]
    fn without_an_update_the_booted_slot_is_marked_good() {
        let (gate, actions) = Gate::start(facts("A", "b1", None), TIMEOUT);
        assert_eq!(actions, [Action::MarkGood]);
        assert_eq!(gate.phase(), &Phase::NoUpdate);
        assert!(gate.watched().is_empty());
    }

    #[test]
    fn the_new_system_succeeds_once_every_watched_plugin_is_ready_or_gone() {
        let p = pending(&["notes", "sysinfo", "hello", "old"]);
        let (mut gate, actions) = Gate::start(facts("B", "b2", Some(p)), TIMEOUT);
        assert!(actions.is_empty());
        assert_eq!(gate.watched(), ["notes", "sysinfo", "hello", "old"]);
        let not_yet = gate.plugins(&health(&[
            ("notes", PluginHealth::Ready),
            ("sysinfo", PluginHealth::NotReady("starting".into())),
            ("hello", PluginHealth::Disabled),
        ]));
        assert!(not_yet.is_empty());
        let Phase::Checking { waiting_for } = gate.phase() else {
            panic!("{:?}", gate.phase());
        };
        assert_eq!(
            waiting_for.iter().collect::<Vec<_>>(),
            [
                (&"old".to_string(), &"not reported yet".to_string()),
                (&"sysinfo".to_string(), &"starting".to_string())
            ]
        );
        let done = gate.plugins(&health(&[
            ("notes", PluginHealth::Ready),
            ("sysinfo", PluginHealth::Ready),
            ("hello", PluginHealth::Disabled),
            ("old", PluginHealth::Removed),
        ]));
        assert_eq!(
            done,
            [
                Action::MarkGood,
                Action::Finish {
                    outcome: SystemUpdateOutcome::Ok,
                    reason: None
                }
            ]
        );
        assert_eq!(gate.phase(), &Phase::Succeeded);
        assert!(gate.timed_out().is_empty(), "a late timer changes nothing");
        assert!(gate.plugins(&health(&[])).is_empty());
    }

    #[test]
    fn no_plugins_to_watch_succeeds_at_the_first_report() {
        let (mut gate, _) = Gate::start(facts("B", "b2", Some(pending(&[]))), TIMEOUT);
        assert_eq!(gate.plugins(&BTreeMap::new()).len(), 2);
        assert_eq!(gate.phase(), &Phase::Succeeded);
    }

    #[test]
    fn the_new_system_gives_up_at_the_timeout_naming_what_was_not_ready() {
        let p = pending(&["notes", "sysinfo"]);
        let (mut gate, _) = Gate::start(facts("B", "b2", Some(p)), TIMEOUT);
        gate.plugins(&health(&[
            ("notes", PluginHealth::NotReady("backoff".into())),
            ("sysinfo", PluginHealth::NotReady("missing".into())),
        ]));
        let actions = gate.timed_out();
        let reason = "plugins notes (backoff), sysinfo (missing) not ready after 300 s";
        assert_eq!(
            actions,
            [
                Action::RecordAttempt {
                    reason: reason.into()
                },
                Action::MarkBad,
                Action::Reboot
            ]
        );
        assert_eq!(
            gate.phase(),
            &Phase::GaveUp {
                reason: reason.into()
            }
        );
        assert!(gate.plugins(&health(&[])).is_empty(), "no success after");

        let (mut one, _) = Gate::start(
            facts("B", "b2", Some(pending(&["notes"]))),
            Duration::from_millis(1500),
        );
        one.plugins(&health(&[(
            "notes",
            PluginHealth::NotReady("backoff".into()),
        )]));
        let Action::RecordAttempt { reason } = &one.timed_out()[0] else {
            panic!()
        };
        assert_eq!(reason, "plugin notes (backoff) not ready after 1.5 s");
    }

    #[test]
    fn the_old_system_before_the_reboot_awaits_it() {
        let (gate, actions) = Gate::start(
            facts("A", "boot-install", Some(pending(&["notes"]))),
            TIMEOUT,
        );
        assert!(actions.is_empty());
        assert_eq!(gate.phase(), &Phase::AwaitingReboot);
        assert!(gate.watched().is_empty());
    }

    #[test]
    fn an_install_cut_by_a_host_restart_fails() {
        let mut p = pending(&["notes"]);
        p.installed_at = None;
        let (gate, actions) = Gate::start(facts("A", "boot-install", Some(p)), TIMEOUT);
        assert!(failed_with(&actions).contains("did not finish"));
        assert!(matches!(gate.phase(), Phase::Failed { .. }));
    }

    #[test]
    fn back_on_the_old_slot_the_update_fails_with_what_the_new_one_reported() {
        let mut p = pending(&["notes"]);
        let (_, actions) = Gate::start(facts("A", "b3", Some(p.clone())), TIMEOUT);
        assert_eq!(
            failed_with(&actions),
            "slot B never became healthy (Toru on it did not report); the device is back on slot A"
        );

        p.attempts.push(UpdateAttempt {
            boot_id: "b2".into(),
            slot: "B".into(),
            at: crate::clock::now(),
            reason: "plugin notes (backoff) not ready after 300 s".into(),
        });
        let (gate, actions) = Gate::start(facts("A", "b3", Some(p.clone())), TIMEOUT);
        let reason = failed_with(&actions);
        assert_eq!(
            reason,
            "plugin notes (backoff) not ready after 300 s (slot B; the device is back on slot A)"
        );
        assert_eq!(gate.phase(), &Phase::FellBack { reason });

        let mut second = p.attempts[0].clone();
        second.boot_id = "b4".into();
        second.reason = "plugin notes (crashed) not ready after 300 s".into();
        p.attempts.push(second);
        let (_, actions) = Gate::start(facts("A", "b5", Some(p.clone())), TIMEOUT);
        assert!(
            failed_with(&actions).starts_with("plugin notes (crashed)")
                && failed_with(&actions).contains("tried 2 times"),
            "the last report, and how often"
        );

        p.attempts.clear();
        p.installed_at = None;
        let (_, actions) = Gate::start(facts("A", "b3", Some(p)), TIMEOUT);
        assert!(failed_with(&actions).contains("the device restarted while rauc install ran"));
    }

    #[test]
    fn the_new_system_is_checked_even_if_the_host_missed_the_end_of_the_install() {
        let mut p = pending(&["notes"]);
        p.installed_at = None;
        let (gate, _) = Gate::start(facts("B", "b2", Some(p)), TIMEOUT);
        assert!(matches!(gate.phase(), Phase::Checking { .. }));
    }

    #[test]
    fn phases_serialise_for_the_api() {
        let v = serde_json::to_value(Phase::Checking {
            waiting_for: [("notes".to_string(), "backoff".to_string())].into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "checking", "waiting_for": {"notes": "backoff"}})
        );
        assert_eq!(
            serde_json::to_value(Phase::AwaitingReboot).unwrap(),
            serde_json::json!({"state": "awaiting-reboot"})
        );
    }
}
