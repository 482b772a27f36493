//! `taba alloc migrate` and the servers' part of a live migration.
//!
//! [`ServerState::migrate_alloc`] checks the target (the scheduler's
//! [`taba_scheduler::move_rejection`]), then asks for the move with a
//! [`MigrateRequest`] (live for groups whose driver migrates running
//! workloads), as drains and the rebalancer do. The reconciler places the
//! replacement: for a live move it becomes the *target* of a
//! [`LiveMigration`] set on both allocations, and the source keeps running.
//!
//! The agents then play their parts and report them
//! ([`taba_types::wire::AllocUpdate::migration`]); [`migration_step`] moves
//! the migration on as the reports arrive, within the update's store
//! transaction:
//!
//! ```text
//! source agent           servers                              target agent
//! source_accel  ------>  copied to both allocations  ------>  prepare_incoming
//!                        copied to both allocations  <------  incoming {addr, disks}
//! migrate_out   <------
//! progress ----------->  source.migration_status (CLI shows it)
//! completed ---------->  event on the source
//!                        target running <---------------------  finish_incoming
//!                        source stopped "migrated to NODE",
//!                        both cleared: the move is done
//! failed (either side, or the target ends) -> target stopped (it aborts),
//!                        source cleared (it runs on), events say why
//! ```

use super::{job_key, ServerState, StateError};
use crate::broker::now_ms;
use taba_store::{Table, Txn};
use taba_types::api::MigrateAllocResponse;
use taba_types::{
    AllocEvent, Allocation, ClientStatus, DesiredStatus, EvalTrigger, LiveMigration,
    MigrateRequest, MigrationReport,
};

impl ServerState {
    /// `taba alloc migrate ID [--to NODE]`: check and ask for the move.
    pub async fn migrate_alloc(
        &self,
        id: &str,
        to: Option<&str>,
        actor: &str,
    ) -> Result<MigrateAllocResponse, StateError> {
        let a = self.find_alloc(id)?;
        let _held = self.locks.lock(vec![job_key(&a.namespace, &a.job)]).await;
        let mut a = self.find_alloc(a.id.as_str())?;
        if !a.is_live() || a.client_status != ClientStatus::Running {
            return Err(StateError::Conflict(format!(
                "allocation {} is not running (desired {}, status {}); only a running allocation moves",
                a.id, a.desired_status, a.client_status
            )));
        }
        if a.live_migration.is_some() || a.migrate.is_some() || a.is_migration_target() {
            return Err(StateError::Conflict(format!(
                "allocation {} is already moving",
                a.id
            )));
        }
        let job = self.job(&a.namespace, &a.job)?;
        let target = match to {
            Some(key) => {
                let node = self.find_node(key)?;
                let why = taba_scheduler::move_rejection(&self.cluster(), &job, &a, &node);
                if let Some(why) = why {
                    return Err(StateError::Invalid {
                        field: "to".into(),
                        message: format!(
                            "node {} cannot take allocation {}: {why}",
                            node.name, a.id
                        ),
                    });
                }
                Some(node)
            }
            None => None,
        };
        let live = a.group_spec.migrates_live();
        let now = now_ms();
        a.migrate = Some(MigrateRequest {
            reason: format!("alloc migrate by {actor}"),
            to: target.as_ref().map(|n| n.id.clone()),
            requested_at: now,
            live,
        });
        a.modify_time = now;
        let eval = Self::new_eval(&job, EvalTrigger::AllocMigrate, None);
        let txn = Txn::new()
            .put_encoded(Table::Allocs, a.id.as_str(), &a)
            .put_encoded(Table::Evals, eval.id.as_str(), &eval);
        let index = self.commit(txn).await?;
        let eval_id = eval.id.clone();
        self.apply(index, vec![], vec![a.clone()], vec![], vec![eval.clone()]);
        self.broker.enqueue(eval);
        let whereto = target
            .map(|n| format!("node {}", n.name))
            .unwrap_or_else(|| "the best other node".into());
        let message = if live {
            format!("allocation {} migrates live to {whereto}", a.id)
        } else {
            let drivers: Vec<&str> = a
                .group_spec
                .tasks
                .iter()
                .map(|t| t.driver.as_str())
                .collect();
            format!(
                "driver {} cannot migrate a running task: allocation {} is restarted on {whereto} (a move)",
                drivers.join(", "),
                a.id
            )
        };
        Ok(MigrateAllocResponse {
            eval_id,
            index,
            live,
            message,
        })
    }
}

/// Move the live migration `a` takes part in on, after `a`'s agent reported
/// `report` (and `a`'s client state, already merged). Returns the peer
/// allocation when it changed. A report about another migration than the
/// one in progress (an old one) is ignored.
pub(super) fn migration_step(
    old: &Allocation,
    a: &mut Allocation,
    peer: Option<&Allocation>,
    report: Option<MigrationReport>,
    now: u64,
) -> Option<Allocation> {
    let lm = a.live_migration.clone()?;
    let Some(peer) = peer else {
        // The other side is gone (garbage-collected): nothing to wait for.
        abort_own(a, &lm, "the other allocation is gone", now);
        return None;
    };
    let mut peer = peer.clone();
    let report = report.filter(|r| r.target_alloc == lm.target_alloc);
    let is_source = lm.source_alloc == a.id;
    if let Some(why) = failure(old, a, &lm, report.as_ref(), is_source) {
        let (source, target) = if is_source {
            (a, &mut peer)
        } else {
            (&mut peer, a)
        };
        abort(source, target, &why, now);
        return Some(peer);
    }
    let mut next = lm.clone();
    if let Some(r) = &report {
        if is_source && next.source_accel.is_none() {
            next.source_accel = r.source_accel;
        }
        if !is_source && next.incoming.is_none() {
            next.incoming = r.incoming.clone();
        }
        if is_source && (r.progress.is_some() || r.completed.is_some()) {
            if let (Some(done), true) = (
                &r.completed,
                a.migration_status
                    .as_ref()
                    .is_none_or(|s| s.completed.is_none()),
            ) {
                a.push_event(AllocEvent::system(
                    now,
                    "Migration Completed",
                    format!(
                        "state sent to node {}: {} bytes in {} ms, paused {} ms",
                        lm.target_node_name,
                        done.transferred,
                        done.elapsed_ms,
                        done.downtime_ms.unwrap_or(0)
                    ),
                ));
            }
            a.migration_status = Some(r.clone());
        }
    }
    if !is_source && a.client_status == ClientStatus::Running {
        finish(&mut peer, a, now);
        return Some(peer);
    }
    if next != lm {
        a.live_migration = Some(next.clone());
        if peer.live_migration.as_ref() == Some(&lm) {
            peer.live_migration = Some(next);
            peer.modify_time = now;
            return Some(peer);
        }
    }
    None
}

/// Why the migration failed, if it did: a side reports it, the target
/// ended, or the source ended without having sent its state.
fn failure(
    old: &Allocation,
    a: &Allocation,
    lm: &LiveMigration,
    report: Option<&MigrationReport>,
    is_source: bool,
) -> Option<String> {
    let side = if is_source { "source" } else { "target" };
    if let Some(why) = report.and_then(|r| r.failed.clone()) {
        return Some(format!("{side}: {why}"));
    }
    let ended = a.client_status.is_terminal() && !old.client_status.is_terminal();
    if !ended {
        return None;
    }
    let sent = a
        .migration_status
        .as_ref()
        .is_some_and(|s| s.target_alloc == lm.target_alloc && s.completed.is_some())
        || report.is_some_and(|r| r.completed.is_some());
    if is_source && sent {
        return None;
    }
    Some(format!(
        "{side} allocation ended ({})",
        a.client_description
    ))
}

/// The target runs: the move is done.
fn finish(source: &mut Allocation, target: &mut Allocation, now: u64) {
    let Some(lm) = target.live_migration.take() else {
        return;
    };
    target.push_event(AllocEvent::system(
        now,
        "Migrated",
        format!(
            "migrated in from allocation {} ({})",
            lm.source_alloc, lm.reason
        ),
    ));
    if source.live_migration.as_ref().map(|m| &m.target_alloc) == Some(&lm.target_alloc) {
        source.live_migration = None;
        source.desired_status = DesiredStatus::Stop;
        source.desired_description = format!("migrated to {}", lm.target_node_name);
        source.push_event(AllocEvent::system(
            now,
            "Migrated",
            format!(
                "migrated to node {} as allocation {}",
                lm.target_node_name, lm.target_alloc
            ),
        ));
        source.modify_time = now;
    }
}

/// The migration failed: the target stops (its agent aborts the incoming
/// workload), the source runs on.
fn abort(source: &mut Allocation, target: &mut Allocation, why: &str, now: u64) {
    let msg = format!("live migration to node {} failed: {why}", target.node_name);
    if source.is_migration_source() {
        source.live_migration = None;
        source.push_event(AllocEvent::system(now, "Migration Failed", msg.clone()));
        source.modify_time = now;
    }
    if target.is_migration_target() {
        target.live_migration = None;
        if target.desired_status == DesiredStatus::Run {
            target.desired_status = DesiredStatus::Stop;
            target.desired_description = msg.clone();
        }
        target.push_event(AllocEvent::system(now, "Migration Failed", msg));
        target.modify_time = now;
    }
}

/// [`abort`] when only `a` is left.
fn abort_own(a: &mut Allocation, lm: &LiveMigration, why: &str, now: u64) {
    let msg = format!(
        "live migration to node {} failed: {why}",
        lm.target_node_name
    );
    let target = a.is_migration_target();
    a.live_migration = None;
    if target && a.desired_status == DesiredStatus::Run {
        a.desired_status = DesiredStatus::Stop;
        a.desired_description = msg.clone();
    }
    a.push_event(AllocEvent::system(now, "Migration Failed", msg));
}
