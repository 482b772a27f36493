//! Interactive sessions (`GET /v1/allocations/{id}/exec` as a WebSocket;
//! the protocol is `taba_types::api::exec_session`) behind a blocking
//! facade: the socket lives on a thread of its own with a small tokio
//! runtime; the caller sends input and receives events through bounded
//! channels (a caller that stops receiving stops the socket's reads, and
//! the server's and agent's in turn).
//!
//! The WebSocket rides on a connection that reqwest (the one HTTP client,
//! same TLS material as [`Client`]) opened and upgraded: tungstenite only
//! frames messages.

use crate::http::{api_error, seg, Client, ClientError};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use taba_types::api::exec_session::{frame, Control, MAX_CHUNK, STDERR, STDIN, STDOUT};
use taba_types::api::ExecSessionQuery;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{protocol::Role, Message};
use tokio_tungstenite::WebSocketStream;

/// What to run in an interactive session.
#[derive(Clone, Debug, Default)]
pub struct ExecSessionOptions {
    /// The task (optional when the group has one).
    pub task: Option<String>,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Pass stdin through.
    pub stdin: bool,
    /// Run in a pseudo-terminal of this size (columns, rows).
    pub tty: Option<(u16, u16)>,
    /// Run as this user of the container.
    pub user: Option<String>,
}

/// What the session delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Bytes the command wrote to stdout (with a tty: all its output).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The command ended with this code; the last event.
    Exit(i32),
    /// The session failed; the last event.
    Error(String),
}

enum Outgoing {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
}

/// An open session.
pub struct ExecSession {
    tx: mpsc::Sender<Outgoing>,
    rx: mpsc::Receiver<SessionEvent>,
}

impl ExecSession {
    /// Send bytes to the command's stdin (in pieces of at most
    /// `MAX_CHUNK`). False once the session has ended.
    pub fn send_stdin(&self, data: &[u8]) -> bool {
        data.chunks(MAX_CHUNK)
            .all(|c| self.tx.blocking_send(Outgoing::Stdin(c.to_vec())).is_ok())
    }

    /// Close the command's stdin (it reads EOF; not with a tty).
    pub fn close_stdin(&self) {
        let _ = self.tx.blocking_send(Outgoing::CloseStdin);
    }

    /// A new terminal size.
    pub fn resize(&self, cols: u16, rows: u16) {
        let _ = self.tx.blocking_send(Outgoing::Resize(cols, rows));
    }

    /// A sender usable from another thread (stdin reader, SIGWINCH).
    pub fn input(&self) -> SessionInput {
        SessionInput(self.tx.clone())
    }

    /// The next event; `None` when the session is over.
    pub fn recv(&mut self) -> Option<SessionEvent> {
        self.rx.blocking_recv()
    }
}

/// The input side of a session, for another thread.
#[derive(Clone)]
pub struct SessionInput(mpsc::Sender<Outgoing>);

impl SessionInput {
    /// See [`ExecSession::send_stdin`].
    pub fn send_stdin(&self, data: &[u8]) -> bool {
        data.chunks(MAX_CHUNK)
            .all(|c| self.0.blocking_send(Outgoing::Stdin(c.to_vec())).is_ok())
    }
    /// See [`ExecSession::close_stdin`].
    pub fn close_stdin(&self) {
        let _ = self.0.blocking_send(Outgoing::CloseStdin);
    }
    /// See [`ExecSession::resize`].
    pub fn resize(&self, cols: u16, rows: u16) {
        let _ = self.0.blocking_send(Outgoing::Resize(cols, rows));
    }
}

type Socket = WebSocketStream<reqwest::Upgraded>;

impl Client {
    /// Open an interactive exec session in allocation `id`
    /// (`GET /v1/allocations/{id}/exec`, upgraded). A refusal (no such
    /// task or user, no Exec capability) is a [`ClientError::Api`].
    pub fn exec_session(
        &self,
        id: &str,
        o: &ExecSessionOptions,
    ) -> Result<ExecSession, ClientError> {
        let query = ExecSessionQuery {
            task: o.task.clone(),
            command: serde_json::to_string(&o.command).expect("strings serialize"),
            stdin: o.stdin,
            tty: o.tty.is_some(),
            cols: o.tty.map(|t| t.0),
            rows: o.tty.map(|t| t.1),
            user: o.user.clone(),
        };
        self.open_session(&format!("/v1/allocations/{}/exec", seg(id)), query, o.tty)
    }

    /// Attach to the serial console of a VM task in allocation `id`
    /// (`GET /v1/allocations/{id}/console`, upgraded). Its output arrives
    /// as [`SessionEvent::Stdout`]; the session ends with
    /// [`SessionEvent::Exit`] when the VM stops.
    pub fn console_session(
        &self,
        id: &str,
        task: Option<&str>,
    ) -> Result<ExecSession, ClientError> {
        #[derive(serde::Serialize)]
        struct Q {
            #[serde(skip_serializing_if = "Option::is_none")]
            task: Option<String>,
        }
        let q = Q {
            task: task.map(str::to_string),
        };
        self.open_session(&format!("/v1/allocations/{}/console", seg(id)), q, None)
    }

    fn open_session<Q: serde::Serialize + Send + 'static>(
        &self,
        path: &str,
        query: Q,
        first_size: Option<(u16, u16)>,
    ) -> Result<ExecSession, ClientError> {
        // Several servers: the session goes to one that accepts connections.
        let base = self.reachable_base_url().to_string();
        let url = format!("{base}{path}");
        let http = self.async_http()?;
        let token = self.token().map(str::to_string);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel::<Outgoing>(8);
        let (ev_tx, ev_rx) = mpsc::channel::<SessionEvent>(8);
        std::thread::Builder::new()
            .name("exec-session".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ClientError::Decode(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match connect(&http, &url, &query, token.as_deref(), &base).await {
                        Ok(mut socket) => {
                            if let Some((c, r)) = first_size {
                                let _ = socket.send(resize(c, r)).await;
                            }
                            let _ = ready_tx.send(Ok(()));
                            pump(socket, out_rx, ev_tx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(ClientError::Decode)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ExecSession {
                tx: out_tx,
                rx: ev_rx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Decode(std::io::Error::other(
                "the session thread ended",
            ))),
        }
    }

    fn async_http(&self) -> Result<reqwest::Client, ClientError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tls_built_in_root_certs(false);
        let tls_err = |e: reqwest::Error| ClientError::Input {
            what: "the TLS certificates".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        };
        if let Some(t) = &self.tls {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&t.ca_pem).map_err(tls_err)?);
            if let Some(id) = &t.identity_pem {
                b = b.identity(reqwest::Identity::from_pem(id).map_err(tls_err)?);
            }
        }
        b.build().map_err(tls_err)
    }
}

fn resize(cols: u16, rows: u16) -> Message {
    Message::text(serde_json::to_string(&Control::Resize { cols, rows }).expect("plain data"))
}

async fn connect(
    http: &reqwest::Client,
    url: &str,
    query: &impl serde::Serialize,
    token: Option<&str>,
    base: &str,
) -> Result<Socket, ClientError> {
    let key: [u8; 16] = rand::random();
    let mut req = http
        .get(url)
        .query(query)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", taba_types::api::b64::encode(&key));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|source| ClientError::Transport {
        addr: base.to_string(),
        source,
    })?;
    let status = resp.status();
    if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let body = resp.bytes().await.unwrap_or_default();
        return Err(api_error(status.as_u16(), &body));
    }
    let io = resp
        .upgrade()
        .await
        .map_err(|source| ClientError::Transport {
            addr: base.to_string(),
            source,
        })?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(2 * MAX_CHUNK + 1024));
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await)
}

/// Relay the caller's input to the socket and the socket's frames to the
/// caller until the session's last frame.
async fn pump(
    socket: Socket,
    mut input: mpsc::Receiver<Outgoing>,
    events: mpsc::Sender<SessionEvent>,
) {
    let (mut tx, mut rx) = socket.split();
    let send_input = async {
        while let Some(o) = input.recv().await {
            let m = match o {
                Outgoing::Stdin(d) => Message::Binary(frame(STDIN, &d).into()),
                Outgoing::CloseStdin => Message::Binary(frame(STDIN, &[]).into()),
                Outgoing::Resize(c, r) => resize(c, r),
            };
            if tx.send(m).await.is_err() {
                break;
            }
        }
        // The caller dropped its session: leaving ends the command.
        let _ = tx.close().await;
        std::future::pending::<()>().await;
    };
    let receive = async {
        while let Some(m) = rx.next().await {
            let ev = match m {
                Ok(Message::Binary(b)) => match b.first() {
                    Some(&STDOUT) => SessionEvent::Stdout(b[1..].to_vec()),
                    Some(&STDERR) => SessionEvent::Stderr(b[1..].to_vec()),
                    _ => continue,
                },
                Ok(Message::Text(t)) => match serde_json::from_str::<Control>(&t) {
                    Ok(Control::Exit { code }) => SessionEvent::Exit(code),
                    Ok(Control::Error { message }) => SessionEvent::Error(message),
                    _ => continue,
                },
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => SessionEvent::Error(format!("the session broke: {e}")),
            };
            let last = matches!(ev, SessionEvent::Exit(_) | SessionEvent::Error(_));
            if events.send(ev).await.is_err() || last {
                return;
            }
        }
        let _ = events
            .send(SessionEvent::Error(
                "the session ended without an exit code".into(),
            ))
            .await;
    };
    tokio::select! {
        _ = send_input => {}
        _ = receive => {}
    }
}
