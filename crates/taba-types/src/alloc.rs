//! Allocations: one instance of a task group bound to a node, with what the
//! servers want (`desired_status`) and what the agent observes
//! (`client_status`, `task_states`).

use crate::ids::{AllocId, EvalId, NodeId};
use crate::job::{JobType, Resources, TaskGroupSpec};
use crate::ports::AllocatedPort;
use crate::units::ByteSize;
use crate::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What the servers want of an allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DesiredStatus {
    /// Keep it running.
    #[default]
    Run,
    /// Stop it.
    Stop,
    /// Stop it to make room (preemption).
    Evict,
}

/// What the agent observes of an allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ClientStatus {
    /// Placed, not running yet.
    #[default]
    Pending,
    /// All tasks running.
    Running,
    /// All tasks finished successfully (or were stopped).
    Complete,
    /// A task failed and will not be restarted on this node.
    Failed,
    /// Its node went down.
    Lost,
}

impl ClientStatus {
    /// Complete, failed or lost.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Lost)
    }
}

impl fmt::Display for ClientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Lost => "lost",
        })
    }
}

impl fmt::Display for DesiredStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Run => "run",
            Self::Stop => "stop",
            Self::Evict => "evict",
        })
    }
}

/// Lifecycle of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Not started yet, or waiting to restart.
    #[default]
    Pending,
    /// Running.
    Running,
    /// Finished; `failed` says how.
    Dead,
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Dead => "dead",
        })
    }
}

/// One event in a task's life (kept to the last few).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskEvent {
    /// When.
    pub time: UnixMillis,
    /// `Received`, `Started`, `Terminated`, `Restarting`, `Killing`,
    /// `Killed`, `OOM Killed`, `Not Restarting`, `Driver Failure`, ...
    pub kind: String,
    /// Details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Observed state of one task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskState {
    /// Lifecycle.
    pub state: TaskStatus,
    /// Ended in failure.
    #[serde(default)]
    pub failed: bool,
    /// Restarts so far on this node.
    #[serde(default)]
    pub restarts: u32,
    /// Exit code of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The last run was killed by the kernel's OOM killer.
    #[serde(default)]
    pub oom_killed: bool,
    /// Runs the OOM killer ended on this node so far.
    #[serde(default)]
    pub oom_kills: u32,
    /// Host PID of the workload's main process while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the current (or last) run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMillis>,
    /// When the task finished for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
    /// Most recent events, oldest first.
    #[serde(default)]
    pub events: Vec<TaskEvent>,
}

/// Events kept per task.
pub const MAX_TASK_EVENTS: usize = 10;

impl TaskState {
    /// Append an event, keeping the last [`MAX_TASK_EVENTS`].
    pub fn push_event(&mut self, time: UnixMillis, kind: &str, message: impl Into<String>) {
        self.events.push(TaskEvent {
            time,
            kind: kind.to_string(),
            message: message.into(),
        });
        if self.events.len() > MAX_TASK_EVENTS {
            let extra = self.events.len() - MAX_TASK_EVENTS;
            self.events.drain(..extra);
        }
    }
}

/// Something that happened to an allocation as a whole, oldest first in
/// [`Allocation::events`]: what the cluster did (`Lost`: its node went down;
/// `Reconnected`: its node reported it alive after that; `Duplicate`:
/// stopped because another instance of its index runs; `Fenced`: its agent
/// stopped it after losing contact with the servers) and what was done to
/// it through the API, recorded before it is done (`Exec`, the audit trail
/// of `alloc exec`: who, what, when).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AllocEvent {
    /// When.
    pub time: UnixMillis,
    /// `Lost`, `Reconnected`, `Duplicate`, `Fenced`, `Exec`, ...
    pub kind: String,
    /// Who, for what was done through the API: the token's name and
    /// accessor id (`anonymous` when ACLs are off). Empty for what the
    /// cluster did on its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    /// What: the task and the command, or why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl AllocEvent {
    /// An event of the cluster itself (no actor).
    pub fn system(time: UnixMillis, kind: &str, message: impl Into<String>) -> Self {
        Self {
            time,
            kind: kind.to_string(),
            actor: String::new(),
            message: message.into(),
        }
    }
}

/// Events kept per allocation (the oldest go first).
pub const MAX_ALLOC_EVENTS: usize = 50;

/// A request to move an allocation to another node: the one "move"
/// primitive of rebalancing and node drains (and, later, `alloc migrate`). The
/// scheduler places a replacement (on `to` when it is given and fits, else
/// on the best other node) and stops this allocation in the same plan,
/// within the group's `migrate.max_parallel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrateRequest {
    /// Why, shown as the stopped allocation's desired description.
    pub reason: String,
    /// The node to move to, if chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NodeId>,
    /// When it was asked for.
    pub requested_at: UnixMillis,
    /// Move it live (groups whose driver can: [`TaskGroupSpec::migrates_live`]):
    /// the replacement takes over the running workload, and this allocation
    /// stops only once the replacement runs (see [`LiveMigration`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
}

/// A live migration between two allocations of one instance, set by the
/// servers on both (the source keeps running until the target runs). The
/// agents learn their part from it through their blocking query of
/// allocations and report theirs in [`crate::wire::AllocUpdate::migration`]:
///
/// ```text
/// server: source.live_migration = target.live_migration = {source, target}
/// source agent: reports source_accel        -> server copies it to both
/// target agent: prepare_incoming (source_accel), reports incoming -> copied to both
/// source agent: migrate_out(incoming, group.migrate), reports progress,
///               then completed (or failed)
/// server: cancel asked -> cancel set on both -> source agent cancels its
///         stream and reports failed ("cancelled by WHO")
/// target agent: finish_incoming -> task running
/// server: target running -> source stopped "migrated to NODE", both cleared
///         any failure   -> target stopped (aborts), source cleared (runs on)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LiveMigration {
    /// The running allocation that moves.
    pub source_alloc: AllocId,
    /// Its node.
    pub source_node: NodeId,
    /// The replacement that takes the workload over.
    pub target_alloc: AllocId,
    /// Its node.
    pub target_node: NodeId,
    /// Its node's name.
    pub target_node_name: String,
    /// Why (the move request's reason).
    pub reason: String,
    /// When the servers started it.
    pub started_at: UnixMillis,
    /// How the source runs (the target must match), from the source agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_accel: Option<crate::vm::VmAccel>,
    /// Where the prepared target takes the state, from the target agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<MigrationIncoming>,
    /// A cancel asked for (`alloc migrate --cancel`), with who asked: the
    /// source agent cancels its stream (unless it completed meanwhile) and
    /// reports the migration failed with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
}

/// Where a prepared migration target takes a workload's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrationIncoming {
    /// The migration stream's address.
    pub addr: std::net::SocketAddr,
    /// Where the target takes the disks (NBD), if there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<std::net::SocketAddr>,
    /// How many disks.
    #[serde(default)]
    pub disk_count: u32,
}

/// What an agent reports of its part in a live migration (protocol 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrationReport {
    /// The migration's target allocation (which migration this is about).
    pub target_alloc: AllocId,
    /// Source: how its workload runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_accel: Option<crate::vm::VmAccel>,
    /// Target: where it takes the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<MigrationIncoming>,
    /// Source: the stream so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<MigrationProgress>,
    /// Source: the stream completed (the source workload has ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<MigrationProgress>,
    /// Either side: why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Progress (or the final figures) of a live migration's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrationProgress {
    /// Bytes sent.
    pub transferred: u64,
    /// Bytes left.
    #[serde(default)]
    pub remaining: u64,
    /// Bytes of the workload's memory.
    #[serde(default)]
    pub total: u64,
    /// Pages dirtied per second.
    #[serde(default)]
    pub dirty_pages_rate: u64,
    /// The pause if the switch-over came now (progress) or the pause it
    /// was (completed), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Since the stream started, ms.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// How much auto-converge slows the guest now, percent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttle_pct: u64,
    /// The migration switched to post-copy (the target runs already).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_copy: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Measured usage of an allocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AllocUsage {
    /// CPU in use, MHz (averaged over the last sampling interval).
    pub cpu_mhz: u64,
    /// CPU time consumed in total, nanoseconds.
    pub cpu_total_ns: u64,
    /// Memory in use (cgroup usage minus page cache where the kernel tells).
    pub memory: ByteSize,
    /// Peak memory.
    pub memory_max: ByteSize,
    /// When measured.
    pub at: UnixMillis,
}

/// An allocation record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Allocation {
    /// Id.
    pub id: AllocId,
    /// Namespace of the job.
    pub namespace: String,
    /// Job name.
    pub job: String,
    /// Job version this allocation runs.
    pub job_version: u64,
    /// Job type.
    pub job_type: JobType,
    /// Job priority (for preemption).
    pub priority: u32,
    /// Task group name.
    pub group: String,
    /// `job.group[index]`.
    pub name: String,
    /// Index within the group (0..count).
    pub index: u32,
    /// The group spec this allocation runs (copied so the agent needs nothing else).
    /// Shared: a server holds one copy per job version and group, not one per
    /// allocation (on the wire it is the spec itself).
    pub group_spec: Arc<TaskGroupSpec>,
    /// Node it is placed on.
    pub node_id: NodeId,
    /// That node's name.
    pub node_name: String,
    /// Reserved resources (sum of the tasks').
    pub resources: Resources,
    /// Host ports held on the node (the group's `network.ports`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<AllocatedPort>,
    /// What the servers want.
    pub desired_status: DesiredStatus,
    /// Why (e.g. "alloc is being updated", "job stopped").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desired_description: String,
    /// What the agent observes.
    pub client_status: ClientStatus,
    /// Details of the client status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_description: String,
    /// Per-task state.
    #[serde(default)]
    pub task_states: BTreeMap<String, TaskState>,
    /// Last measured usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AllocUsage>,
    /// What happened to it as a whole (node lost and back, duplicate,
    /// fenced) and what was done to it through the API (audit), oldest
    /// first, the last [`MAX_ALLOC_EVENTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<AllocEvent>,
    /// The evaluation that placed it.
    pub eval_id: EvalId,
    /// The allocation it replaces (reschedule or update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_alloc: Option<AllocId>,
    /// Times of reschedules in this allocation's lineage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reschedule_times: Vec<UnixMillis>,
    /// A replacement has been placed for this (failed/lost) allocation.
    #[serde(default)]
    pub replaced: bool,
    /// Allocations this one evicted to make room for itself (preemption).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preempted_allocs: Vec<AllocId>,
    /// The allocation whose placement evicted this one (preemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_by: Option<AllocId>,
    /// A move the servers asked for; the job's next evaluation carries it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<MigrateRequest>,
    /// A live migration this allocation takes part in (as its source or
    /// its target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_migration: Option<LiveMigration>,
    /// The source agent's last report of the live migration (progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_status: Option<MigrationReport>,
    /// Creation time.
    pub create_time: UnixMillis,
    /// Last change time.
    pub modify_time: UnixMillis,
    /// Store index at creation.
    #[serde(default)]
    pub create_index: u64,
    /// Store index of the last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl Allocation {
    /// Whether `other` differs from `self` in what the servers decide
    /// (desired status, job version, node, group spec), as opposed to what
    /// the agent reports.
    pub fn server_side_differs(&self, other: &Allocation) -> bool {
        self.desired_status != other.desired_status
            || self.desired_description != other.desired_description
            || self.job_version != other.job_version
            || self.node_id != other.node_id
            || self.group_spec != other.group_spec
            || self.migrate != other.migrate
            || self.live_migration != other.live_migration
    }

    /// Whether this is the target of a live migration in progress (it does
    /// not count as an instance of its group until the migration is done).
    pub fn is_migration_target(&self) -> bool {
        self.live_migration
            .as_ref()
            .is_some_and(|m| m.target_alloc == self.id)
    }
    /// Whether this is the source of a live migration in progress.
    pub fn is_migration_source(&self) -> bool {
        self.live_migration
            .as_ref()
            .is_some_and(|m| m.source_alloc == self.id)
    }

    /// Desired to run and not terminal on the client: it holds resources.
    pub fn is_live(&self) -> bool {
        self.desired_status == DesiredStatus::Run && !self.client_status.is_terminal()
    }
    /// Still consuming node resources: not terminal on the client.
    pub fn holds_resources(&self) -> bool {
        !self.client_status.is_terminal()
    }
    /// When it started running (its tasks' latest start, else its last
    /// change); `None` unless the agent reports it running.
    pub fn running_since(&self) -> Option<UnixMillis> {
        (self.client_status == ClientStatus::Running).then(|| {
            self.task_states
                .values()
                .filter_map(|t| t.started_at)
                .max()
                .unwrap_or(self.modify_time)
        })
    }
    /// Record an event, keeping the last [`MAX_ALLOC_EVENTS`].
    pub fn push_event(&mut self, event: AllocEvent) {
        self.events.push(event);
        if self.events.len() > MAX_ALLOC_EVENTS {
            let extra = self.events.len() - MAX_ALLOC_EVENTS;
            self.events.drain(..extra);
        }
    }
    /// Memory reserved.
    pub fn memory(&self) -> ByteSize {
        self.resources.memory
    }
}
