//! Forwarding to container lambdas: the pods serving each lambda version (swapped
//! atomically like WASM versions) and the HTTP/1 connections to them. Each pod keeps
//! its own idle connections; a request checks one out and drives it in its own task
//! (no connection task, no hand-off between tasks), and the response body hands the
//! connection back when it has streamed to its end. A pod is reached over TCP or over
//! the unix socket of its own directory (Docker pods without a network). Depends on
//! `model`, `metrics`.

use std::future::{Future as _, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::metrics::LambdaMetrics;
use crate::model::{AccountId, Endpoint, LambdaId, Version};

/// The body the pod client sends: the caller's body, streamed.
pub type PodBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Forwarding to a pod failed; `proxy::rescue` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// No connection could be made (refused, unreachable, connect timeout).
    #[error("cannot connect to pod {pod}: {reason}")]
    Connect {
        /// The pod.
        pod: Endpoint,
        /// Why.
        reason: String,
    },
    /// No response headers within the response timeout.
    #[error("pod {pod} did not answer within {after:?}")]
    Timeout {
        /// The pod.
        pod: Endpoint,
        /// The timeout.
        after: Duration,
    },
    /// The connection broke or the pod answered something that is not HTTP.
    #[error("pod {pod} failed: {reason}")]
    Broken {
        /// The pod.
        pod: Endpoint,
        /// Why.
        reason: String,
    },
    /// The request body streamed past the caller's limit (`limits.max_proxy_body_bytes`)
    /// while it was being sent; the proxy cut it off.
    #[error("the request body to pod {pod} exceeded its limit")]
    BodyTooLarge {
        /// The pod.
        pod: Endpoint,
    },
}

/// One HTTP/1 connection to a pod: the handle requests are sent through and the
/// connection state machine, which whoever uses the connection polls.
struct Upstream {
    sender: http1::SendRequest<PodBody>,
    connection: http1::Connection<TokioIo<PodStream>, PodBody>,
    idle_since: Instant,
}

/// A connection to a pod, over whichever transport its endpoint names.
enum PodStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl PodStream {
    async fn connect(endpoint: &Endpoint) -> std::io::Result<Self> {
        match endpoint {
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect(address).await?;
                // The body is a second write after the headers: without NODELAY it
                // would wait for the pod's delayed ACK.
                stream.set_nodelay(true)?;
                Ok(Self::Tcp(stream))
            }
            Endpoint::Unix(path) => Ok(Self::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl AsyncRead for PodStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PodStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(stream) => stream.is_write_vectored(),
            Self::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Self::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// What one exchange on a connection came to.
enum Exchange {
    Answered(Response<Incoming>),
    /// The connection was closed before the request was written: it can go elsewhere.
    Unsent(Request<PodBody>),
    Failed(String),
    /// The request body was cut off at its limit while it was sent.
    BodyTooLarge,
}

impl Upstream {
    /// Polls the connection once: false when it has ended (the pod closed it while it
    /// sat idle) or cannot take a request.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.connection).poll(cx).is_pending() && self.sender.is_ready()
    }

    /// Sends `request` and drives the connection until the response headers arrive.
    async fn exchange(&mut self, request: Request<PodBody>) -> Exchange {
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        let connection = &mut self.connection;
        let mut connection_done = false;
        poll_fn(|cx| {
            if let Poll::Ready(result) = response.as_mut().poll(cx) {
                return Poll::Ready(match result {
                    Ok(response) => Exchange::Answered(response),
                    Err(mut unsent) => match unsent.take_message() {
                        Some(request) => Exchange::Unsent(request),
                        None if cut_at_body_limit(unsent.error()) => Exchange::BodyTooLarge,
                        None => Exchange::Failed(error_chain(unsent.error())),
                    },
                });
            }
            if connection_done {
                // The connection ended and its dispatcher answered nothing: never
                // wait on it.
                return Poll::Ready(Exchange::Failed("connection closed".to_owned()));
            }
            match Pin::new(&mut *connection).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(outcome) => {
                    connection_done = true;
                    if let Err(error) = outcome {
                        // The dispatcher hands the same failure to the response
                        // future; poll it once more to get it.
                        tracing::debug!(error = %error, "pod connection failed");
                    }
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// One pod (or, on Kubernetes, the lambda's Service) and its idle connections.
pub struct Pod {
    /// Where it listens.
    pub addr: Endpoint,
    idle: Mutex<Vec<Upstream>>,
    connections_opened: AtomicU64,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("addr", &self.addr)
            .field("connections_opened", &self.connections_opened())
            .finish_non_exhaustive()
    }
}

impl Pod {
    /// A pod with no connections yet.
    pub fn new(addr: Endpoint) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            connections_opened: AtomicU64::new(0),
        }
    }

    /// Connections opened to this pod so far (keep-alive makes this small).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Upstream>> {
        // A panic while holding the lock cannot leave the list inconsistent (push and
        // pop only), so a poisoned lock is still usable.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and not older than
    /// `max_idle`; stale ones are dropped (closed) on the way.
    async fn checkout(&self, max_idle: Duration) -> Option<Upstream> {
        loop {
            let mut upstream = self.idle().pop()?;
            if upstream.idle_since.elapsed() > max_idle {
                // Everything below it is older still.
                self.idle().clear();
                return None;
            }
            if poll_fn(|cx| Poll::Ready(upstream.usable(cx))).await {
                return Some(upstream);
            }
        }
    }

    /// Keeps a connection whose exchange has ended for the next request, if it is
    /// still usable and the pod has room for it.
    fn release(&self, mut upstream: Upstream, cx: &mut Context<'_>, max_idle_connections: usize) {
        if !upstream.usable(cx) {
            return;
        }
        upstream.idle_since = Instant::now();
        let mut idle = self.idle();
        if idle.len() < max_idle_connections {
            idle.push(upstream);
        }
    }
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
    /// The pods.
    pub pods: Vec<Arc<Pod>>,
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
        pods: Vec<Endpoint>,
        metrics: LambdaMetrics,
    ) -> Self {
        Self {
            lambda_id,
            account_id,
            version,
            version_header: HeaderValue::from(version.0),
            pods: pods
                .into_iter()
                .map(|addr| Arc::new(Pod::new(addr)))
                .collect(),
            next: AtomicUsize::new(0),
            metrics,
        }
    }

    /// The next pod, round robin.
    pub fn pick(&self) -> Option<&Arc<Pod>> {
        if self.pods.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.pods.get(n % self.pods.len())
    }
}

/// How requests reach pods: timeouts and how many idle connections each pod keeps.
#[derive(Debug, Clone)]
pub struct PodClient {
    connect_timeout: Duration,
    response_timeout: Duration,
    max_idle_per_pod: usize,
    idle_timeout: Duration,
}

impl PodClient {
    /// A client with these timeouts and idle connections kept per pod.
    pub fn new(
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle_per_pod: usize,
    ) -> Self {
        Self {
            connect_timeout,
            response_timeout,
            max_idle_per_pod,
            // Below the usual keep-alive timeouts of pod servers (Python's, nginx's
            // 75 s), so a pod rarely closes a connection we are about to reuse.
            idle_timeout: Duration::from_secs(30),
        }
    }

    async fn connect(&self, pod: &Pod) -> Result<Upstream, PodError> {
        let failed = |reason: String| PodError::Connect {
            pod: pod.addr.clone(),
            reason,
        };
        let stream = tokio::time::timeout(self.connect_timeout, PodStream::connect(&pod.addr))
            .await
            .map_err(|_| failed(format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|e| failed(e.to_string()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        pod.connections_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Upstream {
            sender,
            connection,
            idle_since: Instant::now(),
        })
    }

    /// Sends `request` (origin-form URI, a Host header) to `pod`; the response body
    /// streams from the pod as it arrives. A request refused unsent by a reused
    /// connection (the pod closed it while idle) goes once more on a new connection.
    pub async fn send(
        &self,
        pod: &Arc<Pod>,
        request: Request<PodBody>,
    ) -> Result<Response<PodResponseBody>, PodError> {
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        let timed_out = || PodError::Timeout {
            pod: pod.addr.clone(),
            after: self.response_timeout,
        };
        let mut request = request;
        let mut idle = pod.checkout(self.idle_timeout).await;
        loop {
            let (mut upstream, was_reused) = match idle.take() {
                Some(upstream) => (upstream, true),
                None => {
                    let fresh = tokio::time::timeout_at(deadline, self.connect(pod))
                        .await
                        .map_err(|_| timed_out())??;
                    (fresh, false)
                }
            };
            match tokio::time::timeout_at(deadline, upstream.exchange(request)).await {
                Err(_) => return Err(timed_out()),
                Ok(Exchange::Answered(response)) => {
                    let (parts, body) = response.into_parts();
                    let mut body = PodResponseBody {
                        body,
                        upstream: Some(upstream),
                        pod: pod.clone(),
                        max_idle_connections: self.max_idle_per_pod,
                    };
                    if body.body.is_end_stream() {
                        // No body to stream (HEAD, 204, empty): the server will not
                        // poll it, so the connection goes back now.
                        poll_fn(|cx| {
                            body.release(cx);
                            Poll::Ready(())
                        })
                        .await;
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Ok(Exchange::Unsent(unsent)) if was_reused => request = unsent,
                Ok(Exchange::Unsent(_)) => {
                    return Err(PodError::Broken {
                        pod: pod.addr.clone(),
                        reason: "the connection closed before the request was sent".into(),
                    });
                }
                Ok(Exchange::BodyTooLarge) => {
                    return Err(PodError::BodyTooLarge {
                        pod: pod.addr.clone(),
                    });
                }
                Ok(Exchange::Failed(reason)) => {
                    return Err(PodError::Broken {
                        pod: pod.addr.clone(),
                        reason,
                    });
                }
            }
        }
    }
}

/// A pod's response body as it streams to the caller. Polling it also drives the
/// connection it arrives on; at its end the connection goes back to the pod's idle
/// list, and dropped early it closes the connection (the rest of the response is
/// still on it).
pub struct PodResponseBody {
    body: Incoming,
    upstream: Option<Upstream>,
    pod: Arc<Pod>,
    max_idle_connections: usize,
}

impl std::fmt::Debug for PodResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodResponseBody")
            .field("pod", &self.pod.addr)
            .field("holds_connection", &self.upstream.is_some())
            .finish_non_exhaustive()
    }
}

impl PodResponseBody {
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(upstream) = self.upstream.take() {
            self.pod.release(upstream, cx, self.max_idle_connections);
        }
    }
}

impl Body for PodResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(upstream) = this.upstream.as_mut()
            && Pin::new(&mut upstream.connection).poll(cx).is_ready()
        {
            // The connection has ended; what it read is already in the body.
            this.upstream = None;
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        // A server stops polling once `is_end_stream` says the body is done (a known
        // length fully sent), so the end is caught here, not only at `None`.
        if frame.is_none() || this.body.is_end_stream() {
            this.release(cx);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether a failed send was the request body's size limit (`http_body_util::Limited`,
/// which the proxy wraps around the caller's body) rather than the pod. The limit's
/// error travels inside an `io::Error`, whose `source` skips the error it wraps, so
/// both are looked into.
fn cut_at_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(cause) = next {
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if cause.is::<http_body_util::LengthLimitError>()
            || wrapped.is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>())
        {
            return true;
        }
        next = cause.source();
    }
    false
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
    use http_body_util::{BodyExt as _, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    fn pod_set(pods: Vec<Endpoint>) -> PodSet {
        let metrics = crate::metrics::Metrics::new()
            .unwrap()
            .for_lambda(LambdaId::generate());
        PodSet::new(
            LambdaId::generate(),
            AccountId::generate(),
            Version::FIRST,
            pods,
            metrics,
        )
    }

    #[test]
    fn pods_are_picked_round_robin() {
        let addrs: Vec<Endpoint> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| Endpoint::Tcp(a.parse().unwrap()))
            .collect();
        let set = pod_set(addrs.clone());
        let picked: Vec<Endpoint> = (0..6)
            .filter_map(|_| set.pick().map(|p| p.addr.clone()))
            .collect();
        assert_eq!(picked, [&addrs[..], &addrs[..]].concat());
        assert!(pod_set(vec![]).pick().is_none());
    }

    /// A pod answering `GET /n` with n bytes, `/slow` after a minute, `/close` with
    /// `Connection: close`, and `/nothing` with 204. Counts connections accepted.
    async fn test_pod() -> (Endpoint, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::Tcp(listener.local_addr().unwrap());
        (endpoint, serve_counted(TestListener::Tcp(listener)))
    }

    /// The same pod on a unix socket in `dir`.
    async fn test_pod_on_unix_socket(dir: &std::path::Path) -> (Endpoint, Arc<AtomicU64>) {
        let path = dir.join("http.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        (
            Endpoint::Unix(path),
            serve_counted(TestListener::Unix(listener)),
        )
    }

    enum TestListener {
        Tcp(TcpListener),
        Unix(tokio::net::UnixListener),
    }

    /// Serves the test pod on every connection `listener` accepts; counts them.
    fn serve_counted(listener: TestListener) -> Arc<AtomicU64> {
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let stream = match &listener {
                    TestListener::Tcp(l) => PodStream::Tcp(l.accept().await.unwrap().0),
                    TestListener::Unix(l) => PodStream::Unix(l.accept().await.unwrap().0),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_test_pod(stream));
            }
        });
        accepted
    }

    async fn serve_test_pod(stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) {
        let service = service_fn(|request: Request<Incoming>| async move {
            let path = request.uri().path().to_owned();
            let mut response = Response::new(Full::new(Bytes::new()));
            match path.as_str() {
                "/slow" => tokio::time::sleep(Duration::from_secs(60)).await,
                "/close" => {
                    response
                        .headers_mut()
                        .insert("connection", HeaderValue::from_static("close"));
                }
                "/nothing" => *response.status_mut() = http::StatusCode::NO_CONTENT,
                "/echo" => {
                    let body = request.into_body().collect().await?.to_bytes();
                    *response.body_mut() = Full::new(body);
                }
                n => {
                    let n: usize = n[1..].parse().unwrap_or(0);
                    *response.body_mut() = Full::new(Bytes::from(vec![b'x'; n]));
                }
            }
            Ok::<_, hyper::Error>(response)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    fn get(path: &str) -> Request<PodBody> {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        Request::builder()
            .uri(path)
            .header("host", "pod")
            .body(body)
            .unwrap()
    }

    fn client() -> PodClient {
        PodClient::new(Duration::from_secs(2), Duration::from_secs(2), 4)
    }

    async fn body_len(response: Response<PodResponseBody>) -> usize {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_reused() {
        let (addr, accepted) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        let client = client();
        for size in [0, 10, 100_000, 3, 0] {
            let response = client.send(&pod, get(&format!("/{size}"))).await.unwrap();
            assert_eq!(body_len(response).await, size);
        }
        // A body with nothing in it (204) hands the connection back at once.
        let response = client.send(&pod, get("/nothing")).await.unwrap();
        assert_eq!(response.status(), 204);
        drop(response);
        let response = client.send(&pod, get("/7")).await.unwrap();
        assert_eq!(body_len(response).await, 7);
        assert_eq!(pod.connections_opened(), 1);
        assert_eq!(accepted.load(Ordering::Relaxed), 1);

        // Concurrent requests each get a connection; at most 4 stay idle.
        let calls = (0..8).map(|_| {
            let (client, pod) = (client.clone(), pod.clone());
            async move { body_len(client.send(&pod, get("/5")).await.unwrap()).await }
        });
        let sizes = futures::future::join_all(calls).await;
        assert_eq!(sizes, vec![5; 8]);
        assert!(pod.idle().len() <= 4);
    }

    #[tokio::test]
    async fn a_pod_on_a_unix_socket_is_served_over_kept_alive_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (endpoint, accepted) = test_pod_on_unix_socket(dir.path()).await;
        let pod = Arc::new(Pod::new(endpoint));
        let client = client();
        for size in [3, 100_000, 0] {
            let response = client.send(&pod, get(&format!("/{size}"))).await.unwrap();
            assert_eq!(body_len(response).await, size);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        let gone = Arc::new(Pod::new(Endpoint::Unix(dir.path().join("none.sock"))));
        let error = client.send(&gone, get("/1")).await.unwrap_err();
        assert!(matches!(error, PodError::Connect { .. }), "{error}");
    }

    /// What a server does with a response body of known length: it reads frames until
    /// `is_end_stream`, never the final `None`, then drops the body.
    async fn send_like_a_server(response: Response<PodResponseBody>) -> usize {
        let mut body = response.into_body();
        let mut sent = 0;
        while !body.is_end_stream() {
            match body.frame().await {
                Some(frame) => sent += frame.unwrap().into_data().map_or(0, |d| d.len()),
                None => break,
            }
        }
        sent
    }

    #[tokio::test]
    async fn a_body_read_to_its_declared_end_returns_the_connection() {
        let (addr, accepted) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        let client = client();
        for size in [24, 1, 70_000, 24] {
            let response = client.send(&pod, get(&format!("/{size}"))).await.unwrap();
            assert_eq!(send_like_a_server(response).await, size);
        }
        assert_eq!(pod.connections_opened(), 1);
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_the_pod_closed_is_not_reused() {
        let (addr, accepted) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        let client = client();
        for _ in 0..3 {
            let response = client.send(&pod, get("/close")).await.unwrap();
            assert_eq!(body_len(response).await, 0);
        }
        let response = client.send(&pod, get("/2")).await.unwrap();
        assert_eq!(body_len(response).await, 2);
        assert_eq!(accepted.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_body_dropped_midway_closes_its_connection() {
        let (addr, accepted) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        let client = client();
        let mut response = client.send(&pod, get("/4000000")).await.unwrap();
        let first = response.body_mut().frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some());
        drop(response);
        assert!(pod.idle().is_empty());
        let response = client.send(&pod, get("/1")).await.unwrap();
        assert_eq!(body_len(response).await, 1);
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn request_bodies_stream_to_the_pod() {
        let (addr, _) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        let body = Full::new(Bytes::from_static(b"hello pod"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "pod")
            .body(body)
            .unwrap();
        let response = client().send(&pod, request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello pod");
    }

    #[tokio::test]
    async fn a_request_body_cut_at_its_limit_is_not_a_pod_failure() {
        let (addr, _) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        // As the proxy sends it: the caller's body behind the size limit.
        let body = http_body_util::Limited::new(Full::new(Bytes::from(vec![7u8; 100])), 10)
            .map_err(std::io::Error::other)
            .boxed_unsync();
        let request = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "pod")
            .body(body)
            .unwrap();
        let error = client().send(&pod, request).await.unwrap_err();
        assert!(matches!(error, PodError::BodyTooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn failures_are_told_apart() {
        let (addr, _) = test_pod().await;
        let pod = Arc::new(Pod::new(addr));
        let quick = PodClient::new(Duration::from_secs(2), Duration::from_millis(100), 4);
        let error = quick.send(&pod, get("/slow")).await.unwrap_err();
        assert!(matches!(error, PodError::Timeout { .. }), "{error}");

        // Nothing listens on a port just released.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = Arc::new(Pod::new(closed.local_addr().unwrap().into()));
        drop(closed);
        let error = client().send(&gone, get("/")).await.unwrap_err();
        assert!(matches!(error, PodError::Connect { .. }), "{error}");

        // A pod that answers garbage.
        let liar = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let liar_pod = Arc::new(Pod::new(liar.local_addr().unwrap().into()));
        tokio::spawn(async move {
            let (mut stream, _) = liar.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, b"NOT HTTP\r\n\r\n").await;
        });
        let error = client().send(&liar_pod, get("/")).await.unwrap_err();
        assert!(matches!(error, PodError::Broken { .. }), "{error}");
    }
}
