//! JSON in and out: [`Json`] as a response, [`body`] to read a request's JSON body,
//! [`JsonError`] answering 400 with a JSON explanation.

use serde::Serialize;
use serde::de::DeserializeOwned;
use wstd::http::StatusCode;
use wstd::http::body::Body;

use crate::{IntoResponse, Request, Response};

/// A JSON response (`200`, `application/json`); pair it with a status as
/// `(StatusCode::CREATED, Json(value))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => json_response(StatusCode::OK, bytes),
            Err(e) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the response could not be serialised: {e}"),
            ),
        }
    }
}

fn json_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = wstd::http::Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        wstd::http::HeaderName::from_static("content-type"),
        wstd::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    json_response(status, body.into_bytes())
}

/// The request body was not the JSON the handler expects; answers 400 with
/// `{"error": "..."}` naming what is wrong.
#[derive(Debug)]
pub struct JsonError(pub String);

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        error_response(StatusCode::BAD_REQUEST, &self.0)
    }
}

/// Reads the request body as JSON into `T`.
///
/// ```no_run
/// use luna_lambda_sdk::{Json, Request, json};
///
/// #[derive(serde::Deserialize)]
/// struct Input { name: String }
///
/// async fn greet(mut request: Request) -> Result<Json<String>, json::JsonError> {
///     let input: Input = json::body(&mut request).await?;
///     Ok(Json(format!("hello {}", input.name)))
/// }
/// ```
pub async fn body<T: DeserializeOwned>(request: &mut Request) -> Result<T, JsonError> {
    let bytes = request
        .body_mut()
        .contents()
        .await
        .map_err(|e| JsonError(format!("the request body could not be read: {e}")))?;
    if bytes.is_empty() {
        return Err(JsonError("the request has no body; send JSON".to_owned()));
    }
    serde_json::from_slice(bytes).map_err(|e| JsonError(format!("invalid JSON body: {e}")))
}
