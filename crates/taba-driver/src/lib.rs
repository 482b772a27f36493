//! Workload drivers: the [`Driver`] trait and the `exec`, `container` and
//! `vm` drivers.
//!
//! The trait follows Nomad's `DriverPlugin`: capabilities, fingerprint,
//! start, wait, stop, destroy, inspect, stats, signal, exec and recover
//! (re-attach after an agent restart). Every method is blocking; the agent
//! calls them from blocking threads. Optional abilities that only some
//! drivers have (live migration, checkpoint/restore) will be separate traits
//! so this one stays small.
//!
//! Both drivers here run their workload under a task shim (`taba shim run`,
//! from `taba-runtime`) so the workload outlives an agent restart; they differ
//! in what the shim starts: a host process (`exec`) or an OCI bundle built
//! from an image (`container`).

mod common;
pub mod container;
pub mod exec;
pub mod migrate;
pub mod shimmed;
pub mod userns;
pub mod users;
pub mod vm;

pub use common::*;
/// The framing of an exec's terminal input (`ExecOptions::tty`): what the
/// caller writes to the exec command's stdin.
pub use taba_runtime::shim::tty as exec_tty;

/// The file name of a task's console socket ([`Driver::console_socket`]).
pub fn console_socket_name() -> &'static str {
    taba_runtime::shim::console::CONSOLE_SOCKET
}
