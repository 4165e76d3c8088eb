//! Opening the store: the data dir and its lock, the file (or the degraded in-memory stand-in),
//! the schema version, the instance id, and the one-time import of the legacy plugin config.
//!
//! Decides what is fatal ([`OpenError`]: the data dir is unusable or held by another process) and
//! what only degrades the store: a file that cannot be used (damaged, emptied, written by a newer
//! toru) is left exactly as it is, and the store runs on an in-memory stand-in that refuses every
//! write, on this start and every later one, until an admin decides what to do with the file
//! ([`super::maintenance`]). Nothing here ever replaces a file that holds data.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use redb::backends::InMemoryBackend;
use redb::{Builder, Database, DatabaseError, ReadableDatabase, TableError};
use serde::Deserialize;

use super::slot::chain;
use super::tables::{
    self, Doing, META, META_INSTANCE_ID, META_SCHEMA_VERSION, PLUGINS, SCHEMA_VERSION,
};
use super::{DegradedCause, OpenError, PluginRecord, StorageFailure, StoreHealth, StoreOptions};

/// The store file's name in the data dir.
pub(super) const STORE_FILE: &str = "toru.redb";
/// The lock file's name in the data dir.
pub(super) const LOCK_FILE: &str = "toru.lock";
/// How long opening waits for the data dir's lock before it reports another toru.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Where a new store is initialised before it is renamed to [`STORE_FILE`].
const NEW_STORE_FILE: &str = "toru.redb.new";

/// A database ready for use.
pub(super) struct Opened {
    pub db: Database,
    pub health: StoreHealth,
    pub instance_id: String,
    /// The store file, unless degraded.
    pub file: Option<PathBuf>,
}

/// Create `data_dir` (0700) if missing and take its lock: an exclusive `flock` on `toru.lock`,
/// held as long as the returned file is open. `flock` locks belong to the open file description,
/// so a second open of the same dir in this process is refused as well.
pub(super) fn lock_data_dir(data_dir: &Path) -> Result<File, OpenError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| OpenError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
    let path = data_dir.join(LOCK_FILE);
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| OpenError::DataDir {
            path: path.clone(),
            source,
        })?;
    // std's try_lock is flock(LOCK_EX | LOCK_NB) on Linux. A host killed a moment ago can leave
    // the lock held briefly by a child it had forked but that had not yet exec'd (the lock's open
    // file description is shared until exec closes it): wait a little before concluding that
    // another toru runs. flock has no timed wait, so this retries, bounded by LOCK_WAIT.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked(data_dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(OpenError::DataDir { path, source });
            }
        }
    }
}

/// Open `<data_dir>/toru.redb`, creating it when there is none, or fall back to a degraded
/// in-memory store that refuses every write when the file cannot be used. An unusable file is
/// never moved, replaced or written: the store is degraded on every start until an admin runs
/// `toru store repair` or `toru store reset` ([`super::maintenance`]).
pub(super) fn open_database(data_dir: &Path, opts: &StoreOptions) -> Result<Opened, OpenError> {
    let path = data_dir.join(STORE_FILE);
    let unusable = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_file(data_dir, opts) {
            Ok(opened) => return Ok(opened),
            Err(unusable) => unusable,
        },
        Err(e) => Unusable {
            reason: format!("cannot read {}: {e}", path.display()),
            cause: DegradedCause::FileUnusable,
        },
        // A new store is created under another name and renamed into place once initialised
        // (`create_file`), so an empty `toru.redb` was truncated after the fact.
        Ok(meta) if meta.len() == 0 => Unusable {
            reason: format!(
                "{} is empty (0 bytes): its contents were lost",
                path.display()
            ),
            cause: DegradedCause::FileUnusable,
        },
        Ok(_) => match open_file(&path, opts) {
            Ok(opened) => return Ok(opened),
            Err(unusable) => unusable,
        },
    };
    let reason = match unusable.cause {
        DegradedCause::NewerSchema => format!(
            "{}; it is left as it is and every write is refused until a toru that knows it runs",
            unusable.reason
        ),
        _ => format!(
            "{}; the file is left as it is and every write is refused until an admin runs \
             `toru store repair` (try to repair it) or `toru store reset` (keep it aside and \
             start a new store)",
            unusable.reason
        ),
    };
    log::error!("store DEGRADED: {reason}");
    let db = builder(opts)
        .create_with_backend(InMemoryBackend::new())
        .doing("creating the in-memory store")
        .map_err(OpenError::InMemory)?;
    let instance_id = init(&db, opts).map_err(|e| match e {
        InitError::Storage(failure) => OpenError::InMemory(failure),
        InitError::NewerSchema(_) | InitError::BadSchema(_) => {
            unreachable!("a new in-memory store has no schema version yet")
        }
    })?;
    Ok(Opened {
        db,
        health: StoreHealth::Degraded {
            cause: unusable.cause,
            reason,
        },
        instance_id,
        file: None,
    })
}

/// Why the file cannot be used.
pub(super) struct Unusable {
    pub reason: String,
    pub cause: DegradedCause,
}

pub(super) fn builder(opts: &StoreOptions) -> Builder {
    let mut builder = Builder::new();
    builder.set_cache_size(opts.cache_bytes);
    builder
}

/// Create a new store: initialised under a temporary name, then renamed to `toru.redb` (and the
/// directory synced), so that `toru.redb` exists only once it holds a whole store.
fn create_file(data_dir: &Path, opts: &StoreOptions) -> Result<Opened, Unusable> {
    let path = data_dir.join(STORE_FILE);
    let new = data_dir.join(NEW_STORE_FILE);
    let fail = |what: &str, e: &dyn std::error::Error| Unusable {
        reason: format!("cannot {what} {}: {}", new.display(), chain(e)),
        cause: DegradedCause::FileUnusable,
    };
    // Left over from a start that died before the rename: it never held anything.
    match std::fs::remove_file(&new) {
        Ok(()) => log::warn!(
            "store: removed {} left by an interrupted first start",
            new.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove", &e)),
    }
    let db = builder(opts).create(&new).map_err(|e| fail("create", &e))?;
    let instance_id = match init(&db, opts) {
        Ok(id) => id,
        Err(InitError::Storage(failure)) => return Err(fail("initialise", &failure)),
        Err(InitError::NewerSchema(_) | InitError::BadSchema(_)) => {
            unreachable!("a new store has no schema version yet")
        }
    };
    std::fs::rename(&new, &path).map_err(|e| fail("rename", &e))?;
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| fail("sync the directory of", &e))?;
    log::info!("store: created {}", path.display());
    Ok(Opened {
        db,
        health: StoreHealth::Ok,
        instance_id,
        file: Some(path),
    })
}

/// Open an existing store file, checking every page (a damaged file is reported, not trusted).
pub(super) fn open_file(path: &Path, opts: &StoreOptions) -> Result<Opened, Unusable> {
    let db = builder(opts)
        // Verify every page's checksum on open, and let redb repair what an interrupted commit
        // left: a damaged file is reported, not trusted.
        .set_check_integrity_on_open(true)
        .open(path)
        .map_err(|e| classify(path, e))?;
    match init(&db, opts) {
        Ok(instance_id) => Ok(Opened {
            db,
            health: StoreHealth::Ok,
            instance_id,
            file: Some(path.to_owned()),
        }),
        Err(InitError::NewerSchema(found)) => Err(Unusable {
            reason: format!(
                "{} was written by a newer toru (store schema version {found}; this build knows \
                 version {SCHEMA_VERSION})",
                path.display()
            ),
            cause: DegradedCause::NewerSchema,
        }),
        Err(InitError::BadSchema(found)) => Err(Unusable {
            reason: format!(
                "{} has an unreadable schema version {found:?}",
                path.display()
            ),
            cause: DegradedCause::FileUnusable,
        }),
        Err(InitError::Storage(failure)) => Err(Unusable {
            reason: format!("cannot read {}: {}", path.display(), chain(&failure)),
            cause: DegradedCause::FileUnusable,
        }),
    }
}

fn classify(path: &Path, e: DatabaseError) -> Unusable {
    Unusable {
        reason: format!("cannot open {}: {}", path.display(), chain(&e)),
        cause: DegradedCause::FileUnusable,
    }
}

/// Rename `path` to `<path>.corrupt-<UTC time>` (never over an existing file).
pub(super) fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = crate::clock::now().format("%Y%m%dT%H%M%SZ");
    let base = format!("{}.corrupt-{stamp}", path.display());
    let mut to = PathBuf::from(&base);
    let mut n = 1;
    while to.exists() {
        to = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    Ok(to)
}

pub(super) enum InitError {
    /// The file's schema version is newer than this build's.
    NewerSchema(u64),
    /// The file's schema version is not a version at all.
    BadSchema(String),
    Storage(StorageFailure),
}

impl From<StorageFailure> for InitError {
    fn from(failure: StorageFailure) -> Self {
        InitError::Storage(failure)
    }
}

/// Check the schema version (before writing anything), and on a new store write it, the instance
/// id and the imported legacy plugin states, in one durable transaction. Returns the instance id.
pub(super) fn init(db: &Database, opts: &StoreOptions) -> Result<String, InitError> {
    const WHAT: &str = "reading the store's metadata";
    let existing = {
        let txn = db.begin_read().doing(WHAT)?;
        match txn.open_table(META) {
            Ok(meta) => {
                let version = meta.get(META_SCHEMA_VERSION).doing(WHAT)?;
                let id = meta.get(META_INSTANCE_ID).doing(WHAT)?;
                version.map(|v| (v.value().to_owned(), id.map(|id| id.value().to_owned())))
            }
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(StorageFailure::new(WHAT, e).into()),
        }
    };
    if let Some((version, id)) = &existing {
        match version.parse::<u64>() {
            Ok(SCHEMA_VERSION) => {}
            Ok(newer) if newer > SCHEMA_VERSION => return Err(InitError::NewerSchema(newer)),
            _ => return Err(InitError::BadSchema(version.clone())),
        }
        if let Some(id) = id {
            return Ok(id.clone());
        }
    }

    const WRITE: &str = "initialising the store";
    let txn = db.begin_write().doing(WRITE)?;
    tables::create_all(&txn)?;
    let instance_id = uuid::Uuid::new_v4().to_string();
    {
        let mut meta = txn.open_table(META).doing(WRITE)?;
        meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION.to_string().as_str())
            .doing(WRITE)?;
        meta.insert(META_INSTANCE_ID, instance_id.as_str())
            .doing(WRITE)?;
    }
    if existing.is_none() {
        import_legacy_config(&txn, opts.legacy_config.as_deref())?;
    }
    txn.commit().doing(WRITE)?;
    Ok(instance_id)
}

/// The legacy plugin config: `{"plugins": {"<id>": true|false}}`.
#[derive(Deserialize)]
struct LegacyConfig {
    #[serde(default)]
    plugins: BTreeMap<String, bool>,
}

/// Copy the legacy config's enabled flags into `plugins`. A missing or unreadable file is logged
/// and skipped: it never stops the host.
fn import_legacy_config(
    txn: &redb::WriteTransaction,
    path: Option<&Path>,
) -> Result<(), StorageFailure> {
    let Some(path) = path else { return Ok(()) };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            log::warn!(
                "store: cannot read legacy config {}: {e}; not imported",
                path.display()
            );
            return Ok(());
        }
    };
    let legacy: LegacyConfig = match serde_json::from_str(&text) {
        Ok(legacy) => legacy,
        Err(e) => {
            log::warn!(
                "store: legacy config {} is not valid: {e}; not imported",
                path.display()
            );
            return Ok(());
        }
    };
    const WHAT: &str = "importing the legacy plugin config";
    let mut plugins = txn.open_table(PLUGINS).doing(WHAT)?;
    for (id, enabled) in &legacy.plugins {
        let record = PluginRecord {
            enabled: *enabled,
            auto_disabled: None,
        };
        let json = serde_json::to_string(&record).expect("a PluginRecord always serialises");
        plugins.insert(id.as_str(), json.as_str()).doing(WHAT)?;
    }
    log::info!(
        "store: imported {} plugin states from legacy config {}",
        legacy.plugins.len(),
        path.display()
    );
    Ok(())
}
