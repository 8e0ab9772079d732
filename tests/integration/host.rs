//! The luna host interfaces driven from a guest built with the SDK
//! (`tests/guests/sdk-probe`): key-value quotas and isolation, log levels, config with
//! credentials, and context; and what the sandbox denies (the fixture's `/sandbox`).

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

async fn probe(s: &Server, name: &str, parameters: Value) -> String {
    let response = s
        .create_raw(
            ACCOUNT,
            Upload::new(zip_of(&[("lambda.wasm", &guest_wasm("sdk-probe"))]))
                .parameters(parameters),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    let id = body["lambda_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: {body}"))
        .to_owned();
    s.wait_status(&id, "running").await;
    id
}

async fn send(s: &Server, method: Method, id: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let response = s
        .call(method, &format!("/1/lambdas/{id}/proxy{path}"))
        .account(ACCOUNT)
        .header(
            "Luna-Request-Id",
            "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
        )
        .body(body)
        .send()
        .await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn key_value_quotas_answer_errors_and_write_nothing() {
    let s = Server::start(&[
        ("LUNA_LAMBDA_KEYVALUE_MAX_KEYS", "3"),
        ("LUNA_LAMBDA_KEYVALUE_MAX_KEY_BYTES", "16"),
        ("LUNA_LAMBDA_KEYVALUE_MAX_VALUE_BYTES", "1024"),
        ("LUNA_LAMBDA_KEYVALUE_MAX_TOTAL_BYTES", "2100"),
    ]);
    let id = probe(&s, "quota", json!({"lambda_name": "quota"})).await;
    let put = |key: &'static str, size: usize| {
        let (s, id) = (&s, id.clone());
        async move { send(s, Method::PUT, &id, &format!("/kv/{key}"), vec![b'v'; size]).await }
    };
    let refused = |(status, body): (u16, String), needle: &str| {
        assert_eq!(status, 500, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    };

    assert_eq!(put("a", 1000).await.0, 204);
    let (status, value) = send(&s, Method::GET, &id, "/kv/a", vec![]).await;
    assert_eq!((status, value.len()), (200, 1000));
    refused(put("b", 1025).await, "at most 1024 bytes");
    refused(
        put("seventeen-bytes-k", 1).await,
        "keys must be 1..16 bytes",
    );
    assert_eq!(put("b", 1000).await.0, 204);
    // a and b hold 2002 bytes of keys and values: 100 more would pass 2100.
    refused(put("c", 100).await, "at most 2100 bytes");
    assert_eq!(send(&s, Method::GET, &id, "/kv/c", vec![]).await.0, 404);
    assert_eq!(send(&s, Method::DELETE, &id, "/kv/b", vec![]).await.0, 204);
    assert_eq!(put("c", 10).await.0, 204);
    assert_eq!(put("d", 10).await.0, 204);
    refused(put("e", 1).await, "at most 3 keys");
    // Overwriting a key is not a new key.
    assert_eq!(put("d", 20).await.0, 204);
    // A batch that would pass a quota writes none of its pairs.
    assert_eq!(send(&s, Method::DELETE, &id, "/kv/d", vec![]).await.0, 204);
    refused(
        send(&s, Method::POST, &id, "/kv-batch/2/1", vec![]).await,
        "at most 3 keys",
    );
    assert_eq!(
        send(&s, Method::GET, &id, "/kv/batch-0", vec![]).await.0,
        404
    );
    assert_eq!(
        send(&s, Method::POST, &id, "/kv-batch/1/1", vec![]).await.0,
        204
    );

    // Namespaces are per lambda: another lambda sees none of this one's keys.
    let other = probe(&s, "other", json!({"lambda_name": "other"})).await;
    assert_eq!(send(&s, Method::GET, &other, "/kv/a", vec![]).await.0, 404);
    assert_eq!(
        send(&s, Method::PUT, &other, "/kv/a", b"mine".to_vec())
            .await
            .0,
        204
    );
    let (_, value) = send(&s, Method::GET, &id, "/kv/a", vec![]).await;
    assert_eq!(value.len(), 1000);
}

#[tokio::test]
async fn log_levels_config_credentials_and_context_reach_the_guest() {
    let s = Server::start(&[]);
    let id = probe(
        &s,
        "probe",
        json!({
            "lambda_name": "probe",
            "config": {"greeting": {"text": "hi", "langs": ["en", "ru"]}, "retries": 3}
        }),
    )
    .await;

    let (status, _) = send(&s, Method::POST, &id, "/log", b"probe-line".to_vec()).await;
    assert_eq!(status, 204);
    for level in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"] {
        wait_log(
            &s,
            &id,
            &format!("[1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a] {level} probe-line"),
        )
        .await;
    }

    let (status, body) = send(&s, Method::GET, &id, "/config", vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({
            "greeting.text": "hi",
            "greeting.langs.0": "en",
            "greeting.langs.1": "ru",
            "retries": "3",
            "luna.credentials.login": "user",
            "luna.credentials.password": "hunter2",
        })
    );

    let (status, body) = send(&s, Method::GET, &id, "/context", vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({
            "lambda_id": id,
            "version": 1,
            "account_id": ACCOUNT,
            "request_id": "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
            "lambda_type": "Standalone",
        })
    );
}

/// The sandbox grants a guest no files, no environment or arguments, no stdin, and no
/// sockets or name lookups: its only way out is `wasi:http` under its allow-list. The
/// probe connects to the service's own port, where something does listen.
#[tokio::test]
async fn the_sandbox_grants_no_files_environment_or_sockets() {
    let s = Server::start(&[]);
    let id = s.running_fixture(ACCOUNT, "prober", None).await;
    let port = s.port();
    let r = s
        .proxy(Method::GET, &id, &format!("/sandbox?port={port}"))
        .await;
    assert_eq!(r.status(), 200);
    let report = r.text().await.unwrap();
    for probe in [
        "read_dir_root",
        "read_dir_cwd",
        "open_passwd",
        "create_file",
        "env",
        "args",
        "stdin",
        "tcp_connect",
        "tcp_listen",
        "udp_bind",
        "name_lookup",
    ] {
        assert!(report.contains(&format!("{probe}=denied\n")), "{report}");
    }
    assert!(!report.contains("ALLOWED"), "{report}");
}
