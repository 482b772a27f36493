//! Node drains in a real server, with agents (fake ones over real HTTP)
//! that report their allocations running or complete when the test says:
//! batches of `migrate.max_parallel` each waiting for its replacements to
//! run, the deadline, cancelling, system jobs last or left alone, batch jobs
//! left to finish, and a server restart in the middle of a drain.

mod common;

use common::{eventually, FakeAgent, TestServer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use taba_client::api::{DrainRequest, DrainStatus};
use taba_client::Client;
use taba_store::{RedbStore, Store};
use taba_types::{Allocation, ClientStatus, DesiredStatus, DurationSpec};

fn service(name: &str, count: u32, max_parallel: u32) -> String {
    format!(
        r#"
name = "{name}"
[[group]]
name = "g"
count = {count}
migrate = {{ max_parallel = {max_parallel}, min_healthy_time = "0s" }}
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "1000"]
  resources = {{ cpu = 100, memory = "64MiB" }}
"#
    )
}

fn with_type(job: &str, job_type: &str) -> String {
    job.replacen('\n', &format!("\ntype = \"{job_type}\"\n"), 1)
}

fn server(dir: &Path, store: Arc<dyn Store>) -> TestServer {
    TestServer::start_configured(dir, store, |c| {
        c.heartbeat_ttl = Duration::from_secs(5);
        c.drain_interval = Duration::from_millis(50);
        c.rebalance.enabled = false;
    })
}

fn open_store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.join("state.redb")).unwrap())
}

fn drain(c: &Client, node: &str, deadline: &str, ignore_system: bool) -> DrainStatus {
    let req = DrainRequest {
        disable: false,
        deadline: Some(DurationSpec::parse(deadline).unwrap()),
        ignore_system,
    };
    c.drain_node(node, &req).expect("drain accepted")
}

/// The allocations the agent should run (desired run, not terminal).
fn live(agent: &FakeAgent) -> Vec<Allocation> {
    agent
        .allocs(0)
        .1
        .into_iter()
        .filter(|a| a.desired_status == DesiredStatus::Run && !a.client_status.is_terminal())
        .collect()
}

/// Run `job` with every allocation on `agent` (the only node so far), running.
fn place_all_on(c: &Client, agent: &FakeAgent, job: &str, count: usize) {
    c.register_job_toml(job.as_bytes()).unwrap();
    eventually("placed", || (live(agent).len() >= count).then_some(()));
    agent.converge();
}

#[test]
fn a_service_drains_in_batches_of_max_parallel_each_waiting_for_its_replacements() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), open_store(dir.path()));
    let c = srv.client();
    let n1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    place_all_on(&c, &n1, &service("web", 6, 2), 6);
    let n2 = FakeAgent::register(c.clone(), common::node("n2", 4096));

    let st = drain(&c, "n1", "1h", false);
    assert!(!st.eligible && st.strategy.is_some());
    let mut batches = Vec::new();
    for round in 0..4 {
        let on_n2 = eventually("the next batch placed", || {
            let l = live(&n2);
            (l.len() > batches.iter().sum::<usize>() || l.len() == 6).then_some(l)
        });
        let new = on_n2.len() - batches.iter().sum::<usize>();
        if new == 0 {
            break;
        }
        batches.push(new);
        // The batch is not running yet: nothing more moves meanwhile.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            live(&n2).len(),
            on_n2.len(),
            "round {round}: waits for its replacements"
        );
        let st = c.drain_status("n1").unwrap();
        assert_eq!(st.starting as usize, new, "{st:?}");
        assert_eq!(st.left as usize, 6 - on_n2.len(), "{st:?}");
        assert!(!st.done);
        n2.converge();
        n1.converge();
    }
    assert_eq!(batches, [2, 2, 2]);
    let st = eventually("drain complete", || {
        let st = c.drain_status("n1").unwrap();
        st.done.then_some(st)
    });
    assert!(!st.eligible, "a drained node stays ineligible");
    assert!(st.strategy.is_none() && st.left == 0);
    assert!(live(&n1).is_empty());
    for a in n1.allocs(0).1 {
        assert_eq!(a.desired_status, DesiredStatus::Stop);
        assert!(
            a.desired_description.contains("node drain"),
            "{}",
            a.desired_description
        );
    }
    let detail = c.node("n1").unwrap();
    assert!(detail.drain.is_none() && detail.node.drained_at.is_some());
}

#[test]
fn the_deadline_stops_what_is_left_and_batch_jobs_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), open_store(dir.path()));
    let c = srv.client();
    let n1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    // Two services with nowhere to go (one node), and a batch job that
    // would be left to finish.
    place_all_on(&c, &n1, &service("web", 2, 1), 2);
    place_all_on(&c, &n1, &with_type(&service("crunch", 1, 1), "batch"), 3);

    drain(&c, "n1", "1s", false);
    let st = c.drain_status("n1").unwrap();
    assert_eq!(st.left, 3, "{st:?}");
    let batch = st.groups.iter().find(|g| g.job == "crunch").unwrap();
    assert_eq!(batch.waiting, 0, "batch allocations are not moved");
    let st = eventually("deadline reached", || {
        let st = c.drain_status("n1").unwrap();
        st.done.then_some(st)
    });
    assert_eq!(st.left, 0);
    let all = n1.allocs(0).1;
    assert_eq!(all.len(), 3);
    for a in &all {
        assert_eq!(a.desired_status, DesiredStatus::Stop, "{}", a.name);
        assert_eq!(a.desired_description, "node drain deadline reached");
    }
}

#[test]
fn disable_cancels_the_drain_and_makes_the_node_eligible() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), open_store(dir.path()));
    let c = srv.client();
    let n1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    place_all_on(&c, &n1, &service("web", 1, 1), 1);
    drain(&c, "n1", "1h", false);
    // Nowhere to go: the move waits (blocked), the allocation keeps running.
    let st = eventually("the move is asked for", || {
        let st = c.drain_status("n1").unwrap();
        (st.groups.first()?.waiting == 1).then_some(st)
    });
    assert_eq!(st.left, 1);
    assert!(c.node("n1").unwrap().drain.is_some());
    // Nothing new is placed on a draining node.
    c.register_job_toml(service("more", 1, 1).as_bytes())
        .unwrap();
    eventually("the new job's evaluation is blocked", || {
        let e = c.job_status("more").unwrap().latest_eval?;
        (e.status == taba_types::EvalStatus::Blocked).then_some(())
    });
    assert_eq!(live(&n1).len(), 1);

    let st = c
        .drain_node(
            "n1",
            &DrainRequest {
                disable: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(st.eligible && st.strategy.is_none() && !st.done, "{st:?}");
    let a = live(&n1).into_iter().find(|a| a.job == "web").unwrap();
    assert!(a.migrate.is_none(), "the waiting move is withdrawn");
    assert_eq!(a.client_status, ClientStatus::Running);
    // The blocked job lands on it now.
    eventually("placed on the node again", || {
        (live(&n1).len() == 2).then_some(())
    });
}

#[test]
fn system_allocations_are_stopped_last_or_left_with_ignore_system() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), open_store(dir.path()));
    let c = srv.client();
    let n1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    place_all_on(&c, &n1, &service("web", 1, 1), 1);
    let n2 = FakeAgent::register(c.clone(), common::node("n2", 4096));
    c.register_job_toml(with_type(&service("agentd", 1, 1), "system").as_bytes())
        .unwrap();
    eventually("system job on both", || {
        (live(&n1).len() == 2 && live(&n2).len() == 1).then_some(())
    });
    n1.converge();
    n2.converge();

    drain(&c, "n1", "1h", false);
    eventually("the service's replacement placed", || {
        live(&n2).iter().any(|a| a.job == "web").then_some(())
    });
    // Its replacement does not run yet: the system allocation stays.
    std::thread::sleep(Duration::from_millis(400));
    let on_n1 = live(&n1);
    assert_eq!(on_n1.len(), 1, "{on_n1:?}");
    assert_eq!(on_n1[0].job, "agentd");
    n2.converge();
    n1.converge();
    eventually("drain complete", || {
        c.drain_status("n1").unwrap().done.then_some(())
    });
    let sys = n1
        .allocs(0)
        .1
        .into_iter()
        .find(|a| a.job == "agentd")
        .unwrap();
    assert_eq!(sys.desired_status, DesiredStatus::Stop);
    assert_eq!(sys.desired_description, "node drained");

    // n2 with ignore_system: the web allocation has nowhere to go (n1 is
    // ineligible), so only the system allocation is on n2 when it is drained.
    c.stop_job("web").unwrap();
    n2.converge();
    eventually("web stopped", || (live(&n2).len() == 1).then_some(()));
    drain(&c, "n2", "1h", true);
    eventually("drain complete", || {
        c.drain_status("n2").unwrap().done.then_some(())
    });
    let left = live(&n2);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].job, "agentd");
    assert!(left[0].desired_description.is_empty());
}

#[test]
fn a_server_restart_in_the_middle_of_a_drain_carries_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), open_store(dir.path()));
    let c = srv.client();
    let n1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    place_all_on(&c, &n1, &service("web", 4, 1), 4);
    let n2 = FakeAgent::register(c.clone(), common::node("n2", 4096));
    drain(&c, "n1", "1h", false);
    eventually("the first move", || (live(&n2).len() == 1).then_some(()));
    let store = srv.stop();

    let srv = server(dir.path(), store);
    let c = srv.client();
    let st = c.drain_status("n1").unwrap();
    assert!(st.strategy.is_some() && !st.eligible, "{st:?}");
    assert_eq!(st.starting, 1, "{st:?}");
    let n1 = FakeAgent::reregister(c.clone(), n1);
    let n2 = FakeAgent::reregister(c.clone(), n2);
    let st = eventually("drain complete after the restart", || {
        n2.converge();
        n1.converge();
        let st = c.drain_status("n1").unwrap();
        st.done.then_some(st)
    });
    assert!(!st.eligible);
    assert_eq!(live(&n2).len(), 4);
    assert!(live(&n1).is_empty());
}

#[test]
fn a_node_that_goes_down_while_draining_completes_its_drain() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_configured(dir.path(), open_store(dir.path()), |c| {
        c.heartbeat_ttl = Duration::from_millis(600);
        c.drain_interval = Duration::from_millis(50);
    });
    let c = srv.client();
    let mut n1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    place_all_on(&c, &n1, &service("web", 2, 1), 2);
    drain(&c, "n1", "1h", false);
    eventually("moves asked for", || {
        (c.drain_status("n1").unwrap().groups.first()?.waiting == 2).then_some(())
    });
    let n2 = FakeAgent::register(c.clone(), common::node("n2", 4096));
    n1.stop_heartbeats();
    let st = eventually("drain complete", || {
        let st = c.drain_status("n1").unwrap();
        st.done.then_some(st)
    });
    assert_eq!(st.status, taba_types::NodeStatus::Down);
    for a in n1.allocs(0).1 {
        assert!(a.client_status == ClientStatus::Lost || a.desired_status == DesiredStatus::Stop);
    }
    eventually("both run on n2", || {
        n2.converge();
        (live(&n2).len() == 2).then_some(())
    });
}
