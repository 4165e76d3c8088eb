//! The writer thread: the only place that opens write transactions, committing queued writes in
//! groups (see "Writes" in the [store](super) doc for why it is a thread).
//!
//! ```text
//! runtime thread                         writer thread ("toru-store")
//! submit(op) ──► bounded queue ──► blocking_recv (sleeps when idle)
//!   awaits its oneshot                    + try_recv the rest (≤ MAX_BATCH_OPS / _PAYLOAD_BYTES)
//!                                         begin_write → op.apply … → commit (fsync)
//!   ◄──────────── oneshot ─────────────── answer every op of the batch
//! ```
//!
//! Lifetime: [`Writer::close`] (or dropping the [`Writer`]) sets `closing` and wakes the thread,
//! which closes the queue, commits what was already in it, and exits; `close` joins it, so when it
//! returns no write transaction is running and the thread's handle on the database is gone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::slot::Shared;
use super::tables::{self, Doing, Limits};
use super::{StorageFailure, StoreError};

/// Writes waiting for the writer thread; a caller past this waits (asynchronously) for room.
/// With values of at most 64 KiB this bounds queued payload to 4 MiB.
pub const WRITE_QUEUE_OPS: usize = 64;
/// Most writes in one commit.
pub const MAX_BATCH_OPS: usize = 256;
/// Once a batch holds this much payload, it is committed without draining more.
pub const MAX_BATCH_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
/// While writes fail (full disk), how often the idle writer tries a small write of its own, so that
/// the store's health turns back to ok once space is free even if nobody writes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// One queued write, type-erased: applied in a transaction (possibly more than once, if its first
/// batch failed), then answered once.
trait Pending: Send {
    /// Apply the write to `txn`, keeping its result for [`Pending::finish`]. `Err` is a storage
    /// failure, after which `txn` must be abandoned.
    fn apply(&mut self, txn: &WriteTransaction, limits: &Limits) -> Result<(), StorageFailure>;
    /// Answer the caller: its own result if it was refused, else `batch` (the commit's outcome).
    fn finish(self: Box<Self>, batch: Result<(), StorageFailure>);
    /// Payload bytes, for bounding a batch.
    fn payload_bytes(&self) -> usize;
}

struct Op<T, F> {
    write: F,
    payload_bytes: usize,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Pending for Op<T, F>
where
    T: Send,
    F: Fn(&WriteTransaction, &Limits) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, txn: &WriteTransaction, limits: &Limits) -> Result<(), StorageFailure> {
        let result = (self.write)(txn, limits);
        if let Err(StoreError::Storage(failure) | StoreError::DiskFull(failure)) = &result {
            return Err(failure.clone());
        }
        self.result = Some(result);
        Ok(())
    }

    fn finish(self: Box<Self>, batch: Result<(), StorageFailure>) {
        let answer = match (self.result, batch) {
            // Refused on its own merits: it changed nothing, whatever became of the batch.
            (Some(Err(refused)), _) => Err(refused),
            (_, Err(failure)) => Err(StoreError::from(failure)),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (None, Ok(())) => unreachable!("a committed batch applied every one of its writes"),
        };
        // The caller may have stopped waiting; its write stands.
        let _ = self.reply.send(answer);
    }

    fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }
}

enum Msg {
    Write(Box<dyn Pending>),
    /// Look at `closing` (sent by [`Writer::close`]).
    Wake,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(super) struct Writer {
    queue: mpsc::Sender<Msg>,
    closing: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Write(_) => "Write",
            Msg::Wake => "Wake",
        })
    }
}

impl Writer {
    /// Start the writer thread on `shared`'s database; it counts its durable commits in `commits`.
    pub(super) fn spawn(
        shared: Arc<Shared>,
        limits: Limits,
        commits: Arc<AtomicU64>,
    ) -> std::io::Result<Writer> {
        let (queue, rx) = mpsc::channel(WRITE_QUEUE_OPS);
        let closing = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("toru-store".into())
            .spawn({
                let closing = Arc::clone(&closing);
                move || run(rx, &shared, &limits, &commits, &closing)
            })?;
        Ok(Writer {
            queue,
            closing,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue `write` and wait until the batch holding it is durably committed. `write` runs on the
    /// writer thread inside the batch's transaction; it must refuse (any error but
    /// [`StoreError::Storage`]) before changing anything.
    pub(super) async fn submit<T, F>(&self, payload_bytes: usize, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction, &Limits) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Op {
            write,
            payload_bytes,
            result: None,
            reply,
        };
        self.queue
            .send(Msg::Write(Box::new(op)))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Let the thread commit what is queued, then stop it and wait for it. Idempotent.
    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        // A full queue needs no wake-up: the thread is busy and checks `closing` after its batch.
        let _ = self.queue.try_send(Msg::Wake);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            log::error!("store: the writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(
    mut rx: mpsc::Receiver<Msg>,
    shared: &Shared,
    limits: &Limits,
    commits: &AtomicU64,
    closing: &AtomicBool,
) {
    // Only for waiting with a timeout while writes fail (see `PROBE_INTERVAL`).
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let mut batch: Vec<Box<dyn Pending>> = Vec::new();
    loop {
        if closing.load(Ordering::Acquire) {
            // Refuse new writes; `recv` still yields the queued ones, then `None`.
            rx.close();
        }
        let first = match &timer {
            Ok(timer) if shared.writes_failing() && !closing.load(Ordering::Acquire) => {
                // The timer future must be made inside `block_on` (it needs the runtime's clock).
                match timer
                    .block_on(async { tokio::time::timeout(PROBE_INTERVAL, rx.recv()).await })
                {
                    Ok(first) => first,
                    Err(_elapsed) => {
                        probe(shared, commits);
                        continue;
                    }
                }
            }
            _ => rx.blocking_recv(),
        };
        let Some(first) = first else {
            break;
        };
        let mut payload = 0;
        if let Msg::Write(op) = first {
            payload += op.payload_bytes();
            batch.push(op);
        }
        while batch.len() < MAX_BATCH_OPS && payload < MAX_BATCH_PAYLOAD_BYTES {
            match rx.try_recv() {
                Ok(Msg::Write(op)) => {
                    payload += op.payload_bytes();
                    batch.push(op);
                }
                Ok(Msg::Wake) => {}
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(shared, limits, commits, &mut batch);
        }
    }
}

/// While writes fail: reopen the file if the last reopen failed, then try one small durable write;
/// its success turns the health back to ok.
fn probe(shared: &Shared, commits: &AtomicU64) {
    if shared.is_closed() && shared.reopen().is_err() {
        return;
    }
    let Ok(db) = shared.db() else { return };
    match tables::probe(&db) {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            shared.write_succeeded();
        }
        Err(failure) => {
            drop(db);
            shared.write_failed(&failure);
        }
    }
}

/// Apply and commit `batch` in one transaction, answer every write, and leave `batch` empty. If
/// the batch fails, each write is retried in a transaction of its own, so a failure caused by one
/// write (say, the one that fills the disk) is reported to that write alone. An I/O failure makes
/// the store reopen its file before anyone is answered (see `slot`); a second one within the same
/// batch fails the rest of it without trying, so a full disk costs at most two reopens per batch.
fn commit_batch(
    shared: &Shared,
    limits: &Limits,
    commits: &AtomicU64,
    batch: &mut Vec<Box<dyn Pending>>,
) {
    let outcome = apply_and_commit(shared, limits, batch.iter_mut());
    let failed_io = match &outcome {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            shared.write_succeeded();
            false
        }
        Err(failure) => shared.write_failed(failure),
    };
    match outcome {
        Err(failure) if batch.len() > 1 => {
            log::warn!(
                "store: a batch of {} writes failed ({}); retrying them one by one",
                batch.len(),
                super::slot::chain(&failure),
            );
            let mut give_up: Option<StorageFailure> = None;
            for mut op in batch.drain(..) {
                if let Some(failure) = &give_up {
                    op.finish(Err(failure.clone()));
                    continue;
                }
                let outcome = apply_and_commit(shared, limits, std::iter::once(&mut op));
                match &outcome {
                    Ok(()) => {
                        commits.fetch_add(1, Ordering::Relaxed);
                        shared.write_succeeded();
                    }
                    Err(failure) => {
                        if shared.write_failed(failure) && failed_io {
                            give_up = Some(failure.clone());
                        }
                    }
                }
                op.finish(outcome);
            }
        }
        outcome => {
            for op in batch.drain(..) {
                op.finish(outcome.clone());
            }
        }
    }
}

fn apply_and_commit<'a>(
    shared: &Shared,
    limits: &Limits,
    ops: impl Iterator<Item = &'a mut Box<dyn Pending>>,
) -> Result<(), StorageFailure> {
    let db = shared.db().map_err(|e| {
        StorageFailure::new(
            "starting a write transaction",
            std::io::Error::other(e.to_string()),
        )
    })?;
    // Events of an earlier transaction that aborted were never stored: not for the feed.
    limits.appended.borrow_mut().clear();
    let mut txn = db.begin_write().doing("starting a write transaction")?;
    txn.set_durability(Durability::Immediate)
        .doing("starting a write transaction")?;
    for op in ops {
        // On error `txn` is dropped here, which aborts it.
        op.apply(&txn, limits)?;
    }
    txn.commit().doing("committing a write transaction")?;
    // Durable now: the live feed sees them (no receiver, or one that lags: its loss, never a wait).
    for event in limits.appended.borrow_mut().drain(..) {
        let _ = limits.feed.send(event);
    }
    Ok(())
}
