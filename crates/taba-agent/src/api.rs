//! The agent's own HTTP API, proxied by the servers for `taba alloc logs` and
//! `taba alloc exec`:
//!
//! - `GET /v1/client/allocations/{id}/logs?task=T&type=stdout|stderr&follow=bool&offset=N`
//!   streams the task's log bytes.
//! - `POST /v1/client/allocations/{id}/exec?task=T` with
//!   `{"command": [...], "stdin_b64": "..."}` runs the command inside the task
//!   and answers `{"exit_code", "stdout_b64", "stderr_b64"}`.
//! - `GET /v1/client/allocations/{id}/stats` the allocation's usage.

use crate::logs::{self, Stream};
use crate::AgentInner;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use taba_types::api::{b64, ExecRequest, ExecResponse};

/// Largest exec request.
const MAX_EXEC_BODY: usize = 12 << 20;

/// The agent API router.
pub fn router(inner: Arc<AgentInner>) -> Router {
    Router::new()
        .route("/v1/client/allocations/{id}/logs", get(logs_handler))
        .route("/v1/client/allocations/{id}/exec", post(exec_handler))
        .route("/v1/client/allocations/{id}/stats", get(stats_handler))
        .layer(DefaultBodyLimit::max(MAX_EXEC_BODY))
        .with_state(inner)
}

/// Under TLS: only servers may call the agent API (the handshake already
/// required a certificate of the cluster CA). Refusals are logged.
pub async fn require_server(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req
        .extensions()
        .get::<taba_tls::TlsPeer>()
        .and_then(|p| p.0.clone());
    match peer {
        Some(p) if p.is_server() => next.run(req).await,
        other => {
            let who = other
                .map(|p| p.describe())
                .unwrap_or_else(|| "a client without a certificate".into());
            tracing::warn!("refused {who}: only servers may call the agent API");
            ApiError(
                StatusCode::FORBIDDEN,
                format!("{who} may not call the agent API; only servers may"),
            )
            .into_response()
        }
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"message": self.1, "field": null}});
        (self.0, Json(body)).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, msg.into())
}

#[derive(Deserialize)]
struct LogsQuery {
    task: Option<String>,
    #[serde(rename = "type", default)]
    stream: Option<String>,
    #[serde(default)]
    follow: Option<bool>,
    #[serde(default)]
    offset: Option<u64>,
}

fn pick_task(names: &[String], task: Option<&str>) -> Result<String, ApiError> {
    match task {
        Some(t) if names.iter().any(|n| n == t) => Ok(t.to_string()),
        Some(t) => Err(bad(format!(
            "task: no task {t:?} in this allocation; tasks: {}",
            names.join(", ")
        ))),
        None if names.len() == 1 => Ok(names[0].clone()),
        None => Err(bad(format!(
            "task: the allocation has several tasks; pick one of {}",
            names.join(", ")
        ))),
    }
}

async fn logs_handler(
    State(inner): State<Arc<AgentInner>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let runner = inner
        .runner(&id)
        .ok_or_else(|| not_found(format!("allocation {id} is not on this node")))?;
    let task = pick_task(&runner.task_names(), q.task.as_deref())?;
    let stream = match q.stream.as_deref() {
        None | Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        Some(o) => return Err(bad(format!("type: {o:?} is not stdout or stderr"))),
    };
    let dir = inner
        .state_dir()
        .alloc_dir(runner.id().as_str())
        .join("logs");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let follow = q.follow.unwrap_or(false);
    let offset = q.offset.unwrap_or(0);
    let r2 = runner.clone();
    let t2 = task.clone();
    tokio::task::spawn_blocking(move || {
        logs::pump(
            dir,
            t2.clone(),
            stream,
            offset,
            follow,
            move || r2.is_finished() || r2.handle(&t2).is_none(),
            tx,
        )
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(body))
        .expect("static response parts"))
}

#[derive(Deserialize)]
struct ExecQuery {
    task: Option<String>,
}

async fn exec_handler(
    State(inner): State<Arc<AgentInner>>,
    Path(id): Path<String>,
    Query(q): Query<ExecQuery>,
    body: axum::body::Bytes,
) -> Result<Json<ExecResponse>, ApiError> {
    let req: ExecRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("exec request: {e}")))?;
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(bad("command: must name a program"));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(bad("command: must not contain NUL"));
    }
    let stdin = b64::decode(&req.stdin_b64).map_err(|e| bad(format!("stdin_b64: {e}")))?;
    let runner = inner
        .runner(&id)
        .ok_or_else(|| not_found(format!("allocation {id} is not on this node")))?;
    let task = pick_task(&runner.task_names(), q.task.as_deref())?;
    let handle = runner
        .handle(&task)
        .ok_or_else(|| ApiError(StatusCode::CONFLICT, format!("task {task} is not running")))?;
    let driver = runner
        .driver_of(&task)
        .ok_or_else(|| bad(format!("task {task} has no driver on this node")))?;
    let out = tokio::task::spawn_blocking(move || -> Result<std::process::Output, String> {
        let mut cmd = driver
            .exec_command(&handle, &req.command)
            .map_err(|e| format!("exec: {e}"))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("exec: {e}"))?;
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(&stdin);
        }
        child.wait_with_output().map_err(|e| format!("exec: {e}"))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    use std::os::unix::process::ExitStatusExt;
    let exit_code = out
        .status
        .code()
        .or_else(|| out.status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(Json(ExecResponse {
        exit_code,
        stdout_b64: b64::encode(&out.stdout),
        stderr_b64: b64::encode(&out.stderr),
    }))
}

async fn stats_handler(
    State(inner): State<Arc<AgentInner>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let runner = inner
        .runner(&id)
        .ok_or_else(|| not_found(format!("allocation {id} is not on this node")))?;
    let usage = inner.usage.lock().unwrap().get(runner.id()).cloned();
    Ok(Json(serde_json::json!({ "usage": usage })))
}
