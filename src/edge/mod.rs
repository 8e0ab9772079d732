//! The HTTP pieces the management API and the proxy share, below both: the state every
//! handler gets, `ApiError` with its LUNA codes (mapped once, in `error`), input parsing
//! (`input`: account header, query strings, JSON, multipart, Accept), bearer tokens
//! (`auth`), the request id header, and the extensions by which the front dispatcher and
//! the handlers talk (`BadRequestId` on requests; `RouteTemplate` and `error::ErrorCode`
//! on responses).
//! Depends on `lifecycle`, `runtime`, `metrics`, `config`, `model`.

pub mod auth;
pub mod error;
pub mod input;

use std::sync::Arc;

pub use error::ApiError;
pub use input::{account_optional, account_required};

use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
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
    /// Bearer tokens, when `auth.mode` is `token`.
    pub auth: Option<Arc<auth::Authenticator>>,
}

/// The route template a response was produced by, put on the response by whoever
/// matched the route (the router, the proxy) and read by the front dispatcher for
/// metrics labels.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub std::borrow::Cow<'static, str>);

/// A malformed `Luna-Request-Id`, put on the request by the front dispatcher and
/// refused by the management router once the route and method are known to exist (an
/// unknown route or method is the first thing to report).
#[derive(Clone, Debug)]
pub struct BadRequestId(pub String);

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
