//! Evaluations: "something changed for this job; reconcile it". Created by job
//! registration, stop, node changes and allocation failures; processed by a
//! scheduler worker into a plan.

use crate::ids::{EvalId, NodeId};
use crate::job::JobType;
use crate::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Why an evaluation exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum EvalTrigger {
    /// A job was registered or updated.
    JobRegister,
    /// A job was stopped.
    JobDeregister,
    /// A node joined, left or changed.
    NodeUpdate,
    /// An allocation failed or was lost.
    AllocFailure,
    /// Re-evaluation of a blocked or delayed evaluation.
    Retry,
    /// A rolling update proceeds to the next batch.
    RollingUpdate,
    /// Allocations of the job were evicted to make room for
    /// higher-priority work; their work is placed again (or waits).
    Preemption,
    /// The rebalancer asked for allocations of the job to move.
    Rebalance,
    /// An allocation marked lost (its node went down) was reported alive
    /// again by its node: the reconciler keeps exactly `count` running.
    AllocReconnect,
    /// A node drain asked for allocations of the job to move (or stopped them).
    NodeDrain,
    /// `taba alloc migrate` asked for an allocation of the job to move.
    AllocMigrate,
}

/// State of an evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum EvalStatus {
    /// Waiting for a worker.
    #[default]
    Pending,
    /// Processed; its plan is committed.
    Complete,
    /// Some placements could not be made; waits for capacity.
    Blocked,
    /// Processing failed.
    Failed,
    /// Superseded.
    Canceled,
}

impl fmt::Display for EvalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Complete => "complete",
            Self::Blocked => "blocked",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        })
    }
}

/// Why placements of one group failed: which filters removed how many nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlacementFailure {
    /// Nodes considered.
    pub nodes_evaluated: u32,
    /// Ready, eligible nodes in the cluster.
    pub nodes_available: u32,
    /// Filter reason -> nodes removed (`constraint ${node.name} != n1`, `missing driver vm`).
    #[serde(default)]
    pub filtered: BTreeMap<String, u32>,
    /// Resource dimension -> nodes on which it ran out (`memory`, `cpu`,
    /// `disk`, `port 8080` for a static port in use, `dynamic ports`).
    #[serde(default)]
    pub exhausted: BTreeMap<String, u32>,
    /// Further placements of the group that failed the same way.
    #[serde(default)]
    pub coalesced: u32,
    /// Set when the namespace's quota, not the nodes, stopped the placements:
    /// `quota exceeded in namespace team-a: memory 4GiB of 4GiB used`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quota: String,
}

impl PlacementFailure {
    /// One line: `memory exhausted on 1 of 1 nodes; constraint ... filtered 2 nodes`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.quota.is_empty() {
            parts.push(self.quota.clone());
        }
        if self.nodes_available == 0 && self.nodes_evaluated == 0 && self.quota.is_empty() {
            parts.push("no ready, eligible nodes".to_string());
        }
        for (reason, n) in &self.filtered {
            parts.push(format!(
                "{reason} filtered {n} of {} nodes",
                self.nodes_evaluated
            ));
        }
        for (dim, n) in &self.exhausted {
            let verb = if dim.starts_with("port ") {
                "in use"
            } else {
                "exhausted"
            };
            parts.push(format!(
                "{dim} {verb} on {n} of {} nodes",
                self.nodes_evaluated
            ));
        }
        if parts.is_empty() {
            parts.push("no node fits".into());
        }
        parts.join("; ")
    }
}

/// An evaluation record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Evaluation {
    /// Id.
    pub id: EvalId,
    /// Namespace of the job.
    pub namespace: String,
    /// Job name.
    pub job: String,
    /// Job type.
    pub job_type: JobType,
    /// Job priority.
    pub priority: u32,
    /// Why it exists.
    pub triggered_by: EvalTrigger,
    /// Node that triggered it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// State.
    pub status: EvalStatus,
    /// Details of the state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_description: String,
    /// Groups whose placements failed, and why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_groups: BTreeMap<String, PlacementFailure>,
    /// Placements still waiting per group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queued: BTreeMap<String, u32>,
    /// Do not process before this time (reschedule delays, rolling updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<UnixMillis>,
    /// The evaluation this one follows up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_eval: Option<EvalId>,
    /// Creation time.
    pub create_time: UnixMillis,
    /// Store index at creation.
    #[serde(default)]
    pub create_index: u64,
    /// Store index of the last change.
    #[serde(default)]
    pub modify_index: u64,
}
