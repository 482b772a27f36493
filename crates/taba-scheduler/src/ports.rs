//! Host ports as a scheduled resource.
//!
//! A node's ports in use are the ports of its allocations that hold
//! resources (client status not terminal, as for CPU and memory: a stopped
//! allocation's port is free once its agent reports it ended), plus the
//! node's `reserved_ports`. [`HeldPorts`] counts them per node inside
//! [`ClusterState`]; [`PortOverlay`] adds what the plan being built has taken
//! and freed.
//!
//! Rules:
//! - a group with static ports fits only nodes where every one of them is
//!   free, and at most one of its allocations per node (the second would
//!   need the same port);
//! - a dynamic port is the lowest free port of the node's dynamic range
//!   (`dynamic_ports`, 20000-32000 by default) that is neither reserved, nor
//!   held, nor taken earlier in the same plan: deterministic, and densely
//!   packed so ranges stay readable;
//! - [`verify_ports`]: a plan whose ports collide with ports taken since its
//!   snapshot is rejected whole.
//!
//! Groups without ports never reach this module's slow parts: the placer
//! asks [`GroupPorts::is_empty`] first.

use crate::plan::PlanRejection;
use crate::state::ClusterState;
use std::collections::{BTreeMap, BTreeSet};
use taba_types::{AllocatedPort, Node, Plan, TaskGroupSpec};

/// The ports one group asks for, prepared once per scheduling pass.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupPorts {
    statics: Vec<(String, u16)>,
    dynamic: Vec<String>,
}

impl GroupPorts {
    pub fn of(g: &TaskGroupSpec) -> Self {
        let mut p = Self::default();
        for spec in &g.network.ports {
            match spec.static_port.and_then(|v| u16::try_from(v).ok()) {
                Some(v) => p.statics.push((spec.label.clone(), v)),
                None => p.dynamic.push(spec.label.clone()),
            }
        }
        p
    }
    /// Asks for no ports: the placer's fast path.
    pub fn is_empty(&self) -> bool {
        self.statics.is_empty() && self.dynamic.is_empty()
    }
}

/// Ports held on one node by allocations that hold resources: port ->
/// number of holders (more than one only if records disagree).
#[derive(Clone, Debug, Default)]
pub(crate) struct HeldPorts(BTreeMap<u16, u32>);

impl HeldPorts {
    pub fn add(&mut self, ports: &[AllocatedPort]) {
        for p in ports {
            *self.0.entry(p.value).or_default() += 1;
        }
    }
    pub fn remove(&mut self, ports: &[AllocatedPort]) {
        for p in ports {
            if let Some(n) = self.0.get_mut(&p.value) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(&p.value);
                }
            }
        }
    }
    pub fn count(&self, port: u16) -> u32 {
        self.0.get(&port).copied().unwrap_or(0)
    }
    /// Held ports within `first..=last`, ascending.
    pub fn ports_in(&self, first: u16, last: u16) -> impl Iterator<Item = u16> + '_ {
        self.0.range(first..=last).map(|(p, _)| *p)
    }
}

/// What one plan changed of one node's ports.
#[derive(Clone, Debug, Default)]
struct PortDelta {
    taken: BTreeSet<u16>,
    freed: BTreeMap<u16, u32>,
}

/// The plan's changes to every node's ports, over the state's.
#[derive(Clone, Debug, Default)]
pub(crate) struct PortOverlay {
    nodes: BTreeMap<u32, PortDelta>,
}

impl PortOverlay {
    /// Whether `port` on node `slot` is reserved, held, or taken by the plan.
    fn in_use(&self, state: &ClusterState, slot: u32, port: u16) -> bool {
        let e = state.entry(slot);
        if e.node.as_ref().is_some_and(|n| n.reserved_ports.contains(port)) {
            return true;
        }
        let held = e.ports.count(port);
        match self.nodes.get(&slot) {
            Some(d) => {
                d.taken.contains(&port) || held > d.freed.get(&port).copied().unwrap_or(0)
            }
            None => held > 0,
        }
    }

    /// Free dynamic ports on node `slot`.
    fn dynamic_free(&self, state: &ClusterState, slot: u32, node: &Node) -> u64 {
        let range = node.dynamic_ports;
        let reserved = &node.reserved_ports;
        let e = state.entry(slot);
        let delta = self.nodes.get(&slot);
        let freed = |p: u16| delta.and_then(|d| d.freed.get(&p).copied()).unwrap_or(0);
        let mut busy = reserved.count_within(range.first, range.last);
        for p in e.ports.ports_in(range.first, range.last) {
            if !reserved.contains(p) && e.ports.count(p) > freed(p) {
                busy += 1;
            }
        }
        if let Some(d) = delta {
            for &p in d.taken.range(range.first..=range.last) {
                // Taken ports were free when taken: not reserved, not held.
                if !reserved.contains(p) && e.ports.count(p) <= freed(p) {
                    busy += 1;
                }
            }
        }
        range.len().saturating_sub(busy)
    }

    /// How many of the group's allocations node `slot` can take as far as
    /// ports go (`u64::MAX` for a group without ports).
    pub fn room(&self, state: &ClusterState, slot: u32, g: &GroupPorts) -> u64 {
        if g.is_empty() {
            return u64::MAX;
        }
        self.conflict_and_room(state, slot, g).1
    }

    /// Why node `slot` cannot take one more of the group's allocations for
    /// its ports: `port 8080` (a static port in use) or `dynamic ports`.
    pub fn conflict(&self, state: &ClusterState, slot: u32, g: &GroupPorts) -> Option<String> {
        if g.is_empty() {
            return None;
        }
        self.conflict_and_room(state, slot, g).0
    }

    fn conflict_and_room(
        &self,
        state: &ClusterState,
        slot: u32,
        g: &GroupPorts,
    ) -> (Option<String>, u64) {
        let Some(node) = state.entry(slot).node.as_ref() else {
            return (Some("dynamic ports".into()), 0);
        };
        let mut room = u64::MAX;
        if let Some((_, p)) = g
            .statics
            .iter()
            .find(|(_, p)| self.in_use(state, slot, *p))
        {
            return (Some(format!("port {p}")), 0);
        }
        if !g.statics.is_empty() {
            room = 1;
        }
        if !g.dynamic.is_empty() {
            let range = node.dynamic_ports;
            let statics_in_range =
                g.statics.iter().filter(|(_, p)| range.contains(*p)).count() as u64;
            let free = self
                .dynamic_free(state, slot, node)
                .saturating_sub(statics_in_range);
            room = room.min(free / g.dynamic.len() as u64);
            if room == 0 {
                return (Some("dynamic ports".into()), 0);
            }
        }
        (None, room)
    }

    /// Take ports on node `slot` for `n` allocations of the group; one list
    /// per allocation, in the group's order. The caller checked the room.
    pub fn take(
        &mut self,
        state: &ClusterState,
        slot: u32,
        g: &GroupPorts,
        n: u64,
    ) -> Vec<Vec<AllocatedPort>> {
        let range = state
            .entry(slot)
            .node
            .as_ref()
            .map(|n| n.dynamic_ports)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(n as usize);
        let mut next = range.first;
        for _ in 0..n {
            let mut ports = Vec::with_capacity(g.statics.len() + g.dynamic.len());
            for (label, p) in &g.statics {
                self.nodes.entry(slot).or_default().taken.insert(*p);
                ports.push(AllocatedPort {
                    label: label.clone(),
                    value: *p,
                    dynamic: false,
                });
            }
            for label in &g.dynamic {
                let mut found = None;
                for p in next..=range.last {
                    if !self.in_use(state, slot, p) {
                        found = Some(p);
                        break;
                    }
                }
                // The room check counted the free ports; none left means
                // the state changed under us, which a pure pass never sees.
                let Some(p) = found else { break };
                next = p.saturating_add(1);
                self.nodes.entry(slot).or_default().taken.insert(p);
                ports.push(AllocatedPort {
                    label: label.clone(),
                    value: p,
                    dynamic: true,
                });
            }
            out.push(ports);
        }
        out
    }

    /// The plan stops an allocation holding `ports` on node `slot`.
    pub fn release(&mut self, slot: u32, ports: &[AllocatedPort]) {
        let d = self.nodes.entry(slot).or_default();
        for p in ports {
            *d.freed.entry(p.value).or_default() += 1;
        }
    }
}

/// Check a plan's ports against `state`: every port of every placement is
/// not reserved on its node and not held there (after the plan's own stops),
/// and no two placements of the plan share one on a node.
pub(crate) fn verify_ports(state: &ClusterState, plan: &Plan) -> Result<(), PlanRejection> {
    if plan.placements.iter().all(|p| p.ports.is_empty()) {
        return Ok(());
    }
    let mut freed: BTreeMap<(u32, u16), u32> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for s in &plan.stops {
        if !seen.insert(&s.alloc_id) {
            continue;
        }
        let Some(a) = state.alloc(&s.alloc_id) else {
            continue; // verify_plan rejects it
        };
        if a.holds_resources() {
            if let Some(slot) = state.node_slot(&a.node_id) {
                for p in &a.ports {
                    *freed.entry((slot, p.value)).or_default() += 1;
                }
            }
        }
    }
    let mut taken: BTreeSet<(u32, u16)> = BTreeSet::new();
    for a in plan.placements.iter().filter(|p| !p.ports.is_empty()) {
        let Some(slot) = state.node_slot(&a.node_id) else {
            continue; // verify_plan rejects it
        };
        let e = state.entry(slot);
        let name = || e.node.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        for p in &a.ports {
            let reserved = e
                .node
                .as_ref()
                .is_some_and(|n| n.reserved_ports.contains(p.value));
            let held = e.ports.count(p.value) > freed.get(&(slot, p.value)).copied().unwrap_or(0);
            if reserved || held || !taken.insert((slot, p.value)) {
                return Err(PlanRejection::PortInUse {
                    node: name(),
                    port: p.value,
                });
            }
        }
    }
    Ok(())
}
