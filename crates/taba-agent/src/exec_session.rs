//! Interactive `alloc exec` sessions: `GET /v1/client/allocations/{id}/exec`
//! upgraded to a WebSocket (the protocol is `taba_types::api::exec_session`).
//!
//! Everything that can be refused is refused before the upgrade, as a 4xx
//! naming the field: the command, the task, the user (resolved in the
//! container's files by the driver), the number of sessions. Then the
//! agent runs `taba shim exec` (which joins the task and, with a tty, makes
//! the terminal inside it) and relays:
//!
//! ```text
//! WebSocket --stdin frames--> shim exec stdin  (tty: framed keystrokes + resizes)
//! WebSocket <--stdout/err---- shim exec stdout/stderr, as they are written
//! WebSocket <--exit {code}--- shim exec's exit status (the command's)
//! ```
//!
//! Buffers are bounded both ways: output goes through a channel of a few
//! frames to the socket, so a client that stops reading stops the reads of
//! the command's pipes (and the command blocks on its writes); input is
//! written to the command before the next frame is read. A session with no
//! traffic for `exec_idle_timeout` is ended; a client that goes away ends
//! the command.

use crate::api::{bad, bad_field, not_found, pick_task, ApiError};
use crate::AgentInner;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taba_types::api::exec_session::{frame, Control, MAX_CHUNK, STDERR, STDIN, STDOUT};
use taba_types::api::ExecSessionQuery;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Sessions open per allocation.
#[derive(Default)]
pub(crate) struct Sessions(Arc<Mutex<HashMap<String, usize>>>);

/// One open session; closing it frees its slot.
pub(crate) struct Slot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    alloc: String,
}

impl Sessions {
    fn acquire(&self, alloc: &str, max: usize) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(alloc.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            map: self.0.clone(),
            alloc: alloc.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.alloc) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.alloc);
            }
        }
    }
}

/// Size of a terminal before the client says its own.
const DEFAULT_TTY: (u16, u16) = (80, 24);

/// `GET /v1/client/allocations/{id}/exec` (WebSocket).
pub(crate) async fn handler(
    State(inner): State<Arc<AgentInner>>,
    Path(id): Path<String>,
    Query(q): Query<ExecSessionQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    match prepare(inner, &id, q).await {
        Ok(session) => ws
            .max_message_size(2 * MAX_CHUNK + 1024)
            .on_upgrade(move |socket| session.run(socket)),
        Err(r) => r,
    }
}

/// A command ready to run, its slot taken.
struct Prepared {
    cmd: std::process::Command,
    stdin: bool,
    tty: bool,
    idle: Duration,
    _slot: Slot,
}

async fn prepare(
    inner: Arc<AgentInner>,
    id: &str,
    q: ExecSessionQuery,
) -> Result<Prepared, Response> {
    let command = q
        .command_args()
        .map_err(|(field, msg)| bad_field(field, msg))?;
    let runner = inner
        .runner(id)
        .ok_or_else(|| not_found(format!("allocation {id} is not on this node")).into_response())?;
    let task =
        pick_task(&runner.task_names(), q.task.as_deref()).map_err(IntoResponse::into_response)?;
    let handle = runner.handle(&task).ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, format!("task {task} is not running")).into_response()
    })?;
    let driver = runner
        .driver_of(&task)
        .ok_or_else(|| bad(format!("task {task} has no driver on this node")).into_response())?;
    let limits = inner.exec_limits;
    let slot = inner.exec_sessions.acquire(id, limits.max_sessions).ok_or_else(|| {
        ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "allocation {id} already has {} exec sessions open (agent option exec_max_sessions)",
                limits.max_sessions
            ),
        )
        .into_response()
    })?;
    let opts = taba_driver::ExecOptions {
        command,
        user: q.user.clone(),
        tty: q.tty.then_some((
            q.cols.filter(|c| *c > 0).unwrap_or(DEFAULT_TTY.0),
            q.rows.filter(|r| *r > 0).unwrap_or(DEFAULT_TTY.1),
        )),
    };
    let cmd = tokio::task::spawn_blocking(move || driver.exec_command(&handle, &opts))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())?
        .map_err(|e| match e {
            taba_driver::DriverError::InvalidExec { field, message } => bad_field(field, message),
            taba_driver::DriverError::Unsupported(what) => {
                bad(format!("{what} is not supported by this task's driver")).into_response()
            }
            other => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("exec: {}", taba_types::error_chain(&other)),
            )
            .into_response(),
        })?;
    Ok(Prepared {
        cmd,
        stdin: q.stdin,
        tty: q.tty,
        idle: limits.idle_timeout,
        _slot: slot,
    })
}

fn control(c: &Control) -> Message {
    Message::Text(serde_json::to_string(c).expect("plain data").into())
}

/// Milliseconds since `start`, for the idle clock.
fn since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

impl Prepared {
    async fn run(mut self, socket: WebSocket) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (mut sink, mut source) = socket.split();
        let mut cmd = tokio::process::Command::from(std::mem::replace(
            &mut self.cmd,
            std::process::Command::new("/"),
        ));
        cmd.stdin(if self.stdin || self.tty {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("start taba shim exec: {e}");
                let _ = sink.send(control(&Control::Error { message: msg })).await;
                let _ = sink.close().await;
                return;
            }
        };
        let start = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        // Output: a few frames in flight at most.
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(4);
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(tokio::spawn(pump_out(
                o,
                STDOUT,
                out_tx.clone(),
                last.clone(),
                start,
            )));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(tokio::spawn(pump_out(
                e,
                STDERR,
                out_tx.clone(),
                last.clone(),
                start,
            )));
        }
        drop(out_tx);
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            sink
        });
        // Input: until the client closes or goes away.
        let stdin = child.stdin.take();
        let (tty, last_in) = (self.tty, last.clone());
        let input = tokio::spawn(async move {
            pump_in(&mut source, stdin, tty, &last_in, start).await;
        });
        let idle = self.idle;
        let watchdog = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500).min(idle)).await;
                let quiet = since(start).saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= idle.as_millis() as u64 {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            st = child.wait() => Ok(st),
            _ = watchdog => Err(format!(
                "the session was idle for {idle:?} (agent option exec_idle_timeout); the command was killed"
            )),
            _ = wait_input(&input) => Err("the client went away".to_string()),
        };
        if outcome.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        input.abort();
        // The output of a command that ended is drained; something it left
        // in the background that still holds the pipes does not hold the
        // session open.
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        let mut sink = match writer.await {
            Ok(s) => s,
            Err(_) => return,
        };
        let last_frame = match outcome {
            Ok(Ok(st)) => Control::Exit {
                code: exit_code(st),
            },
            Ok(Err(e)) => Control::Error {
                message: format!("waiting for the command: {e}"),
            },
            Err(message) => Control::Error { message },
        };
        let _ = sink.send(control(&last_frame)).await;
        let _ = sink.close().await;
    }
}

/// Resolves when the input task has finished (the client closed or left).
async fn wait_input(input: &tokio::task::JoinHandle<()>) {
    while !input.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

async fn pump_out(
    mut r: impl AsyncRead + Unpin,
    stream: u8,
    tx: mpsc::Sender<Message>,
    last: Arc<std::sync::atomic::AtomicU64>,
    start: Instant,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                last.store(since(start), std::sync::atomic::Ordering::Relaxed);
                if tx
                    .send(Message::Binary(frame(stream, &buf[..n]).into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Relay the client's frames to the command's stdin until the client
/// closes the socket. With a tty, keystrokes and resizes are framed for
/// `shim exec` (`taba_runtime::shim::tty`).
async fn pump_in(
    source: &mut futures_util::stream::SplitStream<WebSocket>,
    mut stdin: Option<tokio::process::ChildStdin>,
    tty: bool,
    last: &std::sync::atomic::AtomicU64,
    start: Instant,
) {
    use taba_driver::exec_tty::{encode_frame, resize_frame, FRAME_DATA};
    while let Some(Ok(msg)) = source.next().await {
        last.store(since(start), std::sync::atomic::Ordering::Relaxed);
        let bytes = match msg {
            Message::Binary(b) if b.first() == Some(&STDIN) => {
                let data = &b[1..];
                if data.is_empty() {
                    if !tty {
                        // End of input: the command sees EOF.
                        stdin = None;
                    }
                    continue;
                }
                if tty {
                    encode_frame(FRAME_DATA, data)
                } else {
                    data.to_vec()
                }
            }
            Message::Text(t) => match serde_json::from_str::<Control>(&t) {
                Ok(Control::Resize { cols, rows }) if tty => resize_frame(cols, rows),
                _ => continue,
            },
            Message::Close(_) => return,
            _ => continue,
        };
        if let Some(s) = stdin.as_mut() {
            if s.write_all(&bytes).await.is_err() {
                stdin = None;
            }
        }
    }
}

/// Query of the console route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsoleQuery {
    task: Option<String>,
}

/// `GET /v1/client/allocations/{id}/console` (WebSocket): the task's
/// console socket (kept by its shim, so it outlives agent restarts),
/// relayed both ways; stdout frames out, stdin frames in. The session ends
/// when the client leaves or the console closes (the VM stopped).
pub(crate) async fn console_handler(
    State(inner): State<Arc<AgentInner>>,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let prepared = async {
        let runner = inner.runner(&id).ok_or_else(|| {
            not_found(format!("allocation {id} is not on this node")).into_response()
        })?;
        let task = pick_task(&runner.task_names(), q.task.as_deref())
            .map_err(IntoResponse::into_response)?;
        let handle = runner.handle(&task).ok_or_else(|| {
            ApiError(StatusCode::CONFLICT, format!("task {task} is not running")).into_response()
        })?;
        let driver = runner.driver_of(&task).ok_or_else(|| {
            bad(format!("task {task} has no driver on this node")).into_response()
        })?;
        let path = driver.console_socket(&handle).map_err(|e| match e {
            taba_driver::DriverError::Unsupported(what) => bad(format!(
                "task {task}: {what} is not supported by its driver (only VMs have a console)"
            ))
            .into_response(),
            other => ApiError(
                StatusCode::CONFLICT,
                format!("task {task}: {}", taba_types::error_chain(&other)),
            )
            .into_response(),
        })?;
        let slot = inner
            .exec_sessions
            .acquire(&id, inner.exec_limits.max_sessions)
            .ok_or_else(|| {
                ApiError(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("allocation {id} already has {} sessions open (agent option exec_max_sessions)", inner.exec_limits.max_sessions),
                )
                .into_response()
            })?;
        // A socket path can be longer than an address holds: go through
        // the directory's descriptor.
        let dir = path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let dir = std::fs::File::open(&dir).map_err(|e| {
            ApiError(StatusCode::CONFLICT, format!("task {task}: console: {e}")).into_response()
        })?;
        let short = format!(
            "/proc/self/fd/{}/{}",
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            taba_driver::console_socket_name()
        );
        let stream = tokio::net::UnixStream::connect(&short).await.map_err(|e| {
            ApiError(
                StatusCode::CONFLICT,
                format!("task {task}: connect to its console: {e}"),
            )
            .into_response()
        })?;
        Ok::<_, Response>((stream, slot))
    };
    match prepared.await {
        Ok((stream, slot)) => ws
            .max_message_size(2 * MAX_CHUNK + 1024)
            .on_upgrade(move |socket| {
                relay_console(socket, stream, slot, inner.exec_limits.idle_timeout)
            }),
        Err(r) => r,
    }
}

async fn relay_console(
    socket: WebSocket,
    stream: tokio::net::UnixStream,
    _slot: Slot,
    idle: Duration,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (mut sink, mut source) = socket.split();
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let down = async {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return "the console closed (the VM stopped)".to_string(),
                Ok(n) => {
                    last.store(since(start), Ordering::Relaxed);
                    if sink
                        .send(Message::Binary(frame(STDOUT, &buf[..n]).into()))
                        .await
                        .is_err()
                    {
                        return String::new();
                    }
                }
            }
        }
    };
    let up = async {
        while let Some(Ok(m)) = source.next().await {
            last.store(since(start), Ordering::Relaxed);
            let typed = match m {
                Message::Binary(b) if b.first() == Some(&STDIN) && b.len() > 1 => b,
                Message::Close(_) => return,
                _ => continue,
            };
            if wr.write_all(&typed[1..]).await.is_err() {
                return;
            }
        }
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500).min(idle)).await;
            if since(start).saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64
            {
                return;
            }
        }
    };
    let ended = tokio::select! {
        why = down => Some(why),
        _ = up => None,
        _ = watchdog => Some(format!("the session was idle for {idle:?} (agent option exec_idle_timeout)")),
    };
    // The last frame says why the session ended (none when the client left).
    let last = match ended {
        Some(why) if why.starts_with("the console closed") => Some(Control::Exit { code: 0 }),
        Some(why) if !why.is_empty() => Some(Control::Error { message: why }),
        _ => None,
    };
    if let Some(c) = last {
        let _ = sink.send(control(&c)).await;
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_per_allocation_and_freed_when_closed() {
        let s = Sessions::default();
        let a1 = s.acquire("a", 2).unwrap();
        let _a2 = s.acquire("a", 2).unwrap();
        assert!(s.acquire("a", 2).is_none(), "a third session over the cap");
        let _b = s
            .acquire("b", 2)
            .expect("another allocation has its own count");
        drop(a1);
        assert!(
            s.acquire("a", 2).is_some(),
            "a closed session frees its slot"
        );
    }
}
