//! What a stored task may hold, decided once for every format that stores
//! or carries tasks.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::task::{Description, Priority, Status, Tag, Tags, Task, TaskFields, TaskId, Title};
use super::time::{DueAt, rfc3339};

/// A task as a storage or backup format holds it: plain values, before the
/// rules for stored values are applied. Every format converts to this and
/// back, and [`StoredTask::into_task`] applies the rules, so what any release
/// of the API may have stored is decided here once (see [`Title`] for why the
/// stored rules are wider than the input rules). `status` and `priority`
/// may borrow from the record being decoded: they are parsed, never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTask<'a> {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: Cow<'a, str>,
    pub priority: Cow<'a, str>,
    pub due_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl StoredTask<'_> {
    /// The task, if every value passes the rules for stored values; else why
    /// not, naming the field.
    pub fn into_task(self) -> Result<Task, String> {
        let tags = self
            .tags
            .into_iter()
            .map(Tag::from_stored)
            .collect::<Result<Vec<_>, _>>()
            .and_then(Tags::new)
            .map_err(|e| format!("tags: {e}"))?;
        let status = Status::parse(&self.status)
            .ok_or_else(|| format!("status `{}`", self.status.escape_debug()))?;
        let priority = Priority::parse(&self.priority)
            .ok_or_else(|| format!("priority `{}`", self.priority.escape_debug()))?;
        let task = Task {
            id: TaskId::from_stored(self.id)?,
            fields: TaskFields {
                title: Title::from_stored(self.title).map_err(|e| format!("title: {e}"))?,
                description: self
                    .description
                    .map(Description::from_stored)
                    .transpose()
                    .map_err(|e| format!("description: {e}"))?,
                status,
                priority,
                due_at: self
                    .due_at
                    .map(DueAt::from_stored)
                    .transpose()
                    .map_err(|e| format!("due_at: {e}"))?,
                tags,
            },
            created_at: rfc3339::check_stored(self.created_at)
                .map_err(|e| format!("created_at: {e}"))?,
            updated_at: rfc3339::check_stored(self.updated_at)
                .map_err(|e| format!("updated_at: {e}"))?,
            version: self.version,
        };
        task.check_stored()?;
        Ok(task)
    }
}

impl From<&Task> for StoredTask<'static> {
    fn from(task: &Task) -> Self {
        let f = &task.fields;
        Self {
            id: task.id.as_uuid(),
            title: f.title.as_str().to_owned(),
            description: f.description.as_ref().map(|d| d.as_str().to_owned()),
            status: Cow::Borrowed(f.status.as_str()),
            priority: Cow::Borrowed(f.priority.as_str()),
            due_at: f.due_at.map(|d| d.as_datetime()),
            tags: f.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: task.version,
        }
    }
}
