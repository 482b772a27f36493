//! The attack suite: a container whose programs try to escape, each try
//! failing with the exact failure asserted. The attacker is
//! `src/bin/test_attack.rs`, copied into a busybox root filesystem. These
//! tests need root, cgroups (v1 here, where the devices controller guards
//! device nodes; on a v2-only host the eBPF device program does: the QEMU
//! guest of `taba-cgroups`' `root_v2_guest` runs them there too) and
//! /bin/busybox, and fail loudly without them.

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

/// System calls Docker's default profile refuses, refused with its errno
/// (EPERM), whatever the kernel would have said.
#[test]
fn root_attack_forbidden_syscalls_fail_with_eperm() {
    for call in [
        "io-uring",
        "bpf",
        "keyctl",
        "perf",
        "userfaultfd",
        "init-module",
        "unshare-user",
        "unshare-mnt",
        "clone-user",
        "mount",
    ] {
        assert_eq!(attack(&[call]), (Some(1), "err EPERM".into()), "{call}");
    }
}

/// /proc/sysrq-trigger and /proc/sys are read-only.
#[test]
fn root_attack_write_proc() {
    for path in ["/proc/sysrq-trigger", "/proc/sys/kernel/domainname"] {
        // A kernel without CONFIG_MAGIC_SYSRQ (this test machine's) has no
        // trigger file at all.
        let expected = if std::path::Path::new(path).exists() {
            "err EROFS"
        } else {
            "err ENOENT"
        };
        assert_eq!(
            attack(&["open", path, "w"]),
            (Some(1), expected.into()),
            "{path}"
        );
    }
}

/// The host's cgroups are out of reach: the container's own cgroups are
/// mounted read-only at /sys/fs/cgroup from inside its cgroup namespace (it
/// sees itself alone, at the root), and with the host's network (its /sys
/// bound in) the host's cgroup mounts under /sys are not carried along.
#[test]
fn root_attack_host_cgroups() {
    let root_procs = cgroup_root().join("cgroup.procs");
    assert!(root_procs.exists(), "{}", root_procs.display());
    let target = root_procs.to_str().unwrap();
    assert_eq!(
        attack(&["open", target, "w"]),
        (Some(1), "err EROFS".into())
    );
    // v1: one of its hierarchies; v2: the one cgroup2 mount.
    let own_procs = if cgroup_v2() {
        "/sys/fs/cgroup/cgroup.procs"
    } else {
        "/sys/fs/cgroup/devices/cgroup.procs"
    };
    assert_eq!(
        attack(&["read", own_procs]),
        (Some(0), "ok 1".into()),
        "only the container's own process in its own cgroup ({own_procs})"
    );
    let host_net = attack_with(
        &["open", target, "w"],
        |_| {},
        |spec| {
            let mut linux = spec.linux().clone().unwrap();
            let ns: Vec<_> = linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .filter(|n| n.typ() != taba_runtime::oci_spec::runtime::LinuxNamespaceType::Network)
                .collect();
            linux.set_namespaces(Some(ns));
            spec.set_linux(Some(linux));
        },
    );
    assert_eq!(host_net, (Some(1), "err EROFS".into()));
}

/// A host process cannot be traced (seccomp refuses ptrace; the pid is not
/// even in the container's pid namespace).
#[test]
fn root_attack_ptrace_a_host_process() {
    let mut victim = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = victim.id().to_string();
    let out = attack(&["ptrace", &pid]);
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(out, (Some(1), "err EPERM".into()));
}

fn as_nobody(nnp: bool) -> impl FnOnce(&mut taba_runtime::oci_spec::runtime::Spec) {
    move |spec| {
        let mut p = spec.process().clone().unwrap();
        let mut u = p.user().clone();
        u.set_uid(65534).set_gid(65534);
        p.set_user(u).set_no_new_privileges(Some(nnp));
        spec.set_process(Some(p));
    }
}

fn setuid_copy(rootfs: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    install_binary(rootfs, &attack_exe(), "/bin/attack-suid");
    std::fs::set_permissions(
        rootfs.join("bin/attack-suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
}

/// A non-root user holds no capability and cannot become root by asking;
/// with no_new_privileges a setuid-root binary does not make it root either.
/// Without it, setuid works as in Docker (root of the container, within the
/// bounding set).
#[test]
fn root_attack_become_root_as_a_non_root_user() {
    let caps = attack_with(&["read", "/proc/self/status"], |_| {}, as_nobody(false));
    assert_eq!(caps.0, Some(0), "{}", caps.1);
    let status = attack_with(&["setuid0"], |_| {}, as_nobody(false));
    assert_eq!(status, (Some(1), "err EPERM".into()));
    let d = tempfile::tempdir().unwrap();
    let rootfs = d.path().join("bundle/rootfs");
    attack_rootfs(&rootfs);
    let mut spec = default_spec(&spec_options(
        d.path(),
        &["grep", "^Cap", "/proc/self/status"],
    ));
    as_nobody(false)(&mut spec);
    let (code, out) = run_spec(d.path(), &spec, vec![]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");

    let suid = |nnp| {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("bundle/rootfs");
        attack_rootfs(&rootfs);
        setuid_copy(&rootfs);
        let mut spec = default_spec(&spec_options(d.path(), &["/bin/attack-suid", "ids"]));
        as_nobody(nnp)(&mut spec);
        let (code, out) = run_spec(d.path(), &spec, vec![]);
        (code, out.trim().to_string())
    };
    assert_eq!(suid(true), (Some(0), "ok uid=65534 euid=65534".into()));
    assert_eq!(suid(false), (Some(0), "ok uid=65534 euid=0".into()));
}

/// Another allocation's files (a sibling directory on the host) cannot be
/// named from inside: the container's root is its own.
#[test]
fn root_attack_read_another_allocations_files() {
    let other = tempfile::tempdir().unwrap();
    let secret = other.path().join("alloc.json");
    std::fs::write(&secret, "{\"env\":{\"TOKEN\":\"s3cret\"}}\n").unwrap();
    let out = attack(&["read", secret.to_str().unwrap()]);
    assert_eq!(out, (Some(1), "err ENOENT".into()));
}

/// With network "none" the container has only its own loopback: the
/// agent's API on the host's 127.0.0.1 is not reachable.
#[test]
fn root_attack_call_the_agent_api_from_a_none_network_container() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = attack(&["connect", &addr]);
    assert_eq!(out, (Some(1), "err ECONNREFUSED".into()));
}

/// rlimits and oom_score_adj are the spec's, not inherited from the shim;
/// sysctls are written before /proc/sys becomes read-only.
#[test]
fn root_explicit_limits_and_sysctls() {
    require_root_and_busybox();
    let d = tempfile::tempdir().unwrap();
    let rootfs = d.path().join("bundle/rootfs");
    attack_rootfs(&rootfs);
    let script = "echo nofile=$(ulimit -n); echo core=$(ulimit -c); \
                  echo oom=$(cat /proc/self/oom_score_adj); \
                  echo domain=$(cat /proc/sys/kernel/domainname)";
    let mut opts = spec_options(d.path(), &["sh", "-c", script]);
    opts.oom_score_adj = 500;
    opts.rlimits.push((
        taba_runtime::oci_spec::runtime::PosixRlimitType::RlimitCore,
        0,
        0,
    ));
    let mut spec = default_spec(&opts);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_sysctl(Some(
        [("kernel.domainname".to_string(), "taba-test".to_string())].into(),
    ));
    spec.set_linux(Some(linux));
    let (code, out) = run_spec(d.path(), &spec, vec![]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nofile=1024\n"), "{out}");
    assert!(out.contains("core=0\n"), "{out}");
    assert!(out.contains("oom=500\n"), "{out}");
    assert!(out.contains("domain=taba-test"), "{out}");
}
