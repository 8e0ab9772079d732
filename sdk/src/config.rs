//! The lambda's configuration (`wasi:config/store`): its `parameters.config` object,
//! flattened into dot-separated keys (`{"greeting": {"text": "hi"}}` gives
//! `greeting.text`; strings as they are, other values as JSON text, array items by
//! index), and its credentials. Read-only; the host never fails these calls.

use crate::bindings::wasi::config::store;

/// The value of `key`, if set.
///
/// ```no_run
/// let greeting = luna_lambda_sdk::config::get("greeting.text").unwrap_or("Hello".into());
/// ```
pub fn get(key: &str) -> Option<String> {
    store::get(key).ok().flatten()
}

/// Every key and value, sorted by key.
pub fn all() -> Vec<(String, String)> {
    store::get_all().unwrap_or_default()
}

/// The credentials given at create time.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `{"login", "password"}`.
    Login {
        /// The login.
        login: String,
        /// The password.
        password: String,
    },
    /// `{"token"}`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret by accident.
        match self {
            Self::Login { login, .. } => write!(f, "Login {{ login: {login:?}, password: *** }}"),
            Self::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The lambda's credentials, if any were given.
pub fn credentials() -> Option<Credentials> {
    if let Some(token) = get("luna.credentials.token") {
        return Some(Credentials::Token(token));
    }
    Some(Credentials::Login {
        login: get("luna.credentials.login")?,
        password: get("luna.credentials.password").unwrap_or_default(),
    })
}
