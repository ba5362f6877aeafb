//! Record encoding shared by the embedded backend: one format-version byte,
//! then JSON. Decoding validates through the domain types, so a damaged or
//! unknown record is a [`StorageError::Corrupt`], never a panic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StorageError;
use crate::domain::{
    Description, DueAt, Priority, Status, Tags, Task, TaskFields, TaskId, Title, rfc3339,
};

/// Bump when the layout of a record changes; old versions are then migrated
/// on read here, by matching on the byte.
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
pub fn decode<T: DeserializeOwned>(
    kind: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
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

/// A task record read straight into its fields. The JSON is the one `Task`
/// writes; `Task` itself reads it through `#[serde(flatten)]`, which makes
/// serde buffer the whole object into an intermediate map of owned values
/// first. Reads decode a record per task returned, so they use this.
#[derive(Deserialize)]
struct TaskRecord {
    id: TaskId,
    title: Title,
    #[serde(default)]
    description: Option<Description>,
    #[serde(default)]
    status: Status,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    due_at: Option<DueAt>,
    #[serde(default)]
    tags: Tags,
    #[serde(with = "rfc3339")]
    created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    updated_at: DateTime<Utc>,
    version: u64,
}

/// [`decode`] for tasks, without the detour through an intermediate map. `key`
/// names the record in reports; `id` is the id its storage key holds, which the
/// record must repeat.
pub fn decode_task(
    key: impl std::fmt::Display,
    id: TaskId,
    bytes: &[u8],
) -> Result<Task, StorageError> {
    let r: TaskRecord = decode("task", &key, bytes)?;
    if r.id != id {
        return Err(StorageError::corrupt(
            "task",
            key,
            format!("the record holds id {}", r.id),
        ));
    }
    let task = Task {
        id: r.id,
        fields: TaskFields {
            title: r.title,
            description: r.description,
            status: r.status,
            priority: r.priority,
            due_at: r.due_at,
            tags: r.tags,
        },
        created_at: r.created_at,
        updated_at: r.updated_at,
        version: r.version,
    };
    task.check_stored()
        .map_err(|e| StorageError::corrupt("task", key, e))?;
    Ok(task)
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

    proptest! {
        #[test]
        fn tasks_round_trip(task in arb_task()) {
            let bytes = encode(&task);
            let back: Task = decode("task", "k", &bytes).unwrap();
            prop_assert_eq!(&back, &task);
            prop_assert_eq!(decode_task("k", task.id, &bytes).unwrap(), task);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<Task>("task", "k", &bytes);
            let _ = decode_task("k", TaskId::new(), &bytes);
        }

        #[test]
        fn damaged_records_are_errors(task in arb_task(), cut in 1usize..50) {
            let bytes = encode(&task);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(
                matches!(decode::<Task>("task", "k", &bytes[..bytes.len() - cut]), Err(StorageError::Corrupt { .. })),
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
            decode::<Task>("task", "k", b"\x09{}"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            decode::<Task>("task", "k", b""),
            Err(StorageError::Corrupt { .. })
        ));
        let task = Task::create(parse_create(&serde_json::json!({"title": "ok"})).unwrap());
        let json = String::from_utf8(encode(&task)[1..].to_vec())
            .unwrap()
            .replace("\"ok\"", "\"  \"");
        let mut bad = vec![FORMAT_V1];
        bad.extend_from_slice(json.as_bytes());
        assert!(matches!(
            decode::<Task>("task", "k", &bad),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_task("k", task.id, &bad),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
