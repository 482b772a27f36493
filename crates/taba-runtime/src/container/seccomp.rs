//! Translate an OCI seccomp profile (`linux.seccomp`) into BPF programs, and
//! the default profile taba gives containers.
//!
//! seccompiler builds one filter per (match action, mismatch action) pair, so
//! a profile is compiled into one or more filters that the kernel stacks; the
//! kernel returns the most restrictive result of all of them:
//! - filter 0 matches every listed syscall (with its argument conditions) and
//!   allows it, and applies the profile's default action to everything else
//!   (left out when the default action is itself "allow");
//! - one more filter per distinct non-allow action in the list (for example
//!   `ERRNO(ENOSYS)` for `clone3`): it applies that action to its syscalls and
//!   allows everything else.
//!
//! Syscall names unknown on this architecture are skipped. Only the native
//! architecture is filtered (other ABIs, such as x32 or i386, are killed by the
//! architecture check every filter starts with). Filter flags are ignored.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors compiling a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no filter support in seccompiler.
    #[error("seccomp is not supported on architecture {0}")]
    Arch(String),
    /// `SCMP_ACT_NOTIFY` needs a listener, which taba does not provide.
    #[error("seccomp action SCMP_ACT_NOTIFY is not supported")]
    Notify,
    /// A syscall rule's argument condition is invalid.
    #[error("invalid argument condition for syscall {name}: {reason}")]
    Condition {
        /// The syscall.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// seccompiler refused the filter (for example: too many instructions).
    #[error("build seccomp filter: {0}")]
    Build(String),
}

/// An action with its data, ordered so it can key a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Allow,
    Log,
    Trace(u32),
    Errno(u32),
    Trap,
    KillThread,
    KillProcess,
}

impl Action {
    fn from_oci(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Self, SeccompError> {
        use LinuxSeccompAction::*;
        Ok(match a {
            ScmpActAllow => Action::Allow,
            ScmpActLog => Action::Log,
            ScmpActTrace => Action::Trace(errno.unwrap_or(0)),
            ScmpActErrno => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
            ScmpActTrap => Action::Trap,
            ScmpActKill | ScmpActKillThread => Action::KillThread,
            ScmpActKillProcess => Action::KillProcess,
            ScmpActNotify => return Err(SeccompError::Notify),
        })
    }

    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Action::Allow => SeccompAction::Allow,
            Action::Log => SeccompAction::Log,
            Action::Trace(n) => SeccompAction::Trace(n),
            Action::Errno(n) => SeccompAction::Errno(n),
            Action::Trap => SeccompAction::Trap,
            Action::KillThread => SeccompAction::KillThread,
            Action::KillProcess => SeccompAction::KillProcess,
        }
    }
}

/// The rules of one syscall: unconditional, or any of several condition sets.
#[derive(Debug, Clone)]
enum Rules {
    All,
    Any(Vec<SeccompRule>),
}

type RuleMap = BTreeMap<i64, Rules>;

fn add(map: &mut RuleMap, nr: i64, rule: Option<SeccompRule>) {
    let entry = map.entry(nr).or_insert_with(|| Rules::Any(Vec::new()));
    match (entry, rule) {
        (Rules::All, _) => {}
        (e, None) => *e = Rules::All,
        (Rules::Any(v), Some(r)) => v.push(r),
    }
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_owned()))
}

/// The syscall number of `name` on this architecture, if it has one.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name).ok().map(|s| s.id() as i64)
}

fn condition(name: &str, a: &LinuxSeccompArg) -> Result<SeccompCondition, SeccompError> {
    use LinuxSeccompOperator::*;
    let bad = |reason: String| SeccompError::Condition {
        name: name.to_owned(),
        reason,
    };
    let (op, value) = match a.op() {
        ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
        ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
        ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
        ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
        ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
        ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
        // OCI (libseccomp): `value` is the mask, `valueTwo` the expected result.
        ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    let index =
        u8::try_from(a.index()).map_err(|_| bad(format!("index {} too large", a.index())))?;
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| bad(e.to_string()))
}

/// Compile an OCI seccomp profile into the BPF programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = target_arch()?;
    let default = Action::from_oci(profile.default_action(), profile.default_errno_ret())?;
    // Every listed (syscall, conditions) -> its action.
    let mut by_action: BTreeMap<Action, RuleMap> = BTreeMap::new();
    for entry in profile.syscalls().as_deref().unwrap_or_default() {
        let action = Action::from_oci(entry.action(), entry.errno_ret())?;
        if action == default {
            continue;
        }
        for name in entry.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            let conds = entry
                .args()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|a| condition(name, a))
                .collect::<Result<Vec<_>, _>>()?;
            let rule = if conds.is_empty() {
                None
            } else {
                Some(SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))?)
            };
            add(by_action.entry(action).or_default(), nr, rule);
        }
    }
    let mut programs = Vec::new();
    if default != Action::Allow {
        let mut all = RuleMap::new();
        for map in by_action.values() {
            for (nr, rules) in map {
                match rules {
                    Rules::All => add(&mut all, *nr, None),
                    Rules::Any(v) => v.iter().for_each(|r| add(&mut all, *nr, Some(r.clone()))),
                }
            }
        }
        programs.push(build(
            all,
            default.to_seccompiler(),
            SeccompAction::Allow,
            arch,
        )?);
    }
    for (action, map) in by_action {
        if action != Action::Allow {
            programs.push(build(
                map,
                SeccompAction::Allow,
                action.to_seccompiler(),
                arch,
            )?);
        }
    }
    Ok(programs)
}

fn build(
    map: RuleMap,
    mismatch: SeccompAction,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let rules = map
        .into_iter()
        .map(|(nr, r)| {
            (
                nr,
                match r {
                    Rules::All => Vec::new(),
                    Rules::Any(v) => v,
                },
            )
        })
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, on_match, arch)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(e.to_string()))
}

/// Syscalls a container may make by default, whatever its capabilities
/// (Docker's default profile is the reference). Left out: io_uring (as
/// Docker since 25.0: its operations bypass this filter), and those that administer
/// the host or escape the sandbox (mount, umount, pivot_root, reboot,
/// kexec_*, *_module, swapon/off, acct, settimeofday/clock_settime/adjtimex,
/// bpf, perf_event_open, userfaultfd, keyctl/add_key/request_key, ptrace,
/// process_vm_*, unshare, setns, open_by_handle_at, lookup_dcookie, quotactl,
/// personality, iopl/ioperm, nfsservctl, vhangup, *_mempolicy, move_pages,
/// kcmp, fanotify_init, name_to_handle_at, syslog, uselib, ustat, sysfs, the
/// new mount API, and clone3, which gets ENOSYS so libc falls back to clone).
pub const DEFAULT_ALLOWED_SYSCALLS: &[&str] = &[
    // files and descriptors
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "memfd_create",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pipe",
    "pipe2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "setxattr",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    "futimesat",
    "_llseek",
    "_newselect",
    "chroot",
    // events, polling, io
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "poll",
    "ppoll",
    "pselect6",
    "select",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    // memory
    "brk",
    "madvise",
    "membarrier",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // processes, threads, signals
    "arch_prctl",
    "capget",
    "capset",
    "clone",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_waitv",
    "get_robust_list",
    "get_thread_area",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "getuid32",
    "kill",
    "nanosleep",
    "clock_nanosleep",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "getitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setuid",
    "setuid32",
    "sigaltstack",
    "signal",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "tkill",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    "alarm",
    "ugetrlimit",
    // time and system information
    "clock_getres",
    "clock_gettime",
    "gettimeofday",
    "time",
    "times",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "sysinfo",
    "uname",
    "getcpu",
    "getrandom",
    // sockets
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socket",
    "socketcall",
    "socketpair",
    // System V and POSIX IPC (private to the container's IPC namespace)
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "ipc",
    // Landlock lets a process sandbox itself further.
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
];

/// Namespace flags a default-profile `clone` may not use (without CAP_SYS_ADMIN).
const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Syscalls allowed only when the container holds a capability, as in
/// Docker's default profile (`includes.caps`).
pub const SYSCALLS_BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
        ],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The default seccomp profile: the profile for Docker's default
/// capability set.
pub fn default_profile() -> LinuxSeccomp {
    profile_for(crate::container::DEFAULT_CAPABILITIES)
}

/// The seccomp profile for a container holding `caps` (its bounding set):
/// deny with EPERM, allow [`DEFAULT_ALLOWED_SYSCALLS`] and the calls of
/// [`SYSCALLS_BY_CAPABILITY`] for `caps`; `clone` only without namespace
/// flags unless `caps` has CAP_SYS_ADMIN; `clone3` fails with ENOSYS
/// (its flags live in memory, out of BPF's reach) unless CAP_SYS_ADMIN.
pub fn profile_for(caps: &[Capability]) -> LinuxSeccomp {
    let allow = |names: &[&str]| -> LinuxSyscall {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut s = LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .expect("all required fields set");
        s.set_args(None);
        s
    };
    let sys_admin = caps.contains(&Capability::SysAdmin);
    let mut names: Vec<&str> = DEFAULT_ALLOWED_SYSCALLS
        .iter()
        .copied()
        .filter(|n| *n != "clone")
        .collect();
    for (cap, calls) in SYSCALLS_BY_CAPABILITY {
        if caps.contains(cap) {
            for c in *calls {
                if !names.contains(c) {
                    names.push(c);
                }
            }
        }
    }
    if sys_admin {
        names.extend(["clone", "clone3"]);
    }
    let mut syscalls: Vec<LinuxSyscall> = vec![allow(&names)];
    if sys_admin {
        return LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(libc::EPERM as u32)
            .syscalls(syscalls)
            .build()
            .expect("all required fields set");
    }
    let mut clone = allow(&["clone"]);
    let arg = oci_spec::runtime::LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(CLONE_NS_FLAGS)
        .value_two(0u64)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .expect("all required fields set");
    clone.set_args(Some(vec![arg]));
    syscalls.push(clone);
    let mut clone3 = LinuxSyscallBuilder::default()
        .names(vec!["clone3".to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .build()
        .expect("all required fields set");
    clone3.set_errno_ret(Some(libc::ENOSYS as u32));
    syscalls.push(clone3);
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .syscalls(syscalls)
        .build()
        .expect("all required fields set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_into_two_filters() {
        let progs = compile(&default_profile()).unwrap();
        // filter 0: allow-list with EPERM default; filter 1: ENOSYS for clone3.
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    fn allowed(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().iter().flatten().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow && s.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn capabilities_open_their_syscalls_as_docker_does() {
        let d = default_profile();
        for denied in [
            "io_uring_setup",
            "io_uring_enter",
            "keyctl",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "init_module",
            "unshare",
            "mount",
            "ptrace",
            "pidfd_getfd",
        ] {
            assert!(!allowed(&d, denied), "{denied} allowed by default");
        }
        assert_eq!(d.default_errno_ret(), Some(libc::EPERM as u32));
        let mut caps = crate::container::DEFAULT_CAPABILITIES.to_vec();
        caps.push(Capability::SysPtrace);
        let p = profile_for(&caps);
        assert!(allowed(&p, "ptrace") && allowed(&p, "process_vm_readv"));
        assert!(!allowed(&p, "mount"));
        caps.push(Capability::SysAdmin);
        let p = profile_for(&caps);
        assert!(allowed(&p, "mount") && allowed(&p, "unshare") && allowed(&p, "clone3"));
        assert!(!allowed(&p, "keyctl") && !allowed(&p, "io_uring_setup"));
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn unknown_syscalls_are_skipped_and_known_ones_resolve() {
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("no_such_syscall"), None);
        let mut p = default_profile();
        let mut extra = p.syscalls().clone().unwrap();
        let mut s = extra[0].clone();
        s.set_names(vec!["no_such_syscall".into()]);
        extra.push(s);
        p.set_syscalls(Some(extra));
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn notify_is_rejected_with_a_clear_error() {
        let mut p = default_profile();
        p.set_default_action(LinuxSeccompAction::ScmpActNotify);
        let e = compile(&p).unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");
    }

    #[test]
    fn allow_default_with_only_allow_rules_installs_nothing() {
        let mut p = default_profile();
        p.set_default_action(LinuxSeccompAction::ScmpActAllow);
        p.set_syscalls(Some(vec![p.syscalls().as_ref().unwrap()[0].clone()]));
        assert!(compile(&p).unwrap().is_empty());
    }
}
