//! What the store holds: a fixed set of tables of keyed records, each stamped with the global
//! index of the transaction that created it and of the one that last modified it.

use std::fmt;

/// A table of the store. The set is fixed: the store knows their names, not what is in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Current job records.
    Jobs,
    /// Every registered version of every job.
    JobVersions,
    /// Allocations.
    Allocs,
    /// Nodes.
    Nodes,
    /// Evaluations.
    Evals,
    /// Small cluster-wide records (settings, ids, leader bookkeeping).
    Meta,
    /// Namespaces (description and quota), keyed by name.
    Namespaces,
    /// ACL policies, keyed by name.
    AclPolicies,
    /// ACL tokens (the secret's hash, never the secret), keyed by accessor id.
    AclTokens,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 9] = [
        Table::Jobs,
        Table::JobVersions,
        Table::Allocs,
        Table::Nodes,
        Table::Evals,
        Table::Meta,
        Table::Namespaces,
        Table::AclPolicies,
        Table::AclTokens,
    ];

    /// The table's stable name, used on disk and in keys of remote backends.
    pub fn name(&self) -> &'static str {
        match self {
            Table::Jobs => "jobs",
            Table::JobVersions => "job_versions",
            Table::Allocs => "allocs",
            Table::Nodes => "nodes",
            Table::Evals => "evals",
            Table::Meta => "meta",
            Table::Namespaces => "namespaces",
            Table::AclPolicies => "acl_policies",
            Table::AclTokens => "acl_tokens",
        }
    }

    /// The table with the given [`Table::name`], if any.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Position of the table in [`Table::ALL`].
    pub(crate) fn ordinal(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key, unique within its table.
    pub key: String,
    /// The value as stored (usually a versioned JSON envelope, see [`crate::encode`]).
    pub value: Vec<u8>,
    /// Index of the transaction that created the record.
    pub create_index: u64,
    /// Index of the transaction that last put the record.
    pub mod_index: u64,
}

impl Record {
    /// Decodes the value as a versioned JSON envelope (see [`crate::decode`]).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::StoreError> {
        crate::decode(&self.value)
    }
}
