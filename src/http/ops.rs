//! Operational routes: liveness, readiness, metrics, and
//! the fallbacks that keep unknown routes and methods in the problem shape.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};

pub fn routes(with_metrics: bool) -> Router<AppState> {
    let r = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready));
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
        (status = 503, description = "Draining or storage unavailable"),
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
    use crate::metrics_catalog::{SERVER_DRAINING, SERVER_READY, TASKS_STORED, collect_process};
    if let Ok(n) = state.store.count_tasks().await {
        metrics::gauge!(TASKS_STORED).set(n as f64);
    }
    let draining = state.lifecycle.is_draining();
    let ready = !draining && state.store.ping().await.is_ok();
    metrics::gauge!(SERVER_DRAINING).set(f64::from(u8::from(draining)));
    metrics::gauge!(SERVER_READY).set(f64::from(u8::from(ready)));
    state.store.publish_metrics();
    collect_process();
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
