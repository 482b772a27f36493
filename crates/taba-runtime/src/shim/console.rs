//! The console of a task (`taba alloc console`; the `vm` driver asks for
//! it): the shim, which outlives the agent, keeps the workload's stdin and
//! a unix socket `console.sock` in the task directory.
//!
//! - Everything the workload prints still goes to the logs; while a client
//!   is attached it also gets a copy (the serial console of a VM: logged
//!   and attachable at once).
//! - What the client sends goes to the workload's stdin.
//! - One client at a time: a new connection replaces the previous one (as
//!   `virsh console --force`), so an agent restarted mid-session can attach
//!   again.
//! - Nothing waits for a client: a client that does not read loses output
//!   (the logs keep it), input the workload does not read is dropped; the
//!   shim holds no buffer.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The console socket's file name in the task directory.
pub const CONSOLE_SOCKET: &str = "console.sock";

/// The shim's side of a console.
pub(crate) struct Console {
    listener: UnixListener,
    client: Option<UnixStream>,
    /// The write end of the workload's stdin.
    stdin: std::fs::File,
}

/// A path to `name` in `dir` short enough for a socket address
/// (`/proc/self/fd/N/name`: task directories can be longer than 108 bytes).
fn short_path(dir: &std::fs::File, name: &str) -> String {
    format!("/proc/self/fd/{}/{name}", dir.as_raw_fd())
}

impl Console {
    /// Bind `task_dir/console.sock` (0600); returns the console and the
    /// read end of the workload's stdin.
    pub(crate) fn bind(task_dir: &Path) -> Result<(Console, OwnedFd), String> {
        let dir = std::fs::File::open(task_dir)
            .map_err(|e| format!("open {}: {e}", task_dir.display()))?;
        let path = task_dir.join(CONSOLE_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", path.display())),
        }
        // The socket is made 0600 from the start (the task dir is 0700 too).
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(short_path(&dir, CONSOLE_SOCKET));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener.map_err(|e| format!("bind {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("console socket: {e}"))?;
        let (r, w) = crate::sys::pipe().map_err(|e| format!("create stdin pipe: {e}"))?;
        let stdin = std::fs::File::from(w);
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        Ok((
            Console {
                listener,
                client: None,
                stdin,
            },
            r,
        ))
    }

    /// The listener, to poll.
    pub(crate) fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// The attached client, to poll.
    pub(crate) fn client_fd(&self) -> Option<BorrowedFd<'_>> {
        self.client.as_ref().map(|c| c.as_fd())
    }

    /// A client connects: it replaces the previous one.
    pub(crate) fn accept(&mut self) {
        if let Ok((c, _)) = self.listener.accept() {
            if c.set_nonblocking(true).is_ok() {
                self.client = Some(c);
            }
        }
    }

    /// The client sent something (or left).
    pub(crate) fn read_client(&mut self, buf: &mut [u8]) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        match c.read(buf) {
            Ok(0) => self.client = None,
            Ok(n) => {
                // Input the workload does not take now is dropped.
                let _ = self.stdin.write(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.client = None,
        }
    }

    /// The workload printed `data`: a copy for the client.
    pub(crate) fn copy_to_client(&mut self, data: &[u8]) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        match c.write(data) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.client = None,
        }
    }
}
