//! Client commands: `job`, `alloc`, `node`, `image`.

use super::GlobalArgs;
use std::process::ExitCode;

/// `taba job ...`
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {}
/// `taba alloc ...`
#[derive(clap::Subcommand, Debug)]
pub enum AllocCommand {}
/// `taba node ...`
#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {}
/// `taba image ...`
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {}

/// Run a job command.
pub fn job(_g: &GlobalArgs, c: JobCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
/// Run an alloc command.
pub fn alloc(_g: &GlobalArgs, c: AllocCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
/// Run a node command.
pub fn node(_g: &GlobalArgs, c: NodeCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
/// Run an image command.
pub fn image(_g: &GlobalArgs, c: ImageCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
