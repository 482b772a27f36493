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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{eval_for, group, job, node};
    use crate::{apply_plan, schedule, verify_plan};
    use taba_types::*;

    /// Batch work arriving at and leaving a small cluster; evaluations that
    /// do not fit wait, as the server's broker parks them, and are released
    /// in a given order whenever capacity frees.
    struct Sim {
        s: ClusterState,
        waiting: Vec<Evaluation>,
        jobs: u32,
    }

    type Order = fn(&ClusterState, &[Evaluation]) -> Vec<usize>;

    /// First come, first served: what the broker did before DRF.
    fn by_age(_: &ClusterState, w: &[Evaluation]) -> Vec<usize> {
        let mut v: Vec<usize> = (0..w.len()).collect();
        v.sort_by_key(|&i| w[i].create_index);
        v
    }

    impl Sim {
        fn new(nodes: &[(u64, u64)]) -> Self {
            let mut s = ClusterState::new();
            for (i, (cpu, mem)) in nodes.iter().enumerate() {
                s.upsert_node(node(&format!("n{i}"), *cpu, *mem));
            }
            s.set_index(1);
            Self {
                s,
                waiting: Vec::new(),
                jobs: 0,
            }
        }

        /// Schedule `e` and commit its plan; keep it waiting if blocked.
        fn evaluate(&mut self, mut e: Evaluation) {
            let o = schedule(&self.s, &e, 0);
            verify_plan(&self.s, &o.plan).expect("plans made one at a time verify");
            let idx = self.s.index() + 1;
            apply_plan(&mut self.s, &o.plan, idx);
            if o.status == EvalStatus::Blocked {
                e.queued = o.queued;
                self.waiting.push(e);
            }
        }

        /// Register `n` batch jobs of one allocation each.
        fn submit(&mut self, ns: &str, n: u32, cpu: u64, mem_mib: u64) {
            for _ in 0..n {
                self.jobs += 1;
                let mut j = job(
                    &format!("{ns}-{}", self.jobs),
                    JobType::Batch,
                    vec![group("g", 1, cpu, mem_mib)],
                );
                j.spec.namespace = ns.into();
                self.s.upsert_job(j.clone());
                let mut e = eval_for(&j, self.jobs);
                e.create_index = u64::from(self.jobs);
                self.evaluate(e);
            }
        }

        /// The oldest running allocation finishes; the waiting evaluations
        /// are released in `order`.
        fn complete_oldest(&mut self, order: Order) {
            let oldest = self
                .s
                .allocs()
                .filter(|a| a.holds_resources())
                .min_by_key(|a| (a.create_index, a.id.clone()))
                .cloned();
            if let Some(mut a) = oldest {
                a.client_status = ClientStatus::Complete;
                self.s.upsert_alloc(a);
            }
            self.release(order);
        }

        fn release(&mut self, order: Order) {
            let waiting = std::mem::take(&mut self.waiting);
            let idx = order(&self.s, &waiting);
            assert_eq!(idx.len(), waiting.len(), "every evaluation exactly once");
            for i in idx {
                self.evaluate(waiting[i].clone());
            }
        }

        fn share(&self, ns: &str) -> f64 {
            namespace_share(&self.s, ns)
        }
        fn running(&self, ns: &str) -> u32 {
            self.s.namespace_usage(ns).allocations
        }
    }

    /// Two namespaces with a big backlog each on a full cluster: A asks for
    /// CPU (1000 MHz, 512 MiB), B for memory (250 MHz, 2 GiB). The cluster
    /// (4 x 4000 MHz, 8 GiB) starts full of A's work.
    fn contended(order: Order) -> Sim {
        let mut sim = Sim::new(&[(4000, 8192); 4]);
        sim.submit("a", 56, 1000, 512);
        assert_eq!(sim.running("a"), 16, "A fills every node's CPU");
        sim.submit("b", 40, 250, 2048);
        assert_eq!(sim.running("b"), 0);
        assert_eq!(sim.waiting.len(), 80);
        for _ in 0..24 {
            sim.complete_oldest(order);
        }
        sim
    }

    #[test]
    fn golden_backlogs_converge_to_equal_dominant_shares() {
        let mut sim = contended(order);
        // One allocation of either is 1/16 of the cluster's dominant resource.
        let one = 1.0 / 16.0;
        for round in 0..16 {
            let (a, b) = (sim.share("a"), sim.share("b"));
            assert!(
                (a - b).abs() <= one + 1e-9,
                "round {round}: A {a:.3} ({} allocs) vs B {b:.3} ({} allocs)",
                sim.running("a"),
                sim.running("b")
            );
            sim.complete_oldest(order);
        }
        // Both still have work waiting, and the cluster is used: 12 + 12
        // allocations fill it exactly at equal shares of 0.75.
        assert!(sim.waiting.iter().any(|e| e.namespace == "a"));
        assert!(sim.waiting.iter().any(|e| e.namespace == "b"));
        assert_eq!((sim.running("a"), sim.running("b")), (12, 12));
    }

    #[test]
    fn golden_first_come_first_served_starves_the_newcomer() {
        // The same run released by age: A's older backlog takes every freed
        // slot and B never runs. This is what DRF is for.
        let sim = contended(by_age);
        assert_eq!(sim.running("b"), 0);
        assert_eq!(sim.running("a"), 16);
    }

    #[test]
    fn golden_classic_drf_example() {
        // The DRF paper's example: 9 CPUs and 18 GiB; A's tasks need
        // <1 CPU, 4 GiB> (memory-heavy), B's <3 CPUs, 1 GiB> (CPU-heavy).
        // DRF gives A 3 tasks and B 2: both dominant shares are 2/3.
        let mut sim = Sim::new(&[(9000, 18 * 1024)]);
        sim.submit("default", 1, 9000, 18 * 1024); // the node starts full
        sim.submit("a", 10, 1000, 4096);
        sim.submit("b", 10, 3000, 1024);
        assert_eq!(sim.waiting.len(), 20);
        sim.complete_oldest(order);
        assert_eq!((sim.running("a"), sim.running("b")), (3, 2));
        assert!((sim.share("a") - 2.0 / 3.0).abs() < 1e-9);
        assert!((sim.share("b") - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn order_is_lowest_share_first_then_priority_then_age() {
        let d = |ns: &str, priority, age, cpu, memory| Demand {
            namespace: ns.into(),
            priority,
            age,
            cpu,
            memory,
        };
        let usage: BTreeMap<String, (u64, u64)> = [
            ("a".to_string(), (500, 0)), // 0.5 of the cpu
            ("b".to_string(), (0, 250)), // 0.25 of the memory
        ]
        .into();
        let demands = vec![
            d("a", 50, 1, 100, 0),
            d("b", 50, 2, 100, 100),
            d("b", 90, 3, 100, 100),
            d("c", 10, 4, 0, 0),
            d("c", 10, 0, 0, 0),
        ];
        let got = order_demands(&usage, (1000, 1000), &demands);
        // c (share 0) first, older first; then b (0.25), its high priority
        // first; b is then at 0.35 < 0.5, so b again; then a.
        assert_eq!(got, vec![4, 3, 2, 1, 0]);
        // Equal shares: higher priority first, then the older.
        let even = vec![
            d("x", 10, 1, 0, 0),
            d("y", 20, 2, 0, 0),
            d("z", 20, 0, 0, 0),
        ];
        assert_eq!(
            order_demands(&BTreeMap::new(), (1, 1), &even),
            vec![2, 1, 0]
        );
        assert!(order_demands(&usage, (0, 0), &[]).is_empty());
    }
}
