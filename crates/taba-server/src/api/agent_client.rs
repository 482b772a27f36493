//! The server's client for agents' APIs (`alloc logs`, `alloc exec`).
//!
//! Over plain HTTP (loopback clusters) it dials `http://ADDR`. Under TLS it
//! dials `https://NAME.agent.taba:PORT`, resolved to the node's address, so
//! the handshake proves that the peer holds node NAME's agent certificate:
//! an address that is not that agent's cannot receive its logs or exec
//! traffic. It presents the server's own certificate (the agent requires it).

use super::ApiError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use taba_types::Node;

/// Clients for agents.
pub struct AgentClients {
    plain: reqwest::Client,
    tls: Option<taba_tls::ClientTls>,
    /// Under TLS, one client per (node name, address).
    by_node: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tls_built_in_root_certs(false)
}

impl AgentClients {
    /// With `tls`, agents are reached over mutual TLS.
    pub fn new(tls: Option<taba_tls::ClientTls>) -> Self {
        Self {
            plain: builder().build().unwrap_or_default(),
            tls,
            by_node: Mutex::new(HashMap::new()),
        }
    }

    /// A client and the base URL of `node`'s agent API.
    pub async fn for_node(&self, node: &Node) -> Result<(reqwest::Client, String), ApiError> {
        if node.http_addr.is_empty() {
            return Err(ApiError::Agent(format!(
                "node {} has no agent API address",
                node.name
            )));
        }
        let Some(tls) = &self.tls else {
            return Ok((self.plain.clone(), format!("http://{}", node.http_addr)));
        };
        let addr = tokio::net::lookup_host(node.http_addr.as_str())
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                ApiError::Agent(format!(
                    "node {}: cannot resolve its agent address {}",
                    node.name, node.http_addr
                ))
            })?;
        let host = taba_tls::agent_dns(&node.name);
        let base = format!("https://{host}:{}", addr.port());
        let key = (node.name.clone(), addr);
        if let Some(c) = self
            .by_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok((c.clone(), base));
        }
        let bad = |e: reqwest::Error| ApiError::Internal(format!("server TLS material: {e}"));
        let mut b = builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&tls.ca_pem).map_err(bad)?)
            .resolve(&host, addr);
        if let Some(id) = &tls.identity_pem {
            b = b.identity(reqwest::Identity::from_pem(id).map_err(bad)?);
        }
        let client = b.build().map_err(bad)?;
        let mut m = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(key, client.clone());
        Ok((client, base))
    }
}
