//! Plans: the scheduler's output for one evaluation. The plan applier checks a
//! plan against the latest state and commits it whole or rejects it whole.

use crate::alloc::{Allocation, DesiredStatus};
use crate::eval::{EvalStatus, Evaluation, PlacementFailure};
use crate::ids::{AllocId, EvalId, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stop (or evict) an existing allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AllocStop {
    /// The allocation.
    pub alloc_id: AllocId,
    /// Its node.
    pub node_id: NodeId,
    /// `stop` or `evict`.
    pub desired_status: DesiredStatus,
    /// Why.
    pub description: String,
    /// For an eviction: the new allocation it makes room for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_by: Option<AllocId>,
    /// Record the stop in the allocation's events under this kind
    /// (`Duplicate`), with `description` as the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// What a scheduler decided for one evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Plan {
    /// The evaluation.
    pub eval_id: Option<EvalId>,
    /// Store index of the snapshot the plan was made on.
    pub snapshot_index: u64,
    /// New allocations.
    pub placements: Vec<Allocation>,
    /// Allocations to stop.
    pub stops: Vec<AllocStop>,
    /// Allocations updated in place (same node, new job version, e.g. count changes).
    #[serde(default)]
    pub updates: Vec<Allocation>,
    /// Allocations marked as replaced by a placement in this plan.
    #[serde(default)]
    pub replaced: Vec<AllocId>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.placements.is_empty()
            && self.stops.is_empty()
            && self.updates.is_empty()
            && self.replaced.is_empty()
    }
}

/// The scheduler's full answer: a plan plus what becomes of the evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SchedulerOutcome {
    /// Changes to commit.
    pub plan: Plan,
    /// Final status of the evaluation.
    pub status: EvalStatus,
    /// Details.
    pub status_description: String,
    /// Groups that could not be (fully) placed.
    pub failed_groups: BTreeMap<String, PlacementFailure>,
    /// Placements still waiting per group.
    pub queued: BTreeMap<String, u32>,
    /// Evaluations to create (delayed reschedules, next rolling-update batch).
    pub follow_ups: Vec<Evaluation>,
}

/// Result of submitting a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PlanResult {
    /// Committed at this store index.
    Committed {
        /// Index of the commit.
        index: u64,
    },
    /// Rejected: made on a stale view; retry on a fresh snapshot.
    Rejected {
        /// Why.
        reason: String,
    },
}
