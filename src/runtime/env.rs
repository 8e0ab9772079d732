//! `GuestEnv`: what every request of one lambda version shares (identity, config, its
//! key-value namespace and quotas, outbound policy, logs, metrics). Below the host state
//! and the host interfaces that read it. Depends on `policy`, `store`, `logs`, `metrics`,
//! `model`.

use super::policy::OutboundPolicy;
use crate::logs::LogSink;
use crate::metrics::LambdaMetrics;
use crate::model::{AccountId, LambdaId, LambdaType, Version};
use std::sync::Arc;

use crate::store::{KvQuotas, KvStore};

/// What every request of one lambda version shares.
pub struct GuestEnv {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// Its owner.
    pub account_id: AccountId,
    /// The version being served.
    pub version: Version,
    /// Its type.
    pub lambda_type: LambdaType,
    /// `wasi:config` pairs, sorted by key.
    pub config: Vec<(String, String)>,
    /// The key-value namespace lives here.
    pub kv: Arc<dyn KvStore>,
    /// Key-value quotas.
    pub kv_quotas: KvQuotas,
    /// Outbound HTTP allow-list and bounds.
    pub outbound: OutboundPolicy,
    /// Host resources one instance may hold.
    pub max_resources: usize,
    /// The lambda's log.
    pub logs: LogSink,
    /// The lambda's metric series.
    pub metrics: LambdaMetrics,
}

impl std::fmt::Debug for GuestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config values may be credentials: only their keys are shown.
        f.debug_struct("GuestEnv")
            .field("lambda_id", &self.lambda_id)
            .field("version", &self.version)
            .field("config_keys", &self.config.len())
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}
