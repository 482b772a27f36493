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
mod images;
mod locks;
pub mod state;
pub mod workers;

pub use config::{AclSettings, RebalanceSettings, ServerConfig, ServerTls};
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
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&config.data_dir)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &config.data_dir,
                        std::fs::Permissions::from_mode(0o700),
                    )
                })
                .map_err(|source| ServerError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                })?;
        }
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.http_addr,
            source,
        })?;
        let mut listeners = vec![(listener, addr)];
        for a in &config.extra_http {
            let mut a = *a;
            if a.port() == 0 {
                a.set_port(addr.port());
            }
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Bind { addr: a, source })?;
            listeners.push((l, a));
        }
        let workers = config.num_workers.max(1);
        let st = tokio::task::spawn_blocking(move || ServerState::load(config, store, images))
            .await
            .map_err(|e| ServerError::Load(StateError::NotFound(e.to_string())))?
            .map_err(ServerError::Load)?;
        let state = Arc::new(st);
        let (plans, applier) = workers::spawn_applier(state.clone());
        let mut tasks = vec![applier];
        for _ in 0..workers {
            tasks.push(workers::spawn_worker(state.clone(), plans.clone()));
        }
        drop(plans);
        tasks.push(workers::spawn_heartbeat_monitor(state.clone()));
        tasks.push(workers::spawn_drainer(state.clone()));
        if state.config.rebalance.enabled {
            tasks.push(workers::spawn_rebalancer(state.clone()));
        }
        let app = match api::router(state.clone()) {
            Ok(app) => app,
            Err(e) => {
                state.shutdown.send_replace(true);
                state.broker.close();
                for t in tasks {
                    t.abort();
                }
                return Err(ServerError::Tls(e));
            }
        };
        let plain_loopback = state.config.plain_loopback;
        let mut served = Vec::new();
        for (l, local) in listeners {
            let cfg = tls
                .clone()
                .filter(|_| !(plain_loopback && local.ip().is_loopback()));
            let scheme = if cfg.is_some() { "https" } else { "http" };
            tracing::info!(addr = %local, scheme, "server listening");
            served.push(tokio::spawn(serve_listener(
                l,
                cfg,
                app.clone(),
                state.shutdown.subscribe(),
            )));
        }
        let http = served.remove(0);
        tasks.extend(served);
        Ok(ServerHandle {
            addr,
            state,
            http,
            tasks,
        })
    }
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
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "http server failed");
            }
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
        let mut http = self.http;
        if tokio::time::timeout(Duration::from_secs(5), &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
        for mut t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}
