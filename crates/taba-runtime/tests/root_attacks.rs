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

fn attack(args: &[&str]) -> (Option<i32>, String) {
    attack_with(args, |_| {}, |_| {})
}

/// Run the attacker with `args` in a default container, after `prepare`
/// (on the rootfs) and `tweak` (on the spec), in a devices cgroup that
/// allows only the standard devices.
fn attack_with(
    args: &[&str],
    prepare: impl FnOnce(&std::path::Path),
    tweak: impl FnOnce(&mut taba_runtime::oci_spec::runtime::Spec),
) -> (Option<i32>, String) {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("bundle/rootfs");
    attack_rootfs(&rootfs);
    prepare(&rootfs);
    let mut argv = vec!["/bin/attack"];
    argv.extend_from_slice(args);
    let mut spec = default_spec(&spec_options(dir.path(), &argv));
    tweak(&mut spec);
    let cg = devices_cgroup(&format!("atk-{}", args[0]));
    let (code, out) = run_spec(dir.path(), &spec, vec![cg.procs()]);
    (code, out.trim().to_string())
}

/// A device node shipped in the image (here: the host's root disk) cannot
/// be opened: the rootfs is mounted nodev.
#[test]
fn root_attack_device_node_in_the_image() {
    let (major, minor) = host_root_disk();
    let out = attack_with(
        &["open", "/disk", "r"],
        |rootfs| {
            let p = std::ffi::CString::new(rootfs.join("disk").as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string path.
            let rc = unsafe {
                libc::mknod(
                    p.as_ptr(),
                    libc::S_IFBLK | 0o666,
                    libc::makedev(major, minor),
                )
            };
            assert_eq!(rc, 0);
        },
        |_| {},
    );
    assert_eq!(out, (Some(1), "err EACCES".into()));
}

/// A device node made in the container with mknod: in the rootfs it is
/// useless (nodev), in /dev (a tmpfs) the devices cgroup refuses the open.
#[test]
fn root_attack_mknod_a_disk() {
    let (major, minor) = host_root_disk();
    let (maj, min) = (major.to_string(), minor.to_string());
    let out = attack(&["mknod-open", "/tmp/disk", "b", &maj, &min]);
    assert_eq!(out, (Some(1), "err EACCES".into()));
    let out = attack(&["mknod-open", "/dev/disk", "b", &maj, &min]);
    assert_eq!(out, (Some(1), "err EPERM".into()));
}

/// A volume whose target is a symlink in the image pointing at a host
/// path: the target resolves inside the root; nothing lands on the host.
#[test]
fn root_attack_volume_symlink_out_of_the_root() {
    let host = tempfile::tempdir().unwrap();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("v.txt"), "volume\n").unwrap();
    let host_dir = host.path().to_path_buf();
    let out = attack_with(
        &["read", "/data/v.txt"],
        |rootfs| {
            // /data -> <host dir>; inside the root that path is created fresh.
            std::fs::create_dir_all(rootfs.join(host_dir.strip_prefix("/").unwrap())).unwrap();
            std::os::unix::fs::symlink(&host_dir, rootfs.join("data")).unwrap();
        },
        |spec| {
            let mut mounts = spec.mounts().clone().unwrap();
            let mut m = taba_runtime::oci_spec::runtime::Mount::default();
            m.set_destination("/data".into())
                .set_typ(Some("bind".into()))
                .set_source(Some(vol.path().to_path_buf()))
                .set_options(Some(vec!["rbind".into(), "ro".into()]));
            mounts.push(m);
            spec.set_mounts(Some(mounts));
        },
    );
    assert_eq!(out, (Some(0), "ok volume".into()));
    // The host directory the symlink names got nothing mounted or created.
    assert!(std::fs::read_dir(host.path()).unwrap().next().is_none());
}
