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
    COUNTS, IDEMPOTENCY, IDEMPOTENCY_EXPIRY, TASKS, TOKEN_NAMES, TOKENS, token_name_key,
};
use crate::domain::{
    ListQuery, Order, Precondition, PrincipalName, Task, TaskChange, TaskId, TokenDigest, TokenName,
};
use crate::storage::codec::{
    decode_key_record, decode_task, decode_token, encode_key_record, encode_task, encode_token,
};
use crate::storage::rules::{self, KeyUse};
use crate::storage::tokens::token_infos;
use crate::storage::{
    Created, Export, IDEMPOTENCY_SWEEP_CHUNK, ImportSet, NewTask, NewToken, Page, Record,
    StorageError, StoreResult, TokenInfo, retire,
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

pub(super) fn create_token(
    txn: &WriteTransaction,
    new: &NewToken,
    now: DateTime<Utc>,
) -> StoreResult<TokenInfo> {
    let mut names = txn.open_table(TOKEN_NAMES)?;
    let mut tokens = txn.open_table(TOKENS)?;
    let key = token_name_key(&new.principal, &new.name);
    if names.get(key.as_slice())?.is_some() {
        return Err(StorageError::AlreadyExists(format!(
            "a token `{}` for `{}`",
            new.name, new.principal
        )));
    }
    if tokens.get(new.digest.as_slice())?.is_some() {
        return Err(StorageError::AlreadyExists(
            "a token with this digest".into(),
        ));
    }
    let info = TokenInfo::new(new, now);
    tokens.insert(new.digest.as_slice(), encode_token(&info).as_slice())?;
    names.insert(key.as_slice(), new.digest.as_slice())?;
    Ok(info)
}

pub(super) fn rotate_token(
    txn: &WriteTransaction,
    new: &NewToken,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> StoreResult<TokenInfo> {
    let mut names = txn.open_table(TOKEN_NAMES)?;
    let mut tokens = txn.open_table(TOKENS)?;
    let key = token_name_key(&new.principal, &new.name);
    let old_digest = names
        .get(key.as_slice())?
        .map(|v| v.value().to_vec())
        .ok_or(StorageError::NotFound)?;
    let bytes = tokens
        .get(old_digest.as_slice())?
        .map(|v| v.value().to_vec())
        .ok_or(StorageError::NotFound)?;
    if tokens.get(new.digest.as_slice())?.is_some() {
        return Err(StorageError::AlreadyExists(
            "a token with this digest".into(),
        ));
    }
    let mut old = decode_token(token_key_name(&old_digest), &old_digest, &bytes)?;
    old.expires_at = Some(retire(old.expires_at, now, grace));
    old.replaced_at = Some(now);
    let info = TokenInfo::new(new, now);
    tokens.insert(old_digest.as_slice(), encode_token(&old).as_slice())?;
    tokens.insert(new.digest.as_slice(), encode_token(&info).as_slice())?;
    names.insert(key.as_slice(), new.digest.as_slice())?;
    Ok(info)
}

pub(super) fn tokens(txn: &ReadTransaction) -> StoreResult<Vec<TokenInfo>> {
    let tokens = txn.open_table(TOKENS)?;
    token_infos(tokens.iter()?.map(|e| {
        let (k, v) = e?;
        decode_token(token_key_name(k.value()), k.value(), v.value())
    }))
}

/// Removes every token of `principal` named `name`: a scan, since tokens a
/// rotation replaced are not indexed by name (tokens are few).
pub(super) fn revoke_token(
    txn: &WriteTransaction,
    principal: &PrincipalName,
    name: &TokenName,
) -> StoreResult<u64> {
    let mut names = txn.open_table(TOKEN_NAMES)?;
    let mut tokens = txn.open_table(TOKENS)?;
    let mut doomed = Vec::new();
    for e in tokens.iter()? {
        let (k, v) = e?;
        if let Ok(t) = decode_token("", k.value(), v.value())
            && t.principal == *principal
            && t.name == *name
        {
            doomed.push(k.value().to_vec());
        }
    }
    if doomed.is_empty() {
        return Err(StorageError::NotFound);
    }
    for d in &doomed {
        tokens.remove(d.as_slice())?;
    }
    names.remove(token_name_key(principal, name).as_slice())?;
    Ok(doomed.len() as u64)
}

pub(super) fn token(txn: &ReadTransaction, digest: &TokenDigest) -> StoreResult<Option<TokenInfo>> {
    let tokens = txn.open_table(TOKENS)?;
    match tokens.get(digest.as_slice())? {
        Some(v) => decode_token(token_key_name(digest), digest, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes last-use times later than the stored ones, for tokens that exist.
pub(super) fn write_token_uses(
    txn: &WriteTransaction,
    uses: &[(TokenDigest, DateTime<Utc>)],
) -> StoreResult<()> {
    let mut tokens = txn.open_table(TOKENS)?;
    for (digest, at) in uses {
        let Some(bytes) = tokens.get(digest.as_slice())?.map(|v| v.value().to_vec()) else {
            continue;
        };
        // An unreadable record stays as it is.
        let Ok(mut t) = decode_token("", digest, &bytes) else {
            continue;
        };
        if t.last_used_at.is_none_or(|l| l < *at) {
            t.last_used_at = Some(*at);
            tokens.insert(digest.as_slice(), encode_token(&t).as_slice())?;
        }
    }
    Ok(())
}

pub(super) fn export(txn: &ReadTransaction) -> StoreResult<Export> {
    let tokens = txn.open_table(TOKENS)?;
    let tasks = txn.open_table(TASKS)?;
    export_from(&tokens, &tasks)
}

/// Writes `set` into empty tables, reads it back and verifies it; any error
/// means the batch must be rolled back.
pub(super) fn import(txn: &WriteTransaction, set: ImportSet) -> StoreResult<u64> {
    let n = set.len() as u64;
    if set.replace {
        txn.delete_table(TASKS)?;
        txn.delete_table(TOKENS)?;
        txn.delete_table(TOKEN_NAMES)?;
        txn.delete_table(COUNTS)?;
        txn.delete_table(IDEMPOTENCY)?;
        txn.delete_table(IDEMPOTENCY_EXPIRY)?;
    }
    let mut tasks = txn.open_table(TASKS)?;
    let mut tokens = txn.open_table(TOKENS)?;
    rules::check_import_target(!tasks.is_empty()? || !tokens.is_empty()?)?;
    let mut names = txn.open_table(TOKEN_NAMES)?;
    let mut counts = txn.open_table(COUNTS)?;
    for t in &set.tokens {
        tokens.insert(t.digest.as_slice(), encode_token(t).as_slice())?;
        if t.is_current() {
            names.insert(
                token_name_key(&t.principal, &t.name).as_slice(),
                t.digest.as_slice(),
            )?;
        }
    }
    for (owner, task) in &set.tasks {
        tasks.insert(
            task_key(owner, task.id).as_slice(),
            encode_task(task).as_slice(),
        )?;
    }
    for (owner, n) in &set.counts {
        counts.insert(owner.as_str(), *n)?;
    }
    set.verify(export_from(&tokens, &tasks)?)?;
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

/// How a token record is named in reports: table and hex digest.
fn token_key_name(digest: &[u8]) -> String {
    format!(
        "{}/{}",
        redb::TableHandle::name(&TOKENS),
        hex::encode(digest)
    )
}

/// A task record and its key as a record.
fn task_of(key: &[u8], value: &[u8]) -> StoreResult<Record> {
    let name = task_key_name(key);
    let (owner, id) = split_task_key(key).map_err(|e| StorageError::corrupt("task", &name, e))?;
    let task = decode_task(name, id, value)?;
    Ok(Record::Task { owner, task })
}

/// Every record of the two tables; unreadable ones are listed, not fatal.
fn export_from(
    tokens: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tasks: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> StoreResult<Export> {
    let mut out = Export::default();
    for e in tokens.iter()? {
        let (k, v) = e?;
        out.push(decode_token(token_key_name(k.value()), k.value(), v.value()).map(Record::Token))?;
    }
    for e in tasks.iter()? {
        let (k, v) = e?;
        out.push(task_of(k.value(), v.value()))?;
    }
    Ok(out)
}
