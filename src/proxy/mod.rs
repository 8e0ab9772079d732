//! The proxy hot path: `/1/lambdas/{id}/proxy/{path...}` for the seven methods,
//! handled without the management router. Tenancy, the request id header, hop-by-hop
//! header removal, `account_id` stripping, then the WASM runtime or a container
//! lambda's pods (round robin), with both bodies streamed; `rescue` maps every failure
//! to one LUNA status. Depends on `edge` (state, errors, input), `runtime`, `model`.

mod prebuffer;
mod rescue;

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, Method, Request, header};
use http_body_util::BodyExt as _;

use crate::edge::{ApiError, AppState, REQUEST_ID_HEADER, RouteTemplate, account_optional};

use crate::model::{AccountId, LambdaId, LambdaStatus, RequestId};
use crate::runtime::{LoadedLambda, PodBody, PodSet};

pub use rescue::{rescue, rescue_pod};

/// The lambda a request was counted against.
enum Counted {
    Wasm(Arc<LoadedLambda>),
    Pods(Arc<PodSet>),
}

/// The route template a proxy request is counted under (no per-request allocation).
fn proxy_template(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET:/1/lambdas/{lambda_id}/proxy",
        Method::POST => "POST:/1/lambdas/{lambda_id}/proxy",
        Method::PUT => "PUT:/1/lambdas/{lambda_id}/proxy",
        Method::PATCH => "PATCH:/1/lambdas/{lambda_id}/proxy",
        Method::DELETE => "DELETE:/1/lambdas/{lambda_id}/proxy",
        Method::HEAD => "HEAD:/1/lambdas/{lambda_id}/proxy",
        Method::OPTIONS => "OPTIONS:/1/lambdas/{lambda_id}/proxy",
        _ => "OTHER:/1/lambdas/{lambda_id}/proxy",
    }
}
const LAMBDA_VERSION_HEADER: HeaderName = HeaderName::from_static("lambda-version");
/// Seconds a client should wait before retrying a lambda that is still building.
const RETRY_AFTER_SECS: &str = "5";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// The methods the proxy forwards (POST and PUT need the account header).
pub const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// `METHODS` as an `Allow` header.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A proxy path split into the lambda id and the path forwarded to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget<'a> {
    /// The id segment as written.
    pub lambda_id: Cow<'a, str>,
    /// The forwarded path, starting with `/`.
    pub rest: Cow<'a, str>,
}

impl ProxyTarget<'_> {
    /// Detaches from the request's path.
    pub fn into_owned(self) -> ProxyTarget<'static> {
        ProxyTarget {
            lambda_id: Cow::Owned(self.lambda_id.into_owned()),
            rest: Cow::Owned(self.rest.into_owned()),
        }
    }
}

/// Recognises `/1/lambdas/{id}/proxy` and `/1/lambdas/{id}/proxy/...`.
pub fn match_path(path: &str) -> Option<ProxyTarget<'_>> {
    let tail = path.strip_prefix("/1/lambdas/")?;
    let (id, after) = tail.split_once('/')?;
    let rest = after.strip_prefix("proxy")?;
    if !(rest.is_empty() || rest.starts_with('/')) || id.is_empty() {
        return None;
    }
    Some(ProxyTarget {
        lambda_id: Cow::Borrowed(id),
        rest: Cow::Borrowed(if rest.is_empty() { "/" } else { rest }),
    })
}

/// Removes `account_id` from a query string, keeping everything else byte for byte.
fn split_account(query: Option<&str>) -> Result<(Option<AccountId>, Option<String>), ApiError> {
    let Some(query) = query else {
        return Ok((None, None));
    };
    let mut account = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let key = pair.split('=').next().unwrap_or_default();
        if key == "account_id" {
            let value = pair.split_once('=').map(|(_, v)| v).unwrap_or_default();
            let parsed = form_urlencoded::parse(format!("v={value}").as_bytes())
                .next()
                .and_then(|(_, v)| v.parse::<AccountId>().ok())
                .ok_or_else(|| ApiError::bad_query("account_id"))?;
            if account.is_some_and(|a| a != parsed) {
                return Err(ApiError::bad_query("account_id"));
            }
            account = Some(parsed);
        } else if !pair.is_empty() {
            kept.push(pair);
        }
    }
    let rest = (!kept.is_empty()).then(|| kept.join("&"));
    Ok((account, rest))
}

/// Serves a proxy request end to end; never fails (errors become LUNA responses).
pub async fn handle<B>(
    state: &AppState,
    request: Request<B>,
    target: ProxyTarget<'static>,
    request_id: &RequestId,
) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let template = proxy_template(request.method());
    let mut lambda_for_metrics = None;
    let mut response =
        match forward(state, request, &target, request_id, &mut lambda_for_metrics).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
    if let Some(counted) = lambda_for_metrics {
        let code = response
            .extensions()
            .get::<crate::edge::error::ErrorCode>()
            .map(|c| c.0);
        match counted {
            Counted::Wasm(lambda) => lambda.count_request(code),
            Counted::Pods(pods) => pods.metrics.request(code),
        }
    }
    response
        .extensions_mut()
        .insert(RouteTemplate(template.into()));
    response
}

async fn forward<B>(
    state: &AppState,
    request: Request<B>,
    target: &ProxyTarget<'static>,
    request_id: &RequestId,
    lambda_for_metrics: &mut Option<Counted>,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let method = request.method().clone();
    let account = if method == Method::POST || method == Method::PUT {
        Some(crate::edge::account_required(request.headers())?)
    } else if METHODS.contains(&method) {
        account_optional(request.headers())?
    } else {
        // RFC 9110: a 405 lists what the resource does accept.
        let mut refused =
            ApiError::method_not_allowed(method.as_str(), request.uri().path()).into_response();
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return Ok(refused);
    };
    let (query_account, forwarded_query) = split_account(request.uri().query())?;
    let account = match (account, query_account) {
        (Some(a), Some(q)) if a != q => return Err(ApiError::bad_query("account_id")),
        (a, q) => a.or(q),
    };
    let id: LambdaId = target
        .lambda_id
        .parse()
        .map_err(|_| ApiError::lambda_not_found(&target.lambda_id))?;

    let Some(lambda) = state.registry.get(id) else {
        if let Some(pods) = state.registry.pods(id) {
            if account.is_some_and(|a| a != pods.account_id) {
                return Err(ApiError::lambda_not_found(&target.lambda_id));
            }
            *lambda_for_metrics = Some(Counted::Pods(pods.clone()));
            return forward_to_pods(state, request, target, forwarded_query, request_id, &pods)
                .await;
        }
        // Not served: say why, without leaking other accounts' lambdas.
        let record = state.lifecycle.owned(id, account).await?;
        let mut response =
            ApiError::not_running(&target.lambda_id, record.status.as_str()).into_response();
        if record.status == LambdaStatus::Waiting {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        return Ok(response);
    };
    if account.is_some_and(|a| a != lambda.account_id) {
        return Err(ApiError::lambda_not_found(&target.lambda_id));
    }
    *lambda_for_metrics = Some(Counted::Wasm(lambda.clone()));
    // A declared oversize body is refused before the guest runs; an undeclared one is
    // cut off while streaming (runtime::LimitedBody).
    let limit = lambda.limits.max_request_body;
    refuse_declared_oversize(request.headers(), limit)?;

    let (mut parts, body) = request.into_parts();
    rewrite(&mut parts, target, forwarded_query.as_deref(), request_id)?;
    // The body's first bytes arrive before the request takes a slot and permits.
    let body = prebuffer::prebuffer(
        body,
        state.config.limits.proxy_prebuffer_bytes,
        lambda.limits.timeout,
    )
    .await
    .map_err(|e| ApiError::body_timeout(&e))?;
    let response = lambda
        .invoke(Request::from_parts(parts, body), request_id.as_str())
        .await
        .map_err(|e| rescue(&e, id))?;
    let (mut parts, body) = response.into_parts();
    finish_response(&mut parts, &lambda.version_header);
    let body = body.map_err(|code| std::io::Error::other(format!("{code:?}")));
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A body whose `Content-Length` is over `limit` is refused before anything runs.
fn refuse_declared_oversize(headers: &http::HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large("request body", limit));
    }
    Ok(())
}

/// The lambda's response as the caller gets it: no hop-by-hop headers, the version
/// that served it.
fn finish_response(parts: &mut http::response::Parts, version: &HeaderValue) {
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.insert(LAMBDA_VERSION_HEADER, version.clone());
}

/// Points a request at the lambda: the forwarded path and query, no hop-by-hop
/// headers, the request id, a Host.
fn rewrite(
    parts: &mut http::request::Parts,
    target: &ProxyTarget<'static>,
    forwarded_query: Option<&str>,
    request_id: &RequestId,
) -> Result<(), ApiError> {
    let path_and_query = match forwarded_query {
        Some(q) => format!("{}?{q}", target.rest),
        None => target.rest.to_string(),
    };
    parts.uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ApiError::invalid_request(&format!("bad forwarded path: {e}")))?;
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        parts.headers.insert(REQUEST_ID_HEADER, v);
    }
    if !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    Ok(())
}

/// Forwards to the next pod of a container lambda; both bodies stream.
async fn forward_to_pods<B>(
    state: &AppState,
    request: Request<B>,
    target: &ProxyTarget<'static>,
    forwarded_query: Option<String>,
    request_id: &RequestId,
    pods: &PodSet,
) -> Result<Response, ApiError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let limit = state.config.limits.max_proxy_body_bytes;
    refuse_declared_oversize(request.headers(), limit)?;
    let Some(pod) = pods.pick() else {
        return Err(ApiError::not_running(&target.lambda_id, "terminated"));
    };
    let (mut parts, body) = request.into_parts();
    rewrite(&mut parts, target, forwarded_query.as_deref(), request_id)?;
    // An undeclared body is cut off at the limit while it streams.
    let body: PodBody = http_body_util::Limited::new(
        body.map_err(|e| std::io::Error::other(e.to_string())),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .map_err(std::io::Error::other)
    .boxed_unsync();
    let response = state
        .pods
        .send(pod, Request::from_parts(parts, body))
        .await
        .map_err(|e| rescue_pod(&e, pods.lambda_id, limit))?;
    let (mut parts, body) = response.into_parts();
    finish_response(&mut parts, &pods.version_header);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        let t = match_path("/1/lambdas/abc/proxy/main/x").unwrap();
        assert_eq!((t.lambda_id.as_ref(), t.rest.as_ref()), ("abc", "/main/x"));
        assert_eq!(match_path("/1/lambdas/abc/proxy").unwrap().rest, "/");
        assert!(match_path("/1/lambdas/abc/proxyx").is_none());
        assert!(match_path("/1/lambdas/abc/status").is_none());
        assert!(match_path("/1/lambdas//proxy").is_none());
        assert!(match_path("/1/lambdas").is_none());
    }

    #[test]
    fn account_is_stripped_from_the_query() {
        let a = "8950722f-3fd4-4223-b48f-03f95f0e8dfb";
        let (acc, rest) = split_account(Some(&format!("x=1&account_id={a}&y=%20"))).unwrap();
        assert_eq!(acc.unwrap().to_string(), a);
        assert_eq!(rest.as_deref(), Some("x=1&y=%20"));
        assert_eq!(
            split_account(Some("account_id=bad")).unwrap_err().code,
            12012
        );
        assert_eq!(split_account(None).unwrap(), (None, None));
        assert_eq!(
            split_account(Some(&format!("account_id={a}"))).unwrap().1,
            None
        );
    }
}
