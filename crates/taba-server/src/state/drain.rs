//! Node drains on the server: starting, cancelling and advancing them, and
//! the progress view.
//!
//! A drain is a [`DrainStrategy`] on the node record (durable, so a
//! restarted server carries on) plus the node made ineligible. The drainer
//! worker ([`crate::workers::spawn_drainer`]) calls [`ServerState::drain_step`]
//! for every draining node; each step does at most one of:
//!
//! 1. the node is down: its allocations were already marked lost by the
//!    node-failure path, the drain is complete;
//! 2. the deadline passed: every allocation still live there is stopped
//!    (system ones too unless `ignore_system`), the jobs' evaluations place
//!    replacements elsewhere, the drain is complete;
//! 3. allocations that should move and have no move asked for get a
//!    [`MigrateRequest`] (the one move primitive, as the rebalancer asks) and
//!    their jobs an evaluation; the reconciler carries the moves out,
//!    `migrate.max_parallel` per group at a time, each batch after the last
//!    one's replacements run;
//! 4. nothing else is left and no replacement is still starting: system
//!    allocations are stopped (unless `ignore_system`) and the drain is
//!    complete. The node stays ineligible.
//!
//! Batch allocations are not moved unless their group says
//! `migrate.drain = "move"`: they run to completion, or until the deadline.
//! How a move is made is the reconciler's and the driver's business, not
//! the drain's: it only asks (live for groups whose driver migrates running
//! workloads, VMs: see `migration.rs`; the allocation stays on the node,
//! and the drain waits, until its target runs).

use super::{ServerState, StateError};
use crate::broker::now_ms;
use crate::locks::node_key;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use taba_store::{Table, Txn};
use taba_types::api::{DrainGroupProgress, DrainStatus};
use taba_types::{
    AllocId, Allocation, ClientStatus, DesiredStatus, DrainStrategy, Eligibility, EvalTrigger,
    Evaluation, JobType, MigrateRequest, Node, NodeId, NodeStatus,
};

/// The reason of a drain's move requests (shown on the stopped allocation).
pub const DRAIN_REASON: &str = "node drain";

/// What one drain step changes, committed in one transaction.
#[derive(Default)]
struct StepChanges {
    allocs: Vec<Allocation>,
    jobs: BTreeSet<(String, String)>,
    node: Option<Node>,
}

impl ServerState {
    /// Start a drain of `key` (id, prefix or name), or change the deadline
    /// and `ignore_system` of the one in progress (its start time is kept).
    pub async fn start_drain(
        &self,
        key: &str,
        deadline: Duration,
        ignore_system: bool,
    ) -> Result<DrainStatus, StateError> {
        let id = self.find_node(key)?.id;
        let _held = self.locks.lock(vec![node_key(id.as_str())]).await;
        let mut node = self.known_node(&id)?;
        let now = now_ms();
        let started_at = node.drain.as_ref().map_or(now, |d| d.started_at);
        node.drain = Some(DrainStrategy {
            started_at,
            deadline: now.saturating_add(deadline.as_millis() as u64),
            ignore_system,
        });
        node.drained_at = None;
        let became_ineligible = self.change_eligibility(&mut node, false).is_some();
        let index = self
            .commit(Txn::new().put_encoded(Table::Nodes, id.as_str(), &node))
            .await?;
        tracing::info!(node = %node.name, deadline = ?deadline, ignore_system, "drain started");
        self.apply(index, vec![], vec![], vec![node.clone()], vec![]);
        if became_ineligible {
            self.eligibility_changed(&node, vec![]);
        }
        self.drain_wake.notify_one();
        self.drain_status(id.as_str())
    }

    /// Cancel the drain of `key` (if any) and make the node eligible again.
    /// Moves asked for and not carried out yet are withdrawn; moves made stay.
    pub async fn cancel_drain(&self, key: &str) -> Result<DrainStatus, StateError> {
        let id = self.find_node(key)?.id;
        let _held = self.lock_node_and_jobs(&id).await;
        let mut node = self.known_node(&id)?;
        let was_draining = node.drain.take().is_some();
        let changed = self.change_eligibility(&mut node, true);
        let evals = changed.clone().unwrap_or_default();
        let now = now_ms();
        let withdrawn: Vec<Allocation> = self
            .node_allocs(&id)
            .into_iter()
            .filter(|a| a.is_live() && Self::is_drain_move(a))
            .map(|mut a| {
                a.migrate = None;
                a.modify_time = now;
                a
            })
            .collect();
        let txn = Self::put_allocs_evals(
            Txn::new().put_encoded(Table::Nodes, id.as_str(), &node),
            &withdrawn,
            &evals,
        );
        let index = self.commit(txn).await?;
        if was_draining {
            tracing::info!(node = %node.name, withdrawn = withdrawn.len(), "drain cancelled");
        }
        self.apply(index, vec![], withdrawn, vec![node.clone()], evals.clone());
        if changed.is_some() {
            self.eligibility_changed(&node, evals);
        }
        // Blocked evaluations may place on the node again.
        self.unblock(None);
        self.drain_status(id.as_str())
    }

    fn is_drain_move(a: &Allocation) -> bool {
        a.migrate.as_ref().is_some_and(|m| m.reason == DRAIN_REASON)
    }

    /// The nodes with a drain in progress.
    pub fn draining_nodes(&self) -> Vec<NodeId> {
        self.cluster()
            .nodes()
            .filter(|n| n.draining())
            .map(|n| n.id.clone())
            .collect()
    }

    /// What the drain of `key` has left to do.
    pub fn drain_status(&self, key: &str) -> Result<DrainStatus, StateError> {
        let node = self.find_node(key)?;
        let c = self.cluster();
        let mut groups: BTreeMap<(String, String, String), DrainGroupProgress> = BTreeMap::new();
        if let Some(strategy) = &node.drain {
            let on_node: Vec<&Allocation> = c.allocs_for_node(&node.id).collect();
            let ids: BTreeSet<&AllocId> = on_node.iter().map(|a| &a.id).collect();
            let mut jobs: BTreeSet<(&str, &str)> = BTreeSet::new();
            for a in on_node.iter().filter(|a| a.is_live()) {
                if a.job_type == JobType::System && strategy.ignore_system {
                    continue;
                }
                let g = Self::progress_entry(&mut groups, a);
                g.left += 1;
                if a.migrate.is_some() {
                    g.waiting += 1;
                }
            }
            // Moved allocations are stopped here; their jobs hold the replacements.
            for a in &on_node {
                jobs.insert((&a.namespace, &a.job));
            }
            for (ns, job) in jobs {
                for a in c.allocs_for_job(ns, job) {
                    if Self::starting_replacement(a, &node.id, &ids) {
                        Self::progress_entry(&mut groups, a).starting += 1;
                    }
                }
            }
        }
        let groups: Vec<DrainGroupProgress> = groups.into_values().collect();
        Ok(DrainStatus {
            node_id: node.id.clone(),
            node: node.name.clone(),
            status: node.status,
            eligible: node.eligibility == Eligibility::Eligible,
            left: groups.iter().map(|g| g.left).sum(),
            starting: groups.iter().map(|g| g.starting).sum(),
            groups,
            done: node.drain.is_none() && node.drained_at.is_some(),
            strategy: node.drain.clone(),
            drained_at: node.drained_at,
            index: c.index(),
        })
    }

    fn progress_entry<'m>(
        groups: &'m mut BTreeMap<(String, String, String), DrainGroupProgress>,
        a: &Allocation,
    ) -> &'m mut DrainGroupProgress {
        groups
            .entry((a.namespace.clone(), a.job.clone(), a.group.clone()))
            .or_insert_with(|| DrainGroupProgress {
                namespace: a.namespace.clone(),
                job: a.job.clone(),
                group: a.group.clone(),
                job_type: a.job_type,
                left: 0,
                waiting: 0,
                starting: 0,
            })
    }

    /// A replacement, on another node, of an allocation of `node`, placed
    /// and not running yet.
    fn starting_replacement(a: &Allocation, node: &NodeId, ids: &BTreeSet<&AllocId>) -> bool {
        &a.node_id != node
            && a.desired_status == DesiredStatus::Run
            && a.client_status == ClientStatus::Pending
            && a.previous_alloc.as_ref().is_some_and(|p| ids.contains(p))
    }

    /// Advance the drain of node `id` by one step (see the module doc).
    pub async fn drain_step(&self, id: &NodeId) -> Result<(), StateError> {
        let _held = self.lock_node_and_jobs(id).await;
        let Ok(node) = self.known_node(id) else {
            return Ok(());
        };
        let Some(strategy) = node.drain.clone() else {
            return Ok(());
        };
        let now = now_ms();
        let changes = self.plan_drain_step(&node, &strategy, now)?;
        self.commit_drain_step(changes, now).await
    }

    /// Decide one step from memory (the caller holds the locks).
    fn plan_drain_step(
        &self,
        node: &Node,
        strategy: &DrainStrategy,
        now: u64,
    ) -> Result<StepChanges, StateError> {
        let mut out = StepChanges::default();
        let complete = |mut n: Node| {
            n.drain = None;
            n.drained_at = Some(now);
            n
        };
        if node.status == NodeStatus::Down {
            out.node = Some(complete(node.clone()));
            return Ok(out);
        }
        let live: Vec<Allocation> = self
            .node_allocs(&node.id)
            .into_iter()
            .filter(|a| a.is_live())
            .collect();
        let (system, others): (Vec<Allocation>, Vec<Allocation>) = live
            .into_iter()
            .partition(|a| a.job_type == JobType::System);
        let system = if strategy.ignore_system {
            Vec::new()
        } else {
            system
        };
        if now >= strategy.deadline {
            let why = "node drain deadline reached";
            for a in others.into_iter().chain(system) {
                out.stop(a, why, now);
            }
            out.node = Some(complete(node.clone()));
            return Ok(out);
        }
        for a in &others {
            let moves = a.group_spec.migrate.moves_on_drain(a.job_type);
            if moves && a.migrate.is_none() && a.live_migration.is_none() {
                let mut a = a.clone();
                a.migrate = Some(MigrateRequest {
                    reason: DRAIN_REASON.into(),
                    to: None,
                    requested_at: now,
                    // VMs move live; the rest restart on the target.
                    live: a.group_spec.migrates_live(),
                });
                a.modify_time = now;
                out.jobs.insert((a.namespace.clone(), a.job.clone()));
                out.allocs.push(a);
            }
        }
        if !others.is_empty() {
            return Ok(out);
        }
        let status = self.drain_status(node.id.as_str())?;
        if status.starting > 0 {
            return Ok(out);
        }
        for a in system {
            out.stop(a, "node drained", now);
        }
        out.node = Some(complete(node.clone()));
        Ok(out)
    }

    async fn commit_drain_step(&self, changes: StepChanges, now: u64) -> Result<(), StateError> {
        if changes.allocs.is_empty() && changes.node.is_none() {
            return Ok(());
        }
        let node_id = changes.node.as_ref().map(|n| n.id.clone());
        let evals: Vec<Evaluation> = changes
            .jobs
            .iter()
            .filter_map(|(ns, job)| {
                let c = self.cluster();
                let j = c.job(ns, job).filter(|j| !j.stopped)?;
                let mut e = Self::new_eval(j, EvalTrigger::NodeDrain, node_id.clone());
                e.create_time = now;
                Some(e)
            })
            .collect();
        let mut txn = Txn::new();
        if let Some(n) = &changes.node {
            txn = txn.put_encoded(Table::Nodes, n.id.as_str(), n);
        }
        for a in &changes.allocs {
            txn = txn.put_encoded(Table::Allocs, a.id.as_str(), a);
        }
        for e in &evals {
            txn = txn.put_encoded(Table::Evals, e.id.as_str(), e);
        }
        let index = self.commit(txn).await?;
        if let Some(n) = &changes.node {
            tracing::info!(node = %n.name, stopped = changes.allocs.len(), "drain complete");
        } else {
            tracing::info!(moves = changes.allocs.len(), "drain asked for moves");
        }
        let nodes: Vec<Node> = changes.node.into_iter().collect();
        self.apply(index, vec![], changes.allocs, nodes, evals.clone());
        for e in evals {
            self.broker.enqueue(e);
        }
        Ok(())
    }
}

impl StepChanges {
    /// Stop `a` on the draining node; its job's evaluation places it again
    /// elsewhere if the job still wants it.
    fn stop(&mut self, mut a: Allocation, why: &str, now: u64) {
        a.desired_status = DesiredStatus::Stop;
        a.desired_description = why.into();
        a.migrate = None;
        a.modify_time = now;
        self.jobs.insert((a.namespace.clone(), a.job.clone()));
        self.allocs.push(a);
    }
}
