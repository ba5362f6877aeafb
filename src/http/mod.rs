//! The HTTP layer: the router builder, shared state, and the middleware stack.
//! Feature modules own their routes (`tasks`, `ops`) and merge into one router.

mod client_addr;
mod docs;
mod error;
mod extract;
mod guard;
mod middleware;
pub mod openapi;
mod ops;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use client_addr::{ClientAddr, TrustedProxies};
pub use docs::{DOCS_PATH, DocsAccess};
pub use error::{ApiError, PROBLEM_JSON, Problem};
pub use middleware::{REQUEST_ID_MAX, accepted_request_id};
pub use tasks::{TaskBody, TaskPage};

use crate::auth::StaticTokens;
use crate::lifecycle::Lifecycle;
use crate::ratelimit::{AuthFailureLimiter, RateLimiter};
use crate::storage::Store;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Behaviour of the API that operators configure.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_tasks_per_principal: u64,
    pub request_timeout: Duration,
    /// Requests per second per principal, with a burst of twice that; `None`: no limit.
    pub rate_limit: Option<u32>,
    /// Origins allowed by CORS; empty denies every cross-origin request.
    pub cors_origins: Vec<HeaderValue>,
    /// Serve `/metrics` on this router (false when it has its own listener).
    pub metrics_on_main: bool,
    /// Failed authentications per minute per client address (also the
    /// burst); `None`: no limit.
    pub auth_failure_limit: Option<u32>,
    /// Peers whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: TrustedProxies,
    /// Who may open the interactive docs at `/docs`.
    pub docs: DocsAccess,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_tasks_per_principal: 100_000,
            request_timeout: Duration::from_secs(30),
            rate_limit: None,
            cors_origins: Vec::new(),
            metrics_on_main: true,
            auth_failure_limit: None,
            trusted_proxies: TrustedProxies::default(),
            docs: DocsAccess::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub lifecycle: Lifecycle,
    pub config: Arc<ApiConfig>,
    pub static_tokens: Arc<StaticTokens>,
    pub metrics: PrometheusHandle,
    pub limiter: Option<Arc<RateLimiter>>,
    pub auth_failures: Option<Arc<AuthFailureLimiter>>,
}

impl AppState {
    /// `metrics` renders `/metrics`: the handle of the recorder the process
    /// installed ([`crate::telemetry::install_metrics`]).
    pub fn new(
        store: Arc<dyn Store>,
        config: ApiConfig,
        static_tokens: StaticTokens,
        metrics: PrometheusHandle,
    ) -> Self {
        let limiter = config.rate_limit.map(|rps| Arc::new(RateLimiter::new(rps)));
        let auth_failures = config
            .auth_failure_limit
            .map(|n| Arc::new(AuthFailureLimiter::new(n)));
        Self {
            store,
            lifecycle: Lifecycle::new(),
            config: Arc::new(config),
            static_tokens: Arc::new(static_tokens),
            metrics,
            limiter,
            auth_failures,
        }
    }
}

/// The whole API as a router: what the binary serves and what tests call.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .merge(ops::routes(state.config.metrics_on_main))
        .merge(openapi::routes())
        .merge(tasks::routes(&state))
        .merge(docs::routes(state.config.docs, state.clone()))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed);
    // Request ids, the log line and metrics, the fixed response headers and
    // `Connection: close` while draining are one middleware (outermost, so it
    // sees CORS preflight answers too); the deadline stays inside CORS, so a
    // timed-out answer still carries the CORS headers.
    router = router
        .layer(axum::middleware::from_fn_with_state(
            state.config.request_timeout,
            middleware::timeout,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(cors(&state.config.cors_origins))
        .layer(axum::middleware::from_fn_with_state(
            middleware::Observe::new(
                state.lifecycle.clone(),
                state.config.trusted_proxies.clone(),
            ),
            middleware::observe,
        ));
    router.with_state(state)
}

/// Only `/metrics`, for a separate listener that the proxy never exposes.
pub fn metrics_app(state: AppState) -> Router {
    ops::metrics_routes().with_state(state)
}

fn cors(origins: &[HeaderValue]) -> CorsLayer {
    if origins.is_empty() {
        // No CORS headers at all: browsers refuse every cross-origin call.
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([header::ETAG, header::LOCATION])
        .max_age(Duration::from_secs(600))
}
