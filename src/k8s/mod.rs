//! The Kubernetes backend (through `kube`): applies a container lambda's Secret,
//! Deployment and ClusterIP Service with server-side apply, waits for the rollout, reads
//! pod statuses and logs, and deletes everything. The objects themselves come from the
//! pure builders in `manifests`; `deployer` puts it behind the lifecycle's `Deployer`.
//! Depends on `lifecycle` (its trait), `config` and `model`.

mod deployer;
pub mod manifests;

pub use deployer::KubeDeployer;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::Kubernetes;
use crate::model::{LambdaId, Version};
pub use manifests::LambdaDeployment;

/// The field manager of our server-side applies.
const FIELD_MANAGER: &str = "luna-lambda";
/// Pause between two reads of a rolling Deployment.
const ROLLOUT_POLL: Duration = Duration::from_millis(250);
/// Lines of a failing pod's log quoted when a rollout fails.
const FAILED_POD_LOG_LINES: i64 = 20;
/// ... and at most this many bytes of them.
const FAILED_POD_LOG_BYTES: i64 = 16 * 1024;

/// A Kubernetes API call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable cluster configuration.
    #[error("Kubernetes configuration: {0}")]
    Config(String),
    /// An API call failed.
    #[error("Kubernetes {call} failed: {message}")]
    Api {
        /// The call.
        call: &'static str,
        /// The API server's message.
        message: String,
    },
    /// A manifest could not be built.
    #[error("manifest: {0}")]
    Manifest(#[from] serde_json::Error),
    /// The rollout did not finish.
    #[error("{0}")]
    NotReady(String),
}

type Result<T, E = KubeError> = std::result::Result<T, E>;

fn api(call: &'static str) -> impl FnOnce(kube::Error) -> KubeError {
    move |e| KubeError::Api {
        call,
        message: match e {
            kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
            other => other.to_string(),
        },
    }
}

/// One pod of a lambda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePod {
    /// Pod name.
    pub name: String,
    /// The version its template carries.
    pub version: Option<Version>,
    /// `running`, `pending`, or the waiting reason of its container (`CrashLoopBackOff`, ...).
    pub state: String,
    /// Whether its readiness probe passes.
    pub ready: bool,
}

/// A connection to the cluster.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    settings: Kubernetes,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// Connects with `kubernetes.kubeconfig` (and its context), or, when none is set,
    /// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
    pub async fn connect(settings: &Kubernetes) -> Result<Self> {
        let mut config = if settings.kubeconfig.is_empty() {
            kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?
        } else {
            let file = Kubeconfig::read_from(&settings.kubeconfig)
                .map_err(|e| KubeError::Config(e.to_string()))?;
            let options = KubeConfigOptions {
                context: (!settings.context.is_empty()).then(|| settings.context.clone()),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?
        };
        let timeout = Duration::from_secs(settings.api_timeout_secs);
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Self {
            client,
            settings: settings.clone(),
        })
    }

    /// Port of the lambdas' ClusterIP Services.
    pub fn service_port(&self) -> i32 {
        self.settings.service_port
    }

    /// How lambda pods are confined, from the settings (validated at start).
    pub fn confinement(&self) -> manifests::Confinement {
        let k = &self.settings;
        let (label, value) = k.service_pod_label.split_once('=').unwrap_or_default();
        manifests::Confinement {
            run_as_user: k.run_as_user,
            service_namespace: k.service_namespace.clone(),
            service_pod_label: (label.to_owned(), value.to_owned()),
            egress: k.pod_egress,
        }
    }

    /// Applies the Secret, the Service and the Deployment (server-side apply, forced:
    /// this service owns them). A changed Deployment starts a rolling update.
    pub async fn apply(&self, d: &LambdaDeployment) -> Result<()> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let secret = manifests::secret(d)?;
        Api::<Secret>::namespaced(self.client.clone(), &d.pods.namespace)
            .patch(
                &manifests::secret_name(d.pods.lambda_id),
                &params,
                &Patch::Apply(&secret),
            )
            .await
            .map_err(api("secret apply"))?;
        let name = manifests::object_name(d.pods.lambda_id);
        // The fence stands before any pod of the lambda starts.
        let policy = manifests::network_policy(d)?;
        Api::<NetworkPolicy>::namespaced(self.client.clone(), &d.pods.namespace)
            .patch(&name, &params, &Patch::Apply(&policy))
            .await
            .map_err(api("network policy apply"))?;
        let service = manifests::service(d)?;
        Api::<Service>::namespaced(self.client.clone(), &d.pods.namespace)
            .patch(&name, &params, &Patch::Apply(&service))
            .await
            .map_err(api("service apply"))?;
        let deployment = manifests::deployment(d)?;
        Api::<Deployment>::namespaced(self.client.clone(), &d.pods.namespace)
            .patch(&name, &params, &Patch::Apply(&deployment))
            .await
            .map_err(api("deployment apply"))?;
        Ok(())
    }

    /// Waits until the Deployment runs `replicas` ready pods of its newest template and
    /// no others, reporting each change; on timeout the reason quotes the pods' states
    /// and the logs of those that are not ready.
    pub async fn wait_rolled_out(
        &self,
        namespace: &str,
        lambda_id: LambdaId,
        replicas: u32,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<()> {
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), namespace);
        let name = manifests::object_name(lambda_id);
        let started = Instant::now();
        let want = i32::try_from(replicas).unwrap_or(i32::MAX);
        let mut last = String::new();
        loop {
            let deployment = deployments
                .get(&name)
                .await
                .map_err(api("deployment read"))?;
            let generation = deployment.metadata.generation.unwrap_or_default();
            let status = deployment.status.unwrap_or_default();
            let observed = status.observed_generation.unwrap_or_default() >= generation;
            let (updated, ready, total) = (
                status.updated_replicas.unwrap_or_default(),
                status.ready_replicas.unwrap_or_default(),
                status.replicas.unwrap_or_default(),
            );
            let line =
                format!("rollout: {updated}/{want} pods updated, {ready} ready, {total} in total");
            if line != last {
                progress(&line);
                last = line;
            }
            if observed && updated == want && ready == want && total == want {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(KubeError::NotReady(
                    self.not_ready_reason(namespace, lambda_id, timeout).await,
                ));
            }
            tokio::time::sleep(ROLLOUT_POLL).await;
        }
    }

    async fn not_ready_reason(
        &self,
        namespace: &str,
        lambda_id: LambdaId,
        timeout: Duration,
    ) -> String {
        let mut reason = format!("the rollout did not finish within {} s", timeout.as_secs());
        for pod in self.pods(namespace, lambda_id).await.unwrap_or_default() {
            if pod.ready {
                continue;
            }
            reason.push_str(&format!("; pod {} is {}", pod.name, pod.state));
            let lines = self
                .logs(
                    namespace,
                    &pod.name,
                    FAILED_POD_LOG_LINES,
                    FAILED_POD_LOG_BYTES,
                )
                .await
                .unwrap_or_default();
            if !lines.is_empty() {
                reason.push_str(&format!(", its log ends: {}", lines.join(" | ")));
            }
        }
        reason
    }

    /// Where the lambda's Service listens (cluster IP and port), if it exists.
    pub async fn endpoint(
        &self,
        namespace: &str,
        lambda_id: LambdaId,
    ) -> Result<Option<SocketAddr>> {
        let service = Api::<Service>::namespaced(self.client.clone(), namespace)
            .get_opt(&manifests::object_name(lambda_id))
            .await
            .map_err(api("service read"))?;
        let Some(spec) = service.and_then(|s| s.spec) else {
            return Ok(None);
        };
        let ip: Option<IpAddr> = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
        let port = spec
            .ports
            .unwrap_or_default()
            .first()
            .map(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        Ok(ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port)))
    }

    /// The lambda's pods, by name.
    pub async fn pods(&self, namespace: &str, lambda_id: LambdaId) -> Result<Vec<KubePod>> {
        let list = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default().labels(&manifests::lambda_selector(lambda_id)))
            .await
            .map_err(api("pod list"))?;
        let mut pods: Vec<KubePod> = list.items.into_iter().map(describe).collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// The newest `tail` lines of a pod's lambda container.
    /// The pod's last `tail` lines, of which the API server sends at most `max_bytes`.
    pub async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        tail: i64,
        max_bytes: i64,
    ) -> Result<Vec<String>> {
        let params = LogParams {
            container: Some(manifests::CONTAINER_NAME.to_owned()),
            tail_lines: Some(tail),
            limit_bytes: Some(max_bytes),
            ..Default::default()
        };
        let text = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .logs(pod, &params)
            .await
            .map_err(api("pod logs"))?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// Deletes the Deployment, the Service, the NetworkPolicy and the Secret (missing
    /// ones are fine).
    pub async fn delete(&self, namespace: &str, lambda_id: LambdaId) -> Result<()> {
        let name = manifests::object_name(lambda_id);
        let params = DeleteParams::default();
        missing_ok(
            Api::<Deployment>::namespaced(self.client.clone(), namespace)
                .delete(&name, &params)
                .await
                .map(drop),
            "deployment delete",
        )?;
        missing_ok(
            Api::<Service>::namespaced(self.client.clone(), namespace)
                .delete(&name, &params)
                .await
                .map(drop),
            "service delete",
        )?;
        missing_ok(
            Api::<NetworkPolicy>::namespaced(self.client.clone(), namespace)
                .delete(&name, &params)
                .await
                .map(drop),
            "network policy delete",
        )?;
        missing_ok(
            Api::<Secret>::namespaced(self.client.clone(), namespace)
                .delete(&manifests::secret_name(lambda_id), &params)
                .await
                .map(drop),
            "secret delete",
        )
    }
}

/// A delete of something already gone succeeded.
fn missing_ok(result: std::result::Result<(), kube::Error>, call: &'static str) -> Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        other => other.map_err(api(call)),
    }
}

fn describe(pod: Pod) -> KubePod {
    let name = pod.metadata.name.unwrap_or_default();
    let version = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(manifests::LABEL_VERSION))
        .and_then(|v| v.parse().ok())
        .map(Version);
    let status = pod.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let state = waiting.unwrap_or_else(|| {
        status
            .phase
            .map_or_else(|| "unknown".to_owned(), |p| p.to_lowercase())
    });
    KubePod {
        name,
        version,
        state,
        ready,
    }
}
