//! A follower's copy of the state, fed by the store's watch.
//!
//! A follower of an HA cluster loads the state like a leader does (through a store that
//! refuses writes), then applies every transaction the leader commits, in index order, as
//! the watch delivers it ([`ServerState::apply_replicated`]). Its API serves reads from this
//! copy; writes are forwarded to the leader (see `crate::leader`).

use super::{decode, ServerState, StateError};
use taba_store::{ChangeBatch, Record, Table};
use taba_types::{AllocId, Allocation, EvalId, Evaluation, Job, Namespace, Node, NodeId};

impl ServerState {
    /// Applies one committed transaction to memory and wakes the blocking queries waiting
    /// for its index. Changes at or below the current index are applied again (they are
    /// idempotent): the watch starts at the index read before the state was loaded.
    pub(crate) async fn apply_replicated(&self, batch: &ChangeBatch) -> Result<(), StateError> {
        let events = self.event_changes(batch.changes.iter().map(|c| {
            (
                c.table,
                c.key.as_str(),
                c.record.as_ref().map(|r| &r.value[..]),
            )
        }));
        let ticket = self.events.begin();
        for c in &batch.changes {
            let record = c.record.as_ref();
            match c.table {
                Table::Nodes => self.replicate_node(&c.key, record)?,
                Table::Jobs => self.replicate_job(&c.key, record)?,
                Table::Allocs => self.replicate_alloc(&c.key, record)?,
                Table::Evals => self.replicate_eval(&c.key, record)?,
                Table::Namespaces => self.replicate_namespace(&c.key, record).await?,
                Table::AclPolicies | Table::AclTokens => {
                    self.acl.apply_replicated(c.table, &c.key, record)
                }
                Table::Meta => {
                    self.acl.apply_replicated(c.table, &c.key, record);
                    self.credentials.apply_replicated(&c.key, record);
                }
                // Job versions are read from the store when asked for.
                Table::JobVersions => {}
            }
        }
        {
            let mut cluster = self.cluster_mut();
            if batch.index > cluster.index() {
                cluster.set_index(batch.index);
            }
        }
        self.index.send_modify(|i| *i = (*i).max(batch.index));
        self.events.publish(ticket, batch.index, events);
        Ok(())
    }

    fn replicate_node(&self, key: &str, record: Option<&Record>) -> Result<(), StateError> {
        match record {
            Some(r) => {
                let mut n: Node = decode(Table::Nodes, r)?;
                n.create_index = r.create_index;
                n.modify_index = r.mod_index;
                self.cluster_mut().upsert_node(n);
            }
            None => self.cluster_mut().remove_node(&NodeId::from(key)),
        }
        Ok(())
    }

    fn replicate_job(&self, key: &str, record: Option<&Record>) -> Result<(), StateError> {
        match record {
            Some(r) => {
                let mut j: Job = decode(Table::Jobs, r)?;
                if j.create_index == 0 {
                    j.create_index = r.create_index;
                }
                j.modify_index = r.mod_index;
                self.cluster_mut().upsert_job(j);
            }
            None => {
                if let Some((ns, name)) = key.split_once('/') {
                    self.cluster_mut().remove_job(ns, name);
                }
            }
        }
        Ok(())
    }

    fn replicate_alloc(&self, key: &str, record: Option<&Record>) -> Result<(), StateError> {
        match record {
            Some(r) => {
                let mut a: Allocation = decode(Table::Allocs, r)?;
                a.create_index = r.create_index;
                a.modify_index = r.mod_index;
                self.cluster_mut().upsert_alloc(a);
            }
            None => self.cluster_mut().remove_alloc(&AllocId::from(key)),
        }
        Ok(())
    }

    fn replicate_eval(&self, key: &str, record: Option<&Record>) -> Result<(), StateError> {
        let mut evals = self.evals.write().unwrap_or_else(|p| p.into_inner());
        match record {
            Some(r) => {
                let mut e: Evaluation = decode(Table::Evals, r)?;
                e.create_index = r.create_index;
                e.modify_index = r.mod_index;
                evals.insert(e.id.clone(), e);
            }
            None => {
                evals.remove(&EvalId::from(key));
            }
        }
        Ok(())
    }

    async fn replicate_namespace(
        &self,
        key: &str,
        record: Option<&Record>,
    ) -> Result<(), StateError> {
        let mut namespaces = self.namespaces.write().await;
        match record {
            Some(r) => {
                let ns: Namespace = decode(Table::Namespaces, r)?;
                self.cluster_mut().set_quota(&ns.name, ns.quota.clone());
                namespaces.insert(ns.name.clone(), ns);
            }
            None => {
                namespaces.remove(key);
                self.cluster_mut().set_quota(key, None);
            }
        }
        Ok(())
    }
}
