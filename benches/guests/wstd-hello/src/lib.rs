//! Benchmark guest: the `wstd` hello a Rust author writes first (`#[wstd::http_server]`).

use wstd::http::{Body, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> wstd::http::Result<Response<Body>> {
    Ok(Response::new("hello from wstd\n".into()))
}
