//! The persistent store: two async interfaces, `LambdaStore` (records and logs, for the
//! lifecycle, the API and the log writer) and `KvStore` (the guests' key-value data), and
//! `Store`, the embedded backend of both, over sled. One tree per entity; records carry a schema byte;
//! the list order and filters are served from an in-memory index kept with every write;
//! how many records reference each archive and component is counted with every write
//! (`refs`), so garbage collection reads counts, not records; `PgStore` is the
//! PostgreSQL backend that replicas share. Depends on `model` only.

mod archives;
#[cfg(test)]
mod conformance;
mod coordination;
mod kv;
mod postgres;
mod records;

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

pub use archives::{ArchiveFiles, ArchiveStore};
pub use coordination::{
    Change, Coordination, LambdaLock, ServingVersion, SoleProcess, UnclaimedBuild,
};
pub use kv::{KvError, KvQuotas, KvStore, KvUsage, LIST_PAGE, check_bucket};
pub use postgres::PgStore;
pub use records::{
    BuildKind, BuildRecord, LambdaRecord, LambdaSpec, SpecDeployParameters, SpecParameters,
    StoredBaseImage, StoredResources, StoredSandbox,
};

use crate::model::{AccountId, LambdaId, LambdaType};

/// The store failed (I/O, corruption, or an undecodable record).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("store record codec: {0}")]
    Codec(String),
    /// PostgreSQL refused a statement or the connection failed.
    #[error("store database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No database connection could be had (the pool waited and gave up).
    #[error("store database unreachable: {0}")]
    Pool(String),
    /// A file of the store could not be read or written.
    #[error("store file: {0}")]
    Io(#[from] std::io::Error),
    /// No archive is stored under the digest.
    #[error("no archive {0} is stored")]
    MissingArchive(String),
    /// The blocking thread running a call failed.
    #[error("store call interrupted: {0}")]
    Interrupted(String),
    /// The healthcheck's probe read back something else than it wrote.
    #[error("store health probe read back a different value")]
    ProbeMismatch,
    /// Another replica held the lambda's lock for longer than a command may wait.
    #[error("lambda {0} stayed locked by another replica's command; retry")]
    LockTimeout(LambdaId),
}

impl StoreError {
    /// Whether the database could not be reached (or a lock not had in time), rather
    /// than refusing a call: the caller may retry once it is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Pool(_) | Self::LockTimeout(_) => true,
            // No answer from the server (the connection failed or closed), not a refusal.
            Self::Postgres(e) => e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// Another lambda of the account already has the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTaken;

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    lambdas: sled::Tree,
    names: sled::Tree,
    builds: sled::Tree,
    logs: sled::Tree,
    meta: sled::Tree,
    artifacts: sled::Tree,
    kv: sled::Tree,
    kv_usage: sled::Tree,
    /// Per record holding references (a lambda's current spec, a build's spec), the
    /// digests it references.
    holders: sled::Tree,
    /// Per archive or component digest, how many holders reference it.
    refs: sled::Tree,
    log_seq: Arc<AtomicU64>,
    list_index: Arc<RwLock<ListIndex>>,
    flush_gate: Arc<tokio::sync::Mutex<()>>,
}

/// What listing filters on, for one lambda.
#[derive(Debug, Clone)]
struct ListEntry {
    /// Owner.
    pub account_id: AccountId,
    /// The name, lowercased (names are matched case-insensitively).
    pub name_lowercase: String,
    /// Created.
    pub create_time: DateTime<Utc>,
    /// Type of the current spec.
    pub lambda_type: LambdaType,
    /// Namespace of the current spec.
    pub namespace: String,
}

impl ListEntry {
    fn of(record: &LambdaRecord) -> Self {
        Self {
            account_id: record.account_id,
            name_lowercase: record.lambda_name.to_lowercase(),
            create_time: record.create_time,
            lambda_type: record.current.lambda_type,
            namespace: record.current.deploy_parameters.namespace().to_owned(),
        }
    }
}

/// Every stored lambda's list entry in list order (newest first, then by id, descending),
/// kept in memory so that a page costs a scan of small entries and the decoding of that
/// page's records only, not of every record.
type ListIndex = BTreeMap<(Reverse<DateTime<Utc>>, Reverse<LambdaId>), ListEntry>;

fn list_key(record: &LambdaRecord) -> (Reverse<DateTime<Utc>>, Reverse<LambdaId>) {
    (Reverse(record.create_time), Reverse(record.lambda_id))
}

fn name_key(account: AccountId, name: &str) -> Vec<u8> {
    let mut key = account.as_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn log_key(id: LambdaId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// What a spec keeps alive: its archive and, once built, its component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SpecRefs {
    archive: String,
    component: Option<String>,
}

impl SpecRefs {
    fn of(spec: &LambdaSpec) -> Self {
        Self {
            archive: spec.archive_digest.clone(),
            component: spec.wasm_digest.clone(),
        }
    }

    /// The reference count keys: one per digest, tagged by kind.
    fn keys(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        std::iter::once(ref_key(RefKind::Archive, &self.archive)).chain(
            self.component
                .iter()
                .map(|c| ref_key(RefKind::Component, c)),
        )
    }
}

/// What a digest names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// A stored archive.
    Archive,
    /// A compiled component.
    Component,
}

fn ref_key(kind: RefKind, digest: &str) -> Vec<u8> {
    let tag = match kind {
        RefKind::Archive => b'a',
        RefKind::Component => b'c',
    };
    let mut key = vec![tag];
    key.extend_from_slice(digest.as_bytes());
    key
}

/// The holder key of a lambda's current spec, or of its build job's.
fn holder_key(id: LambdaId, build: bool) -> Vec<u8> {
    let mut key = vec![if build { b'b' } else { b'l' }];
    key.extend_from_slice(id.as_bytes());
    key
}

/// Marks a store whose reference counts are kept (older stores are counted once at open).
const REFS_COUNTED: &[u8] = b"refs-counted-v1";

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// Points `holder` at `new` (None: it holds nothing any more), moving the counts of
/// what it referenced before to what it references now.
fn retarget(
    holders: &TransactionalTree,
    refs: &TransactionalTree,
    holder: &[u8],
    new: Option<&SpecRefs>,
) -> TxResult<()> {
    let old: Option<SpecRefs> = holders
        .get(holder)?
        .map(|v| records::decode(&v))
        .transpose()
        .map_err(abort)?;
    if old.as_ref() == new {
        return Ok(());
    }
    for key in old.iter().flat_map(SpecRefs::keys) {
        count(refs, &key, -1)?;
    }
    for key in new.into_iter().flat_map(SpecRefs::keys) {
        count(refs, &key, 1)?;
    }
    match new {
        Some(new) => holders.insert(holder, records::encode(new).map_err(abort)?)?,
        None => holders.remove(holder)?,
    };
    Ok(())
}

fn count(refs: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<()> {
    let now = refs.get(key)?.map_or(0, |v| read_count(&v));
    let next = now.saturating_add_signed(delta);
    if next == 0 {
        refs.remove(key)?;
    } else {
        refs.insert(key, &next.to_be_bytes())?;
    }
    Ok(())
}

fn read_count(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_be_bytes)
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    })
}

impl Store {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()?;
        // Log keys must grow across restarts; nanoseconds since the epoch do.
        let start = chrono::Utc::now()
            .timestamp_nanos_opt()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let lambdas = db.open_tree("lambdas")?;
        let mut list_index = ListIndex::new();
        for value in lambdas.iter().values() {
            let record: LambdaRecord = records::decode(&value?)?;
            list_index.insert(list_key(&record), ListEntry::of(&record));
        }
        let store = Self {
            lambdas,
            names: db.open_tree("names")?,
            builds: db.open_tree("builds")?,
            logs: db.open_tree("logs")?,
            meta: db.open_tree("meta")?,
            artifacts: db.open_tree("artifacts")?,
            kv: db.open_tree("kv")?,
            kv_usage: db.open_tree("kv_usage")?,
            holders: db.open_tree("holders")?,
            refs: db.open_tree("refs")?,
            db,
            log_seq: Arc::new(AtomicU64::new(start)),
            list_index: Arc::new(RwLock::new(list_index)),
            flush_gate: Arc::new(tokio::sync::Mutex::new(())),
        };
        store.count_refs_once()?;
        Ok(store)
    }

    /// A store written before reference counting gets its counts from one scan.
    fn count_refs_once(&self) -> Result<(), StoreError> {
        if self.meta.contains_key(REFS_COUNTED)? {
            return Ok(());
        }
        self.holders.clear()?;
        self.refs.clear()?;
        for value in self.lambdas.iter().values() {
            let record: LambdaRecord = records::decode(&value?)?;
            self.hold(record.lambda_id, false, Some(&record.current))?;
        }
        for value in self.builds.iter().values() {
            let build: BuildRecord = records::decode(&value?)?;
            self.hold(build.lambda_id, true, Some(&build.spec))?;
        }
        self.meta.insert(REFS_COUNTED, &[1])?;
        Ok(())
    }

    fn hold(&self, id: LambdaId, build: bool, spec: Option<&LambdaSpec>) -> Result<(), StoreError> {
        let refs = spec.map(SpecRefs::of);
        unwrap_tx(
            (&self.holders, &self.refs).transaction(|(holders, counts)| {
                retarget(holders, counts, &holder_key(id, build), refs.as_ref())
            }),
        )
    }

    /// Removes the lambda's record, name and build job (and its references) and takes it
    /// out of the listing.
    fn delete_records(&self, record: &LambdaRecord) -> Result<(), StoreError> {
        let id = record.lambda_id;
        let name = name_key(record.account_id, &record.lambda_name);
        let mut index = self
            .list_index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let trees = (
            &self.lambdas,
            &self.names,
            &self.builds,
            &self.holders,
            &self.refs,
        );
        unwrap_tx(
            trees.transaction(|(lambdas, names, builds, holders, counts)| {
                lambdas.remove(id.as_bytes())?;
                if names
                    .get(&name)?
                    .is_some_and(|owner| owner.as_ref() == id.as_bytes())
                {
                    names.remove(name.as_slice())?;
                }
                builds.remove(id.as_bytes())?;
                retarget(holders, counts, &holder_key(id, false), None)?;
                retarget(holders, counts, &holder_key(id, true), None)?;
                Ok(())
            }),
        )?;
        index.remove(&list_key(record));
        Ok(())
    }

    /// Ids of the lambdas whose entry `keep` accepts, in list order (newest first),
    /// after skipping `skip` of them, at most `take`.
    fn list_ids(
        &self,
        keep: impl Fn(&ListEntry) -> bool,
        skip: usize,
        take: usize,
    ) -> Vec<LambdaId> {
        let index = self
            .list_index
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        index
            .iter()
            .filter(|(_, entry)| keep(entry))
            .skip(skip)
            .take(take)
            .map(|((_, Reverse(id)), _)| *id)
            .collect()
    }
}

/// What the lifecycle, the management API and the log writer keep: lambdas, build jobs,
/// the records of compiled artifacts, reference counts and the lambdas' logs. Async, so
/// that a networked database implements it as it is; `Store` is the embedded (sled)
/// backend. The guests' key-value data is the other interface, `KvStore`.
#[async_trait]
pub trait LambdaStore: Send + Sync + std::fmt::Debug {
    /// Makes every acknowledged write durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Proves the store can be written and read back (for the healthcheck). Concurrent
    /// probes must not read each other's writes.
    async fn probe(&self) -> Result<(), StoreError>;

    /// Stores a lambda (new or changed), keeping names unique per account, and moves
    /// the reference counts of its current spec. `old_name` is the name the record had
    /// before (None for a new lambda).
    async fn save_lambda(
        &self,
        record: &LambdaRecord,
        old_name: Option<&str>,
    ) -> Result<Result<(), NameTaken>, StoreError>;

    /// One lambda.
    async fn lambda(&self, id: LambdaId) -> Result<Option<LambdaRecord>, StoreError>;

    /// Whether the lambda exists (cheaper than reading its record).
    async fn lambda_exists(&self, id: LambdaId) -> Result<bool, StoreError>;

    /// Every lambda (recovery at start).
    async fn lambdas(&self) -> Result<Vec<LambdaRecord>, StoreError>;

    /// The lambdas `query` selects in list order (newest first, then by id, descending),
    /// after skipping `skip` of them, at most `take`.
    async fn list(
        &self,
        query: &ListQuery,
        skip: usize,
        take: usize,
    ) -> Result<Vec<LambdaRecord>, StoreError>;

    /// Removes the lambda, its name, its build job, its logs and its key-value data.
    async fn delete_lambda(&self, record: &LambdaRecord) -> Result<(), StoreError>;

    /// Takes back a create the client is told failed, even when the store refuses the
    /// delete: nothing of it may be listed.
    async fn undo_create(&self, record: &LambdaRecord) -> Result<(), StoreError>;

    /// Removes every log line of a lambda.
    async fn delete_logs(&self, id: LambdaId) -> Result<(), StoreError>;

    /// Appends log lines to a lambda.
    async fn append_logs(&self, id: LambdaId, lines: &[String]) -> Result<(), StoreError>;

    /// Number of log lines kept for a lambda.
    async fn count_logs(&self, id: LambdaId) -> Result<usize, StoreError>;

    /// Drops the `count` oldest log lines of a lambda.
    async fn trim_logs(&self, id: LambdaId, count: usize) -> Result<(), StoreError>;

    /// The newest `tail` log lines of a lambda, oldest first (all when `tail` is None).
    async fn tail_logs(&self, id: LambdaId, tail: Option<u64>) -> Result<Vec<String>, StoreError>;

    /// Removes a lambda's key-value data.
    async fn kv_delete_namespace(&self, id: LambdaId) -> Result<(), StoreError>;

    /// Stores the lambda's build job and moves the reference counts of its spec.
    async fn save_build(&self, build: &BuildRecord) -> Result<(), StoreError>;

    /// The lambda's latest build job.
    async fn build(&self, id: LambdaId) -> Result<Option<BuildRecord>, StoreError>;

    /// Every build job (recovery at start).
    async fn builds(&self) -> Result<Vec<BuildRecord>, StoreError>;

    /// Records compiled-cache files created for the component with `digest`.
    async fn add_artifacts(&self, digest: &str, files: &[String]) -> Result<(), StoreError>;

    /// The compiled-cache files of a component.
    async fn artifacts(&self, digest: &str) -> Result<Vec<String>, StoreError>;

    /// Every component digest with recorded artifacts.
    async fn artifact_digests(&self) -> Result<Vec<String>, StoreError>;

    /// Forgets a component's artifacts (after their files are deleted).
    async fn remove_artifact_record(&self, digest: &str) -> Result<(), StoreError>;

    /// How many lambdas' current specs and build jobs reference the digest.
    async fn references(&self, kind: RefKind, digest: &str) -> Result<u64, StoreError>;

    /// Records that this service built the container image `image_id` for `build_key`.
    async fn record_built_image(&self, build_key: &str, image_id: &str) -> Result<(), StoreError>;

    /// The image this service built for `build_key`, if it recorded one: the only image
    /// a build may reuse (a label in the engine proves nothing).
    async fn built_image(&self, build_key: &str) -> Result<Option<String>, StoreError>;
}

/// Where the images this service built are recorded, in `meta`.
const BUILT_IMAGE_PREFIX: &str = "built-image/";

impl Store {
    /// Every (build key, image id) this service recorded building (the store's
    /// migration to another backend).
    pub fn built_images(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.meta
            .scan_prefix(BUILT_IMAGE_PREFIX.as_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                let text = |bytes: &[u8]| {
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| StoreError::Codec("image record is not UTF-8".into()))
                };
                Ok((text(&key[BUILT_IMAGE_PREFIX.len()..])?, text(&value)?))
            })
            .collect()
    }
}

/// Which lambdas a list shows; every field given must match.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this account's lambdas.
    pub account: Option<AccountId>,
    /// create_time < this.
    pub created_before: Option<DateTime<Utc>>,
    /// create_time >= this.
    pub created_since: Option<DateTime<Utc>>,
    /// Lambda type.
    pub lambda_type: Option<LambdaType>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Any of these namespaces.
    pub namespaces: Option<Vec<String>>,
}

impl ListQuery {
    /// `needle`: the name substring, lowercased.
    fn selects(&self, entry: &ListEntry, needle: Option<&str>) -> bool {
        self.account.is_none_or(|a| a == entry.account_id)
            && self.created_before.is_none_or(|t| entry.create_time < t)
            && self.created_since.is_none_or(|t| entry.create_time >= t)
            && self.lambda_type.is_none_or(|t| t == entry.lambda_type)
            && needle.is_none_or(|n| entry.name_lowercase.contains(n))
            && self
                .namespaces
                .as_ref()
                .is_none_or(|ns| ns.contains(&entry.namespace))
    }
}

#[async_trait]
impl LambdaStore for Store {
    async fn flush(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flush_gate.lock().await;
        self.db.flush_async().await?;
        Ok(())
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let key = format!("health-{}", uuid::Uuid::new_v4());
        let stamp = chrono::Utc::now().to_rfc3339();
        self.meta.insert(key.as_bytes(), stamp.as_bytes())?;
        LambdaStore::flush(self).await?;
        let read = self.meta.remove(key.as_bytes())?;
        match read {
            Some(v) if v.as_ref() == stamp.as_bytes() => Ok(()),
            _ => Err(StoreError::ProbeMismatch),
        }
    }

    async fn save_lambda(
        &self,
        record: &LambdaRecord,
        old_name: Option<&str>,
    ) -> Result<Result<(), NameTaken>, StoreError> {
        let value = records::encode(record)?;
        let id = record.lambda_id;
        let new_key = name_key(record.account_id, &record.lambda_name);
        let old_key = old_name.map(|n| name_key(record.account_id, n));
        // Held across the transaction so that the index applies writes in commit order.
        let mut index = self
            .list_index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let refs = SpecRefs::of(&record.current);
        let holder = holder_key(id, false);
        let outcome = (&self.lambdas, &self.names, &self.holders, &self.refs).transaction(
            |(lambdas, names, holders, counts)| {
                if let Some(owner) = names.get(&new_key)?
                    && owner.as_ref() != id.as_bytes()
                {
                    return Ok(Err(NameTaken));
                }
                if let Some(old) = &old_key
                    && *old != new_key
                {
                    names.remove(old.as_slice())?;
                }
                names.insert(new_key.as_slice(), id.as_bytes())?;
                lambdas.insert(id.as_bytes(), value.as_slice())?;
                retarget(holders, counts, &holder, Some(&refs))?;
                Ok(Ok(()))
            },
        );
        let outcome = unwrap_tx(outcome)?;
        if outcome.is_ok() {
            index.insert(list_key(record), ListEntry::of(record));
        }
        Ok(outcome)
    }

    async fn list(
        &self,
        query: &ListQuery,
        skip: usize,
        take: usize,
    ) -> Result<Vec<LambdaRecord>, StoreError> {
        let needle = query.name_contains.as_deref().map(str::to_lowercase);
        let ids = self.list_ids(|entry| query.selects(entry, needle.as_deref()), skip, take);
        let mut page = Vec::with_capacity(ids.len());
        for id in ids {
            // A lambda deleted since the ids were taken is simply not listed.
            if let Some(record) = self.lambda(id).await? {
                page.push(record);
            }
        }
        Ok(page)
    }

    async fn lambda(&self, id: LambdaId) -> Result<Option<LambdaRecord>, StoreError> {
        self.lambdas
            .get(id.as_bytes())?
            .map(|v| records::decode(&v))
            .transpose()
    }

    async fn lambdas(&self) -> Result<Vec<LambdaRecord>, StoreError> {
        self.lambdas
            .iter()
            .values()
            .map(|v| records::decode(&v?))
            .collect()
    }

    async fn delete_lambda(&self, record: &LambdaRecord) -> Result<(), StoreError> {
        self.delete_records(record)?;
        self.delete_logs(record.lambda_id).await?;
        Store::kv_delete_namespace(self, record.lambda_id)
    }

    /// sled keeps an I/O error (a full disk, say) until it is reopened and refuses every
    /// write after it: the record of the failed create is then never made durable and
    /// is gone after a restart, and until then it is at least not listed.
    async fn undo_create(&self, record: &LambdaRecord) -> Result<(), StoreError> {
        let deleted = self.delete_lambda(record).await;
        if deleted.is_err() {
            self.list_index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&list_key(record));
        }
        deleted
    }

    async fn kv_delete_namespace(&self, id: LambdaId) -> Result<(), StoreError> {
        Store::kv_delete_namespace(self, id)
    }

    async fn lambda_exists(&self, id: LambdaId) -> Result<bool, StoreError> {
        Ok(self.lambdas.contains_key(id.as_bytes())?)
    }

    async fn append_logs(&self, id: LambdaId, lines: &[String]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for line in lines {
            let seq = self.log_seq.fetch_add(1, Ordering::Relaxed);
            batch.insert(&log_key(id, seq)[..], line.as_bytes());
        }
        self.logs.apply_batch(batch)?;
        Ok(())
    }

    async fn count_logs(&self, id: LambdaId) -> Result<usize, StoreError> {
        Ok(self.logs.scan_prefix(id.as_bytes()).keys().count())
    }

    async fn trim_logs(&self, id: LambdaId, count: usize) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.logs.scan_prefix(id.as_bytes()).keys().take(count) {
            batch.remove(key?);
        }
        self.logs.apply_batch(batch)?;
        Ok(())
    }

    async fn delete_logs(&self, id: LambdaId) -> Result<(), StoreError> {
        for key in self.logs.scan_prefix(id.as_bytes()).keys() {
            self.logs.remove(key?)?;
        }
        Ok(())
    }

    async fn save_build(&self, build: &BuildRecord) -> Result<(), StoreError> {
        let value = records::encode(build)?;
        let refs = SpecRefs::of(&build.spec);
        let holder = holder_key(build.lambda_id, true);
        unwrap_tx((&self.builds, &self.holders, &self.refs).transaction(
            |(builds, holders, counts)| {
                builds.insert(build.lambda_id.as_bytes(), value.as_slice())?;
                retarget(holders, counts, &holder, Some(&refs))
            },
        ))
    }

    async fn build(&self, id: LambdaId) -> Result<Option<BuildRecord>, StoreError> {
        self.builds
            .get(id.as_bytes())?
            .map(|v| records::decode(&v))
            .transpose()
    }

    async fn builds(&self) -> Result<Vec<BuildRecord>, StoreError> {
        self.builds
            .iter()
            .values()
            .map(|v| records::decode(&v?))
            .collect()
    }

    async fn add_artifacts(&self, digest: &str, files: &[String]) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut all = self.artifacts(digest).await?;
        all.extend(files.iter().cloned());
        all.sort();
        all.dedup();
        self.artifacts.insert(digest, records::encode(&all)?)?;
        Ok(())
    }

    async fn artifacts(&self, digest: &str) -> Result<Vec<String>, StoreError> {
        self.artifacts
            .get(digest)?
            .map(|v| records::decode(&v))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn artifact_digests(&self) -> Result<Vec<String>, StoreError> {
        self.artifacts
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    async fn remove_artifact_record(&self, digest: &str) -> Result<(), StoreError> {
        self.artifacts.remove(digest)?;
        Ok(())
    }

    async fn references(&self, kind: RefKind, digest: &str) -> Result<u64, StoreError> {
        Ok(self
            .refs
            .get(ref_key(kind, digest))?
            .map_or(0, |v| read_count(&v)))
    }

    async fn record_built_image(&self, build_key: &str, image_id: &str) -> Result<(), StoreError> {
        let key = format!("{BUILT_IMAGE_PREFIX}{build_key}");
        self.meta.insert(key.as_bytes(), image_id.as_bytes())?;
        Ok(())
    }

    async fn built_image(&self, build_key: &str) -> Result<Option<String>, StoreError> {
        let key = format!("{BUILT_IMAGE_PREFIX}{build_key}");
        Ok(self
            .meta
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
    async fn tail_logs(&self, id: LambdaId, tail: Option<u64>) -> Result<Vec<String>, StoreError> {
        let take = tail.map_or(usize::MAX, |t| usize::try_from(t).unwrap_or(usize::MAX));
        let mut lines = self
            .logs
            .scan_prefix(id.as_bytes())
            .values()
            .rev()
            .take(take)
            .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        lines.reverse();
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LambdaStatus, LambdaType, Runtime, Version};

    pub(crate) fn record(account: AccountId, name: &str) -> LambdaRecord {
        LambdaRecord {
            lambda_id: LambdaId::generate(),
            account_id: account,
            lambda_name: name.into(),
            description: String::new(),
            create_time: chrono::Utc::now(),
            last_update_time: chrono::Utc::now(),
            status: LambdaStatus::Waiting,
            deployed: false,
            current: LambdaSpec {
                version: Version::FIRST,
                lambda_type: LambdaType::Standalone,
                runtime: Runtime::Wasm,
                archive_digest: "00".into(),
                parameters: SpecParameters::default(),
                deploy_parameters: SpecDeployParameters::default(),
                credentials_sealed: vec![],
                wasm_digest: None,
                openapi: None,
            },
        }
    }

    #[tokio::test]
    async fn the_list_index_follows_every_write_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let account = AccountId::generate();
        let mut records = Vec::new();
        for i in 0..3 {
            let mut r = record(account, &format!("Name-{i}"));
            r.create_time = chrono::DateTime::from_timestamp(1_700_000_000 + i, 0).unwrap();
            store.save_lambda(&r, None).await.unwrap().unwrap();
            records.push(r);
        }
        let all = |store: &Store| store.list_ids(|_| true, 0, 10);
        let ids = |rs: &[&LambdaRecord]| rs.iter().map(|r| r.lambda_id).collect::<Vec<_>>();
        // Newest first.
        assert_eq!(all(&store), ids(&[&records[2], &records[1], &records[0]]));
        assert_eq!(store.list_ids(|_| true, 1, 1), ids(&[&records[1]]));
        // A rename and a type change show in the entries, not as a second entry.
        records[0].lambda_name = "Renamed".into();
        records[0].current.lambda_type = LambdaType::Tasks;
        store
            .save_lambda(&records[0], Some("Name-0"))
            .await
            .unwrap()
            .unwrap();
        let renamed = store.list_ids(|e| e.name_lowercase.contains("renamed"), 0, 10);
        assert_eq!(renamed, ids(&[&records[0]]));
        let tasks = store.list_ids(|e| e.lambda_type == LambdaType::Tasks, 0, 10);
        assert_eq!(tasks, ids(&[&records[0]]));
        // A refused save leaves the index alone.
        let clash = record(account, "Name-1");
        assert_eq!(
            store.save_lambda(&clash, None).await.unwrap(),
            Err(NameTaken)
        );
        store.delete_lambda(&records[1]).await.unwrap();
        assert_eq!(all(&store), ids(&[&records[2], &records[0]]));
        drop(store);
        let reopened = reopen(dir.path());
        assert_eq!(all(&reopened), ids(&[&records[2], &records[0]]));
    }

    #[tokio::test]
    async fn references_are_counted_with_every_write_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();

        let mut first = record(AccountId::generate(), "a");
        first.current.archive_digest = "shared".into();
        let mut second = record(AccountId::generate(), "b");
        second.current.archive_digest = "shared".into();
        store.save_lambda(&first, None).await.unwrap().unwrap();
        store.save_lambda(&second, None).await.unwrap().unwrap();
        assert_eq!(
            store.references(RefKind::Archive, "shared").await.unwrap(),
            2
        );
        // A build of a new archive holds it beside the serving one; once built it also
        // holds its component.
        let mut build = BuildRecord {
            lambda_id: first.lambda_id,
            kind: BuildKind::Recreate,
            spec: LambdaSpec {
                archive_digest: "new".into(),
                ..first.current.clone()
            },
            status: crate::model::ImageStatus::Pending,
            created: chrono::Utc::now(),
            finished: None,
            logs: vec![],
        };
        store.save_build(&build).await.unwrap();
        build.spec.wasm_digest = Some("wasm".into());
        store.save_build(&build).await.unwrap();
        store.save_build(&build).await.unwrap();
        assert_eq!(store.references(RefKind::Archive, "new").await.unwrap(), 1);
        assert_eq!(
            store.references(RefKind::Component, "wasm").await.unwrap(),
            1
        );
        // The lambda swaps to the built version: the old archive loses one holder.
        first.current = build.spec;
        store.save_lambda(&first, Some("a")).await.unwrap().unwrap();
        assert_eq!(
            store.references(RefKind::Archive, "shared").await.unwrap(),
            1
        );
        assert_eq!(store.references(RefKind::Archive, "new").await.unwrap(), 2);
        assert_eq!(
            store.references(RefKind::Component, "wasm").await.unwrap(),
            2
        );
        // A name clash changes nothing.
        let mut clash = record(first.account_id, "a");
        clash.current.archive_digest = "clash".into();
        assert_eq!(
            store.save_lambda(&clash, None).await.unwrap(),
            Err(NameTaken)
        );
        assert_eq!(
            store.references(RefKind::Archive, "clash").await.unwrap(),
            0
        );
        drop(store);
        let store = reopen(dir.path());
        store.delete_lambda(&first).await.unwrap();
        assert_eq!(store.references(RefKind::Archive, "new").await.unwrap(), 0);
        assert_eq!(
            store.references(RefKind::Component, "wasm").await.unwrap(),
            0
        );
        assert_eq!(
            store.references(RefKind::Archive, "shared").await.unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_store_written_before_counting_is_counted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lambda = record(AccountId::generate(), "old");
        store.save_lambda(&lambda, None).await.unwrap().unwrap();
        // As an older version left it: records, no counts.
        store.refs.clear().unwrap();
        store.holders.clear().unwrap();
        store.meta.remove(REFS_COUNTED).unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.references(RefKind::Archive, "00").await.unwrap(), 1);
    }

    #[test]
    fn specs_written_with_the_wire_types_still_decode() {
        // What the store held when a spec embedded the API's parameter types.
        let parameters = r#"{"lambda_name":null,"description":null,"lambda_type":"tasks",
            "base_image":{"name":"python","tag":"3.12"},"additional_user_docker_commands":null,
            "workers":2,"config":{"k":"v"}}"#;
        let parameters: SpecParameters = serde_json::from_str(parameters).unwrap();
        assert_eq!(parameters.lambda_type, Some(LambdaType::Tasks));
        assert_eq!(parameters.workers, Some(2));
        let deploy = r#"{"pod_count":3,"namespace":"ns-a","sandbox":{"memory_limit_mb":64}}"#;
        let deploy: SpecDeployParameters = serde_json::from_str(deploy).unwrap();
        assert_eq!(deploy.namespace(), "ns-a");
        assert_eq!(deploy.sandbox.unwrap().memory_limit_mb, Some(64));
    }

    /// Opens a store just dropped. A child process another test spawns at that moment
    /// (the PostgreSQL contract's `initdb` and `pg_ctl`) briefly shares the dropped
    /// store's locked file until it execs: the open is tried again until it lets go.
    fn reopen(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("the store does not reopen: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn records_carry_their_schema() {
        let rec = record(AccountId::generate(), "z");
        let bytes = records::encode(&rec).unwrap();
        assert_eq!(bytes[0], records::SCHEMA_V1);
        let back: LambdaRecord = records::decode(&bytes).unwrap();
        assert_eq!(back.lambda_name, "z");
        assert!(records::decode::<LambdaRecord>(&[9, b'{', b'}']).is_err());
    }
}
