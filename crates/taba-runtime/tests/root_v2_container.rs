//! Containers on a pure cgroup v2 host, for real (needs root and busybox):
//! the container joins a v2 cgroup made by `taba-cgroups` with limits and
//! the eBPF device program, as the container driver does, sees it as the
//! root of its cgroup namespace, read-only at /sys/fs/cgroup, then is stopped
//! by `cgroup.kill` and its cgroup destroyed. This machine is hybrid, so
//! the tests are `#[ignore]`d in a plain `cargo test` and run for real by
//! `taba-cgroups`' `root_v2_guest.rs` in a QEMU guest with only cgroup2
//! mounted (`scripts/guest.sh`).

mod common;

use common::*;
use std::time::{Duration, Instant};
use taba_cgroups::{AnyCgroup, CgroupVersion, Layout, Limits};
use taba_runtime::shim::{self, Workload};

/// A v2 cgroup `taba-test-<pid>-<tag>/task` with `limits`, removed on drop.
struct V2Cgroup {
    layout: Layout,
    top: String,
    cg: AnyCgroup,
}

impl V2Cgroup {
    fn new(tag: &str, limits: &Limits) -> V2Cgroup {
        let layout = Layout::detect().unwrap();
        assert_eq!(layout.version(), CgroupVersion::V2, "needs a v2-only host");
        let top = format!("taba-test-{}-{tag}", std::process::id());
        let cg = layout.create(&format!("{top}/task")).unwrap();
        cg.apply(limits).unwrap();
        assert!(cg.restrict_devices(DRIVER_DEVICES).unwrap());
        V2Cgroup { layout, top, cg }
    }
}

impl Drop for V2Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.layout.destroy(&self.top) {
            eprintln!("cleanup of {} failed: {e}", self.top);
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_container_runs_in_its_cgroup_with_limits_and_devices_then_is_killed() {
    require_root_and_busybox();
    let v2 = V2Cgroup::new(
        "ctr",
        &Limits {
            cpu_mhz: 500,
            cpu_max_cores: Some(0.5),
            memory_bytes: 64 << 20,
            pids_max: 32,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let script = "cat /proc/self/cgroup; \
        grep ' /sys/fs/cgroup ' /proc/self/mountinfo; \
        echo memory.max=$(cat /sys/fs/cgroup/memory.max); \
        head -c 1 /dev/zero >/dev/null && echo zero-ok; \
        mknod /tmp/mem c 1 1 && { head -c 1 /tmp/mem >/dev/null 2>&1 || echo mem-denied; }; \
        echo ready; exec sleep 1000";
    let b = bundle(dir.path(), &["sh", "-c", script], "v2");
    let task = make_task(
        dir.path(),
        Workload::Container { bundle: b },
        v2.cg.procs_files(),
        1 << 20,
        1,
    );
    let started = shim::spawn(&shim_exe(), &task).unwrap();
    wait_for("the container to say ready", || {
        log(dir.path(), "stdout").contains("ready")
    });
    let out = log(dir.path(), "stdout");
    // Its own cgroup namespace: its cgroup is its root, mounted read-only
    // at /sys/fs/cgroup with its own limits in it.
    assert!(out.lines().any(|l| l == "0::/"), "0::/ in {out}");
    let mount = out
        .lines()
        .find(|l| l.contains(" /sys/fs/cgroup "))
        .unwrap_or_else(|| panic!("no /sys/fs/cgroup mount in {out}"));
    assert!(mount.contains(" - cgroup2 "), "{mount}");
    assert!(
        mount.split(' ').nth(5).unwrap().starts_with("ro"),
        "{mount}"
    );
    assert!(out.contains("memory.max=67108864"), "{out}");
    assert!(out.contains("zero-ok"), "{out}");
    assert!(out.contains("mem-denied"), "{out}");
    assert_eq!(
        v2.cg.pids(),
        vec![started.pid as u32],
        "only the workload, not the shim"
    );
    let stats = v2.cg.stats().unwrap();
    assert_eq!(stats.pids_current, 1, "{stats:?}");
    assert!(stats.memory_usage > 0, "{stats:?}");

    // Stop as the driver does after its grace period: kill the cgroup.
    v2.cg.kill_all().unwrap();
    let exit = shim::wait_exit(&task, started.shim_pid).unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(v2.cg.pids().is_empty());
    v2.cg.destroy().unwrap();
    assert!(v2.cg.dirs().iter().all(|d| !d.exists()));
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_container_over_its_memory_limit_is_oom_killed() {
    require_root_and_busybox();
    let v2 = V2Cgroup::new(
        "ctroom",
        &Limits {
            cpu_mhz: 500,
            cpu_max_cores: None,
            memory_bytes: 32 << 20,
            pids_max: 32,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    // dd fills a 300 MiB buffer (busybox's tail would not hold its input).
    let b = bundle(
        dir.path(),
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=300M", "count=1"],
        "v2",
    );
    let task = make_task(
        dir.path(),
        Workload::Container { bundle: b },
        v2.cg.procs_files(),
        1 << 20,
        1,
    );
    let started = shim::spawn(&shim_exe(), &task).unwrap();
    let exit = shim::wait_exit(&task, started.shim_pid).unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(v2.cg.oom_killed(), "memory.events counts the kill");
}
