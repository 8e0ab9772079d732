//! The front service every request enters through, above `api` and `proxy`: parses
//! and propagates Luna-Request-Id, authenticates and scopes the request when tokens are
//! on, opens the root span, sends proxy calls down the proxy's fast path without the
//! router and everything else to the management router, then records metrics per route
//! template. Depends on `api`, `proxy`, `edge`, `model`.

use std::convert::Infallible;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::edge::auth;
use crate::edge::error::ErrorCode;
use crate::edge::{
    ApiError, AppState, BadRequestId, REQUEST_ID_HEADER, RouteTemplate, metric_method,
};
use crate::model::RequestId;

/// Serves one request: request id, span, proxy fast path or router, metrics.
pub async fn dispatch<B>(
    state: AppState,
    router: Router,
    mut request: http::Request<B>,
) -> Result<Response, Infallible>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError> + std::fmt::Display,
{
    let started = Instant::now();
    let (request_id, bad_header) = match request.headers().get(REQUEST_ID_HEADER) {
        None => (RequestId::generate(), None),
        Some(raw) => match raw.to_str().ok().map(str::parse::<RequestId>) {
            Some(Ok(id)) => (id, None),
            Some(Err(e)) => (RequestId::generate(), Some(e.0)),
            None => (
                RequestId::generate(),
                Some("Luna-Request-Id is not valid text".to_owned()),
            ),
        },
    };
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    // An error answered before the body was read leaves unread bytes on the
    // connection: close it, and say so, so the client does not reuse it.
    let has_body = request
        .headers()
        .contains_key(http::header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let refused = match &state.auth {
        Some(auth) if !auth::is_open(request.uri().path()) => {
            let uri = request.uri().clone();
            auth.caller(request.headers())
                .and_then(|caller| {
                    auth::scope(caller, uri.path(), uri.query(), request.headers_mut())
                })
                .err()
        }
        _ => None,
    };
    async move {
        let method = request.method().clone();
        let proxied = crate::proxy::match_path(request.uri().path()).map(|t| t.into_owned());
        let mut response = match (refused, proxied, bad_header) {
            (Some(refused), _, _) => {
                let unauthorized = refused.status == http::StatusCode::UNAUTHORIZED;
                let mut response = refused.into_response();
                if unauthorized {
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer"),
                    );
                }
                response
            }
            (None, Some(_), Some(detail)) if crate::proxy::METHODS.contains(&method) => {
                ApiError::bad_header(&detail).into_response()
            }
            (None, Some(target), _) => {
                crate::proxy::handle(&state, request, target, &request_id).await
            }
            (None, None, bad_header) => {
                let mut request = request.map(Body::new);
                if let Some(detail) = bad_header {
                    request.extensions_mut().insert(BadRequestId(detail));
                }
                match router.oneshot(request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        };
        if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        let status = response.status();
        let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
        if has_body && code.is_some() {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let template = response
            .extensions_mut()
            .remove::<RouteTemplate>()
            .map_or_else(
                || format!("{}:unknown", metric_method(&method)).into(),
                |t| t.0,
            );
        state
            .metrics
            .request(&template, status, code, started.elapsed());
        // Lambda-caused 5xx (not running, timeout, overload, trap) are the lambda's
        // business and already in its logs; only the service's own failures warn.
        if status.is_server_error() && code.is_none_or(|c| c == 1) {
            tracing::warn!(status = status.as_u16(), error_code = code, route = %template, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), route = %template, "request done");
        }
        Ok(response)
    }
    .instrument(span)
    .await
}
