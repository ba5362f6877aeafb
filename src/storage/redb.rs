//! The embedded backend on redb.
//!
//! Writes go through one writer thread that practises group commit: it takes
//! every write waiting in its queue (up to `max_batch`, never waiting for more
//! when only one is there), applies them in one transaction, commits once with
//! immediate durability, and only then answers each caller with its own result.
//! On disks where a flush costs milliseconds this multiplies write throughput,
//! and "acknowledged" still means "on disk".
//!
//! Invariant for every write operation: it checks all its preconditions before
//! it writes anything, so an operation that fails leaves the shared
//! transaction exactly as it found it and cannot disturb the others in the batch.
//! (Import is the exception that proves it: it verifies after writing, and its
//! failure rolls back the whole batch.)
//!
//! Reads run on tokio's blocking pool, each in its own read transaction, and
//! never wait for the writer.
//!
//! A fatal storage error (an I/O error such as a full disk: redb then answers
//! every later call with "Previous I/O error") makes the store not ready at
//! once ([`Store::ping`] fails, so `/ready` is 503, for at least
//! [`READY_HOLD_OFF`]); the writer closes the database and opens it again,
//! retrying every [`REOPEN_RETRY`] until the disk allows it, and then resumes.
//! Opening recovers the file to its last durable commit, which holds every
//! acknowledged write.
//!
//! Idempotency records are deleted 24 hours after they were made (a sweep by
//! the writer, through an index by time), not when their task is deleted: a
//! retry within the window must replay the original answer even after a
//! delete, or a late retry would create the task again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::codec::{decode, decode_task, encode};
use super::{
    BackupRecord, Clock, Created, Export, IDEMPOTENCY_SWEEP_CHUNK, IDEMPOTENCY_SWEEP_INTERVAL,
    ImportSet, ListQuery, NewTask, Order, Page, StorageError, Store, StoreResult, TokenDigest,
    TokenInfo, idempotency_cutoff, idempotency_fresh,
};
use crate::auth::PrincipalName;
use crate::domain::{DueAt, Owner, Task, TaskChange, TaskId};

/// How much a read may do; see `RedbStore::read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadCost {
    Short,
    Long,
}

/// Tasks by `owner 0x00 id(16 bytes, big-endian)`: one owner's tasks are
/// contiguous and in creation order, so a page is one range scan.
const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks_v1");
/// Number of tasks per owner, kept in the same transactions as `TASKS`.
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("task_counts_v1");
/// Token digest to token record.
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens_v1");
/// Principal name to token digest: at most one token per principal.
const TOKEN_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("token_names_v1");
/// `owner 0x00 key` to the request digest and the task it created.
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency_v1");
/// The idempotency records by age: `created_at (8 bytes, see expiry_key)
/// owner 0x00 key`, so the sweep finds expired ones with one range scan. Built
/// from `IDEMPOTENCY` when a file without it is first opened.
const IDEMPOTENCY_EXPIRY: TableDefinition<&[u8], ()> =
    TableDefinition::new("idempotency_expiry_v1");

/// The file inside the data directory.
pub const DB_FILE: &str = "devops-api.redb";

/// Default size of redb's own page cache.
pub const DEFAULT_CACHE_SIZE: usize = 16 * 1024 * 1024;

/// How often the writer tries to reopen the database after a fatal error.
pub const REOPEN_RETRY: Duration = Duration::from_millis(500);

/// How long the store stays not ready after a fatal error, even when the
/// database reopens at once (a disk with a little room left): long enough
/// for health checks and the proxy to notice, and renewed by every further
/// fatal error, so a disk that keeps failing keeps the store out of rotation.
pub const READY_HOLD_OFF: Duration = Duration::from_secs(5);

/// How long a reopen waits for reads in flight on the old database.
const READS_DRAIN: Duration = Duration::from_secs(2);

/// Whether other processes may open the same file (redb's concurrency mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DbSharing {
    /// This process alone; the fastest commits.
    #[default]
    Exclusive,
    /// Several processes on one host read and write the file, one write
    /// transaction at a time (tasks of one service sharing a volume).
    MultiWriter,
}

#[derive(Debug, Clone)]
pub struct RedbConfig {
    pub data_dir: PathBuf,
    pub sharing: DbSharing,
    /// Off: one transaction per write (the baseline the benchmark compares with).
    pub group_commit: bool,
    /// The most writes committed together.
    pub max_batch: usize,
    /// Bytes of redb's page cache (redb's default is 1 GiB). The OS page cache
    /// keeps the file warm anyway; this bounds the process's own share.
    pub cache_size: usize,
    /// Dates tasks and idempotency records; the system clock but in tests.
    pub clock: Arc<dyn Clock>,
    /// Test-only negative control: answer callers before the commit is
    /// durable. Exists so the power-loss test can show that it detects loss.
    #[doc(hidden)]
    pub ack_before_commit: bool,
}

impl RedbConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            sharing: DbSharing::Exclusive,
            group_commit: true,
            max_batch: 512,
            cache_size: DEFAULT_CACHE_SIZE,
            clock: super::system_clock(),
            ack_before_commit: false,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(DB_FILE)
    }
}

/// How a write left the shared transaction, and how to answer its caller once
/// the commit's outcome is known.
struct Applied {
    respond: Box<dyn FnOnce(Result<(), StorageError>) + Send>,
    /// The write failed in a way that may have left partial changes in the
    /// transaction (an I/O error, not a checked precondition): the whole batch
    /// is then rolled back rather than committed.
    poisoned: bool,
}

/// A write: applied inside the batch's transaction.
type Job = Box<dyn FnOnce(&WriteTransaction) -> Applied + Send>;

/// Which failures of a write roll back its whole batch.
#[derive(Clone, Copy)]
enum Poison {
    /// `Unavailable` only: every other error is a precondition checked before writing.
    OnIoError,
    /// Any error (an operation that verifies after writing).
    OnAnyError,
}

/// A [`Job`] running `op` and handing its result, once the batch's commit
/// outcome is known, to `reply`.
fn job<T: Send + 'static>(
    op: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    poison: Poison,
    reply: impl FnOnce(StoreResult<T>) + Send + 'static,
) -> Job {
    Box::new(move |txn| {
        let result = op(txn);
        let poisoned = match poison {
            Poison::OnIoError => matches!(result, Err(StorageError::Unavailable(_))),
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

enum Msg {
    Write(Job),
    /// A read failed with an I/O error: check whether the database still works.
    Check,
    Stop,
}

/// Opens the database anew (the file, or a test backend).
type Opener = Box<dyn Fn() -> Result<Database, StorageError> + Send + Sync>;

/// What the store's readers and its writer share.
struct Shared {
    /// The open database; `None` while the writer reopens it.
    db: RwLock<Option<Arc<Database>>>,
    /// False from a fatal storage error until the database is open again.
    healthy: AtomicBool,
    /// Not ready before this instant: [`READY_HOLD_OFF`] after the last fatal error.
    hold_off_until: Mutex<Option<Instant>>,
    clock: Arc<dyn Clock>,
}

impl Shared {
    fn db(&self) -> StoreResult<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                StorageError::Unavailable(
                    "the database is being reopened after a storage error".into(),
                )
            })
    }

    fn set_db(&self, db: Option<Arc<Database>>) {
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = db;
    }
}

pub struct RedbStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Msg>,
    /// Taken by `close`, which waits for the writer to finish its queue.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Multi-writer: a read registers under a file lock that a peer process
    /// holds while it publishes a commit, so reads go to the blocking pool.
    /// Exclusive: a read only touches memory and the OS page cache, so it runs
    /// on the calling task without a thread hand-off.
    reads_inline: bool,
}

impl RedbStore {
    /// Opens (or creates) the database in `config.data_dir`, which is created
    /// (mode 0700) if missing; the file is created, or narrowed to, mode 0600.
    /// Errors say what the operator should do.
    pub fn open(config: &RedbConfig) -> StoreResult<Self> {
        create_private_dir(&config.data_dir).map_err(|e| {
            StorageError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let path = config.db_path();
        let (sharing, cache_size) = (config.sharing, config.cache_size);
        let open: Opener = Box::new(move || {
            let file = open_private_file(&path).map_err(|e| {
                StorageError::Unavailable(format!("cannot open {}: {e}", path.display()))
            })?;
            let backend =
                redb::backends::FileBackend::new(file).map_err(|e| open_error(&path, e))?;
            builder(sharing, cache_size)
                .create_with_backend(backend)
                .map_err(|e| open_error(&path, e))
        });
        Self::start(config, open)
    }

    /// Opens (or creates) the database on a backend from `backend` instead of
    /// a file in `config.data_dir` (tests: in-memory and fault-injecting
    /// backends). Each call of `backend` must give a backend over the same
    /// storage: the store calls it again to reopen after a fatal error.
    /// Backends without byte-range locks support only `DbSharing::Exclusive`.
    pub fn open_with_backend<B: redb::StorageBackend>(
        config: &RedbConfig,
        backend: impl Fn() -> B + Send + Sync + 'static,
    ) -> StoreResult<Self> {
        let (sharing, cache_size) = (config.sharing, config.cache_size);
        let open: Opener = Box::new(move || {
            builder(sharing, cache_size)
                .create_with_backend(backend())
                .map_err(|e| StorageError::Unavailable(format!("cannot open the database: {e}")))
        });
        Self::start(config, open)
    }

    fn start(config: &RedbConfig, open: Opener) -> StoreResult<Self> {
        let db = Arc::new(open()?);
        init_tables(&db, config.clock.now())?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            healthy: AtomicBool::new(true),
            hold_off_until: Mutex::new(None),
            clock: config.clock.clone(),
        });
        let (jobs, rx) = mpsc::channel();
        let mut writer = Writer {
            shared: shared.clone(),
            db: Some(db),
            open,
            max_batch: if config.group_commit {
                config.max_batch.max(1)
            } else {
                1
            },
            ack_before_commit: config.ack_before_commit,
            next_sweep: Instant::now() + IDEMPOTENCY_SWEEP_INTERVAL,
            last_reopen: None,
        };
        let writer = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(StorageError::unavailable)?;
        Ok(Self {
            shared,
            jobs,
            writer: Mutex::new(Some(writer)),
            reads_inline: config.sharing == DbSharing::Exclusive,
        })
    }

    /// Runs `op` in the writer's next transaction and returns its result once
    /// that transaction is durable.
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.write_with(Poison::OnIoError, op).await
    }

    async fn write_with<T: Send + 'static>(
        &self,
        poison: Poison,
        op: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = oneshot::channel();
        let job = job(op, poison, move |r| {
            let _ = tx.send(r);
        });
        self.jobs
            .send(Msg::Write(job))
            .map_err(|_| StorageError::Unavailable("the store is closed".into()))?;
        rx.await
            .map_err(|_| StorageError::Unavailable("the write was not committed".into()))?
    }

    /// Runs `op` in a read transaction of its own, which never waits for the
    /// writer: redb readers see the last committed snapshot. `Short` reads
    /// (a handful of records) run on the calling task when the file is not
    /// shared: measured, the hand-off to the blocking pool cost a quarter of
    /// `GET /v1/tasks/{id}` throughput. `Long` reads (scans whose length the
    /// caller does not bound) always go to the blocking pool, so one of them
    /// cannot stall the async workers. A read that fails with an I/O error
    /// asks the writer to check the database (see the module documentation).
    async fn read<T: Send + 'static>(
        &self,
        cost: ReadCost,
        op: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let run = |db: Arc<Database>| {
            let txn = db.begin_read().map_err(io)?;
            op(&txn)
        };
        let db = self.shared.db()?;
        let result = if self.reads_inline && cost == ReadCost::Short {
            run(db)
        } else {
            tokio::task::spawn_blocking(move || run(db))
                .await
                .map_err(StorageError::unavailable)?
        };
        if matches!(result, Err(StorageError::Unavailable(_))) {
            let _ = self.jobs.send(Msg::Check);
        }
        result
    }

    /// Checks every page and checksum of the file; needs exclusive access, so
    /// it is for tests and offline tools.
    pub fn check_integrity(path: &Path) -> StoreResult<bool> {
        let mut db = Database::open(path).map_err(|e| open_error(path, e))?;
        db.check_integrity().map_err(StorageError::unavailable)
    }
}

/// Creates `dir` and its missing parents with mode 0700 (an existing
/// directory keeps its mode: it may be a mount point the operator set up).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Opens `path` for reading and writing, creating it with mode 0600; an
/// existing file readable by others is narrowed to 0600.
fn open_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot narrow the database file to mode 0600");
        }
    }
    Ok(file)
}

fn builder(sharing: DbSharing, cache_size: usize) -> Builder {
    let mode = match sharing {
        DbSharing::Exclusive => ConcurrencyMode::ExclusiveWriter,
        DbSharing::MultiWriter => ConcurrencyMode::MultiWriter,
    };
    let mut b = Builder::new();
    b.set_concurrency_mode(mode).set_cache_size(cache_size);
    b
}

fn open_error(path: &Path, e: DatabaseError) -> StorageError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StorageError::Unavailable(format!(
            "{} is locked by another process; stop it, or run every process on this file \
             with --db-sharing multi-writer",
            path.display()
        )),
        DatabaseError::Storage(redb::StorageError::Io(io)) => {
            StorageError::Unavailable(format!("cannot open {}: {io}", path.display()))
        }
        other => StorageError::Unavailable(format!("cannot open {}: {other}", path.display())),
    }
}

/// Creates missing tables and, on a file from before the expiry index,
/// indexes the idempotency records it holds.
fn init_tables(db: &Database, now: DateTime<Utc>) -> StoreResult<()> {
    let txn = db.begin_write().map_err(io)?;
    {
        let indexed = txn
            .list_tables()
            .map_err(io)?
            .any(|t| t.name() == IDEMPOTENCY_EXPIRY.name());
        txn.open_table(TASKS).map_err(io)?;
        txn.open_table(COUNTS).map_err(io)?;
        txn.open_table(TOKENS).map_err(io)?;
        txn.open_table(TOKEN_NAMES).map_err(io)?;
        let records = txn.open_table(IDEMPOTENCY).map_err(io)?;
        let mut index = txn.open_table(IDEMPOTENCY_EXPIRY).map_err(io)?;
        if !indexed {
            let mut entries = Vec::new();
            for e in records.iter().map_err(io)? {
                let (k, v) = e.map_err(io)?;
                // An unreadable record is indexed as the oldest: the next
                // sweep deletes it.
                let at =
                    decode::<IdempotencyRecord>("idempotency", idem_key_name(k.value()), v.value())
                        .map_or(DueAt::MIN, |r| r.created_at);
                entries.push(expiry_key(at, k.value()));
            }
            for k in &entries {
                index.insert(k.as_slice(), ()).map_err(io)?;
            }
            if !entries.is_empty() {
                tracing::info!(records = entries.len(), now = %now, "indexed idempotency records by age");
            }
        }
    }
    txn.commit().map_err(io)
}

/// The writer thread: the only place that opens write transactions in this
/// process (other processes may write too under `multi-writer`; then
/// `begin_write` waits for their transaction while this queue grows, and the
/// next batch is simply larger). It also sweeps expired idempotency records
/// and reopens the database after a fatal storage error.
struct Writer {
    shared: Arc<Shared>,
    /// The writer's handle on the open database; `None` while it is broken.
    db: Option<Arc<Database>>,
    open: Opener,
    max_batch: usize,
    ack_before_commit: bool,
    next_sweep: Instant,
    last_reopen: Option<Instant>,
}

impl Writer {
    fn run(&mut self, rx: &mpsc::Receiver<Msg>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut stopping = false;
        while !stopping {
            let wait = if self.db.is_none() {
                REOPEN_RETRY
            } else {
                self.next_sweep.saturating_duration_since(Instant::now())
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
            if Instant::now() >= self.next_sweep {
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

    /// On a timer: reopen a broken database, or sweep one chunk of expired
    /// idempotency records (and come back at once while there are more).
    fn upkeep(&mut self) {
        if self.db.is_none() {
            self.reopen();
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
            Err(e) => self.fatal(&e.to_string()),
        }
    }

    /// A fatal storage error: not ready from now on, and the database is
    /// closed and opened again (see the module documentation).
    fn fatal(&mut self, error: &str) {
        self.shared.healthy.store(false, Ordering::SeqCst);
        *self
            .shared
            .hold_off_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + READY_HOLD_OFF);
        metrics::counter!("store_fatal_errors_total").increment(1);
        tracing::error!(
            error,
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
                self.fatal(&e.to_string());
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
            Err("the batch was rolled back after a storage error".to_owned())
        } else {
            txn.commit().map_err(|e| {
                tracing::error!(error = %e, writes = size, "commit failed");
                commit_failed = true;
                e.to_string()
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
            respond(outcome.clone().map_err(StorageError::Unavailable));
        }
    }
}

/// Closes `db` once the reads in flight on it are done (or after
/// [`READS_DRAIN`], leaving it to the last of them), releasing the file lock
/// so that it can be opened again.
fn close_when_unused(mut db: Arc<Database>) {
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

/// What one sweep commit did.
struct Swept {
    /// Index entries looked at (a full chunk means there may be more).
    visited: usize,
    /// Records deleted.
    deleted: u64,
}

/// Deletes up to [`IDEMPOTENCY_SWEEP_CHUNK`] idempotency records made at or
/// before `cutoff`, oldest first.
fn sweep_chunk(txn: &WriteTransaction, cutoff: DateTime<Utc>) -> StoreResult<Swept> {
    let mut index = txn.open_table(IDEMPOTENCY_EXPIRY).map_err(io)?;
    let mut records = txn.open_table(IDEMPOTENCY).map_err(io)?;
    let end = expiry_prefix(cutoff.timestamp_micros().saturating_add(1));
    let keys: Vec<Vec<u8>> = index
        .range(..end.as_slice())
        .map_err(io)?
        .take(IDEMPOTENCY_SWEEP_CHUNK)
        .map(|e| e.map(|(k, _)| k.value().to_vec()).map_err(io))
        .collect::<StoreResult<_>>()?;
    let mut deleted = 0;
    for k in &keys {
        let record_key = &k[8..];
        let stored = records
            .get(record_key)
            .map_err(io)?
            .map(|v| v.value().to_vec());
        if let Some(bytes) = stored {
            // The key may have been used again since: then only this stale
            // index entry goes.
            let expired =
                decode::<IdempotencyRecord>("idempotency", idem_key_name(record_key), &bytes)
                    .map_or(true, |r| r.created_at <= cutoff);
            if expired {
                records.remove(record_key).map_err(io)?;
                deleted += 1;
            }
        }
        index.remove(k.as_slice()).map_err(io)?;
    }
    Ok(Swept {
        visited: keys.len(),
        deleted,
    })
}

/// The first 8 bytes of an expiry index key: microseconds since the epoch
/// with the sign bit flipped, big-endian, so byte order is time order (also
/// before 1970).
fn expiry_prefix(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

fn expiry_key(created_at: DateTime<Utc>, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + record_key.len());
    k.extend_from_slice(&expiry_prefix(created_at.timestamp_micros()));
    k.extend_from_slice(record_key);
    k
}

fn task_key(owner: &Owner, id: TaskId) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 17);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.as_u128().to_be_bytes());
    k
}

fn owner_prefix_bounds(owner: &Owner) -> (Vec<u8>, Vec<u8>) {
    (
        task_key(owner, TaskId::from_u128(0)),
        task_key(owner, TaskId::from_u128(u128::MAX)),
    )
}

fn id_of_key(key: &[u8]) -> TaskId {
    let mut b = [0u8; 16];
    b.copy_from_slice(&key[key.len() - 16..]);
    TaskId::from_u128(u128::from_be_bytes(b))
}

/// The owner and id a task key holds; the owner must be a principal name.
fn split_task_key(key: &[u8]) -> Result<(String, TaskId), String> {
    let Some(sep) = key.len().checked_sub(17) else {
        return Err("the key is too short".into());
    };
    if key[sep] != 0 {
        return Err("the key has no owner separator".into());
    }
    let owner = std::str::from_utf8(&key[..sep]).map_err(|_| "the owner is not UTF-8")?;
    PrincipalName::parse(owner)?;
    Ok((owner.to_owned(), id_of_key(key)))
}

/// A task key as it appears in logs and reports.
fn task_key_name(key: &[u8]) -> String {
    match split_task_key(key) {
        Ok((owner, id)) => format!("{}/{owner}/{id}", TASKS.name()),
        Err(_) => format!("{}/0x{}", TASKS.name(), hex::encode(key)),
    }
}

fn idem_key(owner: &Owner, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + key.len() + 1);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn idem_key_name(key: &[u8]) -> String {
    format!(
        "{}/{}",
        IDEMPOTENCY.name(),
        String::from_utf8_lossy(key).replace('\0', "/")
    )
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    name: String,
    #[serde(with = "crate::domain::rfc3339")]
    created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct IdempotencyRecord {
    request_digest: String,
    #[serde(with = "crate::domain::rfc3339")]
    created_at: DateTime<Utc>,
    task: Task,
}

fn io<E: std::fmt::Display>(e: E) -> StorageError {
    StorageError::unavailable(e)
}

fn get_task_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    owner: &Owner,
    id: TaskId,
) -> StoreResult<Task> {
    let key = task_key(owner, id);
    match table.get(key.as_slice()).map_err(io)? {
        Some(v) => decode_task(task_key_name(&key), id, v.value()),
        None => Err(StorageError::NotFound),
    }
}

/// A token record and its key as a backup record; corrupt unless the digest
/// and the name are valid.
fn token_of(digest: &[u8], value: &[u8]) -> StoreResult<BackupRecord> {
    let key = format!("{}/{}", TOKENS.name(), hex::encode(digest));
    let rec: TokenRecord = decode("token", &key, value)?;
    if digest.len() != 32 {
        return Err(StorageError::corrupt(
            "token",
            key,
            "the digest is not 32 bytes",
        ));
    }
    PrincipalName::parse(&rec.name).map_err(|e| StorageError::corrupt("token", &key, e))?;
    Ok(BackupRecord::Token {
        name: rec.name,
        digest: hex::encode(digest),
        created_at: rec.created_at,
    })
}

/// A task record and its key as a backup record.
fn task_of(key: &[u8], value: &[u8]) -> StoreResult<BackupRecord> {
    let name = task_key_name(key);
    let (owner, id) = split_task_key(key).map_err(|e| StorageError::corrupt("task", &name, e))?;
    let task = decode_task(name, id, value)?;
    Ok(BackupRecord::Task { owner, task })
}

/// Every record of the two tables; unreadable ones are listed, not fatal.
fn export_from(
    tokens: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tasks: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> StoreResult<Export> {
    let mut out = Export::default();
    for e in tokens.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        out.push(token_of(k.value(), v.value()))?;
    }
    for e in tasks.iter().map_err(io)? {
        let (k, v) = e.map_err(io)?;
        out.push(task_of(k.value(), v.value()))?;
    }
    Ok(out)
}

#[async_trait]
impl Store for RedbStore {
    async fn create_task(&self, owner: &Owner, new: NewTask) -> StoreResult<Created> {
        let owner = owner.to_owned();
        let clock = self.shared.clock.clone();
        self.write(move |txn| {
            let now = clock.now();
            let mut idem_table = txn.open_table(IDEMPOTENCY).map_err(io)?;
            // The age of an expired record for this key, whose index entry goes.
            let mut expired_at = None;
            if let Some(idem) = &new.idempotency {
                let key = idem_key(&owner, &idem.key);
                let existing = idem_table
                    .get(key.as_slice())
                    .map_err(io)?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = existing {
                    // An unreadable record (reported) is replaced like an expired one.
                    if let Ok(rec) =
                        decode::<IdempotencyRecord>("idempotency", idem_key_name(&key), &bytes)
                    {
                        if idempotency_fresh(rec.created_at, now) {
                            return if rec.request_digest == hex::encode(idem.request_digest) {
                                Ok(Created::Replayed(rec.task))
                            } else {
                                Err(StorageError::IdempotencyMismatch)
                            };
                        }
                        expired_at = Some(rec.created_at);
                    }
                }
            }
            let mut counts = txn.open_table(COUNTS).map_err(io)?;
            let count = counts
                .get(owner.as_str())
                .map_err(io)?
                .map_or(0, |v| v.value());
            if count >= new.max_tasks {
                return Err(StorageError::QuotaExceeded { max: new.max_tasks });
            }
            let task = Task::create_at(new.fields, now);
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            tasks
                .insert(
                    task_key(&owner, task.id).as_slice(),
                    encode(&task).as_slice(),
                )
                .map_err(io)?;
            counts.insert(owner.as_str(), count + 1).map_err(io)?;
            if let Some(idem) = &new.idempotency {
                let key = idem_key(&owner, &idem.key);
                let rec = IdempotencyRecord {
                    request_digest: hex::encode(idem.request_digest),
                    created_at: task.created_at,
                    task: task.clone(),
                };
                idem_table
                    .insert(key.as_slice(), encode(&rec).as_slice())
                    .map_err(io)?;
                let mut index = txn.open_table(IDEMPOTENCY_EXPIRY).map_err(io)?;
                if let Some(at) = expired_at {
                    index.remove(expiry_key(at, &key).as_slice()).map_err(io)?;
                }
                index
                    .insert(expiry_key(rec.created_at, &key).as_slice(), ())
                    .map_err(io)?;
            }
            Ok(Created::New(task))
        })
        .await
    }

    async fn get_task(&self, owner: &Owner, id: TaskId) -> StoreResult<Task> {
        let owner = owner.to_owned();
        self.read(ReadCost::Short, move |txn| {
            let table = txn.open_table(TASKS).map_err(io)?;
            get_task_in(&table, &owner, id)
        })
        .await
    }

    async fn list_tasks(&self, owner: &Owner, query: &ListQuery) -> StoreResult<Page> {
        let owner = owner.to_owned();
        let query = query.clone();
        // Unfiltered, a page reads at most `limit + 1` records; a filter may
        // scan all of the owner's tasks to fill one.
        let unfiltered = query.status.is_none()
            && query.priority.is_none()
            && query.tag.is_none()
            && query.due_before.is_none()
            && query.q.is_none();
        let cost = if unfiltered {
            ReadCost::Short
        } else {
            ReadCost::Long
        };
        self.read(cost, move |txn| {
            let table = txn.open_table(TASKS).map_err(io)?;
            let (lo, hi) = owner_prefix_bounds(&owner);
            let range = match (query.order, query.after) {
                (Order::Asc, Some(after)) => {
                    let Some(next) = after.as_u128().checked_add(1) else {
                        return Ok(Page {
                            items: vec![],
                            next: None,
                        });
                    };
                    let start = task_key(&owner, TaskId::from_u128(next));
                    table.range(start.as_slice()..=hi.as_slice())
                }
                (Order::Desc, Some(after)) => {
                    let end = task_key(&owner, after);
                    table.range(lo.as_slice()..end.as_slice())
                }
                (_, None) => table.range(lo.as_slice()..=hi.as_slice()),
            }
            .map_err(io)?;
            let mut items = Vec::with_capacity(query.limit);
            let mut next = None;
            let mut visit = |entry: Result<
                (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>),
                redb::StorageError,
            >|
             -> StoreResult<bool> {
                let (k, v) = entry.map_err(io)?;
                let key = k.value();
                let task = match decode_task(task_key_name(key), id_of_key(key), v.value()) {
                    Ok(task) => task,
                    // Reported where it was found; the page goes on without it.
                    Err(StorageError::Corrupt { .. }) => return Ok(true),
                    Err(e) => return Err(e),
                };
                if query.matches(&task) {
                    if items.len() == query.limit {
                        next = items.last().map(|t: &Task| t.id);
                        return Ok(false);
                    }
                    items.push(task);
                }
                Ok(true)
            };
            match query.order {
                Order::Asc => {
                    for e in range {
                        if !visit(e)? {
                            break;
                        }
                    }
                }
                Order::Desc => {
                    for e in range.rev() {
                        if !visit(e)? {
                            break;
                        }
                    }
                }
            }
            Ok(Page { items, next })
        })
        .await
    }

    async fn update_task(
        &self,
        owner: &Owner,
        id: TaskId,
        change: TaskChange,
        expected: Option<u64>,
    ) -> StoreResult<Task> {
        let owner = owner.to_owned();
        let clock = self.shared.clock.clone();
        self.write(move |txn| {
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            let current = get_task_in(&tasks, &owner, id)?;
            if expected.is_some_and(|v| v != current.version) {
                return Err(StorageError::VersionMismatch {
                    current: current.version,
                });
            }
            let updated = change.apply(&current, clock.now());
            if updated.version != current.version {
                tasks
                    .insert(task_key(&owner, id).as_slice(), encode(&updated).as_slice())
                    .map_err(io)?;
            }
            Ok(updated)
        })
        .await
    }

    async fn delete_task(
        &self,
        owner: &Owner,
        id: TaskId,
        expected: Option<u64>,
    ) -> StoreResult<()> {
        let owner = owner.to_owned();
        self.write(move |txn| {
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            let current = get_task_in(&tasks, &owner, id)?;
            if expected.is_some_and(|v| v != current.version) {
                return Err(StorageError::VersionMismatch {
                    current: current.version,
                });
            }
            let mut counts = txn.open_table(COUNTS).map_err(io)?;
            let count = counts
                .get(owner.as_str())
                .map_err(io)?
                .map_or(0, |v| v.value());
            tasks.remove(task_key(&owner, id).as_slice()).map_err(io)?;
            counts
                .insert(owner.as_str(), count.saturating_sub(1))
                .map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn count_tasks(&self) -> StoreResult<u64> {
        self.read(ReadCost::Short, |txn| {
            txn.open_table(TASKS).map_err(io)?.len().map_err(io)
        })
        .await
    }

    async fn create_token(&self, name: &str, digest: TokenDigest) -> StoreResult<TokenInfo> {
        let name = name.to_owned();
        let clock = self.shared.clock.clone();
        self.write(move |txn| {
            let mut names = txn.open_table(TOKEN_NAMES).map_err(io)?;
            if names.get(name.as_str()).map_err(io)?.is_some() {
                return Err(StorageError::AlreadyExists(format!("a token for `{name}`")));
            }
            let rec = TokenRecord {
                name: name.clone(),
                created_at: clock.now(),
            };
            let mut tokens = txn.open_table(TOKENS).map_err(io)?;
            tokens
                .insert(digest.as_slice(), encode(&rec).as_slice())
                .map_err(io)?;
            names.insert(name.as_str(), digest.as_slice()).map_err(io)?;
            Ok(TokenInfo {
                name: rec.name,
                created_at: rec.created_at,
            })
        })
        .await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        self.read(ReadCost::Long, |txn| {
            let tokens = txn.open_table(TOKENS).map_err(io)?;
            let mut out = Vec::new();
            for e in tokens.iter().map_err(io)? {
                let (k, v) = e.map_err(io)?;
                match token_of(k.value(), v.value()) {
                    Ok(BackupRecord::Token {
                        name, created_at, ..
                    }) => out.push(TokenInfo { name, created_at }),
                    Ok(BackupRecord::Task { .. }) | Err(StorageError::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut names = txn.open_table(TOKEN_NAMES).map_err(io)?;
            let digest = names
                .get(name.as_str())
                .map_err(io)?
                .map(|v| v.value().to_vec())
                .ok_or(StorageError::NotFound)?;
            let mut tokens = txn.open_table(TOKENS).map_err(io)?;
            tokens.remove(digest.as_slice()).map_err(io)?;
            names.remove(name.as_str()).map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn principal(&self, digest: &TokenDigest) -> StoreResult<Option<String>> {
        let digest = *digest;
        self.read(ReadCost::Short, move |txn| {
            let tokens = txn.open_table(TOKENS).map_err(io)?;
            match tokens.get(digest.as_slice()).map_err(io)? {
                Some(v) => match token_of(&digest, v.value())? {
                    BackupRecord::Token { name, .. } => Ok(Some(name)),
                    BackupRecord::Task { .. } => Ok(None),
                },
                None => Ok(None),
            }
        })
        .await
    }

    async fn export(&self) -> StoreResult<Export> {
        self.read(ReadCost::Long, |txn| {
            let tokens = txn.open_table(TOKENS).map_err(io)?;
            let tasks = txn.open_table(TASKS).map_err(io)?;
            export_from(&tokens, &tasks)
        })
        .await
    }

    async fn import(&self, set: ImportSet) -> StoreResult<u64> {
        let n = set.len() as u64;
        // Verification happens after the writes: its failure must roll back
        // the whole batch.
        self.write_with(Poison::OnAnyError, move |txn| {
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            let mut tokens = txn.open_table(TOKENS).map_err(io)?;
            if !tasks.is_empty().map_err(io)? || !tokens.is_empty().map_err(io)? {
                return Err(StorageError::AlreadyExists(
                    "data in the target store".into(),
                ));
            }
            let mut names = txn.open_table(TOKEN_NAMES).map_err(io)?;
            let mut counts = txn.open_table(COUNTS).map_err(io)?;
            for t in &set.tokens {
                let rec = TokenRecord {
                    name: t.name.clone(),
                    created_at: t.created_at,
                };
                tokens
                    .insert(t.digest.as_slice(), encode(&rec).as_slice())
                    .map_err(io)?;
                names
                    .insert(t.name.as_str(), t.digest.as_slice())
                    .map_err(io)?;
            }
            for (owner, task) in &set.tasks {
                tasks
                    .insert(task_key(owner, task.id).as_slice(), encode(task).as_slice())
                    .map_err(io)?;
            }
            for (owner, n) in &set.counts {
                counts.insert(owner.as_str(), *n).map_err(io)?;
            }
            set.verify(export_from(&tokens, &tasks)?)?;
            Ok(n)
        })
        .await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let cutoff = idempotency_cutoff(self.shared.clock.now());
            let swept = self.write(move |txn| sweep_chunk(txn, cutoff)).await?;
            total += swept.deleted;
            if swept.visited < IDEMPOTENCY_SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        let holding_off = self
            .shared
            .hold_off_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() < t);
        if !self.shared.healthy.load(Ordering::SeqCst) || holding_off {
            return Err(StorageError::Unavailable(
                "recovering from a fatal storage error".into(),
            ));
        }
        let writer_alive = self
            .writer
            .lock()
            .map(|w| w.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false);
        if !writer_alive {
            return Err(StorageError::Unavailable(
                "the writer is not running".into(),
            ));
        }
        self.read(ReadCost::Short, |txn| {
            txn.open_table(TASKS).map(|_| ()).map_err(io)
        })
        .await
    }

    async fn close(&self) {
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let _ = self.jobs.send(Msg::Stop);
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
