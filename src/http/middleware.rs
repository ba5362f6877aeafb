//! Cross-cutting request handling: request ids, the request log line and
//! metrics, the response headers every answer carries, connection handling
//! while draining, and the request deadline.
//!
//! Everything but the deadline is one middleware ([`observe`]) instead of a
//! stack of small layers: each layer costs a boxed future and a clone of its
//! state per request, and on `/health` the stack cost more than the handler.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Gauge, Histogram, Label};
use tracing::Instrument;

use super::ApiError;
use super::client_addr::TrustedProxies;
use crate::lifecycle::Lifecycle;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What [`observe`] needs, shared by every request (one `Arc` clone each).
pub struct Observe {
    lifecycle: Lifecycle,
    trusted_proxies: TrustedProxies,
    in_flight: Gauge,
    series: Mutex<Vec<Series>>,
}

/// The request metrics of one (method, route, status class): looked up in
/// the recorder once, then reused. A lookup builds the labels and hashes the
/// key on every request otherwise. The label values are `&'static str` from
/// fixed sets ([`method_label`], [`intern`], the classes), so comparing
/// their addresses identifies a series and the list stays small.
struct Series {
    labels: [&'static str; 3],
    handles: Arc<(Counter, Histogram)>,
}

impl Observe {
    pub fn new(lifecycle: Lifecycle, trusted_proxies: TrustedProxies) -> Arc<Self> {
        Arc::new(Self {
            lifecycle,
            trusted_proxies,
            in_flight: metrics::gauge!("http_requests_in_flight"),
            series: Mutex::new(Vec::new()),
        })
    }

    fn series(
        &self,
        method: &'static str,
        route: &'static str,
        class: &'static str,
    ) -> Arc<(Counter, Histogram)> {
        let key = [method, route, class];
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let same = |s: &&Series| s.labels.iter().zip(&key).all(|(a, b)| std::ptr::eq(*a, *b));
        if let Some(s) = all.iter().find(same) {
            return s.handles.clone();
        }
        let labels = || {
            vec![
                Label::from_static_parts("method", method),
                Label::from_static_parts("route", route),
                Label::from_static_parts("status", class),
            ]
        };
        let handles = Arc::new((
            metrics::counter!("http_requests_total", labels()),
            metrics::histogram!("http_request_duration_seconds", labels()),
        ));
        all.push(Series {
            labels: key,
            handles: handles.clone(),
        });
        handles
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

/// Per request: takes the caller's `x-request-id` when it follows
/// [`accepted_request_id`], else generates one (a random UUID) and passes that
/// on instead, and echoes it on the response; records the [`ClientAddr`](super::ClientAddr);
/// writes one log line and the request metrics; sets `X-Content-Type-Options: nosniff`, and `Cache-Control:
/// no-store` and `X-Frame-Options: DENY` unless the handler set them; while
/// draining, answers with `Connection: close`, so a proxy that still sends us
/// requests opens its next connection to a task that is staying.
///
/// Every value a client chooses is bounded before it reaches a label or a log
/// line: the route label is the matched route template or `unmatched`, the
/// method label one of the standard methods or `other`, the status label a
/// class; the logged method is cut to [`LOGGED_METHOD_MAX`] bytes and the
/// request id follows [`accepted_request_id`].
pub async fn observe(State(shared): State<Arc<Observe>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = match req.headers().get(X_REQUEST_ID) {
        Some(id) if accepted_request_id(id.as_bytes()) => id.clone(),
        _ => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    let client = shared.trusted_proxies.client_addr(&req);
    req.extensions_mut().insert(client);
    let method = method_label(req.method());
    let logged_method = logged_method(req.method());
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| intern(p.as_str()));
    let route = matched.unwrap_or("unmatched");
    // Only an unmatched path is logged as sent (a matched one is its route
    // template plus ids): scanners' paths are what an operator looks for.
    let path = match matched {
        Some(_) => None,
        None => Some(logged_path(req.uri().path()).into_owned()),
    };
    // Every line logged while the request is served carries these fields.
    // The span is at ERROR level so that it is enabled whatever the log
    // level: a warning must not lose its request id because `info` is off.
    let span = tracing::error_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        principal = tracing::field::Empty,
    );

    shared.in_flight.increment(1.0);
    let in_flight = InFlight(&shared.in_flight);
    let mut resp = next.run(req).instrument(span.clone()).await;
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
    let series = shared.series(method, route, class);
    series.0.increment(1);
    series.1.record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            target: "devops_api::request",
            method = &*logged_method,
            route,
            path = path.as_deref(),
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            client = %client.0,
            "request"
        );
    });
    resp
}

/// Longest unmatched path written to the log as sent; longer ones are cut and marked.
pub const LOGGED_PATH_MAX: usize = 256;

/// The path for the log line: up to [`LOGGED_PATH_MAX`] bytes, cut at a
/// character boundary and followed by `...` when longer.
fn logged_path(path: &str) -> Cow<'_, str> {
    if path.len() <= LOGGED_PATH_MAX {
        return Cow::Borrowed(path);
    }
    let mut end = LOGGED_PATH_MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &path[..end]))
}

/// Abandons a request that runs past the configured deadline.
pub async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// The method as a label value: the nine methods of RFC 9110 and PATCH by
/// name, any other method (a client may send any token) as `other`, so the
/// number of series does not depend on what clients send.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Longest method written to the log as sent; longer ones are cut and marked.
pub const LOGGED_METHOD_MAX: usize = 16;

/// The method for the log line: as sent up to [`LOGGED_METHOD_MAX`] bytes,
/// else its first bytes followed by `...`. Allocates only for methods that are
/// not standard. A method is an HTTP token (ASCII), so any byte offset is a
/// character boundary.
fn logged_method(method: &Method) -> Cow<'static, str> {
    match method_label(method) {
        "other" => {
            let m = method.as_str();
            match m.get(..LOGGED_METHOD_MAX) {
                Some(head) if m.len() > LOGGED_METHOD_MAX => Cow::Owned(format!("{head}...")),
                _ => Cow::Owned(m.to_owned()),
            }
        }
        known => Cow::Borrowed(known),
    }
}

/// Longest accepted client-chosen request id.
pub const REQUEST_ID_MAX: usize = 64;

/// Whether a client's `x-request-id` is used as is: 1 to [`REQUEST_ID_MAX`]
/// characters of `A-Z a-z 0-9 . _ : -` (UUIDs, ULIDs, trace ids fit). Anything
/// else is replaced by a generated id, so a log line or an echoed header never
/// carries more than this from a client.
pub fn accepted_request_id(id: &[u8]) -> bool {
    (1..=REQUEST_ID_MAX).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
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
    fn only_standard_methods_are_labels_and_logged_methods_are_cut() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for raw in ["get", "PROPFIND", "BREW", &"X".repeat(32 * 1024)] {
            let m = Method::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{raw:.20}");
        }
        assert_eq!(logged_method(&Method::DELETE), "DELETE");
        let exact = Method::from_bytes(&[b'M'; LOGGED_METHOD_MAX]).unwrap();
        assert_eq!(logged_method(&exact).len(), LOGGED_METHOD_MAX);
        let long = Method::from_bytes(&[b'M'; 32 * 1024]).unwrap();
        assert_eq!(
            logged_method(&long),
            format!("{}...", "M".repeat(LOGGED_METHOD_MAX))
        );
    }

    #[test]
    fn request_id_rule() {
        for ok in [
            "abc-123",
            "0190f7d2-9c1e-7e3a-8000-000000000000",
            "a.b_c:d",
            &"x".repeat(64),
        ] {
            assert!(accepted_request_id(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(65),
            "a b",
            "a/b",
            "a\tb",
            "é",
            "a\"b",
            "<script>",
            "a%20b",
        ] {
            assert!(!accepted_request_id(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn logged_paths_are_cut_at_a_character_boundary() {
        assert_eq!(logged_path("/a/b"), "/a/b");
        let exact = "x".repeat(LOGGED_PATH_MAX);
        assert_eq!(logged_path(&exact), exact);
        let long = format!("/{}", "é".repeat(LOGGED_PATH_MAX));
        let cut = logged_path(&long);
        assert!(
            cut.ends_with("...") && cut.len() <= LOGGED_PATH_MAX + 3,
            "{cut}"
        );
        assert!(long.starts_with(cut.trim_end_matches("...")));
    }

    #[test]
    fn routes_intern_to_one_string() {
        let a = intern(&String::from("/v1/tasks/{id}"));
        let b = intern(&String::from("/v1/tasks/{id}"));
        assert_eq!(a, "/v1/tasks/{id}");
        assert!(std::ptr::eq(a, b));
    }
}
