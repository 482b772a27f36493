//! `taba dev`: a server and an agent in one process with an embedded
//! store under one data dir:
//!
//! ```text
//! <data-dir>/server/state.redb   the store
//! <data-dir>/images/             the image store (shared by server and agent)
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
//!
//! `taba dev --agents N` runs a server and N agents as separate processes
//! instead ([`super::devcluster`]).

use super::daemon::{drivers, init_logging, run_async, shutdown_signal, VmFile};
use super::GlobalArgs;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taba_agent::AgentConfig;
use taba_driver::IsolationPolicy;
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
    #[arg(long, conflicts_with = "agents")]
    pub node_name: Option<String>,
    /// A node silent this long is disconnected (no new placements).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,
    /// ... and down this much later: its allocations are replaced elsewhere.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_grace: Duration,
    /// Turn off the rebalancer (on by default).
    #[arg(long)]
    pub no_rebalance: bool,
    /// Time between rebalancer rounds, e.g. "30s" (the server's default).
    #[arg(long, value_parser = parse_duration)]
    pub rebalance_interval: Option<Duration>,
    /// Run one server and N agents as separate processes, each agent in its
    /// own network namespace (needs root); see docs/clustering.md.
    #[arg(long, value_name = "N")]
    pub agents: Option<u32>,
    /// CPU of each agent, MHz (default: an equal share of the host).
    #[arg(long, value_name = "MHZ", requires = "agents")]
    pub agent_cpu: Option<u64>,
    /// Memory of each agent, e.g. "2GiB" (default: an equal share of the host).
    #[arg(long, value_name = "SIZE", requires = "agents")]
    pub agent_memory: Option<String>,
    /// With --agents: run M servers on the etcd cluster of --etcd (HA, docs/ha.md),
    /// each reachable on the bridge; the CLI talks to the first.
    #[arg(long, value_name = "M", default_value_t = 1, requires = "agents")]
    pub servers: u32,
    /// etcd client URLs (comma-separated) the servers of --servers share.
    #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "agents")]
    pub etcd: Vec<String>,
    /// Private subnet of the bridge that joins the agents to the server.
    #[arg(long, default_value = "10.213.0.0/24", requires = "agents")]
    pub subnet: String,
    /// Directory VM kernels, initrds and base disks are taken from
    /// (repeatable; default <data-dir>/vm-images); see docs/vms.md.
    #[arg(long, value_name = "DIR")]
    pub vm_image_dir: Vec<PathBuf>,
    /// Accelerator of VMs whose job does not say: auto (KVM where a probe
    /// boots a guest), kvm or tcg.
    #[arg(long, value_name = "ACCEL", default_value = "auto")]
    pub vm_accel: String,
    /// Kernel (and initrd) the KVM probe boots (`auto`).
    #[arg(long, value_name = "FILE")]
    pub vm_probe_kernel: Option<PathBuf>,
    /// Initrd of the probe kernel.
    #[arg(long, value_name = "FILE", requires = "vm_probe_kernel")]
    pub vm_probe_initrd: Option<PathBuf>,
    /// A TOML file with the server's `[registry]` table (per-registry `insecure`,
    /// `ca_cert`, `timeout`; see docs/images.md).
    #[arg(long, value_name = "FILE", conflicts_with = "agents")]
    pub registry_config: Option<PathBuf>,
    /// Prefix of the names of the namespaces, bridge and veths (tests run
    /// several clusters at once).
    #[arg(long, hide = true, env = "TABA_DEV_NET_PREFIX", default_value = "taba")]
    pub net_prefix: String,
}

/// `--registry-config FILE`: a file whose `[registry]` table is read as a server's.
fn read_registry_config(path: &std::path::Path) -> anyhow::Result<taba_registry::RegistryConfig> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        registry: taba_registry::RegistryConfig,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(f.registry)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    taba_types::DurationSpec::parse(s).map(|d| d.as_duration())
}

/// Run `taba dev`.
pub fn run_dev(_g: &GlobalArgs, a: DevArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    if let Some(n) = a.agents {
        return super::devcluster::run(&a, n);
    }
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
        sc.heartbeat_grace = a.heartbeat_grace;
        sc.rebalance.enabled = !a.no_rebalance;
        if let Some(f) = &a.registry_config {
            sc.registry = read_registry_config(f)?;
        }
        if let Some(i) = a.rebalance_interval {
            sc.rebalance.interval = i;
        }
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
        let vm = VmFile {
            image_dirs: (!a.vm_image_dir.is_empty())
                .then(|| {
                    a.vm_image_dir
                        .iter()
                        .map(std::path::absolute)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .context("--vm-image-dir")?,
            accel: Some(a.vm_accel.clone()),
            probe_kernel: a.vm_probe_kernel.clone(),
            probe_initrd: a.vm_probe_initrd.clone(),
            ..Default::default()
        }
        .config(&a.data_dir)
        .context("--vm-*")?;
        let agent = taba_agent::start(
            ac,
            drivers(
                images,
                IsolationPolicy::default(),
                vm,
                &a.data_dir.join("agent"),
            )?,
        )
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
