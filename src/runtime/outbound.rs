//! Outbound HTTP from guests (`wasi:http/outgoing-handler`): closed unless the lambda's
//! `allowed_outbound_hosts` opens it, bounded in calls per request, connect and
//! response time and response size, and counted in metrics. Depends on `metrics`,
//! `logs` and `model` (whose `HostPattern` parses the allow-list).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::guest::GuestEnv;
use crate::metrics::Outbound;
use crate::model::HostPattern;

/// Bounds on the outbound calls of one request.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Calls one request may make.
    pub max_requests: u32,
    /// Connecting.
    pub connect_timeout: Duration,
    /// First byte of the response, and between its bytes.
    pub response_timeout: Duration,
    /// Response body bytes.
    pub max_response_bytes: u64,
}

impl From<&crate::config::Sandbox> for OutboundLimits {
    fn from(sandbox: &crate::config::Sandbox) -> Self {
        Self {
            max_requests: sandbox.max_outbound_requests,
            connect_timeout: Duration::from_millis(sandbox.outbound_connect_timeout_ms),
            response_timeout: Duration::from_millis(sandbox.outbound_response_timeout_ms),
            max_response_bytes: sandbox.max_outbound_response_bytes,
        }
    }
}

/// A lambda version's outbound policy.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    patterns: Vec<HostPattern>,
    limits: OutboundLimits,
}

impl OutboundPolicy {
    /// The policy of `allowed_outbound_hosts` (already validated: invalid entries are
    /// skipped so they can never widen it).
    pub fn new(allowed: &[String], limits: OutboundLimits) -> Self {
        Self {
            patterns: allowed
                .iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .collect(),
            limits,
        }
    }

    /// Whether a request to the URI's authority is allowed.
    pub fn admits(&self, uri: &http::Uri) -> bool {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let default_port = if https { 443 } else { 80 };
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(default_port);
        self.patterns
            .iter()
            .any(|p| p.admits(host, port, default_port))
    }
}

/// The `wasi:http` hooks of one request: the allow-list, its call budget, metrics.
pub struct OutboundHooks {
    env: Arc<GuestEnv>,
    request_id: Arc<str>,
    calls: u32,
}

impl OutboundHooks {
    /// Hooks for one request of the lambda described by `env`.
    pub fn new(env: Arc<GuestEnv>, request_id: Arc<str>) -> Self {
        Self {
            env,
            request_id,
            calls: 0,
        }
    }

    fn refuse(&self, uri: &http::Uri, why: &str) -> SendFuture {
        self.env.metrics.outbound(Outbound::Denied);
        self.env.log(
            &self.request_id,
            &format!(
                "outbound request to {} denied: {why}",
                uri.authority().map_or("(no host)", |a| a.as_str())
            ),
        );
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let policy = &self.env.outbound;
        if !policy.admits(request.uri()) {
            return self.refuse(request.uri(), "the host is not in allowed_outbound_hosts");
        }
        if self.calls >= policy.limits.max_requests {
            let why = format!(
                "a request may make at most {} outbound calls",
                policy.limits.max_requests
            );
            return self.refuse(request.uri(), &why);
        }
        self.calls += 1;
        let limits = policy.limits;
        // The guest may ask for shorter timeouts, never longer ones.
        let clamp =
            |asked: Option<Duration>, max: Duration| Some(asked.map_or(max, |a| a.min(max)));
        let options = RequestOptions {
            connect_timeout: clamp(
                options.and_then(|o| o.connect_timeout),
                limits.connect_timeout,
            ),
            first_byte_timeout: clamp(
                options.and_then(|o| o.first_byte_timeout),
                limits.response_timeout,
            ),
            between_bytes_timeout: clamp(
                options.and_then(|o| o.between_bytes_timeout),
                limits.response_timeout,
            ),
        };
        let metrics = self.env.metrics.clone();
        Box::new(async move {
            match wasmtime_wasi_http::default_send_request(request, Some(options)).await {
                Ok((response, io)) => {
                    metrics.outbound(Outbound::Sent);
                    let response = response.map(|body| {
                        CappedBody {
                            inner: body,
                            remaining: limits.max_response_bytes,
                        }
                        .boxed_unsync()
                    });
                    Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
                }
                Err(e) => {
                    metrics.outbound(Outbound::Failed);
                    Err(e)
                }
            }
        })
    }
}

/// An outbound response body that fails once it exceeds the cap.
struct CappedBody<B> {
    inner: B,
    remaining: u64,
}

impl<B> http_body::Body for CappedBody<B>
where
    B: http_body::Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            if len > self.remaining {
                return std::task::Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
            }
            self.remaining -= len;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> OutboundPolicy {
        let owned: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        OutboundPolicy::new(
            &owned,
            OutboundLimits {
                max_requests: 1,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                max_response_bytes: 1,
            },
        )
    }

    fn admits(p: &OutboundPolicy, uri: &str) -> bool {
        p.admits(&uri.parse().unwrap())
    }

    #[test]
    fn allow_list_matching() {
        let p = policy(&["127.0.0.1:5210", "*.example.com", "api.test:*"]);
        assert!(admits(&p, "http://127.0.0.1:5210/x"));
        assert!(!admits(&p, "http://127.0.0.1:5211/x"));
        assert!(!admits(&p, "http://127.0.0.2:5210/x"));
        assert!(admits(&p, "https://a.example.com/"));
        assert!(admits(&p, "http://A.B.Example.com/"));
        assert!(!admits(&p, "https://example.com/"));
        assert!(!admits(&p, "https://evilexample.com/"));
        assert!(!admits(&p, "https://a.example.com:8443/"));
        assert!(admits(&p, "http://api.test:9999/"));
        assert!(!admits(&policy(&[]), "http://127.0.0.1/"));
        assert!(admits(&policy(&["*:*"]), "http://anything:1/"));
        // An invalid entry never widens the policy.
        assert!(!admits(&policy(&["http://x"]), "http://x/"));
    }
}
