//! Bounded load and soak: 256 concurrent connections for `SOAK_SECS` (default 60) seconds
//! mixing proxy calls over 50 lambdas with management reads, while other lambdas are
//! created, recreated and deleted. Every answer must be a success or a documented limit
//! (503 42007 while a lambda builds, 503 42010 when its concurrency limit is reached), no
//! request may reach a deleted lambda, and the server's open files and memory must come
//! back after the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::common::*;

const LAMBDAS: usize = 50;
const CONNECTIONS: usize = 256;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    building: AtomicUsize,
    overloaded: AtomicUsize,
    deleted_refused: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_with_churn_costs_nothing_but_documented_limits() {
    let seconds: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let s = Arc::new(Server::start(&[]));
    let mut live = Vec::new();
    for i in 0..LAMBDAS {
        live.push(
            s.create(ACCOUNT, &format!("soak-{i}"), fixture_zip(), None)
                .await,
        );
    }
    for id in &live {
        s.wait_status(id, "running").await;
    }
    let fds_before = s.open_fds();
    let rss_before = s.rss_kib();
    let live = Arc::new(RwLock::new(live));
    // Retiring: removed from the live set, being deleted (calls may still see it).
    // Deleted: its DELETE answered 204 (calls must get 404).
    let retiring: Arc<RwLock<std::collections::HashSet<String>>> = Arc::default();
    let deleted: Arc<RwLock<Vec<String>>> = Arc::default();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // Churn: create, recreate and delete while the load runs.
    let churn = {
        let (s, live, retiring, deleted, stop) = (
            s.clone(),
            live.clone(),
            retiring.clone(),
            deleted.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = s
                    .create(ACCOUNT, &format!("churn-{n}"), fixture_zip(), None)
                    .await;
                live.write().await.push(id.clone());
                let target = live.read().await[n % LAMBDAS].clone();
                let r = s
                    .http
                    .put(s.url(&format!("/1/lambdas/{target}")))
                    .header("Luna-Account-Id", ACCOUNT)
                    .multipart(upload_form(fixture_zip(), json!({}), None))
                    .send()
                    .await
                    .unwrap();
                // 409 42006: the previous recreate of that lambda still builds.
                assert!(
                    [200, 409].contains(&r.status().as_u16()),
                    "recreate: {}",
                    r.status()
                );
                let victim = {
                    let mut ids = live.write().await;
                    let index = ids.len() - 1;
                    ids.remove(index)
                };
                retiring.write().await.insert(victim.clone());
                let r = s.delete_lambda(&victim).await;
                assert_eq!(r.status(), 204);
                // From now on every call to it must be refused.
                deleted.write().await.push(victim);
            }
            n
        })
    };

    // The load has its own client: dropping it afterwards closes its connections.
    let load = reqwest::Client::new();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let (s, live, retiring, deleted, tally, stop, load) = (
                s.clone(),
                live.clone(),
                retiring.clone(),
                deleted.clone(),
                tally.clone(),
                stop.clone(),
                load.clone(),
            );
            tokio::spawn(async move {
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    i += CONNECTIONS;
                    let (path, gone) = match i % 10 {
                        0 => (
                            format!("/1/lambdas?account_id={ACCOUNT}&page_size=20"),
                            false,
                        ),
                        1 => {
                            let id = live.read().await[i % LAMBDAS].clone();
                            (format!("/1/lambdas/{id}/status"), false)
                        }
                        2 => match deleted.read().await.last().cloned() {
                            Some(id) => (format!("/1/lambdas/{id}/proxy/hello"), true),
                            None => continue,
                        },
                        _ => {
                            let ids = live.read().await;
                            (
                                format!("/1/lambdas/{}/proxy/hello", ids[i % ids.len()]),
                                false,
                            )
                        }
                    };
                    let send = || {
                        load.get(s.url(&path))
                            .header("Luna-Account-Id", ACCOUNT)
                            .send()
                    };
                    // A pooled keep-alive connection the server closed as idle just as the
                    // client reused it fails in transport; a GET is retried once, as HTTP
                    // clients do. A second failure is a failure.
                    let r = match send().await {
                        Ok(r) => r,
                        Err(_) => match send().await {
                            Ok(r) => r,
                            Err(e) => {
                                tally.failures.lock().unwrap().push(format!("{path}: {e}"));
                                continue;
                            }
                        },
                    };
                    let status = r.status().as_u16();
                    let code = r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|b| b["error_code"].as_u64());
                    let retired = retiring
                        .read()
                        .await
                        .iter()
                        .any(|id| path.contains(id.as_str()));
                    let counter = match (status, code, gone) {
                        (200, _, false) => &tally.ok,
                        (404, Some(42001), true) => &tally.deleted_refused,
                        (404, Some(42001), false) if retired => &tally.deleted_refused,
                        (503, Some(42007), false) => &tally.building,
                        (503, Some(42010), false) => &tally.overloaded,
                        _ => {
                            tally
                                .failures
                                .lock()
                                .unwrap()
                                .push(format!("{path}: {status} {code:?}"));
                            continue;
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    drop(load);
    let churned = churn.await.unwrap();
    let elapsed = started.elapsed();
    let failures = tally.failures.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    println!(
        "soak: {:.0} s, {ok} ok ({:.0}/s), {} while building, {} overloaded, {} refused for deleted lambdas, {churned} create/recreate/delete rounds, {} failures",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        tally.building.load(Ordering::Relaxed),
        tally.overloaded.load(Ordering::Relaxed),
        tally.deleted_refused.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} unexpected answers, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 0 && churned > 0);

    // Back to rest: builds finished, connections gone.
    for id in live.read().await.iter() {
        s.wait_image(id).await;
    }
    let fds_after = eventually("the connections close", || async {
        let fds = s.open_fds();
        if fds <= fds_before + 8 {
            Ok(fds)
        } else {
            Err(format!("file descriptors leaked: {fds_before} -> {fds}"))
        }
    })
    .await;
    let rss_after = s.rss_kib();
    println!("soak: open fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB");
    assert!(
        fds_after <= fds_before + 8,
        "file descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 128 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}
