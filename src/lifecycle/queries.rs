//! The lifecycle's reads: one lambda (tenancy checked), a filtered page of them, a
//! build job's image status and logs.

use super::{ImageView, Lifecycle, LifecycleError, ListFilter, Result, now};
use crate::model::{AccountId, ImageStatus, LambdaId};
use crate::store::{LambdaRecord, ListEntry};

impl Lifecycle {
    /// The lambda if `account` (when given) owns it; another account's lambda is
    /// reported exactly like a missing one.
    pub fn owned(&self, id: LambdaId, account: Option<AccountId>) -> Result<LambdaRecord> {
        match self.store.lambda(id)? {
            Some(r) if account.is_none_or(|a| a == r.account_id) => Ok(r),
            _ => Err(LifecycleError::NotFound(id)),
        }
    }

    /// Lambdas matching the filter, newest first, one page.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<LambdaRecord>> {
        let needle = filter.name_contains.as_ref().map(|n| n.to_lowercase());
        let keep = |entry: &ListEntry| {
            filter.account.is_none_or(|a| a == entry.account_id)
                && filter.created_before.is_none_or(|t| entry.create_time < t)
                && filter.created_since.is_none_or(|t| entry.create_time >= t)
                && filter.lambda_type.is_none_or(|t| t == entry.lambda_type)
                && needle
                    .as_ref()
                    .is_none_or(|n| entry.name_lowercase.contains(n.as_str()))
                && filter
                    .namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.contains(&entry.namespace))
        };
        let skip = filter
            .page
            .saturating_sub(1)
            .saturating_mul(filter.page_size);
        let mut page = Vec::with_capacity(filter.page_size);
        for id in self.store.list_ids(keep, skip, filter.page_size) {
            // A lambda deleted since the ids were taken is simply not listed.
            if let Some(record) = self.store.lambda(id)? {
                page.push(record);
            }
        }
        Ok(page)
    }

    /// The lambda's image (build job) status and logs.
    pub fn image(&self, id: LambdaId, account: Option<AccountId>) -> Result<ImageView> {
        self.owned(id, account)?;
        let Some(build) = self.store.build(id)? else {
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
