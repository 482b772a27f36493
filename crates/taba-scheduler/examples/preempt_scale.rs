//! How long preemption takes on a full cluster:
//! `cargo run --release -p taba-scheduler --example preempt_scale -- NODES COUNT`.
//!
//! Fills NODES synthetic nodes with a priority-20 batch job, then schedules a
//! priority-80 service of COUNT allocations that fits only by evicting, and
//! prints the time of that one scheduling pass and what it evicted.

use std::time::Instant;
use taba_scheduler::{apply_plan, schedule, sim, verify_plan, ClusterState};
use taba_types::{DesiredStatus, EvalStatus, EvalTrigger, Evaluation, Job, JobSpec, JobStatus};

fn job(name: &str, job_type: &str, priority: u32, count: u64, cpu: u64, mem_mib: u64) -> Job {
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": name, "type": job_type, "priority": priority,
        "group": [{"name": "g", "count": count, "task": [{"name": "t", "driver": "exec",
            "command": ["/bin/true"], "resources": {"cpu": cpu, "memory": format!("{mem_mib}MiB")}}]}]
    }))
    .expect("valid job");
    Job {
        spec,
        version: 0,
        status: JobStatus::Pending,
        stopped: false,
        submit_time: 0,
        create_index: 0,
        modify_index: 0,
    }
}

fn eval(j: &Job) -> Evaluation {
    Evaluation {
        id: taba_types::EvalId(taba_scheduler::ids::IdStream::new(&j.spec.name, 0).next_uuid()),
        namespace: j.spec.namespace.clone(),
        job: j.spec.name.clone(),
        job_type: j.spec.job_type,
        priority: j.spec.priority,
        triggered_by: EvalTrigger::JobRegister,
        node_id: None,
        status: EvalStatus::Pending,
        status_description: String::new(),
        failed_groups: Default::default(),
        queued: Default::default(),
        wait_until: None,
        previous_eval: None,
        create_time: 0,
        create_index: 0,
        modify_index: 0,
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (nodes, count) = (num(1, 10_000) as u32, num(2, 100));
    let mut s = ClusterState::new();
    let (mut cpu, mut mem) = (0u64, 0u64);
    for i in 0..nodes {
        let n = sim::synthetic_node(1, i);
        let r = n.allocatable();
        cpu += r.cpu;
        mem += r.memory.0 >> 20;
        s.upsert_node(n);
    }
    // Small batch allocations, enough to fill every node.
    let fill = job(
        "fill",
        "batch",
        20,
        (cpu / 250).max(mem / 256) + 1,
        250,
        256,
    );
    s.upsert_job(fill.clone());
    let t = Instant::now();
    let o = schedule(&s, &eval(&fill), 0);
    apply_plan(&mut s, &o.plan, 2);
    eprintln!(
        "filled: {} batch allocations in {:.2}s",
        o.plan.placements.len(),
        t.elapsed().as_secs_f64()
    );
    let web = job("web", "service", 80, count, 1000, 1024);
    s.upsert_job(web.clone());
    let t = Instant::now();
    let o = schedule(&s, &eval(&web), 0);
    let took = t.elapsed().as_secs_f64();
    verify_plan(&s, &o.plan).expect("plan verifies");
    let evicted = o
        .plan
        .stops
        .iter()
        .filter(|st| st.desired_status == DesiredStatus::Evict)
        .count();
    println!(
        "nodes={nodes} placed={} evicted={evicted} status={} seconds={took:.3}",
        o.plan.placements.len(),
        o.status
    );
}
