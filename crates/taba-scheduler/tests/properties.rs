//! Property tests of the scheduler: on random clusters and workloads, no node
//! is ever overcommitted, every constraint holds for every placement, no two
//! live allocations on a node share a host port, preemption evicts only lower
//! priority (by the delta) of other jobs, and the same input (or the same
//! simulator seed) gives the same plan.

use proptest::prelude::*;
use std::collections::BTreeMap;
use taba_scheduler::sim::{self, Mix, SimConfig};
use taba_scheduler::{
    apply_plan, constraint_holds, schedule, schedule_with, verify_plan, ClusterState,
    ScheduleOptions, PREEMPTION_PRIORITY_DELTA,
};
use taba_types::*;

#[derive(Clone, Debug)]
struct NodeGen {
    cpu: u64,
    mem_mib: u64,
    rack: u8,
    has_container: bool,
    eligible: bool,
}

#[derive(Clone, Debug)]
struct GroupGen {
    count: u32,
    cpu: u64,
    mem_mib: u64,
    container: bool,
    constraint: Option<u8>,
    /// Soft preferences (see `preferences`), often none.
    prefs: Option<u8>,
    /// 0: no ports; 1: static 8080; 2: one dynamic; 3: static 9000 + two dynamic.
    ports: u8,
}

#[derive(Clone, Debug)]
struct JobGen {
    job_type: u8,
    groups: Vec<GroupGen>,
    job_constraint: Option<u8>,
    distinct_hosts: bool,
    spread_scoring: bool,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        500u64..8000,
        256u64..8192,
        0u8..4,
        any::<bool>(),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(cpu, mem_mib, rack, has_container, eligible)| NodeGen {
            cpu,
            mem_mib,
            rack,
            has_container,
            eligible,
        })
}

fn group_gen() -> impl Strategy<Value = GroupGen> {
    (
        0u32..8,
        50u64..3000,
        32u64..3000,
        prop::bool::weighted(0.3),
        prop::option::of(0u8..5),
        prop::option::weighted(0.4, 0u8..8),
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
    )
        .prop_map(
            |(count, cpu, mem_mib, container, constraint, prefs, ports)| GroupGen {
                count,
                cpu,
                mem_mib,
                container,
                constraint,
                prefs,
                ports,
            },
        )
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        0u8..3,
        prop::collection::vec(group_gen(), 1..3),
        prop::option::of(0u8..5),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(job_type, groups, job_constraint, distinct_hosts, spread_scoring)| JobGen {
                job_type,
                groups,
                job_constraint,
                distinct_hosts,
                spread_scoring,
            },
        )
}

fn constraint(k: u8) -> Constraint {
    let (attribute, operator, value) = match k {
        0 => ("${meta.rack}", ConstraintOperator::Ne, "r0"),
        1 => ("${meta.rack}", ConstraintOperator::Regexp, "^r[12]$"),
        2 => ("${attr.cpu.mhz}", ConstraintOperator::Ge, "2000"),
        3 => ("${node.name}", ConstraintOperator::Ne, "n1"),
        _ => (
            "${attr.kernel.version}",
            ConstraintOperator::Version,
            ">= 6.0",
        ),
    };
    Constraint {
        attribute: attribute.into(),
        operator,
        value: value.into(),
    }
}

/// Spreads and affinities of a generated group, by kind.
fn preferences(k: u8) -> (Vec<Spread>, Vec<Affinity>) {
    let spread = |targets: Vec<(&str, u32)>| Spread {
        attribute: "${meta.rack}".into(),
        weight: 50,
        targets: targets
            .into_iter()
            .map(|(value, percent)| SpreadTarget {
                value: value.into(),
                percent,
            })
            .collect(),
    };
    let node_aff = |value: &str, weight: i32| Affinity {
        attribute: "${meta.rack}".into(),
        operator: None,
        value: Some(value.into()),
        job: None,
        group: None,
        weight,
    };
    let alloc_aff = |job: &str, attribute: &str, weight: i32| Affinity {
        attribute: attribute.into(),
        operator: None,
        value: None,
        job: Some(job.into()),
        group: None,
        weight,
    };
    match k {
        0 => (vec![spread(vec![])], vec![]),
        1 => (vec![spread(vec![("r1", 70), ("r2", 30)])], vec![]),
        2 => (vec![], vec![node_aff("r1", 100)]),
        3 => (vec![], vec![node_aff("r2", -100), node_aff("r3", 40)]),
        4 => (vec![], vec![alloc_aff("job0", "", 80)]),
        5 => (vec![], vec![alloc_aff("job0", "${meta.rack}", -60)]),
        6 => (
            vec![spread(vec![("r0", 50)])],
            vec![alloc_aff("job1", "", -100)],
        ),
        _ => (
            vec![Spread {
                attribute: "${node.datacenter}".into(),
                weight: 10,
                targets: Vec::new(),
            }],
            vec![node_aff("r0", 20)],
        ),
    }
}

fn make_node(i: usize, g: &NodeGen) -> Node {
    let mut drivers = BTreeMap::new();
    let info = DriverInfo {
        detected: true,
        healthy: true,
        description: String::new(),
    };
    drivers.insert("exec".to_string(), info.clone());
    if g.has_container {
        drivers.insert("container".to_string(), info);
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("cpu.mhz".to_string(), g.cpu.to_string());
    attributes.insert(
        "kernel.version".to_string(),
        match i % 3 {
            0 => "5.10.0",
            _ => "6.1.0",
        }
        .to_string(),
    );
    let mut meta = BTreeMap::new();
    meta.insert("rack".to_string(), format!("r{}", g.rack));
    Node {
        id: NodeId(format!("node-{i}")),
        name: format!("n{i}"),
        datacenter: format!("dc{}", i % 2 + 1),
        status: NodeStatus::Ready,
        eligibility: if g.eligible {
            Eligibility::Eligible
        } else {
            Eligibility::Ineligible
        },
        drain: None,
        drained_at: None,
        http_addr: String::new(),
        attributes,
        meta,
        resources: NodeResources {
            cores: 4,
            cpu: g.cpu,
            memory: ByteSize::mib(g.mem_mib),
            disk: ByteSize::mib(10_000),
        },
        reserved: NodeResources::default(),
        // Small ranges so that dynamic ports run out and collide if they can.
        reserved_ports: PortRanges::parse(if i.is_multiple_of(2) { "22,20002" } else { "" })
            .unwrap(),
        dynamic_ports: PortRange::parse("20000-20007").unwrap(),
        drivers,
        last_heartbeat: 0,
        usage: NodeUsage::default(),
        unusable_reason: String::new(),
        create_index: 0,
        modify_index: 0,
    }
}

fn port_specs(kind: u8) -> Vec<PortSpec> {
    let p = |label: &str, static_port: Option<u32>| PortSpec {
        label: label.into(),
        static_port,
    };
    match kind {
        1 => vec![p("http", Some(8080))],
        2 => vec![p("m", None)],
        3 => vec![p("a", None), p("fixed", Some(9000)), p("b", None)],
        _ => Vec::new(),
    }
}

fn make_job(i: usize, g: &JobGen) -> Job {
    let job_type = [JobType::Service, JobType::Batch, JobType::System][g.job_type as usize];
    let groups = g
        .groups
        .iter()
        .enumerate()
        .map(|(k, gg)| {
            let mut constraints: Vec<Constraint> =
                gg.constraint.map(constraint).into_iter().collect();
            if g.distinct_hosts {
                constraints.push(Constraint {
                    attribute: String::new(),
                    operator: ConstraintOperator::DistinctHosts,
                    value: String::new(),
                });
            }
            // System jobs take no preferences (validation rejects them).
            let (spread, affinity) = match gg.prefs {
                Some(p) if job_type != JobType::System => preferences(p),
                _ => (Vec::new(), Vec::new()),
            };
            TaskGroupSpec {
                name: format!("g{k}"),
                count: gg.count,
                constraints,
                spread,
                affinity,
                restart: None,
                reschedule: None,
                network: NetworkSpec {
                    mode: NetworkMode::Host,
                    ports: port_specs(gg.ports),
                },
                migrate: Default::default(),
                stop_after_disconnect: None,
                meta: BTreeMap::new(),
                tasks: vec![TaskSpec {
                    name: "t".into(),
                    driver: if gg.container { "container" } else { "exec" }.into(),
                    image: gg.container.then(|| "busybox:latest".into()),
                    entrypoint: None,
                    command: vec!["/bin/true".into()],
                    env: BTreeMap::new(),
                    user: None,
                    workdir: None,
                    hostname: None,
                    resources: Resources {
                        cpu: gg.cpu,
                        memory: ByteSize::mib(gg.mem_mib),
                        disk: ByteSize(0),
                        pids: 64,
                    },
                    constraints: Vec::new(),
                    affinity: Vec::new(),
                    kill_signal: None,
                    kill_timeout: DurationSpec::secs(1),
                    cap_add: Vec::new(),
                    cap_drop: Vec::new(),
                    ulimits: Default::default(),
                    no_new_privileges: false,
                    user_namespace: None,
                    vcpus: None,
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                    machine: None,
                    accel: None,
                    disks: Vec::new(),
                    network: None,
                    boot_disk: None,
                    firmware: None,
                    user_data: None,
                    meta_data: None,
                    network_config: None,
                }],
            }
        })
        .collect();
    Job {
        spec: JobSpec {
            name: format!("job{i}"),
            job_type,
            namespace: "default".into(),
            priority: 50,
            constraints: g.job_constraint.map(constraint).into_iter().collect(),
            scoring: if g.spread_scoring && job_type != JobType::System {
                Scoring::Spread
            } else {
                Scoring::Binpack
            },
            spread: Vec::new(),
            affinity: Vec::new(),
            update: UpdatePolicy::default(),
            meta: BTreeMap::new(),
            groups,
        },
        version: 0,
        status: JobStatus::Pending,
        stopped: false,
        submit_time: 0,
        create_index: 0,
        modify_index: 0,
    }
}

fn eval(j: &Job, n: usize) -> Evaluation {
    Evaluation {
        id: EvalId(format!("eval-{}-{n}", j.spec.name)),
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

/// Every invariant the scheduler promises, checked on the whole state.
fn check_invariants(s: &ClusterState) -> Result<(), TestCaseError> {
    for n in s.nodes() {
        let used = s.node_used(&n.id);
        let cap = n.allocatable();
        prop_assert!(
            used.exceeds(&cap).is_none(),
            "node {} overcommitted: {used:?} > {cap:?}",
            n.name
        );
    }
    let mut per_node_job: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for a in s.allocs().filter(|a| a.is_live()) {
        let n = s.node(&a.node_id).expect("placed on a known node");
        let job = s.job(&a.namespace, &a.job).expect("job exists");
        for t in &a.group_spec.tasks {
            prop_assert!(
                n.has_driver(&t.driver),
                "{} on {} lacks driver {}",
                a.name,
                n.name,
                t.driver
            );
        }
        let all = job
            .spec
            .constraints
            .iter()
            .chain(a.group_spec.constraints.iter());
        for c in all {
            prop_assert!(
                constraint_holds(c, n),
                "{} on {} breaks {c}",
                a.name,
                n.name
            );
            if c.operator == ConstraintOperator::DistinctHosts {
                *per_node_job
                    .entry((a.job.clone(), a.group.clone(), n.name.clone()))
                    .or_default() += 1;
            }
        }
    }
    for (k, v) in per_node_job {
        prop_assert!(v <= 1, "distinct_hosts broken: {k:?} has {v}");
    }
    // Host ports: never shared by two live allocations of a node, never
    // reserved, dynamic ones inside the node's range, one per label asked.
    let mut ports: BTreeMap<(String, u16), String> = BTreeMap::new();
    for a in s.allocs().filter(|a| a.is_live()) {
        let n = s.node(&a.node_id).expect("placed on a known node");
        prop_assert_eq!(
            a.ports.len(),
            a.group_spec.network.ports.len(),
            "{} ports",
            a.name
        );
        for p in &a.ports {
            prop_assert!(
                !n.reserved_ports.contains(p.value),
                "{} got reserved port {}",
                a.name,
                p.value
            );
            prop_assert!(
                !p.dynamic || n.dynamic_ports.contains(p.value),
                "{} port {} out of range",
                a.name,
                p.value
            );
            if let Some(other) = ports.insert((n.name.clone(), p.value), a.name.clone()) {
                prop_assert!(
                    false,
                    "port {} on {} held by {} and {}",
                    p.value,
                    n.name,
                    other,
                    a.name
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn placements_never_overcommit_and_respect_constraints(
        nodes in prop::collection::vec(node_gen(), 1..10),
        jobs in prop::collection::vec(job_gen(), 1..6),
        scale in prop::collection::vec((0usize..6, 0u32..10), 0..4),
        down in prop::option::of(0usize..10),
    ) {
        let mut s = ClusterState::new();
        for (i, n) in nodes.iter().enumerate() {
            s.upsert_node(make_node(i, n));
        }
        let mut evals = 0;
        let mut run = |s: &mut ClusterState, j: &Job| -> Result<(), TestCaseError> {
            evals += 1;
            let e = eval(j, evals);
            let out = schedule(s, &e, 1000);
            // Deterministic: the same state, evaluation and time give the same outcome.
            prop_assert_eq!(&out, &schedule(&s.clone(), &e, 1000));
            prop_assert!(verify_plan(s, &out.plan).is_ok(), "fresh plan rejected: {:?}", verify_plan(s, &out.plan));
            let idx = s.index() + 1;
            apply_plan(s, &out.plan, idx);
            // The agents stop what was stopped.
            for st in &out.plan.stops {
                let mut a = s.alloc(&st.alloc_id).unwrap().clone();
                a.client_status = ClientStatus::Complete;
                s.upsert_alloc(a);
            }
            check_invariants(s)
        };
        let mut registered: Vec<Job> = jobs.iter().enumerate().map(|(i, g)| make_job(i, g)).collect();
        for j in &registered {
            prop_assert!(validate::validate_job(&j.spec).is_ok(), "generated job invalid: {:?}", validate::validate_job(&j.spec));
        }
        for j in &registered {
            s.upsert_job(j.clone());
            run(&mut s, j)?;
        }
        for (which, count) in scale {
            if let Some(j) = registered.get_mut(which) {
                j.version += 1;
                for g in &mut j.spec.groups {
                    g.count = count;
                }
                s.upsert_job(j.clone());
                let j = j.clone();
                run(&mut s, &j)?;
            }
        }
        if let Some(d) = down {
            let picked = s.nodes().nth(d).cloned();
            if let Some(mut n) = picked {
                n.status = NodeStatus::Down;
                s.upsert_node(n);
                for j in registered.clone() {
                    run(&mut s, &j)?;
                }
            }
        }
    }

    #[test]
    fn a_stale_plan_never_overcommits(
        nodes in prop::collection::vec(node_gen(), 1..5),
        a in job_gen(),
        b in job_gen(),
    ) {
        let mut s = ClusterState::new();
        for (i, n) in nodes.iter().enumerate() {
            s.upsert_node(make_node(i, n));
        }
        let (ja, jb) = (make_job(0, &a), make_job(1, &b));
        s.upsert_job(ja.clone());
        s.upsert_job(jb.clone());
        // Both planned on the same snapshot; applied in turn where they verify.
        let pa = schedule(&s, &eval(&ja, 1), 0);
        let pb = schedule(&s, &eval(&jb, 1), 0);
        for p in [pa, pb] {
            if verify_plan(&s, &p.plan).is_ok() {
                let idx = s.index() + 1;
                apply_plan(&mut s, &p.plan, idx);
            }
            check_invariants(&s)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn preemption_evicts_only_lower_priority_by_delta_and_never_overcommits(
        nodes in prop::collection::vec(node_gen(), 1..4),
        jobs in prop::collection::vec((job_gen(), 1u32..=100), 2..10),
    ) {
        let mut s = ClusterState::new();
        for (i, n) in nodes.iter().enumerate() {
            s.upsert_node(make_node(i, n));
        }
        let opts = ScheduleOptions::default();
        for (i, (g, priority)) in jobs.iter().enumerate() {
            let mut j = make_job(i, g);
            j.spec.priority = *priority;
            s.upsert_job(j.clone());
            let out = schedule_with(&s, &eval(&j, 1), 1000, &opts);
            prop_assert!(verify_plan(&s, &out.plan).is_ok(), "fresh plan rejected: {:?}", verify_plan(&s, &out.plan));
            for st in out.plan.stops.iter().filter(|st| st.desired_status == DesiredStatus::Evict) {
                let v = s.alloc(&st.alloc_id).expect("evicts an existing allocation");
                prop_assert!(opts.preemption.allows(j.spec.job_type), "{:?} job preempted", j.spec.job_type);
                prop_assert!(v.is_live(), "evicted {} was not live", v.name);
                prop_assert!(v.job != j.spec.name, "evicted its own {}", v.name);
                prop_assert!(
                    v.priority + PREEMPTION_PRIORITY_DELTA <= j.spec.priority,
                    "priority {} evicted {} at priority {}", j.spec.priority, v.name, v.priority
                );
                prop_assert!(
                    v.job_type != JobType::System || j.spec.job_type == JobType::System,
                    "{:?} job evicted system allocation {}", j.spec.job_type, v.name
                );
                let by = st.preempted_by.as_ref().expect("eviction names its evictor");
                let placed = out.plan.placements.iter().find(|p| &p.id == by).expect("evictor is placed");
                prop_assert_eq!(&placed.node_id, &v.node_id);
                prop_assert!(placed.preempted_allocs.contains(&v.id));
            }
            let idx = s.index() + 1;
            apply_plan(&mut s, &out.plan, idx);
            // The agents stop what was stopped or evicted: then nothing is
            // overcommitted and every constraint still holds.
            for st in &out.plan.stops {
                let mut a = s.alloc(&st.alloc_id).unwrap().clone();
                a.client_status = ClientStatus::Complete;
                s.upsert_alloc(a);
            }
            check_invariants(&s)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn the_same_seed_gives_the_same_plan(seed in any::<u64>()) {
        let cfg = SimConfig {
            nodes: 50,
            tasks: 2000,
            seed,
            mix: Mix { service: 60, batch: 30, system: 10 },
            workers: 1,
            fill: 0.8,
            shards: true,
            features: true,
        };
        let (w1, w2) = (sim::build(&cfg).unwrap(), sim::build(&cfg).unwrap());
        prop_assert_eq!(&w1.evals, &w2.evals);
        prop_assert_eq!(&w1.features, &w2.features);
        for e in w1.evals.iter().take(10) {
            prop_assert_eq!(schedule(&w1.state, e, 0), schedule(&w2.state, e, 0));
        }
        // A whole single-worker run is deterministic too.
        let (r1, r2) = (sim::run(&cfg).unwrap(), sim::run(&cfg).unwrap());
        prop_assert_eq!((r1.placed, r1.stopped, r1.nodes_used, r1.lower_bound), (r2.placed, r2.stopped, r2.nodes_used, r2.lower_bound));
    }
}
