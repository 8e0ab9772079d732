//! Persisted records and their versioned encoding (one schema byte, then JSON), kept
//! apart from the API's wire types so a storage change never changes the wire.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{
    AccountId, DeployParameters, ImageStatus, LambdaId, LambdaStatus, LambdaType, Parameters,
    Runtime, Version,
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
    pub parameters: Parameters,
    /// The deploy parameters as given.
    pub deploy_parameters: DeployParameters,
    /// Sealed credentials (see `secrets`).
    pub credentials_sealed: Vec<u8>,
    /// sha256 (hex) of `lambda.wasm`, once built.
    pub wasm_digest: Option<String>,
    /// The OpenAPI document shipped in the archive.
    pub openapi: Option<String>,
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
