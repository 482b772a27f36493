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
        if e.node
            .as_ref()
            .is_some_and(|n| n.reserved_ports.contains(port))
        {
            return true;
        }
        let held = e.ports.count(port);
        match self.nodes.get(&slot) {
            Some(d) => d.taken.contains(&port) || held > d.freed.get(&port).copied().unwrap_or(0),
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
        if let Some((_, p)) = g.statics.iter().find(|(_, p)| self.in_use(state, slot, *p)) {
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

#[cfg(test)]
mod tests {
    use crate::tests::{eval_for, group, job, node};
    use crate::{apply_plan, schedule, verify_plan, ClusterState, PlanRejection};
    use taba_types::*;

    fn cluster(nodes: &[Node]) -> ClusterState {
        let mut s = ClusterState::new();
        for n in nodes {
            s.upsert_node(n.clone());
        }
        s.set_index(1);
        s
    }

    /// A group asking for `ports`: `Some(p)` static, `None` dynamic.
    fn port_group(name: &str, count: u32, ports: &[(&str, Option<u32>)]) -> TaskGroupSpec {
        let mut g = group(name, count, 100, 64);
        g.network.ports = ports
            .iter()
            .map(|(l, p)| PortSpec {
                label: l.to_string(),
                static_port: *p,
            })
            .collect();
        g
    }

    fn register(s: &mut ClusterState, name: &str, groups: Vec<TaskGroupSpec>) -> Job {
        let mut j = job(name, JobType::Service, groups);
        if let Some(old) = s.job("default", name) {
            j.version = old.version + 1;
        }
        s.upsert_job(j.clone());
        j
    }

    fn run(s: &ClusterState, j: &Job) -> SchedulerOutcome {
        schedule(s, &eval_for(j, s.index() as u32), 0)
    }

    fn commit(s: &mut ClusterState, o: &SchedulerOutcome) {
        verify_plan(s, &o.plan).expect("plan verifies");
        let idx = s.index() + 1;
        apply_plan(s, &o.plan, idx);
    }

    fn run_commit(s: &mut ClusterState, j: &Job) -> SchedulerOutcome {
        let o = run(s, j);
        commit(s, &o);
        o
    }

    fn set_client(s: &mut ClusterState, id: &AllocId, st: ClientStatus) {
        let mut a = s.alloc(id).unwrap().clone();
        a.client_status = st;
        s.upsert_alloc(a);
    }

    fn values(a: &Allocation) -> Vec<u16> {
        a.ports.iter().map(|p| p.value).collect()
    }

    #[test]
    fn static_port_in_use_filters_the_node_and_explains() {
        let mut s = cluster(&[node("big", 8000, 8192), node("small", 4000, 4096)]);
        let a = register(
            &mut s,
            "a",
            vec![port_group("web", 1, &[("http", Some(8080))])],
        );
        let o = run_commit(&mut s, &a);
        assert_eq!(o.plan.placements[0].node_name, "big");
        assert_eq!(
            o.plan.placements[0].ports,
            [AllocatedPort {
                label: "http".into(),
                value: 8080,
                dynamic: false
            }]
        );
        // Bin-packing would put both on "big"; its port 8080 is taken, and
        // a group gets one allocation per node for each static port.
        let b = register(
            &mut s,
            "b",
            vec![port_group("web", 2, &[("http", Some(8080))])],
        );
        let o = run_commit(&mut s, &b);
        assert_eq!(o.plan.placements.len(), 1);
        assert_eq!(o.plan.placements[0].node_name, "small");
        assert_eq!(o.status, EvalStatus::Blocked);
        let f = &o.failed_groups["web"];
        assert_eq!(f.exhausted.get("port 8080"), Some(&2), "{f:?}");
        assert!(
            o.status_description
                .contains("port 8080 in use on 2 of 2 nodes"),
            "{}",
            o.status_description
        );
    }

    #[test]
    fn two_groups_wanting_the_same_static_port_on_one_node() {
        let mut s = cluster(&[node("n1", 8000, 8192)]);
        let j = register(
            &mut s,
            "j",
            vec![
                port_group("a", 1, &[("http", Some(8080))]),
                port_group("b", 1, &[("web", Some(8080))]),
            ],
        );
        let o = run_commit(&mut s, &j);
        assert_eq!(o.plan.placements.len(), 1);
        assert_eq!(o.plan.placements[0].group, "a");
        assert_eq!(o.queued.get("b"), Some(&1));
        assert_eq!(
            o.failed_groups["b"].summary(),
            "port 8080 in use on 1 of 1 nodes"
        );
        // System jobs explain the same way.
        let mut sys = job(
            "sys",
            JobType::System,
            vec![port_group("s", 1, &[("http", Some(8080))])],
        );
        sys.version = 0;
        s.upsert_job(sys.clone());
        let o = run(&s, &sys);
        assert!(o.plan.placements.is_empty());
        assert_eq!(
            o.failed_groups["s"].summary(),
            "port 8080 in use on 1 of 1 nodes"
        );
    }

    #[test]
    fn dynamic_ports_are_unique_skip_reserved_and_run_out() {
        let mut n = node("n1", 8000, 8192);
        n.dynamic_ports = PortRange::parse("20000-20009").unwrap();
        n.reserved_ports = PortRanges::parse("20001,20003").unwrap();
        let mut s = cluster(&[n]);
        let a = register(
            &mut s,
            "a",
            vec![port_group("web", 3, &[("http", None), ("admin", None)])],
        );
        let o = run_commit(&mut s, &a);
        let got: Vec<Vec<u16>> = o.plan.placements.iter().map(values).collect();
        // Lowest free first, never a reserved one, unique within the plan.
        assert_eq!(
            got,
            [[20000, 20002], [20004, 20005], [20006, 20007]],
            "{got:?}"
        );
        assert!(o.plan.placements[0].ports.iter().all(|p| p.dynamic));
        assert_eq!(o.plan.placements[0].ports[1].label, "admin");
        // A later plan continues after what is held.
        let b = register(&mut s, "b", vec![port_group("web", 2, &[("http", None)])]);
        let o = run_commit(&mut s, &b);
        let got: Vec<Vec<u16>> = o.plan.placements.iter().map(values).collect();
        assert_eq!(got, [[20008], [20009]]);
        // The range is used up.
        let c = register(&mut s, "c", vec![port_group("web", 1, &[("http", None)])]);
        let o = run(&s, &c);
        assert!(o.plan.placements.is_empty());
        assert_eq!(
            o.failed_groups["web"].summary(),
            "dynamic ports exhausted on 1 of 1 nodes"
        );
    }

    #[test]
    fn static_ports_inside_the_dynamic_range_are_not_handed_out_twice() {
        let mut n = node("n1", 8000, 8192);
        n.dynamic_ports = PortRange::parse("20000-20002").unwrap();
        let mut s = cluster(&[n]);
        let a = register(
            &mut s,
            "a",
            vec![port_group(
                "web",
                1,
                &[("x", None), ("fixed", Some(20000)), ("y", None)],
            )],
        );
        let o = run_commit(&mut s, &a);
        assert_eq!(values(&o.plan.placements[0]), [20000, 20001, 20002]);
        assert_eq!(o.plan.placements[0].ports[0].label, "fixed");
        // Two dynamic ports and a static one in a 3-port range leave none.
        let b = register(&mut s, "b", vec![port_group("web", 1, &[("x", None)])]);
        assert!(run(&s, &b).plan.placements.is_empty());
    }

    #[test]
    fn reserved_ports_are_never_given() {
        let mut n = node("n1", 8000, 8192);
        n.reserved_ports = PortRanges::parse("22,8000-8100").unwrap();
        let mut s = cluster(&[n]);
        let j = register(
            &mut s,
            "j",
            vec![port_group("web", 1, &[("http", Some(8080))])],
        );
        let o = run(&s, &j);
        assert!(o.plan.placements.is_empty());
        assert_eq!(
            o.failed_groups["web"].summary(),
            "port 8080 in use on 1 of 1 nodes"
        );
    }

    #[test]
    fn ports_are_freed_when_the_allocation_ends() {
        let mut s = cluster(&[node("n1", 8000, 8192)]);
        let a = register(
            &mut s,
            "a",
            vec![port_group("web", 1, &[("http", Some(8080)), ("m", None)])],
        );
        let placed = run_commit(&mut s, &a).plan.placements[0].clone();
        assert_eq!(values(&placed), [8080, 20000]);
        let b = register(
            &mut s,
            "b",
            vec![port_group("web", 1, &[("http", Some(8080)), ("m", None)])],
        );
        assert!(run(&s, &b).plan.placements.is_empty());
        // Stopping: the port stays held until the agent reports the end.
        let mut stopped = s.job("default", "a").unwrap().clone();
        stopped.stopped = true;
        s.upsert_job(stopped.clone());
        let o = run_commit(&mut s, &stopped);
        assert_eq!(o.plan.stops.len(), 1);
        assert!(run(&s, &b).plan.placements.is_empty());
        set_client(&mut s, &placed.id, ClientStatus::Complete);
        let o = run_commit(&mut s, &b);
        assert_eq!(values(&o.plan.placements[0]), [8080, 20000]);
    }

    #[test]
    fn an_update_reuses_the_ports_it_frees_in_the_same_plan() {
        let mut s = cluster(&[node("n1", 8000, 8192)]);
        let a = register(
            &mut s,
            "a",
            vec![port_group("web", 1, &[("http", Some(8080))])],
        );
        let old = run_commit(&mut s, &a).plan.placements[0].clone();
        set_client(&mut s, &old.id, ClientStatus::Running);
        let mut g = port_group("web", 1, &[("http", Some(8080))]);
        g.tasks[0].env.insert("V".into(), "2".into());
        let a2 = register(&mut s, "a", vec![g]);
        let o = run_commit(&mut s, &a2);
        assert_eq!(o.plan.stops.len(), 1);
        assert_eq!(values(&o.plan.placements[0]), [8080]);
    }

    #[test]
    fn verify_rejects_a_stale_plan_whose_ports_collide() {
        let mut s = cluster(&[node("n1", 8000, 8192)]);
        let a = register(
            &mut s,
            "a",
            vec![port_group("web", 1, &[("http", Some(8080))])],
        );
        let b = register(
            &mut s,
            "b",
            vec![port_group("web", 1, &[("http", Some(8080))])],
        );
        let c = register(&mut s, "c", vec![port_group("web", 1, &[("m", None)])]);
        let d = register(&mut s, "d", vec![port_group("web", 1, &[("m", None)])]);
        // All planned on the same snapshot.
        let (pa, pb, pc, pd) = (run(&s, &a), run(&s, &b), run(&s, &c), run(&s, &d));
        verify_plan(&s, &pb.plan).unwrap();
        commit(&mut s, &pa);
        commit(&mut s, &pc);
        let want = |port| {
            Err(PlanRejection::PortInUse {
                node: "n1".into(),
                port,
            })
        };
        assert_eq!(verify_plan(&s, &pb.plan), want(8080));
        assert_eq!(verify_plan(&s, &pd.plan), want(20000));
        // Retried on the fresh state: b is blocked, d takes the next port.
        assert!(run(&s, &b).plan.placements.is_empty());
        let pd = run_commit(&mut s, &d);
        assert_eq!(values(&pd.plan.placements[0]), [20001]);
        // A plan giving one port twice on a node is rejected too.
        let e = register(&mut s, "e", vec![port_group("w", 2, &[("m", None)])]);
        let mut twice = run(&s, &e).plan;
        let first = twice.placements[0].ports.clone();
        twice.placements[1].ports = first;
        assert_eq!(verify_plan(&s, &twice), want(20002));
    }

    #[test]
    fn records_with_ports_read_back_exactly() {
        let mut s = cluster(&[node("n1", 8000, 8192)]);
        let a = register(&mut s, "a", vec![port_group("web", 2, &[("m", None)])]);
        let o = run_commit(&mut s, &a);
        for p in &o.plan.placements {
            let mut want = p.clone();
            want.create_index = 2;
            want.modify_index = 2;
            assert_eq!(s.alloc(&p.id), Some(&want));
        }
        let slot = s.node_slot(&o.plan.placements[0].node_id).unwrap();
        assert_eq!(s.entry(slot).ports.count(20000), 1);
        assert_eq!(s.entry(slot).ports.count(20001), 1);
        s.remove_alloc(&o.plan.placements[0].id);
        assert_eq!(s.entry(slot).ports.count(20000), 0);
    }
}
