//! Three replicas of the service on one PostgreSQL database, as an operator runs them
//! behind a load balancer: a lambda created through one is served by all, a change
//! made through any reaches the others, a counter incremented through all three ends
//! exact, a build whose replica is killed is finished by another, and neither a killed
//! replica nor a restarted database fails a request to the others.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::*;
use crate::examples::{call, deploy, example_zip, parse};

use crate::postgres::SHARED_KEY;
use crate::postgres::throwaway_postgres::ThrowawayPostgres;

/// How long a change may take to reach every replica in these tests (the notices make
/// it milliseconds; the periodic comparison, every second here, catches a missed one).
const PROPAGATION: Duration = Duration::from_secs(10);

/// Replicas on one database, each with its own data directory.
struct Replicas {
    env: Vec<(String, String)>,
    temp: tempfile::TempDir,
}

impl Replicas {
    fn on(database: &ThrowawayPostgres) -> Self {
        let env = [
            ("LUNA_LAMBDA_STORE_BACKEND", "postgres".to_owned()),
            ("LUNA_LAMBDA_STORE_POSTGRES_URL", database.url()),
            ("LUNA_LAMBDA_ENCRYPTION_KEY", SHARED_KEY.to_owned()),
            ("LUNA_LAMBDA_STORE_BUILD_LEASE_SECS", "3".to_owned()),
            ("LUNA_LAMBDA_STORE_RECONCILE_SECS", "1".to_owned()),
        ];
        Self {
            env: env.map(|(k, v)| (k.to_owned(), v)).into(),
            temp: tempfile::tempdir().unwrap(),
        }
    }

    /// Replica `n`, started (again) on its own data directory.
    fn start(&self, n: usize) -> Server {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Server::start_in(&self.temp.path().join(format!("replica-{n}")), &env)
    }
}

/// Waits until `server` answers the lambda's `/hello` with `status` and, when given,
/// `Lambda-Version: version`.
async fn answers(server: &Server, id: &str, status: u16, version: Option<&str>) {
    eventually_within(
        PROPAGATION,
        &format!("{} answers {status} for {id}", server.base),
        || async move {
            let response = server.proxy(Method::GET, id, "/hello").await;
            let seen = (
                response.status().as_u16(),
                response
                    .headers()
                    .get("lambda-version")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            if seen.0 == status && (version.is_none() || seen.1.as_deref() == version) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await
}

/// One proxied call of `path`: None when it answered 200, otherwise what went wrong.
async fn failure(server: &Server, id: &str, path: &str) -> Option<String> {
    match server
        .http
        .get(server.url(&format!("/1/lambdas/{id}/proxy{path}")))
        .header("Luna-Account-Id", ACCOUNT)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => None,
        Ok(r) => Some(format!("status {}", r.status())),
        Err(e) => Some(e.to_string()),
    }
}

/// `requests` proxied calls of `path` through each server at once; the failures per
/// server.
async fn load(servers: &[&Server], id: &str, path: &str, requests: usize) -> Vec<Vec<String>> {
    futures::future::join_all(servers.iter().map(|server| async move {
        let mut failures = Vec::new();
        for _ in 0..requests {
            failures.extend(failure(server, id, path).await);
        }
        failures
    }))
    .await
}

/// Proxied calls of `path` through each server, one after another, from before
/// `event` (run on a thread of its own) starts until 100 calls after it ended; the
/// failures per server, and how many calls were made.
fn load_during(
    servers: &[&Server],
    id: &str,
    path: &str,
    event: impl FnOnce() + Send,
) -> (Vec<Vec<String>>, usize) {
    let busy = AtomicBool::new(true);
    let made = AtomicUsize::new(0);
    let failures = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // Under way first: some calls before the event.
                while made.load(Ordering::Relaxed) < 50 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                event();
                busy.store(false, Ordering::Relaxed);
            });
            tokio::runtime::Handle::current().block_on(futures::future::join_all(
                servers.iter().map(|server| async {
                    let mut failures = Vec::new();
                    let mut after = 0;
                    // Bounded: at most 20,000 calls per server.
                    for _ in 0..20_000 {
                        failures.extend(failure(server, id, path).await);
                        made.fetch_add(1, Ordering::Relaxed);
                        if !busy.load(Ordering::Relaxed) {
                            after += 1;
                            if after == 100 {
                                break;
                            }
                        }
                    }
                    failures
                }),
            ))
        })
    });
    (failures, made.into_inner())
}

/// The fixture component with a heavy core module beside it (never instantiated): a
/// lambda that serves like the fixture and takes seconds to compile.
fn slow_to_compile_fixture() -> Vec<u8> {
    let heavy = compile_heavy_component(10, 4000);
    // The heavy component holds one core module section: moved into the fixture as is.
    let module_section = &heavy[8..];
    let mut wasm = fixture_wasm().to_vec();
    wasm.extend_from_slice(module_section);
    zip_of(&[("lambda.wasm", &wasm)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_every_lambda_and_share_its_data() {
    let database = ThrowawayPostgres::start();
    let replicas = Replicas::on(&database);
    let r: Vec<Server> = (0..3).map(|n| replicas.start(n)).collect();

    // Created through the first replica, the lambda answers through the others.
    let counter = deploy(&r[0], "kv-counter", json!({"lambda_name": "counter"}), None).await;
    for server in &r[1..] {
        answers(server, &counter, 200, Some("1")).await;
    }

    // Its key-value data is one: increments through all three at once add up exactly.
    let hits = |text: String| parse(&text)["hits"].as_u64().unwrap();
    let before = hits(call(&r[2], Method::GET, &counter, "/visits", None).await.1);
    let failures = load(&[&r[0], &r[1], &r[2]], &counter, "/visits", 30).await;
    assert!(failures.iter().all(Vec::is_empty), "{failures:?}");
    let after = hits(call(&r[1], Method::GET, &counter, "/visits", None).await.1);
    assert_eq!(after, before + 91);

    // Recreated through the second, version 2 serves on every replica.
    let response = r[1]
        .recreate(
            &counter,
            example_zip("kv-counter"),
            json!({"description": "second"}),
        )
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(r[1].wait_image(&counter).await, "completed");
    for server in &r {
        answers(server, &counter, 200, Some("2")).await;
    }

    // Renamed through the third, the first lists the new name.
    let renamed = r[2]
        .call(Method::PATCH, &format!("/1/lambdas/{counter}"))
        .account(ACCOUNT)
        .json(&json!({"lambda_name": "tally"}))
        .send()
        .await;
    assert_eq!(renamed.status(), 204);
    let (_, lambda) = r[0].get_json(&format!("/1/lambdas/{counter}")).await;
    assert_eq!(lambda["lambda_name"], "tally", "{lambda}");

    // Deleted through the first, it is gone from every replica.
    assert_eq!(r[0].delete_lambda(&counter).await.status(), 204);
    for server in &r {
        answers(server, &counter, 404, None).await;
    }

    // A replica killed in the middle of a build: another takes the build over once the
    // lease runs out, and the lambda serves everywhere.
    let slow = r[0]
        .create(ACCOUNT, "slow", slow_to_compile_fixture(), None)
        .await;
    eventually("the build runs on the first replica", || async {
        let (_, image) = r[0]
            .get_json(&format!("/1/lambdas/{slow}/image/status"))
            .await;
        if image["status"] == "in_progress" {
            Ok(())
        } else {
            Err(image)
        }
    })
    .await;
    let mut r = r.into_iter();
    r.next().unwrap().kill();
    let (r1, r2) = (r.next().unwrap(), r.next().unwrap());
    r1.wait_status(&slow, "running").await;
    let logs = r1.image_logs(&slow).await;
    assert!(logs.contains("build taken over on replica"), "{logs}");
    answers(&r2, &slow, 200, Some("1")).await;

    // A replica killed under load: the others fail no request.
    let r0 = replicas.start(0);
    answers(&r0, &slow, 200, Some("1")).await;
    let others = [&r1, &r2];
    let (failures, calls) = load_during(&others, &slow, "/hello", || r0.kill());
    assert_eq!(
        failures,
        [Vec::<String>::new(), Vec::new()],
        "of {calls} calls"
    );

    // The database restarted under load: running lambdas fail no request, and the
    // replicas hear of changes again afterwards.
    let (failures, calls) = load_during(&others, &slow, "/hello", || {
        database.stop();
        database.start_again();
    });
    assert_eq!(
        failures,
        [Vec::<String>::new(), Vec::new()],
        "of {calls} calls"
    );
    eventually("the management API answers again", || async {
        match r1.get_json("/1/lambdas").await {
            (200, list) => Ok(list),
            (_, body) => Err(body),
        }
    })
    .await;
    assert_eq!(r2.delete_lambda(&slow).await.status(), 204);
    answers(&r1, &slow, 404, None).await;
}
