//! `taba agent --config F`: one node. The configuration file is documented
//! in docs/configuration.md.

use super::daemon::{drivers, init_logging, read_config, run_async, shutdown_signal};
use super::GlobalArgs;
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use taba_agent::AgentConfig;
use taba_image::ImageStore;

/// Arguments of `taba agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `taba agent` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default = "default_agent_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_server_url")]
    server: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    datacenter: Option<String>,
    #[serde(default = "default_agent_http")]
    http: SocketAddr,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    images_dir: Option<PathBuf>,
    #[serde(default)]
    reserved: ReservedFile,
    #[serde(default)]
    ports: PortsFile,
}

/// `[reserved]` of the agent file: what the host keeps for itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservedFile {
    #[serde(default)]
    cpu: u64,
    #[serde(default)]
    memory: taba_types::ByteSize,
    #[serde(default)]
    disk: taba_types::ByteSize,
    /// `"22,80,8000-8100"`.
    #[serde(default)]
    ports: String,
}

/// `[ports]` of the agent file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsFile {
    /// `"20000-32000"`.
    #[serde(default)]
    dynamic: Option<String>,
}

impl AgentFile {
    /// Apply the `[reserved]` and `[ports]` tables; errors name the key.
    fn apply_reserved(&self, ac: &mut AgentConfig, file: Option<&Path>) -> anyhow::Result<()> {
        let file = file.map(|p| p.display().to_string()).unwrap_or_default();
        ac.reserved.cpu = self.reserved.cpu;
        ac.reserved.memory = self.reserved.memory;
        ac.reserved.disk = self.reserved.disk;
        ac.reserved_ports = taba_types::PortRanges::parse(&self.reserved.ports)
            .with_context(|| format!("configuration {file}: reserved.ports"))?;
        if let Some(d) = &self.ports.dynamic {
            ac.dynamic_ports = taba_types::PortRange::parse(d)
                .with_context(|| format!("configuration {file}: ports.dynamic"))?;
        }
        Ok(())
    }
}

fn default_agent_dir() -> PathBuf {
    "/var/lib/taba/agent".into()
}
fn default_agent_http() -> SocketAddr {
    "127.0.0.1:4647".parse().expect("static address")
}
fn default_server_url() -> String {
    "http://127.0.0.1:4646".into()
}

/// Run `taba agent`.
pub fn run_agent(_g: &GlobalArgs, a: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let cfg: AgentFile = read_config(a.config.as_deref())?;
    run_async(async move {
        let images_dir = cfg
            .images_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("images"));
        let images = Arc::new(ImageStore::open(&images_dir)?);
        let mut ac = AgentConfig::new(cfg.data_dir.clone(), cfg.server.clone());
        ac.name = cfg.name.clone();
        if let Some(dc) = cfg.datacenter.clone() {
            ac.datacenter = dc;
        }
        ac.http_addr = cfg.http;
        ac.meta = cfg.meta.clone();
        cfg.apply_reserved(&mut ac, a.config.as_deref())?;
        let agent = taba_agent::start(ac, drivers(images)?).await?;
        eprintln!(
            "taba agent: node {} (API {})",
            agent.node_id, agent.http_addr
        );
        shutdown_signal().await;
        agent.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
