//! The lambda routes: create, recreate, validate, patch, list, get, head, delete,
//! status, logs, update and the image (build job) status and logs, with the lambda's
//! wire type (`LambdaDto`), kept apart from the store's records.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path, RawQuery, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::edge::input::{self, Query, UploadParts};
use crate::edge::{ApiError, AppState};
use crate::lifecycle::{ListFilter, Upload};
use crate::model::{
    BaseImage, Credentials, DeployParameters, LambdaName, LambdaStatus, LambdaType, Parameters,
    Runtime, SandboxParameters,
};
use crate::store::{LambdaRecord, ListQuery};

use super::shared::{ApiResult, lambda_id, no_query, reader_account, scoped};

const UPLOAD_PARTS: &[&str] = &["archive", "credentials", "parameters", "deploy_parameters"];
const VALIDATE_PARTS: &[&str] = &["archive", "parameters"];

/// The lambda object of GET one / list.
#[derive(Debug, Serialize)]
pub(super) struct LambdaDto {
    account_id: String,
    lambda_id: String,
    lambda_name: String,
    description: String,
    version: u32,
    info: StatusDto,
    lambda_type: LambdaType,
    runtime: Runtime,
    create_time: String,
    last_update_time: String,
    additional_user_docker_commands: Vec<String>,
    base_image: Option<BaseImage>,
    workers: u32,
    deploy_parameters: DeployParameters,
}

#[derive(Debug, Serialize)]
pub(super) struct StatusDto {
    status: LambdaStatus,
    pod_statuses: BTreeMap<String, String>,
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl LambdaDto {
    fn new(r: LambdaRecord, state: &AppState) -> Self {
        let spec = r.current;
        let parameters = Parameters::from(&spec.parameters);
        let mut deploy = DeployParameters::from(&spec.deploy_parameters);
        deploy.gpu_enabled.get_or_insert(0);
        deploy.pod_count.get_or_insert(1);
        deploy
            .namespace
            .get_or_insert_with(|| crate::model::DEFAULT_NAMESPACE.to_owned());
        deploy.resources.get_or_insert_with(Default::default);
        deploy.selector.get_or_insert_with(Default::default);
        if spec.runtime == Runtime::Wasm {
            let defaults = &state.config.sandbox;
            let sandbox = deploy
                .sandbox
                .get_or_insert_with(SandboxParameters::default);
            sandbox
                .memory_limit_mb
                .get_or_insert(defaults.memory_limit_mb);
            sandbox
                .request_timeout_ms
                .get_or_insert(defaults.request_timeout_ms);
            sandbox
                .max_concurrent_requests
                .get_or_insert(defaults.max_concurrent_requests);
            sandbox.allowed_outbound_hosts.get_or_insert_with(Vec::new);
        }
        Self {
            account_id: r.account_id.to_string(),
            lambda_id: r.lambda_id.to_string(),
            lambda_name: r.lambda_name,
            description: r.description,
            version: spec.version.0,
            info: status_dto(r.status),
            lambda_type: spec.lambda_type,
            runtime: spec.runtime,
            create_time: time(r.create_time),
            last_update_time: time(r.last_update_time),
            additional_user_docker_commands: parameters
                .additional_user_docker_commands
                .unwrap_or_default(),
            base_image: parameters.base_image,
            workers: parameters.workers.unwrap_or(1),
            deploy_parameters: deploy,
        }
    }
}

fn status_dto(status: LambdaStatus) -> StatusDto {
    // A WASM lambda has one logical replica: the in-process pool.
    StatusDto {
        status,
        pod_statuses: BTreeMap::from([("0".to_owned(), status.as_str().to_owned())]),
    }
}

fn parse_upload(parts: UploadParts, creating: bool) -> ApiResult<Upload> {
    let archive = parts.archive.ok_or_else(|| ApiError::missing("archive"))?;
    if archive.is_empty() {
        return Err(ApiError::no_data());
    }
    let credentials: Credentials = match parts.credentials {
        Some(c) => input::json(&c, "credentials")?,
        None => return Err(ApiError::missing("credentials")),
    };
    let parameters: Parameters = match parts.parameters {
        Some(p) => input::json(&p, "parameters")?,
        None if creating => return Err(ApiError::missing("parameters")),
        None => Parameters::default(),
    };
    let deploy_parameters: DeployParameters = match parts.deploy_parameters {
        Some(d) => input::json(&d, "deploy_parameters")?,
        None => DeployParameters::default(),
    };
    Ok(Upload {
        archive,
        credentials,
        parameters,
        deploy_parameters,
    })
}

async fn read_parts(
    state: &AppState,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    allowed: &[&str],
) -> ApiResult<UploadParts> {
    input::require_multipart(headers)?;
    let multipart = multipart.map_err(|e| ApiError::invalid_request(&e.body_text()))?;
    input::read_upload(multipart, allowed, &state.config.limits).await
}

/// `POST /1/lambdas`.
pub(super) async fn create(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult {
    no_query(q.as_deref())?;
    let account = input::account_required(&headers)?;
    let parts = read_parts(&state, &headers, multipart, UPLOAD_PARTS).await?;
    let upload = parse_upload(parts, true)?;
    let id = state.lifecycle.create(account, upload).await?;
    let location = format!("/1/lambdas/{id}");
    let mut response = (
        StatusCode::CREATED,
        Json(json!({ "lambda_id": id.to_string() })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// `PUT /1/lambdas/{lambda_id}`.
pub(super) async fn recreate(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult {
    no_query(q.as_deref())?;
    let account = input::account_required(&headers)?;
    let id = lambda_id(&raw_id)?;
    // Unknown ids fail before the upload is read.
    state.lifecycle.owned(id, Some(account)).await?;
    let parts = read_parts(&state, &headers, multipart, UPLOAD_PARTS).await?;
    let upload = parse_upload(parts, false)?;
    let version = state.lifecycle.recreate(account, id, upload).await?;
    Ok(Json(json!({ "version": version.0 })).into_response())
}

/// `POST /1/lambdas/validate`.
pub(super) async fn validate(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult {
    no_query(q.as_deref())?;
    let caller = input::account_optional(&headers)?;
    let parts = read_parts(&state, &headers, multipart, VALIDATE_PARTS).await?;
    let archive = parts.archive.ok_or_else(|| ApiError::missing("archive"))?;
    let parameters: Parameters = match parts.parameters {
        Some(p) => input::json(&p, "parameters")?,
        None => return Err(ApiError::missing("parameters")),
    };
    let errors = state
        .lifecycle
        .validate(caller, parameters, archive)
        .await?;
    Ok(Json(json!({ "errors": errors })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    lambda_name: Option<String>,
    description: Option<String>,
}

/// `PATCH /1/lambdas/{lambda_id}`.
pub(super) async fn patch(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    no_query(q.as_deref())?;
    let account = input::account_required(&headers)?;
    let id = lambda_id(&raw_id)?;
    input::require_json_content(&headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body", state.config.limits.max_json_bytes as u64)
        } else {
            ApiError::invalid_request(&e.body_text())
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::no_json());
    }
    if body.len() > state.config.limits.max_json_bytes {
        return Err(ApiError::too_large(
            "request body",
            state.config.limits.max_json_bytes as u64,
        ));
    }
    let patch: PatchBody = input::json(&body, "body")?;
    let name = patch
        .lambda_name
        .map(LambdaName::try_from)
        .transpose()
        .map_err(|e| ApiError::bad_json("body.lambda_name", &e.0))?;
    if let Some(d) = &patch.description
        && d.chars().count() > crate::model::MAX_DESCRIPTION_LEN
    {
        return Err(ApiError::bad_json(
            "body.description",
            &format!(
                "must be at most {} characters",
                crate::model::MAX_DESCRIPTION_LEN
            ),
        ));
    }
    state
        .lifecycle
        .patch(account, id, name, patch.description)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /1/lambdas`.
pub(super) async fn list(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let query = Query::parse(
        q.as_deref(),
        &[
            "account_id",
            "create_time__lt",
            "create_time__gte",
            "page",
            "page_size",
            "lambda_type",
            "lambda_name",
            "namespace",
        ],
    )?;
    let time = |name: &str| -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
        query
            .raw(name)
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| ApiError::bad_query(name))
            })
            .transpose()
    };
    let namespaces = match query.raw("namespace") {
        None => None,
        Some(raw) => {
            let list: Vec<String> = raw.split(',').map(str::to_owned).collect();
            if list
                .iter()
                .any(|n| crate::model::namespace_problem(n).is_some())
            {
                return Err(ApiError::bad_query("namespace"));
            }
            Some(list)
        }
    };
    let filter = ListFilter {
        query: ListQuery {
            account: reader_account(&headers, &query)?,
            created_before: time("create_time__lt")?,
            created_since: time("create_time__gte")?,
            lambda_type: query.get("lambda_type")?,
            name_contains: query.raw("lambda_name").map(str::to_owned),
            namespaces,
        },
        page: usize::try_from(query.int_in("page", 1..=u64::from(u32::MAX))?.unwrap_or(1))
            .unwrap_or(1),
        page_size: usize::try_from(query.int_in("page_size", 1..=100)?.unwrap_or(10)).unwrap_or(10),
    };
    let lambdas: Vec<LambdaDto> = state
        .lifecycle
        .list(&filter)
        .await?
        .into_iter()
        .map(|r| LambdaDto::new(r, &state))
        .collect();
    Ok(Json(json!({ "lambdas": lambdas })).into_response())
}

/// `GET /1/lambdas/{lambda_id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let (record, _) = scoped(&state, &raw_id, q.as_deref(), &headers, &[]).await?;
    Ok(Json(LambdaDto::new(record, &state)).into_response())
}

/// `HEAD /1/lambdas/{lambda_id}`.
pub(super) async fn head(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    scoped(&state, &raw_id, q.as_deref(), &headers, &[]).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /1/lambdas/{lambda_id}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let query = Query::parse(q.as_deref(), &["account_id"])?;
    let account = reader_account(&headers, &query)?;
    let id = lambda_id(&raw_id)?;
    state.lifecycle.delete(account, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /1/lambdas/{lambda_id}/status`.
pub(super) async fn status(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let (record, _) = scoped(&state, &raw_id, q.as_deref(), &headers, &[]).await?;
    let (status, pod_statuses) = state.lifecycle.live_status(&record).await;
    Ok(Json(StatusDto {
        status,
        pod_statuses,
    })
    .into_response())
}

const TAIL_MAX: u64 = 4_294_967_296;

/// `GET /1/lambdas/{lambda_id}/logs`.
pub(super) async fn logs(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let (record, query) = scoped(&state, &raw_id, q.as_deref(), &headers, &["tail_lines"]).await?;
    let tail = query.int_in("tail_lines", 0..=TAIL_MAX)?;
    let logs = state.lifecycle.pod_logs(&record, tail).await?;
    Ok(Json(json!({ "logs": logs })).into_response())
}

/// `POST /1/lambdas/{lambda_id}/update`.
pub(super) async fn update(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    no_query(q.as_deref())?;
    let account = input::account_required(&headers)?;
    let id = lambda_id(&raw_id)?;
    let version = state.lifecycle.update(account, id).await?;
    Ok(Json(json!({ "version": version.0 })).into_response())
}

/// `GET /1/lambdas/{lambda_id}/image/status`.
pub(super) async fn image_status(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let (record, _) = scoped(&state, &raw_id, q.as_deref(), &headers, &[]).await?;
    let image = state.lifecycle.image(record.lambda_id, None).await?;
    Ok(Json(json!({ "status": image.status })).into_response())
}

/// `GET /1/lambdas/{lambda_id}/image/logs`.
pub(super) async fn image_logs(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let (record, query) = scoped(&state, &raw_id, q.as_deref(), &headers, &["tail_lines"]).await?;
    let tail = query.int_in("tail_lines", 0..=TAIL_MAX)?;
    let mut lines = state.lifecycle.image(record.lambda_id, None).await?.logs;
    if let Some(t) = tail {
        let keep = usize::try_from(t).unwrap_or(usize::MAX);
        let skip = lines.len().saturating_sub(keep);
        lines.drain(..skip);
    }
    Ok(Json(json!({ "logs": lines })).into_response())
}
