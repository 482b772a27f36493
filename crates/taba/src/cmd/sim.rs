//! `taba sim`: the real scheduler and plan applier against a simulated
//! cluster (see `taba_scheduler::sim`). Prints what happened, and as its last
//! line exactly
//! `placed=<n> seconds=<s> placements_per_s=<r> nodes_used=<u> lower_bound=<l> rss_mib=<m>`.
//! Before it prints anything the run is audited against its final state
//! (`taba_scheduler::sim` `check`): a report the state does not back exits 1.

use std::process::ExitCode;
use taba_scheduler::sim::{self, Mix, SimConfig};

/// Arguments of `taba sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Simulated nodes (varied sizes and attributes).
    #[arg(long, default_value_t = 1000)]
    pub nodes: u32,
    /// Tasks to place, one allocation each, in jobs of varied sizes.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: u64,
    /// Seed of the synthetic cluster and workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of tasks per job type, e.g. `service=65,batch=35` or
    /// `service=60,batch=30,system=10` (system jobs place one per node).
    #[arg(long, default_value = "service=65,batch=35")]
    pub mix: String,
    /// Scheduler worker threads (plans are applied by one applier).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Demand as a share of the cluster's capacity in its binding resource.
    #[arg(long, default_value_t = 0.7)]
    pub fill: f64,
    /// Let all workers plan on every node (no shards): conflicting plans are
    /// then rejected by the applier and retried.
    #[arg(long)]
    pub no_shards: bool,
    /// Ask only for resources and constraints: no spreads, affinities,
    /// ports, quotas or late high-priority wave (by default the workload
    /// uses them all).
    #[arg(long)]
    pub plain: bool,
    /// `place` (default): place the workload. `rebalance`: place it, give
    /// every allocation a synthetic measured load (one job in eight runs hot),
    /// then run the rebalancer round after round and report the utilization
    /// spread before and after, and the moves made.
    #[arg(long, default_value = "place", value_parser = ["place", "rebalance"])]
    pub scenario: String,
    /// Most rebalancing rounds (`--scenario rebalance`).
    #[arg(long, default_value_t = 50)]
    pub rounds: u32,
    /// Moves per rebalancing round (`--scenario rebalance`).
    #[arg(long, default_value_t = 64)]
    pub moves_per_round: usize,
}

/// Run a simulation.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let mix: Mix = match args.mix.parse() {
        Ok(m) => m,
        Err(e) => return usage(e),
    };
    let cfg = SimConfig {
        nodes: args.nodes,
        tasks: args.tasks,
        seed: args.seed,
        mix,
        workers: args.workers,
        fill: args.fill,
        shards: !args.no_shards,
        features: !args.plain,
    };
    let (r, rebalance) = if args.scenario == "rebalance" {
        let rcfg = taba_scheduler::rebalance::RebalanceConfig {
            max_moves: args.moves_per_round.max(1),
            ..Default::default()
        };
        match sim::run_rebalance(&cfg, &rcfg, args.rounds.max(1)) {
            Ok((r, rb)) => (r, Some(rb)),
            Err(e) => return usage(e),
        }
    } else {
        match sim::run(&cfg) {
            Ok(r) => (r, None),
            Err(e) => return usage(e),
        }
    };
    println!(
        "nodes={} jobs={} tasks={} workers={} plans_applied={} plans_rejected={} evals_blocked={}",
        r.nodes, r.jobs, r.tasks, cfg.workers, r.plans_applied, r.plans_rejected, r.evals_blocked
    );
    let f = &r.features;
    println!(
        "features: spread_groups={} affinity_groups={} port_groups={} quota_jobs={} late_jobs={} evicted={} live={}",
        f.spread_groups, f.affinity_groups, f.port_groups, f.quota_jobs, f.late_jobs, r.stopped, r.live
    );
    println!(
        "eval_latency_ms p50={:.1} p99={:.1} schedule_s={:.3} apply_s={:.3} binding={} used_fill_cpu={:.3} used_fill_memory={:.3}",
        r.eval_latency_ms.0,
        r.eval_latency_ms.1,
        r.schedule_seconds,
        r.apply_seconds,
        r.binding,
        r.used_fill.0,
        r.used_fill.1
    );
    if let Some(rb) = rebalance {
        for (when, sp) in [("before", rb.before), ("after", rb.after)] {
            println!(
                "rebalance {when}: nodes={} hot={} utilization max={:.3} min={:.3} spread={:.3} mean={:.3} stddev={:.3}",
                sp.nodes,
                sp.hot,
                sp.max,
                sp.min,
                sp.max - sp.min,
                sp.mean,
                sp.stddev
            );
        }
        println!(
            "rebalance moves={} dropped={} rounds={} seconds={:.3}",
            rb.moves, rb.moves_dropped, rb.rounds, rb.seconds
        );
    }
    println!("{}", r.last_line(peak_rss_mib()));
    Ok(ExitCode::SUCCESS)
}

fn usage(e: sim::SimError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    // A failed audit is a scheduler bug, not a usage error.
    Ok(ExitCode::from(if matches!(e, sim::SimError::Audit(_)) {
        1
    } else {
        2
    }))
}

/// Peak resident set size of this process (VmHWM), MiB; 0 if unknown.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}
