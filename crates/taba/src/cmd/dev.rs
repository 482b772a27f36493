//! `taba dev`, `taba server`, `taba agent`: the long-running modes.
//!
//! `taba dev` runs a server and an agent in one process with an embedded
//! store under one data dir:
//!
//! ```text
//! <data-dir>/server/state.redb   the store
//! <data-dir>/images/             the image store (shared by server and agent)
//!
//! `taba agent` keeps its own image store (`images_dir`, by default
//! `<data_dir>/images`) and fetches the images its tasks need from the
//! servers; nothing needs to be shared between hosts.
//! <data-dir>/agent/              the agent's node id, allocations and logs
//! <data-dir>/dev-token           the management token (0600)
//! ```
//!
//! `taba dev` starts with ACLs bootstrapped: it keeps its management token
//! in `<data-dir>/dev-token` and writes it where the CLI looks for the
//! token of its address (see [`super::acl`]), so the CLI needs no flag.
//!
//! Stopping it (Ctrl-C, SIGTERM, or even kill -9) leaves workloads running:
//! the next start re-attaches to them. `taba job stop` stops workloads.

use super::GlobalArgs;
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taba_agent::AgentConfig;
use taba_driver::{Driver, IsolationPolicy};
use taba_image::ImageStore;
use taba_server::{Server, ServerConfig};
use taba_store::{RedbStore, Store};

/// Arguments of `taba dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where state is kept.
    #[arg(long, default_value = "/var/lib/taba-dev")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:4646")]
    pub http: SocketAddr,
    /// Node name of the built-in agent (the hostname by default).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Heartbeat TTL of nodes, e.g. "10s".
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,
    /// Turn off the rebalancer (on by default).
    #[arg(long)]
    pub no_rebalance: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    taba_types::DurationSpec::parse(s).map(|d| d.as_duration())
}

/// Arguments of `taba server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `taba agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `taba server` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    #[serde(default = "default_server_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_http")]
    http: SocketAddr,
    #[serde(default)]
    heartbeat_ttl: Option<taba_types::DurationSpec>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    scheduler: SchedulerFile,
    #[serde(default)]
    rebalance: Option<RebalanceFile>,
    /// Longest wait for an agent's `alloc exec` answer.
    #[serde(default)]
    exec_timeout: Option<taba_types::DurationSpec>,
    /// Largest `alloc exec` output relayed, per stream.
    #[serde(default)]
    exec_max_output: Option<taba_types::ByteSize>,
    #[serde(default)]
    acl: AclFile,
    #[serde(default)]
    tls: Option<TlsFile>,
}

/// `[acl]` of the server's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    /// Enforce tokens (on by default).
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for AclFile {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn yes() -> bool {
    true
}

/// `[tls]` of the server and agent files (docs/configuration.md, "TLS").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_cert: PathBuf,
    /// Optional for an agent with a join_token (default <data_dir>/tls/agent.pem).
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    /// Server only: the CA key, to sign certificates for agents that join.
    #[serde(default)]
    ca_key: Option<PathBuf>,
}

impl TlsFile {
    /// The files, with defaults under `dir` for an agent that joins.
    fn files(&self, default_dir: Option<&Path>) -> anyhow::Result<taba_tls::TlsFiles> {
        let pick = |v: &Option<PathBuf>, name: &str, key: &str| match (v, default_dir) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(d)) => Ok(d.join(name)),
            (None, None) => Err(anyhow::anyhow!("configuration: tls.{key}: required")),
        };
        Ok(taba_tls::TlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: pick(&self.cert, "agent.pem", "cert")?,
            key: pick(&self.key, "agent-key.pem", "key")?,
        })
    }
}

/// `[scheduler]` of the server configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerFile {
    /// `preemption = { service = true, batch = false, system = true }`.
    #[serde(default)]
    preemption: PreemptionFile,
}

/// Which job types may preempt; an omitted one keeps its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreemptionFile {
    service: Option<bool>,
    batch: Option<bool>,
    system: Option<bool>,
}

impl PreemptionFile {
    fn config(&self) -> taba_scheduler::PreemptionConfig {
        let d = taba_scheduler::PreemptionConfig::default();
        taba_scheduler::PreemptionConfig {
            service: self.service.unwrap_or(d.service),
            batch: self.batch.unwrap_or(d.batch),
            system: self.system.unwrap_or(d.system),
        }
    }
}

/// `[rebalance]` of the server's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceFile {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    interval: Option<taba_types::DurationSpec>,
    #[serde(default)]
    high_water: Option<f64>,
    #[serde(default)]
    target: Option<f64>,
    #[serde(default)]
    max_moves: Option<usize>,
    #[serde(default)]
    cooldown: Option<taba_types::DurationSpec>,
}

impl RebalanceFile {
    /// Apply to `s`, checking ranges; errors name the key.
    fn apply(&self, s: &mut taba_server::RebalanceSettings) -> anyhow::Result<()> {
        if let Some(e) = self.enabled {
            s.enabled = e;
        }
        if let Some(i) = self.interval {
            anyhow::ensure!(i.0 >= 1000, "rebalance.interval: must be at least 1s");
            s.interval = i.as_duration();
        }
        if let Some(h) = self.high_water {
            s.plan.high_water = h;
        }
        if let Some(t) = self.target {
            s.plan.target = t;
        }
        anyhow::ensure!(
            s.plan.high_water > 0.0 && s.plan.high_water <= 1.0,
            "rebalance.high_water: must be a share in (0, 1], e.g. 0.85"
        );
        anyhow::ensure!(
            s.plan.target > 0.0 && s.plan.target < s.plan.high_water,
            "rebalance.target: must be a share above 0 and below high_water ({})",
            s.plan.high_water
        );
        if let Some(m) = self.max_moves {
            anyhow::ensure!(
                (1..=10_000).contains(&m),
                "rebalance.max_moves: must be between 1 and 10000"
            );
            s.plan.max_moves = m;
        }
        if let Some(c) = self.cooldown {
            s.plan.cooldown_ms = c.0;
        }
        Ok(())
    }
}

/// `taba agent` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default = "default_agent_dir")]
    data_dir: PathBuf,
    /// One server (the older key); `servers` lists several.
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    join_token: Option<String>,
    #[serde(default)]
    tls: Option<TlsFile>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    datacenter: Option<String>,
    #[serde(default = "default_agent_http")]
    http: SocketAddr,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    images_dir: Option<PathBuf>,
    #[serde(default)]
    reserved: ReservedFile,
    #[serde(default)]
    ports: PortsFile,
    #[serde(default)]
    isolation: IsolationFile,
    /// Longest `alloc exec` run.
    #[serde(default)]
    exec_timeout: Option<taba_types::DurationSpec>,
    /// Largest `alloc exec` output kept, per stream.
    #[serde(default)]
    exec_max_output: Option<taba_types::ByteSize>,
}

/// `[isolation]` of the agent file: what this node grants workloads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolationFile {
    /// Capabilities tasks may add (`cap_add`); Docker's default set if unset.
    #[serde(default)]
    cap_add_allowed: Option<Vec<String>>,
    /// Whether `exec` tasks may run as root.
    #[serde(default = "yes")]
    allow_root_exec: bool,
}

impl Default for IsolationFile {
    fn default() -> Self {
        Self {
            cap_add_allowed: None,
            allow_root_exec: true,
        }
    }
}

impl IsolationFile {
    /// The policy; unknown capability names are an error naming the key.
    fn policy(&self, file: Option<&Path>) -> anyhow::Result<IsolationPolicy> {
        let mut p = IsolationPolicy {
            allow_root_exec: self.allow_root_exec,
            ..IsolationPolicy::default()
        };
        if let Some(list) = &self.cap_add_allowed {
            p.cap_add_allowed = Vec::new();
            for (i, c) in list.iter().enumerate() {
                if c.eq_ignore_ascii_case("ALL") {
                    p.cap_add_allowed.push("ALL".into());
                    continue;
                }
                let name = taba_types::security::capability(c).with_context(|| {
                    format!(
                        "configuration {}: isolation.cap_add_allowed[{i}]: unknown capability {c:?}",
                        file.map(|p| p.display().to_string()).unwrap_or_default()
                    )
                })?;
                p.cap_add_allowed.push(name.to_string());
            }
        }
        Ok(p)
    }
}

/// `[reserved]` of the agent file: what the host keeps for itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservedFile {
    #[serde(default)]
    cpu: u64,
    #[serde(default)]
    memory: taba_types::ByteSize,
    #[serde(default)]
    disk: taba_types::ByteSize,
    /// `"22,80,8000-8100"`.
    #[serde(default)]
    ports: String,
}

/// `[ports]` of the agent file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsFile {
    /// `"20000-32000"`.
    #[serde(default)]
    dynamic: Option<String>,
}

impl AgentFile {
    /// Apply the `[reserved]` and `[ports]` tables; errors name the key.
    fn apply_reserved(&self, ac: &mut AgentConfig, file: Option<&Path>) -> anyhow::Result<()> {
        let file = file.map(|p| p.display().to_string()).unwrap_or_default();
        ac.reserved.cpu = self.reserved.cpu;
        ac.reserved.memory = self.reserved.memory;
        ac.reserved.disk = self.reserved.disk;
        ac.reserved_ports = taba_types::PortRanges::parse(&self.reserved.ports)
            .with_context(|| format!("configuration {file}: reserved.ports"))?;
        if let Some(d) = &self.ports.dynamic {
            ac.dynamic_ports = taba_types::PortRange::parse(d)
                .with_context(|| format!("configuration {file}: ports.dynamic"))?;
        }
        Ok(())
    }
}

fn default_server_dir() -> PathBuf {
    "/var/lib/taba/server".into()
}
fn default_agent_dir() -> PathBuf {
    "/var/lib/taba/agent".into()
}
fn default_http() -> SocketAddr {
    "127.0.0.1:4646".parse().expect("static address")
}
fn default_agent_http() -> SocketAddr {
    "127.0.0.1:4647".parse().expect("static address")
}
fn default_server_url() -> String {
    "http://127.0.0.1:4646".into()
}

impl AgentFile {
    /// `servers`, else `server`, else the local default.
    fn server_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.server.iter().cloned().collect();
        v.extend(self.servers.iter().cloned());
        if v.is_empty() {
            v.push(default_server_url());
        }
        v
    }
}

fn read_config<T: serde::de::DeserializeOwned>(path: Option<&Path>) -> anyhow::Result<T> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading configuration {}", p.display()))?,
        None => String::new(),
    };
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "configuration {}: {}",
            path.map(|p| p.display().to_string()).unwrap_or_default(),
            e.message()
        )
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TABA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run `f` on a fresh runtime, then drop the runtime without waiting for
/// blocking threads: those that wait on running workloads never end on their
/// own, and the workloads keep running for the next start to re-attach.
fn run_async<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let result = rt.block_on(f);
    rt.shutdown_background();
    result
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(256)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn drivers(
    images: Arc<ImageStore>,
    policy: IsolationPolicy,
) -> anyhow::Result<Vec<Arc<dyn Driver>>> {
    let exe = std::env::current_exe().context("locating the taba binary for task shims")?;
    Ok(vec![
        Arc::new(taba_driver::exec::ExecDriver::new(exe.clone()).with_policy(policy.clone())),
        Arc::new(taba_driver::container::ContainerDriver::new(exe, images).with_policy(policy)),
    ])
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Run `taba dev`.
pub fn run_dev(_g: &GlobalArgs, a: DevArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    run_async(async move {
        taba_agent::state::private_dir(&a.data_dir)
            .with_context(|| format!("creating {}", a.data_dir.display()))?;
        let store_path = a.data_dir.join("server").join("state.redb");
        std::fs::create_dir_all(store_path.parent().expect("has a parent"))?;
        let store: Arc<dyn Store> = Arc::new(
            RedbStore::open(&store_path)
                .with_context(|| format!("opening the store {}", store_path.display()))?,
        );
        let images = Arc::new(
            ImageStore::open(&a.data_dir.join("images")).context("opening the image store")?,
        );
        let mut sc = ServerConfig::new(a.data_dir.join("server"), a.http);
        sc.heartbeat_ttl = a.heartbeat_ttl;
        sc.rebalance.enabled = !a.no_rebalance;
        let server = Server::start(sc, store, images.clone())
            .await
            .context("starting the server")?;
        let addr = server.addr();
        let secret =
            super::acl::dev_management_token(server.state(), &a.data_dir.join("dev-token")).await?;
        for f in super::acl::write_token_files(addr, &secret)? {
            eprintln!("taba dev: management token in {}", f.display());
        }
        let mut ac = AgentConfig::new(a.data_dir.join("agent"), format!("http://{addr}"));
        ac.name = a.node_name.clone();
        ac.images = Some(images.clone());
        let agent = taba_agent::start(ac, drivers(images, IsolationPolicy::default())?)
            .await
            .context("starting the agent")?;
        eprintln!(
            "taba dev: API on http://{addr}; node {} ready",
            agent.node_id
        );
        shutdown_signal().await;
        eprintln!("taba dev: shutting down (workloads keep running)");
        agent.shutdown().await;
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Run `taba server`.
pub fn run_server(_g: &GlobalArgs, a: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let cfg: ServerFile = read_config(a.config.as_deref())?;
    run_async(async move {
        taba_agent::state::private_dir(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&cfg.data_dir.join("state.redb"))?);
        let images = Arc::new(ImageStore::open(&cfg.data_dir.join("images"))?);
        let mut sc = ServerConfig::new(cfg.data_dir.clone(), cfg.http);
        if let Some(t) = cfg.heartbeat_ttl {
            sc.heartbeat_ttl = t.as_duration();
        }
        if let Some(w) = cfg.workers {
            sc.num_workers = w.max(1);
        }
        if let Some(t) = cfg.exec_timeout {
            sc.exec_timeout = t.as_duration();
        }
        if let Some(m) = cfg.exec_max_output {
            sc.exec_max_output = m.0;
        }
        sc.preemption = cfg.scheduler.preemption.config();
        if let Some(r) = &cfg.rebalance {
            r.apply(&mut sc.rebalance)?;
        }
        sc.acl.enabled = cfg.acl.enabled;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        if let Some(t) = &cfg.tls {
            sc.tls = Some(taba_server::ServerTls {
                files: t.files(None)?,
                ca_key: t.ca_key.clone(),
            });
        }
        let server = Server::start(sc, store, images).await?;
        eprintln!("taba server: API on {scheme}://{}", server.addr());
        let acl = &server.state().acl;
        if !acl.enabled() {
            tracing::warn!(
                "ACLs are off ([acl] enabled = false): anyone who reaches the API may do anything"
            );
        } else if !acl.bootstrapped() {
            eprintln!("taba server: ACLs are not bootstrapped; only `taba acl bootstrap` is answered until then");
        }
        shutdown_signal().await;
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Run `taba agent`.
pub fn run_agent(_g: &GlobalArgs, a: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let cfg: AgentFile = read_config(a.config.as_deref())?;
    run_async(async move {
        let images_dir = cfg
            .images_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("images"));
        let images = Arc::new(
            ImageStore::open(&images_dir)
                .with_context(|| format!("opening the image store {}", images_dir.display()))?,
        );
        let mut ac = AgentConfig::new(cfg.data_dir.clone(), String::new());
        ac.images = Some(images.clone());
        ac.servers = cfg.server_list();
        ac.join_token = cfg.join_token.clone();
        if let Some(t) = &cfg.tls {
            anyhow::ensure!(
                t.ca_key.is_none(),
                "configuration: tls.ca_key: only servers hold the CA key"
            );
            let dir = cfg.data_dir.join("tls");
            ac.tls = Some(t.files(Some(&dir))?);
        }
        ac.name = cfg.name.clone();
        if let Some(dc) = cfg.datacenter.clone() {
            ac.datacenter = dc;
        }
        ac.http_addr = cfg.http;
        ac.meta = cfg.meta.clone();
        cfg.apply_reserved(&mut ac, a.config.as_deref())?;
        let policy = cfg.isolation.policy(a.config.as_deref())?;
        if let Some(t) = cfg.exec_timeout {
            ac.exec_limits.timeout = t.as_duration();
        }
        if let Some(m) = cfg.exec_max_output {
            ac.exec_limits.max_output = m.0;
        }
        let agent = taba_agent::start(ac, drivers(images, policy)?).await?;
        eprintln!(
            "taba agent: node {} (API {})",
            agent.node_id, agent.http_addr
        );
        shutdown_signal().await;
        agent.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_file_reads_isolation_policy() {
        let cfg: AgentFile = toml::from_str(
            "[isolation]\ncap_add_allowed = [\"net_admin\", \"CAP_SYS_PTRACE\"]\nallow_root_exec = false\n",
        )
        .unwrap();
        let p = cfg.isolation.policy(None).unwrap();
        assert_eq!(p.cap_add_allowed, vec!["NET_ADMIN", "SYS_PTRACE"]);
        assert!(!p.allow_root_exec);
        let cfg: AgentFile = toml::from_str("").unwrap();
        assert_eq!(
            cfg.isolation.policy(None).unwrap(),
            IsolationPolicy::default()
        );
        let cfg: AgentFile = toml::from_str("[isolation]\ncap_add_allowed = [\"FLY\"]\n").unwrap();
        let e = cfg.isolation.policy(None).unwrap_err().to_string();
        assert!(
            e.contains("isolation.cap_add_allowed[0]: unknown capability"),
            "{e}"
        );
    }

    #[test]
    fn agent_file_reads_servers_tls_and_join_token() {
        let cfg: AgentFile = toml::from_str("").unwrap();
        assert_eq!(cfg.server_list(), vec!["http://127.0.0.1:4646".to_string()]);
        let cfg: AgentFile = toml::from_str(
            "data_dir = \"/d\"\nservers = [\"https://a:1\", \"https://b:2\"]\njoin_token = \"t\"\n\
             [tls]\nca_cert = \"/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(cfg.server_list(), vec!["https://a:1", "https://b:2"]);
        let files = cfg
            .tls
            .as_ref()
            .unwrap()
            .files(Some(Path::new("/d/tls")))
            .unwrap();
        assert_eq!(files.cert, Path::new("/d/tls/agent.pem"));
        assert_eq!(files.key, Path::new("/d/tls/agent-key.pem"));
        // A server needs its certificate named.
        let cfg: ServerFile = toml::from_str("[tls]\nca_cert = \"/ca.pem\"\n").unwrap();
        let e = cfg.tls.as_ref().unwrap().files(None).unwrap_err();
        assert!(e.to_string().contains("tls.cert: required"), "{e}");
        let e = toml::from_str::<AgentFile>("[tls]\nca_cert = \"/c\"\ncert_file = \"/x\"\n")
            .unwrap_err();
        assert!(e.message().contains("unknown field `cert_file`"), "{e}");
    }

    #[test]
    fn server_file_reads_preemption_settings() {
        let cfg: ServerFile = toml::from_str("").unwrap();
        assert_eq!(
            cfg.scheduler.preemption.config(),
            taba_scheduler::PreemptionConfig::default()
        );
        let cfg: ServerFile =
            toml::from_str("[scheduler]\npreemption = { batch = true, system = false }\n").unwrap();
        let p = cfg.scheduler.preemption.config();
        assert!(p.service && p.batch && !p.system);
        let err = toml::from_str::<ServerFile>("[scheduler]\npreemption = { services = true }\n")
            .unwrap_err();
        assert!(err.message().contains("unknown field `services`"), "{err}");
    }
}
