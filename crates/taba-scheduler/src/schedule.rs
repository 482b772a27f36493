//! `schedule`: one evaluation in, a plan and the evaluation's fate out.
//!
//! The reconciler compares what a job asks for with the allocations it has
//! and decides stops, in-place updates and placements; the placer
//! ([`crate::place`]) picks nodes, or [`crate::scoring`] for groups with
//! spreads, affinities or `scoring = "spread"`. Nothing here mutates the
//! state.
//!
//! Rules, per job type:
//! - a missing or stopped job: stop every live allocation ("job stopped");
//! - service: keep `count` allocations per group at indexes `0..count`;
//!   scale down stops the highest indexes; failed allocations are
//!   rescheduled per the group's reschedule policy (a follow-up evaluation
//!   waits out the delay); lost ones (node down) are replaced at once;
//! - batch: like service, but an index that completed successfully is done
//!   and never placed again;
//! - system: one allocation per schedulable node that passes feasibility;
//!   allocations on nodes whose constraints no longer match are stopped,
//!   those on ineligible or draining nodes keep running (a drain stops them
//!   itself, last), those on down nodes are left to be marked lost;
//! - moves (`Allocation::migrate`, asked by the rebalancer or a node drain):
//!   at most `migrate.max_parallel` per group in flight, a move counting
//!   until its replacement has run `migrate.min_healthy_time`; a move with
//!   nowhere to go is dropped, unless its node is draining: then the
//!   evaluation is blocked until capacity frees;
//! - updates: an allocation of an older job version whose group changed in a
//!   placement-relevant way is replaced (stop + place in one plan), at most
//!   `update.max_parallel` per group at a time, the next batch only once the
//!   new allocations have run for `min_healthy_time` (a follow-up evaluation
//!   is created); otherwise it is updated in place.

use crate::feasibility::GroupFilter;
use crate::ids::IdStream;
use crate::place::{GroupCtx, Placer};
use crate::ports::GroupPorts;
use crate::preempt::{self, Choice, PreemptionConfig, Preemptor, Search};
use crate::scoring::Preferences;
use crate::state::{ClusterState, Res};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use taba_types::{
    AllocId, AllocStop, Allocation, ClientStatus, DesiredStatus, EvalId, EvalStatus, EvalTrigger,
    Evaluation, Job, JobType, LiveMigration, NodeStatus, PlacementFailure, Plan, SchedulerOutcome,
    TaskGroupSpec, UnixMillis,
};

/// Reschedule times kept per allocation lineage when attempts are unlimited.
const MAX_RESCHEDULE_TIMES: usize = 16;

/// Slack the servers give a fencing agent beyond `stop_after_disconnect`
/// and the kill timeout before they replace its allocations.
pub const FENCE_MARGIN_MS: u64 = 1000;

/// Knobs of one scheduling pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// `Some((i, n))`: place new allocations of service and batch jobs only
    /// on nodes whose shard is `i` modulo `n` (see
    /// [`ClusterState::balance_shards`]). Concurrent workers given different
    /// shards make plans that do not conflict.
    pub node_shard: Option<(u32, u32)>,
    /// Which job types may evict lower-priority allocations when theirs fit
    /// nowhere (see [`crate::preempt`]).
    pub preemption: PreemptionConfig,
}

/// Decide what to do for `eval` on the snapshot `state` at time `now`.
pub fn schedule(state: &ClusterState, eval: &Evaluation, now: UnixMillis) -> SchedulerOutcome {
    schedule_with(state, eval, now, &ScheduleOptions::default())
}

/// [`schedule`] with options.
pub fn schedule_with(
    state: &ClusterState,
    eval: &Evaluation,
    now: UnixMillis,
    opts: &ScheduleOptions,
) -> SchedulerOutcome {
    let mut s = Scheduler {
        state,
        eval,
        now,
        plan: Plan {
            eval_id: Some(eval.id.clone()),
            snapshot_index: state.index(),
            ..Plan::default()
        },
        placer: Placer::with_shard(opts.node_shard),
        preemption: opts.preemption,
        ids: IdStream::new(eval.id.as_str(), state.index()),
        failed_groups: BTreeMap::new(),
        queued: BTreeMap::new(),
        reschedule_at: None,
        rolling_at: None,
        migrate_at: None,
        stopped: BTreeSet::new(),
        evicted: BTreeSet::new(),
    };
    match state.job(&eval.namespace, &eval.job) {
        Some(job) if !job.stopped => {
            let allocs = s.job_allocs();
            for a in allocs.iter().filter(|a| a.is_live()) {
                s.placer.count_live(state, a);
            }
            match job.spec.job_type {
                JobType::Service | JobType::Batch => s.reconcile_counted(job, &allocs),
                JobType::System => s.reconcile_system(job, &allocs),
            }
        }
        _ => {
            for a in s.job_allocs() {
                if a.is_live() {
                    s.stop(a, "job stopped");
                }
            }
        }
    }
    s.finish()
}

/// What a group's placements are checked against, prepared once per group.
struct GroupRules {
    filter: GroupFilter,
    ports: GroupPorts,
    res: Res,
}

impl GroupRules {
    fn new(job: &Job, g: &TaskGroupSpec) -> Self {
        Self {
            filter: GroupFilter::new(job, g),
            ports: GroupPorts::of(g),
            res: Res::of(&g.total_resources()),
        }
    }

    fn ctx<'x>(&'x self, g: &'x TaskGroupSpec) -> GroupCtx<'x> {
        GroupCtx {
            name: &g.name,
            filter: &self.filter,
            res: self.res,
            ports: &self.ports,
        }
    }
}

/// Placement wanted for one index of a group.
struct Req<'a> {
    index: u32,
    previous: Option<&'a Allocation>,
    /// Counts as a reschedule attempt (a failed allocation's replacement).
    reschedule: bool,
    /// `previous` is marked replaced (failed, lost, completed service).
    replaces: bool,
}

enum Reschedule {
    Now,
    At(UnixMillis),
    Exhausted,
}

/// A group's moves whose replacements have not run `migrate.min_healthy_time` yet.
#[derive(Default, Clone, Copy)]
struct MovesInFlight {
    count: u32,
    /// When the first of those already running becomes healthy.
    healthy_at: Option<UnixMillis>,
}

struct Scheduler<'a> {
    state: &'a ClusterState,
    eval: &'a Evaluation,
    now: UnixMillis,
    plan: Plan,
    placer: Placer,
    preemption: PreemptionConfig,
    ids: IdStream,
    failed_groups: BTreeMap<String, PlacementFailure>,
    queued: BTreeMap<String, u32>,
    reschedule_at: Option<UnixMillis>,
    rolling_at: Option<UnixMillis>,
    /// When the next batch of requested moves may proceed.
    migrate_at: Option<UnixMillis>,
    stopped: BTreeSet<AllocId>,
    /// Slots of the allocations this plan evicts.
    evicted: BTreeSet<u32>,
}

fn earliest(slot: &mut Option<UnixMillis>, t: UnixMillis) {
    *slot = Some(slot.map_or(t, |s| s.min(t)));
}

impl<'a> Scheduler<'a> {
    /// The job's allocations in a stable order (group, index, age, id).
    fn job_allocs(&self) -> Vec<&'a Allocation> {
        let mut v: Vec<&Allocation> = self
            .state
            .allocs_for_job(&self.eval.namespace, &self.eval.job)
            .collect();
        v.sort_by(|a, b| {
            (&a.group, a.index, a.create_index, a.create_time, &a.id).cmp(&(
                &b.group,
                b.index,
                b.create_index,
                b.create_time,
                &b.id,
            ))
        });
        v
    }

    fn stop(&mut self, a: &Allocation, why: &str) {
        self.stop_recorded(a, why, None);
    }

    /// [`Self::stop`], recorded in the allocation's events as `event`.
    fn stop_recorded(&mut self, a: &Allocation, why: &str, event: Option<&str>) {
        if !self.stopped.insert(a.id.clone()) {
            return;
        }
        self.placer.release(self.state, a, a.is_live());
        self.plan.stops.push(AllocStop {
            alloc_id: a.id.clone(),
            node_id: a.node_id.clone(),
            desired_status: DesiredStatus::Stop,
            description: why.to_string(),
            preempted_by: None,
            event: event.map(str::to_string),
        });
    }

    /// Per index of a group, the one live allocation to keep when several
    /// want to run there. That happens when a node that was down comes back
    /// and reports an allocation that was replaced meanwhile (or a fenced
    /// group's replacement is still starting). The rule: an allocation on a
    /// node that is up beats one on a down node; a running one beats a
    /// pending one; then the newest (the replacement) wins. So a returning
    /// original is stopped when its replacement already runs, and the
    /// replacement is canceled when it has not started yet.
    fn keepers(&self, mine: &[&'a Allocation], count: u32) -> BTreeMap<u32, &'a Allocation> {
        let mut keep: BTreeMap<u32, &'a Allocation> = BTreeMap::new();
        let rank = |a: &Allocation| {
            (
                !self.node_down(a),
                a.client_status == ClientStatus::Running,
                a.create_index,
                a.create_time,
            )
        };
        for a in mine.iter().copied().filter(|a| {
            a.desired_status == DesiredStatus::Run
                && a.index < count
                && matches!(
                    a.client_status,
                    ClientStatus::Pending | ClientStatus::Running
                )
        }) {
            keep.entry(a.index)
                .and_modify(|k| {
                    if rank(a) > rank(k) {
                        *k = a;
                    }
                })
                .or_insert(a);
        }
        keep
    }

    /// When the replacement of `a` (lost with its node) may be placed: the
    /// group's agents stop its allocations themselves after
    /// `stop_after_disconnect` without the servers; wait that long (plus the
    /// tasks' kill timeout and a second for the agent's check) from the
    /// node's last heartbeat, so the two never run at once. `None`: now.
    fn fenced_until(&self, a: &Allocation, g: &TaskGroupSpec) -> Option<UnixMillis> {
        let d = g.stop_after_disconnect?;
        let last = self.state.node(&a.node_id).map(|n| n.last_heartbeat)?;
        let kill = g.tasks.iter().map(|t| t.kill_timeout.0).max().unwrap_or(0);
        let at = last.saturating_add(d.0 + kill + FENCE_MARGIN_MS);
        (at > self.now).then_some(at)
    }

    fn node_down(&self, a: &Allocation) -> bool {
        self.state
            .node(&a.node_id)
            .is_none_or(|n| n.status == NodeStatus::Down)
    }

    fn reschedule_decision(&self, a: &Allocation, job: &Job, g: &TaskGroupSpec) -> Reschedule {
        let policy = g.reschedule_policy(job.spec.job_type);
        if !policy.unlimited {
            let since = self.now.saturating_sub(policy.interval.0);
            let recent = a.reschedule_times.iter().filter(|t| **t >= since).count();
            if recent >= policy.attempts as usize {
                return Reschedule::Exhausted;
            }
        }
        let ready = a.modify_time.saturating_add(policy.delay.0);
        if ready > self.now {
            Reschedule::At(ready)
        } else {
            Reschedule::Now
        }
    }

    /// When a new allocation counts as healthy for rolling updates: running
    /// for `min_healthy_time`. Ok(()) when healthy, Err(Some(t)) when it
    /// will be at t, Err(None) when it is not running.
    fn healthy(&self, a: &Allocation, job: &Job) -> Result<(), Option<UnixMillis>> {
        self.healthy_for(a, job.spec.update.min_healthy_time.0)
    }

    /// [`Self::healthy`] with an explicit minimum running time.
    fn healthy_for(&self, a: &Allocation, min_healthy: u64) -> Result<(), Option<UnixMillis>> {
        let at = a.running_since().ok_or(None)?.saturating_add(min_healthy);
        if self.now >= at {
            Ok(())
        } else {
            Err(Some(at))
        }
    }

    fn update_in_place(&mut self, a: &Allocation, job: &Job, g: &TaskGroupSpec) {
        let mut u = a.clone();
        u.job_version = job.version;
        u.priority = job.spec.priority;
        u.group_spec = Arc::new(g.clone());
        u.resources = g.total_resources();
        u.modify_time = self.now;
        self.plan.updates.push(u);
    }

    fn reconcile_counted(&mut self, job: &'a Job, allocs: &[&'a Allocation]) {
        let batch = job.spec.job_type == JobType::Batch;
        for a in allocs {
            if a.is_live() && job.group(&a.group).is_none() {
                self.stop(a, "group removed from job");
            }
        }
        for g in &job.spec.groups {
            let mut mine: Vec<&'a Allocation> = allocs
                .iter()
                .copied()
                .filter(|a| a.group == g.name)
                .collect();
            // A live migration's target is not an instance of its own until
            // the migration is done (the servers then clear it); one whose
            // source is gone is stopped (its agent aborts the incoming VM).
            let targets: Vec<&'a Allocation>;
            (targets, mine) = mine.into_iter().partition(|a| a.is_migration_target());
            for t in targets
                .iter()
                .filter(|t| t.desired_status == DesiredStatus::Run)
            {
                let source_on = mine.iter().any(|a| {
                    a.desired_status == DesiredStatus::Run
                        && a.is_migration_source()
                        && a.live_migration == t.live_migration
                        && (!a.client_status.is_terminal() || state_sent(a))
                });
                if !source_on {
                    self.stop(
                        t,
                        "live migration abandoned: its source is no longer running",
                    );
                }
            }
            // Live allocations claim their index first, so a terminal one
            // that was already replaced never competes with its replacement.
            mine.sort_by_key(|a| a.client_status.is_terminal());
            let count = g.count;
            let keep = self.keepers(&mine, count);
            let mut occupied = vec![false; count as usize];
            let mut reqs: Vec<Req<'a>> = Vec::new();
            let mut destructive: Vec<&'a Allocation> = Vec::new();
            let mut in_flight = 0u32;
            let mut migrating: Vec<&'a Allocation> = Vec::new();
            let mut moves = MovesInFlight::default();
            for a in &mine {
                if a.desired_status != DesiredStatus::Run {
                    continue;
                }
                let idx = a.index as usize;
                let in_range = a.index < count;
                match a.client_status {
                    ClientStatus::Pending | ClientStatus::Running => {
                        if !in_range {
                            self.stop(a, "scaled down");
                            continue;
                        }
                        let kept = keep.get(&a.index).copied();
                        if occupied[idx] || kept.is_some_and(|k| k.id != a.id) {
                            let why = match kept {
                                Some(k) => format!(
                                    "duplicate of allocation {} at index {}, which is kept",
                                    k.id, a.index
                                ),
                                None => "duplicate allocation index".to_string(),
                            };
                            self.stop_recorded(a, &why, Some("Duplicate"));
                            continue;
                        }
                        occupied[idx] = true;
                        if self.node_down(a) && !restarts_on_node_loss(g) {
                            continue;
                        }
                        if self.node_down(a) {
                            self.stop(a, "node down: allocation lost");
                            reqs.push(Req {
                                index: a.index,
                                previous: Some(a),
                                reschedule: false,
                                replaces: true,
                            });
                            continue;
                        }
                        if a.job_version != job.version {
                            if placement_changed(&a.group_spec, g) {
                                destructive.push(a);
                            } else {
                                self.update_in_place(a, job, g);
                            }
                        } else if a.live_migration.is_some() {
                            moves.count += 1;
                        } else if a.migrate.is_some() {
                            migrating.push(a);
                        } else if a.previous_alloc.is_some() {
                            if let Err(at) = self.healthy(a, job) {
                                in_flight += 1;
                                if let Some(at) = at {
                                    earliest(&mut self.rolling_at, at);
                                }
                            }
                            if let Err(at) = self.healthy_for(a, g.migrate.min_healthy_time.0) {
                                moves.count += 1;
                                if let Some(at) = at {
                                    earliest(&mut moves.healthy_at, at);
                                }
                            }
                        }
                    }
                    ClientStatus::Complete => {
                        if !in_range || occupied[idx] || a.replaced {
                            continue;
                        }
                        occupied[idx] = true;
                        if a.is_migration_source() && state_sent(a) {
                            // Its target takes over (the servers then stop this one).
                            continue;
                        }
                        if !batch {
                            // A service is meant to keep running: replace it.
                            reqs.push(Req {
                                index: a.index,
                                previous: Some(a),
                                reschedule: false,
                                replaces: true,
                            });
                        }
                    }
                    ClientStatus::Failed => {
                        if !in_range || occupied[idx] || a.replaced {
                            continue;
                        }
                        occupied[idx] = true;
                        match self.reschedule_decision(a, job, g) {
                            Reschedule::Now => reqs.push(Req {
                                index: a.index,
                                previous: Some(a),
                                reschedule: true,
                                replaces: true,
                            }),
                            Reschedule::At(t) => earliest(&mut self.reschedule_at, t),
                            Reschedule::Exhausted => {}
                        }
                    }
                    ClientStatus::Lost => {
                        if !in_range || occupied[idx] || a.replaced {
                            continue;
                        }
                        occupied[idx] = true;
                        if !restarts_on_node_loss(g) {
                            continue;
                        }
                        if let Some(at) = self.fenced_until(a, g) {
                            earliest(&mut self.reschedule_at, at);
                            continue;
                        }
                        reqs.push(Req {
                            index: a.index,
                            previous: Some(a),
                            reschedule: false,
                            replaces: true,
                        });
                    }
                }
            }
            for (i, taken) in occupied.iter().enumerate() {
                if !taken {
                    reqs.push(Req {
                        index: i as u32,
                        previous: None,
                        reschedule: false,
                        replaces: false,
                    });
                }
            }
            let budget = job
                .spec
                .update
                .max_parallel
                .max(1)
                .saturating_sub(in_flight) as usize;
            destructive.sort_by_key(|a| a.index);
            let now_batch = destructive.len().min(budget);
            for a in &destructive[..now_batch] {
                self.stop(a, "alloc is being updated");
                reqs.push(Req {
                    index: a.index,
                    previous: Some(a),
                    reschedule: false,
                    replaces: false,
                });
            }
            if destructive.len() > now_batch {
                let next = self.now.saturating_add(job.spec.update.min_healthy_time.0);
                earliest(&mut self.rolling_at, next);
            }
            reqs.sort_by_key(|r| r.index);
            self.place_group(job, g, reqs);
            self.migrate_group(job, g, migrating, moves);
        }
    }

    /// Carry out the group's requested moves, at most `migrate.max_parallel`
    /// in flight: each is a replacement placed on the requested node (or the
    /// best other node) and the old allocation stopped, in this one plan. A
    /// move with nowhere to go is dropped (its request cleared): the
    /// allocation keeps running where it is; unless its node is draining,
    /// then the request stays and the group's placement failure blocks the
    /// evaluation until capacity frees.
    ///
    /// The next batch waits for this one: a follow-up evaluation at the time
    /// the running replacements become healthy; replacements not running yet
    /// have no such time, and the evaluation that their agent's "running"
    /// report creates continues (the server creates one while a job has
    /// moves waiting).
    fn migrate_group(
        &mut self,
        job: &Job,
        g: &TaskGroupSpec,
        mut migrating: Vec<&'a Allocation>,
        in_flight: MovesInFlight,
    ) {
        if migrating.is_empty() {
            return;
        }
        migrating.sort_by_key(|a| a.index);
        let budget = g
            .migrate
            .max_parallel
            .max(1)
            .saturating_sub(in_flight.count) as usize;
        let now_batch = migrating.len().min(budget);
        if migrating.len() > now_batch {
            if let Some(at) = in_flight.healthy_at {
                earliest(&mut self.migrate_at, at);
            }
        }
        let rules = GroupRules::new(job, g);
        let ctx = rules.ctx(g);
        let filter = &rules.filter;
        for a in &migrating[..now_batch] {
            let Some(req) = a.migrate.as_ref() else {
                continue;
            };
            let from = self.state.node_slot(&a.node_id);
            let target = req
                .to
                .as_ref()
                .and_then(|id| self.state.node_slot(id))
                .filter(|s| Some(*s) != from)
                .filter(|s| {
                    self.state
                        .entry(*s)
                        .node
                        .as_ref()
                        .is_some_and(|n| n.schedulable() && filter.accepts(n))
                });
            let slot = match target {
                Some(t) if self.placer.place_on(self.state, &ctx, t).is_ok() => Some(t),
                _ => {
                    self.placer.set_avoid(from);
                    let placed = self.place_n(job, g, &ctx, 1);
                    self.placer.set_avoid(None);
                    placed.first().copied()
                }
            };
            match slot {
                Some(slot) if req.live && g.migrates_live() => {
                    self.start_live_migration(job, g, a, req, slot);
                }
                Some(slot) => {
                    self.stop(a, &format!("moved to another node: {}", req.reason));
                    let n = self.move_target(job, g, a, slot);
                    self.plan.placements.push(n);
                }
                None if self.source_draining(a) => self.record_failure(&ctx, 1),
                None => {
                    let mut u = (*a).clone();
                    u.migrate = None;
                    u.modify_time = self.now;
                    self.plan.updates.push(u);
                }
            }
        }
    }

    /// The allocation that takes `a`'s place on node `slot` in a move (same
    /// index, `a` as its previous allocation, its host ports picked).
    fn move_target(
        &mut self,
        job: &Job,
        g: &TaskGroupSpec,
        a: &'a Allocation,
        slot: u32,
    ) -> Allocation {
        let r = Req {
            index: a.index,
            previous: Some(a),
            reschedule: false,
            replaces: false,
        };
        let mut n = self.new_alloc(job, g, &r, slot);
        n.ports = self.placer.next_ports();
        n
    }

    /// A live move: the replacement is placed on `slot` as the target of a
    /// [`LiveMigration`] and the source keeps running (it is stopped by the
    /// servers once the target runs, or the target is, if it fails).
    fn start_live_migration(
        &mut self,
        job: &Job,
        g: &TaskGroupSpec,
        a: &'a Allocation,
        req: &taba_types::MigrateRequest,
        slot: u32,
    ) {
        let mut n = self.move_target(job, g, a, slot);
        let lm = LiveMigration {
            source_alloc: a.id.clone(),
            source_node: a.node_id.clone(),
            target_alloc: n.id.clone(),
            target_node: n.node_id.clone(),
            target_node_name: n.node_name.clone(),
            reason: req.reason.clone(),
            started_at: self.now,
            source_accel: None,
            incoming: None,
            cancel: None,
        };
        n.live_migration = Some(lm.clone());
        self.plan.placements.push(n);
        let mut u = a.clone();
        u.migrate = None;
        u.live_migration = Some(lm);
        u.migration_status = None;
        u.modify_time = self.now;
        self.plan.updates.push(u);
    }

    /// Whether `a`'s node is being drained (its moves must happen).
    fn source_draining(&self, a: &Allocation) -> bool {
        self.state.node(&a.node_id).is_some_and(|n| n.draining())
    }

    /// Pick nodes for up to `n` allocations: the scored path for groups with
    /// soft preferences, the bin-pack walk otherwise.
    fn place_n(&mut self, job: &Job, g: &TaskGroupSpec, ctx: &GroupCtx, n: usize) -> Vec<u32> {
        match Preferences::of(job, g) {
            Some(prefs) => prefs.place(&mut self.placer, self.state, ctx, n),
            None => self.placer.place_many(self.state, ctx, n),
        }
    }

    fn place_group(&mut self, job: &Job, g: &TaskGroupSpec, reqs: Vec<Req<'a>>) {
        if reqs.is_empty() {
            return;
        }
        let rules = GroupRules::new(job, g);
        let ctx = rules.ctx(g);
        let mut quota = crate::quota::Tracker::new(self.state, &self.plan, &job.spec.namespace);
        let allowed = quota.as_ref().map_or(reqs.len(), |q| {
            q.how_many(ctx.res).min(reqs.len() as u64) as usize
        });
        let slots = self.place_n(job, g, &ctx, allowed);
        let placed = slots.len();
        let mut missing = reqs.len() - placed;
        let by_quota = slots.len() == allowed && allowed < reqs.len();
        if let Some(q) = quota.as_mut().filter(|_| by_quota) {
            q.take(ctx.res, allowed as u64);
            let reason = q.reason(ctx.res);
            self.record_quota_failure(&ctx, missing as u32, reason);
        }
        for (r, slot) in reqs.iter().zip(slots) {
            let mut a = self.new_alloc(job, g, r, slot);
            a.ports = self.placer.next_ports();
            self.plan.placements.push(a);
        }
        if missing > 0 && !by_quota && self.preemption.allows(job.spec.job_type) {
            // Only what the quota allows; preemption makes room, not quota.
            missing -= self.place_by_preemption(job, g, &ctx, &reqs[placed..allowed]);
        }
        if missing > 0 && !by_quota {
            self.record_failure(&ctx, missing as u32);
        }
    }

    /// Place what the normal placement could not by evicting lower-priority
    /// allocations (see [`crate::preempt`]); returns how many were placed.
    fn place_by_preemption(
        &mut self,
        job: &Job,
        g: &TaskGroupSpec,
        ctx: &GroupCtx,
        reqs: &[Req<'a>],
    ) -> usize {
        let Some(who) = preemptor(job) else {
            return 0;
        };
        let mut search = Search::new(self.state, &self.placer, ctx, &who, &self.evicted);
        let mut placed = 0;
        for r in reqs {
            let Some(choice) = search.best(self.state, &self.placer, ctx) else {
                break;
            };
            let slot = choice.slot;
            let Some(a) = self.evict_and_place(job, g, ctx, r, choice) else {
                break;
            };
            self.plan.placements.push(a);
            placed += 1;
            search.refresh(self.state, &self.placer, ctx, &who, &self.evicted, slot);
        }
        placed
    }

    /// Evict `choice.victims` and place one allocation on `choice.slot`.
    fn evict_and_place(
        &mut self,
        job: &Job,
        g: &TaskGroupSpec,
        ctx: &GroupCtx,
        r: &Req,
        choice: Choice,
    ) -> Option<Allocation> {
        let mut victims = Vec::with_capacity(choice.victims.len());
        for v in &choice.victims {
            let a = self.state.alloc(&v.id)?;
            victims.push(a);
        }
        for a in &victims {
            self.stopped.insert(a.id.clone());
            if let Some(slot) = self.state.alloc_slot(&a.id) {
                self.evicted.insert(slot);
            }
            self.placer.release(self.state, a, false);
        }
        // The search made sure the evictions make room.
        self.placer.place_on(self.state, ctx, choice.slot).ok()?;
        let mut placed = self.new_alloc(job, g, r, choice.slot);
        placed.ports = self.placer.next_ports();
        for a in victims {
            self.plan.stops.push(AllocStop {
                alloc_id: a.id.clone(),
                node_id: a.node_id.clone(),
                desired_status: DesiredStatus::Evict,
                description: format!(
                    "preempted by job {} (priority {}) for allocation {}",
                    job.spec.name, job.spec.priority, placed.name
                ),
                preempted_by: Some(placed.id.clone()),
                event: None,
            });
            placed.preempted_allocs.push(a.id.clone());
        }
        Some(placed)
    }

    /// Place one allocation on a given node (system jobs), evicting
    /// lower-priority allocations there if it does not fit and the job may
    /// preempt. Err names the exhausted dimension or the distinct rule.
    fn place_on_node(
        &mut self,
        job: &Job,
        g: &TaskGroupSpec,
        ctx: &GroupCtx,
        slot: u32,
        r: &Req,
    ) -> Result<Allocation, String> {
        let dim = match self.placer.place_on(self.state, ctx, slot) {
            Ok(()) => {
                let mut a = self.new_alloc(job, g, r, slot);
                a.ports = self.placer.next_ports();
                return Ok(a);
            }
            Err(dim) => dim,
        };
        if dim == "distinct" || !self.preemption.allows(job.spec.job_type) {
            return Err(dim);
        }
        let Some(who) = preemptor(job) else {
            return Err(dim);
        };
        let found = preempt::best_on_node(self.state, &self.placer, ctx, &who, &self.evicted, slot);
        match found {
            Some((_, victims)) => self
                .evict_and_place(job, g, ctx, r, Choice { slot, victims })
                .ok_or(dim),
            None => Err(dim),
        }
    }

    /// Why the namespace's quota refuses one more allocation of `res` (system jobs).
    fn quota_refuses(&self, quota: &mut Option<crate::quota::Tracker>, res: Res) -> Option<String> {
        let q = quota.as_mut()?;
        q.catch_up(self.state, &self.plan);
        (q.how_many(res) == 0).then(|| q.reason(res))
    }

    /// The group's last `missing` placements were refused by the namespace's quota.
    fn record_quota_failure(&mut self, ctx: &GroupCtx, missing: u32, reason: String) {
        let ready = self
            .state
            .node_entries()
            .filter(|(_, e)| e.schedulable())
            .count() as u32;
        let f = self
            .failed_groups
            .entry(ctx.name.to_string())
            .or_insert_with(|| PlacementFailure {
                nodes_evaluated: ready,
                nodes_available: ready,
                coalesced: missing - 1,
                ..PlacementFailure::default()
            });
        f.quota = reason;
        *self.queued.entry(ctx.name.to_string()).or_default() += missing;
    }

    fn record_failure(&mut self, ctx: &GroupCtx, missing: u32) {
        let mut f = self.placer.explain(self.state, ctx);
        let entry = self.failed_groups.entry(ctx.name.to_string());
        match entry {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                o.get_mut().coalesced += missing;
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                f.coalesced = missing - 1;
                v.insert(f);
            }
        }
        *self.queued.entry(ctx.name.to_string()).or_default() += missing;
    }

    fn new_alloc(&mut self, job: &Job, g: &TaskGroupSpec, r: &Req, slot: u32) -> Allocation {
        let node = self
            .state
            .entry(slot)
            .node
            .as_ref()
            .expect("the placer only picks known nodes");
        let mut reschedule_times = r
            .previous
            .map(|p| p.reschedule_times.clone())
            .unwrap_or_default();
        if r.reschedule {
            let policy = g.reschedule_policy(job.spec.job_type);
            if !policy.unlimited {
                let since = self.now.saturating_sub(policy.interval.0);
                reschedule_times.retain(|t| *t >= since);
            }
            reschedule_times.push(self.now);
            if reschedule_times.len() > MAX_RESCHEDULE_TIMES {
                let extra = reschedule_times.len() - MAX_RESCHEDULE_TIMES;
                reschedule_times.drain(..extra);
            }
        }
        if let Some(p) = r.previous.filter(|_| r.replaces) {
            if !self.plan.replaced.contains(&p.id) {
                self.plan.replaced.push(p.id.clone());
            }
        }
        Allocation {
            id: AllocId(self.ids.next_uuid()),
            namespace: job.spec.namespace.clone(),
            job: job.spec.name.clone(),
            job_version: job.version,
            job_type: job.spec.job_type,
            priority: job.spec.priority,
            group: g.name.clone(),
            name: format!("{}.{}[{}]", job.spec.name, g.name, r.index),
            index: r.index,
            group_spec: Arc::new(g.clone()),
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            resources: g.total_resources(),
            ports: Vec::new(),
            desired_status: DesiredStatus::Run,
            desired_description: String::new(),
            client_status: ClientStatus::Pending,
            client_description: String::new(),
            task_states: BTreeMap::new(),
            usage: None,
            events: Vec::new(),
            eval_id: self.eval.id.clone(),
            previous_alloc: r.previous.map(|p| p.id.clone()),
            reschedule_times,
            replaced: false,
            preempted_allocs: Vec::new(),
            preempted_by: None,
            migrate: None,
            live_migration: None,
            migration_status: None,
            create_time: self.now,
            modify_time: self.now,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn reconcile_system(&mut self, job: &'a Job, allocs: &[&'a Allocation]) {
        for a in allocs {
            if a.is_live() && job.group(&a.group).is_none() {
                self.stop(a, "group removed from job");
            }
        }
        let mut nodes: Vec<(u32, &'a taba_types::Node)> = self
            .state
            .node_entries()
            .filter_map(|(slot, e)| e.node.as_ref().map(|n| (slot, n)))
            .collect();
        nodes.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        for g in &job.spec.groups {
            let rules = GroupRules::new(job, g);
            let ctx = rules.ctx(g);
            let filter = &rules.filter;
            let mut quota = crate::quota::Tracker::new(self.state, &self.plan, &job.spec.namespace);
            let mut by_node: BTreeMap<&taba_types::NodeId, Vec<&'a Allocation>> = BTreeMap::new();
            for a in allocs.iter().copied().filter(|a| a.group == g.name) {
                by_node.entry(&a.node_id).or_default().push(a);
            }
            let mut destructive: Vec<&'a Allocation> = Vec::new();
            let mut in_flight = 0u32;
            let mut failure: Option<PlacementFailure> = None;
            let mut missing = 0u32;
            for (slot, node) in &nodes {
                let here: Vec<&'a Allocation> = by_node.get(&node.id).cloned().unwrap_or_default();
                let live: Vec<&'a Allocation> =
                    here.iter().copied().filter(|a| a.is_live()).collect();
                if node.status == NodeStatus::Down {
                    continue; // its allocations are lost, not stopped
                }
                if node.status != NodeStatus::Ready {
                    continue; // initializing: wait for it
                }
                if let Some(reason) = filter.reject_reason(node) {
                    for a in &live {
                        self.stop(a, &format!("node no longer qualifies: {reason}"));
                    }
                    continue;
                }
                if !node.schedulable() {
                    // Ineligible or draining: what runs stays (a drain stops
                    // it last), nothing new is placed.
                    continue;
                }
                for extra in live.iter().skip(1) {
                    self.stop(extra, "duplicate allocation on node");
                }
                if let Some(a) = live.first() {
                    if a.job_version != job.version {
                        if placement_changed(&a.group_spec, g) {
                            destructive.push(a);
                        } else {
                            self.update_in_place(a, job, g);
                        }
                    } else if a.previous_alloc.is_some() {
                        if let Err(at) = self.healthy(a, job) {
                            in_flight += 1;
                            if let Some(at) = at {
                                earliest(&mut self.rolling_at, at);
                            }
                        }
                    }
                    continue;
                }
                // Nothing live here: is the node's share done, waiting, or to place?
                let latest = here
                    .iter()
                    .copied()
                    .filter(|a| a.desired_status == DesiredStatus::Run && !a.replaced)
                    .max_by_key(|a| (a.create_index, a.create_time));
                let mut req = Req {
                    index: 0,
                    previous: None,
                    reschedule: false,
                    replaces: false,
                };
                match latest.map(|a| (a, a.client_status)) {
                    Some((_, ClientStatus::Complete)) => continue,
                    Some((a, ClientStatus::Failed)) => match self.reschedule_decision(a, job, g) {
                        Reschedule::Now => {
                            req.previous = Some(a);
                            req.reschedule = true;
                            req.replaces = true;
                        }
                        Reschedule::At(t) => {
                            earliest(&mut self.reschedule_at, t);
                            continue;
                        }
                        Reschedule::Exhausted => continue,
                    },
                    Some((a, ClientStatus::Lost)) => {
                        req.previous = Some(a);
                        req.replaces = true;
                    }
                    _ => {}
                }
                if let Some(why) = self.quota_refuses(&mut quota, ctx.res) {
                    missing += 1;
                    failure.get_or_insert_with(PlacementFailure::default).quota = why;
                    continue;
                }
                match self.place_on_node(job, g, &ctx, *slot, &req) {
                    Ok(a) => self.plan.placements.push(a),
                    Err(dim) => {
                        missing += 1;
                        let f = failure.get_or_insert_with(PlacementFailure::default);
                        *f.exhausted.entry(dim).or_default() += 1;
                    }
                }
            }
            let budget = job
                .spec
                .update
                .max_parallel
                .max(1)
                .saturating_sub(in_flight) as usize;
            let now_batch = destructive.len().min(budget);
            for a in &destructive[..now_batch] {
                self.stop(a, "alloc is being updated");
                let slot = self
                    .state
                    .node_slot(&a.node_id)
                    .expect("allocation's node is known");
                let req = Req {
                    index: 0,
                    previous: Some(a),
                    reschedule: false,
                    replaces: false,
                };
                if let Some(why) = self.quota_refuses(&mut quota, ctx.res) {
                    missing += 1;
                    failure.get_or_insert_with(PlacementFailure::default).quota = why;
                    continue;
                }
                match self.place_on_node(job, g, &ctx, slot, &req) {
                    Ok(n) => self.plan.placements.push(n),
                    Err(dim) => {
                        missing += 1;
                        let f = failure.get_or_insert_with(PlacementFailure::default);
                        *f.exhausted.entry(dim).or_default() += 1;
                    }
                }
            }
            if destructive.len() > now_batch {
                let next = self.now.saturating_add(job.spec.update.min_healthy_time.0);
                earliest(&mut self.rolling_at, next);
            }
            if let Some(mut f) = failure {
                let ready = nodes.iter().filter(|(_, n)| n.schedulable()).count() as u32;
                f.nodes_evaluated = ready;
                f.nodes_available = ready;
                f.coalesced = missing - 1;
                self.failed_groups.insert(g.name.clone(), f);
                *self.queued.entry(g.name.clone()).or_default() += missing;
            }
        }
    }

    fn follow_up(&mut self, trigger: EvalTrigger, at: UnixMillis, why: &str) -> Evaluation {
        Evaluation {
            id: EvalId(self.ids.next_uuid()),
            namespace: self.eval.namespace.clone(),
            job: self.eval.job.clone(),
            job_type: self.eval.job_type,
            priority: self.eval.priority,
            triggered_by: trigger,
            node_id: None,
            status: EvalStatus::Pending,
            status_description: why.to_string(),
            failed_groups: BTreeMap::new(),
            queued: BTreeMap::new(),
            wait_until: Some(at),
            previous_eval: Some(self.eval.id.clone()),
            create_time: self.now,
            create_index: 0,
            modify_index: 0,
        }
    }

    fn finish(mut self) -> SchedulerOutcome {
        let mut follow_ups = Vec::new();
        if let Some(at) = self.reschedule_at {
            follow_ups.push(self.follow_up(EvalTrigger::Retry, at, "delayed reschedule"));
        }
        if let Some(at) = self.migrate_at {
            follow_ups.push(self.follow_up(EvalTrigger::Rebalance, at, "next batch of moves"));
        }
        if let Some(at) = self.rolling_at {
            follow_ups.push(self.follow_up(
                EvalTrigger::RollingUpdate,
                at,
                "next rolling update batch",
            ));
        }
        let (status, status_description) = if self.failed_groups.is_empty() {
            (EvalStatus::Complete, String::new())
        } else {
            let parts: Vec<String> = self
                .failed_groups
                .iter()
                .map(|(g, f)| format!("{g}: {}", f.summary()))
                .collect();
            let mut why = format!("placements failed: {}", parts.join("; "));
            if self.eval.triggered_by == EvalTrigger::Preemption {
                why.push_str("; the job's allocations were preempted by higher-priority work");
            }
            (EvalStatus::Blocked, why)
        };
        SchedulerOutcome {
            plan: self.plan,
            status,
            status_description,
            failed_groups: self.failed_groups,
            queued: self.queued,
            follow_ups,
        }
    }
}

/// The job as a preemptor, if it could evict anything at all.
fn preemptor(job: &Job) -> Option<Preemptor<'_>> {
    Preemptor::new(
        &job.spec.namespace,
        &job.spec.name,
        job.spec.job_type,
        job.spec.priority,
    )
}

/// Whether moving from `old` to `new` needs new allocations (anything but
/// `count` changed).
fn placement_changed(old: &TaskGroupSpec, new: &TaskGroupSpec) -> bool {
    if old.count == new.count {
        return old != new;
    }
    let mut o = old.clone();
    o.count = new.count;
    o != *new
}

/// Whether a group's allocations are restarted elsewhere when their node is
/// lost: VMs with local disks only when the group says so
/// (`migrate.restart_on_node_loss`), since their disks stay on the node.
fn restarts_on_node_loss(g: &TaskGroupSpec) -> bool {
    !g.has_local_disks() || g.migrate.restart_on_node_loss
}

/// Why `node` cannot take allocation `a` of `job` moved there now (not
/// ready, ineligible or draining, a missing driver, a constraint, too little
/// cpu, memory or disk left), if it cannot: the check `alloc migrate --to`
/// answers with before it asks for the move. Host ports and spread rules
/// are left to the scheduler, which then picks another node.
pub fn move_rejection(
    state: &ClusterState,
    job: &Job,
    a: &Allocation,
    node: &taba_types::Node,
) -> Option<String> {
    if node.id == a.node_id {
        return Some("the allocation already runs there".into());
    }
    if node.status != NodeStatus::Ready {
        return Some(format!("the node is {}", node.status));
    }
    if node.eligibility != taba_types::Eligibility::Eligible {
        return Some("the node is not eligible for placements".into());
    }
    if node.draining() {
        return Some("the node is draining".into());
    }
    let Some(g) = job.group(&a.group) else {
        return Some(format!("the job has no group {:?}", a.group));
    };
    if let Some(why) = GroupFilter::new(job, g).reject_reason(node) {
        return Some(why);
    }
    let slot = state.node_slot(&node.id)?;
    let free = state.entry(slot).free();
    let need = crate::state::Res::of(&g.total_resources());
    need.exceeds(&free).map(|dim| {
        format!(
            "not enough {dim} left (the group needs {} MHz cpu, {} memory, {} disk; the node has {} MHz, {}, {} free)",
            need.cpu,
            taba_types::ByteSize(need.mem),
            taba_types::ByteSize(need.disk),
            free.cpu,
            taba_types::ByteSize(free.mem),
            taba_types::ByteSize(free.disk)
        )
    })
}

/// Whether a live migration's source sent its state (the target takes over).
fn state_sent(a: &Allocation) -> bool {
    let target = a.live_migration.as_ref().map(|m| &m.target_alloc);
    a.migration_status
        .as_ref()
        .is_some_and(|s| Some(&s.target_alloc) == target && s.completed.is_some())
}
