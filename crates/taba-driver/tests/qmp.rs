//! The QMP client against a real QEMU (`qemu-system-x86_64 -accel tcg
//! -machine microvm`, paused with `-S`: no guest is needed to talk QMP).
//! Needs QEMU (scripts/setup.sh installs QEMU 10); fails loudly without it.

mod common;

use common::Qemu;
use serde::Serialize;
use std::time::Duration;
use taba_driver::vm::qmp::{self, Command, Event, Qmp, QmpError};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn qemu_qmp_status_cont_and_events() {
    let q = Qemu::paused("status");
    let mut c = Qmp::connect(&q.socket, T).await.unwrap();
    let v = c.version.expect("the greeting names QEMU's version");
    assert_eq!(v.major, 10, "QEMU 10 from bookworm-backports: {v:?}");
    let st = c.execute(&qmp::QueryStatus).await.unwrap();
    assert!(!st.running);
    assert_eq!(st.status, "prelaunch");
    let version = c.execute(&qmp::QueryVersion).await.unwrap();
    assert_eq!(version.qemu, v);
    c.execute(&qmp::Cont).await.unwrap();
    let mut resumed = false;
    while let Some(e) = c.next_event(Duration::from_secs(5)).await.unwrap() {
        if e == Event::Resume {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "cont is followed by a RESUME event");
    let st = c.execute(&qmp::QueryStatus).await.unwrap();
    assert!(st.running, "{st:?}");
    assert_eq!(st.status, "running");
    let m = c.execute(&qmp::QueryMigrate).await.unwrap();
    assert_eq!(m.status, None, "no migration yet: {m:?}");
}

/// A command QEMU does not have.
#[derive(Serialize)]
struct NoSuchCommand;
impl Command for NoSuchCommand {
    const NAME: &'static str = "taba-no-such-command";
    type Reply = qmp::Empty;
}

/// `query-status` read as if it returned a version: a reply of another shape.
#[derive(Serialize)]
struct StatusAsVersion;
impl Command for StatusAsVersion {
    const NAME: &'static str = "query-status";
    type Reply = qmp::VersionInfo;
}

#[tokio::test]
async fn qemu_qmp_errors_fail_the_command_not_the_session() {
    let q = Qemu::paused("errors");
    let mut c = Qmp::connect(&q.socket, T).await.unwrap();
    match c.execute(&NoSuchCommand).await {
        Err(QmpError::Command { class, desc, .. }) => {
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("taba-no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    match c.execute(&StatusAsVersion).await {
        Err(e @ QmpError::Reply { .. }) => {
            assert!(e.to_string().contains("unexpected reply"), "{e}");
            assert!(e.to_string().contains("prelaunch"), "{e}");
        }
        other => panic!("expected a reply error, got {other:?}"),
    }
    // The session goes on.
    assert_eq!(
        c.execute(&qmp::QueryStatus).await.unwrap().status,
        "prelaunch"
    );
}

#[tokio::test]
async fn qemu_qmp_quit_ends_qemu_with_a_shutdown_event() {
    let mut q = Qemu::paused("quit");
    let mut c = Qmp::connect(&q.socket, T).await.unwrap();
    c.execute(&qmp::Quit).await.unwrap();
    let mut shutdown = None;
    loop {
        match c.next_event(Duration::from_secs(5)).await {
            Ok(Some(Event::Shutdown { guest, reason })) => {
                shutdown = Some((guest, reason));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(QmpError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(shutdown, Some((false, "host-qmp-quit".to_string())));
    let status = q
        .wait(Duration::from_secs(10))
        .expect("QEMU exits after quit");
    assert!(status.success(), "{status}");
    // Nobody listens any more.
    let e = Qmp::connect(&q.socket, T).await.err().expect("no QEMU");
    assert!(matches!(e, QmpError::Connect { .. }), "{e}");
}

#[tokio::test]
async fn qemu_qmp_socket_path_longer_than_a_sockaddr() {
    let q = Qemu::paused(&"x".repeat(150));
    assert!(q.socket.as_os_str().len() > 108);
    let mut c = Qmp::connect(&q.socket, T).await.unwrap();
    assert_eq!(
        c.execute(&qmp::QueryStatus).await.unwrap().status,
        "prelaunch"
    );
}
