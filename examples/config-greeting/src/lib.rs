//! Greets with what the operator configured: `parameters.config` (`greeting`,
//! `audience.name`) and the lambda's credentials (the login, never the password).

use luna_lambda_sdk::config::{self, Credentials};
use luna_lambda_sdk::{Json, Request, handler};
use serde_json::{Value, json};

#[handler]
fn greet(_request: Request) -> Json<Value> {
    let greeting = config::get("greeting").unwrap_or_else(|| "Hello".to_owned());
    let audience = config::get("audience.name").unwrap_or_else(|| "world".to_owned());
    let (login, secret_set) = match config::credentials() {
        Some(Credentials::Login { login, password }) => (Some(login), !password.is_empty()),
        Some(Credentials::Token(token)) => (None, !token.is_empty()),
        None => (None, false),
    };
    // Keys only: values may be secrets.
    let keys: Vec<String> = config::all().into_iter().map(|(k, _)| k).collect();
    Json(json!({
        "message": format!("{greeting}, {audience}!"),
        "login": login,
        "secret_set": secret_set,
        "config_keys": keys,
    }))
}
