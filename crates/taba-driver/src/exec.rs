//! The `exec` driver: a plain host process in its own cgroup (cpu, memory,
//! pids limits), run as the task's user with its env and working directory.
//! No filesystem or network isolation: for big-data and batch tasks that need
//! the host.

use crate::shimmed::{resolve_user, Shimmed};
use crate::{
    Capabilities, Driver, DriverError, ExitResult, Recovered, TaskConfig, TaskHandle, TaskStats,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use taba_runtime::shim::exec::ExecSpec;
use taba_runtime::shim::{ProcessWorkload, Workload};
use taba_types::{DriverInfo, NetworkMode};

/// The `exec` driver.
pub struct ExecDriver {
    shim: Shimmed,
}

impl ExecDriver {
    /// Run shims with the `taba` binary at `exe`.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            shim: Shimmed::new(exe),
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn process_spec(cfg: &TaskConfig, args: Vec<String>) -> Result<ProcessWorkload, DriverError> {
    let (uid, gid, additional_gids) = match &cfg.task.user {
        Some(u) => resolve_user(Path::new("/"), u)?,
        None => (0, 0, Vec::new()),
    };
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    env.push(format!("TABA_TASK_DIR={}", cfg.task_dir.display()));
    env.extend(cfg.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.extend(cfg.task.env.iter().map(|(k, v)| format!("{k}={v}")));
    let cwd = cfg
        .task
        .workdir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.task_dir.clone());
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
        let spec = process_spec(cfg, cfg.task.command.clone())?;
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
        cmd: &[String],
    ) -> Result<std::process::Command, DriverError> {
        let sc = taba_runtime::shim::read_config(&h.task_dir)?;
        let Workload::Process(p) = &sc.workload else {
            return Err(DriverError::Start("not an exec task".into()));
        };
        let spec = ExecSpec::for_process(p, cmd.to_vec(), sc.cgroup_procs.clone());
        self.shim.exec_command(h, &spec)
    }

    fn recover(&self, h: &TaskHandle) -> Result<Recovered, DriverError> {
        self.shim.recover(h)
    }
}
