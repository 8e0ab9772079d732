//! The proxy route: all methods, forwarding rules, streaming, limits and guest faults.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::*;

const GIVEN_REQUEST_ID: &str = "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a";

#[tokio::test]
async fn all_methods_reach_the_guest_with_request_metadata() {
    let s = Server::start(&[]);
    let id = s.running_fixture(ACCOUNT, "meta", None).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        the_guest_sees_method_path_query_and_request_id(&s, &id, method.parse().unwrap()).await;
    }
    let r = s
        .call(Method::HEAD, &format!("/1/lambdas/{id}/proxy/meta"))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("lambda-version"));
    // A generated request id is visible to the guest too.
    let r = s.proxy(Method::GET, &id, "/meta").await;
    let rid = r.headers()["luna-request-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("request-id={rid}")), "{text}");
    // The proxy root is the guest's "/".
    let r = s.proxy(Method::GET, &id, "").await;
    assert_eq!(r.text().await.unwrap(), "Hello from luna-lambda\n");
    // The guest's own status codes pass through.
    assert_eq!(s.proxy(Method::GET, &id, "/status").await.status(), 418);
    the_proxy_refuses_what_the_contract_forbids(&s, &id).await;
    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(text.contains(
        r#"request_count_total{path="GET:/1/lambdas/{lambda_id}/proxy",status_code="200"}"#
    ));
    assert!(text.contains(&format!(r#"lambda_requests_total{{lambda_id="{id}"}}"#)));
    assert!(text.contains(&format!(
        r#"lambda_instantiate_seconds_bucket{{lambda_id="{id}""#
    )));
}

async fn the_guest_sees_method_path_query_and_request_id(s: &Server, id: &str, method: Method) {
    let call = |path: &str| {
        let query = format!("?b=2&account_id={ACCOUNT}&c=%20");
        s.call(
            method.clone(),
            &format!("/1/lambdas/{id}/proxy{path}{query}"),
        )
        .account(ACCOUNT)
        .header("Luna-Request-Id", GIVEN_REQUEST_ID)
        .send()
    };
    let r = call("/meta/x").await;
    assert_eq!(
        r.status(),
        404,
        "{method}: /meta/x is not a fixture route, so the guest says 404"
    );
    assert_eq!(r.headers()["lambda-version"], "1");
    let r = call("/meta").await;
    assert_eq!(r.status(), 200, "{method}");
    assert_eq!(r.headers()["luna-request-id"], GIVEN_REQUEST_ID);
    assert_eq!(r.headers()["x-guest"], "fixture");
    let text = r.text().await.unwrap();
    assert!(text.contains(&format!("method={method}\n")), "{text}");
    assert!(text.contains("path=/meta\n"), "{text}");
    assert!(
        text.contains("query=b=2&c=%20\n"),
        "account_id is stripped: {text}"
    );
    assert!(
        text.contains(&format!("request-id={GIVEN_REQUEST_ID}\n")),
        "{text}"
    );
}

async fn the_proxy_refuses_what_the_contract_forbids(s: &Server, id: &str) {
    // POST and PUT require the account header; the others accept account_id.
    for method in [Method::POST, Method::PUT] {
        let r = s
            .call(method, &format!("/1/lambdas/{id}/proxy/hello"))
            .send()
            .await;
        assert_error(r, 400, 11066).await;
    }
    let r = s
        .get(&format!("/1/lambdas/{id}/proxy/hello?account_id=nope"))
        .await;
    assert_error(r, 400, 12012).await;
    let r = s
        .call(Method::TRACE, &format!("/1/lambdas/{id}/proxy/hello"))
        .send()
        .await;
    assert_error(r, 405, 12005).await;
    let r = s
        .get("/1/lambdas/e63e2a1f-f505-441c-8e11-b2dcd0385329/proxy/hello")
        .await;
    assert_error(r, 404, 42001).await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let s = Server::start(&[("LUNA_LAMBDA_LIMITS_MAX_PROXY_BODY_BYTES", "8388608")]);
    let id = s.running_fixture(ACCOUNT, "echo", None).await;
    let payload: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = s
        .call(Method::POST, &format!("/1/lambdas/{id}/proxy/echo"))
        .account(ACCOUNT)
        .body(payload.clone())
        .send()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), payload.as_slice());
    // Chunks arrive as the guest produces them.
    let mut r = s.proxy(Method::GET, &id, "/stream").await;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"chunk 0"));
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(String::from_utf8(rest).unwrap().ends_with("chunk 4\n"));
}

#[tokio::test]
async fn request_body_limit() {
    let s = Server::start(&[("LUNA_LAMBDA_LIMITS_MAX_PROXY_BODY_BYTES", "65536")]);
    let id = s.running_fixture(ACCOUNT, "small", None).await;
    let post = |body: Vec<u8>| {
        s.call(Method::POST, &format!("/1/lambdas/{id}/proxy/echo"))
            .account(ACCOUNT)
            .body(body)
            .send()
    };
    assert_eq!(
        post(vec![1u8; 65536]).await.bytes().await.unwrap().len(),
        65536
    );
    assert_error(post(vec![1u8; 65537]).await, 413, 12047).await;
    // A body without a declared length is cut off while streaming.
    let stream =
        futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![2u8; 32 * 1024])));
    let r = s
        .http
        .post(s.url(&format!("/1/lambdas/{id}/proxy/echo")))
        .header("Luna-Account-Id", ACCOUNT)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    let echoed = match r {
        Ok(r) => r.bytes().await.map(|b| b.len()).unwrap_or(0),
        Err(_) => 0,
    };
    assert!(
        echoed < 4 * 32 * 1024,
        "the whole oversize body went through"
    );
    assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);
}

#[tokio::test]
async fn guest_faults_cost_only_their_request() {
    let s = Server::start(&[("LUNA_LAMBDA_SANDBOX_MAX_RESPONSE_BODY_BYTES", "1048576")]);
    let id = s
        .running_fixture(
            ACCOUNT,
            "faulty",
            Some(json!({"sandbox": {"memory_limit_mb": 32, "request_timeout_ms": 400}})),
        )
        .await;
    for _ in 0..2 {
        let body = assert_error(s.proxy(Method::GET, &id, "/trap").await, 500, 42013).await;
        assert!(
            body["detail"].as_str().unwrap().contains("trapped"),
            "{body}"
        );
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);

        let started = std::time::Instant::now();
        assert_error(s.proxy(Method::GET, &id, "/loop").await, 504, 42008).await;
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);

        let body = assert_error(s.proxy(Method::GET, &id, "/memhog").await, 500, 42013).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("exceeded its memory limit"),
            "{body}"
        );
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);

        // Waiting on I/O past the deadline is ended by the host timer.
        assert_error(s.proxy(Method::GET, &id, "/sleep").await, 504, 42008).await;
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);

        // Unbounded recursion traps at the stack limit instead of killing the host.
        assert_error(s.proxy(Method::GET, &id, "/recurse").await, 500, 42013).await;
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);

        // An endless body is cut off at max_response_body_bytes: the head was 200,
        // the body ends in an error after at most the limit.
        let response = s.proxy(Method::GET, &id, "/endless").await;
        assert_eq!(response.status(), 200);
        let mut received = 0usize;
        let mut stream = response.bytes_stream();
        let mut failed = false;
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            match chunk {
                Ok(bytes) => received += bytes.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "an endless body must not end cleanly");
        assert!(received <= 1_048_576, "{received} bytes passed the cap");
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);

        // A body that stalls after its first chunk is ended by the request deadline.
        let started = std::time::Instant::now();
        let response = s.proxy(Method::GET, &id, "/stuck-body").await;
        assert_eq!(response.status(), 200);
        assert!(
            response.bytes().await.is_err(),
            "a stuck body must not end cleanly"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);
    }
    let (_, logs) = s.get_json(&format!("/1/lambdas/{id}/logs")).await;
    assert!(logs.to_string().contains("request failed"), "{logs}");
    let text = s.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(&format!(
            r#"lambda_errors_total{{error_code="42013",lambda_id="{id}"}} 6"#
        )),
        "{text}"
    );
}

/// 10,000 faulting requests (traps, stack overflows, memory exhaustion, round robin)
/// must leave the server serving and its memory where it was: every instance's
/// memory, table and stack go back to the pool.
#[tokio::test]
async fn ten_thousand_faults_leave_memory_stable() {
    const FAULTS: usize = 10_000;
    const CONCURRENCY: usize = 8;
    // RSS should measure what the server retains, not noise: decommitting each slot as
    // it is freed keeps pooled memories waiting in a decommit batch out of the sample, and
    // a single malloc arena keeps glibc's per-thread arenas from reaching their high-water
    // marks one by one during the run (with the default 16 arenas RSS still climbs
    // ~10 MiB over 10,000 faults, in steps with plateaus: fragmentation, not a leak).
    // Pages a pool slot keeps resident for its next instance (keep-resident sizes, and
    // the pages PAGEMAP_SCAN resets in place) are a cache that fills as more slots get
    // used and then stays flat (+3.9 MiB over 32,000 faults here, flat for the last
    // 12,000): off here so that only what is retained by mistake shows.
    let s = std::sync::Arc::new(Server::start(&[
        ("LUNA_LAMBDA_ENGINE_DECOMMIT_BATCH_SIZE", "1"),
        ("LUNA_LAMBDA_ENGINE_MEMORY_KEEP_RESIDENT_KB", "0"),
        ("LUNA_LAMBDA_ENGINE_TABLE_KEEP_RESIDENT_KB", "0"),
        ("LUNA_LAMBDA_ENGINE_PAGEMAP_SCAN", "false"),
        ("MALLOC_ARENA_MAX", "1"),
    ]));
    let id = s
        .running_fixture(
            ACCOUNT,
            "fault-soak",
            Some(json!({"sandbox": {"memory_limit_mb": 16, "max_concurrent_requests": 64}})),
        )
        .await;
    let run = |count: usize| {
        let (s, id) = (s.clone(), id.clone());
        async move {
            let workers = (0..CONCURRENCY).map(|worker| {
                let (s, id) = (s.clone(), id.clone());
                tokio::spawn(async move {
                    for n in (worker..count).step_by(CONCURRENCY) {
                        let path = ["/trap", "/recurse", "/memhog"][n % 3];
                        let r = s.proxy(Method::GET, &id, path).await;
                        assert_eq!(r.status(), 500, "{path}");
                        // Reading the body returns the connection to the pool.
                        let _ = r.bytes().await;
                    }
                })
            });
            for worker in workers.collect::<Vec<_>>() {
                worker.await.unwrap();
            }
        }
    };
    // Warm up until pools, caches and allocator arenas have reached their working size.
    run(600).await;
    let before = s.rss_kib();
    let started = std::time::Instant::now();
    run(FAULTS).await;
    let elapsed = started.elapsed();
    let after = s.rss_kib();
    eprintln!(
        "{FAULTS} faulting requests in {elapsed:.1?}: server RSS {before} KiB before, \
         {after} KiB after ({:+} KiB)",
        after as i64 - before as i64
    );
    assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);
    assert_eq!(
        s.metric(&format!(
            r#"lambda_errors_total{{error_code="42013",lambda_id="{id}"}}"#
        ))
        .await as usize,
        FAULTS + 600
    );
    // A leak of even a few hundred bytes per fault would show as megabytes here.
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over {FAULTS} faults"
    );
}

/// A component built with plain `wit-bindgen` against `wasi:http` (no SDK, no
/// `wstd`) deploys and answers unchanged.
#[tokio::test]
async fn components_from_plain_wit_bindgen_run_unchanged() {
    let s = Server::start(&[]);
    let id = s
        .create(
            ACCOUNT,
            "bindgen",
            zip_of(&[("lambda.wasm", &guest_wasm("bindgen-proxy"))]),
            None,
        )
        .await;
    s.wait_status(&id, "running").await;
    let r = s.proxy(Method::GET, &id, "/anything?x=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-guest-toolchain"], "wit-bindgen");
    assert_eq!(
        r.text().await.unwrap(),
        "plain wit-bindgen: GET /anything?x=1"
    );
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let r = s
        .call(Method::PUT, &format!("/1/lambdas/{id}/proxy/echo"))
        .account(ACCOUNT)
        .body(payload.clone())
        .send()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), payload.as_slice());
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_costs_nothing_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(&[("LUNA_LAMBDA_LIMITS_HEADER_READ_TIMEOUT_MS", "300")]);
    let address = s.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        // Half a request head, then nothing.
        socket
            .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(socket);
    }
    // Others are served meanwhile.
    assert_eq!(s.get("/version").await.status(), 200);
    // Each slow connection is closed by the server (with a 408 or without a response).
    for mut socket in slow {
        let mut answer = Vec::new();
        // Well under the 30 s default: the configured 300 ms is what closes it.
        let read =
            tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "the slow connection was not closed at the configured timeout"
        );
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    // A fresh connection: the pooled one from before idled past the same 300 ms and may
    // be closing just as it would be reused.
    let fresh = reqwest::Client::new().get(s.url("/version")).send().await;
    assert_eq!(fresh.unwrap().status(), 200);
}

#[tokio::test]
async fn spinning_guests_do_not_stall_the_service() {
    let s = Server::start(&[]);
    let id = s
        .running_fixture(
            ACCOUNT,
            "spinner",
            Some(json!({"sandbox": {"request_timeout_ms": 3000}})),
        )
        .await;
    // More spinning guests than the service has worker threads.
    let spinners: Vec<_> = (0..8)
        .map(|_| {
            let request = s
                .http
                .get(s.url(&format!("/1/lambdas/{id}/proxy/loop")))
                .header("Luna-Account-Id", ACCOUNT)
                .send();
            tokio::spawn(request)
        })
        .collect();
    // Wait until they all run (the lambda's in-flight gauge), then use the API.
    eventually("all 8 spinners run", || async {
        let in_flight = s
            .metric(&format!("lambda_pool_in_flight{{lambda_id=\"{id}\"}}"))
            .await;
        if in_flight >= 8.0 {
            Ok(())
        } else {
            Err(in_flight)
        }
    })
    .await;
    assert_eq!(s.get("/version").await.status(), 200);
    assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);
    // Answered while every spinner was still running: none had finished.
    assert!(
        spinners.iter().all(|t| !t.is_finished()),
        "the API waited for the spinners"
    );
    for spinner in spinners {
        assert_error(spinner.await.unwrap().unwrap(), 504, 42008).await;
    }
}

#[tokio::test]
async fn concurrency_limit_sheds_load() {
    let s = std::sync::Arc::new(Server::start(&[]));
    let id = s
        .running_fixture(
            ACCOUNT,
            "narrow",
            Some(json!({"sandbox": {"max_concurrent_requests": 1, "request_timeout_ms": 3000}})),
        )
        .await;
    let slow = keep_busy(&s, &id);
    let shed = shed_eventually("the concurrency limit sheds a request", || {
        s.proxy(Method::GET, &id, "/hello")
    })
    .await;
    let body = assert_error(shed, 503, 42010).await;
    assert!(body["detail"].as_str().unwrap().contains("concurrent"));
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);
}

/// A lambda asking for 50 concurrent requests gets at most
/// `sandbox.max_instances_per_lambda` (here 1), and the build log says so. An attacker
/// then opens ten calls whose bodies never arrive: they hold connections, not the
/// lambda's one slot (the body's first bytes come before the slot is taken), so a
/// caller is still served; each slow call ends 408 at the lambda's request timeout.
#[tokio::test]
async fn a_lambda_gets_at_most_its_slots_and_slow_bodies_take_none() {
    let s = std::sync::Arc::new(Server::start(&[(
        "LUNA_LAMBDA_SANDBOX_MAX_INSTANCES_PER_LAMBDA",
        "1",
    )]));
    let sandbox = json!({"sandbox": {"max_concurrent_requests": 50, "request_timeout_ms": 3000}});
    let id = s.running_fixture(ACCOUNT, "capped", Some(sandbox)).await;
    let logs = s.image_logs(&id).await;
    assert!(
        logs.contains("max 1 concurrent requests (capped by sandbox.max_instances_per_lambda)"),
        "{logs}"
    );
    let slow = keep_busy(&s, &id);
    let shed = shed_eventually("the lambda's one slot is taken", || {
        s.proxy(Method::GET, &id, "/hello")
    })
    .await;
    assert_error(shed, 503, 42010).await;
    assert_eq!(slow.await.unwrap().0, 504);

    let mut slow_bodies = Vec::new();
    for _ in 0..10 {
        let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", s.port()))
            .await
            .unwrap();
        let head = format!(
            "POST /1/lambdas/{id}/proxy/echo HTTP/1.1\r\nHost: x\r\nLuna-Account-Id: {ACCOUNT}\r\nContent-Length: 1000\r\n\r\nfirst bytes only"
        );
        tokio::io::AsyncWriteExt::write_all(&mut connection, head.as_bytes())
            .await
            .unwrap();
        slow_bodies.push(connection);
    }
    let r = s.proxy(Method::GET, &id, "/hello").await;
    assert_eq!(r.status(), 200, "a caller is served beside ten slow bodies");
    for mut connection in slow_bodies {
        let mut answer = vec![0; 12];
        tokio::io::AsyncReadExt::read_exact(&mut connection, &mut answer)
            .await
            .unwrap();
        assert_eq!(
            &answer,
            b"HTTP/1.1 408",
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// Keeps one slow `/sleep` call of `id` running (retried while it is itself shed);
/// resolves to its final status and body.
fn keep_busy(
    s: &std::sync::Arc<Server>,
    id: &str,
) -> tokio::task::JoinHandle<(reqwest::StatusCode, String)> {
    let (s, id) = (s.clone(), id.to_owned());
    tokio::spawn(async move {
        loop {
            let r = s.proxy(Method::GET, &id, "/sleep").await;
            let status = r.status();
            if status != 503 {
                return (status, r.text().await.unwrap_or_default());
            }
        }
    })
}

/// Calls until a call is shed (503): until the slow call holds its permit, calls may
/// still be served. Returns the shed response.
async fn shed_eventually<Call, Sent>(what: &str, call: Call) -> reqwest::Response
where
    Call: Fn() -> Sent,
    Sent: std::future::Future<Output = reqwest::Response>,
{
    eventually(what, || async {
        let r = call().await;
        if r.status() == 503 {
            Ok(r)
        } else {
            Err(r.status())
        }
    })
    .await
}

#[tokio::test]
async fn lambda_docs_from_archive_or_default() {
    let s = Server::start(&[]);
    let spec = "openapi: 3.0.3\ninfo:\n  title: mine\n  version: '2'\npaths: {}\n";
    let id = s
        .create(
            ACCOUNT,
            "documented",
            zip_of(&[
                ("lambda.wasm", fixture_wasm()),
                ("openapi.yaml", spec.as_bytes()),
            ]),
            None,
        )
        .await;
    let plain = s.create(ACCOUNT, "plain", fixture_zip(), None).await;
    let get = |id: &str, accept: &str| {
        s.http
            .get(s.url(&format!("/1/lambdas/{id}/docs")))
            .header("Accept", accept)
            .send()
    };
    assert_eq!(
        get(&id, "application/x-yaml")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        spec
    );
    let html = get(&id, "text/html").await.unwrap().text().await.unwrap();
    assert!(html.contains("mine") && !html.contains("<script"));
    let default = get(&plain, "application/x-yaml")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(default.contains("openapi:") && default.contains("plain"));
    assert_error(get(&id, "application/json").await.unwrap(), 415, 12024).await;
    // reqwest sends `Accept: */*`, like curl: the YAML document.
    let r = s.get(&format!("/1/lambdas/{id}/docs")).await;
    assert_eq!(r.text().await.unwrap(), spec);
}

/// A client that goes away in the middle of its request body or of the response costs
/// only its own request: with one permitted request at a time, every next call is served,
/// so no permit or pool slot was left behind (20 of each).
#[tokio::test]
async fn clients_that_disconnect_midway_cost_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(&[]);
    let id = s
        .running_fixture(
            ACCOUNT,
            "single",
            Some(json!({"sandbox": {"max_concurrent_requests": 1, "request_timeout_ms": 60000}})),
        )
        .await;
    let address = s.base.trim_start_matches("http://").to_owned();
    // The permit comes back once the host has seen the client go: poll for it.
    let served_again = || {
        eventually("the permit comes back", || async {
            let r = s.proxy(Method::GET, &id, "/hello").await;
            match r.status().as_u16() {
                200 => Ok(()),
                503 => Err(503),
                other => panic!("only the permit may be missing, got {other}"),
            }
        })
    };
    for _ in 0..20 {
        // Mid-response: a body that never ends, read a little, then hang up. The previous
        // hung-up request may still hold the permit (503) until the host notices: retry.
        let (socket, buffer) = eventually("the permit comes back", || async {
            let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
            let head = format!(
                "GET /1/lambdas/{id}/proxy/endless HTTP/1.1\r\nHost: x\r\nConnection: close\r\nLuna-Account-Id: {ACCOUNT}\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            let mut buffer = vec![0u8; 256 * 1024];
            let mut read = 0;
            while read < buffer.len() {
                let n = socket.read(&mut buffer[read..]).await.unwrap();
                if n == 0 {
                    break;
                }
                read += n;
            }
            if read == buffer.len() {
                return Ok((socket, buffer));
            }
            let answer = String::from_utf8_lossy(&buffer[..read]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            Err(answer)
        })
        .await;
        assert!(buffer.starts_with(b"HTTP/1.1 200"));
        drop(socket);
        served_again().await;

        // Mid-request: half of a declared body, then hang up.
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /1/lambdas/{id}/proxy/echo HTTP/1.1\r\nHost: x\r\nLuna-Account-Id: {ACCOUNT}\r\nContent-Length: 100000\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&[b'y'; 50_000]).await.unwrap();
        drop(socket);
        served_again().await;
    }
}

/// One tenant holding its whole share of concurrent requests (here 1) with a slow call
/// is refused a second call on another of its lambdas; another account's lambda still
/// answers.
#[tokio::test]
async fn an_account_runs_at_most_its_share_of_concurrent_requests() {
    let s = std::sync::Arc::new(Server::start(&[(
        "LUNA_LAMBDA_SANDBOX_MAX_CONCURRENT_PER_ACCOUNT",
        "1",
    )]));
    let slow = json!({"sandbox": {"request_timeout_ms": 3000}});
    let busy = s.running_fixture(ACCOUNT, "busy", Some(slow)).await;
    let second = s.running_fixture(ACCOUNT, "second", None).await;
    let neighbour = s.running_fixture(OTHER_ACCOUNT, "neighbour", None).await;
    let sleeper = keep_busy(&s, &busy);
    let shed = shed_eventually("the account's share sheds a request", || {
        s.proxy(Method::GET, &second, "/hello")
    })
    .await;
    let body = assert_error(shed, 503, 42010).await;
    assert!(
        body["detail"].as_str().unwrap().contains("its account"),
        "{body}"
    );
    let r = s
        .call(Method::GET, &format!("/1/lambdas/{neighbour}/proxy/hello"))
        .account(OTHER_ACCOUNT)
        .send()
        .await;
    assert_eq!(r.status(), 200, "another account is not held up");
    assert_eq!(sleeper.await.unwrap().0, 504);
    assert_eq!(s.proxy(Method::GET, &second, "/hello").await.status(), 200);
}

/// Each running request reserves its lambda's memory limit from what the operator gives
/// running instances (here 200 MiB): a second 128 MiB request does not fit while the
/// first runs, and fits again once it has ended.
#[tokio::test]
async fn running_instances_reserve_their_memory_limit() {
    let s = std::sync::Arc::new(Server::start(&[(
        "LUNA_LAMBDA_ENGINE_MAX_INSTANCE_MEMORY_MB",
        "200",
    )]));
    let sandbox = json!({"sandbox": {"memory_limit_mb": 128, "request_timeout_ms": 3000}});
    let big = s
        .running_fixture(ACCOUNT, "big", Some(sandbox.clone()))
        .await;
    let other = s
        .running_fixture(OTHER_ACCOUNT, "other", Some(sandbox))
        .await;
    let sleeper = keep_busy(&s, &big);
    let other_call = || {
        s.call(Method::GET, &format!("/1/lambdas/{other}/proxy/hello"))
            .account(OTHER_ACCOUNT)
            .send()
    };
    let shed = shed_eventually("the memory reservation sheds a request", other_call).await;
    let body = assert_error(shed, 503, 42010).await;
    assert!(
        body["detail"].as_str().unwrap().contains("memory"),
        "{body}"
    );
    assert_eq!(sleeper.await.unwrap().0, 504);
    assert_eq!(
        other_call().await.status(),
        200,
        "the reservation was given back"
    );
}

/// A caller that gives up on a spinning guest takes the guest with it: the lambda's only
/// permit is free again long before the guest's two-minute deadline.
#[tokio::test]
async fn a_guest_whose_caller_left_stops() {
    let s = Server::start(&[]);
    let sandbox = json!({"sandbox": {"max_concurrent_requests": 1, "request_timeout_ms": 120000}});
    let id = s.running_fixture(ACCOUNT, "spinner", Some(sandbox)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(s.url(&format!("/1/lambdas/{id}/proxy/loop")))
        .header("Luna-Account-Id", ACCOUNT)
        .send()
        .await;
    assert!(gave_up.is_err(), "the caller gave up");
    // Well before the guest's deadline: a guest left running would hold it for 2 min.
    let within = Duration::from_secs(30);
    eventually_within(
        within,
        "the permit of the spinning guest is free",
        || async {
            match s.proxy(Method::GET, &id, "/hello").await.status() {
                reqwest::StatusCode::OK => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
}
