//! The HTTP edge: the management router (axum) and the front service every request
//! enters through: Luna-Request-Id parsing and propagation, the root span, metrics per
//! route template, and the fast path that hands proxy calls to `proxy` without the
//! router. Depends on `lifecycle`, `proxy`, `runtime`, `metrics`, `config`, `model`.

pub mod error;
pub mod input;
mod routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http::HeaderValue;
use tower::ServiceExt as _;
use tracing::Instrument as _;

pub use error::ApiError;
pub use input::{account_optional, account_required};

use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::model::RequestId;
use crate::runtime::Registry;

/// Header carrying the request id in both directions.
pub const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("luna-request-id");

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// Lambda lifecycle.
    pub lifecycle: Arc<Lifecycle>,
    /// Served lambdas (WASM versions and container pods).
    pub registry: Arc<Registry>,
    /// The pooled client to container lambdas' pods.
    pub pods: crate::runtime::PodClient,
    /// Metrics.
    pub metrics: Metrics,
}

/// The route template a response was produced by, for metrics labels.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub std::borrow::Cow<'static, str>);

/// A malformed `Luna-Request-Id`, refused once the route and method are known to exist
/// (an unknown route or method is the first thing to report).
#[derive(Clone, Debug)]
struct BadRequestId(String);

/// Refuses a malformed request id. A method-level layer: a method the route does not
/// serve never reaches it and is answered 405 instead.
async fn refuse_bad_request_id(request: Request, next: Next) -> Response {
    match request.extensions().get::<BadRequestId>() {
        Some(bad) => ApiError::bad_header(&bad.0).into_response(),
        None => next.run(request).await,
    }
}

/// A route's methods, behind the request id check.
fn served(methods: MethodRouter<AppState>) -> MethodRouter<AppState> {
    methods.route_layer(middleware::from_fn(refuse_bad_request_id))
}

/// Runs for matched routes only: records the route template.
async fn record_route(request: Request, next: Next) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| format!("{}:{}", request.method(), p.as_str()));
    let mut response = next.run(request).await;
    if let Some(t) = template {
        response.extensions_mut().insert(RouteTemplate(t.into()));
    }
    response
}

async fn fallback(request: Request) -> Response {
    ApiError::no_route(request.uri().path()).into_response()
}

async fn method_not_allowed(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    if response.status() == http::StatusCode::METHOD_NOT_ALLOWED
        && response.extensions().get::<error::ErrorCode>().is_none()
    {
        return ApiError::method_not_allowed(method.as_str(), &path).into_response();
    }
    response
}

/// The management API router (everything except the proxy fast path).
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    // Multipart uploads are bounded per part while streaming; this is the outer cap.
    let body_cap = usize::try_from(limits.max_archive_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(limits.max_json_bytes.saturating_mul(4))
        .saturating_add(64 * 1024);
    Router::new()
        .route("/version", served(get(routes::version)))
        .route("/1/lambdas", served(post(routes::create).get(routes::list)))
        .route("/1/lambdas/validate", served(post(routes::validate)))
        .route(
            "/1/lambdas/{lambda_id}",
            served(
                get(routes::get)
                    .head(routes::head)
                    .put(routes::recreate)
                    .patch(routes::patch)
                    .delete(routes::delete),
            ),
        )
        .route("/1/lambdas/{lambda_id}/status", served(get(routes::status)))
        .route("/1/lambdas/{lambda_id}/logs", served(get(routes::logs)))
        .route(
            "/1/lambdas/{lambda_id}/update",
            served(post(routes::update)),
        )
        .route(
            "/1/lambdas/{lambda_id}/image/status",
            served(get(routes::image_status)),
        )
        .route(
            "/1/lambdas/{lambda_id}/image/logs",
            served(get(routes::image_logs)),
        )
        .route(
            "/1/lambdas/{lambda_id}/docs",
            served(get(routes::lambda_docs)),
        )
        .route("/1/docs/spec", served(get(routes::spec)))
        .route("/1/docs/dev", served(get(routes::manual_root)))
        .route("/1/docs/dev/{page}", served(get(routes::manual)))
        .route("/1/config", served(get(routes::config)))
        .route("/1/plugins", served(get(routes::plugins)))
        .route("/metrics", served(get(routes::metrics)))
        .route("/1/healthcheck", served(get(routes::healthcheck)))
        .route("/healthcheck", served(get(routes::healthcheck)))
        .route_layer(middleware::from_fn(record_route))
        .fallback(fallback)
        .layer(middleware::from_fn(method_not_allowed))
        .layer(DefaultBodyLimit::max(body_cap))
        .with_state(state)
}

/// The method as a metrics label: arbitrary extension methods share one series.
pub fn metric_method(method: &http::Method) -> &str {
    match *method {
        http::Method::GET
        | http::Method::POST
        | http::Method::PUT
        | http::Method::PATCH
        | http::Method::DELETE
        | http::Method::HEAD
        | http::Method::OPTIONS => method.as_str(),
        _ => "OTHER",
    }
}

/// Serves one request: request id, span, proxy fast path or router, metrics.
pub async fn dispatch<B>(
    state: AppState,
    router: Router,
    request: http::Request<B>,
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
    async move {
        let method = request.method().clone();
        let proxied = crate::proxy::match_path(request.uri().path()).map(|t| t.into_owned());
        let mut response = match (proxied, bad_header) {
            (Some(_), Some(detail)) if crate::proxy::METHODS.contains(&method) => {
                ApiError::bad_header(&detail).into_response()
            }
            (Some(target), _) => crate::proxy::handle(&state, request, target, &request_id).await,
            (None, bad_header) => {
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
        let code = response.extensions().get::<error::ErrorCode>().map(|c| c.0);
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
