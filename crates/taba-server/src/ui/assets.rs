//! The UI's one stylesheet and one script, compiled into the binary.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The stylesheet.
pub const CSS: &str = include_str!("assets/taba.css");
/// The script: live updates from the event stream, and followed logs.
pub const JS: &str = include_str!("assets/taba.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui/assets/taba.css`.
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// `GET /ui/assets/taba.js`.
pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}
