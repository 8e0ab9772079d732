//! The Docker Engine API (through `bollard`): building (without network, after a
//! networked wheels-only dependency stage), tagging, pushing and removing lambda images,
//! and running a lambda's pods as containers, each in a network namespace of its own
//! reached through a unix socket (or, as the operator's explicit choice, on the host
//! network). Knows names, labels and engine calls; `deployer` puts it behind the
//! lifecycle's `ImageBuilder` and `Deployer`. Depends on `lifecycle` (its traits),
//! `builder`, `config` and `model`.

mod deployer;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceRequest, HostConfig, HostConfigLogConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures::StreamExt;

use crate::config::Containers;
use crate::model::{Endpoint, LambdaId, Resources, Version};

/// Label every container and image of ours carries (the Kubernetes convention).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "luna-lambda");
/// Label: the service instance (data directory) that owns a container. Several
/// services may share one engine; each touches only its own containers.
pub const LABEL_OWNER: &str = "luna-lambda.owner";
/// Label: the lambda a container serves.
pub const LABEL_LAMBDA: &str = "luna-lambda.lambda-id";
/// Label: the lambda version a container serves.
pub const LABEL_VERSION: &str = "luna-lambda.version";
/// Label: the pod number (0-based) within its version.
pub const LABEL_POD: &str = "luna-lambda.pod";
/// Label: the host port the container listens on (pods on the host network).
pub const LABEL_PORT: &str = "luna-lambda.port";
/// Label: the path of the unix socket the service reaches the pod through (pods with a
/// network namespace of their own).
pub const LABEL_SOCKET: &str = "luna-lambda.socket";
/// Label on a pod's network holder: the name of the pod container it serves.
pub const LABEL_RELAY_OF: &str = "luna-lambda.relay-of";
/// Where a pod's socket directory is mounted inside it.
const POD_DIR_INSIDE: &str = "/run/luna";
/// The socket's name in that directory.
const POD_SOCKET: &str = "http.sock";
/// The command of the base image's runner: an image that keeps it serves on the socket
/// itself; any other (an archive's own Dockerfile, a replaced `CMD`) listens on `$PORT`
/// and is reached through a relay in its namespace.
const RUNNER_COMMAND: [&str; 3] = ["python3", "-m", "luna_runner"];
/// The relay's command (in the base image, next to the runner).
const RELAY_COMMAND: [&str; 3] = ["python3", "-m", "luna_runner.relay"];
/// The port a pod of its own Dockerfile listens on inside its namespace.
const POD_PORT: u16 = 8080;
/// Memory of a relay (a small Python process).
const RELAY_MEMORY_BYTES: i64 = 64 * 1024 * 1024;
/// Label on images: sha256 of what went into the build; equal keys, equal images.
pub const LABEL_BUILD_KEY: &str = "luna-lambda.build-key";

/// A Docker engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine cannot be reached.
    #[error("cannot reach the Docker engine: {0}")]
    Connect(String),
    /// An engine call failed.
    #[error("Docker engine {call} failed: {message}")]
    Api {
        /// The call.
        call: &'static str,
        /// The engine's message.
        message: String,
    },
    /// An engine call ran past its timeout.
    #[error("Docker engine {0} timed out")]
    Timeout(&'static str),
    /// The image build failed.
    #[error("image build failed at '{step}': {message}")]
    Build {
        /// The Dockerfile step that failed.
        step: String,
        /// The builder's message.
        message: String,
    },
    /// The image push failed.
    #[error("image push failed: {0}")]
    Push(String),
    /// A pod did not become ready.
    #[error("{0}")]
    NotReady(String),
}

type Result<T, E = DockerError> = std::result::Result<T, E>;

fn api(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |e| DockerError::Api {
        call,
        message: e.to_string(),
    }
}

/// A lambda version's pods as the engine sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Container id.
    pub container_id: String,
    /// Version served.
    pub version: Version,
    /// Pod number within the version.
    pub index: u32,
    /// Where it listens.
    pub endpoint: Endpoint,
    /// `running`, `restarting`, `exited`, ... (the engine's word).
    pub state: String,
}

/// What to run for one lambda version.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// The version.
    pub version: Version,
    /// Image reference.
    pub image: String,
    /// Containers to run.
    pub pod_count: u32,
    /// `KEY=value` environment (where to listen is added per pod).
    pub env: Vec<String>,
    /// CPU and memory.
    pub resources: Option<Resources>,
    /// Ask the engine for every GPU.
    pub gpu: bool,
}

/// The local Docker engine.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    settings: Containers,
    owner: String,
    /// Where each pod's socket directory is made (only the service may enter it).
    pods_dir: PathBuf,
}

impl DockerEngine {
    /// Connects and negotiates the API version (Debian's engine speaks 1.41). `owner`
    /// names this service instance on its containers; pods' socket directories are made
    /// in `pods_dir` (created, closed to everyone but this user).
    pub async fn connect(settings: &Containers, owner: &str, pods_dir: &Path) -> Result<Self> {
        prepare_pods_dir(pods_dir)?;
        let timeout = settings.docker_timeout_secs;
        let docker = if settings.docker_socket.is_empty() {
            Docker::connect_with_local_defaults()
        } else {
            Docker::connect_with_unix(
                &settings.docker_socket,
                timeout,
                bollard::API_DEFAULT_VERSION,
            )
        }
        .map_err(|e| DockerError::Connect(e.to_string()))?;
        let docker = tokio::time::timeout(Duration::from_secs(timeout), docker.negotiate_version())
            .await
            .map_err(|_| DockerError::Timeout("version negotiation"))?
            .map_err(|e| DockerError::Connect(e.to_string()))?
            .with_timeout(Duration::from_secs(timeout));
        Ok(Self {
            docker,
            settings: settings.clone(),
            owner: owner.to_owned(),
            pods_dir: pods_dir.to_owned(),
        })
    }

    /// The repository of a lambda's images (`<registry>/luna-lambda-<id>`).
    pub fn repository(&self, lambda_id: LambdaId) -> String {
        image_repository(&self.settings.registry, lambda_id)
    }

    /// The image of one version of a lambda (`repository:version`).
    pub fn image(&self, lambda_id: LambdaId, version: Version) -> String {
        format!("{}:{version}", self.repository(lambda_id))
    }

    /// Images matching one engine list filter (`label=…`, `reference=…`).
    async fn images_where(
        &self,
        filter: &str,
        value: String,
    ) -> Result<Vec<bollard::models::ImageSummary>> {
        let filters = HashMap::from([(filter.to_owned(), vec![value])]);
        self.docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(api("image list"))
    }

    /// Whether images are pushed to a registry.
    pub fn pushes(&self) -> bool {
        !self.settings.registry.is_empty()
    }

    /// Whether the engine still has the image `image_id` (one this service recorded as
    /// built) and it still carries `build_key`. An id is a digest of the image's content,
    /// so no other image can take its place.
    pub async fn built_by_us(&self, image_id: &str, build_key: &str) -> Result<bool> {
        match self.docker.inspect_image(image_id).await {
            Ok(image) => Ok(image
                .config
                .and_then(|c| c.labels)
                .and_then(|labels| labels.get(LABEL_BUILD_KEY).cloned())
                .is_some_and(|key| key == build_key)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(api("image inspect")(e)),
        }
    }

    /// The engine's id of the image `reference` names.
    pub async fn image_id(&self, reference: &str) -> Result<String> {
        let image = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(api("image inspect"))?;
        image.id.ok_or_else(|| DockerError::Api {
            call: "image inspect",
            message: format!("the engine gave no id for {reference}"),
        })
    }

    /// Builds `context` (a tar with the Dockerfile at its root) as `reference`, calling
    /// `progress` with every line the builder prints as it prints it. With a dependency
    /// stage (`Dockerfile.deps`), that stage is built first as `<reference>-deps`, the
    /// only build with network access; the Dockerfile then builds from it without any
    /// network: archive code run at build time reaches nothing, neither the service, the
    /// registry, the pods nor the host's traffic.
    pub async fn build(
        &self,
        context: Vec<u8>,
        reference: &str,
        build_key: &str,
        with_deps: bool,
        mut progress: impl FnMut(&str),
    ) -> Result<()> {
        let context = bytes::Bytes::from(context);
        let mut args = HashMap::new();
        if with_deps {
            let deps = format!("{reference}-deps");
            progress(&format!(
                "building the dependencies as {deps} (network: host, wheels only)"
            ));
            let mut deps_args = HashMap::new();
            if !self.settings.pip_index_url.is_empty() {
                deps_args.insert(
                    "PIP_INDEX_URL".to_owned(),
                    self.settings.pip_index_url.clone(),
                );
            }
            let stage = BuildStage {
                dockerfile: crate::builder::container::DEPS_DOCKERFILE,
                tag: &deps,
                network: "host",
                args: &deps_args,
            };
            self.build_stage(context.clone(), &stage, build_key, &mut progress)
                .await?;
            args.insert(crate::builder::container::DEPS_IMAGE_ARG.to_owned(), deps);
        }
        let stage = BuildStage {
            dockerfile: "Dockerfile",
            tag: reference,
            network: "none",
            args: &args,
        };
        self.build_stage(context, &stage, build_key, &mut progress)
            .await
    }

    async fn build_stage(
        &self,
        context: bytes::Bytes,
        stage: &BuildStage<'_>,
        build_key: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<()> {
        let labels = HashMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (LABEL_BUILD_KEY.to_owned(), build_key.to_owned()),
        ]);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(stage.dockerfile)
            .t(stage.tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .buildargs(stage.args)
            .networkmode(stage.network)
            .build();
        let mut stream = self
            .docker
            .build_image(options, None, Some(bollard::body_full(context)));
        let mut step = String::from("(before the first step)");
        let mut partial = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| DockerError::Build {
                step: step.clone(),
                message: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Build {
                    step,
                    message: detail.message.unwrap_or_default(),
                });
            }
            if let Some(text) = info.stream {
                partial.push_str(&text);
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    // The classic builder echoes the labels as a last LABEL step; the key
                    // names the image cache entry and is not shown.
                    let line = line.replace(build_key, "<build key>");
                    let line = line.trim_end();
                    if line.starts_with("Step ") {
                        step = line.to_owned();
                    }
                    if !line.trim().is_empty() {
                        progress(line);
                    }
                }
            }
        }
        if !partial.trim().is_empty() {
            progress(partial.replace(build_key, "<build key>").trim_end());
        }
        Ok(())
    }

    /// Tags an existing image (a cache hit) as `repository:tag`.
    pub async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<()> {
        self.docker
            .tag_image(
                image,
                Some(
                    TagImageOptionsBuilder::default()
                        .repo(repository)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .map_err(api("image tag"))
    }

    /// Pushes `repository:tag` to its registry, reporting each change of state (not
    /// every byte count).
    pub async fn push(
        &self,
        repository: &str,
        tag: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<()> {
        let options = bollard::query_parameters::PushImageOptionsBuilder::default()
            .tag(tag)
            .build();
        let mut stream = self.docker.push_image(
            repository,
            Some(options),
            Some(bollard::auth::DockerCredentials::default()),
        );
        let mut last = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| DockerError::Push(e.to_string()))?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Push(detail.message.unwrap_or_default()));
            }
            let Some(status) = info.status else { continue };
            if status != last {
                progress(&status);
                last = status;
            }
        }
        Ok(())
    }

    /// Removes every image tag of a lambda (layers shared with other tags stay).
    pub async fn remove_images(&self, lambda_id: LambdaId) -> Result<usize> {
        let images = self
            .images_where("reference", format!("{}:*", self.repository(lambda_id)))
            .await?;
        let mut removed = 0;
        for tag in images.into_iter().flat_map(|i| i.repo_tags) {
            match self
                .docker
                .remove_image(
                    &tag,
                    Some(RemoveImageOptionsBuilder::default().build()),
                    None,
                )
                .await
            {
                Ok(_) => removed += 1,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(api("image remove")(e)),
            }
        }
        Ok(removed)
    }

    /// Creates and starts the pods of a version: each in a network namespace of its
    /// own, reached through the socket in its directory (on the host network: each on a
    /// free host port).
    pub async fn run(&self, spec: &PodSpec) -> Result<Vec<Pod>> {
        let on_host = self.settings.pods_on_host_network();
        let mut taken: Vec<u16> = if on_host {
            self.all_pods()
                .await?
                .iter()
                .filter_map(|(_, p)| match &p.endpoint {
                    Endpoint::Tcp(address) => Some(address.port()),
                    Endpoint::Unix(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let serves_on_socket = !on_host && self.runs_the_runner(&spec.image).await?;
        let host = self.listen_host();
        let mut pods = Vec::new();
        for index in 0..spec.pod_count {
            let name = container_name(spec.lambda_id, spec.version, index);
            // A leftover of an interrupted start has the same name.
            self.remove_pod_named(&name).await?;
            let mut env = spec.env.clone();
            let mut labels = HashMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (LABEL_OWNER.to_owned(), self.owner.clone()),
                (LABEL_LAMBDA.to_owned(), spec.lambda_id.to_string()),
                (LABEL_VERSION.to_owned(), spec.version.to_string()),
                (LABEL_POD.to_owned(), index.to_string()),
            ]);
            let mut host_config = host_config(spec.resources.as_ref(), spec.gpu, &self.settings);
            let endpoint = if on_host {
                let port = free_port(host, &taken)?;
                taken.push(port);
                env.push(format!("PORT={port}"));
                env.push(format!("LUNA_LAMBDA_LISTEN_HOST={host}"));
                labels.insert(LABEL_PORT.to_owned(), port.to_string());
                Endpoint::Tcp(SocketAddr::new(host, port))
            } else {
                let dir = self.pod_dir(&name);
                make_pod_dir(&dir)?;
                let socket = dir.join(POD_SOCKET);
                labels.insert(LABEL_SOCKET.to_owned(), socket.display().to_string());
                let mount = format!("{}:{POD_DIR_INSIDE}", dir.display());
                if serves_on_socket {
                    env.push(format!("LUNA_LAMBDA_SOCKET={POD_DIR_INSIDE}/{POD_SOCKET}"));
                    host_config.binds = Some(vec![mount]);
                } else {
                    let relay = self.start_relay(spec.lambda_id, &name, mount).await?;
                    env.push(format!("PORT={POD_PORT}"));
                    env.push("LUNA_LAMBDA_LISTEN_HOST=127.0.0.1".to_owned());
                    host_config.network_mode = Some(format!("container:{relay}"));
                }
                Endpoint::Unix(socket)
            };
            let body = ContainerCreateBody {
                image: Some(spec.image.clone()),
                env: Some(env),
                labels: Some(labels),
                host_config: Some(host_config),
                ..Default::default()
            };
            let id = self.create_and_start(&name, body).await?;
            pods.push(Pod {
                container_id: id,
                version: spec.version,
                index,
                endpoint,
                state: "running".to_owned(),
            });
        }
        Ok(pods)
    }

    async fn create_and_start(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .map_err(api("container create"))?;
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(api("container start"))?;
        Ok(created.id)
    }

    /// Starts the holder of a pod's network namespace: a relay from the pod's socket to
    /// `$PORT` inside the namespace, which the pod then joins. The relay owns the
    /// namespace so that a pod restarting (its restart policy) finds it again. It carries
    /// the lambda's label (an operator's filter finds it), not a pod's.
    async fn start_relay(
        &self,
        lambda_id: LambdaId,
        pod_name: &str,
        mount: String,
    ) -> Result<String> {
        let mut host_config = host_config(None, false, &self.settings);
        host_config.binds = Some(vec![mount]);
        host_config.memory = Some(RELAY_MEMORY_BYTES);
        let body = ContainerCreateBody {
            image: Some(self.settings.base_image.clone()),
            cmd: Some(RELAY_COMMAND.iter().map(|&part| part.to_owned()).collect()),
            env: Some(vec![
                format!("LUNA_LAMBDA_SOCKET={POD_DIR_INSIDE}/{POD_SOCKET}"),
                format!("LUNA_LAMBDA_RELAY_TO=127.0.0.1:{POD_PORT}"),
            ]),
            labels: Some(HashMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (LABEL_OWNER.to_owned(), self.owner.clone()),
                (LABEL_LAMBDA.to_owned(), lambda_id.to_string()),
                (LABEL_RELAY_OF.to_owned(), pod_name.to_owned()),
            ])),
            host_config: Some(host_config),
            ..Default::default()
        };
        self.create_and_start(&relay_name(pod_name), body).await
    }

    /// Whether `image` starts the base image's runner (which serves on a socket itself).
    async fn runs_the_runner(&self, image: &str) -> Result<bool> {
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(api("image inspect"))?;
        let config = inspect.config.unwrap_or_default();
        Ok(config.entrypoint.unwrap_or_default().is_empty()
            && config.cmd.unwrap_or_default() == RUNNER_COMMAND)
    }

    fn listen_host(&self) -> std::net::IpAddr {
        self.settings
            .listen_host
            .parse()
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    }

    /// The socket directory of the pod container `name`: named by a digest of the name,
    /// so that the socket's path stays within the 108 bytes a unix socket path may have.
    fn pod_dir(&self, name: &str) -> PathBuf {
        use sha2::Digest as _;
        let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        self.pods_dir.join(&digest[..POD_DIR_DIGITS])
    }

    /// Removes a pod container, its relay and its socket directory (each gone already
    /// is fine).
    pub async fn remove_pod_named(&self, name: &str) -> Result<()> {
        // The pod first: it lives in the relay's namespace.
        self.remove_container(name).await?;
        self.remove_container(&relay_name(name)).await?;
        match std::fs::remove_dir_all(self.pod_dir(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(pod = name, error = %e, "cannot remove the pod's socket directory");
            }
            _ => {}
        }
        Ok(())
    }

    /// Removes relays whose pod is gone and socket directories no pod uses (what an
    /// interrupted start or removal leaves).
    pub async fn remove_leftovers(&self) -> Result<()> {
        let pods: HashSet<String> = self
            .all_pods()
            .await?
            .iter()
            .map(|(id, p)| container_name(*id, p.version, p.index))
            .collect();
        let relays = self
            .containers_labelled(Some(LABEL_RELAY_OF.to_owned()))
            .await?;
        for relay in relays {
            let of = relay
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_RELAY_OF).cloned());
            if let (Some(of), Some(id)) = (of, relay.id)
                && !pods.contains(&of)
            {
                self.remove_container(&id).await?;
            }
        }
        let used: HashSet<PathBuf> = pods.iter().map(|name| self.pod_dir(name)).collect();
        if let Ok(entries) = std::fs::read_dir(&self.pods_dir) {
            for entry in entries.flatten() {
                if !used.contains(&entry.path()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Every pod of every lambda this service instance manages.
    pub async fn all_pods(&self) -> Result<Vec<(LambdaId, Pod)>> {
        self.pods_labelled(None).await
    }

    /// The pods of one lambda (any version), by version then index.
    pub async fn pods(&self, lambda_id: LambdaId) -> Result<Vec<Pod>> {
        Ok(self
            .pods_labelled(Some(format!("{LABEL_LAMBDA}={lambda_id}")))
            .await?
            .into_iter()
            .map(|(_, pod)| pod)
            .collect())
    }

    /// This instance's containers (running or not), and of them those with `label`
    /// (`key` or `key=value`) if given.
    async fn containers_labelled(
        &self,
        label: Option<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        // Label filters are ANDed.
        let mut labels = vec![format!("{LABEL_OWNER}={}", self.owner)];
        labels.extend(label);
        let filters = HashMap::from([("label".to_owned(), labels)]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(api("container list"))
    }

    async fn pods_labelled(&self, label: Option<String>) -> Result<Vec<(LambdaId, Pod)>> {
        let containers = self.containers_labelled(label).await?;
        let host = self.listen_host();
        let mut pods: Vec<(LambdaId, Pod)> = containers
            .into_iter()
            // A relay has the lambda's label but no pod's.
            .filter_map(|c| {
                let labels = c.labels?;
                let label = |k: &str| labels.get(k).cloned();
                let endpoint = match label(LABEL_PORT) {
                    Some(port) => Endpoint::Tcp(SocketAddr::new(host, port.parse().ok()?)),
                    None => Endpoint::Unix(label(LABEL_SOCKET)?.into()),
                };
                Some((
                    label(LABEL_LAMBDA)?.parse().ok()?,
                    Pod {
                        container_id: c.id?,
                        version: Version(label(LABEL_VERSION)?.parse().ok()?),
                        index: label(LABEL_POD)?.parse().ok()?,
                        endpoint,
                        state: c.state.map_or_else(|| "unknown".to_owned(), state_word),
                    },
                ))
            })
            .collect();
        pods.sort_by_key(|(_, p)| (p.version, p.index));
        Ok(pods)
    }

    /// The last `tail` lines a container wrote (stdout and stderr).
    /// The container's last `tail` lines, keeping only their newest `max_bytes` while
    /// they stream in (memory stays within twice that, whatever the lines' length).
    pub async fn logs(
        &self,
        container_id: &str,
        tail: usize,
        max_bytes: usize,
    ) -> Result<Vec<String>> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker.logs(container_id, Some(options));
        let mut window = NewestBytes::new(max_bytes);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => window.push(&output.into_bytes()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => break,
                Err(e) => return Err(api("container logs")(e)),
            }
        }
        Ok(window.lines())
    }

    /// Whether the container still runs (or is being restarted), and if not, why.
    pub async fn exited(&self, container_id: &str) -> Result<Option<String>> {
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(api("container inspect"))?;
        let state = inspect.state.unwrap_or_default();
        if state.running == Some(true) {
            return Ok(None);
        }
        let restarting = state.restarting == Some(true);
        let retries_left =
            inspect.restart_count.unwrap_or_default() < self.settings.restart_max_retries;
        if restarting && retries_left {
            return Ok(None);
        }
        Ok(Some(format!(
            "container exited with code {}{}{}",
            state.exit_code.unwrap_or_default(),
            if state.oom_killed == Some(true) {
                " (out of memory)"
            } else {
                ""
            },
            state
                .error
                .filter(|e| !e.is_empty())
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
        )))
    }

    /// Stops and removes a container (gone already is fine).
    pub async fn remove_container(&self, container: &str) -> Result<()> {
        match self
            .docker
            .remove_container(
                container,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(api("container remove")(e)),
        }
    }
}

/// The repository of a lambda's images.
pub fn image_repository(registry: &str, lambda_id: LambdaId) -> String {
    let registry = registry.trim_end_matches('/');
    if registry.is_empty() {
        format!("luna-lambda-{lambda_id}")
    } else {
        format!("{registry}/luna-lambda-{lambda_id}")
    }
}

/// `luna-lambda-<id>-v<version>-<pod>`.
pub fn container_name(lambda_id: LambdaId, version: Version, index: u32) -> String {
    format!("luna-lambda-{lambda_id}-v{version}-{index}")
}

/// The container name of a pod's relay.
fn relay_name(pod_name: &str) -> String {
    format!("{pod_name}-net")
}

/// Makes the directory of the pods' socket directories, which only this user may enter:
/// a pod's own directory inside is open to the pod's user (whoever its image runs as),
/// and this is what keeps everyone else on the machine out of it.
fn prepare_pods_dir(dir: &Path) -> Result<()> {
    dir_with_mode(dir, 0o700, "the pods' socket directory")?;
    // The longest socket path: the directory, a pod directory and the socket.
    let longest = dir.as_os_str().len() + 1 + POD_DIR_DIGITS + 1 + POD_SOCKET.len();
    if longest > MAX_SOCKET_PATH {
        return Err(DockerError::NotReady(format!(
            "containers.pod_socket_dir {} is too long for a unix socket path ({longest} of at most {MAX_SOCKET_PATH} bytes)",
            dir.display()
        )));
    }
    Ok(())
}

/// Bytes of a unix socket's path (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Hex digits of a pod directory's name.
const POD_DIR_DIGITS: usize = 16;

/// A pod's socket directory, writable by any user of the pod (see `prepare_pods_dir`).
fn make_pod_dir(dir: &Path) -> Result<()> {
    dir_with_mode(dir, 0o777, "the pod directory")
}

/// `dir`, made if missing, with exactly `mode`.
fn dir_with_mode(dir: &Path, mode: u32, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let failed = |e: std::io::Error| {
        DockerError::NotReady(format!("cannot prepare {what} {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(failed)
}

/// CPU, memory, GPU, restart policy and network of a pod. CPU is in millicores, memory
/// in GiB (LUNA's units).
pub fn host_config(resources: Option<&Resources>, gpu: bool, settings: &Containers) -> HostConfig {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let r = resources.cloned().unwrap_or_default();
    HostConfig {
        // `none` by default: a namespace with nothing but a loopback of its own.
        network_mode: Some(settings.pod_network.clone()),
        nano_cpus: r.cpu_limit.map(|m| i64::from(m) * 1_000_000),
        cpu_shares: r.cpu_request.map(|m| (i64::from(m) * 1024 / 1000).max(2)),
        memory: r.ram_limit.map(|g| (g * GIB) as i64),
        memory_reservation: r.ram_request.map(|g| (g * GIB) as i64),
        device_requests: gpu.then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                count: Some(-1),
                capabilities: Some(vec![vec!["gpu".to_owned()]]),
                ..Default::default()
            }]
        }),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(settings.restart_max_retries),
        }),
        // The engine keeps a pod's output in files of its own: rotated, so a chatty pod
        // cannot fill the engine's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                (
                    "max-size".to_owned(),
                    format!("{}m", settings.log_max_size_mb),
                ),
                ("max-file".to_owned(), settings.log_max_files.to_string()),
            ])),
        }),
        // A lambda needs no capability (on the host network NET_RAW would reach every
        // loopback service), nor to gain privileges.
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        ..Default::default()
    }
}

/// One `docker build` of a lambda's image.
struct BuildStage<'a> {
    dockerfile: &'a str,
    tag: &'a str,
    network: &'a str,
    args: &'a HashMap<String, String>,
}

/// The newest `max` bytes of a stream, as whole lines.
struct NewestBytes {
    max: usize,
    bytes: Vec<u8>,
    cut: bool,
}

impl NewestBytes {
    fn new(max: usize) -> Self {
        Self {
            max,
            bytes: Vec::new(),
            cut: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        // Dropping the oldest part only past twice the bound keeps the copying linear.
        if self.bytes.len() > 2 * self.max {
            self.bytes.drain(..self.bytes.len() - self.max);
            self.cut = true;
        }
    }

    fn lines(mut self) -> Vec<String> {
        if self.bytes.len() > self.max {
            self.bytes.drain(..self.bytes.len() - self.max);
            self.cut = true;
        }
        let text = String::from_utf8_lossy(&self.bytes);
        let mut lines = text.lines();
        if self.cut {
            // The first line lost its beginning.
            lines.next();
        }
        lines.map(str::to_owned).collect()
    }
}

fn state_word(state: ContainerSummaryStateEnum) -> String {
    let word = state.to_string();
    if word.is_empty() {
        "unknown".to_owned()
    } else {
        word
    }
}

/// A port on `host` that nothing listens on now and no pod of ours was given.
fn free_port(host: std::net::IpAddr, taken: &[u16]) -> Result<u16> {
    for _ in 0..64 {
        let listener = std::net::TcpListener::bind(SocketAddr::new(host, 0))
            .map_err(|e| DockerError::NotReady(format!("no free port on {host}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| DockerError::NotReady(e.to_string()))?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(DockerError::NotReady(format!("no free port on {host}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_repositories() {
        let id: LambdaId = "0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11".parse().unwrap();
        assert_eq!(
            image_repository("127.0.0.1:5000/", id),
            "127.0.0.1:5000/luna-lambda-0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11"
        );
        assert_eq!(image_repository("", id), format!("luna-lambda-{id}"));
        assert_eq!(
            container_name(id, Version::FIRST.next(), 3),
            format!("luna-lambda-{id}-v2-3")
        );
    }

    #[test]
    fn a_pods_logs_are_read_up_to_their_newest_bytes() {
        let mut window = NewestBytes::new(12);
        window.push(b"old line\n");
        window.push(b"x".repeat(100).as_slice());
        window.push(b"\nnew\nnewest\n");
        assert_eq!(window.lines(), ["new", "newest"]);
        assert!(window_bound_holds(), "memory stays within twice the bound");
        let mut small = NewestBytes::new(1024);
        small.push(b"a\nb\n");
        assert_eq!(small.lines(), ["a", "b"]);
    }

    fn window_bound_holds() -> bool {
        let mut window = NewestBytes::new(64);
        (0..1000).all(|_| {
            window.push(&[b'y'; 50]);
            window.bytes.len() <= 128
        })
    }

    #[test]
    fn resources_map_to_engine_units() {
        let r = Resources {
            cpu_limit: Some(1500),
            cpu_request: Some(250),
            ram_limit: Some(0.5),
            ram_request: Some(0.25),
        };
        let settings = Containers {
            restart_max_retries: 3,
            ..Containers::default()
        };
        let hc = host_config(Some(&r), true, &settings);
        assert_eq!(
            hc.network_mode.as_deref(),
            Some("none"),
            "no network by default"
        );
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.cpu_shares, Some(256));
        assert_eq!(hc.memory, Some(512 * 1024 * 1024));
        assert_eq!(hc.memory_reservation, Some(256 * 1024 * 1024));
        let gpu = &hc.device_requests.unwrap()[0];
        assert_eq!(
            (gpu.driver.as_deref(), gpu.count),
            (Some("nvidia"), Some(-1))
        );
        let restart = hc.restart_policy.unwrap();
        assert_eq!(restart.maximum_retry_count, Some(3));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        let logs = hc.log_config.unwrap();
        assert_eq!(logs.typ.as_deref(), Some("json-file"));
        assert_eq!(
            logs.config.unwrap(),
            HashMap::from([
                ("max-size".to_owned(), "10m".to_owned()),
                ("max-file".to_owned(), "3".to_owned())
            ]),
            "a pod's own log rotates"
        );
        let none = host_config(None, false, &Containers::default());
        assert_eq!(
            (none.memory, none.nano_cpus, none.device_requests),
            (None, None, None)
        );
    }
}
