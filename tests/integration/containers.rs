//! Container lambdas on a real Docker engine and a real loopback registry (both started
//! by `.ci/run`; `deploy/base-image/build.sh` makes the base image): Python standalone
//! and tasks lambdas, a Dockerfile lambda, a failing build, recreate with a rolling
//! swap, a dead pod, re-attach after a restart, and delete.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{
    ACCOUNT, OTHER_ACCOUNT, Server, Upload, assert_error, created_id, eventually, registry,
    wait_log, zip_of,
};

/// The `docker` CLI, to observe the engine independently of the service.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs (.ci/run installs docker.io)");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn containers_of(id: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=luna-lambda.lambda-id={id}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Removes whatever a test leaves in the engine, also when it fails.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.0 {
            for container in containers_of(id) {
                let _ = Command::new("docker")
                    .args(["rm", "-f", &container])
                    .output();
            }
        }
    }
}

fn docker_server() -> Server {
    assert!(
        docker(&["info", "--format", "{{.ServerVersion}}"]).len() > 1,
        "a Docker engine must run for the container tests (see .ci/run)"
    );
    assert!(
        !docker(&["images", "-q", "luna-lambda/python:bookworm"]).is_empty(),
        "the base image is missing: run deploy/base-image/build.sh"
    );
    Server::start(&[
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "docker"),
        ("LUNA_LAMBDA_CONTAINERS_REGISTRY", &registry()),
    ])
}

/// A wheel with no dependencies: pip installs it offline.
fn greet_wheel() -> Vec<u8> {
    zip_of(&[
        ("greet/__init__.py", b"def greet(name):\n    return 'hello ' + name\n"),
        ("greet-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: greet\nVersion: 1.0\n"),
        (
            "greet-1.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: luna-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (
            "greet-1.0.dist-info/RECORD",
            b"greet/__init__.py,,\ngreet-1.0.dist-info/METADATA,,\ngreet-1.0.dist-info/WHEEL,,\ngreet-1.0.dist-info/RECORD,,\n",
        ),
    ])
}

const STANDALONE: &str = r#"
from luna_lambda_tools import StandaloneLambdaRequest, logger
from greet import greet
from helpers.shape import shape

async def main(request: StandaloneLambdaRequest) -> dict:
    logger.info("greeting %s", request.args.get("name"))
    return {
        "greeting": greet(request.args.get("name", "nobody")),
        "shape": shape(request.json),
        "path": request.path,
        "request_id": request.requestId,
        "config": request.config,
        "credentials": sorted(request.credentials),
        "version": "one",
    }
"#;

fn standalone_zip(version_word: &str) -> Vec<u8> {
    let main = STANDALONE.replace("\"one\"", &format!("\"{version_word}\""));
    let wheel = greet_wheel();
    // Unique per test run: images left in the engine by an earlier run never turn this
    // run's builds into cache hits (tests of one run still share them).
    static SALT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let salt = SALT.get_or_init(|| uuid::Uuid::new_v4().to_string());
    zip_of(&[
        ("salt.txt", salt.as_bytes()),
        ("lambda_main.py", main.as_bytes()),
        ("helpers/__init__.py", b""),
        (
            "helpers/shape.py",
            b"def shape(doc):\n    return sorted(doc) if isinstance(doc, dict) else None\n",
        ),
        (
            "requirements.txt",
            b"--no-index\n./wheels/greet-1.0-py3-none-any.whl\n",
        ),
        ("wheels/greet-1.0-py3-none-any.whl", &wheel),
    ])
}

async fn call(server: &Server, id: &str, path: &str, body: Value) -> reqwest::Response {
    server
        .call(Method::POST, &format!("/1/lambdas/{id}/proxy{path}"))
        .account(ACCOUNT)
        .header(
            "Luna-Request-Id",
            "1700000000,00000000-0000-4000-8000-000000000042",
        )
        .json(&body)
        .send()
        .await
}

#[tokio::test]
async fn python_lambda_builds_pushes_runs_recreates_and_is_deleted() {
    let server = docker_server();
    let upload = Upload::new(standalone_zip("one"))
        .parameters(json!({
            "lambda_name": "py-standalone",
            "config": {"greeting": {"lang": "en"}},
            "workers": 2,
        }))
        .deploy(json!({"pod_count": 2, "resources": {"cpu_limit": 500, "ram_limit": 0.25}}));
    let id = created_id(server.create_raw(ACCOUNT, upload).await).await;
    let _cleanup = Cleanup(vec![id.clone()]);
    let status = server.wait_status(&id, "running").await;
    assert_eq!(
        status["pod_statuses"],
        json!({"0": "running", "1": "running"})
    );

    the_build_log_streams_the_real_build_and_the_registry_holds_the_image(&server, &id).await;
    calls_go_round_robin_with_config_credentials_and_request_id(&server, &id).await;
    let r = server
        .call(Method::GET, &format!("/1/lambdas/{id}/proxy/main"))
        .account(OTHER_ACCOUNT)
        .send()
        .await;
    assert_error(r, 404, 42001).await;
    a_recreate_starts_the_new_version_then_removes_the_old_pods(&server, &id).await;

    // Delete removes the containers and the image tags.
    let r = server.delete_lambda(&id).await;
    assert_eq!(r.status(), 204);
    assert!(containers_of(&id).is_empty());
    let image = format!("{}/luna-lambda-{id}", registry());
    assert!(docker(&["images", "-q", &image]).is_empty());
}

async fn the_build_log_streams_the_real_build_and_the_registry_holds_the_image(
    server: &Server,
    id: &str,
) {
    let logs = server.image_logs(id).await;
    for needle in [
        "FROM luna-lambda/python:bookworm",
        "Step 1/",
        "pip install --no-cache-dir --only-binary=:all: -r requirements.txt",
        "Successfully installed greet-1.0",
        "cache miss",
        "pushed ",
        "pod 1 (",
    ] {
        assert!(logs.contains(needle), "no '{needle}' in {logs}");
    }
    let tags = format!("http://{}/v2/luna-lambda-{id}/tags/list", registry());
    let tags = reqwest::get(tags)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        tags["tags"],
        json!(["1"]),
        "the registry holds the pushed image"
    );
}

async fn calls_go_round_robin_with_config_credentials_and_request_id(server: &Server, id: &str) {
    for _ in 0..4 {
        let r = call(server, id, "/main?name=ann", json!({"b": 1, "a": 2})).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["lambda-version"], "1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["greeting"], "hello ann");
        assert_eq!(body["shape"], json!(["a", "b"]));
        assert_eq!(body["path"], "/main");
        assert_eq!(
            body["request_id"],
            "1700000000,00000000-0000-4000-8000-000000000042"
        );
        assert_eq!(body["config"], json!({"greeting": {"lang": "en"}}));
        assert_eq!(body["credentials"], json!(["login", "password"]));
    }
    wait_log(
        server,
        id,
        "[1700000000,00000000-0000-4000-8000-000000000042] greeting ann",
    )
    .await;
    let (_, logs) = server
        .get_json(&format!("/1/lambdas/{id}/logs?tail_lines=50"))
        .await;
    let pods = logs["logs"].as_object().unwrap();
    assert_eq!(pods.len(), 2, "{logs}");
    let greeted: usize = pods
        .values()
        .map(|lines| lines.to_string().matches("greeting ann").count())
        .sum();
    assert_eq!(
        greeted, 4,
        "each call logged once, spread over the pods: {logs}"
    );
    assert!(
        pods.values()
            .all(|l| l.to_string().contains("greeting ann")),
        "round robin: {logs}"
    );
}

async fn a_recreate_starts_the_new_version_then_removes_the_old_pods(server: &Server, id: &str) {
    let old_containers = containers_of(id);
    assert_eq!(old_containers.len(), 2);
    let r = server
        .call(Method::PUT, &format!("/1/lambdas/{id}"))
        .account(ACCOUNT)
        .upload(Upload::new(standalone_zip("two")).named("py-standalone"))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        server.wait_image(id).await,
        "completed",
        "{}",
        server.image_logs(id).await
    );
    let r = call(server, id, "/main", json!({})).await;
    assert_eq!(r.headers()["lambda-version"], "2");
    assert_eq!(r.json::<Value>().await.unwrap()["version"], "two");
    let new_containers = containers_of(id);
    assert_eq!(
        new_containers.len(),
        1,
        "pod_count defaults to 1 on the new version"
    );
    assert!(
        old_containers.iter().all(|c| !new_containers.contains(c)),
        "old pods removed"
    );
}

const WORD_COUNT_TASKS: &[u8] = b"from luna_lambda_tools import BaseLambdaTask\n\nclass WordCount(BaseLambdaTask):\n    async def splitTasksContent(self, content):\n        return [{'text': t} for t in content['texts']]\n\n    def executeSubtask(self, sub):\n        return {'words': len(sub['text'].split())}\n";

/// A Dockerfile lambda: a plain Python HTTP server on the port the service gives it.
fn custom_dockerfile_zip() -> Vec<u8> {
    custom_dockerfile_zip_with("")
}

/// The Dockerfile lambda with `salt` in its sources (a content of its own).
fn custom_dockerfile_zip_with(salt: &str) -> Vec<u8> {
    let server_py = br#"
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"custom": True, "path": self.path, "rid": self.headers.get("Luna-Request-Id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer((os.environ["LUNA_LAMBDA_LISTEN_HOST"], int(os.environ["PORT"])), H).serve_forever()
"#;
    zip_of(&[
        ("Dockerfile", b"FROM luna-lambda/python:bookworm\nCOPY server.py /app/server.py\nCMD [\"python3\", \"/app/server.py\"]\n"),
        ("server.py", server_py),
        ("salt.txt", salt.as_bytes()),
    ])
}

#[tokio::test]
async fn tasks_and_dockerfile_lambdas_run() {
    let server = docker_server();
    let tasks = Upload::new(zip_of(&[("lambda_main.py", WORD_COUNT_TASKS)]))
        .parameters(json!({"lambda_name": "py-tasks", "lambda_type": "tasks"}));
    let tasks_id = created_id(server.create_raw(ACCOUNT, tasks).await).await;
    let custom_id = server
        .create(ACCOUNT, "custom-dockerfile", custom_dockerfile_zip(), None)
        .await;
    let _cleanup = Cleanup(vec![tasks_id.clone(), custom_id.clone()]);

    a_tasks_lambda_splits_and_executes(&server, &tasks_id).await;
    a_dockerfile_lambda_serves_with_its_own_server(&server, &custom_id).await;
    // The same archive again is an image cache hit: tagged, not rebuilt.
    let again_id = server
        .create(ACCOUNT, "custom-again", custom_dockerfile_zip(), None)
        .await;
    let _cleanup_again = Cleanup(vec![again_id.clone()]);
    server.wait_status(&again_id, "running").await;
    let logs = server.image_logs(&again_id).await;
    assert!(
        logs.contains("image cache hit") && !logs.contains("Step 1/"),
        "{logs}"
    );
    for id in [&tasks_id, &custom_id, &again_id] {
        let r = server.delete_lambda(id).await;
        assert_eq!(r.status(), 204);
    }
}

async fn a_tasks_lambda_splits_and_executes(server: &Server, id: &str) {
    server.wait_status(id, "running").await;
    let r = call(server, id, "/split", json!({"texts": ["a b", "c d e"]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!([{"text": "a b"}, {"text": "c d e"}])
    );
    let r = call(server, id, "/execute", json!({"text": "c d e"})).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"words": 3}));
    let r = server.proxy(Method::GET, id, "/split").await;
    assert_error(r, 405, 12005).await;
}

async fn a_dockerfile_lambda_serves_with_its_own_server(server: &Server, id: &str) {
    server.wait_status(id, "running").await;
    let logs = server.image_logs(id).await;
    assert!(logs.contains("the archive's own Dockerfile"), "{logs}");
    let r = server.proxy(Method::GET, id, "/anything?x=1").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["custom"].clone(), body["path"].clone()),
        (json!(true), json!("/anything?x=1"))
    );
    assert!(
        body["rid"].as_str().is_some_and(|r| r.contains(',')),
        "{body}"
    );
}

#[tokio::test]
async fn bad_sources_are_refused_and_failing_builds_say_where() {
    let server = docker_server();
    // Validation parses the Python and names every problem.
    let broken = zip_of(&[
        ("lambda_main.py", b"def handler(request):\n    return {}\n"),
        ("util.py", b"def f(:\n    pass\n"),
    ]);
    let upload = Upload::new(broken).without_credentials().parameters(
        json!({"lambda_name": "x", "additional_user_docker_commands": ["COPY --from=other /a /b"]}),
    );
    let r = server
        .call(Method::POST, "/1/lambdas/validate")
        .upload(upload)
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let errors = r.json::<Value>().await.unwrap()["errors"].to_string();
    for needle in [
        "--from",
        "'util.py' is not valid Python",
        "line 1",
        "must define 'main'",
    ] {
        assert!(errors.contains(needle), "no '{needle}' in {errors}");
    }

    // A build step that fails: image error naming the step, lambda failed, proxy 503.
    let r = server
        .create_raw(ACCOUNT, Upload::new(zip_of(&[("lambda_main.py", b"def main(request):\n    return {}\n")])).parameters(json!({"lambda_name": "fails", "additional_user_docker_commands": ["RUN echo about to fail && exit 3"]})))
        .await;
    let id = created_id(r).await;
    let _cleanup = Cleanup(vec![id.clone()]);
    assert_eq!(server.wait_image(&id).await, "error");
    let logs = server.image_logs(&id).await;
    assert!(
        logs.contains("about to fail"),
        "the step's output streamed: {logs}"
    );
    assert!(
        logs.contains("build failed: image build failed at 'Step 4/6 : RUN echo about to fail")
            && logs.contains("returned a non-zero code: 3"),
        "{logs}"
    );
    server.wait_status(&id, "failed").await;
    let r = server.proxy(Method::GET, &id, "/main").await;
    assert_error(r, 503, 42007).await;
    assert!(containers_of(&id).is_empty());

    // A lambda that crashes at start: the build says why, quoting its output.
    let r = server
        .create_raw(
            ACCOUNT,
            Upload::new(zip_of(&[(
                "lambda_main.py",
                b"raise SystemExit('missing settings: cannot start')\n",
            )]))
            .parameters(json!({"lambda_name": "crashes", "lambda_type": "tasks"})),
        )
        .await;
    assert_error(r, 400, 42005).await;
    let r = server
        .create_raw(
            ACCOUNT,
            Upload::new(zip_of(&[(
                "lambda_main.py",
                b"import missing_module\ndef main(request):\n    return {}\n",
            )]))
            .named("crashes"),
        )
        .await;
    let id = created_id(r).await;
    let _cleanup = Cleanup(vec![id.clone()]);
    assert_eq!(server.wait_image(&id).await, "error");
    let logs = server.image_logs(&id).await;
    assert!(
        logs.contains("ModuleNotFoundError") && logs.contains("pods did not start"),
        "{logs}"
    );
    assert!(containers_of(&id).is_empty(), "the failed pods are removed");
}

#[tokio::test]
async fn a_dead_pod_costs_its_requests_and_a_restart_reattaches() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let env = [
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "docker"),
        ("LUNA_LAMBDA_CONTAINERS_REGISTRY", ""),
    ];
    let server = Server::start_in(&dir, &env);
    let id = server
        .create(
            ACCOUNT,
            "survivor",
            zip_of(&[(
                "lambda_main.py",
                b"import os\ndef main(request):\n    return {'pid': os.getpid()}\n",
            )]),
            None,
        )
        .await;
    let _cleanup = Cleanup(vec![id.clone()]);
    server.wait_status(&id, "running").await;
    let before = containers_of(&id);
    assert_eq!(before.len(), 1);
    assert_eq!(server.proxy(Method::GET, &id, "/main").await.status(), 200);

    // The service stops (SIGTERM); the container keeps running and is re-attached.
    assert!(server.terminate().success());
    let server = Server::start_in(&dir, &env);
    assert_eq!(
        containers_of(&id),
        before,
        "no new container after the restart"
    );
    server.wait_status(&id, "running").await;
    assert_eq!(server.proxy(Method::GET, &id, "/main").await.status(), 200);
    assert!(
        server
            .log()
            .contains("re-attached to 1 running pod(s) of version 1"),
        "{}",
        server.log()
    );

    // The pod is stopped behind the service's back: 502 42009, status terminated.
    docker(&["stop", "-t", "1", &before[0]]);
    let r = server.proxy(Method::GET, &id, "/main").await;
    assert_error(r, 502, 42009).await;
    let (_, status) = server.get_json(&format!("/1/lambdas/{id}/status")).await;
    assert_eq!(status["status"], "terminated", "{status}");
    assert_eq!(status["pod_statuses"]["0"], "exited", "{status}");
    // The service itself keeps serving.
    assert_eq!(server.get("/healthcheck").await.status(), 200);
}

/// A relay in front of a real endpoint (the Docker engine's socket, the registry) that
/// the test can cut: open connections are dropped and new ones closed at once until it
/// is restored.
struct Relay {
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    fn start<L, S, C, F>(listener: L, connect: C) -> Self
    where
        L: RelayListener<Stream = S>,
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        C: Fn() -> F + Send + Sync + 'static,
        F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, tasks) = (cut.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok(mut inbound) = listener.accept_one().await {
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let outbound = connect();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = outbound.await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            cut,
            open,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

trait RelayListener: Send + 'static {
    type Stream;
    fn accept_one(&self)
    -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl RelayListener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl RelayListener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// The Docker engine going away in the middle of a build and the registry being down at
/// push time each fail that build with a clear line in its image log; the version that
/// serves keeps serving, the API keeps answering, and once the engine or registry is
/// back the next build of the same lambda succeeds.
// Multi-threaded: the relays run while `Server::start` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_registry_outages_fail_only_the_build() {
    let temp = tempfile::tempdir().unwrap();
    let socket = temp.path().join("docker.sock");
    let engine = Relay::start(tokio::net::UnixListener::bind(&socket).unwrap(), || {
        tokio::net::UnixStream::connect("/var/run/docker.sock")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_port = listener.local_addr().unwrap().port();
    let upstream = registry();
    let registry_relay = Relay::start(listener, move || {
        tokio::net::TcpStream::connect(upstream.clone())
    });
    let server = Server::start(&[
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "docker"),
        (
            "LUNA_LAMBDA_CONTAINERS_DOCKER_SOCKET",
            socket.to_str().unwrap(),
        ),
        (
            "LUNA_LAMBDA_CONTAINERS_REGISTRY",
            &format!("127.0.0.1:{registry_port}"),
        ),
    ]);
    let serving =
        a_push_to_a_registry_that_is_down_fails_until_it_is_back(&server, &registry_relay).await;
    let id = serving.lambda_id;
    let _cleanup = Cleanup(vec![id.clone()]);
    an_engine_lost_mid_build_fails_the_build_not_the_serving_version(
        &server,
        &engine,
        &id,
        &serving.version,
    )
    .await;
    assert_eq!(server.delete_lambda(&id).await.status(), 204);
}

/// A lambda and the version it serves.
struct Serving {
    lambda_id: String,
    version: String,
}

/// A build step that takes a while, so that the engine can go away during it. Its own
/// sources: the other tests' builds must not share its Docker layer cache.
const SLOW_STEP: &str = "RUN sleep 4";

async fn a_push_to_a_registry_that_is_down_fails_until_it_is_back(
    server: &Server,
    registry_relay: &Relay,
) -> Serving {
    registry_relay.cut();
    let upload = Upload::new(standalone_zip("first")).parameters(
        json!({"lambda_name": "outages", "additional_user_docker_commands": [SLOW_STEP]}),
    );
    let id = created_id(server.create_raw(ACCOUNT, upload).await).await;
    assert_eq!(server.wait_image(&id).await, "error");
    let logs = server.image_logs(&id).await;
    assert!(
        logs.contains("push"),
        "the image log names the push: {logs}"
    );
    assert_eq!(server.wait_status(&id, "failed").await["status"], "failed");
    assert_eq!(server.get("/version").await.status(), 200);

    // Back: the same lambda builds, pushes and serves.
    registry_relay.restore();
    assert_eq!(server.update(&id).await.status(), 200);
    assert_eq!(server.wait_image(&id).await, "completed");
    server.wait_status(&id, "running").await;
    let r = call(server, &id, "/main?name=ann", json!({})).await;
    assert_eq!(r.status(), 200);
    let version = r.headers()["lambda-version"].to_str().unwrap().to_owned();
    Serving {
        lambda_id: id,
        version,
    }
}

async fn an_engine_lost_mid_build_fails_the_build_not_the_serving_version(
    server: &Server,
    engine: &Relay,
    id: &str,
    serving: &str,
) {
    let slow = json!({"additional_user_docker_commands": [SLOW_STEP]});
    let r = server.recreate(id, standalone_zip("second"), slow).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // The step itself ("Step 5/7 : RUN sleep 4"), not the Dockerfile echoed before it
    // ("Dockerfile: RUN sleep 4", no space before the colon).
    eventually("the build reaches its RUN step", || async {
        let logs = server.image_logs(id).await;
        if logs.contains(" : RUN sleep 4") {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await;
    engine.cut();
    assert_eq!(server.wait_image(id).await, "error");
    let logs = server.image_logs(id).await;
    // Cut between engine calls, or inside the build stream at the step it was running.
    assert!(
        logs.contains("build failed: Docker engine")
            || logs.contains("build failed: image build failed at 'Step"),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("version {serving} keeps serving")),
        "{logs}"
    );
    // The serving version is untouched: its pods are reached without the engine.
    let r = call(server, id, "/main?name=bo", json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["lambda-version"].to_str().unwrap(), serving);
    assert_eq!(server.get("/1/lambdas").await.status(), 200);

    // Back: the rebuild succeeds and the new version serves.
    engine.restore();
    assert_eq!(server.update(id).await.status(), 200);
    assert_eq!(server.wait_image(id).await, "completed");
    eventually("the new version serves", || async {
        let r = call(server, id, "/main?name=cy", json!({})).await;
        let version = r.headers()["lambda-version"].to_str().unwrap().to_owned();
        if version != serving {
            Ok(())
        } else {
            Err(version)
        }
    })
    .await;
}

/// The attacker knows the build key of a tenant's image (its label) and plants an image
/// carrying it: the service reuses only images it recorded as built itself for that
/// account and content, so the planted one never runs; and an identical upload of
/// another account is built apart.
#[tokio::test]
async fn a_planted_image_with_anothers_build_key_is_never_reused() {
    let server = docker_server();
    let archive = custom_dockerfile_zip_with(&uuid::Uuid::new_v4().to_string());
    let first = server
        .create(ACCOUNT, "genuine", archive.clone(), None)
        .await;
    let _cleanup = Cleanup(vec![first.clone()]);
    server.wait_status(&first, "running").await;
    let genuine = format!("{}/luna-lambda-{first}:1", registry());
    let key = docker(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"luna-lambda.build-key\"}}",
        &genuine,
    ]);
    assert_eq!(key.len(), 64, "{key}");
    assert!(
        !server.image_logs(&first).await.contains(&key),
        "the key is not shown in the image logs"
    );

    // The tenant's lambda goes, and with it its image; the attacker plants one labelled
    // with the key an identical upload would have.
    assert_eq!(server.delete_lambda(&first).await.status(), 204);
    let planted = plant_image(&key);
    let again = server.create(ACCOUNT, "again", archive.clone(), None).await;
    let elsewhere = server
        .create(OTHER_ACCOUNT, "elsewhere", archive, None)
        .await;
    let _cleanup_again = Cleanup(vec![again.clone(), elsewhere.clone()]);
    for (id, account) in [(&again, ACCOUNT), (&elsewhere, OTHER_ACCOUNT)] {
        server.wait_status(id, "running").await;
        let logs = server.image_logs(id).await;
        assert!(logs.contains("cache miss"), "{logs}");
        let image = format!("{}/luna-lambda-{id}:1", registry());
        let built = docker(&["inspect", "--format", "{{.Id}}", &image]);
        assert_ne!(built, planted, "the planted image runs for {id}");
        let path = format!("/1/lambdas/{id}/proxy/x");
        let (_, body) = server
            .call(Method::GET, &path)
            .account(account)
            .send_json()
            .await;
        assert_eq!(body["custom"], true, "{body}");
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", &planted])
        .output();
    for id in [&again, &elsewhere] {
        assert_eq!(server.delete_lambda(id).await.status(), 204);
    }
}

/// Builds an image that carries `build_key` as its label, as an attacker with access to
/// the engine would; returns its id.
fn plant_image(build_key: &str) -> String {
    use std::io::Write as _;
    let tag = format!("luna-test-planted:{}", &build_key[..12]);
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "--label"])
        .arg(format!("luna-lambda.build-key={build_key}"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker build runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"FROM luna-lambda/python:bookworm\nCMD [\"python3\", \"-c\", \"print('planted')\"]\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "planting the image failed");
    docker(&["inspect", "--format", "{{.Id}}", &tag])
}

/// A tenant cannot build on another lambda's image, by `FROM` or by `base_image`.
#[tokio::test]
async fn another_lambdas_image_is_no_base() {
    let server = docker_server();
    let victim = "0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11";
    let image = format!("{}/luna-lambda-{victim}:1", registry());
    let dockerfile = format!("FROM {image}\nCMD [\"cat\", \"/srv/lambda/lambda_main.py\"]\n");
    let r = server
        .create_raw(
            OTHER_ACCOUNT,
            Upload::new(zip_of(&[("Dockerfile", dockerfile.as_bytes())])).named("reader"),
        )
        .await;
    let body = assert_error(r, 400, 42005).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("FROM {image}")),
        "{body}"
    );
    let (name, tag) = image.rsplit_once(':').unwrap();
    let python = zip_of(&[("lambda_main.py", b"def main(request):\n    return {}\n")]);
    let upload = Upload::new(python)
        .parameters(json!({"lambda_name": "reader", "base_image": {"name": name, "tag": tag}}));
    let body = assert_error(server.create_raw(OTHER_ACCOUNT, upload).await, 400, 42005).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("is not one of the images"),
        "{body}"
    );
}

/// A build step of the archive's (`additional_user_docker_commands`) tries to reach the
/// service's API on loopback and to see the host's interfaces: the step runs without
/// network, so it finds only a loopback of its own. The dependencies still install.
#[tokio::test]
async fn an_archives_build_steps_reach_no_network() {
    let server = docker_server();
    let port = server.port();
    let probe = format!(
        "RUN python3 -c \"import socket; s = socket.socket(); s.settimeout(2); print('api', s.connect_ex(('127.0.0.1', {port}))); print('interfaces', [n for _, n in socket.if_nameindex()])\""
    );
    let upload = Upload::new(standalone_zip("probe")).parameters(json!({
        "lambda_name": "prober",
        "additional_user_docker_commands": [probe],
    }));
    let id = created_id(server.create_raw(ACCOUNT, upload).await).await;
    let _cleanup = Cleanup(vec![id.clone()]);
    server.wait_status(&id, "running").await;
    let logs = server.image_logs(&id).await;
    assert!(logs.contains("Successfully installed greet-1.0"), "{logs}");
    assert!(
        !logs.contains("api 0"),
        "the build step reached the API: {logs}"
    );
    assert!(
        logs.contains("api 111"),
        "connection refused on its own loopback: {logs}"
    );
    assert!(logs.contains("interfaces ['lo']"), "{logs}");
    assert_eq!(server.delete_lambda(&id).await.status(), 204);
}

/// Tenant B's pod tries what a host-network pod could do: reach the service's API and
/// the registry on loopback, see the host's interfaces and other pods' sockets. Each
/// pod has a network namespace of its own with a loopback alone; the service reaches
/// it through the socket of its own directory (a Dockerfile lambda through the relay
/// that holds its namespace).
#[tokio::test]
async fn a_pod_reaches_neither_the_api_the_registry_nor_another_pod() {
    let server = docker_server();
    let victim = server
        .create(ACCOUNT, "victim", custom_dockerfile_zip(), None)
        .await;
    let (api, registry_port) = (server.port(), registry_port());
    let prober = format!(
        r#"import os, socket
def reach(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        return s.connect_ex(("127.0.0.1", port))
    finally:
        s.close()
def main(request):
    return {{"api": reach({api}), "registry": reach({registry_port}),
             "interfaces": [n for _, n in socket.if_nameindex()],
             "sockets": sorted(os.listdir("/run/luna"))}}
"#
    );
    let attacker = server
        .create(
            OTHER_ACCOUNT,
            "prober",
            zip_of(&[("lambda_main.py", prober.as_bytes())]),
            None,
        )
        .await;
    let _cleanup = Cleanup(vec![victim.clone(), attacker.clone()]);
    server.wait_status(&victim, "running").await;
    server.wait_status(&attacker, "running").await;

    let (status, seen) = server
        .call(Method::POST, &format!("/1/lambdas/{attacker}/proxy/main"))
        .account(OTHER_ACCOUNT)
        .json(&json!({}))
        .send_json()
        .await;
    assert_eq!(status, 200, "{seen}");
    const REFUSED: u64 = 111;
    assert_eq!(seen["api"], REFUSED, "the pod reached the API: {seen}");
    assert_eq!(
        seen["registry"], REFUSED,
        "the pod reached the registry: {seen}"
    );
    assert_eq!(seen["interfaces"], json!(["lo"]), "{seen}");
    assert_eq!(
        seen["sockets"],
        json!(["http.sock"]),
        "its own socket only: {seen}"
    );

    // The engine agrees: no pod on the host network, the Dockerfile lambda inside its
    // relay's namespace, and the victim still serves through it.
    for container in containers_of(&victim)
        .into_iter()
        .chain(containers_of(&attacker))
    {
        let mode = docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}}",
            &container,
        ]);
        assert!(mode == "none" || mode.starts_with("container:"), "{mode}");
    }
    assert_eq!(containers_of(&victim).len(), 2, "the pod and its relay");
    let r = server.proxy(Method::GET, &victim, "/still-there").await;
    assert_eq!(r.status(), 200);
    for id in [&victim, &attacker] {
        assert_eq!(server.delete_lambda(id).await.status(), 204);
        assert!(containers_of(id).is_empty(), "relay and pod are removed");
    }
}

/// The registry's port (`registry()` is `host:port`).
fn registry_port() -> u16 {
    registry()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("the registry is host:port")
}

/// The operator's explicit choice of the host network (one trusted tenant): pods listen
/// on host ports again, the start warns what that exposes and `/1/config` shows it.
#[tokio::test]
async fn host_networking_is_an_operators_explicit_and_visible_choice() {
    let server = Server::start(&[
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "docker"),
        ("LUNA_LAMBDA_CONTAINERS_REGISTRY", ""),
        ("LUNA_LAMBDA_CONTAINERS_POD_NETWORK", "host"),
    ]);
    let (_, config) = server.get_json("/1/config").await;
    assert_eq!(config["containers"]["pod_network"], "host", "{config}");
    assert!(
        server.log().contains("every pod shares the host's network"),
        "{}",
        server.log()
    );
    let id = server
        .create(
            ACCOUNT,
            "trusted",
            zip_of(&[(
                "lambda_main.py",
                b"def main(request):\n    return {'ok': True}\n",
            )]),
            None,
        )
        .await;
    let _cleanup = Cleanup(vec![id.clone()]);
    server.wait_status(&id, "running").await;
    assert_eq!(server.proxy(Method::POST, &id, "/main").await.status(), 200);
    let pods = containers_of(&id);
    assert_eq!(pods.len(), 1);
    let mode = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}}",
        &pods[0],
    ]);
    assert_eq!(mode, "host");
    assert_eq!(server.delete_lambda(&id).await.status(), 204);
}

/// Two replicas on one PostgreSQL database with the Docker backend: the leader builds a
/// container lambda created through the other one and runs its pods, both proxy to
/// them, and when the leader is killed the other leads, serves on and removes the pods
/// at delete.
#[tokio::test]
async fn container_lambdas_on_two_replicas_are_the_leaders_to_build_and_both_serve_them() {
    use crate::postgres::throwaway_postgres::ThrowawayPostgres;
    let database = ThrowawayPostgres::start();
    let url = database.url();
    let registry = registry();
    let env = [
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "docker"),
        ("LUNA_LAMBDA_CONTAINERS_REGISTRY", registry.as_str()),
        ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
        ("LUNA_LAMBDA_STORE_POSTGRES_URL", url.as_str()),
        ("LUNA_LAMBDA_ENCRYPTION_KEY", crate::postgres::SHARED_KEY),
        ("LUNA_LAMBDA_STORE_RECONCILE_SECS", "1"),
    ];
    let temp = tempfile::tempdir().unwrap();
    let first = Server::start_in(&temp.path().join("first"), &env);
    let second = Server::start_in(&temp.path().join("second"), &env);
    let leads = |server: &Server| server.log().contains("this replica leads");
    eventually("one replica leads", || async {
        if leads(&first) || leads(&second) {
            Ok(())
        } else {
            Err("no leader yet")
        }
    })
    .await;
    let (leader, other) = if leads(&first) {
        (first, second)
    } else {
        (second, first)
    };

    let upload = Upload::new(standalone_zip("one")).parameters(json!({
        "lambda_name": "py-replicated",
        "config": {"greeting": {"lang": "en"}},
    }));
    let id = created_id(other.create_raw(ACCOUNT, upload).await).await;
    let _cleanup = Cleanup(vec![id.clone()]);
    leader.wait_status(&id, "running").await;
    let built_here = |server: &Server| {
        server
            .log()
            .lines()
            .any(|l| l.contains(&id) && l.contains("build of version 1 started on replica"))
    };
    assert!(built_here(&leader) && !built_here(&other));
    for server in [&leader, &other] {
        eventually("the replica proxies to the pod", || async {
            let r = call(server, &id, "/main?name=ann", json!({"a": 1})).await;
            match r.status().as_u16() {
                200 => Ok(()),
                status => Err(format!("{status}: {}", r.text().await.unwrap())),
            }
        })
        .await;
    }
    let pods = containers_of(&id);
    assert_eq!(pods.len(), 1, "one pod, however many replicas serve it");

    leader.kill();
    eventually("the other replica leads", || async {
        if leads(&other) {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let r = call(&other, &id, "/main?name=bob", json!({"a": 1})).await;
    assert_eq!(
        r.status(),
        200,
        "the pod outlives the replica that started it"
    );
    assert_eq!(containers_of(&id), pods, "and is not started again");
    assert_eq!(other.delete_lambda(&id).await.status(), 204);
    assert!(containers_of(&id).is_empty());
}
