//! Preemption through the real server over HTTP: a full node running a
//! low-priority batch job takes a high-priority service; a batch allocation
//! is evicted with the reason visible over the API, and the batch job's new
//! evaluation waits, blocked, saying why.

mod common;

use common::*;
use std::time::Duration;
use taba_types::{ClientStatus, DesiredStatus, EvalStatus};

fn job(name: &str, job_type: &str, priority: u32, count: u32, memory: &str) -> String {
    format!(
        r#"
name = "{name}"
type = "{job_type}"
priority = {priority}
[[group]]
name = "g"
count = {count}
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "1000"]
  resources = {{ cpu = 100, memory = "{memory}" }}
"#
    )
}

#[test]
fn high_priority_service_evicts_low_priority_batch_on_a_full_node() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 1024));

    // The batch job fills the node.
    c.register_job_toml(job("crunch", "batch", 20, 4, "256MiB").as_bytes())
        .unwrap();
    eventually("4 batch placements", || {
        let (_, a) = agent.allocs(0);
        (a.len() == 4).then_some(())
    });
    agent.converge();

    // The service does not fit; it evicts one batch allocation.
    c.register_job_toml(job("web", "service", 70, 1, "256MiB").as_bytes())
        .unwrap();
    let web = eventually("the service placed", || {
        let st = c.job_status("web").unwrap();
        st.allocations.into_iter().next()
    });
    let web = c.alloc(web.id.as_str()).unwrap().allocation;
    assert_eq!(web.node_id, agent.node.id);
    assert_eq!(web.preempted_allocs.len(), 1);
    let evicted = c.alloc(web.preempted_allocs[0].as_str()).unwrap();
    assert_eq!(evicted.job, "crunch");
    assert_eq!(evicted.desired_status, DesiredStatus::Evict);
    assert_eq!(
        evicted.allocation.desired_description,
        "preempted by job web (priority 70) for allocation web.g[0]"
    );
    assert_eq!(evicted.allocation.preempted_by.as_ref(), Some(&web.id));
    // The agent sees the eviction like any stop.
    let (_, on_node) = agent.allocs(0);
    assert!(on_node
        .iter()
        .any(|a| a.id == evicted.id && a.desired_status == DesiredStatus::Evict));

    // The batch job was evaluated again; the cluster is full and batch does
    // not preempt: its evaluation is blocked and says why.
    let st = eventually("the batch job's evaluation blocked", || {
        let st = c.job_status("crunch").unwrap();
        let blocked = st
            .latest_eval
            .as_ref()
            .is_some_and(|e| e.status == EvalStatus::Blocked);
        blocked.then_some(st)
    });
    let e = st.latest_eval.as_ref().unwrap();
    assert!(
        e.description
            .contains("the job's allocations were preempted by higher-priority work"),
        "{}",
        e.description
    );
    assert_eq!(e.queued.get("g"), Some(&1));
    let why = &st.placement_failures["g"];
    assert!(why.contains("memory exhausted on 1 of 1 nodes"), "{why}");
    // Three batch allocations keep running.
    let running = st
        .allocations
        .iter()
        .filter(|a| a.desired_status == DesiredStatus::Run)
        .count();
    assert_eq!(running, 3);

    // The agent stops the evicted allocation; the freed room goes to the
    // service, so the re-run batch evaluation stays blocked.
    agent.converge();
    eventually("evicted allocation complete", || {
        let a = c.alloc(evicted.id.as_str()).unwrap();
        (a.status == ClientStatus::Complete).then_some(())
    });
    let st = eventually("still blocked after the re-run", || {
        let st = c.job_status("crunch").unwrap();
        st.latest_eval
            .as_ref()
            .is_some_and(|e| e.status == EvalStatus::Blocked)
            .then_some(st)
    });
    assert_eq!(
        st.allocations
            .iter()
            .filter(|a| a.desired_status == DesiredStatus::Run)
            .count(),
        3
    );
}
