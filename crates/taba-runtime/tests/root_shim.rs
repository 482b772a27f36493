//! End-to-end tests of the shim and the embedded runtime. They need root,
//! cgroups (v1's pids hierarchy here; on a v2-only host the v2 root: the
//! QEMU guest of `taba-cgroups`' `root_v2_guest` runs them there too) and
//! /bin/busybox (Debian's busybox-static), and fail loudly without them.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use taba_runtime::shim::exec::ExecSpec;
use taba_runtime::shim::{self, ProcessWorkload, ShimError, Workload};

fn container(bundle: PathBuf) -> Workload {
    Workload::Container { bundle }
}

#[test]
fn root_container_is_isolated_and_confined() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let script = "echo pid=$$; hostname; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                  echo timer=$(wc -c < /proc/timer_list); echo firmware=$(ls /sys/firmware | wc -l); \
                  touch /sys/kernel/taba-x 2>&1; echo sysfs-rc=$?; \
                  echo x > /proc/sys/kernel/domainname 2>&1; echo procsys-rc=$?; \
                  unshare -n true 2>&1; echo unshare-rc=$?";
    let bundle = bundle(dir.path(), &["sh", "-c", script], "taba-iso");
    let task = make_task(dir.path(), container(bundle), vec![], 1 << 20, 2);
    let started = shim::spawn(&shim_exe(), &task).unwrap();
    let exit = shim::wait_exit(&task, started.shim_pid).unwrap();
    let out = log(dir.path(), "stdout");
    assert_eq!(exit.exit_code, Some(0), "{exit:?} {out}");
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("taba-iso\n"), "{out}");
    assert!(
        out.contains(&format!("CapEff:\t{DEFAULT_CAP_EFF}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("CapBnd:\t{DEFAULT_CAP_EFF}")),
        "{out}"
    );
    // Docker's default: setuid binaries work within the bounding set; the
    // task option no_new_privileges turns them off (root_attacks.rs).
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // Both are non-empty on the host: masking must hide them.
    assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty());
    assert!(std::fs::read_dir("/sys/firmware").unwrap().next().is_some());
    assert!(
        out.contains("timer=0\n"),
        "masked /proc/timer_list must read empty: {out}"
    );
    assert!(
        out.contains("firmware=0\n"),
        "masked /sys/firmware must be empty: {out}"
    );
    assert!(
        out.contains("Read-only file system") && !out.contains("sysfs-rc=0"),
        "/sys must be read-only: {out}"
    );
    assert!(
        !out.contains("procsys-rc=0"),
        "/proc/sys must be read-only: {out}"
    );
    assert!(
        !out.contains("unshare-rc=0"),
        "seccomp/caps must forbid unshare: {out}"
    );
}

/// Task files hold the job's environment (secrets): shim files, logs and
/// the bundle's config.json are 0600, the log dir 0700.
#[test]
fn root_task_files_are_private() {
    use std::os::unix::fs::MetadataExt;
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), &["sh", "-c", "echo out; echo err >&2"], "x");
    let spec = taba_runtime::oci_spec::runtime::Spec::load(bundle.join("config.json")).unwrap();
    taba_runtime::container::save_spec(&spec, &bundle.join("config.json")).unwrap();
    let task = make_task(dir.path(), container(bundle.clone()), vec![], 1024, 1);
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    shim::wait_exit(&task, s.shim_pid).unwrap();
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().mode() & 0o7777;
    for f in ["shim.json", "state.json", "exit.json"] {
        assert_eq!(mode(task.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(bundle.join("config.json")), 0o600);
    assert_eq!(mode(dir.path().join("logs")), 0o700);
    assert_eq!(mode(dir.path().join("logs/t.stdout.0")), 0o600);
    assert_eq!(mode(dir.path().join("logs/t.stderr.0")), 0o600);
}

#[test]
fn root_container_exit_code_and_signal_propagate() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let task = make_task(
        dir.path(),
        container(bundle(dir.path(), &["sh", "-c", "exit 7"], "x")),
        vec![],
        1024,
        1,
    );
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    let exit = shim::wait_exit(&task, s.shim_pid).unwrap();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.start_error),
        (Some(7), None, None)
    );

    let dir = tempfile::tempdir().unwrap();
    let task = make_task(
        dir.path(),
        container(bundle(dir.path(), &["sleep", "60"], "x")),
        vec![],
        1024,
        1,
    );
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    let state = shim::read_state(&task)
        .unwrap()
        .expect("state.json once running");
    assert_eq!(
        (state.pid, state.shim_pid, state.started_at),
        (s.pid, s.shim_pid, s.started_at)
    );
    assert!(shim::is_alive(&state));
    assert!(shim::read_exit(&task).unwrap().is_none());
    shim::signal(&state, libc::SIGKILL).unwrap();
    let exit = shim::wait_exit(&task, s.shim_pid).unwrap();
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGKILL)));
    assert!(!shim::is_alive(&state));
    assert!(matches!(
        shim::signal(&state, libc::SIGKILL),
        Err(ShimError::NotRunning(_))
    ));
}

#[test]
fn root_container_joins_cgroup() {
    require_root_and_busybox();
    let cg = TestCgroup::new("join");
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), &["sleep", "60"], "x");
    let task = make_task(dir.path(), container(b), vec![cg.procs()], 1024, 1);
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    let procs = std::fs::read_to_string(cg.procs()).unwrap();
    let state = shim::read_state(&task).unwrap().unwrap();
    shim::signal(&state, libc::SIGKILL).unwrap();
    shim::wait_exit(&task, s.shim_pid).unwrap();
    assert!(
        procs.lines().any(|l| l == s.pid.to_string()),
        "pid {} not in {procs:?}",
        s.pid
    );
    // The shim itself stays outside the task's cgroup.
    assert!(!procs.lines().any(|l| l == s.shim_pid.to_string()));
}

#[test]
fn root_logs_are_captured_and_rotated() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    // 100,000 bytes of stdout into files of 16 KiB, 3 kept; a line on stderr.
    let script = "yes 0123456789abcdefghi | head -c 100000; echo to-stderr >&2";
    let task = make_task(
        dir.path(),
        container(bundle(dir.path(), &["sh", "-c", script], "x")),
        vec![],
        16384,
        3,
    );
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    assert_eq!(
        shim::wait_exit(&task, s.shim_pid).unwrap().exit_code,
        Some(0)
    );
    let logs = dir.path().join("logs");
    let idx = shim::logs::log_indices(&logs, "t", "stdout").unwrap();
    // 100000 / 16384 -> files 0..=6, the last holding 100000 - 6*16384 = 1696 bytes.
    assert_eq!(idx, vec![4, 5, 6]);
    let last = std::fs::read(shim::logs::log_path(&logs, "t", "stdout", 6)).unwrap();
    assert_eq!(last.len(), 100_000 - 6 * 16384);
    let full = std::fs::read(shim::logs::log_path(&logs, "t", "stdout", 5)).unwrap();
    assert_eq!(full.len(), 16384);
    assert!(full.starts_with(b"0123456789abcdefghi\n") || full.contains(&b'\n'));
    assert_eq!(log(dir.path(), "stderr"), "to-stderr\n");
}

#[test]
fn root_workload_outlives_its_spawner() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), &["sh", "-c", "sleep 1; echo done; exit 3"], "x");
    let task = make_task(dir.path(), container(b), vec![], 1024, 1);
    // Another process spawns the shim and exits.
    let out = Command::new(shim_exe())
        .arg("spawn")
        .arg(&task)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started: shim::Started = serde_json::from_slice(&out.stdout).unwrap();
    let state = shim::read_state(&task).unwrap().unwrap();
    assert_eq!(state.pid, started.pid);
    assert!(shim::is_alive(&state), "workload must survive its spawner");
    // We are neither the shim's parent nor its spawner's.
    let exit = shim::wait_exit(&task, started.shim_pid).unwrap();
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(log(dir.path(), "stdout"), "done\n");
    assert!(!shim::is_alive(&state));
}

#[test]
fn root_exec_joins_the_container() {
    require_root_and_busybox();
    let cg = TestCgroup::new("exec");
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), &["sleep", "60"], "exec-host");
    std::fs::write(b.join("rootfs/etc/marker"), "inside-rootfs\n").unwrap();
    let task = make_task(dir.path(), container(b.clone()), vec![cg.procs()], 1024, 1);
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    let spec = ExecSpec::for_container(
        &b,
        vec![
            "sh".into(),
            "-c".into(),
            "hostname; cat /etc/marker; cat /proc/1/cmdline | tr '\\0' ' '; echo; grep -E '^(CapEff|Seccomp):' /proc/self/status; read x; echo got-$x; exit 5".into(),
        ],
        vec![cg.procs()],
    )
    .unwrap();
    let spec_path = dir.path().join("exec.json");
    spec.write(&spec_path).unwrap();
    let mut cmd = taba_runtime::shim::exec::exec_command(&shim_exe(), s.pid, &spec_path);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let state = shim::read_state(&task).unwrap().unwrap();
    shim::signal(&state, libc::SIGKILL).unwrap();
    shim::wait_exit(&task, s.shim_pid).unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exec-host\n"), "{stdout}");
    assert!(stdout.contains("inside-rootfs\n"), "{stdout}");
    assert!(
        stdout.contains("sleep 60"),
        "pid 1 of the exec must be the container's: {stdout}"
    );
    assert!(
        stdout.contains(&format!("CapEff:\t{DEFAULT_CAP_EFF}")),
        "{stdout}"
    );
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("got-hello"), "{stdout}");
}

#[test]
fn root_start_errors_are_reported() {
    require_root_and_busybox();
    let dir = tempfile::tempdir().unwrap();
    let task = make_task(
        dir.path(),
        container(bundle(dir.path(), &["/nonexistent"], "x")),
        vec![],
        1024,
        1,
    );
    let err = shim::spawn(&shim_exe(), &task).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("exec /nonexistent") && msg.contains("No such file"),
        "{msg}"
    );
    let exit = shim::read_exit(&task)
        .unwrap()
        .expect("exit.json after a start failure");
    assert!(exit.start_error.unwrap().contains("/nonexistent"));
    assert!(shim::read_state(&task).unwrap().is_none());

    // A process workload with a missing working directory.
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::Process(ProcessWorkload {
        args: vec!["/bin/true".into()],
        env: vec![],
        cwd: Some("/no/such/dir".into()),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
    });
    let task = make_task(dir.path(), w, vec![], 1024, 1);
    let msg = shim::spawn(&shim_exe(), &task).unwrap_err().to_string();
    assert!(msg.contains("chdir to /no/such/dir"), "{msg}");

    // A cgroup that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path(), &["true"], "x");
    let task = make_task(
        dir.path(),
        container(b),
        vec![cgroup_root().join("taba-test-missing/cgroup.procs")],
        1024,
        1,
    );
    let msg = shim::spawn(&shim_exe(), &task).unwrap_err().to_string();
    let missing = cgroup_root().join("taba-test-missing");
    assert!(
        msg.contains(&format!("join cgroup {}", missing.display())),
        "{msg}"
    );
}

#[test]
fn root_process_workload_runs_as_its_user_in_its_cgroup() {
    require_root_and_busybox();
    let cg = TestCgroup::new("proc");
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::Process(ProcessWorkload {
        args: vec![
            "busybox".into(),
            "sh".into(),
            "-c".into(),
            "echo hi; id -u; id -g; pwd; cat /proc/self/cgroup; echo $FOO".into(),
        ],
        env: vec!["PATH=/bin:/usr/bin".into(), "FOO=bar".into()],
        cwd: Some("/tmp".into()),
        uid: 65534,
        gid: 65534,
        additional_gids: vec![],
    });
    let task = make_task(dir.path(), w, vec![cg.procs()], 1 << 20, 2);
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    let exit = shim::wait_exit(&task, s.shim_pid).unwrap();
    let out = log(dir.path(), "stdout");
    assert_eq!(
        exit.exit_code,
        Some(0),
        "{out} {}",
        log(dir.path(), "stderr")
    );
    let line = cg.proc_cgroup_line();
    assert!(out.starts_with("hi\n65534\n65534\n/tmp\n"), "{out}");
    assert!(out.contains(&line), "{out}");
    assert!(out.ends_with("bar\n"), "{out}");

    // exec next to a process workload: cgroup, user and directory.
    let dir = tempfile::tempdir().unwrap();
    let pw = ProcessWorkload {
        args: vec!["sleep".into(), "60".into()],
        env: vec!["PATH=/bin:/usr/bin".into()],
        cwd: Some("/tmp".into()),
        uid: 65534,
        gid: 65534,
        additional_gids: vec![],
    };
    let task = make_task(
        dir.path(),
        Workload::Process(pw.clone()),
        vec![cg.procs()],
        1024,
        1,
    );
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    let spec = ExecSpec::for_process(
        &pw,
        vec![
            "sh".into(),
            "-c".into(),
            "id -u; pwd; cat /proc/self/cgroup".into(),
        ],
        vec![cg.procs()],
    );
    let spec_path = dir.path().join("exec.json");
    spec.write(&spec_path).unwrap();
    let out = taba_runtime::shim::exec::exec_command(&shim_exe(), s.pid, &spec_path)
        .output()
        .unwrap();
    let state = shim::read_state(&task).unwrap().unwrap();
    shim::signal(&state, libc::SIGKILL).unwrap();
    shim::wait_exit(&task, s.shim_pid).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("65534\n/tmp\n"), "{stdout}");
    assert!(stdout.contains(&line), "{stdout}");
    std::thread::sleep(Duration::from_millis(10));
}
