//! What the `exec` and `container` drivers share: a cgroup per task run made
//! by the driver, and a task shim (`taba shim run`) that starts the workload
//! in it, keeps its logs and records its exit.

use crate::{now_ms, DriverError, ExitResult, Recovered, TaskConfig, TaskHandle, TaskStats};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taba_cgroups::{AnyCgroup, Layout, Limits};
use taba_runtime::shim::{self, ShimConfig, ShimState, Workload};

/// Current format version of [`TaskHandle`].
pub const HANDLE_VERSION: u32 = 1;

/// Cgroups and shims of one driver.
pub struct Shimmed {
    /// The `taba` binary that runs shims.
    pub exe: PathBuf,
    /// The host's cgroup layout, if usable.
    pub layout: Result<Layout, String>,
    /// Shims keep a console (`taba_runtime::shim::console`).
    pub console: bool,
}

impl Shimmed {
    /// For `exe` on this host.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            layout: Layout::detect().map_err(|e| e.to_string()),
            console: false,
        }
    }

    /// Shims of this driver keep a console: the workload's stdin and a
    /// copy of its output on `console.sock` in the task directory.
    pub fn with_console(mut self) -> Self {
        self.console = true;
        self
    }

    /// The console socket of a running task, if its shim keeps one.
    pub fn console_socket(&self, h: &TaskHandle) -> Result<PathBuf, DriverError> {
        if !self.console {
            return Err(DriverError::Unsupported("a console"));
        }
        if !self.alive(h) {
            return Err(DriverError::Start("the task is not running".into()));
        }
        let p = h.task_dir.join(shim::console::CONSOLE_SOCKET);
        if !p.exists() {
            return Err(DriverError::Unsupported(
                "a console (the task was started before consoles existed)",
            ));
        }
        Ok(p)
    }

    fn layout(&self) -> Result<&Layout, DriverError> {
        self.layout
            .as_ref()
            .map_err(|e| DriverError::Start(format!("cgroups are not usable on this host: {e}")))
    }

    /// Create the task's cgroup with the task's limits.
    pub fn make_cgroup(&self, cfg: &TaskConfig) -> Result<AnyCgroup, DriverError> {
        let layout = self.layout()?;
        // A fresh cgroup per run: counters such as v1's oom_kill cannot be
        // reset, and a previous run's must not be blamed on this one.
        layout.destroy(&cfg.cgroup)?;
        let cg = layout.create(&cfg.cgroup)?;
        let r = &cfg.task.resources;
        cg.apply(&Limits {
            cpu_mhz: r.cpu,
            cpu_max_cores: None,
            memory_bytes: r.memory.0,
            pids_max: r.pids,
        })?;
        Ok(cg)
    }

    /// Write `shim.json` and start the shim; returns the handle once the
    /// workload runs.
    pub fn spawn(
        &self,
        driver: &str,
        cfg: &TaskConfig,
        cg: &AnyCgroup,
        workload: Workload,
        rootfs_dir: Option<PathBuf>,
    ) -> Result<TaskHandle, DriverError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DriverError::Io { path, source }
        };
        std::fs::create_dir_all(&cfg.task_dir).map_err(io(&cfg.task_dir))?;
        std::fs::create_dir_all(&cfg.log_dir).map_err(io(&cfg.log_dir))?;
        // Files of a previous run must not be mistaken for this one's.
        for f in ["exit.json", "state.json"] {
            let p = cfg.task_dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        let sc = ShimConfig {
            version: shim::SHIM_FILES_VERSION,
            workload,
            cgroup_procs: cg.procs_files(),
            log_dir: cfg.log_dir.clone(),
            log_name: cfg.task.name.clone(),
            log_max_bytes: cfg.log_max_bytes,
            log_max_files: cfg.log_max_files,
            console: self.console,
        };
        shim::write_config(&cfg.task_dir, &sc)?;
        let started = shim::spawn(&self.exe, &cfg.task_dir)?;
        let pid_start_time = shim::read_state(&cfg.task_dir)?
            .map(|s| s.pid_start_time)
            .unwrap_or(0);
        Ok(TaskHandle {
            version: HANDLE_VERSION,
            driver: driver.to_string(),
            task_dir: cfg.task_dir.clone(),
            cgroup: cfg.cgroup.clone(),
            pid: started.pid as u32,
            pid_start_time,
            shim_pid: started.shim_pid as u32,
            started_at: started.started_at,
            rootfs_dir,
            stop_signal: None,
        })
    }

    fn cgroup(&self, h: &TaskHandle) -> Option<AnyCgroup> {
        self.layout.as_ref().ok()?.open(&h.cgroup).ok()
    }

    fn exit_result(&self, h: &TaskHandle, st: shim::ExitStatus) -> ExitResult {
        let oom = self.cgroup(h).map(|c| c.oom_killed()).unwrap_or(false);
        ExitResult {
            exit_code: st.exit_code,
            signal: st.signal,
            // The cgroup is fresh for every run, so its OOM counter is this run's.
            oom_killed: oom,
            start_error: st.start_error,
            finished_at: if st.finished_at > 0 {
                st.finished_at
            } else {
                now_ms()
            },
        }
    }

    /// Block until the workload ends.
    pub fn wait(&self, h: &TaskHandle) -> Result<ExitResult, DriverError> {
        let st = shim::wait_exit(&h.task_dir, h.shim_pid as i32)?;
        Ok(self.exit_result(h, st))
    }

    /// The shim's record of the running workload, if it is this handle's.
    fn state(&self, h: &TaskHandle) -> Option<ShimState> {
        shim::read_state(&h.task_dir)
            .ok()
            .flatten()
            .filter(|s| s.pid as u32 == h.pid)
    }

    fn alive(&self, h: &TaskHandle) -> bool {
        self.state(h).is_some_and(|s| shim::is_alive(&s))
    }

    /// Signal, then kill the whole cgroup after `timeout`.
    pub fn stop(&self, h: &TaskHandle, signal: i32, timeout: Duration) -> Result<(), DriverError> {
        if let Some(st) = self.state(h).filter(shim::is_alive) {
            match shim::signal(&st, signal) {
                Ok(()) | Err(shim::ShimError::NotRunning(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if wait_gone(h.pid, timeout) {
            return Ok(());
        }
        if let Some(cg) = self.cgroup(h) {
            cg.kill_all()?;
        }
        Ok(())
    }

    /// Remove the cgroup (killing anything left in it).
    pub fn destroy_cgroup(&self, h: &TaskHandle) -> Result<(), DriverError> {
        if let Ok(layout) = self.layout.as_ref() {
            layout.destroy(&h.cgroup)?;
        }
        Ok(())
    }

    /// Running?
    pub fn inspect(&self, h: &TaskHandle) -> bool {
        self.alive(h)
    }

    /// Usage from the cgroup.
    pub fn stats(&self, h: &TaskHandle) -> Result<TaskStats, DriverError> {
        let cg = self
            .cgroup(h)
            .ok_or_else(|| DriverError::Start("the task's cgroup is gone".into()))?;
        let s = cg.stats()?;
        Ok(TaskStats {
            cpu_usage_ns: s.cpu_usage_ns,
            memory: s.memory_usage,
            memory_max: s.memory_max_usage,
        })
    }

    /// Deliver a signal.
    pub fn signal(&self, h: &TaskHandle, sig: i32) -> Result<(), DriverError> {
        let st = self
            .state(h)
            .ok_or_else(|| DriverError::Start("the task is not running".into()))?;
        Ok(shim::signal(&st, sig)?)
    }

    /// After an agent restart.
    pub fn recover(&self, h: &TaskHandle) -> Result<Recovered, DriverError> {
        if let Some(st) = shim::read_exit(&h.task_dir)? {
            return Ok(Recovered::Exited(self.exit_result(h, st)));
        }
        if self.alive(h) {
            return Ok(Recovered::Running);
        }
        // Neither running nor an exit record: the shim died with it.
        Ok(Recovered::Exited(ExitResult {
            start_error: Some(
                "the task and its shim ended without recording an exit status".into(),
            ),
            finished_at: now_ms(),
            ..Default::default()
        }))
    }

    /// `taba shim exec` into the running task with `spec`.
    pub fn exec_command(
        &self,
        h: &TaskHandle,
        spec: &shim::exec::ExecSpec,
    ) -> Result<std::process::Command, DriverError> {
        if !self.alive(h) {
            return Err(DriverError::Start("the task is not running".into()));
        }
        let path = h.task_dir.join(format!(
            "exec-{}-{}-{}.json",
            now_ms(),
            std::process::id(),
            {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            }
        ));
        spec.write(&path).map_err(|source| DriverError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(shim::exec::exec_command(&self.exe, h.pid as i32, &path))
    }
}

/// Wait up to `timeout` for process `pid` to end, without polling /proc:
/// a pidfd becomes readable when the process exits. True when it is gone.
pub(crate) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        // ESRCH: already gone. Anything else: fall back to polling.
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return false;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    #[allow(unsafe_code)]
    // SAFETY: one valid pollfd; the fd is ours and closed right after.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    #[allow(unsafe_code)]
    // SAFETY: closing the pidfd opened above.
    unsafe {
        libc::close(fd);
    }
    n > 0
}
