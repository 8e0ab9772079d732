//! Forwarding to container lambdas: the pods serving each lambda version (swapped
//! atomically like WASM versions) and one pooled HTTP/1 client to all of them, with
//! connect and response timeouts. Bodies stream in both directions. Depends on
//! `model`, `metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::metrics::LambdaMetrics;
use crate::model::{AccountId, LambdaId, Version};

/// The body the pod client sends: the caller's body, streamed.
pub type PodBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Forwarding to a pod failed; `proxy::rescue` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// No connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to pod {pod}: {reason}")]
    Connect {
        /// The pod.
        pod: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No response headers within the response timeout.
    #[error("pod {pod} did not answer within {after:?}")]
    Timeout {
        /// The pod.
        pod: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The connection broke or the pod answered something that is not HTTP.
    #[error("pod {pod} failed: {reason}")]
    Broken {
        /// The pod.
        pod: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request could not be rewritten for the pod.
    #[error("cannot address the pod: {0}")]
    Address(String),
}

/// The ready pods of a container lambda's serving version.
#[derive(Debug)]
pub struct PodSet {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// Its owner (tenancy is checked on the hot path).
    pub account_id: AccountId,
    /// The version the pods serve.
    pub version: Version,
    /// `Lambda-Version` of every response.
    pub version_header: HeaderValue,
    /// Where the pods listen.
    pub pods: Vec<SocketAddr>,
    next: AtomicUsize,
    /// The lambda's request counters.
    pub metrics: LambdaMetrics,
}

impl PodSet {
    /// A version's pods.
    pub fn new(
        lambda_id: LambdaId,
        account_id: AccountId,
        version: Version,
        pods: Vec<SocketAddr>,
        metrics: LambdaMetrics,
    ) -> Self {
        Self {
            lambda_id,
            account_id,
            version,
            version_header: HeaderValue::from(version.0),
            pods,
            next: AtomicUsize::new(0),
            metrics,
        }
    }

    /// The next pod, round robin.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.pods.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.pods.get(n % self.pods.len()).copied()
    }
}

/// One pooled client for every pod.
#[derive(Debug, Clone)]
pub struct PodClient {
    client: Client<HttpConnector, PodBody>,
    response_timeout: Duration,
}

impl PodClient {
    /// A client with these timeouts and idle connections kept per pod.
    pub fn new(
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle_per_pod: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle_per_pod)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            client,
            response_timeout,
        }
    }

    /// Sends `request` (origin-form URI: path and query) to `pod`; the response body
    /// streams from the pod as it arrives.
    pub async fn send(
        &self,
        pod: SocketAddr,
        mut request: Request<PodBody>,
    ) -> Result<Response<hyper::body::Incoming>, PodError> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority(pod.to_string())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| PodError::Address(e.to_string()))?;
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(PodError::Timeout {
                pod,
                after: self.response_timeout,
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(PodError::Connect {
                pod,
                reason: error_chain(&e),
            }),
            Ok(Err(e)) => Err(PodError::Broken {
                pod,
                reason: error_chain(&e),
            }),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_picked_round_robin() {
        let metrics = crate::metrics::Metrics::new()
            .unwrap()
            .for_lambda(LambdaId::generate());
        let pods: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let set = PodSet::new(
            LambdaId::generate(),
            AccountId::generate(),
            Version::FIRST,
            pods.clone(),
            metrics.clone(),
        );
        let picked: Vec<SocketAddr> = (0..6).filter_map(|_| set.pick()).collect();
        assert_eq!(picked, [&pods[..], &pods[..]].concat());
        let empty = PodSet::new(
            LambdaId::generate(),
            AccountId::generate(),
            Version::FIRST,
            vec![],
            metrics,
        );
        assert_eq!(empty.pick(), None);
    }
}
