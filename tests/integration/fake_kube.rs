//! A fake Kubernetes API server for the Kubernetes backend's client flows: plain HTTP on
//! 127.0.0.1, the objects the service uses (Secrets, Services, Deployments, Pods and pod
//! logs) with the semantics its code depends on: uid, resourceVersion, generation,
//! `NotFound` / `AlreadyExists` / `Conflict` Status bodies, server-side apply (an upsert
//! that requires a field manager) and merge patch, label selectors, and a tiny controller
//! that turns a Deployment into ready pods (or crash-looping ones when the template's
//! `LUNA_LAMBDA_CONFIG` contains `crashloop`) and reports its rollout status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

type Key = (String, String, String); // kind, namespace, name

#[derive(Default)]
pub struct Cluster {
    objects: BTreeMap<Key, Value>,
    version: u64,
    uids: u64,
    /// Every request as "METHOD path", in order.
    pub requests: Vec<String>,
}

pub struct FakeKube {
    pub addr: SocketAddr,
    pub cluster: Arc<Mutex<Cluster>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Kind {
    /// Path segment (plural).
    plural: &'static str,
    /// `apps` or `` (core).
    group: &'static str,
    kind: &'static str,
    api_version: &'static str,
}

const KINDS: [Kind; 5] = [
    Kind {
        plural: "secrets",
        group: "",
        kind: "Secret",
        api_version: "v1",
    },
    Kind {
        plural: "services",
        group: "",
        kind: "Service",
        api_version: "v1",
    },
    Kind {
        plural: "pods",
        group: "",
        kind: "Pod",
        api_version: "v1",
    },
    Kind {
        plural: "deployments",
        group: "apps",
        kind: "Deployment",
        api_version: "apps/v1",
    },
    Kind {
        plural: "networkpolicies",
        group: "networking.k8s.io",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
    },
];

fn kind_of(plural: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.plural == plural)
}

fn status(code: u16, reason: &str, message: String, kind: &Kind, name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason,
        "details": {"name": name, "group": kind.group, "kind": kind.plural},
        "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn qualified(kind: &Kind) -> String {
    if kind.group.is_empty() {
        kind.plural.to_owned()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

fn not_found(kind: &Kind, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", qualified(kind)),
        kind,
        name,
    )
}

fn query_param(query: &Option<String>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().unwrap();
            for (k, v) in fields {
                if v.is_null() {
                    map.remove(k);
                } else {
                    merge(map.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`.
pub fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

impl Cluster {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn create(&mut self, kind: &Kind, ns: &str, mut object: Value) -> Result<Value, Box<Response>> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (kind.plural.to_owned(), ns.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(Box::new(status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(kind)),
                kind,
                &name,
            )));
        }
        self.uids += 1;
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(ns);
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uids));
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        meta["generation"] = json!(1);
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        self.admit(kind, &mut object);
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        self.objects.insert(key, object.clone());
        self.reconcile(kind, ns, &name);
        Ok(self
            .objects
            .get(&(kind.plural.to_owned(), ns.to_owned(), name))
            .cloned()
            .unwrap_or(object))
    }

    /// What the API server itself fills in.
    fn admit(&mut self, kind: &Kind, object: &mut Value) {
        if kind.plural == "services" && object["spec"]["clusterIP"].is_null() {
            // Pods "behind" the Service are whatever the test serves on loopback.
            object["spec"]["clusterIP"] = json!("127.0.0.1");
        }
        if kind.plural == "secrets"
            && let Some(Value::Object(plain)) =
                object.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            {
                for (k, v) in plain {
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    object["data"][k] = json!(encoded);
                }
            }
        }
    }

    /// Replaces an object; `generation` follows spec changes.
    fn update(&mut self, kind: &Kind, ns: &str, name: &str, mut object: Value) -> Value {
        let key = (kind.plural.to_owned(), ns.to_owned(), name.to_owned());
        let old = self.objects.get(&key).cloned().unwrap_or(Value::Null);
        for field in ["uid", "creationTimestamp", "namespace", "generation"] {
            object["metadata"][field] = old["metadata"][field].clone();
        }
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        if object.get("status").is_none() && !old["status"].is_null() {
            object["status"] = old["status"].clone();
        }
        self.admit(kind, &mut object);
        if object["spec"] != old["spec"] {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        if object != old {
            object["metadata"]["resourceVersion"] = json!(self.next_version());
        }
        self.objects.insert(key, object);
        self.reconcile(kind, ns, name);
        self.objects
            .get(&(kind.plural.to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn delete(&mut self, kind: &Kind, ns: &str, name: &str) -> Option<Value> {
        let removed =
            self.objects
                .remove(&(kind.plural.to_owned(), ns.to_owned(), name.to_owned()));
        if removed.is_some() && kind.plural == "deployments" {
            self.objects.retain(|(k, n, _), pod| {
                !(k == "pods" && n == ns && pod["metadata"]["ownerName"] == name)
            });
        }
        removed
    }

    /// The controller: a Deployment's newest template runs `replicas` pods; older pods go.
    fn reconcile(&mut self, kind: &Kind, ns: &str, name: &str) {
        if kind.plural != "deployments" {
            return;
        }
        let key = ("deployments".to_owned(), ns.to_owned(), name.to_owned());
        let Some(deployment) = self.objects.get(&key).cloned() else {
            return;
        };
        let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let template = &deployment["spec"]["template"];
        let crashing = template.to_string().contains("crashloop");
        self.objects.retain(|(k, n, _), pod| {
            !(k == "pods"
                && n == ns
                && pod["metadata"]["ownerName"] == name
                && pod["metadata"]["generation"].as_i64() != Some(generation))
        });
        for i in 0..replicas {
            let pod_name = format!("{name}-g{generation}-{i}");
            let pod_key = ("pods".to_owned(), ns.to_owned(), pod_name.clone());
            if self.objects.contains_key(&pod_key) {
                continue;
            }
            self.uids += 1;
            let container = if crashing {
                json!({"name": "lambda", "ready": false, "restartCount": 3,
                       "state": {"waiting": {"reason": "CrashLoopBackOff"}}})
            } else {
                json!({"name": "lambda", "ready": true, "restartCount": 0,
                       "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}})
            };
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod_name, "namespace": ns,
                    "uid": format!("00000000-0000-4000-9000-{:012}", self.uids),
                    "labels": template["metadata"]["labels"],
                    "ownerName": name, "generation": generation,
                    "resourceVersion": self.next_version(),
                },
                "spec": template["spec"],
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": if crashing { "False" } else { "True" }}],
                    "containerStatuses": [container],
                },
            });
            self.objects.insert(pod_key, pod);
        }
        let ready = if crashing { 0 } else { replicas };
        let version = self.next_version();
        if let Some(d) = self.objects.get_mut(&key) {
            d["status"] = json!({
                "observedGeneration": generation, "replicas": replicas,
                "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
            });
            d["metadata"]["resourceVersion"] = json!(version);
        }
    }
}

type Shared = Arc<Mutex<Cluster>>;

async fn collection(
    State(cluster): State<Shared>,
    UrlPath((ns, plural)): UrlPath<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&plural) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut cluster = cluster.lock().unwrap();
    cluster.requests.push(format!("{method} {plural}"));
    match method {
        Method::GET => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = cluster
                .objects
                .iter()
                .filter(|((k, n, _), o)| {
                    k == kind.plural && *n == ns && selects(&selector, &o["metadata"]["labels"])
                })
                .map(|(_, o)| o.clone())
                .collect();
            let version = cluster.version.to_string();
            axum::Json(json!({
                "apiVersion": kind.api_version, "kind": format!("{}List", kind.kind),
                "metadata": {"resourceVersion": version}, "items": items,
            }))
            .into_response()
        }
        Method::POST => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            match cluster.create(kind, &ns, object) {
                Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
                Err(response) => *response,
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

async fn object(
    State(cluster): State<Shared>,
    UrlPath((ns, plural, name)): UrlPath<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&plural) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut cluster = cluster.lock().unwrap();
    cluster.requests.push(format!("{method} {plural}/{name}"));
    let key = (kind.plural.to_owned(), ns.clone(), name.clone());
    let existing = cluster.objects.get(&key).cloned();
    match method {
        Method::GET => {
            existing.map_or_else(|| not_found(kind, &name), |o| axum::Json(o).into_response())
        }
        Method::DELETE => match cluster.delete(kind, &ns, &name) {
            Some(o) => axum::Json(o).into_response(),
            None => not_found(kind, &name),
        },
        Method::PUT => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            let Some(old) = existing else {
                return not_found(kind, &name);
            };
            if object["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
                return conflict(kind, &name);
            }
            axum::Json(cluster.update(kind, &ns, &name, object)).into_response()
        }
        Method::PATCH => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            if content_type.starts_with("application/apply-patch") {
                if query_param(&query, "fieldManager").is_none() {
                    return status(
                        422,
                        "Invalid",
                        "fieldManager is required for apply requests".into(),
                        kind,
                        &name,
                    );
                }
                match existing {
                    None => match cluster.create(kind, &ns, patch) {
                        Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
                        Err(response) => *response,
                    },
                    Some(old) => {
                        // The applied configuration owns what it sets; the rest stays.
                        let mut object = old;
                        for field in ["spec", "data", "stringData", "type"] {
                            if !patch[field].is_null() {
                                object[field] = patch[field].clone();
                            }
                        }
                        merge(
                            &mut object["metadata"]["labels"],
                            &patch["metadata"]["labels"],
                        );
                        axum::Json(cluster.update(kind, &ns, &name, object)).into_response()
                    }
                }
            } else if content_type.starts_with("application/merge-patch+json") {
                let Some(old) = existing else {
                    return not_found(kind, &name);
                };
                if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
                    && old["metadata"]["resourceVersion"].as_str() != Some(expected)
                {
                    return conflict(kind, &name);
                }
                let mut object = old;
                merge(&mut object, &patch);
                axum::Json(cluster.update(kind, &ns, &name, object)).into_response()
            } else {
                StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response()
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

fn conflict(kind: &Kind, name: &str) -> Response {
    status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(kind)
        ),
        kind,
        name,
    )
}

async fn pod_log(
    State(cluster): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let cluster = cluster.lock().unwrap();
    if !cluster
        .objects
        .contains_key(&("pods".to_owned(), ns, name.clone()))
    {
        return not_found(&KINDS[2], &name);
    }
    let tail: usize = query_param(&query, "tailLines")
        .and_then(|t| t.parse().ok())
        .unwrap_or(usize::MAX);
    let lines: Vec<String> = (1..=5).map(|i| format!("{name} log line {i}")).collect();
    let skip = lines.len().saturating_sub(tail);
    (lines[skip..].join("\n") + "\n").into_response()
}

impl FakeKube {
    pub async fn start() -> Self {
        let cluster: Shared = Arc::default();
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/log",
                axum::routing::get(pod_log),
            )
            .route(
                "/api/v1/namespaces/{ns}/{plural}",
                axum::routing::any(collection),
            )
            .route(
                "/api/v1/namespaces/{ns}/{plural}/{name}",
                axum::routing::any(object),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/{plural}",
                axum::routing::any(collection),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/{plural}/{name}",
                axum::routing::any(object),
            )
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/{plural}",
                axum::routing::any(collection),
            )
            .route(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/{plural}/{name}",
                axum::routing::any(object),
            )
            .with_state(cluster.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            cluster,
            task,
        }
    }

    /// A kubeconfig pointing at the fake (plain HTTP, no credentials).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Objects of a kind (plural) in a namespace.
    pub fn objects(&self, plural: &str, ns: &str) -> Vec<Value> {
        self.cluster
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((k, n, _), _)| k == plural && n == ns)
            .map(|(_, o)| o.clone())
            .collect()
    }
}
