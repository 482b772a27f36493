//! `taba bench scale`: one real `taba server` process, many simulated
//! agents, many allocations (issue 7: 10,000 agents heartbeating and
//! 100,000 allocations; server RSS target <= 500 MiB).
//!
//! The server runs as its own process (this binary, or `--server-bin`),
//! with ACLs on, the embedded store in a temporary directory and plain
//! HTTP on 127.0.0.1. This process is the load generator: one tokio
//! runtime (`--threads` worker threads, 2 by default) and one reqwest
//! client; each simulated agent is two tasks, never a thread:
//! - a heartbeat loop that speaks the real agent protocol
//!   (`POST /v1/agent/heartbeat` with the node secret the registration
//!   returned) every TTL/3, the interval a real agent uses, started at a
//!   random offset in the interval;
//! - an allocation loop like a real agent's: a blocking query
//!   (`GET /v1/agent/allocations/{node}?index=N`) and, for every new
//!   allocation it should run, one status report (`running`).
//!
//! Each simulated node offers 1,200 MHz and 2 GiB; each allocation asks
//! 100 MHz and 64 MiB, so the allocations spread over the nodes (about 10
//! per node at 10,000 nodes and 100,000 allocations) as they would on real
//! hosts, and each agent's blocking query carries its own few.
//!
//! Phases: register every agent (64 at a time); fill (submit `--jobs`
//! jobs of `--count` small exec allocations, until every allocation is
//! reported running by its agent); steady (`--steady` more seconds with
//! nothing but heartbeats). A probe job (count 1) is submitted every
//! `--probe-every` in fill and steady: its latency is `POST /v1/jobs` ->
//! its evaluation is `complete` (the plan committed: the allocation is
//! placed), polled every 10 ms. The server's RSS (VmRSS, and VmHWM at the
//! end) and CPU time come from `/proc/PID/`. Heartbeats are counted per
//! phase: sent, failed (error or non-2xx), late (a node's gap between two
//! accepted heartbeats exceeded the TTL), and the nodes the server marked
//! `disconnected` or `down` (from its log) are a finding of their own.

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taba_types::wire::{
    AllocUpdate, AllocUpdateRequest, HeartbeatRequest, NodeAllocations, RegisterRequest,
    RegisterResponse, NODE_SECRET_HEADER, PROTOCOL,
};
use taba_types::{
    Allocation, ByteSize, ClientStatus, DesiredStatus, DriverInfo, Eligibility, EvalStatus,
    Evaluation, Node, NodeId, NodeResources, NodeStatus, NodeUsage, TaskState, TaskStatus,
};
use tokio::sync::watch;

/// What `taba bench scale` runs.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Jobs submitted in the fill phase.
    #[arg(long, default_value_t = 100)]
    pub jobs: usize,
    /// Allocations per job (one group of this count).
    #[arg(long, default_value_t = 1_000)]
    pub count: u32,
    /// Seconds of heartbeats only, after every allocation runs.
    #[arg(long, default_value_t = 60)]
    pub steady: u64,
    /// Seconds between probe jobs.
    #[arg(long, default_value_t = 3)]
    pub probe_every: u64,
    /// Longest wait, in seconds, for every allocation to be reported running.
    #[arg(long, default_value_t = 900)]
    pub fill_timeout: u64,
    /// The server's heartbeat TTL (default: the server's default).
    #[arg(long)]
    pub heartbeat_ttl: Option<String>,
    /// The `taba` binary to run the server with (default: this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Most heartbeats and status reports in flight at once (queueing for
    /// a slot counts in a heartbeat's latency). Bounds the connections
    /// the load generator opens besides one blocking query per agent: the
    /// server's and this process's file descriptors are limited.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Keep the server's data directory and log (the path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Fail (exit 1) unless every request succeeded, every probe was
    /// placed and no node was ever marked disconnected or down (for the
    /// small CI variant; never about timings).
    #[arg(long)]
    pub strict: bool,
    /// After the steady phase, sign in to the web UI with the bootstrap
    /// token and load each of its heavy pages (overview, jobs, nodes) this
    /// many times, one at a time, while the agents keep heartbeating:
    /// time to the whole page, p50 and max (0: skip).
    #[arg(long, default_value_t = 0)]
    pub ui_loads: usize,
}

/// Counters shared by every simulated agent.
#[derive(Default)]
struct Stats {
    hb_ok: AtomicU64,
    hb_failed: AtomicU64,
    hb_late: AtomicU64,
    hb_latency_us: Mutex<Vec<u32>>,
    watch_failed: AtomicU64,
    reports_failed: AtomicU64,
    running: AtomicU64,
}

impl Stats {
    fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *self.hb_latency_us.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What every agent task needs.
struct Ctx {
    http: reqwest::Client,
    base: String,
    stats: Stats,
    stop: watch::Receiver<bool>,
    inflight: tokio::sync::Semaphore,
    /// The server answers blocking queries with deltas (protocol 4 and
    /// later), as a real agent then asks.
    delta: std::sync::atomic::AtomicBool,
}

/// The server process and where it keeps its things.
struct ServerProc {
    child: Child,
    dir: PathBuf,
    base: String,
    log: PathBuf,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_server(args: &ScaleArgs) -> anyhow::Result<ServerProc> {
    let dir = std::env::temp_dir().join(format!("taba-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut config = format!(
        "data_dir = {:?}\nhttp = \"127.0.0.1:{port}\"\n",
        dir.join("data")
    );
    if let Some(ttl) = &args.heartbeat_ttl {
        config.push_str(&format!("heartbeat_ttl = {ttl:?}\n"));
    }
    config.push_str("[rebalance]\nenabled = false\n");
    let cfg = dir.join("server.toml");
    std::fs::write(&cfg, config)?;
    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("find the taba executable")?,
    };
    let log = dir.join("server.log");
    let child = Command::new(&exe)
        .arg("server")
        .arg("--config")
        .arg(&cfg)
        .env("TABA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("server.out"))?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {} server", exe.display()))?;
    Ok(ServerProc {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
        log,
    })
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of `pid`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime is the 12th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's HZ.
    (ticks(11) + ticks(12)) / 100.0
}

async fn check<T: DeserializeOwned>(
    what: &str,
    r: Result<reqwest::Response, reqwest::Error>,
) -> anyhow::Result<T> {
    let r = r.with_context(|| what.to_string())?;
    let status = r.status();
    if !status.is_success() {
        let body = r.text().await.unwrap_or_default();
        bail!("{what}: {status}: {body}");
    }
    r.json().await.with_context(|| format!("{what}: reply"))
}

async fn bootstrap(ctx: &Ctx) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = ctx
            .http
            .post(format!("{}/v1/acl/bootstrap", ctx.base))
            .send()
            .await;
        match r {
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => {
                let t: taba_types::api::AclTokenCreated = check("acl bootstrap", r).await?;
                return Ok(t.secret);
            }
        }
    }
}

/// A simulated node's CPU: 12 allocations of 100 MHz, so that 100,000
/// allocations spread over most of 10,000 nodes (about 10 each, with room
/// for the probes) instead of bin-packing onto a few hundred large ones.
const NODE_CPU_MHZ: u64 = 1_200;

fn sim_node(i: usize) -> Node {
    let drivers = [(
        "exec".to_string(),
        DriverInfo {
            detected: true,
            healthy: true,
            description: String::new(),
        },
    )]
    .into();
    Node {
        id: NodeId(format!("sim-{i:05}-{}", std::process::id())),
        name: format!("sim-{i:05}"),
        datacenter: "dc1".into(),
        status: NodeStatus::Ready,
        eligibility: Eligibility::Eligible,
        drain: None,
        drained_at: None,
        http_addr: String::new(),
        attributes: [("cpu.cores".to_string(), "1".to_string())].into(),
        meta: Default::default(),
        resources: NodeResources {
            cores: 1,
            cpu: NODE_CPU_MHZ,
            memory: ByteSize::mib(2 * 1024),
            disk: ByteSize::mib(100 * 1024),
        },
        reserved: NodeResources::default(),
        reserved_ports: Default::default(),
        dynamic_ports: Default::default(),
        drivers,
        last_heartbeat: 0,
        usage: NodeUsage::default(),
        unusable_reason: String::new(),
        create_index: 0,
        modify_index: 0,
    }
}

/// Register `n` agents, 64 at a time: (node id, node secret, TTL).
async fn register_all(ctx: &Arc<Ctx>, n: usize) -> anyhow::Result<Vec<(NodeId, String, u64)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        set.spawn(async move {
            let _permit = permit;
            let node = sim_node(i);
            let id = node.id.clone();
            let r = ctx
                .http
                .post(format!("{}/v1/agent/register", ctx.base))
                .json(&RegisterRequest {
                    protocol: PROTOCOL,
                    node,
                })
                .send()
                .await;
            let reply: RegisterResponse = check(&format!("register {id}"), r).await?;
            ctx.delta.store(reply.protocol >= 4, Relaxed);
            let secret = reply.node_secret.context("no node secret in the reply")?;
            anyhow::Ok((id, secret, reply.heartbeat_ttl_ms))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// One simulated agent's heartbeats, every `ttl / 3` from `offset`.
async fn heartbeat_loop(
    ctx: Arc<Ctx>,
    id: NodeId,
    secret: String,
    ttl: Duration,
    offset: Duration,
) {
    let mut stop = ctx.stop.clone();
    let every = ttl / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = serde_json::to_vec(&HeartbeatRequest {
        protocol: PROTOCOL,
        node_id: id.clone(),
        usage: NodeUsage::default(),
    })
    .unwrap_or_default();
    let url = format!("{}/v1/agent/heartbeat", ctx.base);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let t = Instant::now();
        let Ok(_slot) = ctx.inflight.acquire().await else {
            return;
        };
        let r = ctx
            .http
            .post(&url)
            .header(NODE_SECRET_HEADER, &secret)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let ok = matches!(&r, Ok(r) if r.status().is_success());
        if let Ok(r) = r {
            let _ = r.bytes().await;
        }
        if ok {
            ctx.stats.hb_ok.fetch_add(1, Relaxed);
            if last_ok.elapsed() > ttl {
                ctx.stats.hb_late.fetch_add(1, Relaxed);
            }
            last_ok = Instant::now();
            ctx.stats
                .hb_latency_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            ctx.stats.hb_failed.fetch_add(1, Relaxed);
        }
    }
}

/// One simulated agent's allocation loop: a blocking query, then a
/// `running` report for each allocation it has not reported yet.
async fn alloc_loop(ctx: Arc<Ctx>, id: NodeId, secret: String) {
    let mut stop = ctx.stop.clone();
    let mut index = 0u64;
    let mut reported: HashSet<taba_types::AllocId> = HashSet::new();
    let url = format!("{}/v1/agent/allocations/{id}", ctx.base);
    let report_url = format!("{}/v1/agent/allocations", ctx.base);
    loop {
        let mut q = ctx
            .http
            .get(&url)
            .query(&[("index", index.to_string().as_str()), ("wait", "30s")]);
        if ctx.delta.load(Relaxed) {
            q = q.query(&[("delta", "true")]);
        }
        let q = q.header(NODE_SECRET_HEADER, &secret).send();
        let r = tokio::select! {
            r = q => r,
            _ = stop.changed() => return,
        };
        let got: anyhow::Result<NodeAllocations> = check("blocking query", r).await;
        let Ok(got) = got else {
            ctx.stats.watch_failed.fetch_add(1, Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        };
        index = got.index;
        let updates: Vec<AllocUpdate> = got
            .allocs
            .iter()
            .filter(|a| {
                a.desired_status == DesiredStatus::Run
                    && a.client_status == ClientStatus::Pending
                    && !reported.contains(&a.id)
            })
            .map(|a| AllocUpdate {
                id: a.id.clone(),
                client_status: ClientStatus::Running,
                client_description: String::new(),
                task_states: running_task_states(a),
                usage: None,
                migration: None,
            })
            .collect();
        if updates.is_empty() {
            continue;
        }
        let ids: Vec<_> = updates.iter().map(|u| u.id.clone()).collect();
        // The fill phase waits for its own allocations (not the probes').
        let fill = got
            .allocs
            .iter()
            .filter(|a| a.job.starts_with("fill-") && ids.contains(&a.id))
            .count() as u64;
        let Ok(_slot) = ctx.inflight.acquire().await else {
            return;
        };
        let r = ctx
            .http
            .post(&report_url)
            .header(NODE_SECRET_HEADER, &secret)
            .json(&AllocUpdateRequest {
                protocol: PROTOCOL,
                node_id: id.clone(),
                updates,
            })
            .send()
            .await;
        match check::<serde_json::Value>("alloc update", r).await {
            Ok(_) => {
                ctx.stats.running.fetch_add(fill, Relaxed);
                reported.extend(ids);
            }
            Err(_) => {
                ctx.stats.reports_failed.fetch_add(1, Relaxed);
            }
        }
    }
}

fn job_toml(name: &str, count: u32) -> String {
    format!(
        "name = \"{name}\"\ntype = \"service\"\n[[group]]\nname = \"g\"\ncount = {count}\n  \
         [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/true\"]\n  \
         resources = {{ cpu = 100, memory = \"64MiB\" }}\n"
    )
}

async fn submit(ctx: &Ctx, token: &str, name: &str, count: u32) -> anyhow::Result<String> {
    let r = ctx
        .http
        .post(format!("{}/v1/jobs", ctx.base))
        .bearer_auth(token)
        .header("content-type", "application/toml")
        .body(job_toml(name, count))
        .send()
        .await;
    let reply: taba_types::api::RegisterJobResponse = check(&format!("job run {name}"), r).await?;
    Ok(reply.eval_id.to_string())
}

/// What a real agent reports for a running allocation: each task running,
/// with its pid, start time and the two events it has by then ("Received",
/// "Started"), so that the server holds what it holds in production.
fn running_task_states(a: &Allocation) -> BTreeMap<String, TaskState> {
    let now = taba_types::now_ms();
    a.group_spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let pid = 10_000 + a.index * 8 + i as u32;
            let mut s = TaskState {
                state: TaskStatus::Running,
                pid: Some(pid),
                started_at: Some(now),
                ..TaskState::default()
            };
            s.push_event(now, "Received", "task received by agent");
            s.push_event(now, "Started", format!("task started (pid {pid})"));
            (t.name.clone(), s)
        })
        .collect()
}

/// Submit a probe job, wait until its evaluation is done: how long it took.
async fn probe(ctx: &Ctx, token: &str, name: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let eval = submit(ctx, token, name, 1).await?;
    let deadline = t + Duration::from_secs(120);
    while Instant::now() < deadline {
        let r = ctx
            .http
            .get(format!("{}/v1/evaluations/{eval}", ctx.base))
            .bearer_auth(token)
            .send()
            .await;
        let e: Evaluation = check("evaluation", r).await?;
        match e.status {
            EvalStatus::Complete => return Ok(t.elapsed()),
            EvalStatus::Pending => tokio::time::sleep(Duration::from_millis(10)).await,
            other => bail!("probe {name}: evaluation {other}: {}", e.status_description),
        }
    }
    bail!("probe {name}: not placed within 120 s")
}

/// Probes every `every` until stopped: latencies (ms) tagged with the phase.
async fn probe_loop(
    ctx: Arc<Ctx>,
    token: String,
    every: Duration,
    phase: watch::Receiver<&'static str>,
    out: Arc<Mutex<Vec<(&'static str, f64)>>>,
) {
    let mut stop = ctx.stop.clone();
    for k in 0u32.. {
        let p = *phase.borrow();
        match probe(&ctx, &token, &format!("probe-{k}")).await {
            Ok(d) => out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((p, d.as_secs_f64() * 1000.0)),
            Err(e) => {
                eprintln!("probe failed: {e:#}");
                out.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((p, f64::NAN));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    secs: f64,
    hb_ok: u64,
    hb_failed: u64,
    hb_late: u64,
    hb_latency_us: Vec<u32>,
    server_cpu: f64,
    own_cpu: f64,
    rss_kib: u64,
}

/// Counters at the start of a phase.
struct Mark {
    at: Instant,
    ok: u64,
    failed: u64,
    late: u64,
    server_cpu: f64,
    own_cpu: f64,
}

fn mark(stats: &Stats, pid: u32) -> Mark {
    stats.take_latencies();
    Mark {
        at: Instant::now(),
        ok: stats.hb_ok.load(Relaxed),
        failed: stats.hb_failed.load(Relaxed),
        late: stats.hb_late.load(Relaxed),
        server_cpu: cpu_seconds(&pid.to_string()),
        own_cpu: cpu_seconds("self"),
    }
}

fn finish(name: &'static str, m: &Mark, stats: &Stats, pid: u32) -> Phase {
    let mut lat = stats.take_latencies();
    lat.sort_unstable();
    Phase {
        name,
        secs: m.at.elapsed().as_secs_f64(),
        hb_ok: stats.hb_ok.load(Relaxed) - m.ok,
        hb_failed: stats.hb_failed.load(Relaxed) - m.failed,
        hb_late: stats.hb_late.load(Relaxed) - m.late,
        hb_latency_us: lat,
        server_cpu: cpu_seconds(&pid.to_string()) - m.server_cpu,
        own_cpu: cpu_seconds("self") - m.own_cpu,
        rss_kib: memory_kib(pid).0,
    }
}

fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Samples the server's RSS every second; the largest seen.
async fn rss_sampler(pid: u32, mut stop: watch::Receiver<bool>, max: Arc<AtomicU64>) {
    loop {
        max.fetch_max(memory_kib(pid).0, Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Wait until `target` allocations are reported running, printing progress.
async fn wait_running(ctx: &Ctx, target: u64, timeout: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut last_print = Instant::now();
    while ctx.stats.running.load(Relaxed) < target {
        if t.elapsed() > timeout {
            bail!(
                "only {} of {target} allocations running after {timeout:?}",
                ctx.stats.running.load(Relaxed)
            );
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "  ... {} of {target} allocations running ({:.0} s)",
                ctx.stats.running.load(Relaxed),
                t.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Nodes per status, from `GET /v1/nodes`.
async fn node_statuses(ctx: &Ctx, token: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let r = ctx
        .http
        .get(format!("{}/v1/nodes", ctx.base))
        .bearer_auth(token)
        .send()
        .await;
    let nodes: Vec<taba_types::api::NodeListEntry> = check("node list", r).await?;
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for n in nodes {
        *by.entry(n.status.to_string()).or_default() += 1;
    }
    Ok(by.into_iter().collect())
}

/// Lines of the server's log that say a node went disconnected or down.
fn liveness_events(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let disconnected = text.matches("missed its heartbeat; disconnected").count();
    let down = text.matches("marked down").count();
    (disconnected, down)
}

async fn run_phases(
    args: &ScaleArgs,
    ctx: Arc<Ctx>,
    pid: u32,
    stop_tx: &watch::Sender<bool>,
) -> anyhow::Result<(Vec<Phase>, Vec<(&'static str, f64)>, String)> {
    let token = bootstrap(&ctx).await?;
    let mut phases = vec![];
    let m = mark(&ctx.stats, pid);
    let agents = register_all(&ctx, args.agents).await?;
    phases.push(finish("register", &m, &ctx.stats, pid));
    println!(
        "registered {} agents in {:.1} s",
        agents.len(),
        phases[0].secs
    );
    let ttl = Duration::from_millis(agents.first().map(|a| a.2).unwrap_or(5000));
    for (i, (id, secret, _)) in agents.into_iter().enumerate() {
        let offset = (ttl / 3).mul_f64(i as f64 / args.agents as f64);
        tokio::spawn(heartbeat_loop(
            ctx.clone(),
            id.clone(),
            secret.clone(),
            ttl,
            offset,
        ));
        tokio::spawn(alloc_loop(ctx.clone(), id, secret));
    }
    // A few seconds of heartbeats alone (every agent's first blocking query too).
    let m = mark(&ctx.stats, pid);
    tokio::time::sleep(ttl * 2).await;
    phases.push(finish("idle", &m, &ctx.stats, pid));

    let (phase_tx, phase_rx) = watch::channel("fill");
    let probes = Arc::new(Mutex::new(vec![]));
    let probe_task = tokio::spawn(probe_loop(
        ctx.clone(),
        token.clone(),
        Duration::from_secs(args.probe_every),
        phase_rx,
        probes.clone(),
    ));
    let m = mark(&ctx.stats, pid);
    for j in 0..args.jobs {
        submit(&ctx, &token, &format!("fill-{j}"), args.count).await?;
    }
    let target = args.jobs as u64 * u64::from(args.count);
    wait_running(&ctx, target, Duration::from_secs(args.fill_timeout)).await?;
    phases.push(finish("fill", &m, &ctx.stats, pid));
    println!(
        "{target} allocations placed and reported running in {:.1} s",
        phases.last().map(|p| p.secs).unwrap_or(0.0)
    );
    phase_tx.send_replace("steady");
    let m = mark(&ctx.stats, pid);
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    phases.push(finish("steady", &m, &ctx.stats, pid));
    if args.ui_loads > 0 {
        ui_page_loads(&ctx, &token, args.ui_loads).await?;
    }
    let statuses = node_statuses(&ctx, &token).await?;
    stop_tx.send_replace(true);
    let _ = probe_task.await;
    let probes = std::mem::take(&mut *probes.lock().unwrap_or_else(|p| p.into_inner()));
    let statuses = statuses
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((phases, probes, statuses))
}

/// Sign in to the web UI and time whole page loads (request sent -> last
/// byte), one at a time: the server's render of the state plus the transfer
/// on loopback.
async fn ui_page_loads(ctx: &Ctx, token: &str, n: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let login = http
        .post(format!("{}/ui/login", ctx.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .context("the UI's login set no cookie")?;
    for page in ["/ui/", "/ui/jobs", "/ui/nodes"] {
        let mut times = Vec::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let t = Instant::now();
            let resp = http
                .get(format!("{}{page}", ctx.base))
                .header("cookie", &cookie)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("GET {page}: {}", resp.status());
            }
            size = resp.bytes().await?.len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "ui {page:<10} {n} loads: p50 {:.0} ms, max {:.0} ms, {} KiB",
            times[times.len() / 2],
            times[times.len() - 1],
            size / 1024
        );
    }
    Ok(())
}

fn report(
    args: &ScaleArgs,
    phases: &[Phase],
    probes: &[(&'static str, f64)],
    statuses: &str,
    server: &ServerProc,
    max_rss: u64,
    stats: &Stats,
) -> Vec<String> {
    let (rss, hwm) = memory_kib(server.child.id());
    let (disconnected, down) = liveness_events(&server.log);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nscale: {} agents, {} jobs x {} allocations, one server process (pid {}), load generator {} threads",
        args.agents, args.jobs, args.count, server.child.id(), args.threads
    );
    let _ = writeln!(
        out,
        "{:<9} {:>7} {:>10} {:>8} {:>6} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "phase",
        "secs",
        "hb/s",
        "failed",
        "late",
        "p50 ms",
        "p99 ms",
        "max ms",
        "server cpu",
        "gen cpu",
        "RSS MiB"
    );
    for p in phases {
        let l = &p.hb_latency_us;
        let _ = writeln!(
            out,
            "{:<9} {:>7.1} {:>10.0} {:>8} {:>6} {:>9.2} {:>9.2} {:>9.1} {:>9.0}% {:>8.0}% {:>9.1}",
            p.name,
            p.secs,
            p.hb_ok as f64 / p.secs,
            p.hb_failed,
            p.hb_late,
            f64::from(pct(l, 0.5)) / 1000.0,
            f64::from(pct(l, 0.99)) / 1000.0,
            f64::from(l.last().copied().unwrap_or(0)) / 1000.0,
            p.server_cpu / p.secs * 100.0,
            p.own_cpu / p.secs * 100.0,
            p.rss_kib as f64 / 1024.0
        );
    }
    for phase in ["fill", "steady"] {
        let mut v: Vec<f64> = probes
            .iter()
            .filter(|(p, d)| *p == phase && !d.is_nan())
            .map(|(_, d)| *d)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let _ = writeln!(
            out,
            "probe job-run -> placed during {phase}: n={} p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            v.len(),
            pct(&v, 0.5),
            pct(&v, 0.99),
            v.last().copied().unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        out,
        "server RSS: now {:.1} MiB, max sampled {:.1} MiB, VmHWM {:.1} MiB (target <= 500 MiB)",
        rss as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "nodes at the end: {statuses}; server log: {disconnected} nodes marked disconnected, {down} marked down"
    );
    let _ = writeln!(
        out,
        "blocking queries failed: {}, alloc reports failed: {}",
        stats.watch_failed.load(Relaxed),
        stats.reports_failed.load(Relaxed)
    );
    let mut problems = vec![];
    let failed: u64 = phases.iter().map(|p| p.hb_failed).sum();
    if failed > 0 {
        problems.push(format!("{failed} heartbeats failed"));
    }
    let lost = probes.iter().filter(|(_, d)| d.is_nan()).count();
    if lost > 0 {
        problems.push(format!("{lost} probe jobs were not placed"));
    }
    if disconnected + down > 0 {
        problems.push(format!(
            "{disconnected} nodes marked disconnected, {down} down"
        ));
    }
    if statuses.split(' ').any(|s| !s.starts_with("ready=")) {
        problems.push(format!("nodes not all ready at the end: {statuses}"));
    }
    let (w, r) = (
        stats.watch_failed.load(Relaxed),
        stats.reports_failed.load(Relaxed),
    );
    if w + r > 0 {
        problems.push(format!("{w} blocking queries and {r} alloc reports failed"));
    }
    problems
}

/// Run the benchmark.
pub fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    if args.agents == 0
        || args.jobs == 0
        || args.count == 0
        || args.threads == 0
        || args.max_inflight == 0
    {
        bail!("--agents, --jobs, --count, --threads and --max-inflight must be positive");
    }
    let mut server = start_server(&args)?;
    let pid = server.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let result = rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(Duration::from_secs(60))
            .build()?;
        let ctx = Arc::new(Ctx {
            http,
            base: server.base.clone(),
            stats: Stats::default(),
            stop: stop_rx.clone(),
            inflight: tokio::sync::Semaphore::new(args.max_inflight),
            delta: std::sync::atomic::AtomicBool::new(false),
        });
        let max_rss = Arc::new(AtomicU64::new(0));
        tokio::spawn(rss_sampler(pid, stop_rx.clone(), max_rss.clone()));
        let r = run_phases(&args, ctx.clone(), pid, &stop_tx).await;
        stop_tx.send_replace(true);
        anyhow::Ok((r, ctx, max_rss.load(Relaxed)))
    });
    let outcome = match result {
        Ok((Ok((phases, probes, statuses)), ctx, max_rss)) => {
            let problems = report(
                &args, &phases, &probes, &statuses, &server, max_rss, &ctx.stats,
            );
            if args.strict && !problems.is_empty() {
                println!("strict: {}", problems.join("; "));
                Ok(ExitCode::FAILURE)
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Ok((Err(e), _, _)) | Err(e) => Err(e),
    };
    rt.shutdown_timeout(Duration::from_secs(5));
    let _ = server.child.kill();
    let _ = server.child.wait();
    if args.keep {
        println!("kept: {}", server.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&server.dir);
    }
    outcome
}
