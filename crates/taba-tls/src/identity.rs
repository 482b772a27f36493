//! Who a peer certificate names, and its fingerprint.
//!
//! The handshake already checked that the certificate chains to the cluster
//! CA and is within its validity; this module reads what it says.

use crate::pki::Role;
use sha2::Digest as _;

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not DER X.509.
    #[error("not an X.509 certificate")]
    Parse,
    /// Not PEM.
    #[error("no certificate in the PEM text")]
    Pem,
}

/// What a peer's certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Its role in the cluster, from its names; none for a certificate this
    /// CA did not make for taba.
    pub role: Option<Role>,
    /// Its DNS names.
    pub names: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex: the key of the
    /// revocation list.
    pub fingerprint: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PeerIdentity {
    /// Read a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Parse)?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                if let GeneralName::DNSName(n) = gn {
                    names.push(n.to_ascii_lowercase());
                }
            }
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Self {
            role: role_of(&names, &cn),
            names,
            fingerprint: fingerprint(der),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Read the first certificate of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, IdentityError> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem)
            .map_err(|_| IdentityError::Pem)?;
        Self::from_der(&der)
    }

    /// The agent name, when it is an agent's certificate.
    pub fn agent_name(&self) -> Option<&str> {
        match &self.role {
            Some(Role::Agent(n)) => Some(n),
            _ => None,
        }
    }

    /// Whether it is a server's certificate.
    pub fn is_server(&self) -> bool {
        matches!(self.role, Some(Role::Server(_)))
    }

    /// Whether its validity ended (seconds since the Unix epoch `now`).
    pub fn expired_at(&self, now: i64) -> bool {
        self.not_after < now
    }

    /// Whether its validity has ended now.
    pub fn is_expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.expired_at(now)
    }

    /// A short description for messages: `agent n1`, `server s1`, `cli`.
    pub fn describe(&self) -> String {
        match &self.role {
            Some(Role::Agent(n)) => format!("agent {n}"),
            Some(Role::Server(n)) => format!("server {n}"),
            Some(Role::Cli) => "cli".into(),
            None => format!("certificate {}", &self.fingerprint[..16]),
        }
    }
}

/// The role a set of names claims. A certificate claiming two roles gets
/// none.
fn role_of(names: &[String], cn: &str) -> Option<Role> {
    let suffix = format!(".{}", crate::AGENT_DOMAIN);
    let mut roles = Vec::new();
    for n in names {
        if n == crate::SERVER_DNS {
            roles.push(Role::Server(cn.to_string()));
        } else if n == crate::CLI_DNS {
            roles.push(Role::Cli);
        } else if let Some(agent) = n.strip_suffix(&suffix) {
            if !agent.is_empty() && !agent.contains('.') {
                roles.push(Role::Agent(agent.to_string()));
            }
        }
    }
    match roles.len() {
        1 => roles.pop(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_role_per_certificate() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            role_of(&s(&["n1.agent.taba"]), "n1"),
            Some(Role::Agent("n1".into()))
        );
        assert_eq!(role_of(&s(&["cli.taba"]), "cli"), Some(Role::Cli));
        assert_eq!(
            role_of(&s(&["server.taba", "localhost"]), "s1"),
            Some(Role::Server("s1".into()))
        );
        assert_eq!(role_of(&s(&["server.taba", "n1.agent.taba"]), "x"), None);
        assert_eq!(role_of(&s(&["a.b.agent.taba"]), "x"), None);
        assert_eq!(role_of(&s(&["example.com"]), "x"), None);
        assert!(PeerIdentity::from_der(b"junk").is_err());
    }
}
