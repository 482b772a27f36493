//! `taba dev`, `taba server`, `taba agent`: the long-running modes.

use super::GlobalArgs;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `taba dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where state is kept.
    #[arg(long, default_value = "/var/lib/taba-dev")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:4646")]
    pub http: String,
}

/// Arguments of `taba server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `taba agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Run `taba dev`.
pub fn run_dev(_g: &GlobalArgs, _a: DevArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("taba dev is not built yet")
}

/// Run `taba server`.
pub fn run_server(_g: &GlobalArgs, _a: ServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("taba server is not built yet")
}

/// Run `taba agent`.
pub fn run_agent(_g: &GlobalArgs, _a: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("taba agent is not built yet")
}
