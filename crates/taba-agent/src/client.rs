//! The agent's side of the agent <-> server protocol (`taba_types::wire`).

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
}

/// A connection to the servers.
#[derive(Clone)]
pub struct ServerClient {
    base: String,
    http: reqwest::Client,
}

impl ClientError {
    /// The server does not know this node (removed, garbage-collected, or
    /// its state lost): the agent must register again.
    pub fn is_unknown_node(&self) -> bool {
        matches!(self, Self::Status { status: 403 | 404, message, .. } if message.contains("unknown node"))
    }
}

impl ServerClient {
    /// Talk to the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<T, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
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
        resp.json()
            .await
            .map_err(|source| ClientError::Http { url, source })
    }

    /// Register (or re-register) the node.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        let url = format!("{}/v1/agent/register", self.base);
        let req = self.http.post(&url).json(req).timeout(Duration::from_secs(30));
        self.send(req, url).await
    }

    /// Heartbeat; gives up after `timeout` (a partitioned link must not
    /// hold back the next heartbeat).
    pub async fn heartbeat(
        &self,
        node_id: &NodeId,
        usage: NodeUsage,
        timeout: Duration,
    ) -> Result<HeartbeatResponse, ClientError> {
        let url = format!("{}/v1/agent/heartbeat", self.base);
        let req = HeartbeatRequest {
            protocol: PROTOCOL,
            node_id: node_id.clone(),
            usage,
        };
        self.send(self.http.post(&url).json(&req).timeout(timeout), url)
            .await
    }

    /// The node's allocations, blocking until they change past `index`.
    pub async fn allocations(
        &self,
        node_id: &NodeId,
        index: u64,
        wait: Duration,
    ) -> Result<NodeAllocations, ClientError> {
        let url = format!(
            "{}/v1/agent/allocations/{}?index={index}&wait={}ms",
            self.base,
            node_id,
            wait.as_millis()
        );
        let req = self.http.get(&url).timeout(wait + Duration::from_secs(10));
        self.send(req, url).await
    }

    /// Report allocation state changes.
    pub async fn update_allocs(&self, req: &AllocUpdateRequest) -> Result<(), ClientError> {
        let url = format!("{}/v1/agent/allocations", self.base);
        let req = self
            .http
            .post(&url)
            .json(req)
            .timeout(Duration::from_secs(30));
        let _: serde_json::Value = self.send(req, url).await?;
        Ok(())
    }
}
