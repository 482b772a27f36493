//! The one error type every store operation returns, whatever the backend.
//!
//! Callers match on the variant to decide what to do: a [`StoreError::Conflict`] is an expected
//! outcome of optimistic concurrency (re-read and retry, or tell the user), the invalid-input
//! variants are programming errors in the caller, and the rest mean the store itself is unwell.

use std::fmt;

use crate::record::Table;

/// Why a [`crate::Check`] did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// The check wanted the key absent, but a record exists.
    Exists {
        /// The mod index of the existing record.
        mod_index: u64,
    },
    /// The check wanted a record at a given mod index, but there is none.
    Missing {
        /// The mod index the check expected.
        expected: u64,
    },
    /// The record exists but was modified at another index.
    ModIndex {
        /// The mod index the check expected.
        expected: u64,
        /// The record's actual mod index.
        actual: u64,
    },
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictReason::Exists { mod_index } => {
                write!(f, "record exists (mod index {mod_index}), expected none")
            }
            ConflictReason::Missing { expected } => {
                write!(f, "record is absent, expected mod index {expected}")
            }
            ConflictReason::ModIndex { expected, actual } => {
                write!(f, "record has mod index {actual}, expected {expected}")
            }
        }
    }
}

/// An error from a [`crate::Store`] or from record encoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A check of the transaction did not hold; nothing of the transaction was applied.
    #[error("conflict on {table}/{key}: {reason}")]
    Conflict {
        /// Table of the failed check.
        table: Table,
        /// Key of the failed check.
        key: String,
        /// What was found instead of what the check expected.
        reason: ConflictReason,
    },
    /// The transaction has no operations (an empty transaction is rejected, not a no-op).
    #[error("transaction has no operations")]
    EmptyTxn,
    /// A key is not acceptable (empty, too long).
    #[error("invalid key {key:?} in table {table}: {reason}")]
    InvalidKey {
        /// Table the key was meant for.
        table: Table,
        /// The offending key (truncated when very long).
        key: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A value, or the transaction as a whole, exceeds a size limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// What is too large, e.g. `value of jobs/web`.
        what: String,
        /// Its size in bytes (or operations, for the operation count).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Data is in a format version this build does not know.
    #[error("{what} format version {version} is not supported (this build reads up to {supported}); upgrade taba")]
    UnsupportedVersion {
        /// What carries the version: `record` or `store layout`.
        what: &'static str,
        /// The version found.
        version: u64,
        /// The newest version this build reads.
        supported: u64,
    },
    /// Record bytes are not a valid versioned JSON envelope or do not match the expected type.
    #[error("cannot decode record")]
    Decode(#[source] serde_json::Error),
    /// A value could not be encoded as JSON.
    #[error("cannot encode record")]
    Encode(#[source] serde_json::Error),
    /// Stored data is damaged or not in a layout this build understands.
    #[error("store is corrupt: {what}: {reason}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O operation outside the database engine failed.
    #[error("{what} failed")]
    Io {
        /// The operation, e.g. `create data directory /var/lib/taba`.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error("{what} failed")]
    Backend {
        /// The operation, e.g. `open database /var/lib/taba/state.redb`.
        what: String,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A [`crate::FencedStore`]'s fence record changed: this server lost its leadership and
    /// its write was refused whole.
    #[error("this server is no longer the leader; its write was not committed")]
    NotLeader,
    /// The store has shut down (its committer stopped) and accepts no more writes.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// True for [`StoreError::Conflict`]: the transaction lost an optimistic-concurrency race.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    pub(crate) fn backend(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            what: what.into(),
            source: Box::new(source),
        }
    }
}
