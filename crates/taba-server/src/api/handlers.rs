//! Route handlers: decode and check input, call [`ServerState`], encode the
//! reply. No state logic lives here.

use super::error::ApiError;
use super::extract::{parse_json, read_body, MAX_JSON_BODY, Q};
use super::peer::{verify_agent, AgentCaller, Registration};
use super::AppState;
use crate::state::ServerState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use taba_types::api::*;
use taba_types::parse::{parse_job_json, parse_job_toml, JobParseError, MAX_JOB_BYTES};
use taba_types::wire::{
    check_protocol, AllocUpdateRequest, HeartbeatRequest, HeartbeatResponse, NodeAllocations,
    RegisterRequest, RegisterResponse, PROTOCOL,
};
use taba_types::{Allocation, DurationSpec, JobSpec, Node, NodeId};
use tokio::io::AsyncWriteExt;

type R<T> = Result<Json<T>, ApiError>;

/// `?namespace=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsQuery {
    namespace: Option<String>,
}

impl NsQuery {
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

pub async fn openapi(State(app): State<AppState>) -> Json<Value> {
    Json((*app.openapi).clone())
}

// ---- jobs ----

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn job_parse_error(e: JobParseError) -> ApiError {
    match e {
        JobParseError::NotUtf8 { offset } => ApiError::BadRequest {
            message: format!("job is not valid UTF-8 at byte {offset}"),
            field: None,
        },
        JobParseError::TooLarge { .. } => ApiError::TooLarge {
            limit: MAX_JOB_BYTES,
        },
        JobParseError::Syntax {
            line,
            column,
            path,
            message,
        } => {
            let message = match (line, column) {
                (Some(l), Some(c)) => format!("line {l}, column {c}: {message}"),
                _ => message,
            };
            ApiError::BadRequest {
                message,
                field: path,
            }
        }
        JobParseError::Invalid(errs) => ApiError::Invalid {
            field: errs.0.first().map(|e| e.path.clone()),
            message: errs.to_string(),
        },
    }
}

/// Every container image a job names must be in the image store.
fn check_images(state: &ServerState, spec: &JobSpec) -> Result<(), ApiError> {
    for (i, g) in spec.groups.iter().enumerate() {
        for (j, t) in g.tasks.iter().enumerate() {
            if let Some(image) = &t.image {
                if matches!(t.driver.as_str(), "container" | "system")
                    && !crate::images::exists(&state.images, image)
                {
                    return Err(ApiError::invalid(
                        format!("group[{i}].task[{j}].image"),
                        format!(
                            "image {image:?} is not in the image store; import it with `taba image import`"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

pub async fn register_job(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> R<RegisterJobResponse> {
    let ct = content_type(&headers);
    let bytes = read_body(body, MAX_JOB_BYTES).await?;
    let spec = match ct.as_str() {
        "application/toml" | "text/toml" | "text/x-toml" => parse_job_toml(&bytes),
        "application/json" | "" => parse_job_json(&bytes),
        other => return Err(ApiError::UnsupportedMediaType(other.to_string())),
    }
    .map_err(job_parse_error)?;
    check_images(&app.state, &spec)?;
    Ok(Json(app.state.register_job(spec).await?))
}

pub async fn list_jobs(State(app): State<AppState>, Q(q): Q<NsQuery>) -> R<Vec<JobListEntry>> {
    Ok(Json(app.state.list_jobs(q.namespace.as_deref())))
}

pub async fn get_job(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<NsQuery>,
) -> R<taba_types::Job> {
    Ok(Json(app.state.job(q.ns(), &name)?))
}

pub async fn stop_job(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<NsQuery>,
) -> R<EvalResponse> {
    let (eval_id, index) = app.state.stop_job(q.ns(), &name).await?;
    Ok(Json(EvalResponse { eval_id, index }))
}

pub async fn job_status(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<NsQuery>,
) -> R<JobStatusResponse> {
    Ok(Json(app.state.job_status(q.ns(), &name)?))
}

pub async fn job_history(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<NsQuery>,
) -> R<JobHistory> {
    Ok(Json(JobHistory {
        versions: app.state.job_versions(q.ns(), &name).await?,
    }))
}

// ---- allocations ----

pub async fn list_allocs(State(app): State<AppState>) -> R<Vec<AllocListEntry>> {
    Ok(Json(app.state.list_allocs()))
}

pub async fn get_alloc(State(app): State<AppState>, Path(id): Path<String>) -> R<AllocDetail> {
    Ok(Json(AllocDetail::from_alloc(&app.state.find_alloc(&id)?)))
}

pub async fn stop_alloc(State(app): State<AppState>, Path(id): Path<String>) -> R<EvalResponse> {
    let (eval_id, index) = app.state.stop_alloc(&id).await?;
    Ok(Json(EvalResponse { eval_id, index }))
}

/// The task a logs/exec request means: the named one, or the group's only task.
fn pick_task(a: &Allocation, task: Option<String>) -> Result<String, ApiError> {
    let names: Vec<&str> = a.group_spec.tasks.iter().map(|t| t.name.as_str()).collect();
    match task {
        Some(t) if names.contains(&t.as_str()) => Ok(t),
        Some(t) => Err(ApiError::bad(
            "task",
            format!(
                "allocation has no task {t:?}; its tasks: {}",
                names.join(", ")
            ),
        )),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(ApiError::bad(
            "task",
            format!(
                "allocation has several tasks; name one of: {}",
                names.join(", ")
            ),
        )),
    }
}

/// A client for the agent of `a`'s node, its base URL and its address.
async fn agent_of(
    app: &AppState,
    a: &Allocation,
) -> Result<(reqwest::Client, String, String), ApiError> {
    let node = app.state.find_node(a.node_id.as_str())?;
    let (client, base) = app.agents.for_node(&node).await?;
    Ok((client, base, node.http_addr))
}

/// Relay an agent's error reply (status and body) as it is when it is ours.
async fn agent_failure(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) if status.is_client_error() => {
            if status == StatusCode::NOT_FOUND {
                ApiError::NotFound(e.error.message)
            } else {
                ApiError::BadRequest {
                    message: e.error.message,
                    field: e.error.field,
                }
            }
        }
        Ok(e) => ApiError::Agent(format!("agent failed: {}", e.error.message)),
        Err(_) => ApiError::Agent(format!(
            "agent answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    }
}

/// `logs` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    task: Option<String>,
    #[serde(rename = "type")]
    stream: Option<String>,
    follow: Option<bool>,
    offset: Option<u64>,
}

pub async fn alloc_logs(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<LogsQuery>,
) -> Result<Response, ApiError> {
    let a = app.state.find_alloc(&id)?;
    let task = pick_task(&a, q.task)?;
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::bad("type", "must be stdout or stderr"));
    }
    let (http, base, addr) = agent_of(&app, &a).await?;
    let url = format!("{base}/v1/client/allocations/{}/logs", a.id);
    let follow = q.follow.unwrap_or(false);
    let offset = q.offset.unwrap_or(0).to_string();
    let resp = http
        .get(url)
        .query(&[
            ("task", task.as_str()),
            ("type", stream.as_str()),
            ("follow", if follow { "true" } else { "false" }),
            ("offset", offset.as_str()),
        ])
        .send()
        .await
        .map_err(|e| {
            ApiError::Agent(format!(
                "cannot reach the agent at {addr}: {}",
                taba_types::error_chain(&e)
            ))
        })?;
    if !resp.status().is_success() {
        return Err(agent_failure(resp).await);
    }
    let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

/// `exec` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    task: Option<String>,
}

pub async fn alloc_exec(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<ExecQuery>,
    body: Body,
) -> R<ExecResponse> {
    let limit = MAX_EXEC_STDIN / 3 * 4 + (64 << 10);
    let req: ExecRequest = parse_json(&read_body(body, limit).await?)?;
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(ApiError::invalid("command", "must name a program"));
    }
    if req.command.iter().any(|c| c.contains('\0')) {
        return Err(ApiError::invalid("command", "must not contain NUL"));
    }
    b64::decode(&req.stdin_b64)
        .map_err(|e| ApiError::invalid("stdin_b64", format!("not base64: {e}")))?;
    let a = app.state.find_alloc(&id)?;
    let task = pick_task(&a, q.task)?;
    let (http, base, addr) = agent_of(&app, &a).await?;
    let url = format!("{base}/v1/client/allocations/{}/exec", a.id);
    let resp = http
        .post(url)
        .query(&[("task", task.as_str())])
        .json(&req)
        .send()
        .await
        .map_err(|e| {
            ApiError::Agent(format!(
                "cannot reach the agent at {addr}: {}",
                taba_types::error_chain(&e)
            ))
        })?;
    if !resp.status().is_success() {
        return Err(agent_failure(resp).await);
    }
    let out: ExecResponse = resp
        .json()
        .await
        .map_err(|e| ApiError::Agent(format!("unreadable exec reply from the agent: {e}")))?;
    Ok(Json(out))
}

// ---- nodes ----

pub async fn list_nodes(State(app): State<AppState>) -> R<Vec<NodeListEntry>> {
    Ok(Json(
        app.state
            .list_nodes()
            .iter()
            .map(|(n, c)| NodeListEntry::from_node(n, *c))
            .collect(),
    ))
}

pub async fn get_node(State(app): State<AppState>, Path(key): Path<String>) -> R<NodeDetail> {
    let node = app.state.find_node(&key)?;
    let mut allocs = app.state.node_allocs(&node.id);
    allocs.sort_by_key(|a| std::cmp::Reverse(a.create_time));
    Ok(Json(NodeDetail {
        id: node.id.clone(),
        name: node.name.clone(),
        status: node.status,
        allocations: allocs.iter().map(AllocListEntry::from_alloc).collect(),
        node,
    }))
}

// ---- images ----

/// Largest image tar accepted.
pub const MAX_IMAGE_BYTES: u64 = 16 << 30;

pub async fn import_image(State(app): State<AppState>, body: Body) -> R<ImageInfo> {
    let dir = app.state.config.data_dir.join("uploads");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{}.tar", uuid_like()));
    let res = async {
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot create upload file: {e}")))?;
        let mut stream = body.into_data_stream();
        let mut size: u64 = 0;
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest {
                message: format!("cannot read request body: {e}"),
                field: None,
            })?;
            size += chunk.len() as u64;
            if size > MAX_IMAGE_BYTES {
                return Err(ApiError::TooLarge {
                    limit: MAX_IMAGE_BYTES as usize,
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(format!("cannot write upload file: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write upload file: {e}")))?;
        if size == 0 {
            return Err(ApiError::bad("body", "empty body; send the image tar"));
        }
        let images = app.state.images.clone();
        let p = path.clone();
        tokio::task::spawn_blocking(move || crate::images::import(&images, &p))
            .await
            .map_err(|_| ApiError::ShuttingDown)?
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    Ok(Json(res?))
}

fn uuid_like() -> String {
    taba_types::EvalId::generate().0
}

pub async fn list_images(State(app): State<AppState>) -> R<Vec<ImageInfo>> {
    let images = app.state.images.clone();
    let list = tokio::task::spawn_blocking(move || crate::images::list(&images))
        .await
        .map_err(|_| ApiError::ShuttingDown)??;
    Ok(Json(list))
}

pub async fn remove_image(
    State(app): State<AppState>,
    Path(reference): Path<String>,
) -> R<ImageInfo> {
    let images = app.state.images.clone();
    let reference = reference.trim_start_matches('/').to_string();
    let out = tokio::task::spawn_blocking(move || crate::images::remove(&images, &reference))
        .await
        .map_err(|_| ApiError::ShuttingDown)??;
    Ok(Json(out))
}

// ---- evaluations ----

pub async fn get_eval(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> R<taba_types::Evaluation> {
    app.state
        .eval(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("evaluation {id:?} not found")))
}

// ---- agent ----

pub(super) fn protocol(v: u32) -> Result<(), ApiError> {
    check_protocol(v).map_err(|m| {
        tracing::warn!("refused an agent message: {m}");
        ApiError::bad("protocol", m)
    })
}

pub(super) fn check_ident(field: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > 128 {
        return Err(ApiError::invalid(field, "must be 1 to 128 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(ApiError::invalid(
            field,
            format!("invalid character {c:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn check_node(n: &Node) -> Result<(), ApiError> {
    check_ident("node.id", n.id.as_str())?;
    check_ident("node.name", &n.name)?;
    if !n.http_addr.is_empty() {
        let ok = n
            .http_addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(ApiError::invalid(
                "node.http_addr",
                format!("{:?} is not host:port", n.http_addr),
            ));
        }
    }
    if n.resources.cpu == 0 {
        return Err(ApiError::invalid("node.resources.cpu", "must be positive"));
    }
    if n.resources.memory.0 == 0 {
        return Err(ApiError::invalid(
            "node.resources.memory",
            "must be positive",
        ));
    }
    Ok(())
}

pub async fn agent_register(
    State(app): State<AppState>,
    caller: AgentCaller,
    body: Body,
) -> R<RegisterResponse> {
    let req: RegisterRequest = parse_json(&read_body(body, MAX_JSON_BODY).await?)?;
    protocol(req.protocol)?;
    check_node(&req.node)?;
    let reg = Registration {
        name: &req.node.name,
        protocol: req.protocol,
    };
    let node_secret = verify_agent(&app.state, &caller, &req.node.id, Some(reg)).await?;
    app.state.register_node(req.node).await?;
    Ok(Json(RegisterResponse {
        protocol: PROTOCOL,
        heartbeat_ttl_ms: app.state.config.heartbeat_ttl.as_millis() as u64,
        node_secret,
    }))
}

pub async fn agent_heartbeat(
    State(app): State<AppState>,
    caller: AgentCaller,
    body: Body,
) -> R<HeartbeatResponse> {
    let req: HeartbeatRequest = parse_json(&read_body(body, MAX_JSON_BODY).await?)?;
    protocol(req.protocol)?;
    verify_agent(&app.state, &caller, &req.node_id, None).await?;
    app.state.heartbeat(&req.node_id, req.usage).await?;
    Ok(Json(HeartbeatResponse {
        protocol: PROTOCOL,
        heartbeat_ttl_ms: app.state.config.heartbeat_ttl.as_millis() as u64,
    }))
}

/// Blocking query parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockingQuery {
    index: Option<u64>,
    wait: Option<String>,
}

pub async fn agent_allocations(
    State(app): State<AppState>,
    caller: AgentCaller,
    Path(node_id): Path<String>,
    Q(q): Q<BlockingQuery>,
) -> R<NodeAllocations> {
    let state = &app.state;
    let id = NodeId::from(node_id.as_str());
    verify_agent(state, &caller, &id, None).await?;
    let node = state.cluster().node(&id).cloned().ok_or_else(|| {
        ApiError::forbidden("node_id", format!("unknown node {id}; register first"))
    })?;
    let wait = match &q.wait {
        Some(w) => DurationSpec::parse(w)
            .map_err(|e| ApiError::bad("wait", e))?
            .as_duration(),
        None => Duration::from_secs(30),
    }
    .min(state.config.max_blocking_wait);
    let after = q.index.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.watch_index();
    let mut stop = state.shutdown.subscribe();
    loop {
        changes.borrow_and_update();
        // Only server-side changes wake the agent, not its own status reports.
        let index = state.node_allocs_index(&id).max(node.create_index);
        if after == 0 || index > after || *stop.borrow() {
            return Ok(Json(NodeAllocations {
                protocol: PROTOCOL,
                index,
                allocs: state.node_allocs(&id),
            }));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(NodeAllocations {
                    protocol: PROTOCOL,
                    index: index.max(after),
                    allocs: state.node_allocs(&id),
                }));
            }
        }
    }
}

/// Most updates in one request.
pub const MAX_UPDATES: usize = 10_000;

pub async fn agent_update_allocs(
    State(app): State<AppState>,
    caller: AgentCaller,
    body: Body,
) -> R<Value> {
    let req: AllocUpdateRequest = parse_json(&read_body(body, MAX_JSON_BODY).await?)?;
    protocol(req.protocol)?;
    verify_agent(&app.state, &caller, &req.node_id, None).await?;
    if req.updates.len() > MAX_UPDATES {
        return Err(ApiError::invalid(
            "updates",
            format!("at most {MAX_UPDATES} updates per request"),
        ));
    }
    let index = app.state.update_allocs(&req.node_id, req.updates).await?;
    Ok(Json(json!({ "index": index })))
}
