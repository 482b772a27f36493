//! Docker-like defaults for container bundles: the capability set, mounts,
//! masked and read-only paths, namespaces and the seccomp profile. The agent's
//! container driver builds its `config.json` from [`default_spec`].

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, Mount, Process, Root,
    Spec, User,
};

use super::seccomp;

/// Docker's default capability set (bounding, effective and permitted).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from containers.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containers may read but not write.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What varies between containers built from the defaults.
#[derive(Debug, Clone)]
pub struct DefaultSpecOptions {
    /// The root filesystem (absolute, or relative to the bundle).
    pub rootfs: PathBuf,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Command line.
    pub args: Vec<String>,
    /// Environment, `K=V`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: PathBuf,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Hostname (in the container's own uts namespace).
    pub hostname: Option<String>,
    /// Share the host's network namespace instead of getting an empty one.
    pub host_network: bool,
}

impl Default for DefaultSpecOptions {
    fn default() -> Self {
        DefaultSpecOptions {
            rootfs: PathBuf::from("rootfs"),
            readonly_rootfs: false,
            args: vec!["sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: PathBuf::from("/"),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: None,
            host_network: false,
        }
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into())
        .set_typ(Some(typ.into()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// The default mounts: /proc, /dev (tmpfs), /dev/pts, /dev/shm, /dev/mqueue,
/// and /sys read-only.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
}

/// A complete spec with Docker's defaults: pid, ipc, uts and mount namespaces
/// (plus network unless `host_network`), the default capability set, the
/// default seccomp profile, no_new_privileges, masked and read-only paths, a
/// read-only /sys, and no rlimits (the process inherits the shim's). Cgroups
/// are not part of it: the agent creates them and hands them to the shim.
pub fn default_spec(o: &DefaultSpecOptions) -> Spec {
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(None)
        .set_ambient(None);

    let mut user = User::default();
    user.set_uid(o.uid)
        .set_gid(o.gid)
        .set_additional_gids(if o.additional_gids.is_empty() {
            None
        } else {
            Some(o.additional_gids.clone())
        });

    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_user(user)
        .set_args(Some(o.args.clone()))
        .set_env(Some(o.env.clone()))
        .set_cwd(o.cwd.clone())
        .set_capabilities(Some(capabilities))
        .set_rlimits(None)
        .set_no_new_privileges(Some(true))
        .set_oom_score_adj(None);

    let mut root = Root::default();
    root.set_path(o.rootfs.clone())
        .set_readonly(Some(o.readonly_rootfs));

    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if !o.host_network {
        kinds.push(LinuxNamespaceType::Network);
    }
    let namespaces = kinds
        .into_iter()
        .map(|t| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(t).set_path(None);
            ns
        })
        .collect();

    let mut linux = Linux::default();
    linux
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(None)
        .set_resources(None)
        .set_cgroups_path(None)
        .set_namespaces(Some(namespaces))
        .set_devices(None)
        .set_seccomp(Some(seccomp::default_profile()))
        .set_rootfs_propagation(None)
        .set_masked_paths(Some(
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
        ))
        .set_readonly_paths(Some(
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ));

    let mut spec = Spec::default();
    spec.set_root(Some(root))
        .set_process(Some(process))
        .set_hostname(o.hostname.clone())
        .set_mounts(Some(default_mounts()))
        .set_hooks(None)
        .set_annotations(None)
        .set_linux(Some(linux));
    spec
}
