//! The layers in front of every authenticated route: [`authenticate`] finds
//! the principal behind the bearer token and sets it as the request's
//! [`Principal`] extension; [`rate_limit`], inside it, spends from that
//! principal's bucket. [`guard`] and [`guard_router`] put both on routes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use super::client_addr::ClientAddr;
use super::extract::{Principal, authenticate as principal_of};
use super::{ApiError, AppState};
use crate::ratelimit::RateLimiter;

/// Authentication, then the per-principal rate limit when one is
/// configured, on every method `route` defines (not on its 405 answer).
pub fn guard(route: MethodRouter<AppState>, state: &AppState) -> MethodRouter<AppState> {
    let route = match &state.limiter {
        Some(limiter) => route.route_layer(from_fn_with_state(limiter.clone(), rate_limit)),
        None => route,
    };
    route.route_layer(from_fn_with_state(state.clone(), authenticate))
}

/// [`guard`] for every route of `router`.
pub fn guard_router(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let router = match &state.limiter {
        Some(limiter) => router.layer(from_fn_with_state(limiter.clone(), rate_limit)),
        None => router,
    };
    router.layer(from_fn_with_state(state.clone(), authenticate))
}

/// Sets the request's [`Principal`], or answers 401.
///
/// Requests from a client address that has spent its budget of failed
/// authentications are refused with 429 before the token is looked at (see
/// [`crate::ratelimit::AuthFailureLimiter`]); every 401 spends from it.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let client = parts
        .extensions
        .get::<ClientAddr>()
        .copied()
        .unwrap_or_default();
    if let Some(failures) = &state.auth_failures
        && let Err(retry_after_secs) = failures.check(client.0)
    {
        return ApiError::RateLimited { retry_after_secs }.into_response();
    }
    let name = match principal_of(&parts, &state).await {
        Ok(name) => name,
        Err(e) => {
            if matches!(e, ApiError::Unauthorized)
                && let Some(failures) = &state.auth_failures
            {
                failures.record_failure(client.0);
            }
            return e.into_response();
        }
    };
    // The request span (see `middleware::observe`) names the principal on
    // every later line of this request.
    tracing::Span::current().record("principal", name.as_str());
    parts.extensions.insert(Principal(name));
    next.run(Request::from_parts(parts, body)).await
}

/// Answers 429 with `Retry-After` when the request's principal has spent its
/// bucket; runs inside [`authenticate`], which sets the principal.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(Principal(name)) = req.extensions().get::<Principal>() else {
        tracing::error!("the rate limit runs on a route without authentication");
        return ApiError::Unauthorized.into_response();
    };
    if let Err(retry_after_secs) = limiter.check(name) {
        return ApiError::RateLimited { retry_after_secs }.into_response();
    }
    next.run(req).await
}
