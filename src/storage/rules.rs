//! The rules every backend applies, decided here once: the backends read
//! what a rule needs inside their transaction, call it, and write (or not)
//! as it says. The contract suite (`tests/contract/`) holds both backends to
//! them.

use chrono::{DateTime, Utc};

use super::{IDEMPOTENCY_TTL, Idempotency, StorageError, StoreResult};
use crate::domain::{Precondition, Task};

/// Whether an idempotency record made at `created_at` still answers for its
/// key at `now`. A record from the future (a clock stepped back) is fresh.
pub fn idempotency_fresh(created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    created_at > idempotency_cutoff(now)
}

/// Idempotency records made at or before this instant have expired at `now`.
pub fn idempotency_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::from_std(IDEMPOTENCY_TTL).expect("the TTL fits a chrono duration")
}

/// An idempotency record as a backend read it for a create's key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyRecord {
    /// SHA-256 of the request that made it.
    pub(crate) request_digest: [u8; 32],
    pub(crate) created_at: DateTime<Utc>,
    /// The task that request created, as it was then.
    pub(crate) task: Task,
}

/// What a create with an idempotency key does, given the record stored for
/// the key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyUse {
    /// Answer with the original task; write nothing.
    Replay(Task),
    /// Create, and store a record for the key (replacing the one found,
    /// whose age is `expired_at` when it had expired).
    Create { expired_at: Option<DateTime<Utc>> },
}

/// Decides what a create sending `request` at `now` does with the record
/// `found` for its key: a fresh record replays its task when the request is
/// the same and is [`StorageError::IdempotencyMismatch`] when it is not; an
/// expired record frees the key, and so does an unreadable one (already
/// reported where it was read), since nothing it holds can be answered.
pub(crate) fn use_key(
    found: Option<StoreResult<KeyRecord>>,
    request: &Idempotency,
    now: DateTime<Utc>,
) -> StoreResult<KeyUse> {
    match found {
        None | Some(Err(StorageError::Corrupt { .. })) => Ok(KeyUse::Create { expired_at: None }),
        Some(Err(e)) => Err(e),
        Some(Ok(rec)) if idempotency_fresh(rec.created_at, now) => {
            if rec.request_digest == request.request_digest {
                Ok(KeyUse::Replay(rec.task))
            } else {
                Err(StorageError::IdempotencyMismatch)
            }
        }
        Some(Ok(rec)) => Ok(KeyUse::Create {
            expired_at: Some(rec.created_at),
        }),
    }
}

/// A conditional write's check of the stored task.
pub(crate) fn check_version(precondition: &Precondition, current: &Task) -> StoreResult<()> {
    if precondition.admits(current.version) {
        Ok(())
    } else {
        Err(StorageError::VersionMismatch {
            current: current.version,
        })
    }
}

/// A create's check of its owner's quota: `held` tasks before it, at most
/// `max` after it.
pub(crate) fn check_quota(held: u64, max: u64) -> StoreResult<()> {
    if held < max {
        Ok(())
    } else {
        Err(StorageError::QuotaExceeded { max })
    }
}

/// An import's check of its target: it must hold no tasks and no tokens.
pub(crate) fn check_import_target(occupied: bool) -> StoreResult<()> {
    if occupied {
        Err(StorageError::AlreadyExists(
            "data in the target store".into(),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TaskFields, Title};

    fn record(digest: u8, created_at: DateTime<Utc>) -> KeyRecord {
        KeyRecord {
            request_digest: [digest; 32],
            created_at,
            task: Task::create(TaskFields::with_title(Title::parse("t").unwrap())),
        }
    }

    #[test]
    fn keys_replay_mismatch_expire_and_free_when_unreadable() {
        let now = crate::domain::now();
        let request = Idempotency {
            key: "k".into(),
            request_digest: [1; 32],
        };
        let fresh = record(1, now - chrono::Duration::hours(23));
        assert_eq!(
            use_key(Some(Ok(fresh.clone())), &request, now).unwrap(),
            KeyUse::Replay(fresh.task)
        );
        assert!(matches!(
            use_key(Some(Ok(record(2, now))), &request, now),
            Err(StorageError::IdempotencyMismatch)
        ));
        let old = now - chrono::Duration::from_std(IDEMPOTENCY_TTL).unwrap();
        assert_eq!(
            use_key(Some(Ok(record(2, old))), &request, now).unwrap(),
            KeyUse::Create {
                expired_at: Some(old)
            }
        );
        let future = record(1, now + chrono::Duration::hours(1));
        assert!(matches!(
            use_key(Some(Ok(future)), &request, now),
            Ok(KeyUse::Replay(_))
        ));
        let unreadable = StorageError::Corrupt {
            key: "k".into(),
            reason: "r".into(),
        };
        assert_eq!(
            use_key(Some(Err(unreadable)), &request, now).unwrap(),
            KeyUse::Create { expired_at: None }
        );
        assert!(matches!(
            use_key(Some(Err(StorageError::unavailable("x"))), &request, now),
            Err(StorageError::Unavailable { .. })
        ));
    }

    #[test]
    fn quota_counts_what_is_held_before_the_create() {
        assert!(check_quota(0, 1).is_ok());
        assert!(matches!(
            check_quota(1, 1),
            Err(StorageError::QuotaExceeded { max: 1 })
        ));
        assert!(check_quota(0, 0).is_err());
    }
}
