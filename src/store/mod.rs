//! The store: one crash-safe redb file, `<data-dir>/toru.redb`, holding everything the host must
//! remember across restarts — each plugin's enabled state, the file its id belongs to and its recent
//! events, each plugin's KV namespace, and the web layer's users, API tokens and sessions. The only
//! module that names redb: callers see [`Store`] and plain records.
//!
//! Called by the supervisor (plugin state, events, KV on behalf of plugins), the HTTP layer (the
//! same, plus users, tokens and sessions) and startup (open, close). Both serve KV through
//! [`kv::serve`], which turns the protocol's `kv` requests into calls here; the KV limits are the
//! protocol's (`toru_plugin_api::protocol::MAX_KV_*`), checked here. It must not hash secrets (the
//! callers hand it hashes), know about processes or HTTP, or block the runtime thread on a disk
//! flush.
//!
//! # Writes: one writer thread, group commit
//!
//! A durable commit ends in an `fsync`, which on an SD card takes milliseconds to hundreds of
//! milliseconds. The host runs on ONE `current_thread` runtime: an fsync there would stall every
//! HTTP request and every plugin heartbeat for that long. So every write goes over a bounded
//! channel to one dedicated `std::thread` (`writer.rs`), which blocks on the channel when idle
//! (no polling). It takes the first pending write, drains whatever else is queued (at most 256
//! writes or 2 MiB of payload), applies them all in one write transaction, commits once with
//! immediate durability, and only then answers each caller over its oneshot. Writers that arrive
//! in the same turn of the loop share one fsync: the commit rate stays flat while throughput grows
//! with concurrency, and every caller still waits for its write to be durable. A write refused on
//! its own merits (key too long, quota) never touches the transaction and fails alone; a storage
//! failure aborts the batch, whose writes are then retried one transaction each so that one bad
//! write cannot sink its neighbours. Writes are applied in the order they were submitted. A caller
//! that stops waiting does not cancel its write.
//!
//! Every event a committed transaction appended is then sent on a bounded broadcast channel,
//! the live event feed ([`Store::subscribe_events`]; the MQTT bridge follows it): after the
//! commit, never for an aborted one, and without waiting for a slow receiver (it lags and is told
//! how many it lost).
//!
//! Reads run on the caller's thread in a read transaction on the shared `Database` (an MVCC
//! snapshot; they never wait for the writer). They see every acknowledged write.
//!
//! # Files in the data dir
//!
//! ```text
//! <data-dir>/                          created 0700 when missing
//!   toru.lock                          flock(LOCK_EX|LOCK_NB) held for the Store's life: one toru
//!                                      per data dir, and a second Store in the same process fails
//!   toru.redb                          the store (schema version 1, below)
//!   toru.redb.new                      a new store being initialised (renamed to toru.redb)
//!   toru.redb.corrupt-20261124T194503Z a damaged store kept by `toru store repair|reset`
//! ```
//!
//! # Tables (schema version 1)
//!
//! ```text
//! table          key                       value
//! ─────────────  ────────────────────────  ───────────────────────────────────────────────
//! meta           &str                      &str   "schema_version" → "1"
//!                                                 "instance_id"    → UUID v4, set once
//! plugins        plugin id                 JSON PluginRow: PluginRecord + PluginBinding
//! events         u64 seq (host-wide)       JSON Event (with its plugin and seq)
//! plugin_events  (plugin id, u64 seq)      ()     index: a plugin's events, oldest first
//! kv             (plugin id, key)          &str   the value
//! kv_usage       plugin id                 u64    Σ len(key) + len(value) over its kv rows
//! users          user name                 JSON UserRecord
//! tokens         token hash                JSON TokenRecord
//! token_names    token name                &str   token hash (names are unique)
//! sessions       session hash              JSON SessionRecord
//! user_sessions  (user name, session hash) ()     index: a user's sessions
//! ```
//!
//! Packages, trusted publisher keys, plugin settings and the KV snapshot of an update under way
//! have their own tables, drawn in `packages.rs`; the instance's licensing key, the clock's
//! high-water mark (`last_seen`) and installed licences are drawn in `licenses.rs`; the run record
//! safe mode reads at each start (`meta` `"run"`) in `runs.rs`; the whole-device update under way
//! and the last one's result in `system_update.rs`.
//!
//! Invariants, each kept inside the one transaction that changes the rows involved:
//! - a plugin id is the first part of every KV key, so namespaces are isolated by construction;
//! - `kv_usage[p]` equals the bytes of `p`'s kv rows, and never exceeds the quota after a write
//!   that grows it;
//! - `events` and `plugin_events` hold the same (plugin, seq) pairs, at most
//!   [`StoreOptions::events_per_plugin`] per plugin; `seq` only grows (it continues from the
//!   newest stored event);
//! - `token_names[n] = h` exactly when `tokens[h].name = n`; `user_sessions` has `(u, h)` exactly
//!   when `sessions[h].user = u`.
//!
//! Records are JSON so that a field added later deserialises old rows with its default; a change
//! that old code could not read bumps the schema version. A file with a newer version than this
//! build knows is left in place, its rows unchanged, and the store runs degraded.
//!
//! # Failure
//!
//! - **A write fails with an I/O error** (full disk): redb then refuses every operation on that
//!   `Database` until it is reopened, so the writer reopens the file at once (`slot`), the store is
//!   degraded with the reason ([`DegradedCause::StorageFull`]) and the write answers
//!   [`StoreError::DiskFull`]. Reads keep working. Every later write is tried; while degraded the
//!   writer also probes with a small write of its own every `writer::PROBE_INTERVAL` (5 s); the first
//!   success makes the store healthy again.
//! - **The file cannot be used** (damaged, emptied, unreadable, written by a newer toru): it is
//!   left exactly as it is and the store runs on an empty in-memory stand-in that refuses every
//!   write ([`StoreError::Degraded`]) — on every start, until an admin runs `toru store repair` or
//!   `toru store reset` ([`repair`], [`reset`]). Every open checks the whole file's integrity (redb's
//!   checksums), so corruption is reported as an error rather than trusted. A new file is created
//!   as `toru.redb.new` and renamed into place once initialised, so an empty `toru.redb` is damage.

mod isolation;
pub(crate) mod kv;
mod licenses;
mod maintenance;
mod open;
mod packages;
#[cfg(test)]
mod power_cut_tests;
mod runs;
mod slot;
mod system_update;
mod tables;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableDatabase, WriteTransaction};
use serde::{Deserialize, Serialize};
use toru_plugin_api::protocol::{MAX_KV_KEY_LEN, MAX_KV_LIST_LIMIT, MAX_KV_VALUE_LEN};

pub use self::isolation::SecurityOverrides;
pub use self::licenses::StoredLicense;
pub use self::maintenance::{MaintenanceError, RepairOutcome, repair, reset, status};
pub use self::packages::{PackageRecord, PackageVersion, PendingUpdate, TrustedKey, UpdateOutcome};
pub use self::runs::{Culprit, RunChange, RunRecord};
use self::slot::Shared;
pub use self::system_update::{
    PendingSystemUpdate, SystemUpdateOutcome, SystemUpdateResult, UpdateAttempt,
};
use self::tables::{Doing, Limits};
use self::writer::Writer;
use crate::role::Role;

/// Events the live feed ([`Store::subscribe_events`]) holds for a receiver that lags.
pub const EVENT_FEED_LEN: usize = 256;
/// Most events one [`Store::events`] returns.
pub const MAX_LIST_EVENTS: usize = 1000;
/// An event whose JSON is larger than this is stored with its details replaced by a note and its
/// message cut to [`MAX_EVENT_MESSAGE_BYTES`], so that retention bounds the file.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// Longest message of an event that had to be cut (see [`MAX_EVENT_BYTES`]).
pub const MAX_EVENT_MESSAGE_BYTES: usize = 1024;

/// Options for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Per-plugin KV quota in bytes (keys + values). Default 1 MiB.
    pub kv_quota_bytes: u64,
    /// Events kept per plugin; older ones are dropped. Default 200; at least 1 is kept.
    pub events_per_plugin: u64,
    /// redb cache size in bytes (bounded). Default 4 MiB.
    pub cache_bytes: usize,
    /// A legacy `<plugins-dir>/.metadata/config.json` (`{"plugins": {"id": true}}`) imported on first
    /// start only (when the store is new).
    pub legacy_config: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            kv_quota_bytes: 1024 * 1024,
            events_per_plugin: 200,
            cache_bytes: 4 * 1024 * 1024,
            legacy_config: None,
        }
    }
}

/// Whether the store can do its job. Reported by every health surface (`/api/system`,
/// `/metrics`, the log) until it can again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreHealth {
    /// The file is open and the last write to it succeeded.
    Ok,
    /// The store cannot do all of its job; `cause` says what, `reason` says it in words.
    Degraded {
        /// Why.
        cause: DegradedCause,
        /// One human sentence with the details (path, error).
        reason: String,
    },
}

/// Why the store is degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradedCause {
    /// The disk is full: writes fail ([`StoreError::DiskFull`]), reads work, and the store
    /// recovers by itself once a write succeeds (it retries every write and probes now and then).
    StorageFull,
    /// Writing the file failed with another I/O error; as for `StorageFull`.
    WritesFailing,
    /// The file cannot be opened (damaged, unreadable). It is left in place, untouched; the host
    /// runs on an empty in-memory store that refuses every write ([`StoreError::Degraded`]), on
    /// every start, until an admin decides: `toru store repair` or `toru store reset`.
    FileUnusable,
    /// The file was written by a newer toru. Left in place; as for `FileUnusable`.
    NewerSchema,
}

impl StoreHealth {
    /// Whether writes are refused outright (the file is not in use at all).
    fn refuses_writes(&self) -> bool {
        matches!(
            self,
            StoreHealth::Degraded {
                cause: DegradedCause::FileUnusable | DegradedCause::NewerSchema,
                ..
            }
        )
    }
}

/// Why the store could not be opened at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process holds the data dir (a second `toru` instance).
    #[error("another toru process is using {0} (its lock file is held)")]
    Locked(PathBuf),
    /// The data dir cannot be created or written.
    #[error("cannot use data dir {path}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Even the in-memory fallback store could not be set up.
    #[error("cannot create the in-memory fallback store")]
    InMemory(#[source] StorageFailure),
    /// The writer thread could not be started.
    #[error("cannot start the store's writer thread")]
    WriterThread(#[source] std::io::Error),
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An empty key.
    #[error("key must be 1 to {MAX_KV_KEY_LEN} bytes (got 0)")]
    EmptyKey,
    /// Key longer than [`MAX_KV_KEY_LEN`] bytes.
    #[error("key must be 1 to {MAX_KV_KEY_LEN} bytes (got {0})")]
    KeyTooLong(usize),
    /// Value longer than [`MAX_KV_VALUE_LEN`] bytes.
    #[error("value must be at most {MAX_KV_VALUE_LEN} bytes (got {0})")]
    ValueTooLarge(usize),
    /// The plugin's quota would be exceeded.
    #[error("plugin KV quota of {quota} bytes exceeded (in use {used}, this write needs {needed})")]
    QuotaExceeded {
        /// The quota.
        quota: u64,
        /// Bytes in use.
        used: u64,
        /// Bytes this write would add.
        needed: u64,
    },
    /// An API token with this name already exists.
    #[error("an API token named {0:?} already exists")]
    NameTaken(String),
    /// The store's file is not in use (damaged, or written by a newer toru): every write is
    /// refused, because nothing written now could survive a restart.
    #[error("the store's file cannot be used (see the store's health); writes are refused")]
    Degraded,
    /// The disk is full; the write was not made. Reads still work.
    #[error("the disk is full; the write was not made")]
    DiskFull(#[source] StorageFailure),
    /// The store is reopening its file after an I/O failure; try again shortly.
    #[error("the store is reopening its file after an I/O failure")]
    Unavailable,
    /// The store thread is gone (host shutting down).
    #[error("the store is shut down")]
    Closed,
    /// The storage engine failed (I/O error, full disk, corruption found while reading). Print
    /// the error's source chain to see the cause.
    #[error(transparent)]
    Storage(StorageFailure),
}

/// A storage-engine failure: what the store was doing, with the engine's error as the source.
/// Cheap to clone (one failed commit is reported to every write in its batch).
#[derive(Debug, Clone)]
pub struct StorageFailure {
    doing: &'static str,
    fault: Fault,
    source: Arc<dyn std::error::Error + Send + Sync + 'static>,
}

/// What kind of failure a [`StorageFailure`] is: it decides whether the store must reopen its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The disk (or the user's quota on it) is full: `ENOSPC`, `EDQUOT`.
    Full,
    /// Another I/O error: the engine refuses every later operation until the file is reopened.
    Io,
    /// The engine refuses because an earlier I/O error latched it (`PreviousIo`).
    Latched,
    /// Anything else (corruption found while reading, a value the engine refuses, a bad record).
    Other,
}

impl StorageFailure {
    fn new(doing: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        let fault = classify(&source);
        StorageFailure {
            doing,
            fault,
            source: Arc::new(source),
        }
    }

    /// Whether this failure is a full disk.
    pub fn is_disk_full(&self) -> bool {
        self.fault == Fault::Full
    }

    pub(crate) fn fault(&self) -> Fault {
        self.fault
    }
}

/// Classify an engine error by the storage error inside it (redb's error types do not expose it
/// as a `source`, so each wrapper is looked at in turn).
fn classify(e: &(dyn std::error::Error + 'static)) -> Fault {
    use redb::{CommitError, DatabaseError, TableError, TransactionError};
    let storage = if let Some(s) = e.downcast_ref::<redb::StorageError>() {
        Some(s)
    } else if let Some(CommitError::Storage(s)) = e.downcast_ref::<CommitError>() {
        Some(s)
    } else if let Some(TransactionError::Storage(s)) = e.downcast_ref::<TransactionError>() {
        Some(s)
    } else if let Some(TableError::Storage(s)) = e.downcast_ref::<TableError>() {
        Some(s)
    } else if let Some(DatabaseError::Storage(s)) = e.downcast_ref::<DatabaseError>() {
        Some(s)
    } else {
        None
    };
    let io = match storage {
        Some(redb::StorageError::Io(io)) => Some(io),
        Some(redb::StorageError::PreviousIo) => return Fault::Latched,
        Some(_) => return Fault::Other,
        None => e.downcast_ref::<std::io::Error>(),
    };
    match io {
        Some(io)
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.raw_os_error() == Some(libc::EDQUOT) =>
        {
            Fault::Full
        }
        Some(_) => Fault::Io,
        None => Fault::Other,
    }
}

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage failed while {}", self.doing)
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<StorageFailure> for StoreError {
    fn from(failure: StorageFailure) -> Self {
        match failure.fault {
            Fault::Full => StoreError::DiskFull(failure),
            Fault::Io | Fault::Latched | Fault::Other => StoreError::Storage(failure),
        }
    }
}

/// Persisted state of one plugin: what its lifecycle policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Whether the plugin should run.
    pub enabled: bool,
    /// Set when the supervisor disabled it after repeated failures (why).
    pub auto_disabled: Option<String>,
}

/// Whom a plugin id belongs to: the claimant discovery first accepted for it. Another claimant of
/// the id is refused until an admin removes the binding ([`Store::bind_plugin`] with `None`).
///
/// A claimant is a `*.binary` file in the plugins dir, matched by its file name (the name, not the
/// path, so moving the whole plugins dir keeps every binding), or an installed package, named
/// `package:<id>` and holding its publisher's key id (`None`: unsigned, allowed for development).
/// Another publisher's package is refused the id until its data is purged
/// (`toru plugin remove ID --purge-data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginBinding {
    /// The file name (`hello-rust.binary`) the id was first registered from, or `package:<id>`.
    pub file: String,
    /// When the binding was made; of two plugins claiming one route, the older binding keeps it.
    pub since: DateTime<Utc>,
    /// For a package: the key id of its publisher (absent for files and unsigned packages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// One row of the `plugins` table, one JSON object: the policy's [`PluginRecord`] and the id's
/// [`PluginBinding`]. A row written before bindings existed reads with `binding: None`; an older
/// build reading a newer row ignores the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PluginRow {
    /// The persisted flags.
    #[serde(flatten)]
    pub record: PluginRecord,
    /// Whom the id belongs to, once discovery accepted a claimant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<PluginBinding>,
}

/// What an event records. Stored, and shown by the API, as the string [`EventKind::as_str`]
/// gives (`"crashed"`, `"metadata-invalid"` …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A process was spawned.
    Started,
    /// The process can serve (1.1: answered `ready`; 1.0: init was delivered).
    Ready,
    /// The process exited after a stop was asked for.
    Stopped,
    /// The process failed: exited on its own, hung, timed out starting or broke the protocol.
    Crashed,
    /// The process is being started again (after a failure, or on request).
    Restarted,
    /// The process missed heartbeats; it is being killed.
    Hung,
    /// A user enabled the plugin.
    Enabled,
    /// A user disabled the plugin, or the supervisor did after repeated failures.
    Disabled,
    /// A `*.binary` was skipped: its metadata is invalid, or its id or route is taken.
    MetadataInvalid,
    /// An admin released the id from the file it was bound to (`toru plugins unbind`).
    Unbound,
    /// A package was installed (its probation passed).
    Installed,
    /// A package was updated (or rolled back by an admin) and its probation passed.
    Updated,
    /// A new version did not come up healthy; the previous state was restored.
    UpdateRolledBack,
    /// A whole-device update was written into the other slot (`"host"`; docs/UPDATES.md).
    SystemUpdateInstalled,
    /// The new system became healthy and its slot was marked good (`"host"`).
    SystemUpdateSucceeded,
    /// A whole-device update failed: install refused or interrupted, or the new system did not
    /// become healthy (`"host"`, with the reason).
    SystemUpdateFailed,
    /// A package was removed.
    Removed,
    /// A plugin's settings were changed.
    SettingsChanged,
    /// A publisher key was trusted.
    TrustAdded,
    /// A publisher key was no longer trusted.
    TrustRemoved,
    /// A plugin was killed for exceeding its memory limit (details: `limit_bytes`, `peak_bytes`).
    Oom,
    /// A plugin reached another limit (processes) and was stopped (details: `limit`, `value`).
    Limit,
    /// An admin changed a plugin's limits or granted permissions.
    SecurityChanged,
    /// A plugin that needs a licence was not started, or was stopped: no valid licence (why).
    LicenseNeeded,
    /// A licence was installed for a plugin.
    LicenseInstalled,
    /// A plugin's licence was removed.
    LicenseRemoved,
    /// The host found at its start that the run before ended uncleanly (killed, crashed, a
    /// watchdog reset, a power cut): the count in a row and the likely culprit (host event).
    UncleanExit,
    /// The host started in safe mode: third-party plugins are held (host event).
    SafeMode,
    /// The host left safe mode: by request, or at a start after a clean run (host event).
    SafeModeLeft,
    /// A kind this build does not know, as read from the store (a newer build wrote it); kept
    /// as written so reading never fails or changes it.
    Other(String),
}

impl EventKind {
    /// The stored string.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Started => "started",
            EventKind::Ready => "ready",
            EventKind::Stopped => "stopped",
            EventKind::Crashed => "crashed",
            EventKind::Restarted => "restarted",
            EventKind::Hung => "hung",
            EventKind::Enabled => "enabled",
            EventKind::Disabled => "disabled",
            EventKind::MetadataInvalid => "metadata-invalid",
            EventKind::Unbound => "unbound",
            EventKind::Installed => "installed",
            EventKind::Updated => "updated",
            EventKind::UpdateRolledBack => "update-rolled-back",
            EventKind::SystemUpdateInstalled => "update-installed",
            EventKind::SystemUpdateSucceeded => "update-succeeded",
            EventKind::SystemUpdateFailed => "update-failed",
            EventKind::Removed => "removed",
            EventKind::SettingsChanged => "settings-changed",
            EventKind::TrustAdded => "trust-added",
            EventKind::TrustRemoved => "trust-removed",
            EventKind::Oom => "oom",
            EventKind::Limit => "limit",
            EventKind::SecurityChanged => "security-changed",
            EventKind::LicenseNeeded => "licence-needed",
            EventKind::LicenseInstalled => "license-installed",
            EventKind::LicenseRemoved => "license-removed",
            EventKind::UncleanExit => "unclean-exit",
            EventKind::SafeMode => "safe-mode",
            EventKind::SafeModeLeft => "safe-mode-left",
            EventKind::Other(s) => s,
        }
    }
}

impl From<&str> for EventKind {
    fn from(s: &str) -> EventKind {
        match s {
            "started" => EventKind::Started,
            "ready" => EventKind::Ready,
            "stopped" => EventKind::Stopped,
            "crashed" => EventKind::Crashed,
            "restarted" => EventKind::Restarted,
            "hung" => EventKind::Hung,
            "enabled" => EventKind::Enabled,
            "disabled" => EventKind::Disabled,
            "metadata-invalid" => EventKind::MetadataInvalid,
            "unbound" => EventKind::Unbound,
            "installed" => EventKind::Installed,
            "updated" => EventKind::Updated,
            "update-rolled-back" => EventKind::UpdateRolledBack,
            "update-installed" => EventKind::SystemUpdateInstalled,
            "update-succeeded" => EventKind::SystemUpdateSucceeded,
            "update-failed" => EventKind::SystemUpdateFailed,
            "removed" => EventKind::Removed,
            "settings-changed" => EventKind::SettingsChanged,
            "oom" => EventKind::Oom,
            "limit" => EventKind::Limit,
            "security-changed" => EventKind::SecurityChanged,
            "trust-added" => EventKind::TrustAdded,
            "trust-removed" => EventKind::TrustRemoved,
            "licence-needed" => EventKind::LicenseNeeded,
            "license-installed" => EventKind::LicenseInstalled,
            "license-removed" => EventKind::LicenseRemoved,
            "unclean-exit" => EventKind::UncleanExit,
            "safe-mode" => EventKind::SafeMode,
            "safe-mode-left" => EventKind::SafeModeLeft,
            other => EventKind::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for EventKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(EventKind::from(s.as_ref()))
    }
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// One human sentence.
    pub message: String,
    /// Structured details (exit code, signal, uptime_ms, stderr_tail, …).
    pub details: serde_json::Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, increasing per plugin (drawn from one host-wide counter, so it also orders
    /// events across plugins).
    pub seq: u64,
    /// The plugin id (or `"host"`).
    pub plugin: String,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// See [`NewEvent::kind`].
    pub kind: EventKind,
    /// See [`NewEvent::message`].
    pub message: String,
    /// See [`NewEvent::details`].
    pub details: serde_json::Value,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name (`admin` is the owner).
    pub name: String,
    /// PHC string of a memory-hard KDF (argon2id).
    pub password_hash: String,
    /// What the user may do (stored as `"admin"` / `"viewer"`).
    pub role: Role,
    /// Bumped on every password change (sessions of older generations are invalid).
    pub generation: u64,
}

/// An API token (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique name given at creation.
    pub name: String,
    /// What the token may do (stored as `"admin"` / `"viewer"`).
    pub role: Role,
    /// When created.
    pub created: DateTime<Utc>,
}

/// A login session (keyed by the hash of its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The user.
    pub user: String,
    /// The user's generation when the session was made.
    pub generation: u64,
    /// When created (absolute timeout).
    pub created: DateTime<Utc>,
}

/// Handle to the store; cheap to clone. Dropping the last clone stops the writer thread (after it
/// has committed what was queued), closes the file and releases the data dir's lock, in that order.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

// Fields drop in declaration order: the writer thread is joined first (it holds a clone of
// `shared`), then the database closes, and only then is the lock released.
struct Inner {
    writer: Writer,
    shared: Arc<Shared>,
    instance_id: String,
    commits: Arc<AtomicU64>,
    /// The live event feed's sender (the writer thread holds a clone and sends on commit).
    feed: tokio::sync::broadcast::Sender<Event>,
    _lock: File,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("file", &self.inner.shared.file())
            .field("health", &self.inner.shared.health())
            .field("instance_id", &self.inner.instance_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open or create `<data_dir>/toru.redb`, taking the data dir's lock first.
    ///
    /// Fails only when the data dir is unusable or held by another instance; an unusable store
    /// file yields a degraded store (see [`Store::health`]). Runs on the caller's thread and reads
    /// the whole file to check it: call it at startup, before serving.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store, OpenError> {
        let lock = open::lock_data_dir(data_dir)?;
        let opened = open::open_database(data_dir, &opts)?;
        let shared = Arc::new(Shared::new(
            opened.db,
            opened.health,
            opened.file,
            opts.cache_bytes,
        ));
        let commits = Arc::new(AtomicU64::new(0));
        let (feed, _) = tokio::sync::broadcast::channel(EVENT_FEED_LEN);
        let limits = Limits::new(&opts, feed.clone());
        let writer = Writer::spawn(Arc::clone(&shared), limits, Arc::clone(&commits))
            .map_err(OpenError::WriterThread)?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer,
                shared,
                instance_id: opened.instance_id,
                commits,
                feed,
                _lock: lock,
            }),
        })
    }

    /// A store on `backend` instead of a file (the power-cut tests record every write and sync).
    #[cfg(test)]
    pub(crate) fn open_on_backend(
        data_dir: &Path,
        backend: impl redb::StorageBackend,
        opts: StoreOptions,
    ) -> Store {
        let lock = open::lock_data_dir(data_dir).expect("lock");
        let db = open::builder(&opts)
            .create_with_backend(backend)
            .expect("create on the backend");
        let Ok(instance_id) = open::init(&db, &opts) else {
            panic!("initialising the store failed")
        };
        let shared = Arc::new(Shared::new(db, StoreHealth::Ok, None, opts.cache_bytes));
        let commits = Arc::new(AtomicU64::new(0));
        let (feed, _) = tokio::sync::broadcast::channel(EVENT_FEED_LEN);
        let limits = Limits::new(&opts, feed.clone());
        let writer =
            Writer::spawn(Arc::clone(&shared), limits, Arc::clone(&commits)).expect("writer");
        Store {
            inner: Arc::new(Inner {
                writer,
                shared,
                instance_id,
                commits,
                feed,
                _lock: lock,
            }),
        }
    }

    /// Whether the store can do its job, and if not why (see [`StoreHealth`]).
    pub fn health(&self) -> StoreHealth {
        self.inner.shared.health()
    }

    /// Whether every write is refused because the store's file is not in use (see
    /// [`DegradedCause::FileUnusable`]); such a store cannot keep anything (users, tokens, KV).
    pub fn refuses_writes(&self) -> bool {
        self.inner.shared.refuses_writes()
    }

    /// This installation's id: a UUID v4 created when the store file was created, never changed.
    /// (A degraded store has a fresh id of its own.)
    pub fn instance_id(&self) -> String {
        self.inner.instance_id.clone()
    }

    /// Size of `toru.redb` in bytes (0 when degraded or when it cannot be read).
    pub fn file_bytes(&self) -> u64 {
        self.inner
            .shared
            .file()
            .and_then(|path| std::fs::metadata(path).ok())
            .map_or(0, |meta| meta.len())
    }

    /// Durable commits made by the writer thread since open (each one an fsync; one commit may
    /// carry many writes).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Every plugin's persisted state, by plugin id.
    pub fn plugin_records(&self) -> Result<BTreeMap<String, PluginRecord>, StoreError> {
        let rows = self.read(tables::plugin_rows)?;
        Ok(rows.into_iter().map(|(id, row)| (id, row.record)).collect())
    }

    /// Every plugin id's binding, by plugin id (ids without one are left out).
    pub fn plugin_bindings(&self) -> Result<BTreeMap<String, PluginBinding>, StoreError> {
        let rows = self.read(tables::plugin_rows)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, row)| row.binding.map(|b| (id, b)))
            .collect())
    }

    /// Persist a plugin's state and, in the same transaction, the event that explains the change.
    /// The id's binding is kept as it is.
    pub async fn set_plugin(
        &self,
        id: &str,
        rec: PluginRecord,
        event: Option<NewEvent>,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let (event, event_bytes) = match event.map(bound_event) {
            Some((ev, bytes)) => (Some((ev, crate::clock::now())), bytes),
            None => (None, 0),
        };
        let payload = id.len() + serde_json::to_vec(&rec).map_or(0, |j| j.len()) + event_bytes;
        self.write(payload, move |txn, limits| {
            tables::set_plugin(
                txn,
                limits,
                &id,
                &rec,
                event.as_ref().map(|(ev, at)| (ev, *at)),
            )
        })
        .await
    }

    /// Bind the id to `binding`, or with `None` release it, keeping the plugin's state; with the
    /// event that explains it in the same transaction. A new id's row starts enabled. Returns the
    /// binding it replaced.
    pub async fn bind_plugin(
        &self,
        id: &str,
        binding: Option<PluginBinding>,
        event: Option<NewEvent>,
    ) -> Result<Option<PluginBinding>, StoreError> {
        let id = id.to_owned();
        let (event, event_bytes) = match event.map(bound_event) {
            Some((ev, bytes)) => (Some((ev, crate::clock::now())), bytes),
            None => (None, 0),
        };
        let payload = id.len() + serde_json::to_vec(&binding).map_or(0, |j| j.len()) + event_bytes;
        self.write(payload, move |txn, limits| {
            tables::bind_plugin(
                txn,
                limits,
                &id,
                binding.as_ref(),
                event.as_ref().map(|(ev, at)| (ev, *at)),
            )
        })
        .await
    }

    /// Record an event for `plugin` (or `"host"`), dropping that plugin's oldest events beyond
    /// [`StoreOptions::events_per_plugin`]. Returns the stored event.
    pub async fn record_event(&self, plugin: &str, ev: NewEvent) -> Result<Event, StoreError> {
        self.record_event_at(plugin, ev, crate::clock::now()).await
    }

    /// [`Store::record_event`] with the time the event happened (a caller that queues events
    /// stamps them when they happen, not when they reach the store).
    pub async fn record_event_at(
        &self,
        plugin: &str,
        ev: NewEvent,
        at: DateTime<Utc>,
    ) -> Result<Event, StoreError> {
        let plugin = plugin.to_owned();
        let (ev, event_bytes) = bound_event(ev);
        let payload = plugin.len() + event_bytes;
        self.write(payload, move |txn, limits| {
            tables::append_event(txn, limits, &plugin, &ev, at)
        })
        .await
    }

    /// Every event stored from now on, in commit order, as soon as its transaction is durable
    /// (whoever records it: the supervisor, packages, licences, updates). The feed is bounded
    /// ([`EVENT_FEED_LEN`]): a receiver that falls further behind loses the oldest and is told how
    /// many (`RecvError::Lagged`); the writer never waits for a receiver.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.feed.subscribe()
    }

    /// Up to `limit` (at most [`MAX_LIST_EVENTS`]) events, newest first: `plugin`'s, or every
    /// plugin's when `None`.
    pub fn events(&self, plugin: Option<&str>, limit: usize) -> Result<Vec<Event>, StoreError> {
        let limit = limit.min(MAX_LIST_EVENTS);
        self.read(|txn| tables::events(txn, plugin, limit))
    }

    /// The value of `key` in `plugin`'s namespace.
    pub fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<String>, StoreError> {
        check_key(key)?;
        self.read(|txn| tables::kv_get(txn, plugin, key))
    }

    /// Set `key` in `plugin`'s namespace. Fails with [`StoreError::EmptyKey`],
    /// [`StoreError::KeyTooLong`],
    /// [`StoreError::ValueTooLarge`], [`StoreError::QuotaExceeded`] (overwriting counts only the
    /// difference), or [`StoreError::Degraded`].
    pub async fn kv_set(&self, plugin: &str, key: &str, value: &str) -> Result<(), StoreError> {
        check_key(key)?;
        if value.len() > MAX_KV_VALUE_LEN {
            return Err(StoreError::ValueTooLarge(value.len()));
        }
        let (plugin, key, value) = (plugin.to_owned(), key.to_owned(), value.to_owned());
        let payload = plugin.len() + key.len() + value.len();
        self.write(payload, move |txn, limits| {
            tables::kv_set(txn, limits, &plugin, &key, &value)
        })
        .await
    }

    /// Delete `key` from `plugin`'s namespace; `true` if it existed.
    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        let payload = plugin.len() + key.len();
        self.write(payload, move |txn, _| tables::kv_delete(txn, &plugin, &key))
            .await
    }

    /// Keys of `plugin`'s namespace that start with `prefix`, in byte order, after `start_after`
    /// when given, at most `limit` of them (capped at [`MAX_KV_LIST_LIMIT`]). The flag is `true` when
    /// more keys match beyond the returned ones (continue with `start_after` = the last key).
    pub fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let limit = limit.min(MAX_KV_LIST_LIMIT);
        self.read(|txn| tables::kv_list(txn, plugin, prefix, start_after, limit))
    }

    /// Bytes (keys + values) `plugin` uses of its quota.
    pub fn kv_usage(&self, plugin: &str) -> Result<u64, StoreError> {
        self.read(|txn| tables::kv_usage(txn, plugin))
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.read(|txn| tables::user(txn, name))
    }

    /// Create or replace the user `user.name`.
    pub async fn put_user(&self, user: UserRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(&user).expect("a UserRecord always serialises");
        let payload = user.name.len() + json.len();
        self.write(payload, move |txn, _| {
            tables::put_user(txn, &user.name, &json)
        })
        .await
    }

    /// Store an API token under its hash. Fails with [`StoreError::NameTaken`] when another token
    /// already has `rec.name`; storing the same hash again replaces its record.
    pub async fn put_token(&self, token_hash: &str, rec: TokenRecord) -> Result<(), StoreError> {
        let hash = token_hash.to_owned();
        let json = serde_json::to_string(&rec).expect("a TokenRecord always serialises");
        let payload = hash.len() + json.len() + rec.name.len();
        self.write(payload, move |txn, _| {
            tables::put_token(txn, &hash, &rec.name, &json)
        })
        .await
    }

    /// The token whose hash is `token_hash`.
    pub fn token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|txn| tables::token(txn, token_hash))
    }

    /// Every API token, by name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(tables::tokens)
    }

    /// Delete the token called `name`; `true` if it existed.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(name.len(), move |txn, _| tables::revoke_token(txn, &name))
            .await
    }

    /// Store a session under the hash of its id (replacing one with the same hash).
    pub async fn put_session(
        &self,
        session_hash: &str,
        rec: SessionRecord,
    ) -> Result<(), StoreError> {
        let hash = session_hash.to_owned();
        let json = serde_json::to_string(&rec).expect("a SessionRecord always serialises");
        let payload = hash.len() + json.len() + rec.user.len();
        self.write(payload, move |txn, _| {
            tables::put_session(txn, &hash, &rec.user, &json)
        })
        .await
    }

    /// The session whose id hashes to `session_hash`.
    pub fn session(&self, session_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|txn| tables::session(txn, session_hash))
    }

    /// Delete one session; `true` if it existed.
    pub async fn delete_session(&self, session_hash: &str) -> Result<bool, StoreError> {
        let hash = session_hash.to_owned();
        self.write(hash.len(), move |txn, _| tables::delete_session(txn, &hash))
            .await
    }

    /// Delete every session of `user` (log out everywhere); how many there were.
    pub async fn delete_sessions_of(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.write(user.len(), move |txn, _| {
            tables::delete_sessions_of(txn, &user)
        })
        .await
    }

    /// Delete every session created before `oldest` (expired) or after `newest` (stamped by a wall
    /// clock that has gone back since); how many there were. Sessions are otherwise kept until
    /// logout, so the web layer calls this now and then.
    pub async fn delete_sessions_created_outside(
        &self,
        oldest: DateTime<Utc>,
        newest: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.write(0, move |txn, _| {
            tables::delete_sessions_created_outside(txn, oldest, newest)
        })
        .await
    }

    /// Stop the writer thread once it has committed every write already queued; later writes fail
    /// with [`StoreError::Closed`], reads keep working. Blocks the calling thread for at most the
    /// queued writes' commits: call it at shutdown. Idempotent.
    pub fn close(&self) {
        self.inner.writer.close();
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // The clone lives for this one read transaction (see `slot`).
        let db = self.inner.shared.db()?;
        let txn = db.begin_read().doing("starting a read transaction")?;
        f(&txn)
    }

    /// Queue `write` for the writer thread (see `writer`), unless the store refuses every write.
    async fn write<T, F>(&self, payload_bytes: usize, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction, &Limits) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.shared.refuses_writes() {
            return Err(StoreError::Degraded);
        }
        self.inner.writer.submit(payload_bytes, write).await
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if key.len() > MAX_KV_KEY_LEN {
        return Err(StoreError::KeyTooLong(key.len()));
    }
    Ok(())
}

/// `ev`, with its details replaced by a note and its message cut when its JSON would exceed
/// [`MAX_EVENT_BYTES`]; and the size of its JSON, at most [`MAX_EVENT_BYTES`].
fn bound_event(mut ev: NewEvent) -> (NewEvent, usize) {
    let bytes = serde_json::to_vec(&ev).map_or(usize::MAX, |json| json.len());
    if bytes <= MAX_EVENT_BYTES {
        return (ev, bytes);
    }
    ev.details = serde_json::json!({
        "omitted": format!("the event was {bytes} bytes, over the {MAX_EVENT_BYTES}-byte limit"),
    });
    if let EventKind::Other(kind) = &mut ev.kind
        && kind.len() > MAX_EVENT_MESSAGE_BYTES
    {
        kind.truncate(kind.floor_char_boundary(MAX_EVENT_MESSAGE_BYTES));
    }
    if ev.message.len() > MAX_EVENT_MESSAGE_BYTES {
        ev.message
            .truncate(ev.message.floor_char_boundary(MAX_EVENT_MESSAGE_BYTES));
    }
    (ev, MAX_EVENT_BYTES)
}
