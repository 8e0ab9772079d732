//! Fetches a URL and reports what came back. The service only lets the call out if
//! the host is in the lambda's `deploy_parameters.sandbox.allowed_outbound_hosts`;
//! otherwise the call fails with `HTTP-request-denied` and this lambda answers 502.
//!
//! `GET /?url=http://127.0.0.1:5210/1/lambdas/{id}/proxy/` (or the `target_url` config
//! key when no `url` is given).

use luna_lambda_sdk::http::{Client, Method, StatusCode};
use luna_lambda_sdk::json::error_response;
use luna_lambda_sdk::{IntoResponse, Json, Request, Response, config, context, handler, log};
use serde_json::json;

#[handler]
async fn fetch(request: Request) -> Response {
    let url = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("url=")))
        .map(|u| u.replace("%3A", ":").replace("%2F", "/"))
        .or_else(|| config::get("target_url"));
    let Some(url) = url else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "give ?url=... or the target_url config key",
        );
    };
    let outbound = match luna_lambda_sdk::http::Uri::try_from(url.as_str()) {
        Ok(uri) => uri,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("bad url: {e}")),
    };
    let mut call = wstd_request(outbound);
    // Forward our request id so the call can be traced across lambdas.
    if let Ok(value) = context::request_id().parse() {
        call.headers_mut().insert("luna-request-id", value);
    }
    match Client::new().send(call).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let text = match body.str_contents().await {
                Ok(text) => text.to_owned(),
                Err(e) => {
                    return error_response(StatusCode::BAD_GATEWAY, &format!("reading {url}: {e}"));
                }
            };
            log::info(format!("fetched {url}: {status}"));
            Json(json!({ "url": url, "status": status, "body": text })).into_response()
        }
        Err(e) => {
            log::warn(format!("fetching {url} failed: {e}"));
            error_response(
                StatusCode::BAD_GATEWAY,
                &format!("fetching {url} failed: {e}"),
            )
        }
    }
}

fn wstd_request(uri: luna_lambda_sdk::http::Uri) -> luna_lambda_sdk::Request {
    let mut request = luna_lambda_sdk::Request::new(luna_lambda_sdk::http::Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    request
}
