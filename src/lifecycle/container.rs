//! The container half of the lifecycle: building a container lambda's image through the
//! Docker engine (build log streamed into the image logs, cache by build key, push),
//! running it on Docker (pods started and health-waited here, rolled from one version's
//! pods to the next) or on Kubernetes (Deployment + Service applied, rollout waited,
//! rolled back on failure), pod statuses and logs, re-attaching after a restart, removal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Lifecycle, LifecycleError};
use crate::builder;
use crate::docker::{DockerEngine, Pod, PodSpec};
use crate::k8s::{KubeBackend, LambdaDeployment};
use crate::model::{AccountId, LambdaId, LambdaStatus, Runtime, Version};
use crate::runtime::PodSet;
use crate::store::{BuildRecord, LambdaRecord, LambdaSpec};

/// Pause between two health probes of a starting pod.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a failed pod's output quoted in the build log.
const FAILED_POD_LOG_LINES: usize = 20;
/// Longest a logs read waits for the log writer to store what is queued.
const LOG_READ_FLUSH_WAIT: Duration = Duration::from_secs(1);

impl Lifecycle {
    fn docker(&self) -> std::result::Result<&DockerEngine, String> {
        self.docker
            .as_ref()
            .ok_or_else(|| builder::NO_CONTAINER_BACKEND.to_owned())
    }

    /// Builds (or finds) the image of `build`'s spec, pushes it, starts its pods and
    /// waits until every one answers `/healthcheck`.
    pub(super) async fn build_container(
        &self,
        build: &mut BuildRecord,
        account: AccountId,
    ) -> std::result::Result<Arc<PodSet>, String> {
        let docker = self.docker()?.clone();
        let id = build.lambda_id;
        let version = build.spec.version;
        let archive = self.stored_archive(&build.spec.archive_digest).await?;
        let (digest, parameters, default_base, limits) = (
            build.spec.archive_digest.clone(),
            build.spec.parameters.clone(),
            self.config.containers.base_image.clone(),
            self.config.limits.clone(),
        );
        let context = tokio::task::spawn_blocking(move || {
            builder::container::build_context(
                &archive,
                &digest,
                &parameters,
                &default_base,
                &limits,
            )
        })
        .await
        .map_err(|e| format!("internal: {e}"))??;
        self.build_log(
            build,
            &format!(
                "build context ready: {} bytes, {}; build key {}",
                context.tar.len(),
                context.base_image.as_ref().map_or_else(
                    || "the archive's own Dockerfile".to_owned(),
                    |b| format!("generated Dockerfile on base image {b}")
                ),
                context.build_key
            ),
        );
        for line in context.dockerfile.lines().filter(|l| !l.trim().is_empty()) {
            self.build_log(build, &format!("Dockerfile: {line}"));
        }
        let repository = docker.repository(id);
        let tag = version.to_string();
        let reference = docker.image(id, version);
        let started = Instant::now();
        match docker
            .image_with_key(&context.build_key)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(image) => {
                docker
                    .tag(&image, &repository, &tag)
                    .await
                    .map_err(|e| e.to_string())?;
                self.build_log(
                    build,
                    &format!("image cache hit: {image} was built from the same archive and Dockerfile; tagged {reference}, no build"),
                );
            }
            None => {
                self.build_log(build, &format!("building image {reference} (cache miss)"));
                let result = docker
                    .build(context.tar, &reference, &context.build_key, |line| {
                        self.build_log(build, line);
                    })
                    .await;
                result.map_err(|e| e.to_string())?;
                self.build_log(
                    build,
                    &format!(
                        "image {reference} built in {} ms",
                        started.elapsed().as_millis()
                    ),
                );
            }
        }
        if docker.pushes() {
            let pushed = Instant::now();
            self.build_log(build, &format!("pushing {reference}"));
            let result = docker
                .push(&repository, &tag, |line| {
                    self.build_log(build, &format!("push: {line}"))
                })
                .await;
            result.map_err(|e| e.to_string())?;
            self.build_log(
                build,
                &format!("pushed {reference} in {} ms", pushed.elapsed().as_millis()),
            );
        }
        let spec = build.spec.clone();
        if let Some(kube) = self.kube.clone() {
            let endpoint = self
                .deploy_kube(&kube, id, account, &spec, &reference, |line| {
                    self.build_log(build, line);
                })
                .await?;
            return Ok(self.pod_set(id, account, version, vec![endpoint]));
        }
        let pods = self
            .start_pods(&docker, id, account, &spec, &reference, |line| {
                self.build_log(build, line);
            })
            .await?;
        Ok(self.pod_set(id, account, version, addresses(&pods)))
    }

    fn pod_set(
        &self,
        id: LambdaId,
        account: AccountId,
        version: Version,
        endpoints: Vec<SocketAddr>,
    ) -> Arc<PodSet> {
        Arc::new(PodSet::new(
            id,
            account,
            version,
            endpoints,
            self.metrics.for_lambda(id),
        ))
    }

    /// The lambda's config and credentials as the JSON its pods read from the environment.
    fn pod_settings(&self, spec: &LambdaSpec) -> std::result::Result<(String, String), String> {
        let credentials = self
            .sealer
            .unseal(&spec.credentials_sealed)
            .map_err(|e| format!("cannot unseal the lambda's credentials: {e}"))?;
        let config = serde_json::to_string(&spec.parameters.config.clone().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let credentials = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
        Ok((config, credentials))
    }

    fn kube_deployment(
        &self,
        kube: &KubeBackend,
        id: LambdaId,
        account: AccountId,
        spec: &LambdaSpec,
        image: &str,
    ) -> std::result::Result<LambdaDeployment, String> {
        let (config_json, credentials_json) = self.pod_settings(spec)?;
        let deploy = &spec.deploy_parameters;
        Ok(LambdaDeployment {
            lambda_id: id,
            account_id: account,
            version: spec.version,
            lambda_type: spec.lambda_type,
            namespace: deploy.namespace().to_owned(),
            image: image.to_owned(),
            pod_count: deploy.pod_count.unwrap_or(1),
            workers: spec.parameters.workers.unwrap_or(1),
            resources: deploy.resources.clone(),
            gpu: deploy.gpu_enabled == Some(1),
            selector: deploy.selector.clone().unwrap_or_default(),
            config_json,
            credentials_json,
            service_port: kube.service_port(),
        })
    }

    /// The spec of the container version that serves now, if one does.
    fn serving_container_spec(&self, id: LambdaId) -> Option<LambdaSpec> {
        let record = self.store.lambda(id).ok()??;
        (record.deployed && record.current.runtime == Runtime::Container).then_some(record.current)
    }

    /// Applies `spec`'s objects and waits for the rollout; returns the Service's address.
    /// A failed rollout is rolled back to the serving version (or removed when nothing
    /// served yet); a version that moved to another namespace leaves the old one empty.
    async fn deploy_kube(
        &self,
        kube: &KubeBackend,
        id: LambdaId,
        account: AccountId,
        spec: &LambdaSpec,
        image: &str,
        mut progress: impl FnMut(&str),
    ) -> std::result::Result<SocketAddr, String> {
        let deployment = self.kube_deployment(kube, id, account, spec, image)?;
        let namespace = deployment.namespace.clone();
        progress(&format!(
            "applying Secret, Service and Deployment luna-lambda-{id} in namespace {namespace}: {} replica(s) of {image}",
            deployment.pod_count
        ));
        kube.apply(&deployment).await.map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(self.config.containers.start_timeout_secs);
        let previous = self
            .serving_container_spec(id)
            .filter(|p| p.version != spec.version);
        if let Err(e) = kube
            .wait_rolled_out(&namespace, id, deployment.pod_count, timeout, &mut progress)
            .await
        {
            match &previous {
                Some(prev) if prev.deploy_parameters.namespace() == namespace => {
                    let image = self.docker()?.image(id, prev.version);
                    let restore = self.kube_deployment(kube, id, account, prev, &image)?;
                    match kube.apply(&restore).await {
                        Ok(()) => progress(&format!("rolled back to version {}", prev.version)),
                        Err(r) => {
                            progress(&format!("rollback to version {} failed: {r}", prev.version))
                        }
                    }
                }
                _ => {
                    if let Err(r) = kube.delete(&namespace, id).await {
                        progress(&format!("cannot remove the failed deployment: {r}"));
                    }
                }
            }
            return Err(e.to_string());
        }
        let endpoint = kube
            .endpoint(&namespace, id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("Service luna-lambda-{id} has no cluster IP"))?;
        if let Some(prev) = previous
            && prev.deploy_parameters.namespace() != namespace
            && let Err(e) = kube.delete(prev.deploy_parameters.namespace(), id).await
        {
            progress(&format!(
                "cannot remove the previous namespace's objects: {e}"
            ));
        }
        progress(&format!(
            "rollout complete: Service luna-lambda-{id} at {endpoint}"
        ));
        Ok(endpoint)
    }

    /// Starts `spec`'s pods from `image` and waits for their health; on failure the
    /// new pods are removed again and the reason quotes their output.
    async fn start_pods(
        &self,
        docker: &DockerEngine,
        id: LambdaId,
        account: AccountId,
        spec: &LambdaSpec,
        image: &str,
        mut progress: impl FnMut(&str),
    ) -> std::result::Result<Vec<Pod>, String> {
        let (config, credentials) = self.pod_settings(spec)?;
        let pod_spec = PodSpec {
            lambda_id: id,
            version: spec.version,
            image: image.to_owned(),
            pod_count: spec.deploy_parameters.pod_count.unwrap_or(1),
            env: vec![
                format!("LAMBDA_ID={id}"),
                format!("LAMBDA_VERSION={}", spec.version),
                format!("LUNA_ACCOUNT_ID={account}"),
                format!("LUNA_LAMBDA_TYPE={}", spec.lambda_type.as_str()),
                format!("WORKERS={}", spec.parameters.workers.unwrap_or(1)),
                format!("LUNA_LAMBDA_CONFIG={config}"),
                format!("LUNA_LAMBDA_CREDENTIALS={credentials}"),
            ],
            resources: spec.deploy_parameters.resources.clone(),
            gpu: spec.deploy_parameters.gpu_enabled == Some(1),
        };
        progress(&format!(
            "starting {} pod(s) of version {} from {image}",
            pod_spec.pod_count, spec.version
        ));
        let pods = match docker.run(&pod_spec).await {
            Ok(pods) => pods,
            Err(e) => {
                self.retire_pods(id, Retire::Only(spec.version)).await;
                return Err(e.to_string());
            }
        };
        let timeout = Duration::from_secs(self.config.containers.start_timeout_secs);
        let waits = pods.iter().map(|pod| wait_ready(docker, pod, timeout));
        let outcomes = futures::future::join_all(waits).await;
        let mut failures = Vec::new();
        for (pod, outcome) in pods.iter().zip(outcomes) {
            match outcome {
                Ok(elapsed) => progress(&format!(
                    "pod {} ({}) ready on {} in {} ms",
                    pod.index,
                    short(&pod.container_id),
                    pod.address,
                    elapsed.as_millis()
                )),
                Err(reason) => {
                    let output = docker
                        .logs(&pod.container_id, FAILED_POD_LOG_LINES)
                        .await
                        .unwrap_or_default();
                    progress(&format!("pod {} failed to start: {reason}", pod.index));
                    for line in &output {
                        progress(&format!("pod {} output: {line}", pod.index));
                    }
                    failures.push(format!("pod {}: {reason}", pod.index));
                }
            }
        }
        if !failures.is_empty() {
            self.retire_pods(id, Retire::Only(spec.version)).await;
            return Err(format!("pods did not start: {}", failures.join("; ")));
        }
        Ok(pods)
    }

    /// Removes the lambda's Docker containers that `which` selects.
    pub(super) async fn retire_pods(&self, id: LambdaId, which: Retire) {
        let Some(docker) = &self.docker else { return };
        let pods = match docker.pods(id).await {
            Ok(pods) => pods,
            Err(e) => {
                tracing::error!(lambda = %id, error = %e, "cannot list the lambda's containers");
                return;
            }
        };
        for pod in pods.into_iter().filter(|p| which.selects(p.version)) {
            match docker.remove_container(&pod.container_id).await {
                Ok(()) => {
                    tracing::info!(lambda = %id, version = %pod.version, pod = pod.index, "container removed")
                }
                Err(e) => tracing::error!(lambda = %id, error = %e, "cannot remove container"),
            }
        }
    }

    /// Everything a deleted lambda had in the engine and the cluster: containers, its
    /// Kubernetes objects in each of `namespaces`, image tags.
    pub(super) async fn remove_container_resources(&self, id: LambdaId, namespaces: &[&str]) {
        if let Some(kube) = &self.kube {
            for namespace in namespaces {
                match kube.delete(namespace, id).await {
                    Ok(()) => {
                        tracing::info!(lambda = %id, %namespace, "Kubernetes objects removed")
                    }
                    Err(e) => {
                        tracing::error!(lambda = %id, error = %e, "cannot remove the Kubernetes objects")
                    }
                }
            }
        }
        let Some(docker) = &self.docker else { return };
        self.retire_pods(id, Retire::All).await;
        match docker.remove_images(id).await {
            Ok(n) => tracing::info!(lambda = %id, tags = n, "lambda images removed"),
            Err(e) => {
                tracing::error!(lambda = %id, error = %e, "cannot remove the lambda's images")
            }
        }
    }

    /// (name or container id, state) of each pod of the serving version, in pod order.
    async fn serving_pods(
        &self,
        record: &LambdaRecord,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        let version = record.current.version;
        if let Some(kube) = &self.kube {
            let namespace = record.current.deploy_parameters.namespace();
            let pods = kube
                .pods(namespace, record.lambda_id)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(pods
                .into_iter()
                .filter(|p| p.version == Some(version))
                .map(|p| (p.name, p.state))
                .collect());
        }
        let Some(docker) = &self.docker else {
            return Ok(Vec::new());
        };
        let pods = docker
            .pods(record.lambda_id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(pods
            .into_iter()
            .filter(|p| p.version == version)
            .map(|p| (p.container_id, p.state))
            .collect())
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
        let alive = pods
            .iter()
            .any(|(_, s)| s == "running" || s == "restarting");
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
            .map(|(i, (_, state))| (i.to_string(), state))
            .collect();
        (status, states)
    }

    /// Per pod, the newest `tail` lines of the serving version's containers; the
    /// service's own lines about the lambda when it has no pods.
    pub async fn pod_logs(
        &self,
        record: &LambdaRecord,
        tail: Option<u64>,
    ) -> Result<BTreeMap<String, Vec<String>>, LifecycleError> {
        let service_lines = || -> Result<_, LifecycleError> {
            Ok(BTreeMap::from([(
                "0".to_owned(),
                self.store.tail_logs(record.lambda_id, tail)?,
            )]))
        };
        if record.current.runtime != Runtime::Container {
            // Read your writes: the lines of calls that have already been answered may
            // still wait in the log writer's batch window.
            let logs = self.logs.clone();
            let _ = tokio::task::spawn_blocking(move || logs.flush(LOG_READ_FLUSH_WAIT)).await;
            return service_lines();
        }
        let pods = match self.serving_pods(record).await {
            Ok(pods) if !pods.is_empty() => pods,
            Ok(_) => return service_lines(),
            Err(e) => {
                tracing::warn!(lambda = %record.lambda_id, error = %e, "cannot read pod logs");
                return service_lines();
            }
        };
        let cap = self.config.containers.max_log_lines_per_pod;
        let lines = tail.map_or(cap, |t| usize::try_from(t).unwrap_or(usize::MAX).min(cap));
        let namespace = record.current.deploy_parameters.namespace();
        let mut out = BTreeMap::new();
        for (index, (pod, _)) in pods.iter().enumerate() {
            let text = match (&self.kube, &self.docker) {
                _ if lines == 0 => Vec::new(),
                (Some(kube), _) => kube
                    .logs(namespace, pod, i64::try_from(lines).unwrap_or(i64::MAX))
                    .await
                    .map_err(|e| LifecycleError::Task(e.to_string()))?,
                (None, Some(docker)) => docker
                    .logs(pod, lines)
                    .await
                    .map_err(|e| LifecycleError::Task(e.to_string()))?,
                (None, None) => Vec::new(),
            };
            out.insert(index.to_string(), text);
        }
        Ok(out)
    }

    /// After a restart. On Docker: the pods of a deployed container lambda's serving
    /// version that still run are used as they are; if none runs, they are started again
    /// from the image. On Kubernetes: the serving version is applied again and its
    /// Service used.
    pub(super) async fn reattach(
        &self,
        record: &LambdaRecord,
    ) -> std::result::Result<Arc<PodSet>, String> {
        let docker = self.docker()?.clone();
        let id = record.lambda_id;
        let version = record.current.version;
        let image = docker.image(id, version);
        let logs = self.logs.clone();
        if let Some(kube) = self.kube.clone() {
            // Applying the serving version again is a no-op when the cluster runs it, and
            // takes back a rollout the stopped service had started. The rollout is not
            // waited for: the cluster converges by itself, the Service routes to ready
            // pods meanwhile, and a slow cluster must neither hold up the start nor cost
            // a healthy lambda its objects.
            let deployment =
                self.kube_deployment(&kube, id, record.account_id, &record.current, &image)?;
            kube.apply(&deployment).await.map_err(|e| e.to_string())?;
            let endpoint = kube
                .endpoint(deployment.namespace.as_str(), id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("Service luna-lambda-{id} has no cluster IP"))?;
            tracing::info!(lambda = %id, %endpoint, "service restarted: re-attached to the lambda's Kubernetes Service");
            logs.line(
                id,
                &format!(
                    "service restarted: version {version} applied again, Service at {endpoint}"
                ),
            );
            return Ok(self.pod_set(id, record.account_id, version, vec![endpoint]));
        }
        let pods = docker.pods(id).await.map_err(|e| e.to_string())?;
        let running: Vec<Pod> = pods
            .iter()
            .filter(|p| p.version == version && p.state == "running")
            .cloned()
            .collect();
        // Containers of other versions are leftovers of an interrupted roll.
        self.retire_pods(id, Retire::AllBut(version)).await;
        if !running.is_empty() {
            let line = format!(
                "service restarted: re-attached to {} running pod(s) of version {version}",
                running.len()
            );
            tracing::info!(lambda = %id, "{line}");
            self.logs.line(id, &line);
            return Ok(self.pod_set(id, record.account_id, version, addresses(&running)));
        }
        self.retire_pods(id, Retire::Only(version)).await;
        let pods = self
            .start_pods(
                &docker,
                id,
                record.account_id,
                &record.current,
                &image,
                |line| {
                    logs.line(id, line);
                },
            )
            .await?;
        Ok(self.pod_set(id, record.account_id, version, addresses(&pods)))
    }

    /// Containers of lambdas the store no longer knows (deleted while the service was
    /// down) are removed.
    pub(super) async fn remove_orphan_pods(&self) {
        let Some(docker) = &self.docker else { return };
        let Ok(all) = docker.all_pods().await else {
            return;
        };
        for (id, pod) in all {
            if !matches!(self.store.lambda_exists(id), Ok(true)) {
                tracing::info!(lambda = %id, "removing the container of a deleted lambda");
                let _ = docker.remove_container(&pod.container_id).await;
            }
        }
    }
}

/// Polls a starting pod until `/healthcheck` answers 200, its container exits, or the
/// timeout passes.
async fn wait_ready(
    docker: &DockerEngine,
    pod: &Pod,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if healthy(pod.address).await {
            return Ok(started.elapsed());
        }
        if let Some(reason) = docker
            .exited(&pod.container_id)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(reason);
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "no 200 from /healthcheck on {} within {} s",
                pod.address,
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One `GET /healthcheck` (HTTP/1.1, connection closed after).
async fn healthy(address: SocketAddr) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Which of a lambda's containers to remove.
#[derive(Debug, Clone, Copy)]
pub(super) enum Retire {
    /// Every one.
    All,
    /// Those of this version (a failed or interrupted start).
    Only(Version),
    /// Those of every other version (after a roll to this one).
    AllBut(Version),
}

impl Retire {
    fn selects(self, version: Version) -> bool {
        match self {
            Self::All => true,
            Self::Only(v) => version == v,
            Self::AllBut(v) => version != v,
        }
    }
}

fn addresses(pods: &[Pod]) -> Vec<SocketAddr> {
    pods.iter().map(|p| p.address).collect()
}

fn short(container_id: &str) -> &str {
    container_id.get(..12).unwrap_or(container_id)
}
