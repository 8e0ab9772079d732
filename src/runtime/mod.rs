//! Executing lambdas: in-process (the wasmtime engine, per-version loaded lambdas, the
//! host side of the `wit/` worlds) or in pods (forwarding to a container lambda's
//! containers), and the registry the proxy reads (lambda id → current version, swapped
//! atomically). Depends on `config`, `model`, `logs`, `metrics`, `store` (key-value data).

pub mod compile_worker;
mod engine;
mod env;
mod guest;
mod host;
mod outbound;
mod pods;
mod policy;
mod wasm;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

pub use engine::{Compiled, Prelinked, WasmEngine, run_compile_worker};
pub use env::GuestEnv;
pub use guest::flatten_config;
pub use pods::{Pod, PodBody, PodClient, PodError, PodResponseBody, PodSet};
pub use policy::{OutboundLimits, OutboundPolicy};
pub use wasm::{EXECUTE_PATH, LoadedLambda, SPLIT_PATH, SandboxLimits, export_problems};
pub use wasmtime::component::Component;

use crate::model::{LambdaId, Version};

/// Setting up or loading into the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be built.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The component does not compile.
    #[error("{0}")]
    Compile(String),
    /// The compile in its worker process hit a limit or the worker failed.
    #[error(transparent)]
    CompileWorker(#[from] compile_worker::WorkerError),
    /// The component cannot be linked against the host.
    #[error("{0}")]
    Link(String),
}

/// One request to a WASM lambda failed; `proxy::rescue` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// Every concurrency permit of the lambda is taken.
    #[error("the lambda is handling its maximum number of concurrent requests")]
    Overloaded,
    /// The memory the running instances may reserve is taken
    /// (`engine.max_instance_memory_mb`).
    #[error("the memory for running instances is fully reserved")]
    MemoryFull,
    /// Every permit of the lambda's account is taken (`sandbox.max_concurrent_per_account`).
    #[error("the lambda's account is running its maximum number of concurrent requests")]
    AccountOverloaded,
    /// Every instance slot of the engine's pool is in use (`engine.pool_instances`).
    #[error("every instance slot of the service is in use")]
    PoolExhausted,
    /// The guest ran past its deadline.
    #[error("the lambda did not answer within {0:?}")]
    Timeout(Duration),
    /// The guest grew its memory past its `memory_limit_mb`.
    #[error("the lambda exceeded its memory limit: {0}")]
    MemoryLimit(String),
    /// The guest trapped.
    #[error("the lambda trapped: {0}")]
    Trap(String),
    /// The guest returned without setting a response.
    #[error("the lambda returned no response")]
    NoResponse,
    /// The guest answered with a wasi:http error code instead of a response.
    #[error("the lambda answered with error {0}")]
    GuestError(String),
    /// The guest's response declared or streamed more than the limit.
    #[error("the lambda's response exceeds max_response_body_bytes ({0} bytes)")]
    ResponseTooLarge(u64),
    /// The request body streamed past the limit (tasks lambdas read it whole).
    #[error("the request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// A tasks lambda was called on something other than `POST /split` or `POST /execute`.
    #[error("tasks lambdas serve POST /split and POST /execute, not {method} {path}")]
    TaskRoute {
        /// The method called.
        method: String,
        /// The path called.
        path: String,
    },
    /// The body of a task call is not a JSON document.
    #[error("the task content is not a JSON document")]
    TaskInput,
    /// The tasks guest returned an error (its own message) or a malformed result.
    #[error("the task failed: {0}")]
    TaskFailed(String),
    /// Host-side failure.
    #[error("internal runtime failure: {0}")]
    Internal(String),
}

/// The lambdas currently served, in-process or by pods. Readers clone an `Arc` and never
/// block writers; replacing an entry is the atomic version swap.
#[derive(Debug, Default)]
pub struct Registry {
    loaded: DashMap<LambdaId, Arc<LoadedLambda>>,
    pods: DashMap<LambdaId, Arc<PodSet>>,
}

impl Registry {
    /// The version serving `id`.
    pub fn get(&self, id: LambdaId) -> Option<Arc<LoadedLambda>> {
        self.loaded.get(&id).map(|e| e.value().clone())
    }

    /// Serves `lambda` from now on; requests already running finish on the old version.
    pub fn swap_in(&self, lambda: Arc<LoadedLambda>) {
        let id = lambda.lambda_id;
        self.loaded.insert(id, lambda);
        // A recreate may have turned a container lambda into a WASM one.
        self.pods.remove(&id);
    }

    /// Stops serving `id` at once (in-process or by pods).
    pub fn remove(&self, id: LambdaId) {
        self.loaded.remove(&id);
        self.pods.remove(&id);
    }

    /// The pods serving container lambda `id`.
    pub fn pods(&self, id: LambdaId) -> Option<Arc<PodSet>> {
        self.pods.get(&id).map(|e| e.value().clone())
    }

    /// Routes `id` to these pods from now on; requests already sent finish where they are.
    pub fn swap_in_pods(&self, pods: Arc<PodSet>) {
        let id = pods.lambda_id;
        self.pods.insert(id, pods);
        self.loaded.remove(&id);
    }

    /// The version serving `id` here (in-process or by pods).
    pub fn serving_version(&self, id: LambdaId) -> Option<Version> {
        self.loaded
            .get(&id)
            .map(|e| e.value().version)
            .or_else(|| self.pods.get(&id).map(|e| e.value().version))
    }

    /// Every lambda served here, with its version.
    pub fn served(&self) -> Vec<(LambdaId, Version)> {
        let loaded = self.loaded.iter().map(|e| (*e.key(), e.value().version));
        let pods = self.pods.iter().map(|e| (*e.key(), e.value().version));
        loaded.chain(pods).collect()
    }

    /// Number of WASM lambdas loaded.
    pub fn len(&self) -> usize {
        self.loaded.len()
    }

    /// Whether nothing is loaded.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }

    /// (lambda, in-flight requests, concurrency limit) of every loaded lambda.
    pub fn occupancy(&self) -> Vec<(LambdaId, usize, u32)> {
        self.loaded
            .iter()
            .map(|e| {
                (
                    *e.key(),
                    e.value().in_flight(),
                    e.value().limits.max_concurrent,
                )
            })
            .collect()
    }
}

/// Interfaces the host links for guests (WASI 0.2.x); used to name each import a
/// component needs that the host cannot satisfy.
pub const PROVIDED_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
];

/// The luna imports of `wit/`, at the exact versions the host links (drafts match only
/// themselves).
pub const LUNA_IMPORTS: &[&str] = &[
    "wasi:config/store@0.2.0-rc.1",
    "wasi:keyvalue/store@0.2.0-draft",
    "wasi:keyvalue/atomics@0.2.0-draft",
    "wasi:keyvalue/batch@0.2.0-draft",
    "wasi:logging/logging@0.1.0-draft",
];

/// The luna context interface (any `0.1.x`).
const CONTEXT_INTERFACE: &str = "luna:lambda/context";

/// The export every HTTP lambda must have.
pub const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler";

/// Splits `ns:pkg/iface@1.2.3` into (`ns:pkg/iface`, `1.2.3`).
pub fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((base, version)) => (base, Some(version)),
        None => (name, None),
    }
}

/// Whether the host provides the import `name` (WASI interfaces at 0.2.x and the luna
/// imports).
pub fn import_provided(name: &str) -> bool {
    let (base, version) = split_version(name);
    (PROVIDED_INTERFACES.contains(&base) && version.is_some_and(|v| v.starts_with("0.2.")))
        || LUNA_IMPORTS.contains(&name)
        || (base == CONTEXT_INTERFACE && version.is_some_and(|v| v.starts_with("0.1.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_names() {
        assert!(import_provided("wasi:http/types@0.2.0"));
        assert!(import_provided("wasi:cli/environment@0.2.6"));
        assert!(!import_provided("wasi:http/types@0.3.0"));
        assert!(import_provided("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!import_provided("wasi:keyvalue/store@0.2.0-draft2"));
        assert!(import_provided("luna:lambda/context@0.1.0"));
        assert!(!import_provided("luna:lambda/context@0.2.0"));
        assert!(!import_provided("wasi:http/types"));
        assert_eq!(split_version("a:b/c@1"), ("a:b/c", Some("1")));
    }
}
