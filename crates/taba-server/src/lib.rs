//! taba's control plane.
//!
//! A [`Server`] loads every record from the [`Store`] into memory, serves the
//! HTTP/JSON API under `/v1/` ([`api`]), runs the evaluation [`broker`],
//! scheduler workers, the one plan applier and the heartbeat monitor
//! ([`workers`]). Every change is written through the store before it is
//! applied in memory and before the reply ([`state`]). It runs no workloads.
//!
//! ```text
//! API -> state (store write-through) -> broker -> workers (schedule) -> plan applier -> state
//!                                                                            |
//!         agents <- blocking query GET /v1/agent/allocations/{node} <--------+
//! ```

pub mod api;
pub mod broker;
mod config;
mod images;
mod locks;
pub mod state;
pub mod workers;

pub use config::{RebalanceSettings, ServerConfig};
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
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
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
        let mut extra = Vec::new();
        for a in &config.extra_http {
            let mut a = *a;
            if a.port() == 0 {
                a.set_port(addr.port());
            }
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ServerError::Bind { addr: a, source })?;
            extra.push(l);
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
        if state.config.rebalance.enabled {
            tasks.push(workers::spawn_rebalancer(state.clone()));
        }
        let app = api::router(state.clone());
        for l in extra {
            let app = app.clone();
            let mut stop = state.shutdown.subscribe();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        let mut stop = state.shutdown.subscribe();
        let http = tokio::spawn(async move {
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "http server failed");
            }
        });
        tracing::info!(%addr, "server listening");
        Ok(ServerHandle {
            addr,
            state,
            http,
            tasks,
        })
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
