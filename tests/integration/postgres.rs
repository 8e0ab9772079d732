//! The service on the PostgreSQL store: what a user deploys is kept in the database (no
//! sled store or archive directory is made), survives a kill -9, serves from another
//! data directory on the same database, and the configuration shows the backend with the
//! database password masked. Several replicas on one database: `replicas.rs`.

use reqwest::Method;
use serde_json::json;

use crate::common::*;
use crate::examples::{call, deploy, parse};

#[path = "../support/throwaway_postgres.rs"]
pub(crate) mod throwaway_postgres;
use throwaway_postgres::ThrowawayPostgres;

/// The credentials key every process on the database shares (base64 of 32 bytes).
pub(crate) const SHARED_KEY: &str = "bHVuYS1sYW1iZGEtdGVzdC1rZXktMzItYnl0ZXMhISE=";

#[tokio::test]
async fn lambdas_and_their_data_live_in_postgres_and_survive_a_kill() {
    let database = ThrowawayPostgres::start();
    let url = format!("{} password=not-shown", database.url());
    let env = [
        ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
        ("LUNA_LAMBDA_STORE_POSTGRES_URL", url.as_str()),
        ("LUNA_LAMBDA_ENCRYPTION_KEY", SHARED_KEY),
    ];
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let server = Server::start_in(&dir, &env);
    let counter = deploy(
        &server,
        "kv-counter",
        json!({"lambda_name": "counter"}),
        None,
    )
    .await;
    for _ in 0..2 {
        call(&server, Method::GET, &counter, "/visits", None).await;
    }
    let (status, health) = server
        .get_json("/healthcheck?include_luna_services=1")
        .await;
    assert_eq!(status, 200, "{health}");
    let (_, config) = server.get_json("/1/config").await;
    assert_eq!(config["store"]["backend"], "postgres");
    let shown = config["store"]["postgres_url"].as_str().unwrap();
    assert!(shown.ends_with("password=********"), "{shown}");
    assert!(
        !dir.join("store").exists() && !dir.join("archives").exists(),
        "no embedded store is opened beside the database"
    );
    // A second process on the database is a replica: it lists the same lambda.
    let second = Server::start_in(&temp.path().join("second"), &env);
    let (_, list) = second.get_json("/1/lambdas").await;
    assert_eq!(list["lambdas"][0]["lambda_name"], "counter", "{list}");
    second.kill();
    server.kill();

    let server = Server::start_in(&dir, &env);
    server.wait_status(&counter, "running").await;
    let (_, list) = server.get_json("/1/lambdas").await;
    assert_eq!(list["lambdas"][0]["lambda_name"], "counter", "{list}");
    let (_, text) = call(&server, Method::GET, &counter, "/visits", None).await;
    assert_eq!(parse(&text), json!({"name": "visits", "hits": 3}));
    // The lambda's logs go to the database too.
    call(&server, Method::DELETE, &counter, "/visits", None).await;
    wait_log(&server, &counter, "counter visits reset").await;
    call(&server, Method::GET, &counter, "/visits", None).await;
    server.kill();

    // A service with an empty data directory on the same database serves the lambda
    // too: its archive comes from the database, compiled into this data directory's
    // cache on first load.
    let elsewhere = temp.path().join("elsewhere");
    let server = Server::start_in(&elsewhere, &env);
    server.wait_status(&counter, "running").await;
    let (_, text) = call(&server, Method::GET, &counter, "/visits", None).await;
    assert_eq!(parse(&text), json!({"name": "visits", "hits": 2}));
    assert!(!elsewhere.join("archives").exists());
    assert!(
        server
            .metric("wasm_engine{item=\"compile_cache_misses\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_database_outage_fails_management_calls_but_not_running_lambdas() {
    let database = ThrowawayPostgres::start();
    let url = database.url();
    let server = Server::start(&[
        ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
        ("LUNA_LAMBDA_STORE_POSTGRES_URL", url.as_str()),
        ("LUNA_LAMBDA_ENCRYPTION_KEY", SHARED_KEY),
    ]);
    let lambda = server.running_fixture(ACCOUNT, "steady", None).await;

    database.stop();
    // Management calls that need the database fail, clearly and saying nothing internal.
    let started = std::time::Instant::now();
    let (status, body) = server.get_json("/1/lambdas").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["detail"],
        "the store database is unreachable; running lambdas keep serving, retry this call shortly"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    let (status, body) = server
        .get_json("/healthcheck?include_luna_services=1")
        .await;
    assert_eq!(status, 502, "the dependent services' check sees the outage");
    assert_eq!(body["errors"][0]["component"], "postgres", "{body}");
    let (status, _) = server.get_json("/healthcheck").await;
    assert_eq!(status, 200, "the service itself is up");
    // The running WASM lambda keeps serving: the proxy path reads no record.
    for _ in 0..20 {
        let response = server.proxy(Method::GET, &lambda, "/hello").await;
        assert_eq!(response.status(), 200);
    }

    // The service comes back with the database, without a restart.
    database.start_again();
    eventually("the list answers again", || async {
        let (status, body) = server.get_json("/1/lambdas").await;
        if status == 200 { Ok(body) } else { Err(body) }
    })
    .await;
    let (status, _) = server
        .get_json("/healthcheck?include_luna_services=1")
        .await;
    assert_eq!(status, 200);
}

/// An operator moves a service from its embedded store to PostgreSQL: stops it, runs
/// `luna-lambda migrate-store` and starts it on the database. The lambda serves with its
/// counter, logs and image logs, its credentials sealed again with the shared key; a
/// second migration into the same database is refused.
#[tokio::test]
async fn a_sled_service_moves_to_postgres_with_migrate_store() {
    let temp = tempfile::tempdir().unwrap();
    let sled_dir = temp.path().join("sled");
    let server = Server::start_in(&sled_dir, &[]);
    let counter = deploy(
        &server,
        "kv-counter",
        json!({"lambda_name": "counter"}),
        None,
    )
    .await;
    call(&server, Method::DELETE, &counter, "/visits", None).await;
    for _ in 0..3 {
        call(&server, Method::GET, &counter, "/visits", None).await;
    }
    wait_log(&server, &counter, "counter visits reset").await;
    assert!(server.terminate().success());

    let database = ThrowawayPostgres::start();
    let url = database.url();
    let env = [
        ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
        ("LUNA_LAMBDA_STORE_POSTGRES_URL", url.as_str()),
        ("LUNA_LAMBDA_ENCRYPTION_KEY", SHARED_KEY),
    ];
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_luna-lambda"))
            .args(["migrate-store", "--from-data-dir"])
            .arg(&sled_dir)
            .envs(env)
            .env("LUNA_LAMBDA_LOG_LEVEL", "warn")
            .output()
            .unwrap()
    };
    let migrated = migrate();
    let stdout = String::from_utf8_lossy(&migrated.stdout);
    assert!(
        migrated.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(stdout.contains("migrated 1 lambdas"), "{stdout}");
    assert!(stdout.contains("1 build jobs"), "{stdout}");
    let again = migrate();
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds 1 lambda(s)"), "{stderr}");

    let server = Server::start_in(&temp.path().join("postgres"), &env);
    server.wait_status(&counter, "running").await;
    let (_, text) = call(&server, Method::GET, &counter, "/visits", None).await;
    assert_eq!(parse(&text), json!({"name": "visits", "hits": 4}));
    wait_log(&server, &counter, "counter visits reset").await;
    assert!(
        server
            .image_logs(&counter)
            .await
            .contains("build completed")
    );
}
