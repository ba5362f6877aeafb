//! Interactive API documentation for people: Swagger UI at `/docs`, served
//! from assets compiled into the binary (no CDN, works offline), and a small
//! index at `/` that links the docs, the OpenAPI document and `/health`.
//!
//! Swagger UI reads the same `/openapi.json` clients use, and its "Authorize"
//! button takes the bearer token (the document declares the `bearer` scheme).
//! Its pages carry a Content-Security-Policy that allows only this origin, so
//! a build that tried to load anything from elsewhere would fail in the
//! browser test rather than in production.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::AppState;

/// Who may open `/docs` (setting `--docs`, `DOCS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DocsAccess {
    /// Anyone: the pages show nothing `/openapi.json` does not already
    /// publish, and every call made from them needs a token.
    #[default]
    Public,
    /// Only requests with a valid bearer token (for a proxy or tool that adds
    /// the header); others get the API's 401.
    Token,
    /// Not served (404); `/` then does not link them.
    Off,
}

/// Where Swagger UI lives.
pub const DOCS_PATH: &str = "/docs";

/// Only this origin; Swagger UI sets inline styles and uses `data:` images
/// for its icons, and calls the API with `fetch` (connect-src).
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const INDEX_CSP: &str =
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes(access: DocsAccess, state: AppState) -> Router<AppState> {
    let index = Router::new().route("/", get(move || index(access)));
    if access == DocsAccess::Off {
        return index;
    }
    let config = Config::new(["/openapi.json"])
        .try_it_out_enabled(true)
        .display_request_duration(true)
        .persist_authorization(false);
    let ui: Router<AppState> = SwaggerUi::new(DOCS_PATH).config(config).into();
    let ui = ui.layer(axum::middleware::from_fn(docs_headers));
    let ui = match access {
        DocsAccess::Token => super::guard::guard_router(ui, &state),
        _ => ui,
    };
    index.merge(ui)
}

/// The CSP, and caching for the static assets (they change only with the binary).
async fn docs_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let ok = resp.status().is_success();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    if ok {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=3600"),
        );
    }
    resp
}

async fn index(access: DocsAccess) -> impl IntoResponse {
    let docs = if access == DocsAccess::Off {
        ""
    } else {
        "<li><a href=\"/docs/\">Interactive API documentation</a> (Swagger UI; \
         \"Authorize\" takes a bearer token)</li>\n"
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>devops-api</title></head>\n<body>\n<h1>devops-api</h1>\n<ul>\n{docs}\
         <li><a href=\"/openapi.json\">OpenAPI document</a> (JSON, OpenAPI 3.1)</li>\n\
         <li><a href=\"/health\">Health</a></li>\n</ul>\n\
         <p>The API is under <code>/v1/tasks</code> and needs \
         <code>Authorization: Bearer TOKEN</code>.</p>\n</body>\n</html>\n",
    );
    (
        [(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(INDEX_CSP),
        )],
        Html(body),
    )
}
