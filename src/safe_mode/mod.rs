//! Safe mode: after `[safe_mode] after_unclean` unclean host exits in a row (killed, crashed, a
//! watchdog reset, a power cut), the host starts with every plugin held but those in
//! `[safe_mode] keep`; the plugins that were starting or running when each exit happened are named
//! as the likely culprits. A run that lasts `clean_secs` resets the count; an admin can leave safe
//! mode at once (`POST /api/system/safe-mode/leave`, `toru system safe-mode --leave`).
//!
//! - [`policy`]: the decisions, without I/O (unit-tested with records written by hand).
//! - This file: the glue. At start ([`SafeMode::begin`], before any plugin starts) it reads the
//!   store's run record (`store::RunRecord`), lets the policy judge it, writes this run's record
//!   with the events in one durable commit, and gives the supervisor its [`HoldRule`] (asked
//!   before every spawn) and whether to keep the record's list of starting and running plugins.
//!   It resets the count once the run has lasted `clean_secs` ([`SafeMode::watch_clean_run`]),
//!   leaves safe mode on request ([`SafeMode::leave`]), and writes `running = false` at a clean
//!   stop ([`SafeMode::stop`]).
//!
//! Called by `run` (lib.rs), the HTTP handlers, the metrics and the control socket through `App`.
//! Above the supervisor and the store; names neither redb nor the HTTP library.

pub(crate) mod policy;

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::Config;
use crate::store::{Store, StoreError};
use crate::supervisor::{HoldRule, PluginState, Supervisor};
pub(crate) use policy::Status;
use policy::{NotActive, Rules};

/// Why safe mode could not be left.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaveError {
    /// The host is not in safe mode.
    #[error("the host is not in safe mode")]
    NotActive,
    /// The store could not record it (the next start would be in safe mode again).
    #[error("cannot record leaving safe mode")]
    Store(#[source] StoreError),
}

impl From<NotActive> for LeaveError {
    fn from(_: NotActive) -> LeaveError {
        LeaveError::NotActive
    }
}

/// Handle to safe mode while the host runs; cheap to clone, runtime thread only.
#[derive(Clone, Debug)]
pub(crate) struct SafeMode {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Rc<RefCell<policy::SafeMode>>,
    store: Store,
    supervisor: Supervisor,
}

impl SafeMode {
    /// Safe mode for `config`, not in it and counting nothing until [`SafeMode::begin`].
    pub(crate) fn new(config: &Config, store: Store, supervisor: Supervisor) -> SafeMode {
        let rules = Rules::from_config(&config.safe_mode);
        SafeMode {
            inner: Rc::new(Inner {
                state: Rc::new(RefCell::new(policy::SafeMode::idle(rules))),
                store,
                supervisor,
            }),
        }
    }

    /// At start, before any plugin starts: judge the previous run's record, write this run's
    /// (durable before it returns) with the `unclean-exit`, `safe-mode` or `safe-mode-left`
    /// events, and set the supervisor's hold rule. A store that cannot be read or written leaves
    /// the decision to what could be read, and plugin starts untracked.
    pub(crate) async fn begin(&self) {
        let inner = &self.inner;
        let rules = inner.state.borrow().rules().clone();
        let prev = inner.store.run_record().unwrap_or_else(|e| {
            log::error!("safe mode: cannot read the run record: {e}");
            None
        });
        let start = policy::SafeMode::start(rules.clone(), prev.as_ref(), crate::clock::now());
        for ev in &start.events {
            match ev.kind {
                crate::store::EventKind::SafeMode => log::error!("{}", ev.message),
                _ => log::warn!("{}", ev.message),
            }
        }
        let record = start.record.clone();
        let written = inner
            .store
            .update_run_record(move |r| *r = record.clone(), start.events.clone())
            .await;
        if let Err(e) = &written {
            log::error!(
                "safe mode: cannot write the run record ({}); unclean exits of this run will \
                 not be counted",
                crate::error_chain::error_chain(e)
            );
        }
        *inner.state.borrow_mut() = start.safe_mode;
        let state = Rc::clone(&inner.state);
        let hold = HoldRule::new(move |id| state.borrow().holds(id));
        inner
            .supervisor
            .set_safe_mode(rules.on() && written.is_ok(), Some(hold));
    }

    /// Sleep until this run has lasted `clean_secs`, then reset the count (see
    /// [`policy::SafeMode::clean_run`]). Spawned by `run`; aborted at shutdown.
    pub(crate) async fn watch_clean_run(self) {
        let after = self.inner.state.borrow().rules().clean_after;
        tokio::time::sleep(after).await;
        let changed = self.inner.state.borrow_mut().clean_run();
        if !changed {
            return;
        }
        let state = self.inner.state.borrow().clone();
        let written = self
            .inner
            .store
            .update_run_record(move |r| state.write_into(r), Vec::new())
            .await;
        match written {
            Ok(_) => log::info!(
                "safe mode: this run lasted {} s: the count of unclean exits is reset",
                after.as_secs()
            ),
            Err(e) => log::error!("safe mode: cannot reset the count of unclean exits: {e}"),
        }
    }

    /// Leave safe mode now (an admin asked): recorded first, with a `safe-mode-left` event; then
    /// every held plugin starts. Returns the status afterwards.
    pub(crate) async fn leave(&self) -> Result<Status, LeaveError> {
        let mut after = self.inner.state.borrow().clone();
        let event = after.leave()?;
        let stored = after.clone();
        self.inner
            .store
            .update_run_record(move |r| stored.write_into(r), vec![event])
            .await
            .map_err(LeaveError::Store)?;
        *self.inner.state.borrow_mut() = after;
        log::warn!("safe mode left by an admin: the held plugins start");
        self.inner.supervisor.release_held().await;
        Ok(self.status())
    }

    /// A clean stop (SIGTERM/SIGINT), after every plugin stopped: the record says so, keeping
    /// the count.
    pub(crate) async fn stop(&self) {
        let written = self
            .inner
            .store
            .update_run_record(|r| r.running = false, Vec::new())
            .await;
        if let Err(e) = written {
            log::error!("safe mode: cannot record the clean stop: {e}");
        }
    }

    /// Where safe mode stands, with the plugins held now.
    pub(crate) fn status(&self) -> Status {
        let mut status = self.inner.state.borrow().status();
        status.held = self
            .inner
            .supervisor
            .plugins()
            .into_iter()
            .filter(|p| p.state == PluginState::Held)
            .map(|p| p.id)
            .collect();
        status
    }
}

/// Safe mode as the store records it, while the daemon is stopped (`toru system safe-mode`).
pub(crate) fn stored_status(config: &Config, store: &Store) -> Result<Status, StoreError> {
    let rules = Rules::from_config(&config.safe_mode);
    Ok(match store.run_record()? {
        Some(rec) => policy::SafeMode::recorded(rules, &rec).status(),
        None => policy::SafeMode::idle(rules).status(),
    })
}

/// Leave safe mode while the daemon is stopped (`toru system safe-mode --leave`): the record
/// says so, and the next start starts normally.
pub(crate) async fn leave_stored(config: &Config, store: &Store) -> Result<Status, LeaveError> {
    let rules = Rules::from_config(&config.safe_mode);
    let rec = store
        .run_record()
        .map_err(LeaveError::Store)?
        .unwrap_or_default();
    let mut state = policy::SafeMode::recorded(rules, &rec);
    let event = state.leave()?;
    let stored = state.clone();
    store
        .update_run_record(move |r| stored.write_into(r), vec![event])
        .await
        .map_err(LeaveError::Store)?;
    Ok(state.status())
}
