//! Every value the HTTP edge parses from a client: Luna-Request-Id, ids, names, lambda
//! types, query strings against each route's parameters, Accept negotiation, the
//! account header and the JSON parameter documents. Parsers must never panic; what they
//! accept must round-trip and be valid by their own rules.

use http::{HeaderMap, HeaderValue};
use luna_lambda::edge::input::{Query, account_optional, json, negotiate};
use luna_lambda::model::{
    AccountId, DeployParameters, HostPattern, LambdaId, LambdaName, LambdaType, Parameters,
    RequestId, SandboxBounds, docker_command_problem,
};

/// The query parameters of the list route, the widest set a route accepts.
const LIST_QUERY: [&str; 6] = [
    "account_id",
    "lambda_type",
    "lambda_name",
    "namespace",
    "page",
    "page_size",
];

/// The checks of one input (the libFuzzer target and the corpus replay call this).
pub fn check(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.as_ref();

    if let Ok(id) = text.parse::<RequestId>() {
        assert_eq!(id.as_str(), text);
        assert!(HeaderValue::from_str(id.as_str()).is_ok());
    }
    if let Ok(id) = text.parse::<AccountId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(id) = text.parse::<LambdaId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(name) = LambdaName::try_from(text.to_owned()) {
        assert_eq!(name.as_str(), text);
        assert!(!text.is_empty() && text.len() <= LambdaName::MAX_LEN);
    }
    if let Ok(kind) = text.parse::<LambdaType>() {
        assert_eq!(kind.as_str(), text);
    }
    // `<pattern> <host>`: matching takes any host text, and host names are matched
    // without regard to ASCII case.
    if let Some((pattern, host)) = text.split_once(' ')
        && let Ok(pattern) = HostPattern::parse(pattern)
    {
        assert_eq!(
            pattern.admits(host, 443, 443),
            pattern.admits(&host.to_ascii_uppercase(), 443, 443)
        );
    }
    let _ = docker_command_problem(text);

    if let Ok(query) = Query::parse(Some(text), &LIST_QUERY) {
        let _ = query.account();
        let _ = query.get::<LambdaType>("lambda_type");
        if let Ok(Some(page)) = query.int_in("page_size", 1..=100) {
            assert!((1..=100).contains(&page));
        }
        let _ = query.int_in("page", 1..=u64::from(u32::MAX));
    }

    if let Ok(value) = HeaderValue::from_bytes(bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, value.clone());
        headers.insert("luna-account-id", value);
        let supported = ["application/json", "text/plain"];
        if let Ok(chosen) = negotiate(&headers, &supported, Some("application/json")) {
            assert!(supported.contains(&chosen));
        }
        if let Ok(Some(account)) = account_optional(&headers) {
            assert_eq!(account.to_string().as_bytes(), bytes);
        }
    }

    // The JSON documents of create / recreate / patch: what parses must serialize back
    // to the same value, and checking it must not panic.
    if let Ok(mut parameters) = json::<Parameters>(bytes, "parameters") {
        let _ = parameters.problems(true);
        let _ = parameters.wasm_problems();
        let mut again: Parameters = serde_json::from_value(
            serde_json::to_value(&parameters).expect("parameters serialize"),
        )
        .expect("serialized parameters parse");
        // `config` is free JSON whose floats may move by one ulp through text.
        assert_eq!(
            again
                .config
                .take()
                .map(|c| c.keys().cloned().collect::<Vec<_>>()),
            parameters
                .config
                .as_ref()
                .map(|c| c.keys().cloned().collect())
        );
        parameters.config = None;
        assert_eq!(again, parameters);
    }
    if let Ok(deploy) = json::<DeployParameters>(bytes, "deploy_parameters") {
        let bounds = SandboxBounds {
            max_memory_limit_mb: 512,
            max_request_timeout_ms: 60_000,
            max_concurrent_requests: 64,
        };
        let _ = deploy.problems(&bounds);
    }
}
