//! The plan applier's half of the scheduler: `verify_plan` checks a plan
//! against the latest state (optimistic concurrency: a plan made on a stale
//! view that no longer fits is rejected whole), and `apply_plan` commits a
//! verified, persisted plan to the in-memory state.

use crate::state::{ClusterState, Res};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use taba_types::{AllocId, Allocation, DesiredStatus, NodeId, Plan};

/// Why a plan was rejected. The evaluation should be retried on a fresh
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanRejection {
    /// A stop, update or replace names an allocation that is gone.
    #[error("allocation {0} no longer exists")]
    AllocGone(AllocId),
    /// An update moves an allocation to another node.
    #[error("update of allocation {0} changes its node")]
    UpdateMovesAlloc(AllocId),
    /// A placement reuses an existing (or repeated) allocation id.
    #[error("allocation id {0} is already in use")]
    DuplicateAlloc(AllocId),
    /// A placement's node is unknown.
    #[error("node {node} of allocation {alloc} no longer exists")]
    NodeGone {
        /// The allocation.
        alloc: AllocId,
        /// Its node id.
        node: String,
    },
    /// A placement's node no longer takes new work (down, ineligible, draining).
    #[error("node {0} is no longer schedulable")]
    NodeNotSchedulable(String),
    /// A node would be overcommitted.
    #[error("{dimension} exhausted on node {node}")]
    NodeExhausted {
        /// Node name.
        node: String,
        /// `cpu`, `memory` or `disk`.
        dimension: &'static str,
    },
    /// An eviction names an allocation that is no longer live (stopped,
    /// finished, already evicted) or no longer on the node planned for.
    #[error("allocation {0} to evict is no longer live on its node")]
    StaleEviction(AllocId),
    /// A placement's host port is reserved or taken on its node (since the
    /// snapshot, or twice in the plan).
    #[error("port {port} is already in use on node {node}")]
    PortInUse {
        /// Node name.
        node: String,
        /// The port.
        port: u16,
    },
    /// The job was stopped, removed or changed version since the snapshot.
    #[error("job {0} changed since the plan was made")]
    JobChanged(String),
    /// A namespace would hold more than its quota allows.
    #[error("quota of namespace {namespace} exceeded: {dimension}")]
    QuotaExceeded {
        /// The namespace.
        namespace: String,
        /// `cpu`, `memory` or `allocations`.
        dimension: &'static str,
    },
}

/// Check `plan` against `state`, all or nothing: every stopped, updated and
/// replaced allocation still exists; every evicted one is still live on
/// the node planned for (its resources then count as freed for the plan's
/// placements); every placement's job is still at the
/// version planned for and not stopped; every placement's node exists, is
/// schedulable, and has room given its current usage, the plan's own stops
/// and the plan's other placements, host ports included; no namespace goes
/// past its quota.
pub fn verify_plan(state: &ClusterState, plan: &Plan) -> Result<(), PlanRejection> {
    let mut freed: BTreeMap<u32, Res> = BTreeMap::new();
    let mut added: BTreeMap<u32, Res> = BTreeMap::new();
    let mut stopped: BTreeSet<&AllocId> = BTreeSet::new();
    for s in &plan.stops {
        let a = state
            .alloc(&s.alloc_id)
            .ok_or_else(|| PlanRejection::AllocGone(s.alloc_id.clone()))?;
        if s.desired_status == DesiredStatus::Evict && (!a.is_live() || a.node_id != s.node_id) {
            return Err(PlanRejection::StaleEviction(a.id.clone()));
        }
        if stopped.insert(&a.id) && a.holds_resources() {
            if let Some(slot) = state.node_slot(&a.node_id) {
                freed.entry(slot).or_default().add(Res::of(&a.resources));
            }
        }
    }
    for u in &plan.updates {
        let a = state
            .alloc(&u.id)
            .ok_or_else(|| PlanRejection::AllocGone(u.id.clone()))?;
        if a.node_id != u.node_id {
            return Err(PlanRejection::UpdateMovesAlloc(u.id.clone()));
        }
        if a.holds_resources() && !stopped.contains(&a.id) && a.resources != u.resources {
            if let Some(slot) = state.node_slot(&a.node_id) {
                freed.entry(slot).or_default().add(Res::of(&a.resources));
                added.entry(slot).or_default().add(Res::of(&u.resources));
            }
        }
    }
    for id in &plan.replaced {
        if state.alloc(id).is_none() {
            return Err(PlanRejection::AllocGone(id.clone()));
        }
    }
    let mut new_ids: HashSet<&AllocId> = HashSet::with_capacity(plan.placements.len());
    let mut last_job: Option<(&str, &str, u64)> = None;
    let mut last_node: Option<(&NodeId, u32)> = None;
    for p in &plan.placements {
        if !new_ids.insert(&p.id) || state.alloc_slot(&p.id).is_some() {
            return Err(PlanRejection::DuplicateAlloc(p.id.clone()));
        }
        let job = (p.namespace.as_str(), p.job.as_str(), p.job_version);
        if last_job != Some(job) {
            match state.job(&p.namespace, &p.job) {
                Some(j) if !j.stopped && j.version == p.job_version => last_job = Some(job),
                _ => return Err(PlanRejection::JobChanged(p.job.clone())),
            }
        }
        let slot = match last_node {
            Some((id, slot)) if *id == p.node_id => slot,
            _ => {
                let slot = state
                    .node_slot(&p.node_id)
                    .ok_or_else(|| PlanRejection::NodeGone {
                        alloc: p.id.clone(),
                        node: p.node_id.to_string(),
                    })?;
                let node =
                    state
                        .entry(slot)
                        .node
                        .as_ref()
                        .ok_or_else(|| PlanRejection::NodeGone {
                            alloc: p.id.clone(),
                            node: p.node_id.to_string(),
                        })?;
                if !node.schedulable() {
                    return Err(PlanRejection::NodeNotSchedulable(node.name.clone()));
                }
                last_node = Some((&p.node_id, slot));
                slot
            }
        };
        added.entry(slot).or_default().add(Res::of(&p.resources));
    }
    for (slot, add) in &added {
        let e = state.entry(*slot);
        let mut used = e.used;
        if let Some(f) = freed.get(slot) {
            used.sub(*f);
        }
        used.add(*add);
        let zero = Res::default();
        if let Some(dimension) = used.minus(e.allocatable).exceeds(&zero) {
            let node = e.node.as_ref().map(|n| n.name.clone()).unwrap_or_default();
            return Err(PlanRejection::NodeExhausted { node, dimension });
        }
    }
    crate::ports::verify_ports(state, plan)?;
    crate::quota::verify(state, plan)
}

/// Commit a verified plan (already persisted by the server at `index`) to
/// the state. Stops (evictions with the allocation that evicted them) and
/// replacements change only the scheduler's fields of
/// the stored allocation, so client status reported meanwhile is kept;
/// updates change only the job version, group spec, priority, resources and
/// the move request.
pub fn apply_plan(state: &mut ClusterState, plan: &Plan, index: u64) {
    apply_changes(state, plan, index);
    state.insert_many(plan.placements.iter().map(|p| placed(p.clone(), index)));
    finish(state, index);
}

/// [`apply_plan`] taking the plan by value (no copy of its placements).
pub fn apply_plan_owned(state: &mut ClusterState, mut plan: Plan, index: u64) {
    apply_changes(state, &plan, index);
    state.insert_many(plan.placements.drain(..).map(|p| placed(p, index)));
    finish(state, index);
}

fn placed(mut a: taba_types::Allocation, index: u64) -> taba_types::Allocation {
    a.create_index = index;
    a.modify_index = index;
    a
}

fn finish(state: &mut ClusterState, index: u64) {
    if index > state.index() {
        state.set_index(index);
    }
}

fn apply_changes(state: &mut ClusterState, plan: &Plan, index: u64) {
    for s in &plan.stops {
        if let Some(slot) = state.alloc_slot(&s.alloc_id) {
            state.modify_alloc(slot, |a| {
                a.desired_status = s.desired_status;
                a.desired_description = s.description.clone();
                if s.preempted_by.is_some() {
                    a.preempted_by = s.preempted_by.clone();
                }
                a.modify_index = index;
            });
        }
    }
    for u in &plan.updates {
        if let Some(slot) = state.alloc_slot(&u.id) {
            state.modify_alloc(slot, |a| {
                a.job_version = u.job_version;
                a.group_spec = u.group_spec.clone();
                a.priority = u.priority;
                a.resources = u.resources.clone();
                a.migrate = u.migrate.clone();
                if starts_live_migration(a, u) {
                    a.live_migration = u.live_migration.clone();
                    a.migration_status = None;
                }
                a.modify_time = u.modify_time;
                a.modify_index = index;
            });
        }
    }
    for id in &plan.replaced {
        if let Some(slot) = state.alloc_slot(id) {
            state.modify_alloc(slot, |a| {
                a.replaced = true;
                a.modify_index = index;
            });
        }
    }
}

/// Whether a plan's update `u` of `a` starts a live migration. Plans only
/// start them; the servers advance and end them as the agents report (so an
/// update computed from an older snapshot never brings an ended one back).
pub fn starts_live_migration(a: &Allocation, u: &Allocation) -> bool {
    u.live_migration.as_ref().is_some_and(|m| {
        a.live_migration.as_ref().map(|x| &x.target_alloc) != Some(&m.target_alloc)
    })
}
