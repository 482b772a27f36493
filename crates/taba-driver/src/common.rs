//! What every driver shares: the trait, task configuration and handles.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use taba_types::{AllocId, DriverInfo, NetworkMode, TaskSpec, UnixMillis};

/// Errors from drivers.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The task could not be started; the message says why.
    #[error("start failed: {0}")]
    Start(String),
    /// The image the task names is not in the node's image store.
    #[error("image {0:?} not found in this node's image store (agents fetch images from the servers; is it imported there with `taba image import`?)")]
    ImageNotFound(String),
    /// Cgroup setup or control failed.
    #[error("cgroup")]
    Cgroup(#[from] taba_cgroups::CgroupError),
    /// The image store failed.
    #[error("image store")]
    Image(#[from] taba_image::ImageError),
    /// The task shim failed.
    #[error("task shim")]
    Shim(#[from] taba_runtime::shim::ShimError),
    /// Building the container bundle failed.
    #[error("bundle: {0}")]
    Bundle(String),
    /// A file of the task could not be read or written.
    #[error("{path}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `vm` driver failed.
    #[error("vm")]
    Vm(#[from] crate::vm::VmError),
    /// The operation is not supported by this driver.
    #[error("{0} is not supported by this driver")]
    Unsupported(&'static str),
    /// An exec request names something the task cannot give (a user its
    /// image does not know, a tty where none can be made).
    #[error("{field}: {message}")]
    InvalidExec {
        /// The request field at fault (`user`, `tty`).
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// What `taba alloc exec` runs inside a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Run as this user (resolved in the task's own passwd and group
    /// files, as the task's user is); `None`: the task's own user.
    pub user: Option<String>,
    /// Run in a pseudo-terminal made in the task's namespaces; the exec
    /// process then relays it (see `taba_runtime::shim::exec`).
    pub tty: Option<(u16, u16)>,
}

impl ExecOptions {
    /// Run `command` as the task's user, without a terminal.
    pub fn command(command: &[String]) -> Self {
        Self {
            command: command.to_vec(),
            ..Default::default()
        }
    }
}

/// What a node grants workloads, from the agent's configuration
/// (`[isolation]` of the agent file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolationPolicy {
    /// Capabilities a task may add with `cap_add` (canonical names, without
    /// `CAP_`). Default: Docker's default set, so `cap_add` can only restore
    /// what a `cap_drop` removed, as Nomad's `allow_caps`.
    pub cap_add_allowed: Vec<String>,
    /// Whether `exec` tasks may run as root (they must name `user = "root"`;
    /// without a user they run as `nobody`).
    pub allow_root_exec: bool,
    /// Host id ranges for tasks with `user_namespace = "auto"`.
    pub userns: crate::userns::UsernsConfig,
}

impl Default for IsolationPolicy {
    fn default() -> Self {
        Self {
            cap_add_allowed: taba_types::security::DEFAULT_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            allow_root_exec: true,
            userns: crate::userns::UsernsConfig::default(),
        }
    }
}

impl IsolationPolicy {
    /// Check the capabilities a task asks for against the allow-list;
    /// returns the canonical names of its whole set.
    pub fn capabilities(
        &self,
        add: &[String],
        drop: &[String],
    ) -> Result<Vec<&'static str>, DriverError> {
        let allowed = |c: &str| {
            self.cap_add_allowed.iter().any(|a| {
                a.eq_ignore_ascii_case("ALL") || taba_types::security::capability(a) == Some(c)
            })
        };
        for (i, a) in add.iter().enumerate() {
            let wanted: Vec<&str> = if a.eq_ignore_ascii_case("ALL") {
                taba_types::security::CAPABILITIES.to_vec()
            } else {
                taba_types::security::capability(a).into_iter().collect()
            };
            if wanted.is_empty() {
                return Err(DriverError::Start(format!(
                    "cap_add[{i}]: unknown capability {a:?}"
                )));
            }
            if let Some(c) = wanted.iter().find(|c| !allowed(c)) {
                return Err(DriverError::Start(format!(
                    "cap_add[{i}]: capability {c} is not allowed on this node (agent option isolation.cap_add_allowed)"
                )));
            }
        }
        Ok(taba_types::security::effective_capabilities(add, drop))
    }
}

/// What a driver can do.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// Signals can be delivered to the task.
    pub send_signals: bool,
    /// Commands can be run inside the task's environment.
    pub exec: bool,
    /// The task gets its own root filesystem from an image.
    pub image_rootfs: bool,
    /// Network modes the driver supports.
    pub network_modes: Vec<NetworkMode>,
}

/// Everything a driver needs to start one task.
#[derive(Clone, Debug)]
pub struct TaskConfig {
    /// The allocation.
    pub alloc_id: AllocId,
    /// Job name (for labels and hostnames).
    pub job: String,
    /// Group name.
    pub group: String,
    /// The task as specified.
    pub task: TaskSpec,
    /// Network mode of the group.
    pub network_mode: NetworkMode,
    /// The task's private directory (shim files, bundle).
    pub task_dir: PathBuf,
    /// Where logs go (shared by the allocation's tasks).
    pub log_dir: PathBuf,
    /// Largest log file before rotation.
    pub log_max_bytes: u64,
    /// Rotated log files kept per stream.
    pub log_max_files: u32,
    /// Relative cgroup path, e.g. `taba/<alloc>/<task>`.
    pub cgroup: String,
    /// Extra environment (TABA_ALLOC_ID, ...), applied before the task's own.
    pub env: Vec<(String, String)>,
}

/// A started task, persisted by the agent so it can re-attach after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHandle {
    /// Format version of this record.
    pub version: u32,
    /// The driver that started it.
    pub driver: String,
    /// The task's private directory.
    pub task_dir: PathBuf,
    /// Relative cgroup path.
    pub cgroup: String,
    /// Host pid of the workload.
    pub pid: u32,
    /// Start time of that pid (field 22 of /proc/PID/stat), against pid reuse.
    pub pid_start_time: u64,
    /// Host pid of the shim.
    pub shim_pid: u32,
    /// When it started.
    pub started_at: UnixMillis,
    /// Root filesystem mounted for it, to release on destroy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_dir: Option<PathBuf>,
    /// The signal that stops it when the job names none (an image's
    /// `STOPSIGNAL`); `None`: SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
}

/// How a task ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitResult {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal, when it was killed by one.
    pub signal: Option<i32>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// It never started; why.
    pub start_error: Option<String>,
    /// When it ended.
    pub finished_at: UnixMillis,
}

impl ExitResult {
    /// Exited 0 without a signal.
    pub fn successful(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none() && !self.oom_killed
    }
    /// One line for task events: "exit code 1", "killed by signal 9", "OOM killed".
    pub fn describe(&self) -> String {
        if let Some(e) = &self.start_error {
            return format!("failed to start: {e}");
        }
        if self.oom_killed {
            return "OOM killed".into();
        }
        match (self.exit_code, self.signal) {
            (_, Some(s)) => format!("killed by signal {s}"),
            (Some(c), None) => format!("exit code {c}"),
            (None, None) => "ended".into(),
        }
    }
}

/// Resource usage of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, bytes.
    pub memory: u64,
    /// Peak memory, bytes.
    pub memory_max: u64,
}

/// What recovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// Still running; keep waiting on it.
    Running,
    /// Ended while nobody watched.
    Exited(ExitResult),
}

/// A workload driver.
pub trait Driver: Send + Sync {
    /// `exec`, `container`, ...
    fn name(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Whether it works on this host.
    fn fingerprint(&self) -> DriverInfo;
    /// Start the task; returns once the workload runs.
    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError>;
    /// Block until the task ends.
    fn wait(&self, handle: &TaskHandle) -> Result<ExitResult, DriverError>;
    /// Send `signal`; after `timeout`, kill everything left in the task.
    fn stop(&self, handle: &TaskHandle, signal: i32, timeout: Duration) -> Result<(), DriverError>;
    /// Release everything the task holds (cgroups, mounts). The task must have ended.
    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError>;
    /// Whether the task is still running.
    fn inspect(&self, handle: &TaskHandle) -> Result<bool, DriverError>;
    /// Resource usage.
    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError>;
    /// Deliver a signal to the task's main process.
    fn signal(&self, handle: &TaskHandle, signal: i32) -> Result<(), DriverError>;
    /// Prepare a command to run inside the task's environment; the caller
    /// sets up stdio and spawns it.
    fn exec_command(
        &self,
        handle: &TaskHandle,
        exec: &ExecOptions,
    ) -> Result<std::process::Command, DriverError>;
    /// Re-attach after an agent restart.
    fn recover(&self, handle: &TaskHandle) -> Result<Recovered, DriverError>;
    /// The images of the node's image store `task` needs, which the agent
    /// fetches from the servers when the node lacks them: the container
    /// image of drivers that run images; the disk images of a VM.
    fn store_images(&self, task: &taba_types::TaskSpec) -> Vec<String> {
        match &task.image {
            Some(i) if self.capabilities().image_rootfs => vec![i.clone()],
            _ => Vec::new(),
        }
    }
    /// The unix socket of the task's console (`taba alloc console`): what
    /// is written to it goes to the workload's stdin, the workload's output
    /// comes back (`taba_runtime::shim::console`). Only VMs have one.
    fn console_socket(&self, _handle: &TaskHandle) -> Result<PathBuf, DriverError> {
        Err(DriverError::Unsupported("a console"))
    }

    /// The driver's live migration, if it can move a running task
    /// ([`crate::migrate::Migratable`]); `None` by default.
    fn migratable(&self) -> Option<&dyn crate::migrate::Migratable> {
        None
    }
}

pub use taba_types::now_ms;
