//! `GET /v1/allocations/{id}/exec` upgraded to a WebSocket: an interactive
//! `alloc exec` (`taba_types::api::exec_session` has the protocol).
//!
//! The caller is checked as for the POST route (the Exec capability in the
//! allocation's namespace), the session is recorded in the allocation's
//! events, then the server opens the same session on the agent (over the
//! agent client's TLS, reqwest upgrading the connection) *before* it
//! upgrades the caller's: an agent's refusal (unknown user, task not
//! running, too many sessions) reaches the caller as the agent's 4xx. Then
//! frames are relayed one at a time each way: the server holds at most one
//! frame per direction.

use super::error::ApiError;
use super::handlers::{agent_failure, agent_of, alloc_exact, exec_event, pick_task};
use super::AppState;
use crate::acl::Auth;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use taba_types::acl::Capability;
use taba_types::api::exec_session::MAX_CHUNK;
use taba_types::api::ExecSessionQuery;
use tokio_tungstenite::tungstenite::{self, protocol::Role};
use tokio_tungstenite::WebSocketStream;

/// The agent's end of a session.
type AgentSocket = WebSocketStream<reqwest::Upgraded>;

/// The caller's handshake, required once the caller is known to be allowed.
fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    ws.map_err(|e| {
        ApiError::UpgradeRequired(format!(
            "this route is a WebSocket (send the handshake: Upgrade: websocket): {}",
            e.body_text()
        ))
    })
}

/// The query, decoded as the `Q` extractor does (after the ACL check,
/// which must come first: a caller without rights learns nothing).
fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    super::extract::parse_query(uri.query().unwrap_or(""))
}

/// `GET /v1/allocations/{id}/exec` (WebSocket).
pub async fn alloc_exec_session(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let a = alloc_exact(&app, &auth, &id, Capability::Exec)?;
    let ws = upgrade(ws)?;
    let q: ExecSessionQuery = query(&uri)?;
    let command = q
        .command_args()
        .map_err(|(field, msg)| ApiError::invalid(field, msg))?;
    let task = pick_task(&a, q.task.clone())?;
    let (http, base, addr) = agent_of(&app, &a).await?;
    let mut event = exec_event(&auth, &task, &command);
    event.message.push_str(&format!(
        " (interactive{}{}{})",
        if q.stdin { ", stdin" } else { "" },
        if q.tty { ", tty" } else { "" },
        q.user
            .as_deref()
            .map(|u| format!(", user {u:?}"))
            .unwrap_or_default()
    ));
    app.state.record_alloc_event(&a.id, event).await?;
    let query = ExecSessionQuery {
        task: Some(task),
        ..q
    };
    let url = format!("{base}/v1/client/allocations/{}/exec", a.id);
    let agent = connect(&http, &url, &query).await.map_err(|e| match e {
        Connect::Refused(e) => e,
        Connect::Transport(e) => ApiError::Agent(format!("cannot reach the agent at {addr}: {e}")),
    })?;
    Ok(ws
        .max_message_size(2 * MAX_CHUNK + 1024)
        .on_upgrade(move |client| relay(client, agent))
        .into_response())
}

/// `console` query.
#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    /// The task (optional when the group has one task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
}

/// `GET /v1/allocations/{id}/console` (WebSocket): the serial console of a
/// VM task, attached interactively. Needs the Exec capability (a console is
/// a shell on the machine); recorded in the allocation's events.
pub async fn alloc_console_session(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let a = alloc_exact(&app, &auth, &id, Capability::Exec)?;
    let ws = upgrade(ws)?;
    let q: ConsoleQuery = query(&uri)?;
    let task = pick_task(&a, q.task)?;
    let (http, base, addr) = agent_of(&app, &a).await?;
    app.state
        .record_alloc_event(
            &a.id,
            taba_types::AllocEvent {
                time: crate::broker::now_ms(),
                kind: "Console".into(),
                actor: auth.actor(),
                message: format!("task {task}: console attached"),
            },
        )
        .await?;
    let url = format!("{base}/v1/client/allocations/{}/console", a.id);
    let agent = connect(&http, &url, &ConsoleQuery { task: Some(task) })
        .await
        .map_err(|e| match e {
            Connect::Refused(e) => e,
            Connect::Transport(e) => {
                ApiError::Agent(format!("cannot reach the agent at {addr}: {e}"))
            }
        })?;
    Ok(ws
        .max_message_size(2 * MAX_CHUNK + 1024)
        .on_upgrade(move |client| relay(client, agent))
        .into_response())
}

enum Connect {
    /// The agent answered, without upgrading: its error.
    Refused(ApiError),
    /// The connection or the upgrade failed.
    Transport(String),
}

/// Open the session on the agent: a GET with the WebSocket handshake's
/// headers on the agent client, upgraded.
async fn connect(
    http: &reqwest::Client,
    url: &str,
    query: &impl serde::Serialize,
) -> Result<AgentSocket, Connect> {
    let key: [u8; 16] = rand::random();
    let resp = http
        .get(url)
        .query(query)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", taba_types::api::b64::encode(&key))
        .send()
        .await
        .map_err(|e| Connect::Transport(taba_types::error_chain(&e)))?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return Err(Connect::Refused(agent_failure(resp).await));
    }
    let io = resp
        .upgrade()
        .await
        .map_err(|e| Connect::Transport(taba_types::error_chain(&e)))?;
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(2 * MAX_CHUNK + 1024));
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await)
}

fn to_agent(m: ws::Message) -> Option<tungstenite::Message> {
    Some(match m {
        ws::Message::Text(t) => tungstenite::Message::text(t.as_str()),
        ws::Message::Binary(b) => tungstenite::Message::Binary(b),
        ws::Message::Close(_) | ws::Message::Ping(_) | ws::Message::Pong(_) => return None,
    })
}

fn to_client(m: tungstenite::Message) -> Option<ws::Message> {
    Some(match m {
        tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        tungstenite::Message::Binary(b) => ws::Message::Binary(b),
        _ => return None,
    })
}

/// Relay frames both ways until the agent ends the session (its last
/// frame is the exit code or an error) or the caller goes away.
async fn relay(client: WebSocket, agent: AgentSocket) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut a_tx, mut a_rx) = agent.split();
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            if matches!(m, ws::Message::Close(_)) {
                break;
            }
            if let Some(m) = to_agent(m) {
                if a_tx.send(m).await.is_err() {
                    break;
                }
            }
        }
        let _ = a_tx.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = a_rx.next().await {
            if m.is_close() {
                break;
            }
            if let Some(m) = to_client(m) {
                if c_tx.send(m).await.is_err() {
                    break;
                }
            }
        }
        let _ = c_tx.close().await;
    };
    // The agent's end decides: its last frame (the exit code) is always
    // relayed. A caller that leaves closes the agent's side, which kills
    // the command and ends `down` too.
    tokio::pin!(up);
    tokio::pin!(down);
    let mut up_done = false;
    loop {
        tokio::select! {
            _ = &mut down => break,
            _ = &mut up, if !up_done => up_done = true,
        }
    }
}
