//! `taba shim exec --pid <pid> --spec <file>`: run a command inside a running
//! task (for `taba alloc exec`).
//!
//! For a container, the exec process joins the cgroups in the spec, then the
//! user (if the container has its own), ipc, uts, net, pid and mount namespaces of the container's init (those that
//! differ from its own), forks so the child is inside the pid namespace, and
//! the child takes the same user, capabilities, no_new_privs and seccomp
//! filter as the container's process, changes directory and execs the command
//! with the exec process's own stdin/stdout/stderr. For a plain process
//! workload it only joins the cgroups and takes the user and directory. The
//! exec process exits with the command's status (128+N when signal N killed
//! it); the child is killed if the exec process dies first.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

use super::{ProcessWorkload, SHIM_FILES_VERSION};
use crate::container;
use crate::launch::{ExecPlan, LaunchError};
use crate::sys::{self, ChildFailure};

/// Exit code of `shim exec` when it failed before running the command.
pub const EXEC_SETUP_FAILED: i32 = 125;
/// Exit code of `shim exec` when the command was not found (as a shell
/// and `docker exec` say it).
pub const EXEC_START_FAILED: i32 = 127;
/// Exit code of `shim exec` when the command was found but cannot be
/// executed (permission denied, not an executable).
pub const EXEC_NOT_EXECUTABLE: i32 = 126;

impl ExecError {
    /// The exit code `shim exec` ends with when this error stops it: 126 or
    /// 127 when the command could not be started (as shells and `docker
    /// exec`), 125 when the exec itself failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Start(m)
                if m.contains("Permission denied")
                    || m.contains("Exec format error")
                    || m.contains("Is a directory") =>
            {
                EXEC_NOT_EXECUTABLE
            }
            ExecError::Start(_) => EXEC_START_FAILED,
            _ => EXEC_SETUP_FAILED,
        }
    }
}

/// Errors of `shim exec`.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The spec file could not be read.
    #[error("read exec spec {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The spec file is not a valid [`ExecSpec`].
    #[error("parse exec spec {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The spec has another version.
    #[error("exec spec has version {0}, expected {SHIM_FILES_VERSION}")]
    Version(u32),
    /// The bundle's config.json could not be read.
    #[error("read bundle config {path}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The bundle has no process section.
    #[error("bundle config has no process")]
    NoProcess,
    /// The process is invalid.
    #[error("exec process")]
    Launch(#[from] LaunchError),
    /// Joining the task's cgroups or namespaces failed.
    #[error("join task: {0}")]
    Join(String),
    /// Forking the command failed.
    #[error("fork command")]
    Fork(#[source] std::io::Error),
    /// The command failed before its exec (not found, bad directory...).
    #[error("start command: {0}")]
    Start(String),
}

/// What to run: the file passed as `--spec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Always [`SHIM_FILES_VERSION`].
    pub version: u32,
    /// The target: a container or a plain process.
    pub target: ExecTarget,
    /// `cgroup.procs` files to join (the task's cgroups).
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// Run the command in a new pseudo-terminal of this size (columns,
    /// rows), made inside the task; stdin is then framed (`shim::tty`).
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
}

/// How to run the command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecTarget {
    /// Inside a container: its namespaces, and this OCI process (command,
    /// env, cwd, user, capabilities, no_new_privs, rlimits) with this seccomp profile.
    Container {
        /// The process to run.
        process: Box<Process>,
        /// The container's seccomp profile.
        seccomp: Option<LinuxSeccomp>,
    },
    /// Next to a plain process: no namespaces to join.
    Process(ProcessWorkload),
}

impl ExecSpec {
    /// Run `args` in the container of `bundle` as its own process runs
    /// (user, env, cwd, capabilities, no_new_privs, seccomp).
    pub fn for_container(
        bundle: &Path,
        args: Vec<String>,
        cgroup_procs: Vec<PathBuf>,
    ) -> Result<ExecSpec, ExecError> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|source| ExecError::Bundle { path, source })?;
        let mut process = spec.process().clone().ok_or(ExecError::NoProcess)?;
        process.set_args(Some(args));
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        Ok(ExecSpec {
            version: SHIM_FILES_VERSION,
            target: ExecTarget::Container {
                process: Box::new(process),
                seccomp,
            },
            cgroup_procs,
            tty: None,
        })
    }

    /// Run the command as `uid`:`gid` with these supplementary groups and
    /// `HOME` (an exec's `--user`, resolved by the caller in the task's
    /// own passwd and group files).
    pub fn set_user(&mut self, uid: u32, gid: u32, additional_gids: Vec<u32>, home: &str) {
        match &mut self.target {
            ExecTarget::Container { process, .. } => {
                let mut user = process.user().clone();
                user.set_uid(uid);
                user.set_gid(gid);
                user.set_additional_gids(Some(additional_gids));
                user.set_umask(None);
                process.set_user(user);
                let mut env: Vec<String> = process
                    .env()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| !e.starts_with("HOME="))
                    .collect();
                env.push(format!("HOME={home}"));
                process.set_env(Some(env));
            }
            ExecTarget::Process(p) => {
                p.uid = uid;
                p.gid = gid;
                p.additional_gids = additional_gids;
            }
        }
    }

    /// Run `args` next to a plain process workload, as its user and in its directory.
    pub fn for_process(
        workload: &ProcessWorkload,
        args: Vec<String>,
        cgroup_procs: Vec<PathBuf>,
    ) -> ExecSpec {
        let mut w = workload.clone();
        w.args = args;
        ExecSpec {
            version: SHIM_FILES_VERSION,
            target: ExecTarget::Process(w),
            cgroup_procs,
            tty: None,
        }
    }

    /// Write the spec to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).expect("plain data serializes");
        sys::write_atomic(path, &bytes, false)
    }
}

/// The command that runs `taba shim exec` (stdio left to the caller).
pub fn exec_command(taba_exe: &Path, pid: i32, spec: &Path) -> Command {
    let mut c = Command::new(taba_exe);
    c.args(["shim", "exec", "--pid"])
        .arg(pid.to_string())
        .arg("--spec")
        .arg(spec);
    c
}

/// Namespaces joined for a container exec: the user namespace first (it
/// owns the others, and entering it gives the capabilities to join them),
/// mount last (it changes the root).
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("user", libc::CLONE_NEWUSER),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

fn same_ns(pid: i32, name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/self/ns/{name}")),
        std::fs::metadata(format!("/proc/{pid}/ns/{name}")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Make the directory `root` (the task's root, opened before joining its
/// namespaces) our root and working directory.
fn enter_root(root: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fchdir on an open directory fd we own.
    sys::check(unsafe { libc::fchdir(root.as_raw_fd()) })?;
    let dot = std::ffi::CString::new(".").expect("no NUL");
    // SAFETY: a valid C string.
    sys::check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")
}

/// Run the exec described by `spec_path` against the task whose (container
/// init or process) pid is `pid`; returns the command's exit code. Call it in
/// a fresh, single-threaded process.
pub fn main_exec(pid: i32, spec_path: &Path) -> Result<i32, ExecError> {
    let bytes = std::fs::read(spec_path).map_err(|source| ExecError::Read {
        path: spec_path.to_owned(),
        source,
    })?;
    let spec: ExecSpec = serde_json::from_slice(&bytes).map_err(|source| ExecError::Parse {
        path: spec_path.to_owned(),
        source,
    })?;
    if spec.version != SHIM_FILES_VERSION {
        return Err(ExecError::Version(spec.version));
    }
    let (plan, join_ns) = match &spec.target {
        ExecTarget::Container { process, seccomp } => {
            (ExecPlan::from_oci(process, seccomp.as_ref())?, true)
        }
        ExecTarget::Process(p) => (
            ExecPlan::plain(
                &p.args,
                &p.env,
                p.cwd.as_deref(),
                p.uid,
                p.gid,
                &p.additional_gids,
            )?,
            false,
        ),
    };
    // The command's user may reopen its stdio (`/dev/stdout`), as the
    // container's own process may: give the streams to its host uid.
    let uid = match &spec.target {
        ExecTarget::Container { process, .. } => process.user().uid(),
        ExecTarget::Process(p) => p.uid,
    };
    let host_uid = if join_ns {
        container::userns::IdMaps::of_process(pid)
            .map_err(|e| ExecError::Join(format!("read id maps of {pid}: {e}")))?
            .host_uid(uid)
    } else {
        Some(uid)
    };
    if let Some(uid) = host_uid {
        // SAFETY: fds 0-2 are this process's standard streams, open for
        // its whole life.
        let stdio = unsafe {
            container::Stdio {
                stdin: std::os::fd::BorrowedFd::borrow_raw(0),
                stdout: std::os::fd::BorrowedFd::borrow_raw(1),
                stderr: std::os::fd::BorrowedFd::borrow_raw(2),
            }
        };
        container::give_stdio(stdio, uid).map_err(ExecError::Join)?;
    }
    container::join_cgroups(&spec.cgroup_procs).map_err(ExecError::Join)?;
    if join_ns {
        // Open every namespace first: /proc changes meaning once we join.
        // The task's root too: joining a mount namespace puts us at the
        // namespace's root, which is the container's only when the runtime
        // ran unconfined; an agent in a chroot (an initramfs, as in the QEMU
        // guest of the v2 tests) pivots inside its chroot, and the
        // namespace's root stays the host's.
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let root_fd = std::fs::File::open(&root)
            .map_err(|e| ExecError::Join(format!("open {}: {e}", root.display())))?;
        let mut files = Vec::new();
        for (name, flag) in NAMESPACES {
            if !same_ns(pid, name) {
                let p = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
                let f = std::fs::File::open(&p)
                    .map_err(|e| ExecError::Join(format!("open {}: {e}", p.display())))?;
                files.push((p, f, *flag));
            }
        }
        for (p, f, flag) in files {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace fd and its type.
            sys::check(unsafe { libc::setns(f.as_raw_fd(), flag) })
                .map_err(|e| ExecError::Join(format!("join namespace {}: {e}", p.display())))?;
        }
        enter_root(&root_fd)
            .map_err(|e| ExecError::Join(format!("enter {}: {e}", root.display())))?;
    }
    // The terminal is made here, inside the task's root: its devpts.
    let pty = spec
        .tty
        .map(|(cols, rows)| super::tty::open(cols, rows))
        .transpose()
        .map_err(|e| ExecError::Join(format!("open a terminal: {e}")))?;
    let child = sys::spawn_child(0, || {
        // SAFETY: prctl with integer arguments.
        sys::check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
            .map_err(|e| format!("set parent-death signal: {e}"))?;
        if let Some(p) = &pty {
            super::tty::become_controlling(&p.slave)?;
        }
        plan.exec()
    });
    let child = child.map_err(|e| match e {
        ChildFailure::Os(e) => ExecError::Fork(e),
        ChildFailure::Child(msg) => ExecError::Start(msg),
    })?;
    let status = match pty {
        Some(p) => {
            drop(p.slave);
            super::tty::relay(p.master, child).map_err(ExecError::Fork)?
        }
        None => sys::wait_pid(child).map_err(ExecError::Fork)?,
    };
    Ok(match sys::decode_wait_status(status) {
        (Some(code), _) => code,
        (_, Some(sig)) => 128 + sig,
        _ => EXEC_SETUP_FAILED,
    })
}
