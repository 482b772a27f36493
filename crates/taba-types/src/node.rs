//! Nodes: hosts that run an agent, as fingerprinted and as tracked by the
//! control plane.

use crate::ids::NodeId;
use crate::job::Resources;
use crate::ports::{PortRange, PortRanges};
use crate::units::ByteSize;
use crate::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Liveness of a node as the servers see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Registered, first heartbeat pending.
    #[default]
    Initializing,
    /// Heartbeating.
    Ready,
    /// Missed its heartbeat TTL: no new placements; its allocations are
    /// left alone until it is `down` (after the TTL plus the grace).
    Disconnected,
    /// Silent for its heartbeat TTL plus the grace; its allocations are lost
    /// and replaced elsewhere.
    Down,
    /// Its agent found nothing to run workloads with (no usable cgroups, no
    /// healthy driver): never schedulable; `unusable_reason` says why.
    Unusable,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Initializing => "initializing",
            NodeStatus::Ready => "ready",
            NodeStatus::Disconnected => "disconnected",
            NodeStatus::Down => "down",
            NodeStatus::Unusable => "unusable",
        })
    }
}

/// Whether the scheduler may place new work on the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Eligibility {
    /// New placements allowed.
    #[default]
    Eligible,
    /// No new placements (draining or disabled by an operator). The
    /// allocations already there keep running, system ones included.
    Ineligible,
}

/// What a driver reports about itself on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DriverInfo {
    /// The driver's prerequisites exist on the host.
    pub detected: bool,
    /// The driver can start workloads now.
    pub healthy: bool,
    /// Why not, or a short description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Total capacity of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeResources {
    /// Logical CPU cores.
    pub cores: u32,
    /// CPU in MHz: cores x MHz per core.
    pub cpu: u64,
    /// Physical memory.
    pub memory: ByteSize,
    /// Disk available for allocations under the agent's data dir.
    pub disk: ByteSize,
}

impl NodeResources {
    /// As schedulable `Resources` (pids unlimited).
    pub fn as_resources(&self) -> Resources {
        Resources {
            cpu: self.cpu,
            memory: self.memory,
            disk: self.disk,
            pids: u64::MAX,
        }
    }
}

/// A node record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Node {
    /// Persistent id (kept in the agent's data dir).
    pub id: NodeId,
    /// Human name, unique in practice (hostname by default).
    pub name: String,
    /// Datacenter label.
    #[serde(default = "default_dc")]
    pub datacenter: String,
    /// Liveness.
    #[serde(default)]
    pub status: NodeStatus,
    /// Scheduling eligibility.
    #[serde(default)]
    pub eligibility: Eligibility,
    /// The drain in progress, if any (`taba node drain`); kept until the
    /// drain completes or is cancelled, so a restarted server carries on.
    #[serde(
        default,
        deserialize_with = "drain_or_legacy_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain: Option<DrainStrategy>,
    /// When the last drain completed (cleared when a new one starts; a
    /// cancelled drain leaves it unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_at: Option<UnixMillis>,
    /// Address of the agent's own HTTP API (logs, exec, stats), `host:port`.
    #[serde(default)]
    pub http_addr: String,
    /// Fingerprinted attributes: `kernel.version`, `cpu.cores`, `cgroup.version`,
    /// `driver.container`, `unique.hostname`, `os.name`, ...
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Operator-set metadata (`${meta.rack}`).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Capacity.
    pub resources: NodeResources,
    /// Held back for the host itself.
    #[serde(default)]
    pub reserved: NodeResources,
    /// Host ports never given to allocations (`"22,80,8000-8100"`).
    #[serde(default, skip_serializing_if = "PortRanges::is_empty")]
    pub reserved_ports: PortRanges,
    /// Where dynamic ports are picked from (`"20000-32000"` by default).
    #[serde(default)]
    pub dynamic_ports: PortRange,
    /// Drivers by name.
    #[serde(default)]
    pub drivers: BTreeMap<String, DriverInfo>,
    /// Last heartbeat received.
    #[serde(default)]
    pub last_heartbeat: UnixMillis,
    /// Last reported utilization.
    #[serde(default)]
    pub usage: NodeUsage,
    /// Why the node cannot run workloads, as its agent found at start (no
    /// usable cgroups, no healthy driver); empty when it can. Such a node
    /// registers as `unusable`, never `ready`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unusable_reason: String,
    /// Store index at registration.
    #[serde(default)]
    pub create_index: u64,
    /// Store index of the last change.
    #[serde(default)]
    pub modify_index: u64,
}

fn default_dc() -> String {
    "dc1".into()
}

impl Node {
    /// Capacity left for allocations: total minus reserved.
    pub fn allocatable(&self) -> Resources {
        let mut r = self.resources.as_resources();
        r.sub(&self.reserved.as_resources());
        r.pids = u64::MAX;
        r
    }
    /// Whether `driver` is detected and healthy here.
    pub fn has_driver(&self, driver: &str) -> bool {
        self.drivers
            .get(driver)
            .map(|d| d.detected && d.healthy)
            .unwrap_or(false)
    }
    /// The status a heartbeating node has: `ready`, or `unusable` when its
    /// agent reported a reason.
    pub fn alive_status(&self) -> NodeStatus {
        if self.unusable_reason.is_empty() {
            NodeStatus::Ready
        } else {
            NodeStatus::Unusable
        }
    }
    /// The state users see: `ready`, `draining` or `ineligible` for a ready
    /// node, else its liveness (`initializing`, `disconnected`, `down`,
    /// `unusable`).
    pub fn display_status(&self) -> String {
        match self.status {
            NodeStatus::Ready if self.draining() => "draining".into(),
            NodeStatus::Ready if self.eligibility == Eligibility::Ineligible => "ineligible".into(),
            s => s.to_string(),
        }
    }
    /// Ready and eligible for new placements.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready
            && self.eligibility == Eligibility::Eligible
            && self.drain.is_none()
    }
    /// A drain is in progress.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }
}

/// How a node is drained: what `taba node drain` asked for, stored on the
/// node record (the drainer on the servers carries it out and clears it
/// when the drain is done or cancelled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DrainStrategy {
    /// When the drain started.
    pub started_at: UnixMillis,
    /// When the allocations still on the node are stopped (absolute time).
    pub deadline: UnixMillis,
    /// Leave allocations of system jobs running (otherwise they are stopped
    /// last, after every other allocation has moved).
    #[serde(default)]
    pub ignore_system: bool,
}

/// Records written before drains had a strategy held `"drain": false`.
fn drain_or_legacy_bool<'de, D>(d: D) -> Result<Option<DrainStrategy>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
    #[serde(untagged)]
    enum Either {
        Legacy(#[allow(dead_code)] bool),
        Strategy(Option<DrainStrategy>),
    }
    Ok(match Either::deserialize(d)? {
        Either::Legacy(_) => None,
        Either::Strategy(s) => s,
    })
}

/// Measured utilization of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeUsage {
    /// CPU in use, MHz.
    pub cpu_mhz: u64,
    /// Memory in use by allocations.
    pub memory: ByteSize,
    /// When measured.
    pub at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_reads_legacy_bool_strategy_and_absence() {
        let legacy = r#"{"id":"n","name":"n","drain":false,"resources":{"cores":1,"cpu":1,"memory":"1MiB","disk":"1MiB"}}"#;
        let n: Node = serde_json::from_str(legacy).unwrap();
        assert_eq!(n.drain, None);
        let mut n2 = n.clone();
        n2.drain = Some(DrainStrategy {
            started_at: 1,
            deadline: 2,
            ignore_system: true,
        });
        let back: Node = serde_json::from_str(&serde_json::to_string(&n2).unwrap()).unwrap();
        assert_eq!(back.drain, n2.drain);
        assert!(!back.schedulable());
        let none: Node = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(none.drain, None);
    }
}
