//! Per-lambda key-value namespaces (the data behind `wasi:keyvalue`): the `KvStore`
//! interface the guests' imports use, and the sled backend's entries keyed by lambda,
//! bucket and key, with a usage record per lambda kept in the same transaction as every
//! change so that quotas hold across restarts. Depends on `model` only.

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{Store, StoreError};
use crate::model::LambdaId;

/// Longest bucket name (its length is stored in one byte of the entry key).
pub const MAX_BUCKET_BYTES: usize = 255;
/// Keys returned by one `list-keys` page.
pub const LIST_PAGE: usize = 1000;

/// Quotas of one lambda's namespace.
#[derive(Debug, Clone, Copy)]
pub struct KvQuotas {
    /// Keys across all buckets.
    pub max_keys: u64,
    /// Bytes of one key.
    pub max_key_bytes: usize,
    /// Bytes of one value.
    pub max_value_bytes: u64,
    /// Bytes of all keys and values.
    pub max_total_bytes: u64,
}

/// A key-value operation failed. `Invalid` and `Quota` are the guest's to handle.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key, bucket name or stored value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The change would exceed a quota.
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// The blocking thread running the call failed.
    #[error("key-value call interrupted: {0}")]
    Interrupted(String),
}

/// Keys and bytes a lambda's namespace holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Entries.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

impl KvUsage {
    fn decode(raw: Option<&[u8]>) -> Self {
        let word = |r: &[u8], at: usize| {
            r.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes)
        };
        raw.map_or_else(Self::default, |r| Self {
            keys: word(r, 0),
            bytes: word(r, 8),
        })
    }

    /// Accounts for the entry of a `key_len`-byte key changing from a value of `old`
    /// bytes to one of `new` bytes (`None`: no entry).
    pub(super) fn replace(&mut self, key_len: u64, old: Option<u64>, new: Option<u64>) {
        if let Some(old) = old {
            self.keys = self.keys.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(key_len + old);
        }
        if let Some(new) = new {
            self.keys += 1;
            self.bytes += key_len + new;
        }
    }

    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.keys.to_be_bytes());
        out[8..].copy_from_slice(&self.bytes.to_be_bytes());
        out
    }
}

/// `lambda ‖ len(bucket) ‖ bucket`: the prefix of every key of one bucket.
fn bucket_prefix(lambda: LambdaId, bucket: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(17 + bucket.len());
    prefix.extend_from_slice(lambda.as_bytes());
    // Bucket names are checked to fit one byte before any key is built.
    prefix.push(u8::try_from(bucket.len()).unwrap_or(u8::MAX));
    prefix.extend_from_slice(bucket.as_bytes());
    prefix
}

fn entry_key(lambda: LambdaId, bucket: &str, key: &str) -> Vec<u8> {
    let mut full = bucket_prefix(lambda, bucket);
    full.extend_from_slice(key.as_bytes());
    full
}

/// Checks a bucket name before it is used.
pub fn check_bucket(bucket: &str) -> Result<(), KvError> {
    if bucket.is_empty() || bucket.len() > MAX_BUCKET_BYTES {
        return Err(KvError::Invalid(format!(
            "bucket names must be 1..{MAX_BUCKET_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(super) fn check_key(key: &str, quotas: &KvQuotas) -> Result<(), KvError> {
    if key.is_empty() || key.len() > quotas.max_key_bytes {
        return Err(KvError::Invalid(format!(
            "keys must be 1..{} bytes, got {}",
            quotas.max_key_bytes,
            key.len()
        )));
    }
    Ok(())
}

/// Checks the key and value of every set in a batch against the per-entry limits.
pub(super) fn check_writes(
    writes: &[(&str, Option<&[u8]>)],
    quotas: &KvQuotas,
) -> Result<(), KvError> {
    for (key, value) in writes {
        if let Some(value) = value {
            check_key(key, quotas)?;
            check_value(value, quotas)?;
        }
    }
    Ok(())
}

fn check_value(value: &[u8], quotas: &KvQuotas) -> Result<(), KvError> {
    if value.len() as u64 > quotas.max_value_bytes {
        return Err(KvError::Quota(format!(
            "values may be at most {} bytes, got {}",
            quotas.max_value_bytes,
            value.len()
        )));
    }
    Ok(())
}

/// Refuses a namespace past its key or byte quota.
pub(super) fn check_usage(usage: KvUsage, quotas: &KvQuotas) -> Result<(), KvError> {
    if usage.keys > quotas.max_keys {
        return Err(KvError::Quota(format!(
            "the lambda may hold at most {} keys",
            quotas.max_keys
        )));
    }
    if usage.bytes > quotas.max_total_bytes {
        return Err(KvError::Quota(format!(
            "the lambda may hold at most {} bytes of keys and values",
            quotas.max_total_bytes
        )));
    }
    Ok(())
}

/// The counter stored at `key`: an 8-byte little-endian u64 (absent counts as 0).
pub(super) fn read_counter(key: &str, raw: Option<&[u8]>) -> Result<u64, KvError> {
    match raw {
        None => Ok(0),
        Some(raw) => <[u8; 8]>::try_from(raw)
            .map(u64::from_le_bytes)
            .map_err(|_| {
                KvError::Invalid(format!(
                    "the value of '{key}' is not a counter (8-byte little-endian u64)"
                ))
            }),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<KvError>>;

fn abort<T>(e: KvError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn unwrap_kv_tx<T>(
    r: Result<T, sled::transaction::TransactionError<KvError>>,
) -> Result<T, KvError> {
    r.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => KvError::Store(StoreError::Sled(e)),
    })
}

/// Replaces (or with `None` removes) one entry inside a transaction, keeping the usage
/// record exact and refusing changes that would exceed a quota. A write for a lambda
/// whose record is gone is refused: the lambda's deletion and its namespace sweep then
/// cannot be outrun by a request still running.
fn put_entry(
    trees: &(TransactionalTree, TransactionalTree, TransactionalTree),
    lambda: LambdaId,
    key_len: usize,
    full_key: &[u8],
    value: Option<&[u8]>,
    quotas: &KvQuotas,
) -> TxResult<()> {
    let (entries, usage_tree, lambdas) = trees;
    let old = entries.get(full_key)?;
    let mut usage = KvUsage::decode(usage_tree.get(lambda.as_bytes())?.as_deref());
    usage.replace(
        key_len as u64,
        old.as_ref().map(|v| v.len() as u64),
        value.map(|v| v.len() as u64),
    );
    match value {
        Some(value) => {
            if lambdas.get(lambda.as_bytes())?.is_none() {
                return abort(KvError::Invalid("the lambda has been deleted".to_owned()));
            }
            if let Err(e) = check_usage(usage, quotas) {
                return abort(e);
            }
            entries.insert(full_key, value)?;
        }
        None if old.is_none() => return Ok(()),
        None => {
            entries.remove(full_key)?;
        }
    }
    usage_tree.insert(lambda.as_bytes(), &usage.encode())?;
    Ok(())
}

impl Store {
    /// Every entry of the lambda's namespace as (bucket, key, value), in key order (the
    /// store's migration to another backend).
    pub fn kv_entries(
        &self,
        lambda: LambdaId,
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.kv.scan_prefix(lambda.as_bytes()) {
            let (full, value) = entry?;
            let rest = &full[16..];
            let (len, rest) = rest
                .split_first()
                .ok_or_else(|| StoreError::Codec("key-value entry without a bucket".into()))?;
            let (bucket, key) = rest.split_at(usize::from(*len).min(rest.len()));
            let text = |bytes: &[u8]| {
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| StoreError::Codec("key-value name is not UTF-8".into()))
            };
            entries.push((text(bucket)?, text(key)?, value.to_vec()));
        }
        Ok(entries)
    }

    /// The value of `key` in `bucket`.
    pub fn kv_get(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .kv
            .get(entry_key(lambda, bucket, key))
            .map_err(StoreError::from)?
            .map(|v| v.to_vec()))
    }

    /// Sets `key` in `bucket` to `value` within the lambda's quotas.
    pub fn kv_set(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        value: &[u8],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        self.kv_write(lambda, bucket, &[(key, Some(value))], quotas)
    }

    /// Sets every pair, all or nothing: a batch that would break a quota writes nothing.
    pub fn kv_set_many(
        &self,
        lambda: LambdaId,
        bucket: &str,
        pairs: &[(String, Vec<u8>)],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        let writes: Vec<_> = pairs
            .iter()
            .map(|(key, value)| (key.as_str(), Some(value.as_slice())))
            .collect();
        self.kv_write(lambda, bucket, &writes, quotas)
    }

    /// Removes `key` from `bucket` (absent keys are fine).
    pub fn kv_delete(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        self.kv_write(lambda, bucket, &[(key, None)], quotas)
    }

    /// Removes every key, all or nothing.
    pub fn kv_delete_many(
        &self,
        lambda: LambdaId,
        bucket: &str,
        keys: &[String],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        let writes: Vec<_> = keys.iter().map(|key| (key.as_str(), None)).collect();
        self.kv_write(lambda, bucket, &writes, quotas)
    }

    /// Applies sets (`Some`) and removals (`None`) in one transaction, so quotas are
    /// checked against the batch as a whole and a refused batch leaves no trace.
    fn kv_write(
        &self,
        lambda: LambdaId,
        bucket: &str,
        writes: &[(&str, Option<&[u8]>)],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        check_writes(writes, quotas)?;
        let full_keys: Vec<Vec<u8>> = writes
            .iter()
            .map(|(key, _)| entry_key(lambda, bucket, key))
            .collect();
        unwrap_kv_tx(
            (&self.kv, &self.kv_usage, &self.lambdas).transaction(|trees| {
                for ((key, value), full) in writes.iter().zip(&full_keys) {
                    put_entry(trees, lambda, key.len(), full, *value, quotas)?;
                }
                Ok(())
            }),
        )
    }

    /// Adds `delta` to the 8-byte little-endian counter at `key` (absent counts as 0)
    /// and returns the new value; atomic against every other writer.
    pub fn kv_increment(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        delta: u64,
        quotas: &KvQuotas,
    ) -> Result<u64, KvError> {
        check_key(key, quotas)?;
        let full = entry_key(lambda, bucket, key);
        unwrap_kv_tx(
            (&self.kv, &self.kv_usage, &self.lambdas).transaction(|trees| {
                let current = match read_counter(key, trees.0.get(&full)?.as_deref()) {
                    Ok(current) => current,
                    Err(e) => return abort(e),
                };
                let Some(next) = current.checked_add(delta) else {
                    return abort(KvError::Invalid(format!(
                        "incrementing '{key}' by {delta} overflows u64"
                    )));
                };
                put_entry(
                    trees,
                    lambda,
                    key.len(),
                    &full,
                    Some(&next.to_le_bytes()),
                    quotas,
                )?;
                Ok(next)
            }),
        )
    }

    /// One page of the keys of `bucket` starting at position `cursor`, and the cursor
    /// of the next page.
    pub fn kv_list(
        &self,
        lambda: LambdaId,
        bucket: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let prefix = bucket_prefix(lambda, bucket);
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut keys = Vec::new();
        let mut more = false;
        for entry in self.kv.scan_prefix(&prefix).keys().skip(skip) {
            let entry = entry.map_err(StoreError::from)?;
            if keys.len() == LIST_PAGE {
                more = true;
                break;
            }
            keys.push(String::from_utf8_lossy(&entry[prefix.len()..]).into_owned());
        }
        let next = more.then(|| cursor + keys.len() as u64);
        Ok((keys, next))
    }

    /// What the lambda's namespace holds.
    pub fn kv_usage(&self, lambda: LambdaId) -> Result<KvUsage, StoreError> {
        Ok(KvUsage::decode(
            self.kv_usage.get(lambda.as_bytes())?.as_deref(),
        ))
    }

    /// Removes the lambda's whole namespace.
    pub fn kv_delete_namespace(&self, lambda: LambdaId) -> Result<(), StoreError> {
        for key in self.kv.scan_prefix(lambda.as_bytes()).keys() {
            self.kv.remove(key?)?;
        }
        self.kv_usage.remove(lambda.as_bytes())?;
        Ok(())
    }
}

/// The lambdas' key-value data as the guests' `wasi:keyvalue` imports use it: every
/// call inside one lambda's namespace, writes checked against the quotas. Async, so a
/// networked database implements it as it is; `Store` is the embedded backend.
#[async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// The value of `key` in `bucket`.
    async fn get(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError>;

    /// Applies sets (`Some`) and removals (`None`) of keys in `bucket` at once, all
    /// or none: quotas are checked against the batch as a whole, and a write for a
    /// lambda that is gone is refused.
    async fn write(
        &self,
        lambda: LambdaId,
        bucket: &str,
        writes: &[(&str, Option<&[u8]>)],
        quotas: &KvQuotas,
    ) -> Result<(), KvError>;

    /// Sets `key` in `bucket`.
    async fn set(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        value: &[u8],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        self.write(lambda, bucket, &[(key, Some(value))], quotas)
            .await
    }

    /// Sets every pair at once (all or none).
    async fn set_many(
        &self,
        lambda: LambdaId,
        bucket: &str,
        pairs: &[(String, Vec<u8>)],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        let writes: Vec<_> = pairs
            .iter()
            .map(|(key, value)| (key.as_str(), Some(value.as_slice())))
            .collect();
        self.write(lambda, bucket, &writes, quotas).await
    }

    /// Deletes `key` (a missing key is fine).
    async fn delete(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        self.write(lambda, bucket, &[(key, None)], quotas).await
    }

    /// Deletes every key at once.
    async fn delete_many(
        &self,
        lambda: LambdaId,
        bucket: &str,
        keys: &[String],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        let writes: Vec<_> = keys.iter().map(|key| (key.as_str(), None)).collect();
        self.write(lambda, bucket, &writes, quotas).await
    }

    /// Adds `delta` to the counter at `key`; returns the new value.
    async fn increment(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        delta: u64,
        quotas: &KvQuotas,
    ) -> Result<u64, KvError>;

    /// One page of the bucket's keys from `cursor`, and the cursor of the next page.
    async fn list(
        &self,
        lambda: LambdaId,
        bucket: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError>;
}

/// The sled backend's calls may wait on its disk (a transaction's log write, a page
/// read back), so each runs on the blocking pool, never on an async worker that other
/// requests share.
#[async_trait]
impl KvStore for Store {
    async fn get(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        self.off_worker(move |s| s.kv_get(lambda, &bucket, &key))
            .await
    }

    async fn write(
        &self,
        lambda: LambdaId,
        bucket: &str,
        writes: &[(&str, Option<&[u8]>)],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        let owned: Vec<(String, Option<Vec<u8>>)> = writes
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.map(<[u8]>::to_vec)))
            .collect();
        let (bucket, quotas) = (bucket.to_owned(), *quotas);
        self.off_worker(move |s| {
            let writes: Vec<_> = owned
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_deref()))
                .collect();
            s.kv_write(lambda, &bucket, &writes, &quotas)
        })
        .await
    }

    async fn increment(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        delta: u64,
        quotas: &KvQuotas,
    ) -> Result<u64, KvError> {
        let (bucket, key, quotas) = (bucket.to_owned(), key.to_owned(), *quotas);
        self.off_worker(move |s| s.kv_increment(lambda, &bucket, &key, delta, &quotas))
            .await
    }

    async fn list(
        &self,
        lambda: LambdaId,
        bucket: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let bucket = bucket.to_owned();
        self.off_worker(move |s| s.kv_list(lambda, &bucket, cursor))
            .await
    }
}

impl Store {
    /// Runs a synchronous key-value call on the blocking pool.
    async fn off_worker<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Store) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| KvError::Interrupted(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> KvQuotas {
        KvQuotas {
            max_keys: 3,
            max_key_bytes: 16,
            max_value_bytes: 8,
            max_total_bytes: 40,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// A lambda whose record exists (its contents do not matter here).
    fn lambda(store: &Store) -> LambdaId {
        let id = LambdaId::generate();
        store.lambdas.insert(id.as_bytes(), b"record").unwrap();
        id
    }

    #[test]
    fn set_get_delete_keep_usage_exact() {
        let (_dir, store) = store();
        let (a, b) = (lambda(&store), lambda(&store));
        let q = quotas();
        store.kv_set(a, "default", "k1", b"v1", &q).unwrap();
        store.kv_set(a, "default", "k1", b"value", &q).unwrap();
        store.kv_set(a, "other", "k1", b"x", &q).unwrap();
        assert_eq!(store.kv_get(a, "default", "k1").unwrap().unwrap(), b"value");
        assert_eq!(store.kv_get(b, "default", "k1").unwrap(), None);
        assert_eq!(
            store.kv_usage(a).unwrap(),
            KvUsage {
                keys: 2,
                bytes: 2 + 5 + 2 + 1
            }
        );
        store.kv_delete(a, "default", "k1", &q).unwrap();
        store.kv_delete(a, "default", "absent", &q).unwrap();
        assert_eq!(store.kv_usage(a).unwrap(), KvUsage { keys: 1, bytes: 3 });
        store.kv_delete_namespace(a).unwrap();
        assert_eq!(store.kv_get(a, "other", "k1").unwrap(), None);
        assert_eq!(store.kv_usage(a).unwrap(), KvUsage::default());
        // Once the record is gone, writes are refused.
        store.lambdas.remove(b.as_bytes()).unwrap();
        assert!(matches!(
            store.kv_set(b, "default", "k", b"v", &q),
            Err(KvError::Invalid(_))
        ));
    }

    #[test]
    fn batches_are_all_or_nothing() {
        let (_dir, store) = store();
        let a = lambda(&store);
        let q = quotas();
        let pairs = |names: &[&str]| -> Vec<(String, Vec<u8>)> {
            names
                .iter()
                .map(|n| (n.to_string(), b"v".to_vec()))
                .collect()
        };
        store.kv_set_many(a, "b", &pairs(&["a", "b"]), &q).unwrap();
        // Two more keys would make four: nothing of the batch is written.
        let err = store
            .kv_set_many(a, "b", &pairs(&["c", "d"]), &q)
            .unwrap_err();
        assert!(err.to_string().contains("3 keys"), "{err}");
        assert_eq!(store.kv_get(a, "b", "c").unwrap(), None);
        assert_eq!(store.kv_usage(a).unwrap(), KvUsage { keys: 2, bytes: 4 });
        // Keys a batch removed are free for the next one.
        store
            .kv_delete_many(a, "b", &["a".to_owned(), "b".to_owned()], &q)
            .unwrap();
        store
            .kv_set_many(a, "b", &pairs(&["c", "d", "e"]), &q)
            .unwrap();
        assert_eq!(store.kv_usage(a).unwrap(), KvUsage { keys: 3, bytes: 6 });
    }

    #[test]
    fn quotas_are_errors_not_partial_writes() {
        let (_dir, store) = store();
        let a = lambda(&store);
        let q = quotas();
        assert!(matches!(
            store.kv_set(a, "b", "k", b"123456789", &q),
            Err(KvError::Quota(_))
        ));
        assert!(matches!(
            store.kv_set(a, "b", &"k".repeat(17), b"1", &q),
            Err(KvError::Invalid(_))
        ));
        for k in ["a", "b", "c"] {
            store.kv_set(a, "b", k, b"12345678", &q).unwrap();
        }
        let err = store.kv_set(a, "b", "d", b"1", &q).unwrap_err();
        assert!(err.to_string().contains("3 keys"), "{err}");
        // Overwriting an existing key does not count as a new key.
        store.kv_set(a, "b", "a", b"1", &q).unwrap();
        assert_eq!(store.kv_get(a, "b", "d").unwrap(), None);
        let q_bytes = KvQuotas {
            max_total_bytes: 10,
            ..q
        };
        assert!(matches!(
            store.kv_set(a, "b", "c", b"12345678", &q_bytes),
            Err(KvError::Quota(_))
        ));
    }

    #[test]
    fn counters_and_listing() {
        let (_dir, store) = store();
        let a = lambda(&store);
        let q = KvQuotas {
            max_keys: 5000,
            max_total_bytes: 1 << 20,
            ..quotas()
        };
        assert_eq!(store.kv_increment(a, "c", "n", 2, &q).unwrap(), 2);
        assert_eq!(store.kv_increment(a, "c", "n", 3, &q).unwrap(), 5);
        store.kv_set(a, "c", "s", b"text", &q).unwrap();
        assert!(matches!(
            store.kv_increment(a, "c", "s", 1, &q),
            Err(KvError::Invalid(_))
        ));
        store
            .kv_set(a, "c", "max", &u64::MAX.to_le_bytes(), &q)
            .unwrap();
        assert!(store.kv_increment(a, "c", "max", 1, &q).is_err());
        for i in 0..1500 {
            store
                .kv_set(a, "list", &format!("k{i:04}"), b"", &q)
                .unwrap();
        }
        let (first, next) = store.kv_list(a, "list", 0).unwrap();
        assert_eq!((first.len(), next), (LIST_PAGE, Some(LIST_PAGE as u64)));
        let (rest, end) = store.kv_list(a, "list", next.unwrap()).unwrap();
        assert_eq!((rest.len(), end), (500, None));
        assert_eq!(rest[0], "k1000");
        // Another bucket's keys never leak into a listing.
        assert!(store.kv_list(a, "lis", 0).unwrap().0.is_empty());
    }
}
