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
//! cancel asked           cancel on both ---------> source: migrate_cancel,
//!                                                  reports failed -> as above,
//!                                                  events "Migration Cancelled"
//! ```
//!
//! A migration also fails when a side's node goes down (`nodes.rs`) or its
//! source stays silent past `migrate.timeout` + [`MIGRATION_GRACE`]
//! ([`ServerState::expire_migrations`], run every second by the leader).

use super::{job_key, ServerState, StateError};
use crate::broker::now_ms;
use taba_store::{Table, Txn};
use taba_types::api::{CancelMigrationResponse, MigrateAllocResponse};
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

/// How long past its group's `migrate.timeout` the servers wait for a
/// live migration's source before they fail it themselves (its agent is
/// gone or cut off: it would have cancelled at the timeout).
pub const MIGRATION_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl ServerState {
    /// `taba alloc migrate ID --cancel` (ID the source or the target): a
    /// live migration whose source has not started streaming ends at once;
    /// one that streams is cancelled by its source agent (QMP
    /// `migrate_cancel`), which reports it failed, "cancelled by WHO". A
    /// move asked for but not started is withdrawn.
    pub async fn cancel_migration(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<CancelMigrationResponse, StateError> {
        let a = self.find_alloc(id)?;
        let _held = self.locks.lock(vec![job_key(&a.namespace, &a.job)]).await;
        let mut a = self.find_alloc(a.id.as_str())?;
        let now = now_ms();
        let who = format!("cancelled by {actor}");
        let Some(lm) = a.live_migration.clone() else {
            if a.migrate.take().is_none() {
                return Err(StateError::Conflict(format!(
                    "allocation {} is not migrating",
                    a.id
                )));
            }
            a.push_event(AllocEvent::system(
                now,
                "Migration Cancelled",
                format!("the move asked for was withdrawn: {who}"),
            ));
            a.modify_time = now;
            let message = format!("the move of allocation {} was withdrawn", a.id);
            let index = self.commit_allocs(vec![a]).await?;
            return Ok(CancelMigrationResponse { index, message });
        };
        let (source, target) = {
            let c = self.cluster();
            (
                c.alloc(&lm.source_alloc).cloned(),
                c.alloc(&lm.target_alloc).cloned(),
            )
        };
        let (Some(mut source), Some(mut target)) = (source, target) else {
            let end = Ending::of(
                &LiveMigration {
                    cancel: Some(who),
                    ..lm
                },
                "",
            );
            abort_own(&mut a, &end, now);
            let index = self.commit_allocs(vec![a]).await?;
            return Ok(CancelMigrationResponse {
                index,
                message: end.message,
            });
        };
        let whose = format!(
            "the live migration of allocation {} to node {}",
            lm.source_alloc, lm.target_node_name
        );
        if state_sent(&source, &lm) {
            return Err(StateError::Conflict(format!(
                "{whose} cannot be cancelled: the source has sent its state, the target takes over"
            )));
        }
        if in_post_copy(&source, &lm) {
            return Err(StateError::Conflict(format!(
                "{whose} cannot be cancelled: it switched to post-copy, the VM runs on the target"
            )));
        }
        if lm.cancel.is_some() {
            return Ok(CancelMigrationResponse {
                index: self.index(),
                message: format!("{whose} is being cancelled"),
            });
        }
        let cancelled = LiveMigration {
            cancel: Some(who),
            ..lm.clone()
        };
        let message = if lm.incoming.is_none() {
            // The source has not started to stream: end it here.
            abort(&mut source, &mut target, &Ending::of(&cancelled, ""), now);
            format!("{whose} was cancelled; it runs on where it was")
        } else {
            // The source streams: its agent cancels (or it completes first).
            for x in [&mut source, &mut target] {
                x.live_migration = Some(cancelled.clone());
                x.modify_time = now;
            }
            format!("{whose} is being cancelled")
        };
        let index = self.commit_allocs(vec![source, target]).await?;
        Ok(CancelMigrationResponse { index, message })
    }

    /// Fail the live migrations whose source has been silent past the
    /// group's `migrate.timeout` plus [`MIGRATION_GRACE`] (its agent died or
    /// is cut off): the target is stopped, the source (whose workload runs
    /// on where it was; its agent re-adopts it) is cleared. Not once the
    /// source sent its state or switched to post-copy: the target has the
    /// workload then.
    pub async fn expire_migrations(&self, now: u64) -> Result<usize, StateError> {
        let overdue: Vec<(Allocation, LiveMigration)> = {
            let c = self.cluster();
            c.live_migration_sources()
                .filter_map(|a| {
                    let lm = a.live_migration.clone()?;
                    let limit = a.group_spec.migrate.timeout.as_duration() + MIGRATION_GRACE;
                    let late = now > lm.started_at + limit.as_millis() as u64;
                    let ending = state_sent(a, &lm) || in_post_copy(a, &lm);
                    (late && !ending).then(|| (a.clone(), lm))
                })
                .collect()
        };
        let mut n = 0;
        for (a, lm) in overdue {
            let _held = self.locks.lock(vec![job_key(&a.namespace, &a.job)]).await;
            let Ok(mut source) = self.find_alloc(a.id.as_str()) else {
                continue;
            };
            // It may have moved on while we waited for the lock.
            if source.live_migration.as_ref() != Some(&lm)
                || state_sent(&source, &lm)
                || in_post_copy(&source, &lm)
            {
                continue;
            }
            let why = format!(
                "no end reported within migrate.timeout ({}s) and {}s: the source's agent is gone or cut off",
                a.group_spec.migrate.timeout.as_duration().as_secs(),
                MIGRATION_GRACE.as_secs()
            );
            let end = Ending::of(&lm, &why);
            let mut changed = Vec::new();
            match self.find_alloc(lm.target_alloc.as_str()) {
                Ok(mut target) => {
                    abort(&mut source, &mut target, &end, now);
                    changed.push(target);
                }
                Err(_) => abort_own(&mut source, &end, now),
            }
            changed.push(source);
            tracing::warn!(alloc = %a.id, to = %lm.target_node_name, "{}", end.message);
            self.commit_allocs(changed).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Write `allocs` in one transaction and apply them.
    async fn commit_allocs(&self, allocs: Vec<Allocation>) -> Result<u64, StateError> {
        let mut txn = Txn::new();
        for a in &allocs {
            txn = txn.put_encoded(Table::Allocs, a.id.as_str(), a);
        }
        let index = self.commit(txn).await?;
        self.apply(index, vec![], allocs, vec![], vec![]);
        Ok(index)
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
        abort_own(a, &Ending::of(&lm, "the other allocation is gone"), now);
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
        abort(source, target, &Ending::of(&lm, &why), now);
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
            record_progress(a, r, now);
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

/// The source's figures (progress, then the final ones, with an event).
fn record_progress(a: &mut Allocation, r: &MigrationReport, now: u64) {
    let first_done = a
        .migration_status
        .as_ref()
        .is_none_or(|s| s.completed.is_none());
    if let (Some(done), true) = (&r.completed, first_done) {
        a.push_event(AllocEvent::system(
            now,
            "Migration Completed",
            format!(
                "state sent: {} bytes in {} ms, paused {} ms{}",
                done.transferred,
                done.elapsed_ms,
                done.downtime_ms.unwrap_or(0),
                if done.post_copy {
                    ", ended in post-copy"
                } else {
                    ""
                }
            ),
        ));
    }
    a.migration_status = Some(r.clone());
}

/// A source's report that comes after its migration ended (the target ran
/// before the source's "completed" arrived): keep its figures.
pub(super) fn late_report(a: &mut Allocation, report: Option<MigrationReport>, now: u64) {
    let Some(r) = report else { return };
    let ours = a
        .migration_status
        .as_ref()
        .is_some_and(|s| s.target_alloc == r.target_alloc);
    if ours && a.migration_status.as_ref() != Some(&r) && r.completed.is_some() {
        record_progress(a, &r, now);
    }
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
    let sent = state_sent(a, lm) || report.is_some_and(|r| r.completed.is_some());
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
        // Where a late report of the source's figures goes (`late_report`).
        if source
            .migration_status
            .as_ref()
            .is_none_or(|s| s.target_alloc != lm.target_alloc)
        {
            source.migration_status = Some(MigrationReport {
                target_alloc: lm.target_alloc.clone(),
                source_accel: None,
                incoming: None,
                progress: None,
                completed: None,
                failed: None,
            });
        }
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

/// How a migration that did not move the workload ended: the event both
/// allocations get.
struct Ending {
    kind: &'static str,
    message: String,
}

impl Ending {
    /// `why` it failed, or the cancel asked for (which is why it ended).
    fn of(lm: &LiveMigration, why: &str) -> Ending {
        match &lm.cancel {
            Some(who) => Ending {
                kind: "Migration Cancelled",
                message: format!("live migration to node {} {who}", lm.target_node_name),
            },
            None => Ending {
                kind: "Migration Failed",
                message: format!(
                    "live migration to node {} failed: {why}",
                    lm.target_node_name
                ),
            },
        }
    }
}

/// The migration failed: the target stops (its agent aborts the incoming
/// workload), the source runs on.
fn abort(source: &mut Allocation, target: &mut Allocation, end: &Ending, now: u64) {
    if source.is_migration_source() {
        source.live_migration = None;
        source.push_event(AllocEvent::system(now, end.kind, end.message.clone()));
        source.modify_time = now;
    }
    if target.is_migration_target() {
        abort_own(target, end, now);
    }
}

/// [`abort`] of one side (the other is gone, or not changed here).
fn abort_own(a: &mut Allocation, end: &Ending, now: u64) {
    let target = a.is_migration_target();
    a.live_migration = None;
    if target && a.desired_status == DesiredStatus::Run {
        a.desired_status = DesiredStatus::Stop;
        a.desired_description = end.message.clone();
    }
    a.push_event(AllocEvent::system(now, end.kind, end.message.clone()));
    a.modify_time = now;
}

/// Whether the source of `lm` reported the switch to post-copy (the target
/// runs the workload already: it can no longer be cancelled or timed out).
fn in_post_copy(source: &Allocation, lm: &LiveMigration) -> bool {
    source.migration_status.as_ref().is_some_and(|s| {
        s.target_alloc == lm.target_alloc && s.progress.as_ref().is_some_and(|p| p.post_copy)
    })
}

/// Whether the source of `lm` has sent its state (the target holds the
/// workload now: the migration must not be aborted any more).
fn state_sent(source: &Allocation, lm: &LiveMigration) -> bool {
    source
        .migration_status
        .as_ref()
        .is_some_and(|s| s.target_alloc == lm.target_alloc && s.completed.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use taba_types::{AllocId, MigrationIncoming, MigrationProgress};

    fn alloc(id: &str, node: &str) -> Allocation {
        serde_json::from_value(serde_json::json!({
            "id": id, "namespace": "default", "job": "vm", "job_version": 0,
            "job_type": "service", "priority": 50, "group": "g", "name": "vm.g[0]",
            "index": 0, "group_spec": {"name": "g"}, "node_id": node, "node_name": node,
            "resources": {"cpu": 1, "memory": "1MiB"}, "desired_status": "run",
            "client_status": "running", "eval_id": "e", "create_time": 0, "modify_time": 0
        }))
        .unwrap()
    }

    /// A source running on n1 and its target prepared on n2.
    fn pair() -> (Allocation, Allocation) {
        let lm = LiveMigration {
            source_alloc: AllocId::from("s"),
            source_node: "n1".into(),
            target_alloc: AllocId::from("t"),
            target_node: "n2".into(),
            target_node_name: "n2".into(),
            reason: "alloc migrate".into(),
            started_at: 0,
            source_accel: None,
            incoming: None,
            cancel: None,
        };
        let mut s = alloc("s", "n1");
        let mut t = alloc("t", "n2");
        t.client_status = ClientStatus::Pending;
        s.live_migration = Some(lm.clone());
        t.live_migration = Some(lm);
        (s, t)
    }

    fn report(f: impl FnOnce(&mut MigrationReport)) -> Option<MigrationReport> {
        let mut r = MigrationReport {
            target_alloc: AllocId::from("t"),
            source_accel: None,
            incoming: None,
            progress: None,
            completed: None,
            failed: None,
        };
        f(&mut r);
        Some(r)
    }

    #[test]
    fn reports_are_passed_on_and_the_move_ends_when_the_target_runs() {
        let (s, t) = pair();
        // Source: how it runs -> both.
        let mut s2 = s.clone();
        let peer = migration_step(
            &s,
            &mut s2,
            Some(&t),
            report(|r| r.source_accel = Some(taba_types::vm::VmAccel::Tcg)),
            1,
        );
        let t2 = peer.expect("the target learns the accelerator");
        assert_eq!(
            t2.live_migration.as_ref().unwrap().source_accel,
            Some(taba_types::vm::VmAccel::Tcg)
        );
        assert_eq!(s2.live_migration, t2.live_migration);
        // Target: where it listens -> both.
        let mut t3 = t2.clone();
        let addr: std::net::SocketAddr = "10.0.0.3:4444".parse().unwrap();
        let inc = MigrationIncoming {
            addr,
            disks: None,
            disk_count: 0,
        };
        let s3 = migration_step(
            &t2,
            &mut t3,
            Some(&s2),
            report(|r| r.incoming = Some(inc.clone())),
            2,
        )
        .unwrap();
        assert_eq!(s3.live_migration.as_ref().unwrap().incoming, Some(inc));
        // A report of another (older) migration is ignored.
        let mut s4 = s3.clone();
        let stale = report(|r| {
            r.target_alloc = AllocId::from("old");
            r.failed = Some("x".into());
        });
        assert!(migration_step(&s3, &mut s4, Some(&t3), stale, 3).is_none());
        assert_eq!(s4, s3);
        // Source: completed, then ends: not a failure.
        let done = MigrationProgress {
            transferred: 5,
            ..Default::default()
        };
        let mut s5 = s4.clone();
        s5.client_status = ClientStatus::Complete;
        assert!(migration_step(
            &s4,
            &mut s5,
            Some(&t3),
            report(|r| r.completed = Some(done.clone())),
            4
        )
        .is_none());
        assert!(s5.is_migration_source() && s5.desired_status == DesiredStatus::Run);
        assert!(s5.events.iter().any(|e| e.kind == "Migration Completed"));
        // Target runs: the source is stopped "migrated to n2", both cleared.
        let mut t4 = t3.clone();
        t4.client_status = ClientStatus::Running;
        let s6 = migration_step(&t3, &mut t4, Some(&s5), None, 5).unwrap();
        assert!(t4.live_migration.is_none() && s6.live_migration.is_none());
        assert_eq!(s6.desired_status, DesiredStatus::Stop);
        assert_eq!(s6.desired_description, "migrated to n2");
        // The target ran before the source's figures arrived: kept anyway.
        let (s, t) = pair();
        let mut t5 = t.clone();
        t5.client_status = ClientStatus::Running;
        let mut s7 = migration_step(&t, &mut t5, Some(&s), None, 6).unwrap();
        late_report(&mut s7, report(|r| r.completed = Some(done.clone())), 7);
        assert_eq!(s7.migration_status.unwrap().completed, Some(done));
    }

    #[test]
    fn a_cancelled_migration_ends_with_who_cancelled_it_on_both_sides() {
        let (mut s, mut t) = pair();
        for a in [&mut s, &mut t] {
            let lm = a.live_migration.as_mut().unwrap();
            lm.cancel = Some("cancelled by token \"ops\"".into());
        }
        let mut s2 = s.clone();
        let t2 = migration_step(
            &s,
            &mut s2,
            Some(&t),
            report(|r| r.failed = Some("migration cancelled by token \"ops\"".into())),
            1,
        )
        .unwrap();
        assert!(s2.live_migration.is_none() && s2.desired_status == DesiredStatus::Run);
        assert_eq!(t2.desired_status, DesiredStatus::Stop);
        for a in [&s2, &t2] {
            let ev = a.events.last().unwrap();
            assert_eq!(ev.kind, "Migration Cancelled");
            assert_eq!(
                ev.message,
                "live migration to node n2 cancelled by token \"ops\""
            );
        }
        // The source had sent its state: the target takes over, no cancel.
        let (s, _) = pair();
        let mut done = s.clone();
        done.migration_status = report(|r| r.completed = Some(MigrationProgress::default()));
        assert!(state_sent(&done, done.live_migration.as_ref().unwrap()));
        assert!(!state_sent(&s, s.live_migration.as_ref().unwrap()));
    }

    #[test]
    fn a_failure_stops_the_target_and_leaves_the_source_running() {
        // Reported by the source.
        let (s, t) = pair();
        let mut s2 = s.clone();
        let t2 = migration_step(
            &s,
            &mut s2,
            Some(&t),
            report(|r| r.failed = Some("timed out".into())),
            1,
        )
        .unwrap();
        assert!(s2.live_migration.is_none() && s2.desired_status == DesiredStatus::Run);
        let ev = s2.events.last().unwrap();
        assert_eq!(ev.kind, "Migration Failed");
        assert!(ev.message.contains("source: timed out"), "{}", ev.message);
        assert_eq!(t2.desired_status, DesiredStatus::Stop);
        assert!(t2.live_migration.is_none());
        // The target ended (its QEMU died) without a report.
        let (s, t) = pair();
        let mut t3 = t.clone();
        t3.client_status = ClientStatus::Failed;
        let s3 = migration_step(&t, &mut t3, Some(&s), None, 1).unwrap();
        assert!(s3.live_migration.is_none() && s3.desired_status == DesiredStatus::Run);
        assert_eq!(t3.desired_status, DesiredStatus::Stop);
        // The source ended without having sent its state.
        let (s, t) = pair();
        let mut s4 = s.clone();
        s4.client_status = ClientStatus::Failed;
        let t4 = migration_step(&s, &mut s4, Some(&t), None, 1).unwrap();
        assert_eq!(t4.desired_status, DesiredStatus::Stop);
    }
}
