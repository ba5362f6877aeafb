//! The stores' record formats, owned by storage: a task as a record holds
//! it ([`TaskRecordV1`]: the redb task record, and the task snapshot inside
//! both backends' idempotency records), the redb idempotency and token
//! records, and the envelope of a redb record (one format-version byte, then
//! JSON). They are converted to and from the domain here, so a change to the
//! API's bodies or to the domain's types cannot change a file format
//! silently; golden files (`tests/golden/`) pin each format, and every
//! record an earlier release wrote still decodes.
//!
//! Decoding validates through the domain's rules for stored values
//! ([`StoredTask::into_task`]), so a damaged or unknown record is a
//! [`StorageError::Corrupt`], never a panic.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::rules::KeyRecord;
use super::{StorageError, TokenInfo};
use crate::domain::{PrincipalName, StoredTask, Task, TaskId, TokenDigest, TokenName, rfc3339};

/// The first byte of every redb record. Bump it when the layout of a record
/// changes, and decode the old versions here, by matching on the byte.
pub const FORMAT_V1: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V1);
    // Serialising our own types to a Vec cannot fail: no maps with non-string keys.
    serde_json::to_writer(&mut out, value).expect("records serialise to JSON");
    out
}

/// Decodes a record of `kind` stored at `key`; a failure is reported (see
/// [`StorageError::corrupt`]).
pub fn decode<'a, T: Deserialize<'a>>(
    kind: &'static str,
    key: impl std::fmt::Display,
    bytes: &'a [u8],
) -> Result<T, StorageError> {
    let corrupt = |reason: String| StorageError::corrupt(kind, &key, reason);
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            serde_json::from_slice(rest).map_err(|e| corrupt(e.to_string()))
        }
        Some((v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// A task as records hold it, version 1: a JSON object with these names.
/// Fields that releases before the format's last addition did not write
/// have defaults. Writing borrows from the task; reading owns its strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecordV1<'a> {
    pub id: Uuid,
    pub title: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Cow<'a, str>>,
    // Borrowed from the record where it has no escapes: a list page decodes
    // fifty records, and these two are only parsed, never kept.
    #[serde(borrow, default = "default_status")]
    pub status: Cow<'a, str>,
    #[serde(borrow, default = "default_priority")]
    pub priority: Cow<'a, str>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tags: Vec<Cow<'a, str>>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

fn default_status<'a>() -> Cow<'a, str> {
    Cow::Borrowed("todo")
}

fn default_priority<'a>() -> Cow<'a, str> {
    Cow::Borrowed("normal")
}

impl<'a> From<&'a Task> for TaskRecordV1<'a> {
    fn from(task: &'a Task) -> Self {
        let f = &task.fields;
        Self {
            id: task.id.as_uuid(),
            title: Cow::Borrowed(f.title.as_str()),
            description: f.description.as_ref().map(|d| Cow::Borrowed(d.as_str())),
            status: Cow::Borrowed(f.status.as_str()),
            priority: Cow::Borrowed(f.priority.as_str()),
            due_at: f.due_at.map(|d| d.as_datetime()),
            tags: f.tags.iter().map(|t| Cow::Borrowed(t.as_str())).collect(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: task.version,
        }
    }
}

impl TaskRecordV1<'_> {
    /// The task, if the record passes the rules for stored values; else why not.
    pub fn into_task(self) -> Result<Task, String> {
        StoredTask {
            id: self.id,
            title: self.title.into_owned(),
            description: self.description.map(Cow::into_owned),
            status: self.status,
            priority: self.priority,
            due_at: self.due_at,
            tags: self.tags.into_iter().map(Cow::into_owned).collect(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
        .into_task()
    }
}

/// The redb record of a task.
pub fn encode_task(task: &Task) -> Vec<u8> {
    encode(&TaskRecordV1::from(task))
}

/// [`decode`] for tasks. `key` names the record in reports; `id` is the id
/// its storage key holds, which the record must repeat.
pub fn decode_task(
    key: impl std::fmt::Display,
    id: TaskId,
    bytes: &[u8],
) -> Result<Task, StorageError> {
    let r: TaskRecordV1 = decode("task", &key, bytes)?;
    if r.id != id.as_uuid() {
        return Err(StorageError::corrupt(
            "task",
            key,
            format!("the record holds id {}", r.id),
        ));
    }
    r.into_task()
        .map_err(|e| StorageError::corrupt("task", key, e))
}

/// The redb record of an idempotency key, version 1.
#[derive(Debug, Serialize, Deserialize)]
pub struct IdempotencyRecordV1<'a> {
    /// Hex SHA-256 of the request that made it.
    pub request_digest: String,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// The task that request created, as it was then.
    #[serde(borrow)]
    pub task: TaskRecordV1<'a>,
}

/// The redb record of an idempotency key.
pub(crate) fn encode_key_record(
    request_digest: &[u8; 32],
    created_at: DateTime<Utc>,
    task: &Task,
) -> Vec<u8> {
    encode(&IdempotencyRecordV1 {
        request_digest: hex::encode(request_digest),
        created_at,
        task: task.into(),
    })
}

/// A redb idempotency record, decoded and validated (a failure is reported).
pub(crate) fn decode_key_record(
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<KeyRecord, StorageError> {
    let corrupt = |e: String| StorageError::corrupt("idempotency", &key, e);
    let rec: IdempotencyRecordV1 = decode("idempotency", &key, bytes)?;
    let mut request_digest = [0u8; 32];
    hex::decode_to_slice(&rec.request_digest, &mut request_digest)
        .map_err(|e| corrupt(format!("request digest: {e}")))?;
    Ok(KeyRecord {
        request_digest,
        created_at: rec.created_at,
        task: rec
            .task
            .into_task()
            .map_err(|e| corrupt(format!("task: {e}")))?,
    })
}

/// The redb record of a token, version 1 (its key is the token's digest),
/// the record of the `tokens_v1` table, which every release reads: the
/// release before named tokens authenticates with it alone, so every token
/// is written in this format too (see `storage::redb::tokens`). On its own
/// it decodes as the token named [`TokenName::DEFAULT`].
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenRecordV1<'a> {
    /// The principal.
    pub name: Cow<'a, str>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// The version-1 record of `t` (its principal and creation only).
pub fn encode_token_v1(t: &TokenInfo) -> Vec<u8> {
    encode(&TokenRecordV1 {
        name: Cow::Borrowed(t.principal.as_str()),
        created_at: t.created_at,
    })
}

/// A record of the `tokens_v1` table: version 1 only (what the release
/// before named tokens reads), as the token named [`TokenName::DEFAULT`].
pub fn decode_token_v1(
    key: impl std::fmt::Display,
    digest: &[u8],
    bytes: &[u8],
) -> Result<TokenInfo, StorageError> {
    match bytes.first() {
        Some(&FORMAT_V1) => decode_token(key, digest, bytes),
        Some(v) => Err(StorageError::corrupt(
            "token",
            key,
            format!("unknown format version {v}"),
        )),
        None => Err(StorageError::corrupt("token", key, "empty record")),
    }
}

/// The first byte of a token record of version 2.
pub const TOKEN_FORMAT_V2: u8 = 2;

/// The redb record of a token, version 2 (envelope byte [`TOKEN_FORMAT_V2`];
/// its key is the token's digest): named tokens, several per principal, with
/// expiry, last use and rotation.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenRecordV2<'a> {
    pub principal: Cow<'a, str>,
    pub name: Cow<'a, str>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub replaced_at: Option<DateTime<Utc>>,
    /// The store took the token out of `tokens_v1` because it expired (see
    /// `storage::redb::tokens`): what tells it from a token the release
    /// before named tokens revoked, which also leaves `tokens_v1` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub swept: bool,
}

/// The redb record of a token (version 2), `swept` as
/// [`TokenRecordV2::swept`].
pub fn encode_token(t: &TokenInfo, swept: bool) -> Vec<u8> {
    let rec = TokenRecordV2 {
        principal: Cow::Borrowed(t.principal.as_str()),
        name: Cow::Borrowed(t.name.as_str()),
        created_at: t.created_at,
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
        replaced_at: t.replaced_at,
        swept,
    };
    let mut out = Vec::with_capacity(128);
    out.push(TOKEN_FORMAT_V2);
    serde_json::to_writer(&mut out, &rec).expect("records serialise to JSON");
    out
}

/// A redb token record of either version, stored under `digest`; `key`
/// names it in reports. Names and times pass the rules for stored values.
pub fn decode_token(
    key: impl std::fmt::Display,
    digest: &[u8],
    bytes: &[u8],
) -> Result<TokenInfo, StorageError> {
    decode_token_meta(key, digest, bytes).map(|(t, _)| t)
}

/// As [`decode_token`], with the record's [`TokenRecordV2::swept`] (false
/// for version 1).
pub fn decode_token_meta(
    key: impl std::fmt::Display,
    digest: &[u8],
    bytes: &[u8],
) -> Result<(TokenInfo, bool), StorageError> {
    let corrupt = |reason: String| StorageError::corrupt("token", &key, reason);
    let rec = match bytes.split_first() {
        Some((&FORMAT_V1, _)) => {
            let v1: TokenRecordV1 = decode("token", &key, bytes)?;
            TokenRecordV2 {
                principal: v1.name,
                name: Cow::Borrowed(TokenName::DEFAULT),
                created_at: v1.created_at,
                expires_at: None,
                last_used_at: None,
                replaced_at: None,
                swept: false,
            }
        }
        Some((&TOKEN_FORMAT_V2, rest)) => {
            serde_json::from_slice(rest).map_err(|e| corrupt(e.to_string()))?
        }
        Some((v, _)) => return Err(corrupt(format!("unknown format version {v}"))),
        None => return Err(corrupt("empty record".into())),
    };
    let digest =
        TokenDigest::try_from(digest).map_err(|_| corrupt("the digest is not 32 bytes".into()))?;
    let stored = |what: &str, t: DateTime<Utc>| {
        rfc3339::check_stored(t).map_err(|e| corrupt(format!("{what}: {e}")))
    };
    let optional = |what: &str, t: Option<DateTime<Utc>>| t.map(|t| stored(what, t)).transpose();
    let token = TokenInfo {
        principal: PrincipalName::parse(&rec.principal).map_err(&corrupt)?,
        name: TokenName::parse(&rec.name).map_err(&corrupt)?,
        digest,
        created_at: stored("created_at", rec.created_at)?,
        expires_at: optional("expires_at", rec.expires_at)?,
        last_used_at: optional("last_used_at", rec.last_used_at)?,
        replaced_at: optional("replaced_at", rec.replaced_at)?,
    };
    Ok((token, rec.swept))
}

/// The task every golden file of version 1 holds (the record files here and
/// the backup file in `crate::backup`).
#[cfg(test)]
pub(crate) fn golden_task() -> Task {
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    StoredTask {
        id: "0190a5f0-0000-7000-8000-000000000001".parse().unwrap(),
        title: "Ship the release".into(),
        description: Some("Line one\nline two".into()),
        status: "in_progress".into(),
        priority: "high".into(),
        due_at: Some(at("2026-03-01T12:00:00Z")),
        tags: vec!["ops".into(), "release".into()],
        created_at: at("2026-01-02T03:04:05.123456Z"),
        updated_at: at("2026-01-02T04:05:06.654321Z"),
        version: 3,
    }
    .into_task()
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Task, parse_create};
    use proptest::prelude::*;

    fn arb_task() -> impl Strategy<Value = Task> {
        (
            "\\PC{1,40}",
            proptest::option::of("\\PC{0,100}"),
            prop::sample::select(vec!["todo", "in_progress", "done"]),
            prop::sample::select(vec!["low", "normal", "high"]),
            proptest::option::of(0i64..4_000_000_000),
            prop::collection::btree_set("[a-z0-9-]{1,10}", 0..20),
        )
            .prop_filter_map("valid title", |(title, desc, status, prio, due, tags)| {
                let mut body = serde_json::json!({
                    "title": title, "status": status, "priority": prio,
                    "tags": tags.into_iter().collect::<Vec<_>>(),
                });
                if let Some(d) = desc {
                    body["description"] = d.into();
                }
                if let Some(secs) = due {
                    let t = chrono::DateTime::from_timestamp(secs, 123_456_000)?;
                    body["due_at"] = crate::domain::rfc3339::format(&t).into();
                }
                parse_create(&body).ok().map(Task::create)
            })
    }

    fn decode_record(bytes: &[u8]) -> Result<Task, StorageError> {
        decode::<TaskRecordV1>("task", "k", bytes)?
            .into_task()
            .map_err(|e| StorageError::corrupt("task", "k", e))
    }

    proptest! {
        #[test]
        fn tasks_round_trip(task in arb_task()) {
            let bytes = encode_task(&task);
            prop_assert_eq!(&decode_record(&bytes).unwrap(), &task);
            prop_assert_eq!(decode_task("k", task.id, &bytes).unwrap(), task);
        }

        #[test]
        fn key_records_round_trip(task in arb_task(), digest in any::<[u8; 32]>()) {
            let bytes = encode_key_record(&digest, task.created_at, &task);
            let rec = decode_key_record("k", &bytes).unwrap();
            prop_assert_eq!(rec.request_digest, digest);
            prop_assert_eq!(rec.created_at, task.created_at);
            prop_assert_eq!(rec.task, task);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_record(&bytes);
            let _ = decode_task("k", TaskId::new(), &bytes);
            let _ = decode_key_record("k", &bytes);
        }

        #[test]
        fn damaged_records_are_errors(task in arb_task(), cut in 1usize..50) {
            let bytes = encode_task(&task);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(
                matches!(decode_record(&bytes[..bytes.len() - cut]), Err(StorageError::Corrupt { .. })),
                "truncated record decoded"
            );
            prop_assert!(
                matches!(decode_task("k", task.id, &bytes[..bytes.len() - cut]), Err(StorageError::Corrupt { .. })),
                "truncated record decoded as a task"
            );
        }
    }

    #[test]
    fn unknown_version_and_invalid_values_are_corrupt() {
        assert!(matches!(
            decode_record(b"\x09{}"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_record(b""),
            Err(StorageError::Corrupt { .. })
        ));
        let task = Task::create(parse_create(&serde_json::json!({"title": "ok"})).unwrap());
        let json = String::from_utf8(encode_task(&task)[1..].to_vec())
            .unwrap()
            .replace("\"ok\"", "\"  \"");
        let mut bad = vec![FORMAT_V1];
        bad.extend_from_slice(json.as_bytes());
        assert!(matches!(
            decode_record(&bad),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_task("k", task.id, &bad),
            Err(StorageError::Corrupt { .. })
        ));
        let mut other = encode_task(&task);
        let at = other.len() - 1;
        other.truncate(at);
        other.extend_from_slice(b",\"status\":\"someday\"}");
        assert!(matches!(
            decode_task("k", task.id, &other),
            Err(StorageError::Corrupt { .. })
        ));
    }

    const GOLDEN_TASK: &[u8] = include_bytes!("../../tests/golden/redb_task_v1.bin");
    const GOLDEN_MINIMAL: &[u8] = include_bytes!("../../tests/golden/redb_task_v1_minimal.bin");
    const GOLDEN_KEY: &[u8] = include_bytes!("../../tests/golden/redb_idempotency_v1.bin");
    const GOLDEN_TOKEN: &[u8] = include_bytes!("../../tests/golden/redb_token_v1.bin");
    const GOLDEN_TOKEN_V2: &[u8] = include_bytes!("../../tests/golden/redb_token_v2.bin");
    const GOLDEN_PG_TASK: &[u8] =
        include_bytes!("../../tests/golden/postgres_idempotency_task_v1.json");

    /// A change to the API's bodies or the domain's types must not change
    /// what is on disk: these bytes are what this and earlier releases wrote.
    #[test]
    fn the_task_record_is_pinned() {
        let task = golden_task();
        assert_eq!(
            encode_task(&task),
            GOLDEN_TASK,
            "redb task record v1 changed"
        );
        assert_eq!(decode_task("k", task.id, GOLDEN_TASK).unwrap(), task);
        assert_eq!(
            serde_json::to_vec(&TaskRecordV1::from(&task)).unwrap(),
            GOLDEN_PG_TASK,
            "the PostgreSQL idempotency snapshot (task column) changed"
        );
    }

    #[test]
    fn the_idempotency_and_token_records_are_pinned() {
        let task = golden_task();
        let digest = [0xab; 32];
        assert_eq!(
            encode_key_record(&digest, task.created_at, &task),
            GOLDEN_KEY,
            "redb idempotency record v1 changed"
        );
        let rec = decode_key_record("k", GOLDEN_KEY).unwrap();
        assert_eq!(
            (rec.request_digest, rec.created_at),
            (digest, task.created_at)
        );
        assert_eq!(rec.task, task);
        let token = TokenRecordV1 {
            name: Cow::Borrowed("alice"),
            created_at: task.created_at,
        };
        assert_eq!(encode(&token), GOLDEN_TOKEN, "redb token record v1 changed");
        let back: TokenRecordV1 = decode("token", "k", GOLDEN_TOKEN).unwrap();
        assert_eq!(
            (back.name.as_ref(), back.created_at),
            ("alice", task.created_at)
        );
        // A version-1 record reads as the principal's token named `default`.
        let v1 = decode_token("k", &[0xcd; 32], GOLDEN_TOKEN).unwrap();
        assert_eq!(
            (v1.principal.as_str(), v1.name.as_str(), v1.created_at),
            ("alice", "default", task.created_at)
        );
        assert_eq!(
            (v1.expires_at, v1.last_used_at, v1.replaced_at),
            (None, None, None)
        );
        // Every token, named or not, is also written as exactly this record
        // (what the release before named tokens reads), and nothing else.
        let named = golden_token();
        let named = TokenInfo {
            created_at: task.created_at,
            ..named
        };
        assert_eq!(encode_token_v1(&named), GOLDEN_TOKEN);
        assert_eq!(decode_token_v1("k", &[0xcd; 32], GOLDEN_TOKEN).unwrap(), v1);
        assert!(decode_token_v1("k", &[0xcd; 32], GOLDEN_TOKEN_V2).is_err());
        let v2 = golden_token();
        assert_eq!(
            encode_token(&v2, false),
            GOLDEN_TOKEN_V2,
            "redb token record v2 changed"
        );
        assert_eq!(
            decode_token_meta("k", &v2.digest, GOLDEN_TOKEN_V2).unwrap(),
            (v2.clone(), false)
        );
        // The sweep's mark is one more field, which readers of the record
        // without it ignore; records without it are not swept.
        let swept = encode_token(&v2, true);
        assert_eq!(
            swept,
            [
                &GOLDEN_TOKEN_V2[..GOLDEN_TOKEN_V2.len() - 1],
                b",\"swept\":true}"
            ]
            .concat()
        );
        assert_eq!(
            decode_token_meta("k", &v2.digest, &swept).unwrap(),
            (v2.clone(), true)
        );
        assert_eq!(decode_token("k", &v2.digest, &swept).unwrap(), v2);
    }

    fn golden_token() -> TokenInfo {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        TokenInfo {
            principal: PrincipalName::parse("alice").unwrap(),
            name: TokenName::parse("ci-2026").unwrap(),
            digest: [0xcd; 32],
            created_at: at("2026-01-02T03:04:05.123456Z"),
            expires_at: Some(at("2026-04-01T00:00:00Z")),
            last_used_at: Some(at("2026-01-03T10:00:00.5Z")),
            replaced_at: Some(at("2026-01-04T00:00:00Z")),
        }
    }

    proptest! {
        #[test]
        fn token_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_token("k", &[1; 32], &bytes);
        }
    }

    /// Records that leave out the fields with defaults still decode.
    #[test]
    fn old_minimal_records_decode_with_defaults() {
        let id =
            TaskId::from_stored("0190a5f0-0000-7000-8000-000000000002".parse().unwrap()).unwrap();
        let task = decode_task("k", id, GOLDEN_MINIMAL).unwrap();
        assert_eq!(task.fields.title.as_str(), "Old");
        assert_eq!(task.fields.status, crate::domain::Status::Todo);
        assert_eq!(task.fields.priority, crate::domain::Priority::Normal);
        assert!(task.fields.description.is_none() && task.fields.due_at.is_none());
        assert_eq!(task.fields.tags.iter().count(), 0);
        assert_eq!(task.version, 1);
    }
}
