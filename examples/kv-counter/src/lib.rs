//! Counts hits per name in the lambda's key-value store with atomic increments. The
//! counts live in the service's store: they survive restarts and disappear with the
//! lambda.
//!
//! - `GET /{name}`: adds one hit and returns `{"name": ..., "hits": n}`;
//! - `GET /{name}?peek`: returns the count without adding;
//! - `DELETE /{name}`: resets it;
//! - `GET /`: every counter.

use luna_lambda_sdk::http::{Method, StatusCode};
use luna_lambda_sdk::kv::{Bucket, KvError};
use luna_lambda_sdk::{IntoResponse, Json, Request, Response, handler, log};
use serde_json::json;

#[handler]
fn count(request: Request) -> Result<Response, KvError> {
    let bucket = Bucket::open("counters")?;
    let name = request.uri().path().trim_matches('/');
    if name.is_empty() {
        let mut counters = serde_json::Map::new();
        for key in bucket.keys()? {
            counters.insert(key.clone(), json!(bucket.counter(&key)?));
        }
        return Ok(Json(counters).into_response());
    }
    let hits = match *request.method() {
        Method::DELETE => {
            bucket.delete(name)?;
            log::info(format!("counter {name} reset"));
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Method::GET if request.uri().query() == Some("peek") => bucket.counter(name)?,
        Method::GET | Method::POST => bucket.increment(name, 1)?,
        _ => return Ok(StatusCode::METHOD_NOT_ALLOWED.into_response()),
    };
    Ok(Json(json!({ "name": name, "hits": hits })).into_response())
}
