//! A store whose writes commit only while a fence record is unchanged: the servers' leader
//! uses it so that a deposed leader's writes never commit.
//!
//! Every transaction of a [`FencedStore`] carries one more check, that the fence record (the
//! leader key) still has the mod index it had when leadership was won. Once the key is gone
//! (the lease expired) or taken by another server, the check fails inside the backend's own
//! atomic transaction and the write fails with [`StoreError::NotLeader`]; nothing of it is
//! applied. Reads pass through.

use crate::error::StoreError;
use crate::record::{Record, Table};
use crate::txn::Txn;
use crate::Store;

/// A [`Store`] that fences every write on one record's mod index.
#[derive(Debug)]
pub struct FencedStore<S> {
    inner: S,
    table: Table,
    key: String,
    index: u64,
}

impl<S: Store> FencedStore<S> {
    /// Fences writes to `inner` on `table/key` keeping mod index `index`.
    pub fn new(inner: S, table: Table, key: impl Into<String>, index: u64) -> Self {
        Self {
            inner,
            table,
            key: key.into(),
            index,
        }
    }

    /// The mod index the fence record must keep.
    pub fn fence_index(&self) -> u64 {
        self.index
    }
}

impl<S: Store> Store for FencedStore<S> {
    fn apply(&self, txn: Txn) -> Result<u64, StoreError> {
        let fenced = txn.check_mod_index(self.table, self.key.clone(), self.index);
        match self.inner.apply(fenced) {
            Err(StoreError::Conflict { table, key, .. })
                if table == self.table && key == self.key =>
            {
                Err(StoreError::NotLeader)
            }
            other => other,
        }
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(table, key)
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.scan(table, prefix)
    }

    fn index(&self) -> Result<u64, StoreError> {
        self.inner.index()
    }
}

/// A [`Store`] that only reads: every write fails with [`StoreError::NotLeader`]. A
/// follower's copy of the state reads through it, so nothing but the leader ever writes.
#[derive(Debug)]
pub struct ReadOnlyStore<S>(pub S);

impl<S: Store> Store for ReadOnlyStore<S> {
    fn apply(&self, _txn: Txn) -> Result<u64, StoreError> {
        Err(StoreError::NotLeader)
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        self.0.get(table, key)
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        self.0.scan(table, prefix)
    }

    fn index(&self) -> Result<u64, StoreError> {
        self.0.index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn writes_commit_only_while_the_fence_holds() {
        let inner = std::sync::Arc::new(MemoryStore::new());
        let won = inner
            .apply(Txn::new().put(Table::Meta, "leader", b"a".to_vec()))
            .unwrap();
        let fenced = FencedStore::new(inner.clone(), Table::Meta, "leader", won);
        fenced
            .apply(Txn::new().put(Table::Jobs, "j", b"1".to_vec()))
            .unwrap();
        // Another server takes the key: the old leader's writes are refused whole.
        inner
            .apply(Txn::new().put(Table::Meta, "leader", b"b".to_vec()))
            .unwrap();
        let err = fenced
            .apply(Txn::new().put(Table::Jobs, "j", b"2".to_vec()))
            .unwrap_err();
        assert!(matches!(err, StoreError::NotLeader), "{err:?}");
        assert_eq!(fenced.get(Table::Jobs, "j").unwrap().unwrap().value, b"1");
        // A conflict on another key is still a conflict.
        inner
            .apply(Txn::new().put(Table::Meta, "leader", b"c".to_vec()))
            .unwrap();
        let now = inner.get(Table::Meta, "leader").unwrap().unwrap().mod_index;
        let fenced = FencedStore::new(inner, Table::Meta, "leader", now);
        let err = fenced
            .apply(
                Txn::new()
                    .check_absent(Table::Jobs, "j")
                    .put(Table::Jobs, "j", b"3".to_vec()),
            )
            .unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
    }
}
