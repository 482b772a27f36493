//! Scheduler unit tests and the helpers other modules' tests share.

use crate::{apply_plan, schedule, verify_plan, ClusterState, PlanRejection};
use std::collections::BTreeMap;
use taba_types::*;

pub(crate) fn node(name: &str, cpu: u64, mem_mib: u64) -> Node {
    let mut drivers = BTreeMap::new();
    for d in ["exec", "container"] {
        drivers.insert(
            d.to_string(),
            DriverInfo {
                detected: true,
                healthy: true,
                description: String::new(),
            },
        );
    }
    Node {
        id: NodeId(format!("id-{name}")),
        name: name.into(),
        datacenter: "dc1".into(),
        status: NodeStatus::Ready,
        eligibility: Eligibility::Eligible,
        drain: None,
        drained_at: None,
        http_addr: String::new(),
        attributes: BTreeMap::new(),
        meta: BTreeMap::new(),
        resources: NodeResources {
            cores: 4,
            cpu,
            memory: ByteSize::mib(mem_mib),
            disk: ByteSize::mib(100 * 1024),
        },
        reserved: NodeResources::default(),
        reserved_ports: PortRanges::default(),
        dynamic_ports: PortRange::default(),
        drivers,
        last_heartbeat: 0,
        usage: NodeUsage::default(),
        unusable_reason: String::new(),
        create_index: 0,
        modify_index: 0,
    }
}

pub(crate) fn group(name: &str, count: u32, cpu: u64, mem_mib: u64) -> TaskGroupSpec {
    let spec = serde_json::json!({
        "name": name, "count": count,
        "task": [{"name": "t", "driver": "exec", "command": ["/bin/true"],
                  "resources": {"cpu": cpu, "memory": format!("{mem_mib}MiB")}}]
    });
    serde_json::from_value(spec).unwrap()
}

pub(crate) fn job(name: &str, job_type: JobType, groups: Vec<TaskGroupSpec>) -> Job {
    let mut spec: JobSpec =
        serde_json::from_value(serde_json::json!({"name": name, "type": job_type})).unwrap();
    spec.groups = groups;
    Job {
        spec,
        version: 0,
        status: JobStatus::Pending,
        stopped: false,
        submit_time: 0,
        create_index: 1,
        modify_index: 1,
    }
}

pub(crate) fn eval_for(j: &Job, n: u32) -> Evaluation {
    Evaluation {
        id: EvalId(crate::ids::IdStream::new(&j.spec.name, u64::from(n)).next_uuid()),
        namespace: j.spec.namespace.clone(),
        job: j.spec.name.clone(),
        job_type: j.spec.job_type,
        priority: j.spec.priority,
        triggered_by: EvalTrigger::JobRegister,
        node_id: None,
        status: EvalStatus::Pending,
        status_description: String::new(),
        failed_groups: BTreeMap::new(),
        queued: BTreeMap::new(),
        wait_until: None,
        previous_eval: None,
        create_time: 0,
        create_index: 0,
        modify_index: 0,
    }
}

/// A running allocation of job `job_name` (group "web") on a named node.
pub(crate) fn alloc_on(
    s: &ClusterState,
    job_name: &str,
    index: u32,
    node_name: &str,
    cpu: u64,
    mem_mib: u64,
) -> Allocation {
    let n = s.node_by_name(node_name).unwrap();
    let g = group("web", 1, cpu, mem_mib);
    Allocation {
        id: AllocId(format!("{job_name}-{index}-{node_name}")),
        namespace: "default".into(),
        job: job_name.into(),
        job_version: 0,
        job_type: JobType::Service,
        priority: 50,
        group: "web".into(),
        name: format!("{job_name}.web[{index}]"),
        index,
        resources: g.total_resources(),
        ports: Vec::new(),
        group_spec: g.into(),
        node_id: n.id.clone(),
        node_name: n.name.clone(),
        desired_status: DesiredStatus::Run,
        desired_description: String::new(),
        client_status: ClientStatus::Running,
        client_description: String::new(),
        task_states: BTreeMap::new(),
        usage: None,
        events: Vec::new(),
        eval_id: EvalId("e".into()),
        previous_alloc: None,
        reschedule_times: Vec::new(),
        replaced: false,
        preempted_allocs: Vec::new(),
        preempted_by: None,
        migrate: None,
        live_migration: None,
        migration_status: None,
        create_time: 0,
        modify_time: 0,
        create_index: 0,
        modify_index: 0,
    }
}

/// A test cluster: state plus an evaluation counter.
struct Cluster {
    s: ClusterState,
    evals: u32,
}

impl Cluster {
    fn new(nodes: &[(&str, u64, u64)]) -> Self {
        let mut s = ClusterState::new();
        for (n, cpu, mem) in nodes {
            s.upsert_node(node(n, *cpu, *mem));
        }
        s.set_index(1);
        Self { s, evals: 0 }
    }
    fn register(&mut self, mut j: Job) -> Job {
        if let Some(old) = self.s.job(&j.spec.namespace, &j.spec.name) {
            j.version = old.version + 1;
        }
        self.s.upsert_job(j.clone());
        j
    }
    fn run(&mut self, j: &Job, now: UnixMillis) -> SchedulerOutcome {
        self.evals += 1;
        schedule(&self.s, &eval_for(j, self.evals), now)
    }
    fn commit(&mut self, o: &SchedulerOutcome) {
        verify_plan(&self.s, &o.plan).expect("plan verifies");
        let idx = self.s.index() + 1;
        apply_plan(&mut self.s, &o.plan, idx);
    }
    fn run_commit(&mut self, j: &Job, now: UnixMillis) -> SchedulerOutcome {
        let o = self.run(j, now);
        self.commit(&o);
        o
    }
    fn set_client(&mut self, id: &AllocId, st: ClientStatus, at: UnixMillis) {
        let mut a = self.s.alloc(id).unwrap().clone();
        a.client_status = st;
        a.modify_time = at;
        if st == ClientStatus::Running {
            let ts = TaskState {
                state: TaskStatus::Running,
                started_at: Some(at),
                ..TaskState::default()
            };
            a.task_states.insert("t".into(), ts);
        }
        self.s.upsert_alloc(a);
    }
    fn live(&self, j: &str) -> Vec<Allocation> {
        let mut v: Vec<Allocation> = self
            .s
            .allocs_for_job("default", j)
            .filter(|a| a.is_live())
            .cloned()
            .collect();
        v.sort_by_key(|a| a.index);
        v
    }
    fn node_of(&self, a: &Allocation) -> String {
        self.s.node(&a.node_id).unwrap().name.clone()
    }
}

#[test]
fn service_places_count_and_is_then_idle() {
    let mut c = Cluster::new(&[("n1", 4000, 4096), ("n2", 4000, 4096)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 3, 500, 256)],
    ));
    let o = c.run_commit(&j, 1000);
    assert_eq!(o.status, EvalStatus::Complete);
    let names: Vec<&str> = o.plan.placements.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["web.web[0]", "web.web[1]", "web.web[2]"]);
    assert!(o
        .plan
        .placements
        .iter()
        .all(|a| a.client_status == ClientStatus::Pending));
    // Bin-packing: all three fit on one node, so one node is used.
    let nodes: std::collections::BTreeSet<_> =
        o.plan.placements.iter().map(|a| &a.node_id).collect();
    assert_eq!(nodes.len(), 1);
    let again = c.run(&j, 2000);
    assert!(again.plan.is_empty(), "{:?}", again.plan);
    assert_eq!(again.status, EvalStatus::Complete);
}

#[test]
fn binpack_prefers_fullest_node_and_opens_the_largest() {
    let mut c = Cluster::new(&[
        ("small", 2000, 2048),
        ("big", 8000, 8192),
        ("mid", 4000, 4096),
    ]);
    let a = c.register(job(
        "a",
        JobType::Service,
        vec![group("web", 1, 1000, 1024)],
    ));
    let o = c.run_commit(&a, 1);
    assert_eq!(
        o.plan.placements[0].node_name, "big",
        "opens the largest empty node"
    );
    let b = c.register(job(
        "b",
        JobType::Service,
        vec![group("web", 2, 1000, 1024)],
    ));
    let o = c.run_commit(&b, 2);
    assert!(
        o.plan.placements.iter().all(|p| p.node_name == "big"),
        "fills the node in use"
    );
    let d = c.register(job(
        "d",
        JobType::Service,
        vec![group("web", 1, 5500, 1024)],
    ));
    let o = c.run_commit(&d, 3);
    assert_eq!(o.status, EvalStatus::Blocked, "no node has 5500 MHz left");
    assert_eq!(o.queued.get("web"), Some(&1));
}

#[test]
fn scale_down_stops_highest_indexes_and_updates_the_rest_in_place() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 3, 500, 256)],
    ));
    c.run_commit(&j, 1);
    let mut j2 = j.clone();
    j2.spec.groups[0].count = 1;
    let j2 = c.register(j2);
    let o = c.run_commit(&j2, 2);
    assert!(o.plan.placements.is_empty());
    let stopped: Vec<u32> = o
        .plan
        .stops
        .iter()
        .map(|s| c.s.alloc(&s.alloc_id).unwrap().index)
        .collect();
    assert_eq!(stopped, [1, 2]);
    assert!(o.plan.stops.iter().all(|s| s.description == "scaled down"));
    assert_eq!(o.plan.updates.len(), 1);
    assert_eq!(o.plan.updates[0].index, 0);
    assert_eq!(o.plan.updates[0].job_version, 1);
    assert_eq!(o.plan.updates[0].group_spec.count, 1);
    assert_eq!(c.live("web")[0].job_version, 1);
}

#[test]
fn failed_alloc_waits_out_the_delay_then_is_replaced() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 1, 500, 256)],
    ));
    let first = c.run_commit(&j, 1000).plan.placements[0].id.clone();
    c.set_client(&first, ClientStatus::Failed, 10_000);
    // Default service policy: unlimited, 30s delay.
    let o = c.run(&j, 20_000);
    assert!(o.plan.placements.is_empty(), "not before the delay");
    assert_eq!(o.follow_ups.len(), 1);
    assert_eq!(o.follow_ups[0].wait_until, Some(40_000));
    assert_eq!(o.follow_ups[0].previous_eval, Some(eval_for(&j, 2).id));
    let o = c.run_commit(&j, 40_000);
    assert_eq!(o.plan.placements.len(), 1);
    let p = &o.plan.placements[0];
    assert_eq!(p.previous_alloc.as_ref(), Some(&first));
    assert_eq!(p.reschedule_times, [40_000]);
    assert_eq!(p.name, "web.web[0]");
    assert_eq!(o.plan.replaced, std::slice::from_ref(&first));
    assert!(c.s.alloc(&first).unwrap().replaced);
    assert!(
        c.run(&j, 50_000).plan.is_empty(),
        "a replaced alloc is not replaced twice"
    );
}

#[test]
fn batch_reschedule_attempts_are_limited() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job("b", JobType::Batch, vec![group("work", 1, 500, 256)]));
    let a = c.run_commit(&j, 0).plan.placements[0].id.clone();
    c.set_client(&a, ClientStatus::Failed, 1000);
    // Batch default: 1 attempt per 24h, 5s delay.
    let o = c.run_commit(&j, 6000);
    let b = o.plan.placements[0].id.clone();
    c.set_client(&b, ClientStatus::Failed, 7000);
    let o = c.run(&j, 60_000);
    assert!(o.plan.is_empty(), "attempts exhausted: {:?}", o.plan);
    assert!(o.follow_ups.is_empty());
}

#[test]
fn lost_allocations_are_replaced_at_once() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 2, 500, 256)],
    ));
    let o = c.run_commit(&j, 0);
    let on = o.plan.placements[0].node_name.clone();
    let mut n = c.s.node_by_name(&on).unwrap().clone();
    n.status = NodeStatus::Down;
    c.s.upsert_node(n);
    let o = c.run_commit(&j, 100);
    assert_eq!(o.plan.stops.len(), 2);
    assert_eq!(o.plan.placements.len(), 2);
    assert!(o
        .plan
        .placements
        .iter()
        .all(|p| p.node_name != on && p.previous_alloc.is_some()));
    assert_eq!(o.plan.replaced.len(), 2);
    // An allocation the server already marked lost is replaced too.
    let live = c.live("web");
    c.set_client(&live[0].id, ClientStatus::Lost, 200);
    let o = c.run(&j, 200);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].index, live[0].index);
}

#[test]
fn rolling_update_goes_in_batches_of_max_parallel() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192)]);
    let mut j = job("web", JobType::Service, vec![group("web", 3, 500, 256)]);
    j.spec.update.max_parallel = 2;
    j.spec.update.min_healthy_time = DurationSpec(5000);
    let j = c.register(j);
    for p in c.run_commit(&j, 0).plan.placements {
        c.set_client(&p.id, ClientStatus::Running, 10);
    }
    let mut j2 = j.clone();
    j2.spec.groups[0].tasks[0].command = vec!["/bin/false".into()];
    let j2 = c.register(j2);
    let o = c.run_commit(&j2, 1000);
    assert_eq!(o.plan.stops.len(), 2);
    assert_eq!(o.plan.placements.len(), 2);
    assert!(o
        .plan
        .stops
        .iter()
        .all(|s| s.description == "alloc is being updated"));
    let idx: Vec<u32> = o.plan.placements.iter().map(|p| p.index).collect();
    assert_eq!(idx, [0, 1]);
    assert!(o
        .plan
        .placements
        .iter()
        .all(|p| p.job_version == 1 && p.previous_alloc.is_some()));
    assert!(o.plan.replaced.is_empty());
    let fu = &o.follow_ups[0];
    assert_eq!(fu.triggered_by, EvalTrigger::RollingUpdate);
    assert_eq!(fu.wait_until, Some(6000));
    // New ones not running yet: nothing more.
    let o = c.run(&j2, 2000);
    assert!(o.plan.is_empty());
    let new: Vec<AllocId> = c
        .live("web")
        .iter()
        .filter(|a| a.job_version == 1)
        .map(|a| a.id.clone())
        .collect();
    for id in &new {
        c.set_client(id, ClientStatus::Running, 3000);
    }
    // Running, but not for min_healthy_time yet.
    let o = c.run(&j2, 4000);
    assert!(o.plan.is_empty());
    assert_eq!(o.follow_ups[0].wait_until, Some(8000));
    let o = c.run_commit(&j2, 8000);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].index, 2);
    assert!(o.follow_ups.is_empty());
}

#[test]
fn update_that_changes_only_count_is_in_place() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 2, 500, 256)],
    ));
    c.run_commit(&j, 0);
    let mut j2 = j.clone();
    j2.spec.groups[0].count = 3;
    let j2 = c.register(j2);
    let o = c.run_commit(&j2, 10);
    assert!(o.plan.stops.is_empty());
    assert_eq!(o.plan.updates.len(), 2);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].index, 2);
    assert!(c
        .live("web")
        .iter()
        .all(|a| a.job_version == 1 && a.group_spec.count == 3));
}

#[test]
fn batch_completions_are_never_placed_again() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job("b", JobType::Batch, vec![group("work", 2, 500, 256)]));
    let o = c.run_commit(&j, 0);
    for p in &o.plan.placements {
        c.set_client(&p.id, ClientStatus::Complete, 100);
    }
    let o = c.run(&j, 200);
    assert!(o.plan.is_empty());
    assert_eq!(o.status, EvalStatus::Complete);
    assert_eq!(c.s.node_used(&NodeId("id-n1".into())).cpu, 0);
}

#[test]
fn system_job_runs_on_every_qualifying_node() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192), ("n3", 8000, 8192)]);
    let mut g = group("agent", 1, 100, 64);
    g.constraints = vec![serde_json::from_value(
        serde_json::json!({"attribute": "${node.name}", "operator": "!=", "value": "n3"}),
    )
    .unwrap()];
    let j = c.register(job("sys", JobType::System, vec![g]));
    let o = c.run_commit(&j, 0);
    let mut on: Vec<&str> = o
        .plan
        .placements
        .iter()
        .map(|p| p.node_name.as_str())
        .collect();
    on.sort();
    assert_eq!(on, ["n1", "n2"]);
    assert!(c.run(&j, 1).plan.is_empty());
    // n1 goes down: left alone (lost, not stopped). n2 becomes ineligible:
    // its allocation keeps running (a drain stops it itself), n4 gets one.
    let mut n1 = c.s.node_by_name("n1").unwrap().clone();
    n1.status = NodeStatus::Down;
    c.s.upsert_node(n1);
    let mut n2 = c.s.node_by_name("n2").unwrap().clone();
    n2.eligibility = Eligibility::Ineligible;
    c.s.upsert_node(n2.clone());
    c.s.upsert_node(node("n4", 8000, 8192));
    let o = c.run_commit(&j, 2);
    assert!(o.plan.stops.is_empty(), "{:?}", o.plan.stops);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].node_name, "n4");
    // A constraint n2 no longer meets stops it.
    n2.drivers.clear();
    c.s.upsert_node(n2);
    let o = c.run_commit(&j, 3);
    assert_eq!(o.plan.stops.len(), 1);
    assert_eq!(
        c.s.alloc(&o.plan.stops[0].alloc_id).unwrap().node_name,
        "n2"
    );
    assert!(o.plan.stops[0].description.contains("missing driver"));
}

#[test]
fn constraints_filter_and_the_failure_explains_itself() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 2000, 1024)]);
    let mut j = job("web", JobType::Service, vec![group("web", 3, 500, 512)]);
    j.spec.constraints = vec![serde_json::from_value(
        serde_json::json!({"attribute": "${node.name}", "operator": "!=", "value": "n1"}),
    )
    .unwrap()];
    let j = c.register(j);
    let o = c.run(&j, 0);
    assert_eq!(o.status, EvalStatus::Blocked);
    assert_eq!(o.plan.placements.len(), 2);
    assert!(o.plan.placements.iter().all(|p| p.node_name == "n2"));
    assert_eq!(o.queued.get("web"), Some(&1));
    let f = &o.failed_groups["web"];
    assert_eq!(f.nodes_evaluated, 2);
    assert_eq!(f.filtered.get("constraint ${node.name} != n1"), Some(&1));
    assert_eq!(f.exhausted.get("memory"), Some(&1));
    assert_eq!(
        f.summary(),
        "constraint ${node.name} != n1 filtered 1 of 2 nodes; memory exhausted on 1 of 2 nodes"
    );
    assert!(o
        .status_description
        .contains("memory exhausted on 1 of 2 nodes"));
}

#[test]
fn memory_exhaustion_message() {
    let mut c = Cluster::new(&[("n1", 8000, 1024)]);
    let j = c.register(job(
        "big",
        JobType::Service,
        vec![group("web", 1, 100, 2048)],
    ));
    let o = c.run(&j, 0);
    assert_eq!(o.status, EvalStatus::Blocked);
    assert_eq!(
        o.failed_groups["web"].summary(),
        "memory exhausted on 1 of 1 nodes"
    );
    assert_eq!(o.queued, BTreeMap::from([("web".to_string(), 1)]));
    assert!(o.plan.placements.is_empty());
}

#[test]
fn missing_driver_filters_nodes() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let mut g = group("web", 1, 100, 64);
    g.tasks[0].driver = "vm".into();
    let j = c.register(job("v", JobType::Service, vec![g]));
    let o = c.run(&j, 0);
    assert_eq!(
        o.failed_groups["web"].filtered.get("missing driver vm"),
        Some(&1)
    );
    assert_eq!(
        o.failed_groups["web"].summary(),
        "missing driver vm filtered 1 of 1 nodes"
    );
}

#[test]
fn distinct_hosts_limits_one_per_node() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192)]);
    let mut g = group("web", 3, 100, 64);
    g.constraints =
        vec![serde_json::from_value(serde_json::json!({"operator": "distinct_hosts"})).unwrap()];
    let j = c.register(job("d", JobType::Service, vec![g]));
    let o = c.run_commit(&j, 0);
    assert_eq!(o.plan.placements.len(), 2);
    assert_ne!(o.plan.placements[0].node_id, o.plan.placements[1].node_id);
    assert_eq!(
        o.failed_groups["web"].filtered.get("distinct_hosts"),
        Some(&2)
    );
    c.s.upsert_node(node("n3", 8000, 8192));
    let o = c.run(&j, 1);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].node_name, "n3");
}

#[test]
fn distinct_property_limits_per_value() {
    let mut c = Cluster::new(&[]);
    for (n, rack) in [("a1", "r1"), ("a2", "r1"), ("b1", "r2")] {
        let mut nd = node(n, 8000, 8192);
        nd.meta.insert("rack".into(), rack.into());
        c.s.upsert_node(nd);
    }
    let mut g = group("web", 3, 100, 64);
    g.constraints = vec![serde_json::from_value(
        serde_json::json!({"attribute": "${meta.rack}", "operator": "distinct_property", "value": "1"}),
    )
    .unwrap()];
    let j = c.register(job("p", JobType::Service, vec![g]));
    let o = c.run(&j, 0);
    assert_eq!(o.plan.placements.len(), 2);
    let racks: std::collections::BTreeSet<String> = o
        .plan
        .placements
        .iter()
        .map(|p| c.s.node(&p.node_id).unwrap().meta["rack"].clone())
        .collect();
    assert_eq!(racks.len(), 2);
}

#[test]
fn job_stop_stops_every_live_alloc() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job("web", JobType::Service, vec![group("web", 2, 100, 64)]));
    c.run_commit(&j, 0);
    let mut stopped = j.clone();
    stopped.stopped = true;
    c.s.upsert_job(stopped);
    let o = c.run_commit(&j, 1);
    assert_eq!(o.plan.stops.len(), 2);
    assert!(o.plan.stops.iter().all(|s| s.description == "job stopped"));
    assert!(c.live("web").is_empty());
    c.s.remove_job("default", "web");
    assert!(c.run(&j, 2).plan.is_empty());
}

#[test]
fn same_input_same_outcome() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 4000, 4096), ("n3", 2000, 2048)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 20, 300, 256), group("db", 3, 1000, 1024)],
    ));
    let e = eval_for(&j, 1);
    let a = schedule(&c.s, &e, 5);
    let b = schedule(&c.s.clone(), &e, 5);
    assert_eq!(a, b);
    assert_eq!(a.plan.placements.len(), 23);
    let mut e2 = e.clone();
    e2.id = EvalId("other".into());
    let d = schedule(&c.s, &e2, 5);
    assert_ne!(a.plan.placements[0].id, d.plan.placements[0].id);
}

#[test]
fn verify_rejects_a_stale_plan_that_no_longer_fits() {
    let mut c = Cluster::new(&[("n1", 4000, 4096)]);
    let a = c.register(job(
        "a",
        JobType::Service,
        vec![group("web", 3, 1000, 1024)],
    ));
    let b = c.register(job(
        "b",
        JobType::Service,
        vec![group("web", 3, 1000, 1024)],
    ));
    // Both planned on the same snapshot.
    let pa = c.run(&a, 0);
    let pb = c.run(&b, 0);
    verify_plan(&c.s, &pb.plan).unwrap();
    c.commit(&pa);
    assert_eq!(
        verify_plan(&c.s, &pb.plan),
        Err(PlanRejection::NodeExhausted {
            node: "n1".into(),
            dimension: "cpu"
        })
    );
    // Retried on the fresh state it places what fits.
    let pb = c.run(&b, 1);
    assert_eq!(pb.plan.placements.len(), 1);
    verify_plan(&c.s, &pb.plan).unwrap();
}

#[test]
fn verify_rejects_gone_allocs_unschedulable_nodes_and_changed_jobs() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job("web", JobType::Service, vec![group("web", 2, 100, 64)]));
    let placed = c.run_commit(&j, 0).plan.placements;
    let mut stopped = j.clone();
    stopped.stopped = true;
    c.s.upsert_job(stopped.clone());
    let stop_plan = c.run(&j, 1).plan;
    c.s.remove_alloc(&placed[0].id);
    assert_eq!(
        verify_plan(&c.s, &stop_plan),
        Err(PlanRejection::AllocGone(placed[0].id.clone()))
    );

    c.s.upsert_job(j.clone());
    let plan = c.run(&j, 2).plan;
    assert_eq!(plan.placements.len(), 1);
    let mut n = c.s.node_by_name("n1").unwrap().clone();
    n.drain = Some(taba_types::DrainStrategy {
        started_at: 0,
        deadline: u64::MAX,
        ignore_system: false,
    });
    c.s.upsert_node(n.clone());
    assert_eq!(
        verify_plan(&c.s, &plan),
        Err(PlanRejection::NodeNotSchedulable("n1".into()))
    );
    n.drain = None;
    c.s.upsert_node(n);
    let mut j2 = j.clone();
    j2.spec.groups[0].count = 5;
    c.register(j2);
    assert_eq!(
        verify_plan(&c.s, &plan),
        Err(PlanRejection::JobChanged("web".into()))
    );
}

#[test]
fn rolling_update_may_reuse_the_node_it_frees() {
    let mut c = Cluster::new(&[("n1", 1000, 1024)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 1, 1000, 1024)],
    ));
    let first = c.run_commit(&j, 0).plan.placements[0].id.clone();
    c.set_client(&first, ClientStatus::Running, 1);
    let mut j2 = j.clone();
    j2.spec.groups[0].tasks[0]
        .env
        .insert("V".into(), "2".into());
    let j2 = c.register(j2);
    let o = c.run(&j2, 10);
    assert_eq!(o.plan.stops.len(), 1);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].node_name, "n1");
    c.commit(&o);
    // The old one still holds its resources until the agent reports it stopped.
    assert_eq!(c.s.node_used(&NodeId("id-n1".into())).cpu, 2000);
    c.set_client(&first, ClientStatus::Complete, 20);
    assert_eq!(c.s.node_used(&NodeId("id-n1".into())).cpu, 1000);
}

#[test]
fn apply_keeps_client_status_reported_meanwhile() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job("web", JobType::Service, vec![group("web", 2, 100, 64)]));
    c.run_commit(&j, 0);
    let mut j2 = j.clone();
    j2.spec.groups[0].count = 3;
    let j2 = c.register(j2);
    let o = c.run(&j2, 1);
    for u in &o.plan.updates {
        c.set_client(&u.id, ClientStatus::Running, 2);
    }
    c.commit(&o);
    assert!(c
        .live("web")
        .iter()
        .filter(|a| a.index < 2)
        .all(|a| a.client_status == ClientStatus::Running && a.job_version == 1));
    assert_eq!(c.node_of(&c.live("web")[0]), "n1");
}

#[test]
fn a_failed_alloc_never_displaces_its_live_replacement() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 1, 500, 256)],
    ));
    let first = c.run_commit(&j, 0).plan.placements[0].clone();
    c.set_client(&first.id, ClientStatus::Failed, 10);
    // A replacement exists but the failed one was not marked replaced
    // (e.g. restored from an older snapshot).
    let mut repl = first.clone();
    repl.id = AllocId(crate::ids::IdStream::new("r", 0).next_uuid());
    repl.client_status = ClientStatus::Running;
    repl.create_index = 99;
    repl.previous_alloc = Some(first.id.clone());
    c.s.upsert_alloc(repl);
    let o = c.run(&j, 100_000);
    assert!(o.plan.is_empty(), "{:?}", o.plan);
}

/// One allocation on n1, n1 down, its allocation lost and replaced on n2,
/// n1 back: the returning original and its replacement.
fn returning_original(replacement_runs: bool) -> (Cluster, Job, Allocation, Allocation) {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192)]);
    let j = c.register(job(
        "web",
        JobType::Service,
        vec![group("web", 1, 500, 256)],
    ));
    let mut n1 = c.s.node_by_name("n1").unwrap().clone();
    let mut n2 = c.s.node_by_name("n2").unwrap().clone();
    n2.eligibility = taba_types::Eligibility::Ineligible;
    c.s.upsert_node(n2.clone());
    let first = c.run_commit(&j, 0).plan.placements[0].clone();
    assert_eq!(first.node_name, "n1");
    c.set_client(&first.id, ClientStatus::Running, 10);
    n1.status = NodeStatus::Down;
    c.s.upsert_node(n1.clone());
    n2.eligibility = taba_types::Eligibility::Eligible;
    c.s.upsert_node(n2);
    c.set_client(&first.id, ClientStatus::Lost, 20);
    let o = c.run_commit(&j, 30);
    assert_eq!(o.plan.placements.len(), 1);
    let repl = o.plan.placements[0].clone();
    assert_eq!(repl.node_name, "n2");
    assert!(c.s.alloc(&first.id).unwrap().replaced);
    if replacement_runs {
        c.set_client(&repl.id, ClientStatus::Running, 40);
    }
    n1.status = NodeStatus::Ready;
    c.s.upsert_node(n1);
    c.set_client(&first.id, ClientStatus::Running, 50);
    (c, j, first, repl)
}

#[test]
fn a_returning_original_is_stopped_when_its_replacement_runs() {
    let (mut c, j, first, repl) = returning_original(true);
    let o = c.run_commit(&j, 60);
    assert!(o.plan.placements.is_empty(), "{:?}", o.plan);
    assert_eq!(o.plan.stops.len(), 1);
    let s = &o.plan.stops[0];
    assert_eq!(s.alloc_id, first.id);
    assert_eq!(s.event.as_deref(), Some("Duplicate"));
    assert!(
        s.description.contains(repl.id.as_str()),
        "{}",
        s.description
    );
    let live = c.live("web");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, repl.id);
    // Settled: nothing more to do.
    assert!(c.run(&j, 70).plan.is_empty());
}

#[test]
fn a_replacement_not_running_yet_is_canceled_for_the_returning_original() {
    let (mut c, j, first, repl) = returning_original(false);
    let o = c.run_commit(&j, 60);
    assert!(o.plan.placements.is_empty(), "{:?}", o.plan);
    assert_eq!(o.plan.stops.len(), 1);
    assert_eq!(o.plan.stops[0].alloc_id, repl.id);
    let live = c.live("web");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, first.id);
    assert!(c.run(&j, 70).plan.is_empty());
}

#[test]
fn a_fenced_group_is_replaced_only_after_its_agent_has_stopped_it() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192)]);
    let mut g = group("web", 1, 500, 256);
    g.stop_after_disconnect = Some(taba_types::DurationSpec::secs(10));
    let kill = g.tasks[0].kill_timeout.0;
    let j = c.register(job("web", JobType::Service, vec![g]));
    let first = c.run_commit(&j, 0).plan.placements[0].clone();
    c.set_client(&first.id, ClientStatus::Running, 10);
    let mut n = c.s.node(&first.node_id).unwrap().clone();
    n.status = NodeStatus::Down;
    n.last_heartbeat = 1_000;
    c.s.upsert_node(n);
    c.set_client(&first.id, ClientStatus::Lost, 8_000);
    let due = 1_000 + 10_000 + kill + crate::schedule::FENCE_MARGIN_MS;
    let o = c.run_commit(&j, 8_000);
    assert!(o.plan.placements.is_empty(), "{:?}", o.plan);
    assert_eq!(o.follow_ups.len(), 1);
    assert_eq!(o.follow_ups[0].wait_until, Some(due));
    let o = c.run_commit(&j, due);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(
        o.plan.placements[0].previous_alloc.as_ref(),
        Some(&first.id)
    );
}

/// Mark `name` draining (ineligible, with a strategy) and ask every live
/// allocation on it to move, as the server's drainer does.
fn drain(c: &mut Cluster, name: &str) {
    let mut n = c.s.node_by_name(name).unwrap().clone();
    n.eligibility = Eligibility::Ineligible;
    n.drain = Some(DrainStrategy {
        started_at: 0,
        deadline: u64::MAX,
        ignore_system: false,
    });
    let id = n.id.clone();
    c.s.upsert_node(n);
    let on: Vec<Allocation> =
        c.s.allocs_for_node(&id)
            .filter(|a| a.is_live() && a.job_type != JobType::System)
            .cloned()
            .collect();
    for mut a in on {
        a.migrate = Some(MigrateRequest {
            reason: "node drain".into(),
            to: None,
            requested_at: 0,
            live: false,
        });
        c.s.upsert_alloc(a);
    }
}

#[test]
fn a_drain_moves_a_group_in_batches_of_max_parallel_each_after_the_last_ran() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let mut g = group("web", 6, 100, 64);
    g.migrate.max_parallel = 2;
    g.migrate.min_healthy_time = DurationSpec(0);
    let j = c.register(job("web", JobType::Service, vec![g]));
    let placed = c.run_commit(&j, 0).plan.placements;
    for a in &placed {
        c.set_client(&a.id, ClientStatus::Running, 0);
    }
    c.s.upsert_node(node("n2", 8000, 8192));
    drain(&mut c, "n1");
    let mut now = 1000;
    let mut batches = Vec::new();
    for round in 0..10 {
        let o = c.run_commit(&j, now);
        if o.plan.placements.is_empty() {
            // Everything moved: no further batch is due.
            let moves = o
                .follow_ups
                .iter()
                .filter(|f| f.triggered_by == EvalTrigger::Rebalance);
            assert_eq!(moves.count(), 0, "round {round}: {:?}", o.follow_ups);
            break;
        }
        assert_eq!(o.plan.stops.len(), o.plan.placements.len());
        for p in &o.plan.placements {
            assert_eq!(p.node_name, "n2", "never back onto the draining node");
            assert!(p.previous_alloc.is_some());
        }
        batches.push(o.plan.placements.len());
        // The batch in flight holds the next one back...
        let o = c.run(&j, now + 1);
        assert!(o.plan.placements.is_empty(), "round {round}: waits");
        let timed = o
            .follow_ups
            .iter()
            .filter(|f| f.triggered_by == EvalTrigger::Rebalance);
        assert_eq!(timed.count(), 0, "not running yet: no time to wait for");
        // ...until its replacements run.
        now += 1000;
        let ids: Vec<AllocId> = c
            .live("web")
            .into_iter()
            .filter(|a| a.client_status == ClientStatus::Pending)
            .map(|a| a.id)
            .collect();
        for id in ids {
            c.set_client(&id, ClientStatus::Running, now);
        }
    }
    assert_eq!(batches, [2, 2, 2]);
    assert!(c.live("web").iter().all(|a| c.node_of(a) == "n2"));
}

#[test]
fn a_drain_move_with_nowhere_to_go_waits_blocked_instead_of_being_dropped() {
    let mut c = Cluster::new(&[("n1", 8000, 8192)]);
    let j = c.register(job("web", JobType::Service, vec![group("web", 1, 100, 64)]));
    let a = c.run_commit(&j, 0).plan.placements[0].clone();
    c.set_client(&a.id, ClientStatus::Running, 0);
    drain(&mut c, "n1");
    let o = c.run_commit(&j, 1000);
    assert!(o.plan.is_empty(), "{:?}", o.plan);
    assert_eq!(o.status, EvalStatus::Blocked);
    let after = c.s.alloc(&a.id).unwrap();
    assert!(
        after.is_live() && after.migrate.is_some(),
        "the request stays"
    );
    // Room appears: the blocked evaluation, run again, moves it.
    c.s.upsert_node(node("n2", 8000, 8192));
    let o = c.run_commit(&j, 2000);
    assert_eq!(o.plan.placements.len(), 1);
    assert_eq!(o.plan.placements[0].node_name, "n2");
}

#[test]
fn system_allocations_stay_on_a_draining_node_and_none_are_placed_there() {
    let mut c = Cluster::new(&[("n1", 8000, 8192), ("n2", 8000, 8192)]);
    let j = c.register(job("sys", JobType::System, vec![group("s", 1, 100, 64)]));
    assert_eq!(c.run_commit(&j, 0).plan.placements.len(), 2);
    drain(&mut c, "n1");
    c.s.upsert_node(node("n3", 8000, 8192));
    let o = c.run_commit(&j, 1000);
    assert!(o.plan.stops.is_empty(), "the drainer stops them, last");
    let on: Vec<&str> = o
        .plan
        .placements
        .iter()
        .map(|p| p.node_name.as_str())
        .collect();
    assert_eq!(on, ["n3"]);
}

/// A cluster whose nodes have the `vm` driver, and a one-VM group
/// (`disks`: with a local disk).
fn vm_cluster(disks: bool) -> (Cluster, TaskGroupSpec) {
    let mut c = Cluster::new(&[]);
    for n in ["n1", "n2"] {
        let mut n = node(n, 8000, 8192);
        n.drivers.insert(
            "vm".into(),
            DriverInfo {
                detected: true,
                healthy: true,
                description: String::new(),
            },
        );
        c.s.upsert_node(n);
    }
    let mut task = serde_json::json!({"name": "t", "driver": "vm", "kernel": "k",
        "resources": {"cpu": 500, "memory": "256MiB"}});
    if disks {
        task["disks"] = serde_json::json!([{"size": "1GiB"}]);
    }
    let g: TaskGroupSpec =
        serde_json::from_value(serde_json::json!({"name": "vm", "count": 1, "task": [task]}))
            .unwrap();
    (c, g)
}

#[test]
fn a_live_move_places_its_target_and_keeps_the_source_running_until_the_servers_end_it() {
    let (mut c, g) = vm_cluster(false);
    assert!(g.migrates_live());
    let j = c.register(job("vm", JobType::Service, vec![g]));
    let src = c.run_commit(&j, 0).plan.placements[0].clone();
    c.set_client(&src.id, ClientStatus::Running, 0);
    let to = if c.node_of(&src) == "n1" { "n2" } else { "n1" };
    let mut a = c.s.alloc(&src.id).unwrap().clone();
    a.migrate = Some(MigrateRequest {
        reason: "alloc migrate".into(),
        to: Some(c.s.node_by_name(to).unwrap().id.clone()),
        requested_at: 0,
        live: true,
    });
    c.s.upsert_alloc(a);
    let o = c.run_commit(&j, 1000);
    assert!(
        o.plan.stops.is_empty(),
        "the source runs on: {:?}",
        o.plan.stops
    );
    assert_eq!(o.plan.placements.len(), 1);
    let target = o.plan.placements[0].clone();
    assert_eq!(target.node_name, to);
    assert!(target.is_migration_target());
    let source = c.s.alloc(&src.id).unwrap().clone();
    assert!(source.is_migration_source() && source.migrate.is_none());
    assert_eq!(source.live_migration, target.live_migration);
    // While it runs the target is no second instance, and nothing else moves.
    let o = c.run(&j, 2000);
    assert!(o.plan.is_empty(), "{:?}", o.plan);
    // An update computed from an older snapshot never brings back an
    // ended migration.
    let mut ended = source.clone();
    ended.live_migration = None;
    assert!(!crate::starts_live_migration(&ended, &ended.clone()));
    assert!(crate::starts_live_migration(&ended, &source));
    // The source goes away before the target ran: the target is stopped.
    let mut s = source.clone();
    s.desired_status = DesiredStatus::Stop;
    c.s.upsert_alloc(s);
    let o = c.run(&j, 3000);
    assert_eq!(o.plan.stops.len(), 1, "{:?}", o.plan);
    assert_eq!(o.plan.stops[0].alloc_id, target.id);
    assert!(o.plan.stops[0]
        .description
        .contains("live migration abandoned"));
}

#[test]
fn vms_with_local_disks_wait_for_a_lost_node_unless_their_group_restarts_them() {
    for restart in [false, true] {
        let (mut c, mut g) = vm_cluster(true);
        assert!(g.has_local_disks());
        g.migrate.restart_on_node_loss = restart;
        let j = c.register(job("vm", JobType::Service, vec![g]));
        let a = c.run_commit(&j, 0).plan.placements[0].clone();
        c.set_client(&a.id, ClientStatus::Running, 0);
        let mut n = c.s.node(&a.node_id).unwrap().clone();
        n.status = NodeStatus::Down;
        c.s.upsert_node(n);
        let o = c.run(&j, 100);
        assert_eq!(
            o.plan.placements.len(),
            usize::from(restart),
            "{:?}",
            o.plan
        );
        // Marked lost by the servers: the same.
        c.set_client(&a.id, ClientStatus::Lost, 200);
        let o = c.run(&j, 200);
        assert_eq!(
            o.plan.placements.len(),
            usize::from(restart),
            "{:?}",
            o.plan
        );
    }
}
