//! What the store keeps for plugin isolation: the uid each plugin id runs as (allocated once,
//! like systemd's `DynamicUser`, and kept so its files stay its own across restarts and updates)
//! and the admin's per-plugin overrides (limits, granted groups and system calls).
//!
//! ```text
//! table            key         value
//! ───────────────  ──────────  ─────────────────────────────────────────────
//! plugin_uids      plugin id   u32: its uid (= gid)
//! plugin_security  plugin id   JSON SecurityOverrides
//! ```
//! Added to schema version 1 without a bump, like the package tables: a file without them reads as
//! "no uids allocated, no overrides".

use std::collections::BTreeSet;

use redb::{ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tables::Doing;
use super::{NewEvent, Store, StoreError, bound_event};

const PLUGIN_UIDS: TableDefinition<&str, u32> = TableDefinition::new("plugin_uids");
const PLUGIN_SECURITY: TableDefinition<&str, &str> = TableDefinition::new("plugin_security");

/// The admin's changes to what one plugin gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityOverrides {
    /// Limits set by the admin (a JSON object as `crate::limits::Limits::to_json` writes it).
    #[serde(default)]
    pub limits: Value,
    /// Supplementary groups granted (names).
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Denied system calls lifted (names).
    #[serde(default)]
    pub syscalls: BTreeSet<String>,
}

impl Store {
    /// The uid plugin `id` runs as, if one was allocated.
    pub fn plugin_uid(&self, id: &str) -> Result<Option<u32>, StoreError> {
        self.read(|txn| {
            const WHAT: &str = "reading plugin uids";
            match txn.open_table(PLUGIN_UIDS) {
                Ok(t) => Ok(t.get(id).doing(WHAT)?.map(|v| v.value())),
                Err(TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
            }
        })
    }

    /// The uid of plugin `id`: the one it has, else the lowest of `first ..= last` that no other
    /// plugin has and `taken` does not name (uids of the system's own users), kept from now on.
    /// `None`: the range is used up.
    pub async fn allocate_plugin_uid(
        &self,
        id: &str,
        first: u32,
        last: u32,
        taken: BTreeSet<u32>,
    ) -> Result<Option<u32>, StoreError> {
        if let Some(uid) = self.plugin_uid(id)? {
            return Ok(Some(uid));
        }
        let id = id.to_owned();
        self.write(id.len() + 8, move |txn, _| {
            const WHAT: &str = "allocating a plugin uid";
            let mut t = txn.open_table(PLUGIN_UIDS).doing(WHAT)?;
            if let Some(uid) = t.get(id.as_str()).doing(WHAT)?.map(|v| v.value()) {
                return Ok(Some(uid));
            }
            let mut used = taken.clone();
            for row in t.iter().doing(WHAT)? {
                let (_, v) = row.doing(WHAT)?;
                used.insert(v.value());
            }
            let Some(uid) = (first..=last).find(|u| !used.contains(u)) else {
                return Ok(None);
            };
            t.insert(id.as_str(), uid).doing(WHAT)?;
            Ok(Some(uid))
        })
        .await
    }

    /// Every allocated plugin uid, by plugin id.
    pub fn plugin_uids(&self) -> Result<std::collections::BTreeMap<String, u32>, StoreError> {
        self.read(|txn| {
            const WHAT: &str = "reading plugin uids";
            let mut out = std::collections::BTreeMap::new();
            let t = match txn.open_table(PLUGIN_UIDS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(out),
                Err(e) => return Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
            };
            for row in t.iter().doing(WHAT)? {
                let (k, v) = row.doing(WHAT)?;
                out.insert(k.value().to_owned(), v.value());
            }
            Ok(out)
        })
    }

    /// Forget the uid of plugin `id` (its files are gone: a purge).
    pub async fn release_plugin_uid(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(id.len(), move |txn, _| {
            const WHAT: &str = "releasing a plugin uid";
            let mut t = txn.open_table(PLUGIN_UIDS).doing(WHAT)?;
            t.remove(id.as_str()).doing(WHAT)?;
            let mut s = txn.open_table(PLUGIN_SECURITY).doing(WHAT)?;
            s.remove(id.as_str()).doing(WHAT)?;
            Ok(())
        })
        .await
    }

    /// The admin's overrides for plugin `id` (empty when none were made).
    pub fn security_overrides(&self, id: &str) -> Result<SecurityOverrides, StoreError> {
        self.read(|txn| {
            const WHAT: &str = "reading plugin security";
            let t = match txn.open_table(PLUGIN_SECURITY) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(SecurityOverrides::default()),
                Err(e) => return Err(StoreError::Storage(super::StorageFailure::new(WHAT, e))),
            };
            Ok(t.get(id)
                .doing(WHAT)?
                .and_then(|v| serde_json::from_str(v.value()).ok())
                .unwrap_or_default())
        })
    }

    /// Store the admin's overrides for plugin `id`, with the event that explains the change.
    pub async fn set_security_overrides(
        &self,
        id: &str,
        overrides: SecurityOverrides,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let text = serde_json::to_string(&overrides).unwrap_or_else(|_| "{}".into());
        let (event, bytes) = match event.map(bound_event) {
            Some((ev, bytes)) => (Some((ev, crate::clock::now())), bytes),
            None => (None, 0),
        };
        self.write(id.len() + text.len() + bytes, move |txn, limits| {
            const WHAT: &str = "writing plugin security";
            let mut t = txn.open_table(PLUGIN_SECURITY).doing(WHAT)?;
            t.insert(id.as_str(), text.as_str()).doing(WHAT)?;
            drop(t);
            if let Some((ev, at)) = &event {
                super::tables::append_event(txn, limits, &id, ev, *at)?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TempDir;

    fn store() -> (TempDir, Store) {
        let dir = TempDir::new();
        let store = super::super::tests::open(&dir);
        (dir, store)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn uids_are_allocated_once_per_id_skipping_taken_ones() {
        let (_d, s) = store();
        let taken = BTreeSet::from([100]);
        let a = s
            .allocate_plugin_uid("a", 100, 102, taken.clone())
            .await
            .unwrap();
        let b = s
            .allocate_plugin_uid("b", 100, 102, taken.clone())
            .await
            .unwrap();
        assert_eq!((a, b), (Some(101), Some(102)));
        assert_eq!(
            s.allocate_plugin_uid("a", 100, 102, taken.clone())
                .await
                .unwrap(),
            Some(101)
        );
        assert_eq!(
            s.allocate_plugin_uid("c", 100, 102, taken.clone())
                .await
                .unwrap(),
            None
        );
        s.release_plugin_uid("a").await.unwrap();
        assert_eq!(s.plugin_uid("a").unwrap(), None);
        assert_eq!(
            s.allocate_plugin_uid("c", 100, 102, taken).await.unwrap(),
            Some(101)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn overrides_round_trip() {
        let (_d, s) = store();
        assert_eq!(
            s.security_overrides("x").unwrap(),
            SecurityOverrides::default()
        );
        let o = SecurityOverrides {
            limits: serde_json::json!({"memory": 1048576}),
            groups: BTreeSet::from(["gpio".to_string()]),
            syscalls: BTreeSet::new(),
        };
        s.set_security_overrides("x", o.clone(), None)
            .await
            .unwrap();
        assert_eq!(s.security_overrides("x").unwrap(), o);
    }
}
