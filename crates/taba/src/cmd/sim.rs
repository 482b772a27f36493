//! `taba sim`: the real scheduler against a simulated cluster.

use std::process::ExitCode;

/// Arguments of `taba sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {}

/// Run a simulation.
pub fn run(_args: SimArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the simulator is not built yet")
}
