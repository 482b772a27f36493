//! The cluster CA and the certificates it signs.
//!
//! Files (see docs/configuration.md, "TLS"): `taba-ca.pem` and
//! `taba-ca-key.pem` for the CA; `server-NAME.pem`, `agent-NAME.pem`,
//! `cli.pem` and their `-key.pem` files. Private keys are written 0600 and
//! never overwrite an existing file.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "taba-ca.pem";
/// File name of the CA's private key.
pub const CA_KEY_FILE: &str = "taba-ca-key.pem";

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation failed.
    #[error("cannot generate a key pair")]
    Key(#[source] rcgen::Error),
    /// Signing failed.
    #[error("cannot sign the certificate")]
    Sign(#[source] rcgen::Error),
    /// A CA certificate or key in PEM form could not be parsed.
    #[error("{what} is not a valid PEM {kind}")]
    BadPem {
        /// The file or message.
        what: String,
        /// What it should hold.
        kind: &'static str,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A name is not usable in a certificate.
    #[error("invalid {what} name {name:?}: {reason}")]
    Name {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A validity that ends before it starts.
    #[error("the validity must be at least one day")]
    Validity,
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a certificate is for; its names follow from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A server: `server.taba`, `localhost`, loopback, and its own name.
    Server(String),
    /// Agent (node) `NAME`: `NAME.agent.taba`.
    Agent(String),
    /// The command line: `cli.taba`.
    Cli,
}

impl Role {
    /// The stem of its files: `server-NAME`, `agent-NAME`, `cli`.
    pub fn file_stem(&self) -> String {
        match self {
            Role::Server(n) => format!("server-{n}"),
            Role::Agent(n) => format!("agent-{n}"),
            Role::Cli => "cli".into(),
        }
    }

    /// Check the name: a DNS label (letters, digits, '-', '_'; at most 63).
    pub fn validate(&self) -> Result<(), PkiError> {
        let (what, name) = match self {
            Role::Server(n) => ("server", n),
            Role::Agent(n) => ("agent", n),
            Role::Cli => return Ok(()),
        };
        let reason = if name.is_empty() || name.len() > 63 {
            Some("must be 1 to 63 characters")
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            Some("use letters, digits, '-' and '_'")
        } else if name.starts_with('-') || name.ends_with('-') {
            Some("must not start or end with '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(PkiError::Name {
                what,
                name: name.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    fn params(&self, validity: &Validity, extra: &Extra) -> Result<CertificateParams, PkiError> {
        self.validate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let (cn, mut sans, ekus) = match self {
            Role::Server(n) => {
                let mut sans = vec![dns(crate::SERVER_DNS)?, dns("localhost")?, dns(n)?];
                sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                sans.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
                let ekus = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                (n.clone(), sans, ekus)
            }
            Role::Agent(n) => {
                let ekus = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                (n.clone(), vec![dns(&crate::agent_dns(n))?], ekus)
            }
            Role::Cli => (
                "cli".to_string(),
                vec![dns(crate::CLI_DNS)?],
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
        };
        for ip in &extra.ips {
            sans.push(SanType::IpAddress(*ip));
        }
        for name in &extra.dns {
            sans.push(dns(name)?);
        }
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "taba");
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.extended_key_usages = ekus;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        validity.apply(&mut p)?;
        Ok(p)
    }
}

fn dns(name: &str) -> Result<SanType, PkiError> {
    name.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| PkiError::Name {
            what: "DNS",
            name: name.to_string(),
            reason: "not an ASCII DNS name",
        })
}

/// Extra addresses in a server (or agent) certificate: the addresses clients
/// dial it at.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// DNS names.
    pub dns: Vec<String>,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// From `start` to `end`, relative to now (tests make expired ones).
    pub fn between(start: Duration, end: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now + start,
            not_after: now + end,
        }
    }

    fn apply(&self, p: &mut CertificateParams) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::Validity);
        }
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        Ok(())
    }
}

/// A certificate and its private key, in PEM form.
#[derive(Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").finish_non_exhaustive()
    }
}

/// The cluster CA: signs every server, agent and CLI certificate.
pub struct CertAuthority {
    cert_pem: String,
    key: KeyPair,
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new CA named `name`.
    pub fn create(name: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Key)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "taba");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut p)?;
        let cert = p.self_signed(&key).map_err(PkiError::Sign)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            issuer: cert,
        })
    }

    /// The CA of a certificate and key in PEM form (`what` names them in errors).
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::BadPem {
            what: format!("{what} key"),
            kind: "private key",
            source,
        })?;
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(|source| PkiError::BadPem {
                what: format!("{what} certificate"),
                kind: "CA certificate",
                source,
            })?;
        // The same subject and key: certificates it signs chain to the file.
        let issuer = params.self_signed(&key).map_err(PkiError::Sign)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
            issuer,
        })
    }

    /// The CA from its files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let c = read_string(cert)?;
        let k = read_string(key)?;
        Self::from_pem(&c, &k, &cert.display().to_string())
    }

    /// The CA certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new key and a certificate for `role`.
    pub fn issue(
        &self,
        role: &Role,
        validity: Validity,
        extra: &Extra,
    ) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Key)?;
        let cert = role
            .params(&validity, extra)?
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(PkiError::Sign)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign the public key of a certificate signing request for `role`.
    /// Only the key is taken from the request: names, usages and validity
    /// are the CA's choice.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        role: &Role,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
            PkiError::BadPem {
                what: "csr_pem".into(),
                kind: "certificate signing request",
                source,
            }
        })?;
        let cert = role
            .params(&validity, &Extra::default())?
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(PkiError::Sign)?;
        Ok(cert.pem())
    }
}

/// A new key and a signing request for `role` (an agent joining with a token).
pub fn signing_request(role: &Role) -> Result<CertPair, PkiError> {
    role.validate()?;
    let key = KeyPair::generate().map_err(PkiError::Key)?;
    // Only the key matters to the CA; the request names the role for the log.
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, role.file_stem());
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key).map_err(PkiError::Sign)?;
    Ok(CertPair {
        cert_pem: csr.pem().map_err(PkiError::Sign)?,
        key_pem: key.serialize_pem(),
    })
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `contents` to a new file with `mode`; never replaces a file.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Replace `path` with `contents` (through a temporary file) with `mode`.
pub fn write_replace(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Where a certificate pair's files go in `dir`: `STEM.pem`, `STEM-key.pem`.
pub fn pair_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    )
}

/// Write a pair into `dir` as `STEM.pem` (0644) and `STEM-key.pem` (0600);
/// refuses to overwrite either. Returns the two paths.
pub fn write_pair(dir: &Path, stem: &str, pair: &CertPair) -> Result<(PathBuf, PathBuf), PkiError> {
    let (cert, key) = pair_paths(dir, stem);
    for p in [&cert, &key] {
        if p.exists() {
            return Err(PkiError::Write {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the file exists; remove it first or write elsewhere",
                ),
            });
        }
    }
    write_new(&key, &pair.key_pem, 0o600)?;
    write_new(&cert, &pair.cert_pem, 0o644)?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerIdentity;
    use std::os::unix::fs::PermissionsExt as _;

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn issued_certificates_name_their_role() {
        let ca = CertAuthority::create("test CA", Validity::days(10)).unwrap();
        let s = ca
            .issue(
                &Role::Server("s1".into()),
                Validity::days(1),
                &Extra::default(),
            )
            .unwrap();
        let a = ca
            .issue(
                &Role::Agent("n1".into()),
                Validity::days(1),
                &Extra::default(),
            )
            .unwrap();
        let c = ca
            .issue(&Role::Cli, Validity::days(1), &Extra::default())
            .unwrap();
        let id = |p: &CertPair| PeerIdentity::from_der(&der(&p.cert_pem)).unwrap();
        assert_eq!(id(&s).role, Some(Role::Server("s1".into())));
        assert_eq!(id(&a).role, Some(Role::Agent("n1".into())));
        assert_eq!(id(&c).role, Some(Role::Cli));
        assert_ne!(id(&a).fingerprint, id(&s).fingerprint);
    }

    #[test]
    fn ca_reloaded_from_pem_signs_chains_to_the_same_ca() {
        let ca = CertAuthority::create("test CA", Validity::days(10)).unwrap();
        let again = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem(), "ca").unwrap();
        let a = again
            .issue(
                &Role::Agent("n1".into()),
                Validity::days(1),
                &Extra::default(),
            )
            .unwrap();
        crate::config::verify_chain(ca.cert_pem().as_bytes(), a.cert_pem.as_bytes()).unwrap();
        // A different CA's certificate does not chain.
        let other = CertAuthority::create("other", Validity::days(10)).unwrap();
        let b = other
            .issue(
                &Role::Agent("n1".into()),
                Validity::days(1),
                &Extra::default(),
            )
            .unwrap();
        assert!(
            crate::config::verify_chain(ca.cert_pem().as_bytes(), b.cert_pem.as_bytes()).is_err()
        );
    }

    #[test]
    fn csr_signing_keeps_the_key_and_imposes_the_names() {
        let ca = CertAuthority::create("test CA", Validity::days(10)).unwrap();
        // The request asks for a server name; the CA signs it as agent n2.
        let req = signing_request(&Role::Server("evil".into())).unwrap();
        let cert = ca
            .sign_csr(&req.cert_pem, &Role::Agent("n2".into()), Validity::days(1))
            .unwrap();
        let id = PeerIdentity::from_der(&der(&cert)).unwrap();
        assert_eq!(id.role, Some(Role::Agent("n2".into())));
        assert!(ca
            .sign_csr("not a csr", &Role::Agent("n2".into()), Validity::days(1))
            .is_err());
    }

    #[test]
    fn names_and_validity_are_checked() {
        let ca = CertAuthority::create("test CA", Validity::days(10)).unwrap();
        for bad in ["", "a.b", "-x", "a b", &"x".repeat(64)] {
            let e = ca
                .issue(
                    &Role::Agent(bad.into()),
                    Validity::days(1),
                    &Extra::default(),
                )
                .unwrap_err();
            assert!(e.to_string().contains("invalid agent name"), "{e}");
        }
        let e = ca
            .issue(
                &Role::Cli,
                Validity::between(Duration::hours(1), Duration::hours(-1)),
                &Extra::default(),
            )
            .unwrap_err();
        assert!(matches!(e, PkiError::Validity));
    }

    #[test]
    fn keys_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::create("test CA", Validity::days(10)).unwrap();
        let p = ca
            .issue(&Role::Cli, Validity::days(1), &Extra::default())
            .unwrap();
        let (cert, key) = write_pair(dir.path(), "cli", &p).unwrap();
        let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert!(write_pair(dir.path(), "cli", &p).is_err());
        assert_eq!(std::fs::read_to_string(&key).unwrap(), p.key_pem);
    }
}
