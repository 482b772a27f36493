//! How a server is set up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use taba_scheduler::rebalance::RebalanceConfig;
use taba_scheduler::PreemptionConfig;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the server keeps files of its own (image uploads in flight).
    pub data_dir: PathBuf,
    /// Address of the HTTP API; port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// More addresses the same API listens on (`taba dev --agents`: the
    /// bridge the agents reach it through); port 0 takes `http_addr`'s port.
    pub extra_http: Vec<SocketAddr>,
    /// A node not heard from within this is `disconnected`: nothing new
    /// is placed on it. Its agent heartbeats every third of it.
    pub heartbeat_ttl: Duration,
    /// ... and `down` this much later: its allocations are lost and
    /// replaced elsewhere at once. Down after TTL + grace (7 s by default).
    pub heartbeat_grace: Duration,
    /// A node down for this long (since its last heartbeat) is removed.
    pub node_gc_after: Duration,
    /// Scheduler workers.
    pub num_workers: usize,
    /// Longest wait of a blocking query.
    pub max_blocking_wait: Duration,
    /// Attempts to commit a plan for one evaluation before it is failed.
    pub max_plan_attempts: u32,
    /// Which job types may evict lower-priority allocations
    /// (`[scheduler] preemption` in the configuration file).
    pub preemption: PreemptionConfig,
    /// Load-aware rebalancing.
    pub rebalance: RebalanceSettings,
    /// Time between the drainer's rounds over draining nodes.
    pub drain_interval: Duration,
    /// Access control.
    pub acl: AclSettings,
    /// Longest wait for an agent's `alloc exec` answer (the agent's own
    /// timeout, 5 minutes by default, plus a margin).
    pub exec_timeout: Duration,
    /// Largest output of one `alloc exec` stream the server relays, bytes.
    pub exec_max_output: u64,
    /// TLS of the API (and of the server's calls to agents). Without it the
    /// server listens only on loopback.
    pub tls: Option<ServerTls>,
    /// Caps on what clients send (`[limits]`; the image store's own caps
    /// are set on the store).
    pub limits: InputLimits,
    /// Under TLS, listeners on loopback addresses serve plain HTTP to local
    /// callers (`[tls] plain_loopback`; the CLI of `taba dev --agents`);
    /// agent routes still need a certificate, so agents use the others.
    pub plain_loopback: bool,
    /// How images are pulled from registries (`[registry]`): per-registry plain HTTP and
    /// CA certificates, timeouts, a Docker config for credentials.
    pub registry: taba_registry::RegistryConfig,
    /// The event stream (`[events]`): how many recent events are kept for
    /// resuming, how far a subscriber may fall behind, how often a quiet
    /// stream gets a keep-alive line.
    pub events: EventSettings,
}

/// `[events]`: the event broker's bounds (docs/events.md).
#[derive(Clone, Debug)]
pub struct EventSettings {
    /// Events kept in memory for subscribers that resume from an index.
    pub buffer: usize,
    /// Events queued for one subscriber; one that falls further behind is
    /// cut (with a last line saying so) instead of slowing commits.
    pub subscriber_queue: usize,
    /// Most subscribers at once (more are refused with 503).
    pub max_subscribers: usize,
    /// A keep-alive line after this long without an event.
    pub heartbeat: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            buffer: 4096,
            subscriber_queue: 1024,
            max_subscribers: 1024,
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// TLS settings of a server (`[tls]` in its configuration file).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// CA certificate, the server's certificate and key.
    pub files: taba_tls::TlsFiles,
    /// The CA's key: lets the server sign certificates for agents that join
    /// with a token. Without it join tokens are refused under TLS.
    pub ca_key: Option<PathBuf>,
}

/// `[limits]` of the server's configuration: caps on request bodies.
#[derive(Clone, Debug)]
pub struct InputLimits {
    /// Largest JSON body of ordinary routes, bytes (job files and ACL
    /// policies have caps of their own).
    pub max_request_body: usize,
    /// Largest image archive `taba image import` may upload, bytes.
    pub max_image_upload: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_request_body: crate::api::extract::MAX_JSON_BODY,
            max_image_upload: taba_image::ImageLimits::default().max_archive,
        }
    }
}

/// `[acl]` of the server's configuration.
#[derive(Clone, Debug)]
pub struct AclSettings {
    /// Enforce ACL tokens on every route (on by default). When off, every
    /// user route is open to anyone who reaches the API.
    pub enabled: bool,
}

impl Default for AclSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Settings of the rebalancer (see `taba_scheduler::rebalance`).
#[derive(Clone, Debug)]
pub struct RebalanceSettings {
    /// On by default; operators can turn it off.
    pub enabled: bool,
    /// Time between rounds.
    pub interval: Duration,
    /// Thresholds, moves per round and per-node cooldown.
    pub plan: RebalanceConfig,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            plan: RebalanceConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Defaults for a server keeping files in `data_dir`, listening on `http_addr`.
    pub fn new(data_dir: impl Into<PathBuf>, http_addr: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_addr,
            extra_http: Vec::new(),
            heartbeat_ttl: Duration::from_secs(5),
            heartbeat_grace: Duration::from_secs(2),
            node_gc_after: Duration::from_secs(24 * 3600),
            num_workers: 2,
            max_blocking_wait: Duration::from_secs(300),
            max_plan_attempts: 5,
            preemption: PreemptionConfig::default(),
            rebalance: RebalanceSettings::default(),
            drain_interval: Duration::from_millis(500),
            acl: AclSettings::default(),
            exec_timeout: Duration::from_secs(310),
            exec_max_output: 16 << 20,
            limits: InputLimits::default(),
            tls: None,
            plain_loopback: false,
            registry: taba_registry::RegistryConfig::default(),
            events: EventSettings::default(),
        }
    }
}
