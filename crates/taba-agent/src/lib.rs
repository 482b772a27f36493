//! The taba agent: one per host. It fingerprints the host, registers it with
//! the servers, heartbeats, watches the allocations assigned to it, runs them
//! through drivers, reports their state and usage, and serves their logs and
//! `exec` on its own small HTTP API.
//!
//! It must not schedule: it runs what the servers assigned.
#![deny(unsafe_code)]

pub mod api;
mod client;
pub mod fingerprint;
pub mod host;
pub mod images;
pub mod logs;
pub mod runner;
pub mod state;

pub mod join;

pub use client::{normalize_base, ClientError, ServerClient};

use runner::{AllocRunner, RunnerCtx};
use state::StateDir;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taba_driver::Driver;
use taba_image::ImageStore;
use taba_types::wire::{AllocUpdate, AllocUpdateRequest, RegisterRequest, PROTOCOL};
use taba_types::{
    AllocId, AllocUsage, ByteSize, DriverInfo, Eligibility, Node, NodeId, NodeResources,
    NodeStatus, NodeUsage, PortRange, PortRanges,
};
use tokio::sync::{mpsc, watch};

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data dir is unusable.
    #[error("agent state")]
    State(#[from] state::StateError),
    /// The agent API could not listen.
    #[error("cannot listen on {addr}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Plain HTTP was asked for off loopback.
    #[error(
        "refusing to serve the agent API over plain HTTP on {addr}: off loopback it needs TLS \
         ([tls] ca_cert, cert and key, or a join_token; see docs/configuration.md)"
    )]
    PlainOffLoopback {
        /// Address.
        addr: SocketAddr,
    },
    /// The TLS files could not be used.
    #[error("TLS configuration")]
    Tls(#[from] taba_tls::ConfigError),
    /// The client to the servers could not be built.
    #[error("server client")]
    Client(#[from] ClientError),
    /// Joining with a token failed.
    #[error("joining the cluster")]
    Join(#[from] join::JoinError),
}

/// How an agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Where allocations, logs and the node id live.
    pub data_dir: PathBuf,
    /// The servers' API base URLs (`http://host:port`, `https://host:port`),
    /// tried in turn when one cannot be reached.
    pub servers: Vec<String>,
    /// TLS: the cluster CA, the agent's certificate and key. The certificate
    /// is both the agent's client identity and its API's server identity.
    pub tls: Option<taba_tls::TlsFiles>,
    /// A join token (`taba node token create`), exchanged on first contact
    /// for the agent certificate (TLS, written to `tls.cert`/`tls.key`) or
    /// the node secret (plain HTTP).
    pub join_token: Option<String>,
    /// Node name (the hostname by default).
    pub name: Option<String>,
    /// Datacenter.
    pub datacenter: String,
    /// Address for the agent's own API.
    pub http_addr: SocketAddr,
    /// Operator metadata (`${meta.X}`).
    pub meta: BTreeMap<String, String>,
    /// Resources held back for the host.
    pub reserved: NodeResources,
    /// Host ports never given to allocations.
    pub reserved_ports: PortRanges,
    /// Where the scheduler picks dynamic ports on this node.
    pub dynamic_ports: PortRange,
    /// Largest log file before rotation.
    pub log_max_bytes: u64,
    /// Rotated log files kept per stream.
    pub log_max_files: u32,
    /// How often usage is sampled.
    pub stats_interval: Duration,
    /// Caps of `alloc exec` (output size, duration).
    pub exec_limits: api::ExecLimits,
    /// The node's image store: images that tasks name and it lacks are fetched from the
    /// servers into it. `None`: no fetching (tasks find their images or fail).
    pub images: Option<Arc<ImageStore>>,
    /// Blobs of one image downloaded at once.
    pub image_fetch_parallel: usize,
}

impl AgentConfig {
    /// Defaults for a data dir and a server.
    pub fn new(data_dir: PathBuf, server: String) -> Self {
        Self {
            data_dir,
            servers: vec![server],
            tls: None,
            join_token: None,
            name: None,
            datacenter: "dc1".into(),
            http_addr: "127.0.0.1:0".parse().expect("static address"),
            meta: BTreeMap::new(),
            reserved: NodeResources::default(),
            reserved_ports: PortRanges::default(),
            dynamic_ports: PortRange::default(),
            log_max_bytes: 10 << 20,
            log_max_files: 3,
            stats_interval: Duration::from_secs(5),
            exec_limits: api::ExecLimits::default(),
            images: None,
            image_fetch_parallel: 4,
        }
    }
}

/// State shared by the agent's loops and API.
pub struct AgentInner {
    node_id: NodeId,
    ctx: Arc<RunnerCtx>,
    runners: Mutex<HashMap<AllocId, Arc<AllocRunner>>>,
    usage: Mutex<HashMap<AllocId, AllocUsage>>,
    mhz_per_core: u64,
    /// The node's total MHz (cores x MHz).
    total_mhz: u64,
    /// The host's last CPU times sample and its measured use.
    host: Mutex<(Option<host::CpuTimes>, Option<NodeUsage>)>,
    /// Caps of `alloc exec`.
    exec_limits: api::ExecLimits,
}

impl AgentInner {
    /// The runner of an allocation on this node.
    pub fn runner(&self, id: &str) -> Option<Arc<AllocRunner>> {
        let runners = self.runners.lock().unwrap();
        runners.get(&AllocId(id.to_string())).cloned().or_else(|| {
            let mut m = runners.iter().filter(|(k, _)| k.as_str().starts_with(id));
            match (m.next(), m.next()) {
                (Some((_, r)), None) => Some(r.clone()),
                _ => None,
            }
        })
    }
    /// The agent's data dir.
    pub fn state_dir(&self) -> &StateDir {
        &self.ctx.state_dir
    }
}

/// A running agent.
pub struct AgentHandle {
    /// This node's id.
    pub node_id: NodeId,
    /// Where the agent API listens.
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AgentHandle {
    /// Stop the agent's loops. Workloads keep running (a restarted agent
    /// re-attaches to them).
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Start an agent with `drivers`.
pub async fn start(
    config: AgentConfig,
    drivers: Vec<Arc<dyn Driver>>,
) -> Result<AgentHandle, AgentError> {
    let state_dir = StateDir::open(&config.data_dir)?;
    let node_id = state_dir.node_id()?;
    let fp = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || fingerprint::fingerprint(&dir))
            .await
            .unwrap_or_default()
    };
    let mut driver_infos = BTreeMap::new();
    let mut attributes = fp.attributes.clone();
    let mut by_name = BTreeMap::new();
    for d in drivers {
        let info: DriverInfo = d.fingerprint();
        if info.detected && info.healthy {
            attributes.insert(format!("driver.{}", d.name()), "1".into());
        }
        driver_infos.insert(d.name().to_string(), info);
        by_name.insert(d.name().to_string(), d);
    }

    if config.tls.is_none() && !config.http_addr.ip().is_loopback() {
        return Err(AgentError::PlainOffLoopback {
            addr: config.http_addr,
        });
    }
    let name = config.name.clone().unwrap_or_else(|| fp.hostname.clone());
    let creds = join::credentials(&config, &state_dir, &node_id, &name).await?;
    let name = creds.name.clone().unwrap_or(name);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: config.http_addr,
        source,
    })?;

    let node = Node {
        id: node_id.clone(),
        name,
        datacenter: config.datacenter.clone(),
        status: NodeStatus::Initializing,
        eligibility: Eligibility::Eligible,
        drain: None,
        drained_at: None,
        http_addr: http_addr.to_string(),
        attributes,
        meta: config.meta.clone(),
        resources: fp.resources.clone(),
        reserved: config.reserved.clone(),
        reserved_ports: config.reserved_ports.clone(),
        dynamic_ports: config.dynamic_ports,
        drivers: driver_infos,
        last_heartbeat: 0,
        usage: NodeUsage::default(),
        create_index: 0,
        modify_index: 0,
    };

    let (changed_tx, changed_rx) = mpsc::unbounded_channel();
    let client = ServerClient::new(&config.servers, creds.client.as_ref())?;
    client.set_secret(creds.secret.clone());
    let images = config.images.clone().map(|store| {
        Arc::new(images::ImageFetcher::new(
            store,
            client.clone(),
            node_id.clone(),
            config.image_fetch_parallel,
        ))
    });
    let ctx = Arc::new(RunnerCtx {
        images,
        state_dir,
        drivers: by_name,
        changed: changed_tx,
        log_max_bytes: config.log_max_bytes,
        log_max_files: config.log_max_files,
        node_ip: node_ip(http_addr),
    });
    let inner = Arc::new(AgentInner {
        node_id: node_id.clone(),
        ctx,
        runners: Mutex::new(HashMap::new()),
        usage: Mutex::new(HashMap::new()),
        mhz_per_core: fp.mhz_per_core.max(1),
        total_mhz: fp.resources.cpu,
        host: Mutex::new((None, None)),
        exec_limits: config.exec_limits,
    });

    // Resume what a previous agent left running before talking to anyone.
    recover(&inner);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let ttl = Arc::new(Mutex::new(Duration::from_secs(10)));
    tasks.push(tokio::spawn(register_and_watch(
        inner.clone(),
        client.clone(),
        node,
        ttl.clone(),
    )));
    tasks.push(tokio::spawn(heartbeat_loop(
        inner.clone(),
        client.clone(),
        ttl,
    )));
    tasks.push(tokio::spawn(sync_loop(
        inner.clone(),
        client.clone(),
        changed_rx,
    )));
    tasks.push(tokio::spawn(stats_loop(
        inner.clone(),
        config.stats_interval,
    )));
    let app = api::router(inner.clone());
    let mut srx = shutdown_rx.clone();
    let stopped = async move {
        let _ = srx.wait_for(|v| *v).await;
    };
    tasks.push(match creds.listener {
        Some(cfg) => {
            let app = app.layer(axum::middleware::from_fn(api::require_server));
            tokio::spawn(taba_tls::serve::serve(listener, cfg, app, stopped))
        }
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await;
        }),
    });
    tracing::info!(node = %node_id, api = %http_addr, "agent started");
    Ok(AgentHandle {
        node_id,
        http_addr,
        shutdown,
        tasks,
    })
}

/// The node's address as tasks see it: the IP of the agent's API address
/// (the address the servers reach the node at), or loopback when the API
/// listens on every address.
fn node_ip(http_addr: SocketAddr) -> std::net::IpAddr {
    match http_addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
}

fn recover(inner: &Arc<AgentInner>) {
    let sd = &inner.ctx.state_dir;
    for id in sd.alloc_ids() {
        let alloc = match sd.load_alloc(&id) {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(alloc = %id, "cannot recover allocation: {e}");
                continue;
            }
        };
        let runner_state = match sd.load_runner(&id) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(alloc = %id, "cannot recover runner state: {e}");
                continue;
            }
        };
        let all_dead = runner_state.as_ref().is_some_and(|s| {
            s.tasks
                .values()
                .all(|t| t.state.state == taba_types::TaskStatus::Dead)
        });
        let runner = AllocRunner::start(inner.ctx.clone(), alloc, runner_state);
        if all_dead {
            tracing::debug!(alloc = %id, "recovered finished allocation");
        } else {
            tracing::info!(alloc = %id, "recovered allocation");
        }
        inner
            .runners
            .lock()
            .unwrap()
            .insert(runner.id().clone(), Arc::new(runner));
    }
}

async fn register_and_watch(
    inner: Arc<AgentInner>,
    client: ServerClient,
    node: Node,
    ttl: Arc<Mutex<Duration>>,
) {
    let mut backoff = Duration::from_millis(100);
    'register: loop {
        let req = RegisterRequest {
            protocol: PROTOCOL,
            node: node.clone(),
        };
        match client.register(&req).await {
            Ok(resp) => {
                if let Some(secret) = &resp.node_secret {
                    if let Err(e) = inner.ctx.state_dir.save_node_secret(secret) {
                        tracing::error!(
                            "keeping the node secret: {e}; a restarted agent will be refused"
                        );
                    }
                    client.set_secret(Some(secret.clone()));
                }
                *ttl.lock().unwrap() = Duration::from_millis(resp.heartbeat_ttl_ms.max(100));
                backoff = Duration::from_millis(100);
                // Everything we run gets reported after a (re-)registration.
                let ids: Vec<AllocId> = inner.runners.lock().unwrap().keys().cloned().collect();
                for id in ids {
                    let _ = inner.ctx.changed.send(id);
                }
            }
            Err(e) => {
                tracing::warn!("registering with {}: {e}", client.base());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        let mut index = 0;
        loop {
            match client
                .allocations(&inner.node_id, index, Duration::from_secs(30))
                .await
            {
                Ok(resp) => {
                    index = resp.index;
                    reconcile(&inner, resp.allocs).await;
                }
                Err(ClientError::Status { status: 404, .. }) => {
                    // The server forgot us (e.g. lost state): register again.
                    continue 'register;
                }
                Err(e) => {
                    tracing::warn!("watching allocations: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    index = 0;
                }
            }
        }
    }
}

/// Make the runners match the servers' view of this node.
async fn reconcile(inner: &Arc<AgentInner>, allocs: Vec<taba_types::Allocation>) {
    let mut seen = std::collections::HashSet::new();
    for alloc in allocs {
        if alloc.node_id != inner.node_id {
            tracing::warn!(alloc = %alloc.id, "server sent an allocation of another node; ignored");
            continue;
        }
        seen.insert(alloc.id.clone());
        let existing = inner.runners.lock().unwrap().get(&alloc.id).cloned();
        match existing {
            Some(r) => r.update_if_changed(alloc),
            // A terminal allocation we do not run is history: nothing to do.
            None if alloc.client_status.is_terminal() => {}
            None => {
                // Also for allocations already desired to stop: the runner
                // reports them complete without starting anything.
                let runner = AllocRunner::start(inner.ctx.clone(), alloc, None);
                inner
                    .runners
                    .lock()
                    .unwrap()
                    .insert(runner.id().clone(), Arc::new(runner));
            }
        }
    }
    // Allocations the servers garbage-collected: stop and remove.
    let gone: Vec<Arc<AllocRunner>> = {
        let runners = inner.runners.lock().unwrap();
        runners
            .iter()
            .filter(|(id, _)| !seen.contains(*id))
            .map(|(_, r)| r.clone())
            .collect()
    };
    for r in gone {
        let inner = inner.clone();
        tokio::spawn(async move {
            r.stop("allocation was removed by the servers".into());
            r.wait_finished().await;
            inner.runners.lock().unwrap().remove(r.id());
            inner.usage.lock().unwrap().remove(r.id());
            if let Err(e) = inner.ctx.state_dir.remove_alloc(r.id().as_str()) {
                tracing::warn!(alloc = %r.id(), "removing allocation dir: {e}");
            }
        });
    }
}

async fn heartbeat_loop(inner: Arc<AgentInner>, client: ServerClient, ttl: Arc<Mutex<Duration>>) {
    loop {
        let period = *ttl.lock().unwrap() / 3;
        tokio::time::sleep(period.max(Duration::from_millis(50))).await;
        // The host's real use; the sum of the allocations' until it is sampled.
        let host = inner.host.lock().unwrap().1.clone();
        let usage = host.unwrap_or_else(|| {
            let u = inner.usage.lock().unwrap();
            NodeUsage {
                cpu_mhz: u.values().map(|x| x.cpu_mhz).sum(),
                memory: ByteSize(u.values().map(|x| x.memory.0).sum()),
                at: taba_driver::now_ms(),
            }
        });
        match client.heartbeat(&inner.node_id, usage).await {
            Ok(r) => *ttl.lock().unwrap() = Duration::from_millis(r.heartbeat_ttl_ms.max(100)),
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Report changed allocations, coalescing bursts into one request.
async fn sync_loop(
    inner: Arc<AgentInner>,
    client: ServerClient,
    mut rx: mpsc::UnboundedReceiver<AllocId>,
) {
    let mut pending: std::collections::BTreeSet<AllocId> = Default::default();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(id) => {
                    pending.insert(id);
                }
                None => return,
            }
        }
        while let Ok(id) = rx.try_recv() {
            pending.insert(id);
        }
        let updates: Vec<AllocUpdate> = {
            let runners = inner.runners.lock().unwrap();
            let usage = inner.usage.lock().unwrap();
            pending
                .iter()
                .filter_map(|id| {
                    runners.get(id).map(|r| {
                        let mut u = r.report();
                        u.usage = usage.get(id).cloned();
                        u
                    })
                })
                .collect()
        };
        if updates.is_empty() {
            pending.clear();
            continue;
        }
        let req = AllocUpdateRequest {
            protocol: PROTOCOL,
            node_id: inner.node_id.clone(),
            updates,
        };
        match client.update_allocs(&req).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                tracing::warn!("reporting allocation status: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn stats_loop(inner: Arc<AgentInner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Some((cpu, memory)) = host::sample(std::path::Path::new("/proc")) {
            let mut h = inner.host.lock().unwrap();
            if let Some(prev) = h.0 {
                h.1 = Some(NodeUsage {
                    cpu_mhz: host::cpu_mhz_between(prev, cpu, inner.total_mhz),
                    memory: ByteSize(memory),
                    at: taba_driver::now_ms(),
                });
            }
            h.0 = Some(cpu);
        }
        let runners: Vec<Arc<AllocRunner>> =
            inner.runners.lock().unwrap().values().cloned().collect();
        for r in runners {
            if r.is_finished() {
                inner.usage.lock().unwrap().remove(r.id());
                continue;
            }
            let r2 = r.clone();
            let Ok(Some(mut u)) = tokio::task::spawn_blocking(move || r2.usage()).await else {
                continue;
            };
            let mut usage = inner.usage.lock().unwrap();
            if let Some(prev) = usage.get(r.id()) {
                let dt_ms = u.at.saturating_sub(prev.at).max(1);
                let dns = u.cpu_total_ns.saturating_sub(prev.cpu_total_ns);
                // cores busy = dns / (dt_ms * 1e6); MHz = cores * MHz per core.
                u.cpu_mhz = dns * inner.mhz_per_core / (dt_ms * 1_000_000);
            }
            usage.insert(r.id().clone(), u);
            let _ = inner.ctx.changed.send(r.id().clone());
        }
    }
}
