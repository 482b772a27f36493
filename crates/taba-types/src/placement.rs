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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_job_json, parse_job_toml, JobParseError};

    const JOB: &str = r#"
name = "web"
scoring = "spread"
spread = [{ attribute = "${meta.rack}", weight = 50, target = [{ value = "r1", percent = 70 }, { value = "r2", percent = 30 }] }]
affinity = [{ attribute = "${meta.rack}", operator = "=", value = "r1", weight = 50 }]

[[group]]
name = "frontend"
count = 10
spread = [{ attribute = "${node.datacenter}" }]
affinity = [{ job = "cache", group = "redis", weight = 80 }, { job = "web", attribute = "${meta.rack}", weight = -30 }]

  [[group.task]]
  name = "httpd"
  driver = "exec"
  command = ["/bin/httpd"]
  affinity = [{ attribute = "${attr.cpu.cores}", operator = ">=", value = "8", weight = 20 }]
"#;

    /// Field paths of every validation error of a TOML job.
    fn invalid_paths(src: &str) -> Vec<String> {
        match parse_job_toml(src.as_bytes()) {
            Err(JobParseError::Invalid(v)) => v.0.into_iter().map(|e| e.path).collect(),
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn toml_and_json_forms_parse_the_same() {
        let spec = parse_job_toml(JOB.as_bytes()).unwrap();
        assert_eq!(spec.scoring, Scoring::Spread);
        assert_eq!(spec.spread[0].attribute, "${meta.rack}");
        assert_eq!(spec.spread[0].targets[1].value, "r2");
        assert_eq!(spec.spread[0].targets[1].percent, 30);
        let g = &spec.groups[0];
        assert_eq!(g.spread[0].weight, 50, "default weight");
        assert!(g.spread[0].targets.is_empty());
        assert_eq!(g.affinity[0].job.as_deref(), Some("cache"));
        assert_eq!(g.affinity[0].group.as_deref(), Some("redis"));
        assert_eq!(g.affinity[1].attribute, "${meta.rack}");
        assert_eq!(g.affinity[1].weight, -30);
        let t = &g.tasks[0].affinity[0];
        assert_eq!(t.operator, Some(crate::ConstraintOperator::Ge));
        // JSON (the API's form) round-trips to the same spec, and `job
        // inspect` shows every field.
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(parse_job_json(json.as_bytes()).unwrap(), spec);
        for needle in [
            r#""scoring":"spread""#,
            r#""percent":70"#,
            r#""job":"cache""#,
        ] {
            assert!(json.contains(needle), "{needle} in {json}");
        }
        // Defaults stay out of the record.
        let plain = parse_job_toml(
            b"name = \"a\"\n[[group]]\nname = \"g\"\n[[group.task]]\nname = \"t\"\ndriver = \"exec\"\ncommand = [\"x\"]\n",
        )
        .unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("scoring") && !json.contains("spread") && !json.contains("affinity")
        );
        let j = parse_job_json(
            br#"{"name":"a","affinity":[{"attribute":"${meta.rack}","value":"r1"}],
                 "group":[{"name":"g","task":[{"name":"t","driver":"exec","command":["x"]}]}]}"#,
        )
        .unwrap();
        assert_eq!(j.affinity[0].weight, 50);
        assert_eq!(
            j.affinity[0].operator_or_default(),
            crate::ConstraintOperator::Eq
        );
    }

    #[test]
    fn syntax_errors_name_the_field() {
        let bad = JOB.replace("scoring = \"spread\"", "scoring = \"random\"");
        let err = parse_job_toml(bad.as_bytes()).unwrap_err();
        assert_eq!(err.path().as_deref(), Some("scoring"), "{err}");
        let bad = JOB.replace("percent = 30", "percent = 30, share = 2");
        let err = parse_job_toml(bad.as_bytes()).unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("spread[0].target[1].share"),
            "{err}"
        );
        assert!(err.to_string().contains("share"), "{err}");
        let err = parse_job_json(
            br#"{"name":"a","group":[{"name":"g","affinity":[{"job":"c","weight":"lots"}],"task":[]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("group[0].affinity[0].weight"),
            "{err}"
        );
    }

    #[test]
    fn spread_validation() {
        let bad = JOB
            .replace("weight = 50, target", "weight = 0, target")
            .replace("percent = 30", "percent = 31");
        assert_eq!(
            invalid_paths(&bad),
            ["spread[0].weight", "spread[0].target"]
        );
        let bad = JOB.replace(
            "value = \"r2\", percent = 30",
            "value = \"r1\", percent = 101",
        );
        assert_eq!(
            invalid_paths(&bad),
            [
                "spread[0].target[1].value",
                "spread[0].target[1].percent",
                "spread[0].target"
            ]
        );
        let bad = JOB.replace(
            "spread = [{ attribute = \"${node.datacenter}\" }]",
            "spread = [{ attribute = \"\" }, { attribute = \"${rack}\", weight = 101 }]",
        );
        assert_eq!(
            invalid_paths(&bad),
            [
                "group[0].spread[0].attribute",
                "group[0].spread[1].attribute",
                "group[0].spread[1].weight"
            ]
        );
        let bad = JOB.replace(
            "spread = [{ attribute = \"${node.datacenter}\" }]",
            "spread = [{ attribute = \"${node.datacenter}\" }, { attribute = \"${node.datacenter}\" }]",
        );
        assert_eq!(invalid_paths(&bad), ["group[0].spread[1].attribute"]);
    }

    #[test]
    fn affinity_validation() {
        // Both forms in one entry: the node-form fields are named.
        let bad = JOB.replace(
            "{ job = \"cache\", group = \"redis\", weight = 80 }",
            "{ job = \"cache\", operator = \"=\", value = \"r1\", weight = 80 }",
        );
        assert_eq!(
            invalid_paths(&bad),
            [
                "group[0].affinity[0].operator",
                "group[0].affinity[0].value"
            ]
        );
        // Neither form, a group without a job, weight 0 and out of range.
        let bad = JOB.replace(
            "{ job = \"cache\", group = \"redis\", weight = 80 }",
            "{ group = \"redis\", weight = 0 }",
        );
        assert_eq!(
            invalid_paths(&bad),
            [
                "group[0].affinity[0].weight",
                "group[0].affinity[0].group",
                "group[0].affinity[0].attribute"
            ]
        );
        let bad = JOB.replace("value = \"8\", weight = 20", "value = \"8\", weight = -101");
        assert_eq!(invalid_paths(&bad), ["group[0].task[0].affinity[0].weight"]);
        let bad = JOB.replace(
            "operator = \"=\", value = \"r1\", weight = 50",
            "operator = \"distinct_hosts\", weight = 50",
        );
        assert_eq!(invalid_paths(&bad), ["affinity[0].operator"]);
        let bad = JOB.replace(
            "operator = \"=\", value = \"r1\", weight = 50",
            "operator = \"regexp\", weight = 50",
        );
        assert_eq!(invalid_paths(&bad), ["affinity[0].value"]);
        let bad = JOB.replace("job = \"cache\"", "job = \"no such/job\"");
        assert_eq!(invalid_paths(&bad), ["group[0].affinity[0].job"]);
    }

    #[test]
    fn system_jobs_take_no_preferences() {
        let bad = JOB.replace("name = \"web\"\n", "name = \"web\"\ntype = \"system\"\n");
        assert_eq!(
            invalid_paths(&bad),
            [
                "scoring",
                "spread",
                "affinity",
                "group[0].spread",
                "group[0].affinity",
                "group[0].task[0].affinity"
            ]
        );
    }
}

#[cfg(test)]
mod doc_example {
    use crate::parse::parse_job_toml;

    /// The example in docs/jobs.md parses and validates (with the task's
    /// elided fields filled in).
    #[test]
    fn docs_example_is_valid() {
        let doc = include_str!("../../../docs/jobs.md");
        let section = &doc[doc.find("## Spread, affinities").expect("section")..];
        let start = section.find("```toml").expect("example") + "```toml".len();
        let end = start + section[start..].find("```").expect("end of example");
        let example = section[start..end].replace(
            "  # ...\n",
            "  driver = \"exec\"\n  command = [\"/bin/httpd\"]\n",
        );
        let spec = parse_job_toml(example.as_bytes()).unwrap();
        assert_eq!(spec.groups[0].affinity.len(), 2);
        assert_eq!(spec.groups[0].tasks[0].affinity[0].weight, 20);
    }
}
