//! Thin wrappers over the system calls the shim and the runtime share: pipes,
//! fork/clone with an error channel, pidfds, `/proc` reads, atomic files.
//! Every `unsafe` block of the crate that is not specific to one feature lives here.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Turn an `io::Result`-style libc return value into a `Result`.
pub(crate) fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A path as a C string (paths with an interior NUL are rejected).
pub(crate) fn path_cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// A pipe whose both ends are close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Read a file descriptor to its end.
pub(crate) fn read_all(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let mut f = File::from(fd);
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Why starting a child failed.
#[derive(Debug)]
pub(crate) enum ChildFailure {
    /// The fork/clone (or the error pipe) failed in the parent.
    Os(io::Error),
    /// The child reported an error before it could exec.
    Child(String),
}

/// Fork (a raw `clone` with `flags` plus `SIGCHLD`) and run `child` in the new
/// process. `child` either execs (never returns) or returns an error message,
/// which is sent to the parent over a close-on-exec pipe; the child then exits
/// with 127. Returns the child's pid once it has exec'd (the pipe closed empty).
///
/// The caller must be single-threaded: the child runs arbitrary Rust code.
pub(crate) fn spawn_child<F>(flags: libc::c_ulong, child: F) -> Result<libc::pid_t, ChildFailure>
where
    F: FnOnce() -> Result<Infallible, String>,
{
    spawn_child_synced(flags, |_| Ok(()), child)
}

/// [`spawn_child`], where the child waits until `parent` has run on its
/// pid (writing a new user namespace's id maps, joining it to cgroups it
/// can no longer join itself). A failing `parent` kills the child.
pub(crate) fn spawn_child_synced<P, F>(
    flags: libc::c_ulong,
    parent: P,
    child: F,
) -> Result<libc::pid_t, ChildFailure>
where
    P: FnOnce(libc::pid_t) -> io::Result<()>,
    F: FnOnce() -> Result<Infallible, String>,
{
    let (err_r, err_w) = pipe().map_err(ChildFailure::Os)?;
    let (sync_r, sync_w) = pipe().map_err(ChildFailure::Os)?;
    // SAFETY: a raw clone without a new stack behaves like fork: the child gets a
    // copy of the address space. The process is single-threaded (documented
    // contract), so no lock is held by a thread that does not exist in the child.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(ChildFailure::Os(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(err_r);
        drop(sync_w);
        let mut go = [0u8; 1];
        // SAFETY: reading one byte into a valid buffer.
        if unsafe { libc::read(sync_r.as_raw_fd(), go.as_mut_ptr().cast(), 1) } != 1 {
            // The parent gave up on us (its setup failed).
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(127) };
        }
        drop(sync_r);
        let msg = match child() {
            Ok(never) => match never {},
            Err(msg) => msg,
        };
        let mut w = File::from(err_w);
        let _ = w.write_all(msg.as_bytes());
        // SAFETY: _exit is always safe; it skips atexit handlers that belong to the parent.
        unsafe { libc::_exit(127) };
    }
    drop(err_w);
    drop(sync_r);
    let pid = pid as libc::pid_t;
    let released = parent(pid).and_then(|()| write_fd(sync_w.as_raw_fd(), b"g"));
    drop(sync_w);
    if let Err(e) = released {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        return Err(ChildFailure::Os(e));
    }
    let msg = read_all(err_r).map_err(ChildFailure::Os)?;
    if msg.is_empty() {
        return Ok(pid);
    }
    // The child exits right after writing; reap it so no zombie is left behind.
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Err(ChildFailure::Child(
        String::from_utf8_lossy(&msg).into_owned(),
    ))
}

/// `pidfd_open(2)`.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Block until `fd` is readable (for a pidfd: until the process has exited).
pub(crate) fn poll_readable(fd: &OwnedFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(rc > 0);
    }
}

/// One process's view in `/proc/<pid>/stat`: its state letter and start time
/// (field 22, in clock ticks since boot).
pub(crate) fn proc_stat(pid: libc::pid_t) -> io::Result<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/<pid>/stat format",
        )
    };
    // The command name (field 2) may hold spaces and parentheses: fields after it
    // start after the last ')'.
    let rest = &text[text.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(bad)?;
    // fields[0] is field 3, so field 22 is fields[19].
    let start = fields
        .get(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((state, start))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory,
/// optionally fsync'd, then renamed over `path`. The file is 0600: task files
/// hold environments, which hold secrets.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // An older file of the same name keeps its mode on open: set it.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Create `dir` (and missing parents) readable only by its owner (0700).
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write the whole buffer to a raw fd (used in children, where `File` ownership is awkward).
pub(crate) fn write_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Write `data` to an existing file (cgroup.procs, /proc files) in one write.
pub(crate) fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(data)
}

/// Mark every file descriptor from `first` up close-on-exec
/// (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11+), so that
/// nothing the agent or the shim had open reaches the workload, while the
/// error pipe of [`spawn_child`] keeps working until the exec. Falls back
/// to setting `FD_CLOEXEC` on each fd listed in `/proc/self/fd`.
pub(crate) fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with integer arguments only changes fd flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on an integer fd; a closed one just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Close every file descriptor from 3 up except `keep` (the shim does this
/// first thing, so it holds none of the agent's descriptors).
pub(crate) fn close_all_but_stdio(keep: Option<RawFd>) {
    let close = |lo: RawFd, hi: RawFd| {
        if lo <= hi {
            // SAFETY: close_range with integer arguments; closing fds this
            // process does not use (nothing else in it owns them yet).
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    lo as libc::c_uint,
                    hi as libc::c_uint,
                    0,
                )
            };
        }
    };
    match keep {
        Some(k) if k >= 3 => {
            close(3, k - 1);
            close(k + 1, RawFd::MAX);
        }
        _ => close(3, RawFd::MAX),
    }
}

/// `dup2(2)`.
pub(crate) fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on integer fds.
    check(unsafe { libc::dup2(from, to) }).map(|_| ())
}

/// Describe a wait status the way the shim records it: (exit code, signal).
pub(crate) fn decode_wait_status(status: libc::c_int) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// `waitpid(pid, 0)`, retried on EINTR.
pub(crate) fn wait_pid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(status);
    }
}
