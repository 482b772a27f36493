//! The taba agent: one per host. It fingerprints the host, registers it with
//! the servers, heartbeats, watches the allocations assigned to it, runs them
//! through drivers, reports their state and usage, and serves their logs and
//! `exec` on its own small HTTP API.
//!
//! It must not schedule: it runs what the servers assigned.
#![deny(unsafe_code)]

pub mod api;
mod client;
mod exec_session;
pub mod fingerprint;
pub mod host;
pub mod images;
pub mod logs;
pub mod runner;
pub mod state;

pub mod join;
pub mod leftovers;

pub use client::{normalize_base, ClientError, ServerClient};

use runner::{AllocRunner, RunnerCtx};
use state::StateDir;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taba_driver::Driver;
use taba_image::ImageStore;
use taba_types::wire::{AllocUpdate, AllocUpdateRequest, RegisterRequest, PROTOCOL};
use taba_types::{
    AllocId, AllocUsage, ByteSize, DriverInfo, Eligibility, Node, NodeId, NodeResources,
    NodeStatus, NodeUsage, PortRange, PortRanges,
};
use tokio::sync::{mpsc, watch, Notify};

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data dir is unusable.
    #[error("agent state")]
    State(#[from] state::StateError),
    /// The API listens on every address and no address to advertise could be
    /// found from the route to the server.
    #[error("http: {listen} listens on every address and no route to the server {server} names one; set `advertise` to the address the servers reach this node at")]
    NoAdvertise {
        /// The listen address.
        listen: SocketAddr,
        /// The server URL.
        server: String,
    },
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

/// What the node offers, overriding the fingerprint's whole-host figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// CPU, MHz.
    pub cpu: Option<u64>,
    /// Memory.
    pub memory: Option<ByteSize>,
}

impl Capacity {
    /// The fingerprinted resources with these overrides applied. Cores
    /// follow the CPU share (at least one, at most the host's).
    pub fn apply(&self, host: &NodeResources, mhz_per_core: u64) -> NodeResources {
        let mut r = host.clone();
        if let Some(cpu) = self.cpu {
            r.cpu = cpu;
            let cores = cpu
                .div_ceil(mhz_per_core.max(1))
                .clamp(1, u64::from(host.cores.max(1)));
            r.cores = cores as u32;
        }
        if let Some(m) = self.memory {
            r.memory = m;
        }
        r
    }
}

/// Where an agent's measured use (reported in heartbeats; the rebalancer
/// reads it) comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UsageSource {
    /// The whole host: `/proc/stat` and `/proc/meminfo`. Right when the
    /// agent is alone on its host: everything that runs there loads it.
    #[default]
    Host,
    /// The sum of this node's allocations, from their cgroups. Right when
    /// several agents share a host (`taba dev --agents N`).
    Allocations,
}

impl std::str::FromStr for UsageSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Self::Host),
            "allocations" => Ok(Self::Allocations),
            _ => Err(format!("{s:?} is not \"host\" or \"allocations\"")),
        }
    }
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
    /// The address the servers reach the agent's API at (and tasks see as the
    /// node's). Port 0: the port the API is bound to. None: the listen
    /// address, or when that is unspecified (`0.0.0.0`) the local address of
    /// the route to the server.
    pub advertise: Option<SocketAddr>,
    /// CPU (MHz) and memory the node offers; None: the whole host. Agents
    /// that share a host each offer a part of it.
    pub capacity: Capacity,
    /// Where the node's measured use comes from.
    pub usage_source: UsageSource,
    /// Cgroup under which the allocations' cgroups are made (`taba`).
    pub cgroup_parent: String,
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
            advertise: None,
            capacity: Capacity::default(),
            usage_source: UsageSource::Host,
            cgroup_parent: "taba".into(),
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
    /// Where the node's measured use comes from.
    usage_source: UsageSource,
    /// When the last request that a server answered was sent (or the
    /// agent started): what fencing (`stop_after_disconnect`) counts from.
    last_contact: Mutex<Instant>,
    /// Woken when a server says it does not know this node: register again.
    reregister: Notify,
    /// Caps of `alloc exec`.
    exec_limits: api::ExecLimits,
    /// Interactive exec sessions open, per allocation.
    exec_sessions: exec_session::Sessions,
}

impl AgentInner {
    /// A server answered a request sent at `sent`.
    fn contact(&self, sent: Instant) {
        let mut last = self.last_contact.lock().unwrap();
        if sent > *last {
            *last = sent;
        }
    }

    /// How long since a server last answered.
    pub fn since_contact(&self) -> Duration {
        self.last_contact.lock().unwrap().elapsed()
    }

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
    /// The address the servers reach the agent API at.
    pub advertise: SocketAddr,
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

    let unusable_reason = unusable_reason(&fp, &driver_infos);
    if !unusable_reason.is_empty() {
        tracing::error!(
            reason = %unusable_reason,
            "this node cannot run workloads; it registers as unusable and nothing is placed on it"
        );
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
    let advertised = advertise_addr(&config, http_addr)?;
    let resources = config.capacity.apply(&fp.resources, fp.mhz_per_core);

    let node = Node {
        id: node_id.clone(),
        name,
        datacenter: config.datacenter.clone(),
        status: NodeStatus::Initializing,
        eligibility: Eligibility::Eligible,
        drain: None,
        drained_at: None,
        http_addr: advertised.to_string(),
        attributes,
        meta: config.meta.clone(),
        resources: resources.clone(),
        reserved: config.reserved.clone(),
        reserved_ports: config.reserved_ports.clone(),
        dynamic_ports: config.dynamic_ports,
        drivers: driver_infos,
        last_heartbeat: 0,
        usage: NodeUsage::default(),
        unusable_reason,
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
        node_ip: advertised.ip(),
        cgroup_parent: config.cgroup_parent.clone(),
    });
    let inner = Arc::new(AgentInner {
        node_id: node_id.clone(),
        ctx,
        runners: Mutex::new(HashMap::new()),
        usage: Mutex::new(HashMap::new()),
        mhz_per_core: fp.mhz_per_core.max(1),
        total_mhz: resources.cpu,
        host: Mutex::new((None, None)),
        usage_source: config.usage_source,
        last_contact: Mutex::new(Instant::now()),
        reregister: Notify::new(),
        exec_limits: config.exec_limits,
        exec_sessions: exec_session::Sessions::default(),
    });

    // What a killed agent left for allocations it no longer knows goes
    // first; then resume what it left running, before talking to anyone.
    leftovers::sweep(&inner.ctx.state_dir, &inner.ctx.cgroup_parent);
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
    tasks.push(tokio::spawn(fence_loop(inner.clone())));
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
        advertise: advertised,
        shutdown,
        tasks,
    })
}

/// The address the servers reach this node's API at, which tasks also see
/// as the node's: `advertise` (its port 0 = the bound port), else the bound
/// address, else, when that is unspecified (`0.0.0.0`), the local address of
/// the route to the first server there is one to. Never an unspecified
/// address.
fn advertise_addr(config: &AgentConfig, bound: SocketAddr) -> Result<SocketAddr, AgentError> {
    let with_port = |mut a: SocketAddr| {
        if a.port() == 0 {
            a.set_port(bound.port());
        }
        a
    };
    if let Some(a) = config.advertise {
        return Ok(with_port(a));
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    config
        .servers
        .iter()
        .filter_map(|s| route_to(s))
        .find(|ip| ip.is_ipv4() == bound.is_ipv4())
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .ok_or_else(|| AgentError::NoAdvertise {
            listen: config.http_addr,
            server: config.servers.join(", "),
        })
}

/// The local address the kernel would use to reach the server at `url`
/// (`http://host:port`): a UDP socket "connected" to it sends nothing.
fn route_to(url: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    let target = hostport.to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(target).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
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
        let sent = Instant::now();
        // Only a server of protocol 4 or later answers with deltas.
        let delta;
        match client.register(&req).await {
            Ok(resp) => {
                inner.contact(sent);
                delta = resp.protocol >= 4;
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
            let sent = Instant::now();
            let resp = tokio::select! {
                r = client.allocations(&inner.node_id, index, Duration::from_secs(30), delta) => r,
                _ = inner.reregister.notified() => {
                    tracing::warn!("the server no longer knows this node; registering again");
                    continue 'register;
                }
            };
            match resp {
                Ok(resp) => {
                    inner.contact(sent);
                    index = resp.index;
                    let unchanged = resp.delta.then_some(resp.unchanged);
                    reconcile(&inner, resp.allocs, unchanged).await;
                }
                Err(e) if e.is_unknown_node() => {
                    // The server forgot us (removed, lost state): register again.
                    tracing::warn!("{e}; registering again");
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

/// Make the runners match the servers' view of this node: `allocs`, and
/// with a delta answer the `unchanged` ones the runners already have.
async fn reconcile(
    inner: &Arc<AgentInner>,
    allocs: Vec<taba_types::Allocation>,
    unchanged: Option<Vec<AllocId>>,
) {
    let mut seen: std::collections::HashSet<AllocId> = unchanged.into_iter().flatten().collect();
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
    let mut failing = false;
    loop {
        let period = *ttl.lock().unwrap() / 3;
        tokio::time::sleep(period.max(Duration::from_millis(50))).await;
        // The host's real use; the sum of the allocations' until it is
        // sampled, or always when so configured.
        let host = inner.host.lock().unwrap().1.clone();
        let usage = host.unwrap_or_else(|| {
            let u = inner.usage.lock().unwrap();
            NodeUsage {
                cpu_mhz: u.values().map(|x| x.cpu_mhz).sum(),
                memory: ByteSize(u.values().map(|x| x.memory.0).sum()),
                at: taba_driver::now_ms(),
            }
        });
        let sent = Instant::now();
        let timeout = (period * 2).max(Duration::from_millis(500));
        match client.heartbeat(&inner.node_id, usage, timeout).await {
            Ok(r) => {
                inner.contact(sent);
                *ttl.lock().unwrap() = Duration::from_millis(r.heartbeat_ttl_ms.max(100));
                if std::mem::take(&mut failing) {
                    // Back after a broken link: the servers may have marked
                    // our allocations lost; report every one as it is.
                    tracing::info!("the server answers again; reporting every allocation");
                    let ids: Vec<AllocId> = inner.runners.lock().unwrap().keys().cloned().collect();
                    for id in ids {
                        let _ = inner.ctx.changed.send(id);
                    }
                }
            }
            Err(e) if e.is_unknown_node() => {
                tracing::warn!("heartbeat: {e}");
                inner.reregister.notify_one();
            }
            Err(e) => {
                failing = true;
                tracing::warn!("heartbeat: {e}");
            }
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
        let sent = Instant::now();
        match client.update_allocs(&req).await {
            Ok(()) => {
                inner.contact(sent);
                pending.clear();
            }
            Err(e) => {
                tracing::warn!("reporting allocation status: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Fencing: every 250 ms, stop the allocations of groups with
/// `stop_after_disconnect` once no server has answered for that long. The
/// servers replace them only after that time (plus the kill timeout) has
/// passed since the node's last heartbeat, so the two never run at once.
async fn fence_loop(inner: Arc<AgentInner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let silent = inner.since_contact();
        let runners: Vec<Arc<AllocRunner>> =
            inner.runners.lock().unwrap().values().cloned().collect();
        for r in runners {
            let Some(limit) = r.stop_after_disconnect() else {
                continue;
            };
            if silent < limit || r.is_finished() || r.is_fenced() {
                continue;
            }
            let reason = format!(
                "no server answered for {:.1}s (stop_after_disconnect = {}s)",
                silent.as_secs_f64(),
                limit.as_secs_f64()
            );
            tracing::warn!(alloc = %r.id(), %reason, "fencing: stopping the allocation");
            r.fence(reason);
        }
    }
}

/// Why this node cannot run workloads, or empty: no usable cgroups, or no
/// driver that can start anything.
fn unusable_reason(
    fp: &fingerprint::Fingerprint,
    drivers: &BTreeMap<String, DriverInfo>,
) -> String {
    let mut why = Vec::new();
    if let Some(e) = &fp.cgroup_error {
        why.push(format!(
            "no usable cgroups ({e}); an agent started with `ip netns exec` sees a /sys \
             remounted without them: mount the cgroup hierarchies in its mount namespace, \
             or start it with `nsenter --net` instead"
        ));
    }
    if !drivers.values().any(|d| d.detected && d.healthy) {
        let each: Vec<String> = drivers
            .iter()
            .map(|(k, d)| format!("{k}: {}", d.description))
            .collect();
        why.push(format!("no healthy driver ({})", each.join("; ")));
    }
    why.join("; ")
}

async fn stats_loop(inner: Arc<AgentInner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let sample = match inner.usage_source {
            UsageSource::Host => host::sample(std::path::Path::new("/proc")),
            UsageSource::Allocations => None,
        };
        if let Some((cpu, memory)) = sample {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(http: &str, server: &str, advertise: Option<&str>) -> AgentConfig {
        let mut c = AgentConfig::new("/nonexistent".into(), server.into());
        c.http_addr = http.parse().unwrap();
        c.advertise = advertise.map(|a| a.parse().unwrap());
        c
    }

    #[test]
    fn advertises_never_an_unspecified_address() {
        let bound: SocketAddr = "0.0.0.0:4700".parse().unwrap();
        // Derived from the route to the server.
        let c = cfg("0.0.0.0:0", "http://127.0.0.1:4646", None);
        assert_eq!(
            advertise_addr(&c, bound).unwrap(),
            "127.0.0.1:4700".parse::<SocketAddr>().unwrap()
        );
        // Given: its port 0 takes the bound port.
        let c = cfg("0.0.0.0:0", "http://127.0.0.1:4646", Some("10.1.2.3:0"));
        assert_eq!(
            advertise_addr(&c, bound).unwrap(),
            "10.1.2.3:4700".parse::<SocketAddr>().unwrap()
        );
        let c = cfg("0.0.0.0:0", "http://127.0.0.1:4646", Some("10.1.2.3:9000"));
        assert_eq!(advertise_addr(&c, bound).unwrap().port(), 9000);
        // A specific listen address is advertised as is.
        let c = cfg("127.0.0.2:0", "http://127.0.0.1:4646", None);
        let b: SocketAddr = "127.0.0.2:4701".parse().unwrap();
        assert_eq!(advertise_addr(&c, b).unwrap(), b);
        // No route (the port is out of range: nothing is looked up or sent)
        // and nothing given: refused, naming the keys.
        let c = cfg("0.0.0.0:0", "http://127.0.0.1:99999", None);
        let e = advertise_addr(&c, bound).unwrap_err().to_string();
        assert!(e.contains("advertise") && e.contains("http:"), "{e}");
    }

    #[test]
    fn capacity_overrides_the_host() {
        let host = NodeResources {
            cores: 2,
            cpu: 4000,
            memory: ByteSize(8 << 30),
            disk: ByteSize(100 << 30),
        };
        assert_eq!(Capacity::default().apply(&host, 2000), host);
        let c = Capacity {
            cpu: Some(1333),
            memory: Some(ByteSize(2 << 30)),
        };
        let r = c.apply(&host, 2000);
        assert_eq!(
            (r.cores, r.cpu, r.memory, r.disk),
            (1, 1333, ByteSize(2 << 30), host.disk)
        );
        assert_eq!("allocations".parse(), Ok(UsageSource::Allocations));
        assert!("hosts"
            .parse::<UsageSource>()
            .unwrap_err()
            .contains("\"hosts\""));
    }
}
