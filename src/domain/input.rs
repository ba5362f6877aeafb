//! Client input to domain values. Input is taken as a JSON object so that every
//! problem (unknown field, wrong type, invalid value) is reported at once, each
//! naming its field, instead of stopping at serde's first error.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::task::{Description, Priority, Status, Tag, Tags, Task, TaskFields, Title};
use super::time::DueAt;

/// One problem with one field of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name, `tags[3]` for an element of a list, or empty for the body itself.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

const FIELDS: [&str; 6] = [
    "title",
    "description",
    "status",
    "priority",
    "due_at",
    "tags",
];

/// What a write asks for, validated against the task's current state by the store.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskChange {
    /// PUT: every mutable field replaced.
    Replace(TaskFields),
    /// PATCH: a JSON Merge Patch (RFC 7396) of the mutable fields, applied to
    /// whatever version the store holds when the write happens.
    Merge(MergePatch),
}

impl TaskChange {
    /// The task after this change at `now` (unchanged, same version, if
    /// nothing differs).
    pub fn apply(&self, current: &Task, now: DateTime<Utc>) -> Task {
        match self {
            TaskChange::Replace(fields) => current.with_fields(fields.clone(), now),
            TaskChange::Merge(patch) => current.with_fields(patch.apply(&current.fields), now),
        }
    }
}

/// A validated merge patch: `None` leaves a field alone, `Some(None)` removes an
/// optional field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergePatch {
    title: Option<Title>,
    description: Option<Option<Description>>,
    status: Option<Status>,
    priority: Option<Priority>,
    due_at: Option<Option<DueAt>>,
    tags: Option<Tags>,
}

impl MergePatch {
    fn apply(&self, base: &TaskFields) -> TaskFields {
        TaskFields {
            title: self.title.clone().unwrap_or_else(|| base.title.clone()),
            description: self
                .description
                .clone()
                .unwrap_or_else(|| base.description.clone()),
            status: self.status.unwrap_or(base.status),
            priority: self.priority.unwrap_or(base.priority),
            due_at: self.due_at.unwrap_or(base.due_at),
            tags: self.tags.clone().unwrap_or_else(|| base.tags.clone()),
        }
    }
}

/// The body of `POST /v1/tasks`.
pub fn parse_create(body: &Value) -> Result<TaskFields, Vec<FieldError>> {
    parse_full(body)
}

/// The body of `PUT /v1/tasks/{id}`: the same shape as a create.
pub fn parse_replace(body: &Value) -> Result<TaskFields, Vec<FieldError>> {
    parse_full(body)
}

fn parse_full(body: &Value) -> Result<TaskFields, Vec<FieldError>> {
    let obj = object(body)?;
    let mut errs = unknown_fields(obj);
    let title = match obj.get("title") {
        None | Some(Value::Null) => {
            errs.push(FieldError::new("title", "is required"));
            None
        }
        Some(v) => collect(&mut errs, "title", string(v).and_then(Title::parse)),
    };
    let description = opt(obj, "description", &mut errs, |v| {
        string(v).and_then(Description::parse)
    });
    let status = opt(obj, "status", &mut errs, status);
    let priority = opt(obj, "priority", &mut errs, priority);
    let due_at = opt(obj, "due_at", &mut errs, |v| {
        string(v).and_then(DueAt::parse)
    });
    let tags = match obj.get("tags") {
        None => Some(Tags::default()),
        Some(v) => tags(v, &mut errs),
    };
    match (title, tags) {
        (Some(title), Some(tags)) if errs.is_empty() => Ok(TaskFields {
            title,
            description: description.flatten(),
            status: status.flatten().unwrap_or_default(),
            priority: priority.flatten().unwrap_or_default(),
            due_at: due_at.flatten(),
            tags,
        }),
        _ => Err(errs),
    }
}

/// The body of `PATCH /v1/tasks/{id}` as a JSON Merge Patch. `null` removes an
/// optional field (and empties `tags`); it is an error for a required one.
pub fn parse_merge_patch(body: &Value) -> Result<TaskChange, Vec<FieldError>> {
    let obj = object(body)?;
    let mut errs = unknown_fields(obj);
    let mut patch = MergePatch::default();
    for (key, v) in obj {
        match key.as_str() {
            "title" => {
                patch.title = required(&mut errs, key, v, |v| string(v).and_then(Title::parse))
            }
            "status" => patch.status = required(&mut errs, key, v, status),
            "priority" => patch.priority = required(&mut errs, key, v, priority),
            "description" => {
                patch.description = nullable(&mut errs, key, v, |v| {
                    string(v).and_then(Description::parse)
                })
            }
            "due_at" => {
                patch.due_at = nullable(&mut errs, key, v, |v| string(v).and_then(DueAt::parse))
            }
            "tags" => {
                patch.tags = if v.is_null() {
                    Some(Tags::default())
                } else {
                    tags(v, &mut errs)
                }
            }
            _ => {}
        }
    }
    if errs.is_empty() {
        Ok(TaskChange::Merge(patch))
    } else {
        Err(errs)
    }
}

fn object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object()
        .ok_or_else(|| vec![FieldError::new("", "the body must be a JSON object")])
}

fn unknown_fields(obj: &Map<String, Value>) -> Vec<FieldError> {
    obj.keys()
        .filter(|k| !FIELDS.contains(&k.as_str()))
        .map(|k| FieldError::new(k.clone(), "is not a field of a task"))
        .collect()
}

fn collect<T>(errs: &mut Vec<FieldError>, field: &str, r: Result<T, String>) -> Option<T> {
    r.map_err(|m| errs.push(FieldError::new(field, m))).ok()
}

/// An optional field of a full body: absent and `null` both mean "not set".
fn opt<T>(
    obj: &Map<String, Value>,
    field: &str,
    errs: &mut Vec<FieldError>,
    parse: impl Fn(&Value) -> Result<T, String>,
) -> Option<Option<T>> {
    match obj.get(field) {
        None | Some(Value::Null) => Some(None),
        Some(v) => collect(errs, field, parse(v)).map(Some),
    }
}

fn required<T>(
    errs: &mut Vec<FieldError>,
    field: &str,
    v: &Value,
    parse: impl Fn(&Value) -> Result<T, String>,
) -> Option<T> {
    if v.is_null() {
        errs.push(FieldError::new(field, "cannot be removed"));
        return None;
    }
    collect(errs, field, parse(v))
}

fn nullable<T>(
    errs: &mut Vec<FieldError>,
    field: &str,
    v: &Value,
    parse: impl Fn(&Value) -> Result<T, String>,
) -> Option<Option<T>> {
    if v.is_null() {
        return Some(None);
    }
    collect(errs, field, parse(v)).map(Some)
}

fn string(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| "must be a string".into())
}

fn status(v: &Value) -> Result<Status, String> {
    string(v).and_then(Status::parse_input)
}

fn priority(v: &Value) -> Result<Priority, String> {
    string(v).and_then(Priority::parse_input)
}

fn tags(v: &Value, errs: &mut Vec<FieldError>) -> Option<Tags> {
    let Some(items) = v.as_array() else {
        errs.push(FieldError::new("tags", "must be a list of strings"));
        return None;
    };
    let before = errs.len();
    let parsed: Vec<Tag> = items
        .iter()
        .enumerate()
        .filter_map(|(i, t)| collect(errs, &format!("tags[{i}]"), string(t).and_then(Tag::parse)))
        .collect();
    if errs.len() != before {
        return None;
    }
    collect(errs, "tags", Tags::new(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn create_applies_defaults() {
        let f = parse_create(&json!({"title": " Write docs "})).unwrap();
        assert_eq!(f.title.as_str(), "Write docs");
        assert_eq!(f.status, Status::Todo);
        assert_eq!(f.priority, Priority::Normal);
        assert!(f.tags.is_empty());
    }

    #[test]
    fn create_reports_every_bad_field() {
        let errs = parse_create(&json!({
            "description": 5, "status": "later", "tags": ["ok", ""], "colour": "red"
        }))
        .unwrap_err();
        let mut got = fields(errs);
        got.sort();
        assert_eq!(got, ["colour", "description", "status", "tags[1]", "title"]);
    }

    #[test]
    fn body_must_be_an_object() {
        assert_eq!(fields(parse_create(&json!([1])).unwrap_err()), [""]);
    }

    #[test]
    fn merge_patch_null_removes_optional_and_rejects_required() {
        let base = Task::create(
            parse_create(&json!({
                "title": "a", "description": "d", "due_at": "2030-01-01T00:00:00Z", "tags": ["x"]
            }))
            .unwrap(),
        );
        let change =
            parse_merge_patch(&json!({"description": null, "due_at": null, "tags": null})).unwrap();
        let t = change.apply(&base, crate::domain::now());
        assert_eq!(t.fields.description, None);
        assert_eq!(t.fields.due_at, None);
        assert!(t.fields.tags.is_empty());
        assert_eq!(t.version, 2);
        assert_eq!(
            fields(parse_merge_patch(&json!({"title": null})).unwrap_err()),
            ["title"]
        );
        assert_eq!(
            fields(parse_merge_patch(&json!({"nope": 1})).unwrap_err()),
            ["nope"]
        );
    }

    #[test]
    fn empty_merge_patch_changes_nothing() {
        let base = Task::create(parse_create(&json!({"title": "a"})).unwrap());
        let t = parse_merge_patch(&json!({}))
            .unwrap()
            .apply(&base, crate::domain::now());
        assert_eq!(t, base);
    }
}
