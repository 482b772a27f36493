//! Namespaces and quotas over HTTP, with a fake agent: a quota caps
//! placements and says why in the job's status; raising it, or usage
//! dropping, places the rest; jobs need an existing namespace; a namespace
//! in use cannot be removed; namespaces survive a restart.

mod common;

use common::*;
use std::time::Duration;
use taba_client::ClientError;
use taba_types::{ByteSize, ClientStatus, EvalStatus, Namespace, Quota};

fn job_in(ns: &str, name: &str, job_type: &str, count: u32) -> String {
    format!(
        r#"
name = "{name}"
type = "{job_type}"
namespace = "{ns}"
[[group]]
name = "g"
count = {count}
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "100"]
  resources = {{ cpu = 100, memory = "64MiB" }}
"#
    )
}

fn team(allocations: u32) -> Namespace {
    Namespace {
        name: "team-a".into(),
        description: "the a team".into(),
        quota: Some(Quota {
            cpu: None,
            memory: Some(ByteSize::mib(4096)),
            allocations: Some(allocations),
        }),
    }
}

fn api_status(e: ClientError) -> (u16, Option<String>, String) {
    match e {
        ClientError::Api {
            status,
            field,
            message,
            ..
        } => (status, field, message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[test]
fn allocations_quota_blocks_the_third_until_it_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 8192));
    let st = c.apply_namespace(&team(2)).unwrap();
    assert_eq!(st.usage.allocations, 0);

    c.register_job_toml(job_in("team-a", "web", "service", 3).as_bytes())
        .unwrap();
    let st = eventually("two placed, the third blocked by the quota", || {
        let st = c.job_status_in("team-a", "web").unwrap();
        let blocked = st
            .latest_eval
            .as_ref()
            .is_some_and(|e| e.status == EvalStatus::Blocked);
        (st.allocations.len() == 2 && blocked).then_some(st)
    });
    assert_eq!(
        st.placement_failures["g"],
        "quota exceeded in namespace team-a: allocations 2 of 2 used"
    );
    assert_eq!(agent.allocs(0).1.len(), 2);
    let ns = c.namespace("team-a").unwrap();
    assert_eq!(ns.usage.allocations, 2);
    assert_eq!(ns.usage.cpu, 200);
    assert_eq!(ns.usage.memory, ByteSize::mib(128));
    assert_eq!(ns.jobs, 1);
    assert!(ns.dominant_share > 0.0);

    // Raising the quota runs the blocked evaluation again.
    c.apply_namespace(&team(3)).unwrap();
    eventually("the third placed", || {
        let st = c.job_status_in("team-a", "web").unwrap();
        (st.allocations.len() == 3 && st.placement_failures.is_empty()).then_some(())
    });
    assert_eq!(c.namespace("team-a").unwrap().usage.allocations, 3);
}

#[test]
fn usage_dropping_places_waiting_batch_work() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 8192));
    c.apply_namespace(&team(2)).unwrap();
    c.register_job_toml(job_in("team-a", "crunch", "batch", 3).as_bytes())
        .unwrap();
    let first = eventually("two placed", || {
        let (_, a) = agent.allocs(0);
        (a.len() == 2).then_some(a)
    });
    eventually("the third blocked", || {
        let st = c.job_status_in("team-a", "crunch").unwrap();
        (!st.placement_failures.is_empty()).then_some(())
    });
    // One finishes: the namespace's usage drops and the third is placed.
    agent.report(&first[0], ClientStatus::Complete);
    eventually("the third placed", || {
        let (_, a) = agent.allocs(0);
        (a.len() == 3).then_some(())
    });
    let ns = c.namespace("team-a").unwrap();
    assert_eq!(ns.usage.allocations, 2);
}

#[test]
fn namespaces_are_checked_kept_and_removed_only_when_unused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let _agent = FakeAgent::register(c.clone(), node("n1", 8192));

    // default always exists; others must be created first.
    let list = c.list_namespaces().unwrap();
    assert_eq!(
        list.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec!["default"]
    );
    assert!(list[0].quota.is_none());
    let (status, field, msg) = api_status(
        c.register_job_toml(job_in("team-a", "web", "service", 1).as_bytes())
            .unwrap_err(),
    );
    assert_eq!((status, field.as_deref()), (422, Some("namespace")));
    assert!(msg.contains("team-a"), "{msg}");

    c.apply_namespace(&team(5)).unwrap();
    c.register_job_toml(job_in("team-a", "web", "service", 1).as_bytes())
        .unwrap();
    // In use: cannot be removed.
    let (status, _, msg) = api_status(c.delete_namespace("team-a").unwrap_err());
    assert_eq!(status, 409);
    assert!(msg.contains("web"), "{msg}");
    let (status, _, _) = api_status(c.delete_namespace("default").unwrap_err());
    assert_eq!(status, 409);
    let (status, _, _) = api_status(c.namespace("nope").unwrap_err());
    assert_eq!(status, 404);

    // Kept across a restart, quota included.
    drop(_agent);
    drop(srv.stop());
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let ns = c.namespace("team-a").unwrap();
    assert_eq!(ns.quota, team(5).quota);
    assert_eq!(ns.description, "the a team");
    assert_eq!(
        c.list_namespaces()
            .unwrap()
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        vec!["default", "team-a"]
    );

    // Stopped, it can go; then jobs can no longer be registered in it.
    c.raw("DELETE", "/v1/jobs/web?namespace=team-a", None, b"")
        .unwrap();
    let r = c.delete_namespace("team-a").unwrap();
    assert_eq!(r.name, "team-a");
    let (status, _, _) = api_status(c.namespace("team-a").unwrap_err());
    assert_eq!(status, 404);
    let (status, field, _) = api_status(
        c.register_job_toml(job_in("team-a", "web", "service", 1).as_bytes())
            .unwrap_err(),
    );
    assert_eq!((status, field.as_deref()), (422, Some("namespace")));
}
