//! Leader failover with etcd: three `taba server`s on a 3-member etcd (loopback, Debian's
//! etcd with `--heartbeat-interval=50 --election-timeout=250`), one agent; the leader is
//! killed with SIGKILL and the time until a job submitted right after is scheduled (has an
//! allocation placed on the node) is measured, over several runs. The killed server is
//! restarted (as a follower) before the next run. Target: <= 5 s (BENCHMARKS.md).
//!
//! Run: `cargo bench -p taba --bench leader_failover` (root; `TABA_BENCH_RUNS`, default 7).

#[path = "../tests/common/mod.rs"]
mod common;

use common::ha::{HaCluster, LEASE_TTL};
use std::time::{Duration, Instant};

fn job(name: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"service\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/sleep\", \"600\"]\n  resources = {{ cpu = 10, memory = \"16MiB\" }}\n"
    )
}

/// Kills the leader, submits a job until acknowledged, waits until it is placed; returns
/// (kill -> acknowledged, kill -> placed).
fn one_run(cluster: &mut HaCluster, run: usize) -> (Duration, Duration) {
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let name = format!("failover{run}");
    let spec = job(&name);
    let t0 = Instant::now();
    cluster.servers[leader].kill9();
    let clients = cluster.clients();
    let acked = loop {
        if clients
            .iter()
            .any(|c| c.register_job_toml(spec.as_bytes()).is_ok())
        {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no server took the job"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let placed = loop {
        if clients
            .iter()
            .any(|c| c.job_status(&name).is_ok_and(|s| !s.allocations.is_empty()))
        {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "job never placed");
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.restart_server(leader);
    cluster.wait_for("restarted server serving", Duration::from_secs(30), |c| {
        c.servers[leader]
            .leader_status()
            .is_some_and(|s| !s["leader"].is_null())
    });
    (acked, placed)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("TABA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut cluster = HaCluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = (0..3).find(|&n| n != leader).unwrap();
    cluster.add_agent("n1", follower);
    let mut placed = Vec::new();
    for run in 0..runs {
        let (acked, took) = one_run(&mut cluster, run);
        println!(
            "run {run}: acknowledged after {:.2} s, scheduled after {:.2} s",
            acked.as_secs_f64(),
            took.as_secs_f64()
        );
        placed.push(took);
    }
    placed.sort();
    let median = placed[placed.len() / 2];
    let max = placed[placed.len() - 1];
    println!(
        "leader failover (lease_ttl {LEASE_TTL}), kill -9 leader -> new job scheduled, {runs} runs: median {:.2} s, max {:.2} s (target <= 5 s)",
        median.as_secs_f64(),
        max.as_secs_f64()
    );
}
