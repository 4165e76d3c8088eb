//! The open database and the store's health, shared by every [`Store`](super::Store) handle and
//! the writer thread.
//!
//! redb latches an I/O failure: after one failed write (a full disk, say) every later operation on
//! that `Database`, reads included, fails with `PreviousIo` until it is closed and opened again.
//! So the database sits in a slot that the writer thread can empty and refill: after a write fails
//! with an I/O error it reopens the file ([`Shared::reopen`]) before it answers the writers, and
//! reads keep working. The health says why the store is degraded until a write succeeds again.
//!
//! Readers clone the `Arc` out of the slot for one read transaction and drop it at once; the
//! writer, to reopen, takes the slot's write lock (new readers wait), waits for those clones to be
//! dropped, closes the database, and opens the file again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Builder, Database};

use super::tables::Doing;
use super::{DegradedCause, Fault, StorageFailure, StoreError, StoreHealth};
pub(super) use crate::error_chain::error_chain as chain;

/// How long a reopen waits for read transactions in progress to end before it gives up (and the
/// writer tries again later).
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// See the module doc.
pub(super) struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    health: Mutex<StoreHealth>,
    /// The store file, or `None` for the in-memory stand-in (never reopened).
    file: Option<PathBuf>,
    cache_bytes: usize,
}

impl Shared {
    pub(super) fn new(
        db: Database,
        health: StoreHealth,
        file: Option<PathBuf>,
        cache_bytes: usize,
    ) -> Shared {
        Shared {
            db: RwLock::new(Some(Arc::new(db))),
            health: Mutex::new(health),
            file,
            cache_bytes,
        }
    }

    /// The database, unless a reopen failed (then [`StoreError::Unavailable`]).
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Unavailable)
    }

    /// Whether the slot is empty (a reopen failed and must be tried again).
    pub(super) fn is_closed(&self) -> bool {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    pub(super) fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The store file, unless the store runs on the in-memory stand-in.
    pub(super) fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    /// Whether writes must be refused without trying (the file is not in use at all).
    pub(super) fn refuses_writes(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refuses_writes()
    }

    /// Whether the store is degraded by failing writes (and so should probe for recovery).
    pub(super) fn writes_failing(&self) -> bool {
        matches!(
            *self.health.lock().unwrap_or_else(PoisonError::into_inner),
            StoreHealth::Degraded {
                cause: DegradedCause::StorageFull | DegradedCause::WritesFailing,
                ..
            }
        )
    }

    /// A write reached the disk: a store degraded by failing writes is healthy again.
    pub(super) fn write_succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if let StoreHealth::Degraded {
            cause: DegradedCause::StorageFull | DegradedCause::WritesFailing,
            ..
        } = &*health
        {
            log::warn!("store: writes succeed again; the store is healthy");
            *health = StoreHealth::Ok;
        }
    }

    /// A write failed with `failure`. An I/O failure degrades the store (with the reason) and
    /// reopens the file, so that reads work and later writes can succeed; returns whether it was
    /// one. Other failures (refused on their merits, corruption read back) change nothing here.
    pub(super) fn write_failed(&self, failure: &StorageFailure) -> bool {
        let cause = match failure.fault() {
            Fault::Full => DegradedCause::StorageFull,
            Fault::Io | Fault::Latched => DegradedCause::WritesFailing,
            Fault::Other => return false,
        };
        if self.file.is_none() {
            return false;
        }
        {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            // A latched engine (`PreviousIo`) says nothing new: keep the reason of the failure
            // that latched it, if there is one.
            let keep = failure.fault() == Fault::Latched && *health != StoreHealth::Ok;
            if !keep {
                let reason = match cause {
                    DegradedCause::StorageFull => format!(
                        "the disk holding the store is full ({}); writes fail until space is \
                         freed, reads work",
                        chain(failure)
                    ),
                    _ => format!(
                        "writing the store failed ({}); writes are retried, reads work",
                        chain(failure)
                    ),
                };
                if *health == StoreHealth::Ok {
                    log::error!("store degraded: {reason}");
                }
                *health = StoreHealth::Degraded { cause, reason };
            }
        }
        if let Err(e) = self.reopen() {
            log::error!(
                "store: cannot reopen the file after an I/O failure: {}",
                chain(&e)
            );
        }
        true
    }

    /// Close the database and open its file again (see the module doc). Blocks readers for as
    /// long as it takes. On failure the slot is left empty (reads answer
    /// [`StoreError::Unavailable`]) and the writer tries again later.
    pub(super) fn reopen(&self) -> Result<(), StorageFailure> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut db) = slot.take() {
            // Readers hold their clone for one read transaction; this wait is bounded by the
            // longest of those, and only happens after an I/O failure.
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        if let Err(e) = db.close() {
                            log::warn!("store: closing the failed database: {e}");
                        }
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StorageFailure::new(
                            "waiting for reads to end before reopening the store",
                            std::io::Error::from(std::io::ErrorKind::TimedOut),
                        ));
                    }
                }
            }
        }
        let mut builder = Builder::new();
        builder.set_cache_size(self.cache_bytes);
        // `open`, not `create`: a file that disappeared is not replaced by an empty one. redb
        // repairs what an interrupted commit left behind.
        let db = builder.open(path).doing("reopening the store file")?;
        *slot = Some(Arc::new(db));
        log::info!("store: reopened {}", path.display());
        Ok(())
    }
}
