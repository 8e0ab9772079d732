//! The service configuration: defaults (named constants) < TOML file < `LUNA_LAMBDA_*`
//! environment < command-line flags, validated once at start. Depends on `model` only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::SandboxBounds;

/// Default API address: loopback, because the API has no authentication of its own.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5210";
/// Default data directory (store, archives, compiled artifacts, key), relative to the
/// directory the service is started in.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Prefix of environment overrides: `LUNA_LAMBDA_<KEY>` or `LUNA_LAMBDA_<SECTION>_<KEY>`.
pub const ENV_PREFIX: &str = "LUNA_LAMBDA_";
const MIB: u64 = 1024 * 1024;

/// A bad setting; the message is one line naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or an override is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An environment variable names no setting.
    #[error("unknown setting '{0}' (no such configuration key)")]
    UnknownEnv(String),
    /// Relative paths cannot be resolved: the working directory is gone or unreadable.
    #[error("cannot resolve relative paths: the working directory is not readable: {0}")]
    WorkingDirectory(std::io::Error),
}

/// Which backend runs container lambdas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerBackend {
    /// Container archives are rejected with 42014.
    None,
    /// The local Docker engine.
    Docker,
    /// A Kubernetes cluster.
    Kubernetes,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// API address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// tracing filter, e.g. `info` or `luna_lambda=debug`.
    pub log_level: String,
    /// Base64 of 32 bytes encrypting credentials at rest; generated into the data dir when empty.
    pub encryption_key: String,
    /// `none`, `docker` or `kubernetes`.
    pub container_backend: ContainerBackend,
    /// Upload and body limits.
    pub limits: Limits,
    /// Default and maximum WASM sandbox limits.
    pub sandbox: Sandbox,
    /// The wasmtime engine.
    pub engine: EngineSettings,
    /// Key-value quotas.
    pub keyvalue: KeyValue,
    /// Build jobs.
    pub builds: Builds,
    /// Lambda logs kept by the service.
    pub logs: Logs,
    /// Where lambdas, build jobs, logs and key-value data are kept.
    pub store: StoreSettings,
    /// Container lambdas: image builds, the Docker engine, the pod proxy.
    pub containers: Containers,
    /// The Kubernetes backend.
    pub kubernetes: Kubernetes,
    /// Who may call the API: the account header as given (LUNA behind its gateway), or
    /// bearer tokens mapped to accounts.
    pub auth: Auth,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_grace_secs: u64,
}

/// Upload and body limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Compressed archive size.
    pub max_archive_bytes: u64,
    /// Sum of uncompressed entry sizes.
    pub max_uncompressed_bytes: u64,
    /// Entries in an archive.
    pub max_entries: usize,
    /// Uncompressed / compressed size of one entry.
    pub max_compression_ratio: u64,
    /// Each JSON multipart part and PATCH body.
    pub max_json_bytes: usize,
    /// Request body of a proxied call.
    pub max_proxy_body_bytes: u64,
    /// Uploads whose archives are checked (inflated, parsed) at once; more wait their
    /// turn. 0: one per CPU core.
    pub max_concurrent_checks: usize,
    /// Bytes of a WASM request's body received before the request takes an instance slot
    /// (0: none); a body that brings neither these nor its end within the lambda's
    /// request timeout is answered 408.
    pub proxy_prebuffer_bytes: usize,
    /// Time a client has to send a request head (slowloris guard); then the
    /// connection is closed.
    pub header_read_timeout_ms: u64,
}

/// Default and maximum WASM sandbox limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sandbox {
    /// Default `memory_limit_mb`.
    pub memory_limit_mb: u32,
    /// Default `request_timeout_ms`.
    pub request_timeout_ms: u64,
    /// Default `max_concurrent_requests`.
    pub max_concurrent_requests: u32,
    /// Largest `memory_limit_mb` a lambda may ask for (sizes pool slots).
    pub max_memory_limit_mb: u32,
    /// Largest `request_timeout_ms` a lambda may ask for.
    pub max_request_timeout_ms: u64,
    /// Largest `max_concurrent_requests` a lambda may ask for.
    pub max_concurrent_requests_limit: u32,
    /// Requests one account's WASM lambdas run at once, all together: one tenant cannot
    /// take every instance slot of the pool.
    pub max_concurrent_per_account: u32,
    /// Requests one WASM lambda runs at once, whatever its `max_concurrent_requests`:
    /// one lambda cannot take every instance slot of the pool either.
    pub max_instances_per_lambda: u32,
    /// Largest response body a guest may stream; past it the response is cut off.
    pub max_response_body_bytes: u64,
    /// Host resources (streams, requests, buckets, ...) one instance may hold at once.
    pub max_resources: usize,
    /// Outbound HTTP calls one request may make.
    pub max_outbound_requests: u32,
    /// Connecting to an allow-listed outbound host.
    pub outbound_connect_timeout_ms: u64,
    /// Waiting for the first byte of an outbound response (and between its bytes).
    pub outbound_response_timeout_ms: u64,
    /// Largest outbound response body a guest may read.
    pub max_outbound_response_bytes: u64,
    /// Whether guests may reach loopback, private, link-local and other non-public
    /// addresses (checked after DNS resolution). Off: an allow-listed name that
    /// resolves to such an address is refused, whatever the lambda's allow-list says.
    pub allow_private_outbound: bool,
}

/// The wasmtime engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Use the pooling allocator (falls back to on-demand if the host cannot reserve it).
    pub pooling: bool,
    /// Instances alive at once across all lambdas (pool slots).
    pub pool_instances: u32,
    /// Epoch tick period: the granularity of request deadlines.
    pub epoch_tick_ms: u64,
    /// Freed pool slots returned to the OS per batch (fewer TLB shootdowns).
    pub decommit_batch_size: usize,
    /// Bytes of each linear memory reset with memset instead of madvise on reuse.
    pub memory_keep_resident_kb: usize,
    /// Bytes of each table reset with memset instead of madvise on reuse.
    pub table_keep_resident_kb: usize,
    /// Reset only the pages a guest touched, found with Linux's `PAGEMAP_SCAN` ioctl
    /// (kernel 6.7+; ignored where unsupported). Works with the keep-resident sizes.
    pub pagemap_scan: bool,
    /// Map memory images copy-on-write (else copy initial data per instance).
    pub memory_init_cow: bool,
    /// Native stack a guest may use; deeper recursion traps.
    pub max_wasm_stack_bytes: usize,
    /// Memory (MiB) the running instances may reserve together: each request reserves
    /// its lambda's `memory_limit_mb` while it runs, and one that does not fit is shed
    /// (503). 0: half of the machine's memory.
    pub max_instance_memory_mb: u64,
}

/// Quotas of each lambda's key-value namespace (`wasi:keyvalue`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyValue {
    /// Keys per lambda, across its buckets.
    pub max_keys: u64,
    /// Bytes of one key (and of one bucket name).
    pub max_key_bytes: usize,
    /// Bytes of one value.
    pub max_value_bytes: u64,
    /// Bytes of all keys and values of a lambda.
    pub max_total_bytes: u64,
}

/// Build jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Builds {
    /// Builds running at once.
    pub max_concurrent: usize,
    /// A build running longer fails (a compile too, ended where it is).
    pub timeout_secs: u64,
    /// Compile WASM components in a child process of the service's own binary under the
    /// limits below (a component that makes the compiler spin or allocate costs that
    /// child only). Off: compiles run in the service, unlimited.
    pub compile_in_child: bool,
    /// CPU seconds one compile may use.
    pub compile_cpu_secs: u64,
    /// Validations one account (or, together, the callers naming none) may run at once;
    /// more are refused with 503 / 42010. Validations also wait for a build slot.
    pub max_validates_per_account: usize,
    /// MiB of memory one compile may allocate.
    pub compile_memory_mb: u64,
    /// After a job ends its status stays readable this long, then reads `not_found`.
    pub retention_secs: u64,
    /// Image log lines kept per job.
    pub max_log_lines: usize,
    /// Longer image log lines (a build step's output) are cut.
    pub max_log_line_bytes: usize,
    /// Accepted uploads kept in memory for their build jobs, in total (MiB): a job whose
    /// upload is kept neither reads its archive back nor checks it again. Above the
    /// bound (0: never) jobs read and check the stored archive.
    pub max_staged_mb: u64,
}

/// Lambda logs kept by the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logs {
    /// Lines kept per lambda (older lines are dropped).
    pub max_lines_per_lambda: usize,
    /// Longer guest lines are cut.
    pub max_line_bytes: usize,
}

/// Which database keeps the service's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded, under the data directory: one replica, no external service.
    #[default]
    Sled,
    /// A PostgreSQL database that every replica shares.
    Postgres,
}

/// Where lambdas, build jobs, logs and key-value data are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `sled` (embedded) or `postgres`.
    pub backend: StoreBackend,
    /// The PostgreSQL connection, as a `postgres://user:password@host:port/database`
    /// URL or `key=value` settings (`host=/run/postgresql dbname=luna`); required with
    /// `backend = "postgres"`.
    pub postgres_url: String,
    /// Connections this replica keeps to PostgreSQL at most (and half as many more for
    /// the locks its commands hold).
    pub postgres_pool_size: usize,
    /// How long a replica's claim on a build job lasts unless renewed (it renews every
    /// third of it): when the replica dies, another takes the build over after this.
    pub build_lease_secs: u64,
    /// Every replica compares what it serves with every lambda's record this often,
    /// for a change notice it missed (they propagate at once otherwise).
    pub reconcile_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sled,
            postgres_url: String::new(),
            postgres_pool_size: 16,
            build_lease_secs: 15,
            reconcile_secs: 5,
        }
    }
}

/// Container lambdas: image builds, the Docker engine, the pod proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Containers {
    /// Docker engine socket; empty: `DOCKER_HOST` or `/var/run/docker.sock`.
    pub docker_socket: String,
    /// Registry images are pushed to (`host[:port][/path]`); empty: images stay in the
    /// local engine (Docker backend only).
    pub registry: String,
    /// Base image of Python lambdas that name none (`deploy/base-image/build.sh` makes it).
    pub base_image: String,
    /// The package index a Python lambda's `requirements.txt` installs from (pip's
    /// `PIP_INDEX_URL` in the dependency stage); empty: what the base image configures.
    pub pip_index_url: String,
    /// The images a lambda may build on (`parameters.base_image`, a Dockerfile's `FROM`):
    /// `name:tag`, or `name:*` for any tag of `name`. Empty: `base_image` alone. Another
    /// lambda's image is never one of them unless named here.
    pub allowed_base_images: Vec<String>,
    /// Docker backend: the network of lambda pods. `none` (the default): each pod has a
    /// network namespace of its own with nothing but its loopback, no way out and no
    /// way to the host, the service, the registry or other pods; the service reaches
    /// it through a unix socket in a directory only the two share. The name of a Docker
    /// network: the same, plus what that network routes to (the operator's choice of
    /// outbound access). `host`: pods share the host's network (every loopback service,
    /// each other's ports): only for a single trusted tenant, warned about at start.
    pub pod_network: String,
    /// Docker backend: where each pod's socket directory is made (absolute, on the
    /// engine's machine); empty: `<data_dir>/pods`.
    pub pod_socket_dir: String,
    /// Address pods listen on with `pod_network = "host"`.
    pub listen_host: String,
    /// Every Docker engine call but builds and pushes.
    pub docker_timeout_secs: u64,
    /// A new version's pods must answer `/healthcheck` within this.
    pub start_timeout_secs: u64,
    /// Restarts of a crashed container before it stays down (`terminated`).
    pub restart_max_retries: i64,
    /// Connecting to a pod from the proxy.
    pub proxy_connect_timeout_ms: u64,
    /// Waiting for a pod's response headers.
    pub proxy_response_timeout_ms: u64,
    /// Idle keep-alive connections kept per pod.
    pub proxy_max_idle_per_pod: usize,
    /// Log lines read per pod when the logs route names no `tail_lines` (and at most).
    pub max_log_lines_per_pod: usize,
    /// Bytes read per pod for one logs request, whatever the lines (their newest part).
    pub max_log_bytes_per_pod: usize,
    /// Docker backend: a pod's own log file rotates at this size (MiB) ...
    pub log_max_size_mb: u64,
    /// ... keeping this many files.
    pub log_max_files: u64,
}

impl Limits {
    /// `max_concurrent_checks`, 0 resolved to the machine's cores.
    pub fn concurrent_checks(&self) -> usize {
        match self.max_concurrent_checks {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

/// `containers.pod_network`: pods without any network.
pub const POD_NETWORK_NONE: &str = "none";
/// `containers.pod_network`: pods on the host's network.
pub const POD_NETWORK_HOST: &str = "host";

impl Containers {
    /// Whether pods share the host's network (and are reached over TCP).
    pub fn pods_on_host_network(&self) -> bool {
        self.pod_network == POD_NETWORK_HOST
    }
}

/// The Kubernetes backend (`container_backend = "kubernetes"`): images are still built
/// by the Docker engine and pushed to `containers.registry`, which the cluster pulls from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kubernetes {
    /// A kubeconfig file; empty: kube's inference (`KUBECONFIG` or `~/.kube/config`,
    /// else the in-cluster service account).
    pub kubeconfig: String,
    /// Context of the `kubeconfig` file; empty: its current context.
    pub context: String,
    /// Port of each lambda's ClusterIP Service (the proxy sends there).
    pub service_port: i32,
    /// Connecting to, and waiting on, the API server.
    pub api_timeout_secs: u64,
    /// The user id lambda containers run as (never 0: pods run as non-root).
    pub run_as_user: i64,
    /// The namespace the service's own pods run in: the only source each lambda's
    /// NetworkPolicy admits.
    pub service_namespace: String,
    /// `key=value`: the label of the service's own pods in `service_namespace`.
    pub service_pod_label: String,
    /// Whether lambda pods may open connections (the NetworkPolicy's egress); off, a
    /// pod answers requests and reaches nothing, DNS included.
    pub pod_egress: bool,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            context: String::new(),
            service_port: 80,
            api_timeout_secs: 30,
            run_as_user: 65_532,
            service_namespace: "luna-lambda".to_owned(),
            service_pod_label: "app.kubernetes.io/name=luna-lambda".to_owned(),
            pod_egress: false,
        }
    }
}

impl Default for Containers {
    fn default() -> Self {
        Self {
            docker_socket: String::new(),
            registry: String::new(),
            base_image: "luna-lambda/python:bookworm".to_owned(),
            allowed_base_images: Vec::new(),
            pip_index_url: String::new(),
            pod_network: POD_NETWORK_NONE.to_owned(),
            pod_socket_dir: String::new(),
            listen_host: "127.0.0.1".to_owned(),
            docker_timeout_secs: 60,
            start_timeout_secs: 60,
            restart_max_retries: 3,
            proxy_connect_timeout_ms: 2_000,
            proxy_response_timeout_ms: 60_000,
            proxy_max_idle_per_pod: 64,
            max_log_lines_per_pod: 10_000,
            max_log_bytes_per_pod: 1024 * 1024,
            log_max_size_mb: 10,
            log_max_files: 3,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5210))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
            encryption_key: String::new(),
            container_backend: ContainerBackend::None,
            limits: Limits::default(),
            sandbox: Sandbox::default(),
            engine: EngineSettings::default(),
            keyvalue: KeyValue::default(),
            builds: Builds::default(),
            logs: Logs::default(),
            store: StoreSettings::default(),
            containers: Containers::default(),
            kubernetes: Kubernetes::default(),
            auth: Auth::default(),
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_archive_bytes: 64 * MIB,
            max_uncompressed_bytes: 256 * MIB,
            max_entries: 10_000,
            max_compression_ratio: 100,
            max_json_bytes: 1024 * 1024,
            max_proxy_body_bytes: 64 * MIB,
            proxy_prebuffer_bytes: 64 * 1024,
            max_concurrent_checks: 0,
            header_read_timeout_ms: 30_000,
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            memory_limit_mb: 128,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 100,
            max_memory_limit_mb: 1024,
            max_request_timeout_ms: 600_000,
            max_concurrent_requests_limit: 10_000,
            max_concurrent_per_account: 500,
            max_instances_per_lambda: 250,
            max_response_body_bytes: 64 * MIB,
            max_resources: 10_000,
            max_outbound_requests: 64,
            outbound_connect_timeout_ms: 5_000,
            outbound_response_timeout_ms: 30_000,
            max_outbound_response_bytes: 16 * MIB,
            allow_private_outbound: false,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            pooling: true,
            pool_instances: 1000,
            epoch_tick_ms: 5,
            decommit_batch_size: 32,
            // With PAGEMAP_SCAN only touched pages are reset, in place: reuse costs
            // neither madvise nor page faults (2-3x the proxy throughput measured here,
            // benches/suite.py). Without it, memset of 256 KiB still beat madvise.
            memory_keep_resident_kb: 256,
            table_keep_resident_kb: 64,
            pagemap_scan: true,
            memory_init_cow: true,
            max_wasm_stack_bytes: 512 * 1024,
            max_instance_memory_mb: 0,
        }
    }
}

impl Default for KeyValue {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            max_key_bytes: 1024,
            max_value_bytes: MIB,
            max_total_bytes: 64 * MIB,
        }
    }
}

impl Default for Builds {
    fn default() -> Self {
        Self {
            max_concurrent: 2,
            timeout_secs: 300,
            compile_in_child: true,
            compile_cpu_secs: 120,
            max_validates_per_account: 2,
            compile_memory_mb: 4096,
            retention_secs: 3600,
            max_log_lines: 1000,
            max_log_line_bytes: 4096,
            max_staged_mb: 256,
        }
    }
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            max_lines_per_lambda: 10_000,
            max_line_bytes: 4096,
        }
    }
}

/// How callers are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// LUNA's contract: the Luna-Account-Id header is trusted as given (a gateway in
    /// front authenticates), and a request without one acts on every account.
    #[default]
    None,
    /// `Authorization: Bearer <token>` on every request but the health, version and
    /// documentation routes; a token acts as its account only.
    Token,
}

/// Authentication (`[auth]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// `none` (default) or `token`.
    pub mode: AuthMode,
    /// With `token`: a file of lines `<account uuid> <sha256 hex of the token>` (`#`
    /// comments and blank lines allowed), read at start.
    pub tokens_file: String,
    /// With `token`: sha256 hex of the operator's token, the one token that may use
    /// the unscoped forms of the routes, `/metrics` and `/1/config`; empty: none.
    pub operator_token_sha256: String,
}

/// Command-line overrides (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

impl Containers {
    /// Whether a lambda may build on `image` (`name:tag`; a name without a tag is
    /// `name:latest`).
    pub fn base_image_allowed(&self, image: &str) -> bool {
        let image = if image
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            image.to_owned()
        } else {
            format!("{image}:latest")
        };
        if self.allowed_base_images.is_empty() {
            return image == self.base_image;
        }
        self.allowed_base_images
            .iter()
            .any(|allowed| match allowed.strip_suffix(":*") {
                Some(name) => image
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(':') && !rest[1..].contains(['/', ':'])),
                None => *allowed == image,
            })
    }
}

impl Config {
    /// Builds the configuration from an optional file, the environment (given as pairs
    /// so tests need not touch the process environment) and command-line overrides;
    /// relative paths are resolved against the process's working directory.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let start_dir = std::env::current_dir().map_err(ConfigError::WorkingDirectory)?;
        Self::load_in(&start_dir, file, env, overrides)
    }

    /// [`Config::load`] for a service started in `start_dir` (absolute). Paths are made
    /// absolute here, once, so no component depends on the working directory later:
    /// a relative path in the file is relative to the file's own directory (the file
    /// works wherever the service is started), one from the environment, a flag or a
    /// default is relative to `start_dir`.
    pub fn load_in(
        start_dir: &Path,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(given) = file {
            let path = &absolute(start_dir, given);
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let mut from_file: toml::Value = text
                .parse::<toml::Table>()
                .map(toml::Value::Table)
                .map_err(|e| {
                    ConfigError::Invalid(format!("{}: {}", path.display(), e.message()))
                })?;
            resolve_file_paths(&mut from_file, path.parent().unwrap_or(start_dir));
            merge(&mut tree, from_file);
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (key, value) in env {
            apply_env(&mut tree, &key, &value)?;
        }
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                ConfigError::Invalid(format!("{}: {}", e.path(), e.inner().message()))
            },
        )?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir.clone_from(dir);
        }
        config.resolve_paths(start_dir);
        config.validate()?;
        Ok(config)
    }

    /// Makes every path setting absolute against `base` (values from the file already
    /// are). Empty values keep their meaning ("not set") and are left alone.
    fn resolve_paths(&mut self, base: &Path) {
        if !self.data_dir.as_os_str().is_empty() {
            self.data_dir = absolute(base, &self.data_dir);
        }
        // The string settings that name a file or socket (FILE_PATH_KEYS but data_dir).
        for value in [
            &mut self.containers.docker_socket,
            &mut self.containers.pod_socket_dir,
            &mut self.kubernetes.kubeconfig,
            &mut self.auth.tokens_file,
        ] {
            if let Some(resolved) = resolve_path_text(value, base) {
                *value = resolved;
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must name a directory, got ''".into());
        }
        let s = &self.sandbox;
        if s.memory_limit_mb == 0 || s.memory_limit_mb > s.max_memory_limit_mb {
            return bad(format!(
                "sandbox.memory_limit_mb must be in 1..sandbox.max_memory_limit_mb ({}), got {}",
                s.max_memory_limit_mb, s.memory_limit_mb
            ));
        }
        if s.request_timeout_ms == 0 || s.request_timeout_ms > s.max_request_timeout_ms {
            return bad(format!(
                "sandbox.request_timeout_ms must be in 1..{}, got {}",
                s.max_request_timeout_ms, s.request_timeout_ms
            ));
        }
        if s.max_concurrent_requests == 0
            || s.max_concurrent_requests > s.max_concurrent_requests_limit
        {
            return bad(format!(
                "sandbox.max_concurrent_requests must be in 1..{}, got {}",
                s.max_concurrent_requests_limit, s.max_concurrent_requests
            ));
        }
        if s.max_concurrent_per_account == 0 || s.max_instances_per_lambda == 0 {
            return bad(
                "sandbox.max_concurrent_per_account and max_instances_per_lambda must be positive"
                    .into(),
            );
        }
        if s.max_resources == 0
            || s.outbound_connect_timeout_ms == 0
            || s.outbound_response_timeout_ms == 0
        {
            return bad(
                "sandbox.max_resources and the sandbox.outbound_*_timeout_ms must be positive"
                    .into(),
            );
        }
        // Cranelift needs some stack of its own for host calls; below this nothing runs.
        if self.engine.max_wasm_stack_bytes < 64 * 1024 {
            return bad(format!(
                "engine.max_wasm_stack_bytes must be at least 65536, got {}",
                self.engine.max_wasm_stack_bytes
            ));
        }
        let kv = &self.keyvalue;
        if kv.max_keys == 0
            || kv.max_key_bytes == 0
            || kv.max_value_bytes == 0
            || kv.max_key_bytes > 65_535
        {
            return bad("keyvalue.max_keys, max_key_bytes and max_value_bytes must be positive (max_key_bytes at most 65535)".into());
        }
        if self.engine.epoch_tick_ms == 0 || self.engine.pool_instances == 0 {
            return bad("engine.epoch_tick_ms and engine.pool_instances must be positive".into());
        }
        if self.builds.max_concurrent == 0
            || self.builds.timeout_secs == 0
            || self.builds.max_log_line_bytes == 0
            || self.builds.compile_cpu_secs == 0
            || self.builds.compile_memory_mb == 0
            || self.builds.max_validates_per_account == 0
        {
            return bad("builds.max_concurrent, timeout_secs, max_log_line_bytes, compile_cpu_secs, compile_memory_mb and max_validates_per_account must be positive".into());
        }
        if self.limits.max_archive_bytes == 0
            || self.limits.max_entries == 0
            || self.limits.header_read_timeout_ms == 0
        {
            return bad("limits.max_archive_bytes, limits.max_entries and limits.header_read_timeout_ms must be positive".into());
        }
        if self.store.backend == StoreBackend::Postgres && self.store.postgres_url.trim().is_empty()
        {
            return bad(
                "store.postgres_url must name the database when store.backend = \"postgres\""
                    .into(),
            );
        }
        // Replicas read each other's sealed credentials: a key generated into one data
        // directory would leave the others unable to unseal them.
        if self.store.backend == StoreBackend::Postgres && self.encryption_key.is_empty() {
            return bad(
                "encryption_key must be set when store.backend = \"postgres\" (every \
                 process on the database unseals the same credentials)"
                    .into(),
            );
        }
        if self.store.postgres_pool_size == 0 {
            return bad("store.postgres_pool_size must be at least 1".into());
        }
        if self.store.build_lease_secs < 3 {
            return bad(
                "store.build_lease_secs must be at least 3 (a lease is renewed every third of it)"
                    .into(),
            );
        }
        if self.store.reconcile_secs == 0 {
            return bad("store.reconcile_secs must be at least 1".into());
        }
        if !self.encryption_key.is_empty() {
            crate::secrets::parse_key(&self.encryption_key)
                .map_err(|e| ConfigError::Invalid(format!("encryption_key: {e}")))?;
        }
        if self.container_backend == ContainerBackend::Kubernetes {
            if self.containers.registry.is_empty() {
                return bad("container_backend 'kubernetes' needs containers.registry: the cluster pulls the images from it".into());
            }
            let k = &self.kubernetes;
            if !(1..=65_535).contains(&k.service_port) || k.api_timeout_secs == 0 {
                return bad(format!(
                    "kubernetes.service_port must be in 1..65535 and kubernetes.api_timeout_secs positive, got {} and {}",
                    k.service_port, k.api_timeout_secs
                ));
            }
            if k.run_as_user <= 0 {
                return bad(format!(
                    "kubernetes.run_as_user must be a non-root user id (1 or more), got {}",
                    k.run_as_user
                ));
            }
            if k.service_namespace.is_empty()
                || !k
                    .service_pod_label
                    .split_once('=')
                    .is_some_and(|(key, value)| !key.is_empty() && !value.is_empty())
            {
                return bad(format!(
                    "kubernetes.service_namespace must be set and kubernetes.service_pod_label be key=value, got '{}' and '{}'",
                    k.service_namespace, k.service_pod_label
                ));
            }
        }
        let c = &self.containers;
        if c.docker_timeout_secs == 0
            || c.start_timeout_secs == 0
            || c.proxy_connect_timeout_ms == 0
            || c.proxy_response_timeout_ms == 0
            || c.restart_max_retries < 0
            || c.log_max_size_mb == 0
            || c.log_max_files == 0
            || c.max_log_bytes_per_pod == 0
        {
            return bad("containers.*_timeout_*, containers.log_max_size_mb, log_max_files and max_log_bytes_per_pod must be positive and containers.restart_max_retries at least 0".into());
        }
        // A Docker network name: letters, digits and `_.-`, starting with one of the first.
        let network_name = |n: &str| {
            n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        if !network_name(&c.pod_network) {
            return bad(format!(
                "containers.pod_network must be 'none', 'host' or a Docker network's name, got '{}'",
                c.pod_network
            ));
        }
        if c.listen_host.parse::<std::net::IpAddr>().is_err() {
            return bad(format!(
                "containers.listen_host must be an IP address, got '{}'",
                c.listen_host
            ));
        }
        if let Some((name, tag)) = c.base_image.rsplit_once(':')
            && let Some(problem) = (crate::model::BaseImage {
                name: name.to_owned(),
                tag: tag.to_owned(),
            })
            .problem()
        {
            return bad(format!("containers.base_image: {problem}"));
        } else if !c.base_image.contains(':') {
            return bad(format!(
                "containers.base_image must be name:tag, got '{}'",
                c.base_image
            ));
        }
        let auth = &self.auth;
        if !auth.operator_token_sha256.is_empty() && !is_sha256_hex(&auth.operator_token_sha256) {
            return bad(
                "auth.operator_token_sha256 must be 64 hexadecimal digits (sha256 of the token)"
                    .into(),
            );
        }
        if auth.mode == AuthMode::Token
            && auth.tokens_file.is_empty()
            && auth.operator_token_sha256.is_empty()
        {
            return bad("auth.mode 'token' needs auth.tokens_file or auth.operator_token_sha256: no token could call the API".into());
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError::Invalid(format!("log_level '{}': {e}", self.log_level)))?;
        Ok(())
    }

    /// Upper bounds for `deploy_parameters.sandbox`.
    pub fn sandbox_bounds(&self) -> SandboxBounds {
        SandboxBounds {
            max_memory_limit_mb: self.sandbox.max_memory_limit_mb,
            max_request_timeout_ms: self.sandbox.max_request_timeout_ms,
            max_concurrent_requests: self.sandbox.max_concurrent_requests_limit,
        }
    }

    /// The effective configuration as JSON, with secrets masked.
    pub fn masked_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        mask_secrets(&mut value);
        if let Some(url) = value.pointer_mut("/store/postgres_url") {
            *url = serde_json::Value::String(mask_url_password(&self.store.postgres_url));
        }
        value
    }

    /// The effective configuration as TOML text, with secrets masked (for `text/plain`).
    pub fn masked_text(&self) -> String {
        let value = self.masked_json();
        toml::to_string_pretty(&value).unwrap_or_default()
    }
}

/// 64 hexadecimal digits: how a sha256 digest is written in the auth settings.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

const MASK: &str = "********";

/// A database URL with its password masked: `scheme://user:password@host` or a
/// `password=...` setting.
fn mask_url_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.rsplit_once('@')
    {
        let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
        let masked = if credentials.contains(':') {
            format!("{user}:{MASK}")
        } else {
            user.to_owned()
        };
        return format!("{scheme}://{masked}@{host}");
    }
    url.split_whitespace()
        .map(|setting| match setting.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={MASK}"),
            _ => setting.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_secrets(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        for (key, v) in map.iter_mut() {
            let lower = key.to_ascii_lowercase();
            let secret = ["password", "token", "key", "secret"]
                .iter()
                .any(|s| lower.contains(s));
            if secret && v.is_string() {
                *v = serde_json::Value::String(MASK.to_owned());
            } else {
                mask_secrets(v);
            }
        }
    }
}

/// Every key of the file that names a path: `data_dir` and the string path settings.
const FILE_PATH_KEYS: [&[&str]; 5] = [
    &["data_dir"],
    &["containers", "docker_socket"],
    &["containers", "pod_socket_dir"],
    &["kubernetes", "kubeconfig"],
    &["auth", "tokens_file"],
];

/// Resolves the file's own relative paths against the file's directory.
fn resolve_file_paths(file: &mut toml::Value, file_dir: &Path) {
    for key in FILE_PATH_KEYS {
        let mut node = Some(&mut *file);
        for part in key {
            node = node.and_then(|n| n.get_mut(*part));
        }
        if let Some(toml::Value::String(value)) = node
            && let Some(resolved) = resolve_path_text(value, file_dir)
        {
            *value = resolved;
        }
    }
}

/// `value` made absolute against `base`, or `None` when it stays as it is: empty ("not
/// set"), already absolute, a URL such as `unix:///run/docker.sock`, or not UTF-8 once
/// joined (a path setting is text).
fn resolve_path_text(value: &str, base: &Path) -> Option<String> {
    if value.is_empty() || value.contains("://") || Path::new(value).is_absolute() {
        return None;
    }
    absolute(base, Path::new(value)).to_str().map(str::to_owned)
}

/// `path` joined onto `base` when relative, without `.` components (so `./data` reads
/// `/srv/data` in logs). `..` is kept: removing it lexically is wrong across symlinks.
fn absolute(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    };
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    // Unknown keys are kept so deserialisation rejects them by name.
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Applies `LUNA_LAMBDA_<KEY>` / `LUNA_LAMBDA_<SECTION>_<KEY>` onto the tree, parsing
/// the value as the type the setting already has.
fn apply_env(tree: &mut toml::Value, var: &str, raw: &str) -> Result<(), ConfigError> {
    let name = var[ENV_PREFIX.len()..].to_ascii_lowercase();
    let toml::Value::Table(root) = tree else {
        return Err(ConfigError::Invalid(
            "configuration root is not a table".into(),
        ));
    };
    let mut targets: BTreeMap<String, (Option<String>, String)> = BTreeMap::new();
    for (key, value) in root.iter() {
        if let toml::Value::Table(section) = value {
            for sub in section.keys() {
                targets.insert(format!("{key}_{sub}"), (Some(key.clone()), sub.clone()));
            }
        } else {
            targets.insert(key.clone(), (None, key.clone()));
        }
    }
    let Some((section, key)) = targets.get(&name).cloned() else {
        return Err(ConfigError::UnknownEnv(var.to_owned()));
    };
    let table = match &section {
        Some(s) => match root.get_mut(s) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(ConfigError::UnknownEnv(var.to_owned())),
        },
        None => root,
    };
    let invalid = |what: &str| ConfigError::Invalid(format!("{var}='{raw}' is not {what}"));
    let parsed = match table.get(&key) {
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| invalid("an integer"))?)
        }
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(match raw.trim() {
            "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            _ => return Err(invalid("a boolean")),
        }),
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| invalid("a number"))?)
        }
        // A list is given comma-separated; empty is the empty list.
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    };
    table.insert(key, parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base64 of 32 zero bytes.
    const SHARED_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn database_passwords_are_masked_in_the_shown_configuration() {
        for (url, shown) in [
            (
                "postgres://luna:s3cret@db:5432/luna",
                "postgres://luna:********@db:5432/luna",
            ),
            ("postgres://luna@db/luna", "postgres://luna@db/luna"),
            (
                "host=db user=luna password=s3cret dbname=luna",
                "host=db user=luna password=******** dbname=luna",
            ),
            ("", ""),
        ] {
            assert_eq!(mask_url_password(url), shown);
        }
        let config = Config::load(
            None,
            env(&[
                ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
                (
                    "LUNA_LAMBDA_STORE_POSTGRES_URL",
                    "postgres://luna:s3cret@db/luna",
                ),
                ("LUNA_LAMBDA_ENCRYPTION_KEY", SHARED_KEY),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.store.backend, StoreBackend::Postgres);
        let shown = config.masked_json().to_string();
        assert!(
            shown.contains("postgres://luna:********@db/luna"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn the_postgres_backend_needs_a_database() {
        let err = Config::load(
            None,
            env(&[("LUNA_LAMBDA_STORE_BACKEND", "postgres")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("store.postgres_url"), "{err}");
        let err = Config::load(
            None,
            env(&[
                ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
                ("LUNA_LAMBDA_STORE_POSTGRES_URL", "host=db"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("encryption_key"), "{err}");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c =
            Config::load_in(Path::new("/srv/luna"), None, vec![], &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from("/srv/luna/data"));
    }

    #[test]
    fn relative_paths_resolve_once_against_where_they_were_given() {
        let start = Path::new("/start");
        // Flags, the environment and defaults: against the start directory.
        let c = Config::load_in(
            start,
            None,
            env(&[
                ("LUNA_LAMBDA_KUBERNETES_KUBECONFIG", "kube/config"),
                (
                    "LUNA_LAMBDA_CONTAINERS_DOCKER_SOCKET",
                    "unix:///run/docker.sock",
                ),
            ]),
            &Overrides {
                data_dir: Some("./state/../data".into()),
                listen: None,
            },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/start/state/../data"));
        assert_eq!(c.kubernetes.kubeconfig, "/start/kube/config");
        assert_eq!(c.containers.docker_socket, "unix:///run/docker.sock");
        assert_eq!(
            c.kubernetes.context, "",
            "a setting that is not a path is kept"
        );

        // A file's own relative paths: against the file's directory, wherever it is
        // named from; what the environment sets over them is against the start.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/luna.toml"),
            "data_dir = \"state\"\n[containers]\ndocker_socket = \"../run/docker.sock\"\n",
        )
        .unwrap();
        let c = Config::load_in(
            dir.path(),
            Some(Path::new("etc/luna.toml")),
            env(&[("LUNA_LAMBDA_KUBERNETES_KUBECONFIG", "kc")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.data_dir, dir.path().join("etc/state"));
        assert_eq!(
            c.containers.docker_socket,
            dir.path().join("etc/../run/docker.sock").to_str().unwrap()
        );
        assert_eq!(
            c.kubernetes.kubeconfig,
            dir.path().join("kc").to_str().unwrap()
        );

        let err = Config::load_in(
            start,
            None,
            env(&[("LUNA_LAMBDA_DATA_DIR", "")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("data_dir"), "{err}");
    }

    #[test]
    fn env_overrides_by_type() {
        let c = Config::load(
            None,
            env(&[
                ("LUNA_LAMBDA_SANDBOX_MEMORY_LIMIT_MB", "64"),
                ("LUNA_LAMBDA_ENGINE_POOLING", "false"),
                ("LUNA_LAMBDA_LISTEN", "127.0.0.1:0"),
                ("OTHER", "ignored"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.sandbox.memory_limit_mb, 64);
        assert!(!c.engine.pooling);
        assert_eq!(c.listen.port(), 0);
    }

    #[test]
    fn bad_settings_are_one_line_errors() {
        for (pairs, needle) in [
            (vec![("LUNA_LAMBDA_NOPE", "1")], "LUNA_LAMBDA_NOPE"),
            (
                vec![("LUNA_LAMBDA_SANDBOX_MEMORY_LIMIT_MB", "lots")],
                "integer",
            ),
            (vec![("LUNA_LAMBDA_LISTEN", "nowhere")], "invalid"),
            (
                vec![("LUNA_LAMBDA_SANDBOX_MEMORY_LIMIT_MB", "0")],
                "memory_limit_mb",
            ),
            (
                vec![("LUNA_LAMBDA_ENCRYPTION_KEY", "short")],
                "encryption_key",
            ),
            (
                vec![("LUNA_LAMBDA_CONTAINERS_POD_NETWORK", "container:other-pod")],
                "containers.pod_network",
            ),
            (
                vec![("LUNA_LAMBDA_CONTAINERS_POD_NETWORK", "")],
                "containers.pod_network",
            ),
        ] {
            let err = Config::load(None, env(&pairs), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\n[sandbox]\nrequest_timeout_ms = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[("LUNA_LAMBDA_DATA_DIR", "/from/env")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.sandbox.request_timeout_ms, 5);
        let c = Config::load(
            Some(&path),
            vec![],
            &Overrides {
                data_dir: Some("/flag".into()),
                listen: None,
            },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        std::fs::write(&path, "unknown_key = 1\n").unwrap();
        let err = Config::load(Some(&path), vec![], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("unknown_key"), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config {
            encryption_key: "c2VjcmV0".into(),
            ..Config::default()
        };
        let text = c.masked_json().to_string();
        assert!(!text.contains("c2VjcmV0"));
        assert!(text.contains(MASK));
    }
}
