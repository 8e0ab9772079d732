//! Recovery after a restart: builds that died with the process end `error` (on a store
//! replicas share, the job is taken over instead once its lease runs out), deployed
//! versions serve again (WASM from the artifact cache, containers re-attached), and
//! files and pods nothing references are removed.

use std::collections::HashSet;
use std::sync::Arc;

use super::build::BuildFailure;
use super::{Lifecycle, Result, Served, now};
use crate::builder;
use crate::model::{ImageStatus, LambdaId, LambdaStatus, Runtime};
use crate::runtime::LoadedLambda;
use crate::store::LambdaRecord;

impl Lifecycle {
    /// After a restart: builds that died with the process end `error` (a sole process);
    /// deployed versions serve again (WASM from the compilation cache, no
    /// recompilation; a shared store's container lambdas are attached by `replicas`).
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        // Archives and artifacts no record adopted (a crash between writing the file
        // and the record, a name clash, validate-only compiles) are removed.
        let archives = self.archives.archive_digests().await?;
        let components = self.store.artifact_digests().await?;
        self.collect_garbage(&archives, &components).await?;
        let shared = self.coordination.shared();
        if !shared {
            self.end_interrupted_builds().await?;
        }
        let mut loaded = 0usize;
        for mut record in self.store.lambdas().await? {
            if !record.deployed {
                continue;
            }
            let id = record.lambda_id;
            let served = match record.current.runtime {
                Runtime::Wasm => self.reload(&record).await.map(Served::Wasm),
                // On a shared store the leader's pods are attached by `replicas`.
                Runtime::Container if shared => continue,
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
                        let _ = self
                            .store
                            .save_lambda(&record, Some(&record.lambda_name))
                            .await?;
                    }
                }
                Err(reason) => {
                    tracing::error!(lambda = %id, %reason, "cannot reload lambda");
                    self.logs
                        .line(id, &format!("reload after restart failed: {reason}"));
                    // Other replicas may serve it: only a sole process marks it failed.
                    if !shared {
                        record.status = LambdaStatus::Failed;
                        let _ = self
                            .store
                            .save_lambda(&record, Some(&record.lambda_name))
                            .await?;
                    }
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

    /// A sole process's builds that died with it end `error`, and the pods of lambdas
    /// deleted meanwhile go.
    async fn end_interrupted_builds(&self) -> Result<()> {
        let known: HashSet<LambdaId> = self
            .store
            .lambdas()
            .await?
            .iter()
            .map(|r| r.lambda_id)
            .collect();
        self.remove_orphan_pods(&known).await;
        for mut build in self.store.builds().await? {
            if build.status.is_finished() {
                continue;
            }
            if build.spec.runtime == Runtime::Container
                && let Some(backends) = &self.containers
            {
                backends
                    .deployer
                    .retire(build.lambda_id, build.spec.version)
                    .await;
            }
            build.status = ImageStatus::Error;
            build.finished = Some(now());
            self.build_log(
                &mut build,
                "build failed: the service stopped while this build was running; recreate or update the lambda to build again",
            )
            .await;
            if let Some(mut record) = self.store.lambda(build.lambda_id).await?
                && !record.deployed
            {
                record.status = LambdaStatus::Failed;
                let _ = self
                    .store
                    .save_lambda(&record, Some(&record.lambda_name))
                    .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn reload(
        &self,
        record: &LambdaRecord,
    ) -> Result<Arc<LoadedLambda>, BuildFailure> {
        let spec = &record.current;
        if let Some(wasm_digest) = &spec.wasm_digest
            && let Some(shared) = self.components.get(wasm_digest).map(|c| c.clone())
        {
            return self.load_version(record.lambda_id, record.account_id, spec, &shared, None);
        }
        let wasm = self.checked_wasm(record.lambda_id, spec).await?;
        let engine = self.engine.clone();
        let (wasm_digest, compiled) = tokio::task::spawn_blocking(move || {
            let compiled = engine.compile(&wasm).map_err(BuildFailure::Compile)?;
            Ok::<_, BuildFailure>((builder::digest(&wasm), compiled))
        })
        .await??;
        if !compiled.cache_hit {
            tracing::warn!(lambda = %record.lambda_id, "component not in this data directory's artifact cache: compiled");
        }
        self.store
            .add_artifacts(&wasm_digest, &compiled.artifacts)
            .await
            .map_err(BuildFailure::Artifact)?;
        self.components
            .insert(wasm_digest, compiled.component.clone());
        self.load_version(
            record.lambda_id,
            record.account_id,
            spec,
            &compiled.component,
            None,
        )
    }
}
