//! The attack suite: a container whose programs try to escape, each try
//! failing with the exact failure asserted. The attacker is
//! `src/bin/test_attack.rs`, copied into a busybox root filesystem. These
//! tests need root, the v1 cgroup hierarchies and /bin/busybox, and fail
//! loudly without them.

#![allow(unsafe_code)]

mod common;

use std::os::unix::ffi::OsStrExt;

use common::*;
use taba_runtime::container::default_spec;

/// An fd the caller (the agent, the shim) has open without close-on-exec
/// must not be usable in the container: through `/proc/self/fd/N` a
/// directory fd is a way out of any root.
#[test]
fn root_attack_leaked_fd_does_not_reach_the_container() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host-secret");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret.txt"), "host secret\n").unwrap();
    let c = std::ffi::CString::new(host.as_os_str().as_bytes()).unwrap();
    // Deliberately without O_CLOEXEC, as a careless agent library would.
    // SAFETY: a valid C string; the fd is closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd > 2);
    // Out of the way of the fds the shim protocol places (3).
    // SAFETY: F_DUPFD on the fd just opened; both are closed below.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD, 100) };
    assert!(high >= 100);
    attack_rootfs(&dir.path().join("bundle/rootfs"));
    let spec = default_spec(&spec_options(dir.path(), &["/bin/attack", "fds"]));
    let (code, out) = run_spec(dir.path(), &spec, vec![]);
    let (code2, out2) = {
        let d2 = tempfile::tempdir().unwrap();
        attack_rootfs(&d2.path().join("bundle/rootfs"));
        let path = format!("/proc/self/fd/{high}/secret.txt");
        let spec = default_spec(&spec_options(d2.path(), &["/bin/attack", "read", &path]));
        run_spec(d2.path(), &spec, vec![])
    };
    // SAFETY: closing the fd opened above.
    unsafe { (libc::close(fd), libc::close(high)) };
    assert_eq!((code, out.trim()), (Some(0), "ok fds []"), "{out}");
    assert_eq!((code2, out2.trim()), (Some(1), "err ENOENT"), "{out2}");
}
