//! Validates a JSON body and echoes it back. Bad input gets a 400 with a JSON
//! `{"error": ...}` saying what is wrong; anything but POST gets a 405.

use luna_lambda_sdk::http::{Method, StatusCode};
use luna_lambda_sdk::json::{self, JsonError};
use luna_lambda_sdk::{IntoResponse, Json, Request, Response, context, handler};
use serde::{Deserialize, Serialize};

/// What callers send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    message: String,
    #[serde(default = "one")]
    repeat: u32,
}

fn one() -> u32 {
    1
}

/// What they get back.
#[derive(Serialize)]
struct Echo {
    echo: String,
    length: usize,
    request_id: String,
}

#[handler]
async fn echo(mut request: Request) -> Response {
    if request.method() != Method::POST {
        return json::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "send a POST with a JSON body",
        );
    }
    let input: Input = match json::body(&mut request).await {
        Ok(input) => input,
        Err(e) => return e.into_response(),
    };
    match validate(&input) {
        Ok(()) => {
            let echo = input.message.repeat(input.repeat as usize);
            Json(Echo {
                length: echo.chars().count(),
                echo,
                request_id: context::request_id(),
            })
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn validate(input: &Input) -> Result<(), JsonError> {
    if input.message.trim().is_empty() {
        return Err(JsonError("message must not be empty".to_owned()));
    }
    if !(1..=10).contains(&input.repeat) {
        return Err(JsonError(format!(
            "repeat must be in 1..10, got {}",
            input.repeat
        )));
    }
    Ok(())
}
