//! Bearer tokens (`auth.mode = token`): a token acts as its account on every route, the
//! operator's token alone sees every account; without a token only health, version and
//! documents answer. And in every mode, two different account headers are refused.

use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

const ALICE: &str = "alice-token-5b1d";
const BOB: &str = "bob-token-77c0";
const OPERATOR: &str = "operator-token-e3a9";

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A server requiring tokens: ALICE acts as ACCOUNT, BOB as OTHER_ACCOUNT. Its client
/// sends the operator's token unless a request names another (the harness's waits
/// read every account).
fn token_server() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let lines = format!(
        "# account  sha256(token)\n{ACCOUNT} {}\n{OTHER_ACCOUNT} {}\n",
        sha256_hex(ALICE),
        sha256_hex(BOB)
    );
    std::fs::write(&tokens, lines).unwrap();
    let mut server = Server::start(&[
        ("LUNA_LAMBDA_AUTH_MODE", "token"),
        ("LUNA_LAMBDA_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        (
            "LUNA_LAMBDA_AUTH_OPERATOR_TOKEN_SHA256",
            &sha256_hex(OPERATOR),
        ),
    ]);
    let mut operator = reqwest::header::HeaderMap::new();
    operator.insert("authorization", bearer(OPERATOR).parse().unwrap());
    server.http = reqwest::Client::builder()
        .default_headers(operator)
        .build()
        .unwrap();
    (server, dir)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_token_acts_as_its_account_only() {
    let (s, _tokens) = token_server();
    without_a_token_only_health_version_and_documents_answer(&s).await;

    // Alice creates with her token alone: the service knows her account.
    let created = s
        .call(Method::POST, "/1/lambdas")
        .header("Authorization", &bearer(ALICE))
        .upload(Upload::new(fixture_zip()).named("alices"))
        .send()
        .await;
    let id = created_id(created).await;
    s.wait_status(&id, "running").await;
    let r = s
        .call(Method::GET, &format!("/1/lambdas/{id}/proxy/meta"))
        .header("Authorization", &bearer(ALICE))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let meta = r.text().await.unwrap();
    assert!(meta.contains(&format!("account={ACCOUNT}\n")), "{meta}");
    assert!(
        meta.contains("authorization=-\n"),
        "the token never reaches the guest: {meta}"
    );

    bob_cannot_reach_alices_lambda_by_any_means(&s, &id).await;
    the_operator_token_sees_every_account(&s, &id).await;
}

async fn without_a_token_only_health_version_and_documents_answer(s: &Server) {
    let anonymous = reqwest::Client::new();
    for path in ["/version", "/healthcheck", "/1/healthcheck", "/1/docs/spec"] {
        let r = anonymous.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for (method, path) in [
        (Method::GET, "/1/lambdas"),
        (Method::GET, "/metrics"),
        (Method::GET, "/1/config"),
        (Method::POST, "/1/lambdas/validate"),
        (
            Method::GET,
            "/1/lambdas/e63e2a1f-f505-441c-8e11-b2dcd0385329/proxy/x",
        ),
    ] {
        let request = anonymous.request(method.clone(), s.url(path));
        let r = request
            .header("Luna-Account-Id", ACCOUNT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{method} {path}");
        assert_error(r, 401, 11070).await;
    }
    let guessed = s
        .call(Method::GET, "/1/lambdas")
        .header("Authorization", "Bearer guessed")
        .send()
        .await;
    assert_error(guessed, 401, 11070).await;
    let guessed = anonymous
        .get(s.url("/1/lambdas"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_error(guessed, 401, 11070).await;
}

async fn bob_cannot_reach_alices_lambda_by_any_means(s: &Server, id: &str) {
    let as_bob =
        |method: Method, path: &str| s.call(method, path).header("Authorization", &bearer(BOB));
    let (code, list) = as_bob(Method::GET, "/1/lambdas").send_json().await;
    assert_eq!(code, 200);
    assert_eq!(
        list["lambdas"],
        Value::Array(vec![]),
        "bob lists only his own"
    );
    for path in [
        format!("/1/lambdas/{id}"),
        format!("/1/lambdas/{id}/image/logs"),
        format!("/1/lambdas/{id}/proxy/meta"),
    ] {
        assert_error(as_bob(Method::GET, &path).send().await, 404, 42001).await;
        // Naming alice's account does not make bob alice.
        let claimed = as_bob(Method::GET, &path).account(ACCOUNT).send().await;
        assert_error(claimed, 403, 11071).await;
        let queried = format!("{path}?account_id={ACCOUNT}");
        assert_error(as_bob(Method::GET, &queried).send().await, 403, 11071).await;
    }
    let r = as_bob(Method::DELETE, &format!("/1/lambdas/{id}"))
        .send()
        .await;
    assert_error(r, 404, 42001).await;
    for operator_only in ["/metrics", "/1/config"] {
        let r = as_bob(Method::GET, operator_only).send().await;
        assert_error(r, 403, 11071).await;
    }
}

async fn the_operator_token_sees_every_account(s: &Server, id: &str) {
    let as_operator = |path: &str| {
        s.call(Method::GET, path)
            .header("Authorization", &bearer(OPERATOR))
    };
    let (code, list) = as_operator("/1/lambdas").send_json().await;
    assert_eq!(code, 200);
    assert_eq!(listed_ids(&list), vec![id.to_owned()]);
    let metrics = as_operator("/metrics").send().await.text().await.unwrap();
    assert!(
        metrics.contains(id),
        "the operator's metrics name every lambda"
    );
    assert_eq!(as_operator("/1/config").send().await.status(), 200);
}

/// A gateway that appends its own Luna-Account-Id must not let a client's header win.
#[tokio::test]
async fn two_different_account_headers_are_refused() {
    let s = Server::start(&[]);
    let id = s.running_fixture(ACCOUNT, "mine", None).await;
    for path in [
        "/1/lambdas".to_owned(),
        format!("/1/lambdas/{id}"),
        format!("/1/lambdas/{id}/proxy/meta"),
    ] {
        let r = s
            .call(Method::GET, &path)
            .account(OTHER_ACCOUNT)
            .account(ACCOUNT)
            .send()
            .await;
        let body = assert_error(r, 400, 11037).await;
        assert!(
            body["detail"].as_str().unwrap().contains("more than once"),
            "{body}"
        );
    }
    let same_twice = s
        .call(Method::GET, &format!("/1/lambdas/{id}"))
        .account(ACCOUNT)
        .account(ACCOUNT)
        .send()
        .await;
    assert_eq!(same_twice.status(), 200);
}

/// A tokens file the service cannot use stops the start with one line naming it.
#[test]
fn a_bad_tokens_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "not-an-account deadbeef\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_luna-lambda"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("LUNA_LAMBDA_AUTH_MODE", "token")
        .env("LUNA_LAMBDA_AUTH_TOKENS_FILE", &tokens)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("line 1") && stderr.contains("tokens"),
        "{stderr}"
    );
}
