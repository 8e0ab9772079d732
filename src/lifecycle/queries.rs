//! The lifecycle's reads: one lambda (tenancy checked), a filtered page of them, a
//! build job's image status and logs.

use super::{ImageView, Lifecycle, LifecycleError, ListFilter, Result, now};
use crate::model::{AccountId, ImageStatus, LambdaId};
use crate::store::LambdaRecord;

impl Lifecycle {
    /// The lambda if `account` (when given) owns it; another account's lambda is
    /// reported exactly like a missing one.
    pub async fn owned(&self, id: LambdaId, account: Option<AccountId>) -> Result<LambdaRecord> {
        match self.store.lambda(id).await? {
            Some(r) if account.is_none_or(|a| a == r.account_id) => Ok(r),
            _ => Err(LifecycleError::NotFound(id)),
        }
    }

    /// Lambdas matching the filter, newest first, one page.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<LambdaRecord>> {
        let skip = filter
            .page
            .saturating_sub(1)
            .saturating_mul(filter.page_size);
        Ok(self
            .store
            .list(&filter.query, skip, filter.page_size)
            .await?)
    }

    /// The lambda's image (build job) status and logs.
    pub async fn image(&self, id: LambdaId, account: Option<AccountId>) -> Result<ImageView> {
        self.owned(id, account).await?;
        let Some(build) = self.store.build(id).await? else {
            return Ok(ImageView {
                status: ImageStatus::NotFound,
                logs: vec![],
            });
        };
        let retention = chrono::Duration::seconds(
            i64::try_from(self.config.builds.retention_secs).unwrap_or(i64::MAX),
        );
        let expired = build.finished.is_some_and(|t| now() - t > retention);
        Ok(ImageView {
            status: if expired {
                ImageStatus::NotFound
            } else {
                build.status
            },
            logs: build.logs,
        })
    }
}
