//! What the synthetic workload asks of the scheduler beyond resources, so
//! that the headline runs go through every placement path and not only the
//! bin-pack walk: spread blocks and affinities (the scored path), host
//! ports, namespaces with quotas, and a late wave of high-priority jobs
//! that only fits by preemption.

use super::Rng;
use taba_types::*;

/// Namespace whose quota is larger than its demand: every placement is
/// checked against it, none is held back by it.
pub const ROOMY: &str = "team-a";
/// Namespace whose quota is below its demand: some of its tasks stay
/// unplaced (their evaluations end blocked), as intended.
pub const TIGHT: &str = "team-b";
/// `TIGHT`'s quota as a share of its CPU demand.
pub const TIGHT_SHARE: f64 = 0.85;
/// Priority of the late wave; the main wave has 10..=90, so every late job
/// may evict at least some of it (preemption needs a gap of 10).
pub const LATE_PRIORITY: u32 = 95;
/// Share of the service and batch tasks that come in the late wave, percent.
pub const LATE_PERCENT: u64 = 5;
/// Racks the late wave is confined to (5 of the 50 racks, 10% of nodes).
pub const LATE_RACKS: &str = "^r[0-4]$";

/// How much of the workload uses each feature.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureCounts {
    /// Groups with a spread block.
    pub spread_groups: u64,
    /// Groups with a node or allocation affinity.
    pub affinity_groups: u64,
    /// Groups holding host ports (dynamic or static).
    pub port_groups: u64,
    /// Jobs in a namespace with a quota.
    pub quota_jobs: u64,
    /// Jobs of the late high-priority wave.
    pub late_jobs: u64,
}

/// The namespace of a main-wave job: one in eight in `ROOMY`, one in
/// twenty-five in `TIGHT`, the rest in `default`.
pub(super) fn namespace(r: &mut Rng, counts: &mut FeatureCounts) -> &'static str {
    let ns = match r.below(200) {
        0..=24 => ROOMY,
        25..=32 => TIGHT,
        _ => "default",
    };
    if ns != "default" {
        counts.quota_jobs += 1;
    }
    ns
}

/// Give one group of `job` (of `nodes` nodes) the placement features of one
/// draw: about 4% spread over racks and 2% over datacenters with targets
/// (groups of up to 100), 4% a node affinity, 2% an anti-affinity to its
/// own job (up to 100), 8% a dynamic port and 1% a static one.
pub(super) fn decorate(
    r: &mut Rng,
    g: &mut TaskGroupSpec,
    job: &str,
    nodes: u32,
    c: &mut FeatureCounts,
) {
    // Spreading and anti-affinity are for small replicated services: on a
    // group of thousands they would touch every node.
    let small = g.count <= 100;
    match r.below(100) {
        0..=3 if small => {
            g.spread.push(spread("${meta.rack}", &[]));
            c.spread_groups += 1;
        }
        4..=5 if small => {
            let t = [("dc1", 40), ("dc2", 30), ("dc3", 20), ("dc4", 10)];
            g.spread.push(spread("${node.datacenter}", &t));
            c.spread_groups += 1;
        }
        6..=9 => {
            g.affinity.push(Affinity {
                attribute: "${attr.kernel.version}".into(),
                operator: Some(ConstraintOperator::Version),
                value: Some(">= 6.1".into()),
                job: None,
                group: None,
                weight: 40,
            });
            c.affinity_groups += 1;
        }
        10..=11 if small => {
            g.affinity.push(Affinity {
                attribute: String::new(),
                operator: None,
                value: None,
                job: Some(job.to_string()),
                group: Some(g.name.clone()),
                weight: -50,
            });
            c.affinity_groups += 1;
        }
        12..=19 => {
            g.network.mode = NetworkMode::Host;
            g.network.ports.push(PortSpec {
                label: "http".into(),
                static_port: None,
            });
            c.port_groups += 1;
        }
        // A static port holds one allocation per node: only for groups that
        // leave most nodes free for the other static-port groups.
        20 if g.count <= nodes / 20 => {
            g.network.mode = NetworkMode::Host;
            g.network.ports.push(PortSpec {
                label: "admin".into(),
                static_port: Some(9000 + r.below(20) as u32),
            });
            c.port_groups += 1;
        }
        _ => {}
    }
}

fn spread(attribute: &str, targets: &[(&str, u32)]) -> Spread {
    Spread {
        attribute: attribute.into(),
        weight: 50,
        targets: targets
            .iter()
            .map(|(v, p)| SpreadTarget {
                value: v.to_string(),
                percent: *p,
            })
            .collect(),
    }
}

/// The quotas of the two quota namespaces from their demand (CPU MHz,
/// memory MiB), as `(namespace, quota)`.
pub(super) fn quotas(demand: &[(&'static str, f64, f64)]) -> Vec<(&'static str, Quota)> {
    demand
        .iter()
        .map(|(ns, cpu, mem)| {
            let share = if *ns == TIGHT { TIGHT_SHARE } else { 1.1 };
            let q = Quota {
                cpu: Some((cpu * share) as u64),
                memory: (*ns != TIGHT).then(|| ByteSize::mib((mem * share) as u64)),
                allocations: None,
            };
            (*ns, q)
        })
        .collect()
}
