//! One loaded WASM lambda version (`ProxyPre` + limits + concurrency permits) and the
//! per-request path: a fresh `Store` and instance from the pool, the request streamed
//! in, the response streamed out, deadlines enforced by epochs and a host timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::Store;
use wasmtime::component::Component;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::engine::WasmEngine;
use super::host::HostState;
use super::{InvokeError, RuntimeError};
use crate::logs::LogSink;
use crate::metrics::{LambdaMetrics, Metrics};
use crate::model::{AccountId, LambdaId, Version};

/// Resolved limits of one lambda version.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Requests executing at once.
    pub max_concurrent: u32,
    /// Largest request body accepted.
    pub max_request_body: u64,
}

/// A lambda version ready to serve: swapping the registry's `Arc` swaps versions atomically.
pub struct LoadedLambda {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// Its owner: the proxy checks tenancy without a store read.
    pub account_id: AccountId,
    /// The version this instance pre serves.
    pub version: Version,
    /// Rendered once: every response carries it.
    pub version_header: http::HeaderValue,
    /// The limits it runs with.
    pub limits: SandboxLimits,
    pre: ProxyPre<HostState>,
    engine: Arc<WasmEngine>,
    permits: Arc<Semaphore>,
    logs: LogSink,
    metrics: LambdaMetrics,
}

impl std::fmt::Debug for LoadedLambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedLambda")
            .field("lambda_id", &self.lambda_id)
            .field("version", &self.version)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LoadedLambda {
    /// Links a compiled component; fails naming what the host cannot satisfy.
    #[expect(
        clippy::too_many_arguments,
        reason = "plain wiring of a version's parts"
    )]
    pub fn load(
        engine: &Arc<WasmEngine>,
        component: &Component,
        lambda_id: LambdaId,
        account_id: AccountId,
        version: Version,
        limits: SandboxLimits,
        logs: LogSink,
        metrics: Metrics,
    ) -> Result<Self, RuntimeError> {
        let instance_pre = engine
            .linker()
            .instantiate_pre(component)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| {
            RuntimeError::Link(format!(
                "the component does not export wasi:http/incoming-handler@0.2.x: {e:#}"
            ))
        })?;
        let max_concurrent = usize::try_from(limits.max_concurrent).unwrap_or(usize::MAX);
        Ok(Self {
            lambda_id,
            account_id,
            version,
            version_header: http::HeaderValue::from(version.0),
            limits,
            pre,
            engine: engine.clone(),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            logs,
            metrics: metrics.for_lambda(lambda_id),
        })
    }

    /// Counts a proxied request of this lambda (and its error code, if any).
    pub fn count_request(&self, error_code: Option<u32>) {
        self.metrics.request(error_code);
    }

    /// Requests executing now.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.limits.max_concurrent)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.permits.available_permits())
    }

    /// Serves one request in a fresh instance. The response body keeps streaming from
    /// the guest after this returns; the guest's task holds the concurrency permit
    /// until it finishes.
    pub async fn invoke<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
        request_id: &str,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| InvokeError::Overloaded)?;
        let mut store = Store::new(
            self.engine.engine(),
            HostState::new(
                self.lambda_id,
                request_id,
                self.limits.memory_bytes,
                &self.logs,
            ),
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.engine.ticks_for(self.limits.timeout));
        store.epoch_deadline_trap();

        let max_body = self.limits.max_request_body;
        let request = request.map(|body| LimitedBody::boxed(body, max_body));
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;
        let (tx, rx) = oneshot::channel();
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;

        let this = self.clone();
        let deadline = self.limits.timeout;
        let head_sent = Arc::new(AtomicBool::new(false));
        let (head_sent_guest, rid) = (head_sent.clone(), request_id.to_owned());
        // The deadline covers the whole request, body included: a guest still
        // streaming (or stuck) after it is dropped, which ends the body and frees
        // its permit.
        let guest = tokio::spawn(async move {
            let result =
                tokio::time::timeout(deadline, this.run_guest(store, incoming, outparam, permit))
                    .await
                    .unwrap_or(Err(InvokeError::Timeout(deadline)));
            if let Err(e) = &result
                && head_sent_guest.load(Ordering::Acquire)
            {
                this.log_failure(&rid, "response body failed", e);
            }
            result
        });

        let outcome = match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(InvokeError::GuestError(format!("{code:?}"))),
            Ok(Err(_)) => {
                // The guest finished (or trapped) without setting a response.
                match guest.await {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => Err(InvokeError::NoResponse),
                    Err(e) => Err(InvokeError::Internal(format!("guest task: {e}"))),
                }
            }
            Err(_) => {
                // Waiting on I/O is not caught by epochs; the host timer ends it.
                // Awaiting the aborted task means its store and permit are gone before
                // the caller hears of the timeout.
                guest.abort();
                let _ = guest.await;
                Err(InvokeError::Timeout(deadline))
            }
        };
        match &outcome {
            Ok(_) => head_sent.store(true, Ordering::Release),
            // Shed load is counted in metrics; logging each refusal would flood the log.
            Err(InvokeError::Overloaded) => {}
            Err(e) => self.log_failure(request_id, "request failed", e),
        }
        outcome
    }

    /// A failed request leaves a line in the lambda's log (the caller sees the code).
    fn log_failure(&self, request_id: &str, what: &str, error: &InvokeError) {
        tracing::debug!(lambda = %self.lambda_id, %request_id, %error, "{what}");
        self.logs
            .line(self.lambda_id, &format!("[{request_id}] {what}: {error}"));
    }

    async fn run_guest(
        &self,
        mut store: Store<HostState>,
        incoming: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
        outparam: wasmtime::component::Resource<
            wasmtime_wasi_http::p2::types::HostResponseOutparam,
        >,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), InvokeError> {
        let started = Instant::now();
        let proxy = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify_trap(&e, self.limits.timeout))?;
        let instantiated = started.elapsed();
        self.metrics.observe_instantiate(instantiated);
        let result = proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, outparam)
            .await;
        self.metrics
            .observe_execute(started.elapsed().saturating_sub(instantiated));
        drop(permit);
        result.map_err(|e| classify_trap(&e, self.limits.timeout))
    }
}

fn classify_trap(error: &wasmtime::Error, timeout: Duration) -> InvokeError {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => InvokeError::Timeout(timeout),
        Some(trap) => InvokeError::Trap(trap.to_string()),
        None => InvokeError::Trap(format!("{error:#}")),
    }
}

/// A request body that fails once more than `limit` bytes have been read, so a large
/// upload is cut off while streaming instead of being buffered.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
}

impl<B> LimitedBody<B> {
    fn boxed(inner: B, limit: u64) -> http_body_util::combinators::UnsyncBoxBody<Bytes, ErrorCode>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let limited = Self {
            inner,
            remaining: limit,
        };
        limited.boxed_unsync()
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, ErrorCode>>> {
        let frame = match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame,
            std::task::Poll::Ready(Some(Err(e))) => {
                return std::task::Poll::Ready(Some(Err(ErrorCode::InternalError(Some(
                    e.to_string(),
                )))));
            }
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                return std::task::Poll::Ready(Some(Err(ErrorCode::HttpRequestBodySize(Some(
                    len,
                )))));
            }
            self.remaining -= len;
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
