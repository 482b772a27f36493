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

/// Caps of one `alloc exec`: a command that prints more, or runs longer, is
/// killed and the request fails with a clear error (413 / 408), so neither
/// the agent nor the server ever holds unbounded output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    /// Largest output kept, bytes, per stream (stdout, stderr).
    pub max_output: u64,
    /// Longest run.
    pub timeout: std::time::Duration,
    /// Interactive sessions open at once per allocation.
    pub max_sessions: usize,
    /// An interactive session with no traffic either way for this long is
    /// ended (its command killed).
    pub idle_timeout: std::time::Duration,
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self {
            max_output: 16 << 20,
            timeout: std::time::Duration::from_secs(300),
            max_sessions: 8,
            idle_timeout: std::time::Duration::from_secs(30 * 60),
        }
    }
}

/// Why a capped exec failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The command could not be started or waited for.
    #[error("exec")]
    Io(#[from] std::io::Error),
    /// It printed more than the cap.
    #[error("exec output is larger than {0} bytes (agent option exec_max_output); the command was killed")]
    TooMuchOutput(u64),
    /// It ran longer than the cap.
    #[error("exec ran longer than {0:?} (agent option exec_timeout); the command was killed")]
    Timeout(std::time::Duration),
}

/// Run `cmd` with `stdin`, keeping at most `limits.max_output` bytes of
/// each stream and at most `limits.timeout` of time; beyond either the
/// command is killed (its `taba shim exec` kills what it started).
pub fn run_capped(
    mut cmd: std::process::Command,
    stdin: Vec<u8>,
    limits: ExecLimits,
) -> Result<std::process::Output, ExecError> {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let over = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Vec<u8>)>();
    let reader = |n: usize, r: Option<Box<dyn Read + Send>>| {
        let over = over.clone();
        let max = limits.max_output;
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let mut r = r.take(max + 1);
                let _ = r.read_to_end(&mut buf);
                if buf.len() as u64 > max {
                    over.store(true, Ordering::SeqCst);
                    buf.truncate(max as usize);
                }
            }
            let _ = done.send((n, buf));
        });
    };
    reader(
        0,
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    reader(
        1,
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    drop(done_tx);
    if let Some(mut si) = child.stdin.take() {
        std::thread::spawn(move || {
            let _ = si.write_all(&stdin);
        });
    }
    let deadline = std::time::Instant::now() + limits.timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if over.load(Ordering::SeqCst) || std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // The streams end when the last holder of the pipes exits, which may be
    // a background child of the command: wait for them up to the deadline.
    let mut streams: [Option<Vec<u8>>; 2] = [None, None];
    while streams.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match done_rx.recv_timeout(left) {
            Ok((n, buf)) => streams[n] = Some(buf),
            Err(_) => break,
        }
    }
    if over.load(Ordering::SeqCst) {
        return Err(ExecError::TooMuchOutput(limits.max_output));
    }
    match (status, streams) {
        (Some(status), [Some(stdout), Some(stderr)]) => Ok(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        _ => Err(ExecError::Timeout(limits.timeout)),
    }
}

/// The agent API router.
pub fn router(inner: Arc<AgentInner>) -> Router {
    Router::new()
        .route("/v1/client/allocations/{id}/logs", get(logs_handler))
        .route(
            "/v1/client/allocations/{id}/exec",
            post(exec_handler).get(crate::exec_session::handler),
        )
        .route(
            "/v1/client/allocations/{id}/console",
            get(crate::exec_session::console_handler),
        )
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

pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"message": self.1, "field": null}});
        (self.0, Json(body)).into_response()
    }
}

/// A 400 blaming `field` of the request.
pub(crate) fn bad_field(field: &str, message: impl std::fmt::Display) -> Response {
    let body =
        serde_json::json!({"error": {"message": format!("{field}: {message}"), "field": field}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn not_found(msg: impl Into<String>) -> ApiError {
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

pub(crate) fn pick_task(names: &[String], task: Option<&str>) -> Result<String, ApiError> {
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
    let limits = inner.exec_limits;
    let out = tokio::task::spawn_blocking(move || -> Result<std::process::Output, ApiError> {
        let cmd = driver
            .exec_command(&handle, &taba_driver::ExecOptions::command(&req.command))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("exec: {e}")))?;
        run_capped(cmd, stdin, limits).map_err(|e| {
            let status = match e {
                ExecError::TooMuchOutput(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ExecError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                ExecError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut msg = e.to_string();
            if let Some(s) = std::error::Error::source(&e) {
                msg.push_str(&format!(": {s}"));
            }
            ApiError(status, msg)
        })
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_and_exit_code_come_back() {
        let out = run_capped(
            sh("cat; echo err >&2; exit 4"),
            b"in".to_vec(),
            ExecLimits::default(),
        )
        .unwrap();
        assert_eq!(out.stdout, b"in");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(4));
    }

    /// 2 GB of output must not be held: the command is killed at the cap.
    #[test]
    fn huge_output_is_cut_at_the_cap_and_killed() {
        let limits = ExecLimits {
            max_output: 1 << 20,
            timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let e = run_capped(sh("head -c 2G /dev/zero"), Vec::new(), limits).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("exec output is larger than 1048576 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_long_exec_is_timed_out() {
        let limits = ExecLimits {
            max_output: 1 << 20,
            timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let e = run_capped(sh("exec sleep 30"), Vec::new(), limits).unwrap_err();
        assert!(
            e.to_string().starts_with("exec ran longer than 300ms"),
            "{e}"
        );
        // A background child that keeps the output pipes open does not hold
        // the request past the deadline either.
        let e = run_capped(sh("sleep 30 & echo started"), Vec::new(), limits).unwrap_err();
        assert!(
            e.to_string().starts_with("exec ran longer than 300ms"),
            "{e}"
        );
    }
}
