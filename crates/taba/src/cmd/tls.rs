//! `taba tls ...`: the cluster CA and the certificates it signs. The logic
//! lives in `taba_tls::pki`; this module reads flags and prints what it wrote.
//! File names are documented in docs/configuration.md ("TLS").

use anyhow::Context;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use taba_tls::pki::{self, CertAuthority, Extra, Role, Validity};

/// `taba tls`.
#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// The cluster CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificates signed by the cluster CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `taba tls ca`.
#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Create a CA: DIR/taba-ca.pem and DIR/taba-ca-key.pem (0600).
    Create(CaCreateArgs),
}

/// `taba tls ca create`.
#[derive(clap::Args, Debug)]
pub struct CaCreateArgs {
    /// Where to write the files.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// The CA's common name.
    #[arg(long, default_value = "taba cluster CA")]
    pub name: String,
}

/// `taba tls cert`.
#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// Create a certificate and key for a server, an agent or the CLI:
    /// DIR/server-NAME.pem, DIR/agent-NAME.pem or DIR/cli.pem, and the same
    /// with -key.pem (0600).
    Create(CertCreateArgs),
    /// Revoke a certificate (a file, a fingerprint, or the one a node
    /// registered with): the servers refuse it from then on.
    Revoke(CertRevokeArgs),
}

/// `taba tls cert revoke`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["file", "fingerprint", "node"])))]
pub struct CertRevokeArgs {
    /// The certificate file.
    pub file: Option<PathBuf>,
    /// Its SHA-256 fingerprint (hex).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// A node (name or id): the certificate it registered with.
    #[arg(long)]
    pub node: Option<String>,
}

/// `taba tls cert create`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("role").required(true).args(["server", "agent", "cli"])))]
pub struct CertCreateArgs {
    /// A server certificate (names server.taba, localhost, NAME, loopback).
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
    /// An agent certificate for node NAME (names NAME.agent.taba).
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// A CLI certificate (names cli.taba).
    #[arg(long)]
    pub cli: bool,
    /// Where to write the files.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The CA certificate (default DIR/taba-ca.pem).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The CA key (default DIR/taba-ca-key.pem).
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// An IP address clients dial the server at (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    pub ips: Vec<IpAddr>,
    /// A DNS name clients dial the server at (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
}

impl CertCreateArgs {
    fn role(&self) -> Role {
        match (&self.server, &self.agent) {
            (Some(n), _) => Role::Server(n.clone()),
            (None, Some(n)) => Role::Agent(n.clone()),
            (None, None) => Role::Cli,
        }
    }
}

/// Run `taba tls ...`.
pub fn run(g: &super::GlobalArgs, c: TlsCommand) -> anyhow::Result<ExitCode> {
    match c {
        TlsCommand::Ca(CaCommand::Create(a)) => ca_create(a),
        TlsCommand::Cert(CertCommand::Create(a)) => cert_create(a),
        TlsCommand::Cert(CertCommand::Revoke(a)) => cert_revoke(g, a),
    }
}

fn cert_revoke(g: &super::GlobalArgs, a: CertRevokeArgs) -> anyhow::Result<ExitCode> {
    let fingerprint = match (&a.file, a.fingerprint) {
        (Some(f), _) => {
            let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let id = taba_tls::PeerIdentity::from_pem(&pem)
                .with_context(|| format!("{}: not a PEM certificate", f.display()))?;
            Some(id.fingerprint)
        }
        (None, fp) => fp,
    };
    let req = taba_client::api::RevokeCertRequest {
        fingerprint,
        node: a.node,
    };
    let resp = g.client()?.revoke_cert(&req)?;
    for fp in resp.revoked {
        println!("revoked {fp}");
    }
    Ok(ExitCode::SUCCESS)
}

fn ca_create(a: CaCreateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.days >= 1, "--days: must be at least 1");
    let ca = CertAuthority::create(&a.name, Validity::days(a.days))?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let cert = a.dir.join(pki::CA_CERT_FILE);
    let key = a.dir.join(pki::CA_KEY_FILE);
    anyhow::ensure!(
        !cert.exists() && !key.exists(),
        "{} or {} exists; remove them first or pick another --dir",
        cert.display(),
        key.display()
    );
    pki::write_new(&key, &ca.key_pem(), 0o600)?;
    pki::write_new(&cert, ca.cert_pem(), 0o644)?;
    println!("{}", cert.display());
    println!("{}", key.display());
    Ok(ExitCode::SUCCESS)
}

fn cert_create(a: CertCreateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.days >= 1, "--days: must be at least 1");
    let role = a.role();
    anyhow::ensure!(
        a.dns.is_empty() || matches!(role, Role::Server(_)),
        "--dns: only server certificates take extra names"
    );
    let ca_cert = a
        .ca_cert
        .clone()
        .unwrap_or_else(|| a.dir.join(pki::CA_CERT_FILE));
    let ca_key = a
        .ca_key
        .clone()
        .unwrap_or_else(|| a.dir.join(pki::CA_KEY_FILE));
    let ca = CertAuthority::load(&ca_cert, &ca_key)
        .context("loading the CA (create one with `taba tls ca create`)")?;
    let extra = Extra {
        ips: a.ips.clone(),
        dns: a.dns.clone(),
    };
    let pair = ca.issue(&role, Validity::days(a.days), &extra)?;
    let (cert, key) = pki::write_pair(&a.dir, &role.file_stem(), &pair)?;
    println!("{}", cert.display());
    println!("{}", key.display());
    Ok(ExitCode::SUCCESS)
}
