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
//! Allocations are stored compactly: a record the scheduler just placed (no
//! client-side details yet, UUID ids, the usual name) is kept as ~100 bytes
//! pointing at a shared copy of its job's group spec, and the full
//! [`Allocation`] is rebuilt on first read and cached until the record
//! changes. Records with more in them are kept whole. Either way readers get
//! exactly what was stored. This is what keeps a million allocations within a
//! few hundred MiB.
//!
//! It owns no I/O; the server persists everything it applies here.

use crate::ids::{format_uuid, parse_uuid};
use crate::ports::HeldPorts;
use crate::preempt::LiveByPriority;
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, Weak};
use taba_types::{
    AllocId, AllocatedPort, Allocation, ClientStatus, DesiredStatus, EvalId, Job, JobType, Node,
    NodeId, Resources, TaskGroupSpec, TaskState,
};

const MIB: u64 = 1024 * 1024;

/// Memory per MHz of CPU on a typical host, times two (4 GiB per 2.7 GHz
/// core is about 1.5 MiB per MHz).
const MIB_PER_MHZ_X2: u64 = 3;

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
    /// The scalar the capacity indexes order by: the smaller of CPU and
    /// memory, with CPU weighted by `MIB_PER_MHZ_X2 / 2` so that both count alike
    /// on a typical host. A node fits a request only if its key is at least
    /// the request's key, so a range query from the request's key skips
    /// every node that is too small in both dimensions.
    pub fn key(&self) -> u64 {
        (self.cpu.saturating_mul(MIB_PER_MHZ_X2) / 2).min(self.mem / MIB)
    }
}

/// An allocation id that compares like its string without formatting
/// UUIDs (the canonical form orders like its value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IdKey {
    Uuid(u128),
    Other(AllocId),
}

impl Ord for IdKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (IdKey::Uuid(a), IdKey::Uuid(b)) => a.cmp(b),
            _ => self.text().cmp(&other.text()),
        }
    }
}

impl PartialOrd for IdKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl IdKey {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            IdKey::Uuid(u) => format_uuid(*u).into(),
            IdKey::Other(id) => id.as_str().into(),
        }
    }
}

/// A live allocation as preemption sees it.
pub(crate) struct LiveView<'a> {
    pub namespace: &'a str,
    pub job: &'a str,
    pub priority: u32,
    pub system: bool,
    pub res: Res,
}

/// Where a node sits in the capacity indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Indexed {
    Used(u64),
    Empty(u64),
}

/// Per-node bookkeeping.
#[derive(Clone, Debug)]
pub(crate) struct NodeEntry {
    /// The node's id (known even before its record).
    pub id: NodeId,
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
    /// Resources of live allocations per priority (preemption's bound).
    pub live: LiveByPriority,
    /// Host ports held by allocations holding resources here.
    pub ports: HeldPorts,
    /// Shard for concurrent scheduling (see [`ClusterState::balance_shards`]).
    pub shard: u32,
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

/// One job version's group, shared by its compact allocations.
#[derive(Clone, Debug)]
struct SpecEntry {
    namespace: String,
    job: String,
    version: u64,
    job_type: JobType,
    group_spec: Arc<TaskGroupSpec>,
    resources: Resources,
    res: Res,
    refs: u32,
}

/// An allocation as the scheduler placed it, in ~100 bytes.
#[derive(Clone, Debug)]
struct CompactAlloc {
    id: u128,
    eval: u128,
    spec: u32,
    index: u32,
    priority: u32,
    desired: DesiredStatus,
    client: ClientStatus,
    create_time: u64,
    modify_time: u64,
    create_index: u64,
    modify_index: u64,
    /// Host ports given to it (none for most: no allocation then).
    ports: Box<[AllocatedPort]>,
    /// Per-task state as the agent reported it, in name order (a running
    /// allocation has it; as a `BTreeMap` one entry took a whole 11-entry
    /// node, ~1.3 KiB).
    tasks: Box<[(String, TaskState)]>,
    /// The full record, built on first read.
    cache: OnceLock<Box<Allocation>>,
}

/// The fields of an allocation that hot paths read (see
/// [`ClusterState::alloc_briefs_for_job`]).
#[derive(Clone, Copy, Debug)]
pub struct AllocBrief<'a> {
    /// Job version it runs.
    pub job_version: u64,
    /// What the servers want.
    pub desired_status: DesiredStatus,
    /// What the agent observes.
    pub client_status: ClientStatus,
    /// A move has been asked for.
    pub migrating: bool,
    /// Node it is placed on.
    pub node_id: &'a NodeId,
}

impl AllocBrief<'_> {
    /// As [`Allocation::is_live`].
    pub fn is_live(&self) -> bool {
        self.desired_status == DesiredStatus::Run && !self.client_status.is_terminal()
    }

    /// As [`Allocation::holds_resources`].
    pub fn holds_resources(&self) -> bool {
        !self.client_status.is_terminal()
    }
}

#[derive(Clone, Debug, Default)]
enum Stored {
    #[default]
    Vacant,
    Full(Box<Allocation>),
    Compact(CompactAlloc),
}

/// One copy of each group spec for the full records of its allocations
/// (a running allocation's record is full: it has task states and events).
/// Records decoded from the store or the wire each bring their own copy;
/// without sharing, 100,000 allocations held 100,000 copies (~1 KiB each).
/// Weak references: a spec no record holds any more is freed.
#[derive(Clone, Debug, Default)]
struct SharedSpecs {
    specs: HashMap<(String, String, u64, String), Weak<TaskGroupSpec>>,
    /// Size after the last sweep of dead entries.
    swept_at: usize,
}

impl SharedSpecs {
    /// Points `a` at the shared copy of its group spec, or makes its own copy
    /// the shared one. A spec that differs from the shared one (it should
    /// not: a job version is immutable) is kept as it is.
    fn share(&mut self, a: &mut Allocation) {
        let key = (
            a.namespace.clone(),
            a.job.clone(),
            a.job_version,
            a.group.clone(),
        );
        if let Some(shared) = self.specs.get(&key).and_then(Weak::upgrade) {
            if Arc::ptr_eq(&shared, &a.group_spec) || *shared == *a.group_spec {
                a.group_spec = shared;
            }
            return;
        }
        self.specs.insert(key, Arc::downgrade(&a.group_spec));
        if self.specs.len() > 2 * self.swept_at.max(512) {
            self.specs.retain(|_, w| w.strong_count() > 0);
            self.swept_at = self.specs.len();
        }
    }
}

/// Hashes UUID keys cheaply: they are random already, so a multiply that
/// spreads their bits is enough (SipHash costs more than the lookup).
#[derive(Clone, Copy, Debug, Default)]
struct UuidHasher(u64);

impl std::hash::Hasher for UuidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = ((v as u64) ^ ((v >> 64) as u64) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type BuildUuidHasher = std::hash::BuildHasherDefault<UuidHasher>;

/// `job.group[index]`, checked without allocating.
fn is_standard_name(a: &Allocation) -> bool {
    let Some(rest) = a.name.strip_prefix(a.job.as_str()) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('.') else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(a.group.as_str()) else {
        return false;
    };
    let Some(num) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return false;
    };
    !num.is_empty()
        && (num == "0" || !num.starts_with('0'))
        && num.bytes().all(|b| b.is_ascii_digit())
        && num.parse::<u32>() == Ok(a.index)
}

/// The in-memory, indexed state of the cluster. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    index: u64,
    nodes: Vec<NodeEntry>,
    node_slots: HashMap<NodeId, u32>,
    node_names: BTreeSet<(String, u32)>,
    jobs: BTreeMap<String, BTreeMap<String, JobEntry>>,
    allocs: Vec<Stored>,
    alloc_node: Vec<u32>,
    free_alloc_slots: Vec<u32>,
    ids_uuid: HashMap<u128, u32, BuildUuidHasher>,
    ids_other: HashMap<AllocId, u32>,
    specs: Vec<Option<SpecEntry>>,
    free_specs: Vec<u32>,
    spec_index: HashMap<(String, String, u64, String), u32>,
    last_spec: Option<u32>,
    /// The group specs full records share, per (namespace, job, version, group).
    shared_specs: SharedSpecs,
    used_index: BTreeSet<(u64, u32)>,
    empty_index: BTreeSet<(Reverse<u64>, u32)>,
    /// Per namespace: what its allocations hold (see [`crate::quota`]).
    pub(crate) ns_usage: BTreeMap<String, crate::quota::NsUsage>,
    /// Quotas the server set, per namespace.
    pub(crate) quotas: BTreeMap<String, taba_types::Quota>,
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
        self.nodes.push(NodeEntry {
            id: id.clone(),
            node: None,
            allocatable: Res::default(),
            used: Res::default(),
            holders: 0,
            allocs: BTreeSet::new(),
            live: LiveByPriority::default(),
            ports: HeldPorts::default(),
            shard: slot,
            indexed: None,
        });
        self.node_slots.insert(id.clone(), slot);
        slot
    }

    /// Insert or replace a node record.
    pub fn upsert_node(&mut self, node: Node) {
        let slot = self.node_slot_or_insert(&node.id);
        let renamed = self.nodes[slot as usize]
            .node
            .as_ref()
            .is_some_and(|old| old.name != node.name);
        if renamed {
            // Compact records take the node name from the node: keep the
            // stored name by storing them whole.
            let slots: Vec<u32> = self.nodes[slot as usize].allocs.iter().copied().collect();
            for a in slots {
                self.expand(a);
            }
        }
        let entry = &mut self.nodes[slot as usize];
        if let Some(old) = &entry.node {
            self.node_names.remove(&(old.name.clone(), slot));
        }
        self.node_names.insert((node.name.clone(), slot));
        entry.allocatable = Res::of(&node.allocatable());
        entry.node = Some(node);
        self.reindex(slot);
    }

    /// Forget a node (`taba node rm`, garbage collection). Its allocations
    /// stay (job history) but are stored whole, as they can no longer take
    /// the node's name from the node.
    pub fn remove_node(&mut self, id: &NodeId) {
        let Some(&slot) = self.node_slots.get(id) else {
            return;
        };
        let slots: Vec<u32> = self.nodes[slot as usize].allocs.iter().copied().collect();
        for a in slots {
            self.expand(a);
        }
        let entry = &mut self.nodes[slot as usize];
        if let Some(old) = entry.node.take() {
            self.node_names.remove(&(old.name, slot));
        }
        self.reindex(slot);
    }

    /// Split the nodes into `n` shards of alike capacity (nodes ranked by
    /// size, dealt out in turn), for workers that schedule concurrently on
    /// disjoint shards ([`crate::ScheduleOptions::node_shard`]). Without it
    /// a node's shard is its registration order modulo `n`.
    pub fn balance_shards(&mut self, n: u32) {
        let n = n.max(1);
        let mut order: Vec<(Reverse<u64>, u32)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, e)| (Reverse(e.allocatable.key()), i as u32))
            .collect();
        order.sort_unstable();
        for (rank, (_, slot)) in order.into_iter().enumerate() {
            self.nodes[slot as usize].shard = rank as u32 % n;
        }
    }

    /// The shard of a node (see [`ClusterState::balance_shards`]).
    pub fn node_shard(&self, id: &NodeId) -> Option<u32> {
        Some(self.nodes[*self.node_slots.get(id)? as usize].shard)
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

    fn alloc_slot_of(&self, id: &AllocId) -> Option<u32> {
        match parse_uuid(id.as_str()) {
            Some(u) => self.ids_uuid.get(&u).copied(),
            None => self.ids_other.get(id).copied(),
        }
    }

    /// Insert or replace an allocation, keeping per-node usage and the
    /// indexes right.
    pub fn upsert_alloc(&mut self, alloc: Allocation) {
        if let Some(slot) = self.alloc_slot_of(&alloc.id) {
            let same_place = {
                let (ns, job, node) = self.identity(slot);
                ns == alloc.namespace && job == alloc.job && *node == alloc.node_id
            };
            if same_place {
                self.account(slot, false);
                self.release(slot);
                self.allocs[slot as usize] = Stored::Vacant;
                self.store(slot, alloc);
                self.account(slot, true);
                return;
            }
            self.remove_slot(slot);
        }
        let node_slot = self.node_slot_or_insert(&alloc.node_id);
        let slot = match self.free_alloc_slots.pop() {
            Some(s) => s,
            None => {
                self.allocs.push(Stored::Vacant);
                self.alloc_node.push(0);
                (self.allocs.len() - 1) as u32
            }
        };
        match parse_uuid(alloc.id.as_str()) {
            Some(u) => self.ids_uuid.insert(u, slot),
            None => self.ids_other.insert(alloc.id.clone(), slot),
        };
        match self.jobs.get_mut(alloc.namespace.as_str()) {
            Some(m) => match m.get_mut(alloc.job.as_str()) {
                Some(e) => {
                    e.allocs.insert(slot);
                }
                None => {
                    m.entry(alloc.job.clone()).or_default().allocs.insert(slot);
                }
            },
            None => {
                self.jobs
                    .entry(alloc.namespace.clone())
                    .or_default()
                    .entry(alloc.job.clone())
                    .or_default()
                    .allocs
                    .insert(slot);
            }
        }
        self.nodes[node_slot as usize].allocs.insert(slot);
        self.alloc_node[slot as usize] = node_slot;
        self.store(slot, alloc);
        self.account(slot, true);
    }

    /// Insert allocations, reindexing each touched node once (the plan
    /// applier's fast path for placements). Records whose id exists already
    /// are upserted one by one.
    pub(crate) fn insert_many(&mut self, allocs: impl IntoIterator<Item = Allocation>) {
        let mut touched: Vec<u32> = Vec::new();
        let mut last_node: Option<u32> = None;
        let mut job_slots: Vec<u32> = Vec::new();
        let mut job_key: Option<(String, String)> = None;
        for a in allocs {
            let uuid = parse_uuid(a.id.as_str());
            let exists = match uuid {
                Some(u) => self.ids_uuid.contains_key(&u),
                None => self.ids_other.contains_key(&a.id),
            };
            if exists {
                self.upsert_alloc(a);
                continue;
            }
            let node_slot = match last_node {
                Some(n) if self.nodes[n as usize].id == a.node_id => n,
                _ => self.node_slot_or_insert(&a.node_id),
            };
            last_node = Some(node_slot);
            let slot = match self.free_alloc_slots.pop() {
                Some(s) => s,
                None => {
                    self.allocs.push(Stored::Vacant);
                    self.alloc_node.push(0);
                    (self.allocs.len() - 1) as u32
                }
            };
            match uuid {
                Some(u) => self.ids_uuid.insert(u, slot),
                None => self.ids_other.insert(a.id.clone(), slot),
            };
            let same_job = job_key
                .as_ref()
                .is_some_and(|(ns, job)| *ns == a.namespace && *job == a.job);
            if !same_job {
                self.link_job_slots(job_key.take(), &mut job_slots);
                job_key = Some((a.namespace.clone(), a.job.clone()));
            }
            job_slots.push(slot);
            self.nodes[node_slot as usize].allocs.insert(slot);
            self.alloc_node[slot as usize] = node_slot;
            self.store(slot, a);
            let live = self.live_priority(slot);
            if let Some(r) = self.holding(slot) {
                self.account_ports(slot, true);
                let e = &mut self.nodes[node_slot as usize];
                e.used.add(r);
                e.holders += 1;
                if let Some((p, system, r)) = live {
                    e.live.add(p, system, r);
                }
                if touched.last() != Some(&node_slot) {
                    touched.push(node_slot);
                }
                self.ns_account(slot, r, true);
            }
        }
        self.link_job_slots(job_key, &mut job_slots);
        touched.sort_unstable();
        touched.dedup();
        for n in touched {
            self.reindex(n);
        }
    }

    fn link_job_slots(&mut self, key: Option<(String, String)>, slots: &mut Vec<u32>) {
        if let Some((ns, job)) = key {
            self.jobs
                .entry(ns)
                .or_default()
                .entry(job)
                .or_default()
                .allocs
                .extend(slots.drain(..));
        }
    }

    /// Change an allocation in place through `f`.
    pub(crate) fn modify_alloc(&mut self, slot: u32, f: impl FnOnce(&mut Allocation)) {
        let id = self.id_of(slot);
        let (ns, job, node) = {
            let (ns, job, node) = self.identity(slot);
            (ns.to_string(), job.to_string(), node.clone())
        };
        let Some(mut a) = self.take(slot) else {
            return;
        };
        f(&mut a);
        if a.id == id && a.namespace == ns && a.job == job && a.node_id == node {
            self.store(slot, a);
            self.account(slot, true);
        } else {
            // Identity changed: unlink the old record, insert the new one.
            self.unlink(slot, &id, &ns, &job);
            self.upsert_alloc(a);
        }
    }

    fn id_of(&self, slot: u32) -> AllocId {
        match &self.allocs[slot as usize] {
            Stored::Full(a) => a.id.clone(),
            Stored::Compact(c) => AllocId(format_uuid(c.id)),
            Stored::Vacant => AllocId(String::new()),
        }
    }

    /// The namespace, job and node of a stored allocation.
    fn identity(&self, slot: u32) -> (&str, &str, &NodeId) {
        let node = &self.nodes[self.alloc_node[slot as usize] as usize].id;
        match &self.allocs[slot as usize] {
            Stored::Full(a) => (&a.namespace, &a.job, node),
            Stored::Compact(c) => {
                let sp = self.spec(c.spec);
                (&sp.namespace, &sp.job, node)
            }
            Stored::Vacant => ("", "", node),
        }
    }

    fn spec(&self, id: u32) -> &SpecEntry {
        self.specs[id as usize]
            .as_ref()
            .expect("compact allocations hold a reference to their spec")
    }

    /// Resources the slot's allocation holds on its node, if any.
    fn holding(&self, slot: u32) -> Option<Res> {
        match &self.allocs[slot as usize] {
            Stored::Full(a) => a.holds_resources().then(|| Res::of(&a.resources)),
            Stored::Compact(c) => (!c.client.is_terminal()).then(|| self.spec(c.spec).res),
            Stored::Vacant => None,
        }
    }

    /// Priority, system job or not, and resources of the slot's allocation
    /// if it is live (desired to run, not terminal): what preemption may evict.
    fn live_priority(&self, slot: u32) -> Option<(u32, bool, Res)> {
        match &self.allocs[slot as usize] {
            Stored::Full(a) => a.is_live().then(|| {
                (
                    a.priority,
                    a.job_type == JobType::System,
                    Res::of(&a.resources),
                )
            }),
            Stored::Compact(c) => (c.desired == DesiredStatus::Run && !c.client.is_terminal())
                .then(|| {
                    let sp = self.spec(c.spec);
                    (c.priority, sp.job_type == JobType::System, sp.res)
                }),
            Stored::Vacant => None,
        }
    }

    /// Add (`add`) or remove the slot's contribution to its node's usage.
    fn account(&mut self, slot: u32, add: bool) {
        let Some(r) = self.holding(slot) else {
            return;
        };
        let live = self.live_priority(slot);
        self.account_ports(slot, add);
        self.ns_account(slot, r, add);
        let node_slot = self.alloc_node[slot as usize];
        let e = &mut self.nodes[node_slot as usize];
        if add {
            e.used.add(r);
            e.holders += 1;
        } else {
            e.used.sub(r);
            e.holders = e.holders.saturating_sub(1);
        }
        if let Some((p, system, r)) = live {
            if add {
                e.live.add(p, system, r);
            } else {
                e.live.remove(p, system, r);
            }
        }
        self.reindex(node_slot);
    }

    /// Add or remove the host ports of the slot's allocation (which holds
    /// resources) on its node.
    fn account_ports(&mut self, slot: u32, add: bool) {
        let ports: &[AllocatedPort] = match &self.allocs[slot as usize] {
            Stored::Full(a) => &a.ports,
            Stored::Compact(c) => &c.ports,
            Stored::Vacant => return,
        };
        if !ports.is_empty() {
            let held = &mut self.nodes[self.alloc_node[slot as usize] as usize].ports;
            if add {
                held.add(ports);
            } else {
                held.remove(ports);
            }
        }
    }

    /// Add (`add`) or remove `r`, held by the slot's allocation, to or from
    /// its namespace's usage.
    fn ns_account(&mut self, slot: u32, r: Res, add: bool) {
        let ns: &str = match &self.allocs[slot as usize] {
            Stored::Full(a) => &a.namespace,
            Stored::Compact(c) => match &self.specs[c.spec as usize] {
                Some(sp) => &sp.namespace,
                None => return,
            },
            Stored::Vacant => return,
        };
        match self.ns_usage.get_mut(ns) {
            Some(u) => u.change(r, add),
            None if add => {
                let mut u = crate::quota::NsUsage::default();
                u.change(r, true);
                self.ns_usage.insert(ns.to_string(), u);
            }
            None => {}
        }
    }

    /// Drop the slot's reference to its shared spec (before it is overwritten).
    fn release(&mut self, slot: u32) {
        if let Stored::Compact(c) = &self.allocs[slot as usize] {
            let id = c.spec;
            let gone = {
                let sp = self.specs[id as usize].as_mut().expect("referenced spec");
                sp.refs -= 1;
                sp.refs == 0
            };
            if gone {
                let sp = self.specs[id as usize].take().expect("referenced spec");
                self.spec_index.remove(&(
                    sp.namespace,
                    sp.job,
                    sp.version,
                    sp.group_spec.name.clone(),
                ));
                self.free_specs.push(id);
                if self.last_spec == Some(id) {
                    self.last_spec = None;
                }
            }
        }
    }

    /// Take the record out of a linked slot (usage removed, slot left vacant).
    fn take(&mut self, slot: u32) -> Option<Allocation> {
        self.account(slot, false);
        let node_slot = self.alloc_node[slot as usize];
        let built = match &self.allocs[slot as usize] {
            Stored::Compact(c) if c.cache.get().is_none() => Some(self.materialize(c, node_slot)),
            _ => None,
        };
        self.release(slot);
        match std::mem::replace(&mut self.allocs[slot as usize], Stored::Vacant) {
            Stored::Vacant => None,
            Stored::Full(a) => Some(*a),
            Stored::Compact(mut c) => built.or_else(|| c.cache.take().map(|a| *a)),
        }
    }

    /// Store the record in `slot`, compactly when possible.
    fn store(&mut self, slot: u32, mut a: Allocation) {
        let node_slot = self.alloc_node[slot as usize];
        self.allocs[slot as usize] = match self.compact(&a, node_slot) {
            Some(c) => Stored::Compact(c),
            None => {
                self.shared_specs.share(&mut a);
                Stored::Full(Box::new(a))
            }
        };
    }

    /// Store a compact record whole (e.g. before its node is renamed).
    fn expand(&mut self, slot: u32) {
        if matches!(self.allocs[slot as usize], Stored::Compact(_)) {
            if let Some(a) = self.take(slot) {
                self.allocs[slot as usize] = Stored::Full(Box::new(a));
                self.account(slot, true);
            }
        }
    }

    fn compact(&mut self, a: &Allocation, node_slot: u32) -> Option<CompactAlloc> {
        if !(a.desired_description.is_empty()
            && a.client_description.is_empty()
            && a.usage.is_none()
            && a.events.is_empty()
            && a.previous_alloc.is_none()
            && a.reschedule_times.is_empty()
            && !a.replaced
            && a.preempted_allocs.is_empty()
            && a.preempted_by.is_none()
            && a.migrate.is_none()
            && a.live_migration.is_none()
            && a.migration_status.is_none()
            && a.events.is_empty())
        {
            return None;
        }
        let id = parse_uuid(a.id.as_str())?;
        let eval = parse_uuid(a.eval_id.as_str())?;
        let node = self.nodes[node_slot as usize].node.as_ref()?;
        if node.name != a.node_name || node.id != a.node_id || !is_standard_name(a) {
            return None;
        }
        let spec = self.intern_spec(a)?;
        Some(CompactAlloc {
            id,
            eval,
            spec,
            index: a.index,
            priority: a.priority,
            desired: a.desired_status,
            client: a.client_status,
            create_time: a.create_time,
            modify_time: a.modify_time,
            create_index: a.create_index,
            modify_index: a.modify_index,
            ports: a.ports.clone().into_boxed_slice(),
            tasks: a
                .task_states
                .iter()
                .map(|(name, t)| (name.clone(), t.clone()))
                .collect(),
            cache: OnceLock::new(),
        })
    }

    /// The shared spec entry for `a`'s (job, version, group), if `a` matches
    /// it exactly (or a new one).
    fn intern_spec(&mut self, a: &Allocation) -> Option<u32> {
        let matches = |sp: &SpecEntry| {
            sp.version == a.job_version
                && sp.job == a.job
                && sp.namespace == a.namespace
                && sp.group_spec.name == a.group
        };
        let found = match self.last_spec {
            Some(id) if self.specs[id as usize].as_ref().is_some_and(matches) => Some(id),
            _ => self
                .spec_index
                .get(&(
                    a.namespace.clone(),
                    a.job.clone(),
                    a.job_version,
                    a.group.clone(),
                ))
                .copied(),
        };
        let id = match found {
            Some(id) => {
                let sp = self.spec(id);
                if sp.job_type != a.job_type
                    || sp.resources != a.resources
                    || sp.group_spec != a.group_spec
                {
                    return None;
                }
                id
            }
            None => {
                let entry = SpecEntry {
                    namespace: a.namespace.clone(),
                    job: a.job.clone(),
                    version: a.job_version,
                    job_type: a.job_type,
                    group_spec: a.group_spec.clone(),
                    res: Res::of(&a.resources),
                    resources: a.resources.clone(),
                    refs: 0,
                };
                let id = match self.free_specs.pop() {
                    Some(id) => {
                        self.specs[id as usize] = Some(entry);
                        id
                    }
                    None => {
                        self.specs.push(Some(entry));
                        (self.specs.len() - 1) as u32
                    }
                };
                self.spec_index.insert(
                    (
                        a.namespace.clone(),
                        a.job.clone(),
                        a.job_version,
                        a.group.clone(),
                    ),
                    id,
                );
                id
            }
        };
        self.specs[id as usize].as_mut().expect("just found").refs += 1;
        self.last_spec = Some(id);
        Some(id)
    }

    fn materialize(&self, c: &CompactAlloc, node_slot: u32) -> Allocation {
        let sp = self.spec(c.spec);
        let node = &self.nodes[node_slot as usize];
        let node_name = node
            .node
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        Allocation {
            id: AllocId(format_uuid(c.id)),
            namespace: sp.namespace.clone(),
            job: sp.job.clone(),
            job_version: sp.version,
            job_type: sp.job_type,
            priority: c.priority,
            group: sp.group_spec.name.clone(),
            name: format!("{}.{}[{}]", sp.job, sp.group_spec.name, c.index),
            index: c.index,
            group_spec: sp.group_spec.clone(),
            node_id: node.id.clone(),
            node_name,
            resources: sp.resources.clone(),
            ports: c.ports.to_vec(),
            desired_status: c.desired,
            desired_description: String::new(),
            client_status: c.client,
            client_description: String::new(),
            task_states: c.tasks.iter().cloned().collect(),
            usage: None,
            events: Vec::new(),
            eval_id: EvalId(format_uuid(c.eval)),
            previous_alloc: None,
            reschedule_times: Vec::new(),
            replaced: false,
            preempted_allocs: Vec::new(),
            preempted_by: None,
            migrate: None,
            live_migration: None,
            migration_status: None,
            create_time: c.create_time,
            modify_time: c.modify_time,
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }

    /// Remove a (vacated) slot from the id map, its job and its node; free it.
    fn unlink(&mut self, slot: u32, id: &AllocId, ns: &str, job: &str) {
        match parse_uuid(id.as_str()) {
            Some(u) => self.ids_uuid.remove(&u),
            None => self.ids_other.remove(id),
        };
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

    /// Remove a linked slot completely.
    fn remove_slot(&mut self, slot: u32) {
        let id = self.id_of(slot);
        let (ns, job) = {
            let (ns, job, _) = self.identity(slot);
            (ns.to_string(), job.to_string())
        };
        self.account(slot, false);
        self.release(slot);
        self.allocs[slot as usize] = Stored::Vacant;
        self.unlink(slot, &id, &ns, &job);
    }

    fn get(&self, slot: u32) -> Option<&Allocation> {
        match &self.allocs[slot as usize] {
            Stored::Vacant => None,
            Stored::Full(a) => Some(a),
            Stored::Compact(c) => Some(
                c.cache
                    .get_or_init(|| Box::new(self.materialize(c, self.alloc_node[slot as usize]))),
            ),
        }
    }

    /// An allocation by id.
    pub fn alloc(&self, id: &AllocId) -> Option<&Allocation> {
        self.get(self.alloc_slot_of(id)?)
    }

    /// Forget an allocation.
    pub fn remove_alloc(&mut self, id: &AllocId) {
        if let Some(slot) = self.alloc_slot_of(id) {
            self.remove_slot(slot);
        }
    }

    /// The allocations of one job (every version, every status).
    pub fn allocs_for_job(&self, namespace: &str, job: &str) -> impl Iterator<Item = &Allocation> {
        self.jobs
            .get(namespace)
            .and_then(|m| m.get(job))
            .into_iter()
            .flat_map(|e| e.allocs.iter())
            .filter_map(|s| self.get(*s))
    }

    /// The allocations placed on one node.
    pub fn allocs_for_node(&self, node: &NodeId) -> impl Iterator<Item = &Allocation> {
        self.node_slots
            .get(node)
            .into_iter()
            .flat_map(|s| self.nodes[*s as usize].allocs.iter())
            .filter_map(|s| self.get(*s))
    }

    /// The record in `slot` without keeping the full form of a compact
    /// record that was not read before (built for the caller and dropped).
    fn get_transient(&self, slot: u32) -> Option<Cow<'_, Allocation>> {
        match &self.allocs[slot as usize] {
            Stored::Vacant => None,
            Stored::Full(a) => Some(Cow::Borrowed(a)),
            Stored::Compact(c) => Some(match c.cache.get() {
                Some(a) => Cow::Borrowed(a),
                None => Cow::Owned(self.materialize(c, self.alloc_node[slot as usize])),
            }),
        }
    }

    /// The few fields of the record in `slot` that hot paths read, without
    /// building a compact record's full form.
    fn brief(&self, slot: u32) -> Option<AllocBrief<'_>> {
        match &self.allocs[slot as usize] {
            Stored::Vacant => None,
            Stored::Full(a) => Some(AllocBrief {
                job_version: a.job_version,
                desired_status: a.desired_status,
                client_status: a.client_status,
                migrating: a.migrate.is_some(),
                node_id: &a.node_id,
            }),
            Stored::Compact(c) => Some(AllocBrief {
                job_version: self.spec(c.spec).version,
                desired_status: c.desired,
                client_status: c.client,
                migrating: false,
                node_id: &self.nodes[self.alloc_node[slot as usize] as usize].id,
            }),
        }
    }

    /// [`AllocBrief`]s of one job's allocations (every version, every
    /// status): for hot paths such as each status report, which used to
    /// build (and keep) the full form of every allocation of the job.
    pub fn alloc_briefs_for_job(
        &self,
        namespace: &str,
        job: &str,
    ) -> impl Iterator<Item = AllocBrief<'_>> {
        self.jobs
            .get(namespace)
            .and_then(|m| m.get(job))
            .into_iter()
            .flat_map(|e| e.allocs.iter())
            .filter_map(|s| self.brief(*s))
    }

    /// [`AllocBrief`]s of the allocations placed on one node.
    pub fn alloc_briefs_for_node(&self, node: &NodeId) -> impl Iterator<Item = AllocBrief<'_>> {
        self.node_slots
            .get(node)
            .into_iter()
            .flat_map(|s| self.nodes[*s as usize].allocs.iter())
            .filter_map(|s| self.brief(*s))
    }

    /// [`Self::allocs_for_node`] for hot paths (each blocking query of an
    /// agent): compact records are built for the caller, not kept. With
    /// 100,000 running allocations, kept full forms were most of a server's
    /// memory.
    pub fn allocs_for_node_transient(
        &self,
        node: &NodeId,
    ) -> impl Iterator<Item = Cow<'_, Allocation>> {
        self.node_slots
            .get(node)
            .into_iter()
            .flat_map(|s| self.nodes[*s as usize].allocs.iter())
            .filter_map(|s| self.get_transient(*s))
    }

    /// The sources of live migrations in progress. Compact records never
    /// carry a migration, so only full ones are looked at: cheap enough for
    /// a check every second on a large cluster.
    pub fn live_migration_sources(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.iter().filter_map(|s| match s {
            Stored::Full(a) if a.is_migration_source() => Some(&**a),
            _ => None,
        })
    }

    /// Every allocation.
    pub fn allocs(&self) -> impl Iterator<Item = &Allocation> {
        (0..self.allocs.len() as u32).filter_map(|s| self.get(s))
    }

    /// Visit every allocation without keeping the full form of compact
    /// records (which [`Self::allocs`] builds once and keeps): for one pass
    /// over millions of records.
    pub fn for_each_alloc(&self, mut f: impl FnMut(&Allocation)) {
        for slot in 0..self.allocs.len() as u32 {
            if let Some(a) = self.get_transient(slot) {
                f(&a);
            }
        }
    }

    /// Number of allocations kept.
    pub fn alloc_count(&self) -> usize {
        self.ids_uuid.len() + self.ids_other.len()
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
        self.alloc_slot_of(id)
    }
    /// The id of the allocation in a slot.
    pub(crate) fn alloc_id_at(&self, slot: u32) -> AllocId {
        self.id_of(slot)
    }
    /// A key that orders the allocation's id like the id string, cheaply.
    pub(crate) fn alloc_id_key(&self, slot: u32) -> IdKey {
        match &self.allocs[slot as usize] {
            Stored::Compact(c) => IdKey::Uuid(c.id),
            Stored::Full(a) => match parse_uuid(a.id.as_str()) {
                Some(u) => IdKey::Uuid(u),
                None => IdKey::Other(a.id.clone()),
            },
            Stored::Vacant => IdKey::Other(AllocId(String::new())),
        }
    }
    /// What preemption needs of a live allocation, without building the
    /// full record; `None` when the slot's allocation is not live.
    pub(crate) fn live_view(&self, slot: u32) -> Option<LiveView<'_>> {
        let (priority, system, res) = self.live_priority(slot)?;
        let (namespace, job, _) = self.identity(slot);
        Some(LiveView {
            namespace,
            job,
            priority,
            system,
            res,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{alloc_on, node};
    use taba_types::{ClientStatus, DesiredStatus, EvalId};

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

    /// A record as the scheduler places it: stored compactly.
    fn compactable(s: &ClusterState, index: u32) -> Allocation {
        let mut a = alloc_on(s, "web", index, "n1", 100, 64);
        a.id = AllocId(crate::ids::IdStream::new("a", u64::from(index)).next_uuid());
        a.eval_id = EvalId(crate::ids::IdStream::new("e", 0).next_uuid());
        a.client_status = ClientStatus::Pending;
        a
    }

    #[test]
    fn full_records_of_one_job_version_share_one_group_spec() {
        let mut s = ClusterState::new();
        s.upsert_node(node("n1", 4000, 4096));
        let full = |s: &ClusterState, i: u32| {
            // As decoded from the store or an agent's report: a copy of its own.
            let mut a = compactable(s, i);
            a.client_status = ClientStatus::Running;
            a.client_description = "started".into();
            a.group_spec = Arc::new((*a.group_spec).clone());
            a
        };
        let (a, b) = (full(&s, 0), full(&s, 1));
        assert!(!Arc::ptr_eq(&a.group_spec, &b.group_spec));
        s.upsert_alloc(a.clone());
        s.upsert_alloc(b.clone());
        assert!(matches!(s.allocs[0], Stored::Full(_)));
        let (ga, gb) = (
            &s.alloc(&a.id).unwrap().group_spec,
            &s.alloc(&b.id).unwrap().group_spec,
        );
        assert!(Arc::ptr_eq(ga, gb), "one copy for both");
        assert_eq!(s.alloc(&b.id), Some(&b), "the record reads back exactly");
        // Another version's spec, or a spec that differs, is not shared.
        let mut c = full(&s, 2);
        c.job_version = 1;
        Arc::make_mut(&mut c.group_spec).tasks[0].name = "other".into();
        s.upsert_alloc(c.clone());
        let gc = &s.alloc(&c.id).unwrap().group_spec;
        assert!(!Arc::ptr_eq(gc, &s.alloc(&a.id).unwrap().group_spec));
        assert_eq!(s.alloc(&c.id), Some(&c));
        let mut d = full(&s, 3);
        Arc::make_mut(&mut d.group_spec).tasks[0].name = "changed".into();
        s.upsert_alloc(d.clone());
        assert_eq!(
            s.alloc(&d.id),
            Some(&d),
            "a differing spec is kept as it is"
        );
    }

    #[test]
    fn compact_records_read_back_exactly() {
        let mut s = ClusterState::new();
        s.upsert_node(node("n1", 4000, 4096));
        let a = compactable(&s, 0);
        let b = compactable(&s, 1);
        s.upsert_alloc(a.clone());
        s.upsert_alloc(b.clone());
        assert!(matches!(s.allocs[0], Stored::Compact(_)));
        assert_eq!(s.specs.iter().flatten().count(), 1, "one shared spec");
        assert_eq!(s.alloc(&a.id), Some(&a));
        assert_eq!(s.allocs_for_job("default", "web").count(), 2);
        assert_eq!(s.node_used(&a.node_id).cpu, 200);
        // A change the compact form cannot hold: stored whole, still exact.
        let mut a2 = a.clone();
        a2.client_status = ClientStatus::Running;
        a2.client_description = "started".into();
        s.upsert_alloc(a2.clone());
        assert!(matches!(s.allocs[0], Stored::Full(_)));
        assert_eq!(s.alloc(&a.id), Some(&a2));
        // Running with task states, as agents report it: still compact.
        let mut a3 = a.clone();
        a3.client_status = ClientStatus::Running;
        let mut t = taba_types::TaskState {
            state: taba_types::TaskStatus::Running,
            pid: Some(42),
            started_at: Some(7),
            ..Default::default()
        };
        t.push_event(7, "Started", "task started (pid 42)");
        a3.task_states.insert("web".into(), t);
        a3.task_states.insert("log".into(), Default::default());
        s.upsert_alloc(a3.clone());
        assert!(matches!(s.allocs[0], Stored::Compact(_)));
        assert_eq!(s.alloc(&a.id), Some(&a3));
        assert_eq!(
            s.allocs_for_node_transient(&a.node_id)
                .find(|x| x.id == a.id)
                .as_deref(),
            Some(&a3)
        );
        s.upsert_alloc(a2.clone());
        // Stop through the applier's path keeps the rest.
        let slot = s.alloc_slot(&b.id).unwrap();
        s.modify_alloc(slot, |x| x.desired_status = DesiredStatus::Stop);
        let mut b2 = b.clone();
        b2.desired_status = DesiredStatus::Stop;
        assert_eq!(s.alloc(&b.id), Some(&b2));
        // Renaming the node keeps the stored node name.
        let mut n = s.node_by_name("n1").unwrap().clone();
        n.name = "renamed".into();
        s.upsert_node(n);
        assert_eq!(s.alloc(&b.id), Some(&b2));
        assert_eq!(s.node_used(&a.node_id).cpu, 200);
        s.remove_alloc(&a.id);
        s.remove_alloc(&b.id);
        assert_eq!(s.alloc_count(), 0);
        assert_eq!(s.specs.iter().flatten().count(), 0, "specs are freed");
        assert_eq!(s.node_used(&a.node_id).cpu, 0);
    }

    #[test]
    fn hot_path_reads_do_not_keep_full_forms_of_compact_records() {
        let mut s = ClusterState::new();
        s.upsert_node(node("n1", 4000, 4096));
        let a = compactable(&s, 0);
        s.upsert_alloc(a.clone());
        let slot = s.alloc_slot(&a.id).unwrap() as usize;
        let cached = |s: &ClusterState| match &s.allocs[slot] {
            Stored::Compact(c) => c.cache.get().is_some(),
            _ => panic!("stored compactly"),
        };
        let read: Vec<Allocation> = s
            .allocs_for_node_transient(&a.node_id)
            .map(std::borrow::Cow::into_owned)
            .collect();
        assert_eq!(read, vec![a.clone()]);
        let briefs: Vec<_> = s.alloc_briefs_for_job("default", "web").collect();
        assert_eq!(briefs.len(), 1);
        assert!(briefs[0].is_live() && briefs[0].job_version == a.job_version);
        assert!(!cached(&s), "transient reads and briefs keep nothing");
        // An ordinary read keeps the full form (API reads, the scheduler).
        assert_eq!(s.alloc(&a.id), Some(&a));
        assert!(cached(&s));
    }

    #[test]
    fn compact_records_hold_host_ports() {
        let mut s = ClusterState::new();
        s.upsert_node(node("n1", 4000, 4096));
        let mut p = compactable(&s, 2);
        p.ports = vec![taba_types::AllocatedPort {
            label: "http".into(),
            value: 20001,
            dynamic: true,
        }];
        s.upsert_alloc(p.clone());
        let slot = s.alloc_slot(&p.id).unwrap();
        assert!(matches!(s.allocs[slot as usize], Stored::Compact(_)));
        assert_eq!(s.alloc(&p.id), Some(&p));
        let node_slot = s.alloc_node[slot as usize] as usize;
        assert_eq!(s.nodes[node_slot].ports.count(20001), 1);
        s.remove_alloc(&p.id);
        assert_eq!(s.nodes[node_slot].ports.count(20001), 0);
        assert_eq!(s.node_used(&p.node_id).cpu, 0);
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
