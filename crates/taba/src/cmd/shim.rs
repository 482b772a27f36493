//! `taba shim`: the per-task supervisor and `alloc exec` helper, started by
//! the agent (see `taba_runtime::shim`). Hidden from users.

use std::path::PathBuf;
use std::process::ExitCode;

use taba_runtime::shim;

/// Arguments of the hidden `shim` subcommand.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    #[command(subcommand)]
    command: ShimCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ShimCommand {
    /// Supervise one task run: start the workload described by
    /// `<task_dir>/shim.json`, keep its logs, write its exit status.
    Run {
        /// The task directory holding `shim.json`.
        task_dir: PathBuf,
    },
    /// Run a command inside a running task (`taba alloc exec`), with this
    /// process's stdin/stdout/stderr; exits with the command's status.
    Exec {
        /// Host pid of the task's workload (a container's init).
        #[arg(long)]
        pid: i32,
        /// The exec spec (JSON, `taba_runtime::shim::exec::ExecSpec`).
        #[arg(long)]
        spec: PathBuf,
    },
}

/// Run the shim. Must stay single-threaded: it forks the workload.
pub fn run(args: ShimArgs) -> anyhow::Result<ExitCode> {
    let code = match args.command {
        ShimCommand::Run { task_dir } => shim::main_run(&task_dir),
        ShimCommand::Exec { pid, spec } => match shim::exec::main_exec(pid, &spec) {
            Ok(code) => code,
            Err(e) => {
                let code = e.exit_code();
                eprintln!("error: {:#}", anyhow::Error::from(e));
                code
            }
        },
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
