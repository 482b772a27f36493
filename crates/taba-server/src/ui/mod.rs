//! The web UI at `/ui/`: pages rendered on the server with `maud`, one CSS
//! file and one small script ([`assets`]), all compiled into the binary (no
//! Node toolchain, nothing fetched from the internet).
//!
//! ```text
//! browser --cookie taba_ui (HttpOnly, SameSite=Strict, Secure under TLS)--> /ui/...
//!   session::Viewer: session id -> token secret -> AclState::authenticate (every request:
//!                    a revoked or expired token ends the session)
//!   GET pages  -> read ServerState directly (ClusterState under its read lock), each
//!                 resource checked with the caller's rights as the API's route does
//!   POST forms -> CSRF token of the session checked -> the API's own route, called in
//!                 process with the session's token (api::call: same guard, same handler)
//!   streams    -> /ui/events and /ui/allocs/{id}/logs: the API's event stream and logs
//!                 route, called in process the same way, streamed to the browser
//! ```
//!
//! The script follows `/ui/events` and fetches the page's live region again
//! (`X-Taba-Fragment: 1`) when something it shows may have changed.
//!
//! This module owns the UI's routes, sessions and pages. It must not change
//! state except through the API's routes.

mod allocs;
mod api;
mod assets;
mod cluster;
mod error;
mod jobs;
mod layout;
mod namespaces;
mod session;

use crate::api::AppState;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub use error::UiError;
pub use session::Sessions;

/// What every UI handler gets.
pub struct Ui {
    /// The API's state (server state, agent clients).
    pub app: AppState,
    /// The API's router without the TLS gate (the UI request passed it):
    /// where actions and streams go, with the session's token.
    pub api: Router,
    /// Signed-in browsers.
    pub sessions: Sessions,
    /// Cookies get `Secure` (the server speaks TLS).
    pub secure: bool,
}

/// Shared handle of the UI's state.
pub type UiState = Arc<Ui>;

/// The routes of the web UI. `api` is the API's router (its guard and
/// handlers), called in process for actions and streams.
pub fn router(app: AppState, api: Router) -> Router {
    let secure = app.state.config.tls.is_some();
    let ui = Arc::new(Ui {
        app,
        api,
        sessions: Sessions::default(),
        secure,
    });
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(cluster::overview))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/taba.css", get(assets::css))
        .route("/ui/assets/taba.js", get(assets::js))
        .route("/ui/events", get(api::events))
        .route("/ui/nodes", get(cluster::nodes))
        .route("/ui/nodes/{id}", get(cluster::node))
        .route("/ui/nodes/{id}/drain", post(cluster::drain))
        .route("/ui/nodes/{id}/eligibility", post(cluster::eligibility))
        .route("/ui/jobs", get(jobs::list))
        .route("/ui/jobs/run", get(jobs::run_form).post(jobs::run))
        .route("/ui/jobs/{ns}/{name}", get(jobs::detail))
        .route("/ui/jobs/{ns}/{name}/stop", post(jobs::stop))
        .route("/ui/allocs/{id}", get(allocs::detail))
        .route("/ui/allocs/{id}/logs", get(allocs::logs))
        .route("/ui/namespaces", get(namespaces::list))
        .route("/ui/evaluations", get(namespaces::evaluations))
        .with_state(ui)
}
