//! Durability: after SIGKILL and restart every acknowledged lambda is listed, running
//! WASM lambdas serve again from the compilation cache, and builds that died with the
//! process end `error` with a log line saying so.

use reqwest::Method;
use serde_json::Value;

use crate::common::*;

/// The ids of every listed lambda.
async fn ids_listed_by(s: &Server) -> Vec<String> {
    let (_, list) = s.get_json("/1/lambdas?page_size=100").await;
    list["lambdas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lambda_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let env = [("LUNA_LAMBDA_BUILDS_MAX_CONCURRENT", "1")];
    let s = Server::start_in(&dir, &env);
    let running = s.running_fixture(ACCOUNT, "survivor", None).await;
    let rid_before = s.proxy(Method::GET, &running, "/hello").await;
    assert_eq!(rid_before.status(), 200);
    // Queue builds behind one slot (a distinct component each: cache misses), then
    // kill while they are pending or compiling.
    let mut queued = Vec::new();
    for i in 0..4u8 {
        queued.push(
            s.create(
                ACCOUNT,
                &format!("queued{i}"),
                distinct_fixture_zip(i),
                None,
            )
            .await,
        );
    }
    s.kill();

    let s = Server::start_in(&dir, &env);
    let listed = ids_listed_by(&s).await;
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(listed.contains(&running));
    // The running lambda serves again without recompiling.
    let (_, status) = s.get_json(&format!("/1/lambdas/{running}/status")).await;
    assert_eq!(status["status"], "running");
    let r = s.proxy(Method::GET, &running, "/hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Hello from luna-lambda\n");
    assert!(s.metric("wasm_engine{item=\"compile_cache_hits\"}").await >= 1.0);
    assert_eq!(
        s.metric("wasm_engine{item=\"compile_cache_misses\"}").await,
        0.0
    );
    // Builds that died with the process ended `error`, saying why.
    let mut interrupted = 0;
    for id in &queued {
        let (_, image) = s.get_json(&format!("/1/lambdas/{id}/image/status")).await;
        let (_, logs) = s.get_json(&format!("/1/lambdas/{id}/image/logs")).await;
        let (_, status) = s.get_json(&format!("/1/lambdas/{id}/status")).await;
        match image["status"].as_str().unwrap() {
            "error" => {
                interrupted += 1;
                assert!(
                    logs.to_string()
                        .contains("the service stopped while this build was running"),
                    "{logs}"
                );
                assert_eq!(status["status"], "failed");
            }
            "completed" => assert_eq!(status["status"], "running"),
            other => panic!("unexpected image status {other}: {logs}"),
        }
    }
    assert!(interrupted >= 1, "no build was interrupted by the kill");
    // An interrupted lambda can be rebuilt.
    let last = queued.last().unwrap();
    let r = s.update(last).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
    s.wait_status(last, "running").await;

    // Graceful shutdown exits 0 and keeps the guest output of the last requests.
    let r = s.proxy(Method::GET, &running, "/hello").await;
    let rid = r.headers()["luna-request-id"].to_str().unwrap().to_owned();
    assert!(s.terminate().success());
    let s = Server::start_in(&dir, &env);
    let (_, logs) = s.get_json(&format!("/1/lambdas/{running}/logs")).await;
    assert!(
        logs.to_string()
            .contains(&format!("[{rid}] stdout: hello called")),
        "{logs}"
    );
}

/// SIGKILL while a serving lambda is being rebuilt (the swap) and right after a delete
/// was acknowledged: after the restart the rebuilt lambda serves one whole version (the
/// old one, or the new one if its build had finished), its image job says how it ended,
/// and the deleted lambda is gone and stays gone.
#[tokio::test]
async fn kill_9_during_a_swap_and_after_a_delete_leaves_a_consistent_state() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let env = [("LUNA_LAMBDA_BUILDS_MAX_CONCURRENT", "1")];
    let s = Server::start_in(&dir, &env);
    let swapped = s.running_fixture(ACCOUNT, "swapped", None).await;
    let deleted = s.running_fixture(ACCOUNT, "deleted", None).await;
    // A recreate with a component never compiled before (a cache miss: the build takes a
    // while), killed while it is queued or compiling.
    let r = s
        .recreate(&swapped, distinct_fixture_zip(200), serde_json::json!({}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let r = s
        .call(reqwest::Method::DELETE, &format!("/1/lambdas/{deleted}"))
        .account(ACCOUNT)
        .send()
        .await;
    assert_eq!(r.status(), 204);
    s.kill();

    let s = Server::start_in(&dir, &env);
    // The deleted lambda is not listed, not served, not found.
    assert_eq!(ids_listed_by(&s).await, std::slice::from_ref(&swapped));
    assert_eq!(
        s.get(&format!("/1/lambdas/{deleted}/status"))
            .await
            .status(),
        404
    );
    // The swapped lambda serves a whole version: 1 if the rebuild died, 2 if it finished.
    let image = s.wait_image(&swapped).await;
    let r = s.proxy(Method::GET, &swapped, "/hello").await;
    assert_eq!(r.status(), 200);
    let version: u64 = r.headers()["lambda-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    match image.as_str() {
        "error" => assert_eq!(version, 1, "an interrupted rebuild keeps version 1"),
        "completed" => assert_eq!(version, 2),
        other => panic!("image status {other} after the restart"),
    }
    // And it can be rebuilt from there.
    let r = s.update(&swapped).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(s.wait_image(&swapped).await, "completed");
}

/// SIGKILL while an upload is still arriving: after the restart there is no lambda, no
/// archive and no temporary file from it, and uploads are accepted.
#[tokio::test]
async fn kill_9_during_an_upload_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let s = Server::start_in(&dir, &[]);
    let address = s.base.trim_start_matches("http://").to_owned();
    let boundary = "killed";
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"parameters\"\r\nContent-Type: application/json\r\n\r\n{{\"lambda_name\":\"half\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"a.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    );
    let head = format!(
        "POST /1/lambdas HTTP/1.1\r\nHost: x\r\nLuna-Account-Id: {ACCOUNT}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 10000000\r\n\r\n"
    );
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(part.as_bytes()).await.unwrap();
    socket.write_all(&vec![b'z'; 1_000_000]).await.unwrap();
    s.kill();
    drop(socket);

    let s = Server::start_in(&dir, &[]);
    let (_, list) = s.get_json("/1/lambdas").await;
    assert_eq!(list["lambdas"].as_array().unwrap().len(), 0, "{list}");
    let archives = std::fs::read_dir(dir.join("archives")).unwrap().count();
    assert_eq!(archives, 0, "no archive or temporary file from the upload");
    s.create(ACCOUNT, "whole", fixture_zip(), None).await;
}
