//! Background work: scheduler workers, the one plan applier, the heartbeat
//! monitor, the rebalancer and the drainer. Each is a loop that ends when the server
//! shuts down.
//!
//! Flow of one evaluation: the broker hands it to a worker; the worker runs
//! the pure scheduler on a blocking thread under the state's read lock; the
//! outcome goes to the plan applier, which handles one plan at a time:
//! verify against the latest state, persist, apply to memory. A rejected plan
//! is retried on fresh state up to `max_plan_attempts` times.

use crate::broker::now_ms;
use crate::state::{ServerState, StateError};
use std::sync::Arc;
use std::time::Duration;
use taba_types::{Evaluation, SchedulerOutcome};
use tokio::sync::{mpsc, oneshot};

/// A plan waiting for the applier.
pub struct PlanRequest {
    eval: Evaluation,
    outcome: SchedulerOutcome,
    reply: oneshot::Sender<Result<Result<u64, String>, StateError>>,
}

/// Submit plans to the applier.
#[derive(Clone)]
pub struct PlanQueue(mpsc::Sender<PlanRequest>);

impl PlanQueue {
    async fn submit(
        &self,
        eval: Evaluation,
        outcome: SchedulerOutcome,
    ) -> Result<Result<u64, String>, StateError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(PlanRequest {
                eval,
                outcome,
                reply: tx,
            })
            .await
            .map_err(|_| StateError::ShuttingDown)?;
        rx.await.map_err(|_| StateError::ShuttingDown)?
    }
}

/// The plan applier: one at a time, so verification sees every earlier commit.
pub fn spawn_applier(state: Arc<ServerState>) -> (PlanQueue, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<PlanRequest>(64);
    let handle = tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let res = state.commit_plan(&req.eval, req.outcome).await;
            let _ = req.reply.send(res);
        }
    });
    (PlanQueue(tx), handle)
}

async fn process(state: &Arc<ServerState>, plans: &PlanQueue, eval: &Evaluation) {
    let started = std::time::Instant::now();
    let outcome = process_attempts(state, plans, eval).await;
    state.metrics.evaluation(outcome, started.elapsed());
}

/// Schedules `eval` and commits its plan, retrying rejected plans; returns the outcome's
/// name for the metrics.
async fn process_attempts(
    state: &Arc<ServerState>,
    plans: &PlanQueue,
    eval: &Evaluation,
) -> &'static str {
    let attempts = state.config.max_plan_attempts.max(1);
    for attempt in 1..=attempts {
        // Always schedule the latest stored version of the evaluation.
        let current = state.eval(eval.id.as_str()).unwrap_or_else(|| eval.clone());
        let st = state.clone();
        let cur = current.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let c = st.cluster();
            let opts = taba_scheduler::ScheduleOptions {
                preemption: st.config.preemption,
                ..Default::default()
            };
            taba_scheduler::schedule_with(&c, &cur, now_ms(), &opts)
        })
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(eval = %eval.id, error = %e, "scheduler panicked");
                let _ = state.fail_eval(&current, "scheduler failed".into()).await;
                return "failed";
            }
        };
        let placed = outcome.plan.placements.len();
        let failures = outcome.failed_groups.clone();
        let status = outcome.status;
        match plans.submit(current.clone(), outcome).await {
            Ok(Ok(_)) => {
                state.metrics.placed(placed, &failures);
                return if failures.is_empty() {
                    "complete"
                } else {
                    "incomplete"
                };
            }
            Ok(Err(reason)) => {
                state.metrics.plan_rejected();
                tracing::debug!(eval = %eval.id, attempt, ?status, %reason, "plan rejected; retrying");
            }
            Err(StateError::ShuttingDown) => return "shutdown",
            Err(e) => {
                tracing::error!(eval = %eval.id, error = %e, "plan commit failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = state
        .fail_eval(
            eval,
            format!("plan rejected {attempts} times; the cluster changed too fast"),
        )
        .await;
    "failed"
}

/// A scheduler worker.
pub fn spawn_worker(state: Arc<ServerState>, plans: PlanQueue) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(eval) = state.broker.dequeue().await {
            process(&state, &plans, &eval).await;
            state.broker.ack(&eval);
        }
    })
}

/// Watches heartbeats: a node silent past its TTL is `disconnected`, past
/// the TTL plus the grace `down` (its allocations are lost and replaced),
/// and a node down for `node_gc_after` is removed.
pub fn spawn_heartbeat_monitor(state: Arc<ServerState>) -> tokio::task::JoinHandle<()> {
    let tick = (state.config.heartbeat_ttl / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut stop = state.shutdown.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            for (id, action) in state.node_actions() {
                if let Err(e) = state.apply_node_action(&id, action).await {
                    tracing::error!(node = %id, ?action, error = %e, "cannot change node state");
                }
            }
        }
    })
}

/// Watches live migrations: one whose source has not reported its end by
/// the group's `migrate.timeout` plus a grace is failed
/// ([`ServerState::expire_migrations`]), so a dead or cut-off source agent
/// never holds a target for ever.
pub fn spawn_migration_watch(state: Arc<ServerState>) -> tokio::task::JoinHandle<()> {
    let tick = Duration::from_secs(1);
    let mut stop = state.shutdown.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            match state.expire_migrations(now_ms()).await {
                Ok(_) => {}
                Err(StateError::ShuttingDown) => return,
                Err(e) => tracing::error!(error = %e, "cannot fail overdue migrations"),
            }
        }
    })
}

/// The rebalancer: every `rebalance.interval`, plan moves off hot nodes from
/// the measured use agents report ([`taba_scheduler::rebalance`]) and ask
/// for them; the jobs' evaluations carry them out. Each node that gave or
/// took a move cools down before it is considered again.
pub fn spawn_rebalancer(state: Arc<ServerState>) -> tokio::task::JoinHandle<()> {
    let settings = state.config.rebalance.clone();
    let tick = settings.interval.max(Duration::from_millis(50));
    let mut stop = state.shutdown.subscribe();
    tokio::spawn(async move {
        let mut recent: std::collections::BTreeMap<taba_types::NodeId, u64> = Default::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            // Reports older than three heartbeat TTLs say nothing of now.
            let max_age = (state.config.heartbeat_ttl * 3).as_millis() as u64;
            let loads = state.node_loads(max_age);
            let now = now_ms();
            let moves = {
                let c = state.cluster();
                taba_scheduler::rebalance::plan_moves(
                    &c,
                    &loads,
                    |a| {
                        a.usage.as_ref().map(|u| taba_scheduler::rebalance::Load {
                            cpu_mhz: u.cpu_mhz,
                            memory: u.memory.0,
                        })
                    },
                    &recent,
                    &settings.plan,
                    now,
                )
            };
            if moves.is_empty() {
                continue;
            }
            match state.request_moves(&moves).await {
                Ok(n) => {
                    state.metrics.rebalancer_moved(n);
                    for m in &moves {
                        recent.insert(m.from.clone(), now);
                        recent.insert(m.to.clone(), now);
                        tracing::info!(alloc = %m.alloc, from = %m.from, to = %m.to, reason = %m.reason, "rebalance move");
                    }
                    tracing::info!(asked = n, "rebalancer asked for moves");
                }
                Err(StateError::ShuttingDown) => return,
                Err(e) => tracing::error!(error = %e, "rebalancer cannot record moves"),
            }
            recent.retain(|_, t| now < t.saturating_add(settings.plan.cooldown_ms));
        }
    })
}

/// The drainer: every `drain_interval` (or at once when a drain starts),
/// one step of each node's drain ([`ServerState::drain_step`]): ask for the
/// moves still to make, stop what is left at the deadline, stop system
/// allocations last, and complete the drain.
pub fn spawn_drainer(state: Arc<ServerState>) -> tokio::task::JoinHandle<()> {
    let tick = state.config.drain_interval.max(Duration::from_millis(20));
    let mut stop = state.shutdown.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = state.drain_wake.notified() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            for id in state.draining_nodes() {
                match state.drain_step(&id).await {
                    Ok(()) => {}
                    Err(StateError::ShuttingDown) => return,
                    Err(e) => tracing::error!(node = %id, error = %e, "drain step failed"),
                }
            }
        }
    })
}
