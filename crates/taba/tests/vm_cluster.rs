//! Live migration across agents: `taba dev --agents 2` (two agent processes
//! in their own network namespaces on a bridge), the counting test guest
//! of `scripts/vm-guest.sh` under TCG with QEMU 10, moved with
//! `taba alloc migrate` and `taba node drain`. Needs root and QEMU; fails
//! loudly without them.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;
use taba_types::Allocation;

const BOOT: Duration = Duration::from_secs(180);

fn cluster() -> DevCluster {
    let guest = vm_guest_dir();
    DevCluster::start(
        2,
        &[
            "--vm-image-dir",
            guest.to_str().unwrap(),
            "--vm-accel",
            "tcg",
            "--no-rebalance",
        ],
    )
}

/// A one-VM service whose guest runs with `cmdline` (`taba.count`: it
/// counts in RAM).
fn vm_job(name: &str, migrate: &str, cmdline: &str) -> String {
    format!(
        r#"
name = "{name}"
type = "service"
[[group]]
name = "g"
restart = {{ attempts = 0, interval = "1m", delay = "1s", mode = "fail" }}
reschedule = {{ attempts = 0 }}
migrate = {{ min_healthy_time = "1s", rebalance = false{migrate} }}
  [[group.task]]
  name = "guest"
  driver = "vm"
  kernel = "current/vmlinuz"
  initrd = "current/initramfs.cpio"
  cmdline = "{cmdline}"
  resources = {{ cpu = 500, memory = "256MiB" }}
  kill_timeout = "30s"
"#
    )
}

fn alloc(c: &DevCluster, id: &str) -> Allocation {
    c.client.alloc(id).expect("the allocation").allocation
}

/// The allocations of `job`, in full.
fn allocs(c: &DevCluster, job: &str) -> Vec<Allocation> {
    c.client
        .job_status(job)
        .map(|st| {
            st.allocations
                .iter()
                .map(|e| alloc(c, e.id.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

fn running(a: &Allocation) -> bool {
    a.client_status.to_string() == "running" && a.desired_status.to_string() == "run"
}

/// Where agent `node`'s allocation keeps the guest's serial console.
fn console_file(c: &DevCluster, a: &Allocation) -> PathBuf {
    c.data
        .join("agents")
        .join(&a.node_name)
        .join("allocs")
        .join(a.id.as_str())
        .join("logs/guest.stdout.0")
}

fn console(c: &DevCluster, a: &Allocation) -> String {
    std::fs::read_to_string(console_file(c, a)).unwrap_or_default()
}

fn counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("taba-count "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn last_count(log: &str) -> u64 {
    counts(log).last().copied().unwrap_or(0)
}

/// Submit `job` and wait until its guest counts past 10; its allocation.
fn start_counting(c: &DevCluster, job: &str, migrate: &str) -> Allocation {
    start_guest(c, job, migrate, "taba.count")
}

/// [`start_counting`] with the guest's kernel command line.
fn start_guest(c: &DevCluster, job: &str, migrate: &str, cmdline: &str) -> Allocation {
    let f = job_file(&c.data, job, &vm_job(job, migrate, cmdline));
    let out = c.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut found = None;
    c.wait_for("the VM running and counting", BOOT, || {
        found = allocs(c, job)
            .into_iter()
            .find(|a| running(a) && last_count(&console(c, a)) >= 10);
        found.is_some()
    });
    found.unwrap()
}

fn other_node(a: &Allocation) -> &'static str {
    if a.node_name == "n1" {
        "n2"
    } else {
        "n1"
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// After a live move of `src`: its replacement runs on the other node,
/// took the guest over counting on from where the source stopped (no
/// reboot, no reset), and the source's QEMU is gone. The replacement.
fn assert_moved_live(c: &DevCluster, job: &str, src: &Allocation) -> Allocation {
    let src_pid = src.task_states["guest"].pid.expect("a running task's pid");
    let mut target = None;
    c.wait_for("the replacement running", Duration::from_secs(120), || {
        target = allocs(c, job)
            .into_iter()
            .find(|a| running(a) && a.previous_alloc.as_ref() == Some(&src.id));
        target.is_some()
    });
    let target = target.unwrap();
    assert_ne!(target.node_name, src.node_name);
    let src_now = alloc(c, src.id.as_str());
    assert_eq!(src_now.desired_status.to_string(), "stop", "{src_now:?}");
    assert_eq!(
        src_now.desired_description,
        format!("migrated to {}", target.node_name)
    );
    assert!(target.live_migration.is_none() && src_now.live_migration.is_none());
    c.wait_for("the source QEMU gone", Duration::from_secs(30), || {
        !pid_alive(src_pid)
    });
    let last_on_source = last_count(&console(c, &src_now));
    c.wait_for(
        "the target guest counting on",
        Duration::from_secs(60),
        || last_count(&console(c, &target)) > last_on_source + 10,
    );
    let log = console(c, &target);
    let on_target = counts(&log);
    assert!(
        on_target[0] > 1 && on_target[0] <= last_on_source + 5,
        "the target's first count {} does not follow the source's last {last_on_source}",
        on_target[0]
    );
    assert!(
        on_target.windows(2).all(|w| w[1] == w[0] + 1),
        "the count restarted or skipped on the target: {on_target:?}"
    );
    assert!(
        !log.contains("taba-guest: init ok"),
        "the target booted:\n{log}"
    );
    target
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn root_vm_alloc_migrate_and_drain_move_the_guest_live_between_agents() {
    let c = cluster();
    let src = start_counting(&c, "mig", "");
    let id = src.id.to_string();
    let to = other_node(&src);

    // Refused with a clear error, nothing changed: the node it runs on, an
    // unknown node, an ineligible node.
    let out = c.cli(&["alloc", "migrate", &id, "--to", &src.node_name]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already runs there"),
        "{}",
        stderr(&out)
    );
    let out = c.cli(&["alloc", "migrate", &id, "--to", "n9"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = c.cli(&["node", "eligibility", to, "--disable"]);
    assert!(out.status.success(), "{out:?}");
    let out = c.cli(&["alloc", "migrate", &id, "--to", to]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!("node {to} cannot take")) && e.contains("not eligible"),
        "{e}"
    );
    let out = c.cli(&["node", "eligibility", to, "--enable"]);
    assert!(out.status.success(), "{out:?}");
    let same = alloc(&c, &id);
    assert!(running(&same) && same.migrate.is_none() && same.live_migration.is_none());

    // The move, followed by the CLI to its end.
    let out = c.cli(&["alloc", "migrate", &id, "--to", to]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail());
    assert!(text.contains("migrates live"), "{text}");
    assert!(
        text.contains(&format!("migrated live to node {to}")),
        "{text}"
    );
    let moved = assert_moved_live(&c, "mig", &src);
    assert_eq!(moved.node_name, to);
    assert!(c.running_allocs(if to == "n1" { 2 } else { 1 }).is_empty());

    // A drain of its new node moves it back, live.
    let out = c.cli(&["node", "drain", to, "--deadline", "5m"]);
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail());
    let back = assert_moved_live(&c, "mig", &moved);
    assert_eq!(back.node_name, src.node_name);
}

#[test]
fn root_vm_failed_migration_leaves_the_guest_running_on_its_source() {
    let c = cluster();
    // 256 MiB at 1 MiB/s cannot move within the 1 s timeout.
    let src = start_counting(&c, "slow", ", timeout = \"1s\", max_bandwidth = \"1MiB\"");
    let id = src.id.to_string();
    let src_pid = src.task_states["guest"].pid.unwrap();
    let out = c.cli(&["alloc", "migrate", &id]);
    assert!(!out.status.success(), "{out:?}");
    let e = stderr(&out);
    assert!(
        e.contains("live migration to node") && e.contains("failed"),
        "{e}"
    );
    // The source runs on (the same QEMU, still counting); the target was
    // stopped and its QEMU is gone; the events say why.
    let a = alloc(&c, &id);
    assert!(running(&a) && a.live_migration.is_none(), "{a:?}");
    assert!(pid_alive(src_pid));
    assert!(
        a.events.iter().any(|e| e.kind == "Migration Failed"),
        "{:?}",
        a.events
    );
    let before = last_count(&console(&c, &a));
    c.wait_for("the source still counting", Duration::from_secs(60), || {
        last_count(&console(&c, &a)) > before + 5
    });
    let other = if src.node_name == "n1" { 2 } else { 1 };
    c.wait_for("the target's QEMU gone", Duration::from_secs(60), || {
        c.running_allocs(other).is_empty()
    });
    let targets: Vec<Allocation> = allocs(&c, "slow")
        .into_iter()
        .filter(|t| t.id != src.id)
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].desired_status.to_string(), "stop");
    assert!(
        targets[0].desired_description.contains("live migration"),
        "{}",
        targets[0].desired_description
    );
}

#[test]
fn root_alloc_migrate_of_a_driver_without_live_migration_is_a_restart_on_the_target() {
    let c = cluster();
    let f = job_file(
        &c.data,
        "sleeper",
        r#"
name = "sleeper"
[[group]]
name = "g"
migrate = { min_healthy_time = "1s", rebalance = false }
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "600"]
  resources = { cpu = 50, memory = "32MiB" }
"#,
    );
    let out = c.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut src = None;
    c.wait_for("the task running", Duration::from_secs(60), || {
        src = allocs(&c, "sleeper").into_iter().find(running);
        src.is_some()
    });
    let src = src.unwrap();
    let out = c.cli(&["alloc", "migrate", src.id.as_str()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("driver exec cannot migrate a running task") && text.contains("restarted on"),
        "{text}"
    );
    let mut moved = None;
    c.wait_for("the replacement running", Duration::from_secs(60), || {
        moved = allocs(&c, "sleeper")
            .into_iter()
            .find(|a| running(a) && a.previous_alloc.as_ref() == Some(&src.id));
        moved.is_some()
    });
    assert_ne!(moved.unwrap().node_name, src.node_name);
    assert!(alloc(&c, src.id.as_str())
        .desired_description
        .starts_with("moved to another node"));
}

/// A migration of `job` slowed to 1 MiB/s (about a minute for the test
/// guest) that stays in pre-copy: what the cancel and failure tests break.
const SLOW: &str = ", timeout = \"5m\", max_bandwidth = \"1MiB\"";

/// Wait until the live migration of `src` streams (the target listens and
/// the source reports progress); the migration's target allocation.
fn wait_streaming(c: &DevCluster, src: &Allocation) -> Allocation {
    let mut target = None;
    c.wait_for("the migration streaming", Duration::from_secs(120), || {
        let a = alloc(c, src.id.as_str());
        let streaming = a
            .live_migration
            .as_ref()
            .is_some_and(|m| m.incoming.is_some())
            && a.migration_status
                .as_ref()
                .is_some_and(|s| s.progress.as_ref().is_some_and(|p| p.transferred > 0));
        if streaming {
            target = a.live_migration.map(|m| m.target_alloc);
        }
        streaming
    });
    alloc(c, target.unwrap().as_str())
}

/// After a migration of `src` ended without moving it: the source runs on
/// with the same QEMU, its count never skipped nor restarted, the target
/// is stopped with `kind` saying why; `kind`'s event on the source. The
/// source's last event of that kind.
fn assert_runs_on_source(
    c: &DevCluster,
    src: &Allocation,
    target: &Allocation,
    kind: &str,
) -> String {
    let src_pid = src.task_states["guest"].pid.unwrap();
    c.wait_for("the migration ended", Duration::from_secs(120), || {
        alloc(c, src.id.as_str()).live_migration.is_none()
            && alloc(c, target.id.as_str())
                .events
                .iter()
                .any(|e| e.kind == kind)
    });
    let a = alloc(c, src.id.as_str());
    assert!(running(&a), "{a:?}");
    assert!(pid_alive(src_pid), "the source QEMU is gone");
    assert_eq!(a.task_states["guest"].pid, Some(src_pid));
    let before = last_count(&console(c, &a));
    c.wait_for("the source still counting", Duration::from_secs(60), || {
        last_count(&console(c, &a)) > before + 10
    });
    let n = counts(&console(c, &a));
    assert!(
        n[0] == 1 && n.windows(2).all(|w| w[1] == w[0] + 1),
        "the count on the source skipped or restarted: {n:?}"
    );
    let t = alloc(c, target.id.as_str());
    assert_eq!(t.desired_status.to_string(), "stop", "{t:?}");
    a.events
        .iter()
        .rev()
        .find(|e| e.kind == kind)
        .unwrap()
        .message
        .clone()
}

/// The QEMU of the migration target `target` is gone from its node.
fn assert_target_gone(c: &DevCluster, target: &Allocation) {
    let k: u32 = target.node_name[1..].parse().unwrap();
    c.wait_for("the target's QEMU gone", Duration::from_secs(60), || {
        !c.running_allocs(k).contains(&target.id.to_string())
    });
}

/// `taba alloc migrate ID` following the migration, as a child process.
fn follow_migration(c: &DevCluster, id: &str) -> std::process::Child {
    std::process::Command::new(taba_bin())
        .args(["alloc", "migrate", id])
        .env("TABA_ADDR", &c.addr)
        .env("TABA_TOKEN", &c.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("taba alloc migrate")
}

#[test]
fn root_vm_migration_cancelled_by_flag_or_ctrl_c_leaves_the_guest_on_its_source() {
    let c = cluster();
    let src = start_counting(&c, "cancel", SLOW);
    let id = src.id.to_string();

    // Nothing to cancel: a clear refusal.
    let out = c.cli(&["alloc", "migrate", &id, "--cancel"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not migrating"),
        "{}",
        stderr(&out)
    );

    // 1. `--cancel` from another terminal: the follower ends with the reason.
    let follower = follow_migration(&c, &id);
    let target = wait_streaming(&c, &src);
    let out = c.cli(&["alloc", "migrate", &target.id.to_string(), "--cancel"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail());
    assert!(text.contains("is being cancelled"), "{text}");
    assert!(text.contains("cancelled by"), "{text}");
    let f = follower.wait_with_output().unwrap();
    assert!(!f.status.success(), "{f:?}");
    assert!(stderr(&f).contains("cancelled by"), "{}", stderr(&f));
    let why = assert_runs_on_source(&c, &src, &target, "Migration Cancelled");
    assert!(why.contains("cancelled by"), "{why}");
    assert_target_gone(&c, &target);

    // 2. Ctrl-C on a following `taba alloc migrate`.
    let follower = follow_migration(&c, &id);
    let target = wait_streaming(&c, &src);
    // SAFETY: kill(2) on the CLI process this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(follower.id() as i32, libc::SIGINT);
    }
    let f = follower.wait_with_output().unwrap();
    assert!(!f.status.success(), "{f:?}");
    let e = stderr(&f);
    assert!(
        e.contains("Ctrl-C: cancelling") && e.contains("cancelled by"),
        "{e}"
    );
    assert_runs_on_source(&c, &src, &target, "Migration Cancelled");
    assert_target_gone(&c, &target);
    let a = alloc(&c, &id);
    assert_eq!(
        a.events
            .iter()
            .filter(|e| e.kind == "Migration Cancelled")
            .count(),
        2,
        "{:?}",
        a.events
    );
}

#[test]
fn root_vm_target_failures_mid_migration_leave_the_guest_on_its_source() {
    let mut c = cluster();
    let src = start_counting(&c, "tfail", SLOW);
    let id = src.id.to_string();
    let run = |c: &DevCluster| {
        let out = c.cli(&["alloc", "migrate", &id, "--detach"]);
        assert!(out.status.success(), "{out:?}");
        wait_streaming(c, &src)
    };

    // 1. The target's QEMU killed mid-migration.
    let target = run(&c);
    let qemu = target.task_states["guest"]
        .pid
        .expect("the target QEMU's pid");
    // SAFETY: kill(2) on the target QEMU of this test's cluster.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(qemu as i32, libc::SIGKILL);
    }
    let why = assert_runs_on_source(&c, &src, &target, "Migration Failed");
    assert!(why.contains("failed"), "{why}");
    assert_target_gone(&c, &target);

    // 2. The target's agent killed mid-migration: its node goes down, the
    //    migration fails; the agent back, the target QEMU it left is gone.
    let target = run(&c);
    let k: u32 = target.node_name[1..].parse().unwrap();
    c.kill_agent(k);
    let why = assert_runs_on_source(&c, &src, &target, "Migration Failed");
    assert!(why.contains("node is down"), "{why}");
    c.restart_agent(k);
    c.wait_for("the target node back", Duration::from_secs(60), || {
        c.client
            .node(&target.node_name)
            .is_ok_and(|n| n.status.to_string() == "ready")
    });
    assert_target_gone(&c, &target);

    // 3. The target's link cut mid-migration.
    let target = run(&c);
    c.link(k, false);
    let why = assert_runs_on_source(&c, &src, &target, "Migration Failed");
    assert!(why.contains("node is down"), "{why}");
    let out = c.cli(&["alloc", "status", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Migration Failed"),
        "{out:?}"
    );
    // The link back, the agent hears of the failure and ends its QEMU.
    c.link(k, true);
    assert_target_gone(&c, &target);
}

#[test]
fn root_vm_source_agent_killed_mid_migration_the_servers_fail_it_and_the_agent_readopts_the_guest()
{
    // The nodes stay up while the source's agent is away (a long heartbeat
    // TTL): the migration's own deadline (migrate.timeout + 30 s) fails it.
    let guest = vm_guest_dir();
    let mut c = DevCluster::start(
        2,
        &[
            "--vm-image-dir",
            guest.to_str().unwrap(),
            "--vm-accel",
            "tcg",
            "--no-rebalance",
            "--heartbeat-ttl",
            "5m",
        ],
    );
    let src = start_counting(&c, "sfail", ", timeout = \"10s\", max_bandwidth = \"1MiB\"");
    let id = src.id.to_string();
    let out = c.cli(&["alloc", "migrate", &id, "--detach"]);
    assert!(out.status.success(), "{out:?}");
    let target = wait_streaming(&c, &src);
    let k: u32 = src.node_name[1..].parse().unwrap();
    c.kill_agent(k);
    let a = alloc(&c, &id);
    c.wait_for(
        "the servers failing the migration",
        Duration::from_secs(120),
        || alloc(&c, &id).live_migration.is_none(),
    );
    let a2 = alloc(&c, &id);
    let why = &a2.events.last().unwrap().message;
    assert!(why.contains("migrate.timeout"), "{why}");
    assert_target_gone(&c, &target);
    c.restart_agent(k);
    let log = c.data.join(format!("logs/n{k}.log"));
    c.wait_for(
        "the agent re-attached to the source's QEMU",
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("re-attached over QMP")),
    );
    let src_pid = a.task_states["guest"].pid.unwrap();
    c.wait_for(
        "the source reported running",
        Duration::from_secs(60),
        || {
            let x = alloc(&c, &id);
            running(&x) && x.task_states["guest"].pid == Some(src_pid)
        },
    );
    assert_runs_on_source(&c, &src, &target, "Migration Failed");
}

#[test]
fn root_vm_migration_that_cannot_converge_switches_to_post_copy_when_allowed() {
    let c = cluster();
    // A guest rewriting 16 MiB of its RAM, a 1 ms budget at 4 MiB/s:
    // pre-copy never gets the dirty pages across within the pause it may take.
    let src = start_guest(
        &c,
        "post",
        ", timeout = \"60s\", max_downtime = \"1ms\", max_bandwidth = \"4MiB\", post_copy = true",
        "taba.count taba.dirty",
    );
    assert!(console(&c, &src).contains("taba-dirty: rewriting"));
    let id = src.id.to_string();
    let out = c.cli(&["alloc", "migrate", &id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail());
    assert!(text.contains("(post-copy)"), "{text}");
    let moved = assert_moved_live(&c, "post", &src);
    c.wait_for(
        "the source's final figures",
        Duration::from_secs(30),
        || {
            alloc(&c, &id)
                .migration_status
                .is_some_and(|s| s.completed.is_some())
        },
    );
    let a = alloc(&c, &id);
    let done = a.migration_status.clone().unwrap().completed.unwrap();
    assert!(done.post_copy, "{done:?}");
    eprintln!("post-copy migration: {done:?}; CLI: {text}");
    assert!(
        a.events
            .iter()
            .any(|e| e.kind == "Migration Completed" && e.message.contains("post-copy")),
        "{:?}",
        a.events
    );
    assert_ne!(moved.node_name, src.node_name);
}

#[test]
fn root_vm_disk_image_imported_on_the_server_is_fetched_by_the_agent() {
    let c = cluster();
    let boot = vm_guest_dir().join("current/boot.raw");
    let out = c.cli(&[
        "image",
        "import",
        boot.to_str().unwrap(),
        "--name",
        "cluster-boot",
    ]);
    assert!(out.status.success(), "{out:?}");
    let job = r#"
name = "fetched"
type = "service"
[[group]]
name = "g"
restart = { attempts = 0, interval = "1m", delay = "1s", mode = "fail" }
reschedule = { attempts = 0 }
  [[group.task]]
  name = "guest"
  driver = "vm"
  boot_disk = "cluster-boot"
  resources = { cpu = 500, memory = "256MiB" }
  kill_timeout = "30s"
"#;
    let f = job_file(&c.data, "fetched", job);
    let out = c.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut found = None;
    c.wait_for("the VM booted from the fetched disk", BOOT, || {
        found = allocs(&c, "fetched")
            .into_iter()
            .find(|a| console(&c, a).contains("taba-guest: booted from its disk"));
        found.is_some()
    });
    let a = found.unwrap();
    let events = format!("{:?}", a.task_states["guest"].events);
    assert!(
        events.contains("Image Fetched") && events.contains("cluster-boot"),
        "{events}"
    );
    // The agent's own store holds it now.
    let store = c.data.join("agents").join(&a.node_name).join("images");
    let agent_images = taba_image::ImageStore::open(&store).unwrap();
    let d = agent_images.resolve_disk("cluster-boot").unwrap().unwrap();
    assert_eq!(
        std::fs::metadata(&d.path).unwrap().len(),
        std::fs::metadata(&boot).unwrap().len()
    );
    // Live-migrated: the target fetches the base too, the boot disk (disk0)
    // is mirrored, the guest runs on without a reboot.
    let to = other_node(&a);
    let out = c.cli(&["alloc", "migrate", a.id.as_str(), "--to", to]);
    assert!(out.status.success(), "{out:?}");
    let mut moved = None;
    c.wait_for("the VM on the other node", Duration::from_secs(120), || {
        moved = allocs(&c, "fetched")
            .into_iter()
            .find(|t| running(t) && t.previous_alloc.as_ref() == Some(&a.id));
        moved.is_some()
    });
    let t = moved.unwrap();
    assert_eq!(t.node_name, to);
    let events = format!("{:?}", t.task_states["guest"].events);
    assert!(events.contains("Image Fetched"), "{events}");
    assert!(
        !console(&c, &t).contains("taba-guest: init ok"),
        "the guest booted again on the target: {}",
        console(&c, &t)
    );
    let out = c.cli(&["job", "stop", "fetched"]);
    assert!(out.status.success(), "{out:?}");
}
