//! Bearer-token authentication (`[auth] mode = "token"`): the tokens file maps sha256
//! digests of tokens to accounts; a request's token decides who calls, and the front
//! dispatcher scopes the request to that account. Depends on `config`, `model` and
//! `edge::error`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::{Auth, AuthMode, is_sha256_hex};
use crate::model::AccountId;

/// Why the tokens could not be read at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The tokens file cannot be read.
    #[error("auth.tokens_file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `<account uuid> <sha256 hex>`.
    #[error(
        "auth.tokens_file '{path}' line {line}: expected '<account uuid> <sha256 hex of the token>'"
    )]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// One digest is given twice (two accounts cannot share a token).
    #[error("auth.tokens_file '{path}' line {line}: this token digest is listed already")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Who a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The operator: every route, every account.
    Operator,
    /// A tenant: its own account only.
    Account(AccountId),
}

/// The tokens the service accepts, by the sha256 of the token.
#[derive(Debug, Clone)]
pub struct Authenticator {
    accounts: HashMap<[u8; 32], AccountId>,
    operator: Option<[u8; 32]>,
}

impl Authenticator {
    /// The authenticator of `auth`, or `None` when authentication is off.
    pub fn from_config(auth: &Auth) -> Result<Option<Self>, AuthError> {
        if auth.mode == AuthMode::None {
            return Ok(None);
        }
        let operator = digest_of_hex(&auth.operator_token_sha256);
        let accounts = if auth.tokens_file.is_empty() {
            HashMap::new()
        } else {
            read_tokens(Path::new(&auth.tokens_file))?
        };
        Ok(Some(Self { accounts, operator }))
    }

    /// The caller named by the `Authorization: Bearer` header; 401 without a known one.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let mut given = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (given.next(), given.next()) else {
            return Err(ApiError::unauthorized(
                "an Authorization: Bearer <token> header is required",
            ));
        };
        // The scheme's name is case-insensitive (RFC 9110).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be 'Bearer <token>'")
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.operator == Some(digest) {
            return Ok(Caller::Operator);
        }
        self.accounts
            .get(&digest)
            .map(|account| Caller::Account(*account))
            .ok_or_else(|| ApiError::unauthorized("the token is not known"))
    }
}

/// Routes anyone may call without a token: health probes, the version and the
/// service's own documents (none of them names a lambda or an account).
pub fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/version" | "/healthcheck" | "/1/healthcheck" | "/1/docs/spec" | "/1/docs/dev"
    ) || path.starts_with("/1/docs/dev/")
}

/// Routes only the operator's token may call: they show every account at once.
const OPERATOR_ONLY: [&str; 2] = ["/metrics", "/1/config"];

/// Makes a request act as `caller`: a tenant's request gets its account in the
/// Luna-Account-Id header, whatever the routes then read; a header or `account_id`
/// naming another account, and the operator-only routes, are refused (403). The
/// token itself is removed, so no lambda or pod ever sees it.
pub fn scope(
    caller: Caller,
    path: &str,
    query: Option<&str>,
    headers: &mut HeaderMap,
) -> Result<(), ApiError> {
    headers.remove(http::header::AUTHORIZATION);
    let Caller::Account(account) = caller else {
        return Ok(());
    };
    if OPERATOR_ONLY.contains(&path) {
        return Err(ApiError::forbidden(format!(
            "'{path}' is for the operator's token only"
        )));
    }
    let other = || ApiError::forbidden(format!("the token acts as account {account} only"));
    if super::input::account_optional(headers)?.is_some_and(|given| given != account) {
        return Err(other());
    }
    let named = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "account_id");
    for (_, value) in named {
        // A malformed one is left to the route, which reports it as a bad parameter.
        if value
            .parse::<AccountId>()
            .is_ok_and(|given| given != account)
        {
            return Err(other());
        }
    }
    if let Ok(value) = http::HeaderValue::from_str(&account.to_string()) {
        headers.insert(super::input::ACCOUNT_HEADER, value);
    }
    Ok(())
}

fn digest_of_hex(text: &str) -> Option<[u8; 32]> {
    if !is_sha256_hex(text) {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

fn read_tokens(path: &Path) -> Result<HashMap<[u8; 32], AccountId>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut accounts = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || AuthError::BadLine {
            path: path.to_owned(),
            line: index + 1,
        };
        let mut words = line.split_whitespace();
        let (Some(account), Some(digest), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let account: AccountId = account.parse().map_err(|_| bad())?;
        let digest = digest_of_hex(digest).ok_or_else(bad)?;
        if accounts.insert(digest, account).is_some() {
            return Err(AuthError::Duplicate {
                path: path.to_owned(),
                line: index + 1,
            });
        }
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Bearer {token}").parse().unwrap();
        headers.insert(http::header::AUTHORIZATION, value);
        headers
    }

    #[test]
    fn tokens_name_their_account_or_the_operator() {
        let dir = tempfile::tempdir().unwrap();
        let account = AccountId::generate();
        let file = dir.path().join("tokens");
        let lines = format!("# tenants\n\n{account} {}\n", sha256_hex("tenant-token"));
        std::fs::write(&file, lines).unwrap();
        let auth = Auth {
            mode: AuthMode::Token,
            tokens_file: file.to_str().unwrap().to_owned(),
            operator_token_sha256: sha256_hex("operator-token"),
        };
        let authenticator = Authenticator::from_config(&auth).unwrap().unwrap();
        assert_eq!(
            authenticator.caller(&bearer("tenant-token")),
            Ok(Caller::Account(account))
        );
        assert_eq!(
            authenticator.caller(&bearer("operator-token")),
            Ok(Caller::Operator)
        );
        let mut lowercase = HeaderMap::new();
        let value = "bearer tenant-token".parse().unwrap();
        lowercase.insert(http::header::AUTHORIZATION, value);
        assert_eq!(
            authenticator.caller(&lowercase),
            Ok(Caller::Account(account))
        );
        for refused in [bearer("guess"), bearer(""), HeaderMap::new()] {
            let error = authenticator.caller(&refused).unwrap_err();
            assert_eq!(error.status, http::StatusCode::UNAUTHORIZED);
        }
        let mut two = bearer("tenant-token");
        two.append(
            http::header::AUTHORIZATION,
            "Bearer operator-token".parse().unwrap(),
        );
        assert!(authenticator.caller(&two).is_err(), "two tokens are none");
    }

    #[test]
    fn a_tenant_is_scoped_to_its_account_and_the_token_is_removed() {
        let (mine, theirs) = (AccountId::generate(), AccountId::generate());
        let tenant = Caller::Account(mine);
        let mut headers = bearer("t");
        scope(tenant, "/1/lambdas", None, &mut headers).unwrap();
        assert_eq!(
            headers[super::super::input::ACCOUNT_HEADER],
            mine.to_string()
        );
        assert!(!headers.contains_key(http::header::AUTHORIZATION));
        let query = format!("page=1&account_id={theirs}");
        let error = scope(tenant, "/1/lambdas", Some(&query), &mut HeaderMap::new());
        assert_eq!(error.unwrap_err().code, 11071);
        let mut claimed = HeaderMap::new();
        claimed.insert(
            super::super::input::ACCOUNT_HEADER,
            theirs.to_string().parse().unwrap(),
        );
        assert_eq!(
            scope(tenant, "/1/lambdas", None, &mut claimed)
                .unwrap_err()
                .code,
            11071
        );
        for path in OPERATOR_ONLY {
            assert_eq!(
                scope(tenant, path, None, &mut HeaderMap::new())
                    .unwrap_err()
                    .code,
                11071
            );
            scope(Caller::Operator, path, None, &mut HeaderMap::new()).unwrap();
        }
        let mut operator = HeaderMap::new();
        scope(Caller::Operator, "/1/lambdas", None, &mut operator).unwrap();
        assert!(operator.is_empty(), "the operator's requests stay unscoped");
    }

    #[test]
    fn a_bad_tokens_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let digest = sha256_hex("t");
        for (text, line) in [
            (format!("not-a-uuid {digest}\n"), 1),
            (format!("# ok\n{} abc\n", AccountId::generate()), 2),
            (
                format!(
                    "{} {digest}\n{} {digest}\n",
                    AccountId::generate(),
                    AccountId::generate()
                ),
                2,
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let auth = Auth {
                mode: AuthMode::Token,
                tokens_file: file.to_str().unwrap().to_owned(),
                operator_token_sha256: String::new(),
            };
            let error = Authenticator::from_config(&auth).unwrap_err().to_string();
            assert!(error.contains(&format!("line {line}")), "{error}");
        }
    }
}
