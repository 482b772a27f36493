//! Nodes on the server: liveness (`ready` -> `disconnected` after the
//! heartbeat TTL -> `down` after the TTL plus the grace), what happens to
//! their allocations when they go down or come back, unique names,
//! eligibility, removal (`taba node rm`) and garbage collection of nodes
//! long down.
//!
//! Liveness is judged by when this server last heard from the node's agent
//! (a heartbeat or an allocation report), on this server's monotonic clock;
//! a node never heard from since this server started gets a full TTL.

use super::{ServerState, StateError};
use crate::broker::now_ms;
use crate::locks::{job_key, node_key};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use taba_store::{Table, Txn};
use taba_types::{
    AllocEvent, Allocation, ClientStatus, DesiredStatus, Eligibility, EvalTrigger, Evaluation,
    Node, NodeId, NodeStatus, UnixMillis,
};

/// What the heartbeat monitor does to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// Silent past its TTL: `disconnected` (no new placements).
    Disconnect,
    /// Silent past its TTL plus the grace: `down`, allocations lost.
    Down,
    /// Down for longer than `node_gc_after`: remove its record.
    Collect,
}

impl ServerState {
    /// How long since the node's agent was last heard from.
    fn silence(&self, id: &NodeId) -> Duration {
        let now = Instant::now();
        let mut hb = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        now.duration_since(*hb.entry(id.clone()).or_insert(now))
    }

    /// When the node's agent was last heard from, as wall-clock time.
    fn last_heard(&self, id: &NodeId) -> UnixMillis {
        now_ms().saturating_sub(self.silence(id).as_millis() as u64)
    }

    /// The liveness changes due now, per node.
    pub fn node_actions(&self) -> Vec<(NodeId, NodeAction)> {
        let ttl = self.config.heartbeat_ttl;
        let down_after = ttl + self.config.heartbeat_grace;
        let gc_after = self.config.node_gc_after.as_millis() as u64;
        let now = now_ms();
        let nodes: Vec<(NodeId, NodeStatus, UnixMillis)> = self
            .cluster()
            .nodes()
            .map(|n| (n.id.clone(), n.status, n.last_heartbeat))
            .collect();
        nodes
            .into_iter()
            .filter_map(|(id, status, last)| {
                if status == NodeStatus::Down {
                    return (now.saturating_sub(last) > gc_after)
                        .then_some((id, NodeAction::Collect));
                }
                let silent = self.silence(&id);
                if silent > down_after {
                    Some((id, NodeAction::Down))
                } else if silent > ttl && status == NodeStatus::Ready {
                    Some((id, NodeAction::Disconnect))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Carry out one [`NodeAction`].
    pub async fn apply_node_action(
        &self,
        id: &NodeId,
        action: NodeAction,
    ) -> Result<(), StateError> {
        match action {
            NodeAction::Disconnect => self.mark_node_disconnected(id).await,
            NodeAction::Down => self.mark_node_down(id).await,
            NodeAction::Collect => {
                let name = self.known_node(id)?.name;
                self.remove_node_now(id, "node garbage-collected", true)
                    .await
                    .map(|_| tracing::info!(node = %id, %name, "down node garbage-collected"))
            }
        }
    }

    /// `ready` -> `disconnected`: no new placements; its allocations are
    /// left alone for the grace.
    async fn mark_node_disconnected(&self, id: &NodeId) -> Result<(), StateError> {
        let _held = self.locks.lock(vec![node_key(id.as_str())]).await;
        let Ok(mut node) = self.known_node(id) else {
            return Ok(());
        };
        // A heartbeat may have arrived while we waited for the lock.
        if node.status != NodeStatus::Ready || self.silence(id) <= self.config.heartbeat_ttl {
            return Ok(());
        }
        node.status = NodeStatus::Disconnected;
        node.last_heartbeat = self.last_heard(id);
        let index = self
            .commit(Txn::new().put_encoded(Table::Nodes, id.as_str(), &node))
            .await?;
        tracing::warn!(node = %id, name = %node.name, ttl = ?self.config.heartbeat_ttl,
            grace = ?self.config.heartbeat_grace, "node missed its heartbeat; disconnected");
        self.apply(index, vec![], vec![], vec![node], vec![]);
        Ok(())
    }

    /// Holds the locks of node `id` and of every job with an allocation on it, so that
    /// nothing changes them while the caller decides.
    pub(crate) async fn lock_node_and_jobs(&self, id: &NodeId) -> crate::locks::Held {
        let mut keys: Vec<String> = self
            .node_allocs(id)
            .iter()
            .map(|a| job_key(&a.namespace, &a.job))
            .collect();
        keys.push(node_key(id.as_str()));
        self.locks.lock(keys).await
    }

    /// Mark a node down: its allocations that still run are lost, and their
    /// jobs get evaluations so replacements are placed elsewhere.
    pub async fn mark_node_down(&self, id: &NodeId) -> Result<(), StateError> {
        let _held = self.lock_node_and_jobs(id).await;
        let Ok(mut node) = self.known_node(id) else {
            return Ok(());
        };
        let down_after = self.config.heartbeat_ttl + self.config.heartbeat_grace;
        // A heartbeat may have arrived while we waited for the locks.
        if node.status == NodeStatus::Down || self.silence(id) <= down_after {
            return Ok(());
        }
        node.status = NodeStatus::Down;
        // The scheduler times fenced replacements from it (stop_after_disconnect).
        node.last_heartbeat = self.last_heard(id);
        let (lost, evals) = self.lose_allocs(id, "node is down");
        let mut txn = Txn::new().put_encoded(Table::Nodes, id.as_str(), &node);
        txn = Self::put_allocs_evals(txn, &lost, &evals);
        let index = self.commit(txn).await?;
        tracing::warn!(node = %id, name = %node.name, lost = lost.len(),
            "node silent past its heartbeat TTL and grace; marked down");
        self.apply(index, vec![], lost, vec![node], evals.clone());
        for e in evals {
            self.broker.enqueue(e);
        }
        Ok(())
    }

    /// The node's allocations that are not terminal, marked lost (with an
    /// event saying `why`), and one evaluation per job with one to replace.
    /// A live migration one of them takes part in fails (unless its source
    /// has sent its state): the peer on the other node is in the result too.
    fn lose_allocs(&self, id: &NodeId, why: &str) -> (Vec<Allocation>, Vec<Evaluation>) {
        let now = now_ms();
        let mut lost = Vec::new();
        let mut peers: BTreeMap<taba_types::AllocId, Allocation> = BTreeMap::new();
        let mut jobs: BTreeMap<(String, String), ()> = BTreeMap::new();
        for old in self.node_allocs(id) {
            if old.client_status.is_terminal() {
                continue;
            }
            let mut a = old.clone();
            a.client_status = ClientStatus::Lost;
            a.client_description = why.to_string();
            a.push_event(AllocEvent::system(now, "Lost", why));
            a.modify_time = now;
            if let Some(lm) = &old.live_migration {
                let peer_id = if lm.source_alloc == a.id {
                    &lm.target_alloc
                } else {
                    &lm.source_alloc
                };
                let peer = peers
                    .get(peer_id)
                    .cloned()
                    .or_else(|| self.find_alloc(peer_id.as_str()).ok());
                if let Some(p) =
                    super::migration::migration_step(&old, &mut a, peer.as_ref(), None, now)
                {
                    peers.insert(p.id.clone(), p);
                }
            }
            if a.desired_status == DesiredStatus::Run {
                jobs.insert((a.namespace.clone(), a.job.clone()), ());
            }
            lost.push(a);
        }
        for (_, p) in peers {
            match lost.iter_mut().find(|a| a.id == p.id) {
                Some(a) => *a = p,
                None => lost.push(p),
            }
        }
        let evals = jobs
            .keys()
            .filter_map(|(ns, job)| self.job(ns, job).ok())
            .map(|j| Self::new_eval(&j, EvalTrigger::NodeUpdate, Some(id.clone())))
            .collect();
        (lost, evals)
    }

    pub(super) fn put_allocs_evals(
        mut txn: Txn,
        allocs: &[Allocation],
        evals: &[Evaluation],
    ) -> Txn {
        for a in allocs {
            txn = txn.put_encoded(Table::Allocs, a.id.as_str(), a);
        }
        for e in evals {
            txn = txn.put_encoded(Table::Evals, e.id.as_str(), e);
        }
        txn
    }

    /// An agent's report changed an allocation from `old` to `new`: record
    /// what it says about the link in `new`'s events. Returns true when the
    /// allocation was lost and is reported alive again (a reconnect: the
    /// job needs an evaluation so exactly `count` keep running).
    pub(super) fn record_link_events(
        old: &Allocation,
        new: &mut Allocation,
        now: UnixMillis,
    ) -> bool {
        let alive = !new.client_status.is_terminal();
        if old.client_status == ClientStatus::Lost && alive {
            let why = format!(
                "its node reported it {} after it was marked lost",
                new.client_status
            );
            new.push_event(AllocEvent::system(now, "Reconnected", why));
            return true;
        }
        if new.client_status == ClientStatus::Lost
            && old.client_description != new.client_description
        {
            // Only an agent that fenced itself reports `lost`.
            let why = new.client_description.clone();
            new.push_event(AllocEvent::system(now, "Fenced", why));
        }
        false
    }

    /// Node names are unique: a registration under a name another node id
    /// holds is refused.
    pub(crate) fn check_name_free(&self, node: &Node) -> Result<(), StateError> {
        let c = self.cluster();
        let Some(other) = c.nodes().find(|n| n.name == node.name && n.id != node.id) else {
            return Ok(());
        };
        tracing::warn!(node = %node.id, name = %node.name, holder = %other.id,
            "registration refused: node name taken");
        Err(StateError::Taken {
            field: "node.name".into(),
            message: format!(
                "node name {:?} is taken by node {} ({}); give this agent another name, or \
                 remove the other node with `taba node rm {}`",
                node.name, other.id, other.status, other.id
            ),
        })
    }

    /// `taba node eligibility`: allow or forbid new placements on a node.
    /// A draining node stays ineligible until its drain is cancelled.
    pub async fn set_eligibility(&self, key: &str, eligible: bool) -> Result<Node, StateError> {
        let id = self.find_node(key)?.id;
        let _held = self.locks.lock(vec![node_key(id.as_str())]).await;
        let mut node = self.known_node(&id)?;
        if eligible && node.draining() {
            return Err(StateError::Conflict(format!(
                "node {} is draining; cancel the drain with `taba node drain {} --disable`",
                node.name, node.name
            )));
        }
        let Some(evals) = self.change_eligibility(&mut node, eligible) else {
            return Ok(self.with_usage(node));
        };
        let txn = Self::put_allocs_evals(
            Txn::new().put_encoded(Table::Nodes, id.as_str(), &node),
            &[],
            &evals,
        );
        let index = self.commit(txn).await?;
        self.apply(index, vec![], vec![], vec![node.clone()], evals.clone());
        self.eligibility_changed(&node, evals);
        Ok(self.with_usage(node))
    }

    /// Set `node`'s eligibility (the one place it changes: `taba node
    /// eligibility`, a drain's start and its cancel). `None` when it already
    /// was; else the evaluations to commit with the node: eligible again,
    /// system jobs place there.
    pub(super) fn change_eligibility(
        &self,
        node: &mut Node,
        eligible: bool,
    ) -> Option<Vec<Evaluation>> {
        let want = if eligible {
            Eligibility::Eligible
        } else {
            Eligibility::Ineligible
        };
        if node.eligibility == want {
            return None;
        }
        node.eligibility = want;
        Some(if eligible {
            self.node_evals(&node.id)
        } else {
            vec![]
        })
    }

    /// After a committed eligibility change: log it, queue its evaluations
    /// and, when eligible again, retry blocked work.
    pub(super) fn eligibility_changed(&self, node: &Node, evals: Vec<Evaluation>) {
        let eligible = node.eligibility == Eligibility::Eligible;
        tracing::info!(node = %node.id, name = %node.name, eligible, "node eligibility changed");
        for e in evals {
            self.broker.enqueue(e);
        }
        if eligible {
            self.unblock(None);
        }
    }

    /// `taba node rm`: forget a node. A node that is not down and still has
    /// allocations holding resources is refused unless `force`; with it,
    /// those allocations are lost and replaced like a node failure's. Its
    /// credential is forgotten: a live agent over plain HTTP registers again
    /// and gets a new node secret; with TLS its certificate is revoked and
    /// it must join again. Returns the number of allocations lost.
    pub async fn remove_node(&self, key: &str, force: bool) -> Result<(String, usize), StateError> {
        let node = self.find_node(key)?;
        let busy = self
            .node_allocs(&node.id)
            .iter()
            .filter(|a| a.holds_resources())
            .count();
        if node.status != NodeStatus::Down && busy > 0 && !force {
            return Err(StateError::Conflict(format!(
                "node {} is {} with {busy} allocations not finished; drain it first \
                 (`taba node drain {}`), or pass --force to mark them lost and replace them",
                node.name,
                node.display_status(),
                node.name
            )));
        }
        let lost = self
            .remove_node_now(&node.id, "node removed by an operator", false)
            .await?;
        // Its credential goes too (a certificate is revoked).
        self.credentials
            .forget(&node.id)
            .await
            .map_err(|e| match e {
                crate::credentials::CredentialError::Store(s) => StateError::Store(s),
                crate::credentials::CredentialError::ShuttingDown => StateError::ShuttingDown,
                other => StateError::Conflict(other.to_string()),
            })?;
        tracing::warn!(node = %node.id, name = %node.name, lost, force, "node removed");
        Ok((node.name, lost))
    }

    /// Remove the node record; allocations not terminal are lost first.
    /// `only_down`: do nothing unless the node is (still) down.
    async fn remove_node_now(
        &self,
        id: &NodeId,
        why: &str,
        only_down: bool,
    ) -> Result<usize, StateError> {
        let _held = self.lock_node_and_jobs(id).await;
        let Ok(node) = self.known_node(id) else {
            return Ok(0);
        };
        if only_down && node.status != NodeStatus::Down {
            return Ok(0);
        }
        let (lost, evals) = self.lose_allocs(id, why);
        let txn =
            Self::put_allocs_evals(Txn::new().delete(Table::Nodes, id.as_str()), &lost, &evals);
        let index = self.commit(txn).await?;
        let n = lost.len();
        self.cluster_mut().remove_node(id);
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.node_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.apply(index, vec![], lost, vec![], evals.clone());
        self.forget_node_watch(id);
        for e in evals {
            self.broker.enqueue(e);
        }
        Ok(n)
    }
}
