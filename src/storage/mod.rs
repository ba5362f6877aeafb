//! Storage: one trait, [`Store`], that every backend implements, and the types
//! its methods exchange. The HTTP layer only sees this trait; the shared
//! contract suite in `tests/contract/` holds every backend to the same behaviour.
//!
//! Rules that every backend needs live here, above them, and the backends only
//! do I/O: what an idempotency key means ([`idempotency_fresh`] and
//! `rules::use_key`), conditional writes, the quota, the order of tokens and
//! when a token admits a request, rotates or is used (`tokens`), the
//! validation of restored records ([`ImportSet`]), the reporting of records
//! that cannot be decoded ([`StorageError::corrupt`]), and the clock
//! ([`Clock`]) that dates tasks and idempotency records.
//!
//! The parts: [`error`](StorageError), `rules`, `tokens` ([`TokenInfo`],
//! [`TokenUses`]), `import` ([`Record`],
//! [`ImportSet`]), `clock`, `codec` (the versioned records of the embedded
//! backend), [`plan`] (how a filtered page is found, with its scan budget), and one module per backend: [`redb`] and [`postgres`].

mod clock;
pub mod codec;
mod error;
mod import;
pub mod plan;
pub mod postgres;
pub mod redb;
mod rules;
mod tokens;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    ListQuery, Precondition, PrincipalName, Task, TaskChange, TaskFields, TaskId, TokenDigest,
    TokenName,
};

pub use self::clock::{Clock, ManualClock, SystemClock, system_clock};
pub use self::error::{Cause, Chain, StorageError, StoreResult};
pub use self::import::{Export, ImportSet, InvalidRecord, Record, Unreadable};
pub use self::postgres::{PostgresConfig, PostgresStore};
pub use self::redb::{DbSharing, IndexUpkeep, RedbConfig, RedbStore};
pub use self::rules::{idempotency_cutoff, idempotency_fresh};
pub use self::tokens::{
    DEFAULT_ROTATION_GRACE, NewToken, PickError, TOKEN_SWEEP_INTERVAL, TOKEN_USE_INTERVAL,
    TokenInfo, TokenUses, pick_token, retire, token_admits,
};

/// How long an idempotency key remembers its request.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How often a running store deletes expired idempotency records.
pub const IDEMPOTENCY_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// The most idempotency records one sweep commit deletes, so a backlog never
/// becomes one long transaction.
pub const IDEMPOTENCY_SWEEP_CHUNK: usize = 1_000;

/// The most task records or index entries one step of an index repair
/// reads, and so the most entries one repair commit changes: a repair of a
/// large file is many short transactions, never one long one.
pub const INDEX_REPAIR_CHUNK: usize = 1_000;

/// How often a store whose file other processes write (`multi-writer`)
/// verifies and repairs its task index. A process of an earlier release
/// (during a rolling update, or after a rollback) writes tasks without index
/// entries, and until a repair filtered lists miss those tasks; this bounds
/// that window when nothing else repairs it (the deploy script repairs right
/// after a rollout converges). A verification reads every task record and
/// index entry once, in short read transactions on the blocking pool, and
/// writes only what disagrees.
pub const INDEX_VERIFY_INTERVAL: Duration = Duration::from_secs(300);

/// One page of a listing; `next` is the keyset position of the following page.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Task>,
    pub next: Option<TaskId>,
}

/// What [`Store::check_indexes`] found: how many index entries disagree with
/// the task records, and descriptions of the first of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexCheck {
    pub disagreements: u64,
    pub examples: Vec<String>,
}

impl IndexCheck {
    pub fn is_consistent(&self) -> bool {
        self.disagreements == 0
    }
}

/// What [`Store::repair_indexes`] did: index entries written for tasks that
/// lacked them, and entries removed that no task has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexRepair {
    pub added: u64,
    pub removed: u64,
}

impl IndexRepair {
    /// Entries changed.
    pub fn repaired(&self) -> u64 {
        self.added + self.removed
    }
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

/// The storage contract. Every method is durable when it returns `Ok`: an
/// acknowledged write survives a crash. Tasks are always scoped by `owner`; a
/// task of another owner behaves exactly as an absent one.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_task(&self, owner: &PrincipalName, new: NewTask) -> StoreResult<Created>;
    async fn get_task(&self, owner: &PrincipalName, id: TaskId) -> StoreResult<Task>;
    async fn list_tasks(&self, owner: &PrincipalName, query: &ListQuery) -> StoreResult<Page>;
    /// Applies `change` if `precondition` admits the stored version
    /// (`VersionMismatch` otherwise), checked in the same transaction as
    /// the write.
    async fn update_task(
        &self,
        owner: &PrincipalName,
        id: TaskId,
        change: TaskChange,
        precondition: Precondition,
    ) -> StoreResult<Task>;
    /// Deletes the task if `precondition` admits the stored version.
    async fn delete_task(
        &self,
        owner: &PrincipalName,
        id: TaskId,
        precondition: Precondition,
    ) -> StoreResult<()>;
    /// Tasks of every owner (for metrics and backups).
    async fn count_tasks(&self) -> StoreResult<u64>;
    /// Compares the list filters' indexes with the task records, in one
    /// snapshot: every readable task has exactly its index entries and every
    /// entry belongs to such a task. Reads everything: for tests and checks.
    async fn check_indexes(&self) -> StoreResult<IndexCheck>;
    /// Makes the list filters' indexes agree with the task records, in short
    /// transactions of at most [`INDEX_REPAIR_CHUNK`] records or entries
    /// each, while writes go on: each change is decided in the transaction
    /// that makes it, from the record as it is then. Everything written
    /// before the call is covered when it returns. The redb store runs it
    /// after opening and, when its file is shared, every
    /// [`INDEX_VERIFY_INTERVAL`]; logs and counts what it repaired.
    async fn repair_indexes(&self) -> StoreResult<IndexRepair>;

    /// Stores a token; `AlreadyExists` if the principal has a current token
    /// of that name (or the digest is taken).
    async fn create_token(&self, new: NewToken) -> StoreResult<TokenInfo>;
    /// Every readable stored token, in any order, with last-use times as
    /// written (a backend's part of [`Store::list_tokens`]).
    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>>;
    /// Every readable stored token, by principal, name (byte order whatever a
    /// backend's collation) and creation, with the last uses noted in memory
    /// but not yet written. Backends do not override it.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let mut tokens = self.tokens().await?;
        self.token_uses().overlay(&mut tokens);
        tokens.sort_unstable_by(|a, b| {
            (a.principal.as_str(), a.name.as_str(), a.created_at).cmp(&(
                b.principal.as_str(),
                b.name.as_str(),
                b.created_at,
            ))
        });
        Ok(tokens)
    }
    /// Removes every token of `principal` named `name` (the current one and
    /// any a rotation replaced) and returns how many; `NotFound` if none.
    async fn revoke_token(&self, principal: &PrincipalName, name: &TokenName) -> StoreResult<u64>;
    /// In one transaction: marks the current token `new.name` of
    /// `new.principal` replaced, valid until [`retire`]`(its expiry, now,
    /// grace)`, and stores `new` as the current one. `NotFound` if there is
    /// no current token of that name.
    async fn rotate_token(&self, new: NewToken, grace: Duration) -> StoreResult<TokenInfo>;
    /// The stored token with this digest, whether or not it admits requests.
    async fn token(&self, digest: &TokenDigest) -> StoreResult<Option<TokenInfo>>;
    /// Writes last-use times (only later than the stored ones, only for
    /// tokens that still exist), in one transaction.
    async fn write_token_uses(&self, uses: Vec<(TokenDigest, DateTime<Utc>)>) -> StoreResult<()>;
    /// The last uses noted in memory (see [`TokenUses`]).
    fn token_uses(&self) -> &TokenUses;
    /// Starts writing the noted last uses without waiting for it.
    fn spawn_token_use_write(&self);
    /// The store's clock (dates tokens and decides their expiry).
    fn clock(&self) -> &dyn Clock;
    /// The principal whose token has this digest if the token admits a
    /// request now ([`token_admits`]): an expired token is as unknown. Notes
    /// the use. Backends do not override it.
    async fn principal(&self, digest: &TokenDigest) -> StoreResult<Option<PrincipalName>> {
        let Some(token) = self.token(digest).await? else {
            return Ok(None);
        };
        let now = self.clock().now();
        if !token_admits(&token, now) {
            return Ok(None);
        }
        if self.token_uses().note(*digest, now) {
            self.spawn_token_use_write();
        }
        Ok(Some(token.principal))
    }
    /// Writes the noted last uses now (also done by `close`).
    async fn flush_token_uses(&self) -> StoreResult<()> {
        let uses = self.token_uses().take();
        if uses.is_empty() {
            return Ok(());
        }
        let r = self.write_token_uses(uses.clone()).await;
        if r.is_err() {
            self.token_uses().restore(uses);
        }
        r
    }

    /// Every readable record, read from one consistent snapshot while writes
    /// go on, and the records that could not be read (see [`Export`]).
    async fn export(&self) -> StoreResult<Export>;
    /// Writes `set` into this store, which must hold no tasks and no tokens
    /// (`AlreadyExists` otherwise), in one transaction that also reads the
    /// records back and checks them ([`ImportSet::verify`]): on any error
    /// nothing was written. Returns how many records were written.
    async fn import(&self, set: ImportSet) -> StoreResult<u64>;

    /// Deletes idempotency records older than [`IDEMPOTENCY_TTL`] by the
    /// store's clock, in commits of at most [`IDEMPOTENCY_SWEEP_CHUNK`], and
    /// returns how many. Stores also run it every [`IDEMPOTENCY_SWEEP_INTERVAL`].
    async fn sweep_expired(&self) -> StoreResult<u64>;

    /// Succeeds when the backend can serve reads and writes.
    async fn ping(&self) -> StoreResult<()>;
    /// Stops accepting work, finishes what was accepted and releases the backend.
    async fn close(&self);

    /// Sets the gauges that describe the backend now (file and file-system
    /// size, open readers, pool connections); called at each scrape. Cheap
    /// and never blocking on the database.
    fn publish_metrics(&self) {}
}
