//! Helpers for the root tests: busybox bundles, task directories, cgroups.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use taba_runtime::container::{default_spec, DefaultSpecOptions};
use taba_runtime::shim::{self, ShimConfig, Workload, SHIM_FILES_VERSION};

/// The stand-in for `taba` built from this crate.
pub fn shim_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taba-runtime-test-shim"))
}

/// Fail loudly unless we are root and busybox is installed.
pub fn require_root_and_busybox() {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert_eq!(uid, 0, "this test needs root");
    assert!(
        Path::new("/bin/busybox").exists(),
        "this test needs /bin/busybox (apt-get install busybox-static)"
    );
}

/// A busybox root filesystem with every applet linked in /bin.
pub fn busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(out.stdout).unwrap().lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
}

/// A bundle at `dir/bundle` with a busybox rootfs and a default spec
/// running `args` with `hostname`.
pub fn bundle(dir: &Path, args: &[&str], hostname: &str) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    busybox_rootfs(&rootfs);
    let opts = DefaultSpecOptions {
        rootfs: rootfs.clone(),
        args: args.iter().map(|s| s.to_string()).collect(),
        hostname: Some(hostname.to_owned()),
        ..Default::default()
    };
    default_spec(&opts)
        .save(bundle.join("config.json"))
        .unwrap();
    bundle
}

/// A task directory at `dir/task` with `shim.json`; logs in `dir/logs`.
pub fn make_task(
    dir: &Path,
    workload: Workload,
    cgroup_procs: Vec<PathBuf>,
    max_bytes: u64,
    max_files: u32,
) -> PathBuf {
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    let config = ShimConfig {
        version: SHIM_FILES_VERSION,
        workload,
        cgroup_procs,
        log_dir: dir.join("logs"),
        log_name: "t".into(),
        log_max_bytes: max_bytes,
        log_max_files: max_files,
        console: false,
    };
    shim::write_config(&task, &config).unwrap();
    task
}

/// The whole current stdout (or stderr) log of the task at `dir`.
pub fn log(dir: &Path, stream: &str) -> String {
    let logs = dir.join("logs");
    let mut out = String::new();
    for i in shim::logs::log_indices(&logs, "t", stream).unwrap() {
        out.push_str(
            &std::fs::read_to_string(shim::logs::log_path(&logs, "t", stream, i)).unwrap(),
        );
    }
    out
}

/// Whether this host runs cgroup v2 only (the QEMU guest of
/// `scripts/guest.sh`); else the v1 hierarchies (this machine) are used.
pub fn cgroup_v2() -> bool {
    let layout = taba_cgroups::Layout::detect().expect("reading the cgroup layout");
    layout.version() == taba_cgroups::CgroupVersion::V2
}

/// The root of the hierarchy the tests' cgroups go in: v1's pids
/// hierarchy, or the v2 root.
pub fn cgroup_root() -> PathBuf {
    if cgroup_v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    }
}

/// `taba-test-<tag>-<pid>-<n>`: unique per test even when tests running at
/// once share a tag.
fn cgroup_name(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("taba-test-{tag}-{}-{n}", std::process::id())
}

/// A cgroup for one test (v1: in the pids hierarchy; v2: at the root),
/// removed on drop.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let p = cgroup_root().join(cgroup_name(tag));
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("create a test cgroup {}: {e}", p.display()));
        TestCgroup(p)
    }

    pub fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }

    /// The line of `/proc/PID/cgroup` of a process in this cgroup (v1: the
    /// pids hierarchy's, v2: the only one).
    pub fn proc_cgroup_line(&self) -> String {
        let name = self.0.file_name().unwrap().to_str().unwrap();
        if cgroup_v2() {
            format!("0::/{name}")
        } else {
            format!("pids:/{name}")
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The attacker binary built from this crate (`src/bin/test_attack.rs`).
pub fn attack_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taba-runtime-test-attack"))
}

/// Copy `exe` into `rootfs` at `dest`, with the shared libraries `ldd` lists
/// at their own paths, so it runs inside the container.
pub fn install_binary(rootfs: &Path, exe: &Path, dest: &str) {
    let dest = rootfs.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(exe, &dest).unwrap();
    let out = std::process::Command::new("ldd").arg(exe).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let lib = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|s| s.starts_with('/'));
        if let Some(lib) = lib {
            let to = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap();
        }
    }
}

/// A busybox rootfs with the attacker at `/bin/attack`, and `/etc/passwd`
/// and `/etc/group` naming root and nobody.
pub fn attack_rootfs(rootfs: &Path) {
    busybox_rootfs(rootfs);
    install_binary(rootfs, &attack_exe(), "/bin/attack");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// Run a container from `spec` (rootfs at `dir/bundle/rootfs`, already
/// filled) to its end; returns its exit code and its whole stdout + stderr.
pub fn run_spec(
    dir: &Path,
    spec: &taba_runtime::oci_spec::runtime::Spec,
    cgroup_procs: Vec<PathBuf>,
) -> (Option<i32>, String) {
    let bundle = dir.join("bundle");
    spec.save(bundle.join("config.json")).unwrap();
    let task = make_task(
        dir,
        Workload::Container { bundle },
        cgroup_procs,
        1 << 20,
        2,
    );
    let started = match shim::spawn(&shim_exe(), &task) {
        Ok(s) => s,
        Err(e) => {
            return (
                None,
                format!(
                    "start failed: {e}: {:?}",
                    std::error::Error::source(&e).map(|s| s.to_string())
                ),
            )
        }
    };
    let exit = shim::wait_exit(&task, started.shim_pid).unwrap();
    let out = format!("{}{}", log(dir, "stdout"), log(dir, "stderr"));
    (exit.exit_code, out)
}

/// Default options for a container whose rootfs is `dir/bundle/rootfs`.
pub fn spec_options(dir: &Path, args: &[&str]) -> DefaultSpecOptions {
    DefaultSpecOptions {
        rootfs: dir.join("bundle/rootfs"),
        args: args.iter().map(|s| s.to_string()).collect(),
        hostname: Some("attack".into()),
        ..Default::default()
    }
}

/// A cgroup for one test that allows only the standard devices (as the
/// container driver does: v1's devices controller, or on v2 the eBPF
/// device program of `taba-cgroups`), removed on drop.
pub fn devices_cgroup(tag: &str) -> TestCgroup {
    if cgroup_v2() {
        let cg = TestCgroup::new(tag);
        taba_cgroups::devices_bpf::attach(&cg.0, DRIVER_DEVICES)
            .expect("attach the device program");
        return cg;
    }
    let p = PathBuf::from("/sys/fs/cgroup/devices").join(cgroup_name(tag));
    std::fs::create_dir_all(&p).expect("create a test cgroup under /sys/fs/cgroup/devices");
    std::fs::write(p.join("devices.deny"), "a").unwrap();
    for rule in DRIVER_DEVICES {
        std::fs::write(p.join("devices.allow"), rule).unwrap();
    }
    TestCgroup(p)
}

/// Major and minor of the block device holding the host's `/`.
pub fn host_root_disk() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata("/").unwrap().dev();
    (libc::major(dev), libc::minor(dev))
}

/// A host id range for one user-namespace test: 65536 ids from a base
/// unique to this process and `slot`, far above real users.
pub fn test_id_range(slot: u32) -> taba_runtime::container::userns::IdRange {
    let base = 1_500_000_000 + ((std::process::id() % 1000) * 16 + slot) * 65536;
    taba_runtime::container::userns::IdRange {
        host_uid: base,
        host_gid: base,
        size: 65536,
    }
}

/// `chown -R` `path` to the range's root (a root filesystem its mapped
/// root must own, as idmapped layers give the container driver).
pub fn chown_to_range(path: &Path, r: &taba_runtime::container::userns::IdRange) {
    let st = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{}:{}", r.host_uid, r.host_gid)])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R {}", path.display());
}

/// The `Uid:` line of `/proc/PID/status` (real, effective, saved, fs).
pub fn proc_uids(pid: i32) -> Vec<u32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

/// CapEff of a root process with Docker's default capability set.
pub const DEFAULT_CAP_EFF: &str = "00000000a80425fb";

/// The container driver's device allow-list (the standard set, plus mknod of any).
pub const DRIVER_DEVICES: &[&str] = &[
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c *:* m",
    "b *:* m",
];
