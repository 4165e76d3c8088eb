//! The run record: what the store remembers of the host's runs, for safe mode. The store keeps
//! the record and changes it in one transaction each time; what it means (an unclean exit, the
//! likely culprit, whether to start in safe mode) is `crate::safe_mode`'s.
//!
//! ```text
//! table  key    value
//! ─────  ─────  ──────────────────────────────────────────────────────────────────────────
//! meta   "run"  JSON RunRecord {running, started_at, unclean_in_a_row, culprits: [{at,
//!               run_started_at, plugins, starting, likely}], safe_mode, entered_at,
//!               plugins: [{id, starting}]}
//! ```
//!
//! `running` is `true` from a start until the clean stop (SIGTERM/SIGINT) writes `false`: a
//! record still `running` at the next start means the run ended some other way (killed, crashed,
//! a watchdog reset, a power cut). `plugins` are the plugins starting or running now, most
//! recently started first: the supervisor adds one before it spawns it (the write is durable
//! before the process exists), marks it ready, and removes it when its process is gone, so the
//! record names the plugins that were up when a run ended uncleanly.
//!
//! Added to schema version 1 without a bump, like the licence keys: a file without the row reads
//! as "no run recorded yet".

use chrono::{DateTime, Utc};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::{self, Doing, META};
use super::{NewEvent, Store, StoreError, bound_event};

/// `meta` key of the run record.
pub(super) const META_RUN: &str = "run";

/// Most plugins the record lists as starting or running (the row stays small).
pub const MAX_RUN_PLUGINS: usize = 64;

/// What the store remembers of the host's runs (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    /// The run has not stopped cleanly (yet).
    pub running: bool,
    /// When the newest run started.
    pub started_at: Option<DateTime<Utc>>,
    /// Unclean exits in a row (a run that lasted long enough resets it).
    pub unclean_in_a_row: u32,
    /// One entry per unclean exit counted in `unclean_in_a_row`, newest first.
    pub culprits: Vec<Culprit>,
    /// The host runs (or will start) in safe mode.
    pub safe_mode: bool,
    /// When safe mode was entered.
    pub entered_at: Option<DateTime<Utc>>,
    /// The plugins starting or running now, most recently started first.
    pub plugins: Vec<RunPlugin>,
}

/// The plugins that were up when one unclean exit happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    /// When the host found the unclean exit (at its next start).
    pub at: DateTime<Utc>,
    /// When the run that ended uncleanly had started.
    #[serde(default)]
    pub run_started_at: Option<DateTime<Utc>>,
    /// Ids of the plugins starting or running then, most recently started first.
    pub plugins: Vec<String>,
    /// Which of them were still starting.
    #[serde(default)]
    pub starting: Vec<String>,
    /// The one named as the likely culprit (`None`: no plugin was up).
    #[serde(default)]
    pub likely: Option<String>,
}

/// A plugin starting or running, in [`RunRecord::plugins`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlugin {
    /// Its id.
    pub id: String,
    /// Spawned (or about to be), not ready yet.
    pub starting: bool,
}

/// A change of one plugin's place in [`RunRecord::plugins`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunChange {
    /// It is about to be spawned: first in the list, starting.
    Starting,
    /// It became ready.
    Ready,
    /// Its process is gone (or was never spawned).
    Gone,
}

impl RunRecord {
    /// Apply `change` of plugin `id` to [`RunRecord::plugins`].
    pub fn plugin(&mut self, id: &str, change: RunChange) {
        let at = self.plugins.iter().position(|p| p.id == id);
        match (change, at) {
            (RunChange::Starting, at) => {
                if let Some(i) = at {
                    self.plugins.remove(i);
                }
                self.plugins.insert(
                    0,
                    RunPlugin {
                        id: id.to_owned(),
                        starting: true,
                    },
                );
                self.plugins.truncate(MAX_RUN_PLUGINS);
            }
            (RunChange::Ready, Some(i)) => self.plugins[i].starting = false,
            (RunChange::Ready, None) => {
                self.plugins.insert(
                    0,
                    RunPlugin {
                        id: id.to_owned(),
                        starting: false,
                    },
                );
                self.plugins.truncate(MAX_RUN_PLUGINS);
            }
            (RunChange::Gone, Some(i)) => {
                self.plugins.remove(i);
            }
            (RunChange::Gone, None) => {}
        }
    }
}

fn read_run(txn: &redb::ReadTransaction) -> Result<Option<RunRecord>, StoreError> {
    const WHAT: &str = "reading the run record";
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
    };
    let Some(json) = table.get(META_RUN).doing(WHAT)? else {
        return Ok(None);
    };
    // A record that does not decode counts as none: the next write replaces it.
    Ok(serde_json::from_str(json.value()).ok())
}

impl Store {
    /// The run record, `None` when no run was recorded yet (or the row cannot be read).
    pub fn run_record(&self) -> Result<Option<RunRecord>, StoreError> {
        self.read(read_run)
    }

    /// Change the run record with `change` (a missing record starts as the default) and record
    /// `events` as the host's, in one transaction; returns the record written.
    pub async fn update_run_record<F>(
        &self,
        change: F,
        events: Vec<NewEvent>,
    ) -> Result<RunRecord, StoreError>
    where
        F: Fn(&mut RunRecord) + Send + 'static,
    {
        const WHAT: &str = "writing the run record";
        let at = crate::clock::now();
        let mut bytes = 512;
        let events: Vec<NewEvent> = events
            .into_iter()
            .map(|ev| {
                let (ev, n) = bound_event(ev);
                bytes += n;
                ev
            })
            .collect();
        self.write(bytes, move |txn, limits| {
            let mut meta = txn.open_table(META).doing(WHAT)?;
            let mut rec: RunRecord = meta
                .get(META_RUN)
                .doing(WHAT)?
                .and_then(|v| serde_json::from_str(v.value()).ok())
                .unwrap_or_default();
            change(&mut rec);
            let json = serde_json::to_string(&rec).expect("a RunRecord always serialises");
            meta.insert(META_RUN, json.as_str()).doing(WHAT)?;
            drop(meta);
            for ev in &events {
                tables::append_event(txn, limits, "host", ev, at)?;
            }
            Ok(rec)
        })
        .await
    }

    /// Apply `change` of plugin `id` to the run record's plugins (see [`RunRecord::plugin`]);
    /// durable when it returns.
    pub async fn run_plugin(&self, id: &str, change: RunChange) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.update_run_record(move |r| r.plugin(&id, change), Vec::new())
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::tests::{TempDir, open};
    use super::*;
    use crate::store::EventKind;

    fn ids(r: &RunRecord) -> Vec<(&str, bool)> {
        r.plugins
            .iter()
            .map(|p| (p.id.as_str(), p.starting))
            .collect()
    }

    #[test]
    fn plugins_are_listed_most_recently_started_first() {
        let mut r = RunRecord::default();
        r.plugin("a", RunChange::Starting);
        r.plugin("b", RunChange::Starting);
        assert_eq!(ids(&r), [("b", true), ("a", true)]);
        r.plugin("a", RunChange::Ready);
        assert_eq!(ids(&r), [("b", true), ("a", false)]);
        // A restart moves it first again, starting.
        r.plugin("a", RunChange::Gone);
        r.plugin("a", RunChange::Starting);
        assert_eq!(ids(&r), [("a", true), ("b", true)]);
        r.plugin("b", RunChange::Gone);
        r.plugin("b", RunChange::Gone);
        r.plugin("c", RunChange::Ready);
        assert_eq!(ids(&r), [("c", false), ("a", true)]);
        for n in 0..2 * MAX_RUN_PLUGINS {
            r.plugin(&format!("p{n}"), RunChange::Starting);
        }
        assert_eq!(r.plugins.len(), MAX_RUN_PLUGINS);
    }

    #[tokio::test]
    async fn the_record_is_changed_in_place_with_its_events() {
        let dir = TempDir::new();
        let store = open(&dir);
        assert_eq!(store.run_record().unwrap(), None);
        let ev = NewEvent {
            kind: EventKind::UncleanExit,
            message: "x".into(),
            details: serde_json::json!({}),
        };
        let rec = store
            .update_run_record(
                |r| {
                    r.running = true;
                    r.unclean_in_a_row += 1;
                },
                vec![ev],
            )
            .await
            .unwrap();
        assert!(rec.running);
        store.run_plugin("a", RunChange::Starting).await.unwrap();
        store.run_plugin("b", RunChange::Starting).await.unwrap();
        store.run_plugin("a", RunChange::Ready).await.unwrap();
        let now = store.run_record().unwrap().unwrap();
        assert_eq!(now.unclean_in_a_row, 1, "a plugin's change keeps the rest");
        assert_eq!(ids(&now), [("b", true), ("a", false)]);
        let events = store.events(Some("host"), 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::UncleanExit);
        drop(store);
        let store = open(&dir);
        assert_eq!(store.run_record().unwrap(), Some(now), "durable");
    }
}
