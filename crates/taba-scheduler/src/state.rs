//! `ClusterState`: the in-memory, indexed copy of the cluster (nodes, jobs,
//! allocations) that the server keeps as the authoritative view of its store,
//! and that the scheduler reads.
//!
//! Besides the records it keeps, per node, the resources held by allocations
//! whose client status is not terminal, and two capacity indexes over the
//! schedulable nodes that make a best-fit placement a range query instead of
//! a scan of every node:
//!
//! - `used`: nodes that hold at least one allocation, ordered by
//!   [`Res::key`] of their free capacity (smallest first: the fullest node
//!   that still fits is found first);
//! - `empty`: nodes that hold nothing, largest first (a new node is opened
//!   only when no node in use fits, and then the largest one, so few nodes
//!   are used).
//!
//! It owns no I/O; the server persists everything it applies here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use taba_types::{AllocId, Allocation, Job, Node, NodeId, Resources};

const MIB: u64 = 1024 * 1024;

/// Resources as the scheduler counts them: CPU in MHz, memory and disk in
/// bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Res {
    pub cpu: u64,
    pub mem: u64,
    pub disk: u64,
}

impl Res {
    pub fn of(r: &Resources) -> Self {
        Self {
            cpu: r.cpu,
            mem: r.memory.0,
            disk: r.disk.0,
        }
    }
    pub fn add(&mut self, o: Res) {
        self.cpu = self.cpu.saturating_add(o.cpu);
        self.mem = self.mem.saturating_add(o.mem);
        self.disk = self.disk.saturating_add(o.disk);
    }
    pub fn sub(&mut self, o: Res) {
        self.cpu = self.cpu.saturating_sub(o.cpu);
        self.mem = self.mem.saturating_sub(o.mem);
        self.disk = self.disk.saturating_sub(o.disk);
    }
    pub fn minus(mut self, o: Res) -> Res {
        self.sub(o);
        self
    }
    pub fn times(self, n: u64) -> Res {
        Res {
            cpu: self.cpu.saturating_mul(n),
            mem: self.mem.saturating_mul(n),
            disk: self.disk.saturating_mul(n),
        }
    }
    /// The first dimension in which `self` does not fit into `free`.
    pub fn exceeds(&self, free: &Res) -> Option<&'static str> {
        if self.cpu > free.cpu {
            Some("cpu")
        } else if self.mem > free.mem {
            Some("memory")
        } else if self.disk > free.disk {
            Some("disk")
        } else {
            None
        }
    }
    pub fn fits_in(&self, free: &Res) -> bool {
        self.cpu <= free.cpu && self.mem <= free.mem && self.disk <= free.disk
    }
    /// How many of `each` fit into `self` (u64::MAX when `each` is zero).
    pub fn how_many(&self, each: &Res) -> u64 {
        let mut n = u64::MAX;
        for (have, need) in [
            (self.cpu, each.cpu),
            (self.mem, each.mem),
            (self.disk, each.disk),
        ] {
            if let Some(k) = have.checked_div(need) {
                n = n.min(k);
            }
        }
        n
    }
    /// The scalar the capacity indexes order by: the smaller of CPU (MHz)
    /// and memory (MiB). A node fits a request only if its key is at least
    /// the request's key, so a range query from the request's key skips
    /// every node that is too small in both dimensions.
    pub fn key(&self) -> u64 {
        self.cpu.min(self.mem / MIB)
    }
}

/// Where a node sits in the capacity indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Indexed {
    Used(u64),
    Empty(u64),
}

/// Per-node bookkeeping.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeEntry {
    /// The record (None for a node only known from allocations so far).
    pub node: Option<Node>,
    /// Capacity for allocations (total minus reserved).
    pub allocatable: Res,
    /// Held by allocations whose client status is not terminal.
    pub used: Res,
    /// Number of allocations holding resources here.
    pub holders: u32,
    /// Every allocation on this node (slots).
    pub allocs: BTreeSet<u32>,
    indexed: Option<Indexed>,
}

impl NodeEntry {
    pub fn free(&self) -> Res {
        self.allocatable.minus(self.used)
    }
    pub fn schedulable(&self) -> bool {
        self.node.as_ref().is_some_and(Node::schedulable)
    }
}

#[derive(Clone, Debug, Default)]
struct JobEntry {
    job: Option<Job>,
    allocs: BTreeSet<u32>,
}

/// The in-memory, indexed state of the cluster. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    index: u64,
    nodes: Vec<NodeEntry>,
    node_slots: HashMap<NodeId, u32>,
    node_names: BTreeSet<(String, u32)>,
    jobs: BTreeMap<String, BTreeMap<String, JobEntry>>,
    allocs: Vec<Option<Allocation>>,
    alloc_node: Vec<u32>,
    free_alloc_slots: Vec<u32>,
    alloc_slots: HashMap<AllocId, u32>,
    used_index: BTreeSet<(u64, u32)>,
    empty_index: BTreeSet<(Reverse<u64>, u32)>,
}

impl ClusterState {
    /// An empty state at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store index this state reflects.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Record that the state reflects the store at `index`.
    pub fn set_index(&mut self, index: u64) {
        self.index = index;
    }

    // ---- nodes ----

    fn node_slot_or_insert(&mut self, id: &NodeId) -> u32 {
        if let Some(s) = self.node_slots.get(id) {
            return *s;
        }
        let slot = self.nodes.len() as u32;
        self.nodes.push(NodeEntry::default());
        self.node_slots.insert(id.clone(), slot);
        slot
    }

    /// Insert or replace a node record.
    pub fn upsert_node(&mut self, node: Node) {
        let slot = self.node_slot_or_insert(&node.id);
        let entry = &mut self.nodes[slot as usize];
        if let Some(old) = &entry.node {
            self.node_names.remove(&(old.name.clone(), slot));
        }
        self.node_names.insert((node.name.clone(), slot));
        entry.allocatable = Res::of(&node.allocatable());
        entry.node = Some(node);
        self.reindex(slot);
    }

    /// A node by id.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        let slot = *self.node_slots.get(id)?;
        self.nodes[slot as usize].node.as_ref()
    }

    /// A node by name (the first registered, if names collide).
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        let (n, slot) = self.node_names.range((name.to_string(), 0)..).next()?;
        if n != name {
            return None;
        }
        self.nodes[*slot as usize].node.as_ref()
    }

    /// Every node, in registration order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter_map(|e| e.node.as_ref())
    }

    /// Resources held on `node` by allocations whose client status is not
    /// terminal.
    pub fn node_used(&self, node: &NodeId) -> Resources {
        let used = self
            .node_slots
            .get(node)
            .map(|s| self.nodes[*s as usize].used)
            .unwrap_or_default();
        Resources {
            cpu: used.cpu,
            memory: taba_types::ByteSize(used.mem),
            disk: taba_types::ByteSize(used.disk),
            pids: 0,
        }
    }

    // ---- jobs ----

    /// Insert or replace a job record.
    pub fn upsert_job(&mut self, job: Job) {
        let entry = self
            .jobs
            .entry(job.spec.namespace.clone())
            .or_default()
            .entry(job.spec.name.clone())
            .or_default();
        entry.job = Some(job);
    }

    /// A job by namespace and name.
    pub fn job(&self, namespace: &str, name: &str) -> Option<&Job> {
        self.jobs.get(namespace)?.get(name)?.job.as_ref()
    }

    /// Every job, ordered by namespace and name.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs
            .values()
            .flat_map(|m| m.values())
            .filter_map(|e| e.job.as_ref())
    }

    /// Forget a job record (its allocations stay until removed).
    pub fn remove_job(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.jobs.get_mut(namespace) else {
            return;
        };
        if let Some(e) = ns.get_mut(name) {
            e.job = None;
            if e.allocs.is_empty() {
                ns.remove(name);
            }
        }
        if ns.is_empty() {
            self.jobs.remove(namespace);
        }
    }

    // ---- allocations ----

    /// Insert or replace an allocation, keeping per-node usage and the
    /// indexes right.
    pub fn upsert_alloc(&mut self, alloc: Allocation) {
        if let Some(slot) = self.alloc_slots.get(&alloc.id).copied() {
            self.modify_alloc(slot, |a| *a = alloc);
            return;
        }
        let node_slot = self.node_slot_or_insert(&alloc.node_id);
        let slot = match self.free_alloc_slots.pop() {
            Some(s) => s,
            None => {
                self.allocs.push(None);
                self.alloc_node.push(0);
                (self.allocs.len() - 1) as u32
            }
        };
        self.alloc_slots.insert(alloc.id.clone(), slot);
        self.jobs
            .entry(alloc.namespace.clone())
            .or_default()
            .entry(alloc.job.clone())
            .or_default()
            .allocs
            .insert(slot);
        self.nodes[node_slot as usize].allocs.insert(slot);
        self.alloc_node[slot as usize] = node_slot;
        self.allocs[slot as usize] = Some(alloc);
        self.account(slot, true);
    }

    /// Change an allocation in place through `f` (its id, job and node must
    /// not change; use remove + upsert for that).
    pub(crate) fn modify_alloc(&mut self, slot: u32, f: impl FnOnce(&mut Allocation)) {
        self.account(slot, false);
        let Some(a) = self.allocs[slot as usize].as_mut() else {
            return;
        };
        let (id, ns, job, node) = (
            a.id.clone(),
            a.namespace.clone(),
            a.job.clone(),
            a.node_id.clone(),
        );
        f(a);
        let moved = a.id != id || a.namespace != ns || a.job != job || a.node_id != node;
        if moved {
            // Rare (an upsert that changed identity fields): re-insert.
            let a = self.allocs[slot as usize].take().expect("checked above");
            self.unlink(slot, &id, &ns, &job);
            self.upsert_alloc(a);
        } else {
            self.account(slot, true);
        }
    }

    /// Add (`add`) or remove the slot's contribution to its node's usage.
    fn account(&mut self, slot: u32, add: bool) {
        let Some(a) = self.allocs[slot as usize].as_ref() else {
            return;
        };
        if !a.holds_resources() {
            return;
        }
        let r = Res::of(&a.resources);
        let node_slot = self.alloc_node[slot as usize];
        let e = &mut self.nodes[node_slot as usize];
        if add {
            e.used.add(r);
            e.holders += 1;
        } else {
            e.used.sub(r);
            e.holders = e.holders.saturating_sub(1);
        }
        self.reindex(node_slot);
    }

    fn unlink(&mut self, slot: u32, id: &AllocId, ns: &str, job: &str) {
        self.alloc_slots.remove(id);
        if let Some(nsm) = self.jobs.get_mut(ns) {
            if let Some(e) = nsm.get_mut(job) {
                e.allocs.remove(&slot);
                if e.allocs.is_empty() && e.job.is_none() {
                    nsm.remove(job);
                }
            }
            if nsm.is_empty() {
                self.jobs.remove(ns);
            }
        }
        let node_slot = self.alloc_node[slot as usize];
        self.nodes[node_slot as usize].allocs.remove(&slot);
        self.free_alloc_slots.push(slot);
    }

    /// An allocation by id.
    pub fn alloc(&self, id: &AllocId) -> Option<&Allocation> {
        let slot = *self.alloc_slots.get(id)?;
        self.allocs[slot as usize].as_ref()
    }

    /// Forget an allocation.
    pub fn remove_alloc(&mut self, id: &AllocId) {
        let Some(slot) = self.alloc_slots.get(id).copied() else {
            return;
        };
        self.account(slot, false);
        let Some(a) = self.allocs[slot as usize].take() else {
            return;
        };
        self.unlink(slot, &a.id, &a.namespace, &a.job);
    }

    /// The allocations of one job (every version, every status).
    pub fn allocs_for_job(&self, namespace: &str, job: &str) -> impl Iterator<Item = &Allocation> {
        self.jobs
            .get(namespace)
            .and_then(|m| m.get(job))
            .into_iter()
            .flat_map(|e| e.allocs.iter())
            .filter_map(|s| self.allocs[*s as usize].as_ref())
    }

    /// The allocations placed on one node.
    pub fn allocs_for_node(&self, node: &NodeId) -> impl Iterator<Item = &Allocation> {
        self.node_slots
            .get(node)
            .into_iter()
            .flat_map(|s| self.nodes[*s as usize].allocs.iter())
            .filter_map(|s| self.allocs[*s as usize].as_ref())
    }

    /// Every allocation.
    pub fn allocs(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.iter().filter_map(Option::as_ref)
    }

    /// Number of allocations kept.
    pub fn alloc_count(&self) -> usize {
        self.alloc_slots.len()
    }

    // ---- the capacity indexes ----

    fn reindex(&mut self, slot: u32) {
        let e = &self.nodes[slot as usize];
        let want = if e.schedulable() {
            if e.holders == 0 {
                Some(Indexed::Empty(e.allocatable.key()))
            } else {
                Some(Indexed::Used(e.free().key()))
            }
        } else {
            None
        };
        if want == e.indexed {
            return;
        }
        match e.indexed {
            Some(Indexed::Used(k)) => {
                self.used_index.remove(&(k, slot));
            }
            Some(Indexed::Empty(k)) => {
                self.empty_index.remove(&(Reverse(k), slot));
            }
            None => {}
        }
        match want {
            Some(Indexed::Used(k)) => {
                self.used_index.insert((k, slot));
            }
            Some(Indexed::Empty(k)) => {
                self.empty_index.insert((Reverse(k), slot));
            }
            None => {}
        }
        self.nodes[slot as usize].indexed = want;
    }

    // ---- crate-internal accessors for the scheduler and plan applier ----

    pub(crate) fn node_slot(&self, id: &NodeId) -> Option<u32> {
        self.node_slots.get(id).copied()
    }
    pub(crate) fn entry(&self, slot: u32) -> &NodeEntry {
        &self.nodes[slot as usize]
    }
    pub(crate) fn node_entries(&self) -> impl Iterator<Item = (u32, &NodeEntry)> {
        self.nodes.iter().enumerate().map(|(i, e)| (i as u32, e))
    }
    pub(crate) fn used_from(&self, key: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.used_index.range((key, 0)..).copied()
    }
    pub(crate) fn empty_largest_first(&self) -> impl Iterator<Item = u32> + '_ {
        self.empty_index.iter().map(|(_, s)| *s)
    }
    pub(crate) fn alloc_slot(&self, id: &AllocId) -> Option<u32> {
        self.alloc_slots.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{alloc_on, node};
    use taba_types::ClientStatus;

    #[test]
    fn usage_follows_client_status_and_indexes_move() {
        let mut s = ClusterState::new();
        s.upsert_node(node("n1", 4000, 4096));
        let n1 = s.node_by_name("n1").unwrap().id.clone();
        assert_eq!(s.empty_largest_first().count(), 1);
        let mut a = alloc_on(&s, "web", 0, "n1", 1000, 1024);
        s.upsert_alloc(a.clone());
        assert_eq!(s.node_used(&n1).cpu, 1000);
        assert_eq!(s.empty_largest_first().count(), 0);
        assert_eq!(s.used_from(0).count(), 1);
        a.client_status = ClientStatus::Complete;
        s.upsert_alloc(a.clone());
        assert_eq!(s.node_used(&n1).cpu, 0);
        assert_eq!(s.empty_largest_first().count(), 1);
        assert_eq!(s.allocs_for_node(&n1).count(), 1);
        assert_eq!(s.allocs_for_job("default", "web").count(), 1);
        s.remove_alloc(&a.id);
        assert_eq!(s.allocs().count(), 0);
        assert_eq!(s.allocs_for_node(&n1).count(), 0);
        assert!(s.alloc(&a.id).is_none());
    }

    #[test]
    fn node_lookup_by_name_and_rename() {
        let mut s = ClusterState::new();
        let mut n = node("a", 1000, 1024);
        s.upsert_node(n.clone());
        assert!(s.node_by_name("a").is_some());
        n.name = "b".into();
        s.upsert_node(n);
        assert!(s.node_by_name("a").is_none());
        assert!(s.node_by_name("b").is_some());
        assert_eq!(s.nodes().count(), 1);
    }
}
