//! Load-aware rebalancing: which allocations to move off hot nodes, and
//! where to. Pure, like the rest of the crate: the measured utilization of
//! nodes and allocations comes in, a list of moves goes out.
//!
//! The scheduler places by reservations; real use drifts from them (CPU is a
//! soft share that tasks can exceed; memory use grows towards its limit), so
//! some nodes run hot while others idle. A round of the rebalancer:
//!
//! 1. A node is *hot* when its measured CPU or memory use exceeds
//!    `high_water` of its allocatable capacity, *cool* when both are below
//!    `target`. Nodes that were the source or target of a move within the
//!    cooldown are left alone (their measurements are not settled yet).
//! 2. For each hot node, hottest first, allocations are picked to bring it
//!    back under `high_water`: the smallest one whose measured use covers
//!    the excess in every hot dimension, else the largest, again until the
//!    node is no longer hot. Only allocations that may move are picked: not
//!    of system jobs, their group's `migrate.rebalance` on, running or
//!    pending, not already moving, and within the group's disruption budget
//!    (`migrate.max_parallel` minus moves already in flight).
//! 3. Each picked allocation goes to the coolest node in use that passes the
//!    group's drivers and constraints, has room for its reservation and
//!    stays under `target` with its measured use added; an empty node only
//!    when no node in use qualifies. With no such node it stays.
//!
//! The moves are carried out by the one "move" primitive: the server sets
//! [`taba_types::MigrateRequest`] on each allocation and evaluates its job;
//! the scheduler places the replacement (on the chosen node when it still
//! fits, else the best other one) and stops the original in one plan.
//! At most `max_moves` per round.

use crate::feasibility::GroupFilter;
use crate::state::{ClusterState, Res};
use std::collections::{BTreeMap, BTreeSet};
use taba_types::{AllocId, Allocation, ClientStatus, JobType, NodeId, NodeStatus, UnixMillis};

/// Settings of the rebalancer.
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceConfig {
    /// A node is hot above this share of its allocatable CPU or memory.
    pub high_water: f64,
    /// Moves go to nodes that stay below this share with the move added.
    pub target: f64,
    /// Most moves per round.
    pub max_moves: usize,
    /// A node that gave or took a move is left alone for this long, ms.
    pub cooldown_ms: u64,
}

impl Default for RebalanceConfig {
    /// Conservative: act only above 85 %, move to nodes that stay under
    /// 70 %, at most 4 moves a round, 5 minutes of cooldown per node.
    fn default() -> Self {
        Self {
            high_water: 0.85,
            target: 0.70,
            max_moves: 4,
            cooldown_ms: 5 * 60 * 1000,
        }
    }
}

/// Measured use of a node or an allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// CPU in use, MHz.
    pub cpu_mhz: u64,
    /// Memory in use, bytes.
    pub memory: u64,
}

impl Load {
    pub(crate) fn add(&mut self, o: Load) {
        self.cpu_mhz = self.cpu_mhz.saturating_add(o.cpu_mhz);
        self.memory = self.memory.saturating_add(o.memory);
    }
    pub(crate) fn sub(&mut self, o: Load) {
        self.cpu_mhz = self.cpu_mhz.saturating_sub(o.cpu_mhz);
        self.memory = self.memory.saturating_sub(o.memory);
    }
}

/// One move the rebalancer asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The allocation.
    pub alloc: AllocId,
    /// Its job's namespace.
    pub namespace: String,
    /// Its job.
    pub job: String,
    /// Where it runs.
    pub from: NodeId,
    /// Where it should go.
    pub to: NodeId,
    /// Why, for the allocation's description.
    pub reason: String,
}

/// How evenly the nodes in use are loaded: utilization is a node's larger
/// share of CPU or memory in use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    /// Nodes counted (ready, with a measurement, holding allocations).
    pub nodes: usize,
    /// Highest utilization.
    pub max: f64,
    /// Lowest utilization.
    pub min: f64,
    /// Mean utilization.
    pub mean: f64,
    /// Standard deviation of utilization.
    pub stddev: f64,
    /// Nodes above the high-water mark.
    pub hot: usize,
}

/// A node's utilization: its larger share of CPU or memory in use.
fn utilization(load: Load, cap: Res) -> (f64, f64) {
    let share = |used: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            used as f64 / cap as f64
        }
    };
    (share(load.cpu_mhz, cap.cpu), share(load.memory, cap.mem))
}

fn level(load: Load, cap: Res) -> f64 {
    let (c, m) = utilization(load, cap);
    c.max(m)
}

/// The utilization spread over the ready nodes that hold allocations and
/// have a measurement in `loads`.
pub fn spread(
    state: &ClusterState,
    loads: &BTreeMap<NodeId, Load>,
    cfg: &RebalanceConfig,
) -> Spread {
    let mut levels = Vec::new();
    for (_, e) in state.node_entries() {
        let Some(node) = &e.node else { continue };
        if node.status != NodeStatus::Ready || e.used == Res::default() {
            continue;
        }
        if let Some(l) = loads.get(&node.id) {
            levels.push(level(*l, e.allocatable));
        }
    }
    if levels.is_empty() {
        return Spread::default();
    }
    let n = levels.len() as f64;
    let mean = levels.iter().sum::<f64>() / n;
    let var = levels.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Spread {
        nodes: levels.len(),
        max: levels.iter().copied().fold(f64::MIN, f64::max),
        min: levels.iter().copied().fold(f64::MAX, f64::min),
        mean,
        stddev: var.sqrt(),
        hot: levels.iter().filter(|l| **l > cfg.high_water).count(),
    }
}

/// Whether the rebalancer may pick `a` at all (before budgets).
fn movable(a: &Allocation) -> bool {
    a.job_type != JobType::System
        && a.group_spec.migrate.rebalance
        && a.is_live()
        && matches!(
            a.client_status,
            ClientStatus::Running | ClientStatus::Pending
        )
        && a.migrate.is_none()
        // Not while it takes part in a live migration; a VM moves live, so
        // only once it runs.
        && a.live_migration.is_none()
        && (!a.group_spec.migrates_live() || a.client_status == ClientStatus::Running)
}

/// Moves in flight per group of `a`'s job: requested moves not yet carried
/// out, and replacements that have not run the group's `min_healthy_time`.
fn in_flight_of_job(
    state: &ClusterState,
    namespace: &str,
    job: &str,
    now: UnixMillis,
) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for a in state.allocs_for_job(namespace, job) {
        if !a.is_live() {
            continue;
        }
        let healthy = a
            .running_since()
            .is_some_and(|t| now >= t.saturating_add(a.group_spec.migrate.min_healthy_time.0));
        let moving = a.migrate.is_some() || (a.previous_alloc.is_some() && !healthy);
        if moving {
            *out.entry(a.group.clone()).or_default() += 1;
        }
    }
    out
}

/// Plan one round of moves.
///
/// `loads` is each node's measured use; `alloc_load` an allocation's (None
/// when it was never measured: such an allocation is not moved);
/// `recent` the last time each node gave or took a move.
pub fn plan_moves(
    state: &ClusterState,
    loads: &BTreeMap<NodeId, Load>,
    alloc_load: impl Fn(&Allocation) -> Option<Load>,
    recent: &BTreeMap<NodeId, UnixMillis>,
    cfg: &RebalanceConfig,
    now: UnixMillis,
) -> Vec<Move> {
    let cooling = |id: &NodeId| {
        recent
            .get(id)
            .is_some_and(|t| now < t.saturating_add(cfg.cooldown_ms))
    };
    // Projected load, reservations added by this round, per node slot.
    let mut load: BTreeMap<u32, Load> = BTreeMap::new();
    let mut reserved: BTreeMap<u32, Res> = BTreeMap::new();
    let mut hot: Vec<(f64, u32)> = Vec::new();
    for (slot, e) in state.node_entries() {
        let Some(node) = &e.node else { continue };
        if node.status != NodeStatus::Ready {
            continue;
        }
        let Some(l) = loads.get(&node.id) else {
            continue;
        };
        load.insert(slot, *l);
        let lv = level(*l, e.allocatable);
        if lv > cfg.high_water && !cooling(&node.id) {
            hot.push((lv, slot));
        }
    }
    if hot.is_empty() {
        return Vec::new();
    }
    hot.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // Moves in flight per job and group, counted when a job is first met.
    let mut budget_used: BTreeMap<(String, String), BTreeMap<String, u32>> = BTreeMap::new();
    let mut touched: BTreeSet<u32> = BTreeSet::new();
    let mut moves = Vec::new();
    let mut filters: BTreeMap<(String, String, String), GroupFilter> = BTreeMap::new();
    for (_, src) in hot {
        if moves.len() >= cfg.max_moves {
            break;
        }
        if touched.contains(&src) {
            continue;
        }
        let src_entry = state.entry(src);
        let Some(src_node) = &src_entry.node else {
            continue;
        };
        let cap = src_entry.allocatable;
        let mut candidates: Vec<(&Allocation, Load)> = state
            .allocs_for_node(&src_node.id)
            .filter(|a| movable(a))
            .filter_map(|a| alloc_load(a).map(|l| (a, l)))
            .collect();
        candidates.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut moved_off = false;
        loop {
            if moves.len() >= cfg.max_moves {
                break;
            }
            let now_load = load[&src];
            let (uc, um) = utilization(now_load, cap);
            if uc.max(um) <= cfg.high_water {
                break;
            }
            // Excess over the high-water mark in each hot dimension.
            let need = Load {
                cpu_mhz: if uc > cfg.high_water {
                    now_load.cpu_mhz - (cfg.high_water * cap.cpu as f64) as u64
                } else {
                    0
                },
                memory: if um > cfg.high_water {
                    now_load.memory - (cfg.high_water * cap.mem as f64) as u64
                } else {
                    0
                },
            };
            let covers = |l: &Load| l.cpu_mhz >= need.cpu_mhz && l.memory >= need.memory;
            let weight = |l: &Load| {
                let (c, m) = utilization(*l, cap);
                (if need.cpu_mhz > 0 { c } else { 0.0 }) + (if need.memory > 0 { m } else { 0.0 })
            };
            for (a, _) in &candidates {
                budget_used
                    .entry((a.namespace.clone(), a.job.clone()))
                    .or_insert_with(|| in_flight_of_job(state, &a.namespace, &a.job, now));
            }
            let within_budget = |a: &Allocation| {
                let used = budget_used
                    .get(&(a.namespace.clone(), a.job.clone()))
                    .and_then(|g| g.get(&a.group))
                    .copied()
                    .unwrap_or(0);
                used < a.group_spec.migrate.max_parallel.max(1)
            };
            let mut order: Vec<usize> = (0..candidates.len())
                .filter(|i| within_budget(candidates[*i].0))
                .filter(|i| weight(&candidates[*i].1) > 0.0)
                .collect();
            if order.is_empty() {
                break;
            }
            // Smallest that covers the excess first, then largest first.
            order.sort_by(|x, y| {
                let (lx, ly) = (&candidates[*x].1, &candidates[*y].1);
                match (covers(lx), covers(ly)) {
                    (true, false) => std::cmp::Ordering::Less,
                    (false, true) => std::cmp::Ordering::Greater,
                    (true, true) => weight(lx).total_cmp(&weight(ly)),
                    (false, false) => weight(ly).total_cmp(&weight(lx)),
                }
                .then(x.cmp(y))
            });
            let mut placed = None;
            for i in order {
                let (a, l) = candidates[i];
                if let Some(dst) = pick_target(
                    state,
                    a,
                    l,
                    &load,
                    &reserved,
                    &touched,
                    src,
                    cfg,
                    &cooling,
                    &mut filters,
                ) {
                    placed = Some((i, dst));
                    break;
                }
            }
            let Some((i, dst)) = placed else { break };
            let (a, l) = candidates.remove(i);
            load.get_mut(&src).expect("hot nodes have a load").sub(l);
            load.get_mut(&dst).expect("targets have a load").add(l);
            reserved.entry(dst).or_default().add(Res::of(&a.resources));
            *budget_used
                .entry((a.namespace.clone(), a.job.clone()))
                .or_default()
                .entry(a.group.clone())
                .or_default() += 1;
            touched.insert(dst);
            moved_off = true;
            let dst_node = state.entry(dst).node.as_ref().expect("targets are known");
            moves.push(Move {
                alloc: a.id.clone(),
                namespace: a.namespace.clone(),
                job: a.job.clone(),
                from: src_node.id.clone(),
                to: dst_node.id.clone(),
                reason: format!(
                    "rebalanced off hot node {} (cpu {:.0}%, memory {:.0}% in use; high water {:.0}%) to {}",
                    src_node.name,
                    uc * 100.0,
                    um * 100.0,
                    cfg.high_water * 100.0,
                    dst_node.name
                ),
            });
        }
        if moved_off {
            touched.insert(src);
        }
    }
    moves
}

/// The coolest qualifying node for `a`, preferring nodes already in use.
#[allow(clippy::too_many_arguments)]
fn pick_target(
    state: &ClusterState,
    a: &Allocation,
    l: Load,
    load: &BTreeMap<u32, Load>,
    reserved: &BTreeMap<u32, Res>,
    touched: &BTreeSet<u32>,
    src: u32,
    cfg: &RebalanceConfig,
    cooling: &dyn Fn(&NodeId) -> bool,
    filters: &mut BTreeMap<(String, String, String), GroupFilter>,
) -> Option<u32> {
    let key = (a.namespace.clone(), a.job.clone(), a.group.clone());
    if !filters.contains_key(&key) {
        let job = state.job(&a.namespace, &a.job)?;
        filters.insert(key.clone(), GroupFilter::new(job, &a.group_spec));
    }
    let filter = &filters[&key];
    let need = Res::of(&a.resources);
    let mut best: Option<(bool, f64, u32)> = None;
    for (&slot, cur) in load {
        if slot == src || touched.contains(&slot) {
            continue;
        }
        let e = state.entry(slot);
        let Some(node) = &e.node else { continue };
        if !node.schedulable() || cooling(&node.id) || !filter.accepts(node) {
            continue;
        }
        let mut used = e.used;
        if let Some(r) = reserved.get(&slot) {
            used.add(*r);
        }
        if !need.fits_in(&e.allocatable.minus(used)) {
            continue;
        }
        if filter.distinct_hosts.is_some()
            && state
                .allocs_for_node(&node.id)
                .any(|o| o.is_live() && o.namespace == a.namespace && o.job == a.job)
        {
            continue;
        }
        let mut after = *cur;
        after.add(l);
        let lv = level(after, e.allocatable);
        if lv >= cfg.target {
            continue;
        }
        let empty = e.used == Res::default();
        // Nodes in use before empty ones, then the coolest, then by slot.
        let better = best.is_none_or(|(b_empty, b_lv, b_slot)| {
            empty
                .cmp(&b_empty)
                .then(lv.total_cmp(&b_lv))
                .then(slot.cmp(&b_slot))
                .is_lt()
        });
        if better {
            best = Some((empty, lv, slot));
        }
    }
    best.map(|b| b.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{eval_for, group, job, node};
    use crate::{apply_plan, schedule, verify_plan};
    use taba_types::*;

    const MIB: u64 = 1024 * 1024;

    /// Nodes of 4000 MHz / 4096 MiB; job "web" with `count` allocations of
    /// 500 MHz / 256 MiB, all running (bin-packing puts them on n1).
    fn cluster(nodes: &[&str], count: u32) -> (ClusterState, Job) {
        let mut s = ClusterState::new();
        for n in nodes {
            s.upsert_node(node(n, 4000, 4096));
        }
        s.set_index(1);
        let j = job("web", JobType::Service, vec![group("web", count, 500, 256)]);
        s.upsert_job(j.clone());
        commit(&mut s, &j, 0, 1);
        for a in s.allocs().cloned().collect::<Vec<_>>() {
            run(&mut s, &a.id, 0);
        }
        (s, j)
    }

    fn commit(s: &mut ClusterState, j: &Job, now: UnixMillis, n: u32) -> SchedulerOutcome {
        let o = schedule(s, &eval_for(j, n), now);
        verify_plan(s, &o.plan).expect("plan verifies");
        let idx = s.index() + 1;
        apply_plan(s, &o.plan, idx);
        o
    }

    fn run(s: &mut ClusterState, id: &AllocId, at: UnixMillis) {
        let mut a = s.alloc(id).unwrap().clone();
        a.client_status = ClientStatus::Running;
        a.modify_time = at;
        a.task_states.insert(
            "t".into(),
            TaskState {
                state: TaskStatus::Running,
                started_at: Some(at),
                ..TaskState::default()
            },
        );
        s.upsert_alloc(a);
    }

    fn ask_move(s: &mut ClusterState, id: &AllocId, to: Option<&str>) {
        let mut a = s.alloc(id).unwrap().clone();
        a.migrate = Some(MigrateRequest {
            reason: "test".into(),
            to: to.map(|n| s.node_by_name(n).unwrap().id.clone()),
            requested_at: 0,
            live: false,
        });
        s.upsert_alloc(a);
    }

    fn live_on(s: &ClusterState, node_name: &str) -> Vec<Allocation> {
        let id = s.node_by_name(node_name).unwrap().id.clone();
        let mut v: Vec<Allocation> = s
            .allocs_for_node(&id)
            .filter(|a| a.is_live())
            .cloned()
            .collect();
        v.sort_by_key(|a| a.index);
        v
    }

    #[test]
    fn a_move_places_the_replacement_on_the_asked_node_and_stops_the_original() {
        let (mut s, j) = cluster(&["n1", "n2", "n3"], 2);
        let on_n1 = live_on(&s, "n1");
        assert_eq!(on_n1.len(), 2, "bin-packing fills n1 first");
        ask_move(&mut s, &on_n1[1].id, Some("n3"));
        let o = commit(&mut s, &j, 1000, 2);
        assert_eq!(o.plan.stops.len(), 1);
        assert_eq!(o.plan.stops[0].alloc_id, on_n1[1].id);
        assert!(o.plan.stops[0].description.contains("test"));
        assert_eq!(o.plan.placements.len(), 1);
        let new = &o.plan.placements[0];
        assert_eq!(new.node_name, "n3");
        assert_eq!(new.index, on_n1[1].index);
        assert_eq!(new.previous_alloc.as_ref(), Some(&on_n1[1].id));
        assert!(new.migrate.is_none());
        assert_eq!(live_on(&s, "n1").len(), 1);
        assert_eq!(live_on(&s, "n3").len(), 1);
        // Nothing more to do once it moved.
        let o = schedule(&s, &eval_for(&j, 3), 2000);
        assert!(o.plan.is_empty(), "{:?}", o.plan);
    }

    #[test]
    fn a_move_without_a_target_avoids_the_source_node() {
        let (mut s, j) = cluster(&["n1", "n2"], 2);
        let a = live_on(&s, "n1")[0].clone();
        ask_move(&mut s, &a.id, None);
        let o = commit(&mut s, &j, 1000, 2);
        assert_eq!(o.plan.placements.len(), 1);
        assert_eq!(o.plan.placements[0].node_name, "n2");
    }

    #[test]
    fn a_move_with_nowhere_to_go_is_dropped_and_the_allocation_keeps_running() {
        let (mut s, j) = cluster(&["n1"], 2);
        let a = live_on(&s, "n1")[0].clone();
        ask_move(&mut s, &a.id, None);
        let o = commit(&mut s, &j, 1000, 2);
        assert!(o.plan.stops.is_empty());
        assert!(o.plan.placements.is_empty());
        assert_eq!(o.plan.updates.len(), 1);
        let after = s.alloc(&a.id).unwrap();
        assert!(after.is_live());
        assert!(after.migrate.is_none(), "the request is cleared");
    }

    #[test]
    fn moves_respect_the_groups_disruption_budget() {
        let (mut s, j) = cluster(&["n1", "n2"], 3);
        for a in live_on(&s, "n1") {
            ask_move(&mut s, &a.id, Some("n2"));
        }
        let o = commit(&mut s, &j, 1000, 2);
        assert_eq!(o.plan.placements.len(), 1, "migrate.max_parallel is 1");
        // Not running yet: no time to wait for; its "running" report brings
        // the next evaluation (the server's part).
        assert!(o.follow_ups.is_empty(), "{:?}", o.follow_ups);
        // Running, but not for min_healthy_time: still one in flight, and
        // the next batch is due when it is healthy.
        let new_id = o.plan.placements[0].id.clone();
        run(&mut s, &new_id, 2000);
        let o = commit(&mut s, &j, 5000, 3);
        assert!(o.plan.placements.is_empty());
        let follow = &o.follow_ups[0];
        assert_eq!(follow.triggered_by, EvalTrigger::Rebalance);
        assert_eq!(follow.wait_until, Some(2000 + 10_000));
        // Healthy now: the next one moves.
        let o = commit(&mut s, &j, 12_001, 4);
        assert_eq!(o.plan.placements.len(), 1);
        assert_eq!(o.plan.placements[0].node_name, "n2");
    }

    /// Job "web" with running allocations of 500 MHz / 256 MiB laid out
    /// as given, on nodes of 4000 MHz / 4096 MiB.
    fn laid_out(layout: &[(&str, u32)]) -> ClusterState {
        let mut s = ClusterState::new();
        for (n, _) in layout {
            s.upsert_node(node(n, 4000, 4096));
        }
        s.set_index(1);
        let total = layout.iter().map(|(_, k)| k).sum();
        s.upsert_job(job(
            "web",
            JobType::Service,
            vec![group("web", total, 500, 256)],
        ));
        let mut index = 0;
        for (n, k) in layout {
            for _ in 0..*k {
                let a = crate::tests::alloc_on(&s, "web", index, n, 500, 256);
                s.upsert_alloc(a);
                index += 1;
            }
        }
        s
    }

    fn loads(s: &ClusterState, per_node: &[(&str, u64, u64)]) -> BTreeMap<NodeId, Load> {
        per_node
            .iter()
            .map(|(n, cpu, mem_mib)| {
                (
                    s.node_by_name(n).unwrap().id.clone(),
                    Load {
                        cpu_mhz: *cpu,
                        memory: mem_mib * MIB,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_hot_node_is_relieved_onto_the_coolest_node_in_use() {
        // n1: 6 allocations; n2: 1; n3: empty. Each allocation burns
        // 600 MHz, so n1 runs 3600 of 4000 MHz (90% > 85%).
        let s = laid_out(&[("n1", 6), ("n2", 1), ("n3", 0)]);
        let l = loads(&s, &[("n1", 3600, 1000), ("n2", 600, 200), ("n3", 0, 0)]);
        let per_alloc = |_: &Allocation| {
            Some(Load {
                cpu_mhz: 600,
                memory: 100 * MIB,
            })
        };
        let cfg = RebalanceConfig {
            max_moves: 10,
            ..RebalanceConfig::default()
        };
        let before = spread(&s, &l, &cfg);
        assert_eq!(before.hot, 1);
        let now = 60_000;
        let moves = plan_moves(&s, &l, per_alloc, &BTreeMap::new(), &cfg, now);
        // One move brings n1 to 3000/4000 = 75%; the group's budget is 1 anyway.
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].from, s.node_by_name("n1").unwrap().id);
        assert_eq!(
            moves[0].to,
            s.node_by_name("n2").unwrap().id,
            "a node in use before an empty one"
        );
        assert!(moves[0].reason.contains("hot node n1"));
        // The same node is left alone during its cooldown.
        let recent: BTreeMap<NodeId, UnixMillis> =
            [(s.node_by_name("n1").unwrap().id.clone(), now - 1000)].into();
        assert!(plan_moves(&s, &l, per_alloc, &recent, &cfg, now).is_empty());
        // Nothing is hot: nothing moves.
        let calm = loads(&s, &[("n1", 3000, 1000), ("n2", 600, 200)]);
        assert!(plan_moves(&s, &calm, per_alloc, &BTreeMap::new(), &cfg, now).is_empty());
        // Unmeasured allocations are never picked.
        assert!(plan_moves(&s, &l, |_| None, &BTreeMap::new(), &cfg, now).is_empty());
    }

    #[test]
    fn moves_go_only_where_the_reservation_fits_and_the_target_stays_cool() {
        let s = laid_out(&[("n1", 6), ("n2", 0)]);
        let per_alloc = |_: &Allocation| {
            Some(Load {
                cpu_mhz: 600,
                memory: 100 * MIB,
            })
        };
        let cfg = RebalanceConfig::default();
        // n2 idle but measured as busy (another tenant): 2500/4000 + 600 > 70%.
        let l = loads(&s, &[("n1", 3600, 600), ("n2", 2500, 100)]);
        assert!(plan_moves(&s, &l, per_alloc, &BTreeMap::new(), &cfg, 0).is_empty());
        // n2 cool: one move.
        let l = loads(&s, &[("n1", 3600, 600), ("n2", 100, 100)]);
        assert_eq!(
            plan_moves(&s, &l, per_alloc, &BTreeMap::new(), &cfg, 0).len(),
            1
        );
    }

    #[test]
    fn allocations_in_a_live_migration_are_not_moved() {
        let mut s = laid_out(&[("n1", 6), ("n2", 0)]);
        let per_alloc = |_: &Allocation| {
            Some(Load {
                cpu_mhz: 600,
                memory: 100 * MIB,
            })
        };
        let cfg = RebalanceConfig::default();
        let l = loads(&s, &[("n1", 3600, 600), ("n2", 100, 100)]);
        assert_eq!(
            plan_moves(&s, &l, per_alloc, &BTreeMap::new(), &cfg, 0).len(),
            1
        );
        for mut a in s.allocs().cloned().collect::<Vec<_>>() {
            a.live_migration = Some(LiveMigration {
                source_alloc: a.id.clone(),
                source_node: a.node_id.clone(),
                target_alloc: AllocId::from("t"),
                target_node: s.node_by_name("n2").unwrap().id.clone(),
                target_node_name: "n2".into(),
                reason: "test".into(),
                started_at: 0,
                source_accel: None,
                incoming: None,
                cancel: None,
            });
            s.upsert_alloc(a);
        }
        assert!(plan_moves(&s, &l, per_alloc, &BTreeMap::new(), &cfg, 0).is_empty());
    }

    #[test]
    fn opted_out_groups_and_system_jobs_are_not_moved() {
        let mut s = ClusterState::new();
        for n in ["n1", "n2"] {
            s.upsert_node(node(n, 4000, 4096));
        }
        s.set_index(1);
        let mut g = group("web", 6, 500, 256);
        g.migrate.rebalance = false;
        let j = job("web", JobType::Service, vec![g]);
        s.upsert_job(j.clone());
        commit(&mut s, &j, 0, 1);
        let sys = job("agent", JobType::System, vec![group("a", 1, 100, 64)]);
        s.upsert_job(sys.clone());
        commit(&mut s, &sys, 0, 2);
        let l = loads(&s, &[("n1", 3900, 600), ("n2", 100, 100)]);
        let cfg = RebalanceConfig::default();
        let per_alloc = |_: &Allocation| {
            Some(Load {
                cpu_mhz: 600,
                memory: 10 * MIB,
            })
        };
        assert!(plan_moves(&s, &l, per_alloc, &BTreeMap::new(), &cfg, 0).is_empty());
    }
}
