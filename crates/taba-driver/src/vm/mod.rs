//! The `vm` driver: one QEMU process per VM task, in the task's cgroup,
//! started through the task shim (so it outlives an agent restart) and
//! controlled over QMP on a unix socket in the task directory.
//!
//! ```text
//! start: accel (task > agent vm.accel > KVM probe) -> kernel, initrd, disk
//!        images resolved inside vm.image_dirs -> disks: qcow2 overlays in
//!        the task dir (qemu-img) -> cgroup (memory = guest + overhead)
//!        -> shim runs `qemu-system-x86_64 ...` (cwd: task dir)
//!        -> QMP qmp.sock answers query-status -> running
//! serial console -> QEMU's stdout -> the shim's log files (`alloc logs`)
//! stop:  QMP system_powerdown -> wait kill_timeout -> QMP quit -> cgroup kill
//! agent restart: the shim still runs QEMU; recover() re-attaches through
//!        the shim's state and checks the VM over QMP (no VM restart)
//! ```
//!
//! This module owns QEMU's command line ([`qemu`]), the QMP client
//! ([`qmp`]), the VM's files ([`files`]), firmware boots from a boot disk
//! ([`boot`]), the cloud-init seed disk ([`seed`]) and the accelerator
//! probe ([`probe`]); it must not touch the allocation's other tasks.

pub mod boot;
pub mod files;
mod migrate;
pub mod probe;
pub mod qemu;
pub mod qmp;
pub mod seed;

use crate::shimmed::{wait_gone, Shimmed};
use crate::{
    Capabilities, Driver, DriverError, ExitResult, Recovered, TaskConfig, TaskHandle, TaskStats,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use taba_runtime::shim::{ProcessWorkload, Workload};
use taba_types::vm::{VmAccel, VmNetwork};
use taba_types::{ByteSize, DriverInfo, NetworkMode};

/// Errors of the `vm` driver.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file of the VM is not usable.
    #[error("VM files")]
    Files(#[from] files::FilesError),
    /// The VM cannot boot from its boot disk.
    #[error("boot disk")]
    Boot(#[from] boot::BootError),
    /// The cloud-init seed disk could not be made.
    #[error("cloud-init seed disk (user_data)")]
    Seed(#[from] seed::SeedError),
    /// Talking to QEMU failed.
    #[error("QMP")]
    Qmp(#[from] qmp::QmpError),
    /// QEMU is not installed or not usable.
    #[error("QEMU is not usable on this node: {0}")]
    NoQemu(String),
    /// The task asks for an accelerator the node does not give.
    #[error("accel = \"{asked}\": {why}")]
    Accel {
        /// What the task asked for.
        asked: &'static str,
        /// Why not.
        why: String,
    },
    /// QEMU ended while starting.
    #[error("QEMU exited while starting the VM: {0}")]
    Exited(String),
    /// A live migration did not complete (the source VM keeps running).
    #[error("migration {0}")]
    Migration(String),
    /// A small async runtime for QMP could not be made.
    #[error("async runtime for QMP")]
    Runtime(#[source] std::io::Error),
}

/// Which accelerator VMs get when a task does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccelPolicy {
    /// KVM if the probe boots a guest under it, else TCG.
    #[default]
    Auto,
    /// Always this one (a task asking for the other fails to start).
    Force(VmAccel),
}

/// How a node runs VMs (the agent's `[vm]` section).
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// `qemu-system-x86_64` (looked up in PATH without a '/').
    pub qemu: PathBuf,
    /// `qemu-img`.
    pub qemu_img: PathBuf,
    /// The only directories kernels, initrds and base disk images are
    /// taken from.
    pub image_dirs: Vec<PathBuf>,
    /// Accelerator choice.
    pub accel: AccelPolicy,
    /// Kernel (and initrd) the KVM probe boots; without one KVM is not
    /// proven and `auto` means TCG.
    pub probe_kernel: Option<PathBuf>,
    /// Initrd of the probe kernel.
    pub probe_initrd: Option<PathBuf>,
    /// How long the probe may take.
    pub probe_timeout: Duration,
    /// Memory the cgroup allows above the guest's RAM (QEMU itself, the
    /// TCG translation cache, device buffers).
    pub overhead: ByteSize,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            image_dirs: Vec::new(),
            accel: AccelPolicy::Auto,
            probe_kernel: None,
            probe_initrd: None,
            probe_timeout: Duration::from_secs(15),
            overhead: ByteSize::mib(256),
        }
    }
}

/// How long QMP commands may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting QEMU has to open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// After `quit`, how long QEMU has before the cgroup is killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `vm` driver.
pub struct VmDriver {
    shim: Shimmed,
    cfg: VmConfig,
    /// `QEMU emulator version 10.0.2 ...`, or why QEMU cannot run.
    qemu_version: Result<String, String>,
    /// The KVM probe's result, once run.
    kvm: Mutex<Option<Result<(), String>>>,
    /// The node's image store: disk images by name (`taba image import`).
    images: Option<std::sync::Arc<taba_image::ImageStore>>,
}

/// `name` as found in PATH (or itself when it has a '/').
fn find_in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl VmDriver {
    /// Run shims with the `taba` binary at `exe`; VMs as `cfg` says.
    pub fn new(exe: PathBuf, mut cfg: VmConfig) -> Self {
        cfg.image_dirs = cfg
            .image_dirs
            .iter()
            .filter_map(|d| match d.canonicalize() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "vm.image_dirs: skipped");
                    None
                }
            })
            .collect();
        let qemu_version = match find_in_path(&cfg.qemu) {
            None => Err(format!("{} not found", cfg.qemu.display())),
            Some(q) => {
                cfg.qemu = q;
                std::process::Command::new(&cfg.qemu)
                    .arg("--version")
                    .output()
                    .map_err(|e| format!("run {}: {e}", cfg.qemu.display()))
                    .and_then(|o| {
                        let v = String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        if o.status.success() && !v.is_empty() {
                            Ok(v)
                        } else {
                            Err(format!("{} --version failed", cfg.qemu.display()))
                        }
                    })
            }
        };
        if let Some(q) = find_in_path(&cfg.qemu_img) {
            cfg.qemu_img = q;
        }
        Self {
            shim: Shimmed::new(exe).with_console(),
            cfg,
            qemu_version,
            kvm: Mutex::new(None),
            images: None,
        }
    }

    /// Base disk images may also be disk images of `images` (by name).
    pub fn with_images(mut self, images: std::sync::Arc<taba_image::ImageStore>) -> Self {
        self.images = Some(images);
        self
    }

    /// Where base disk images are looked up.
    fn resolver(&self) -> files::Resolver<'_> {
        files::Resolver {
            dirs: &self.cfg.image_dirs,
            store: self.images.as_deref(),
        }
    }

    /// The configuration in force (image dirs canonical).
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Whether KVM boots a guest here (probing once, then remembered).
    pub fn kvm_usable(&self) -> Result<(), String> {
        let mut k = self.kvm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = k.as_ref() {
            return r.clone();
        }
        let r = self.probe_kvm();
        match &r {
            Ok(()) => tracing::info!("vm: KVM boots guests here"),
            Err(e) => tracing::info!("vm: KVM not used: {e}"),
        }
        *k = Some(r.clone());
        r
    }

    fn probe_kvm(&self) -> Result<(), String> {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            return Err(format!("/dev/kvm: {e}"));
        }
        let Some(kernel) = &self.cfg.probe_kernel else {
            return Err("not proven: no probe kernel (agent option vm.probe_kernel)".into());
        };
        probe::boot_probe(
            &self.cfg.qemu,
            VmAccel::Kvm,
            kernel,
            self.cfg.probe_initrd.as_deref(),
            self.cfg.probe_timeout,
        )
        .map(|_| ())
        .map_err(|e| format!("probe: {e}"))
    }

    /// The accelerator of a task asking for `asked`.
    fn accel(&self, asked: Option<VmAccel>) -> Result<VmAccel, VmError> {
        match (asked, self.cfg.accel) {
            (Some(a), AccelPolicy::Force(f)) if a != f => Err(VmError::Accel {
                asked: a.qemu_name(),
                why: format!(
                    "this node runs VMs under {} only (agent option vm.accel)",
                    f.qemu_name()
                ),
            }),
            (_, AccelPolicy::Force(f)) => Ok(f),
            (Some(VmAccel::Tcg), AccelPolicy::Auto) => Ok(VmAccel::Tcg),
            (Some(VmAccel::Kvm), AccelPolicy::Auto) => {
                self.kvm_usable().map_err(|why| VmError::Accel {
                    asked: "kvm",
                    why: format!("KVM cannot run guests on this node ({why})"),
                })?;
                Ok(VmAccel::Kvm)
            }
            (None, AccelPolicy::Auto) => Ok(match self.kvm_usable() {
                Ok(()) => VmAccel::Kvm,
                Err(_) => VmAccel::Tcg,
            }),
        }
    }

    fn qmp_socket(task_dir: &Path) -> PathBuf {
        task_dir.join(qemu::QMP_SOCKET)
    }

    /// The plan of a task: accelerator, files, disks (made now if new; the
    /// ones made are returned to remove if the start fails).
    fn plan(
        &self,
        cfg: &TaskConfig,
        same_as: Option<VmAccel>,
    ) -> Result<(qemu::VmPlan, Vec<PathBuf>), DriverError> {
        let t = &cfg.task;
        let accel = match same_as {
            Some(a) => a,
            None => self.accel(t.accel)?,
        };
        let dirs = &self.cfg.image_dirs;
        let kernel = t
            .kernel
            .as_deref()
            .map(|k| files::resolve(dirs, "kernel", k))
            .transpose()
            .map_err(VmError::from)?;
        let initrd = t
            .initrd
            .as_deref()
            .map(|i| files::resolve(dirs, "initrd", i))
            .transpose()
            .map_err(VmError::from)?;
        let (disks, mut made, uefi) = self.disks(cfg)?;
        let seed = match seed::make(&cfg.task_dir, t, cfg.alloc_id.as_str()) {
            Ok(s) => s,
            Err(e) => {
                remove_files(&made);
                return Err(VmError::from(e).into());
            }
        };
        made.extend(seed.clone());
        let machine = boot::machine(t);
        let cmdline = match t.kernel {
            Some(_) => qemu::kernel_cmdline(t.cmdline.as_deref(), accel, qemu::host_khz()),
            None => String::new(),
        };
        let name: String = format!("taba-{}-{}", short_id(cfg.alloc_id.as_str()), t.name)
            .chars()
            .map(|c| if c == ',' || c == '=' { '_' } else { c })
            .collect();
        Ok((
            qemu::VmPlan {
                name,
                accel,
                machine,
                vcpus: t.vcpus.unwrap_or(1),
                memory_mib: t.resources.memory.as_mib().max(16),
                kernel,
                initrd,
                cmdline,
                disks,
                network: t.network.unwrap_or(VmNetwork::None),
                incoming: None,
                paused: false,
                uefi: uefi.map(|(u, _)| u),
                seed,
            },
            made,
        ))
    }

    /// The VM's disk files: the boot disk first (it is `disk0` to QEMU and
    /// the firmware), then `disks`, each made now if new; and the UEFI
    /// variable store. On an error the files this call made are removed;
    /// otherwise they are returned, to remove if the start fails.
    #[allow(clippy::type_complexity)]
    fn disks(
        &self,
        cfg: &TaskConfig,
    ) -> Result<(Vec<PathBuf>, Vec<PathBuf>, Option<(boot::Uefi, bool)>), DriverError> {
        let t = &cfg.task;
        let resolver = self.resolver();
        let mut disks = Vec::new();
        let mut made = Vec::new();
        let fail = |made: &[PathBuf], e: VmError| {
            remove_files(made);
            Err(DriverError::from(e))
        };
        let uefi = match boot::uefi(t, &cfg.task_dir) {
            Ok(u) => u,
            Err(e) => return fail(&made, e.into()),
        };
        if let Some((u, true)) = &uefi {
            made.push(u.vars.clone());
        }
        match boot::ensure_boot_disk(
            &self.cfg.qemu_img,
            &resolver,
            &cfg.task_dir,
            t.boot_disk.as_ref(),
        ) {
            Ok(Some((f, new))) => {
                if new {
                    made.push(f.clone());
                }
                disks.push(f);
            }
            Ok(None) => {}
            Err(e) => return fail(&made, e.into()),
        }
        for (i, d) in t.disks.iter().enumerate() {
            let file = cfg.task_dir.join(format!("disk{i}.qcow2"));
            let field = format!("disks[{i}]");
            match files::ensure_disk_file(&self.cfg.qemu_img, &resolver, &file, &field, d) {
                Ok((f, new)) => {
                    if new {
                        made.push(f.clone());
                    }
                    disks.push(f);
                }
                Err(e) => return fail(&made, e.into()),
            }
        }
        Ok((disks, made, uefi))
    }

    /// Start QEMU for `plan` under the shim and wait until QMP answers.
    fn launch(&self, cfg: &TaskConfig, plan: &qemu::VmPlan) -> Result<TaskHandle, DriverError> {
        let sock = Self::qmp_socket(&cfg.task_dir);
        let _ = std::fs::remove_file(&sock);
        let mut limited = cfg.clone();
        limited.task.resources.memory = ByteSize(
            cfg.task
                .resources
                .memory
                .0
                .saturating_add(self.cfg.overhead.0),
        );
        let cg = self.shim.make_cgroup(&limited)?;
        let mut args = vec![self.cfg.qemu.to_string_lossy().into_owned()];
        args.extend(plan.args());
        let workload = Workload::Process(ProcessWorkload {
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: Some(cfg.task_dir.clone()),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        });
        let h = match self.shim.spawn(self.name(), cfg, &cg, workload, None) {
            Ok(h) => h,
            Err(e) => {
                let _ = cg.destroy();
                return Err(e);
            }
        };
        if let Err(e) = self.wait_for_qmp(&h, &sock) {
            let _ = self.shim.stop(&h, libc::SIGKILL, Duration::ZERO);
            let _ = self.shim.wait(&h);
            let _ = self.shim.destroy_cgroup(&h);
            let tail = stderr_tail(&cfg.log_dir, &cfg.task.name);
            return Err(match e {
                VmError::Exited(_) => VmError::Exited(tail),
                other if tail.is_empty() => other,
                other => VmError::Exited(format!(
                    "{}; stderr: {tail}",
                    taba_types::error_chain(&other)
                )),
            }
            .into());
        }
        Ok(h)
    }

    /// Until QMP says the VM's status (QEMU up), or QEMU ends.
    fn wait_for_qmp(&self, h: &TaskHandle, sock: &Path) -> Result<(), VmError> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if !self.shim.inspect(h) {
                return Err(VmError::Exited(String::new()));
            }
            if sock.exists() {
                match block_on(async {
                    let mut q = qmp::Qmp::connect(sock, QMP_TIMEOUT).await?;
                    q.execute(&qmp::QueryStatus).await
                })? {
                    Ok(st) => {
                        tracing::debug!(status = %st.status, "vm: QMP answers");
                        return Ok(());
                    }
                    Err(e) if std::time::Instant::now() >= deadline => return Err(e.into()),
                    Err(_) => {}
                }
            } else if std::time::Instant::now() >= deadline {
                return Err(VmError::Qmp(qmp::QmpError::Timeout("connect")));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Run one QMP command on the VM of `h`.
    pub fn qmp<C: qmp::Command>(&self, h: &TaskHandle, cmd: C) -> Result<C::Reply, VmError> {
        let sock = Self::qmp_socket(&h.task_dir);
        Ok(block_on(async move {
            let mut q = qmp::Qmp::connect(&sock, QMP_TIMEOUT).await?;
            q.execute(&cmd).await
        })??)
    }
}

impl VmDriver {
    /// QEMU is usable and the task dir exists, private (0700).
    fn prepare_task_dir(&self, cfg: &TaskConfig) -> Result<(), DriverError> {
        if let Err(e) = &self.qemu_version {
            return Err(VmError::NoQemu(e.clone()).into());
        }
        std::fs::create_dir_all(&cfg.task_dir).map_err(|source| DriverError::Io {
            path: cfg.task_dir.clone(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.task_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| DriverError::Io {
                path: cfg.task_dir.clone(),
                source,
            },
        )
    }
}

/// The first 8 characters of an allocation id.
fn short_id(id: &str) -> &str {
    &id[..id.len().min(8)]
}

fn remove_files(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// Run `f` to completion on a small runtime of its own (driver methods are
/// blocking and run on the agent's blocking threads).
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, VmError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VmError::Runtime)?;
    Ok(rt.block_on(f))
}

/// The last lines QEMU wrote to stderr (the task's newest stderr log).
fn stderr_tail(log_dir: &Path, task: &str) -> String {
    let prefix = format!("{task}.stderr.");
    let newest = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .max();
    let Some((_, path)) = newest else {
        return String::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join("; ")
}

impl Driver for VmDriver {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            send_signals: true,
            exec: false,
            image_rootfs: false,
            network_modes: vec![NetworkMode::None, NetworkMode::Host],
        }
    }

    fn fingerprint(&self) -> DriverInfo {
        let kvm = match self.kvm.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(Ok(())) => "KVM usable".to_string(),
            Some(Err(e)) => format!("KVM not used: {e}"),
            None => match self.cfg.accel {
                AccelPolicy::Force(a) => format!("accel {} (agent option vm.accel)", a.qemu_name()),
                AccelPolicy::Auto => "KVM probed at the first VM start".into(),
            },
        };
        match (&self.qemu_version, &self.shim.layout) {
            (Ok(v), Ok(_)) => DriverInfo {
                detected: true,
                healthy: true,
                description: format!("{v}; {kvm}"),
            },
            (Err(e), _) => DriverInfo {
                detected: false,
                healthy: false,
                description: e.clone(),
            },
            (_, Err(e)) => DriverInfo {
                detected: true,
                healthy: false,
                description: format!("cgroups not usable: {e}"),
            },
        }
    }

    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError> {
        self.prepare_task_dir(cfg)?;
        let (plan, made) = self.plan(cfg, None)?;
        self.launch(cfg, &plan).inspect_err(|_| remove_files(&made))
    }

    fn wait(&self, h: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.shim.wait(h)
    }

    /// ACPI power button; after `timeout` QMP `quit`; then the cgroup is
    /// killed. `signal` is used only when QMP does not answer.
    fn stop(&self, h: &TaskHandle, signal: i32, timeout: Duration) -> Result<(), DriverError> {
        if !self.shim.inspect(h) {
            return Ok(());
        }
        match self.qmp(h, qmp::SystemPowerdown) {
            Ok(_) => {
                if wait_gone(h.pid, timeout) {
                    return Ok(());
                }
                tracing::info!(
                    pid = h.pid,
                    "vm: not powered off after {timeout:?}; quitting QEMU"
                );
                if self.qmp(h, qmp::Quit).is_ok() && wait_gone(h.pid, QUIT_TIMEOUT) {
                    return Ok(());
                }
                self.shim.stop(h, libc::SIGKILL, Duration::ZERO)
            }
            Err(e) => {
                tracing::warn!(pid = h.pid, error = %taba_types::error_chain(&e), "vm: QMP did not answer; signalling QEMU");
                self.shim.stop(h, signal, timeout)
            }
        }
    }

    fn destroy(&self, h: &TaskHandle) -> Result<(), DriverError> {
        let _ = std::fs::remove_file(Self::qmp_socket(&h.task_dir));
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
        _h: &TaskHandle,
        _exec: &crate::ExecOptions,
    ) -> Result<std::process::Command, DriverError> {
        Err(DriverError::Unsupported(
            "running a command inside a VM (there is no guest agent)",
        ))
    }

    /// The serial console: QEMU's stdio, kept by the shim (logged, and
    /// attachable on `console.sock`, across agent restarts).
    fn console_socket(&self, h: &TaskHandle) -> Result<std::path::PathBuf, DriverError> {
        self.shim.console_socket(h)
    }

    /// The shim still runs QEMU: re-attach, and ask QEMU over QMP how the
    /// VM is (a VM QMP does not answer is still running; it is logged).
    fn recover(&self, h: &TaskHandle) -> Result<Recovered, DriverError> {
        let r = self.shim.recover(h)?;
        if r == Recovered::Running {
            match self.qmp(h, qmp::QueryStatus) {
                Ok(st) => {
                    tracing::info!(pid = h.pid, status = %st.status, "vm: re-attached over QMP")
                }
                Err(e) => {
                    tracing::warn!(pid = h.pid, error = %taba_types::error_chain(&e), "vm: re-attached, but QMP does not answer")
                }
            }
        }
        Ok(r)
    }

    /// The base disk images that are not files of the VM image
    /// directories: disk images of the image store, which the agent
    /// fetches from the servers when the node lacks them.
    fn store_images(&self, task: &taba_types::TaskSpec) -> Vec<String> {
        let r = self.resolver();
        taba_types::vm::disk_images(task)
            .into_iter()
            .filter(|(field, name)| !r.is_file(field, name))
            .map(|(_, name)| name.to_string())
            .collect()
    }

    fn migratable(&self) -> Option<&dyn crate::migrate::Migratable> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(accel: AccelPolicy) -> VmDriver {
        VmDriver::new(
            "/bin/true".into(),
            VmConfig {
                accel,
                ..VmConfig::default()
            },
        )
    }

    #[test]
    fn a_task_cannot_ask_for_what_the_node_forces_away() {
        let d = driver(AccelPolicy::Force(VmAccel::Tcg));
        assert_eq!(d.accel(None).unwrap(), VmAccel::Tcg);
        assert_eq!(d.accel(Some(VmAccel::Tcg)).unwrap(), VmAccel::Tcg);
        let e = d.accel(Some(VmAccel::Kvm)).unwrap_err().to_string();
        assert!(e.contains("tcg only") && e.contains("vm.accel"), "{e}");
        let d = driver(AccelPolicy::Force(VmAccel::Kvm));
        assert_eq!(d.accel(None).unwrap(), VmAccel::Kvm);
    }

    #[test]
    fn auto_without_a_probe_kernel_is_tcg() {
        let d = driver(AccelPolicy::Auto);
        assert_eq!(d.accel(None).unwrap(), VmAccel::Tcg);
        let e = d.accel(Some(VmAccel::Kvm)).unwrap_err().to_string();
        assert!(e.contains("KVM cannot run guests"), "{e}");
    }
}
