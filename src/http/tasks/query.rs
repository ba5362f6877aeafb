//! The query string of `GET /v1/tasks`: read here, validated by the domain
//! ([`ListQuery::parse`]), and documented from the domain's limits.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{Ref, RefOr, Required};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::domain::{
    CURSOR_PATTERN, DEFAULT_LIMIT, ListQuery, MAX_LIMIT, Order, Priority, Q_MAX_CHARS, Status,
};
use crate::http::ApiError;

/// Filters and paging of `GET /v1/tasks`, validated.
pub struct ListParams(pub ListQuery);

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("the query string is malformed".into()))?;
        ListQuery::parse(&params)
            .map(ListParams)
            .map_err(ApiError::InvalidParameters)
    }
}

impl IntoParams for ListParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let param = |name: &str, description: Option<String>, schema: RefOr<Schema>| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(description)
                .schema(Some(schema))
                .build()
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        vec![
            param("status", None, Ref::from_schema_name(Status::name()).into()),
            param(
                "priority",
                None,
                Ref::from_schema_name(Priority::name()).into(),
            ),
            param(
                "tag",
                Some("Tasks carrying this tag.".into()),
                string().into(),
            ),
            param(
                "due_before",
                Some("Tasks due strictly before this RFC 3339 instant.".into()),
                string()
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .into(),
            ),
            param(
                "q",
                Some("Case-insensitive substring of the title.".into()),
                string().max_length(Some(Q_MAX_CHARS)).into(),
            ),
            param(
                "limit",
                Some(format!(
                    "Page size, 1–{MAX_LIMIT} (default {DEFAULT_LIMIT}): the most items a page holds. \
                     A filtered page may hold fewer, even none, while `next_cursor` is present."
                )),
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                    .minimum(Some(1usize))
                    .maximum(Some(MAX_LIMIT))
                    .into(),
            ),
            param(
                "cursor",
                Some("The `next_cursor` of the previous page (opaque).".into()),
                string().pattern(Some(CURSOR_PATTERN)).into(),
            ),
            param(
                "order",
                Some(format!(
                    "Creation order, `{}` (default) or `{}`.",
                    Order::Asc.as_str(),
                    Order::Desc.as_str()
                )),
                Ref::from_schema_name(Order::name()).into(),
            ),
        ]
    }
}

impl PartialSchema for Order {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Sort order of a listing, by creation (task id)."))
            .enum_values(Some(Order::ALL.map(|o| o.as_str())))
            .into()
    }
}

impl ToSchema for Order {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Order")
    }
}
