//! Lambda lifecycle orchestration, one file per role: `commands` (create, recreate,
//! update, patch, delete, validate), `queries` (reads with tenancy), `build` (the build
//! job and its typed failure), `container` (a container version's image and pods through
//! the `deploy` seams), `gc` (files nothing references), `recover` (after a restart),
//! `replicas` (what the other processes sharing the store changed, builds taken over).
//! Depends on `builder`, `runtime`, `store`, `secrets`, `logs`, `metrics`, `config`,
//! `model`; the container backends implement its `deploy` traits from above.

mod build;
mod commands;
mod container;
mod deploy;
mod gc;
mod queries;
mod recover;
mod replicas;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};

use crate::builder;
use crate::builder::archive::ArchiveReport;
use crate::config::Config;
use crate::logs::LogSink;
use crate::metrics::Metrics;
use crate::model::{
    AccountId, Credentials, DeployParameters, ImageStatus, LambdaId, Parameters, Version,
};
use crate::runtime::{Component, LoadedLambda, PodSet, Registry, WasmEngine};
use crate::secrets::{Sealer, SecretsError};
use crate::store::{
    ArchiveStore, Coordination, KvStore, LambdaLock, LambdaRecord, LambdaStore, ListQuery,
    StoreError,
};

pub use build::BuildFailure;
pub use deploy::{BuiltImage, DeployError, Deployer, ImageBuilder, PodRequest, PodState, Progress};

/// A lifecycle operation failed; `edge::error` maps each to a LUNA code.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No such lambda (or it belongs to another account).
    #[error("Lambda with id '{0}' not found")]
    NotFound(LambdaId),
    /// The account already has a lambda with this name.
    #[error("Lambda with name '{0}' already exists")]
    NameTaken(String),
    /// The upload breaks the rules; every problem is listed.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A container archive and no container backend.
    #[error("{}", builder::NO_CONTAINER_BACKEND)]
    NoContainerBackend,
    /// A build of the lambda is still running.
    #[error("Lambda '{0}' is being built; wait until its image status is completed or error")]
    BuildInProgress(LambdaId),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Credential encryption failure.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A container backend call failed.
    #[error(transparent)]
    Deploy(DeployError),
    /// The caller already runs its most validations at once
    /// (`builds.max_validates_per_account`).
    #[error("{} already runs {limit} validation(s), the most one caller may run at once; retry when one has answered", .account.map_or_else(|| "a caller without an account".to_owned(), |a| format!("account {a}")))]
    ValidatesBusy {
        /// The caller's account (none: the callers naming no account, together).
        account: Option<AccountId>,
        /// `builds.max_validates_per_account`.
        limit: usize,
    },
    /// A background task failed.
    #[error("internal task failure: {0}")]
    Task(String),
}

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// A create or recreate request, parsed at the edge.
#[derive(Debug)]
pub struct Upload {
    /// The zip.
    pub archive: bytes::Bytes,
    /// Credentials (required).
    pub credentials: Credentials,
    /// Parameters.
    pub parameters: Parameters,
    /// Deploy parameters.
    pub deploy_parameters: DeployParameters,
}

/// A list request, already validated.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Which lambdas.
    pub query: ListQuery,
    /// 1-based page.
    pub page: usize,
    /// Page size.
    pub page_size: usize,
}

/// The image status and logs of a lambda's build job.
#[derive(Debug)]
pub struct ImageView {
    /// Status (`not_found` after the retention).
    pub status: ImageStatus,
    /// Build log lines.
    pub logs: Vec<String>,
}

/// The container backends: where images are built and where pods run.
#[derive(Debug, Clone)]
pub struct ContainerBackends {
    /// Builds and pushes images.
    pub images: Arc<dyn ImageBuilder>,
    /// Runs pods.
    pub deployer: Arc<dyn Deployer>,
}

/// Everything the lifecycle works with, built by `Server::start` (or a test).
#[derive(Debug)]
pub struct Parts {
    /// The configuration.
    pub config: Arc<Config>,
    /// Lambda, build and log records.
    pub store: Arc<dyn LambdaStore>,
    /// The guests' key-value data.
    pub kv: Arc<dyn KvStore>,
    /// Uploaded archives by digest.
    pub archives: Arc<dyn ArchiveStore>,
    /// How the processes sharing the store coordinate.
    pub coordination: Arc<dyn Coordination>,
    /// Credential encryption.
    pub sealer: Sealer,
    /// The WASM compiler and artifact cache.
    pub engine: Arc<WasmEngine>,
    /// What serves, shared with the proxy.
    pub registry: Arc<Registry>,
    /// `None`: WASM lambdas only.
    pub containers: Option<ContainerBackends>,
    /// The lambda log writer.
    pub logs: LogSink,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

/// Owns every lambda's lifecycle.
#[derive(Debug)]
pub struct Lifecycle {
    config: Arc<Config>,
    store: Arc<dyn LambdaStore>,
    kv: Arc<dyn KvStore>,
    archives: Arc<dyn ArchiveStore>,
    coordination: Arc<dyn Coordination>,
    sealer: Sealer,
    engine: Arc<WasmEngine>,
    registry: Arc<Registry>,
    containers: Option<ContainerBackends>,
    logs: LogSink,
    metrics: Metrics,
    build_slots: Arc<Semaphore>,
    /// Uploads' archive checks running at once (`limits.max_concurrent_checks`).
    check_slots: Semaphore,
    /// Validations running now, per calling account.
    validates: Arc<std::sync::Mutex<HashMap<Option<AccountId>, usize>>>,
    locks: DashMap<LambdaId, Arc<Mutex<()>>>,
    /// Uploads hold it shared from storing an archive until a record references it;
    /// garbage collection holds it exclusively.
    gc_lock: tokio::sync::RwLock<()>,
    /// Compiled components by wasm digest: lambdas shipping the same component share
    /// its code in memory.
    components: DashMap<String, Component>,
    jobs: DashMap<LambdaId, tokio::task::AbortHandle>,
    /// Accepted uploads waiting for their build jobs, and their size in total.
    staged: DashMap<LambdaId, Staged>,
    staged_bytes: AtomicUsize,
}

/// An accepted upload kept in memory for its build job, with what its check found: the
/// job then neither reads the archive back nor unzips and checks it again. A restart
/// loses it (the job that died with the process ends `error`).
#[derive(Debug)]
struct Staged {
    version: Version,
    archive: bytes::Bytes,
    report: ArchiveReport,
}

impl Staged {
    /// What it holds in memory.
    fn size(&self) -> usize {
        self.archive.len() + self.report.wasm.as_ref().map_or(0, Vec::len)
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

impl Lifecycle {
    /// Wires the lifecycle.
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            config,
            store,
            kv,
            archives,
            coordination,
            sealer,
            engine,
            registry,
            containers,
            logs,
            metrics,
        } = parts;
        Arc::new(Self {
            build_slots: Arc::new(Semaphore::new(config.builds.max_concurrent)),
            check_slots: Semaphore::new(config.limits.concurrent_checks()),
            validates: Arc::default(),
            config,
            store,
            kv,
            archives,
            coordination,
            sealer,
            engine,
            registry,
            containers,
            logs,
            metrics,
            locks: DashMap::new(),
            gc_lock: tokio::sync::RwLock::new(()),
            components: DashMap::new(),
            jobs: DashMap::new(),
            staged: DashMap::new(),
            staged_bytes: AtomicUsize::new(0),
        })
    }

    /// The store (health checks, direct reads).
    pub fn store(&self) -> &dyn LambdaStore {
        self.store.as_ref()
    }

    /// The lambda log sink (metrics).
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// The engine (metrics).
    pub fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    fn lock(&self, id: LambdaId) -> Arc<Mutex<()>> {
        self.locks.entry(id).or_default().clone()
    }

    /// The lambda's lock in this process and then across the processes sharing the
    /// store.
    async fn lock_everywhere(&self, id: LambdaId) -> Result<Locked> {
        let here = self.lock(id).lock_owned().await;
        let everywhere = self.coordination.lock_lambda(id).await?;
        Ok(Locked {
            _here: here,
            _everywhere: everywhere,
        })
    }

    /// The lambda under its lock, if `account` (when given) owns it: the opening of every
    /// command that changes a lambda. The record is read again once the lock is held,
    /// and an unknown id leaves no lock entry behind.
    async fn locked(
        &self,
        id: LambdaId,
        account: Option<AccountId>,
    ) -> Result<(Locked, LambdaRecord)> {
        self.owned(id, account).await?;
        let guard = self.lock_everywhere(id).await?;
        let record = self.owned(id, account).await?;
        Ok((guard, record))
    }
}

/// A lambda's lock, held in this process and across the processes sharing the store.
struct Locked {
    _here: OwnedMutexGuard<()>,
    _everywhere: LambdaLock,
}

/// What a finished build serves.
#[derive(Debug)]
enum Served {
    /// A WASM version, in-process.
    Wasm(Arc<LoadedLambda>),
    /// A container version's ready pods.
    Pods(Arc<PodSet>),
}

fn stamp(line: &str) -> String {
    format!(
        "{} {line}",
        now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}
