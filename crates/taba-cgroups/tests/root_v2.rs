//! Real cgroups on a pure cgroup v2 host (needs root). This machine is
//! hybrid, so these tests are `#[ignore]`d in a plain `cargo test` and run
//! for real by `root_v2_guest.rs`, which boots a QEMU guest with only cgroup2
//! mounted (`scripts/guest.sh`) and runs this binary with `--ignored` inside.
//! On a v2 host, `cargo test -p taba-cgroups --test root_v2 -- --ignored`
//! runs them directly. Every test works under its own
//! `taba-test-<pid>-<name>` cgroup and removes it at the end.

mod common;

use common::{dead, read, spawn_joined, wait_for};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use taba_cgroups::{AnyCgroup, CgroupError, CgroupVersion, Limits};

fn scope(name: &str) -> common::Scope {
    common::Scope::new(common::layout_of(&[CgroupVersion::V2]), name)
}

/// The cgroup's one directory.
fn dir(cg: &AnyCgroup) -> PathBuf {
    let dirs = cg.dirs();
    assert_eq!(dirs.len(), 1, "one directory on v2: {dirs:?}");
    dirs[0].clone()
}

fn controllers(path: PathBuf) -> Vec<String> {
    read(path).split_whitespace().map(str::to_owned).collect()
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_detect_real_mountinfo_is_v2() {
    let layout = common::layout_of(&[CgroupVersion::V2]);
    assert_eq!(layout.roots(), [PathBuf::from("/sys/fs/cgroup")]);
    let info = taba_cgroups::fingerprint();
    assert_eq!(info.version, "v2");
    for c in ["cpu", "memory", "pids"] {
        assert!(info.controllers.iter().any(|x| x == c), "{c} in {info:?}");
    }
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_create_apply_and_read_back_every_file() {
    let scope = scope("limits");
    let cg = scope.create("alloc/task");
    let d = dir(&cg);
    assert!(d.is_dir());
    assert_eq!(
        d,
        PathBuf::from("/sys/fs/cgroup").join(scope.rel("alloc/task"))
    );
    assert_eq!(cg.procs_files(), [d.join("cgroup.procs")]);
    // The controllers are enabled down to the task's level.
    for level in [
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from("/sys/fs/cgroup").join(&scope.top),
        PathBuf::from("/sys/fs/cgroup").join(scope.rel("alloc")),
    ] {
        let enabled = controllers(level.join("cgroup.subtree_control"));
        for c in ["cpu", "memory", "pids"] {
            assert!(
                enabled.iter().any(|e| e == c),
                "{c} in {level:?}: {enabled:?}"
            );
        }
    }

    let limits = Limits {
        cpu_mhz: 500,
        cpu_max_cores: Some(1.5),
        memory_bytes: 64 << 20,
        pids_max: 100,
    };
    let applied = cg.apply(&limits).unwrap();
    assert_eq!(read(d.join("cpu.weight")), limits.cpu_weight().to_string());
    assert_eq!(read(d.join("cpu.max")), "150000 100000");
    assert_eq!(read(d.join("memory.max")), "67108864");
    assert_eq!(read(d.join("memory.swap.max")), "0");
    assert_eq!(read(d.join("pids.max")), "100");
    assert_eq!(applied.cpu_shares, None);
    assert_eq!(applied.cpu_weight, Some(limits.cpu_weight()));
    assert_eq!(applied.cpu_quota_us, Some(150_000));
    assert_eq!(applied.cpu_period_us, 100_000);
    assert_eq!(applied.memory_max, Some(64 << 20));
    assert_eq!(applied.swap_max, Some(0));
    assert_eq!(applied.pids_max, Some(100));
    assert_eq!(cg.limits().unwrap(), applied);

    // Lifting the optional caps.
    let applied = cg
        .apply(&Limits {
            cpu_mhz: 3000,
            cpu_max_cores: None,
            memory_bytes: 256 << 20,
            pids_max: 0,
        })
        .unwrap();
    assert_eq!(read(d.join("cpu.max")), "max 100000");
    assert_eq!(read(d.join("memory.max")), "268435456");
    assert_eq!(read(d.join("pids.max")), "max");
    assert_eq!(applied.cpu_quota_us, None);
    assert_eq!(applied.pids_max, None);

    // The kernel rounds memory down to whole pages.
    let applied = cg
        .apply(&Limits {
            cpu_mhz: 3000,
            cpu_max_cores: Some(0.25),
            memory_bytes: 32_000_001,
            pids_max: 10,
        })
        .unwrap();
    let expect = 32_000_001 / 4096 * 4096;
    assert_eq!(read(d.join("memory.max")), expect.to_string());
    assert_eq!(read(d.join("cpu.max")), "25000 100000");
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
    assert!(!d.exists());
    assert!(d.parent().unwrap().is_dir(), "the alloc level stays");
    cg.destroy().unwrap();
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_memory_limit_below_usage_is_a_clear_error_and_kills_nothing() {
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
    let before = cg.pids();
    assert!(before.len() >= 3, "sh, the subshell and tail: {before:?}");
    // Swap is off: v1 refuses such a limit (EBUSY); v2 would take it and
    // OOM-kill the workload, so taba refuses it the same way on v2.
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
            assert!(path.ends_with("memory.max"), "{err}");
            assert_eq!(value, "4194304");
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "{source}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("memory.max"), "{err}");
    // Nothing half-applied, nothing killed.
    assert_eq!(cg.limits().unwrap().memory_max, Some(128 << 20));
    assert_eq!(cg.stats().unwrap().oom_kills, 0);
    assert_eq!(cg.pids(), before, "every process lives");
    cg.kill_all().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_add_pid_shows_in_pids_and_proc() {
    let scope = scope("join");
    let cg = scope.create("alloc/task");
    let mut child = Command::new("sleep").arg("100").spawn().unwrap();
    let pid = child.id();
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids(), vec![pid]);
    assert_eq!(
        read(format!("/proc/{pid}/cgroup")),
        format!("0::/{}", scope.rel("alloc/task"))
    );
    cg.kill_all().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(cg.pids().is_empty());
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_stats_move_while_a_busy_loop_runs() {
    let scope = scope("stats");
    let cg = scope.create("alloc/task");
    cg.apply(&Limits {
        cpu_mhz: 1000,
        cpu_max_cores: None,
        memory_bytes: 128 << 20,
        pids_max: 50,
    })
    .unwrap();
    assert_eq!(cg.stats().unwrap().pids_current, 0);
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
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_pids_max_refuses_forks_beyond_the_limit() {
    let scope = scope("pids");
    let cg = scope.create("alloc/task");
    cg.apply(&Limits {
        cpu_mhz: 100,
        cpu_max_cores: None,
        memory_bytes: 64 << 20,
        pids_max: 3,
    })
    .unwrap();
    // The shell and two sleeps fit; the kernel refuses the other forks.
    let mut child = spawn_joined(&cg, "sleep 100 & sleep 100 & sleep 100 & sleep 100 & wait");
    let events = dir(&cg).join("pids.events");
    wait_for("a refused fork in pids.events", || read(&events) != "max 0");
    assert!(read(&events).starts_with("max "), "{}", read(&events));
    assert!(cg.pids().len() <= 3, "{:?}", cg.pids());
    assert!(cg.stats().unwrap().pids_current <= 3);
    cg.kill_all().unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_oom_kill_is_detected_and_a_normal_run_is_not() {
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
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_kill_all_kills_a_process_tree() {
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
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    wait_for("every process of the tree to die", || {
        pids.iter().all(|&p| dead(p))
    });
    // The cgroup is usable afterwards.
    assert_eq!(read(dir(&cg).join("cgroup.freeze")), "0");
    let mut again = spawn_joined(&cg, "exec sleep 100");
    wait_for("a new process to join", || cg.pids().len() == 1);
    cg.kill_all().unwrap();
    again.wait().unwrap();
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_destroy_removes_nested_cgroups_and_running_processes() {
    let scope = scope("destroy");
    let cg = scope.create("alloc/task");
    // A workload that made its own sub-cgroup (as a nested runtime would).
    let inner = scope.create("alloc/task/inner");
    let mut child = spawn_joined(&inner, "exec sleep 1000");
    wait_for("the inner process to join", || inner.pids().len() == 1);
    assert_eq!(cg.pids(), inner.pids(), "pids() includes descendants");
    cg.destroy().unwrap();
    child.wait().unwrap();
    assert!(!dir(&cg).exists() && !dir(&inner).exists());
    cg.destroy().unwrap();
    // The whole test tree by name, as the agent's cleanup does.
    scope.layout.destroy(&scope.top).unwrap();
    assert!(!PathBuf::from("/sys/fs/cgroup").join(&scope.top).exists());
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_destroy_kills_processes_of_a_descendant_left_frozen() {
    // An agent that died in the middle of a kill may leave a task frozen;
    // removing the allocation's parent must still end its processes.
    let scope = scope("frozen");
    let task = scope.create("alloc/task");
    let mut child = spawn_joined(&task, "sleep 100");
    let pid = child.id();
    wait_for("the child in the task's cgroup", || {
        task.pids().contains(&pid)
    });
    std::fs::write(dir(&task).join("cgroup.freeze"), "1").unwrap();
    wait_for("the task to freeze", || {
        read(dir(&task).join("cgroup.events")).contains("frozen 1")
    });
    let alloc = scope.layout.open(&scope.rel("alloc")).unwrap();
    alloc.destroy().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(!dir(&task).exists());
}

#[test]
#[ignore = "needs a cgroup v2-only host: root_v2_guest runs it in a QEMU guest"]
fn root_v2_restrict_devices_runs_a_device_program() {
    let scope = scope("devices");
    let cg = scope.create("alloc/task");
    assert!(cg.restrict_devices(&["c 1:3 rwm", "c 1:9 r"]).unwrap());
    let script = format!(
        "echo $$ > {} || exit 9; \
         head -c 1 /dev/null && echo null-ok; \
         head -c 1 /dev/urandom >/dev/null && echo urandom-read-ok; \
         echo x > /dev/urandom || echo urandom-write-denied; \
         head -c 1 /dev/zero >/dev/null || echo zero-denied",
        dir(&cg).join("cgroup.procs").display()
    );
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "null-ok",
        "urandom-read-ok",
        "urandom-write-denied",
        "zero-denied",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
}
