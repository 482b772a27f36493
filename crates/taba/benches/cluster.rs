//! Cluster benchmarks on this machine, with the real binary (README of
//! BENCHMARKS.md has the command and the results):
//!
//! - durable job registrations per second (embedded store), 16 clients;
//! - one `job run` of 100 containers on one node: submission -> running,
//!   p50/p99 per container;
//! - idle RSS of `taba agent` and `taba server` as separate processes;
//! - `job run` -> one container running on an idle agent, through the real
//!   server-agent path (`taba dev --agents 1`: server and agent processes,
//!   the agent in its own network namespace), p50/p99 of 20.
//!
//! Run: `cargo bench -p taba --bench cluster` (root; needs the busybox image).
//! `TABA_BENCH=one-container` (or `hundred`, `registrations`, `idle-rss`)
//! runs only that one.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_types::now_ms;

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn registrations(dev: &Dev) {
    let total = 4000;
    let clients = 16;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let next = next.clone();
            let addr = dev.addr.clone();
            std::thread::spawn(move || {
                let c = taba_client::Client::new(&addr, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let toml = format!(
                        "name = \"bench-{i}\"\n[[group]]\nname = \"g\"\nconstraint = [{{ attribute = \"${{node.name}}\", value = \"nowhere\" }}]\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/true\"]\n"
                    );
                    c.register_job_toml(toml.as_bytes()).expect("registration");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "registrations: {total} durable job registrations from {clients} clients in {secs:.2}s = {:.0}/s",
        total as f64 / secs
    );
    for i in 0..total {
        let _ = dev.client.stop_job(&format!("bench-{i}"));
    }
}

fn hundred_containers(dev: &Dev) {
    dev.import_busybox();
    let toml = r#"
name = "hundred"
[[group]]
name = "g"
count = 100
  [[group.task]]
  name = "sleeper"
  driver = "container"
  image = "busybox:latest"
  command = ["sleep", "100000"]
  resources = { cpu = 10, memory = "8MiB" }
"#;
    let submitted = now_ms();
    let t0 = Instant::now();
    dev.client
        .register_job_toml(toml.as_bytes())
        .expect("register");
    let mut allocs = Vec::new();
    while t0.elapsed() < Duration::from_secs(120) {
        allocs = dev.client.job_status("hundred").unwrap().allocations;
        if allocs
            .iter()
            .filter(|a| a.status.to_string() == "running")
            .count()
            == 100
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = t0.elapsed();
    let mut lat: Vec<u64> = allocs
        .iter()
        .filter_map(|a| a.task_states.get("sleeper")?.started_at)
        .map(|s| s.saturating_sub(submitted))
        .collect();
    lat.sort();
    println!(
        "100 containers: {} running; submission->running per container p50={}ms p99={}ms max={}ms; all running after {:.2}s",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
        all.as_secs_f64()
    );
    dev.client.stop_job("hundred").unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let s = dev.client.job_status("hundred").unwrap();
        if s.allocations.iter().all(|a| a.status.is_terminal()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn idle_rss() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let scfg = tmp.path().join("server.toml");
    std::fs::write(
        &scfg,
        format!(
            "data_dir = \"{}/server\"\nhttp = \"127.0.0.1:{port}\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let acfg = tmp.path().join("agent.toml");
    std::fs::write(
        &acfg,
        format!(
            "data_dir = \"{0}/agent\"\nserver = \"http://127.0.0.1:{port}\"\nhttp = \"127.0.0.1:0\"\nname = \"rss\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    let mut server = Command::new(taba_bin())
        .args(["server", "--config"])
        .arg(&scfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = Command::new(taba_bin())
        .args(["agent", "--config"])
        .arg(&acfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = taba_client::Client::new(&format!("http://127.0.0.1:{port}"), None);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if c.list_nodes().ok().is_some_and(|n| !n.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Idle: registered, heartbeating, nothing to run.
    std::thread::sleep(Duration::from_secs(10));
    println!(
        "idle RSS: agent {} KiB, server {} KiB",
        rss_kib(agent.id()),
        rss_kib(server.id())
    );
    let _ = agent.kill();
    let _ = server.kill();
    let _ = agent.wait();
    let _ = server.wait();
}

/// `job run` of one container -> running on an idle agent, `runs` times:
/// submission to the task's `started_at` (the agent's clock, this host) and
/// to the API reporting it running (what `job run` waits for).
fn one_container(runs: usize) {
    let c = DevCluster::start(1, &["--no-rebalance"]);
    c.import_busybox();
    let mut started = Vec::new();
    let mut observed = Vec::new();
    let mut cli = Vec::new();
    for i in 0..runs * 2 {
        let name = format!("one-{i}");
        let toml = format!(
            "name = \"{name}\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"container\"\n  image = \"busybox:latest\"\n  command = [\"sleep\", \"100000\"]\n  resources = {{ cpu = 10, memory = \"8MiB\" }}\n"
        );
        if i % 2 == 1 {
            // Every other run through the CLI: `taba job run` returns once
            // the deployment runs.
            let f = job_file(&c.data, &name, &toml);
            let t0 = Instant::now();
            let out = c.cli(&["job", "run", f.to_str().unwrap()]);
            cli.push(t0.elapsed().as_millis() as u64);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stop_and_wait(&c, &name);
            continue;
        }
        let submitted = now_ms();
        let t0 = Instant::now();
        c.client
            .register_job_toml(toml.as_bytes())
            .expect("register");
        let mut start_ms = None;
        while t0.elapsed() < Duration::from_secs(30) {
            let s = c.client.job_status(&name).unwrap();
            if let Some(a) = s
                .allocations
                .iter()
                .find(|a| a.status.to_string() == "running")
            {
                start_ms = a.task_states.get("t").and_then(|t| t.started_at);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        observed.push(t0.elapsed().as_millis() as u64);
        started.push(
            start_ms
                .expect("running within 30 s")
                .saturating_sub(submitted),
        );
        stop_and_wait(&c, &name);
    }
    started.sort();
    observed.sort();
    cli.sort();
    println!(
        "one container on an idle agent ({runs} runs): submission->started p50={}ms p99={}ms max={}ms; \
         submission->API says running p50={}ms p99={}ms max={}ms; `taba job run` until running p50={}ms p99={}ms max={}ms",
        pct(&started, 0.5),
        pct(&started, 0.99),
        started.last().copied().unwrap_or(0),
        pct(&observed, 0.5),
        pct(&observed, 0.99),
        observed.last().copied().unwrap_or(0),
        pct(&cli, 0.5),
        pct(&cli, 0.99),
        cli.last().copied().unwrap_or(0),
    );
}

/// Stop `job` and wait until its allocations are gone, so the agent is idle.
fn stop_and_wait(c: &DevCluster, job: &str) {
    c.client.stop_job(job).unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        let s = c.client.job_status(job).unwrap();
        if s.allocations.iter().all(|a| a.status.is_terminal()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted. TABA_BENCH
    // picks one benchmark.
    let only = std::env::var("TABA_BENCH").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // Each on a fresh cluster, so one's leftover evaluations do not queue
    // ahead of the other's.
    if run("hundred") {
        let dev = Dev::start();
        hundred_containers(&dev);
    }
    if run("registrations") {
        let dev = Dev::start();
        registrations(&dev);
    }
    if run("idle-rss") {
        idle_rss();
    }
    if run("one-container") {
        one_container(20);
    }
}
