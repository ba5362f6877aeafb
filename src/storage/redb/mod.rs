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
//! The task index (the list filters') is written in the same transaction as
//! each task, but a process of an earlier release that shares the file
//! (multi-writer: a rolling update, a rollback) writes tasks without it. So
//! the store verifies and repairs the index in the background ([`IndexUpkeep`]:
//! after opening, and every [`INDEX_VERIFY_INTERVAL`] when the file is
//! shared), and on request ([`Store::repair_indexes`]); filtered reads check
//! every candidate record against the whole filter, so a stale entry never
//! lists a task that does not match.
//!
//! Tokens are stored so that the release before named tokens can share the
//! file during a rolling update or after a rollback (see [`tokens`]); the
//! writer takes expired tokens out of that release's table every
//! [`super::TOKEN_SWEEP_INTERVAL`] and at a graceful stop.
//!
//! Idempotency records are deleted 24 hours after they were made (a sweep by
//! the writer, through an index by time), not when their task is deleted: a
//! retry within the window must replay the original answer even after a
//! delete, or a late retry would create the task again.
//!
//! The parts: [`writer`] (the group-commit writer thread and reopening),
//! [`ops`] (each operation as a function of one transaction; [`tokens`] for
//! the token operations), [`tables`] and
//! [`keys`] (the file's tables and their key layouts), [`files`] (opening the
//! file privately), [`decoded`] (the cache of decoded records that first
//! list pages read).

mod decoded;
mod files;
mod keys;
mod ops;
mod tables;
mod tokens;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, WriteTransaction};
use tokio::sync::oneshot;

use self::decoded::{DECODED_CACHE_BYTES, DecodedTasks};
use self::files::{builder, create_private_dir, open_error, open_private_file};
use self::tables::{TASKS, init_tables};
use self::writer::{Msg, Opener, Poison, Shared, Writer, job};
use super::{
    Chain, Clock, Created, Export, IDEMPOTENCY_SWEEP_CHUNK, IDEMPOTENCY_SWEEP_INTERVAL,
    INDEX_VERIFY_INTERVAL, ImportSet, IndexCheck, IndexRepair, ListQuery, NewTask, NewToken, Page,
    StorageError, Store, StoreResult, TOKEN_SWEEP_INTERVAL, TokenInfo, TokenUses,
    idempotency_cutoff,
};
use crate::domain::{
    Precondition, PrincipalName, Task, TaskChange, TaskId, TokenDigest, TokenName,
};
use chrono::{DateTime, Utc};

/// How much a read may do; see `RedbStore::read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadCost {
    Short,
    Long,
}

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

/// Whether other processes may open the same file (redb's concurrency mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DbSharing {
    /// This process alone; the fastest commits.
    #[default]
    Exclusive,
    /// Several processes on one host read and write the file, one write
    /// transaction at a time (tasks of one service sharing a volume).
    MultiWriter,
}

/// When the store verifies and repairs its task index in the background
/// (see [`Store::repair_indexes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexUpkeep {
    /// After opening; then every [`INDEX_VERIFY_INTERVAL`] if the file is
    /// shared (`DbSharing::MultiWriter`), where a process of an earlier
    /// release may write tasks without index entries at any time. An
    /// exclusive file can only have been written by such a process before
    /// this one opened it.
    #[default]
    Auto,
    /// After opening, then every given interval.
    Every(Duration),
    /// Never by itself (tests that inspect the index as it was written).
    Off,
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
    /// The background verification of the task index.
    pub index_upkeep: IndexUpkeep,
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
            index_upkeep: IndexUpkeep::Auto,
            ack_before_commit: false,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(DB_FILE)
    }
}

pub struct RedbStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Msg>,
    /// Taken by `close`, which waits for the writer to finish its queue.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The background index verification: dropping the sender stops it.
    upkeep: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Multi-writer: a read registers under a file lock that a peer process
    /// holds while it publishes a commit, so reads leave the async workers:
    /// short ones to these threads (see [`ReadThreads`]), scans to the
    /// blocking pool. Exclusive (`None`): a read only touches memory and the
    /// OS page cache, so a short one runs on the calling task without a
    /// thread hand-off.
    short_reads: Option<ReadThreads>,
    /// Read transactions open now (`store_reads_in_flight`).
    readers: Arc<AtomicI64>,
    /// The database file and its directory, for the size gauges; `None` for
    /// a store on a backend other than a file.
    file: Option<PathBuf>,
    /// Token uses noted by authentication, written in the background.
    token_uses: Arc<TokenUses>,
    /// The tasks first list pages decoded lately, by their record bytes.
    decoded: Arc<DecodedTasks>,
}

/// Counts an open read transaction for as long as it lives.
struct Reader(Arc<AtomicI64>);

impl Reader {
    fn new(readers: &Arc<AtomicI64>) -> Self {
        readers.fetch_add(1, Ordering::Relaxed);
        Self(readers.clone())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RedbStore {
    /// Opens (or creates) the database in `config.data_dir`, which is created
    /// (mode 0700) if missing; the file is created, or narrowed to, mode 0600.
    /// Errors say what the operator should do.
    pub fn open(config: &RedbConfig) -> StoreResult<Self> {
        create_private_dir(&config.data_dir).map_err(|e| {
            StorageError::io(
                format!("cannot create data directory {}", config.data_dir.display()),
                e,
            )
        })?;
        let path = config.db_path();
        let (sharing, cache_size) = (config.sharing, config.cache_size);
        let open: Opener = Box::new(move || {
            let file = open_private_file(&path)
                .map_err(|e| StorageError::io(format!("cannot open {}", path.display()), e))?;
            let backend =
                redb::backends::FileBackend::new(file).map_err(|e| open_error(&path, e))?;
            builder(sharing, cache_size)
                .create_with_backend(backend)
                .map_err(|e| open_error(&path, e))
        });
        let mut store = Self::start(config, open)?;
        store.file = Some(config.db_path());
        Ok(store)
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
                .map_err(|e| StorageError::io("cannot open the database", e))
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
            next_token_sweep: Instant::now() + TOKEN_SWEEP_INTERVAL,
            last_reopen: None,
        };
        let writer = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| StorageError::io("cannot start the writer thread", e))?;
        let readers = Arc::new(AtomicI64::new(0));
        let interval = match config.index_upkeep {
            IndexUpkeep::Auto => {
                (config.sharing == DbSharing::MultiWriter).then_some(INDEX_VERIFY_INTERVAL)
            }
            IndexUpkeep::Every(d) => Some(d),
            IndexUpkeep::Off => None,
        };
        let upkeep = if config.index_upkeep == IndexUpkeep::Off {
            None
        } else {
            let index = IndexRepairer {
                shared: shared.clone(),
                jobs: jobs.clone(),
                readers: readers.clone(),
            };
            let (stop, stopped) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("redb-index".into())
                .spawn(move || index.upkeep(interval, &stopped))
                .map_err(|e| StorageError::io("cannot start the index thread", e))?;
            Some((stop, thread))
        };
        let short_reads = match config.sharing {
            DbSharing::Exclusive => None,
            _ => Some(ReadThreads::start()?),
        };
        Ok(Self {
            shared,
            jobs,
            writer: Mutex::new(Some(writer)),
            upkeep: Mutex::new(upkeep),
            short_reads,
            readers,
            file: None,
            token_uses: Arc::new(TokenUses::default()),
            decoded: Arc::new(DecodedTasks::new(DECODED_CACHE_BYTES)),
        })
    }

    fn repairer(&self) -> IndexRepairer {
        IndexRepairer {
            shared: self.shared.clone(),
            jobs: self.jobs.clone(),
            readers: self.readers.clone(),
        }
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
            .map_err(|_| StorageError::unavailable("the store is closed"))?;
        rx.await
            .map_err(|_| StorageError::unavailable("the write was not committed"))?
    }

    /// Runs `op` in a read transaction of its own, which never waits for the
    /// writer: redb readers see the last committed snapshot. `Short` reads
    /// (a handful of records) run on the calling task when the file is not
    /// shared: measured, the hand-off to the blocking pool cost a quarter of
    /// `GET /v1/tasks/{id}` throughput; when it is shared they go to the
    /// [`ReadThreads`], a cheaper hand-off. `Long` reads (scans whose length the
    /// caller does not bound) always go to the blocking pool, so one of them
    /// cannot stall the async workers. A read that fails with an I/O error
    /// asks the writer to check the database (see the module documentation).
    async fn read<T: Send + 'static>(
        &self,
        cost: ReadCost,
        op: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let readers = self.readers.clone();
        let run = move |db: Arc<Database>| {
            let _reader = Reader::new(&readers);
            let txn = db.begin_read()?;
            op(&txn)
        };
        let db = self.shared.db()?;
        let result = match (&self.short_reads, cost) {
            (None, ReadCost::Short) => run(db),
            (Some(threads), ReadCost::Short) => {
                let (tx, rx) = oneshot::channel();
                threads.run(Box::new(move || {
                    let _ = tx.send(run(db));
                }))?;
                // The sender is dropped unsent only when the read panicked.
                rx.await
                    .map_err(|_| StorageError::unavailable("the read did not complete"))?
            }
            _ => tokio::task::spawn_blocking(move || run(db)).await?,
        };
        if matches!(result, Err(StorageError::Unavailable { .. })) {
            let _ = self.jobs.send(Msg::Check);
        }
        result
    }

    /// Takes expired tokens out of the table an earlier release reads, and
    /// brings the token tables in line with what such a release changed
    /// (see `tokens`); the writer also does it every
    /// [`super::TOKEN_SWEEP_INTERVAL`]. Returns how many tokens it changed.
    pub async fn sweep_tokens(&self) -> StoreResult<u64> {
        let clock = self.shared.clock.clone();
        self.write(move |txn| tokens::sweep_tokens(txn, clock.now()))
            .await
    }

    /// Checks every page and checksum of the file; needs exclusive access, so
    /// it is for tests and offline tools.
    pub fn check_integrity(path: &Path) -> StoreResult<bool> {
        let mut db = Database::open(path).map_err(|e| open_error(path, e))?;
        Ok(db.check_integrity()?)
    }
}

type ReadJob = Box<dyn FnOnce() + Send>;

/// The threads that run short reads in multi-writer mode, one per core (at
/// most [`MAX_READ_THREADS`]), each with a queue of its own, taken in turn.
/// The reads cannot run on the async workers there (a read takes redb's
/// header lock, which a peer process holds while it publishes a commit, and
/// for a flush while it opens or closes the file), and handing each one to
/// tokio's blocking pool cost more than the read: every read woke a pool
/// thread, and the pool's threads contended for its one queue (measured: a
/// third of GET by id's CPU in this mode, `docs/performance.md`). A thread
/// that drains its own queue serves a burst of reads with one wake-up. Scans
/// (`ReadCost::Long`) still go to the blocking pool, so a long one never
/// holds up short ones.
struct ReadThreads {
    queues: Vec<std::sync::mpsc::Sender<ReadJob>>,
    next: std::sync::atomic::AtomicUsize,
}

const MAX_READ_THREADS: usize = 8;

impl ReadThreads {
    /// Starts the threads; each ends when its queue's sender is dropped.
    fn start() -> StoreResult<Self> {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_READ_THREADS);
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel::<ReadJob>();
            std::thread::Builder::new()
                .name(format!("redb-reader-{i}"))
                .spawn(move || {
                    for job in rx {
                        // A panicking read drops its result sender, which
                        // its caller reports; the thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| StorageError::io("cannot start a reader thread", e))?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn run(&self, job: ReadJob) -> StoreResult<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        self.queues[i]
            .send(job)
            .map_err(|_| StorageError::unavailable("the store is closed"))
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn create_task(&self, owner: &PrincipalName, new: NewTask) -> StoreResult<Created> {
        let owner = owner.clone();
        let clock = self.shared.clock.clone();
        self.write(move |txn| ops::create_task(txn, &owner, new, clock.now()))
            .await
    }

    async fn get_task(&self, owner: &PrincipalName, id: TaskId) -> StoreResult<Task> {
        let owner = owner.clone();
        self.read(ReadCost::Short, move |txn| ops::get_task(txn, &owner, id))
            .await
    }

    async fn list_tasks(&self, owner: &PrincipalName, query: &ListQuery) -> StoreResult<Page> {
        let owner = owner.clone();
        let query = query.clone();
        // Unfiltered, a page reads at most `limit + 1` records; a filtered
        // page may examine up to its scan budget of candidates.
        let cost = if query.is_filtered() {
            ReadCost::Long
        } else {
            ReadCost::Short
        };
        // First pages only: they are the pages clients poll. A page after
        // a cursor is mostly read once, and for those the cache's lookups
        // cost more than they save (docs/performance.md#decoded-task-cache).
        let decoded = query.after.is_none().then(|| self.decoded.clone());
        self.read(cost, move |txn| {
            ops::list_tasks(txn, &owner, &query, decoded.as_deref())
        })
        .await
    }

    async fn update_task(
        &self,
        owner: &PrincipalName,
        id: TaskId,
        change: TaskChange,
        precondition: Precondition,
    ) -> StoreResult<Task> {
        let owner = owner.clone();
        let clock = self.shared.clock.clone();
        self.write(move |txn| ops::update_task(txn, &owner, id, change, precondition, clock.now()))
            .await
    }

    async fn delete_task(
        &self,
        owner: &PrincipalName,
        id: TaskId,
        precondition: Precondition,
    ) -> StoreResult<()> {
        let owner = owner.clone();
        self.write(move |txn| ops::delete_task(txn, &owner, id, precondition))
            .await
    }

    async fn count_tasks(&self) -> StoreResult<u64> {
        self.read(ReadCost::Short, ops::count_tasks).await
    }

    async fn check_indexes(&self) -> StoreResult<IndexCheck> {
        let (disagreements, examples) = self.read(ReadCost::Long, ops::check_indexes).await?;
        Ok(IndexCheck {
            disagreements,
            examples,
        })
    }

    async fn repair_indexes(&self) -> StoreResult<IndexRepair> {
        let index = self.repairer();
        tokio::task::spawn_blocking(move || index.repair_logged("request", None)).await?
    }

    async fn create_token(&self, new: NewToken) -> StoreResult<TokenInfo> {
        let clock = self.shared.clock.clone();
        self.write(move |txn| tokens::create_token(txn, &new, clock.now()))
            .await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        self.read(ReadCost::Long, tokens::tokens).await
    }

    async fn revoke_token(&self, principal: &PrincipalName, name: &TokenName) -> StoreResult<u64> {
        let (principal, name) = (principal.clone(), name.clone());
        let clock = self.shared.clock.clone();
        self.write(move |txn| tokens::revoke_token(txn, &principal, &name, clock.now()))
            .await
    }

    async fn rotate_token(&self, new: NewToken, grace: Duration) -> StoreResult<TokenInfo> {
        let clock = self.shared.clock.clone();
        self.write(move |txn| tokens::rotate_token(txn, &new, grace, clock.now()))
            .await
    }

    async fn token(&self, digest: &TokenDigest) -> StoreResult<Option<TokenInfo>> {
        let digest = *digest;
        self.read(ReadCost::Short, move |txn| tokens::token(txn, &digest))
            .await
    }

    async fn write_token_uses(&self, uses: Vec<(TokenDigest, DateTime<Utc>)>) -> StoreResult<()> {
        let clock = self.shared.clock.clone();
        self.write(move |txn| tokens::write_token_uses(txn, &uses, clock.now()))
            .await
    }

    fn token_uses(&self) -> &TokenUses {
        &self.token_uses
    }

    /// Queues the write on the writer thread and does not wait for it; a
    /// failed write puts the uses back for the next one.
    fn spawn_token_use_write(&self) {
        let uses = self.token_uses.take();
        if uses.is_empty() {
            return;
        }
        let back = self.token_uses.clone();
        let kept = uses.clone();
        let clock = self.shared.clock.clone();
        let job = job(
            move |txn| tokens::write_token_uses(txn, &uses, clock.now()),
            Poison::OnIoError,
            move |r: StoreResult<()>| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "writing token last-use times failed; retrying with the next");
                    back.restore(kept);
                }
            },
        );
        let _ = self.jobs.send(Msg::Write(job));
    }

    fn clock(&self) -> &dyn Clock {
        self.shared.clock.as_ref()
    }

    async fn export(&self) -> StoreResult<Export> {
        self.read(ReadCost::Long, ops::export).await
    }

    async fn import(&self, set: ImportSet) -> StoreResult<u64> {
        // Verification happens after the writes: its failure must roll back
        // the whole batch.
        let clock = self.shared.clock.clone();
        self.write_with(Poison::OnAnyError, move |txn| {
            ops::import(txn, set, clock.now())
        })
        .await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let cutoff = idempotency_cutoff(self.shared.clock.now());
            let swept = self.write(move |txn| ops::sweep_chunk(txn, cutoff)).await?;
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
            return Err(StorageError::unavailable(
                "recovering from a fatal storage error",
            ));
        }
        let writer_alive = self
            .writer
            .lock()
            .map(|w| w.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false);
        if !writer_alive {
            return Err(StorageError::unavailable("the writer is not running"));
        }
        self.read(ReadCost::Short, |txn| {
            txn.open_table(TASKS)?;
            Ok(())
        })
        .await
    }

    fn publish_metrics(&self) {
        metrics::gauge!("store_reads_in_flight").set(self.readers.load(Ordering::Relaxed) as f64);
        let Some(file) = &self.file else { return };
        if let Ok(meta) = std::fs::metadata(file) {
            metrics::gauge!("store_file_size_bytes").set(meta.len() as f64);
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        if let Some((avail, size)) = crate::metrics_catalog::filesystem_space(dir) {
            metrics::gauge!("store_filesystem_avail_bytes").set(avail as f64);
            metrics::gauge!("store_filesystem_size_bytes").set(size as f64);
        }
    }

    async fn close(&self) {
        // The index thread first: it writes through the writer, and holds
        // the database open while it reads.
        let upkeep = self.upkeep.lock().ok().and_then(|mut u| u.take());
        if let Some((stop, thread)) = upkeep {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Err(e) = self.flush_token_uses().await {
            tracing::warn!(error = %e, "could not write token last-use times at close");
        }
        // So that an earlier release left alone on the file (a rollback)
        // refuses every token expired by now.
        if let Err(e) = self.sweep_tokens().await {
            tracing::warn!(error = %e, "token sweep at close failed");
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let _ = self.jobs.send(Msg::Stop);
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Verifies and repairs the task index (see [`Store::repair_indexes`]) with
/// blocking calls: from the index thread, or from the blocking pool.
struct IndexRepairer {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Msg>,
    readers: Arc<AtomicI64>,
}

impl IndexRepairer {
    /// The index thread: a repair now, then one every `interval` (if any)
    /// until `stop` is dropped.
    fn upkeep(&self, interval: Option<Duration>, stop: &mpsc::Receiver<()>) {
        let mut trigger = "open";
        loop {
            // A failure is logged and counted; the next round tries again.
            let _ = self.repair_logged(trigger, Some(stop));
            let Some(every) = interval else { return };
            match stop.recv_timeout(every) {
                Err(mpsc::RecvTimeoutError::Timeout) => trigger = "periodic",
                _ => return,
            }
        }
    }

    /// [`Self::repair`], logged, and counted in `store_index_repaired_entries_total`
    /// and `store_index_verifications_total`.
    fn repair_logged(
        &self,
        trigger: &'static str,
        stop: Option<&mpsc::Receiver<()>>,
    ) -> StoreResult<IndexRepair> {
        let started = Instant::now();
        let result = self.repair(stop);
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(done) => {
                metrics::counter!("store_index_verifications_total", "outcome" => "ok")
                    .increment(1);
                metrics::counter!("store_index_repaired_entries_total").increment(done.repaired());
                if done.repaired() > 0 {
                    tracing::warn!(
                        trigger,
                        added = done.added,
                        removed = done.removed,
                        seconds,
                        "task index repaired: tasks were written without their index entries \
                         (by a process of an earlier release sharing the file)"
                    );
                } else {
                    tracing::info!(
                        trigger,
                        seconds,
                        "task index verified: it agrees with the tasks"
                    );
                }
            }
            Err(e) => {
                metrics::counter!("store_index_verifications_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(trigger, error = %Chain(e), "task index verification failed");
            }
        }
        result
    }

    /// Two passes, each in chunks of [`super::INDEX_REPAIR_CHUNK`]: the task
    /// records (entries a task lacks are added), then the index (entries no
    /// task has are removed). Each chunk is read in a read transaction of its
    /// own; what it finds is fixed by one write through the writer, which
    /// decides again from the records as they are in its transaction, so a
    /// write that happened in between is never undone. `stop` ends it early
    /// (the store is closing).
    fn repair(&self, stop: Option<&mpsc::Receiver<()>>) -> StoreResult<IndexRepair> {
        let mut done = IndexRepair::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            self.check_stop(stop)?;
            let (lacking, last) =
                self.read(|txn| ops::tasks_lacking_entries(txn, after.as_deref()))?;
            if !lacking.is_empty() {
                done.added += self.write(move |txn| ops::add_missing_entries(txn, &lacking))?;
            }
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        after = None;
        loop {
            self.check_stop(stop)?;
            let (stray, last) = self.read(|txn| ops::stray_entries(txn, after.as_deref()))?;
            if !stray.is_empty() {
                done.removed += self.write(move |txn| ops::remove_stray_entries(txn, &stray))?;
            }
            match last {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        Ok(done)
    }

    fn check_stop(&self, stop: Option<&mpsc::Receiver<()>>) -> StoreResult<()> {
        match stop.map(mpsc::Receiver::try_recv) {
            Some(Err(mpsc::TryRecvError::Disconnected)) => {
                Err(StorageError::unavailable("the store is closing"))
            }
            _ => Ok(()),
        }
    }

    fn read<T>(&self, op: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T>) -> StoreResult<T> {
        let db = self.shared.db()?;
        let _reader = Reader::new(&self.readers);
        let txn = db.begin_read()?;
        op(&txn)
    }

    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = mpsc::channel();
        let job = job(op, Poison::OnIoError, move |r| {
            let _ = tx.send(r);
        });
        self.jobs
            .send(Msg::Write(job))
            .map_err(|_| StorageError::unavailable("the store is closed"))?;
        rx.recv()
            .map_err(|_| StorageError::unavailable("the write was not committed"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that panics on a reader thread fails alone: its caller gets
    /// an error, and every thread goes on serving reads.
    #[tokio::test]
    async fn a_read_that_panics_on_a_reader_thread_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = RedbConfig::new(dir.path());
        cfg.sharing = DbSharing::MultiWriter;
        let store = RedbStore::open(&cfg).unwrap();
        let threads = store
            .short_reads
            .as_ref()
            .expect("reader threads")
            .queues
            .len();
        for _ in 0..threads {
            let err = store
                .read(ReadCost::Short, |_| -> StoreResult<()> {
                    panic!("a failing read")
                })
                .await
                .unwrap_err();
            assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
        }
        for _ in 0..2 * threads {
            assert_eq!(
                store.read(ReadCost::Short, ops::count_tasks).await.unwrap(),
                0
            );
        }
    }
}
