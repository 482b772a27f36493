//! Host ports as a resource: what a group asks for ([`PortSpec`] in its
//! `network`), what a node holds back and hands out ([`PortRanges`],
//! [`PortRange`]), what an allocation was given ([`AllocatedPort`]), and the
//! environment that tells a task its ports ([`port_env`]).
//!
//! A port with `static` is that host port; one without is dynamic: the
//! scheduler picks a free one from the node's dynamic range. Either way the
//! port is the node's for the allocation's life, so no two allocations that
//! hold resources on a node ever share one. Only the syntax and validation
//! live here; the accounting is the scheduler's.

use crate::job::{NetworkMode, TaskGroupSpec};
use crate::validate::ValidationErrors;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One port a group asks for: `{ label = "http", static = 8080 }`, or
/// `{ label = "metrics" }` for a dynamic one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Name of the port, unique in the group: `[a-z0-9_]+`. It names the
    /// environment variables (`TABA_PORT_<label>`).
    #[serde(default)]
    pub label: String,
    /// The host port wanted; a dynamic port when absent.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_port: Option<u32>,
}

/// A port given to an allocation on its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AllocatedPort {
    /// The group's label for it.
    pub label: String,
    /// The host port.
    pub value: u16,
    /// Picked from the node's dynamic range (else asked for as `static`).
    #[serde(default)]
    pub dynamic: bool,
}

/// Longest port label.
pub const MAX_PORT_LABEL: usize = 64;

/// Validate a group's ports: labels, static values, and a network mode in
/// which a container can be reached on them.
pub(crate) fn check_group_ports(errs: &mut ValidationErrors, p: &str, g: &TaskGroupSpec) {
    let mut labels = BTreeSet::new();
    let mut statics = BTreeSet::new();
    for (i, port) in g.network.ports.iter().enumerate() {
        let pp = format!("{p}.network.ports[{i}]");
        let l = &port.label;
        if l.is_empty() {
            errs.push(format!("{pp}.label"), "must not be empty");
        } else if l.len() > MAX_PORT_LABEL {
            errs.push(
                format!("{pp}.label"),
                format!("longer than {MAX_PORT_LABEL} characters"),
            );
        } else if let Some(c) = l
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            errs.push(
                format!("{pp}.label"),
                format!("invalid character {c:?}; use a-z, 0-9 and '_'"),
            );
        } else if !labels.insert(l.as_str()) {
            errs.push(format!("{pp}.label"), format!("duplicate port label {l:?}"));
        }
        if let Some(s) = port.static_port {
            if !(1..=65535).contains(&s) {
                errs.push(format!("{pp}.static"), "must be between 1 and 65535");
            } else if !statics.insert(s) {
                errs.push(
                    format!("{pp}.static"),
                    format!("port {s} is asked for twice in this group"),
                );
            }
        }
    }
    if !g.network.ports.is_empty() && g.network.mode == NetworkMode::None {
        if let Some((i, t)) = g.tasks.iter().enumerate().find(|(_, t)| t.driver != "exec") {
            errs.push(
                format!("{p}.network.mode"),
                format!(
                    "task[{i}] ({:?}, driver {}) cannot be reached on ports in mode \"none\" (loopback only); set mode = \"host\"",
                    t.name, t.driver
                ),
            );
        }
    }
}

/// The environment that tells a task its ports: `TABA_PORT_<label>` (the
/// port to listen on), `TABA_HOST_PORT_<label>` (the port on the host; the
/// same in host networking) and `TABA_ADDR_<label>` (`<ip>:<port>`, `ip`
/// being the node's address; IPv6 in brackets).
pub fn port_env(ports: &[AllocatedPort], ip: IpAddr) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(ports.len() * 3);
    for p in ports {
        env.push((format!("TABA_PORT_{}", p.label), p.value.to_string()));
        env.push((format!("TABA_HOST_PORT_{}", p.label), p.value.to_string()));
        env.push((
            format!("TABA_ADDR_{}", p.label),
            SocketAddr::new(ip, p.value).to_string(),
        ));
    }
    env
}

/// Why a port list or range did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortParseError {
    /// An item is not a port or a `first-last` range.
    #[error("{0:?} is not a port or a range of ports (\"80\", \"8000-8100\")")]
    NotAPort(String),
    /// A port outside 1..=65535.
    #[error("port {0} is outside 1-65535")]
    OutOfRange(String),
    /// `first-last` with first > last.
    #[error("range {0:?} ends before it starts")]
    Backwards(String),
    /// An empty range where one is required.
    #[error("a range of ports is required (\"20000-32000\")")]
    Empty,
}

fn parse_port(s: &str) -> Result<u16, PortParseError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortParseError::NotAPort(s.to_string()));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(PortParseError::OutOfRange(s.to_string())),
    }
}

fn parse_range(item: &str) -> Result<(u16, u16), PortParseError> {
    let item = item.trim();
    match item.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            if a > b {
                return Err(PortParseError::Backwards(item.to_string()));
            }
            Ok((a, b))
        }
        None => {
            let p = parse_port(item)?;
            Ok((p, p))
        }
    }
}

/// A set of host ports written as a list of ports and ranges,
/// `"22,80,8000-8100"`; kept sorted with overlapping and adjacent ranges
/// merged. Serialized as that string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    /// Parse `"22,80,8000-8100"` (whitespace allowed; empty is no ports).
    pub fn parse(s: &str) -> Result<Self, PortParseError> {
        let mut v = Vec::new();
        for item in s.split(',') {
            if item.trim().is_empty() && s.trim().is_empty() {
                continue;
            }
            v.push(parse_range(item)?);
        }
        Ok(Self::from_ranges(v))
    }

    /// From inclusive ranges, in any order.
    pub fn from_ranges(mut v: Vec<(u16, u16)>) -> Self {
        v.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Self(out)
    }

    /// No ports.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        let i = self.0.partition_point(|r| r.1 < port);
        self.0.get(i).is_some_and(|r| r.0 <= port)
    }

    /// How many ports of the set lie in `first..=last`.
    pub fn count_within(&self, first: u16, last: u16) -> u64 {
        self.0
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(first), b.min(last));
                if a <= b {
                    u64::from(b - a) + 1
                } else {
                    0
                }
            })
            .sum()
    }

    /// The inclusive ranges, sorted and merged.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PortRanges {
    type Err = PortParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PortRanges {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One inclusive range of host ports, `"20000-32000"`: where a node picks
/// dynamic ports. Serialized as that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

/// The dynamic port range of a node unless its agent says otherwise (below
/// Linux's default ephemeral range, 32768-60999, so outgoing connections
/// never take them).
pub const DEFAULT_DYNAMIC_PORTS: PortRange = PortRange {
    first: 20000,
    last: 32000,
};

impl Default for PortRange {
    fn default() -> Self {
        DEFAULT_DYNAMIC_PORTS
    }
}

impl PortRange {
    /// Parse `"20000-32000"` (or a single port).
    pub fn parse(s: &str) -> Result<Self, PortParseError> {
        if s.trim().is_empty() {
            return Err(PortParseError::Empty);
        }
        let (first, last) = parse_range(s)?;
        Ok(Self { first, last })
    }

    /// Number of ports in the range.
    pub fn len(&self) -> u64 {
        u64::from(self.last.saturating_sub(self.first)) + 1
    }

    /// Never true: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = PortParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_job_toml;

    fn job(network: &str, driver: &str) -> String {
        let task = if driver == "exec" {
            "driver = \"exec\"\n  command = [\"/bin/true\"]".to_string()
        } else {
            format!("driver = \"{driver}\"\n  image = \"busybox:latest\"")
        };
        format!(
            "name = \"p\"\n[[group]]\nname = \"g\"\nnetwork = {network}\n  [[group.task]]\n  name = \"t\"\n  {task}\n"
        )
    }

    fn errors(network: &str, driver: &str) -> Vec<(String, String)> {
        match parse_job_toml(job(network, driver).as_bytes()) {
            Ok(_) => Vec::new(),
            Err(crate::parse::JobParseError::Invalid(v)) => {
                v.0.into_iter().map(|e| (e.path, e.reason)).collect()
            }
            Err(e) => vec![(e.path().unwrap_or_default(), e.to_string())],
        }
    }

    #[test]
    fn static_and_dynamic_ports_parse() {
        let src = job(
            r#"{ mode = "host", ports = [{ label = "http", static = 8080 }, { label = "metrics" }] }"#,
            "container",
        );
        let spec = parse_job_toml(src.as_bytes()).unwrap();
        let ports = &spec.groups[0].network.ports;
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].label, "http");
        assert_eq!(ports[0].static_port, Some(8080));
        assert_eq!(ports[1].static_port, None);
        // Round trip through the API's JSON form.
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(crate::parse::parse_job_json(&json).unwrap(), spec);
        // Exec tasks run in the host's network: ports need no mode.
        assert!(errors(r#"{ ports = [{ label = "http" }] }"#, "exec").is_empty());
    }

    #[test]
    fn port_errors_name_the_field() {
        let e = errors(
            r#"{ mode = "host", ports = [{ label = "http", static = 8080 }, { label = "http", static = 8080 }, { label = "Bad-1" }, { label = "x", static = 70000 }, { label = "" , static = 0 }] }"#,
            "container",
        );
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "group[0].network.ports[1].label",
                "group[0].network.ports[1].static",
                "group[0].network.ports[2].label",
                "group[0].network.ports[3].static",
                "group[0].network.ports[4].label",
                "group[0].network.ports[4].static",
            ],
            "{e:?}"
        );
        assert!(e[0].1.contains("duplicate port label"), "{e:?}");
        assert!(e[1].1.contains("port 8080 is asked for twice"), "{e:?}");
        assert!(e[2].1.contains("invalid character 'B'"), "{e:?}");
        assert!(e[3].1.contains("between 1 and 65535"), "{e:?}");
    }

    #[test]
    fn container_ports_need_host_networking() {
        let e = errors(r#"{ ports = [{ label = "http" }] }"#, "container");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "group[0].network.mode");
        assert!(e[0].1.contains("set mode = \"host\""), "{e:?}");
        let e = errors(
            r#"{ mode = "bridge", ports = [{ label = "http" }] }"#,
            "container",
        );
        assert!(
            e[0].1.contains("bridge networking is not available yet"),
            "{e:?}"
        );
        // Unknown fields and wrong types are caught with their path.
        let e = errors(
            r#"{ mode = "host", ports = [{ label = "a", statik = 1 }] }"#,
            "container",
        );
        assert_eq!(e[0].0, "group[0].network.ports[0].statik", "{e:?}");
        let e = errors(
            r#"{ mode = "host", ports = [{ label = "a", static = -1 }] }"#,
            "container",
        );
        assert_eq!(e[0].0, "group[0].network.ports[0].static", "{e:?}");
    }

    #[test]
    fn port_lists_parse_merge_and_print() {
        let r = PortRanges::parse(" 8000-8100, 22,80,8050-8200,81").unwrap();
        assert_eq!(r.to_string(), "22,80-81,8000-8200");
        assert!(r.contains(22) && r.contains(8000) && r.contains(8200) && r.contains(81));
        assert!(!r.contains(23) && !r.contains(8201) && !r.contains(1));
        assert_eq!(r.count_within(50, 8010), 2 + 11);
        assert_eq!(r.count_within(1, 65535), 1 + 2 + 201);
        assert_eq!(PortRanges::parse("").unwrap(), PortRanges::default());
        assert_eq!(
            PortRanges::parse("22,,80"),
            Err(PortParseError::NotAPort(String::new()))
        );
        assert_eq!(
            PortRanges::parse("0"),
            Err(PortParseError::OutOfRange("0".into()))
        );
        assert_eq!(
            PortRanges::parse("70000"),
            Err(PortParseError::OutOfRange("70000".into()))
        );
        assert_eq!(
            PortRanges::parse("90-80"),
            Err(PortParseError::Backwards("90-80".into()))
        );
        assert_eq!(
            PortRanges::parse("http"),
            Err(PortParseError::NotAPort("http".into()))
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"22,80-81,8000-8200\"");
        assert_eq!(serde_json::from_str::<PortRanges>(&json).unwrap(), r);
        assert!(serde_json::from_str::<PortRanges>("\"1-0\"").is_err());
    }

    #[test]
    fn dynamic_range_parses() {
        let r = PortRange::parse("20000-20009").unwrap();
        assert_eq!(r.len(), 10);
        assert!(r.contains(20000) && r.contains(20009) && !r.contains(20010));
        assert_eq!(PortRange::parse(""), Err(PortParseError::Empty));
        assert!(PortRange::parse("3-2").is_err());
        assert_eq!(PortRange::default().to_string(), "20000-32000");
    }

    #[test]
    fn environment_names_every_port() {
        let env = port_env(
            &[AllocatedPort {
                label: "http".into(),
                value: 8080,
                dynamic: false,
            }],
            "10.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            env,
            [
                ("TABA_PORT_http".to_string(), "8080".to_string()),
                ("TABA_HOST_PORT_http".to_string(), "8080".to_string()),
                ("TABA_ADDR_http".to_string(), "10.0.0.5:8080".to_string()),
            ]
        );
        let v6 = port_env(
            &[AllocatedPort {
                label: "m".into(),
                value: 20000,
                dynamic: true,
            }],
            "::1".parse().unwrap(),
        );
        assert_eq!(v6[2].1, "[::1]:20000");
    }
}
