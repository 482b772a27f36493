//! Route handlers: decode and check input, call [`ServerState`], encode the
//! reply. No state logic lives here.

use super::error::ApiError;
use super::extract::{parse_json, read_body, Q};
use super::peer::{verify_agent, AgentCaller, Registration};
use super::AppState;
use crate::acl::Auth;
use crate::images::on_store;
use crate::state::ServerState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use taba_types::acl::Capability;
use taba_types::api::*;
use taba_types::parse::{parse_job_json, parse_job_toml, JobParseError, MAX_JOB_BYTES};
use taba_types::wire::{
    check_protocol, AllocUpdateRequest, HeartbeatRequest, HeartbeatResponse, NodeAllocations,
    RegisterRequest, RegisterResponse, PROTOCOL,
};
use taba_types::{AllocEvent, Allocation, DurationSpec, JobSpec, Node, NodeId};
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

pub(super) fn content_type(headers: &HeaderMap) -> String {
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

/// Every container image a job names must be in the image store; one that is not is pulled
/// from its registry first. A reference to a pulled image is pinned to the digest the store
/// has for it (`repo:tag@sha256:...`, see `ImageStore::pinned`), so every allocation of the
/// version runs the same bits and a tag moved by a later pull makes a new version.
async fn resolve_images(state: &Arc<ServerState>, spec: &mut JobSpec) -> Result<(), ApiError> {
    for (i, g) in spec.groups.iter_mut().enumerate() {
        for (j, t) in g.tasks.iter_mut().enumerate() {
            let Some(image) = t.image.clone() else {
                continue;
            };
            if !matches!(t.driver.as_str(), "container" | "system") {
                continue;
            }
            let field = format!("group[{i}].task[{j}].image");
            let pinned = crate::images::pinned(&state.images, &image, &field).await?;
            let pinned = match pinned {
                Some(p) => p,
                None => {
                    state
                        .registries
                        .pull(state.images.clone(), &image, &|_| {})
                        .await
                        .map_err(|e| {
                            ApiError::invalid(
                                field.clone(),
                                format!(
                                    "image {image:?} is not in the image store and cannot be pulled \
                                     (or import it with `taba image import`): {}",
                                    taba_types::error_chain(&e)
                                ),
                            )
                        })?;
                    crate::images::pinned(&state.images, &image, &field)
                        .await?
                        .ok_or_else(|| {
                            ApiError::invalid(
                                field.clone(),
                                format!("image {image:?} vanished after its pull"),
                            )
                        })?
                }
            };
            t.image = Some(pinned);
        }
    }
    Ok(())
}

/// The caller needs `write` in the job's namespace, and `host` to name a
/// user for a task of driver `exec` (a host process).
fn check_job_rights(auth: &Auth, spec: &JobSpec) -> Result<(), ApiError> {
    auth.require(&spec.namespace, Capability::Write)
        .map_err(|e| ApiError::forbidden("namespace", e.0))?;
    for (i, g) in spec.groups.iter().enumerate() {
        for (j, t) in g.tasks.iter().enumerate() {
            if t.driver == "exec" && t.user.is_some() {
                auth.require(&spec.namespace, Capability::Host).map_err(|e| {
                    ApiError::forbidden(
                        format!("group[{i}].task[{j}].user"),
                        format!("{}: naming a user for an exec task (a host process) needs the host capability", e.0),
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// The job of a `job run` or `job plan` body (TOML or JSON by its content
/// type), parsed and checked against the caller's rights.
async fn read_job_spec(auth: &Auth, headers: &HeaderMap, body: Body) -> Result<JobSpec, ApiError> {
    let bytes = read_body(body, MAX_JOB_BYTES).await?;
    let spec = match content_type(headers).as_str() {
        "application/toml" | "text/toml" | "text/x-toml" => parse_job_toml(&bytes),
        "application/json" | "" => parse_job_json(&bytes),
        other => return Err(ApiError::UnsupportedMediaType(other.to_string())),
    }
    .map_err(job_parse_error)?;
    check_job_rights(auth, &spec)?;
    Ok(spec)
}

pub async fn register_job(
    State(app): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> R<RegisterJobResponse> {
    let spec = read_job_spec(&auth, &headers, body).await?;
    let mut spec = spec;
    resolve_images(&app.state, &mut spec).await?;
    Ok(Json(app.state.register_job(spec).await?))
}

/// `POST /v1/job-plan`: parses the job as `job run` does and says whether it would make a
/// new version, and why: a changed spec, or an image tag that now resolves to another
/// digest in its registry than the running version's (asked now, nothing pulled).
pub async fn plan_job(
    State(app): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> R<JobPlanResponse> {
    let spec = read_job_spec(&auth, &headers, body).await?;
    let current = app
        .state
        .job(&spec.namespace, &spec.name)
        .ok()
        .filter(|j| !j.stopped);
    let mut candidate = spec.clone();
    let mut images = Vec::new();
    for (i, g) in candidate.groups.iter_mut().enumerate() {
        for (j, t) in g.tasks.iter_mut().enumerate() {
            let Some(image) = t.image.clone() else {
                continue;
            };
            if !matches!(t.driver.as_str(), "container" | "system") {
                continue;
            }
            let field = format!("group[{i}].task[{j}].image");
            let running = current.as_ref().and_then(|c| {
                let cg = c.spec.groups.iter().find(|cg| cg.name == g.name)?;
                cg.tasks.iter().find(|ct| ct.name == t.name)?.image.clone()
            });
            let plan = plan_image(&app.state, field, image, running).await?;
            t.image = Some(plan.planned.clone());
            images.push(plan);
        }
    }
    let mut reasons = Vec::new();
    let new_version = match &current {
        None => {
            reasons.push(format!(
                "job {:?} does not run: version 1 would be made",
                spec.name
            ));
            true
        }
        Some(c) => {
            for im in images.iter().filter(|im| im.moved) {
                reasons.push(format!(
                    "{}: {} now resolves to {} in its registry; version {} runs {}: \
                     `taba image pull {}` then `job run` makes a new version",
                    im.field,
                    im.image,
                    im.registry.as_deref().unwrap_or("?"),
                    c.version,
                    im.current.as_deref().unwrap_or("-"),
                    im.image
                ));
            }
            let mut same_images = candidate.clone();
            for (g, cg) in same_images.groups.iter_mut().zip(&c.spec.groups) {
                for (t, ct) in g.tasks.iter_mut().zip(&cg.tasks) {
                    if t.image.is_some() && ct.image.is_some() {
                        t.image = ct.image.clone();
                    }
                }
            }
            if same_images != c.spec {
                reasons.push("the job spec differs from the current version's".into());
            }
            let changed = candidate != c.spec;
            if !changed {
                reasons.push(format!("same as version {}: no new version", c.version));
            }
            changed
        }
    };
    Ok(Json(JobPlanResponse {
        namespace: spec.namespace.clone(),
        job: spec.name.clone(),
        current_version: current.map(|c| c.version),
        new_version,
        reasons,
        images,
    }))
}

/// What `job run` would record for one image now: a registry image (one the store holds
/// pinned to a registry digest, or one it lacks) is asked of its registry; an imported one
/// is recorded as the store pins it.
async fn plan_image(
    state: &Arc<ServerState>,
    field: String,
    image: String,
    running: Option<String>,
) -> Result<ImagePlan, ApiError> {
    let stored = crate::images::pinned(&state.images, &image, &field).await?;
    let from_registry = !image.contains('@') && stored.as_deref().is_none_or(|p| p.contains('@'));
    let mut note = None;
    let mut registry = None;
    if from_registry {
        match state.registries.resolve_digest(&image).await {
            Ok(d) => registry = Some(d),
            Err(e) => {
                note = Some(format!(
                    "cannot ask the registry: {}",
                    taba_types::error_chain(&e)
                ))
            }
        }
    }
    let planned = match (&stored, &registry) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => format!("{image}@{d}"),
        (None, None) => image.clone(),
    };
    let digest = |r: &str| r.rsplit_once('@').map(|(_, d)| d.to_string());
    let moved = matches!(
        (running.as_deref().and_then(digest), &registry),
        (Some(a), Some(b)) if a != *b
    );
    Ok(ImagePlan {
        field,
        image,
        current: running,
        planned,
        registry,
        moved,
        note,
    })
}

pub async fn list_jobs(
    State(app): State<AppState>,
    auth: Auth,
    Q(q): Q<NsQuery>,
) -> R<Vec<JobListEntry>> {
    if let Some(ns) = &q.namespace {
        auth.require(ns, Capability::Read)
            .map_err(|e| ApiError::forbidden("namespace", e.0))?;
    }
    let mut jobs = app.state.list_jobs(q.namespace.as_deref());
    jobs.retain(|j| auth.rights.allows(&j.namespace, Capability::Read));
    Ok(Json(jobs))
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

pub async fn list_allocs(State(app): State<AppState>, auth: Auth) -> R<Vec<AllocListEntry>> {
    Ok(Json(app.state.list_allocs(|ns| {
        auth.rights.allows(ns, Capability::Read)
    })))
}

/// The allocation `id` names, if the caller holds `cap` in its namespace.
pub(super) fn alloc_for(
    app: &AppState,
    auth: &Auth,
    id: &str,
    cap: Capability,
) -> Result<Allocation, ApiError> {
    let a = app.state.find_alloc(id)?;
    auth.require(&a.namespace, cap)?;
    Ok(a)
}

pub async fn get_alloc(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> R<AllocDetail> {
    Ok(Json(AllocDetail::from_alloc(&alloc_for(
        &app,
        &auth,
        &id,
        Capability::Read,
    )?)))
}

pub async fn stop_alloc(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> R<EvalResponse> {
    let a = alloc_for(&app, &auth, &id, Capability::Write)?;
    let (eval_id, index) = app.state.stop_alloc(a.id.as_str()).await?;
    Ok(Json(EvalResponse { eval_id, index }))
}

/// `POST /v1/allocations/{id}/migrate`: move an allocation to another node
/// (live where its driver can; a restart on the target otherwise).
pub async fn migrate_alloc(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Body,
) -> R<MigrateAllocResponse> {
    let bytes = read_body(body, 64 << 10).await?;
    let req: MigrateAllocRequest = if bytes.is_empty() {
        MigrateAllocRequest::default()
    } else {
        parse_json(&bytes)?
    };
    let a = alloc_for(&app, &auth, &id, Capability::Write)?;
    let resp = app
        .state
        .migrate_alloc(a.id.as_str(), req.to.as_deref(), &auth.actor())
        .await?;
    Ok(Json(resp))
}

/// The task a logs/exec request means: the named one, or the group's only task.
pub(super) fn pick_task(a: &Allocation, task: Option<String>) -> Result<String, ApiError> {
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
pub(super) async fn agent_of(
    app: &AppState,
    a: &Allocation,
) -> Result<(reqwest::Client, String, String), ApiError> {
    let node = app.state.find_node(a.node_id.as_str())?;
    let (client, base) = app.agents.for_node(&node).await?;
    Ok((client, base, node.http_addr))
}

/// Relay an agent's error reply (status and body) as it is when it is ours.
pub(super) async fn agent_failure(resp: reqwest::Response) -> ApiError {
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
    auth: Auth,
    Path(id): Path<String>,
    Q(q): Q<LogsQuery>,
) -> Result<Response, ApiError> {
    let a = alloc_for(&app, &auth, &id, Capability::Read)?;
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
    auth: Auth,
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
    let a = alloc_for(&app, &auth, &id, Capability::Exec)?;
    let task = pick_task(&a, q.task)?;
    let (http, base, addr) = agent_of(&app, &a).await?;
    // Audited before it runs: who, what, when.
    app.state
        .record_alloc_event(&a.id, exec_event(&auth, &task, &req.command))
        .await?;
    let url = format!("{base}/v1/client/allocations/{}/exec", a.id);
    let (timeout, max_output) = (
        app.state.config.exec_timeout,
        app.state.config.exec_max_output,
    );
    let timed_out = || {
        ApiError::ExecLimit(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the agent at {addr} did not answer the exec within {timeout:?} (server option exec_timeout)"),
        )
    };
    let resp = http
        .post(url)
        .query(&[("task", task.as_str())])
        .json(&req)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                timed_out()
            } else {
                ApiError::Agent(format!(
                    "cannot reach the agent at {addr}: {}",
                    taba_types::error_chain(&e)
                ))
            }
        })?;
    let status = resp.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT {
        let e = agent_failure(resp).await;
        return Err(ApiError::ExecLimit(status, e.to_string()));
    }
    if !status.is_success() {
        return Err(agent_failure(resp).await);
    }
    // Both streams base64-encoded, plus the JSON around them.
    let cap = (max_output.saturating_mul(2) / 3 * 4 + (64 << 10)) as usize;
    let body = read_capped(resp, cap).await.map_err(|e| match e {
        Capped::Over => ApiError::ExecLimit(
            StatusCode::BAD_GATEWAY,
            format!("the exec reply is larger than {cap} bytes (server option exec_max_output)"),
        ),
        Capped::Err(e) if e.is_timeout() => timed_out(),
        Capped::Err(e) => ApiError::Agent(format!("reading the exec reply from the agent: {e}")),
    })?;
    let out: ExecResponse = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Agent(format!("unreadable exec reply from the agent: {e}")))?;
    Ok(Json(out))
}

/// Longest command text kept in an audit event.
const MAX_AUDIT_COMMAND: usize = 1024;

pub(super) fn exec_event(auth: &Auth, task: &str, command: &[String]) -> AllocEvent {
    let mut cmd = format!("{command:?}");
    if cmd.len() > MAX_AUDIT_COMMAND {
        let mut cut = MAX_AUDIT_COMMAND;
        while !cmd.is_char_boundary(cut) {
            cut -= 1;
        }
        cmd.truncate(cut);
        cmd.push_str("...");
    }
    AllocEvent {
        time: crate::broker::now_ms(),
        kind: "Exec".into(),
        actor: auth.actor(),
        message: format!("task {task}: {cmd}"),
    }
}

enum Capped {
    Over,
    Err(reqwest::Error),
}

/// The whole body of `resp`, unless it is larger than `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, Capped> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Err)? {
        if buf.len() + chunk.len() > cap {
            return Err(Capped::Over);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
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

/// A node with its allocations (those `auth` may read) and drain progress.
fn node_detail(state: &ServerState, auth: &Auth, node: Node) -> Result<NodeDetail, ApiError> {
    let mut allocs = state.node_allocs(&node.id);
    allocs.retain(|a| auth.rights.allows(&a.namespace, Capability::Read));
    allocs.sort_by_key(|a| std::cmp::Reverse(a.create_time));
    let drain = match node.draining() {
        true => Some(state.drain_status(node.id.as_str())?),
        false => None,
    };
    Ok(NodeDetail {
        id: node.id.clone(),
        name: node.name.clone(),
        status: node.status,
        display_status: node.display_status(),
        allocations: allocs.iter().map(AllocListEntry::from_alloc).collect(),
        node,
        drain,
    })
}

pub async fn get_node(
    State(app): State<AppState>,
    auth: Auth,
    Path(key): Path<String>,
) -> R<NodeDetail> {
    let node = app.state.find_node(&key)?;
    Ok(Json(node_detail(&app.state, &auth, node)?))
}

/// `DELETE /v1/nodes/{node}` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNodeQuery {
    #[serde(default)]
    force: bool,
}

pub async fn remove_node(
    State(app): State<AppState>,
    Path(key): Path<String>,
    Q(q): Q<RemoveNodeQuery>,
) -> R<RemoveNodeResponse> {
    let (name, lost) = app.state.remove_node(&key, q.force).await?;
    Ok(Json(RemoveNodeResponse { name, lost }))
}

pub async fn node_eligibility(
    State(app): State<AppState>,
    auth: Auth,
    Path(key): Path<String>,
    body: Body,
) -> R<NodeDetail> {
    let req: EligibilityRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    let node = app.state.set_eligibility(&key, req.eligible).await?;
    Ok(Json(node_detail(&app.state, &auth, node)?))
}

pub async fn drain_status(State(app): State<AppState>, Path(key): Path<String>) -> R<DrainStatus> {
    Ok(Json(app.state.drain_status(&key)?))
}

pub async fn drain_node(
    State(app): State<AppState>,
    Path(key): Path<String>,
    body: Body,
) -> R<DrainStatus> {
    let bytes = read_body(body, app.state.config.limits.max_request_body).await?;
    if !bytes.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::BadRequest {
            message: "the body must be a JSON object: {\"deadline\": \"1h\", \"ignore_system\": false} or {\"disable\": true}".into(),
            field: None,
        });
    }
    let req: DrainRequest = parse_json(&bytes)?;
    if req.disable {
        if req.deadline.is_some() {
            return Err(ApiError::invalid(
                "deadline",
                "cannot be given with disable",
            ));
        }
        if req.ignore_system {
            return Err(ApiError::invalid(
                "ignore_system",
                "cannot be given with disable",
            ));
        }
        return Ok(Json(app.state.cancel_drain(&key).await?));
    }
    let deadline = req.deadline.unwrap_or(DEFAULT_DRAIN_DEADLINE);
    if deadline > MAX_DRAIN_DEADLINE {
        return Err(ApiError::invalid(
            "deadline",
            format!("must be at most {MAX_DRAIN_DEADLINE}"),
        ));
    }
    let status = app
        .state
        .start_drain(&key, deadline.as_duration(), req.ignore_system)
        .await?;
    Ok(Json(status))
}

// ---- images ----

/// An image upload's file under `<data_dir>/uploads`, removed when dropped:
/// when the import ends, fails, or the client goes away mid-upload (the
/// handler's future is then dropped). The import itself owns it once it
/// runs, so a client gone during the import leaves nothing either.
/// [`sweep_uploads`] removes what a crashed server left.
struct Upload(std::path::PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The directory of image uploads in flight.
pub fn uploads_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("uploads")
}

/// Removes every upload a previous run of the server left (killed mid-import).
pub fn sweep_uploads(data_dir: &std::path::Path) -> std::io::Result<usize> {
    let dir = uploads_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "tar") {
            std::fs::remove_file(&path)?;
            n += 1;
        }
    }
    Ok(n)
}

pub async fn import_image(State(app): State<AppState>, body: Body) -> R<ImportResponse> {
    let dir = uploads_dir(&app.state.config.data_dir);
    let max = app.state.config.limits.max_image_upload;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    let upload = Upload(dir.join(format!("{}.tar", uuid_like())));
    let mut file = tokio::fs::File::create(&upload.0)
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
        if size > max {
            return Err(ApiError::TooLarge {
                limit: usize::try_from(max).unwrap_or(usize::MAX),
            });
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(format!("cannot write upload file: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(format!("cannot write upload file: {e}")))?;
    drop(file);
    if size == 0 {
        return Err(ApiError::bad("body", "empty body; send the image tar"));
    }
    let info = on_store(&app.state.images, move |images| {
        let upload = upload;
        crate::images::import(images, &upload.0)
    })
    .await?;
    Ok(Json(info))
}

fn uuid_like() -> String {
    taba_types::EvalId::generate().0
}

pub async fn list_images(State(app): State<AppState>) -> R<Vec<ImageInfo>> {
    Ok(Json(
        on_store(&app.state.images, crate::images::list).await?,
    ))
}

pub async fn inspect_image(
    State(app): State<AppState>,
    Path(reference): Path<String>,
) -> R<ImageDetail> {
    let reference = reference.trim_start_matches('/').to_string();
    let out = on_store(&app.state.images, move |i| {
        crate::images::inspect(i, &reference)
    })
    .await?;
    Ok(Json(out))
}

pub async fn remove_image(
    State(app): State<AppState>,
    Path(reference): Path<String>,
) -> R<ImageInfo> {
    let reference = reference.trim_start_matches('/').to_string();
    let out = on_store(&app.state.images, move |i| {
        crate::images::remove(i, &reference)
    })
    .await?;
    Ok(Json(out))
}

/// `PUT /v1/images/{*reference}`: name an image `reference` too.
pub async fn tag_image(
    State(app): State<AppState>,
    Path(reference): Path<String>,
    body: Body,
) -> R<ImageInfo> {
    let req: TagRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    let target = reference.trim_start_matches('/').to_string();
    let out = on_store(&app.state.images, move |i| {
        crate::images::tag(i, &req.source, &target)
    })
    .await?;
    Ok(Json(out))
}

/// `DELETE /v1/images`: remove the images no job version names and no container uses.
pub async fn prune_images(State(app): State<AppState>) -> R<PruneResponse> {
    let store = app.state.store.clone();
    let removed = on_store(&app.state.images, move |images| {
        let mut referenced = Vec::new();
        for table in [taba_store::Table::Jobs, taba_store::Table::JobVersions] {
            let recs = store
                .scan(table, "")
                .map_err(|e| ApiError::Internal(format!("cannot read jobs: {e}")))?;
            for rec in recs {
                let job: taba_types::Job = rec
                    .decode()
                    .map_err(|e| ApiError::Internal(format!("cannot decode a job: {e}")))?;
                referenced.extend(
                    job.spec
                        .groups
                        .iter()
                        .flat_map(|g| g.tasks.iter())
                        .filter_map(|t| t.image.clone()),
                );
            }
        }
        crate::images::prune(images, &referenced)
    })
    .await?;
    Ok(Json(PruneResponse { removed }))
}

/// `?node_id=` of the image routes: who is asking.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    node_id: Option<String>,
}

/// The "agent" class check of the image routes: a registered node holding its credential.
async fn verify_image_caller(
    state: &ServerState,
    caller: &AgentCaller,
    q: &NodeQuery,
) -> Result<(), ApiError> {
    let Some(node_id) = q.node_id.as_deref().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad(
            "node_id",
            "the asking node's id is required (?node_id=)",
        ));
    };
    let id = NodeId::from(node_id);
    verify_agent(state, caller, &id, None).await?;
    if state.cluster().node(&id).is_none() {
        return Err(ApiError::forbidden(
            "node_id",
            format!("unknown node {id}; register first"),
        ));
    }
    Ok(())
}

/// `GET /v1/agent/images/manifests/{*reference}`: what an image is made of.
pub async fn agent_image_manifest(
    State(app): State<AppState>,
    caller: AgentCaller,
    Path(reference): Path<String>,
    Q(q): Q<NodeQuery>,
) -> R<taba_types::wire::ImageManifest> {
    verify_image_caller(&app.state, &caller, &q).await?;
    let reference = reference.trim_start_matches('/').to_string();
    let m = on_store(&app.state.images, move |i| {
        crate::images::manifest(i, &reference)
    })
    .await?;
    Ok(Json(m))
}

/// Chunks of an open file, read as the client takes them (never the whole file in memory).
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// `GET /v1/agent/images/blobs/{digest}`: one blob, streamed.
pub async fn agent_image_blob(
    State(app): State<AppState>,
    caller: AgentCaller,
    Path(digest): Path<String>,
    Q(q): Q<NodeQuery>,
) -> Result<Response, ApiError> {
    verify_image_caller(&app.state, &caller, &q).await?;
    let d = digest.clone();
    let (file, len) = on_store(&app.state.images, move |i| crate::images::open_blob(i, &d)).await?;
    let body = Body::from_stream(file_stream(tokio::fs::File::from_std(file)));
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

// ---- evaluations ----

pub async fn get_eval(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> R<taba_types::Evaluation> {
    let e = app
        .state
        .eval(&id)
        .ok_or_else(|| ApiError::NotFound(format!("evaluation {id:?} not found")))?;
    auth.require(&e.namespace, Capability::Read)?;
    Ok(Json(e))
}

// ---- agent ----

pub(super) fn protocol(v: u32) -> Result<(), ApiError> {
    check_protocol(v).map_err(|m| {
        tracing::warn!("refused an agent message: {m}");
        ApiError::bad("protocol", m)
    })
}

/// An agent message's field error (`taba_types::wire` checks): a 422.
pub(super) fn wire_invalid(e: taba_types::FieldError) -> ApiError {
    ApiError::invalid(e.path, e.reason)
}

pub async fn agent_register(
    State(app): State<AppState>,
    caller: AgentCaller,
    body: Body,
) -> R<RegisterResponse> {
    let req: RegisterRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    protocol(req.protocol)?;
    req.validate().map_err(wire_invalid)?;
    // The credential first; a first registration binds one only once the
    // name is known to be free (checked inside).
    let reg = Registration {
        node: &req.node,
        protocol: req.protocol,
    };
    let node_secret = verify_agent(&app.state, &caller, &req.node.id, Some(reg)).await?;
    app.state.check_name_free(&req.node)?;
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
    let req: HeartbeatRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
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
    /// Answer with what changed past `index` (protocol 4).
    delta: Option<bool>,
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
    // Only its creation index is kept across the wait (a whole node record
    // per waiting agent was ~2.4 KiB with 10,000 agents waiting).
    let created = state
        .cluster()
        .node(&id)
        .map(|n| n.create_index)
        .ok_or_else(|| {
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
    let delta = q.delta.unwrap_or(false);
    let deadline = tokio::time::Instant::now() + wait;
    // Woken only by commits that touch this node (not by every commit:
    // with thousands of agents waiting, a global wake-up per commit costs
    // more than the commits).
    let mut changes = state.watch_node(&id);
    let mut stop = state.shutdown.subscribe();
    let mut removed = false;
    loop {
        changes.borrow_and_update();
        // Only server-side changes wake the agent, not its own status reports.
        let index = state.node_allocs_index(&id).max(created);
        if after == 0 || index > after || *stop.borrow() || removed {
            return Ok(Json(node_allocations(state, &id, index, after, delta)));
        }
        tokio::select! {
            r = changes.changed() => removed = r.is_err(),
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(node_allocations(state, &id, index.max(after), after, delta)));
            }
        }
    }
}

/// The answer of the agent's blocking query at `index`: every allocation of
/// the node, or with `delta` (and an index to compare with) only those
/// changed past `after` and the ids of the others. Built after `index` was
/// read, so a change the index missed is in `allocs` anyway.
fn node_allocations(
    state: &ServerState,
    id: &NodeId,
    index: u64,
    after: u64,
    delta: bool,
) -> NodeAllocations {
    let (allocs, unchanged, delta) = if delta && after > 0 {
        let (changed, unchanged) = state.node_allocs_since(id, after);
        (changed, unchanged, true)
    } else {
        (state.node_allocs(id), Vec::new(), false)
    };
    NodeAllocations {
        protocol: PROTOCOL,
        index,
        allocs,
        delta,
        unchanged,
    }
}

pub async fn agent_update_allocs(
    State(app): State<AppState>,
    caller: AgentCaller,
    body: Body,
) -> R<Value> {
    let req: AllocUpdateRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    protocol(req.protocol)?;
    verify_agent(&app.state, &caller, &req.node_id, None).await?;
    req.validate().map_err(wire_invalid)?;
    let index = app.state.update_allocs(&req.node_id, req.updates).await?;
    Ok(Json(json!({ "index": index })))
}

/// `GET /v1/metrics`: this server's metrics in the OpenMetrics text format.
pub async fn metrics(State(app): State<AppState>) -> axum::response::Response {
    let text = crate::metrics::scrape(&app.state);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
