//! The build job: pending → in_progress → completed | error, under a build slot and a
//! timeout. A WASM version is compiled (or found in memory or the artifact cache),
//! checked and linked; a container version goes through `container`. Each step is a
//! line in the image logs; a failure is a typed `BuildFailure`, whose text is the
//! log's `build failed:` line.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::deploy::DeployError;
use super::{Lifecycle, Served, Staged, now, stamp};
use crate::builder;
use crate::builder::archive::ArchiveReport;
use crate::model::{AccountId, ImageStatus, LambdaId, LambdaStatus, LambdaType, Runtime, Version};
use crate::runtime::{
    self, Component, GuestEnv, LoadedLambda, OutboundLimits, OutboundPolicy, Prelinked,
    RuntimeError, SandboxLimits,
};
use crate::secrets::SecretsError;
use crate::store::{
    BuildRecord, KvQuotas, LambdaSpec, LambdaStore, SpecDeployParameters, StoreError,
};

/// Why a build (or the reload of a version after a restart) failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    /// The stored archive cannot be read.
    #[error("stored archive {digest} is unreadable: {source}")]
    ArchiveUnreadable {
        /// Its digest.
        digest: String,
        /// Why.
        source: StoreError,
    },
    /// The stored archive breaks the archive rules (they are checked again: a limit
    /// may have been lowered since the upload).
    #[error("archive check failed: {}", .0.join("; "))]
    ArchiveRules(Vec<String>),
    /// A WASM version's archive has no component.
    #[error("archive has no lambda.wasm")]
    NoComponent,
    /// The component does not compile, or the host cannot serve it.
    #[error("component check failed: {}", .0.join("; "))]
    Component(Vec<String>),
    /// A stored component no longer compiles (after a restart).
    #[error("{0}")]
    Compile(RuntimeError),
    /// The compiled artifact could not be recorded.
    #[error("cannot record the compiled artifact: {0}")]
    Artifact(StoreError),
    /// The record of the images this service built cannot be read or written.
    #[error("cannot read or record the built image: {0}")]
    ImageRecord(StoreError),
    /// The version's credentials cannot be unsealed.
    #[error("cannot unseal the lambda's credentials: {0}")]
    Credentials(SecretsError),
    /// The compiled component cannot be linked.
    #[error(transparent)]
    Link(RuntimeError),
    /// The Docker build context cannot be made from the archive.
    #[error("{0}")]
    BuildContext(String),
    /// The version's config or credentials cannot be encoded for its pods.
    #[error("cannot encode the lambda's settings for its pods: {0}")]
    PodSettings(serde_json::Error),
    /// A container version and no container backend.
    #[error("{}", builder::NO_CONTAINER_BACKEND)]
    NoContainerBackend,
    /// The image build or the pods failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// The job ran past `builds.timeout_secs`.
    #[error("build timed out after {0}s")]
    TimedOut(u64),
    /// A blocking step of the job panicked or was cancelled.
    #[error("internal: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One run of a lambda's build job: the job's record (saved as its log grows) and what
/// the run needs to know of its lambda.
pub(super) struct BuildJob<'a> {
    pub(super) lifecycle: &'a Lifecycle,
    pub(super) record: BuildRecord,
    pub(super) account: AccountId,
    saver: JobSaver,
}

impl BuildJob<'_> {
    /// Appends a line to the job's log; the record is saved soon after.
    pub(super) fn log(&mut self, line: &str) {
        let kept = self.lifecycle.append_line(&mut self.record, line);
        self.saver.offer(&kept);
    }

    /// Builds the job's version; returns what will serve it.
    async fn build(&mut self) -> Result<Served, BuildFailure> {
        match self.record.spec.runtime {
            Runtime::Wasm => self.build_wasm().await.map(Served::Wasm),
            Runtime::Container => self.build_container().await.map(Served::Pods),
        }
    }

    async fn build_wasm(&mut self) -> Result<Arc<LoadedLambda>, BuildFailure> {
        let lifecycle = self.lifecycle;
        let wasm = lifecycle
            .checked_wasm(self.record.lambda_id, &self.record.spec)
            .await?;
        let wasm_digest = builder::digest(&wasm);
        self.log(&format!(
            "archive checked: zip structure, paths, sizes and compression ratios ok; lambda.wasm is {} bytes, sha256 {wasm_digest}",
            wasm.len()
        ));
        let lambda_type = self.record.spec.lambda_type;
        if let Some(shared) = lifecycle.components.get(&wasm_digest).map(|c| c.clone()) {
            let problems =
                runtime::export_problems(lifecycle.engine.engine(), &shared, lambda_type);
            if !problems.is_empty() {
                return Err(BuildFailure::Component(problems));
            }
            self.log(&format!(
                "component sha256 {wasm_digest} is already loaded in memory (artifact cache hit): shared, no compile"
            ));
            self.record.spec.wasm_digest = Some(wasm_digest);
            return self.link(&shared, None);
        }
        let engine = lifecycle.engine.clone();
        let compile_started = Instant::now();
        let check = tokio::task::spawn_blocking(move || {
            builder::wasm::check_component(&engine, &wasm, lambda_type)
        })
        .await?;
        if let Some(compiled) = &check.compiled {
            lifecycle
                .store
                .add_artifacts(&wasm_digest, &compiled.artifacts)
                .await
                .map_err(BuildFailure::Artifact)?;
        }
        let (compiled, prelinked) = match (check.compiled, check.prelinked) {
            (Some(c), Some(p)) if check.problems.is_empty() => (c, p),
            _ => return Err(BuildFailure::Component(check.problems)),
        };
        let artifacts = lifecycle
            .store
            .artifacts(&wasm_digest)
            .await
            .unwrap_or_default();
        let artifact_bytes: u64 = artifacts
            .iter()
            .filter_map(|a| lifecycle.engine.artifact_size(a))
            .sum();
        self.log(&format!(
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
        ));
        let component = compiled.component;
        lifecycle
            .components
            .insert(wasm_digest.clone(), component.clone());
        self.record.spec.wasm_digest = Some(wasm_digest);
        self.link(&component, Some(prelinked))
    }

    /// The job's version of a compiled component (linked now unless the check did).
    fn link(
        &mut self,
        component: &Component,
        prelinked: Option<Prelinked>,
    ) -> Result<Arc<LoadedLambda>, BuildFailure> {
        let loaded = self.lifecycle.load_version(
            self.record.lambda_id,
            self.account,
            &self.record.spec,
            component,
            prelinked,
        )?;
        let limits = loaded.limits;
        let capped = self
            .record
            .spec
            .deploy_parameters
            .sandbox
            .as_ref()
            .and_then(|s| s.max_concurrent_requests)
            .is_some_and(|asked| asked > limits.max_concurrent);
        self.log(&format!(
            "instance pre-linked: memory limit {} MiB, timeout {} ms, max {} concurrent requests{}",
            limits.memory_bytes / (1024 * 1024),
            limits.timeout.as_millis(),
            limits.max_concurrent,
            if capped {
                " (capped by sandbox.max_instances_per_lambda)"
            } else {
                ""
            }
        ));
        Ok(loaded)
    }
}

/// Saves a running job's record as its log grows. Lines come from synchronous progress
/// callbacks and the store is async: each line goes to a task that keeps its own copy of
/// the record, adds the lines that came meanwhile, and saves it at most once per
/// `JOB_SAVE_INTERVAL`. A line costs no copy of the record, and a chatty build (every
/// line of a large `pip install`) a few saves a second, not one per line.
/// Dropped unfinished (the job was taken over by another replica), it saves nothing
/// more: the job's record is the new holder's.
struct JobSaver {
    lines: Option<mpsc::UnboundedSender<String>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for JobSaver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The fewest time between two saves of a running job.
const JOB_SAVE_INTERVAL: Duration = Duration::from_millis(200);

/// What saves a job's record (the store, or a test's counter).
type SaveJob = Box<dyn FnMut(BuildRecord) -> futures::future::BoxFuture<'static, ()> + Send>;

impl JobSaver {
    /// Saves `record` (as it is now) with each line `offer`ed, keeping its newest
    /// `max_lines` lines.
    fn start(mut record: BuildRecord, max_lines: usize, mut save: SaveJob) -> Self {
        let (lines, mut incoming) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut due = tokio::time::Instant::now();
            // After the sender is gone, the lines not yet saved still are.
            while let Some(line) = incoming.recv().await {
                keep_line(&mut record.logs, line, max_lines);
                let mut open = true;
                while open {
                    match tokio::time::timeout_at(due, incoming.recv()).await {
                        Ok(Some(line)) => keep_line(&mut record.logs, line, max_lines),
                        Ok(None) => open = false,
                        Err(_) => break,
                    }
                }
                save(record.clone()).await;
                due = tokio::time::Instant::now() + JOB_SAVE_INTERVAL;
                if !open {
                    break;
                }
            }
        });
        Self {
            lines: Some(lines),
            task: Some(task),
        }
    }

    /// `line` (stamped and bounded) goes to the next save.
    fn offer(&self, line: &str) {
        // The task ends only after the sender: it is always there to receive.
        if let Some(lines) = &self.lines {
            let _ = lines.send(line.to_owned());
        }
    }

    /// Waits until every line offered is saved.
    async fn finish(mut self) {
        drop(self.lines.take());
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Appends `line` to a job's log, dropping its oldest line past `max_lines`.
fn keep_line(logs: &mut Vec<String>, line: String, max_lines: usize) {
    if logs.len() >= max_lines {
        logs.remove(0);
    }
    logs.push(line);
}

/// Saves a build job's record, unless its lambda is gone: an aborted build of a deleted
/// lambda must not bring its job record back.
async fn save_job(store: &dyn LambdaStore, build: &BuildRecord) {
    if !matches!(store.lambda_exists(build.lambda_id).await, Ok(true)) {
        return;
    }
    if let Err(e) = store.save_build(build).await {
        tracing::error!(lambda = %build.lambda_id, error = %e, "cannot save build job");
    }
}

impl Lifecycle {
    pub(super) fn spawn_build(self: &Arc<Self>, id: LambdaId) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            this.run_build(id).await;
            this.jobs.remove(&id);
        });
        self.jobs.insert(id, task.abort_handle());
    }

    /// Appends a line to a build job's log, bounded in length and in lines kept.
    /// Returns the line as kept.
    fn append_line(&self, build: &mut BuildRecord, line: &str) -> String {
        let line = crate::model::bounded_line(line, self.config.builds.max_log_line_bytes);
        tracing::info!(lambda = %build.lambda_id, version = %build.spec.version, "{line}");
        let kept = stamp(&line);
        keep_line(
            &mut build.logs,
            kept.clone(),
            self.config.builds.max_log_lines,
        );
        kept
    }

    /// Appends a line to a build job's log and saves the job.
    pub(super) async fn build_log(&self, build: &mut BuildRecord, line: &str) {
        self.append_line(build, line);
        save_job(self.store.as_ref(), build).await;
    }

    /// How long this process's claim on a build lasts unless renewed.
    fn build_lease(&self) -> Duration {
        Duration::from_secs(self.config.store.build_lease_secs)
    }

    /// Runs the lambda's build job if this process may: it claims the job in the store
    /// (exactly one process runs each) and keeps its lease while it runs. A container
    /// build is only the leader's. A job whose lease is lost (another process took it
    /// over after this one stalled) ends here without a word: its record is the other's.
    async fn run_build(&self, id: LambdaId) {
        let Ok(Some(queued)) = self.store.build(id).await else {
            return;
        };
        if queued.status.is_finished() {
            return;
        }
        if queued.spec.runtime == Runtime::Container
            && self.coordination.shared()
            && !*self.coordination.leadership().borrow()
        {
            // The leading replica runs it (its scan finds the job unclaimed).
            self.unstage(id);
            return;
        }
        match self.coordination.claim_build(id, self.build_lease()).await {
            Ok(true) => {}
            Ok(false) => {
                self.unstage(id);
                return;
            }
            Err(e) => {
                tracing::warn!(lambda = %id, error = %e, "cannot claim the build job; it stays queued");
                return;
            }
        }
        let claimed = tokio::select! {
            built = self.build_claimed(id) => built,
            () = self.keep_lease(id) => {
                tracing::warn!(lambda = %id, "another replica took the build over; this one stops");
                None
            }
        };
        if let Some((record, outcome, started)) = claimed {
            self.finish_build(id, record, outcome, started).await;
        }
    }

    /// Renews this process's lease on the lambda's build every third of the lease;
    /// returns when another process holds it. A database outage is waited out: if it
    /// lasts past the lease, the first renewal after it finds the job taken over.
    async fn keep_lease(&self, id: LambdaId) {
        let lease = self.build_lease();
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.coordination.claim_build(id, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(lambda = %id, error = %e, "cannot renew the build lease")
                }
            }
        }
    }

    /// The claimed build job, run: its record and outcome (None: nothing to run).
    async fn build_claimed(
        &self,
        id: LambdaId,
    ) -> Option<(BuildRecord, Result<Served, BuildFailure>, Instant)> {
        let slot = self.build_slots.clone().acquire_owned().await.ok()?;
        let (Ok(Some(build)), Ok(Some(record))) =
            (self.store.build(id).await, self.store.lambda(id).await)
        else {
            return None;
        };
        // In progress: its process stopped renewing the lease, and this one took it over.
        let taken_over = match build.status {
            ImageStatus::Pending => false,
            ImageStatus::InProgress => true,
            _ => return None,
        };
        let started = Instant::now();
        let mut build = build;
        build.status = ImageStatus::InProgress;
        let store = self.store.clone();
        let save: SaveJob = Box::new(move |build| {
            let store = store.clone();
            Box::pin(async move { save_job(store.as_ref(), &build).await })
        });
        let mut job = BuildJob {
            saver: JobSaver::start(build.clone(), self.config.builds.max_log_lines, save),
            lifecycle: self,
            record: build,
            account: record.account_id,
        };
        let version = job.record.spec.version;
        let replica = if self.coordination.shared() {
            format!(" on replica {}", self.coordination.replica())
        } else {
            String::new()
        };
        if taken_over {
            job.log(&format!(
                "build taken over{replica}: the replica running it stopped renewing its lease; starting again"
            ));
            if job.record.spec.runtime == Runtime::Container
                && let Some(backends) = &self.containers
            {
                backends.deployer.retire(id, version).await;
            }
        }
        let started_line = format!(
            "build of version {version} started{replica} ({:?})",
            job.record.kind
        );
        job.log(&started_line);
        let timeout = Duration::from_secs(self.config.builds.timeout_secs);
        let outcome = match tokio::time::timeout(timeout, job.build()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // Pods the interrupted job may have started must not linger.
                if job.record.spec.runtime == Runtime::Container
                    && let Some(backends) = &self.containers
                {
                    backends.deployer.retire(id, version).await;
                }
                Err(BuildFailure::TimedOut(timeout.as_secs()))
            }
        };
        drop(slot);
        self.metrics
            .observe_build(outcome.is_ok(), started.elapsed());
        let BuildJob { record, saver, .. } = job;
        // The last line offered is saved before the outcome, never after it.
        saver.finish().await;
        Some((record, outcome, started))
    }

    async fn finish_build(
        &self,
        id: LambdaId,
        mut build: BuildRecord,
        outcome: Result<Served, BuildFailure>,
        started: Instant,
    ) {
        let guard = match self.lock_everywhere(id).await {
            Ok(guard) => guard,
            Err(e) => {
                // The lease runs out and another replica runs the job again.
                tracing::error!(lambda = %id, error = %e, "cannot lock the lambda to finish its build");
                return;
            }
        };
        // A job that failed before reading its upload leaves nothing kept.
        self.unstage(id);
        // Still this process's? (It may have stalled past its lease.)
        if !matches!(
            self.coordination.claim_build(id, self.build_lease()).await,
            Ok(true)
        ) {
            tracing::warn!(lambda = %id, "the build was taken over by another replica; its outcome here is dropped");
            return;
        }
        let Ok(Some(mut record)) = self.store.lambda(id).await else {
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
                        if let Some(backends) = &self.containers {
                            backends.deployer.retire_others(id, version).await;
                        }
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
                )
                .await;
                self.logs.line(id, &format!("version {version} is running"));
            }
            Err(reason) => {
                build.status = ImageStatus::Error;
                build.finished = Some(now());
                self.build_log(&mut build, &format!("build failed: {reason}"))
                    .await;
                if record.deployed {
                    let serving = record.current.version;
                    self.build_log(&mut build, &format!("version {serving} keeps serving"))
                        .await;
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
        if let Err(e) = self
            .store
            .save_lambda(&record, Some(&record.lambda_name))
            .await
        {
            tracing::error!(lambda = %id, error = %e, "cannot save lambda after build");
        }
        if let Err(e) = self.coordination.release_build(id).await {
            tracing::warn!(lambda = %id, error = %e, "cannot release the finished build's lease");
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

    /// Keeps an accepted upload for the build job of `version`, replacing one kept for an
    /// earlier job, unless that would pass `builds.max_staged_mb` in all.
    pub(super) fn stage(
        &self,
        id: LambdaId,
        version: Version,
        archive: bytes::Bytes,
        report: ArchiveReport,
    ) {
        self.unstage(id);
        let staged = Staged {
            version,
            archive,
            report,
        };
        let size = staged.size();
        let bound = usize::try_from(self.config.builds.max_staged_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX);
        let admitted = self
            .staged_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                total.checked_add(size).filter(|t| *t <= bound)
            })
            .is_ok();
        if admitted {
            self.staged.insert(id, staged);
        }
    }

    /// Takes back what was kept for the lambda's build job.
    pub(super) fn unstage(&self, id: LambdaId) -> Option<Staged> {
        let (_, staged) = self.staged.remove(&id)?;
        self.staged_bytes.fetch_sub(staged.size(), Ordering::AcqRel);
        Some(staged)
    }

    /// The archive of `spec` and what its check found: kept from the upload when its job
    /// is the one the upload queued, otherwise read back and checked again against the
    /// archive rules (a limit may have been lowered since the upload).
    pub(super) async fn checked_archive(
        &self,
        id: LambdaId,
        spec: &LambdaSpec,
    ) -> Result<(bytes::Bytes, ArchiveReport), BuildFailure> {
        if let Some(staged) = self.unstage(id)
            && staged.version == spec.version
        {
            return Ok((staged.archive, staged.report));
        }
        let bytes = self
            .archives
            .archive(&spec.archive_digest)
            .await
            .map_err(|source| BuildFailure::ArchiveUnreadable {
                digest: spec.archive_digest.clone(),
                source,
            })?;
        let limits = self.config.limits.clone();
        let inspected = bytes.clone();
        let report =
            tokio::task::spawn_blocking(move || builder::archive::inspect(&inspected, &limits))
                .await?;
        if !report.problems.is_empty() {
            return Err(BuildFailure::ArchiveRules(report.problems));
        }
        Ok((bytes, report))
    }

    /// `lambda.wasm` of `spec`'s archive, checked as `checked_archive` says.
    pub(super) async fn checked_wasm(
        &self,
        id: LambdaId,
        spec: &LambdaSpec,
    ) -> Result<Vec<u8>, BuildFailure> {
        self.checked_archive(id, spec)
            .await?
            .1
            .wasm
            .ok_or(BuildFailure::NoComponent)
    }

    /// `spec`'s version of a lambda from its compiled component (and its link, when the
    /// build's check made it).
    pub(super) fn load_version(
        &self,
        lambda_id: LambdaId,
        account_id: AccountId,
        spec: &LambdaSpec,
        component: &Component,
        prelinked: Option<Prelinked>,
    ) -> Result<Arc<LoadedLambda>, BuildFailure> {
        let credentials = self
            .sealer
            .unseal(&spec.credentials_sealed)
            .map_err(BuildFailure::Credentials)?;
        let sandbox = &self.config.sandbox;
        let env = GuestEnv {
            lambda_id,
            account_id,
            version: spec.version,
            lambda_type: spec.lambda_type,
            config: runtime::flatten_config(spec.parameters.config.as_ref(), Some(&credentials)),
            kv: self.kv.clone(),
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
        let limits = self.limits_for(&spec.deploy_parameters);
        let loaded = match prelinked {
            Some(prelinked) => {
                LoadedLambda::from_prelinked(&self.engine, component, prelinked, env, limits)
            }
            None => LoadedLambda::load(&self.engine, component, env, limits),
        }
        .map_err(BuildFailure::Link)?;
        Ok(Arc::new(loaded))
    }
    fn limits_for(&self, deploy: &SpecDeployParameters) -> SandboxLimits {
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
                .unwrap_or(defaults.max_concurrent_requests)
                .min(defaults.max_instances_per_lambda),
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
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::{LambdaType, Version};
    use crate::store::{BuildKind, SpecParameters};

    fn job_record() -> BuildRecord {
        BuildRecord {
            lambda_id: LambdaId::generate(),
            kind: BuildKind::Create,
            spec: LambdaSpec {
                version: Version::FIRST,
                lambda_type: LambdaType::Standalone,
                runtime: Runtime::Container,
                archive_digest: "00".into(),
                parameters: SpecParameters::default(),
                deploy_parameters: SpecDeployParameters::default(),
                credentials_sealed: vec![],
                wasm_digest: None,
                openapi: None,
            },
            status: ImageStatus::InProgress,
            created: chrono::Utc::now(),
            finished: None,
            logs: vec![],
        }
    }

    /// A build printing 20,000 lines as fast as it can (a large `pip install`) is saved a
    /// few times, not once per line, and the last save holds its newest lines.
    #[tokio::test]
    async fn a_chatty_build_is_saved_a_few_times_not_per_line() {
        let saves = Arc::new(Mutex::new(Vec::<BuildRecord>::new()));
        let seen = saves.clone();
        let save: SaveJob = Box::new(move |record| {
            seen.lock().unwrap().push(record);
            Box::pin(async {
                // A save of a large record takes a while.
                tokio::time::sleep(Duration::from_millis(20)).await;
            })
        });
        let saver = JobSaver::start(job_record(), 1000, save);
        let started = Instant::now();
        for n in 0..20_000 {
            saver.offer(&format!("line {n}"));
            if n % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        saver.finish().await;
        let saves = saves.lock().unwrap();
        let bound = 2 + started.elapsed().as_millis() / JOB_SAVE_INTERVAL.as_millis();
        assert!(
            (saves.len() as u128) <= bound,
            "{} saves for 20,000 lines (bound {bound})",
            saves.len()
        );
        let last = saves.last().expect("saved at least once");
        assert_eq!(last.logs.len(), 1000);
        assert_eq!(
            (
                last.logs.first().unwrap().as_str(),
                last.logs.last().unwrap().as_str()
            ),
            ("line 19000", "line 19999")
        );
    }

    /// A single line is saved at once: the image logs show a build's start without a
    /// wait.
    #[tokio::test]
    async fn the_first_line_is_saved_at_once() {
        let (saved, mut on_save) = mpsc::unbounded_channel::<BuildRecord>();
        let save: SaveJob = Box::new(move |record| {
            let _ = saved.send(record);
            Box::pin(async {})
        });
        let saver = JobSaver::start(job_record(), 10, save);
        saver.offer("build started");
        let first = tokio::time::timeout(Duration::from_secs(5), on_save.recv())
            .await
            .expect("saved without waiting for more lines or the end")
            .unwrap();
        assert_eq!(first.logs, ["build started"]);
        saver.finish().await;
    }
}
