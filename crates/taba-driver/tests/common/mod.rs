//! What the driver tests share: a bare QEMU to talk QMP to, and the test
//! guest that `scripts/vm-guest.sh` builds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The QEMU binary; the tests fail (never skip) without it.
pub fn qemu_bin() -> PathBuf {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-system-x86_64 is missing: run scripts/setup.sh (QEMU 10 from bookworm-backports)"
    );
    "qemu-system-x86_64".into()
}

/// A QEMU paused before its guest runs (`-S`, no kernel), with its QMP
/// socket `qmp.sock` in a directory of its own (named `name`).
pub struct Qemu {
    pub child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Qemu {
    pub fn paused(name: &str) -> Qemu {
        let dir = tempfile::Builder::new()
            .prefix("taba-qmp-")
            .tempdir()
            .unwrap();
        let cwd = dir.path().join(name);
        std::fs::create_dir_all(&cwd).unwrap();
        let child = Command::new(qemu_bin())
            .args(["-accel", "tcg", "-machine", "microvm", "-m", "64M"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-S"])
            .args(["-qmp", "unix:qmp.sock,server=on,wait=off"])
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting QEMU");
        let socket = cwd.join("qmp.sock");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "QEMU made no QMP socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Qemu {
            child,
            socket,
            _dir: dir,
        }
    }

    /// Its exit status, if it ends within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test guest's directory (`vmlinuz`, `initramfs.cpio`), built by
/// `scripts/vm-guest.sh setup` (run here when missing).
pub fn vm_guest() -> PathBuf {
    let dir =
        std::env::var("TABA_VM_GUEST_DIR").unwrap_or_else(|_| "/var/cache/taba/vm-guest".into());
    let cur = Path::new(&dir).join("current");
    if !cur.join("initramfs.cpio").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/vm-guest.sh");
        let st = Command::new("bash")
            .arg(script)
            .arg("setup")
            .status()
            .expect("running scripts/vm-guest.sh");
        assert!(
            st.success(),
            "building the test guest failed; run scripts/setup.sh"
        );
    }
    cur.canonicalize().unwrap()
}
