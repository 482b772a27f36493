//! The simulator behind `taba sim`: the real [`schedule`], [`verify_plan`]
//! and [`apply_plan`] against a [`ClusterState`] of synthetic nodes, with
//! synthetic jobs of varied sizes, shapes, constraints and priorities.
//!
//! Pipeline: evaluations (one per job, highest priority first) are taken by
//! `workers` scheduler threads, each planning under a read lock on the
//! shared state; one plan applier (the calling thread) verifies each plan
//! under the write lock and applies it whole, or rejects it whole when it was
//! made on a view that went stale, and puts the evaluation back to be
//! retried. Each worker plans on its own shard of the nodes first (shards of
//! alike capacity, [`ClusterState::balance_shards`]) so that concurrent plans
//! do not touch the same nodes; when the shard has no room the evaluation is
//! planned on every node. A worker waits for its plan's verdict before it
//! plans again. (More shards than workers, claimed dynamically, was measured
//! and packs worse: it dilutes the follow-up placements that fill the nodes
//! each group half-filled.)
//!
//! The workload goes through every placement path (see [`features`]):
//! spread blocks and affinities, host ports, two namespaces with quotas (one
//! tight enough to hold work back) and a late wave of high-priority jobs
//! confined to a tenth of the nodes, which fits only by preempting; the
//! jobs that lose allocations get preemption evaluations, as on a server.
//! Stopped allocations are reported complete at once, as agents would.
//! At the end the state is audited (`check`): exactly the reported
//! placements minus stops are live, no node or namespace holds more than it
//! may, no host port is given twice, every constraint holds.
//!
//! Everything here is deterministic given the seed except the interleaving
//! of the workers (which plan is applied first); with one worker the whole
//! run is deterministic.

mod check;
pub mod features;

use crate::ids::IdStream;
use crate::rebalance::{plan_moves, spread, Load, RebalanceConfig, Spread};
use crate::{apply_plan_owned, schedule_with, verify_plan, ClusterState, ScheduleOptions};
use features::FeatureCounts;
use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Instant;
use taba_types::*;

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// `--mix` is malformed.
    #[error("invalid --mix {0:?}: {1}")]
    BadMix(String, &'static str),
    /// A size argument is out of range.
    #[error("invalid --{0}: {1}")]
    BadArg(&'static str, &'static str),
    /// The final state does not back the report (a scheduler bug).
    #[error("simulation audit failed: {0}")]
    Audit(String),
}

/// Share of the tasks per job type, in percent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Service tasks.
    pub service: u32,
    /// Batch tasks.
    pub batch: u32,
    /// System tasks (each system job places one per node).
    pub system: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            service: 65,
            batch: 35,
            system: 0,
        }
    }
}

impl FromStr for Mix {
    type Err = SimError;
    /// `service=60,batch=35,system=5` (weights; missing types are 0).
    fn from_str(s: &str) -> Result<Self, SimError> {
        let bad = |why| SimError::BadMix(s.to_string(), why);
        let mut m = Mix {
            service: 0,
            batch: 0,
            system: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("write type=weight, e.g. service=60,batch=40"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| bad("weights must be non-negative integers"))?;
            match k.trim() {
                "service" => m.service = v,
                "batch" => m.batch = v,
                "system" => m.system = v,
                _ => return Err(bad("types are service, batch and system")),
            }
        }
        if m.service + m.batch + m.system == 0 {
            return Err(bad("at least one weight must be positive"));
        }
        Ok(m)
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Synthetic nodes.
    pub nodes: u32,
    /// Tasks to place (one task per allocation).
    pub tasks: u64,
    /// Seed of the synthetic cluster and workload.
    pub seed: u64,
    /// Job types.
    pub mix: Mix,
    /// Scheduler worker threads.
    pub workers: usize,
    /// Demand as a share of the cluster's capacity in its binding resource.
    pub fill: f64,
    /// Give each worker its own shard of nodes (else all workers plan on
    /// every node and conflicting plans are rejected and retried).
    pub shards: bool,
    /// Use every placement feature (see [`features`]); without it the
    /// workload asks only for resources and constraints.
    pub features: bool,
}

/// What a simulation measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimReport {
    /// Nodes simulated.
    pub nodes: u32,
    /// Jobs submitted.
    pub jobs: u32,
    /// Tasks asked for.
    pub tasks: u64,
    /// Allocations placed (replacements of evicted ones included).
    pub placed: u64,
    /// Allocations stopped by plans (evictions by preemption).
    pub stopped: u64,
    /// Allocations live at the end, as audited against the state.
    pub live: u64,
    /// What the workload asked for beyond resources.
    pub features: FeatureCounts,
    /// Wall time of scheduling and applying, seconds.
    pub seconds: f64,
    /// Plans applied.
    pub plans_applied: u64,
    /// Plans rejected as stale and retried.
    pub plans_rejected: u64,
    /// Evaluations that ended blocked (not everything fit).
    pub evals_blocked: u64,
    /// Plans made on every node because a worker's shard had no room.
    pub shard_fallbacks: u64,
    /// Nodes holding at least one allocation.
    pub nodes_used: u64,
    /// Fewest nodes that could hold the placed work by its binding resource.
    pub lower_bound: u64,
    /// Which resource binds the lower bound.
    pub binding: &'static str,
    /// Evaluation latency (from start of the run to applied), p50 and p99, ms.
    pub eval_latency_ms: (f64, f64),
    /// CPU and memory in use on the nodes in use, as shares of their capacity.
    pub used_fill: (f64, f64),
    /// Time spent in `schedule`, summed over workers, seconds.
    pub schedule_seconds: f64,
    /// Time spent verifying and applying plans, seconds.
    pub apply_seconds: f64,
}

impl SimReport {
    /// Placements per second.
    pub fn placements_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.placed as f64 / self.seconds
        } else {
            0.0
        }
    }
    /// The exact last line `taba sim` prints.
    pub fn last_line(&self, rss_mib: u64) -> String {
        format!(
            "placed={} seconds={:.3} placements_per_s={:.0} nodes_used={} lower_bound={} rss_mib={}",
            self.placed,
            self.seconds,
            self.placements_per_s(),
            self.nodes_used,
            self.lower_bound,
            rss_mib
        )
    }
}

/// A small deterministic RNG (SplitMix64 underneath).
struct Rng(IdStream);

impl Rng {
    fn new(seed: u64, stream: &str) -> Self {
        Self(IdStream::new(stream, seed))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const KERNELS: [&str; 3] = ["5.10.0-28-amd64", "6.1.0-13-amd64", "6.12.9-amd64"];

/// The synthetic node `i`.
pub fn synthetic_node(rng_seed: u64, i: u32) -> Node {
    let mut r = Rng::new(rng_seed, &format!("node-{i}"));
    // (cores, MHz per core, memory GiB), weighted towards the middle.
    let shapes = [
        (8u64, 2400u64, 32u64),
        (16, 2600, 64),
        (16, 2600, 64),
        (32, 2800, 128),
        (32, 2800, 128),
        (64, 3000, 256),
    ];
    let (cores, mhz, gib) = *r.pick(&shapes);
    let mut attributes = BTreeMap::new();
    let k = match r.below(10) {
        0 | 1 => KERNELS[0],
        2..=7 => KERNELS[1],
        _ => KERNELS[2],
    };
    attributes.insert("kernel.version".to_string(), k.to_string());
    let arch = if r.below(20) == 0 { "arm64" } else { "amd64" };
    attributes.insert("cpu.arch".to_string(), arch.to_string());
    attributes.insert("cpu.cores".to_string(), cores.to_string());
    attributes.insert("os.name".to_string(), "debian".to_string());
    let mut meta = BTreeMap::new();
    meta.insert("rack".to_string(), format!("r{}", i % 50));
    let mut drivers = BTreeMap::new();
    for d in ["exec", "container"] {
        drivers.insert(
            d.to_string(),
            DriverInfo {
                detected: true,
                healthy: true,
                description: String::new(),
            },
        );
    }
    Node {
        id: NodeId(IdStream::new("node-id", u64::from(i) ^ rng_seed.rotate_left(32)).next_uuid()),
        name: format!("sim-{i:05}"),
        datacenter: format!("dc{}", 1 + i % 4),
        status: NodeStatus::Ready,
        eligibility: Eligibility::Eligible,
        drain: None,
        drained_at: None,
        http_addr: String::new(),
        attributes,
        meta,
        resources: NodeResources {
            cores: cores as u32,
            cpu: cores * mhz,
            memory: ByteSize::mib(gib * 1024),
            disk: ByteSize::mib(500 * 1024),
        },
        reserved: NodeResources::default(),
        reserved_ports: PortRanges::default(),
        dynamic_ports: PortRange::default(),
        drivers,
        last_heartbeat: 0,
        usage: NodeUsage::default(),
        unusable_reason: String::new(),
        create_index: 1,
        modify_index: 1,
    }
}

fn constraint(attribute: &str, operator: ConstraintOperator, value: &str) -> Constraint {
    Constraint {
        attribute: attribute.to_string(),
        operator,
        value: value.to_string(),
    }
}

/// A group shape before scaling: relative CPU and memory per MHz.
struct Shape {
    count: u32,
    cpu: f64,
    mem_per_mhz: f64,
}

/// A synthetic cluster and its workload.
pub struct Workload {
    /// Nodes and jobs (quotas set), no allocations yet.
    pub state: ClusterState,
    /// One evaluation per job: the main wave highest priority first, then
    /// the late high-priority wave (which may need preemption).
    pub evals: Vec<Evaluation>,
    /// What the jobs ask for beyond resources.
    pub features: FeatureCounts,
}

/// One drawn job before its resources are scaled to the wanted fill.
struct Drawn {
    job_type: JobType,
    shapes: Vec<Shape>,
    late: bool,
}

/// Build the synthetic cluster and its workload.
pub fn build(cfg: &SimConfig) -> Result<Workload, SimError> {
    if cfg.nodes == 0 {
        return Err(SimError::BadArg("nodes", "must be at least 1"));
    }
    if !(cfg.fill > 0.0 && cfg.fill <= 1.0) {
        return Err(SimError::BadArg("fill", "must be in (0, 1]"));
    }
    let mut state = ClusterState::new();
    let (mut cap_cpu, mut cap_mem) = (0f64, 0f64);
    for i in 0..cfg.nodes {
        let n = synthetic_node(cfg.seed, i);
        cap_cpu += n.resources.cpu as f64;
        cap_mem += n.resources.memory.as_mib() as f64;
        state.upsert_node(n);
    }
    let mut r = Rng::new(cfg.seed, "jobs");
    let total_w = f64::from(cfg.mix.service + cfg.mix.batch + cfg.mix.system);
    let system_tasks = (cfg.tasks as f64 * f64::from(cfg.mix.system) / total_w) as u64;
    let system_jobs = system_tasks / u64::from(cfg.nodes);
    let other_tasks = cfg.tasks - system_jobs * u64::from(cfg.nodes);
    // Some tasks come late, at high priority, confined to 10% of the nodes.
    let late_tasks = if cfg.features && cfg.mix.service > 0 {
        other_tasks * features::LATE_PERCENT / 100
    } else {
        0
    };
    let (jobs, dem_cpu, dem_mem) = draw_jobs(&mut r, cfg, other_tasks - late_tasks, late_tasks);
    let scale = if dem_cpu > 0.0 {
        (cfg.fill * cap_cpu / dem_cpu).min(cfg.fill * cap_mem / dem_mem)
    } else {
        1.0
    };
    let mut features = FeatureCounts::default();
    let mut main = Vec::new();
    let mut late = Vec::new();
    for s in 0..system_jobs {
        let g = task_group("agent", 1, 100, 128);
        let spec = job_spec(
            &mut r,
            format!("system-{s}"),
            JobType::System,
            "default",
            vec![g],
        );
        main.push(add_job(&mut state, spec));
    }
    let mut ns_demand = [(features::ROOMY, 0f64, 0f64), (features::TIGHT, 0.0, 0.0)];
    for (j, d) in jobs.into_iter().enumerate() {
        let name = format!("job-{j:06}");
        let namespace = if d.late || !cfg.features {
            "default"
        } else {
            features::namespace(&mut r, &mut features)
        };
        let mut groups = Vec::with_capacity(d.shapes.len());
        for (i, s) in d.shapes.iter().enumerate() {
            let cpu = (s.cpu * scale).max(10.0) as u64;
            let mem = ((s.cpu * scale * s.mem_per_mhz) as u64).max(16);
            let mut g = task_group(&format!("g{i}"), s.count, cpu, mem);
            if cfg.features && !d.late {
                features::decorate(&mut r, &mut g, &name, cfg.nodes, &mut features);
            }
            if let Some(e) = ns_demand.iter_mut().find(|e| e.0 == namespace) {
                e.1 += (cpu * u64::from(s.count)) as f64;
                e.2 += (mem * u64::from(s.count)) as f64;
            }
            groups.push(g);
        }
        let mut spec = job_spec(&mut r, name, d.job_type, namespace, groups);
        if d.late {
            spec.priority = features::LATE_PRIORITY;
            spec.constraints = vec![constraint(
                "${meta.rack}",
                ConstraintOperator::Regexp,
                features::LATE_RACKS,
            )];
            features.late_jobs += 1;
            late.push(add_job(&mut state, spec));
        } else {
            main.push(add_job(&mut state, spec));
        }
    }
    for (ns, q) in features::quotas(&ns_demand) {
        state.set_quota(ns, Some(q));
    }
    // The broker hands out higher priorities first; the late wave comes
    // after the cluster is filled.
    main.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.job.cmp(&b.job)));
    main.extend(late);
    state.set_index(1);
    Ok(Workload {
        state,
        evals: main,
        features,
    })
}

/// Draw `tasks` main-wave tasks and `late` late-wave tasks as jobs of
/// varied sizes and shapes; also their CPU and memory demand before scaling.
fn draw_jobs(r: &mut Rng, cfg: &SimConfig, tasks: u64, late: u64) -> (Vec<Drawn>, f64, f64) {
    let batch_share =
        f64::from(cfg.mix.batch) / f64::from((cfg.mix.service + cfg.mix.batch).max(1));
    let mut jobs = Vec::new();
    let (mut dem_cpu, mut dem_mem) = (0f64, 0f64);
    for (mut left, is_late) in [(tasks, false), (late, true)] {
        while left > 0 {
            let size = if is_late {
                r.range(20, 200)
            } else {
                match r.below(100) {
                    0..=49 => r.range(1, 10),
                    50..=79 => r.range(10, 100),
                    80..=94 => r.range(100, 1000),
                    _ => r.range(1000, 5000),
                }
            }
            .min(left);
            left -= size;
            let job_type = if !is_late && r.unit() < batch_share {
                JobType::Batch
            } else {
                JobType::Service
            };
            let groups = match r.below(20) {
                _ if is_late => 1,
                0..=13 => 1,
                14..=18 => 2,
                _ => 3,
            }
            .min(size);
            let mut shapes = Vec::new();
            let mut rest = size;
            for g in 0..groups {
                let count = if g + 1 == groups {
                    rest
                } else {
                    (rest / (groups - g)).max(1)
                };
                rest -= count;
                let cpu = *r.pick(&[100.0, 250.0, 500.0, 500.0, 1000.0, 2000.0])
                    * (0.75 + 0.5 * r.unit());
                let mem_per_mhz = 0.9 + 1.2 * r.unit();
                dem_cpu += cpu * count as f64;
                dem_mem += cpu * mem_per_mhz * count as f64;
                shapes.push(Shape {
                    count: count as u32,
                    cpu,
                    mem_per_mhz,
                });
            }
            jobs.push(Drawn {
                job_type,
                shapes,
                late: is_late,
            });
        }
    }
    (jobs, dem_cpu, dem_mem)
}

/// A job spec with a random priority and, for some, a constraint.
fn job_spec(
    r: &mut Rng,
    name: String,
    job_type: JobType,
    namespace: &str,
    groups: Vec<TaskGroupSpec>,
) -> JobSpec {
    let mut spec = JobSpec {
        name,
        job_type,
        namespace: namespace.to_string(),
        priority: r.range(10, 90) as u32,
        constraints: Vec::new(),
        scoring: Scoring::default(),
        spread: Vec::new(),
        affinity: Vec::new(),
        update: UpdatePolicy::default(),
        meta: BTreeMap::new(),
        groups,
    };
    match r.below(100) {
        0..=4 => spec.constraints.push(constraint(
            "${attr.kernel.version}",
            ConstraintOperator::Version,
            ">= 6.0",
        )),
        5..=7 => spec.constraints.push(constraint(
            "${attr.cpu.arch}",
            ConstraintOperator::Eq,
            "amd64",
        )),
        8..=9 => spec
            .constraints
            .push(constraint("${meta.rack}", ConstraintOperator::Ne, "r7")),
        10 => spec.constraints.push(constraint(
            "${node.datacenter}",
            ConstraintOperator::Regexp,
            "^dc[12]$",
        )),
        _ => {}
    }
    spec
}

/// Record `spec` as a job in `state`; its registration evaluation.
fn add_job(state: &mut ClusterState, spec: JobSpec) -> Evaluation {
    let id = EvalId(IdStream::new(&spec.name, 0).next_uuid());
    let mut eval = pending_eval(id, &spec, EvalTrigger::JobRegister, 0);
    eval.create_index = 1;
    eval.modify_index = 1;
    state.upsert_job(Job {
        spec,
        version: 0,
        status: JobStatus::Pending,
        stopped: false,
        submit_time: 0,
        create_index: 1,
        modify_index: 1,
    });
    eval
}

/// A pending evaluation of `spec`.
fn pending_eval(id: EvalId, spec: &JobSpec, trigger: EvalTrigger, now: UnixMillis) -> Evaluation {
    Evaluation {
        id,
        namespace: spec.namespace.clone(),
        job: spec.name.clone(),
        job_type: spec.job_type,
        priority: spec.priority,
        triggered_by: trigger,
        node_id: None,
        status: EvalStatus::Pending,
        status_description: String::new(),
        failed_groups: BTreeMap::new(),
        queued: BTreeMap::new(),
        wait_until: None,
        previous_eval: None,
        create_time: now,
        create_index: 0,
        modify_index: 0,
    }
}

fn task_group(name: &str, count: u32, cpu: u64, mem_mib: u64) -> TaskGroupSpec {
    TaskGroupSpec {
        name: name.to_string(),
        count,
        constraints: Vec::new(),
        spread: Vec::new(),
        affinity: Vec::new(),
        restart: None,
        reschedule: None,
        network: NetworkSpec::default(),
        migrate: Default::default(),
        stop_after_disconnect: None,
        meta: BTreeMap::new(),
        tasks: vec![TaskSpec {
            name: "main".to_string(),
            driver: "exec".to_string(),
            image: None,
            entrypoint: None,
            command: vec!["/bin/app".to_string()],
            env: BTreeMap::new(),
            user: None,
            workdir: None,
            hostname: None,
            resources: Resources {
                cpu,
                memory: ByteSize::mib(mem_mib),
                disk: ByteSize(0),
                pids: 1024,
            },
            constraints: Vec::new(),
            affinity: Vec::new(),
            kill_signal: None,
            kill_timeout: DurationSpec::secs(5),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            ulimits: Default::default(),
            no_new_privileges: false,
            user_namespace: None,
            vcpus: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            machine: None,
            accel: None,
            disks: Vec::new(),
            network: None,
            boot_disk: None,
            firmware: None,
            user_data: None,
            meta_data: None,
            network_config: None,
        }],
    }
}

struct Queue {
    /// One queue per shard: (evaluation, tries).
    evals: Vec<VecDeque<(Evaluation, u32)>>,
    /// Evaluations not yet applied.
    pending: usize,
}

/// Deal evaluations (in priority order) to `n` queues so that each gets
/// about the same demand: every shard then fills alike, as one pool would.
fn deal(
    state: &ClusterState,
    evals: Vec<Evaluation>,
    n: usize,
) -> Vec<VecDeque<(Evaluation, u32)>> {
    let (mut cap_cpu, mut cap_mem) = (0f64, 0f64);
    for node in state.nodes() {
        let a = node.allocatable();
        cap_cpu += a.cpu as f64;
        cap_mem += a.memory.0 as f64;
    }
    let mut queues: Vec<VecDeque<(Evaluation, u32)>> = (0..n).map(|_| VecDeque::new()).collect();
    let mut load = vec![0f64; n];
    for e in evals {
        let demand: f64 = state
            .job(&e.namespace, &e.job)
            .map(|j| {
                let per_type = if j.spec.job_type == JobType::System {
                    state.nodes().count() as f64
                } else {
                    1.0
                };
                j.spec
                    .groups
                    .iter()
                    .map(|g| {
                        let r = g.total_resources();
                        let each =
                            r.cpu as f64 / cap_cpu.max(1.0) + r.memory.0 as f64 / cap_mem.max(1.0);
                        each * f64::from(g.count) * per_type
                    })
                    .sum()
            })
            .unwrap_or(0.0);
        let k = (0..n)
            .min_by(|a, b| load[*a].total_cmp(&load[*b]).then(a.cmp(b)))
            .unwrap_or(0);
        load[k] += demand;
        queues[k].push_back((e, 0));
    }
    queues
}

/// Run the whole simulation.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimError> {
    run_state(cfg).map(|(report, _)| report)
}

/// [`run`], also returning the final cluster state.
pub fn run_state(cfg: &SimConfig) -> Result<(SimReport, ClusterState), SimError> {
    let Workload {
        mut state,
        evals,
        features,
    } = build(cfg)?;
    let workers = cfg.workers.max(1);
    let n_shards = if cfg.shards && workers > 1 {
        workers
    } else {
        1
    };
    state.balance_shards(n_shards as u32);
    let mut report = SimReport {
        nodes: cfg.nodes,
        jobs: evals.len() as u32,
        tasks: cfg.tasks,
        features,
        ..SimReport::default()
    };
    let mut follow_ups = IdStream::new("preemption", cfg.seed);
    let fallbacks = std::sync::atomic::AtomicU64::new(0);
    let queue = Mutex::new(Queue {
        pending: evals.len(),
        evals: deal(&state, evals, n_shards),
    });
    let ready = Condvar::new();
    let state = RwLock::new(state);
    let start = Instant::now();
    let mut latencies: Vec<f64> = Vec::new();
    std::thread::scope(|scope| {
        type Reply = std::sync::mpsc::SyncSender<bool>;
        type Msg = (Evaluation, u32, usize, SchedulerOutcome, Reply, f64);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(workers);
        for w in 0..workers {
            let tx = tx.clone();
            let (queue, ready, state, fallbacks) = (&queue, &ready, &state, &fallbacks);
            scope.spawn(move || loop {
                let own = w % n_shards;
                let (eval, tries, shard, owner) = {
                    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        if let Some((e, tries)) = q.evals[own].pop_front() {
                            // First try on the worker's own shard; a retry
                            // uses every node.
                            let shard = (n_shards > 1 && tries == 0).then_some(own as u32);
                            break (e, tries, shard, own);
                        }
                        // Own queue done: help with another, on every node.
                        let other = (0..n_shards).max_by_key(|k| q.evals[*k].len()).unwrap_or(0);
                        if let Some((e, tries)) = q.evals[other].pop_front() {
                            break (e, tries, None, other);
                        }
                        if q.pending == 0 {
                            return;
                        }
                        q = ready.wait(q).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let opts = ScheduleOptions {
                    node_shard: shard.map(|k| (k, n_shards as u32)),
                    ..ScheduleOptions::default()
                };
                let t0 = Instant::now();
                let out = {
                    let s = state.read().unwrap_or_else(|p| p.into_inner());
                    let out = schedule_with(&s, &eval, 0, &opts);
                    if out.status == EvalStatus::Blocked && opts.node_shard.is_some() {
                        fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        schedule_with(&s, &eval, 0, &ScheduleOptions::default())
                    } else {
                        out
                    }
                };
                // Like a Nomad worker: wait for the verdict, so the next plan
                // is made on a state that includes this one.
                let (reply, verdict) = std::sync::mpsc::sync_channel(1);
                let took = t0.elapsed().as_secs_f64();
                let sent = tx.send((eval, tries, owner, out, reply, took)).is_ok()
                    && verdict.recv().is_ok();
                if !sent {
                    return;
                }
            });
        }
        drop(tx);
        // The plan applier.
        for (eval, tries, owner, out, reply, took) in rx.iter() {
            report.schedule_seconds += took;
            let t0 = Instant::now();
            let status = out.status;
            let mut evicted_jobs = Vec::new();
            let verdict = {
                let mut s = state.write().unwrap_or_else(|p| p.into_inner());
                match verify_plan(&s, &out.plan) {
                    Ok(()) => {
                        let index = s.index() + 1;
                        report.placed += out.plan.placements.len() as u64;
                        report.stopped += out.plan.stops.len() as u64;
                        let stops = out.plan.stops.clone();
                        apply_plan_owned(&mut s, out.plan, index);
                        evicted_jobs = stop_as_agents_would(&mut s, &stops);
                        true
                    }
                    Err(_) => false,
                }
            };
            report.apply_seconds += t0.elapsed().as_secs_f64();
            let _ = reply.send(verdict);
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            // Like the server: each job that lost allocations to preemption
            // gets an evaluation, which places them elsewhere if they fit.
            for spec in evicted_jobs {
                let e = pending_eval(
                    EvalId(follow_ups.next_uuid()),
                    &spec,
                    EvalTrigger::Preemption,
                    0,
                );
                q.pending += 1;
                q.evals[owner].push_back((e, 0));
            }
            ready.notify_all();
            if verdict {
                report.plans_applied += 1;
                if status == EvalStatus::Blocked {
                    report.evals_blocked += 1;
                }
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                q.pending -= 1;
                if q.pending == 0 {
                    ready.notify_all();
                    break;
                }
            } else {
                report.plans_rejected += 1;
                q.evals[owner].push_front((eval, tries + 1));
                ready.notify_all();
            }
        }
        let _q = queue.lock().unwrap_or_else(|p| p.into_inner());
        ready.notify_all();
    });
    report.seconds = start.elapsed().as_secs_f64();
    report.shard_fallbacks = fallbacks.into_inner();
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        report.eval_latency_ms = (at(0.5), at(0.99));
    }
    let state = state.into_inner().unwrap_or_else(|p| p.into_inner());
    let (used, lb, binding) = packing(&state);
    let (mut uc, mut um, mut cc, mut cm) = (0f64, 0f64, 0f64, 0f64);
    for n in state.nodes() {
        let u = state.node_used(&n.id);
        if u.cpu > 0 || u.memory.0 > 0 {
            let a = n.allocatable();
            uc += u.cpu as f64;
            um += u.memory.0 as f64;
            cc += a.cpu as f64;
            cm += a.memory.0 as f64;
        }
    }
    if cc > 0.0 && cm > 0.0 {
        report.used_fill = (uc / cc, um / cm);
    }
    report.nodes_used = used;
    report.lower_bound = lb;
    report.binding = binding;
    check::check(&state, report.placed, report.stopped).map_err(SimError::Audit)?;
    report.live = report.placed - report.stopped;
    Ok((report, state))
}

/// What the agents do with stopped allocations: stop them and report them
/// complete, which frees their resources. Returns the specs of the jobs
/// that lost allocations to preemption (once each).
fn stop_as_agents_would(state: &mut ClusterState, stops: &[AllocStop]) -> Vec<JobSpec> {
    let mut jobs: BTreeMap<(String, String), JobSpec> = BTreeMap::new();
    for st in stops {
        let Some(slot) = state.alloc_slot(&st.alloc_id) else {
            continue;
        };
        state.modify_alloc(slot, |a| a.client_status = ClientStatus::Complete);
        if st.desired_status != DesiredStatus::Evict {
            continue;
        }
        if let Some(a) = state.alloc(&st.alloc_id) {
            if let Some(j) = state.job(&a.namespace, &a.job) {
                jobs.entry((a.namespace.clone(), a.job.clone()))
                    .or_insert_with(|| j.spec.clone());
            }
        }
    }
    jobs.into_values().collect()
}

/// What the rebalancing scenario measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RebalanceReport {
    /// Utilization spread over the nodes in use before any move.
    pub before: Spread,
    /// And after the last round.
    pub after: Spread,
    /// Moves carried out (replacement placed, original stopped).
    pub moves: u64,
    /// Moves asked for that the scheduler could not carry out.
    pub moves_dropped: u64,
    /// Rounds run (the last one found nothing to move, or the limit).
    pub rounds: u32,
    /// Wall time of planning and carrying out the moves, seconds.
    pub seconds: f64,
}

/// Synthetic measured use of an allocation: most use 30-80 % of their CPU
/// reservation, but one job in eight runs hot at 130-200 % (CPU is a soft
/// share); memory use is 40-90 % of the reservation. Derived from the seed
/// and the allocation's job and index, so a moved allocation keeps its load.
fn synthetic_load(seed: u64, a: &Allocation) -> Load {
    let mut job = Rng::new(seed, &format!("load/{}/{}", a.namespace, a.job));
    let hot = job.below(8) == 0;
    let mut r = Rng::new(seed, &format!("load/{}/{}/{}", a.job, a.group, a.index));
    let cpu_share = if hot {
        1.3 + 0.7 * r.unit()
    } else {
        0.3 + 0.5 * r.unit()
    };
    let mem_share = 0.4 + 0.5 * r.unit();
    Load {
        cpu_mhz: (a.resources.cpu as f64 * cpu_share) as u64,
        memory: (a.resources.memory.0 as f64 * mem_share) as u64,
    }
}

/// Place the workload as [`run`] does, give every allocation a synthetic
/// measured load, then run the real rebalancer round after round (each
/// round one cooldown apart) until it finds nothing to move or `max_rounds`:
/// its moves are set on the allocations, the jobs evaluated by the real
/// scheduler, and the plans verified and applied; replacements start
/// running at once with their original's load.
pub fn run_rebalance(
    cfg: &SimConfig,
    rcfg: &RebalanceConfig,
    max_rounds: u32,
) -> Result<(SimReport, RebalanceReport), SimError> {
    let (report, mut state) = run_state(cfg)?;
    let seed = cfg.seed;
    let loads_of = |state: &ClusterState| -> BTreeMap<NodeId, Load> {
        let mut out = BTreeMap::new();
        for n in state.nodes() {
            let mut l = Load::default();
            for a in state.allocs_for_node(&n.id).filter(|a| a.is_live()) {
                l.add(synthetic_load(seed, a));
            }
            out.insert(n.id.clone(), l);
        }
        out
    };
    let mut loads = loads_of(&state);
    let mut rb = RebalanceReport {
        before: spread(&state, &loads, rcfg),
        ..RebalanceReport::default()
    };
    let start = Instant::now();
    let mut recent: BTreeMap<NodeId, UnixMillis> = BTreeMap::new();
    let step = rcfg.cooldown_ms.max(60_000) + 1;
    let mut evals = IdStream::new("rebalance", seed);
    for round in 1..=max_rounds {
        rb.rounds = round;
        let now = UnixMillis::from(round) * step;
        let moves = plan_moves(
            &state,
            &loads,
            |a| Some(synthetic_load(seed, a)),
            &recent,
            rcfg,
            now,
        );
        if moves.is_empty() {
            break;
        }
        let mut jobs: BTreeMap<(String, String), ()> = BTreeMap::new();
        for m in &moves {
            let Some(mut a) = state.alloc(&m.alloc).cloned() else {
                continue;
            };
            a.migrate = Some(MigrateRequest {
                reason: m.reason.clone(),
                to: Some(m.to.clone()),
                requested_at: now,
                live: false,
            });
            state.upsert_alloc(a);
            jobs.insert((m.namespace.clone(), m.job.clone()), ());
            recent.insert(m.from.clone(), now);
            recent.insert(m.to.clone(), now);
        }
        for (namespace, job) in jobs.into_keys() {
            let Some(j) = state.job(&namespace, &job) else {
                continue;
            };
            let eval = pending_eval(
                EvalId(evals.next_uuid()),
                &j.spec,
                EvalTrigger::Rebalance,
                now,
            );
            let out = schedule_with(&state, &eval, now, &ScheduleOptions::default());
            if verify_plan(&state, &out.plan).is_err() {
                continue;
            }
            let placed: Vec<AllocId> = out.plan.placements.iter().map(|a| a.id.clone()).collect();
            rb.moves += out
                .plan
                .placements
                .iter()
                .filter(|a| a.previous_alloc.is_some())
                .count() as u64;
            rb.moves_dropped += out
                .plan
                .updates
                .iter()
                .filter(|a| a.migrate.is_none())
                .count() as u64;
            // Keep the nodes' loads up to date from what the plan changes.
            for st in &out.plan.stops {
                if let (Some(a), Some(l)) = (state.alloc(&st.alloc_id), loads.get_mut(&st.node_id))
                {
                    l.sub(synthetic_load(seed, a));
                }
            }
            for a in &out.plan.placements {
                loads
                    .entry(a.node_id.clone())
                    .or_default()
                    .add(synthetic_load(seed, a));
            }
            let index = state.index() + 1;
            apply_plan_owned(&mut state, out.plan, index);
            for id in placed {
                if let Some(mut a) = state.alloc(&id).cloned() {
                    a.client_status = ClientStatus::Running;
                    a.modify_time = now;
                    state.upsert_alloc(a);
                }
            }
        }
    }
    rb.seconds = start.elapsed().as_secs_f64();
    rb.after = spread(&state, &loads, rcfg);
    Ok((report, rb))
}

/// Nodes in use, and the fewest nodes (largest first) whose capacity could
/// hold the work placed, in the binding resource.
pub fn packing(state: &ClusterState) -> (u64, u64, &'static str) {
    let mut used_nodes = 0;
    let (mut dem_cpu, mut dem_mem) = (0u128, 0u128);
    let mut caps_cpu = Vec::new();
    let mut caps_mem = Vec::new();
    for n in state.nodes() {
        let u = state.node_used(&n.id);
        if u.cpu > 0 || u.memory.0 > 0 {
            used_nodes += 1;
        }
        dem_cpu += u128::from(u.cpu);
        dem_mem += u128::from(u.memory.0);
        let a = n.allocatable();
        caps_cpu.push(u128::from(a.cpu));
        caps_mem.push(u128::from(a.memory.0));
    }
    let need = |mut caps: Vec<u128>, demand: u128| -> u64 {
        caps.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum = 0u128;
        let mut n = 0u64;
        for c in caps {
            if sum >= demand {
                break;
            }
            sum += c;
            n += 1;
        }
        n
    };
    let by_cpu = need(caps_cpu, dem_cpu);
    let by_mem = need(caps_mem, dem_mem);
    if by_cpu >= by_mem {
        (used_nodes, by_cpu, "cpu")
    } else {
        (used_nodes, by_mem, "memory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects_nonsense() {
        let m: Mix = "service=60, batch=30,system=10".parse().unwrap();
        assert_eq!((m.service, m.batch, m.system), (60, 30, 10));
        assert!("bogus".parse::<Mix>().is_err());
        assert!("vm=3".parse::<Mix>().is_err());
        assert!("service=-1".parse::<Mix>().is_err());
        assert!("service=0".parse::<Mix>().is_err());
    }

    #[test]
    fn a_small_run_places_everything_and_reports_packing() {
        let cfg = SimConfig {
            nodes: 100,
            tasks: 5000,
            seed: 7,
            mix: Mix::default(),
            workers: 2,
            fill: 0.6,
            shards: true,
            features: true,
        };
        let r = run(&cfg).unwrap();
        // Everything fits but what the tight namespace's quota holds back.
        assert!(r.placed >= 4800, "{r:?}");
        assert_eq!(r.live, r.placed - r.stopped);
        let f = &r.features;
        assert!(
            f.spread_groups > 0 && f.affinity_groups > 0 && f.port_groups > 0,
            "{f:?}"
        );
        assert!(f.quota_jobs > 0 && f.late_jobs > 0, "{f:?}");
        assert!(r.lower_bound > 0 && r.nodes_used >= r.lower_bound);
        assert!(
            r.nodes_used < 100,
            "bin-packing leaves nodes empty at 60% fill"
        );
        let line = r.last_line(12);
        assert!(
            line.starts_with(&format!("placed={} seconds=", r.placed)),
            "{line}"
        );
        assert!(line.ends_with(" rss_mib=12"), "{line}");
        assert!(matches!(
            run(&SimConfig { nodes: 0, ..cfg }),
            Err(SimError::BadArg("nodes", _))
        ));
    }

    #[test]
    fn the_rebalancing_scenario_cools_hot_nodes_deterministically() {
        let cfg = SimConfig {
            nodes: 200,
            tasks: 8000,
            seed: 4,
            mix: Mix::default(),
            workers: 1,
            fill: 0.6,
            shards: false,
            features: true,
        };
        let rcfg = RebalanceConfig {
            max_moves: 32,
            ..RebalanceConfig::default()
        };
        let (placed, rb) = run_rebalance(&cfg, &rcfg, 40).unwrap();
        assert_eq!(placed.live, placed.placed - placed.stopped);
        assert!(
            rb.before.hot > 0,
            "the synthetic load makes hot nodes: {rb:?}"
        );
        assert!(rb.moves > 0, "{rb:?}");
        assert!(rb.after.hot < rb.before.hot, "{rb:?}");
        assert!(rb.after.max < rb.before.max, "{rb:?}");
        assert!(rb.after.stddev < rb.before.stddev, "{rb:?}");
        // One worker: the whole run is deterministic.
        let (_, again) = run_rebalance(&cfg, &rcfg, 40).unwrap();
        assert_eq!((again.moves, again.after.hot), (rb.moves, rb.after.hot));
    }

    #[test]
    fn the_late_wave_preempts_and_the_quota_holds_back() {
        let cfg = SimConfig {
            nodes: 200,
            tasks: 20_000,
            seed: 11,
            mix: Mix::default(),
            // One worker: deterministic.
            workers: 1,
            fill: 0.8,
            shards: true,
            features: true,
        };
        let (r, state) = run_state(&cfg).unwrap();
        assert!(r.stopped > 0, "the late wave evicted nothing: {r:?}");
        let late: Vec<&Job> = state
            .jobs()
            .filter(|j| j.spec.priority == features::LATE_PRIORITY)
            .collect();
        assert_eq!(late.len() as u64, r.features.late_jobs);
        let tight = state.namespace_usage(features::TIGHT);
        let quota = state.quota(features::TIGHT).and_then(|q| q.cpu).unwrap();
        assert!(
            tight.cpu <= quota && tight.cpu * 10 > quota * 9,
            "{tight:?} of {quota}"
        );
    }

    #[test]
    fn the_audit_catches_a_state_the_report_does_not_back() {
        let cfg = SimConfig {
            nodes: 50,
            tasks: 1000,
            seed: 5,
            mix: Mix::default(),
            workers: 1,
            fill: 0.5,
            shards: false,
            features: true,
        };
        let (r, mut state) = run_state(&cfg).unwrap();
        assert_eq!(check::check(&state, r.placed, r.stopped), Ok(()));
        // One placement fewer than the state holds.
        let err = check::check(&state, r.placed - 1, r.stopped).unwrap_err();
        assert!(err.contains("live"), "{err}");
        // An allocation over its node's capacity.
        let mut a = state.allocs().find(|a| a.is_live()).unwrap().clone();
        a.resources.cpu += state.node(&a.node_id).unwrap().allocatable().cpu;
        state.upsert_alloc(a);
        let err = check::check(&state, r.placed, r.stopped).unwrap_err();
        assert!(err.contains("holds"), "{err}");
    }
}
