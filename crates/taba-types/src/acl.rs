//! Access control: policies (what a token may do, written in TOML and
//! applied by name) and tokens (who calls). Pure data and validation; the
//! server enforces them (`taba_server::acl`).
//!
//! A policy file:
//!
//! ```toml
//! description = "team A developers"
//! node = "read"            # read | write: nodes (list, status; eligibility, drain)
//! operator = "read"        # read | write: namespaces, images, cluster settings
//!
//! [namespace.team-a]       # a namespace by name, or "*" for every namespace
//! capabilities = ["read", "write", "exec"]
//! ```
//!
//! Namespace capabilities: `read` (jobs, allocations, evaluations, logs),
//! `write` (run and stop jobs and allocations), `exec` (`alloc exec` and
//! `alloc console`), `host` (name a `user` for a task of driver `exec`, which
//! runs on the host). Each is granted on its own. `write` access to `node`
//! or `operator` includes `read`. A token's rights are the union of its
//! policies; a management token may do everything, ACL management included.

use crate::units::DurationSpec;
use crate::validate::{check_name, ValidationErrors};
use crate::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A right within a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// See jobs, allocations, evaluations, logs.
    Read,
    /// Run and stop jobs and allocations.
    Write,
    /// Run commands in allocations (`alloc exec`, `alloc console`).
    Exec,
    /// Name a `user` for tasks of driver `exec` (host processes).
    Host,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Exec => "exec",
            Self::Host => "host",
        })
    }
}

/// Access to a cluster-wide resource (`node`, `operator`); `write` includes `read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Look.
    Read,
    /// Look and change.
    Write,
}

impl Access {
    /// Whether holding `self` grants `wanted`.
    pub fn grants(self, wanted: Access) -> bool {
        self >= wanted
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// The rights a policy grants in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NamespaceRule {
    /// Capabilities granted.
    pub capabilities: BTreeSet<Capability>,
}

/// The namespace key matching every namespace.
pub const ANY_NAMESPACE: &str = "*";

/// A policy as an operator writes it (TOML file, or JSON over the API) and
/// as the control plane stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AclPolicy {
    /// Name; in a request body it may be left out (the path names it).
    #[serde(default)]
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Rights per namespace (`*` for every namespace).
    #[serde(
        default,
        rename = "namespace",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub namespaces: BTreeMap<String, NamespaceRule>,
    /// Access to nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Access>,
    /// Access to namespaces, images and cluster settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Access>,
}

/// Longest policy or token description/name.
pub const MAX_ACL_TEXT: usize = 1024;
/// Most policies one token names.
pub const MAX_TOKEN_POLICIES: usize = 64;
/// Shortest token lifetime.
pub const MIN_TOKEN_TTL: DurationSpec = DurationSpec::secs(1);

/// Validate a policy; every error names its field (`namespace.team-a.capabilities`).
pub fn validate_policy(p: &AclPolicy) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    check_name(&mut errs, "name", &p.name);
    check_text(&mut errs, "description", &p.description);
    for (ns, rule) in &p.namespaces {
        if ns != ANY_NAMESPACE {
            check_name(&mut errs, &format!("namespace.{ns}"), ns);
        }
        if rule.capabilities.is_empty() {
            errs.push(
                format!("namespace.{ns}.capabilities"),
                "must name at least one of read, write, exec, host",
            );
        }
    }
    if p.namespaces.is_empty() && p.node.is_none() && p.operator.is_none() {
        errs.push(
            "namespace",
            "the policy grants nothing; add a [namespace.NAME] table, `node` or `operator`",
        );
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn check_text(errs: &mut ValidationErrors, path: &str, s: &str) {
    if s.len() > MAX_ACL_TEXT {
        errs.push(path, format!("longer than {MAX_ACL_TEXT} bytes"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        errs.push(path, "must not contain control characters");
    }
}

/// Why a policy file was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyParseError {
    /// Not UTF-8 or not TOML of the right shape; line and column when known.
    #[error("{}", crate::parse::syntax_message(.line, .column, .path, .message))]
    Syntax {
        /// 1-based line.
        line: Option<usize>,
        /// 1-based column.
        column: Option<usize>,
        /// Field path.
        path: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Parsed, but invalid.
    #[error("{0}")]
    Invalid(ValidationErrors),
}

impl PolicyParseError {
    /// The field to blame, if any.
    pub fn path(&self) -> Option<String> {
        match self {
            Self::Syntax { path, .. } => path.clone(),
            Self::Invalid(v) => v.0.first().map(|e| e.path.clone()),
        }
    }
}

/// Largest policy file.
pub const MAX_POLICY_BYTES: usize = 64 << 10;

/// Parse and validate a TOML policy file for the policy `name`.
pub fn parse_policy_toml(name: &str, bytes: &[u8]) -> Result<AclPolicy, PolicyParseError> {
    let syntax = |message: String| PolicyParseError::Syntax {
        line: None,
        column: None,
        path: None,
        message,
    };
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(syntax(format!(
            "policy is {} bytes; the limit is {MAX_POLICY_BYTES}",
            bytes.len()
        )));
    }
    let src = std::str::from_utf8(bytes)
        .map_err(|e| syntax(format!("not valid UTF-8 at byte {}", e.valid_up_to())))?;
    let de = toml::Deserializer::new(src);
    let mut policy: AclPolicy = serde_path_to_error::deserialize(de).map_err(|e| {
        let p = e.path().to_string();
        let path = (p != "." && !p.is_empty()).then_some(p);
        let inner = e.into_inner();
        let (line, column) = match inner.span() {
            Some(span) => {
                let (l, c) = crate::parse::line_col(src, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PolicyParseError::Syntax {
            line,
            column,
            path,
            message: inner.message().trim().to_string(),
        }
    })?;
    if policy.name.is_empty() {
        policy.name = name.to_string();
    } else if policy.name != name {
        let mut errs = ValidationErrors::default();
        errs.push(
            "name",
            format!(
                "{:?} differs from the policy being applied ({name:?})",
                policy.name
            ),
        );
        return Err(PolicyParseError::Invalid(errs));
    }
    validate_policy(&policy).map_err(PolicyParseError::Invalid)?;
    Ok(policy)
}

/// What a token is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Rights from its policies.
    #[default]
    Client,
    /// Every right, ACL management included.
    Management,
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Management => "management",
        })
    }
}

/// A token as the control plane stores it: the secret itself is never
/// stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AclToken {
    /// Public id (shown in lists, audit events; used to revoke).
    pub accessor_id: String,
    /// Free text.
    #[serde(default)]
    pub name: String,
    /// Client or management.
    #[serde(rename = "type")]
    pub token_type: TokenType,
    /// Policies applied by name.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Creation time.
    pub create_time: UnixMillis,
    /// When it stops being accepted; never when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<UnixMillis>,
}

impl AclToken {
    /// Expired at `now`.
    pub fn expired(&self, now: UnixMillis) -> bool {
        self.expire_time.is_some_and(|t| now >= t)
    }
}

/// Validate a token request's fields (name, policies, ttl).
pub fn validate_token_request(
    name: &str,
    policies: &[String],
    management: bool,
    ttl: Option<DurationSpec>,
) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    check_text(&mut errs, "name", name);
    if management && !policies.is_empty() {
        errs.push(
            "policies",
            "a management token has every right; give no policies",
        );
    }
    if !management && policies.is_empty() {
        errs.push("policies", "name at least one policy");
    }
    if policies.len() > MAX_TOKEN_POLICIES {
        errs.push("policies", format!("at most {MAX_TOKEN_POLICIES} policies"));
    }
    for (i, p) in policies.iter().enumerate() {
        check_name(&mut errs, &format!("policies[{i}]"), p);
    }
    if let Some(t) = ttl {
        if t < MIN_TOKEN_TTL {
            errs.push("ttl", format!("must be at least {MIN_TOKEN_TTL}"));
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

    const TEAM_A: &str = r#"
description = "team A"
node = "read"
[namespace.team-a]
capabilities = ["read", "write", "exec"]
[namespace."*"]
capabilities = ["read"]
"#;

    #[test]
    fn policy_file_parses() {
        let p = parse_policy_toml("team-a", TEAM_A.as_bytes()).unwrap();
        assert_eq!(p.name, "team-a");
        assert_eq!(p.node, Some(Access::Read));
        assert_eq!(p.operator, None);
        let caps = &p.namespaces["team-a"].capabilities;
        assert!(caps.contains(&Capability::Exec) && !caps.contains(&Capability::Host));
        assert!(p.namespaces.contains_key("*"));
    }

    #[test]
    fn unknown_capability_names_the_field_and_line() {
        let bad = TEAM_A.replace("\"exec\"]", "\"admin\"]");
        let err = parse_policy_toml("team-a", bad.as_bytes()).unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("namespace.team-a.capabilities[2]")
        );
        let msg = err.to_string();
        assert!(msg.contains("line 5") && msg.contains("admin"), "{msg}");
    }

    #[test]
    fn typos_and_empty_policies_are_refused() {
        let err =
            parse_policy_toml("x", b"[namespaces.a]\ncapabilities = [\"read\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `namespaces`"),
            "{err}"
        );
        let err = parse_policy_toml("x", b"description = \"nothing\"\n").unwrap_err();
        assert_eq!(err.path().as_deref(), Some("namespace"));
        let err = parse_policy_toml("x", b"[namespace.a]\ncapabilities = []\n").unwrap_err();
        assert_eq!(err.path().as_deref(), Some("namespace.a.capabilities"));
        let err = parse_policy_toml("x", b"node = \"admin\"\n").unwrap_err();
        assert_eq!(err.path().as_deref(), Some("node"));
        let err = parse_policy_toml("bad name", b"node = \"read\"\n").unwrap_err();
        assert_eq!(err.path().as_deref(), Some("name"));
    }

    #[test]
    fn token_requests_are_checked() {
        assert!(validate_token_request("ci", &["a".into()], false, None).is_ok());
        let e = validate_token_request("ci", &[], false, None).unwrap_err();
        assert_eq!(e.0[0].path, "policies");
        let e = validate_token_request("ci", &["a".into()], true, None).unwrap_err();
        assert_eq!(e.0[0].path, "policies");
        let e =
            validate_token_request("ci", &["a".into()], false, Some(DurationSpec(10))).unwrap_err();
        assert_eq!(e.0[0].path, "ttl");
        assert!(Access::Write.grants(Access::Read) && !Access::Read.grants(Access::Write));
    }
}
