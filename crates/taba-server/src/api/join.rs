//! Joining: join tokens (`taba node token create`), their exchange for a
//! credential on an agent's first contact, and certificate revocation.
//!
//! ```text
//! operator: POST /v1/nodes/tokens {ttl}        -> token (shown once; stored hashed)
//! agent:    POST /v1/agent/join {token, node_id, name, csr_pem}
//!             TLS:   token used once -> the CSR's key signed by the cluster CA
//!                    as NAME.agent.taba -> cert_pem (the agent keeps it)
//!             plain: token used once -> node secret bound to node_id
//! agent:    POST /v1/agent/register ... with the new credential
//! ```

use super::error::ApiError;
use super::extract::{parse_json, read_body};
use super::handlers::{protocol, wire_invalid};
use super::AppState;
use crate::credentials::{sha256_hex, CredentialError, NodeCredential};
use axum::body::Body;
use axum::extract::State;
use axum::Json;
use taba_tls::pki::{CertAuthority, Role, Validity};
use taba_types::api::{JoinTokenRequest, JoinTokenResponse, RevokeCertRequest, RevokeCertResponse};
use taba_types::wire::{JoinRequest, JoinResponse, PROTOCOL};
use taba_types::DurationSpec;

type R<T> = Result<Json<T>, ApiError>;

/// Days an agent certificate issued for a join token is valid.
pub const JOINED_CERT_DAYS: u32 = 365;
/// Longest join token life.
const MAX_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

fn refuse(field: &str, message: String) -> ApiError {
    tracing::warn!("refused a join: {message}");
    ApiError::forbidden(field, message)
}

fn token_error(e: CredentialError, who: &str) -> ApiError {
    match e {
        CredentialError::UnknownToken
        | CredentialError::TokenUsed
        | CredentialError::TokenExpired => refuse("token", format!("{e} (node {who})")),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `POST /v1/agent/join`.
pub async fn agent_join(State(app): State<AppState>, body: Body) -> R<JoinResponse> {
    let req: JoinRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    protocol(req.protocol)?;
    req.validate().map_err(wire_invalid)?;
    let creds = &app.state.credentials;
    let who = format!("{} ({})", req.name, req.node_id);
    let Some(tls) = &app.state.config.tls else {
        // Plain HTTP: the token buys a node secret bound to the node id.
        if creds.binding(&req.node_id).is_some() {
            return Err(refuse(
                "node_id",
                format!("node {} already has a credential", req.node_id),
            ));
        }
        creds
            .consume_token(&req.token, &who)
            .await
            .map_err(|e| token_error(e, &who))?;
        let secret = crate::credentials::new_secret();
        let cred = NodeCredential::Secret {
            sha256: sha256_hex(&secret),
        };
        creds
            .bind(&req.node_id, cred, false)
            .await
            .map_err(|e| match e {
                CredentialError::AlreadyBound(id) => {
                    refuse("node_id", format!("node {id} already has a credential"))
                }
                e => ApiError::Internal(e.to_string()),
            })?;
        tracing::info!(node = %req.node_id, "node joined with a token (node secret)");
        return Ok(Json(JoinResponse {
            protocol: PROTOCOL,
            cert_pem: None,
            node_secret: Some(secret),
        }));
    };
    // TLS: the token buys a certificate for NAME.agent.taba.
    let role = Role::Agent(req.name.clone());
    role.validate()
        .map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let Some(csr) = &req.csr_pem else {
        return Err(ApiError::invalid(
            "csr_pem",
            "required: this server runs with TLS and issues a certificate for the agent's key",
        ));
    };
    let Some(ca_key) = &tls.ca_key else {
        return Err(refuse(
            "token",
            "this server holds no CA key ([tls] ca_key) and cannot issue certificates; \
             create the agent's certificate with `taba tls cert create --agent NAME`"
                .into(),
        ));
    };
    if let Some((id, _)) = creds
        .fingerprint_of_agent(&req.name)
        .into_iter()
        .find(|(id, _)| *id != req.node_id)
    {
        return Err(refuse(
            "name",
            format!(
                "agent name {} is taken by node {id}; pick another name or remove that node",
                req.name
            ),
        ));
    }
    let ca = CertAuthority::load(&tls.files.ca_cert, ca_key)
        .map_err(|e| ApiError::Internal(format!("loading the cluster CA: {e}")))?;
    // Check the request before the token is spent on it.
    ca.sign_csr(csr, &role, Validity::days(1))
        .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
    creds
        .consume_token(&req.token, &who)
        .await
        .map_err(|e| token_error(e, &who))?;
    let cert_pem = ca
        .sign_csr(csr, &role, Validity::days(JOINED_CERT_DAYS))
        .map_err(|e| ApiError::invalid("csr_pem", e.to_string()))?;
    tracing::info!(node = %req.node_id, agent = %req.name, "node joined with a token (certificate issued)");
    Ok(Json(JoinResponse {
        protocol: PROTOCOL,
        cert_pem: Some(cert_pem),
        node_secret: None,
    }))
}

/// `POST /v1/nodes/tokens`.
pub async fn create_token(State(app): State<AppState>, body: Body) -> R<JoinTokenResponse> {
    let bytes = read_body(body, app.state.config.limits.max_request_body).await?;
    let req: JoinTokenRequest = if bytes.trim_ascii().is_empty() {
        JoinTokenRequest::default()
    } else {
        parse_json(&bytes)?
    };
    let ttl = match &req.ttl {
        Some(t) => {
            DurationSpec::parse(t)
                .map_err(|e| ApiError::invalid("ttl", e))?
                .0
        }
        None => 3600 * 1000,
    };
    if ttl == 0 || ttl > MAX_TOKEN_TTL_MS {
        return Err(ApiError::invalid("ttl", "must be between 1ms and 30 days"));
    }
    let (token, expires) = app
        .state
        .credentials
        .create_token(ttl)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(expires, "join token created");
    Ok(Json(JoinTokenResponse { token, expires }))
}

/// `POST /v1/tls/revoke`.
pub async fn revoke_cert(State(app): State<AppState>, body: Body) -> R<RevokeCertResponse> {
    let req: RevokeCertRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    let creds = &app.state.credentials;
    let mut fps = Vec::new();
    match (&req.fingerprint, &req.node) {
        (Some(fp), None) => {
            let fp = fp.trim().to_ascii_lowercase().replace(':', "");
            if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::invalid(
                    "fingerprint",
                    "must be a SHA-256 in hex (64 digits)",
                ));
            }
            fps.push(fp);
        }
        (None, Some(node)) => {
            let n = app.state.find_node(node)?;
            match creds.binding(&n.id) {
                Some(NodeCredential::Cert { fingerprint, .. }) => fps.push(fingerprint),
                _ => {
                    return Err(ApiError::invalid(
                        "node",
                        format!("node {} did not register with a certificate", n.name),
                    ))
                }
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "fingerprint",
                "give exactly one of fingerprint and node",
            ))
        }
    }
    for fp in &fps {
        creds
            .revoke(fp, "revoked by an operator")
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        tracing::warn!(fingerprint = %fp, "certificate revoked");
    }
    Ok(Json(RevokeCertResponse { revoked: fps }))
}
