//! The cluster behind the lifecycle's `Deployer` seam: a version is a Secret, a Service
//! and a Deployment applied server-side; its rollout is waited for and rolled back to
//! the serving version when it fails; a version that moved namespace leaves the old one
//! empty. Depends on `lifecycle` (the trait) and `model`.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;

use super::{KubeBackend, LambdaDeployment};
use crate::lifecycle::{DeployError, Deployer, PodRequest, PodState, Progress};
use crate::model::{Endpoint, LambdaId, Version};

/// A cluster that runs container lambdas (images are built elsewhere and pulled).
#[derive(Debug, Clone)]
pub struct KubeDeployer {
    kube: KubeBackend,
    rollout_timeout: Duration,
}

impl KubeDeployer {
    /// Deploys through `kube`, waiting up to `rollout_timeout` for each rollout.
    pub fn new(kube: KubeBackend, rollout_timeout: Duration) -> Self {
        Self {
            kube,
            rollout_timeout,
        }
    }

    fn deployment(&self, request: &PodRequest) -> LambdaDeployment {
        LambdaDeployment {
            pods: request.clone(),
            service_port: self.kube.service_port(),
            confinement: self.kube.confinement(),
        }
    }

    async fn endpoint(&self, namespace: &str, id: LambdaId) -> Result<SocketAddr, DeployError> {
        self.kube
            .endpoint(namespace, id)
            .await
            .map_err(DeployError::backend)?
            .ok_or(DeployError::NoEndpoint(id))
    }
}

#[async_trait]
impl Deployer for KubeDeployer {
    async fn deploy(
        &self,
        request: &PodRequest,
        previous: Option<&PodRequest>,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError> {
        let id = request.lambda_id;
        let deployment = self.deployment(request);
        let namespace = deployment.pods.namespace.as_str();
        progress(&format!(
            "applying Secret, Service and Deployment luna-lambda-{id} in namespace {namespace}: {} replica(s) of {}",
            deployment.pods.pod_count, deployment.pods.image
        ));
        self.kube
            .apply(&deployment)
            .await
            .map_err(DeployError::backend)?;
        if let Err(e) = self
            .kube
            .wait_rolled_out(
                namespace,
                id,
                deployment.pods.pod_count,
                self.rollout_timeout,
                &mut *progress,
            )
            .await
        {
            match previous {
                Some(prev) if prev.namespace == namespace => {
                    match self.kube.apply(&self.deployment(prev)).await {
                        Ok(()) => progress(&format!("rolled back to version {}", prev.version)),
                        Err(r) => {
                            progress(&format!("rollback to version {} failed: {r}", prev.version))
                        }
                    }
                }
                _ => {
                    if let Err(r) = self.kube.delete(namespace, id).await {
                        progress(&format!("cannot remove the failed deployment: {r}"));
                    }
                }
            }
            return Err(DeployError::backend(e));
        }
        let endpoint = self.endpoint(namespace, id).await?;
        if let Some(prev) = previous
            && prev.namespace != namespace
            && let Err(e) = self.kube.delete(&prev.namespace, id).await
        {
            progress(&format!(
                "cannot remove the previous namespace's objects: {e}"
            ));
        }
        progress(&format!(
            "rollout complete: Service luna-lambda-{id} at {endpoint}"
        ));
        Ok(vec![Endpoint::Tcp(endpoint)])
    }

    /// The Deployment holds one version: its rolling update already replaced the others.
    async fn retire_others(&self, _lambda_id: LambdaId, _version: Version) {}

    /// An interrupted rollout is taken back by the next apply of the serving version
    /// (the next deploy, or `reattach` at start).
    async fn retire(&self, _lambda_id: LambdaId, _version: Version) {}

    async fn remove(&self, lambda_id: LambdaId, namespaces: &[&str]) {
        for namespace in namespaces {
            match self.kube.delete(namespace, lambda_id).await {
                Ok(()) => {
                    tracing::info!(lambda = %lambda_id, %namespace, "Kubernetes objects removed")
                }
                Err(e) => {
                    tracing::error!(lambda = %lambda_id, error = %e, "cannot remove the Kubernetes objects")
                }
            }
        }
    }

    async fn pods(
        &self,
        lambda_id: LambdaId,
        namespace: &str,
        version: Version,
    ) -> Result<Vec<PodState>, DeployError> {
        let pods = self
            .kube
            .pods(namespace, lambda_id)
            .await
            .map_err(DeployError::backend)?;
        Ok(pods
            .into_iter()
            .filter(|p| p.version == Some(version))
            .map(|p| PodState {
                name: p.name,
                version,
                state: p.state,
            })
            .collect())
    }

    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<String>, DeployError> {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.kube
            .logs(namespace, pod, count(lines), count(max_bytes))
            .await
            .map_err(DeployError::backend)
    }

    /// Applying the serving version again is a no-op when the cluster runs it, and takes
    /// back a rollout the stopped service had started. The rollout is not waited for:
    /// the cluster converges by itself, the Service routes to ready pods meanwhile, and a
    /// slow cluster must neither hold up the start nor cost a healthy lambda its objects.
    async fn reattach(
        &self,
        request: &PodRequest,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError> {
        let id = request.lambda_id;
        self.kube
            .apply(&self.deployment(request))
            .await
            .map_err(DeployError::backend)?;
        let endpoint = self.endpoint(&request.namespace, id).await?;
        progress(&format!(
            "service restarted: version {} applied again, Service at {endpoint}",
            request.version
        ));
        Ok(vec![Endpoint::Tcp(endpoint)])
    }

    async fn endpoints(&self, request: &PodRequest) -> Result<Vec<Endpoint>, DeployError> {
        let endpoint = self.endpoint(&request.namespace, request.lambda_id).await?;
        Ok(vec![Endpoint::Tcp(endpoint)])
    }

    /// Objects of deleted lambdas are not searched for across namespaces: lambdas are
    /// deleted only through a running service, which removes their objects in every
    /// namespace they used.
    async fn remove_orphans(&self, _known: &(dyn Fn(LambdaId) -> bool + Send + Sync)) {}
}
