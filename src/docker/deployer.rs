//! The Docker engine behind the lifecycle's seams: as `ImageBuilder` it builds (or finds
//! by build key), tags and pushes images; as `Deployer` it runs a version's pods as
//! containers (each in a network namespace of its own), health-waits them, rolls from one version's
//! containers to the next and re-attaches to what still runs after a restart. Depends on
//! `lifecycle` (the traits), `builder` (the build context) and `model`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{DockerEngine, Pod, PodSpec};
use crate::builder::container::BuildContext;
use crate::lifecycle::{
    BuiltImage, DeployError, Deployer, ImageBuilder, PodRequest, PodState, Progress,
};
use crate::model::{Endpoint, LambdaId, Version};

/// Pause between two health probes of a starting pod.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a failed pod's output quoted in the build log.
const FAILED_POD_LOG_LINES: usize = 20;
/// ... and at most this many bytes of them.
const FAILED_POD_LOG_BYTES: usize = 16 * 1024;
/// Longest one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait]
impl ImageBuilder for DockerEngine {
    fn image(&self, lambda_id: LambdaId, version: Version) -> String {
        DockerEngine::image(self, lambda_id, version)
    }

    async fn build(
        &self,
        lambda_id: LambdaId,
        version: Version,
        context: BuildContext,
        reuse: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<BuiltImage, DeployError> {
        let repository = self.repository(lambda_id);
        let tag = version.to_string();
        let reference = DockerEngine::image(self, lambda_id, version);
        let started = Instant::now();
        let reused = match reuse {
            Some(image) => self
                .built_by_us(image, &context.build_key)
                .await
                .map_err(DeployError::backend)?
                .then_some(image),
            None => None,
        };
        let image_id = match reused {
            Some(image) => {
                self.tag(image, &repository, &tag)
                    .await
                    .map_err(DeployError::backend)?;
                progress(&format!(
                    "image cache hit: this service built {image} from the same archive and Dockerfile for this account; tagged {reference}, no build"
                ));
                image.to_owned()
            }
            None => {
                progress(&format!("building image {reference} (cache miss)"));
                DockerEngine::build(
                    self,
                    context.tar,
                    &reference,
                    &context.build_key,
                    context.deps_dockerfile.is_some(),
                    &mut *progress,
                )
                .await
                .map_err(DeployError::backend)?;
                progress(&format!(
                    "image {reference} built in {} ms",
                    started.elapsed().as_millis()
                ));
                self.image_id(&reference)
                    .await
                    .map_err(DeployError::backend)?
            }
        };
        if self.pushes() {
            let pushed = Instant::now();
            progress(&format!("pushing {reference}"));
            self.push(&repository, &tag, |line| progress(&format!("push: {line}")))
                .await
                .map_err(DeployError::backend)?;
            progress(&format!(
                "pushed {reference} in {} ms",
                pushed.elapsed().as_millis()
            ));
        }
        Ok(BuiltImage {
            reference,
            image_id,
        })
    }

    async fn remove_images(&self, lambda_id: LambdaId) -> Result<usize, DeployError> {
        DockerEngine::remove_images(self, lambda_id)
            .await
            .map_err(DeployError::backend)
    }
}

#[async_trait]
impl Deployer for DockerEngine {
    /// The old version's containers keep serving until `retire_others` after the swap.
    async fn deploy(
        &self,
        request: &PodRequest,
        _previous: Option<&PodRequest>,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError> {
        let (id, version) = (request.lambda_id, request.version);
        let pod_spec = pod_spec(request);
        progress(&format!(
            "starting {} pod(s) of version {version} from {}",
            pod_spec.pod_count, request.image
        ));
        let pods = match self.run(&pod_spec).await {
            Ok(pods) => pods,
            Err(e) => {
                self.retire_where(id, |v| v == version).await;
                return Err(DeployError::backend(e));
            }
        };
        let timeout = Duration::from_secs(self.settings.start_timeout_secs);
        let waits = pods.iter().map(|pod| self.wait_ready(pod, timeout));
        let outcomes = futures::future::join_all(waits).await;
        let mut failures = Vec::new();
        for (pod, outcome) in pods.iter().zip(outcomes) {
            match outcome {
                Ok(elapsed) => progress(&format!(
                    "pod {} ({}) ready on {} in {} ms",
                    pod.index,
                    short(&pod.container_id),
                    pod.endpoint,
                    elapsed.as_millis()
                )),
                Err(reason) => {
                    let output = DockerEngine::logs(
                        self,
                        &pod.container_id,
                        FAILED_POD_LOG_LINES,
                        FAILED_POD_LOG_BYTES,
                    )
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
            self.retire_where(id, |v| v == version).await;
            return Err(DeployError::PodsNotReady(failures));
        }
        Ok(addresses(&pods))
    }

    async fn retire_others(&self, lambda_id: LambdaId, version: Version) {
        self.retire_where(lambda_id, |v| v != version).await;
    }

    async fn retire(&self, lambda_id: LambdaId, version: Version) {
        self.retire_where(lambda_id, |v| v == version).await;
    }

    async fn remove(&self, lambda_id: LambdaId, _namespaces: &[&str]) {
        self.retire_where(lambda_id, |_| true).await;
    }

    async fn pods(
        &self,
        lambda_id: LambdaId,
        _namespace: &str,
        version: Version,
    ) -> Result<Vec<PodState>, DeployError> {
        let pods = DockerEngine::pods(self, lambda_id)
            .await
            .map_err(DeployError::backend)?;
        Ok(pods
            .into_iter()
            .filter(|p| p.version == version)
            .map(|p| PodState {
                name: p.container_id,
                version: p.version,
                state: p.state,
            })
            .collect())
    }

    async fn logs(
        &self,
        _namespace: &str,
        pod: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<String>, DeployError> {
        DockerEngine::logs(self, pod, lines, max_bytes)
            .await
            .map_err(DeployError::backend)
    }

    /// The containers of the serving version that still run are used as they are; if
    /// none runs, they are started again from the image.
    async fn reattach(
        &self,
        request: &PodRequest,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError> {
        let (id, version) = (request.lambda_id, request.version);
        let pods = DockerEngine::pods(self, id)
            .await
            .map_err(DeployError::backend)?;
        let running: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.version == version && p.state == "running")
            .collect();
        // Containers of other versions are leftovers of an interrupted roll.
        self.retire_where(id, |v| v != version).await;
        if !running.is_empty() {
            progress(&format!(
                "service restarted: re-attached to {} running pod(s) of version {version}",
                running.len()
            ));
            return Ok(addresses(&running));
        }
        self.retire_where(id, |v| v == version).await;
        self.deploy(request, None, progress).await
    }

    async fn endpoints(&self, request: &PodRequest) -> Result<Vec<Endpoint>, DeployError> {
        let pods = DockerEngine::pods(self, request.lambda_id)
            .await
            .map_err(DeployError::backend)?;
        let running: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.version == request.version && p.state == "running")
            .collect();
        Ok(addresses(&running))
    }

    async fn remove_orphans(&self, known: &(dyn Fn(LambdaId) -> bool + Send + Sync)) {
        let Ok(all) = self.all_pods().await else {
            return;
        };
        for (id, pod) in all {
            if !known(id) {
                tracing::info!(lambda = %id, "removing the container of a deleted lambda");
                let name = super::container_name(id, pod.version, pod.index);
                let _ = self.remove_pod_named(&name).await;
            }
        }
        if let Err(e) = self.remove_leftovers().await {
            tracing::warn!(error = %e, "cannot remove leftover relays and pod directories");
        }
    }
}

impl DockerEngine {
    /// Removes the lambda's containers whose version `selects` picks.
    async fn retire_where(&self, lambda_id: LambdaId, selects: impl Fn(Version) -> bool + Send) {
        let pods = match DockerEngine::pods(self, lambda_id).await {
            Ok(pods) => pods,
            Err(e) => {
                tracing::error!(lambda = %lambda_id, error = %e, "cannot list the lambda's containers");
                return;
            }
        };
        for pod in pods.into_iter().filter(|p| selects(p.version)) {
            let name = super::container_name(lambda_id, pod.version, pod.index);
            match self.remove_pod_named(&name).await {
                Ok(()) => {
                    tracing::info!(lambda = %lambda_id, version = %pod.version, pod = pod.index, "container removed")
                }
                Err(e) => {
                    tracing::error!(lambda = %lambda_id, error = %e, "cannot remove container")
                }
            }
        }
    }

    /// Polls a starting pod until `/healthcheck` answers 200, its container exits, or
    /// the timeout passes.
    async fn wait_ready(&self, pod: &Pod, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if healthy(&pod.endpoint).await {
                return Ok(started.elapsed());
            }
            if let Some(reason) = self
                .exited(&pod.container_id)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(reason);
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "no 200 from /healthcheck on {} within {} s",
                    pod.endpoint,
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

/// What the engine runs for a request: the runner's environment (where to listen is
/// added per pod).
fn pod_spec(request: &PodRequest) -> PodSpec {
    PodSpec {
        lambda_id: request.lambda_id,
        version: request.version,
        image: request.image.clone(),
        pod_count: request.pod_count,
        env: vec![
            format!("LAMBDA_ID={}", request.lambda_id),
            format!("LAMBDA_VERSION={}", request.version),
            format!("LUNA_ACCOUNT_ID={}", request.account_id),
            format!("LUNA_LAMBDA_TYPE={}", request.lambda_type.as_str()),
            format!("WORKERS={}", request.workers),
            format!("LUNA_LAMBDA_CONFIG={}", request.config_json),
            format!("LUNA_LAMBDA_CREDENTIALS={}", request.credentials_json),
        ],
        resources: request.resources.clone(),
        gpu: request.gpu,
    }
}

/// One `GET /healthcheck` (HTTP/1.1, connection closed after).
async fn healthy(endpoint: &Endpoint) -> bool {
    let probe = async {
        match endpoint {
            Endpoint::Tcp(address) => {
                probe(tokio::net::TcpStream::connect(address).await.ok()?).await
            }
            Endpoint::Unix(path) => probe(tokio::net::UnixStream::connect(path).await.ok()?).await,
        }
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

async fn probe(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> Option<bool> {
    stream
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    Some(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
}

fn addresses(pods: &[Pod]) -> Vec<Endpoint> {
    pods.iter().map(|p| p.endpoint.clone()).collect()
}

fn short(container_id: &str) -> &str {
    container_id.get(..12).unwrap_or(container_id)
}
