//! The key layouts of the tables (see `tables`): keys are compared as bytes,
//! so each layout puts what a range scan selects by first.

use chrono::{DateTime, Utc};
use redb::TableHandle;

use super::tables::{IDEMPOTENCY, TASKS};
use crate::domain::{PrincipalName, Priority, Status, Task, TaskId};

/// The first 8 bytes of an expiry index key: microseconds since the epoch
/// with the sign bit flipped, big-endian, so byte order is time order (also
/// before 1970).
pub(super) fn expiry_prefix(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn expiry_key(created_at: DateTime<Utc>, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + record_key.len());
    k.extend_from_slice(&expiry_prefix(created_at.timestamp_micros()));
    k.extend_from_slice(record_key);
    k
}

pub(super) fn task_key(owner: &str, id: TaskId) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 17);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.as_u128().to_be_bytes());
    k
}

pub(super) fn id_of_key(key: &[u8]) -> TaskId {
    let mut b = [0u8; 16];
    b.copy_from_slice(&key[key.len() - 16..]);
    TaskId::from_u128(u128::from_be_bytes(b))
}

/// The owner and id a task key holds; the owner must be a principal name.
pub(super) fn split_task_key(key: &[u8]) -> Result<(PrincipalName, TaskId), String> {
    let Some(sep) = key.len().checked_sub(17) else {
        return Err("the key is too short".into());
    };
    if key[sep] != 0 {
        return Err("the key has no owner separator".into());
    }
    let owner = std::str::from_utf8(&key[..sep]).map_err(|_| "the owner is not UTF-8")?;
    Ok((PrincipalName::parse(owner)?, id_of_key(key)))
}

/// A task key as it appears in logs and reports, formatted only when it is
/// shown: a page decodes fifty records and names none of them unless one is
/// unreadable.
pub(super) fn task_key_name(key: &[u8]) -> TaskKeyName<'_> {
    TaskKeyName(key)
}

#[derive(Clone, Copy)]
pub(super) struct TaskKeyName<'a>(&'a [u8]);

impl std::fmt::Display for TaskKeyName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match split_task_key(self.0) {
            Ok((owner, id)) => write!(f, "{}/{owner}/{id}", TASKS.name()),
            Err(_) => write!(f, "{}/0x{}", TASKS.name(), hex::encode(self.0)),
        }
    }
}

pub(super) fn idem_key(owner: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + key.len() + 1);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn idem_key_name(key: &[u8]) -> String {
    format!(
        "{}/{}",
        IDEMPOTENCY.name(),
        String::from_utf8_lossy(key).replace('\0', "/")
    )
}

/// The kinds of entry in the task index (`tables::TASK_INDEX`), the byte
/// after the owner's separator.
pub(super) const BY_STATUS: u8 = b's';
pub(super) const BY_PRIORITY: u8 = b'p';
pub(super) const BY_TAG: u8 = b't';
pub(super) const BY_DUE: u8 = b'd';

/// The part of an index key before the id: `owner 0x00 kind value`, where
/// value is one byte for a status or a priority (its position in `ALL`),
/// the tag's bytes and 0x00 for a tag (tags hold no control characters), and
/// the due date as in [`expiry_prefix`] (microseconds) for a due date.
pub(super) fn index_prefix(owner: &str, kind: u8, value: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + value.len() + 19);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.push(kind);
    k.extend_from_slice(value);
    k
}

pub(super) fn status_value(s: Status) -> [u8; 1] {
    [Status::ALL.iter().position(|v| *v == s).unwrap_or(0) as u8]
}

pub(super) fn priority_value(p: Priority) -> [u8; 1] {
    [Priority::ALL.iter().position(|v| *v == p).unwrap_or(0) as u8]
}

pub(super) fn tag_value(tag: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(tag.len() + 1);
    v.extend_from_slice(tag.as_bytes());
    v.push(0);
    v
}

pub(super) fn due_value(at: DateTime<Utc>) -> [u8; 8] {
    expiry_prefix(at.timestamp_micros())
}

/// `prefix id`.
pub(super) fn with_id(prefix: &[u8], id: TaskId) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 16);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&id.as_u128().to_be_bytes());
    k
}

/// Every index key of `task`, owned by `owner`.
pub(super) fn index_keys(owner: &str, task: &Task) -> Vec<Vec<u8>> {
    let f = &task.fields;
    let mut keys = Vec::with_capacity(3 + f.tags.iter().count());
    keys.push(with_id(
        &index_prefix(owner, BY_STATUS, &status_value(f.status)),
        task.id,
    ));
    keys.push(with_id(
        &index_prefix(owner, BY_PRIORITY, &priority_value(f.priority)),
        task.id,
    ));
    for t in f.tags.iter() {
        keys.push(with_id(
            &index_prefix(owner, BY_TAG, &tag_value(t.as_str())),
            task.id,
        ));
    }
    if let Some(d) = f.due_at {
        keys.push(with_id(
            &index_prefix(owner, BY_DUE, &due_value(d.as_datetime())),
            task.id,
        ));
    }
    keys
}

/// The owner of an index key (the bytes before the first 0x00).
pub(super) fn index_key_owner(key: &[u8]) -> Option<&str> {
    let sep = key.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&key[..sep]).ok()
}
