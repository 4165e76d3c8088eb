//! The policy driven with paused tokio time and no processes: every timer it owns (backoff, stop
//! escalation, lost-connection grace) fires by advancing the clock and feeding `Input::Tick`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn loaded() -> Policy {
    let mut p = Policy::new(Timing::default(), true, None);
    assert_eq!(p.handle(Input::Loaded, Instant::now()), vec![Action::Spawn]);
    p
}

fn ready() -> Policy {
    let mut p = loaded();
    p.handle(Input::Ready, Instant::now());
    assert_eq!(p.state(), PluginState::Ready);
    p
}

fn failed(p: &mut Policy) -> Vec<Action> {
    p.handle(Input::Exited(exit("exited with code 1")), Instant::now())
}

fn exit(description: &str) -> Exit {
    Exit {
        description: description.into(),
        ..Exit::default()
    }
}

/// The time until the policy's next timer.
fn wait(p: &Policy) -> Option<Duration> {
    p.deadline()
        .map(|t| t.saturating_duration_since(Instant::now()))
}

/// Advance to the next deadline and feed the tick.
async fn tick(p: &mut Policy) -> Vec<Action> {
    let d = wait(p).expect("a timer runs");
    tokio::time::advance(d).await;
    p.handle(Input::Tick, Instant::now())
}

fn messages(acts: &[Action], want: EventKind) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Record { kind, message, .. } if *kind == want => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn signal(signal: Signal, note: Option<&'static str>) -> Action {
    Action::Signal { signal, note }
}

#[tokio::test(start_paused = true)]
async fn crash_loop_backs_off_then_disables_after_ten() {
    let mut p = loaded();
    let mut delays = Vec::new();
    for _ in 0..9 {
        failed(&mut p);
        assert_eq!(p.state(), PluginState::Backoff);
        delays.push(wait(&p).expect("backoff scheduled").as_secs());
        // Nothing happens before the deadline.
        tokio::time::advance(wait(&p).unwrap() - Duration::from_millis(1)).await;
        assert!(p.handle(Input::Tick, Instant::now()).is_empty());
        assert!(tick(&mut p).await.contains(&Action::Spawn));
        assert_eq!(p.state(), PluginState::Starting);
    }
    assert_eq!(delays, vec![1, 1, 2, 4, 8, 16, 16, 16, 16]);
    let acts = failed(&mut p);
    assert_eq!(p.state(), PluginState::Disabled);
    assert!(matches!(
        acts.last(),
        Some(Action::Persist { enabled: false, auto_disabled: Some(why) }) if why.contains("10 failures")
    ));
    assert!(p.auto_disabled().is_some());
    assert!(!p.enabled());
    assert_eq!(p.restarts(), 9);
    assert_eq!(p.deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn crash_after_healthy_period_restarts_at_once_then_backs_off() {
    let mut p = ready();
    tokio::time::advance(HEALTHY_AFTER).await;
    assert_eq!(p.consecutive_failures(Instant::now()), 0);
    let acts = failed(&mut p);
    // At once, in the same turn: crashed, restarted, spawn; no timer.
    assert_eq!(messages(&acts, EventKind::Restarted).len(), 1);
    assert_eq!(acts.last(), Some(&Action::Spawn));
    assert_eq!(p.state(), PluginState::Starting);
    assert_eq!(p.deadline(), None);
    // Failing again quickly: the sequence continues 1, 2 …
    failed(&mut p);
    assert_eq!(wait(&p), Some(Duration::from_secs(1)));
    tick(&mut p).await;
    failed(&mut p);
    assert_eq!(wait(&p), Some(Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn ready_for_a_minute_resets_the_count() {
    let mut p = loaded();
    for _ in 0..5 {
        failed(&mut p);
        tick(&mut p).await;
    }
    p.handle(Input::Ready, Instant::now());
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(p.consecutive_failures(Instant::now()), 5);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(p.consecutive_failures(Instant::now()), 0);
    // A failure now counts as the first.
    let acts = failed(&mut p);
    assert!(messages(&acts, EventKind::Crashed)[0].contains("failure 1 in a row"));
}

#[tokio::test(start_paused = true)]
async fn a_hang_kills_at_once_and_counts_as_a_failure_but_a_user_stop_does_not() {
    let mut p = ready();
    let acts = p.handle(Input::Hung { missed: 3 }, Instant::now());
    assert_eq!(
        messages(&acts, EventKind::Hung),
        ["hung: missed 3 heartbeats in a row"]
    );
    assert_eq!(acts.last(), Some(&signal(Signal::Kill, None)));
    let acts = p.handle(
        Input::Exited(exit("killed by signal 9 (SIGKILL)")),
        Instant::now(),
    );
    assert_eq!(p.state(), PluginState::Backoff);
    let crashed = &messages(&acts, EventKind::Crashed)[0];
    assert!(
        crashed.starts_with("hung: missed 3 heartbeats in a row; killed by signal 9"),
        "{crashed}"
    );
    tick(&mut p).await;
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
            Action::SendShutdown
        ]
    );
    assert_eq!(p.state(), PluginState::Stopping);
    let acts = failed(&mut p);
    assert_eq!(messages(&acts, EventKind::Stopped).len(), 1, "{acts:?}");
    assert!(messages(&acts, EventKind::Crashed).is_empty());
    assert_eq!(p.state(), PluginState::Disabled);
    assert_eq!(p.deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn stop_escalates_from_shutdown_to_sigterm_to_sigkill() {
    let mut p = ready();
    assert_eq!(
        p.handle(Input::Disable, Instant::now()).last(),
        Some(&Action::SendShutdown)
    );
    // The shutdown grace, then SIGTERM.
    assert_eq!(wait(&p), Some(Timing::default().shutdown_grace));
    assert_eq!(
        tick(&mut p).await,
        [signal(
            Signal::Term,
            Some("no exit after shutdown: sending SIGTERM")
        )]
    );
    // The term grace, then SIGKILL; repeated every term grace until the exit.
    assert_eq!(wait(&p), Some(Timing::default().term_grace));
    assert_eq!(
        tick(&mut p).await,
        [signal(
            Signal::Kill,
            Some("no exit after SIGTERM: sending SIGKILL")
        )]
    );
    assert_eq!(tick(&mut p).await, [signal(Signal::Kill, None)]);
    let acts = p.handle(
        Input::Exited(exit("killed by signal 9 (SIGKILL)")),
        Instant::now(),
    );
    assert_eq!(
        messages(&acts, EventKind::Stopped),
        ["stopped (killed by signal 9 (SIGKILL))"]
    );
    assert_eq!(p.state(), PluginState::Disabled);
    assert_eq!(p.deadline(), None, "the escalation ends with the exit");
}

#[tokio::test(start_paused = true)]
async fn an_exit_within_the_shutdown_grace_needs_no_signal() {
    let mut p = ready();
    p.handle(Input::Retire, Instant::now());
    tokio::time::advance(Duration::from_secs(1)).await;
    let acts = p.handle(Input::Exited(exit("exited with code 0")), Instant::now());
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Signal { .. })),
        "{acts:?}"
    );
    assert_eq!(p.deadline(), None);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(p.handle(Input::Tick, Instant::now()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_gets_a_grace_then_a_kill_and_names_the_reason() {
    let mut p = ready();
    let acts = p.handle(
        Input::ConnectionLost {
            reason: "EOF".into(),
        },
        Instant::now(),
    );
    assert!(acts.is_empty());
    assert_eq!(wait(&p), Some(LOST_CONNECTION_GRACE));
    assert_eq!(tick(&mut p).await, [signal(Signal::Kill, None)]);
    let acts = p.handle(
        Input::Exited(exit("killed by signal 9 (SIGKILL)")),
        Instant::now(),
    );
    let crashed = &messages(&acts, EventKind::Crashed)[0];
    assert!(
        crashed.starts_with("closed its connection (EOF); killed by signal 9"),
        "{crashed}"
    );
    let Some(Action::Record { details, .. }) = acts.first() else {
        panic!("{acts:?}")
    };
    assert!(
        details["reason"]
            .as_str()
            .unwrap()
            .contains("closed its connection")
    );
}

#[tokio::test(start_paused = true)]
async fn a_process_that_exits_within_the_lost_connection_grace_is_not_killed() {
    let mut p = ready();
    p.handle(
        Input::ConnectionLost {
            reason: "frame of 4294967295 bytes exceeds the limit".into(),
        },
        Instant::now(),
    );
    tokio::time::advance(LOST_CONNECTION_GRACE / 2).await;
    let acts = p.handle(Input::Exited(exit("exited with code 1")), Instant::now());
    assert!(!acts.iter().any(|a| matches!(a, Action::Signal { .. })));
    assert!(
        messages(&acts, EventKind::Crashed)[0].contains("exceeds the limit); exited with code 1")
    );
    // Only the backoff timer is left.
    assert_eq!(wait(&p), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_while_stopping_is_not_a_failure_and_a_start_failure_kills_at_once() {
    let mut p = ready();
    p.handle(Input::Disable, Instant::now());
    let acts = p.handle(
        Input::ConnectionLost {
            reason: "EOF".into(),
        },
        Instant::now(),
    );
    assert!(acts.is_empty());
    assert_eq!(wait(&p), Some(Timing::default().shutdown_grace));

    // A start failure kills now, and its reason wins over a lost connection's.
    let mut p = loaded();
    p.handle(
        Input::ConnectionLost {
            reason: "EOF".into(),
        },
        Instant::now(),
    );
    let acts = p.handle(
        Input::StartFailed {
            reason: "no ready after init".into(),
        },
        Instant::now(),
    );
    assert_eq!(acts, [signal(Signal::Kill, None)]);
    assert_eq!(p.deadline(), None, "the grace timer is no longer needed");
    let acts = p.handle(
        Input::Exited(exit("killed by signal 9 (SIGKILL)")),
        Instant::now(),
    );
    assert!(messages(&acts, EventKind::Crashed)[0].starts_with("no ready after init; killed"));
}

#[tokio::test(start_paused = true)]
async fn restart_stops_then_spawns_and_enable_after_auto_disable() {
    let mut p = ready();
    assert_eq!(
        p.handle(Input::Restart, Instant::now()),
        vec![Action::SendShutdown]
    );
    let acts = p.handle(Input::Exited(exit("exited with code 0")), Instant::now());
    assert!(acts.contains(&Action::Spawn));
    assert_eq!(
        messages(&acts, EventKind::Restarted),
        ["restarted on request"]
    );
    assert_eq!(p.state(), PluginState::Starting);
    // Auto-disable, then enable by a user: counters reset, spawn.
    for _ in 0..MAX_CONSECUTIVE_FAILURES {
        if p.state() == PluginState::Backoff {
            tick(&mut p).await;
        }
        failed(&mut p);
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
    assert!(p.enabled());
}

#[tokio::test(start_paused = true)]
async fn disabled_at_load_does_not_spawn_and_a_disable_cancels_the_backoff() {
    let mut p = Policy::new(Timing::default(), false, Some("crashed 10 times".into()));
    assert!(p.handle(Input::Loaded, Instant::now()).is_empty());
    assert_eq!(p.state(), PluginState::Disabled);
    assert_eq!(p.auto_disabled(), Some("crashed 10 times"));
    assert!(!p.enabled());

    let mut p = loaded();
    failed(&mut p);
    assert!(p.deadline().is_some());
    p.handle(Input::Disable, Instant::now());
    assert_eq!(p.state(), PluginState::Disabled);
    assert_eq!(p.deadline(), None);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(p.handle(Input::Tick, Instant::now()).is_empty());
}

fn missing(code: &str) -> Input {
    Input::LicenceMissing {
        code: code.into(),
        reason: format!("reason {code}"),
    }
}

fn revoked(code: &str) -> Input {
    Input::LicenceRevoked {
        code: code.into(),
        reason: format!("reason {code}"),
    }
}

/// Without a licence a plugin waits: no failure counted, no timer, no restart; retrying (enable,
/// restart) asks the gate again; a valid licence starts it.
#[tokio::test(start_paused = true)]
async fn a_missing_licence_waits_without_counting_failures() {
    let mut p = loaded();
    let acts = p.handle(missing("missing"), Instant::now());
    assert_eq!(p.state(), PluginState::LicenceNeeded);
    assert_eq!(
        messages(&acts, EventKind::LicenseNeeded),
        vec!["licence needed: reason missing"]
    );
    assert_eq!(p.licence_needed(), Some("reason missing"));
    assert_eq!(p.deadline(), None, "no backoff timer");
    assert_eq!(
        (p.restarts(), p.consecutive_failures(Instant::now())),
        (0, 0)
    );
    // A restart or an enable tries again (the glue asks the gate at the spawn).
    assert_eq!(
        p.handle(Input::Restart, Instant::now()),
        vec![Action::Spawn]
    );
    p.handle(missing("missing"), Instant::now());
    let acts = p.handle(Input::Enable, Instant::now());
    assert!(acts.contains(&Action::Spawn), "{acts:?}");
    p.handle(missing("expired"), Instant::now());
    // The same refusal found again by a periodic check records nothing; another one does.
    assert!(p.handle(revoked("expired"), Instant::now()).is_empty());
    let acts = p.handle(revoked("untrusted_publisher"), Instant::now());
    assert_eq!(messages(&acts, EventKind::LicenseNeeded).len(), 1);
    assert_eq!(
        p.handle(Input::LicenceValid, Instant::now()),
        vec![Action::Spawn]
    );
    assert_eq!(p.state(), PluginState::Starting);
    assert_eq!(p.licence_needed(), None);
    assert_eq!(p.restarts(), 0);
}

/// A running plugin whose licence goes stops (the usual escalation) and waits; a disabled one
/// stays disabled when a licence arrives.
#[tokio::test(start_paused = true)]
async fn a_revoked_licence_stops_a_running_plugin_and_waits() {
    let mut p = ready();
    let acts = p.handle(revoked("missing"), Instant::now());
    assert!(acts.contains(&Action::SendShutdown), "{acts:?}");
    assert_eq!(messages(&acts, EventKind::LicenseNeeded).len(), 1);
    assert_eq!(p.state(), PluginState::Stopping);
    let acts = p.handle(Input::Exited(exit("exited with code 0")), Instant::now());
    assert_eq!(messages(&acts, EventKind::Stopped).len(), 1);
    assert!(!acts.contains(&Action::Spawn));
    assert_eq!(p.state(), PluginState::LicenceNeeded);
    assert_eq!(p.consecutive_failures(Instant::now()), 0);
    // Disabled while waiting: a licence does not start it.
    p.handle(Input::Disable, Instant::now());
    assert_eq!(p.state(), PluginState::Disabled);
    assert!(p.handle(Input::LicenceValid, Instant::now()).is_empty());
    assert_eq!(p.state(), PluginState::Disabled);
    // A plugin in backoff whose licence goes waits for one instead of restarting.
    let mut p = loaded();
    failed(&mut p);
    assert_eq!(p.state(), PluginState::Backoff);
    p.handle(revoked("expired"), Instant::now());
    assert_eq!(p.state(), PluginState::LicenceNeeded);
    assert_eq!(p.deadline(), None);
}

/// Held by safe mode, a plugin waits without a process, a timer or a failure; enabling or
/// restarting it asks again (the glue holds it again while safe mode lasts); leaving safe mode
/// starts it, unless it was disabled meanwhile (the banner's "Disable").
#[tokio::test(start_paused = true)]
async fn a_held_plugin_waits_and_starts_when_released_unless_disabled() {
    let mut p = loaded();
    assert!(p.handle(Input::Held, Instant::now()).is_empty());
    assert_eq!(p.state(), PluginState::Held);
    assert!(p.enabled(), "its enabled flag is unchanged");
    assert_eq!(p.deadline(), None, "no timer");
    assert_eq!(
        (p.restarts(), p.consecutive_failures(Instant::now())),
        (0, 0)
    );
    assert_eq!(
        p.handle(Input::Restart, Instant::now()),
        vec![Action::Spawn]
    );
    p.handle(Input::Held, Instant::now());
    let acts = p.handle(Input::Enable, Instant::now());
    assert!(acts.contains(&Action::Spawn), "{acts:?}");
    p.handle(Input::Held, Instant::now());
    // A licence check meanwhile changes nothing.
    assert!(p.handle(revoked("missing"), Instant::now()).is_empty());
    assert!(p.handle(Input::LicenceValid, Instant::now()).is_empty());
    assert_eq!(p.state(), PluginState::Held);
    assert_eq!(
        p.handle(Input::Released, Instant::now()),
        vec![Action::Spawn]
    );
    assert_eq!(p.state(), PluginState::Starting);
    assert_eq!(p.restarts(), 0);
    // Released again (or while not held): nothing.
    assert!(p.handle(Input::Released, Instant::now()).is_empty());

    // Disabled while held: persisted as disabled, and leaving safe mode does not start it.
    let mut p = loaded();
    p.handle(Input::Held, Instant::now());
    let acts = p.handle(Input::Disable, Instant::now());
    assert_eq!(
        acts,
        vec![Action::Persist {
            enabled: false,
            auto_disabled: None
        }]
    );
    assert_eq!(p.state(), PluginState::Disabled);
    assert!(p.handle(Input::Released, Instant::now()).is_empty());
    assert_eq!(p.state(), PluginState::Disabled);
    // Retired while held: stopped, nothing to wait for.
    let mut p = loaded();
    p.handle(Input::Held, Instant::now());
    assert!(p.handle(Input::Retire, Instant::now()).is_empty());
    assert_eq!(p.state(), PluginState::Stopped);
}
