//! The PostgreSQL backend, for swarms whose API tasks run on several nodes.
//!
//! Connections come from a deadpool pool of tokio-postgres clients, over TLS
//! (rustls) as the URL's `sslmode` asks: see [`tls`] for the modes and the CA.
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
//!
//! The parts: [`ops`] (each operation's statements), [`sql`] (the listing
//! statement built from a query), [`rows`] (rows to domain values and back),
//! [`migrations`] (the schema).

pub mod migrations;
mod ops;
mod rows;
mod sql;
pub mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Chain, Clock, Created, Export, IDEMPOTENCY_SWEEP_CHUNK, IDEMPOTENCY_SWEEP_INTERVAL, ImportSet,
    IndexCheck, IndexRepair, ListQuery, NewTask, NewToken, Page, StorageError, Store, StoreResult,
    TokenInfo, TokenUses, idempotency_cutoff,
};
use crate::domain::{
    Precondition, PrincipalName, Task, TaskChange, TaskId, TokenDigest, TokenName,
};

pub use self::migrations::{MIGRATIONS, Migration, SCHEMA_VERSION, migrate, run_migrations};
use self::rows::to_i64;
pub use self::sql::{Params, budget_end_sql, due_ids_sql, ids_page_sql, list_sql};
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/database` or `host=… dbname=…`,
    /// with libpq's `sslmode` and `sslrootcert` (see [`tls`]).
    pub url: String,
    /// PEM file of the CA(s) that sign the server's certificate, for
    /// `sslmode=verify-ca`/`verify-full`; wins over the URL's `sslrootcert`.
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
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
        let (rest, url_tls) = self.split_url()?;
        let mut pg: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| StorageError::io("invalid database URL", e))?;
        pg.ssl_mode(url_tls.mode.unwrap_or_default().driver_mode());
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

    fn split_url(&self) -> StoreResult<(String, tls::UrlTls)> {
        tls::split_url(&self.url)
            .map_err(|e| StorageError::unavailable(format!("invalid database URL: {e}")))
    }

    /// The TLS connector for the URL's `sslmode` and the CA file.
    pub fn tls(&self) -> StoreResult<MakeRustlsConnect> {
        let (_, url_tls) = self.split_url()?;
        let ca = self.ca_file.clone().or(url_tls.root_cert);
        tls::connector(url_tls.mode.unwrap_or_default(), ca.as_deref())
    }
}

/// The URL carries a password: never print it.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("clock", &self.clock)
            .finish()
    }
}

pub struct PostgresStore {
    pool: Pool,
    pub(super) clock: Arc<dyn Clock>,
    /// The background sweep of expired idempotency keys, stopped by `close`.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Token uses noted by authentication, written in the background.
    token_uses: Arc<TokenUses>,
}

impl PostgresStore {
    /// Connects, applies pending migrations and returns a store whose pool
    /// already holds its `pool_size` connections (see [`warm_up`]).
    pub async fn connect(config: &PostgresConfig) -> StoreResult<Self> {
        let pg = config.pg_config()?;
        let tls = config.tls()?;
        let mut first = connect_one(&pg, &tls).await?;
        migrate(&mut first, None).await?;
        drop(first);
        let manager = Manager::from_config(
            pg,
            tls,
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
            .map_err(|e| StorageError::io("cannot build the connection pool", e))?;
        warm_up(&pool).await;
        let sweeper = tokio::spawn(sweep_idempotency_keys(pool.clone(), config.clock.clone()));
        Ok(Self {
            pool,
            clock: config.clock.clone(),
            sweeper: Mutex::new(Some(sweeper)),
            token_uses: Arc::new(TokenUses::default()),
        })
    }

    pub(super) async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}

/// Opens every connection of the pool before the store is handed out, so a
/// replica that has just become ready (scaled up, started by a rolling
/// update) serves its first burst from open connections instead of opening
/// them under load, where each open (TCP, TLS, SCRAM) on a busy database can
/// outlast the pool's wait limit and turn into a 503. A connection that
/// cannot be opened now is only logged: the first one succeeded, and the
/// pool opens the missing ones on demand, as it does after a restart of the
/// server.
async fn warm_up(pool: &Pool) {
    let want = pool.status().max_size;
    // Every checkout is held until all are made: otherwise one connection
    // would be handed back and reused by the next checkout.
    let mut checkouts = tokio::task::JoinSet::new();
    for _ in 0..want {
        let pool = pool.clone();
        checkouts.spawn(async move { pool.get().await });
    }
    let opened = checkouts.join_all().await;
    let failed: Vec<String> = opened
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    drop(opened);
    if let Some(cause) = failed.first() {
        tracing::warn!(
            opened = want - failed.len(),
            wanted = want,
            cause = %cause,
            "could not open every pooled connection at start; the rest open on demand"
        );
    }
}

/// One connection outside the pool, driven by its own task.
pub async fn connect_one(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> StoreResult<tokio_postgres::Client> {
    let (client, connection) = pg.connect(tls.clone()).await?;
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
            Err(e) => tracing::debug!(error = %Chain(&e), "idempotency key sweep skipped"),
        }
    }
}

/// Deletes expired idempotency keys, [`IDEMPOTENCY_SWEEP_CHUNK`] per statement.
pub(super) async fn sweep(pool: &Pool, clock: &dyn Clock) -> StoreResult<u64> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE (owner, key) IN (
                 SELECT owner, key FROM idempotency_keys WHERE created_at <= $1 LIMIT $2)",
        )
        .await?;
    let chunk = to_i64(IDEMPOTENCY_SWEEP_CHUNK as u64);
    let mut total = 0;
    loop {
        let cutoff = idempotency_cutoff(clock.now());
        let n = client.execute(&stmt, &[&cutoff, &chunk]).await?;
        total += n;
        if n < IDEMPOTENCY_SWEEP_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// A row that cannot be decoded, reported (see [`StorageError::corrupt`]).
pub(super) fn corrupt(
    kind: &'static str,
    key: impl std::fmt::Display,
    reason: impl Into<String>,
) -> StorageError {
    StorageError::corrupt(kind, key, reason)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_task(&self, owner: &PrincipalName, new: NewTask) -> StoreResult<Created> {
        ops::create_task(self, owner, new).await
    }

    async fn get_task(&self, owner: &PrincipalName, id: TaskId) -> StoreResult<Task> {
        ops::get_task(self, owner, id).await
    }

    async fn list_tasks(&self, owner: &PrincipalName, query: &ListQuery) -> StoreResult<Page> {
        ops::list_tasks(self, owner, query).await
    }

    async fn update_task(
        &self,
        owner: &PrincipalName,
        id: TaskId,
        change: TaskChange,
        precondition: Precondition,
    ) -> StoreResult<Task> {
        ops::update_task(self, owner, id, change, precondition).await
    }

    async fn delete_task(
        &self,
        owner: &PrincipalName,
        id: TaskId,
        precondition: Precondition,
    ) -> StoreResult<()> {
        ops::delete_task(self, owner, id, precondition).await
    }

    async fn count_tasks(&self) -> StoreResult<u64> {
        ops::count_tasks(self).await
    }

    async fn check_indexes(&self) -> StoreResult<IndexCheck> {
        ops::check_indexes(self).await
    }

    async fn repair_indexes(&self) -> StoreResult<IndexRepair> {
        let done = ops::repair_indexes(self).await?;
        metrics::counter!("store_index_repaired_entries_total").increment(done.repaired());
        if done.repaired() > 0 {
            tracing::warn!(
                added = done.added,
                removed = done.removed,
                "task_tags repaired"
            );
        }
        Ok(done)
    }

    async fn create_token(&self, new: NewToken) -> StoreResult<TokenInfo> {
        ops::create_token(self, new).await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        ops::tokens(self).await
    }

    async fn revoke_token(&self, principal: &PrincipalName, name: &TokenName) -> StoreResult<u64> {
        ops::revoke_token(self, principal, name).await
    }

    async fn rotate_token(&self, new: NewToken, grace: Duration) -> StoreResult<TokenInfo> {
        ops::rotate_token(self, new, grace).await
    }

    async fn token(&self, digest: &TokenDigest) -> StoreResult<Option<TokenInfo>> {
        ops::token(self, digest).await
    }

    async fn write_token_uses(&self, uses: Vec<(TokenDigest, DateTime<Utc>)>) -> StoreResult<()> {
        ops::write_token_uses(&self.pool, &uses).await
    }

    fn token_uses(&self) -> &TokenUses {
        &self.token_uses
    }

    /// Writes on a task of its own; a failed write puts the uses back.
    fn spawn_token_use_write(&self) {
        let uses = self.token_uses.take();
        if uses.is_empty() {
            return;
        }
        let (pool, back) = (self.pool.clone(), self.token_uses.clone());
        tokio::spawn(async move {
            if let Err(e) = ops::write_token_uses(&pool, &uses).await {
                tracing::warn!(error = %Chain(&e), "writing token last-use times failed; retrying with the next");
                back.restore(uses);
            }
        });
    }

    fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    async fn export(&self) -> StoreResult<Export> {
        ops::export(self).await
    }

    async fn import(&self, set: ImportSet) -> StoreResult<u64> {
        ops::import(self, set).await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        sweep(&self.pool, self.clock.as_ref()).await
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.conn().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    fn publish_metrics(&self) {
        let status = self.pool.status();
        let in_use = status.size.saturating_sub(status.available);
        metrics::gauge!("store_pool_connections", "state" => "in_use").set(in_use as f64);
        metrics::gauge!("store_pool_connections", "state" => "idle").set(status.available as f64);
        metrics::gauge!("store_pool_waiting").set(status.waiting as f64);
    }

    async fn close(&self) {
        if let Err(e) = self.flush_token_uses().await {
            tracing::warn!(error = %Chain(&e), "could not write token last-use times at close");
        }
        if let Some(sweeper) = self.sweeper.lock().ok().and_then(|mut s| s.take()) {
            sweeper.abort();
        }
        // Idle connections are closed now; checked-out ones when returned.
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_url() {
        let c = PostgresConfig::new("postgres://u:secret@db/x");
        assert!(!format!("{c:?}").contains("secret"));
        let pg = c.pg_config().unwrap();
        assert_eq!(pg.get_options(), Some("-c statement_timeout=5000"));
    }
}
