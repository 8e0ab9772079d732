//! luna-lambda: a luna-lambda compatible serverless host. WASM lambdas run in-process
//! on wasmtime; the management API follows VisionLabs' luna-lambda. This file wires
//! the modules together and runs the server (start-up, serving, graceful shutdown).

pub mod api;
pub mod builder;
pub mod config;
pub mod docker;
pub mod docs;
pub mod edge;
pub mod front;
pub mod k8s;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod pack;
pub mod proxy;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::edge::AppState;

/// The service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The data directory is unusable.
    #[error("data directory '{path}': {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error(
        "data directory '{path}' is in use by another luna-lambda process (each service needs its own --data-dir or LUNA_LAMBDA_DATA_DIR)"
    )]
    DataDirInUse {
        /// The directory.
        path: String,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// The credential key is unusable.
    #[error("credentials key: {0}")]
    Secrets(#[from] secrets::SecretsError),
    /// The wasm engine could not be built.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The configured Docker engine cannot be used.
    #[error("container backend: {0}")]
    Docker(#[from] docker::DockerError),
    /// The configured Kubernetes cluster cannot be used.
    #[error("container backend: {0}")]
    Kube(#[from] k8s::KubeError),
    /// Recovery after restart failed.
    #[error("recovery: {0}")]
    Recover(#[from] lifecycle::LifecycleError),
    /// The tokens file cannot be used.
    #[error(transparent)]
    Auth(#[from] edge::auth::AuthError),
    /// A service thread could not be started.
    #[error("cannot start a service thread: {0}")]
    Thread(std::io::Error),
    /// The service's own binary (the compile worker) cannot be found.
    #[error("cannot find the service's binary for compile workers: {0}")]
    CompileWorker(std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (choose another address with --listen or LUNA_LAMBDA_LISTEN)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// This data directory's service instance id (generated at first start): it labels the
/// containers this instance owns, so services sharing an engine never touch each
/// other's.
fn instance_id(data: &std::path::Path) -> std::io::Result<String> {
    let path = data.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            let temp = data.join("instance-id.tmp");
            std::fs::write(&temp, &id)?;
            std::fs::rename(&temp, &path)?;
            Ok(id)
        }
    }
}

/// The store's four interfaces, as one backend implements them.
type StoreInterfaces = (
    Arc<dyn store::LambdaStore>,
    Arc<dyn store::KvStore>,
    Arc<dyn store::ArchiveStore>,
    Arc<dyn store::Coordination>,
);

/// This process's name among the replicas sharing a store: the host and the data
/// directory's instance id, stable across restarts on the same directory (a restarted
/// replica resumes the builds it held).
fn replica_name(instance: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let short: String = instance.chars().take(8).collect();
    if host.is_empty() {
        short
    } else {
        format!("{host}-{short}")
    }
}

/// Takes the data directory's exclusive lock for the life of the process: two services
/// on one directory would corrupt each other's store and artifact cache. The lock goes
/// with the process however it ends (kill -9 included).
fn lock_data_dir(data: &std::path::Path) -> Result<std::fs::File, StartupError> {
    let path = data.display().to_string();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.join("lock"))
        .map_err(|source| StartupError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartupError::DataDirInUse { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartupError::DataDir { path, source }),
    }
}

/// A started service, bound and recovered, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    /// Held until `serve` returns.
    data_dir_lock: std::fs::File,
}

impl Server {
    /// Binds the listener, locks the data directory, opens the store, builds the
    /// engine and recovers lambdas, in that order: a taken port or a data directory in
    /// use fails the start before anything is opened, recovered or restarted.
    pub async fn start(mut config: Config) -> Result<Self, StartupError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: config.listen,
                    source,
                })?;
        // `Config::load` resolved it already; a configuration built in code may still
        // hold a relative one, and the artifact cache accepts only absolute paths.
        let data_dir_error = |source| StartupError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        let data = std::path::absolute(&config.data_dir).map_err(data_dir_error)?;
        std::fs::create_dir_all(&data).map_err(data_dir_error)?;
        let data_dir_lock = lock_data_dir(&data)?;
        config.data_dir.clone_from(&data);
        let config = Arc::new(config);
        let auth = edge::auth::Authenticator::from_config(&config.auth)?.map(Arc::new);
        let instance = instance_id(&data).map_err(|source| StartupError::DataDir {
            path: data.display().to_string(),
            source,
        })?;
        // One store keeps the records and the guests' key-value data; the archives go
        // beside them (files under the data directory, or the shared database), and the
        // processes sharing it coordinate through it.
        let (store, kv, archives, coordination): StoreInterfaces = match config.store.backend {
            config::StoreBackend::Sled => {
                let store = Arc::new(store::Store::open(&data.join("store"))?);
                let archives = Arc::new(store::ArchiveFiles::open(&data.join("archives"))?);
                let sole = Arc::new(store::SoleProcess::new(store.clone(), &instance));
                (store.clone(), store, archives, sole)
            }
            config::StoreBackend::Postgres => {
                let store = Arc::new(
                    store::PgStore::connect(
                        &config.store.postgres_url,
                        config.store.postgres_pool_size,
                        &replica_name(&instance),
                    )
                    .await?,
                );
                (store.clone(), store.clone(), store.clone(), store)
            }
        };
        let sealer = secrets::Sealer::open(&config.encryption_key, &data)?;
        let metrics = metrics::Metrics::new().map_err(StartupError::Metrics)?;
        // Compiles of untrusted components run in a limited child: this binary again.
        let compile_worker = if config.builds.compile_in_child {
            let program = std::env::current_exe().map_err(StartupError::CompileWorker)?;
            Some(runtime::compile_worker::CompileWorker {
                program,
                cpu_secs: config.builds.compile_cpu_secs,
                memory_mb: config.builds.compile_memory_mb,
                timeout: Duration::from_secs(config.builds.timeout_secs),
            })
        } else {
            None
        };
        let engine = runtime::WasmEngine::with_compile_worker(
            &config,
            &data.join("artifacts"),
            compile_worker,
        )?;
        let registry = Arc::new(runtime::Registry::default());
        let logs = logs::LogSink::start(
            store.clone(),
            config.logs.max_lines_per_lambda,
            config.logs.max_line_bytes,
        )
        .map_err(StartupError::Thread)?;
        // Images are built by the Docker engine for both backends; Kubernetes runs them.
        let containers = match config.container_backend {
            config::ContainerBackend::None => None,
            backend => {
                let pods_dir = if config.containers.pod_socket_dir.is_empty() {
                    data.join("pods")
                } else {
                    std::path::PathBuf::from(&config.containers.pod_socket_dir)
                };
                let engine = docker::DockerEngine::connect(
                    &config.containers,
                    coordination.owner(),
                    &pods_dir,
                )
                .await?;
                let deployer: Arc<dyn lifecycle::Deployer> = if backend
                    == config::ContainerBackend::Kubernetes
                {
                    let kube = k8s::KubeBackend::connect(&config.kubernetes).await?;
                    tracing::info!(registry = %config.containers.registry, "container lambdas run on Kubernetes");
                    Arc::new(k8s::KubeDeployer::new(
                        kube,
                        Duration::from_secs(config.containers.start_timeout_secs),
                    ))
                } else {
                    tracing::info!(registry = %config.containers.registry, pod_network = %config.containers.pod_network, "container lambdas run on the local Docker engine");
                    if config.containers.pods_on_host_network() {
                        tracing::warn!(
                            "containers.pod_network = \"host\": every pod shares the host's network and reaches the service's API, the registry, every loopback service and the other pods; use it only when all lambdas are one trusted tenant's"
                        );
                    }
                    Arc::new(engine.clone())
                };
                Some(lifecycle::ContainerBackends {
                    images: Arc::new(engine),
                    deployer,
                })
            }
        };
        let settings = &config.containers;
        let pods = runtime::PodClient::new(
            Duration::from_millis(settings.proxy_connect_timeout_ms),
            Duration::from_millis(settings.proxy_response_timeout_ms),
            settings.proxy_max_idle_per_pod,
        );
        let lifecycle = lifecycle::Lifecycle::new(lifecycle::Parts {
            config: config.clone(),
            store: store.clone(),
            kv,
            archives,
            coordination,
            sealer,
            engine,
            registry: registry.clone(),
            containers,
            logs,
            metrics: metrics.clone(),
        });
        lifecycle.recover().await?;
        tokio::spawn(lifecycle.clone().follow_replicas());
        match &auth {
            Some(_) => tracing::info!("bearer tokens required (auth.mode = token)"),
            None => tracing::info!(
                "auth.mode = none: the Luna-Account-Id header is trusted as given; run behind a gateway that sets it"
            ),
        }
        Ok(Self {
            listener,
            state: AppState {
                config,
                lifecycle,
                registry,
                pods,
                metrics,
                auth,
            },
            data_dir_lock,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for up to the
    /// configured grace period and flushes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let Self {
            listener,
            state,
            data_dir_lock,
        } = self;
        let router = api::router(state.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(
                state.config.limits.header_read_timeout_ms,
            ))
            .keep_alive(true);
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Small responses must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let (state, router) = (state.clone(), router.clone());
            let service = hyper::service::service_fn(move |request| {
                front::dispatch(state.clone(), router.clone(), request)
            });
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        tracing::info!("shutting down: draining in-flight requests");
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
        // Lines guests wrote just before the shutdown are still in the writer's batch.
        let logs = state.lifecycle.logs().clone();
        let _ = tokio::task::spawn_blocking(move || logs.flush(Duration::from_secs(5))).await;
        state.lifecycle.store().flush().await?;
        drop(data_dir_lock);
        Ok(())
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
