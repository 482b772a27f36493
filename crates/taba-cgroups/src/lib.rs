//! The cgroups of taba's workloads on one node.
//!
//! [`Layout`] finds the host's cgroup filesystems (v1, hybrid or v2) and
//! makes or opens a cgroup by its path relative to every hierarchy root
//! (`taba/<alloc>/<task>`); the result is an [`AnyCgroup`], which picks the
//! [`V1Cgroup`] or [`V2Cgroup`] backend at run time (the shape of youki's
//! `AnyCgroupManager`). A cgroup sets [`Limits`], takes processes (the task
//! shim writes the workload's pid into [`AnyCgroup::procs_files`] before it
//! execs), reports [`Stats`] and OOM kills, kills everything in it, and is
//! destroyed.
//!
//! Hybrid hosts are treated as v1: limits go to the v1 hierarchies and the
//! v2 mount (usually `/sys/fs/cgroup/unified`) is left alone. This crate
//! never mounts anything and never touches cgroups outside the paths it is
//! given.

pub mod devices_bpf;
mod error;
mod fs;
mod layout;
mod limits;
mod v1;
mod v2;

pub use error::CgroupError;
pub use layout::{CgroupVersion, Layout, MOUNTINFO, V1_CONTROLLERS};
pub use limits::{AppliedLimits, Limits, Stats, CPU_PERIOD_US, MAX_CPU_CORES, MIN_CPU_CORES};
pub use v1::V1Cgroup;
pub use v2::V2Cgroup;

use std::path::PathBuf;

/// What the agent reports about the host's cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupInfo {
    /// `"v1"`, `"hybrid"`, `"v2"`, or `"none"` when no cgroup filesystem
    /// could be found.
    pub version: String,
    /// Controllers available to taba's cgroups, sorted.
    pub controllers: Vec<String>,
}

/// The host's cgroup setup, for the node's attributes. Never fails: a host
/// whose cgroups cannot be read reports version `"none"` and no controllers
/// (the exec and container drivers then fingerprint as unusable).
pub fn fingerprint() -> CgroupInfo {
    Layout::detect()
        .and_then(|l| l.info())
        .unwrap_or_else(|_| CgroupInfo {
            version: "none".to_owned(),
            controllers: Vec::new(),
        })
}

/// A workload's cgroup, whichever cgroup version the host runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyCgroup {
    /// On a v1 or hybrid host.
    V1(V1Cgroup),
    /// On a v2 host.
    V2(V2Cgroup),
}

macro_rules! each {
    ($self:ident, $cg:ident => $e:expr) => {
        match $self {
            AnyCgroup::V1($cg) => $e,
            AnyCgroup::V2($cg) => $e,
        }
    };
}

impl AnyCgroup {
    /// The path relative to every hierarchy root, as given to
    /// [`Layout::create`].
    pub fn rel(&self) -> &str {
        each!(self, cg => cg.rel())
    }

    /// The cgroup's directory in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            AnyCgroup::V1(cg) => cg.dirs(),
            AnyCgroup::V2(cg) => vec![cg.path().to_owned()],
        }
    }

    /// Sets the limits (CPU weight and optional quota, memory with swap
    /// disabled where the kernel allows, process count) and returns what the
    /// kernel holds afterwards, read back from its files.
    pub fn apply(&self, limits: &Limits) -> Result<AppliedLimits, CgroupError> {
        each!(self, cg => cg.apply(limits))
    }

    /// Allow only the devices in `allow` (`"c 1:3 rwm"` rules, as the v1
    /// `devices.allow` file takes them) after denying all: v1's devices
    /// controller, or on v2 an eBPF device program ([`devices_bpf`]).
    /// Returns false when a v1 layout has no devices hierarchy: callers must
    /// then withhold CAP_MKNOD instead.
    pub fn restrict_devices(&self, allow: &[&str]) -> Result<bool, CgroupError> {
        match self {
            AnyCgroup::V1(cg) => cg.restrict_devices(allow),
            AnyCgroup::V2(cg) => {
                devices_bpf::attach(cg.path(), allow)?;
                Ok(true)
            }
        }
    }

    /// Reads the limits the kernel holds now.
    pub fn limits(&self) -> Result<AppliedLimits, CgroupError> {
        each!(self, cg => cg.limits())
    }

    /// The `cgroup.procs` file of every hierarchy. Writing a pid into each
    /// (as the task shim does before exec) moves that process into the
    /// cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        each!(self, cg => cg.procs_files())
    }

    /// Moves a process into the cgroup in every hierarchy.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        each!(self, cg => cg.add_pid(pid))
    }

    /// The processes in the cgroup and its descendants, sorted. Empty when
    /// the cgroup cannot be read (it is gone); [`AnyCgroup::try_pids`] says
    /// why.
    pub fn pids(&self) -> Vec<u32> {
        self.try_pids().unwrap_or_default()
    }

    /// The processes in the cgroup and its descendants, sorted.
    pub fn try_pids(&self) -> Result<Vec<u32>, CgroupError> {
        each!(self, cg => cg.pids())
    }

    /// CPU, memory, OOM and process counters.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        each!(self, cg => cg.stats())
    }

    /// Whether the OOM killer has killed a process of this cgroup (v1: the
    /// `oom_kill` count of `memory.oom_control`, or on kernels before 4.13
    /// whether the limit was ever hit; v2: `oom_kill` of `memory.events`).
    /// False when the cgroup cannot be read; `stats()?.oom_kills` says why.
    pub fn oom_killed(&self) -> bool {
        each!(self, cg => cg.oom_kills()).is_ok_and(|n| n > 0)
    }

    /// Kills every process in the cgroup and below and waits (up to 5 s)
    /// until they are gone. v1: freeze, SIGKILL each, thaw; v2:
    /// `cgroup.kill` where the kernel has it.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        each!(self, cg => cg.kill_all())
    }

    /// Kills what is left and removes the cgroup and its descendants from
    /// every hierarchy, children first (retrying briefly while the kernel
    /// still reports them busy). Calling it again is fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        each!(self, cg => cg.destroy())
    }
}
