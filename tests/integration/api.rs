//! Management routes: shapes, headers, query rules and every input error code.

use reqwest::Method;
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
        .call(Method::GET, "/version")
        .header("Luna-Request-Id", given)
        .send()
        .await;
    assert_eq!(r.headers()["luna-request-id"], given);

    for path in ["/version", "/1/lambdas", "/1/lambdas/x/proxy/hello"] {
        let r = s
            .call(Method::GET, path)
            .header("Luna-Request-Id", "not-an-id")
            .send()
            .await;
        let body = assert_error(r, 400, 12031).await;
        assert!(body["detail"].as_str().unwrap().contains("Luna-Request-Id"));
    }
    assert_error(s.get("/version?x=1").await, 400, 12012).await;
    assert_error(s.get("/nope").await, 404, 12001).await;
    let r = s.call(Method::DELETE, "/version").send().await;
    assert_error(r, 405, 12005).await;
    // An unknown route or method is reported before a malformed request id.
    let trace = Method::from_bytes(b"TRACE").unwrap();
    for (method, path, status, code) in [
        (Method::DELETE, "/version", 405, 12005),
        (trace.clone(), "/1/config", 405, 12005),
        (trace, "/1/lambdas/x/proxy/hello", 405, 12005),
        (Method::GET, "/nope", 404, 12001),
    ] {
        let r = s
            .call(method, path)
            .header("Luna-Request-Id", "0")
            .send()
            .await;
        if status == 405 {
            assert!(
                r.headers().contains_key("allow"),
                "405 on {path} lists Allow"
            );
        }
        assert_error(r, status, code).await;
    }
}

/// The smallest archive the upload check accepts as a component (the header only).
fn header_only_zip() -> Vec<u8> {
    zip_of(&[("lambda.wasm", b"\0asm\x0d\0\x01\0")])
}

/// A create of `upload` as `ACCOUNT` is refused with `status` and `code`; returns the
/// error's detail.
async fn refused_create(s: &Server, upload: Upload, status: u16, code: u64) -> String {
    let r = s.create_raw(ACCOUNT, upload).await;
    let body = assert_error(r, status, code).await;
    body["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_rejects_bad_input_with_luna_codes() {
    let s = Server::start(&[("LUNA_LAMBDA_LIMITS_MAX_ARCHIVE_BYTES", "4096")]);
    the_account_header_is_checked_first(&s).await;
    the_body_must_be_multipart_with_every_part_typed(&s).await;
    json_parts_are_parsed_strictly(&s).await;
    an_archive_over_the_limit_is_too_large(&s).await;
    an_invalid_upload_reports_every_problem_at_once(&s).await;
    a_container_archive_needs_a_container_backend(&s).await;
    let r = s
        .call(Method::POST, "/1/lambdas?x=1")
        .account(ACCOUNT)
        .upload(Upload::new(header_only_zip()))
        .send()
        .await;
    assert_error(r, 400, 12012).await;
    // Nothing was stored by any of the above.
    let (_, list) = s.get_json("/1/lambdas").await;
    assert_eq!(list["lambdas"].as_array().unwrap().len(), 0);
}

async fn the_account_header_is_checked_first(s: &Server) {
    let upload = || Upload::new(header_only_zip());
    let r = s
        .call(Method::POST, "/1/lambdas")
        .upload(upload())
        .send()
        .await;
    assert_error(r, 400, 11066).await;
    let r = s.create_raw("nope", upload()).await;
    assert_error(r, 400, 11037).await;
}

async fn the_body_must_be_multipart_with_every_part_typed(s: &Server) {
    let r = s
        .call(Method::POST, "/1/lambdas")
        .account(ACCOUNT)
        .json(&json!({"lambda_name": "x"}))
        .send()
        .await;
    assert_error(r, 400, 12017).await;
    let upload = || Upload::new(header_only_zip());
    let missing = refused_create(s, upload().without_archive(), 400, 12014).await;
    assert!(missing.contains("archive"), "{missing}");
    let missing = refused_create(s, upload().without_credentials(), 400, 12014).await;
    assert!(missing.contains("credentials"), "{missing}");
    let mistyped = refused_create(s, upload().archive_type("text/plain"), 400, 12041).await;
    assert!(mistyped.contains("'archive'"), "{mistyped}");
    refused_create(s, upload().extra_part("extra", json!({})), 400, 12046).await;
}

async fn json_parts_are_parsed_strictly(s: &Server) {
    let upload = || Upload::new(header_only_zip());
    for (bad, needle) in [
        (upload().parameters_text("{"), "parameters"),
        (
            upload().parameters(json!({"lambda_name": "x", "nope": 1})),
            "nope",
        ),
        (
            upload().parameters(json!({"lambda_name": "x", "workers": "many"})),
            "parameters.workers",
        ),
    ] {
        let detail = refused_create(s, bad, 400, 12022).await;
        assert!(detail.contains(needle), "{detail}");
    }
    let unknown_credentials = upload().credentials(json!({"user": "x"}));
    refused_create(s, unknown_credentials, 400, 12022).await;
}

async fn an_archive_over_the_limit_is_too_large(s: &Server) {
    // Incompressible bytes, so the zip itself is over the 4 KiB limit.
    let big = zip_of(&[("lambda.wasm", &incompressible(8 * 1024, 0x9E37_79B9))]);
    refused_create(s, Upload::new(big), 413, 12047).await;
}

async fn an_invalid_upload_reports_every_problem_at_once(s: &Server) {
    let upload = Upload::new(zip_of(&[("../x", b"1"), ("readme", b"2")]))
        .parameters(json!({"lambda_name": "bad name", "workers": 99}))
        .deploy(json!({"pod_count": 0, "namespace": "kube-system"}));
    let detail = refused_create(s, upload, 400, 42005).await;
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
}

async fn a_container_archive_needs_a_container_backend(s: &Server) {
    let python = zip_of(&[("lambda_main.py", b"def main(r):\n  return {}\n")]);
    let detail = refused_create(s, Upload::new(python), 400, 42014).await;
    assert!(detail.contains("lambda.wasm"), "{detail}");
}

/// `POST /1/lambdas/validate` of `upload`: the problems it reports (asserting 200).
async fn validation_errors(s: &Server, upload: Upload) -> Vec<String> {
    let (status, body) = s
        .call(Method::POST, "/1/lambdas/validate")
        .upload(upload.without_credentials())
        .send_json()
        .await;
    assert_eq!(status, 200, "{body}");
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

/// A zip whose `lambda.wasm` is a symbolic link to `/etc/passwd`.
fn symlink_zip() -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default();
    w.add_symlink("lambda.wasm", "/etc/passwd", options)
        .unwrap();
    w.finish().unwrap();
    out.into_inner()
}

/// 8 MiB of zeros deflated to a few KiB.
fn zip_bomb() -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("lambda.wasm", options).unwrap();
    std::io::Write::write_all(&mut w, &vec![0u8; 8 * 1024 * 1024]).unwrap();
    w.finish().unwrap();
    out.into_inner()
}

#[tokio::test]
async fn validate_reports_every_problem_of_bad_archives() {
    let s = Server::start(&[]);
    let validate = |archive: Vec<u8>| validation_errors(&s, Upload::new(archive).named("v"));

    assert_eq!(validate(fixture_zip()).await, Vec::<String>::new());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not a zip", b"hello".to_vec(), "not a valid zip"),
        (
            "path traversal",
            zip_of(&[("../../etc/x", b"1"), ("lambda.wasm", fixture_wasm())]),
            "'..'",
        ),
        ("symlink", symlink_zip(), "symbolic link"),
        ("zip bomb", zip_bomb(), "compression ratio"),
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
        let found = validate(archive).await;
        assert!(
            found.iter().any(|e| e.contains(needle)),
            "{what}: {found:?}"
        );
    }

    // Several problems are all reported.
    let several = Upload::new(zip_of(&[("/abs", b"1"), ("a/../b", b"2")]))
        .parameters(json!({"lambda_name": "no spaces allowed", "workers": 0}));
    let found = validation_errors(&s, several).await;
    assert!(found.len() >= 4, "{found:?}");
    // Parameters are required.
    let r = s
        .call(Method::POST, "/1/lambdas/validate")
        .upload(
            Upload::new(fixture_zip())
                .without_credentials()
                .without_parameters(),
        )
        .send()
        .await;
    assert_error(r, 400, 12014).await;
}

use std::io::Cursor;

/// The ids `GET /1/lambdas?<query>` lists (asserting 200).
async fn listed(s: &Server, query: &str) -> Vec<String> {
    let (code, list) = s.get_json(&format!("/1/lambdas?{query}")).await;
    assert_eq!(code, 200, "{query}: {list}");
    listed_ids(&list)
}

#[tokio::test]
async fn list_filters_and_pagination() {
    let s = Server::start(&[]);
    // Created oldest first: Alpha-One, alpha-two (namespace team-a), beta (handlers) in
    // ACCOUNT, then alpha-other in OTHER_ACCOUNT.
    let a1 = s.create(ACCOUNT, "Alpha-One", fixture_zip(), None).await;
    let team_a = Some(json!({"namespace": "team-a"}));
    let a2 = s.create(ACCOUNT, "alpha-two", fixture_zip(), team_a).await;
    let handlers = Upload::new(fixture_zip())
        .parameters(json!({"lambda_name": "beta", "lambda_type": "handlers"}));
    created_id(s.create_raw(ACCOUNT, handlers).await).await;
    let b = s
        .create(OTHER_ACCOUNT, "alpha-other", fixture_zip(), None)
        .await;

    let (_, all) = s.get_json("/1/lambdas?page_size=100").await;
    assert_eq!(listed_ids(&all).len(), 4);
    assert_eq!(listed_ids(&all)[0], b, "newest first");
    filters_select_by_account_name_type_and_namespace(&s, [&a1, &a2, &b]).await;
    pages_count_from_one(&s, &a1).await;
    creation_time_bounds_are_inclusive_below(&s, &all).await;
    a_listed_lambda_has_every_field_and_no_credentials(&s, &all).await;
    bad_queries_name_the_parameter(&s).await;
}

async fn filters_select_by_account_name_type_and_namespace(s: &Server, [a1, a2, b]: [&String; 3]) {
    let mine = listed(s, &format!("account_id={ACCOUNT}")).await;
    assert_eq!(mine.len(), 3);
    assert!(!mine.contains(b));
    let alpha = listed(s, &format!("account_id={ACCOUNT}&lambda_name=ALPHA")).await;
    assert_eq!(alpha, vec![a2.clone(), a1.clone()]);
    let (_, handlers) = s.get_json("/1/lambdas?lambda_type=handlers").await;
    assert_eq!(listed_ids(&handlers).len(), 1);
    assert_eq!(handlers["lambdas"][0]["lambda_type"], "handlers");
    let in_namespaces = listed(s, "namespace=team-a,other-ns").await;
    assert_eq!(in_namespaces, vec![a2.clone()]);
}

async fn pages_count_from_one(s: &Server, oldest: &str) {
    assert_eq!(listed(s, "page=2&page_size=3").await, vec![oldest]);
    assert!(listed(s, "page=9").await.is_empty());
}

async fn creation_time_bounds_are_inclusive_below(s: &Server, all: &Value) {
    let oldest = all["lambdas"][3]["create_time"].as_str().unwrap();
    let since = listed(s, &format!("create_time__gte={}", urlencode(oldest))).await;
    assert_eq!(since.len(), 4);
    let before = listed(s, &format!("create_time__lt={}", urlencode(oldest))).await;
    assert!(before.is_empty());
}

async fn a_listed_lambda_has_every_field_and_no_credentials(s: &Server, all: &Value) {
    let (_, mine) = s
        .get_json(&format!("/1/lambdas?account_id={ACCOUNT}"))
        .await;
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
}

async fn bad_queries_name_the_parameter(s: &Server) {
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

const MISSING: &str = "e63e2a1f-f505-441c-8e11-b2dcd0385329";

/// `PATCH /1/lambdas/{id}` with a JSON body as `ACCOUNT`.
async fn patch(s: &Server, id: &str, body: Value) -> reqwest::Response {
    s.call(Method::PATCH, &format!("/1/lambdas/{id}"))
        .account(ACCOUNT)
        .json(&body)
        .send()
        .await
}

#[tokio::test]
async fn get_head_patch_and_delete() {
    let s = Server::start(&[]);
    let id = s.create(ACCOUNT, "first", fixture_zip(), None).await;
    let other = s.create(ACCOUNT, "second", fixture_zip(), None).await;

    a_lambda_is_read_by_id_and_a_missing_one_is_404(&s, &id).await;
    a_patch_renames_and_describes(&s, &id).await;
    names_are_unique_within_an_account(&s, &other).await;
    a_bad_patch_is_refused(&s, &id).await;

    let r = s
        .call(
            Method::DELETE,
            &format!("/1/lambdas/{id}?account_id={ACCOUNT}"),
        )
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_error(s.get(&format!("/1/lambdas/{id}")).await, 404, 42001).await;
    assert_error(s.delete_lambda(&id).await, 404, 42001).await;
}

async fn a_lambda_is_read_by_id_and_a_missing_one_is_404(s: &Server, id: &str) {
    let (code, l) = s.get_json(&format!("/1/lambdas/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (l["lambda_name"].as_str(), l["version"].as_u64()),
        (Some("first"), Some(1))
    );
    let head = |id: String| s.call(Method::HEAD, &format!("/1/lambdas/{id}")).send();
    assert_eq!(head(id.to_owned()).await.status(), 200);
    assert_eq!(head(MISSING.to_owned()).await.status(), 404);
    let body = assert_error(s.get(&format!("/1/lambdas/{MISSING}")).await, 404, 42001).await;
    assert_eq!(
        body["detail"],
        format!("Lambda with id '{MISSING}' not found")
    );
    assert_error(s.get("/1/lambdas/not-a-uuid").await, 404, 42001).await;
}

async fn a_patch_renames_and_describes(s: &Server, id: &str) {
    let r = patch(
        s,
        id,
        json!({"lambda_name": "renamed", "description": "very useful lambda"}),
    )
    .await;
    assert_eq!(r.status(), 204);
    let (_, l) = s.get_json(&format!("/1/lambdas/{id}")).await;
    assert_eq!(
        (l["lambda_name"].as_str(), l["description"].as_str()),
        (Some("renamed"), Some("very useful lambda"))
    );
}

async fn names_are_unique_within_an_account(s: &Server, other: &str) {
    // The new name is taken, the old one free again.
    let r = patch(s, other, json!({"lambda_name": "renamed"})).await;
    assert_error(r, 409, 42003).await;
    let r = patch(s, other, json!({"lambda_name": "first"})).await;
    assert_eq!(r.status(), 204);
    let r = s
        .create_raw(ACCOUNT, Upload::new(fixture_zip()).named("renamed"))
        .await;
    assert_error(r, 409, 42003).await;
    // The same name in another account is fine.
    s.create(OTHER_ACCOUNT, "renamed", fixture_zip(), None)
        .await;
}

async fn a_bad_patch_is_refused(s: &Server, id: &str) {
    let path = format!("/1/lambdas/{id}");
    let r = s.call(Method::PATCH, &path).json(&json!({})).send().await;
    assert_error(r, 400, 11066).await;
    let plain = || s.call(Method::PATCH, &path).account(ACCOUNT).body("plain");
    assert_error(plain().send().await, 400, 12002).await;
    let r = plain().header("Content-Type", "text/plain").send().await;
    assert_error(r, 400, 12017).await;
    for body in [
        json!({"lambda_name": "a b"}),
        json!({"description": "d".repeat(257)}),
        json!({"version": 3}),
    ] {
        assert_error(patch(s, id, body).await, 400, 12022).await;
    }
    assert_error(patch(s, MISSING, json!({})).await, 404, 42001).await;
}

/// `GET path` with an `Accept` header.
async fn get_accepting(s: &Server, path: &str, accept: &str) -> reqwest::Response {
    s.call(Method::GET, path)
        .header("Accept", accept)
        .send()
        .await
}

#[tokio::test]
async fn documents_config_plugins_metrics_health() {
    let s = Server::start(&[(
        "LUNA_LAMBDA_ENCRYPTION_KEY",
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=",
    )]);
    the_spec_is_served_as_yaml_or_html(&s).await;
    the_manual_links_every_page(&s).await;
    the_configuration_hides_the_key(&s).await;
    let (code, plugins) = s.get_json("/1/plugins").await;
    assert_eq!(code, 200);
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"].is_string() && p["running"].is_u64())
    );
    health_answers_under_concurrent_probes(&s).await;
    metrics_count_requests_and_errors_by_route(&s).await;
}

async fn the_spec_is_served_as_yaml_or_html(s: &Server) {
    let r = get_accepting(s, "/1/docs/spec", "application/x-yaml").await;
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.contains("yaml"), "{content_type}");
    assert!(r.text().await.unwrap().starts_with("openapi:"));
    let html = get_accepting(s, "/1/docs/spec", "text/html").await;
    let html = html.text().await.unwrap();
    assert!(
        html.contains("/1/lambdas/{lambda_id}/proxy")
            && !html.contains("<script")
            && !html.contains("<link")
    );
    let any = get_accepting(s, "/1/docs/spec", "*/*").await;
    assert!(
        any.text().await.unwrap().starts_with("openapi:"),
        "curl's */* gets YAML"
    );
    let json = get_accepting(s, "/1/docs/spec", "application/json").await;
    assert_error(json, 415, 12024).await;
}

async fn the_manual_links_every_page(s: &Server) {
    let r = s.get("/1/docs/dev").await;
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
}

async fn the_configuration_hides_the_key(s: &Server) {
    let (code, config) = s.get_json("/1/config").await;
    assert_eq!(code, 200);
    assert_eq!(config["encryption_key"], "********");
    assert!(!config.to_string().contains("c2VjcmV0"));
    let text = get_accepting(s, "/1/config", "text/plain").await;
    let text = text.text().await.unwrap();
    assert!(text.contains("********") && !text.contains("c2VjcmV0"));
    let png = get_accepting(s, "/1/config", "image/png").await;
    assert_error(png, 415, 12024).await;
}

async fn health_answers_under_concurrent_probes(s: &Server) {
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
    let r = s.get("/healthcheck?include_luna_services=2").await;
    assert_error(r, 400, 12012).await;
}

async fn metrics_count_requests_and_errors_by_route(s: &Server) {
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
        .create_raw(ACCOUNT, Upload::new(whole).named("whole"))
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
