//! Rows to domain values and back. Values read are validated by the
//! domain's rules for stored values: a row they reject is `Corrupt`
//! (reported), never a panic.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::corrupt;
use crate::auth::PrincipalName;
use crate::domain::{
    Description, DueAt, Priority, Status, Tag, Tags, Task, TaskFields, TaskId, Title, rfc3339,
};
use crate::storage::{BackupRecord, StoreResult};

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
pub(super) fn task_record(row: &Row) -> StoreResult<BackupRecord> {
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
pub(super) fn token_record(row: &Row) -> StoreResult<BackupRecord> {
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
