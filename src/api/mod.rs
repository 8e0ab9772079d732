//! The management API: the axum router of every LUNA route but the proxy, with the
//! request id check, route templates for metrics, and 404/405 answers in LUNA's form;
//! the handlers are in `lambdas` (the lambda routes) and `service` (version, documents,
//! configuration, metrics, health), their shared openings in `shared`. Depends on `edge`, `lifecycle`, `runtime`, `metrics`,
//! `config`, `model`.

mod lambdas;
mod service;
mod shared;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::edge::error::ErrorCode;
use crate::edge::{ApiError, AppState, BadRequestId, RouteTemplate};

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
        && response.extensions().get::<ErrorCode>().is_none()
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
        .route("/version", served(get(service::version)))
        .route(
            "/1/lambdas",
            served(post(lambdas::create).get(lambdas::list)),
        )
        .route("/1/lambdas/validate", served(post(lambdas::validate)))
        .route(
            "/1/lambdas/{lambda_id}",
            served(
                get(lambdas::get)
                    .head(lambdas::head)
                    .put(lambdas::recreate)
                    .patch(lambdas::patch)
                    .delete(lambdas::delete),
            ),
        )
        .route(
            "/1/lambdas/{lambda_id}/status",
            served(get(lambdas::status)),
        )
        .route("/1/lambdas/{lambda_id}/logs", served(get(lambdas::logs)))
        .route(
            "/1/lambdas/{lambda_id}/update",
            served(post(lambdas::update)),
        )
        .route(
            "/1/lambdas/{lambda_id}/image/status",
            served(get(lambdas::image_status)),
        )
        .route(
            "/1/lambdas/{lambda_id}/image/logs",
            served(get(lambdas::image_logs)),
        )
        .route(
            "/1/lambdas/{lambda_id}/docs",
            served(get(service::lambda_docs)),
        )
        .route("/1/docs/spec", served(get(service::spec)))
        .route("/1/docs/dev", served(get(service::manual_root)))
        .route("/1/docs/dev/{page}", served(get(service::manual)))
        .route("/1/config", served(get(service::config)))
        .route("/1/plugins", served(get(service::plugins)))
        .route("/metrics", served(get(service::metrics)))
        .route("/1/healthcheck", served(get(service::healthcheck)))
        .route("/healthcheck", served(get(service::healthcheck)))
        .route_layer(middleware::from_fn(record_route))
        .fallback(fallback)
        .layer(middleware::from_fn(method_not_allowed))
        .layer(DefaultBodyLimit::max(body_cap))
        .with_state(state)
}
