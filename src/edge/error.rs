//! `ApiError`: every failure of a management route as (HTTP status, LUNA error code,
//! desc, detail), mapped once here from the lower modules' errors. 5xx details never
//! carry internal text; the cause is logged instead.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::lifecycle::LifecycleError;

/// The LUNA error code of a response, left in its extensions for metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub u32);

/// A management-route failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// LUNA error code.
    pub code: u32,
    /// LUNA description of the code.
    pub desc: &'static str,
    /// What exactly went wrong (safe to show).
    pub detail: String,
}

const BAD_INPUT: &str = "Bad/incomplete input data";

#[derive(Serialize)]
struct Body<'a> {
    error_code: u32,
    desc: &'a str,
    detail: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, desc: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            desc,
            detail: detail.into(),
        }
    }

    /// 1: anything unexpected. The cause is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            1,
            "Internal server error",
            "internal server error",
        )
    }

    /// 503 (code 1): the store's database is out of reach; the call may be retried.
    pub fn store_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "store database unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            1,
            "Internal server error",
            "the store database is unreachable; running lambdas keep serving, retry this call shortly",
        )
    }

    /// 11037: Luna-Account-Id is not a uuid.
    pub fn bad_account_header() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            11037,
            BAD_INPUT,
            "Luna-Account-Id header is not a valid uuid",
        )
    }

    /// 11066: Luna-Account-Id is missing.
    pub fn missing_account_header() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            11066,
            BAD_INPUT,
            "Luna-Account-Id header not found",
        )
    }

    /// 11037 as well: Luna-Account-Id given more than once with different values (a
    /// gateway that appends its own header must not let the client's win).
    pub fn conflicting_account_headers() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            11037,
            BAD_INPUT,
            "Luna-Account-Id header is given more than once with different values",
        )
    }

    /// 11070 (this service's): no valid bearer token while `auth.mode` is `token`.
    pub fn unauthorized(detail: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 11070, "Unauthorized", detail)
    }

    /// 11071 (this service's): the token may not do this (another account, an
    /// operator-only route).
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, 11071, "Forbidden", detail)
    }

    /// 12001: no such route.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            12001,
            "Resource not found",
            format!("Page '{path}' not found"),
        )
    }

    /// 12005: the route exists, the method does not.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            12005,
            "Method not allowed",
            format!("Method '{method}' is not allowed on '{path}'"),
        )
    }

    /// 12002: a JSON body is required.
    pub fn no_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12002,
            BAD_INPUT,
            "Request does not contain json",
        )
    }

    /// 12012: a query parameter is unknown or malformed.
    pub fn bad_query(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12012,
            BAD_INPUT,
            format!("Bad query parameters '{name}'"),
        )
    }

    /// 12014: a required part or parameter is missing.
    pub fn missing(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12014,
            BAD_INPUT,
            format!("Required parameters '{name}' not found"),
        )
    }

    /// 12017: the body's content type is wrong.
    pub fn bad_content_type(expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12017,
            BAD_INPUT,
            format!("Bad content type: expected '{expected}'"),
        )
    }

    /// 12022: the JSON does not match its schema.
    pub fn bad_json(path: &str, message: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12022,
            BAD_INPUT,
            format!("Failed to validate input json. Path: '{path}' message: '{message}'"),
        )
    }

    /// 12024: the Accept header asks for a type the route cannot give.
    pub fn unsupported_accept(supported: &[&str]) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            12024,
            "Unsupported media type",
            format!("Accept must be one of: {}", supported.join(", ")),
        )
    }

    /// 12030: the body is empty.
    pub fn no_data() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12030,
            BAD_INPUT,
            "Request does not contain data",
        )
    }

    /// 12031: a malformed header.
    pub fn bad_header(detail: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 12031, BAD_INPUT, detail)
    }

    /// 12041: a multipart part has the wrong Content-Type.
    pub fn bad_part_type(name: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12041,
            BAD_INPUT,
            format!("Multipart with name '{name}' has bad Content-Type: expected '{expected}'"),
        )
    }

    /// 12046: the request is malformed.
    pub fn invalid_request(reason: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            12046,
            BAD_INPUT,
            format!("Invalid http request: {reason}"),
        )
    }

    /// 12047: over a size limit.
    pub fn too_large(what: &str, limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            12047,
            "Payload too large",
            format!("{what} is over the limit of {limit} bytes"),
        )
    }

    /// 408 / 12046: the request body did not arrive in time (before the lambda ran).
    pub fn body_timeout(reason: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            12046,
            "Bad/incomplete input data",
            format!("invalid http request: {reason}"),
        )
    }

    /// 42001: no such lambda (or another account's).
    pub fn lambda_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            42001,
            "Object not found",
            format!("Lambda with id '{id}' not found"),
        )
    }

    /// 42007: the lambda is not running.
    pub fn not_running(id: &str, status: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            42007,
            "Lambda is not running",
            format!("Lambda with id '{id}' is not running (status '{status}')"),
        )
    }

    /// 42008: the lambda did not answer in time.
    pub fn lambda_timeout(detail: String) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            42008,
            "Lambda request timeout",
            detail,
        )
    }

    /// 42009: a container lambda's pod refused, reset or answered garbage.
    pub fn unavailable(detail: String) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, 42009, "Lambda unavailable", detail)
    }

    /// 42010: the lambda's concurrency limit is reached.
    pub fn overloaded(detail: String) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            42010,
            "Lambda overloaded",
            detail,
        )
    }

    /// 42013: the WASM lambda trapped or gave no response.
    pub fn execution(detail: String) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            42013,
            "Lambda execution error",
            detail,
        )
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match &e {
            LifecycleError::NotFound(id) => Self::lambda_not_found(&id.to_string()),
            LifecycleError::NameTaken(_) => Self::new(
                StatusCode::CONFLICT,
                42003,
                "Unique constraint error",
                e.to_string(),
            ),
            LifecycleError::Invalid(problems) => Self::new(
                StatusCode::BAD_REQUEST,
                42005,
                "Lambda validation exception",
                problems.join("; "),
            ),
            LifecycleError::NoContainerBackend => Self::new(
                StatusCode::BAD_REQUEST,
                42014,
                "No runtime for lambda",
                e.to_string(),
            ),
            LifecycleError::BuildInProgress(_) => Self::new(
                StatusCode::CONFLICT,
                42006,
                "Lambda update exception",
                e.to_string(),
            ),
            LifecycleError::ValidatesBusy { .. } => Self::overloaded(e.to_string()),
            LifecycleError::Store(store) if store.is_unavailable() => {
                Self::store_unavailable(store)
            }
            LifecycleError::Store(_)
            | LifecycleError::Secrets(_)
            | LifecycleError::Deploy(_)
            | LifecycleError::Task(_) => Self::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error_code: self.code,
            desc: self.desc,
            detail: &self.detail,
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LambdaId;

    #[test]
    fn lifecycle_errors_map_to_luna_codes() {
        let id = LambdaId::generate();
        let table = [
            (LifecycleError::NotFound(id), 404, 42001),
            (LifecycleError::NameTaken("x".into()), 409, 42003),
            (
                LifecycleError::Invalid(vec!["a".into(), "b".into()]),
                400,
                42005,
            ),
            (LifecycleError::NoContainerBackend, 400, 42014),
            (LifecycleError::BuildInProgress(id), 409, 42006),
            (
                LifecycleError::ValidatesBusy {
                    account: None,
                    limit: 2,
                },
                503,
                42010,
            ),
            (LifecycleError::Task("secret/path".into()), 500, 1),
        ];
        for (err, status, code) in table {
            let api = ApiError::from(err);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
            assert!(!api.detail.contains("secret/path"));
        }
    }
}
