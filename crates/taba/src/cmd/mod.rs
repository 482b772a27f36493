//! Subcommands. Each module owns one group of commands.

pub mod acl;
pub mod agent;
pub mod bench;
pub mod bench_acl;
pub mod bench_events;
pub mod bench_scale;
pub mod cli;
mod daemon;
pub mod dev;
mod devcluster;
pub mod drain;
pub mod events;
pub mod migrate;
mod progress;
pub mod server;
mod session;
pub mod shell;
pub mod shim;
pub mod sim;
pub mod store_config;
pub mod tls;

impl GlobalArgs {
    /// The TLS files the CLI uses: the flags (or their variables), else
    /// those in ~/.taba/tls/ that exist, when an address is https.
    pub fn tls_options(&self) -> anyhow::Result<Option<taba_client::TlsOptions>> {
        use anyhow::Context as _;
        let https = self
            .addr
            .split(',')
            .any(|a| a.trim().starts_with("https://"));
        let home = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".taba/tls"));
        let found = |given: &Option<std::path::PathBuf>, file: &str| {
            given.clone().or_else(|| {
                home.as_ref()
                    .map(|h| h.join(file))
                    .filter(|p| https && p.exists())
            })
        };
        let ca = found(&self.ca_cert, "taba-ca.pem");
        let cert = found(&self.client_cert, "cli.pem");
        let key = found(&self.client_key, "cli-key.pem");
        let Some(ca) = ca else {
            anyhow::ensure!(
                cert.is_none() && key.is_none(),
                "--ca-cert: needed with --client-cert and --client-key (the cluster CA to trust)"
            );
            return Ok(None);
        };
        let identity = match (&cert, &key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--client-key: needed with --client-cert"),
            (None, Some(_)) => anyhow::bail!("--client-cert: needed with --client-key"),
        };
        let t = taba_tls::ClientTls::load(&ca, identity).context("loading the CLI's TLS files")?;
        Ok(Some(taba_client::TlsOptions {
            ca_pem: t.ca_pem,
            identity_pem: t.identity_pem,
        }))
    }

    /// The API client these options describe.
    pub fn client(&self) -> anyhow::Result<taba_client::Client> {
        Ok(taba_client::Client::with_options(
            taba_client::ClientOptions {
                addrs: self.addr.split(',').map(str::to_string).collect(),
                token: acl::resolve_token(self),
                tls: self.tls_options()?,
            },
        )?)
    }
}

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Address of a taba server's HTTP API; several separated by commas
    /// (tried in turn when one cannot be reached).
    #[arg(
        long,
        global = true,
        env = "TABA_ADDR",
        default_value = "http://127.0.0.1:4646"
    )]
    pub addr: String,
    /// The cluster CA certificate to trust (https addresses; default
    /// ~/.taba/tls/taba-ca.pem when it exists).
    #[arg(long, global = true, env = "TABA_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// The CLI's certificate (default ~/.taba/tls/cli.pem when it exists).
    #[arg(long, global = true, env = "TABA_CLIENT_CERT")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The CLI's private key (default ~/.taba/tls/cli-key.pem when it exists).
    #[arg(long, global = true, env = "TABA_CLIENT_KEY")]
    pub client_key: Option<std::path::PathBuf>,
    /// API token (by default the token file `taba dev` wrote for --addr; see `taba acl`).
    #[arg(long, global = true, env = "TABA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}
