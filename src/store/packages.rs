//! What the store keeps for plugin packages: the installed packages and their versions, the
//! publisher keys the device trusts, each plugin's settings, and the KV snapshot an update takes so
//! that a rollback can restore the namespace as it was.
//!
//! ```text
//! table           key                    value
//! ──────────────  ─────────────────────  ──────────────────────────────────────────────
//! packages        plugin id              JSON PackageRecord (active version, kept versions,
//!                                        the update under way, the last update's result)
//! trusted_keys    key id (16 hex)        JSON TrustedKey
//! settings        plugin id              JSON object: the plugin's settings
//! kv_snapshot     (plugin id, key)       &str   the plugin's KV as it was when an update began
//! ```
//!
//! These tables were added to schema version 1 without a version bump: a file written before
//! has none of them, which reads as "no packages, no keys, no settings" (an older build ignores
//! them). Every write creates the table it writes.
//!
//! The package transactions (`install`) depend on three writes being atomic, each one commit:
//! [`Store::begin_package_switch`] (snapshot the KV namespace, make the new version active, record
//! the pending update, bind the id), [`Store::finish_package_switch`] (drop the snapshot, record
//! the result) and [`Store::roll_back_package_switch`] (restore the KV namespace and the settings
//! from the snapshot, make the old version active again or forget a failed install).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tables::{self, Doing, KV, KV_USAGE, Limits, PLUGINS};
use super::{NewEvent, PluginBinding, Store, StoreError, bound_event};

const PACKAGES: TableDefinition<&str, &str> = TableDefinition::new("packages");
const TRUSTED_KEYS: TableDefinition<&str, &str> = TableDefinition::new("trusted_keys");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const KV_SNAPSHOT: TableDefinition<(&str, &str), &str> = TableDefinition::new("kv_snapshot");

/// An installed package: which version runs, which are kept on disk, and what is under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// The plugin id (the manifest's).
    pub id: String,
    /// The key id of the publisher that signed it; `None` for an unsigned package.
    pub key_id: Option<String>,
    /// The version discovery runs.
    pub active: String,
    /// Versions kept on disk, newest install first (the active one among them).
    pub versions: Vec<PackageVersion>,
    /// An install, update or rollback whose probation has not ended.
    #[serde(default)]
    pub pending: Option<PendingUpdate>,
    /// How the last install, update or rollback ended.
    #[serde(default)]
    pub last_update: Option<UpdateOutcome>,
}

impl PackageRecord {
    /// The kept version `version`.
    pub fn version(&self, version: &str) -> Option<&PackageVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The active version's record.
    pub fn active_version(&self) -> Option<&PackageVersion> {
        self.version(&self.active)
    }
}

/// One installed version of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageVersion {
    /// Its semver version.
    pub version: String,
    /// When it was installed.
    pub installed_at: DateTime<Utc>,
    /// The key that signed it (`None`: unsigned).
    pub key_id: Option<String>,
    /// The executable for this device, relative to the version's folder.
    pub entry: String,
    /// The manifest, as JSON.
    pub manifest: Value,
}

/// An install, update or rollback under way (between the switch and the end of probation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// `install`, `update` or `rollback`.
    pub kind: String,
    /// The version that ran before (`None` for an install).
    pub from: Option<String>,
    /// The version on probation.
    pub to: String,
    /// When the switch was made.
    pub began_at: DateTime<Utc>,
    /// The plugin's settings before the switch (`None`: it had none).
    pub settings_before: Option<Value>,
}

/// How an install, update or rollback ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateOutcome {
    /// `installed`, `updated`, `rolled-back` (an update or rollback undone) or `install-failed`.
    pub result: String,
    /// The version before.
    pub from: Option<String>,
    /// The version tried.
    pub to: String,
    /// Why it was undone.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it ended.
    pub at: DateTime<Utc>,
}

/// A publisher key the device trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    /// The key id, 16 uppercase hex digits (as minisign prints it).
    pub key_id: String,
    /// The public key's base64 line.
    pub public_key: String,
    /// A note from the admin.
    #[serde(default)]
    pub comment: String,
    /// When it was added.
    pub added_at: DateTime<Utc>,
}

/// Open a table for reading; a table the file does not have yet reads as empty (`None`).
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    what: &'static str,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(StoreError::Storage(super::StorageFailure::new(what, e))),
    }
}

fn json_rows<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    def: TableDefinition<&str, &str>,
    what: &'static str,
) -> Result<BTreeMap<String, T>, StoreError> {
    let mut out = BTreeMap::new();
    let Some(table) = open_read(txn, def, what)? else {
        return Ok(out);
    };
    for row in table.iter().doing(what)? {
        let (k, v) = row.doing(what)?;
        // A row that does not decode is skipped (written by a newer build, or damaged).
        if let Ok(rec) = serde_json::from_str(v.value()) {
            out.insert(k.value().to_owned(), rec);
        }
    }
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The event to record with a write, bounded like every event, stamped now.
fn stamp(event: Option<NewEvent>) -> (Option<(NewEvent, DateTime<Utc>)>, usize) {
    match event.map(bound_event) {
        Some((ev, bytes)) => (Some((ev, crate::clock::now())), bytes),
        None => (None, 0),
    }
}

fn append(
    txn: &WriteTransaction,
    limits: &Limits,
    plugin: &str,
    event: &Option<(NewEvent, DateTime<Utc>)>,
) -> Result<(), StoreError> {
    if let Some((ev, at)) = event {
        tables::append_event(txn, limits, plugin, ev, *at)?;
    }
    Ok(())
}

/// Copy `id`'s KV rows into the snapshot (replacing an older snapshot).
fn snapshot_kv(txn: &WriteTransaction, id: &str) -> Result<(), StoreError> {
    const WHAT: &str = "taking a KV snapshot";
    let kv = txn.open_table(KV).doing(WHAT)?;
    let mut snap = txn.open_table(KV_SNAPSHOT).doing(WHAT)?;
    clear_range(&mut snap, id, WHAT)?;
    for row in kv.range((id, "")..).doing(WHAT)? {
        let (k, v) = row.doing(WHAT)?;
        let (plugin, key) = k.value();
        if plugin != id {
            break;
        }
        snap.insert((plugin, key), v.value()).doing(WHAT)?;
    }
    Ok(())
}

/// Remove every `(id, _)` row of a `(plugin, key)` table.
fn clear_range(
    table: &mut redb::Table<'_, (&str, &str), &str>,
    id: &str,
    what: &'static str,
) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    for row in table.range((id, "")..).doing(what)? {
        let (k, _) = row.doing(what)?;
        let (plugin, key) = k.value();
        if plugin != id {
            break;
        }
        keys.push(key.to_owned());
    }
    for key in keys {
        table.remove((id, key.as_str())).doing(what)?;
    }
    Ok(())
}

/// Replace `id`'s KV rows with its snapshot's, recount its usage, drop the snapshot.
fn restore_kv(txn: &WriteTransaction, id: &str) -> Result<(), StoreError> {
    const WHAT: &str = "restoring a KV snapshot";
    let mut kv = txn.open_table(KV).doing(WHAT)?;
    let mut snap = txn.open_table(KV_SNAPSHOT).doing(WHAT)?;
    let mut usage = txn.open_table(KV_USAGE).doing(WHAT)?;
    clear_range(&mut kv, id, WHAT)?;
    let mut rows = Vec::new();
    for row in snap.range((id, "")..).doing(WHAT)? {
        let (k, v) = row.doing(WHAT)?;
        let (plugin, key) = k.value();
        if plugin != id {
            break;
        }
        rows.push((key.to_owned(), v.value().to_owned()));
    }
    let mut used = 0u64;
    for (key, value) in &rows {
        used += (key.len() + value.len()) as u64;
        kv.insert((id, key.as_str()), value.as_str()).doing(WHAT)?;
    }
    if used == 0 {
        usage.remove(id).doing(WHAT)?;
    } else {
        usage.insert(id, used).doing(WHAT)?;
    }
    clear_range(&mut snap, id, WHAT)?;
    Ok(())
}

fn drop_snapshot(txn: &WriteTransaction, id: &str) -> Result<(), StoreError> {
    const WHAT: &str = "dropping a KV snapshot";
    let mut snap = txn.open_table(KV_SNAPSHOT).doing(WHAT)?;
    clear_range(&mut snap, id, WHAT)
}

fn put_settings(txn: &WriteTransaction, id: &str, v: Option<&Value>) -> Result<(), StoreError> {
    const WHAT: &str = "writing settings";
    let mut t = txn.open_table(SETTINGS).doing(WHAT)?;
    match v {
        Some(v) => {
            t.insert(id, to_json(v).as_str()).doing(WHAT)?;
        }
        None => {
            t.remove(id).doing(WHAT)?;
        }
    }
    Ok(())
}

fn put_package(
    txn: &WriteTransaction,
    id: &str,
    rec: Option<&PackageRecord>,
) -> Result<(), StoreError> {
    const WHAT: &str = "writing a package record";
    let mut t = txn.open_table(PACKAGES).doing(WHAT)?;
    match rec {
        Some(r) => {
            t.insert(id, to_json(r).as_str()).doing(WHAT)?;
        }
        None => {
            t.remove(id).doing(WHAT)?;
        }
    }
    Ok(())
}

impl Store {
    /// Every installed package, by id.
    pub fn packages(&self) -> Result<BTreeMap<String, PackageRecord>, StoreError> {
        self.read(|txn| json_rows(txn, PACKAGES, "reading packages"))
    }

    /// The installed package `id`.
    pub fn package(&self, id: &str) -> Result<Option<PackageRecord>, StoreError> {
        Ok(self.packages()?.remove(id))
    }

    /// Write `rec` as it is (bookkeeping that needs no snapshot: pruned versions, a recorded
    /// result), with its event.
    pub async fn put_package(
        &self,
        rec: PackageRecord,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let (event, bytes) = stamp(event);
        let payload = to_json(&rec).len() + bytes;
        self.write(payload, move |txn, limits| {
            put_package(txn, &rec.id, Some(&rec))?;
            append(txn, limits, &rec.id, &event)
        })
        .await
    }

    /// The switch to a new version, in one commit: `id`'s KV namespace is copied into the
    /// snapshot, `rec` (with `active` the new version and `pending` set) is written, the id is
    /// bound to the package (`package:<id>`, with its publisher's key), and with `Some`, the
    /// plugin's settings are replaced (made fit for the new version's schema).
    pub async fn begin_package_switch(
        &self,
        rec: PackageRecord,
        settings: Option<Value>,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let (event, bytes) = stamp(event);
        let payload = to_json(&rec).len() + bytes;
        let binding = PluginBinding {
            file: format!("package:{}", rec.id),
            since: crate::clock::now(),
            key_id: rec.key_id.clone(),
        };
        self.write(payload, move |txn, limits| {
            // Keep the date of an existing package binding: it decides route conflicts.
            const WHAT: &str = "reading a package's binding";
            let plugins = txn.open_table(PLUGINS).doing(WHAT)?;
            let since = tables::plugin_row(&plugins, &rec.id, WHAT)?
                .and_then(|r| r.binding)
                .filter(|b| b.file == binding.file)
                .map(|b| b.since);
            drop(plugins);
            let binding = PluginBinding {
                since: since.unwrap_or(binding.since),
                ..binding.clone()
            };
            snapshot_kv(txn, &rec.id)?;
            put_package(txn, &rec.id, Some(&rec))?;
            tables::bind_plugin(txn, limits, &rec.id, Some(&binding), None)?;
            if let Some(v) = &settings {
                put_settings(txn, &rec.id, Some(v))?;
            }
            append(txn, limits, &rec.id, &event)
        })
        .await
    }

    /// The end of a successful probation, in one commit: `rec` (with `pending` cleared) is
    /// written and the snapshot dropped.
    pub async fn finish_package_switch(
        &self,
        rec: PackageRecord,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let (event, bytes) = stamp(event);
        let payload = to_json(&rec).len() + bytes;
        self.write(payload, move |txn, limits| {
            drop_snapshot(txn, &rec.id)?;
            put_package(txn, &rec.id, Some(&rec))?;
            append(txn, limits, &rec.id, &event)
        })
        .await
    }

    /// Undo a switch, in one commit: `id`'s KV namespace is restored from the snapshot, its
    /// settings set back to `settings`, and `rec` written — the old version active again — or,
    /// with `None` (an install that failed), the package record and the id's binding removed.
    pub async fn roll_back_package_switch(
        &self,
        id: &str,
        rec: Option<PackageRecord>,
        settings: Option<Value>,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let (event, bytes) = stamp(event);
        let payload = id.len() + rec.as_ref().map_or(0, |r| to_json(r).len()) + bytes;
        self.write(payload, move |txn, limits| {
            restore_kv(txn, &id)?;
            put_settings(txn, &id, settings.as_ref())?;
            put_package(txn, &id, rec.as_ref())?;
            if rec.is_none() {
                tables::bind_plugin(txn, limits, &id, None, None)?;
            }
            append(txn, limits, &id, &event)
        })
        .await
    }

    /// Forget the package `id`. Its binding stays (with the publisher's key: only the same
    /// publisher may install the id again, and gets its data back) unless `purge`, which also
    /// deletes its KV namespace, settings, snapshot and plugin state.
    pub async fn remove_package(
        &self,
        id: &str,
        purge: bool,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "removing a package";
        let id = id.to_owned();
        let (event, bytes) = stamp(event);
        self.write(id.len() + bytes, move |txn, limits| {
            put_package(txn, &id, None)?;
            if purge {
                put_settings(txn, &id, None)?;
                drop_snapshot(txn, &id)?;
                let mut kv = txn.open_table(KV).doing(WHAT)?;
                clear_range(&mut kv, &id, WHAT)?;
                txn.open_table(KV_USAGE)
                    .doing(WHAT)?
                    .remove(id.as_str())
                    .doing(WHAT)?;
                txn.open_table(PLUGINS)
                    .doing(WHAT)?
                    .remove(id.as_str())
                    .doing(WHAT)?;
            }
            append(txn, limits, &id, &event)
        })
        .await
    }

    /// The settings of plugin `id` (`None`: never set).
    pub fn plugin_settings(&self, id: &str) -> Result<Option<Value>, StoreError> {
        self.read(|txn| {
            const WHAT: &str = "reading settings";
            let Some(t) = open_read(txn, SETTINGS, WHAT)? else {
                return Ok(None);
            };
            Ok(t.get(id)
                .doing(WHAT)?
                .and_then(|v| serde_json::from_str(v.value()).ok()))
        })
    }

    /// Store the settings of plugin `id`, with the event that explains the change.
    pub async fn set_plugin_settings(
        &self,
        id: &str,
        settings: Value,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let (event, bytes) = stamp(event);
        let payload = id.len() + to_json(&settings).len() + bytes;
        self.write(payload, move |txn, limits| {
            put_settings(txn, &id, Some(&settings))?;
            append(txn, limits, &id, &event)
        })
        .await
    }

    /// The trusted publisher keys, by key id.
    pub fn trusted_keys(&self) -> Result<BTreeMap<String, TrustedKey>, StoreError> {
        self.read(|txn| json_rows(txn, TRUSTED_KEYS, "reading trusted keys"))
    }

    /// Trust `key` (replacing the comment of a key trusted already). Recorded as a `host` event.
    pub async fn add_trusted_key(
        &self,
        key: TrustedKey,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "adding a trusted key";
        let (event, bytes) = stamp(event);
        let payload = to_json(&key).len() + bytes;
        self.write(payload, move |txn, limits| {
            txn.open_table(TRUSTED_KEYS)
                .doing(WHAT)?
                .insert(key.key_id.as_str(), to_json(&key).as_str())
                .doing(WHAT)?;
            append(txn, limits, "host", &event)
        })
        .await
    }

    /// Stop trusting `key_id`; `false` when it was not trusted. Recorded as a `host` event.
    pub async fn remove_trusted_key(
        &self,
        key_id: &str,
        event: Option<NewEvent>,
    ) -> Result<bool, StoreError> {
        const WHAT: &str = "removing a trusted key";
        let key_id = key_id.to_owned();
        let (event, bytes) = stamp(event);
        self.write(key_id.len() + bytes, move |txn, limits| {
            let removed = txn
                .open_table(TRUSTED_KEYS)
                .doing(WHAT)?
                .remove(key_id.as_str())
                .doing(WHAT)?
                .is_some();
            if removed {
                append(txn, limits, "host", &event)?;
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::tests::{TempDir, open};
    use super::*;
    use serde_json::json;

    fn record(active: &str, pending: Option<&str>) -> PackageRecord {
        let version = |v: &str| PackageVersion {
            version: v.into(),
            installed_at: crate::clock::now(),
            key_id: Some("AB".into()),
            entry: "demo".into(),
            manifest: json!({}),
        };
        PackageRecord {
            id: "demo".into(),
            key_id: Some("AB".into()),
            active: active.into(),
            versions: vec![version("2.0.0"), version("1.0.0")],
            pending: pending.map(|from| PendingUpdate {
                kind: "update".into(),
                from: Some(from.into()),
                to: active.into(),
                began_at: crate::clock::now(),
                settings_before: Some(json!({"a": 1})),
            }),
            last_update: None,
        }
    }

    fn kv(store: &Store) -> Vec<String> {
        store.kv_list("demo", "", None, 100).unwrap().0
    }

    /// The rollback restores the namespace exactly as it was at the switch: keys written during
    /// probation go, keys deleted come back, the usage is recounted, the neighbour is untouched.
    #[tokio::test]
    async fn a_rollback_restores_the_kv_namespace_and_settings_of_the_switch() {
        let dir = TempDir::new();
        let store = open(&dir);
        store.kv_set("demo", "a", "1").await.unwrap();
        store.kv_set("demo", "b", "2").await.unwrap();
        store.kv_set("demp", "x", "neighbour").await.unwrap();
        store
            .set_plugin_settings("demo", json!({"a": 1}), None)
            .await
            .unwrap();
        let usage = store.kv_usage("demo").unwrap();
        store
            .begin_package_switch(record("2.0.0", Some("1.0.0")), None, None)
            .await
            .unwrap();
        let bound = store.plugin_bindings().unwrap().remove("demo").unwrap();
        assert_eq!(bound.file, "package:demo");
        assert_eq!(bound.key_id.as_deref(), Some("AB"));
        // The new version writes, deletes and changes settings during probation.
        store.kv_set("demo", "c", "3").await.unwrap();
        store.kv_delete("demo", "a").await.unwrap();
        store.kv_set("demo", "b", "changed").await.unwrap();
        store
            .set_plugin_settings("demo", json!({"a": 2}), None)
            .await
            .unwrap();
        store
            .roll_back_package_switch(
                "demo",
                Some(record("1.0.0", None)),
                Some(json!({"a": 1})),
                None,
            )
            .await
            .unwrap();
        assert_eq!(kv(&store), vec!["a", "b"]);
        assert_eq!(store.kv_get("demo", "b").unwrap().as_deref(), Some("2"));
        assert_eq!(store.kv_usage("demo").unwrap(), usage);
        assert_eq!(
            store.kv_get("demp", "x").unwrap().as_deref(),
            Some("neighbour")
        );
        assert_eq!(
            store.plugin_settings("demo").unwrap(),
            Some(json!({"a": 1}))
        );
        assert_eq!(store.package("demo").unwrap().unwrap().active, "1.0.0");
    }

    #[tokio::test]
    async fn a_failed_install_rolls_back_to_no_package_and_no_binding() {
        let dir = TempDir::new();
        let store = open(&dir);
        store
            .begin_package_switch(record("2.0.0", None), None, None)
            .await
            .unwrap();
        store.kv_set("demo", "junk", "1").await.unwrap();
        store
            .roll_back_package_switch("demo", None, None, None)
            .await
            .unwrap();
        assert!(store.package("demo").unwrap().is_none());
        assert!(kv(&store).is_empty());
        assert!(!store.plugin_bindings().unwrap().contains_key("demo"));
        assert_eq!(store.plugin_settings("demo").unwrap(), None);
    }

    #[tokio::test]
    async fn finishing_keeps_the_new_writes_and_remove_purges_only_when_asked() {
        let dir = TempDir::new();
        let store = open(&dir);
        store.kv_set("demo", "a", "1").await.unwrap();
        store
            .begin_package_switch(record("2.0.0", Some("1.0.0")), None, None)
            .await
            .unwrap();
        store.kv_set("demo", "c", "3").await.unwrap();
        store
            .finish_package_switch(record("2.0.0", None), None)
            .await
            .unwrap();
        assert_eq!(kv(&store), vec!["a", "c"]);
        store.remove_package("demo", false, None).await.unwrap();
        assert!(store.package("demo").unwrap().is_none());
        assert_eq!(kv(&store), vec!["a", "c"], "kept without purge");
        assert!(store.plugin_bindings().unwrap().contains_key("demo"));
        store.remove_package("demo", true, None).await.unwrap();
        assert!(kv(&store).is_empty());
        assert_eq!(store.kv_usage("demo").unwrap(), 0);
        assert!(!store.plugin_bindings().unwrap().contains_key("demo"));
    }

    #[tokio::test]
    async fn trusted_keys_are_added_listed_and_removed() {
        let dir = TempDir::new();
        let store = open(&dir);
        assert!(
            store.trusted_keys().unwrap().is_empty(),
            "no table yet reads as empty"
        );
        let key = TrustedKey {
            key_id: "0123456789ABCDEF".into(),
            public_key: "RWQ...".into(),
            comment: "me".into(),
            added_at: crate::clock::now(),
        };
        store.add_trusted_key(key.clone(), None).await.unwrap();
        assert_eq!(store.trusted_keys().unwrap().get(&key.key_id), Some(&key));
        assert!(store.remove_trusted_key(&key.key_id, None).await.unwrap());
        assert!(!store.remove_trusted_key(&key.key_id, None).await.unwrap());
        assert!(store.trusted_keys().unwrap().is_empty());
    }
}
