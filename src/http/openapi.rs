//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use std::sync::OnceLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ops, tasks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "devops-api",
        description = "Task management REST API. Every error is an RFC 9457 problem document.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        ops::health, ops::ready, ops::metrics, ops::openapi,
        tasks::create_task, tasks::list_tasks, tasks::get_task,
        tasks::patch_task, tasks::replace_task, tasks::delete_task,
    ),
    components(schemas(
        tasks::TaskSchema, tasks::TaskInputSchema, tasks::TaskPatchSchema, tasks::TaskPage,
        super::Problem, crate::domain::FieldError, ops::HealthStatus, crate::storage::Order,
    )),
    modifiers(&BearerAuth),
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
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as pretty JSON, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises"))
}
