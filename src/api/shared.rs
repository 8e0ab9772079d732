//! What every management handler shares: the result type, the media types, the
//! openings each handler repeats (a lambda id, a query with no parameters, the reading
//! account, a lambda scoped to it) and typed bodies with the docs' security policy.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, header};

use crate::edge::input::{self, Query};
use crate::edge::{ApiError, AppState};
use crate::model::LambdaId;
use crate::store::LambdaRecord;

/// What a handler answers.
pub(super) type ApiResult<T = Response> = Result<T, ApiError>;

pub(super) const YAML: &str = "application/x-yaml";
pub(super) const HTML: &str = "text/html";
pub(super) const JSON: &str = "application/json";
pub(super) const TEXT: &str = "text/plain";

/// A lambda id from the path; a malformed one is a missing lambda.
pub(super) fn lambda_id(raw: &str) -> ApiResult<LambdaId> {
    raw.parse().map_err(|_| ApiError::lambda_not_found(raw))
}

/// A route that takes no query parameters.
pub(super) fn no_query(raw: Option<&str>) -> ApiResult<()> {
    Query::parse(raw, &[]).map(|_| ())
}

/// The account a read route is scoped to: `account_id` query or Luna-Account-Id header.
pub(super) fn reader_account(
    headers: &HeaderMap,
    query: &Query,
) -> ApiResult<Option<crate::model::AccountId>> {
    let from_query = query.account()?;
    let from_header = input::account_optional(headers)?;
    match (from_query, from_header) {
        // Two different accounts in one request is a contradiction, not a scope.
        (Some(q), Some(h)) if q != h => Err(ApiError::bad_query("account_id")),
        (q, h) => Ok(q.or(h)),
    }
}

/// The lambda a read route names, scoped to the reading account, and its query (with
/// `extra` parameters allowed besides `account_id`).
pub(super) async fn scoped(
    state: &AppState,
    raw_id: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    extra: &[&str],
) -> ApiResult<(LambdaRecord, Query)> {
    let mut allowed = vec!["account_id"];
    allowed.extend_from_slice(extra);
    let query = Query::parse(q, &allowed)?;
    let account = reader_account(headers, &query)?;
    let id = lambda_id(raw_id)?;
    Ok((state.lifecycle.owned(id, account).await?, query))
}

/// Pages are self-contained (inline style, no scripts) and may render documents from
/// lambda archives: the policy forbids every script, frame and outside fetch.
const DOCS_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A body of `content_type`; HTML pages carry the docs' security policy.
pub(super) fn typed(content_type: &'static str, body: String) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if content_type.starts_with(HTML) {
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(DOCS_CSP),
        );
    }
    response
}
