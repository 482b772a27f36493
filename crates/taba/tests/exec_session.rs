//! `taba alloc exec` as an interactive, streamed session (WebSocket through
//! the server to the agent): the real `taba dev`, a real busybox container.
//! Needs root (cgroups, namespaces, mounts).

mod common;

use common::*;
use std::io::Write;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use taba_client::{ExecSession, ExecSessionOptions, SessionEvent};

const JOB: &str = r#"
name = "shell"
type = "service"
[[group]]
name = "g"
count = 1
  [[group.task]]
  name = "box"
  driver = "container"
  image = "busybox:latest"
  command = ["sleep", "3600"]
  resources = { cpu = 100, memory = "64MiB" }
"#;

/// `taba dev` running the `shell` job; its allocation id.
fn start(dir: &std::path::Path) -> (Dev, String) {
    let dev = Dev::start();
    dev.import_busybox();
    let job = job_file(dir, "shell", JOB);
    let out = dev.cli(&["job", "run", job.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut id = String::new();
    dev.wait_for("the allocation running", Duration::from_secs(60), || {
        dev.client
            .job_status("shell")
            .ok()
            .and_then(|s| {
                s.allocations
                    .into_iter()
                    .find(|a| a.status.to_string() == "running")
            })
            .map(|a| id = a.id.to_string())
            .is_some()
    });
    (dev, id)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The session's events on a channel, so that waiting for one is bounded.
fn events(mut s: ExecSession) -> (taba_client::SessionInput, mpsc::Receiver<SessionEvent>) {
    let input = s.input();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Some(e) = s.recv() {
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    (input, rx)
}

fn next(rx: &mpsc::Receiver<SessionEvent>, what: &str) -> SessionEvent {
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no event while waiting for {what}"))
}

/// Stdout until the exit code; returns both.
fn rest(rx: &mpsc::Receiver<SessionEvent>) -> (String, i32) {
    let mut out = Vec::new();
    loop {
        match next(rx, "the end of the session") {
            SessionEvent::Stdout(d) | SessionEvent::Stderr(d) => out.extend(d),
            SessionEvent::Exit(code) => return (text(&out), code),
            SessionEvent::Error(e) => panic!("session failed: {e}; output so far {:?}", text(&out)),
        }
    }
}

/// Run the CLI with `input` on its stdin.
fn cli_with_stdin(dev: &Dev, a: &[&str], input: &[u8]) -> std::process::Output {
    let mut c = dev
        .cli_command(a)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn root_exec_session_streams_and_passes_stdin_exit_codes_tty_and_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (dev, id) = start(tmp.path());

    // Output streams as it is written: the command prints a line, then
    // waits for input that is sent only once that line has arrived.
    let s = dev
        .client
        .exec_session(
            &id,
            &ExecSessionOptions {
                command: args(&["sh", "-c", "echo first; read x; echo \"second $x\""]),
                stdin: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (input, rx) = events(s);
    assert_eq!(
        next(&rx, "the first line"),
        SessionEvent::Stdout(b"first\n".to_vec())
    );
    assert!(input.send_stdin(b"go\n"));
    input.close_stdin();
    assert_eq!(rest(&rx), ("second go\n".into(), 0));

    // -i passes stdin through (cat), and its EOF.
    let out = cli_with_stdin(
        &dev,
        &["alloc", "exec", "-i", &id, "--", "cat"],
        b"hello\nworld\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    // Without -i the command's stdin is empty.
    let out = cli_with_stdin(&dev, &["alloc", "exec", &id, "--", "cat"], b"ignored\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    // Exit codes: the command's, 127 not found, 126 not executable.
    let out = dev.cli(&[
        "alloc",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stderr), "oops\n");
    let out = dev.cli(&["alloc", "exec", &id, "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );
    let out = dev.cli(&["alloc", "exec", &id, "--", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));

    // -t: a terminal made inside the container (its own devpts).
    let out = dev.cli(&[
        "alloc",
        "exec",
        "-t",
        &id,
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && tty",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    let out = dev.cli(&["alloc", "exec", &id, "--", "sh", "-c", "test -t 0"]);
    assert_eq!(out.status.code(), Some(1));
    // The window size the client sends is the terminal's.
    let s = dev
        .client
        .exec_session(
            &id,
            &ExecSessionOptions {
                command: args(&["stty", "size"]),
                tty: Some((123, 45)),
                ..Default::default()
            },
        )
        .unwrap();
    let (_input, rx) = events(s);
    let (out, code) = rest(&rx);
    assert_eq!((out.trim(), code), ("45 123", 0));
    // Ctrl-C reaches the command through the terminal (SIGINT: 128 + 2).
    let s = dev
        .client
        .exec_session(
            &id,
            &ExecSessionOptions {
                command: args(&["sh", "-c", "echo ready; exec sleep 600"]),
                stdin: true,
                tty: Some((80, 24)),
                ..Default::default()
            },
        )
        .unwrap();
    let (input, rx) = events(s);
    let mut seen = Vec::new();
    while !text(&seen).contains("ready") {
        match next(&rx, "ready") {
            SessionEvent::Stdout(d) => seen.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(input.send_stdin(&[3]));
    assert_eq!(rest(&rx).1, 130);

    // --user: resolved in the container's passwd and group.
    let out = dev.cli(&["alloc", "exec", "--user", "nobody", &id, "--", "id"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("uid=65534(nobody) gid=65534"),
        "{}",
        text(&out.stdout)
    );
    let out = dev.cli(&[
        "alloc",
        "exec",
        "-u",
        "1234:5678",
        &id,
        "--",
        "sh",
        "-c",
        "id -u; id -g",
    ]);
    assert_eq!(text(&out.stdout), "1234\n5678\n", "{}", text(&out.stderr));
    // An unknown user is a 400 naming the field, before anything runs.
    let e = dev
        .client
        .exec_session(
            &id,
            &ExecSessionOptions {
                command: args(&["id"]),
                user: Some("no-such-user".into()),
                ..Default::default()
            },
        )
        .err()
        .expect("an unknown user is refused");
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(e.field(), Some("user"), "{e}");
    assert!(e.to_string().contains("no-such-user"), "{e}");
    let out = dev.cli(&["alloc", "exec", "--user", "no-such-user", &id, "--", "id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("user"), "{}", text(&out.stderr));
    // A bad command is refused the same way.
    let e = dev
        .client
        .exec_session(&id, &ExecSessionOptions::default())
        .err()
        .expect("an empty command is refused");
    assert_eq!((e.status(), e.field()), (Some(422), Some("command")), "{e}");

    // Every session is in the allocation's events.
    let out = dev.cli(&["alloc", "status", &id]);
    assert!(
        text(&out.stdout).contains("\"stty\", \"size\"")
            && text(&out.stdout).contains("interactive, tty"),
        "{}",
        text(&out.stdout)
    );

    // The session ends, with an exit code, when the task ends.
    let s = dev
        .client
        .exec_session(
            &id,
            &ExecSessionOptions {
                command: args(&["sh", "-c", "echo waiting; exec sleep 600"]),
                ..Default::default()
            },
        )
        .unwrap();
    let (_input, rx) = events(s);
    assert_eq!(
        next(&rx, "waiting"),
        SessionEvent::Stdout(b"waiting\n".to_vec())
    );
    let out = dev.cli(&["job", "stop", "shell"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    match next(&rx, "the end of the session after the task stopped") {
        SessionEvent::Exit(code) => assert_eq!(code, 137, "killed with the task"),
        other => panic!("expected an exit code, got {other:?}"),
    }
}
