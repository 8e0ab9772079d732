//! Parsing request input at the edge into domain types: the Luna-Account-Id header,
//! strict query strings (unknown parameters rejected), JSON bodies with the failing
//! path, streamed multipart uploads with per-part Content-Type and size limits, and
//! Accept negotiation.

use std::collections::HashMap;

use axum::extract::Multipart;
use axum::extract::multipart::MultipartError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::config::Limits;
use crate::model::AccountId;

/// Header carrying the caller's account.
pub const ACCOUNT_HEADER: &str = "luna-account-id";

/// The account header, required.
pub fn account_required(headers: &HeaderMap) -> Result<AccountId, ApiError> {
    account_optional(headers)?.ok_or_else(ApiError::missing_account_header)
}

/// The account header, when present; repeated with different values is refused.
pub fn account_optional(headers: &HeaderMap) -> Result<Option<AccountId>, ApiError> {
    let mut account = None;
    for value in headers.get_all(ACCOUNT_HEADER) {
        let parsed: AccountId = value
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(ApiError::bad_account_header)?;
        if account.is_some_and(|seen| seen != parsed) {
            return Err(ApiError::conflicting_account_headers());
        }
        account = Some(parsed);
    }
    Ok(account)
}

/// A query string parsed against the parameters a route accepts.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses `raw`; an unknown or repeated parameter is 12012.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&key.as_ref()) || map.contains_key(key.as_ref()) {
                return Err(ApiError::bad_query(&key));
            }
            map.insert(key.into_owned(), value.into_owned());
        }
        Ok(Self(map))
    }

    /// A parameter parsed with `FromStr`; malformed is 12012.
    pub fn get<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.0
            .get(name)
            .map(|v| v.parse().map_err(|_| ApiError::bad_query(name)))
            .transpose()
    }

    /// An integer parameter within `range`.
    pub fn int_in(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        match self.get::<u64>(name)? {
            Some(v) if !range.contains(&v) => Err(ApiError::bad_query(name)),
            other => Ok(other),
        }
    }

    /// The raw value.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `account_id`, a uuid.
    pub fn account(&self) -> Result<Option<AccountId>, ApiError> {
        self.get("account_id")
    }
}

/// Parses JSON, reporting the failing path (12022) or a non-JSON body (12002).
pub fn json<T: DeserializeOwned>(bytes: &[u8], root: &str) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_json(root, &format!("not valid JSON: {inner}"));
        }
        let path = e.path().to_string();
        let full = if path == "." || path.is_empty() {
            root.to_owned()
        } else {
            format!("{root}.{path}")
        };
        ApiError::bad_json(&full, &inner.to_string())
    })?;
    de.end()
        .map_err(|e| ApiError::bad_json(root, &format!("not valid JSON: {e}")))?;
    Ok(value)
}

/// Requires a JSON content type on a body route.
pub fn require_json_content(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match mime_of(ct).as_str() {
        "application/json" => Ok(()),
        // No body type at all: the request carries no JSON.
        "" => Err(ApiError::no_json()),
        _ => Err(ApiError::bad_content_type("application/json")),
    }
}

fn mime_of(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The parts of a lambda upload.
#[derive(Debug, Default)]
pub struct UploadParts {
    /// `archive` (application/zip).
    pub archive: Option<Bytes>,
    /// `credentials` (application/json).
    pub credentials: Option<Bytes>,
    /// `parameters` (application/json).
    pub parameters: Option<Bytes>,
    /// `deploy_parameters` (application/json).
    pub deploy_parameters: Option<Bytes>,
}

/// Checks the request is multipart before reading it (12017).
pub fn require_multipart(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if mime_of(ct) == "multipart/form-data" {
        Ok(())
    } else {
        Err(ApiError::bad_content_type("multipart/form-data"))
    }
}

fn multipart_error(e: &MultipartError, limits: &Limits) -> ApiError {
    if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("request body", limits.max_archive_bytes)
    } else {
        ApiError::invalid_request(&format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Reads the multipart body part by part, chunk by chunk, enforcing each part's
/// Content-Type and size limit as the bytes arrive.
pub async fn read_upload(
    mut multipart: Multipart,
    allowed: &[&str],
    limits: &Limits,
) -> Result<UploadParts, ApiError> {
    let mut parts = UploadParts::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(&e, limits)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::invalid_request(&format!(
                "unexpected multipart part '{name}' (expected: {})",
                allowed.join(", ")
            )));
        }
        let (expected, limit) = if name == "archive" {
            ("application/zip", limits.max_archive_bytes)
        } else {
            ("application/json", limits.max_json_bytes as u64)
        };
        let content_type = field.content_type().map(mime_of).unwrap_or_default();
        if content_type != expected {
            return Err(ApiError::bad_part_type(&name, expected));
        }
        let mut field = field;
        let mut data = BytesMut::new();
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if (data.len() + chunk.len()) as u64 > limit {
                        return Err(ApiError::too_large(&format!("multipart '{name}'"), limit));
                    }
                    data.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(multipart_error(&e, limits)),
            }
        }
        let slot = match name.as_str() {
            "archive" => &mut parts.archive,
            "credentials" => &mut parts.credentials,
            "parameters" => &mut parts.parameters,
            _ => &mut parts.deploy_parameters,
        };
        if slot.is_some() {
            return Err(ApiError::invalid_request(&format!(
                "multipart part '{name}' appears more than once"
            )));
        }
        *slot = Some(data.freeze());
    }
    Ok(parts)
}

/// What the client accepts, among what a route can give.
pub fn negotiate(
    headers: &HeaderMap,
    supported: &[&'static str],
    default: Option<&'static str>,
) -> Result<&'static str, ApiError> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.trim().is_empty() {
        return default.ok_or_else(|| ApiError::unsupported_accept(supported));
    }
    for item in accept.split(',') {
        // `q=0` means "not acceptable".
        let refused = item.split(';').skip(1).any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        let mime = mime_of(item);
        if let Some(found) = supported.iter().find(|s| **s == mime) {
            return Ok(found);
        }
        if mime == "*/*" {
            return Ok(default.unwrap_or(supported[0]));
        }
    }
    Err(ApiError::unsupported_accept(supported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_queries() {
        let q = Query::parse(Some("page=2&page_size=5"), &["page", "page_size"]).unwrap();
        assert_eq!(q.int_in("page", 1..=u64::MAX).unwrap(), Some(2));
        assert_eq!(
            Query::parse(Some("nope=1"), &["page"]).unwrap_err().code,
            12012
        );
        assert_eq!(
            Query::parse(Some("page=1&page=2"), &["page"])
                .unwrap_err()
                .code,
            12012
        );
        let q = Query::parse(Some("page=0"), &["page"]).unwrap();
        assert_eq!(
            q.int_in("page", 1..=10).unwrap_err().detail,
            "Bad query parameters 'page'"
        );
        let q = Query::parse(Some("account_id=zzz"), &["account_id"]).unwrap();
        assert_eq!(q.account().unwrap_err().code, 12012);
    }

    #[test]
    fn json_paths() {
        let err =
            json::<crate::model::Parameters>(br#"{"workers": "x"}"#, "parameters").unwrap_err();
        assert_eq!(err.code, 12022);
        assert!(err.detail.contains("parameters.workers"), "{}", err.detail);
        let err = json::<crate::model::Parameters>(br#"{"nope": 1}"#, "parameters").unwrap_err();
        assert!(err.detail.contains("nope"), "{}", err.detail);
        let err = json::<crate::model::Parameters>(b"{", "parameters").unwrap_err();
        assert_eq!(err.code, 12022);
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        let yaml = "application/x-yaml";
        assert!(negotiate(&h, &[yaml], None).is_err());
        assert_eq!(negotiate(&h, &[yaml], Some(yaml)).unwrap(), yaml);
        h.insert(
            http::header::ACCEPT,
            "text/html, application/x-yaml;q=0.9".parse().unwrap(),
        );
        assert_eq!(
            negotiate(&h, &[yaml, "text/html"], None).unwrap(),
            "text/html"
        );
        h.insert(http::header::ACCEPT, "*/*".parse().unwrap());
        assert_eq!(negotiate(&h, &[yaml, "text/html"], None).unwrap(), yaml);
        h.insert(
            http::header::ACCEPT,
            "text/html;q=0, application/x-yaml".parse().unwrap(),
        );
        assert_eq!(negotiate(&h, &["text/html", yaml], None).unwrap(), yaml);
        h.insert(http::header::ACCEPT, "image/png".parse().unwrap());
        assert_eq!(negotiate(&h, &[yaml], Some(yaml)).unwrap_err().code, 12024);
    }

    #[test]
    fn account_header() {
        let mut h = HeaderMap::new();
        assert_eq!(account_required(&h).unwrap_err().code, 11066);
        h.insert(ACCOUNT_HEADER, "nope".parse().unwrap());
        assert_eq!(account_required(&h).unwrap_err().code, 11037);
        h.insert(
            ACCOUNT_HEADER,
            "8950722f-3fd4-4223-b48f-03f95f0e8dfb".parse().unwrap(),
        );
        assert!(account_required(&h).is_ok());
        // Repeated alike is one account; a second, different one is a conflict.
        h.append(
            ACCOUNT_HEADER,
            "8950722f-3fd4-4223-b48f-03f95f0e8dfb".parse().unwrap(),
        );
        assert!(account_required(&h).is_ok());
        h.append(
            ACCOUNT_HEADER,
            "0468ca85-f6ca-4841-b30c-5ccc26b6f397".parse().unwrap(),
        );
        let error = account_required(&h).unwrap_err();
        assert!(error.detail.contains("more than once"), "{error:?}");
    }
}
