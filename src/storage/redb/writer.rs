//! The writer thread and its group commit: every write of the process goes
//! through its queue, is applied in the batch's one transaction, and is
//! answered once that transaction is durable. It also sweeps expired
//! idempotency records and reopens the database after a fatal error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, WriteTransaction};

use super::ops::sweep_chunk;
use super::tables::init_tables;
use super::tokens::sweep_tokens;
use super::{READY_HOLD_OFF, REOPEN_RETRY};
use crate::storage::{
    Chain, Clock, IDEMPOTENCY_SWEEP_CHUNK, IDEMPOTENCY_SWEEP_INTERVAL, StorageError, StoreResult,
    TOKEN_SWEEP_INTERVAL, idempotency_cutoff,
};

/// How long a reopen waits for reads in flight on the old database.
const READS_DRAIN: Duration = Duration::from_secs(2);

/// How a write left the shared transaction, and how to answer its caller once
/// the commit's outcome is known.
pub(super) struct Applied {
    respond: Box<dyn FnOnce(Result<(), StorageError>) + Send>,
    /// The write failed in a way that may have left partial changes in the
    /// transaction (an I/O error, not a checked precondition): the whole batch
    /// is then rolled back rather than committed.
    poisoned: bool,
}

/// A write: applied inside the batch's transaction.
pub(super) type Job = Box<dyn FnOnce(&WriteTransaction) -> Applied + Send>;

/// Which failures of a write roll back its whole batch.
#[derive(Clone, Copy)]
pub(super) enum Poison {
    /// `Unavailable` only: every other error is a precondition checked before writing.
    OnIoError,
    /// Any error (an operation that verifies after writing).
    OnAnyError,
}

/// A [`Job`] running `op` and handing its result, once the batch's commit
/// outcome is known, to `reply`.
pub(super) fn job<T: Send + 'static>(
    op: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    poison: Poison,
    reply: impl FnOnce(StoreResult<T>) + Send + 'static,
) -> Job {
    Box::new(move |txn| {
        let result = op(txn);
        let poisoned = match poison {
            Poison::OnIoError => matches!(result, Err(StorageError::Unavailable { .. })),
            Poison::OnAnyError => result.is_err(),
        };
        Applied {
            // A write that failed reports its own error: it wrote nothing
            // that survives, whatever became of the batch.
            respond: Box::new(move |committed| match result {
                Err(e) => reply(Err(e)),
                Ok(v) => reply(committed.map(|()| v)),
            }),
            poisoned,
        }
    })
}

pub(super) enum Msg {
    Write(Job),
    /// A read failed with an I/O error: check whether the database still works.
    Check,
    Stop,
}

/// Opens the database anew (the file, or a test backend).
pub(super) type Opener = Box<dyn Fn() -> Result<Database, StorageError> + Send + Sync>;

/// What the store's readers and its writer share.
pub(super) struct Shared {
    /// The open database; `None` while the writer reopens it.
    pub(super) db: RwLock<Option<Arc<Database>>>,
    /// False from a fatal storage error until the database is open again.
    pub(super) healthy: AtomicBool,
    /// Not ready before this instant: [`READY_HOLD_OFF`] after the last fatal error.
    pub(super) hold_off_until: Mutex<Option<Instant>>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Shared {
    pub(super) fn db(&self) -> StoreResult<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                StorageError::unavailable("the database is being reopened after a storage error")
            })
    }

    pub(super) fn set_db(&self, db: Option<Arc<Database>>) {
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = db;
    }
}

/// The writer thread: the only place that opens write transactions in this
/// process (other processes may write too under `multi-writer`; then
/// `begin_write` waits for their transaction while this queue grows, and the
/// next batch is simply larger). It also sweeps expired idempotency records
/// and reopens the database after a fatal storage error.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// The writer's handle on the open database; `None` while it is broken.
    pub(super) db: Option<Arc<Database>>,
    pub(super) open: Opener,
    pub(super) max_batch: usize,
    pub(super) ack_before_commit: bool,
    pub(super) next_sweep: Instant,
    /// When the token sweep runs next (see `super::tokens`).
    pub(super) next_token_sweep: Instant,
    pub(super) last_reopen: Option<Instant>,
}

impl Writer {
    pub(super) fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut stopping = false;
        while !stopping {
            let wait = if self.db.is_none() {
                REOPEN_RETRY
            } else {
                self.next_sweep
                    .min(self.next_token_sweep)
                    .saturating_duration_since(Instant::now())
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Write(job)) => batch.push(job),
                Ok(Msg::Check) => {
                    self.check();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.upkeep();
                    continue;
                }
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Whatever queued while the last commit was being flushed: no
            // waiting for more, so a lone write is committed at once.
            let mut check = false;
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Write(job)) => batch.push(job),
                    Ok(Msg::Check) => check = true,
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
            if check {
                self.check();
            }
            if Instant::now() >= self.next_sweep.min(self.next_token_sweep) {
                self.upkeep();
            }
        }
        // Writes queued before `Stop` are still answered.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Write(job) = msg {
                batch.push(job);
                if batch.len() == self.max_batch {
                    self.commit_batch(&mut batch);
                }
            }
        }
        self.commit_batch(&mut batch);
    }

    /// On a timer: reopen a broken database, or run the sweeps that are due:
    /// the token sweep, and one chunk of expired idempotency records (and
    /// come back at once while there are more).
    fn upkeep(&mut self) {
        if self.db.is_none() {
            self.reopen();
            return;
        }
        if Instant::now() >= self.next_token_sweep {
            let clock = self.shared.clock.clone();
            let mut batch = vec![job(
                move |txn| sweep_tokens(txn, clock.now()),
                Poison::OnIoError,
                |r| match r {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(tokens = n, "expired or revoked tokens swept"),
                    Err(e) => tracing::warn!(error = %e, "token sweep failed"),
                },
            )];
            self.commit_batch(&mut batch);
            self.next_token_sweep = Instant::now() + TOKEN_SWEEP_INTERVAL;
        }
        if Instant::now() < self.next_sweep || self.db.is_none() {
            return;
        }
        let cutoff = idempotency_cutoff(self.shared.clock.now());
        let swept = Arc::new(AtomicU64::new(0));
        let full = swept.clone();
        let mut batch = vec![job(
            move |txn| sweep_chunk(txn, cutoff),
            Poison::OnIoError,
            move |r| match r {
                Ok(n) => {
                    let more = n.visited == IDEMPOTENCY_SWEEP_CHUNK;
                    full.store(u64::from(more), Ordering::Relaxed);
                    if n.deleted > 0 {
                        tracing::debug!(deleted = n.deleted, "expired idempotency records deleted");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            },
        )];
        self.commit_batch(&mut batch);
        self.next_sweep = if swept.load(Ordering::Relaxed) == 1 {
            Instant::now()
        } else {
            Instant::now() + IDEMPOTENCY_SWEEP_INTERVAL
        };
    }

    /// Whether the database still works; a fatal error if not.
    fn check(&mut self) {
        let Some(db) = &self.db else {
            self.reopen();
            return;
        };
        match db.begin_write() {
            Ok(txn) => {
                let _ = txn.abort();
            }
            Err(e) => self.fatal(&e.into()),
        }
    }

    /// A fatal storage error: not ready from now on, and the database is
    /// closed and opened again (see the module documentation).
    fn fatal(&mut self, error: &StorageError) {
        self.shared.healthy.store(false, Ordering::SeqCst);
        *self
            .shared
            .hold_off_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + READY_HOLD_OFF);
        metrics::counter!("store_fatal_errors_total").increment(1);
        tracing::error!(
            error = %Chain(error),
            "fatal storage error: not ready; closing and reopening the database"
        );
        self.shared.set_db(None);
        if let Some(db) = self.db.take() {
            close_when_unused(db);
        }
        self.last_reopen = None;
        self.reopen();
    }

    /// Tries to open the database again, at most once per [`REOPEN_RETRY`].
    fn reopen(&mut self) {
        if self.db.is_some() || self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_RETRY) {
            return;
        }
        self.last_reopen = Some(Instant::now());
        let opened = (self.open)().and_then(|db| {
            init_tables(&db, self.shared.clock.now())?;
            Ok(Arc::new(db))
        });
        match opened {
            Ok(db) => {
                self.shared.set_db(Some(db.clone()));
                self.db = Some(db);
                self.shared.healthy.store(true, Ordering::SeqCst);
                tracing::warn!("database reopened after a storage error: ready again");
            }
            Err(e) => tracing::warn!(error = %e, "cannot reopen the database yet; retrying"),
        }
    }

    /// Applies every job in one transaction, commits it durably, then answers
    /// each caller: with its own error if its preconditions failed (it wrote
    /// nothing), with its result if the commit succeeded, and with
    /// `Unavailable` for everyone if the commit failed or was abandoned. A
    /// failed batch leads to a check of the database: a fatal error reopens it.
    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        if self.db.is_none() {
            self.reopen();
        }
        // No handle is kept across the batch: `fatal` must be able to close
        // the database.
        let Some(begun) = self.db.as_ref().map(|db| db.begin_write()) else {
            // Dropping the jobs drops their reply channels: each caller gets
            // `Unavailable` and nothing was written.
            batch.clear();
            return;
        };
        let started = Instant::now();
        let size = batch.len();
        let txn = match begun {
            Ok(txn) => txn,
            Err(e) => {
                tracing::error!(error = %e, writes = size, "cannot begin write transaction");
                batch.clear();
                self.fatal(&e.into());
                return;
            }
        };
        let mut responders = Vec::with_capacity(size);
        let mut poisoned = false;
        for job in batch.drain(..) {
            // A panicking write must not take the writer thread (and with it
            // every later write) down; what it may have half-written is rolled
            // back with the whole batch.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&txn))) {
                Ok(applied) => {
                    poisoned |= applied.poisoned;
                    responders.push(applied.respond);
                }
                Err(_) => {
                    tracing::error!("a write panicked; rolling back its batch");
                    poisoned = true;
                }
            }
        }
        if self.ack_before_commit {
            for respond in responders.drain(..) {
                respond(Ok(()));
            }
        }
        let mut commit_failed = false;
        let outcome = if poisoned {
            if let Err(e) = txn.abort() {
                tracing::error!(error = %e, "abort failed");
            }
            Err(StorageError::unavailable(
                "the batch was rolled back after a storage error",
            ))
        } else {
            txn.commit().map_err(|e| {
                tracing::error!(error = %e, writes = size, "commit failed");
                commit_failed = true;
                StorageError::io("the commit failed", e)
            })
        };
        metrics::histogram!("store_commit_batch_size").record(size as f64);
        metrics::histogram!("store_commit_seconds").record(started.elapsed().as_secs_f64());
        // Not ready before anyone hears of the failure.
        if commit_failed {
            if let Err(e) = &outcome {
                self.fatal(e);
            }
        } else if poisoned {
            self.check();
        }
        for respond in responders {
            respond(outcome.clone());
        }
    }
}

/// Closes `db` once the reads in flight on it are done (or after
/// [`READS_DRAIN`], leaving it to the last of them), releasing the file lock
/// so that it can be opened again.
pub(super) fn close_when_unused(mut db: Arc<Database>) {
    let deadline = Instant::now() + READS_DRAIN;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                if let Err(e) = db.close() {
                    tracing::debug!(error = %e, "closing the failed database");
                }
                return;
            }
            Err(shared) if Instant::now() < deadline => {
                db = shared;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}
