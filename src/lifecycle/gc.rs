//! Garbage collection of what lambdas share by digest: stored archives and compiled
//! artifacts go when no lambda, serving or building, references them any more.

use super::{Lifecycle, Result};
use crate::store::LambdaSpec;

impl Lifecycle {
    /// Removes what a spec no longer in use referenced (if nothing else does).
    pub(super) async fn collect_spec_garbage(&self, spec: Option<LambdaSpec>) -> Result<()> {
        match spec {
            Some(spec) => {
                let components: Vec<String> = spec.wasm_digest.into_iter().collect();
                self.collect_garbage(&[spec.archive_digest], &components)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Removes the archives and compiled artifacts among the candidates that no
    /// lambda (serving or building) references any more.
    pub(super) async fn collect_garbage(
        &self,
        archives: &[String],
        components: &[String],
    ) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        let mut used_archives = std::collections::HashSet::new();
        let mut used_components = std::collections::HashSet::new();
        for spec in self
            .store
            .lambdas()?
            .into_iter()
            .map(|r| r.current)
            .chain(self.store.builds()?.into_iter().map(|b| b.spec))
        {
            used_archives.insert(spec.archive_digest);
            used_components.extend(spec.wasm_digest);
        }
        for digest in archives.iter().filter(|d| !used_archives.contains(*d)) {
            self.archives.remove(digest)?;
        }
        for digest in components.iter().filter(|d| !used_components.contains(*d)) {
            let files = self.store.artifacts(digest)?;
            self.engine.remove_artifacts(&files);
            self.components.remove(digest);
            self.store.remove_artifact_record(digest)?;
            tracing::info!(component = %digest, files = files.len(), "compiled artifact removed");
        }
        Ok(())
    }
}
