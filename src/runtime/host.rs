//! Per-request store data of a WASM lambda: the WASI context (empty environment, no
//! preopened directories, sockets denied, stdout/stderr captured into the lambda's
//! logs), the wasi:http context with outbound HTTP denied, and the memory limiter.
//! Depends on `logs` and `model`.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

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
    table: ResourceTable,
    hooks: DenyOutbound,
    /// The memory limiter (the store's `limiter` callback reads it).
    pub limits: StoreLimits,
}

impl HostState {
    /// Store data for one request of `lambda`.
    pub fn new(
        lambda: LambdaId,
        request_id: &str,
        memory_limit_bytes: usize,
        logs: &LogSink,
    ) -> Self {
        let request_id: Arc<str> = Arc::from(request_id);
        let stdout = GuestLog::new(lambda, request_id.clone(), "stdout", logs.clone());
        let stderr = GuestLog::new(lambda, request_id, "stderr", logs.clone());
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_limit_bytes)
                .table_elements(MAX_TABLE_ELEMENTS)
                .trap_on_grow_failure(true)
                .build(),
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

/// Outbound HTTP is closed unless a lambda's allow-list opens it.
struct DenyOutbound;

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
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
