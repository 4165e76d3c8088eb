//! The restart policy of one plugin: a state machine with inputs in and actions out, no I/O.
//!
//! Rules (the spec's): a plugin that fails after it had been ready for [`HEALTHY_AFTER`] restarts at
//! once; each further consecutive failure waits 1, 2, 4, 8, 16 s (capped); the
//! [`MAX_CONSECUTIVE_FAILURES`]th failure in a row disables it automatically. A first failure of a
//! plugin that never became healthy also waits 1 s (s6's rule: a pause between respawns of a service
//! that never became ready). A hung plugin (missed heartbeats), a start timeout and a lost
//! connection are failures like a crash. Stops asked for by a user or the host are not failures.
//!
//! The glue (`supervisor::plugin`) feeds [`Input`]s with the current time and performs the
//! returned [`Action`]s; tests drive it with paused time and no processes.

use std::time::Duration;

use tokio::time::Instant;

use super::view::PluginState;
use crate::store::EventKind;

/// Ready this long and the failure count resets; a failure after that restarts at once.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Failures in a row that disable a plugin.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// Longest wait between restarts, in backoff units (16 s by default).
pub const MAX_BACKOFF_UNITS: u32 = 16;

/// Something that happened to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Host start or rescan found the plugin; `enabled` is its persisted state.
    Loaded {
        /// Persisted enabled state.
        enabled: bool,
    },
    /// A user enabled it.
    Enable,
    /// A user disabled it.
    Disable,
    /// A user asked for a restart.
    Restart,
    /// The process is up and (for 1.1) said ready; for 1.0, init was delivered.
    Ready,
    /// The process failed: it exited unexpectedly, hung, timed out starting, or broke protocol.
    Failed {
        /// What happened, for the event.
        reason: String,
    },
    /// The process exited after a stop was asked for.
    Stopped,
    /// The backoff timer fired.
    BackoffElapsed,
    /// The host is shutting down, or the binary was removed.
    Retire,
}

/// What the glue must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the process and start the handshake.
    Spawn,
    /// Stop the running process (shutdown → SIGTERM → SIGKILL); `Input::Stopped` follows.
    Stop,
    /// Fire `Input::BackoffElapsed` after this long.
    ScheduleRestart(Duration),
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
    },
}

/// What to do once the current process has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Nothing,
    Start,
}

/// The policy state of one plugin.
#[derive(Debug, Clone)]
pub struct Policy {
    state: PluginState,
    failures: u32,
    restarts: u64,
    ready_at: Option<Instant>,
    after_stop: AfterStop,
    auto_disabled: Option<String>,
    backoff_base: Duration,
    healthy_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new()
    }
}

impl Policy {
    /// A plugin not yet loaded.
    pub fn new() -> Policy {
        Policy {
            state: PluginState::Stopped,
            failures: 0,
            restarts: 0,
            ready_at: None,
            after_stop: AfterStop::Nothing,
            auto_disabled: None,
            backoff_base: Duration::from_secs(1),
            healthy_after: HEALTHY_AFTER,
        }
    }

    /// A policy whose backoff unit is `base` instead of 1 s (waits of 1, 2, 4, 8, 16 units) and
    /// whose healthy period is `healthy_after` instead of 60 s.
    pub fn with_timing(base: Duration, healthy_after: Duration) -> Policy {
        Policy {
            backoff_base: base,
            healthy_after,
            ..Policy::new()
        }
    }

    /// Current state.
    pub fn state(&self) -> PluginState {
        self.state
    }

    /// Failures in a row, as of `now` (a plugin ready for a minute has none).
    pub fn consecutive_failures(&self, now: Instant) -> u32 {
        if self.healthy(now) { 0 } else { self.failures }
    }

    /// Restarts since the host started.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// When the current process became ready.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    /// Why it was disabled automatically.
    pub fn auto_disabled(&self) -> Option<&str> {
        self.auto_disabled.as_deref()
    }

    fn healthy(&self, now: Instant) -> bool {
        self.state == PluginState::Ready
            && self
                .ready_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.healthy_after)
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
            Input::Loaded { enabled } => {
                if enabled {
                    self.state = PluginState::Starting;
                    vec![Spawn]
                } else {
                    self.state = PluginState::Disabled;
                    vec![]
                }
            }
            Input::Enable => {
                let was_auto = self.auto_disabled.take();
                self.failures = 0;
                let mut acts = vec![Persist {
                    enabled: true,
                    auto_disabled: None,
                }];
                let _ = was_auto;
                match self.state {
                    PluginState::Disabled | PluginState::Stopped | PluginState::Backoff => {
                        self.state = PluginState::Starting;
                        acts.push(Spawn);
                    }
                    PluginState::Stopping => self.after_stop = AfterStop::Start,
                    PluginState::Starting | PluginState::Ready | PluginState::Hung => {}
                }
                acts
            }
            Input::Disable => {
                self.auto_disabled = None;
                self.failures = 0;
                let acts = vec![Persist {
                    enabled: false,
                    auto_disabled: None,
                }];
                self.stop_then(AfterStop::Nothing, acts)
            }
            Input::Restart => {
                self.failures = 0;
                match self.state {
                    PluginState::Disabled => vec![],
                    PluginState::Backoff | PluginState::Stopped => {
                        self.state = PluginState::Starting;
                        vec![Spawn]
                    }
                    _ => self.stop_then(AfterStop::Start, vec![]),
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
                if !self.running() {
                    // A stop was asked for (or the plugin is not running): not a failure.
                    return self.handle(Input::Stopped, now);
                }
                let healthy = self.healthy(now);
                if healthy {
                    self.failures = 0;
                }
                self.failures += 1;
                self.ready_at = None;
                let n = self.failures;
                let mut acts = vec![Record {
                    kind: EventKind::Crashed,
                    message: format!("{reason} (failure {n} in a row)"),
                }];
                if n >= MAX_CONSECUTIVE_FAILURES {
                    let why = format!("disabled after {n} failures in a row; last: {reason}");
                    self.state = PluginState::Disabled;
                    self.auto_disabled = Some(why.clone());
                    acts.push(Persist {
                        enabled: false,
                        auto_disabled: Some(why),
                    });
                    return acts;
                }
                let wait = (self.backoff_base * Policy::backoff(n, healthy))
                    .min(self.backoff_base * MAX_BACKOFF_UNITS);
                self.state = PluginState::Backoff;
                if let Some(Record { message, .. }) = acts.first_mut() {
                    message.push_str(&format!("; restarting in {} ms", wait.as_millis()));
                }
                acts.push(ScheduleRestart(wait));
                acts
            }
            Input::Stopped => {
                self.ready_at = None;
                match (self.state, self.after_stop) {
                    (PluginState::Stopping, AfterStop::Start) => {
                        self.after_stop = AfterStop::Nothing;
                        self.state = PluginState::Starting;
                        self.restarts += 1;
                        vec![
                            Record {
                                kind: EventKind::Restarted,
                                message: "restarted on request".into(),
                            },
                            Spawn,
                        ]
                    }
                    (PluginState::Stopping, AfterStop::Nothing) => {
                        self.state = PluginState::Disabled;
                        vec![]
                    }
                    _ => vec![],
                }
            }
            Input::BackoffElapsed => {
                if self.state != PluginState::Backoff {
                    return vec![];
                }
                self.state = PluginState::Starting;
                self.restarts += 1;
                vec![
                    Record {
                        kind: EventKind::Restarted,
                        message: format!("restarting after failure {} in a row", self.failures),
                    },
                    Spawn,
                ]
            }
            Input::Retire => {
                self.after_stop = AfterStop::Nothing;
                if self.running() {
                    self.state = PluginState::Stopping;
                    vec![Stop]
                } else {
                    if self.state != PluginState::Stopping {
                        self.state = PluginState::Stopped;
                    }
                    vec![]
                }
            }
        }
    }

    fn stop_then(&mut self, after: AfterStop, mut acts: Vec<Action>) -> Vec<Action> {
        if self.running() {
            self.state = PluginState::Stopping;
            self.after_stop = after;
            acts.push(Action::Stop);
        } else if self.state == PluginState::Stopping {
            self.after_stop = after;
        } else if after == AfterStop::Start {
            self.state = PluginState::Starting;
            acts.push(Action::Spawn);
        } else {
            self.state = PluginState::Disabled;
        }
        acts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(p: &mut Policy, now: Instant) -> Vec<Action> {
        p.handle(
            Input::Failed {
                reason: "exit code 1".into(),
            },
            now,
        )
    }

    fn delay(acts: &[Action]) -> Option<Duration> {
        acts.iter().find_map(|a| match a {
            Action::ScheduleRestart(d) => Some(*d),
            _ => None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_backs_off_then_disables_after_ten() {
        let mut p = Policy::new();
        assert_eq!(
            p.handle(Input::Loaded { enabled: true }, Instant::now()),
            vec![Action::Spawn]
        );
        let mut delays = Vec::new();
        for _ in 0..9 {
            let acts = failed(&mut p, Instant::now());
            let d = delay(&acts).expect("backoff scheduled");
            delays.push(d.as_secs());
            assert_eq!(p.state(), PluginState::Backoff);
            tokio::time::advance(d).await;
            assert!(
                p.handle(Input::BackoffElapsed, Instant::now())
                    .contains(&Action::Spawn)
            );
        }
        assert_eq!(delays, vec![1, 1, 2, 4, 8, 16, 16, 16, 16]);
        let acts = failed(&mut p, Instant::now());
        assert_eq!(p.state(), PluginState::Disabled);
        assert!(matches!(
            acts.last(),
            Some(Action::Persist { enabled: false, auto_disabled: Some(why) }) if why.contains("10 failures")
        ));
        assert!(p.auto_disabled().is_some());
        assert_eq!(p.restarts(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn crash_after_healthy_period_restarts_at_once_then_backs_off() {
        let mut p = Policy::new();
        p.handle(Input::Loaded { enabled: true }, Instant::now());
        p.handle(Input::Ready, Instant::now());
        tokio::time::advance(HEALTHY_AFTER).await;
        assert_eq!(p.consecutive_failures(Instant::now()), 0);
        let acts = failed(&mut p, Instant::now());
        assert_eq!(delay(&acts), Some(Duration::ZERO));
        p.handle(Input::BackoffElapsed, Instant::now());
        // Failing again quickly: the sequence continues 1, 2, 4 …
        let acts = failed(&mut p, Instant::now());
        assert_eq!(delay(&acts), Some(Duration::from_secs(1)));
        p.handle(Input::BackoffElapsed, Instant::now());
        assert_eq!(
            delay(&failed(&mut p, Instant::now())),
            Some(Duration::from_secs(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ready_for_a_minute_resets_the_count() {
        let mut p = Policy::new();
        p.handle(Input::Loaded { enabled: true }, Instant::now());
        for _ in 0..5 {
            let d = delay(&failed(&mut p, Instant::now())).unwrap();
            tokio::time::advance(d).await;
            p.handle(Input::BackoffElapsed, Instant::now());
        }
        p.handle(Input::Ready, Instant::now());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(p.consecutive_failures(Instant::now()), 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(p.consecutive_failures(Instant::now()), 0);
        // A failure now counts as the first.
        let acts = failed(&mut p, Instant::now());
        assert!(
            matches!(&acts[0], Action::Record { message, .. } if message.contains("failure 1 in a row"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hang_is_a_failure_but_user_stop_is_not() {
        let mut p = Policy::new();
        p.handle(Input::Loaded { enabled: true }, Instant::now());
        p.handle(Input::Ready, Instant::now());
        let acts = p.handle(
            Input::Failed {
                reason: "missed 3 heartbeats".into(),
            },
            Instant::now(),
        );
        assert_eq!(p.state(), PluginState::Backoff);
        assert!(matches!(
            &acts[0],
            Action::Record {
                kind: EventKind::Crashed,
                ..
            }
        ));
        p.handle(Input::BackoffElapsed, Instant::now());
        p.handle(Input::Ready, Instant::now());
        // User disables: stop, then the exit is not a failure.
        let acts = p.handle(Input::Disable, Instant::now());
        assert_eq!(
            acts,
            vec![
                Action::Persist {
                    enabled: false,
                    auto_disabled: None
                },
                Action::Stop
            ]
        );
        assert_eq!(p.state(), PluginState::Stopping);
        // The process exits (may be reported as a failure by the glue): still not counted.
        let acts = failed(&mut p, Instant::now());
        assert!(acts.is_empty(), "{acts:?}");
        assert_eq!(p.state(), PluginState::Disabled);
    }

    #[tokio::test(start_paused = true)]
    async fn restart_stops_then_spawns_and_enable_after_auto_disable() {
        let mut p = Policy::new();
        p.handle(Input::Loaded { enabled: true }, Instant::now());
        p.handle(Input::Ready, Instant::now());
        assert_eq!(p.handle(Input::Restart, Instant::now()), vec![Action::Stop]);
        let acts = p.handle(Input::Stopped, Instant::now());
        assert!(acts.contains(&Action::Spawn));
        assert_eq!(p.state(), PluginState::Starting);
        // Auto-disable, then enable by a user: counters reset, spawn.
        for _ in 0..MAX_CONSECUTIVE_FAILURES {
            if p.state() == PluginState::Backoff {
                p.handle(Input::BackoffElapsed, Instant::now());
            }
            failed(&mut p, Instant::now());
        }
        assert_eq!(p.state(), PluginState::Disabled);
        let acts = p.handle(Input::Enable, Instant::now());
        assert_eq!(
            acts,
            vec![
                Action::Persist {
                    enabled: true,
                    auto_disabled: None
                },
                Action::Spawn
            ]
        );
        assert_eq!(p.consecutive_failures(Instant::now()), 0);
        assert!(p.auto_disabled().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_at_load_does_not_spawn_and_backoff_timer_after_disable_is_ignored() {
        let mut p = Policy::new();
        assert!(
            p.handle(Input::Loaded { enabled: false }, Instant::now())
                .is_empty()
        );
        assert_eq!(p.state(), PluginState::Disabled);
        let mut p = Policy::new();
        p.handle(Input::Loaded { enabled: true }, Instant::now());
        failed(&mut p, Instant::now());
        p.handle(Input::Disable, Instant::now());
        assert_eq!(p.state(), PluginState::Disabled);
        assert!(p.handle(Input::BackoffElapsed, Instant::now()).is_empty());
    }
}
