//! Every example under `examples/` (built with the SDK) deployed into the real server
//! and called as its README documents: HTTP handlers, JSON, key-value counters,
//! config and credentials, tasks, and allow-listed outbound HTTP.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{ACCOUNT, Server, Upload, wait_log, zip_of};

const EXAMPLES: [&str; 6] = [
    "hello",
    "json-echo",
    "kv-counter",
    "outbound-fetch",
    "config-greeting",
    "tasks-wordcount",
];

/// Builds every example once per test run; returns the archive of `name`.
pub(crate) fn example_zip(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("examples");
    BUILT.get_or_init(|| {
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--release", "--target", "wasm32-wasip2"]);
        for example in EXAMPLES {
            build.args(["-p", example]);
        }
        let status = build
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the examples failed");
    });
    let file = format!("wasm32-wasip2/release/{}.wasm", name.replace('-', "_"));
    let wasm = std::fs::read(target.join(file)).expect("example component");
    zip_of(&[("lambda.wasm", &wasm)])
}

fn example_upload(name: &str, parameters: Value, deploy: Option<Value>) -> Upload {
    let upload = Upload::new(example_zip(name)).parameters(parameters);
    match deploy {
        Some(deploy) => upload.deploy(deploy),
        None => upload,
    }
}

pub(crate) async fn deploy(
    server: &Server,
    name: &str,
    parameters: Value,
    deploy: Option<Value>,
) -> String {
    let response = server
        .create_raw(ACCOUNT, example_upload(name, parameters, deploy))
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["lambda_id"].as_str().unwrap().to_owned();
    server.wait_status(&id, "running").await;
    id
}

pub(crate) async fn call(
    server: &Server,
    method: Method,
    id: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = server
        .call(method, &format!("/1/lambdas/{id}/proxy{path}"))
        .account(ACCOUNT);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The JSON a guest answered.
pub(crate) fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn every_example_answers_as_documented() {
    // The outbound example calls this service on 127.0.0.1.
    let server = Server::start(&[("LUNA_LAMBDA_SANDBOX_ALLOW_PRIVATE_OUTBOUND", "true")]);
    let hello = the_hello_example_greets_and_logs(&server).await;
    the_json_echo_example_validates_its_input(&server).await;
    the_counter_example_keeps_counts_in_key_value_storage(&server).await;
    the_greeting_example_reads_config_and_credentials(&server).await;
    the_tasks_example_splits_and_executes(&server).await;
    the_fetch_example_reaches_only_allowed_hosts(&server, &hello).await;
}

async fn the_hello_example_greets_and_logs(server: &Server) -> String {
    let hello = deploy(server, "hello", json!({"lambda_name": "hello"}), None).await;
    let (status, text) = call(server, Method::GET, &hello, "/main", None).await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with("Hello from luna-lambda! path=/main request-id="),
        "{text}"
    );
    wait_log(server, &hello, "hello called on /main").await;

    hello
}

async fn the_json_echo_example_validates_its_input(server: &Server) {
    let echo = deploy(server, "json-echo", json!({"lambda_name": "echo"}), None).await;
    let (status, text) = call(
        server,
        Method::POST,
        &echo,
        "/",
        Some(json!({"message": "hi", "repeat": 2})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    assert_eq!(
        (body["echo"].as_str(), body["length"].as_u64()),
        (Some("hihi"), Some(4))
    );
    let (status, text) = call(server, Method::POST, &echo, "/", Some(json!({"repeat": 2}))).await;
    assert_eq!(status, 400);
    assert!(
        parse(&text)["error"].as_str().unwrap().contains("message"),
        "{text}"
    );
    let (status, _) = call(
        server,
        Method::POST,
        &echo,
        "/",
        Some(json!({"message": " "})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(server, Method::GET, &echo, "/", None).await;
    assert_eq!(status, 405);
}

async fn the_counter_example_keeps_counts_in_key_value_storage(server: &Server) {
    let counter = deploy(
        server,
        "kv-counter",
        json!({"lambda_name": "counter"}),
        None,
    )
    .await;
    for expected in 1..=3 {
        let (status, text) = call(server, Method::GET, &counter, "/apples", None).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(parse(&text), json!({"name": "apples", "hits": expected}));
    }
    let (_, text) = call(server, Method::GET, &counter, "/apples?peek", None).await;
    assert_eq!(parse(&text)["hits"], 3);
    call(server, Method::GET, &counter, "/pears", None).await;
    let (_, text) = call(server, Method::GET, &counter, "/", None).await;
    assert_eq!(parse(&text), json!({"apples": 3, "pears": 1}));
    let (status, _) = call(server, Method::DELETE, &counter, "/apples", None).await;
    assert_eq!(status, 204);
    let (_, text) = call(server, Method::GET, &counter, "/apples?peek", None).await;
    assert_eq!(parse(&text)["hits"], 0);
}

async fn the_greeting_example_reads_config_and_credentials(server: &Server) {
    let greeting = deploy(
        server,
        "config-greeting",
        json!({"lambda_name": "greeting", "config": {"greeting": "Hi", "audience": {"name": "luna"}}}),
        None,
    )
    .await;
    let (status, text) = call(server, Method::GET, &greeting, "/", None).await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    assert_eq!(body["message"], "Hi, luna!");
    assert_eq!(body["login"], "user");
    assert_eq!(body["secret_set"], true);
    assert!(
        !text.contains("hunter2"),
        "the password never leaves the lambda"
    );
    assert_eq!(
        body["config_keys"],
        json!([
            "audience.name",
            "greeting",
            "luna.credentials.login",
            "luna.credentials.password"
        ])
    );
}

async fn the_tasks_example_splits_and_executes(server: &Server) {
    let tasks = deploy(
        server,
        "tasks-wordcount",
        json!({"lambda_name": "wordcount", "lambda_type": "tasks"}),
        None,
    )
    .await;
    let (status, text) = call(
        server,
        Method::POST,
        &tasks,
        "/split",
        Some(json!({"text": "one two\n\nthree"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        parse(&text),
        json!([{"index": 0, "line": "one two"}, {"index": 1, "line": "three"}])
    );
    let (status, text) = call(
        server,
        Method::POST,
        &tasks,
        "/execute",
        Some(json!({"index": 0, "line": "one two"})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parse(&text), json!({"index": 0, "words": 2}));
    let (status, text) = call(
        server,
        Method::POST,
        &tasks,
        "/split",
        Some(json!({"nope": 1})),
    )
    .await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("content must be"),
        "the guest's message reaches the caller: {text}"
    );
    let (status, _) = call(server, Method::GET, &tasks, "/split", None).await;
    assert_eq!(status, 405);
    let (status, _) = call(server, Method::POST, &tasks, "/other", Some(json!({}))).await;
    assert_eq!(status, 404);
    // The HTTP example is not a tasks lambda: validation names the missing exports.
    let not_tasks = json!({"lambda_name": "not-tasks", "lambda_type": "tasks"});
    let response = server
        .create_raw(
            ACCOUNT,
            Upload::new(example_zip("hello")).parameters(not_tasks),
        )
        .await;
    let id = response.json::<Value>().await.unwrap()["lambda_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(server.wait_image(&id).await, "error");
    let (_, logs) = server
        .get_json(&format!("/1/lambdas/{id}/image/logs"))
        .await;
    assert!(logs.to_string().contains("split-content"), "{logs}");
}

async fn the_fetch_example_reaches_only_allowed_hosts(server: &Server, hello: &str) {
    let port = server.port();
    let fetch = deploy(
        server,
        "outbound-fetch",
        json!({"lambda_name": "fetch"}),
        Some(json!({"sandbox": {"allowed_outbound_hosts": [format!("127.0.0.1:{port}")]}})),
    )
    .await;
    let target = format!("/?url=http://127.0.0.1:{port}/1/lambdas/{hello}/proxy/via-fetch");
    let (status, text) = call(server, Method::GET, &fetch, &target, None).await;
    assert_eq!(status, 200, "{text}");
    let body = parse(&text);
    assert_eq!(body["status"], 200);
    assert!(
        body["body"].as_str().unwrap().contains("path=/via-fetch"),
        "{text}"
    );
    // Not on the list: denied by the host, reported by the guest.
    let denied = deploy(
        server,
        "outbound-fetch",
        json!({"lambda_name": "fetch-closed"}),
        None,
    )
    .await;
    let (status, text) = call(server, Method::GET, &denied, &target, None).await;
    assert_eq!(status, 502, "{text}");
    wait_log(
        server,
        &denied,
        &format!("outbound request to 127.0.0.1:{port} denied"),
    )
    .await;
    assert!(
        server
            .metric("lambda_outbound_requests_total{lambda_id=\"")
            .await
            >= 2.0
    );
}

/// By default the operator keeps guests off non-public addresses, whatever a lambda's
/// allow-list says: by address or by a name that resolves to one.
#[tokio::test]
async fn allow_listed_private_destinations_are_refused_by_default() {
    let server = Server::start(&[]);
    let port = server.port();
    let fetch = deploy(
        &server,
        "outbound-fetch",
        json!({"lambda_name": "fetch"}),
        Some(json!({"sandbox": {"allowed_outbound_hosts": [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
        ]}})),
    )
    .await;
    for host in ["127.0.0.1", "localhost"] {
        let target = format!("/?url=http://{host}:{port}/health");
        let (status, text) = call(&server, Method::GET, &fetch, &target, None).await;
        // The guest reports the failure (its wording depends on whether the request
        // body or the response future fails first); the host's log line says why.
        assert_eq!(status, 502, "{text}");
        wait_log(
            &server,
            &fetch,
            &format!("outbound request to {host}:{port} denied: it resolves to "),
        )
        .await;
    }
}

#[tokio::test]
async fn key_value_data_survives_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let server = Server::start_in(&dir, &[]);
    let counter = deploy(
        &server,
        "kv-counter",
        json!({"lambda_name": "counter"}),
        None,
    )
    .await;
    for _ in 0..2 {
        call(&server, Method::GET, &counter, "/visits", None).await;
    }
    assert!(server.terminate().success());

    let server = Server::start_in(&dir, &[]);
    server.wait_status(&counter, "running").await;
    let (_, text) = call(&server, Method::GET, &counter, "/visits", None).await;
    assert_eq!(parse(&text), json!({"name": "visits", "hits": 3}));

    // Namespaces are per lambda: a new lambda of the same name starts from zero (the
    // sweep of a deleted lambda's data is covered by the store's unit tests).
    let response = server
        .call(reqwest::Method::DELETE, &format!("/1/lambdas/{counter}"))
        .account(ACCOUNT)
        .send()
        .await;
    assert_eq!(response.status().as_u16(), 204);
    let again = deploy(
        &server,
        "kv-counter",
        json!({"lambda_name": "counter"}),
        None,
    )
    .await;
    let (_, text) = call(&server, Method::GET, &again, "/visits?peek", None).await;
    assert_eq!(parse(&text)["hits"], 0);
}
