//! taba's control plane.
//!
//! A [`Server`] loads every record from the [`Store`] into memory, serves the
//! HTTP/JSON API under `/v1/` ([`api`]), runs the evaluation [`broker`],
//! scheduler workers, the one plan applier, the heartbeat monitor, the
//! rebalancer and the drainer ([`workers`]). Every change is written through the store before it is
//! applied in memory and before the reply ([`state`]). It runs no workloads.
//!
//! ```text
//! API -> state (store write-through) -> broker -> workers (schedule) -> plan applier -> state
//!                                                                            |
//!         agents <- blocking query GET /v1/agent/allocations/{node} <--------+
//! ```

pub mod acl;
pub mod api;
pub mod broker;
mod config;
pub mod credentials;
pub mod events;
mod images;
pub mod leader;
mod locks;
pub mod metrics;
pub mod state;
pub mod ui;
pub mod workers;

pub use config::{
    AclSettings, EventSettings, InputLimits, RebalanceSettings, ServerConfig, ServerTls,
};
pub use leader::{HaConfig, HaServerHandle};
pub use state::{ServerState, StateError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use taba_image::ImageStore;
use taba_store::Store;
use tokio::task::JoinHandle;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data dir could not be created.
    #[error("cannot create data dir {path}")]
    DataDir {
        /// Path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// State could not be loaded from the store.
    #[error("cannot load state from the store")]
    Load(#[source] StateError),
    /// Plain HTTP was asked for off loopback.
    #[error(
        "refusing to serve plain HTTP on {addr}: off loopback the API needs TLS \
         ([tls] ca_cert, cert and key; see docs/configuration.md)"
    )]
    PlainOffLoopback {
        /// Address.
        addr: SocketAddr,
    },
    /// The TLS files could not be used.
    #[error("TLS configuration")]
    Tls(#[source] taba_tls::ConfigError),
    /// The client that forwards requests to the leader could not be built.
    #[error("cannot build the client that forwards to the leader: {0}")]
    PeerClient(String),
}

/// The server.
pub struct Server;

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    state: Arc<ServerState>,
    http: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Load state, bind the API and start the background work.
    pub async fn start(
        config: ServerConfig,
        store: Arc<dyn Store>,
        images: Arc<ImageStore>,
    ) -> Result<ServerHandle, ServerError> {
        sweep_stale_uploads(&config);
        let listener = Listener::bind(&config).await?;
        let addr = listener.addr;
        let workers = config.num_workers.max(1);
        let st = tokio::task::spawn_blocking(move || ServerState::load(config, store, images))
            .await
            .map_err(|e| ServerError::Load(StateError::NotFound(e.to_string())))?
            .map_err(ServerError::Load)?;
        let state = Arc::new(st);
        let app = api::router(state.clone()).map_err(ServerError::Tls)?;
        let tasks = spawn_background(&state, workers);
        let http = listener.serve(app, state.shutdown.subscribe());
        Ok(ServerHandle {
            addr,
            state,
            http,
            tasks,
        })
    }
}

/// Removes the image uploads a previous run left in `<data_dir>/uploads`
/// (killed mid-import); failures are logged, not fatal.
pub(crate) fn sweep_stale_uploads(config: &ServerConfig) {
    match api::handlers::sweep_uploads(&config.data_dir) {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} unfinished image uploads of an earlier run"),
        Err(e) => tracing::warn!(
            "cannot clean {}: {e}",
            api::handlers::uploads_dir(&config.data_dir).display()
        ),
    }
}

/// The API's bound listeners: `http_addr` first, then `extra_http`, each
/// with its TLS configuration (none: plain HTTP, loopback only).
pub(crate) struct Listener {
    bound: Vec<Bound>,
    /// The first listener's bound address.
    pub(crate) addr: SocketAddr,
}

struct Bound {
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    tls: Option<Arc<taba_tls::rustls::ServerConfig>>,
}

impl Listener {
    /// Checks the TLS settings (plain HTTP only on loopback), reads the TLS
    /// files, creates the data dir and binds `http_addr` and `extra_http`
    /// (port 0 there takes `http_addr`'s port).
    pub(crate) async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        if config.tls.is_none() {
            let all = std::iter::once(&config.http_addr).chain(&config.extra_http);
            if let Some(a) = all.into_iter().find(|a| !a.ip().is_loopback()) {
                return Err(ServerError::PlainOffLoopback { addr: *a });
            }
        }
        let tls = match &config.tls {
            Some(t) => Some(
                taba_tls::config::server_config(&t.files, taba_tls::config::ClientAuth::Optional)
                    .map_err(ServerError::Tls)?,
            ),
            None => None,
        };
        private_data_dir(&config.data_dir)?;
        let bind = |a: SocketAddr| async move {
            let listener = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Bind { addr: a, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ServerError::Bind { addr: a, source })?;
            Ok::<_, ServerError>((listener, local))
        };
        let tls_for = |local: SocketAddr| {
            tls.clone()
                .filter(|_| !(config.plain_loopback && local.ip().is_loopback()))
        };
        let (listener, addr) = bind(config.http_addr).await?;
        let mut bound = vec![Bound {
            listener,
            local: addr,
            tls: tls_for(addr),
        }];
        for a in &config.extra_http {
            let mut a = *a;
            if a.port() == 0 {
                a.set_port(addr.port());
            }
            let (listener, local) = bind(a).await?;
            bound.push(Bound {
                listener,
                local,
                tls: tls_for(local),
            });
        }
        Ok(Self { bound, addr })
    }

    /// The scheme clients use to reach the first listener.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.bound[0].tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Serves `app` on every listener until `stop` turns true; the handle
    /// ends when all have.
    pub(crate) fn serve(
        self,
        app: axum::Router,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let served: Vec<JoinHandle<()>> = self
            .bound
            .into_iter()
            .map(|b| {
                let scheme = if b.tls.is_some() { "https" } else { "http" };
                tracing::info!(addr = %b.local, scheme, "server listening");
                tokio::spawn(serve_listener(b.listener, b.tls, app.clone(), stop.clone()))
            })
            .collect();
        tokio::spawn(async move {
            for h in served {
                let _ = h.await;
            }
        })
    }
}

/// The data dir, 0700 even when it existed.
fn private_data_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| ServerError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Serve `app` on one listener until shutdown: over TLS with `tls`, else
/// plain HTTP (loopback only, checked at start), where requests carry
/// [`api::peer::PlainLocal`].
async fn serve_listener(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<taba_tls::rustls::ServerConfig>>,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match tls {
        Some(cfg) => taba_tls::serve::serve(listener, cfg, app, stopped).await,
        None => {
            let app = app.layer(axum::Extension(api::peer::PlainLocal));
            taba_tls::serve::serve_plain(listener, app, stopped).await;
        }
    }
}

/// Starts the leader's background work on `state`: the plan applier, `workers` scheduler
/// workers, the heartbeat monitor, the drainer, the migration watch and the rebalancer.
pub(crate) fn spawn_background(state: &Arc<ServerState>, workers: usize) -> Vec<JoinHandle<()>> {
    let (plans, applier) = workers::spawn_applier(state.clone());
    let mut tasks = vec![applier];
    for _ in 0..workers {
        tasks.push(workers::spawn_worker(state.clone(), plans.clone()));
    }
    drop(plans);
    tasks.push(workers::spawn_heartbeat_monitor(state.clone()));
    tasks.push(workers::spawn_drainer(state.clone()));
    tasks.push(workers::spawn_migration_watch(state.clone()));
    if state.config.rebalance.enabled {
        tasks.push(workers::spawn_rebalancer(state.clone()));
    }
    tasks
}

/// Stops the background work of `state` (up to 5 s per task, then aborts it).
pub(crate) async fn stop_background(state: &ServerState, tasks: Vec<JoinHandle<()>>) {
    state.shutdown.send_replace(true);
    state.broker.close();
    state.events.close(
        "server_stopping",
        "this server stopped serving events (shutting down or no longer the leader); reconnect",
    );
    for mut t in tasks {
        if tokio::time::timeout(Duration::from_secs(5), &mut t)
            .await
            .is_err()
        {
            t.abort();
        }
    }
}

impl ServerHandle {
    /// The bound address of the API.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's state (for `taba dev` and tests).
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Stop accepting requests, let in-flight ones finish (up to 5 s), stop
    /// the background work. Committed state is already durable.
    pub async fn shutdown(self) {
        self.state.shutdown.send_replace(true);
        self.state.broker.close();
        self.state
            .events
            .close("server_stopping", "the server is shutting down; reconnect");
        let mut http = self.http;
        if tokio::time::timeout(Duration::from_secs(5), &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
        stop_background(&self.state, self.tasks).await;
    }
}
