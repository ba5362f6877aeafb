//! `/v1/tasks`: the task resource. Handlers turn requests into domain values
//! and store calls; storage outcomes become responses through [`ApiError`].

use std::collections::HashMap;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::extract::{JsonBody, MergePatchBody, Principal, TaskIdPath, if_match, if_none_match};
use super::{ApiError, AppState, Problem};
use crate::domain::{
    self, FieldError, ListQuery, PrincipalName, Priority, Status, Task, TaskChange, TaskId,
    encode_cursor,
};
use crate::storage::{Created, Idempotency, NewTask};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/tasks", get(list_tasks).post(create_task))
        .route(
            "/v1/tasks/{id}",
            get(get_task)
                .put(replace_task)
                .patch(patch_task)
                .delete(delete_task),
        )
}

/// A task as the API returns it.
#[derive(ToSchema)]
#[schema(as = Task)]
#[allow(dead_code)]
pub struct TaskSchema {
    /// Server-assigned UUIDv7; sorts in creation order.
    #[schema(format = Uuid)]
    id: String,
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    #[schema(max_length = 10000, nullable = false)]
    description: Option<String>,
    status: Status,
    priority: Priority,
    #[schema(nullable = false)]
    due_at: Option<DateTime<Utc>>,
    #[schema(max_items = 20)]
    tags: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Starts at 1, grows by one with every change; the ETag is `"<version>"`.
    #[schema(minimum = 1)]
    version: u64,
}

/// The body of a create or a full replacement. Unknown fields are rejected.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = TaskInput)]
#[allow(dead_code)]
pub struct TaskInputSchema {
    #[schema(schema_with = title_schema)]
    title: String,
    #[schema(schema_with = description_schema)]
    description: Option<String>,
    /// Default `todo`.
    status: Option<Status>,
    /// Default `normal`.
    priority: Option<Priority>,
    #[schema(schema_with = due_at_schema)]
    due_at: Option<DateTime<Utc>>,
    #[schema(schema_with = tags_schema)]
    tags: Option<Vec<String>>,
}

/// A JSON Merge Patch (RFC 7396) of a task: absent fields stay, `null` removes
/// `description` or `due_at` and empties `tags`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[schema(as = TaskPatch)]
#[allow(dead_code)]
pub struct TaskPatchSchema {
    #[schema(schema_with = title_schema)]
    title: Option<String>,
    #[schema(schema_with = description_schema)]
    description: Option<String>,
    #[schema(nullable = false)]
    status: Option<Status>,
    #[schema(nullable = false)]
    priority: Option<Priority>,
    #[schema(schema_with = due_at_schema)]
    due_at: Option<DateTime<Utc>>,
    /// `null` empties the list.
    #[schema(schema_with = nullable_tags_schema)]
    tags: Option<Vec<String>>,
}

/// The input rules of task fields, as the domain states them (`domain::text`);
/// a property test holds the patterns to the validators.
fn string_schema(nullable: bool) -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let ty = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new().schema_type(ty)
}

fn title_schema() -> utoipa::openapi::schema::Object {
    string_schema(false)
        .description(Some(
            "1–200 characters once white space around them is removed (it is). No control \
             characters, no Unicode format characters (general category Cf: bidi controls, \
             zero-width characters, tag characters), no U+2028 or U+2029.",
        ))
        .min_length(Some(1))
        .pattern(Some(domain::text::title_pattern()))
        .build()
}

fn description_schema() -> utoipa::openapi::schema::Object {
    string_schema(true)
        .description(Some(
            "Up to 10 000 characters. Line breaks and tabs are allowed; other control \
             characters and the bidi embedding, override and isolate controls \
             (U+202A–U+202E, U+2066–U+2069) are not.",
        ))
        .max_length(Some(domain::Description::MAX_CHARS))
        .pattern(Some(domain::text::description_pattern()))
        .build()
}

fn due_at_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
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

/// Up to 20 distinct tags of 1–50 characters, with the character rules of
/// titles; white space at either end is refused, not trimmed.
fn tags_array() -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::ArrayBuilder;
    ArrayBuilder::new()
        .description(Some(
            "Up to 20 distinct tags of 1–50 characters. The characters refused in titles are \
             refused in tags; white space at either end of a tag is refused (not trimmed), so a \
             tag is stored exactly as sent.",
        ))
        .items(
            string_schema(false)
                .min_length(Some(1))
                .max_length(Some(domain::Tag::MAX_CHARS))
                .pattern(Some(domain::text::tag_pattern())),
        )
        .max_items(Some(domain::MAX_TAGS))
        .unique_items(true)
}

fn tags_schema() -> utoipa::openapi::schema::Array {
    tags_array().build()
}

fn nullable_tags_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{SchemaType, Type};
    tags_array()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .build()
}

/// One page of tasks.
#[derive(Serialize, ToSchema)]
pub struct TaskPage {
    #[schema(value_type = Vec<TaskSchema>)]
    items: Vec<Task>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// Filters and paging of `GET /v1/tasks`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    status: Option<Status>,
    priority: Option<Priority>,
    /// Tasks carrying this tag.
    tag: Option<String>,
    /// Tasks due strictly before this RFC 3339 instant.
    due_before: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the title.
    #[param(max_length = 200)]
    q: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (opaque).
    #[param(pattern = "^A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$")]
    cursor: Option<String>,
    /// Creation order, `asc` (default) or `desc`.
    order: Option<OrderSchema>,
}

/// Sort order of a listing, by creation (task id).
#[derive(ToSchema)]
#[schema(as = Order, rename_all = "lowercase")]
#[allow(dead_code)]
pub enum OrderSchema {
    Asc,
    Desc,
}

fn task_response(status: StatusCode, task: &Task) -> Response {
    let mut resp = (status, axum::Json(task)).into_response();
    if let Ok(v) = HeaderValue::from_str(&task.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn idempotency(
    headers: &HeaderMap,
    fields: &domain::TaskFields,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| {
            ApiError::InvalidParameters(vec![FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )])
        })?;
    // Digest of the validated fields, so formatting and key order do not matter.
    let canonical = serde_json::to_vec(fields).expect("fields serialise");
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request_digest: Sha256::digest(&canonical).into(),
    }))
}

/// Create a task.
#[utoipa::path(
    post, path = "/v1/tasks", tag = "tasks",
    request_body(content = TaskInputSchema, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Makes retries safe: the same key with the same body within 24 h returns the original task instead of creating another. 1–255 printable ASCII characters, such as a UUID.", max_length = 255, pattern = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")),
    responses(
        (status = 201, description = "Created", body = TaskSchema,
            headers(("Location" = String, description = "URL of the new task"), ("ETag" = String)),
            links(
                ("GetTask" = (operation_id = "get_task", parameters(("id" = "$response.body#/id")))),
                ("PatchTask" = (operation_id = "patch_task", parameters(("id" = "$response.body#/id")))),
                ("ReplaceTask" = (operation_id = "replace_task", parameters(("id" = "$response.body#/id")))),
                ("DeleteTask" = (operation_id = "delete_task", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid task, idempotency key reused with another body, or quota reached", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let fields = domain::parse_create(&body).map_err(ApiError::Validation)?;
    let idempotency = idempotency(&headers, &fields)?;
    let created = state
        .store
        .create_task(
            &owner,
            NewTask {
                fields,
                idempotency,
                max_tasks: state.config.max_tasks_per_principal,
            },
        )
        .await?;
    let task = created.task();
    let mut resp = task_response(StatusCode::CREATED, task);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/tasks/{}", task.id)) {
        h.insert(header::LOCATION, v);
    }
    if matches!(created, Created::Replayed(_)) {
        h.insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Get a task.
#[utoipa::path(
    get, path = "/v1/tasks/{id}", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = "Task id (UUIDv7)"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "An ETag; a match gives 304"),
    ),
    responses(
        (status = 200, description = "The task", body = TaskSchema, headers(("ETag" = String))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task for this principal", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    TaskIdPath(id): TaskIdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = state.store.get_task(&owner, id).await?;
    if if_none_match(&headers, task.version) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&task.etag()) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return Ok(resp);
    }
    Ok(task_response(StatusCode::OK, &task))
}

/// List tasks, newest or oldest first, with filters and keyset pagination.
#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Invalid parameter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_tasks(
    State(state): State<AppState>,
    Principal(owner): Principal,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|_| ApiError::BadRequest("the query string is malformed".into()))?;
    let query = ListQuery::parse(&params).map_err(ApiError::InvalidParameters)?;
    let page = state.store.list_tasks(&owner, &query).await?;
    Ok(axum::Json(TaskPage {
        items: page.items,
        next_cursor: page.next.map(encode_cursor),
    })
    .into_response())
}

async fn update(
    state: AppState,
    owner: PrincipalName,
    id: TaskId,
    headers: HeaderMap,
    change: TaskChange,
) -> Result<Response, ApiError> {
    let task = state
        .store
        .update_task(&owner, id, change, if_match(&headers))
        .await?;
    Ok(task_response(StatusCode::OK, &task))
}

/// Update some fields of a task with a JSON Merge Patch.
#[utoipa::path(
    patch, path = "/v1/tasks/{id}", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = "Task id (UUIDv7)"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ETag the client last saw; a stale one gives 412"),
    ),
    request_body(content = TaskPatchSchema, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The updated task", body = TaskSchema, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task for this principal", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The task changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field or unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn patch_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    TaskIdPath(id): TaskIdPath,
    headers: HeaderMap,
    MergePatchBody(body): MergePatchBody,
) -> Result<Response, ApiError> {
    let change = domain::parse_merge_patch(&body).map_err(ApiError::Validation)?;
    update(state, owner, id, headers, change).await
}

/// Replace every mutable field of a task.
#[utoipa::path(
    put, path = "/v1/tasks/{id}", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = "Task id (UUIDv7)"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ETag the client last saw; a stale one gives 412"),
    ),
    request_body(content = TaskInputSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "The replaced task", body = TaskSchema, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task for this principal", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The task changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field or unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn replace_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    TaskIdPath(id): TaskIdPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let fields = domain::parse_replace(&body).map_err(ApiError::Validation)?;
    update(state, owner, id, headers, TaskChange::Replace(fields)).await
}

/// Delete a task.
#[utoipa::path(
    delete, path = "/v1/tasks/{id}", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = "Task id (UUIDv7)"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "The ETag the client last saw; a stale one gives 412"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task for this principal", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The task changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn delete_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    TaskIdPath(id): TaskIdPath,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_task(&owner, id, if_match(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
