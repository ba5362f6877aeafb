//! Cross-cutting request handling: request ids, the request log line and
//! metrics, the response headers every answer carries, connection handling
//! while draining, and the request deadline.
//!
//! Everything but the deadline is one middleware ([`observe`]) instead of a
//! stack of small layers: each layer costs a boxed future and a clone of its
//! state per request, and on `/health` the stack cost more than the handler.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Gauge, Label};

use super::ApiError;
use crate::lifecycle::Lifecycle;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What [`observe`] needs, shared by every request (one `Arc` clone each).
pub struct Observe {
    lifecycle: Lifecycle,
    in_flight: Gauge,
}

impl Observe {
    pub fn new(lifecycle: Lifecycle) -> Arc<Self> {
        Arc::new(Self {
            lifecycle,
            in_flight: metrics::gauge!("http_requests_in_flight"),
        })
    }
}

/// Decrements the in-flight gauge however the request ends (also when the
/// client goes away and the request future is dropped).
struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Per request: takes the caller's `x-request-id` or generates one (a random
/// UUID) and echoes it on the response; writes one log line and the request
/// metrics; sets `X-Content-Type-Options: nosniff`, and `Cache-Control:
/// no-store` and `X-Frame-Options: DENY` unless the handler set them; while
/// draining, answers with `Connection: close`, so a proxy that still sends us
/// requests opens its next connection to a task that is staying.
///
/// The route label is the matched route template, or `unmatched`, so scans of
/// random paths cannot grow the number of series.
pub async fn observe(State(shared): State<Arc<Observe>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()));

    shared.in_flight.increment(1.0);
    let in_flight = InFlight(&shared.in_flight);
    let mut resp = next.run(req).await;
    drop(in_flight);
    let elapsed = started.elapsed();

    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    if shared.lifecycle.is_draining() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    headers.entry(X_REQUEST_ID).or_insert(request_id.clone());

    let status = resp.status().as_u16();
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let labels = || {
        vec![
            Label::new("method", method.clone()),
            Label::from_static_parts("route", route),
            Label::from_static_parts("status", class),
        ]
    };
    metrics::counter!("http_requests_total", labels()).increment(1);
    metrics::histogram!("http_request_duration_seconds", labels()).record(elapsed.as_secs_f64());
    tracing::info!(
        target: "devops_api::request",
        method = &*method,
        route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = request_id.to_str().unwrap_or(""),
        "request"
    );
    resp
}

/// Abandons a request that runs past the configured deadline.
pub async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// The method as a label value, without allocating for the standard methods.
fn method_label(method: &Method) -> metrics::SharedString {
    let known = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return metrics::SharedString::from_owned(method.as_str().to_owned()),
    };
    metrics::SharedString::const_str(known)
}

/// The route template as a `&'static str`. Only matched templates come here,
/// a fixed set per router, so each is leaked once for the whole process.
fn intern(route: &str) -> &'static str {
    thread_local! {
        static LOCAL: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }
    static ALL: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    LOCAL.with(|local| {
        if let Some(r) = local.borrow().iter().find(|r| **r == route) {
            return *r;
        }
        let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
        let r = match all.iter().find(|r| **r == route) {
            Some(r) => *r,
            None => {
                let r: &'static str = Box::leak(route.to_owned().into_boxed_str());
                all.push(r);
                r
            }
        };
        local.borrow_mut().push(r);
        r
    })
}

/// A random (version 4) UUID, hyphenated. uuid's `fast-rng` draws it from a
/// thread-local generator seeded from the OS: a request id has to be unique,
/// not secret, and asking the kernel for randomness on every request showed in
/// the profile.
fn new_request_id() -> HeaderValue {
    let id = uuid::Uuid::new_v4();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).expect("a UUID is a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuids_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn routes_intern_to_one_string() {
        let a = intern(&String::from("/v1/tasks/{id}"));
        let b = intern(&String::from("/v1/tasks/{id}"));
        assert_eq!(a, "/v1/tasks/{id}");
        assert!(std::ptr::eq(a, b));
    }
}
