//! The service routes: version, documents (a lambda's OpenAPI, the service's, the
//! manual), effective configuration, plugins, Prometheus metrics and the healthcheck.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::config::StoreBackend;
use crate::edge::input::{self, Query};
use crate::edge::{ApiError, AppState};

use super::shared::{ApiResult, HTML, JSON, TEXT, YAML, no_query, scoped, typed};

/// `GET /version`.
pub(super) async fn version(RawQuery(q): RawQuery) -> ApiResult {
    no_query(q.as_deref())?;
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    Ok(Json(json!({"Version": {
        "api": 1,
        "major": part(env!("CARGO_PKG_VERSION_MAJOR")),
        "minor": part(env!("CARGO_PKG_VERSION_MINOR")),
        "patch": part(env!("CARGO_PKG_VERSION_PATCH")),
    }}))
    .into_response())
}

/// `GET /1/lambdas/{lambda_id}/docs`.
pub(super) async fn lambda_docs(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let (record, _) = scoped(&state, &raw_id, q.as_deref(), &headers, &[]).await?;
    let kind = input::negotiate(&headers, &[YAML, HTML], None)?;
    let text = record.current.openapi.clone().unwrap_or_else(|| {
        crate::docs::default_lambda_spec(&record.lambda_id.to_string(), &record.lambda_name)
    });
    Ok(if kind == HTML {
        typed("text/html; charset=utf-8", crate::docs::openapi_html(&text))
    } else {
        typed(YAML, text)
    })
}

/// `GET /1/docs/spec`.
pub(super) async fn spec(RawQuery(q): RawQuery, headers: HeaderMap) -> ApiResult {
    no_query(q.as_deref())?;
    let kind = input::negotiate(&headers, &[YAML, HTML], None)?;
    Ok(if kind == HTML {
        typed(
            "text/html; charset=utf-8",
            crate::docs::openapi_html(crate::docs::SERVICE_SPEC_YAML),
        )
    } else {
        typed(YAML, crate::docs::SERVICE_SPEC_YAML.to_owned())
    })
}

/// `GET /1/docs/dev`.
pub(super) async fn manual_root(RawQuery(q): RawQuery) -> ApiResult {
    no_query(q.as_deref())?;
    Ok(Redirect::to("/1/docs/dev/index.html").into_response())
}

/// `GET /1/docs/dev/{page}`.
pub(super) async fn manual(Path(page): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    no_query(q.as_deref())?;
    crate::docs::manual_page(&page)
        .map(|html| typed("text/html; charset=utf-8", html))
        .ok_or_else(|| ApiError::no_route(&format!("/1/docs/dev/{page}")))
}

/// `GET /1/config`.
pub(super) async fn config(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    no_query(q.as_deref())?;
    let kind = input::negotiate(&headers, &[JSON, TEXT], Some(JSON))?;
    Ok(if kind == TEXT {
        typed("text/plain; charset=utf-8", state.config.masked_text())
    } else {
        Json(state.config.masked_json()).into_response()
    })
}

/// `GET /1/plugins`: built-in components that run beside the API.
pub(super) async fn plugins(State(state): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    no_query(q.as_deref())?;
    let container = state.config.container_backend != crate::config::ContainerBackend::None;
    Ok(Json(json!({ "plugins": [
        {"name": "wasm-runtime", "running": 1},
        {"name": "container-backend", "running": i32::from(container)},
    ]}))
    .into_response())
}

/// `GET /metrics`.
pub(super) async fn metrics(State(state): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    no_query(q.as_deref())?;
    let engine = state.lifecycle.engine();
    let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let text = state.metrics.render(
        &state.registry.occupancy(),
        &[
            ("loaded_lambdas", to_i64(state.registry.len())),
            ("compile_cache_hits", to_i64(engine.cache_hits())),
            ("compile_cache_misses", to_i64(engine.cache_misses())),
            ("pooling_allocator", i64::from(engine.pooling())),
            (
                "log_lines_dropped",
                i64::try_from(state.lifecycle.logs().dropped()).unwrap_or(i64::MAX),
            ),
        ],
    );
    Ok(typed("text/plain; version=0.0.4; charset=utf-8", text))
}

/// `GET /healthcheck`, `GET /1/healthcheck`.
pub(super) async fn healthcheck(State(state): State<AppState>, RawQuery(q): RawQuery) -> ApiResult {
    let query = Query::parse(q.as_deref(), &["include_luna_services"])?;
    let include_services = query.int_in("include_luna_services", 0..=1)? == Some(1);
    let started = Instant::now();
    let mut errors = Vec::new();
    // The embedded store is part of this process and always checked; a database is a
    // service it depends on, checked when the caller asks for those.
    let component = match state.config.store.backend {
        StoreBackend::Sled => Some("store"),
        StoreBackend::Postgres => include_services.then_some("postgres"),
    };
    let probe = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        if component.is_some() {
            state
                .lifecycle
                .store()
                .probe()
                .await
                .map_err(|e| e.to_string())?;
        }
        probe_data_dir(&state.config.data_dir).await
    })
    .await;
    let component = component.unwrap_or("data_dir");
    match probe {
        Ok(Ok(())) => {}
        Ok(Err(cause)) => {
            tracing::error!(%cause, component, "healthcheck: store unusable");
            errors.push(json!({"component": component, "error": "the store cannot be written"}));
        }
        Err(_) => errors
            .push(json!({"component": component, "error": "the store did not answer within 5 s"})),
    }
    let execution_time = started.elapsed().as_secs_f64();
    Ok(if errors.is_empty() {
        Json(json!({ "execution_time": execution_time })).into_response()
    } else {
        (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "errors": errors, "execution_time": execution_time })),
        )
            .into_response()
    })
}

/// The data directory must still exist and take new files (archives, keys, artifacts).
async fn probe_data_dir(dir: &std::path::Path) -> Result<(), String> {
    // One file per probe: concurrent healthchecks must not remove each other's.
    let probe = dir.join(format!(".health-probe-{}", uuid::Uuid::new_v4()));
    tokio::fs::write(&probe, b"ok")
        .await
        .map_err(|e| format!("{}: {e}", probe.display()))?;
    tokio::fs::remove_file(&probe)
        .await
        .map_err(|e| format!("{}: {e}", probe.display()))
}
