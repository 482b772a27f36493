//! taba's cluster PKI and TLS.
//!
//! - [`pki`]: the cluster CA and the certificates it signs for servers,
//!   agents and the CLI (rcgen), their files (private keys 0600), and
//!   certificate signing requests for agents that join with a token.
//! - [`identity`]: who a peer certificate names (its [`Role`]) and its
//!   fingerprint, the key of the revocation list.
//! - [`config`]: rustls configurations of taba's listeners from PEM files.
//! - [`serve`]: the TLS accept loop of the server's and the agent's HTTP
//!   listeners; every request carries the peer's identity ([`TlsPeer`]).
//! - [`dev`]: a whole development PKI in one directory (`taba dev --agents N`).
//!
//! Names in certificates say what a peer is: servers hold `server.taba`,
//! agent `NAME` holds `NAME.agent.taba`, the CLI holds `cli.taba`. The
//! server checks an agent's requests against the node's name; the server
//! reaches an agent's API under `NAME.agent.taba`, so only the holder of
//! that node's certificate can receive its exec traffic.
//!
//! This crate owns certificates and TLS handshakes; it must not decide who
//! may call which route (the server and the agent do, from [`TlsPeer`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod dev;
pub mod identity;
pub mod pki;
pub mod serve;

pub use config::{ClientTls, ConfigError, TlsFiles};
pub use identity::{fingerprint, PeerIdentity};
pub use pki::{CertAuthority, CertPair, PkiError, Role, Validity};
pub use serve::TlsPeer;

/// The DNS name every server certificate holds.
pub const SERVER_DNS: &str = "server.taba";
/// The DNS name of CLI certificates.
pub const CLI_DNS: &str = "cli.taba";
/// Agent `NAME`'s certificate holds `NAME.agent.taba`.
pub const AGENT_DOMAIN: &str = "agent.taba";

/// The DNS name of agent `name`'s certificate.
pub fn agent_dns(name: &str) -> String {
    format!("{name}.{AGENT_DOMAIN}")
}

/// The one crypto provider of taba (ring: aws-lc needs cmake to build).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
pub use rustls;
pub use time;
