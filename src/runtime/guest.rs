//! The luna imports of `wit/` on the host side: `luna:lambda/context`,
//! `wasi:config/store` (the lambda's `parameters.config` and credentials),
//! `wasi:keyvalue/{store, atomics, batch}` (the lambda's namespace in the store) and
//! `wasi:logging/logging` (lines in the lambda's logs). Depends on `host`, `env`,
//! `store`, `model`.

use wasmtime::component::{HasSelf, Linker, Resource};

use super::env::GuestEnv;
use super::host::HostState;
use crate::model::{Credentials, LambdaType};
use crate::store::KvError;

mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "luna:lambda/imports",
        with: {
            "wasi:keyvalue/store.bucket": super::KvBucket,
        },
        // The key-value calls wait on the store (a networked one, possibly); the rest
        // answer from memory.
        imports: {
            "wasi:keyvalue/store.[method]bucket.get": async,
            "wasi:keyvalue/store.[method]bucket.set": async,
            "wasi:keyvalue/store.[method]bucket.delete": async,
            "wasi:keyvalue/store.[method]bucket.exists": async,
            "wasi:keyvalue/store.[method]bucket.list-keys": async,
            "wasi:keyvalue/atomics.increment": async,
            "wasi:keyvalue/batch.get-many": async,
            "wasi:keyvalue/batch.set-many": async,
            "wasi:keyvalue/batch.delete-many": async,
        },
    });
}

use generated::luna::lambda::context;
use generated::wasi::config::store as config;
use generated::wasi::keyvalue::{atomics, batch, store as kv};
use generated::wasi::logging::logging;

/// Config keys under this prefix come from the credentials only.
const CREDENTIALS_PREFIX: &str = "luna.credentials.";
/// Config key of the login of `{"login", "password"}` credentials.
pub const CREDENTIALS_LOGIN: &str = "luna.credentials.login";
/// Config key of the password of `{"login", "password"}` credentials.
pub const CREDENTIALS_PASSWORD: &str = "luna.credentials.password";
/// Config key of `{"token"}` credentials.
pub const CREDENTIALS_TOKEN: &str = "luna.credentials.token";

/// Links the luna imports into `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    generated::Imports::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl GuestEnv {
    /// A line in the lambda's log about request `request_id`.
    pub fn log(&self, request_id: &str, line: &str) {
        self.logs
            .line(self.lambda_id, &format!("[{request_id}] {line}"));
    }
}

/// Flattens `parameters.config` into dot-separated keys (array items by index; strings
/// as they are, other values as JSON text) and adds the credentials' keys.
pub fn flatten_config(
    config: Option<&serde_json::Map<String, serde_json::Value>>,
    credentials: Option<&Credentials>,
) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        let join = |key: &str| {
            if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            }
        };
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    walk(&join(k), v, out);
                }
            }
            serde_json::Value::Array(items) if !items.is_empty() => {
                for (i, v) in items.iter().enumerate() {
                    walk(&join(&i.to_string()), v, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    for (key, value) in config.into_iter().flatten() {
        walk(key, value, &mut out);
    }
    // Config may not forge the credentials' keys.
    out.retain(|(key, _)| !key.starts_with(CREDENTIALS_PREFIX));
    match credentials {
        Some(Credentials::Login(c)) => {
            out.push((CREDENTIALS_LOGIN.to_owned(), c.login.clone()));
            out.push((CREDENTIALS_PASSWORD.to_owned(), c.password.clone()));
        }
        Some(Credentials::Token(c)) => out.push((CREDENTIALS_TOKEN.to_owned(), c.token.clone())),
        None => {}
    }
    // `{"a.b": 1, "a": {"b": 2}}` flattens to one key twice: the first one stays.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|later, earlier| later.0 == earlier.0);
    out
}

/// An open `wasi:keyvalue` bucket: a name inside the lambda's namespace.
#[derive(Debug)]
pub struct KvBucket {
    name: String,
}

fn kv_error(e: KvError) -> kv::Error {
    match e {
        failed @ (KvError::Store(_) | KvError::Interrupted(_)) => {
            tracing::warn!(error = %failed, "key-value store failed");
            kv::Error::Other("the key-value store failed; try again".to_owned())
        }
        other => kv::Error::Other(other.to_string()),
    }
}

impl HostState {
    /// The name of the bucket behind `handle`.
    fn bucket(&self, handle: &Resource<KvBucket>) -> Result<&str, kv::Error> {
        self.table
            .get(handle)
            .map(|b| b.name.as_str())
            .map_err(|e| kv::Error::Other(format!("bad bucket handle: {e}")))
    }
}

impl context::Host for HostState {
    fn lambda_id(&mut self) -> String {
        self.env.lambda_id.to_string()
    }

    fn version(&mut self) -> u32 {
        self.env.version.0
    }

    fn account_id(&mut self) -> String {
        self.env.account_id.to_string()
    }

    fn request_id(&mut self) -> String {
        self.request_id.to_string()
    }

    fn lambda_type(&mut self) -> context::Kind {
        match self.env.lambda_type {
            LambdaType::Standalone => context::Kind::Standalone,
            LambdaType::Handlers => context::Kind::Handlers,
            LambdaType::Tasks => context::Kind::Tasks,
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Result<Option<String>, config::Error> {
        let pairs = &self.env.config;
        Ok(pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(&key))
            .ok()
            .map(|i| pairs[i].1.clone()))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config::Error> {
        Ok(self.env.config.clone())
    }
}

impl logging::Host for HostState {
    fn log(&mut self, level: logging::Level, context: String, message: String) {
        let level = match level {
            logging::Level::Trace => "TRACE",
            logging::Level::Debug => "DEBUG",
            logging::Level::Info => "INFO",
            logging::Level::Warn => "WARN",
            logging::Level::Error => "ERROR",
            logging::Level::Critical => "CRITICAL",
        };
        let line = if context.is_empty() {
            format!("{level} {message}")
        } else {
            format!("{level} {context}: {message}")
        };
        self.env.log(&self.request_id, &line);
    }
}

impl kv::Host for HostState {
    fn open(&mut self, identifier: String) -> Result<Resource<KvBucket>, kv::Error> {
        crate::store::check_bucket(&identifier).map_err(kv_error)?;
        self.table
            .push(KvBucket { name: identifier })
            .map_err(|e| kv::Error::Other(format!("cannot open another bucket: {e}")))
    }
}

impl kv::HostBucket for HostState {
    async fn get(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        env.kv
            .get(env.lambda_id, bucket, &key)
            .await
            .map_err(kv_error)
    }

    async fn set(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        env.kv
            .set(env.lambda_id, bucket, &key, &value, &env.kv_quotas)
            .await
            .map_err(kv_error)
    }

    async fn delete(&mut self, bucket: Resource<KvBucket>, key: String) -> Result<(), kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        env.kv
            .delete(env.lambda_id, bucket, &key, &env.kv_quotas)
            .await
            .map_err(kv_error)
    }

    async fn exists(&mut self, bucket: Resource<KvBucket>, key: String) -> Result<bool, kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        let value = env
            .kv
            .get(env.lambda_id, bucket, &key)
            .await
            .map_err(kv_error)?;
        Ok(value.is_some())
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<KvBucket>,
        cursor: Option<u64>,
    ) -> Result<kv::KeyResponse, kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        let (keys, cursor) = env
            .kv
            .list(env.lambda_id, bucket, cursor.unwrap_or(0))
            .await
            .map_err(kv_error)?;
        Ok(kv::KeyResponse { keys, cursor })
    }

    fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    async fn increment(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        env.kv
            .increment(env.lambda_id, bucket, &key, delta, &env.kv_quotas)
            .await
            .map_err(kv_error)
    }
}

impl batch::Host for HostState {
    async fn get_many(
        &mut self,
        bucket: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = env
                .kv
                .get(env.lambda_id, bucket, &key)
                .await
                .map_err(kv_error)?;
            values.push(value.map(|value| (key, value)));
        }
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<KvBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        env.kv
            .set_many(env.lambda_id, bucket, &key_values, &env.kv_quotas)
            .await
            .map_err(kv_error)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Result<(), kv::Error> {
        let bucket = self.bucket(&bucket)?;
        let env = &self.env;
        env.kv
            .delete_many(env.lambda_id, bucket, &keys, &env.kv_quotas)
            .await
            .map_err(kv_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoginCredentials, TokenCredentials};

    #[test]
    fn config_is_flattened_with_credentials() {
        let config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"greeting": {"text": "hi", "times": 2, "tags": ["a", {"b": null}]},
                "on": true, "empty": {}, "luna.credentials.token": "forged"}"#,
        )
        .unwrap();
        let login = Credentials::Login(LoginCredentials {
            login: "user".into(),
            password: "pw".into(),
        });
        let pairs = flatten_config(Some(&config), Some(&login));
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("greeting.text"), Some("hi"));
        assert_eq!(get("greeting.times"), Some("2"));
        assert_eq!(get("greeting.tags.0"), Some("a"));
        assert_eq!(get("greeting.tags.1.b"), Some("null"));
        assert_eq!(get("on"), Some("true"));
        assert_eq!(get("empty"), Some("{}"));
        assert_eq!(get(CREDENTIALS_LOGIN), Some("user"));
        assert_eq!(get(CREDENTIALS_PASSWORD), Some("pw"));
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique");

        let token = Credentials::Token(TokenCredentials {
            token: "real".into(),
        });
        let pairs = flatten_config(Some(&config), Some(&token));
        let tokens: Vec<_> = pairs
            .iter()
            .filter(|(k, _)| k == CREDENTIALS_TOKEN)
            .collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].1, "real", "credentials win over a config key");
        assert!(flatten_config(None, None).is_empty());
    }
}
