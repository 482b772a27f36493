//! The server end to end over HTTP: job lifecycle with a fake agent, rolling
//! updates, jobs that do not fit, node failure, restart on the same data dir,
//! and the OpenAPI document against the real routes.

mod common;

use common::*;
use std::time::Duration;
use taba_types::{AllocId, Allocation, ClientStatus, DesiredStatus, JobStatus, NodeStatus};

#[test]
fn register_place_run_update_stop() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 4096));

    let reply = c
        .register_job_toml(exec_job("web", 2, "100", "64MiB").as_bytes())
        .unwrap();
    assert_eq!(reply.version, 0);
    assert!(reply.changed);

    // Placement shows up in the node's blocking query.
    let allocs = eventually("2 placements", || {
        let (_, a) = agent.allocs(0);
        (a.len() == 2).then_some(a)
    });
    assert!(allocs.iter().all(|a| a.node_id == agent.node.id));
    let st = c.job_status("web").unwrap();
    assert_eq!(st.status, JobStatus::Pending);
    assert_eq!(st.allocations.len(), 2);
    assert!(st.allocations.iter().all(|a| a.node == "n1"));

    // The agent's own status reports do not wake its blocking query: it
    // waits out its wait time and returns the same index.
    let (index, _) = agent.allocs(0);
    for a in &allocs {
        agent.report(a, ClientStatus::Running);
    }
    let (after, _) = agent.allocs(index);
    assert_eq!(after, index);
    let st = c.job_status("web").unwrap();
    assert_eq!(st.status, JobStatus::Running);
    assert!(st
        .allocations
        .iter()
        .all(|a| a.status == ClientStatus::Running
            && a.task_states["t"].state == taba_types::TaskStatus::Running));

    // The same spec again: no new version.
    let again = c
        .register_job_toml(exec_job("web", 2, "100", "64MiB").as_bytes())
        .unwrap();
    assert_eq!(again.version, 0);
    assert!(!again.changed);

    // A changed spec: version 1, allocations replaced one at a time.
    let upd = c
        .register_job_toml(exec_job("web", 2, "200", "64MiB").as_bytes())
        .unwrap();
    assert_eq!(upd.version, 1);
    assert!(upd.changed);
    eventually("rolling update to finish", || {
        agent.converge();
        let st = c.job_status("web").unwrap();
        let new_running = st
            .allocations
            .iter()
            .filter(|a| {
                a.job_version == 1
                    && a.status == ClientStatus::Running
                    && a.desired_status == DesiredStatus::Run
            })
            .count();
        let old_live = st
            .allocations
            .iter()
            .filter(|a| a.job_version == 0 && a.desired_status == DesiredStatus::Run)
            .count();
        (new_running == 2 && old_live == 0).then_some(())
    });
    let hist = c.job_history("web").unwrap();
    assert_eq!(
        hist.versions.iter().map(|j| j.version).collect::<Vec<_>>(),
        vec![1, 0]
    );

    // Stop: every allocation is told to stop; the job is dead. A server-side
    // change wakes the agent's blocking query with a higher index.
    let (before_stop, _) = agent.allocs(0);
    let waiter = {
        let agent_client = agent.client.clone();
        let node = agent.node.id.clone();
        std::thread::spawn(move || {
            agent_client
                .agent_allocations(&node, before_stop, std::time::Duration::from_secs(20))
                .expect("blocking query")
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    c.stop_job("web").unwrap();
    let woken = waiter.join().unwrap();
    assert!(woken.index > before_stop);
    assert!(woken
        .allocs
        .iter()
        .any(|a| a.desired_status != DesiredStatus::Run));
    eventually("allocations stopped", || {
        let st = c.job_status("web").unwrap();
        st.allocations
            .iter()
            .all(|a| a.desired_status != DesiredStatus::Run)
            .then_some(())
    });
    assert_eq!(c.job_status("web").unwrap().status, JobStatus::Dead);
    let list = c.list_jobs().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, JobStatus::Dead);

    // Alloc lookup by unique prefix.
    let a = &allocs[0];
    let got = c.alloc(&a.id.as_str()[..8]).unwrap();
    assert_eq!(got.id, a.id);
    assert_eq!(got.node, "n1");
}

#[test]
fn job_that_does_not_fit_stays_pending_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let _agent = FakeAgent::register(c.clone(), node("n1", 1024));
    c.register_job_toml(exec_job("big", 1, "1", "8GiB").as_bytes())
        .unwrap();
    let st = eventually("placement failure", || {
        let st = c.job_status("big").unwrap();
        (!st.placement_failures.is_empty()).then_some(st)
    });
    assert_eq!(st.status, JobStatus::Pending);
    assert!(st.allocations.is_empty());
    let why = &st.placement_failures["g"];
    assert!(why.contains("memory exhausted on 1 of 1 nodes"), "{why}");

    // Capacity arrives: the blocked evaluation is re-run and places it.
    let big = FakeAgent::register(c.clone(), node("n2", 16384));
    eventually("placement on the new node", || {
        let (_, a) = big.allocs(0);
        (a.len() == 1).then_some(())
    });
}

#[test]
fn node_missing_heartbeats_goes_down_and_allocs_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_millis(500));
    let c = srv.client();
    let mut a1 = FakeAgent::register(c.clone(), node("n1", 4096));
    let job = r#"
name = "svc"
[[group]]
name = "g"
count = 1
reschedule = { unlimited = true, delay = "0s" }
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "1000"]
  resources = { cpu = 100, memory = "64MiB" }
"#;
    c.register_job_toml(job.as_bytes()).unwrap();
    let first = eventually("placement on n1", || {
        let (_, a) = a1.allocs(0);
        a.into_iter().next()
    });
    a1.report(&first, ClientStatus::Running);
    let a2 = FakeAgent::register(c.clone(), node("n2", 4096));

    a1.stop_heartbeats();
    eventually("n1 down", || {
        let n = c.node("n1").unwrap();
        (n.status == NodeStatus::Down).then_some(())
    });
    let lost = c.alloc(first.id.as_str()).unwrap();
    assert_eq!(lost.status, ClientStatus::Lost);
    let replacement = eventually("replacement on n2", || {
        let (_, a) = a2.allocs(0);
        a.into_iter()
            .find(|a| a.desired_status == DesiredStatus::Run)
    });
    assert_eq!(replacement.previous_alloc.as_ref(), Some(&first.id));
    let nodes = c.list_nodes().unwrap();
    let n1 = nodes.iter().find(|n| n.name == "n1").unwrap();
    assert_eq!(n1.status, NodeStatus::Down);
}

#[test]
fn restart_on_same_data_dir_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 4096));
    c.register_job_toml(exec_job("keep", 2, "1", "64MiB").as_bytes())
        .unwrap();
    c.register_job_toml(exec_job("keep", 2, "2", "64MiB").as_bytes())
        .unwrap();
    // Wait for the rolling update to version 1 to finish: nothing may move
    // between the snapshot and the restart.
    eventually("rolling update done", || {
        agent.converge();
        let (_, a) = agent.allocs(0);
        let live: Vec<_> = a
            .iter()
            .filter(|a| a.desired_status == DesiredStatus::Run)
            .collect();
        let settled = a
            .iter()
            .all(|a| a.desired_status == DesiredStatus::Run || a.client_status.is_terminal());
        (live.len() == 2
            && settled
            && live
                .iter()
                .all(|a| a.job_version == 1 && a.client_status == ClientStatus::Running))
        .then_some(())
    });
    let before = c.job_status("keep").unwrap();
    let nodes_before = c.list_nodes().unwrap();
    drop(agent);
    let store = srv.stop();
    drop(store);

    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let after = c.job_status("keep").unwrap();
    assert_eq!(after.version, before.version);
    let ids = |s: &taba_client::api::JobStatusResponse| {
        let mut v: Vec<_> = s
            .allocations
            .iter()
            .map(|a| (a.id.clone(), a.status, a.desired_status))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(c.job_history("keep").unwrap().versions.len(), 2);
    let nodes_after = c.list_nodes().unwrap();
    assert_eq!(
        nodes_after.iter().map(|n| &n.id).collect::<Vec<_>>(),
        nodes_before.iter().map(|n| &n.id).collect::<Vec<_>>()
    );
    let e = c.eval(before.latest_eval.as_ref().unwrap().id.as_str());
    assert!(e.is_ok());
}

#[test]
fn openapi_lists_exactly_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let doc = c.openapi().unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut table: Vec<(String, String)> = taba_server::api::routes()
        .iter()
        .map(|r| (r.method.to_string(), taba_server::api::openapi_path(r.path)))
        .collect();
    table.sort();
    assert_eq!(documented, table);

    // Every documented route is served by the router (anything but "no route"
    // or "method not allowed"), and an undocumented one is not.
    for (method, path) in &documented {
        let mut concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        if path == "/v1/event/stream" {
            // A stream that opens never ends: a bad topic proves the route without one.
            concrete.push_str("?topic=none");
        }
        let r = c
            .raw(method, &concrete, Some("application/json"), b"{}")
            .unwrap();
        assert_ne!(r.status, 405, "{method} {path}");
        let msg = r.error().map(|e| e.message).unwrap_or_default();
        assert!(!msg.starts_with("no route"), "{method} {path}: {msg}");
    }
    let r = c.raw("GET", "/v1/nope", None, b"").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.error().unwrap().message.starts_with("no route"));
    let r = c.raw("PUT", "/v1/jobs", None, b"").unwrap();
    assert_eq!(r.status, 405);
    assert!(r.error().is_some());
}

#[test]
fn client_fails_over_to_the_next_address_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    // A port nobody listens on, first.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = taba_client::Client::new(&format!("{dead},{}", srv.addr), Some(srv.token.clone()));
    assert_eq!(c.base_url(), format!("http://{dead}"));
    assert!(c.list_jobs().unwrap().is_empty());
    assert_eq!(c.base_url(), format!("http://{}", srv.addr));
    // Only dead addresses: the error names the last one tried.
    let c = taba_client::Client::new(&format!("{dead}"), None);
    let e = c.list_jobs().unwrap_err();
    assert!(e.to_string().contains(&dead.to_string()), "{e}");
}

/// An agent's blocking query waits on its own node only: a placement on
/// another node does not signal it, a placement on its node does, and a
/// removed node's watchers end (so its query returns at once).
#[test]
fn blocking_queries_are_woken_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let a = FakeAgent::register(c.clone(), node("n1", 4096));
    let b = FakeAgent::register(c.clone(), node("n2", 4096));
    let mut wa = srv.state.watch_node(&a.node.id);
    let mut wb = srv.state.watch_node(&b.node.id);
    wa.borrow_and_update();
    wb.borrow_and_update();

    let on = |name: &str, node: &str| {
        exec_job(name, 1, "100", "64MiB").replace(
            "count = 1\n",
            &format!("count = 1\nconstraint = [{{ attribute = \"${{node.name}}\", value = \"{node}\" }}]\n"),
        )
    };
    c.register_job_toml(on("only-n2", "n2").as_bytes()).unwrap();
    eventually("placement on n2", || {
        (b.allocs(0).1.len() == 1).then_some(())
    });
    assert!(wb.has_changed().unwrap(), "n2's watcher is signalled");
    assert!(!wa.has_changed().unwrap(), "n1's watcher is not");
    assert!(a.allocs(0).1.is_empty());

    c.register_job_toml(on("only-n1", "n1").as_bytes()).unwrap();
    eventually("placement on n1", || {
        (a.allocs(0).1.len() == 1).then_some(())
    });
    assert!(wa.has_changed().unwrap(), "n1's watcher is signalled");

    // Removing n1 ends its watchers: a waiting query is not left hanging.
    wa.borrow_and_update();
    let (index, _) = a.allocs(0);
    let waiter = {
        let client = a.client.clone();
        let id = a.node.id.clone();
        std::thread::spawn(move || client.agent_allocations(&id, index, Duration::from_secs(60)))
    };
    std::thread::sleep(Duration::from_millis(200));
    c.remove_node("n1", true).unwrap();
    eventually("n1's watcher ends", || {
        wa.has_changed().is_err().then_some(())
    });
    waiter.join().unwrap().expect("the waiting query returns");
}

/// Protocol 4: a blocking query with `delta=true` answers with only the
/// allocations changed server-side past the agent's index, the others by
/// id; without it (older agents), or from index 0, with all of them.
#[test]
fn blocking_query_deltas_carry_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let a = FakeAgent::register(c.clone(), node("n1", 4096));
    c.register_job_toml(exec_job("two", 2, "100", "64MiB").as_bytes())
        .unwrap();
    let (index, all) = eventually("both placed", || {
        let (index, all) = a.allocs(0);
        (all.len() == 2).then_some((index, all))
    });
    // The agent's own reports are no server-side change.
    for alloc in &all {
        a.report(alloc, ClientStatus::Running);
    }
    let ids = |v: &[Allocation]| -> Vec<String> {
        let mut ids: Vec<String> = v.iter().map(|a| a.id.to_string()).collect();
        ids.sort();
        ids
    };
    let sorted = |v: &[AllocId]| -> Vec<String> {
        let mut ids: Vec<String> = v.iter().map(|a| a.to_string()).collect();
        ids.sort();
        ids
    };
    let quiet = a
        .client
        .agent_allocations_delta(&a.node.id, index, Duration::from_millis(300))
        .unwrap();
    assert!(quiet.delta);
    assert!(quiet.allocs.is_empty(), "{:?}", ids(&quiet.allocs));
    assert_eq!(sorted(&quiet.unchanged), ids(&all));

    let stopped = all[0].id.to_string();
    c.stop_alloc(&stopped).unwrap();
    let changed = a
        .client
        .agent_allocations_delta(&a.node.id, index, Duration::from_secs(10))
        .unwrap();
    assert!(changed.delta && changed.index > index);
    // The stopped one, and the replacement once it is placed; never the other.
    let stop = changed
        .allocs
        .iter()
        .find(|x| x.id.to_string() == stopped)
        .expect("the stopped allocation is in the delta");
    assert_eq!(stop.desired_status, DesiredStatus::Stop);
    assert!(
        changed.allocs.iter().all(|x| x.id != all[1].id),
        "{:?}",
        ids(&changed.allocs)
    );
    assert_eq!(sorted(&changed.unchanged), [all[1].id.to_string()]);

    // Older agents (no delta) and a first query get everything.
    let full = a
        .client
        .agent_allocations(&a.node.id, index, Duration::from_secs(10))
        .unwrap();
    assert!(!full.delta && full.unchanged.is_empty());
    let first = a
        .client
        .agent_allocations_delta(&a.node.id, 0, Duration::from_secs(10))
        .unwrap();
    assert!(!first.delta && first.unchanged.is_empty());
    for got in [&full.allocs, &first.allocs] {
        let got = ids(got);
        assert!(ids(&all).iter().all(|id| got.contains(id)), "{got:?}");
    }
}
