//! The UI's actions and streams go to the API's own routes, in process, with
//! the session's token as `Authorization: Bearer`: the same ACL guard, the
//! same handler, the same checks (a job's parse and validation, `host` for an
//! exec task's user, node write for a drain), so the UI can do nothing the
//! token could not do with the CLI.

use super::session::Viewer;
use super::{UiError, UiState};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, Uri};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::Value;
use taba_types::api::ErrorBody;
use tower::ServiceExt;

/// Largest JSON reply of the API the UI reads whole.
const MAX_REPLY: usize = 16 << 20;

/// Call the API route `method uri` as the viewer; the reply as the API gave it.
pub async fn call(
    ui: &UiState,
    viewer: &Viewer,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Body,
) -> Result<Response, UiError> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(secret) = &viewer.session.secret {
        req = req.header(header::AUTHORIZATION, format!("Bearer {secret}"));
    }
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(body)
        .map_err(|e| UiError::Internal(format!("cannot build the API request: {e}")))?;
    match ui.api.clone().oneshot(req).await {
        Ok(resp) => Ok(resp),
        Err(never) => match never {},
    }
}

/// Call the API and read its JSON reply; an error reply becomes
/// [`UiError::Api`] with the API's status, message and field.
pub async fn call_json(
    ui: &UiState,
    viewer: &Viewer,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Body,
) -> Result<Value, UiError> {
    let resp = call(ui, viewer, method, uri, content_type, body).await?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| UiError::Internal(format!("reading the API's reply: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => UiError::Api {
                status,
                message: e.error.message,
                field: e.error.field,
            },
            Err(_) => UiError::Api {
                status,
                message: String::from_utf8_lossy(&bytes).trim().to_string(),
                field: None,
            },
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| UiError::Internal(format!("unreadable reply of the API: {e}")))
}

/// `GET /ui/events?topic=...`: the API's event stream (`GET
/// /v1/event/stream`, filtered by the token's rights) for the page's script.
pub async fn events(
    State(ui): State<UiState>,
    viewer: Viewer,
    uri: Uri,
) -> Result<Response, UiError> {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let resp = call(
        &ui,
        &viewer,
        Method::GET,
        &format!("/v1/event/stream{query}"),
        None,
        Body::empty(),
    )
    .await?;
    // Passed on as the API gave it: the stream, or an error the script shows.
    Ok(resp)
}
