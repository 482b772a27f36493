//! Node failure -> replacements running elsewhere, with the real binary and
//! default settings (heartbeat TTL 5 s, grace 2 s): one `taba server` and
//! two `taba agent` processes on loopback. Each run kills (kill -9) the
//! agent that holds a 4-allocation service job and times until the 4
//! replacements' task shims run on the other node; the killed agent is
//! then restarted, its returning workloads are stopped as duplicates, and
//! the next run kills the other agent. Target: <= 10 s.
//!
//! Run: `cargo bench -p taba --bench failover` (root). BENCHMARKS.md has
//! the results.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

const RUNS: usize = 10;
const COUNT: usize = 4;

const JOB: &str = r#"
name = "failover"
[[group]]
name = "g"
count = 4
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "100000"]
  kill_timeout = "1s"
  resources = { cpu = 50, memory = "16MiB" }
"#;

fn main() {
    let mut c = Cluster::start("");
    let url = c.url.clone();
    c.start_agent("n1", &url);
    c.start_agent("n2", &url);
    // Everything on n1 first.
    let out = c.cli(&["node", "eligibility", "n2", "--disable"]);
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = job_file(dir.path(), "failover", JOB);
    let out = c.cli(&["job", "run", "--detach", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    c.wait_for("4 running on n1", Duration::from_secs(60), || {
        c.job_running_on("failover", "n1").len() == COUNT
    });
    let out = c.cli(&["node", "eligibility", "n2", "--enable"]);
    assert!(out.status.success(), "{out:?}");

    let mut times = Vec::new();
    let (mut from, mut to) = ("n1", "n2");
    for run in 1..=RUNS {
        // A random phase against the heartbeats, as a real failure has.
        std::thread::sleep(Duration::from_millis(300 + (run as u64 * 397) % 1700));
        c.kill_agent(from);
        let t0 = Instant::now();
        c.wait_for("replacements running", Duration::from_secs(60), || {
            c.job_running_on("failover", to).len() == COUNT
        });
        let took = t0.elapsed();
        eprintln!(
            "run {run}: agent {from} killed -> {COUNT} replacements running on {to}: {took:.2?}"
        );
        times.push(took);
        // Bring the killed agent back: its returning workloads are stopped.
        c.start_agent(from, &url);
        c.wait_for("duplicates stopped", Duration::from_secs(60), || {
            c.job_running_on("failover", from).is_empty()
                && c.job_running_on("failover", to).len() == COUNT
        });
        std::mem::swap(&mut from, &mut to);
    }
    times.sort();
    let median = (times[RUNS / 2 - 1] + times[RUNS / 2]) / 2;
    println!(
        "node failure -> {COUNT} replacements running, {RUNS} runs, default settings: \
         median {median:.2?}, min {:.2?}, max {:.2?} (target <= 10 s)",
        times[0],
        times[RUNS - 1]
    );
}
