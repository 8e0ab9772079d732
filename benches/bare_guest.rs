//! The in-process runtime with nothing in front, for the benchmark suite's "bare guest"
//! row: one component loaded exactly as the service loads it (same engine settings, pool,
//! host, limits), served by a plain hyper HTTP/1 server without the management stack
//! (no request id parsing, tenancy, routing, metrics or spans).
//!
//!     bare_guest COMPONENT.wasm      # prints "listening on http://127.0.0.1:PORT"

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use luna_lambda::config::Config;
use luna_lambda::logs::LogSink;
use luna_lambda::metrics::Metrics;
use luna_lambda::model::{AccountId, LambdaId, LambdaType, Version};
use luna_lambda::runtime::{
    GuestEnv, LoadedLambda, OutboundLimits, OutboundPolicy, SandboxLimits, WasmEngine,
};
use luna_lambda::store::{KvQuotas, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wasm_path = std::env::args()
        .nth(1)
        .context("usage: bare_guest COMPONENT.wasm")?;
    let wasm = std::fs::read(&wasm_path).with_context(|| format!("reading {wasm_path}"))?;
    let config = Config::default();
    let data = tempfile::tempdir()?;
    let engine = WasmEngine::new(&config, &data.path().join("artifacts"))?;
    let compiled = engine.compile(&wasm)?;
    let store = Arc::new(Store::open(&data.path().join("store"))?);
    let logs = LogSink::start(store.clone(), 1000, 4096)?;
    let lambda_id = LambdaId::generate();
    let sandbox = &config.sandbox;
    let env = GuestEnv {
        lambda_id,
        account_id: AccountId::generate(),
        version: Version::FIRST,
        lambda_type: LambdaType::Standalone,
        config: Vec::new(),
        kv: store,
        kv_quotas: KvQuotas {
            max_keys: config.keyvalue.max_keys,
            max_key_bytes: config.keyvalue.max_key_bytes,
            max_value_bytes: config.keyvalue.max_value_bytes,
            max_total_bytes: config.keyvalue.max_total_bytes,
        },
        outbound: OutboundPolicy::new(&[], OutboundLimits::from(sandbox)),
        max_resources: sandbox.max_resources,
        logs,
        metrics: Metrics::new()
            .map_err(anyhow::Error::msg)?
            .for_lambda(lambda_id),
    };
    let limits = SandboxLimits {
        memory_bytes: usize::try_from(u64::from(sandbox.memory_limit_mb) * 1024 * 1024)?,
        timeout: Duration::from_millis(sandbox.request_timeout_ms),
        max_concurrent: sandbox.max_concurrent_requests,
        max_request_body: config.limits.max_proxy_body_bytes,
        max_response_body: sandbox.max_response_body_bytes,
    };
    let lambda = Arc::new(LoadedLambda::load(
        &engine,
        &compiled.component,
        env,
        limits,
    )?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let lambda = lambda.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let lambda = lambda.clone();
                async move {
                    match lambda.invoke(request, "bench").await {
                        Ok(response) => Ok(response.map(|body| {
                            body.map_err(|code| std::io::Error::other(format!("{code:?}")))
                                .boxed_unsync()
                        })),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
