//! The in-memory backend: the whole state in ordered maps behind one lock.
//!
//! Nothing survives the process, so "durable" means "visible to every later read". Used by the
//! scheduler simulator and by unit tests that need a store but not a disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::StoreError;
use crate::record::{Record, Table};
use crate::txn::{Op, Txn};
use crate::Store;

#[derive(Debug, Clone)]
struct Stored {
    value: Vec<u8>,
    create_index: u64,
    mod_index: u64,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    tables: [BTreeMap<String, Stored>; Table::ALL.len()],
}

/// A [`Store`] kept in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
}

impl MemoryStore {
    /// An empty store at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave a half-applied transaction (apply mutates
    // only after every check passed, and map inserts do not panic), so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn to_record(key: &str, stored: &Stored) -> Record {
    Record {
        key: key.to_owned(),
        value: stored.value.clone(),
        create_index: stored.create_index,
        mod_index: stored.mod_index,
    }
}

impl Store for MemoryStore {
    fn apply(&self, txn: Txn) -> Result<u64, StoreError> {
        txn.validate()?;
        let mut state = self.write();
        for check in &txn.checks {
            let (table, key) = check.target();
            check.evaluate(state.tables[table.ordinal()].get(key).map(|s| s.mod_index))?;
        }
        let index = state.index + 1;
        for op in txn.ops {
            match op {
                Op::Put { table, key, value } => {
                    let map = &mut state.tables[table.ordinal()];
                    let create_index = map.get(&key).map_or(index, |s| s.create_index);
                    map.insert(
                        key,
                        Stored {
                            value,
                            create_index,
                            mod_index: index,
                        },
                    );
                }
                Op::Delete { table, key } => {
                    state.tables[table.ordinal()].remove(&key);
                }
            }
        }
        state.index = index;
        Ok(index)
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        let state = self.read();
        Ok(state.tables[table.ordinal()]
            .get(key)
            .map(|s| to_record(key, s)))
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let state = self.read();
        Ok(state.tables[table.ordinal()]
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| to_record(k, s))
            .collect())
    }

    fn index(&self) -> Result<u64, StoreError> {
        Ok(self.read().index)
    }
}
