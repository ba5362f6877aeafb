//! The schema: embedded, forward-only migrations applied in one transaction
//! under an advisory lock, so replicas starting together migrate one after
//! another.

use super::{PostgresConfig, connect_one};
use crate::storage::{StorageError, StoreResult};

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
    Migration {
        version: 3,
        name: "filter_indexes",
        sql: include_str!("migrations/0003_filter_indexes.sql"),
    },
    Migration {
        version: 4,
        name: "named_tokens",
        sql: include_str!("migrations/0004_named_tokens.sql"),
    },
];

/// The schema version this binary needs.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Key of the transaction-level advisory lock that serialises migrators
/// (ASCII "devops-m"): replicas starting together migrate one after another,
/// and all but the first find nothing to do.
const MIGRATION_LOCK: i64 = 0x6465_766f_7073_2d6d;

/// `up_to` (all when `None`), in one transaction under an advisory lock.
/// Returns the versions this call applied: empty when another process had
/// already done the work.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    up_to: Option<i32>,
) -> StoreResult<Vec<i32>> {
    let target = up_to.unwrap_or(SCHEMA_VERSION);
    let txn = client.transaction().await?;
    // Waiting for another migrator, or migrating a large table, may take longer
    // than a request's statement timeout.
    txn.batch_execute("SET LOCAL statement_timeout = 0").await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = txn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
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
            StorageError::io(format!("migration {} ({}) failed", m.version, m.name), e)
        })?;
        txn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        applied.push(m.version);
    }
    txn.commit().await?;
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
    let mut client = connect_one(&config.pg_config()?, &config.tls()?).await?;
    migrate(&mut client, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_dense_and_ordered() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
