//! The safe-mode policy driven with records written by hand: no store, no processes, no clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::store::RunChange;

fn rules(after_unclean: u32, keep: &[&str]) -> Rules {
    Rules {
        after_unclean,
        clean_after: Duration::from_secs(600),
        keep: keep.iter().map(|s| s.to_string()).collect(),
    }
}

fn at(minute: u32) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("2030-01-01T10:{minute:02}:00Z"))
        .unwrap()
        .to_utc()
}

fn kinds(events: &[NewEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// What this run's record looks like after the supervisor started `up` (in that order; each
/// `(id, ready)`), if the host is then killed.
fn killed(mut rec: RunRecord, up: &[(&str, bool)]) -> RunRecord {
    for (id, ready) in up {
        rec.plugin(id, RunChange::Starting);
        if *ready {
            rec.plugin(id, RunChange::Ready);
        }
    }
    rec
}

/// Stopped cleanly: the plugins went, then `running = false`.
fn stopped(mut rec: RunRecord) -> RunRecord {
    rec.plugins.clear();
    rec.running = false;
    rec
}

#[test]
fn the_first_start_counts_nothing() {
    let s = SafeMode::start(rules(3, &[]), None, at(0));
    assert!(!s.safe_mode.active());
    assert!(s.events.is_empty());
    assert!(s.record.running);
    assert_eq!(s.record.started_at, Some(at(0)));
    assert_eq!(s.record.unclean_in_a_row, 0);
}

#[test]
fn safe_mode_is_entered_after_k_unclean_exits_in_a_row_naming_the_culprit() {
    let r = rules(2, &["sysinfo"]);
    let s1 = SafeMode::start(r.clone(), None, at(0));
    let rec = killed(s1.record, &[("sysinfo", true), ("hello", true)]);
    let s2 = SafeMode::start(r.clone(), Some(&rec), at(1));
    assert_eq!(kinds(&s2.events), ["unclean-exit"]);
    assert!(!s2.safe_mode.active(), "one is not two");
    assert_eq!(s2.record.unclean_in_a_row, 1);
    assert!(s2.record.plugins.is_empty(), "this run has none up yet");
    let c = &s2.record.culprits[0];
    assert_eq!(c.plugins, ["hello", "sysinfo"]);
    assert_eq!(c.likely.as_deref(), Some("hello"));
    assert_eq!(c.run_started_at, Some(at(0)));
    assert!(
        s2.events[0]
            .message
            .contains("1 in a row; likely culprit: hello")
    );

    let rec = killed(s2.record, &[("sysinfo", true), ("hello", false)]);
    let s3 = SafeMode::start(r.clone(), Some(&rec), at(2));
    assert_eq!(kinds(&s3.events), ["unclean-exit", "safe-mode"]);
    let m = &s3.safe_mode;
    assert!(m.active());
    assert!(s3.record.safe_mode);
    assert_eq!(s3.record.entered_at, Some(at(2)));
    assert_eq!(
        s3.record.culprits.len(),
        2,
        "one entry per exit, newest first"
    );
    assert_eq!(s3.record.culprits[0].starting, ["hello"]);
    let st = m.status();
    assert_eq!(
        (st.active, st.unclean_in_a_row, st.after_unclean),
        (true, 2, 2)
    );
    assert_eq!(st.likely_culprits, ["hello"], "named once");
    assert!(s3.events[1].message.contains("likely culprit: hello"));

    // Killed again while in safe mode: still in it, entered when it was, no second `safe-mode`.
    let rec = killed(s3.record, &[("sysinfo", true)]);
    let s4 = SafeMode::start(r, Some(&rec), at(3));
    assert_eq!(kinds(&s4.events), ["unclean-exit"]);
    assert!(s4.safe_mode.active());
    assert_eq!(s4.record.entered_at, Some(at(2)));
    assert_eq!(s4.record.unclean_in_a_row, 3);
}

/// The likely culprit: one still starting and not kept, else one not kept, else one starting,
/// else the most recently started; none when nothing was up.
#[test]
fn the_likely_culprit_prefers_a_third_party_plugin_that_was_starting() {
    let r = rules(5, &["keep-a", "keep-b"]);
    let base = SafeMode::start(r.clone(), None, at(0)).record;
    let likely = |up: &[(&str, bool)]| {
        let rec = killed(base.clone(), up);
        SafeMode::start(r.clone(), Some(&rec), at(1))
            .record
            .culprits[0]
            .likely
            .clone()
    };
    assert_eq!(
        likely(&[("x", true), ("y", false), ("keep-a", false)]).as_deref(),
        Some("y"),
        "starting and third-party"
    );
    assert_eq!(
        likely(&[("x", true), ("y", true), ("keep-a", false)]).as_deref(),
        Some("y"),
        "the most recently started third-party one"
    );
    assert_eq!(
        likely(&[("keep-a", false), ("keep-b", true)]).as_deref(),
        Some("keep-a"),
        "kept ones only: the one starting"
    );
    assert_eq!(
        likely(&[("keep-a", true), ("keep-b", true)]).as_deref(),
        Some("keep-b"),
        "kept ones only, all ready: the most recent"
    );
    assert_eq!(likely(&[]), None);
}

#[test]
fn a_clean_stop_never_counts() {
    let r = rules(1, &[]);
    let s = SafeMode::start(r.clone(), None, at(0));
    let rec = stopped(killed(s.record, &[("hello", true)]));
    for n in 1..5 {
        let s = SafeMode::start(r.clone(), Some(&rec), at(n));
        assert!(s.events.is_empty());
        assert!(!s.safe_mode.active());
        assert_eq!(s.record.unclean_in_a_row, 0);
    }
}

/// A run that lasts `clean_secs` resets the count (safe mode lasts for the run); the next start
/// leaves safe mode, and a single later unclean exit does not enter it again.
#[test]
fn a_clean_run_resets_the_count_and_the_next_start_leaves_safe_mode() {
    let r = rules(2, &[]);
    let mut rec = SafeMode::start(r.clone(), None, at(0)).record;
    for n in 1..=2 {
        rec = SafeMode::start(r.clone(), Some(&killed(rec, &[("hello", true)])), at(n)).record;
    }
    let mut s = SafeMode::start(r.clone(), Some(&rec), at(3)).safe_mode;
    assert!(s.active());
    assert!(s.clean_run());
    assert!(!s.clean_run(), "once");
    assert!(s.active(), "not left in the middle of the run");
    let st = s.status();
    assert_eq!(st.unclean_in_a_row, 0);
    assert_eq!(st.likely_culprits, ["hello"], "still shown while it lasts");
    let mut stored = rec.clone();
    s.write_into(&mut stored);
    assert_eq!((stored.unclean_in_a_row, stored.culprits.len()), (0, 0));
    assert!(stored.safe_mode);

    // Stopped cleanly later: the next start leaves safe mode.
    let next = SafeMode::start(r.clone(), Some(&stopped(stored.clone())), at(20));
    assert_eq!(kinds(&next.events), ["safe-mode-left"]);
    assert!(next.events[0].message.contains("clean run"));
    assert!(!next.safe_mode.active());
    assert!(!next.record.safe_mode);
    assert_eq!(next.record.entered_at, None);
    // Or killed after the reset: one unclean exit, below the threshold: left too.
    let next = SafeMode::start(r.clone(), Some(&killed(stored, &[("hello", true)])), at(21));
    assert_eq!(kinds(&next.events), ["unclean-exit", "safe-mode-left"]);
    assert!(!next.safe_mode.active());
    assert_eq!(next.record.unclean_in_a_row, 1);
    let again = SafeMode::start(r, Some(&killed(next.record, &[])), at(22));
    assert!(again.safe_mode.active(), "two in a row again");
}

#[test]
fn zero_turns_safe_mode_off() {
    let r = rules(0, &[]);
    let mut rec = SafeMode::start(r.clone(), None, at(0)).record;
    for n in 1..10 {
        let s = SafeMode::start(r.clone(), Some(&killed(rec, &[("hello", true)])), at(n));
        assert!(!s.safe_mode.active());
        assert!(s.events.is_empty(), "no events while off");
        assert!(s.record.culprits.is_empty());
        assert!(!s.safe_mode.holds("hello"));
        rec = s.record;
    }
    assert_eq!(rec.unclean_in_a_row, 9, "still counted");
    // Turned off while in safe mode: left at the start, saying why.
    let rec = SafeMode::start(rules(1, &[]), Some(&killed(rec, &[])), at(10)).record;
    assert!(rec.safe_mode);
    let s = SafeMode::start(r, Some(&stopped(rec)), at(11));
    assert_eq!(kinds(&s.events), ["safe-mode-left"]);
    assert!(s.events[0].message.contains("off"));
    assert!(!s.safe_mode.active());
}

#[test]
fn the_keep_list_is_honoured() {
    let r = rules(1, &["sysinfo", "notes"]);
    let rec = killed(SafeMode::start(r.clone(), None, at(0)).record, &[]);
    let s = SafeMode::start(r, Some(&rec), at(1)).safe_mode;
    assert!(s.active());
    assert!(!s.holds("sysinfo"));
    assert!(!s.holds("notes"));
    assert!(s.holds("hello-rust"));
    assert!(s.holds("stress"));
    assert_eq!(s.status().keep, ["notes", "sysinfo"]);
    // Not in safe mode: nothing is held.
    assert!(!SafeMode::idle(rules(1, &[])).holds("hello-rust"));
}

#[test]
fn leaving_resets_the_count_and_holds_nothing() {
    let r = rules(1, &["sysinfo"]);
    let rec = killed(
        SafeMode::start(r.clone(), None, at(0)).record,
        &[("hello", false)],
    );
    let start = SafeMode::start(r.clone(), Some(&rec), at(1));
    let mut s = start.safe_mode;
    assert!(s.holds("hello"));
    let ev = s.leave().unwrap();
    assert_eq!(ev.kind, EventKind::SafeModeLeft);
    assert_eq!(ev.details["likely_culprits"], json!(["hello"]));
    assert!(!s.active());
    assert!(!s.holds("hello"));
    assert_eq!(s.leave(), Err(NotActive), "only once");
    let st = s.status();
    assert_eq!((st.active, st.unclean_in_a_row), (false, 0));
    assert!(st.culprits.is_empty() && st.entered_at.is_none());
    // Stored: the next start (even after a kill) starts normally.
    let mut stored = start.record;
    s.write_into(&mut stored);
    assert!(!stored.safe_mode);
    let next = SafeMode::start(r, Some(&killed(stored, &[("hello", true)])), at(2));
    assert!(
        next.safe_mode.active(),
        "one unclean exit reaches a threshold of one again"
    );
    assert_eq!(next.record.unclean_in_a_row, 1);
}

#[test]
fn a_recorded_state_is_shown_as_it_was_stored() {
    let r = rules(1, &[]);
    let rec = killed(
        SafeMode::start(r.clone(), None, at(0)).record,
        &[("x", true)],
    );
    let stored = SafeMode::start(r.clone(), Some(&rec), at(1)).record;
    let s = SafeMode::recorded(r, &stored);
    assert!(s.active());
    assert_eq!(s.status().likely_culprits, ["x"]);
    assert!(
        stored.plugins.is_empty(),
        "a new run lists no plugin until one starts"
    );
}

/// Many unclean exits keep at most `MAX_CULPRITS` entries, newest first.
#[test]
fn culprit_entries_are_bounded() {
    let r = rules(1000, &[]);
    let mut rec = SafeMode::start(r.clone(), None, at(0)).record;
    for n in 0..40u32 {
        let up = format!("p{n}");
        rec = SafeMode::start(r.clone(), Some(&killed(rec, &[(&up, true)])), at(n % 60)).record;
    }
    assert_eq!(rec.culprits.len(), MAX_CULPRITS);
    assert_eq!(rec.culprits[0].likely.as_deref(), Some("p39"));
    assert_eq!(rec.unclean_in_a_row, 40);
}
