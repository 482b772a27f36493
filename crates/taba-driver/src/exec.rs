//! The `exec` driver: a plain host process in its own cgroup (cpu, memory,
//! pids limits), run as the task's user with its env and working directory.
//! No filesystem or network isolation: for big-data and batch tasks that need
//! the host.

use crate::shimmed::Shimmed;
use crate::users::{self, UnknownUid};
use crate::{
    Capabilities, Driver, DriverError, ExitResult, IsolationPolicy, Recovered, TaskConfig,
    TaskHandle, TaskStats,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use taba_runtime::shim::exec::ExecSpec;
use taba_runtime::shim::{ProcessWorkload, Workload};
use taba_types::{DriverInfo, NetworkMode};

/// The `exec` driver.
pub struct ExecDriver {
    shim: Shimmed,
    policy: IsolationPolicy,
}

impl ExecDriver {
    /// Run shims with the `taba` binary at `exe`.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            shim: Shimmed::new(exe),
            policy: IsolationPolicy::default(),
        }
    }

    /// Grant what `policy` allows instead of the defaults.
    pub fn with_policy(mut self, policy: IsolationPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// The user a host process runs as when the task names none.
pub const DEFAULT_EXEC_USER: &str = "nobody";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn process_spec(
    cfg: &TaskConfig,
    policy: &IsolationPolicy,
    args: Vec<String>,
) -> Result<ProcessWorkload, DriverError> {
    // Host processes are not confined: never root unless asked and allowed.
    let user = cfg.task.user.as_deref().unwrap_or(DEFAULT_EXEC_USER);
    let users::ExecUser {
        uid,
        gid,
        additional_gids,
        ..
    } = users::resolve(Path::new("/"), Some(user), UnknownUid::GidOfSameNumber)?;
    if uid == 0 && !policy.allow_root_exec {
        return Err(DriverError::Start(format!(
            "user {user:?} is root, and this node forbids root host processes (agent option isolation.allow_root_exec)"
        )));
    }
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    env.push(format!("TABA_TASK_DIR={}", cfg.task_dir.display()));
    env.extend(cfg.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(cfg.task.env.iter().map(|(k, v)| format!("{k}={v}")));
    // The task dir is inside the agent's private (0700) data dir: only a
    // root task can work there; any other user starts in "/".
    let cwd = cfg
        .task
        .workdir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if uid == 0 {
                cfg.task_dir.clone()
            } else {
                PathBuf::from("/")
            }
        });
    Ok(ProcessWorkload {
        args,
        env,
        cwd: Some(cwd),
        uid,
        gid,
        additional_gids,
    })
}

impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            send_signals: true,
            exec: true,
            image_rootfs: false,
            network_modes: vec![NetworkMode::Host],
        }
    }

    fn fingerprint(&self) -> DriverInfo {
        match &self.shim.layout {
            Ok(_) => DriverInfo {
                detected: true,
                healthy: true,
                description: "host processes in cgroups".into(),
            },
            Err(e) => DriverInfo {
                detected: true,
                healthy: false,
                description: format!("cgroups not usable: {e}"),
            },
        }
    }

    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let spec = process_spec(cfg, &self.policy, cfg.task.command.clone())?;
        std::fs::create_dir_all(&cfg.task_dir).map_err(|source| DriverError::Io {
            path: cfg.task_dir.clone(),
            source,
        })?;
        let cg = self.shim.make_cgroup(cfg)?;
        match self
            .shim
            .spawn(self.name(), cfg, &cg, Workload::Process(spec), None)
        {
            Ok(h) => Ok(h),
            Err(e) => {
                let _ = cg.destroy();
                Err(e)
            }
        }
    }

    fn wait(&self, h: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.shim.wait(h)
    }

    fn stop(&self, h: &TaskHandle, signal: i32, timeout: Duration) -> Result<(), DriverError> {
        self.shim.stop(h, signal, timeout)
    }

    fn destroy(&self, h: &TaskHandle) -> Result<(), DriverError> {
        self.shim.destroy_cgroup(h)
    }

    fn inspect(&self, h: &TaskHandle) -> Result<bool, DriverError> {
        Ok(self.shim.inspect(h))
    }

    fn stats(&self, h: &TaskHandle) -> Result<TaskStats, DriverError> {
        self.shim.stats(h)
    }

    fn signal(&self, h: &TaskHandle, signal: i32) -> Result<(), DriverError> {
        self.shim.signal(h, signal)
    }

    fn exec_command(
        &self,
        h: &TaskHandle,
        exec: &crate::ExecOptions,
    ) -> Result<std::process::Command, DriverError> {
        if exec.user.is_some() {
            // A host process's user is a host account: choosing it is the
            // job's business (and needs the `host` capability there).
            return Err(DriverError::InvalidExec {
                field: "user",
                message: "only container tasks take a user for exec; an exec task's commands run as the task's own user".into(),
            });
        }
        let sc = taba_runtime::shim::read_config(&h.task_dir)?;
        let Workload::Process(p) = &sc.workload else {
            return Err(DriverError::Start("not an exec task".into()));
        };
        let mut spec = ExecSpec::for_process(p, exec.command.clone(), sc.cgroup_procs.clone());
        spec.tty = exec.tty;
        self.shim.exec_command(h, &spec)
    }

    fn recover(&self, h: &TaskHandle) -> Result<Recovered, DriverError> {
        self.shim.recover(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taba_types::{AllocId, TaskSpec};

    fn cfg(user: Option<&str>) -> TaskConfig {
        let mut task: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "t", "driver": "exec", "command": ["true"]
        }))
        .unwrap();
        task.user = user.map(str::to_string);
        TaskConfig {
            alloc_id: AllocId("a".into()),
            job: "j".into(),
            group: "g".into(),
            task,
            network_mode: NetworkMode::Host,
            task_dir: "/tmp/t".into(),
            log_dir: "/tmp/l".into(),
            log_max_bytes: 1,
            log_max_files: 1,
            cgroup: "taba/a/t".into(),
            env: Vec::new(),
        }
    }

    #[test]
    fn host_processes_run_as_nobody_unless_a_user_is_named() {
        let p = IsolationPolicy::default();
        let spec = process_spec(&cfg(None), &p, vec!["true".into()]).unwrap();
        assert_eq!((spec.uid, spec.gid), (65534, 65534));
        assert_eq!(spec.cwd.as_deref(), Some(Path::new("/")));
        let spec = process_spec(&cfg(Some("root")), &p, vec!["true".into()]).unwrap();
        assert_eq!(spec.uid, 0);
    }

    #[test]
    fn a_node_can_forbid_root_host_processes() {
        let p = IsolationPolicy {
            allow_root_exec: false,
            ..IsolationPolicy::default()
        };
        for user in ["root", "0", "0:0"] {
            let e = process_spec(&cfg(Some(user)), &p, vec!["true".into()]).unwrap_err();
            assert!(e.to_string().contains("forbids root host processes"), "{e}");
        }
        assert!(process_spec(&cfg(None), &p, vec!["true".into()]).is_ok());
    }

    #[test]
    fn cap_add_is_limited_by_the_node() {
        let p = IsolationPolicy::default();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let e = p.capabilities(&s(&["SYS_ADMIN"]), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("capability SYS_ADMIN is not allowed"),
            "{e}"
        );
        let caps = p.capabilities(&s(&["NET_RAW"]), &s(&["ALL"])).unwrap();
        assert_eq!(caps, vec!["NET_RAW"]);
        let open = IsolationPolicy {
            cap_add_allowed: s(&["SYS_PTRACE"]),
            ..IsolationPolicy::default()
        };
        assert!(open
            .capabilities(&s(&["sys_ptrace"]), &[])
            .unwrap()
            .contains(&"SYS_PTRACE"));
        assert!(open.capabilities(&s(&["ALL"]), &[]).is_err());
    }
}
