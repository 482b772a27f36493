//! The server's state and every change to it.
//!
//! All records live in the [`Store`] and, for reads and scheduling, in one
//! in-memory [`ClusterState`] (plus the evaluations) behind a lock. Every
//! change follows one order: take the per-job/per-node write locks, compute
//! the new records from memory, write them through the store (durable), then
//! apply exactly those records to memory, then wake blocking queries and the
//! evaluation broker. A reply is sent only after that, so an acknowledged
//! change survives a crash.

use crate::broker::{now_ms, Broker};
use crate::config::ServerConfig;
use crate::locks::{job_key, node_key, node_name_key, KeyLocks};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use taba_image::ImageStore;
use taba_scheduler::ClusterState;
use taba_store::{Store, StoreError, Table, Txn};
use taba_types::api::{
    AllocListEntry, EvalSummary, JobListEntry, JobStatusResponse, RegisterJobResponse,
};
use taba_types::wire::AllocUpdate;
use taba_types::{
    AllocId, Allocation, ClientStatus, DesiredStatus, EvalId, EvalStatus, EvalTrigger, Evaluation,
    Job, JobSpec, JobStatus, JobType, MigrateRequest, Namespace, Node, NodeId, NodeStatus,
    NodeUsage, Plan, SchedulerOutcome,
};
use tokio::sync::watch;

mod acl;
mod drain;
mod migration;
mod namespaces;
mod nodes;
mod replica;

pub use nodes::NodeAction;

pub use acl::NewToken;
pub use drain::DRAIN_REASON;

/// Why a change or lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such record.
    #[error("{0}")]
    NotFound(String),
    /// An id prefix matches several records.
    #[error("{0}")]
    Ambiguous(String),
    /// The input cannot be accepted.
    #[error("{field}: {message}")]
    Invalid {
        /// Field path.
        field: String,
        /// Reason.
        message: String,
    },
    /// The caller may not do this (e.g. an unknown node id).
    #[error("{field}: {message}")]
    Forbidden {
        /// Field path.
        field: String,
        /// Reason.
        message: String,
    },
    /// The store failed.
    #[error("store write failed")]
    Store(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("cannot decode stored {table} record {key:?}")]
    Decode {
        /// Table.
        table: Table,
        /// Key.
        key: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The change conflicts with the state (e.g. removing a namespace in use).
    #[error("{0}")]
    Conflict(String),
    /// A check-and-set failed: the record's modify index is not the one given.
    #[error("{field}: {message}")]
    IndexMismatch {
        /// Field path.
        field: String,
        /// Reason.
        message: String,
    },
    /// A unique value is held by another record (a node name).
    #[error("{field}: {message}")]
    Taken {
        /// Field path.
        field: String,
        /// Reason.
        message: String,
    },
    /// ACL records could not be loaded.
    #[error("cannot load ACL records")]
    Acl(#[from] crate::acl::AclLoadError),
}

/// Key of a job record.
pub fn job_record_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Key of a job version record.
pub fn version_record_key(namespace: &str, name: &str, version: u64) -> String {
    format!("{namespace}/{name}/{version:020}")
}

/// Shared server state.
pub struct ServerState {
    /// Settings.
    pub config: ServerConfig,
    /// Durable records.
    pub store: Arc<dyn Store>,
    /// Container images.
    pub images: Arc<ImageStore>,
    /// Registries images are pulled from (settings, logins in `<data_dir>/registry-auth.json`).
    pub registries: Arc<taba_registry::Registries>,
    cluster: RwLock<ClusterState>,
    evals: RwLock<HashMap<EvalId, Evaluation>>,
    heartbeats: Mutex<HashMap<NodeId, Instant>>,
    /// Per allocation, the index of its last server-side change (placement,
    /// desired status, job version): what an agent's blocking query waits
    /// on, so the agent's own status reports do not wake it. In memory only;
    /// after a restart it starts at each allocation's modify index.
    alloc_server_index: Mutex<HashMap<AllocId, u64>>,
    /// Per node with a blocking query waiting (or once waited), the index
    /// of the last server-side change to its allocations or its record:
    /// a change wakes only the queries of the nodes it touches, not every
    /// agent's (see [`Self::watch_node`]).
    node_changes: Mutex<HashMap<NodeId, watch::Sender<u64>>>,
    node_usage: Mutex<HashMap<NodeId, NodeUsage>>,
    locks: KeyLocks,
    /// Namespaces other than the implicit `default` (unless it was set).
    /// Registrations hold it shared while they commit, so a namespace
    /// cannot be removed under a job being registered in it.
    namespaces: tokio::sync::RwLock<BTreeMap<String, Namespace>>,
    /// ACL tokens and policies.
    pub acl: crate::acl::AclState,
    /// Pending evaluations.
    pub broker: Broker,
    /// Wakes the drainer early (a drain started).
    pub drain_wake: tokio::sync::Notify,
    /// Node credentials, join tokens, revoked certificates.
    pub credentials: crate::credentials::Credentials,
    /// Prometheus metrics (`GET /v1/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Events of committed changes (`GET /v1/event/stream`).
    pub events: Arc<crate::events::EventBroker>,
    index: watch::Sender<u64>,
    /// Set when the server shuts down.
    pub shutdown: watch::Sender<bool>,
}

impl Drop for ServerState {
    /// A replaced state (a follower's copy loaded anew, a leader's term over)
    /// ends the event streams that read it.
    fn drop(&mut self) {
        self.events.close(
            "state_replaced",
            "this server's state was replaced (leadership changed); reconnect",
        );
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    table: Table,
    rec: &taba_store::Record,
) -> Result<T, StateError> {
    rec.decode().map_err(|source| StateError::Decode {
        table,
        key: rec.key.clone(),
        source,
    })
}

impl ServerState {
    /// Load every table into memory.
    pub fn load(
        config: ServerConfig,
        store: Arc<dyn Store>,
        images: Arc<ImageStore>,
    ) -> Result<Self, StateError> {
        let mut cluster = ClusterState::new();
        for rec in store.scan(Table::Nodes, "")? {
            let mut n: Node = decode(Table::Nodes, &rec)?;
            n.create_index = rec.create_index;
            n.modify_index = rec.mod_index;
            cluster.upsert_node(n);
        }
        for rec in store.scan(Table::Jobs, "")? {
            let mut j: Job = decode(Table::Jobs, &rec)?;
            if j.create_index == 0 {
                j.create_index = rec.create_index;
            }
            j.modify_index = rec.mod_index;
            cluster.upsert_job(j);
        }
        for rec in store.scan(Table::Allocs, "")? {
            let mut a: Allocation = decode(Table::Allocs, &rec)?;
            a.create_index = rec.create_index;
            a.modify_index = rec.mod_index;
            cluster.upsert_alloc(a);
        }
        let mut namespaces = BTreeMap::new();
        for rec in store.scan(Table::Namespaces, "")? {
            let ns: Namespace = decode(Table::Namespaces, &rec)?;
            cluster.set_quota(&ns.name, ns.quota.clone());
            namespaces.insert(ns.name.clone(), ns);
        }
        let alloc_server_index: HashMap<AllocId, u64> = cluster
            .allocs()
            .map(|a| (a.id.clone(), a.modify_index))
            .collect();
        let mut evals = HashMap::new();
        for rec in store.scan(Table::Evals, "")? {
            let mut e: Evaluation = decode(Table::Evals, &rec)?;
            e.create_index = rec.create_index;
            e.modify_index = rec.mod_index;
            evals.insert(e.id.clone(), e);
        }
        let acl = crate::acl::AclState::load(&*store, config.acl.enabled)?;
        let index = store.index()?;
        cluster.set_index(index);
        let broker = Broker::new();
        let mut pending: Vec<&Evaluation> = evals.values().collect();
        pending.sort_by_key(|e| e.create_index);
        for e in pending {
            match e.status {
                EvalStatus::Pending => broker.enqueue(e.clone()),
                EvalStatus::Blocked => broker.block(e.clone()),
                _ => {}
            }
        }
        let credentials =
            crate::credentials::Credentials::load(store.clone()).map_err(|e| match e {
                crate::credentials::CredentialError::Store(s) => StateError::Store(s),
                other => StateError::Conflict(other.to_string()),
            })?;
        let registries = taba_registry::Registries::new(
            config.registry.clone(),
            config.data_dir.join("registry-auth.json"),
        )
        .map_err(|e| StateError::Invalid {
            field: "registry".into(),
            message: taba_types::error_chain(&e),
        })?;
        let events = Arc::new(crate::events::EventBroker::new(
            config.events.clone(),
            index,
        ));
        Ok(Self {
            config,
            store,
            images,
            registries: Arc::new(registries),
            credentials,
            metrics: crate::metrics::Metrics::new(),
            cluster: RwLock::new(cluster),
            evals: RwLock::new(evals),
            heartbeats: Mutex::new(HashMap::new()),
            alloc_server_index: Mutex::new(alloc_server_index),
            node_changes: Mutex::new(HashMap::new()),
            node_usage: Mutex::new(HashMap::new()),
            locks: KeyLocks::default(),
            namespaces: tokio::sync::RwLock::new(namespaces),
            acl,
            broker,
            drain_wake: tokio::sync::Notify::new(),
            events,
            index: watch::channel(index).0,
            shutdown: watch::channel(false).0,
        })
    }

    /// Read access to the cluster state.
    pub fn cluster(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.cluster.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cluster_mut(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.cluster.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every evaluation kept, in the namespaces `visible` accepts.
    pub fn list_evals(&self, visible: impl Fn(&str) -> bool) -> Vec<Evaluation> {
        self.evals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| visible(&e.namespace))
            .cloned()
            .collect()
    }

    /// An evaluation by id.
    pub fn eval(&self, id: &str) -> Option<Evaluation> {
        self.evals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&EvalId::from(id))
            .cloned()
    }

    /// The newest `limit` evaluations whose namespace `visible` accepts,
    /// newest first (the web UI's list).
    pub fn recent_evals(&self, visible: impl Fn(&str) -> bool, limit: usize) -> Vec<Evaluation> {
        let evals = self.evals.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<&Evaluation> = evals.values().filter(|e| visible(&e.namespace)).collect();
        v.sort_by_key(|e| std::cmp::Reverse((e.create_index, e.create_time)));
        v.into_iter().take(limit).cloned().collect()
    }

    /// The last index applied to memory.
    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// Subscribe to index changes (blocking queries).
    pub fn watch_index(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// Subscribe to server-side changes of one node's allocations or
    /// record (its agent's blocking query). The receiver sees a change for
    /// every commit that touches the node, and an error once the node is
    /// removed.
    pub fn watch_node(&self, id: &NodeId) -> watch::Receiver<u64> {
        self.node_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wake the blocking queries of `nodes` (changed at `index`).
    fn wake_nodes(&self, nodes: &HashSet<NodeId>, index: u64) {
        if nodes.is_empty() {
            return;
        }
        let m = self.node_changes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes {
            if let Some(tx) = m.get(n) {
                tx.send_modify(|i| *i = (*i).max(index));
            }
        }
    }

    /// Forget a removed node's watchers: their queries end now.
    fn forget_node_watch(&self, id: &NodeId) {
        self.node_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Write `txn` through the store (on a blocking thread); returns its index.
    async fn commit(&self, txn: Txn) -> Result<u64, StateError> {
        if *self.shutdown.borrow() {
            return Err(StateError::ShuttingDown);
        }
        let store = self.store.clone();
        let changes = self.event_changes(txn.ops.iter().map(|op| match op {
            taba_store::Op::Put { table, key, value } => (*table, key.as_str(), Some(&value[..])),
            taba_store::Op::Delete { table, key } => (*table, key.as_str(), None),
        }));
        let ticket = self.events.begin();
        let started = std::time::Instant::now();
        let index = tokio::task::spawn_blocking(move || store.apply(txn))
            .await
            .map_err(|_| StateError::ShuttingDown)?
            .map_err(StateError::Store)?;
        self.metrics.store_commit(started.elapsed());
        self.events.publish(ticket, index, changes);
        Ok(index)
    }

    /// The changes of a commit that have an event topic, each node change with
    /// the node as memory holds it before the commit is applied.
    fn event_changes<'a>(
        &self,
        ops: impl Iterator<Item = (Table, &'a str, Option<&'a [u8]>)>,
    ) -> Vec<crate::events::Change> {
        let mut out = Vec::new();
        for (table, key, value) in ops {
            let Some(mut c) = crate::events::Change::new(table, key, value) else {
                continue;
            };
            if let Some(id) = c.node_key() {
                let before = self
                    .cluster()
                    .node(&NodeId::from(id))
                    .map(crate::events::NodeView::of);
                c = c.with_before(before);
            }
            out.push(c);
        }
        out
    }

    /// Apply committed records to memory, then wake watchers.
    fn apply(
        &self,
        index: u64,
        jobs: Vec<Job>,
        allocs: Vec<Allocation>,
        nodes: Vec<Node>,
        evals: Vec<Evaluation>,
    ) {
        let mut touched: HashSet<NodeId> = HashSet::new();
        {
            let mut c = self.cluster_mut();
            for mut n in nodes {
                if n.create_index == 0 {
                    n.create_index = index;
                }
                n.modify_index = index;
                touched.insert(n.id.clone());
                c.upsert_node(n);
            }
            for mut j in jobs {
                if j.create_index == 0 {
                    j.create_index = index;
                }
                j.modify_index = index;
                c.upsert_job(j);
            }
            let mut server_index = self
                .alloc_server_index
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for mut a in allocs {
                if a.create_index == 0 {
                    a.create_index = index;
                }
                a.modify_index = index;
                if c.alloc(&a.id).is_none_or(|old| old.server_side_differs(&a)) {
                    server_index.insert(a.id.clone(), index);
                    if !touched.contains(&a.node_id) {
                        touched.insert(a.node_id.clone());
                    }
                }
                c.upsert_alloc(a);
            }
            if index > c.index() {
                c.set_index(index);
            }
        }
        {
            let mut m = self.evals.write().unwrap_or_else(|p| p.into_inner());
            for mut e in evals {
                if e.create_index == 0 {
                    e.create_index = index;
                }
                e.modify_index = index;
                m.insert(e.id.clone(), e);
            }
        }
        self.index.send_modify(|i| *i = (*i).max(index));
        self.wake_nodes(&touched, index);
    }

    fn new_eval(job: &Job, trigger: EvalTrigger, node: Option<NodeId>) -> Evaluation {
        Evaluation {
            id: EvalId::generate(),
            namespace: job.spec.namespace.clone(),
            job: job.spec.name.clone(),
            job_type: job.spec.job_type,
            priority: job.spec.priority,
            triggered_by: trigger,
            node_id: node,
            status: EvalStatus::Pending,
            status_description: String::new(),
            failed_groups: BTreeMap::new(),
            queued: BTreeMap::new(),
            wait_until: None,
            previous_eval: None,
            create_time: now_ms(),
            create_index: 0,
            modify_index: 0,
        }
    }

    fn put_job(txn: Txn, job: &Job) -> Txn {
        txn.put_encoded(
            Table::Jobs,
            job_record_key(&job.spec.namespace, &job.spec.name),
            job,
        )
    }

    // ---- jobs ----

    /// Register a validated spec: a new version when it changed (or the job
    /// was stopped), and an evaluation in any case. With `check_index`
    /// (check-and-set), only if the job's modify index is that one (0: only
    /// a job that does not exist).
    pub async fn register_job(
        &self,
        spec: JobSpec,
        check_index: Option<u64>,
    ) -> Result<RegisterJobResponse, StateError> {
        let ns = spec.namespace.clone();
        let name = spec.name.clone();
        let namespaces = self.namespaces.read().await;
        Self::check_namespace(&namespaces, &ns)?;
        let _held = self.locks.lock(vec![job_key(&ns, &name)]).await;
        let existing = self.cluster().job(&ns, &name).cloned();
        if let Some(want) = check_index {
            let have = existing.as_ref().map_or(0, |j| j.modify_index);
            if have != want {
                let now = match &existing {
                    Some(_) => format!("the job's modify index is {have}"),
                    None => "the job does not exist".to_owned(),
                };
                return Err(StateError::IndexMismatch {
                    field: "check_index".into(),
                    message: format!("{want} is not current: {now}; nothing was changed"),
                });
            }
        }
        let now = now_ms();
        let (job, changed) = match existing {
            Some(j) if j.spec == spec && !j.stopped => (j, false),
            Some(j) => (
                Job {
                    spec,
                    version: j.version + 1,
                    status: JobStatus::Pending,
                    stopped: false,
                    submit_time: now,
                    create_index: j.create_index,
                    modify_index: j.modify_index,
                },
                true,
            ),
            None => (
                Job {
                    spec,
                    version: 0,
                    status: JobStatus::Pending,
                    stopped: false,
                    submit_time: now,
                    create_index: 0,
                    modify_index: 0,
                },
                true,
            ),
        };
        let eval = Self::new_eval(&job, EvalTrigger::JobRegister, None);
        let mut txn = Txn::new().put_encoded(Table::Evals, eval.id.as_str(), &eval);
        if changed {
            txn = Self::put_job(txn, &job).put_encoded(
                Table::JobVersions,
                version_record_key(&ns, &name, job.version),
                &job,
            );
        }
        let index = self.commit(txn).await?;
        let version = job.version;
        let jobs = if changed { vec![job] } else { vec![] };
        self.apply(index, jobs, vec![], vec![], vec![eval.clone()]);
        let eval_id = eval.id.clone();
        self.broker.enqueue(eval);
        Ok(RegisterJobResponse {
            namespace: ns,
            job: name,
            version,
            changed,
            eval_id,
            index,
        })
    }

    /// Stop a job: mark it stopped and let an evaluation stop its allocations.
    pub async fn stop_job(&self, ns: &str, name: &str) -> Result<(EvalId, u64), StateError> {
        let _held = self.locks.lock(vec![job_key(ns, name)]).await;
        let mut job = self
            .cluster()
            .job(ns, name)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("job {name:?} not found")))?;
        job.stopped = true;
        job.status = JobStatus::Dead;
        let eval = Self::new_eval(&job, EvalTrigger::JobDeregister, None);
        let txn =
            Self::put_job(Txn::new(), &job).put_encoded(Table::Evals, eval.id.as_str(), &eval);
        let index = self.commit(txn).await?;
        let id = eval.id.clone();
        self.apply(index, vec![job], vec![], vec![], vec![eval.clone()]);
        self.broker.enqueue(eval);
        Ok((id, index))
    }

    /// Every stored version of a job, newest first.
    pub async fn job_versions(&self, ns: &str, name: &str) -> Result<Vec<Job>, StateError> {
        let store = self.store.clone();
        let prefix = format!("{ns}/{name}/");
        let recs = tokio::task::spawn_blocking(move || store.scan(Table::JobVersions, &prefix))
            .await
            .map_err(|_| StateError::ShuttingDown)??;
        let mut out = Vec::with_capacity(recs.len());
        for r in &recs {
            out.push(decode::<Job>(Table::JobVersions, r)?);
        }
        out.sort_by_key(|a| std::cmp::Reverse(a.version));
        if out.is_empty() {
            return Err(StateError::NotFound(format!("job {name:?} not found")));
        }
        Ok(out)
    }

    /// The most recent evaluation of a job.
    fn latest_eval(&self, ns: &str, name: &str) -> Option<Evaluation> {
        self.evals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| e.namespace == ns && e.job == name)
            .max_by_key(|e| (e.create_index, e.create_time))
            .cloned()
    }

    /// The last evaluation of a job that placed or failed to place something.
    fn latest_scheduling_eval(&self, ns: &str, name: &str) -> Option<Evaluation> {
        self.evals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| {
                e.namespace == ns
                    && e.job == name
                    && matches!(
                        e.status,
                        EvalStatus::Complete | EvalStatus::Blocked | EvalStatus::Failed
                    )
            })
            .max_by_key(|e| (e.modify_index, e.create_index))
            .cloned()
    }

    /// The job's observed status: `pending` until something runs, `running`,
    /// `dead` when stopped or finished.
    pub fn job_status_of(job: &Job, allocs: &[&Allocation]) -> JobStatus {
        if job.stopped {
            return JobStatus::Dead;
        }
        let current: Vec<_> = allocs
            .iter()
            .filter(|a| a.desired_status == DesiredStatus::Run)
            .collect();
        if current
            .iter()
            .any(|a| a.client_status == ClientStatus::Running)
        {
            return JobStatus::Running;
        }
        if job.spec.job_type == JobType::Batch {
            let wanted: u32 = job.spec.groups.iter().map(|g| g.count).sum();
            let complete = current
                .iter()
                .filter(|a| a.client_status == ClientStatus::Complete)
                .count() as u32;
            if wanted > 0 && complete >= wanted {
                return JobStatus::Dead;
            }
        }
        JobStatus::Pending
    }

    /// `job list`.
    pub fn list_jobs(&self, ns: Option<&str>) -> Vec<JobListEntry> {
        let c = self.cluster();
        let mut out: Vec<JobListEntry> = c
            .jobs()
            .filter(|j| ns.is_none_or(|n| j.spec.namespace == n))
            .map(|j| {
                let allocs: Vec<&Allocation> =
                    c.allocs_for_job(&j.spec.namespace, &j.spec.name).collect();
                let mut counts = BTreeMap::new();
                // A replaced allocation that still (or again) runs is
                // counted: a duplicate is never hidden.
                for a in allocs
                    .iter()
                    .filter(|a| !a.replaced || !a.client_status.is_terminal())
                {
                    *counts.entry(a.client_status.to_string()).or_insert(0) += 1;
                }
                JobListEntry {
                    namespace: j.spec.namespace.clone(),
                    name: j.spec.name.clone(),
                    job_type: j.spec.job_type,
                    priority: j.spec.priority,
                    version: j.version,
                    status: Self::job_status_of(j, &allocs),
                    stopped: j.stopped,
                    allocs: counts,
                    submit_time: j.submit_time,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// A job's current version.
    pub fn job(&self, ns: &str, name: &str) -> Result<Job, StateError> {
        self.cluster()
            .job(ns, name)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("job {name:?} not found")))
    }

    /// `job status`.
    pub fn job_status(&self, ns: &str, name: &str) -> Result<JobStatusResponse, StateError> {
        let (job, mut allocs) = {
            let c = self.cluster();
            let job = c
                .job(ns, name)
                .cloned()
                .ok_or_else(|| StateError::NotFound(format!("job {name:?} not found")))?;
            let allocs: Vec<Allocation> = c.allocs_for_job(ns, name).cloned().collect();
            (job, allocs)
        };
        allocs.sort_by(|a, b| b.create_time.cmp(&a.create_time).then(a.name.cmp(&b.name)));
        let refs: Vec<&Allocation> = allocs.iter().collect();
        let status = Self::job_status_of(&job, &refs);
        let summary = |e: &Evaluation| EvalSummary {
            id: e.id.clone(),
            status: e.status,
            description: e.status_description.clone(),
            failures: e
                .failed_groups
                .iter()
                .map(|(g, f)| (g.clone(), f.summary()))
                .collect(),
            queued: e.queued.clone(),
        };
        let latest = self.latest_eval(ns, name);
        let placement_failures = if job.stopped {
            BTreeMap::new()
        } else {
            self.latest_scheduling_eval(ns, name)
                .map(|e| summary(&e).failures)
                .unwrap_or_default()
        };
        Ok(JobStatusResponse {
            namespace: job.spec.namespace.clone(),
            name: job.spec.name.clone(),
            job_type: job.spec.job_type,
            version: job.version,
            status,
            stopped: job.stopped,
            allocations: allocs.iter().map(AllocListEntry::from_alloc).collect(),
            latest_eval: latest.as_ref().map(summary),
            placement_failures,
        })
    }

    // ---- allocations ----

    /// An allocation by id or unique id prefix.
    pub fn find_alloc(&self, id: &str) -> Result<Allocation, StateError> {
        let c = self.cluster();
        if let Some(a) = c.alloc(&AllocId::from(id)) {
            return Ok(a.clone());
        }
        if id.is_empty() {
            return Err(StateError::NotFound("allocation id is empty".into()));
        }
        let matches: Vec<&Allocation> = c
            .allocs()
            .filter(|a| a.id.as_str().starts_with(id))
            .collect();
        match matches.len() {
            0 => Err(StateError::NotFound(format!("allocation {id:?} not found"))),
            1 => Ok(matches[0].clone()),
            n => Err(StateError::Ambiguous(format!(
                "allocation prefix {id:?} matches {n} allocations; give more characters"
            ))),
        }
    }

    /// Every allocation in the namespaces `visible` accepts, newest first.
    pub fn list_allocs(&self, visible: impl Fn(&str) -> bool) -> Vec<AllocListEntry> {
        let c = self.cluster();
        let mut v: Vec<&Allocation> = c.allocs().filter(|a| visible(&a.namespace)).collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.create_time));
        v.into_iter().map(AllocListEntry::from_alloc).collect()
    }

    /// `alloc stop`: stop it; the job's evaluation places a replacement.
    pub async fn stop_alloc(&self, id: &str) -> Result<(EvalId, u64), StateError> {
        let a = self.find_alloc(id)?;
        let _held = self.locks.lock(vec![job_key(&a.namespace, &a.job)]).await;
        let mut a = self.find_alloc(a.id.as_str())?;
        let job = self.job(&a.namespace, &a.job)?;
        a.desired_status = DesiredStatus::Stop;
        a.desired_description = "alloc stopped by user".into();
        a.modify_time = now_ms();
        let eval = Self::new_eval(&job, EvalTrigger::AllocFailure, None);
        let txn = Txn::new()
            .put_encoded(Table::Allocs, a.id.as_str(), &a)
            .put_encoded(Table::Evals, eval.id.as_str(), &eval);
        let index = self.commit(txn).await?;
        let eid = eval.id.clone();
        self.apply(index, vec![], vec![a], vec![], vec![eval.clone()]);
        self.broker.enqueue(eval);
        Ok((eid, index))
    }

    /// Record an audit event on an allocation (durable before it returns),
    /// e.g. who ran which command with `alloc exec`.
    pub async fn record_alloc_event(
        &self,
        id: &AllocId,
        event: taba_types::AllocEvent,
    ) -> Result<u64, StateError> {
        let a = self.find_alloc(id.as_str())?;
        let _held = self.locks.lock(vec![job_key(&a.namespace, &a.job)]).await;
        let mut a = self.find_alloc(id.as_str())?;
        a.push_event(event);
        let index = self
            .commit(Txn::new().put_encoded(Table::Allocs, a.id.as_str(), &a))
            .await?;
        self.apply(index, vec![], vec![a], vec![], vec![]);
        Ok(index)
    }

    /// Merge an agent's observations into allocations; create evaluations
    /// where the scheduler must act (failure, loss, a rolling update waiting
    /// for a new allocation to run); wake blocked evaluations when resources
    /// were freed.
    pub async fn update_allocs(
        &self,
        node_id: &NodeId,
        updates: Vec<AllocUpdate>,
    ) -> Result<u64, StateError> {
        // A report is as good as a heartbeat: a node that was down and
        // reports again is up before its allocations are looked at.
        self.node_alive(node_id).await?;
        let mut keys = vec![];
        {
            let c = self.cluster();
            for (i, u) in updates.iter().enumerate() {
                let a = c.alloc(&u.id).ok_or_else(|| StateError::Invalid {
                    field: format!("updates[{i}].id"),
                    message: format!("unknown allocation {}", u.id),
                })?;
                if &a.node_id != node_id {
                    return Err(StateError::Forbidden {
                        field: format!("updates[{i}].id"),
                        message: format!("allocation {} is not placed on node {node_id}", u.id),
                    });
                }
                keys.push(job_key(&a.namespace, &a.job));
            }
        }
        let _held = self.locks.lock(keys).await;
        let now = now_ms();
        let mut changed = Vec::new();
        let mut eval_jobs: BTreeMap<(String, String), EvalTrigger> = BTreeMap::new();
        let mut freed = false;
        // Allocations of other nodes a live migration's step changed.
        let mut peers: BTreeMap<AllocId, Allocation> = BTreeMap::new();
        {
            let c = self.cluster();
            for u in updates {
                let Some(old) = c.alloc(&u.id) else { continue };
                let mut a = old.clone();
                a.client_status = u.client_status;
                a.client_description = u.client_description;
                a.task_states = u.task_states;
                if u.usage.is_some() {
                    a.usage = u.usage;
                }
                if let Some(lm) = &old.live_migration {
                    let peer_id = if lm.source_alloc == a.id {
                        lm.target_alloc.clone()
                    } else {
                        lm.source_alloc.clone()
                    };
                    let peer = peers.get(&peer_id).or_else(|| c.alloc(&peer_id));
                    if let Some(p) = migration::migration_step(old, &mut a, peer, u.migration, now)
                    {
                        peers.insert(p.id.clone(), p);
                    }
                } else {
                    migration::late_report(&mut a, u.migration, now);
                }
                if a == *old {
                    continue;
                }
                a.modify_time = now;
                if Self::record_link_events(old, &mut a, now) {
                    eval_jobs.insert(
                        (a.namespace.clone(), a.job.clone()),
                        EvalTrigger::AllocReconnect,
                    );
                }
                let became_terminal =
                    a.client_status.is_terminal() && !old.client_status.is_terminal();
                if became_terminal {
                    freed = true;
                    // A migration's source ends when its state was sent:
                    // its target takes over, nothing to replace.
                    if a.desired_status == DesiredStatus::Run && !a.is_migration_source() {
                        eval_jobs.insert(
                            (a.namespace.clone(), a.job.clone()),
                            EvalTrigger::AllocFailure,
                        );
                    }
                }
                if a.client_status == ClientStatus::Running
                    && old.client_status != ClientStatus::Running
                {
                    let key = (a.namespace.clone(), a.job.clone());
                    if let std::collections::btree_map::Entry::Vacant(v) = eval_jobs.entry(key) {
                        if let Some(trigger) = Self::work_waiting(&c, &a) {
                            v.insert(trigger);
                        }
                    }
                }
                changed.push(a);
            }
        }
        for (_, p) in peers {
            match changed.iter_mut().find(|a| a.id == p.id) {
                Some(a) => *a = p,
                None => changed.push(p),
            }
        }
        if changed.is_empty() {
            return Ok(self.index());
        }
        let mut evals = Vec::new();
        for ((ns, job), trigger) in eval_jobs {
            if let Ok(j) = self.job(&ns, &job) {
                evals.push(Self::new_eval(&j, trigger, Some(node_id.clone())));
            }
        }
        let mut txn = Txn::new();
        for a in &changed {
            txn = txn.put_encoded(Table::Allocs, a.id.as_str(), a);
        }
        for e in &evals {
            txn = txn.put_encoded(Table::Evals, e.id.as_str(), e);
        }
        let index = self.commit(txn).await?;
        self.apply(index, vec![], changed, vec![], evals.clone());
        for e in evals {
            self.broker.enqueue(e);
        }
        if freed {
            self.unblock(None);
        }
        Ok(index)
    }

    /// When `a` starts running: the trigger of an evaluation that carries
    /// on with work of its job that waited for it, if any: the next batch of
    /// a rolling update (a live allocation of an older version), or of moves
    /// (a live allocation with a move asked for; a drain's when one of them
    /// is on a draining node). One pass over the job's allocations.
    fn work_waiting(c: &ClusterState, a: &Allocation) -> Option<EvalTrigger> {
        let version = c.job(&a.namespace, &a.job)?.version;
        let mut found = None;
        for o in c
            .alloc_briefs_for_job(&a.namespace, &a.job)
            .filter(|o| o.is_live())
        {
            if o.job_version < version {
                return Some(EvalTrigger::RollingUpdate);
            }
            if o.migrating && found != Some(EvalTrigger::NodeDrain) {
                let draining = c.node(o.node_id).is_some_and(|n| n.draining());
                found = Some(if draining {
                    EvalTrigger::NodeDrain
                } else {
                    EvalTrigger::Rebalance
                });
            }
        }
        found
    }

    // ---- nodes ----

    fn known_node(&self, id: &NodeId) -> Result<Node, StateError> {
        self.cluster()
            .node(id)
            .cloned()
            .ok_or_else(|| StateError::Forbidden {
                field: "node_id".into(),
                message: format!("unknown node {id}; register first"),
            })
    }

    /// A node by id, unique id prefix or name, with its last usage.
    pub fn find_node(&self, key: &str) -> Result<Node, StateError> {
        let c = self.cluster();
        let found = if let Some(n) = c.node(&NodeId::from(key)) {
            n.clone()
        } else if let Some(n) = c.node_by_name(key) {
            n.clone()
        } else {
            let m: Vec<&Node> = c
                .nodes()
                .filter(|n| !key.is_empty() && n.id.as_str().starts_with(key))
                .collect();
            match m.len() {
                1 => m[0].clone(),
                0 => return Err(StateError::NotFound(format!("node {key:?} not found"))),
                n => {
                    return Err(StateError::Ambiguous(format!(
                        "node prefix {key:?} matches {n} nodes"
                    )))
                }
            }
        };
        Ok(self.with_usage(found))
    }

    fn with_usage(&self, mut n: Node) -> Node {
        if let Some(u) = self
            .node_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n.id)
        {
            n.usage = u.clone();
        }
        if let Some(t) = self
            .heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&n.id)
        {
            n.last_heartbeat = now_ms().saturating_sub(t.elapsed().as_millis() as u64);
        }
        n
    }

    /// Every node.
    pub fn list_nodes(&self) -> Vec<(Node, u32)> {
        let nodes: Vec<(Node, u32)> = {
            let c = self.cluster();
            c.nodes()
                .map(|n| {
                    let live = c
                        .alloc_briefs_for_node(&n.id)
                        .filter(|a| a.holds_resources())
                        .count() as u32;
                    (n.clone(), live)
                })
                .collect()
        };
        let mut v: Vec<(Node, u32)> = nodes
            .into_iter()
            .map(|(n, c)| (self.with_usage(n), c))
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(a.0.id.cmp(&b.0.id)));
        v
    }

    /// The allocations on a node.
    pub fn node_allocs(&self, id: &NodeId) -> Vec<Allocation> {
        self.cluster()
            .allocs_for_node_transient(id)
            .map(std::borrow::Cow::into_owned)
            .collect()
    }

    /// A node's allocations split at `after`: those whose server-side
    /// change index is past it, in full, and the ids of the others (the
    /// agent's blocking query with `delta=true`).
    pub fn node_allocs_since(&self, id: &NodeId, after: u64) -> (Vec<Allocation>, Vec<AllocId>) {
        let cluster = self.cluster();
        let server_index = self
            .alloc_server_index
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (mut changed, mut unchanged) = (Vec::new(), Vec::new());
        for a in cluster.allocs_for_node_transient(id) {
            let at = server_index
                .get(&a.id)
                .copied()
                .unwrap_or(a.modify_index)
                .max(a.create_index);
            if at > after {
                changed.push(a.into_owned());
            } else {
                unchanged.push(a.id.clone());
            }
        }
        (changed, unchanged)
    }

    /// The highest server-side change index of a node's allocations (what
    /// the agent's blocking query waits on), without copying them.
    pub fn node_allocs_index(&self, id: &NodeId) -> u64 {
        // Lock order: the cluster first, then the index map (as `apply` does).
        let cluster = self.cluster();
        let server_index = self
            .alloc_server_index
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cluster
            .allocs_for_node_transient(id)
            .map(|a| {
                server_index
                    .get(&a.id)
                    .copied()
                    .unwrap_or(a.modify_index)
                    .max(a.create_index)
            })
            .max()
            .unwrap_or(0)
    }

    /// Evaluations for every system job, and for jobs with blocked evaluations,
    /// when a node joins or comes back.
    fn node_evals(&self, node: &NodeId) -> Vec<Evaluation> {
        let c = self.cluster();
        c.jobs()
            .filter(|j| j.spec.job_type == JobType::System && !j.stopped)
            .map(|j| Self::new_eval(j, EvalTrigger::NodeUpdate, Some(node.clone())))
            .collect()
    }

    /// An agent registers (or re-registers after a restart).
    pub async fn register_node(&self, mut node: Node) -> Result<u64, StateError> {
        let _held = self
            .locks
            .lock(vec![node_key(node.id.as_str()), node_name_key(&node.name)])
            .await;
        self.check_name_free(&node)?;
        let existing = self.cluster().node(&node.id).cloned();
        if let Some(old) = &existing {
            node.create_index = old.create_index;
            node.eligibility = old.eligibility;
            node.drain = old.drain.clone();
            node.drained_at = old.drained_at;
        } else {
            node.create_index = 0;
        }
        node.status = node.alive_status();
        node.last_heartbeat = now_ms();
        if node.status == NodeStatus::Unusable {
            tracing::warn!(node = %node.id, name = %node.name, reason = %node.unusable_reason,
                "node registered as unusable; nothing will be placed on it");
        }
        let evals = self.node_evals(&node.id);
        let mut txn = Txn::new().put_encoded(Table::Nodes, node.id.as_str(), &node);
        for e in &evals {
            txn = txn.put_encoded(Table::Evals, e.id.as_str(), e);
        }
        let index = self.commit(txn).await?;
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.id.clone(), Instant::now());
        self.apply(index, vec![], vec![], vec![node], evals.clone());
        for e in evals {
            self.broker.enqueue(e);
        }
        self.unblock(None);
        Ok(index)
    }

    /// A heartbeat: refresh the TTL; a node that was disconnected or down
    /// is ready again.
    pub async fn heartbeat(&self, id: &NodeId, mut usage: NodeUsage) -> Result<(), StateError> {
        self.known_node(id)?;
        self.metrics.heartbeat();
        // Staleness is judged by when the report arrived (agents' clocks may differ).
        usage.at = now_ms();
        self.node_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), usage);
        self.node_alive(id).await
    }

    /// The node's agent spoke to us (a heartbeat or a status report):
    /// refresh its TTL, and make it `ready` (or `unusable`) again if it was
    /// not.
    pub(crate) async fn node_alive(&self, id: &NodeId) -> Result<(), StateError> {
        let node = self.known_node(id)?;
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        if node.status != node.alive_status() {
            let _held = self.locks.lock(vec![node_key(id.as_str())]).await;
            let mut node = self.known_node(id)?;
            if node.status == node.alive_status() {
                return Ok(());
            }
            tracing::info!(node = %id, name = %node.name, was = %node.status, "node is back");
            node.status = node.alive_status();
            node.last_heartbeat = now_ms();
            let evals = self.node_evals(id);
            let mut txn = Txn::new().put_encoded(Table::Nodes, id.as_str(), &node);
            for e in &evals {
                txn = txn.put_encoded(Table::Evals, e.id.as_str(), e);
            }
            let index = self.commit(txn).await?;
            self.apply(index, vec![], vec![], vec![node], evals.clone());
            for e in evals {
                self.broker.enqueue(e);
            }
            self.unblock(None);
        }
        Ok(())
    }

    // ---- rebalancing ----

    /// Measured use of each node whose last report is at most `max_age_ms`
    /// old (reports are refreshed by every heartbeat).
    pub fn node_loads(&self, max_age_ms: u64) -> BTreeMap<NodeId, taba_scheduler::rebalance::Load> {
        let now = now_ms();
        self.node_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, u)| now.saturating_sub(u.at) <= max_age_ms)
            .map(|(id, u)| {
                let l = taba_scheduler::rebalance::Load {
                    cpu_mhz: u.cpu_mhz,
                    memory: u.memory.0,
                };
                (id.clone(), l)
            })
            .collect()
    }

    /// Ask for moves: each allocation gets its [`MigrateRequest`] and each
    /// job an evaluation (trigger `rebalance`) that carries them out. Moves
    /// of allocations that changed meanwhile (no longer live, already
    /// moving, on another node) are skipped. Returns how many were asked.
    pub async fn request_moves(
        &self,
        moves: &[taba_scheduler::rebalance::Move],
    ) -> Result<usize, StateError> {
        let keys: Vec<String> = moves
            .iter()
            .map(|m| job_key(&m.namespace, &m.job))
            .collect();
        let _held = self.locks.lock(keys).await;
        let now = now_ms();
        let mut allocs = Vec::new();
        let mut evals = Vec::new();
        {
            let c = self.cluster();
            let mut jobs: BTreeMap<(String, String), ()> = BTreeMap::new();
            for m in moves {
                let Some(a) = c.alloc(&m.alloc) else { continue };
                if !a.is_live()
                    || a.migrate.is_some()
                    || a.live_migration.is_some()
                    || a.node_id != m.from
                {
                    continue;
                }
                let mut a = a.clone();
                a.migrate = Some(MigrateRequest {
                    reason: m.reason.clone(),
                    to: Some(m.to.clone()),
                    requested_at: now,
                    // VMs move live, as on a drain; the rest restart on the target.
                    live: a.group_spec.migrates_live(),
                });
                a.modify_time = now;
                allocs.push(a);
                jobs.insert((m.namespace.clone(), m.job.clone()), ());
            }
            for (ns, job) in jobs.keys() {
                if let Some(j) = c.job(ns, job).filter(|j| !j.stopped) {
                    evals.push(Self::new_eval(j, EvalTrigger::Rebalance, None));
                }
            }
        }
        if allocs.is_empty() {
            return Ok(0);
        }
        let mut txn = Txn::new();
        for a in &allocs {
            txn = txn.put_encoded(Table::Allocs, a.id.as_str(), a);
        }
        for e in &evals {
            txn = txn.put_encoded(Table::Evals, e.id.as_str(), e);
        }
        let index = self.commit(txn).await?;
        let n = allocs.len();
        self.apply(index, vec![], allocs, vec![], evals.clone());
        for e in evals {
            self.broker.enqueue(e);
        }
        Ok(n)
    }

    // ---- plans ----

    /// Commit a scheduler outcome for `eval`: verify against the latest
    /// state, persist allocations, the evaluation's result and follow-up
    /// evaluations in one transaction, then apply them to memory. `Ok(false)`
    /// when the plan no longer fits (retry on fresh state).
    pub async fn commit_plan(
        &self,
        eval: &Evaluation,
        outcome: SchedulerOutcome,
    ) -> Result<Result<u64, String>, StateError> {
        let plan = &outcome.plan;
        let mut keys = vec![job_key(&eval.namespace, &eval.job)];
        {
            let c = self.cluster();
            for s in &plan.stops {
                if let Some(a) = c.alloc(&s.alloc_id) {
                    keys.push(job_key(&a.namespace, &a.job));
                }
            }
            for a in plan.updates.iter().chain(plan.placements.iter()) {
                keys.push(job_key(&a.namespace, &a.job));
            }
        }
        let _held = self.locks.lock(keys).await;
        let now = now_ms();
        let mut allocs: Vec<Allocation> = Vec::new();
        let preempted: Vec<Evaluation>;
        {
            let c = self.cluster();
            if let Err(e) = taba_scheduler::verify_plan(&c, plan) {
                return Ok(Err(e.to_string()));
            }
            let mut touched: BTreeMap<AllocId, Allocation> = BTreeMap::new();
            for a in &plan.placements {
                touched.insert(a.id.clone(), a.clone());
            }
            // Mirrors taba_scheduler::apply_plan: updates change only the
            // scheduler's fields, so client status reported meanwhile is kept.
            for u in &plan.updates {
                if let Some(mut a) = c.alloc(&u.id).cloned() {
                    a.job_version = u.job_version;
                    a.group_spec = u.group_spec.clone();
                    a.priority = u.priority;
                    a.resources = u.resources.clone();
                    a.migrate = u.migrate.clone();
                    if taba_scheduler::starts_live_migration(&a, u) {
                        a.live_migration = u.live_migration.clone();
                        a.migration_status = None;
                    }
                    a.modify_time = u.modify_time;
                    touched.insert(a.id.clone(), a);
                }
            }
            for s in &plan.stops {
                let cur = touched
                    .get(&s.alloc_id)
                    .cloned()
                    .or_else(|| c.alloc(&s.alloc_id).cloned());
                if let Some(mut a) = cur {
                    a.desired_status = s.desired_status;
                    a.desired_description = s.description.clone();
                    if let Some(kind) = &s.event {
                        a.push_event(taba_types::AllocEvent::system(
                            now,
                            kind,
                            s.description.clone(),
                        ));
                    }
                    if s.preempted_by.is_some() {
                        a.preempted_by = s.preempted_by.clone();
                    }
                    a.modify_time = now;
                    touched.insert(a.id.clone(), a);
                }
            }
            preempted = Self::preemption_evals(&c, eval, plan);
            for id in &plan.replaced {
                let cur = touched.get(id).cloned().or_else(|| c.alloc(id).cloned());
                if let Some(mut a) = cur {
                    a.replaced = true;
                    a.modify_time = now;
                    touched.insert(a.id.clone(), a);
                }
            }
            allocs.extend(touched.into_values());
        }
        let mut done = self.eval(eval.id.as_str()).unwrap_or_else(|| eval.clone());
        done.status = outcome.status;
        done.status_description = outcome.status_description.clone();
        done.failed_groups = outcome.failed_groups.clone();
        done.queued = outcome.queued.clone();
        let mut follow_ups = outcome.follow_ups.clone();
        for f in &mut follow_ups {
            f.status = EvalStatus::Pending;
            f.previous_eval.get_or_insert_with(|| eval.id.clone());
            f.create_index = 0;
        }
        follow_ups.extend(preempted);
        let mut txn = Txn::new().put_encoded(Table::Evals, done.id.as_str(), &done);
        for a in &allocs {
            txn = txn.put_encoded(Table::Allocs, a.id.as_str(), a);
        }
        for f in &follow_ups {
            txn = txn.put_encoded(Table::Evals, f.id.as_str(), f);
        }
        let index = self.commit(txn).await?;
        let mut evals = follow_ups.clone();
        evals.push(done.clone());
        self.apply(index, vec![], allocs, vec![], evals);
        for f in follow_ups {
            self.broker.enqueue(f);
        }
        if done.status == EvalStatus::Blocked {
            self.broker.block(done);
        }
        Ok(Ok(index))
    }

    /// One evaluation per job that `plan` evicts allocations of, so that
    /// their work is placed again elsewhere or waits, blocked, for room.
    fn preemption_evals(c: &ClusterState, eval: &Evaluation, plan: &Plan) -> Vec<Evaluation> {
        let mut jobs: BTreeMap<(&str, &str), &NodeId> = BTreeMap::new();
        for s in &plan.stops {
            if s.desired_status != DesiredStatus::Evict {
                continue;
            }
            if let Some(a) = c.alloc(&s.alloc_id) {
                jobs.entry((&a.namespace, &a.job)).or_insert(&a.node_id);
            }
        }
        jobs.into_iter()
            .filter_map(|((ns, name), node)| {
                let job = c.job(ns, name)?;
                let mut e = Self::new_eval(job, EvalTrigger::Preemption, Some(node.clone()));
                e.status_description = format!(
                    "allocations preempted by job {} (priority {})",
                    eval.job, eval.priority
                );
                e.previous_eval = Some(eval.id.clone());
                Some(e)
            })
            .collect()
    }

    /// Record that an evaluation could not be processed.
    pub async fn fail_eval(&self, eval: &Evaluation, why: String) -> Result<(), StateError> {
        let mut e = self.eval(eval.id.as_str()).unwrap_or_else(|| eval.clone());
        e.status = EvalStatus::Failed;
        e.status_description = why;
        let index = self
            .commit(Txn::new().put_encoded(Table::Evals, e.id.as_str(), &e))
            .await?;
        self.apply(index, vec![], vec![], vec![], vec![e]);
        Ok(())
    }
}
