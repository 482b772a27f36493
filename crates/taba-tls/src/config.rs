//! rustls configurations of taba's listeners, and the PEM files they read.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: no {kind} in PEM form")]
    Pem {
        /// Path.
        path: PathBuf,
        /// What it should hold.
        kind: &'static str,
    },
    /// rustls refused the material.
    #[error("unusable TLS material")]
    Rustls(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("unusable CA certificate")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The three files of a TLS identity under the cluster CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (`taba-ca.pem`): whom to trust.
    pub ca_cert: PathBuf,
    /// Our certificate.
    pub cert: PathBuf,
    /// Our private key (0600).
    pub key: PathBuf,
}

/// What a client (reqwest) needs: the CA to trust and, optionally, its own
/// certificate and key in one PEM text.
#[derive(Clone)]
pub struct ClientTls {
    /// The cluster CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// Certificate then key, PEM (reqwest's `Identity::from_pem`).
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity_pem.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Read the CA and, when given, a certificate and key.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, ConfigError> {
        let ca_pem = read(ca)?;
        certs(ca, &ca_pem)?;
        let identity_pem = match identity {
            Some((cert, key)) => {
                let mut pem = read(cert)?;
                certs(cert, &pem)?;
                let k = read(key)?;
                private_key(key, &k)?;
                pem.push(b'\n');
                pem.extend_from_slice(&k);
                Some(pem)
            }
            None => None,
        };
        Ok(Self {
            ca_pem,
            identity_pem,
        })
    }

    /// From the files of a [`TlsFiles`] (an identity that also connects).
    pub fn from_files(files: &TlsFiles) -> Result<Self, ConfigError> {
        Self::load(&files.ca_cert, Some((&files.cert, &files.key)))
    }
}

/// Read a file.
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(ConfigError::Pem {
            path: path.to_path_buf(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| ConfigError::Pem {
        path: path.to_path_buf(),
        kind: "private key",
    })
}

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client (the agent's API: only servers call it).
    Required,
    /// Clients may come without one; the routes decide (the server's API:
    /// an agent with a join token has no certificate yet). An expired
    /// certificate that otherwise chains to the CA completes the handshake,
    /// so that the server can refuse it with a 403 that says so (the
    /// [`crate::PeerIdentity`] carries `not_after`; the routes check it).
    Optional,
}

/// A verifier that lets an expired certificate through when it chains to
/// the CA at the end of its validity; the caller refuses it by `not_after`.
#[derive(Debug)]
struct ReportExpired(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for ReportExpired {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {
                let id = crate::PeerIdentity::from_der(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                let at = u64::try_from(id.not_after.saturating_sub(1)).unwrap_or(0);
                self.0.verify_client_cert(
                    end_entity,
                    intermediates,
                    UnixTime::since_unix_epoch(std::time::Duration::from_secs(at)),
                )
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let pem = read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca, &pem)? {
        roots.add(c).map_err(ConfigError::Rustls)?;
    }
    Ok(roots)
}

fn verifier(
    roots: rustls::RootCertStore,
    auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider());
    match auth {
        ClientAuth::Required => b.build().map_err(ConfigError::Verifier),
        ClientAuth::Optional => {
            let inner = b
                .allow_unauthenticated()
                .build()
                .map_err(ConfigError::Verifier)?;
            Ok(Arc::new(ReportExpired(inner)))
        }
    }
}

/// The configuration of a listener presenting `files.cert` and verifying
/// client certificates against `files.ca_cert`.
pub fn server_config(
    files: &TlsFiles,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let roots = roots(&files.ca_cert)?;
    let chain = certs(&files.cert, &read(&files.cert)?)?;
    let key = private_key(&files.key, &read(&files.key)?)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Rustls)?
        .with_client_cert_verifier(verifier(roots, auth)?)
        .with_single_cert(chain, key)
        .map_err(ConfigError::Rustls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Check that the certificate `cert_pem` chains to `ca_pem` and is valid
/// now, as a listener would.
pub fn verify_chain(ca_pem: &[u8], cert_pem: &[u8]) -> Result<(), ConfigError> {
    let p = Path::new("certificate");
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(Path::new("CA"), ca_pem)? {
        roots.add(c).map_err(ConfigError::Rustls)?;
    }
    let chain = certs(p, cert_pem)?;
    verifier(roots, ClientAuth::Required)?
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(ConfigError::Rustls)
}
