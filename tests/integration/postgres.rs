//! The service on the PostgreSQL store: what a user deploys is kept in the database (no
//! sled store is made), survives a kill -9, and the configuration shows the backend with
//! the database password masked.

use reqwest::Method;
use serde_json::json;

use crate::common::*;
use crate::examples::{call, deploy, parse};

#[path = "../support/throwaway_postgres.rs"]
mod throwaway_postgres;
use throwaway_postgres::ThrowawayPostgres;

#[tokio::test]
async fn lambdas_and_their_data_live_in_postgres_and_survive_a_kill() {
    let database = ThrowawayPostgres::start();
    let url = format!("{} password=not-shown", database.url());
    let env = [
        ("LUNA_LAMBDA_STORE_BACKEND", "postgres"),
        ("LUNA_LAMBDA_STORE_POSTGRES_URL", url.as_str()),
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
        !dir.join("store").exists(),
        "no embedded store is opened beside the database"
    );
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
}
