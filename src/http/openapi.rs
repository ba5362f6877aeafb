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
                        .build(),
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
        serde_json::to_string_pretty(&doc).expect("JSON values serialise")
    })
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

    #[test]
    fn links_use_openapi_field_names() {
        let doc: serde_json::Value = serde_json::from_str(super::document_json()).unwrap();
        let link = &doc["paths"]["/v1/tasks"]["post"]["responses"]["201"]["links"]["GetTask"];
        assert_eq!(link["operationId"], "get_task");
        assert!(link.get("operation_id").is_none());
    }
}
