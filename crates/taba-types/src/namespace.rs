//! Namespaces: named sets of jobs with an optional quota on what their
//! allocations may hold together (cpu, memory, number of allocations).
//!
//! The namespace `default` always exists, implicitly, and has no quota
//! unless one is set. Other namespaces are created with
//! `PUT /v1/namespaces/{name}` before jobs are registered in them. The
//! scheduler keeps every namespace's usage and refuses placements past its
//! quota; batch work waiting for capacity is released in DRF order between
//! namespaces (see `taba_scheduler::drf`).

use crate::units::ByteSize;
use crate::validate::{check_name, ValidationErrors};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The namespace every job is in unless it names another; it always exists.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest namespace description.
pub const MAX_DESCRIPTION: usize = 1024;
/// Largest CPU quota, MHz (100,000 of the largest nodes taba accepts).
pub const MAX_QUOTA_CPU_MHZ: u64 = 100_000 * crate::validate::MAX_CPU_MHZ;
/// Largest memory quota (4 EiB).
pub const MAX_QUOTA_MEMORY: ByteSize = ByteSize(1 << 62);
/// Largest allocations quota.
pub const MAX_QUOTA_ALLOCATIONS: u32 = 100_000_000;

/// A namespace as an operator writes it (`PUT /v1/namespaces/{name}`) and
/// as the control plane stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Name; in a request body it may be left out (the path names it).
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Limits on what the namespace's allocations hold together; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

impl Namespace {
    /// The implicit `default` namespace: no description, no quota.
    pub fn default_namespace() -> Self {
        Self {
            name: DEFAULT_NAMESPACE.into(),
            description: String::new(),
            quota: None,
        }
    }
}

/// Limits of a namespace. An unset dimension is unlimited; 0 allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// CPU in MHz held by the namespace's allocations together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    /// Memory held by the namespace's allocations together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Number of allocations holding resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u32>,
}

impl Quota {
    /// No dimension is limited.
    pub fn is_unlimited(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.allocations.is_none()
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.cpu {
            parts.push(format!("cpu {c} MHz"));
        }
        if let Some(m) = self.memory {
            parts.push(format!("memory {m}"));
        }
        if let Some(a) = self.allocations {
            parts.push(format!("allocations {a}"));
        }
        if parts.is_empty() {
            f.write_str("unlimited")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// What a namespace's allocations hold now: those whose client status is
/// not terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NamespaceUsage {
    /// CPU in MHz.
    pub cpu: u64,
    /// Memory.
    pub memory: ByteSize,
    /// Allocations holding resources.
    pub allocations: u32,
}

/// Validate a namespace: its name, description and quota, each error with
/// its field path (`quota.memory`).
pub fn validate_namespace(ns: &Namespace) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    check_name(&mut errs, "name", &ns.name);
    if ns.description.len() > MAX_DESCRIPTION {
        errs.push(
            "description",
            format!("longer than {MAX_DESCRIPTION} bytes"),
        );
    }
    if ns
        .description
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        errs.push("description", "must not contain control characters");
    }
    if let Some(q) = &ns.quota {
        if q.cpu.is_some_and(|c| c > MAX_QUOTA_CPU_MHZ) {
            errs.push(
                "quota.cpu",
                format!("must be at most {MAX_QUOTA_CPU_MHZ} MHz"),
            );
        }
        if q.memory.is_some_and(|m| m > MAX_QUOTA_MEMORY) {
            errs.push(
                "quota.memory",
                format!("must be at most {MAX_QUOTA_MEMORY}"),
            );
        }
        if q.allocations.is_some_and(|a| a > MAX_QUOTA_ALLOCATIONS) {
            errs.push(
                "quota.allocations",
                format!("must be at most {MAX_QUOTA_ALLOCATIONS}"),
            );
        }
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(json: &str) -> Namespace {
        serde_json::from_str(json).unwrap()
    }

    fn paths(n: &Namespace) -> Vec<String> {
        validate_namespace(n)
            .err()
            .map(|e| e.0.into_iter().map(|f| f.path).collect())
            .unwrap_or_default()
    }

    #[test]
    fn parses_sizes_and_rejects_unknown_fields() {
        let n = ns(r#"{"name":"team-a","quota":{"cpu":4000,"memory":"4GiB","allocations":10}}"#);
        let q = n.quota.clone().unwrap();
        assert_eq!(q.memory, Some(ByteSize(4 << 30)));
        assert_eq!(q.to_string(), "cpu 4000 MHz, memory 4GiB, allocations 10");
        assert!(paths(&n).is_empty());
        assert!(serde_json::from_str::<Namespace>(r#"{"quota":{"gpus":1}}"#).is_err());
        assert!(serde_json::from_str::<Namespace>(r#"{"quota":{"cpu":-1}}"#).is_err());
        // Round trip of the stored form.
        let back: Namespace = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn absurd_values_and_bad_names_name_their_field() {
        let n = Namespace {
            name: "a b".into(),
            description: "x".repeat(MAX_DESCRIPTION + 1),
            quota: Some(Quota {
                cpu: Some(u64::MAX),
                memory: Some(ByteSize(u64::MAX)),
                allocations: Some(u32::MAX),
            }),
        };
        assert_eq!(
            paths(&n),
            vec![
                "name",
                "description",
                "quota.cpu",
                "quota.memory",
                "quota.allocations"
            ]
        );
        assert_eq!(paths(&Namespace::default()), vec!["name"]);
        assert!(paths(&Namespace::default_namespace()).is_empty());
        // Zero is allowed: nothing may be placed.
        let zero = ns(r#"{"name":"frozen","quota":{"allocations":0}}"#);
        assert!(paths(&zero).is_empty());
    }
}
