//! Real cgroups on this host (v1 / hybrid; needs root). Every test works
//! under its own `taba-test-<pid>-<name>` cgroup and removes it at the end,
//! even when it fails.

mod common;

use common::{dead, read, spawn_joined, wait_for};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use taba_cgroups::{AnyCgroup, CgroupError, CgroupVersion, Layout, Limits};

fn layout() -> Layout {
    common::layout_of(&[CgroupVersion::V1, CgroupVersion::Hybrid])
}

/// The test's top cgroup on this v1 / hybrid host.
fn scope(name: &str) -> common::Scope {
    common::Scope::new(layout(), name)
}

fn dir_of(cg: &AnyCgroup, hierarchy: &str) -> PathBuf {
    cg.dirs()
        .into_iter()
        .find(|d| d.starts_with(format!("/sys/fs/cgroup/{hierarchy}/")))
        .unwrap_or_else(|| panic!("no {hierarchy} dir in {:?}", cg.dirs()))
}

#[test]
fn root_detect_real_mountinfo_is_hybrid() {
    let layout = layout();
    assert_eq!(layout.version_name(), "hybrid", "this machine is hybrid");
    let info = taba_cgroups::fingerprint();
    assert_eq!(info.version, "hybrid");
    // hugetlb is on the v2 mount here, unless something (crun's benchmark
    // setup) has mounted it as a v1 hierarchy; taba uses it in neither case.
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"] {
        assert!(info.controllers.iter().any(|x| x == c), "{c} in {info:?}");
    }
    assert!(layout.roots().len() >= 8, "{:?}", layout.roots());
}

#[test]
fn root_create_apply_and_read_back_every_file() {
    let scope = scope("limits");
    let cg = scope.create("alloc/task");
    assert_eq!(cg.dirs().len(), 8);
    for d in cg.dirs() {
        assert!(d.is_dir(), "{} made", d.display());
        assert!(d.ends_with(scope.rel("alloc/task")));
    }
    assert_eq!(cg.procs_files().len(), 8);
    // cpuset: copied from the root so tasks can join.
    let cpuset = dir_of(&cg, "cpuset");
    assert_eq!(
        read(cpuset.join("cpuset.cpus")),
        read("/sys/fs/cgroup/cpuset/cpuset.cpus")
    );
    assert_eq!(
        read(cpuset.join("cpuset.mems")),
        read("/sys/fs/cgroup/cpuset/cpuset.mems")
    );

    let cpu = dir_of(&cg, "cpu");
    let mem = dir_of(&cg, "memory");
    let pids = dir_of(&cg, "pids");
    let applied = cg
        .apply(&Limits {
            cpu_mhz: 500,
            cpu_max_cores: Some(1.5),
            memory_bytes: 64 << 20,
            pids_max: 100,
        })
        .unwrap();
    assert_eq!(read(cpu.join("cpu.shares")), "500");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "150000");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(read(pids.join("pids.max")), "100");
    assert_eq!(applied.cpu_shares, Some(500));
    assert_eq!(applied.cpu_weight, None);
    assert_eq!(applied.cpu_quota_us, Some(150_000));
    assert_eq!(applied.cpu_period_us, 100_000);
    assert_eq!(applied.memory_max, Some(64 << 20));
    assert_eq!(applied.swap_max, Some(0));
    assert_eq!(applied.pids_max, Some(100));
    assert_eq!(cg.limits().unwrap(), applied);

    // Growing memory (memsw must rise first) and lifting the optional caps.
    let applied = cg
        .apply(&Limits {
            cpu_mhz: 3000,
            cpu_max_cores: None,
            memory_bytes: 256 << 20,
            pids_max: 0,
        })
        .unwrap();
    assert_eq!(read(cpu.join("cpu.shares")), "3000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1");
    assert_eq!(read(mem.join("memory.limit_in_bytes")), "268435456");
    assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "268435456");
    assert_eq!(read(pids.join("pids.max")), "max");
    assert_eq!(applied.cpu_quota_us, None);
    assert_eq!(applied.pids_max, None);
    assert_eq!(applied.swap_max, Some(0));

    // Shrinking memory (the limit must fall first); the kernel rounds to pages.
    let applied = cg
        .apply(&Limits {
            cpu_mhz: 3000,
            cpu_max_cores: Some(0.25),
            memory_bytes: 32_000_001,
            pids_max: 10,
        })
        .unwrap();
    let page = 4096;
    let expect = 32_000_001 / page * page;
    assert_eq!(read(mem.join("memory.limit_in_bytes")), expect.to_string());
    assert_eq!(
        read(mem.join("memory.memsw.limit_in_bytes")),
        expect.to_string()
    );
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "25000");
    assert_eq!(applied.memory_max, Some(expect));

    // Re-opening after an "agent restart" sees the same cgroup.
    let reopened = scope.layout.open(&scope.rel("alloc/task")).unwrap();
    assert_eq!(reopened, cg);
    assert_eq!(reopened.limits().unwrap(), applied);
    assert!(matches!(
        scope.layout.open(&scope.rel("alloc/nope")),
        Err(CgroupError::NotFound { .. })
    ));

    cg.destroy().unwrap();
    for d in cg.dirs() {
        assert!(!d.exists(), "{} removed", d.display());
        assert!(d.parent().unwrap().is_dir(), "the alloc level stays");
    }
    cg.destroy().unwrap();
}

#[test]
fn root_memory_limit_below_usage_is_a_clear_error() {
    let scope = scope("badlimit");
    let cg = scope.create("t");
    let limits = Limits {
        cpu_mhz: 100,
        cpu_max_cores: None,
        memory_bytes: 128 << 20,
        pids_max: 50,
    };
    cg.apply(&limits).unwrap();
    // tail holds 20 MiB of anonymous memory until the sleep ends.
    let mut child = spawn_joined(&cg, "{ head -c 20M /dev/zero; sleep 1000; } | tail");
    wait_for("tail to hold its memory", || {
        cg.stats().unwrap().memory_usage > 20 << 20
    });
    // Swap is off, so the kernel cannot shrink the cgroup to 4 MiB.
    let err = cg
        .apply(&Limits {
            memory_bytes: 4 << 20,
            ..limits.clone()
        })
        .unwrap_err();
    match &err {
        CgroupError::Write {
            path,
            value,
            source,
        } => {
            assert!(path.ends_with("memory.limit_in_bytes"), "{err}");
            assert_eq!(value, "4194304");
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "{source}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");
    // Nothing half-applied: the old limit holds.
    assert_eq!(cg.limits().unwrap().memory_max, Some(128 << 20));
    let bad = cg
        .apply(&Limits {
            cpu_max_cores: Some(0.0),
            ..limits
        })
        .unwrap_err();
    assert!(bad.to_string().contains("cpu_max_cores"), "{bad}");
    cg.kill_all().unwrap();
    child.wait().unwrap();
}

#[test]
fn root_add_pid_shows_in_pids_and_proc() {
    let scope = scope("join");
    let cg = scope.create("alloc/task");
    let mut child = Command::new("sleep").arg("100").spawn().unwrap();
    let pid = child.id();
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids(), vec![pid]);
    let proc_cgroup = read(format!("/proc/{pid}/cgroup"));
    for hierarchy in ["memory", "cpu", "pids", "freezer", "cpuset"] {
        let line = format!("{hierarchy}:/{}", scope.rel("alloc/task"));
        assert!(
            proc_cgroup.lines().any(|l| l.ends_with(&line)),
            "{line} in {proc_cgroup}"
        );
    }
    cg.kill_all().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    assert!(cg.pids().is_empty());
}

#[test]
fn root_stats_move_while_a_busy_loop_runs() {
    let scope = scope("stats");
    let cg = scope.create("alloc/task");
    cg.apply(&Limits {
        cpu_mhz: 1000,
        cpu_max_cores: None,
        memory_bytes: 128 << 20,
        pids_max: 50,
    })
    .unwrap();
    let before = cg.stats().unwrap();
    assert_eq!(before.pids_current, 0);
    let mut child = spawn_joined(&cg, "while :; do :; done");
    wait_for("the busy loop to join", || cg.pids() == vec![child.id()]);
    let first = cg.stats().unwrap();
    wait_for("cpu usage to grow", || {
        cg.stats().unwrap().cpu_usage_ns > first.cpu_usage_ns + 10_000_000
    });
    let s = cg.stats().unwrap();
    assert_eq!(s.pids_current, 1);
    assert!(s.memory_usage > 0, "{s:?}");
    assert!(s.memory_max_usage >= s.memory_usage, "{s:?}");
    assert_eq!(s.oom_kills, 0);
    assert!(!cg.oom_killed());
    cg.kill_all().unwrap();
    child.wait().unwrap();
    assert_eq!(cg.stats().unwrap().pids_current, 0);
}

#[test]
fn root_oom_kill_is_detected_and_a_normal_run_is_not() {
    let scope = scope("oom");
    let limits = Limits {
        cpu_mhz: 500,
        cpu_max_cores: None,
        memory_bytes: 64 << 20,
        pids_max: 50,
    };

    let hog = scope.create("alloc/hog");
    hog.apply(&limits).unwrap();
    // tail keeps everything when there is no newline: 300 MiB > 64 MiB.
    let status = spawn_joined(&hog, "head -c 300M /dev/zero | tail")
        .wait()
        .unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(hog.oom_killed(), "the hog was OOM-killed");
    let s = hog.stats().unwrap();
    assert!(s.oom_kills >= 1, "{s:?}");
    assert!(s.memory_max_usage >= 60 << 20, "{s:?}");

    let fine = scope.create("alloc/fine");
    fine.apply(&limits).unwrap();
    let status = spawn_joined(&fine, "head -c 16M /dev/zero | tail > /dev/null")
        .wait()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!fine.oom_killed());
    assert_eq!(fine.stats().unwrap().oom_kills, 0);
}

#[test]
fn root_kill_all_kills_a_process_tree() {
    let scope = scope("kill");
    let cg = scope.create("alloc/task");
    let mut child = spawn_joined(
        &cg,
        "sleep 1000 & sleep 1000 & sh -c 'sleep 1000 & wait' & wait",
    );
    // sh, two sleeps, the inner sh and its sleep.
    wait_for("the tree to start", || cg.pids().len() == 5);
    let pids = cg.pids();
    cg.kill_all().unwrap();
    assert!(cg.pids().is_empty());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    wait_for("every process of the tree to die", || {
        pids.iter().all(|&p| dead(p))
    });
    // The freezer is thawed again, so the cgroup is usable afterwards.
    assert_eq!(read(dir_of(&cg, "freezer").join("freezer.state")), "THAWED");
}

#[test]
fn root_destroy_removes_nested_cgroups_and_running_processes() {
    let scope = scope("destroy");
    let cg = scope.create("alloc/task");
    // A workload that made its own sub-cgroup (as a nested runtime would).
    let inner = scope.create("alloc/task/inner");
    let mut child = spawn_joined(&inner, "exec sleep 1000");
    wait_for("the inner process to join", || inner.pids().len() == 1);
    assert_eq!(cg.pids(), inner.pids(), "pids() includes descendants");
    cg.destroy().unwrap();
    child.wait().unwrap();
    for d in cg.dirs().into_iter().chain(inner.dirs()) {
        assert!(!d.exists(), "{} removed", d.display());
    }
    cg.destroy().unwrap();
    // The whole test tree by name, as the agent's cleanup does.
    scope.layout.destroy(&scope.top).unwrap();
    for root in scope.layout.roots() {
        assert!(!root.join(&scope.top).exists());
    }
}

#[test]
fn root_restrict_devices_denies_all_but_the_allowlist() {
    let scope = scope("devices");
    let cg = scope.create("alloc/task");
    let devices = dir_of(&cg, "devices");
    assert_eq!(read(devices.join("devices.list")), "a *:* rwm");
    assert!(cg.restrict_devices(&["c 1:3 rwm", "c 136:* rwm"]).unwrap());
    let list = read(devices.join("devices.list"));
    let rules: Vec<&str> = list.lines().collect();
    assert_eq!(rules, ["c 1:3 rwm", "c 136:* rwm"], "{list}");
    // A rule the kernel refuses is an error naming the file.
    let err = cg.restrict_devices(&["not a rule"]).unwrap_err();
    assert!(err.to_string().contains("devices.allow"), "{err}");
}

#[test]
fn root_destroy_kills_processes_of_a_descendant_left_frozen() {
    // An agent that died in the middle of a kill leaves a task's freezer
    // FROZEN; removing the allocation's parent must still end its processes.
    let scope = scope("frozen");
    let task = scope.create("alloc/task");
    let mut child = spawn_joined(&task, "sleep 100");
    let pid = child.id();
    wait_for("the child in the task's cgroup", || {
        task.pids().contains(&pid)
    });
    let state = dir_of(&task, "freezer").join("freezer.state");
    fs::write(&state, "FROZEN").unwrap();
    let start = std::time::Instant::now();
    while read(&state) != "FROZEN" && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(read(&state), "FROZEN");
    let alloc = scope.layout.open(&scope.rel("alloc")).unwrap();
    alloc.kill_all().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    assert_eq!(read(&state), "THAWED");
    alloc.destroy().unwrap();
    assert!(!dir_of(&task, "freezer").exists());
}
