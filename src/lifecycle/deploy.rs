//! The seams of the container backends, owned by the lifecycle that uses them: an
//! `ImageBuilder` turns a build context into a pushed image, a `Deployer` runs a
//! version's pods wherever they run (Docker, Kubernetes, a test's fake) and reports on
//! them. The lifecycle holds one of each when container lambdas are enabled and never
//! asks which backend it has. Depends on `builder` (the build context) and `model`.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use crate::builder::container::BuildContext;
use crate::model::{AccountId, Endpoint, LambdaId, LambdaType, Resources, Version};

/// Where a backend reports what it is doing (each line lands in the build or lambda log).
pub type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// A backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The engine or cluster failed or refused a call.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The version's pods were started but did not all become ready; one reason per pod.
    #[error("pods did not start: {}", .0.join("; "))]
    PodsNotReady(Vec<String>),
    /// The version rolled out but has no address to send requests to.
    #[error("Service luna-lambda-{0} has no cluster IP")]
    NoEndpoint(LambdaId),
    /// No pod of the version runs yet (the leading replica has not started them).
    #[error("no pod of version {0} runs yet")]
    NoPodsYet(Version),
}

impl DeployError {
    /// Wraps a backend's own error.
    pub fn backend(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(error))
    }
}

/// A version's pods as a backend is asked to run them: everything the backend needs,
/// nothing of how the lifecycle stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRequest {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// Its owner.
    pub account_id: AccountId,
    /// The version the pods run.
    pub version: Version,
    /// Its type (the runner's `LUNA_LAMBDA_TYPE`).
    pub lambda_type: LambdaType,
    /// Namespace (Kubernetes; the Docker backend ignores it).
    pub namespace: String,
    /// The pushed image.
    pub image: String,
    /// Pods to run.
    pub pod_count: u32,
    /// Worker processes per pod.
    pub workers: u32,
    /// CPU (millicores) and memory (GiB).
    pub resources: Option<Resources>,
    /// One GPU per pod.
    pub gpu: bool,
    /// Node selector labels.
    pub selector: BTreeMap<String, String>,
    /// `parameters.config` as JSON.
    pub config_json: String,
    /// The credentials as JSON.
    pub credentials_json: String,
}

/// One pod of a lambda as its backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The backend's name for it (container id, pod name): what `Deployer::logs` takes.
    pub name: String,
    /// The version it runs.
    pub version: Version,
    /// `running`, `restarting`, `exited`, `pending`, `CrashLoopBackOff`, … (the backend's word).
    pub state: String,
}

impl PodState {
    /// Whether it runs or is about to run again (a stopped lambda has none such).
    pub fn is_alive(&self) -> bool {
        self.state == "running" || self.state == "restarting"
    }
}

/// Builds container lambdas' images.
#[async_trait]
pub trait ImageBuilder: Send + Sync + fmt::Debug {
    /// The image reference of one version of a lambda.
    fn image(&self, lambda_id: LambdaId, version: Version) -> String;

    /// Builds `context` as the image of `version`, or tags `reuse` (the image this
    /// service recorded for an equal build key) when it is still there and still carries
    /// that key; pushes it where pods pull from.
    async fn build(
        &self,
        lambda_id: LambdaId,
        version: Version,
        context: BuildContext,
        reuse: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<BuiltImage, DeployError>;

    /// Removes every image of a lambda; returns how many tags went.
    async fn remove_images(&self, lambda_id: LambdaId) -> Result<usize, DeployError>;
}

/// An image a build made (or reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Where pods pull it from.
    pub reference: String,
    /// The engine's id of it (a content digest), recorded for later reuse.
    pub image_id: String,
}

/// Runs container lambdas' pods.
#[async_trait]
pub trait Deployer: Send + Sync + fmt::Debug {
    /// Starts `request`'s pods and waits until every one is ready; returns where to send
    /// requests. On failure nothing of `request`'s version is left running and
    /// `previous` (the version serving now, if any) keeps serving.
    async fn deploy(
        &self,
        request: &PodRequest,
        previous: Option<&PodRequest>,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError>;

    /// After `version` took over: removes what other versions of the lambda still run.
    async fn retire_others(&self, lambda_id: LambdaId, version: Version);

    /// Removes what an interrupted deploy of `version` may have started.
    async fn retire(&self, lambda_id: LambdaId, version: Version);

    /// Removes everything of the lambda, in each of `namespaces`.
    async fn remove(&self, lambda_id: LambdaId, namespaces: &[&str]);

    /// The lambda's pods of `version`, in pod order.
    async fn pods(
        &self,
        lambda_id: LambdaId,
        namespace: &str,
        version: Version,
    ) -> Result<Vec<PodState>, DeployError>;

    /// The newest `lines` lines a pod printed, reading at most `max_bytes` of them (a
    /// pod's lines may be of any length).
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<String>, DeployError>;

    /// After a restart of the service: serves `request` (the version that served before)
    /// again with what still runs of it, starting it again where nothing does.
    async fn reattach(
        &self,
        request: &PodRequest,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError>;

    /// Where the running pods of `request`'s version listen, changing nothing: how a
    /// replica that does not lead the pods serves them.
    async fn endpoints(&self, request: &PodRequest) -> Result<Vec<Endpoint>, DeployError>;

    /// Removes the pods of lambdas for which `known` says no (deleted while the service
    /// was down).
    async fn remove_orphans(&self, known: &(dyn Fn(LambdaId) -> bool + Send + Sync));
}
