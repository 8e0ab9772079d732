//! Management routes: shapes, headers, query rules and every input error code.

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn version_and_request_ids() {
    let s = Server::start(&[]);
    let r = s.get("/version").await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["luna-request-id"].to_str().unwrap().to_owned();
    let (secs, uuid) = rid.split_once(',').unwrap();
    assert_eq!((secs.len(), uuid.len()), (10, 36));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Version"]["api"], 1);
    assert!(body["Version"]["major"].is_u64());

    let given = "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a";
    let r = s
        .http
        .get(s.url("/version"))
        .header("Luna-Request-Id", given)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["luna-request-id"], given);

    for path in ["/version", "/1/lambdas", "/1/lambdas/x/proxy/hello"] {
        let r = s
            .http
            .get(s.url(path))
            .header("Luna-Request-Id", "not-an-id")
            .send()
            .await
            .unwrap();
        let body = assert_error(r, 400, 12031).await;
        assert!(body["detail"].as_str().unwrap().contains("Luna-Request-Id"));
    }
    assert_error(s.get("/version?x=1").await, 400, 12012).await;
    assert_error(s.get("/nope").await, 404, 12001).await;
    let r = s.http.delete(s.url("/version")).send().await.unwrap();
    assert_error(r, 405, 12005).await;
    // An unknown route or method is reported before a malformed request id.
    let trace = reqwest::Method::from_bytes(b"TRACE").unwrap();
    for (method, path, status, code) in [
        (reqwest::Method::DELETE, "/version", 405, 12005),
        (trace.clone(), "/1/config", 405, 12005),
        (trace, "/1/lambdas/x/proxy/hello", 405, 12005),
        (reqwest::Method::GET, "/nope", 404, 12001),
    ] {
        let r = s
            .http
            .request(method, s.url(path))
            .header("Luna-Request-Id", "0")
            .send()
            .await
            .unwrap();
        if status == 405 {
            assert!(
                r.headers().contains_key("allow"),
                "405 on {path} lists Allow"
            );
        }
        assert_error(r, status, code).await;
    }
}

#[tokio::test]
async fn create_rejects_bad_input_with_luna_codes() {
    let s = Server::start(&[("LUNA_LAMBDA_LIMITS_MAX_ARCHIVE_BYTES", "4096")]);
    let good = || zip_of(&[("lambda.wasm", b"\0asm\x0d\0\x01\0")]);
    let params = json!({"lambda_name": "x"});
    let post = || s.http.post(s.url("/1/lambdas"));

    // Headers first.
    let r = post()
        .multipart(upload_form(good(), params.clone(), None))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 11066).await;
    let r = post()
        .header("Luna-Account-Id", "nope")
        .multipart(upload_form(good(), params.clone(), None))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 11037).await;
    // Not multipart.
    let r = post()
        .header("Luna-Account-Id", ACCOUNT)
        .json(&params)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12017).await;
    // Missing parts.
    let form = Form::new().part("parameters", json_part(&params));
    let r = post()
        .header("Luna-Account-Id", ACCOUNT)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 400, 12014).await;
    assert!(body["detail"].as_str().unwrap().contains("archive"));
    let form = Form::new()
        .part(
            "archive",
            Part::bytes(good()).mime_str("application/zip").unwrap(),
        )
        .part("parameters", json_part(&params));
    let r = post()
        .header("Luna-Account-Id", ACCOUNT)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 400, 12014).await;
    assert!(body["detail"].as_str().unwrap().contains("credentials"));
    // Wrong part Content-Type.
    let form = Form::new().part(
        "archive",
        Part::bytes(good()).mime_str("text/plain").unwrap(),
    );
    let r = post()
        .header("Luna-Account-Id", ACCOUNT)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 400, 12041).await;
    assert!(body["detail"].as_str().unwrap().contains("'archive'"));
    // Unknown part.
    let form = upload_form(good(), params.clone(), None).part("extra", json_part(&json!({})));
    let r = post()
        .header("Luna-Account-Id", ACCOUNT)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12046).await;
    // Bad JSON: syntax, unknown field, wrong type.
    for (bad, needle) in [
        (
            Part::text("{").mime_str("application/json").unwrap(),
            "parameters",
        ),
        (json_part(&json!({"lambda_name": "x", "nope": 1})), "nope"),
        (
            json_part(&json!({"lambda_name": "x", "workers": "many"})),
            "parameters.workers",
        ),
    ] {
        let form = Form::new()
            .part(
                "archive",
                Part::bytes(good()).mime_str("application/zip").unwrap(),
            )
            .part("credentials", json_part(&json!({"token": "t"})))
            .part("parameters", bad);
        let r = post()
            .header("Luna-Account-Id", ACCOUNT)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let body = assert_error(r, 400, 12022).await;
        assert!(body["detail"].as_str().unwrap().contains(needle), "{body}");
    }
    let form = Form::new()
        .part(
            "archive",
            Part::bytes(good()).mime_str("application/zip").unwrap(),
        )
        .part("credentials", json_part(&json!({"user": "x"})))
        .part("parameters", json_part(&params));
    let r = post()
        .header("Luna-Account-Id", ACCOUNT)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12022).await;
    // Over the archive limit.
    // Incompressible bytes, so the zip itself is over the limit.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..8 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let big = zip_of(&[("lambda.wasm", &noise)]);
    let r = s.create_raw(ACCOUNT, big, params.clone(), None).await;
    assert_error(r, 413, 12047).await;
    // Every problem of an invalid upload at once.
    let r = s
        .create_raw(
            ACCOUNT,
            zip_of(&[("../x", b"1"), ("readme", b"2")]),
            json!({"lambda_name": "bad name", "workers": 99}),
            Some(json!({"pod_count": 0, "namespace": "kube-system"})),
        )
        .await;
    let body = assert_error(r, 400, 42005).await;
    let detail = body["detail"].as_str().unwrap();
    for needle in [
        "lambda_name",
        "workers",
        "pod_count",
        "kube-system",
        "'..'",
        "neither",
    ] {
        assert!(detail.contains(needle), "{needle} missing from {detail}");
    }
    // Container archive without a container backend.
    let r = s
        .create_raw(
            ACCOUNT,
            zip_of(&[("lambda_main.py", b"def main(r):\n  return {}\n")]),
            params.clone(),
            None,
        )
        .await;
    let body = assert_error(r, 400, 42014).await;
    assert!(body["detail"].as_str().unwrap().contains("lambda.wasm"));
    // Unknown query parameter.
    let r = s
        .http
        .post(s.url("/1/lambdas?x=1"))
        .header("Luna-Account-Id", ACCOUNT)
        .multipart(upload_form(good(), params.clone(), None))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12012).await;
    // Nothing was stored by any of the above.
    let (_, list) = s.get_json("/1/lambdas").await;
    assert_eq!(list["lambdas"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn validate_reports_every_problem_of_bad_archives() {
    let s = Server::start(&[]);
    let validate = |archive: Vec<u8>| {
        let form = Form::new()
            .part(
                "archive",
                Part::bytes(archive).mime_str("application/zip").unwrap(),
            )
            .part("parameters", json_part(&json!({"lambda_name": "v"})));
        s.http
            .post(s.url("/1/lambdas/validate"))
            .multipart(form)
            .send()
    };
    let errors = |v: &Value| -> Vec<String> {
        v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    };

    let ok: Value = validate(fixture_zip()).await.unwrap().json().await.unwrap();
    assert_eq!(errors(&ok), Vec::<String>::new());

    let mut symlink = Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut symlink);
        w.add_symlink(
            "lambda.wasm",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.finish().unwrap();
    }
    let mut bomb = Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut bomb);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("lambda.wasm", opts).unwrap();
        std::io::Write::write_all(&mut w, &vec![0u8; 8 * 1024 * 1024]).unwrap();
        w.finish().unwrap();
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not a zip", b"hello".to_vec(), "not a valid zip"),
        (
            "path traversal",
            zip_of(&[("../../etc/x", b"1"), ("lambda.wasm", fixture_wasm())]),
            "'..'",
        ),
        ("symlink", symlink.into_inner(), "symbolic link"),
        ("zip bomb", bomb.into_inner(), "compression ratio"),
        (
            "broken wasm",
            zip_of(&[("lambda.wasm", b"\0asm\x0d\0\x01\0garbage-garbage")]),
            "not a valid component",
        ),
        (
            "core module",
            zip_of(&[("lambda.wasm", b"\0asm\x01\0\0\0")]),
            "core WebAssembly module",
        ),
        (
            "missing lambda.wasm",
            zip_of(&[("main.wasm", fixture_wasm())]),
            "neither 'lambda.wasm'",
        ),
        (
            "not wasm",
            zip_of(&[("lambda.wasm", b"#!/bin/sh")]),
            "not a WebAssembly binary",
        ),
    ];
    for (what, archive, needle) in cases {
        let r = validate(archive).await.unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let body: Value = r.json().await.unwrap();
        let found = errors(&body);
        assert!(
            found.iter().any(|e| e.contains(needle)),
            "{what}: {found:?}"
        );
    }
    // Several problems are all reported.
    let form = Form::new()
        .part(
            "archive",
            Part::bytes(zip_of(&[("/abs", b"1"), ("a/../b", b"2")]))
                .mime_str("application/zip")
                .unwrap(),
        )
        .part(
            "parameters",
            json_part(&json!({"lambda_name": "no spaces allowed", "workers": 0})),
        );
    let body: Value = s
        .http
        .post(s.url("/1/lambdas/validate"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(errors(&body).len() >= 4, "{body}");
    // Parameters are required.
    let form = Form::new().part(
        "archive",
        Part::bytes(fixture_zip())
            .mime_str("application/zip")
            .unwrap(),
    );
    let r = s
        .http
        .post(s.url("/1/lambdas/validate"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12014).await;
}

use std::io::Cursor;

#[tokio::test]
async fn list_filters_and_pagination() {
    let s = Server::start(&[]);
    let wasm = || fixture_zip();
    let a1 = s.create(ACCOUNT, "Alpha-One", wasm(), None).await;
    let a2 = s
        .create(
            ACCOUNT,
            "alpha-two",
            wasm(),
            Some(json!({"namespace": "team-a"})),
        )
        .await;
    let r = s
        .create_raw(
            ACCOUNT,
            wasm(),
            json!({"lambda_name": "beta", "lambda_type": "handlers"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 201);
    let b = s.create(OTHER_ACCOUNT, "alpha-other", wasm(), None).await;

    let ids = |v: &Value| -> Vec<String> {
        v["lambdas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lambda_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (code, all) = s.get_json("/1/lambdas?page_size=100").await;
    assert_eq!(code, 200);
    assert_eq!(ids(&all).len(), 4);
    // Newest first.
    assert_eq!(ids(&all)[0], b);
    let (_, mine) = s
        .get_json(&format!("/1/lambdas?account_id={ACCOUNT}"))
        .await;
    assert_eq!(ids(&mine).len(), 3);
    assert!(!ids(&mine).contains(&b));
    let (_, alpha) = s
        .get_json(&format!(
            "/1/lambdas?account_id={ACCOUNT}&lambda_name=ALPHA"
        ))
        .await;
    assert_eq!(ids(&alpha), vec![a2.clone(), a1.clone()]);
    let (_, handlers) = s.get_json("/1/lambdas?lambda_type=handlers").await;
    assert_eq!(ids(&handlers).len(), 1);
    assert_eq!(handlers["lambdas"][0]["lambda_type"], "handlers");
    let (_, ns) = s.get_json("/1/lambdas?namespace=team-a,other-ns").await;
    assert_eq!(ids(&ns), vec![a2.clone()]);
    let (_, page2) = s.get_json("/1/lambdas?page=2&page_size=3").await;
    assert_eq!(ids(&page2), vec![a1.clone()]);
    let (_, none) = s.get_json("/1/lambdas?page=9").await;
    assert!(ids(&none).is_empty());
    let created = all["lambdas"][3]["create_time"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, since) = s
        .get_json(&format!(
            "/1/lambdas?create_time__gte={}",
            urlencode(&created)
        ))
        .await;
    assert_eq!(ids(&since).len(), 4);
    let (_, before) = s
        .get_json(&format!(
            "/1/lambdas?create_time__lt={}",
            urlencode(&created)
        ))
        .await;
    assert!(ids(&before).is_empty());
    // The lambda object.
    let l = &mine["lambdas"][2];
    for key in [
        "account_id",
        "lambda_id",
        "lambda_name",
        "description",
        "version",
        "info",
        "lambda_type",
        "runtime",
        "create_time",
        "last_update_time",
        "additional_user_docker_commands",
        "base_image",
        "workers",
        "deploy_parameters",
    ] {
        assert!(l.get(key).is_some(), "{key} missing in {l}");
    }
    assert_eq!(l["runtime"], "wasm");
    assert_eq!(l["deploy_parameters"]["namespace"], "default");
    assert!(l["deploy_parameters"]["sandbox"]["memory_limit_mb"].is_u64());
    assert!(l.get("credentials").is_none());
    assert!(!all.to_string().contains("hunter2"));

    for bad in [
        "page=0",
        "page_size=101",
        "page_size=x",
        "account_id=nope",
        "lambda_type=other",
        "namespace=Bad_NS",
        "create_time__lt=yesterday",
        "unknown=1",
    ] {
        let r = s.get(&format!("/1/lambdas?{bad}")).await;
        let body = assert_error(r, 400, 12012).await;
        let name = bad.split('=').next().unwrap();
        assert!(body["detail"].as_str().unwrap().contains(name), "{body}");
    }
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn get_head_patch_and_delete() {
    let s = Server::start(&[]);
    let id = s.create(ACCOUNT, "first", fixture_zip(), None).await;
    let other = s.create(ACCOUNT, "second", fixture_zip(), None).await;

    let (code, l) = s.get_json(&format!("/1/lambdas/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (l["lambda_name"].as_str(), l["version"].as_u64()),
        (Some("first"), Some(1))
    );
    let r = s
        .http
        .head(s.url(&format!("/1/lambdas/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let missing = "e63e2a1f-f505-441c-8e11-b2dcd0385329";
    let r = s
        .http
        .head(s.url(&format!("/1/lambdas/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body = assert_error(s.get(&format!("/1/lambdas/{missing}")).await, 404, 42001).await;
    assert_eq!(
        body["detail"],
        format!("Lambda with id '{missing}' not found")
    );
    assert_error(s.get("/1/lambdas/not-a-uuid").await, 404, 42001).await;

    let patch = |id: &str, account: Option<&str>| {
        let mut rb = s.http.patch(s.url(&format!("/1/lambdas/{id}")));
        if let Some(a) = account {
            rb = rb.header("Luna-Account-Id", a);
        }
        rb
    };
    let r = patch(&id, Some(ACCOUNT))
        .json(&json!({"lambda_name": "renamed", "description": "very useful lambda"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, l) = s.get_json(&format!("/1/lambdas/{id}")).await;
    assert_eq!(
        (l["lambda_name"].as_str(), l["description"].as_str()),
        (Some("renamed"), Some("very useful lambda"))
    );
    // The old name is free again, the new one taken.
    let r = patch(&other, Some(ACCOUNT))
        .json(&json!({"lambda_name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, 42003).await;
    let r = patch(&other, Some(ACCOUNT))
        .json(&json!({"lambda_name": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = patch(&id, None).json(&json!({})).send().await.unwrap();
    assert_error(r, 400, 11066).await;
    let r = patch(&id, Some(ACCOUNT))
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12002).await;
    let r = patch(&id, Some(ACCOUNT))
        .header("Content-Type", "text/plain")
        .body("plain")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12017).await;
    let r = s
        .http
        .get(s.url("/1/docs/spec"))
        .header("Accept", "*/*")
        .send()
        .await
        .unwrap();
    assert!(
        r.text().await.unwrap().starts_with("openapi:"),
        "curl's */* gets YAML"
    );
    let r = patch(&id, Some(ACCOUNT))
        .json(&json!({"lambda_name": "a b"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12022).await;
    let r = patch(&id, Some(ACCOUNT))
        .json(&json!({"description": "d".repeat(257)}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12022).await;
    let r = patch(&id, Some(ACCOUNT))
        .json(&json!({"version": 3}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, 12022).await;
    let r = patch(missing, Some(ACCOUNT))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, 42001).await;
    // Duplicate name on create.
    let r = s
        .create_raw(
            ACCOUNT,
            fixture_zip(),
            json!({"lambda_name": "renamed"}),
            None,
        )
        .await;
    assert_error(r, 409, 42003).await;
    // Same name in another account is fine.
    s.create(OTHER_ACCOUNT, "renamed", fixture_zip(), None)
        .await;

    let r = s
        .http
        .delete(s.url(&format!("/1/lambdas/{id}?account_id={ACCOUNT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_error(s.get(&format!("/1/lambdas/{id}")).await, 404, 42001).await;
    let r = s
        .http
        .delete(s.url(&format!("/1/lambdas/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, 42001).await;
}

#[tokio::test]
async fn documents_config_plugins_metrics_health() {
    let s = Server::start(&[(
        "LUNA_LAMBDA_ENCRYPTION_KEY",
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=",
    )]);
    let get_accept =
        |path: &str, accept: &str| s.http.get(s.url(path)).header("Accept", accept).send();

    let r = get_accept("/1/docs/spec", "application/x-yaml")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("yaml")
    );
    assert!(r.text().await.unwrap().starts_with("openapi:"));
    let r = get_accept("/1/docs/spec", "text/html").await.unwrap();
    let html = r.text().await.unwrap();
    assert!(
        html.contains("/1/lambdas/{lambda_id}/proxy")
            && !html.contains("<script")
            && !html.contains("<link")
    );
    assert_error(
        get_accept("/1/docs/spec", "application/json")
            .await
            .unwrap(),
        415,
        12024,
    )
    .await;

    let r = s.http.get(s.url("/1/docs/dev")).send().await.unwrap();
    // reqwest follows the redirect to the manual's index.
    assert_eq!(r.url().path(), "/1/docs/dev/index.html");
    let html = r.text().await.unwrap();
    for page in [
        "writing.html",
        "sdk.html",
        "python.html",
        "packing.html",
        "validating.html",
        "deploying.html",
        "calling.html",
        "debugging.html",
    ] {
        assert!(html.contains(page), "index links {page}");
        let r = s.get(&format!("/1/docs/dev/{page}")).await;
        assert_eq!(r.status(), 200, "{page}");
    }
    assert_error(s.get("/1/docs/dev/nope.html").await, 404, 12001).await;

    let (code, config) = s.get_json("/1/config").await;
    assert_eq!(code, 200);
    assert_eq!(config["encryption_key"], "********");
    assert!(!config.to_string().contains("c2VjcmV0"));
    let text = get_accept("/1/config", "text/plain")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("********") && !text.contains("c2VjcmV0"));
    assert_error(
        get_accept("/1/config", "image/png").await.unwrap(),
        415,
        12024,
    )
    .await;

    let (code, plugins) = s.get_json("/1/plugins").await;
    assert_eq!(code, 200);
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"].is_string() && p["running"].is_u64())
    );

    let (code, health) = s.get_json("/1/healthcheck").await;
    assert_eq!(code, 200, "{health}");
    assert!(health["execution_time"].is_f64());
    let (code, _) = s.get_json("/healthcheck?include_luna_services=1").await;
    assert_eq!(code, 200);
    // Concurrent probes do not trip over each other's store key or probe file (found by
    // schemathesis: two at once answered 502 "the store cannot be written").
    let probes = (0..16).map(|_| s.get_json("/healthcheck"));
    for (code, body) in futures::future::join_all(probes).await {
        assert_eq!(code, 200, "{body}");
    }
    assert_error(
        s.get("/healthcheck?include_luna_services=2").await,
        400,
        12012,
    )
    .await;

    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"request_count_total{path="GET:/1/healthcheck",status_code="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"errors_count_total{error_code="12012",path="GET:/healthcheck"}"#),
        "{text}"
    );
    assert!(text.contains("request_duration_seconds_bucket"));
}

#[tokio::test]
async fn healthcheck_reports_an_unusable_store() {
    let s = Server::start(&[]);
    let (code, _) = s.get_json("/healthcheck").await;
    assert_eq!(code, 200);
    std::fs::remove_dir_all(&s.data_dir).unwrap();
    let (code, body) = s.get_json("/healthcheck").await;
    assert_eq!(code, 502, "{body}");
    assert_eq!(body["errors"][0]["component"], "store");
    assert!(
        !body.to_string().contains(s.data_dir.to_str().unwrap()),
        "no paths leak: {body}"
    );
    assert!(body["execution_time"].is_f64());
}

#[test]
fn a_bad_setting_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, needle) in [
        (
            "LUNA_LAMBDA_SANDBOX_MEMORY_LIMIT_MB",
            "lots",
            "LUNA_LAMBDA_SANDBOX_MEMORY_LIMIT_MB",
        ),
        (
            "LUNA_LAMBDA_NO_SUCH_SETTING",
            "1",
            "LUNA_LAMBDA_NO_SUCH_SETTING",
        ),
        (
            "LUNA_LAMBDA_CONTAINER_BACKEND",
            "podman",
            "container_backend",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_luna-lambda"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_luna-lambda"))
        .args(["serve", "--config", "/nonexistent/luna.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("/nonexistent/luna.toml")
    );
}

/// An upload cut off by the client leaves nothing: no lambda, no archive file, and the
/// service goes on serving uploads.
#[tokio::test]
async fn an_upload_cut_off_midway_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start(&[]);
    let address = s.base.trim_start_matches("http://").to_owned();
    let archive = zip_of(&[(
        "lambda.wasm",
        &incompressible(200_000, 0x2545_f491_4f6c_dd1d),
    )]);
    for cut in [10, 1_000, 100_000, archive.len() - 10] {
        let boundary = "cut";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"parameters\"\r\nContent-Type: application/json\r\n\r\n{{\"lambda_name\":\"cut{cut}\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"credentials\"\r\nContent-Type: application/json\r\n\r\n{{\"token\":\"t\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"a.zip\"\r\nContent-Type: application/zip\r\n\r\n"
            )
            .as_bytes(),
        );
        let declared = body.len() + archive.len() + format!("\r\n--{boundary}--\r\n").len();
        body.extend_from_slice(&archive[..cut]);
        let head = format!(
            "POST /1/lambdas HTTP/1.1\r\nHost: x\r\nLuna-Account-Id: {ACCOUNT}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
        );
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&body).await.unwrap();
        drop(socket);
    }
    // A complete upload after them is served, so the cut ones have been dealt with.
    let whole = zip_of(&[("lambda.wasm", b"\0asm\x0d\0\x01\0")]);
    let r = s
        .create_raw(ACCOUNT, whole, json!({"lambda_name": "whole"}), None)
        .await;
    assert_eq!(r.status(), 201);
    let (_, list) = s.get_json("/1/lambdas").await;
    let names: Vec<&str> = list["lambdas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lambda_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["whole"]);
    let archives: Vec<String> = std::fs::read_dir(s.data_dir.join("archives"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        archives.len(),
        1,
        "only the whole upload's archive: {archives:?}"
    );
}
