//! The Kubernetes backend against the in-repo fake API server (`fake_kube`): images are
//! built and pushed through the real Docker engine and registry, the objects land in the
//! fake, whose Services point at a stand-in upstream on 127.0.0.1. Also checks that the
//! fake answers like Kubernetes where the backend depends on it. A real cluster is used
//! by `real_cluster_*` when `KUBECONFIG` is set (ignored otherwise).

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{ACCOUNT, Server, Upload, created_id, registry, zip_of};
use crate::fake_kube::FakeKube;

/// An HTTP server standing in for the pods behind a lambda's Service.
async fn stand_in_pods() -> u16 {
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let rid = request
            .headers()
            .get("luna-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        axum::Json(json!({"from": "pods", "path": request.uri().to_string(), "rid": rid}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

fn python(main_body: &str) -> Vec<u8> {
    zip_of(&[(
        "lambda_main.py",
        format!("def main(request):\n    {main_body}\n").as_bytes(),
    )])
}

async fn recreate(server: &Server, id: &str, archive: Vec<u8>, parameters: Value, deploy: Value) {
    let r = server
        .call(Method::PUT, &format!("/1/lambdas/{id}"))
        .account(ACCOUNT)
        .upload(Upload::new(archive).parameters(parameters).deploy(deploy))
        .send()
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

// Multi-threaded: the fake API server and the stand-in pods keep answering while the
// test thread blocks on a service start (which talks to the fake while it recovers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lambdas_roll_out_roll_back_and_reattach_on_kubernetes() {
    let fake = FakeKube::start().await;
    let pods_port = stand_in_pods().await.to_string();
    let temp = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(temp.path());
    let registry = registry();
    let env = [
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "kubernetes"),
        ("LUNA_LAMBDA_CONTAINERS_REGISTRY", registry.as_str()),
        ("LUNA_LAMBDA_CONTAINERS_START_TIMEOUT_SECS", "3"),
        (
            "LUNA_LAMBDA_KUBERNETES_KUBECONFIG",
            kubeconfig.to_str().unwrap(),
        ),
        ("LUNA_LAMBDA_KUBERNETES_SERVICE_PORT", pods_port.as_str()),
    ];
    let dir = temp.path().join("data");
    let server = Server::start_in(&dir, &env);
    let deploy = json!({
        "pod_count": 2, "namespace": "lambdas", "selector": {"disk": "ssd"},
        "resources": {"cpu_limit": 500, "ram_limit": 0.5},
    });
    let upload = Upload::new(python("return {'v': 1}"))
        .named("on-k8s")
        .deploy(deploy.clone());
    let id = created_id(server.create_raw(ACCOUNT, upload).await).await;
    let status = server.wait_status(&id, "running").await;
    assert_eq!(
        status["pod_statuses"],
        json!({"0": "running", "1": "running"})
    );
    the_rollout_is_logged_step_by_step(&server, &id).await;
    the_cluster_holds_the_credentials_only_in_the_secret(&fake, &id, &registry);
    the_pods_are_confined_and_fenced(&fake, &id);
    the_proxy_sends_to_the_service_and_logs_come_from_the_pods(&server, &id).await;
    a_crash_looping_version_is_rolled_back(&server, &fake, &id, &registry, deploy).await;
    // A good version rolls out (version 2 was used up by the failed build).
    recreate(
        &server,
        &id,
        python("return {'v': 3}"),
        json!({}),
        json!({"namespace": "lambdas"}),
    )
    .await;
    assert_eq!(
        server.wait_image(&id).await,
        "completed",
        "{}",
        server.image_logs(&id).await
    );
    let r = server.proxy(Method::GET, &id, "/main").await;
    assert_eq!(r.headers()["lambda-version"], "3");
    let generation = fake.objects("deployments", "lambdas")[0]["metadata"]["generation"].clone();

    // A restart re-attaches without a new rollout.
    assert!(server.terminate().success());
    let server = Server::start_in(&dir, &env);
    server.wait_status(&id, "running").await;
    assert_eq!(server.proxy(Method::GET, &id, "/main").await.status(), 200);
    assert_eq!(
        fake.objects("deployments", "lambdas")[0]["metadata"]["generation"],
        generation
    );

    // Delete removes every object.
    let r = server.delete_lambda(&id).await;
    assert_eq!(r.status(), 204);
    for kind in [
        "deployments",
        "services",
        "secrets",
        "pods",
        "networkpolicies",
    ] {
        assert!(
            fake.objects(kind, "lambdas").is_empty(),
            "{kind} left behind"
        );
    }
    a_first_version_that_never_gets_ready_leaves_nothing(&server, &fake).await;
}

async fn the_rollout_is_logged_step_by_step(server: &Server, id: &str) {
    let logs = server.image_logs(id).await;
    for needle in [
        "applying Secret, Service and Deployment",
        "in namespace lambdas: 2 replica(s)",
        "rollout: 2/2 pods updated, 2 ready, 2 in total",
        "rollout complete",
        "pushed ",
    ] {
        assert!(logs.contains(needle), "no '{needle}' in {logs}");
    }
}

fn the_cluster_holds_the_credentials_only_in_the_secret(fake: &FakeKube, id: &str, registry: &str) {
    let deployments = fake.objects("deployments", "lambdas");
    assert_eq!(deployments.len(), 1);
    let d = &deployments[0];
    assert_eq!(d["spec"]["replicas"], 2);
    let pod_spec = &d["spec"]["template"]["spec"];
    assert_eq!(
        pod_spec["containers"][0]["image"],
        format!("{registry}/luna-lambda-{id}:1")
    );
    assert_eq!(pod_spec["nodeSelector"], json!({"disk": "ssd"}));
    assert_eq!(
        pod_spec["containers"][0]["resources"]["limits"]["cpu"],
        "500m"
    );
    assert!(!d.to_string().contains("hunter2"), "{d}");
    let secret = &fake.objects("secrets", "lambdas")[0];
    let credentials = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["credentials"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&credentials).unwrap(),
        json!({"login": "user", "password": "hunter2"})
    );
    assert_eq!(
        fake.objects("services", "lambdas")[0]["spec"]["type"],
        "ClusterIP"
    );
}

/// Tenants' pods: non-root, default seccomp, no API token; reachable only from the
/// service's pods, and reaching nothing.
fn the_pods_are_confined_and_fenced(fake: &FakeKube, id: &str) {
    let pod_spec = &fake.objects("deployments", "lambdas")[0]["spec"]["template"]["spec"];
    assert_eq!(pod_spec["automountServiceAccountToken"], false);
    assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod_spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let policies = fake.objects("networkpolicies", "lambdas");
    assert_eq!(policies.len(), 1);
    let spec = &policies[0]["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["luna-lambda.lambda-id"],
        id
    );
    assert_eq!(spec["egress"], json!([]));
    let from = &spec["ingress"][0]["from"][0];
    assert_eq!(
        from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "luna-lambda"
    );
}

async fn the_proxy_sends_to_the_service_and_logs_come_from_the_pods(server: &Server, id: &str) {
    let r = server.proxy(Method::GET, id, "/main?x=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["lambda-version"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["from"].clone(), body["path"].clone()),
        (json!("pods"), json!("/main?x=1"))
    );
    assert!(body["rid"].as_str().unwrap().contains(','), "{body}");
    let (_, logs) = server
        .get_json(&format!("/1/lambdas/{id}/logs?tail_lines=2"))
        .await;
    assert_eq!(logs["logs"]["1"].as_array().unwrap().len(), 2, "{logs}");
    assert!(
        logs["logs"]["0"][1]
            .as_str()
            .unwrap()
            .ends_with("log line 5"),
        "{logs}"
    );
}

/// A version whose pods crash-loop is rolled back; version 1 keeps serving.
async fn a_crash_looping_version_is_rolled_back(
    server: &Server,
    fake: &FakeKube,
    id: &str,
    registry: &str,
    deploy: Value,
) {
    recreate(
        server,
        id,
        python("return {'v': 2}"),
        json!({"config": {"fake": "crashloop"}}),
        deploy,
    )
    .await;
    assert_eq!(server.wait_image(id).await, "error");
    let logs = server.image_logs(id).await;
    assert!(
        logs.contains("is CrashLoopBackOff") && logs.contains("rolled back to version 1"),
        "{logs}"
    );
    let image = &fake.objects("deployments", "lambdas")[0]["spec"]["template"]["spec"]["containers"]
        [0]["image"];
    assert_eq!(image, &json!(format!("{registry}/luna-lambda-{id}:1")));
    let r = server.proxy(Method::GET, id, "/main").await;
    assert_eq!(r.headers()["lambda-version"], "1");
}

async fn a_first_version_that_never_gets_ready_leaves_nothing(server: &Server, fake: &FakeKube) {
    let upload = Upload::new(python("return {}"))
        .parameters(json!({"lambda_name": "never-ready", "config": {"fake": "crashloop"}}))
        .deploy(json!({"namespace": "lambdas"}));
    let id = created_id(server.create_raw(ACCOUNT, upload).await).await;
    server.wait_status(&id, "failed").await;
    assert!(fake.objects("deployments", "lambdas").is_empty());
    let r = server.delete_lambda(&id).await;
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn the_fake_api_server_answers_like_kubernetes() {
    let fake = FakeKube::start().await;
    let temp = tempfile::tempdir().unwrap();
    let file = kube::config::Kubeconfig::read_from(fake.kubeconfig(temp.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ns1");

    assert!(
        secrets.get_opt("s").await.unwrap().is_none(),
        "404 NotFound reads as None"
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s", "labels": {"app": "a"}}, "stringData": {"k": "v"}
    }))
    .unwrap();
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let version = created.metadata.resource_version.clone().unwrap();
    assert_eq!(created.data.as_ref().unwrap()["k"].0, b"v");
    match secrets.create(&PostParams::default(), &secret).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // Merge patch bumps resourceVersion, keeps uid.
    let patched = secrets
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"b": "c"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_ne!(
        patched.metadata.resource_version.as_deref(),
        Some(version.as_str())
    );
    assert_eq!(patched.metadata.labels.unwrap()["b"], "c");
    // A replace with a stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale.metadata.resource_version = Some(version);
    match secrets.replace("s", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Server-side apply is an upsert.
    let applied: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "stringData": {"x": "y"}
    }))
    .unwrap();
    let params = PatchParams::apply("test").force();
    secrets
        .patch("t", &params, &Patch::Apply(&applied))
        .await
        .unwrap();
    secrets
        .patch("t", &params, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(fake.objects("secrets", "ns1").len(), 2);
    // Label selectors and NotFound on delete.
    let pods: Api<Pod> = Api::namespaced(client, "ns1");
    assert!(
        pods.list(&ListParams::default().labels("app=a"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    match secrets.delete("missing", &Default::default()).await {
        Err(kube::Error::Api(s)) => assert!(s.is_not_found()),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(crate::fake_kube::selects("a=b,!c", &json!({"a": "b"})));
    assert!(!crate::fake_kube::selects("a!=b", &json!({"a": "b"})));
}

/// The same flow on a real cluster: `KUBECONFIG=... cargo test -- --ignored real_cluster`.
/// It needs a registry the cluster can pull from (`LUNA_TEST_REGISTRY`).
#[tokio::test]
#[ignore = "needs a real Kubernetes cluster (KUBECONFIG) and a registry it can pull from"]
async fn real_cluster_runs_a_python_lambda() {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG names the cluster");
    let registry = registry();
    let server = Server::start(&[
        ("LUNA_LAMBDA_CONTAINER_BACKEND", "kubernetes"),
        ("LUNA_LAMBDA_CONTAINERS_REGISTRY", registry.as_str()),
        ("LUNA_LAMBDA_KUBERNETES_KUBECONFIG", kubeconfig.as_str()),
    ]);
    let id = server
        .create(ACCOUNT, "real-cluster", python("return {'ok': True}"), None)
        .await;
    server.wait_status(&id, "running").await;
    let r = server.proxy(Method::GET, &id, "/main").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"ok": true}));
    let r = server.delete_lambda(&id).await;
    assert_eq!(r.status(), 204);
}
