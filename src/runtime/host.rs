//! Per-request store data of a WASM lambda: the WASI context (empty environment, no
//! preopened directories, sockets denied, stdout/stderr captured into the lambda's
//! logs), the wasi:http context with the lambda's outbound policy, the luna imports'
//! state, and the memory and resource limits. Depends on `logs` and `model`.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::env::GuestEnv;
use super::outbound::OutboundHooks;
use crate::logs::LogSink;
use crate::model::LambdaId;

/// Elements of one table; bounds what a guest can allocate outside linear memory.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// A guest line longer than this is emitted in pieces.
const MAX_PENDING_LINE: usize = 16 * 1024;

/// Everything a request's `Store` holds.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    hooks: OutboundHooks,
    /// What every request of this lambda version shares.
    pub(super) env: Arc<GuestEnv>,
    /// The request being served.
    pub(super) request_id: Arc<str>,
    /// The memory limiter (the store's `limiter` callback reads it).
    pub limits: SandboxLimits,
}

/// A guest asked for more linear memory than its `memory_limit_mb`: the trap's cause,
/// found by type where the failure is classified.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: the lambda asked for {desired} bytes of its {limit}")]
pub struct MemoryLimitExceeded {
    /// The size the guest asked to grow to.
    pub desired: usize,
    /// The lambda's limit.
    pub limit: usize,
}

/// The sandbox's limits: wasmtime's `StoreLimits` (tables, instances, memories; every
/// refused growth traps), with a memory growth past the lambda's limit reported as
/// [`MemoryLimitExceeded`] instead of wasmtime's untyped message.
#[derive(Debug)]
pub struct SandboxLimits {
    store: StoreLimits,
    memory_limit_bytes: usize,
}

impl SandboxLimits {
    fn new(memory_limit_bytes: usize) -> Self {
        Self {
            store: StoreLimitsBuilder::new()
                .memory_size(memory_limit_bytes)
                .table_elements(MAX_TABLE_ELEMENTS)
                .trap_on_grow_failure(true)
                .build(),
            memory_limit_bytes,
        }
    }
}

impl ResourceLimiter for SandboxLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit_bytes {
            return Err(MemoryLimitExceeded {
                desired,
                limit: self.memory_limit_bytes,
            }
            .into());
        }
        self.store.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.store.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.store.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.store.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.store.instances()
    }

    fn tables(&self) -> usize {
        self.store.tables()
    }

    fn memories(&self) -> usize {
        self.store.memories()
    }
}

impl HostState {
    /// Store data for one request of the lambda described by `env`.
    pub fn new(env: &Arc<GuestEnv>, request_id: Arc<str>, memory_limit_bytes: usize) -> Self {
        let stdout = GuestLog::new(
            env.lambda_id,
            request_id.clone(),
            "stdout",
            env.logs.clone(),
        );
        let stderr = GuestLog::new(
            env.lambda_id,
            request_id.clone(),
            "stderr",
            env.logs.clone(),
        );
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut table = ResourceTable::new();
        // Streams, requests, fields, buckets...: a guest leaking handles hits this cap
        // (an error or trap for that guest) long before the host runs short of memory.
        table.set_max_capacity(env.max_resources);
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table,
            hooks: OutboundHooks::new(env.clone(), request_id.clone()),
            env: env.clone(),
            request_id,
            limits: SandboxLimits::new(memory_limit_bytes),
        }
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Guest stdout or stderr: complete lines go to the lambda's log with the request id.
#[derive(Clone)]
struct GuestLog {
    lambda: LambdaId,
    request_id: Arc<str>,
    stream: &'static str,
    sink: LogSink,
}

impl GuestLog {
    fn new(lambda: LambdaId, request_id: Arc<str>, stream: &'static str, sink: LogSink) -> Self {
        Self {
            lambda,
            request_id,
            stream,
            sink,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            log: self.clone(),
            pending: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncLineWriter(LineWriter {
            log: self.clone(),
            pending: Vec::new(),
        }))
    }
}

/// Splits written bytes into lines; the partial last line is emitted on drop.
struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.emit(&line);
        }
        if self.pending.len() > MAX_PENDING_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let log = &self.log;
        log.sink.line(
            log.lambda,
            &format!("[{}] {}: {}", log.request_id, log.stream, text),
        );
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Lines are queued without waiting; the sink drops rather than blocks.
        Ok(64 * 1024)
    }
}

struct AsyncLineWriter(LineWriter);

impl tokio::io::AsyncWrite for AsyncLineWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
