//! `taba shim`: the per-task supervisor (see `taba_runtime::shim`).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of the hidden `shim` subcommand.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The task directory holding `shim.json`.
    pub task_dir: PathBuf,
}

/// Run the shim.
pub fn run(_args: ShimArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the task shim is not built yet")
}
