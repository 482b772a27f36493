//! Transactions: compare checks and write operations applied atomically, and the rules every
//! backend enforces on them (limits, key validity, how checks are evaluated).
//!
//! Semantics, the same in every backend (and shaped like an etcd `Txn`):
//! - All checks are evaluated against the state before the transaction; if any fails, nothing
//!   is applied and the first failing check is reported as [`StoreError::Conflict`].
//! - Operations are applied in order; a later operation on the same key wins.
//! - A committed transaction gets the next global index. Every `Put` sets the record's
//!   `mod_index` to it, and its `create_index` too when the record did not exist.
//!   Deleting an absent key is allowed and changes nothing but the index.
//! - A transaction with no operations is rejected with [`StoreError::EmptyTxn`] (it would
//!   otherwise consume an index for nothing); checks alone are not a read API.

use serde::Serialize;

use crate::error::{ConflictReason, StoreError};
use crate::record::Table;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Largest transaction accepted: the sum of its keys and values, in bytes.
pub const MAX_TXN_BYTES: usize = 64 * 1024 * 1024;
/// Most operations (plus checks) in one transaction.
pub const MAX_TXN_OPS: usize = 100_000;

/// A write operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a record.
    Put {
        /// Table to write.
        table: Table,
        /// Key to write.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove a record if it exists.
    Delete {
        /// Table to delete from.
        table: Table,
        /// Key to delete.
        key: String,
    },
}

impl Op {
    /// The table and key the operation writes.
    pub fn target(&self) -> (Table, &str) {
        match self {
            Op::Put { table, key, .. } | Op::Delete { table, key } => (*table, key),
        }
    }
}

/// A compare check evaluated before any operation of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key must not exist.
    Absent {
        /// Table to look in.
        table: Table,
        /// Key that must be absent.
        key: String,
    },
    /// The key must exist with exactly this mod index.
    ModIndex {
        /// Table to look in.
        table: Table,
        /// Key that must exist.
        key: String,
        /// The mod index it must have.
        index: u64,
    },
}

impl Check {
    /// The table and key the check reads.
    pub fn target(&self) -> (Table, &str) {
        match self {
            Check::Absent { table, key } | Check::ModIndex { table, key, .. } => (*table, key),
        }
    }

    /// Evaluates the check given the current mod index of its key (`None` when absent).
    pub fn evaluate(&self, current: Option<u64>) -> Result<(), StoreError> {
        let reason = match (self, current) {
            (Check::Absent { .. }, None) => return Ok(()),
            (Check::Absent { .. }, Some(mod_index)) => ConflictReason::Exists { mod_index },
            (Check::ModIndex { index, .. }, None) => ConflictReason::Missing { expected: *index },
            (Check::ModIndex { index, .. }, Some(actual)) if actual == *index => return Ok(()),
            (Check::ModIndex { index, .. }, Some(actual)) => ConflictReason::ModIndex {
                expected: *index,
                actual,
            },
        };
        let (table, key) = self.target();
        Err(StoreError::Conflict {
            table,
            key: key.to_owned(),
            reason,
        })
    }
}

/// A transaction: checks, then operations, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Checks that must all hold against the state before the transaction.
    pub checks: Vec<Check>,
    /// Operations applied in order when every check holds.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction, to fill with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of raw bytes.
    pub fn put(mut self, table: Table, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a put of `value` encoded with [`crate::encode`] (versioned JSON).
    pub fn put_encoded<T: Serialize>(
        self,
        table: Table,
        key: impl Into<String>,
        value: &T,
    ) -> Self {
        self.put(table, key, crate::encode(value))
    }

    /// Adds a delete.
    pub fn delete(mut self, table: Table, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
        });
        self
    }

    /// Adds a check that `key` is absent.
    pub fn check_absent(mut self, table: Table, key: impl Into<String>) -> Self {
        self.checks.push(Check::Absent {
            table,
            key: key.into(),
        });
        self
    }

    /// Adds a check that `key` exists with mod index `index`.
    pub fn check_mod_index(mut self, table: Table, key: impl Into<String>, index: u64) -> Self {
        self.checks.push(Check::ModIndex {
            table,
            key: key.into(),
            index,
        });
        self
    }

    /// True when the transaction has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate size in bytes: the sum of keys and values.
    pub fn size_bytes(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len(),
                Op::Delete { key, .. } => key.len(),
            })
            .sum();
        let checks: usize = self.checks.iter().map(|c| c.target().1.len()).sum();
        ops + checks
    }

    /// Checks the transaction against the limits and key rules. Every backend calls this
    /// before touching its state, so an invalid transaction never consumes an index.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.ops.is_empty() {
            return Err(StoreError::EmptyTxn);
        }
        let count = self.ops.len() + self.checks.len();
        if count > MAX_TXN_OPS {
            return Err(StoreError::TooLarge {
                what: "transaction operation count".to_owned(),
                size: count,
                limit: MAX_TXN_OPS,
            });
        }
        let targets = self
            .checks
            .iter()
            .map(Check::target)
            .chain(self.ops.iter().map(Op::target));
        for (table, key) in targets {
            validate_key(table, key)?;
        }
        for op in &self.ops {
            if let Op::Put { table, key, value } = op {
                if value.len() > MAX_VALUE_BYTES {
                    return Err(StoreError::TooLarge {
                        what: format!("value of {table}/{key}"),
                        size: value.len(),
                        limit: MAX_VALUE_BYTES,
                    });
                }
            }
        }
        let size = self.size_bytes();
        if size > MAX_TXN_BYTES {
            return Err(StoreError::TooLarge {
                what: "transaction".to_owned(),
                size,
                limit: MAX_TXN_BYTES,
            });
        }
        Ok(())
    }
}

fn validate_key(table: Table, key: &str) -> Result<(), StoreError> {
    let reason = if key.is_empty() {
        "key is empty"
    } else if key.len() > MAX_KEY_BYTES {
        "key is longer than 1024 bytes"
    } else {
        return Ok(());
    };
    let shown: String = key.chars().take(64).collect();
    Err(StoreError::InvalidKey {
        table,
        key: shown,
        reason,
    })
}
