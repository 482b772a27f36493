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
use crate::state::{ClusterState, Res};
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
    /// not make room even by evicting everything allowed.
    pub fn new(
        state: &ClusterState,
        placer: &Placer,
        g: &GroupCtx,
        who: &Preemptor,
        stopped: &BTreeSet<AllocId>,
    ) -> Self {
        let mut s = Self {
            ranked: BTreeSet::new(),
            sets: BTreeMap::new(),
        };
        let slots: Vec<u32> = state.node_entries().map(|(slot, _)| slot).collect();
        for slot in slots {
            if placer.in_shard(state, slot) {
                s.refresh(state, placer, g, who, stopped, slot);
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
        stopped: &BTreeSet<AllocId>,
        slot: u32,
    ) {
        if let Some((rank, _)) = self.sets.remove(&slot) {
            self.ranked
                .remove(&(rank, state.entry(slot).id.clone(), slot));
        }
        if let Some((rank, victims)) = best_on_node(state, placer, g, who, stopped, slot) {
            self.ranked.insert((rank, state.entry(slot).id.clone(), slot));
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
/// make room.
pub(crate) fn best_on_node(
    state: &ClusterState,
    placer: &Placer,
    g: &GroupCtx,
    who: &Preemptor,
    stopped: &BTreeSet<AllocId>,
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
    let mut candidates: Vec<Victim> = Vec::new();
    for a in e.allocs.iter().copied() {
        let Some(v) = state.live_view(a) else {
            continue;
        };
        if v.priority > who.max_priority
            || (v.system && !who.evicts_system())
            || (v.namespace == who.namespace && v.job == who.job)
            || gain(v.res, need, need) == 0
        {
            continue;
        }
        let id = state.alloc_id_at(a);
        if stopped.contains(&id) {
            continue;
        }
        candidates.push(Victim {
            id,
            priority: v.priority,
            res: v.res,
        });
    }
    let victims = choose(candidates, need)?;
    let mut freed = Res::default();
    for v in &victims {
        freed.add(v.res);
    }
    let rank = (
        victims.len(),
        victims.iter().map(|v| v.priority).max().unwrap_or(0),
        victims.iter().map(|v| u64::from(v.priority)).sum(),
        weight(freed.minus(need)),
    );
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
    part(r.cpu, rem.cpu, need.cpu) + part(r.mem, rem.mem, need.mem) + part(r.disk, rem.disk, need.disk)
}

fn covers(freed: Res, need: Res) -> bool {
    need.fits_in(&freed)
}

/// Pick the victims among `candidates` that free `need`: one allocation if
/// any is enough alone (the lowest priority, then the least excess);
/// otherwise greedily the one covering most of what is still missing, then
/// drop any that turned out unnecessary (highest priority first). `None`
/// when all of them together are not enough.
fn choose(mut candidates: Vec<Victim>, need: Res) -> Option<Vec<Victim>> {
    candidates.sort_by(|a, b| (a.priority, &a.id).cmp(&(b.priority, &b.id)));
    let single = candidates
        .iter()
        .filter(|c| covers(c.res, need))
        .min_by(|a, b| {
            (a.priority, weight(a.res.minus(need)), &a.id).cmp(&(
                b.priority,
                weight(b.res.minus(need)),
                &b.id,
            ))
        });
    if let Some(v) = single {
        return Some(vec![v.clone()]);
    }
    let mut rem = need;
    let mut chosen: Vec<Victim> = Vec::new();
    while rem != Res::default() {
        // Candidates are sorted by (priority, id): on equal gain the first
        // one found, the lowest priority, wins.
        let (i, g) = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (i, gain(c.res, rem, need)))
            .fold(None::<(usize, u64)>, |best, (i, g)| match best {
                Some((_, bg)) if bg >= g => best,
                _ => Some((i, g)),
            })?;
        if g == 0 {
            return None;
        }
        let v = candidates.remove(i);
        rem.sub(v.res);
        chosen.push(v);
    }
    // Drop victims the others make unnecessary, highest priority first.
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by(|a, b| {
        (chosen[*b].priority, &chosen[*b].id).cmp(&(chosen[*a].priority, &chosen[*a].id))
    });
    let mut keep = vec![true; chosen.len()];
    let mut total = Res::default();
    for v in &chosen {
        total.add(v.res);
    }
    for i in order {
        let without = total.minus(chosen[i].res);
        if covers(without, need) {
            keep[i] = false;
            total = without;
        }
    }
    let mut out: Vec<Victim> = chosen
        .into_iter()
        .zip(keep)
        .filter_map(|(v, k)| k.then_some(v))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, priority: u32, cpu: u64, mem_mib: u64) -> Victim {
        Victim {
            id: AllocId(id.into()),
            priority,
            res: Res {
                cpu,
                mem: mem_mib << 20,
                disk: 0,
            },
        }
    }

    fn need(cpu: u64, mem_mib: u64) -> Res {
        Res {
            cpu,
            mem: mem_mib << 20,
            disk: 0,
        }
    }

    fn ids(vs: &[Victim]) -> Vec<&str> {
        vs.iter().map(|v| v.id.as_str()).collect()
    }

    #[test]
    fn one_victim_if_one_is_enough_lowest_priority_then_least_excess() {
        let c = vec![
            v("a", 30, 2000, 2048),
            v("b", 20, 4000, 4096),
            v("c", 20, 1000, 1024),
            v("d", 10, 500, 512),
        ];
        // c and b both cover alone at priority 20; c frees less beyond.
        assert_eq!(ids(&choose(c, need(1000, 1024)).unwrap()), ["c"]);
    }

    #[test]
    fn fewest_victims_then_unneeded_ones_dropped() {
        let c = vec![
            v("a", 10, 500, 512),
            v("b", 10, 500, 512),
            v("c", 20, 1000, 1024),
            v("d", 20, 1000, 1024),
        ];
        let got = choose(c, need(2000, 2048)).unwrap();
        assert_eq!(ids(&got), ["c", "d"]);
        // Not enough in total.
        assert!(choose(vec![v("a", 10, 500, 512)], need(1000, 1)).is_none());
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
