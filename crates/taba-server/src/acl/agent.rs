//! The auth class `agent`: routes under `/v1/agent/` accept agents only,
//! never user tokens.
//!
//! The guard's part is [`authenticate`]: it refuses any request that
//! carries an `Authorization` header (a user token, valid or not, is not
//! an agent credential). Which node is calling is only known once the body
//! or path names a node id, so the node credential itself (the agent's
//! certificate under TLS, or the node secret header over plain loopback
//! HTTP) is checked by the handlers with `api::peer::verify_agent`.

use crate::api::ApiError;
use crate::state::ServerState;
use axum::http::HeaderMap;

/// Authenticate a request to an agent route.
pub fn authenticate(state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    match super::guard::bearer(headers) {
        Ok(Some(secret)) if state.acl.is_user_token(secret) => {
            return Err(ApiError::Forbidden {
                message: "agent routes accept only agents; user tokens are refused".into(),
                field: None,
            })
        }
        Ok(_) => {}
        Err(e) => return Err(ApiError::Unauthorized(e.to_string())),
    }
    verify_agent_credentials(state, headers)
}

/// Agents send no bearer token: one is refused, whatever it holds.
fn verify_agent_credentials(_state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(ApiError::Forbidden {
            message: "agent routes accept only agents; this is not an agent credential".into(),
            field: None,
        });
    }
    Ok(())
}
