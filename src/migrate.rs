//! `luna-lambda migrate-store`: the upgrade from the embedded store to PostgreSQL. Copies
//! a stopped service's sled data directory (lambdas, build jobs, logs, key-value data,
//! image records, archives) into the empty database that `store.postgres_url` names,
//! credentials sealed again with the configured `encryption_key`. Compiled artifacts are
//! not copied: each replica compiles into its own cache. Depends on `store`, `secrets`,
//! `config`, `model`.

use std::path::{Path, PathBuf};

use crate::config::{Config, StoreBackend};
use crate::secrets::{Sealer, SecretsError};
use crate::store::{
    ArchiveFiles, ArchiveStore, Coordination, KvError, KvQuotas, KvStore, LambdaSpec, LambdaStore,
    PgStore, Store, StoreError,
};

/// Log lines and key-value entries written per call.
const CHUNK: usize = 500;

/// The migration could not be made; nothing is removed from the source.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The configuration names no PostgreSQL target.
    #[error(
        "set store.backend = \"postgres\", store.postgres_url and encryption_key for the database to migrate into"
    )]
    NoTarget,
    /// The source directory has no sled store.
    #[error("{0} holds no sled store (no store/ directory)")]
    NoSource(PathBuf),
    /// The source store cannot be opened (a service still runs on it, or it is damaged).
    #[error("cannot open the sled store in {path} (stop the service using it first): {source}")]
    Source {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The target already holds lambdas: a migration never merges.
    #[error("the target database already holds {0} lambda(s); migrate into an empty database")]
    TargetNotEmpty(usize),
    /// A credential could not be unsealed with the source's key or sealed again.
    #[error("credentials of lambda {lambda}: {source}")]
    Credentials {
        /// The lambda.
        lambda: String,
        /// Why.
        source: SecretsError,
    },
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key-value write into the target failed.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// What was copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Lambda records.
    pub lambdas: usize,
    /// Build jobs.
    pub builds: usize,
    /// Lambda log lines.
    pub log_lines: usize,
    /// Key-value entries.
    pub keys: usize,
    /// Stored archives.
    pub archives: usize,
    /// Records of container images this service built.
    pub images: usize,
}

/// Copies the sled store under `from` (a data directory) into the configured database,
/// reporting each step to `progress`.
pub async fn migrate_store(
    config: &Config,
    from: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Migrated, MigrateError> {
    if config.store.backend != StoreBackend::Postgres || config.encryption_key.is_empty() {
        return Err(MigrateError::NoTarget);
    }
    if !from.join("store").is_dir() {
        return Err(MigrateError::NoSource(from.to_owned()));
    }
    let source = Store::open(&from.join("store")).map_err(|source| MigrateError::Source {
        path: from.to_owned(),
        source,
    })?;
    let files = ArchiveFiles::open(&from.join("archives"))?;
    let credentials_error =
        |lambda: String| move |source| MigrateError::Credentials { lambda, source };
    let resealed = Sealer::open(&config.encryption_key, from)
        .map_err(credentials_error("(target key)".into()))?;
    // The source sealed with the key it generated, or with the configured one.
    let sealed =
        match Sealer::open_generated(from).map_err(credentials_error("(source key)".into()))? {
            Some(generated) => generated,
            None => Sealer::open(&config.encryption_key, from)
                .map_err(credentials_error("(source key)".into()))?,
        };
    let target = PgStore::connect(
        &config.store.postgres_url,
        config.store.postgres_pool_size.min(4),
        "migration",
    )
    .await?;
    let present = target.serving_versions().await?.len();
    if present > 0 {
        return Err(MigrateError::TargetNotEmpty(present));
    }
    let reseal = |spec: &mut LambdaSpec, lambda: &str| -> Result<(), MigrateError> {
        let credentials = sealed
            .unseal(&spec.credentials_sealed)
            .map_err(credentials_error(lambda.to_owned()))?;
        spec.credentials_sealed = resealed
            .seal(&credentials)
            .map_err(credentials_error(lambda.to_owned()))?;
        Ok(())
    };
    let mut done = Migrated::default();

    for digest in files.archive_digests().await? {
        target
            .put_archive(&digest, files.archive(&digest).await?)
            .await?;
        done.archives += 1;
    }
    progress(&format!("archives: {} copied", done.archives));

    let unbounded = KvQuotas {
        max_keys: u64::MAX,
        max_key_bytes: usize::MAX,
        max_value_bytes: u64::MAX,
        max_total_bytes: u64::MAX,
    };
    for mut record in source.lambdas().await? {
        let id = record.lambda_id;
        let name = id.to_string();
        reseal(&mut record.current, &name)?;
        // A name is unique in the source already: the empty target takes every one.
        if target.save_lambda(&record, None).await?.is_err() {
            return Err(MigrateError::TargetNotEmpty(1));
        }
        done.lambdas += 1;
        if let Some(mut build) = source.build(id).await? {
            reseal(&mut build.spec, &name)?;
            target.save_build(&build).await?;
            done.builds += 1;
        }
        let lines = source.tail_logs(id, None).await?;
        for chunk in lines.chunks(CHUNK) {
            target.append_logs(id, chunk).await?;
        }
        done.log_lines += lines.len();
        let entries = source.kv_entries(id)?;
        let mut rest = entries.as_slice();
        while let Some((bucket, _, _)) = rest.first() {
            let in_bucket = rest.iter().take_while(|(b, _, _)| b == bucket).count();
            for chunk in rest[..in_bucket].chunks(CHUNK) {
                let writes: Vec<(&str, Option<&[u8]>)> = chunk
                    .iter()
                    .map(|(_, key, value)| (key.as_str(), Some(value.as_slice())))
                    .collect();
                target.write(id, bucket, &writes, &unbounded).await?;
            }
            rest = &rest[in_bucket..];
        }
        done.keys += entries.len();
        if done.lambdas % 100 == 0 {
            progress(&format!("lambdas: {} copied", done.lambdas));
        }
    }
    progress(&format!(
        "lambdas: {} copied, with {} build jobs, {} log lines and {} key-value entries",
        done.lambdas, done.builds, done.log_lines, done.keys
    ));

    for (build_key, image_id) in source.built_images()? {
        target.record_built_image(&build_key, &image_id).await?;
        done.images += 1;
    }
    progress(&format!("container image records: {} copied", done.images));
    Ok(done)
}
