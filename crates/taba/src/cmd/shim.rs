//! `taba shim`: the per-task supervisor (see `taba_runtime::shim`). Started by
//! the agent, never by users.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of the hidden `shim` subcommand.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    #[command(subcommand)]
    command: ShimCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ShimCommand {
    /// Supervise the task described by `<task_dir>/shim.json`.
    Run {
        /// The task directory.
        task_dir: PathBuf,
    },
    /// Run a command inside a running task.
    Exec {
        /// Host pid of the task's workload.
        #[arg(long)]
        pid: i32,
        /// The exec spec file.
        #[arg(long)]
        spec: PathBuf,
    },
}

/// Run the shim. It must stay single-threaded: it forks the workload.
pub fn run(args: ShimArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ShimCommand::Run { task_dir } => {
            let code = taba_runtime::shim::main_run(&task_dir);
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        ShimCommand::Exec { pid, spec } => {
            let code = taba_runtime::shim::exec::main_exec(pid, &spec)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}
