//! The table definitions drawn in the [store](super) doc, and the operations on them: reads take a
//! read transaction, writes take the writer thread's batch transaction.
//!
//! Every write function checks everything that can refuse the write (quota, name taken) BEFORE it
//! changes a row, so that a refused write leaves the shared batch transaction untouched. Only a
//! [`StoreError::Storage`] may come after a change, and that aborts the whole batch.

use std::collections::BTreeMap;
use std::ops::Bound;

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::de::DeserializeOwned;

use super::{
    Event, NewEvent, PluginBinding, PluginRecord, PluginRow, SessionRecord, StorageFailure,
    StoreError, TokenRecord, UserRecord,
};

/// The schema version this build writes and understands.
pub(super) const SCHEMA_VERSION: u64 = 1;
/// `meta` key of the schema version (decimal).
pub(super) const META_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key of the instance id.
pub(super) const META_INSTANCE_ID: &str = "instance_id";
/// `meta` key of the licensing instance key (`licenses.rs`).
pub(super) const META_INSTANCE_KEY: &str = "instance_key";
/// `meta` key of the licences' clock high-water mark (`licenses.rs`).
pub(super) const META_LAST_SEEN: &str = "last_seen";
/// `meta` key the writer rewrites (with the time) to find out whether writes succeed again after
/// they failed for lack of space.
pub(super) const META_PROBE: &str = "probe";

pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const PLUGINS: TableDefinition<&str, &str> = TableDefinition::new("plugins");
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
const PLUGIN_EVENTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("plugin_events");
pub(super) const KV: TableDefinition<(&str, &str), &str> = TableDefinition::new("kv");
pub(super) const KV_USAGE: TableDefinition<&str, u64> = TableDefinition::new("kv_usage");
const USERS: TableDefinition<&str, &str> = TableDefinition::new("users");
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
const TOKEN_NAMES: TableDefinition<&str, &str> = TableDefinition::new("token_names");
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
const USER_SESSIONS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_sessions");

/// The limits the writer enforces, and what the transaction being built appended for the live
/// event feed (the writer thread's alone: it sends them once the transaction commits).
#[derive(Debug)]
pub(super) struct Limits {
    /// Per-plugin KV quota (keys + values).
    pub kv_quota_bytes: u64,
    /// Events kept per plugin, at least 1 (so the newest event keeps the host-wide seq going).
    pub events_per_plugin: u64,
    /// Events appended by the transaction being built: sent to [`Limits::feed`] if it commits,
    /// forgotten if it aborts.
    pub appended: std::cell::RefCell<Vec<Event>>,
    /// The live event feed ([`super::Store::subscribe_events`]).
    pub feed: tokio::sync::broadcast::Sender<Event>,
}

impl Limits {
    /// Limits for `opts`, feeding committed events to `feed`.
    pub(super) fn new(
        opts: &super::StoreOptions,
        feed: tokio::sync::broadcast::Sender<Event>,
    ) -> Limits {
        Limits {
            kv_quota_bytes: opts.kv_quota_bytes,
            events_per_plugin: opts.events_per_plugin.max(1),
            appended: std::cell::RefCell::new(Vec::new()),
            feed,
        }
    }
}

/// Attach what the store was doing to an engine (or decoding) error.
pub(super) trait Doing<T> {
    /// `Err(e)` becomes a [`StorageFailure`] saying "storage failed while `what`", caused by `e`.
    fn doing(self, what: &'static str) -> Result<T, StorageFailure>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for Result<T, E> {
    fn doing(self, what: &'static str) -> Result<T, StorageFailure> {
        self.map_err(|e| StorageFailure::new(what, e))
    }
}

fn decode<T: DeserializeOwned>(json: &str, what: &'static str) -> Result<T, StorageFailure> {
    serde_json::from_str(json).doing(what)
}

/// Write this build's schema version into `meta`.
pub(super) fn write_schema_version(txn: &WriteTransaction) -> Result<(), StorageFailure> {
    const WHAT: &str = "writing the schema version";
    let mut meta = txn.open_table(META).doing(WHAT)?;
    meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_string().as_str())
        .doing(WHAT)?;
    Ok(())
}

/// Give the store an instance id if it has none.
pub(super) fn ensure_instance_id(txn: &WriteTransaction) -> Result<(), StorageFailure> {
    const WHAT: &str = "writing the instance id";
    let mut meta = txn.open_table(META).doing(WHAT)?;
    if meta.get(META_INSTANCE_ID).doing(WHAT)?.is_none() {
        let id = uuid::Uuid::new_v4().to_string();
        meta.insert(META_INSTANCE_ID, id.as_str()).doing(WHAT)?;
    }
    Ok(())
}

/// One small durable write (see [`META_PROBE`]).
pub(super) fn probe(db: &redb::Database) -> Result<(), StorageFailure> {
    const WHAT: &str = "probing whether writes succeed again";
    let mut txn = db.begin_write().doing(WHAT)?;
    txn.set_durability(redb::Durability::Immediate)
        .doing(WHAT)?;
    {
        let mut meta = txn.open_table(META).doing(WHAT)?;
        let now = crate::clock::now().to_rfc3339();
        meta.insert(META_PROBE, now.as_str()).doing(WHAT)?;
    }
    txn.commit().doing(WHAT)
}

/// Create every table, so that reads never meet a missing one.
pub(super) fn create_all(txn: &WriteTransaction) -> Result<(), StorageFailure> {
    const WHAT: &str = "creating the tables";
    txn.open_table(META).doing(WHAT)?;
    txn.open_table(PLUGINS).doing(WHAT)?;
    txn.open_table(EVENTS).doing(WHAT)?;
    txn.open_table(PLUGIN_EVENTS).doing(WHAT)?;
    txn.open_table(KV).doing(WHAT)?;
    txn.open_table(KV_USAGE).doing(WHAT)?;
    txn.open_table(USERS).doing(WHAT)?;
    txn.open_table(TOKENS).doing(WHAT)?;
    txn.open_table(TOKEN_NAMES).doing(WHAT)?;
    txn.open_table(SESSIONS).doing(WHAT)?;
    txn.open_table(USER_SESSIONS).doing(WHAT)?;
    Ok(())
}

// ── plugins and events ──────────────────────────────────────────────────────────────────────────

pub(super) fn plugin_rows(
    txn: &ReadTransaction,
) -> Result<BTreeMap<String, PluginRow>, StoreError> {
    const WHAT: &str = "reading plugin records";
    let table = txn.open_table(PLUGINS).doing(WHAT)?;
    let mut rows = BTreeMap::new();
    for row in table.iter().doing(WHAT)? {
        let (id, json) = row.doing(WHAT)?;
        rows.insert(id.value().to_owned(), decode(json.value(), WHAT)?);
    }
    Ok(rows)
}

/// The row of `id` as stored, `None` when there is none. A row that does not decode counts as
/// none, so that writing the plugin's state repairs it instead of failing forever.
pub(super) fn plugin_row(
    plugins: &redb::Table<'_, &str, &str>,
    id: &str,
    what: &'static str,
) -> Result<Option<PluginRow>, StoreError> {
    Ok(plugins
        .get(id)
        .doing(what)?
        .and_then(|json| serde_json::from_str::<PluginRow>(json.value()).ok()))
}

pub(super) fn set_plugin(
    txn: &WriteTransaction,
    limits: &Limits,
    id: &str,
    record: &PluginRecord,
    event: Option<(&NewEvent, DateTime<Utc>)>,
) -> Result<(), StoreError> {
    const WHAT: &str = "writing a plugin record";
    let mut plugins = txn.open_table(PLUGINS).doing(WHAT)?;
    let binding = plugin_row(&plugins, id, WHAT)?.and_then(|row| row.binding);
    let row = PluginRow {
        record: record.clone(),
        binding,
    };
    let json = serde_json::to_string(&row).expect("a PluginRow always serialises");
    plugins.insert(id, json.as_str()).doing(WHAT)?;
    if let Some((ev, at)) = event {
        append_event(txn, limits, id, ev, at)?;
    }
    Ok(())
}

pub(super) fn bind_plugin(
    txn: &WriteTransaction,
    limits: &Limits,
    id: &str,
    binding: Option<&PluginBinding>,
    event: Option<(&NewEvent, DateTime<Utc>)>,
) -> Result<Option<PluginBinding>, StoreError> {
    const WHAT: &str = "binding a plugin id";
    let mut plugins = txn.open_table(PLUGINS).doing(WHAT)?;
    let old = plugin_row(&plugins, id, WHAT)?;
    let previous = old.as_ref().and_then(|row| row.binding.clone());
    // Releasing an id that has no row leaves no row behind.
    if old.is_some() || binding.is_some() {
        let row = PluginRow {
            record: old.map_or(
                PluginRecord {
                    enabled: true,
                    auto_disabled: None,
                },
                |row| row.record,
            ),
            binding: binding.cloned(),
        };
        let json = serde_json::to_string(&row).expect("a PluginRow always serialises");
        plugins.insert(id, json.as_str()).doing(WHAT)?;
    }
    if let Some((ev, at)) = event {
        append_event(txn, limits, id, ev, at)?;
    }
    Ok(previous)
}

pub(super) fn append_event(
    txn: &WriteTransaction,
    limits: &Limits,
    plugin: &str,
    ev: &NewEvent,
    at: DateTime<Utc>,
) -> Result<Event, StoreError> {
    const WHAT: &str = "appending an event";
    let mut events = txn.open_table(EVENTS).doing(WHAT)?;
    let mut index = txn.open_table(PLUGIN_EVENTS).doing(WHAT)?;
    let seq = match events.last().doing(WHAT)? {
        Some((seq, _)) => seq.value() + 1,
        None => 1,
    };
    let event = Event {
        seq,
        plugin: plugin.to_owned(),
        at,
        kind: ev.kind.clone(),
        message: ev.message.clone(),
        details: ev.details.clone(),
    };
    let json = serde_json::to_string(&event).expect("an Event always serialises");
    events.insert(seq, json.as_str()).doing(WHAT)?;
    index.insert((plugin, seq), ()).doing(WHAT)?;
    limits.appended.borrow_mut().push(event.clone());

    // Retention: drop this plugin's oldest events beyond the limit.
    let all_of_plugin = (plugin, 0u64)..=(plugin, u64::MAX);
    let kept = index.range(all_of_plugin.clone()).doing(WHAT)?.count();
    let excess =
        kept.saturating_sub(usize::try_from(limits.events_per_plugin).unwrap_or(usize::MAX));
    if excess > 0 {
        let mut oldest = Vec::with_capacity(excess);
        for row in index.range(all_of_plugin).doing(WHAT)?.take(excess) {
            oldest.push(row.doing(WHAT)?.0.value().1);
        }
        for seq in oldest {
            index.remove((plugin, seq)).doing(WHAT)?;
            events.remove(seq).doing(WHAT)?;
        }
    }
    Ok(event)
}

pub(super) fn events(
    txn: &ReadTransaction,
    plugin: Option<&str>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    const WHAT: &str = "reading events";
    let events = txn.open_table(EVENTS).doing(WHAT)?;
    let mut out = Vec::with_capacity(limit.min(64));
    match plugin {
        None => {
            for row in events.iter().doing(WHAT)?.rev().take(limit) {
                out.push(decode(row.doing(WHAT)?.1.value(), WHAT)?);
            }
        }
        Some(plugin) => {
            let index = txn.open_table(PLUGIN_EVENTS).doing(WHAT)?;
            let rows = index
                .range((plugin, 0u64)..=(plugin, u64::MAX))
                .doing(WHAT)?;
            for row in rows.rev().take(limit) {
                let seq = row.doing(WHAT)?.0.value().1;
                if let Some(json) = events.get(seq).doing(WHAT)? {
                    out.push(decode(json.value(), WHAT)?);
                }
            }
        }
    }
    Ok(out)
}

// ── KV ──────────────────────────────────────────────────────────────────────────────────────────

/// Bytes one KV row counts against its plugin's quota.
fn entry_bytes(key: &str, value: &str) -> u64 {
    (key.len() + value.len()) as u64
}

pub(super) fn kv_get(
    txn: &ReadTransaction,
    plugin: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    const WHAT: &str = "reading a KV value";
    let kv = txn.open_table(KV).doing(WHAT)?;
    Ok(kv
        .get((plugin, key))
        .doing(WHAT)?
        .map(|v| v.value().to_owned()))
}

pub(super) fn kv_set(
    txn: &WriteTransaction,
    limits: &Limits,
    plugin: &str,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    const WHAT: &str = "writing a KV value";
    let mut kv = txn.open_table(KV).doing(WHAT)?;
    let mut usage = txn.open_table(KV_USAGE).doing(WHAT)?;
    let used = usage.get(plugin).doing(WHAT)?.map_or(0, |u| u.value());
    let old = kv
        .get((plugin, key))
        .doing(WHAT)?
        .map_or(0, |v| entry_bytes(key, v.value()));
    let new = entry_bytes(key, value);
    let after = used.saturating_sub(old) + new;
    // A write that shrinks the namespace is always allowed, even over a since-lowered quota.
    if new > old && after > limits.kv_quota_bytes {
        return Err(StoreError::QuotaExceeded {
            quota: limits.kv_quota_bytes,
            used,
            needed: new - old,
        });
    }
    kv.insert((plugin, key), value).doing(WHAT)?;
    usage.insert(plugin, after).doing(WHAT)?;
    Ok(())
}

pub(super) fn kv_delete(
    txn: &WriteTransaction,
    plugin: &str,
    key: &str,
) -> Result<bool, StoreError> {
    const WHAT: &str = "deleting a KV value";
    let mut kv = txn.open_table(KV).doing(WHAT)?;
    let mut usage = txn.open_table(KV_USAGE).doing(WHAT)?;
    let freed = match kv.remove((plugin, key)).doing(WHAT)? {
        Some(old) => entry_bytes(key, old.value()),
        None => return Ok(false),
    };
    let used = usage.get(plugin).doing(WHAT)?.map_or(0, |u| u.value());
    let after = used.saturating_sub(freed);
    if after == 0 {
        usage.remove(plugin).doing(WHAT)?;
    } else {
        usage.insert(plugin, after).doing(WHAT)?;
    }
    Ok(true)
}

pub(super) fn kv_list(
    txn: &ReadTransaction,
    plugin: &str,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, bool), StoreError> {
    const WHAT: &str = "listing KV keys";
    let kv = txn.open_table(KV).doing(WHAT)?;
    // Start at the prefix, or just after `start_after` when that comes later.
    let start = match start_after {
        Some(after) if after >= prefix => Bound::Excluded((plugin, after)),
        _ => Bound::Included((plugin, prefix)),
    };
    let mut keys = Vec::with_capacity(limit.min(64));
    for row in kv
        .range::<(&str, &str)>((start, Bound::Unbounded))
        .doing(WHAT)?
    {
        let (row_key, _) = row.doing(WHAT)?;
        let (row_plugin, key) = row_key.value();
        if row_plugin != plugin || !key.starts_with(prefix) {
            break;
        }
        if keys.len() == limit {
            return Ok((keys, true));
        }
        keys.push(key.to_owned());
    }
    Ok((keys, false))
}

pub(super) fn kv_usage(txn: &ReadTransaction, plugin: &str) -> Result<u64, StoreError> {
    const WHAT: &str = "reading KV usage";
    let usage = txn.open_table(KV_USAGE).doing(WHAT)?;
    Ok(usage.get(plugin).doing(WHAT)?.map_or(0, |u| u.value()))
}

// ── users, tokens, sessions ─────────────────────────────────────────────────────────────────────

pub(super) fn user(txn: &ReadTransaction, name: &str) -> Result<Option<UserRecord>, StoreError> {
    const WHAT: &str = "reading a user";
    let users = txn.open_table(USERS).doing(WHAT)?;
    let user = users.get(name).doing(WHAT)?;
    Ok(user.map(|json| decode(json.value(), WHAT)).transpose()?)
}

pub(super) fn put_user(txn: &WriteTransaction, name: &str, json: &str) -> Result<(), StoreError> {
    const WHAT: &str = "writing a user";
    let mut users = txn.open_table(USERS).doing(WHAT)?;
    users.insert(name, json).doing(WHAT)?;
    Ok(())
}

pub(super) fn token(txn: &ReadTransaction, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
    const WHAT: &str = "reading a token";
    let tokens = txn.open_table(TOKENS).doing(WHAT)?;
    let token = tokens.get(hash).doing(WHAT)?;
    Ok(token.map(|json| decode(json.value(), WHAT)).transpose()?)
}

pub(super) fn tokens(txn: &ReadTransaction) -> Result<Vec<TokenRecord>, StoreError> {
    const WHAT: &str = "listing tokens";
    let names = txn.open_table(TOKEN_NAMES).doing(WHAT)?;
    let tokens = txn.open_table(TOKENS).doing(WHAT)?;
    let mut out = Vec::new();
    for row in names.iter().doing(WHAT)? {
        let (_, hash) = row.doing(WHAT)?;
        if let Some(json) = tokens.get(hash.value()).doing(WHAT)? {
            out.push(decode(json.value(), WHAT)?);
        }
    }
    Ok(out)
}

pub(super) fn put_token(
    txn: &WriteTransaction,
    hash: &str,
    name: &str,
    json: &str,
) -> Result<(), StoreError> {
    const WHAT: &str = "writing a token";
    let mut names = txn.open_table(TOKEN_NAMES).doing(WHAT)?;
    let mut tokens = txn.open_table(TOKENS).doing(WHAT)?;
    if let Some(owner) = names.get(name).doing(WHAT)?
        && owner.value() != hash
    {
        return Err(StoreError::NameTaken(name.to_owned()));
    }
    // The same hash stored again under a new name gives up its old name.
    let old_name = match tokens.get(hash).doing(WHAT)? {
        Some(old) => Some(decode::<TokenRecord>(old.value(), WHAT)?.name),
        None => None,
    };
    if let Some(old_name) = old_name
        && old_name != name
    {
        names.remove(old_name.as_str()).doing(WHAT)?;
    }
    tokens.insert(hash, json).doing(WHAT)?;
    names.insert(name, hash).doing(WHAT)?;
    Ok(())
}

pub(super) fn revoke_token(txn: &WriteTransaction, name: &str) -> Result<bool, StoreError> {
    const WHAT: &str = "revoking a token";
    let mut names = txn.open_table(TOKEN_NAMES).doing(WHAT)?;
    let mut tokens = txn.open_table(TOKENS).doing(WHAT)?;
    let hash = match names.remove(name).doing(WHAT)? {
        Some(hash) => hash.value().to_owned(),
        None => return Ok(false),
    };
    tokens.remove(hash.as_str()).doing(WHAT)?;
    Ok(true)
}

pub(super) fn session(
    txn: &ReadTransaction,
    hash: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    const WHAT: &str = "reading a session";
    let sessions = txn.open_table(SESSIONS).doing(WHAT)?;
    let session = sessions.get(hash).doing(WHAT)?;
    Ok(session.map(|json| decode(json.value(), WHAT)).transpose()?)
}

pub(super) fn put_session(
    txn: &WriteTransaction,
    hash: &str,
    user: &str,
    json: &str,
) -> Result<(), StoreError> {
    const WHAT: &str = "writing a session";
    let mut sessions = txn.open_table(SESSIONS).doing(WHAT)?;
    let mut by_user = txn.open_table(USER_SESSIONS).doing(WHAT)?;
    let old_user = match sessions.insert(hash, json).doing(WHAT)? {
        Some(old) => Some(decode::<SessionRecord>(old.value(), WHAT)?.user),
        None => None,
    };
    if let Some(old_user) = old_user {
        by_user.remove((old_user.as_str(), hash)).doing(WHAT)?;
    }
    by_user.insert((user, hash), ()).doing(WHAT)?;
    Ok(())
}

pub(super) fn delete_session(txn: &WriteTransaction, hash: &str) -> Result<bool, StoreError> {
    const WHAT: &str = "deleting a session";
    let mut sessions = txn.open_table(SESSIONS).doing(WHAT)?;
    let mut by_user = txn.open_table(USER_SESSIONS).doing(WHAT)?;
    let user = match sessions.remove(hash).doing(WHAT)? {
        Some(old) => decode::<SessionRecord>(old.value(), WHAT)?.user,
        None => return Ok(false),
    };
    by_user.remove((user.as_str(), hash)).doing(WHAT)?;
    Ok(true)
}

pub(super) fn delete_sessions_of(txn: &WriteTransaction, user: &str) -> Result<u64, StoreError> {
    const WHAT: &str = "deleting a user's sessions";
    let mut sessions = txn.open_table(SESSIONS).doing(WHAT)?;
    let mut by_user = txn.open_table(USER_SESSIONS).doing(WHAT)?;
    let mut hashes = Vec::new();
    let from = Bound::Included((user, ""));
    for row in by_user
        .range::<(&str, &str)>((from, Bound::Unbounded))
        .doing(WHAT)?
    {
        let (key, _) = row.doing(WHAT)?;
        let (row_user, hash) = key.value();
        if row_user != user {
            break;
        }
        hashes.push(hash.to_owned());
    }
    for hash in &hashes {
        by_user.remove((user, hash.as_str())).doing(WHAT)?;
        sessions.remove(hash.as_str()).doing(WHAT)?;
    }
    Ok(hashes.len() as u64)
}

pub(super) fn delete_sessions_created_outside(
    txn: &WriteTransaction,
    oldest: DateTime<Utc>,
    newest: DateTime<Utc>,
) -> Result<u64, StoreError> {
    const WHAT: &str = "deleting expired sessions";
    let mut sessions = txn.open_table(SESSIONS).doing(WHAT)?;
    let mut by_user = txn.open_table(USER_SESSIONS).doing(WHAT)?;
    let mut expired = Vec::new();
    for row in sessions.iter().doing(WHAT)? {
        let (hash, json) = row.doing(WHAT)?;
        let rec: SessionRecord = decode(json.value(), WHAT)?;
        if rec.created < oldest || rec.created > newest {
            expired.push((hash.value().to_owned(), rec.user));
        }
    }
    for (hash, user) in &expired {
        sessions.remove(hash.as_str()).doing(WHAT)?;
        by_user.remove((user.as_str(), hash.as_str())).doing(WHAT)?;
    }
    Ok(expired.len() as u64)
}

// ── salvage ─────────────────────────────────────────────────────────────────────────────────────

/// What salvaging (`toru store repair`) copied from a damaged store, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Salvaged {
    /// Rows copied, by table name.
    pub copied: BTreeMap<String, u64>,
    /// Tables that could not be read to the end, with the error (rows before it were copied).
    pub incomplete: BTreeMap<String, String>,
}

/// Copy every row of `src`'s primary tables that can still be read (each decoded first, so a
/// damaged row is skipped rather than copied) into `dst`, a new store, then rebuild the index
/// tables and KV usage from what was copied, so `dst` keeps every invariant of the store doc.
/// `meta` keeps `dst`'s schema version; the instance id is taken from `src` when readable.
pub(super) fn salvage(
    src: &ReadTransaction,
    dst: &WriteTransaction,
) -> Result<Salvaged, StorageFailure> {
    const WHAT: &str = "writing the salvaged store";
    let mut out = Salvaged::default();

    // Read one table row by row into `rows` until the end or the first error.
    fn read_rows<K, V, T>(
        src: &ReadTransaction,
        def: TableDefinition<K, V>,
        out: &mut Salvaged,
        mut each: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Option<T>,
    ) -> Vec<T>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
    {
        let name = def.name().to_owned();
        let mut rows = Vec::new();
        let mut fail = |e: String| {
            out.incomplete.insert(name.clone(), e);
        };
        let table = match src.open_table(def) {
            Ok(t) => t,
            Err(e) => {
                fail(e.to_string());
                return rows;
            }
        };
        let iter = match table.iter() {
            Ok(i) => i,
            Err(e) => {
                fail(e.to_string());
                return rows;
            }
        };
        for row in iter {
            match row {
                Ok((k, v)) => rows.extend(each(k.value(), v.value())),
                Err(e) => {
                    fail(e.to_string());
                    break;
                }
            }
        }
        out.copied.insert(name, rows.len() as u64);
        rows
    }

    // The licensing key and the clock's high-water mark go with the instance id: licences
    // issued for this device stay valid after a repair, and an expired one stays expired.
    let meta_rows = read_rows(src, META, &mut out, |k, v| {
        let keep = (k == META_INSTANCE_ID && uuid::Uuid::parse_str(v).is_ok())
            || k == META_INSTANCE_KEY
            || k == META_LAST_SEEN;
        keep.then(|| (k.to_owned(), v.to_owned()))
    });
    let instance: Vec<String> = meta_rows
        .iter()
        .filter(|(k, _)| k == META_INSTANCE_ID)
        .map(|(_, v)| v.clone())
        .collect();
    let licensing: Vec<&(String, String)> = meta_rows
        .iter()
        .filter(|(k, _)| k != META_INSTANCE_ID)
        .collect();
    let plugins = read_rows(src, PLUGINS, &mut out, |k, v| {
        serde_json::from_str::<PluginRow>(v)
            .ok()
            .map(|_| (k.to_owned(), v.to_owned()))
    });
    let events = read_rows(src, EVENTS, &mut out, |k, v| {
        serde_json::from_str::<Event>(v)
            .ok()
            .filter(|e| e.seq == k)
            .map(|e| (k, e.plugin, v.to_owned()))
    });
    let kv = read_rows(src, KV, &mut out, |(p, key), v| {
        Some((p.to_owned(), key.to_owned(), v.to_owned()))
    });
    let users = read_rows(src, USERS, &mut out, |k, v| {
        serde_json::from_str::<UserRecord>(v)
            .ok()
            .filter(|u| u.name == k)
            .map(|_| (k.to_owned(), v.to_owned()))
    });
    let tokens = read_rows(src, TOKENS, &mut out, |k, v| {
        serde_json::from_str::<TokenRecord>(v)
            .ok()
            .map(|t| (k.to_owned(), t.name, v.to_owned()))
    });
    let sessions = read_rows(src, SESSIONS, &mut out, |k, v| {
        serde_json::from_str::<SessionRecord>(v)
            .ok()
            .map(|s| (k.to_owned(), s.user, v.to_owned()))
    });

    if let Some(id) = instance.first() {
        let mut meta = dst.open_table(META).doing(WHAT)?;
        meta.insert(META_INSTANCE_ID, id.as_str()).doing(WHAT)?;
    }
    {
        let mut meta = dst.open_table(META).doing(WHAT)?;
        for (k, v) in licensing {
            meta.insert(k.as_str(), v.as_str()).doing(WHAT)?;
        }
    }
    {
        let mut t = dst.open_table(PLUGINS).doing(WHAT)?;
        for (id, json) in &plugins {
            t.insert(id.as_str(), json.as_str()).doing(WHAT)?;
        }
    }
    {
        let mut t = dst.open_table(EVENTS).doing(WHAT)?;
        let mut index = dst.open_table(PLUGIN_EVENTS).doing(WHAT)?;
        for (seq, plugin, json) in &events {
            t.insert(*seq, json.as_str()).doing(WHAT)?;
            index.insert((plugin.as_str(), *seq), ()).doing(WHAT)?;
        }
    }
    {
        let mut t = dst.open_table(KV).doing(WHAT)?;
        let mut usage = BTreeMap::<&str, u64>::new();
        for (p, key, value) in &kv {
            t.insert((p.as_str(), key.as_str()), value.as_str())
                .doing(WHAT)?;
            *usage.entry(p).or_default() += (key.len() + value.len()) as u64;
        }
        let mut u = dst.open_table(KV_USAGE).doing(WHAT)?;
        for (p, bytes) in usage {
            u.insert(p, bytes).doing(WHAT)?;
        }
    }
    {
        let mut t = dst.open_table(USERS).doing(WHAT)?;
        for (name, json) in &users {
            t.insert(name.as_str(), json.as_str()).doing(WHAT)?;
        }
    }
    {
        let mut t = dst.open_table(TOKENS).doing(WHAT)?;
        let mut names = dst.open_table(TOKEN_NAMES).doing(WHAT)?;
        for (hash, name, json) in &tokens {
            // Names are unique: a second token claiming one (damage) is dropped.
            if names.get(name.as_str()).doing(WHAT)?.is_some() {
                continue;
            }
            t.insert(hash.as_str(), json.as_str()).doing(WHAT)?;
            names.insert(name.as_str(), hash.as_str()).doing(WHAT)?;
        }
    }
    {
        let mut t = dst.open_table(SESSIONS).doing(WHAT)?;
        let mut by_user = dst.open_table(USER_SESSIONS).doing(WHAT)?;
        for (hash, user, json) in &sessions {
            t.insert(hash.as_str(), json.as_str()).doing(WHAT)?;
            by_user
                .insert((user.as_str(), hash.as_str()), ())
                .doing(WHAT)?;
        }
    }
    Ok(out)
}
