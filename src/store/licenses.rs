//! What the store keeps for licences: the instance's licensing key, the clock's high-water mark,
//! and the licence installed for each plugin. The store keeps text; what it means (keys,
//! signatures, validity) is `crate::license`'s.
//!
//! ```text
//! table      key                 value
//! ─────────  ──────────────────  ─────────────────────────────────────────────────
//! meta       "instance_key"      &str   the instance's Ed25519 secret key (a minisign
//!                                       secret key box, unencrypted), set once
//! meta       "last_seen"         &str   RFC 3339: the newest wall-clock time the host has
//!                                       seen; only ever moves forward
//! licenses   plugin id           JSON StoredLicense (the licence file's text, when installed)
//! ```
//!
//! Added to schema version 1 without a bump, like the package tables: a file without them reads
//! as "no key yet, no time seen, no licences".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use super::tables::{self, Doing, META, META_INSTANCE_KEY, META_LAST_SEEN};
use super::{NewEvent, Store, StoreError, bound_event};

const LICENSES: TableDefinition<&str, &str> = TableDefinition::new("licenses");

/// A licence as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLicense {
    /// The licence file's text, exactly as given.
    pub text: String,
    /// When it was installed.
    pub installed_at: DateTime<Utc>,
}

fn meta_get(txn: &redb::ReadTransaction, key: &str) -> Result<Option<String>, StoreError> {
    const WHAT: &str = "reading the store's metadata";
    match txn.open_table(META) {
        Ok(t) => Ok(t.get(key).doing(WHAT)?.map(|v| v.value().to_owned())),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
    }
}

impl Store {
    /// The instance key, if one was made.
    pub fn instance_key(&self) -> Result<Option<String>, StoreError> {
        self.read(|txn| meta_get(txn, META_INSTANCE_KEY))
    }

    /// Keep `candidate` as the instance key unless there is one already; returns the key kept
    /// (the first one ever stored wins).
    pub async fn ensure_instance_key(&self, candidate: String) -> Result<String, StoreError> {
        const WHAT: &str = "storing the instance key";
        self.write(candidate.len(), move |txn, _| {
            let mut meta = txn.open_table(META).doing(WHAT)?;
            if let Some(existing) = meta.get(META_INSTANCE_KEY).doing(WHAT)? {
                return Ok(existing.value().to_owned());
            }
            meta.insert(META_INSTANCE_KEY, candidate.as_str())
                .doing(WHAT)?;
            Ok(candidate.clone())
        })
        .await
    }

    /// The newest wall-clock time the host has recorded (`None`: never).
    pub fn last_seen(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let text = self.read(|txn| meta_get(txn, META_LAST_SEEN))?;
        Ok(text
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.to_utc()))
    }

    /// Record `now` as seen, unless a later time was seen already; returns the time kept.
    pub async fn advance_last_seen(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        const WHAT: &str = "recording the time";
        self.write(40, move |txn, _| {
            let mut meta = txn.open_table(META).doing(WHAT)?;
            let seen = meta
                .get(META_LAST_SEEN)
                .doing(WHAT)?
                .and_then(|v| DateTime::parse_from_rfc3339(v.value()).ok())
                .map(|t| t.to_utc());
            match seen {
                Some(seen) if seen >= now => Ok(seen),
                _ => {
                    meta.insert(META_LAST_SEEN, now.to_rfc3339().as_str())
                        .doing(WHAT)?;
                    Ok(now)
                }
            }
        })
        .await
    }

    /// The installed licences, by plugin id.
    pub fn licenses(&self) -> Result<BTreeMap<String, StoredLicense>, StoreError> {
        self.read(|txn| {
            const WHAT: &str = "reading licences";
            let mut out = BTreeMap::new();
            let table = match txn.open_table(LICENSES) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(out),
                Err(e) => return Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
            };
            for row in table.iter().doing(WHAT)? {
                let (k, v) = row.doing(WHAT)?;
                if let Ok(rec) = serde_json::from_str(v.value()) {
                    out.insert(k.value().to_owned(), rec);
                }
            }
            Ok(out)
        })
    }

    /// The licence installed for `plugin`.
    pub fn license(&self, plugin: &str) -> Result<Option<StoredLicense>, StoreError> {
        Ok(self.licenses()?.remove(plugin))
    }

    /// Install `rec` as `plugin`'s licence (replacing one), with its event.
    pub async fn put_license(
        &self,
        plugin: &str,
        rec: StoredLicense,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "installing a licence";
        let plugin = plugin.to_owned();
        let json = serde_json::to_string(&rec).expect("a StoredLicense always serialises");
        let (event, bytes) = stamp(event);
        self.write(plugin.len() + json.len() + bytes, move |txn, limits| {
            txn.open_table(LICENSES)
                .doing(WHAT)?
                .insert(plugin.as_str(), json.as_str())
                .doing(WHAT)?;
            if let Some((ev, at)) = &event {
                tables::append_event(txn, limits, &plugin, ev, *at)?;
            }
            Ok(())
        })
        .await
    }

    /// Remove `plugin`'s licence; `false` when it had none (no event is recorded then).
    pub async fn remove_license(
        &self,
        plugin: &str,
        event: Option<NewEvent>,
    ) -> Result<bool, StoreError> {
        const WHAT: &str = "removing a licence";
        let plugin = plugin.to_owned();
        let (event, bytes) = stamp(event);
        self.write(plugin.len() + bytes, move |txn, limits| {
            let removed = txn
                .open_table(LICENSES)
                .doing(WHAT)?
                .remove(plugin.as_str())
                .doing(WHAT)?
                .is_some();
            if removed && let Some((ev, at)) = &event {
                tables::append_event(txn, limits, &plugin, ev, *at)?;
            }
            Ok(removed)
        })
        .await
    }
}

fn stamp(event: Option<NewEvent>) -> (Option<(NewEvent, DateTime<Utc>)>, usize) {
    match event.map(bound_event) {
        Some((ev, bytes)) => (Some((ev, crate::clock::now())), bytes),
        None => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::tests::{TempDir, open};
    use super::*;

    #[tokio::test]
    async fn the_first_instance_key_stays_and_last_seen_never_goes_back() {
        let dir = TempDir::new();
        let store = open(&dir);
        assert_eq!(store.instance_key().unwrap(), None);
        assert_eq!(store.ensure_instance_key("a".into()).await.unwrap(), "a");
        assert_eq!(store.ensure_instance_key("b".into()).await.unwrap(), "a");
        assert_eq!(store.instance_key().unwrap().as_deref(), Some("a"));

        assert_eq!(store.last_seen().unwrap(), None);
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let later = t("2030-01-01T00:00:00Z");
        assert_eq!(store.advance_last_seen(later).await.unwrap(), later);
        let earlier = t("2020-01-01T00:00:00Z");
        assert_eq!(store.advance_last_seen(earlier).await.unwrap(), later);
        assert_eq!(store.last_seen().unwrap(), Some(later));
    }

    #[tokio::test]
    async fn licences_are_put_listed_and_removed() {
        let dir = TempDir::new();
        let store = open(&dir);
        assert!(store.licenses().unwrap().is_empty(), "no table yet");
        let rec = StoredLicense {
            text: "x".into(),
            installed_at: crate::clock::now(),
        };
        store.put_license("demo", rec.clone(), None).await.unwrap();
        assert_eq!(store.license("demo").unwrap(), Some(rec));
        assert!(store.remove_license("demo", None).await.unwrap());
        assert!(!store.remove_license("demo", None).await.unwrap());
        assert!(store.licenses().unwrap().is_empty());
    }
}
