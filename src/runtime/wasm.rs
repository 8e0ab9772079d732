//! One loaded WASM lambda version (an HTTP `ProxyPre` or a tasks `InstancePre`, its
//! limits, concurrency permits and guest environment) and the per-request path: a fresh
//! `Store` and instance from the pool, the request streamed in, the response streamed
//! out (capped), deadlines enforced by epochs and a host timer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::Store;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::engine::{Prelinked, WasmEngine};
use super::env::GuestEnv;
use super::host::HostState;
use super::{InvokeError, RuntimeError};
use crate::model::{AccountId, LambdaId, LambdaType, Version};

/// Export of a tasks lambda that splits a task.
pub const SPLIT_EXPORT: &str = "split-content";
/// Export of a tasks lambda that executes a subtask.
pub const EXECUTE_EXPORT: &str = "execute-subtask";
/// Proxy path of `split-content`.
pub const SPLIT_PATH: &str = "/split";
/// Proxy path of `execute-subtask`.
pub const EXECUTE_PATH: &str = "/execute";

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
    /// Largest response body a guest may stream.
    pub max_response_body: u64,
}

/// How requests reach the guest.
enum Entry {
    /// `wasi:http/incoming-handler` (handler world).
    Http(ProxyPre<HostState>),
    /// `split-content` / `execute-subtask` (tasks world).
    Tasks {
        pre: InstancePre<HostState>,
        split: ComponentExportIndex,
        execute: ComponentExportIndex,
    },
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
    entry: Entry,
    engine: Arc<WasmEngine>,
    permits: Arc<Semaphore>,
    /// The account's share, held beside the lambda's own permit.
    account_permits: Arc<Semaphore>,
    /// The service's memory for running instances, of which a request reserves its
    /// `memory_limit_mb`.
    instance_memory: Arc<Semaphore>,
    env: Arc<GuestEnv>,
}

/// What a running request holds: a permit of its lambda, one of its account and its
/// memory reservation.
pub(crate) struct Admission {
    _lambda: OwnedSemaphorePermit,
    _account: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
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
    /// Links a compiled component for the world of `env.lambda_type`; fails naming what
    /// the host cannot satisfy.
    pub fn load(
        engine: &Arc<WasmEngine>,
        component: &Component,
        env: GuestEnv,
        limits: SandboxLimits,
    ) -> Result<Self, RuntimeError> {
        let prelinked = engine.prelink(component)?;
        Self::from_prelinked(engine, component, prelinked, env, limits)
    }

    /// A version of an already linked component (`WasmEngine::prelink`, as the build's
    /// component check does it): no second link.
    pub fn from_prelinked(
        engine: &Arc<WasmEngine>,
        component: &Component,
        instance_pre: Prelinked,
        env: GuestEnv,
        limits: SandboxLimits,
    ) -> Result<Self, RuntimeError> {
        let entry = if env.lambda_type == LambdaType::Tasks {
            let export = |name: &str| {
                component.get_export_index(None, name).ok_or_else(|| {
                    RuntimeError::Link(format!("the component does not export '{name}'"))
                })
            };
            Entry::Tasks {
                split: export(SPLIT_EXPORT)?,
                execute: export(EXECUTE_EXPORT)?,
                pre: instance_pre,
            }
        } else {
            Entry::Http(ProxyPre::new(instance_pre).map_err(|e| {
                RuntimeError::Link(format!(
                    "the component does not export wasi:http/incoming-handler@0.2.x: {e:#}"
                ))
            })?)
        };
        let max_concurrent = usize::try_from(limits.max_concurrent).unwrap_or(usize::MAX);
        Ok(Self {
            lambda_id: env.lambda_id,
            account_id: env.account_id,
            version: env.version,
            version_header: http::HeaderValue::from(env.version.0),
            limits,
            entry,
            engine: engine.clone(),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            account_permits: engine.account_share(env.account_id),
            instance_memory: engine.instance_memory(),
            env: Arc::new(env),
        })
    }

    /// Counts a proxied request of this lambda (and its error code, if any).
    pub fn count_request(&self, error_code: Option<u32>) {
        self.env.metrics.request(error_code);
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
        let lambda = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| InvokeError::Overloaded)?;
        let account = self
            .account_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| InvokeError::AccountOverloaded)?;
        let mib = self.limits.memory_bytes.div_ceil(1024 * 1024);
        let memory = self
            .instance_memory
            .clone()
            .try_acquire_many_owned(u32::try_from(mib).unwrap_or(u32::MAX))
            .map_err(|_| InvokeError::MemoryFull)?;
        let permit = Admission {
            _lambda: lambda,
            _account: account,
            _memory: memory,
        };
        let outcome = match &self.entry {
            Entry::Http(pre) => self.invoke_http(pre, request, request_id, permit).await,
            Entry::Tasks {
                pre,
                split,
                execute,
            } => {
                let exports = TaskExports { split, execute };
                self.invoke_task(pre, exports, request, request_id, permit)
                    .await
            }
        };
        match &outcome {
            // Shed load is counted in metrics; logging each refusal would flood the log.
            Ok(_)
            | Err(
                InvokeError::Overloaded | InvokeError::AccountOverloaded | InvokeError::MemoryFull,
            ) => {}
            Err(e) => self.log_failure(request_id, "request failed", e),
        }
        outcome
    }

    /// A store for one request, with its limits and deadline armed.
    fn new_store(&self, request_id: Arc<str>) -> Store<HostState> {
        let mut store = Store::new(
            self.engine.engine(),
            HostState::new(&self.env, request_id, self.limits.memory_bytes),
        );
        store.limiter(|state| &mut state.limits);
        // Checked at every epoch tick: a guest computing without calling the host gives
        // its worker thread back each tick (so other requests and the API keep running
        // however many guests spin), and traps once its deadline has passed.
        let mut remaining = self.engine.ticks_for(self.limits.timeout);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            remaining = remaining.saturating_sub(1);
            if remaining == 0 {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }

    async fn invoke_http<B>(
        self: &Arc<Self>,
        pre: &ProxyPre<HostState>,
        request: http::Request<B>,
        request_id: &str,
        permit: Admission,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        // One shared copy of the id serves the store, the guest task and the body.
        let request_id: Arc<str> = Arc::from(request_id);
        let mut store = self.new_store(request_id.clone());
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
        let pre = pre.clone();
        let deadline = self.limits.timeout;
        let head_sent = Arc::new(AtomicBool::new(false));
        let (head_sent_guest, rid) = (head_sent.clone(), request_id.clone());
        // The body wrapper learns from this whether the guest finished cleanly: a body
        // the guest abandoned (trap, deadline) must end in an error, not look complete.
        let (finished_tx, finished_rx) = oneshot::channel::<bool>();
        // The deadline covers the whole request, body included: a guest still
        // streaming (or stuck) after it is dropped, which ends the body and frees
        // its permit.
        let guest = tokio::spawn(async move {
            let result = tokio::time::timeout(
                deadline,
                this.run_guest(&pre, store, incoming, outparam, permit),
            )
            .await
            .unwrap_or(Err(InvokeError::Timeout(deadline)));
            if let Err(e) = &result
                && head_sent_guest.load(Ordering::Acquire)
            {
                this.log_failure(&rid, "response body failed", e);
            }
            let _ = finished_tx.send(result.is_ok());
            result
        });

        // Whoever drops this first ends the guest: the caller leaving before the head
        // (this future is dropped), or before the body's end (the body is dropped).
        let caller = CallerWaits(Some(guest.abort_handle()));
        let outcome = match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(response))) => self.cap_response(response, request_id, finished_rx, caller),
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
        if outcome.is_ok() {
            head_sent.store(true, Ordering::Release);
        }
        outcome
    }

    /// Refuses a response declaring more than the limit and cuts off one streaming past it.
    fn cap_response(
        &self,
        response: http::Response<HyperOutgoingBody>,
        request_id: Arc<str>,
        guest_finished: oneshot::Receiver<bool>,
        caller: CallerWaits,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError> {
        let limit = self.limits.max_response_body;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(InvokeError::ResponseTooLarge(limit));
        }
        Ok(response.map(|body| {
            CappedResponse {
                inner: body,
                remaining: limit,
                limit,
                guest_finished: Some(guest_finished),
                report_to: Some((self.env.clone(), request_id)),
                caller,
            }
            .boxed_unsync()
        }))
    }

    /// Serves `POST /split` and `POST /execute` of a tasks lambda: the JSON body is the
    /// content handed to the export, its result the JSON answer.
    async fn invoke_task<B>(
        &self,
        pre: &InstancePre<HostState>,
        exports: TaskExports<'_>,
        request: http::Request<B>,
        request_id: &str,
        permit: Admission,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let path = request.uri().path();
        let split = match path {
            SPLIT_PATH => true,
            EXECUTE_PATH => false,
            _ => {
                return Err(InvokeError::TaskRoute {
                    method: request.method().to_string(),
                    path: path.to_owned(),
                });
            }
        };
        if request.method() != http::Method::POST {
            return Err(InvokeError::TaskRoute {
                method: request.method().to_string(),
                path: path.to_owned(),
            });
        }
        let deadline = self.limits.timeout;
        let max_body = self.limits.max_request_body;
        let run = async {
            let body = LimitedBody::boxed(request.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| match e {
                    ErrorCode::HttpRequestBodySize(_) => InvokeError::BodyTooLarge(max_body),
                    other => InvokeError::Internal(format!("reading the request body: {other:?}")),
                })?
                .to_bytes();
            let content = std::str::from_utf8(&body)
                .ok()
                .filter(|text| serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok())
                .ok_or(InvokeError::TaskInput)?;
            let mut store = self.new_store(Arc::from(request_id));
            let started = Instant::now();
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| classify_trap(&e, deadline))?;
            let instantiated = started.elapsed();
            self.env.metrics.observe_instantiate(instantiated);
            let answer = if split {
                let subtasks: Vec<String> =
                    call_task(&mut store, &instance, exports.split, content, deadline).await?;
                subtasks_json(&subtasks)?
            } else {
                let answer: String =
                    call_task(&mut store, &instance, exports.execute, content, deadline).await?;
                if serde_json::from_str::<serde::de::IgnoredAny>(&answer).is_err() {
                    return Err(InvokeError::TaskFailed(format!(
                        "{EXECUTE_EXPORT} returned a result that is not JSON"
                    )));
                }
                answer
            };
            self.env
                .metrics
                .observe_execute(started.elapsed().saturating_sub(instantiated));
            if answer.len() as u64 > self.limits.max_response_body {
                return Err(InvokeError::ResponseTooLarge(self.limits.max_response_body));
            }
            Ok(answer)
        };
        let answer = tokio::time::timeout(deadline, run)
            .await
            .unwrap_or(Err(InvokeError::Timeout(deadline)))?;
        drop(permit);
        let body = http_body_util::Full::new(Bytes::from(answer))
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| InvokeError::Internal(e.to_string()))
    }

    /// A failed request leaves a line in the lambda's log (the caller sees the code).
    fn log_failure(&self, request_id: &str, what: &str, error: &InvokeError) {
        tracing::debug!(lambda = %self.lambda_id, %request_id, %error, "{what}");
        self.env.log(request_id, &format!("{what}: {error}"));
    }

    async fn run_guest(
        &self,
        pre: &ProxyPre<HostState>,
        mut store: Store<HostState>,
        incoming: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
        outparam: wasmtime::component::Resource<
            wasmtime_wasi_http::p2::types::HostResponseOutparam,
        >,
        permit: Admission,
    ) -> Result<(), InvokeError> {
        let started = Instant::now();
        let proxy = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify_trap(&e, self.limits.timeout))?;
        let instantiated = started.elapsed();
        self.env.metrics.observe_instantiate(instantiated);
        let result = proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, outparam)
            .await;
        self.env
            .metrics
            .observe_execute(started.elapsed().saturating_sub(instantiated));
        drop(permit);
        result.map_err(|e| classify_trap(&e, self.limits.timeout))
    }
}

/// The export indices of a tasks lambda.
#[derive(Clone, Copy)]
struct TaskExports<'a> {
    split: &'a ComponentExportIndex,
    execute: &'a ComponentExportIndex,
}

/// Calls a tasks export `func(content: string) -> result<R, string>`; the guest's error
/// becomes `TaskFailed`.
async fn call_task<R>(
    store: &mut Store<HostState>,
    instance: &wasmtime::component::Instance,
    export: &ComponentExportIndex,
    content: &str,
    deadline: Duration,
) -> Result<R, InvokeError>
where
    (Result<R, String>,):
        wasmtime::component::ComponentNamedList + wasmtime::component::Lift + Send + Sync + 'static,
{
    let func = instance
        .get_typed_func::<(&str,), (Result<R, String>,)>(&mut *store, export)
        .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;
    let (result,) = func
        .call_async(&mut *store, (content,))
        .await
        .map_err(|e| classify_trap(&e, deadline))?;
    result.map_err(InvokeError::TaskFailed)
}

/// `split-content`'s subtasks as one JSON array; each must itself be JSON.
fn subtasks_json(subtasks: &[String]) -> Result<String, InvokeError> {
    let mut out = String::from("[");
    for (i, subtask) in subtasks.iter().enumerate() {
        if serde_json::from_str::<serde::de::IgnoredAny>(subtask).is_err() {
            return Err(InvokeError::TaskFailed(format!(
                "{SPLIT_EXPORT} returned subtask {i}, which is not JSON"
            )));
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(subtask);
    }
    out.push(']');
    Ok(out)
}

/// Checks that a component has the exports the world of `lambda_type` needs, with the
/// right types; returns one problem per missing or mistyped export.
pub fn export_problems(
    engine: &wasmtime::Engine,
    component: &Component,
    lambda_type: LambdaType,
) -> Vec<String> {
    let ty = component.component_type();
    if lambda_type != LambdaType::Tasks {
        let exports_handler = ty.exports(engine).any(|(name, item)| {
            let (base, version) = super::split_version(name);
            base == super::HTTP_HANDLER_EXPORT
                && version.is_some_and(|v| v.starts_with("0.2."))
                && matches!(item.ty, ComponentItem::ComponentInstance(_))
        });
        return if exports_handler {
            Vec::new()
        } else {
            vec![format!(
                "lambda.wasm does not export '{}@0.2.x': a {} lambda must target the luna:lambda/handler (or wasi:http/proxy) world",
                super::HTTP_HANDLER_EXPORT,
                lambda_type.as_str()
            )]
        };
    }
    let is_string = |t: &Type| matches!(t, Type::String);
    let split_ok = |t: &Type| matches!(t, Type::List(l) if is_string(&l.ty()));
    let mut problems = Vec::new();
    for (name, ok_type, signature) in [
        (
            SPLIT_EXPORT,
            &split_ok as &dyn Fn(&Type) -> bool,
            "func(content: string) -> result<list<string>, string>",
        ),
        (
            EXECUTE_EXPORT,
            &is_string as &dyn Fn(&Type) -> bool,
            "func(content: string) -> result<string, string>",
        ),
    ] {
        let found = ty.exports(engine).find(|(n, _)| *n == name);
        let well_typed = match found.as_ref().map(|(_, item)| &item.ty) {
            Some(ComponentItem::ComponentFunc(f)) => {
                let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
                let results: Vec<Type> = f.results().collect();
                params.len() == 1
                    && is_string(&params[0])
                    && results.len() == 1
                    && matches!(&results[0], Type::Result(r)
                        if r.ok().is_some_and(|t| ok_type(&t))
                            && r.err().is_some_and(|t| is_string(&t)))
            }
            _ => false,
        };
        if found.is_none() {
            problems.push(format!(
                "lambda.wasm does not export '{name}': a tasks lambda must target the luna:lambda/tasks world"
            ));
        } else if !well_typed {
            problems.push(format!(
                "lambda.wasm exports '{name}' with the wrong type: expected {signature}"
            ));
        }
    }
    problems
}

fn classify_trap(error: &wasmtime::Error, timeout: Duration) -> InvokeError {
    // Every pool slot is in use: a capacity limit of the service, not a guest failure.
    if error
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
    {
        return InvokeError::PoolExhausted;
    }
    if let Some(exceeded) = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<super::host::MemoryLimitExceeded>())
    {
        return InvokeError::MemoryLimit(exceeded.to_string());
    }
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

/// A guest's response body that fails once it streams more than the limit, so an
/// endless body is cut off instead of being sent forever, and that ends in an error
/// when the guest did not finish cleanly.
struct CappedResponse {
    inner: HyperOutgoingBody,
    remaining: u64,
    limit: u64,
    guest_finished: Option<oneshot::Receiver<bool>>,
    /// Where to log the cut-off (taken on first use).
    report_to: Option<(Arc<GuestEnv>, Arc<str>)>,
    /// Ends the guest if the body is dropped before its end (the caller left).
    caller: CallerWaits,
}

/// A guest's task while its caller still waits for it: dropped, it aborts the task,
/// so a guest whose caller has gone stops at its next epoch tick instead of running
/// (and holding its permits and pool slot) to the deadline.
struct CallerWaits(Option<tokio::task::AbortHandle>);

impl CallerWaits {
    /// The response is complete: the guest may finish by itself.
    fn release(&mut self) {
        self.0 = None;
    }
}

impl Drop for CallerWaits {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl http_body::Body for CappedResponse {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = &polled
            && let Some(finished) = self.guest_finished.as_mut()
        {
            let clean = match std::pin::Pin::new(finished).poll(cx) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                std::task::Poll::Ready(outcome) => outcome.unwrap_or(false),
            };
            self.guest_finished = None;
            self.caller.release();
            if !clean {
                return std::task::Poll::Ready(Some(Err(
                    wasmtime_wasi_http::Error::InternalError(Some(
                        "the lambda failed before finishing its response body".to_owned(),
                    )),
                )));
            }
        }
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            if len > self.remaining {
                if let Some((env, request_id)) = self.report_to.take() {
                    let error = InvokeError::ResponseTooLarge(self.limit);
                    env.log(&request_id, &format!("response body failed: {error}"));
                }
                return std::task::Poll::Ready(Some(Err(
                    wasmtime_wasi_http::Error::HttpResponseBodySize(Some(self.limit)),
                )));
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
