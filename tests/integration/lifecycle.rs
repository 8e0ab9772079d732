//! The lambda lifecycle: build job statuses and logs, versions, recreate / update
//! with the atomic swap, failed rebuilds, delete, and image-job retention.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

fn broken_component() -> Vec<u8> {
    // Passes the header check at upload, fails in the background compile.
    zip_of(&[(
        "lambda.wasm",
        b"\0asm\x0d\0\x01\0this is not a component body",
    )])
}

/// Native-code files in the compilation cache.
fn compiled_artifacts(data_dir: &std::path::Path) -> usize {
    let modules = data_dir.join("artifacts/modules");
    std::fs::read_dir(&modules)
        .map(|dirs| {
            dirs.flatten()
                .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
                .filter(|f| !f.file_name().to_string_lossy().ends_with(".stats"))
                .count()
        })
        .unwrap_or(0)
}

async fn serving_version(s: &Server, id: &str) -> u64 {
    let r = s.proxy(Method::GET, id, "/hello").await;
    assert_eq!(r.status(), 200);
    r.headers()["lambda-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn full_lifecycle_with_versions() {
    let s = Server::start(&[]);
    let id = s.create(ACCOUNT, "life", fixture_zip(), None).await;
    the_build_reports_its_stages_and_the_lambda_runs(&s, &id).await;
    a_call_answers_and_the_guest_output_reaches_the_logs(&s, &id).await;
    a_recreate_serves_version_2_from_the_compile_cache(&s, &id).await;
    // Update: version 3, same archive.
    let r = s.update(&id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 3);
    assert_eq!(s.wait_image(&id).await, "completed");
    assert_eq!(serving_version(&s, &id).await, 3);
    recreate_and_update_refuse_bad_requests(&s, &id).await;
    a_delete_stops_serving_and_removes_everything_it_owns(&s, &id).await;
}

async fn the_build_reports_its_stages_and_the_lambda_runs(s: &Server, id: &str) {
    let (_, image) = s.get_json(&format!("/1/lambdas/{id}/image/status")).await;
    assert!(
        ["pending", "in_progress", "completed"].contains(&image["status"].as_str().unwrap()),
        "{image}"
    );
    let status = s.wait_status(id, "running").await;
    assert_eq!(status["pod_statuses"]["0"], "running");
    assert_eq!(s.wait_image(id).await, "completed");
    let (_, logs) = s.get_json(&format!("/1/lambdas/{id}/image/logs")).await;
    let text = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "archive checked",
        "sha256",
        "compiled with Cranelift",
        "build completed",
        "bytes",
    ] {
        assert!(text.contains(needle), "{needle} not in image logs:\n{text}");
    }
    let (_, tail) = s
        .get_json(&format!("/1/lambdas/{id}/image/logs?tail_lines=1"))
        .await;
    assert_eq!(tail["logs"].as_array().unwrap().len(), 1);
}

async fn a_call_answers_and_the_guest_output_reaches_the_logs(s: &Server, id: &str) {
    let r = s.proxy(Method::GET, id, "/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["lambda-version"], "1");
    let rid = r.headers()["luna-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "Hello from luna-lambda\n");

    // Guest stdout/stderr reach the lambda's logs with the request id.
    eventually(
        "the guest's stdout and stderr lines in its logs",
        || async {
            let (code, logs) = s.get_json(&format!("/1/lambdas/{id}/logs")).await;
            assert_eq!(code, 200);
            let lines = logs["logs"]["0"].as_array().unwrap();
            let has = |needle: &str| lines.iter().any(|l| l.as_str().unwrap().contains(needle));
            if has(&format!("[{rid}] stdout: hello called"))
                && has(&format!("[{rid}] stderr: hello on stderr"))
            {
                Ok(())
            } else {
                Err(logs)
            }
        },
    )
    .await;
    let (_, tail) = s
        .get_json(&format!("/1/lambdas/{id}/logs?tail_lines=1"))
        .await;
    assert_eq!(tail["logs"]["0"].as_array().unwrap().len(), 1);
    assert_error(
        s.get(&format!("/1/lambdas/{id}/logs?tail_lines=-1")).await,
        400,
        12012,
    )
    .await;
}

async fn a_recreate_serves_version_2_from_the_compile_cache(s: &Server, id: &str) {
    let r = s
        .recreate(id, fixture_zip(), json!({"description": "second"}))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(s.wait_image(id).await, "completed");
    assert_eq!(serving_version(s, id).await, 2);
    let (_, l) = s.get_json(&format!("/1/lambdas/{id}")).await;
    assert_eq!(
        (l["version"].as_u64(), l["description"].as_str()),
        (Some(2), Some("second"))
    );
    let (_, logs) = s.get_json(&format!("/1/lambdas/{id}/image/logs")).await;
    assert!(
        logs.to_string().contains("cache hit"),
        "same component again is a cache hit: {logs}"
    );
}

async fn recreate_and_update_refuse_bad_requests(s: &Server, id: &str) {
    let missing = "e63e2a1f-f505-441c-8e11-b2dcd0385329";
    assert_error(s.update(missing).await, 404, 42001).await;
    assert_error(
        s.recreate(missing, fixture_zip(), json!({})).await,
        404,
        42001,
    )
    .await;
    let r = s
        .call(Method::POST, &format!("/1/lambdas/{id}/update"))
        .send()
        .await;
    assert_error(r, 400, 11066).await;
    let r = s.recreate(id, zip_of(&[("x", b"1")]), json!({})).await;
    assert_error(r, 400, 42005).await;
}

async fn a_delete_stops_serving_and_removes_everything_it_owns(s: &Server, id: &str) {
    assert_eq!(compiled_artifacts(&s.data_dir), 1);
    let archives_before = std::fs::read_dir(s.data_dir.join("archives"))
        .unwrap()
        .count();
    assert!(archives_before >= 1);
    let r = s
        .call(Method::DELETE, &format!("/1/lambdas/{id}"))
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_error(s.proxy(Method::GET, id, "/hello").await, 404, 42001).await;
    assert_error(s.get(&format!("/1/lambdas/{id}/logs")).await, 404, 42001).await;
    assert_error(
        s.get(&format!("/1/lambdas/{id}/image/status")).await,
        404,
        42001,
    )
    .await;
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("archives"))
            .unwrap()
            .count(),
        0,
        "archive removed"
    );
    assert_eq!(
        compiled_artifacts(&s.data_dir),
        0,
        "compiled artifact removed"
    );
    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(
        !text.contains(&format!("lambda_id=\"{id}\"")),
        "series of the deleted lambda remain"
    );
}

#[tokio::test]
async fn failed_rebuild_keeps_the_old_version_serving() {
    let s = Server::start(&[]);
    let id = s.running_fixture(ACCOUNT, "keeper", None).await;
    let r = s.recreate(&id, broken_component(), json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.wait_image(&id).await, "error");
    let (_, logs) = s.get_json(&format!("/1/lambdas/{id}/image/logs")).await;
    let text = logs.to_string();
    assert!(
        text.contains("build failed") && text.contains("version 1 keeps serving"),
        "{text}"
    );
    let (_, status) = s.get_json(&format!("/1/lambdas/{id}/status")).await;
    assert_eq!(status["status"], "running");
    assert_eq!(serving_version(&s, &id).await, 1);
    let (_, l) = s.get_json(&format!("/1/lambdas/{id}")).await;
    assert_eq!(l["version"], 1);
    // The next attempt gets the next version number.
    let r = s.recreate(&id, fixture_zip(), json!({})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 3);
    assert_eq!(s.wait_image(&id).await, "completed");
    assert_eq!(serving_version(&s, &id).await, 3);

    // A first build that fails leaves the lambda failed, and the proxy says so.
    let bad = s.create(ACCOUNT, "broken", broken_component(), None).await;
    s.wait_status(&bad, "failed").await;
    let body = assert_error(s.proxy(Method::GET, &bad, "/hello").await, 503, 42007).await;
    assert!(body["detail"].as_str().unwrap().contains("failed"));
    let (_, logs) = s.get_json(&format!("/1/lambdas/{bad}/logs")).await;
    assert!(
        logs.to_string().contains("build of version 1 failed"),
        "{logs}"
    );
}

#[tokio::test]
async fn rebuild_while_building_is_refused() {
    let s = Server::start(&[("LUNA_LAMBDA_BUILDS_MAX_CONCURRENT", "1")]);
    // Builds of distinct components (real compiles) queue behind one slot, so the
    // last of several is still pending when it is asked to rebuild.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            s.create(ACCOUNT, &format!("q{i}"), distinct_fixture_zip(i), None)
                .await,
        );
    }
    let last = ids.last().unwrap();
    let (_, image) = s.get_json(&format!("/1/lambdas/{last}/image/status")).await;
    if image["status"] == "pending" || image["status"] == "in_progress" {
        let body = assert_error(s.update(last).await, 409, 42006).await;
        assert!(body["detail"].as_str().unwrap().contains("being built"));
        assert_error(s.recreate(last, fixture_zip(), json!({})).await, 409, 42006).await;
    } else {
        panic!("four queued builds finished before the first status read: {image}");
    }
    for id in &ids {
        assert_eq!(s.wait_image(id).await, "completed");
    }
}

#[tokio::test]
async fn swap_under_load_fails_no_request() {
    let s = Arc::new(Server::start(&[]));
    let id = s.running_fixture(ACCOUNT, "swap", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (s, id, stop) = (s.clone(), id.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = s.proxy(Method::GET, &id, "/hello").await;
                assert_eq!(r.status(), 200, "a request failed during the swap");
                let v: u64 = r.headers()["lambda-version"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(r.text().await.unwrap(), "Hello from luna-lambda\n");
                versions.push(v);
            }
            versions
        }));
    }
    let r = s.recreate(&id, fixture_zip(), json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.wait_image(&id).await, "completed");
    // Keep calling until every worker has seen the new version at least once.
    eventually("version 2 serves", || async {
        match serving_version(&s, &id).await {
            2 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    for _ in 0..20 {
        serving_version(&s, &id).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let versions = w.await.unwrap();
        total += versions.len();
        // Versions never go back once the new one serves.
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    }
    assert!(total > 0);
}

#[tokio::test]
async fn image_job_expires_after_retention() {
    let s = Server::start(&[("LUNA_LAMBDA_BUILDS_RETENTION_SECS", "0")]);
    let id = s.running_fixture(ACCOUNT, "expire", None).await;
    eventually("the image job expires", || async {
        let (_, image) = s.get_json(&format!("/1/lambdas/{id}/image/status")).await;
        if image["status"] == "not_found" {
            Ok(())
        } else {
            Err(image)
        }
    })
    .await;
}

#[tokio::test]
async fn a_replaced_version_leaves_no_files_behind() {
    let s = Server::start(&[]);
    let id = s
        .create(ACCOUNT, "replaced", distinct_fixture_zip(1), None)
        .await;
    s.wait_status(&id, "running").await;
    let r = s.recreate(&id, distinct_fixture_zip(2), json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.wait_image(&id).await, "completed");
    assert_eq!(serving_version(&s, &id).await, 2);
    // Only version 2's archive and compiled artifact remain.
    eventually("one archive and one compiled artifact left", || async {
        let archives = std::fs::read_dir(s.data_dir.join("archives"))
            .unwrap()
            .count();
        let artifacts = compiled_artifacts(&s.data_dir);
        if archives == 1 && artifacts == 1 {
            Ok(())
        } else {
            Err(format!("{archives} archives, {artifacts} artifacts"))
        }
    })
    .await;
    // A failed rebuild of another archive keeps its files until the next build.
    assert_eq!(
        s.recreate(&id, broken_component(), json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(s.wait_image(&id).await, "error");
    assert_eq!(s.update(&id).await.status(), 200);
    assert_eq!(s.wait_image(&id).await, "completed");
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("archives"))
            .unwrap()
            .count(),
        1,
        "the failed build's archive is gone once no job references it"
    );
}

/// A burst of creates (each flushing the store) while builds write their logs: every
/// lambda reaches `running` and the lists see all of them. Concurrent store flushes
/// once deadlocked the whole store here.
#[tokio::test]
async fn a_burst_of_concurrent_creates_all_run() {
    const BURST: usize = 64;
    let s = Arc::new(Server::start(&[]));
    let archive = fixture_zip();
    let creates = (0..BURST).map(|i| {
        let (s, archive) = (s.clone(), archive.clone());
        tokio::spawn(async move {
            let id = s.create(ACCOUNT, &format!("burst{i}"), archive, None).await;
            s.wait_status(&id, "running").await;
            id
        })
    });
    let mut ids = Vec::new();
    for create in creates.collect::<Vec<_>>() {
        ids.push(create.await.unwrap());
    }
    let mut listed = Vec::new();
    for page in 1..=BURST.div_ceil(50) {
        let (status, body) = s
            .get_json(&format!("/1/lambdas?page_size=50&page={page}"))
            .await;
        assert_eq!(status, 200, "{body}");
        for lambda in body["lambdas"].as_array().unwrap() {
            listed.push(lambda["lambda_id"].as_str().unwrap().to_owned());
        }
    }
    ids.sort();
    listed.sort();
    assert_eq!(listed, ids);
}
