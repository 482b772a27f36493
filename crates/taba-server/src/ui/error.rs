//! Why a UI request failed, shown as a page (or a fragment) with the status
//! the API would answer.

use super::layout;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

/// Why a UI request failed.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No session, or its token is no longer valid: sign in again.
    #[error("sign in: {0}")]
    SignIn(String),
    /// The token lacks the right (the API's 403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// A form without this session's CSRF token, or from another site.
    #[error("the form is stale or came from another site ({0}); reload the page and try again")]
    Csrf(&'static str),
    /// Bad input in a form.
    #[error("{message}")]
    BadInput {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// The API route an action went to refused it.
    #[error("{message}")]
    Api {
        /// The API's status.
        status: StatusCode,
        /// The API's message.
        message: String,
        /// The field it blamed.
        field: Option<String>,
    },
    /// The server failed.
    #[error("{0}")]
    Internal(String),
}

impl UiError {
    /// The HTTP status of the page.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::SignIn(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Csrf(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadInput { .. } => StatusCode::BAD_REQUEST,
            Self::Api { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::StateError> for UiError {
    fn from(e: crate::StateError) -> Self {
        let api = crate::api::ApiError::from(e);
        let status = api.status();
        match status {
            StatusCode::NOT_FOUND => Self::NotFound(api.to_string()),
            s if s.is_client_error() => Self::BadInput {
                message: api.to_string(),
                field: None,
            },
            _ => Self::Internal(api.to_string()),
        }
    }
}

impl From<crate::acl::Denied> for UiError {
    fn from(e: crate::acl::Denied) -> Self {
        Self::Forbidden(e.0)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if let Self::SignIn(why) = &self {
            let to = format!("/ui/login?why={}", layout::query_escape(why));
            return Redirect::to(&to).into_response();
        }
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("error");
        let body = html! {
            h1 { (title) }
            p.error role="alert" { (self.to_string()) }
            @if let Self::Api { field: Some(f), .. } | Self::BadInput { field: Some(f), .. } = &self {
                p { "field: " code { (f) } }
            }
            p { a href="/ui/" { "back to the overview" } }
        };
        (status, layout::bare_page(title, body)).into_response()
    }
}
