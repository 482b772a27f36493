//! Namespace quotas: what each namespace's allocations hold, the limits the
//! server set, and the checks that keep placements within them.
//!
//! - [`ClusterState`] keeps, per namespace, the CPU, memory and number of
//!   allocations whose client status is not terminal (updated wherever node
//!   usage is), and the quotas ([`ClusterState::set_quota`]).
//! - The scheduler asks a [`Tracker`] how many of a group's allocations the
//!   quota still allows, given the usage and what the plan being built has
//!   already stopped and placed. Placements past it are not made: the group
//!   fails with `quota exceeded in namespace team-a: memory 4GiB of 4GiB
//!   used` and the evaluation is blocked until usage drops or the quota is
//!   raised.
//! - [`verify`] is the plan applier's check: a plan that would take a
//!   namespace past its quota on the latest state (two plans made
//!   concurrently on the same snapshot) is rejected whole. A plan that adds
//!   nothing in a dimension is never rejected for it, so stops and
//!   replacements still go through when a quota was lowered below usage.
//!
//! Like node capacity, an allocation the plan stops is free for the plan's
//! own placements. Nothing here does I/O.

use crate::plan::PlanRejection;
use crate::state::{ClusterState, Res};
use std::collections::{BTreeMap, BTreeSet};
use taba_types::{AllocId, ByteSize, NamespaceUsage, Plan, Quota};

/// What a namespace's allocations hold together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NsUsage {
    pub res: Res,
    pub allocs: u64,
}

impl NsUsage {
    pub fn change(&mut self, r: Res, add: bool) {
        if add {
            self.res.add(r);
            self.allocs += 1;
        } else {
            self.res.sub(r);
            self.allocs = self.allocs.saturating_sub(1);
        }
    }
}

impl ClusterState {
    /// Set (or with `None`, or a quota that limits nothing, clear) the quota
    /// of a namespace.
    pub fn set_quota(&mut self, namespace: &str, quota: Option<Quota>) {
        match quota.filter(|q| !q.is_unlimited()) {
            Some(q) => {
                self.quotas.insert(namespace.to_string(), q);
            }
            None => {
                self.quotas.remove(namespace);
            }
        }
    }

    /// The quota of a namespace, if it has one.
    pub fn quota(&self, namespace: &str) -> Option<&Quota> {
        self.quotas.get(namespace)
    }

    /// What the namespace's allocations whose client status is not terminal
    /// hold together.
    pub fn namespace_usage(&self, namespace: &str) -> NamespaceUsage {
        let u = self.ns_usage.get(namespace).copied().unwrap_or_default();
        NamespaceUsage {
            cpu: u.res.cpu,
            memory: ByteSize(u.res.mem),
            allocations: u32::try_from(u.allocs).unwrap_or(u32::MAX),
        }
    }
}

/// What a plan adds to and frees from each namespace.
#[derive(Default)]
struct Effect {
    added: NsUsage,
    freed: NsUsage,
}

/// The effect of `plan` on the namespaces `wanted` accepts.
fn plan_effects(
    state: &ClusterState,
    plan: &Plan,
    wanted: impl Fn(&str) -> bool,
) -> BTreeMap<String, Effect> {
    let mut out: BTreeMap<String, Effect> = BTreeMap::new();
    let mut stopped: BTreeSet<&AllocId> = BTreeSet::new();
    for s in &plan.stops {
        let Some(a) = state.alloc(&s.alloc_id) else {
            continue;
        };
        if stopped.insert(&a.id) && a.holds_resources() && wanted(&a.namespace) {
            let e = out.entry(a.namespace.clone()).or_default();
            e.freed.change(Res::of(&a.resources), true);
        }
    }
    for u in &plan.updates {
        let Some(a) = state.alloc(&u.id) else {
            continue;
        };
        if a.holds_resources()
            && !stopped.contains(&a.id)
            && a.resources != u.resources
            && wanted(&a.namespace)
        {
            let e = out.entry(a.namespace.clone()).or_default();
            e.freed.res.add(Res::of(&a.resources));
            e.added.res.add(Res::of(&u.resources));
        }
    }
    for p in &plan.placements {
        if wanted(&p.namespace) {
            let e = out.entry(p.namespace.clone()).or_default();
            e.added.change(Res::of(&p.resources), true);
        }
    }
    out
}

/// The room a namespace's quota leaves while one plan is built.
pub(crate) struct Tracker<'a> {
    namespace: &'a str,
    quota: &'a Quota,
    used: NsUsage,
    /// Stops, updates and placements of the plan counted so far.
    seen: (usize, usize, usize),
}

impl<'a> Tracker<'a> {
    /// The tracker of `namespace` given the state and the plan so far, or
    /// `None` when the namespace has no quota.
    pub fn new(state: &'a ClusterState, plan: &Plan, namespace: &'a str) -> Option<Self> {
        let quota = state.quotas.get(namespace)?;
        let mut t = Self {
            namespace,
            quota,
            used: state.ns_usage.get(namespace).copied().unwrap_or_default(),
            seen: (0, 0, 0),
        };
        t.catch_up(state, plan);
        Some(t)
    }

    /// Count what the plan stopped, updated and placed since the last call.
    pub fn catch_up(&mut self, state: &ClusterState, plan: &Plan) {
        let mine = |ns: &str| ns == self.namespace;
        for s in plan.stops.get(self.seen.0..).unwrap_or_default() {
            if let Some(a) = state.alloc(&s.alloc_id) {
                if a.holds_resources() && mine(&a.namespace) {
                    self.used.change(Res::of(&a.resources), false);
                }
            }
        }
        for u in plan.updates.get(self.seen.1..).unwrap_or_default() {
            if let Some(a) = state.alloc(&u.id) {
                if a.holds_resources() && mine(&a.namespace) && a.resources != u.resources {
                    self.used.res.sub(Res::of(&a.resources));
                    self.used.res.add(Res::of(&u.resources));
                }
            }
        }
        for p in plan.placements.get(self.seen.2..).unwrap_or_default() {
            if mine(&p.namespace) {
                self.used.change(Res::of(&p.resources), true);
            }
        }
        self.seen = (plan.stops.len(), plan.updates.len(), plan.placements.len());
    }

    /// How many more allocations of `each` the quota allows.
    pub fn how_many(&self, each: Res) -> u64 {
        let mut n = u64::MAX;
        let dims = [
            (self.quota.cpu, self.used.res.cpu, each.cpu),
            (self.quota.memory.map(|m| m.0), self.used.res.mem, each.mem),
            (self.quota.allocations.map(u64::from), self.used.allocs, 1),
        ];
        for (limit, used, need) in dims {
            if let Some(limit) = limit {
                let left = limit.saturating_sub(used);
                if let Some(k) = left.checked_div(need) {
                    n = n.min(k);
                }
            }
        }
        n
    }

    /// Count `n` allocations of `each` as placed (before they are in the plan).
    pub fn take(&mut self, each: Res, n: u64) {
        self.used.res.add(each.times(n));
        self.used.allocs += n;
    }

    /// Why one more allocation of `each` does not fit:
    /// `quota exceeded in namespace team-a: memory 4GiB of 4GiB used`.
    pub fn reason(&self, each: Res) -> String {
        let q = self.quota;
        let u = &self.used;
        let what = if q
            .cpu
            .is_some_and(|c| u.res.cpu.saturating_add(each.cpu) > c)
        {
            format!("cpu {} MHz of {} MHz used", u.res.cpu, q.cpu.unwrap_or(0))
        } else if q
            .memory
            .is_some_and(|m| u.res.mem.saturating_add(each.mem) > m.0)
        {
            format!(
                "memory {} of {} used",
                ByteSize(u.res.mem),
                q.memory.unwrap_or_default()
            )
        } else {
            format!(
                "allocations {} of {} used",
                u.allocs,
                q.allocations.unwrap_or(0)
            )
        };
        format!("quota exceeded in namespace {}: {what}", self.namespace)
    }
}

/// The plan applier's quota check: every namespace with a quota to which
/// the plan adds stays within it, given the latest state.
pub(crate) fn verify(state: &ClusterState, plan: &Plan) -> Result<(), PlanRejection> {
    if state.quotas.is_empty() {
        return Ok(());
    }
    let effects = plan_effects(state, plan, |ns| state.quotas.contains_key(ns));
    for (ns, e) in effects {
        let q = &state.quotas[&ns];
        let u = state.ns_usage.get(&ns).copied().unwrap_or_default();
        let dims = [
            ("cpu", q.cpu, u.res.cpu, e.added.res.cpu, e.freed.res.cpu),
            (
                "memory",
                q.memory.map(|m| m.0),
                u.res.mem,
                e.added.res.mem,
                e.freed.res.mem,
            ),
            (
                "allocations",
                q.allocations.map(u64::from),
                u.allocs,
                e.added.allocs,
                e.freed.allocs,
            ),
        ];
        for (dimension, limit, used, added, freed) in dims {
            let Some(limit) = limit else { continue };
            if added > freed && used.saturating_sub(freed).saturating_add(added) > limit {
                return Err(PlanRejection::QuotaExceeded {
                    namespace: ns,
                    dimension,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::{eval_for, group, job, node};
    use crate::{apply_plan, schedule, verify_plan, ClusterState, PlanRejection};
    use taba_types::*;

    fn cluster() -> ClusterState {
        let mut s = ClusterState::new();
        for n in ["n1", "n2"] {
            s.upsert_node(node(n, 8000, 16384));
        }
        s.set_index(1);
        s
    }

    fn in_ns(ns: &str, name: &str, t: JobType, g: TaskGroupSpec) -> Job {
        let mut j = job(name, t, vec![g]);
        j.spec.namespace = ns.into();
        j
    }

    fn commit(s: &mut ClusterState, o: &SchedulerOutcome) {
        verify_plan(s, &o.plan).expect("plan verifies");
        let idx = s.index() + 1;
        apply_plan(s, &o.plan, idx);
    }

    fn quota(cpu: Option<u64>, mem_mib: Option<u64>, allocs: Option<u32>) -> Option<Quota> {
        Some(Quota {
            cpu,
            memory: mem_mib.map(ByteSize::mib),
            allocations: allocs,
        })
    }

    #[test]
    fn placements_stop_exactly_at_the_memory_quota() {
        let mut s = cluster();
        s.set_quota("team-a", quota(None, Some(4096), None));
        let j = in_ns(
            "team-a",
            "crunch",
            JobType::Batch,
            group("g", 10, 100, 1024),
        );
        s.upsert_job(j.clone());
        let o = schedule(&s, &eval_for(&j, 1), 0);
        assert_eq!(o.plan.placements.len(), 4, "4 x 1GiB fill a 4GiB quota");
        assert_eq!(o.status, EvalStatus::Blocked);
        assert_eq!(o.queued["g"], 6);
        let f = &o.failed_groups["g"];
        assert_eq!(
            f.quota,
            "quota exceeded in namespace team-a: memory 4GiB of 4GiB used"
        );
        assert_eq!(f.coalesced, 5);
        assert!(f
            .summary()
            .starts_with("quota exceeded in namespace team-a"));
        commit(&mut s, &o);
        let u = s.namespace_usage("team-a");
        assert_eq!(
            (u.cpu, u.memory, u.allocations),
            (400, ByteSize::mib(4096), 4)
        );
        // The cluster had room: other namespaces are not limited.
        let other = in_ns(
            "default",
            "other",
            JobType::Batch,
            group("g", 10, 100, 1024),
        );
        s.upsert_job(other.clone());
        let o = schedule(&s, &eval_for(&other, 2), 0);
        assert_eq!(o.plan.placements.len(), 10);
        assert_eq!(o.status, EvalStatus::Complete);
    }

    #[test]
    fn raising_the_quota_or_freeing_usage_places_the_rest() {
        let mut s = cluster();
        s.set_quota("team-a", quota(None, None, Some(2)));
        let j = in_ns("team-a", "web", JobType::Service, group("g", 3, 100, 64));
        s.upsert_job(j.clone());
        let o = schedule(&s, &eval_for(&j, 1), 0);
        assert_eq!(o.plan.placements.len(), 2);
        assert_eq!(
            o.failed_groups["g"].summary(),
            "quota exceeded in namespace team-a: allocations 2 of 2 used"
        );
        commit(&mut s, &o);
        // Still at the quota: nothing more.
        let o = schedule(&s, &eval_for(&j, 2), 0);
        assert!(o.plan.placements.is_empty());
        assert_eq!(o.status, EvalStatus::Blocked);
        // Raised: the third is placed.
        s.set_quota("team-a", quota(None, None, Some(3)));
        let o = schedule(&s, &eval_for(&j, 3), 0);
        assert_eq!(o.plan.placements.len(), 1);
        assert_eq!(o.status, EvalStatus::Complete);
        commit(&mut s, &o);
        assert_eq!(s.namespace_usage("team-a").allocations, 3);
        // Usage drops when an allocation ends (client status terminal).
        let mut a = s.allocs_for_job("team-a", "web").next().unwrap().clone();
        a.client_status = ClientStatus::Complete;
        s.upsert_alloc(a);
        assert_eq!(s.namespace_usage("team-a").allocations, 2);
        // A quota that limits nothing is no quota.
        s.set_quota("team-a", Some(Quota::default()));
        assert!(s.quota("team-a").is_none());
    }

    #[test]
    fn cpu_quota_counts_the_plans_own_stops() {
        let mut s = cluster();
        s.set_quota("team-a", quota(Some(1000), None, None));
        let j = in_ns("team-a", "web", JobType::Service, group("g", 2, 500, 64));
        s.upsert_job(j.clone());
        let o = schedule(&s, &eval_for(&j, 1), 0);
        commit(&mut s, &o);
        assert_eq!(s.namespace_usage("team-a").cpu, 1000);
        // A changed spec at the quota: each replacement stops one and places
        // one, so the rolling update goes through.
        let mut j2 = in_ns("team-a", "web", JobType::Service, group("g", 2, 500, 128));
        j2.version = 1;
        s.upsert_job(j2.clone());
        let o = schedule(&s, &eval_for(&j2, 2), 0);
        assert_eq!((o.plan.stops.len(), o.plan.placements.len()), (1, 1));
        assert!(o.failed_groups.is_empty(), "{:?}", o.failed_groups);
        commit(&mut s, &o);
        // A scale-up past the quota is refused with the cpu reason.
        let mut j3 = j2.clone();
        j3.spec.groups[0].count = 3;
        j3.version = 2;
        s.upsert_job(j3.clone());
        let o = schedule(&s, &eval_for(&j3, 3), 0);
        assert!(
            o.failed_groups["g"].quota.contains("cpu"),
            "{:?}",
            o.failed_groups
        );
    }

    #[test]
    fn verify_rejects_concurrent_plans_that_together_exceed_the_quota() {
        let mut s = cluster();
        s.set_quota("team-a", quota(None, Some(3072), None));
        let a = in_ns("team-a", "a", JobType::Batch, group("g", 2, 100, 1024));
        let b = in_ns("team-a", "b", JobType::Batch, group("g", 2, 100, 1024));
        s.upsert_job(a.clone());
        s.upsert_job(b.clone());
        // Both made on the same snapshot: each fits alone.
        let oa = schedule(&s, &eval_for(&a, 1), 0);
        let ob = schedule(&s, &eval_for(&b, 2), 0);
        assert_eq!(oa.plan.placements.len(), 2);
        assert_eq!(ob.plan.placements.len(), 2);
        commit(&mut s, &oa);
        assert_eq!(
            verify_plan(&s, &ob.plan),
            Err(PlanRejection::QuotaExceeded {
                namespace: "team-a".into(),
                dimension: "memory"
            })
        );
        // Retried on the fresh state: one fits, one waits.
        let ob = schedule(&s, &eval_for(&b, 3), 0);
        assert_eq!(ob.plan.placements.len(), 1);
        assert_eq!(ob.status, EvalStatus::Blocked);
        commit(&mut s, &ob);
        // Lowered below usage: a plan that only stops still verifies.
        s.set_quota("team-a", quota(None, Some(1024), None));
        let mut stopped = a.clone();
        stopped.stopped = true;
        s.upsert_job(stopped.clone());
        let o = schedule(&s, &eval_for(&stopped, 4), 0);
        assert_eq!(o.plan.stops.len(), 2);
        assert!(verify_plan(&s, &o.plan).is_ok());
    }

    #[test]
    fn system_jobs_respect_the_allocations_quota() {
        let mut s = cluster();
        s.upsert_node(node("n3", 8000, 16384));
        s.set_quota("ops", quota(None, None, Some(2)));
        let j = in_ns("ops", "agentd", JobType::System, group("g", 1, 100, 64));
        s.upsert_job(j.clone());
        let o = schedule(&s, &eval_for(&j, 1), 0);
        assert_eq!(o.plan.placements.len(), 2);
        assert_eq!(o.status, EvalStatus::Blocked);
        assert_eq!(o.queued["g"], 1);
        assert_eq!(
            o.failed_groups["g"].quota,
            "quota exceeded in namespace ops: allocations 2 of 2 used"
        );
    }
}
