//! Lambda lifecycle orchestration: create / recreate / update / patch / delete, the
//! background build job (pending → in_progress → completed | error), the atomic
//! version swap, and recovery after a restart; `container` holds the container
//! lambdas' half (image build, pods). Depends on `builder`, `runtime`, `docker`,
//! `store`, `secrets`, `logs`, `metrics`, `config`, `model`.

mod container;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::Component;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::{Mutex, Semaphore};

use crate::builder::{self, ArchiveStore, BuildError, UploadCheck};
use crate::config::Config;
use crate::docker::DockerEngine;
use crate::k8s::KubeBackend;
use crate::logs::LogSink;
use crate::metrics::Metrics;
use crate::model::{
    AccountId, Credentials, DeployParameters, ImageStatus, LambdaId, LambdaName, LambdaStatus,
    LambdaType, Parameters, Runtime, Version,
};
use crate::runtime::{
    self, GuestEnv, LoadedLambda, OutboundLimits, OutboundPolicy, PodSet, Registry, SandboxLimits,
    WasmEngine,
};
use crate::secrets::{Sealer, SecretsError};
use crate::store::{
    BuildKind, BuildRecord, KvQuotas, LambdaRecord, LambdaSpec, ListEntry, Store, StoreError,
};

/// A lifecycle operation failed; `api::error` maps each to a LUNA code.
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
    /// Archive storage failure.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Credential encryption failure.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
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

/// List filters, already validated.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Only this account's lambdas.
    pub account: Option<AccountId>,
    /// create_time < this.
    pub created_before: Option<DateTime<Utc>>,
    /// create_time >= this.
    pub created_since: Option<DateTime<Utc>>,
    /// Lambda type.
    pub lambda_type: Option<LambdaType>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Any of these namespaces.
    pub namespaces: Option<Vec<String>>,
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

/// Owns every lambda's lifecycle.
#[derive(Debug)]
pub struct Lifecycle {
    config: Arc<Config>,
    store: Store,
    archives: ArchiveStore,
    sealer: Sealer,
    engine: Arc<WasmEngine>,
    registry: Arc<Registry>,
    /// The engine that builds container lambdas' images, and runs them unless
    /// `kube` is set (`None`: WASM only).
    docker: Option<DockerEngine>,
    /// The cluster that runs container lambdas (`container_backend = "kubernetes"`).
    kube: Option<KubeBackend>,
    logs: LogSink,
    metrics: Metrics,
    build_slots: Arc<Semaphore>,
    locks: DashMap<LambdaId, Arc<Mutex<()>>>,
    /// Uploads hold it shared from storing an archive until a record references it;
    /// garbage collection holds it exclusively.
    gc_lock: tokio::sync::RwLock<()>,
    /// Compiled components by wasm digest: lambdas shipping the same component share
    /// its code in memory.
    components: DashMap<String, Component>,
    jobs: DashMap<LambdaId, tokio::task::AbortHandle>,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

impl Lifecycle {
    /// Wires the lifecycle.
    #[expect(
        clippy::too_many_arguments,
        reason = "plain wiring of the service's parts"
    )]
    pub fn new(
        config: Arc<Config>,
        store: Store,
        archives: ArchiveStore,
        sealer: Sealer,
        engine: Arc<WasmEngine>,
        registry: Arc<Registry>,
        docker: Option<DockerEngine>,
        kube: Option<KubeBackend>,
        logs: LogSink,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            build_slots: Arc::new(Semaphore::new(config.builds.max_concurrent)),
            config,
            store,
            archives,
            sealer,
            engine,
            registry,
            docker,
            kube,
            logs,
            metrics,
            locks: DashMap::new(),
            gc_lock: tokio::sync::RwLock::new(()),
            components: DashMap::new(),
            jobs: DashMap::new(),
        })
    }

    /// The store (health checks, direct reads).
    pub fn store(&self) -> &Store {
        &self.store
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

    /// Checks an upload without storing anything: every problem, including the
    /// component's (compiled, then its artifact dropped unless a lambda already uses it).
    pub async fn validate(
        &self,
        parameters: Parameters,
        archive: bytes::Bytes,
    ) -> Result<Vec<String>> {
        let config = self.config.clone();
        let engine = self.engine.clone();
        let store = self.store.clone();
        // Validation compiles like a build: it waits for a build slot, so a flood of
        // validate calls cannot take every core from the builds and requests.
        let _slot = self
            .build_slots
            .acquire()
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?;
        let outcome = tokio::task::spawn_blocking(move || {
            let check = builder::check_upload(
                &config,
                &parameters,
                &DeployParameters::default(),
                &archive,
                true,
            );
            let mut problems = check.problems;
            if check.no_container_backend {
                return Err(LifecycleError::NoContainerBackend);
            }
            if problems.is_empty()
                && let Some(wasm) = &check.archive.wasm
            {
                let lambda_type = parameters.lambda_type.unwrap_or_default();
                let component = builder::wasm::check_component(&engine, wasm, lambda_type);
                let digest = builder::digest(wasm);
                if let Some(compiled) = &component.compiled {
                    store.add_artifacts(&digest, &compiled.artifacts)?;
                }
                problems.extend(component.problems);
                return Ok((problems, Some(digest)));
            }
            Ok((problems, None))
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))??;
        // Validation must not grow the cache: what no lambda uses goes at once.
        if let (_, Some(digest)) = &outcome {
            self.collect_garbage(&[], std::slice::from_ref(digest))
                .await?;
        }
        Ok(outcome.0)
    }

    async fn check(&self, upload: &Upload, name_required: bool) -> Result<UploadCheck> {
        let config = self.config.clone();
        let (parameters, deploy, archive) = (
            upload.parameters.clone(),
            upload.deploy_parameters.clone(),
            upload.archive.clone(),
        );
        let check = tokio::task::spawn_blocking(move || {
            builder::check_upload(&config, &parameters, &deploy, &archive, name_required)
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))?;
        if check.no_container_backend {
            return Err(LifecycleError::NoContainerBackend);
        }
        if !check.problems.is_empty() {
            return Err(LifecycleError::Invalid(check.problems));
        }
        Ok(check)
    }

    async fn store_archive(&self, archive: bytes::Bytes) -> Result<String> {
        let archives = self.archives.clone();
        Ok(tokio::task::spawn_blocking(move || archives.put(&archive))
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))??)
    }

    fn spec(
        &self,
        version: Version,
        upload: &Upload,
        check: &UploadCheck,
        archive_digest: String,
    ) -> Result<LambdaSpec> {
        Ok(LambdaSpec {
            version,
            lambda_type: upload.parameters.lambda_type.unwrap_or_default(),
            runtime: check.archive.runtime.unwrap_or(Runtime::Wasm),
            archive_digest,
            parameters: Parameters {
                lambda_name: None,
                description: None,
                ..upload.parameters.clone()
            },
            deploy_parameters: upload.deploy_parameters.clone(),
            credentials_sealed: self.sealer.seal(&upload.credentials)?,
            wasm_digest: check.archive.wasm.as_deref().map(builder::digest),
            openapi: check.archive.openapi.clone(),
        })
    }

    /// Accepts a new lambda and starts its build; returns at once.
    pub async fn create(self: &Arc<Self>, account: AccountId, upload: Upload) -> Result<LambdaId> {
        let check = self.check(&upload, true).await?;
        let name = upload.parameters.lambda_name.clone().unwrap_or_default();
        let _no_gc = self.gc_lock.read().await;
        let digest = self.store_archive(upload.archive.clone()).await?;
        let spec = self.spec(Version::FIRST, &upload, &check, digest)?;
        let id = LambdaId::generate();
        let record = LambdaRecord {
            lambda_id: id,
            account_id: account,
            lambda_name: name.clone(),
            description: upload.parameters.description.clone().unwrap_or_default(),
            create_time: now(),
            last_update_time: now(),
            status: LambdaStatus::Waiting,
            current: spec.clone(),
            deployed: false,
        };
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.store.save_build(&BuildRecord {
            lambda_id: id,
            kind: BuildKind::Create,
            spec,
            status: ImageStatus::Pending,
            created: now(),
            finished: None,
            logs: vec![stamp("build queued: lambda created")],
        })?;
        let accepted = match self.store.save_lambda(&record, None) {
            Ok(Ok(())) => self.store.flush().await.map_err(LifecycleError::from),
            Ok(Err(_)) => Err(LifecycleError::NameTaken(name.clone())),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = accepted {
            // A create the client is told failed must leave nothing listed: a name clash,
            // or a store that cannot make it durable (a full disk fails the flush after
            // the in-memory write).
            if self.store.delete_lambda(&record).is_err() {
                self.store.unlist(&record);
            }
            drop(_no_gc);
            let _ = self
                .collect_garbage(&[record.current.archive_digest], &[])
                .await;
            return Err(e);
        }
        tracing::info!(lambda = %id, account = %account, name = %name, "lambda created");
        self.spawn_build(id);
        Ok(id)
    }

    /// Replaces the lambda's archive and parameters: a new version is built while
    /// the old one keeps serving.
    pub async fn recreate(
        self: &Arc<Self>,
        account: AccountId,
        id: LambdaId,
        upload: Upload,
    ) -> Result<Version> {
        // Unknown ids must not leave lock entries behind.
        self.owned(id, Some(account))?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let mut record = self.owned(id, Some(account))?;
        let next = self.next_version(&record)?;
        let check = self.check(&upload, false).await?;
        let _no_gc = self.gc_lock.read().await;
        let digest = self.store_archive(upload.archive.clone()).await?;
        let spec = self.spec(next, &upload, &check, digest)?;
        let old_name = record.lambda_name.clone();
        if let Some(name) = &upload.parameters.lambda_name {
            record.lambda_name.clone_from(name);
        }
        if let Some(d) = &upload.parameters.description {
            record.description.clone_from(d);
        }
        record.last_update_time = now();
        if !record.deployed {
            record.status = LambdaStatus::Waiting;
        }
        if self.store.save_lambda(&record, Some(&old_name))?.is_err() {
            return Err(LifecycleError::NameTaken(record.lambda_name));
        }
        let replaced = self.queue_build(
            &record,
            BuildKind::Recreate,
            spec,
            "build queued: lambda recreated",
        )?;
        self.store.flush().await?;
        tracing::info!(lambda = %id, version = %next, "lambda recreate accepted");
        self.spawn_build(id);
        drop(_no_gc);
        self.collect_spec_garbage(replaced).await?;
        Ok(next)
    }

    /// Rebuilds the current archive and parameters on the current engine.
    pub async fn update(self: &Arc<Self>, account: AccountId, id: LambdaId) -> Result<Version> {
        // Unknown ids must not leave lock entries behind.
        self.owned(id, Some(account))?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let mut record = self.owned(id, Some(account))?;
        let next = self.next_version(&record)?;
        let mut spec = record.current.clone();
        spec.version = next;
        record.last_update_time = now();
        if !record.deployed {
            record.status = LambdaStatus::Waiting;
        }
        let replaced = self.queue_build(
            &record,
            BuildKind::Update,
            spec,
            "build queued: lambda update",
        )?;
        let _ = self.store.save_lambda(&record, Some(&record.lambda_name))?;
        self.store.flush().await?;
        tracing::info!(lambda = %id, version = %next, "lambda update accepted");
        self.spawn_build(id);
        self.collect_spec_garbage(replaced).await?;
        Ok(next)
    }

    fn next_version(&self, record: &LambdaRecord) -> Result<Version> {
        let last_built = match self.store.build(record.lambda_id)? {
            Some(build) if !build.status.is_finished() => {
                return Err(LifecycleError::BuildInProgress(record.lambda_id));
            }
            Some(build) => build.spec.version,
            None => record.current.version,
        };
        Ok(last_built.max(record.current.version).next())
    }

    /// Saves a pending build job; returns the spec of the job it replaces.
    fn queue_build(
        &self,
        record: &LambdaRecord,
        kind: BuildKind,
        spec: LambdaSpec,
        why: &str,
    ) -> Result<Option<LambdaSpec>> {
        let replaced = self.store.build(record.lambda_id)?.map(|b| b.spec);
        self.store.save_build(&BuildRecord {
            lambda_id: record.lambda_id,
            kind,
            spec,
            status: ImageStatus::Pending,
            created: now(),
            finished: None,
            logs: vec![stamp(why)],
        })?;
        Ok(replaced)
    }

    /// Removes what a spec no longer in use referenced (if nothing else does).
    async fn collect_spec_garbage(&self, spec: Option<LambdaSpec>) -> Result<()> {
        match spec {
            Some(spec) => {
                let components: Vec<String> = spec.wasm_digest.into_iter().collect();
                self.collect_garbage(&[spec.archive_digest], &components)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Renames or re-describes a lambda.
    pub async fn patch(
        &self,
        account: AccountId,
        id: LambdaId,
        name: Option<LambdaName>,
        description: Option<String>,
    ) -> Result<()> {
        // Unknown ids must not leave lock entries behind.
        self.owned(id, Some(account))?;
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let mut record = self.owned(id, Some(account))?;
        let old_name = record.lambda_name.clone();
        if let Some(name) = name {
            record.lambda_name = name.as_str().to_owned();
        }
        if let Some(d) = description {
            record.description = d;
        }
        record.last_update_time = now();
        if self.store.save_lambda(&record, Some(&old_name))?.is_err() {
            return Err(LifecycleError::NameTaken(record.lambda_name));
        }
        self.store.flush().await?;
        Ok(())
    }

    /// Stops serving at once and removes everything the lambda owns.
    pub async fn delete(&self, account: Option<AccountId>, id: LambdaId) -> Result<()> {
        self.owned(id, account)?;
        let lock = self.lock(id);
        let guard = lock.lock().await;
        let record = self.owned(id, account)?;
        self.registry.remove(id);
        if let Some((_, job)) = self.jobs.remove(&id) {
            job.abort();
        }
        let build = self.store.build(id)?;
        self.store.delete_lambda(&record)?;
        // Requests still finishing may have queued lines: let the writer drain them
        // (it skips deleted lambdas from now on), then sweep once more.
        let logs = self.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.flush(Duration::from_secs(1))).await;
        self.store.delete_logs(id)?;
        self.store.kv_delete_namespace(id)?;
        self.store.flush().await?;
        self.metrics.forget_lambda(id);
        let mut namespaces = vec![record.current.deploy_parameters.namespace()];
        if let Some(build) = &build {
            namespaces.push(build.spec.deploy_parameters.namespace());
        }
        namespaces.dedup();
        self.remove_container_resources(id, &namespaces).await;
        drop(guard);
        self.locks.remove(&id);
        let mut archives = vec![record.current.archive_digest.clone()];
        let mut components: Vec<String> = record.current.wasm_digest.clone().into_iter().collect();
        if let Some(build) = build {
            archives.push(build.spec.archive_digest);
            components.extend(build.spec.wasm_digest);
        }
        self.collect_garbage(&archives, &components).await?;
        tracing::info!(lambda = %id, "lambda deleted");
        Ok(())
    }

    /// Removes the archives and compiled artifacts among the candidates that no
    /// lambda (serving or building) references any more.
    async fn collect_garbage(&self, archives: &[String], components: &[String]) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        let mut used_archives = std::collections::HashSet::new();
        let mut used_components = std::collections::HashSet::new();
        for spec in self
            .store
            .lambdas()?
            .into_iter()
            .map(|r| r.current)
            .chain(self.store.builds()?.into_iter().map(|b| b.spec))
        {
            used_archives.insert(spec.archive_digest);
            used_components.extend(spec.wasm_digest);
        }
        for digest in archives.iter().filter(|d| !used_archives.contains(*d)) {
            self.archives.remove(digest)?;
        }
        for digest in components.iter().filter(|d| !used_components.contains(*d)) {
            let files = self.store.artifacts(digest)?;
            self.engine.remove_artifacts(&files);
            self.components.remove(digest);
            self.store.remove_artifact_record(digest)?;
            tracing::info!(component = %digest, files = files.len(), "compiled artifact removed");
        }
        Ok(())
    }

    /// The lambda if `account` (when given) owns it; another account's lambda is
    /// reported exactly like a missing one.
    pub fn owned(&self, id: LambdaId, account: Option<AccountId>) -> Result<LambdaRecord> {
        match self.store.lambda(id)? {
            Some(r) if account.is_none_or(|a| a == r.account_id) => Ok(r),
            _ => Err(LifecycleError::NotFound(id)),
        }
    }

    /// Lambdas matching the filter, newest first, one page.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<LambdaRecord>> {
        let needle = filter.name_contains.as_ref().map(|n| n.to_lowercase());
        let keep = |entry: &ListEntry| {
            filter.account.is_none_or(|a| a == entry.account_id)
                && filter.created_before.is_none_or(|t| entry.create_time < t)
                && filter.created_since.is_none_or(|t| entry.create_time >= t)
                && filter.lambda_type.is_none_or(|t| t == entry.lambda_type)
                && needle
                    .as_ref()
                    .is_none_or(|n| entry.name_lowercase.contains(n.as_str()))
                && filter
                    .namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.contains(&entry.namespace))
        };
        let skip = filter
            .page
            .saturating_sub(1)
            .saturating_mul(filter.page_size);
        let mut page = Vec::with_capacity(filter.page_size);
        for id in self.store.list_ids(keep, skip, filter.page_size) {
            // A lambda deleted since the ids were taken is simply not listed.
            if let Some(record) = self.store.lambda(id)? {
                page.push(record);
            }
        }
        Ok(page)
    }

    /// The lambda's image (build job) status and logs.
    pub fn image(&self, id: LambdaId, account: Option<AccountId>) -> Result<ImageView> {
        self.owned(id, account)?;
        let Some(build) = self.store.build(id)? else {
            return Ok(ImageView {
                status: ImageStatus::NotFound,
                logs: vec![],
            });
        };
        let retention = chrono::Duration::seconds(
            i64::try_from(self.config.builds.retention_secs).unwrap_or(i64::MAX),
        );
        let expired = build.finished.is_some_and(|t| now() - t > retention);
        Ok(ImageView {
            status: if expired {
                ImageStatus::NotFound
            } else {
                build.status
            },
            logs: build.logs,
        })
    }

    fn limits_for(&self, deploy: &DeployParameters) -> SandboxLimits {
        let defaults = &self.config.sandbox;
        let sandbox = deploy.sandbox.clone().unwrap_or_default();
        let memory_mb = sandbox.memory_limit_mb.unwrap_or(defaults.memory_limit_mb);
        SandboxLimits {
            memory_bytes: usize::try_from(u64::from(memory_mb) * 1024 * 1024).unwrap_or(usize::MAX),
            timeout: Duration::from_millis(
                sandbox
                    .request_timeout_ms
                    .unwrap_or(defaults.request_timeout_ms),
            ),
            max_concurrent: sandbox
                .max_concurrent_requests
                .unwrap_or(defaults.max_concurrent_requests),
            max_request_body: self.config.limits.max_proxy_body_bytes,
            max_response_body: self.config.sandbox.max_response_body_bytes,
        }
    }

    fn kv_quotas(&self) -> KvQuotas {
        let kv = &self.config.keyvalue;
        KvQuotas {
            max_keys: kv.max_keys,
            max_key_bytes: kv.max_key_bytes,
            max_value_bytes: kv.max_value_bytes,
            max_total_bytes: kv.max_total_bytes,
        }
    }

    fn spawn_build(self: &Arc<Self>, id: LambdaId) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            this.run_build(id).await;
            this.jobs.remove(&id);
        });
        self.jobs.insert(id, task.abort_handle());
    }

    /// Appends a line to the build job's log (bounded) and saves the job.
    fn build_log(&self, build: &mut BuildRecord, line: &str) {
        tracing::info!(lambda = %build.lambda_id, version = %build.spec.version, "{line}");
        if build.logs.len() >= self.config.builds.max_log_lines {
            build.logs.remove(0);
        }
        build.logs.push(stamp(line));
        // An aborted build of a deleted lambda must not bring its job record back.
        if !matches!(self.store.lambda_exists(build.lambda_id), Ok(true)) {
            return;
        }
        if let Err(e) = self.store.save_build(build) {
            tracing::error!(lambda = %build.lambda_id, error = %e, "cannot save build job");
        }
    }

    async fn run_build(self: &Arc<Self>, id: LambdaId) {
        let Ok(slot) = self.build_slots.clone().acquire_owned().await else {
            return;
        };
        let (Ok(Some(mut build)), Ok(Some(record))) = (self.store.build(id), self.store.lambda(id))
        else {
            return;
        };
        if build.status != ImageStatus::Pending {
            return;
        }
        let started = Instant::now();
        build.status = ImageStatus::InProgress;
        let version = build.spec.version;
        let started_line = format!("build of version {version} started ({:?})", build.kind);
        self.build_log(&mut build, &started_line);
        let timeout = Duration::from_secs(self.config.builds.timeout_secs);
        let account = record.account_id;
        let build_job = async {
            match build.spec.runtime {
                Runtime::Wasm => self.build_wasm(&mut build, account).await.map(Served::Wasm),
                Runtime::Container => self
                    .build_container(&mut build, account)
                    .await
                    .map(Served::Pods),
            }
        };
        let outcome = match tokio::time::timeout(timeout, build_job).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // Pods the interrupted job may have started must not linger.
                if build.spec.runtime == Runtime::Container {
                    self.retire_pods(id, container::Retire::Only(version)).await;
                }
                Err(format!("build timed out after {}s", timeout.as_secs()))
            }
        };
        drop(slot);
        self.metrics
            .observe_build(outcome.is_ok(), started.elapsed());
        self.finish_build(id, build, outcome, started).await;
    }

    async fn build_wasm(
        &self,
        build: &mut BuildRecord,
        record_account: AccountId,
    ) -> std::result::Result<Arc<LoadedLambda>, String> {
        let wasm = self.stored_wasm(&build.spec.archive_digest).await?;
        let wasm_digest = builder::digest(&wasm);
        self.build_log(
            build,
            &format!(
                "archive checked: zip structure, paths, sizes and compression ratios ok; lambda.wasm is {} bytes, sha256 {wasm_digest}",
                wasm.len()
            ),
        );
        let lambda_type = build.spec.lambda_type;
        if let Some(shared) = self.components.get(&wasm_digest).map(|c| c.clone()) {
            let problems = runtime::export_problems(self.engine.engine(), &shared, lambda_type);
            if !problems.is_empty() {
                return Err(format!("component check failed: {}", problems.join("; ")));
            }
            self.build_log(
                build,
                &format!("component sha256 {wasm_digest} is already loaded in memory (artifact cache hit): shared, no compile"),
            );
            build.spec.wasm_digest = Some(wasm_digest);
            return self.link(build, &shared, record_account);
        }
        let engine = self.engine.clone();
        let compile_started = Instant::now();
        let check = tokio::task::spawn_blocking(move || {
            builder::wasm::check_component(&engine, &wasm, lambda_type)
        })
        .await
        .map_err(|e| format!("internal: {e}"))?;
        if let Some(compiled) = &check.compiled
            && let Err(e) = self.store.add_artifacts(&wasm_digest, &compiled.artifacts)
        {
            return Err(format!("cannot record the compiled artifact: {e}"));
        }
        let compiled = match check.compiled {
            Some(c) if check.problems.is_empty() => c,
            _ => {
                return Err(format!(
                    "component check failed: {}",
                    check.problems.join("; ")
                ));
            }
        };
        let artifacts = self.store.artifacts(&wasm_digest).unwrap_or_default();
        let artifact_bytes: u64 = artifacts
            .iter()
            .filter_map(|a| self.engine.artifact_size(a))
            .sum();
        self.build_log(
            build,
            &format!(
                "component {} in {} ms; artifact sha256 {wasm_digest}: {artifact_bytes} bytes of native code ({}); imports satisfied, exports {}",
                if compiled.cache_hit {
                    "loaded from the artifact cache (cache hit, no recompilation)"
                } else {
                    "compiled with Cranelift (cache miss)"
                },
                compile_started.elapsed().as_millis(),
                artifacts.join(", "),
                if lambda_type == LambdaType::Tasks {
                    "split-content and execute-subtask (luna:lambda/tasks)"
                } else {
                    "wasi:http/incoming-handler"
                },
            ),
        );
        let component = compiled.component;
        self.components
            .insert(wasm_digest.clone(), component.clone());
        build.spec.wasm_digest = Some(wasm_digest);
        self.link(build, &component, record_account)
    }

    /// Links a compiled component into a loaded lambda version.
    fn link(
        &self,
        build: &mut BuildRecord,
        component: &Component,
        record_account: AccountId,
    ) -> std::result::Result<Arc<LoadedLambda>, String> {
        let loaded = self.load_version(build.lambda_id, record_account, &build.spec, component)?;
        let limits = loaded.limits;
        self.build_log(
            build,
            &format!(
                "instance pre-linked: memory limit {} MiB, timeout {} ms, max {} concurrent requests",
                limits.memory_bytes / (1024 * 1024),
                limits.timeout.as_millis(),
                limits.max_concurrent
            ),
        );
        Ok(loaded)
    }

    async fn finish_build(
        &self,
        id: LambdaId,
        mut build: BuildRecord,
        outcome: std::result::Result<Served, String>,
        started: Instant,
    ) {
        let lock = self.lock(id);
        let guard = lock.lock().await;
        let Ok(Some(mut record)) = self.store.lambda(id) else {
            return; // deleted meanwhile
        };
        let version = build.spec.version;
        let mut superseded = None;
        match outcome {
            Ok(served) => {
                match served {
                    Served::Wasm(loaded) => {
                        self.registry.swap_in(loaded);
                        // A recreate may have turned a container lambda into a WASM one.
                        if record.current.runtime == Runtime::Container {
                            let namespace = record.current.deploy_parameters.namespace().to_owned();
                            self.remove_container_resources(id, &[&namespace]).await;
                        }
                    }
                    Served::Pods(pods) => {
                        self.registry.swap_in_pods(pods);
                        // Rolling: the new pods are serving; the old ones go now.
                        self.retire_pods(id, container::Retire::AllBut(version))
                            .await;
                    }
                }
                superseded = Some(std::mem::replace(&mut record.current, build.spec.clone()));
                record.deployed = true;
                record.status = LambdaStatus::Running;
                build.status = ImageStatus::Completed;
                build.finished = Some(now());
                self.build_log(
                    &mut build,
                    &format!(
                        "build completed in {} ms; version {version} is serving",
                        started.elapsed().as_millis()
                    ),
                );
                self.logs.line(id, &format!("version {version} is running"));
            }
            Err(reason) => {
                build.status = ImageStatus::Error;
                build.finished = Some(now());
                self.build_log(&mut build, &format!("build failed: {reason}"));
                if record.deployed {
                    let serving = record.current.version;
                    self.build_log(&mut build, &format!("version {serving} keeps serving"));
                    self.logs.line(
                        id,
                        &format!("build of version {version} failed, version {serving} keeps serving: {reason}"),
                    );
                } else {
                    record.status = LambdaStatus::Failed;
                    self.logs
                        .line(id, &format!("build of version {version} failed: {reason}"));
                }
            }
        }
        if let Err(e) = self.store.save_lambda(&record, Some(&record.lambda_name)) {
            tracing::error!(lambda = %id, error = %e, "cannot save lambda after build");
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(lambda = %id, error = %e, "cannot flush store after build");
        }
        drop(guard);
        // The version that stopped serving may have been the last user of its files.
        if let Err(e) = self.collect_spec_garbage(superseded).await {
            tracing::error!(lambda = %id, error = %e, "cannot collect the superseded version's files");
        }
    }

    /// After a restart: builds that died with the process end `error`; deployed WASM
    /// lambdas are loaded again (from the compilation cache, no recompilation).
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        self.archives.sweep_temp_files();
        // Archives and artifacts no record adopted (a crash between writing the file
        // and the record, a name clash, validate-only compiles) are removed.
        let archives = self.archives.digests()?;
        let components = self.store.artifact_digests()?;
        self.collect_garbage(&archives, &components).await?;
        self.remove_orphan_pods().await;
        for mut build in self.store.builds()? {
            if build.status.is_finished() {
                continue;
            }
            if build.spec.runtime == Runtime::Container {
                self.retire_pods(build.lambda_id, container::Retire::Only(build.spec.version))
                    .await;
            }
            build.status = ImageStatus::Error;
            build.finished = Some(now());
            self.build_log(
                &mut build,
                "build failed: the service stopped while this build was running; recreate or update the lambda to build again",
            );
            if let Some(mut record) = self.store.lambda(build.lambda_id)?
                && !record.deployed
            {
                record.status = LambdaStatus::Failed;
                let _ = self.store.save_lambda(&record, Some(&record.lambda_name))?;
            }
        }
        let mut loaded = 0usize;
        for mut record in self.store.lambdas()? {
            if !record.deployed {
                continue;
            }
            let id = record.lambda_id;
            let served = match record.current.runtime {
                Runtime::Wasm => self.reload(&record).await.map(Served::Wasm),
                Runtime::Container => self.reattach(&record).await.map(Served::Pods),
            };
            match served {
                Ok(served) => {
                    match served {
                        Served::Wasm(lambda) => self.registry.swap_in(lambda),
                        Served::Pods(pods) => self.registry.swap_in_pods(pods),
                    }
                    loaded += 1;
                    if record.status != LambdaStatus::Running {
                        record.status = LambdaStatus::Running;
                        let _ = self.store.save_lambda(&record, Some(&record.lambda_name))?;
                    }
                }
                Err(reason) => {
                    tracing::error!(lambda = %id, %reason, "cannot reload lambda");
                    self.logs
                        .line(id, &format!("reload after restart failed: {reason}"));
                    record.status = LambdaStatus::Failed;
                    let _ = self.store.save_lambda(&record, Some(&record.lambda_name))?;
                }
            }
        }
        self.store.flush().await?;
        tracing::info!(
            loaded,
            cache_hits = self.engine.cache_hits(),
            cache_misses = self.engine.cache_misses(),
            "lambdas recovered"
        );
        Ok(())
    }

    async fn reload(
        &self,
        record: &LambdaRecord,
    ) -> std::result::Result<Arc<LoadedLambda>, String> {
        let spec = &record.current;
        if let Some(wasm_digest) = &spec.wasm_digest
            && let Some(shared) = self.components.get(wasm_digest).map(|c| c.clone())
        {
            return self.load_version(record.lambda_id, record.account_id, spec, &shared);
        }
        let wasm = self.stored_wasm(&spec.archive_digest).await?;
        let engine = self.engine.clone();
        let (wasm_digest, compiled) = tokio::task::spawn_blocking(move || {
            let compiled = engine.compile(&wasm).map_err(|e| e.to_string())?;
            Ok::<_, String>((builder::digest(&wasm), compiled))
        })
        .await
        .map_err(|e| e.to_string())??;
        if !compiled.cache_hit {
            tracing::warn!(lambda = %record.lambda_id, "artifact missing from the cache: recompiled");
        }
        self.store
            .add_artifacts(&wasm_digest, &compiled.artifacts)
            .map_err(|e| e.to_string())?;
        self.components
            .insert(wasm_digest, compiled.component.clone());
        self.load_version(
            record.lambda_id,
            record.account_id,
            spec,
            &compiled.component,
        )
    }

    /// A stored archive's bytes, re-checked against the archive rules.
    async fn stored_archive(&self, archive_digest: &str) -> std::result::Result<Vec<u8>, String> {
        let archives = self.archives.clone();
        let limits = self.config.limits.clone();
        let digest = archive_digest.to_owned();
        let (bytes, problems) = tokio::task::spawn_blocking(move || {
            archives.get(&digest).map(|bytes| {
                let problems = builder::archive::inspect(&bytes, &limits).problems;
                (bytes, problems)
            })
        })
        .await
        .map_err(|e| format!("internal: {e}"))?
        .map_err(|e| format!("stored archive {archive_digest} is unreadable: {e}"))?;
        if !problems.is_empty() {
            return Err(format!("archive check failed: {}", problems.join("; ")));
        }
        Ok(bytes)
    }

    /// `lambda.wasm` of a stored archive, re-checked against the archive rules.
    async fn stored_wasm(&self, archive_digest: &str) -> std::result::Result<Vec<u8>, String> {
        let archives = self.archives.clone();
        let limits = self.config.limits.clone();
        let digest = archive_digest.to_owned();
        let report = tokio::task::spawn_blocking(move || {
            archives
                .get(&digest)
                .map(|bytes| builder::archive::inspect(&bytes, &limits))
        })
        .await
        .map_err(|e| format!("internal: {e}"))?
        .map_err(|e| format!("stored archive {archive_digest} is unreadable: {e}"))?;
        if !report.problems.is_empty() {
            return Err(format!(
                "archive check failed: {}",
                report.problems.join("; ")
            ));
        }
        report
            .wasm
            .ok_or_else(|| "archive has no lambda.wasm".to_owned())
    }

    /// Links a compiled component as `spec`'s version of a lambda.
    fn load_version(
        &self,
        lambda_id: LambdaId,
        account_id: AccountId,
        spec: &LambdaSpec,
        component: &Component,
    ) -> std::result::Result<Arc<LoadedLambda>, String> {
        let credentials = self
            .sealer
            .unseal(&spec.credentials_sealed)
            .map_err(|e| format!("cannot unseal the lambda's credentials: {e}"))?;
        let sandbox = &self.config.sandbox;
        let env = GuestEnv {
            lambda_id,
            account_id,
            version: spec.version,
            lambda_type: spec.lambda_type,
            config: runtime::flatten_config(spec.parameters.config.as_ref(), Some(&credentials)),
            store: self.store.clone(),
            kv_quotas: self.kv_quotas(),
            outbound: OutboundPolicy::new(
                spec.deploy_parameters
                    .sandbox
                    .as_ref()
                    .and_then(|s| s.allowed_outbound_hosts.as_deref())
                    .unwrap_or_default(),
                OutboundLimits::from(sandbox),
            ),
            max_resources: sandbox.max_resources,
            logs: self.logs.clone(),
            metrics: self.metrics.for_lambda(lambda_id),
        };
        let loaded = LoadedLambda::load(
            &self.engine,
            component,
            env,
            self.limits_for(&spec.deploy_parameters),
        )
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(loaded))
    }
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
