//! The last stage of starting any workload process, shared by plain processes,
//! containers and `shim exec`: rlimits, oom_score_adj, umask, working
//! directory, user and groups, capabilities, no_new_privs, seccomp, and the
//! `execve` with a `PATH` search in the process's own environment.
//!
//! An [`ExecPlan`] is built (and validated) in the parent, so the child only
//! makes system calls between fork and exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::io;

use oci_spec::runtime::{Capability, LinuxSeccomp, PosixRlimitType, Process};
use seccompiler::BpfProgram;

use crate::container::seccomp::{self, SeccompError};
use crate::sys;

/// Errors building an [`ExecPlan`].
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The command line is empty.
    #[error("process.args is empty")]
    NoArgs,
    /// A string holds a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// The seccomp profile could not be compiled.
    #[error("invalid seccomp profile")]
    Seccomp(#[from] SeccompError),
}

/// Capability sets as bit masks (bit n = capability number n).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CapPlan {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    /// The highest capability number the kernel knows (read in the parent).
    pub last_cap: u32,
}

/// One rlimit to set.
#[derive(Debug, Clone, Copy)]
struct Rlimit {
    resource: libc::__rlimit_resource_t,
    name: &'static str,
    soft: u64,
    hard: u64,
}

/// Everything the child needs to become the workload's process.
#[derive(Debug, Default)]
pub(crate) struct ExecPlan {
    args: Vec<CString>,
    env: Vec<CString>,
    path: String,
    cwd: Option<CString>,
    uid: u32,
    gid: u32,
    additional_gids: Vec<libc::gid_t>,
    umask: Option<u32>,
    caps: Option<CapPlan>,
    no_new_privs: bool,
    seccomp: Vec<BpfProgram>,
    rlimits: Vec<Rlimit>,
    oom_score_adj: Option<i32>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cstrings(v: &[String], what: &'static str) -> Result<Vec<CString>, LaunchError> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| LaunchError::Nul(what)))
        .collect()
}

fn path_of(env: &[String]) -> String {
    env.iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .map(str::to_owned)
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

impl ExecPlan {
    /// A plain host process: command, environment, working directory and user.
    /// Capabilities follow the kernel's rules for a uid change.
    pub(crate) fn plain(
        args: &[String],
        env: &[String],
        cwd: Option<&std::path::Path>,
        uid: u32,
        gid: u32,
        additional_gids: &[u32],
    ) -> Result<Self, LaunchError> {
        if args.is_empty() {
            return Err(LaunchError::NoArgs);
        }
        Ok(ExecPlan {
            args: cstrings(args, "args")?,
            env: cstrings(env, "env")?,
            path: path_of(env),
            cwd: cwd
                .map(sys::path_cstr)
                .transpose()
                .map_err(|_| LaunchError::Nul("cwd"))?,
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
            ..Default::default()
        })
    }

    /// An OCI process (a container's, or one exec'd into a container), with
    /// the container's seccomp profile.
    pub(crate) fn from_oci(
        process: &Process,
        seccomp: Option<&LinuxSeccomp>,
    ) -> Result<Self, LaunchError> {
        let args = process.args().as_deref().unwrap_or_default();
        let env = process.env().as_deref().unwrap_or_default();
        let mut plan = Self::plain(
            args,
            env,
            Some(process.cwd()),
            process.user().uid(),
            process.user().gid(),
            process
                .user()
                .additional_gids()
                .as_deref()
                .unwrap_or_default(),
        )?;
        plan.umask = process.user().umask();
        plan.no_new_privs = process.no_new_privileges().unwrap_or(false);
        plan.oom_score_adj = process.oom_score_adj();
        plan.caps = Some(match process.capabilities() {
            Some(c) => CapPlan {
                bounding: cap_mask(c.bounding()),
                effective: cap_mask(c.effective()),
                permitted: cap_mask(c.permitted()),
                inheritable: cap_mask(c.inheritable()),
                ambient: cap_mask(c.ambient()),
                last_cap: last_cap(),
            },
            // No capabilities object: the process gets none.
            None => CapPlan {
                last_cap: last_cap(),
                ..CapPlan::default()
            },
        });
        for r in process.rlimits().as_deref().unwrap_or_default() {
            let (resource, name) = rlimit_resource(r.typ());
            plan.rlimits.push(Rlimit {
                resource,
                name,
                soft: r.soft(),
                hard: r.hard(),
            });
        }
        if let Some(s) = seccomp {
            plan.seccomp = seccomp::compile(s)?;
        }
        Ok(plan)
    }

    /// Become the process and exec it. Only returns on failure, with a message
    /// that says what failed.
    pub(crate) fn exec(&self) -> Result<Infallible, String> {
        reset_signals();
        // Nothing above stdio may reach the workload: a leaked directory fd
        // is a way out of any root (`/proc/self/fd/N/..`).
        sys::cloexec_from(3).map_err(|e| format!("mark file descriptors close-on-exec: {e}"))?;
        if let Some(adj) = self.oom_score_adj {
            sys::write_file(
                "/proc/self/oom_score_adj".as_ref(),
                adj.to_string().as_bytes(),
            )
            .map_err(|e| format!("set oom_score_adj {adj}: {e}"))?;
        }
        for r in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            // SAFETY: valid rlimit struct.
            if let Err(e) = sys::check(unsafe { libc::setrlimit(r.resource, &lim) }) {
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (raising a hard limit needs CAP_SYS_RESOURCE, which this host lacks)"
                } else {
                    ""
                };
                return Err(format!(
                    "set rlimit {} to soft {} hard {}: {e}{hint}",
                    r.name, r.soft, r.hard
                ));
            }
        }
        if let Some(mask) = self.umask {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(mask as libc::mode_t) };
        }
        if let Some(cwd) = &self.cwd {
            // SAFETY: valid C string.
            sys::check(unsafe { libc::chdir(cwd.as_ptr()) })
                .map_err(|e| format!("chdir to {}: {e}", cwd.to_string_lossy()))?;
        }
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it
        // while we still have it. The filter then must allow the few calls below.
        if !self.no_new_privs {
            self.install_seccomp()?;
        }
        if let Some(caps) = &self.caps {
            drop_bounding(caps.bounding, caps.last_cap)?;
            if self.uid != 0 {
                // SAFETY: prctl with integer arguments.
                sys::check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
                    .map_err(|e| format!("set keepcaps: {e}"))?;
            }
        }
        self.set_user()?;
        if let Some(caps) = &self.caps {
            set_caps(caps)?;
        }
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            sys::check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
                .map_err(|e| format!("set no_new_privs: {e}"))?;
            self.install_seccomp()?;
        }
        Err(self.execvpe())
    }

    fn set_user(&self) -> Result<(), String> {
        // SAFETY: pointer and length describe a valid gid array.
        sys::check(unsafe {
            libc::setgroups(self.additional_gids.len(), self.additional_gids.as_ptr())
        })
        .map_err(|e| format!("setgroups {:?}: {e}", self.additional_gids))?;
        // SAFETY: plain syscalls with integer arguments.
        sys::check(unsafe { libc::setresgid(self.gid, self.gid, self.gid) })
            .map_err(|e| format!("setgid {}: {e}", self.gid))?;
        // SAFETY: as above.
        sys::check(unsafe { libc::setresuid(self.uid, self.uid, self.uid) })
            .map_err(|e| format!("setuid {}: {e}", self.uid))?;
        Ok(())
    }

    fn install_seccomp(&self) -> Result<(), String> {
        for prog in &self.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `fprog` points at a live, valid BPF program for the call's duration.
            sys::check(unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const _,
                )
            })
            .map_err(|e| format!("install seccomp filter: {e}"))?;
        }
        Ok(())
    }

    /// `execve` with a search of `PATH` from the process's own environment.
    fn execvpe(&self) -> String {
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let arg0 = &self.args[0];
        let try_exec = |prog: &CString| -> io::Error {
            // SAFETY: argv and envp are NUL-terminated arrays of valid C strings
            // that outlive the call.
            unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            io::Error::last_os_error()
        };
        let name = arg0.to_string_lossy();
        if name.contains('/') {
            return format!("exec {name}: {}", try_exec(arg0));
        }
        let mut denied = None;
        for dir in self.path.split(':').filter(|d| !d.is_empty()) {
            let Ok(full) = CString::new(format!("{dir}/{name}")) else {
                continue;
            };
            let e = try_exec(&full);
            match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
                Some(libc::EACCES) => denied = Some(e),
                _ => return format!("exec {dir}/{name}: {e}"),
            }
        }
        match denied {
            Some(e) => format!("exec {name}: {e}"),
            None => format!("exec {name}: not found in PATH {}", self.path),
        }
    }
}

/// Ignored signals stay ignored across exec (the shim ignores SIGPIPE): give
/// the workload default dispositions and an empty signal mask.
fn reset_signals() {
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: restoring the default disposition of a valid signal number.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty, initialised signal set passed to sigprocmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn drop_bounding(keep: u64, last: u32) -> Result<(), String> {
    for n in 0..=last.min(63) {
        if keep & (1 << n) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(format!("drop capability {n} from the bounding set: {e}"));
            }
        }
    }
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn set_caps(c: &CapPlan) -> Result<(), String> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = |m: u64| m as u32;
    let hi = |m: u64| (m >> 32) as u32;
    let data = [
        CapData {
            effective: lo(c.effective),
            permitted: lo(c.permitted),
            inheritable: lo(c.inheritable),
        },
        CapData {
            effective: hi(c.effective),
            permitted: hi(c.permitted),
            inheritable: hi(c.inheritable),
        },
    ];
    // SAFETY: header and a two-element data array, as capset(2) v3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc < 0 {
        return Err(format!(
            "set capabilities (effective {:#x} permitted {:#x} inheritable {:#x}): {}",
            c.effective,
            c.permitted,
            c.inheritable,
            io::Error::last_os_error()
        ));
    }
    for n in 0..64u64 {
        if c.ambient & (1 << n) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                n as libc::c_ulong,
                0,
                0,
            )
        };
        if rc < 0 {
            return Err(format!(
                "raise ambient capability {n}: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn cap_mask(set: &Option<oci_spec::runtime::Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .fold(0u64, |m, c| m | (1u64 << cap_number(*c)))
}

/// The kernel's number of a capability (linux/capability.h).
pub(crate) fn cap_number(c: Capability) -> u32 {
    use Capability::*;
    match c {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

fn rlimit_resource(t: PosixRlimitType) -> (libc::__rlimit_resource_t, &'static str) {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => (libc::RLIMIT_CPU, "RLIMIT_CPU"),
        RlimitFsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        RlimitData => (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        RlimitStack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
        RlimitCore => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        RlimitRss => (libc::RLIMIT_RSS, "RLIMIT_RSS"),
        RlimitNproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        RlimitNofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        RlimitMemlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        RlimitAs => (libc::RLIMIT_AS, "RLIMIT_AS"),
        RlimitLocks => (libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        RlimitSigpending => (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        RlimitNice => (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        RlimitRtprio => (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        RlimitRttime => (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    }
}
