//! Dominant resource fairness (DRF) between namespaces, for work waiting for
//! capacity.
//!
//! A namespace's dominant share is the larger of its CPU and memory usage,
//! each divided by what the cluster's schedulable nodes can hold. When
//! capacity frees up, the server releases the blocked evaluations in the
//! order [`order`] gives: the namespace with the lowest dominant share goes
//! first (ties: the higher job priority, then the older evaluation). After
//! each pick the namespace's share grows by what the evaluation still asks
//! for (its queued placements), so the order interleaves namespaces the way
//! DRF hands out tasks one at a time, and over time their dominant shares
//! even out (a CPU-heavy namespace and a memory-heavy one end up with equal
//! dominant shares, not equal amounts of either resource).
//!
//! Shares are compared exactly, as integers over the common denominator
//! `cpu_total * memory_total`: no floating point decides an order. Pure and
//! deterministic; nothing here does I/O.

use crate::state::ClusterState;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use taba_types::Evaluation;

/// One piece of work waiting for capacity, as DRF sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Its namespace.
    pub namespace: String,
    /// Its job's priority (higher goes first between equal shares).
    pub priority: u32,
    /// Its age as a store index (older, i.e. smaller, goes first next).
    pub age: u64,
    /// CPU it asks for, MHz.
    pub cpu: u64,
    /// Memory it asks for, bytes.
    pub memory: u64,
}

/// What the cluster's schedulable nodes can hold: (CPU in MHz, memory in bytes).
pub fn cluster_capacity(state: &ClusterState) -> (u64, u64) {
    let mut cpu = 0u64;
    let mut mem = 0u64;
    for (_, e) in state.node_entries() {
        if e.schedulable() {
            cpu = cpu.saturating_add(e.allocatable.cpu);
            mem = mem.saturating_add(e.allocatable.mem);
        }
    }
    (cpu, mem)
}

/// The dominant share of usage `(cpu, memory)` of a cluster of `capacity`,
/// from 0.0 (for reports and tests; orders use exact integers).
pub fn dominant_share(usage: (u64, u64), capacity: (u64, u64)) -> f64 {
    let c = usage.0 as f64 / capacity.0.max(1) as f64;
    let m = usage.1 as f64 / capacity.1.max(1) as f64;
    c.max(m)
}

/// The dominant share scaled by `cpu_total * memory_total`: exact and
/// comparable between namespaces of one cluster.
fn share_key(cpu: u128, mem: u128, capacity: (u64, u64)) -> u128 {
    let c = u128::from(capacity.0.max(1));
    let m = u128::from(capacity.1.max(1));
    (cpu.saturating_mul(m)).max(mem.saturating_mul(c))
}

/// The DRF order of `demands` given each namespace's current `usage`
/// (CPU MHz, memory bytes) on a cluster of `capacity`: indexes into
/// `demands`, every one exactly once.
pub fn order_demands(
    usage: &BTreeMap<String, (u64, u64)>,
    capacity: (u64, u64),
    demands: &[Demand],
) -> Vec<usize> {
    // Per namespace: its running total and its demands, best first.
    let mut queues: BTreeMap<&str, ((u128, u128), Vec<usize>)> = BTreeMap::new();
    for (i, d) in demands.iter().enumerate() {
        let q = queues.entry(d.namespace.as_str()).or_insert_with(|| {
            let u = usage.get(&d.namespace).copied().unwrap_or_default();
            ((u128::from(u.0), u128::from(u.1)), Vec::new())
        });
        q.1.push(i);
    }
    for (_, list) in queues.values_mut() {
        // Reversed, so the best is popped from the end.
        list.sort_by_key(|&i| Reverse((Reverse(demands[i].priority), demands[i].age, i)));
    }
    let mut out = Vec::with_capacity(demands.len());
    while out.len() < demands.len() {
        let pick = queues
            .iter()
            .filter_map(|(ns, (used, list))| {
                let &head = list.last()?;
                let d = &demands[head];
                let key = (
                    share_key(used.0, used.1, capacity),
                    Reverse(d.priority),
                    d.age,
                );
                Some((key, *ns))
            })
            .min()
            .map(|(_, ns)| ns);
        let Some(ns) = pick else { break };
        let (used, list) = queues.get_mut(ns).expect("picked from the map");
        let i = list.pop().expect("picked a non-empty queue");
        used.0 += u128::from(demands[i].cpu);
        used.1 += u128::from(demands[i].memory);
        out.push(i);
    }
    out
}

/// What an evaluation still asks for: its queued placements times their
/// group's resources (nothing when it has not been scheduled yet).
pub fn demand_of(state: &ClusterState, eval: &Evaluation) -> Demand {
    let mut cpu = 0u64;
    let mut memory = 0u64;
    if let Some(job) = state.job(&eval.namespace, &eval.job) {
        for (group, n) in &eval.queued {
            if let Some(g) = job.group(group) {
                let r = g.total_resources();
                cpu = cpu.saturating_add(r.cpu.saturating_mul(u64::from(*n)));
                memory = memory.saturating_add(r.memory.0.saturating_mul(u64::from(*n)));
            }
        }
    }
    Demand {
        namespace: eval.namespace.clone(),
        priority: eval.priority,
        age: eval.create_index,
        cpu,
        memory,
    }
}

/// The DRF order of evaluations waiting for capacity on `state`: indexes
/// into `waiting`, every one exactly once. See the module docs.
pub fn order(state: &ClusterState, waiting: &[Evaluation]) -> Vec<usize> {
    let demands: Vec<Demand> = waiting.iter().map(|e| demand_of(state, e)).collect();
    let usage: BTreeMap<String, (u64, u64)> = state
        .ns_usage
        .iter()
        .map(|(ns, u)| (ns.clone(), (u.res.cpu, u.res.mem)))
        .collect();
    order_demands(&usage, cluster_capacity(state), &demands)
}

/// The dominant share of a namespace on `state` now.
pub fn namespace_share(state: &ClusterState, namespace: &str) -> f64 {
    let u = state.namespace_usage(namespace);
    dominant_share((u.cpu, u.memory.0), cluster_capacity(state))
}
