//! `taba bench ...`: benchmarks that need the real binary and the real host.

use std::process::ExitCode;

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {}

/// Run a benchmark.
pub fn run(c: BenchCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
