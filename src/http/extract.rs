//! Extractors whose rejections are [`ApiError`]s, so every failure to read a
//! request has the problem shape: the principal behind a bearer token, JSON
//! bodies, task ids in paths, and the conditional-request headers.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::{ApiError, AppState};
use crate::auth;
use crate::domain::{FieldError, Precondition, PrincipalName, TaskId};

/// The authenticated principal of a `/v1` request, set by the
/// [`super::guard::authenticate`] layer; a route without that layer has no
/// principal and answers 401.
#[derive(Debug, Clone)]
pub struct Principal(pub PrincipalName);

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            tracing::error!("a handler reads the principal on a route without authentication");
            ApiError::Unauthorized
        })
    }
}

/// The principal behind the request's bearer token: from the tokens file, else
/// from the store. A stored token for a name the tokens file defines is not
/// honoured (start-up refuses such a store; this covers one created later).
pub(super) async fn authenticate(
    parts: &Parts,
    state: &AppState,
) -> Result<PrincipalName, ApiError> {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let digest = auth::digest(token);
    if let Some(name) = state.static_tokens.principal(&digest) {
        return Ok(name.clone());
    }
    let name = state
        .store
        .principal(&digest)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if state.static_tokens.has_name(&name) {
        tracing::error!(
            principal = %name,
            "a stored token names a principal of the tokens file; refused (revoke it with `devops-api token revoke`)"
        );
        return Err(ApiError::Unauthorized);
    }
    Ok(name)
}

/// A JSON body sent as `application/json`.
pub struct JsonBody(pub Value);

/// A PATCH body: `application/merge-patch+json` (RFC 7396) or plain JSON.
pub struct MergePatchBody(pub Value);

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(ct.split(';').next()?.trim().to_ascii_lowercase())
}

async fn json_body(req: Request, state: &AppState, accepted: &[&str]) -> Result<Value, ApiError> {
    let ok = media_type(req.headers()).is_some_and(|m| accepted.contains(&m.as_str()));
    if !ok {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest("the request body could not be read".into())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(req, state, &["application/json"])
            .await
            .map(JsonBody)
    }
}

impl FromRequest<AppState> for MergePatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(
            req,
            state,
            &["application/merge-patch+json", "application/json"],
        )
        .await
        .map(MergePatchBody)
    }
}

/// The `{id}` of a task route.
pub struct TaskIdPath(pub TaskId);

impl FromRequestParts<AppState> for TaskIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        // Not a UUID: a malformed request. A UUID of another version: well
        // formed, but no task can have it.
        let uuid = uuid::Uuid::try_parse(&raw).map_err(|_| {
            ApiError::InvalidParameters(vec![FieldError::new("id", "must be a UUID")])
        })?;
        Ok(TaskIdPath(TaskId::from_uuid(uuid)))
    }
}

/// The precondition of `If-Match`: none without the header or with `*`
/// (the task must exist, which every write requires anyway), else the
/// versions of its strong tags. Weak tags never match (RFC 9110 requires
/// strong comparison here), and a header that names no valid tag matches
/// nothing.
pub fn if_match(headers: &HeaderMap) -> Precondition {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Precondition::Any;
    };
    let raw = raw.to_str().unwrap_or("");
    if raw.trim() == "*" {
        return Precondition::Any;
    }
    Precondition::Versions(
        raw.split(',')
            .filter_map(|t| parse_strong(t.trim()))
            .collect(),
    )
}

/// Whether `If-None-Match` matches `version` (weak comparison).
pub fn if_none_match(headers: &HeaderMap, version: u64) -> bool {
    let Some(raw) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    raw.split(',').any(|t| {
        let t = t.trim();
        t == "*" || parse_strong(t.strip_prefix("W/").unwrap_or(t)) == Some(version)
    })
}

fn parse_strong(tag: &str) -> Option<u64> {
    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match(&HeaderMap::new()), Precondition::Any);
        assert_eq!(if_match(&h(header::IF_MATCH, "*")), Precondition::Any);
        assert_eq!(
            if_match(&h(header::IF_MATCH, "\"3\", W/\"4\", \"x\"")),
            Precondition::Versions(vec![3])
        );
        assert_eq!(
            if_match(&h(header::IF_MATCH, "W/\"4\"")),
            Precondition::Versions(vec![])
        );
    }

    #[test]
    fn if_none_match_is_weak() {
        assert!(if_none_match(&h(header::IF_NONE_MATCH, "W/\"2\""), 2));
        assert!(if_none_match(&h(header::IF_NONE_MATCH, "\"1\", \"2\""), 2));
        assert!(if_none_match(&h(header::IF_NONE_MATCH, "*"), 9));
        assert!(!if_none_match(&h(header::IF_NONE_MATCH, "\"1\""), 2));
    }
}
