//! Pure builders of the Kubernetes objects of a container lambda: a Deployment (replicas
//! = pod_count, resources, GPU, node selector, readiness probe on `/healthcheck`; pods
//! non-root under the runtime's default seccomp profile, without capabilities or a
//! service account token), a ClusterIP Service in front of it, a NetworkPolicy that
//! admits the service's pods only and no egress unless opened, and a Secret holding the
//! credentials (never in the Deployment). Objects in, JSON out; unit-tested on their JSON. Depends on `lifecycle`
//! (the request it is made from) and `model`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use crate::lifecycle::PodRequest;
use crate::model::LambdaId;

/// Label on every object we manage (the Kubernetes convention).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "luna-lambda");
/// Label: the lambda an object belongs to (the pod selector).
pub const LABEL_LAMBDA: &str = "luna-lambda.lambda-id";
/// Label on pods: the lambda version they run.
pub const LABEL_VERSION: &str = "luna-lambda.version";
/// The container's port name and number (the runner's `PORT`).
pub const CONTAINER_PORT: i32 = 8080;
/// The lambda's container name in the pod.
pub const CONTAINER_NAME: &str = "lambda";
/// The key of the credentials in the Secret.
const CREDENTIALS_KEY: &str = "credentials";

/// Everything the manifests of one lambda version are made from: the version's pods as
/// the lifecycle asks for them, and the port of the Service in front of them.
#[derive(Debug, Clone)]
pub struct LambdaDeployment {
    /// The version's pods.
    pub pods: PodRequest,
    /// Port of the ClusterIP Service.
    pub service_port: i32,
    /// How the pods are confined (the operator's settings).
    pub confinement: Confinement,
}

/// How a lambda's pods are confined, from `[kubernetes]`.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// User id the containers run as (non-root).
    pub run_as_user: i64,
    /// Namespace of the service's own pods.
    pub service_namespace: String,
    /// Label (key, value) of the service's own pods.
    pub service_pod_label: (String, String),
    /// Whether the pods may open connections.
    pub egress: bool,
}

/// Name of the Deployment and the Service.
pub fn object_name(lambda_id: LambdaId) -> String {
    format!("luna-lambda-{lambda_id}")
}

/// Name of the credentials Secret.
pub fn secret_name(lambda_id: LambdaId) -> String {
    format!("luna-lambda-{lambda_id}-credentials")
}

/// `luna-lambda.lambda-id=<id>`: selects everything of one lambda.
pub fn lambda_selector(lambda_id: LambdaId) -> String {
    format!("{LABEL_LAMBDA}={lambda_id}")
}

fn labels(lambda_id: LambdaId) -> Value {
    json!({ MANAGED_BY.0: MANAGED_BY.1, LABEL_LAMBDA: lambda_id.to_string() })
}

/// Kubernetes quantities of LUNA's units: millicores and GiB (as bytes).
fn quantities(cpu_millis: Option<u32>, ram_gib: Option<f64>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    if let Some(m) = cpu_millis {
        out.insert("cpu".into(), json!(format!("{m}m")));
    }
    if let Some(g) = ram_gib {
        let bytes = (g * 1024.0 * 1024.0 * 1024.0).round() as u64;
        out.insert("memory".into(), json!(bytes.to_string()));
    }
    out
}

/// The lambda's Deployment.
pub fn deployment(d: &LambdaDeployment) -> Result<Deployment, serde_json::Error> {
    let resources = d.pods.resources.clone().unwrap_or_default();
    let mut limits = quantities(resources.cpu_limit, resources.ram_limit);
    let requests = quantities(resources.cpu_request, resources.ram_request);
    if d.pods.gpu {
        limits.insert("nvidia.com/gpu".into(), json!("1"));
    }
    let mut pod_labels = labels(d.pods.lambda_id);
    pod_labels[LABEL_VERSION] = json!(d.pods.version.to_string());
    let env = json!([
        {"name": "PORT", "value": CONTAINER_PORT.to_string()},
        {"name": "LUNA_LAMBDA_LISTEN_HOST", "value": "0.0.0.0"},
        {"name": "LAMBDA_ID", "value": d.pods.lambda_id.to_string()},
        {"name": "LAMBDA_VERSION", "value": d.pods.version.to_string()},
        {"name": "LUNA_ACCOUNT_ID", "value": d.pods.account_id.to_string()},
        {"name": "LUNA_LAMBDA_TYPE", "value": d.pods.lambda_type.as_str()},
        {"name": "WORKERS", "value": d.pods.workers.to_string()},
        {"name": "LUNA_LAMBDA_CONFIG", "value": d.pods.config_json},
        {"name": "LUNA_LAMBDA_CREDENTIALS", "valueFrom": {"secretKeyRef": {
            "name": secret_name(d.pods.lambda_id), "key": CREDENTIALS_KEY}}},
    ]);
    let probe = json!({
        "httpGet": {"path": "/healthcheck", "port": "http"},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    });
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(d.pods.lambda_id),
            "namespace": d.pods.namespace,
            "labels": labels(d.pods.lambda_id),
        },
        "spec": {
            "replicas": d.pods.pod_count,
            "selector": {"matchLabels": {LABEL_LAMBDA: d.pods.lambda_id.to_string()}},
            // A new version's pods must be ready before old ones go.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "nodeSelector": d.pods.selector,
                    // A lambda has no business with the cluster's API.
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": d.confinement.run_as_user,
                        "runAsGroup": d.confinement.run_as_user,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": CONTAINER_NAME,
                        "image": d.pods.image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "http", "containerPort": CONTAINER_PORT}],
                        "env": env,
                        "resources": {"limits": limits, "requests": requests},
                        "readinessProbe": probe,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    }))
}

/// The ClusterIP Service the proxy sends to.
pub fn service(d: &LambdaDeployment) -> Result<Service, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(d.pods.lambda_id),
            "namespace": d.pods.namespace,
            "labels": labels(d.pods.lambda_id),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_LAMBDA: d.pods.lambda_id.to_string()},
            "ports": [{"name": "http", "port": d.service_port, "targetPort": "http"}],
        },
    }))
}

/// The lambda's NetworkPolicy: ingress only from the service's pods to the lambda's
/// port; egress nowhere unless the operator opened it.
pub fn network_policy(d: &LambdaDeployment) -> Result<NetworkPolicy, serde_json::Error> {
    let c = &d.confinement;
    let (label, value) = &c.service_pod_label;
    let egress = if c.egress { json!([{}]) } else { json!([]) };
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": object_name(d.pods.lambda_id),
            "namespace": d.pods.namespace,
            "labels": labels(d.pods.lambda_id),
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_LAMBDA: d.pods.lambda_id.to_string()}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": c.service_namespace}},
                    "podSelector": {"matchLabels": {label: value}},
                }],
                "ports": [{"protocol": "TCP", "port": CONTAINER_PORT}],
            }],
            "egress": egress,
        },
    }))
}

/// The Secret holding the credentials.
pub fn secret(d: &LambdaDeployment) -> Result<Secret, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(d.pods.lambda_id),
            "namespace": d.pods.namespace,
            "labels": labels(d.pods.lambda_id),
        },
        "type": "Opaque",
        "stringData": {CREDENTIALS_KEY: d.pods.credentials_json},
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{AccountId, LambdaType, Resources, Version};

    fn sample() -> LambdaDeployment {
        LambdaDeployment {
            pods: PodRequest {
                lambda_id: "0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11".parse().unwrap(),
                account_id: AccountId::generate(),
                version: Version(3),
                lambda_type: LambdaType::Tasks,
                namespace: "lambdas".into(),
                image: "registry:5000/luna-lambda-x:3".into(),
                pod_count: 2,
                workers: 4,
                resources: Some(Resources {
                    cpu_limit: Some(1500),
                    cpu_request: Some(250),
                    ram_limit: Some(0.5),
                    ram_request: None,
                }),
                gpu: true,
                selector: BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]),
                config_json: r#"{"a":1}"#.into(),
                credentials_json: r#"{"token":"secret"}"#.into(),
            },
            service_port: 80,
            confinement: Confinement {
                run_as_user: 65_532,
                service_namespace: "luna-lambda".into(),
                service_pod_label: ("app.kubernetes.io/name".into(), "luna-lambda".into()),
                egress: false,
            },
        }
    }

    #[test]
    fn pods_are_confined_and_fenced_by_a_network_policy() {
        let d = sample();
        let json = serde_json::to_value(deployment(&d).unwrap()).unwrap();
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(
            pod["containers"][0]["securityContext"],
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
        );
        let policy = serde_json::to_value(network_policy(&d).unwrap()).unwrap();
        assert_eq!(policy["metadata"]["name"], object_name(d.pods.lambda_id));
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"],
            json!({"luna-lambda.lambda-id": d.pods.lambda_id.to_string()})
        );
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            policy["spec"]["ingress"],
            json!([{"from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "luna-lambda"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "luna-lambda"}},
            }], "ports": [{"protocol": "TCP", "port": 8080}]}])
        );
        assert_eq!(policy["spec"]["egress"], json!([]), "no egress by default");
        let opened = LambdaDeployment {
            confinement: Confinement {
                egress: true,
                ..d.confinement.clone()
            },
            ..d
        };
        let policy = serde_json::to_value(network_policy(&opened).unwrap()).unwrap();
        assert_eq!(policy["spec"]["egress"], json!([{}]), "opened: anywhere");
    }

    #[test]
    fn the_deployment_carries_everything_but_the_credentials() {
        let d = sample();
        let json = serde_json::to_value(deployment(&d).unwrap()).unwrap();
        let name = "luna-lambda-0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11";
        assert_eq!(json["metadata"]["name"], name);
        assert_eq!(json["metadata"]["namespace"], "lambdas");
        assert_eq!(
            json["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "luna-lambda"
        );
        assert_eq!(json["spec"]["replicas"], 2);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            json!({"luna-lambda.lambda-id": "0d5f0e3a-58a4-4b3c-9f0e-6c4b3d1d2a11"})
        );
        let pod = &json["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["luna-lambda.version"], "3");
        assert_eq!(pod["spec"]["nodeSelector"], json!({"disk": "ssd"}));
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["image"], "registry:5000/luna-lambda-x:3");
        assert_eq!(
            container["ports"][0],
            json!({"name": "http", "containerPort": 8080})
        );
        assert_eq!(
            container["resources"],
            json!({"limits": {"cpu": "1500m", "memory": "536870912", "nvidia.com/gpu": "1"},
                   "requests": {"cpu": "250m"}})
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"],
            json!({"path": "/healthcheck", "port": "http"})
        );
        let env = container["env"].as_array().unwrap();
        let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned().unwrap();
        assert_eq!(var("LUNA_LAMBDA_TYPE")["value"], "tasks");
        assert_eq!(var("WORKERS")["value"], "4");
        assert_eq!(var("LUNA_LAMBDA_CONFIG")["value"], r#"{"a":1}"#);
        assert_eq!(
            var("LUNA_LAMBDA_CREDENTIALS")["valueFrom"]["secretKeyRef"],
            json!({"name": format!("{name}-credentials"), "key": "credentials"})
        );
        assert!(
            !json.to_string().contains("secret\\\""),
            "credentials never in the Deployment"
        );
    }

    #[test]
    fn service_and_secret() {
        let d = sample();
        let svc = serde_json::to_value(service(&d).unwrap()).unwrap();
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(
            svc["spec"]["selector"],
            json!({"luna-lambda.lambda-id": d.pods.lambda_id.to_string()})
        );
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"name": "http", "port": 80, "targetPort": "http"})
        );
        let secret = serde_json::to_value(secret(&d).unwrap()).unwrap();
        assert_eq!(secret["stringData"]["credentials"], r#"{"token":"secret"}"#);
        assert_eq!(secret["metadata"]["name"], secret_name(d.pods.lambda_id));
        let plain = LambdaDeployment {
            pods: PodRequest {
                resources: None,
                gpu: false,
                selector: BTreeMap::new(),
                ..d.pods
            },
            ..d
        };
        let json = serde_json::to_value(deployment(&plain).unwrap()).unwrap();
        assert_eq!(
            json["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({"limits": {}, "requests": {}})
        );
    }
}
