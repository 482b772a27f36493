//! Feasibility: whether a node can run a task group at all, independent of
//! its free capacity. Drivers must be available; constraints at job, group and
//! task level must hold against the node's attributes, with interpolation of
//! `${node.name}`, `${node.id}`, `${node.datacenter}`, `${node.class}`,
//! `${attr.X}` and `${meta.X}`.
//!
//! `distinct_hosts` and `distinct_property` depend on where other
//! allocations are, so they are not node filters; they are compiled here and
//! enforced by the placer.

use regex::Regex;
use std::cmp::Ordering;
use taba_types::{Constraint, ConstraintOperator, Job, Node, TaskGroupSpec};

/// The value of `template` on `node`, with every `${...}` replaced; `None`
/// when a referenced attribute is not set (or the reference is unknown).
pub fn resolve_interpolation(template: &str, node: &Node) -> Option<String> {
    if !template.contains("${") {
        return Some(template.to_string());
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        out.push_str(lookup(&after[..end], node)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn lookup<'n>(key: &str, node: &'n Node) -> Option<&'n str> {
    match key {
        "node.name" => Some(&node.name),
        "node.id" => Some(node.id.as_str()),
        "node.datacenter" => Some(&node.datacenter),
        "node.class" => node.attributes.get("node.class").map(String::as_str),
        _ => {
            if let Some(a) = key.strip_prefix("attr.") {
                node.attributes.get(a).map(String::as_str)
            } else if let Some(m) = key.strip_prefix("meta.") {
                node.meta.get(m).map(String::as_str)
            } else {
                None
            }
        }
    }
}

/// Whether a node-level constraint holds on `node`. `distinct_hosts` and
/// `distinct_property` are placement-time rules and always hold here.
pub fn constraint_holds(c: &Constraint, node: &Node) -> bool {
    Compiled::new(c.clone()).holds(node)
}

/// One comparison of a version requirement.
#[derive(Clone, Debug)]
struct VersionReq {
    op: &'static str,
    version: Vec<u64>,
}

/// A constraint prepared once per scheduling pass (regex compiled, version
/// requirement parsed).
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    c: Constraint,
    /// The reason recorded when it filters a node.
    pub label: String,
    regex: Option<Regex>,
    version: Option<Vec<VersionReq>>,
}

impl Compiled {
    pub fn new(c: Constraint) -> Self {
        let mut label = format!("constraint {c}");
        let regex = match c.operator {
            ConstraintOperator::Regexp => match Regex::new(&c.value) {
                Ok(r) => Some(r),
                Err(_) => {
                    label.push_str(" (invalid regexp)");
                    None
                }
            },
            _ => None,
        };
        let version = match c.operator {
            ConstraintOperator::Version => {
                let v = parse_requirement(&c.value);
                if v.is_none() {
                    label.push_str(" (invalid version requirement)");
                }
                v
            }
            _ => None,
        };
        Self {
            c,
            label,
            regex,
            version,
        }
    }

    pub fn holds(&self, node: &Node) -> bool {
        use ConstraintOperator as Op;
        let lhs = resolve_interpolation(&self.c.attribute, node);
        match self.c.operator {
            Op::DistinctHosts | Op::DistinctProperty => true,
            Op::IsSet => lhs.is_some(),
            Op::IsNotSet => lhs.is_none(),
            Op::Ne => match (lhs, resolve_interpolation(&self.c.value, node)) {
                (Some(l), Some(r)) => l != r,
                _ => true,
            },
            Op::Eq => match (lhs, resolve_interpolation(&self.c.value, node)) {
                (Some(l), Some(r)) => l == r,
                _ => false,
            },
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let (Some(l), Some(r)) = (lhs, resolve_interpolation(&self.c.value, node)) else {
                    return false;
                };
                let ord = compare_values(&l, &r);
                match self.c.operator {
                    Op::Lt => ord == Ordering::Less,
                    Op::Le => ord != Ordering::Greater,
                    Op::Gt => ord == Ordering::Greater,
                    _ => ord != Ordering::Less,
                }
            }
            Op::Regexp => match (lhs, &self.regex) {
                (Some(l), Some(re)) => re.is_match(&l),
                _ => false,
            },
            Op::Version => match (lhs.as_deref().and_then(parse_version), &self.version) {
                (Some(v), Some(reqs)) => reqs.iter().all(|r| version_matches(&v, r)),
                _ => false,
            },
            Op::SetContains => {
                let (Some(l), Some(r)) = (lhs, resolve_interpolation(&self.c.value, node)) else {
                    return false;
                };
                let have: Vec<&str> = l.split(',').map(str::trim).collect();
                r.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .all(|want| have.contains(&want))
            }
        }
    }
}

/// Numeric comparison when both sides are numbers, else lexical.
fn compare_values(l: &str, r: &str) -> Ordering {
    match (l.trim().parse::<f64>(), r.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
        _ => l.cmp(r),
    }
}

/// The leading dotted numbers of a version: `6.1.0-13-amd64` -> `[6, 1, 0]`.
fn parse_version(s: &str) -> Option<Vec<u64>> {
    let s = s.trim().trim_start_matches('v');
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let parts: Vec<u64> = s[..end]
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (!parts.is_empty()).then_some(parts)
}

/// `">= 6.0, < 7"` -> comparisons; `~> 6.1` is ">= 6.1, < 7".
fn parse_requirement(s: &str) -> Option<Vec<VersionReq>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        let (op, rest) = ["~>", ">=", "<=", "!=", ">", "<", "=="]
            .iter()
            .find_map(|op| p.strip_prefix(op).map(|r| (*op, r)))
            .or_else(|| p.strip_prefix('=').map(|r| ("=", r)))
            .unwrap_or(("=", p));
        let version = parse_version(rest)?;
        if op == "~>" {
            // Pessimistic: the last component may grow.
            let mut upper = version.clone();
            if upper.len() > 1 {
                upper.pop();
            }
            let last = upper.len() - 1;
            upper[last] += 1;
            out.push(VersionReq { op: ">=", version });
            out.push(VersionReq {
                op: "<",
                version: upper,
            });
        } else {
            let op = if op == "==" { "=" } else { op };
            out.push(VersionReq { op, version });
        }
    }
    (!out.is_empty()).then_some(out)
}

fn cmp_versions(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        match x.cmp(&y) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

fn version_matches(v: &[u64], r: &VersionReq) -> bool {
    let o = cmp_versions(v, &r.version);
    match r.op {
        ">=" => o != Ordering::Less,
        "<=" => o != Ordering::Greater,
        ">" => o == Ordering::Greater,
        "<" => o == Ordering::Less,
        "!=" => o != Ordering::Equal,
        _ => o == Ordering::Equal,
    }
}

/// Which allocations a distinct rule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every allocation of the job (a job-level constraint).
    Job,
    /// The allocations of the group (group- or task-level).
    Group,
}

/// `distinct_property`: at most `limit` allocations per value of `attribute`.
#[derive(Clone, Debug)]
pub(crate) struct DistinctProperty {
    pub attribute: String,
    pub limit: u32,
    pub scope: Scope,
}

/// Everything that decides whether a node can take one of a group's
/// allocations, prepared once per group.
#[derive(Clone, Debug)]
pub(crate) struct GroupFilter {
    drivers: Vec<String>,
    checks: Vec<Compiled>,
    /// Some when `distinct_hosts` applies, with its scope.
    pub distinct_hosts: Option<Scope>,
    /// `distinct_property` rules.
    pub distinct_properties: Vec<DistinctProperty>,
    /// Whether some check reads per-node values (caching by node class is off).
    pub has_checks: bool,
}

impl GroupFilter {
    pub fn new(job: &Job, group: &TaskGroupSpec) -> Self {
        let mut drivers: Vec<String> = group.tasks.iter().map(|t| t.driver.clone()).collect();
        drivers.sort();
        drivers.dedup();
        let mut f = Self {
            drivers,
            checks: Vec::new(),
            distinct_hosts: None,
            distinct_properties: Vec::new(),
            has_checks: false,
        };
        let job_level = job.spec.constraints.iter().map(|c| (c, Scope::Job));
        let group_level = group
            .constraints
            .iter()
            .chain(group.tasks.iter().flat_map(|t| t.constraints.iter()))
            .map(|c| (c, Scope::Group));
        for (c, scope) in job_level.chain(group_level) {
            match c.operator {
                ConstraintOperator::DistinctHosts => {
                    // A job-wide rule is the stronger one.
                    if f.distinct_hosts != Some(Scope::Job) {
                        f.distinct_hosts = Some(scope);
                    }
                }
                ConstraintOperator::DistinctProperty => {
                    f.distinct_properties.push(DistinctProperty {
                        attribute: c.attribute.clone(),
                        limit: c.value.trim().parse().ok().filter(|n| *n > 0).unwrap_or(1),
                        scope,
                    })
                }
                _ => f.checks.push(Compiled::new(c.clone())),
            }
        }
        f.has_checks = !f.checks.is_empty();
        f
    }

    /// Why `node` cannot run the group (driver or constraint), if it cannot.
    pub fn reject_reason(&self, node: &Node) -> Option<String> {
        if let Some(d) = self.drivers.iter().find(|d| !node.has_driver(d)) {
            return Some(format!("missing driver {d}"));
        }
        self.checks
            .iter()
            .find(|c| !c.holds(node))
            .map(|c| c.label.clone())
    }

    /// Whether `node` passes drivers and constraints.
    pub fn accepts(&self, node: &Node) -> bool {
        self.drivers.iter().all(|d| node.has_driver(d)) && self.checks.iter().all(|c| c.holds(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::node;

    fn c(attribute: &str, op: &str, value: &str) -> Constraint {
        let json = serde_json::json!({"attribute": attribute, "operator": op, "value": value});
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn interpolation() {
        let mut n = node("n1", 1000, 1024);
        n.attributes
            .insert("kernel.version".into(), "6.1.0-13-amd64".into());
        n.meta.insert("rack".into(), "r1".into());
        assert_eq!(resolve_interpolation("${node.name}", &n).unwrap(), "n1");
        assert_eq!(
            resolve_interpolation("x-${meta.rack}-y", &n).unwrap(),
            "x-r1-y"
        );
        assert_eq!(resolve_interpolation("${attr.nope}", &n), None);
        assert_eq!(
            resolve_interpolation("${node.datacenter}", &n).unwrap(),
            "dc1"
        );
    }

    #[test]
    fn operators() {
        let mut n = node("n1", 1000, 1024);
        n.attributes
            .insert("kernel.version".into(), "6.1.0-13-amd64".into());
        n.attributes.insert("cpu.cores".into(), "16".into());
        n.attributes
            .insert("features".into(), "avx, sse4, kvm".into());
        n.meta.insert("rack".into(), "r1".into());
        let holds = |a, o, v| constraint_holds(&c(a, o, v), &n);
        assert!(holds("${node.name}", "=", "n1"));
        assert!(!holds("${node.name}", "!=", "n1"));
        assert!(holds("${attr.missing}", "!=", "x"));
        assert!(!holds("${attr.missing}", "=", "x"));
        assert!(holds("${attr.cpu.cores}", ">", "8"));
        assert!(!holds("${attr.cpu.cores}", "<", "9"));
        assert!(holds("${attr.cpu.cores}", ">=", "16"));
        assert!(holds("${meta.rack}", "regexp", "^r[0-9]$"));
        assert!(!holds("${meta.rack}", "regexp", "("));
        assert!(holds("${attr.kernel.version}", "version", ">= 6.0, < 7"));
        assert!(!holds("${attr.kernel.version}", "version", ">= 6.2"));
        assert!(holds("${attr.kernel.version}", "version", "~> 6.1"));
        assert!(holds("${attr.features}", "set_contains", "kvm,avx"));
        assert!(!holds("${attr.features}", "set_contains", "kvm,neon"));
        assert!(holds("${meta.rack}", "is_set", ""));
        assert!(holds("${meta.row}", "is_not_set", ""));
    }
}
