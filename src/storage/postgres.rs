//! The PostgreSQL backend, for swarms whose API tasks run on several nodes.
//!
//! Connections come from a deadpool pool of tokio-postgres clients. They are
//! plain TCP (`NoTls`): the database is expected on loopback or on the swarm's
//! encrypted overlay network, and no TLS crate is linked. A URL that demands
//! TLS (`sslmode=require`) fails to connect with a clear error.
//!
//! Behaviour matches the redb backend method for method (the shared contract
//! suite runs on both):
//! - every task query is scoped by `owner`; keyset pages walk the primary key
//!   `(owner, id)` forwards or backwards, so a page never scans the table;
//! - updates are optimistic: the `UPDATE` names the version it read, and a
//!   writer that loses the race re-reads (and reports the mismatch when the
//!   caller gave a version);
//! - a create's idempotency key, quota check and insert share one transaction;
//! - every error from the pool or the connection is
//!   [`StorageError::Unavailable`], so a lost database becomes `503`, and the
//!   pool replaces closed connections once the server is back.
//!
//! The schema is created by embedded, forward-only migrations (see
//! [`MIGRATIONS`]), applied at start in one transaction under an advisory lock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{IsolationLevel, NoTls, Row};
use uuid::Uuid;

use super::{
    BackupRecord, Clock, Created, Export, IDEMPOTENCY_SWEEP_CHUNK, IDEMPOTENCY_SWEEP_INTERVAL,
    ImportSet, ListQuery, NewTask, Order, Page, StorageError, Store, StoreResult, TokenDigest,
    TokenInfo, idempotency_cutoff, idempotency_fresh,
};
use crate::auth::PrincipalName;
use crate::domain::{
    Description, DueAt, Owner, Priority, Status, Tag, Tags, Task, TaskChange, TaskFields, TaskId,
    Title, rfc3339,
};

/// One schema change. Versions are dense and increasing; an applied migration
/// is never edited, a change is a new file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "idempotency_expiry",
        sql: include_str!("migrations/0002_idempotency_expiry.sql"),
    },
];

/// The schema version this binary needs.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Key of the transaction-level advisory lock that serialises migrators
/// (ASCII "devops-m"): replicas starting together migrate one after another,
/// and all but the first find nothing to do.
const MIGRATION_LOCK: i64 = 0x6465_766f_7073_2d6d;

/// Columns of a task, in the order [`task_from_row`] reads them.
const TASK_COLUMNS: &str =
    "id, title, description, status, priority, due_at, tags, created_at, updated_at, version";

#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/database` or `host=… dbname=…`.
    pub url: String,
    /// Most connections this process holds (replicas × this ≤ `max_connections`).
    pub pool_size: usize,
    /// Server-side limit per statement, set on every connection; zero turns it off.
    pub statement_timeout: Duration,
    /// Limit for opening a connection and for waiting for a free one.
    pub connect_timeout: Duration,
    /// Dates tasks and idempotency records; the system clock but in tests.
    pub clock: Arc<dyn Clock>,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 10,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            clock: super::system_clock(),
        }
    }

    /// The driver's configuration: the URL plus our timeouts, keepalives and
    /// application name (explicit settings in the URL win, except the
    /// statement timeout, which is appended to its `options`).
    pub fn pg_config(&self) -> StoreResult<tokio_postgres::Config> {
        let mut pg: tokio_postgres::Config = self.url.parse().map_err(|e| {
            StorageError::Unavailable(format!("invalid database URL: {}", describe(&e)))
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(self.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("devops-api");
        }
        // Finds peers that vanished without closing (a node lost on the overlay).
        pg.keepalives_idle(Duration::from_secs(30));
        let options = format!(
            "{} -c statement_timeout={}",
            pg.get_options().unwrap_or_default(),
            self.statement_timeout.as_millis()
        );
        pg.options(options.trim());
        Ok(pg)
    }
}

/// The URL carries a password: never print it.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("clock", &self.clock)
            .finish()
    }
}

pub struct PostgresStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    /// The background sweep of expired idempotency keys, stopped by `close`.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects, applies pending migrations and returns a store whose pool
    /// opens further connections on demand.
    pub async fn connect(config: &PostgresConfig) -> StoreResult<Self> {
        let pg = config.pg_config()?;
        let mut first = connect_one(&pg).await?;
        migrate(&mut first, None).await?;
        drop(first);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                // A closed connection (server restarted) is dropped on checkout;
                // one that breaks mid-query fails that query with `Unavailable`.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(StorageError::unavailable)?;
        let sweeper = tokio::spawn(sweep_idempotency_keys(pool.clone(), config.clock.clone()));
        Ok(Self {
            pool,
            clock: config.clock.clone(),
            sweeper: Mutex::new(Some(sweeper)),
        })
    }

    async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Closed => {
                StorageError::Unavailable("the store is closed".into())
            }
            deadpool_postgres::PoolError::Backend(e) => db(e),
            other => {
                StorageError::Unavailable(format!("no database connection: {}", describe(&other)))
            }
        })
    }
}

/// Applies the migrations after the database's current version, up to
/// `up_to` (all when `None`), in one transaction under an advisory lock.
/// Returns the versions this call applied: empty when another process had
/// already done the work.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    up_to: Option<i32>,
) -> StoreResult<Vec<i32>> {
    let target = up_to.unwrap_or(SCHEMA_VERSION);
    let txn = client.transaction().await.map_err(db)?;
    // Waiting for another migrator, or migrating a large table, may take longer
    // than a request's statement timeout.
    txn.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(db)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db)?;
    let current: i32 = txn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    if current > SCHEMA_VERSION {
        // A newer release migrated (a rolling update in progress). Migrations
        // are additive, so this binary keeps working on the newer schema.
        tracing::warn!(
            current,
            known = SCHEMA_VERSION,
            "the database schema is newer than this binary"
        );
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        txn.batch_execute(m.sql).await.map_err(|e| {
            StorageError::Unavailable(format!(
                "migration {} ({}) failed: {}",
                m.version,
                m.name,
                describe(&e)
            ))
        })?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(db)?;
        applied.push(m.version);
    }
    txn.commit().await.map_err(db)?;
    if !applied.is_empty() {
        tracing::info!(
            ?applied,
            version = target.max(current),
            "applied database migrations"
        );
    }
    Ok(applied)
}

/// `devops-api migrate`: applies pending migrations over one connection.
pub async fn run_migrations(config: &PostgresConfig) -> StoreResult<Vec<i32>> {
    let mut client = connect_one(&config.pg_config()?).await?;
    migrate(&mut client, None).await
}

/// One connection outside the pool, driven by its own task.
pub async fn connect_one(pg: &tokio_postgres::Config) -> StoreResult<tokio_postgres::Client> {
    let (client, connection) = pg.connect(NoTls).await.map_err(db)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

async fn sweep_idempotency_keys(pool: Pool, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(IDEMPOTENCY_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        match sweep(&pool, clock.as_ref()).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "expired idempotency keys deleted"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "idempotency key sweep skipped"),
        }
    }
}

/// Deletes expired idempotency keys, [`IDEMPOTENCY_SWEEP_CHUNK`] per statement.
async fn sweep(pool: &Pool, clock: &dyn Clock) -> StoreResult<u64> {
    let client = pool.get().await.map_err(StorageError::unavailable)?;
    let stmt = client
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE (owner, key) IN (
                 SELECT owner, key FROM idempotency_keys WHERE created_at <= $1 LIMIT $2)",
        )
        .await
        .map_err(db)?;
    let chunk = to_i64(IDEMPOTENCY_SWEEP_CHUNK as u64);
    let mut total = 0;
    loop {
        let cutoff = idempotency_cutoff(clock.now());
        let n = client
            .execute(&stmt, &[&cutoff, &chunk])
            .await
            .map_err(db)?;
        total += n;
        if n < IDEMPOTENCY_SWEEP_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Every driver error is the backend being unavailable, except where a caller
/// matches a specific SQLSTATE first. The message keeps the server's reason
/// (a statement timeout, a shutdown) for the log.
fn db(e: tokio_postgres::Error) -> StorageError {
    StorageError::Unavailable(describe(&e))
}

/// An error with its causes: the driver's own message is only its kind
/// ("db error"), the server's reason is in the source.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// A row that cannot be decoded, reported (see [`StorageError::corrupt`]).
fn corrupt(
    kind: &'static str,
    key: impl std::fmt::Display,
    reason: impl Into<String>,
) -> StorageError {
    StorageError::corrupt(kind, key, reason)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A task from [`TASK_COLUMNS`] starting at column `at`, of `owner` (for
/// reports). Values are validated by the domain's rules for stored values: a
/// row they reject is `Corrupt` (reported), never a panic.
fn task_from_row(row: &Row, at: usize, owner: &str) -> StoreResult<Task> {
    let id: Uuid = row
        .try_get(at)
        .map_err(|e| corrupt("task", format!("tasks/{owner}"), e.to_string()))?;
    let key = format!("tasks/{owner}/{id}");
    let bad = |e: String| corrupt("task", &key, e);
    let get = |e: tokio_postgres::Error| bad(e.to_string());
    let title: String = row.try_get(at + 1).map_err(get)?;
    let description: Option<String> = row.try_get(at + 2).map_err(get)?;
    let status: String = row.try_get(at + 3).map_err(get)?;
    let priority: String = row.try_get(at + 4).map_err(get)?;
    let due_at: Option<DateTime<Utc>> = row.try_get(at + 5).map_err(get)?;
    let tags: Vec<String> = row.try_get(at + 6).map_err(get)?;
    let created_at: DateTime<Utc> = row.try_get(at + 7).map_err(get)?;
    let updated_at: DateTime<Utc> = row.try_get(at + 8).map_err(get)?;
    let version: i64 = row.try_get(at + 9).map_err(get)?;
    let tags = tags
        .iter()
        .map(|t| Tag::from_stored(t))
        .collect::<Result<Vec<_>, _>>()
        .and_then(Tags::new)
        .map_err(|e| bad(format!("tags: {e}")))?;
    let task = Task {
        id: TaskId::from_stored(id).map_err(&bad)?,
        fields: TaskFields {
            title: Title::from_stored(&title).map_err(|e| bad(format!("title: {e}")))?,
            description: description
                .map(|d| Description::from_stored(&d))
                .transpose()
                .map_err(|e| bad(format!("description: {e}")))?,
            status: Status::parse(&status).ok_or_else(|| bad(format!("status `{status}`")))?,
            priority: Priority::parse(&priority)
                .ok_or_else(|| bad(format!("priority `{priority}`")))?,
            due_at: due_at
                .map(DueAt::from_stored)
                .transpose()
                .map_err(|e| bad(format!("due_at: {e}")))?,
            tags,
        },
        created_at: rfc3339::check_stored(created_at)
            .map_err(|e| bad(format!("created_at: {e}")))?,
        updated_at: rfc3339::check_stored(updated_at)
            .map_err(|e| bad(format!("updated_at: {e}")))?,
        version: u64::try_from(version).map_err(|_| bad("negative version".into()))?,
    };
    task.check_stored().map_err(&bad)?;
    Ok(task)
}

/// A row of `SELECT owner, TASK_COLUMNS` as a backup record.
fn task_record(row: &Row) -> StoreResult<BackupRecord> {
    let owner: String = row
        .try_get(0)
        .map_err(|e| corrupt("task", "tasks", e.to_string()))?;
    if let Err(e) = PrincipalName::parse(&owner) {
        let id: Option<Uuid> = row.try_get(1).ok();
        return Err(corrupt(
            "task",
            format!("tasks/{}/{}", owner.escape_debug(), id.unwrap_or_default()),
            e,
        ));
    }
    let task = task_from_row(row, 1, &owner)?;
    Ok(BackupRecord::Task { owner, task })
}

/// A row of `SELECT digest, name, created_at FROM tokens` as a backup record.
fn token_record(row: &Row) -> StoreResult<BackupRecord> {
    let digest: Vec<u8> = row
        .try_get(0)
        .map_err(|e| corrupt("token", "tokens", e.to_string()))?;
    let key = format!("tokens/{}", hex::encode(&digest));
    let bad = |e: String| corrupt("token", &key, e);
    let name: String = row.try_get(1).map_err(|e| bad(e.to_string()))?;
    PrincipalName::parse(&name).map_err(&bad)?;
    let created_at: DateTime<Utc> = row.try_get(2).map_err(|e| bad(e.to_string()))?;
    Ok(BackupRecord::Token {
        name,
        digest: hex::encode(digest),
        created_at: rfc3339::check_stored(created_at).map_err(&bad)?,
    })
}

/// A task's row as statement parameters, owned.
struct TaskColumns {
    owner: String,
    id: uuid::Uuid,
    title: String,
    title_lower: String,
    description: Option<String>,
    status: &'static str,
    priority: &'static str,
    due_at: Option<DateTime<Utc>>,
    tags: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl TaskColumns {
    fn of(owner: &str, task: &Task) -> Self {
        let f = &task.fields;
        Self {
            owner: owner.to_owned(),
            id: task.id.as_uuid(),
            title: f.title.as_str().to_owned(),
            title_lower: f.title.as_str().to_lowercase(),
            description: f.description.as_ref().map(|d| d.as_str().to_owned()),
            status: f.status.as_str(),
            priority: f.priority.as_str(),
            due_at: f.due_at.map(|d| d.as_datetime()),
            tags: f.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: to_i64(task.version),
        }
    }

    /// The whole row in the column order of the `tasks` INSERT and COPY.
    fn row(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 12] {
        [
            &self.owner,
            &self.id,
            &self.title,
            &self.title_lower,
            &self.description,
            &self.status,
            &self.priority,
            &self.due_at,
            &self.tags,
            &self.created_at,
            &self.updated_at,
            &self.version,
        ]
    }
}

/// `q` as a LIKE pattern that matches it literally anywhere in the text.
fn contains_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The listing statement for `query` and its parameters. Only the filters
/// that are set appear in the SQL, so each combination gets its own cached
/// plan: an index scan of `(owner, id)` from the cursor, in the page's order.
pub fn list_sql(owner: &Owner, query: &ListQuery) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(owner.to_owned())];
    let mut add = |sql: &mut String, clause: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(after) = query.after {
        let clause = match query.order {
            Order::Asc => " AND id > ?",
            Order::Desc => " AND id < ?",
        };
        add(&mut sql, clause, Box::new(after.as_uuid()));
    }
    if let Some(s) = query.status {
        add(&mut sql, " AND status = ?", Box::new(s.as_str()));
    }
    if let Some(p) = query.priority {
        add(&mut sql, " AND priority = ?", Box::new(p.as_str()));
    }
    if let Some(t) = &query.tag {
        add(&mut sql, " AND tags @> ARRAY[?::text]", Box::new(t.clone()));
    }
    if let Some(b) = query.due_before {
        add(&mut sql, " AND due_at < ?", Box::new(b));
    }
    if let Some(q) = &query.q {
        add(
            &mut sql,
            " AND title_lower LIKE ? ESCAPE '\\'",
            Box::new(contains_pattern(q)),
        );
    }
    let order = match query.order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    // One row more than the page tells whether a next page exists.
    add(
        &mut sql,
        &format!(" ORDER BY id {order} LIMIT ?"),
        Box::new(to_i64(query.limit as u64).saturating_add(1)),
    );
    (sql, params)
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_task(&self, owner: &Owner, new: NewTask) -> StoreResult<Created> {
        let now = self.clock.now();
        let task = Task::create_at(new.fields, now);
        let mut client = self.conn().await?;
        let txn = client.transaction().await.map_err(db)?;
        if let Some(idem) = &new.idempotency {
            let snapshot = Json(&task);
            let digest = idem.request_digest.as_slice();
            // Claiming the key first makes a concurrent request with the same
            // key wait here until this transaction ends, then replay its result.
            let stmt = txn
                .prepare_cached(
                    "INSERT INTO idempotency_keys (owner, key, request_digest, created_at, task)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, key) DO NOTHING",
                )
                .await
                .map_err(db)?;
            let claimed = txn
                .execute(
                    &stmt,
                    &[&owner, &idem.key, &digest, &task.created_at, &snapshot],
                )
                .await
                .map_err(db)?;
            if claimed == 0 {
                let stmt = txn
                    .prepare_cached(
                        "SELECT request_digest, created_at, task FROM idempotency_keys
                         WHERE owner = $1 AND key = $2 FOR UPDATE",
                    )
                    .await
                    .map_err(db)?;
                let row = txn
                    .query_opt(&stmt, &[&owner, &idem.key])
                    .await
                    .map_err(db)?;
                if let Some(row) = row {
                    let read =
                        || -> Result<(Vec<u8>, DateTime<Utc>, Task), tokio_postgres::Error> {
                            let Json(original): Json<Task> = row.try_get(2)?;
                            Ok((row.try_get(0)?, row.try_get(1)?, original))
                        };
                    match read() {
                        Ok((stored, created_at, original))
                            if idempotency_fresh(created_at, now) =>
                        {
                            // Nothing was written: dropping the transaction rolls it back.
                            return if stored == idem.request_digest {
                                Ok(Created::Replayed(original))
                            } else {
                                Err(StorageError::IdempotencyMismatch)
                            };
                        }
                        Ok(_) => {}
                        // Reported, then replaced like an expired record.
                        Err(e) => {
                            corrupt(
                                "idempotency",
                                format!("idempotency_keys/{owner}/{}", idem.key),
                                e.to_string(),
                            );
                        }
                    }
                }
                // Expired, unreadable or swept meanwhile: the key starts afresh.
                let stmt = txn
                    .prepare_cached(
                        "INSERT INTO idempotency_keys (owner, key, request_digest, created_at, task)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (owner, key) DO UPDATE SET request_digest = EXCLUDED.request_digest,
                             created_at = EXCLUDED.created_at, task = EXCLUDED.task",
                    )
                    .await
                    .map_err(db)?;
                txn.execute(
                    &stmt,
                    &[&owner, &idem.key, &digest, &task.created_at, &snapshot],
                )
                .await
                .map_err(db)?;
            }
        }
        // Counts one more task unless the owner is at the limit (no row back).
        let stmt = txn
            .prepare_cached(
                "INSERT INTO task_counts (owner, n) SELECT $1, 1 WHERE $2::bigint > 0
                 ON CONFLICT (owner) DO UPDATE SET n = task_counts.n + 1 WHERE task_counts.n < $2
                 RETURNING n",
            )
            .await
            .map_err(db)?;
        let max = to_i64(new.max_tasks);
        if txn
            .query_opt(&stmt, &[&owner, &max])
            .await
            .map_err(db)?
            .is_none()
        {
            return Err(StorageError::QuotaExceeded { max: new.max_tasks });
        }
        let c = TaskColumns::of(owner, &task);
        let stmt = txn
            .prepare_cached(
                "INSERT INTO tasks (owner, id, title, title_lower, description, status, priority,
                                    due_at, tags, created_at, updated_at, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .await
            .map_err(db)?;
        txn.execute(&stmt, &c.row()).await.map_err(db)?;
        txn.commit().await.map_err(db)?;
        Ok(Created::New(task))
    }

    async fn get_task(&self, owner: &Owner, id: TaskId) -> StoreResult<Task> {
        let client = self.conn().await?;
        get_task_on(&client, owner, id).await
    }

    async fn list_tasks(&self, owner: &Owner, query: &ListQuery) -> StoreResult<Page> {
        let (sql, params) = list_sql(owner, query);
        let client = self.conn().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        let rows = client.query(&stmt, &refs(&params)).await.map_err(db)?;
        // The row after the page only says that there is a next page; the
        // cursor is the last row of the page, even one left out as unreadable.
        let next = (rows.len() > query.limit)
            .then(|| rows[query.limit - 1].try_get::<_, Uuid>(0).ok())
            .flatten()
            .map(TaskId::from_uuid);
        let mut items = Vec::with_capacity(query.limit);
        for r in rows.iter().take(query.limit) {
            match task_from_row(r, 0, owner) {
                Ok(t) => items.push(t),
                // Reported where it was found; the page goes on without it.
                Err(StorageError::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Page { items, next })
    }

    async fn update_task(
        &self,
        owner: &Owner,
        id: TaskId,
        change: TaskChange,
        expected: Option<u64>,
    ) -> StoreResult<Task> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE tasks SET title = $3, title_lower = $4, description = $5, status = $6,
                     priority = $7, due_at = $8, tags = $9, updated_at = $10, version = $11
                 WHERE owner = $1 AND id = $2 AND version = $12",
            )
            .await
            .map_err(db)?;
        // Each round reads the current version and writes only if it is still
        // current; a lost race re-reads. Without `expected` the change applies
        // to whatever version is current when it lands, as on redb.
        for _ in 0..64 {
            let current = get_task_on(&client, owner, id).await?;
            if expected.is_some_and(|v| v != current.version) {
                return Err(StorageError::VersionMismatch {
                    current: current.version,
                });
            }
            let updated = change.apply(&current, self.clock.now());
            if updated.version == current.version {
                return Ok(updated);
            }
            let c = TaskColumns::of(owner, &updated);
            let written = client
                .execute(
                    &stmt,
                    &[
                        &owner,
                        &id.as_uuid(),
                        &c.title,
                        &c.title_lower,
                        &c.description,
                        &c.status,
                        &c.priority,
                        &c.due_at,
                        &c.tags,
                        &updated.updated_at,
                        &c.version,
                        &to_i64(current.version),
                    ],
                )
                .await
                .map_err(db)?;
            if written == 1 {
                return Ok(updated);
            }
        }
        Err(StorageError::Unavailable(format!(
            "task {id} is changing too often to update"
        )))
    }

    async fn delete_task(
        &self,
        owner: &Owner,
        id: TaskId,
        expected: Option<u64>,
    ) -> StoreResult<()> {
        let mut client = self.conn().await?;
        let txn = client.transaction().await.map_err(db)?;
        // The deleted row must decode, as on redb: an unreadable task is an
        // error for every request on it (and this transaction rolls back).
        let stmt = txn
            .prepare_cached(&format!(
                "DELETE FROM tasks WHERE owner = $1 AND id = $2 AND ($3::bigint IS NULL OR version = $3)
                 RETURNING {TASK_COLUMNS}"
            ))
            .await
            .map_err(db)?;
        let deleted = txn
            .query_opt(&stmt, &[&owner, &id.as_uuid(), &expected.map(to_i64)])
            .await
            .map_err(db)?;
        if let Some(row) = &deleted {
            task_from_row(row, 0, owner)?;
        } else {
            let stmt = txn
                .prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1 AND id = $2"
                ))
                .await
                .map_err(db)?;
            return match txn
                .query_opt(&stmt, &[&owner, &id.as_uuid()])
                .await
                .map_err(db)?
            {
                None => Err(StorageError::NotFound),
                Some(row) => Err(StorageError::VersionMismatch {
                    current: task_from_row(&row, 0, owner)?.version,
                }),
            };
        }
        let stmt = txn
            .prepare_cached("UPDATE task_counts SET n = GREATEST(n - 1, 0) WHERE owner = $1")
            .await
            .map_err(db)?;
        txn.execute(&stmt, &[&owner]).await.map_err(db)?;
        txn.commit().await.map_err(db)
    }

    async fn count_tasks(&self) -> StoreResult<u64> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached("SELECT COALESCE(SUM(n), 0)::bigint FROM task_counts")
            .await
            .map_err(db)?;
        let n: i64 = client.query_one(&stmt, &[]).await.map_err(db)?.get(0);
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn create_token(&self, name: &str, digest: TokenDigest) -> StoreResult<TokenInfo> {
        let client = self.conn().await?;
        let created_at = self.clock.now();
        let stmt = client
            .prepare_cached("INSERT INTO tokens (digest, name, created_at) VALUES ($1, $2, $3)")
            .await
            .map_err(db)?;
        match client
            .execute(&stmt, &[&digest.as_slice(), &name, &created_at])
            .await
        {
            Ok(_) => Ok(TokenInfo {
                name: name.to_owned(),
                created_at,
            }),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StorageError::AlreadyExists(format!("a token for `{name}`")))
            }
            Err(e) => Err(db(e)),
        }
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached("SELECT digest, name, created_at FROM tokens")
            .await
            .map_err(db)?;
        let mut out = Vec::new();
        for r in client.query(&stmt, &[]).await.map_err(db)? {
            match token_record(&r) {
                Ok(BackupRecord::Token {
                    name, created_at, ..
                }) => out.push(TokenInfo { name, created_at }),
                Ok(BackupRecord::Task { .. }) | Err(StorageError::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Byte order of names, as redb lists them, whatever the collation.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached("DELETE FROM tokens WHERE name = $1")
            .await
            .map_err(db)?;
        match client.execute(&stmt, &[&name]).await.map_err(db)? {
            0 => Err(StorageError::NotFound),
            _ => Ok(()),
        }
    }

    async fn principal(&self, digest: &TokenDigest) -> StoreResult<Option<String>> {
        let client = self.conn().await?;
        let stmt = client
            .prepare_cached("SELECT digest, name, created_at FROM tokens WHERE digest = $1")
            .await
            .map_err(db)?;
        let row = client
            .query_opt(&stmt, &[&digest.as_slice()])
            .await
            .map_err(db)?;
        match row.map(|r| token_record(&r)).transpose()? {
            Some(BackupRecord::Token { name, .. }) => Ok(Some(name)),
            _ => Ok(None),
        }
    }

    async fn export(&self) -> StoreResult<Export> {
        let mut client = self.conn().await?;
        // One snapshot for both tables while writers go on.
        let txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        txn.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(db)?;
        let out = export_in(&txn).await?;
        txn.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn import(&self, set: ImportSet) -> StoreResult<u64> {
        let mut client = self.conn().await?;
        let txn = client.transaction().await.map_err(db)?;
        txn.batch_execute(
            "SET LOCAL statement_timeout = 0;
             LOCK TABLE tasks, tokens, task_counts IN SHARE ROW EXCLUSIVE MODE",
        )
        .await
        .map_err(db)?;
        let occupied: bool = txn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tasks) OR EXISTS (SELECT 1 FROM tokens)",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if occupied {
            return Err(StorageError::AlreadyExists(
                "data in the target store".into(),
            ));
        }
        for t in &set.tokens {
            txn.execute(
                "INSERT INTO tokens (digest, name, created_at) VALUES ($1, $2, $3)",
                &[&t.digest.as_slice(), &t.name, &t.created_at],
            )
            .await
            .map_err(db)?;
        }
        let sink = txn
            .copy_in(
                "COPY tasks (owner, id, title, title_lower, description, status, priority, due_at,
                             tags, created_at, updated_at, version) FROM STDIN BINARY",
            )
            .await
            .map_err(db)?;
        let types = [
            Type::TEXT,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT_ARRAY,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::INT8,
        ];
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
        for (owner, task) in &set.tasks {
            let c = TaskColumns::of(owner, task);
            writer.as_mut().write(&c.row()).await.map_err(db)?;
        }
        writer.as_mut().finish().await.map_err(db)?;
        // Counts are rebuilt from scratch, so the quota holds per owner.
        txn.batch_execute("DELETE FROM task_counts")
            .await
            .map_err(db)?;
        let owners: Vec<&str> = set.counts.keys().map(String::as_str).collect();
        let counts: Vec<i64> = set.counts.values().map(|&n| to_i64(n)).collect();
        txn.execute(
            "INSERT INTO task_counts (owner, n) SELECT * FROM unnest($1::text[], $2::bigint[])",
            &[&owners, &counts],
        )
        .await
        .map_err(db)?;
        // Read back inside the transaction: a difference rolls everything back.
        set.verify(export_in(&txn).await?)?;
        txn.commit().await.map_err(db)?;
        Ok(set.len() as u64)
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        sweep(&self.pool, self.clock.as_ref()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.conn().await?;
        client.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }

    async fn close(&self) {
        if let Some(sweeper) = self.sweeper.lock().ok().and_then(|mut s| s.take()) {
            sweeper.abort();
        }
        // Idle connections are closed now; checked-out ones when returned.
        self.pool.close();
    }
}

/// Every readable record visible to `txn`; unreadable ones are listed.
async fn export_in(txn: &tokio_postgres::Transaction<'_>) -> StoreResult<Export> {
    let mut out = Export::default();
    for r in txn
        .query(
            "SELECT digest, name, created_at FROM tokens ORDER BY name",
            &[],
        )
        .await
        .map_err(db)?
    {
        out.push(token_record(&r))?;
    }
    let rows = txn
        .query(
            &format!("SELECT owner, {TASK_COLUMNS} FROM tasks ORDER BY owner, id"),
            &[],
        )
        .await
        .map_err(db)?;
    out.records.reserve(rows.len());
    for r in rows {
        out.push(task_record(&r))?;
    }
    Ok(out)
}

async fn get_task_on(
    client: &deadpool_postgres::Object,
    owner: &Owner,
    id: TaskId,
) -> StoreResult<Task> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1 AND id = $2"
        ))
        .await
        .map_err(db)?;
    match client
        .query_opt(&stmt, &[&owner, &id.as_uuid()])
        .await
        .map_err(db)?
    {
        Some(row) => task_from_row(&row, 0, owner),
        None => Err(StorageError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(contains_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn list_sql_has_only_the_filters_set() {
        let q = ListQuery {
            limit: 10,
            order: Order::Desc,
            tag: Some("ops".into()),
            after: Some(TaskId::new()),
            ..ListQuery::default()
        };
        let (sql, params) = list_sql("alice", &q);
        assert!(sql.ends_with(
            "WHERE owner = $1 AND id < $2 AND tags @> ARRAY[$3::text] ORDER BY id DESC LIMIT $4"
        ));
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn config_debug_hides_the_url() {
        let c = PostgresConfig::new("postgres://u:secret@db/x");
        assert!(!format!("{c:?}").contains("secret"));
        let pg = c.pg_config().unwrap();
        assert_eq!(pg.get_options(), Some("-c statement_timeout=5000"));
    }

    #[test]
    fn migrations_are_dense_and_ordered() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
