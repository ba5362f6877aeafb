//! The tables of the database file and their creation. Table names carry a
//! layout version (`_v1`): a new layout is a new table, migrated on open.

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use super::keys::{expiry_key, idem_key_name};
use crate::domain::{DueAt, PrincipalName, TokenName};
use crate::storage::StoreResult;
use crate::storage::codec::{decode_key_record, decode_token};

/// Tasks by `owner 0x00 id(16 bytes, big-endian)`: one owner's tasks are
/// contiguous and in creation order, so a page is one range scan.
pub(super) const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks_v1");
/// Number of tasks per owner, kept in the same transactions as `TASKS`.
pub(super) const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("task_counts_v1");
/// Token digest to token record (see `codec::decode_token`), several per principal.
pub(super) const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens_v2");
/// `principal 0x00 token name` to the digest of the current token of that
/// name: at most one current token per principal and name.
pub(super) const TOKEN_NAMES: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("token_names_v2");
/// Layout 1 (one token per principal), migrated into `TOKENS` and
/// `TOKEN_NAMES` on open and then deleted.
const TOKENS_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens_v1");
const TOKEN_NAMES_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("token_names_v1");
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
        migrate_tokens_v1(&txn)?;
        txn.open_table(TOKENS)?;
        txn.open_table(TOKEN_NAMES)?;
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

/// Moves the tokens of layout 1 into layout 2 in the opening transaction:
/// each record is copied as it is (a version-1 record decodes as the token
/// named `default`; an unreadable one stays reported as before), and the
/// readable ones are indexed by principal and name.
fn migrate_tokens_v1(txn: &redb::WriteTransaction) -> StoreResult<()> {
    if !txn.list_tables()?.any(|t| t.name() == TOKENS_V1.name()) {
        return Ok(());
    }
    let mut moved = 0usize;
    {
        let old = txn.open_table(TOKENS_V1)?;
        let mut tokens = txn.open_table(TOKENS)?;
        let mut names = txn.open_table(TOKEN_NAMES)?;
        for e in old.iter()? {
            let (k, v) = e?;
            tokens.insert(k.value(), v.value())?;
            if let Ok(t) = decode_token("tokens_v1", k.value(), v.value()) {
                names.insert(token_name_key(&t.principal, &t.name).as_slice(), k.value())?;
            }
            moved += 1;
        }
    }
    txn.delete_table(TOKENS_V1)?;
    txn.delete_table(TOKEN_NAMES_V1)?;
    tracing::info!(
        tokens = moved,
        "migrated stored tokens to the named-token layout"
    );
    Ok(())
}

/// The key of `TOKEN_NAMES`: `principal 0x00 name` (neither contains 0x00).
pub(super) fn token_name_key(principal: &PrincipalName, name: &TokenName) -> Vec<u8> {
    let mut k = Vec::with_capacity(principal.len() + name.as_str().len() + 1);
    k.extend_from_slice(principal.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_str().as_bytes());
    k
}
