//! The tables of the database file and their creation. Table names carry a
//! layout version (`_v1`): a new layout is a new table. Tables another
//! release reads are never dropped or rewritten in a new format: during a
//! rolling update or a rollback two releases share the file (`multi-writer`).

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use super::keys::{expiry_key, idem_key_name, index_keys, split_task_key, task_key_name};
use crate::domain::DueAt;
use crate::storage::StoreResult;
use crate::storage::codec::{decode_key_record, decode_task};

/// Tasks by `owner 0x00 id(16 bytes, big-endian)`: one owner's tasks are
/// contiguous and in creation order, so a page is one range scan.
pub(super) const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks_v1");
/// Number of tasks per owner, kept in the same transactions as `TASKS`.
pub(super) const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("task_counts_v1");
/// Token digest to the token's version-1 record (`codec::TokenRecordV1`:
/// principal and creation). Every release reads it: a token is valid only
/// while its digest is here. Shared with the release before named tokens,
/// which reads and writes it as it always did (see `super::tokens`).
pub(super) const TOKENS_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens_v1");
/// Principal to the digest of one of its valid tokens: the release before
/// named tokens refuses `token create` for a principal listed here and
/// revokes the token named here (see `super::tokens::sync_names`).
pub(super) const TOKEN_NAMES_V1: TableDefinition<&str, &[u8]> =
    TableDefinition::new("token_names_v1");
/// Token digest to the token's metadata (`codec::TokenRecordV2`: name,
/// expiry, last use, rotation), which only releases with named tokens read.
pub(super) const TOKEN_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("token_meta_v2");
/// `owner 0x00 key` to the request digest and the task it created.
pub(super) const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("idempotency_v1");
/// The idempotency records by age: `created_at (8 bytes, see expiry_key)
/// owner 0x00 key`, so the sweep finds expired ones with one range scan. Built
/// from `IDEMPOTENCY` when a file without it is first opened.
pub(super) const IDEMPOTENCY_EXPIRY: TableDefinition<&[u8], ()> =
    TableDefinition::new("idempotency_expiry_v1");
/// The list filters' index over `TASKS`: for each task, `owner 0x00 kind
/// value id` (see `keys::index_keys`) for its status, its priority, each of
/// its tags and its due date, written in the same transaction as the task.
/// Within one owner, kind and value, entries are in id order, so a filtered
/// page is a range scan from its cursor (see `storage::plan`). Unreadable
/// task records have no entries. Built from `TASKS` when a file without it
/// is first opened.
pub(super) const TASK_INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("task_index_v1");

/// Creates missing tables and, on a file from before an index, builds it:
/// the idempotency records by age, and the tasks by filter.
pub(super) fn init_tables(db: &Database, now: DateTime<Utc>) -> StoreResult<()> {
    let txn = db.begin_write()?;
    {
        let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
        let indexed = names.iter().any(|n| n == IDEMPOTENCY_EXPIRY.name());
        let tasks_indexed = names.iter().any(|n| n == TASK_INDEX.name());
        if !tasks_indexed {
            let tasks = txn.open_table(TASKS)?;
            let mut index = txn.open_table(TASK_INDEX)?;
            let (mut indexed_tasks, mut unreadable) = (0u64, 0u64);
            for e in tasks.iter()? {
                let (k, v) = e?;
                let Ok((owner, id)) = split_task_key(k.value()) else {
                    unreadable += 1;
                    continue;
                };
                // An unreadable record has no entries, as when it is written.
                let Ok(task) = decode_task(task_key_name(k.value()), id, v.value()) else {
                    unreadable += 1;
                    continue;
                };
                for key in index_keys(&owner, &task) {
                    index.insert(key.as_slice(), ())?;
                }
                indexed_tasks += 1;
            }
            if indexed_tasks + unreadable > 0 {
                tracing::info!(
                    tasks = indexed_tasks,
                    unreadable,
                    "indexed the tasks by status, priority, tag and due date"
                );
            }
        }
        txn.open_table(TASKS)?;
        txn.open_table(COUNTS)?;
        txn.open_table(TOKENS_V1)?;
        txn.open_table(TOKEN_NAMES_V1)?;
        txn.open_table(TOKEN_META)?;
        let records = txn.open_table(IDEMPOTENCY)?;
        let mut index = txn.open_table(IDEMPOTENCY_EXPIRY)?;
        if !indexed {
            let mut entries = Vec::new();
            for e in records.iter()? {
                let (k, v) = e?;
                // An unreadable record is indexed as the oldest: the next
                // sweep deletes it.
                let at = decode_key_record(idem_key_name(k.value()), v.value())
                    .map_or(DueAt::MIN, |r| r.created_at);
                entries.push(expiry_key(at, k.value()));
            }
            for k in &entries {
                index.insert(k.as_slice(), ())?;
            }
            if !entries.is_empty() {
                tracing::info!(records = entries.len(), now = %now, "indexed idempotency records by age");
            }
        }
    }
    Ok(txn.commit()?)
}
