//! The lifecycle's commands: validate, create, recreate, update, patch, delete. Each
//! checks what it is given, changes the store under the lambda's lock and queues the
//! build job; none waits for a build.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Lifecycle, LifecycleError, Result, Upload, now, stamp};
use crate::builder::{self, UploadCheck};
use crate::model::{
    AccountId, DeployParameters, ImageStatus, LambdaId, LambdaName, LambdaStatus, Parameters,
    Runtime, Version,
};
use crate::store::{
    BuildKind, BuildRecord, LambdaRecord, LambdaSpec, NameTaken, SpecDeployParameters,
    SpecParameters,
};

/// One running validation of a caller: counted until dropped.
struct RunningValidate {
    counts: Arc<std::sync::Mutex<HashMap<Option<AccountId>, usize>>>,
    caller: Option<AccountId>,
}

impl Drop for RunningValidate {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

impl Lifecycle {
    /// Counts a validation of `caller`'s, or refuses it past
    /// `builds.max_validates_per_account`: one caller's flood of compile-heavy validations
    /// cannot hold every build slot.
    fn start_validate(&self, caller: Option<AccountId>) -> Result<RunningValidate> {
        let limit = self.config.builds.max_validates_per_account;
        let mut counts = self
            .validates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = counts.entry(caller).or_default();
        if *running >= limit {
            return Err(LifecycleError::ValidatesBusy {
                account: caller,
                limit,
            });
        }
        *running += 1;
        Ok(RunningValidate {
            counts: self.validates.clone(),
            caller,
        })
    }

    /// Checks an upload without storing anything: every problem, including the
    /// component's (compiled, then its artifact dropped unless a lambda already uses it).
    pub async fn validate(
        &self,
        caller: Option<AccountId>,
        parameters: Parameters,
        archive: bytes::Bytes,
    ) -> Result<Vec<String>> {
        let _running = self.start_validate(caller)?;
        let config = self.config.clone();
        let engine = self.engine.clone();
        // Validation compiles like a build: it waits for a build slot, so a flood of
        // validate calls cannot take every core from the builds and requests.
        let _slot = self
            .build_slots
            .acquire()
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?;
        let (problems, compiled) = tokio::task::spawn_blocking(move || {
            let check = builder::check_upload(
                &config,
                &parameters,
                &DeployParameters::default(),
                &archive,
                true,
            );
            if check.no_container_backend {
                return Err(LifecycleError::NoContainerBackend);
            }
            let mut problems = check.problems;
            if problems.is_empty()
                && let Some(wasm) = &check.archive.wasm
            {
                let lambda_type = parameters.lambda_type.unwrap_or_default();
                let component = builder::wasm::check_component(&engine, wasm, lambda_type);
                problems.extend(component.problems);
                let artifacts = component.compiled.map(|c| c.artifacts).unwrap_or_default();
                return Ok((problems, Some((builder::digest(wasm), artifacts))));
            }
            Ok((problems, None))
        })
        .await
        .map_err(|e| LifecycleError::Task(e.to_string()))??;
        if let Some((digest, artifacts)) = compiled {
            // Recorded, then collected at once: validation must not grow the cache, and
            // what a lambda already uses stays.
            self.store.add_artifacts(&digest, &artifacts).await?;
            self.collect_garbage(&[], std::slice::from_ref(&digest))
                .await?;
        }
        Ok(problems)
    }

    async fn check(&self, upload: &Upload, name_required: bool) -> Result<UploadCheck> {
        let config = self.config.clone();
        let (parameters, deploy, archive) = (
            upload.parameters.clone(),
            upload.deploy_parameters.clone(),
            upload.archive.clone(),
        );
        // Inflating and parsing an archive is CPU and memory: a burst of uploads is
        // checked a few at a time (in turn), not all at once.
        let _slot = self
            .check_slots
            .acquire()
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?;
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
        // Hashing a large archive takes milliseconds: not on an async worker.
        let hashed = archive.clone();
        let digest = tokio::task::spawn_blocking(move || builder::digest(&hashed))
            .await
            .map_err(|e| LifecycleError::Task(e.to_string()))?;
        self.archives.put_archive(&digest, archive).await?;
        Ok(digest)
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
            parameters: SpecParameters::from(&upload.parameters),
            deploy_parameters: SpecDeployParameters::from(&upload.deploy_parameters),
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
        self.store
            .save_build(&BuildRecord {
                lambda_id: id,
                kind: BuildKind::Create,
                spec,
                status: ImageStatus::Pending,
                created: now(),
                finished: None,
                logs: vec![stamp("build queued: lambda created")],
            })
            .await?;
        let accepted = match self.store.save_lambda(&record, None).await {
            Ok(Ok(())) => self.store.flush().await.map_err(LifecycleError::from),
            Ok(Err(_)) => Err(LifecycleError::NameTaken(name.clone())),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = accepted {
            // A create the client is told failed must leave nothing listed: a name clash,
            // or a store that cannot make it durable (a full disk fails the flush after
            // the in-memory write).
            let _ = self.store.undo_create(&record).await;
            drop(_no_gc);
            let _ = self
                .collect_garbage(&[record.current.archive_digest], &[])
                .await;
            return Err(e);
        }
        tracing::info!(lambda = %id, account = %account, name = %name, "lambda created");
        self.stage(id, Version::FIRST, upload.archive, check.archive);
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
        let (_guard, mut record) = self.locked(id, Some(account)).await?;
        let next = self.next_version(&record).await?;
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
        self.save_renamed(&record, &old_name).await?;
        let replaced = self
            .queue_build(
                &record,
                BuildKind::Recreate,
                spec,
                "build queued: lambda recreated",
            )
            .await?;
        self.store.flush().await?;
        tracing::info!(lambda = %id, version = %next, "lambda recreate accepted");
        self.stage(id, next, upload.archive, check.archive);
        self.spawn_build(id);
        drop(_no_gc);
        self.collect_spec_garbage(replaced).await?;
        Ok(next)
    }

    /// Rebuilds the current archive and parameters on the current engine.
    pub async fn update(self: &Arc<Self>, account: AccountId, id: LambdaId) -> Result<Version> {
        let (_guard, mut record) = self.locked(id, Some(account)).await?;
        let next = self.next_version(&record).await?;
        let mut spec = record.current.clone();
        spec.version = next;
        record.last_update_time = now();
        if !record.deployed {
            record.status = LambdaStatus::Waiting;
        }
        let replaced = self
            .queue_build(
                &record,
                BuildKind::Update,
                spec,
                "build queued: lambda update",
            )
            .await?;
        let _ = self
            .store
            .save_lambda(&record, Some(&record.lambda_name))
            .await?;
        self.store.flush().await?;
        tracing::info!(lambda = %id, version = %next, "lambda update accepted");
        self.spawn_build(id);
        self.collect_spec_garbage(replaced).await?;
        Ok(next)
    }

    async fn next_version(&self, record: &LambdaRecord) -> Result<Version> {
        let last_built = match self.store.build(record.lambda_id).await? {
            Some(build) if !build.status.is_finished() => {
                return Err(LifecycleError::BuildInProgress(record.lambda_id));
            }
            Some(build) => build.spec.version,
            None => record.current.version,
        };
        Ok(last_built.max(record.current.version).next())
    }

    /// Saves a pending build job; returns the spec of the job it replaces.
    async fn queue_build(
        &self,
        record: &LambdaRecord,
        kind: BuildKind,
        spec: LambdaSpec,
        why: &str,
    ) -> Result<Option<LambdaSpec>> {
        let replaced = self.store.build(record.lambda_id).await?.map(|b| b.spec);
        self.store
            .save_build(&BuildRecord {
                lambda_id: record.lambda_id,
                kind,
                spec,
                status: ImageStatus::Pending,
                created: now(),
                finished: None,
                logs: vec![stamp(why)],
            })
            .await?;
        Ok(replaced)
    }

    /// Saves a changed lambda whose name was `old_name`; the new name must be free.
    async fn save_renamed(&self, record: &LambdaRecord, old_name: &str) -> Result<()> {
        match self.store.save_lambda(record, Some(old_name)).await? {
            Ok(()) => Ok(()),
            Err(NameTaken) => Err(LifecycleError::NameTaken(record.lambda_name.clone())),
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
        let (_guard, mut record) = self.locked(id, Some(account)).await?;
        let old_name = record.lambda_name.clone();
        if let Some(name) = name {
            record.lambda_name = name.as_str().to_owned();
        }
        if let Some(d) = description {
            record.description = d;
        }
        record.last_update_time = now();
        self.save_renamed(&record, &old_name).await?;
        self.store.flush().await?;
        Ok(())
    }

    /// Stops serving at once and removes everything the lambda owns.
    pub async fn delete(&self, account: Option<AccountId>, id: LambdaId) -> Result<()> {
        let (guard, record) = self.locked(id, account).await?;
        self.registry.remove(id);
        if let Some((_, job)) = self.jobs.remove(&id) {
            job.abort();
        }
        self.unstage(id);
        let build = self.store.build(id).await?;
        self.store.delete_lambda(&record).await?;
        // Requests still finishing may have queued lines: let the writer drain them
        // (it skips deleted lambdas from now on), then sweep once more.
        let logs = self.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.flush(Duration::from_secs(1))).await;
        self.store.delete_logs(id).await?;
        self.store.kv_delete_namespace(id).await?;
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
}
