//! What the long-running modes (`taba dev`, `taba server`, `taba agent`)
//! share: logging, the async runtime, the drivers, the stop signal and
//! reading a configuration file.

use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use taba_driver::{Driver, IsolationPolicy};
use taba_image::ImageStore;

pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
) -> anyhow::Result<T> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading configuration {}", p.display()))?,
        None => String::new(),
    };
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "configuration {}: {}",
            path.map(|p| p.display().to_string()).unwrap_or_default(),
            e.message()
        )
    })
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TABA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colors only on a terminal (log files stay plain text), and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Run `f` on a fresh runtime, then drop the runtime without waiting for
/// blocking threads: those that wait on running workloads never end on their
/// own, and the workloads keep running for the next start to re-attach.
pub(crate) fn run_async<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let result = rt.block_on(f);
    rt.shutdown_background();
    result
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(256)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The drivers of a node, granting what `policy` allows, VMs as `vm` says.
/// The table of user namespace id ranges is `<agent data dir>/userns.json`.
pub(crate) fn drivers(
    images: Arc<ImageStore>,
    policy: IsolationPolicy,
    vm: taba_driver::vm::VmConfig,
    agent_data_dir: &std::path::Path,
) -> anyhow::Result<Vec<Arc<dyn Driver>>> {
    let exe = std::env::current_exe().context("locating the taba binary for task shims")?;
    let ranges =
        taba_driver::userns::IdRanges::new(policy.userns, agent_data_dir.join("userns.json"));
    Ok(vec![
        Arc::new(taba_driver::exec::ExecDriver::new(exe.clone()).with_policy(policy.clone())),
        Arc::new(
            taba_driver::container::ContainerDriver::new(exe.clone(), images)
                .with_policy(policy)
                .with_user_namespaces(ranges),
        ),
        Arc::new(taba_driver::vm::VmDriver::new(exe, vm)),
    ])
}

/// `[vm]` of the agent file (docs/vms.md): how this node runs VMs.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VmFile {
    /// Directories kernels, initrds and base disk images are taken from
    /// (default `<data_dir>/vm-images`).
    #[serde(default)]
    pub(crate) image_dirs: Option<Vec<std::path::PathBuf>>,
    /// `auto` (KVM where the probe boots a guest, else TCG), `kvm` or `tcg`.
    #[serde(default)]
    pub(crate) accel: Option<String>,
    /// The QEMU binary.
    #[serde(default)]
    pub(crate) qemu: Option<std::path::PathBuf>,
    /// `qemu-img`.
    #[serde(default)]
    pub(crate) qemu_img: Option<std::path::PathBuf>,
    /// Kernel the KVM probe boots.
    #[serde(default)]
    pub(crate) probe_kernel: Option<std::path::PathBuf>,
    /// Its initrd.
    #[serde(default)]
    pub(crate) probe_initrd: Option<std::path::PathBuf>,
    /// Memory a VM's cgroup allows above its RAM.
    #[serde(default)]
    pub(crate) overhead: Option<taba_types::ByteSize>,
}

/// `auto`, `kvm` or `tcg`.
pub(crate) fn parse_accel(s: &str) -> anyhow::Result<taba_driver::vm::AccelPolicy> {
    use taba_driver::vm::AccelPolicy;
    use taba_types::vm::VmAccel;
    Ok(match s {
        "auto" => AccelPolicy::Auto,
        "kvm" => AccelPolicy::Force(VmAccel::Kvm),
        "tcg" => AccelPolicy::Force(VmAccel::Tcg),
        other => anyhow::bail!("{other:?} is not an accelerator; use \"auto\", \"kvm\" or \"tcg\""),
    })
}

impl VmFile {
    /// The driver's configuration; `data_dir` gives the default image dir.
    pub(crate) fn config(
        &self,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<taba_driver::vm::VmConfig> {
        let mut c = taba_driver::vm::VmConfig {
            image_dirs: self
                .image_dirs
                .clone()
                .unwrap_or_else(|| vec![data_dir.join("vm-images")]),
            probe_kernel: self.probe_kernel.clone(),
            probe_initrd: self.probe_initrd.clone(),
            ..Default::default()
        };
        for (i, d) in c.image_dirs.iter().enumerate() {
            anyhow::ensure!(
                d.is_absolute(),
                "vm.image_dirs[{i}]: {} is not an absolute path",
                d.display()
            );
        }
        if let Some(a) = &self.accel {
            c.accel = parse_accel(a).context("vm.accel")?;
        }
        if let Some(q) = &self.qemu {
            c.qemu = q.clone();
        }
        if let Some(q) = &self.qemu_img {
            c.qemu_img = q.clone();
        }
        if let Some(o) = self.overhead {
            c.overhead = o;
        }
        Ok(c)
    }
}

/// `#[serde(default = "yes")]`: a switch that is on unless turned off.
pub(crate) fn yes() -> bool {
    true
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `[tls]` of the server and agent files (docs/configuration.md, "TLS").
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub(crate) ca_cert: std::path::PathBuf,
    /// Optional for an agent with a join_token (default <data_dir>/tls/agent.pem).
    #[serde(default)]
    pub(crate) cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(crate) key: Option<std::path::PathBuf>,
    /// Server only: the CA key, to sign certificates for agents that join.
    #[serde(default)]
    pub(crate) ca_key: Option<std::path::PathBuf>,
    /// Server only: listeners on loopback addresses serve plain HTTP to
    /// local callers (the CLI of `taba dev --agents`); the others TLS.
    #[serde(default)]
    pub(crate) plain_loopback: bool,
}

impl TlsFile {
    /// The files, with defaults under `dir` for an agent that joins.
    pub(crate) fn files(&self, default_dir: Option<&Path>) -> anyhow::Result<taba_tls::TlsFiles> {
        let pick = |v: &Option<std::path::PathBuf>, name: &str, key: &str| match (v, default_dir) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(d)) => Ok(d.join(name)),
            (None, None) => Err(anyhow::anyhow!("configuration: tls.{key}: required")),
        };
        Ok(taba_tls::TlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: pick(&self.cert, "agent.pem", "cert")?,
            key: pick(&self.key, "agent-key.pem", "key")?,
        })
    }
}

/// The image caps of `[limits]` (server and agent): the store refuses an
/// image past them, naming the key. An omitted key keeps its default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageLimitsFile {
    /// Largest manifest, index or config document.
    #[serde(default)]
    pub max_manifest: Option<taba_types::ByteSize>,
    /// Largest total one layer may decompress to.
    #[serde(default)]
    pub max_layer_unpacked: Option<taba_types::ByteSize>,
    /// Largest decompressed / compressed ratio of a layer.
    #[serde(default)]
    pub max_layer_ratio: Option<u64>,
    /// Most entries in one layer.
    #[serde(default)]
    pub max_layer_entries: Option<u64>,
}

impl ImageLimitsFile {
    /// The image store's caps, `max_archive` (the server's upload cap)
    /// included; errors name the key (`limits.max_layer_ratio: ...`).
    pub(crate) fn image_limits(
        &self,
        max_archive: Option<taba_types::ByteSize>,
    ) -> anyhow::Result<taba_image::ImageLimits> {
        let d = taba_image::ImageLimits::default();
        let limits = taba_image::ImageLimits {
            max_archive: max_archive.map_or(d.max_archive, |b| b.0),
            max_manifest: self.max_manifest.map_or(d.max_manifest, |b| b.0),
            max_layer_unpacked: self
                .max_layer_unpacked
                .map_or(d.max_layer_unpacked, |b| b.0),
            max_layer_ratio: self.max_layer_ratio.unwrap_or(d.max_layer_ratio),
            max_layer_entries: self.max_layer_entries.unwrap_or(d.max_layer_entries),
        };
        limits
            .validate()
            .map_err(|e| anyhow::anyhow!("limits.{e}"))?;
        Ok(limits)
    }
}
