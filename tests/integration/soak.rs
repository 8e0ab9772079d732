//! Bounded load and soak: 256 concurrent connections for `SOAK_SECS` (default 60) seconds
//! mixing proxy calls over 50 lambdas with management reads, while other lambdas are
//! created, recreated and deleted. Every answer must be a success or a documented limit
//! (503 42007 while a lambda builds, 503 42010 when its concurrency limit is reached), no
//! request may reach a deleted lambda, and the server's open files and memory must come
//! back after the load.

use std::collections::HashSet;
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

/// What the load and the churn share while the soak runs.
struct Soak {
    server: Server,
    live: RwLock<Vec<String>>,
    /// Removed from the live set, being deleted (calls may still see it).
    retiring: RwLock<HashSet<String>>,
    /// Its DELETE answered 204 (calls must get 404).
    deleted: RwLock<Vec<String>>,
    tally: Tally,
    stop: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_with_churn_costs_nothing_but_documented_limits() {
    let seconds: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let server = Server::start(&[]);
    let mut live = Vec::new();
    for i in 0..LAMBDAS {
        let name = format!("soak-{i}");
        live.push(server.create(ACCOUNT, &name, fixture_zip(), None).await);
    }
    for id in &live {
        server.wait_status(id, "running").await;
    }
    let fds_before = server.open_fds();
    let rss_before = server.rss_kib();
    let soak = Arc::new(Soak {
        server,
        live: RwLock::new(live),
        retiring: RwLock::default(),
        deleted: RwLock::default(),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();

    let churn = tokio::spawn(soak.clone().churn());
    // The load has its own client: dropping it afterwards closes its connections.
    let load = reqwest::Client::new();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| tokio::spawn(soak.clone().load(worker, load.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    soak.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    drop(load);
    let churned = churn.await.unwrap();
    let ok = soak.report(started.elapsed(), churned);
    assert!(ok > 0 && churned > 0);
    soak.comes_back_to_rest(fds_before, rss_before).await;
}

impl Soak {
    /// Creates, recreates and deletes lambdas until stopped; returns the rounds done.
    async fn churn(self: Arc<Self>) -> usize {
        let s = &self.server;
        let mut n = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let id = s
                .create(ACCOUNT, &format!("churn-{n}"), fixture_zip(), None)
                .await;
            self.live.write().await.push(id.clone());
            let target = self.live.read().await[n % LAMBDAS].clone();
            let r = s.recreate(&target, fixture_zip(), json!({})).await;
            // 409 42006: the previous recreate of that lambda still builds.
            assert!(
                [200, 409].contains(&r.status().as_u16()),
                "recreate: {}",
                r.status()
            );
            let victim = {
                let mut ids = self.live.write().await;
                let index = ids.len() - 1;
                ids.remove(index)
            };
            self.retiring.write().await.insert(victim.clone());
            let r = s.delete_lambda(&victim).await;
            assert_eq!(r.status(), 204);
            // From now on every call to it must be refused.
            self.deleted.write().await.push(victim);
        }
        n
    }

    /// One connection's loop: a mix of list, status and proxy calls, tallied by answer.
    async fn load(self: Arc<Self>, worker: usize, client: reqwest::Client) {
        let mut i = worker;
        while !self.stop.load(Ordering::Relaxed) {
            i += CONNECTIONS;
            let Some((path, gone)) = self.next_request(i).await else {
                continue;
            };
            let send = || {
                client
                    .get(self.server.url(&path))
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
                        self.fail(format!("{path}: {e}"));
                        continue;
                    }
                },
            };
            self.tally_answer(&path, gone, r).await;
        }
    }

    /// The `i`th request's path and whether it targets a deleted lambda.
    async fn next_request(&self, i: usize) -> Option<(String, bool)> {
        Some(match i % 10 {
            0 => (
                format!("/1/lambdas?account_id={ACCOUNT}&page_size=20"),
                false,
            ),
            1 => {
                let id = self.live.read().await[i % LAMBDAS].clone();
                (format!("/1/lambdas/{id}/status"), false)
            }
            2 => {
                let id = self.deleted.read().await.last().cloned()?;
                (format!("/1/lambdas/{id}/proxy/hello"), true)
            }
            _ => {
                let ids = self.live.read().await;
                let id = &ids[i % ids.len()];
                (format!("/1/lambdas/{id}/proxy/hello"), false)
            }
        })
    }

    async fn tally_answer(&self, path: &str, gone: bool, r: reqwest::Response) {
        let status = r.status().as_u16();
        let code = r
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["error_code"].as_u64());
        let retired = self
            .retiring
            .read()
            .await
            .iter()
            .any(|id| path.contains(id.as_str()));
        let tally = &self.tally;
        let counter = match (status, code, gone) {
            (200, _, false) => &tally.ok,
            (404, Some(42001), true) => &tally.deleted_refused,
            (404, Some(42001), false) if retired => &tally.deleted_refused,
            (503, Some(42007), false) => &tally.building,
            (503, Some(42010), false) => &tally.overloaded,
            _ => return self.fail(format!("{path}: {status} {code:?}")),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, what: String) {
        self.tally.failures.lock().unwrap().push(what);
    }

    /// Prints the tally, asserts nothing unexpected was answered; returns the successes.
    fn report(&self, elapsed: Duration, churned: usize) -> usize {
        let tally = &self.tally;
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
        ok
    }

    /// Builds finish, connections close, and memory returns near where it was.
    async fn comes_back_to_rest(&self, fds_before: usize, rss_before: u64) {
        let s = &self.server;
        for id in self.live.read().await.iter() {
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
            rss_after < rss_before + 128 * 1024,
            "RSS grew from {rss_before} to {rss_after} KiB"
        );
    }
}
