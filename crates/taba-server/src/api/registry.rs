//! Images from registries: `POST /v1/registry/pull` (progress as newline-delimited JSON),
//! `POST /v1/registry/login` and `POST /v1/registry/logout` (credentials the server keeps,
//! 0600, for its pulls). The pulling itself is `taba_registry`'s.

use super::extract::{parse_json, read_body};
use super::{ApiError, AppState};
use crate::images::{image_info, registry_error};
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use taba_registry::{Pulled, Registries, RegistryError};
use taba_types::api::{PullEvent, PullRequest, RegistryLoginRequest, RegistryLoginResponse};

/// What the pull task tells the handler.
enum Msg {
    Event(PullEvent),
    End(Result<Pulled, RegistryError>),
}

fn line(e: &PullEvent) -> axum::body::Bytes {
    let mut v = serde_json::to_vec(e).expect("events serialise");
    v.push(b'\n');
    v.into()
}

fn end_event(r: Result<Pulled, RegistryError>) -> PullEvent {
    match r {
        Ok(p) => PullEvent::Done {
            image: image_info(p.image),
            bytes: p.bytes,
        },
        Err(e) => PullEvent::Error {
            message: taba_types::error_chain(&e),
        },
    }
}

/// `POST /v1/registry/pull`: pulls into the server's image store. Failures before the
/// manifest is known (bad reference, credentials refused, unknown tag) are HTTP errors;
/// afterwards the reply is 200 and its last line says `done` or `error`. The pull goes on
/// if the caller goes away.
pub async fn pull(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: PullRequest = json_body(&app, body).await?;
    Registries::parse(&req.reference).map_err(|e| registry_error(&e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let state = app.state.clone();
    tokio::spawn(async move {
        let events = tx.clone();
        let progress = move |e: PullEvent| {
            let _ = events.send(Msg::Event(e));
        };
        let r = state
            .registries
            .pull(state.images.clone(), &req.reference, &progress)
            .await;
        match &r {
            Ok(p) => tracing::info!(reference = %req.reference, id = %p.image.id,
                blobs = p.blobs, bytes = p.bytes, "image pulled"),
            Err(e) => tracing::warn!(reference = %req.reference,
                error = %taba_types::error_chain(e), "image pull failed"),
        }
        let _ = tx.send(Msg::End(r));
    });
    let first = match rx.recv().await {
        Some(Msg::Event(e)) => e,
        Some(Msg::End(Err(e))) => return Err(registry_error(&e)),
        Some(Msg::End(Ok(p))) => end_event(Ok(p)),
        None => return Err(ApiError::ShuttingDown),
    };
    let rest = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await? {
            Msg::Event(e) => Some((Ok::<_, std::io::Error>(line(&e)), Some(rx))),
            Msg::End(r) => Some((Ok(line(&end_event(r))), None)),
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(line(&first)) }),
        rest,
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `POST /v1/registry/login`: checks the credentials with the registry, then keeps them.
pub async fn login(
    State(app): State<AppState>,
    body: Body,
) -> Result<Json<RegistryLoginResponse>, ApiError> {
    let req: RegistryLoginRequest = json_body(&app, body).await?;
    if req.username.is_empty() {
        return Err(ApiError::bad("username", "must not be empty"));
    }
    if req.password.is_empty() {
        return Err(ApiError::bad("password", "must not be empty"));
    }
    app.state
        .registries
        .login(&req.registry, &req.username, &req.password)
        .await
        .map_err(|e| match e {
            RegistryError::InvalidReference { .. } => {
                ApiError::bad("registry", taba_types::error_chain(&e))
            }
            RegistryError::Unauthorized { .. } => {
                ApiError::invalid("password", taba_types::error_chain(&e))
            }
            e => registry_error(&e),
        })?;
    Ok(Json(RegistryLoginResponse {
        registry: req.registry,
        status: "logged in".into(),
    }))
}

async fn json_body<T: DeserializeOwned>(app: &AppState, body: Body) -> Result<T, ApiError> {
    parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)
}

/// Body of `POST /v1/registry/logout`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    registry: String,
}

/// `POST /v1/registry/logout`: forgets the server's login for a registry.
pub async fn logout(
    State(app): State<AppState>,
    body: Body,
) -> Result<Json<RegistryLoginResponse>, ApiError> {
    let req: LogoutRequest = json_body(&app, body).await?;
    let had = app
        .state
        .registries
        .logout(&req.registry)
        .map_err(|e| match e {
            RegistryError::InvalidReference { .. } => {
                ApiError::bad("registry", taba_types::error_chain(&e))
            }
            e => registry_error(&e),
        })?;
    Ok(Json(RegistryLoginResponse {
        registry: req.registry,
        status: if had { "logged out" } else { "not logged in" }.into(),
    }))
}
