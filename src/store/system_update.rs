//! What the store keeps for whole-device updates (`crate::update`): the update installed into the
//! other slot and not yet confirmed (the *pending* update), what each boot of the new system
//! reported while it was being checked, and how the last update ended. The store keeps records;
//! what they mean (slots, boots, health) is `crate::update`'s.
//!
//! ```text
//! table          key             value
//! ─────────────  ──────────────  ────────────────────────────────────────────────────────
//! system_update  "pending"       JSON PendingSystemUpdate (absent: no update under way)
//!                "last_result"   JSON SystemUpdateResult (absent: no update has ended yet)
//! ```
//!
//! The data partition holds the store, so the old system reads what the new one wrote: a new
//! slot that gives up records its reason as an [`UpdateAttempt`] before it reboots, and the old
//! slot, booted again, ends the update with that reason. Added to schema version 1 without a
//! bump, like the package tables: a file without the table reads as "no update".
//! Each write is one commit together with the event that explains it (recorded for `"host"`).

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{self, Doing, Limits};
use super::{NewEvent, Store, StoreError, bound_event};

const SYSTEM_UPDATE: TableDefinition<&str, &str> = TableDefinition::new("system_update");
const PENDING: &str = "pending";
const LAST_RESULT: &str = "last_result";
/// Events about the whole device are the host's.
const HOST: &str = "host";

/// An update written (or being written) into the other slot and not yet confirmed by the new
/// system, or given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSystemUpdate {
    /// The upload it came from.
    pub token: String,
    /// The bundle's version.
    pub version: String,
    /// The bundle's compatible string (the device's, or it was refused).
    pub compatible: String,
    /// Who signed it, as RAUC names the certificate (`CN = …`).
    pub signer: Option<String>,
    /// The slot that was booted when it was installed (`A`).
    pub from_slot: String,
    /// The slot it was written into (`B`).
    pub to_slot: String,
    /// The boot id when it was installed: another one means the device rebooted since.
    pub boot_id: String,
    /// The plugins enabled and ready when it was installed: the new system is healthy once
    /// each of them is ready again (or was disabled or removed there).
    pub plugins: Vec<String>,
    /// When `rauc install` began.
    pub started_at: DateTime<Utc>,
    /// When `rauc install` succeeded; `None` while it runs (a pending update without it after a
    /// restart was interrupted).
    pub installed_at: Option<DateTime<Utc>>,
    /// What each boot of the new slot that gave up reported, oldest first.
    #[serde(default)]
    pub attempts: Vec<UpdateAttempt>,
}

/// One boot of the new slot that did not become healthy, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateAttempt {
    /// That boot's id.
    pub boot_id: String,
    /// The slot that was booted.
    pub slot: String,
    /// When it gave up.
    pub at: DateTime<Utc>,
    /// Why, in one sentence.
    pub reason: String,
}

/// How an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemUpdateOutcome {
    /// The new system became healthy and its slot was marked good.
    Ok,
    /// The install failed, was interrupted, or the new system did not become healthy and the
    /// device went back to the old one.
    Failed,
}

/// The last update's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemUpdateResult {
    /// `ok` or `failed`.
    pub result: SystemUpdateOutcome,
    /// The bundle's version.
    pub version: String,
    /// The slot it came from.
    pub from_slot: String,
    /// The slot it went to.
    pub to_slot: String,
    /// Why it failed (`None` when it succeeded).
    pub reason: Option<String>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// Both records at once (one read transaction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemUpdateRecords {
    /// The update under way.
    pub pending: Option<PendingSystemUpdate>,
    /// How the last one ended.
    pub last_result: Option<SystemUpdateResult>,
}

fn put_json<T: Serialize>(
    txn: &WriteTransaction,
    key: &str,
    value: Option<&T>,
) -> Result<(), StoreError> {
    const WHAT: &str = "writing the system update";
    let mut table = txn.open_table(SYSTEM_UPDATE).doing(WHAT)?;
    match value {
        Some(v) => {
            let json = serde_json::to_string(v).expect("an update record always serialises");
            table.insert(key, json.as_str()).doing(WHAT)?;
        }
        None => {
            table.remove(key).doing(WHAT)?;
        }
    }
    Ok(())
}

fn pending_in(txn: &WriteTransaction) -> Result<Option<PendingSystemUpdate>, StoreError> {
    const WHAT: &str = "reading the system update";
    let table = txn.open_table(SYSTEM_UPDATE).doing(WHAT)?;
    let json = table
        .get(PENDING)
        .doing(WHAT)?
        .map(|v| v.value().to_owned());
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

fn record_event(
    txn: &WriteTransaction,
    limits: &Limits,
    event: Option<&(NewEvent, DateTime<Utc>)>,
) -> Result<(), StoreError> {
    if let Some((ev, at)) = event {
        tables::append_event(txn, limits, HOST, ev, *at)?;
    }
    Ok(())
}

fn stamp(event: Option<NewEvent>) -> (Option<(NewEvent, DateTime<Utc>)>, usize) {
    match event.map(bound_event) {
        Some((ev, bytes)) => (Some((ev, crate::clock::now())), bytes),
        None => (None, 0),
    }
}

impl Store {
    /// The pending update and the last result.
    pub fn system_update(&self) -> Result<SystemUpdateRecords, StoreError> {
        self.read(|txn| {
            const WHAT: &str = "reading the system update";
            let table = match txn.open_table(SYSTEM_UPDATE) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => {
                    return Ok(SystemUpdateRecords::default());
                }
                Err(e) => return Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
            };
            let get = |key: &str| -> Result<Option<String>, StoreError> {
                Ok(table.get(key).doing(WHAT)?.map(|v| v.value().to_owned()))
            };
            // A record this build cannot read (a newer build's) reads as absent.
            Ok(SystemUpdateRecords {
                pending: get(PENDING)?.and_then(|j| serde_json::from_str(&j).ok()),
                last_result: get(LAST_RESULT)?.and_then(|j| serde_json::from_str(&j).ok()),
            })
        })
    }

    /// Record `pending` as the update under way (replacing one), with its event.
    pub async fn put_pending_system_update(
        &self,
        pending: PendingSystemUpdate,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let (event, bytes) = stamp(event);
        let size = serde_json::to_vec(&pending).map_or(0, |j| j.len()) + bytes;
        self.write(size, move |txn, limits| {
            put_json(txn, PENDING, Some(&pending))?;
            record_event(txn, limits, event.as_ref())
        })
        .await
    }

    /// Add what a boot of the new slot reported to the pending update (nothing when there is
    /// none, or when that boot reported already), with its event. Returns whether it was added.
    pub async fn add_system_update_attempt(
        &self,
        attempt: UpdateAttempt,
        event: Option<NewEvent>,
    ) -> Result<bool, StoreError> {
        let (event, bytes) = stamp(event);
        let size = attempt.reason.len() + attempt.boot_id.len() + bytes;
        self.write(size, move |txn, limits| {
            let Some(mut pending) = pending_in(txn)? else {
                return Ok(false);
            };
            if pending
                .attempts
                .iter()
                .any(|a| a.boot_id == attempt.boot_id)
            {
                return Ok(false);
            }
            pending.attempts.push(attempt.clone());
            put_json(txn, PENDING, Some(&pending))?;
            record_event(txn, limits, event.as_ref())?;
            Ok(true)
        })
        .await
    }

    /// End the update under way: forget the pending record, keep `result` as the last one, with
    /// its event — one commit.
    pub async fn finish_system_update(
        &self,
        result: SystemUpdateResult,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let (event, bytes) = stamp(event);
        let size = serde_json::to_vec(&result).map_or(0, |j| j.len()) + bytes;
        self.write(size, move |txn, limits| {
            put_json::<PendingSystemUpdate>(txn, PENDING, None)?;
            put_json(txn, LAST_RESULT, Some(&result))?;
            record_event(txn, limits, event.as_ref())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::EventKind;
    use super::super::tests::{TempDir, open};
    use super::*;

    fn pending() -> PendingSystemUpdate {
        PendingSystemUpdate {
            token: "t1".into(),
            version: "2.0.0".into(),
            compatible: "toru-test".into(),
            signer: Some("CN = Toru test signer".into()),
            from_slot: "A".into(),
            to_slot: "B".into(),
            boot_id: "boot-1".into(),
            plugins: vec!["notes".into()],
            started_at: crate::clock::now(),
            installed_at: None,
            attempts: Vec::new(),
        }
    }

    fn attempt(boot: &str) -> UpdateAttempt {
        UpdateAttempt {
            boot_id: boot.into(),
            slot: "B".into(),
            at: crate::clock::now(),
            reason: format!("not healthy in {boot}"),
        }
    }

    fn event(kind: &str) -> Option<NewEvent> {
        Some(NewEvent {
            kind: kind.into(),
            message: kind.into(),
            details: serde_json::Value::Null,
        })
    }

    #[tokio::test]
    async fn pending_attempts_and_result_round_trip() {
        let dir = TempDir::new();
        let store = open(&dir);
        assert_eq!(
            store.system_update().unwrap(),
            Default::default(),
            "no table"
        );
        assert!(
            !store
                .add_system_update_attempt(attempt("b2"), None)
                .await
                .unwrap(),
            "nothing pending: nothing to add to"
        );
        let p = pending();
        store
            .put_pending_system_update(p.clone(), event("update-installed"))
            .await
            .unwrap();
        assert_eq!(store.system_update().unwrap().pending, Some(p));
        assert!(
            store
                .add_system_update_attempt(attempt("b2"), event("update-failed"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .add_system_update_attempt(attempt("b2"), None)
                .await
                .unwrap(),
            "one report per boot"
        );
        store
            .add_system_update_attempt(attempt("b3"), None)
            .await
            .unwrap();
        let p = store.system_update().unwrap().pending.unwrap();
        let boots: Vec<_> = p.attempts.iter().map(|a| a.boot_id.as_str()).collect();
        assert_eq!(boots, ["b2", "b3"]);

        let result = SystemUpdateResult {
            result: SystemUpdateOutcome::Failed,
            version: "2.0.0".into(),
            from_slot: "A".into(),
            to_slot: "B".into(),
            reason: Some("not healthy in b3".into()),
            at: crate::clock::now(),
        };
        store
            .finish_system_update(result.clone(), event("update-failed"))
            .await
            .unwrap();
        let r = store.system_update().unwrap();
        assert_eq!(r.pending, None);
        assert_eq!(r.last_result, Some(result));
        let kinds: Vec<EventKind> = store
            .events(Some("host"), 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::from("update-failed"),
                EventKind::from("update-failed"),
                EventKind::from("update-installed")
            ]
        );
        assert_eq!(
            serde_json::to_value(SystemUpdateOutcome::Ok).unwrap(),
            "ok",
            "the API's spelling"
        );
    }
}
