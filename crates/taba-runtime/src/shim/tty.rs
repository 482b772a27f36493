//! The pseudo-terminal of `taba alloc exec -t`.
//!
//! `taba shim exec` opens it *inside* the task (after joining its mount
//! namespace, so `/dev/ptmx` is the container's own devpts and the command
//! sees a `/dev/pts/N` that exists in its root, as `tty` expects). The
//! command gets the terminal as its controlling terminal and stdio; the exec
//! process relays between the terminal and its own stdin/stdout:
//!
//! - its stdout receives everything the terminal prints;
//! - its stdin carries frames: `[kind u8][len u32 big-endian][payload]`, kind
//!   [`FRAME_DATA`] (keystrokes, written to the terminal) or [`FRAME_RESIZE`]
//!   (payload `cols u16, rows u16`, big-endian: the window size).
//!
//! Input waiting for the terminal is bounded ([`MAX_PENDING`]): beyond it
//! the exec process stops reading its stdin, so a command that never reads
//! makes the sender wait, never this process grow.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::termios::{tcsetwinsize, Winsize};

/// Frame kind: bytes typed at the terminal.
pub const FRAME_DATA: u8 = 0;
/// Frame kind: a new window size.
pub const FRAME_RESIZE: u8 = 1;
/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 1 << 20;
/// Input kept for the terminal before stdin is no longer read.
const MAX_PENDING: usize = 64 << 10;

/// A frame of the exec process's stdin (the agent writes them).
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 5);
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A resize frame.
pub fn resize_frame(cols: u16, rows: u16) -> Vec<u8> {
    let mut p = cols.to_be_bytes().to_vec();
    p.extend_from_slice(&rows.to_be_bytes());
    encode_frame(FRAME_RESIZE, &p)
}

/// The two ends of a new terminal.
pub(crate) struct Pty {
    /// The end the exec process relays.
    pub master: OwnedFd,
    /// The command's terminal.
    pub slave: OwnedFd,
}

/// Open a terminal on the devpts of the current root, sized `cols` x `rows`.
pub(crate) fn open(cols: u16, rows: u16) -> io::Result<Pty> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    set_size(&master, cols, rows)?;
    Ok(Pty { master, slave })
}

fn set_size(fd: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    tcsetwinsize(
        fd,
        Winsize {
            ws_col: cols,
            ws_row: rows,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// In the command's process, before its exec: a new session whose
/// controlling terminal is `slave`, which becomes stdin, stdout and stderr.
pub(crate) fn become_controlling(slave: &OwnedFd) -> Result<(), String> {
    rustix::process::setsid().map_err(|e| format!("setsid: {e}"))?;
    rustix::process::ioctl_tiocsctty(slave)
        .map_err(|e| format!("set controlling terminal: {e}"))?;
    for n in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process.
        let rc = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(slave), n) };
        if rc < 0 {
            return Err(format!(
                "terminal as fd {n}: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Parses the framed stdin.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
}

enum Frame {
    Data(Vec<u8>),
    Resize(u16, u16),
}

impl Frames {
    fn next(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "terminal frame too large",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload: Vec<u8> = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        match kind {
            FRAME_DATA => Ok(Some(Frame::Data(payload))),
            FRAME_RESIZE if payload.len() == 4 => Ok(Some(Frame::Resize(
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            ))),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown terminal frame",
            )),
        }
    }
}

fn would_block(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::AGAIN || *e == rustix::io::Errno::INTR
}

/// Relay between this process's stdin/stdout and `master` until the
/// command `child` has ended and its output is drained; returns its wait
/// status.
pub(crate) fn relay(master: OwnedFd, child: libc::pid_t) -> io::Result<libc::c_int> {
    use rustix::io::{read, write};
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let (stdin, stdout) = (stdin.as_fd(), stdout.as_fd());
    rustix::io::ioctl_fionbio(&master, true)?;
    let mut frames = Frames::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let mut status: Option<libc::c_int> = None;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        if status.is_none() {
            let mut st = 0;
            // SAFETY: valid status pointer.
            let rc = unsafe { libc::waitpid(child, &mut st, libc::WNOHANG) };
            if rc == child {
                status = Some(st);
            }
        }
        let read_stdin = stdin_open && pending.len() < MAX_PENDING;
        let mut fds = [
            PollFd::new(&master, {
                let mut f = PollFlags::IN;
                if !pending.is_empty() {
                    f |= PollFlags::OUT;
                }
                f
            }),
            PollFd::new(
                &stdin,
                if read_stdin {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                },
            ),
        ];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: if status.is_some() {
                20_000_000
            } else {
                200_000_000
            },
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => return Err(e.into()),
        }
        let (m, s) = (fds[0].revents(), fds[1].revents());
        let mut progressed = false;
        if m.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            match read(&master, &mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    write_all(stdout, &buf[..n])?;
                }
                // EIO: every holder of the terminal closed it.
                Err(e) if e == rustix::io::Errno::IO => {
                    return match status {
                        Some(st) => Ok(st),
                        None => crate::sys::wait_pid(child),
                    };
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if m.contains(PollFlags::OUT) && !pending.is_empty() {
            match write(&master, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if read_stdin && s.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            match read(stdin, &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) => {
                    frames.buf.extend_from_slice(&buf[..n]);
                    while let Some(f) = frames.next()? {
                        match f {
                            Frame::Data(d) => pending.extend_from_slice(&d),
                            Frame::Resize(c, r) => set_size(&master, c, r)?,
                        }
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The command ended but something it started holds the terminal:
        // once nothing more comes, stop (as `docker exec` does).
        if let (Some(st), false) = (status, progressed) {
            return Ok(st);
        }
    }
}

fn write_all(fd: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(&fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e == rustix::io::Errno::INTR => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut bytes = encode_frame(FRAME_DATA, b"hello");
        bytes.extend(resize_frame(120, 40));
        let mut f = Frames::default();
        let mut got = Vec::new();
        for b in bytes {
            f.buf.push(b);
            while let Some(fr) = f.next().unwrap() {
                got.push(match fr {
                    Frame::Data(d) => format!("data {}", String::from_utf8_lossy(&d)),
                    Frame::Resize(c, r) => format!("resize {c}x{r}"),
                });
            }
        }
        assert_eq!(got, ["data hello", "resize 120x40"]);
    }

    #[test]
    fn an_unknown_or_huge_frame_is_refused() {
        let mut f = Frames {
            buf: encode_frame(7, b"x"),
        };
        assert!(f.next().is_err());
        let mut f = Frames {
            buf: vec![0, 0xff, 0xff, 0xff, 0xff],
        };
        assert!(f.next().is_err());
    }
}
