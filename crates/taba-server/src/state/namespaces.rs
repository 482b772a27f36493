//! Namespaces on the server: their records (store table `namespaces`), the
//! quotas handed to the scheduler's [`taba_scheduler::ClusterState`], usage
//! reports, and the release of blocked evaluations in DRF order.
//!
//! `default` always exists without a record; a record is written for it
//! only when an operator sets its description or quota. Any change of a
//! namespace re-runs its blocked evaluations (a raised quota lets them
//! place); capacity freed anywhere re-runs every blocked evaluation, the
//! namespace with the lowest dominant share first ([`taba_scheduler::drf`]).

use super::{ServerState, StateError};
use std::collections::BTreeMap;
use taba_store::{Table, Txn};
use taba_types::api::NamespaceStatus;
use taba_types::{Evaluation, Namespace, DEFAULT_NAMESPACE};

impl ServerState {
    /// Jobs may only be registered in a namespace that exists.
    pub(super) fn check_namespace(
        namespaces: &BTreeMap<String, Namespace>,
        ns: &str,
    ) -> Result<(), StateError> {
        if ns == DEFAULT_NAMESPACE || namespaces.contains_key(ns) {
            return Ok(());
        }
        Err(StateError::Invalid {
            field: "namespace".into(),
            message: format!(
                "namespace {ns:?} does not exist; create it with `taba namespace apply {ns}`"
            ),
        })
    }

    fn namespace_status(&self, ns: &Namespace) -> NamespaceStatus {
        let c = self.cluster();
        let jobs = c
            .jobs()
            .filter(|j| j.spec.namespace == ns.name && !j.stopped)
            .count() as u32;
        NamespaceStatus {
            name: ns.name.clone(),
            description: ns.description.clone(),
            quota: ns.quota.clone(),
            usage: c.namespace_usage(&ns.name),
            dominant_share: taba_scheduler::drf::namespace_share(&c, &ns.name),
            jobs,
        }
    }

    /// Every namespace (`default` included) with its usage, by name.
    pub async fn list_namespaces(&self) -> Vec<NamespaceStatus> {
        let mut all = self.namespaces.read().await.clone();
        all.entry(DEFAULT_NAMESPACE.to_string())
            .or_insert_with(Namespace::default_namespace);
        all.values().map(|ns| self.namespace_status(ns)).collect()
    }

    /// One namespace with its quota and usage.
    pub async fn get_namespace(&self, name: &str) -> Result<NamespaceStatus, StateError> {
        let found = self.namespaces.read().await.get(name).cloned();
        let ns = match found {
            Some(ns) => ns,
            None if name == DEFAULT_NAMESPACE => Namespace::default_namespace(),
            None => {
                return Err(StateError::NotFound(format!(
                    "namespace {name:?} not found"
                )))
            }
        };
        Ok(self.namespace_status(&ns))
    }

    /// Create or replace a validated namespace; its blocked evaluations run
    /// again (a raised quota may let them place).
    pub async fn apply_namespace(&self, ns: Namespace) -> Result<NamespaceStatus, StateError> {
        let mut namespaces = self.namespaces.write().await;
        let txn = Txn::new().put_encoded(Table::Namespaces, ns.name.clone(), &ns);
        let index = self.commit(txn).await?;
        self.cluster_mut().set_quota(&ns.name, ns.quota.clone());
        namespaces.insert(ns.name.clone(), ns.clone());
        drop(namespaces);
        self.apply(index, vec![], vec![], vec![], vec![]);
        self.unblock(Some(&ns.name));
        Ok(self.namespace_status(&ns))
    }

    /// Remove a namespace: refused for `default` and while it has jobs that
    /// are not stopped. Returns the store index of the write.
    pub async fn delete_namespace(&self, name: &str) -> Result<u64, StateError> {
        let mut namespaces = self.namespaces.write().await;
        if name == DEFAULT_NAMESPACE {
            return Err(StateError::Conflict(
                "the default namespace always exists and cannot be removed".into(),
            ));
        }
        if !namespaces.contains_key(name) {
            return Err(StateError::NotFound(format!(
                "namespace {name:?} not found"
            )));
        }
        let live: Vec<String> = self
            .cluster()
            .jobs()
            .filter(|j| j.spec.namespace == name && !j.stopped)
            .map(|j| j.spec.name.clone())
            .collect();
        if !live.is_empty() {
            let shown: Vec<&str> = live.iter().take(5).map(String::as_str).collect();
            return Err(StateError::Conflict(format!(
                "namespace {name:?} has {} job(s) that are not stopped ({}{}); stop them first",
                live.len(),
                shown.join(", "),
                if live.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        let index = self
            .commit(Txn::new().delete(Table::Namespaces, name))
            .await?;
        self.cluster_mut().set_quota(name, None);
        namespaces.remove(name);
        drop(namespaces);
        self.apply(index, vec![], vec![], vec![], vec![]);
        Ok(index)
    }

    /// Re-run parked blocked evaluations (of one namespace, or all) in DRF
    /// order: the namespace with the lowest dominant share first.
    pub(super) fn unblock(&self, namespace: Option<&str>) {
        self.broker.unblock_ordered(|parked| {
            let picked: Vec<usize> = (0..parked.len())
                .filter(|&i| namespace.is_none_or(|ns| parked[i].namespace == ns))
                .collect();
            let subset: Vec<Evaluation> = picked.iter().map(|&i| parked[i].clone()).collect();
            let c = self.cluster();
            taba_scheduler::drf::order(&c, &subset)
                .into_iter()
                .map(|j| picked[j])
                .collect()
        });
    }
}
