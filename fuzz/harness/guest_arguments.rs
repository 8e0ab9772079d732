//! What a guest hands the host functions: `wasi:keyvalue` buckets, keys and values
//! (checked against a model map: quotas hold, batches are all or nothing, usage stays
//! exact), `wasi:config` keys flattened from `parameters.config`, and outbound URLs
//! matched against `allowed_outbound_hosts`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use luna_lambda::config::Sandbox;
use luna_lambda::model::{
    AccountId, HostPattern, LambdaId, LambdaStatus, LambdaType, Runtime, Version,
};
use luna_lambda::runtime::{OutboundLimits, OutboundPolicy, flatten_config};
use luna_lambda::store::{
    KvQuotas, KvUsage, LambdaRecord, LambdaSpec, LambdaStore, SpecDeployParameters, SpecParameters,
    Store, check_bucket,
};

const QUOTAS: KvQuotas = KvQuotas {
    max_keys: 8,
    max_key_bytes: 16,
    max_value_bytes: 32,
    max_total_bytes: 160,
};
const BUCKETS: [&str; 3] = ["default", "b", ""];

#[derive(Arbitrary, Debug)]
enum Op {
    Set {
        bucket: u8,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        bucket: u8,
        key: String,
    },
    SetMany {
        bucket: u8,
        pairs: Vec<(String, Vec<u8>)>,
    },
    DeleteMany {
        bucket: u8,
        keys: Vec<String>,
    },
    Increment {
        bucket: u8,
        key: String,
        delta: u64,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    config: Vec<u8>,
    patterns: Vec<String>,
    urls: Vec<String>,
    ops: Vec<Op>,
}

type Model = BTreeMap<(String, String), Vec<u8>>;

fn store() -> &'static Store {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let store = Store::open(dir.path()).expect("a store");
            (dir, store)
        })
        .1
}

/// Runs one of the store's async record calls to its end (the key-value calls under
/// test are synchronous, as the guest makes them).
fn blocking<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(call)
}

fn record() -> LambdaRecord {
    let now = chrono::Utc::now();
    LambdaRecord {
        lambda_id: LambdaId::generate(),
        account_id: AccountId::generate(),
        lambda_name: "fuzz".into(),
        description: String::new(),
        create_time: now,
        last_update_time: now,
        status: LambdaStatus::Running,
        deployed: true,
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

fn usage(model: &Model) -> KvUsage {
    KvUsage {
        keys: model.len() as u64,
        bytes: model
            .iter()
            .map(|((_, k), v)| (k.len() + v.len()) as u64)
            .sum(),
    }
}

fn within_quotas(model: &Model) -> bool {
    let u = usage(model);
    u.keys <= QUOTAS.max_keys && u.bytes <= QUOTAS.max_total_bytes
}

fn key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= QUOTAS.max_key_bytes
}

/// The expected namespace after a batch of writes, or None when it must be refused:
/// every set's key and value are checked first, then each write in order must keep the
/// namespace within its quotas.
fn apply(model: &Model, bucket: &str, writes: &[(&str, Option<&[u8]>)]) -> Option<Model> {
    for (key, value) in writes {
        if let Some(value) = value
            && (!key_ok(key) || value.len() as u64 > QUOTAS.max_value_bytes)
        {
            return None;
        }
    }
    let mut next = model.clone();
    for (key, value) in writes {
        let slot = (bucket.to_owned(), (*key).to_owned());
        match value {
            Some(value) => {
                next.insert(slot, value.to_vec());
                if !within_quotas(&next) {
                    return None;
                }
            }
            None => {
                next.remove(&slot);
            }
        }
    }
    Some(next)
}

fn check_keyvalue(ops: &[Op]) {
    let store = store();
    let record = record();
    let lambda = record.lambda_id;
    blocking(store.save_lambda(&record, None))
        .expect("the store saves")
        .expect("the name is free");
    let mut model = Model::new();
    for op in ops {
        let bucket_of = |b: &u8| BUCKETS[usize::from(*b) % BUCKETS.len()];
        let (bucket, expected, outcome) = match op {
            Op::Set { bucket, key, value } => {
                let bucket = bucket_of(bucket);
                if check_bucket(bucket).is_err() {
                    continue;
                }
                let expected = apply(&model, bucket, &[(key, Some(value))]);
                (
                    bucket,
                    expected,
                    store.kv_set(lambda, bucket, key, value, &QUOTAS),
                )
            }
            Op::Delete { bucket, key } => {
                let bucket = bucket_of(bucket);
                if check_bucket(bucket).is_err() {
                    continue;
                }
                let expected = apply(&model, bucket, &[(key, None)]);
                (
                    bucket,
                    expected,
                    store.kv_delete(lambda, bucket, key, &QUOTAS),
                )
            }
            Op::SetMany { bucket, pairs } => {
                let bucket = bucket_of(bucket);
                if check_bucket(bucket).is_err() {
                    continue;
                }
                let writes: Vec<_> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
                    .collect();
                let expected = apply(&model, bucket, &writes);
                (
                    bucket,
                    expected,
                    store.kv_set_many(lambda, bucket, pairs, &QUOTAS),
                )
            }
            Op::DeleteMany { bucket, keys } => {
                let bucket = bucket_of(bucket);
                if check_bucket(bucket).is_err() {
                    continue;
                }
                let writes: Vec<_> = keys.iter().map(|k| (k.as_str(), None)).collect();
                let expected = apply(&model, bucket, &writes);
                (
                    bucket,
                    expected,
                    store.kv_delete_many(lambda, bucket, keys, &QUOTAS),
                )
            }
            Op::Increment { bucket, key, delta } => {
                let bucket = bucket_of(bucket);
                if check_bucket(bucket).is_err() {
                    continue;
                }
                let slot = (bucket.to_owned(), key.clone());
                let current = match model.get(&slot) {
                    None => Some(0),
                    Some(raw) => <[u8; 8]>::try_from(raw.as_slice())
                        .ok()
                        .map(u64::from_le_bytes),
                };
                let next = current.and_then(|c| c.checked_add(*delta));
                let expected = next.and_then(|n| {
                    key_ok(key)
                        .then(|| apply(&model, bucket, &[(key, Some(&n.to_le_bytes()))]))
                        .flatten()
                });
                let outcome = store.kv_increment(lambda, bucket, key, *delta, &QUOTAS);
                if let (Ok(got), Some(n)) = (&outcome, next) {
                    assert_eq!(*got, n, "increment result");
                }
                (bucket, expected, outcome.map(|_| ()))
            }
        };
        match (expected, outcome) {
            (Some(next), Ok(())) => model = next,
            (None, Err(_)) => {}
            (expected, outcome) => panic!(
                "{op:?} in '{bucket}': expected {}, got {outcome:?}",
                if expected.is_some() {
                    "success"
                } else {
                    "a refusal"
                }
            ),
        }
        assert_eq!(store.kv_usage(lambda).expect("usage"), usage(&model));
        for bucket in BUCKETS.iter().filter(|b| check_bucket(b).is_ok()) {
            let (keys, _) = store.kv_list(lambda, bucket, 0).expect("list");
            let want: Vec<String> = model
                .keys()
                .filter(|(b, _)| b == bucket)
                .map(|(_, k)| k.clone())
                .collect();
            assert_eq!(keys, want, "keys of '{bucket}'");
        }
        for ((bucket, key), value) in &model {
            let got = store.kv_get(lambda, bucket, key).expect("get");
            assert_eq!(got.as_ref(), Some(value));
        }
    }
    blocking(store.delete_lambda(&record)).expect("delete");
    store.kv_delete_namespace(lambda).expect("sweep");
}

fn check_config(raw: &[u8]) {
    let Ok(serde_json::Value::Object(config)) = serde_json::from_slice(raw) else {
        return;
    };
    let flat = flatten_config(Some(&config), None);
    for pair in flat.windows(2) {
        assert!(pair[0].0 < pair[1].0, "config keys are sorted and unique");
    }
    assert!(
        flat.iter().all(|(k, _)| !k.starts_with("luna.credentials")),
        "config cannot forge credential keys"
    );
}

fn check_outbound(patterns: &[String], urls: &[String]) {
    let limits = OutboundLimits::from(&Sandbox::default());
    let policy = OutboundPolicy::new(patterns, limits);
    let any_valid = patterns.iter().any(|p| HostPattern::parse(p).is_ok());
    for url in urls {
        let Ok(uri) = url.parse::<http::Uri>() else {
            continue;
        };
        if policy.admits(&uri) {
            assert!(any_valid, "{uri} admitted with no valid pattern");
            assert!(uri.host().is_some());
        }
    }
}

/// The checks of one input (the libFuzzer target and the corpus replay call this).
pub fn check(input: Input) {
    check_config(&input.config);
    check_outbound(&input.patterns, &input.urls);
    check_keyvalue(&input.ops);
}
