//! Node lifecycle over the real HTTP API with agents that speak the real
//! agent protocol: a node that goes down and comes back never leaves a
//! duplicate running (and listings never hide one), node states, unique
//! names, `node rm`, eligibility, garbage collection.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;
use taba_client::Client;
use taba_types::{Allocation, ClientStatus, DesiredStatus, NodeStatus};

/// A server whose nodes are disconnected after 300 ms of silence and down
/// 200 ms later.
fn fast_server(dir: &std::path::Path) -> TestServer {
    let store: std::sync::Arc<dyn taba_store::Store> = std::sync::Arc::new(
        taba_store::RedbStore::open(&dir.join("state.redb")).expect("open store"),
    );
    TestServer::start_configured(dir, store, |c| {
        c.heartbeat_ttl = Duration::from_millis(300);
        c.heartbeat_grace = Duration::from_millis(200);
    })
}

/// Running allocations per node name, from `job status`, and the running
/// count `job list` shows. They must always agree.
fn running(c: &Client, job: &str) -> (BTreeMap<String, u32>, u32) {
    let st = c.job_status(job).unwrap();
    let mut by_node = BTreeMap::new();
    for a in st
        .allocations
        .iter()
        .filter(|a| a.status == ClientStatus::Running)
    {
        *by_node.entry(a.node.clone()).or_insert(0) += 1;
    }
    let listed = c
        .list_jobs()
        .unwrap()
        .into_iter()
        .find(|j| j.name == job)
        .unwrap()
        .allocs
        .get("running")
        .copied()
        .unwrap_or(0);
    (by_node, listed)
}

/// `count` allocations running on n1; then n2 joins and n1 goes silent
/// until it is down and its allocations are replaced on n2.
fn n1_down_and_replaced(c: &Client, count: u32) -> (FakeAgent, FakeAgent, Vec<Allocation>) {
    let mut n1 = FakeAgent::register(c.clone(), node("n1", 4096));
    c.register_job_toml(exec_job("web", count, "1000", "64MiB").as_bytes())
        .unwrap();
    let originals = eventually("placements on n1", || {
        let (_, a) = n1.allocs(0);
        (a.len() == count as usize).then_some(a)
    });
    n1.converge();
    let n2 = FakeAgent::register(c.clone(), node("n2", 4096));
    n1.stop_heartbeats();
    eventually("n1 down", || {
        (c.node("n1").unwrap().status == NodeStatus::Down).then_some(())
    });
    for a in &originals {
        let a = c.alloc(a.id.as_str()).unwrap();
        assert_eq!(a.status, ClientStatus::Lost);
        assert_eq!(a.allocation.events.last().unwrap().kind, "Lost");
    }
    eventually("replacements placed on n2", || {
        let (_, a) = n2.allocs(0);
        (a.iter()
            .filter(|a| a.desired_status == DesiredStatus::Run)
            .count()
            == count as usize)
            .then_some(())
    });
    (n1, n2, originals)
}

/// The headline bug: a node that was down comes back and reports the
/// allocations it kept running. Before, they turned from lost back to
/// running with no evaluation and ran next to their replacements while
/// `job list` counted only the replacements.
#[test]
fn a_returning_node_never_leaves_a_duplicate_running() {
    let dir = tempfile::tempdir().unwrap();
    let srv = fast_server(dir.path());
    let c = srv.client();
    let (mut n1, n2, originals) = n1_down_and_replaced(&c, 4);
    n2.converge();
    assert_eq!(running(&c, "web").0.get("n2"), Some(&4));

    // n1's agent is back and re-adopted its workloads: it reports them.
    n1.start_heartbeats();
    for a in &originals {
        n1.report(a, ClientStatus::Running);
    }
    // Exactly 4 run again in the end: the originals are told to stop, and
    // every listing counts what really runs on the way.
    eventually("exactly 4 running, all on n2", || {
        let (by_node, listed) = running(&c, "web");
        let total: u32 = by_node.values().sum();
        assert_eq!(
            listed, total,
            "job list hides running allocations: {by_node:?}"
        );
        n1.converge();
        n2.converge();
        (by_node.get("n2") == Some(&4) && !by_node.contains_key("n1")).then_some(())
    });
    assert_eq!(c.node("n1").unwrap().status, NodeStatus::Ready);
    for a in &originals {
        let d = c.alloc(a.id.as_str()).unwrap();
        assert_eq!(d.desired_status, DesiredStatus::Stop);
        let kinds: Vec<&str> = d
            .allocation
            .events
            .iter()
            .map(|e| e.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            ["Lost", "Reconnected", "Duplicate"],
            "{:?}",
            d.allocation.events
        );
        assert!(d
            .allocation
            .desired_description
            .contains("duplicate of allocation"));
    }
    // An evaluation with the reconnect trigger ran for the job.
    let st = c.job_status("web").unwrap();
    assert_eq!(st.allocations.len(), 8);
    let listed = c.list_jobs().unwrap();
    assert_eq!(listed[0].allocs.get("running"), Some(&4));
}

/// When the node comes back before any replacement runs, the originals are
/// kept and the replacements canceled.
#[test]
fn a_returning_node_keeps_its_allocations_when_no_replacement_runs_yet() {
    let dir = tempfile::tempdir().unwrap();
    let srv = fast_server(dir.path());
    let c = srv.client();
    let (mut n1, n2, originals) = n1_down_and_replaced(&c, 2);
    // n2 never reports its replacements running.
    n1.start_heartbeats();
    for a in &originals {
        n1.report(a, ClientStatus::Running);
    }
    eventually("replacements canceled, originals kept", || {
        let (_, on_n2) = n2.allocs(0);
        let canceled = on_n2
            .iter()
            .all(|a| a.desired_status == DesiredStatus::Stop);
        let kept = originals.iter().all(|o| {
            let d = c.alloc(o.id.as_str()).unwrap();
            d.desired_status == DesiredStatus::Run && d.status == ClientStatus::Running
        });
        (canceled && kept).then_some(())
    });
    let (by_node, listed) = running(&c, "web");
    assert_eq!(by_node.get("n1"), Some(&2));
    assert_eq!(listed, 2);
}

#[test]
fn a_silent_node_is_disconnected_then_down_then_ready_again() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn taba_store::Store> =
        std::sync::Arc::new(taba_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    // A long grace, so the disconnected state can be seen.
    let srv = TestServer::start_configured(dir.path(), store, |c| {
        c.heartbeat_ttl = Duration::from_millis(300);
        c.heartbeat_grace = Duration::from_secs(3);
    });
    let c = srv.client();
    let mut n1 = FakeAgent::register(c.clone(), node("n1", 4096));
    assert_eq!(c.node("n1").unwrap().display_status, "ready");
    n1.stop_heartbeats();
    eventually("n1 disconnected", || {
        (c.node("n1").unwrap().status == NodeStatus::Disconnected).then_some(())
    });
    let listed = c.list_nodes().unwrap();
    assert_eq!(listed[0].display_status, "disconnected");
    eventually("n1 down", || {
        (c.node("n1").unwrap().status == NodeStatus::Down).then_some(())
    });
    n1.start_heartbeats();
    eventually("n1 ready", || {
        (c.node("n1").unwrap().status == NodeStatus::Ready).then_some(())
    });
}

#[test]
fn node_names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let first = FakeAgent::register(c.clone(), node("n1", 4096));
    let other = node("n1", 4096);
    // As an agent: agent routes refuse user tokens.
    let err = c
        .with_token(None)
        .agent_register(&taba_types::wire::RegisterRequest {
            protocol: taba_types::wire::PROTOCOL,
            node: other,
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.field(), Some("node.name"));
    assert!(err.to_string().contains(first.node.id.as_str()), "{err}");
    // The same node id re-registering under its own name is fine.
    first
        .client
        .agent_register(&taba_types::wire::RegisterRequest {
            protocol: taba_types::wire::PROTOCOL,
            node: first.node.clone(),
        })
        .unwrap();
    assert_eq!(c.list_nodes().unwrap().len(), 1);
}

#[test]
fn node_rm_refuses_a_live_node_with_allocations_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let mut n1 = FakeAgent::register(c.clone(), node("n1", 4096));
    let n2 = FakeAgent::register(c.clone(), node("n2", 4096));
    c.node_eligibility("n2", false).unwrap();
    assert_eq!(c.node("n2").unwrap().display_status, "ineligible");
    c.register_job_toml(exec_job("web", 1, "1000", "64MiB").as_bytes())
        .unwrap();
    let a = eventually("placed on n1", || n1.allocs(0).1.into_iter().next());
    n1.converge();

    let err = c.remove_node("n1", false).unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(c.list_nodes().unwrap().len(), 2);

    // Eligible again: the blocked placement... there is none; force-remove n1.
    c.node_eligibility("n2", true).unwrap();
    let r = c.remove_node("n1", true).unwrap();
    assert_eq!((r.name.as_str(), r.lost), ("n1", 1));
    assert!(c.node("n1").is_err());
    let lost = c.alloc(a.id.as_str()).unwrap();
    assert_eq!(lost.status, ClientStatus::Lost);
    eventually("replacement on n2", || {
        n2.allocs(0)
            .1
            .into_iter()
            .find(|a| a.desired_status == DesiredStatus::Run)
    });
    // The removed node's agent is still alive: its next registration is
    // accepted and the node is back.
    n1.stop_heartbeats();
    n1.client
        .agent_register(&taba_types::wire::RegisterRequest {
            protocol: taba_types::wire::PROTOCOL,
            node: n1.node.clone(),
        })
        .unwrap();
    assert_eq!(c.node("n1").unwrap().status, NodeStatus::Ready);
    // Unknown nodes: 404 naming it.
    let err = c.remove_node("nope", false).unwrap_err();
    assert_eq!(err.status(), Some(404));
    let err = c.node_eligibility("nope", true).unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[test]
fn down_nodes_are_garbage_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn taba_store::Store> =
        std::sync::Arc::new(taba_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let srv = TestServer::start_configured(dir.path(), store, |c| {
        c.heartbeat_ttl = Duration::from_millis(200);
        c.heartbeat_grace = Duration::from_millis(100);
        c.node_gc_after = Duration::from_secs(2);
    });
    let c = srv.client();
    let mut n1 = FakeAgent::register(c.clone(), node("n1", 4096));
    let _n2 = FakeAgent::register(c.clone(), node("n2", 4096));
    n1.stop_heartbeats();
    eventually("n1 down", || {
        (c.node("n1").unwrap().status == NodeStatus::Down).then_some(())
    });
    eventually("n1 collected", || c.node("n1").is_err().then_some(()));
    let names: Vec<String> = c
        .list_nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["n2"]);
    // Gone from the store too.
    drop(c);
    let store = srv.stop();
    let nodes = store.scan(taba_store::Table::Nodes, "").unwrap();
    assert_eq!(nodes.len(), 1);
}

#[test]
fn an_unusable_node_is_never_ready() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let mut n = node("n1", 4096);
    n.unusable_reason = "no usable cgroups: /sys/fs/cgroup has no memory controller".into();
    let _a = FakeAgent::register(c.clone(), n);
    std::thread::sleep(Duration::from_millis(200));
    let d = c.node("n1").unwrap();
    assert_eq!(d.status, NodeStatus::Unusable);
    assert!(d.node.unusable_reason.contains("cgroups"));
    c.register_job_toml(exec_job("web", 1, "1000", "64MiB").as_bytes())
        .unwrap();
    let st = eventually("placement failure", || {
        let st = c.job_status("web").unwrap();
        (!st.placement_failures.is_empty()).then_some(st)
    });
    assert!(st.allocations.is_empty());
}

#[test]
fn node_routes_reject_bad_input_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let _n1 = FakeAgent::register(c.clone(), node("n1", 4096));
    for (body, field) in [
        (&br#"{"eligible": "yes"}"#[..], "eligible"),
        (br#"{"eligible": true, "why": 1}"#, "why"),
        (br#"{}"#, "eligible"),
    ] {
        let r = c
            .raw(
                "POST",
                "/v1/nodes/n1/eligibility",
                Some("application/json"),
                body,
            )
            .unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        let e = r.error().unwrap();
        let named = e.field.as_deref() == Some(field) || e.message.contains(field);
        assert!(named, "{e:?}");
    }
    let r = c
        .raw("DELETE", "/v1/nodes/n1?force=maybe", None, b"")
        .unwrap();
    assert_eq!(r.status, 400);
    let r = c
        .raw("DELETE", "/v1/nodes/n1?forse=true", None, b"")
        .unwrap();
    assert_eq!(r.status, 400);
    // Nothing changed.
    let n = c.node("n1").unwrap();
    assert_eq!(n.display_status, "ready");
}
