//! The store's operations as statements: each function takes the store's
//! pool (through `PostgresStore::conn`) and does one operation, in one
//! transaction where it writes more than one row.

use tokio_postgres::IsolationLevel;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

use super::PostgresStore;
use super::rows::{
    TOKEN_COLUMNS, TaskColumns, key_record, task_from_row, task_record, to_i64, token_row,
};
use super::sql::{Params, TASK_COLUMNS, budget_end_sql, due_ids_sql, ids_page_sql, list_sql, refs};
use crate::domain::{
    ListQuery, Order, Precondition, PrincipalName, Task, TaskChange, TaskId, TokenDigest, TokenName,
};
use crate::storage::codec::TaskRecordV1;
use crate::storage::plan;
use crate::storage::rules::{self, KeyUse};
use crate::storage::tokens::token_infos;
use crate::storage::{
    Created, Export, ImportSet, IndexCheck, IndexRepair, NewTask, NewToken, Page, Record,
    StorageError, StoreResult, TokenInfo,
};
use chrono::{DateTime, Utc};

pub(super) async fn create_task(
    store: &PostgresStore,
    owner: &PrincipalName,
    new: NewTask,
) -> StoreResult<Created> {
    let now = store.clock.now();
    let task = Task::create_at(new.fields, now);
    let mut client = store.conn().await?;
    let txn = client.transaction().await?;
    if let Some(idem) = &new.idempotency {
        let snapshot = Json(TaskRecordV1::from(&task));
        let digest = idem.request_digest.as_slice();
        // Claiming the key first makes a concurrent request with the same
        // key wait here until this transaction ends, then replay its result.
        let stmt = txn
            .prepare_cached(
                "INSERT INTO idempotency_keys (owner, key, request_digest, created_at, task)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner, key) DO NOTHING",
            )
            .await?;
        let claimed = txn
            .execute(
                &stmt,
                &[
                    &owner.as_str(),
                    &idem.key,
                    &digest,
                    &task.created_at,
                    &snapshot,
                ],
            )
            .await?;
        if claimed == 0 {
            let stmt = txn
                .prepare_cached(
                    "SELECT request_digest, created_at, task FROM idempotency_keys
                     WHERE owner = $1 AND key = $2 FOR UPDATE",
                )
                .await?;
            let found = txn
                .query_opt(&stmt, &[&owner.as_str(), &idem.key])
                .await?
                .map(|row| key_record(&row, owner, &idem.key));
            if let KeyUse::Replay(original) = rules::use_key(found, idem, now)? {
                // Nothing was written: dropping the transaction rolls it back.
                return Ok(Created::Replayed(original));
            }
            // Expired, unreadable or swept meanwhile: the key starts afresh.
            let stmt = txn
                .prepare_cached(
                    "INSERT INTO idempotency_keys (owner, key, request_digest, created_at, task)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (owner, key) DO UPDATE SET request_digest = EXCLUDED.request_digest,
                         created_at = EXCLUDED.created_at, task = EXCLUDED.task",
                )
                .await?;
            txn.execute(
                &stmt,
                &[
                    &owner.as_str(),
                    &idem.key,
                    &digest,
                    &task.created_at,
                    &snapshot,
                ],
            )
            .await?;
        }
    }
    // One more task for the owner, under the row lock of its count; over
    // the quota, returning drops the transaction and rolls this back.
    let stmt = txn
        .prepare_cached(
            "INSERT INTO task_counts (owner, n) VALUES ($1, 1)
             ON CONFLICT (owner) DO UPDATE SET n = task_counts.n + 1
             RETURNING n",
        )
        .await?;
    let held: i64 = txn.query_one(&stmt, &[&owner.as_str()]).await?.get(0);
    rules::check_quota(u64::try_from(held - 1).unwrap_or(0), new.max_tasks)?;
    let c = TaskColumns::of(owner, &task);
    let stmt = txn
        .prepare_cached(
            "INSERT INTO tasks (owner, id, title, title_lower, description, status, priority,
                                due_at, tags, created_at, updated_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await?;
    txn.execute(&stmt, &c.row()).await?;
    txn.commit().await?;
    Ok(Created::New(task))
}

pub(super) async fn get_task(
    store: &PostgresStore,
    owner: &PrincipalName,
    id: TaskId,
) -> StoreResult<Task> {
    let client = store.conn().await?;
    get_task_on(&client, owner, id).await
}

/// A page of `query` (see `storage::plan` for how it is found).
pub(super) async fn list_tasks(
    store: &PostgresStore,
    owner: &PrincipalName,
    query: &ListQuery,
) -> StoreResult<Page> {
    let client = store.conn().await?;
    if let Some(before) = query.due_before {
        let budget = query.budget();
        let (sql, params) = due_ids_sql(owner, before, budget + 1);
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &refs(&params)).await?;
        if rows.len() <= budget {
            let after = query.after.map(|a| a.as_uuid());
            let ids: Vec<Uuid> = rows
                .iter()
                .map(|r| r.try_get::<_, Uuid>(0))
                .collect::<Result<_, _>>()?;
            let ids = ids
                .into_iter()
                .filter(|id| match (query.order, after) {
                    (_, None) => true,
                    (Order::Asc, Some(a)) => *id > a,
                    (Order::Desc, Some(a)) => *id < a,
                })
                .collect();
            let (sql, params) = ids_page_sql(owner, query, ids);
            return page_of(&client, owner, query, &sql, &params).await;
        }
    }
    let (sql, params) = list_sql(owner, query);
    let mut page = page_of(&client, owner, query, &sql, &params).await?;
    if page.next.is_none() && plan::has_residual(query, plan::driver(query)) {
        // Fewer matches than a page and a next: the candidates ran out, or
        // the budget did (then the page continues after the last candidate).
        let (sql, params) = budget_end_sql(owner, query);
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &refs(&params)).await?;
        if rows.len() == 2 {
            page.next = Some(TaskId::from_uuid(rows[0].try_get(0)?));
        }
    }
    Ok(page)
}

/// Runs a page statement that returns up to `limit + 1` matching rows.
async fn page_of(
    client: &deadpool_postgres::Object,
    owner: &PrincipalName,
    query: &ListQuery,
    sql: &str,
    params: &Params,
) -> StoreResult<Page> {
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, &refs(params)).await?;
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

pub(super) async fn update_task(
    store: &PostgresStore,
    owner: &PrincipalName,
    id: TaskId,
    change: TaskChange,
    precondition: Precondition,
) -> StoreResult<Task> {
    let client = store.conn().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE tasks SET title = $3, title_lower = $4, description = $5, status = $6,
                 priority = $7, due_at = $8, tags = $9, updated_at = $10, version = $11
             WHERE owner = $1 AND id = $2 AND version = $12",
        )
        .await?;
    // Each round reads the current version and writes only if it is still
    // current; a lost race re-reads. Without a precondition the change
    // applies to whatever version is current when it lands, as on redb.
    for _ in 0..64 {
        let current = get_task_on(&client, owner, id).await?;
        rules::check_version(&precondition, &current)?;
        let updated = change.apply(&current, store.clock.now());
        if updated.version == current.version {
            return Ok(updated);
        }
        let c = TaskColumns::of(owner, &updated);
        let written = client
            .execute(
                &stmt,
                &[
                    &owner.as_str(),
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
            .await?;
        if written == 1 {
            return Ok(updated);
        }
    }
    Err(StorageError::Busy {
        what: format!("task {id} is changing too often to update").into(),
    })
}

pub(super) async fn delete_task(
    store: &PostgresStore,
    owner: &PrincipalName,
    id: TaskId,
    precondition: Precondition,
) -> StoreResult<()> {
    let mut client = store.conn().await?;
    let txn = client.transaction().await?;
    // The row is locked, decoded and checked before it goes: an unreadable
    // task is an error for every request on it, as on redb (and this
    // transaction rolls back).
    let stmt = txn
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1 AND id = $2 FOR UPDATE"
        ))
        .await?;
    let current = match txn
        .query_opt(&stmt, &[&owner.as_str(), &id.as_uuid()])
        .await?
    {
        Some(row) => task_from_row(&row, 0, owner)?,
        None => return Err(StorageError::NotFound),
    };
    rules::check_version(&precondition, &current)?;
    let stmt = txn
        .prepare_cached("DELETE FROM tasks WHERE owner = $1 AND id = $2")
        .await?;
    txn.execute(&stmt, &[&owner.as_str(), &id.as_uuid()])
        .await?;
    let stmt = txn
        .prepare_cached("UPDATE task_counts SET n = GREATEST(n - 1, 0) WHERE owner = $1")
        .await?;
    txn.execute(&stmt, &[&owner.as_str()]).await?;
    Ok(txn.commit().await?)
}

pub(super) async fn count_tasks(store: &PostgresStore) -> StoreResult<u64> {
    let client = store.conn().await?;
    let stmt = client
        .prepare_cached("SELECT COALESCE(SUM(n), 0)::bigint FROM task_counts")
        .await?;
    let n: i64 = client.query_one(&stmt, &[]).await?.get(0);
    Ok(u64::try_from(n).unwrap_or_default())
}

/// `AlreadyExists` for a unique violation (a current token of that name, or
/// the digest), else the error.
fn token_conflict(e: tokio_postgres::Error, new: &NewToken) -> StorageError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StorageError::AlreadyExists(format!("a token `{}` for `{}`", new.name, new.principal))
    } else {
        e.into()
    }
}

const INSERT_TOKEN: &str = "INSERT INTO tokens (digest, name, token_name, created_at, expires_at, last_used_at, replaced_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Inserts `new` as made at `now` (a unique current name per principal:
/// `AlreadyExists` otherwise), on a client or in a transaction.
async fn insert_token(
    client: &impl deadpool_postgres::GenericClient,
    new: &NewToken,
    now: DateTime<Utc>,
) -> StoreResult<TokenInfo> {
    let info = TokenInfo::new(new, now);
    insert_token_row(client, &info)
        .await
        .map_err(|e| token_conflict(e, new))?;
    Ok(info)
}

/// The row of `info` in `tokens`.
async fn insert_token_row(
    client: &impl deadpool_postgres::GenericClient,
    info: &TokenInfo,
) -> Result<u64, tokio_postgres::Error> {
    let stmt = client.prepare_cached(INSERT_TOKEN).await?;
    let digest = info.digest.as_slice();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &digest,
        &info.principal.as_str(),
        &info.name.as_str(),
        &info.created_at,
        &info.expires_at,
        &info.last_used_at,
        &info.replaced_at,
    ];
    client.execute(&stmt, &params).await
}

pub(super) async fn create_token(store: &PostgresStore, new: NewToken) -> StoreResult<TokenInfo> {
    let client = store.conn().await?;
    insert_token(&client, &new, store.clock.now()).await
}

pub(super) async fn rotate_token(
    store: &PostgresStore,
    new: NewToken,
    grace: std::time::Duration,
) -> StoreResult<TokenInfo> {
    let mut client = store.conn().await?;
    let now = store.clock.now();
    let txn = client.transaction().await?;
    let row = txn
        .query_opt(
            "SELECT digest, expires_at FROM tokens
             WHERE name = $1 AND token_name = $2 AND replaced_at IS NULL FOR UPDATE",
            &[&new.principal.as_str(), &new.name.as_str()],
        )
        .await?
        .ok_or(StorageError::NotFound)?;
    let old: Vec<u8> = row.get(0);
    let expires_at: Option<DateTime<Utc>> = row.get(1);
    txn.execute(
        "UPDATE tokens SET replaced_at = $2, expires_at = $3 WHERE digest = $1",
        &[&old, &now, &crate::storage::retire(expires_at, now, grace)],
    )
    .await?;
    let info = insert_token(&txn, &new, now).await?;
    txn.commit().await?;
    Ok(info)
}

pub(super) async fn tokens(store: &PostgresStore) -> StoreResult<Vec<TokenInfo>> {
    let client = store.conn().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    token_infos(rows.iter().map(token_row))
}

pub(super) async fn revoke_token(
    store: &PostgresStore,
    principal: &PrincipalName,
    name: &TokenName,
) -> StoreResult<u64> {
    let client = store.conn().await?;
    let stmt = client
        .prepare_cached("DELETE FROM tokens WHERE name = $1 AND token_name = $2")
        .await?;
    match client
        .execute(&stmt, &[&principal.as_str(), &name.as_str()])
        .await?
    {
        0 => Err(StorageError::NotFound),
        n => Ok(n),
    }
}

pub(super) async fn token(
    store: &PostgresStore,
    digest: &TokenDigest,
) -> StoreResult<Option<TokenInfo>> {
    let client = store.conn().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE digest = $1"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&digest.as_slice()]).await?;
    row.map(|r| token_row(&r)).transpose()
}

/// Writes last-use times later than the stored ones, in one statement.
pub(super) async fn write_token_uses(
    pool: &deadpool_postgres::Pool,
    uses: &[(TokenDigest, DateTime<Utc>)],
) -> StoreResult<()> {
    let client = pool.get().await?;
    let digests: Vec<&[u8]> = uses.iter().map(|(d, _)| d.as_slice()).collect();
    let times: Vec<DateTime<Utc>> = uses.iter().map(|(_, t)| *t).collect();
    let stmt = client
        .prepare_cached(
            "UPDATE tokens SET last_used_at = u.at
             FROM unnest($1::bytea[], $2::timestamptz[]) AS u(digest, at)
             WHERE tokens.digest = u.digest
               AND (tokens.last_used_at IS NULL OR tokens.last_used_at < u.at)",
        )
        .await?;
    client.execute(&stmt, &[&digests, &times]).await?;
    Ok(())
}

pub(super) async fn export(store: &PostgresStore) -> StoreResult<Export> {
    let mut client = store.conn().await?;
    // One snapshot for both tables while writers go on.
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    txn.batch_execute("SET LOCAL statement_timeout = 0").await?;
    let out = export_in(&txn).await?;
    txn.commit().await?;
    Ok(out)
}

pub(super) async fn import(store: &PostgresStore, set: ImportSet) -> StoreResult<u64> {
    let mut client = store.conn().await?;
    let txn = client.transaction().await?;
    txn.batch_execute(
        "SET LOCAL statement_timeout = 0;
         LOCK TABLE tasks, tokens, task_counts IN SHARE ROW EXCLUSIVE MODE",
    )
    .await?;
    if set.replace {
        txn.batch_execute("TRUNCATE tasks, task_tags, tokens, task_counts, idempotency_keys")
            .await?;
    } else {
        let occupied: bool = txn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tasks) OR EXISTS (SELECT 1 FROM tokens)",
                &[],
            )
            .await?
            .get(0);
        rules::check_import_target(occupied)?;
    }
    for t in &set.tokens {
        insert_token_row(&txn, t).await?;
    }
    let sink = txn
        .copy_in(
            "COPY tasks (owner, id, title, title_lower, description, status, priority, due_at,
                         tags, created_at, updated_at, version) FROM STDIN BINARY",
        )
        .await?;
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
        writer.as_mut().write(&c.row()).await?;
    }
    writer.as_mut().finish().await?;
    // Counts are rebuilt from scratch, so the quota holds per owner.
    txn.batch_execute("DELETE FROM task_counts").await?;
    let owners: Vec<&str> = set.counts.keys().map(PrincipalName::as_str).collect();
    let counts: Vec<i64> = set.counts.values().map(|&n| to_i64(n)).collect();
    txn.execute(
        "INSERT INTO task_counts (owner, n) SELECT * FROM unnest($1::text[], $2::bigint[])",
        &[&owners, &counts],
    )
    .await?;
    // Read back inside the transaction: a difference rolls everything back.
    set.verify(export_in(&txn).await?)?;
    txn.commit().await?;
    Ok(set.len() as u64)
}

/// Every readable record visible to `txn`; unreadable ones are listed.
pub(super) async fn export_in(txn: &tokio_postgres::Transaction<'_>) -> StoreResult<Export> {
    let mut out = Export::default();
    for r in txn
        .query(
            &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name, token_name, created_at"),
            &[],
        )
        .await?
    {
        out.push(token_row(&r).map(Record::Token))?;
    }
    let rows = txn
        .query(
            &format!("SELECT owner, {TASK_COLUMNS} FROM tasks ORDER BY owner, id"),
            &[],
        )
        .await?;
    out.records.reserve(rows.len());
    for r in rows {
        out.push(task_record(&r))?;
    }
    Ok(out)
}

pub(super) async fn get_task_on(
    client: &deadpool_postgres::Object,
    owner: &PrincipalName,
    id: TaskId,
) -> StoreResult<Task> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE owner = $1 AND id = $2"
        ))
        .await?;
    match client
        .query_opt(&stmt, &[&owner.as_str(), &id.as_uuid()])
        .await?
    {
        Some(row) => task_from_row(&row, 0, owner),
        None => Err(StorageError::NotFound),
    }
}

/// Where `task_tags` disagrees with the tags of `tasks` (the other indexes
/// are PostgreSQL's own), read in one snapshot.
pub(super) async fn check_indexes(store: &PostgresStore) -> StoreResult<IndexCheck> {
    let mut client = store.conn().await?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    txn.batch_execute("SET LOCAL statement_timeout = 0").await?;
    let rows = txn
        .query(
            "WITH expected AS (SELECT DISTINCT owner, t AS tag, id FROM tasks, unnest(tags) AS t),
                  missing AS (SELECT * FROM expected EXCEPT SELECT owner, tag, id FROM task_tags),
                  extra AS (SELECT owner, tag, id FROM task_tags EXCEPT SELECT * FROM expected)
             SELECT 'missing', owner, tag, id FROM missing
             UNION ALL SELECT 'extra', owner, tag, id FROM extra",
            &[],
        )
        .await?;
    txn.commit().await?;
    let mut check = IndexCheck {
        disagreements: rows.len() as u64,
        examples: Vec::new(),
    };
    for r in rows.iter().take(100) {
        let (what, owner, tag, id): (&str, &str, &str, Uuid) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        check
            .examples
            .push(format!("task_tags {owner}/{tag}/{id}: {what}"));
    }
    Ok(check)
}

/// Makes `task_tags` agree with the tags of `tasks`: only needed if a writer
/// bypassed the triggers (disabled them, or wrote with
/// `session_replication_role = replica`), since the triggers of migration
/// 0003 keep it for every writer, also an earlier release's. First a check
/// in one snapshot, which takes no lock; only if it finds disagreements, two
/// statements that touch only the rows that disagree, under a SHARE lock on
/// `tasks` (writes wait until the repair commits): without it a write
/// committed between the two statements' snapshots could have an entry of
/// its old tags put back.
pub(super) async fn repair_indexes(store: &PostgresStore) -> StoreResult<IndexRepair> {
    if check_indexes(store).await?.is_consistent() {
        return Ok(IndexRepair::default());
    }
    let mut client = store.conn().await?;
    let txn = client.transaction().await?;
    txn.batch_execute("SET LOCAL statement_timeout = 0; LOCK TABLE tasks IN SHARE MODE")
        .await?;
    let added = txn
        .execute(
            "INSERT INTO task_tags (owner, tag, id)
             SELECT DISTINCT owner, t, id FROM tasks, unnest(tags) AS t
             ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    let removed = txn
        .execute(
            "DELETE FROM task_tags g WHERE NOT EXISTS (
                 SELECT 1 FROM tasks t WHERE t.id = g.id AND t.owner = g.owner AND g.tag = ANY(t.tags))",
            &[],
        )
        .await?;
    txn.commit().await?;
    Ok(IndexRepair { added, removed })
}
