//! The `container` driver: an application container from an OCI image.
//!
//! The image's layers are shared read-only through overlayfs with a writable
//! upper dir per task (`taba-image`); the driver writes an OCI runtime bundle
//! (`config.json` built with `oci-spec` from the runtime's Docker-like
//! defaults: default capability set, seccomp allowlist, no_new_privs, masked
//! /proc paths, read-only /sys) and the task shim runs it with the embedded
//! runtime (`taba-runtime`). Mount, pid, uts, ipc and cgroup namespaces
//! always; a network namespace with only loopback in mode `none`, the host's
//! in `host`.
//!
//! What the container finds, as Docker gives it (docs/compatibility.md):
//! the user resolved from the image's passwd and group files (`users`),
//! `HOME`, `HOSTNAME` and a default `PATH` in its environment, its own
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` (`etc`), a writable
//! volume per image `VOLUME` (`volumes`), the image's `STOPSIGNAL` when the
//! job names no `kill_signal`, and (from the runtime) its own cgroup
//! read-only at `/sys/fs/cgroup`, writable stdio for any user and its
//! working directory created if missing.

pub mod etc;
pub mod volumes;

use crate::shimmed::Shimmed;
use crate::userns::IdRanges;
use crate::users::{self, ExecUser, UnknownUid};
use crate::{
    Capabilities, Driver, DriverError, ExitResult, IsolationPolicy, Recovered, TaskConfig,
    TaskHandle, TaskStats,
};
use oci_spec::runtime::Spec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use taba_image::{Image, ImageStore};
use taba_runtime::container::userns::IdRange;
use taba_runtime::container::{default_spec, DefaultSpecOptions};
use taba_runtime::shim::exec::ExecSpec;
use taba_runtime::shim::Workload;
use taba_types::{DriverInfo, NetworkMode};

/// The `container` driver.
pub struct ContainerDriver {
    shim: Shimmed,
    images: Arc<ImageStore>,
    policy: IsolationPolicy,
    userns: Option<IdRanges>,
}

impl ContainerDriver {
    /// Run shims with the `taba` binary at `exe`, images from `images`.
    pub fn new(exe: PathBuf, images: Arc<ImageStore>) -> Self {
        Self {
            shim: Shimmed::new(exe),
            images,
            policy: IsolationPolicy::default(),
            userns: None,
        }
    }

    /// Give tasks with `user_namespace = "auto"` host id ranges from
    /// `ranges` (without it, such tasks fail to start with an error).
    pub fn with_user_namespaces(mut self, ranges: IdRanges) -> Self {
        self.userns = Some(ranges);
        self
    }

    /// Grant what `policy` allows instead of the defaults.
    pub fn with_policy(mut self, policy: IsolationPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// The task's `ulimits` as rlimits, plus Docker's default open files limit
/// unless the task sets its own. A hard limit above the agent's own cannot
/// be granted (raising one needs CAP_SYS_RESOURCE): a clear error.
pub fn rlimits(
    cfg: &TaskConfig,
) -> Result<Vec<(oci_spec::runtime::PosixRlimitType, u64, u64)>, DriverError> {
    use oci_spec::runtime::PosixRlimitType as T;
    let mut out = Vec::new();
    if !cfg.task.ulimits.contains_key("nofile") {
        out.push(taba_runtime::container::default_nofile());
    }
    for (name, value) in &cfg.task.ulimits {
        let (typ, res) = match name.as_str() {
            "as" => (T::RlimitAs, libc::RLIMIT_AS),
            "core" => (T::RlimitCore, libc::RLIMIT_CORE),
            "cpu" => (T::RlimitCpu, libc::RLIMIT_CPU),
            "data" => (T::RlimitData, libc::RLIMIT_DATA),
            "fsize" => (T::RlimitFsize, libc::RLIMIT_FSIZE),
            "locks" => (T::RlimitLocks, libc::RLIMIT_LOCKS),
            "memlock" => (T::RlimitMemlock, libc::RLIMIT_MEMLOCK),
            "msgqueue" => (T::RlimitMsgqueue, libc::RLIMIT_MSGQUEUE),
            "nice" => (T::RlimitNice, libc::RLIMIT_NICE),
            "nofile" => (T::RlimitNofile, libc::RLIMIT_NOFILE),
            "nproc" => (T::RlimitNproc, libc::RLIMIT_NPROC),
            "rss" => (T::RlimitRss, libc::RLIMIT_RSS),
            "rtprio" => (T::RlimitRtprio, libc::RLIMIT_RTPRIO),
            "rttime" => (T::RlimitRttime, libc::RLIMIT_RTTIME),
            "sigpending" => (T::RlimitSigpending, libc::RLIMIT_SIGPENDING),
            "stack" => (T::RlimitStack, libc::RLIMIT_STACK),
            other => {
                return Err(DriverError::Start(format!(
                    "ulimits.{other}: unknown limit"
                )))
            }
        };
        let (soft, hard) = taba_types::security::parse_ulimit(value)
            .map_err(|e| DriverError::Start(format!("ulimits.{name}: {e}")))?;
        let max = taba_runtime::container::current_hard_limit(res);
        if hard > max {
            return Err(DriverError::Start(format!(
                "ulimits.{name}: hard limit {hard} is above this node's {max} (raising it needs CAP_SYS_RESOURCE)"
            )));
        }
        out.push((typ, soft, hard));
    }
    Ok(out)
}

/// Devices a container may use (v1 `devices.allow` rules, after "deny all"):
/// the nodes the runtime creates in its /dev, ptys, and making (not opening)
/// any node, as Docker and runc allow.
pub const CONTAINER_DEVICES: &[&str] = &[
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:1 rwm",   // console
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
    "c *:* m",
    "b *:* m",
];

/// Remove CAP_MKNOD from every capability set of `spec`.
fn without_mknod(spec: &mut Spec) {
    use oci_spec::runtime::Capability;
    let Some(mut process) = spec.process().clone() else {
        return;
    };
    if let Some(mut caps) = process.capabilities().clone() {
        let strip = |set: &Option<oci_spec::runtime::Capabilities>| {
            set.clone().map(|mut s| {
                s.remove(&Capability::Mknod);
                s
            })
        };
        let (b, e, p, i, a) = (
            strip(caps.bounding()),
            strip(caps.effective()),
            strip(caps.permitted()),
            strip(caps.inheritable()),
            strip(caps.ambient()),
        );
        caps.set_bounding(b)
            .set_effective(e)
            .set_permitted(p)
            .set_inheritable(i)
            .set_ambient(a);
        process.set_capabilities(Some(caps));
    }
    spec.set_process(Some(process));
}

/// The OCI capability of a canonical name (`NET_ADMIN`).
pub fn oci_capability(name: &str) -> Result<oci_spec::runtime::Capability, DriverError> {
    name.parse::<oci_spec::runtime::Capability>()
        .map_err(|e| DriverError::Start(format!("capability {name}: {e}")))
}

/// The command line: Docker's rules for entrypoint and cmd.
pub fn command_line(cfg: &TaskConfig, image: &Image) -> Result<Vec<String>, DriverError> {
    let entrypoint = cfg
        .task
        .entrypoint
        .clone()
        .unwrap_or_else(|| image.config.entrypoint.clone());
    let cmd = if !cfg.task.command.is_empty() {
        cfg.task.command.clone()
    } else if cfg.task.entrypoint.is_some() {
        Vec::new()
    } else {
        image.config.cmd.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(DriverError::Start(
            "no command: the image has no entrypoint or cmd and the task sets no command".into(),
        ));
    }
    Ok(args)
}

/// Docker's default `PATH`, when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment as Docker builds it: a default `PATH` and `HOSTNAME`, then
/// the image's, taba's and the task's variables (later wins), and `HOME`
/// (the user's home from the image's passwd) unless one of them set it.
pub fn environment(cfg: &TaskConfig, image: &Image, hostname: &str, home: &str) -> Vec<String> {
    let mut pairs: Vec<(&str, &str)> = vec![("PATH", DEFAULT_PATH), ("HOSTNAME", hostname)];
    pairs.extend(
        image
            .config
            .env
            .iter()
            .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), ""))),
    );
    pairs.extend(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    pairs.extend(cfg.task.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if !pairs.iter().any(|(k, _)| *k == "HOME") {
        pairs.push(("HOME", home));
    }
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (k, v) in pairs {
        if env.insert(k, v).is_none() {
            order.push(k);
        }
    }
    order.iter().map(|k| format!("{k}={}", env[k])).collect()
}

/// The container's hostname: the task's, else the node's with the host's
/// network, else the first 12 characters of the allocation id (as Docker
/// uses the container id's).
pub fn hostname(cfg: &TaskConfig) -> String {
    if let Some(h) = &cfg.task.hostname {
        return h.clone();
    }
    if cfg.network_mode == NetworkMode::Host {
        if let Ok(h) = rustix::system::uname().nodename().to_str() {
            if !h.is_empty() {
                return h.to_string();
            }
        }
    }
    cfg.alloc_id.as_str().chars().take(12).collect()
}

/// The image's `STOPSIGNAL` as a number (`None`: not set).
pub fn stop_signal(image: &Image) -> Result<Option<i32>, DriverError> {
    match &image.config.stop_signal {
        None => Ok(None),
        Some(s) => taba_types::validate::crate_signal_number(s)
            .map(Some)
            .ok_or_else(|| DriverError::Start(format!("image STOPSIGNAL {s:?}: unknown signal"))),
    }
}

/// The root filesystem of the container whose bundle is `bundle`.
fn exec_rootfs(bundle: &std::path::Path) -> Result<std::path::PathBuf, DriverError> {
    let spec = Spec::load(bundle.join("config.json")).map_err(bundle_err)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| DriverError::Bundle("config.json has no root".into()))?;
    Ok(bundle.join(root))
}

fn bundle_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Bundle(e.to_string())
}

impl ContainerDriver {
    fn build_spec(
        &self,
        cfg: &TaskConfig,
        image: &Image,
        rootfs: &std::path::Path,
        user_namespace: Option<IdRange>,
    ) -> Result<Spec, DriverError> {
        let user = cfg.task.user.clone().or_else(|| image.config.user.clone());
        let ExecUser {
            uid,
            gid,
            additional_gids,
            home,
        } = users::resolve(rootfs, user.as_deref(), UnknownUid::GidZero)?;
        let hostname = hostname(cfg);
        let host_network = cfg.network_mode == NetworkMode::Host;
        // Files and volumes belong to the container's root: the range's
        // first ids in a user namespace.
        let root_ids = user_namespace.map_or((0, 0), |r| (r.host_uid, r.host_gid));
        let mut mounts = etc::write(
            &cfg.task_dir.join("etc"),
            &hostname,
            host_network,
            &etc::HostFiles::default(),
            user_namespace.map(|_| root_ids),
        )?;
        mounts.extend(volumes::prepare(
            &cfg.task_dir,
            rootfs,
            &image.config.volumes,
            root_ids,
        )?);
        let cwd = cfg
            .task
            .workdir
            .clone()
            .or_else(|| image.config.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        let capabilities = self
            .policy
            .capabilities(&cfg.task.cap_add, &cfg.task.cap_drop)?
            .into_iter()
            .map(oci_capability)
            .collect::<Result<Vec<_>, _>>()?;
        let mut spec = default_spec(&DefaultSpecOptions {
            capabilities: Some(capabilities),
            no_new_privileges: cfg.task.no_new_privileges,
            rlimits: rlimits(cfg)?,
            oom_score_adj: 0,
            rootfs: rootfs.to_path_buf(),
            readonly_rootfs: false,
            args: command_line(cfg, image)?,
            env: environment(cfg, image, &hostname, &home),
            cwd: PathBuf::from(cwd),
            uid,
            gid,
            additional_gids,
            hostname: Some(hostname),
            host_network,
            user_namespace,
        });
        let mut all = spec.mounts().clone().unwrap_or_default();
        all.extend(mounts);
        spec.set_mounts(Some(all));
        Ok(spec)
    }
}

/// Test hook for crash tests: with `TABA_TEST_HOLD_START=<file>` in the
/// agent's environment, a container start that has mounted its rootfs and
/// made its cgroup writes `<file>.reached` (the allocation id) and waits
/// while `<file>` exists (at most 120 s), so a test can kill the agent
/// at that moment. Unset (always, outside tests): nothing happens.
fn hold_before_shim(cfg: &TaskConfig) {
    let Some(hold) = std::env::var_os("TABA_TEST_HOLD_START") else {
        return;
    };
    let hold = PathBuf::from(hold);
    let mut reached = hold.clone().into_os_string();
    reached.push(".reached");
    let _ = std::fs::write(&reached, cfg.alloc_id.as_str());
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while hold.exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A start error of a task with `user_namespace = "auto"`, naming the field.
fn userns_err(reason: impl std::fmt::Display) -> DriverError {
    DriverError::Start(format!("user_namespace = \"auto\": {reason}"))
}

impl ContainerDriver {
    /// The allocation's id range, and the image's rootfs with idmapped
    /// layers owned by that range's root.
    fn mount_userns_rootfs(
        &self,
        cfg: &TaskConfig,
        image: &Image,
        bundle: &std::path::Path,
    ) -> Result<(PathBuf, IdRange), DriverError> {
        let ranges = self
            .userns
            .as_ref()
            .ok_or_else(|| userns_err("this node keeps no table of id ranges"))?;
        taba_runtime::container::userns::user_namespaces_available().map_err(userns_err)?;
        let alloc_dir = cfg.task_dir.parent().unwrap_or(&cfg.task_dir);
        let range = ranges.acquire(cfg.alloc_id.as_str(), alloc_dir)?;
        let fd = taba_runtime::container::userns::userns_fd(&range)
            .map_err(|e| userns_err(format!("cannot make a user namespace: {e}")))?;
        // The container's root crosses the bundle dir to reach its rootfs.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bundle, std::fs::Permissions::from_mode(0o711)).map_err(
            |source| DriverError::Io {
                path: bundle.to_path_buf(),
                source,
            },
        )?;
        let idmap = taba_image::IdMap {
            userns: std::os::fd::AsFd::as_fd(&fd),
            uid: range.host_uid,
            gid: range.host_gid,
        };
        let rootfs = self
            .images
            .mount_rootfs_idmapped(image, bundle, idmap)
            .map_err(|e| {
                let chain = std::iter::successors(std::error::Error::source(&e), |s| s.source())
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(": ");
                userns_err(format!(
                    "the image layers cannot be idmapped on this node: {e}: {chain}"
                ))
            })?;
        Ok((rootfs, range))
    }
}

impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            send_signals: true,
            exec: true,
            image_rootfs: true,
            network_modes: vec![NetworkMode::None, NetworkMode::Host],
        }
    }

    fn fingerprint(&self) -> DriverInfo {
        let overlay = std::fs::read_to_string("/proc/filesystems")
            .map(|s| s.lines().any(|l| l.ends_with("overlay")))
            .unwrap_or(false);
        match (&self.shim.layout, overlay) {
            (Ok(_), true) => DriverInfo {
                detected: true,
                healthy: true,
                description: "OCI containers (embedded runtime, overlayfs)".into(),
            },
            (Err(e), _) => DriverInfo {
                detected: true,
                healthy: false,
                description: format!("cgroups not usable: {e}"),
            },
            (_, false) => DriverInfo {
                detected: false,
                healthy: false,
                description: "the kernel has no overlayfs".into(),
            },
        }
    }

    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let reference = cfg
            .task
            .image
            .clone()
            .ok_or_else(|| DriverError::Start("the container driver needs an image".into()))?;
        let image = self
            .images
            .resolve(&reference)?
            .ok_or_else(|| DriverError::ImageNotFound(reference.clone()))?;
        let bundle = cfg.task_dir.join("bundle");
        std::fs::create_dir_all(&bundle).map_err(|source| DriverError::Io {
            path: bundle.clone(),
            source,
        })?;
        let (rootfs, range) = match cfg.task.user_namespace {
            None => (self.images.mount_rootfs(&image, &bundle)?, None),
            Some(_) => {
                let (rootfs, range) = self.mount_userns_rootfs(cfg, &image, &bundle)?;
                (rootfs, Some(range))
            }
        };
        let result = (|| {
            let cg = self.shim.make_cgroup(cfg)?;
            let mut spec = self.build_spec(cfg, &image, &rootfs, range)?;
            match cg.restrict_devices(CONTAINER_DEVICES) {
                Ok(true) => {}
                // No devices hierarchy (a v1 layout without it) to fence
                // device nodes: the container may not make any.
                Ok(false) => without_mknod(&mut spec),
                Err(e) => {
                    let _ = cg.destroy();
                    return Err(e.into());
                }
            }
            taba_runtime::container::save_spec(&spec, &bundle.join("config.json"))
                .map_err(bundle_err)?;
            hold_before_shim(cfg);
            let stop_signal = stop_signal(&image)?;
            self.shim
                .spawn(
                    self.name(),
                    cfg,
                    &cg,
                    Workload::Container {
                        bundle: bundle.clone(),
                    },
                    Some(bundle.clone()),
                )
                .map(|h| TaskHandle { stop_signal, ..h })
                .inspect_err(|_| {
                    let _ = cg.destroy();
                })
        })();
        if result.is_err() {
            let _ = self.images.unmount_rootfs(&bundle);
        }
        result
    }

    fn wait(&self, h: &TaskHandle) -> Result<ExitResult, DriverError> {
        self.shim.wait(h)
    }

    fn stop(&self, h: &TaskHandle, signal: i32, timeout: Duration) -> Result<(), DriverError> {
        self.shim.stop(h, signal, timeout)
    }

    fn destroy(&self, h: &TaskHandle) -> Result<(), DriverError> {
        self.shim.destroy_cgroup(h)?;
        if let Some(b) = &h.rootfs_dir {
            self.images.unmount_rootfs(b)?;
        }
        Ok(())
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
        opts: &crate::ExecOptions,
    ) -> Result<std::process::Command, DriverError> {
        let bundle = h
            .rootfs_dir
            .clone()
            .ok_or_else(|| DriverError::Start("the task has no bundle".into()))?;
        let sc = taba_runtime::shim::read_config(&h.task_dir)?;
        let mut exec = ExecSpec::for_container(&bundle, opts.command.clone(), sc.cgroup_procs)
            .map_err(bundle_err)?;
        if let Some(user) = &opts.user {
            // The task's own rules (users.rs), in the container's own files.
            let rootfs = exec_rootfs(&bundle)?;
            let u = users::resolve(&rootfs, Some(user), UnknownUid::GidZero).map_err(|e| {
                DriverError::InvalidExec {
                    field: "user",
                    message: match e {
                        DriverError::Start(m) => m,
                        other => other.to_string(),
                    },
                }
            })?;
            exec.set_user(u.uid, u.gid, u.additional_gids, &u.home);
        }
        exec.tty = opts.tty;
        self.shim.exec_command(h, &exec)
    }

    fn recover(&self, h: &TaskHandle) -> Result<Recovered, DriverError> {
        self.shim.recover(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    #[test]
    fn every_capability_name_maps_to_its_oci_capability() {
        for (n, name) in taba_types::security::CAPABILITIES.iter().enumerate() {
            let c = oci_capability(name).unwrap();
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(format!("CAP_{name}")),
                "capability {n}"
            );
        }
    }

    #[test]
    fn mknod_is_removed_from_every_set() {
        let mut spec = default_spec(&DefaultSpecOptions::default());
        let before = spec
            .process()
            .clone()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(before
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::Mknod));
        without_mknod(&mut spec);
        let caps = spec
            .process()
            .clone()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(!set.contains(&Capability::Mknod));
            assert!(set.contains(&Capability::Chown));
        }
    }
}
