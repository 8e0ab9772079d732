//! Write [luna-lambda](https://github.com/) WASM lambdas in Rust.
//!
//! A lambda is a WebAssembly component built for `wasm32-wasip2`. This crate gives it:
//!
//! - [`handler`]: turns a function from [`Request`] to anything [`IntoResponse`] (sync or
//!   `async`) into the lambda's HTTP entry point (`standalone` and `handlers` lambdas);
//! - [`tasks`] and [`Tasks`]: the two exports of a `tasks` lambda;
//! - [`Json`] and [`json`]: JSON in and out;
//! - [`config`]: the lambda's `parameters.config` and its credentials;
//! - [`kv`]: a key-value namespace private to the lambda, with atomic counters;
//! - [`log`]: levelled lines in the lambda's logs;
//! - [`context`]: the lambda's id, version, owner, type and the current request id;
//! - [`http`]: the request/response types and an outbound HTTP client (`wstd`).
//!
//! Everything is generated from the `luna:lambda` WIT package (`wit/` in the
//! repository) with `wit-bindgen`; there is no async runtime besides `wstd`'s
//! single-threaded one and nothing from the host in the dependency tree.
//!
//! ```no_run
//! use luna_lambda_sdk::{Json, Request, handler, kv};
//!
//! #[handler]
//! async fn handle(request: Request) -> Result<Json<serde_json::Value>, kv::KvError> {
//!     let visits = kv::Bucket::open("default")?.increment("visits", 1)?;
//!     Ok(Json(serde_json::json!({ "path": request.uri().path(), "visits": visits })))
//! }
//! ```
#![deny(missing_docs)]

mod response;

pub mod config;
pub mod context;
pub mod json;
pub mod kv;
pub mod log;
pub mod tasks_api;

pub use json::Json;
pub use response::IntoResponse;
pub use tasks_api::{TaskError, Tasks};

/// Marks the lambda's HTTP handler: a function taking a [`Request`] and returning
/// anything that is [`IntoResponse`], sync or `async`. Every request to
/// `/1/lambdas/{id}/proxy/...` calls it in a fresh instance.
///
/// ```no_run
/// use luna_lambda_sdk::{Request, handler};
///
/// #[handler]
/// fn hello(request: Request) -> String {
///     format!("Hello from {}\n", request.uri().path())
/// }
/// ```
pub use luna_lambda_sdk_macro::handler;

/// Exports an `impl Tasks for T` as the lambda's `split-content` and
/// `execute-subtask` (the `luna:lambda/tasks` world). Create the lambda with
/// `"lambda_type": "tasks"`; the service serves it as `POST /split` and
/// `POST /execute`.
///
/// ```no_run
/// use luna_lambda_sdk::{TaskError, Tasks, tasks};
/// use serde_json::{Value, json};
///
/// struct Doubler;
///
/// #[tasks]
/// impl Tasks for Doubler {
///     fn split_content(content: Value) -> Result<Vec<Value>, TaskError> {
///         let numbers = content.as_array().ok_or("expected an array")?;
///         Ok(numbers.clone())
///     }
///
///     fn execute_subtask(content: Value) -> Result<Value, TaskError> {
///         let n = content.as_i64().ok_or("expected a number")?;
///         Ok(json!(n * 2))
///     }
/// }
/// # fn main() {}
/// ```
pub use luna_lambda_sdk_macro::tasks;

/// HTTP types: the request and response, status codes, headers, bodies, and an
/// outbound [`Client`](http::Client) (calls only reach hosts the lambda's
/// `allowed_outbound_hosts` lists).
pub mod http {
    pub use wstd::http::body::Body;
    pub use wstd::http::{
        Client, Error, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri,
    };
}

/// The request a handler receives.
pub type Request = wstd::http::Request<wstd::http::body::Body>;

/// The response type every [`IntoResponse`] produces.
pub type Response = wstd::http::Response<wstd::http::body::Body>;

/// Runs a future to completion on the lambda's single-threaded executor (for
/// outbound calls from [`Tasks`] implementations, which are not `async`).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    wstd::runtime::block_on(future)
}

#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "luna:lambda/imports",
        // The world's wasi:* interfaces are generated here too (nothing else in the
        // SDK binds config, key-value or logging).
        generate_all,
    });
}

/// What the macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
    pub use wstd::__internal::wasip2;

    use crate::IntoResponse;

    /// Serves one request with `handler` (what `#[handler]` expands to).
    pub fn serve<F, Fut, R>(
        request: wasip2::http::types::IncomingRequest,
        response_out: wasip2::http::types::ResponseOutparam,
        handler: F,
    ) where
        F: FnOnce(crate::Request) -> Fut,
        Fut: std::future::Future<Output = R>,
        R: IntoResponse,
    {
        let responder = wstd::http::server::Responder::new(response_out);
        wstd::runtime::block_on(async move {
            match wstd::http::request::try_from_incoming(request) {
                Ok(request) => {
                    let response = handler(request).await.into_response();
                    if let Err(e) = responder.respond(response).await {
                        crate::log::error(format!("sending the response body failed: {e}"));
                    }
                }
                Err(e) => responder.fail(e),
            }
        });
    }

    /// `split-content` of a [`Tasks`](crate::Tasks) implementation.
    pub fn split_content<T: crate::Tasks>(content: &str) -> Result<Vec<String>, String> {
        let content = serde_json::from_str(content).map_err(|e| format!("content: {e}"))?;
        let subtasks = T::split_content(content).map_err(|e| e.to_string())?;
        Ok(subtasks.iter().map(|s| s.to_string()).collect())
    }

    /// `execute-subtask` of a [`Tasks`](crate::Tasks) implementation.
    pub fn execute_subtask<T: crate::Tasks>(content: &str) -> Result<String, String> {
        let content = serde_json::from_str(content).map_err(|e| format!("content: {e}"))?;
        Ok(T::execute_subtask(content)
            .map_err(|e| e.to_string())?
            .to_string())
    }
}
