//! Background work: scheduler workers, the one plan applier, and the
//! heartbeat monitor. Each is a loop that ends when the server shuts down.
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
                return;
            }
        };
        match plans.submit(current.clone(), outcome).await {
            Ok(Ok(_)) => return,
            Ok(Err(reason)) => {
                tracing::debug!(eval = %eval.id, attempt, %reason, "plan rejected; retrying");
            }
            Err(StateError::ShuttingDown) => return,
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

/// Marks nodes down when they miss their heartbeat TTL.
pub fn spawn_heartbeat_monitor(state: Arc<ServerState>) -> tokio::task::JoinHandle<()> {
    let tick =
        (state.config.heartbeat_ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
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
            for id in state.expired_nodes() {
                if let Err(e) = state.mark_node_down(&id).await {
                    tracing::error!(node = %id, error = %e, "cannot mark node down");
                }
            }
        }
    })
}
