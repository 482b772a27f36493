//! Moving a running workload to another node without stopping it: the
//! optional [`Migratable`] ability of a driver (the `vm` driver has it;
//! `exec` and `container` do not and are restarted elsewhere instead).
//!
//! ```text
//! source node (running task)           target node
//!                                      prepare_incoming(cfg, listen ip)
//!                                        workload started waiting for state
//!                <----- Incoming {addr} --
//! migrate_out(handle, Incoming, policy)
//!   state streams to addr ------------->
//!   progress callbacks (transferred, remaining, expected downtime)
//!   completed: the source workload has ended
//!                                      finish_incoming(handle): running
//! any failure before completion: the source keeps running; the target
//! calls abort_incoming and nothing of it is left
//! ```

use crate::{Driver, DriverError, TaskConfig, TaskHandle};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

/// Where a prepared target takes the workload's state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Incoming {
    /// The migration stream's address.
    pub addr: SocketAddr,
    /// Where the target takes the workload's disks (NBD), when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<SocketAddr>,
    /// How many disks (exports `disk0` ... `diskN-1`).
    #[serde(default)]
    pub disk_count: usize,
}

/// How a migration may go (from the group's `migrate` policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationPolicy {
    /// Longest pause of the workload at the switch-over.
    pub max_downtime: Duration,
    /// The migration is cancelled (the source keeps running) after this.
    pub timeout: Duration,
    /// Slow the workload down when it dirties memory faster than it moves.
    pub auto_converge: bool,
    /// Bytes per second the stream may use (0: as fast as it goes).
    pub max_bandwidth: u64,
    /// Switch to post-copy when pre-copy does not converge: the target
    /// runs before all memory moved and fetches the rest from the source.
    /// Off by default: once switched, a failure of the target or the
    /// network loses the workload (its state is split between the two).
    pub post_copy: bool,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self {
            max_downtime: Duration::from_millis(100),
            timeout: Duration::from_secs(600),
            auto_converge: true,
            max_bandwidth: 0,
            post_copy: false,
        }
    }
}

/// Progress of a running migration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationProgress {
    /// Bytes sent so far.
    pub transferred: u64,
    /// Bytes left.
    pub remaining: u64,
    /// Bytes of the workload's memory.
    pub total: u64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: u64,
    /// What the pause would be if the switch-over came now, ms.
    pub expected_downtime_ms: Option<u64>,
    /// How much auto-converge slows the workload now, percent.
    pub throttle_pct: u64,
    /// The migration runs in post-copy (the target runs already).
    pub post_copy: bool,
}

/// A completed migration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// From start to completion, ms.
    pub total_ms: u64,
    /// How long the workload was paused, ms (the hypervisor's figure).
    pub downtime_ms: u64,
    /// Bytes sent.
    pub transferred: u64,
    /// It ended in post-copy.
    pub post_copy: bool,
}

/// A driver that can move a running task between nodes.
pub trait Migratable: Driver {
    /// On the target: start the task of `cfg` waiting for its state on
    /// `listen` (this node's address the source reaches), the same way
    /// `source_args` says the source runs (accelerator, machine).
    fn prepare_incoming(
        &self,
        cfg: &TaskConfig,
        listen: std::net::IpAddr,
        source: &SourceInfo,
    ) -> Result<(TaskHandle, Incoming), DriverError>;

    /// What the target must know of the running task `h` (read on the source).
    fn source_info(&self, h: &TaskHandle) -> Result<SourceInfo, DriverError>;

    /// On the source: send the running task to `to`; blocks until it is
    /// done. `progress` is called while it runs; its `Break(why)` cancels
    /// the migration (unless it has completed or switched to post-copy
    /// meanwhile). On any error the task keeps running here, as before.
    fn migrate_out(
        &self,
        h: &TaskHandle,
        to: &Incoming,
        policy: &MigrationPolicy,
        progress: &mut dyn FnMut(&MigrationProgress) -> ControlFlow<String>,
    ) -> Result<MigrationStats, DriverError>;

    /// On the target, after the source completed: wait until the task runs.
    fn finish_incoming(&self, h: &TaskHandle, timeout: Duration) -> Result<(), DriverError>;

    /// On the target, when the migration failed: end the waiting task and
    /// release what it holds.
    fn abort_incoming(&self, h: &TaskHandle) -> Result<(), DriverError>;
}

/// What the target of a migration must match of its source.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceInfo {
    /// `kvm` or `tcg`.
    pub accel: taba_types::vm::VmAccel,
    /// The source may switch to post-copy (the group's policy allows it):
    /// the target must be ready for it too.
    #[serde(default)]
    pub post_copy: bool,
}

/// How long a finished migration's source QEMU has to end.
pub(crate) const SOURCE_END_TIMEOUT: Duration = Duration::from_secs(10);
