//! What [`Store::export`](super::Store::export) reads and
//! [`Store::import`](super::Store::import) writes: typed records, and the
//! rules a set of records must follow before any backend writes it.

use std::collections::{BTreeMap, HashSet};

use super::{StorageError, StoreResult, TokenInfo};
use crate::domain::{PrincipalName, Task, TaskId, rfc3339};

/// One record of a store as export and import see it: everything a store
/// holds except idempotency records, which only matter for 24 hours.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Task { owner: PrincipalName, task: Task },
    Token(TokenInfo),
}

impl Record {
    /// Tokens by name, then tasks by owner and id: an order that does not
    /// depend on how a backend iterates.
    fn sort_key(&self) -> (u8, &str, u128) {
        match self {
            Record::Token(t) => (
                0,
                t.principal.as_str(),
                u128::from_be_bytes(t.digest[..16].try_into().unwrap_or_default()),
            ),
            Record::Task { owner, task } => (1, owner.as_str(), task.id.as_u128()),
        }
    }
}

/// What [`Store::export`](super::Store::export) read: every readable record,
/// and the key and reason of every record it had to leave out (already
/// logged and counted).
#[derive(Debug, Clone, Default)]
pub struct Export {
    pub records: Vec<Record>,
    pub unreadable: Vec<Unreadable>,
}

/// A stored record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub key: String,
    pub reason: String,
}

impl Unreadable {
    /// Records `e` (from [`StorageError::corrupt`]) as left out.
    fn of(e: StorageError) -> StoreResult<Self> {
        match e {
            StorageError::Corrupt { key, reason } => Ok(Self { key, reason }),
            other => Err(other),
        }
    }
}

impl Export {
    /// Adds the outcome of reading one record: a record, or a left-out one if
    /// it was corrupt; any other error ends the export.
    pub(crate) fn push(&mut self, r: StoreResult<Record>) -> StoreResult<()> {
        match r {
            Ok(r) => self.records.push(r),
            Err(e) => self.unreadable.push(Unreadable::of(e)?),
        }
        Ok(())
    }
}

/// Why a record of a set was refused by [`ImportSet::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {record} of the backup is invalid: {reason}")]
pub struct InvalidRecord {
    /// 1-based position among the records (the file's line number minus one).
    pub record: usize,
    pub reason: String,
}

/// Records checked as the API checks what it stores, and the only thing
/// [`Store::import`](super::Store::import) takes: task ids are UUIDv7, every
/// timestamp is whole microseconds in years 0000-9999, versions fit both
/// backends, `updated_at` is not before `created_at` (field values are
/// domain types, valid by construction), no task id or token digest appears
/// twice, and no principal has two current tokens of one name.
#[derive(Debug, Clone, Default)]
pub struct ImportSet {
    pub(crate) tokens: Vec<TokenInfo>,
    pub(crate) tasks: Vec<(PrincipalName, Task)>,
    /// Tasks per owner, for the quota counters.
    pub(crate) counts: BTreeMap<PrincipalName, u64>,
    /// Delete what the target holds (tasks, tokens, idempotency records) in
    /// the import's own transaction instead of refusing a target with data.
    pub(crate) replace: bool,
}

impl ImportSet {
    /// This set, replacing the target's data in the import's transaction
    /// (`restore --force`): the old data is gone only if the import commits.
    pub fn replacing(mut self) -> Self {
        self.replace = true;
        self
    }

    pub fn validate(records: Vec<Record>) -> Result<Self, InvalidRecord> {
        let mut set = Self::default();
        let mut ids = HashSet::new();
        let mut digests = HashSet::new();
        let mut current = HashSet::new();
        for (i, r) in records.into_iter().enumerate() {
            let bad = |reason: String| InvalidRecord {
                record: i + 1,
                reason,
            };
            match r {
                Record::Task { owner, task } => {
                    check_task(&task).map_err(&bad)?;
                    if !ids.insert(task.id) {
                        return Err(bad(format!("task {} appears twice", task.id)));
                    }
                    *set.counts.entry(owner.clone()).or_default() += 1;
                    set.tasks.push((owner, task));
                }
                Record::Token(mut t) => {
                    t.created_at = rfc3339::check_stored(t.created_at)
                        .map_err(|e| bad(format!("created_at: {e}")))?;
                    for (what, v) in [
                        ("expires_at", &mut t.expires_at),
                        ("last_used_at", &mut t.last_used_at),
                        ("replaced_at", &mut t.replaced_at),
                    ] {
                        if let Some(at) = v {
                            *at = rfc3339::check_stored(*at)
                                .map_err(|e| bad(format!("{what}: {e}")))?;
                        }
                    }
                    if !digests.insert(t.digest) {
                        return Err(bad("a second token with the same digest".into()));
                    }
                    if t.is_current() && !current.insert((t.principal.clone(), t.name.clone())) {
                        return Err(bad(format!(
                            "a second current token `{}` for `{}`",
                            t.name, t.principal
                        )));
                    }
                    set.tokens.push(t);
                }
            }
        }
        Ok(set)
    }

    /// How many records the set holds.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The set as records.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let tokens = self.tokens.iter().cloned().map(Record::Token);
        let tasks = self.tasks.iter().map(|(owner, task)| Record::Task {
            owner: owner.clone(),
            task: task.clone(),
        });
        tokens.chain(tasks)
    }

    /// Checks what a backend read back inside its import transaction against
    /// the set, before it commits: a difference is an error, and the
    /// transaction is rolled back.
    pub(crate) fn verify(&self, back: Export) -> StoreResult<()> {
        if let Some(u) = back.unreadable.first() {
            return Err(StorageError::Corrupt {
                key: u.key.clone(),
                reason: format!("unreadable right after the import: {}", u.reason),
            });
        }
        let mut written: Vec<Record> = self.records().collect();
        let mut read = back.records;
        written.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        read.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        if written != read {
            return Err(StorageError::Corrupt {
                key: "import".into(),
                reason: "the records read back differ from the records written".into(),
            });
        }
        Ok(())
    }
}

/// A task as the store may hold it (see [`ImportSet`]).
fn check_task(task: &Task) -> Result<(), String> {
    TaskId::from_stored(task.id.as_uuid())?;
    for (what, t) in [
        ("created_at", task.created_at),
        ("updated_at", task.updated_at),
    ] {
        rfc3339::check_stored(t).map_err(|e| format!("task {}: {what}: {e}", task.id))?;
    }
    task.check_stored()
        .map_err(|e| format!("task {}: {e}", task.id))
}
