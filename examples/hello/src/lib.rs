//! The smallest lambda: answers every request with a greeting naming the path it was
//! called on and the request id the service gave it.

use luna_lambda_sdk::{Request, context, handler};

#[handler]
fn hello(request: Request) -> String {
    // Lines on stdout land in the lambda's logs (GET /1/lambdas/{id}/logs).
    println!("hello called on {}", request.uri().path());
    format!(
        "Hello from luna-lambda! path={} request-id={}\n",
        request.uri().path(),
        context::request_id()
    )
}
