//! End-to-end: the real `taba` binary in `taba dev` mode running real
//! containers and host processes on this machine.

mod common;

use common::*;
use std::time::Duration;
use taba_client::api::AllocListEntry;

fn wait_allocs(
    dev: &Dev,
    job: &str,
    what: &str,
    pred: impl Fn(&[AllocListEntry]) -> bool,
) -> Vec<AllocListEntry> {
    let mut last = Vec::new();
    dev.wait_for(what, Duration::from_secs(60), || {
        if let Ok(s) = dev.client.job_status(job) {
            last = s.allocations;
            pred(&last)
        } else {
            false
        }
    });
    last
}

fn running(allocs: &[AllocListEntry], n: usize) -> bool {
    allocs
        .iter()
        .filter(|a| a.status.to_string() == "running")
        .count()
        == n
}

/// Whether the cgroups here are v2 only (as in the guest of
/// `taba-cgroups`' `root_v2_guest`, which runs this file's tests there too).
fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        && !std::path::Path::new("/sys/fs/cgroup/memory").exists()
}

/// A task's cgroup directory: in the v1 hierarchy of `controller`, or the
/// one v2 directory.
fn cg_dir(controller: &str, alloc: &str, task: &str) -> String {
    if cgroup_v2() {
        format!("/sys/fs/cgroup/taba/{alloc}/{task}")
    } else {
        format!("/sys/fs/cgroup/{controller}/taba/{alloc}/{task}")
    }
}

fn read_cg(controller: &str, alloc: &str, task: &str, file: &str) -> String {
    let p = format!("{}/{file}", cg_dir(controller, alloc, task));
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {p}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn root_container_and_exec_jobs_run_log_exec_and_stop() {
    let dev = Dev::start();
    dev.import_busybox();
    let tmp = tempfile::tempdir().unwrap();
    let web = job_file(
        tmp.path(),
        "web",
        r#"
name = "web"
[[group]]
name = "web"
  [[group.task]]
  name = "httpd"
  driver = "container"
  image = "busybox"
  command = ["httpd", "-f", "-p", "8080", "-h", "/etc"]
  resources = { cpu = 100, memory = "64MiB", pids = 64 }
"#,
    );
    let out = dev.cli(&["job", "run", web.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.log_tail()
    );
    let tool = job_file(
        tmp.path(),
        "tool",
        r#"
name = "tool"
[[group]]
name = "g"
  [[group.task]]
  name = "sh"
  driver = "exec"
  command = ["/bin/sh", "-c", "echo hello-from-exec; echo oops >&2; exec sleep 1000"]
  env = { GREETING = "hi" }
  resources = { cpu = 50, memory = "32MiB" }
"#,
    );
    let out = dev.cli(&["job", "run", "--detach", tool.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let web_allocs = wait_allocs(&dev, "web", "web running", |a| running(a, 1));
    let tool_allocs = wait_allocs(&dev, "tool", "tool running", |a| running(a, 1));
    let web_id = web_allocs[0].id.to_string();
    let tool_id = tool_allocs[0].id.to_string();
    assert_eq!(web_allocs[0].node, "n1");

    // The cgroup limits are really set (cpu = 100 MHz: v1 shares 100,
    // v2 weight 100 x 100 / 1024).
    let (memory_file, cpu_file, cpu) = match cgroup_v2() {
        false => ("memory.limit_in_bytes", "cpu.shares", "100"),
        true => ("memory.max", "cpu.weight", "10"),
    };
    assert_eq!(
        read_cg("memory", &web_id, "httpd", memory_file),
        (64u64 << 20).to_string()
    );
    assert_eq!(read_cg("pids", &web_id, "httpd", "pids.max"), "64");
    assert_eq!(read_cg("cpu", &web_id, "httpd", cpu_file), cpu);
    assert_eq!(
        read_cg("memory", &tool_id, "sh", memory_file),
        (32u64 << 20).to_string()
    );
    // Containers may only use the default devices; exec tasks are not
    // fenced. (On v2 an eBPF program does it, which has no file to read:
    // taba-cgroups' root_v2 and taba-runtime's root_v2_container test it.)
    if !cgroup_v2() {
        let devices = read_cg("devices", &web_id, "httpd", "devices.list");
        assert!(devices.lines().any(|l| l == "c 1:3 rwm"), "{devices}");
        assert!(!devices.lines().any(|l| l == "a *:* rwm"), "{devices}");
        assert!(
            !devices.lines().any(|l| l.starts_with("b 254")),
            "{devices}"
        );
    }
    let pid = web_allocs[0].task_states["httpd"]
        .pid
        .expect("running task has a pid");
    let procs = read_cg("memory", &web_id, "httpd", "cgroup.procs");
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} not in its cgroup: {procs}"
    );

    // Logs of the exec task, both streams, via the CLI.
    let mut got = String::new();
    dev.wait_for("exec task output", Duration::from_secs(10), || {
        let out = dev.cli(&["alloc", "logs", &tool_id]);
        got = String::from_utf8_lossy(&out.stdout).to_string();
        got.contains("hello-from-exec")
    });
    let out = dev.cli(&["alloc", "logs", "--stderr", &tool_id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("oops"));

    // exec into the container: its own hostname, network and root filesystem.
    let out = dev.cli(&["alloc", "exec", &web_id, "--", "hostname"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        web_id.starts_with(&host),
        "hostname {host:?} is not the alloc id prefix"
    );
    let out = dev.cli(&[
        "alloc",
        "exec",
        &web_id,
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/passwd",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("root:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dev.cli(&["alloc", "exec", &web_id, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    // exec into the exec task sees its env.
    let out = dev.cli(&[
        "alloc",
        "exec",
        &tool_id,
        "--",
        "/bin/sh",
        "-c",
        "echo $GREETING",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
    // A host process that names no user runs as nobody (it used to be root
    // with every capability).
    let out = dev.cli(&["alloc", "exec", &tool_id, "--", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    // No local user reaches the data dir; the allocation's files are 0600.
    {
        use std::os::unix::fs::MetadataExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dev.data), 0o700);
        let alloc_dir = dev.data.join("agent/allocs").join(&web_id);
        assert_eq!(mode(&alloc_dir.join("alloc.json")), 0o600);
        assert_eq!(mode(&alloc_dir.join("httpd/bundle/config.json")), 0o600);
    }

    // JSON shapes promised by the CLI.
    let out = dev.cli(&["job", "status", "web", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("job status --json is JSON");
    let a = &v["allocations"][0];
    assert_eq!(a["id"], web_id.as_str());
    assert_eq!(a["node"], "n1");
    assert_eq!(a["status"], "running");
    assert!(a["task_states"]["httpd"].is_object());
    let out = dev.cli(&["alloc", "status", &web_id[..8], "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["id", "job", "node", "status"] {
        assert!(!v[k].is_null(), "alloc status --json lacks {k}");
    }
    let out = dev.cli(&["node", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "n1");
    assert_eq!(v[0]["status"], "ready");

    // Stop: processes gone, cgroups removed.
    let out = dev.cli(&["job", "stop", "web"]);
    assert!(out.status.success());
    wait_allocs(&dev, "web", "web stopped", |a| {
        a.iter().all(|a| a.status.to_string() == "complete")
    });
    dev.wait_for("httpd gone", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    dev.wait_for("cgroup removed", Duration::from_secs(10), || {
        !std::path::Path::new(&cg_dir("memory", &web_id, "httpd")).exists()
    });
}

#[test]
fn root_memory_hog_is_reported_oom_killed() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    let f = job_file(
        tmp.path(),
        "hog",
        r#"
name = "hog"
type = "batch"
[[group]]
name = "g"
restart = { attempts = 0, interval = "1m", delay = "1s", mode = "fail" }
reschedule = { attempts = 0 }
  [[group.task]]
  name = "hog"
  driver = "exec"
  command = ["/bin/sh", "-c", "head -c 300M /dev/zero | tail"]
  resources = { memory = "16MiB" }
"#,
    );
    assert!(dev
        .cli(&["job", "run", "--detach", f.to_str().unwrap()])
        .status
        .success());
    let allocs = wait_allocs(&dev, "hog", "hog failed", |a| {
        a.iter().any(|a| a.status.to_string() == "failed")
    });
    let t = &allocs[0].task_states["hog"];
    assert!(t.oom_killed, "task state: {t:?}");
    assert!(
        t.events.iter().any(|e| e.kind == "OOM Killed"),
        "events: {:?}",
        t.events
    );
}

#[test]
fn root_batch_exit_codes_and_restart_policy() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    let f = job_file(
        tmp.path(),
        "codes",
        r#"
name = "codes"
type = "batch"
[[group]]
name = "ok"
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sh", "-c", "echo done"]
[[group]]
name = "bad"
restart = { attempts = 2, interval = "1m", delay = "1s", mode = "fail" }
reschedule = { attempts = 0 }
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sh", "-c", "date +%s%N; exit 3"]
"#,
    );
    assert!(dev
        .cli(&["job", "run", "--detach", f.to_str().unwrap()])
        .status
        .success());
    let allocs = wait_allocs(&dev, "codes", "both groups finished", |a| {
        a.len() == 2 && a.iter().all(|a| a.status.is_terminal())
    });
    let ok = allocs.iter().find(|a| a.group == "ok").unwrap();
    let bad = allocs.iter().find(|a| a.group == "bad").unwrap();
    assert_eq!(ok.status.to_string(), "complete");
    assert_eq!(ok.task_states["t"].exit_code, Some(0));
    assert_eq!(bad.status.to_string(), "failed");
    let t = &bad.task_states["t"];
    assert_eq!(t.exit_code, Some(3));
    assert_eq!(t.restarts, 2, "{t:?}");
    assert_eq!(
        t.events.iter().filter(|e| e.kind == "Restarting").count(),
        2
    );
    assert!(t.events.iter().any(|e| e.kind == "Not Restarting"));
    // Each run printed its start time: the restarts waited at least the delay.
    let out = dev.cli(&["alloc", "logs", bad.id.as_str()]);
    let times: Vec<u128> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(times.len(), 3, "three runs expected: {times:?}");
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= 1_000_000_000,
            "restart came before its 1s delay: {times:?}"
        );
    }
    // Following a deployment whose allocation failed exits 1 and says which.
    let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed"), "{err}");
    // Reading the status of that job is not an error.
    assert!(dev.cli(&["job", "status", "codes"]).status.success());
}

#[test]
fn root_kill9_during_500_registrations_loses_nothing_and_keeps_containers() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let mut dev = Dev::start_on(tmp.path(), &[]);
    dev.import_busybox();
    let f = job_file(
        tmp.path(),
        "keep",
        r#"
name = "keep"
[[group]]
name = "g"
  [[group.task]]
  name = "sleeper"
  driver = "container"
  image = "busybox:latest"
  command = ["sleep", "100000"]
  resources = { memory = "16MiB" }
"#,
    );
    assert!(dev
        .cli(&["job", "run", f.to_str().unwrap()])
        .status
        .success());
    let allocs = wait_allocs(&dev, "keep", "keep running", |a| running(a, 1));
    let keep_id = allocs[0].id.to_string();
    let pid = allocs[0].task_states["sleeper"].pid.unwrap();

    // 500 registrations from 8 threads; kill -9 the server half way.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for t in 0..8 {
        let acked = acked.clone();
        let dev_client = dev.client.clone();
        threads.push(std::thread::spawn(move || {
            let c = dev_client.clone();
            for i in (t..500).step_by(8) {
                let name = format!("reg-{i:03}");
                // Constrained to no node: registrations only, nothing runs.
                let toml = format!(
                    "name = \"{name}\"\n[[group]]\nname = \"g\"\nconstraint = [{{ attribute = \"${{node.name}}\", value = \"nowhere\" }}]\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/true\"]\n"
                );
                match c.register_job_toml(toml.as_bytes()) {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // Poll finely: at a few thousand registrations a second, the second
    // half of the 500 takes well under a tenth of a second.
    let start = std::time::Instant::now();
    while acked.lock().unwrap().len() < 250 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 250 registrations in 60 s; log:\n{}",
            dev.log_tail()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    dev.kill9();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 250 && acked.len() < 500,
        "kill -9 came too late to test anything: {}",
        acked.len()
    );

    // The workload survived the kill.
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container died with taba dev"
    );

    let dev2 = Dev::start_on(tmp.path(), &[]);
    let jobs = dev2.client.list_jobs().unwrap();
    let mut names: Vec<&str> = jobs
        .iter()
        .map(|j| j.name.as_str())
        .filter(|n| n.starts_with("reg-"))
        .collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "a job is listed twice");
    for a in &acked {
        assert!(names.contains(&a.as_str()), "acknowledged job {a} lost");
    }
    // Every job has exactly one version: nothing was applied twice.
    for a in acked.iter().take(20) {
        assert_eq!(dev2.client.job_history(a).unwrap().versions.len(), 1);
    }
    // The container was re-adopted, not restarted.
    dev2.wait_for("keep re-adopted", Duration::from_secs(30), || {
        dev2.client.alloc(&keep_id).ok().is_some_and(|a| {
            a.status.to_string() == "running"
                && a.allocation.task_states["sleeper"].pid == Some(pid)
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    let a = dev2.client.alloc(&keep_id).unwrap();
    assert_eq!(a.allocation.task_states["sleeper"].restarts, 0);
    assert_eq!(a.allocation.task_states["sleeper"].pid, Some(pid));
    drop(dev2);
    drop(dev);
}

#[test]
fn root_cli_rejects_bad_job_files_with_position_and_field() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("syntax", "name = \"x\"\n[[group]\nname = \"g\"\n", "syntax.toml:2:"),
        ("memory", "name = \"x\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"true\"]\n  resources = { memory = \"lots\" }\n", "group[0].task[0].resources.memory"),
        ("driver", "name = \"x\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"docker\"\n  command = [\"true\"]\n", "group[0].task[0].driver"),
        ("image", "name = \"x\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"container\"\n  image = \"nope:1\"\n", "group[0].task[0].image"),
    ];
    for (name, body, needle) in cases {
        let f = job_file(tmp.path(), name, body);
        let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(needle),
            "{name}: {err:?} does not mention {needle}"
        );
    }
    // Non-UTF-8.
    let f = tmp.path().join("bin.toml");
    std::fs::write(&f, b"name = \"\xff\"\n").unwrap();
    let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
    // Usage errors exit 2.
    assert_eq!(dev.cli(&["job", "run"]).status.code(), Some(2));
    // Nothing was registered.
    assert!(dev.client.list_jobs().unwrap().is_empty());
}

#[test]
fn root_system_job_and_rolling_update_and_follow_logs() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    // A system job: one allocation per eligible node (here: n1).
    let sys = job_file(
        tmp.path(),
        "sys",
        r#"
name = "sys"
type = "system"
[[group]]
name = "g"
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sh", "-c", "exec sleep 1000"]
  resources = { memory = "16MiB" }
"#,
    );
    assert!(dev
        .cli(&["job", "run", sys.to_str().unwrap()])
        .status
        .success());
    let allocs = wait_allocs(&dev, "sys", "system alloc running", |a| running(a, 1));
    assert_eq!(allocs[0].node, "n1");

    // A service that prints its version; an update replaces it.
    let body = |v: &str| {
        format!(
            r#"
name = "upd"
update = {{ max_parallel = 1, min_healthy_time = "1s" }}
[[group]]
name = "g"
count = 2
restart = {{ attempts = 0, interval = "1m", delay = "1s", mode = "fail" }}
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sh", "-c", "echo version-$V; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done"]
  env = {{ V = "{v}" }}
  resources = {{ memory = "16MiB" }}
"#
        )
    };
    let f = job_file(tmp.path(), "upd", &body("one"));
    assert!(dev
        .cli(&["job", "run", f.to_str().unwrap()])
        .status
        .success());
    let v1 = wait_allocs(&dev, "upd", "v1 running", |a| running(a, 2));

    // `alloc logs -f` streams new output while the task runs.
    let mut follow = dev
        .cli_command(&["alloc", "logs", "-f", v1[0].id.as_str()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("tick-8") {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let seen = reader.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.contains("version-one") && seen.contains("tick-8"),
        "{seen}"
    );

    let f = job_file(tmp.path(), "upd", &body("two"));
    let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = wait_allocs(&dev, "upd", "v2 running", |a| {
        a.iter()
            .filter(|a| a.job_version == 1 && a.status.to_string() == "running")
            .count()
            == 2
            && a.iter()
                .filter(|a| a.job_version == 0)
                .all(|a| a.status.is_terminal())
    });
    let old: Vec<_> = after.iter().filter(|a| a.job_version == 0).collect();
    assert_eq!(old.len(), 2, "both old allocations were replaced");
    let hist = dev.cli(&["job", "history", "upd", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&hist.stdout).unwrap();
    assert_eq!(v["versions"].as_array().map(|a| a.len()), Some(2), "{v}");
    let new_id = after
        .iter()
        .find(|a| a.job_version == 1)
        .unwrap()
        .id
        .to_string();
    let logs = dev.cli(&["alloc", "logs", &new_id]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("version-two"));
}

#[test]
fn root_container_serves_on_its_static_port_and_a_second_job_waits_for_it() {
    use std::io::{Read, Write};
    const PORT: u16 = 18473;
    let dev = Dev::start();
    dev.import_busybox();
    let tmp = tempfile::tempdir().unwrap();
    let job = |name: &str| {
        format!(
            r#"
name = "{name}"
[[group]]
name = "web"
network = {{ mode = "host", ports = [{{ label = "http", static = {PORT} }}, {{ label = "metrics" }}] }}
  [[group.task]]
  name = "httpd"
  driver = "container"
  image = "busybox"
  command = ["sh", "-c", "mkdir -p /tmp/www && echo \"$TABA_PORT_http $TABA_HOST_PORT_http $TABA_ADDR_http $TABA_PORT_metrics\" > /tmp/www/index.html && exec httpd -f -p $TABA_PORT_http -h /tmp/www"]
  resources = {{ cpu = 100, memory = "64MiB" }}
"#
        )
    };
    let f = job_file(tmp.path(), "ports1", &job("ports1"));
    let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.log_tail()
    );
    let allocs = wait_allocs(&dev, "ports1", "ports1 running", |a| running(a, 1));
    let id = allocs[0].id.to_string();

    // The allocation records its ports; the CLI shows them.
    let out = dev.cli(&["--json", "alloc", "status", &id]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ports = v["allocation"]["ports"]
        .as_array()
        .expect("ports in --json");
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0]["label"], "http");
    assert_eq!(ports[0]["value"], PORT);
    assert_eq!(ports[0]["dynamic"], false);
    assert_eq!(ports[1]["label"], "metrics");
    assert_eq!(ports[1]["dynamic"], true);
    let metrics = ports[1]["value"].as_u64().unwrap();
    assert!((20000..=32000).contains(&metrics), "{metrics}");
    let human = String::from_utf8_lossy(&dev.cli(&["alloc", "status", &id]).stdout).to_string();
    assert!(
        human.contains(&format!(
            "Ports       = http={PORT} (static), metrics={metrics} (dynamic)"
        )),
        "{human}"
    );

    // The container listens in the host's network on the port it was told.
    let mut body = String::new();
    dev.wait_for("httpd answering", Duration::from_secs(30), || {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", PORT)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
            return false;
        }
        body.clear();
        s.read_to_string(&mut body).is_ok() && body.starts_with("HTTP/1.")
    });
    assert!(body.contains(" 200 "), "{body}");
    assert!(
        body.contains(&format!("{PORT} {PORT} 127.0.0.1:{PORT} {metrics}")),
        "{body}"
    );

    // A second job asking for the same static port stays pending and says why.
    let f = job_file(tmp.path(), "ports2", &job("ports2"));
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut status = serde_json::Value::Null;
    dev.wait_for("ports2 blocked", Duration::from_secs(30), || {
        let out = dev.cli(&["--json", "job", "status", "ports2"]);
        status = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["placement_failures"]["web"].is_string()
    });
    assert_eq!(
        status["placement_failures"]["web"],
        format!("port {PORT} in use on 1 of 1 nodes"),
        "{status}"
    );
    assert_eq!(status["status"], "pending", "{status}");
    assert!(
        status["allocations"].as_array().unwrap().is_empty(),
        "{status}"
    );
    // Once the first job's container has ended, its port is free and the
    // second job is placed on it.
    assert!(dev.cli(&["job", "stop", "ports1"]).status.success());
    let allocs = wait_allocs(&dev, "ports2", "ports2 running", |a| running(a, 1));
    let d = dev.client.alloc(allocs[0].id.as_str()).unwrap();
    assert_eq!(d.allocation.ports[0].value, PORT);
    // Clean up (the harness also waits for every workload to end).
    assert!(dev.cli(&["job", "stop", "ports2"]).status.success());
}

#[test]
fn root_namespace_quota_cli() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    let job = |ns: &str| {
        format!(
            "name = \"sleepy\"\nnamespace = \"{ns}\"\n[[group]]\nname = \"g\"\ncount = 3\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/sleep\", \"300\"]\n  resources = {{ cpu = 100, memory = \"64MiB\" }}\n"
        )
    };
    let f = job_file(tmp.path(), "sleepy", &job("team-a"));
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    // No such namespace yet: rejected, naming the field.
    let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("namespace"), "{}", stderr(&out));
    // Bad flag values are usage errors.
    let out = dev.cli(&["namespace", "apply", "team-a", "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dev.cli(&[
        "namespace",
        "apply",
        "team-a",
        "--memory",
        "1GiB",
        "--allocations",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Two of three placed; `job run` stops following with the quota reason.
    let out = dev.cli(&["job", "run", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("quota exceeded in namespace team-a: allocations 2 of 2 used"),
        "{}",
        stderr(&out)
    );
    let out = dev.cli(&["--json", "namespace", "status", "team-a"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["usage"]["allocations"], 2);
    assert_eq!(st["quota"]["memory"], "1GiB");
    let out = dev.cli(&["namespace", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("team-a") && text.contains("2/2"), "{text}");
    // In use: not removable.
    let out = dev.cli(&["namespace", "rm", "team-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("stop them first"), "{}", stderr(&out));
    // Raised: the third is placed.
    let out = dev.cli(&[
        "namespace",
        "apply",
        "team-a",
        "--memory",
        "1GiB",
        "--allocations",
        "3",
    ]);
    assert!(out.status.success());
    dev.wait_for("third placement", Duration::from_secs(30), || {
        dev.client
            .job_status_in("team-a", "sleepy")
            .is_ok_and(|s| s.allocations.len() == 3 && s.placement_failures.is_empty())
    });
    assert!(dev
        .cli(&["job", "stop", "-n", "team-a", "sleepy"])
        .status
        .success());
    let out = dev.cli(&["namespace", "rm", "team-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `user_namespace = "auto"`: each allocation's root is its own range of
/// unprivileged host ids (disjoint between the two), seen from the host in
/// /proc/PID/status; the image's layers are idmapped (root inside owns
/// them), what the container writes belongs to its range on the host, the
/// cgroup still holds the workload, and `alloc exec` enters the namespace.
#[test]
fn root_user_namespace_auto_maps_root_to_a_range_per_allocation() {
    use std::os::unix::fs::MetadataExt;
    let dev = Dev::start();
    dev.import_busybox();
    let tmp = tempfile::tempdir().unwrap();
    let job = job_file(
        tmp.path(),
        "uns",
        r#"
name = "uns"
[[group]]
name = "g"
count = 2
  [[group.task]]
  name = "c"
  driver = "container"
  image = "busybox"
  command = ["sh", "-c", "echo made > /made; exec sleep 1000"]
  user_namespace = "auto"
  resources = { cpu = 50, memory = "32MiB" }
"#,
    );
    let out = dev.cli(&["job", "run", "--detach", job.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let allocs = wait_allocs(&dev, "uns", "both running", |a| running(a, 2));
    let mut bases = Vec::new();
    for a in &allocs {
        let id = a.id.to_string();
        let pid = a.task_states["c"].pid.expect("running task has a pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(
            uids.iter().all(|u| *u == uids[0] && *u >= 1_000_000_000),
            "{uids:?}"
        );
        bases.push(uids[0]);
        let procs = read_cg("memory", &id, "c", "cgroup.procs");
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        let out = dev.cli(&[
            "alloc",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "id -u; stat -c %u /bin/busybox; cat /proc/self/uid_map",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let words: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(
            words,
            ["0", "0", "0", &uids[0].to_string(), "65536"],
            "{stdout}"
        );
        let made = dev
            .data
            .join(format!("agent/allocs/{id}/c/bundle/upper/made"));
        let md = std::fs::metadata(&made).unwrap_or_else(|e| panic!("{}: {e}", made.display()));
        assert_eq!((md.uid(), md.gid()), (uids[0], uids[0]));
    }
    assert!(
        bases[0].abs_diff(bases[1]) >= 65536,
        "ranges overlap: {bases:?}"
    );
    let out = dev.cli(&["job", "stop", "uns"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent killed (kill -9) while a container start has mounted its
/// rootfs and made its cgroup, before the task ran: after the next start
/// the allocation is recovered and, once stopped, leaves no mount under
/// the data dir and no cgroup behind.
#[test]
fn root_kill9_mid_start_leaves_no_mount_or_cgroup() {
    kill9_mid_start(false);
}

/// The same, when the agent's record of the allocation is lost too
/// (`alloc.json` gone): the next start sweeps the unknown allocation's
/// mount and cgroup before anything else, and says so in its log.
#[test]
fn root_kill9_mid_start_unknown_allocation_is_swept_at_start() {
    kill9_mid_start(true);
}

fn kill9_mid_start(forget_record: bool) {
    let tmp = tempfile::Builder::new()
        .prefix("taba-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let reached = tmp.path().join("hold.reached");
    let mut dev = Dev::start_with_env(
        tmp.path(),
        &[],
        &[("TABA_TEST_HOLD_START", hold.to_str().unwrap())],
    );
    dev.import_busybox();
    let f = job_file(
        tmp.path(),
        "mid",
        r#"
name = "mid"
[[group]]
name = "g"
  [[group.task]]
  name = "t"
  driver = "container"
  image = "busybox"
  command = ["sleep", "1000"]
  resources = { cpu = 50, memory = "32MiB" }
"#,
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.wait_for("start held", Duration::from_secs(60), || reached.exists());
    let id = std::fs::read_to_string(&reached).unwrap();
    let alloc_dir = tmp.path().join(format!("agent/allocs/{id}"));
    let mounts_under = |dir: &std::path::Path| -> Vec<String> {
        let dir = dir.to_str().unwrap().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .map(str::to_string)
            .collect()
    };
    // v1's hierarchies, or the v2 root (`root_v2_guest` runs this there).
    let cgroups = || -> Vec<String> {
        ["memory/", "pids/", "cpu/", "devices/", "freezer/", ""]
            .iter()
            .map(|c| format!("/sys/fs/cgroup/{c}taba/{id}"))
            .filter(|p| std::path::Path::new(p).exists())
            .collect()
    };
    // The moment of the crash: mount and cgroup made, no task yet.
    assert_eq!(
        mounts_under(&alloc_dir).len(),
        1,
        "{:?}",
        mounts_under(&alloc_dir)
    );
    assert!(!cgroups().is_empty());
    let procs = read_cg("memory", &id, "t", "cgroup.procs");
    assert!(procs.is_empty(), "the task must not have started: {procs}");
    dev.kill9();
    std::fs::remove_file(&hold).unwrap();
    if forget_record {
        std::fs::remove_file(alloc_dir.join("alloc.json")).unwrap();
    }

    let dev2 = Dev::start_on(tmp.path(), &[]);
    if forget_record {
        let log = std::fs::read_to_string(&dev2.log).unwrap();
        let swept: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(id.as_str()) && l.contains("leftover"))
            .collect();
        assert_eq!(swept.len(), 2, "cgroup and mounts swept, logged:\n{log}");
    }
    let out = dev2.cli(&["job", "stop", "mid"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev2.wait_for("leftovers gone", Duration::from_secs(60), || {
        mounts_under(&alloc_dir).is_empty() && cgroups().is_empty()
    });
    drop(dev2);
    drop(dev);
}
