//! Persisted records and their versioned encoding (one schema byte, then JSON), in types
//! of their own, converted from and to the API's at the lifecycle: a storage change never
//! changes the wire, nor a wire change what is stored.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::model::{
    AccountId, BaseImage, DEFAULT_NAMESPACE, DeployParameters, ImageStatus, LambdaId, LambdaStatus,
    LambdaType, Parameters, Resources, Runtime, SandboxParameters, Version,
};

use super::StoreError;

/// Current schema of every record; bump and migrate in `decode` when a record changes.
pub const SCHEMA_V1: u8 = 1;

/// Encodes a record: schema byte + JSON.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![SCHEMA_V1];
    serde_json::to_writer(&mut out, value).map_err(|e| StoreError::Codec(e.to_string()))?;
    Ok(out)
}

/// Decodes a record written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&SCHEMA_V1, body)) => {
            serde_json::from_slice(body).map_err(|e| StoreError::Codec(e.to_string()))
        }
        Some((v, _)) => Err(StoreError::Codec(format!("unknown record schema {v}"))),
        None => Err(StoreError::Codec("empty record".into())),
    }
}

/// What a lambda version is built from: everything that changes what it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaSpec {
    /// The version this spec becomes.
    pub version: Version,
    /// `standalone`, `handlers`, `tasks`.
    pub lambda_type: LambdaType,
    /// Decided by the archive.
    pub runtime: Runtime,
    /// sha256 (hex) of the stored archive (`<data>/archives/<digest>.zip`).
    pub archive_digest: String,
    /// The parameters as given (name and description live on the record).
    pub parameters: SpecParameters,
    /// The deploy parameters as given.
    pub deploy_parameters: SpecDeployParameters,
    /// Sealed credentials (see `secrets`).
    pub credentials_sealed: Vec<u8>,
    /// sha256 (hex) of `lambda.wasm`, once built.
    pub wasm_digest: Option<String>,
    /// The OpenAPI document shipped in the archive.
    pub openapi: Option<String>,
}

/// A spec's parameters as stored: the API's `parameters` without the name and the
/// description. Their own type, so that a change of the wire format is a conversion
/// here, not a change of what is on disk; unknown fields are ignored (older records
/// carry the name and description as null).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecParameters {
    /// Default `standalone`.
    pub lambda_type: Option<LambdaType>,
    /// Container lambdas only.
    pub base_image: Option<StoredBaseImage>,
    /// Container lambdas only: extra Dockerfile lines.
    pub additional_user_docker_commands: Option<Vec<String>>,
    /// Worker processes per pod.
    pub workers: Option<u32>,
    /// Free JSON object handed to the lambda.
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A container lambda's base image as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBaseImage {
    /// Repository.
    pub name: String,
    /// Tag.
    pub tag: String,
}

/// A spec's deploy parameters as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecDeployParameters {
    /// `1`: pods get a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_enabled: Option<u8>,
    /// Pods to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_count: Option<u32>,
    /// CPU and memory of each pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<StoredResources>,
    /// Kubernetes namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Node selector labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// WASM sandbox limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<StoredSandbox>,
}

/// Pod resources as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredResources {
    /// Millicores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<u32>,
    /// Millicores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<u32>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_limit: Option<f64>,
    /// GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram_request: Option<f64>,
}

/// WASM sandbox limits as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredSandbox {
    /// Linear memory bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u32>,
    /// Request deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Concurrent requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// Outbound HTTP allow-list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_outbound_hosts: Option<Vec<String>>,
}

impl SpecDeployParameters {
    /// The namespace (the default one when none was given).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

impl From<&Parameters> for SpecParameters {
    fn from(p: &Parameters) -> Self {
        Self {
            lambda_type: p.lambda_type,
            base_image: p.base_image.as_ref().map(|b| StoredBaseImage {
                name: b.name.clone(),
                tag: b.tag.clone(),
            }),
            additional_user_docker_commands: p.additional_user_docker_commands.clone(),
            workers: p.workers,
            config: p.config.clone(),
        }
    }
}

impl From<&SpecParameters> for Parameters {
    fn from(p: &SpecParameters) -> Self {
        Self {
            lambda_name: None,
            description: None,
            lambda_type: p.lambda_type,
            base_image: p.base_image.as_ref().map(|b| BaseImage {
                name: b.name.clone(),
                tag: b.tag.clone(),
            }),
            additional_user_docker_commands: p.additional_user_docker_commands.clone(),
            workers: p.workers,
            config: p.config.clone(),
        }
    }
}

impl From<&DeployParameters> for SpecDeployParameters {
    fn from(d: &DeployParameters) -> Self {
        Self {
            gpu_enabled: d.gpu_enabled,
            pod_count: d.pod_count,
            resources: d.resources.as_ref().map(|r| StoredResources {
                cpu_limit: r.cpu_limit,
                cpu_request: r.cpu_request,
                ram_limit: r.ram_limit,
                ram_request: r.ram_request,
            }),
            namespace: d.namespace.clone(),
            selector: d.selector.clone(),
            sandbox: d.sandbox.as_ref().map(|s| StoredSandbox {
                memory_limit_mb: s.memory_limit_mb,
                request_timeout_ms: s.request_timeout_ms,
                max_concurrent_requests: s.max_concurrent_requests,
                allowed_outbound_hosts: s.allowed_outbound_hosts.clone(),
            }),
        }
    }
}

impl From<&SpecDeployParameters> for DeployParameters {
    fn from(d: &SpecDeployParameters) -> Self {
        Self {
            gpu_enabled: d.gpu_enabled,
            pod_count: d.pod_count,
            resources: d.resources.as_ref().map(Resources::from),
            namespace: d.namespace.clone(),
            selector: d.selector.clone(),
            sandbox: d.sandbox.as_ref().map(|s| SandboxParameters {
                memory_limit_mb: s.memory_limit_mb,
                request_timeout_ms: s.request_timeout_ms,
                max_concurrent_requests: s.max_concurrent_requests,
                allowed_outbound_hosts: s.allowed_outbound_hosts.clone(),
            }),
        }
    }
}

impl From<&StoredResources> for Resources {
    fn from(r: &StoredResources) -> Self {
        Self {
            cpu_limit: r.cpu_limit,
            cpu_request: r.cpu_request,
            ram_limit: r.ram_limit,
            ram_request: r.ram_request,
        }
    }
}

/// A lambda.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaRecord {
    /// Id.
    pub lambda_id: LambdaId,
    /// Owner.
    pub account_id: AccountId,
    /// Unique per account.
    pub lambda_name: String,
    /// Free text.
    pub description: String,
    /// Created.
    pub create_time: DateTime<Utc>,
    /// Last create / recreate / update / patch.
    pub last_update_time: DateTime<Utc>,
    /// The lambda's status.
    pub status: LambdaStatus,
    /// The spec that serves (or, before the first successful build, the one being built).
    pub current: LambdaSpec,
    /// Whether `current` has ever been built successfully.
    pub deployed: bool,
}

/// Why a build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    /// First build.
    Create,
    /// New archive / parameters.
    Recreate,
    /// Same archive, newest engine.
    Update,
}

/// The image build job of a lambda (one per lambda: the latest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// Why.
    pub kind: BuildKind,
    /// What is being built.
    pub spec: LambdaSpec,
    /// Job status.
    pub status: ImageStatus,
    /// Queued at.
    pub created: DateTime<Utc>,
    /// Ended at.
    pub finished: Option<DateTime<Utc>>,
    /// Build log lines (bounded).
    pub logs: Vec<String>,
}
