//! The PostgreSQL backend of `LambdaStore` and `KvStore`, shared by every replica of the
//! service: a connection pool (deadpool over tokio-postgres), versioned migrations
//! applied at start under an advisory lock, records kept in the sled backend's encoding
//! beside the columns that listing filters and orders on, names unique per account by
//! constraint, and key-value writes as transactions that lock the lambda's usage row,
//! so quotas and counters stay exact however many replicas write; the uploaded archives
//! too, so that every replica reads them. Depends on `model` and the store's own codec
//! only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime as PoolRuntime};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Transaction};
use uuid::Uuid;

use super::coordination::{Change, Coordination, LambdaLock, ServingVersion, UnclaimedBuild};
use super::kv::{
    KvError, KvQuotas, KvStore, KvUsage, LIST_PAGE, check_key, check_usage, check_writes,
};
use super::records::{self, BuildRecord, LambdaRecord, LambdaSpec};
use super::{ArchiveStore, LambdaStore, ListQuery, NameTaken, RefKind, StoreError};
use crate::model::{ImageStatus, LambdaId, Runtime, Version};

/// Notices kept for a slow reader before it is told it missed some.
const CHANGES_BACKLOG: usize = 4096;

/// The schema, one step per version, applied in order and recorded in
/// `schema_migrations`; a released step is never edited, only followed by another.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE lambdas (
        lambda_id uuid PRIMARY KEY,
        account_id uuid NOT NULL,
        lambda_name text NOT NULL,
        name_lowercase text NOT NULL,
        create_time_ns bigint NOT NULL,
        lambda_type text NOT NULL,
        namespace text NOT NULL,
        record bytea NOT NULL,
        CONSTRAINT lambdas_name_unique UNIQUE (account_id, lambda_name)
    );
    CREATE INDEX lambdas_list_order ON lambdas (create_time_ns DESC, lambda_id DESC);
    CREATE INDEX lambdas_account_order
        ON lambdas (account_id, create_time_ns DESC, lambda_id DESC);
    CREATE TABLE builds (
        lambda_id uuid PRIMARY KEY,
        record bytea NOT NULL
    );
    -- What each lambda's current spec ('l') and build job ('b') reference: counting
    -- rows gives how many holders keep an archive or a component alive.
    CREATE TABLE spec_refs (
        holder char(1) NOT NULL,
        lambda_id uuid NOT NULL,
        archive text NOT NULL,
        component text,
        PRIMARY KEY (holder, lambda_id)
    );
    CREATE INDEX spec_refs_archive ON spec_refs (archive);
    CREATE INDEX spec_refs_component ON spec_refs (component);
    CREATE TABLE logs (
        lambda_id uuid NOT NULL,
        seq bigserial NOT NULL,
        line text NOT NULL,
        PRIMARY KEY (lambda_id, seq)
    );
    CREATE TABLE artifacts (
        digest text PRIMARY KEY,
        files text[] NOT NULL
    );
    CREATE TABLE built_images (
        build_key text PRIMARY KEY,
        image_id text NOT NULL
    );
    CREATE TABLE kv (
        lambda_id uuid NOT NULL,
        bucket text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (lambda_id, bucket, key)
    );
    CREATE TABLE kv_usage (
        lambda_id uuid PRIMARY KEY,
        keys bigint NOT NULL,
        bytes bigint NOT NULL
    );
    CREATE TABLE health_probes (
        probe uuid PRIMARY KEY,
        stamp text NOT NULL
    );
    "#,
    ),
    (
        2,
        r#"
    -- Uploaded archives, so that every replica reads what any replica received.
    CREATE TABLE archives (
        digest text PRIMARY KEY,
        bytes bytea NOT NULL
    );
    "#,
    ),
    (
        3,
        r#"
    -- Replicas: leases on build jobs, what serves per lambda, artifacts per replica,
    -- and when an archive was last stored (a fresh one is never collected).
    ALTER TABLE builds
        ADD COLUMN unfinished boolean NOT NULL DEFAULT false,
        ADD COLUMN container boolean NOT NULL DEFAULT false,
        ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN lease_owner text,
        ADD COLUMN lease_until timestamptz;
    CREATE INDEX builds_unfinished ON builds (lambda_id) WHERE unfinished;
    ALTER TABLE lambdas ADD COLUMN serving_version bigint;
    ALTER TABLE artifacts ADD COLUMN replica text NOT NULL DEFAULT '';
    ALTER TABLE artifacts DROP CONSTRAINT artifacts_pkey;
    ALTER TABLE artifacts ADD PRIMARY KEY (replica, digest);
    ALTER TABLE archives ADD COLUMN stored_at timestamptz NOT NULL DEFAULT now();
    "#,
    ),
    (
        4,
        r#"
    -- What the replicas of this database are together: the owner they label the
    -- containers they run with, so that any replica finds every one of them.
    CREATE TABLE cluster (
        id uuid PRIMARY KEY,
        created timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO cluster (id) VALUES (gen_random_uuid());
    "#,
    ),
];

/// Serialises migrations between replicas starting at once (`pg_advisory_lock` key).
const MIGRATION_LOCK: i64 = 0x6c75_6e61_6c61_6d62; // "lunalamb"

/// Held by the leader replica on a connection of its own, for as long as it leads.
const LEADER_LOCK: i64 = 0x6c75_6e61_6c65_6164; // "lunalead"

/// The first key of every lambda's lock (`pg_advisory_lock(int, int)`, a key space
/// apart from the single-key locks above); the second is drawn from the lambda id.
const LAMBDA_LOCK_CLASS: i32 = 0x6c75_6e61; // "luna"

/// The channel lambda changes are announced on (`NOTIFY`, at each write's commit).
const CHANGES_CHANNEL: &str = "luna_lambda_changes";

/// How often a lost listening connection is opened again, and leadership tried for.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A pooled connection is waited for this long before the call fails (a database
/// outage then answers errors instead of hanging the management API).
const POOL_WAIT: Duration = Duration::from_secs(5);

/// A lambda's lock is waited for this long: commands hold it for milliseconds.
const LAMBDA_LOCK_WAIT: Duration = Duration::from_secs(30);

/// A queued build no replica claimed yet is left this long to the replica that queued
/// it (it holds the upload in memory) before another may claim it.
const QUEUED_BUILD_GRACE_SECS: f64 = 2.0;

/// An archive stored this recently is never collected: another replica storing the
/// same bytes for an upload may not have written the record referencing it yet.
const ARCHIVE_GRACE: Duration = Duration::from_secs(60);

/// Handle to the database; cheap to clone. Its listening and leading connections end
/// when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Connections holding lambda locks, apart from `pool`: commands holding a lock
    /// while they make their calls can never take every connection those calls need.
    locks: Pool,
    replica: Arc<str>,
    /// The id of the replicas of this database together (the `cluster` row).
    cluster: Arc<str>,
    changes: broadcast::Sender<Change>,
    leader: Arc<watch::Sender<bool>>,
    archive_grace: Duration,
    _background: Arc<Background>,
}

/// The tasks listening for changes and holding leadership; ending them closes their
/// connections.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("replica", &self.replica)
            .field("pool", &self.pool.status())
            .finish()
    }
}

fn uuid(id: LambdaId) -> Uuid {
    Uuid::from_bytes(*id.as_bytes())
}

fn nanos(time: chrono::DateTime<chrono::Utc>) -> i64 {
    time.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Applies the migrations this database has not seen, one transaction each.
async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Pool(e.to_string()))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = apply_migrations(&mut client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    applied?;
    unlocked?;
    Ok(())
}

async fn apply_migrations(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let current: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(version, "applying store migration");
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        if *version == 3 {
            fill_coordination_columns(&tx).await?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Migration 3 adds columns read from the records (which SQL cannot decode): filled
/// here for the rows written before it.
async fn fill_coordination_columns(tx: &Transaction<'_>) -> Result<(), StoreError> {
    for row in tx
        .query("SELECT lambda_id, record FROM builds", &[])
        .await?
    {
        let build: BuildRecord = records::decode(row.get::<_, &[u8]>(1))?;
        tx.execute(
            "UPDATE builds SET unfinished = $2, container = $3 WHERE lambda_id = $1",
            &[
                &row.get::<_, Uuid>(0),
                &!build.status.is_finished(),
                &(build.spec.runtime == Runtime::Container),
            ],
        )
        .await?;
    }
    for row in tx
        .query("SELECT lambda_id, record FROM lambdas", &[])
        .await?
    {
        let record: LambdaRecord = records::decode(row.get::<_, &[u8]>(1))?;
        tx.execute(
            "UPDATE lambdas SET serving_version = $2 WHERE lambda_id = $1",
            &[&row.get::<_, Uuid>(0), &serving_version(&record)],
        )
        .await?;
    }
    Ok(())
}

fn serving_version(record: &LambdaRecord) -> Option<i64> {
    record
        .deployed
        .then_some(i64::from(record.current.version.0))
}

fn config_of(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    // A database host that vanishes without closing its connections is noticed in
    // seconds, not at the kernel's two hours: leadership and notices move on.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .connect_timeout(POOL_WAIT);
    Ok(config)
}

type Connected = (
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
);

async fn connect_once(config: &tokio_postgres::Config) -> Result<Connected, StoreError> {
    tokio::time::timeout(POOL_WAIT, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Pool("connecting timed out".into()))?
        .map_err(StoreError::from)
}

/// Forwards the changes other replicas announce, for the life of the store: when the
/// listening connection is lost, opens another and, listening again, says that notices
/// may have been missed.
async fn listen_for_changes(
    config: tokio_postgres::Config,
    changes: broadcast::Sender<Change>,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    loop {
        if let Err(e) = listen_once(&config, &changes, &mut listening).await {
            tracing::warn!(error = %e, "lost the store database's change notices; listening again");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    changes: &broadcast::Sender<Change>,
    listening: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), StoreError> {
    let (client, mut connection) = connect_once(config).await?;
    let (notices, mut incoming) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message? {
                let _ = notices.send(n);
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    client
        .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
        .await?;
    // Listening from now on: what changed before is read again.
    let _ = changes.send(Change::Missed);
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    while let Some(notice) = incoming.recv().await {
        match notice.payload().parse::<Uuid>() {
            Ok(id) => {
                let _ = changes.send(Change::Lambda(LambdaId::from_bytes(*id.as_bytes())));
            }
            Err(_) => tracing::warn!(payload = notice.payload(), "unreadable change notice"),
        }
    }
    drop(client);
    driver
        .await
        .map_err(|e| StoreError::Interrupted(e.to_string()))??;
    Ok(())
}

/// Tries for leadership every `RETRY_EVERY`, holds it while its connection lives, and
/// says when it is had and lost.
async fn lead(config: tokio_postgres::Config, leader: Arc<watch::Sender<bool>>, replica: Arc<str>) {
    loop {
        if let Ok((client, connection)) = connect_once(&config).await {
            let mut connection = tokio::spawn(connection);
            loop {
                let held = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                    .await
                    .map(|row| row.get::<_, bool>(0));
                match held {
                    Ok(true) => {
                        tracing::info!(replica = %replica, "this replica leads");
                        leader.send_replace(true);
                        let _ = (&mut connection).await;
                        leader.send_replace(false);
                        tracing::warn!(replica = %replica, "this replica lost the lead");
                        break;
                    }
                    Ok(false) => tokio::time::sleep(RETRY_EVERY).await,
                    Err(_) => break,
                }
            }
            connection.abort();
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

fn pool_of(config: tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(PoolRuntime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

/// The second key of a lambda's lock: lambdas that share one only wait for each other.
fn lambda_lock_key(id: LambdaId) -> i32 {
    let bytes = id.as_bytes();
    let mut key = [0u8; 4];
    for (i, b) in bytes.iter().enumerate() {
        key[i % 4] ^= b;
    }
    i32::from_be_bytes(key)
}

/// A lambda lock held on its own connection. Dropped, it unlocks and gives the
/// connection back; a connection that cannot unlock is closed (the database then
/// releases the lock), never pooled with the lock held.
struct HeldLambdaLock {
    client: Option<deadpool_postgres::Object>,
    key: i32,
}

impl Drop for HeldLambdaLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let unlocked = client
                        .execute(
                            "SELECT pg_advisory_unlock($1, $2)",
                            &[&LAMBDA_LOCK_CLASS, &key],
                        )
                        .await;
                    if unlocked.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

fn holder_tag(build: bool) -> &'static str {
    if build { "b" } else { "l" }
}

/// `needle` as a LIKE pattern matching it anywhere, its own wildcards taken literally.
fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn is_name_taken(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some("lambdas_name_unique")
    })
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or `key=value` settings) with a pool of
    /// `pool_size` connections, brings the schema up to date, and starts listening for
    /// the other replicas' changes and trying for leadership. `replica` names this
    /// process in build leases and keys its artifact records (stable per data
    /// directory).
    pub async fn connect(url: &str, pool_size: usize, replica: &str) -> Result<Self, StoreError> {
        let config = config_of(url)?;
        let pool = pool_of(config.clone(), pool_size)?;
        let locks = pool_of(config.clone(), pool_size.div_ceil(2))?;
        migrate(&pool).await?;
        let cluster: Uuid = pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))?
            .query_one("SELECT id FROM cluster ORDER BY created LIMIT 1", &[])
            .await?
            .get(0);
        let replica: Arc<str> = Arc::from(replica);
        let changes = broadcast::channel(CHANGES_BACKLOG).0;
        let leader = Arc::new(watch::channel(false).0);
        let (listening, listens) = tokio::sync::oneshot::channel();
        let background = Background(vec![
            tokio::spawn(listen_for_changes(
                config.clone(),
                changes.clone(),
                listening,
            )),
            tokio::spawn(lead(config, leader.clone(), replica.clone())),
        ]);
        // Returned listening: no change made after `connect` goes unheard (should the
        // database not let it listen in time, the first comparison catches up).
        let _ = tokio::time::timeout(POOL_WAIT, listens).await;
        Ok(Self {
            pool,
            locks,
            replica,
            cluster: Arc::from(cluster.to_string()),
            changes,
            leader,
            archive_grace: ARCHIVE_GRACE,
            _background: Arc::new(background),
        })
    }

    /// The store, collecting archives however fresh (the contract tests).
    #[cfg(test)]
    pub fn without_archive_grace(mut self) -> Self {
        self.archive_grace = Duration::ZERO;
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0))
    }

    /// What the lambda's key-value namespace holds.
    pub async fn kv_usage(&self, lambda: LambdaId) -> Result<KvUsage, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT keys, bytes FROM kv_usage WHERE lambda_id = $1",
                &[&uuid(lambda)],
            )
            .await?;
        Ok(row.map_or_else(KvUsage::default, |row| KvUsage {
            keys: unsigned(row.get(0)),
            bytes: unsigned(row.get(1)),
        }))
    }

    async fn save_refs(
        tx: &Transaction<'_>,
        id: LambdaId,
        build: bool,
        spec: &LambdaSpec,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO spec_refs (holder, lambda_id, archive, component) VALUES ($1, $2, $3, $4)
             ON CONFLICT (holder, lambda_id)
             DO UPDATE SET archive = EXCLUDED.archive, component = EXCLUDED.component",
            &[
                &holder_tag(build),
                &uuid(id),
                &spec.archive_digest,
                &spec.wasm_digest,
            ],
        )
        .await?;
        Ok(())
    }
}

/// Locks (creating when absent) the lambda's usage row and reads it. With `writes_values`
/// the lambda's own record is share-locked too: a write for a lambda being deleted then
/// waits for the delete and is refused, so no key outlives its lambda.
async fn lock_usage(
    tx: &Transaction<'_>,
    lambda: LambdaId,
    writes_values: bool,
) -> Result<KvUsage, KvError> {
    let id = uuid(lambda);
    if writes_values {
        let alive = tx
            .query_opt(
                "SELECT 1 FROM lambdas WHERE lambda_id = $1 FOR SHARE",
                &[&id],
            )
            .await
            .map_err(StoreError::from)?;
        if alive.is_none() {
            return Err(KvError::Invalid("the lambda has been deleted".to_owned()));
        }
    }
    tx.execute(
        "INSERT INTO kv_usage (lambda_id, keys, bytes) VALUES ($1, 0, 0)
         ON CONFLICT (lambda_id) DO NOTHING",
        &[&id],
    )
    .await
    .map_err(StoreError::from)?;
    let row = tx
        .query_one(
            "SELECT keys, bytes FROM kv_usage WHERE lambda_id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(StoreError::from)?;
    Ok(KvUsage {
        keys: unsigned(row.get(0)),
        bytes: unsigned(row.get(1)),
    })
}

/// Replaces (or with `None` removes) one entry, keeping `usage` exact.
async fn apply_write(
    tx: &Transaction<'_>,
    lambda: LambdaId,
    bucket: &str,
    key: &str,
    value: Option<&[u8]>,
    usage: &mut KvUsage,
) -> Result<(), KvError> {
    let id = uuid(lambda);
    let key_len = key.len() as u64;
    let old: Option<i32> = tx
        .query_opt(
            "SELECT octet_length(value) FROM kv WHERE lambda_id = $1 AND bucket = $2 AND key = $3",
            &[&id, &bucket, &key],
        )
        .await
        .map_err(StoreError::from)?
        .map(|row| row.get(0));
    usage.replace(
        key_len,
        old.map(|len| u64::try_from(len).unwrap_or(0)),
        value.map(|v| v.len() as u64),
    );
    match value {
        Some(value) => {
            tx.execute(
                "INSERT INTO kv (lambda_id, bucket, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (lambda_id, bucket, key) DO UPDATE SET value = EXCLUDED.value",
                &[&id, &bucket, &key, &value],
            )
            .await
            .map_err(StoreError::from)?;
        }
        None if old.is_some() => {
            tx.execute(
                "DELETE FROM kv WHERE lambda_id = $1 AND bucket = $2 AND key = $3",
                &[&id, &bucket, &key],
            )
            .await
            .map_err(StoreError::from)?;
        }
        None => {}
    }
    Ok(())
}

async fn save_usage(tx: &Transaction<'_>, lambda: LambdaId, usage: KvUsage) -> Result<(), KvError> {
    tx.execute(
        "UPDATE kv_usage SET keys = $2, bytes = $3 WHERE lambda_id = $1",
        &[&uuid(lambda), &count(usage.keys), &count(usage.bytes)],
    )
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// Announces a change of the lambda to every replica when the transaction commits.
async fn announce(tx: &Transaction<'_>, id: LambdaId) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANGES_CHANNEL, &uuid(id).to_string()],
    )
    .await?;
    Ok(())
}

fn decode_rows<T: serde::de::DeserializeOwned>(
    rows: &[tokio_postgres::Row],
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| records::decode(row.get::<_, &[u8]>(0)))
        .collect()
}

#[async_trait]
impl LambdaStore for PgStore {
    /// Every acknowledged write is a committed transaction: nothing to do.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let probe = Uuid::new_v4();
        let stamp = chrono::Utc::now().to_rfc3339();
        client
            .execute(
                "INSERT INTO health_probes (probe, stamp) VALUES ($1, $2)",
                &[&probe, &stamp],
            )
            .await?;
        let read: Option<String> = client
            .query_opt(
                "DELETE FROM health_probes WHERE probe = $1 RETURNING stamp",
                &[&probe],
            )
            .await?
            .map(|row| row.get(0));
        if read.as_deref() == Some(stamp.as_str()) {
            Ok(())
        } else {
            Err(StoreError::ProbeMismatch)
        }
    }

    /// The name is a column of the row: a rename replaces it, no old key to remove.
    async fn save_lambda(
        &self,
        record: &LambdaRecord,
        _old_name: Option<&str>,
    ) -> Result<Result<(), NameTaken>, StoreError> {
        let value = records::encode(record)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let saved = tx
            .execute(
                "INSERT INTO lambdas (lambda_id, account_id, lambda_name, name_lowercase,
                                      create_time_ns, lambda_type, namespace, record,
                                      serving_version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (lambda_id) DO UPDATE SET
                     lambda_name = EXCLUDED.lambda_name,
                     name_lowercase = EXCLUDED.name_lowercase,
                     lambda_type = EXCLUDED.lambda_type,
                     namespace = EXCLUDED.namespace,
                     record = EXCLUDED.record,
                     serving_version = EXCLUDED.serving_version",
                &[
                    &uuid(record.lambda_id),
                    &Uuid::from_bytes(*record.account_id.as_bytes()),
                    &record.lambda_name,
                    &record.lambda_name.to_lowercase(),
                    &nanos(record.create_time),
                    &record.current.lambda_type.as_str(),
                    &record.current.deploy_parameters.namespace(),
                    &value,
                    &serving_version(record),
                ],
            )
            .await;
        match saved {
            Err(e) if is_name_taken(&e) => return Ok(Err(NameTaken)),
            saved => saved?,
        };
        Self::save_refs(&tx, record.lambda_id, false, &record.current).await?;
        announce(&tx, record.lambda_id).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn lambda(&self, id: LambdaId) -> Result<Option<LambdaRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM lambdas WHERE lambda_id = $1",
                &[&uuid(id)],
            )
            .await?
            .map(|row| records::decode(row.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn lambda_exists(&self, id: LambdaId) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt("SELECT 1 FROM lambdas WHERE lambda_id = $1", &[&uuid(id)])
            .await?
            .is_some())
    }

    async fn lambdas(&self) -> Result<Vec<LambdaRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT record FROM lambdas", &[]).await?;
        decode_rows(&rows)
    }

    async fn list(
        &self,
        query: &ListQuery,
        skip: usize,
        take: usize,
    ) -> Result<Vec<LambdaRecord>, StoreError> {
        let account = query.account.map(|a| Uuid::from_bytes(*a.as_bytes()));
        let before = query.created_before.map(nanos);
        let since = query.created_since.map(nanos);
        let lambda_type = query.lambda_type.map(|t| t.as_str());
        let pattern = query
            .name_contains
            .as_deref()
            .map(|n| contains_pattern(&n.to_lowercase()));
        let (skip, take) = (count(skip as u64), count(take as u64));
        // Each filter given: its clause (`#` stands for its parameter's number) and value.
        let mut filters: Vec<(&str, &(dyn ToSql + Sync))> = Vec::new();
        if let Some(account) = &account {
            filters.push(("account_id = $#", account));
        }
        if let Some(before) = &before {
            filters.push(("create_time_ns < $#", before));
        }
        if let Some(since) = &since {
            filters.push(("create_time_ns >= $#", since));
        }
        if let Some(lambda_type) = &lambda_type {
            filters.push(("lambda_type = $#", lambda_type));
        }
        if let Some(pattern) = &pattern {
            filters.push(("name_lowercase LIKE $#", pattern));
        }
        if let Some(namespaces) = &query.namespaces {
            filters.push(("namespace = ANY($#)", namespaces));
        }
        let mut sql = String::from("SELECT record FROM lambdas WHERE true");
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (clause, value) in filters {
            params.push(value);
            sql.push_str(" AND ");
            sql.push_str(&clause.replace('#', &params.len().to_string()));
        }
        params.push(&skip);
        params.push(&take);
        sql.push_str(&format!(
            " ORDER BY create_time_ns DESC, lambda_id DESC OFFSET ${} LIMIT ${}",
            params.len() - 1,
            params.len()
        ));
        let client = self.client().await?;
        let rows = client.query(&sql, &params).await?;
        decode_rows(&rows)
    }

    async fn delete_lambda(&self, record: &LambdaRecord) -> Result<(), StoreError> {
        let id = uuid(record.lambda_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for sql in [
            "DELETE FROM lambdas WHERE lambda_id = $1",
            "DELETE FROM builds WHERE lambda_id = $1",
            "DELETE FROM spec_refs WHERE lambda_id = $1",
            "DELETE FROM logs WHERE lambda_id = $1",
            "DELETE FROM kv WHERE lambda_id = $1",
            "DELETE FROM kv_usage WHERE lambda_id = $1",
        ] {
            tx.execute(sql, &[&id]).await?;
        }
        announce(&tx, record.lambda_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One transaction removes everything of the create: a refused delete leaves the
    /// record, and the caller's error says so.
    async fn undo_create(&self, record: &LambdaRecord) -> Result<(), StoreError> {
        self.delete_lambda(record).await
    }

    async fn delete_logs(&self, id: LambdaId) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM logs WHERE lambda_id = $1", &[&uuid(id)])
            .await?;
        Ok(())
    }

    async fn append_logs(&self, id: LambdaId, lines: &[String]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        // One statement, one round trip; `WITH ORDINALITY` keeps the batch's order.
        client
            .execute(
                "INSERT INTO logs (lambda_id, line)
                 SELECT $1, line FROM unnest($2::text[]) WITH ORDINALITY AS t(line, n)
                 ORDER BY n",
                &[&uuid(id), &lines],
            )
            .await?;
        Ok(())
    }

    async fn count_logs(&self, id: LambdaId) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM logs WHERE lambda_id = $1",
                &[&uuid(id)],
            )
            .await?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn trim_logs(&self, id: LambdaId, count_: usize) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM logs WHERE lambda_id = $1 AND seq IN (
                     SELECT seq FROM logs WHERE lambda_id = $1 ORDER BY seq LIMIT $2)",
                &[&uuid(id), &count(count_ as u64)],
            )
            .await?;
        Ok(())
    }

    async fn tail_logs(&self, id: LambdaId, tail: Option<u64>) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let limit = tail.map(count);
        let rows = client
            .query(
                "SELECT line FROM (
                     SELECT seq, line FROM logs WHERE lambda_id = $1
                     ORDER BY seq DESC LIMIT $2) newest
                 ORDER BY seq",
                &[&uuid(id), &limit],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn kv_delete_namespace(&self, id: LambdaId) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM kv WHERE lambda_id = $1", &[&uuid(id)])
            .await?;
        tx.execute("DELETE FROM kv_usage WHERE lambda_id = $1", &[&uuid(id)])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_build(&self, build: &BuildRecord) -> Result<(), StoreError> {
        let value = records::encode(build)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A job queued anew is nobody's yet: the lease of the job it replaces goes.
        tx.execute(
            "INSERT INTO builds (lambda_id, record, unfinished, container)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (lambda_id) DO UPDATE SET
                 record = EXCLUDED.record,
                 unfinished = EXCLUDED.unfinished,
                 container = EXCLUDED.container,
                 queued_at = CASE WHEN $5 THEN now() ELSE builds.queued_at END,
                 lease_owner = CASE WHEN $5 THEN NULL ELSE builds.lease_owner END,
                 lease_until = CASE WHEN $5 THEN NULL ELSE builds.lease_until END",
            &[
                &uuid(build.lambda_id),
                &value,
                &!build.status.is_finished(),
                &(build.spec.runtime == Runtime::Container),
                &(build.status == ImageStatus::Pending),
            ],
        )
        .await?;
        Self::save_refs(&tx, build.lambda_id, true, &build.spec).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn build(&self, id: LambdaId) -> Result<Option<BuildRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM builds WHERE lambda_id = $1",
                &[&uuid(id)],
            )
            .await?
            .map(|row| records::decode(row.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn builds(&self) -> Result<Vec<BuildRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT record FROM builds", &[]).await?;
        decode_rows(&rows)
    }

    async fn add_artifacts(&self, digest: &str, files: &[String]) -> Result<(), StoreError> {
        if files.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO artifacts (replica, digest, files)
                 VALUES ($3, $1, ARRAY(SELECT DISTINCT f FROM unnest($2::text[]) f ORDER BY f))
                 ON CONFLICT (replica, digest) DO UPDATE SET files = ARRAY(
                     SELECT DISTINCT f FROM unnest(artifacts.files || EXCLUDED.files) f
                     ORDER BY f)",
                &[&digest, &files, &self.replica.as_ref()],
            )
            .await?;
        Ok(())
    }

    async fn artifacts(&self, digest: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT files FROM artifacts WHERE replica = $1 AND digest = $2",
                &[&self.replica.as_ref(), &digest],
            )
            .await?
            .map(|row| row.get(0))
            .unwrap_or_default())
    }

    async fn artifact_digests(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT digest FROM artifacts WHERE replica = $1",
                &[&self.replica.as_ref()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn remove_artifact_record(&self, digest: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM artifacts WHERE replica = $1 AND digest = $2",
                &[&self.replica.as_ref(), &digest],
            )
            .await?;
        Ok(())
    }

    async fn references(&self, kind: RefKind, digest: &str) -> Result<u64, StoreError> {
        let sql = match kind {
            RefKind::Archive => "SELECT count(*) FROM spec_refs WHERE archive = $1",
            RefKind::Component => "SELECT count(*) FROM spec_refs WHERE component = $1",
        };
        let client = self.client().await?;
        let n: i64 = client.query_one(sql, &[&digest]).await?.get(0);
        Ok(unsigned(n))
    }

    async fn record_built_image(&self, build_key: &str, image_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO built_images (build_key, image_id) VALUES ($1, $2)
                 ON CONFLICT (build_key) DO UPDATE SET image_id = EXCLUDED.image_id",
                &[&build_key, &image_id],
            )
            .await?;
        Ok(())
    }

    async fn built_image(&self, build_key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT image_id FROM built_images WHERE build_key = $1",
                &[&build_key],
            )
            .await?
            .map(|row| row.get(0)))
    }
}

#[async_trait]
impl ArchiveStore for PgStore {
    async fn put_archive(&self, digest: &str, bytes: Bytes) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO archives (digest, bytes) VALUES ($1, $2)
                 ON CONFLICT (digest) DO UPDATE SET stored_at = now()",
                &[&digest, &bytes.as_ref()],
            )
            .await?;
        Ok(())
    }

    async fn archive(&self, digest: &str) -> Result<Bytes, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT bytes FROM archives WHERE digest = $1", &[&digest])
            .await?
            .map(|row| Bytes::from(row.get::<_, Vec<u8>>(0)))
            .ok_or_else(|| StoreError::MissingArchive(digest.to_owned()))
    }

    /// Only when no record references it, checked in the same statement (a replica's
    /// garbage collection races the others' writes), and not while it is fresh.
    async fn remove_archive(&self, digest: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM archives a WHERE digest = $1
                     AND stored_at <= now() - make_interval(secs => $2)
                     AND NOT EXISTS (SELECT 1 FROM spec_refs r WHERE r.archive = a.digest)",
                &[&digest, &self.archive_grace.as_secs_f64()],
            )
            .await?;
        Ok(())
    }

    /// The archives no record references (the others are no candidates).
    async fn archive_digests(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT digest FROM archives a
                 WHERE NOT EXISTS (SELECT 1 FROM spec_refs r WHERE r.archive = a.digest)",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

#[async_trait]
impl Coordination for PgStore {
    fn replica(&self) -> &str {
        &self.replica
    }

    fn owner(&self) -> &str {
        &self.cluster
    }

    fn shared(&self) -> bool {
        true
    }

    async fn lock_lambda(&self, id: LambdaId) -> Result<LambdaLock, StoreError> {
        let client = self
            .locks
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let key = lambda_lock_key(id);
        let locked = tokio::time::timeout(
            LAMBDA_LOCK_WAIT,
            client.execute(
                "SELECT pg_advisory_lock($1, $2)",
                &[&LAMBDA_LOCK_CLASS, &key],
            ),
        )
        .await;
        match locked {
            Ok(Ok(_)) => Ok(LambdaLock::releasing_on_drop(Box::new(HeldLambdaLock {
                client: Some(client),
                key,
            }))),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                // Still waiting on the server: the connection cannot be pooled again.
                drop(deadpool_postgres::Object::take(client));
                Err(StoreError::LockTimeout(id))
            }
        }
    }

    async fn claim_build(&self, id: LambdaId, lease: Duration) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let claimed = client
            .execute(
                "UPDATE builds SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
                 WHERE lambda_id = $1 AND unfinished
                     AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now())",
                &[&uuid(id), &self.replica.as_ref(), &lease.as_secs_f64()],
            )
            .await?;
        Ok(claimed == 1)
    }

    async fn release_build(&self, id: LambdaId) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE builds SET lease_owner = NULL, lease_until = NULL
                 WHERE lambda_id = $1 AND lease_owner = $2",
                &[&uuid(id), &self.replica.as_ref()],
            )
            .await?;
        Ok(())
    }

    async fn unclaimed_builds(&self) -> Result<Vec<UnclaimedBuild>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT lambda_id, container FROM builds
                 WHERE unfinished AND (lease_until < now()
                     OR (lease_owner IS NULL AND queued_at < now() - make_interval(secs => $1)))",
                &[&QUEUED_BUILD_GRACE_SECS],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| UnclaimedBuild {
                lambda_id: LambdaId::from_bytes(*row.get::<_, Uuid>(0).as_bytes()),
                runtime: if row.get(1) {
                    Runtime::Container
                } else {
                    Runtime::Wasm
                },
            })
            .collect())
    }

    async fn serving_versions(&self) -> Result<Vec<ServingVersion>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT lambda_id, serving_version FROM lambdas", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|row| ServingVersion {
                lambda_id: LambdaId::from_bytes(*row.get::<_, Uuid>(0).as_bytes()),
                version: row
                    .get::<_, Option<i64>>(1)
                    .and_then(|v| u32::try_from(v).ok())
                    .map(Version),
            })
            .collect())
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }
}

#[async_trait]
impl KvStore for PgStore {
    async fn get(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT value FROM kv WHERE lambda_id = $1 AND bucket = $2 AND key = $3",
                &[&uuid(lambda), &bucket, &key],
            )
            .await
            .map_err(StoreError::from)?
            .map(|row| row.get(0)))
    }

    async fn write(
        &self,
        lambda: LambdaId,
        bucket: &str,
        writes: &[(&str, Option<&[u8]>)],
        quotas: &KvQuotas,
    ) -> Result<(), KvError> {
        // One transaction that holds the lambda's usage row: concurrent writers of one
        // namespace take turns, and a refused batch leaves no trace.
        check_writes(writes, quotas)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let mut usage = lock_usage(&tx, lambda, writes.iter().any(|(_, v)| v.is_some())).await?;
        for (key, value) in writes {
            apply_write(&tx, lambda, bucket, key, *value, &mut usage).await?;
        }
        check_usage(usage, quotas)?;
        save_usage(&tx, lambda, usage).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    async fn increment(
        &self,
        lambda: LambdaId,
        bucket: &str,
        key: &str,
        delta: u64,
        quotas: &KvQuotas,
    ) -> Result<u64, KvError> {
        check_key(key, quotas)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        // The usage row's lock orders every writer of this namespace, increments too.
        let mut usage = lock_usage(&tx, lambda, true).await?;
        let current: Option<Vec<u8>> = tx
            .query_opt(
                "SELECT value FROM kv WHERE lambda_id = $1 AND bucket = $2 AND key = $3",
                &[&uuid(lambda), &bucket, &key],
            )
            .await
            .map_err(StoreError::from)?
            .map(|row| row.get(0));
        let current = super::kv::read_counter(key, current.as_deref())?;
        let Some(next) = current.checked_add(delta) else {
            return Err(KvError::Invalid(format!(
                "incrementing '{key}' by {delta} overflows u64"
            )));
        };
        apply_write(
            &tx,
            lambda,
            bucket,
            key,
            Some(&next.to_le_bytes()),
            &mut usage,
        )
        .await?;
        check_usage(usage, quotas)?;
        save_usage(&tx, lambda, usage).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(next)
    }

    async fn list(
        &self,
        lambda: LambdaId,
        bucket: &str,
        cursor: u64,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key FROM kv WHERE lambda_id = $1 AND bucket = $2
                 ORDER BY key OFFSET $3 LIMIT $4",
                &[
                    &uuid(lambda),
                    &bucket,
                    &count(cursor),
                    &count(LIST_PAGE as u64 + 1),
                ],
            )
            .await
            .map_err(StoreError::from)?;
        let mut keys: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        let more = keys.len() > LIST_PAGE;
        keys.truncate(LIST_PAGE);
        let next = more.then(|| cursor + keys.len() as u64);
        Ok((keys, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(contains_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        let expected: Vec<i32> = (1..=versions.len() as i32).collect();
        assert_eq!(versions, expected);
    }
}
