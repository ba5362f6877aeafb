//! Operational routes: liveness, readiness, metrics, the OpenAPI document, and
//! the fallbacks that keep unknown routes and methods in the problem shape.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, Problem};

pub fn routes(with_metrics: bool) -> Router<AppState> {
    let r = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi));
    if with_metrics {
        r.merge(metrics_routes())
    } else {
        r
    }
}

pub fn metrics_routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct HealthStatus {
    /// `healthy` for `/health`, `ready` for `/ready`.
    status: &'static str,
}

/// Liveness: the process is up. No authentication, no storage access.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = HealthStatus,
        example = json!({"status": "healthy"}))))]
pub async fn health() -> impl IntoResponse {
    // `X-Served-By` names the version and revision that answered, so a
    // rollout can watch the new build take over.
    (
        [(
            HeaderName::from_static("x-served-by"),
            HeaderValue::from_static(crate::build_info::SERVED_BY),
        )],
        axum::Json(HealthStatus { status: "healthy" }),
    )
}

/// Readiness: storage answers and the process is not draining. Load balancers
/// route only to ready tasks.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = HealthStatus, example = json!({"status": "ready"})),
        (status = 503, description = "Draining or storage unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<HealthStatus>, ApiError> {
    if state.lifecycle.is_draining() {
        return Err(ApiError::Draining);
    }
    state.store.ping().await?;
    Ok(axum::Json(HealthStatus { status: "ready" }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(n) = state.store.count_tasks().await {
        metrics::gauge!("tasks_total").set(n as f64);
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    let mut resp = super::openapi::document_json().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
