//! Reading request bodies and queries so that every failure is an
//! [`ApiError`] naming the field and the reason (never axum's plain-text
//! rejections).

use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Largest JSON body of ordinary routes, by default (`[limits]
/// max_request_body` of the configuration).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// How much of an oversized body is read and thrown away before the 413 is
/// sent. Closing a socket with unread data makes the kernel send a reset,
/// and a client still writing its body would see "connection reset" instead
/// of the 413 (a lingering close, as nginx and Apache do). Bodies past this
/// get the reset.
const DRAIN_OVERSIZED: usize = 64 << 20;

/// Read a whole body, refusing more than `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest {
            message: format!("cannot read request body: {e}"),
            field: None,
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else {
            buf = Vec::new();
            if seen > DRAIN_OVERSIZED {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(Bytes::from(buf))
}

/// Decode a JSON body: UTF-8 first, then syntax, then types with the failing
/// field's path (structs from objects only: [`super::strict`]).
/// Syntax, type and unknown-field errors are all 400 (as for job files);
/// 422 is for well-formed input that fails validation.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ApiError::BadRequest {
        message: format!("body is not valid UTF-8 at byte {}", e.valid_up_to()),
        field: None,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ApiError::BadRequest {
            message: strip_position(&e.to_string()),
            field: None,
        })?;
    serde_path_to_error::deserialize(super::strict::Strict(value)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = strip_position(&inner.to_string());
        let field = (path != "." && !path.is_empty()).then_some(path);
        ApiError::BadRequest { message, field }
    })
}

fn strip_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// A query string decoded into `T`; a bad one is a 400 naming the parameter.
pub struct Q<T>(pub T);

/// Decode a query string into `T`, a failure naming the parameter.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = match path.as_str() {
            "" | "." => "query".to_owned(),
            _ => path,
        };
        ApiError::BadRequest {
            message: format!("bad query parameter: {}", e.into_inner()),
            field: Some(field),
        }
    })
}

impl<T, S> FromRequestParts<S> for Q<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(Q)
    }
}
