//! The agent's part in a live migration (`Allocation::live_migration`, set
//! by the servers on both allocations; the flow is drawn on
//! [`taba_types::LiveMigration`]).
//!
//! - Source (a running allocation): [`on_update`] reports how the workload
//!   runs (`source_accel`); once the servers pass on the target's
//!   `incoming` address it streams the workload there ([`outgoing`],
//!   `Migratable::migrate_out` with the group's `migrate` policy), reporting
//!   progress about every 250 ms, then `completed` or `failed`. When the
//!   state was sent the source workload ends and its task loop marks the
//!   task dead as `Migrated` ([`sent_away`]) instead of restarting it.
//! - Target (a new allocation): its task loop's first start is
//!   [`incoming`]: wait for the source's accelerator, `prepare_incoming` on
//!   this node's advertised address, report `incoming`, then
//!   `finish_incoming`; the task is `Running` only once the VM runs here.
//!   A stop from the servers (the migration failed) aborts it.
//! - Cancel: the servers set `cancel` ("cancelled by WHO") on the
//!   migration; the source stops its stream through the driver's progress
//!   callback (QMP `migrate_cancel`, [`cancel`]), or reports the migration
//!   failed if none runs. A stream whose migration the servers ended or
//!   replaced (failed on their side) is stopped the same way
//!   ([`stop_ended_stream`]).
//!
//! What is reported rides on the allocation's normal status update
//! ([`taba_types::wire::AllocUpdate::migration`]), so it is retried with it.

use super::{blocking, mark_dead, now_ms, stopped, task_config, Shared};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_driver::migrate::{Incoming, Migratable, MigrationPolicy, SourceInfo};
use taba_driver::{Driver, ExitResult, TaskHandle};
use taba_types::{
    AllocId, DesiredStatus, LiveMigration, MigrationIncoming, MigrationProgress, MigrationReport,
    TaskSpec, TaskStatus,
};

/// How often progress is reported at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How much longer than the policy's timeout a target waits to run.
const TARGET_SLACK: Duration = Duration::from_secs(60);

/// Where the source's outgoing stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// None runs.
    Idle,
    /// `migrate_out` runs: the workload's end is not a failure yet.
    Running,
    /// The state was sent: the workload has ended for good here.
    Sent,
}

/// What a runner knows of its part in a migration.
#[derive(Default)]
pub(super) struct MigrationSide {
    /// Sent with every status update of the allocation.
    pub(super) report: Option<MigrationReport>,
    /// Source: the migration (its target allocation) whose stream started.
    started: Option<AllocId>,
    /// Source: the node the state went to.
    sent_to: Option<String>,
    /// Source: why the running stream must stop (a cancel, or the servers
    /// ended the migration); the driver's progress callback passes it on.
    cancel: Option<String>,
    /// Source: the stream was stopped for `cancel`.
    cancelled: bool,
}

impl Shared {
    /// Whether the allocation is the target of a live migration.
    pub(super) fn is_migration_target(&self) -> bool {
        self.alloc.lock().unwrap().is_migration_target()
    }

    fn live_migration(&self) -> Option<LiveMigration> {
        self.alloc.lock().unwrap().live_migration.clone()
    }

    /// Change the report and send it.
    fn report_migration(&self, target: &AllocId, f: impl FnOnce(&mut MigrationReport)) {
        {
            let mut side = self.migration.lock().unwrap();
            let r = side.report.get_or_insert_with(|| fresh_report(target));
            if &r.target_alloc != target {
                *r = fresh_report(target);
            }
            f(r);
        }
        let _ = self.ctx.changed.send(self.id.clone());
    }
}

fn fresh_report(target: &AllocId) -> MigrationReport {
    MigrationReport {
        target_alloc: target.clone(),
        source_accel: None,
        incoming: None,
        progress: None,
        completed: None,
        failed: None,
    }
}

/// The group's `migrate` policy as the driver takes it.
fn policy(s: &Shared) -> MigrationPolicy {
    let a = s.alloc.lock().unwrap();
    let m = &a.group_spec.migrate;
    MigrationPolicy {
        max_downtime: m.max_downtime.as_duration(),
        timeout: m.timeout.as_duration(),
        auto_converge: m.auto_converge,
        max_bandwidth: m.max_bandwidth.0,
        post_copy: m.post_copy,
    }
}

fn migratable(d: &Arc<dyn Driver>) -> Result<&dyn Migratable, String> {
    d.migratable()
        .ok_or_else(|| format!("driver {} cannot migrate a running task", d.name()))
}

/// The allocation's only task, its driver and its running workload's handle.
fn the_task(s: &Shared) -> Result<(String, Arc<dyn Driver>, TaskHandle), String> {
    let a = s.alloc.lock().unwrap();
    let [t] = a.group_spec.tasks.as_slice() else {
        return Err("only a group of one task migrates live".into());
    };
    let d = s
        .ctx
        .drivers
        .get(&t.driver)
        .cloned()
        .ok_or_else(|| format!("driver {:?} is not available on this node", t.driver))?;
    let st = s.state.lock().unwrap();
    let h = st
        .tasks
        .get(&t.name)
        .filter(|r| r.state.state == TaskStatus::Running)
        .and_then(|r| r.handle.clone())
        .ok_or_else(|| format!("task {} is not running", t.name))?;
    Ok((t.name.clone(), d, h))
}

/// The servers changed the allocation: if it is a migration's source, do
/// what comes next (report how it runs; start the stream once the target
/// is ready).
pub(super) fn on_update(s: &Arc<Shared>) {
    let lm = s.live_migration();
    stop_ended_stream(s, lm.as_ref());
    let Some(lm) = lm.filter(|m| m.source_alloc == s.id) else {
        return;
    };
    if s.alloc.lock().unwrap().desired_status != DesiredStatus::Run {
        return;
    }
    let target = lm.target_alloc.clone();
    if let Some(who) = &lm.cancel {
        cancel(s, &target, who);
        return;
    }
    let fresh = s
        .migration
        .lock()
        .unwrap()
        .report
        .as_ref()
        .is_none_or(|r| r.target_alloc != target);
    if fresh {
        let info = the_task(s).and_then(|(_, d, h)| {
            migratable(&d)?
                .source_info(&h)
                .map_err(|e| taba_types::error_chain(&e))
        });
        s.report_migration(&target, |r| match info {
            Ok(i) => r.source_accel = Some(i.accel),
            Err(why) => r.failed = Some(why),
        });
    }
    let Some(to) = lm.incoming.clone() else {
        return;
    };
    {
        let mut side = s.migration.lock().unwrap();
        let failed = side.report.as_ref().is_some_and(|r| r.failed.is_some());
        if failed || side.started.as_ref() == Some(&target) {
            return;
        }
        side.started = Some(target);
    }
    tokio::spawn(outgoing(s.clone(), lm, to));
}

/// Source: a cancel of the migration to `target` was asked for: stop its
/// stream, or report it ended if none runs.
fn cancel(s: &Shared, target: &AllocId, who: &str) {
    let mut side = s.migration.lock().unwrap();
    if side.started.as_ref() == Some(target) {
        if *s.outgoing.borrow() == Outgoing::Running && !side.cancelled {
            side.cancel = Some(who.to_string());
        }
        return;
    }
    let reported = side
        .report
        .as_ref()
        .is_some_and(|r| &r.target_alloc == target && r.failed.is_some());
    drop(side);
    if !reported {
        s.report_migration(target, |r| r.failed = Some(who.to_string()));
    }
}

/// Source: the servers ended or replaced the migration whose stream runs
/// here (it failed on their side, or timed out there): stop the stream;
/// the workload runs on here.
fn stop_ended_stream(s: &Shared, lm: Option<&LiveMigration>) {
    if *s.outgoing.borrow() != Outgoing::Running {
        return;
    }
    let mut side = s.migration.lock().unwrap();
    let Some(started) = side.started.clone() else {
        return;
    };
    if lm.is_none_or(|m| m.target_alloc != started) && side.cancel.is_none() && !side.cancelled {
        side.cancel = Some("cancelled: the servers ended it".into());
    }
}

/// Source: stream the running workload to the prepared target.
async fn outgoing(s: Arc<Shared>, lm: LiveMigration, to: MigrationIncoming) {
    let target = lm.target_alloc.clone();
    let (name, driver, h) = match the_task(&s) {
        Ok(x) => x,
        Err(why) => {
            s.report_migration(&target, |r| r.failed = Some(why));
            return;
        }
    };
    let policy = policy(&s);
    let incoming = Incoming {
        addr: to.addr,
        disks: to.disks,
        disk_count: to.disk_count as usize,
    };
    {
        let mut side = s.migration.lock().unwrap();
        side.cancel = None;
        side.cancelled = false;
    }
    s.outgoing.send_replace(Outgoing::Running);
    let now = now_ms();
    s.update_task(&name, |r| {
        r.state.push_event(
            now,
            "Migrating",
            format!(
                "sending the running task to node {} ({})",
                lm.target_node_name, to.addr
            ),
        )
    });
    let s2 = s.clone();
    let t2 = target.clone();
    let result = blocking(move || {
        let m = migratable(&driver)?;
        let started = Instant::now();
        let mut last: Option<Instant> = None;
        m.migrate_out(&h, &incoming, &policy, &mut |p| {
            {
                let mut side = s2.migration.lock().unwrap();
                if let Some(why) = side.cancel.take() {
                    side.cancelled = true;
                    return ControlFlow::Break(why);
                }
            }
            if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return ControlFlow::Continue(());
            }
            last = Some(Instant::now());
            let p = MigrationProgress {
                transferred: p.transferred,
                remaining: p.remaining,
                total: p.total,
                dirty_pages_rate: p.dirty_pages_rate,
                downtime_ms: p.expected_downtime_ms,
                elapsed_ms: started.elapsed().as_millis() as u64,
                throttle_pct: p.throttle_pct,
                post_copy: p.post_copy,
            };
            s2.report_migration(&t2, |r| r.progress = Some(p));
            ControlFlow::Continue(())
        })
        .map_err(|e| taba_types::error_chain(&e))
    })
    .await;
    let now = now_ms();
    match result {
        Ok(stats) => {
            s.migration.lock().unwrap().sent_to = Some(lm.target_node_name.clone());
            s.report_migration(&target, |r| {
                r.completed = Some(MigrationProgress {
                    transferred: stats.transferred,
                    elapsed_ms: stats.total_ms,
                    downtime_ms: Some(stats.downtime_ms),
                    post_copy: stats.post_copy,
                    ..Default::default()
                })
            });
            s.outgoing.send_replace(Outgoing::Sent);
            tracing::info!(alloc = %s.id, to = %lm.target_node_name, total_ms = stats.total_ms,
                downtime_ms = stats.downtime_ms, post_copy = stats.post_copy, "live migration completed");
        }
        Err(why) => {
            tracing::warn!(alloc = %s.id, to = %lm.target_node_name, "live migration failed: {why}");
            let kind = if s.migration.lock().unwrap().cancelled {
                "Migration Cancelled"
            } else {
                "Migration Failed"
            };
            s.update_task(&name, |r| {
                r.state
                    .push_event(now, kind, format!("the task runs on here: {why}"))
            });
            s.report_migration(&target, |r| r.failed = Some(why));
            s.outgoing.send_replace(Outgoing::Idle);
        }
    }
}

/// Source: after its workload ended, whether that was the end of a
/// completed migration (waits for a running stream to finish first):
/// the node the workload went to.
pub(super) async fn sent_away(s: &Shared) -> Option<String> {
    let mut rx = s.outgoing.subscribe();
    let state = rx
        .wait_for(|o| *o != Outgoing::Running)
        .await
        .map(|o| *o)
        .ok()?;
    if state != Outgoing::Sent {
        return None;
    }
    s.migration.lock().unwrap().sent_to.clone()
}

/// What [`incoming`] ends with: the workload running here, or `None` when
/// the task is over (its state already marked).
type Started = Option<(Option<TaskHandle>, Option<ExitResult>)>;

/// Target: take the workload over from the source instead of starting it.
pub(super) async fn incoming(
    s: &Arc<Shared>,
    task: &TaskSpec,
    driver: &Arc<dyn Driver>,
) -> Started {
    let name = &task.name;
    let me = s.id.clone();
    let accel = match source_ready(s).await {
        Ok(a) => a,
        Err(reason) => {
            mark_dead(s, name, false, "Killed", reason);
            return None;
        }
    };
    let cfg = task_config(s, task);
    let ip = s.ctx.node_ip;
    let d = driver.clone();
    let source = SourceInfo {
        accel,
        post_copy: policy(s).post_copy,
    };
    let prepared = blocking(move || {
        migratable(&d)?
            .prepare_incoming(&cfg, ip, &source)
            .map_err(|e| taba_types::error_chain(&e))
    })
    .await;
    let (h, inc) = match prepared {
        Ok(x) => x,
        Err(why) => return failed_in(s, name, &me, why),
    };
    s.report_migration(&me, |r| {
        r.incoming = Some(MigrationIncoming {
            addr: inc.addr,
            disks: inc.disks,
            disk_count: inc.disk_count as u32,
        })
    });
    let now = now_ms();
    s.update_task(name, |r| {
        r.handle = Some(h.clone());
        r.state.pid = Some(h.pid);
        r.state.push_event(
            now,
            "Migrating In",
            format!("waiting for the running task's state on {}", inc.addr),
        )
    });
    let timeout = policy(s).timeout + TARGET_SLACK;
    let (d, h2) = (driver.clone(), h.clone());
    let mut finish = tokio::task::spawn_blocking(move || {
        migratable(&d)?
            .finish_incoming(&h2, timeout)
            .map_err(|e| taba_types::error_chain(&e))
    });
    let r = tokio::select! {
        r = &mut finish => r,
        reason = stopped(s) => {
            abort(driver, &h).await;
            let _ = finish.await;
            s.update_task(name, |r| r.handle = None);
            mark_dead(s, name, false, "Killed", reason);
            return None;
        }
    };
    match r {
        Ok(Ok(())) => {
            let now = now_ms();
            s.update_task(name, |r| {
                r.state.state = TaskStatus::Running;
                r.state.started_at = Some(now);
                r.state.push_event(
                    now,
                    "Started",
                    format!("migrated in: running here (pid {})", h.pid),
                );
            });
            Some((Some(h), None))
        }
        Ok(Err(why)) => {
            abort(driver, &h).await;
            s.update_task(name, |r| r.handle = None);
            failed_in(s, name, &me, why)
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Target: wait until the servers pass on how the source runs.
async fn source_ready(s: &Shared) -> Result<taba_types::vm::VmAccel, String> {
    loop {
        let mut rx = s.alloc_changed.subscribe();
        if let Some(lm) = s.live_migration().filter(|m| m.target_alloc == s.id) {
            if let Some(a) = lm.source_accel {
                return Ok(a);
            }
        }
        tokio::select! {
            _ = rx.changed() => {}
            reason = stopped(s) => return Err(reason),
        }
    }
}

async fn abort(driver: &Arc<dyn Driver>, h: &TaskHandle) {
    let (d, h) = (driver.clone(), h.clone());
    let r = blocking(move || migratable(&d).map(|m| m.abort_incoming(&h))).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(
            "aborting an incoming migration: {}",
            taba_types::error_chain(&e)
        );
    }
}

fn failed_in(s: &Shared, name: &str, me: &AllocId, why: String) -> Started {
    s.report_migration(me, |r| r.failed = Some(why.clone()));
    mark_dead(s, name, true, "Migration Failed", why);
    None
}
