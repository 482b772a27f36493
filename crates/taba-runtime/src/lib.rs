//! taba's task shim and embedded OCI container runtime.
//!
//! - [`shim`]: the small supervisor process the agent starts for every task run
//!   (`taba shim run <task_dir>`). It outlives the agent, is the parent of the
//!   workload, keeps its logs and writes its exit status; plus `taba shim exec`
//!   for `taba alloc exec`, and the library API the agent uses to start, watch
//!   and signal shims.
//! - [`container`]: starts an OCI bundle's process: namespaces, root
//!   filesystem and mounts, pivot_root, masked and read-only paths, user,
//!   capabilities, no_new_privs, rlimits, sysctl and seccomp. Also builds
//!   Docker-like default specs for the agent's container driver.
//!
//! This crate knows nothing about jobs or allocations: it runs one process
//! described by files in a task directory.
//!
//! Everything that forks (the shim, `shim exec`) must run in a single-threaded
//! process: children run Rust code between fork and exec.
#![allow(unsafe_code)]

pub mod container;
/// The OCI spec types the runtime reads, re-exported for bundle builders.
pub use oci_spec;
mod launch;
pub mod paths;
pub mod shim;
mod sys;
