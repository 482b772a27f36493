//! The evaluation broker: hands pending evaluations to scheduler workers.
//!
//! - Evaluations of the same job are never processed concurrently: a job
//!   with one in flight waits until it is acked.
//! - Evaluations with `wait_until` in the future are held until then.
//! - Blocked evaluations (placements that did not fit) are parked, one per
//!   job, and re-run when capacity changes or a quota is raised, in the
//!   order the server gives ([`Broker::unblock_ordered`]: DRF fair share
//!   between namespaces); a newer evaluation of the same job supersedes the
//!   parked one.
//!
//! The broker is memory only: on start the server re-enqueues the pending and
//! blocked evaluations it loads from the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use taba_types::{EvalId, Evaluation};
use tokio::sync::watch;

type JobKey = (String, String);

fn job_of(e: &Evaluation) -> JobKey {
    (e.namespace.clone(), e.job.clone())
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<Evaluation>,
    delayed: Vec<Evaluation>,
    inflight: HashSet<JobKey>,
    blocked: HashMap<JobKey, Evaluation>,
    closed: bool,
}

/// The broker.
pub struct Broker {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

pub use taba_types::now_ms;

impl Broker {
    /// An empty broker.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Queue an evaluation (it supersedes a parked blocked one of its job).
    pub fn enqueue(&self, eval: Evaluation) {
        {
            let mut g = self.lock();
            let key = job_of(&eval);
            if g.blocked.get(&key).is_some_and(|b| b.id != eval.id) {
                g.blocked.remove(&key);
            }
            if g.ready
                .iter()
                .chain(g.delayed.iter())
                .any(|e| e.id == eval.id)
            {
                return;
            }
            if eval.wait_until.is_some_and(|t| t > now_ms()) {
                g.delayed.push(eval);
            } else {
                g.ready.push_back(eval);
            }
        }
        self.wake();
    }

    /// Park a blocked evaluation until capacity changes.
    pub fn block(&self, eval: Evaluation) {
        let mut g = self.lock();
        g.blocked.insert(job_of(&eval), eval);
    }

    /// Re-run every parked blocked evaluation, oldest first.
    pub fn unblock_all(&self) {
        self.unblock_ordered(|parked| (0..parked.len()).collect());
    }

    /// Re-run parked blocked evaluations in the order `order` gives: it
    /// gets them oldest first (by store index, then id) and returns the
    /// indexes to release, in order; the others stay parked. `order` runs
    /// without the broker's lock; one superseded meanwhile is not released.
    pub fn unblock_ordered(&self, order: impl FnOnce(&[Evaluation]) -> Vec<usize>) {
        let mut parked: Vec<Evaluation> = self.lock().blocked.values().cloned().collect();
        if parked.is_empty() {
            return;
        }
        parked.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
        let picked = order(&parked);
        {
            let mut g = self.lock();
            for i in picked {
                let Some(e) = parked.get(i) else { continue };
                let key = job_of(e);
                if g.blocked.get(&key).is_none_or(|b| b.id != e.id) {
                    continue;
                }
                let e = g.blocked.remove(&key).expect("checked above");
                if !g.ready.iter().any(|r| r.id == e.id) {
                    g.ready.push_back(e);
                }
            }
        }
        self.wake();
    }

    /// The parked blocked evaluation of a job, if any.
    pub fn blocked_of(&self, namespace: &str, job: &str) -> Option<EvalId> {
        self.lock()
            .blocked
            .get(&(namespace.to_string(), job.to_string()))
            .map(|e| e.id.clone())
    }

    /// Counts: (ready, delayed, blocked, in flight).
    pub fn stats(&self) -> (usize, usize, usize, usize) {
        let g = self.lock();
        (
            g.ready.len(),
            g.delayed.len(),
            g.blocked.len(),
            g.inflight.len(),
        )
    }

    /// Stop handing out evaluations; waiting workers get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    fn try_take(&self) -> Result<Option<Evaluation>, Option<Duration>> {
        let mut g = self.lock();
        if g.closed {
            return Ok(None);
        }
        let now = now_ms();
        let mut i = 0;
        while i < g.delayed.len() {
            if g.delayed[i].wait_until.is_none_or(|t| t <= now) {
                let e = g.delayed.swap_remove(i);
                g.ready.push_back(e);
            } else {
                i += 1;
            }
        }
        let pos = g
            .ready
            .iter()
            .position(|e| !g.inflight.contains(&job_of(e)));
        if let Some(pos) = pos {
            let e = g.ready.remove(pos).expect("position is in range");
            g.inflight.insert(job_of(&e));
            return Ok(Some(e));
        }
        let next = g
            .delayed
            .iter()
            .filter_map(|e| e.wait_until)
            .min()
            .map(|t| Duration::from_millis(t.saturating_sub(now)));
        Err(next)
    }

    /// The next evaluation to process, waiting for one; `None` once closed.
    pub async fn dequeue(&self) -> Option<Evaluation> {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let wait = match self.try_take() {
                Ok(e) => return e,
                Err(next) => next,
            };
            match wait {
                Some(d) => {
                    let _ = tokio::time::timeout(d, rx.changed()).await;
                }
                None => {
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// A worker is done with `eval`; its job may be handed out again.
    pub fn ack(&self, eval: &Evaluation) {
        self.lock().inflight.remove(&job_of(eval));
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taba_types::{EvalStatus, EvalTrigger, JobType};

    fn eval(job: &str, wait_until: Option<u64>) -> Evaluation {
        Evaluation {
            id: EvalId::generate(),
            namespace: "default".into(),
            job: job.into(),
            job_type: JobType::Service,
            priority: 50,
            triggered_by: EvalTrigger::JobRegister,
            node_id: None,
            status: EvalStatus::Pending,
            status_description: String::new(),
            failed_groups: Default::default(),
            queued: Default::default(),
            wait_until,
            previous_eval: None,
            create_time: 0,
            create_index: 0,
            modify_index: 0,
        }
    }

    #[tokio::test]
    async fn same_job_is_serialized() {
        let b = Broker::new();
        let a1 = eval("a", None);
        let a2 = eval("a", None);
        let c = eval("c", None);
        b.enqueue(a1.clone());
        b.enqueue(a2.clone());
        b.enqueue(c.clone());
        let first = b.dequeue().await.unwrap();
        assert_eq!(first.id, a1.id);
        // a2 must wait for a1's ack; c may go.
        let second = b.dequeue().await.unwrap();
        assert_eq!(second.id, c.id);
        assert!(b.try_take().unwrap_or(None).is_none());
        b.ack(&first);
        assert_eq!(b.dequeue().await.unwrap().id, a2.id);
    }

    #[tokio::test]
    async fn delayed_waits_and_blocked_unblocks() {
        let b = Broker::new();
        let later = eval("d", Some(now_ms() + 60_000));
        b.enqueue(later);
        assert!(b.try_take().unwrap_or(None).is_none());
        let blocked = eval("x", None);
        b.block(blocked.clone());
        assert_eq!(b.blocked_of("default", "x"), Some(blocked.id.clone()));
        b.unblock_all();
        assert_eq!(b.dequeue().await.unwrap().id, blocked.id);
        b.close();
        assert!(b.dequeue().await.is_none());
    }

    #[tokio::test]
    async fn unblock_ordered_releases_in_the_given_order_and_keeps_the_rest() {
        let b = Broker::new();
        let mut parked = Vec::new();
        for (i, job) in ["a", "b", "c"].into_iter().enumerate() {
            let mut e = eval(job, None);
            e.create_index = i as u64 + 1;
            b.block(e.clone());
            parked.push(e);
        }
        // Given oldest first; release c then a; b stays parked.
        b.unblock_ordered(|evals| {
            let jobs: Vec<&str> = evals.iter().map(|e| e.job.as_str()).collect();
            assert_eq!(jobs, vec!["a", "b", "c"]);
            vec![2, 0]
        });
        assert_eq!(b.dequeue().await.unwrap().id, parked[2].id);
        assert_eq!(b.dequeue().await.unwrap().id, parked[0].id);
        assert_eq!(b.blocked_of("default", "b"), Some(parked[1].id.clone()));
        // Superseded while the order is computed: not released, the newer runs.
        let newer = eval("b", None);
        b.unblock_ordered(|_| {
            b.enqueue(newer.clone());
            vec![0]
        });
        assert!(b.blocked_of("default", "b").is_none());
        assert_eq!(b.dequeue().await.unwrap().id, newer.id);
        assert_eq!(b.stats().0, 0, "the superseded one is not queued");
        b.close();
        assert!(b.dequeue().await.is_none());
    }
}
