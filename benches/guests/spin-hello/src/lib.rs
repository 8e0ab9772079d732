//! Benchmark guest: the Spin SDK hello (`#[http_component]`), as `spin new http-rust` makes it.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(_request: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body("hello from spin\n")
        .build())
}
