//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! types they take and return, and the route that serves it.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{AppState, BODY_LIMIT, PROBLEM_JSON, Problem, ops, tasks};

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    let mut resp = document_json().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "devops-api",
        description = "Task management REST API. Every error is an RFC 9457 problem document.\n\n\
            Every response carries `X-Request-Id`: the request's own `X-Request-Id` when it is 1 to 64 \
            characters of `A-Z a-z 0-9 . _ : -`, else a generated UUID (also passed on and logged instead).\n\n\
            Operations that need a token answer 429 with `Retry-After` when the principal exceeds its \
            request rate, or when the client's address has spent its budget of failed authentications \
            (then whatever token it sends).",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        ops::health, ops::ready, ops::metrics, openapi,
        tasks::create_task, tasks::list_tasks, tasks::get_task,
        tasks::patch_task, tasks::replace_task, tasks::delete_task,
    ),
    components(schemas(
        tasks::TaskBody, tasks::TaskInput, tasks::TaskPatch, tasks::TaskPage,
        Problem, super::error::FieldProblem, ops::HealthStatus, crate::domain::Order,
    )),
    modifiers(&BearerAuth, &ProblemResponses),
    tags(
        (name = "tasks", description = "Tasks of the authenticated principal"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every 4xx and 5xx answer of this API is a [`Problem`] (the one mapping of
/// [`super::ApiError`]), so operations declare their problem answers by
/// status and description only, and this attaches the body. It also adds
/// the answers every authenticated operation can give (401, 429, 503) and
/// every operation with a body (413), so they are written once.
struct ProblemResponses;

const AUTHENTICATED: [(&str, &str); 3] = [
    ("401", "Missing or unknown token"),
    ("429", "Rate limited"),
    ("503", "Storage unavailable"),
];

impl ProblemResponses {
    fn apply(op: &mut Operation) {
        let too_large = format!("Body over {} KiB", BODY_LIMIT / 1024);
        let mut shared: Vec<(&str, &str)> = Vec::new();
        if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
            shared.extend(AUTHENTICATED);
        }
        if op.request_body.is_some() {
            shared.push(("413", &too_large));
        }
        for (status, description) in shared {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| ResponseBuilder::new().description(description).into());
        }
        for (status, response) in op.responses.responses.iter_mut() {
            let problem = status.starts_with('4') || status.starts_with('5');
            if let (true, RefOr::T(response)) = (problem, response)
                && response.content.is_empty()
            {
                response.content.insert(
                    PROBLEM_JSON.to_owned(),
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(Problem::name())))
                        .build()
                        .into(),
                );
            }
        }
    }
}

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                Self::apply(op);
            }
        }
    }
}

/// The document as pretty JSON, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc =
            serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
        fix_link_field_names(&mut doc);
        declare_what_annotations_cannot(&mut doc);
        serde_json::to_string_pretty(&doc).expect("JSON values serialise")
    })
}

/// The operational routes: public, no token.
const PUBLIC_PATHS: [&str; 4] = ["/health", "/ready", "/metrics", "/openapi.json"];

/// What holds across operations and is stated once here rather than on every
/// annotation: the server (this origin), that the operational routes need no
/// token, the 431 every route can answer, and the response headers clients
/// rely on: `X-Request-Id` on every answer, `Retry-After` on 429 (always) and
/// 503 (when storage is unavailable or the process is draining), `ETag` on
/// 304, `Idempotency-Replayed` on a replayed create; and that the `ETag` and
/// `Location` headers the annotations declare are always sent.
fn declare_what_annotations_cannot(doc: &mut serde_json::Value) {
    use serde_json::json;
    doc["servers"] = json!([{"url": "/", "description": "The server that serves this document"}]);
    let request_id = json!({
        "description": "The request's own X-Request-Id when acceptable (1 to 64 characters of \
            `A-Z a-z 0-9 . _ : -`), else a generated UUID.",
        "required": true,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    });
    let retry_after = |required: bool| {
        json!({
            "description": "Seconds to wait before retrying.",
            "required": required,
            "schema": {"type": "integer", "minimum": 0},
        })
    };
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                op["security"] = json!([]);
                op["responses"]["431"] = json!({
                    "description": "The request line and headers exceed 16 KiB (empty body; the connection is closed)",
                });
            }
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let headers = &mut response["headers"];
                if !headers.is_object() {
                    *headers = json!({});
                }
                // The handlers set every ETag and Location they declare.
                for name in ["ETag", "Location"] {
                    if let Some(h) = headers.get_mut(name).and_then(|h| h.as_object_mut()) {
                        h.insert("required".into(), json!(true));
                    }
                }
                // 431 comes from the HTTP layer before any middleware runs.
                if status != "431" {
                    headers["X-Request-Id"] = request_id.clone();
                }
                match status.as_str() {
                    "429" => headers["Retry-After"] = retry_after(true),
                    "503" => headers["Retry-After"] = retry_after(false),
                    "304" => {
                        headers["ETag"] = json!({"required": true, "schema": {"type": "string"}})
                    }
                    "201" if path == "/v1/tasks" && method == "post" => {
                        headers["Idempotency-Replayed"] = json!({
                            "description": "`true` when an earlier request with the same Idempotency-Key \
                                created this task and this answer repeats it.",
                            "required": false,
                            "schema": {"type": "string", "enum": ["true"]},
                        });
                    }
                    _ => {}
                }
                if headers.as_object().is_some_and(|h| h.is_empty()) {
                    response.as_object_mut().map(|r| r.remove("headers"));
                }
            }
        }
    }
}

/// utoipa 5.5 writes Link Objects with Rust field names (`operation_id`);
/// OpenAPI names them `operationId`, `operationRef`, `requestBody`.
fn fix_link_field_names(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
        .flat_map(|r| r.values_mut());
    for response in responses {
        let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
            for (from, to) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(v) = link.remove(from) {
                    link.insert(to.to_owned(), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The patterns hold characters beyond the Basic Multilingual Plane
    /// literally (no escape syntax is shared by ECMA-262 and Python's `re`;
    /// JSON surrogate-pair escapes would break YAML readers of the document).
    #[test]
    fn patterns_are_served_as_the_domain_states_them() {
        let doc = super::document_json();
        let parsed: serde_json::Value = serde_json::from_str(doc).unwrap();
        let pattern =
            parsed["components"]["schemas"]["TaskInput"]["properties"]["title"]["pattern"]
                .as_str()
                .unwrap();
        assert_eq!(pattern, crate::domain::text::title_pattern());
        assert!(pattern.contains('\u{e007f}'));
    }

    /// What generated clients and `redocly lint` rely on: a server, public
    /// operational routes with a 4xx, and the response headers clients read.
    #[test]
    fn servers_security_and_response_headers_are_declared() {
        let doc: serde_json::Value = serde_json::from_str(super::document_json()).unwrap();
        assert_eq!(doc["servers"][0]["url"], "/");
        for path in super::PUBLIC_PATHS {
            let op = &doc["paths"][path]["get"];
            assert_eq!(op["security"], serde_json::json!([]), "{path}");
            assert!(op["responses"]["431"].is_object(), "{path}");
        }
        let mut statuses = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    statuses += 1;
                    let h = &response["headers"];
                    let at = format!("{method} {path} {status}");
                    if status != "431" {
                        assert_eq!(h["X-Request-Id"]["required"], true, "{at}");
                    }
                    match status.as_str() {
                        "429" => assert_eq!(h["Retry-After"]["required"], true, "{at}"),
                        "503" => assert_eq!(h["Retry-After"]["schema"]["type"], "integer", "{at}"),
                        "304" => assert_eq!(h["ETag"]["required"], true, "{at}"),
                        _ => {}
                    }
                }
            }
        }
        assert!(statuses > 40);
        let created = &doc["paths"]["/v1/tasks"]["post"]["responses"]["201"]["headers"];
        for name in ["ETag", "Location"] {
            assert_eq!(created[name]["required"], true, "{name}");
        }
        assert_eq!(created["Idempotency-Replayed"]["schema"]["enum"][0], "true");
    }

    #[test]
    fn links_use_openapi_field_names() {
        let doc: serde_json::Value = serde_json::from_str(super::document_json()).unwrap();
        let link = &doc["paths"]["/v1/tasks"]["post"]["responses"]["201"]["links"]["GetTask"];
        assert_eq!(link["operationId"], "get_task");
        assert!(link.get("operation_id").is_none());
    }
}
