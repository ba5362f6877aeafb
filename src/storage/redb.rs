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
//!
//! Reads run on tokio's blocking pool, each in its own read transaction, and
//! never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::codec::{decode, decode_task, encode};
use super::{
    BackupRecord, Created, IDEMPOTENCY_TTL, ListQuery, NewTask, Order, Page, StorageError, Store,
    StoreResult, TokenDigest, TokenInfo,
};
use crate::domain::{Owner, Task, TaskChange, TaskId};

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

/// The file inside the data directory.
pub const DB_FILE: &str = "devops-api.redb";

/// Default size of redb's own page cache.
pub const DEFAULT_CACHE_SIZE: usize = 16 * 1024 * 1024;

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

enum Msg {
    Write(Job),
    Stop,
}

pub struct RedbStore {
    db: Arc<Database>,
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
    /// if missing. Errors say what the operator should do.
    pub fn open(config: &RedbConfig) -> StoreResult<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StorageError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let path = config.db_path();
        let db = builder(config)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        Self::start(config, db)
    }

    /// Opens (or creates) the database on `backend` instead of a file in
    /// `config.data_dir` (tests: in-memory and fault-injecting backends).
    /// Backends without byte-range locks support only `DbSharing::Exclusive`.
    pub fn open_with_backend(
        config: &RedbConfig,
        backend: impl redb::StorageBackend,
    ) -> StoreResult<Self> {
        let db = builder(config)
            .create_with_backend(backend)
            .map_err(|e| StorageError::Unavailable(format!("cannot open the database: {e}")))?;
        Self::start(config, db)
    }

    fn start(config: &RedbConfig, db: Database) -> StoreResult<Self> {
        let db = Arc::new(db);
        init_tables(&db)?;
        let (jobs, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            max_batch: if config.group_commit {
                config.max_batch.max(1)
            } else {
                1
            },
            ack_before_commit: config.ack_before_commit,
        };
        let writer = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(StorageError::unavailable)?;
        Ok(Self {
            db,
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
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let result = op(txn);
            let poisoned = matches!(result, Err(StorageError::Unavailable(_)));
            Applied {
                respond: Box::new(move |committed| {
                    let _ = tx.send(committed.and(result));
                }),
                poisoned,
            }
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
    /// cannot stall the async workers.
    async fn read<T: Send + 'static>(
        &self,
        cost: ReadCost,
        op: impl FnOnce(&redb::ReadTransaction) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let run = |db: &Database| {
            let txn = db.begin_read().map_err(StorageError::unavailable)?;
            op(&txn)
        };
        if self.reads_inline && cost == ReadCost::Short {
            return run(&self.db);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || run(&db))
            .await
            .map_err(StorageError::unavailable)?
    }

    /// Checks every page and checksum of the file; needs exclusive access, so
    /// it is for tests and offline tools.
    pub fn check_integrity(path: &Path) -> StoreResult<bool> {
        let mut db = Database::open(path).map_err(|e| open_error(path, e))?;
        db.check_integrity().map_err(StorageError::unavailable)
    }
}

fn builder(config: &RedbConfig) -> Builder {
    let mode = match config.sharing {
        DbSharing::Exclusive => ConcurrencyMode::ExclusiveWriter,
        DbSharing::MultiWriter => ConcurrencyMode::MultiWriter,
    };
    let mut b = Builder::new();
    b.set_concurrency_mode(mode)
        .set_cache_size(config.cache_size);
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

fn init_tables(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(StorageError::unavailable)?;
    {
        txn.open_table(TASKS).map_err(StorageError::unavailable)?;
        txn.open_table(COUNTS).map_err(StorageError::unavailable)?;
        txn.open_table(TOKENS).map_err(StorageError::unavailable)?;
        txn.open_table(TOKEN_NAMES)
            .map_err(StorageError::unavailable)?;
        txn.open_table(IDEMPOTENCY)
            .map_err(StorageError::unavailable)?;
    }
    txn.commit().map_err(StorageError::unavailable)
}

/// The writer thread: the only place that opens write transactions in this
/// process (other processes may write too under `multi-writer`; then
/// `begin_write` waits for their transaction while this queue grows, and the
/// next batch is simply larger).
struct Writer {
    db: Arc<Database>,
    max_batch: usize,
    ack_before_commit: bool,
}

impl Writer {
    fn run(&self, rx: &mpsc::Receiver<Msg>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut stopping = false;
        while !stopping {
            match rx.recv() {
                Ok(Msg::Write(job)) => batch.push(job),
                Ok(Msg::Stop) | Err(_) => break,
            }
            // Whatever queued while the last commit was being flushed: no
            // waiting for more, so a lone write is committed at once.
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Write(job)) => batch.push(job),
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        // Writes queued before `Stop` are still answered.
        while let Ok(Msg::Write(job)) = rx.try_recv() {
            batch.push(job);
            if batch.len() == self.max_batch {
                self.commit_batch(&mut batch);
            }
        }
        self.commit_batch(&mut batch);
    }

    /// Applies every job in one transaction, commits it durably, then answers
    /// each caller: with its own error if its preconditions failed (it wrote
    /// nothing), with its result if the commit succeeded, and with
    /// `Unavailable` for everyone if the commit failed or was abandoned.
    fn commit_batch(&self, batch: &mut Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let size = batch.len();
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                // Dropping the jobs drops their reply channels: each caller gets
                // `Unavailable` and nothing was written.
                tracing::error!(error = %e, writes = size, "cannot begin write transaction");
                batch.clear();
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
        let outcome = if poisoned {
            if let Err(e) = txn.abort() {
                tracing::error!(error = %e, "abort failed");
            }
            Err("the batch was rolled back after a storage error".to_owned())
        } else {
            txn.commit().map_err(|e| {
                tracing::error!(error = %e, writes = size, "commit failed");
                e.to_string()
            })
        };
        metrics::histogram!("store_commit_batch_size").record(size as f64);
        metrics::histogram!("store_commit_seconds").record(started.elapsed().as_secs_f64());
        for respond in responders {
            respond(outcome.clone().map_err(StorageError::Unavailable));
        }
    }
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

fn idem_key(owner: &Owner, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + key.len() + 1);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
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
    match table.get(task_key(owner, id).as_slice()).map_err(io)? {
        Some(v) => decode_task(id, v.value()),
        None => Err(StorageError::NotFound),
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn create_task(&self, owner: &Owner, new: NewTask) -> StoreResult<Created> {
        let owner = owner.to_owned();
        self.write(move |txn| {
            let mut idem_table = txn.open_table(IDEMPOTENCY).map_err(io)?;
            if let Some(idem) = &new.idempotency {
                let key = idem_key(&owner, &idem.key);
                let existing = idem_table
                    .get(key.as_slice())
                    .map_err(io)?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = existing {
                    let rec: IdempotencyRecord = decode("idempotency record", &bytes)?;
                    let fresh = (Utc::now() - rec.created_at).to_std().unwrap_or_default()
                        < IDEMPOTENCY_TTL;
                    if fresh {
                        return if rec.request_digest == hex::encode(idem.request_digest) {
                            Ok(Created::Replayed(rec.task))
                        } else {
                            Err(StorageError::IdempotencyMismatch)
                        };
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
            let task = Task::create(new.fields);
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            tasks
                .insert(
                    task_key(&owner, task.id).as_slice(),
                    encode(&task).as_slice(),
                )
                .map_err(io)?;
            counts.insert(owner.as_str(), count + 1).map_err(io)?;
            if let Some(idem) = &new.idempotency {
                let rec = IdempotencyRecord {
                    request_digest: hex::encode(idem.request_digest),
                    created_at: task.created_at,
                    task: task.clone(),
                };
                idem_table
                    .insert(
                        idem_key(&owner, &idem.key).as_slice(),
                        encode(&rec).as_slice(),
                    )
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
                let id = id_of_key(k.value());
                let task = decode_task(id, v.value())?;
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
        self.write(move |txn| {
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            let current = get_task_in(&tasks, &owner, id)?;
            if expected.is_some_and(|v| v != current.version) {
                return Err(StorageError::VersionMismatch {
                    current: current.version,
                });
            }
            let updated = change.apply(&current);
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
        self.write(move |txn| {
            let mut names = txn.open_table(TOKEN_NAMES).map_err(io)?;
            if names.get(name.as_str()).map_err(io)?.is_some() {
                return Err(StorageError::AlreadyExists(format!("a token for `{name}`")));
            }
            let rec = TokenRecord {
                name: name.clone(),
                created_at: crate::domain::now(),
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
                let (_, v) = e.map_err(io)?;
                let rec: TokenRecord = decode("token", v.value())?;
                out.push(TokenInfo {
                    name: rec.name,
                    created_at: rec.created_at,
                });
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
                Some(v) => Ok(Some(decode::<TokenRecord>("token", v.value())?.name)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn export(&self) -> StoreResult<Vec<BackupRecord>> {
        self.read(ReadCost::Long, |txn| {
            let mut out = Vec::new();
            let tokens = txn.open_table(TOKENS).map_err(io)?;
            for e in tokens.iter().map_err(io)? {
                let (k, v) = e.map_err(io)?;
                let rec: TokenRecord = decode("token", v.value())?;
                out.push(BackupRecord::Token {
                    name: rec.name,
                    digest: hex::encode(k.value()),
                    created_at: rec.created_at,
                });
            }
            let tasks = txn.open_table(TASKS).map_err(io)?;
            for e in tasks.iter().map_err(io)? {
                let (k, v) = e.map_err(io)?;
                let key = k.value();
                let owner = std::str::from_utf8(&key[..key.len() - 17])
                    .map_err(|_| StorageError::Corrupt {
                        key: hex::encode(key),
                        reason: "owner is not UTF-8".into(),
                    })?
                    .to_owned();
                let task = decode_task(id_of_key(key), v.value())?;
                out.push(BackupRecord::Task { owner, task });
            }
            Ok(out)
        })
        .await
    }

    async fn import(&self, records: Vec<BackupRecord>) -> StoreResult<u64> {
        self.write(move |txn| {
            let mut tasks = txn.open_table(TASKS).map_err(io)?;
            let mut tokens = txn.open_table(TOKENS).map_err(io)?;
            if !tasks.is_empty().map_err(io)? || !tokens.is_empty().map_err(io)? {
                return Err(StorageError::AlreadyExists(
                    "data in the target store".into(),
                ));
            }
            let mut names = txn.open_table(TOKEN_NAMES).map_err(io)?;
            let mut counts = txn.open_table(COUNTS).map_err(io)?;
            let mut per_owner: std::collections::HashMap<String, u64> = Default::default();
            // Validate every record before writing any (the writer's invariant).
            let mut digests = Vec::new();
            for r in &records {
                if let BackupRecord::Token { digest, .. } = r {
                    let d = hex::decode(digest)
                        .ok()
                        .filter(|d| d.len() == 32)
                        .ok_or_else(|| StorageError::Corrupt {
                            key: "token".into(),
                            reason: "digest is not 32 hex bytes".into(),
                        })?;
                    digests.push(d);
                }
            }
            let mut digests = digests.into_iter();
            for r in &records {
                match r {
                    BackupRecord::Task { owner, task } => {
                        tasks
                            .insert(task_key(owner, task.id).as_slice(), encode(task).as_slice())
                            .map_err(io)?;
                        *per_owner.entry(owner.clone()).or_default() += 1;
                    }
                    BackupRecord::Token {
                        name, created_at, ..
                    } => {
                        let d = digests.next().expect("one digest per token record");
                        let rec = TokenRecord {
                            name: name.clone(),
                            created_at: *created_at,
                        };
                        tokens
                            .insert(d.as_slice(), encode(&rec).as_slice())
                            .map_err(io)?;
                        names.insert(name.as_str(), d.as_slice()).map_err(io)?;
                    }
                }
            }
            for (owner, n) in per_owner {
                counts.insert(owner.as_str(), n).map_err(io)?;
            }
            Ok(records.len() as u64)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
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
