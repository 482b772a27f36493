//! The event broker: every committed change to jobs, allocations, nodes and
//! evaluations becomes events at the commit's index, kept in a bounded ring
//! for subscribers that resume, and handed to live subscribers
//! (`GET /v1/event/stream`, `api/events.rs`).
//!
//! ```text
//! ServerState::commit(txn)                      follower: apply_replicated(batch)
//!   changes of the txn (+ the node as it was)     changes of the batch (+ the node as it was)
//!   ticket = begin()  -- registered in flight     ticket = begin()
//!   store.apply(txn) -> index                     (already committed at batch.index)
//!   publish(ticket, index, events)                publish(ticket, batch.index, events)
//!        |
//!        v  pending, by index, until no commit that began before this one finished is
//!           still in flight (group commit may finish commits out of index order)
//!   release in index order -> ring (oldest evicted; `floor` = newest index evicted)
//!                          -> each subscriber whose filter matches: try_send into its
//!                             bounded queue; a full queue cuts that subscriber (its stream
//!                             ends with a last line saying so), commits never wait
//! ```
//!
//! Owns: the ring, the subscribers, the ordering of releases. Must not: block a
//! commit on a subscriber, or read the store.

use crate::acl::Rights;
use crate::config::EventSettings;
use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use taba_store::Table;
use taba_types::acl::{Access, Capability};
use taba_types::api::{EventTopic, StreamEnd};
use taba_types::{Eligibility, NodeStatus};
use tokio::sync::mpsc;

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The index asked for is older than the events kept.
    #[error(
        "index {asked} is older than the events this server keeps (it can resume from index \
         {floor} on); read the current state and resume from its index, or omit index"
    )]
    TooOld {
        /// The index asked for.
        asked: u64,
        /// The oldest index it can resume from.
        floor: u64,
    },
    /// Too many subscribers.
    #[error("too many event stream subscribers ({0}); retry later")]
    Full(usize),
    /// The broker is closed (the server stops, or its state was replaced).
    #[error("{0}")]
    Closed(String),
}

/// One event, serialised once for every subscriber.
#[derive(Debug)]
pub struct Event {
    /// Topic.
    pub topic: EventTopic,
    /// Namespace (none for nodes).
    pub namespace: Option<String>,
    /// Index of the commit.
    pub index: u64,
    /// The JSON line (`StreamEvent`), newline included.
    pub line: Bytes,
}

/// What a subscriber wants to see, and may.
#[derive(Clone, Debug)]
pub struct Filter {
    /// Topics asked for (Node only with node read, checked by the caller).
    pub topics: BTreeSet<EventTopic>,
    /// One namespace, or every one (`None`) the rights can read.
    pub namespace: Option<String>,
    /// The caller's rights.
    pub rights: Rights,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        if !self.topics.contains(&e.topic) {
            return false;
        }
        match &e.namespace {
            None => e.topic != EventTopic::Node || self.rights.node(Access::Read),
            Some(ns) => {
                self.namespace.as_ref().is_none_or(|want| want == ns)
                    && self.rights.allows(ns, Capability::Read)
            }
        }
    }
}

/// One change of a commit, before it has an index: what [`EventBroker::event`]
/// turns into an [`Event`].
pub struct Change {
    table: Table,
    key: String,
    value: Option<Vec<u8>>,
    /// For nodes: the node as it was before the change.
    before: Option<NodeView>,
}

/// What node events are classified by.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NodeView {
    status: NodeStatus,
    eligibility: Eligibility,
    #[serde(default)]
    drain: Option<serde_json::Value>,
}

impl NodeView {
    /// The parts of `n` node events are classified by.
    pub fn of(n: &taba_types::Node) -> Self {
        Self {
            status: n.status,
            eligibility: n.eligibility,
            drain: n.drain.as_ref().and_then(|d| serde_json::to_value(d).ok()),
        }
    }
}

impl Change {
    /// A change of `table`/`key` (`value` none: deleted) if its table has a topic.
    pub fn new(table: Table, key: &str, value: Option<&[u8]>) -> Option<Self> {
        topic_of(table)?;
        Some(Self {
            table,
            key: key.to_owned(),
            value: value.map(<[u8]>::to_vec),
            before: None,
        })
    }

    /// The node's id, if this changes a node (to look up how it was).
    pub fn node_key(&self) -> Option<&str> {
        (self.table == Table::Nodes).then_some(self.key.as_str())
    }

    /// Records how the node was before (for node changes).
    pub fn with_before(mut self, before: Option<NodeView>) -> Self {
        self.before = before;
        self
    }
}

fn topic_of(table: Table) -> Option<EventTopic> {
    match table {
        Table::Jobs => Some(EventTopic::Job),
        Table::Allocs => Some(EventTopic::Allocation),
        Table::Nodes => Some(EventTopic::Node),
        Table::Evals => Some(EventTopic::Evaluation),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Namespaced {
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct JobView {
    #[serde(default)]
    stopped: bool,
}

#[derive(Serialize)]
struct EventOut<'a> {
    topic: EventTopic,
    #[serde(rename = "type")]
    kind: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    index: u64,
    payload: &'a RawValue,
}

/// A commit's place in line: taken before the store is written, given back
/// with the commit's events ([`EventBroker::publish`]) or dropped when the
/// commit failed.
pub struct Ticket<'a> {
    broker: &'a EventBroker,
    id: u64,
    done: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.broker.lock();
            inner.in_flight.remove(&self.id);
            inner.release(&self.broker.settings);
        }
    }
}

/// Why a subscriber's stream ended, as the broker saw it.
#[derive(Debug, Default)]
pub struct Ending(Mutex<Option<StreamEnd>>);

impl Ending {
    fn set(&self, end: StreamEnd) {
        let mut e = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(end);
        }
    }

    /// The reason, once the queue is closed.
    pub fn take(&self) -> Option<StreamEnd> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

struct Sub {
    filter: Filter,
    tx: mpsc::Sender<Arc<Event>>,
    ending: Arc<Ending>,
}

struct Pending {
    /// Every ticket up to this one must be finished first.
    horizon: u64,
    events: Vec<Arc<Event>>,
}

struct Inner {
    next_ticket: u64,
    in_flight: BTreeSet<u64>,
    pending: BTreeMap<u64, Pending>,
    ring: VecDeque<Arc<Event>>,
    /// Resuming needs an index at or above this: events at or below it may be gone.
    floor: u64,
    /// The newest index released.
    last: u64,
    subs: Vec<Sub>,
    closed: Option<StreamEnd>,
}

impl Inner {
    /// Releases, in index order, every pending commit no earlier commit can precede.
    fn release(&mut self, settings: &EventSettings) {
        let lowest_running = self.in_flight.first().copied().unwrap_or(u64::MAX);
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().horizon >= lowest_running {
                break;
            }
            let (index, p) = entry.remove_entry();
            for e in p.events {
                self.deliver(e, settings);
            }
            self.last = self.last.max(index);
        }
    }

    fn deliver(&mut self, e: Arc<Event>, settings: &EventSettings) {
        self.subs.retain(|s| {
            if !s.filter.matches(&e) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.ending.set(StreamEnd {
                        code: "slow_subscriber".into(),
                        message: format!(
                            "this subscriber fell {} events behind and was cut so that \
                             commits do not wait; resume with index={}",
                            settings.subscriber_queue,
                            e.index - 1
                        ),
                        resume_index: e.index - 1,
                    });
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.ring.push_back(e);
        while self.ring.len() > settings.buffer {
            if let Some(old) = self.ring.pop_front() {
                self.floor = self.floor.max(old.index);
            }
        }
    }
}

/// The event broker of one server state (see the module doc).
pub struct EventBroker {
    settings: EventSettings,
    inner: Mutex<Inner>,
}

/// A new subscription: the kept events after its index, then its queue.
pub struct Subscription {
    /// Kept events after the index asked for, in order.
    pub replay: Vec<Arc<Event>>,
    /// Live events.
    pub rx: mpsc::Receiver<Arc<Event>>,
    /// Why the queue closed, once it has.
    pub ending: Arc<Ending>,
    /// The index the stream starts after.
    pub start: u64,
}

impl EventBroker {
    /// A broker for a state loaded at `index`: events at or below it are not kept.
    pub fn new(settings: EventSettings, index: u64) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner {
                next_ticket: 0,
                in_flight: BTreeSet::new(),
                pending: BTreeMap::new(),
                ring: VecDeque::new(),
                floor: index,
                last: index,
                subs: Vec::new(),
                closed: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings.
    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    /// Takes a place in line for a commit about to be written.
    pub fn begin(&self) -> Ticket<'_> {
        let mut inner = self.lock();
        let id = inner.next_ticket;
        inner.next_ticket += 1;
        inner.in_flight.insert(id);
        Ticket {
            broker: self,
            id,
            done: false,
        }
    }

    /// The events of a commit at `index`, released once every commit that may
    /// precede it has been published or failed.
    pub fn publish(&self, mut ticket: Ticket<'_>, index: u64, changes: Vec<Change>) {
        let events: Vec<Arc<Event>> = changes
            .into_iter()
            .filter_map(|c| Self::event(index, c).map(Arc::new))
            .collect();
        ticket.done = true;
        let mut inner = self.lock();
        inner.in_flight.remove(&ticket.id);
        // A follower's copy sees again the commits it loaded: they are not news.
        if index > inner.floor && !events.is_empty() {
            let horizon = inner.next_ticket - 1;
            inner.pending.insert(index, Pending { horizon, events });
        }
        inner.release(&self.settings);
    }

    /// The event of one change (none if its record cannot be read: logged).
    fn event(index: u64, c: Change) -> Option<Event> {
        let topic = topic_of(c.table)?;
        let null;
        let payload: Box<RawValue> = match &c.value {
            Some(v) => match taba_store::decode::<Box<RawValue>>(v) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(table = %c.table, key = c.key, error = %e, "no event for an unreadable record");
                    return None;
                }
            },
            None => {
                null = RawValue::from_string("null".into()).ok()?;
                null
            }
        };
        let namespace = match topic {
            EventTopic::Node => None,
            EventTopic::Job => c.key.split_once('/').map(|(ns, _)| ns.to_owned()),
            _ => match &c.value {
                Some(_) => serde_json::from_str::<Namespaced>(payload.get())
                    .ok()
                    .and_then(|n| n.namespace),
                None => None,
            },
        };
        let kind = Self::kind(topic, &c, &payload);
        let out = EventOut {
            topic,
            kind,
            key: &c.key,
            namespace: namespace.as_deref(),
            index,
            payload: &payload,
        };
        let mut line = serde_json::to_vec(&out).ok()?;
        line.push(b'\n');
        Some(Event {
            topic,
            namespace,
            index,
            line: Bytes::from(line),
        })
    }

    fn kind(topic: EventTopic, c: &Change, payload: &RawValue) -> &'static str {
        let deleted = c.value.is_none();
        match topic {
            EventTopic::Job if deleted => "JobDeleted",
            EventTopic::Job => match serde_json::from_str::<JobView>(payload.get()) {
                Ok(j) if j.stopped => "JobDeregistered",
                _ => "JobRegistered",
            },
            EventTopic::Allocation if deleted => "AllocationDeleted",
            EventTopic::Allocation => "AllocationUpdated",
            EventTopic::Evaluation if deleted => "EvaluationDeleted",
            EventTopic::Evaluation => "EvaluationUpdated",
            EventTopic::Node if deleted => "NodeDeregistered",
            EventTopic::Node => {
                let now = serde_json::from_str::<NodeView>(payload.get()).ok();
                match (&c.before, now) {
                    (None, _) => "NodeRegistered",
                    (Some(b), Some(n)) if b.status != n.status => "NodeStatusChanged",
                    (Some(b), Some(n)) if b.drain != n.drain => "NodeDrainChanged",
                    (Some(b), Some(n)) if b.eligibility != n.eligibility => {
                        "NodeEligibilityChanged"
                    }
                    _ => "NodeUpdated",
                }
            }
        }
    }

    /// Subscribes with `filter`, replaying the kept events after `index`
    /// (none: only what comes from now on).
    pub fn subscribe(
        &self,
        filter: Filter,
        index: Option<u64>,
    ) -> Result<Subscription, EventError> {
        let mut inner = self.lock();
        if let Some(end) = &inner.closed {
            return Err(EventError::Closed(end.message.clone()));
        }
        inner.subs.retain(|s| !s.tx.is_closed());
        if inner.subs.len() >= self.settings.max_subscribers {
            return Err(EventError::Full(self.settings.max_subscribers));
        }
        let start = match index {
            Some(i) if i < inner.floor => {
                return Err(EventError::TooOld {
                    asked: i,
                    floor: inner.floor,
                })
            }
            Some(i) => i,
            None => inner.last,
        };
        let replay = inner
            .ring
            .iter()
            .filter(|e| e.index > start && filter.matches(e))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(self.settings.subscriber_queue.max(1));
        let ending = Arc::new(Ending::default());
        inner.subs.push(Sub {
            filter,
            tx,
            ending: ending.clone(),
        });
        Ok(Subscription {
            replay,
            rx,
            ending,
            start,
        })
    }

    /// The newest index released to subscribers.
    pub fn last_index(&self) -> u64 {
        self.lock().last
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> usize {
        let mut inner = self.lock();
        inner.subs.retain(|s| !s.tx.is_closed());
        inner.subs.len()
    }

    /// Ends every stream (their queues drain, then a last line with `code`)
    /// and refuses new ones.
    pub fn close(&self, code: &str, message: &str) {
        let mut inner = self.lock();
        if inner.closed.is_some() {
            return;
        }
        let end = StreamEnd {
            code: code.into(),
            message: message.into(),
            resume_index: inner.last,
        };
        for s in inner.subs.drain(..) {
            s.ending.set(end.clone());
        }
        inner.closed = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(buffer: usize, queue: usize) -> EventSettings {
        EventSettings {
            buffer,
            subscriber_queue: queue,
            ..EventSettings::default()
        }
    }

    fn eval_change(id: &str, ns: &str) -> Change {
        let v = taba_store::encode(
            &serde_json::json!({"id": id, "namespace": ns, "status": "pending"}),
        );
        Change::new(Table::Evals, id, Some(&v)).unwrap()
    }

    fn all(ns: Option<&str>) -> Filter {
        Filter {
            topics: EventTopic::ALL.into_iter().collect(),
            namespace: ns.map(str::to_owned),
            rights: Rights::all(),
        }
    }

    fn indexes(rx: &mut mpsc::Receiver<Arc<Event>>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e.index);
        }
        out
    }

    #[test]
    fn commits_finishing_out_of_order_are_released_in_index_order() {
        let b = EventBroker::new(settings(100, 100), 0);
        let mut sub = b.subscribe(all(None), None).unwrap();
        let first = b.begin();
        let second = b.begin();
        // The second commit got the higher index but finished first: held back.
        b.publish(second, 2, vec![eval_change("b", "default")]);
        assert_eq!(indexes(&mut sub.rx), Vec::<u64>::new());
        b.publish(first, 1, vec![eval_change("a", "default")]);
        assert_eq!(indexes(&mut sub.rx), vec![1, 2]);
        // A failed commit (ticket dropped) holds nothing back.
        let failed = b.begin();
        let third = b.begin();
        b.publish(third, 3, vec![eval_change("c", "default")]);
        assert_eq!(indexes(&mut sub.rx), Vec::<u64>::new());
        drop(failed);
        assert_eq!(indexes(&mut sub.rx), vec![3]);
    }

    #[test]
    fn resume_replays_what_is_kept_and_refuses_what_is_gone() {
        let b = EventBroker::new(settings(3, 100), 10);
        for i in 11..=15 {
            let t = b.begin();
            b.publish(t, i, vec![eval_change(&format!("e{i}"), "default")]);
        }
        let sub = b.subscribe(all(None), Some(13)).unwrap();
        let got: Vec<u64> = sub.replay.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![14, 15]);
        assert!(matches!(
            b.subscribe(all(None), Some(11)),
            Err(EventError::TooOld {
                asked: 11,
                floor: 12
            })
        ));
        // The load index itself is a valid start; commits at or below it are not news.
        let b = EventBroker::new(settings(3, 100), 10);
        let t = b.begin();
        b.publish(t, 9, vec![eval_change("old", "default")]);
        assert!(b.subscribe(all(None), Some(10)).unwrap().replay.is_empty());
    }

    #[test]
    fn a_full_queue_cuts_only_that_subscriber() {
        let b = EventBroker::new(settings(100, 2), 0);
        let slow = b.subscribe(all(None), None).unwrap();
        let mut other = b.subscribe(all(Some("other")), None).unwrap();
        for i in 1..=5 {
            let t = b.begin();
            b.publish(t, i, vec![eval_change(&format!("e{i}"), "default")]);
        }
        let end = slow.ending.take().expect("cut");
        assert_eq!(end.code, "slow_subscriber");
        assert_eq!(end.resume_index, 2);
        assert_eq!(b.subscribers(), 1);
        let t = b.begin();
        b.publish(t, 6, vec![eval_change("o", "other")]);
        assert_eq!(indexes(&mut other.rx), vec![6]);
    }

    #[test]
    fn filters_by_namespace_rights_and_topic() {
        let b = EventBroker::new(settings(100, 100), 0);
        let policy =
            taba_types::acl::parse_policy_toml("a", b"[namespace.a]\ncapabilities = [\"read\"]\n")
                .unwrap();
        let only_a = Filter {
            topics: [EventTopic::Evaluation].into_iter().collect(),
            namespace: None,
            rights: Rights::compile([&policy]),
        };
        let mut sub = b.subscribe(only_a, None).unwrap();
        let t = b.begin();
        b.publish(
            t,
            1,
            vec![
                eval_change("x", "a"),
                eval_change("y", "b"),
                eval_change("z", "a"),
            ],
        );
        let got: Vec<String> = std::iter::from_fn(|| sub.rx.try_recv().ok())
            .map(|e| e.namespace.clone().unwrap())
            .collect();
        assert_eq!(got, vec!["a", "a"]);
    }
}
