//! Agent <-> server messages. Every message carries the protocol version so a
//! server and an agent one minor version apart keep talking: a receiver accepts
//! any version in `MIN_PROTOCOL..=PROTOCOL`, ignores fields it does not know
//! (no `deny_unknown_fields` here, unlike user input), and rejects the rest
//! with a clear error.

use crate::alloc::{AllocUsage, Allocation, ClientStatus, TaskState};
use crate::ids::{AllocId, NodeId};
use crate::node::{Node, NodeUsage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol version this build speaks.
///
/// - 1: register, heartbeat, allocations, alloc updates.
/// - 2: `RegisterResponse.node_secret`, `POST /v1/agent/join`
///   ([`JoinRequest`]), the node credential on every agent request (header
///   [`NODE_SECRET_HEADER`] over plain HTTP, the agent certificate under TLS).
pub const PROTOCOL: u32 = 2;
/// The oldest protocol version this build accepts.
pub const MIN_PROTOCOL: u32 = 1;

/// The header that carries a node's secret on agent requests over plain
/// (loopback) HTTP.
pub const NODE_SECRET_HEADER: &str = "x-taba-node-secret";

/// Check a peer's protocol version.
pub fn check_protocol(v: u32) -> Result<(), String> {
    if (MIN_PROTOCOL..=PROTOCOL).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "protocol version {v} is not supported; this build speaks {MIN_PROTOCOL}..={PROTOCOL}"
        ))
    }
}

/// Agent -> server: register (or re-register after a restart).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Protocol version.
    pub protocol: u32,
    /// The fingerprinted node.
    pub node: Node,
}

/// Server -> agent: registration accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Protocol version.
    pub protocol: u32,
    /// Heartbeat within this many milliseconds or be marked down.
    pub heartbeat_ttl_ms: u64,
    /// At a node's first registration over plain HTTP (protocol 2 and
    /// later): the secret the node must send with every later request
    /// ([`NODE_SECRET_HEADER`]). Shown once; the server keeps only a hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_secret: Option<String>,
}

/// Agent -> server, on first contact with a join token (`taba node token
/// create`): exchange it for a credential.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Protocol version (2 or later).
    pub protocol: u32,
    /// The token.
    pub token: String,
    /// The node id the credential is for.
    pub node_id: NodeId,
    /// The node name (the certificate's name under TLS).
    pub name: String,
    /// Under TLS: a PEM certificate signing request for the agent's key.
    #[serde(default)]
    pub csr_pem: Option<String>,
}

/// Server -> agent: the credential a join token was exchanged for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    /// Protocol version.
    pub protocol: u32,
    /// Under TLS: the agent certificate, signed by the cluster CA.
    #[serde(default)]
    pub cert_pem: Option<String>,
    /// Without TLS: the node secret.
    #[serde(default)]
    pub node_secret: Option<String>,
}

/// Agent -> server: still alive.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Protocol version.
    pub protocol: u32,
    /// Who.
    pub node_id: NodeId,
    /// Node utilization.
    #[serde(default)]
    pub usage: NodeUsage,
}

/// Server -> agent: heartbeat accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Protocol version.
    pub protocol: u32,
    /// Next heartbeat due within this many milliseconds.
    pub heartbeat_ttl_ms: u64,
}

/// Server -> agent: the allocations assigned to a node (blocking query).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeAllocations {
    /// Protocol version.
    pub protocol: u32,
    /// Store index the list reflects; pass it back to wait for changes.
    pub index: u64,
    /// Allocations on the node that are not garbage-collected.
    pub allocs: Vec<Allocation>,
}

/// One allocation's observed state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocUpdate {
    /// Which.
    pub id: AllocId,
    /// Observed status.
    pub client_status: ClientStatus,
    /// Details.
    #[serde(default)]
    pub client_description: String,
    /// Per task.
    #[serde(default)]
    pub task_states: BTreeMap<String, TaskState>,
    /// Usage.
    #[serde(default)]
    pub usage: Option<AllocUsage>,
}

/// Agent -> server: allocation state changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocUpdateRequest {
    /// Protocol version.
    pub protocol: u32,
    /// Sender.
    pub node_id: NodeId,
    /// Updates.
    pub updates: Vec<AllocUpdate>,
}

/// Server -> agent: what an image is made of, so that an agent that lacks it
/// can fetch its blobs (`GET /v1/agent/images/manifests/{reference}`) and
/// then each blob by digest (`GET /v1/agent/images/blobs/{digest}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Protocol version.
    pub protocol: u32,
    /// `sha256:<hex>` of the image config: the image id.
    pub id: String,
    /// The references the servers give the image (`busybox:latest`).
    #[serde(default)]
    pub refs: Vec<String>,
    /// The image config blob (its digest is the id).
    pub config: BlobDescriptor,
    /// The layers, bottom to top.
    pub layers: Vec<LayerDescriptor>,
}

/// A content-addressed blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobDescriptor {
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// One layer of an image: its blob as stored and the digest of the tar inside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDescriptor {
    /// OCI media type (`application/vnd.oci.image.layer.v1.tar+gzip`, ...).
    pub media_type: String,
    /// `sha256:<hex>` of the blob as stored (compressed or not).
    pub digest: String,
    /// The blob's length in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed layer tar (the image config's `diff_ids`).
    pub diff_id: String,
}
