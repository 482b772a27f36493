//! Jobs as users write them (`JobSpec`, `TaskGroupSpec`, `TaskSpec`) and the
//! record the control plane keeps for each registered version (`Job`).
//!
//! Field names follow the job file: `[[group]]` and `[[group.task]]` in TOML,
//! `group` and `task` arrays in JSON. Unknown fields are rejected so typos are
//! caught at submission.

use crate::placement::{Affinity, Scoring, Spread};
use crate::units::{ByteSize, DurationSpec};
use crate::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What kind of job: keep `count` running, run to completion, or one per node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Long-running; keep `count` instances running.
    #[default]
    Service,
    /// Run to completion; record exit codes; retry per policy.
    Batch,
    /// One instance per eligible node.
    System,
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobType::Service => "service",
            JobType::Batch => "batch",
            JobType::System => "system",
        })
    }
}

/// A job as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name within its namespace.
    pub name: String,
    /// Job type.
    #[serde(rename = "type", default)]
    pub job_type: JobType,
    /// Namespace (quotas and fair share are per namespace).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// 1 (lowest) to 100 (highest); 50 by default.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Constraints every task of the job must satisfy.
    #[serde(default, rename = "constraint", skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How nodes are ranked: `binpack` (default) or `spread`.
    #[serde(default, skip_serializing_if = "Scoring::is_binpack")]
    pub scoring: Scoring,
    /// Spreads every group of the job follows (a group's own add to these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<Spread>,
    /// Affinities of every group of the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<Affinity>,
    /// How updates replace allocations.
    #[serde(default)]
    pub update: UpdatePolicy,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Task groups.
    #[serde(default, rename = "group")]
    pub groups: Vec<TaskGroupSpec>,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_priority() -> u32 {
    50
}

/// Rolling update settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// How many allocations of a group are replaced at once.
    #[serde(default = "one")]
    pub max_parallel: u32,
    /// How long a new allocation must run before the next batch proceeds.
    #[serde(default = "default_min_healthy")]
    pub min_healthy_time: DurationSpec,
}

fn one() -> u32 {
    1
}
fn default_min_healthy() -> DurationSpec {
    DurationSpec(1000)
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            max_parallel: 1,
            min_healthy_time: default_min_healthy(),
        }
    }
}

/// A set of tasks placed together on one node, `count` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskGroupSpec {
    /// Unique name within the job.
    pub name: String,
    /// Number of instances (ignored for system jobs).
    #[serde(default = "one")]
    pub count: u32,
    /// Constraints for this group.
    #[serde(default, rename = "constraint", skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Spreads of this group, added to the job's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<Spread>,
    /// Affinities of this group, added to the job's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<Affinity>,
    /// Restart policy for tasks on their node; defaults by job type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// Reschedule policy for failed allocations; defaults by job type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reschedule: Option<ReschedulePolicy>,
    /// Networking for the group's tasks.
    #[serde(default)]
    pub network: NetworkSpec,
    /// How allocations move between nodes (rebalancing, node drains).
    #[serde(default)]
    pub migrate: MigratePolicy,
    /// Fencing: an agent that has not reached any server for this long
    /// stops the group's allocations itself (they are reported `lost`), and
    /// the servers place their replacements only after that time (plus the
    /// tasks' kill timeout) has passed since the node's last heartbeat, so a
    /// partitioned node and its replacement never run the same instance at
    /// once. Unset: allocations keep running while disconnected, and a
    /// returning duplicate is stopped by the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_disconnect: Option<DurationSpec>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// The tasks.
    #[serde(default, rename = "task")]
    pub tasks: Vec<TaskSpec>,
}

impl TaskGroupSpec {
    /// Whether the group's allocations move live (one task, on the `vm`
    /// driver, the one driver with live migration); others move by a
    /// restart elsewhere.
    pub fn migrates_live(&self) -> bool {
        self.tasks.len() == 1 && self.tasks[0].driver == "vm"
    }
    /// Whether the group runs VMs with local disks (lost with their node).
    pub fn has_local_disks(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| t.driver == "vm" && (!t.disks.is_empty() || t.boot_disk.is_some()))
    }
    /// The restart policy in force: the group's, or the default for `job_type`.
    pub fn restart_policy(&self, job_type: JobType) -> RestartPolicy {
        self.restart
            .clone()
            .unwrap_or_else(|| RestartPolicy::default_for(job_type))
    }
    /// The reschedule policy in force.
    pub fn reschedule_policy(&self, job_type: JobType) -> ReschedulePolicy {
        self.reschedule
            .clone()
            .unwrap_or_else(|| ReschedulePolicy::default_for(job_type))
    }
    /// Sum of the group's task resources.
    pub fn total_resources(&self) -> Resources {
        let mut r = Resources::zero();
        for t in &self.tasks {
            r.add(&t.resources);
        }
        r
    }
}

/// How a group's allocations are moved to other nodes by the servers (the
/// rebalancer and node drains; `alloc migrate` will use the same policy).
/// A move of a container or exec allocation is a restart elsewhere: the
/// replacement is placed and the old allocation stopped in one plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigratePolicy {
    /// Disruption budget: allocations of the group moving at once (a moved
    /// allocation counts until its replacement has run `min_healthy_time`).
    #[serde(default = "one")]
    pub max_parallel: u32,
    /// How long a replacement must run before it stops counting as moving.
    #[serde(default = "default_migrate_healthy")]
    pub min_healthy_time: DurationSpec,
    /// Whether the rebalancer may move the group's allocations off hot nodes.
    #[serde(default = "yes")]
    pub rebalance: bool,
    /// What a node drain does with the group's allocations; the default
    /// depends on the job type (see [`MigratePolicy::moves_on_drain`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainMode>,
    /// Live migration (VMs): the longest pause of the guest at the
    /// switch-over the migration aims for.
    #[serde(default = "default_max_downtime")]
    pub max_downtime: DurationSpec,
    /// Live migration: cancelled after this (the source keeps running).
    #[serde(default = "default_migrate_timeout")]
    pub timeout: DurationSpec,
    /// Live migration: slow the guest down when it dirties memory faster
    /// than the stream moves it.
    #[serde(default = "yes")]
    pub auto_converge: bool,
    /// Live migration: bytes per second the stream may use (0: no cap).
    #[serde(default)]
    pub max_bandwidth: ByteSize,
    /// Live migration: when pre-copy does not converge (after its first
    /// pass and a quarter of `timeout`), switch to post-copy: the guest runs
    /// on the target at once and fetches the memory still missing from
    /// the source. Off by default: after the switch a failure of the
    /// target or the network loses the VM, and cancel is no longer possible.
    #[serde(default)]
    pub post_copy: bool,
    /// VMs with local disks: whether the servers restart them elsewhere
    /// (from their base images, the disks' changes lost) when their node is
    /// lost. Off by default: such a VM waits for its node to come back.
    #[serde(default)]
    pub restart_on_node_loss: bool,
}

/// What a node drain does with a group's allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// Move them to other nodes, `max_parallel` at a time (services' default).
    Move,
    /// Let them run to completion on the draining node; the drain's
    /// deadline stops what is left (batch jobs' default, as in Nomad).
    Wait,
}

impl MigratePolicy {
    /// Whether a drain moves this group's allocations (`true`) or waits for
    /// them to finish until its deadline (`false`). System jobs are never
    /// moved: a drain stops them last (or leaves them, `--ignore-system`).
    pub fn moves_on_drain(&self, job_type: JobType) -> bool {
        match (job_type, self.drain) {
            (JobType::System, _) => false,
            (_, Some(mode)) => mode == DrainMode::Move,
            (JobType::Batch, None) => false,
            (JobType::Service, None) => true,
        }
    }
}

fn default_migrate_healthy() -> DurationSpec {
    DurationSpec::secs(10)
}
fn default_max_downtime() -> DurationSpec {
    DurationSpec(100)
}
fn default_migrate_timeout() -> DurationSpec {
    DurationSpec::secs(600)
}
fn yes() -> bool {
    true
}

impl Default for MigratePolicy {
    fn default() -> Self {
        Self {
            max_parallel: 1,
            min_healthy_time: default_migrate_healthy(),
            rebalance: true,
            drain: None,
            max_downtime: default_max_downtime(),
            timeout: default_migrate_timeout(),
            auto_converge: true,
            max_bandwidth: ByteSize(0),
            post_copy: false,
            restart_on_node_loss: false,
        }
    }
}

/// What happens when the restart budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    /// Mark the task failed (the allocation may be rescheduled elsewhere).
    Fail,
    /// Wait until the interval has passed, then restart again.
    Delay,
}

/// Restarts of a task on the same node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// Restarts allowed within `interval`.
    pub attempts: u32,
    /// The window in which `attempts` are counted.
    pub interval: DurationSpec,
    /// Wait before each restart.
    pub delay: DurationSpec,
    /// What to do when attempts are exhausted.
    pub mode: RestartMode,
}

impl RestartPolicy {
    /// Nomad's defaults: services 2 in 30m, batch 3 in 24h, 15s delay, fail.
    pub fn default_for(job_type: JobType) -> Self {
        match job_type {
            JobType::Batch => Self {
                attempts: 3,
                interval: DurationSpec::secs(24 * 3600),
                delay: DurationSpec::secs(15),
                mode: RestartMode::Fail,
            },
            JobType::Service | JobType::System => Self {
                attempts: 2,
                interval: DurationSpec::secs(30 * 60),
                delay: DurationSpec::secs(15),
                mode: RestartMode::Fail,
            },
        }
    }
}

/// Replacement of failed allocations on other nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReschedulePolicy {
    /// Reschedules allowed within `interval` (ignored when `unlimited`).
    #[serde(default)]
    pub attempts: u32,
    /// The window in which `attempts` are counted.
    #[serde(default = "default_resched_interval")]
    pub interval: DurationSpec,
    /// Wait before a replacement is placed.
    #[serde(default = "default_resched_delay")]
    pub delay: DurationSpec,
    /// Reschedule without limit.
    #[serde(default)]
    pub unlimited: bool,
}

fn default_resched_interval() -> DurationSpec {
    DurationSpec::secs(3600)
}
fn default_resched_delay() -> DurationSpec {
    DurationSpec::secs(30)
}

impl ReschedulePolicy {
    /// Services reschedule without limit after 30s; batch once a day; system never.
    pub fn default_for(job_type: JobType) -> Self {
        match job_type {
            JobType::Service => Self {
                attempts: 0,
                interval: DurationSpec(0),
                delay: DurationSpec::secs(30),
                unlimited: true,
            },
            JobType::Batch => Self {
                attempts: 1,
                interval: DurationSpec::secs(24 * 3600),
                delay: DurationSpec::secs(5),
                unlimited: false,
            },
            JobType::System => Self {
                attempts: 0,
                interval: DurationSpec(0),
                delay: DurationSpec(0),
                unlimited: false,
            },
        }
    }
}

/// Network mode of a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A private network namespace with only loopback.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A namespace on the node's bridge (not available yet).
    Bridge,
}

/// Networking of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Network mode; `none` unless set. Exec tasks always use the host's.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Host ports the group's allocations hold (static or dynamic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::ports::PortSpec>,
}

/// One process (or container, or VM) of a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique name within the group.
    pub name: String,
    /// `exec`, `container`, `system` or `vm`.
    pub driver: String,
    /// Image reference (container drivers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replaces the image's entrypoint (container drivers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The command and its arguments (exec), or the image's cmd replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables, added to the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// User to run as (`name`, `uid` or `uid:gid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Hostname inside the container (container drivers). Default: the
    /// first 12 characters of the allocation id, or the node's hostname
    /// with the host's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Resources reserved for the task and enforced as limits.
    #[serde(default)]
    pub resources: Resources,
    /// Constraints for this task.
    #[serde(default, rename = "constraint", skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Affinities of this task, added to its group's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<Affinity>,
    /// Signal sent to stop the task. Unset: the image's `STOPSIGNAL`
    /// (container drivers), else SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_signal: Option<String>,
    /// Time between the stop signal and SIGKILL.
    #[serde(default = "default_kill_timeout")]
    pub kill_timeout: DurationSpec,
    /// Capabilities added to Docker's default set (container drivers;
    /// `"NET_ADMIN"`, `"CAP_SYS_PTRACE"`, `"ALL"`). The node must allow
    /// them (agent option `cap_add_allowed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set (`"ALL"` removes all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Resource limits by rlimit name (`nofile = "1024:4096"`, `core = "0"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, String>,
    /// Setuid binaries and file capabilities do not raise privileges.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// A user namespace of its own (container driver): `"auto"` gives the
    /// allocation a range of unprivileged host ids, its root is not the
    /// host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_namespace: Option<UserNamespaceMode>,
    /// Virtual CPUs (vm driver; 1 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Kernel to boot directly (vm driver): a file in the node's VM image
    /// directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initial ramdisk of the kernel (vm driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line (vm driver); `console=ttyS0` is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Machine type (vm driver): `microvm` (default) or `q35`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<crate::vm::VmMachine>,
    /// Acceleration (vm driver): `kvm` or `tcg`; unset, the node decides
    /// (KVM where its probe boots a guest, else TCG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<crate::vm::VmAccel>,
    /// Disks (vm driver): qcow2 overlays on base images, or blank disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<crate::vm::VmDisk>,
    /// Network of the VM (vm driver): `none` (default) or `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::vm::VmNetwork>,
    /// The disk the firmware boots (vm driver), instead of `kernel`: a
    /// qcow2 overlay of the allocation on a base image (`"debian.qcow2"`
    /// or `{ image = "...", size = "8GiB" }`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::vm::deserialize_boot_disk"
    )]
    pub boot_disk: Option<crate::vm::VmDisk>,
    /// Firmware of a `boot_disk` boot (vm driver): `bios` (SeaBIOS, the
    /// default) or `uefi` (OVMF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<crate::vm::VmFirmware>,
    /// cloud-init `user-data` (vm driver): given to the guest on a NoCloud
    /// seed disk labelled `cidata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Extra cloud-init `meta-data` lines (vm driver); `instance-id` and
    /// `local-hostname` are set unless given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    /// cloud-init `network-config` (vm driver), on the seed disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

/// `user_namespace` of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum UserNamespaceMode {
    /// A host id range picked by the agent, disjoint from every other
    /// allocation's on the node.
    Auto,
}

fn default_kill_timeout() -> DurationSpec {
    DurationSpec::secs(5)
}

/// Compute resources. `cpu` is in MHz (as Nomad); memory and disk in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU share in MHz.
    #[serde(default = "default_cpu")]
    pub cpu: u64,
    /// Memory, a hard limit.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Scratch disk reserved on the node.
    #[serde(default)]
    pub disk: ByteSize,
    /// Maximum number of processes.
    #[serde(default = "default_pids")]
    pub pids: u64,
}

fn default_cpu() -> u64 {
    100
}
fn default_memory() -> ByteSize {
    ByteSize::mib(256)
}
fn default_pids() -> u64 {
    1024
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: default_cpu(),
            memory: default_memory(),
            disk: ByteSize(0),
            pids: default_pids(),
        }
    }
}

impl Resources {
    /// No resources at all.
    pub fn zero() -> Self {
        Self {
            cpu: 0,
            memory: ByteSize(0),
            disk: ByteSize(0),
            pids: 0,
        }
    }
    /// Add `o` to `self`, saturating.
    pub fn add(&mut self, o: &Resources) {
        self.cpu = self.cpu.saturating_add(o.cpu);
        self.memory = ByteSize(self.memory.0.saturating_add(o.memory.0));
        self.disk = ByteSize(self.disk.0.saturating_add(o.disk.0));
        self.pids = self.pids.saturating_add(o.pids);
    }
    /// Subtract `o` from `self`, saturating at zero.
    pub fn sub(&mut self, o: &Resources) {
        self.cpu = self.cpu.saturating_sub(o.cpu);
        self.memory = ByteSize(self.memory.0.saturating_sub(o.memory.0));
        self.disk = ByteSize(self.disk.0.saturating_sub(o.disk.0));
        self.pids = self.pids.saturating_sub(o.pids);
    }
    /// The first dimension (`cpu`, `memory`, `disk`) where `self` exceeds `cap`.
    pub fn exceeds(&self, cap: &Resources) -> Option<&'static str> {
        if self.cpu > cap.cpu {
            Some("cpu")
        } else if self.memory > cap.memory {
            Some("memory")
        } else if self.disk > cap.disk {
            Some("disk")
        } else {
            None
        }
    }
}

/// A constraint on node attributes: `attribute operator value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// Left-hand side, usually an interpolation: `${node.name}`,
    /// `${node.id}`, `${attr.kernel.version}`, `${meta.rack}`.
    #[serde(default)]
    pub attribute: String,
    /// The comparison.
    #[serde(default)]
    pub operator: ConstraintOperator,
    /// Right-hand side (may also be an interpolation).
    #[serde(default)]
    pub value: String,
}

/// Constraint operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ConstraintOperator {
    /// Equal (string).
    #[default]
    #[serde(rename = "=", alias = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Less than (numeric when both sides parse as numbers, else lexical).
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// The attribute matches the regular expression `value`.
    #[serde(rename = "regexp")]
    Regexp,
    /// The attribute, a version, satisfies the requirement `value` (">= 6.0, < 7").
    #[serde(rename = "version", alias = "semver")]
    Version,
    /// The attribute, a comma-separated set, contains every item of `value`.
    #[serde(rename = "set_contains")]
    SetContains,
    /// No two allocations of the job (or group) on one node.
    #[serde(rename = "distinct_hosts")]
    DistinctHosts,
    /// At most `value` (default 1) allocations per distinct value of the attribute.
    #[serde(rename = "distinct_property")]
    DistinctProperty,
    /// The attribute is set.
    #[serde(rename = "is_set")]
    IsSet,
    /// The attribute is not set.
    #[serde(rename = "is_not_set")]
    IsNotSet,
}

impl fmt::Display for ConstraintOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Regexp => "regexp",
            Self::Version => "version",
            Self::SetContains => "set_contains",
            Self::DistinctHosts => "distinct_hosts",
            Self::DistinctProperty => "distinct_property",
            Self::IsSet => "is_set",
            Self::IsNotSet => "is_not_set",
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.attribute, self.operator, self.value)
    }
}

/// The lifecycle of a registered job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Registered, nothing running yet.
    #[default]
    Pending,
    /// At least one allocation is running or pending.
    Running,
    /// Stopped, or every allocation has finished.
    Dead,
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Dead => "dead",
        })
    }
}

/// A registered job version as the control plane stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Job {
    /// The spec as submitted (after defaults).
    pub spec: JobSpec,
    /// Starts at 0; a changed spec makes a new version.
    pub version: u64,
    /// Observed status.
    pub status: JobStatus,
    /// Set by `job stop`.
    pub stopped: bool,
    /// When this version was submitted.
    pub submit_time: UnixMillis,
    /// Store index at creation of the job (version 0).
    pub create_index: u64,
    /// Store index of the last change.
    pub modify_index: u64,
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// Look up a group by name.
    pub fn group(&self, name: &str) -> Option<&TaskGroupSpec> {
        self.spec.groups.iter().find(|g| g.name == name)
    }
}
