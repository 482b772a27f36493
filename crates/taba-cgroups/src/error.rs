//! The one error type of this crate.
//!
//! Every variant that touches a file carries the file's path and the reason
//! (the `source` error, or a text saying what was wrong with its content).

use std::io;
use std::path::PathBuf;

/// What went wrong while managing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A value could not be written to a cgroup file.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why (the kernel's answer).
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup directory {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup directory {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A cgroup file (or the mount table) held something unexpected.
    #[error("unexpected content in {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// `Layout::open` was asked for a cgroup that does not exist.
    #[error("cgroup {path} does not exist")]
    NotFound {
        /// The missing directory.
        path: PathBuf,
    },
    /// No usable cgroup filesystem was found.
    #[error("no cgroup filesystem found at {path}")]
    NotMounted {
        /// The mount table or root directory that was searched.
        path: PathBuf,
    },
    /// A controller taba needs is not available.
    #[error("cgroup controller {controller} is not available in {path}")]
    MissingController {
        /// `cpu`, `memory`, `pids`, ...
        controller: &'static str,
        /// The mount table, root or `cgroup.controllers` file that lacks it.
        path: PathBuf,
    },
    /// The relative cgroup path given by the caller is not acceptable.
    #[error("invalid cgroup path {rel:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        rel: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A requested limit is out of range.
    #[error("invalid limit {field}: {reason}")]
    InvalidLimit {
        /// The field of `Limits`.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A process of the cgroup could not be signalled.
    #[error("cannot kill pid {pid} of {path}")]
    Signal {
        /// The process.
        pid: u32,
        /// The cgroup's `cgroup.procs`.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustix::io::Errno,
    },
    /// Processes were still in the cgroup after they were all killed.
    #[error("{remaining} processes still in {path} after they were killed")]
    StillPopulated {
        /// The cgroup directory.
        path: PathBuf,
        /// How many were left.
        remaining: usize,
    },
}
