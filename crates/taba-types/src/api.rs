//! Request and response bodies of the `/v1/` HTTP API that are not domain
//! records themselves. The server builds them, the agent and the client read
//! them; all depend on this module so the two sides cannot drift apart.

use crate::{
    AllocId, AllocUsage, Allocation, ClientStatus, DesiredStatus, EvalId, EvalStatus, Job,
    JobStatus, JobType, NamespaceUsage, Node, NodeId, NodeStatus, Quota, TaskState, UnixMillis,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every error reply: `{"error": {"message": ..., "field": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, and where in the input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Human message.
    pub message: String,
    /// Field path in the request (`group[0].task[1].image`), if one is to blame.
    #[serde(default)]
    pub field: Option<String>,
}

/// Reply to `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterJobResponse {
    /// Namespace.
    pub namespace: String,
    /// Job name.
    pub job: String,
    /// The job version now current.
    pub version: u64,
    /// Whether this registration made a new version.
    pub changed: bool,
    /// The evaluation created for it.
    pub eval_id: EvalId,
    /// Store index of the write.
    pub index: u64,
}

/// Reply to `DELETE /v1/jobs/{name}` and `POST /v1/allocations/{id}/stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalResponse {
    /// The evaluation created.
    pub eval_id: EvalId,
    /// Store index of the write.
    pub index: u64,
}

/// One row of `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListEntry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// Priority.
    pub priority: u32,
    /// Current version.
    pub version: u64,
    /// Status.
    pub status: JobStatus,
    /// Stopped by `job stop`.
    pub stopped: bool,
    /// Allocations by client status: every one not replaced, and every
    /// replaced one that is not terminal (a duplicate still running is
    /// counted, never hidden).
    pub allocs: BTreeMap<String, u32>,
    /// Submission time of the current version.
    pub submit_time: UnixMillis,
}

/// One allocation as listed in job and node status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocListEntry {
    /// Id.
    pub id: AllocId,
    /// `job.group[index]`.
    pub name: String,
    /// Job name.
    pub job: String,
    /// Group name.
    pub group: String,
    /// Job version it runs.
    pub job_version: u64,
    /// Node name.
    pub node: String,
    /// Node id.
    pub node_id: NodeId,
    /// What the servers want.
    pub desired_status: DesiredStatus,
    /// What the agent observes: `pending|running|complete|failed|lost`.
    pub status: ClientStatus,
    /// Details of the status.
    #[serde(default)]
    pub description: String,
    /// Per task.
    pub task_states: BTreeMap<String, TaskState>,
    /// Creation time.
    pub create_time: UnixMillis,
    /// Last change.
    pub modify_time: UnixMillis,
}

impl AllocListEntry {
    /// The list form of an allocation.
    pub fn from_alloc(a: &Allocation) -> Self {
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            job: a.job.clone(),
            group: a.group.clone(),
            job_version: a.job_version,
            node: a.node_name.clone(),
            node_id: a.node_id.clone(),
            desired_status: a.desired_status,
            status: a.client_status,
            description: a.client_description.clone(),
            task_states: a.task_states.clone(),
            create_time: a.create_time,
            modify_time: a.modify_time,
        }
    }
}

/// A short view of an evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Id.
    pub id: EvalId,
    /// Status.
    pub status: EvalStatus,
    /// Details.
    #[serde(default)]
    pub description: String,
    /// Why placements failed, per group, in one line each.
    #[serde(default)]
    pub failures: BTreeMap<String, String>,
    /// Placements still waiting per group.
    #[serde(default)]
    pub queued: BTreeMap<String, u32>,
}

/// Reply to `GET /v1/jobs/{name}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatusResponse {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// Current version.
    pub version: u64,
    /// `pending` until something runs, `running`, `dead` when stopped or finished.
    pub status: JobStatus,
    /// Stopped by `job stop`.
    pub stopped: bool,
    /// Allocations, newest first.
    pub allocations: Vec<AllocListEntry>,
    /// The most recent evaluation.
    pub latest_eval: Option<EvalSummary>,
    /// Why placements are pending, per group ("memory exhausted on 1 of 1 nodes").
    pub placement_failures: BTreeMap<String, String>,
}

/// Reply to `GET /v1/allocations/{id}`: the record plus the names the CLI shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocDetail {
    /// Id.
    pub id: AllocId,
    /// Job.
    pub job: String,
    /// Node name.
    pub node: String,
    /// Client status.
    pub status: ClientStatus,
    /// Desired status.
    pub desired_status: DesiredStatus,
    /// Last measured usage.
    pub usage: Option<AllocUsage>,
    /// The full record.
    pub allocation: Allocation,
}

impl AllocDetail {
    /// The detail view of an allocation.
    pub fn from_alloc(a: &Allocation) -> Self {
        Self {
            id: a.id.clone(),
            job: a.job.clone(),
            node: a.node_name.clone(),
            status: a.client_status,
            desired_status: a.desired_status,
            usage: a.usage.clone(),
            allocation: a.clone(),
        }
    }
}

/// One row of `GET /v1/nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeListEntry {
    /// Id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Datacenter.
    pub datacenter: String,
    /// Liveness.
    pub status: NodeStatus,
    /// The state users see: `ready`, `draining`, `ineligible`,
    /// `disconnected`, `down`, `unusable`, `initializing`.
    #[serde(default)]
    pub display_status: String,
    /// Eligible for placements.
    pub eligible: bool,
    /// Being drained.
    pub drain: bool,
    /// The agent's API address.
    pub http_addr: String,
    /// Healthy drivers.
    pub drivers: Vec<String>,
    /// Allocations holding resources on it.
    pub allocs: u32,
}

impl NodeListEntry {
    /// The list form of a node.
    pub fn from_node(n: &Node, allocs: u32) -> Self {
        Self {
            id: n.id.clone(),
            name: n.name.clone(),
            datacenter: n.datacenter.clone(),
            status: n.status,
            display_status: n.display_status(),
            eligible: n.schedulable() || n.status != NodeStatus::Ready,
            drain: n.drain,
            http_addr: n.http_addr.clone(),
            drivers: n
                .drivers
                .iter()
                .filter(|(_, d)| d.detected && d.healthy)
                .map(|(k, _)| k.clone())
                .collect(),
            allocs,
        }
    }
}

/// Reply to `GET /v1/nodes/{id-or-name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDetail {
    /// Id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Liveness.
    pub status: NodeStatus,
    /// The state users see (see [`NodeListEntry::display_status`]).
    #[serde(default)]
    pub display_status: String,
    /// The full record (`last_heartbeat` and `usage` as of now).
    pub node: Node,
    /// Allocations on the node, newest first.
    pub allocations: Vec<AllocListEntry>,
}

/// Reply to `DELETE /v1/nodes/{node}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveNodeResponse {
    /// The node's name.
    pub name: String,
    /// Its allocations marked lost (and replaced) by the removal.
    pub lost: usize,
}

/// Body of `POST /v1/nodes/{node}/eligibility`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EligibilityRequest {
    /// Whether new allocations may be placed on the node.
    pub eligible: bool,
}

/// A namespace with what it holds now: a row of `GET /v1/namespaces`, the
/// reply to `GET /v1/namespaces/{name}` and to `PUT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    /// Name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Limits; none when unset.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// What its allocations whose client status is not terminal hold.
    pub usage: NamespaceUsage,
    /// Its dominant share of the cluster (max of cpu and memory usage over
    /// what the schedulable nodes hold), 0.0 to 1.0.
    pub dominant_share: f64,
    /// Jobs in it that are not stopped.
    pub jobs: u32,
}

/// Reply to `DELETE /v1/namespaces/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteNamespaceResponse {
    /// The namespace removed.
    pub name: String,
    /// Store index of the write.
    pub index: u64,
}

/// Reply to `GET /v1/jobs/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    /// Versions, newest first.
    pub versions: Vec<Job>,
}

/// An image in the server's image store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Content id (config digest).
    pub id: String,
    /// References (`busybox:latest`).
    pub refs: Vec<String>,
    /// Unpacked size in bytes.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    /// Creation time as the image says, if it says.
    #[serde(default)]
    pub created: Option<String>,
}

/// Body of `POST /v1/allocations/{id}/exec?task=T` (and of the agent's
/// `POST /v1/client/allocations/{id}/exec?task=T`): run a command in the task,
/// feed it `stdin`, wait for it to end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Standard input, base64 (standard alphabet, padded); empty for none.
    #[serde(default)]
    pub stdin_b64: String,
}

/// Reply to an exec: the command's exit code and its output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// Standard output, base64.
    #[serde(default)]
    pub stdout_b64: String,
    /// Standard error, base64.
    #[serde(default)]
    pub stderr_b64: String,
}

/// Base64 helpers for exec bodies.
pub mod b64 {
    use super::*;

    /// Encode bytes.
    pub fn encode(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }
    /// Decode, with the reason on failure.
    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| e.to_string())
    }
}

/// Most bytes an exec's stdin may carry.
pub const MAX_EXEC_STDIN: usize = 8 << 20;

/// Body of `POST /v1/nodes/tokens`: a join token for new agents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// How long the token can be used, e.g. `1h` (default 1h, at most 30 days).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Reply to `POST /v1/nodes/tokens`. The token is shown only here: the
/// server keeps its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    /// The token, for an agent's `join_token`.
    pub token: String,
    /// When it expires.
    pub expires: UnixMillis,
}

/// Body of `POST /v1/tls/revoke`: revoke a certificate by fingerprint, or
/// the certificate bound to a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeCertRequest {
    /// SHA-256 of the DER certificate, hex.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// A node name or id: revoke the certificate it registered with.
    #[serde(default)]
    pub node: Option<String>,
}

/// Reply to `POST /v1/tls/revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeCertResponse {
    /// The fingerprints now revoked.
    pub revoked: Vec<String>,
}
