//! The lifecycle against fake container backends: a rolling swap, a failed rollout and
//! a re-attach after a restart, told by the calls the backends saw and what serves.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::*;
use crate::builder::archive::tests::zip_of;
use crate::builder::container::BuildContext;
use crate::model::{Endpoint, LambdaStatus, Version};
use crate::store::{ArchiveFiles, BuildKind, BuildRecord, SoleProcess, Store};

/// What a fake backend was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Build(Version),
    Deploy {
        version: Version,
        previous: Option<Version>,
    },
    RetireOthers(Version),
    Retire(Version),
    Remove,
    RemoveImages,
    Reattach(Version),
}

/// Both container backends in one, recording every call; deploys of the versions in
/// `failing` fail as a rollout that never became ready.
#[derive(Debug, Default)]
struct FakeBackend {
    calls: Mutex<Vec<Call>>,
    failing: Mutex<BTreeSet<Version>>,
}

impl FakeBackend {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn fail(&self, version: Version) {
        self.failing.lock().unwrap().insert(version);
    }
}

/// Where the fake's pods of a version listen: deploys and re-attaches differ, so a test
/// sees which one serves.
fn endpoint(version: Version, reattached: bool) -> Endpoint {
    let port = 20_000 + u16::try_from(version.0).unwrap() + if reattached { 500 } else { 0 };
    Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
}

#[async_trait]
impl ImageBuilder for FakeBackend {
    fn image(&self, lambda_id: LambdaId, version: Version) -> String {
        format!("fake/{lambda_id}:{version}")
    }

    async fn build(
        &self,
        lambda_id: LambdaId,
        version: Version,
        _context: BuildContext,
        _reuse: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<BuiltImage, DeployError> {
        self.record(Call::Build(version));
        // What a build step may print: one line of any length.
        progress(&format!("step output: {}", "x".repeat(100_000)));
        progress("fake image built");
        Ok(BuiltImage {
            reference: self.image(lambda_id, version),
            image_id: format!("sha256:{version}"),
        })
    }

    async fn remove_images(&self, _lambda_id: LambdaId) -> Result<usize, DeployError> {
        self.record(Call::RemoveImages);
        Ok(1)
    }
}

#[async_trait]
impl Deployer for FakeBackend {
    async fn deploy(
        &self,
        request: &PodRequest,
        previous: Option<&PodRequest>,
        progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError> {
        self.record(Call::Deploy {
            version: request.version,
            previous: previous.map(|p| p.version),
        });
        if self.failing.lock().unwrap().contains(&request.version) {
            progress("fake rollout failed");
            return Err(DeployError::PodsNotReady(vec!["pod 0: never ready".into()]));
        }
        Ok(vec![endpoint(request.version, false)])
    }

    async fn retire_others(&self, _lambda_id: LambdaId, version: Version) {
        self.record(Call::RetireOthers(version));
    }

    async fn retire(&self, _lambda_id: LambdaId, version: Version) {
        self.record(Call::Retire(version));
    }

    async fn remove(&self, _lambda_id: LambdaId, _namespaces: &[&str]) {
        self.record(Call::Remove);
    }

    async fn pods(
        &self,
        _lambda_id: LambdaId,
        _namespace: &str,
        version: Version,
    ) -> Result<Vec<PodState>, DeployError> {
        Ok(vec![PodState {
            name: "fake-0".into(),
            version,
            state: "running".into(),
        }])
    }

    async fn logs(
        &self,
        _namespace: &str,
        pod: &str,
        lines: usize,
        _max_bytes: usize,
    ) -> Result<Vec<String>, DeployError> {
        Ok(vec![format!("{pod}: {lines} lines")])
    }

    async fn reattach(
        &self,
        request: &PodRequest,
        _progress: Progress<'_>,
    ) -> Result<Vec<Endpoint>, DeployError> {
        self.record(Call::Reattach(request.version));
        Ok(vec![endpoint(request.version, true)])
    }

    async fn endpoints(&self, request: &PodRequest) -> Result<Vec<Endpoint>, DeployError> {
        Ok(vec![endpoint(request.version, true)])
    }

    async fn remove_orphans(&self, _known: &(dyn Fn(LambdaId) -> bool + Send + Sync)) {}
}

/// A lifecycle with container lambdas on the fake, in a temporary data directory.
struct World {
    lifecycle: Arc<Lifecycle>,
    registry: Arc<Registry>,
    backend: Arc<FakeBackend>,
    account: AccountId,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A world whose configuration `adjust` changes first.
    fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            container_backend: crate::config::ContainerBackend::Docker,
            ..Config::default()
        };
        config.data_dir = dir.path().to_path_buf();
        adjust(&mut config);
        let config = Arc::new(config);
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        let logs = LogSink::start(store.clone(), 100, 1000).unwrap();
        let backend = Arc::new(FakeBackend::default());
        let registry = Arc::new(Registry::default());
        let lifecycle = Lifecycle::new(Parts {
            engine: WasmEngine::new(&config, &dir.path().join("artifacts")).unwrap(),
            sealer: Sealer::open(&config.encryption_key, dir.path()).unwrap(),
            archives: Arc::new(ArchiveFiles::open(&dir.path().join("archives")).unwrap()),
            coordination: Arc::new(SoleProcess::new(store.clone(), "test")),
            config,
            store: store.clone(),
            kv: store,
            registry: registry.clone(),
            containers: Some(ContainerBackends {
                images: backend.clone(),
                deployer: backend.clone(),
            }),
            logs,
            metrics: Metrics::new().unwrap(),
        });
        Self {
            lifecycle,
            registry,
            backend,
            account: AccountId::generate(),
            _dir: dir,
        }
    }

    /// A container lambda's upload; `marker` makes each archive different.
    fn upload(marker: &str) -> Upload {
        let dockerfile = format!("FROM scratch\nLABEL marker={marker}\n");
        Upload {
            archive: zip_of(&[("Dockerfile", dockerfile.as_bytes())]).into(),
            credentials: serde_json::from_value(serde_json::json!({"token": "t"})).unwrap(),
            parameters: serde_json::from_value(serde_json::json!({"lambda_name": "roll"})).unwrap(),
            deploy_parameters: DeployParameters::default(),
        }
    }

    /// Waits (with a deadline) until the lambda's build job has finished.
    async fn built(&self, id: LambdaId) -> ImageStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.lifecycle.image(id, None).await.unwrap().status;
            if status.is_finished() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the build of {id} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The version serving requests, and where its pods are.
    fn serving(&self, id: LambdaId) -> (Version, Vec<Endpoint>) {
        let pods = self.registry.pods(id).expect("pods serve");
        (
            pods.version,
            pods.pods.iter().map(|p| p.addr.clone()).collect(),
        )
    }

    async fn create(&self) -> LambdaId {
        let id = self
            .lifecycle
            .create(self.account, Self::upload("one"))
            .await
            .unwrap();
        assert_eq!(self.built(id).await, ImageStatus::Completed);
        id
    }
}

const V1: Version = Version(1);
const V2: Version = Version(2);

#[tokio::test]
async fn a_recreate_rolls_to_the_new_pods_then_retires_the_old_ones() {
    let world = World::new();
    let id = world.create().await;
    assert_eq!(world.serving(id), (V1, vec![endpoint(V1, false)]));

    let version = world
        .lifecycle
        .recreate(world.account, id, World::upload("two"))
        .await
        .unwrap();
    assert_eq!(version, V2);
    assert_eq!(world.built(id).await, ImageStatus::Completed);

    assert_eq!(world.serving(id), (V2, vec![endpoint(V2, false)]));
    assert_eq!(
        world.backend.calls(),
        vec![
            Call::Build(V1),
            Call::Deploy {
                version: V1,
                previous: None
            },
            Call::RetireOthers(V1),
            Call::Build(V2),
            Call::Deploy {
                version: V2,
                previous: Some(V1)
            },
            Call::RetireOthers(V2),
        ]
    );
}

#[tokio::test]
async fn a_failed_rollout_leaves_the_serving_version_serving() {
    let world = World::new();
    let id = world.create().await;
    world.backend.fail(V2);

    world.lifecycle.update(world.account, id).await.unwrap();
    assert_eq!(world.built(id).await, ImageStatus::Error);

    assert_eq!(world.serving(id), (V1, vec![endpoint(V1, false)]));
    let record = world.lifecycle.owned(id, None).await.unwrap();
    assert_eq!(
        (record.status, record.current.version),
        (LambdaStatus::Running, V1)
    );
    let logs = world
        .lifecycle
        .image(id, None)
        .await
        .unwrap()
        .logs
        .join("\n");
    assert!(
        logs.contains("build failed: pods did not start: pod 0: never ready"),
        "{logs}"
    );
    assert!(logs.contains("version 1 keeps serving"), "{logs}");
    assert!(!world.backend.calls().contains(&Call::RetireOthers(V2)));
}

#[tokio::test]
async fn after_a_restart_the_serving_pods_are_reattached_and_a_cut_build_is_retired() {
    let world = World::new();
    let id = world.create().await;
    // The service stopped while version 2 was building.
    let mut build = world.lifecycle.store.build(id).await.unwrap().unwrap();
    build.kind = BuildKind::Update;
    build.spec.version = V2;
    build.status = ImageStatus::InProgress;
    world
        .lifecycle
        .store
        .save_build(&BuildRecord { ..build })
        .await
        .unwrap();

    world.lifecycle.recover().await.unwrap();

    assert_eq!(world.serving(id), (V1, vec![endpoint(V1, true)]));
    let calls = world.backend.calls();
    assert_eq!(
        calls[calls.len() - 2..],
        [Call::Retire(V2), Call::Reattach(V1)]
    );
    let image = world.lifecycle.image(id, None).await.unwrap();
    assert_eq!(image.status, ImageStatus::Error);
    assert!(
        image
            .logs
            .join("\n")
            .contains("the service stopped while this build was running")
    );
}

#[tokio::test]
async fn a_delete_removes_the_pods_and_the_images() {
    let world = World::new();
    let id = world.create().await;

    world
        .lifecycle
        .delete(Some(world.account), id)
        .await
        .unwrap();

    assert!(world.registry.pods(id).is_none());
    let calls = world.backend.calls();
    assert_eq!(calls[calls.len() - 2..], [Call::Remove, Call::RemoveImages]);
}

#[tokio::test]
async fn accepted_uploads_wait_in_memory_only_up_to_their_bound() {
    let world = World::with(|config| config.builds.max_staged_mb = 1);
    let lifecycle = &world.lifecycle;
    let upload = || {
        let report = crate::builder::archive::ArchiveReport {
            wasm: Some(vec![0; 300_000]),
            ..Default::default()
        };
        (bytes::Bytes::from(vec![0; 300_000]), report)
    };
    let (first, second) = (LambdaId::generate(), LambdaId::generate());
    let (archive, report) = upload();
    lifecycle.stage(first, V1, archive, report);
    // 600 KB more would pass the 1 MiB bound: that job reads the stored archive instead.
    let (archive, report) = upload();
    lifecycle.stage(second, V1, archive, report);
    assert!(lifecycle.staged.contains_key(&first));
    assert!(!lifecycle.staged.contains_key(&second));
    assert_eq!(lifecycle.staged_bytes.load(Ordering::Acquire), 600_000);
    // A job that takes its upload back frees the room.
    assert!(lifecycle.unstage(first).is_some());
    let (archive, report) = upload();
    lifecycle.stage(second, V1, archive, report);
    assert!(lifecycle.staged.contains_key(&second));
    assert_eq!(lifecycle.staged_bytes.load(Ordering::Acquire), 600_000);
}

#[tokio::test]
async fn image_logs_are_bounded_in_line_length_and_in_lines() {
    let world = World::with(|config| config.builds.max_log_line_bytes = 64);
    let id = world.create().await;
    let logs = world.lifecycle.image(id, None).await.unwrap().logs;
    let step = logs.iter().find(|l| l.contains("step output")).unwrap();
    // A line is its time stamp, a space and at most 64 bytes of text.
    let stamp = "2026-01-01T00:00:00.000Z ".len();
    assert!(step.ends_with(" [truncated]"), "{step}");
    for line in &logs {
        assert!(line.len() <= stamp + 64 + " [truncated]".len(), "{line}");
    }
    let world = World::with(|config| config.builds.max_log_lines = 4);
    let id = world.create().await;
    let logs = world.lifecycle.image(id, None).await.unwrap().logs;
    assert_eq!(logs.len(), 4, "the newest lines only: {logs:?}");
}
