//! The server's Prometheus metrics (`GET /v1/metrics`, OpenMetrics text).
//!
//! Counters and histograms are updated where the work happens (scheduler workers, the plan
//! applier, store commits, heartbeats, the rebalancer); gauges of what the state holds (nodes
//! and allocations by status, evaluations waiting) are read from it at each scrape.
//!
//! Series (all prefixed `taba_`): `evaluations_total{outcome}`,
//! `evaluation_duration_seconds`, `plan_rejections_total`, `placements_total`,
//! `placement_failures_total{reason}`, `store_commit_duration_seconds`, `heartbeats_total`,
//! `rebalancer_moves_total`, `nodes{status}`, `allocations{status}`,
//! `evaluations_waiting{queue}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;
use taba_types::PlacementFailure;

/// A label `outcome`, `reason`, `status` or `queue`: one bounded set of values each.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `complete`, `failed`, `blocked` ...
    pub outcome: String,
}

/// Why placements failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `quota`, `exhausted_cpu`, `exhausted_memory`, `exhausted_disk`, `exhausted_ports`,
    /// `filtered` (constraints, drivers), `no_nodes`.
    pub reason: String,
}

/// A status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    /// The status's name.
    pub status: String,
}

/// One allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Alloc {
    /// Its job's namespace.
    pub namespace: String,
    /// Its job (`job_name`: Prometheus keeps `job` for the scrape job).
    pub job_name: String,
    /// Its task group.
    pub group: String,
    /// Its id.
    pub alloc: String,
    /// Its node's name.
    pub node: String,
}

/// One task of an allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Task {
    /// Its job's namespace.
    pub namespace: String,
    /// Its job (`job_name`: Prometheus keeps `job` for the scrape job).
    pub job_name: String,
    /// Its allocation's id.
    pub alloc: String,
    /// The task's name.
    pub task: String,
}

/// A broker queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Queue {
    /// `ready`, `delayed`, `blocked`, `in_flight`.
    pub queue: String,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    evaluations: Family<Outcome, Counter>,
    evaluation_seconds: Histogram,
    plan_rejections: Counter,
    placements: Counter,
    placement_failures: Family<Reason, Counter>,
    store_commit_seconds: Histogram,
    heartbeats: Counter,
    rebalancer_moves: Counter,
    nodes: Family<Status, Gauge>,
    allocations: Family<Status, Gauge>,
    waiting: Family<Queue, Gauge>,
    alloc_cpu: Family<Alloc, Gauge>,
    alloc_memory: Family<Alloc, Gauge>,
    task_restarts: Family<Task, Gauge>,
    task_oom_kills: Family<Task, Gauge>,
}

/// What the state holds at a scrape, for the gauges.
#[derive(Default)]
pub struct Snapshot {
    /// Nodes by status.
    pub nodes: Vec<(String, i64)>,
    /// Allocations by client status.
    pub allocations: Vec<(String, i64)>,
    /// Evaluations waiting, by broker queue.
    pub waiting: Vec<(&'static str, i64)>,
    /// Running allocations' measured use: (labels, CPU MHz, memory bytes).
    pub usage: Vec<(Alloc, i64, i64)>,
    /// Their tasks' restarts and OOM kills on their node.
    pub tasks: Vec<(Task, i64, i64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("taba");
        let m = Self {
            evaluations: Family::default(),
            // 1 ms .. ~16 s.
            evaluation_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            plan_rejections: Counter::default(),
            placements: Counter::default(),
            placement_failures: Family::default(),
            // 0.1 ms .. ~1.6 s.
            store_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            heartbeats: Counter::default(),
            rebalancer_moves: Counter::default(),
            nodes: Family::default(),
            allocations: Family::default(),
            waiting: Family::default(),
            alloc_cpu: Family::default(),
            alloc_memory: Family::default(),
            task_restarts: Family::default(),
            task_oom_kills: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "evaluations",
            "Evaluations processed, by outcome",
            m.evaluations.clone(),
        );
        r.register(
            "evaluation_duration_seconds",
            "Time from a worker taking an evaluation to its plan committed",
            m.evaluation_seconds.clone(),
        );
        r.register(
            "plan_rejections",
            "Plans rejected as made on stale state",
            m.plan_rejections.clone(),
        );
        r.register("placements", "Allocations placed", m.placements.clone());
        r.register(
            "placement_failures",
            "Allocations that could not be placed, by reason",
            m.placement_failures.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Time to commit one transaction to the store",
            m.store_commit_seconds.clone(),
        );
        r.register(
            "heartbeats",
            "Agent heartbeats received",
            m.heartbeats.clone(),
        );
        r.register(
            "rebalancer_moves",
            "Moves the rebalancer asked for",
            m.rebalancer_moves.clone(),
        );
        r.register("nodes", "Nodes by status", m.nodes.clone());
        r.register(
            "allocations",
            "Allocations by client status",
            m.allocations.clone(),
        );
        r.register(
            "evaluations_waiting",
            "Evaluations in the broker, by queue",
            m.waiting.clone(),
        );
        r.register(
            "allocation_cpu_mhz",
            "CPU a running allocation uses, as its agent last measured",
            m.alloc_cpu.clone(),
        );
        r.register(
            "allocation_memory_bytes",
            "Memory a running allocation uses, as its agent last measured",
            m.alloc_memory.clone(),
        );
        r.register(
            "task_restarts",
            "Restarts of a running allocation's task on its node",
            m.task_restarts.clone(),
        );
        r.register(
            "task_oom_kills",
            "Runs of a running allocation's task the OOM killer ended",
            m.task_oom_kills.clone(),
        );
        Self { registry, ..m }
    }

    /// One evaluation processed in `took`.
    pub fn evaluation(&self, outcome: &str, took: Duration) {
        self.evaluations
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
        self.evaluation_seconds.observe(took.as_secs_f64());
    }

    /// A plan rejected on stale state.
    pub fn plan_rejected(&self) {
        self.plan_rejections.inc();
    }

    /// A committed plan's placements and its groups' placement failures.
    pub fn placed(
        &self,
        placements: usize,
        failures: &std::collections::BTreeMap<String, PlacementFailure>,
    ) {
        self.placements.inc_by(placements as u64);
        for f in failures.values() {
            self.placement_failures
                .get_or_create(&Reason {
                    reason: failure_reason(f),
                })
                .inc_by(1 + u64::from(f.coalesced));
        }
    }

    /// One store commit.
    pub fn store_commit(&self, took: Duration) {
        self.store_commit_seconds.observe(took.as_secs_f64());
    }

    /// One heartbeat.
    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// Moves the rebalancer asked for.
    pub fn rebalancer_moved(&self, n: usize) {
        self.rebalancer_moves.inc_by(n as u64);
    }

    /// The text of a scrape: the gauges set from `snap`, then every series.
    pub fn encode(&self, snap: Snapshot) -> String {
        set(&self.nodes, snap.nodes.into_iter(), |status| Status {
            status,
        });
        set(&self.allocations, snap.allocations.into_iter(), |status| {
            Status { status }
        });
        set(
            &self.waiting,
            snap.waiting.into_iter().map(|(q, n)| (q.to_string(), n)),
            |queue| Queue { queue },
        );
        self.alloc_cpu.clear();
        self.alloc_memory.clear();
        for (labels, cpu, memory) in snap.usage {
            self.alloc_cpu.get_or_create(&labels).set(cpu);
            self.alloc_memory.get_or_create(&labels).set(memory);
        }
        self.task_restarts.clear();
        self.task_oom_kills.clear();
        for (labels, restarts, ooms) in snap.tasks {
            self.task_restarts.get_or_create(&labels).set(restarts);
            self.task_oom_kills.get_or_create(&labels).set(ooms);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The text of a scrape of `state`: its counters, and gauges read from the state now.
pub fn scrape(state: &crate::state::ServerState) -> String {
    let mut snap = Snapshot::default();
    {
        let c = state.cluster();
        let mut nodes = std::collections::BTreeMap::<String, i64>::new();
        for n in c.nodes() {
            *nodes.entry(n.display_status().to_string()).or_default() += 1;
        }
        let mut allocs = std::collections::BTreeMap::<String, i64>::new();
        c.for_each_alloc(|a| {
            *allocs.entry(a.client_status.to_string()).or_default() += 1;
            if a.client_status == taba_types::ClientStatus::Running {
                running(a, &mut snap);
            }
        });
        snap.nodes = nodes.into_iter().collect();
        snap.allocations = allocs.into_iter().collect();
    }
    let (ready, delayed, blocked, in_flight) = state.broker.stats();
    snap.waiting = vec![
        ("ready", ready as i64),
        ("delayed", delayed as i64),
        ("blocked", blocked as i64),
        ("in_flight", in_flight as i64),
    ];
    state.metrics.encode(snap)
}

/// A running allocation's series.
fn running(a: &taba_types::Allocation, snap: &mut Snapshot) {
    if let Some(u) = &a.usage {
        let labels = Alloc {
            namespace: a.namespace.clone(),
            job_name: a.job.clone(),
            group: a.group.clone(),
            alloc: a.id.to_string(),
            node: a.node_name.clone(),
        };
        snap.usage
            .push((labels, u.cpu_mhz as i64, u.memory.0 as i64));
    }
    for (task, t) in &a.task_states {
        let labels = Task {
            namespace: a.namespace.clone(),
            job_name: a.job.clone(),
            alloc: a.id.to_string(),
            task: task.clone(),
        };
        snap.tasks
            .push((labels, i64::from(t.restarts), i64::from(t.oom_kills)));
    }
}

/// Replaces a gauge family's series with `values`.
fn set<L>(
    family: &Family<L, Gauge>,
    values: impl Iterator<Item = (String, i64)>,
    label: impl Fn(String) -> L,
) where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    family.clear();
    for (name, n) in values {
        family.get_or_create(&label(name)).set(n);
    }
}

/// The bounded reason label of a placement failure.
fn failure_reason(f: &PlacementFailure) -> String {
    if !f.quota.is_empty() {
        return "quota".into();
    }
    if let Some((dim, _)) = f.exhausted.iter().max_by_key(|(_, n)| **n) {
        let dim = if dim.contains("port") {
            "ports"
        } else {
            dim.as_str()
        };
        return match dim {
            "cpu" | "memory" | "disk" | "ports" => format!("exhausted_{dim}"),
            _ => "exhausted_other".into(),
        };
    }
    if !f.filtered.is_empty() {
        return "filtered".into();
    }
    "no_nodes".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_every_series_with_the_values_recorded() {
        let m = Metrics::new();
        m.evaluation("complete", Duration::from_millis(3));
        m.plan_rejected();
        let mut failures = std::collections::BTreeMap::new();
        failures.insert(
            "g".to_string(),
            PlacementFailure {
                exhausted: [("memory".to_string(), 3)].into(),
                coalesced: 4,
                ..Default::default()
            },
        );
        m.placed(2, &failures);
        m.heartbeat();
        let alloc = Alloc {
            namespace: "default".into(),
            job_name: "web".into(),
            group: "g".into(),
            alloc: "a1".into(),
            node: "n1".into(),
        };
        let task = Task {
            namespace: "default".into(),
            job_name: "web".into(),
            alloc: "a1".into(),
            task: "t".into(),
        };
        let text = m.encode(Snapshot {
            nodes: vec![("ready".into(), 2), ("down".into(), 1)],
            allocations: vec![("running".into(), 5)],
            waiting: vec![("ready", 0)],
            usage: vec![(alloc, 120, 1 << 20)],
            tasks: vec![(task, 2, 1)],
        });
        for want in [
            "taba_evaluations_total{outcome=\"complete\"} 1",
            "taba_plan_rejections_total 1",
            "taba_placements_total 2",
            "taba_placement_failures_total{reason=\"exhausted_memory\"} 5",
            "taba_heartbeats_total 1",
            "taba_nodes{status=\"ready\"} 2",
            "taba_nodes{status=\"down\"} 1",
            "taba_allocations{status=\"running\"} 5",
            "taba_evaluation_duration_seconds_count 1",
            "taba_allocation_cpu_mhz{namespace=\"default\",job_name=\"web\",group=\"g\",alloc=\"a1\",node=\"n1\"} 120",
            "taba_allocation_memory_bytes{namespace=\"default\",job_name=\"web\",group=\"g\",alloc=\"a1\",node=\"n1\"} 1048576",
            "taba_task_restarts{namespace=\"default\",job_name=\"web\",alloc=\"a1\",task=\"t\"} 2",
            "taba_task_oom_kills{namespace=\"default\",job_name=\"web\",alloc=\"a1\",task=\"t\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        // Gauges are replaced at each scrape: a status no longer seen is gone.
        let text = m.encode(Snapshot {
            nodes: vec![("ready".into(), 3)],
            ..Snapshot::default()
        });
        assert!(!text.contains("status=\"down\""), "{text}");
        assert!(!text.contains("alloc=\"a1\""), "{text}");
    }
}
