//! taba's scheduler.
//!
//! This crate performs no I/O. It owns:
//!
//! - [`ClusterState`]: the in-memory, indexed copy of the cluster the server
//!   keeps (nodes, jobs, allocations, per-node usage and host ports, a
//!   capacity index).
//! - [`schedule`]: a pure function from a state snapshot and an evaluation to
//!   a [`SchedulerOutcome`] (a plan plus what becomes of the evaluation):
//!   feasibility (drivers, constraints, resources, host ports, distinct
//!   rules), bin-packing or scored placement (spread, affinities:
//!   `scoring`), [`preempt`]ion of lower-priority work, and the moves asked
//!   for on allocations.
//! - [`verify_plan`] and [`apply_plan`]: the plan applier's checks
//!   (optimistic concurrency: a plan made on a stale view that no longer fits
//!   is rejected whole) and its in-memory commit.
//! - Namespace quotas (usage per namespace, placements refused past a quota)
//!   and [`drf`], the fair-share order of evaluations waiting for capacity.
//! - [`rebalance`]: which allocations to move off hot nodes, and where.
//! - [`sim`]: the simulator behind `taba sim`.
//!
//! The server holds one `ClusterState` under a lock: workers call `schedule`
//! under a read lock, concurrently; one plan applier calls `verify_plan`,
//! persists the plan, then `apply_plan` under the write lock.
//!
//! Determinism: the same state, evaluation and time give the same outcome.
//! Ids of new allocations and follow-up evaluations are derived from the
//! evaluation id, the state's index and a counter (see [`ids`]), and no hash
//! map iteration order reaches a plan.
#![forbid(unsafe_code)]

pub mod drf;
mod feasibility;
pub mod ids;
mod place;
mod plan;
mod ports;
pub mod preempt;
mod quota;
pub mod rebalance;
mod schedule;
mod scoring;
pub mod sim;
mod state;
#[cfg(test)]
mod tests;

pub use feasibility::{constraint_holds, resolve_interpolation};
pub use plan::{apply_plan, apply_plan_owned, starts_live_migration, verify_plan, PlanRejection};
pub use preempt::{PreemptionConfig, PREEMPTION_PRIORITY_DELTA};
pub use schedule::{move_rejection, schedule, schedule_with, ScheduleOptions};
pub use state::{AllocBrief, ClusterState};
pub use taba_types::{Plan, SchedulerOutcome};
