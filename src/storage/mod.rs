//! Storage: one trait, [`Store`], that every backend implements, and the types
//! its methods exchange. The HTTP layer only sees this trait; the shared
//! contract suite in `tests/contract/` holds every backend to the same behaviour.

mod codec;
pub mod postgres;
pub mod redb;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{Owner, Priority, Status, Task, TaskChange, TaskFields, TaskId};

pub use self::postgres::{PostgresConfig, PostgresStore};
pub use self::redb::{DbSharing, RedbConfig, RedbStore};

/// How long an idempotency key remembers its request.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a storage operation did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    /// The caller's expected version is not the stored one.
    #[error("version mismatch: stored version is {current}")]
    VersionMismatch { current: u64 },
    /// The same idempotency key was used with a different request body.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    #[error("the principal already has {max} tasks")]
    QuotaExceeded { max: u64 },
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A stored record could not be decoded: the data is damaged or from an
    /// unknown format version. Never a panic.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The backend cannot be reached or has stopped (I/O, lock, connection).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StorageError>;

/// Sort order of a listing, by creation (task id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// A listing request. All filters combine with AND.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub priority: Option<Priority>,
    pub tag: Option<String>,
    /// Tasks due strictly before this instant (tasks without a due date never match).
    pub due_before: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the title, already lowercased.
    pub q: Option<String>,
    /// 1..=100, checked by the HTTP layer.
    pub limit: usize,
    pub order: Order,
    /// Keyset position: the listing continues after this id in `order`.
    pub after: Option<TaskId>,
}

impl ListQuery {
    /// Whether `task` passes every filter.
    pub fn matches(&self, task: &Task) -> bool {
        let f = &task.fields;
        self.status.is_none_or(|s| f.status == s)
            && self.priority.is_none_or(|p| f.priority == p)
            && self.tag.as_deref().is_none_or(|t| f.tags.contains(t))
            && self
                .due_before
                .is_none_or(|b| f.due_at.is_some_and(|d| d.as_datetime() < b))
            && self
                .q
                .as_deref()
                .is_none_or(|q| f.title.as_str().to_lowercase().contains(q))
    }
}

/// One page of a listing; `next` is the keyset position of the following page.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Task>,
    pub next: Option<TaskId>,
}

/// An `Idempotency-Key` with a digest of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_digest: [u8; 32],
}

/// What `create_task` asks for.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub fields: TaskFields,
    pub idempotency: Option<Idempotency>,
    /// The most tasks the owner may hold; a create beyond it fails.
    pub max_tasks: u64,
}

/// The result of a create: a new task, or the one an earlier request with the
/// same idempotency key created.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(Task),
    Replayed(Task),
}

impl Created {
    pub fn task(&self) -> &Task {
        match self {
            Created::New(t) | Created::Replayed(t) => t,
        }
    }
}

/// SHA-256 of a bearer token: what is stored instead of the token.
pub type TokenDigest = [u8; 32];

/// A token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The principal the token authenticates.
    pub name: String,
    #[serde(with = "crate::domain::rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// One record of a backup: everything a store holds except idempotency keys,
/// which only matter for 24 hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupRecord {
    Task {
        owner: String,
        task: Task,
    },
    Token {
        name: String,
        /// Hex SHA-256 of the token: backups never contain tokens.
        digest: String,
        #[serde(with = "crate::domain::rfc3339")]
        created_at: DateTime<Utc>,
    },
}

/// The storage contract. Every method is durable when it returns `Ok`: an
/// acknowledged write survives a crash. Tasks are always scoped by `owner`; a
/// task of another owner behaves exactly as an absent one.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_task(&self, owner: &Owner, new: NewTask) -> StoreResult<Created>;
    async fn get_task(&self, owner: &Owner, id: TaskId) -> StoreResult<Task>;
    async fn list_tasks(&self, owner: &Owner, query: &ListQuery) -> StoreResult<Page>;
    /// Applies `change` if the stored version equals `expected` (when given).
    async fn update_task(
        &self,
        owner: &Owner,
        id: TaskId,
        change: TaskChange,
        expected: Option<u64>,
    ) -> StoreResult<Task>;
    async fn delete_task(
        &self,
        owner: &Owner,
        id: TaskId,
        expected: Option<u64>,
    ) -> StoreResult<()>;
    /// Tasks of every owner (for metrics and backups).
    async fn count_tasks(&self) -> StoreResult<u64>;

    /// Registers a token digest for principal `name`; `AlreadyExists` if the name has one.
    async fn create_token(&self, name: &str, digest: TokenDigest) -> StoreResult<TokenInfo>;
    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>>;
    /// Removes the principal's token; `NotFound` if there is none.
    async fn revoke_token(&self, name: &str) -> StoreResult<()>;
    /// The principal whose token has this digest.
    async fn principal(&self, digest: &TokenDigest) -> StoreResult<Option<String>>;

    /// Every record, read from one consistent snapshot while writes go on.
    async fn export(&self) -> StoreResult<Vec<BackupRecord>>;
    /// Writes `records` into this store, which must hold no tasks and no tokens
    /// (`AlreadyExists` otherwise). Returns how many were written.
    async fn import(&self, records: Vec<BackupRecord>) -> StoreResult<u64>;

    /// Succeeds when the backend can serve reads and writes.
    async fn ping(&self) -> StoreResult<()>;
    /// Stops accepting work, finishes what was accepted and releases the backend.
    async fn close(&self);
}
