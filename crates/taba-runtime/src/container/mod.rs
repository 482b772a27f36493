//! The embedded OCI container runtime: start the process of an OCI bundle.
//!
//! [`Container::load`] reads `<bundle>/config.json` once and turns it into a
//! start plan (mount list, namespace flags, capability masks, compiled seccomp
//! filters...), validating everything it can in the caller's process.
//! [`Container::start`] then makes ONE `clone` with the new namespaces; the
//! child joins the cgroups, joins namespaces given by path, sets the hostname,
//! builds the root filesystem (mounts, default devices, pivot_root, masked and
//! read-only paths), writes sysctls, and finally becomes the process (rlimits,
//! user, capabilities, no_new_privs, seccomp, execve). Any failure in the child
//! comes back to the caller as a message over a close-on-exec pipe; an empty
//! pipe means the exec succeeded. The process is pid 1 of its pid namespace.
//!
//! A new cgroup namespace is made after the process has joined its cgroups
//! (so that they are its root), and a mount of type `cgroup` mounts the
//! container's own cgroups read-only ([`cgroupfs`]). The standard streams
//! the process gets are given to its user first (as runc does), so that a
//! non-root user can reopen `/dev/stdout`; a missing working directory is
//! created (0755, owned by the container's root) after `pivot_root`.
//!
//! A new user namespace (with its id maps) is supported, see [`userns`];
//! joining one by path is not. Not supported (rejected with an error): the
//! time namespace, hooks, terminal mode. Cgroups are not created here: the
//! caller (the agent) makes them and passes their `cgroup.procs` files.

pub mod cgroupfs;
mod defaults;
mod rootfs;
pub mod seccomp;
pub mod userns;

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

pub use defaults::{
    current_hard_limit, default_nofile, default_spec, DefaultSpecOptions, DEFAULT_CAPABILITIES,
    DEFAULT_NOFILE,
};

use crate::launch::{ExecPlan, LaunchError};
use crate::sys::{self, ChildFailure};

/// Errors loading or starting a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// config.json could not be read or parsed.
    #[error("read bundle config {path}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// A required part of the spec is missing.
    #[error("config.json has no {0}")]
    Missing(&'static str),
    /// A field has a value this runtime cannot use.
    #[error("config.json {field}: {reason}")]
    Invalid {
        /// The field (`mounts[2].destination`, `linux.namespaces`...).
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The process section is invalid.
    #[error("config.json process")]
    Process(#[from] LaunchError),
    /// The clone or the error pipe failed.
    #[error("start container process")]
    Spawn(#[source] std::io::Error),
    /// The container process failed before its exec; the message says where.
    #[error("start container: {0}")]
    Start(String),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ContainerError {
    ContainerError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The standard streams of the container process.
#[derive(Debug, Clone, Copy)]
pub struct Stdio<'a> {
    /// Its standard input.
    pub stdin: BorrowedFd<'a>,
    /// Its standard output.
    pub stdout: BorrowedFd<'a>,
    /// Its standard error.
    pub stderr: BorrowedFd<'a>,
}

/// One mount to make, resolved against the bundle.
#[derive(Debug)]
pub(crate) struct MountPlan {
    /// Destination inside the container (absolute, normalised).
    pub destination: PathBuf,
    pub source: Option<CString>,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    /// MS_SHARED / MS_PRIVATE / ... (+ MS_REC), applied after the mount.
    pub propagation: libc::c_ulong,
    pub bind: bool,
    /// A bind mount of a non-directory: the target is created as a file.
    pub file_bind: bool,
    /// Type `cgroup`: the container's cgroups, as found on the host.
    pub cgroup: Option<cgroupfs::CgroupPlan>,
}

/// A device node to create in the container's /dev.
#[derive(Debug)]
pub(crate) struct DevicePlan {
    pub path: PathBuf,
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: u32,
    pub gid: u32,
}

/// A bundle read and checked, ready to start (possibly several times).
#[derive(Debug)]
pub struct Container {
    pub(crate) rootfs: PathBuf,
    pub(crate) root_readonly: bool,
    clone_flags: libc::c_ulong,
    /// A new cgroup namespace, made once the process is in its cgroups.
    new_cgroup_ns: bool,
    /// The working directory, created after `pivot_root` if missing.
    pub(crate) cwd: PathBuf,
    /// Host uid of the process's user (its stdio is given to it).
    stdio_owner: u32,
    /// Namespaces joined by path in the child (all but pid).
    join: Vec<(libc::c_int, PathBuf)>,
    /// A pid namespace to join (setns in the parent affects only its children).
    join_pid: Option<PathBuf>,
    hostname: Option<CString>,
    pub(crate) mounts: Vec<MountPlan>,
    pub(crate) devices: Vec<DevicePlan>,
    pub(crate) masked: Vec<PathBuf>,
    pub(crate) readonly: Vec<PathBuf>,
    pub(crate) sysctl: Vec<(PathBuf, String)>,
    pub(crate) propagation: libc::c_ulong,
    /// Id maps of a new user namespace.
    pub(crate) userns: Option<userns::IdMaps>,
    exec: ExecPlan,
}

/// Normalise an absolute path inside the container; `..` is rejected.
fn container_path(field: &str, p: &Path) -> Result<PathBuf, ContainerError> {
    if !p.is_absolute() {
        return Err(invalid(
            field,
            format!("{} is not an absolute path", p.display()),
        ));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(
                    field,
                    format!("{} must not contain '..'", p.display()),
                ))
            }
        }
    }
    Ok(out)
}

fn cstring(field: &str, s: &str) -> Result<CString, ContainerError> {
    CString::new(s).map_err(|_| invalid(field, "contains a NUL byte"))
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

impl Container {
    /// Read `<bundle>/config.json` and build the start plan.
    pub fn load(bundle: &Path) -> Result<Container, ContainerError> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|source| ContainerError::Config { path, source })?;
        Self::from_spec(bundle, &spec)
    }

    /// Build the start plan from an already parsed spec; relative paths are
    /// resolved against `bundle`.
    pub fn from_spec(bundle: &Path, spec: &Spec) -> Result<Container, ContainerError> {
        let root = spec
            .root()
            .as_ref()
            .ok_or(ContainerError::Missing("root"))?;
        let rootfs = bundle.join(root.path());
        let process = spec
            .process()
            .as_ref()
            .ok_or(ContainerError::Missing("process"))?;
        if process.terminal().unwrap_or(false) {
            return Err(invalid(
                "process.terminal",
                "terminal mode is not supported",
            ));
        }
        if spec.hooks().is_some() {
            return Err(invalid("hooks", "hooks are not supported"));
        }
        let linux = spec
            .linux()
            .as_ref()
            .ok_or(ContainerError::Missing("linux"))?;

        let mut clone_flags: libc::c_int = 0;
        let mut join = Vec::new();
        let mut join_pid = None;
        for (i, ns) in linux
            .namespaces()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let field = format!("linux.namespaces[{i}]");
            if ns.typ() == LinuxNamespaceType::User && ns.path().is_some() {
                return Err(invalid(
                    format!("{field}.path"),
                    "joining a user namespace by path is not supported",
                ));
            }
            if ns.typ() == LinuxNamespaceType::Time {
                return Err(invalid(
                    field,
                    format!("{:?} namespaces are not supported", ns.typ()),
                ));
            }
            let flag = ns_flag(ns.typ());
            match ns.path() {
                None => clone_flags |= flag,
                Some(p) if ns.typ() == LinuxNamespaceType::Pid => join_pid = Some(p.clone()),
                Some(p) => join.push((flag, p.clone())),
            }
        }
        // Unshared by the child once it is in its cgroups: at clone time it
        // would be the shim's cgroups that become the namespace's root.
        let new_cgroup_ns = clone_flags & libc::CLONE_NEWCGROUP != 0;
        clone_flags &= !libc::CLONE_NEWCGROUP;
        let new_mount_ns = clone_flags & libc::CLONE_NEWNS != 0;
        if !new_mount_ns {
            return Err(invalid(
                "linux.namespaces",
                "a new mount namespace is required",
            ));
        }
        let userns = if clone_flags & libc::CLONE_NEWUSER != 0 {
            Some(userns::plan(
                linux.uid_mappings().as_ref(),
                linux.gid_mappings().as_ref(),
            )?)
        } else {
            if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
                || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            {
                return Err(invalid(
                    "linux.uidMappings",
                    "id mappings need a new user namespace in linux.namespaces",
                ));
            }
            None
        };
        let hostname = match spec.hostname() {
            Some(h) if !h.is_empty() => {
                if clone_flags & libc::CLONE_NEWUTS == 0 {
                    return Err(invalid("hostname", "setting it needs a new uts namespace"));
                }
                Some(cstring("hostname", h)?)
            }
            _ => None,
        };

        let mut mounts = Vec::new();
        for (i, m) in spec
            .mounts()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            mounts.push(rootfs::plan_mount(bundle, i, m)?);
        }
        let mut devices = Vec::new();
        for (i, d) in linux
            .devices()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            devices.push(rootfs::plan_device(i, d)?);
        }
        let masked = linux
            .masked_paths()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| container_path(&format!("linux.maskedPaths[{i}]"), Path::new(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let readonly = linux
            .readonly_paths()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| container_path(&format!("linux.readonlyPaths[{i}]"), Path::new(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sysctl = Vec::new();
        for (k, v) in linux.sysctl().iter().flatten() {
            if k.is_empty() || k.contains("..") || k.contains('/') {
                return Err(invalid(format!("linux.sysctl.{k}"), "not a sysctl name"));
            }
            sysctl.push((
                PathBuf::from("/proc/sys").join(k.replace('.', "/")),
                v.clone(),
            ));
        }
        let propagation = match linux.rootfs_propagation().as_deref() {
            None | Some("") | Some("rprivate") => libc::MS_PRIVATE | libc::MS_REC,
            Some("private") => libc::MS_PRIVATE,
            Some("rslave") => libc::MS_SLAVE | libc::MS_REC,
            Some("slave") => libc::MS_SLAVE,
            Some("rshared") => libc::MS_SHARED | libc::MS_REC,
            Some("shared") => libc::MS_SHARED,
            Some("runbindable") => libc::MS_UNBINDABLE | libc::MS_REC,
            Some("unbindable") => libc::MS_UNBINDABLE,
            Some(other) => {
                return Err(invalid(
                    "linux.rootfsPropagation",
                    format!("unknown value {other:?}"),
                ))
            }
        };
        let exec = ExecPlan::from_oci(process, linux.seccomp().as_ref())?;
        let cwd = container_path("process.cwd", process.cwd())?;
        let uid = process.user().uid();
        let stdio_owner = match &userns {
            Some(maps) => maps.host_uid(uid).ok_or_else(|| {
                invalid(
                    "process.user.uid",
                    format!("{uid} is not mapped in linux.uidMappings"),
                )
            })?,
            None => uid,
        };
        Ok(Container {
            rootfs,
            root_readonly: root.readonly().unwrap_or(false),
            clone_flags: clone_flags as libc::c_ulong,
            new_cgroup_ns,
            cwd,
            stdio_owner,
            join,
            join_pid,
            hostname,
            mounts,
            devices,
            masked,
            readonly,
            sysctl,
            propagation,
            userns,
            exec,
        })
    }

    /// Start the container process with `stdio` as its standard streams, after
    /// joining it to the cgroups whose `cgroup.procs` files are given. Returns
    /// its host pid once it has exec'd.
    ///
    /// # Safety
    ///
    /// The calling process must be single-threaded (a fresh process such as
    /// `taba shim run`): the child of the `clone` runs Rust code (allocation,
    /// formatting, file I/O) until its `execve`, which is only sound when no
    /// other thread could hold a lock (the allocator's, stdio's) at the fork.
    /// The caller's own pid namespace for children changes if the spec joins
    /// a pid namespace by path, so the caller should start nothing else after.
    pub unsafe fn start(
        &self,
        stdio: Stdio<'_>,
        cgroup_procs: &[PathBuf],
    ) -> Result<libc::pid_t, ContainerError> {
        if let Some(p) = &self.join_pid {
            join_ns(p, libc::CLONE_NEWPID).map_err(ContainerError::Start)?;
        }
        give_stdio(stdio, self.stdio_owner).map_err(ContainerError::Start)?;
        // In a new user namespace the child is no longer privileged on the
        // host: the parent writes its id maps and joins it to its cgroups.
        let parent = |pid: libc::pid_t| -> std::io::Result<()> {
            if let Some(maps) = &self.userns {
                for p in cgroup_procs {
                    sys::write_file(p, pid.to_string().as_bytes()).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("join cgroup {}: {e}", p.display()))
                    })?;
                }
                userns::write_maps(pid, maps)?;
            }
            Ok(())
        };
        let result = sys::spawn_child_synced(self.clone_flags, parent, || {
            if self.userns.is_none() {
                join_cgroups(cgroup_procs)?;
            }
            if self.new_cgroup_ns {
                // SAFETY: unshare with a namespace flag.
                sys::check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })
                    .map_err(|e| format!("make cgroup namespace: {e}"))?;
            }
            for (flag, path) in &self.join {
                join_ns(path, *flag)?;
            }
            set_stdio(stdio)?;
            // Modes of created files and devices are set explicitly.
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(0o022) };
            if let Some(h) = &self.hostname {
                // SAFETY: pointer and length of a valid C string.
                sys::check(unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) })
                    .map_err(|e| format!("set hostname {}: {e}", h.to_string_lossy()))?;
            }
            if self.clone_flags & libc::CLONE_NEWNET as libc::c_ulong != 0 {
                loopback_up()?;
            }
            rootfs::setup(self)?;
            self.exec.exec()
        });
        result.map_err(|e| match e {
            ChildFailure::Os(e) => ContainerError::Spawn(e),
            ChildFailure::Child(msg) => ContainerError::Start(msg),
        })
    }
}

/// Write `spec` as `path` (a bundle's `config.json`), readable only by its
/// owner: the process environment in it holds the job's secrets.
pub fn save_spec(spec: &Spec, path: &Path) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    sys::write_atomic(path, &bytes, false)
}

/// Bring up `lo` in a network namespace the container just created: a new
/// namespace has its loopback down, and programs expect 127.0.0.1 to work
/// (Docker's `--network none` has it up too).
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "loopback: socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            Err("get flags")
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                Err("set flags")
            } else {
                Ok(())
            }
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    result.map_err(|what| format!("loopback: {what} of lo: {err}"))
}

/// Join the calling process to each cgroup (write "0": "myself").
pub(crate) fn join_cgroups(cgroup_procs: &[PathBuf]) -> Result<(), String> {
    for p in cgroup_procs {
        sys::write_file(p, b"0").map_err(|e| format!("join cgroup {}: {e}", p.display()))?;
    }
    Ok(())
}

/// `setns` into the namespace file at `path`.
pub(crate) fn join_ns(path: &Path, flag: libc::c_int) -> Result<(), String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("open namespace {}: {e}", path.display()))?;
    // SAFETY: a valid open fd and a namespace type flag.
    sys::check(unsafe { libc::setns(f.as_raw_fd(), flag) })
        .map_err(|e| format!("join namespace {}: {e}", path.display()))?;
    Ok(())
}

/// Give the process's standard streams to its user (host uid `uid`), as
/// runc does: a pipe belongs to whoever made it, mode 0600, and a non-root
/// user could not reopen it through `/dev/stdout` (nginx logs there).
/// `/dev/null` and what already belongs to `uid` are left alone; so is an
/// fd whose owner cannot be changed (EPERM, EINVAL, EROFS).
pub(crate) fn give_stdio(stdio: Stdio<'_>, uid: u32) -> Result<(), String> {
    let null = rustix::fs::stat("/dev/null").ok().map(|s| s.st_rdev);
    for (fd, name) in [
        (stdio.stdin, "stdin"),
        (stdio.stdout, "stdout"),
        (stdio.stderr, "stderr"),
    ] {
        let st = rustix::fs::fstat(fd).map_err(|e| format!("fstat {name}: {e}"))?;
        let is_null = rustix::fs::FileType::from_raw_mode(st.st_mode)
            == rustix::fs::FileType::CharacterDevice
            && Some(st.st_rdev) == null;
        if st.st_uid == uid || is_null {
            continue;
        }
        match rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid)), None) {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM | rustix::io::Errno::INVAL | rustix::io::Errno::ROFS) => {}
            Err(e) => return Err(format!("give {name} to uid {uid}: {e}")),
        }
    }
    Ok(())
}

/// Make the three streams the process's fds 0, 1 and 2.
pub(crate) fn set_stdio(stdio: Stdio<'_>) -> Result<(), String> {
    for (fd, target) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
        let fd = fd.as_raw_fd();
        if fd == target {
            // Already in place: just make sure it survives exec.
            // SAFETY: fcntl on an open fd.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        } else {
            sys::dup2(fd, target).map_err(|e| format!("set up fd {target}: {e}"))?;
        }
    }
    Ok(())
}
