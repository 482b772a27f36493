//! Subcommands. Each module owns one group of commands.

pub mod agent;
pub mod bench;
pub mod cli;
mod daemon;
pub mod dev;
mod devcluster;
pub mod server;
pub mod shim;
pub mod sim;

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Address of a taba server's HTTP API.
    #[arg(
        long,
        global = true,
        env = "TABA_ADDR",
        default_value = "http://127.0.0.1:4646"
    )]
    pub addr: String,
    /// API token.
    #[arg(long, global = true, env = "TABA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}
