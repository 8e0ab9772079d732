//! Another account's lambda is invisible on every route: answered exactly like a
//! missing one, never listed, never modified, never called. Another account's compile
//! cannot take the service's compiler from everyone else.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn another_accounts_lambda_is_invisible_everywhere() {
    let s = Server::start(&[]);
    let id = s.running_fixture(ACCOUNT, "private", None).await;
    let missing = "e63e2a1f-f505-441c-8e11-b2dcd0385329";
    let as_other = |method: Method, path: &str| {
        s.call(method, path)
            .account(OTHER_ACCOUNT)
            .header("Accept", "application/x-yaml")
    };
    let q = format!("account_id={OTHER_ACCOUNT}");
    // Same answer as for a lambda that does not exist, on every route.
    for target in [id.as_str(), missing] {
        let cases: Vec<(Method, String)> = vec![
            (Method::GET, format!("/1/lambdas/{target}?{q}")),
            (Method::GET, format!("/1/lambdas/{target}/status?{q}")),
            (Method::GET, format!("/1/lambdas/{target}/logs?{q}")),
            (Method::GET, format!("/1/lambdas/{target}/image/status?{q}")),
            (Method::GET, format!("/1/lambdas/{target}/image/logs?{q}")),
            (Method::GET, format!("/1/lambdas/{target}/docs?{q}")),
            (Method::POST, format!("/1/lambdas/{target}/update")),
            (Method::DELETE, format!("/1/lambdas/{target}?{q}")),
            (Method::GET, format!("/1/lambdas/{target}")),
            (Method::DELETE, format!("/1/lambdas/{target}")),
        ];
        for (method, path) in cases {
            let r = as_other(method.clone(), &path).send().await;
            let body = assert_error(r, 404, 42001).await;
            assert_eq!(
                body["detail"],
                format!("Lambda with id '{target}' not found"),
                "{method} {path}"
            );
        }
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            let r = as_other(method.clone(), &format!("/1/lambdas/{target}/proxy/hello"))
                .send()
                .await;
            assert_error(r, 404, 42001).await;
        }
        let r = s.get(&format!("/1/lambdas/{target}/proxy/hello?{q}")).await;
        assert_error(r, 404, 42001).await;
        let r = as_other(Method::HEAD, &format!("/1/lambdas/{target}?{q}"))
            .send()
            .await;
        assert_eq!(r.status(), 404);
        let r = as_other(Method::PATCH, &format!("/1/lambdas/{target}"))
            .json(&json!({"lambda_name": "stolen"}))
            .send()
            .await;
        assert_error(r, 404, 42001).await;
        let r = as_other(Method::PUT, &format!("/1/lambdas/{target}"))
            .upload(Upload::new(fixture_zip()).parameters(json!({})))
            .send()
            .await;
        assert_error(r, 404, 42001).await;
    }
    let (_, list) = s.get_json(&format!("/1/lambdas?{q}")).await;
    assert_eq!(list["lambdas"], Value::Array(vec![]));
    let r = as_other(Method::GET, "/1/lambdas").send().await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["lambdas"],
        Value::Array(vec![])
    );
    // Names are unique per account: another account may take the same name, so a
    // create cannot reveal that the name exists elsewhere.
    let r = s
        .create_raw(OTHER_ACCOUNT, Upload::new(fixture_zip()).named("private"))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // Untouched for its owner.
    let (_, l) = s
        .get_json(&format!("/1/lambdas/{id}?account_id={ACCOUNT}"))
        .await;
    assert_eq!(
        (l["lambda_name"].as_str(), l["version"].as_u64()),
        (Some("private"), Some(1))
    );
    assert_eq!(s.proxy(Method::GET, &id, "/hello").await.status(), 200);
}

/// Tenant B validates, three times at once, a valid component made to keep Cranelift
/// busy (tens of seconds of CPU). B's third validation is refused (two at once per
/// account); each compile runs in a child process that ends at
/// `builds.compile_cpu_secs`, and B's validations name that limit. Tenant A's create,
/// made meanwhile, builds and serves.
#[tokio::test]
async fn a_compile_heavy_component_ends_at_its_cpu_limit_and_others_still_build() {
    let s = Server::start(&[("LUNA_LAMBDA_BUILDS_COMPILE_CPU_SECS", "2")]);
    let heavy = zip_of(&[("lambda.wasm", &compile_heavy_component(40, 4000))]);
    let attack = || {
        s.call(Method::POST, "/1/lambdas/validate")
            .account(OTHER_ACCOUNT)
            .upload(
                Upload::new(heavy.clone())
                    .named("heavy")
                    .without_credentials(),
            )
            .send_json()
    };
    let bystander = async {
        let id = s.create(ACCOUNT, "bystander", fixture_zip(), None).await;
        s.wait_status(&id, "running").await;
        id
    };
    let (answers, id) = tokio::join!(
        futures::future::join_all([attack(), attack(), attack()]),
        bystander
    );
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 503)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    assert_eq!(refused[0]["error_code"], 42010, "{}", refused[0]);
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .contains(OTHER_ACCOUNT),
        "{}",
        refused[0]
    );
    for (status, body) in answers.iter().filter(|(status, _)| *status != 503) {
        assert_eq!(*status, 200, "{body}");
        let errors = body["errors"].to_string();
        assert!(
            errors.contains("cannot be compiled within the service's limits")
                && errors.contains("builds.compile_cpu_secs"),
            "{body}"
        );
    }
    assert_eq!(s.proxy(Method::GET, &id, "/").await.status(), 200);
    assert_eq!(s.get("/healthcheck").await.status(), 200);
}

/// The same component under a memory limit too small for its compile (though ample for
/// an ordinary one): the validate names `builds.compile_memory_mb`; the service is
/// unharmed.
#[tokio::test]
async fn a_compile_past_its_memory_limit_is_a_clear_problem() {
    let s = Server::start(&[("LUNA_LAMBDA_BUILDS_COMPILE_MEMORY_MB", "40")]);
    let heavy = zip_of(&[("lambda.wasm", &compile_heavy_component(40, 4000))]);
    let (status, body) = s
        .call(Method::POST, "/1/lambdas/validate")
        .upload(Upload::new(heavy).named("heavy").without_credentials())
        .send_json()
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["errors"]
            .to_string()
            .contains("builds.compile_memory_mb"),
        "{body}"
    );
    assert_eq!(s.get("/healthcheck").await.status(), 200);
}
