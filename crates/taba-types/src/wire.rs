//! Agent <-> server messages. Every message carries the protocol version so a
//! server and an agent one minor version apart keep talking: a receiver accepts
//! any version in `MIN_PROTOCOL..=PROTOCOL`, ignores fields it does not know
//! (no `deny_unknown_fields` here, unlike user input), and rejects the rest
//! with a clear error.

use crate::alloc::{AllocUsage, Allocation, ClientStatus, MigrationReport, TaskState};
use crate::ids::{AllocId, NodeId};
use crate::node::{Node, NodeUsage};
use crate::validate::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol version this build speaks.
///
/// - 1: register, heartbeat, allocations, alloc updates.
/// - 2: `RegisterResponse.node_secret`, `POST /v1/agent/join`
///   ([`JoinRequest`]), the node credential on every agent request (header
///   [`NODE_SECRET_HEADER`] over plain HTTP, the agent certificate under TLS).
/// - 3: live migration: `Allocation.live_migration` (server -> agent, the
///   part each agent plays) and [`AllocUpdate::migration`] (agent -> server:
///   source accelerator, the target's incoming address, progress, outcome).
///   An agent of protocol 2 ignores the first and never sends the second:
///   the servers move its allocations by restarting them instead.
/// - 4: the allocations blocking query answers with what changed
///   (`delta=true`, [`NodeAllocations::delta`]): only the allocations
///   changed past the agent's index in full, the others by id. An agent asks
///   for it only of a server that registered it with protocol 4 or later;
///   older agents keep getting the whole list.
pub const PROTOCOL: u32 = 4;
/// The oldest protocol version this build accepts (protocols 2 to 4 only
/// added optional fields and parameters, so agents of protocol 1 still talk).
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

/// Most updates in one [`AllocUpdateRequest`].
pub const MAX_UPDATES: usize = 10_000;
/// Longest [`Node::unusable_reason`] an agent may report.
pub const MAX_UNUSABLE_REASON: usize = 4096;
/// Longest join token.
pub const MAX_JOIN_TOKEN: usize = 256;

fn field_error(path: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Checks an identifier an agent sends (node id, node name): 1 to 128 of
/// letters, digits, `-`, `_` and `.`.
pub fn check_ident(field: &str, s: &str) -> Result<(), FieldError> {
    if s.is_empty() || s.len() > 128 {
        return Err(field_error(field, "must be 1 to 128 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(field_error(
            field,
            format!("invalid character {c:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

/// Checks the node an agent registers (what can be checked without state).
pub fn check_node(n: &Node) -> Result<(), FieldError> {
    check_ident("node.id", n.id.as_str())?;
    check_ident("node.name", &n.name)?;
    if !n.http_addr.is_empty() {
        let ok = n
            .http_addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(field_error(
                "node.http_addr",
                format!("{:?} is not host:port", n.http_addr),
            ));
        }
    }
    if n.unusable_reason.len() > MAX_UNUSABLE_REASON {
        return Err(field_error(
            "node.unusable_reason",
            format!("must be at most {MAX_UNUSABLE_REASON} bytes"),
        ));
    }
    if n.resources.cpu == 0 {
        return Err(field_error("node.resources.cpu", "must be positive"));
    }
    if n.resources.memory.0 == 0 {
        return Err(field_error("node.resources.memory", "must be positive"));
    }
    Ok(())
}

/// Agent -> server: register (or re-register after a restart).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Protocol version.
    pub protocol: u32,
    /// The fingerprinted node.
    pub node: Node,
}

impl RegisterRequest {
    /// Checks what can be checked without the server's state (the
    /// protocol version is checked apart, with [`check_protocol`]).
    pub fn validate(&self) -> Result<(), FieldError> {
        check_node(&self.node)
    }
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

impl JoinRequest {
    /// Checks what can be checked without the server's state (the
    /// protocol version is checked apart, with [`check_protocol`]).
    pub fn validate(&self) -> Result<(), FieldError> {
        check_ident("node_id", self.node_id.as_str())?;
        check_ident("name", &self.name)?;
        if self.token.is_empty() || self.token.len() > MAX_JOIN_TOKEN {
            return Err(field_error(
                "token",
                format!("must be 1 to {MAX_JOIN_TOKEN} characters"),
            ));
        }
        Ok(())
    }
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
    /// Allocations on the node that are not garbage-collected: all of them,
    /// or with [`Self::delta`] only those changed past the asked index.
    pub allocs: Vec<Allocation>,
    /// This answer is a delta (protocol 4, asked with `delta=true`): the
    /// node's allocations are `allocs` plus `unchanged`; one in neither was
    /// garbage-collected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
    /// With [`Self::delta`]: the ids of the node's allocations that did not
    /// change past the asked index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<AllocId>,
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
    /// Its part in a live migration (protocol 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationReport>,
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

impl AllocUpdateRequest {
    /// Checks what can be checked without the server's state (the
    /// protocol version is checked apart, with [`check_protocol`]).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.updates.len() > MAX_UPDATES {
            return Err(field_error(
                "updates",
                format!("at most {MAX_UPDATES} updates per request"),
            ));
        }
        for (i, u) in self.updates.iter().enumerate() {
            let Some(m) = &u.migration else { continue };
            if m.failed
                .as_ref()
                .is_some_and(|f| f.len() > MAX_UNUSABLE_REASON)
            {
                return Err(field_error(
                    &format!("updates[{i}].migration.failed"),
                    format!("must be at most {MAX_UNUSABLE_REASON} bytes"),
                ));
            }
            if m.target_alloc.as_str().is_empty() {
                return Err(field_error(
                    &format!("updates[{i}].migration.target_alloc"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        serde_json::from_str(
            r#"{"id":"n-1","name":"n1","http_addr":"10.0.0.2:4647",
                "resources":{"cores":1,"cpu":1000,"memory":"1GiB","disk":"1GiB"}}"#,
        )
        .unwrap()
    }

    fn refused(r: Result<(), FieldError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.path, e.reason)
    }

    #[test]
    fn register_checks_name_the_field() {
        let ok = RegisterRequest {
            protocol: PROTOCOL,
            node: node(),
        };
        ok.validate().unwrap();
        let with = |f: &dyn Fn(&mut Node)| {
            let mut r = ok.clone();
            f(&mut r.node);
            refused(r.validate())
        };
        assert_eq!(with(&|n| n.id = NodeId::from("")).0, "node.id");
        assert!(with(&|n| n.name = "a/b".into())
            .1
            .contains("invalid character"));
        assert_eq!(with(&|n| n.http_addr = "host".into()).0, "node.http_addr");
        assert_eq!(with(&|n| n.http_addr = ":80".into()).0, "node.http_addr");
        assert_eq!(with(&|n| n.http_addr = "h:0".into()).0, "node.http_addr");
        assert_eq!(
            with(&|n| n.unusable_reason = "x".repeat(MAX_UNUSABLE_REASON + 1)).0,
            "node.unusable_reason"
        );
        assert_eq!(with(&|n| n.resources.cpu = 0).0, "node.resources.cpu");
    }

    #[test]
    fn join_and_updates_are_bounded() {
        let join = JoinRequest {
            protocol: PROTOCOL,
            token: "t".into(),
            node_id: NodeId::from("n-1"),
            name: "n1".into(),
            csr_pem: None,
        };
        join.validate().unwrap();
        let mut long = join.clone();
        long.token = "t".repeat(MAX_JOIN_TOKEN + 1);
        assert_eq!(refused(long.validate()).0, "token");
        let mut bad = join;
        bad.name = String::new();
        assert_eq!(refused(bad.validate()).0, "name");
        let many = AllocUpdateRequest {
            protocol: PROTOCOL,
            node_id: NodeId::from("n-1"),
            updates: vec![
                AllocUpdate {
                    id: AllocId::from("a"),
                    client_status: ClientStatus::Running,
                    client_description: String::new(),
                    task_states: BTreeMap::new(),
                    usage: None,
                    migration: None,
                };
                MAX_UPDATES + 1
            ],
        };
        assert_eq!(refused(many.validate()).0, "updates");
    }
}
