//! How the processes sharing one store coordinate: a lock per lambda across processes,
//! leases on build jobs (exactly one process runs each; another takes it over when the
//! holder stops renewing), notices of changed lambdas, and one leader at a time for the
//! work only one may do (container pods). The embedded sled store has one process: its
//! `Coordination` is trivial. Depends on `model` only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::{LambdaStore, StoreError};
use crate::model::{LambdaId, Runtime, Version};

/// Something another process changed, or may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The lambda was written (created, rebuilt, renamed) or deleted.
    Lambda(LambdaId),
    /// Notices may have been missed (the connection carrying them was lost): every
    /// lambda must be compared again.
    Missed,
}

/// Held while a command changes a lambda; every other process waits for it. Released on
/// drop (and by the database if the holding process dies).
#[must_use]
pub struct LambdaLock(Option<Box<dyn Send + Sync>>);

impl LambdaLock {
    /// A lock nothing else can contend for (a store of one process).
    pub fn uncontended() -> Self {
        Self(None)
    }

    /// A lock released when `held` is dropped.
    pub fn releasing_on_drop(held: Box<dyn Send + Sync>) -> Self {
        Self(Some(held))
    }
}

impl std::fmt::Debug for LambdaLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "LambdaLock(held)"
        } else {
            "LambdaLock(uncontended)"
        })
    }
}

/// A build job no live process holds a lease on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnclaimedBuild {
    /// Its lambda.
    pub lambda_id: LambdaId,
    /// What it builds (only the leader builds containers).
    pub runtime: Runtime,
}

/// What one lambda's record says should serve, for the periodic comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingVersion {
    /// The lambda.
    pub lambda_id: LambdaId,
    /// The version that serves (None: none is deployed yet).
    pub version: Option<Version>,
}

/// The coordination of the processes (replicas) sharing a store.
#[async_trait]
pub trait Coordination: Send + Sync + std::fmt::Debug {
    /// This process's name in leases and logs.
    fn replica(&self) -> &str;

    /// The owner label of what the processes sharing the store run outside it
    /// (containers): one for all of them, so that whichever leads finds every one.
    fn owner(&self) -> &str;

    /// Whether other processes may share the store.
    fn shared(&self) -> bool;

    /// Waits for the lambda's lock across processes.
    async fn lock_lambda(&self, id: LambdaId) -> Result<LambdaLock, StoreError>;

    /// Claims (or renews) this process's lease on the lambda's unfinished build job for
    /// `lease`; false when another live process holds it or the job is finished.
    async fn claim_build(&self, id: LambdaId, lease: Duration) -> Result<bool, StoreError>;

    /// Gives up this process's lease on the lambda's build job.
    async fn release_build(&self, id: LambdaId) -> Result<(), StoreError>;

    /// The unfinished build jobs whose lease expired or was never taken.
    async fn unclaimed_builds(&self) -> Result<Vec<UnclaimedBuild>, StoreError>;

    /// What serves, per lambda, by the records.
    async fn serving_versions(&self) -> Result<Vec<ServingVersion>, StoreError>;

    /// The changes other processes make, from now on.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Whether this process is the leader now, and when that changes.
    fn leadership(&self) -> watch::Receiver<bool>;
}

/// The coordination of a store only one process opens: no one to wait for, no one to
/// tell, always the leader.
#[derive(Debug)]
pub struct SoleProcess {
    records: Arc<dyn LambdaStore>,
    owner: String,
    changes: broadcast::Sender<Change>,
    leader: watch::Sender<bool>,
}

impl SoleProcess {
    /// Coordination over `records` (where the serving versions are read); `owner`
    /// labels what the process runs outside the store.
    pub fn new(records: Arc<dyn LambdaStore>, owner: &str) -> Self {
        Self {
            records,
            owner: owner.to_owned(),
            changes: broadcast::channel(1).0,
            leader: watch::channel(true).0,
        }
    }
}

#[async_trait]
impl Coordination for SoleProcess {
    fn replica(&self) -> &str {
        "local"
    }

    fn owner(&self) -> &str {
        &self.owner
    }

    fn shared(&self) -> bool {
        false
    }

    async fn lock_lambda(&self, _id: LambdaId) -> Result<LambdaLock, StoreError> {
        Ok(LambdaLock::uncontended())
    }

    async fn claim_build(&self, _id: LambdaId, _lease: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release_build(&self, _id: LambdaId) -> Result<(), StoreError> {
        Ok(())
    }

    /// A build job outlives no process here: recovery ends the ones that died with it.
    async fn unclaimed_builds(&self) -> Result<Vec<UnclaimedBuild>, StoreError> {
        Ok(Vec::new())
    }

    async fn serving_versions(&self) -> Result<Vec<ServingVersion>, StoreError> {
        Ok(self
            .records
            .lambdas()
            .await?
            .iter()
            .map(|r| ServingVersion {
                lambda_id: r.lambda_id,
                version: r.deployed.then_some(r.current.version),
            })
            .collect())
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }
}
