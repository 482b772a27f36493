//! Preemption: when a group's allocation fits nowhere, evict allocations of
//! lower-priority jobs to make room for it.
//!
//! This module owns the search for the eviction set and the per-node sums
//! that keep the search cheap; the scheduler ([`crate::schedule`]) calls it
//! only after the normal placement left allocations unplaced, so jobs that
//! fit never pay for it. It must not change the state: evictions go into the
//! plan as stops with `desired_status = evict`, and the plan applier
//! re-checks them ([`crate::verify_plan`]).
//!
//! Rules:
//! - only allocations of *other* jobs whose priority is at least
//!   [`PREEMPTION_PRIORITY_DELTA`] below the placing job's are evicted;
//! - only live ones (desired `run`, not terminal): an allocation already
//!   stopping is never evicted (its resources count as held until it stops);
//! - allocations of system jobs are evicted only for system jobs;
//! - node feasibility (drivers, constraints, distinct rules) stays hard;
//! - among the nodes where evictions would make room, the one whose set
//!   evicts the fewest allocations wins, then the lowest priorities (highest
//!   evicted priority, then their sum), then the least resources freed
//!   beyond the need; ties go to the smaller node id, and within a node to
//!   the smaller allocation id.
//!
//! Cost: every node keeps the resources of its live allocations summed per
//! (priority, system) ([`LiveByPriority`], maintained by
//! [`crate::ClusterState`]), so a node that could not make room even by
//! evicting everything allowed is skipped after a few additions, without
//! looking at its allocations. Each candidate node's eviction set is then
//! computed once per group and only recomputed for the node a placement
//! changed.

use crate::place::{GroupCtx, Placer};
use crate::state::{ClusterState, IdKey, Res};
use std::collections::{BTreeMap, BTreeSet};
use taba_types::{AllocId, JobType, NodeId};

/// How much higher a job's priority must be than an allocation's for the
/// job to evict it (the same gap Nomad uses): work of about the same
/// importance never displaces each other, and an evicted allocation can
/// never evict its evictor back.
pub const PREEMPTION_PRIORITY_DELTA: u32 = 10;

/// Which job types may evict lower-priority allocations to place their own.
/// By default services and system jobs may, batch jobs wait for capacity
/// ("services can preempt batch").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreemptionConfig {
    /// Service jobs may preempt.
    pub service: bool,
    /// Batch jobs may preempt.
    pub batch: bool,
    /// System jobs may preempt.
    pub system: bool,
}

impl Default for PreemptionConfig {
    fn default() -> Self {
        Self {
            service: true,
            batch: false,
            system: true,
        }
    }
}

impl PreemptionConfig {
    /// No job type preempts.
    pub fn disabled() -> Self {
        Self {
            service: false,
            batch: false,
            system: false,
        }
    }

    /// Whether jobs of `job_type` may preempt.
    pub fn allows(&self, job_type: JobType) -> bool {
        match job_type {
            JobType::Service => self.service,
            JobType::Batch => self.batch,
            JobType::System => self.system,
        }
    }
}

/// Resources of a node's live allocations summed per (priority, system),
/// sorted by priority. A node holds a handful of distinct priorities, so a
/// sorted vector beats a map.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveByPriority {
    entries: Vec<PriorityUse>,
}

#[derive(Clone, Copy, Debug)]
struct PriorityUse {
    priority: u32,
    system: bool,
    res: Res,
    count: u32,
}

impl LiveByPriority {
    pub fn add(&mut self, priority: u32, system: bool, res: Res) {
        match self
            .entries
            .binary_search_by(|e| (e.priority, e.system).cmp(&(priority, system)))
        {
            Ok(i) => {
                let e = &mut self.entries[i];
                e.res.add(res);
                e.count += 1;
            }
            Err(i) => self.entries.insert(
                i,
                PriorityUse {
                    priority,
                    system,
                    res,
                    count: 1,
                },
            ),
        }
    }

    pub fn remove(&mut self, priority: u32, system: bool, res: Res) {
        if let Ok(i) = self
            .entries
            .binary_search_by(|e| (e.priority, e.system).cmp(&(priority, system)))
        {
            let e = &mut self.entries[i];
            e.count -= 1;
            if e.count == 0 {
                self.entries.remove(i);
            } else {
                e.res.sub(res);
            }
        }
    }

    /// Resources of live allocations with priority at most `max_priority`
    /// (system ones only if `system`): an upper bound of what evictions could
    /// free on the node.
    pub fn evictable(&self, max_priority: u32, system: bool) -> Res {
        let mut sum = Res::default();
        for e in &self.entries {
            if e.priority > max_priority {
                break;
            }
            if system || !e.system {
                sum.add(e.res);
            }
        }
        sum
    }
}

/// The job that wants room.
pub(crate) struct Preemptor<'a> {
    pub namespace: &'a str,
    pub job: &'a str,
    pub job_type: JobType,
    /// Highest priority that may be evicted.
    pub max_priority: u32,
}

impl<'a> Preemptor<'a> {
    /// `None` when nothing can be below the job's priority by the delta.
    pub fn new(namespace: &'a str, job: &'a str, job_type: JobType, priority: u32) -> Option<Self> {
        let max_priority = priority.checked_sub(PREEMPTION_PRIORITY_DELTA)?;
        (max_priority > 0).then_some(Self {
            namespace,
            job,
            job_type,
            max_priority,
        })
    }

    fn evicts_system(&self) -> bool {
        self.job_type == JobType::System
    }
}

/// An allocation chosen for eviction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Victim {
    pub id: AllocId,
    pub priority: u32,
}

/// An allocation that may be evicted: its slot in the state.
#[derive(Clone, Debug)]
struct Cand {
    slot: u32,
    key: IdKey,
    priority: u32,
    res: Res,
}

/// How bad an eviction set is; smaller is better.
type Rank = (usize, u32, u64, u64);

/// One node's best eviction set for one allocation of the group.
#[derive(Clone, Debug)]
pub(crate) struct Choice {
    pub slot: u32,
    pub victims: Vec<Victim>,
}

/// The cheapest eviction set per candidate node for one group, best first.
pub(crate) struct Search {
    ranked: BTreeSet<(Rank, NodeId, u32)>,
    sets: BTreeMap<u32, (Rank, Vec<Victim>)>,
}

impl Search {
    /// Scan every node for one allocation of `g`, skipping those that could
    /// not make room even by evicting everything allowed. `evicted`: slots
    /// of the allocations this plan evicts already.
    pub fn new(
        state: &ClusterState,
        placer: &Placer,
        g: &GroupCtx,
        who: &Preemptor,
        evicted: &BTreeSet<u32>,
    ) -> Self {
        let mut s = Self {
            ranked: BTreeSet::new(),
            sets: BTreeMap::new(),
        };
        let slots: Vec<u32> = state.node_entries().map(|(slot, _)| slot).collect();
        for slot in slots {
            if placer.in_shard(state, slot) {
                s.refresh(state, placer, g, who, evicted, slot);
            }
        }
        s
    }

    /// Recompute one node's set (after this plan changed the node).
    pub fn refresh(
        &mut self,
        state: &ClusterState,
        placer: &Placer,
        g: &GroupCtx,
        who: &Preemptor,
        evicted: &BTreeSet<u32>,
        slot: u32,
    ) {
        if let Some((rank, _)) = self.sets.remove(&slot) {
            self.ranked
                .remove(&(rank, state.entry(slot).id.clone(), slot));
        }
        if let Some((rank, victims)) = best_on_node(state, placer, g, who, evicted, slot) {
            self.ranked
                .insert((rank, state.entry(slot).id.clone(), slot));
            self.sets.insert(slot, (rank, victims));
        }
    }

    /// The best node and its eviction set, if any still qualifies. Rules
    /// that depend on other nodes (distinct_property) are re-checked here.
    pub fn best(&mut self, state: &ClusterState, placer: &Placer, g: &GroupCtx) -> Option<Choice> {
        while let Some((rank, id, slot)) = self.ranked.first().cloned() {
            if placer.can_host(state, g, slot) {
                let victims = self.sets[&slot].1.clone();
                return Some(Choice { slot, victims });
            }
            self.ranked.remove(&(rank, id, slot));
            self.sets.remove(&slot);
        }
        None
    }
}

/// The best eviction set on one node for one allocation of `g`, with its
/// rank; `None` when the node cannot host the group or evictions cannot
/// make room. `evicted`: slots of the allocations this plan evicts already.
pub(crate) fn best_on_node(
    state: &ClusterState,
    placer: &Placer,
    g: &GroupCtx,
    who: &Preemptor,
    evicted: &BTreeSet<u32>,
    slot: u32,
) -> Option<(Rank, Vec<Victim>)> {
    let e = state.entry(slot);
    let mut used = placer.used(state, slot);
    used.add(g.res);
    let need = used.minus(e.allocatable);
    if need == Res::default() {
        return None; // it fits: not a preemption case
    }
    // Cheap bound first: everything evictable here would not be enough.
    if !need.fits_in(&e.live.evictable(who.max_priority, who.evicts_system())) {
        return None;
    }
    if !placer.can_host(state, g, slot) {
        return None;
    }
    let candidates = e.allocs.iter().filter_map(|&a| {
        let v = state.live_view(a)?;
        let allowed = v.priority <= who.max_priority
            && (!v.system || who.evicts_system())
            && !(v.namespace == who.namespace && v.job == who.job)
            && gain(v.res, need, need) > 0
            && !evicted.contains(&a);
        allowed.then(|| Cand {
            slot: a,
            key: state.alloc_id_key(a),
            priority: v.priority,
            res: v.res,
        })
    });
    let chosen = choose(candidates, need)?;
    let mut freed = Res::default();
    for c in &chosen {
        freed.add(c.res);
    }
    let rank = (
        chosen.len(),
        chosen.iter().map(|c| c.priority).max().unwrap_or(0),
        chosen.iter().map(|c| u64::from(c.priority)).sum(),
        weight(freed.minus(need)),
    );
    let victims = chosen
        .iter()
        .map(|c| Victim {
            id: state.alloc_id_at(c.slot),
            priority: c.priority,
        })
        .collect();
    Some((rank, victims))
}

/// Resources as one number for comparing what is freed beyond the need:
/// CPU weighted like [`Res::key`] (MHz x 1.5 ~ MiB on a typical host),
/// memory and disk in MiB.
fn weight(r: Res) -> u64 {
    const MIB: u64 = 1024 * 1024;
    (r.cpu.saturating_mul(3) / 2)
        .saturating_add(r.mem / MIB)
        .saturating_add(r.disk / MIB)
}

/// How much of `rem` (the part of `need` still missing) `r` covers, as a
/// sum over dimensions of fractions of the whole need, in millionths.
fn gain(r: Res, rem: Res, need: Res) -> u64 {
    let part = |have: u64, rem: u64, need: u64| -> u64 {
        if need == 0 {
            return 0;
        }
        (u128::from(have.min(rem)) * 1_000_000 / u128::from(need)) as u64
    };
    part(r.cpu, rem.cpu, need.cpu)
        + part(r.mem, rem.mem, need.mem)
        + part(r.disk, rem.disk, need.disk)
}

fn covers(freed: Res, need: Res) -> bool {
    need.fits_in(&freed)
}

/// Pick the victims among `candidates` that free `need`: one allocation if
/// any is enough alone (the lowest priority, then the least excess, then
/// the smaller id); otherwise greedily the one covering most of what is
/// still missing (then the lowest priority, then the smaller id), then drop
/// any that turned out unnecessary (highest priority first). `None` when
/// all of them together are not enough. One pass, without building a list,
/// when a single allocation is enough (the common case).
fn choose(candidates: impl Iterator<Item = Cand> + Clone, need: Res) -> Option<Vec<Cand>> {
    let mut single: Option<(u32, u64, Cand)> = None;
    for c in candidates.clone().filter(|c| covers(c.res, need)) {
        let excess = weight(c.res.minus(need));
        let better = match &single {
            None => true,
            Some((p, x, s)) => (c.priority, excess, &c.key) < (*p, *x, &s.key),
        };
        if better {
            single = Some((c.priority, excess, c));
        }
    }
    if let Some((_, _, c)) = single {
        return Some(vec![c]);
    }
    let mut candidates: Vec<Cand> = candidates.collect();
    let mut rem = need;
    let mut chosen: Vec<Cand> = Vec::new();
    while rem != Res::default() {
        let mut best: Option<(usize, u64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            let g = gain(c.res, rem, need);
            let better = match best {
                None => true,
                Some((j, bg)) => {
                    let b = &candidates[j];
                    g > bg || (g == bg && (c.priority, &c.key) < (b.priority, &b.key))
                }
            };
            if better {
                best = Some((i, g));
            }
        }
        let (i, g) = best?;
        if g == 0 {
            return None;
        }
        let v = candidates.swap_remove(i);
        rem.sub(v.res);
        chosen.push(v);
    }
    // Drop victims the others make unnecessary, highest priority first.
    chosen.sort_by(|a, b| (b.priority, &b.key).cmp(&(a.priority, &a.key)));
    let mut total = Res::default();
    for v in &chosen {
        total.add(v.res);
    }
    let mut out: Vec<Cand> = Vec::with_capacity(chosen.len());
    for v in chosen {
        let without = total.minus(v.res);
        if covers(without, need) {
            total = without;
        } else {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{eval_for, group, job, node};
    use crate::{apply_plan, schedule_with, verify_plan, PlanRejection, ScheduleOptions};
    use taba_types::{ClientStatus, DesiredStatus, EvalStatus, EvalTrigger, Job, SchedulerOutcome};

    fn cluster(nodes: &[(&str, u64, u64)]) -> ClusterState {
        let mut s = ClusterState::new();
        for (n, cpu, mem) in nodes {
            s.upsert_node(node(n, *cpu, *mem));
        }
        s.set_index(1);
        s
    }

    /// A job of one group "g" (`count` x `cpu` MHz / `mem` MiB) at `priority`.
    fn job_p(name: &str, t: JobType, priority: u32, count: u32, cpu: u64, mem: u64) -> Job {
        let mut j = job(name, t, vec![group("g", count, cpu, mem)]);
        j.spec.priority = priority;
        j
    }

    fn run_with(s: &ClusterState, j: &Job, opts: &ScheduleOptions) -> SchedulerOutcome {
        let n = s.index() as u32;
        schedule_with(s, &eval_for(j, n), 0, opts)
    }

    fn run(s: &ClusterState, j: &Job) -> SchedulerOutcome {
        run_with(s, j, &ScheduleOptions::default())
    }

    /// Register `j`, schedule it with `opts`, verify and apply the plan.
    fn submit_with(s: &mut ClusterState, j: &Job, opts: &ScheduleOptions) -> SchedulerOutcome {
        s.upsert_job(j.clone());
        let o = run_with(s, j, opts);
        verify_plan(s, &o.plan).expect("a fresh plan verifies");
        let idx = s.index() + 1;
        apply_plan(s, &o.plan, idx);
        o
    }

    fn submit(s: &mut ClusterState, j: &Job) -> SchedulerOutcome {
        submit_with(s, j, &ScheduleOptions::default())
    }

    fn evictions(o: &SchedulerOutcome) -> Vec<&taba_types::AllocStop> {
        o.plan
            .stops
            .iter()
            .filter(|st| st.desired_status == DesiredStatus::Evict)
            .collect()
    }

    fn node_name(s: &ClusterState, id: &NodeId) -> String {
        s.node(id).unwrap().name.clone()
    }

    #[test]
    fn service_evicts_lower_priority_batch_on_a_full_node() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        let batch = job_p("crunch", JobType::Batch, 20, 4, 1000, 1024);
        assert_eq!(submit(&mut s, &batch).plan.placements.len(), 4);
        let web = job_p("web", JobType::Service, 70, 1, 1000, 1024);
        let o = submit(&mut s, &web);
        assert_eq!(o.status, EvalStatus::Complete);
        assert_eq!(o.plan.placements.len(), 1);
        let placed = &o.plan.placements[0];
        let ev = evictions(&o);
        assert_eq!(ev.len(), 1, "one batch allocation makes room");
        assert_eq!(
            ev[0].description,
            "preempted by job web (priority 70) for allocation web.g[0]"
        );
        assert_eq!(ev[0].preempted_by.as_ref(), Some(&placed.id));
        assert_eq!(placed.preempted_allocs, vec![ev[0].alloc_id.clone()]);
        // Applied: the victim is marked evicted with the reason and its evictor.
        let victim = s.alloc(&ev[0].alloc_id).unwrap();
        assert_eq!(victim.job, "crunch");
        assert_eq!(victim.desired_status, DesiredStatus::Evict);
        assert_eq!(victim.desired_description, ev[0].description);
        assert_eq!(victim.preempted_by.as_ref(), Some(&placed.id));
        assert_eq!(s.alloc(&placed.id).unwrap().preempted_allocs.len(), 1);

        // The batch job's next evaluation wants the index back, cannot
        // place it (the victim still holds its resources until it stops,
        // then the service does) and does not preempt: blocked, saying why.
        let mut e = eval_for(&batch, 99);
        e.triggered_by = EvalTrigger::Preemption;
        let again = schedule_with(&s, &e, 0, &ScheduleOptions::default());
        assert_eq!(again.status, EvalStatus::Blocked);
        assert!(again.plan.placements.is_empty());
        assert!(evictions(&again).is_empty());
        assert!(
            again
                .status_description
                .contains("memory exhausted on 1 of 1 nodes")
                || again
                    .status_description
                    .contains("cpu exhausted on 1 of 1 nodes"),
            "{}",
            again.status_description
        );
        assert!(again
            .status_description
            .contains("preempted by higher-priority work"));
        assert_eq!(again.queued["g"], 1);
    }

    #[test]
    fn no_eviction_of_equal_or_nearly_equal_priority() {
        for (low, evicts) in [(70, false), (61, false), (60, true)] {
            let mut s = cluster(&[("n1", 4000, 4096)]);
            submit(&mut s, &job_p("b", JobType::Batch, low, 4, 1000, 1024));
            let o = submit(&mut s, &job_p("web", JobType::Service, 70, 1, 1000, 1024));
            assert_eq!(!evictions(&o).is_empty(), evicts, "priority {low} vs 70");
            assert_eq!(o.plan.placements.len(), usize::from(evicts));
            let status = if evicts {
                EvalStatus::Complete
            } else {
                EvalStatus::Blocked
            };
            assert_eq!(o.status, status);
        }
    }

    #[test]
    fn least_eviction_set_wins_among_nodes() {
        // n1: two small allocations at 20; n2: one big at 30; n3: one big at
        // 25 next to one at 90 (not evictable); n4: one big at 25.
        let mut s = cluster(&[
            ("n1", 2000, 2048),
            ("n2", 2000, 2048),
            ("n3", 3000, 3072),
            ("n4", 2000, 2048),
        ]);
        let put = |s: &mut ClusterState, name: &str, p: u32, n: &str, cpu: u64, mem: u64| {
            let j = job_p(name, JobType::Batch, p, 1, cpu, mem);
            s.upsert_job(j.clone());
            let mut a = crate::tests::alloc_on(s, name, 0, n, cpu, mem);
            a.job_type = JobType::Batch;
            a.priority = p;
            a.group = "g".into();
            a.name = format!("{name}.g[0]");
            s.upsert_alloc(a);
        };
        put(&mut s, "s1", 20, "n1", 1000, 1024);
        put(&mut s, "s2", 20, "n1", 1000, 1024);
        put(&mut s, "big2", 30, "n2", 2000, 2048);
        put(&mut s, "big3", 25, "n3", 2000, 2048);
        put(&mut s, "keep3", 90, "n3", 1000, 1024);
        put(&mut s, "big4", 25, "n4", 2000, 2048);
        let web = job_p("web", JobType::Service, 70, 1, 2000, 2048);
        let o = submit(&mut s, &web);
        let ev = evictions(&o);
        // One eviction beats two; priority 25 beats 30; n3 and n4 tie on
        // count, priority and excess (none): the smaller node id wins.
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].alloc_id.as_str(), "big3-0-n3");
        assert_eq!(node_name(&s, &o.plan.placements[0].node_id), "n3");

        // Three more: n3 is full now (keep3 at 90 is not evictable by 70),
        // so next are n4 (one at 25), n2 (one at 30), then n1 (two at 20).
        let mut web2 = web.clone();
        web2.spec.groups[0].count = 4;
        web2.version = 1;
        let o = submit(&mut s, &web2);
        let nodes: Vec<String> = o
            .plan
            .placements
            .iter()
            .map(|a| node_name(&s, &a.node_id))
            .collect();
        assert_eq!(nodes, ["n4", "n2", "n1"]);
        assert_eq!(evictions(&o).len(), 4, "one each on n4 and n2, two on n1");
        assert_eq!(o.status, EvalStatus::Complete);
    }

    #[test]
    fn a_job_never_evicts_its_own_allocations() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        let v0 = job_p("web", JobType::Service, 20, 4, 1000, 1024);
        submit(&mut s, &v0);
        // Same job, now at priority 70 and one more: its own allocations at
        // priority 20 are not victims.
        let mut v1 = job_p("web", JobType::Service, 70, 5, 1000, 1024);
        v1.version = 1;
        let o = submit(&mut s, &v1);
        assert!(evictions(&o).is_empty());
        assert_eq!(o.status, EvalStatus::Blocked);
    }

    #[test]
    fn batch_does_not_preempt_by_default() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        submit(&mut s, &job_p("low", JobType::Batch, 10, 4, 1000, 1024));
        let high = job_p("high", JobType::Batch, 90, 1, 1000, 1024);
        s.upsert_job(high.clone());
        let o = run(&s, &high);
        assert!(evictions(&o).is_empty());
        assert_eq!(o.status, EvalStatus::Blocked);
        // Allowed by configuration, it does.
        let opts = ScheduleOptions {
            preemption: PreemptionConfig {
                batch: true,
                ..PreemptionConfig::default()
            },
            ..ScheduleOptions::default()
        };
        let o = run_with(&s, &high, &opts);
        assert_eq!(evictions(&o).len(), 1);
        assert_eq!(o.status, EvalStatus::Complete);
    }

    #[test]
    fn preemption_can_be_disabled() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        submit(&mut s, &job_p("low", JobType::Batch, 10, 4, 1000, 1024));
        let web = job_p("web", JobType::Service, 90, 1, 1000, 1024);
        s.upsert_job(web.clone());
        let off = ScheduleOptions {
            preemption: PreemptionConfig::disabled(),
            ..ScheduleOptions::default()
        };
        let o = run_with(&s, &web, &off);
        assert!(evictions(&o).is_empty());
        assert_eq!(o.status, EvalStatus::Blocked);
        assert_eq!(evictions(&run(&s, &web)).len(), 1);
    }

    #[test]
    fn system_allocations_are_evicted_only_for_system_jobs() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        submit(&mut s, &job_p("agentd", JobType::System, 20, 1, 4000, 4096));
        let web = job_p("web", JobType::Service, 90, 1, 1000, 1024);
        let o = submit(&mut s, &web);
        assert!(evictions(&o).is_empty());
        assert_eq!(o.status, EvalStatus::Blocked);
        // A system job of higher priority takes the node from it.
        let o = submit(&mut s, &job_p("logd", JobType::System, 80, 1, 1000, 1024));
        let ev = evictions(&o);
        assert_eq!(ev.len(), 1);
        assert!(ev[0]
            .description
            .starts_with("preempted by job logd (priority 80)"));
        assert_eq!(o.plan.placements.len(), 1);
    }

    #[test]
    fn allocations_already_stopping_are_not_evicted_and_still_count() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        let low = job_p("low", JobType::Batch, 10, 4, 1000, 1024);
        let placed = submit(&mut s, &low).plan.placements;
        // Two are stopping (desired stop, still running on the node).
        for a in &placed[..2] {
            let mut a = s.alloc(&a.id).unwrap().clone();
            a.desired_status = DesiredStatus::Stop;
            s.upsert_alloc(a);
        }
        // 3 GiB needed: the two stopping ones still hold theirs, so both
        // live ones must go, and not the stopping ones.
        let web = job_p("web", JobType::Service, 90, 1, 2000, 2048);
        let o = submit(&mut s, &web);
        let mut ev: Vec<&AllocId> = evictions(&o).iter().map(|e| &e.alloc_id).collect();
        ev.sort();
        let mut want: Vec<&AllocId> = placed[2..].iter().map(|a| &a.id).collect();
        want.sort();
        assert_eq!(ev, want);
        // Once everything stopping has stopped, the node is not overcommitted.
        for a in placed.iter() {
            let mut a = s.alloc(&a.id).unwrap().clone();
            a.client_status = ClientStatus::Complete;
            s.upsert_alloc(a);
        }
        let n1 = s.node_by_name("n1").unwrap().id.clone();
        assert_eq!(s.node_used(&n1).cpu, 2000);
    }

    #[test]
    fn verify_rejects_an_eviction_that_went_stale() {
        let mut s = cluster(&[("n1", 4000, 4096)]);
        let low = job_p("low", JobType::Batch, 10, 4, 1000, 1024);
        submit(&mut s, &low);
        let web = job_p("web", JobType::Service, 90, 1, 1000, 1024);
        s.upsert_job(web.clone());
        let o = run(&s, &web);
        let victim = evictions(&o)[0].alloc_id.clone();
        verify_plan(&s, &o.plan).unwrap();
        // Meanwhile the victim finished on its own.
        let mut a = s.alloc(&victim).unwrap().clone();
        a.client_status = ClientStatus::Complete;
        s.upsert_alloc(a.clone());
        assert_eq!(
            verify_plan(&s, &o.plan),
            Err(PlanRejection::StaleEviction(victim.clone()))
        );
        // Or was stopped by someone else (still running: not live either).
        a.client_status = ClientStatus::Running;
        a.desired_status = DesiredStatus::Stop;
        s.upsert_alloc(a.clone());
        assert_eq!(
            verify_plan(&s, &o.plan),
            Err(PlanRejection::StaleEviction(victim.clone()))
        );
        // Live again but the plan names another node: stale too.
        a.desired_status = DesiredStatus::Run;
        s.upsert_alloc(a);
        let mut moved = o.plan.clone();
        moved.stops[0].node_id = NodeId("elsewhere".into());
        assert_eq!(
            verify_plan(&s, &moved),
            Err(PlanRejection::StaleEviction(victim))
        );
        verify_plan(&s, &o.plan).unwrap();
    }

    /// A candidate whose id orders like `slot`.
    fn v(slot: u32, priority: u32, cpu: u64, mem_mib: u64) -> Cand {
        Cand {
            slot,
            key: IdKey::Uuid(u128::from(slot)),
            priority,
            res: need(cpu, mem_mib),
        }
    }

    fn need(cpu: u64, mem_mib: u64) -> Res {
        Res {
            cpu,
            mem: mem_mib << 20,
            disk: 0,
        }
    }

    fn pick(c: Vec<Cand>, need: Res) -> Option<Vec<u32>> {
        choose(c.into_iter(), need).map(|v| v.iter().map(|c| c.slot).collect())
    }

    #[test]
    fn one_victim_if_one_is_enough_lowest_priority_then_least_excess() {
        let c = vec![
            v(1, 30, 2000, 2048),
            v(2, 20, 4000, 4096),
            v(3, 20, 1000, 1024),
            v(4, 10, 500, 512),
            v(5, 20, 1000, 1024),
        ];
        // 2, 3 and 5 cover alone at priority 20; 3 and 5 free less beyond
        // the need than 2; 3 has the smaller id.
        assert_eq!(pick(c, need(1000, 1024)), Some(vec![3]));
    }

    #[test]
    fn fewest_victims_then_unneeded_ones_dropped() {
        let c = vec![
            v(1, 10, 500, 512),
            v(2, 10, 500, 512),
            v(3, 20, 1000, 1024),
            v(4, 20, 1000, 1024),
        ];
        assert_eq!(pick(c, need(2000, 2048)), Some(vec![3, 4]));
        // CPU from the one CPU-heavy allocation, memory from two others.
        let c = vec![
            v(1, 10, 100, 1024),
            v(2, 10, 100, 1024),
            v(3, 20, 2000, 100),
        ];
        assert_eq!(pick(c, need(1500, 1500)), Some(vec![1, 2, 3]));
        // Not enough in total.
        assert_eq!(pick(vec![v(1, 10, 500, 512)], need(1000, 1)), None);
    }

    #[test]
    fn sums_per_priority_bound_what_can_be_freed() {
        let mut l = LiveByPriority::default();
        l.add(20, false, need(100, 100));
        l.add(20, false, need(100, 100));
        l.add(40, true, need(1000, 1000));
        l.add(60, false, need(1, 1));
        assert_eq!(l.evictable(30, false), need(200, 200));
        assert_eq!(l.evictable(50, false), need(200, 200));
        assert_eq!(l.evictable(50, true), need(1200, 1200));
        l.remove(20, false, need(100, 100));
        l.remove(40, true, need(1000, 1000));
        assert_eq!(l.evictable(100, true), need(101, 101));
    }
}
