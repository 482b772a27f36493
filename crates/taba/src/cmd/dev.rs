//! `taba dev`: a server and an agent in one process with an embedded
//! store under one data dir:
//!
//! ```text
//! <data-dir>/server/state.redb   the store
//! <data-dir>/images/             the image store (shared by server and agent)
//! <data-dir>/agent/              the agent's node id, allocations and logs
//! ```
//!
//! Stopping it (Ctrl-C, SIGTERM, or even kill -9) leaves workloads running:
//! the next start re-attaches to them. `taba job stop` stops workloads.

use super::daemon::{drivers, init_logging, run_async, shutdown_signal};
use super::GlobalArgs;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taba_agent::AgentConfig;
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

/// Run `taba dev`.
pub fn run_dev(_g: &GlobalArgs, a: DevArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    run_async(async move {
        std::fs::create_dir_all(&a.data_dir)
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
        let mut ac = AgentConfig::new(a.data_dir.join("agent"), format!("http://{addr}"));
        ac.name = a.node_name.clone();
        let agent = taba_agent::start(ac, drivers(images)?)
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
