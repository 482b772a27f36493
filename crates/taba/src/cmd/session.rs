//! The terminal side of interactive sessions (`taba alloc exec -i -t`):
//! raw mode on the local terminal while a tty session runs, the window
//! size sent at start and on SIGWINCH, stdin relayed by a thread, output
//! written as it arrives, the remote exit code returned.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use taba_client::{Client, ExecSessionOptions, SessionEvent, SessionInput};

/// The local terminal in raw mode until dropped (then as it was).
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter(on: bool) -> Self {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = std::io::stdin();
        if !on || !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        if tcsetattr(&stdin, OptionalActions::Flush, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Flush,
                t,
            );
        }
    }
}

/// The local terminal's size (columns, rows), if stdout or stdin is one.
fn window_size() -> Option<(u16, u16)> {
    let of = |fd: std::os::fd::BorrowedFd<'_>| {
        rustix::termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_col > 0 && w.ws_row > 0)
            .map(|w| (w.ws_col, w.ws_row))
    };
    use std::os::fd::AsFd;
    of(std::io::stdout().as_fd()).or_else(|| of(std::io::stdin().as_fd()))
}

/// Send the window size whenever the terminal says it changed (SIGWINCH).
fn follow_resizes(input: SessionInput) {
    let _ = std::thread::Builder::new()
        .name("sigwinch".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut s) = signal(SignalKind::window_change()) else {
                    return;
                };
                while s.recv().await.is_some() {
                    if let Some((c, r)) = window_size() {
                        input.resize(c, r);
                    }
                }
            });
        });
}

/// Relay stdin to the session until EOF (then close the command's stdin).
/// With `escape`, that byte is not sent: it (or EOF) sends on `leave`.
fn relay_stdin(
    input: SessionInput,
    tty: bool,
    escape: Option<u8>,
    leave: Option<std::sync::mpsc::Sender<()>>,
) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = &buf[..n];
                        let cut = escape.and_then(|e| data.iter().position(|&b| b == e));
                        if !input.send_stdin(&data[..cut.unwrap_or(n)]) {
                            return;
                        }
                        if cut.is_some() {
                            break;
                        }
                    }
                }
            }
            match leave {
                Some(l) => {
                    let _ = l.send(());
                }
                None if !tty => input.close_stdin(),
                None => {}
            }
        });
}

/// Ctrl-]: leaves a console.
const CONSOLE_ESCAPE: u8 = 0x1d;

/// Run `taba alloc console`: the VM's serial console on this terminal
/// until Ctrl-] (or the end of stdin), or until the VM stops.
pub fn console(api: &Client, id: &str, task: Option<&str>) -> anyhow::Result<ExitCode> {
    let session = api.console_session(id, task)?;
    eprint!("Attached to the console of {id}; Ctrl-] leaves.\r\n");
    let raw = RawMode::enter(true);
    let (leave_tx, leave_rx) = std::sync::mpsc::channel();
    relay_stdin(session.input(), true, Some(CONSOLE_ESCAPE), Some(leave_tx));
    // Output on a thread of its own, so that leaving does not wait for it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut session = session;
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let end = loop {
            match session.recv() {
                Some(SessionEvent::Stdout(d)) | Some(SessionEvent::Stderr(d)) => {
                    let _ = out.write_all(&d);
                    let _ = out.flush();
                }
                Some(SessionEvent::Exit(_)) => break Ok("the VM stopped".to_string()),
                Some(SessionEvent::Error(e)) => break Err(e),
                None => break Ok("the session ended".to_string()),
            }
        };
        let _ = done_tx.send(end);
    });
    let end = loop {
        if leave_rx.try_recv().is_ok() {
            break Ok("left".to_string());
        }
        match done_rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(end) => break end,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break Ok("the session ended".to_string()),
        }
    };
    drop(raw);
    match end {
        Ok(why) => {
            eprintln!("\nDetached from the console of {id} ({why}).");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => anyhow::bail!("console session: {e}"),
    }
}

/// What `taba alloc exec` was asked.
pub struct ExecArgs {
    /// Allocation id or prefix.
    pub id: String,
    /// Task name.
    pub task: Option<String>,
    /// `-i`.
    pub interactive: bool,
    /// `-t`.
    pub tty: bool,
    /// `--user`.
    pub user: Option<String>,
    /// The command.
    pub command: Vec<String>,
}

/// Run `taba alloc exec`: a streamed session; the command's exit code is
/// the CLI's.
pub fn exec(api: &Client, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let size = a.tty.then(|| window_size().unwrap_or((80, 24)));
    let id = super::cli::alloc_id(api, &a.id)?;
    let mut session = api.exec_session(
        &id,
        &ExecSessionOptions {
            task: a.task,
            command: a.command,
            stdin: a.interactive,
            tty: size,
            user: a.user,
        },
    )?;
    let raw = RawMode::enter(a.tty && a.interactive);
    if a.tty {
        follow_resizes(session.input());
    }
    if a.interactive {
        relay_stdin(session.input(), a.tty, None, None);
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        match session.recv() {
            Some(SessionEvent::Stdout(d)) => {
                out.write_all(&d)?;
                out.flush()?;
            }
            Some(SessionEvent::Stderr(d)) => {
                err.write_all(&d)?;
                err.flush()?;
            }
            Some(SessionEvent::Exit(code)) => {
                drop(raw);
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            Some(SessionEvent::Error(e)) => {
                drop(raw);
                anyhow::bail!("exec session: {e}");
            }
            None => {
                drop(raw);
                anyhow::bail!("exec session: ended without an exit code");
            }
        }
    }
}
