//! The container half of the lifecycle, backend-neutral: a container version's build
//! context, its image (through the `ImageBuilder`) and its pods (through the
//! `Deployer`), pod statuses and logs, re-attaching after a restart, removal. Which
//! engine or cluster runs the pods is decided where the backends are built, never here.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::build::{BuildFailure, BuildJob};
use super::deploy::{DeployError, PodRequest, PodState};
use super::{ContainerBackends, Lifecycle, LifecycleError};
use crate::builder;
use crate::model::{
    AccountId, Endpoint, LambdaId, LambdaStatus, Parameters, Resources, Runtime, Version,
};
use crate::runtime::PodSet;
use crate::store::{LambdaRecord, LambdaSpec};

/// Longest a logs read waits for the log writer to store what is queued.
const LOG_READ_FLUSH_WAIT: Duration = Duration::from_secs(1);

impl BuildJob<'_> {
    /// Builds (or finds) the image of the job's version, then deploys its pods; the
    /// serving version keeps serving until they are ready.
    pub(super) async fn build_container(&mut self) -> Result<Arc<PodSet>, BuildFailure> {
        let lifecycle = self.lifecycle;
        let backends = lifecycle.backends()?;
        let spec = self.record.spec.clone();
        let (id, version, account) = (self.record.lambda_id, spec.version, self.account);
        let (archive, _) = lifecycle.checked_archive(id, &spec).await?;
        let (digest, parameters, default_base, limits) = (
            spec.archive_digest.clone(),
            Parameters::from(&spec.parameters),
            lifecycle.config.containers.base_image.clone(),
            lifecycle.config.limits.clone(),
        );
        let context = tokio::task::spawn_blocking(move || {
            builder::container::build_context(
                &archive,
                &digest,
                account,
                &parameters,
                &default_base,
                &limits,
            )
        })
        .await?
        .map_err(BuildFailure::BuildContext)?;
        // The build key is not shown: it names the image cache entry.
        self.log(&format!(
            "build context ready: {} bytes, {}",
            context.tar.len(),
            context.base_image.as_ref().map_or_else(
                || "the archive's own Dockerfile".to_owned(),
                |b| format!("generated Dockerfile on base image {b}")
            ),
        ));
        if let Some(deps) = &context.deps_dockerfile {
            for line in deps.lines().filter(|l| !l.trim().is_empty()) {
                self.log(&format!("Dockerfile.deps: {line}"));
            }
        }
        for line in context.dockerfile.lines().filter(|l| !l.trim().is_empty()) {
            self.log(&format!("Dockerfile: {line}"));
        }
        let build_key = context.build_key.clone();
        let reuse = lifecycle
            .store
            .built_image(&build_key)
            .await
            .map_err(BuildFailure::ImageRecord)?;
        let built = backends
            .images
            .build(id, version, context, reuse.as_deref(), &mut |line| {
                self.log(line)
            })
            .await?;
        if reuse.as_deref() != Some(built.image_id.as_str()) {
            lifecycle
                .store
                .record_built_image(&build_key, &built.image_id)
                .await
                .map_err(BuildFailure::ImageRecord)?;
        }
        let image = built.reference;
        let request = lifecycle.pod_request(id, account, &spec, image)?;
        let previous = match lifecycle.serving_container_spec(id).await {
            Some(serving) if serving.version != version => {
                let image = backends.images.image(id, serving.version);
                Some(lifecycle.pod_request(id, account, &serving, image)?)
            }
            _ => None,
        };
        let endpoints = backends
            .deployer
            .deploy(&request, previous.as_ref(), &mut |line| self.log(line))
            .await?;
        Ok(lifecycle.pod_set(id, account, version, endpoints))
    }
}

impl Lifecycle {
    /// The container backends, or the failure of a container build without them.
    fn backends(&self) -> Result<&ContainerBackends, BuildFailure> {
        self.containers
            .as_ref()
            .ok_or(BuildFailure::NoContainerBackend)
    }

    fn pod_set(
        &self,
        id: LambdaId,
        account: AccountId,
        version: Version,
        endpoints: Vec<Endpoint>,
    ) -> Arc<PodSet> {
        Arc::new(PodSet::new(
            id,
            account,
            version,
            endpoints,
            self.metrics.for_lambda(id),
        ))
    }

    /// What a backend needs to run `spec`'s pods from `image`: the config and the
    /// unsealed credentials as the JSON the runner reads.
    fn pod_request(
        &self,
        id: LambdaId,
        account: AccountId,
        spec: &LambdaSpec,
        image: String,
    ) -> Result<PodRequest, BuildFailure> {
        let credentials = self
            .sealer
            .unseal(&spec.credentials_sealed)
            .map_err(BuildFailure::Credentials)?;
        let config = serde_json::to_string(&spec.parameters.config.clone().unwrap_or_default())
            .map_err(BuildFailure::PodSettings)?;
        let credentials = serde_json::to_string(&credentials).map_err(BuildFailure::PodSettings)?;
        let deploy = &spec.deploy_parameters;
        Ok(PodRequest {
            lambda_id: id,
            account_id: account,
            version: spec.version,
            lambda_type: spec.lambda_type,
            namespace: deploy.namespace().to_owned(),
            image,
            pod_count: deploy.pod_count.unwrap_or(1),
            workers: spec.parameters.workers.unwrap_or(1),
            resources: deploy.resources.as_ref().map(Resources::from),
            gpu: deploy.gpu_enabled == Some(1),
            selector: deploy.selector.clone().unwrap_or_default(),
            config_json: config,
            credentials_json: credentials,
        })
    }

    /// The spec of the container version that serves now, if one does.
    async fn serving_container_spec(&self, id: LambdaId) -> Option<LambdaSpec> {
        let record = self.store.lambda(id).await.ok()??;
        (record.deployed && record.current.runtime == Runtime::Container).then_some(record.current)
    }

    /// Everything a lambda had with the container backends: its pods (in each of
    /// `namespaces`) and its images.
    pub(super) async fn remove_container_resources(&self, id: LambdaId, namespaces: &[&str]) {
        let Some(backends) = &self.containers else {
            return;
        };
        backends.deployer.remove(id, namespaces).await;
        match backends.images.remove_images(id).await {
            Ok(n) => tracing::info!(lambda = %id, tags = n, "lambda images removed"),
            Err(e) => {
                tracing::error!(lambda = %id, error = %e, "cannot remove the lambda's images")
            }
        }
    }

    /// The pods of the serving version, in pod order.
    async fn serving_pods(&self, record: &LambdaRecord) -> Result<Vec<PodState>, LifecycleError> {
        let Some(backends) = &self.containers else {
            return Ok(Vec::new());
        };
        backends
            .deployer
            .pods(
                record.lambda_id,
                record.current.deploy_parameters.namespace(),
                record.current.version,
            )
            .await
            .map_err(LifecycleError::Deploy)
    }

    /// The lambda's status as the engine or cluster sees it and the state of each pod of
    /// the serving version. A running container lambda whose pods all stopped is
    /// `terminated`.
    pub async fn live_status(
        &self,
        record: &LambdaRecord,
    ) -> (LambdaStatus, BTreeMap<String, String>) {
        let single =
            |status: LambdaStatus| BTreeMap::from([("0".to_owned(), status.as_str().to_owned())]);
        if record.current.runtime != Runtime::Container || !record.deployed {
            return (record.status, single(record.status));
        }
        let pods = match self.serving_pods(record).await {
            Ok(pods) => pods,
            Err(e) => {
                tracing::warn!(lambda = %record.lambda_id, error = %e, "cannot read pod states");
                return (record.status, single(record.status));
            }
        };
        let alive = pods.iter().any(PodState::is_alive);
        let status = if record.status == LambdaStatus::Running && !alive {
            LambdaStatus::Terminated
        } else {
            record.status
        };
        if pods.is_empty() {
            return (status, single(status));
        }
        let states = pods
            .into_iter()
            .enumerate()
            .map(|(i, pod)| (i.to_string(), pod.state))
            .collect();
        (status, states)
    }

    /// Per pod, the newest `tail` lines of the serving version's pods; the service's own
    /// lines about the lambda when it has no pods.
    pub async fn pod_logs(
        &self,
        record: &LambdaRecord,
        tail: Option<u64>,
    ) -> Result<BTreeMap<String, Vec<String>>, LifecycleError> {
        let (Runtime::Container, Some(backends)) = (record.current.runtime, &self.containers)
        else {
            // Read your writes: the lines of calls that have already been answered may
            // still wait in the log writer's batch window.
            let logs = self.logs.clone();
            let _ = tokio::task::spawn_blocking(move || logs.flush(LOG_READ_FLUSH_WAIT)).await;
            return self.service_lines(record, tail).await;
        };
        let pods = match self.serving_pods(record).await {
            Ok(pods) if !pods.is_empty() => pods,
            Ok(_) => return self.service_lines(record, tail).await,
            Err(e) => {
                tracing::warn!(lambda = %record.lambda_id, error = %e, "cannot read pod logs");
                return self.service_lines(record, tail).await;
            }
        };
        let cap = self.config.containers.max_log_lines_per_pod;
        let lines = tail.map_or(cap, |t| usize::try_from(t).unwrap_or(usize::MAX).min(cap));
        let namespace = record.current.deploy_parameters.namespace();
        let mut out = BTreeMap::new();
        for (index, pod) in pods.iter().enumerate() {
            let text = if lines == 0 {
                Vec::new()
            } else {
                let max_bytes = self.config.containers.max_log_bytes_per_pod;
                let read = backends
                    .deployer
                    .logs(namespace, &pod.name, lines, max_bytes);
                let line_cap = self.config.logs.max_line_bytes;
                read.await
                    .map_err(LifecycleError::Deploy)?
                    .iter()
                    .map(|line| crate::model::bounded_line(line, line_cap))
                    .collect()
            };
            out.insert(index.to_string(), text);
        }
        Ok(out)
    }

    /// The service's own lines about the lambda (a WASM lambda's, or a container
    /// lambda's without pods).
    async fn service_lines(
        &self,
        record: &LambdaRecord,
        tail: Option<u64>,
    ) -> Result<BTreeMap<String, Vec<String>>, LifecycleError> {
        let lines = self.store.tail_logs(record.lambda_id, tail).await?;
        Ok(BTreeMap::from([("0".to_owned(), lines)]))
    }

    /// After a restart: the serving version's pods serve again (what still runs of them
    /// is used as it is; the backend starts again what does not).
    pub(super) async fn reattach(
        &self,
        record: &LambdaRecord,
    ) -> Result<Arc<PodSet>, BuildFailure> {
        let backends = self.backends()?;
        let (id, version, account) = (record.lambda_id, record.current.version, record.account_id);
        let image = backends.images.image(id, version);
        let request = self.pod_request(id, account, &record.current, image)?;
        let endpoints = backends
            .deployer
            .reattach(&request, &mut |line| {
                tracing::info!(lambda = %id, "{line}");
                self.logs.line(id, line);
            })
            .await?;
        Ok(self.pod_set(id, account, version, endpoints))
    }

    /// The running pods of the serving version, as they are (a replica that does not
    /// lead changes no pod).
    pub(super) async fn attach(&self, record: &LambdaRecord) -> Result<Arc<PodSet>, BuildFailure> {
        let backends = self.backends()?;
        let (id, version, account) = (record.lambda_id, record.current.version, record.account_id);
        let image = backends.images.image(id, version);
        let request = self.pod_request(id, account, &record.current, image)?;
        let endpoints = backends.deployer.endpoints(&request).await?;
        if endpoints.is_empty() {
            return Err(BuildFailure::Deploy(DeployError::NoPodsYet(version)));
        }
        Ok(self.pod_set(id, account, version, endpoints))
    }

    /// Pods of lambdas not among `known` (deleted while the service was down) are
    /// removed.
    pub(super) async fn remove_orphan_pods(&self, known: &HashSet<LambdaId>) {
        let Some(backends) = &self.containers else {
            return;
        };
        backends
            .deployer
            .remove_orphans(&|id| known.contains(&id))
            .await;
    }
}
