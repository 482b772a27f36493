//! The task shim: one small supervisor process per task run, and the API the
//! agent uses to start it, find it again after a restart, signal and wait.
//!
//! ## Files in a task directory
//!
//! | file | written by | when |
//! | --- | --- | --- |
//! | `shim.json` ([`ShimConfig`]) | the agent | before [`spawn`] |
//! | `state.json` ([`ShimState`]) | the shim, atomically | once the workload has exec'd |
//! | `exit.json` ([`ExitStatus`]) | the shim, atomically | when the workload has ended, or could not start |
//!
//! Nothing is fsync'd: these files describe processes, which a host crash
//! ends anyway; after a reboot a task dir without `exit.json` means "lost".
//!
//! Logs go to `<log_dir>/<log_name>.stdout.N` and `.stderr.N`; see [`logs`]
//! for the numbering and rotation.
//!
//! ## Start protocol
//!
//! ```text
//! agent: spawn()                    shim (taba shim run DIR)            workload
//!   pipe(ready) ----fd 3---------->  fork; parent exits at once  
//!   wait(intermediate) <----------   child: setsid (detached)
//!                                    read shim.json, open logs
//!                                    clone/fork ------------------------> join cgroups, set up,
//!                                    <--- error pipe: EOF = exec'd ----    execve
//!                                    write state.json
//!   read(ready) <-- {"running"...}   close(ready); poll loop: copy stdout/stderr to logs
//!                                    workload exits (pidfd readable) -> waitpid
//!                                    write exit.json; exit
//! ```
//!
//! Because of the intermediate fork the shim is never the agent's child: the
//! agent has nothing to reap, and when it dies the shim and the workload run
//! on. A restarted agent reads `state.json`, checks [`is_alive`] and calls
//! [`wait_exit`], which waits on the shim through a pidfd.
//!
//! The shim uses no threads and no async runtime: one `poll(2)` loop.

pub mod console;
pub mod exec;
pub mod logs;
pub mod tty;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::{self, Container};
use crate::launch::ExecPlan;
use crate::sys::{self, ChildFailure};
use logs::LogWriter;

/// Version of the files in a task directory this code writes and reads.
pub const SHIM_FILES_VERSION: u32 = 1;
/// The shim's input.
pub const CONFIG_FILE: &str = "shim.json";
/// Written once the workload runs.
pub const STATE_FILE: &str = "state.json";
/// Written when the workload has ended.
pub const EXIT_FILE: &str = "exit.json";
/// Environment variable naming the readiness fd inherited by the shim.
pub const READY_FD_ENV: &str = "TABA_SHIM_READY_FD";

/// What the shim runs: `shim.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// Always [`SHIM_FILES_VERSION`].
    pub version: u32,
    /// The workload.
    pub workload: Workload,
    /// `cgroup.procs` files the workload joins before it execs.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// Directory of the log files.
    pub log_dir: PathBuf,
    /// Base name of the log files (the task's name).
    pub log_name: String,
    /// Size cap of one log file, bytes.
    pub log_max_bytes: u64,
    /// How many files of each stream are kept.
    pub log_max_files: u32,
    /// Keep a console: the workload's stdin and a copy of its stdout on
    /// `console.sock` in the task directory (`shim::console`).
    #[serde(default)]
    pub console: bool,
}

/// The workload of a task run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// A plain host process (the `exec` driver): no namespaces.
    Process(ProcessWorkload),
    /// An OCI bundle run by the embedded runtime.
    Container {
        /// The bundle directory (holding `config.json`).
        bundle: PathBuf,
    },
}

/// A plain host process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessWorkload {
    /// Command line; `args[0]` is looked up in `PATH` from `env` if it has no '/'.
    pub args: Vec<String>,
    /// Environment, `K=V` (nothing is inherited).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// `state.json`: the running workload.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimState {
    /// Always [`SHIM_FILES_VERSION`].
    pub version: u32,
    /// Host pid of the workload.
    pub pid: i32,
    /// When it exec'd, Unix milliseconds.
    pub started_at: u64,
    /// Field 22 of `/proc/<pid>/stat`, to tell pid reuse.
    pub pid_start_time: u64,
    /// The shim's pid.
    pub shim_pid: i32,
    /// Field 22 of `/proc/<shim_pid>/stat`.
    pub shim_start_time: u64,
}

/// `exit.json`: how the workload ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Always [`SHIM_FILES_VERSION`].
    pub version: u32,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// When the shim saw it end (or gave up starting it), Unix milliseconds.
    pub finished_at: u64,
    /// Why it could not start; `None` when it ran.
    pub start_error: Option<String>,
}

/// A started task run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    /// The shim's pid.
    pub shim_pid: i32,
    /// The workload's host pid.
    pub pid: i32,
    /// When it exec'd, Unix milliseconds.
    pub started_at: u64,
}

/// The message on the readiness pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Ready {
    Running(Started),
    Failed { error: String },
}

/// Errors of the shim and of its API.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is not valid JSON of the expected shape.
    #[error("parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A file has a version this code does not know.
    #[error("{path} has version {found}, expected {SHIM_FILES_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The shim process could not be started.
    #[error("start shim {exe}")]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The workload could not be started; the message says why.
    #[error("start workload: {0}")]
    Start(String),
    /// The shim ended without saying whether the workload started.
    #[error("shim exited without reporting readiness ({0})")]
    NoReadiness(String),
    /// The shim is gone and left no exit status.
    #[error("shim {shim_pid} exited without writing {EXIT_FILE} in {task_dir}")]
    NoExitStatus {
        /// The task directory.
        task_dir: PathBuf,
        /// The shim's pid.
        shim_pid: i32,
    },
    /// The workload is not running (any more).
    #[error("workload {0} is not running")]
    NotRunning(i32),
    /// A system call failed.
    #[error("{0}")]
    Os(&'static str, #[source] io::Error),
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ShimError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ShimError::Io {
                what: "read",
                path: path.to_owned(),
                source,
            })
        }
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(&bytes).map_err(|source| ShimError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if v.version != SHIM_FILES_VERSION {
        return Err(ShimError::Version {
            path: path.to_owned(),
            found: v.version,
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ShimError::Parse {
            path: path.to_owned(),
            source,
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T, sync: bool) -> Result<(), ShimError> {
    let bytes = serde_json::to_vec(value).expect("plain data serializes");
    sys::write_atomic(path, &bytes, sync).map_err(|source| ShimError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    })
}

/// Write `shim.json` into `task_dir` (atomically).
pub fn write_config(task_dir: &Path, config: &ShimConfig) -> Result<(), ShimError> {
    write_json(&task_dir.join(CONFIG_FILE), config, false)
}

/// Read `shim.json`.
pub fn read_config(task_dir: &Path) -> Result<ShimConfig, ShimError> {
    let path = task_dir.join(CONFIG_FILE);
    read_json(&path)?.ok_or_else(|| ShimError::Io {
        what: "read",
        path,
        source: io::ErrorKind::NotFound.into(),
    })
}

/// Read `state.json`; `None` if the workload never ran.
pub fn read_state(task_dir: &Path) -> Result<Option<ShimState>, ShimError> {
    read_json(&task_dir.join(STATE_FILE))
}

/// Read `exit.json`; `None` while the workload runs (or before it started).
pub fn read_exit(task_dir: &Path) -> Result<Option<ExitStatus>, ShimError> {
    read_json(&task_dir.join(EXIT_FILE))
}

/// Whether `pid` is a live (not zombie) process that started at `start_time`.
fn same_process(pid: i32, start_time: u64) -> bool {
    matches!(sys::proc_stat(pid), Ok((state, start)) if start == start_time && state != 'Z' && state != 'X')
}

/// Whether the workload of `state` still runs (its pid exists, is not a
/// zombie, and has the recorded start time).
pub fn is_alive(state: &ShimState) -> bool {
    same_process(state.pid, state.pid_start_time)
}

/// Send signal `sig` to the workload, if it is still the same process.
pub fn signal(state: &ShimState, sig: i32) -> Result<(), ShimError> {
    let fd = match sys::pidfd_open(state.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(ShimError::NotRunning(state.pid))
        }
        Err(e) => return Err(ShimError::Os("open pidfd of workload", e)),
    };
    // Checked after the pidfd is open, so the pidfd surely names the process we checked.
    if !is_alive(state) {
        return Err(ShimError::NotRunning(state.pid));
    }
    // SAFETY: a valid pidfd, a signal number, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc < 0 {
        return Err(ShimError::Os("signal workload", io::Error::last_os_error()));
    }
    Ok(())
}

/// Block until the shim `shim_pid` of `task_dir` has exited, then return the
/// workload's exit status. Works for a shim that is not the caller's child
/// (the agent may have restarted). Call it from a blocking thread.
pub fn wait_exit(task_dir: &Path, shim_pid: i32) -> Result<ExitStatus, ShimError> {
    match sys::pidfd_open(shim_pid) {
        Ok(fd) => {
            // The pid may have been reused by now: only wait if it is our shim.
            let ours = match read_state(task_dir) {
                Ok(Some(s)) if s.shim_pid == shim_pid => same_process(shim_pid, s.shim_start_time),
                // No state: the workload never ran, the shim is about to exit.
                _ => true,
            };
            if ours && read_exit(task_dir)?.is_none() {
                sys::poll_readable(&fd, -1).map_err(|e| ShimError::Os("wait for shim", e))?;
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(e) => return Err(ShimError::Os("open pidfd of shim", e)),
    }
    read_exit(task_dir)?.ok_or_else(|| ShimError::NoExitStatus {
        task_dir: task_dir.to_owned(),
        shim_pid,
    })
}

/// Start `<taba_exe> shim run <task_dir>` detached, and return once the
/// workload runs, or with the reason it could not start (also in `exit.json`).
/// `shim.json` must already be in `task_dir`.
pub fn spawn(taba_exe: &Path, task_dir: &Path) -> Result<Started, ShimError> {
    let (ready_r, mut ready_w) =
        sys::pipe().map_err(|e| ShimError::Os("create readiness pipe", e))?;
    if ready_w.as_raw_fd() == 3 {
        // dup2(3, 3) would leave close-on-exec set on some libcs: move it.
        // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd we own.
        let fd = unsafe { libc::fcntl(ready_w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4) };
        if fd < 0 {
            return Err(ShimError::Os(
                "move readiness pipe",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
        ready_w = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let launcher = posix_spawn_launcher(taba_exe, task_dir, ready_w.as_raw_fd())?;
    drop(ready_w);
    // The process we started forks the real shim and exits at once.
    let mut status: libc::c_int = 0;
    // SAFETY: waiting for the child we just spawned; `status` is a valid out-parameter.
    let rc = unsafe { libc::waitpid(launcher, &mut status, 0) };
    if rc < 0 {
        return Err(ShimError::Os(
            "wait for shim launcher",
            io::Error::last_os_error(),
        ));
    }
    let msg = sys::read_all(ready_r).map_err(|e| ShimError::Os("read shim readiness", e))?;
    if msg.is_empty() {
        let (code, sig) = sys::decode_wait_status(status);
        return Err(ShimError::NoReadiness(format!(
            "launcher exit code {code:?}, signal {sig:?}"
        )));
    }
    match serde_json::from_slice::<Ready>(&msg) {
        Ok(Ready::Running(s)) => Ok(s),
        Ok(Ready::Failed { error }) => Err(ShimError::Start(error)),
        Err(e) => Err(ShimError::NoReadiness(format!("bad message: {e}"))),
    }
}

/// Start `<taba_exe> shim run <task_dir>` with `ready_w` as its fd 3 and
/// /dev/null as stdio, through posix_spawn: glibc's posix_spawn shares the
/// caller's memory until the exec (CLONE_VM | CLONE_VFORK), so a large,
/// multi-threaded agent does not pay for copying its page tables on every
/// task start, as fork + exec would.
fn posix_spawn_launcher(
    taba_exe: &Path,
    task_dir: &Path,
    ready_w: RawFd,
) -> Result<libc::pid_t, ShimError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let spawn_err = |source: io::Error| ShimError::Spawn {
        exe: taba_exe.to_owned(),
        source,
    };
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| {
            spawn_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "argument contains a NUL byte",
            ))
        })
    };
    let exe = cstr(taba_exe.as_os_str().as_bytes())?;
    let args = [
        exe.clone(),
        cstr(b"shim")?,
        cstr(b"run")?,
        cstr(task_dir.as_os_str().as_bytes())?,
    ];
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k.as_bytes() != READY_FD_ENV.as_bytes())
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(cstr(format!("{READY_FD_ENV}=3").as_bytes())?);
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr() as *mut _).collect();
    envp.push(std::ptr::null_mut());
    let devnull = cstr(b"/dev/null")?;

    // SAFETY: the file-actions object is initialised before use and destroyed
    // on every path; every pointer passed (paths, argv, envp) points into
    // CStrings and vectors that outlive the posix_spawn call.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let rc = libc::posix_spawn_file_actions_init(&mut fa);
        if rc != 0 {
            return Err(spawn_err(io::Error::from_raw_os_error(rc)));
        }
        let mut rc = 0;
        for fd in 0..3 {
            if rc == 0 {
                let flags = if fd == 0 {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY
                };
                rc =
                    libc::posix_spawn_file_actions_addopen(&mut fa, fd, devnull.as_ptr(), flags, 0);
            }
        }
        if rc == 0 {
            // dup2 onto fd 3 clears close-on-exec on the copy (the pipe is
            // never fd 3 itself here).
            rc = libc::posix_spawn_file_actions_adddup2(&mut fa, ready_w, 3);
        }
        let mut pid: libc::pid_t = 0;
        if rc == 0 {
            rc = libc::posix_spawn(
                &mut pid,
                exe.as_ptr(),
                &fa,
                std::ptr::null(),
                argv.as_ptr(),
                envp.as_ptr(),
            );
        }
        libc::posix_spawn_file_actions_destroy(&mut fa);
        if rc != 0 {
            return Err(spawn_err(io::Error::from_raw_os_error(rc)));
        }
        Ok(pid)
    }
}

/// The `taba shim run <task_dir>` entry point: become the detached shim of the
/// task. Returns the process exit code (0 when the workload ran, whatever its
/// own status; 1 when it could not start). Call it in a fresh, single-threaded
/// process.
pub fn main_run(task_dir: &Path) -> i32 {
    let ready = take_ready_fd();
    // Hold none of the agent's descriptors (sockets, store files, dirs): the
    // shim outlives the agent and is the parent of the workload.
    sys::close_all_but_stdio(ready.as_ref().map(|f| f.as_raw_fd()));
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // Detach: the launcher exits at once, so the shim is nobody's child but init's.
    // SAFETY: single-threaded process (documented contract).
    match unsafe { libc::fork() } {
        -1 => {
            report(
                ready,
                Ready::Failed {
                    error: format!("fork shim: {}", io::Error::last_os_error()),
                },
            );
            return 1;
        }
        0 => {}
        // SAFETY: _exit skips destructors, which belong to the child now.
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: plain syscall; we are not a group leader after fork.
    unsafe { libc::setsid() };
    let mut ready = ready;
    match Shim::start(task_dir) {
        Ok(shim) => {
            let started = Started {
                shim_pid: shim.shim_pid,
                pid: shim.pid,
                started_at: shim.started_at,
            };
            report(ready.take(), Ready::Running(started));
            shim.supervise();
            0
        }
        Err(error) => {
            let exit = ExitStatus {
                version: SHIM_FILES_VERSION,
                exit_code: None,
                signal: None,
                finished_at: sys::now_ms(),
                start_error: Some(error.clone()),
            };
            let error = match write_json(&task_dir.join(EXIT_FILE), &exit, false) {
                Ok(()) => error,
                Err(e) => format!("{error}; and writing {EXIT_FILE} failed: {e}"),
            };
            report(ready, Ready::Failed { error });
            1
        }
    }
}

fn take_ready_fd() -> Option<OwnedFd> {
    let v: OsString = std::env::var_os(READY_FD_ENV)?;
    std::env::remove_var(READY_FD_ENV);
    let fd: RawFd = v.to_str()?.parse().ok()?;
    // SAFETY: fcntl on an integer fd only queries it.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: the fd is open (fcntl succeeded) and was handed to us to own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn report(fd: Option<OwnedFd>, msg: Ready) {
    if let Some(fd) = fd {
        let bytes = serde_json::to_vec(&msg).expect("plain data serializes");
        let _ = sys::write_fd(fd.as_raw_fd(), &bytes);
    }
}

/// A running shim: the workload and the read ends of its output pipes.
struct Shim {
    task_dir: PathBuf,
    pid: i32,
    shim_pid: i32,
    started_at: u64,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out_log: LogWriter,
    err_log: LogWriter,
    console: Option<console::Console>,
}

impl Shim {
    /// Read the config, open the logs, start the workload, write `state.json`.
    fn start(task_dir: &Path) -> Result<Shim, String> {
        let config = read_config(task_dir).map_err(|e| error_chain(&e))?;
        let open_log = |stream| {
            LogWriter::open(
                &config.log_dir,
                &config.log_name,
                stream,
                config.log_max_bytes,
                config.log_max_files,
            )
            .map_err(|e| error_chain(&e))
        };
        let out_log = open_log("stdout")?;
        let err_log = open_log("stderr")?;
        let (out_r, out_w) = sys::pipe().map_err(|e| format!("create stdout pipe: {e}"))?;
        let (err_r, err_w) = sys::pipe().map_err(|e| format!("create stderr pipe: {e}"))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
        let (console, console_in) = if config.console {
            let (c, r) = console::Console::bind(task_dir)?;
            (Some(c), Some(r))
        } else {
            (None, None)
        };
        let stdio = container::Stdio {
            stdin: console_in.as_ref().map_or(null.as_fd(), |r| r.as_fd()),
            stdout: out_w.as_fd(),
            stderr: err_w.as_fd(),
        };
        let pid = match &config.workload {
            Workload::Process(p) => {
                let plan = ExecPlan::plain(
                    &p.args,
                    &p.env,
                    p.cwd.as_deref(),
                    p.uid,
                    p.gid,
                    &p.additional_gids,
                )
                .map_err(|e| format!("workload.process: {e}"))?;
                sys::spawn_child(0, || {
                    container::join_cgroups(&config.cgroup_procs)?;
                    container::set_stdio(stdio)?;
                    plan.exec()
                })
                .map_err(|e| match e {
                    ChildFailure::Os(e) => format!("fork workload: {e}"),
                    ChildFailure::Child(msg) => msg,
                })?
            }
            Workload::Container { bundle } => {
                let c = Container::load(bundle).map_err(|e| error_chain(&e))?;
                // SAFETY: the shim is a fresh single-threaded process
                // (`main_run`'s contract) and starts one workload.
                unsafe { c.start(stdio, &config.cgroup_procs) }.map_err(|e| error_chain(&e))?
            }
        };
        let started_at = sys::now_ms();
        drop((out_w, err_w, null, console_in));
        // SAFETY: getpid cannot fail.
        let shim_pid = unsafe { libc::getpid() };
        let (_, pid_start_time) =
            sys::proc_stat(pid).map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
        let (_, shim_start_time) =
            sys::proc_stat(shim_pid).map_err(|e| format!("read /proc/{shim_pid}/stat: {e}"))?;
        let state = ShimState {
            version: SHIM_FILES_VERSION,
            pid,
            started_at,
            pid_start_time,
            shim_pid,
            shim_start_time,
        };
        if let Err(e) = write_json(&task_dir.join(STATE_FILE), &state, false) {
            // Without state.json nobody could find the workload again.
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = sys::wait_pid(pid);
            return Err(error_chain(&e));
        }
        Ok(Shim {
            task_dir: task_dir.to_owned(),
            pid,
            shim_pid,
            started_at,
            stdout: Some(out_r),
            stderr: Some(err_r),
            out_log,
            err_log,
            console,
        })
    }

    /// Copy output to the logs until the workload exits, then write `exit.json`.
    fn supervise(mut self) {
        let pidfd = sys::pidfd_open(self.pid).ok();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
            let mut fds = [
                libc::pollfd {
                    fd: raw(&self.stdout),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: raw(&self.stderr),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: raw(&pidfd),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self
                        .console
                        .as_ref()
                        .map_or(-1, |c| c.listener_fd().as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self
                        .console
                        .as_ref()
                        .and_then(|c| c.client_fd())
                        .map_or(-1, |f| f.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if pidfd.is_none() && self.stdout.is_none() && self.stderr.is_none() {
                break;
            }
            // SAFETY: a valid array of pollfds (negative fds are ignored).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if fds[0].revents != 0 {
                let n = pump_n(&mut self.stdout, &mut self.out_log, &mut buf);
                if let (Some(c), true) = (self.console.as_mut(), n > 0) {
                    c.copy_to_client(&buf[..n]);
                }
            }
            if let Some(c) = self.console.as_mut() {
                if fds[3].revents != 0 {
                    c.accept();
                }
                if fds[4].revents != 0 {
                    c.read_client(&mut buf);
                }
            }
            if fds[1].revents != 0 {
                pump(&mut self.stderr, &mut self.err_log, &mut buf);
            }
            if fds[2].revents != 0 {
                break;
            }
        }
        let status = sys::wait_pid(self.pid);
        // The workload is gone; take what is already in the pipes, but do not
        // wait for descendants that may still hold them open.
        for (fd, log) in [
            (&mut self.stdout, &mut self.out_log),
            (&mut self.stderr, &mut self.err_log),
        ] {
            if let Some(f) = fd {
                // SAFETY: fcntl on an open fd.
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            }
            while fd.is_some() {
                if !pump(fd, log, &mut buf) {
                    break;
                }
            }
        }
        let (exit_code, signal) = match status {
            Ok(s) => sys::decode_wait_status(s),
            Err(_) => (None, None),
        };
        let exit = ExitStatus {
            version: SHIM_FILES_VERSION,
            exit_code,
            signal,
            finished_at: sys::now_ms(),
            start_error: None,
        };
        let _ = write_json(&self.task_dir.join(EXIT_FILE), &exit, false);
    }
}

/// Read once from `fd` into `log`. Returns false when nothing more is to be
/// read now (EOF closes the fd; EAGAIN leaves it).
fn pump(fd: &mut Option<OwnedFd>, log: &mut LogWriter, buf: &mut [u8]) -> bool {
    match fd {
        Some(_) => pump_n(fd, log, buf) > 0 || fd.is_some() && interrupted(),
        None => false,
    }
}

fn interrupted() -> bool {
    io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
}

/// Read once from `fd` into `log` (and `buf`); the bytes read (0 at EOF,
/// which closes the fd, on EAGAIN and EINTR).
fn pump_n(fd: &mut Option<OwnedFd>, log: &mut LogWriter, buf: &mut [u8]) -> usize {
    let Some(f) = fd else { return 0 };
    // SAFETY: reading into a valid buffer of its length.
    let n = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        // A full disk must not stop the workload: drop the bytes.
        let _ = log.write(&buf[..n as usize]);
        return n as usize;
    }
    let kind = io::Error::last_os_error().kind();
    if n == 0 || (kind != io::ErrorKind::WouldBlock && kind != io::ErrorKind::Interrupted) {
        *fd = None;
    }
    0
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
