//! Compatibility guest: a `wasi:http/proxy` component written directly against the
//! bindings plain `wit-bindgen` generates from the standard WIT, with no SDK and no
//! `wstd` in between, the way another toolchain's component reaches the host.
//!
//! `GET` answers with the method and path; any other method echoes the request body
//! back, proving both body directions work through raw streams.

wit_bindgen::generate!({
    // The repository's vendored WASI packages; only the standard world is used.
    path: "../../../wit",
    world: "wasi:http/proxy@0.2.12",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

struct Component;

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;

impl Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let body = match request.method() {
            Method::Get => format!(
                "plain wit-bindgen: GET {}",
                request.path_with_query().unwrap_or_default()
            )
            .into_bytes(),
            _ => match read_body(&request) {
                Some(bytes) => bytes,
                None => return respond(response_out, 400, b"unreadable body"),
            },
        };
        respond(response_out, 200, &body);
    }
}

fn read_body(request: &IncomingRequest) -> Option<Vec<u8>> {
    let incoming = request.consume().ok()?;
    let stream = incoming.stream().ok()?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return None,
        }
    }
    Some(bytes)
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    // Header values from a constant list: appending cannot fail on syntax.
    let _ = headers.append("content-type", b"text/plain");
    let _ = headers.append("x-guest-toolchain", b"wit-bindgen");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        for chunk in body.chunks(WRITE_CHUNK) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

export!(Component);
