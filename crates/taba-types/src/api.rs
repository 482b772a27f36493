//! Request and response bodies of the `/v1/` HTTP API that are not domain
//! records themselves. The server builds them, the agent and the client read
//! them; all depend on this module so the two sides cannot drift apart.

use crate::{
    AllocId, AllocUsage, Allocation, ClientStatus, DesiredStatus, DrainStrategy, DurationSpec,
    EvalId, EvalStatus, Job, JobStatus, JobType, NamespaceUsage, Node, NodeId, NodeStatus, Quota,
    TaskState, UnixMillis,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every error reply: `{"error": {"message": ..., "field": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, and where in the input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorDetail {
    /// Human message.
    pub message: String,
    /// Field path in the request (`group[0].task[1].image`), if one is to blame.
    #[serde(default)]
    pub field: Option<String>,
    /// What kind of error, for programs (the message is for people).
    #[serde(default)]
    pub code: ErrorCode,
}

/// The machine-readable kind of an error reply (`error.code`). Each has one
/// HTTP status; docs/api.md lists them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed input: syntax, a wrong type, an unknown field.
    BadRequest,
    /// 400: a query parameter the route does not take.
    UnknownParameter,
    /// 422: well-formed input that fails validation (`field` says where).
    InvalidField,
    /// 413: the body is larger than the route accepts.
    TooLarge,
    /// 415: a content type the route does not read.
    UnsupportedMediaType,
    /// 401: no token, or an unknown, revoked or expired one.
    Unauthorized,
    /// 403: the token (or node) lacks the right.
    Forbidden,
    /// 404: no such object.
    NotFound,
    /// 404: no such route.
    NoRoute,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 426: a WebSocket route called without the handshake.
    UpgradeRequired,
    /// 409: the request conflicts with the state (an ambiguous id prefix, a
    /// namespace that still has jobs, a second bootstrap).
    Conflict,
    /// 409: a check-and-set failed: the object's modify index is not the one given.
    IndexMismatch,
    /// 409: a unique value (a node name) is held by another object.
    Taken,
    /// 410: what was asked for is no longer kept (an old event index).
    Gone,
    /// 502: a node's agent could not be reached or failed.
    AgentFailed,
    /// 502: an image registry could not be reached or failed.
    RegistryFailed,
    /// 408, 413, 502 or 504: a cap of `alloc exec` (output size, duration) was hit.
    ExecLimit,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 503: no leader can take the request now; retry.
    LeaderUnavailable,
    /// 500: a failure of the server itself (also: a reply without a code,
    /// from an older agent).
    #[default]
    Internal,
}

/// Reply to `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EvalResponse {
    /// The evaluation created.
    pub eval_id: EvalId,
    /// Store index of the write.
    pub index: u64,
}

/// Body of `POST /v1/allocations/{id}/migrate`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrateAllocRequest {
    /// The node to move to (id, unique id prefix or name); the scheduler
    /// picks the best other node when it is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Reply to `POST /v1/allocations/{id}/migrate/cancel`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelMigrationResponse {
    /// Store index of the write.
    pub index: u64,
    /// What happens, in a sentence for the CLI.
    pub message: String,
}

/// Reply to `POST /v1/allocations/{id}/migrate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MigrateAllocResponse {
    /// The evaluation that places the replacement.
    pub eval_id: EvalId,
    /// Store index of the write.
    pub index: u64,
    /// Whether the allocation moves live (its driver migrates running
    /// workloads); otherwise it is restarted on the target.
    pub live: bool,
    /// What happens, in a sentence for the CLI.
    pub message: String,
}

/// One row of `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
            drain: n.draining(),
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// Progress of the drain in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
}

/// Body of `POST /v1/nodes/{node}/drain`: start (or change) a drain, or
/// cancel it with `disable`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Cancel the drain in progress (moves already made stay) and make the
    /// node eligible for placements again.
    #[serde(default)]
    pub disable: bool,
    /// How long the allocations have to move; what is still on the node
    /// then is stopped. `"0s"` stops everything at once. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DurationSpec>,
    /// Leave allocations of system jobs running on the node.
    #[serde(default)]
    pub ignore_system: bool,
}

/// A drain's deadline when none is given.
pub const DEFAULT_DRAIN_DEADLINE: DurationSpec = DurationSpec::secs(3600);
/// The longest drain deadline accepted.
pub const MAX_DRAIN_DEADLINE: DurationSpec = DurationSpec::secs(30 * 24 * 3600);

/// One task group's allocations in a drain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DrainGroupProgress {
    /// Namespace of the job.
    pub namespace: String,
    /// Job.
    pub job: String,
    /// Task group.
    pub group: String,
    /// Job type (system allocations are stopped last; batch ones are left
    /// to finish until the deadline unless their group says `migrate.drain = "move"`).
    pub job_type: JobType,
    /// Allocations still live on the node that the drain moves or stops.
    pub left: u32,
    /// Of those, moves asked for and not carried out yet.
    pub waiting: u32,
    /// Replacements placed on other nodes that do not run yet.
    pub starting: u32,
}

/// Reply to `GET` and `POST /v1/nodes/{node}/drain`, and part of
/// `GET /v1/nodes/{node}`: what a drain has left to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DrainStatus {
    /// Node id.
    pub node_id: NodeId,
    /// Node name.
    pub node: String,
    /// Liveness.
    pub status: NodeStatus,
    /// Whether new placements may go to the node.
    pub eligible: bool,
    /// The drain in progress; none when it finished or was cancelled.
    pub strategy: Option<DrainStrategy>,
    /// When the last drain completed.
    pub drained_at: Option<UnixMillis>,
    /// Per task group, what is left (empty when no drain is in progress).
    pub groups: Vec<DrainGroupProgress>,
    /// Allocations left on the node, all groups.
    pub left: u32,
    /// Replacements not running yet, all groups.
    pub starting: u32,
    /// No drain in progress and the last one completed (not cancelled).
    pub done: bool,
    /// Store index the view was taken at.
    pub index: u64,
}

/// Reply to `DELETE /v1/nodes/{node}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RemoveNodeResponse {
    /// The node's name.
    pub name: String,
    /// Its allocations marked lost (and replaced) by the removal.
    pub lost: usize,
}

/// Body of `POST /v1/nodes/{node}/eligibility`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EligibilityRequest {
    /// Whether new allocations may be placed on the node.
    pub eligible: bool,
}

/// A namespace with what it holds now: a row of `GET /v1/namespaces`, the
/// reply to `GET /v1/namespaces/{name}` and to `PUT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeleteNamespaceResponse {
    /// The namespace removed.
    pub name: String,
    /// Store index of the write.
    pub index: u64,
}

/// Body of `POST /v1/acl/tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Free text shown in lists and audit events.
    #[serde(default)]
    pub name: String,
    /// Policies applied by name (none for a management token).
    #[serde(default)]
    pub policies: Vec<String>,
    /// A management token: every right, ACL management included.
    #[serde(default)]
    pub management: bool,
    /// Lifetime (`"24h"`); unlimited when unset.
    #[serde(default)]
    pub ttl: Option<crate::DurationSpec>,
}

/// A token as listed: never its secret nor the secret's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AclTokenInfo {
    /// Public id.
    pub accessor_id: String,
    /// Free text.
    pub name: String,
    /// Client or management.
    #[serde(rename = "type")]
    pub token_type: crate::acl::TokenType,
    /// Policies by name.
    pub policies: Vec<String>,
    /// Creation time.
    pub create_time: UnixMillis,
    /// Expiry, if any.
    pub expire_time: Option<UnixMillis>,
    /// Expired at the time of the reply.
    pub expired: bool,
}

impl AclTokenInfo {
    /// The listed view of a stored token at time `now`.
    pub fn from_token(t: &crate::acl::AclToken, now: UnixMillis) -> Self {
        Self {
            accessor_id: t.accessor_id.clone(),
            name: t.name.clone(),
            token_type: t.token_type,
            policies: t.policies.clone(),
            create_time: t.create_time,
            expire_time: t.expire_time,
            expired: t.expired(now),
        }
    }
}

/// Reply to `POST /v1/acl/bootstrap` and `POST /v1/acl/tokens`: the secret
/// is shown this once and never again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AclTokenCreated {
    /// The token.
    pub token: AclTokenInfo,
    /// The secret to send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// Reply to `DELETE /v1/acl/policies/{name}` and `DELETE /v1/acl/tokens/{accessor}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AclDeleteResponse {
    /// The policy name or token accessor id removed.
    pub name: String,
    /// Store index of the write.
    pub index: u64,
}

/// Reply to `GET /v1/jobs/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobHistory {
    /// Versions, newest first.
    pub versions: Vec<Job>,
}

/// An image in the server's image store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// `container`, or `disk` for a VM disk image.
    #[serde(default = "container_kind")]
    pub kind: String,
    /// A disk image's format (`qcow2`, `raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn container_kind() -> String {
    "container".into()
}

/// Query of `POST /v1/images` importing a VM disk image (qcow2 or raw, the
/// request body) instead of an image tar.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportQuery {
    /// Import the body as a disk image named this (`debian-12`, `debian:12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Its format; unset: qcow2 by its header (a raw image must say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::vm::DiskFormat>,
}

/// Reply of `POST /v1/job-plan`: what `job run` of the same job file would do to the job's
/// versions, without doing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobPlanResponse {
    /// Namespace.
    pub namespace: String,
    /// Job name.
    pub job: String,
    /// The version now current (`None`: no such job yet).
    pub current_version: Option<u64>,
    /// Whether `job run` would make a new version.
    pub new_version: bool,
    /// Why (or why not), one line each, with the field paths.
    pub reasons: Vec<String>,
    /// Each container image: what the version runs and what its tag resolves to now.
    pub images: Vec<ImagePlan>,
}

/// One task image in a [`JobPlanResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImagePlan {
    /// `group[i].task[j].image`.
    pub field: String,
    /// As the job file names it.
    pub image: String,
    /// What the current version records (pinned to a digest for registry images).
    pub current: Option<String>,
    /// What `job run` would record now (the store's pinned digest; for an image the store
    /// lacks, the registry's, as `job run` pulls it).
    pub planned: String,
    /// The digest the tag resolves to in its registry now, when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The registry's tag resolves to another digest than the current version's: a pull of
    /// the image, then `job run`, makes a new version.
    pub moved: bool,
    /// Why the registry could not be asked, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Reply of `POST /v1/images`: the archive's first image (the fields of [`ImageInfo`], as
/// before archives could hold several) and every image it held, in its order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImportResponse {
    /// The first image.
    #[serde(flatten)]
    pub image: ImageInfo,
    /// Every image imported.
    pub images: Vec<ImageInfo>,
}

/// `GET /v1/images/{ref}`: an image and how it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImageDetail {
    /// What `GET /v1/images` says of it.
    #[serde(flatten)]
    pub info: ImageInfo,
    /// How to run it, as the image store keeps it from the image config:
    /// `entrypoint`, `cmd`, `env`, `working_dir`, `user`, `exposed_ports`,
    /// `labels`, `stop_signal`, `volumes`, `healthcheck`.
    pub config: serde_json::Value,
}

/// Body of `POST /v1/registry/pull`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// What to pull: `busybox`, `host:port/repo:tag`, `repo@sha256:<hex>`.
    pub reference: String,
}

/// Body of `POST /v1/registry/push`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Where to push: `host[:port]/repo[:tag]`.
    pub reference: String,
    /// The stored image to push (reference or id); default: `reference` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Body of `POST /v1/images/save`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SaveRequest {
    /// The stored image (reference or id).
    pub reference: String,
    /// `oci-archive` (default) or `docker-archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// One line of the reply of `POST /v1/registry/pull` (newline-delimited JSON): what the pull
/// is doing, then `done` or `error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known: the image, its layers and how many the server lacks.
    Resolved {
        /// The reference, normalised (`docker.io/library/busybox:latest`).
        reference: String,
        /// Digest of the manifest (or index) the reference names.
        digest: String,
        /// The platform picked from an index (`linux/amd64`), if it was one.
        platform: Option<String>,
        /// The image id (config digest).
        id: String,
        /// Layers of the image.
        layers: usize,
        /// Blobs to download (the others are in the store already).
        needed: usize,
    },
    /// One layer's state.
    Layer {
        /// The layer blob.
        digest: String,
        /// Its size in bytes.
        size: u64,
        /// What happened to it.
        status: LayerStatus,
    },
    /// The image is in the store.
    Done {
        /// It.
        image: ImageInfo,
        /// Bytes downloaded.
        bytes: u64,
    },
    /// Bytes of a layer downloaded so far (at most one event per MiB per layer).
    Progress {
        /// The layer blob.
        digest: String,
        /// Bytes so far.
        done: u64,
    },
    /// A push is complete: the manifest is in the registry.
    Pushed {
        /// The target, normalised.
        reference: String,
        /// Digest of the manifest pushed.
        digest: String,
        /// Blobs uploaded.
        uploaded: usize,
        /// Blobs the registry had already (or mounted).
        skipped: usize,
        /// Bytes uploaded.
        bytes: u64,
    },
    /// The pull (or push) failed (after the reply began; earlier failures are HTTP errors).
    Error {
        /// Why, with the registry's reason.
        message: String,
    },
}

/// What happened to a layer during a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LayerStatus {
    /// The store has it; not downloaded.
    Present,
    /// Download started.
    Downloading,
    /// Downloaded and verified (digest and size).
    Downloaded,
    /// Push: the registry's repository has it; not sent.
    Exists,
    /// Push: mounted from another repository of the registry; not sent.
    Mounted,
    /// Push: upload started.
    Uploading,
    /// Push: uploaded.
    Uploaded,
}

/// Body of `PUT /v1/images/{reference}`: name the image `source` names `reference` too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// An existing reference or image id.
    pub source: String,
}

/// Reply of `DELETE /v1/images` (prune).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PruneResponse {
    /// The images removed (no job version names them, no container uses them).
    pub removed: Vec<ImageInfo>,
}

/// Body of `POST /v1/registry/login`: credentials the server uses for a registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RegistryLoginRequest {
    /// `host` or `host:port`, as in image references (`docker.io` for Docker Hub).
    pub registry: String,
    /// User name.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub username: String,
    /// Password or access token.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub password: String,
}

/// Reply of `POST /v1/registry/login` and `POST /v1/registry/logout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RegistryLoginResponse {
    /// The registry.
    pub registry: String,
    /// What was done (`logged in`, `logged out`, `not logged in`).
    pub status: String,
}

/// Body of `POST /v1/allocations/{id}/exec?task=T` (and of the agent's
/// `POST /v1/client/allocations/{id}/exec?task=T`): run a command in the task,
/// feed it `stdin`, wait for it to end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// How long the token can be used, e.g. `1h` (default 1h, at most 30 days).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Reply to `POST /v1/nodes/tokens`. The token is shown only here: the
/// server keeps its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JoinTokenResponse {
    /// The token, for an agent's `join_token`.
    pub token: String,
    /// When it expires.
    pub expires: UnixMillis,
}

/// Body of `POST /v1/tls/revoke`: revoke a certificate by fingerprint, or
/// the certificate bound to a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RevokeCertResponse {
    /// The fingerprints now revoked.
    pub revoked: Vec<String>,
}

/// A topic of the event stream (`GET /v1/event/stream?topic=...`): which
/// kind of record an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EventTopic {
    /// Jobs (the current version; key `namespace/name`).
    Job,
    /// Allocations (key: the allocation id).
    Allocation,
    /// Nodes (key: the node id); needs node read.
    Node,
    /// Evaluations (key: the evaluation id).
    Evaluation,
}

impl EventTopic {
    /// Every topic.
    pub const ALL: [EventTopic; 4] = [Self::Job, Self::Allocation, Self::Node, Self::Evaluation];

    /// The topic's name, as in the query and the events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Job => "Job",
            Self::Allocation => "Allocation",
            Self::Node => "Node",
            Self::Evaluation => "Evaluation",
        }
    }

    /// The topic named `s` (exact spelling, as [`EventTopic::name`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl std::fmt::Display for EventTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One event of `GET /v1/event/stream`: a record that a committed change
/// wrote (or deleted), at the store index of that commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamEvent {
    /// What kind of record.
    pub topic: EventTopic,
    /// What happened: `JobRegistered`, `JobDeregistered`, `JobDeleted`,
    /// `AllocationUpdated`, `AllocationDeleted`, `EvaluationUpdated`,
    /// `EvaluationDeleted`, `NodeRegistered`, `NodeStatusChanged`,
    /// `NodeEligibilityChanged`, `NodeDrainChanged`, `NodeUpdated`,
    /// `NodeDeregistered`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The record's key.
    pub key: String,
    /// The record's namespace (none for nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The index of the commit; events come in index order.
    pub index: u64,
    /// The record as written (null when deleted).
    pub payload: serde_json::Value,
}

/// A keep-alive line of the event stream: `{"heartbeat": {"index": N}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamHeartbeat {
    /// The last index whose events were sent to this subscriber (or the
    /// index it started after); resume with `index=` this.
    pub index: u64,
}

/// The last line of an event stream the server ends: `{"end": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StreamEnd {
    /// Why: `slow_subscriber`, `server_stopping`, `token_invalid`,
    /// `state_replaced`.
    pub code: String,
    /// For people.
    pub message: String,
    /// Resume from here (`index=`) to miss nothing, while the server still
    /// keeps the events after it.
    pub resume_index: u64,
}

/// One line of `GET /v1/event/stream`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum StreamLine {
    /// An event.
    Event(StreamEvent),
    /// A keep-alive line.
    Heartbeat {
        /// Where the stream is.
        heartbeat: StreamHeartbeat,
    },
    /// The server ended the stream.
    End {
        /// Why.
        end: StreamEnd,
    },
}

/// The interactive `alloc exec` session (`GET /v1/allocations/{id}/exec`
/// upgraded to a WebSocket, proxied frame by frame to the agent's
/// `GET /v1/client/allocations/{id}/exec`).
///
/// The query says what to run ([`ExecSessionQuery`]). Then:
///
/// - binary frames carry bytes: the first byte is the stream
///   ([`exec_session::STDIN`], [`exec_session::STDOUT`],
///   [`exec_session::STDERR`]), the rest its data; a stdin frame with no
///   data closes the command's stdin;
/// - text frames carry one JSON [`exec_session::Control`]: `resize` from
///   the client (a terminal's size), `exit` (the command's exit code, the
///   last frame of a session) or `error` (the session failed; last frame)
///   from the agent.
///
/// Input that is not valid before the command starts (an unknown task or
/// user, an empty command) is refused with a 4xx before the upgrade.
pub mod exec_session {
    use serde::{Deserialize, Serialize};

    /// Stream byte of standard input (client to agent).
    pub const STDIN: u8 = 0;
    /// Stream byte of standard output (agent to client; with a tty, all output).
    pub const STDOUT: u8 = 1;
    /// Stream byte of standard error (agent to client).
    pub const STDERR: u8 = 2;
    /// Largest data in one binary frame (bytes after the stream byte).
    pub const MAX_CHUNK: usize = 32 << 10;

    /// A control message (a text frame).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    pub enum Control {
        /// The client's terminal size (with a tty; at start and on change).
        Resize {
            /// Columns.
            cols: u16,
            /// Rows.
            rows: u16,
        },
        /// The command ended with this code (128 + signal when killed).
        Exit {
            /// Exit code.
            code: i32,
        },
        /// The session failed.
        Error {
            /// What went wrong.
            message: String,
        },
    }

    /// A binary frame: `stream` then `data`.
    pub fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(stream);
        v.extend_from_slice(data);
        v
    }
}

/// Query of `GET /v1/allocations/{id}/exec` (an interactive session).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecSessionQuery {
    /// The task (optional when the group has one task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The command: a JSON array of strings (program and arguments).
    pub command: String,
    /// Pass standard input through (`-i`).
    #[serde(default)]
    pub stdin: bool,
    /// Run in a pseudo-terminal (`-t`); stdout and stderr are merged.
    #[serde(default)]
    pub tty: bool,
    /// The terminal's columns at the start (with `tty`; later sizes come
    /// as `resize` frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// The terminal's rows at the start (with `tty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Run as this user (`name`, `uid`, `name:group`, `uid:gid`), resolved
    /// in the container's passwd and group files; containers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ExecSessionQuery {
    /// The command as a list; an error names the field and the reason.
    pub fn command_args(&self) -> Result<Vec<String>, (&'static str, String)> {
        let args: Vec<String> = serde_json::from_str(&self.command)
            .map_err(|e| ("command", format!("must be a JSON array of strings: {e}")))?;
        if args.is_empty() || args[0].is_empty() {
            return Err(("command", "must name a program".into()));
        }
        if args.iter().any(|a| a.contains('\0')) {
            return Err(("command", "must not contain NUL".into()));
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.contains('\0') || u.len() > 256 {
                return Err((
                    "user",
                    "must be a user name or id, optionally :group".into(),
                ));
            }
        }
        Ok(args)
    }
}
