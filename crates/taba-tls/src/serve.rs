//! The TLS accept loop of taba's HTTP listeners (server API, agent API).
//!
//! Each accepted connection is handshaken with rustls (a failed handshake,
//! such as an expired or foreign certificate, is logged with the peer's
//! address and the connection dropped), then served by hyper with the axum
//! router. Every request carries a [`TlsPeer`] extension: the identity of
//! the client certificate, if one was presented. Requests over plain HTTP
//! carry none.

use crate::identity::PeerIdentity;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// The client certificate of a TLS connection (none when the client
/// presented none).
#[derive(Clone, Debug)]
pub struct TlsPeer(pub Option<Arc<PeerIdentity>>);

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `app` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %remote, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| PeerIdentity::from_der(der).ok())
                .map(Arc::new);
            let peer = TlsPeer(peer);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let app = app.clone();
                    async move { app.oneshot(req).await }
                },
            );
            let io = hyper_util::rt::TokioIo::new(tls);
            if let Err(e) = http1_builder()
                .serve_connection(io, svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(peer = %remote, "connection ended: {e}");
            }
        });
    }
}

/// Serve `app` over plain HTTP/1.1 on `listener` until `shutdown`
/// completes (the loopback listeners). Like [`serve`] without TLS: each
/// request is handed to a clone of `app` (a reference count), where
/// `axum::serve` would build a copy of the router's route table for every
/// connection (about 20 KiB each, which adds up with thousands of agents
/// holding blocking queries). `TCP_NODELAY` is set on every connection.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req)
                });
            let io = hyper_util::rt::TokioIo::new(tcp);
            if let Err(e) = http1_builder()
                .serve_connection(io, svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(peer = %remote, "connection ended: {e}");
            }
        });
    }
}

/// HTTP/1.1 settings of both listeners. Half-closed connections are
/// allowed: hyper then does not keep a second read buffer (8 KiB) per
/// request in flight to notice a client that went away mid-request, which
/// with thousands of agents each holding a blocking query was a third of
/// the server's memory. A gone client's request ends at its own deadline
/// instead (an agent's blocking query waits at most 30 s; any at most the
/// server's `max_blocking_wait`), when writing its reply fails.
fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.half_close(true);
    b
}
