//! The agent's credentials at start: its certificate (TLS) or node secret
//! (plain loopback HTTP), and the exchange of a join token for one of them
//! on first contact.

use crate::client::{ClientError, ServerClient};
use crate::state::StateDir;
use crate::AgentConfig;
use std::sync::Arc;
use taba_tls::pki::{self, Role};
use taba_tls::{ClientTls, PeerIdentity};
use taba_types::wire::{JoinRequest, PROTOCOL};
use taba_types::NodeId;

/// Why the agent's credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No certificate and no token.
    #[error(
        "no agent certificate at {0}; create one with `taba tls cert create --agent NAME` \\
         or set join_token"
    )]
    NoCert(std::path::PathBuf),
    /// The certificate is not an agent certificate.
    #[error("{0} is not an agent certificate (NAME.agent.taba)")]
    NotAgent(std::path::PathBuf),
    /// The configured name differs from the certificate's.
    #[error("node name {name:?} differs from the certificate's agent name {cert:?}")]
    NameMismatch {
        /// Configured name.
        name: String,
        /// The certificate's.
        cert: String,
    },
    /// The key or request could not be made, or the files written.
    #[error("agent certificate")]
    Pki(#[from] pki::PkiError),
    /// The server refused or could not be reached.
    #[error("exchanging the join token")]
    Request(#[from] ClientError),
    /// The server's answer lacks the credential.
    #[error("the server's join answer holds no {0}")]
    Empty(&'static str),
    /// The agent's data dir.
    #[error("agent state")]
    State(#[from] crate::state::StateError),
}

/// What the agent presents and listens with.
pub struct Credentials {
    /// For requests to the servers (TLS).
    pub client: Option<ClientTls>,
    /// The agent API's TLS configuration (clients must be servers).
    pub listener: Option<Arc<taba_tls::rustls::ServerConfig>>,
    /// The node secret (plain HTTP).
    pub secret: Option<String>,
    /// The agent name in the certificate (TLS).
    pub name: Option<String>,
}

/// Set up the credentials of node `node_id` named `name`, joining with the
/// configured token when the agent has none yet.
pub async fn credentials(
    config: &AgentConfig,
    state_dir: &StateDir,
    node_id: &NodeId,
    name: &str,
) -> Result<Credentials, crate::AgentError> {
    let Some(files) = &config.tls else {
        let mut secret = state_dir.node_secret().map_err(JoinError::from)?;
        if let (None, Some(token)) = (&secret, &config.join_token) {
            let client = ServerClient::new(&config.servers, None)?;
            let resp = client
                .join(&join_request(token, node_id, name, None))
                .await
                .map_err(JoinError::from)?;
            let s = resp.node_secret.ok_or(JoinError::Empty("node secret"))?;
            state_dir.save_node_secret(&s).map_err(JoinError::from)?;
            tracing::info!("joined the cluster with a token (node secret)");
            secret = Some(s);
        }
        return Ok(Credentials {
            client: None,
            listener: None,
            secret,
            name: None,
        });
    };
    if !files.cert.exists() || !files.key.exists() {
        let Some(token) = &config.join_token else {
            return Err(JoinError::NoCert(files.cert.clone()).into());
        };
        join_tls(config, files, token, node_id, name).await?;
    }
    let cert_pem = taba_tls::config::read(&files.cert)?;
    let id =
        PeerIdentity::from_pem(&cert_pem).map_err(|_| JoinError::NotAgent(files.cert.clone()))?;
    let cert_name = id
        .agent_name()
        .ok_or_else(|| JoinError::NotAgent(files.cert.clone()))?
        .to_string();
    if let Some(n) = &config.name {
        if *n != cert_name {
            return Err(JoinError::NameMismatch {
                name: n.clone(),
                cert: cert_name,
            }
            .into());
        }
    }
    Ok(Credentials {
        client: Some(ClientTls::from_files(files)?),
        listener: Some(taba_tls::config::server_config(
            files,
            taba_tls::config::ClientAuth::Required,
        )?),
        secret: None,
        name: Some(cert_name),
    })
}

fn join_request(token: &str, node_id: &NodeId, name: &str, csr: Option<String>) -> JoinRequest {
    JoinRequest {
        protocol: PROTOCOL,
        token: token.to_string(),
        node_id: node_id.clone(),
        name: name.to_string(),
        csr_pem: csr,
    }
}

/// Send a signing request for a fresh key with the token; keep the
/// certificate and the key (0600) where the configuration says.
async fn join_tls(
    config: &AgentConfig,
    files: &taba_tls::TlsFiles,
    token: &str,
    node_id: &NodeId,
    name: &str,
) -> Result<(), JoinError> {
    let req = pki::signing_request(&Role::Agent(name.to_string()))?;
    // Trust the CA; no identity yet.
    let ca = ClientTls::load(&files.ca_cert, None)
        .map_err(|_| JoinError::NoCert(files.ca_cert.clone()))?;
    let client = ServerClient::new(&config.servers, Some(&ca))?;
    let resp = client
        .join(&join_request(token, node_id, name, Some(req.cert_pem)))
        .await?;
    let cert = resp.cert_pem.ok_or(JoinError::Empty("certificate"))?;
    for dir in [files.cert.parent(), files.key.parent()]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|source| pki::PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    pki::write_replace(&files.key, &req.key_pem, 0o600)?;
    pki::write_replace(&files.cert, &cert, 0o644)?;
    tracing::info!(cert = %files.cert.display(), "joined the cluster with a token (certificate issued)");
    Ok(())
}
