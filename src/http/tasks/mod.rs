//! `/v1/tasks`: the task resource. Handlers take validated domain values from
//! their extractors ([`types`], [`query`]), call the store, and answer with
//! the API's own body types; storage outcomes become responses through
//! [`ApiError`]. Every problem answer (4xx, 5xx) is a `Problem` document: the
//! OpenAPI document attaches it, and the answers every authenticated
//! operation shares, in one place (`openapi::ProblemResponses`).

mod query;
mod types;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};

pub use self::query::ListParams;
pub use self::types::{TaskBody, TaskInput, TaskPage, TaskPatch};
use super::ApiError;
use super::AppState;
use super::extract::{Principal, TaskIdPath, if_match, if_none_match};
use super::guard::guard;
use crate::domain::{self, FieldError, PrincipalName, Task, TaskChange, TaskId};
use crate::storage::{Created, Idempotency, NewTask};

/// Descriptions of problem answers that several operations give.
const MALFORMED_ID: &str = "Malformed id";
const NO_SUCH_TASK: &str = "No such task for this principal";
const STALE_ETAG: &str = "The task changed since the given ETag";
const INVALID_FIELD: &str = "Invalid field or unknown field";
/// Descriptions of parameters that several operations take.
const IF_MATCH: &str = "The ETag the client last saw; a stale one gives 412";
const TASK_ID: &str = "Task id (UUIDv7)";

/// The longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The task routes, each behind authentication and the rate limit
/// ([`guard`]).
pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/tasks", guard(get(list_tasks).post(create_task), state))
        .route(
            "/v1/tasks/{id}",
            guard(
                get(get_task)
                    .put(replace_task)
                    .patch(patch_task)
                    .delete(delete_task),
                state,
            ),
        )
}

/// `body` as a JSON response, serialised into one buffer of `capacity` bytes
/// to start with: axum's `Json` starts at 128 bytes and grows by copying,
/// eight times over for a page of fifty tasks.
fn json_response<T: serde::Serialize>(status: StatusCode, body: &T, capacity: usize) -> Response {
    let mut buf = Vec::with_capacity(capacity);
    // The bodies are structs of strings, numbers and sequences: no map with
    // non-string keys, nothing that can fail to serialise.
    serde_json::to_writer(&mut buf, body).expect("response bodies serialise to JSON");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        buf,
    )
        .into_response()
}

/// What a task's JSON takes, generously: a title and a handful of tags. A
/// longer task grows the buffer once or twice.
const TASK_JSON_BYTES: usize = 512;

fn task_response(status: StatusCode, task: &Task) -> Response {
    let mut resp = json_response(status, &TaskBody::from(task), TASK_JSON_BYTES);
    if let Ok(v) = HeaderValue::from_str(&task.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The `Idempotency-Key` header, read with the other request parts but
/// judged only after the body: an invalid body is reported before an invalid
/// key.
pub struct IdempotencyKey(Result<Option<String>, ApiError>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get("idempotency-key") else {
            return Ok(Self(Ok(None)));
        };
        let key = raw
            .to_str()
            .ok()
            .filter(|k| {
                (1..=IDEMPOTENCY_KEY_MAX).contains(&k.len())
                    && k.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(|k| Some(k.to_owned()))
            .ok_or_else(|| {
                ApiError::InvalidParameters(vec![FieldError::new(
                    "Idempotency-Key",
                    format!("must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"),
                )])
            });
        Ok(Self(key))
    }
}

impl IdempotencyKey {
    /// The key with the digest of the request it came with: the validated
    /// fields, so formatting and key order do not matter. The digest is
    /// stored with the key, so the serialisation of [`domain::TaskFields`]
    /// is part of the idempotency record's format.
    fn with_request(self, fields: &domain::TaskFields) -> Result<Option<Idempotency>, ApiError> {
        let Some(key) = self.0? else {
            return Ok(None);
        };
        let canonical = serde_json::to_vec(fields).expect("fields serialise");
        Ok(Some(Idempotency {
            key,
            request_digest: Sha256::digest(&canonical).into(),
        }))
    }
}

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(format!(
                    "Makes retries safe: the same key with the same body within {} h returns \
                     the original task instead of creating another. 1–{IDEMPOTENCY_KEY_MAX} \
                     printable ASCII characters, such as a UUID.",
                    crate::storage::IDEMPOTENCY_TTL.as_secs() / 3600
                )))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(IDEMPOTENCY_KEY_MAX))
                        .pattern(Some(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")),
                ))
                .build(),
        ]
    }
}

/// Create a task.
#[utoipa::path(
    post, path = "/v1/tasks", tag = "tasks",
    request_body(content = TaskInput, content_type = "application/json"),
    params(IdempotencyKey),
    responses(
        (status = 201, description = "Created", body = TaskBody,
            headers(("Location" = String, description = "URL of the new task"), ("ETag" = String)),
            links(
                ("GetTask" = (operation_id = "get_task", parameters(("id" = "$response.body#/id")))),
                ("PatchTask" = (operation_id = "patch_task", parameters(("id" = "$response.body#/id")))),
                ("ReplaceTask" = (operation_id = "replace_task", parameters(("id" = "$response.body#/id")))),
                ("DeleteTask" = (operation_id = "delete_task", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Malformed JSON or header"),
        (status = 415, description = "Not application/json"),
        (status = 422, description = "Invalid task, idempotency key reused with another body, or quota reached"),
    ),
    security(("bearer" = []))
)]
async fn create_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    key: IdempotencyKey,
    TaskInput(fields): TaskInput,
) -> Result<Response, ApiError> {
    let idempotency = key.with_request(&fields)?;
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
        ("id" = String, Path, format = Uuid, description = TASK_ID),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "An ETag; a match gives 304"),
    ),
    responses(
        (status = 200, description = "The task", body = TaskBody, headers(("ETag" = String))),
        (status = 304, description = "Not modified"),
        (status = 400, description = MALFORMED_ID),
        (status = 404, description = NO_SUCH_TASK),
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
///
/// A filtered page (`status`, `priority`, `tag`, `due_before`, `q`) examines
/// a bounded number of tasks, so it may hold fewer items than `limit`, even
/// none, while `next_cursor` is present: the tasks up to that cursor were
/// examined and nothing is skipped. Clients page until `next_cursor` is
/// `null`; a short or empty page does not mean the end of the listing.
#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Invalid parameter or cursor"),
    ),
    security(("bearer" = []))
)]
async fn list_tasks(
    State(state): State<AppState>,
    Principal(owner): Principal,
    ListParams(query): ListParams,
) -> Result<Response, ApiError> {
    let page = state.store.list_tasks(&owner, &query).await?;
    let capacity = 64 + page.items.len() * TASK_JSON_BYTES;
    Ok(json_response(
        StatusCode::OK,
        &TaskPage::new(&page.items, page.next),
        capacity,
    ))
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
        ("id" = String, Path, format = Uuid, description = TASK_ID),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
    ),
    request_body(content = TaskPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The updated task", body = TaskBody, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or id"),
        (status = 404, description = NO_SUCH_TASK),
        (status = 412, description = STALE_ETAG),
        (status = 415, description = "Not JSON"),
        (status = 422, description = INVALID_FIELD),
    ),
    security(("bearer" = []))
)]
async fn patch_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    TaskIdPath(id): TaskIdPath,
    headers: HeaderMap,
    TaskPatch(change): TaskPatch,
) -> Result<Response, ApiError> {
    update(state, owner, id, headers, change).await
}

/// Replace every mutable field of a task.
#[utoipa::path(
    put, path = "/v1/tasks/{id}", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = TASK_ID),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
    ),
    request_body(content = TaskInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The replaced task", body = TaskBody, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or id"),
        (status = 404, description = NO_SUCH_TASK),
        (status = 412, description = STALE_ETAG),
        (status = 415, description = "Not application/json"),
        (status = 422, description = INVALID_FIELD),
    ),
    security(("bearer" = []))
)]
async fn replace_task(
    State(state): State<AppState>,
    Principal(owner): Principal,
    TaskIdPath(id): TaskIdPath,
    headers: HeaderMap,
    TaskInput(fields): TaskInput,
) -> Result<Response, ApiError> {
    update(state, owner, id, headers, TaskChange::Replace(fields)).await
}

/// Delete a task.
#[utoipa::path(
    delete, path = "/v1/tasks/{id}", tag = "tasks",
    params(
        ("id" = String, Path, format = Uuid, description = TASK_ID),
        ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = MALFORMED_ID),
        (status = 404, description = NO_SUCH_TASK),
        (status = 412, description = STALE_ETAG),
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
