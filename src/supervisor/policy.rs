//! The lifecycle policy of one plugin: a state machine with inputs in and actions out, no I/O.
//!
//! Rules (the spec's): a plugin that fails after it had been ready for [`HEALTHY_AFTER`] restarts at
//! once; each further consecutive failure waits 1, 2, 4, 8, 16 s (capped); the
//! [`MAX_CONSECUTIVE_FAILURES`]th failure in a row disables it automatically. A first failure of a
//! plugin that never became healthy also waits 1 s (s6's rule: a pause between respawns of a service
//! that never became ready). A hung plugin (missed heartbeats), a start timeout and a lost
//! connection are failures like a crash. Stops asked for by a user or the host are not failures.
//!
//! Stopping escalates: [`Action::SendShutdown`], then after the shutdown grace SIGTERM to the
//! process group, then after the term grace SIGKILL (repeated every term grace until the exit).
//! A lost connection gives the process [`LOST_CONNECTION_GRACE`] to exit on its own before it is
//! killed; a start failure or a hang kills it at once. The reason for a kill is remembered and
//! prefixed to the exit's description in the `crashed` event.
//!
//! A plugin whose spawn is refused — no valid licence ([`PluginState::LicenceNeeded`]), or held
//! by safe mode ([`PluginState::Held`]) — waits without a process, a timer or a failure counted,
//! until the refusal goes ([`Input::LicenceValid`], [`Input::Released`]).
//!
//! The policy owns every timer (the backoff, the stop escalation, the lost-connection grace): the
//! glue (`supervisor::plugin`) sleeps until [`Policy::deadline`] and feeds [`Input::Tick`]. It
//! also owns the plugin's persisted flags (enabled, and why it was disabled automatically):
//! [`Action::Persist`] asks the glue to store them, everyone else reads them here. Tests drive it
//! with paused time and no processes.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::view::PluginState;
use crate::store::EventKind;

/// Ready this long and the failure count resets; a failure after that restarts at once.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Failures in a row that disable a plugin.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// Longest wait between restarts, in backoff units (16 s by default).
pub const MAX_BACKOFF_UNITS: u32 = 16;
/// How long a process whose connection closed may take to exit before it is killed (usually it
/// is exiting already, and its exit status is the better report).
pub const LOST_CONNECTION_GRACE: Duration = Duration::from_millis(500);

/// The policy's timings; the defaults are the spec's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The backoff unit (waits of 1, 2, 4, 8, 16 units).
    pub backoff_base: Duration,
    /// Ready this long and the failure count resets.
    pub healthy_after: Duration,
    /// From the shutdown message to SIGTERM.
    pub shutdown_grace: Duration,
    /// From SIGTERM to SIGKILL, and between repeated SIGKILLs.
    pub term_grace: Duration,
    /// From a lost connection to SIGKILL.
    pub lost_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_base: Duration::from_secs(1),
            healthy_after: HEALTHY_AFTER,
            shutdown_grace: Duration::from_secs(5),
            term_grace: Duration::from_secs(2),
            lost_grace: LOST_CONNECTION_GRACE,
        }
    }
}

/// How a process ended, as the glue saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exit {
    /// `exited with code 3`, `killed by signal 9 (SIGKILL)`.
    pub description: String,
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal, if one killed it.
    pub signal: Option<i32>,
    /// Time since the spawn.
    pub uptime_ms: u64,
    /// The last lines it wrote to stderr.
    pub stderr_tail: Vec<String>,
}

/// Something that happened to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Host start or rescan found the plugin: start it if it is enabled.
    Loaded,
    /// A user enabled it.
    Enable,
    /// A user disabled it.
    Disable,
    /// A user asked for a restart.
    Restart,
    /// The process is up and (for 1.1) said ready; for 1.0, init was delivered.
    Ready,
    /// The process could not be started at all (no exit will follow).
    Failed {
        /// What happened, for the event.
        reason: String,
    },
    /// The start sequence gave up (no socket, init refused, no `ready` in time): kill it now.
    StartFailed {
        /// What happened.
        reason: String,
    },
    /// The process missed this many heartbeats in a row: kill it now.
    Hung {
        /// Heartbeats missed.
        missed: u32,
    },
    /// The 1.1 connection ended (EOF, or why it broke).
    ConnectionLost {
        /// What the reader saw.
        reason: String,
    },
    /// The process is gone.
    Exited(Exit),
    /// The time given by [`Policy::deadline`] has come.
    Tick,
    /// A spawn was due but the plugin has no valid licence: it was not spawned (nothing runs).
    LicenceMissing {
        /// The refusal's code (`expired`, `wrong_instance` …).
        code: String,
        /// Why, for people.
        reason: String,
    },
    /// A licence check found no valid licence (removed, expired, its key no longer trusted):
    /// stop it if it runs, and wait for one.
    LicenceRevoked {
        /// The refusal's code.
        code: String,
        /// Why, for people.
        reason: String,
    },
    /// A licence check found a valid licence (or none is needed): a plugin waiting for one starts.
    LicenceValid,
    /// A spawn was due but safe mode holds the plugin: it was not spawned (nothing runs).
    Held,
    /// Safe mode was left: a held plugin starts (if it is still enabled).
    Released,
    /// The host is shutting down, or the binary was removed.
    Retire,
}

/// A signal for the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
}

/// What the glue must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Spawn the process and start the handshake.
    Spawn,
    /// Ask the process to exit (the link's shutdown); signals follow on the policy's timers.
    SendShutdown,
    /// Signal the process group; `note` goes to the plugin's log.
    Signal {
        /// Which signal.
        signal: Signal,
        /// Why, when the plugin's log should say so.
        note: Option<&'static str>,
    },
    /// Persist the enabled state (with the event in the same transaction).
    Persist {
        /// New enabled state.
        enabled: bool,
        /// Why it was disabled automatically, if so.
        auto_disabled: Option<String>,
    },
    /// Record an event.
    Record {
        /// Event kind.
        kind: EventKind,
        /// Human sentence.
        message: String,
        /// Structured details (the exit, the heartbeats missed …).
        details: serde_json::Value,
    },
}

/// What to do once the current process has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Nothing,
    Start,
    /// Wait for a licence.
    LicenceNeeded,
}

/// Where the stop escalation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopPhase {
    /// Shutdown message sent; SIGTERM next.
    Shutdown,
    /// SIGTERM sent; SIGKILL next.
    Term,
    /// SIGKILL sent; SIGKILL again until the exit.
    Kill,
}

/// The policy state of one plugin.
#[derive(Debug, Clone)]
pub struct Policy {
    state: PluginState,
    enabled: bool,
    auto_disabled: Option<String>,
    failures: u32,
    restarts: u64,
    ready_at: Option<Instant>,
    after_stop: AfterStop,
    backoff_until: Option<Instant>,
    stop: Option<(StopPhase, Instant)>,
    kill_at: Option<Instant>,
    kill_reason: Option<String>,
    /// Why it needs a licence (code, sentence), while it does.
    licence: Option<(String, String)>,
    timing: Timing,
}

impl Policy {
    /// A plugin found by a scan, with its persisted state; nothing runs before [`Input::Loaded`].
    pub fn new(timing: Timing, enabled: bool, auto_disabled: Option<String>) -> Policy {
        Policy {
            state: PluginState::Stopped,
            enabled,
            auto_disabled,
            failures: 0,
            restarts: 0,
            ready_at: None,
            after_stop: AfterStop::Nothing,
            backoff_until: None,
            stop: None,
            kill_at: None,
            kill_reason: None,
            licence: None,
            timing,
        }
    }

    /// Current state.
    pub fn state(&self) -> PluginState {
        self.state
    }

    /// Whether it should run (persisted).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Why it was disabled automatically (persisted).
    pub fn auto_disabled(&self) -> Option<&str> {
        self.auto_disabled.as_deref()
    }

    /// Failures in a row, as of `now` (a plugin ready for a minute has none).
    pub fn consecutive_failures(&self, now: Instant) -> u32 {
        if self.healthy(now) { 0 } else { self.failures }
    }

    /// Why it is waiting for a licence (`None` unless [`PluginState::LicenceNeeded`]).
    pub fn licence_needed(&self) -> Option<&str> {
        match (&self.licence, self.state) {
            (Some((_, why)), PluginState::LicenceNeeded) => Some(why),
            _ => None,
        }
    }

    /// Restarts since the host started.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// When to feed [`Input::Tick`] next, if a timer runs.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.backoff_until,
            self.stop.map(|(_, at)| at),
            self.kill_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn healthy(&self, now: Instant) -> bool {
        self.state == PluginState::Ready
            && self
                .ready_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.timing.healthy_after)
    }

    /// The wait before restarting after failure number `n` (1-based) in a row, in units of the
    /// backoff base (1 s): 1, 1, 2, 4, 8, 16, 16 … and 0 after a healthy run.
    pub fn backoff(n: u32, after_healthy_run: bool) -> u32 {
        if after_healthy_run {
            return 0;
        }
        let exp = n.saturating_sub(2).min(4);
        1u32 << exp
    }

    fn running(&self) -> bool {
        matches!(
            self.state,
            PluginState::Starting | PluginState::Ready | PluginState::Hung
        )
    }

    /// Feed one input; returns the actions to perform in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        use Action::*;
        match input {
            Input::Loaded => {
                if self.enabled {
                    self.state = PluginState::Starting;
                    vec![Spawn]
                } else {
                    self.state = PluginState::Disabled;
                    vec![]
                }
            }
            Input::Enable => {
                self.enabled = true;
                self.auto_disabled = None;
                self.failures = 0;
                let mut acts = vec![Persist {
                    enabled: true,
                    auto_disabled: None,
                }];
                match self.state {
                    PluginState::Disabled
                    | PluginState::Stopped
                    | PluginState::Backoff
                    | PluginState::LicenceNeeded
                    | PluginState::Held => {
                        self.state = PluginState::Starting;
                        self.backoff_until = None;
                        acts.push(Spawn);
                    }
                    PluginState::Stopping => self.after_stop = AfterStop::Start,
                    PluginState::Starting | PluginState::Ready | PluginState::Hung => {}
                }
                acts
            }
            Input::Disable => {
                self.enabled = false;
                self.auto_disabled = None;
                self.failures = 0;
                let acts = vec![Persist {
                    enabled: false,
                    auto_disabled: None,
                }];
                self.stop_then(AfterStop::Nothing, acts, now)
            }
            Input::Restart => {
                self.failures = 0;
                match self.state {
                    PluginState::Disabled => vec![],
                    PluginState::Backoff | PluginState::Stopped => {
                        self.state = PluginState::Starting;
                        self.backoff_until = None;
                        vec![Spawn]
                    }
                    _ => self.stop_then(AfterStop::Start, vec![], now),
                }
            }
            Input::Ready => {
                if self.state == PluginState::Starting {
                    self.state = PluginState::Ready;
                    self.ready_at = Some(now);
                }
                vec![]
            }
            Input::Failed { reason } => {
                let details = json!({ "reason": reason });
                self.fail(reason, details, now)
            }
            Input::StartFailed { reason } => self.kill_now(reason),
            Input::Hung { missed } => {
                let reason = format!("hung: missed {missed} heartbeats in a row");
                let mut acts = vec![Record {
                    kind: EventKind::Hung,
                    message: reason.clone(),
                    details: json!({ "missed": missed }),
                }];
                acts.extend(self.kill_now(reason));
                acts
            }
            Input::ConnectionLost { reason } => {
                // A stop closes the connection too; and a kill already under way has its reason.
                if self.state == PluginState::Stopping || self.kill_reason.is_some() {
                    return vec![];
                }
                self.kill_reason = Some(format!("closed its connection ({reason})"));
                self.kill_at = Some(now + self.timing.lost_grace);
                vec![]
            }
            Input::Exited(exit) => self.exited(exit, now),
            Input::Tick => self.tick(now),
            Input::LicenceMissing { code, reason } => {
                // Not a failure: no count, no backoff, no restart; it waits for a licence.
                self.state = PluginState::LicenceNeeded;
                self.backoff_until = None;
                self.ready_at = None;
                self.licence_needed_event(code, reason, true)
            }
            Input::LicenceRevoked { code, reason } => match self.state {
                PluginState::Starting | PluginState::Ready | PluginState::Hung => {
                    let mut acts = self.licence_needed_event(code, reason, true);
                    self.state = PluginState::Stopping;
                    self.after_stop = AfterStop::LicenceNeeded;
                    acts.extend(self.begin_stop(now));
                    acts
                }
                PluginState::Stopping => {
                    if self.after_stop == AfterStop::Start {
                        self.after_stop = AfterStop::LicenceNeeded;
                    }
                    self.licence_needed_event(code, reason, false)
                }
                PluginState::Backoff => {
                    self.state = PluginState::LicenceNeeded;
                    self.backoff_until = None;
                    self.licence_needed_event(code, reason, true)
                }
                PluginState::LicenceNeeded => self.licence_needed_event(code, reason, false),
                PluginState::Disabled | PluginState::Stopped | PluginState::Held => vec![],
            },
            Input::LicenceValid => {
                self.licence = None;
                if self.state != PluginState::LicenceNeeded {
                    return vec![];
                }
                if self.enabled {
                    self.state = PluginState::Starting;
                    vec![Spawn]
                } else {
                    self.state = PluginState::Disabled;
                    vec![]
                }
            }
            Input::Held => {
                // Not a failure: no count, no backoff, no restart; it waits for safe mode to end.
                self.state = PluginState::Held;
                self.backoff_until = None;
                self.ready_at = None;
                vec![]
            }
            Input::Released => {
                if self.state != PluginState::Held {
                    return vec![];
                }
                if self.enabled {
                    self.state = PluginState::Starting;
                    vec![Spawn]
                } else {
                    self.state = PluginState::Disabled;
                    vec![]
                }
            }
            Input::Retire => {
                self.after_stop = AfterStop::Nothing;
                self.backoff_until = None;
                if self.running() {
                    self.state = PluginState::Stopping;
                    self.begin_stop(now)
                } else {
                    if self.state != PluginState::Stopping {
                        self.state = PluginState::Stopped;
                    }
                    vec![]
                }
            }
        }
    }

    /// Remember why it needs a licence; a `licence-needed` event when `always`, or when the reason's
    /// code changed (a periodic check finding the same refusal records nothing).
    fn licence_needed_event(&mut self, code: String, reason: String, always: bool) -> Vec<Action> {
        let same = self.licence.as_ref().is_some_and(|(c, _)| *c == code);
        self.licence = Some((code.clone(), reason.clone()));
        if same && !always {
            return vec![];
        }
        vec![Action::Record {
            kind: EventKind::LicenseNeeded,
            message: format!("licence needed: {reason}"),
            details: json!({ "code": code, "reason": reason }),
        }]
    }

    /// SIGKILL now; the exit that follows is reported with `reason`.
    fn kill_now(&mut self, reason: String) -> Vec<Action> {
        self.kill_reason = Some(reason);
        self.kill_at = None;
        vec![Action::Signal {
            signal: Signal::Kill,
            note: None,
        }]
    }

    fn exited(&mut self, exit: Exit, now: Instant) -> Vec<Action> {
        self.stop = None;
        self.kill_at = None;
        let reason = match self.kill_reason.take() {
            Some(why) => format!("{why}; {}", exit.description),
            None => exit.description.clone(),
        };
        let details = json!({
            "exit_code": exit.code, "signal": exit.signal, "uptime_ms": exit.uptime_ms,
            "stderr_tail": exit.stderr_tail, "reason": reason,
        });
        if self.state == PluginState::Stopping {
            let mut acts = vec![Action::Record {
                kind: EventKind::Stopped,
                message: format!("stopped ({})", exit.description),
                details,
            }];
            acts.extend(self.stopped());
            acts
        } else {
            self.fail(reason, details, now)
        }
    }

    fn fail(&mut self, reason: String, details: serde_json::Value, now: Instant) -> Vec<Action> {
        if !self.running() {
            // A stop was asked for (or the plugin is not running): not a failure.
            return self.stopped();
        }
        let healthy = self.healthy(now);
        if healthy {
            self.failures = 0;
        }
        self.failures += 1;
        self.ready_at = None;
        let n = self.failures;
        let mut message = format!("{reason} (failure {n} in a row)");
        if n >= MAX_CONSECUTIVE_FAILURES {
            let why = format!("disabled after {n} failures in a row; last: {reason}");
            self.state = PluginState::Disabled;
            self.enabled = false;
            self.auto_disabled = Some(why.clone());
            return vec![
                Action::Record {
                    kind: EventKind::Crashed,
                    message,
                    details,
                },
                Action::Persist {
                    enabled: false,
                    auto_disabled: Some(why),
                },
            ];
        }
        let wait = (self.timing.backoff_base * Policy::backoff(n, healthy))
            .min(self.timing.backoff_base * MAX_BACKOFF_UNITS);
        message.push_str(&format!("; restarting in {} ms", wait.as_millis()));
        let mut acts = vec![Action::Record {
            kind: EventKind::Crashed,
            message,
            details,
        }];
        if wait.is_zero() {
            // Restart at once, in this turn (a timer would add its 1 ms granularity).
            acts.extend(self.restart_after_failure());
        } else {
            self.state = PluginState::Backoff;
            self.backoff_until = Some(now + wait);
        }
        acts
    }

    fn restart_after_failure(&mut self) -> Vec<Action> {
        self.state = PluginState::Starting;
        self.backoff_until = None;
        self.restarts += 1;
        vec![
            Action::Record {
                kind: EventKind::Restarted,
                message: format!("restarting after failure {} in a row", self.failures),
                details: json!({}),
            },
            Action::Spawn,
        ]
    }

    /// The process is gone after a stop was asked for (or was not running).
    fn stopped(&mut self) -> Vec<Action> {
        self.ready_at = None;
        match (self.state, self.after_stop) {
            (PluginState::Stopping, AfterStop::Start) => {
                self.after_stop = AfterStop::Nothing;
                self.state = PluginState::Starting;
                self.restarts += 1;
                vec![
                    Action::Record {
                        kind: EventKind::Restarted,
                        message: "restarted on request".into(),
                        details: json!({}),
                    },
                    Action::Spawn,
                ]
            }
            (PluginState::Stopping, AfterStop::Nothing) => {
                self.state = PluginState::Disabled;
                vec![]
            }
            (PluginState::Stopping, AfterStop::LicenceNeeded) => {
                self.after_stop = AfterStop::Nothing;
                self.state = PluginState::LicenceNeeded;
                vec![]
            }
            _ => vec![],
        }
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        let due = |at: Option<Instant>| at.is_some_and(|t| t <= now);
        let mut acts = Vec::new();
        if due(self.backoff_until) {
            self.backoff_until = None;
            if self.state == PluginState::Backoff {
                acts.extend(self.restart_after_failure());
            }
        }
        if due(self.stop.map(|(_, at)| at)) {
            acts.extend(self.escalate_stop(now));
        }
        if due(self.kill_at) {
            self.kill_at = None;
            acts.push(Action::Signal {
                signal: Signal::Kill,
                note: None,
            });
        }
        acts
    }

    /// Ask the process to stop; the escalation runs on the stop timer. A pending lost-connection
    /// kill is dropped: the escalation covers it.
    fn begin_stop(&mut self, now: Instant) -> Vec<Action> {
        self.kill_at = None;
        self.stop = Some((StopPhase::Shutdown, now + self.timing.shutdown_grace));
        vec![Action::SendShutdown]
    }

    fn escalate_stop(&mut self, now: Instant) -> Vec<Action> {
        let Some((phase, _)) = self.stop else {
            return vec![];
        };
        let next = now + self.timing.term_grace;
        let (signal, note, phase) = match phase {
            StopPhase::Shutdown => (
                Signal::Term,
                Some("no exit after shutdown: sending SIGTERM"),
                StopPhase::Term,
            ),
            StopPhase::Term => (
                Signal::Kill,
                Some("no exit after SIGTERM: sending SIGKILL"),
                StopPhase::Kill,
            ),
            StopPhase::Kill => (Signal::Kill, None, StopPhase::Kill),
        };
        self.stop = Some((phase, next));
        vec![Action::Signal { signal, note }]
    }

    fn stop_then(&mut self, after: AfterStop, mut acts: Vec<Action>, now: Instant) -> Vec<Action> {
        if self.running() {
            self.state = PluginState::Stopping;
            self.after_stop = after;
            acts.extend(self.begin_stop(now));
        } else if self.state == PluginState::Stopping {
            self.after_stop = after;
        } else if after == AfterStop::Start {
            self.state = PluginState::Starting;
            self.backoff_until = None;
            acts.push(Action::Spawn);
        } else {
            self.state = PluginState::Disabled;
            self.backoff_until = None;
        }
        acts
    }
}

#[cfg(test)]
mod tests;
