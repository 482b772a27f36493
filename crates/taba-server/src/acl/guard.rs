//! The one place a request is authenticated and its route's class checked.
//!
//! ```text
//! request -> guard(class) -> token from `Authorization: Bearer <secret>`
//!   Agent     -> agent::authenticate (user tokens refused; node credentials)
//!   Bootstrap -> open until bootstrapped, then 409
//!   others    -> AclState::authenticate (401 unless a live token)
//!                -> class check: Namespace (the `namespace` query), Node,
//!                   Operator, Management (403 when lacking)
//!                -> Caller in the request's extensions -> handler
//!   Scoped    -> the handler checks the resource's namespace with `Auth`
//! ```

use super::{AuthError, Caller};
use crate::api::ApiError;
use crate::state::ServerState;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use taba_types::acl::{Access, Capability};

/// What a route demands of its caller. Every route in the table has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthClass {
    /// Open only until ACLs are bootstrapped (`POST /v1/acl/bootstrap`).
    Bootstrap,
    /// Any live token.
    AnyToken,
    /// A capability in the namespace of the `namespace` query (default `default`).
    Namespace(Capability),
    /// A capability in the namespace of the resource the route names (an
    /// allocation, an evaluation, a job body): any live token passes the
    /// guard, the handler checks with [`Auth`]; lists are filtered.
    Scoped(Capability),
    /// Node access.
    Node(Access),
    /// Operator access (namespaces, images).
    Operator(Access),
    /// A management token (ACL administration).
    Management,
    /// Agents only, never user tokens (see [`super::agent`]).
    Agent,
}

impl AuthClass {
    /// Short name for the OpenAPI document.
    pub fn describe(&self) -> String {
        match self {
            Self::Bootstrap => "none until ACLs are bootstrapped, then refused".into(),
            Self::AnyToken => "any valid token".into(),
            Self::Namespace(c) | Self::Scoped(c) => format!("namespace capability {c}"),
            Self::Node(a) => format!("node {a}"),
            Self::Operator(a) => format!("operator {a}"),
            Self::Management => "management token".into(),
            Self::Agent => "agent credentials (user tokens refused)".into(),
        }
    }
}

/// The caller of a request that passed the guard.
#[derive(Clone, Debug)]
pub struct Auth(pub Arc<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Auth>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route has no auth class".into()))
    }
}

impl std::ops::Deref for Auth {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

/// The secret of `Authorization: Bearer <secret>`, if the header is there.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, secret) = v.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Some(secret.trim()))
}

/// Middleware: authenticate, check `class`, hand the [`Auth`] to the handler.
pub async fn guard(
    State((state, class)): State<(Arc<ServerState>, AuthClass)>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&state, class, &mut req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(state: &ServerState, class: AuthClass, req: &mut Request) -> Result<(), ApiError> {
    let acl = &state.acl;
    let secret = bearer(req.headers()).map_err(unauthorized)?;
    match class {
        AuthClass::Agent => return super::agent::authenticate(state, req.headers()),
        AuthClass::Bootstrap => {
            if acl.bootstrapped() {
                return Err(ApiError::Conflict(
                    "ACLs are already bootstrapped; a management token can create more tokens (`taba acl token create`)".into(),
                ));
            }
            return Ok(());
        }
        _ => {}
    }
    let caller = acl
        .authenticate(secret, crate::broker::now_ms())
        .map_err(unauthorized)?;
    let r = &caller.rights;
    let denied = |what: String| {
        Err(ApiError::Forbidden {
            message: format!("permission denied: {} lacks {what}", caller.actor()),
            field: None,
        })
    };
    match class {
        AuthClass::Namespace(cap) => {
            let q = Query::<HashMap<String, String>>::try_from_uri(req.uri()).map_err(|e| {
                ApiError::BadRequest {
                    message: format!("bad query string: {}", e.body_text()),
                    field: Some("query".into()),
                }
            })?;
            let ns = q.get("namespace").map(String::as_str).unwrap_or("default");
            if let Err(e) = caller.require(ns, cap) {
                return Err(ApiError::Forbidden {
                    message: e.0,
                    field: Some("namespace".into()),
                });
            }
        }
        AuthClass::Node(a) if !r.node(a) => return denied(format!("node {a}")),
        AuthClass::Operator(a) if !r.operator(a) => return denied(format!("operator {a}")),
        AuthClass::Management if !r.management() => {
            return denied("a management token's rights (ACL administration)".into())
        }
        _ => {}
    }
    req.extensions_mut().insert(Auth(caller));
    Ok(())
}

fn unauthorized(e: AuthError) -> ApiError {
    ApiError::Unauthorized(e.to_string())
}
