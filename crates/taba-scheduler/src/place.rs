//! The placer: picks nodes for a group's allocations against the state plus
//! what the plan being built has already taken or freed (the overlay).
//!
//! Bin-packing, fast: all allocations of a group are alike, so placing
//! `count` of them is one forward walk over the capacity indexes. The node
//! that fits and ends up fullest (smallest free capacity that still fits, by
//! [`Res::key`]) is filled with as many as fit before the walk moves on;
//! that is exactly what repeated best-fit would choose, without re-scanning.
//! Only when no node in use fits is an empty node opened, the largest one
//! first. Nodes this plan already touched are kept in a small index of their
//! own, keyed by their effective free capacity.

use crate::feasibility::{resolve_interpolation, GroupFilter, Scope};
use crate::ports::{GroupPorts, PortOverlay};
use crate::state::{ClusterState, Res};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use taba_types::{AllocatedPort, Allocation, PlacementFailure};

#[derive(Clone, Copy, Debug, Default)]
struct Delta {
    add: Res,
    freed: Res,
}

/// One group being placed.
pub(crate) struct GroupCtx<'a> {
    pub name: &'a str,
    pub filter: &'a GroupFilter,
    pub res: Res,
    /// Host ports each allocation holds (see [`crate::ports`]).
    pub ports: &'a GroupPorts,
}

/// Placement state of one scheduling pass.
#[derive(Default)]
pub(crate) struct Placer {
    delta: BTreeMap<u32, Delta>,
    /// Schedulable nodes with a delta, by effective free key.
    touched: BTreeSet<(u64, u32)>,
    /// Live allocations of the job per node (distinct rules).
    job_on_node: BTreeMap<u32, u32>,
    /// Live allocations per (group, node).
    group_on_node: BTreeMap<(String, u32), u32>,
    /// Only nodes whose shard is i modulo n, for `place_many`.
    shard: Option<(u32, u32)>,
    /// A node `place_many` must not pick (the source of a move).
    avoid: Option<u32>,
    /// Host ports this plan took and freed.
    ports: PortOverlay,
    /// Ports given to placements not yet built, in placement order.
    assigned: VecDeque<Vec<AllocatedPort>>,
}

/// A group takes at most 1/FILL_SHARE of a node's room for it on a first
/// visit, so nodes end up with a mix of shapes (CPU-heavy next to
/// memory-heavy) and less capacity is stranded in one dimension.
const FILL_SHARE: u64 = 2;

/// Counts per value of a `distinct_property` attribute.
pub(crate) type PropCounts = Vec<BTreeMap<String, u32>>;

impl Placer {
    pub fn with_shard(shard: Option<(u32, u32)>) -> Self {
        Self {
            shard: shard.filter(|(_, n)| *n > 1),
            ..Self::default()
        }
    }

    /// Keep `place_many` off `slot` until set back to `None`.
    pub fn set_avoid(&mut self, slot: Option<u32>) {
        self.avoid = slot;
    }

    /// Effective free capacity of a node: state minus this plan's changes.
    pub fn free(&self, state: &ClusterState, slot: u32) -> Res {
        let e = state.entry(slot);
        let mut used = e.used;
        if let Some(d) = self.delta.get(&slot) {
            used.sub(d.freed);
            used.add(d.add);
        }
        e.allocatable.minus(used)
    }

    /// Resources held on a node counting this plan's changes; more than its
    /// capacity while stopped allocations are still winding down.
    pub fn used(&self, state: &ClusterState, slot: u32) -> Res {
        let mut used = state.entry(slot).used;
        if let Some(d) = self.delta.get(&slot) {
            used.sub(d.freed);
            used.add(d.add);
        }
        used
    }

    /// Whether `slot` may take one of the group's allocations if it had the
    /// room in cpu, memory and disk: a schedulable node, feasibility,
    /// distinct rules, its host ports free.
    pub fn can_host(&self, state: &ClusterState, g: &GroupCtx, slot: u32) -> bool {
        let Some(node) = &state.entry(slot).node else {
            return false;
        };
        node.schedulable()
            && g.filter.accepts(node)
            && self.distinct_cap(state, g, slot, &self.prop_counts(state, g)) > 0
            && self.ports_free(state, slot, g)
    }

    fn change(&mut self, state: &ClusterState, slot: u32, f: impl FnOnce(&mut Delta)) {
        let old_key = self.free(state, slot).key();
        f(self.delta.entry(slot).or_default());
        if state.entry(slot).schedulable() {
            self.touched.remove(&(old_key, slot));
            self.touched.insert((self.free(state, slot).key(), slot));
        }
    }

    /// Record a live allocation of the job that stays (for distinct rules).
    pub fn count_live(&mut self, state: &ClusterState, a: &Allocation) {
        if let Some(slot) = state.node_slot(&a.node_id) {
            *self.job_on_node.entry(slot).or_default() += 1;
            *self
                .group_on_node
                .entry((a.group.clone(), slot))
                .or_default() += 1;
        }
    }

    /// This plan stops `a`: its resources are free for the plan's placements.
    pub fn release(&mut self, state: &ClusterState, a: &Allocation, was_counted: bool) {
        let Some(slot) = state.node_slot(&a.node_id) else {
            return;
        };
        if was_counted {
            dec(&mut self.job_on_node, &slot);
            dec(&mut self.group_on_node, &(a.group.clone(), slot));
        }
        if a.holds_resources() {
            let r = Res::of(&a.resources);
            self.change(state, slot, |d| d.freed.add(r));
            if !a.ports.is_empty() {
                self.ports.release(slot, &a.ports);
            }
        }
    }

    /// Whether `slot` has the group's host ports free (always, without ports).
    pub(crate) fn ports_free(&self, state: &ClusterState, slot: u32, g: &GroupCtx) -> bool {
        g.ports.is_empty() || self.ports.room(state, slot, g.ports) > 0
    }

    /// The host ports of the next placement made (in order), empty for a
    /// group without ports.
    pub fn next_ports(&mut self) -> Vec<AllocatedPort> {
        self.assigned.pop_front().unwrap_or_default()
    }

    pub(crate) fn take(
        &mut self,
        state: &ClusterState,
        g: &GroupCtx,
        slot: u32,
        n: u64,
        props: &mut PropCounts,
    ) {
        let r = g.res.times(n);
        self.change(state, slot, |d| d.add.add(r));
        if !g.ports.is_empty() {
            let taken = self.ports.take(state, slot, g.ports, n);
            self.assigned.extend(taken);
        }
        let n32 = n as u32;
        *self.job_on_node.entry(slot).or_default() += n32;
        *self
            .group_on_node
            .entry((g.name.to_string(), slot))
            .or_default() += n32;
        if let Some(node) = &state.entry(slot).node {
            for (p, counts) in g.filter.distinct_properties.iter().zip(props.iter_mut()) {
                if let Some(v) = resolve_interpolation(&p.attribute, node) {
                    *counts.entry(v).or_default() += n32;
                }
            }
        }
    }

    pub(crate) fn distinct_cap(
        &self,
        state: &ClusterState,
        g: &GroupCtx,
        slot: u32,
        props: &PropCounts,
    ) -> u64 {
        let mut cap = u64::MAX;
        match g.filter.distinct_hosts {
            Some(Scope::Job) if self.job_on_node.get(&slot).copied().unwrap_or(0) > 0 => return 0,
            Some(Scope::Group)
                if self
                    .group_on_node
                    .get(&(g.name.to_string(), slot))
                    .copied()
                    .unwrap_or(0)
                    > 0 =>
            {
                return 0
            }
            Some(_) => cap = 1,
            None => {}
        }
        if !g.filter.distinct_properties.is_empty() {
            let Some(node) = &state.entry(slot).node else {
                return 0;
            };
            for (p, counts) in g.filter.distinct_properties.iter().zip(props) {
                let Some(v) = resolve_interpolation(&p.attribute, node) else {
                    return 0;
                };
                let used = counts.get(&v).copied().unwrap_or(0);
                cap = cap.min(u64::from(p.limit.saturating_sub(used)));
            }
        }
        cap
    }

    /// Counts of the job's (or group's) live allocations per property value.
    pub(crate) fn prop_counts(&self, state: &ClusterState, g: &GroupCtx) -> PropCounts {
        g.filter
            .distinct_properties
            .iter()
            .map(|p| {
                let mut counts = BTreeMap::new();
                let mut add = |slot: u32, n: u32| {
                    if let Some(node) = &state.entry(slot).node {
                        if let Some(v) = resolve_interpolation(&p.attribute, node) {
                            *counts.entry(v).or_default() += n;
                        }
                    }
                };
                match p.scope {
                    Scope::Job => self.job_on_node.iter().for_each(|(s, n)| add(*s, *n)),
                    Scope::Group => self
                        .group_on_node
                        .iter()
                        .filter(|((grp, _), _)| grp == g.name)
                        .for_each(|((_, s), n)| add(*s, *n)),
                }
                counts
            })
            .collect()
    }

    /// Whether `slot` may be picked in this pass: in its shard (always,
    /// without shards) and not the node being avoided.
    pub(crate) fn in_shard(&self, state: &ClusterState, slot: u32) -> bool {
        self.avoid != Some(slot)
            && self
                .shard
                .is_none_or(|(i, n)| state.entry(slot).shard % n == i)
    }

    /// Live allocations (staying, plus this plan's placements) per node
    /// slot: the job's, or only those of `group`.
    pub(crate) fn live_per_node(&self, group: Option<&str>) -> Vec<(u32, u32)> {
        match group {
            None => self.job_on_node.iter().map(|(s, n)| (*s, *n)).collect(),
            Some(g) => self
                .group_on_node
                .range((g.to_string(), 0)..=(g.to_string(), u32::MAX))
                .map(|((_, s), n)| (*s, *n))
                .collect(),
        }
    }

    /// How many of the group's allocations `slot` can take now (0: none).
    fn room(&self, state: &ClusterState, g: &GroupCtx, slot: u32, props: &PropCounts) -> u64 {
        if self.avoid == Some(slot) {
            return 0;
        }
        let e = state.entry(slot);
        if let Some((i, n)) = self.shard {
            if e.shard % n != i {
                return 0;
            }
        }
        let Some(node) = &e.node else { return 0 };
        if !node.schedulable() || !g.res.fits_in(&self.free(state, slot)) || !g.filter.accepts(node)
        {
            return 0;
        }
        let mut room = self
            .free(state, slot)
            .how_many(&g.res)
            .min(self.distinct_cap(state, g, slot, props));
        if !g.ports.is_empty() && room > 0 {
            room = room.min(self.ports.room(state, slot, g.ports));
        }
        room
    }

    /// Place up to `n` allocations of a group; returns the chosen node slot
    /// of each (fewer than `n` when the cluster has no room for the rest).
    pub fn place_many(&mut self, state: &ClusterState, g: &GroupCtx, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let mut props = self.prop_counts(state, g);
        let lb = g.res.key();
        let mut used = state.used_from(lb).peekable();
        let mut empty = state.empty_largest_first().peekable();
        // Nodes this group already took its share of; revisited only when
        // nothing else fits.
        let mut visited: BTreeSet<u32> = BTreeSet::new();
        let mut revisit = false;
        while out.len() < n {
            let skip = |s: u32| !revisit && visited.contains(&s);
            let touched = self
                .touched
                .range((lb, 0)..)
                .copied()
                .find(|&(_, s)| !skip(s) && self.room(state, g, s, &props) > 0);
            let base = loop {
                match used.peek().copied() {
                    Some((k, s))
                        if !self.delta.contains_key(&s) && self.room(state, g, s, &props) > 0 =>
                    {
                        break Some((k, s))
                    }
                    Some(_) => {
                        used.next();
                    }
                    None => break None,
                }
            };
            let chosen = match (touched, base) {
                (Some(t), Some(b)) if t <= b => t.1,
                (_, Some(b)) => {
                    used.next();
                    b.1
                }
                (Some(t), None) => t.1,
                (None, None) => {
                    let found = loop {
                        match empty.peek().copied() {
                            Some(s)
                                if !self.delta.contains_key(&s)
                                    && self.room(state, g, s, &props) > 0 =>
                            {
                                break Some(s)
                            }
                            Some(_) => {
                                empty.next();
                            }
                            None => break None,
                        }
                    };
                    match found {
                        Some(s) => {
                            empty.next();
                            s
                        }
                        None if !revisit && !visited.is_empty() => {
                            revisit = true;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            let room = self.room(state, g, chosen, &props);
            let share = if revisit {
                room
            } else {
                room.div_ceil(FILL_SHARE)
            };
            let k = share.min((n - out.len()) as u64);
            visited.insert(chosen);
            self.take(state, g, chosen, k, &mut props);
            out.extend(std::iter::repeat_n(chosen, k as usize));
        }
        out
    }

    /// Place one allocation of a group on a given node (system jobs).
    /// Err names the exhausted dimension or the distinct rule.
    pub fn place_on(
        &mut self,
        state: &ClusterState,
        g: &GroupCtx,
        slot: u32,
    ) -> Result<(), String> {
        let mut props = self.prop_counts(state, g);
        if let Some(dim) = g.res.exceeds(&self.free(state, slot)) {
            return Err(dim.to_string());
        }
        if self.distinct_cap(state, g, slot, &props) == 0 {
            return Err("distinct".into());
        }
        if let Some(port) = self.ports.conflict(state, slot, g.ports) {
            return Err(port);
        }
        self.take(state, g, slot, 1, &mut props);
        Ok(())
    }

    /// Why the group's remaining placements fail: every schedulable node,
    /// the filter that removed it or the dimension that ran out.
    pub fn explain(&self, state: &ClusterState, g: &GroupCtx) -> PlacementFailure {
        let props = self.prop_counts(state, g);
        let mut f = PlacementFailure::default();
        for (slot, e) in state.node_entries() {
            let Some(node) = &e.node else { continue };
            if !node.schedulable() {
                continue;
            }
            f.nodes_evaluated += 1;
            f.nodes_available += 1;
            if let Some(reason) = g.filter.reject_reason(node) {
                *f.filtered.entry(reason).or_default() += 1;
            } else if self.distinct_cap(state, g, slot, &props) == 0 {
                let reason = if g.filter.distinct_hosts.is_some() {
                    "distinct_hosts".to_string()
                } else {
                    "distinct_property".to_string()
                };
                *f.filtered.entry(reason).or_default() += 1;
            } else if let Some(port) = self.ports.conflict(state, slot, g.ports) {
                *f.exhausted.entry(port).or_default() += 1;
            } else if let Some(dim) = g.res.exceeds(&self.free(state, slot)) {
                *f.exhausted.entry(dim.to_string()).or_default() += 1;
            }
        }
        f
    }
}

fn dec<K: Ord>(m: &mut BTreeMap<K, u32>, k: &K) {
    if let Some(v) = m.get_mut(k) {
        *v = v.saturating_sub(1);
        if *v == 0 {
            m.remove(k);
        }
    }
}
