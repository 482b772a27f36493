//! Docker-like defaults for container bundles: the capability set, mounts,
//! masked and read-only paths, namespaces and the seccomp profile. The agent's
//! container driver builds its `config.json` from [`default_spec`].

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, LinuxIdMappingBuilder, LinuxNamespace,
    LinuxNamespaceType, Mount, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
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
    /// The bounding set; `None`: [`DEFAULT_CAPABILITIES`]. Root (uid 0)
    /// also gets it as its effective and permitted sets; any other user
    /// starts with empty ones (setuid binaries and file capabilities raise
    /// them, within the bounding set, unless `no_new_privileges`).
    pub capabilities: Option<Vec<Capability>>,
    /// Setuid binaries and file capabilities do not raise privileges.
    pub no_new_privileges: bool,
    /// rlimits `(type, soft, hard)`, set explicitly (never inherited).
    pub rlimits: Vec<(PosixRlimitType, u64, u64)>,
    /// oom_score_adj of the process, set explicitly (never inherited).
    pub oom_score_adj: i32,
    /// A new user namespace whose ids 0.. are this host range.
    pub user_namespace: Option<super::userns::IdRange>,
}

/// Docker's default open files limit (soft, hard), as its daemon runs
/// under systemd: the agent clamps the hard one to its own hard limit.
pub const DEFAULT_NOFILE: (u64, u64) = (1024, 524_288);

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
            capabilities: None,
            no_new_privileges: false,
            rlimits: vec![default_nofile()],
            oom_score_adj: 0,
            user_namespace: None,
        }
    }
}

/// Docker's RLIMIT_NOFILE within this process's own hard limit (raising a
/// hard limit needs CAP_SYS_RESOURCE, which hosts may not grant).
pub fn default_nofile() -> (PosixRlimitType, u64, u64) {
    let hard = current_hard_limit(libc::RLIMIT_NOFILE);
    (
        PosixRlimitType::RlimitNofile,
        DEFAULT_NOFILE.0.min(hard),
        DEFAULT_NOFILE.1.min(hard),
    )
}

/// The calling process's hard limit of `resource` (`u64::MAX`: unlimited).
pub fn current_hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit struct.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return u64::MAX;
    }
    lim.rlim_max
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
/// /sys read-only, and the container's own cgroups read-only at
/// /sys/fs/cgroup (type `cgroup`: the runtime mounts the one cgroup2
/// hierarchy, or each v1 hierarchy on a tmpfs, as runc does).
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
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// A complete spec with Docker's defaults: pid, ipc, uts, mount and cgroup
/// namespaces (plus network unless `host_network`), the capability set (Docker's
/// default unless asked otherwise; empty effective and permitted sets for a
/// non-root user), the seccomp profile that goes with those capabilities,
/// masked and read-only paths, a read-only /sys, explicit rlimits and
/// oom_score_adj. Cgroups are not part of it: the agent creates them and
/// hands them to the shim.
pub fn default_spec(o: &DefaultSpecOptions) -> Spec {
    let bounding: Vec<Capability> = o
        .capabilities
        .clone()
        .unwrap_or_else(|| DEFAULT_CAPABILITIES.to_vec());
    let caps: oci_spec::runtime::Capabilities = bounding.iter().copied().collect();
    let held = if o.uid == 0 {
        caps.clone()
    } else {
        Default::default()
    };
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(caps))
        .set_effective(Some(held.clone()))
        .set_permitted(Some(held))
        .set_inheritable(None)
        .set_ambient(None);
    let rlimits = o
        .rlimits
        .iter()
        .map(|(typ, soft, hard)| {
            PosixRlimitBuilder::default()
                .typ(*typ)
                .soft(*soft)
                .hard(*hard)
                .build()
                .expect("all fields set")
        })
        .collect::<Vec<_>>();

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
        .set_rlimits(if rlimits.is_empty() {
            None
        } else {
            Some(rlimits)
        })
        .set_no_new_privileges(Some(o.no_new_privileges))
        .set_oom_score_adj(Some(o.oom_score_adj));

    let mut root = Root::default();
    root.set_path(o.rootfs.clone())
        .set_readonly(Some(o.readonly_rootfs));

    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if !o.host_network {
        kinds.push(LinuxNamespaceType::Network);
    }
    if o.user_namespace.is_some() {
        kinds.push(LinuxNamespaceType::User);
    }
    let id_map = |host: u32, size: u32| {
        vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(size)
            .build()
            .expect("all fields set")]
    };
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
        .set_uid_mappings(o.user_namespace.map(|r| id_map(r.host_uid, r.size)))
        .set_gid_mappings(o.user_namespace.map(|r| id_map(r.host_gid, r.size)))
        .set_sysctl(None)
        .set_resources(None)
        .set_cgroups_path(None)
        .set_namespaces(Some(namespaces))
        .set_devices(None)
        .set_seccomp(Some(seccomp::profile_for(&bounding)))
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
