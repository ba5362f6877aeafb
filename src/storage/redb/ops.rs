//! The store's operations, each a function of one redb transaction: the
//! writer runs the write operations inside its batch transaction, the reads
//! run in a read transaction of their own (see `RedbStore::read`).
//!
//! Every write operation checks all its preconditions before it writes
//! anything (see the module documentation of `storage::redb`).

use std::ops::Bound;

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::decoded::DecodedTasks;
use super::keys::{
    BY_DUE, BY_PRIORITY, BY_STATUS, BY_TAG, expiry_key, expiry_prefix, id_of_key, idem_key,
    idem_key_name, index_key_owner, index_keys, index_prefix, priority_value, split_task_key,
    status_value, tag_value, task_key, task_key_name, with_id,
};
use super::tables::{
    COUNTS, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, TASK_INDEX, TASKS, TOKEN_META, TOKEN_NAMES_V1,
    TOKENS_V1,
};
use super::tokens;
use crate::domain::{ListQuery, Order, Precondition, PrincipalName, Task, TaskChange, TaskId};
use crate::storage::codec::{decode_key_record, decode_task, encode_key_record, encode_task};
use crate::storage::plan::{self, Driver, PageBuilder};
use crate::storage::rules::{self, KeyUse};
use crate::storage::{
    Created, Export, IDEMPOTENCY_SWEEP_CHUNK, INDEX_REPAIR_CHUNK, ImportSet, NewTask, Page, Record,
    StorageError, StoreResult,
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
    let mut index = txn.open_table(TASK_INDEX)?;
    for k in index_keys(owner, &task) {
        index.insert(k.as_slice(), ())?;
    }
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
    get_task_in(&table, owner, id, None)
}

/// A page of `query` (see `storage::plan` for how it is found), its records
/// decoded through `decoded` when given, else afresh.
pub(super) fn list_tasks(
    txn: &ReadTransaction,
    owner: &PrincipalName,
    query: &ListQuery,
    decoded: Option<&DecodedTasks>,
) -> StoreResult<Page> {
    let tasks = txn.open_table(TASKS)?;
    let index = txn.open_table(TASK_INDEX)?;
    if let Some(before) = query.due_before
        && let Some(ids) = due_candidates(&index, owner, before, query)?
    {
        let mut page = PageBuilder::bounded(query);
        for id in ids {
            page.admit(id);
            if !page.offer(read_candidate(&tasks, owner, id, decoded)?) {
                break;
            }
        }
        return Ok(page.finish());
    }
    let mut page = PageBuilder::budgeted(query);
    let driver = plan::driver(query);
    if driver == Driver::Id {
        let (lo, hi) = id_range(
            &task_key(owner, TaskId::from_u128(0))[..owner.len() + 1],
            query,
        );
        let range = tasks.range(lo.as_slice()..hi.as_slice())?;
        let mut visit = |e: TaskEntry| -> StoreResult<bool> {
            let (k, v) = e?;
            let key = k.value();
            let id = id_of_key(key);
            if !page.admit(id) {
                return Ok(false);
            }
            Ok(page.offer(readable(decode(decoded, key, id, v.value()))?))
        };
        walk(range, query.order, &mut visit)?;
        return Ok(page.finish());
    }
    let prefix = match driver {
        Driver::Tag(t) => index_prefix(owner, BY_TAG, &tag_value(t)),
        Driver::Status(s) => index_prefix(owner, BY_STATUS, &status_value(s)),
        Driver::Priority(p) => index_prefix(owner, BY_PRIORITY, &priority_value(p)),
        Driver::Id => unreachable!("handled above"),
    };
    let (lo, hi) = id_range(&prefix, query);
    let range = index.range(lo.as_slice()..hi.as_slice())?;
    let mut visit = |e: IndexEntry| -> StoreResult<bool> {
        let (k, _) = e?;
        let id = id_of_key(k.value());
        if !page.admit(id) {
            return Ok(false);
        }
        Ok(page.offer(read_candidate(&tasks, owner, id, decoded)?))
    };
    walk(range, query.order, &mut visit)?;
    Ok(page.finish())
}

/// One entry of a range over the tasks table.
type TaskEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// One entry of a range over the index.
type IndexEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, ()>,
    ),
    redb::StorageError,
>;

/// The keys `prefix id` a page may visit: after the cursor in the page's
/// order, as a half-open range `lo..hi`.
fn id_range(prefix: &[u8], query: &ListQuery) -> (Vec<u8>, Vec<u8>) {
    let at = |id: u128| with_id(prefix, TaskId::from_u128(id));
    // The first key past every `prefix id`.
    let mut end = prefix.to_vec();
    end.extend_from_slice(&[0xff; 17]);
    match (query.order, query.after) {
        (Order::Asc, Some(after)) => match after.as_u128().checked_add(1) {
            Some(next) => (at(next), end),
            None => (end.clone(), end),
        },
        (Order::Desc, Some(after)) => (at(0), at(after.as_u128())),
        (_, None) => (at(0), end),
    }
}

/// Visits a range in `order` until `visit` says stop.
fn walk<'a, V: redb::Value + 'static>(
    range: redb::Range<'a, &'static [u8], V>,
    order: Order,
    visit: &mut impl FnMut(
        Result<
            (
                redb::AccessGuard<'a, &'static [u8]>,
                redb::AccessGuard<'a, V>,
            ),
            redb::StorageError,
        >,
    ) -> StoreResult<bool>,
) -> StoreResult<()> {
    match order {
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
    Ok(())
}

/// A decoded task, or `None` for an unreadable record (reported where it
/// was found; a page goes on without it).
fn readable(r: StoreResult<Task>) -> StoreResult<Option<Task>> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(StorageError::Corrupt { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The task an index entry names; `None` if it is unreadable or missing
/// (an index that disagrees with its records, which `check_indexes` reports).
fn read_candidate(
    tasks: &impl ReadableTable<&'static [u8], &'static [u8]>,
    owner: &PrincipalName,
    id: TaskId,
    decoded: Option<&DecodedTasks>,
) -> StoreResult<Option<Task>> {
    match get_task_in(tasks, owner, id, decoded) {
        Err(StorageError::NotFound) => Ok(None),
        r => readable(r),
    }
}

/// Case 1 of `storage::plan`: the ids of the owner's tasks due before
/// `before`, after the cursor and in page order, if there are at most the
/// query's budget of them (due at all); `None` if there are more.
fn due_candidates(
    index: &impl ReadableTable<&'static [u8], ()>,
    owner: &PrincipalName,
    before: DateTime<Utc>,
    query: &ListQuery,
) -> StoreResult<Option<Vec<TaskId>>> {
    let budget = query.budget();
    let lo = index_prefix(owner, BY_DUE, &[]);
    // Due dates are whole microseconds: due < before exactly when due is
    // below `before` rounded up to a microsecond.
    let sub_micro = !before.timestamp_subsec_nanos().is_multiple_of(1_000);
    let micros = before
        .timestamp_micros()
        .saturating_add(i64::from(sub_micro));
    let hi = index_prefix(owner, BY_DUE, &expiry_prefix(micros));
    let mut ids = Vec::new();
    for e in index.range(lo.as_slice()..hi.as_slice())? {
        if ids.len() == budget {
            return Ok(None);
        }
        ids.push(id_of_key(e?.0.value()));
    }
    let after = query.after.map(|a| a.as_u128());
    match query.order {
        Order::Asc => {
            ids.retain(|id| after.is_none_or(|a| id.as_u128() > a));
            ids.sort_unstable();
        }
        Order::Desc => {
            ids.retain(|id| after.is_none_or(|a| id.as_u128() < a));
            ids.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
    Ok(Some(ids))
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
    let current = get_task_in(&tasks, owner, id, None)?;
    rules::check_version(&precondition, &current)?;
    let updated = change.apply(&current, now);
    if updated.version != current.version {
        tasks.insert(
            task_key(owner, id).as_slice(),
            encode_task(&updated).as_slice(),
        )?;
        let (old, new) = (index_keys(owner, &current), index_keys(owner, &updated));
        let mut index = txn.open_table(TASK_INDEX)?;
        for k in old.iter().filter(|k| !new.contains(k)) {
            index.remove(k.as_slice())?;
        }
        for k in new.iter().filter(|k| !old.contains(k)) {
            index.insert(k.as_slice(), ())?;
        }
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
    let current = get_task_in(&tasks, owner, id, None)?;
    rules::check_version(&precondition, &current)?;
    let mut counts = txn.open_table(COUNTS)?;
    let count = counts.get(owner.as_str())?.map_or(0, |v| v.value());
    tasks.remove(task_key(owner, id).as_slice())?;
    let mut index = txn.open_table(TASK_INDEX)?;
    for k in index_keys(owner, &current) {
        index.remove(k.as_slice())?;
    }
    counts.insert(owner.as_str(), count.saturating_sub(1))?;
    Ok(())
}

pub(super) fn count_tasks(txn: &ReadTransaction) -> StoreResult<u64> {
    Ok(txn.open_table(TASKS)?.len()?)
}

pub(super) fn export(txn: &ReadTransaction) -> StoreResult<Export> {
    let v1 = txn.open_table(TOKENS_V1)?;
    let meta = txn.open_table(TOKEN_META)?;
    let tasks = txn.open_table(TASKS)?;
    export_from(tokens::load(&v1, &meta)?, &tasks)
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
        txn.delete_table(TASK_INDEX)?;
    }
    let mut tasks = txn.open_table(TASKS)?;
    let mut tokens = tokens::Tables::open(txn)?;
    rules::check_import_target(!tasks.is_empty()? || !tokens.is_empty()?)?;
    let mut counts = txn.open_table(COUNTS)?;
    for t in &set.tokens {
        tokens.insert(t)?;
    }
    tokens.reconcile(now)?;
    let mut index = txn.open_table(TASK_INDEX)?;
    for (owner, task) in &set.tasks {
        tasks.insert(
            task_key(owner, task.id).as_slice(),
            encode_task(task).as_slice(),
        )?;
        for k in index_keys(owner, task) {
            index.insert(k.as_slice(), ())?;
        }
    }
    for (owner, n) in &set.counts {
        counts.insert(owner.as_str(), *n)?;
    }
    set.verify(export_from(tokens.load()?, &tasks)?)?;
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

/// The task `owner`'s `id` names, decoded through `decoded` when given
/// (list pages), else afresh.
fn get_task_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    owner: &PrincipalName,
    id: TaskId,
    decoded: Option<&DecodedTasks>,
) -> StoreResult<Task> {
    let key = task_key(owner, id);
    let Some(v) = table.get(key.as_slice())? else {
        return Err(StorageError::NotFound);
    };
    decode(decoded, &key, id, v.value())
}

/// The task record `bytes` under `key`, through `decoded` when given.
fn decode(
    decoded: Option<&DecodedTasks>,
    key: &[u8],
    id: TaskId,
    bytes: &[u8],
) -> StoreResult<Task> {
    match decoded {
        Some(d) => d.decode(key, id, bytes),
        None => decode_task(task_key_name(key), id, bytes),
    }
}

/// A task record and its key as a record.
fn task_of(key: &[u8], value: &[u8]) -> StoreResult<Record> {
    let name = task_key_name(key);
    let (owner, id) = split_task_key(key).map_err(|e| StorageError::corrupt("task", name, e))?;
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

/// The most disagreements `check_indexes` lists (it counts them all).
const CHECK_REPORT_MAX: usize = 100;

/// Where the task index disagrees with the task records: each readable task
/// must have exactly its entries (`keys::index_keys`), and each entry must
/// belong to a readable task that has it. Reads every record and entry once
/// (plus one lookup each), without holding them in memory. Returns the total
/// count and up to [`CHECK_REPORT_MAX`] descriptions.
pub(super) fn check_indexes(txn: &ReadTransaction) -> StoreResult<(u64, Vec<String>)> {
    let tasks = txn.open_table(TASKS)?;
    let index = txn.open_table(TASK_INDEX)?;
    let mut count = 0u64;
    let mut found = Vec::new();
    let mut report = |what: String| {
        count += 1;
        if found.len() < CHECK_REPORT_MAX {
            found.push(what);
        }
    };
    for e in tasks.iter()? {
        let (k, v) = e?;
        let Ok((owner, id)) = split_task_key(k.value()) else {
            continue;
        };
        let Some(task) = readable(decode_task(task_key_name(k.value()), id, v.value()))? else {
            continue;
        };
        for key in index_keys(&owner, &task) {
            if index.get(key.as_slice())?.is_none() {
                report(format!(
                    "task {owner}/{id}: index entry 0x{} is missing",
                    hex::encode(&key)
                ));
            }
        }
    }
    for e in index.iter()? {
        let (k, _) = e?;
        let key = k.value();
        if !entry_agrees(&tasks, key)? {
            report(format!(
                "index entry 0x{}: no readable task has it",
                hex::encode(key)
            ));
        }
    }
    Ok((count, found))
}

/// What one step of the index repair found: the keys to fix, and the last
/// key it read (`None` when it reached the end).
pub(super) type Found = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Part of the task index repair (`RedbStore::repair_indexes`): up to
/// [`INDEX_REPAIR_CHUNK`] task records after the key `after` (from the start
/// when `None`). Returns the keys of the readable tasks among them that lack
/// one of their index entries, and the last key read (`None` at the end).
pub(super) fn tasks_lacking_entries(
    txn: &ReadTransaction,
    after: Option<&[u8]>,
) -> StoreResult<Found> {
    let tasks = txn.open_table(TASKS)?;
    let index = txn.open_table(TASK_INDEX)?;
    let range = tasks.range::<&[u8]>((
        after.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    ))?;
    let (mut lacking, mut last, mut read) = (Vec::new(), None, 0);
    for e in range {
        let (k, v) = e?;
        let key = k.value();
        if let Some((owner, task)) = readable_task(key, v.value())? {
            for entry in index_keys(&owner, &task) {
                if index.get(entry.as_slice())?.is_none() {
                    lacking.push(key.to_vec());
                    break;
                }
            }
        }
        read += 1;
        if read == INDEX_REPAIR_CHUNK {
            last = Some(key.to_vec());
            break;
        }
    }
    Ok((lacking, last))
}

/// Writes the missing index entries of the tasks at `keys`, as their records
/// are in this transaction (a record changed or deleted since it was read
/// gets what it has now). Returns how many entries were added.
pub(super) fn add_missing_entries(txn: &WriteTransaction, keys: &[Vec<u8>]) -> StoreResult<u64> {
    let tasks = txn.open_table(TASKS)?;
    let mut index = txn.open_table(TASK_INDEX)?;
    let mut added = 0;
    for key in keys {
        let Some(v) = tasks.get(key.as_slice())? else {
            continue;
        };
        let Some((owner, task)) = readable_task(key, v.value())? else {
            continue;
        };
        for entry in index_keys(&owner, &task) {
            if index.insert(entry.as_slice(), ())?.is_none() {
                added += 1;
            }
        }
    }
    Ok(added)
}

/// Part of the task index repair: up to [`INDEX_REPAIR_CHUNK`] index entries
/// after `after`. Returns those that no readable task has (stray), and the
/// last entry read (`None` at the end).
pub(super) fn stray_entries(txn: &ReadTransaction, after: Option<&[u8]>) -> StoreResult<Found> {
    let tasks = txn.open_table(TASKS)?;
    let index = txn.open_table(TASK_INDEX)?;
    let range = index.range::<&[u8]>((
        after.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    ))?;
    let (mut stray, mut last, mut read) = (Vec::new(), None, 0);
    for e in range {
        let (k, _) = e?;
        let key = k.value();
        if !entry_agrees(&tasks, key)? {
            stray.push(key.to_vec());
        }
        read += 1;
        if read == INDEX_REPAIR_CHUNK {
            last = Some(key.to_vec());
            break;
        }
    }
    Ok((stray, last))
}

/// Removes those of `entries` that no readable task has in this transaction.
/// Returns how many were removed.
pub(super) fn remove_stray_entries(
    txn: &WriteTransaction,
    entries: &[Vec<u8>],
) -> StoreResult<u64> {
    let tasks = txn.open_table(TASKS)?;
    let mut index = txn.open_table(TASK_INDEX)?;
    let mut removed = 0;
    for key in entries {
        if !entry_agrees(&tasks, key)? && index.remove(key.as_slice())?.is_some() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The owner and task of a task record, `None` if unreadable (such a record
/// has no index entries).
fn readable_task(key: &[u8], value: &[u8]) -> StoreResult<Option<(PrincipalName, Task)>> {
    let Ok((owner, id)) = split_task_key(key) else {
        return Ok(None);
    };
    Ok(readable(decode_task(task_key_name(key), id, value))?.map(|t| (owner, t)))
}

/// Whether the index entry `key` belongs to a readable task that has it.
fn entry_agrees(
    tasks: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> StoreResult<bool> {
    let owner = index_key_owner(key).and_then(|o| PrincipalName::parse(o).ok());
    let (Some(owner), true) = (owner, key.len() >= 16) else {
        return Ok(false);
    };
    // Verification decodes afresh, past the serving paths' cache.
    Ok(match read_candidate(tasks, &owner, id_of_key(key), None)? {
        Some(task) => index_keys(&owner, &task).iter().any(|k| k == key),
        None => false,
    })
}
