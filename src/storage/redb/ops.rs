//! The store's operations, each a function of one redb transaction: the
//! writer runs the write operations inside its batch transaction, the reads
//! run in a read transaction of their own (see `RedbStore::read`).
//!
//! Every write operation checks all its preconditions before it writes
//! anything (see the module documentation of `storage::redb`).

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::keys::{
    expiry_key, expiry_prefix, id_of_key, idem_key, idem_key_name, owner_prefix_bounds,
    split_task_key, task_key, task_key_name,
};
use super::tables::{
    COUNTS, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, TASKS, TOKEN_META, TOKEN_NAMES_V1, TOKENS_V1,
};
use super::tokens;
use crate::domain::{ListQuery, Order, Precondition, PrincipalName, Task, TaskChange, TaskId};
use crate::storage::codec::{decode_key_record, decode_task, encode_key_record, encode_task};
use crate::storage::rules::{self, KeyUse};
use crate::storage::{
    Created, Export, IDEMPOTENCY_SWEEP_CHUNK, ImportSet, NewTask, Page, Record, StorageError,
    StoreResult,
};

pub(super) fn create_task(
    txn: &WriteTransaction,
    owner: &PrincipalName,
    new: NewTask,
    now: DateTime<Utc>,
) -> StoreResult<Created> {
    let mut idem_table = txn.open_table(IDEMPOTENCY)?;
    // The age of an expired record for this key, whose index entry goes.
    let mut expired_at = None;
    if let Some(idem) = &new.idempotency {
        let key = idem_key(owner, &idem.key);
        let found = idem_table
            .get(key.as_slice())?
            .map(|v| decode_key_record(idem_key_name(&key), v.value()));
        match rules::use_key(found, idem, now)? {
            KeyUse::Replay(task) => return Ok(Created::Replayed(task)),
            KeyUse::Create { expired_at: at } => expired_at = at,
        }
    }
    let mut counts = txn.open_table(COUNTS)?;
    let count = counts.get(owner.as_str())?.map_or(0, |v| v.value());
    rules::check_quota(count, new.max_tasks)?;
    let task = Task::create_at(new.fields, now);
    let mut tasks = txn.open_table(TASKS)?;
    tasks.insert(
        task_key(owner, task.id).as_slice(),
        encode_task(&task).as_slice(),
    )?;
    counts.insert(owner.as_str(), count + 1)?;
    if let Some(idem) = &new.idempotency {
        let key = idem_key(owner, &idem.key);
        let rec = encode_key_record(&idem.request_digest, task.created_at, &task);
        idem_table.insert(key.as_slice(), rec.as_slice())?;
        let mut index = txn.open_table(IDEMPOTENCY_EXPIRY)?;
        if let Some(at) = expired_at {
            index.remove(expiry_key(at, &key).as_slice())?;
        }
        index.insert(expiry_key(task.created_at, &key).as_slice(), ())?;
    }
    Ok(Created::New(task))
}

pub(super) fn get_task(
    txn: &ReadTransaction,
    owner: &PrincipalName,
    id: TaskId,
) -> StoreResult<Task> {
    let table = txn.open_table(TASKS)?;
    get_task_in(&table, owner, id)
}

/// One entry of a range over the tasks table.
type RangeEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

pub(super) fn list_tasks(
    txn: &ReadTransaction,
    owner: &PrincipalName,
    query: &ListQuery,
) -> StoreResult<Page> {
    let table = txn.open_table(TASKS)?;
    let (lo, hi) = owner_prefix_bounds(owner);
    let range = match (query.order, query.after) {
        (Order::Asc, Some(after)) => {
            let Some(next) = after.as_u128().checked_add(1) else {
                return Ok(Page {
                    items: vec![],
                    next: None,
                });
            };
            let start = task_key(owner, TaskId::from_u128(next));
            table.range(start.as_slice()..=hi.as_slice())
        }
        (Order::Desc, Some(after)) => {
            let end = task_key(owner, after);
            table.range(lo.as_slice()..end.as_slice())
        }
        (_, None) => table.range(lo.as_slice()..=hi.as_slice()),
    }?;
    let mut items = Vec::with_capacity(query.limit);
    let mut next = None;
    let mut visit = |entry: RangeEntry| -> StoreResult<bool> {
        let (k, v) = entry?;
        let key = k.value();
        let task = match decode_task(task_key_name(key), id_of_key(key), v.value()) {
            Ok(task) => task,
            // Reported where it was found; the page goes on without it.
            Err(StorageError::Corrupt { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        if query.matches(&task) {
            if items.len() == query.limit {
                next = items.last().map(|t: &Task| t.id);
                return Ok(false);
            }
            items.push(task);
        }
        Ok(true)
    };
    match query.order {
        Order::Asc => {
            for e in range {
                if !visit(e)? {
                    break;
                }
            }
        }
        Order::Desc => {
            for e in range.rev() {
                if !visit(e)? {
                    break;
                }
            }
        }
    }
    Ok(Page { items, next })
}

pub(super) fn update_task(
    txn: &WriteTransaction,
    owner: &PrincipalName,
    id: TaskId,
    change: TaskChange,
    precondition: Precondition,
    now: DateTime<Utc>,
) -> StoreResult<Task> {
    let mut tasks = txn.open_table(TASKS)?;
    let current = get_task_in(&tasks, owner, id)?;
    rules::check_version(&precondition, &current)?;
    let updated = change.apply(&current, now);
    if updated.version != current.version {
        tasks.insert(
            task_key(owner, id).as_slice(),
            encode_task(&updated).as_slice(),
        )?;
    }
    Ok(updated)
}

pub(super) fn delete_task(
    txn: &WriteTransaction,
    owner: &PrincipalName,
    id: TaskId,
    precondition: Precondition,
) -> StoreResult<()> {
    let mut tasks = txn.open_table(TASKS)?;
    let current = get_task_in(&tasks, owner, id)?;
    rules::check_version(&precondition, &current)?;
    let mut counts = txn.open_table(COUNTS)?;
    let count = counts.get(owner.as_str())?.map_or(0, |v| v.value());
    tasks.remove(task_key(owner, id).as_slice())?;
    counts.insert(owner.as_str(), count.saturating_sub(1))?;
    Ok(())
}

pub(super) fn count_tasks(txn: &ReadTransaction) -> StoreResult<u64> {
    Ok(txn.open_table(TASKS)?.len()?)
}

pub(super) fn export(txn: &ReadTransaction, now: DateTime<Utc>) -> StoreResult<Export> {
    let v1 = txn.open_table(TOKENS_V1)?;
    let meta = txn.open_table(TOKEN_META)?;
    let tasks = txn.open_table(TASKS)?;
    export_from(tokens::load(&v1, &meta, now)?, &tasks)
}

/// Writes `set` into empty tables, reads it back and verifies it; any error
/// means the batch must be rolled back.
pub(super) fn import(
    txn: &WriteTransaction,
    set: ImportSet,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let n = set.len() as u64;
    if set.replace {
        txn.delete_table(TASKS)?;
        txn.delete_table(TOKENS_V1)?;
        txn.delete_table(TOKEN_NAMES_V1)?;
        txn.delete_table(TOKEN_META)?;
        txn.delete_table(COUNTS)?;
        txn.delete_table(IDEMPOTENCY)?;
        txn.delete_table(IDEMPOTENCY_EXPIRY)?;
    }
    let mut tasks = txn.open_table(TASKS)?;
    let mut tokens = tokens::Tables::open(txn)?;
    rules::check_import_target(!tasks.is_empty()? || !tokens.is_empty()?)?;
    let mut counts = txn.open_table(COUNTS)?;
    for t in &set.tokens {
        tokens.insert(t)?;
    }
    tokens.reconcile(now)?;
    for (owner, task) in &set.tasks {
        tasks.insert(
            task_key(owner, task.id).as_slice(),
            encode_task(task).as_slice(),
        )?;
    }
    for (owner, n) in &set.counts {
        counts.insert(owner.as_str(), *n)?;
    }
    set.verify(export_from(tokens.load(now)?, &tasks)?)?;
    Ok(n)
}

/// What one sweep commit did.
pub(super) struct Swept {
    /// Index entries looked at (a full chunk means there may be more).
    pub(super) visited: usize,
    /// Records deleted.
    pub(super) deleted: u64,
}

/// Deletes up to [`IDEMPOTENCY_SWEEP_CHUNK`] idempotency records made at or
/// before `cutoff`, oldest first.
pub(super) fn sweep_chunk(txn: &WriteTransaction, cutoff: DateTime<Utc>) -> StoreResult<Swept> {
    let mut index = txn.open_table(IDEMPOTENCY_EXPIRY)?;
    let mut records = txn.open_table(IDEMPOTENCY)?;
    let end = expiry_prefix(cutoff.timestamp_micros().saturating_add(1));
    let keys: Vec<Vec<u8>> = index
        .range(..end.as_slice())?
        .take(IDEMPOTENCY_SWEEP_CHUNK)
        .map(|e| {
            e.map(|(k, _)| k.value().to_vec())
                .map_err(StorageError::from)
        })
        .collect::<StoreResult<_>>()?;
    let mut deleted = 0;
    for k in &keys {
        let record_key = &k[8..];
        let stored = records.get(record_key)?.map(|v| v.value().to_vec());
        if let Some(bytes) = stored {
            // The key may have been used again since: then only this stale
            // index entry goes.
            let expired = decode_key_record(idem_key_name(record_key), &bytes)
                .map_or(true, |r| r.created_at <= cutoff);
            if expired {
                records.remove(record_key)?;
                deleted += 1;
            }
        }
        index.remove(k.as_slice())?;
    }
    Ok(Swept {
        visited: keys.len(),
        deleted,
    })
}

fn get_task_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    owner: &PrincipalName,
    id: TaskId,
) -> StoreResult<Task> {
    let key = task_key(owner, id);
    match table.get(key.as_slice())? {
        Some(v) => decode_task(task_key_name(&key), id, v.value()),
        None => Err(StorageError::NotFound),
    }
}

/// A task record and its key as a record.
fn task_of(key: &[u8], value: &[u8]) -> StoreResult<Record> {
    let name = task_key_name(key);
    let (owner, id) = split_task_key(key).map_err(|e| StorageError::corrupt("task", &name, e))?;
    let task = decode_task(name, id, value)?;
    Ok(Record::Task { owner, task })
}

/// Every token and task; unreadable ones are listed, not fatal.
fn export_from(
    tokens: tokens::Loaded,
    tasks: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> StoreResult<Export> {
    let mut out = Export::default();
    for t in tokens.entries {
        out.push(Ok(Record::Token(t.info)))?;
    }
    for e in tokens.unreadable {
        out.push(Err(e))?;
    }
    for e in tasks.iter()? {
        let (k, v) = e?;
        out.push(task_of(k.value(), v.value()))?;
    }
    Ok(out)
}
