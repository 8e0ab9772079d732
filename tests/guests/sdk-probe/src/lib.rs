//! Test guest built with the SDK: each host interface on a route, so the integration
//! tests can drive key-value quotas, log levels, config and context from outside.
//!
//! - `PUT /kv/{key}` stores the body; `GET /kv/{key}` reads it; `DELETE /kv/{key}`;
//!   `POST /kv-batch/{n}/{size}` stores `n` values of `size` bytes in one batch;
//!   every key-value error answers 500 `{"error": ...}` (from the SDK);
//! - `POST /log` writes the body once per level, then `GET /log` answers 204;
//! - `GET /context` and `GET /config` answer what the host told the guest.

use luna_lambda_sdk::http::{Method, StatusCode};
use luna_lambda_sdk::kv::{Bucket, KvError};
use luna_lambda_sdk::{IntoResponse, Json, Request, Response, config, context, handler, log};
use serde_json::json;

#[handler]
async fn probe(request: Request) -> Result<Response, KvError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let mut segments = path.trim_matches('/').split('/');
    match (method, segments.next(), segments.next(), segments.next()) {
        (Method::PUT, Some("kv"), Some(key), None) => {
            let body = read(request).await;
            Bucket::open("probe")?.set(key, body)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::GET, Some("kv"), Some(key), None) => Ok(match Bucket::open("probe")?.get(key)? {
            Some(value) => Response::new(value.into()),
            None => StatusCode::NOT_FOUND.into_response(),
        }),
        (Method::DELETE, Some("kv"), Some(key), None) => {
            Bucket::open("probe")?.delete(key)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, Some("kv-batch"), Some(count), Some(size)) => {
            let (count, size) = (count.parse().unwrap_or(0), size.parse().unwrap_or(0));
            let pairs: Vec<(String, Vec<u8>)> = (0..count)
                .map(|i: usize| (format!("batch-{i}"), vec![b'b'; size]))
                .collect();
            Bucket::open("probe")?.set_many(&pairs)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, Some("log"), None, None) => {
            let message = String::from_utf8_lossy(&read(request).await).into_owned();
            log::trace(&message);
            log::debug(&message);
            log::info(&message);
            log::warn(&message);
            log::error(&message);
            log::critical(&message);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::GET, Some("context"), None, None) => Ok(Json(json!({
            "lambda_id": context::lambda_id(),
            "version": context::version(),
            "account_id": context::account_id(),
            "request_id": context::request_id(),
            "lambda_type": format!("{:?}", context::lambda_type()),
        }))
        .into_response()),
        (Method::GET, Some("config"), None, None) => {
            let all: serde_json::Map<_, _> = config::all()
                .into_iter()
                .map(|(k, v)| (k, json!(v)))
                .collect();
            Ok(Json(all).into_response())
        }
        _ => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

async fn read(request: Request) -> Vec<u8> {
    let mut body = request.into_body();
    body.contents().await.map(<[u8]>::to_vec).unwrap_or_default()
}
