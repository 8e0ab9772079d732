//! Garbage collection of what lambdas share by digest: stored archives and compiled
//! artifacts go when no lambda, serving or building, references them any more. The
//! store counts the references with every write, so a collection reads one count per
//! candidate, never the records.

use super::{Lifecycle, Result};
use crate::store::{LambdaSpec, RefKind};

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
        for digest in archives {
            if self.store.references(RefKind::Archive, digest).await? == 0 {
                self.archives.remove_archive(digest).await?;
            }
        }
        for digest in components {
            if self.store.references(RefKind::Component, digest).await? > 0 {
                continue;
            }
            let files = self.store.artifacts(digest).await?;
            self.engine.remove_artifacts(&files);
            self.components.remove(digest);
            self.store.remove_artifact_record(digest).await?;
            tracing::info!(component = %digest, files = files.len(), "compiled artifact removed");
        }
        Ok(())
    }
}
