//! Rows to domain values and back. Values read are validated by the
//! domain's rules for stored values: a row they reject is `Corrupt`
//! (reported), never a panic.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::corrupt;
use crate::domain::{PrincipalName, StoredTask, Task, TokenDigest, TokenName, rfc3339};
use crate::storage::TokenInfo;
use crate::storage::codec::TaskRecordV1;
use crate::storage::rules::KeyRecord;
use crate::storage::{Record, StoreResult};

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A task from [`TASK_COLUMNS`] starting at column `at`, of `owner` (for
/// reports). Values are validated by the domain's rules for stored values: a
/// row they reject is `Corrupt` (reported), never a panic.
pub(super) fn task_from_row(row: &Row, at: usize, owner: &str) -> StoreResult<Task> {
    let id: Uuid = row
        .try_get(at)
        .map_err(|e| corrupt("task", format!("tasks/{owner}"), e.to_string()))?;
    let key = format!("tasks/{owner}/{id}");
    let bad = |e: String| corrupt("task", &key, e);
    let get = |e: tokio_postgres::Error| bad(e.to_string());
    let version: i64 = row.try_get(at + 9).map_err(get)?;
    StoredTask {
        id,
        title: row.try_get(at + 1).map_err(get)?,
        description: row.try_get(at + 2).map_err(get)?,
        status: Cow::Borrowed(row.try_get(at + 3).map_err(get)?),
        priority: Cow::Borrowed(row.try_get(at + 4).map_err(get)?),
        due_at: row.try_get(at + 5).map_err(get)?,
        tags: row.try_get(at + 6).map_err(get)?,
        created_at: row.try_get(at + 7).map_err(get)?,
        updated_at: row.try_get(at + 8).map_err(get)?,
        version: u64::try_from(version).map_err(|_| bad("negative version".into()))?,
    }
    .into_task()
    .map_err(bad)
}

/// A row of `SELECT request_digest, created_at, task FROM idempotency_keys`
/// for `owner`'s `key`, decoded (a failure is reported).
pub(super) fn key_record(row: &Row, owner: &str, key: &str) -> StoreResult<KeyRecord> {
    let name = format!("idempotency_keys/{owner}/{key}");
    let bad = |e: String| corrupt("idempotency", &name, e);
    let digest: Vec<u8> = row.try_get(0).map_err(|e| bad(e.to_string()))?;
    let request_digest = <[u8; 32]>::try_from(digest.as_slice())
        .map_err(|_| bad("the request digest is not 32 bytes".into()))?;
    let Json(task): Json<TaskRecordV1> = row.try_get(2).map_err(|e| bad(e.to_string()))?;
    let task = task.into_task().map_err(|e| bad(format!("task: {e}")))?;
    Ok(KeyRecord {
        request_digest,
        created_at: row.try_get(1).map_err(|e| bad(e.to_string()))?,
        task,
    })
}

/// A row of `SELECT owner, TASK_COLUMNS` as a record.
pub(super) fn task_record(row: &Row) -> StoreResult<Record> {
    let owner: String = row
        .try_get(0)
        .map_err(|e| corrupt("task", "tasks", e.to_string()))?;
    let name = match PrincipalName::parse(&owner) {
        Ok(name) => name,
        Err(e) => {
            let id: Option<Uuid> = row.try_get(1).ok();
            return Err(corrupt(
                "task",
                format!("tasks/{}/{}", owner.escape_debug(), id.unwrap_or_default()),
                e,
            ));
        }
    };
    let task = task_from_row(row, 1, &owner)?;
    Ok(Record::Task { owner: name, task })
}

/// The columns of a token row, in the order [`token_row`] reads them.
pub(super) const TOKEN_COLUMNS: &str =
    "digest, name, token_name, created_at, expires_at, last_used_at, replaced_at";

/// A row of `SELECT {TOKEN_COLUMNS} FROM tokens`.
pub(super) fn token_row(row: &Row) -> StoreResult<TokenInfo> {
    let digest: Vec<u8> = row
        .try_get(0)
        .map_err(|e| corrupt("token", "tokens", e.to_string()))?;
    let key = format!("tokens/{}", hex::encode(&digest));
    let bad = |e: String| corrupt("token", &key, e);
    let digest = TokenDigest::try_from(digest.as_slice())
        .map_err(|_| bad("the digest is not 32 bytes".into()))?;
    let principal: String = row.try_get(1).map_err(|e| bad(e.to_string()))?;
    let name: String = row.try_get(2).map_err(|e| bad(e.to_string()))?;
    let time = |i: usize| -> StoreResult<Option<DateTime<Utc>>> {
        let t: Option<DateTime<Utc>> = row.try_get(i).map_err(|e| bad(e.to_string()))?;
        t.map(|t| rfc3339::check_stored(t).map_err(&bad))
            .transpose()
    };
    Ok(TokenInfo {
        principal: PrincipalName::parse(&principal).map_err(&bad)?,
        name: TokenName::parse(&name).map_err(&bad)?,
        digest,
        created_at: time(3)?.ok_or_else(|| bad("no created_at".into()))?,
        expires_at: time(4)?,
        last_used_at: time(5)?,
        replaced_at: time(6)?,
    })
}

/// A task's row as statement parameters, owned.
pub(super) struct TaskColumns {
    pub(super) owner: String,
    pub(super) id: uuid::Uuid,
    pub(super) title: String,
    pub(super) title_lower: String,
    pub(super) description: Option<String>,
    pub(super) status: &'static str,
    pub(super) priority: &'static str,
    pub(super) due_at: Option<DateTime<Utc>>,
    pub(super) tags: Vec<String>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) version: i64,
}

impl TaskColumns {
    pub(super) fn of(owner: &str, task: &Task) -> Self {
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
    pub(super) fn row(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 12] {
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
