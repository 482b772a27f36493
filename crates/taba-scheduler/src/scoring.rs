//! Scored placement: `spread` blocks, affinities and the `spread` scoring
//! algorithm.
//!
//! A group with none of these (and `scoring = "binpack"`) never comes here:
//! it keeps the placer's fast bin-pack walk ([`Placer::place_many`]). For
//! the others, each allocation is placed on the best-scored node among the
//! *candidates*: schedulable nodes that pass the group's filter (drivers,
//! constraints), are in the pass's shard, have room for the allocation, and
//! where the distinct rules leave room. Constraints, resources and
//! `distinct_*` stay hard; everything below only ranks.
//!
//! # The score
//!
//! For a candidate node and the allocation being placed:
//!
//! ```text
//! score = (fit + A + S) / k          k = 1 + [group has affinities] + [group has spreads]
//! ```
//!
//! - `fit` in [0, 1]: with `u` = the node's utilization after the placement,
//!   the mean of its CPU and memory fractions, `binpack` scores `u` (the
//!   fullest node that fits wins) and `spread` scores `1 - u` (the least
//!   used wins).
//! - `A` in [-1, 1] (affinities of the job, group and tasks): the sum of
//!   `weight / 100` over the affinities that match the node, clamped. A node
//!   affinity matches when its comparison holds on the node (the same
//!   operators as constraints); an allocation affinity matches when the
//!   node's topology value (its `attribute`, or the node itself) hosts live
//!   allocations of the named job (and group) in the job's namespace. Live
//!   means: staying after this plan, plus this plan's own placements.
//! - `S` in [-1, 1] (spreads of the job and group): the weighted mean of one
//!   boost per spread, each spread's weight relative to the sum of the
//!   group's spread weights. With `T` = the group's live allocations plus
//!   the ones being placed, a value's desired count is `T x percent / 100`
//!   for a listed target, the unlisted percentage shared evenly by the
//!   other values the feasible nodes have, or `T / values` for an even
//!   spread. With `used` = the group's live allocations on that value before
//!   this placement, the boost is
//!   - `0.5 + 0.5 x (desired - used) / desired` while `used < desired`
//!     (in (0.5, 1]: the further below its target, the higher),
//!   - `-0.5 - 0.25 x min(1, (used - desired) / desired)` once the target is
//!     met (in [-0.75, -0.5]),
//!   - `-1` when the desired count is 0 or the node lacks the attribute.
//!
//! Dividing by `k` keeps the score in [-1, 1] as Nomad's normalization does;
//! it is the same for every node of a group, so it does not change the
//! ranking. The gap between a value below its target and one that met it is
//! more than 1 in `S`, more than any `fit` difference: with one spread and
//! no affinity the targets are met exactly whenever capacity allows (70/30
//! of 10 gives 7 and 3), and a value that has no room left is simply not a
//! candidate, so the others take the rest. An affinity of weight 100 moves
//! `A` by 1, about as much as a spread target; lighter ones yield to it.
//!
//! Ties go to the node with the smallest id, so the plan is deterministic.
//!
//! # Cost
//!
//! Everything that does not change while a group is placed is computed once
//! per group, in O(nodes): the candidates sorted by id, node-affinity sums,
//! each node's spread values and topology values (interned to small ids),
//! the desired counts and the hosted counts. Each allocation is then one
//! pass over the candidates with a few arithmetic operations each, and the
//! chosen node's counts are updated in place.

use crate::feasibility::{resolve_interpolation, Compiled};
use crate::place::{GroupCtx, Placer};
use crate::state::{ClusterState, Res};
use std::collections::BTreeMap;
use taba_types::{Affinity, Constraint, Job, NodeId, Scoring, Spread, TaskGroupSpec};

/// No value: the node lacks the attribute.
const NONE: u32 = u32::MAX;

/// A group's soft preferences, compiled once per scheduling pass.
pub(crate) struct Preferences<'a> {
    scoring: Scoring,
    spreads: Vec<&'a Spread>,
    /// Node affinities and their weight / 100.
    node_affinities: Vec<(Compiled, f64)>,
    alloc_affinities: Vec<&'a Affinity>,
    namespace: &'a str,
    job: &'a str,
}

/// One spread being driven toward its targets.
struct SpreadState {
    /// Weight relative to the group's other spreads.
    share: f64,
    /// Value id of each candidate (NONE: lacks the attribute).
    of_cand: Vec<u32>,
    desired: Vec<f64>,
    used: Vec<f64>,
}

/// One allocation affinity.
struct AllocAffinityState {
    weight: f64,
    /// Topology id of each candidate (NONE: lacks the attribute).
    of_cand: Vec<u32>,
    /// Live allocations of the target per topology id.
    hosted: Vec<u32>,
    /// Placing one of this group's allocations counts toward the target.
    counts_self: bool,
}

struct Candidate {
    slot: u32,
    in_shard: bool,
    cap: Res,
    free: Res,
    node_affinity: f64,
}

/// Values of `attribute` on the candidates, interned in candidate order.
fn intern(state: &ClusterState, cands: &[Candidate], attribute: &str) -> Interned {
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    let of_cand = cands
        .iter()
        .map(|c| {
            let node = state.entry(c.slot).node.as_ref();
            match node.and_then(|n| resolve_interpolation(attribute, n)) {
                Some(v) => {
                    let next = ids.len() as u32;
                    *ids.entry(v).or_insert(next)
                }
                None => NONE,
            }
        })
        .collect();
    Interned { of_cand, ids }
}

struct Interned {
    of_cand: Vec<u32>,
    ids: BTreeMap<String, u32>,
}

impl Interned {
    /// The id of the value `attribute` has on the node at `slot`.
    fn id_of_slot(&self, state: &ClusterState, slot: u32, attribute: &str) -> Option<u32> {
        let node = state.entry(slot).node.as_ref()?;
        self.ids
            .get(&resolve_interpolation(attribute, node)?)
            .copied()
    }
}

/// The boost of one spread value (see the module docs).
fn spread_boost(desired: f64, used: f64) -> f64 {
    if desired <= 0.0 {
        -1.0
    } else if used < desired {
        0.5 + 0.5 * (desired - used) / desired
    } else {
        -0.5 - 0.25 * ((used - desired) / desired).min(1.0)
    }
}

/// `used / cap` in [0, 1] (1 for a dimension the node does not have).
fn fraction(used: u64, cap: u64) -> f64 {
    if cap == 0 {
        1.0
    } else {
        (used as f64 / cap as f64).min(1.0)
    }
}

impl<'a> Preferences<'a> {
    /// The group's preferences; `None` when it has none and is bin-packed,
    /// so it takes the fast path.
    pub fn of(job: &'a Job, g: &'a TaskGroupSpec) -> Option<Self> {
        let spreads: Vec<&Spread> = job.spec.spread.iter().chain(&g.spread).collect();
        let mut node_affinities = Vec::new();
        let mut alloc_affinities = Vec::new();
        let affinities = job
            .spec
            .affinity
            .iter()
            .chain(&g.affinity)
            .chain(g.tasks.iter().flat_map(|t| &t.affinity));
        for a in affinities {
            if a.is_alloc_form() {
                alloc_affinities.push(a);
            } else {
                let c = Constraint {
                    attribute: a.attribute.clone(),
                    operator: a.operator_or_default(),
                    value: a.value.clone().unwrap_or_default(),
                };
                node_affinities.push((Compiled::new(c), f64::from(a.weight) / 100.0));
            }
        }
        if job.spec.scoring.is_binpack()
            && spreads.is_empty()
            && node_affinities.is_empty()
            && alloc_affinities.is_empty()
        {
            return None;
        }
        Some(Self {
            scoring: job.spec.scoring,
            spreads,
            node_affinities,
            alloc_affinities,
            namespace: &job.spec.namespace,
            job: &job.spec.name,
        })
    }

    fn candidates(&self, placer: &Placer, state: &ClusterState, g: &GroupCtx) -> Vec<Candidate> {
        let mut nodes: Vec<(&NodeId, u32)> = state
            .node_entries()
            .filter_map(|(slot, e)| {
                let node = e.node.as_ref()?;
                (node.schedulable() && g.filter.accepts(node)).then_some((&node.id, slot))
            })
            .collect();
        nodes.sort_unstable();
        nodes
            .into_iter()
            .map(|(_, slot)| {
                let e = state.entry(slot);
                let node = e.node.as_ref().expect("candidates have a record");
                let node_affinity = self
                    .node_affinities
                    .iter()
                    .filter(|(c, _)| c.holds(node))
                    .map(|(_, w)| w)
                    .sum();
                Candidate {
                    slot,
                    in_shard: placer.in_shard(state, slot),
                    cap: e.allocatable,
                    free: placer.free(state, slot),
                    node_affinity,
                }
            })
            .collect()
    }

    fn spread_states(
        &self,
        placer: &Placer,
        state: &ClusterState,
        g: &GroupCtx,
        cands: &[Candidate],
        n: usize,
    ) -> Vec<SpreadState> {
        let live = placer.live_per_node(Some(g.name));
        let total = (live.iter().map(|(_, k)| u64::from(*k)).sum::<u64>() + n as u64) as f64;
        let weights: u32 = self.spreads.iter().map(|s| s.weight).sum();
        self.spreads
            .iter()
            .map(|sp| {
                let interned = intern(state, cands, &sp.attribute);
                let values = interned.ids.len();
                let mut used = vec![0.0; values];
                for (slot, k) in &live {
                    if let Some(id) = interned.id_of_slot(state, *slot, &sp.attribute) {
                        used[id as usize] += f64::from(*k);
                    }
                }
                let mut desired = vec![0.0; values];
                if sp.targets.is_empty() {
                    desired.fill(total / values.max(1) as f64);
                } else {
                    let listed: u32 = sp.targets.iter().map(|t| t.percent).sum();
                    let unlisted = interned
                        .ids
                        .keys()
                        .filter(|v| !sp.targets.iter().any(|t| &t.value == *v))
                        .count();
                    let rest = f64::from(100u32.saturating_sub(listed)) / unlisted.max(1) as f64;
                    for (v, id) in &interned.ids {
                        let percent = sp
                            .targets
                            .iter()
                            .find(|t| &t.value == v)
                            .map_or(rest, |t| f64::from(t.percent));
                        desired[*id as usize] = total * percent / 100.0;
                    }
                }
                SpreadState {
                    share: f64::from(sp.weight) / f64::from(weights.max(1)),
                    of_cand: interned.of_cand,
                    desired,
                    used,
                }
            })
            .collect()
    }

    fn alloc_affinity_states(
        &self,
        placer: &Placer,
        state: &ClusterState,
        g: &GroupCtx,
        cands: &[Candidate],
    ) -> Vec<AllocAffinityState> {
        let mut cand_of_slot: BTreeMap<u32, u32> = BTreeMap::new();
        for (i, c) in cands.iter().enumerate() {
            cand_of_slot.insert(c.slot, i as u32);
        }
        self.alloc_affinities
            .iter()
            .map(|a| {
                let target = a.job.as_deref().unwrap_or_default();
                let group = a.group.as_deref();
                // Where the target's live allocations are, as (slot, count).
                let hosts: Vec<(u32, u32)> = if target == self.job {
                    placer.live_per_node(group)
                } else {
                    state
                        .allocs_for_job(self.namespace, target)
                        .filter(|x| x.is_live() && group.is_none_or(|g| g == x.group))
                        .filter_map(|x| state.node_slot(&x.node_id).map(|s| (s, 1)))
                        .collect()
                };
                let (of_cand, hosted) = if a.attribute.is_empty() {
                    // The node itself is the topology.
                    let mut hosted = vec![0; cands.len()];
                    for (slot, k) in &hosts {
                        if let Some(i) = cand_of_slot.get(slot) {
                            hosted[*i as usize] += k;
                        }
                    }
                    ((0..cands.len() as u32).collect(), hosted)
                } else {
                    let interned = intern(state, cands, &a.attribute);
                    let mut hosted = vec![0; interned.ids.len()];
                    for (slot, k) in &hosts {
                        if let Some(id) = interned.id_of_slot(state, *slot, &a.attribute) {
                            hosted[id as usize] += k;
                        }
                    }
                    (interned.of_cand, hosted)
                };
                AllocAffinityState {
                    weight: f64::from(a.weight) / 100.0,
                    of_cand,
                    hosted,
                    counts_self: target == self.job && group.is_none_or(|x| x == g.name),
                }
            })
            .collect()
    }

    /// Place up to `n` allocations of the group, one at a time on the
    /// best-scored candidate; returns the chosen node slots (fewer than `n`
    /// when no candidate has room for the rest).
    pub fn place(
        &self,
        placer: &mut Placer,
        state: &ClusterState,
        g: &GroupCtx,
        n: usize,
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let mut cands = self.candidates(placer, state, g);
        let mut spreads = self.spread_states(placer, state, g, &cands, n);
        let mut allocs = self.alloc_affinity_states(placer, state, g, &cands);
        let has_affinity = !self.node_affinities.is_empty() || !allocs.is_empty();
        let has_spread = !spreads.is_empty();
        let k = 1.0 + f64::from(u8::from(has_affinity)) + f64::from(u8::from(has_spread));
        let distinct =
            g.filter.distinct_hosts.is_some() || !g.filter.distinct_properties.is_empty();
        let mut props = placer.prop_counts(state, g);
        while out.len() < n {
            let mut best: Option<(f64, usize)> = None;
            for (i, c) in cands.iter().enumerate() {
                if !c.in_shard || !g.res.fits_in(&c.free) || !placer.ports_free(state, c.slot, g) {
                    continue;
                }
                if distinct && placer.distinct_cap(state, g, c.slot, &props) == 0 {
                    continue;
                }
                let mut after = c.cap.minus(c.free);
                after.add(g.res);
                let u = (fraction(after.cpu, c.cap.cpu) + fraction(after.mem, c.cap.mem)) / 2.0;
                let fit = match self.scoring {
                    Scoring::Binpack => u,
                    Scoring::Spread => 1.0 - u,
                };
                let mut a = c.node_affinity;
                for al in &allocs {
                    let t = al.of_cand[i];
                    if t != NONE && al.hosted[t as usize] > 0 {
                        a += al.weight;
                    }
                }
                let mut s = 0.0;
                for sp in &spreads {
                    let v = sp.of_cand[i];
                    let b = if v == NONE {
                        -1.0
                    } else {
                        spread_boost(sp.desired[v as usize], sp.used[v as usize])
                    };
                    s += sp.share * b;
                }
                let score = (fit + a.clamp(-1.0, 1.0) + s) / k;
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, i));
                }
            }
            let Some((_, i)) = best else { break };
            let c = &mut cands[i];
            placer.take(state, g, c.slot, 1, &mut props);
            c.free.sub(g.res);
            for sp in &mut spreads {
                let v = sp.of_cand[i];
                if v != NONE {
                    sp.used[v as usize] += 1.0;
                }
            }
            for al in allocs.iter_mut().filter(|a| a.counts_self) {
                let t = al.of_cand[i];
                if t != NONE {
                    al.hosted[t as usize] += 1;
                }
            }
            out.push(c.slot);
        }
        out
    }
}
