//! Images from registries: `POST /v1/registry/pull` (progress as newline-delimited JSON),
//! `POST /v1/registry/login` and `POST /v1/registry/logout` (credentials the server keeps,
//! 0600, for its pulls and pushes), `POST /v1/registry/push` (progress as for a pull). The
//! registry protocol itself is `taba_registry`'s.

use super::extract::{parse_json, read_body};
use super::{ApiError, AppState};
use crate::images::{image_info, on_store, registry_error};
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use taba_image::{ImageError, SaveFormat};
use taba_registry::{Pulled, Pushed, Registries, RegistryError};
use taba_types::api::{
    PullEvent, PullRequest, PushRequest, RegistryLoginRequest, RegistryLoginResponse, SaveRequest,
};

/// What the pull or push task tells the handler.
enum Msg {
    Event(PullEvent),
    End(Result<PullEvent, RegistryError>),
}

fn line(e: &PullEvent) -> axum::body::Bytes {
    let mut v = serde_json::to_vec(e).expect("events serialise");
    v.push(b'\n');
    v.into()
}

fn end_event(r: Result<PullEvent, RegistryError>) -> PullEvent {
    match r {
        Ok(e) => e,
        Err(e) => PullEvent::Error {
            message: taba_types::error_chain(&e),
        },
    }
}

fn pulled(p: Pulled) -> PullEvent {
    PullEvent::Done {
        image: image_info(p.image),
        bytes: p.bytes,
    }
}

fn pushed(p: Pushed) -> PullEvent {
    PullEvent::Pushed {
        reference: p.reference,
        digest: p.digest,
        uploaded: p.uploaded,
        skipped: p.skipped,
        bytes: p.bytes,
    }
}

/// `POST /v1/registry/pull`: pulls into the server's image store. Failures before the
/// manifest is known (bad reference, credentials refused, unknown tag) are HTTP errors;
/// afterwards the reply is 200 and its last line says `done` or `error`. The pull goes on
/// if the caller goes away.
pub async fn pull(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: PullRequest = json_body(&app, body).await?;
    Registries::parse(&req.reference).map_err(|e| registry_error(&e))?;
    let state = app.state.clone();
    stream_events(move |progress| async move {
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
        r.map(pulled)
    })
    .await
}

/// `POST /v1/registry/push`: pushes an image of the server's store to a registry, with the
/// digests it was imported or pulled with. Replies as a pull does; the last line says
/// `pushed` or `error`. The push goes on if the caller goes away.
pub async fn push(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: PushRequest = json_body(&app, body).await?;
    Registries::parse(&req.reference).map_err(|e| registry_error(&e))?;
    let source = req.source.clone().unwrap_or_else(|| req.reference.clone());
    let state = app.state.clone();
    stream_events(move |progress| async move {
        let r = state
            .registries
            .push(state.images.clone(), &source, &req.reference, &progress)
            .await;
        match &r {
            Ok(p) => tracing::info!(reference = %req.reference, digest = %p.digest,
                uploaded = p.uploaded, bytes = p.bytes, "image pushed"),
            Err(e) => tracing::warn!(reference = %req.reference,
                error = %taba_types::error_chain(e), "image push failed"),
        }
        r.map(pushed)
    })
    .await
}

/// `POST /v1/image-save`: the image as an OCI-layout or docker-save tar, streamed as it is
/// written. An unknown image is a 404 and a bad format a 400, before the reply starts.
pub async fn save(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: SaveRequest = json_body(&app, body).await?;
    let format: SaveFormat = req
        .format
        .as_deref()
        .unwrap_or("oci-archive")
        .parse()
        .map_err(|e: String| ApiError::bad("format", e))?;
    let reference = req.reference.clone();
    let found = on_store(&app.state.images, move |i| Ok(i.export(&reference))).await?;
    match found {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(ApiError::NotFound(format!(
                "image {:?} not found",
                req.reference
            )))
        }
        Err(e @ ImageError::InvalidReference { .. }) => {
            return Err(ApiError::bad("reference", taba_types::error_chain(&e)))
        }
        Err(e @ ImageError::NoBlobs(_)) => {
            return Err(ApiError::Conflict(taba_types::error_chain(&e)))
        }
        Err(e) => return Err(ApiError::Internal(taba_types::error_chain(&e))),
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(4);
    let images = app.state.images.clone();
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter(tx.clone());
        let buffered = std::io::BufWriter::with_capacity(256 * 1024, out);
        if let Err(e) = images.save(&req.reference, &[], format, buffered) {
            tracing::warn!(reference = %req.reference, error = %taba_types::error_chain(&e),
                "image save failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(taba_types::error_chain(&e))));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(body),
    )
        .into_response())
}

/// A writer whose bytes become chunks of a streamed reply (the caller gone: a write error).
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(axum::body::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "caller gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `task` on its own (it goes on if the caller leaves) and replies with its progress as
/// newline-delimited JSON. A failure before the first event is an HTTP error.
async fn stream_events<F, Fut>(task: F) -> Result<Response, ApiError>
where
    F: FnOnce(Box<dyn Fn(PullEvent) + Send + Sync>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<PullEvent, RegistryError>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let events = tx.clone();
    let progress: Box<dyn Fn(PullEvent) + Send + Sync> = Box::new(move |e: PullEvent| {
        let _ = events.send(Msg::Event(e));
    });
    tokio::spawn(async move {
        let r = task(progress).await;
        let _ = tx.send(Msg::End(r));
    });
    let first = match rx.recv().await {
        Some(Msg::Event(e)) => e,
        Some(Msg::End(Err(e))) => return Err(registry_error(&e)),
        Some(Msg::End(Ok(e))) => e,
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
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// The registry host (`registry.example:5000`).
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
