//! The simulation's own audit: after a run, the final state must hold
//! exactly what the report says was placed, and every live allocation must
//! be where the rules allow. A run whose numbers the state does not back is
//! an error, not a result.

use crate::feasibility::constraint_holds;
use crate::ClusterState;
use std::collections::{BTreeMap, BTreeSet};
use taba_types::{Allocation, JobType, NodeId};

/// Check `state` against the report's `placed` and `stopped` counts.
/// Returns the first inconsistency found.
pub fn check(state: &ClusterState, placed: u64, stopped: u64) -> Result<(), String> {
    let expected = placed.checked_sub(stopped).ok_or_else(|| {
        format!("{stopped} allocations reported stopped but only {placed} placed")
    })?;
    capacity(state)?;
    // One pass that does not keep the full form of compact records.
    let mut live = 0u64;
    let mut per_group: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    let mut ports: BTreeSet<(NodeId, u16)> = BTreeSet::new();
    let mut first_error = None;
    state.for_each_alloc(|a| {
        if !a.is_live() || first_error.is_some() {
            return;
        }
        live += 1;
        if let Err(e) = rules(state, a) {
            first_error = Some(e);
        }
        *per_group
            .entry((a.namespace.clone(), a.job.clone(), a.group.clone()))
            .or_default() += 1;
        for p in &a.ports {
            if !ports.insert((a.node_id.clone(), p.value)) {
                first_error = Some(format!(
                    "host port {} given twice on node {}",
                    p.value, a.node_id
                ));
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    if live != expected {
        return Err(format!(
            "{live} allocations are live but {placed} were reported placed and {stopped} stopped"
        ));
    }
    for ((ns, job, group), n) in per_group {
        let (ns, job, group) = (ns.as_str(), job.as_str(), group.as_str());
        let j = state
            .job(ns, job)
            .ok_or_else(|| format!("allocations of unknown job {ns}/{job}"))?;
        let g = j.spec.groups.iter().find(|g| g.name == group);
        let count = g.map_or(0, |g| g.count);
        let allowed = if j.spec.job_type == JobType::System {
            count * state.nodes().count() as u32
        } else {
            count
        };
        if n > allowed {
            return Err(format!("{ns}/{job} group {group} runs {n} of {allowed}"));
        }
    }
    quotas(state)
}

/// No node holds more than it can.
fn capacity(state: &ClusterState) -> Result<(), String> {
    for n in state.nodes() {
        let (used, cap) = (state.node_used(&n.id), n.allocatable());
        if used.cpu > cap.cpu || used.memory > cap.memory {
            return Err(format!(
                "node {} holds {} MHz / {} of {} MHz / {}",
                n.name, used.cpu, used.memory, cap.cpu, cap.memory
            ));
        }
    }
    Ok(())
}

/// The allocation's node satisfies its job's, group's and task's
/// constraints.
fn rules(state: &ClusterState, a: &Allocation) -> Result<(), String> {
    let node = state
        .node(&a.node_id)
        .ok_or_else(|| format!("allocation {} is on unknown node {}", a.id, a.node_id))?;
    let job = state
        .job(&a.namespace, &a.job)
        .ok_or_else(|| format!("allocation {} of unknown job {}", a.id, a.job))?;
    let g = &a.group_spec;
    let all = job
        .spec
        .constraints
        .iter()
        .chain(&g.constraints)
        .chain(g.tasks.iter().flat_map(|t| &t.constraints));
    for c in all {
        if !constraint_holds(c, node) {
            return Err(format!(
                "allocation {} of {} is on node {} where {} {} {} does not hold",
                a.id, a.job, node.name, c.attribute, c.operator, c.value
            ));
        }
    }
    Ok(())
}

/// No namespace holds more than its quota.
fn quotas(state: &ClusterState) -> Result<(), String> {
    let namespaces: BTreeSet<&str> = state.jobs().map(|j| j.spec.namespace.as_str()).collect();
    for ns in namespaces {
        let (Some(q), u) = (state.quota(ns), state.namespace_usage(ns)) else {
            continue;
        };
        let over = q.cpu.is_some_and(|c| u.cpu > c)
            || q.memory.is_some_and(|m| u.memory > m)
            || q.allocations.is_some_and(|n| u.allocations > n);
        if over {
            return Err(format!("namespace {ns} holds more than its quota ({q})"));
        }
    }
    Ok(())
}
