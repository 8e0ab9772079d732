//! Another account's lambda is invisible on every route: answered exactly like a
//! missing one, never listed, never modified, never called.

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
