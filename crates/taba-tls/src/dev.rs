//! A whole development PKI in one directory: a CA, one server certificate,
//! agent certificates and a CLI certificate, under the standard file names.
//! `taba dev --agents N` and the end-to-end tests use it.

use crate::config::TlsFiles;
use crate::pki::{self, CertAuthority, Extra, PkiError, Role, Validity};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

/// The files [`create`] wrote.
#[derive(Clone, Debug)]
pub struct DevPki {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The CA key (the server holds it to sign certificates for agents that
    /// join with a token).
    pub ca_key: PathBuf,
    /// The server's files.
    pub server: TlsFiles,
    /// Each agent's files, by name.
    pub agents: Vec<(String, TlsFiles)>,
    /// The CLI's files.
    pub cli: TlsFiles,
}

/// Create `dir` (0700) with a fresh CA, a server certificate `server`
/// valid also for `server_ips`, and certificates for `agents` and the CLI,
/// all valid for 30 days.
pub fn create(dir: &Path, server_ips: &[IpAddr], agents: &[String]) -> Result<DevPki, PkiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    let ca = CertAuthority::create("taba dev CA", Validity::days(30))?;
    let ca_cert = dir.join(pki::CA_CERT_FILE);
    let ca_key = dir.join(pki::CA_KEY_FILE);
    pki::write_new(&ca_key, &ca.key_pem(), 0o600)?;
    pki::write_new(&ca_cert, ca.cert_pem(), 0o644)?;
    let files = |role: &Role, extra: &Extra| -> Result<TlsFiles, PkiError> {
        let pair = ca.issue(role, Validity::days(30), extra)?;
        let (cert, key) = pki::write_pair(dir, &role.file_stem(), &pair)?;
        Ok(TlsFiles {
            ca_cert: ca_cert.clone(),
            cert,
            key,
        })
    };
    let server = files(
        &Role::Server("server".into()),
        &Extra {
            ips: server_ips.to_vec(),
            dns: Vec::new(),
        },
    )?;
    let agents = agents
        .iter()
        .map(|n| {
            Ok((
                n.clone(),
                files(&Role::Agent(n.clone()), &Extra::default())?,
            ))
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    let cli = files(&Role::Cli, &Extra::default())?;
    Ok(DevPki {
        ca_cert,
        ca_key,
        server,
        agents,
        cli,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_chains_and_keeps_keys_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = create(&dir.path().join("tls"), &[], &["n1".into(), "n2".into()]).unwrap();
        let ca = std::fs::read(&p.ca_cert).unwrap();
        for f in [&p.server, &p.cli, &p.agents[0].1, &p.agents[1].1] {
            crate::config::verify_chain(&ca, &std::fs::read(&f.cert).unwrap()).unwrap();
            let mode = std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.key.display());
            crate::config::server_config(f, crate::config::ClientAuth::Required).unwrap();
        }
        let mode = std::fs::metadata(&p.ca_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(p.agents[1].1.cert.ends_with("agent-n2.pem"));
        // A second run into the same directory refuses to overwrite.
        assert!(create(&dir.path().join("tls"), &[], &[]).is_err());
    }
}
