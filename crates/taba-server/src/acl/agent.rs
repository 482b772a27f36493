//! The auth class `agent`: routes under `/v1/agent/` accept agents only,
//! never user tokens.
//!
//! [`authenticate`] first refuses any request that carries a user token
//! (valid, expired or unknown), then asks [`verify_agent_credentials`]
//! whether the request carries a node's credentials.
//!
//! NOTE for the coordinator: node credentials (a per-node secret issued at
//! first registration, or mTLS client certificates) come from the cluster
//! work. Until they are wired in, [`verify_agent_credentials`] accepts what
//! today's agents send: no credentials at all. Replace its body with the
//! real check; the route table and the guard need no change.

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

/// Whether the request carries a node's credentials. Today's agents send
/// none, so only that is accepted: any bearer token is refused (it is not
/// an agent credential).
pub fn verify_agent_credentials(_state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(ApiError::Forbidden {
            message: "agent routes accept only agents; this is not an agent credential".into(),
            field: None,
        });
    }
    Ok(())
}
