//! The one error type of the HTTP layer and its single mapping to
//! `application/problem+json` (RFC 9457). Causes are logged here; response
//! bodies never carry internals.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FieldError;
use crate::storage::{Chain, StorageError};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request is malformed: {0}")]
    BadRequest(String),
    /// Invalid query or path parameters.
    #[error("invalid parameters")]
    InvalidParameters(Vec<FieldError>),
    #[error("invalid body")]
    Validation(Vec<FieldError>),
    #[error("unauthorized")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("idempotency key reused with a different body")]
    IdempotencyMismatch,
    #[error("task quota of {0} reached")]
    QuotaExceeded(u64),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// The store cannot serve the request now (retry shortly).
    #[error("storage unavailable")]
    Unavailable(#[source] StorageError),
    /// The process is stopping: not ready.
    #[error("draining")]
    Draining,
    #[error("request timed out")]
    Timeout,
    /// A stored record is damaged, or the store broke its contract.
    #[error("internal error")]
    Internal(#[source] StorageError),
}

/// The problem document. `errors` lists field problems for validation errors.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    pub errors: Vec<FieldProblem>,
}

/// One problem with one field of the input.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FieldError)]
pub struct FieldProblem {
    /// The field's name, `tags[3]` for an element of a list, or empty for the body itself.
    pub field: String,
    pub message: String,
}

impl From<FieldError> for FieldProblem {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        use ApiError::*;
        match self {
            BadRequest(d) => (StatusCode::BAD_REQUEST, "about:blank", d.clone()),
            InvalidParameters(_) => (
                StatusCode::BAD_REQUEST,
                "urn:devops-api:problem:invalid-parameters",
                "One or more parameters are invalid.".into(),
            ),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:devops-api:problem:validation",
                "The request body is not a valid task.".into(),
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "about:blank",
                "A valid bearer token is required.".into(),
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "about:blank",
                "No such resource.".into(),
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "about:blank",
                "This method is not allowed on this resource.".into(),
            ),
            PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "about:blank",
                "The resource has changed since the given ETag; fetch it again.".into(),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "about:blank",
                format!(
                    "The request body is larger than {} KiB.",
                    super::BODY_LIMIT / 1024
                ),
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "about:blank",
                "Send the body as application/json (or application/merge-patch+json for PATCH)."
                    .into(),
            ),
            IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:devops-api:problem:idempotency-key-reused",
                "This Idempotency-Key was used with a different request body.".into(),
            ),
            QuotaExceeded(max) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:devops-api:problem:quota-exceeded",
                format!("A principal may hold at most {max} tasks; delete some first."),
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "about:blank",
                "Too many requests; retry after the given delay.".into(),
            ),
            Unavailable(_) | Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "about:blank",
                "The service cannot serve this request right now; retry shortly.".into(),
            ),
            Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "about:blank",
                "The request took too long and was abandoned.".into(),
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "about:blank",
                "An internal error occurred; it has been logged.".into(),
            ),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound => ApiError::NotFound,
            StorageError::VersionMismatch { .. } => ApiError::PreconditionFailed,
            StorageError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            StorageError::QuotaExceeded { max } => ApiError::QuotaExceeded(max),
            e @ (StorageError::Unavailable { .. }
            | StorageError::Busy { .. }
            | StorageError::Locked { .. }) => ApiError::Unavailable(e),
            e @ (StorageError::Corrupt { .. } | StorageError::AlreadyExists(_)) => {
                ApiError::Internal(e)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, detail) = self.parts();
        let retry_after = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(cause = %Chain(cause), "internal error");
                None
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(cause = %Chain(cause), "storage unavailable");
                Some(1)
            }
            ApiError::Draining => Some(1),
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let errors = match self {
            ApiError::Validation(e) | ApiError::InvalidParameters(e) => {
                e.into_iter().map(FieldProblem::from).collect()
            }
            _ => Vec::new(),
        };
        let body = Problem {
            kind: kind.into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
