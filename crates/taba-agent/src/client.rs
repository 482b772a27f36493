//! The agent's side of the agent <-> server protocol (`taba_types::wire`).
//!
//! The agent knows several servers (`servers = [...]`): a request that
//! cannot connect to one tries the next, and the one that answered is
//! remembered for the following requests. Every request carries the node's
//! credential: the agent certificate under TLS, or the node secret header
//! over plain HTTP once the server issued one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taba_types::wire::*;
use taba_types::{NodeId, NodeUsage};

/// Errors talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete.
    #[error("request to {url} failed")]
    Http {
        /// Which URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("server answered {status} for {url}: {message}")]
    Status {
        /// Which URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The TLS material could not be used.
    #[error("unusable TLS material")]
    Tls(#[source] reqwest::Error),
    /// No server address was given.
    #[error("no server address configured")]
    NoServers,
}

/// A connection to the servers.
#[derive(Clone)]
pub struct ServerClient {
    bases: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    secret: Arc<Mutex<Option<String>>>,
}

/// `host:port` becomes `http://host:port`; a trailing slash goes.
pub fn normalize_base(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

impl ClientError {
    /// The server does not know this node (removed, garbage-collected, or
    /// its state lost): the agent must register again.
    pub fn is_unknown_node(&self) -> bool {
        matches!(self, Self::Status { status: 403 | 404, message, .. } if message.contains("unknown node"))
    }
}

impl ServerClient {
    /// Talk to the servers at `bases` (`http://host:port` or
    /// `https://host:port`), trusting `tls`'s CA and presenting its identity.
    pub fn new(bases: &[String], tls: Option<&taba_tls::ClientTls>) -> Result<Self, ClientError> {
        if bases.is_empty() {
            return Err(ClientError::NoServers);
        }
        let mut b = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(5))
            .tls_built_in_root_certs(false);
        if let Some(t) = tls {
            b = b.add_root_certificate(
                reqwest::Certificate::from_pem(&t.ca_pem).map_err(ClientError::Tls)?,
            );
            if let Some(id) = &t.identity_pem {
                b = b.identity(reqwest::Identity::from_pem(id).map_err(ClientError::Tls)?);
            }
        }
        Ok(Self {
            bases: Arc::new(bases.iter().map(|s| normalize_base(s)).collect()),
            current: Arc::new(AtomicUsize::new(0)),
            http: b.build().map_err(ClientError::Tls)?,
            secret: Arc::new(Mutex::new(None)),
        })
    }

    /// The server currently used.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Send the node secret with every request from now on.
    pub fn set_secret(&self, secret: Option<String>) {
        *self.secret.lock().unwrap_or_else(|p| p.into_inner()) = secret;
    }

    /// Send the request `build` makes for a base URL to the current server,
    /// then to the others in turn while they cannot be connected to.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let (resp, url) = self.send_raw(path, build).await?;
        resp.json()
            .await
            .map_err(|source| ClientError::Http { url, source })
    }

    /// As [`ServerClient::send`], but returns the successful response (and its URL) unread.
    async fn send_raw(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed);
        let secret = self
            .secret
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut last = None;
        for i in 0..n {
            let k = (start + i) % n;
            let url = format!("{}{path}", self.bases[k]);
            let mut req = build(&self.http, &url);
            if let Some(s) = &secret {
                req = req.header(NODE_SECRET_HEADER, s);
            }
            match req.send().await {
                Ok(resp) => {
                    if k != start {
                        tracing::info!(server = %self.bases[k], "switched to another server");
                        self.current.store(k, Ordering::Relaxed);
                    }
                    return Self::check(resp, url).await;
                }
                Err(source) if source.is_connect() && i + 1 < n => {
                    tracing::warn!(server = %self.bases[k], "cannot connect; trying the next server");
                    last = Some(ClientError::Http { url, source });
                }
                Err(source) => return Err(ClientError::Http { url, source }),
            }
        }
        Err(last.unwrap_or(ClientError::NoServers))
    }

    /// A reply that is not a success becomes [`ClientError::Status`].
    async fn check(
        resp: reqwest::Response,
        url: String,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok((resp, url))
    }

    /// Exchange a join token for a credential.
    pub async fn join(&self, req: &JoinRequest) -> Result<JoinResponse, ClientError> {
        self.send("/v1/agent/join", |c, u| c.post(u).json(req))
            .await
    }

    /// Register (or re-register) the node.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.send("/v1/agent/register", |c, u| {
            c.post(u).json(req).timeout(Duration::from_secs(30))
        })
        .await
    }

    /// Heartbeat; gives up after `timeout` (a partitioned link must not
    /// hold back the next heartbeat).
    pub async fn heartbeat(
        &self,
        node_id: &NodeId,
        usage: NodeUsage,
        timeout: Duration,
    ) -> Result<HeartbeatResponse, ClientError> {
        let req = HeartbeatRequest {
            protocol: PROTOCOL,
            node_id: node_id.clone(),
            usage,
        };
        self.send("/v1/agent/heartbeat", |c, u| {
            c.post(u).json(&req).timeout(timeout)
        })
        .await
    }

    /// The node's allocations, blocking until they change past `index`;
    /// with `delta`, only those that changed (and the others' ids).
    pub async fn allocations(
        &self,
        node_id: &NodeId,
        index: u64,
        wait: Duration,
        delta: bool,
    ) -> Result<NodeAllocations, ClientError> {
        let path = format!(
            "/v1/agent/allocations/{}?index={index}&wait={}ms{}",
            node_id,
            wait.as_millis(),
            if delta { "&delta=true" } else { "" }
        );
        self.send(&path, |c, u| {
            c.get(u).timeout(wait + Duration::from_secs(10))
        })
        .await
    }

    /// Report allocation state changes.
    pub async fn update_allocs(&self, req: &AllocUpdateRequest) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send("/v1/agent/allocations", |c, u| {
                c.post(u).json(req).timeout(Duration::from_secs(30))
            })
            .await?;
        Ok(())
    }

    /// What the image `reference` is made of (config and layer blobs), asked as node `node_id`.
    pub async fn image_manifest(
        &self,
        node_id: &NodeId,
        reference: &str,
    ) -> Result<ImageManifest, ClientError> {
        let path = format!(
            "/v1/agent/images/manifests/{}?node_id={}",
            path_escape(reference),
            path_escape(node_id.as_str())
        );
        self.send(&path, |c, u| c.get(u).timeout(Duration::from_secs(30)))
            .await
    }

    /// One image blob by digest, asked as node `node_id`: the response, to be read chunk by
    /// chunk.
    pub async fn image_blob(
        &self,
        node_id: &NodeId,
        digest: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!(
            "/v1/agent/images/blobs/{}?node_id={}",
            path_escape(digest),
            path_escape(node_id.as_str())
        );
        Ok(self.send_raw(&path, |c, u| c.get(u)).await?.0)
    }
}

/// Percent-encodes what is not plain in a path: references keep their `/`, `:` and `@`.
fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
