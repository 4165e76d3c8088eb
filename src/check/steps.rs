//! The checklist of `toru plugin check`: the steps in order, what each needs, and the outcomes so
//! far. A small state machine without I/O: the driver (`check::run`) asks [`Checklist::next`]
//! for the step to run, runs it, and [`Checklist::record`]s how it went; a step that cannot run
//! is recorded as `SKIP` by `next` itself, saying why.
//!
//! A step runs only if none of the steps it [needs](Step::needs) failed or was skipped because
//! of a failure; otherwise it is skipped "after a failed `<step>`", naming the first failure of the
//! chain. Once the plugin's process has ended where it should not have
//! ([`Checklist::process_gone`]), every later step that talks to it is skipped too.

use serde::Serialize;

/// One step of the check, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Step {
    /// A package's signature: reported, never a failure (trust is the device's business).
    Signature,
    /// `--metadata`, with the host's rules and timeout.
    Metadata,
    /// A package's manifest: valid, fits this device and host, agrees with `--metadata`.
    Manifest,
    /// Spawned as the host spawns a plugin.
    Start,
    /// Its socket accepts a connection within the socket timeout.
    Socket,
    /// `init` goes to the plugin.
    Init,
    /// 1.1: `ready` within the ready timeout; 1.0: init delivered.
    Ready,
    /// 1.1: a `ping` answered by its `pong`.
    Heartbeat,
    /// `GET /` forwarded as the host forwards a request.
    Http,
    /// 1.1: the plugin's own KV requests were served.
    Kv,
    /// 1.1: new settings in a `config` message.
    Settings,
    /// `shutdown` (1.1: answered by `shutdown_ack`).
    Shutdown,
    /// The process ends within the shutdown grace.
    Exit,
}

impl Step {
    /// Every step, in order.
    pub(crate) const ALL: [Step; 13] = [
        Step::Signature,
        Step::Metadata,
        Step::Manifest,
        Step::Start,
        Step::Socket,
        Step::Init,
        Step::Ready,
        Step::Heartbeat,
        Step::Http,
        Step::Kv,
        Step::Settings,
        Step::Shutdown,
        Step::Exit,
    ];

    /// Its name in the output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::Signature => "signature",
            Step::Metadata => "metadata",
            Step::Manifest => "manifest",
            Step::Start => "start",
            Step::Socket => "socket",
            Step::Init => "init",
            Step::Ready => "ready",
            Step::Heartbeat => "heartbeat",
            Step::Http => "http",
            Step::Kv => "kv",
            Step::Settings => "settings",
            Step::Shutdown => "shutdown",
            Step::Exit => "exit",
        }
    }

    /// The steps that must not have failed for this one to run. A plugin that does not answer
    /// heartbeats is one the host would restart: nothing after it is worth asking.
    pub(crate) fn needs(self) -> &'static [Step] {
        match self {
            Step::Signature | Step::Metadata => &[],
            Step::Manifest => &[Step::Metadata],
            Step::Start => &[Step::Metadata, Step::Manifest],
            Step::Socket => &[Step::Start],
            Step::Init => &[Step::Socket],
            Step::Ready => &[Step::Init],
            Step::Heartbeat => &[Step::Ready],
            Step::Http | Step::Kv | Step::Settings | Step::Shutdown | Step::Exit => {
                &[Step::Heartbeat]
            }
        }
    }

    /// Whether the step needs the plugin's process running.
    fn needs_process(self) -> bool {
        self >= Step::Socket
    }
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// It did what the host expects.
    Pass,
    /// It did not; the detail says what was expected.
    Fail,
    /// Not checked: not applicable, or after a failure.
    Skip,
}

impl Status {
    /// Its word in the output.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Outcome {
    /// The step.
    pub(crate) step: Step,
    /// How it went.
    pub(crate) status: Status,
    /// Why, for a newcomer.
    pub(crate) detail: String,
    /// The failed step that kept this one from running (its skip is a consequence).
    #[serde(skip)]
    blocked_by: Option<Step>,
}

/// The steps run so far and the next one; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct Checklist {
    outcomes: Vec<Outcome>,
    /// The step during which the process ended unexpectedly.
    gone: Option<Step>,
}

impl Checklist {
    /// A checklist with nothing run yet.
    pub(crate) fn new() -> Checklist {
        Checklist::default()
    }

    /// The next step to run, after recording as skipped those that cannot run; `None` when every
    /// step has an outcome.
    pub(crate) fn next(&mut self) -> Option<Step> {
        while let Some(&step) = Step::ALL.get(self.outcomes.len()) {
            match self.blocker(step) {
                Some((why, by)) => self.outcomes.push(Outcome {
                    step,
                    status: Status::Skip,
                    detail: why,
                    blocked_by: by,
                }),
                None => return Some(step),
            }
        }
        None
    }

    /// Why `step` cannot run (and the failed step behind it), or `None` if it can.
    fn blocker(&self, step: Step) -> Option<(String, Option<Step>)> {
        for need in step.needs() {
            let Some(o) = self.outcome(*need) else {
                continue;
            };
            let failed = match (o.status, o.blocked_by) {
                (Status::Fail, _) => Some(o.step),
                (_, by) => by,
            };
            if let Some(f) = failed {
                return Some((format!("after a failed {}", f.name()), Some(f)));
            }
        }
        match self.gone {
            Some(at) if step.needs_process() => Some((
                format!(
                    "the plugin is no longer running (it ended during {})",
                    at.name()
                ),
                Some(at),
            )),
            _ => None,
        }
    }

    /// Record how the step [`Checklist::next`] returned went. Ignored when every step has an
    /// outcome already.
    pub(crate) fn record(&mut self, status: Status, detail: impl Into<String>) {
        if let Some(&step) = Step::ALL.get(self.outcomes.len()) {
            self.outcomes.push(Outcome {
                step,
                status,
                detail: detail.into(),
                blocked_by: None,
            });
        }
    }

    /// The plugin's process ended during the step just recorded (or the one about to be), where
    /// it should have kept running.
    pub(crate) fn process_gone(&mut self) {
        if self.gone.is_none() {
            let at = self.outcomes.last().map_or(Step::Start, |o| o.step);
            self.gone = Some(at);
        }
    }

    /// The outcome of `step`, if it has one.
    pub(crate) fn outcome(&self, step: Step) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.step == step)
    }

    /// Every outcome so far, in order.
    pub(crate) fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// No step failed.
    pub(crate) fn passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.status != Status::Fail)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Run the checklist, answering each step from `answers` (a step not listed passes); returns
    /// the statuses in order and the steps that were asked to run.
    fn drive(
        answers: &[(Step, Status)],
        gone_at: Option<Step>,
    ) -> (Vec<(Step, Status)>, Vec<Step>) {
        let mut list = Checklist::new();
        let mut asked = Vec::new();
        while let Some(step) = list.next() {
            asked.push(step);
            let status = answers
                .iter()
                .find(|(s, _)| *s == step)
                .map_or(Status::Pass, |(_, st)| *st);
            list.record(status, "");
            if gone_at == Some(step) {
                list.process_gone();
            }
        }
        let statuses = list.outcomes().iter().map(|o| (o.step, o.status)).collect();
        (statuses, asked)
    }

    #[test]
    fn every_step_runs_in_order_when_all_pass() {
        let (statuses, asked) = drive(&[], None);
        assert_eq!(asked, Step::ALL);
        assert!(statuses.iter().all(|(_, s)| *s == Status::Pass));
    }

    #[test]
    fn a_failed_metadata_skips_everything_after_it_but_says_why() {
        let mut list = Checklist::new();
        assert_eq!(list.next(), Some(Step::Signature));
        list.record(Status::Skip, "not a package");
        assert_eq!(list.next(), Some(Step::Metadata));
        list.record(Status::Fail, "invalid id");
        assert_eq!(list.next(), None);
        assert!(!list.passed());
        for o in &list.outcomes()[2..] {
            assert_eq!(o.status, Status::Skip, "{o:?}");
            assert_eq!(o.detail, "after a failed metadata", "{o:?}");
        }
    }

    #[test]
    fn a_skip_that_is_not_a_failure_blocks_nothing() {
        // A bare executable: no manifest; a 1.0 plugin: no heartbeat.
        let (statuses, asked) = drive(
            &[
                (Step::Manifest, Status::Skip),
                (Step::Heartbeat, Status::Skip),
            ],
            None,
        );
        assert_eq!(asked, Step::ALL);
        assert!(
            statuses
                .iter()
                .all(|(s, st)| *st == Status::Pass || [Step::Manifest, Step::Heartbeat].contains(s))
        );
    }

    #[test]
    fn a_missed_heartbeat_skips_the_rest_naming_it() {
        let mut list = Checklist::new();
        while let Some(step) = list.next() {
            let st = if step == Step::Heartbeat {
                Status::Fail
            } else {
                Status::Pass
            };
            list.record(st, "");
        }
        let after: Vec<&Outcome> = list
            .outcomes()
            .iter()
            .filter(|o| o.step > Step::Heartbeat)
            .collect();
        assert_eq!(after.len(), 5);
        assert!(
            after
                .iter()
                .all(|o| o.status == Status::Skip && o.detail == "after a failed heartbeat")
        );
    }

    #[test]
    fn a_failure_after_heartbeat_leaves_the_others_running() {
        // A garbled HTTP reply: KV, settings, shutdown and exit are still checked.
        let (statuses, asked) = drive(&[(Step::Http, Status::Fail)], None);
        assert_eq!(asked, Step::ALL);
        assert_eq!(
            statuses.iter().filter(|(_, s)| *s == Status::Fail).count(),
            1
        );
        // A plugin that ignores shutdown is still watched until it is gone.
        let (_, asked) = drive(&[(Step::Shutdown, Status::Fail)], None);
        assert_eq!(asked.last(), Some(&Step::Exit));
    }

    #[test]
    fn a_process_that_ends_early_skips_what_needs_it() {
        let (statuses, asked) = drive(&[(Step::Socket, Status::Fail)], Some(Step::Socket));
        assert_eq!(asked.last(), Some(&Step::Socket));
        assert!(
            statuses[5..].iter().all(|(_, s)| *s == Status::Skip),
            "{statuses:?}"
        );
        // Ended while answering a request: what follows needs it running.
        let mut list = Checklist::new();
        while let Some(step) = list.next() {
            if step == Step::Http {
                list.record(Status::Fail, "exited with code 4");
                list.process_gone();
            } else {
                list.record(Status::Pass, "");
            }
        }
        let exit = list.outcome(Step::Exit).unwrap();
        assert_eq!(exit.status, Status::Skip);
        assert_eq!(
            exit.detail,
            "the plugin is no longer running (it ended during http)"
        );
    }

    #[test]
    fn recording_past_the_end_is_ignored() {
        let mut list = Checklist::new();
        while list.next().is_some() {
            list.record(Status::Pass, "");
        }
        list.record(Status::Fail, "late");
        assert!(list.passed());
        assert_eq!(list.outcomes().len(), Step::ALL.len());
    }
}
