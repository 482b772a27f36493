//! taba's state store.
//!
//! The control plane keeps all its state (jobs, job versions, allocations, nodes, evaluations,
//! namespaces, cluster metadata) in a [`Store`]: a fixed set of [`Table`]s of keyed [`Record`]s, a global
//! index that every committed transaction advances, atomic transactions ([`Txn`]) guarded by
//! compare [`Check`]s, and prefix scans. The shape is etcd's, so the etcd backend fits
//! behind the same trait.
//!
//! Backends:
//! - [`RedbStore`]: the default, an embedded crash-safe database (redb) with group commit, so
//!   many concurrent durable writes share one fsync.
//! - [`EtcdStore`]: an etcd cluster shared by several servers (high availability); its
//!   revisions are the store's indexes, and it offers the lease and watch primitives the
//!   servers' leader election uses.
//! - [`MemoryStore`]: in memory, for the scheduler simulator and unit tests.
//!
//! All pass the [`conformance`] suite. Record values are versioned JSON ([`encode`],
//! [`decode`]). This crate knows nothing about jobs or scheduling.

mod codec;
pub mod conformance;
mod error;
mod etcd_store;
#[cfg(feature = "testing")]
pub mod etcd_testing;
mod fenced;
mod memory;
mod record;
mod redb_store;
mod txn;

pub use codec::{decode, encode, try_encode, FORMAT_VERSION};
pub use error::{ConflictReason, StoreError};
pub use etcd_store::{Change, ChangeBatch, Created, EtcdConfig, EtcdStore, KeyChange};
pub use fenced::{FencedStore, ReadOnlyStore};
pub use memory::MemoryStore;
pub use record::{Record, Table};
pub use redb_store::{RedbStore, DEFAULT_CACHE_BYTES};
pub use txn::{Check, Op, Txn, MAX_KEY_BYTES, MAX_TXN_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};

/// A transactional store of tables of keyed records with a global index.
///
/// All methods are synchronous and may block (on disk or network); async callers run them on
/// blocking threads. See [`Txn`]'s module docs for the exact transaction semantics.
pub trait Store: Send + Sync + 'static {
    /// Atomically checks and applies `txn`; durable (fsync'd) before it returns. Returns the
    /// index of the commit, which is also the new `mod_index` of every record it put.
    ///
    /// Fails with [`StoreError::Conflict`] if a check does not hold (nothing applied), and with
    /// [`StoreError::EmptyTxn`], [`StoreError::InvalidKey`] or [`StoreError::TooLarge`] for
    /// transactions no backend accepts.
    fn apply(&self, txn: Txn) -> Result<u64, StoreError>;

    /// The record at `key` in `table`, if any.
    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError>;

    /// Every record of `table` whose key starts with `prefix` (all of them for `""`), sorted by
    /// key (byte order).
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError>;

    /// The index of the last committed transaction (0 for a new store).
    fn index(&self) -> Result<u64, StoreError>;
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn apply(&self, txn: Txn) -> Result<u64, StoreError> {
        (**self).apply(txn)
    }
    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        (**self).get(table, key)
    }
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        (**self).scan(table, prefix)
    }
    fn index(&self) -> Result<u64, StoreError> {
        (**self).index()
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn apply(&self, txn: Txn) -> Result<u64, StoreError> {
        (**self).apply(txn)
    }
    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        (**self).get(table, key)
    }
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        (**self).scan(table, prefix)
    }
    fn index(&self) -> Result<u64, StoreError> {
        (**self).index()
    }
}
