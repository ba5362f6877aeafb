//! The bodies of the task resource as the API sends and receives them, with
//! their OpenAPI schemas. These types are the API's compatibility promise and
//! nothing else: storage and backup formats have their own types, so renaming
//! a field here changes no file.
//!
//! Request bodies are read as JSON values and validated by the domain, so that
//! every problem is reported at once; their schemas are written here from the
//! domain's limits and character tables (a property test holds the patterns to
//! the validators).

use std::borrow::Cow;

use axum::extract::{FromRequest, Request};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::openapi::schema::RefBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, Object, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::{
    self, Description, MAX_TAGS, Priority, Status, Tag, Tags, Task, TaskChange, TaskFields, TaskId,
    Title, rfc3339,
};
use crate::http::extract::{JsonBody, MergePatchBody};
use crate::http::{ApiError, AppState};

/// A task as the API returns it.
#[derive(Serialize, ToSchema)]
#[schema(as = Task)]
pub struct TaskBody<'a> {
    /// Server-assigned UUIDv7; sorts in creation order.
    #[schema(value_type = String, format = Uuid)]
    id: TaskId,
    #[schema(schema_with = stored_title_schema)]
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = stored_description_schema)]
    description: Option<&'a str>,
    #[schema(value_type = Status)]
    status: &'static str,
    #[schema(value_type = Priority)]
    priority: &'static str,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339::option::serialize"
    )]
    #[schema(nullable = false)]
    due_at: Option<DateTime<Utc>>,
    #[schema(schema_with = stored_tags_schema)]
    #[serde(serialize_with = "tag_texts")]
    tags: &'a Tags,
    #[serde(serialize_with = "rfc3339::serialize")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339::serialize")]
    updated_at: DateTime<Utc>,
    /// Starts at 1, grows by one with every change; the ETag is `"<version>"`.
    #[schema(minimum = 1)]
    version: u64,
}

impl<'a> From<&'a Task> for TaskBody<'a> {
    fn from(task: &'a Task) -> Self {
        let f = &task.fields;
        Self {
            id: task.id,
            title: f.title.as_str(),
            description: f.description.as_ref().map(Description::as_str),
            status: f.status.as_str(),
            priority: f.priority.as_str(),
            due_at: f.due_at.map(|d| d.as_datetime()),
            tags: &f.tags,
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: task.version,
        }
    }
}

fn tag_texts<S: serde::Serializer>(tags: &&Tags, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(tags.iter().map(Tag::as_str))
}

/// One page of tasks.
#[derive(Serialize, ToSchema)]
pub struct TaskPage<'a> {
    items: Vec<TaskBody<'a>>,
    /// Pass as `cursor` to get the next page; `null` on the last page. A
    /// filtered page may hold fewer items than `limit`, even none, and still
    /// have a `next_cursor`: page until it is `null`.
    next_cursor: Option<String>,
}

impl<'a> TaskPage<'a> {
    pub fn new(items: &'a [Task], next: Option<TaskId>) -> Self {
        Self {
            items: items.iter().map(TaskBody::from).collect(),
            next_cursor: next.map(domain::encode_cursor),
        }
    }
}

/// The body of a create or a full replacement (`application/json`), validated.
pub struct TaskInput(pub TaskFields);

impl FromRequest<AppState> for TaskInput {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        domain::parse_create(&body)
            .map(TaskInput)
            .map_err(ApiError::Validation)
    }
}

impl PartialSchema for TaskInput {
    fn schema() -> RefOr<Schema> {
        let optional_enum = |name: &str, description: &str| {
            OneOfBuilder::new()
                .item(Object::with_type(Type::Null))
                .item(
                    RefBuilder::new()
                        .ref_location_from_schema_name(name)
                        .description(Some(description)),
                )
        };
        ObjectBuilder::new()
            .description(Some(
                "The body of a create or a full replacement. Unknown fields are rejected.",
            ))
            .property("title", title_input_schema())
            .required("title")
            .property("description", description_input_schema())
            .property(
                "status",
                optional_enum(
                    &Status::name(),
                    &format!("Default `{}`.", Status::default().as_str()),
                ),
            )
            .property(
                "priority",
                optional_enum(
                    &Priority::name(),
                    &format!("Default `{}`.", Priority::default().as_str()),
                ),
            )
            .property("due_at", due_at_input_schema())
            .property("tags", tags_input_schema().build())
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for TaskInput {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        enum_schemas(schemas);
    }
}

/// A JSON Merge Patch (RFC 7396) of a task, validated.
pub struct TaskPatch(pub TaskChange);

impl FromRequest<AppState> for TaskPatch {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let MergePatchBody(body) = MergePatchBody::from_request(req, state).await?;
        domain::parse_merge_patch(&body)
            .map(TaskPatch)
            .map_err(ApiError::Validation)
    }
}

impl PartialSchema for TaskPatch {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "A JSON Merge Patch (RFC 7396) of a task: absent fields stay, `null` removes\n\
                 `description` or `due_at` and empties `tags`.",
            ))
            .property("title", title_input_schema())
            .property("description", description_input_schema())
            .property("status", Ref::from_schema_name(Status::name()))
            .property("priority", Ref::from_schema_name(Priority::name()))
            .property("due_at", due_at_input_schema())
            .property(
                "tags",
                tags_input_schema()
                    .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
                    .build(),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for TaskPatch {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        enum_schemas(schemas);
    }
}

fn enum_schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((Status::name().into(), Status::schema()));
    schemas.push((Priority::name().into(), Priority::schema()));
}

/// A string enumeration of the values the domain names.
fn enum_schema<const N: usize>(values: [&'static str; N]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .into()
}

impl PartialSchema for Status {
    fn schema() -> RefOr<Schema> {
        enum_schema(Status::ALL.map(|s| s.as_str()))
    }
}

impl ToSchema for Status {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Status")
    }
}

impl PartialSchema for Priority {
    fn schema() -> RefOr<Schema> {
        enum_schema(Priority::ALL.map(|p| p.as_str()))
    }
}

impl ToSchema for Priority {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Priority")
    }
}

/// `10000` as `10 000`, the way the descriptions write numbers.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn string_schema(nullable: bool) -> ObjectBuilder {
    let ty = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new().schema_type(ty)
}

fn title_input_schema() -> Object {
    string_schema(false)
        .description(Some(format!(
            "1–{} characters once white space around them is removed (it is). No control \
             characters, no Unicode format characters (general category Cf: bidi controls, \
             zero-width characters, tag characters), no U+2028 or U+2029.",
            Title::MAX_CHARS
        )))
        .min_length(Some(1))
        .pattern(Some(domain::text::title_pattern()))
        .build()
}

fn description_input_schema() -> Object {
    string_schema(true)
        .description(Some(format!(
            "Up to {} characters. Line breaks and tabs are allowed; other control \
             characters and the bidi embedding, override and isolate controls \
             (U+202A–U+202E, U+2066–U+2069) are not.",
            grouped(Description::MAX_CHARS)
        )))
        .max_length(Some(Description::MAX_CHARS))
        .pattern(Some(domain::text::description_pattern()))
        .build()
}

fn due_at_input_schema() -> Object {
    string_schema(true)
        .description(Some(
            "RFC 3339 date-time with any offset, stored in UTC with microsecond precision (a \
             leap second becomes the last microsecond of the second before it). From \
             0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z: a time written on 0000-01-01 \
             or 9999-12-31 must be in UTC (`Z` or `±00:00`).",
        ))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .pattern(Some(domain::text::DUE_AT_PATTERN))
        .build()
}

/// Distinct tags with the character rules of titles; white space at either
/// end is refused, not trimmed.
fn tags_input_schema() -> ArrayBuilder {
    ArrayBuilder::new()
        .description(Some(format!(
            "Up to {MAX_TAGS} distinct tags of 1–{} characters. The characters refused in \
             titles are refused in tags; white space at either end of a tag is refused (not \
             trimmed), so a tag is stored exactly as sent.",
            Tag::MAX_CHARS
        )))
        .items(
            string_schema(false)
                .min_length(Some(1))
                .max_length(Some(Tag::MAX_CHARS))
                .pattern(Some(domain::text::tag_pattern())),
        )
        .max_items(Some(MAX_TAGS))
        .unique_items(true)
}

/// Stored values follow the wider rules of stored text (see [`Title`]), so
/// responses promise the limits, not the input patterns.
fn stored_title_schema() -> Object {
    string_schema(false)
        .min_length(Some(1))
        .max_length(Some(Title::MAX_CHARS))
        .build()
}

fn stored_description_schema() -> Object {
    string_schema(false)
        .max_length(Some(Description::MAX_CHARS))
        .build()
}

fn stored_tags_schema() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(string_schema(false))
        .max_items(Some(MAX_TAGS))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(7), "7");
        assert_eq!(grouped(200), "200");
        assert_eq!(grouped(10_000), "10 000");
        assert_eq!(grouped(1_234_567), "1 234 567");
    }

    #[test]
    fn a_task_body_is_the_task_as_json() {
        let fields = domain::parse_create(&serde_json::json!({
            "title": "ship", "description": "d", "due_at": "2030-01-02T03:04:05Z",
            "tags": ["a", "b"], "status": "done", "priority": "high",
        }))
        .unwrap();
        let task = Task::create(fields);
        let body = serde_json::to_value(TaskBody::from(&task)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": task.id.to_string(), "title": "ship", "description": "d",
                "status": "done", "priority": "high",
                "due_at": "2030-01-02T03:04:05.000000Z", "tags": ["a", "b"],
                "created_at": rfc3339::format(&task.created_at),
                "updated_at": rfc3339::format(&task.updated_at), "version": 1,
            })
        );
        let bare = Task::create(domain::parse_create(&serde_json::json!({"title": "t"})).unwrap());
        let body = serde_json::to_value(TaskBody::from(&bare)).unwrap();
        assert!(body.get("description").is_none() && body.get("due_at").is_none());
        assert_eq!(body["tags"], serde_json::json!([]));
    }
}
