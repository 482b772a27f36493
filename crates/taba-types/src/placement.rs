//! Soft placement preferences of a job: how nodes are scored (`scoring`),
//! how a group's allocations are spread over the values of a node attribute
//! (`spread`), and weighted affinities to node attributes or to the
//! allocations of other jobs (`affinity`).
//!
//! These are preferences, not filters: constraints, resources and the
//! distinct rules stay hard; among the nodes that pass them, the scheduler
//! (`taba-scheduler`'s scoring module) prefers the best-scored one.
//! Validation lives in [`crate::validate`].

use crate::job::ConstraintOperator;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How the scheduler ranks the nodes that can take an allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// Prefer the fullest node that fits (few nodes used).
    #[default]
    Binpack,
    /// Prefer the least-used node (load spread over many nodes).
    Spread,
}

impl Scoring {
    /// Whether this is the default (`binpack`).
    pub fn is_binpack(&self) -> bool {
        *self == Scoring::Binpack
    }
}

impl fmt::Display for Scoring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scoring::Binpack => "binpack",
            Scoring::Spread => "spread",
        })
    }
}

/// Spread a group's allocations over the values of a node attribute,
/// evenly or by target percentages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// The attribute whose values the allocations are spread over, e.g.
    /// `${meta.rack}` or `${node.datacenter}`.
    pub attribute: String,
    /// Importance relative to the group's other spreads, 1..=100.
    #[serde(default = "default_spread_weight")]
    pub weight: u32,
    /// Target shares per value; none means an even spread over every value
    /// the feasible nodes have.
    #[serde(default, rename = "target", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<SpreadTarget>,
}

/// The default weight of a spread.
pub fn default_spread_weight() -> u32 {
    50
}

/// The share of a group's allocations wanted on nodes with one value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpreadTarget {
    /// The attribute's value, e.g. `r1`.
    pub value: String,
    /// Percentage of the group's allocations, 0..=100.
    pub percent: u32,
}

/// A soft, weighted preference. Exactly one form per entry:
///
/// - node form: `attribute`, `operator` (default `=`), `value`: prefers
///   (positive weight) or avoids (negative) nodes where the comparison holds;
/// - allocation form: `job`, optional `group`, optional `attribute` (the
///   topology key; default the node itself): prefers or avoids nodes whose
///   topology value hosts live allocations of that job (and group) in the
///   same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    /// Node form: the left-hand side (`${meta.rack}`); allocation form: the
    /// topology key (empty: the node itself).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attribute: String,
    /// Node form: the comparison (`=` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<ConstraintOperator>,
    /// Node form: the right-hand side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Allocation form: the job whose allocations attract or repel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Allocation form: only that job's allocations of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// -100..=100, not 0; negative is an anti-affinity.
    #[serde(default = "default_affinity_weight")]
    pub weight: i32,
}

/// The default weight of an affinity.
pub fn default_affinity_weight() -> i32 {
    50
}

impl Affinity {
    /// Whether this is the allocation form (it names a job).
    pub fn is_alloc_form(&self) -> bool {
        self.job.is_some()
    }
    /// The operator in force (node form): `=` unless given.
    pub fn operator_or_default(&self) -> ConstraintOperator {
        self.operator.unwrap_or(ConstraintOperator::Eq)
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.job {
            Some(job) => {
                write!(f, "job {job}")?;
                if let Some(g) = &self.group {
                    write!(f, " group {g}")?;
                }
                if !self.attribute.is_empty() {
                    write!(f, " by {}", self.attribute)?;
                }
            }
            None => write!(
                f,
                "{} {} {}",
                self.attribute,
                self.operator_or_default(),
                self.value.as_deref().unwrap_or("")
            )?,
        }
        write!(f, " (weight {})", self.weight)
    }
}
