//! Subcommands. Each module owns one group of commands.

pub mod acl;
pub mod bench;
pub mod bench_acl;
pub mod cli;
pub mod dev;
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
    /// API token (by default the token file `taba dev` wrote for --addr; see `taba acl`).
    #[arg(long, global = true, env = "TABA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}
