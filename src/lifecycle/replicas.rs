//! Replicas sharing one store: each serves what the records say, whoever changed them.
//! A change notice (or, for notices missed, the periodic comparison) brings a lambda's
//! serving version here; build jobs whose replica stopped renewing their lease are
//! taken over; the leader alone removes orphaned pods and collects unreferenced archives.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{Lifecycle, Served};
use crate::model::{LambdaId, Runtime};
use crate::store::Change;

/// How often unclaimed build jobs are looked for.
const BUILD_SCAN_EVERY: Duration = Duration::from_secs(1);

/// How often the leader sweeps orphaned pods and unreferenced archives.
const LEADER_SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Lifecycle {
    /// Follows the other processes' changes for the life of the service (a store of one
    /// process has none: returns at once).
    pub async fn follow_replicas(self: Arc<Self>) {
        if !self.coordination.shared() {
            return;
        }
        let mut changes = self.coordination.changes();
        let mut leadership = self.coordination.leadership();
        let mut reconcile =
            tokio::time::interval(Duration::from_secs(self.config.store.reconcile_secs));
        let mut scan = tokio::time::interval(BUILD_SCAN_EVERY);
        let mut sweep = tokio::time::interval(LEADER_SWEEP_EVERY);
        for timer in [&mut reconcile, &mut scan, &mut sweep] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(Change::Lambda(id)) => self.spawn_sync(id),
                    Ok(Change::Missed) | Err(RecvError::Lagged(_)) => self.reconcile().await,
                    Err(RecvError::Closed) => return,
                },
                _ = reconcile.tick() => self.reconcile().await,
                _ = scan.tick() => self.take_over_builds().await,
                _ = sweep.tick() => if *leadership.borrow_and_update() {
                    self.leader_sweep().await;
                },
            }
        }
    }

    /// Brings the lambda's serving version here in a task of its own: a compile must
    /// not hold up the other notices.
    fn spawn_sync(self: &Arc<Self>, id: LambdaId) {
        let this = self.clone();
        tokio::spawn(async move { this.sync_lambda(id).await });
    }

    /// Serves here what the lambda's record says serves: the version it names (loaded,
    /// or its pods attached), or nothing once it is deleted. Under the lambda's lock in
    /// this process, so that a build finishing here and a notice are applied in order.
    async fn sync_lambda(&self, id: LambdaId) {
        let lock = self.lock(id);
        let _in_order = lock.lock().await;
        let record = match self.store.lambda(id).await {
            Ok(record) => record,
            Err(e) => {
                // The next comparison tries again.
                tracing::warn!(lambda = %id, error = %e, "cannot read a changed lambda");
                return;
            }
        };
        let serving = self.registry.serving_version(id);
        let Some(record) = record else {
            if serving.is_some() || self.jobs.contains_key(&id) {
                self.registry.remove(id);
                if let Some((_, job)) = self.jobs.remove(&id) {
                    job.abort();
                }
                self.unstage(id);
                self.metrics.forget_lambda(id);
                tracing::info!(lambda = %id, "lambda deleted through another replica: no longer served here");
            }
            return;
        };
        if !record.deployed {
            // Created, its first build not finished (perhaps running here): nothing serves.
            return;
        }
        let version = record.current.version;
        if serving == Some(version) {
            return;
        }
        let leader = *self.coordination.leadership().borrow();
        let served = match record.current.runtime {
            Runtime::Wasm => self.reload(&record).await.map(Served::Wasm),
            Runtime::Container if leader => self.reattach(&record).await.map(Served::Pods),
            Runtime::Container => self.attach(&record).await.map(Served::Pods),
        };
        match served {
            Ok(Served::Wasm(lambda)) => self.registry.swap_in(lambda),
            Ok(Served::Pods(pods)) => self.registry.swap_in_pods(pods),
            Err(reason) => {
                // The record stays as it is: other replicas may serve it well.
                tracing::error!(lambda = %id, %version, %reason, "cannot serve the changed lambda here; the next comparison tries again");
                return;
            }
        }
        tracing::info!(lambda = %id, %version, replica = self.coordination.replica(), "version serves here");
    }

    /// Compares what serves here with every lambda's record, and brings each that
    /// differs up to date.
    async fn reconcile(self: &Arc<Self>) {
        let records = match self.coordination.serving_versions().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot compare the served lambdas with the store");
                return;
            }
        };
        let served: HashMap<LambdaId, _> = self.registry.served().into_iter().collect();
        let known: HashSet<LambdaId> = records.iter().map(|r| r.lambda_id).collect();
        for record in &records {
            if record.version != served.get(&record.lambda_id).copied() {
                self.spawn_sync(record.lambda_id);
            }
        }
        for id in served.keys().filter(|id| !known.contains(id)) {
            self.spawn_sync(*id);
        }
    }

    /// Runs the build jobs no live process holds (their replica died, or never claimed
    /// them): containers only on the leader.
    async fn take_over_builds(self: &Arc<Self>) {
        let unclaimed = match self.coordination.unclaimed_builds().await {
            Ok(unclaimed) => unclaimed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for unclaimed build jobs");
                return;
            }
        };
        let leader = *self.coordination.leadership().borrow();
        for build in unclaimed {
            if (build.runtime == Runtime::Container && !leader)
                || self.jobs.contains_key(&build.lambda_id)
            {
                continue;
            }
            tracing::info!(lambda = %build.lambda_id, replica = self.coordination.replica(), "claiming an unclaimed build job");
            self.spawn_build(build.lambda_id);
        }
    }

    /// The leader's chores: pods of lambdas no record names, archives no record
    /// references (the ones each replica's collection left while they were fresh).
    async fn leader_sweep(&self) {
        if self.containers.is_some() {
            match self.coordination.serving_versions().await {
                Ok(records) => {
                    let known: HashSet<LambdaId> = records.iter().map(|r| r.lambda_id).collect();
                    self.remove_orphan_pods(&known).await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list lambdas for the pod sweep"),
            }
        }
        let swept = async {
            let archives = self.archives.archive_digests().await?;
            self.collect_garbage(&archives, &[]).await
        };
        if let Err(e) = swept.await {
            tracing::warn!(error = %e, "cannot sweep unreferenced archives");
        }
    }
}
