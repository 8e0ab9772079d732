//! [`IntoResponse`]: what a handler may return.

use wstd::http::StatusCode;
use wstd::http::body::Body;

use crate::Response;

/// Anything a handler may return: a [`Response`], text, [`Json`](crate::Json), a
/// [`StatusCode`], `(StatusCode, impl IntoResponse)`, `()` (204), or a `Result` whose
/// both sides are `IntoResponse` (errors of [`kv`](crate::kv), [`json`](crate::json)
/// and `wstd` are).
pub trait IntoResponse {
    /// Converts into the response sent to the caller.
    fn into_response(self) -> Response;
}

impl<B: Into<Body>> IntoResponse for wstd::http::Response<B> {
    fn into_response(self) -> Response {
        self.map(Into::into)
    }
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = wstd::http::Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        wstd::http::HeaderName::from_static("content-type"),
        wstd::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        text(StatusCode::OK, self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        text(StatusCode::OK, self.to_owned())
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut response = wstd::http::Response::new(Body::empty());
        *response.status_mut() = self;
        response
    }
}

impl IntoResponse for () {
    fn into_response(self) -> Response {
        StatusCode::NO_CONTENT.into_response()
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        *response.status_mut() = self.0;
        response
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

/// A `wstd` error (failed outbound call, unreadable body) is a 500 naming it.
impl IntoResponse for wstd::http::Error {
    fn into_response(self) -> Response {
        text(StatusCode::INTERNAL_SERVER_ERROR, format!("{self}\n"))
    }
}
