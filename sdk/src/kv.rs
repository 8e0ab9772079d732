//! A key-value namespace private to the lambda (`wasi:keyvalue`), persisted by the
//! service and removed with the lambda. Any bucket name opens a bucket in that
//! namespace. The operator's quotas (keys, value size, total bytes) surface as
//! [`KvError::Other`] naming the quota, never as a trap.

use serde::Serialize;
use serde::de::DeserializeOwned;
use wstd::http::StatusCode;

use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::{IntoResponse, Response};

/// A key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The host does not know the bucket.
    NoSuchStore,
    /// The lambda may not use the bucket.
    AccessDenied,
    /// Anything else: a quota, an invalid key, a value that is not a counter.
    Other(String),
    /// A value could not be (de)serialised as JSON.
    Json(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSuchStore => f.write_str("no such key-value bucket"),
            Self::AccessDenied => f.write_str("access to the key-value bucket denied"),
            Self::Other(msg) => f.write_str(msg),
            Self::Json(msg) => write!(f, "stored value is not the expected JSON: {msg}"),
        }
    }
}

impl std::error::Error for KvError {}

impl From<store::Error> for KvError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NoSuchStore => Self::NoSuchStore,
            store::Error::AccessDenied => Self::AccessDenied,
            store::Error::Other(msg) => Self::Other(msg),
        }
    }
}

/// A failed key-value operation answers 500 with `{"error": ...}`.
impl IntoResponse for KvError {
    fn into_response(self) -> Response {
        crate::json::error_response(StatusCode::INTERNAL_SERVER_ERROR, &self.to_string())
    }
}

/// An open bucket.
#[derive(Debug)]
pub struct Bucket {
    inner: store::Bucket,
}

impl Bucket {
    /// Opens the bucket `name` (1..255 bytes) of the lambda's namespace.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), luna_lambda_sdk::kv::KvError> {
    /// let bucket = luna_lambda_sdk::kv::Bucket::open("default")?;
    /// bucket.set("greeting", "hello")?;
    /// assert_eq!(bucket.get("greeting")?.as_deref(), Some(&b"hello"[..]));
    /// # Ok(()) }
    /// ```
    pub fn open(name: &str) -> Result<Self, KvError> {
        Ok(Self {
            inner: store::open(name)?,
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.inner.get(key)?)
    }

    /// The value of `key` as UTF-8 text (invalid bytes replaced).
    pub fn get_string(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self
            .get(key)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The value of `key` decoded from JSON.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
        self.get(key)?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|e| KvError::Json(e.to_string())))
            .transpose()
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), KvError> {
        Ok(self.inner.set(key, value.as_ref())?)
    }

    /// Sets `key` to `value` encoded as JSON.
    pub fn set_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(value).map_err(|e| KvError::Json(e.to_string()))?;
        self.set(key, bytes)
    }

    /// Removes `key` (absent keys are fine).
    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        Ok(self.inner.delete(key)?)
    }

    /// Whether `key` is set.
    pub fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.inner.exists(key)?)
    }

    /// Every key of the bucket (all pages).
    pub fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.inner.list_keys(cursor)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Atomically adds `delta` to the counter at `key` (absent counts as 0) and
    /// returns the new value. Counters are 8-byte little-endian integers; see
    /// [`Bucket::counter`].
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        Ok(atomics::increment(&self.inner, key, delta)?)
    }

    /// The current value of the counter at `key` (0 when absent).
    pub fn counter(&self, key: &str) -> Result<u64, KvError> {
        match self.get(key)? {
            None => Ok(0),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| KvError::Other(format!("the value of '{key}' is not a counter"))),
        }
    }

    /// The values of `keys`, in order, `None` for absent ones.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        Ok(batch::get_many(&self.inner, keys)?
            .into_iter()
            .map(|pair| pair.map(|(_, value)| value))
            .collect())
    }

    /// Sets every pair (not atomic as a whole).
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), KvError> {
        Ok(batch::set_many(&self.inner, pairs)?)
    }

    /// Removes every key (not atomic as a whole).
    pub fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        Ok(batch::delete_many(&self.inner, keys)?)
    }
}
