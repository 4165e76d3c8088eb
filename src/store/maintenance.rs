//! What an admin can do about a store file that cannot be used: `toru store status`, `repair`
//! and `reset`. The host never decides this by itself (see [`super::open`]): a damaged file may
//! hold the only copy of the owner's data.
//!
//! Each takes the data dir's lock, so it runs only while no `toru` daemon uses the data dir
//! ([`OpenError::Locked`] otherwise: stop the service first).
//!
//! - **repair**: if the file opens (redb's own check and repair, which also rolls back to the
//!   previous commit when the last one is damaged), nothing else is done. Otherwise every row that
//!   can still be read is copied into a new store ([`super::tables::salvage`]); the damaged file is
//!   kept as `toru.redb.corrupt-<UTC time>` and the new one takes its place. The damaged file is
//!   only ever read, through a scratch copy (redb may write to a file it opens).
//! - **reset**: the file is kept as `toru.redb.corrupt-<UTC time>`; the next start creates a new,
//!   empty store (and asks for setup again).
//!
//! Reading a damaged file without the integrity check can panic inside the engine; the CLI runs
//! `repair` in a child process of its own so that such a failure is reported, not fatal.

use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{Builder, ReadableDatabase};
use serde::Serialize;

use super::open::{self, STORE_FILE};
use super::tables::{self, Doing, Salvaged};
use super::{OpenError, StorageFailure, StoreHealth, StoreOptions};

/// What `toru store repair` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RepairOutcome {
    /// The file opens and passes the integrity check: nothing was changed.
    Healthy,
    /// Rows were salvaged into a new store; the damaged file was kept.
    Salvaged {
        /// Where the damaged file now is.
        kept_as: PathBuf,
        /// What was copied.
        report: Salvaged,
    },
}

/// Why a maintenance command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaintenanceError {
    /// The data dir is held by a running toru, or unusable.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// There is no store file.
    #[error("there is no store file at {0}")]
    NoFile(PathBuf),
    /// The damaged file cannot even be opened for reading: nothing can be salvaged.
    #[error("nothing can be salvaged from {path}: {reason}")]
    Unsalvageable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the new store failed.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MaintenanceError {
    let path = path.to_owned();
    move |source| MaintenanceError::Io { what, path, source }
}

/// The health the host would find on start, without starting it.
pub fn status(data_dir: &Path, opts: &StoreOptions) -> Result<StoreHealth, MaintenanceError> {
    let _lock = open::lock_data_dir(data_dir)?;
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Err(MaintenanceError::NoFile(path));
    }
    Ok(match open::open_file(&path, opts) {
        Ok(_) => StoreHealth::Ok,
        Err(unusable) => StoreHealth::Degraded {
            cause: unusable.cause,
            reason: unusable.reason,
        },
    })
}

/// See the module doc.
pub fn repair(data_dir: &Path, opts: &StoreOptions) -> Result<RepairOutcome, MaintenanceError> {
    let _lock = open::lock_data_dir(data_dir)?;
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Err(MaintenanceError::NoFile(path));
    }
    if open::open_file(&path, opts).is_ok() {
        return Ok(RepairOutcome::Healthy);
    }
    let scratch = data_dir.join("toru.redb.repair-src");
    let fresh = data_dir.join("toru.redb.repair-new");
    for f in [&scratch, &fresh] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot remove", f)(e));
            }
            _ => {}
        }
    }
    std::fs::copy(&path, &scratch).map_err(io("cannot copy the damaged file to", &scratch))?;
    let report = salvage_into(&scratch, &fresh, opts);
    let _ = std::fs::remove_file(&scratch);
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&fresh);
            return Err(e);
        }
    };
    let kept_as = open::move_aside(&path).map_err(io("cannot move aside", &path))?;
    std::fs::rename(&fresh, &path).map_err(io("cannot put the salvaged store at", &path))?;
    sync_dir(data_dir)?;
    log::warn!(
        "store: repaired by salvage; the damaged file is kept as {}",
        kept_as.display()
    );
    Ok(RepairOutcome::Salvaged { kept_as, report })
}

fn salvage_into(src: &Path, dst: &Path, opts: &StoreOptions) -> Result<Salvaged, MaintenanceError> {
    let unsalvageable = |reason: String| MaintenanceError::Unsalvageable {
        path: src.to_owned(),
        reason,
    };
    // No integrity check: it would refuse the file outright. redb still repairs what it can.
    let old = Builder::new()
        .open(src)
        .map_err(|e| unsalvageable(super::slot::chain(&e)))?;
    let read = old
        .begin_read()
        .map_err(|e| unsalvageable(super::slot::chain(&e)))?;
    let new = Builder::new()
        .create(dst)
        .doing("creating the salvaged store")?;
    let write = new.begin_write().doing("writing the salvaged store")?;
    tables::create_all(&write)?;
    tables::write_schema_version(&write)?;
    let report = tables::salvage(&read, &write)?;
    tables::ensure_instance_id(&write)?;
    write.commit().doing("committing the salvaged store")?;
    drop(new);
    // The salvaged store must open as any store does.
    open::open_file(dst, opts).map_err(|u| unsalvageable(u.reason))?;
    Ok(report)
}

/// See the module doc. Returns where the file was kept.
pub fn reset(data_dir: &Path) -> Result<PathBuf, MaintenanceError> {
    let _lock = open::lock_data_dir(data_dir)?;
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Err(MaintenanceError::NoFile(path));
    }
    let kept_as = open::move_aside(&path).map_err(io("cannot move aside", &path))?;
    sync_dir(data_dir)?;
    log::warn!(
        "store: reset by an admin; the old file is kept as {}",
        kept_as.display()
    );
    Ok(kept_as)
}

fn sync_dir(dir: &Path) -> Result<(), MaintenanceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))
}
