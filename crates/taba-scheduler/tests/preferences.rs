//! Golden scenarios for the soft placement preferences: `spread` blocks,
//! node and allocation affinities, and `scoring = "spread"`. Each builds a
//! small cluster, schedules a job through the public `schedule` and
//! `apply_plan`, and checks where the allocations went.

use std::collections::BTreeMap;
use taba_scheduler::{apply_plan, schedule, verify_plan, ClusterState};
use taba_types::*;

/// A ready node with the exec driver, `cpu` MHz and `mem` MiB, in `dc`,
/// with `meta.rack = rack` (no rack when empty).
fn node(name: &str, dc: &str, rack: &str, cpu: u64, mem: u64) -> Node {
    let mut drivers = BTreeMap::new();
    drivers.insert(
        "exec".to_string(),
        DriverInfo {
            detected: true,
            healthy: true,
            description: String::new(),
        },
    );
    let mut meta = BTreeMap::new();
    if !rack.is_empty() {
        meta.insert("rack".to_string(), rack.to_string());
    }
    Node {
        id: NodeId(format!("id-{name}")),
        name: name.into(),
        datacenter: dc.into(),
        status: NodeStatus::Ready,
        eligibility: Eligibility::Eligible,
        drain: None,
        drained_at: None,
        http_addr: String::new(),
        attributes: BTreeMap::new(),
        meta,
        resources: NodeResources {
            cores: 4,
            cpu,
            memory: ByteSize::mib(mem),
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

/// A job from the JSON form of a job file, with one exec group `web` of
/// `count` allocations of 100 MHz / 64 MiB unless `group` overrides them.
fn job(name: &str, count: u32, top: serde_json::Value, group: serde_json::Value) -> Job {
    let mut g = serde_json::json!({
        "name": "web", "count": count,
        "task": [{"name": "t", "driver": "exec", "command": ["/bin/true"],
                  "resources": {"cpu": 100, "memory": "64MiB"}}]
    });
    for (k, v) in group.as_object().unwrap() {
        g[k] = v.clone();
    }
    let mut spec = serde_json::json!({"name": name, "group": [g]});
    for (k, v) in top.as_object().unwrap() {
        spec[k] = v.clone();
    }
    // Through the real parser, so the syntax is checked too.
    let spec = parse::parse_job_json(spec.to_string().as_bytes()).expect("valid job");
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

fn eval(j: &Job) -> Evaluation {
    Evaluation {
        id: EvalId(format!("eval-{}", j.spec.name)),
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

fn cluster(nodes: Vec<Node>) -> ClusterState {
    let mut s = ClusterState::new();
    for n in nodes {
        s.upsert_node(n);
    }
    s.set_index(1);
    s
}

/// Register and schedule `j`, commit its plan; the outcome.
fn run(s: &mut ClusterState, j: &Job) -> SchedulerOutcome {
    s.upsert_job(j.clone());
    let out = schedule(s, &eval(j), 1000);
    assert_eq!(out, schedule(&s.clone(), &eval(j), 1000), "deterministic");
    verify_plan(s, &out.plan).expect("plan verifies");
    let idx = s.index() + 1;
    apply_plan(s, &out.plan, idx);
    out
}

/// Live allocations of `job` per value of `key(node)`.
fn count_by(s: &ClusterState, job: &str, key: impl Fn(&Node) -> String) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in s.allocs_for_job("default", job).filter(|a| a.is_live()) {
        *m.entry(key(s.node(&a.node_id).unwrap())).or_default() += 1;
    }
    m
}

fn rack(n: &Node) -> String {
    n.meta.get("rack").cloned().unwrap_or_else(|| "-".into())
}

fn name(n: &Node) -> String {
    n.name.clone()
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn two_racks() -> Vec<Node> {
    vec![
        node("a1", "dc1", "r1", 4000, 4096),
        node("a2", "dc1", "r1", 4000, 4096),
        node("b1", "dc1", "r2", 4000, 4096),
        node("b2", "dc1", "r2", 4000, 4096),
    ]
}

#[test]
fn spread_70_30_gives_7_and_3() {
    let mut s = cluster(two_racks());
    let spread = serde_json::json!({"spread": [{"attribute": "${meta.rack}", "weight": 50,
        "target": [{"value": "r1", "percent": 70}, {"value": "r2", "percent": 30}]}]});
    let out = run(
        &mut s,
        &job("web", 10, serde_json::json!({}), spread.clone()),
    );
    assert_eq!(out.status, EvalStatus::Complete);
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 7), ("r2", 3)]));
    // The same spread at job level, and with the targets listed the other
    // way round, gives the same counts.
    let mut s = cluster(two_racks());
    let top = serde_json::json!({"spread": [{"attribute": "${meta.rack}",
        "target": [{"value": "r2", "percent": 30}, {"value": "r1", "percent": 70}]}]});
    run(&mut s, &job("web", 10, top, serde_json::json!({})));
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 7), ("r2", 3)]));
}

#[test]
fn spread_targets_hold_when_scaling_up() {
    let mut s = cluster(two_racks());
    let spread = serde_json::json!({"spread": [{"attribute": "${meta.rack}",
        "target": [{"value": "r1", "percent": 70}, {"value": "r2", "percent": 30}]}]});
    let mut j = job("web", 4, serde_json::json!({}), spread.clone());
    run(&mut s, &j);
    j.version += 1;
    j.spec.groups[0].count = 10;
    run(&mut s, &j);
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 7), ("r2", 3)]));
}

#[test]
fn unlisted_values_share_the_rest() {
    let mut nodes = two_racks();
    nodes.push(node("c1", "dc1", "r3", 4000, 4096));
    nodes.push(node("d1", "dc1", "r4", 4000, 4096));
    let mut s = cluster(nodes);
    // r1 gets 40%, r2, r3 and r4 share the other 60%.
    let spread = serde_json::json!({"spread": [{"attribute": "${meta.rack}",
        "target": [{"value": "r1", "percent": 40}]}]});
    run(&mut s, &job("web", 10, serde_json::json!({}), spread));
    assert_eq!(
        count_by(&s, "web", rack),
        counts(&[("r1", 4), ("r2", 2), ("r3", 2), ("r4", 2)])
    );
}

#[test]
fn even_spread_gives_3_3_3() {
    let nodes = vec![
        node("a1", "dc1", "r1", 4000, 4096),
        node("b1", "dc1", "r2", 4000, 4096),
        node("c1", "dc1", "r3", 4000, 4096),
        node("c2", "dc1", "r3", 8000, 8192),
    ];
    let mut s = cluster(nodes);
    let spread = serde_json::json!({"spread": [{"attribute": "${meta.rack}"}]});
    run(&mut s, &job("web", 9, serde_json::json!({}), spread));
    assert_eq!(
        count_by(&s, "web", rack),
        counts(&[("r1", 3), ("r2", 3), ("r3", 3)])
    );
}

#[test]
fn spread_across_datacenters() {
    let nodes = vec![
        node("a1", "dc1", "r1", 4000, 4096),
        node("a2", "dc1", "r2", 4000, 4096),
        node("b1", "dc2", "r1", 4000, 4096),
        node("c1", "dc3", "r1", 4000, 4096),
    ];
    let mut s = cluster(nodes);
    let spread = serde_json::json!({"spread": [{"attribute": "${node.datacenter}"}]});
    run(&mut s, &job("web", 6, serde_json::json!({}), spread));
    assert_eq!(
        count_by(&s, "web", |n| n.datacenter.clone()),
        counts(&[("dc1", 2), ("dc2", 2), ("dc3", 2)])
    );
    // With targets, and a constraint that leaves dc3 out.
    let mut s = cluster(vec![
        node("a1", "dc1", "r1", 4000, 4096),
        node("b1", "dc2", "r1", 4000, 4096),
        node("c1", "dc3", "r1", 4000, 4096),
    ]);
    let top = serde_json::json!({
        "constraint": [{"attribute": "${node.datacenter}", "operator": "!=", "value": "dc3"}],
        "spread": [{"attribute": "${node.datacenter}",
            "target": [{"value": "dc1", "percent": 25}, {"value": "dc2", "percent": 75}]}]});
    run(&mut s, &job("web", 8, top, serde_json::json!({})));
    assert_eq!(
        count_by(&s, "web", |n| n.datacenter.clone()),
        counts(&[("dc1", 2), ("dc2", 6)])
    );
}

#[test]
fn spread_falls_back_when_a_target_has_no_capacity() {
    // r1 holds 4 allocations of 1000 MHz at most; 70% of 10 would be 7.
    let nodes = vec![
        node("a1", "dc1", "r1", 2000, 4096),
        node("a2", "dc1", "r1", 2000, 4096),
        node("b1", "dc1", "r2", 8000, 8192),
        node("b2", "dc1", "r2", 8000, 8192),
    ];
    let mut s = cluster(nodes);
    let g = serde_json::json!({
        "task": [{"name": "t", "driver": "exec", "command": ["/bin/true"],
                  "resources": {"cpu": 1000, "memory": "64MiB"}}],
        "spread": [{"attribute": "${meta.rack}",
            "target": [{"value": "r1", "percent": 70}, {"value": "r2", "percent": 30}]}]});
    let out = run(&mut s, &job("web", 10, serde_json::json!({}), g));
    assert_eq!(
        out.status,
        EvalStatus::Complete,
        "{}",
        out.status_description
    );
    assert_eq!(out.plan.placements.len(), 10);
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 4), ("r2", 6)]));
}

#[test]
fn nodes_without_the_attribute_come_last() {
    let nodes = vec![
        node("a1", "dc1", "r1", 300, 4096), // room for 3
        node("x1", "dc1", "", 8000, 8192),  // no rack
    ];
    let mut s = cluster(nodes);
    let spread = serde_json::json!({"spread": [{"attribute": "${meta.rack}"}]});
    run(&mut s, &job("web", 5, serde_json::json!({}), spread));
    // Not filtered: the two that do not fit on r1 go to the node without a rack.
    assert_eq!(count_by(&s, "web", rack), counts(&[("-", 2), ("r1", 3)]));
}

#[test]
fn affinity_100_takes_r1_while_it_has_room() {
    let nodes = vec![
        node("a1", "dc1", "r1", 300, 4096), // room for 3
        node("b1", "dc1", "r2", 8000, 8192),
    ];
    let mut s = cluster(nodes);
    // Bin-packing alone would prefer b1 once it holds something: fill it.
    let filler = job(
        "filler",
        1,
        serde_json::json!({"constraint": [{"attribute": "${node.name}", "value": "b1"}]}),
        serde_json::json!({"task": [{"name": "t", "driver": "exec", "command": ["/bin/true"],
            "resources": {"cpu": 7000, "memory": "7000MiB"}}]}),
    );
    run(&mut s, &filler);
    let aff = serde_json::json!({"affinity": [
        {"attribute": "${meta.rack}", "operator": "=", "value": "r1", "weight": 100}]});
    run(&mut s, &job("web", 5, serde_json::json!({}), aff));
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 3), ("r2", 2)]));
}

#[test]
fn anti_affinity_avoids_r1_while_alternatives_exist() {
    let nodes = vec![
        node("a1", "dc1", "r1", 8000, 8192),
        node("b1", "dc1", "r2", 300, 4096), // room for 3
    ];
    let mut s = cluster(nodes);
    // a1 is the fuller node: bin-packing alone would pick it.
    let filler = job(
        "filler",
        1,
        serde_json::json!({"constraint": [{"attribute": "${node.name}", "value": "a1"}]}),
        serde_json::json!({"task": [{"name": "t", "driver": "exec", "command": ["/bin/true"],
            "resources": {"cpu": 6000, "memory": "6000MiB"}}]}),
    );
    run(&mut s, &filler);
    // A task-level anti-affinity counts like a group one.
    let g = serde_json::json!({"task": [{"name": "t", "driver": "exec", "command": ["/bin/true"],
        "resources": {"cpu": 100, "memory": "64MiB"},
        "affinity": [{"attribute": "${meta.rack}", "value": "r1", "weight": -100}]}]});
    let out = run(&mut s, &job("web", 5, serde_json::json!({}), g));
    assert_eq!(out.status, EvalStatus::Complete);
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 2), ("r2", 3)]));
}

#[test]
fn the_heavier_affinity_wins() {
    let mut s = cluster(two_racks());
    let aff = serde_json::json!({"affinity": [
        {"attribute": "${meta.rack}", "value": "r1", "weight": 20},
        {"attribute": "${meta.rack}", "value": "r2", "weight": 80}]});
    run(&mut s, &job("web", 4, serde_json::json!({}), aff));
    assert_eq!(count_by(&s, "web", rack), counts(&[("r2", 4)]));
    // Job-level 80 to r1 against group-level 20 to r2: r1.
    let mut s = cluster(two_racks());
    let top = serde_json::json!({"affinity": [
        {"attribute": "${meta.rack}", "value": "r1", "weight": 80}]});
    let g = serde_json::json!({"affinity": [
        {"attribute": "${meta.rack}", "value": "r2", "weight": 20}]});
    run(&mut s, &job("web", 4, top, g));
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 4)]));
}

/// A `cache` job with group `redis`, one allocation pinned to node `on`.
fn cache_on(s: &mut ClusterState, on: &str) {
    let mut cache = job(
        "cache",
        1,
        serde_json::json!({"constraint": [{"attribute": "${node.name}", "value": on}]}),
        serde_json::json!({}),
    );
    cache.spec.groups[0].name = "redis".into();
    run(s, &cache);
}

#[test]
fn alloc_affinity_co_locates_with_the_other_job() {
    let mut s = cluster(two_racks());
    cache_on(&mut s, "b2");
    let aff = serde_json::json!({"affinity": [{"job": "cache", "group": "redis", "weight": 80}]});
    run(&mut s, &job("web", 3, serde_json::json!({}), aff));
    assert_eq!(count_by(&s, "web", name), counts(&[("b2", 3)]));
    // By rack: any node of the rack that hosts the cache.
    let mut s = cluster(two_racks());
    cache_on(&mut s, "b2");
    let aff = serde_json::json!({"affinity": [
        {"job": "cache", "attribute": "${meta.rack}", "weight": 100}]});
    let g = serde_json::json!({"affinity": aff["affinity"].clone(),
        "constraint": [{"attribute": "${node.name}", "operator": "!=", "value": "b2"}]});
    run(&mut s, &job("web", 3, serde_json::json!({}), g));
    assert_eq!(count_by(&s, "web", rack), counts(&[("r2", 3)]));
    // Another group of the cache job does not count: an anti-affinity to
    // it leaves bin-packing to pick the node in use, b2.
    let mut s = cluster(two_racks());
    cache_on(&mut s, "b2");
    let aff = serde_json::json!({"affinity": [{"job": "cache", "group": "other", "weight": -100}]});
    run(&mut s, &job("web", 3, serde_json::json!({}), aff));
    assert_eq!(count_by(&s, "web", name), counts(&[("b2", 3)]));
}

#[test]
fn alloc_anti_affinity_avoids_the_other_job() {
    let mut s = cluster(two_racks());
    cache_on(&mut s, "a1");
    // Without the anti-affinity, bin-packing would fill a1 (it is in use).
    let aff = serde_json::json!({"affinity": [
        {"job": "cache", "attribute": "${meta.rack}", "weight": -100}]});
    run(&mut s, &job("web", 3, serde_json::json!({}), aff));
    assert_eq!(count_by(&s, "web", rack), counts(&[("r2", 3)]));
}

#[test]
fn anti_affinity_to_its_own_job_spreads_over_nodes() {
    let mut s = cluster(two_racks());
    let aff = serde_json::json!({"affinity": [{"job": "web", "weight": -100}]});
    run(&mut s, &job("web", 4, serde_json::json!({}), aff.clone()));
    assert_eq!(
        count_by(&s, "web", name),
        counts(&[("a1", 1), ("a2", 1), ("b1", 1), ("b2", 1)])
    );
}

#[test]
fn scoring_spread_uses_three_empty_nodes() {
    let nodes = vec![
        node("n1", "dc1", "r1", 4000, 4096),
        node("n2", "dc1", "r1", 4000, 4096),
        node("n3", "dc1", "r1", 4000, 4096),
    ];
    let mut s = cluster(nodes.clone());
    run(
        &mut s,
        &job(
            "web",
            3,
            serde_json::json!({"scoring": "spread"}),
            serde_json::json!({}),
        ),
    );
    assert_eq!(
        count_by(&s, "web", name),
        counts(&[("n1", 1), ("n2", 1), ("n3", 1)])
    );
    // Bin-packing (the default) puts all three on one node.
    let mut s = cluster(nodes);
    run(
        &mut s,
        &job("web", 3, serde_json::json!({}), serde_json::json!({})),
    );
    assert_eq!(count_by(&s, "web", name).len(), 1);
}

#[test]
fn distinct_hosts_stays_hard_under_affinity() {
    let mut s = cluster(two_racks());
    let g = serde_json::json!({
        "constraint": [{"operator": "distinct_hosts"}],
        "affinity": [{"attribute": "${meta.rack}", "value": "r1", "weight": 100}]});
    let out = run(&mut s, &job("web", 3, serde_json::json!({}), g));
    assert_eq!(out.plan.placements.len(), 3);
    let by_node = count_by(&s, "web", name);
    assert!(by_node.values().all(|n| *n == 1), "{by_node:?}");
    assert_eq!(count_by(&s, "web", rack), counts(&[("r1", 2), ("r2", 1)]));
}

#[test]
fn spread_placement_on_10000_nodes_completes() {
    // No timing here (benchmarks live elsewhere): it must finish, and meet
    // its targets.
    let nodes = (0..10_000)
        .map(|i| {
            node(
                &format!("n{i:05}"),
                "dc1",
                &format!("r{}", i % 10),
                4000,
                4096,
            )
        })
        .collect();
    let mut s = cluster(nodes);
    let spread = serde_json::json!({"spread": [{"attribute": "${meta.rack}"}],
        "affinity": [{"attribute": "${meta.rack}", "operator": "regexp", "value": "^r[0-4]$", "weight": 10}]});
    let out = run(&mut s, &job("web", 300, serde_json::json!({}), spread));
    assert_eq!(out.plan.placements.len(), 300);
    let by_rack = count_by(&s, "web", rack);
    assert_eq!(by_rack.len(), 10);
    assert!(by_rack.values().all(|n| *n == 30), "{by_rack:?}");
}
