//! The store's contract as one test suite that every backend runs: sled on a temporary
//! directory, PostgreSQL on a throwaway server the test starts (initdb into a temporary
//! directory, as the `postgres` user when run as root, on a free loopback port).

use std::sync::Arc;

use super::tests::record;
use super::*;

// Shared with the integration tests, which start the service on such a server.
#[path = "../../tests/support/throwaway_postgres.rs"]
mod throwaway_postgres;
use crate::model::{AccountId, ImageStatus, LambdaType, Runtime};
use throwaway_postgres::ThrowawayPostgres;

fn quotas() -> KvQuotas {
    KvQuotas {
        max_keys: 3,
        max_key_bytes: 16,
        max_value_bytes: 64,
        max_total_bytes: 100,
    }
}

fn build_of(lambda: &LambdaRecord, archive: &str) -> BuildRecord {
    BuildRecord {
        lambda_id: lambda.lambda_id,
        kind: BuildKind::Recreate,
        spec: LambdaSpec {
            archive_digest: archive.into(),
            ..lambda.current.clone()
        },
        status: ImageStatus::Pending,
        created: chrono::Utc::now(),
        finished: None,
        logs: vec!["queued".into()],
    }
}

/// Records: names unique per account, renames, listing order, filters and paging,
/// builds, references, artifacts, built images, deletion of everything of a lambda.
async fn records_contract(store: &dyn LambdaStore, kv: &dyn KvStore) {
    let (a, b) = (AccountId::generate(), AccountId::generate());
    let mut lambdas = Vec::new();
    for (i, (account, name)) in [(a, "Alpha"), (a, "beta_1"), (b, "Alpha"), (a, "gamma%")]
        .into_iter()
        .enumerate()
    {
        let mut r = record(account, name);
        r.create_time = chrono::DateTime::from_timestamp(1_700_000_000 + i as i64, 7).unwrap();
        r.current.archive_digest = "shared".into();
        assert_eq!(store.save_lambda(&r, None).await.unwrap(), Ok(()), "{name}");
        lambdas.push(r);
    }
    assert_eq!(
        store.save_lambda(&record(a, "Alpha"), None).await.unwrap(),
        Err(NameTaken),
        "a name is unique per account"
    );
    assert!(store.lambda_exists(lambdas[0].lambda_id).await.unwrap());
    let read = store.lambda(lambdas[1].lambda_id).await.unwrap().unwrap();
    assert_eq!(read.lambda_name, "beta_1");
    assert_eq!(
        read.create_time, lambdas[1].create_time,
        "exact to the nanosecond"
    );

    let ids = |records: Vec<LambdaRecord>| records.iter().map(|r| r.lambda_id).collect::<Vec<_>>();
    let all = ListQuery::default();
    assert_eq!(
        ids(store.list(&all, 0, 10).await.unwrap()),
        [3, 2, 1, 0].map(|i| lambdas[i].lambda_id),
        "newest first"
    );
    assert_eq!(
        ids(store.list(&all, 1, 2).await.unwrap()),
        [2, 1].map(|i| lambdas[i].lambda_id)
    );
    let of_a = ListQuery {
        account: Some(a),
        ..ListQuery::default()
    };
    assert_eq!(store.list(&of_a, 0, 10).await.unwrap().len(), 3);
    // The name filter is a case-insensitive substring; its wildcards are characters.
    let named = |needle: &str| ListQuery {
        name_contains: Some(needle.into()),
        ..ListQuery::default()
    };
    assert_eq!(store.list(&named("ALPHA"), 0, 10).await.unwrap().len(), 2);
    assert_eq!(
        ids(store.list(&named("a%"), 0, 10).await.unwrap()),
        [lambdas[3].lambda_id]
    );
    assert_eq!(
        ids(store.list(&named("_"), 0, 10).await.unwrap()),
        [lambdas[1].lambda_id]
    );
    let window = ListQuery {
        created_since: Some(lambdas[1].create_time),
        created_before: Some(lambdas[3].create_time),
        ..ListQuery::default()
    };
    assert_eq!(
        ids(store.list(&window, 0, 10).await.unwrap()),
        [2, 1].map(|i| lambdas[i].lambda_id)
    );
    let namespaced = ListQuery {
        namespaces: Some(vec!["nowhere".into()]),
        ..ListQuery::default()
    };
    assert!(store.list(&namespaced, 0, 10).await.unwrap().is_empty());

    // A rename and a type change show in the listing; the old name is free again.
    let mut renamed = lambdas[0].clone();
    renamed.lambda_name = "Renamed".into();
    renamed.current.lambda_type = LambdaType::Tasks;
    assert_eq!(
        store.save_lambda(&renamed, Some("Alpha")).await.unwrap(),
        Ok(())
    );
    let tasks = ListQuery {
        lambda_type: Some(LambdaType::Tasks),
        ..ListQuery::default()
    };
    assert_eq!(
        ids(store.list(&tasks, 0, 10).await.unwrap()),
        [renamed.lambda_id]
    );
    let again = record(a, "Alpha");
    assert_eq!(store.save_lambda(&again, None).await.unwrap(), Ok(()));

    // References: each lambda's spec and build job holds its digests.
    assert_eq!(
        store.references(RefKind::Archive, "shared").await.unwrap(),
        4
    );
    let mut build = build_of(&renamed, "new");
    store.save_build(&build).await.unwrap();
    build.spec.wasm_digest = Some("wasm".into());
    build.status = ImageStatus::Completed;
    store.save_build(&build).await.unwrap();
    assert_eq!(store.references(RefKind::Archive, "new").await.unwrap(), 1);
    assert_eq!(
        store.references(RefKind::Component, "wasm").await.unwrap(),
        1
    );
    assert_eq!(
        store
            .build(renamed.lambda_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        ImageStatus::Completed
    );
    assert_eq!(store.builds().await.unwrap().len(), 1);
    renamed.current = build.spec.clone();
    store.save_lambda(&renamed, None).await.unwrap().unwrap();
    assert_eq!(
        store.references(RefKind::Archive, "shared").await.unwrap(),
        3
    );
    assert_eq!(
        store.references(RefKind::Component, "wasm").await.unwrap(),
        2
    );

    // Artifacts and built images.
    store
        .add_artifacts("wasm", &["b.bin".into(), "a.bin".into()])
        .await
        .unwrap();
    store
        .add_artifacts("wasm", &["a.bin".into(), "c.bin".into()])
        .await
        .unwrap();
    assert_eq!(
        store.artifacts("wasm").await.unwrap(),
        ["a.bin", "b.bin", "c.bin"]
    );
    assert_eq!(store.artifact_digests().await.unwrap(), ["wasm"]);
    store.remove_artifact_record("wasm").await.unwrap();
    assert!(store.artifacts("wasm").await.unwrap().is_empty());
    assert_eq!(store.built_image("key").await.unwrap(), None);
    store.record_built_image("key", "sha256:1").await.unwrap();
    store.record_built_image("key", "sha256:2").await.unwrap();
    assert_eq!(
        store.built_image("key").await.unwrap().as_deref(),
        Some("sha256:2")
    );

    // Deleting a lambda takes its build, references, logs and key-value data with it.
    store
        .append_logs(renamed.lambda_id, &["one".into()])
        .await
        .unwrap();
    kv.set(renamed.lambda_id, "b", "k", b"v", &quotas())
        .await
        .unwrap();
    store.delete_lambda(&renamed).await.unwrap();
    assert!(store.lambda(renamed.lambda_id).await.unwrap().is_none());
    assert!(store.build(renamed.lambda_id).await.unwrap().is_none());
    assert_eq!(
        store.references(RefKind::Component, "wasm").await.unwrap(),
        0
    );
    assert_eq!(store.count_logs(renamed.lambda_id).await.unwrap(), 0);
    assert_eq!(kv.get(renamed.lambda_id, "b", "k").await.unwrap(), None);
    assert!(
        matches!(
            kv.set(renamed.lambda_id, "b", "k", b"v", &quotas()).await,
            Err(KvError::Invalid(_))
        ),
        "no key outlives its lambda"
    );
    assert_eq!(store.lambdas().await.unwrap().len(), 4);
    store.probe().await.unwrap();
    store.flush().await.unwrap();
}

/// Logs: appended in order, counted, trimmed from the oldest, tailed.
async fn logs_contract(store: &dyn LambdaStore) {
    let id = record(AccountId::generate(), "logs").lambda_id;
    let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
    store.append_logs(id, &lines[..4]).await.unwrap();
    store.append_logs(id, &lines[4..]).await.unwrap();
    assert_eq!(store.count_logs(id).await.unwrap(), 10);
    assert_eq!(store.tail_logs(id, Some(3)).await.unwrap(), lines[7..]);
    store.trim_logs(id, 6).await.unwrap();
    assert_eq!(store.tail_logs(id, None).await.unwrap(), lines[6..]);
    store.delete_logs(id).await.unwrap();
    assert!(store.tail_logs(id, None).await.unwrap().is_empty());
}

/// Key-value data: batches all or nothing, quotas exact, counters, paging.
async fn kv_contract(store: &dyn LambdaStore, kv: &dyn KvStore) {
    let lambda = record(AccountId::generate(), "kv");
    store.save_lambda(&lambda, None).await.unwrap().unwrap();
    let id = lambda.lambda_id;
    let q = quotas();
    kv.set(id, "b", "k1", b"one", &q).await.unwrap();
    assert_eq!(
        kv.get(id, "b", "k1").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(
        kv.get(id, "other", "k1").await.unwrap(),
        None,
        "buckets are apart"
    );
    let pairs = vec![
        ("k2".to_owned(), b"two".to_vec()),
        ("k3".to_owned(), b"three".to_vec()),
    ];
    kv.set_many(id, "b", &pairs, &q).await.unwrap();
    // A fourth key breaks the key quota: the whole batch is refused.
    let too_many = vec![
        ("k1".to_owned(), b"new".to_vec()),
        ("k4".to_owned(), b"x".to_vec()),
    ];
    assert!(matches!(
        kv.set_many(id, "b", &too_many, &q).await,
        Err(KvError::Quota(_))
    ));
    assert_eq!(
        kv.get(id, "b", "k1").await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert!(matches!(
        kv.set(id, "b", "big", &[0; 65], &q).await,
        Err(KvError::Quota(_))
    ));
    assert!(matches!(
        kv.set(id, "b", "", b"v", &q).await,
        Err(KvError::Invalid(_))
    ));
    kv.delete_many(id, "b", &["k2".into(), "k3".into(), "absent".into()], &q)
        .await
        .unwrap();
    kv.delete(id, "b", "k1", &q).await.unwrap();
    kv.delete(id, "b", "k1", &q).await.unwrap();
    // Counters: 8-byte little-endian, absent is 0, another value is not a counter.
    assert_eq!(kv.increment(id, "c", "n", 5, &q).await.unwrap(), 5);
    assert_eq!(kv.increment(id, "c", "n", 2, &q).await.unwrap(), 7);
    assert_eq!(
        kv.get(id, "c", "n").await.unwrap().as_deref(),
        Some(&7u64.to_le_bytes()[..])
    );
    kv.set(id, "c", "text", b"abc", &q).await.unwrap();
    assert!(matches!(
        kv.increment(id, "c", "text", 1, &q).await,
        Err(KvError::Invalid(_))
    ));
    assert!(matches!(
        kv.increment(id, "c", "n", u64::MAX, &q).await,
        Err(KvError::Invalid(_))
    ));
    kv_delete_all(kv, id, &q).await;

    // Paging in byte order of the keys.
    let wide = KvQuotas {
        max_keys: 5000,
        max_total_bytes: 1 << 20,
        ..q
    };
    let keys: Vec<String> = (0..LIST_PAGE + 5).map(|i| format!("key{i:05}")).collect();
    let pairs: Vec<_> = keys.iter().map(|k| (k.clone(), vec![1])).collect();
    kv.set_many(id, "page", &pairs, &wide).await.unwrap();
    let (first, next) = kv.list(id, "page", 0).await.unwrap();
    assert_eq!(first, keys[..LIST_PAGE]);
    let (rest, end) = kv.list(id, "page", next.unwrap()).await.unwrap();
    assert_eq!(rest, keys[LIST_PAGE..]);
    assert_eq!(end, None);
}

async fn kv_delete_all(kv: &dyn KvStore, id: LambdaId, q: &KvQuotas) {
    for bucket in ["b", "c"] {
        let (keys, _) = kv.list(id, bucket, 0).await.unwrap();
        kv.delete_many(id, bucket, &keys, q).await.unwrap();
    }
}

/// Concurrent increments of one counter end at the exact sum.
async fn concurrent_increments_contract(store: &dyn LambdaStore, kv: Arc<dyn KvStore>) {
    let lambda = record(AccountId::generate(), "counter");
    store.save_lambda(&lambda, None).await.unwrap().unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    kv.increment(lambda.lambda_id, "c", "n", 1, &quotas())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        kv.get(lambda.lambda_id, "c", "n").await.unwrap().as_deref(),
        Some(&200u64.to_le_bytes()[..])
    );
}

/// Archives: kept by digest, a second put changes nothing, removal is idempotent.
async fn archives_contract(archives: &dyn ArchiveStore) {
    let one = bytes::Bytes::from_static(b"one");
    archives.put_archive("d1", one.clone()).await.unwrap();
    archives
        .put_archive("d1", bytes::Bytes::from_static(b"other"))
        .await
        .unwrap();
    assert_eq!(archives.archive("d1").await.unwrap(), one);
    assert_eq!(archives.archive_digests().await.unwrap(), ["d1"]);
    archives.remove_archive("d1").await.unwrap();
    archives.remove_archive("d1").await.unwrap();
    assert!(matches!(
        archives.archive("d1").await,
        Err(StoreError::MissingArchive(d)) if d == "d1"
    ));
    assert!(archives.archive_digests().await.unwrap().is_empty());
}

async fn whole_contract(store: Arc<dyn LambdaStore>, kv: Arc<dyn KvStore>) {
    records_contract(store.as_ref(), kv.as_ref()).await;
    logs_contract(store.as_ref()).await;
    kv_contract(store.as_ref(), kv.as_ref()).await;
    concurrent_increments_contract(store.as_ref(), kv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sled_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    whole_contract(store.clone(), store).await;
    archives_contract(&ArchiveFiles::open(&dir.path().join("archives")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_backend_keeps_the_contract() {
    let server = ThrowawayPostgres::start();
    let store = Arc::new(
        PgStore::connect(&server.url(), 8, "a")
            .await
            .unwrap()
            .without_archive_grace(),
    );
    whole_contract(store.clone(), store.clone()).await;
    archives_contract(store.as_ref()).await;
    // An outage is an error, not a hang, and the pool reconnects once the server is back.
    let id = record(AccountId::generate(), "outage").lambda_id;
    server.stop();
    assert!(store.lambda(id).await.is_err());
    server.start_again();
    assert!(store.lambda(id).await.unwrap().is_none());
}

/// Waits (up to 20 s) until `check` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn pending_build(lambda: &LambdaRecord) -> BuildRecord {
    BuildRecord {
        lambda_id: lambda.lambda_id,
        kind: BuildKind::Create,
        spec: lambda.current.clone(),
        status: ImageStatus::Pending,
        created: chrono::Utc::now(),
        finished: None,
        logs: vec![],
    }
}

/// Two replicas on one database: each hears the other's writes, one leads at a time, a
/// lambda's lock is one for both, a build job is one replica's until its lease runs out,
/// and compiled-artifact records are each replica's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_coordinate() {
    use std::time::Duration;
    let server = ThrowawayPostgres::start();
    let a = PgStore::connect(&server.url(), 4, "a").await.unwrap();
    let b = PgStore::connect(&server.url(), 4, "b").await.unwrap();
    assert_eq!((a.replica(), b.replica(), a.shared()), ("a", "b", true));
    assert_eq!(
        a.owner(),
        b.owner(),
        "one owner of the replicas' containers"
    );

    // A write through one is announced to the other.
    let mut heard = b.changes();
    let mut lambda = record(AccountId::generate(), "shared");
    a.save_lambda(&lambda, None).await.unwrap().unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match heard.recv().await.unwrap() {
                Change::Lambda(id) => break id,
                Change::Missed => continue,
            }
        }
    })
    .await
    .expect("the other replica hears of the write");
    assert_eq!(notice, lambda.lambda_id);
    lambda.deployed = true;
    a.save_lambda(&lambda, Some("shared"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.serving_versions().await.unwrap(),
        [ServingVersion {
            lambda_id: lambda.lambda_id,
            version: Some(lambda.current.version)
        }]
    );

    // Exactly one leads; when it goes, the other takes over.
    let (lead_a, lead_b) = (a.leadership(), b.leadership());
    until("one replica leads", async || {
        *lead_a.borrow() || *lead_b.borrow()
    })
    .await;
    assert!(!(*lead_a.borrow() && *lead_b.borrow()), "both lead");
    let (leader, follower) = if *lead_a.borrow() { (a, b) } else { (b, a) };
    let follows = follower.leadership();
    drop(leader);
    until("the other replica leads", async || *follows.borrow()).await;
    let a = PgStore::connect(&server.url(), 4, "a").await.unwrap();
    let b = follower;

    // A lambda's lock: the second taker waits for the first to let go.
    let held = a.lock_lambda(lambda.lambda_id).await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        let id = lambda.lambda_id;
        async move { b.lock_lambda(id).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the lock is taken twice");
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the lock is released on drop")
        .unwrap()
        .unwrap();

    // A build job: one replica's while it renews; the other's once the lease runs out.
    a.save_build(&pending_build(&lambda)).await.unwrap();
    let id = lambda.lambda_id;
    let short = Duration::from_millis(300);
    assert!(a.claim_build(id, short).await.unwrap());
    assert!(!b.claim_build(id, short).await.unwrap());
    assert!(a.claim_build(id, short).await.unwrap(), "renewed");
    assert!(b.unclaimed_builds().await.unwrap().is_empty());
    until("the lease runs out", async || {
        b.unclaimed_builds().await.unwrap()
            == [UnclaimedBuild {
                lambda_id: id,
                runtime: Runtime::Wasm,
            }]
    })
    .await;
    assert!(b.claim_build(id, Duration::from_secs(30)).await.unwrap());
    assert!(!a.claim_build(id, short).await.unwrap(), "taken over");
    b.release_build(id).await.unwrap();
    assert!(a.claim_build(id, short).await.unwrap(), "released");
    let mut done = pending_build(&lambda);
    done.status = ImageStatus::Completed;
    a.save_build(&done).await.unwrap();
    assert!(
        !b.claim_build(id, short).await.unwrap(),
        "a finished job has no lease"
    );
    // Queued anew, the job is nobody's.
    a.save_build(&pending_build(&lambda)).await.unwrap();
    assert!(b.claim_build(id, short).await.unwrap());

    // Compiled artifacts are files of each replica's own cache.
    a.add_artifacts("c1", &["f1".into()]).await.unwrap();
    assert!(b.artifacts("c1").await.unwrap().is_empty());
    assert_eq!(a.artifact_digests().await.unwrap(), ["c1"]);

    // A fresh archive no record references is kept a while: another replica may be
    // about to reference it.
    a.put_archive("fresh", bytes::Bytes::from_static(b"zip"))
        .await
        .unwrap();
    b.remove_archive("fresh").await.unwrap();
    assert!(a.archive("fresh").await.is_ok());

    // Notices lost with the connection are announced as missed once it is back.
    let mut heard = b.changes();
    server.stop();
    server.start_again();
    tokio::time::timeout(Duration::from_secs(20), async {
        while heard.recv().await.unwrap() != Change::Missed {}
    })
    .await
    .expect("the listener says it may have missed notices");
    // A replica reconnecting after a restart finds the schema current.
    assert_eq!(
        PgStore::connect(&server.url(), 2, "c")
            .await
            .unwrap()
            .schema_version()
            .await
            .unwrap(),
        4
    );
}
