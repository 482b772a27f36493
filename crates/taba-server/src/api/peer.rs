//! Who is calling: the TLS gate in front of every route, and the node
//! credential check of agent routes.
//!
//! Under TLS ([`tls_gate`]):
//! - a client without a certificate may only exchange a join token
//!   (`POST /v1/agent/join`);
//! - a revoked certificate is refused everywhere;
//! - an agent certificate may only call agent routes (`/v1/agent/...`);
//! - the CLI's and servers' certificates may call the rest (user ACLs are
//!   checked on top, by the ACL layer).
//!
//! [`verify_agent`] is the one check of the node credential on agent routes
//! (register, heartbeat, allocations, alloc updates): the node id is bound to
//! its agent certificate's name (TLS) or to a server-issued secret (plain
//! loopback HTTP) at its first registration; later requests must match.
//! Every refusal is a 403 with the reason, and is logged.

use super::{ApiError, AppState};
use crate::credentials::{sha256_hex, CredentialError, NodeCredential};
use crate::state::ServerState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use taba_tls::{PeerIdentity, TlsPeer};
use taba_types::wire::NODE_SECRET_HEADER;
use taba_types::NodeId;

/// The one route a client without a certificate may call under TLS.
pub const JOIN_PATH: &str = "/v1/agent/join";

/// Refuse, and log why.
fn refuse(message: String) -> ApiError {
    tracing::warn!("refused: {message}");
    ApiError::Forbidden {
        message,
        field: None,
    }
}

/// Refuse a node credential (the field is `node_id`), and log why.
fn refuse_node(message: String) -> ApiError {
    tracing::warn!("refused an agent request: {message}");
    ApiError::forbidden("node_id", message)
}

/// Marks a request that came over a plain HTTP listener, which the server
/// opens only on loopback (without TLS, or with `[tls] plain_loopback`).
#[derive(Clone, Copy, Debug)]
pub struct PlainLocal;

/// The TLS gate (a middleware over every route). Without TLS, and for
/// requests over a plain loopback listener ([`PlainLocal`]), it lets
/// everything through: a local caller, as on a loopback-only server. Agent
/// routes still check the node's credential ([`verify_agent`]).
pub async fn tls_gate(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if app.state.config.tls.is_none() || req.extensions().get::<PlainLocal>().is_some() {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<TlsPeer>().and_then(|p| p.0.clone());
    let path = req.uri().path();
    let verdict = match &peer {
        None if path == JOIN_PATH => Ok(()),
        None => Err(refuse(format!(
            "{} {path}: a client certificate signed by the cluster CA is required \
             (`taba tls cert create --cli`; pass it with --client-cert and --client-key)",
            req.method()
        ))),
        Some(p) if p.is_expired() => Err(refuse(format!(
            "{path}: the certificate of {} expired at {} (unix time); issue a new one with `taba tls cert create`",
            p.describe(),
            p.not_after
        ))),
        Some(p) if app.state.credentials.is_revoked(&p.fingerprint) => Err(refuse(format!(
            "{}: the certificate of {} (fingerprint {}) is revoked",
            path,
            p.describe(),
            p.fingerprint
        ))),
        Some(p) => match &p.role {
            None => Err(refuse(format!(
                "{path}: the certificate names no taba role (server.taba, cli.taba or NAME.agent.taba)"
            ))),
            Some(taba_tls::Role::Agent(n)) if !path.starts_with("/v1/agent/") => {
                Err(refuse(format!(
                    "{path}: agent {n}'s certificate may only call agent routes (/v1/agent/...)"
                )))
            }
            Some(_) => Ok(()),
        },
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The credential an agent request came with.
#[derive(Clone, Debug, Default)]
pub struct AgentCaller {
    /// The client certificate (TLS).
    pub peer: Option<Arc<PeerIdentity>>,
    /// The node secret header (plain HTTP).
    pub secret: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for AgentCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            peer: parts.extensions.get::<TlsPeer>().and_then(|p| p.0.clone()),
            secret: parts
                .headers
                .get(NODE_SECRET_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }
}

/// A registration being checked: the node and the sender's protocol.
#[derive(Clone, Copy, Debug)]
pub struct Registration<'a> {
    /// The node in the request.
    pub node: &'a taba_types::Node,
    /// The protocol version of the request.
    pub protocol: u32,
}

/// Check that `caller` holds the credential of node `id`; at a first
/// registration, bind it. Returns the node secret issued at a first
/// registration over plain HTTP (protocol 2 and later), to send back once.
///
/// This is the check of the "agent" route class.
pub async fn verify_agent(
    state: &ServerState,
    caller: &AgentCaller,
    id: &NodeId,
    registering: Option<Registration<'_>>,
) -> Result<Option<String>, ApiError> {
    let bound = state.credentials.binding(id);
    if state.config.tls.is_some() {
        verify_cert(state, caller, id, bound, registering).await?;
        return Ok(None);
    }
    match (bound, &caller.secret) {
        (Some(NodeCredential::Secret { sha256 }), Some(s))
            if crate::credentials::same(&sha256_hex(s), &sha256) =>
        {
            Ok(None)
        }
        (Some(NodeCredential::Secret { .. }), Some(_)) => Err(refuse_node(format!(
            "node {id}: wrong node secret; the node id belongs to another agent"
        ))),
        (Some(NodeCredential::Secret { .. }), None) => Err(refuse_node(format!(
            "node {id}: this node id is bound to a node secret; send it in the {NODE_SECRET_HEADER} header"
        ))),
        (Some(NodeCredential::Cert { name, .. }), _) => Err(refuse_node(format!(
            "node {id}: bound to agent certificate {name}; connect over TLS"
        ))),
        // First registration of an agent that speaks protocol 2: bind a secret.
        (None, _) if registering.is_some_and(|r| r.protocol >= 2) => {
            if let Some(r) = registering {
                // A taken name is refused before a credential is bound to the id.
                state.check_name_free(r.node)?;
            }
            let secret = crate::credentials::new_secret();
            let cred = NodeCredential::Secret {
                sha256: sha256_hex(&secret),
            };
            match state.credentials.bind(id, cred, false).await {
                Ok(()) => {
                    tracing::info!(node = %id, "node id bound to a new node secret");
                    Ok(Some(secret))
                }
                Err(CredentialError::AlreadyBound(_)) => Err(refuse_node(format!(
                    "node {id}: bound to another agent at the same moment"
                ))),
                Err(e) => Err(ApiError::Internal(e.to_string())),
            }
        }
        // An unbound node: an agent one protocol version older (it cannot
        // keep a secret) or a node registered before credentials existed.
        (None, _) => Ok(None),
    }
}

async fn verify_cert(
    state: &ServerState,
    caller: &AgentCaller,
    id: &NodeId,
    bound: Option<NodeCredential>,
    registering: Option<Registration<'_>>,
) -> Result<(), ApiError> {
    let Some(peer) = &caller.peer else {
        return Err(refuse_node(format!(
            "node {id}: agent routes need the agent's certificate"
        )));
    };
    if peer.is_expired() {
        return Err(refuse_node(format!(
            "node {id}: the certificate of {} expired",
            peer.describe()
        )));
    }
    if state.credentials.is_revoked(&peer.fingerprint) {
        return Err(refuse_node(format!(
            "node {id}: the certificate of {} is revoked",
            peer.describe()
        )));
    }
    let Some(cert_name) = peer.agent_name() else {
        return Err(refuse_node(format!(
            "node {id}: {} may not act as an agent; agent routes need an agent certificate (NAME.agent.taba)",
            peer.describe()
        )));
    };
    if let Some(r) = registering {
        if r.node.name != cert_name {
            return Err(refuse_node(format!(
                "node {id}: the certificate is for agent {cert_name}, not node name {}",
                r.node.name
            )));
        }
    }
    let replace = matches!(bound, Some(NodeCredential::Secret { .. }));
    match bound {
        Some(NodeCredential::Cert { name, .. }) if name == cert_name => Ok(()),
        Some(NodeCredential::Cert { name, .. }) => Err(refuse_node(format!(
            "node {id}: the node id belongs to agent {name}; this certificate is for agent {cert_name}"
        ))),
        // First registration, or a node that ran over plain HTTP before.
        Some(NodeCredential::Secret { .. }) | None if registering.is_some() => {
            if let Some(r) = registering {
                // A taken name is refused before a credential is bound to the id.
                state.check_name_free(r.node)?;
            }
            let cred = NodeCredential::Cert {
                name: cert_name.to_string(),
                fingerprint: peer.fingerprint.clone(),
            };
            state
                .credentials
                .bind(id, cred, replace)
                .await
                .map_err(|e| match e {
                    CredentialError::AlreadyBound(_) => refuse_node(format!(
                        "node {id}: bound to another agent at the same moment"
                    )),
                    e => ApiError::Internal(e.to_string()),
                })?;
            tracing::info!(node = %id, agent = cert_name, "node id bound to its agent certificate");
            Ok(())
        }
        _ => Err(refuse_node(format!(
            "node {id}: not registered with a certificate; register first"
        ))),
    }
}
