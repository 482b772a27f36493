//! The one place where errors become HTTP status codes. Every error reply has
//! the body `{"error": {"message": ..., "field": <path or null>, "code": ...}}`
//! ([`ErrorCode`]: one per variant here).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use taba_types::api::{ErrorBody, ErrorCode, ErrorDetail};

/// An error an API handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: bad syntax, wrong types, unknown fields, bad UTF-8.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// Well-formed input that cannot be accepted (validation, unknown image).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// The body is larger than the route accepts.
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The content type is not one the route reads.
    #[error("unsupported content type {0:?}; send application/json or application/toml")]
    UnsupportedMediaType(String),
    /// No token, or one that is not (or no longer) valid.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is not who it claims (e.g. an unknown node id), or lacks the right.
    #[error("{message}")]
    Forbidden {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// A WebSocket route called without the WebSocket handshake.
    #[error("{0}")]
    UpgradeRequired(String),
    /// The request conflicts with the state (e.g. an ambiguous id prefix).
    #[error("{0}")]
    Conflict(String),
    /// A check-and-set failed: the object's modify index is not the one given.
    #[error("{message}")]
    IndexMismatch {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// A query parameter the route does not take.
    #[error("unknown query parameter; this route takes: {0}")]
    UnknownParameter(String, String),
    /// A unique value (a node name) is held by another record.
    #[error("{message}")]
    Taken {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// What was asked for is no longer kept (an event stream's index older
    /// than the events the server keeps).
    #[error("{message}")]
    Gone {
        /// What is wrong.
        message: String,
        /// Where.
        field: Option<String>,
    },
    /// No such route.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A node's agent could not be reached or failed.
    #[error("{0}")]
    Agent(String),
    /// An image registry could not be reached, failed, or sent what its digests deny.
    #[error("{0}")]
    Registry(String),
    /// A cap of `alloc exec` (output size, duration) was hit, on the agent
    /// (413, 408, relayed) or here (502 for an oversized reply, 504 when the
    /// agent does not answer in time).
    #[error("{1}")]
    ExecLimit(StatusCode, String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// No leader can take the request now (an election is under way, or this server just
    /// lost its leadership); the client retries.
    #[error("{0}")]
    Unavailable(String),
    /// A failure of the server itself (store, internal invariant).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming a field.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: Some(field.into()),
        }
    }
    /// A 422 naming a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            field: Some(field.into()),
        }
    }
    /// A 403 naming a field.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Forbidden {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The status code of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            Self::Conflict(_) | Self::Taken { .. } | Self::IndexMismatch { .. } => {
                StatusCode::CONFLICT
            }
            Self::UnknownParameter(..) => StatusCode::BAD_REQUEST,
            Self::Gone { .. } => StatusCode::GONE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Agent(_) | Self::Registry(_) => StatusCode::BAD_GATEWAY,
            Self::ExecLimit(s, _) => *s,
            Self::ShuttingDown | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            Self::BadRequest { field, .. }
            | Self::Invalid { field, .. }
            | Self::Forbidden { field, .. }
            | Self::Gone { field, .. }
            | Self::IndexMismatch { field, .. }
            | Self::Taken { field, .. } => field.clone(),
            Self::UnknownParameter(_, name) => Some(name.clone()),
            _ => None,
        }
    }

    /// The machine-readable kind of this error.
    pub fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            Self::BadRequest { .. } => C::BadRequest,
            Self::UnknownParameter(..) => C::UnknownParameter,
            Self::Invalid { .. } => C::InvalidField,
            Self::TooLarge { .. } => C::TooLarge,
            Self::UnsupportedMediaType(_) => C::UnsupportedMediaType,
            Self::Unauthorized(_) => C::Unauthorized,
            Self::Forbidden { .. } => C::Forbidden,
            Self::NotFound(_) => C::NotFound,
            Self::NoRoute { .. } => C::NoRoute,
            Self::UpgradeRequired(_) => C::UpgradeRequired,
            Self::Conflict(_) => C::Conflict,
            Self::IndexMismatch { .. } => C::IndexMismatch,
            Self::Taken { .. } => C::Taken,
            Self::Gone { .. } => C::Gone,
            Self::MethodNotAllowed => C::MethodNotAllowed,
            Self::Agent(_) => C::AgentFailed,
            Self::Registry(_) => C::RegistryFailed,
            Self::ExecLimit(..) => C::ExecLimit,
            Self::ShuttingDown => C::ShuttingDown,
            Self::Unavailable(_) => C::LeaderUnavailable,
            Self::Internal(_) => C::Internal,
        }
    }
}

impl From<crate::acl::Denied> for ApiError {
    fn from(e: crate::acl::Denied) -> Self {
        Self::Forbidden {
            message: e.0,
            field: None,
        }
    }
}

impl From<crate::state::StateError> for ApiError {
    fn from(e: crate::state::StateError) -> Self {
        use crate::state::StateError as S;
        match e {
            S::NotFound(m) => Self::NotFound(m),
            S::Ambiguous(m) => Self::Conflict(m),
            S::Invalid { field, message } => Self::Invalid {
                message,
                field: Some(field),
            },
            S::Forbidden { field, message } => Self::Forbidden {
                message,
                field: Some(field),
            },
            S::ShuttingDown => Self::ShuttingDown,
            S::Conflict(m) => Self::Conflict(m),
            S::Store(taba_store::StoreError::NotLeader) => Self::Unavailable(
                "this server lost its leadership; nothing was changed, retry".to_owned(),
            ),
            S::IndexMismatch { field, message } => Self::IndexMismatch {
                message,
                field: Some(field),
            },
            S::Taken { field, message } => Self::Taken {
                message,
                field: Some(field),
            },
            other => {
                let mut msg = other.to_string();
                let mut src = std::error::Error::source(&other);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                tracing::error!(error = %msg, "request failed");
                Self::Internal(msg)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                field: self.field(),
                code: self.code(),
            },
        };
        // The request body may be unread (too large, or rejected early);
        // closing the connection keeps a pooling client from reusing it.
        let mut resp = (
            status,
            [(axum::http::header::CONNECTION, "close")],
            axum::Json(body),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
