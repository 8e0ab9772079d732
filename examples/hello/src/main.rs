//! A complete WASM lambda: answers every request with a greeting that names the
//! path it was called on and the request id the host gave it.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = request
        .headers()
        .get("luna-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    // Lines on stdout and stderr land in the lambda's logs (GET /1/lambdas/{id}/logs).
    println!("hello called on {}", request.uri().path());
    Ok(Response::new(
        format!(
            "Hello from luna-lambda! path={} request-id={request_id}\n",
            request.uri().path()
        )
        .into(),
    ))
}
