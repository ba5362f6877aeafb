//! The key layouts of the tables (see `tables`): keys are compared as bytes,
//! so each layout puts what a range scan selects by first.

use chrono::{DateTime, Utc};
use redb::TableHandle;

use super::tables::{IDEMPOTENCY, TASKS};
use crate::domain::{PrincipalName, TaskId};

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

pub(super) fn owner_prefix_bounds(owner: &str) -> (Vec<u8>, Vec<u8>) {
    (
        task_key(owner, TaskId::from_u128(0)),
        task_key(owner, TaskId::from_u128(u128::MAX)),
    )
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

/// A task key as it appears in logs and reports.
pub(super) fn task_key_name(key: &[u8]) -> String {
    match split_task_key(key) {
        Ok((owner, id)) => format!("{}/{owner}/{id}", TASKS.name()),
        Err(_) => format!("{}/0x{}", TASKS.name(), hex::encode(key)),
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
