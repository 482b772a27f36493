//! The rebalancer in a real server: agents (fake ones over real HTTP) report
//! a hot node; one of its allocations is moved to the cool node through the
//! job's evaluation, and the original is stopped with the reason.

mod common;

use common::{eventually, FakeAgent, TestServer};
use std::sync::Arc;
use std::time::Duration;
use taba_store::{RedbStore, Store};
use taba_types::{AllocUsage, ByteSize, ClientStatus, DesiredStatus};

const JOB: &str = r#"
name = "web"
[[group]]
name = "g"
count = 2
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "1000"]
  resources = { cpu = 1000, memory = "256MiB" }
"#;

fn busy(cpu_mhz: u64) -> Option<AllocUsage> {
    Some(AllocUsage {
        cpu_mhz,
        memory: ByteSize::mib(100),
        ..AllocUsage::default()
    })
}

#[test]
fn a_hot_node_is_relieved_by_a_move() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let srv = TestServer::start_configured(dir.path(), store, |c| {
        c.heartbeat_ttl = Duration::from_secs(5);
        c.rebalance.interval = Duration::from_millis(200);
    });
    let c = srv.client();
    let a1 = FakeAgent::register(c.clone(), common::node("n1", 4096));
    let a2 = FakeAgent::register(c.clone(), common::node("n2", 4096));
    c.register_job_toml(JOB.as_bytes()).unwrap();
    // Bin-packing puts both allocations on one node.
    let (hot, cool, allocs) = eventually("both placed", || {
        let (_, on1) = a1.allocs(0);
        let (_, on2) = a2.allocs(0);
        match (on1.len(), on2.len()) {
            (2, 0) => Some((&a1, &a2, on1)),
            (0, 2) => Some((&a2, &a1, on2)),
            _ => None,
        }
    });
    // Each burns 3.6 of its node's 8 GHz: 90% in use, above the 85% mark.
    for a in &allocs {
        hot.report_with_usage(a, ClientStatus::Running, busy(3600));
    }
    cool.set_usage(100, ByteSize::mib(50));
    hot.set_usage(7200, ByteSize::mib(200));

    let moved = eventually("a replacement on the cool node", || {
        let (_, a) = cool.allocs(0);
        a.into_iter()
            .find(|a| a.desired_status == DesiredStatus::Run && a.previous_alloc.is_some())
    });
    let original = c
        .alloc(moved.previous_alloc.as_ref().unwrap().as_str())
        .unwrap();
    assert_eq!(original.desired_status, DesiredStatus::Stop);
    let why = &original.allocation.desired_description;
    assert!(why.contains("rebalanced off hot node"), "{why}");
    assert_eq!(moved.index, original.allocation.index);
    // Exactly one moved: one brings the node to 45%; the group's budget
    // (migrate.max_parallel = 1) and the cooldown hold the rest.
    std::thread::sleep(Duration::from_millis(800));
    let (_, on_hot) = hot.allocs(0);
    let still = on_hot
        .iter()
        .filter(|a| a.desired_status == DesiredStatus::Run)
        .count();
    assert_eq!(still, 1);
    let status = c.job_status("web").unwrap();
    let running_or_pending = status
        .allocations
        .iter()
        .filter(|a| matches!(a.status, ClientStatus::Running | ClientStatus::Pending))
        .filter(|a| a.desired_status == DesiredStatus::Run)
        .count();
    assert_eq!(running_or_pending, 2, "{status:?}");
}

const VM_JOB: &str = r#"
name = "vms"
[[group]]
name = "g"
count = 2
  [[group.task]]
  name = "guest"
  driver = "vm"
  kernel = "vmlinuz"
  resources = { cpu = 1000, memory = "256MiB" }
"#;

#[test]
fn a_hot_nodes_vm_moves_live_and_the_move_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let srv = TestServer::start_configured(dir.path(), store, |c| {
        c.heartbeat_ttl = Duration::from_secs(5);
        c.rebalance.interval = Duration::from_millis(200);
    });
    let c = srv.client();
    let a1 = FakeAgent::register(c.clone(), common::vm_node("n1", 4096));
    let a2 = FakeAgent::register(c.clone(), common::vm_node("n2", 4096));
    c.register_job_toml(VM_JOB.as_bytes()).unwrap();
    let (hot, cool, allocs) = eventually("both placed", || {
        let (_, on1) = a1.allocs(0);
        let (_, on2) = a2.allocs(0);
        match (on1.len(), on2.len()) {
            (2, 0) => Some((&a1, &a2, on1)),
            (0, 2) => Some((&a2, &a1, on2)),
            _ => None,
        }
    });
    for a in &allocs {
        hot.report_with_usage(a, ClientStatus::Running, busy(3600));
    }
    cool.set_usage(100, ByteSize::mib(50));
    hot.set_usage(7200, ByteSize::mib(200));

    // The rebalancer's move of a VM is a live migration: the target is
    // placed on the cool node, the source keeps running until it runs.
    let target = eventually("a migration target on the cool node", || {
        let (_, a) = cool.allocs(0);
        a.into_iter().find(|a| a.is_migration_target())
    });
    let lm = target.live_migration.clone().unwrap();
    assert!(lm.reason.contains("rebalanced off hot node"), "{lm:?}");
    let source = c.alloc(lm.source_alloc.as_str()).unwrap().allocation;
    assert_eq!(source.desired_status, DesiredStatus::Run);
    assert!(source.is_migration_source(), "{source:?}");

    // Cancelled before the source streams: it ends at once; the source
    // runs on, the target is stopped, both say who cancelled.
    let r = c.cancel_migration(target.id.as_str()).unwrap();
    assert!(r.message.contains("was cancelled"), "{}", r.message);
    let source = c.alloc(lm.source_alloc.as_str()).unwrap().allocation;
    assert_eq!(source.desired_status, DesiredStatus::Run);
    let t = c.alloc(target.id.as_str()).unwrap().allocation;
    assert_eq!(t.desired_status, DesiredStatus::Stop);
    for a in [&source, &t] {
        let ev = a
            .events
            .iter()
            .find(|e| e.kind == "Migration Cancelled")
            .unwrap_or_else(|| panic!("{:?}", a.events));
        assert!(ev.message.contains("cancelled by"), "{}", ev.message);
    }
    // Nothing in progress for the target any more: a clear refusal.
    let e = c.cancel_migration(target.id.as_str()).unwrap_err();
    assert!(e.to_string().contains("is not migrating"), "{e}");
}
