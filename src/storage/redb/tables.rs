//! The tables of the database file and their creation. Table names carry a
//! layout version (`_v1`): a new layout is a new table. Tables another
//! release reads are never dropped or rewritten in a new format: during a
//! rolling update or a rollback two releases share the file (`multi-writer`).

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use super::keys::{expiry_key, idem_key_name};
use crate::domain::DueAt;
use crate::storage::StoreResult;
use crate::storage::codec::decode_key_record;

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

/// Creates missing tables and, on a file from before the expiry index,
/// indexes the idempotency records it holds.
pub(super) fn init_tables(db: &Database, now: DateTime<Utc>) -> StoreResult<()> {
    let txn = db.begin_write()?;
    {
        let indexed = txn
            .list_tables()?
            .any(|t| t.name() == IDEMPOTENCY_EXPIRY.name());
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
